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
    LocalProtocolError,
    MessageTooLarge,
    MuxError,
    P2PTLSError,
    PeerDatabaseError,
    PeerRefused,
    ProtocolError,
    ProtocolNotSupported,
    ReassemblyBudgetExceeded,
    RecordError,
    StreamInterrupted,
    StreamRefused,
    TruncatedError,
)
from ._fragments import ReassemblyBudget
from .config import ConnectionConfig, StreamConfig
from .connections import (
    ConnectionLimitReached,
    DialBackoff,
    PeerConnected,
    PeerConnection,
    PeerDisconnected,
)
from .context import SecurityContext
from .host import DEFAULT_PROTOCOL, Host, HostConfig, open_host, serve
from .identity import Identity, NetworkKey, PeerId, PeerRecord, generate_psk
from .logical import ConnectionLost, LogicalStream, StreamReset
from .peerdb import PeerDatabase
from .stream import CIPHER_SUITE, SecureStream
from .trust import KnownPeers, ReplayGuard, admit_network_members, deny_unknown

__version__ = "0.1.0"

__all__ = [
    "CIPHER_SUITE",
    "DEFAULT_PROTOCOL",
    "ConnectionConfig",
    "ConnectionLimitReached",
    "ConnectionLost",
    "DialBackoff",
    "FloodError",
    "HandshakeFailed",
    "HandshakeTimeout",
    "Host",
    "HostConfig",
    "Identity",
    "KeyFileError",
    "KnownPeers",
    "LocalProtocolError",
    "LogicalStream",
    "MessageTooLarge",
    "MuxError",
    "NetworkKey",
    "P2PTLSError",
    "PeerConnected",
    "PeerConnection",
    "PeerDatabase",
    "PeerDatabaseError",
    "PeerDisconnected",
    "PeerId",
    "PeerRecord",
    "PeerRefused",
    "ProtocolError",
    "ProtocolNotSupported",
    "ReassemblyBudget",
    "ReassemblyBudgetExceeded",
    "RecordError",
    "ReplayGuard",
    "SecureStream",
    "SecurityContext",
    "StreamConfig",
    "StreamInterrupted",
    "StreamRefused",
    "StreamReset",
    "TruncatedError",
    "admit_network_members",
    "deny_unknown",
    "generate_psk",
    "open_host",
    "serve",
    "sllp",
]
