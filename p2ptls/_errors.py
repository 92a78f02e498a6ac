"""The protocol's own errors, and who is to blame for each (as h11's ``_util.py``).

The policy:

- :class:`ProtocolError` (and its subclasses): **the peer's bytes** broke the protocol. Only the
  calls that take network input raise it (their names end in ``_untrusted``, plus
  ``supply_decryption``, whose plaintext came from the peer); the connection is then unusable.
  :class:`HandshakeFailed` is deliberately one generic error for every authentication failure.
- :class:`LocalProtocolError` (a ``RuntimeError``): **the caller** asked for something the
  connection's state does not allow: a send after ``send_eof``, ``supply_decryption`` with no
  private-key operation pending, any use after the connection failed. It is a bug in the code
  using p2ptls, never something a peer can cause.
- :class:`StreamInterrupted` (a ``LocalProtocolError``): a cancellation stopped a handshake or a
  record part-way through (or the transport was closed underneath), so the stream cannot go on.
  A :class:`~p2ptls.SecureStream` then raises ``trio.BrokenResourceError`` with this as its
  ``__cause__``: the stream broke, but not by the peer's doing.
- Broken internal invariants are ``assert`` statements, not exceptions of this module.

Messages never contain key material or received bytes.
"""

from __future__ import annotations


class P2PTLSError(Exception):
    """Base class of every error p2ptls raises on purpose."""


class ProtocolError(P2PTLSError):
    """The peer broke the wire protocol; the connection it arrived on is unusable."""


class LocalProtocolError(P2PTLSError, RuntimeError):
    """The caller asked for something the connection's state does not allow (a bug in the caller,
    never the peer's doing)."""


class StreamInterrupted(LocalProtocolError):
    """The stream was cut short on this side (a cancellation part-way through a handshake or a
    record, or its transport closed underneath it); it is broken, by no fault of the peer."""


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
