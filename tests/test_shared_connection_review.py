"""Findings of the adversarial review of the shared connection, over the wire or the public API.

Each test is one finding: what a peer (or a program using the host) could do before the fix,
stated as the behaviour that now holds. The rules that are sans-IO are in
``tests/test_mux_review.py``.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from p2ptls import ConnectionLost, ReassemblyBudget, StreamReset
from p2ptls._mux_wire import FrameType, ResetCode
from p2ptls._mux_wire import frame as mux_frame
from tests.hostile_support import SAFETY_NET
from tests.raw_peer import message_frame, raw_peer
from tests.test_mux_hostile import SINK, connection_of, mux_host

# -- the reassembly budget cannot be freed by resetting streams -----------------------------------


async def test_resetting_streams_does_not_free_the_budget_their_unread_messages_hold() -> None:
    """A peer sends a message on a stream whose handler has not read it yet, then resets the
    stream; the message is still readable (and in memory) on the host. Were its charge freed at
    the reset, the peer could do it again on its next stream, and hold far more than its share of
    the budget: the share must still bound what waits unread."""
    message = 100_000
    share = 256 * 1024
    async with mux_host() as arena:
        harness = arena.harness
        harness.host.context.budget = ReassemblyBudget(per_peer_limit=share)
        peer = await raw_peer(harness)
        refused = 0
        for _ in range(6):
            sid = await peer.open(SINK)  # its handler never reads
            await peer.send_frames(message_frame(sid, bytes(message)))
            await peer.send_frames(mux_frame(FrameType.RESET, sid, bytes([ResetCode.CANCEL])))
            ping = mux_frame(FrameType.PING, 0, sid.to_bytes(8, "big"))
            await peer.send_frames(ping)
            await peer.wait_for(lambda: bool(peer.pongs))  # the host has read it all
            peer.pongs.clear()
            refused += peer.resets.get(sid) is ResetCode.MESSAGE_TOO_LARGE
        assert refused >= 3  # once the share is held, the next messages are refused
        held = 0
        for stream in arena.sink.streams:
            try:
                while True:
                    held += len(await stream.receive_message())
            except StreamReset:
                pass
        assert held <= share
        for stream in arena.sink.streams:
            await stream.aclose()
        assert harness.host.context.budget.in_use == 0
        await peer.aclose()


# -- a ping on a connection that ends --------------------------------------------------------------


async def test_a_ping_outstanding_when_the_connection_ends_raises_connection_lost() -> None:
    async with mux_host() as arena:
        peer = await raw_peer(arena.harness)  # it answers nothing unless it reads
        connection = connection_of(arena.harness, peer)
        outcome: list[BaseException] = []

        async def ping() -> None:
            try:
                await connection.ping()
            except ConnectionLost as exc:
                outcome.append(exc)

        with trio.fail_after(SAFETY_NET):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ping)
                await trio.testing.wait_all_tasks_blocked()
                await peer.aclose()  # the peer goes away without answering
        assert len(outcome) == 1


async def test_a_ping_on_a_connection_that_ended_raises_connection_lost() -> None:
    async with mux_host() as arena:
        peer = await raw_peer(arena.harness)
        connection = connection_of(arena.harness, peer)
        await peer.aclose()
        with trio.fail_after(SAFETY_NET):
            await connection.wait_closed()
            with pytest.raises(ConnectionLost):
                await connection.ping()
