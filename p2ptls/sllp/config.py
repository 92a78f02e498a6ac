"""Configuration of SLLP channels and sessions."""

from __future__ import annotations

import enum
from typing import Any

import attrs

from . import _wire as wire


class DeliveryMode(enum.Enum):
    """How the receiver hands messages to the application."""

    UNORDERED = "unordered"
    """Each message as soon as it is complete (the default)."""
    ORDERED = "ordered"
    """Message ids only increase: a message that completes after a later one was delivered is
    dropped and counted as late. Nothing waits for a missing message."""
    PARTIAL = "partial"
    """As UNORDERED, and a message still incomplete at its reassembly timeout is delivered with its
    missing fragments zero-filled and listed in ``Message.missing``."""


def _positive(_instance: Any, attribute: Any, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive")


@attrs.frozen
class SllpConfig:
    """Limits and tunables of one SLLP channel. Every field has a safe default."""

    max_message_size: int = attrs.field(default=1024 * 1024, validator=_positive)
    """Largest message this side sends or accepts (the peer's own limit also caps what we send)."""
    max_datagram_payload: int = attrs.field(default=wire.MAX_DATAGRAM_PAYLOAD)
    """Largest UDP payload this side sends or accepts, announced in the set-up: the channel's
    limit is the smaller of the two sides' values. Each side then sends datagrams of
    ``datagram_size`` (at most that limit), and the receiver takes any size up to it."""
    datagram_size: int | None = attrs.field(default=None)
    """Size of the datagrams this side sends. ``None`` (the default): from the path MTU to the
    peer, less the IP and UDP headers (65,507 on loopback, 1,472 on a 1500-byte Ethernet path),
    1200 where the operating system cannot tell; when the path later refuses that size
    (``EMSGSIZE``: the path shrank) the channel moves to the new path MTU and sends again. A
    number: exactly that size (at most the channel's limit), never changed; a path that refuses
    it raises :class:`~p2ptls.sllp.DatagramTooLarge`."""
    delivery: DeliveryMode = DeliveryMode.UNORDERED
    """How complete, late and incomplete messages are handed over (see :class:`DeliveryMode`)."""
    reassembly_timeout: float = attrs.field(default=1.0, validator=_positive)
    """Seconds a message may stay incomplete (from its first fragment) before it is given up."""
    max_reassembly_messages: int = attrs.field(default=64, validator=_positive)
    """Incomplete messages held at once; beyond it the oldest is given up."""
    max_reassembly_bytes: int = attrs.field(default=8 * 1024 * 1024, validator=_positive)
    """Payload bytes of incomplete messages held at once (at least ``max_message_size``)."""
    max_unread_messages: int = attrs.field(default=4096, validator=_positive)
    """Delivered messages waiting for ``receive()``; beyond it new ones are dropped as lost."""
    max_unread_bytes: int = attrs.field(default=64 * 1024 * 1024, validator=_positive)
    """Bytes of delivered messages waiting for ``receive()`` (at least ``max_message_size``)."""
    idle_timeout: float = attrs.field(default=30.0, validator=_positive)
    """Seconds without an authenticated datagram from the peer before the channel ends."""
    keepalive_interval: float = attrs.field(default=10.0, validator=_positive)
    """Seconds without sending anything before a keep-alive datagram is sent."""
    rekey_after: int = attrs.field(default=1 << 23, validator=_positive)
    """Datagrams sent under one key before moving to the next key epoch (at least 16)."""
    previous_key_lifetime: float = attrs.field(default=3.0, validator=_positive)
    """Seconds the previous receive key is kept for reordered datagrams after the peer rekeys."""
    setup_timeout: float = attrs.field(default=10.0, validator=_positive)
    """Deadline for the offer/answer exchange, in seconds."""
    socket_buffer_size: int = attrs.field(default=4 * 1024 * 1024, validator=_positive)
    """SO_RCVBUF and SO_SNDBUF requested for the UDP socket (the kernel may grant less)."""
    gso: bool = True
    """Use UDP segmentation offload (Linux UDP_SEGMENT) when the kernel has it."""
    gro: bool = True
    """Use UDP receive coalescing (Linux UDP_GRO) when the kernel has it."""
    receive_batch: int = attrs.field(default=512, validator=_positive)
    """Datagrams (or GRO buffers) read from the socket before yielding to other tasks."""

    @max_datagram_payload.validator
    def _check_datagram(self, _attribute: Any, value: int) -> None:
        if not wire.MIN_DATAGRAM_PAYLOAD <= value <= wire.MAX_DATAGRAM_PAYLOAD:
            raise ValueError(
                f"max_datagram_payload must be between {wire.MIN_DATAGRAM_PAYLOAD} and "
                f"{wire.MAX_DATAGRAM_PAYLOAD}"
            )

    @datagram_size.validator
    def _check_datagram_size(self, _attribute: Any, value: int | None) -> None:
        if value is None:
            return
        if not wire.MIN_DATAGRAM_PAYLOAD <= value <= wire.MAX_DATAGRAM_PAYLOAD:
            raise ValueError(
                f"datagram_size must be None or between {wire.MIN_DATAGRAM_PAYLOAD} and "
                f"{wire.MAX_DATAGRAM_PAYLOAD}"
            )

    def __attrs_post_init__(self) -> None:
        if self.max_message_size > wire.MAX_MESSAGE_SIZE:
            raise ValueError("max_message_size must be below 4 GiB")
        if self.max_reassembly_bytes < self.max_message_size:
            raise ValueError("max_reassembly_bytes must be at least max_message_size")
        if self.max_unread_bytes < self.max_message_size:
            raise ValueError("max_unread_bytes must be at least max_message_size")
        if self.keepalive_interval >= self.idle_timeout:
            raise ValueError("keepalive_interval must be shorter than idle_timeout")
        if self.rekey_after < 16:
            raise ValueError("rekey_after must be at least 16")
