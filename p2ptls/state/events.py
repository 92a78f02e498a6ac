"""What a state node reports: changes, members, equivocation, direct messages, consensus."""

from __future__ import annotations

import enum

import attrs

from ..identity import PeerId


@attrs.frozen
class StateChanged:
    """An owner's key now has a new value (``value is None``: the key was deleted).

    ``(epoch, sequence)`` is the version the owner signed; ``local`` is true for this node's own
    writes (reported once they are durable).
    """

    owner: PeerId
    key: str
    value: bytes | None
    epoch: int
    sequence: int
    local: bool = False


class MemberState(enum.Enum):
    """Where a member stands, as seen from this node."""

    CONNECTED = "connected"
    """A verified connection is open."""
    UNREACHABLE = "unreachable"
    """It was connected and went away (stream closed, pings failed); its state is stale."""
    UNKNOWN = "unknown"
    """Learned (bootstrap or gossip) but never connected."""


@attrs.frozen
class MemberStatus:
    """A member of the network and the state this node holds of it."""

    peer_id: PeerId
    address: tuple[str, int] | None
    state: MemberState
    since: float
    """Wall-clock time (``time.time()``) at which ``state`` began; for display only."""
    incarnation: int
    """The member's epoch when it last connected (0 if never): it grows at every restart."""
    version: tuple[int, int]
    """The highest ``(epoch, sequence)`` of its state this node holds."""
    handshake_failures: int = 0
    """Handshakes of this node's own dials to the member that failed in a row (reset by one that
    succeeds). Persistent failures usually mean the two use different network keys."""
    last_handshake_failure: float | None = None
    """Wall-clock time of the last of those failures; for display only."""

    @property
    def stale(self) -> bool:
        """The member is not connected: its state here is its last known state."""
        return self.state is not MemberState.CONNECTED


@attrs.frozen
class MemberChanged:
    """A member joined, connected or went away."""

    status: MemberStatus


@attrs.frozen
class EquivocationDetected:
    """An owner signed two different records for one version, or two keys for one epoch.

    The second one was refused. ``held`` and ``offered`` are the two signed objects (batch
    ``body | signature`` or epoch certificate), together a proof of the owner's misbehaviour.
    """

    owner: PeerId
    epoch: int
    sequence: int
    """The first conflicting sequence number (0: two certificates for one epoch)."""
    held: bytes = attrs.field(repr=False)
    offered: bytes = attrs.field(repr=False)


@attrs.frozen
class PeerRejected:
    """A connected peer broke the protocol (e.g. a bad signature) and was disconnected."""

    peer_id: PeerId
    reason: str


@attrs.frozen
class SubscriptionOverflowed:
    """The subscriber fell behind by more than its buffer; the subscription ends after this."""


StateEvent = StateChanged | MemberChanged | EquivocationDetected | PeerRejected
"""Every event type :meth:`~p2ptls.state.StateNode.subscribe` can deliver."""


@attrs.frozen
class DirectMessage:
    """A one-shot payload another node sent to this one with ``send_to``."""

    sender: PeerId
    payload: bytes = attrs.field(repr=False)


@attrs.frozen
class ConsensusEntry:
    """One value nodes hold for a key, and which nodes hold it."""

    value: bytes
    owners: tuple[PeerId, ...]

    @property
    def count(self) -> int:
        return len(self.owners)


@attrs.frozen
class StateRecord:
    """An owner's current record for a key, as signed (``value is None``: deleted)."""

    owner: PeerId
    key: str
    value: bytes | None
    epoch: int
    sequence: int
    signed: bool
    """False only for this node's own records in the few milliseconds before they are signed."""


@attrs.frozen
class NodeStats:
    """Counters of one node since it started."""

    records_written: int
    batches_signed: int
    records_applied: int
    records_stale: int
    equivocations: int
    peers_rejected: int
    direct_dropped: int
    connections_opened: int
    errors_contained: int = 0
    """Errors caused by a peer's input (or by dialling an address a member gave) that ended one
    connection or one dial instead of the node."""
    members_evicted: int = 0
    """Members forgotten to make room for one that authenticated (the member table was full)."""
    owners_evicted: int = 0
    """Owners (not members) whose state was forgotten to make room (the owner table was full)."""
