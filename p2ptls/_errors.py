"""The protocol's own errors.

Every function that parses bytes from the network (its name ends in ``_untrusted``) raises only
:class:`ProtocolError` or one of its subclasses. Messages never contain key material or
received bytes.
"""

from __future__ import annotations


class P2PTLSError(Exception):
    """Base class of every error p2ptls raises on purpose."""


class ProtocolError(P2PTLSError):
    """The peer broke the wire protocol; the connection it arrived on is unusable."""


class HandshakeFailed(ProtocolError):
    """The handshake failed.

    Deliberately generic: unknown peer, wrong network key, bad ciphertext, stale timestamp,
    bad Finished MAC and malformed flights all raise this one error with one message, so that
    neither the peer nor a log reader learns which check failed.
    """

    def __init__(self) -> None:
        super().__init__("handshake failed")


class PeerRefused(ProtocolError):
    """The responder authenticated us but does not accept us (not trusted, or a stale timestamp).

    Only the true holder of our private key can read this refusal, so it reveals nothing to others.
    """

    def __init__(self) -> None:
        super().__init__("the peer refused this identity (not trusted by it, or a stale timestamp)")


class HandshakeTimeout(ProtocolError):
    """The handshake did not complete within its total deadline."""


class RecordError(ProtocolError):
    """A record failed authentication, had a bad length or an unknown content type."""


class TruncatedError(ProtocolError):
    """The transport ended without the peer's authenticated close."""


class MessageTooLarge(ProtocolError):
    """A message exceeds the configured maximum size."""


class ReassemblyBudgetExceeded(ProtocolError):
    """Messages under reassembly on this host exceed the shared memory budget."""


class FloodError(ProtocolError):
    """The peer sent control records faster than the configured limit."""


class KeyFileError(P2PTLSError):
    """A key or network-key file is missing, malformed, unsafe or could not be decrypted."""


class PeerDatabaseError(P2PTLSError):
    """The peer database failed authentication, is malformed, or holds an inconsistent entry."""


class MuxError(ProtocolError):
    """The peer broke the multiplexing protocol; its shared connection (every logical stream on
    it) is closed."""


class StreamRefused(P2PTLSError):
    """The peer refused a logical stream we opened (too many streams, or it is going away)."""


class ProtocolNotSupported(StreamRefused):
    """The peer serves no such protocol on its host."""
