"""Attacks on the multiplexer, over the wire against a real host.

A raw peer (``tests/raw_peer.py``) completes a genuine handshake, opens a logical stream of the
default protocol (which the harness echoes) and then sends frames no honest multiplexer sends:
too many streams, data past its credit, bad stream ids, unknown protocols by the thousand, asks
it never reads the answers to, oversized messages, malformed frames, floods. Each test checks
the typed outcome precisely (the connection closed with :class:`~p2ptls.MuxError`, every logical
stream on it failing with :class:`~p2ptls.ConnectionLost` whose cause it is; or only the offending
stream refused or reset), that nothing else was harmed (the peer's other streams, other peers, a
newcomer's fresh handshake) and, where a flood is the point, that the heap stays flat
(``tracemalloc``).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from p2ptls import (
    ConnectionConfig,
    ConnectionLost,
    LogicalStream,
    MuxError,
    PeerConnection,
    ProtocolNotSupported,
    ReassemblyBudget,
    StreamConfig,
    StreamRefused,
    StreamReset,
    admit_network_members,
)
from p2ptls import _mux_wire as mw
from p2ptls._mux_wire import Flag, FrameType, RefuseCode, ResetCode
from p2ptls.manager import MAX_LIVE_PER_PEER
from tests.host_harness import (
    Harness,
    assert_host_serves,
    extra_identity,
    good_client,
    heap_growth,
    serving_host,
    settle,
)
from tests.hostile_support import CONFIG, SAFETY_NET, parties
from tests.raw_peer import RawPeer, message_frame, raw_peer

ECHO = "echo/1"
SINK = "sink/1"
MAX_STREAMS = 8
FLAT = 256 * 1024
"""Heap growth allowed across a flood (what the flood would add without its bound is far more)."""


async def echo(stream: LogicalStream) -> None:
    async for message in stream.messages():
        await stream.send_message(message)


@attrs.define
class Sink:
    """A protocol whose handler never reads: its streams stay open until the harness ends."""

    streams: list[LogicalStream] = attrs.Factory(list)

    async def __call__(self, stream: LogicalStream) -> None:
        self.streams.append(stream)
        await trio.sleep_forever()


@attrs.frozen
class Arena:
    harness: Harness
    sink: Sink


@asynccontextmanager
async def mux_host(
    *, config: StreamConfig = CONFIG, max_streams: int = MAX_STREAMS, **options: Any
) -> AsyncIterator[Arena]:
    """The harness host, serving ``echo/1`` and ``sink/1`` too, at most ``max_streams`` streams
    per peer (``options`` go to the :class:`~p2ptls.HostConfig`)."""
    connections = ConnectionConfig(max_streams_per_peer=max_streams)
    async with serving_host(config=config, connections=connections, **options) as harness:
        sink = Sink()
        harness.host.serve_protocol(ECHO, echo)
        harness.host.serve_protocol(SINK, sink)
        yield Arena(harness, sink)


@asynccontextmanager
async def attacked(**options: Any) -> AsyncIterator[tuple[Harness, RawPeer, PeerConnection]]:
    """:func:`mux_host` and a raw peer connected to it, its stream of the default protocol open
    (and handed to the harness's handler); the host's side of its connection."""
    async with mux_host(**options) as arena:
        peer = await raw_peer(arena.harness)
        yield arena.harness, peer, connection_of(arena.harness, peer)


def full_receive_buffer(connection: PeerConnection) -> None:
    """Give the connection's stream its full-size receive buffer now (it grows while reads fill
    it), so that a heap measurement sees what a flood costs, not that one-time growth."""
    secure = connection.secure
    secure._receive_buffer = memoryview(bytearray(secure.config.receive_size))


def holds_at_least(budget: ReassemblyBudget, size: int) -> bool:
    return budget.in_use >= size


def connection_of(harness: Harness, peer: RawPeer) -> PeerConnection:
    """The host's side of the raw peer's connection."""
    connection = harness.host.connection(peer.identity.peer_id)
    assert connection is not None
    return connection


async def assert_cut(harness: Harness, peer: RawPeer, connection: PeerConnection, why: str) -> None:
    """The host closed the peer's connection for breaking the multiplexing protocol (``why``),
    the peer's stream failed with that cause, and the host still serves a newcomer."""
    failure = await harness.next_failure()  # the peer's stream of the default protocol
    assert isinstance(failure, ConnectionLost)
    assert isinstance(failure.__cause__, MuxError), repr(failure.__cause__)
    assert why in str(failure.__cause__)
    with trio.fail_after(SAFETY_NET):
        await connection.wait_closed()
    assert connection.cause is failure.__cause__
    assert harness.host.connection(peer.identity.peer_id) is None
    await peer.until_closed()
    await peer.aclose()
    assert harness.host.context.budget.in_use == 0
    await assert_host_serves(harness)


# -- a peer opening streams without limit ---------------------------------------------------------


async def test_streams_beyond_the_bound_are_refused_and_the_rest_unharmed() -> None:
    async with attacked() as (harness, peer, connection):
        bystander = await good_client(harness)
        echoes = [await peer.open(ECHO) for _ in range(MAX_STREAMS - 1)]  # with the default one
        refused = await peer.open_many([ECHO] * 50)
        assert set(refused) == {RefuseCode.TOO_MANY_STREAMS}
        assert connection.stream_count == connection._mux.inbound_streams == MAX_STREAMS
        # Its streams and the other peer's go on.
        for sid in (peer.stream_id, *echoes):
            await peer.echo(b"still served on %d" % sid, sid)
        await bystander.send_message(b"unaffected")
        assert await bystander.receive_message() == b"unaffected"
        # Thousands more cost the host nothing it keeps.
        with heap_growth() as growth:
            for _ in range(10):
                assert set(await peer.open_many([ECHO] * 500)) == {RefuseCode.TOO_MANY_STREAMS}
        assert growth.grown < FLAT, growth.grown
        assert connection.stream_count == MAX_STREAMS and not connection.closed
        # A refusal is not a ban: once a stream ends, the next open is accepted.
        peer.mux.reset_stream(echoes[0])
        await peer.flush()
        await settle(lambda: connection.stream_count == MAX_STREAMS - 1)
        await peer.echo(b"again", await peer.open(ECHO))
        await peer.aclose()
        await bystander.aclose()


async def test_a_host_opening_beyond_the_peers_bound_gets_stream_refused() -> None:
    async with mux_host() as arena:
        harness = arena.harness
        client = await harness.client(parties().other)
        server = harness.host.peer_record()
        streams = [await client.open(server, ECHO) for _ in range(MAX_STREAMS)]
        with pytest.raises(StreamRefused) as refused:
            await client.open(server, ECHO)
        assert not isinstance(refused.value, ProtocolNotSupported)
        for stream in streams:  # the open ones go on, on the one connection
            await stream.send_message(b"kept")
            assert await stream.receive_message() == b"kept"
        assert len(client.connections) == 1
        for stream in streams:
            await stream.aclose()


async def test_a_peer_reconnecting_again_and_again_holds_few_connections() -> None:
    """Each new connection of a peer replaces its previous one, which keeps its streams for
    ``replaced_grace``: reconnecting fast, with a stream held open on each, a peer would hold one
    connection per reconnection (each with its streams and buffers). Beyond a few, the oldest
    that is retiring closes at once."""
    async with mux_host() as arena:
        harness = arena.harness
        peers = []
        for _ in range(3 * MAX_LIVE_PER_PEER):
            peer = await RawPeer.connect(harness.host)
            await peer.handshake()
            await peer.open(SINK)  # keeps its connection alive while it retires
            peers.append(peer)
            live = harness.host.manager._live[peer.identity.peer_id]
            assert sum(1 for c in live if c.cause is None) <= MAX_LIVE_PER_PEER  # not closing
        connection = connection_of(harness, peers[-1])  # the newest is the current one
        assert connection.accepts_new_streams
        await peers[-1].echo(b"served", await peers[-1].open(ECHO))
        for peer in peers:
            await peer.aclose()


# -- a peer ignoring flow control -----------------------------------------------------------------


async def test_data_past_the_credit_closes_the_connection() -> None:
    async with attacked() as (harness, peer, connection):
        sid = await peer.open(SINK)  # its handler never reads
        credit = peer.mux.send_credit(sid)
        assert credit == ConnectionConfig().stream_window  # the initial window and a grant
        # The whole credit is fine: the host holds it for the reader.
        assert peer.mux.send_data(sid, bytes(credit)) == credit
        await peer.flush()
        await peer.echo(b"within the credit")
        assert not connection.closed
        # One byte more is a protocol error.
        await peer.send_frames(mw.frame(FrameType.DATA, sid, b"!"))
        await assert_cut(harness, peer, connection, "past the stream's credit")


@pytest.mark.parametrize("announced", ["past the credit", "past the largest frame"])
async def test_a_frame_announcing_too_much_is_refused_from_its_header(announced: str) -> None:
    """The payload is never waited for (or buffered): the header alone closes the connection."""
    async with attacked() as (harness, peer, connection):
        sid = await peer.open(SINK)
        if announced == "past the credit":
            length, why = peer.mux.send_credit(sid) + 1, "past the stream's credit"
        else:
            length, why = mw.MAX_DATA_PAYLOAD + 1, "DATA frame too long"
        await peer.send_frames(mw.HEADER.pack(FrameType.DATA, 0, sid, length) + bytes(100))
        await assert_cut(harness, peer, connection, why)


# -- stream ids: reused, out of order, on the wrong side, never opened ----------------------------


def _open(stream_id: int) -> bytes:
    return mw.frame(FrameType.OPEN, stream_id, ECHO.encode())


BAD_IDS: dict[str, tuple[Callable[[RawPeer], bytes], str]] = {
    "OPEN reusing an id": (lambda p: _open(p.stream_id), "out-of-order or wrong-side"),
    "OPEN skipping an id": (lambda p: _open(p.next_stream_id + 2), "out-of-order or wrong-side"),
    "OPEN of the host's parity": (
        lambda p: _open(p.next_stream_id + 1),
        "out-of-order or wrong-side",
    ),
    "OPEN of id 0": (lambda p: _open(0), "stream id not allowed"),
    "OPEN of the largest id": (lambda p: _open(mw.MAX_STREAM_ID), "out-of-order or wrong-side"),
    "DATA on a stream never opened": (
        lambda p: message_frame(p.next_stream_id, b"x"),
        "never opened",
    ),
    "WINDOW on a stream never opened": (
        lambda p: mw.frame(FrameType.WINDOW, p.next_stream_id, (1).to_bytes(4, "big")),
        "never opened",
    ),
    "RESET of a stream never opened": (
        lambda p: mw.frame(FrameType.RESET, p.next_stream_id, b"\0"),
        "never opened",
    ),
    "DATA on a host-side id the host never opened": (
        lambda p: message_frame(2, b"x"),
        "never opened",
    ),
    "ACCEPT of the peer's own stream": (
        lambda p: mw.frame(FrameType.ACCEPT, p.stream_id),
        "ACCEPT for a stream not waiting",
    ),
    "REFUSE of the peer's own stream": (
        lambda p: mw.frame(FrameType.REFUSE, p.stream_id, bytes([RefuseCode.TOO_MANY_STREAMS])),
        "REFUSE for a stream not waiting",
    ),
}


@pytest.mark.parametrize("case", list(BAD_IDS))
async def test_a_bad_stream_id_closes_the_connection(case: str) -> None:
    make, why = BAD_IDS[case]
    async with attacked() as (harness, peer, connection):
        bystander = await good_client(harness)
        await peer.send_frames(make(peer))
        await assert_cut(harness, peer, connection, why)
        await bystander.send_message(b"unaffected")
        assert await bystander.receive_message() == b"unaffected"


async def test_a_late_frame_for_a_stream_that_is_gone_is_dropped() -> None:
    """The control case: a frame for a stream id that was opened and is gone is not an error
    (it may have crossed the stream's end on the wire)."""
    async with attacked() as (_harness, peer, connection):
        sid = await peer.open(ECHO)
        peer.mux.send_fin(sid)
        await peer.flush()
        await peer.wait_for(lambda: sid in peer.ended)  # the echo handler ended, and closed
        await settle(lambda: connection.stream_count == 1)
        await peer.send_frames(
            mw.frame(FrameType.WINDOW, sid, (1).to_bytes(4, "big"))
            + mw.frame(FrameType.RESET, sid, b"\0")
            + message_frame(sid, b"late")
        )
        await peer.echo(b"the connection is fine")
        assert not connection.closed
        await peer.aclose()


# -- unknown protocols ----------------------------------------------------------------------------


async def test_a_flood_of_unknown_protocols_is_refused_one_by_one() -> None:
    async with attacked() as (harness, peer, connection):
        with heap_growth() as growth:
            for batch in range(6):
                names = [f"nobody/{batch}.{n}" for n in range(500)]
                assert set(await peer.open_many(names)) == {RefuseCode.UNKNOWN_PROTOCOL}
        assert growth.grown < FLAT, growth.grown
        assert harness.host.manager.unknown_protocol_refusals == 3000
        assert connection.stream_count == 1 and not connection.closed
        await peer.echo(b"the host keeps serving it")
        await peer.aclose()
        await assert_host_serves(harness)


async def test_opening_an_unknown_protocol_raises_protocol_not_supported() -> None:
    async with mux_host() as arena:
        harness = arena.harness
        client = await harness.client(parties().other)
        server = harness.host.peer_record()
        for index in range(200):
            with pytest.raises(ProtocolNotSupported, match="nobody"):
                await client.open(server, f"nobody/{index}")
        async with await client.open(server, ECHO) as stream:  # the same connection serves
            await stream.send_message(b"served")
            assert await stream.receive_message() == b"served"
        assert len(client.connections) == 1


# -- a peer that asks without reading the answers --------------------------------------------------

BACKLOG = 64 * 1024


@pytest.mark.parametrize("ask", ["PING", "OPEN of an unknown protocol"])
async def test_a_peer_asking_without_reading_is_cut_not_buffered(ask: str) -> None:
    """Each PING is answered (PONG), each OPEN of a protocol nobody serves refused (REFUSE); a
    peer that sends them without reading has its answers queued up to the host's backlog, and is
    then cut (the host's backlog is made small, so the test stays quick). The bound on streams
    per peer is far above the flood here: the refusals of unknown protocols must be bounded by
    themselves."""
    async with mux_host(max_streams=4096) as arena:
        harness = arena.harness
        peer = await RawPeer.connect(harness.host, receive_buffer=4096)
        await peer.handshake()
        await settle(lambda: harness.host.connection(peer.identity.peer_id) is not None)
        connection = connection_of(harness, peer)
        connection._mux.max_output_backlog = BACKLOG
        sent = 0
        with trio.fail_after(SAFETY_NET):
            while not connection.closed:
                if ask == "PING":
                    frames = mw.frame(FrameType.PING, 0, bytes(8)) * 1000
                else:
                    for _ in range(1000):
                        peer.mux.open_stream("nobody/1")
                    frames = peer.mux.data_to_send()
                await peer.send_frames(frames)
                sent += len(frames)
                assert sent < 64 * 1024 * 1024, "never cut"
                await trio.testing.wait_all_tasks_blocked()
                # Never more than the backlog and the answer that went over it.
                assert connection._mux.output_size <= BACKLOG + 64, connection._mux.output_size
        assert isinstance(connection.cause, MuxError)
        assert "does not read" in str(connection.cause)
        await peer.aclose()
        await assert_host_serves(harness)


# -- messages on a logical stream ------------------------------------------------------------------


async def test_a_message_over_the_maximum_resets_only_its_stream() -> None:
    config = attrs.evolve(CONFIG, max_message_size=32 * 1024)
    async with attacked(config=config) as (harness, peer, connection):
        other = await peer.open(ECHO)
        await peer.send_message(bytes(config.max_message_size + 1))
        await peer.wait_for(lambda: peer.stream_id in peer.resets)
        assert peer.resets[peer.stream_id] is ResetCode.MESSAGE_TOO_LARGE
        failure = await harness.next_failure()
        assert isinstance(failure, StreamReset)
        assert failure.code is ResetCode.MESSAGE_TOO_LARGE
        # The connection and its other streams go on; nothing of the message is held.
        await peer.echo(b"the other stream is fine", other)
        await peer.echo(bytes(config.max_message_size), other)  # the maximum itself is fine
        assert not connection.closed
        assert harness.host.context.budget.in_use == 0
        await peer.aclose()


async def test_empty_messages_nobody_reads_are_bounded() -> None:
    """An empty message costs no credit, but the host keeps each until it is read: their number
    is bounded by the reassembly budget (each is charged its bookkeeping), beyond which the
    stream is reset. Only that stream: the connection goes on. The messages that arrived before
    the reset stay readable, so they stay charged until the application lets go of the stream
    (the peer cannot free its share by getting its streams reset)."""
    async with mux_host() as arena:
        harness = arena.harness
        share = 512 * 1024
        harness.host.context.budget = ReassemblyBudget(per_peer_limit=share)
        peer = await raw_peer(harness)
        connection = connection_of(harness, peer)
        sid = await peer.open(SINK)  # its handler never reads
        empty = message_frame(sid, b"")
        with heap_growth() as growth:
            for n in range(20):
                ping = mw.frame(FrameType.PING, 0, n.to_bytes(8, "big"))
                await peer.send_frames(empty * 5000 + ping)
                await peer.wait_for(lambda: bool(peer.pongs))  # the host read it all
                peer.pongs.clear()
        assert peer.resets.get(sid) is ResetCode.MESSAGE_TOO_LARGE
        assert growth.grown < 4 * share, growth.grown
        assert not connection.closed
        assert harness.host.context.budget.in_use <= share
        await arena.sink.streams[-1].aclose()  # the unread messages, and their charges, go
        await peer.echo(b"the connection goes on")
        await peer.aclose()
        await settle(lambda: harness.host.context.budget.in_use == 0)


async def test_a_window_of_one_byte_frames_nobody_reads_costs_its_bytes_not_an_object_each() -> (
    None
):
    """SPEC §14.6: a stream's unread bytes are bounded by its window, and their memory must be
    proportional to the bytes. A window's worth of 1-byte frames (262,144 of them) would cost
    about 10 MB at one object per frame; gathered, it costs about the window."""
    async with mux_host() as arena:
        harness = arena.harness
        peer = await raw_peer(harness)
        connection = connection_of(harness, peer)
        sid = await peer.open(SINK)  # its handler never reads
        window = harness.host.config.connections.stream_window
        one_byte = mw.frame(FrameType.DATA, sid, b"x")
        full_receive_buffer(connection)
        with heap_growth() as growth:
            for _ in range(window // 16384):
                await peer.send_frames(one_byte * 16384)
            await peer.echo(b"the host has read the window")
        assert growth.grown < 2 * window, growth.grown
        assert not connection.closed
        await peer.aclose()


async def test_half_messages_on_logical_streams_share_the_budget() -> None:
    """Peers each holding half a maximum-size message on a logical stream fill the host's
    budget; the stream that would exceed it is reset (its connection goes on); when holders
    leave, the last one finishes its message and gets it back."""
    config = StreamConfig(max_message_size=64 * 1024, record_size=16 * 1024)
    half = config.max_message_size // 2
    async with mux_host(config=config, admission=admit_network_members) as arena:
        harness = arena.harness
        budget = harness.host.context.budget = ReassemblyBudget(
            limit=int(3.5 * half), per_peer_limit=10**9
        )
        cast = parties()
        peers = []
        for identity in (cast.initiator, cast.other, extra_identity(0)):
            peer = await raw_peer(harness, identity=identity)
            sid = await peer.open(ECHO)
            target = budget.in_use + half
            peer.mux.send_data(sid, bytes(half), message=True)
            await peer.flush()
            await settle(functools.partial(holds_at_least, budget, target))
            peers.append((peer, sid))
        greedy = await raw_peer(harness, identity=extra_identity(1))
        sid = await greedy.open(ECHO)
        greedy.mux.send_data(sid, bytes(half), message=True)
        await greedy.flush()
        await greedy.wait_for(lambda: sid in greedy.resets)
        assert greedy.resets[sid] is ResetCode.MESSAGE_TOO_LARGE
        assert budget.in_use <= budget.limit
        await greedy.echo(b"its connection goes on")
        for peer, sid in peers[:2]:  # two holders give up their messages
            peer.mux.reset_stream(sid)
            await peer.flush()
        last, sid = peers[2]
        await settle(lambda: budget.in_use < 2 * half)  # only the last holder's half is held
        last.mux.send_data(sid, bytes(half), message=True, end=True)
        await last.flush()
        assert await last.receive_message(sid) == bytes(config.max_message_size)
        for peer, _ in [*peers, (greedy, 0)]:
            await peer.aclose()
        await settle(lambda: budget.in_use == 0)


# -- malformed frames ------------------------------------------------------------------------------

BAD_FRAMES: dict[str, tuple[Callable[[RawPeer], bytes], str]] = {
    "an unknown frame type": (lambda p: mw.HEADER.pack(9, 0, p.stream_id, 0), "unknown frame"),
    "frame type 255": (lambda p: mw.HEADER.pack(255, 0, 0, 0), "unknown frame type"),
    "an unknown DATA flag": (
        lambda p: message_frame(p.stream_id, b"x", Flag.MESSAGE | Flag.END | 0x8),
        "unknown DATA flags",
    ),
    "END without MESSAGE": (
        lambda p: message_frame(p.stream_id, b"x", Flag.END),
        "END without MESSAGE",
    ),
    "flags on a WINDOW": (
        lambda p: mw.frame(FrameType.WINDOW, p.stream_id, (1).to_bytes(4, "big"), flags=1),
        "flags on a frame that has none",
    ),
    "a WINDOW of 3 bytes": (
        lambda p: mw.frame(FrameType.WINDOW, p.stream_id, b"\0\0\1"),
        "bad frame length",
    ),
    "a WINDOW of zero": (
        lambda p: mw.frame(FrameType.WINDOW, p.stream_id, bytes(4)),
        "WINDOW of zero",
    ),
    "credit beyond 2^31 - 1": (
        lambda p: mw.frame(FrameType.WINDOW, p.stream_id, mw.MAX_WINDOW.to_bytes(4, "big")),
        "credit beyond",
    ),
    "an OPEN without a name": (
        lambda p: mw.HEADER.pack(FrameType.OPEN, 0, p.next_stream_id, 0),
        "bad protocol name length",
    ),
    "an OPEN with a 129-byte name": (
        lambda p: mw.frame(FrameType.OPEN, p.next_stream_id, b"a" * 129),
        "bad protocol name length",
    ),
    "an OPEN with a name that is not visible ASCII": (
        lambda p: mw.frame(FrameType.OPEN, p.next_stream_id, "écho/1".encode()),
        "not visible ASCII",
    ),
    "an ACCEPT with a payload": (
        lambda p: mw.frame(FrameType.ACCEPT, p.stream_id, b"x"),
        "bad frame length",
    ),
    "a RESET without its code": (
        lambda p: mw.frame(FrameType.RESET, p.stream_id),
        "bad frame length",
    ),
    "a RESET twice": (
        lambda p: mw.frame(FrameType.RESET, p.stream_id, b"\0") * 2,
        "already reset",
    ),
    "a PING of 7 bytes": (lambda p: mw.frame(FrameType.PING, 0, bytes(7)), "bad frame length"),
    "a PING on a stream": (
        lambda p: mw.frame(FrameType.PING, p.stream_id, bytes(8)),
        "stream id not allowed",
    ),
    "a GOAWAY on a stream": (
        lambda p: mw.frame(FrameType.GOAWAY, p.stream_id, bytes(5)),
        "stream id not allowed",
    ),
    "a second GOAWAY": (lambda p: mw.frame(FrameType.GOAWAY, 0, bytes(5)) * 2, "second GOAWAY"),
    "DATA after the FIN": (
        lambda p: message_frame(p.stream_id, b"", Flag.FIN) + message_frame(p.stream_id, b"x"),
        "after the stream's FIN",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
async def test_a_malformed_frame_closes_the_connection(case: str) -> None:
    make, why = BAD_FRAMES[case]
    async with attacked() as (harness, peer, connection):
        await peer.echo(b"healthy")
        await peer.send_frames(make(peer))
        await assert_cut(harness, peer, connection, why)
        assert b"x" not in harness.received  # nothing of a bad frame was delivered


# -- floods of frames that ask for nothing ---------------------------------------------------------


@pytest.mark.parametrize("flood", ["WINDOW of one byte", "empty DATA", "PING, read"])
async def test_a_flood_of_frames_that_cost_nothing_keeps_the_heap_flat(flood: str) -> None:
    async with attacked() as (_harness, peer, connection):
        sid = await peer.open(ECHO)
        frame = {
            "WINDOW of one byte": mw.frame(FrameType.WINDOW, sid, (1).to_bytes(4, "big")),
            "empty DATA": mw.frame(FrameType.DATA, sid),
            "PING, read": mw.frame(FrameType.PING, 0, bytes(8)),
        }[flood]
        full_receive_buffer(connection)
        with heap_growth() as growth:
            for _ in range(20):
                await peer.send_frames(frame * 2500)
                await peer.echo(b"read so far", sid)
                peer.pongs.clear()
        assert growth.grown < FLAT, growth.grown
        assert not connection.closed
        await peer.echo(b"still flowing")
        await peer.aclose()
