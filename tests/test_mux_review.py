"""Findings of the adversarial review of the multiplexer, as sans-IO rules (``_mux.py``).

Each test is one finding: what a peer (honest or not) could do to one side of a connection
before the fix, stated as the rule that now holds.
"""

from __future__ import annotations

import pytest

from p2ptls import _mux
from p2ptls import _mux_wire as mw
from p2ptls._errors import MuxError
from p2ptls._mux_wire import FrameType
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
