"""What a peer's request is charged to, and how fast one peer may ask: sans-IO accounting.

Theory of operation
-------------------
Peer ids cost a key generation each, address blocks cost more: so the DHT charges what a
requester can add (stored records, routing-table slots) to its **network prefix**, an IPv4 /24 or
an IPv6 /48 (SPEC-dht.md §6.2 and §8). :func:`network_prefix` computes that prefix once for the
store (:func:`store_source`, where loopback counts as the address itself so a test network on one
machine is not one source) and for the routing table's subnet caps.

How *often* a peer may ask is bounded by a token bucket per authenticated peer id
(:class:`RateLimiter`): ``rate`` requests per second, ``burst`` at once. The table of buckets is
bounded too: when it is full, the bucket used least recently goes (it has had the longest to fill
up again, so forgetting it gives its peer the least it did not already have). No clock: callers
pass ``now``.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Hashable

import attrs

NetworkPrefix = tuple[int, int | str]
"""``(4, the /24 as an integer)``, ``(6, the /48)``, or ``(0, a lower-cased host name)``."""


def network_prefix(host: str, ipv4_prefix: int = 24, ipv6_prefix: int = 48) -> NetworkPrefix:
    """The network ``host`` belongs to: its first ``ipv4_prefix`` / ``ipv6_prefix`` bits (an
    IPv4-mapped IPv6 address counts as IPv4); a host name is a network of its own."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return (0, host.lower())
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        return (4, int(address) >> (32 - ipv4_prefix))
    return (6, int(address) >> (128 - ipv6_prefix))


def store_source(host: str) -> Hashable:
    """What a STORE from ``host`` is charged to (SPEC-dht.md §6.2): its /24 or /48, except that a
    loopback address is charged as itself."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return network_prefix(host)
    if address.is_loopback:
        return ("loopback", str(address))
    return network_prefix(host)


@attrs.frozen
class RateLimit:
    """A token bucket's shape: ``rate`` tokens per second, at most ``burst`` saved up."""

    rate: float = attrs.field(default=20.0, validator=attrs.validators.gt(0))
    burst: float = attrs.field(default=40.0, validator=attrs.validators.ge(1))


@attrs.define(weakref_slot=False)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """One token bucket per key (a peer id), at most ``capacity`` buckets; see the module's
    theory of operation."""

    def __init__(self, limit: RateLimit, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.limit = limit
        self.capacity = capacity
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: Hashable, now: float) -> bool:
        """Spend one of ``key``'s tokens if it has one; whether it had."""
        limit = self.limit
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(limit.burst, now)
            if len(self._buckets) >= self.capacity:
                self._buckets.popitem(last=False)
        elif now > bucket.updated:
            bucket.tokens = min(limit.burst, bucket.tokens + (now - bucket.updated) * limit.rate)
            bucket.updated = now
        self._buckets[key] = bucket
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True


__all__ = ["NetworkPrefix", "RateLimit", "RateLimiter", "network_prefix", "store_source"]
