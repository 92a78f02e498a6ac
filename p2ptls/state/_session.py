"""One member session on one logical stream of ``p2ptls/state/1`` (sans-IO).

Theory of operation
-------------------
A :class:`PeerSession` is one side of one state session with one member, as h11's ``Connection``
is one side of one HTTP/1.1 connection. It reads no clock and touches no stream: the node hands
it every message received with the time (:meth:`~PeerSession.receive_message_untrusted`) and gets
back *events*; it asks the session what to send whenever the stream can take more
(:meth:`~PeerSession.next_message`); it fires the session's timers when
:meth:`~PeerSession.next_deadline` passes (:meth:`~PeerSession.handle_timers`).

**Phases.** A session starts with our STATE_HELLO queued. The peer's first message must be its
STATE_HELLO, of our state network, within ``hello_timeout``: :class:`StateHelloReceived` tells the
node who is there, and the node decides whether to keep the session (one per member:
:func:`keeps_new`) and then :meth:`~PeerSession.start`\\ s it, which queues our DIGEST and the
members we know. From then on every message is handled in order, one at a time
(``protocol/SPEC-state.md`` §7, §9, §10), so a PONG sent after a message proves that message was
handled.

**Sending**, in this order: control messages (replies, digests, gossip), then direct messages of
the application, then update spans chosen round robin over owners by
:class:`~p2ptls.state._outbound.Outbound`, then, with nothing left to push, an acknowledgement
PING when a waiter wants one (see :meth:`~PeerSession.want_acknowledgement`).

**Events** tell the node what to do beyond this session: records that became current
(:class:`UpdatesApplied`), owners that advanced through this peer as a relay and that every
*other* session must push on (:class:`PushOn`), equivocation evidence, a proof that our own id
was used beyond what we published (:class:`OwnIdProven`), members gossiped (candidates to dial),
direct messages, acknowledgements, and the end of the session (:class:`SessionEnded`, with
``rejected`` set when the peer broke the protocol).

**Trust boundaries.** Everything a message claims goes through the replica core and the outbound
scheduler, whose tables are bounded (SPEC-state §12, §14). This session adds two: replies owed to
the peer (at most ``max_pending_requests``; a peer that asks without reading ends its session,
rejected) and acknowledgement pings in flight (at most :data:`MAX_ACK_PINGS`). Liveness is not
the session's: the shared connection under it pings the peer and fails every stream on it when
the peer goes silent.

Several sessions: :func:`keeps_new` decides which of two sessions with one member both ends keep,
and :class:`DigestRotation` which session sends the next digest while this node misses someone.
"""

from __future__ import annotations

import collections
import enum
import math
import os
import random
from collections.abc import Callable, Container, Hashable, Iterable, Sequence
from typing import Generic, TypeVar

import attrs

from .._errors import LocalProtocolError
from . import _wire as wire
from ._outbound import Outbound
from ._owners import Equivocation, OwnerId
from ._replica import ReplicaCore
from ._wire import NO_VERSION, Version
from .errors import StateProtocolError

T = TypeVar("T")
S = TypeVar("S")

MAX_ACK_PINGS = 4
"""Acknowledgement pings in flight per session; a newer one replaces the oldest."""


@attrs.frozen
class SessionConfig:
    """What a session needs of the node's configuration."""

    limits: wire.Limits
    message_budget: int = 1024 * 1024
    """Aim for update messages of about this many bytes."""
    max_pending_requests: int = 4096
    """Replies (and digests, gossip) queued for the peer before it counts as flooding."""
    anti_entropy_interval: float = 30.0
    """Seconds between digests on an open session."""
    hello_timeout: float = 10.0
    """Seconds the peer has to send its STATE_HELLO."""


# -- events ----------------------------------------------------------------------------------------


@attrs.frozen
class StateHelloReceived:
    """The peer's STATE_HELLO: keep the session (:meth:`PeerSession.start`) or close the stream."""

    incarnation: int
    address: wire.Address | None


@attrs.frozen
class UpdatesApplied:
    """An UPDATES message was handled (certificates and owners may have changed too)."""

    applied: tuple[wire.Record, ...]
    """Records that became current, in order."""
    stale: int
    """Records ignored: their version or a newer one was held."""
    evicted_owners: int
    """Owners forgotten to make room in the owner table."""


@attrs.frozen
class PushOn:
    """Owners that advanced through this peer as a relay (not their owner): every other session
    pushes them on."""

    owners: tuple[OwnerId, ...]


@attrs.frozen
class EquivocationFound:
    evidence: Equivocation


@attrs.frozen
class OwnIdProven:
    """A signature showed our own id used at ``version`` (see ``ReplicaCore.note_own_proof``)."""

    version: Version


@attrs.frozen
class MembersGossiped:
    """The peer claims these are members (candidates to dial, no more)."""

    members: tuple[wire.MemberInfo, ...]


@attrs.frozen
class DirectReceived:
    payload: bytes


@attrs.frozen
class Acknowledged:
    """The peer answered an acknowledgement ping: it says it holds our state up to ``version``."""

    version: Version


@attrs.frozen
class SessionEnded:
    reason: str
    rejected: bool
    """The peer broke the protocol (the node reports it); else the session only ended."""


SessionEvent = (
    StateHelloReceived
    | UpdatesApplied
    | PushOn
    | EquivocationFound
    | OwnIdProven
    | MembersGossiped
    | DirectReceived
    | Acknowledged
    | SessionEnded
)


@attrs.frozen
class Outgoing(Generic[T]):
    """One message to send; ``direct`` is the token of a direct message (signal it once sent)."""

    data: bytes
    direct: T | None = None


class Phase(enum.Enum):
    HELLO = "awaiting the peer's hello"
    OPEN = "open"
    ENDED = "ended"


class _Flooded(StateProtocolError):
    def __init__(self) -> None:
        super().__init__("the peer floods requests without reading")


class PeerSession(Generic[T]):
    """One side of one state session with the member ``peer`` (its id digest).

    ``hello`` is ours (sent first); ``opened_here`` says whether this side opened the logical
    stream; ``now`` starts the STATE_HELLO deadline. ``T`` is the type of the application's tokens
    for direct messages (handed back with the message when it is sent).
    """

    def __init__(
        self,
        core: ReplicaCore,
        peer: OwnerId,
        hello: wire.StateHello,
        config: SessionConfig,
        now: float,
        *,
        opened_here: bool,
        connection: Hashable | None = None,
        stream_id: int = 0,
        randomness: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.core = core
        self.peer = peer
        self.config = config
        self.opened_here = opened_here
        self.connection = connection
        """The shared connection the session's stream runs on (an opaque key: :func:`keeps_new`
        compares it with the host's current connection to the peer)."""
        self.stream_id = stream_id
        """The logical stream's id on that connection (both ends see the same one)."""
        self.phase = Phase.HELLO
        self.incarnation = 0
        """The peer's epoch, from its STATE_HELLO (it grows at every restart)."""
        self.outbound = Outbound(core, config.message_budget)
        self.control: collections.deque[bytes] = collections.deque([hello.encode()])
        self._directs: collections.deque[tuple[bytes, T]] = collections.deque()
        self.ack_target = NO_VERSION
        """The own version a waiter wants the peer to acknowledge."""
        self.ack_pings: dict[bytes, Version] = {}
        """Nonce of each acknowledgement ping in flight -> the own version it covers."""
        self.acked = NO_VERSION
        """The highest own version the peer acknowledged."""
        self.ended: SessionEnded | None = None
        self._hello_deadline = now + config.hello_timeout
        self._next_digest = math.inf
        self._randomness = randomness

    def __repr__(self) -> str:
        return f"<PeerSession {self.peer.hex()[:12]} {self.phase.value}>"

    # -- input -------------------------------------------------------------------------------------

    def receive_message_untrusted(self, data: bytes, now: float) -> list[SessionEvent]:
        """Handle one message from the peer. A message that breaks the protocol ends the session
        (:class:`SessionEnded` with ``rejected``); nothing of it is applied."""
        if self.ended is not None:
            return []
        try:
            message = wire.parse_message_untrusted(data, self.config.limits)
            if self.phase is Phase.HELLO:
                return [self._receive_hello(message)]
            return self._receive(message)
        except StateProtocolError as exc:
            return [self._end(str(exc), rejected=True)]

    def next_deadline(self) -> float:
        """When :meth:`handle_timers` has something to do."""
        if self.phase is Phase.HELLO:
            return self._hello_deadline
        return self._next_digest if self.phase is Phase.OPEN else math.inf

    def handle_timers(self, now: float) -> list[SessionEvent]:
        """The STATE_HELLO deadline, and a digest every ``anti_entropy_interval`` (anti-entropy)."""
        if self.phase is Phase.HELLO and now >= self._hello_deadline:
            return [self._end("no hello within the deadline", rejected=False)]
        if self.phase is Phase.OPEN and now >= self._next_digest:
            self._next_digest = now + self.config.anti_entropy_interval
            return self.send_digest()
        return []

    def start(self, now: float, members: Sequence[wire.MemberInfo]) -> None:
        """The node keeps this session: send our digest and the members we know."""
        if self.phase is not Phase.HELLO or self.ended is not None:
            raise LocalProtocolError(f"cannot start a session that is {self.phase.value}")
        self.phase = Phase.OPEN
        self.control.append(self._digest())
        step = wire.MAX_MEMBERS_PER_MESSAGE
        for first in range(0, len(members), step):
            self.control.append(wire.Members(tuple(members[first : first + step])).encode())
        self._next_digest = now + self.config.anti_entropy_interval

    def send_digest(self) -> list[SessionEvent]:
        """Queue a digest of what we hold: the peer pushes what we lack. Like every message
        queued for the peer, it ends a session that owes too many (:class:`SessionEnded`, with
        ``rejected``: the one event it can return)."""
        return self._queue_or_end(lambda: self._reply(self._digest()))

    def gossip(self, member: wire.MemberInfo) -> list[SessionEvent]:
        """Tell the peer of a member we just learned (returns as :meth:`send_digest`)."""
        encoded = wire.Members((member,)).encode()
        return self._queue_or_end(lambda: self._reply(encoded))

    def note_changed(self, owner: OwnerId) -> None:
        """We hold more of ``owner`` (our own publication, or a relay's update): push it if the
        peer lacks it."""
        self.outbound.note_changed(owner)

    def send_direct(self, payload: bytes, token: T) -> None:
        """Queue a direct message; :meth:`next_message` hands ``token`` back with it."""
        if self.ended is not None:
            raise LocalProtocolError("the session ended")
        self._directs.append((payload, token))

    def unsent_directs(self) -> list[T]:
        """Take the tokens of direct messages not sent (once the session ended)."""
        tokens = [token for _payload, token in self._directs]
        self._directs.clear()
        return tokens

    def want_acknowledgement(self, version: Version) -> None:
        """A waiter wants the peer to acknowledge our state up to ``version``: once nothing is
        left to push and the peer holds or was sent it, an acknowledgement PING goes out."""
        self.ack_target = max(self.ack_target, version)

    # -- output ------------------------------------------------------------------------------------

    @property
    def wants_to_send(self) -> bool:
        """Whether :meth:`next_message` may have something (cheap: a sender need not wake
        otherwise)."""
        if self.ended is not None:
            return False
        if self.control:
            return True
        return self.phase is Phase.OPEN and bool(
            self._directs or self.outbound.dirty or self._ack_due()
        )

    def next_message(self) -> Outgoing[T] | None:
        """The next message to send, or ``None`` until something changes."""
        if self.ended is not None:
            return None
        if self.control:
            return Outgoing(self.control.popleft())
        if self.phase is not Phase.OPEN:
            return None
        if self._directs:
            payload, token = self._directs.popleft()
            return Outgoing(wire.Direct(payload).encode(), token)
        updates = self.outbound.next_updates()
        if updates is not None:
            return Outgoing(updates.encode())
        if self._ack_due():
            return Outgoing(self._ack_ping())
        return None

    # -- handling ----------------------------------------------------------------------------------

    def _receive_hello(self, message: wire.Message) -> SessionEvent:
        if not isinstance(message, wire.StateHello):
            raise StateProtocolError("the first message must be a hello")
        if message.network_id != self.core.network:
            raise StateProtocolError("hello from another state network")
        self.incarnation = message.incarnation
        return StateHelloReceived(message.incarnation, message.address)

    def _receive(self, message: wire.Message) -> list[SessionEvent]:
        outbound = self.outbound
        if isinstance(message, wire.Updates):
            return self._receive_updates(message)
        if isinstance(message, wire.Digest):
            outbound.note_digest(message)
            pulls = outbound.pulls_to_send(self.core.wanted(message))
            if pulls:
                self._reply(wire.Pull(tuple(pulls)).encode())
        elif isinstance(message, wire.Pull):
            outbound.note_pull(message)
            if self.ack_pings and any(owner == self.core.own_id for owner, _ in message.entries):
                self.ack_pings.clear()  # it lacked our state: pings in flight prove nothing
        elif isinstance(message, wire.Members):
            return [MembersGossiped(message.members)]
        elif isinstance(message, wire.Direct):
            return [DirectReceived(message.payload)]
        elif isinstance(message, wire.Ping):
            self._reply(wire.Pong(message.nonce).encode())
        elif isinstance(message, wire.Pong):
            covered = self.ack_pings.pop(message.nonce, None)
            if covered is not None:
                self.acked = max(self.acked, covered)
                return [Acknowledged(self.acked)]
        else:
            raise StateProtocolError("unexpected hello")
        return []

    def _receive_updates(self, message: wire.Updates) -> list[SessionEvent]:
        outcome = self.core.receive_updates_untrusted(message, self.peer)
        self.outbound.note_received(outcome)
        events: list[SessionEvent] = [
            UpdatesApplied(tuple(outcome.applied), outcome.stale, len(outcome.evicted_owners))
        ]
        # Straight from its owner: not pushed on (the owner pushes to every member itself).
        relayed = tuple(owner for owner in outcome.advanced if owner != self.peer)
        if relayed:
            events.append(PushOn(relayed))
        events.extend(EquivocationFound(evidence) for evidence in outcome.equivocations)
        pulls = [
            (owner, since)
            for owner, since in sorted(outcome.gaps.items())
            if self.outbound.want_pull(owner, since)
        ]
        if pulls:
            self._reply(wire.Pull(tuple(pulls)).encode())
        if outcome.own_proven != NO_VERSION:
            events.append(OwnIdProven(outcome.own_proven))
        return events

    def _digest(self) -> bytes:
        """Our digest (the one place a digest is made: the peer pulls whatever it shows more of,
        so what it shows is remembered)."""
        digest = self.core.digest()
        self.outbound.note_digest_sent(digest)
        return digest.encode()

    def _reply(self, message: bytes) -> None:
        """Queue a control message; a peer owed too many ends its session."""
        if len(self.control) >= self.config.max_pending_requests:
            raise _Flooded
        self.control.append(message)

    def _queue_or_end(self, queue: Callable[[], None]) -> list[SessionEvent]:
        if self.phase is Phase.OPEN:
            try:
                queue()
            except _Flooded as exc:
                return [self._end(str(exc), rejected=True)]
        return []

    def _end(self, reason: str, *, rejected: bool) -> SessionEnded:
        self.phase = Phase.ENDED
        self.control.clear()
        self.ended = SessionEnded(reason, rejected)
        return self.ended

    # -- acknowledgements --------------------------------------------------------------------------

    def _ack_due(self) -> bool:
        """Whether an acknowledgement PING would prove what a waiter wants: the peer holds or was
        sent that version, and no PING in flight covers it already."""
        target = self.ack_target
        return (
            target > self.acked
            and self.outbound.belief.get(self.core.own_id, NO_VERSION) >= target
            and not any(covered >= target for covered in self.ack_pings.values())
        )

    def _ack_ping(self) -> bytes:
        if len(self.ack_pings) >= MAX_ACK_PINGS:
            del self.ack_pings[next(iter(self.ack_pings))]
        nonce = self._randomness(wire.NONCE_SIZE)
        self.ack_pings[nonce] = self.outbound.belief.get(self.core.own_id, NO_VERSION)
        return wire.Ping(nonce).encode()


def keeps_new(
    existing: PeerSession[T], new: PeerSession[T], own: OwnerId, *, current: Hashable | None = None
) -> bool:
    """Of two sessions with one member, whether both ends keep ``new`` (else ``existing``).

    ``current`` is the host's current connection to the member. Every rule uses only what both
    ends know, never the order in which this end happened to see the two sessions: the session
    from the member's newer run (higher incarnation) wins; between two of one run, the one whose
    logical stream was opened by the lower peer id; if the same side opened both, on one
    connection the one with the higher stream id (the newer: ids only grow), on two connections
    the one on the current connection (both hosts keep the same one, by the connection table's
    lower-peer-id rule). Only if neither is current does this end fall back to the one it saw
    last.
    """
    if existing.incarnation != new.incarnation:
        return new.incarnation > existing.incarnation
    if existing.opened_here != new.opened_here:
        opener = own if new.opened_here else new.peer
        return opener == min(own, new.peer)
    if existing.connection is not None and existing.connection == new.connection:
        return new.stream_id > existing.stream_id
    if current is not None and current in (existing.connection, new.connection):
        return new.connection == current
    return True


class DigestRotation(Generic[S]):
    """While this node misses a member, a candidate or an owner, one session after another sends
    a digest every ``interval`` seconds (jittered by ±50 %), so that what the owners it cannot
    reach write reaches it through the others (``protocol/SPEC-state.md`` §9)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._turn = 0

    def delay(self, interval: float) -> float:
        """Seconds until the next turn."""
        return interval * self._rng.uniform(0.5, 1.5)

    def choose(self, sessions: Sequence[S], missing: bool) -> S | None:
        """The session whose turn it is to send a digest, or ``None`` if none is needed."""
        if not sessions or not missing:
            return None
        chosen = sessions[self._turn % len(sessions)]
        self._turn += 1
        return chosen


def misses_someone(
    owners: Iterable[OwnerId],
    reached: Container[OwnerId],
    *,
    members_unreached: bool,
    candidates: bool,
) -> bool:
    """Whether a node misses someone: a member or candidate not connected, or an owner it holds
    that it has no session with (``reached`` includes the node itself)."""
    return members_unreached or candidates or any(owner not in reached for owner in owners)
