"""The state node: replicated per-node key-value state over the host's shared connections (trio).

Theory of operation
-------------------
A :class:`StateNode` runs one p2ptls :class:`~p2ptls.Host` (admitting every peer that holds the
network key and its own private key), one SQLite store and the sans-IO
:class:`~p2ptls.state._replica.ReplicaCore`. The state protocol is one protocol of that host:
``"p2ptls/state/1"`` (:data:`PROTOCOL`), a logical stream on the host's one connection per peer,
which the node's application can share with protocols of its own (``node.host.serve_protocol``,
``node.host.open``, SLLP channels). Its parts:

* **members** (``_members``): the member table and one task per member that keeps a state session
  with it, opening a logical stream through the host when it has none; dials are the host's
  (shared with other protocols, backed off per peer). Members' connections are protected from the
  connection limit and the idle timeout.
* **sessions** (``_pump`` over ``_session``): one sans-IO :class:`~p2ptls.state._session.
  PeerSession` per stream, pumped by trio tasks that decide nothing: STATE_HELLOs both ways, one
  session per member pair (the same one on both ends), digests, pulls and pushes, relaying what
  arrived from others, acknowledgement pings. Liveness is the connection's: the host pings a
  silent peer (``ping_interval`` and ``ping_timeout`` become its keepalive) and a connection that
  breaks fails the stream with :class:`~p2ptls.ConnectionLost`; the member is then reported
  unreachable, its state kept and marked stale, and a new session opened.
* **writes** (``_pipeline``): ``set`` stages a record in memory and wakes the store task, which
  writes every pending change in one transaction on a worker thread (group commit) and then
  acknowledges the writes; the signer signs batches with the epoch's Ed25519 key, and a batch is
  durable before it is offered to members.

**Acknowledgements** (:meth:`StateNode.wait_acknowledged`): once a session has nothing left to
push and the member holds or was sent the version a waiter wants, it sends a PING whose nonce it
remembers with that version. A member handles a session's messages in order and answers a PING
only after everything before it, so its PONG says it holds that version, unless a PULL for our
state came first.

A peer that breaks the protocol (a bad signature included) has its session closed and is reported
(:class:`~p2ptls.state.events.PeerRejected`); nothing from that message is applied, and its
connection goes on carrying its other protocols.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import trio

from .._util import open_service_nursery
from ..host import Host, HostConfig, open_host
from ..identity import PeerId, PeerRecord
from ..logical import LogicalStream
from ..trust import admit_network_members
from . import _crypto
from . import _wire as wire
from ._members import Members
from ._notify import Notifier
from ._pipeline import WritePipeline
from ._pump import Sessions
from ._replica import ReplicaCore
from ._store import StateStore, StoredMember
from ._wire import PROTOCOL
from .config import StateNodeConfig
from .events import (
    ConsensusEntry,
    DirectMessage,
    MemberStatus,
    NodeStats,
    StateChanged,
    StateRecord,
)
from .proof import RecordProof

__all__ = ["PROTOCOL", "StateNode", "Value", "open_state_node"]

Value = str | bytes | bytearray | memoryview
"""A value to store: bytes, or a ``str`` stored as its UTF-8 encoding (reads return bytes)."""

PULL_INTERVAL = 0.5
"""Seconds (jittered by ±50 %) between the digests a node sends, one session at a time in turn,
while some member it knows is not connected to it.

Records a node receives straight from their owner are not pushed on: members keep a session with
every other member, so the owner's own push reaches each of them, and pushing on as well would
send every update N² times. A member that is not connected to some owner (a firewall, a peer
filter, a member that is down) asks for what it lacks instead: its digest makes the peer push
every owner it holds more of. Records received from another relay are pushed on at once (they
travel a path the owner's push did not)."""


class StateNode:
    """A running state node. Create with :func:`open_state_node`.

    Reads (:meth:`get`, :meth:`snapshot`, :meth:`consensus`, :meth:`members`) are synchronous and
    local: no I/O. Writes (:meth:`set`, :meth:`delete`, :meth:`update`) return once durable.
    Every method must be called from the trio thread that runs the node (see the module
    ``p2ptls.state`` for running a node in a background thread). ``host`` is the node's
    :class:`~p2ptls.Host`: serve and open protocols of your own on the same connections.
    ``rng`` (jitter of retries and digests) and ``randomness`` (random bytes) default to
    ``random.Random()`` and ``os.urandom``; tests pass their own.
    """

    def __init__(
        self,
        config: StateNodeConfig,
        host: Host,
        store: StateStore,
        core: ReplicaCore,
        nursery: trio.Nursery,
        *,
        rng: random.Random | None = None,
        randomness: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.config = config
        rng = rng or random.Random()
        self.host = host
        self._store = store
        self._core = core
        self._nursery = nursery
        self._notify = Notifier()
        self._pipeline = WritePipeline(config, store, core, self._notify, self._published)
        self._members = Members(
            config,
            host,
            core,
            notifier=self._notify,
            pipeline=self._pipeline,
            nursery=nursery,
            serve=self._serve,
            address=lambda: self.address,
            rng=rng,
        )
        self._sessions = Sessions(
            config,
            core,
            notifier=self._notify,
            pipeline=self._pipeline,
            members=self._members,
            address=lambda: self.address,
            rng=rng,
            randomness=randomness,
        )
        self._listening = host.address if host.listeners else None
        """Where the host listens (read once: its listener closes before the last session)."""
        self.pull_interval = PULL_INTERVAL
        """Seconds between digests while a member is not connected; see :data:`PULL_INTERVAL`."""

    # -- identity and addresses -----------------------------------------------------------------

    @property
    def peer_id(self) -> PeerId:
        """This node's id (the owner id of its state)."""
        return self.config.identity.peer_id

    @property
    def network_id(self) -> bytes:
        return self._core.network

    @property
    def epoch(self) -> int:
        """The epoch this run writes in (a new one at every start)."""
        return self._core.epoch

    @property
    def address(self) -> tuple[str, int] | None:
        """Where this node tells members to reach it, if it listens."""
        if self.config.advertise is not None:
            return self.config.advertise
        return self._listening

    def peer_record(self, name: str = "") -> PeerRecord:
        """This node's public record with its address: give it to others as a bootstrap entry."""
        return self.config.identity.peer_record(name=name or self.config.name, address=self.address)

    # -- writing --------------------------------------------------------------------------------

    async def set(self, key: str, value: Value) -> None:
        """Set ``key`` of this node's state; returns once the write is durable locally.

        ``value`` is bytes, or a ``str`` stored as its UTF-8 encoding; reads (:meth:`get`)
        always return bytes. Anything else raises ``TypeError``.

        Members receive it within about ``coalesce_delay`` plus a round trip. If the call is
        cancelled while waiting, the write still happens (like a write whose acknowledgement was
        lost).
        """
        await self.update({key: value})

    async def delete(self, key: str) -> None:
        """Delete ``key``: a signed tombstone replaces it everywhere (written even if this node
        holds no value for it, so it also removes a key others still hold from a lost store).
        Returns once durable locally."""
        await self.update({key: None})

    async def update(self, changes: Mapping[str, Value | None]) -> None:
        """Set several keys at once (``None`` deletes; a ``str`` is stored as UTF-8); one
        durable write, returns when done."""
        self._notify.check_open()
        checked = [(_check_key(key), _check_value(value)) for key, value in changes.items()]
        for _key, value in checked:
            if value is not None and len(value) > self.config.max_value_size:
                raise ValueError(
                    f"value of {len(value)} bytes exceeds max_value_size "
                    f"({self.config.max_value_size})"
                )
        if not checked:
            await trio.lowlevel.checkpoint()
            return
        await self._pipeline.wait_durable(self._pipeline.stage(checked))

    # -- reading --------------------------------------------------------------------------------

    def get(self, owner: PeerId, key: str, default: bytes | None = None) -> bytes | None:
        """The value ``owner`` holds for ``key`` as this node knows it (local, no I/O), as bytes
        (``.decode()`` a value written as ``str``). Another owner's write may not have arrived
        yet: :meth:`wait_for` waits for it."""
        record = self._core.get(owner.digest, key)
        if record is None or record.value is None:
            return default
        return record.value

    def record(self, owner: PeerId, key: str) -> StateRecord | None:
        """The current signed record (who wrote what, at which version), or ``None``."""
        found = self._core.current(owner.digest, key)
        if found is None:
            return None
        record, signed = found
        return StateRecord(owner, key, record.value, record.epoch, record.seq, signed)

    def proof(self, owner: PeerId, key: str) -> RecordProof | None:
        """The record's exact bytes with its batch and epoch certificate: anyone holding the
        network id can check who wrote it (:meth:`RecordProof.verify`). ``None`` if there is no
        such record, or it is one of our own writes not published yet."""
        record = self._core.get(owner.digest, key)
        state = self._core.owners.get(owner.digest)
        entry = state.entries.get(key) if state is not None else None
        if record is None or state is None or entry is None or entry.record is not record:
            return None
        assert entry.proof is not None  # published records are signed
        batch = entry.proof.batch
        certificate = state.certs[batch.epoch].certificate
        return RecordProof(record.raw, batch.encode(), certificate.encode())

    def snapshot(self, owner: PeerId | None = None) -> dict[str, bytes]:
        """All live keys of ``owner`` (default: this node) as this node knows them."""
        return self._core.values((owner or self.peer_id).digest)

    def owners(self) -> tuple[PeerId, ...]:
        """Every owner whose state this node holds (itself included)."""
        return tuple(PeerId(owner) for owner in self._core.owners)

    def version(self, owner: PeerId) -> tuple[int, int]:
        """The highest ``(epoch, sequence)`` of ``owner`` held here (``(0, 0)``: none)."""
        return self._core.mark(owner.digest)

    def consensus(self, key: str) -> tuple[ConsensusEntry, ...]:
        """The values different owners hold for ``key``, most widely held first.

        Each entry lists the owners that hold that value (ties: by value bytes). Stale owners
        count with their last known state; see :meth:`members` to tell them apart.
        """
        holders: dict[bytes, list[PeerId]] = {}
        for owner, value in self._core.keys_with(key):
            holders.setdefault(value, []).append(PeerId(owner))
        ranked = sorted(holders.items(), key=lambda item: (-len(item[1]), item[0]))
        return tuple(ConsensusEntry(value, tuple(sorted(ids))) for value, ids in ranked)

    def members(self) -> tuple[MemberStatus, ...]:
        """Every known member (not this node) and whether it is connected or stale."""
        return tuple(self._members.status(member) for member in self._members.by_id.values())

    def member(self, peer_id: PeerId) -> MemberStatus | None:
        member = self._members.by_id.get(peer_id)
        return self._members.status(member) if member is not None else None

    @property
    def stats(self) -> NodeStats:
        c = self._notify.counters
        return NodeStats(
            records_written=c["records_written"],
            batches_signed=c["batches_signed"],
            records_applied=c["records_applied"],
            records_stale=c["records_stale"],
            equivocations=c["equivocations"],
            peers_rejected=c["peers_rejected"],
            direct_dropped=c["direct_dropped"],
            connections_opened=c["connections_opened"],
            errors_contained=c["errors_contained"],
            members_evicted=c["members_evicted"],
            owners_evicted=c["owners_evicted"],
        )

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` is true; it is checked after every change of state or
        membership. Combine with ``trio.fail_after`` for a deadline."""
        await self._notify.wait_until(predicate)

    async def wait_for(self, owner: PeerId, key: str, value: Value | None = None) -> bytes:
        """Wait until this node holds ``key`` of ``owner`` (equal to ``value``, if given) and
        return it. Combine with ``trio.fail_after`` for a deadline."""
        expected = _check_value(value)

        def ready() -> bool:
            held = self.get(owner, key)
            return held is not None and (expected is None or held == expected)

        await self.wait_until(ready)
        found = self.get(owner, key)
        assert found is not None
        return found

    async def wait_acknowledged(self, peer_id: PeerId) -> bool:
        """Wait until the member ``peer_id`` acknowledges every write this node made before
        the call (its PONG to a PING sent after them; see the module docs), and return True.

        An honest member applies messages in order, so its PONG means it holds the writes; a
        hostile member could answer without storing them: this is a delivery signal, not a proof.

        Returns False if the member is not connected, or its connection ends first (it gets the
        writes when it is back). Combine with ``trio.fail_after`` for a deadline.
        """
        return await self._sessions.wait_acknowledged(peer_id)

    # -- events ---------------------------------------------------------------------------------

    def subscribe(
        self, *event_types: type, buffer: int | None = None
    ) -> trio.MemoryReceiveChannel[Any]:
        """A channel of events from now on: :class:`StateChanged` unless other types are given
        (any of ``StateChanged``, ``MemberChanged``, ``EquivocationDetected``, ``PeerRejected``).

        A subscriber that falls more than ``buffer`` events behind (default
        ``config.subscriber_buffer``) receives :class:`SubscriptionOverflowed` and then the end of
        the channel; close the channel to unsubscribe.
        """
        size = buffer if buffer is not None else self.config.subscriber_buffer
        return self._notify.subscribe(event_types or (StateChanged,), size)

    # -- direct messages ------------------------------------------------------------------------

    @property
    def direct_messages(self) -> trio.MemoryReceiveChannel[DirectMessage]:
        """Direct messages sent to this node (one shared channel; clone it for several readers).

        When ``config.direct_buffer`` messages wait unread, further ones are dropped and counted
        (``stats.direct_dropped``).
        """
        return self._sessions.direct_receive

    async def send_to(self, peer_id: PeerId, payload: bytes | bytearray | memoryview) -> None:
        """Send one message to a connected member; returns once it is written to the stream.

        Raises :class:`NotConnected` if there is no session with it or it ends first.
        """
        self._notify.check_open()
        data = bytes(payload)
        if len(data) > self.config.max_direct_size:
            raise ValueError("payload exceeds max_direct_size")
        await self._sessions.send_to(peer_id, data)

    # -- membership control ---------------------------------------------------------------------

    def add_member(self, record: PeerRecord) -> None:
        """Learn a member (with its address) and keep a session with it."""
        self._members.learn(record.public_key_der, record.address, authoritative=True)

    def disconnect(self, peer_id: PeerId) -> None:
        """Close the state session with ``peer_id`` (it is opened again at once unless
        ``peer_filter`` refuses it). The host's connection to it stays for other protocols."""
        self._members.disconnect(peer_id)

    def retry_now(self) -> None:
        """Open a session with every unconnected member at once, e.g. after the
        ``peer_filter`` changed or the network came back (the host's dial back-off for each
        member is forgotten)."""
        self._members.retry_now()

    # -- running --------------------------------------------------------------------------------

    def _start(self, members: list[StoredMember]) -> None:
        for stored in members:
            self._members.learn(stored.public_key_der, stored.address, authoritative=False)
        for record in self.config.bootstrap:
            self._members.learn(record.public_key_der, record.address, authoritative=True)
        self._pipeline.start(self._nursery)
        self._nursery.start_soon(self._sessions.digest_loop, lambda: self.pull_interval)
        self._nursery.start_soon(self._members.candidate_loop)
        self.host.serve_protocol(PROTOCOL, self._sessions.serve)

    async def _serve(self, stream: LogicalStream) -> None:
        await self._sessions.serve(stream)

    def _published(self) -> None:
        self._sessions.published()

    async def _close(self, *, clean: bool) -> None:
        self.host.remove_protocol(PROTOCOL)
        self._notify.close()
        self._sessions.close()
        self._nursery.cancel_scope.cancel()
        if clean:
            with trio.CancelScope(shield=True):
                await self._pipeline.final_flush()


def _check_key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError("a key is a str")
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a key must be encodable as UTF-8") from None
    if len(encoded) > wire.MAX_KEY_BYTES:
        raise ValueError(f"a key is at most {wire.MAX_KEY_BYTES} bytes of UTF-8")
    return key


def _check_value(value: Value | None) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a str value must be encodable as UTF-8") from None
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"a value is bytes or str (None deletes), not {type(value).__name__}")
    return bytes(value)


@asynccontextmanager
async def open_state_node(config: StateNodeConfig) -> AsyncIterator[StateNode]:
    """Run a state node for the duration of the block.

    Opens (or creates) the database, moves to a new epoch (durably, before anything is signed),
    certifies a fresh Ed25519 key, starts listening and joins the members it knows. The node
    serves its stored state at once and catches up in the background. Leaving the block closes
    every connection and the database. An exception raised in the block comes out as it was
    raised (not wrapped in exception groups).

    Example::

        async with open_state_node(config) as node:
            await node.set("foo", "bar")                       # str: stored as UTF-8
            other_value = await node.wait_for(other_id, "foo")  # bytes, once it arrived
    """
    async with _run_state_node(config) as node:
        yield node


@asynccontextmanager
async def _run_state_node(config: StateNodeConfig) -> AsyncIterator[StateNode]:
    identity = config.identity
    network = _crypto.network_id(config.psk)
    own = identity.peer_id.digest
    store = await trio.to_thread.run_sync(
        lambda: StateStore(
            config.database, network=network, owner=own, durability=config.durability
        )
    )
    try:
        core = ReplicaCore(
            network,
            own,
            identity.record.public_key_der,
            config.limits,
            max_owners=config.max_owners,
        )
        members = await trio.to_thread.run_sync(store.load_members)
        # Members' state is never evicted to make room for other owners, also while loading.
        known = [m.public_key_der for m in members] + [r.public_key_der for r in config.bootstrap]
        for der in known:
            core.protect(PeerId.for_public_key(der).digest)
        await trio.to_thread.run_sync(store.load_into, core)
        minimum = 1 if store.persistent else time.time_ns() // 1_000_000
        epoch = await trio.to_thread.run_sync(store.next_epoch, minimum)
        signer = await trio.to_thread.run_sync(_crypto.EpochSigner.create, identity, network, epoch)
        core.begin_epoch(signer)
        host_config = HostConfig(
            identity=identity,
            psk=config.psk,
            peers=config.bootstrap,
            listen=config.listen,
            admission=admit_network_members,
            stream=config.stream,
            connections=config.connections,
            replay_state_path=config.replay_state_path,
        )
        async with open_host(host_config) as host, open_service_nursery() as nursery:
            node = StateNode(config, host, store, core, nursery)
            node._start(members)
            clean = False
            try:
                yield node
                clean = True
            finally:
                await node._close(clean=clean)
    finally:
        store.close()
