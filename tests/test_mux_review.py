"""Findings of the adversarial review of the multiplexer, as sans-IO rules (``_mux.py``).

Each test is one finding: what a peer (honest or not) could do to one side of a connection
before the fix, stated as the rule that now holds.
"""

from __future__ import annotations

import pytest

from p2ptls import _mux
from p2ptls import _mux_wire as mw
from p2ptls._errors import MuxError
from p2ptls._fragments import ReassemblyBudget
from p2ptls._mux_wire import Flag, FrameType
from tests.test_mux import Pair

MIB = 1024 * 1024


# -- the reply backlog counts replies, not our own data --------------------------------------------


def test_a_ping_while_we_send_in_bulk_is_answered_not_taken_for_a_peer_that_does_not_read() -> None:
    """Our own DATA waiting to be written is bounded by the senders (high water and credit), not
    by the peer: an honest peer that pings (or opens a stream) while a large window's worth of
    our data waits must get its answer, not a connection error."""
    pair = Pair(window=8 * MIB, max_output_backlog=4 * MIB)
    stream_id = pair.open()
    assert pair.a.send_data(stream_id, bytes(8 * MIB)) == 8 * MIB  # all queued at once
    assert pair.a.output_size > pair.a.max_output_backlog
    pair.b.send_ping(b"12345678")
    other = pair.b.open_stream("chat/1")
    events = pair.to_a()  # no MuxError
    assert _mux.StreamOpened(other, "chat/1") in events
    pair.a.accept_stream(other)
    events = pair.to_b()
    assert _mux.PongReceived(b"12345678") in events
    assert _mux.StreamAccepted(other) in events


def test_replies_the_peer_does_not_read_are_still_bounded_beside_our_data() -> None:
    pair = Pair(window=8 * MIB, max_output_backlog=1000)
    stream_id = pair.open()
    pair.a.send_data(stream_id, bytes(MIB))
    ping = mw.frame(FrameType.PING, 0, bytes(8))
    with pytest.raises(MuxError, match="does not read"):
        pair.a.receive_data_untrusted(ping * 200)


# -- a reset stream's unread messages stay charged ---------------------------------------------


def _message(stream_id: int, payload: bytes) -> bytes:
    return mw.frame(FrameType.DATA, stream_id, payload, Flag.MESSAGE | Flag.END)


def test_a_reset_keeps_the_charge_of_finished_messages_until_they_are_taken() -> None:
    """A finished message the application has not taken is still in memory (the logical stream
    reads it before the reset): its budget charge must stay, or a peer could send a message,
    reset the stream, and repeat on a new stream, holding memory the budget no longer sees."""
    budget = ReassemblyBudget(limit=1 << 30, per_peer_limit=1 << 30)
    pair = Pair()
    pair.b = _mux.Multiplexer(initiator=False, budget=budget, budget_key="b")
    stream_id = pair.open()
    pair.b.receive_data_untrusted(_message(stream_id, bytes(50_000)))
    charged = budget.in_use
    assert charged >= 50_000
    pair.b.receive_data_untrusted(mw.frame(FrameType.RESET, stream_id, b"\x00"))
    assert budget.in_use == charged  # the message is still held, unread
    pair.b.message_taken(stream_id)
    assert budget.in_use == 0
    pair.b.close_stream(stream_id)
    assert budget.in_use == 0


def test_a_reset_for_a_broken_limit_keeps_the_charge_of_finished_messages() -> None:
    budget = ReassemblyBudget(limit=1 << 30, per_peer_limit=1 << 30)
    pair = Pair()
    pair.b = _mux.Multiplexer(
        initiator=False, budget=budget, budget_key="b", max_message_size=60_000
    )
    stream_id = pair.open()
    pair.b.receive_data_untrusted(_message(stream_id, bytes(50_000)))
    charged = budget.in_use
    over = mw.frame(FrameType.DATA, stream_id, bytes(60_001 - 50_000), Flag.MESSAGE)
    fragment = mw.frame(FrameType.DATA, stream_id, bytes(50_000), Flag.MESSAGE)
    events = pair.b.receive_data_untrusted(fragment + over)
    assert events[-1] == _mux.StreamAborted(
        stream_id, mw.ResetCode.MESSAGE_TOO_LARGE, by_peer=False
    )
    assert budget.in_use == charged  # the first message, unread; the second one's bytes freed
    pair.b.close_stream(stream_id)
    assert budget.in_use == 0


# -- window growth from message fragments ----------------------------------------------------------


def test_windows_grown_by_message_fragments_stay_within_the_connection_window() -> None:
    """Message fragments are consumed on arrival, so a peer that sends each fragment as large as
    its credit makes the window grow without the application reading anything; what it may then
    send unread on the byte stream stays within ``connection_window`` for the connection."""
    window = mw.INITIAL_WINDOW
    connection_window = 5 * window
    budget = ReassemblyBudget(limit=1 << 30, per_peer_limit=1 << 30)
    b = _mux.Multiplexer(
        initiator=False,
        window=window,
        max_window=16 * window,
        connection_window=connection_window,
        budget=budget,
    )
    streams = (1, 3)
    for stream_id in streams:
        b.receive_data_untrusted(mw.frame(FrameType.OPEN, stream_id, b"chat/1"))
        b.accept_stream(stream_id)
    for _ in range(8):
        for stream_id in streams:
            credit = b._streams[stream_id].receive_left
            fragment = mw.frame(FrameType.DATA, stream_id, bytes(credit), Flag.MESSAGE)
            b.receive_data_untrusted(fragment)
        b.data_to_send()
    windows = [b._streams[stream_id].window for stream_id in streams]
    assert max(windows) > window  # grown, though the application read nothing
    assert sum(windows) <= connection_window
    assert sum(b._streams[stream_id].receive_left for stream_id in streams) <= connection_window
