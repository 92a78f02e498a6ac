"""An in-memory driver for lookups: simulated nodes on a virtual clock.

Theory of operation
-------------------
The driver runs :class:`~p2ptls.dht._lookup.Lookup` objects exactly as a node does, without
sockets, threads or trio: a priority queue of timed actions (a reply or a failure arriving, a
lookup's timer firing) ordered by virtual time, then by insertion (so runs are deterministic).
When a lookup asks for a request, the driver asks the simulated network how the contacted node
answers (:class:`Reply`, :class:`Refused` or :data:`SILENT`) and schedules the outcome after the
node's round-trip latency; after every input it pulls the lookup's new requests and re-arms its
timer. Every send, reply, failure and soft timeout is appended to :attr:`LookupDriver.log`, so
tests assert on the order of events rather than on time.

:class:`SimNetwork` is the simplest network: honest nodes that answer with the ``k`` nearest ids
of a routing table of their own (k-buckets, built by bisection in the sorted ids) and, for
FIND_VALUE, the value if they hold one; a test replaces
the behaviour of chosen nodes (hostile, silent, slow) with its own :data:`Behaviour`. Contacts are
bare ids (:class:`SimContact`), so 10,000 nodes cost little memory. The network simulator
(:mod:`p2ptls.dht._sim`) runs whole nodes instead (a real routing table and store each, churn,
loss) and borrows :meth:`SimNetwork.table` to seed its tables at start.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import itertools
import math
import random
from collections.abc import Callable, Iterable
from typing import Final, TypeAlias

import attrs

from ._ids import KEY_BITS, distance
from ._lookup import Event, Lookup, LookupFinished, Request, RequestKind, RequestTimedOut


@attrs.frozen
class SimContact:
    """A simulated node as a contact: only its id."""

    node_id: bytes = attrs.field(repr=lambda raw: raw.hex()[:8])


@attrs.frozen
class Reply:
    """The node answers with contacts (and perhaps a value)."""

    contacts: tuple[SimContact, ...]
    value: bytes | None = None


@attrs.frozen
class Refused:
    """The request fails (connection refused, broken, invalid reply)."""


class _Silent:
    """The node never answers."""


SILENT: Final = _Silent()

Outcome: TypeAlias = Reply | Refused | _Silent
Behaviour: TypeAlias = Callable[[Request[SimContact]], Outcome]
SimLookup: TypeAlias = Lookup[SimContact, bytes]


@attrs.frozen
class LogEntry:
    """One thing that happened: ``what`` is "send", "reply", "fail" or "timeout"."""

    time: float
    lookup: int
    what: str
    node_id: bytes = attrs.field(repr=lambda raw: raw.hex()[:8])


class SimNetwork:
    """Honest nodes answering from a Kademlia routing table of their own, unless a behaviour is
    overridden.

    Each node's table holds, for every prefix length ``b``, up to ``k`` of the ids that share its
    first ``b`` bits and differ in the next (all of them if there are at most ``k``; else a sample
    fixed by the node's id): what a well-filled k-bucket table holds. Tables are built on first
    use, by bisection in the sorted ids, so a large network costs only the tables it touches.
    """

    def __init__(self, node_ids: Iterable[bytes], k: int) -> None:
        self.k = k
        self.node_ids = sorted(set(node_ids))
        self._sorted_ints = [int.from_bytes(node_id, "big") for node_id in self.node_ids]
        self._members = set(self.node_ids)
        self._tables: dict[bytes, list[bytes]] = {}
        self.values: dict[bytes, dict[bytes, bytes]] = {}
        """Per node id: the values it stores (key -> value)."""
        self.behaviours: dict[bytes, Behaviour] = {}
        """Per node id: how it answers instead of honestly."""

    def closest(self, target: bytes, count: int) -> list[bytes]:
        """The ``count`` ids of the whole network nearest ``target`` (brute force)."""
        return self._nearest(target, self.node_ids, count)

    def table(self, node_id: bytes) -> list[bytes]:
        """The ids in ``node_id``'s routing table (built on first use)."""
        table = self._tables.get(node_id)
        if table is None:
            table = self._tables[node_id] = self._build_table(node_id)
        return table

    def _build_table(self, node_id: bytes) -> list[bytes]:
        own = int.from_bytes(node_id, "big")
        sample = random.Random(node_id)
        table: list[bytes] = []
        for prefix_length in range(KEY_BITS):
            shift = KEY_BITS - prefix_length - 1
            sibling = ((own >> shift) ^ 1) << shift
            low = bisect.bisect_left(self._sorted_ints, sibling)
            high = bisect.bisect_left(self._sorted_ints, sibling + (1 << shift))
            bucket = self.node_ids[low:high]
            table.extend(bucket if len(bucket) <= self.k else sample.sample(bucket, self.k))
            home_low = bisect.bisect_left(self._sorted_ints, (own >> shift) << shift)
            home_high = bisect.bisect_left(self._sorted_ints, ((own >> shift) + 1) << shift)
            if home_high - home_low <= 1:
                break
        return table

    def _nearest(self, target: bytes, ids: list[bytes], count: int) -> list[bytes]:
        point = int.from_bytes(target, "big")
        return heapq.nsmallest(count, ids, key=lambda n: int.from_bytes(n, "big") ^ point)

    def honest(self, request: Request[SimContact]) -> Reply:
        """The answer of an honest node: the ``k`` nearest of its table, and its value if asked."""
        node_id = request.contact.node_id
        stored = self.values.get(node_id, {})
        value = stored.get(request.target) if request.kind is RequestKind.FIND_VALUE else None
        nearest = self._nearest(request.target, self.table(node_id), self.k)
        return Reply(tuple(SimContact(n) for n in nearest), value)

    def answer(self, request: Request[SimContact]) -> Outcome:
        """How the contacted node answers (an id that is not in the network never does)."""
        node_id = request.contact.node_id
        behaviour = self.behaviours.get(node_id)
        if behaviour is not None:
            return behaviour(request)
        return self.honest(request) if node_id in self._members else SILENT

    def seeds(self, origin: bytes, target: bytes) -> list[SimContact]:
        """What ``origin`` starts a lookup for ``target`` from: the ``k`` nearest of its table."""
        return [SimContact(n) for n in self._nearest(target, self.table(origin), self.k)]


def distance_rank(network: SimNetwork, target: bytes, node_id: bytes) -> int:
    """How many of the network's ids are nearer ``target`` than ``node_id`` (0 for the nearest)."""
    own = distance(node_id, target)
    return sum(distance(other, target) < own for other in network.node_ids)


class LookupDriver:
    """Runs lookups against ``answer`` on a virtual clock; see the module's docstring.

    ``latency(node_id)`` is the round trip to a node in seconds. ``after_input`` (for tests) is
    called with the lookup after each input, once its new requests went out.
    """

    def __init__(
        self,
        answer: Callable[[Request[SimContact]], Outcome],
        latency: Callable[[bytes], float] = lambda _node_id: 0.05,
        *,
        after_input: Callable[[SimLookup], None] | None = None,
    ) -> None:
        self._answer = answer
        self._latency = latency
        self._after_input = after_input
        self.now = 0.0
        self.lookups: list[SimLookup] = []
        self.events: list[list[Event[SimContact, bytes]]] = []
        """Per lookup, the events it reported, in order."""
        self.log: list[LogEntry] = []
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._armed: list[float] = []

    def start(self, lookup: SimLookup) -> int:
        """Start driving ``lookup`` (created at the driver's ``now``); returns its index."""
        index = len(self.lookups)
        self.lookups.append(lookup)
        self.events.append([])
        self._armed.append(math.inf)
        self._pump(index)
        return index

    def run(self, until: float = math.inf) -> None:
        """Process timed actions until none is left (or the clock would pass ``until``)."""
        while self._queue and self._queue[0][0] <= until:
            when, _, action = heapq.heappop(self._queue)
            self.now = when
            action()

    def _at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._order), action))

    def _pump(self, index: int) -> None:
        lookup = self.lookups[index]
        for request in lookup.requests_to_send(self.now):
            node_id = request.contact.node_id
            self.log.append(LogEntry(self.now, index, "send", node_id))
            outcome = self._answer(request)
            arrival = self.now + self._latency(node_id)
            if isinstance(outcome, Reply):
                self._at(arrival, functools.partial(self._reply, index, request, outcome))
            elif isinstance(outcome, Refused):
                self._at(arrival, functools.partial(self._fail, index, request))
        deadline = lookup.next_deadline()
        if deadline < self._armed[index]:
            self._armed[index] = deadline
            self._at(deadline, functools.partial(self._timers, index))
        if self._after_input is not None:
            self._after_input(lookup)

    def _record(self, index: int, events: list[Event[SimContact, bytes]]) -> None:
        for event in events:
            if isinstance(event, RequestTimedOut):
                self.log.append(LogEntry(self.now, index, "timeout", event.contact.node_id))
        self.events[index].extend(events)
        self._pump(index)

    def _reply(self, index: int, request: Request[SimContact], reply: Reply) -> None:
        lookup = self.lookups[index]
        if lookup.done:
            return
        self.log.append(LogEntry(self.now, index, "reply", request.contact.node_id))
        events = lookup.reply_received(request.contact, reply.contacts, self.now, reply.value)
        self._record(index, events)

    def _fail(self, index: int, request: Request[SimContact]) -> None:
        lookup = self.lookups[index]
        if lookup.done:
            return
        self.log.append(LogEntry(self.now, index, "fail", request.contact.node_id))
        self._record(index, lookup.request_failed(request.contact, self.now))

    def _timers(self, index: int) -> None:
        self._armed[index] = math.inf
        self._record(index, self.lookups[index].handle_timers(self.now))

    def finished(self, index: int) -> LookupFinished[SimContact, bytes] | None:
        """The lookup's completion event, if it finished."""
        done = [e for e in self.events[index] if isinstance(e, LookupFinished)]
        return done[0] if done else None


__all__ = [
    "SILENT",
    "Behaviour",
    "LogEntry",
    "LookupDriver",
    "Outcome",
    "Refused",
    "Reply",
    "SimContact",
    "SimLookup",
    "SimNetwork",
    "distance_rank",
]
