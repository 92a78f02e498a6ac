"""The record store: the best record per key, bounded per source and in total (SPEC-dht.md §6).

Theory of operation
-------------------
A :class:`RecordStore` holds, per key, the one record it considers current. Records reach it
already parsed and verified (:func:`p2ptls.dht._records.parse_record_untrusted`); the store adds
the rules that depend on the holder: its clock (a record issued too far in the future, living
longer than ``max_lifetime`` or already expired is refused), what it already holds (a record that
is not :func:`~p2ptls.dht._records.newer` is refused as stale; a mutable value whose
compare-and-swap sequence does not match the held one is refused) and its quotas.

Every record is charged to a *source*: what the node can attribute the STORE to with certainty
(SPEC-dht.md charges the sender's network prefix). Counts are bounded by a
:class:`p2ptls._bounded.FairTable` (per source, and in total with fair eviction: a flood only
ever displaces the flooders' own records); bytes are bounded too: a source over its byte quota
is refused, and when the total would pass ``max_bytes`` fair eviction makes room. The store never
extends an expiry: a record leaves at its own ``expires_at`` (:meth:`handle_timers`).
:meth:`records_to_replicate` hands the node, once per ``replicate_interval`` per record, what to
offer the current closest nodes. No I/O, no clock: callers pass ``now``.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections.abc import Hashable

import attrs

from .._bounded import FairTable
from ._records import MutableValue, Record, RecordLimits, newer


class Refusal(enum.IntEnum):
    """Why a record was not stored; the byte a REFUSED reply carries (SPEC-dht.md §4.9)."""

    STALE = 1
    """Not newer than the held record (lower sequence, or equal and not greater)."""
    CAS_MISMATCH = 2
    """Its compare-and-swap sequence is not the held record's sequence."""
    EXPIRED = 3
    """Already expired by the holder's clock."""
    FUTURE = 4
    """Issued more than ``max_clock_skew`` in the future."""
    LIFETIME = 5
    """``expires_at - issued_at`` exceeds ``max_lifetime``."""
    QUOTA = 6
    """The source is over its byte quota."""
    NOT_RESPONSIBLE = 7
    """The node is not among the k nodes nearest the key it knows (decided by the node)."""


@attrs.frozen
class StoreConfig:
    """The store's limits."""

    limits: RecordLimits = attrs.field(factory=RecordLimits)
    max_records: int = 65536
    max_bytes: int = 64 * 2**20
    per_source_records: int = 1024
    per_source_bytes: int = 2 * 2**20
    replicate_interval: float = 3600.0
    """Holders offer each record to the key's closest nodes once an hour."""
    republish_interval: float = 22 * 3600.0
    """Writers re-sign and re-store their records every 22 h (the node's job, not the store's)."""

    def __attrs_post_init__(self) -> None:
        bounds = (self.max_records, self.max_bytes, self.per_source_records, self.per_source_bytes)
        if min(bounds) < 1:
            raise ValueError("store limits must be at least 1")


@attrs.frozen
class StoreResult:
    """What :meth:`RecordStore.put_untrusted` decided."""

    refusal: Refusal | None
    """``None`` when the record is now held."""
    evicted: tuple[bytes, ...] = ()
    """Keys of other records evicted to make room."""

    @property
    def stored(self) -> bool:
        return self.refusal is None


@attrs.frozen
class RecordExpired:
    """A record reached its expiry and was forgotten."""

    key: bytes


def timing_refusal(record: Record, now: float, limits: RecordLimits) -> Refusal | None:
    """Why a holder whose clock reads ``now`` refuses ``record`` by its times alone (SPEC-dht.md
    §6 rules 1-3), or ``None``."""
    if record.issued_at > now + limits.max_clock_skew:
        return Refusal.FUTURE
    if record.expires_at - record.issued_at > limits.max_lifetime:
        return Refusal.LIFETIME
    if record.expires_at <= now:
        return Refusal.EXPIRED
    return None


@attrs.define
class _Held:
    record: Record
    replicate_at: float


class RecordStore:
    """The best record per key; see the module's theory of operation."""

    def __init__(self, config: StoreConfig | None = None) -> None:
        self.config = config = config or StoreConfig()
        self._table: FairTable[bytes, _Held, Hashable] = FairTable(
            config.max_records, config.per_source_records
        )
        self._bytes_by_source: dict[Hashable, int] = {}
        self._bytes = 0
        self._expiries: list[tuple[int, bytes]] = []  # lazily pruned (expires_at, key)

    def __len__(self) -> int:
        return len(self._table)

    @property
    def total_bytes(self) -> int:
        """Bytes of the encodings held."""
        return self._bytes

    def get(self, key: bytes, now: float) -> Record | None:
        """The current record under ``key``, unless it has expired."""
        held = self._table.get(key)
        if held is None or held.record.expires_at <= now:
            return None
        return held.record

    def check(self, record: Record, now: float) -> Refusal | None:
        """Whether :meth:`put_untrusted` would refuse ``record`` by time or order (not quotas)."""
        refusal = timing_refusal(record, now, self.config.limits)
        if refusal is not None:
            return refusal
        held = self.get(record.key, now)
        if held is None or held.encoding == record.encoding:
            return None
        if not newer(record, held):
            return Refusal.STALE
        cas = record.cas if isinstance(record, MutableValue) else None
        if cas is not None and cas != held.sequence:
            return Refusal.CAS_MISMATCH
        return None

    def put_untrusted(self, record: Record, source: Hashable, now: float) -> StoreResult:
        """Store ``record`` (parsed and verified) from ``source`` if it wins; say what happened."""
        refusal = self.check(record, now)
        if refusal is not None:
            return StoreResult(refusal)
        key = record.key
        current = self.get(key, now)
        if current is not None and current.encoding == record.encoding:
            return StoreResult(None)  # the same bytes again: nothing changes, no expiry moves
        size = len(record.encoding)
        previous = self._table.get(key)
        freed = 0 if previous is None else len(previous.record.encoding)
        same_source = previous is not None and self._table.source_of(key) == source
        used = self._bytes_by_source.get(source, 0) - (freed if same_source else 0)
        if used + size > self.config.per_source_bytes:
            return StoreResult(Refusal.QUOTA)
        if previous is not None:
            self._forget(key)
        evicted = []
        held = _Held(record, now + self.config.replicate_interval)
        for item in self._table.put(key, held, source, now):
            self._release(item.value.record, item.source)
            evicted.append(item.key)
        self._charge(source, size)
        while self._bytes > self.config.max_bytes:
            victim = self._table.evict_one()
            assert victim is not None  # the new record alone is within max_bytes
            self._release(victim.value.record, victim.source)
            evicted.append(victim.key)
        heapq.heappush(self._expiries, (record.expires_at, key))
        if len(self._expiries) > 2 * len(self._table) + 64:  # drop the replaced records' items
            self._expiries = [(held.record.expires_at, k) for k, held in self._table.items()]
            heapq.heapify(self._expiries)
        return StoreResult(None, tuple(evicted))

    def next_deadline(self) -> float:
        """When :meth:`handle_timers` next has a record to expire (``math.inf``: none)."""
        while self._expiries:
            expires_at, key = self._expiries[0]
            held = self._table.get(key)
            if held is not None and held.record.expires_at == expires_at:
                return float(expires_at)
            heapq.heappop(self._expiries)
        return math.inf

    def handle_timers(self, now: float) -> list[RecordExpired]:
        """Forget every record whose expiry has come."""
        events = []
        while self.next_deadline() <= now:
            _expires_at, key = heapq.heappop(self._expiries)
            self._forget(key)
            events.append(RecordExpired(key))
        return events

    def records_to_replicate(self, now: float) -> list[Record]:
        """Records due for replication (each once per ``replicate_interval``), in store order."""
        due = []
        for _key, held in self._table.items():
            if held.replicate_at <= now and held.record.expires_at > now:
                due.append(held)
                held.replicate_at = now + self.config.replicate_interval
        return [held.record for held in due]

    def _charge(self, source: Hashable, size: int) -> None:
        self._bytes += size
        self._bytes_by_source[source] = self._bytes_by_source.get(source, 0) + size

    def _release(self, record: Record, source: Hashable) -> None:
        size = len(record.encoding)
        self._bytes -= size
        remaining = self._bytes_by_source[source] - size
        if remaining:
            self._bytes_by_source[source] = remaining
        else:
            del self._bytes_by_source[source]

    def _forget(self, key: bytes) -> None:
        source = self._table.source_of(key)
        held = self._table.pop(key)
        if held is not None:
            self._release(held.record, source)

    def __repr__(self) -> str:
        return f"<RecordStore {len(self._table)} records, {self._bytes} bytes>"


__all__ = [
    "RecordExpired",
    "RecordStore",
    "Refusal",
    "StoreConfig",
    "StoreResult",
    "timing_refusal",
]
