"""What the DHT node's operations decide, sans-IO: which values count, where to write back, when
to republish and replicate.

Theory of operation
-------------------
The trio node (:mod:`p2ptls.dht.node`) runs every user operation as an iterative
:class:`~p2ptls.dht._lookup.Lookup` followed, for writes, by STOREs in parallel. What it decides
along the way lives here, without sockets or clocks:

* **which values count** (:func:`usable_value`): a record a FIND_VALUE reply carries has been
  parsed and verified (signature, and the key it derives matches the key asked for); it is used
  only if it is of the kind asked for and current by the node's clock (SPEC-dht.md §6 rules 1-3:
  not issued in the future, no longer than the lifetime limit, not expired). A stale or foreign
  value is an answer without a value, never a fact.
* **which value wins** (:func:`newest`): of the values a quorum read collected, the newest
  (SPEC-dht.md §5.4), so every honest reader picks the same one.
* **where to write back** (:func:`write_back_targets`): after a quorum read, the nodes among the
  nearest that answered without the newest record (none, or an older one) are sent it, exact
  bytes (expiry unchanged), as SPEC-dht.md §7 says.
* **when to maintain** (:class:`Maintenance`): the writer's records are republished (re-signed,
  fresh times) every ``republish_interval`` (22 h), and every ``replication_check`` the node asks
  its store which held records are due to be offered to the current nearest nodes
  (:meth:`~p2ptls.dht._store.RecordStore.records_to_replicate`: each record once an hour).
  Times are Unix seconds, as record times are.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from typing import TypeAlias, TypeVar

import attrs

from ._errors import DhtError
from ._lookup import HasNodeId, LookupResult
from ._records import Record, RecordLimits, newer
from ._store import Refusal, timing_refusal


class NoContacts(DhtError):
    """The routing table holds no contact to start a lookup from (bootstrap first)."""


@attrs.frozen
class PutResult:
    """How a STORE to the nearest nodes went."""

    key: bytes = attrs.field(repr=False)
    """The key the record is stored under."""
    accepted: int
    """Nodes that now hold the record."""
    refusals: tuple[Refusal, ...] = ()
    """Why the others that answered refused it."""
    failed: int = 0
    """Nodes that did not answer the STORE."""


class StoreFailed(DhtError):
    """No node accepted the record (:attr:`result` says what happened instead)."""

    def __init__(self, result: PutResult) -> None:
        super().__init__(
            f"no node accepted the record ({len(result.refusals)} refused, {result.failed} failed)"
        )
        self.result = result


def usable_value(
    record: Record, kind: type[Record] | tuple[type[Record], ...], now: float, limits: RecordLimits
) -> bool:
    """Whether a verified ``record`` from a FIND_VALUE reply is of ``kind`` and current at
    ``now`` (Unix time)."""
    return isinstance(record, kind) and timing_refusal(record, now, limits) is None


def newest(records: Iterable[Record]) -> Record | None:
    """The newest of ``records`` (all under one key), ``None`` if there is none."""
    best: Record | None = None
    for record in records:
        if best is None or newer(record, best):
            best = record
    return best


C = TypeVar("C", bound=HasNodeId)


def write_back_targets(result: LookupResult[C, Record], best: Record) -> list[C]:
    """The nearest nodes that answered ``result``'s lookup without ``best``: with no value or
    an older one (a holder of a newer record than ``best`` is left alone)."""
    returned = {
        answer.contact.node_id: answer.value for answer in result.values if answer.value is not None
    }
    targets = []
    for found in result.closest:
        held = returned.get(found.contact.node_id)
        if held is None or (held.encoding != best.encoding and newer(best, held)):
            targets.append(found.contact)
    return targets


@attrs.frozen
class RepublishDue:
    """The writer's record under ``key`` is due to be re-signed and stored again."""

    key: bytes = attrs.field(repr=False)


@attrs.frozen
class ReplicationDue:
    """Time to ask the store for the held records to offer to the current nearest nodes."""


MaintenanceEvent: TypeAlias = RepublishDue | ReplicationDue


class Maintenance:
    """The node's republishing and replication timers (Unix time); see the theory of operation.

    Only the local writer adds keys (:meth:`published`), so the table needs no bound of its own
    beyond what the writer publishes.
    """

    def __init__(self, republish_interval: float, replication_check: float, now: float) -> None:
        self.republish_interval = republish_interval
        self.replication_check = replication_check
        self._due: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []  # lazily pruned (due, key)
        self._next_replication = now + replication_check

    def __contains__(self, key: object) -> bool:
        return key in self._due

    def published(self, key: bytes, now: float) -> None:
        """The writer just stored its record under ``key``: republish it one interval later."""
        due = now + self.republish_interval
        self._due[key] = due
        heapq.heappush(self._heap, (due, key))

    def forget(self, key: bytes) -> None:
        """Stop republishing ``key``."""
        self._due.pop(key, None)

    def next_deadline(self) -> float:
        """When :meth:`handle_timers` next has work."""
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        republish = self._heap[0][0] if self._heap else math.inf
        return min(republish, self._next_replication)

    def handle_timers(self, now: float) -> list[MaintenanceEvent]:
        """The republications due at ``now`` (each rescheduled one interval on: the node re-stores
        it and calls :meth:`published` again), then a replication check if one is due."""
        events: list[MaintenanceEvent] = []
        while self.next_deadline() <= now and self._heap and self._heap[0][0] <= now:
            _due, key = heapq.heappop(self._heap)
            self._due[key] = now + self.republish_interval
            heapq.heappush(self._heap, (self._due[key], key))
            events.append(RepublishDue(key))
        if self._next_replication <= now:
            self._next_replication = now + self.replication_check
            events.append(ReplicationDue())
        return events


__all__ = [
    "Maintenance",
    "MaintenanceEvent",
    "NoContacts",
    "PutResult",
    "ReplicationDue",
    "RepublishDue",
    "StoreFailed",
    "newest",
    "usable_value",
    "write_back_targets",
]
