"""Configuration of a state node."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import attrs

from ..config import ConnectionConfig, StreamConfig
from ..identity import Identity, NetworkKey, PeerId, PeerRecord
from . import _wire as wire
from ._store import Durability


def _positive(_instance: Any, attribute: Any, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive")


def _not_negative(_instance: Any, attribute: Any, value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative")


def _records(value: Any) -> tuple[PeerRecord, ...]:
    return tuple(value)


@attrs.frozen
class StateNodeConfig:
    """Everything a state node needs. Every field but ``identity`` and ``psk`` has a default.

    Example::

        config = StateNodeConfig(
            identity=Identity.load("me.key"),
            psk=NetworkKey.load("network.psk"),
            database="me-state.sqlite3",
            listen=("0.0.0.0", 7400),
            bootstrap=[PeerRecord.from_dict(entry) for entry in known],
        )
    """

    identity: Identity
    """This node's RSA identity; its peer id is the owner id of its state."""
    psk: NetworkKey
    """The network key: admits members to connections and derives the state network id."""
    database: str | os.PathLike[str] | None = None
    """SQLite file for own state, replicas, certificates and epochs (one per node; the path is
    the application's choice, never derived from a node id). ``None``: in memory, nothing survives
    the process, and the epoch starts from the wall clock in milliseconds so that a restarted
    in-memory node does not reuse versions."""
    listen: tuple[str, int] | None = ("127.0.0.1", 0)
    """``(address, port)`` to accept members on; port 0 picks one; ``None`` for a node that only
    dials out."""
    advertise: tuple[str, int] | None = None
    """Address told to other members (default: the listening address; an unspecified host such as
    ``0.0.0.0`` is replaced by the address the peer sees)."""
    bootstrap: tuple[PeerRecord, ...] = attrs.field(default=(), converter=_records)
    """Known members with addresses (``PeerRecord.address``) to join through; the others are
    learned from them."""
    name: str = ""
    """A human label for logs."""
    durability: Durability = "full"
    """``"full"``: every commit is synced to disk (a write acknowledged by ``set`` survives power
    loss); ``"normal"``: it survives a crash of the process."""
    coalesce_delay: float = attrs.field(default=0.001, validator=_not_negative)
    """Seconds to wait after the first unsigned write for more to sign in one batch."""
    max_batch: int = attrs.field(default=256)
    """Most records signed in one batch."""
    max_value_size: int = attrs.field(default=wire.DEFAULT_MAX_VALUE_SIZE)
    """Largest value; must be the same on every node of the network."""
    max_direct_size: int = attrs.field(default=1024 * 1024)
    """Largest direct-message payload sent or accepted."""
    message_budget: int = attrs.field(default=1024 * 1024, validator=_positive)
    """Aim for update messages of about this many bytes (one record may exceed it)."""
    ping_interval: float = attrs.field(default=5.0, validator=_positive)
    """Seconds of silence after which the host pings a connection (its keepalive; see
    :attr:`connections`)."""
    ping_timeout: float = attrs.field(default=20.0, validator=_positive)
    """A connection silent for this long is closed (every protocol on it sees
    ``ConnectionLost``) and its member reported unreachable."""
    reconnect_min: float = attrs.field(default=0.2, validator=_positive)
    """First delay before dialling a member again: the host's dial back-off starts here, and
    so does the node's wait after a session that could not be set up."""
    reconnect_max: float = attrs.field(default=15.0, validator=_positive)
    """Longest delay between dials (the delay doubles, with jitter, up to this)."""
    connect_timeout: float = attrs.field(default=10.0, validator=_positive)
    """Deadline for a dial (TCP connect and handshake: the host's ``dial_timeout``), again for
    the peer to accept the state stream, and again for the hello exchange."""
    anti_entropy_interval: float = attrs.field(default=30.0, validator=_positive)
    """Seconds between digests on an open connection (repairs anything missed)."""
    max_members: int = attrs.field(default=1024, validator=_positive)
    """Most verified members remembered (a member that authenticates always gets a place: the
    one unconnected longest is forgotten)."""
    max_member_candidates: int = attrs.field(default=1024, validator=_positive)
    """Most gossiped, not yet verified members held to be dialled."""
    member_candidates_per_source: int = attrs.field(default=256, validator=_positive)
    """Most gossiped candidates held from one member."""
    member_candidate_ttl: float = attrs.field(default=300.0, validator=_positive)
    """Seconds a gossiped candidate is kept (and dialled, a few times) before it expires."""
    max_owners: int = attrs.field(default=4096, validator=_positive)
    """Most owners whose state is held (this node included); when full, a new owner evicts the
    oldest owner (never a member) of the peer that brought the most."""
    max_pending_requests: int = attrs.field(default=4096, validator=_positive)
    """Control messages (pongs, pulls) owed to one peer before it counts as flooding."""
    subscriber_buffer: int = attrs.field(default=4096, validator=_positive)
    """Events buffered per subscriber before it is cut off with ``SubscriptionOverflowed``."""
    direct_buffer: int = attrs.field(default=256, validator=_positive)
    """Direct messages buffered for the application; further ones are dropped and counted."""
    peer_filter: Callable[[PeerId], bool] | None = None
    """Policy (and test) hook: return False to refuse dialling or accepting a member."""
    stream: StreamConfig = attrs.field(factory=StreamConfig)
    """Limits of the secure streams."""
    replay_state_path: str | None = None
    """Where the host persists handshake replay state (see ``HostConfig``)."""

    @max_batch.validator
    def _check_batch(self, _attribute: Any, value: int) -> None:
        if not 1 <= value <= wire.MAX_BATCH_LIMIT:
            raise ValueError(f"max_batch must be between 1 and {wire.MAX_BATCH_LIMIT}")

    def __attrs_post_init__(self) -> None:
        wire.Limits(self.max_value_size, self.max_direct_size)  # validates both
        largest = max(self.max_value_size, self.max_direct_size) + 64 * 1024
        if largest > self.stream.max_message_size:
            raise ValueError("stream.max_message_size is too small for max_value_size")
        if self.reconnect_max < self.reconnect_min:
            raise ValueError("reconnect_max must be at least reconnect_min")
        if self.durability not in ("full", "normal"):
            raise ValueError("durability must be 'full' or 'normal'")

    @property
    def connections(self) -> ConnectionConfig:
        """The node's host's connection settings: liveness and dial back-off are the
        connection's, shared by every protocol on it. The host pings after
        ``min(ping_interval, ping_timeout / 2)`` of silence and gives up ``ping_timeout`` after
        the last thing it heard; a dial may take ``connect_timeout``, and failed dials back off
        from ``reconnect_min`` to ``reconnect_max``."""
        interval = min(self.ping_interval, self.ping_timeout / 2)
        return ConnectionConfig(
            keepalive_interval=interval,
            keepalive_timeout=self.ping_timeout - interval,
            dial_timeout=self.connect_timeout,
            dial_backoff_initial=self.reconnect_min,
            dial_backoff_max=self.reconnect_max,
        )

    @property
    def limits(self) -> wire.Limits:
        return wire.Limits(self.max_value_size, self.max_direct_size)
