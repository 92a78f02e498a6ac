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

    Lower ``SllpConfig.max_datagram_payload`` to fit the path: SLLP never relies on IP
    fragmentation.
    """
