"""The errors of SLLP's sans-IO core (no trio here; the channel's own errors are in ``channel``).

Every parser whose name ends in ``_untrusted`` raises only :class:`DatagramError` or
:class:`NegotiationError`, both subclasses of :class:`p2ptls.ProtocolError`. Messages never contain
key material or received bytes.
"""

from __future__ import annotations

from .._errors import P2PTLSError, ProtocolError


class SllpError(P2PTLSError):
    """Base class of the errors SLLP raises on purpose (besides the protocol errors below)."""


class DatagramError(ProtocolError):
    """A datagram (or its decrypted body) is malformed. The receiver drops it and counts it."""


class NegotiationError(ProtocolError):
    """An SLLP offer, answer or stream-close message is malformed or inconsistent."""


class SessionClosed(SllpError):
    """The session is closed (locally, by the peer, by the idle timeout or by its lifeline).

    ``cause`` is the :class:`~p2ptls.sllp.CloseCause`; ``code`` and ``reason`` are the close code
    and text (the peer's, when the peer closed).
    """

    def __init__(self, cause: object, code: int = 0, reason: str = "") -> None:
        super().__init__(
            f"SLLP session closed ({cause}, code {code}{': ' + reason if reason else ''})"
        )
        self.cause = cause
        self.code = code
        self.reason = reason


class DatagramTooLarge(SllpError):
    """The operating system refused a datagram as larger than the path MTU (don't-fragment is set).

    A channel that sizes its datagrams from the path MTU (``SllpConfig.datagram_size=None``)
    handles it by moving to the smaller size and sending again; one with an explicit
    ``datagram_size`` raises it: SLLP never relies on IP fragmentation. ``offset`` is the byte of
    the train (of a batch of trains, of all of them together) where the refused datagram starts:
    everything before it was sent.
    """

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.offset = offset
