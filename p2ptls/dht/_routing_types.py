"""The routing table's configuration, events and summaries (the table is in ``_routing``)."""

from __future__ import annotations

import ipaddress

import attrs

from ._ids import Contact

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_EXEMPT: tuple[Network, ...] = (
    ipaddress.IPv4Network("127.0.0.0/8"),
    ipaddress.IPv6Network("::1/128"),
)


@attrs.frozen
class RoutingConfig:
    """Every limit of the routing table."""

    bucket_size: int = 20
    """k: verified contacts per bucket."""
    replacement_cache_size: int = 10
    """Candidates (unverified, or verified but waiting for room) kept per bucket."""
    hearsay_per_source: int = 2
    """Unverified candidates one source may have in one bucket's replacement cache."""
    max_per_subnet_per_bucket: int = 2
    """Verified contacts per bucket from one IPv4 /24 or IPv6 /48."""
    max_per_subnet_in_table: int = 3
    """Verified contacts in the whole table from one IPv4 /24 or IPv6 /48."""
    ipv4_prefix: int = 24
    ipv6_prefix: int = 48
    exempt_networks: tuple[Network, ...] = DEFAULT_EXEMPT
    """Networks the address caps do not apply to: loopback by default. A LAN deployment adds its
    private ranges (e.g. ``10.0.0.0/8``, ``192.168.0.0/16``, ``fc00::/7``)."""
    max_pending_pings: int = 16
    """Eviction pings outstanding at once in the table."""
    ping_timeout: float = 30.0
    """An eviction ping not reported by then counts as failed."""
    max_failures: int = 3
    """Consecutive failed RPCs after which a verified contact is dropped."""
    stale_after: float = 900.0
    """Seconds without a sighting after which a contact is due a ping."""
    refresh_interval: float = 3600.0
    """Seconds without a lookup after which a bucket is due a refresh."""


@attrs.frozen
class PingNeeded:
    """Bucket full: ping ``old`` (its least recently seen entry); if it fails, ``candidate`` takes
    its place. Report with :meth:`RoutingTable.ping_answered` / :meth:`RoutingTable.ping_failed`
    on ``old``."""

    old: Contact
    candidate: Contact


@attrs.frozen
class PingDue:
    """Ping ``contact`` (silent too long, restored, or a candidate for a free slot); report with
    :meth:`RoutingTable.ping_answered` / :meth:`RoutingTable.ping_failed`."""

    contact: Contact


@attrs.frozen
class RefreshDue:
    """No lookup touched a bucket for ``refresh_interval``: look up ``key`` (random, in the
    bucket's range)."""

    key: bytes = attrs.field(repr=lambda key: key.hex())


RoutingEvent = PingNeeded | PingDue | RefreshDue


@attrs.frozen
class SavedContact:
    """A verified contact and when it was last seen, for persistence."""

    contact: Contact
    last_seen: float


@attrs.frozen
class RoutingStats:
    """A summary of the table."""

    buckets: int
    verified: int
    candidates: int
    pending_pings: int
    bucket_sizes: tuple[int, ...]


__all__ = [
    "DEFAULT_EXEMPT",
    "Network",
    "PingDue",
    "PingNeeded",
    "RefreshDue",
    "RoutingConfig",
    "RoutingEvent",
    "RoutingStats",
    "SavedContact",
]
