"""Hostile moves of a member on the multiplexer (SPEC §14), its arena and its invariants.

The arena (:func:`open_mux_arena`) is a victim :class:`~p2ptls.Host` serving ``echo/1``,
``sink/1`` (a handler that never reads) and ``bulk/1`` (it sends until the stream ends), with an
honest peer (a real client host) whose traffic keeps flowing through the attack. The victim runs
in its own task, so a victim that dies is observed rather than fatal to the test.

Each lane of the adversary is a :class:`MuxMember`: a genuine member (its own identity, the
network key; the victim admits network members) that opens raw connections to the victim
(``tests/raw_peer.py``) and sends any frame at all. It is also a
:class:`~tests.adversary.transport.HostTarget`, so the transport moves play here too.

``MUX_MOVES`` covers every frame type, malformed and abusive: bad stream ids, credit violations,
floods of opens, unknown protocols, resets, windows, pings and GOAWAYs, oversized and empty
messages, random frames, and a peer that stops reading. Each move leaves its connection closed
(by the victim, or by itself once it checked the connection still works), so the invariants see
the victim between moves as a newcomer would.
"""

from __future__ import annotations

import functools
import operator
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import attrs
import trio
import trio.testing

from p2ptls import (
    ConnectionConfig,
    Host,
    HostConfig,
    Identity,
    LogicalStream,
    NetworkKey,
    StreamConfig,
    admit_network_members,
    open_host,
)
from p2ptls import _mux_wire as mw
from p2ptls._mux_wire import Flag, FrameType
from p2ptls.manager import MAX_LIVE_PER_PEER
from tests.host_harness import extra_identity, host_alarms, settle
from tests.hostile_support import LOOPBACK, SAFETY_NET
from tests.raw_peer import RawPeer, message_frame

from .core import FunctionMove, move

ECHO, SINK, BULK = "echo/1", "sink/1", "bulk/1"
MAX_STREAMS = 16
CONNECTIONS = ConnectionConfig(max_streams_per_peer=MAX_STREAMS, replaced_grace=5.0)
STREAM = StreamConfig(max_message_size=256 * 1024)


SINK_HOLD = 20.0
"""Seconds a ``sink/1`` handler holds its stream without reading (then it gives the stream up:
a handler that never reads would never learn that its connection is gone)."""


async def _echo(stream: LogicalStream) -> None:
    async for message in stream.messages():
        await stream.send_message(message)


async def _sink(stream: LogicalStream) -> None:
    await trio.sleep(SINK_HOLD)


async def _bulk(stream: LogicalStream) -> None:
    chunk = bytes(32 * 1024)
    while True:
        await stream.send_all(chunk)


HANDLERS = {ECHO: _echo, SINK: _sink, BULK: _bulk}


@attrs.define(eq=False)
class MuxArena:
    """The victim host, an honest peer of it, and what the adversary's lanes are."""

    psk: NetworkKey
    clock: trio.testing.MockClock | None
    victim: Host | None = None
    honest: Host | None = None
    exit_error: BaseException | None = None
    """Why the victim's ``open_host`` ended before the arena closed it (an invariant broken)."""
    exited: trio.Event = attrs.Factory(trio.Event)
    stop: trio.Event = attrs.Factory(trio.Event)
    members: tuple[Identity, ...] = ()
    handlers_running: int = 0
    """Handler tasks of the victim still running (each holds its stream and connection)."""

    @property
    def up(self) -> Host:
        assert self.victim is not None and not self.exited.is_set(), (
            f"the victim exited: {self.exit_error!r}"
        )
        return self.victim

    async def _counted(
        self, handler: Callable[[LogicalStream], Awaitable[None]], stream: LogicalStream
    ) -> None:
        self.handlers_running += 1
        try:
            await handler(stream)
        finally:
            self.handlers_running -= 1

    async def run_victim(self, *, task_status: trio.TaskStatus[None]) -> None:
        config = HostConfig(
            identity=extra_identity(20),
            psk=self.psk,
            listen=(LOOPBACK, 0),
            admission=admit_network_members,
            connections=CONNECTIONS,
            stream=STREAM,
        )
        try:
            async with open_host(config) as host:
                host.context.offload_private_key_operations = self.clock is None
                for protocol, handler in HANDLERS.items():
                    host.serve_protocol(protocol, functools.partial(self._counted, handler))
                self.victim = host
                task_status.started()
                await self.stop.wait()
        except* Exception as group:  # observed (assert_victim_up reports it); Cancelled is not
            self.exit_error = group
        finally:
            self.exited.set()


@asynccontextmanager
async def open_mux_arena(
    clock: trio.testing.MockClock | None = None, *, lanes: int = 2
) -> AsyncIterator[MuxArena]:
    """Run the victim and its honest peer for the duration of the block. With ``clock`` (trio's
    autojump clock), RSA work runs on the event loop, so the clock never jumps over it."""
    arena = MuxArena(NetworkKey.generate(), clock)
    arena.members = tuple(extra_identity(21 + lane) for lane in range(lanes))
    honest_identity = extra_identity(19)
    with host_alarms() as alarms:
        async with trio.open_nursery() as nursery:
            await nursery.start(arena.run_victim)
            config = HostConfig(identity=honest_identity, psk=arena.psk, stream=STREAM)
            async with open_host(config) as honest:
                honest.context.offload_private_key_operations = clock is None
                honest.add_peer(arena.up.peer_record())
                arena.honest = honest
                await assert_victim_serves(arena)
                try:
                    yield arena
                finally:
                    arena.stop.set()
    assert alarms == [], [record.getMessage() for record in alarms]


# -- the adversary's side --------------------------------------------------------------------------


@attrs.define(eq=False)
class MuxMember:
    """One lane of the adversary: a genuine member attacking the victim's multiplexer."""

    arena: MuxArena
    identity: Identity
    held: list[trio.SocketStream] = attrs.Factory(list)
    peers: list[RawPeer] = attrs.Factory(list)

    @property
    def psk(self) -> NetworkKey:
        return self.arena.psk

    @property
    def victim_host(self) -> Host:
        return self.arena.up

    async def connect(self, protocol: str = ECHO) -> RawPeer:
        """A new raw connection to the victim, with one stream of ``protocol`` open."""
        peer = await RawPeer.connect(self.victim_host, identity=self.identity, config=STREAM)
        self.peers.append(peer)
        await peer.handshake()
        await peer.open(protocol)
        return peer

    async def close(self) -> None:
        for peer in self.peers:
            await peer.aclose()
        self.peers.clear()
        for tcp in self.held:
            await tcp.aclose()
        self.held.clear()


@asynccontextmanager
async def mux_member(arena: MuxArena, lane: int) -> AsyncIterator[MuxMember]:
    """Lane ``lane`` of the adversary (the lane factory of ``run_adversary``)."""
    member = MuxMember(arena, arena.members[lane % len(arena.members)])
    try:
        yield member
    finally:
        with trio.CancelScope(shield=True):
            await member.close()


async def cut_or_done(peer: RawPeer) -> None:
    """End a move: if the victim still serves the connection, prove it (an echo on a new
    stream; refusing the stream is a fine answer too), then hang up."""
    try:
        if not peer.eof:
            await peer.echo(b"after the move", await peer.open(ECHO))
    finally:
        await peer.aclose()


MuxMove = FunctionMove[MuxMember]


# -- moves -----------------------------------------------------------------------------------------


@move("mux-open-flood")
async def open_flood(m: MuxMember, rng: random.Random) -> None:
    """Opens streams far beyond the bound, of served protocols, none closed."""
    peer = await m.connect()
    protocols = [rng.choice((ECHO, SINK, BULK)) for _ in range(rng.randint(2, 6) * MAX_STREAMS)]
    await peer.open_many(protocols)
    await cut_or_done(peer)


@move("mux-unknown-protocols")
async def unknown_protocols(m: MuxMember, rng: random.Random) -> None:
    """Opens hundreds of streams for protocols nobody serves (random visible-ASCII names)."""
    peer = await m.connect()
    alphabet = [chr(code) for code in range(0x21, 0x7F)]
    names = ["".join(rng.choices(alphabet, k=rng.randint(1, 128))) for _ in range(300)]
    await peer.open_many(names)
    await cut_or_done(peer)


@move("mux-bad-stream-id")
async def bad_stream_id(m: MuxMember, rng: random.Random) -> None:
    """A frame naming a stream id it may not: reused, skipped, the victim's parity, zero, the
    largest, never opened, or an ACCEPT/REFUSE of its own stream."""
    peer = await m.connect()
    own, next_id = peer.stream_id, peer.next_stream_id
    frame_type = rng.choice(list(FrameType))
    stream_id = rng.choice((own, next_id + 2, next_id + 1, 0, mw.MAX_STREAM_ID, 2, next_id))
    payload = {
        FrameType.OPEN: ECHO.encode(),
        FrameType.WINDOW: (1).to_bytes(4, "big"),
        FrameType.REFUSE: b"\x01",
        FrameType.RESET: b"\x00",
        FrameType.PING: bytes(8),
        FrameType.PONG: bytes(8),
        FrameType.GOAWAY: bytes(5),
    }.get(frame_type, b"x" if frame_type is FrameType.DATA else b"")
    await peer.send_frames(mw.frame(frame_type, stream_id, payload))
    await cut_or_done(peer)


@move("mux-credit-violation")
async def credit_violation(m: MuxMember, rng: random.Random) -> None:
    """Data past the credit of a stream whose reader never reads: sent, or only announced."""
    peer = await m.connect(SINK)
    credit = peer.mux.send_credit(peer.stream_id)
    excess = rng.randint(1, 1000)
    if rng.random() < 0.5:
        peer.mux.send_data(peer.stream_id, bytes(credit))
        await peer.flush()
        await peer.send_frames(mw.frame(FrameType.DATA, peer.stream_id, bytes(excess)))
    else:
        header = mw.HEADER.pack(FrameType.DATA, 0, peer.stream_id, credit + excess)
        await peer.send_frames(header + bytes(rng.randint(0, 100)))
    await cut_or_done(peer)


@move("mux-window-flood")
async def window_flood(m: MuxMember, rng: random.Random) -> None:
    """Thousands of small WINDOW grants, or one that overflows 2^31 - 1, or one of zero."""
    peer = await m.connect()
    choice = rng.randrange(3)
    if choice == 0:
        grant = mw.frame(FrameType.WINDOW, peer.stream_id, (1).to_bytes(4, "big"))
        await peer.send_frames(grant * rng.randint(1000, 20_000))
    else:
        increment = mw.MAX_WINDOW if choice == 1 else 0
        await peer.send_frames(
            mw.frame(FrameType.WINDOW, peer.stream_id, increment.to_bytes(4, "big"))
        )
    await cut_or_done(peer)


@move("mux-reset-churn")
async def reset_churn(m: MuxMember, rng: random.Random) -> None:
    """Opens and resets streams again and again (RESET before, or after, the answer), resets
    streams that are gone, and sometimes one twice."""
    peer = await m.connect()
    for _ in range(rng.randint(10, 200)):
        stream_id = peer.mux.open_stream(rng.choice((ECHO, SINK, BULK, "nobody/1")))
        code = bytes([rng.randrange(256)])  # codes it does not know too
        await peer.flush()
        if rng.random() < 0.5:
            await peer.wait_for(functools.partial(operator.contains, peer.answers, stream_id))
            if peer.answers[stream_id] is not None:  # refused, so gone: a late RESET
                await peer.send_frames(mw.frame(FrameType.RESET, stream_id, code))
                continue
        peer.mux.reset_stream(stream_id)
        peer.mux.data_to_send()  # its RESET, replaced by ours with the drawn code
        await peer.send_frames(mw.frame(FrameType.RESET, stream_id, code))
    if rng.random() < 0.2:
        reset = mw.frame(FrameType.RESET, peer.stream_id, b"\x00")
        await peer.send_frames(reset + reset)
    await cut_or_done(peer)


@move("mux-ping-flood")
async def ping_flood(m: MuxMember, rng: random.Random) -> None:
    """Thousands of PINGs (and unanswered PONGs), read or never read."""
    peer = await m.connect()
    frames = b"".join(
        mw.frame(rng.choice((FrameType.PING, FrameType.PONG)), 0, rng.randbytes(8))
        for _ in range(rng.randint(1000, 20_000))
    )
    await peer.send_frames(frames)
    if rng.random() < 0.5:
        m.held.append(peer.tcp)  # never read: the victim's answers back up, or it cuts
        return
    await cut_or_done(peer)


@move("mux-goaway")
async def goaway(m: MuxMember, rng: random.Random) -> None:
    """A GOAWAY, then more OPENs, a second GOAWAY, or streams kept busy past the grace."""
    peer = await m.connect()
    notice = mw.frame(FrameType.GOAWAY, 0, rng.randbytes(4) + bytes([rng.randrange(256)]))
    choice = rng.randrange(3)
    if choice == 0:
        await peer.send_frames(notice + mw.frame(FrameType.OPEN, peer.next_stream_id, b"echo/1"))
    elif choice == 1:
        await peer.send_frames(notice + notice)
    else:
        await peer.send_frames(notice)
        with trio.move_on_after(2 * CONNECTIONS.replaced_grace):
            while True:  # the victim closes it at the end of the grace
                await peer.echo(rng.randbytes(100))
                await trio.sleep(0.5)
    await cut_or_done(peer)


@move("mux-malformed-frame")
async def malformed_frame(m: MuxMember, rng: random.Random) -> None:
    """A header with random fields (type, flags, stream id, length), or random bytes as frames."""
    peer = await m.connect()
    if rng.random() < 0.5:
        header = mw.HEADER.pack(
            rng.randrange(256),
            rng.randrange(256),
            rng.choice((0, peer.stream_id, rng.randrange(1 << 32))),
            rng.choice((0, 1, 4, 5, 8, 129, mw.MAX_DATA_PAYLOAD + 1, rng.randrange(1 << 32))),
        )
        await peer.send_frames(header + rng.randbytes(rng.randint(0, 64)))
    else:
        await peer.send_frames(rng.randbytes(rng.randint(1, 2000)))
    await cut_or_done(peer)


@move("mux-message-abuse")
async def message_abuse(m: MuxMember, rng: random.Random) -> None:
    """A message over the maximum, thousands of empty messages nobody reads, a message cut by
    FIN or left half sent, or bytes and message fragments interleaved."""
    choice = rng.randrange(4)
    peer = await m.connect(SINK if choice == 1 else ECHO)
    stream_id = peer.stream_id
    if choice == 0:
        await peer.send_message(bytes(STREAM.max_message_size + rng.randint(1, 1000)))
    elif choice == 1:
        await peer.send_frames(message_frame(stream_id, b"") * rng.randint(1000, 30_000))
    elif choice == 2:
        peer.mux.send_data(stream_id, rng.randbytes(rng.randint(1, 50_000)), message=True)
        await peer.flush()
        if rng.random() < 0.5:
            await peer.send_frames(message_frame(stream_id, b"", Flag.FIN))
    else:
        for _ in range(rng.randint(1, 50)):
            flags = rng.choice((0, Flag.MESSAGE, Flag.MESSAGE | Flag.END))
            await peer.send_frames(message_frame(stream_id, rng.randbytes(100), flags))
    await cut_or_done(peer)


@move("mux-random-frames")
async def random_frames(m: MuxMember, rng: random.Random) -> None:
    """Well-formed frames of every type with random ids and contents, in random order."""
    peer = await m.connect()
    ids = (peer.stream_id, peer.next_stream_id, rng.randrange(1, 64))
    frames = []
    for _ in range(rng.randint(1, 40)):
        frame_type = rng.choice(list(FrameType))
        connection_level = frame_type in (FrameType.PING, FrameType.PONG, FrameType.GOAWAY)
        stream_id = 0 if connection_level else rng.choice(ids)
        size = {FrameType.WINDOW: 4, FrameType.REFUSE: 1, FrameType.RESET: 1}.get(frame_type, 0)
        if connection_level:
            size = 8 if frame_type is not FrameType.GOAWAY else 5
        elif frame_type in (FrameType.DATA, FrameType.OPEN):
            size = rng.randint(1, 128)
        flags = rng.choice((0, Flag.MESSAGE, Flag.MESSAGE | Flag.END, Flag.FIN))
        flags = flags if frame_type is FrameType.DATA else 0
        frames.append(mw.frame(frame_type, stream_id, rng.randbytes(size), flags))
    await peer.send_frames(b"".join(frames))
    await cut_or_done(peer)


@move("mux-stop-reading")
async def stop_reading(m: MuxMember, rng: random.Random) -> None:
    """Opens the stream that sends without end, and some others, then never reads again: the
    victim's writer waits on the socket; its keepalive, or the lane's end, ends the connection."""
    peer = await m.connect(BULK)
    await peer.open_many([rng.choice((ECHO, SINK)) for _ in range(rng.randint(0, 4))])
    m.held.append(peer.tcp)


MUX_MOVES: tuple[MuxMove, ...] = (
    open_flood,
    unknown_protocols,
    bad_stream_id,
    credit_violation,
    window_flood,
    reset_churn,
    ping_flood,
    goaway,
    malformed_frame,
    message_abuse,
    random_frames,
    stop_reading,
)
"""Multiplexing moves a host survives."""

MUX_FLOODS: tuple[MuxMove, ...] = (
    open_flood,
    unknown_protocols,
    window_flood,
    reset_churn,
    ping_flood,
    message_abuse,
)
"""The moves whose point is volume (the heap must stay flat across them)."""


# -- invariants ------------------------------------------------------------------------------------


def assert_victim_up(arena: MuxArena) -> None:
    """The victim's ``open_host`` is still running and its accept loop with it."""
    victim = arena.up
    assert victim.listeners and victim.listeners[0].socket.fileno() != -1


def assert_victim_bounded(arena: MuxArena) -> None:
    """Every table a peer can add to is within its bound: connections, the streams and queued
    answers of each, handshakes in progress, the reassembly budget."""
    victim = arena.up
    config = victim.config.connections
    assert len(victim.connections) <= config.max_connections
    live = [connection for group in victim.manager._live.values() for connection in group]
    for connection in live:
        mux = connection._mux
        assert mux.inbound_streams <= config.max_streams_per_peer, connection
        assert mux.output_size <= mux.max_output_backlog + 2 * mw.FRAME_CHUNK, connection
    # A member's connections: the current one and a few retiring, never one per move played
    # (those closing finish within a flush timeout).
    for peer_id, group in victim.manager._live.items():
        running = sum(1 for connection in group if connection.cause is None)
        assert running <= MAX_LIVE_PER_PEER, f"{running} connections of {peer_id.short}"
    assert victim.pending_handshakes <= victim.config.max_pending_handshakes
    budget = victim.context.budget
    assert budget.in_use <= budget.limit


async def assert_victim_serves(arena: MuxArena) -> None:
    """The honest peer's streams still flow, and a newcomer (a fresh handshake) is served."""
    honest = arena.honest
    assert honest is not None
    with trio.fail_after(SAFETY_NET):
        async with await honest.open(arena.up.peer_id, ECHO) as stream:
            for size in (10, 100_000):
                await stream.send_message(bytes(size))
                assert await stream.receive_message() == bytes(size)
        config = HostConfig(identity=extra_identity(18), psk=arena.psk)
        async with open_host(config) as newcomer:
            newcomer.context.offload_private_key_operations = arena.clock is None
            async with await newcomer.open(arena.up.peer_record(), ECHO) as stream:
                await stream.send_message(b"a newcomer")
                assert await stream.receive_message() == b"a newcomer"


async def honest_traffic(arena: MuxArena, interval: float) -> None:
    """The honest peer exchanges a message every ``interval`` seconds on one long stream,
    opened again if the victim ever closes it (it must not)."""
    honest = arena.honest
    assert honest is not None
    async with await honest.open(arena.up.peer_id, ECHO) as stream:
        count = 0
        while True:
            count += 1
            await stream.send_message(b"honest %d" % count)
            assert await stream.receive_message() == b"honest %d" % count
            await trio.sleep(interval)


async def settle_victim(arena: MuxArena) -> None:
    """Wait until the adversary's connections are gone, their handlers have returned and
    everything they held is released (the honest peer's traffic stopped first)."""
    victim = arena.up
    members = {identity.peer_id for identity in arena.members}
    await settle(lambda: not members & set(victim.manager._live))
    await settle(lambda: arena.handlers_running == 0)
    await settle(lambda: victim.context.budget.in_use == 0)


@contextmanager
def reported_victim(arena: MuxArena) -> Iterator[None]:
    """Name the victim's own exit, if it exited, on any failure in the block."""
    try:
        yield
    except BaseException as exc:
        if arena.exit_error is not None:
            exc.add_note(f"the victim exited: {arena.exit_error!r}")
        raise
