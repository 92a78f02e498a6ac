"""The connection manager's decisions (sans-IO): which connection to a peer to keep, which to
evict, and when a failed peer may be dialled again.

Theory of operation
-------------------
A host keeps at most one live connection per remote peer. Two can appear at once: both peers dial
each other at the same moment (a simultaneous open), or a peer reconnects before the old
connection is noticed to be dead. Both ends must keep the *same* one without talking about it, so
the rule depends only on what both ends know: the connection initiated by the peer with the lower
peer id wins; between two initiated by the same peer, the newer wins (its initiator believes the
old one is gone). The loser is retired: it accepts no new streams and closes once its streams end.

The table holds at most ``max_connections``. When a new connection would exceed it, the least
recently used connection that no protocol protects is retired; if every other connection is
protected, the new one is refused. Protection is a set of tags per peer, so that two protocols
protecting one peer do not undo each other.

Failed dials back off per peer: the delay doubles from ``initial`` up to ``maximum``, with ±25 %
jitter so that peers restarting together do not dial in step. The table of failures is bounded
(least recently failed forgotten first): it only ever holds peers this host chose to dial.

Both are components (decisions), not protocol endpoints: a call returns its decision as a plain
value (:class:`Admission`, a retry time), never an event list (see ``ARCHITECTURE.md``).
"""

from __future__ import annotations

import collections
import random
from typing import Generic, TypeVar

import attrs

from .identity import PeerId

C = TypeVar("C")


@attrs.define
class _Entry(Generic[C]):
    connection: C
    initiator: PeerId
    order: int


@attrs.frozen
class Admission(Generic[C]):
    """What to do with a new connection."""

    keep: bool
    """Use the new connection (else close it: the existing one wins, or the table is full)."""
    retire: tuple[C, ...] = ()
    """Connections to retire: the one the new one replaces, or the least recently used."""
    current: C | None = None
    """The peer's connection after the decision."""


class ConnectionTable(Generic[C]):
    """Current connection per peer, with the limit, protection and least-recently-used order."""

    def __init__(self, local: PeerId, max_connections: int) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.local = local
        self.max_connections = max_connections
        self._entries: collections.OrderedDict[PeerId, _Entry[C]] = collections.OrderedDict()
        self._protected: dict[PeerId, set[str]] = {}
        self._order = 0

    def __len__(self) -> int:
        return len(self._entries)

    def current(self, peer: PeerId) -> C | None:
        entry = self._entries.get(peer)
        return None if entry is None else entry.connection

    def connections(self) -> tuple[C, ...]:
        return tuple(entry.connection for entry in self._entries.values())

    def touch(self, peer: PeerId) -> None:
        """``peer``'s connection was just used (least-recently-used order)."""
        if peer in self._entries:
            self._entries.move_to_end(peer)

    def add(self, peer: PeerId, connection: C, *, initiated_by_us: bool) -> Admission[C]:
        """Decide about a new connection to ``peer`` (its handshake just completed)."""
        self._order += 1
        initiator = self.local if initiated_by_us else peer
        new = _Entry(connection, initiator, self._order)
        existing = self._entries.get(peer)
        if existing is not None:
            if not _wins(new, existing):
                return Admission(keep=False, current=existing.connection)
            self._entries[peer] = new
            self._entries.move_to_end(peer)
            return Admission(keep=True, retire=(existing.connection,), current=connection)
        if len(self._entries) >= self.max_connections:
            victim = self._least_recently_used_unprotected()
            if victim is None:
                return Admission(keep=False)
            retired = self._entries.pop(victim).connection
            self._entries[peer] = new
            return Admission(keep=True, retire=(retired,), current=connection)
        self._entries[peer] = new
        return Admission(keep=True, current=connection)

    def remove(self, peer: PeerId, connection: C) -> bool:
        """Forget ``connection`` if it is ``peer``'s current one; whether it was."""
        entry = self._entries.get(peer)
        if entry is None or entry.connection is not connection:
            return False
        del self._entries[peer]
        return True

    def protect(self, peer: PeerId, tag: str) -> None:
        self._protected.setdefault(peer, set()).add(tag)

    def unprotect(self, peer: PeerId, tag: str) -> None:
        tags = self._protected.get(peer)
        if tags is not None:
            tags.discard(tag)
            if not tags:
                del self._protected[peer]

    def is_protected(self, peer: PeerId) -> bool:
        return peer in self._protected

    def _least_recently_used_unprotected(self) -> PeerId | None:
        for peer in self._entries:
            if peer not in self._protected:
                return peer
        return None


def _wins(new: _Entry[C], existing: _Entry[C]) -> bool:
    if new.initiator != existing.initiator:
        return new.initiator.digest < existing.initiator.digest
    return new.order > existing.order


class DialBackoff:
    """When each peer that failed a dial may be dialled again."""

    def __init__(
        self,
        initial: float,
        maximum: float,
        *,
        capacity: int = 4096,
        rng: random.Random | None = None,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.capacity = capacity
        self._rng = rng or random.Random()
        self._failures: collections.OrderedDict[PeerId, tuple[int, float]] = (
            collections.OrderedDict()
        )

    def failed(self, peer: PeerId, now: float) -> float:
        """Record a failed dial; the time from which ``peer`` may be dialled again."""
        count = self._failures.pop(peer, (0, 0.0))[0] + 1
        delay = min(self.maximum, self.initial * 2 ** (count - 1))
        retry_at: float = now + delay * self._rng.uniform(0.75, 1.25)
        self._failures[peer] = (count, retry_at)
        while len(self._failures) > self.capacity:
            self._failures.popitem(last=False)
        return retry_at

    def succeeded(self, peer: PeerId) -> None:
        self._failures.pop(peer, None)

    def retry_at(self, peer: PeerId, now: float) -> float | None:
        """When ``peer`` may be dialled again, or ``None`` if it may be now."""
        entry = self._failures.get(peer)
        if entry is None or entry[1] <= now:
            return None
        return entry[1]
