"""Findings of the adversarial review of the shared connection, over the wire or the public API.

Each test is one finding: what a peer (or a program using the host) could do before the fix,
stated as the behaviour that now holds. The rules that are sans-IO are in
``tests/test_mux_review.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from p2ptls import (
    ConnectionConfig,
    ConnectionLost,
    DialBackoff,
    Host,
    HostConfig,
    Identity,
    LogicalStream,
    ReassemblyBudget,
    StreamInterrupted,
    StreamReset,
    generate_psk,
    open_host,
)
from p2ptls._mux import Multiplexer
from p2ptls._mux_wire import (
    FRAME_CHUNK,
    HEADER_SIZE,
    MAX_STREAM_ID,
    FrameType,
    GoAwayCode,
    ResetCode,
)
from p2ptls._mux_wire import frame as mux_frame
from p2ptls.connections import ConnectionRetired
from p2ptls.manager import MAX_LIVE_PER_PEER
from tests.host_harness import serving_host, settle
from tests.hostile_support import LOOPBACK, SAFETY_NET
from tests.raw_peer import RawPeer, message_frame, raw_peer
from tests.test_mux_hostile import ECHO, SINK, connection_of, echo, mux_host

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


# -- a connection that can open no more streams is replaced ---------------------------------------


@asynccontextmanager
async def lower_and_higher(
    identities: tuple[Identity, ...], connections: ConnectionConfig | None = None
) -> AsyncIterator[tuple[Host, Host]]:
    """Two listening hosts that know each other, serving the echo: the one whose peer id is
    lower first (it wins a simultaneous open, §14.11)."""
    lower, higher = sorted(identities[:2], key=lambda identity: identity.peer_id.digest)
    psk = generate_psk()
    options: dict[str, Any] = {"psk": psk, "listen": (LOOPBACK, 0)}
    if connections is not None:
        options["connections"] = connections
    async with (
        open_host(HostConfig(identity=lower, **options)) as low,
        open_host(HostConfig(identity=higher, **options)) as high,
    ):
        low.add_peer(high.peer_record())
        high.add_peer(low.peer_record())
        for host in (low, high):
            host.serve_protocol(ECHO, echo)
        yield low, high


async def assert_echoes(stream: LogicalStream, payload: bytes) -> None:
    with trio.fail_after(SAFETY_NET):
        await stream.send_message(payload)
        assert await stream.receive_message() == payload


async def test_a_host_that_retired_a_connection_opens_the_next_stream_on_a_new_one(
    identities: tuple[Identity, ...],
) -> None:
    """``PeerConnection.retire`` takes the connection out of use at this end as the GOAWAY does
    at the other: the next open dials, even when the retired connection, dialled by the lower
    peer id, would win against the new one."""
    async with lower_and_higher(identities) as (low, high):
        first = await low.open(high.peer_id, ECHO)  # the lower id dials
        retired = high.connection(low.peer_id)
        assert retired is not None
        retired.retire(GoAwayCode.NORMAL)
        again = await high.open(low.peer_id, ECHO)
        assert again.connection is not retired
        assert high.connection(low.peer_id) is again.connection
        await assert_echoes(again, b"on the new connection")
        await assert_echoes(first, b"the old stream goes on")


async def test_a_connection_out_of_stream_ids_is_replaced(
    identities: tuple[Identity, ...],
) -> None:
    """A side that used its last stream id (2^32 - 2 for the responder) opens no more streams
    on that connection: it retires it, and its next open dials a new connection, which both ends
    keep, even though the old one was dialled by the lower peer id."""
    async with lower_and_higher(identities) as (low, high):
        first = await low.open(high.peer_id, ECHO)  # the lower id dials: high is the responder
        exhausted = high.connection(low.peer_id)
        assert exhausted is not None
        last = MAX_STREAM_ID - 1
        exhausted._mux._last_local = first.connection._mux._last_remote = last - 2  # 2^31 opens
        final = await high.open(low.peer_id, ECHO)
        assert final.stream_id == last
        assert final.connection is exhausted
        after = await high.open(low.peer_id, ECHO)
        assert after.connection is not exhausted
        await assert_echoes(after, b"on the new connection")
        await assert_echoes(final, b"the last stream of the old one goes on")
        current = low.connection(high.peer_id)  # both ends keep the new one
        assert current is not None and current.session_id == after.session_id


# -- an open that gave up does not spoil the next one ----------------------------------------------


async def _hold_silently(tcp: trio.SocketStream) -> None:
    async with tcp:
        await trio.sleep_forever()


async def test_an_open_right_after_one_that_gave_up_gets_its_own_dial(
    identities: tuple[Identity, ...], autojump_clock: trio.testing.MockClock
) -> None:
    """The dial of an open that gave up (its own timeout) is abandoned; an open made right after
    it (a retry) must wait for a dial of its own, not receive the abandoned one's error."""
    alice, bob = identities[0], identities[1]
    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    silent = bob.peer_record(address=(LOOPBACK, listeners[0].socket.getsockname()[1]))
    config = HostConfig(
        identity=alice,
        psk=generate_psk(),
        peers=[silent],
        connections=ConnectionConfig(dial_timeout=3.0),
    )
    async with trio.open_nursery() as nursery, open_host(config) as host:
        nursery.start_soon(trio.serve_listeners, _hold_silently, listeners)
        with trio.move_on_after(1.0):
            await host.open(bob.peer_id, ECHO)
        with pytest.raises(TimeoutError, match="dial_timeout"):
            await host.open(bob.peer_id, ECHO)
        nursery.cancel_scope.cancel()


# -- closing a stream wakes its sender, even while the connection's output is full -----------------


async def test_closing_a_stream_wakes_its_sender_waiting_for_room_in_the_output() -> None:
    """A peer that stops reading fills the connection's output; a sender then waits for room.
    Closing its stream (from another task, as trio allows) must wake it with
    ``ClosedResourceError`` at once, not when the output drains (never, here: the keepalive is
    far off and the peer reads nothing)."""
    connections = ConnectionConfig(keepalive_interval=3600.0)
    async with serving_host(connections=connections) as harness:
        sending: list[LogicalStream] = []
        woken = trio.Event()

        async def source(stream: LogicalStream) -> None:
            sending.append(stream)
            try:
                while True:
                    await stream.send_all(bytes(1024 * 1024))
            except trio.ClosedResourceError:
                woken.set()

        harness.host.serve_protocol("source/1", source)
        peer = await RawPeer.connect(harness.host, receive_buffer=4096)
        peer.mux = Multiplexer(initiator=True, window=64 * 1024 * 1024)  # credit is no limit
        await peer.handshake()
        await peer.open("source/1")  # then it reads nothing more
        connection = connection_of(harness, peer)
        await settle(lambda: connection._output_full() and bool(connection._drained))
        await sending[0].aclose()
        with trio.fail_after(SAFETY_NET):
            await woken.wait()
        await peer.aclose()


# -- the streams of a connection closed for the peer's reconnections are lost, not "closed" --------


async def test_streams_of_a_connection_closed_for_reconnections_raise_connection_lost() -> None:
    """When a peer holds too many connections, the oldest retiring one is closed at once. The
    application did not close its streams there: they must fail as a lost connection does
    (``ConnectionLost``, which a protocol handles by opening again), not with
    ``ClosedResourceError``, which says the application closed the stream itself."""
    async with mux_host() as arena:
        harness = arena.harness
        outcome: list[BaseException] = []
        done = trio.Event()

        async def watch(stream: LogicalStream) -> None:
            try:
                await stream.receive_message()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                outcome.append(exc)
            done.set()

        harness.host.serve_protocol("watch/1", watch)
        peers = [await RawPeer.connect(harness.host)]
        await peers[0].handshake()
        await peers[0].open("watch/1")
        for _ in range(MAX_LIVE_PER_PEER):  # the same peer reconnects, a stream held on each
            peer = await RawPeer.connect(harness.host)
            await peer.handshake()
            await peer.open(SINK)
            peers.append(peer)
        with trio.fail_after(SAFETY_NET):
            await done.wait()
        [error] = outcome
        assert isinstance(error, ConnectionLost), repr(error)
        assert isinstance(error.__cause__, ConnectionRetired)
        assert "too many connections" in str(error.__cause__)
        for peer in peers:
            await peer.aclose()


# -- what a program learns from a failed open ------------------------------------------------------


async def test_a_back_off_says_when_the_peer_may_be_dialled_again(
    identities: tuple[Identity, ...],
) -> None:
    alice, bob = identities[0], identities[1]
    unreachable = bob.peer_record(address=(LOOPBACK, 1))  # nothing listens on port 1
    config = HostConfig(identity=alice, psk=generate_psk(), peers=[unreachable])
    async with open_host(config) as host:
        with pytest.raises(OSError):
            await host.open(bob.peer_id, ECHO)
        with pytest.raises(DialBackoff, match=r"retry in \d+\.\d s") as backing_off:
            await host.open(bob.peer_id, ECHO)
        assert backing_off.value.peer == bob.peer_id
        assert 0 < backing_off.value.retry_after <= 0.625


async def test_waiting_for_a_connection_ends_when_the_host_closes(
    identities: tuple[Identity, ...],
) -> None:
    alice, bob = identities[0], identities[1]
    config = HostConfig(identity=alice, psk=generate_psk(), peers=[bob.record])
    outcome: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        async with open_host(config) as host:

            async def wait() -> None:
                try:
                    await host.manager.wait_connected(bob.peer_id)
                except trio.ClosedResourceError as exc:
                    outcome.append(exc)

            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(SAFETY_NET):
            while not outcome:
                await trio.testing.wait_all_tasks_blocked()
    assert len(outcome) == 1


# -- design findings, not fixed here (each test states the property that does not hold yet) --------


async def test_one_send_queues_no_more_than_the_high_water_mark_ahead_of_other_streams(
    identities: tuple[Identity, ...],
) -> None:
    """A send with a whole 4 MiB window of credit queues no more than ``output_high_water``
    (and one frame) ahead of what another stream sends next: a small message of another
    protocol never waits behind a window of bulk data."""
    window = 4 * 1024 * 1024
    connections = ConnectionConfig(stream_window=window, max_stream_window=window)
    async with lower_and_higher(identities, connections=connections) as (low, high):
        high.serve_protocol(SINK, drain)
        bulk = await low.open(high.peer_id, SINK)
        connection = bulk.connection
        await settle(lambda: connection._send_credit(bulk.stream_id) == window)
        mux = connection._mux
        queued: list[int] = []
        send_data = mux.send_data

        def recording_send_data(*args: Any, **kwargs: Any) -> int:
            taken = send_data(*args, **kwargs)
            queued.append(mux.output_size)
            return taken

        mux.send_data = recording_send_data  # type: ignore[method-assign]
        with trio.fail_after(SAFETY_NET):
            await bulk.send_all(bytes(window))
        assert max(queued) <= connections.output_high_water + FRAME_CHUNK + HEADER_SIZE


async def drain(stream: LogicalStream) -> None:
    while await stream.receive_some():
        pass


async def test_handlers_do_not_outlive_their_connection() -> None:
    """A handler that waits on something else than its stream (a subscription whose next event
    is far off) is cancelled ``handler_grace`` after its connection ended, so a peer that comes
    back again and again does not pile up handlers with their streams."""
    connections = ConnectionConfig(handler_grace=0.05)
    async with serving_host(connections=connections) as harness:
        alive = 0
        never = trio.Event()

        async def wait_elsewhere(stream: LogicalStream) -> None:
            nonlocal alive
            alive += 1
            try:
                await never.wait()
            finally:
                alive -= 1

        harness.host.serve_protocol("subscribe/1", wait_elsewhere)
        for _ in range(5):
            peer = await RawPeer.connect(harness.host)
            await peer.handshake()
            await peer.open("subscribe/1")
            connection = connection_of(harness, peer)
            await settle(lambda: alive == 1)
            await peer.aclose()  # gone, then back again
            with trio.fail_after(SAFETY_NET):
                await connection.wait_closed()
            await settle(lambda: alive == 0)


async def test_a_handler_finishes_its_work_within_the_grace() -> None:
    """A handler whose connection broke may still finish what it does with what it received
    (store it, say) for ``handler_grace`` seconds: it is not cancelled at once."""
    async with mux_host() as arena:
        harness = arena.harness
        written = trio.Event()
        stored: list[bytes] = []

        async def store(stream: LogicalStream) -> None:
            received = await stream.receive_message()
            with pytest.raises(ConnectionLost):
                await stream.receive_message()
            await written.wait()  # the slow write of what it received
            stored.append(received)

        harness.host.serve_protocol("store/1", store)
        peer = await RawPeer.connect(harness.host)
        await peer.handshake()
        stream_id = await peer.open("store/1")
        await peer.send_frames(message_frame(stream_id, b"keep me"))
        connection = connection_of(harness, peer)
        await peer.aclose()
        with trio.fail_after(SAFETY_NET):
            await connection.wait_closed()
        await settle(lambda: True)  # the handler is past ConnectionLost, waiting for its write
        written.set()
        await settle(lambda: stored == [b"keep me"])


# -- cancellation at each wait of an open and of a message -----------------------------------------


async def test_an_open_cancelled_before_the_answer_leaves_nothing_behind() -> None:
    """The host opens a stream to a peer that has not answered yet, and the open is cancelled:
    the stream is closed on the wire (FIN, then RESET), a late ACCEPT is dropped, nothing is
    left in the connection's tables, and the connection goes on."""
    async with mux_host() as arena:
        harness = arena.harness
        peer = await raw_peer(harness)  # it answers nothing until it reads
        connection = connection_of(harness, peer)
        before = connection.stream_count
        with trio.fail_after(SAFETY_NET):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(harness.host.open, peer.identity.peer_id, "late/1")
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
        assert connection.stream_count == before
        assert not connection._opening and not connection._refusals
        opened = 2  # the host's first stream id on the connection it accepted
        await peer.wait_for(lambda: opened in peer.resets)
        assert peer.resets[opened] is ResetCode.CANCEL
        assert opened in peer.ended  # its FIN came first: a clean end of its direction
        peer.mux.accept_stream(opened)  # the answer, late
        await peer.flush()
        await peer.echo(b"the connection goes on")
        assert not connection.closed
        await peer.aclose()


async def test_a_message_cancelled_part_way_resets_only_its_stream() -> None:
    """A message waits for credit part-way (the peer grants none) and its send is cancelled: the
    rest can never follow, so the stream is reset (the peer sees RESET, never a FIN after half
    a message); the stream then raises StreamReset, and the connection goes on."""
    async with mux_host() as arena:
        harness = arena.harness
        peer = await raw_peer(harness)
        connection = connection_of(harness, peer)
        scope = trio.CancelScope()
        outcome: list[object] = []
        done = trio.Event()

        async def speak(stream: LogicalStream) -> None:
            with scope:
                await stream.send_message(bytes(1024 * 1024))  # beyond the peer's credit
            outcome.append(scope.cancelled_caught)
            try:
                await stream.send_message(b"more")
            except trio.BrokenResourceError as exc:  # our cancellation: not a reset by the peer
                assert not isinstance(exc, StreamReset)
                outcome.append(type(exc.__cause__))
            done.set()

        harness.host.serve_protocol("speak/1", speak)
        sid = await peer.open("speak/1")
        await settle(lambda: connection._send_credit(sid) == 0)  # it waits for credit
        scope.cancel()
        with trio.fail_after(SAFETY_NET):
            await done.wait()
        assert outcome == [True, StreamInterrupted]
        await peer.wait_for(lambda: sid in peer.resets)
        assert peer.resets[sid] is ResetCode.CANCEL
        assert sid not in peer.ended
        await peer.echo(b"the connection goes on")
        assert not connection.closed
        await peer.aclose()
