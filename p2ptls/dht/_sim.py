"""The network simulator's engine: thousands of DHT nodes in one process on a virtual clock.

Theory of operation
-------------------
Every simulated node runs the real sans-IO cores: its own
:class:`~p2ptls.dht._routing.RoutingTable` and :class:`~p2ptls.dht._store.RecordStore`, and a
:class:`~p2ptls.dht._lookup.Lookup` for every lookup it makes. The engine replaces sockets with a
priority queue of timed actions (a message arriving, a lookup's timer, a node leaving or joining,
a workload step), ordered by virtual time, then by insertion, and draws every random choice from
one ``random.Random(seed)``: the same parameters give the same run.

**Ids.** Random 32-byte ids. Real ids are SHA-256 hashes of RSA public keys, so they are spread
just as uniformly; the simulator makes no RSA keys (10,000 would take minutes). A contact's
record is therefore a stand-in (:class:`_SimPeer`) that carries the id and a public key of the
size of an RSA-2048 key (294 bytes of DER), which is all the routing table and the wire
encoders read of it. Addresses are random public IPv4 addresses, so the routing table's subnet
caps apply as on the Internet.

**Messages.** Each message takes a one-way latency drawn from a log-normal distribution (fitted
to ``latency_median`` and ``latency_p99``) and is lost with probability ``loss``; a request is a
message there and its reply one back. A lost request or reply leaves the requester waiting: its
lookup soft-times the request out (``request_timeout``) and its routing table counts a failure.
A node that has left never answers. The responder answers from its state when the request
arrives. Bytes sent are the lengths of the real ``_wire`` encodings (encoded once per shape:
the size of a NODES reply depends only on its number of contacts, of a VALUE or STORE on its
record's encoding, since every address is IPv4).

**Routing upkeep.** A successful RPC is a verified sighting for both sides (the requester of the
responder, the responder of the requester, as the handshake proves ids); a request that times
out is :meth:`~p2ptls.dht._routing.RoutingTable.failed`. The pings the table asks for
(:class:`~p2ptls.dht._routing.PingNeeded`, :class:`~p2ptls.dht._routing.PingDue`) are answered
at once by whether the node is live (their bytes are counted; their latency is not simulated).
Every ``table_tick`` seconds each node runs its table's timers: the stale-contact pings they ask
for are sent (answered at once, as above); bucket refreshes (a lookup per bucket per hour, for
every node) are not simulated, as at 10,000 nodes they would cost more than the workloads.

**Joining.** The fast bootstrap (the default) seeds each initial node's table with what a
well-filled table holds (up to ``k`` ids per prefix length, by bisection in the sorted ids,
:meth:`~p2ptls.dht._lookup_sim.SimNetwork.table`), fed through ``RoutingTable.verified``.
``realistic_join`` builds the network the real way instead: node after node joins through a
random earlier node and looks itself up. Churn always uses the real way: a leaving node is gone
at once (silent), and its replacement joins through a random live node with a self-lookup.

**Workloads** (see :class:`SimConfig`): lookups of random keys from random live nodes (hops,
latency, and success: the nearest live node was found); immutable values stored at the ``k``
nearest nodes found, read an hour later with FIND_VALUE (holders replicate each record every
hour to the ``k`` nearest nodes their tables know, never extending its expiry; writers republish
every ``republish_interval``); mutable values written twice, the second version reaching only
``1 - stale_fraction`` of the holders, then read with a quorum of ``read_quorum`` values (success:
the newest of the values returned is the second version).
"""

from __future__ import annotations

import bisect
import functools
import heapq
import ipaddress
import itertools
import math
import random
import statistics
from collections.abc import Callable, Sequence
from typing import cast

import attrs
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..identity import PeerId, PeerRecord
from ._ids import KEY_SIZE, Contact
from ._lookup import (
    Lookup,
    LookupConfig,
    LookupFinished,
    LookupResult,
    RequestKind,
    RequestTimedOut,
)
from ._lookup_sim import SimNetwork
from ._records import Record, make_immutable, sign_mutable
from ._routing import PingNeeded, RefreshDue, RoutingConfig, RoutingEvent, RoutingTable
from ._store import RecordStore, StoreConfig
from ._wire import FindNode, FindValue, Nodes, Ping, Pong, Store, Stored, Value

HOUR = 3600.0
_RSA_2048_DER_SIZE = 294
_PORT = 4433


@attrs.frozen
class SimConfig:
    """What to simulate; the defaults are the DHT issue's planning scenario."""

    nodes: int = 10_000
    lookups: int = 1_000
    """Lookups of random keys, spread over the run."""
    values: int = 200
    """Immutable values stored at the start and read an hour later."""
    mutables: int = 200
    """Mutable values written twice (with stale holders) and read with a quorum."""
    seed: int = 1
    churn_per_hour: float = 0.2
    """Fraction of the nodes replaced per simulated hour."""
    loss: float = 0.01
    """Probability that a message is lost."""
    latency_median: float = 0.050
    latency_p99: float = 0.250
    stale_fraction: float = 0.2
    """Fraction of a mutable value's holders that miss its second version."""
    read_quorum: int = 4
    """Values a mutable read collects before it picks the newest. With 20% stale holders at
    10,000 nodes, 3 gave the newest in 98.9% of 1,000 reads and 4 in 99.8%."""
    realistic_join: bool = False
    k: int = 20
    alpha: int = 3
    disjoint_paths: int = 1
    request_timeout: float = LookupConfig().request_timeout
    """A lookup's soft timeout: a lost message or a node that left costs this much."""
    republish_interval: float = 22 * HOUR
    write_window: float = 600.0
    """Stores and mutable writes are spread over the run's first ``write_window`` seconds."""
    read_delay: float = HOUR
    """A value is read this long after it was stored."""
    mutable_read_delay: float = 300.0
    table_tick: float = 300.0
    """How often each node runs its routing table's timers (0: never)."""

    @property
    def duration(self) -> float:
        """Simulated seconds: until the last read has had time to finish."""
        return self.write_window + max(self.read_delay, self.mutable_read_delay) + 60.0


@attrs.define
class SimStats:
    """What a run measured."""

    hops: list[int] = attrs.Factory(list)
    lookup_seconds: list[float] = attrs.Factory(list)
    """From a lookup's start to its end (when its ``k`` nearest have answered or failed)."""
    nearest_seconds: list[float] = attrs.Factory(list)
    """From a lookup's start to the answer of the nearest node it found."""
    lookups_found_nearest: int = 0
    reads: int = 0
    reads_found: int = 0
    mutable_reads: int = 0
    mutable_reads_newest: int = 0
    bytes_sent: int = 0
    messages_sent: int = 0
    nodes_joined: int = 0
    nodes_left: int = 0

    @property
    def success(self) -> float:
        """Lookups of random keys that found the nearest live node."""
        return self.lookups_found_nearest / len(self.hops) if self.hops else math.nan

    @property
    def success_churn(self) -> float:
        """Values read an hour after they were stored, under churn, that were found."""
        return self.reads_found / self.reads if self.reads else math.nan

    @property
    def stale_read_newest(self) -> float:
        """Quorum reads of mutable values that returned the newest version."""
        return self.mutable_reads_newest / self.mutable_reads if self.mutable_reads else math.nan


@attrs.frozen
class _SimPeer:
    """A stand-in for :class:`~p2ptls.identity.PeerRecord`: the id and a key-sized DER blob."""

    peer_id: PeerId
    public_key_der: bytes = attrs.field(repr=False)


class _Node:
    """One simulated node: its contact, routing table and record store."""

    __slots__ = ("contact", "live", "store", "table")

    def __init__(self, contact: Contact, table: RoutingTable, store: RecordStore) -> None:
        self.contact = contact
        self.table = table
        self.store = store
        self.live = True


class _MessageSizes:
    """Encoded sizes of the ``_wire`` messages, encoded once per shape."""

    def __init__(self, sample: Contact) -> None:
        key = bytes(KEY_SIZE)
        self.ping = len(Ping(sample).encode())
        self.pong = len(Pong().encode())
        self.find_node = len(FindNode(key, sample).encode())
        self.find_value = len(FindValue(key, 0, sample).encode())
        self.stored = len(Stored().encode())
        self._nodes = [len(Nodes((sample,) * n).encode()) for n in range(21)]
        self._sample = sample

    def nodes(self, count: int) -> int:
        return self._nodes[count]

    def value(self, record: Record) -> int:
        return len(Value(record).encode())

    def store(self, record: Record) -> int:
        return len(Store(record, self._sample).encode())


_SimLookup = Lookup[Contact, Record]
_Answered = dict[bytes, float]
_OnDone = Callable[[LookupResult[Contact, Record], _Answered], None]


@attrs.define
class _Run:
    """A lookup being driven: who runs it, what to do with its result, its armed timer."""

    node: _Node
    lookup: _SimLookup
    on_done: _OnDone
    armed: float = math.inf
    answered: dict[bytes, float] = attrs.Factory(dict)
    """When each node that answered did (to time when the nearest one was found)."""


class Simulation:
    """One run of :class:`SimConfig`: :meth:`run` it, then read :attr:`stats`."""

    def __init__(
        self, config: SimConfig, *, progress: Callable[[str, float], None] | None = None
    ) -> None:
        self.config = config
        self.stats = SimStats()
        self.now = 0.0
        self._rng = random.Random(config.seed)
        self._progress = progress or (lambda _phase, _fraction: None)
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._nodes: dict[bytes, _Node] = {}
        self._joining = False
        """Whether a realistic bootstrap's join is running."""
        self._live_ids: list[bytes] = []
        """Sorted ids of the live nodes."""
        self._routing = RoutingConfig(bucket_size=config.k)
        self._lookup = LookupConfig(
            k=config.k,
            alpha=config.alpha,
            disjoint_paths=config.disjoint_paths,
            request_timeout=config.request_timeout,
        )
        self._quorum_lookup = attrs.evolve(self._lookup, value_quorum=config.read_quorum)
        self._sigma = math.log(
            config.latency_p99 / config.latency_median
        ) / statistics.NormalDist().inv_cdf(0.99)
        self._mu = math.log(config.latency_median)
        self._owner = Ed25519PrivateKey.from_private_bytes(self._rng.randbytes(32))
        self._sizes = _MessageSizes(self._new_contact())

    # -- the clock ---------------------------------------------------------------------------

    def _at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._order), action))

    def run(self) -> SimStats:
        """Build the network, schedule the workloads and churn, and run to the end."""
        config = self.config
        self._bootstrap()
        start = self.now
        self._schedule_workloads(start)
        if config.churn_per_hour > 0 and config.nodes > 1:
            self._at(start + self._rng.expovariate(self._churn_rate()), self._churn)
        end = start + config.duration
        next_report = start
        while self._queue and self._queue[0][0] <= end:
            self._step()
            if self.now >= next_report:
                self._progress("simulating", (self.now - start) / config.duration)
                next_report = self.now + 10.0
        self.now = end
        self._progress("simulating", 1.0)
        return self.stats

    def _step(self) -> None:
        when, _, action = heapq.heappop(self._queue)
        self.now = when
        action()

    # -- nodes -------------------------------------------------------------------------------

    def _new_contact(self) -> Contact:
        node_id = self._rng.randbytes(KEY_SIZE)
        peer = _SimPeer(PeerId(node_id), bytes(_RSA_2048_DER_SIZE))
        first = self._rng.choice([n for n in range(1, 224) if n != 127])  # public, not loopback
        host = str(ipaddress.IPv4Address(first << 24 | self._rng.randrange(1 << 24)))
        return Contact(cast(PeerRecord, peer), host, _PORT)

    def _add_node(self) -> _Node:
        contact = self._new_contact()
        randomness = self._rng.randbytes
        table = RoutingTable(contact.node_id, self._routing, now=self.now, randomness=randomness)
        node = _Node(contact, table, RecordStore(StoreConfig()))
        self._nodes[contact.node_id] = node
        bisect.insort(self._live_ids, contact.node_id)
        if self.config.table_tick > 0:
            first = self.now + self._rng.uniform(0.0, self.config.table_tick)
            self._at(first, functools.partial(self._tick, node))
        self.stats.nodes_joined += 1
        return node

    def _random_live(self) -> _Node:
        return self._nodes[self._rng.choice(self._live_ids)]

    def live_count(self) -> int:
        """Nodes in the network now."""
        return len(self._live_ids)

    def nearest_live(self, target: bytes) -> bytes:
        """The id of the live node nearest ``target``."""
        point = int.from_bytes(target, "big")
        return min(self._live_ids, key=lambda n: int.from_bytes(n, "big") ^ point)

    def _bootstrap(self) -> None:
        config = self.config
        if config.realistic_join:
            self._add_node()
            for number in range(config.nodes - 1):
                if number % 100 == 0:
                    self._progress("bootstrap", number / config.nodes)
                self._join(self._joined)
                while self._joining and self._queue:  # each join ends before the next begins
                    self._step()
            return
        nodes = [self._add_node() for _ in range(config.nodes)]
        sample = SimNetwork(self._live_ids, config.k)
        for number, node in enumerate(nodes):
            if number % 100 == 0:
                self._progress("bootstrap", number / len(nodes))
            for node_id in sample.table(node.contact.node_id):
                self._handle(node, node.table.verified(self._nodes[node_id].contact, 0.0))

    def _joined(self, _result: LookupResult[Contact, Record], _answered: _Answered) -> None:
        self._joining = False

    def _join(self, on_done: _OnDone = lambda _result, _answered: None) -> None:
        """A new node joins through a random live node and looks itself up."""
        introducer = self._random_live()
        self._joining = True
        node = self._add_node()
        self._handle(node, node.table.verified(introducer.contact, self.now))
        self._start(node, node.contact.node_id, RequestKind.FIND_NODE, on_done)

    def _churn_rate(self) -> float:
        return self.config.churn_per_hour * self.config.nodes / HOUR

    def _churn(self) -> None:
        leaving = self._random_live()
        leaving.live = False
        del self._live_ids[bisect.bisect_left(self._live_ids, leaving.contact.node_id)]
        self.stats.nodes_left += 1
        self._join()
        self._at(self.now + self._rng.expovariate(self._churn_rate()), self._churn)

    def _tick(self, node: _Node) -> None:
        """Run ``node``'s table timers (stale-contact pings) every ``table_tick`` seconds."""
        if node.live:
            self._handle(node, node.table.handle_timers(self.now))
            self._at(self.now + self.config.table_tick, functools.partial(self._tick, node))

    def _handle(self, node: _Node, events: list[RoutingEvent]) -> None:
        """Answer the pings ``node``'s table asks for (at once, by the pinged node's liveness)."""
        while events:
            event = events.pop()
            if isinstance(event, RefreshDue):
                continue  # bucket refreshes are not simulated
            contact = event.old if isinstance(event, PingNeeded) else event.contact
            self._count(self._sizes.ping)
            target = self._nodes.get(contact.node_id)
            if target is not None and target.live:
                self._count(self._sizes.pong)
                events += node.table.ping_answered(contact, self.now)
            else:
                events += node.table.ping_failed(contact, self.now)

    # -- messages ----------------------------------------------------------------------------

    def _count(self, size: int) -> None:
        self.stats.bytes_sent += size
        self.stats.messages_sent += 1

    def _latency(self) -> float:
        return math.exp(self._rng.gauss(self._mu, self._sigma))

    def _deliver(self, size: int, to: _Node, action: Callable[[], None]) -> bool:
        """Send one message of ``size`` bytes to ``to``; ``action`` runs on arrival unless the
        message is lost or ``to`` has left. Whether it will arrive."""
        self._count(size)
        if self._rng.random() < self.config.loss or not to.live:
            return False
        self._at(self.now + self._latency(), lambda: action() if to.live else None)
        return True

    def _rpc(
        self,
        requester: _Node,
        responder: _Node,
        size: int,
        answer: Callable[[], tuple[int, Callable[[], None]]],
    ) -> None:
        """A request of ``size`` bytes; on arrival the responder sights the requester and
        ``answer`` gives its reply's size and what the reply does on arrival."""

        def arrive() -> None:
            self._handle(responder, responder.table.verified(requester.contact, self.now))
            reply_size, on_reply = answer()
            self._deliver(reply_size, requester, on_reply)

        self._deliver(size, responder, arrive)

    # -- lookups -----------------------------------------------------------------------------

    def _start(
        self,
        node: _Node,
        target: bytes,
        kind: RequestKind,
        on_done: _OnDone,
        config: LookupConfig | None = None,
    ) -> None:
        seeds = node.table.closest(target, self.config.k)
        if not seeds:
            return
        node.table.lookup_started(target, self.now)
        lookup: _SimLookup = Lookup(
            target, seeds, config or self._lookup, self.now, kind=kind, own_id=node.contact.node_id
        )
        self._pump(_Run(node, lookup, on_done))

    def _pump(self, run: _Run) -> None:
        """Send the lookup's new requests and re-arm its timer."""
        lookup = run.lookup
        for request in lookup.requests_to_send(self.now):
            responder = self._nodes[request.contact.node_id]
            find_value = request.kind is RequestKind.FIND_VALUE
            size = self._sizes.find_value if find_value else self._sizes.find_node
            self._rpc(run.node, responder, size, functools.partial(self._answer, run, responder))
        deadline = lookup.next_deadline()
        if deadline < run.armed:
            run.armed = deadline
            self._at(deadline, functools.partial(self._timers, run))

    def _answer(self, run: _Run, responder: _Node) -> tuple[int, Callable[[], None]]:
        """The responder's reply: its record for FIND_VALUE if it holds one, else its nearest."""
        target = run.lookup.target
        if run.lookup.kind is RequestKind.FIND_VALUE:
            value = responder.store.get(target, self.now)
            if value is not None:
                reply = functools.partial(self._reply, run, responder.contact, (), value)
                return self._sizes.value(value), reply
        contacts = tuple(responder.table.closest(target, self.config.k))
        reply = functools.partial(self._reply, run, responder.contact, contacts, None)
        return self._sizes.nodes(len(contacts)), reply

    def _reply(
        self, run: _Run, contact: Contact, contacts: Sequence[Contact], value: Record | None
    ) -> None:
        if run.lookup.done or not run.node.live:
            return
        self._handle(run.node, run.node.table.verified(contact, self.now))
        run.answered[contact.node_id] = self.now
        self._events(run, run.lookup.reply_received(contact, contacts, self.now, value))

    def _timers(self, run: _Run) -> None:
        run.armed = math.inf
        if run.node.live:
            self._events(run, run.lookup.handle_timers(self.now))

    def _events(self, run: _Run, events: Sequence[object]) -> None:
        for event in events:
            if isinstance(event, RequestTimedOut):
                self._handle(run.node, run.node.table.failed(event.contact, self.now))
            elif isinstance(event, LookupFinished):
                run.on_done(event.result, run.answered)
                return
        self._pump(run)

    # -- workloads ---------------------------------------------------------------------------

    def _schedule_workloads(self, start: float) -> None:
        config, rng = self.config, self._rng
        for _ in range(config.lookups):
            self._at(rng.uniform(start, start + config.duration - 60.0), self._random_lookup)
        for number in range(config.values):
            value = b"value %d" % number + rng.randbytes(32)
            self._at(
                rng.uniform(start, start + config.write_window),
                functools.partial(self._write, value),
            )
        for number in range(config.mutables):
            salt = b"%d" % number
            when = rng.uniform(start, start + config.write_window)
            self._at(when, functools.partial(self._write_mutable, salt))

    def _random_lookup(self) -> None:
        target = self._rng.randbytes(KEY_SIZE)
        origin = self._random_live()

        def done(result: LookupResult[Contact, Record], answered: _Answered) -> None:
            self.stats.hops.append(result.hops)
            self.stats.lookup_seconds.append(result.elapsed)
            if result.closest:
                found_at = answered[result.closest[0].contact.node_id]
                self.stats.nearest_seconds.append(found_at - (self.now - result.elapsed))
            nearest = self.nearest_live(target)
            if any(found.contact.node_id == nearest for found in result.closest):
                self.stats.lookups_found_nearest += 1

        self._start(origin, target, RequestKind.FIND_NODE, done)

    def _store_at_nearest(self, writer: _Node, record: Record, skip: float = 0.0) -> None:
        """Look up the record's key, then STORE it at the ``k`` nearest nodes found but a
        ``skip`` share of them, chosen at random (stale holders)."""

        def store(result: LookupResult[Contact, Record], _answered: _Answered) -> None:
            found = [f.contact.node_id for f in result.closest]
            for node_id in self._rng.sample(found, len(found) - round(skip * len(found))):
                self._send_store(writer, self._nodes[node_id], record)

        self._start(writer, record.key, RequestKind.FIND_NODE, store)

    def _send_store(self, sender: _Node, holder: _Node, record: Record) -> None:
        def answer() -> tuple[int, Callable[[], None]]:
            was_empty = len(holder.store) == 0
            holder.store.put_untrusted(record, sender.contact.node_id, self.now)
            if was_empty and len(holder.store):
                self._at(self.now + HOUR, functools.partial(self._replicate, holder))
            return self._sizes.stored, lambda: None

        self._rpc(sender, holder, self._sizes.store(record), answer)

    def _replicate(self, holder: _Node) -> None:
        """Every hour, offer each due record to the ``k`` nearest nodes the holder knows."""
        if not holder.live:
            return
        holder.store.handle_timers(self.now)
        for record in holder.store.records_to_replicate(self.now):
            for contact in holder.table.closest(record.key, self.config.k):
                self._send_store(holder, self._nodes[contact.node_id], record)
        if len(holder.store):
            self._at(self.now + HOUR, functools.partial(self._replicate, holder))

    def _write(self, value: bytes) -> None:
        writer = self._random_live()
        issued = int(self.now)
        record = make_immutable(value, issued, issued + int(24 * HOUR))
        self._store_at_nearest(writer, record)
        self._at(self.now + self.config.read_delay, functools.partial(self._read, record.key))
        self._at(
            self.now + self.config.republish_interval,
            functools.partial(self._republish, writer, value),
        )

    def _republish(self, writer: _Node, value: bytes) -> None:
        if writer.live:
            issued = int(self.now)
            self._store_at_nearest(writer, make_immutable(value, issued, issued + int(24 * HOUR)))

    def _read(self, key: bytes) -> None:
        def done(result: LookupResult[Contact, Record], _answered: _Answered) -> None:
            self.stats.reads += 1
            self.stats.reads_found += result.value is not None

        self._start(self._random_live(), key, RequestKind.FIND_VALUE, done)

    def _write_mutable(self, salt: bytes) -> None:
        writer = self._random_live()
        issued = int(self.now)
        versions = [
            sign_mutable(
                self._owner,
                salt,
                sequence,
                b"version %d" % sequence,
                issued_at=issued,
                expires_at=issued + int(24 * HOUR),
            )
            for sequence in (1, 2)
        ]
        self._store_at_nearest(writer, versions[0])
        later = functools.partial(
            self._store_at_nearest, writer, versions[1], self.config.stale_fraction
        )
        self._at(self.now + 30.0, later)
        read = functools.partial(self._read_mutable, versions[0].key)
        self._at(self.now + self.config.mutable_read_delay, read)

    def _read_mutable(self, key: bytes) -> None:
        def done(result: LookupResult[Contact, Record], _answered: _Answered) -> None:
            self.stats.mutable_reads += 1
            newest = max((answer.value.sequence for answer in result.values), default=0)
            self.stats.mutable_reads_newest += newest == 2

        self._start(self._random_live(), key, RequestKind.FIND_VALUE, done, self._quorum_lookup)


__all__ = ["HOUR", "SimConfig", "SimStats", "Simulation"]
