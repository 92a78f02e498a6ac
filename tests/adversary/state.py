"""Hostile moves of a member on the state protocol: every message type of ``_wire.py``.

Each move plays one :class:`~tests.adversary.network.StateMember` lane against its victim:
versions at the limits (0, 1, 2^63-2, 2^63-1, 2^64-2, 2^64-1), made-up ids, floods, replays,
messages out of order, truncations, and valid-but-lying messages. The member holds the network
key and a genuine identity, so whatever it signs with its own keys is valid; what it claims about
others is not.

``STATE_MOVES`` is the catalogue an honest network must survive. ``ATTACK_MOVES`` groups the
attacks of the hardening issue (8) by item, and the ones this harness found, for their regression
tests; they are in ``STATE_MOVES`` too.
"""

from __future__ import annotations

import random
import struct

import attrs
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from p2ptls.state import _wire as wire

from .core import FunctionMove, move
from .network import StateMember, silent_state_member

MAX = wire.MAX_COUNTER
"""2^63 - 1: the first counter value out of range."""
LIMIT_VALUES = (0, 1, 2, MAX - 1, MAX, (1 << 64) - 2, (1 << 64) - 1)
"""Versions at and around the limits (only 1 .. 2^63-2 are valid)."""
VALID_LIMITS = (1, 2, MAX - 2, MAX - 1)
HUGE: wire.Version = (MAX - 1, MAX - 1)
"""The largest valid version."""

StateMove = FunctionMove[StateMember]


# -- hostile values --------------------------------------------------------------------------------


def made_up_id(rng: random.Random) -> bytes:
    return rng.randbytes(wire.ID_SIZE)


def limit(rng: random.Random) -> int:
    return rng.choice(LIMIT_VALUES)


def valid_version(rng: random.Random) -> wire.Version:
    return (rng.choice((*VALID_LIMITS, rng.randint(1, MAX - 1))), rng.randint(1, MAX - 1))


def raw_entries(kind: int, entries: list[tuple[bytes, int, int]]) -> bytes:
    """A DIGEST or PULL with exactly these entries: no range, order or count check."""
    parts = [bytes([kind]), struct.pack(">I", len(entries))]
    parts.extend(wire.ENTRY.pack(owner, epoch, seq) for owner, epoch, seq in entries)
    return b"".join(parts)


def fake_public_key_der(rng: random.Random) -> bytes:
    """A well-formed RSA-2048 public key nobody holds the private key of (cheap to make)."""
    modulus = rng.getrandbits(2048) | (1 << 2047) | 1
    key = rsa.RSAPublicNumbers(65537, modulus).public_key()
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def hostile_address(rng: random.Random, member: StateMember) -> wire.Address | None:
    victim = member.victim_node.address
    return rng.choice(
        [
            None,
            None,
            ("127.0.0.1", rng.randint(1, 65535)),
            ("0.0.0.0", 1),
            ("::", 65535),
            ("x" * 255, 65535),
            ("not a host name", 1),
            victim if victim is not None else None,
        ]
    )


def encode_address_raw(host: bytes, port: int) -> bytes:
    return bytes([len(host)]) + host + struct.pack(">H", port)


def truncated(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(0, max(1, len(data)))]


# -- HELLO -----------------------------------------------------------------------------------------


@move("hello-again")
async def hello_again(m: StateMember, rng: random.Random) -> None:
    """A second STATE_HELLO on an established connection (closed: out of order)."""
    conn = await m.state()
    await conn.send(wire.StateHello(m.network_id, rng.choice(VALID_LIMITS), None))


@move("hello-hostile")
async def hello_hostile(m: StateMember, rng: random.Random) -> None:
    """A first message that is no valid STATE_HELLO: fields at the limits, another network, a bad
    address, another message type first, nothing at all."""
    stream = await m.stream()
    try:
        choice = rng.randrange(7)
        body = wire.STATE_HELLO_BODY
        if choice == 0:  # version 0, 2 or 255
            version = rng.choice((0, 2, 255))
            data = bytes([wire.STATE_HELLO]) + body.pack(version, m.network_id, 1) + b"\x00"
        elif choice == 1:  # incarnation at the limits
            data = bytes([wire.STATE_HELLO]) + body.pack(1, m.network_id, limit(rng)) + b"\x00"
        elif choice == 2:  # another state network
            data = wire.StateHello(made_up_id(rng), 1, None).encode()
        elif choice == 3:  # a bad address
            address = rng.choice(
                [encode_address_raw(b"\xff\xfe", 80), encode_address_raw(b"h", 0), b"\x05ab"]
            )
            data = bytes([wire.STATE_HELLO]) + body.pack(1, m.network_id, 1) + address
        elif choice == 4:  # a DIGEST before the STATE_HELLO
            data = wire.Digest(((made_up_id(rng), (1, 1)),)).encode()
        elif choice == 5:  # truncated
            data = truncated(rng, wire.StateHello(m.network_id, 1, ("127.0.0.1", 9)).encode())
        else:  # nothing: the victim's hello deadline closes the connection
            data = b""
        if data:
            await stream.send_message(data)
        while True:
            await stream.receive_message()
    finally:
        await stream.aclose()


# -- DIGEST ----------------------------------------------------------------------------------------


@move("digest-limits")
async def digest_limits(m: StateMember, rng: random.Random) -> None:
    """Made-up owners at versions at the limits (mostly invalid: the victim closes)."""
    conn = await m.state()
    entries = sorted((made_up_id(rng), limit(rng), limit(rng)) for _ in range(rng.randint(1, 8)))
    await conn.send(raw_entries(wire.DIGEST, entries))


@move("digest-unsorted")
async def digest_unsorted(m: StateMember, rng: random.Random) -> None:
    """Duplicate or descending owners, or a count above what follows."""
    conn = await m.state()
    owner = made_up_id(rng)
    entries = [(owner, 1, 1), (owner, 2, 2)] if rng.random() < 0.5 else [(b"\xff" * 32, 1, 1)]
    entries.append((bytes(32), 1, 1))
    data = raw_entries(wire.DIGEST, entries)
    if rng.random() < 0.3:
        data = bytes([wire.DIGEST]) + struct.pack(">I", rng.choice((65537, 1 << 31))) + data[5:]
    await conn.send(data)


@move("digest-made-up-owners")
async def digest_made_up_owners(m: StateMember, rng: random.Random) -> None:
    """A valid DIGEST claiming many owners nobody knows (the victim pulls from us, bounded)."""
    conn = await m.state()
    count = rng.choice((1, 100, 2000))
    entries = sorted((made_up_id(rng), *valid_version(rng)) for _ in range(count))
    await conn.send(raw_entries(wire.DIGEST, entries))


@move("digest-honest-owners-huge")
async def digest_honest_owners_huge(m: StateMember, rng: random.Random) -> None:
    """Claims to hold the other honest owners at the largest version (a lie it cannot back)."""
    conn = await m.state()
    victim = m.victim.peer_id.digest
    owners = sorted(h.peer_id.digest for h in m.network.honest if h.peer_id.digest != victim)
    await conn.send(raw_entries(wire.DIGEST, [(owner, *HUGE) for owner in owners]))


@move("digest-flood")
async def digest_flood(m: StateMember, rng: random.Random) -> None:
    """Many digests in a row, each naming every honest owner at (1, 1)."""
    conn = await m.state()
    owners = sorted(h.peer_id.digest for h in m.network.honest)
    data = raw_entries(wire.DIGEST, [(owner, 1, 1) for owner in owners])
    for _ in range(rng.choice((10, 200))):
        await conn.send(data)


@move("digest-pull-made-up-flood")
async def digest_pull_made_up_flood(m: StateMember, rng: random.Random) -> None:
    """DIGESTs and PULLs of 65536 fresh made-up owners each: what the victim remembers per
    connection grows with every message (found by this harness; not an item of issue 8)."""
    conn = await m.state()
    for kind in (wire.DIGEST, wire.PULL):
        entries = sorted((made_up_id(rng), 1, 1) for _ in range(wire.MAX_DIGEST_ENTRIES))
        await conn.send(raw_entries(kind, entries))
    await conn.barrier()


@move("digest-victim-own-huge")
async def digest_victim_own_huge(m: StateMember, rng: random.Random) -> None:
    """Claims the victim's own state is at a huge version (valid-but-lying: issue 8 item 1)."""
    conn = await m.state()
    epoch = rng.choice((MAX - 1, MAX - 2, (1 << 62)))
    await conn.send(raw_entries(wire.DIGEST, [(m.victim.peer_id.digest, epoch, MAX - 1)]))
    await conn.barrier()


# -- PULL ------------------------------------------------------------------------------------------


@move("pull-limits")
async def pull_limits(m: StateMember, rng: random.Random) -> None:
    """PULL of honest and made-up owners from versions at the limits ((0, 0): everything)."""
    conn = await m.state()
    owners = [h.peer_id.digest for h in m.network.honest] + [made_up_id(rng)]
    entries = sorted((owner, limit(rng), limit(rng)) for owner in owners)
    if rng.random() < 0.5:
        entries = [(owner, 0, 0) for owner, _e, _s in entries]
    await conn.send(raw_entries(wire.PULL, entries))


@move("pull-flood")
async def pull_flood(m: StateMember, rng: random.Random) -> None:
    """Asks for every honest owner's whole state again and again (amplification)."""
    conn = await m.state()
    owners = sorted(h.peer_id.digest for h in m.network.honest)
    data = raw_entries(wire.PULL, [(owner, 0, 0) for owner in owners])
    for _ in range(rng.choice((10, 300))):
        await conn.send(data)


# -- UPDATES ---------------------------------------------------------------------------------------


@move("updates-own-valid-limits")
async def updates_own_valid_limits(m: StateMember, rng: random.Random) -> None:
    """Valid updates of the member's own state at versions up to the very last one."""
    conn = await m.state()
    epoch = rng.choice((1, 2, MAX - 1))
    forger = m.forger(epoch)
    start = rng.choice((1, MAX - 3, rng.randint(1, MAX - 4)))
    records = forger.records([(f"k{rng.randrange(4)}", rng.randbytes(8))], start=start)
    await conn.send(forger.updates(forger.span(records)))


@move("updates-bad-signature")
async def updates_bad_signature(m: StateMember, rng: random.Random) -> None:
    """A batch signature or record hash that does not verify (the victim closes)."""
    conn = await m.state()
    forger = m.forger(1)
    records = forger.records([("k", b"v")], start=rng.randint(1, 100))
    batch = forger.batch(records)
    signature = bytearray(batch.signature)
    signature[rng.randrange(64)] ^= 1 << rng.randrange(8)
    broken = attrs.evolve(batch, signature=bytes(signature))
    await conn.send(forger.updates(forger.span(records, batch=broken)))


@move("updates-span-without-certificate")
async def updates_span_without_certificate(m: StateMember, rng: random.Random) -> None:
    """Own records under an epoch whose certificate is never sent (the victim pulls instead)."""
    conn = await m.state()
    forger = m.forger(rng.choice((7, 8, MAX - 1)))
    records = forger.records([("uncertified", b"v")], start=rng.randint(1, 1000))
    await conn.send(forger.updates(forger.span(records), certificates=()))


@move("updates-made-up-owners")
async def updates_made_up_owners(m: StateMember, rng: random.Random) -> None:
    """Spans of owners nobody knows, signed by the member under a key they never certified."""
    conn = await m.state()
    forger = m.forger(1)
    spans = []
    for _ in range(rng.choice((1, 50))):
        owner = made_up_id(rng)
        records = [wire.encode_record(owner, 1, 1, "k", b"made up")]
        batch = forger.batch(records, owner=owner)
        spans.append(wire.Span(owner, wire.NO_VERSION, (wire.Group(batch, tuple(records)),)))
    await conn.send(wire.Updates((), tuple(spans)))


@move("updates-honest-owner-forged")
async def updates_honest_owner_forged(m: StateMember, rng: random.Random) -> None:
    """A record claiming an honest owner, signed by the member (the certificate gives it away
    if sent; without it the victim only pulls)."""
    conn = await m.state()
    forger = m.forger(1)
    honest = rng.choice(m.network.honest)
    owner = honest.peer_id.digest
    records = [wire.encode_record(owner, honest.epoch, rng.randint(1, 50), "baseline", b"lie")]
    batch = forger.batch(records, owner=owner)
    span = wire.Span(owner, wire.NO_VERSION, (wire.Group(batch, tuple(records)),))
    real = forger.certificate
    relabelled = wire.EpochCertificate(
        m.network_id,
        owner,
        honest.epoch,
        real.signing_key,
        real.signature,
        honest.config.identity.record.public_key_der,
    )
    certificates = (relabelled,) if rng.random() < 0.5 else ()
    await conn.send(wire.Updates(certificates, (span,)))


@move("updates-equivocation")
async def updates_equivocation(m: StateMember, rng: random.Random) -> None:
    """Two different records signed for one version (refused and reported, not applied)."""
    conn = await m.state()
    forger = m.forger(3)
    seq = rng.randint(1, 1000)
    first = forger.records([("e", b"one")], start=seq)
    second = forger.records([("e", b"two")], start=seq)
    await conn.send(forger.updates(forger.span(first)))
    await conn.send(forger.updates(forger.span(second), certificates=()))


@move("updates-replay")
async def updates_replay(m: StateMember, rng: random.Random) -> None:
    """Sends back messages the victim sent us (signed honest updates, digests, members...)."""
    conn = await m.state()
    if not conn.received:
        await conn.barrier()
        return
    for data in rng.sample(list(conn.received), min(len(conn.received), rng.choice((1, 8)))):
        if data[:1] != bytes([wire.STATE_HELLO]) or rng.random() < 0.2:
            await conn.send(data)


@move("updates-truncated-or-garbage")
async def updates_truncated_or_garbage(m: StateMember, rng: random.Random) -> None:
    """A valid message cut short, an empty message, an unknown type or random bytes."""
    conn = await m.state()
    forger = m.forger(1)
    samples = [
        forger.updates(forger.span(forger.records([("t", b"v")], start=5))).encode(),
        wire.Members((wire.MemberInfo(m.identity.record.public_key_der, None),)).encode(),
        raw_entries(wire.PULL, [(made_up_id(rng), 0, 0)]),
        wire.Ping(b"12345678").encode(),
    ]
    choice = rng.randrange(4)
    if choice == 0:
        data = truncated(rng, rng.choice(samples))
    elif choice == 1:
        data = b""
    elif choice == 2:
        data = bytes([rng.choice((0x00, 0x09, 0x7F, 0xFF))]) + rng.randbytes(rng.randrange(64))
    else:
        data = rng.randbytes(rng.randrange(1, 4096))
    await conn.send(data)


@move("updates-certificates-without-batches")
async def updates_certificates_without_batches(m: StateMember, rng: random.Random) -> None:
    """Valid certificates of the member's own key for many epochs, never a batch (item 5)."""
    conn = await m.state()
    base = rng.randint(10, 1 << 40)
    certificates = tuple(m.forger(base + i).certificate for i in range(rng.choice((8, 32))))
    await conn.send(wire.Updates(certificates, ()))
    await conn.barrier()


@move("updates-stale-with-certificate")
async def updates_stale_with_certificate(m: StateMember, rng: random.Random) -> None:
    """Records older than what the victim holds of the member, with the certificate of their
    (older) epoch: nothing applies, yet the certificate stays without a batch (item 5)."""
    conn = await m.state()
    newest = m.forger(MAX - 1)
    records = newest.records([("stale", b"newest")], start=rng.randint(1, 1000))
    await conn.send(newest.updates(newest.span(records)))
    older = m.forger(rng.randint(100, 1000))
    await conn.send(older.updates(older.span(older.records([("stale", b"older")], start=1))))
    await conn.barrier()


@move("updates-many-owners-real-keys")
async def updates_many_owners_real_keys(m: StateMember, rng: random.Random) -> None:
    """Certificates of many genuine owners (real keys the adversary holds) to fill the owners
    table (item 5)."""
    conn = await m.state()
    certificates = tuple(m.forger(1, identity).certificate for identity in m.network.adversaries)
    await conn.send(wire.Updates(certificates, ()))
    await conn.barrier()


@move("updates-span-victim-own-huge")
async def updates_span_victim_own_huge(m: StateMember, rng: random.Random) -> None:
    """A span of the victim's own id at a huge version in an epoch it never certified (its batch
    cannot be checked, and needs not be: item 1)."""
    conn = await m.state()
    forger = m.forger(MAX - 1)
    owner = m.victim.peer_id.digest
    records = [wire.encode_record(owner, MAX - 1, MAX - 1, "k", b"lie")]
    batch = forger.batch(records, owner=owner)
    span = wire.Span(owner, wire.NO_VERSION, (wire.Group(batch, tuple(records)),))
    await conn.send(wire.Updates((), (span,)))
    await conn.barrier()


# -- MEMBERS ---------------------------------------------------------------------------------------


@move("members-garbage")
async def members_garbage(m: StateMember, rng: random.Random) -> None:
    """Keys that are no RSA keys, key lengths 0 and 1025, bad addresses."""
    conn = await m.state()
    choice = rng.randrange(3)
    if choice == 0:
        infos = [
            wire.MemberInfo(rng.randbytes(rng.randint(1, 1024)), hostile_address(rng, m))
            for _ in range(rng.choice((1, 64)))
        ]
        await conn.send(wire.Members(tuple(infos)))
    elif choice == 1:
        length = rng.choice((0, 1025, 65535))
        await conn.send(bytes([wire.MEMBERS]) + b"\x00\x01" + struct.pack(">H", length) + b"k")
    else:
        bad = encode_address_raw(b"\xc3\x28", rng.choice((0, 80)))
        der = m.identity.record.public_key_der
        head = bytes([wire.MEMBERS]) + b"\x00\x01" + struct.pack(">H", len(der))
        await conn.send(head + der + bad)


@move("members-redirect-honest")
async def members_redirect_honest(m: StateMember, rng: random.Random) -> None:
    """The honest members' real keys with addresses that lead nowhere (gossip may not replace
    the address of a connected member)."""
    conn = await m.state()
    infos = tuple(
        wire.MemberInfo(h.config.identity.record.public_key_der, ("127.0.0.1", rng.randint(1, 9)))
        for h in m.network.honest
    )
    await conn.send(wire.Members(infos))


@move("members-made-up")
async def members_made_up(m: StateMember, rng: random.Random) -> None:
    """A thousand made-up member records (item 2: they fill the member table)."""
    conn = await m.state()
    infos = tuple(
        wire.MemberInfo(fake_public_key_der(rng), None) for _ in range(wire.MAX_MEMBERS_PER_MESSAGE)
    )
    await conn.send(wire.Members(infos))
    await conn.barrier()


# -- DIRECT, PING, PONG ----------------------------------------------------------------------------


@move("direct-flood")
async def direct_flood(m: StateMember, rng: random.Random) -> None:
    """Direct messages nobody reads, up to (and once past) the size limit."""
    conn = await m.state()
    largest = m.victim_node.config.max_direct_size
    for _ in range(300):  # more than the default direct_buffer (256)
        size = rng.choice((0, 1, largest, largest, largest))
        await conn.send(bytes([wire.DIRECT]) + bytes(size))
    if rng.random() < 0.2:
        await conn.send(bytes([wire.DIRECT]) + bytes(largest + 1))


@move("ping-flood")
async def ping_flood(m: StateMember, rng: random.Random) -> None:
    """Thousands of PINGs (with a malformed one now and then)."""
    conn = await m.state()
    for index in range(rng.choice((100, 1000))):
        await conn.send(wire.Ping(index.to_bytes(8, "big")))
    if rng.random() < 0.2:
        await conn.send(bytes([wire.PING]) + rng.randbytes(rng.choice((0, 7, 9))))


@move("pong-unsolicited")
async def pong_unsolicited(m: StateMember, rng: random.Random) -> None:
    conn = await m.state()
    for _ in range(rng.choice((1, 100))):
        await conn.send(wire.Pong(rng.randbytes(8)))


@move("silence")
async def silence(m: StateMember, rng: random.Random) -> None:
    """A member whose connection goes silent after the HELLOs (the victim's connection keepalive
    closes it after ``ping_timeout``), or that only stops talking on its state stream while its
    host answers the keepalive (the session stays; a PING later still gets its PONG)."""
    if rng.random() < 0.5:
        async with silent_state_member(m.identity, m.network.psk, m.victim_record) as member:
            await member.wait_closed()
        return
    conn = await m.state()
    await trio.sleep(m.victim_node.config.ping_timeout)
    await conn.barrier()


STATE_MOVES: tuple[StateMove, ...] = (
    hello_again,
    hello_hostile,
    digest_limits,
    digest_unsorted,
    digest_made_up_owners,
    digest_honest_owners_huge,
    digest_flood,
    pull_limits,
    pull_flood,
    updates_own_valid_limits,
    updates_bad_signature,
    updates_span_without_certificate,
    updates_made_up_owners,
    updates_honest_owner_forged,
    updates_equivocation,
    updates_replay,
    updates_truncated_or_garbage,
    members_garbage,
    members_redirect_honest,
    direct_flood,
    ping_flood,
    pong_unsolicited,
    silence,
)
"""Every hostile state move an honest network survives today."""

ATTACK_MOVES: dict[str, tuple[StateMove, ...]] = {
    "item 1": (digest_victim_own_huge, updates_span_victim_own_huge),
    "item 2": (members_made_up,),
    "item 5": (
        updates_certificates_without_batches,
        updates_stale_with_certificate,
        updates_many_owners_real_keys,
    ),
    "unbounded peer beliefs": (digest_pull_made_up_flood,),
}
"""The attacks of the hardening issue (8) by item, and those the harness found (each once broke an
honest network; their regression tests name them)."""

STATE_MOVES += tuple(m for moves in ATTACK_MOVES.values() for m in moves)
