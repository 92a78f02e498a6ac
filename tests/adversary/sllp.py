"""Hostile moves on an established SLLP channel (SPEC-sllp.md), and the arena they play in.

The arena is one honest channel (the *victim*, the offerer) and its peer's channel, over
in-memory datagram transports (deterministic, autojump-friendly). The adversary *is* that peer: it
completed the stream handshake and the channel set-up, so it holds the session keys and can seal
any body (:func:`~p2ptls.sllp.testing.seal_datagram`); it also spoofs, replays and truncates
datagrams, and floods the victim's reassembly with fragments of messages it never finishes.

An honest application task keeps reading the victim channel (as a real one would); the invariants
are that the channel stays open, its tables stay within their configured bounds, and a message
sent after the attack still arrives both ways.
"""

from __future__ import annotations

import collections
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio
import trio.testing

from p2ptls.sllp import SllpChannel, SllpConfig
from p2ptls.sllp import _wire as wire
from p2ptls.sllp.relay import MemoryTransport, memory_transport_pair
from p2ptls.sllp.testing import channel_pair, seal_datagram

from .core import FunctionMove, move

SAFETY_NET = 60.0


@attrs.define(eq=False)
class SllpArena:
    """The victim channel, the adversary's (genuine) peer channel, and what the victim's
    application received."""

    victim: SllpChannel
    peer: SllpChannel
    victim_transport: MemoryTransport
    received: collections.Counter[str] = attrs.Factory(collections.Counter)
    """Messages the victim's application received, by their first bytes."""
    peer_received: collections.Counter[str] = attrs.Factory(collections.Counter)
    highest_id: int = -1
    """The highest message id the adversary used."""
    sealed: collections.deque[bytes] = attrs.Factory(lambda: collections.deque(maxlen=256))
    """Authentic datagrams the adversary made (for replays)."""
    ended: BaseException | None = None
    """How the victim's reading ended, if it did (an invariant violation during the attack)."""
    _changed: trio.Event = attrs.Factory(trio.Event)

    def inject(self, datagram: bytes) -> None:
        """Deliver a datagram to the victim as if from the network."""
        self.victim_transport.inject(datagram)

    def seal(self, body: bytes, **fields: int) -> bytes:
        """An authentic datagram from the peer carrying ``body``, kept for replays."""
        datagram = seal_datagram(self.peer.session, body, **fields)
        self.sealed.append(datagram)
        body_type, message_id, _index, _count = wire.BODY.unpack_from(body.ljust(wire.BODY_SIZE))
        if body_type == wire.TYPE_DATA:
            self.highest_id = max(self.highest_id, message_id)
        return datagram

    async def settle(self) -> None:
        """Let the victim process everything injected so far."""
        await trio.testing.wait_all_tasks_blocked()

    async def read_victim(self) -> None:
        try:
            async for message in self.victim:
                self.received["whole" if not message.missing else "partial"] += 1
                self.received[bytes(message.data[:16]).decode(errors="replace")] += 1
                self._changed.set()
                self._changed = trio.Event()
        except Exception as exc:
            self.ended = exc
            raise

    async def read_peer(self) -> None:
        async for message in self.peer:
            self.peer_received[bytes(message.data[:16]).decode(errors="replace")] += 1
            self._changed.set()
            self._changed = trio.Event()

    async def wait_received(self, counter: collections.Counter[str], marker: str) -> None:
        with trio.fail_after(SAFETY_NET):
            while not counter[marker[:16]]:
                await self._changed.wait()


@asynccontextmanager
async def open_sllp_arena(
    clock: trio.testing.MockClock | None = None, config: SllpConfig | None = None
) -> AsyncIterator[SllpArena]:
    """An established channel pair over memory transports, both sides read by honest tasks."""
    transports = memory_transport_pair()
    victim, peer = await channel_pair(config, transports=transports, clock=clock)
    arena = SllpArena(victim, peer, transports[0])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(arena.read_victim)
        nursery.start_soon(arena.read_peer)
        try:
            yield arena
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def sllp_lane(arena: SllpArena, _lane: int) -> AsyncIterator[SllpArena]:
    """Lane factory for :func:`~tests.adversary.core.run_adversary` (lanes share the peer)."""
    yield arena


def assert_sllp_bounded(arena: SllpArena) -> None:
    """The victim channel is open and its tables are within their configured bounds."""
    assert arena.ended is None, f"the victim stopped reading: {arena.ended!r}"
    session = arena.victim.session
    assert session.closed is None, f"the victim channel closed: {session.closed!r}"
    config = arena.victim.config
    reassembler = session._reassembler
    assert reassembler.messages_held <= config.max_reassembly_messages
    assert reassembler.bytes_held <= config.max_reassembly_bytes
    assert len(arena.victim._inbox) <= 2 * config.max_unread_messages + 64


async def assert_sllp_still_flows(arena: SllpArena) -> None:
    """The victim's messages still reach its peer; and the peer's reach the victim, once the
    peer numbers its messages above every id the adversary used (unless it used the last one:
    then the adversary only spoilt its own sending)."""
    await arena.victim.send(b"victim: after the attack")
    await arena.wait_received(arena.peer_received, "victim: after the attack")
    if arena.highest_id >= wire.MAX_MESSAGE_ID - 1:
        return
    session = arena.peer.session
    session._next_message_id = max(session._next_message_id, arena.highest_id + 1)
    await arena.peer.send(b"peer: after the attack")
    await arena.wait_received(arena.received, "peer: after the attack")


SllpMove = FunctionMove[SllpArena]


def data_body(message_id: int, index: int, count: int, payload: bytes) -> bytes:
    return wire.encode_body(wire.TYPE_DATA, message_id, index, count, payload)


def fragment_size(arena: SllpArena) -> int:
    return arena.victim.session.parameters.fragment_size


@move("sllp-garbage")
async def sllp_garbage(arena: SllpArena, rng: random.Random) -> None:
    """Random datagrams of every size, below the header and above the maximum."""
    for _ in range(rng.choice((1, 100))):
        size = rng.choice((0, 1, wire.HEADER_SIZE, wire.MIN_DATAGRAM - 1, 1200, 70_000))
        arena.inject(rng.randbytes(size))
    await arena.settle()


@move("sllp-spoofed")
async def sllp_spoofed(arena: SllpArena, rng: random.Random) -> None:
    """The victim's connection id and any sequence number (huge ones too), but no valid tag."""
    cid = arena.victim.session.parameters.local_connection_id
    for _ in range(rng.choice((1, 100))):
        sequence = rng.choice((0, 1, rng.getrandbits(64), wire.MAX_SEQUENCE))
        header = wire.encode_header(rng.randint(0, 1), cid, sequence)
        arena.inject(header + rng.randbytes(rng.randint(wire.BODY_SIZE + wire.TAG_SIZE, 1182)))
    await arena.settle()


@move("sllp-replay")
async def sllp_replay(arena: SllpArena, rng: random.Random) -> None:
    """Authentic datagrams sent again, now or much later."""
    if not arena.sealed:
        arena.inject(arena.seal(data_body(rng.getrandbits(20), 0, 1, b"replayed")))
    for datagram in rng.sample(list(arena.sealed), min(len(arena.sealed), rng.choice((1, 32)))):
        arena.inject(datagram)
    await arena.settle()


@move("sllp-bad-fragment-fields")
async def sllp_bad_fragment_fields(arena: SllpArena, rng: random.Random) -> None:
    """Authentic bodies with fragment counts 0 or huge, indexes out of range, counts that
    disagree for one message, unknown types, a keep-alive with a payload, oversized payloads."""
    message_id = rng.getrandbits(32)
    size = fragment_size(arena)
    bodies = [
        data_body(message_id, 0, 0, b"x"),
        data_body(message_id, 5, 3, b"x"),
        data_body(message_id, 0, wire.MAX_FRAGMENTS, b"x" * size),
        data_body(message_id + 1, 0, 3, b"x" * size),
        data_body(message_id + 1, 1, 4, b"x" * size),
        data_body(message_id + 2, 0, 1, b"x" * (size + 1)),
        wire.BODY.pack(rng.choice((0, 4, 0xFF)), 0, 0, 0),
        wire.encode_body(wire.TYPE_KEEPALIVE, 0, 0, 0, b"payload"),
        wire.BODY.pack(wire.TYPE_DATA, wire.MAX_MESSAGE_ID, 0, 1) + b"last id",
    ]
    for body in rng.sample(bodies, rng.randint(1, len(bodies))):
        arena.inject(arena.seal(body))
    await arena.settle()


@move("sllp-reassembly-flood")
async def sllp_reassembly_flood(arena: SllpArena, rng: random.Random) -> None:
    """Thousands of messages of which only the first fragment ever comes."""
    size = fragment_size(arena)
    most = max(1, arena.victim.config.max_message_size // size)
    base = rng.getrandbits(40)
    for index in range(rng.choice((50, 2000))):
        arena.inject(arena.seal(data_body(base + index, 0, most, rng.randbytes(size))))
        if index % 200 == 199:
            await arena.settle()
    await arena.settle()


@move("sllp-message-id-gaps")
async def sllp_message_id_gaps(arena: SllpArena, rng: random.Random) -> None:
    """Complete one-fragment messages with ids far apart (gaps the victim tracks as losses)."""
    message_id = rng.getrandbits(48)
    for _ in range(rng.choice((10, 500))):
        message_id += rng.choice((2, 1000, 1 << 20))
        arena.inject(arena.seal(data_body(message_id, 0, 1, b"gap")))
    await arena.settle()


@move("sllp-sequence-jump")
async def sllp_sequence_jump(arena: SllpArena, rng: random.Random) -> None:
    """An authentic datagram far ahead in sequence, then ones behind the window."""
    session = arena.peer.session
    ahead = session._send_sequence + rng.choice((1000, 1 << 20))
    arena.inject(arena.seal(data_body(rng.getrandbits(30), 0, 1, b"ahead"), sequence=ahead))
    session._send_sequence = ahead + 1
    for sequence in (0, 1, ahead - 5000):
        if sequence >= 0:
            arena.inject(arena.seal(data_body(1, 0, 1, b"old"), sequence=sequence))
    await arena.settle()


@move("sllp-idle")
async def sllp_idle(arena: SllpArena, rng: random.Random) -> None:
    """Nothing for a while (keep-alives must keep the channel up)."""
    await trio.sleep(rng.choice((1.0, 15.0)))


SLLP_MOVES: tuple[SllpMove, ...] = (
    sllp_garbage,
    sllp_spoofed,
    sllp_replay,
    sllp_bad_fragment_fields,
    sllp_reassembly_flood,
    sllp_message_id_gaps,
    sllp_sequence_jump,
    sllp_idle,
)
"""Hostile datagram moves an established channel survives."""
