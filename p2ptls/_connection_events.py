"""The events a secure stream connection's sans-IO core reports
(:class:`p2ptls._connection.Connection`, as h11's ``_events.py``; its states are in
:mod:`p2ptls._connection_state`)."""

from __future__ import annotations

import attrs

from .identity import PeerRecord


@attrs.frozen(repr=False)
class PrivateKeyOperationNeeded:
    """Decrypt ``ciphertext`` with the identity key (OAEP, ``label``), then supply_decryption."""

    ciphertext: bytes
    label: bytes

    def __repr__(self) -> str:
        return f"PrivateKeyOperationNeeded(label={self.label!r})"


@attrs.frozen
class HandshakeComplete:
    """The handshake verified (reported on both sides); ``remote`` is the authenticated peer."""

    remote: PeerRecord


@attrs.frozen(repr=False)
class DataReceived:
    """Bytes of the byte stream."""

    data: bytes

    def __repr__(self) -> str:
        return f"DataReceived(<{len(self.data)} bytes>)"


@attrs.frozen(repr=False)
class MessageReceived:
    """One whole message."""

    data: bytes

    def __repr__(self) -> str:
        return f"MessageReceived(<{len(self.data)} bytes>)"


@attrs.frozen
class EndOfStream:
    """The peer's authenticated CLOSE: it will send nothing more."""

    reason: int
    """``0``: end of stream (half-close); ``1``: the peer closed the connection."""


@attrs.frozen
class PongReceived:
    """The answer to one of our pings."""

    payload: bytes


@attrs.frozen(repr=False)
class TicketReceived:
    """A resumption ticket from the responder (initiator side only; SPEC 3.6)."""

    ticket: bytes
    ticket_psk: bytes
    lifetime_s: int

    def __repr__(self) -> str:
        return f"TicketReceived(lifetime_s={self.lifetime_s})"


Event = (
    PrivateKeyOperationNeeded
    | HandshakeComplete
    | DataReceived
    | MessageReceived
    | EndOfStream
    | PongReceived
    | TicketReceived
)
