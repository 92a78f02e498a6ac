"""p2ptls: secure peer-to-peer networking for trio.

Every peer has an RSA identity (its id is the SHA-256 of its public key); a network shares a
pre-shared key; peers know each other's public keys. Between two peers, a :class:`SecureStream`
gives a mutually authenticated, forward-secret, AES-256-GCM protected stream that behaves like any
other trio stream.
"""

from . import sllp
from ._errors import (
    FloodError,
    HandshakeFailed,
    HandshakeTimeout,
    KeyFileError,
    MessageTooLarge,
    P2PTLSError,
    PeerDatabaseError,
    PeerRefused,
    ProtocolError,
    ReassemblyBudgetExceeded,
    RecordError,
    TruncatedError,
)
from ._fragments import ReassemblyBudget
from .config import StreamConfig
from .host import Host, HostConfig, open_host, serve
from .identity import Identity, NetworkKey, PeerId, PeerRecord, generate_psk
from .peerdb import PeerDatabase
from .stream import CIPHER_SUITE, SecureStream, SecurityContext
from .trust import KnownPeers, ReplayGuard, admit_network_members, deny_unknown

__version__ = "0.1.0"

__all__ = [
    "CIPHER_SUITE",
    "FloodError",
    "HandshakeFailed",
    "HandshakeTimeout",
    "Host",
    "HostConfig",
    "Identity",
    "KeyFileError",
    "KnownPeers",
    "MessageTooLarge",
    "NetworkKey",
    "P2PTLSError",
    "PeerDatabase",
    "PeerDatabaseError",
    "PeerId",
    "PeerRecord",
    "PeerRefused",
    "ProtocolError",
    "ReassemblyBudget",
    "ReassemblyBudgetExceeded",
    "RecordError",
    "ReplayGuard",
    "SecureStream",
    "SecurityContext",
    "StreamConfig",
    "TruncatedError",
    "admit_network_members",
    "deny_unknown",
    "generate_psk",
    "open_host",
    "serve",
    "sllp",
]
