"""What an SLLP session tells its application: messages, losses, key updates, the end; statistics.

All are frozen attrs classes. The channel's ``receive()`` returns only :class:`Message`;
``receive_event()`` also returns :class:`MessagesLost` and :class:`KeysUpdated`. The end of a
channel reaches the application as an error (see ``p2ptls.sllp.channel``); the sans-IO session
reports it as :class:`ChannelClosed`.
"""

from __future__ import annotations

import enum

import attrs


@attrs.frozen(repr=False)
class Message:
    """A message received whole, or (in partial mode) with missing fragments."""

    message_id: int
    """The sender's message counter (0, 1, 2...): gaps show what was lost."""
    data: bytes
    """The payload. In partial mode, missing fragments are zero-filled (a missing last fragment,
    whose size is unknown, is left out)."""
    missing: tuple[int, ...] = ()
    """Indexes of missing fragments; empty for a complete message."""
    fragment_count: int = 1
    """How many fragments the message was sent in."""
    fragment_size: int = 0
    """Payload bytes per fragment (every fragment but the last): offsets of missing data."""

    @property
    def complete(self) -> bool:
        return not self.missing

    def __bytes__(self) -> bytes:
        return self.data

    def __repr__(self) -> str:
        state = "" if not self.missing else f", missing={len(self.missing)}/{self.fragment_count}"
        return f"Message(id={self.message_id}, {len(self.data)} bytes{state})"


class LossReason(enum.Enum):
    """Why messages were given up."""

    NEVER_ARRIVED = "never arrived"
    """No fragment of these message ids arrived within the reassembly timeout after a later one."""
    TIMEOUT = "reassembly timeout"
    """Some fragments arrived, not all, before the reassembly timeout."""
    EVICTED = "reassembly limit"
    """Given up early to respect ``max_reassembly_messages`` or ``max_reassembly_bytes``."""
    OVERFLOW = "unread limit"
    """Complete, but the application had ``max_unread_messages`` or ``max_unread_bytes`` waiting."""


@attrs.frozen
class MessagesLost:
    """Messages ``first_id`` to ``first_id + count - 1`` were lost."""

    first_id: int
    count: int
    reason: LossReason


@attrs.frozen
class KeysUpdated:
    """One direction moved to a new key epoch."""

    direction: str
    """``"send"`` or ``"receive"``."""
    epoch: int


class CloseCause(enum.Enum):
    """Why a session ended."""

    LOCAL = "closed locally"
    PEER = "closed by the peer"
    IDLE_TIMEOUT = "idle timeout"
    LIFELINE_LOST = "the secure stream ended"
    SEQUENCE_EXHAUSTED = "sequence numbers exhausted"


@attrs.frozen
class ChannelClosed:
    """The session ended; its keys are erased and later datagrams are dropped unread."""

    cause: CloseCause
    code: int = 0
    """The close code (the peer's when ``cause`` is PEER)."""
    reason: str = ""


Event = Message | MessagesLost | KeysUpdated | ChannelClosed


@attrs.frozen
class Statistics:
    """Counters of one session (a snapshot)."""

    sent: int = 0
    """Messages sent."""
    received: int = 0
    """Messages delivered to the application (whole or, in partial mode, partial)."""
    lost: int = 0
    """Messages given up (see :class:`LossReason`)."""
    late: int = 0
    """Messages that completed after a later message had been delivered (dropped in ordered
    mode), plus fragments of messages already finished."""
    replayed: int = 0
    """Datagrams refused by the replay window (duplicates and older than the window)."""
    failed_authentication: int = 0
    """Datagrams whose AEAD tag did not verify (dropped silently)."""
    reassembly_timeouts: int = 0
    """Messages incomplete at their reassembly timeout."""
    partial: int = 0
    """Incomplete messages delivered with a missing-fragment map (partial mode)."""
    datagrams_sent: int = 0
    datagrams_received: int = 0
    """Datagrams that passed authentication."""
    bytes_sent: int = 0
    """UDP payload bytes sent."""
    bytes_received: int = 0
    """UDP payload bytes of authenticated datagrams."""
    largest_datagram_received: int = 0
    """The largest authenticated UDP payload seen."""
    unknown_connection_id: int = 0
    """Datagrams for another (or a closed) session, dropped unread."""
    malformed: int = 0
    """Datagrams too small, too large, of another version, or invalid after decryption."""
    duplicate_fragments: int = 0
    """Fragments received twice in different datagrams (a misbehaving peer)."""
    keepalives_sent: int = 0
    send_epoch: int = 0
    receive_epoch: int = 0
    in_reassembly: int = 0
    """Incomplete messages held now."""
    reassembly_bytes: int = 0
    """Payload bytes of incomplete messages held now."""
