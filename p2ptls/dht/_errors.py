"""The DHT's errors.

Every parser whose name ends in ``_untrusted`` raises only :class:`DhtProtocolError` (a
:class:`p2ptls.ProtocolError`). Messages never contain key material or received bytes.
"""

from __future__ import annotations

from .._errors import P2PTLSError, ProtocolError


class DhtError(P2PTLSError):
    """Base class of the errors the DHT raises on purpose (besides protocol errors)."""


class DhtProtocolError(ProtocolError):
    """A DHT message, record or contact from the network is malformed, badly signed or does not
    match what it claims (an id that is not the hash of its key). Only the stream it came on is
    affected."""


__all__ = ["DhtError", "DhtProtocolError"]
