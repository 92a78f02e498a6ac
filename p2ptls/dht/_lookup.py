"""Iterative Kademlia lookups over disjoint paths, sans-IO.

Theory of operation
-------------------
A :class:`Lookup` looks for the ``k`` nodes nearest a target key (FIND_NODE) or for the value
stored under it (FIND_VALUE). It sends nothing and reads no clock: the caller pulls the requests
to send (:meth:`Lookup.requests_to_send`), reports how each ended (:meth:`Lookup.reply_received`,
:meth:`Lookup.request_failed`) and drives its timers (:meth:`Lookup.next_deadline`,
:meth:`Lookup.handle_timers`), passing ``now`` every time. The trio node and the in-memory
simulator (``_lookup_sim``) drive it the same way.

**Paths.** The seeds (from the routing table), nearest the target first, are dealt round-robin
into ``disjoint_paths`` independent paths (S/Kademlia). Each path keeps its own candidates, and a
node is queried by at most one path: the first path to query it claims it, the others skip it.
Hostile nodes on one path therefore cannot steer the others; the results of all paths are merged.

**No round barrier.** Each path keeps ``alpha`` requests in flight whenever it has a useful
candidate: a new request goes out as soon as one answers, fails or times out, to the path's
nearest candidate not yet queried. A candidate is *useful* while the path has fewer than ``k``
answers, or while it is nearer the target than the path's ``k``-th nearest answer.

**Soft timeouts.** A request not answered within ``request_timeout`` counts as failed for the
lookup's progress (it frees its slot and no longer holds up the end; :class:`RequestTimedOut`
tells the node, so the routing table can count it), but a reply arriving later, while the
lookup runs, is used in full. Giving up on the request for good is the transport's business
(:meth:`Lookup.request_failed`).

**The end.** A path is finished when nothing is in flight (soft-timed-out requests aside) and no
useful candidate is left, or its share of ``max_requests`` is spent. The lookup is finished when
every path is, or, for FIND_VALUE, as soon as ``value_quorum`` nodes returned a value (1: stop at
the first one, for immutable values; more: collect answers so the caller can pick the newest
record and write it back to those that returned stale ones or none). Completion is reported once,
as :class:`LookupFinished`, carrying the :class:`LookupResult`.

**Hostile replies.** What a reply says is hearsay: contacts learnt from replies are candidates,
not facts (the handshake proves a node's id when the node dials it; the result names the nodes
that answered, ``verified_contacts``, for the routing table). Work stays bounded whatever the
replies say: at most ``max_requests`` requests per lookup, at most ``k`` contacts taken from one
reply, at most ``max_candidates`` unqueried candidates per path (the farthest evicted), and the
own id and contacts already known are ignored. A chain of ever "closer" fake contacts thus ends
after the budget; each failure frees the slot for the next candidate, so honest paths still
converge.

**Depth.** Every candidate records the length of its discovery chain: a seed has depth 1, a
contact learnt from a node of depth ``n`` has depth ``n + 1`` (the smallest seen). The result's
hop counts are these depths, for the simulator's statistics.

The value is opaque here (``V``): the node verifies a record before it reports the reply (a
record that fails verification makes the whole reply a :meth:`Lookup.request_failed`). Contacts
are anything with a 32-byte ``node_id`` (:class:`~p2ptls.dht._ids.Contact` in the node, a bare id
in the simulator, which keeps 10,000 nodes cheap).
"""

from __future__ import annotations

import bisect
import enum
import math
from collections.abc import Iterable, Sequence
from typing import Generic, Protocol, TypeAlias, TypeVar

import attrs

from .._errors import LocalProtocolError
from ._ids import KEY_SIZE, distance


class HasNodeId(Protocol):
    """What the lookup needs of a contact: its 32-byte id."""

    @property
    def node_id(self) -> bytes: ...


C = TypeVar("C", bound=HasNodeId)
V = TypeVar("V")


class RequestKind(enum.Enum):
    """What a request asks of a node."""

    FIND_NODE = "find_node"
    FIND_VALUE = "find_value"


@attrs.frozen
class LookupConfig:
    """The limits of one lookup (to be gathered into the node's ``DhtConfig``)."""

    k: int = 20
    """Nodes wanted (the bucket size): the result holds the ``k`` nearest that answered."""
    alpha: int = 3
    """Requests each path keeps in flight."""
    disjoint_paths: int = 1
    """Independent paths (S/Kademlia's ``d``). 1 by default: each path costs about as many
    requests as a whole lookup (in a simulated honest network of 2,000 or 10,000 nodes, a median
    of 24-25 requests with one path, 49-52 with two, for the same exact result), and node ids
    come from RSA keys, so Sybils are dear. A node that expects adversaries raises it: with 30%
    of the nodes hostile, ``test_dht_lookup`` sees the success rate rise with each path."""
    request_timeout: float = 2.0
    """Seconds after which an unanswered request counts as failed for the lookup's progress."""
    max_requests: int = 200
    """Requests per lookup, all paths together (each path gets an equal share)."""
    max_candidates: int = 60
    """Unqueried candidates kept per path (the farthest are evicted)."""
    value_quorum: int = 1
    """FIND_VALUE stops once this many nodes returned a value (1: the first value)."""

    def __attrs_post_init__(self) -> None:
        if min(self.k, self.alpha, self.disjoint_paths, self.value_quorum) < 1:
            raise ValueError("k, alpha, disjoint_paths and value_quorum must be at least 1")
        if self.max_requests < self.disjoint_paths or self.max_candidates < self.k:
            raise ValueError("max_requests must cover every path and max_candidates k")
        if not self.request_timeout > 0:
            raise ValueError("request_timeout must be positive")


@attrs.frozen
class Request(Generic[C]):
    """Ask ``contact`` for the nodes nearest ``target`` (and, for FIND_VALUE, its value)."""

    contact: C
    kind: RequestKind
    target: bytes = attrs.field(repr=False)
    path: int = 0
    """Which disjoint path sends it (for statistics; the node need not care)."""


@attrs.frozen
class Found(Generic[C]):
    """A node that answered, and the length of the chain that led to it."""

    contact: C
    depth: int


@attrs.frozen
class ValueAnswer(Generic[C, V]):
    """A node that returned a value, and the value it returned."""

    contact: C
    value: V


@attrs.frozen
class LookupResult(Generic[C, V]):
    """What a lookup found, and what it cost."""

    target: bytes = attrs.field(repr=False)
    closest: tuple[Found[C], ...]
    """The ``k`` nearest nodes that answered, nearest first."""
    values: tuple[ValueAnswer[C, V], ...]
    """Every node that returned a value, in the order they answered."""
    verified_contacts: tuple[C, ...]
    """Every node that answered (a live node at that address), in the order they answered."""
    requests_sent: int
    failures: int
    """Requests that never got an answer (failed, or still unanswered at the end)."""
    elapsed: float
    """Seconds from the start to the end (NaN while the lookup runs)."""

    @property
    def value(self) -> V | None:
        """The first value returned, if any (for immutable values; mutable ones: see ``values``)."""
        return self.values[0].value if self.values else None

    @property
    def without_value(self) -> tuple[C, ...]:
        """The nearest nodes that answered without a value (where to store a value back)."""
        holders = {answer.contact.node_id for answer in self.values}
        return tuple(f.contact for f in self.closest if f.contact.node_id not in holders)

    @property
    def hops(self) -> int:
        """The longest discovery chain among the results (0 if none)."""
        return max((found.depth for found in self.closest), default=0)


@attrs.frozen
class RequestTimedOut(Generic[C]):
    """A request passed its soft timeout: the node may count the contact as slow."""

    contact: C


@attrs.frozen
class LookupFinished(Generic[C, V]):
    """The lookup is over (reported once)."""

    result: LookupResult[C, V]


Event: TypeAlias = RequestTimedOut[C] | LookupFinished[C, V]


class _State(enum.Enum):
    IN_FLIGHT = enum.auto()
    SLOW = enum.auto()
    ANSWERED = enum.auto()
    FAILED = enum.auto()


@attrs.define
class _Candidate(Generic[C]):
    contact: C
    distance: int
    depth: int


@attrs.define
class _Query(Generic[C]):
    candidate: _Candidate[C]
    path: _Path[C]
    deadline: float
    state: _State = _State.IN_FLIGHT


@attrs.define
class _Path(Generic[C]):
    """One path's candidates (unqueried, sorted by distance) and answers."""

    budget: int
    pending_order: list[tuple[int, bytes]] = attrs.Factory(list)
    pending: dict[bytes, _Candidate[C]] = attrs.Factory(dict)
    answered: list[int] = attrs.Factory(list)
    """Distances of the path's answers, sorted."""
    in_flight: int = 0

    def add(self, candidate: _Candidate[C], capacity: int) -> None:
        node_id = candidate.contact.node_id
        known = self.pending.get(node_id)
        if known is not None:
            known.depth = min(known.depth, candidate.depth)
            return
        if len(self.pending) >= capacity:
            if candidate.distance >= self.pending_order[-1][0]:
                return
            _, evicted = self.pending_order.pop()
            del self.pending[evicted]
        bisect.insort(self.pending_order, (candidate.distance, node_id))
        self.pending[node_id] = candidate

    def take_nearest(self) -> _Candidate[C]:
        _, node_id = self.pending_order.pop(0)
        return self.pending.pop(node_id)

    def drop_claimed(self, claimed: dict[bytes, _Query[C]]) -> None:
        """Forget the nearest candidates that a path (this or another) has queried already."""
        while self.pending_order and self.pending_order[0][1] in claimed:
            _, node_id = self.pending_order.pop(0)
            del self.pending[node_id]

    def has_useful_candidate(self, k: int) -> bool:
        if not self.pending_order:
            return False
        return len(self.answered) < k or self.pending_order[0][0] < self.answered[k - 1]

    def finished(self, k: int) -> bool:
        return self.in_flight == 0 and (self.budget == 0 or not self.has_useful_candidate(k))


class Lookup(Generic[C, V]):
    """One iterative lookup; see the module's theory of operation.

    ``seeds`` are the contacts to start from (the routing table's nearest); ``own_id``, if given,
    is never queried. Raises ``ValueError`` if no seed is left to query.
    """

    def __init__(
        self,
        target: bytes,
        seeds: Iterable[C],
        config: LookupConfig,
        now: float,
        *,
        kind: RequestKind = RequestKind.FIND_NODE,
        own_id: bytes | None = None,
    ) -> None:
        if len(target) != KEY_SIZE:
            raise ValueError("a lookup target is 32 bytes")
        self.target = target
        self.config = config
        self.kind = kind
        self.started = now
        self._own_id = own_id
        paths = config.disjoint_paths
        share, extra = divmod(config.max_requests, paths)
        self._paths: list[_Path[C]] = [_Path(share + (i < extra)) for i in range(paths)]
        self._queries: dict[bytes, _Query[C]] = {}
        self._verified: list[C] = []
        self._found: list[tuple[int, Found[C]]] = []
        self._values: list[ValueAnswer[C, V]] = []
        self._result: LookupResult[C, V] | None = None
        unique = {seed.node_id: seed for seed in seeds if seed.node_id != own_id}
        ordered = sorted(unique.values(), key=lambda seed: distance(seed.node_id, target))
        for index, seed in enumerate(ordered[: config.max_candidates * paths]):
            candidate = _Candidate(seed, distance(seed.node_id, target), 1)
            self._paths[index % paths].add(candidate, config.max_candidates)
        if not ordered:
            raise ValueError("a lookup needs at least one seed other than the own node")

    # -- state -------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Whether the lookup is over (no more requests; replies are ignored)."""
        return self._result is not None

    @property
    def result(self) -> LookupResult[C, V]:
        """The result so far (final once :attr:`done`)."""
        return self._result if self._result is not None else self._make_result(math.nan)

    @property
    def in_flight(self) -> int:
        """Requests sent and neither answered, failed nor soft-timed-out."""
        return sum(path.in_flight for path in self._paths)

    # -- output ------------------------------------------------------------------------------

    def requests_to_send(self, now: float) -> list[Request[C]]:
        """The requests to send now; each counts as in flight from ``now``."""
        if self.done:
            return []
        requests = []
        k, alpha = self.config.k, self.config.alpha
        for number, path in enumerate(self._paths):
            path.drop_claimed(self._queries)
            while path.in_flight < alpha and path.budget > 0 and path.has_useful_candidate(k):
                candidate = path.take_nearest()
                node_id = candidate.contact.node_id
                self._queries[node_id] = _Query(candidate, path, now + self.config.request_timeout)
                path.in_flight += 1
                path.budget -= 1
                requests.append(Request(candidate.contact, self.kind, self.target, number))
                path.drop_claimed(self._queries)
        return requests

    # -- input -------------------------------------------------------------------------------

    def reply_received(
        self, contact: C, contacts: Sequence[C], now: float, value: V | None = None
    ) -> list[Event[C, V]]:
        """``contact`` answered with ``contacts`` (hearsay: at most ``k`` are taken) and, for
        FIND_VALUE, perhaps a value the caller has verified. Ignored once the lookup is done."""
        if self.done:
            return []
        query = self._settle(contact, _State.ANSWERED)
        candidate = query.candidate
        bisect.insort(query.path.answered, candidate.distance)
        found = Found(contact, candidate.depth)
        bisect.insort(self._found, (candidate.distance, found), key=lambda entry: entry[0])
        self._verified.append(contact)
        if value is not None and self.kind is RequestKind.FIND_VALUE:
            self._values.append(ValueAnswer(contact, value))
        for heard in contacts[: self.config.k]:
            self._consider(heard, candidate.depth + 1, query.path)
        return self._maybe_finish(now)

    def request_failed(self, contact: C, now: float) -> list[Event[C, V]]:
        """The request to ``contact`` failed for good (refused, broken, given up, invalid reply).
        Ignored once the lookup is done."""
        if self.done:
            return []
        self._settle(contact, _State.FAILED)
        return self._maybe_finish(now)

    # -- timers ------------------------------------------------------------------------------

    def next_deadline(self) -> float:
        """When :meth:`handle_timers` next has work (``math.inf`` if never)."""
        if self.done:
            return math.inf
        return min(
            (q.deadline for q in self._queries.values() if q.state is _State.IN_FLIGHT),
            default=math.inf,
        )

    def handle_timers(self, now: float) -> list[Event[C, V]]:
        """Soft-time-out the requests whose deadline has passed."""
        if self.done:
            return []
        events: list[Event[C, V]] = []
        for query in self._queries.values():
            if query.state is _State.IN_FLIGHT and query.deadline <= now:
                query.state = _State.SLOW
                query.path.in_flight -= 1
                events.append(RequestTimedOut(query.candidate.contact))
        if events:
            events.extend(self._maybe_finish(now))
        return events

    # -- internals ---------------------------------------------------------------------------

    def _settle(self, contact: C, outcome: _State) -> _Query[C]:
        """Record how the request to ``contact`` ended (answered or failed)."""
        query = self._queries.get(contact.node_id)
        if query is None or query.state not in (_State.IN_FLIGHT, _State.SLOW):
            raise LocalProtocolError("no request to this contact is awaiting an answer")
        if query.state is _State.IN_FLIGHT:
            query.path.in_flight -= 1
        query.state = outcome
        return query

    def _consider(self, contact: C, depth: int, path: _Path[C]) -> None:
        node_id = contact.node_id
        if node_id == self._own_id or node_id in self._queries or len(node_id) != KEY_SIZE:
            return
        path.add(
            _Candidate(contact, distance(node_id, self.target), depth), self.config.max_candidates
        )

    def _maybe_finish(self, now: float) -> list[Event[C, V]]:
        quorum = (
            self.kind is RequestKind.FIND_VALUE and len(self._values) >= self.config.value_quorum
        )
        if not quorum:
            k = self.config.k
            for path in self._paths:
                path.drop_claimed(self._queries)
            if not all(path.finished(k) for path in self._paths):
                return []
        self._result = self._make_result(now)
        return [LookupFinished(self._result)]

    def _make_result(self, now: float) -> LookupResult[C, V]:
        answered = sum(q.state is _State.ANSWERED for q in self._queries.values())
        return LookupResult(
            target=self.target,
            closest=tuple(found for _, found in self._found[: self.config.k]),
            values=tuple(self._values),
            verified_contacts=tuple(self._verified),
            requests_sent=len(self._queries),
            failures=len(self._queries) - answered,
            elapsed=now - self.started,
        )


__all__ = [
    "Event",
    "Found",
    "HasNodeId",
    "Lookup",
    "LookupConfig",
    "LookupFinished",
    "LookupResult",
    "Request",
    "RequestKind",
    "RequestTimedOut",
    "ValueAnswer",
]
