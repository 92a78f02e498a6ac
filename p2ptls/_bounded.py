"""Tables that peers can add to: bounded per source and in total, with fair eviction.

Theory of operation
-------------------
Whenever input from the network can create an entry (a handshake slot, a gossiped member, a
certificate waiting for its batch, an owner, a DHT contact), the table that holds it is a
:class:`FairTable`. Every entry is charged to a *source*: whatever the caller can attribute it to
with certainty (a source address, the authenticated peer that sent the message). Two bounds hold
at all times:

* ``per_source``: a source that already holds its share evicts its *own* oldest entry to add one;
  it can never take room from anyone else by sending more;
* ``capacity``: when the table is full, the entry evicted is the oldest of the source holding the
  most entries (ties: the source whose oldest entry is oldest). A flood from a few sources
  therefore only ever displaces the flooders' entries, while a source holding a single entry
  keeps it as long as anyone holds more.

Entries carry the time they were added so that unverified entries can expire
(:meth:`FairTable.expire`). The table does no I/O and reads no clock: callers pass ``now``. It
returns what it evicts so the caller can release it (close a socket, forget a record).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

import attrs

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
S = TypeVar("S", bound=Hashable)


@attrs.frozen
class Evicted(Generic[K, V, S]):
    """An entry removed to make room, or because it expired."""

    key: K
    value: V
    source: S


@attrs.define
class _Entry(Generic[V, S]):
    value: V
    source: S
    added: float
    order: int
    """Insertion order across the table (breaks ties between equal ``added`` times)."""


class FairTable(Generic[K, V, S]):
    """A mapping bounded per source and in total; see the module's theory of operation."""

    def __init__(self, capacity: int, per_source: int) -> None:
        if capacity < 1 or per_source < 1:
            raise ValueError("capacity and per_source must be at least 1")
        self.capacity = capacity
        self.per_source = min(per_source, capacity)
        self._entries: dict[K, _Entry[V, S]] = {}
        self._by_source: dict[S, OrderedDict[K, None]] = {}
        self._inserted = 0
        # Candidates for fair eviction, lazily: (-count, oldest added, oldest order, source) as it
        # was when pushed; an item no longer matching its source's state is skipped when popped.
        # Finding the victim costs O(log sources), amortised, however many sources there are.
        self._victims: list[tuple[int, float, int, S]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[K]:
        return iter(self._entries)

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        return None if entry is None else entry.value

    def source_of(self, key: K) -> S | None:
        entry = self._entries.get(key)
        return None if entry is None else entry.source

    def count(self, source: S) -> int:
        """How many entries ``source`` holds."""
        keys = self._by_source.get(source)
        return 0 if keys is None else len(keys)

    def items(self) -> Iterator[tuple[K, V]]:
        for key, entry in self._entries.items():
            yield key, entry.value

    def put(self, key: K, value: V, source: S, now: float = 0.0) -> list[Evicted[K, V, S]]:
        """Add or replace ``key``, charged to ``source``; return what was evicted to make room.

        Replacing a key moves it to ``source`` and makes it the newest entry there.
        """
        evicted: list[Evicted[K, V, S]] = []
        if key in self._entries:
            self._remove(key)
        own = self._by_source.get(source)
        if own is not None and len(own) >= self.per_source:
            evicted.append(self._remove(next(iter(own))))
        if len(self._entries) >= self.capacity:
            evicted.append(self._remove(self._fairest_victim()))
        self._inserted += 1
        self._entries[key] = _Entry(value, source, now, self._inserted)
        self._by_source.setdefault(source, OrderedDict())[key] = None
        self._note_source(source)
        return evicted

    def would_evict_other(self, source: S) -> bool:
        """Whether adding one entry for ``source`` would evict another source's entry."""
        return (
            self.count(source) < self.per_source
            and len(self._entries) >= self.capacity
            and len(self._by_source) > (1 if source in self._by_source else 0)
        )

    def evict_one(self) -> Evicted[K, V, S] | None:
        """Remove and return the entry fair eviction picks (``None`` if the table is empty), to
        make room for something the table does not hold itself."""
        if not self._entries:
            return None
        return self._remove(self._fairest_victim())

    def pop(self, key: K) -> V | None:
        """Remove ``key`` (if present) and return its value."""
        if key not in self._entries:
            return None
        return self._remove(key).value

    def expire(self, now: float, max_age: float) -> list[Evicted[K, V, S]]:
        """Remove and return every entry added more than ``max_age`` before ``now``."""
        old = [key for key, entry in self._entries.items() if now - entry.added > max_age]
        return [self._remove(key) for key in old]

    def _weight(self, source: S) -> tuple[int, float, int, S]:
        keys = self._by_source[source]
        oldest = self._entries[next(iter(keys))]
        return -len(keys), oldest.added, oldest.order, source

    def _note_source(self, source: S) -> None:
        """Record the current weight of ``source`` (after its entries changed)."""
        if source in self._by_source:
            heapq.heappush(self._victims, self._weight(source))
        if len(self._victims) > 2 * len(self._by_source) + 64:  # drop the stale items
            self._victims = [self._weight(s) for s in self._by_source]
            heapq.heapify(self._victims)

    def _fairest_victim(self) -> K:
        # The largest source loses its oldest entry; among equals, the one whose oldest is oldest.
        while True:
            item = heapq.heappop(self._victims)
            source = item[3]
            if source in self._by_source and self._weight(source) == item:
                return next(iter(self._by_source[source]))

    def _remove(self, key: K) -> Evicted[K, V, S]:
        entry = self._entries.pop(key)
        keys = self._by_source[entry.source]
        del keys[key]
        if not keys:
            del self._by_source[entry.source]
        else:
            self._note_source(entry.source)
        return Evicted(key, entry.value, entry.source)

    def __repr__(self) -> str:
        return (
            f"<FairTable {len(self._entries)}/{self.capacity} entries, "
            f"{len(self._by_source)} sources, {self.per_source} per source>"
        )
