"""Hostile moves of a member on the transport (SPEC.md): handshake and record-layer abuse.

The member drives a sans-IO :class:`~p2ptls._connection.Connection` over a raw TCP connection to
its victim's host, so it can stop half way through a handshake, send garbage once it is
established, forge records with its own traffic keys (bit flips, replays, oversized fragments,
truncations) and flood control records. Each move reads until the victim closes, so that the
victim's reaction is part of the run.

The moves need only a :class:`HostTarget` (the member's identity, the network key, the victim's
host): any protocol's arena whose victim is a host can play them (the state network's and the
multiplexer's do). ``TRANSPORT_MOVES`` come from one source address;
``silent_handshakes_from_many_sources`` is the flood of issue 8 item 3 (it fills the host's global
pending-handshake slots).
"""

from __future__ import annotations

import random
from typing import Protocol

import trio
import trio.testing

from p2ptls import Host, Identity, NetworkKey, StreamConfig
from p2ptls import _mux_wire as mw
from p2ptls import _wire as wire
from p2ptls._connection import Connection, HandshakeState, PrivateKeyOperationNeeded
from p2ptls._records import RecordSealer
from tests.hostile_support import flip_bit, forged_sealer, next_timestamp

from .core import FunctionMove, move


class HostTarget(Protocol):
    """What a transport move needs of its lane: who it is and which host it attacks."""

    @property
    def identity(self) -> Identity: ...

    @property
    def psk(self) -> NetworkKey: ...

    @property
    def victim_host(self) -> Host: ...

    @property
    def held(self) -> list[trio.SocketStream]:
        """Raw TCP connections a move keeps open (the lane closes them when it ends)."""
        ...


TransportMove = FunctionMove[HostTarget]

SOURCES = tuple(f"127.0.0.{index}" for index in range(2, 12))
"""Loopback source addresses of a member with a few hosts (ten: more than the host's global
slots divided by its per-source bound)."""


async def tcp_to_victim(m: HostTarget, source: str | None = None) -> trio.SocketStream:
    return await trio.open_tcp_stream(*m.victim_host.address, local_address=source)


async def read_until_closed(tcp: trio.SocketStream) -> None:
    """Read (and drop) until the victim closes; then close our end."""
    try:
        while await tcp.receive_some():
            pass
    except trio.BrokenResourceError:
        pass
    finally:
        await tcp.aclose()


def initiator(m: HostTarget) -> Connection:
    """The member's side of a new connection to the victim (sans-IO)."""
    return Connection.initiator(
        StreamConfig(),
        m.identity,
        m.psk,
        m.victim_host.config.identity.record,
        timestamp_ns=next_timestamp(),
    )


async def handshake(m: HostTarget, tcp: trio.SocketStream) -> Connection:
    """Complete a genuine handshake with the victim over ``tcp`` (the member's own identity)."""
    conn = initiator(m)
    conn.start()
    await tcp.send_all(conn.data_to_send())
    while conn.state is not HandshakeState.ESTABLISHED:
        data = await tcp.receive_some()
        if not data:
            raise trio.BrokenResourceError("the victim closed during the handshake")
        for event in conn.receive_data_untrusted(data):
            if isinstance(event, PrivateKeyOperationNeeded):
                plaintext = m.identity.decrypt_untrusted(event.ciphertext, event.label)
                conn.supply_decryption(plaintext)
                await tcp.send_all(conn.data_to_send())
    return conn


def frames(rng: random.Random) -> bytes:
    """Genuine multiplexing frames (what a host's connection carries): an OPEN of the default
    protocol and a message on it."""
    return mw.frame(mw.FrameType.OPEN, 1, b"p2ptls/stream/1") + mw.frame(
        mw.FrameType.DATA, 1, rng.randbytes(rng.randint(1, 200)), mw.Flag.MESSAGE | mw.Flag.END
    )


@move("tcp-silent")
async def tcp_silent(m: HostTarget, rng: random.Random) -> None:
    """A connection that never says anything (the handshake deadline ends it)."""
    tcp = await tcp_to_victim(m)
    await read_until_closed(tcp)


@move("tcp-garbage")
async def tcp_garbage(m: HostTarget, rng: random.Random) -> None:
    """Random bytes instead of a Hello, or a header announcing a huge handshake record."""
    tcp = await tcp_to_victim(m)
    if rng.random() < 0.5:
        await tcp.send_all(rng.randbytes(rng.randint(1, 5000)))
    else:
        await tcp.send_all(wire.HEADER.pack(wire.HANDSHAKE, wire.PROTOCOL_VERSION, 65535))
    await read_until_closed(tcp)


@move("handshake-half")
async def handshake_half(m: HostTarget, rng: random.Random) -> None:
    """A genuine Hello (the victim does its RSA work), then nothing or a bogus Finish."""
    tcp = await tcp_to_victim(m)
    conn = initiator(m)
    conn.start()
    hello = conn.data_to_send()
    if rng.random() < 0.3:
        hello = hello[: rng.randrange(1, len(hello))]  # truncated, then EOF
        await tcp.send_all(hello)
        await tcp.send_eof()
    else:
        await tcp.send_all(hello)
        if rng.random() < 0.5:
            await tcp.receive_some()
            await tcp.send_all(wire.handshake_record(wire.Finish(rng.randbytes(32)).encode()))
    await read_until_closed(tcp)


@move("handshake-then-garbage")
async def handshake_then_garbage(m: HostTarget, rng: random.Random) -> None:
    """A complete handshake, then bytes that are no record, or a handshake record again."""
    tcp = await tcp_to_victim(m)
    await handshake(m, tcp)
    if rng.random() < 0.5:
        await tcp.send_all(rng.randbytes(rng.randint(1, 3000)))
    else:
        await tcp.send_all(wire.handshake_record(wire.Finish(rng.randbytes(32)).encode()))
    await read_until_closed(tcp)


@move("record-forged")
async def record_forged(m: HostTarget, rng: random.Random) -> None:
    """After the handshake: a record with a bit flipped, replayed, reordered, or cut short."""
    tcp = await tcp_to_victim(m)
    conn = await handshake(m, tcp)
    first = conn.send_data(frames(rng))
    second = conn.send_data(mw.frame(mw.FrameType.PING, 0, rng.randbytes(8)))
    choice = rng.randrange(5)
    if choice == 0:
        await tcp.send_all(flip_bit(first, rng.randrange(len(first) * 8)))
    elif choice == 1:
        await tcp.send_all(first + first)
    elif choice == 2:
        await tcp.send_all(second + first)
    elif choice == 3:
        await tcp.send_all(first[: rng.randrange(1, len(first))])
        await tcp.send_eof()
    else:
        await tcp.send_all(first + second + rng.randbytes(rng.randint(1, 40)))
    await read_until_closed(tcp)


@move("fragment-oversized")
async def fragment_oversized(m: HostTarget, rng: random.Random) -> None:
    """A message announcing more than the stream's maximum, or half a large message then EOF,
    or a length field above the largest record."""
    tcp = await tcp_to_victim(m)
    conn = await handshake(m, tcp)
    sealer: RecordSealer = forged_sealer(conn)
    choice = rng.randrange(3)
    if choice == 0:
        total = rng.choice((StreamConfig().max_message_size + 1, (1 << 32) - 1))
        await tcp.send_all(
            sealer.seal(wire.MESSAGE_START, wire.MESSAGE_LENGTH.pack(total) + b"x" * 100)
        )
    elif choice == 1:
        start = wire.MESSAGE_LENGTH.pack(1 << 20) + rng.randbytes(8000)
        await tcp.send_all(sealer.seal(wire.MESSAGE_START, start))
        await tcp.send_eof()
    else:
        await tcp.send_all(wire.HEADER.pack(wire.DATA, wire.PROTOCOL_VERSION, 65535))
    await read_until_closed(tcp)


@move("control-flood")
async def control_flood(m: HostTarget, rng: random.Random) -> None:
    """Thousands of transport PINGs or KEY_UPDATEs (bounded by the control budget)."""
    tcp = await tcp_to_victim(m)
    conn = await handshake(m, tcp)
    sealer = forged_sealer(conn)
    kind = rng.choice((wire.PING, wire.KEY_UPDATE))
    records = []
    for index in range(rng.choice((100, 2000))):
        if kind == wire.PING:
            records.append(sealer.seal(wire.PING, index.to_bytes(8, "big")))
        else:
            records.append(sealer.seal(wire.KEY_UPDATE, b""))
            sealer.advance_key()
    await tcp.send_all(b"".join(records))
    await read_until_closed(tcp)


@move("silent-handshakes-many-sources")
async def silent_handshakes_from_many_sources(m: HostTarget, rng: random.Random) -> None:
    """Holds as many silent TCP connections as the host takes from each of ten sources: the
    global pending-handshake slots fill (issue 8 item 3). They stay open until the lane ends."""
    per_source = m.victim_host.config.max_pending_per_address
    for source in SOURCES:
        for _ in range(per_source):
            m.held.append(await tcp_to_victim(m, source))
    await trio.testing.wait_all_tasks_blocked()


TRANSPORT_MOVES: tuple[TransportMove, ...] = (
    tcp_silent,
    tcp_garbage,
    handshake_half,
    handshake_then_garbage,
    record_forged,
    fragment_oversized,
    control_flood,
    silent_handshakes_from_many_sources,
)
"""Handshake and record-layer moves an honest node survives."""
