"""The state network: replicated per-node key-value state over p2ptls.

Every node holds a small key-value state that only it may write; every other node holds a replica
and reads it locally. Writes are signed (an RSA-certified Ed25519 key per node and epoch, one
signature per batch of writes), stored durably in SQLite, pushed to members at once and repaired
by anti-entropy, so nodes that are never connected directly converge through those that are.
The state protocol is :data:`PROTOCOL` (``"p2ptls/state/1"``), one protocol on the host's shared
connection per peer: ``node.host`` serves and opens other protocols on the same connections.

::

    async with open_state_node(StateNodeConfig(identity=me, psk=psk, database="me.db",
                                               bootstrap=[other_record])) as node:
        await node.set("foo", b"bar")
        node.get(other_id, "foo")

Running a node in a background thread (for synchronous programs): run ``trio.run`` in a thread
with a function that opens the node, hands ``trio.lowlevel.current_trio_token()`` and the node to
the caller, and waits for a stop event; the caller then uses
``trio.from_thread.run(node.set, key, value, trio_token=token)`` for coroutines and
``trio.from_thread.run_sync(node.get, owner, key, trio_token=token)`` for the synchronous reads.
"""

from ._crypto import network_id
from .config import StateNodeConfig
from .errors import (
    BadSignature,
    ForeignNetwork,
    NotConnected,
    StateError,
    StateProtocolError,
    StateStoreError,
)
from .events import (
    ConsensusEntry,
    DirectMessage,
    EquivocationDetected,
    MemberChanged,
    MemberState,
    MemberStatus,
    NodeStats,
    PeerRejected,
    StateChanged,
    StateEvent,
    StateRecord,
    SubscriptionOverflowed,
)
from .node import PROTOCOL, StateNode, open_state_node
from .proof import RecordProof, VerifiedRecord

__all__ = [
    "PROTOCOL",
    "BadSignature",
    "ConsensusEntry",
    "DirectMessage",
    "EquivocationDetected",
    "ForeignNetwork",
    "MemberChanged",
    "MemberState",
    "MemberStatus",
    "NodeStats",
    "NotConnected",
    "PeerRejected",
    "RecordProof",
    "StateChanged",
    "StateError",
    "StateEvent",
    "StateNode",
    "StateNodeConfig",
    "StateProtocolError",
    "StateRecord",
    "StateStoreError",
    "SubscriptionOverflowed",
    "VerifiedRecord",
    "network_id",
    "open_state_node",
]
