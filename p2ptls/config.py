"""Configuration of secure streams."""

from __future__ import annotations

from typing import Any

import attrs

from . import _wire as wire
from ._records import HARD_LIMIT, KEY_UPDATE_AFTER

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
DEFAULT_RECORD_SIZE = wire.MAX_PLAINTEXT  # 65264: fewer, larger records are much faster
# An IPv6 header (40 bytes) plus a TCP header with the timestamp option (32 bytes).
IP_TCP_OVERHEAD = 72
MIN_RECORD_SIZE = 256


def _positive(_instance: Any, attribute: Any, value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be positive")


@attrs.frozen
class StreamConfig:
    """Limits and tunables of one :class:`~p2ptls.SecureStream`. Every field has a safe default."""

    max_message_size: int = attrs.field(default=DEFAULT_MAX_MESSAGE_SIZE, validator=_positive)
    """Largest message :meth:`~p2ptls.SecureStream.send_message` sends or a peer may announce."""
    record_size: int = attrs.field(default=DEFAULT_RECORD_SIZE)
    """Largest plaintext in one record, at most 65264 bytes."""
    mtu: int | None = attrs.field(default=None, validator=_positive)
    """If set, records are small enough that each fits one TCP segment on a path of this MTU."""
    handshake_timeout: float | None = attrs.field(default=10.0, validator=_positive)
    """Total deadline for the handshake, in seconds (``None``: no deadline)."""
    receive_size: int = attrs.field(default=256 * 1024, validator=_positive)
    """The most bytes to ask the transport for at a time (a TCP stream's reads start at 16 KiB
    and grow to this while they fill their buffer)."""
    max_unread_bytes: int = attrs.field(default=DEFAULT_MAX_MESSAGE_SIZE, validator=_positive)
    """Byte-stream data buffered while the application reads messages; beyond it the peer is cut."""
    control_burst: int = attrs.field(default=256, validator=_positive)
    """Control records (ping, pong, key update) accepted in a burst."""
    control_rate: float = attrs.field(default=64.0, validator=_positive)
    """Control records accepted per second after the burst."""
    key_update_after: int = attrs.field(default=KEY_UPDATE_AFTER, validator=_positive)
    """Records sent under one key before a key update (lower it only in tests)."""
    hard_record_limit: int = attrs.field(default=HARD_LIMIT, validator=_positive)
    """Records accepted under one key before the connection is closed."""
    resumption: bool = True
    """Connecting side: resume with a ticket from the context's cache when it holds one for the
    peer (no RSA operation on either side; see SPEC 3.6)."""
    issue_tickets: bool = True
    """Accepting side: send resumption tickets after each handshake."""
    ticket_lifetime: int = attrs.field(
        default=6 * 3600,
        validator=[_positive, attrs.validators.le(wire.MAX_TICKET_LIFETIME_S)],
    )
    """Accepting side: seconds a ticket it issues stays valid (at most 7 days); also the period
    of its ticket keys' rotation."""

    @record_size.validator
    def _check_record_size(self, _attribute: Any, value: int) -> None:
        if not MIN_RECORD_SIZE <= value <= wire.MAX_PLAINTEXT:
            raise ValueError(
                f"record_size must be between {MIN_RECORD_SIZE} and {wire.MAX_PLAINTEXT}"
            )

    def __attrs_post_init__(self) -> None:
        if (
            self.mtu is not None
            and self.mtu - IP_TCP_OVERHEAD - wire.HEADER_SIZE - wire.TAG_SIZE < MIN_RECORD_SIZE
        ):
            raise ValueError("mtu too small for a record")
        if self.key_update_after >= self.hard_record_limit:
            raise ValueError("key_update_after must be below hard_record_limit")
        if self.max_message_size >= 1 << 32:
            raise ValueError("max_message_size must be below 4 GiB")

    @property
    def record_payload(self) -> int:
        """The effective largest plaintext per record, after the MTU setting."""
        if self.mtu is None:
            return self.record_size
        by_mtu = self.mtu - IP_TCP_OVERHEAD - wire.HEADER_SIZE - wire.TAG_SIZE
        return min(self.record_size, by_mtu)


def _at_least(minimum: int) -> Any:
    def check(_instance: Any, attribute: Any, value: int) -> None:
        if value < minimum:
            raise ValueError(f"{attribute.name} must be at least {minimum}")

    return check


@attrs.frozen
class ConnectionConfig:
    """How a host shares one connection per peer between protocols. Every field has a safe
    default."""

    max_connections: int = attrs.field(default=256, validator=_at_least(1))
    """Live connections at once; beyond it the least recently used unprotected one is closed
    (and a new one refused if every other is protected)."""
    idle_timeout: float | None = attrs.field(default=60.0, validator=_positive)
    """Seconds a connection with no logical stream stays open (``None``: until evicted)."""
    keepalive_interval: float = attrs.field(default=15.0, validator=_positive)
    """Seconds of silence from the peer after which the connection is pinged."""
    keepalive_timeout: float = attrs.field(default=10.0, validator=_positive)
    """Seconds a ping may go unanswered (with nothing else received) before the connection is
    declared lost."""
    dial_timeout: float = attrs.field(default=10.0, validator=_positive)
    """Seconds a dial may take to connect and complete its handshake (then ``TimeoutError``,
    and the peer backs off)."""
    dial_backoff_initial: float = attrs.field(default=0.5, validator=_positive)
    """Seconds before a peer whose dial failed may be dialled again (doubling per failure)."""
    dial_backoff_max: float = attrs.field(default=60.0, validator=_positive)
    """Longest dial back-off."""
    max_streams_per_peer: int = attrs.field(default=64, validator=_at_least(1))
    """Logical streams a peer may hold open on its connection at once; more are refused."""
    stream_window: int = attrs.field(default=256 * 1024, validator=_at_least(64 * 1024))
    """Bytes a peer may send on one logical stream before the application reads them, at first."""
    max_stream_window: int = attrs.field(
        default=4 * 1024 * 1024,
        validator=[_at_least(64 * 1024), attrs.validators.le((1 << 31) - 1)],
    )
    """How far a stream's window grows while its reader keeps up and its sender waits for credit
    (window auto-tuning: a bulk transfer is not held back by round trips of credit)."""
    connection_window: int = attrs.field(default=16 * 1024 * 1024, validator=_at_least(64 * 1024))
    """The sum of the windows of one connection's streams beyond which no window grows: what a
    peer may have sent unread on a connection is at most this, or ``max_streams_per_peer`` x
    ``stream_window`` if that is more."""
    replaced_grace: float = attrs.field(default=10.0, validator=_positive)
    """Seconds a connection replaced by a newer one (a simultaneous open) keeps serving its
    streams before it is closed."""
    handler_grace: float = attrs.field(default=10.0, validator=_positive)
    """Seconds a protocol handler may run on after its connection ended (to finish its own work
    with what it received); then it is cancelled, so that handlers waiting on something else
    than their stream do not pile up when a peer reconnects again and again."""
    output_high_water: int = attrs.field(default=256 * 1024, validator=_at_least(1))
    """Bytes of frames queued for the connection beyond which senders wait."""
