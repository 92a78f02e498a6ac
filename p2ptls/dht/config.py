"""The DHT node's settings: every limit of its cores and of its RPCs, in one frozen class."""

from __future__ import annotations

import attrs

from ._lookup import LookupConfig
from ._responder import ResponderConfig
from ._routing import RoutingConfig
from ._store import StoreConfig
from ._wire import WireConfig


def _positive(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive")


@attrs.frozen
class DhtConfig:
    """How a :class:`~p2ptls.dht.node.DhtNode` routes, stores, answers and asks.

    The record limits (``store.limits`` and ``wire.record_limits``) must be equal: what the node
    parses from the network is what its store accepts.
    """

    routing: RoutingConfig = attrs.field(factory=RoutingConfig)
    """The routing table: bucket size k, replacement caches, subnet caps, ping and refresh
    intervals."""
    store: StoreConfig = attrs.field(factory=StoreConfig)
    """The record store: record limits, quotas per source and in total, replication."""
    wire: WireConfig = attrs.field(factory=WireConfig)
    """The messages: contacts per NODES reply, record limits."""
    responder: ResponderConfig = attrs.field(factory=ResponderConfig)
    """The RPC service: per-peer rate limits, requester verification, NOT_RESPONSIBLE."""
    rpc_timeout: float = attrs.field(default=10.0, validator=_positive)
    """Seconds a client RPC may take in all: dialling (if there is no connection yet), opening
    the stream, sending the request and reading the reply. Past it the RPC fails."""
    request_timeout: float = attrs.field(default=10.0, validator=_positive)
    """Seconds the responder waits for a stream's request and sends its reply; past it the
    stream is reset."""
    max_background_pings: int = attrs.field(default=32, validator=attrs.validators.ge(1))
    """Pings the node runs at once for its routing table (eviction, stale and requester pings);
    a ping asked for beyond it is skipped (the table asks again later)."""
    max_refreshes_due: int = attrs.field(default=256, validator=attrs.validators.ge(1))
    """Bucket refreshes queued until a background lookup runs them; the oldest is forgotten
    first. (Republishing our own records is never dropped and runs first; replication of held
    records queues at most ``store.max_records`` and runs last.)"""

    lookup: LookupConfig = attrs.field(factory=LookupConfig)
    """Every lookup the node runs: k, α, disjoint paths, soft timeout, request budget."""
    read_quorum: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    """Values a read of a mutable value or a peer record collects before it picks the newest
    (an immutable value stops at the first)."""
    record_lifetime: int = attrs.field(default=24 * 3600, validator=attrs.validators.ge(1))
    """Seconds the records this node writes live (longer than the 22 h republishing interval,
    within ``store.limits.max_lifetime``)."""
    max_background_lookups: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    """Lookups the node runs at once on its own (bucket refreshes, republishing, replication);
    a refresh asked for beyond it waits in ``refreshes_due``."""
    replication_check: float = attrs.field(default=300.0, validator=_positive)
    """Seconds between two looks at which held records are due for replication (each record is
    offered once per ``store.replicate_interval``)."""

    def __attrs_post_init__(self) -> None:
        if self.record_lifetime > self.store.limits.max_lifetime:
            raise ValueError("record_lifetime must lie within store.limits.max_lifetime")
        if self.store.limits != self.wire.record_limits:
            raise ValueError("store.limits and wire.record_limits must be equal")


__all__ = ["DhtConfig"]
