"""Tools shared by the hostile-input tests (``tests/test_hostile_*.py``, ``tests/test_fuzz.py``).

* Reproducible handshakes: seeded randomness and memoised RSA-OAEP make every flight byte for byte
  the same for the same seed, and run each RSA private-key operation once per distinct ciphertext,
  so a property test can rebuild a connection in any state for every example at little cost.
* Forgery: a Hello re-bound under a network key (what any network member can produce) and an
  independent :class:`~p2ptls._records.RecordSealer` in step with a connection's outgoing direction.

The host harness (a listening host, good peers, :func:`~tests.host_harness.assert_host_serves`)
is ``tests/host_harness.py``; the hostile peer that speaks the record layer and the multiplexer by
hand is ``tests/raw_peer.py``.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable
from typing import Any

import attrs
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from p2ptls import (
    Identity,
    KnownPeers,
    NetworkKey,
    PeerRecord,
    ReplayGuard,
    StreamConfig,
    _handshake,
)
from p2ptls import _keyschedule as ks
from p2ptls import _wire as wire
from p2ptls._connection import (
    Connection,
    Event,
    HandshakeComplete,
    HandshakeState,
    PrivateKeyOperationNeeded,
)
from p2ptls._fragments import ReassemblyBudget
from p2ptls._records import RecordSealer
from p2ptls.identity import encrypt_to
from tests.conftest import identity_pool

TIMESTAMP_NS = 1_700_000_000_000_000_000
NETWORK_KEY = NetworkKey(hashlib.sha256(b"p2ptls hostile tests: network key").digest())
OTHER_NETWORK_KEY = NetworkKey(hashlib.sha256(b"p2ptls hostile tests: other network").digest())
CONFIG = StreamConfig(record_size=16 * 1024)
"""Smaller records than the default, so multi-record cases stay small."""
LOOPBACK = "127.0.0.1"
SAFETY_NET = 60.0
"""Seconds before a stuck wait fails the test (never reached when the code is right)."""


# -- reproducible handshakes ---------------------------------------------------------------------


class DeterministicRandom:
    """A seeded stand-in for ``os.urandom``: the same seed yields the same byte sequence."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._counter = 0

    def __call__(self, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            out += hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
        return bytes(out[:size])


_encrypted: dict[tuple[bytes, bytes, bytes], bytes] = {}
_decrypted: dict[tuple[bytes, bytes, bytes], bytes | None] = {}


def memo_encrypt(record: PeerRecord, plaintext: bytes, label: bytes) -> bytes:
    """RSA-OAEP to ``record``, the same ciphertext every time for the same input (tests only)."""
    key = (record.peer_id.digest, plaintext, label)
    if key not in _encrypted:
        _encrypted[key] = encrypt_to(record, plaintext, label)
    return _encrypted[key]


def decrypt(identity: Identity, event: PrivateKeyOperationNeeded) -> bytes | None:
    """Perform ``event`` with ``identity``'s private key (memoised)."""
    key = (identity.peer_id.digest, event.ciphertext, event.label)
    if key not in _decrypted:
        _decrypted[key] = identity.decrypt_untrusted(event.ciphertext, event.label)
    return _decrypted[key]


@attrs.frozen
class Parties:
    """The cast, from the session's identity pool."""

    initiator: Identity
    responder: Identity
    stranger: Identity
    """Holds the network key in the attacks that need it; trusted by nobody."""
    other: Identity
    """A second peer the responder trusts."""


def parties() -> Parties:
    pool = identity_pool()
    return Parties(pool[0], pool[1], pool[2], pool[3])


def initiator_k(seed: bytes = b"initiator") -> bytes:
    """The ``k_I`` an initiator made by :func:`make_initiator` with ``seed`` puts in its Hello."""
    rng = DeterministicRandom(seed)
    rng(32)  # the ephemeral X25519 key comes first
    return rng(wire.RANDOM_SIZE)


def initiator_ephemeral(seed: bytes = b"initiator") -> X25519PrivateKey:
    """The X25519 key an initiator made by :func:`make_initiator` with ``seed`` uses."""
    return X25519PrivateKey.from_private_bytes(DeterministicRandom(seed)(32))


def make_initiator(
    *,
    identity: Identity | None = None,
    responder: PeerRecord | None = None,
    psk: NetworkKey = NETWORK_KEY,
    timestamp_ns: int = TIMESTAMP_NS,
    config: StreamConfig = CONFIG,
    budget: ReassemblyBudget | None = None,
    seed: bytes = b"initiator",
    oaep_encrypt: Callable[[PeerRecord, bytes, bytes], bytes] = memo_encrypt,
) -> Connection:
    """A reproducible initiator (``parties().initiator`` to ``parties().responder`` by default)."""
    cast = parties()
    return Connection.initiator(
        config,
        identity or cast.initiator,
        psk,
        responder or cast.responder.record,
        timestamp_ns=timestamp_ns,
        budget=budget,
        randomness=DeterministicRandom(seed),
        oaep_encrypt=oaep_encrypt,
    )


def make_responder(
    *,
    identity: Identity | None = None,
    psk: NetworkKey = NETWORK_KEY,
    trusted: list[PeerRecord] | None = None,
    guard: ReplayGuard | None = None,
    config: StreamConfig = CONFIG,
    budget: ReassemblyBudget | None = None,
    seed: bytes = b"responder",
    now_ns: int = TIMESTAMP_NS,
) -> Connection:
    """A reproducible responder that trusts ``parties().initiator`` and ``parties().other``.

    Its clock reads ``now_ns``: the reproducible Hellos (stamped ``TIMESTAMP_NS``) are on time.
    """
    cast = parties()
    peers = KnownPeers(
        trusted if trusted is not None else [cast.initiator.record, cast.other.record]
    )
    return Connection.responder(
        config,
        identity or cast.responder,
        psk,
        peers,
        guard if guard is not None else ReplayGuard(),
        now_ns=now_ns,
        budget=budget,
        randomness=DeterministicRandom(seed),
        oaep_encrypt=memo_encrypt,
    )


def key_operation(events: list[Event]) -> PrivateKeyOperationNeeded:
    """The single event of a flight that asks for a private-key operation."""
    assert len(events) == 1, events
    event = events[0]
    assert isinstance(event, PrivateKeyOperationNeeded), events
    return event


@attrs.frozen
class Flights:
    hello: bytes
    reply: bytes
    finish: bytes


def handshake(
    initiator: Connection,
    responder: Connection,
    *,
    initiator_identity: Identity | None = None,
    responder_identity: Identity | None = None,
) -> Flights:
    """Run a complete handshake between two sans-IO connections and return its three flights."""
    cast = parties()
    hello = hello_of(initiator)
    operation = key_operation(responder.receive_data_untrusted(hello))
    reply = supplied(responder, decrypt(responder_identity or cast.responder, operation))
    operation = key_operation(initiator.receive_data_untrusted(reply))
    done = initiator.supply_decryption(decrypt(initiator_identity or cast.initiator, operation))
    assert [type(event) for event in done] == [HandshakeComplete], done
    finish = initiator.data_to_send()
    events = responder.receive_data_untrusted(finish)
    assert len(events) == 1 and isinstance(events[0], HandshakeComplete), events
    assert initiator.state is HandshakeState.ESTABLISHED
    assert responder.state is HandshakeState.ESTABLISHED
    return Flights(hello, reply, finish)


def hello_of(initiator: Connection) -> bytes:
    """Start ``initiator`` and return the Hello it queued."""
    assert initiator.start() == []
    return initiator.data_to_send()


def supplied(conn: Connection, plaintext: bytes | None) -> bytes:
    """Hand ``plaintext`` to ``conn``'s pending private-key operation; return the flight it
    queued (the Reply, or the Finish)."""
    conn.supply_decryption(plaintext)
    return conn.data_to_send()


def established_pair(
    *,
    seed: bytes = b"",
    initiator_config: StreamConfig = CONFIG,
    responder_config: StreamConfig = CONFIG,
    budget: ReassemblyBudget | None = None,
    guard: ReplayGuard | None = None,
    initiator_identity: Identity | None = None,
) -> tuple[Connection, Connection]:
    """``(initiator, responder)`` after a completed handshake; ``budget`` is the responder's."""
    initiator = make_initiator(
        identity=initiator_identity, config=initiator_config, seed=b"initiator" + seed
    )
    responder = make_responder(
        config=responder_config, budget=budget, guard=guard, seed=b"responder" + seed
    )
    handshake(initiator, responder, initiator_identity=initiator_identity)
    return initiator, responder


def responder_reply(responder: Connection, hello: bytes) -> bytes:
    """Feed ``hello`` to a fresh responder and return its Reply."""
    operation = key_operation(responder.receive_data_untrusted(hello))
    return supplied(responder, decrypt(parties().responder, operation))


def initiator_finish(initiator: Connection, reply: bytes) -> bytes:
    operation = key_operation(initiator.receive_data_untrusted(reply))
    return supplied(initiator, decrypt(parties().initiator, operation))


@functools.cache
def genuine_flights() -> Flights:
    """The flights of the reproducible handshake (the same bytes every time)."""
    return handshake(make_initiator(), make_responder())


def state_of(conn: Connection) -> HandshakeState:
    """``conn.state``, without letting a type checker assume it cannot change."""
    return conn.state


# -- forgery -------------------------------------------------------------------------------------


def rebound_hello(
    hello_record: bytes, psk: NetworkKey, *, responder: PeerRecord | None = None, **changes: Any
) -> bytes:
    """``hello_record`` with fields replaced and a binder valid under ``psk`` at ``responder``
    (``parties().responder`` by default).

    This is what any holder of the network key can forge.
    """
    hello = attrs.evolve(wire.parse_hello_untrusted(hello_record[wire.HEADER_SIZE :]), **changes)
    unbound = hello.encode_unbound()
    prefix = wire.encode_header(wire.HANDSHAKE, len(unbound) + wire.MAC_SIZE) + unbound
    target = responder or parties().responder.record
    return prefix + ks.mac(ks.binder_key(psk.secret, target.peer_id.digest), prefix)


def crafted_hello(
    presented_der: bytes,
    claimed_id: bytes,
    *,
    seed: bytes = b"crafted",
    timestamp_ns: int = TIMESTAMP_NS,
    responder: PeerRecord | None = None,
    psk: NetworkKey = NETWORK_KEY,
) -> bytes:
    """A Hello built by hand, as any network-key holder can: it presents ``presented_der`` (any
    bytes) as its public key and claims ``claimed_id`` inside ``C_I``. Its ``e_I`` and ``k_I`` are
    those of :func:`make_initiator` with ``seed`` (see :func:`reply_is_genuine`)."""
    target = responder or parties().responder.record
    ephemeral = initiator_ephemeral(seed)
    secret = claimed_id + initiator_k(seed) + wire.TIMESTAMP.pack(timestamp_ns)
    unsealed = wire.Hello(
        suite=wire.SUITE_RSA_OAEP_X25519_AES256GCM_SHA256,
        timestamp_s=timestamp_ns // wire.NS_PER_S,
        ephemeral=ephemeral.public_key().public_bytes_raw(),
        sealed_secret=memo_encrypt(target, secret, _handshake.HELLO_OAEP_LABEL),
        sealed_public_key=b"",
        binder=b"",
    )
    aad = _handshake._sealed_key_aad(unsealed)
    hello_key = ks.hello_key(
        ks.early_secret(psk.secret, initiator_k(seed)), ks.transcript_hash(aad)
    )
    sealed = AESGCM(hello_key).encrypt(bytes(12), presented_der, aad)
    unbound = attrs.evolve(unsealed, sealed_public_key=sealed).encode_unbound()
    prefix = wire.encode_header(wire.HANDSHAKE, len(unbound) + wire.MAC_SIZE) + unbound
    return prefix + ks.mac(ks.binder_key(psk.secret, target.peer_id.digest), prefix)


def reply_is_genuine(
    hello: bytes,
    reply: bytes,
    *,
    claimed_id: bytes,
    seed: bytes = b"initiator",
    responder: PeerRecord | None = None,
    psk: NetworkKey = NETWORK_KEY,
) -> bool:
    """What the author of ``hello`` (made with ``seed``) learns from ``reply``: True if the
    responder's Finished MAC verifies, i.e. the responder accepted the Hello as sound."""
    target = responder or parties().responder.record
    parsed = wire.parse_reply_untrusted(reply[wire.HEADER_SIZE :])
    shared = initiator_ephemeral(seed).exchange(X25519PublicKey.from_public_bytes(parsed.ephemeral))
    secret = ks.handshake_secret(ks.early_secret(psk.secret, initiator_k(seed)), shared)
    transcript = ks.transcript_hash(
        hello, reply[: -wire.MAC_SIZE], claimed_id, target.peer_id.digest
    )
    expected = ks.mac(ks.expand_label(secret, "r finished", b"", ks.HASH_SIZE), transcript)
    return expected == parsed.finished


def forged_finish(seed: bytes = b"forged finish") -> bytes:
    """A well-formed Finish flight with a MAC nobody computed: all an impostor can send."""
    return wire.handshake_record(wire.Finish(DeterministicRandom(seed)(wire.MAC_SIZE)).encode())


def reframed(record: bytes, body: bytes) -> bytes:
    """A record of the same content type as ``record`` whose header announces ``body`` exactly."""
    return wire.HEADER.pack(record[0], record[1], len(body)) + body


def flip_bit(data: bytes, bit: int) -> bytes:
    flipped = bytearray(data)
    flipped[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(flipped)


def forged_sealer(conn: Connection) -> RecordSealer:
    """An independent sealer for ``conn``'s outgoing direction, in step with it.

    Built from the session's traffic secret, as a peer that deviates from the protocol would
    build it. Use either this or ``conn``'s own ``send_*`` methods afterwards, not both.
    """
    result, own = conn._result, conn._sealer
    assert result is not None and own is not None, "handshake not complete"
    secrets = result.secrets
    secret = secrets.initiator_to_responder if conn.is_initiator else secrets.responder_to_initiator
    sealer = RecordSealer(secret)
    for _ in range(own.generation):
        sealer.advance_key()
    sealer.sequence = own.sequence
    return sealer


def records_of(stream: bytes) -> list[bytes]:
    """Split well-formed wire bytes into their records."""
    records = []
    pos = 0
    while pos < len(stream):
        _, _, length = wire.HEADER.unpack_from(stream, pos)
        end = pos + wire.HEADER_SIZE + length
        records.append(stream[pos:end])
        pos = end
    return records


_last_timestamp = [0]


def next_timestamp() -> int:
    """A wall-clock Hello timestamp, strictly increasing in this process."""
    _last_timestamp[0] = max(time.time_ns(), _last_timestamp[0] + 1)
    return _last_timestamp[0]
