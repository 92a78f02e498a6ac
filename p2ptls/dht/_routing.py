"""The Kademlia routing table: k-buckets of proved contacts, sans-IO.

Theory of operation
-------------------
The table knows other nodes by their distance from our own id. Bucket ``i`` holds the contacts
whose id shares exactly ``i`` leading bits with ours; the last bucket holds every contact that
shares at least as many bits as its index. The table starts with one bucket (the whole key
space) and only the last bucket, the one holding our own id, **splits** when a contact arrives
for it while it is full (up to 256 buckets). We do not use the relaxed rule of the Kademlia paper
(splitting other buckets that fall among the k closest): every bucket but the last holds at most
k contacts, so the table's size is at most ``k * 256`` plus the replacement caches, and the
contacts nearest our own id are kept anyway because the buckets near it split.

**Verified and unverified.** A contact enters a bucket only when a handshake proved its id at its
address: the caller reports that with :meth:`RoutingTable.verified` (a handshake or an RPC with
it succeeded). A contact another node told us about (hearsay, :meth:`RoutingTable.seen_unverified`)
is a *candidate*: it waits in the bucket's small replacement cache, may serve as a lookup
candidate (``closest(..., verified_only=False)``), never displaces a verified contact and never
counts toward the address caps. The table's own answer to other nodes, ``closest(...)`` with the
default ``verified_only=True``, contains verified contacts only. A contact's address changes only
on a verified sighting (hearsay never moves a contact); a move into a subnet already at its cap
drops the contact.

**Ordering and eviction.** Each bucket is ordered least recently seen first. When a verified
contact arrives for a full bucket that cannot split, the least recently seen entry is **pinged
first** (Kademlia's rule, which keeps long-lived nodes): the table returns
:class:`PingNeeded` and waits for :meth:`RoutingTable.ping_answered` (the old entry stays and
moves to the tail; the newcomer waits in the replacement cache) or :meth:`RoutingTable.ping_failed`
(the old entry goes and the newcomer takes its place). At most one eviction ping is pending per
bucket and ``max_pending_pings`` in the table; a newcomer that finds no room waits in the
replacement cache. A ping the caller never reports is failed after ``ping_timeout``. An entry
whose RPCs fail ``max_failures`` times in a row is dropped (:meth:`RoutingTable.failed`); a
candidate that fails is forgotten at once (a newcomer waiting on an eviction ping too). When a
slot frees, the most recently seen verified candidate takes it; if there is none, the table asks
for a ping of the freshest unverified one (:class:`PingDue`), whose answer makes it verified.

**Timers.** An entry not seen for ``stale_after`` seconds is due a ping (:class:`PingDue`; asked
again every ``stale_after`` while it stays silent). A bucket no lookup touched for
``refresh_interval`` seconds (the caller reports lookups with :meth:`RoutingTable.lookup_started`)
is due a refresh: :class:`RefreshDue` carries a random key in the bucket's range, to look up.

**Trust boundaries.** At most ``max_per_subnet_per_bucket`` verified contacts in one bucket, and
``max_per_subnet_in_table`` in the table, come from one IPv4 /24 or IPv6 /48 (the S/Kademlia,
libp2p and BEP 42 defence against one operator filling a bucket: an eclipse attempt). Addresses
in ``exempt_networks`` (loopback by default) are not counted, so a test network on one machine
works; a LAN deployment adds its private ranges. A host name (not an address) counts as a subnet
of its own. Hearsay is bounded per source: one replying
node places at most ``hearsay_per_source`` candidates in a bucket's replacement cache, and a full
cache evicts the oldest candidate of its most represented source, so no single node fills it.

**Persistence.** :meth:`RoutingTable.snapshot` lists the verified contacts with their last-seen
time; :meth:`RoutingTable.restore` takes such a list back as *unverified* candidates (a restarted
node re-proves every contact) and asks for a ping of each.

The caller passes ``now`` into every call (any clock that never goes back, or a simulator's
virtual one); the only randomness (the keys of refresh lookups) is injected. Every call costs
O(k) per bucket at most: ``closest`` walks outward from the target's bucket and sorts only the
buckets it needs, and the timers stop at each bucket's first entry seen recently.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Callable, Iterable, Iterator

import attrs

from .._errors import LocalProtocolError
from ._ids import KEY_BITS, KEY_SIZE, Contact, common_prefix_length, distance
from ._routing_types import (
    PingDue,
    PingNeeded,
    RefreshDue,
    RoutingConfig,
    RoutingEvent,
    RoutingStats,
    SavedContact,
)
from ._sources import NetworkPrefix, network_prefix

_SubnetKey = NetworkPrefix


@attrs.define(weakref_slot=False)
class _Entry:
    contact: Contact
    last_seen: float
    source: bytes | None = None
    """Who told us (hearsay); ``None`` for a verified sighting or a restored contact."""
    verified: bool = True
    failures: int = 0
    probed: float = -math.inf
    """When we last asked for a ping of this entry as stale."""
    subnet: _SubnetKey | None = None


@attrs.define(weakref_slot=False)
class _Eviction:
    old_id: bytes
    candidate: _Entry
    started: float


@attrs.define(weakref_slot=False)
class _Bucket:
    entries: dict[bytes, _Entry] = attrs.Factory(dict)
    """Verified contacts, least recently seen first (insertion order)."""
    candidates: dict[bytes, _Entry] = attrs.Factory(dict)
    """The replacement cache, in order of arrival."""
    last_lookup: float = 0.0
    eviction: _Eviction | None = None


class RoutingTable:
    """The k-bucket table of one node (see the module docstring).

    Every call that can complete events returns them as ``list[RoutingEvent]``.
    """

    __slots__ = ("_buckets", "_config", "_own_id", "_pending", "_randomness", "_subnet_counts")

    def __init__(
        self,
        own_id: bytes,
        config: RoutingConfig | None = None,
        *,
        now: float = 0.0,
        randomness: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if len(own_id) != KEY_SIZE:
            raise LocalProtocolError("a node id is 32 bytes")
        self._own_id = bytes(own_id)
        self._config = config if config is not None else RoutingConfig()
        self._randomness = randomness
        self._buckets: list[_Bucket] = [_Bucket(last_lookup=now)]
        self._subnet_counts: dict[_SubnetKey, int] = {}
        self._pending = 0

    @property
    def own_id(self) -> bytes:
        """Our node id."""
        return self._own_id

    # ---- queries -----------------------------------------------------------------------------

    def __len__(self) -> int:
        """The number of verified contacts."""
        return sum(len(bucket.entries) for bucket in self._buckets)

    def __iter__(self) -> Iterator[Contact]:
        """The verified contacts, bucket by bucket, least recently seen first."""
        for bucket in self._buckets:
            for entry in bucket.entries.values():
                yield entry.contact

    def __contains__(self, node_id: object) -> bool:
        """Whether ``node_id`` is a verified contact."""
        if not isinstance(node_id, bytes) or len(node_id) != KEY_SIZE:
            return False
        return node_id in self._bucket_for(node_id).entries

    def closest(self, target: bytes, count: int, *, verified_only: bool = True) -> list[Contact]:
        """The ``count`` contacts nearest ``target``, nearest first.

        Only verified contacts unless ``verified_only`` is false (then the replacement caches'
        candidates too: lookup candidates, never an answer to another node).
        """
        index = self._index_of(target)
        # Bucket ``index`` is nearer ``target`` than any other; the buckets beyond it come next
        # (all at one distance bit from each other, so they are sorted together); then the
        # buckets before it, each strictly farther than the one after it.
        found = self._sorted(target, self._buckets[index : index + 1], verified_only)
        if len(found) < count:
            found += self._sorted(target, self._buckets[index + 1 :], verified_only)
        for bucket in reversed(self._buckets[:index]):
            if len(found) >= count:
                break
            found += self._sorted(target, (bucket,), verified_only)
        return found[:count]

    @staticmethod
    def _sorted(target: bytes, buckets: Iterable[_Bucket], verified_only: bool) -> list[Contact]:
        contacts: list[Contact] = []
        for bucket in buckets:
            contacts.extend(entry.contact for entry in bucket.entries.values())
            if not verified_only:
                contacts.extend(entry.contact for entry in bucket.candidates.values())
        contacts.sort(key=lambda contact: distance(contact.node_id, target))
        return contacts

    @property
    def stats(self) -> RoutingStats:
        """Bucket count, sizes and totals."""
        sizes = tuple(len(bucket.entries) for bucket in self._buckets)
        return RoutingStats(
            buckets=len(self._buckets),
            verified=sum(sizes),
            candidates=sum(len(bucket.candidates) for bucket in self._buckets),
            pending_pings=self._pending,
            bucket_sizes=sizes,
        )

    def snapshot(self) -> list[SavedContact]:
        """The verified contacts and when each was last seen (for persistence)."""
        return [
            SavedContact(entry.contact, entry.last_seen)
            for bucket in self._buckets
            for entry in bucket.entries.values()
        ]

    # ---- sightings ---------------------------------------------------------------------------

    def verified(self, contact: Contact, now: float) -> list[RoutingEvent]:
        """A handshake or RPC with ``contact`` at its address succeeded."""
        node_id = contact.node_id
        if node_id == self._own_id:
            return []
        bucket = self._bucket_for(node_id)
        if bucket.eviction is not None and bucket.eviction.old_id == node_id:
            return self._keep_old(bucket, contact, now)
        if bucket.eviction is not None and bucket.eviction.candidate.contact.node_id == node_id:
            bucket.eviction.candidate.contact = contact
            bucket.eviction.candidate.last_seen = now
            return []
        entry = bucket.entries.get(node_id)
        if entry is not None:
            return [] if self._refresh(bucket, entry, contact, now) else self._fill(bucket, now)
        bucket.candidates.pop(node_id, None)
        return self._admit(_Entry(contact, now, subnet=self._subnet_of(contact.host)), now)

    def seen_unverified(self, contact: Contact, now: float, *, source: bytes | None) -> None:
        """Another node (``source``, its id) told us of ``contact``: keep it as a candidate if
        its bucket's replacement cache has room for it (see the module docstring's bounds)."""
        node_id = contact.node_id
        if node_id in (self._own_id, source):
            return
        bucket = self._bucket_for(node_id)
        if node_id in bucket.entries or node_id in bucket.candidates:
            return
        if bucket.eviction is not None and bucket.eviction.candidate.contact.node_id == node_id:
            return
        limit = self._config.hearsay_per_source
        if source is not None and self._from_source(bucket, source) >= limit:
            return
        self._add_candidate(bucket, _Entry(contact, now, source=source, verified=False))

    def restore(self, saved: Iterable[SavedContact], now: float) -> list[RoutingEvent]:
        """Take back a :meth:`snapshot` (a restarted node): every contact comes back unverified,
        a candidate where a replacement cache has room, and is due a ping that re-proves it."""
        events: list[RoutingEvent] = []
        limit = self._config.bucket_size * KEY_BITS
        ordered = sorted(saved, key=lambda item: item.last_seen, reverse=True)
        for item in ordered[:limit]:
            node_id = item.contact.node_id
            if node_id == self._own_id or node_id in self:
                continue
            bucket = self._bucket_for(node_id)
            if node_id not in bucket.candidates:
                seen = min(item.last_seen, now)
                self._add_candidate(bucket, _Entry(item.contact, seen, verified=False))
            events.append(PingDue(item.contact))
        return events

    def lookup_started(self, target: bytes, now: float) -> None:
        """A lookup of ``target`` began: its bucket needs no refresh for a while."""
        self._buckets[self._index_of(target)].last_lookup = now

    # ---- failures and pings ------------------------------------------------------------------

    def ping_answered(self, contact: Contact, now: float) -> list[RoutingEvent]:
        """A ping the table asked for (or any ping) was answered: a verified sighting."""
        return self.verified(contact, now)

    def ping_failed(self, contact: Contact, now: float) -> list[RoutingEvent]:
        """A ping of ``contact`` failed. An eviction ping's failure evicts at once."""
        node_id = contact.node_id
        bucket = self._bucket_for(node_id)
        eviction = bucket.eviction
        if eviction is not None and eviction.old_id == node_id:
            return self._evict(bucket, now)
        return self.failed(contact, now)

    def failed(self, contact: Contact, now: float) -> list[RoutingEvent]:
        """An RPC to ``contact`` failed (timed out, or the handshake failed)."""
        node_id = contact.node_id
        bucket = self._bucket_for(node_id)
        if self._drop_waiting(bucket, node_id):
            return []
        entry = bucket.entries.get(node_id)
        if entry is None:
            return []
        eviction = bucket.eviction
        if eviction is not None and eviction.old_id == node_id:
            return self._evict(bucket, now)
        entry.failures += 1
        if entry.failures < self._config.max_failures:
            return []
        return self.remove(node_id, now)

    def remove(self, node_id: bytes, now: float) -> list[RoutingEvent]:
        """Forget ``node_id`` (verified or not); a freed slot goes to a candidate."""
        bucket = self._bucket_for(node_id)
        self._drop_waiting(bucket, node_id)
        eviction = bucket.eviction
        if eviction is not None and eviction.old_id == node_id:
            return self._evict(bucket, now)
        entry = bucket.entries.pop(node_id, None)
        if entry is None:
            return []
        self._uncount(entry)
        return self._fill(bucket, now)

    # ---- timers ------------------------------------------------------------------------------

    def next_deadline(self) -> float:
        """When :meth:`handle_timers` next has something to do (``math.inf``: never)."""
        config = self._config
        deadline = math.inf
        for bucket in self._buckets:
            deadline = min(deadline, bucket.last_lookup + config.refresh_interval)
            if bucket.eviction is not None:
                deadline = min(deadline, bucket.eviction.started + config.ping_timeout)
            for entry in bucket.entries.values():
                if entry.last_seen + config.stale_after >= deadline:
                    break  # the rest were seen later still (the bucket is ordered)
                deadline = min(deadline, max(entry.last_seen, entry.probed) + config.stale_after)
        return deadline

    def handle_timers(self, now: float) -> list[RoutingEvent]:
        """Fail overdue eviction pings; ask for pings of stale entries and bucket refreshes."""
        config = self._config
        events: list[RoutingEvent] = []
        for bucket in list(self._buckets):
            eviction = bucket.eviction
            if eviction is not None and now >= eviction.started + config.ping_timeout:
                events += self._evict(bucket, now)
        for index, bucket in enumerate(self._buckets):
            for entry in bucket.entries.values():
                if now < entry.last_seen + config.stale_after:
                    break  # the rest were seen later still
                if now >= entry.probed + config.stale_after:
                    entry.probed = now
                    events.append(PingDue(entry.contact))
            if now >= bucket.last_lookup + config.refresh_interval:
                bucket.last_lookup = now
                events.append(RefreshDue(self._random_key_in(index)))
        return events

    # ---- internals ---------------------------------------------------------------------------

    def _index_of(self, node_id: bytes) -> int:
        return min(common_prefix_length(self._own_id, node_id), len(self._buckets) - 1)

    def _bucket_for(self, node_id: bytes) -> _Bucket:
        return self._buckets[self._index_of(node_id)]

    def _random_key_in(self, index: int) -> bytes:
        """A random key whose bucket is ``index``: our id's first ``index`` bits, then (except in
        the last bucket) the opposite of our next bit, then random bits."""
        own = int.from_bytes(self._own_id, "big")
        random_bits = int.from_bytes(self._randomness(KEY_SIZE), "big")
        free = KEY_BITS - index
        key = (own >> free << free) | (random_bits & ((1 << free) - 1))
        if index < len(self._buckets) - 1:
            flip = 1 << (free - 1)
            key = (key & ~flip) | (~own & flip)
        return key.to_bytes(KEY_SIZE, "big")

    def _subnet_of(self, host: str) -> _SubnetKey | None:
        """The key the address caps count ``host`` under; ``None`` if it is exempt."""
        config = self._config
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address is not None and any(address in net for net in config.exempt_networks):
            return None
        return network_prefix(host, config.ipv4_prefix, config.ipv6_prefix)

    def _within_caps(self, bucket: _Bucket, subnet: _SubnetKey | None) -> bool:
        if subnet is None:
            return True
        config = self._config
        if self._subnet_counts.get(subnet, 0) >= config.max_per_subnet_in_table:
            return False
        in_bucket = sum(1 for entry in bucket.entries.values() if entry.subnet == subnet)
        return in_bucket < config.max_per_subnet_per_bucket

    def _count(self, entry: _Entry) -> None:
        if entry.subnet is not None:
            self._subnet_counts[entry.subnet] = self._subnet_counts.get(entry.subnet, 0) + 1

    def _uncount(self, entry: _Entry) -> None:
        if entry.subnet is not None:
            left = self._subnet_counts[entry.subnet] - 1
            if left:
                self._subnet_counts[entry.subnet] = left
            else:
                del self._subnet_counts[entry.subnet]

    def _refresh(self, bucket: _Bucket, entry: _Entry, contact: Contact, now: float) -> bool:
        """A verified sighting of an entry: to the tail, its address updated if the caps allow
        the new one (else the entry goes: false)."""
        del bucket.entries[contact.node_id]
        if contact.address != entry.contact.address:
            self._uncount(entry)
            entry.subnet = self._subnet_of(contact.host)
            if not self._within_caps(bucket, entry.subnet):
                return False
            self._count(entry)
        entry.contact = contact
        entry.last_seen = now
        entry.failures = 0
        self._place(bucket, entry)
        return True

    def _admit(self, entry: _Entry, now: float) -> list[RoutingEvent]:
        """Place a newly verified contact: into room, a split, an eviction ping, or the
        replacement cache."""
        config = self._config
        node_id = entry.contact.node_id
        bucket = self._bucket_for(node_id)
        while len(bucket.entries) >= config.bucket_size and self._can_split(bucket):
            self._split(now)
            bucket = self._bucket_for(node_id)
        if not self._within_caps(bucket, entry.subnet):
            return []
        if len(bucket.entries) < config.bucket_size:
            self._place(bucket, entry)
            self._count(entry)
            return []
        if bucket.eviction is not None or self._pending >= config.max_pending_pings:
            self._add_candidate(bucket, entry)
            return []
        old = next(iter(bucket.entries.values()))
        bucket.eviction = _Eviction(old.contact.node_id, entry, now)
        self._pending += 1
        return [PingNeeded(old.contact, entry.contact)]

    @staticmethod
    def _place(bucket: _Bucket, entry: _Entry) -> None:
        """Into the bucket's entries, which stay ordered by last sighting (a promoted candidate
        may have been seen before the tail)."""
        entries = bucket.entries
        if entries and entry.last_seen < next(reversed(entries.values())).last_seen:
            ordered = sorted([*entries.values(), entry], key=lambda each: each.last_seen)
            entries.clear()
            entries.update((each.contact.node_id, each) for each in ordered)
        else:
            entries[entry.contact.node_id] = entry

    def _can_split(self, bucket: _Bucket) -> bool:
        return bucket is self._buckets[-1] and len(self._buckets) < KEY_BITS

    def _split(self, now: float) -> None:
        """Split the last bucket: its contacts sharing one more bit with us move to a new one."""
        old = self._buckets[-1]
        assert old.eviction is None  # only a bucket that cannot split pings to evict
        depth = len(self._buckets)
        new = _Bucket(last_lookup=now)
        self._buckets.append(new)
        for source, target in ((old.entries, new.entries), (old.candidates, new.candidates)):
            for node_id in [n for n in source if common_prefix_length(self._own_id, n) >= depth]:
                target[node_id] = source.pop(node_id)

    def _keep_old(self, bucket: _Bucket, contact: Contact, now: float) -> list[RoutingEvent]:
        """The pinged entry answered: it stays; the newcomer waits in the replacement cache."""
        eviction = bucket.eviction
        assert eviction is not None
        bucket.eviction = None
        self._pending -= 1
        self._refresh(bucket, bucket.entries[eviction.old_id], contact, now)
        self._add_candidate(bucket, eviction.candidate)
        return self._fill(bucket, now)

    def _evict(self, bucket: _Bucket, now: float) -> list[RoutingEvent]:
        """The pinged entry failed: it goes; the newcomer takes its place (caps permitting)."""
        eviction = bucket.eviction
        assert eviction is not None
        bucket.eviction = None
        self._pending -= 1
        self._uncount(bucket.entries.pop(eviction.old_id))
        candidate = eviction.candidate
        if self._within_caps(bucket, candidate.subnet):
            self._place(bucket, candidate)
            self._count(candidate)
            return []
        return self._fill(bucket, now)

    def _fill(self, bucket: _Bucket, now: float) -> list[RoutingEvent]:
        """Give free slots to the freshest verified candidates the caps allow; if a slot stays
        free, ask for a ping of the freshest unverified candidate."""
        for node_id, candidate in reversed(list(bucket.candidates.items())):
            if len(bucket.entries) >= self._config.bucket_size:
                return []
            if candidate.verified and self._within_caps(bucket, candidate.subnet):
                del bucket.candidates[node_id]
                candidate.failures = 0
                self._place(bucket, candidate)
                self._count(candidate)
        if len(bucket.entries) >= self._config.bucket_size:
            return []
        for candidate in reversed(bucket.candidates.values()):
            if not candidate.verified:
                return [PingDue(candidate.contact)]
        return []

    def _drop_waiting(self, bucket: _Bucket, node_id: bytes) -> bool:
        """Forget ``node_id`` as a candidate: in the replacement cache, or waiting on an eviction
        ping (the ping then decides nothing). Whether it was one."""
        if bucket.candidates.pop(node_id, None) is not None:
            return True
        eviction = bucket.eviction
        if eviction is None or eviction.candidate.contact.node_id != node_id:
            return False
        bucket.eviction = None
        self._pending -= 1
        return True

    def _from_source(self, bucket: _Bucket, source: bytes) -> int:
        return sum(1 for entry in bucket.candidates.values() if entry.source == source)

    def _add_candidate(self, bucket: _Bucket, entry: _Entry) -> None:
        """Into the replacement cache; when it is full, an unverified newcomer may displace only
        an unverified candidate (the oldest of the most represented source) and a verified one
        the oldest unverified, else the oldest verified."""
        node_id = entry.contact.node_id
        bucket.candidates.pop(node_id, None)
        if len(bucket.candidates) >= self._config.replacement_cache_size:
            victim = self._victim(bucket, entry.verified)
            if victim is None:
                return
            del bucket.candidates[victim]
        bucket.candidates[node_id] = entry

    def _victim(self, bucket: _Bucket, for_verified: bool) -> bytes | None:
        unverified = [(n, e) for n, e in bucket.candidates.items() if not e.verified]
        if not unverified:
            return next(iter(bucket.candidates)) if for_verified else None
        if for_verified:
            return unverified[0][0]
        per_source: dict[bytes | None, int] = {}
        for _, candidate in unverified:
            per_source[candidate.source] = per_source.get(candidate.source, 0) + 1
        crowded = max(per_source.values())
        return next(n for n, e in unverified if per_source[e.source] == crowded)


__all__ = [
    "PingDue",
    "PingNeeded",
    "RefreshDue",
    "RoutingConfig",
    "RoutingEvent",
    "RoutingStats",
    "RoutingTable",
    "SavedContact",
]
