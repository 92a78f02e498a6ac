"""The DHT node on a p2ptls host (trio): RPCs both ways, the user's operations and the timers.

Theory of operation
-------------------
A :class:`DhtNode` serves protocol ``p2ptls/dht/1`` on its :class:`~p2ptls.Host` and drives the
sans-IO cores; it decides nothing itself:

* **serving**: each stream a peer opens carries one RPC (SPEC-dht.md §3). The handler reads the
  request, hands it to an :class:`~._responder.Exchange` with the requester the handshake proved,
  sends the reply and finishes the stream; a malformed request, a rate-limited one (other than
  STORE) or a timeout (``request_timeout``) resets only that stream. How many RPCs one peer can
  have in the handler at once is bounded by the host: ``ConnectionConfig.max_streams_per_peer``
  inbound streams per connection, and one connection per peer.
* **asking**: :meth:`DhtNode.ping`, :meth:`~DhtNode.find_node`, :meth:`~DhtNode.find_value`,
  :meth:`~DhtNode.store` (one RPC; :class:`RpcFailed`) and :meth:`~DhtNode.closest` (an iterative
  lookup) are the node's :class:`~._client.DhtClient`'s, which reports what it learns to the
  routing table and its events here.
* **operations**: :meth:`~DhtNode.put`/:meth:`~DhtNode.get` (immutable values),
  :meth:`~DhtNode.put_mutable`/:meth:`~DhtNode.get_mutable`/:meth:`~DhtNode.delete` (Ed25519
  mutable values), :meth:`~DhtNode.find_peer` and :meth:`~DhtNode.publish_own_record` (signed
  peer records). A write is a lookup of the key, then a STORE to each of the ``k`` nearest that
  answered, in parallel (:class:`~._operations.PutResult`; :class:`~._operations.StoreFailed`
  when none accepted). A read of a mutable value or a peer record collects ``read_quorum``
  values, keeps the newest valid one and writes it back to the nearest nodes that returned an
  older one or none. What counts and where to write is decided in :mod:`._operations`.
* **timers**: one background task sleeps until the routing table's, the store's or the
  maintenance schedule's ``next_deadline()`` (or until something changed) and runs their
  ``handle_timers``. Routing events become pings (``PingNeeded``, ``PingDue``: at most
  ``max_background_pings`` at once, one per contact); ``RefreshDue`` keys queue in
  :attr:`DhtNode.refreshes_due` and are looked up in the background; the writer's own records
  are republished every 22 h and held records replicated to the current nearest nodes every hour
  (:class:`~._operations.Maintenance`). At most ``max_background_lookups`` such jobs run at once.
* **joining**: :meth:`DhtNode.bootstrap` pings the bootstrap peers, looks up the own id (filling
  the buckets near it, as Kademlia joins) and publishes the node's peer record.

Two clocks: trio's (``trio.current_time()``) for the routing table, rate limits and timeouts, and
Unix time (``wall_clock``, injectable) for record times.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager

import attrs
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .._util import open_service_nursery
from ..host import Host
from ..identity import PeerId, PeerRecord
from ..logical import LogicalStream
from ._client import DhtClient, RpcFailed
from ._errors import DhtProtocolError
from ._ids import Contact
from ._lookup import RequestKind
from ._operations import (
    Maintenance,
    NoContacts,
    PutResult,
    ReplicationDue,
    RepublishDue,
    StoreFailed,
    newest,
    write_back_targets,
)
from ._records import (
    ImmutableValue,
    MutableValue,
    PeerAddressRecord,
    Record,
    make_immutable,
    mutable_key,
    sign_mutable,
    sign_peer_record,
)
from ._responder import Responder, ResponderEvent
from ._routing import PingDue, PingNeeded, RefreshDue, RoutingStats, RoutingTable
from ._store import RecordStore, Refusal
from ._wire import (
    PROTOCOL,
)
from .config import DhtConfig


@attrs.frozen
class DhtStats:
    """What a node has done and holds (:attr:`DhtNode.stats`)."""

    lookups: int
    """Lookups started (the user's, refreshes, republishing and replication)."""
    rpcs_sent: int
    rpcs_failed: int
    records_held: int
    """Records held for others."""
    routing: RoutingStats
    refreshes: int
    """Bucket refresh lookups run."""
    background_failures: int
    """Background jobs (refresh, republishing, replication) that found no contact or no taker."""


Job = Callable[[], Awaitable[object]]


class DhtNode:
    """A DHT node on ``host``. Create with :func:`open_dht_node`."""

    def __init__(
        self,
        host: Host,
        config: DhtConfig,
        nursery: trio.Nursery,
        *,
        wall_clock: Callable[[], float] = time.time,
        randomness: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.host = host
        self.config = config
        self._nursery = nursery
        self._wall_clock = wall_clock
        now = trio.current_time()
        self.routing = RoutingTable(
            host.peer_id.digest, config.routing, now=now, randomness=randomness
        )
        """The k-buckets (sans-IO)."""
        self.records = RecordStore(config.store)
        """The records this node holds for others (sans-IO)."""
        self.responder = Responder(self.routing, self.records, config.responder, config.wire)
        self.refreshes_due: collections.deque[bytes] = collections.deque(
            maxlen=config.max_refreshes_due
        )
        """Keys of bucket refreshes the routing table asked for, not yet looked up."""
        self._pinging: set[bytes] = set()
        self._changed = trio.Event()
        self._maintenance = Maintenance(
            config.store.republish_interval, config.replication_check, wall_clock()
        )
        self._republish: dict[bytes, Job] = {}
        self._republish_due: collections.deque[Job] = collections.deque()
        """Our own records' republishing: as many as this node writes, never dropped (a peer's
        records must not crowd our own out), run first."""
        self._replication_due: collections.deque[Record] = collections.deque(
            maxlen=config.store.max_records
        )
        """Held records to offer to the nodes nearest them, at most one store's worth (each held
        record comes due once per interval), run last."""
        self._workers = 0
        self._peer_sequence = 0
        self._counts = collections.Counter[str]()
        self.client = DhtClient(host, self.routing, config, self._dispatch, wall_clock)
        """The RPCs and lookups this node sends."""

    @property
    def stats(self) -> DhtStats:
        """Counters and sizes, for monitoring."""
        return DhtStats(
            lookups=self.client.lookups,
            rpcs_sent=self.client.rpcs_sent,
            rpcs_failed=self.client.rpcs_failed,
            records_held=len(self.records),
            routing=self.routing.stats,
            refreshes=self._counts["refreshes"],
            background_failures=self._counts["background_failures"],
        )

    @property
    def node_id(self) -> bytes:
        """Our 32-byte node id (the host's peer id)."""
        return self.routing.own_id

    @property
    def contact(self) -> Contact | None:
        """Our own contact as requests announce it (see :attr:`DhtClient.contact`)."""
        return self.client.contact

    async def wait_changed(self) -> None:
        """Wait until the routing table or the store next changes (for tests and monitors)."""
        await self._changed.wait()

    def _note_change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- asking --------------------------------------------------------------------------------

    async def ping(self, contact: Contact) -> None:
        """Ping ``contact``; raises :class:`RpcFailed` if it does not answer."""
        await self.client.ping(contact)

    async def find_node(self, contact: Contact, target: bytes) -> list[Contact]:
        """The contacts ``contact`` knows nearest ``target`` (unverified: hearsay)."""
        return await self.client.find_node(contact, target)

    async def find_value(
        self, contact: Contact, key: bytes, have_sequence: int = 0
    ) -> Record | list[Contact]:
        """The record ``contact`` holds under ``key`` (newer than ``have_sequence``), or the
        contacts it knows nearest ``key``."""
        return await self.client.find_value(contact, key, have_sequence)

    async def store(self, contact: Contact, record: Record) -> Refusal | None:
        """Ask ``contact`` to hold ``record``: ``None`` if it does, else why it refused."""
        return await self.client.store(contact, record)

    async def closest(self, key: bytes) -> list[Contact]:
        """The ``k`` nodes nearest ``key`` that answered an iterative lookup, nearest first.
        Raises :class:`~._operations.NoContacts` if the routing table is empty."""
        return await self.client.closest(key)

    async def bootstrap(self, records: Iterable[PeerRecord]) -> int:
        """Join through ``records`` (peers with addresses): ping each (a verified contact) and ask
        it for the nodes nearest our own id, then ping those; then, if any answered, look up our
        own id and publish our peer record. Returns how many bootstrap peers answered."""
        contacts = [Contact.of(record) for record in records]
        answered = 0
        learned: dict[bytes, Contact] = {}

        async def join(contact: Contact) -> None:
            nonlocal answered
            try:
                await self.ping(contact)
                found = await self.find_node(contact, self.node_id)
            except RpcFailed:
                return
            answered += 1
            learned.update((each.node_id, each) for each in found)

        async with trio.open_nursery() as nursery:
            for contact in contacts:
                nursery.start_soon(join, contact)
        async with trio.open_nursery() as nursery:
            for node_id, contact in learned.items():
                if node_id != self.node_id and node_id not in self.routing:
                    nursery.start_soon(self._ping_quietly, contact)
        if answered:
            await self.closest(self.node_id)
            if self.host.listeners:
                with contextlib.suppress(StoreFailed):  # a network of one: nobody to hold it
                    await self.publish_own_record()
        return answered

    # -- operations ----------------------------------------------------------------------------

    async def put(self, value: bytes) -> PutResult:
        """Store the immutable ``value`` (its key: ``SHA-256(value)``) at the nearest nodes, and
        republish it every 22 h. Raises :class:`~._operations.StoreFailed` if none accepted."""
        issued_at = int(self._wall_clock())
        record = make_immutable(value, issued_at, issued_at + self.config.record_lifetime)
        return await self._publish(record, lambda: self.put(value))

    async def get(self, key: bytes) -> bytes | None:
        """The immutable value under ``key`` (the first valid one a lookup finds), or ``None``."""
        held = self.records.get(key, self._wall_clock())
        if isinstance(held, ImmutableValue):
            return held.value
        result = await self.client.lookup(key, RequestKind.FIND_VALUE, value_kind=ImmutableValue)
        found = result.value
        return found.value if isinstance(found, ImmutableValue) else None

    async def put_mutable(
        self,
        owner_key: Ed25519PrivateKey,
        salt: bytes,
        value: bytes,
        *,
        sequence: int | None = None,
        cas: int | None = None,
    ) -> PutResult:
        """Sign ``value`` as the owner's mutable value under ``salt`` and store it at the nearest
        nodes (republished every 22 h with the next sequence). ``sequence=None``: the one after
        the newest found; ``cas``: the sequence the holders must hold for them to replace it."""
        return await self._write_mutable(owner_key, salt, value, sequence, cas)

    async def delete(
        self, owner_key: Ed25519PrivateKey, salt: bytes, *, sequence: int | None = None
    ) -> PutResult:
        """Store a signed tombstone over the owner's value under ``salt`` (it outlives every
        value this node wrote there, so it is not republished)."""
        return await self._write_mutable(owner_key, salt, None, sequence, None)

    async def get_mutable(self, owner_public: Ed25519PublicKey, salt: bytes) -> MutableValue | None:
        """The newest valid mutable value of the owner under ``salt`` among ``read_quorum``
        answers (written back to the nearest nodes that returned an older one or none), or
        ``None`` if there is none or it was deleted."""
        found = await self._read_newest(mutable_key(_raw(owner_public), salt), MutableValue)
        return found if isinstance(found, MutableValue) and not found.deleted else None

    async def find_peer(self, peer_id: PeerId) -> PeerRecord | None:
        """The peer's record with its first published address (the newest of ``read_quorum``
        signed peer records), or ``None`` if no node holds one."""
        found = await self._read_newest(peer_id.digest, PeerAddressRecord)
        if not isinstance(found, PeerAddressRecord):
            return None
        return found.peer.with_address(*found.addresses[0])

    async def publish_own_record(self) -> PutResult:
        """Sign our peer record (our listening address, a new sequence) and store it at the
        nodes nearest our id; republished every 22 h (:meth:`bootstrap` calls it)."""
        issued_at = int(self._wall_clock())
        self._peer_sequence = max(self._peer_sequence + 1, issued_at)
        record = sign_peer_record(
            self.host.config.identity,
            self._peer_sequence,
            (self.host.address,),
            issued_at,
            issued_at + self.config.record_lifetime,
        )
        return await self._publish(record, self.publish_own_record)

    async def _write_mutable(
        self,
        owner_key: Ed25519PrivateKey,
        salt: bytes,
        value: bytes | None,
        sequence: int | None,
        cas: int | None,
    ) -> PutResult:
        key = mutable_key(_raw(owner_key.public_key()), salt)
        if sequence is None:
            held = await self._read_newest(key, MutableValue, write_back=False)
            sequence = 1 if held is None else held.sequence + 1
        issued_at = int(self._wall_clock())
        record = sign_mutable(
            owner_key,
            salt,
            sequence,
            value,
            issued_at=issued_at,
            expires_at=issued_at + self.config.record_lifetime,
            cas=cas,
        )
        if value is None:
            self._maintenance.forget(key)
            self._republish.pop(key, None)
            return await self._publish(record, None)
        next_sequence = sequence + 1
        return await self._publish(
            record, lambda: self._write_mutable(owner_key, salt, value, next_sequence, None)
        )

    async def _read_newest(
        self, key: bytes, kind: type[Record], *, write_back: bool = True
    ) -> Record | None:
        result = await self.client.lookup(
            key, RequestKind.FIND_VALUE, quorum=self.config.read_quorum, value_kind=kind
        )
        held = self.records.get(key, self._wall_clock())
        local = [held] if held is not None and isinstance(held, kind) else []
        best = newest([*local, *(answer.value for answer in result.values)])
        if best is not None and write_back:
            await self._store_at(best, write_back_targets(result, best))
        return best

    async def _publish(self, record: Record, republish: Job | None) -> PutResult:
        result = await self._store_at(record, await self.closest(record.key))
        if not result.accepted:
            raise StoreFailed(result)
        if republish is not None:
            self._republish[record.key] = republish
            self._maintenance.published(record.key, self._wall_clock())
            self._note_change()
        return result

    async def _store_at(self, record: Record, contacts: Iterable[Contact]) -> PutResult:
        refusals = []
        failed = 0

        async def store_one(contact: Contact) -> None:
            nonlocal failed
            try:
                refusal = await self.store(contact, record)
            except RpcFailed:
                failed += 1
                return
            refusals.append(refusal)

        async with trio.open_nursery() as nursery:
            for contact in contacts:
                nursery.start_soon(store_one, contact)
        refused = tuple(refusal for refusal in refusals if refusal is not None)
        return PutResult(record.key, len(refusals) - len(refused), refused, failed)

    async def _replicate(self, record: Record) -> None:
        """Offer a held record, exact bytes, to the nodes now nearest its key."""
        await self._store_at(record, await self.closest(record.key))

    # -- background jobs -----------------------------------------------------------------------

    def _maintain(self, events: Iterable[RepublishDue | ReplicationDue]) -> None:
        for event in events:
            if isinstance(event, RepublishDue):
                job = self._republish.get(event.key)
                if job is not None:
                    self._republish_due.append(job)
                    self._start_worker()
            else:
                self._replication_due.extend(self.records.records_to_replicate(self._wall_clock()))
                if self._replication_due:
                    self._start_worker()

    def _start_worker(self) -> None:
        if self._workers >= self.config.max_background_lookups:
            return  # the running workers drain the queues
        self._workers += 1
        self._nursery.start_soon(self._drain_jobs)

    async def _drain_jobs(self) -> None:
        """Run the queued jobs one at a time until none is left: our own republishing first,
        then bucket refreshes, then replication of held records."""
        try:
            while self._republish_due or self.refreshes_due or self._replication_due:
                job: Job
                if self._republish_due:
                    job = self._republish_due.popleft()
                elif self.refreshes_due:
                    self._counts["refreshes"] += 1
                    job = functools.partial(self.closest, self.refreshes_due.popleft())
                else:
                    job = functools.partial(self._replicate, self._replication_due.popleft())
                try:
                    await job()
                except (NoContacts, StoreFailed):
                    self._counts["background_failures"] += 1  # the next interval tries again
                self._note_change()
        finally:
            self._workers -= 1

    # -- serving -------------------------------------------------------------------------------

    async def _serve(self, stream: LogicalStream) -> None:
        address = stream.remote_address
        if address is None:
            return
        requester = Contact(stream.remote_peer, address[0], address[1])
        exchange = self.responder.exchange(requester)
        with trio.move_on_after(self.config.request_timeout):
            try:
                data = await stream.receive_message()
                events = exchange.receive_request_untrusted(
                    data, trio.current_time(), self._wall_clock()
                )
            except (DhtProtocolError, trio.EndOfChannel):
                return  # the host closes the stream unanswered: a reset
            self._dispatch(events)
            reply = exchange.message_to_send()
            if reply is not None:
                await stream.send_message(reply)
                await stream.send_eof()

    # -- timers and routing events -------------------------------------------------------------

    def _dispatch(self, events: Iterable[ResponderEvent]) -> None:
        for event in events:
            if isinstance(event, PingNeeded):
                self._start_ping(event.old)
            elif isinstance(event, PingDue):
                self._start_ping(event.contact)
            elif isinstance(event, RefreshDue):
                self.refreshes_due.append(event.key)
                self._start_worker()
        self._note_change()

    def _start_ping(self, contact: Contact) -> None:
        if contact.node_id in self._pinging:
            return
        if len(self._pinging) >= self.config.max_background_pings:
            return  # the table asks again (eviction pings time out, stale entries re-probe)
        self._pinging.add(contact.node_id)
        self._nursery.start_soon(self._background_ping, contact)

    async def _background_ping(self, contact: Contact) -> None:
        try:
            await self._ping_quietly(contact)
        finally:
            self._pinging.discard(contact.node_id)

    async def _ping_quietly(self, contact: Contact) -> None:
        """A ping whose outcome only the routing table needs: ``_call`` reported it there."""
        with contextlib.suppress(RpcFailed):
            await self.ping(contact)

    async def _run_timers(self) -> None:
        while True:
            events = self.routing.handle_timers(trio.current_time())
            wall = self._wall_clock()
            expired = self.records.handle_timers(wall)
            if events or expired:
                self._dispatch(events)
            self._maintain(self._maintenance.handle_timers(wall))
            wall_deadline = min(self.records.next_deadline(), self._maintenance.next_deadline())
            wall_delay = wall_deadline - self._wall_clock()
            deadline = min(self.routing.next_deadline(), trio.current_time() + wall_delay)
            changed = self._changed
            with trio.move_on_at(deadline):
                await changed.wait()


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@asynccontextmanager
async def open_dht_node(
    host: Host,
    config: DhtConfig | None = None,
    *,
    wall_clock: Callable[[], float] = time.time,
    randomness: Callable[[int], bytes] = os.urandom,
) -> AsyncIterator[DhtNode]:
    """Run a DHT node on ``host`` for the duration of the block.

    The host should admit the network's members (``admission=admit_network_members``): a DHT's
    peers are not known in advance. Example::

        async with open_host(host_config) as host, open_dht_node(host) as node:
            await node.bootstrap([bootstrap_record])
    """
    async with open_service_nursery() as nursery:
        node = DhtNode(
            host, config or DhtConfig(), nursery, wall_clock=wall_clock, randomness=randomness
        )
        host.serve_protocol(PROTOCOL, node._serve)
        nursery.start_soon(node._run_timers)
        try:
            yield node
        finally:
            host.remove_protocol(PROTOCOL)
            nursery.cancel_scope.cancel()


__all__ = [
    "DhtNode",
    "DhtStats",
    "NoContacts",
    "PutResult",
    "RpcFailed",
    "StoreFailed",
    "open_dht_node",
]
