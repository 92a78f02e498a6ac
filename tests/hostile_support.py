"""Tools shared by the hostile-input tests (``tests/test_hostile_*.py``, ``tests/test_fuzz.py``).

* Reproducible handshakes: seeded randomness and memoised RSA-OAEP make every flight byte for byte
  the same for the same seed, and run each RSA private-key operation once per distinct ciphertext,
  so a property test can rebuild a connection in any state for every example at little cost.
* Forgery: a Hello re-bound under a network key (what any network member can produce) and an
  independent :class:`~p2ptls._records.RecordSealer` in step with a connection's outgoing direction.
* A host harness: a listening :class:`~p2ptls.Host` whose streams of the default protocol echo
  messages and whose failures are recorded, good peers that are real client hosts
  (:func:`good_client`), and :func:`assert_host_serves`, which proves a bad peer did not take the
  host (or its nursery) down. The hostile peer, which drives the sans-IO record layer and
  multiplexer over a TCP socket so that it can send anything at all, is ``tests/raw_peer.py``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from p2ptls import (
    Host,
    HostConfig,
    Identity,
    KnownPeers,
    LogicalStream,
    NetworkKey,
    PeerId,
    PeerRecord,
    ReplayGuard,
    SecureStream,
    StreamConfig,
    _handshake,
    open_host,
)
from p2ptls import _keyschedule as ks
from p2ptls import _wire as wire
from p2ptls._connection import (
    Connection,
    Event,
    HandshakeComplete,
    PrivateKeyOperationNeeded,
    State,
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
    hello = initiator.start()
    operation = key_operation(responder.receive_data_untrusted(hello))
    reply = responder.supply_decryption(decrypt(responder_identity or cast.responder, operation))
    operation = key_operation(initiator.receive_data_untrusted(reply))
    finish = initiator.supply_decryption(decrypt(initiator_identity or cast.initiator, operation))
    events = responder.receive_data_untrusted(finish)
    assert len(events) == 1 and isinstance(events[0], HandshakeComplete), events
    assert initiator.state is State.ESTABLISHED and responder.state is State.ESTABLISHED
    return Flights(hello, reply, finish)


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


# -- the host harness ----------------------------------------------------------------------------


@functools.cache
def extra_identity(index: int) -> Identity:
    """Identities beyond the session's pool (each made once), for tests that need many peers:
    a host keeps one connection per peer, so peers that must hold connections at once need
    identities of their own."""
    return Identity.generate(2048)


def probe_identity() -> Identity:
    """The identity of the fresh good peer :func:`assert_host_serves` connects with (trusted by
    the harness host, used by no other peer, so that its connection replaces nobody's)."""
    return extra_identity(0)


Handler = Callable[["Harness", LogicalStream], Awaitable[None]]


async def echo_messages(harness: Harness, stream: LogicalStream) -> None:
    """Echo every message until the peer closes."""
    async for message in stream.messages():
        harness.received.append(message)
        await stream.send_message(message)


@attrs.define
class Harness:
    """A listening host (``parties().responder``), what the streams of the default protocol that
    peers open went through, and the good peers' client hosts."""

    host: Host
    config: StreamConfig
    nursery: trio.Nursery
    received: list[bytes] = attrs.field(factory=list)
    """Messages the server side received, in order."""
    failures: list[BaseException] = attrs.field(factory=list)
    """Errors that ended a server-side stream (a :class:`~p2ptls.ConnectionLost` when its
    connection broke: ``__cause__`` says why)."""
    _changed: trio.Event = attrs.field(factory=trio.Event)
    _consumed: int = 0
    _clients: dict[PeerId, Host] = attrs.field(factory=dict)
    accepted: int = 0
    """Streams the host handed to the handler so far."""

    @property
    def server(self) -> Identity:
        return self.host.config.identity

    @property
    def psk(self) -> NetworkKey:
        return self.host.config.psk

    async def serve(self, handler: Handler) -> None:
        async with trio.open_nursery() as nursery:
            async for stream in self.host.incoming():
                nursery.start_soon(self._run, handler, stream)

    async def _run(self, handler: Handler, stream: LogicalStream) -> None:
        self.accepted += 1
        self._notify()
        try:
            await handler(self, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.failures.append(exc)
        finally:
            await stream.aclose()
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_accepted(self, count: int) -> None:
        """Wait until the host has handed ``count`` streams to the handler."""
        with trio.fail_after(SAFETY_NET):
            while self.accepted < count:
                await self._changed.wait()

    async def next_failure(self) -> BaseException:
        """The next server-side stream failure not yet returned (waiting for it if need be)."""
        with trio.fail_after(SAFETY_NET):
            while len(self.failures) <= self._consumed:
                await self._changed.wait()
        self._consumed += 1
        return self.failures[self._consumed - 1]

    async def client(self, identity: Identity, config: StreamConfig | None = None) -> Host:
        """A client host of ``identity`` (one per identity, running until the harness ends)."""
        host = self._clients.get(identity.peer_id)
        if host is None:
            host = await self.nursery.start(_run_client, self, identity, config or self.config)
            self._clients[identity.peer_id] = host
        return host


async def _run_client(
    harness: Harness,
    identity: Identity,
    config: StreamConfig,
    *,
    task_status: trio.TaskStatus[Host] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with open_host(_client_config(harness, identity, config)) as host:
        task_status.started(host)
        await trio.sleep_forever()


def _client_config(harness: Harness, identity: Identity, config: StreamConfig) -> HostConfig:
    return HostConfig(
        identity=identity, psk=harness.psk, peers=(harness.host.peer_record(),), stream=config
    )


_HOST_LOGGERS = ("p2ptls.host", "p2ptls.connections")


@asynccontextmanager
async def serving_host(
    *, config: StreamConfig = CONFIG, handler: Handler = echo_messages, **options: Any
) -> AsyncIterator[Harness]:
    """Run a host on 127.0.0.1 that trusts ``initiator``, ``other`` and the probe and serves
    ``handler`` for the default protocol (``host.incoming()``)."""
    cast = parties()
    host_config = HostConfig(
        identity=cast.responder,
        psk=NETWORK_KEY,
        peers=(cast.initiator.record, cast.other.record, probe_identity().record),
        listen=(LOOPBACK, 0),
        stream=config,
        **options,
    )
    alarms = _Alarms()
    for name in _HOST_LOGGERS:
        logging.getLogger(name).addHandler(alarms)
    try:
        async with open_host(host_config) as host, trio.open_nursery() as nursery:
            harness = Harness(host, config, nursery)
            nursery.start_soon(harness.serve, handler)
            yield harness
            nursery.cancel_scope.cancel()
    finally:
        for name in _HOST_LOGGERS:
            logging.getLogger(name).removeHandler(alarms)
    # A hostile peer must only ever cause the protocol's own, expected failures: the host's
    # catch-alls for unexpected errors (which would hide a bug) must never have fired.
    assert alarms.records == [], [record.getMessage() for record in alarms.records]


class _Alarms(logging.Handler):
    """Collects the host's warnings and errors."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def dial_from(host: Host, server: Host, local_address: str) -> None:
    """Connect ``host`` to ``server`` from ``local_address`` (a host dials from wherever the
    system chooses): the handshake as the host's own dial makes it, then the host adopts the
    connection as if it had dialled it."""
    tcp = await trio.open_tcp_stream(*server.address, local_address=local_address)
    secure = SecureStream(tcp, host.context, remote=server.peer_record(), messages=False)
    try:
        await secure.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(secure)
        raise
    host.manager._adopt(secure, initiator=True)


async def good_client(
    harness: Harness,
    *,
    identity: Identity | None = None,
    local_address: str | None = None,
    config: StreamConfig | None = None,
) -> LogicalStream:
    """A well-behaved peer's stream of the default protocol to the harness host, from a real
    client host (``other`` by default; its streams share one connection)."""
    client = await harness.client(identity or parties().other, config)
    if local_address is not None:
        await dial_from(client, harness.host, local_address)
    return await client.connect(harness.host.peer_record())


async def adopt(harness: Harness, secure: SecureStream) -> LogicalStream:
    """A stream of the default protocol on ``secure`` (a connection to the harness host whose
    handshake a test drove itself), through a real client host that adopts it."""
    client = await harness.client(secure.context.identity)
    client.manager._adopt(secure, initiator=True)
    return await client.connect(harness.host.peer_record())


async def assert_host_serves(
    harness: Harness, *, local_address: str | None = None, byte_stream: bool = False
) -> None:
    """A new good peer (its own client host, a fresh handshake) can still connect and exchange
    data: the host and its nursery are alive.

    ``byte_stream``: the host's handler echoes the byte stream instead of messages.
    """
    large = min(40_000, harness.config.max_message_size)
    config = _client_config(harness, probe_identity(), harness.config)
    with trio.fail_after(SAFETY_NET):
        async with open_host(config) as client:
            if local_address is not None:
                await dial_from(client, harness.host, local_address)
            async with await client.connect(harness.server.peer_id) as stream:
                assert stream.remote_peer.peer_id == harness.server.peer_id
                for payload in (b"the host still serves good peers", b"x" * large):
                    if byte_stream:
                        await stream.send_all(payload)
                        echoed = b""
                        while len(echoed) < len(payload):
                            echoed += await stream.receive_some()
                        assert echoed == payload
                    else:
                        await stream.send_message(payload)
                        assert await stream.receive_message() == payload


async def settle(predicate: Callable[[], bool]) -> None:
    """Let every task run until ``predicate()`` holds.

    Loopback TCP delivers synchronously, so once all tasks are blocked the host has seen
    everything that was sent; worker threads (RSA) may need a few rounds.
    """
    with trio.fail_after(SAFETY_NET):
        while not predicate():
            await trio.testing.wait_all_tasks_blocked(0.001)


async def read_record(tcp: trio.abc.ReceiveStream) -> bytes:
    """One whole record from ``tcp`` (as sent by the host), or ``b""`` if it closes first."""
    data = bytearray()
    with trio.fail_after(SAFETY_NET):
        while True:
            if len(data) >= wire.HEADER_SIZE:
                _, _, length = wire.HEADER.unpack_from(data)
                if len(data) >= wire.HEADER_SIZE + length:
                    assert len(data) == wire.HEADER_SIZE + length, "more than one record"
                    return bytes(data)
            try:
                chunk = await tcp.receive_some()
            except trio.BrokenResourceError:
                chunk = b""
            if not chunk:
                assert not data, "the connection closed in the middle of a record"
                return b""
            data += chunk


async def receive_until_closed(tcp: trio.abc.ReceiveStream) -> bytes:
    """Everything the other side sends until it closes the connection."""
    received = bytearray()
    with trio.fail_after(SAFETY_NET):
        try:
            while chunk := await tcp.receive_some():
                received += chunk
        except trio.BrokenResourceError:
            pass  # a reset is a close too
    return bytes(received)
