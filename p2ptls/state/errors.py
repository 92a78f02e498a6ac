"""Errors of the state network.

Every parser of the replication protocol (its name ends in ``_untrusted``) raises only
:class:`StateProtocolError` or a subclass. A peer that causes one is disconnected. Errors never
carry received bytes or key material in their messages.
"""

from __future__ import annotations

from .._errors import P2PTLSError, ProtocolError


class StateProtocolError(ProtocolError):
    """A peer broke the replication protocol; its connection is closed."""


class BadSignature(StateProtocolError):
    """A certificate, batch signature or record hash did not verify.

    Raised for anything whose authenticity fails: the peer that sent it is disconnected (an honest
    relay forwards only records it verified).
    """


class ForeignNetwork(StateProtocolError):
    """A certificate, batch or hello names another state network."""


class StateError(P2PTLSError):
    """Base class of the state network's non-protocol errors (misuse, storage, reachability)."""


class StateStoreError(StateError):
    """The state database is unusable: another network's or identity's, or a newer schema."""


class NotConnected(StateError):
    """A direct message could not be delivered: no connection to that node (or it broke)."""
