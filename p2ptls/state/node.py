"""The state node: replicated per-node key-value state over p2ptls secure streams (trio).

Theory of operation
-------------------
A :class:`StateNode` runs one p2ptls :class:`~p2ptls.Host` (admitting every peer that holds the
network key and its own private key), one SQLite store and the sans-IO
:class:`~p2ptls.state._replica.ReplicaCore`. Its tasks:

* **members** — one task per known member keeps one connection to it: it dials (with exponential
  backoff and jitter while the member is unreachable) and runs the connection. Incoming streams
  are run by the accept task. Both ends send ``HELLO`` first; a second connection to the same
  member is resolved the same way on both ends: the one from the member's newer incarnation wins,
  else the one dialled by the lower peer id, else the newer one.
* **a connection** — a reader task parses and applies every message (never blocking on a send:
  replies are queued for the sender task, and a peer that lets too many pile up is cut), a sender
  task writes queued control messages, direct messages and then update spans chosen round robin
  over owners by :class:`~p2ptls.state._replica.Outbound`, and a watchdog pings, sends a digest
  every ``anti_entropy_interval`` and closes a connection that stays silent past ``ping_timeout``.
  On every connection both ends send a digest; each pulls what it lacks (third parties' state
  included) and every update applied from one peer is pushed on to the others, so nodes that are
  never connected directly converge through those that are.
* **writes** — ``set`` stages a record in memory and wakes the **store** task, which writes every
  pending change in one transaction on a worker thread (group commit) and then acknowledges the
  writes; the **signer** task waits ``coalesce_delay`` (or ``max_batch`` records), signs one batch
  with the epoch's Ed25519 key, and the store task makes the batch durable before the own mark
  moves and the batch is offered to members.

**Acknowledgements** (:meth:`StateNode.wait_acknowledged`): once the sender has nothing left to
push and the member holds or was sent the version a waiter wants, it sends a PING whose nonce it
remembers with that version. A member reads its connection in order and answers a PING only
after it applied every message before it (asking with a PULL first if something was missing), so
the PONG proves the member holds that version, unless a PULL for our state came first.

A member whose connection ends is reported (:class:`~p2ptls.state.events.MemberChanged`) and its
state kept, marked stale, until it comes back. A peer that breaks the protocol (a bad signature
included) is disconnected and reported (:class:`~p2ptls.state.events.PeerRejected`); nothing from
that message is applied.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import math
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import trio

from .. import _errors
from .._util import open_service_nursery
from ..host import Host, HostConfig, open_host
from ..identity import PeerId, PeerRecord
from ..stream import SecureStream
from ..trust import admit_network_members
from . import _crypto
from . import _wire as wire
from ._membership import Candidate, Membership
from ._outbound import Outbound
from ._replica import ChangeSet, Equivocation, ReplicaCore
from ._store import StateStore, StoredMember
from .config import StateNodeConfig
from .errors import NotConnected, StateProtocolError, StateStoreError
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
    StateRecord,
    SubscriptionOverflowed,
)
from .proof import RecordProof

log = logging.getLogger("p2ptls.state")

_UNSPECIFIED_HOSTS = frozenset({"", "0.0.0.0", "::"})

Value = str | bytes | bytearray | memoryview
"""A value to store: bytes, or a ``str`` stored as its UTF-8 encoding (reads return bytes)."""

MAX_ACK_PINGS = 4
"""Acknowledgement pings in flight per connection; a newer one replaces the oldest."""

CANDIDATE_INTERVAL = 10.0
"""Longest time between looks at the gossiped candidates (they are also looked at whenever one
is gossiped or due to be dialled again)."""
CANDIDATE_DIALS = 64
"""Candidates dialled at once, at most."""
CANDIDATE_BATCH = 64
"""Candidates started per look (each waits for one of the ``CANDIDATE_DIALS`` slots)."""

PULL_INTERVAL = 0.5
"""Seconds (jittered by ±50 %) between the digests a node sends, one peer at a time in turn,
while some member it knows is not connected to it.

Records a node receives straight from their owner are not pushed on: members keep a connection
to every other member, so the owner's own push reaches each of them, and pushing on as well
would send every update N² times. A member that is not connected to some owner (a firewall, a
peer filter, a member that is down) asks for what it lacks instead: its digest makes the peer
push every owner it holds more of. Records received from another relay are pushed on at once
(they travel a path the owner's push did not)."""

HANDSHAKE_WARN_AFTER = 3
"""Failed handshakes in a row, on this node's own dials to a member, before a warning is logged
(then again each time the count doubles). Most often the two use different network keys."""


class _Subscriber:
    __slots__ = ("buffer", "send", "types")

    def __init__(
        self, send: trio.MemorySendChannel[Any], types: tuple[type, ...], buffer: int
    ) -> None:
        self.send = send
        self.types = types
        self.buffer = buffer


class _Direct:
    __slots__ = ("done", "error", "payload")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.done = trio.Event()
        self.error: BaseException | None = None


class _Peer:
    """One registered connection to a member."""

    def __init__(
        self,
        node: StateNode,
        stream: SecureStream,
        peer_id: PeerId,
        *,
        initiator: bytes,
        incarnation: int,
    ) -> None:
        self.stream = stream
        self.peer_id = peer_id
        self.initiator = initiator
        self.incarnation = incarnation
        self.outbound = Outbound(node._core, node.config.message_budget)
        self.control: collections.deque[bytes] = collections.deque()
        self.directs: collections.deque[_Direct] = collections.deque()
        self.wake = trio.Event()
        self.ended = trio.Event()
        self.scope = trio.CancelScope()
        self.failure: BaseException | None = None
        self.last_received = trio.current_time()
        self.ack_target = wire.NO_VERSION
        """The own version a ``wait_acknowledged`` call wants this member to prove it holds."""
        self.ack_pings: dict[bytes, wire.Version] = {}
        """Nonce of each acknowledgement ping in flight -> the own version it covers."""
        self.acked = wire.NO_VERSION
        """The highest own version this member acknowledged (its PONG to an ack ping)."""

    def kick(self) -> None:
        self.wake.set()

    def close(self) -> None:
        self.scope.cancel()


class _Member:
    def __init__(self, record: PeerRecord, address: tuple[str, int] | None) -> None:
        self.record = record
        self.address = address
        self.state = MemberState.UNKNOWN
        self.since = time.time()
        self.incarnation = 0
        self.peer: _Peer | None = None
        self.poke = trio.Event()
        self.backoff = 0.0
        self.handshake_failures = 0
        """Handshakes of this node's own dials to the member that failed in a row."""
        self.last_handshake_failure: float | None = None
        self.warn_at = HANDSHAKE_WARN_AFTER
        self.scope = trio.CancelScope()
        """Cancelled when the member is evicted from the member table."""


class StateNode:
    """A running state node. Create with :func:`open_state_node`.

    Reads (:meth:`get`, :meth:`snapshot`, :meth:`consensus`, :meth:`members`) are synchronous and
    local: no I/O. Writes (:meth:`set`, :meth:`delete`, :meth:`update`) return once durable.
    Every method must be called from the trio thread that runs the node (see the module
    ``p2ptls.state`` for running a node in a background thread).
    """

    def __init__(
        self,
        config: StateNodeConfig,
        host: Host,
        store: StateStore,
        core: ReplicaCore,
        nursery: trio.Nursery,
    ) -> None:
        self.config = config
        self.host = host
        self._store = store
        self._core = core
        self._nursery = nursery
        self._limits = config.limits
        self._db_limiter = trio.CapacityLimiter(1)
        self._members: dict[PeerId, _Member] = {}
        """Verified members (see ``_membership``), each with a task keeping a connection."""
        self._membership = Membership(
            config.identity.peer_id.digest,
            max_members=config.max_members,
            max_candidates=config.max_member_candidates,
            candidates_per_source=config.member_candidates_per_source,
            candidate_ttl=config.member_candidate_ttl,
            retry_delay=config.reconnect_min,
            max_retry_delay=config.reconnect_max,
        )
        self._candidate_wake = trio.Event()
        self._peers: dict[PeerId, _Peer] = {}
        self._subscribers: list[_Subscriber] = []
        self._store_wake = trio.Event()
        self._sign_wake = trio.Event()
        self._changed = trio.Event()
        self._durable_waiters: list[tuple[wire.Version, trio.Event]] = []
        self._pending_local: collections.deque[wire.Record] = collections.deque()
        self._pending_members: dict[bytes, StoredMember | None] = {}
        self._rotate_above: wire.Version | None = None
        self._direct_send, self._direct_receive = trio.open_memory_channel[DirectMessage](
            config.direct_buffer
        )
        self._counters: collections.Counter[str] = collections.Counter()
        self._closed = False
        self.pull_interval = PULL_INTERVAL
        """Seconds between digests while a member is not connected; see :data:`PULL_INTERVAL`."""

    # -- identity and addresses -----------------------------------------------------------------

    @property
    def peer_id(self) -> PeerId:
        """This node's id (the owner id of its state)."""
        return self.config.identity.peer_id

    @property
    def network_id(self) -> bytes:
        return self._core.network

    @property
    def epoch(self) -> int:
        """The epoch this run writes in (a new one at every start)."""
        return self._core.epoch

    @property
    def address(self) -> tuple[str, int] | None:
        """Where this node tells members to reach it, if it listens."""
        if self.config.advertise is not None:
            return self.config.advertise
        if not self.host.listeners:
            return None
        return self.host.address

    def peer_record(self, name: str = "") -> PeerRecord:
        """This node's public record with its address: give it to others as a bootstrap entry."""
        return self.config.identity.peer_record(name=name or self.config.name, address=self.address)

    # -- writing --------------------------------------------------------------------------------

    async def set(self, key: str, value: Value) -> None:
        """Set ``key`` of this node's state; returns once the write is durable locally.

        ``value`` is bytes, or a ``str`` stored as its UTF-8 encoding; reads (:meth:`get`)
        always return bytes. Anything else raises ``TypeError``.

        Members receive it within about ``coalesce_delay`` plus a round trip. If the call is
        cancelled while waiting, the write still happens (like a write whose acknowledgement was
        lost).
        """
        await self.update({key: value})

    async def delete(self, key: str) -> None:
        """Delete ``key``: a signed tombstone replaces it everywhere (written even if this node
        holds no value for it, so it also removes a key others still hold from a lost store).
        Returns once durable locally."""
        await self.update({key: None})

    async def update(self, changes: Mapping[str, Value | None]) -> None:
        """Set several keys at once (``None`` deletes; a ``str`` is stored as UTF-8); one
        durable write, returns when done."""
        if self._closed:
            raise trio.ClosedResourceError("the state node is closed")
        checked = [(_check_key(key), _check_value(value)) for key, value in changes.items()]
        for _key, value in checked:
            if value is not None and len(value) > self.config.max_value_size:
                raise ValueError(
                    f"value of {len(value)} bytes exceeds max_value_size "
                    f"({self.config.max_value_size})"
                )
        if not checked:
            await trio.lowlevel.checkpoint()
            return
        last = wire.NO_VERSION
        for key, value in checked:
            record = self._core.stage(key, value)
            self._pending_local.append(record)
            last = record.version
        self._counters["records_written"] += len(checked)
        self._store_now()
        await self._wait_durable(last)

    async def _wait_durable(self, version: wire.Version) -> None:
        if self._core.durable_version >= version:
            await trio.lowlevel.checkpoint()
            return
        done = trio.Event()
        self._durable_waiters.append((version, done))
        await done.wait()

    # -- reading --------------------------------------------------------------------------------

    def get(self, owner: PeerId, key: str, default: bytes | None = None) -> bytes | None:
        """The value ``owner`` holds for ``key`` as this node knows it (local, no I/O), as bytes
        (``.decode()`` a value written as ``str``). Another owner's write may not have arrived
        yet: :meth:`wait_for` waits for it."""
        record = self._core.get(owner.digest, key)
        if record is None or record.value is None:
            return default
        return record.value

    def record(self, owner: PeerId, key: str) -> StateRecord | None:
        """The current signed record (who wrote what, at which version), or ``None``."""
        found = self._core.current(owner.digest, key)
        if found is None:
            return None
        record, signed = found
        return StateRecord(owner, key, record.value, record.epoch, record.seq, signed)

    def proof(self, owner: PeerId, key: str) -> RecordProof | None:
        """The record's exact bytes with its batch and epoch certificate: anyone holding the
        network id can check who wrote it (:meth:`RecordProof.verify`). ``None`` if there is no
        such record, or it is one of our own writes not published yet."""
        record = self._core.get(owner.digest, key)
        state = self._core.owners.get(owner.digest)
        entry = state.entries.get(key) if state is not None else None
        if record is None or state is None or entry is None or entry.record is not record:
            return None
        assert entry.proof is not None  # published records are signed
        batch = entry.proof.batch
        certificate = state.certs[batch.epoch].certificate
        return RecordProof(record.raw, batch.encode(), certificate.encode())

    def snapshot(self, owner: PeerId | None = None) -> dict[str, bytes]:
        """All live keys of ``owner`` (default: this node) as this node knows them."""
        return self._core.values((owner or self.peer_id).digest)

    def owners(self) -> tuple[PeerId, ...]:
        """Every owner whose state this node holds (itself included)."""
        return tuple(PeerId(owner) for owner in self._core.owners)

    def version(self, owner: PeerId) -> tuple[int, int]:
        """The highest ``(epoch, sequence)`` of ``owner`` held here (``(0, 0)``: none)."""
        return self._core.mark(owner.digest)

    def consensus(self, key: str) -> tuple[ConsensusEntry, ...]:
        """The values different owners hold for ``key``, most widely held first.

        Each entry lists the owners that hold that value (ties: by value bytes). Stale owners
        count with their last known state; see :meth:`members` to tell them apart.
        """
        holders: dict[bytes, list[PeerId]] = {}
        for owner, value in self._core.keys_with(key):
            holders.setdefault(value, []).append(PeerId(owner))
        ranked = sorted(holders.items(), key=lambda item: (-len(item[1]), item[0]))
        return tuple(ConsensusEntry(value, tuple(sorted(ids))) for value, ids in ranked)

    def members(self) -> tuple[MemberStatus, ...]:
        """Every known member (not this node) and whether it is connected or stale."""
        return tuple(self._status(member) for member in self._members.values())

    def member(self, peer_id: PeerId) -> MemberStatus | None:
        member = self._members.get(peer_id)
        return self._status(member) if member is not None else None

    def _status(self, member: _Member) -> MemberStatus:
        return MemberStatus(
            member.record.peer_id,
            member.address,
            member.state,
            member.since,
            member.incarnation,
            self._core.mark(member.record.peer_id.digest),
            member.handshake_failures,
            member.last_handshake_failure,
        )

    @property
    def stats(self) -> NodeStats:
        c = self._counters
        return NodeStats(
            records_written=c["records_written"],
            batches_signed=c["batches_signed"],
            records_applied=c["records_applied"],
            records_stale=c["records_stale"],
            equivocations=c["equivocations"],
            peers_rejected=c["peers_rejected"],
            direct_dropped=c["direct_dropped"],
            connections_opened=c["connections_opened"],
            errors_contained=c["errors_contained"],
            members_evicted=c["members_evicted"],
            owners_evicted=c["owners_evicted"],
        )

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` is true; it is checked after every change of state or
        membership. Combine with ``trio.fail_after`` for a deadline."""
        while not predicate():
            if self._closed:
                raise trio.ClosedResourceError("the state node is closed")
            await self._changed.wait()

    async def wait_for(self, owner: PeerId, key: str, value: Value | None = None) -> bytes:
        """Wait until this node holds ``key`` of ``owner`` (equal to ``value``, if given) and
        return it. Combine with ``trio.fail_after`` for a deadline."""
        expected = _check_value(value)

        def ready() -> bool:
            held = self.get(owner, key)
            return held is not None and (expected is None or held == expected)

        await self.wait_until(ready)
        found = self.get(owner, key)
        assert found is not None
        return found

    async def wait_acknowledged(self, peer_id: PeerId) -> bool:
        """Wait until the member ``peer_id`` acknowledges every write this node made before
        the call (its PONG to a PING sent after them; see the module docs), and return True.

        An honest member applies messages in order, so its PONG means it holds the writes; a
        hostile member could answer without storing them: this is a delivery signal, not a proof.

        Returns False if the member is not connected, or its connection ends first (it gets the
        writes when it is back). Combine with ``trio.fail_after`` for a deadline.
        """
        core = self._core
        target = core.staged_version
        await self.wait_until(lambda: core.mark(core.own_id) >= target)  # signed and published
        while True:
            peer = self._peers.get(peer_id)
            if peer is None:
                return False
            if peer.acked >= target:
                return True
            if self._closed:
                raise trio.ClosedResourceError("the state node is closed")
            if peer.ack_target < target:
                peer.ack_target = target
                peer.kick()
            await self._changed.wait()

    def _ack_due(self, peer: _Peer) -> bool:
        """(sender, with nothing left to push) Whether an acknowledgement PING would prove what
        a waiter wants: the member holds or was sent that version, and no PING in flight
        covers it already."""
        target = peer.ack_target
        return (
            target > peer.acked
            and peer.outbound.belief.get(self._core.own_id, wire.NO_VERSION) >= target
            and not any(covered >= target for covered in peer.ack_pings.values())
        )

    def _ack_ping(self, peer: _Peer) -> bytes:
        """(sender) An acknowledgement PING covering what the peer holds or was sent."""
        if len(peer.ack_pings) >= MAX_ACK_PINGS:
            del peer.ack_pings[next(iter(peer.ack_pings))]
        nonce = os.urandom(wire.NONCE_SIZE)
        peer.ack_pings[nonce] = peer.outbound.belief.get(self._core.own_id, wire.NO_VERSION)
        return wire.Ping(nonce).encode()

    # -- events ---------------------------------------------------------------------------------

    def subscribe(
        self, *event_types: type, buffer: int | None = None
    ) -> trio.MemoryReceiveChannel[Any]:
        """A channel of events from now on: :class:`StateChanged` unless other types are given
        (any of ``StateChanged``, ``MemberChanged``, ``EquivocationDetected``, ``PeerRejected``).

        A subscriber that falls more than ``buffer`` events behind (default
        ``config.subscriber_buffer``) receives :class:`SubscriptionOverflowed` and then the end of
        the channel; close the channel to unsubscribe.
        """
        size = buffer if buffer is not None else self.config.subscriber_buffer
        if size < 1:
            raise ValueError("buffer must be at least 1")
        send, receive = trio.open_memory_channel[Any](size + 1)
        self._subscribers.append(_Subscriber(send, event_types or (StateChanged,), size))
        return receive

    def _emit(self, event: object) -> None:
        for subscriber in list(self._subscribers):
            if not isinstance(event, subscriber.types):
                continue
            try:
                if subscriber.send.statistics().current_buffer_used >= subscriber.buffer:
                    subscriber.send.send_nowait(SubscriptionOverflowed())
                    subscriber.send.close()
                    self._subscribers.remove(subscriber)
                else:
                    subscriber.send.send_nowait(event)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(subscriber)  # the receiver went away

    def _note_changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- direct messages ------------------------------------------------------------------------

    @property
    def direct_messages(self) -> trio.MemoryReceiveChannel[DirectMessage]:
        """Direct messages sent to this node (one shared channel; clone it for several readers).

        When ``config.direct_buffer`` messages wait unread, further ones are dropped and counted
        (``stats.direct_dropped``).
        """
        return self._direct_receive

    async def send_to(self, peer_id: PeerId, payload: bytes | bytearray | memoryview) -> None:
        """Send one message to a connected member; returns once it is written to the stream.

        Raises :class:`NotConnected` if there is no connection to it or it breaks first.
        """
        if self._closed:
            raise trio.ClosedResourceError("the state node is closed")
        data = bytes(payload)
        if len(data) > self.config.max_direct_size:
            raise ValueError("payload exceeds max_direct_size")
        peer = self._peers.get(peer_id)
        if peer is None:
            raise NotConnected(f"not connected to {peer_id.short}")
        item = _Direct(data)
        peer.directs.append(item)
        peer.kick()
        await item.done.wait()
        if item.error is not None:
            raise NotConnected(f"connection to {peer_id.short} ended") from item.error

    # -- membership control ---------------------------------------------------------------------

    def add_member(self, record: PeerRecord) -> None:
        """Learn a member (with its address) and keep a connection to it."""
        self._learn(record.public_key_der, record.address, authoritative=True)

    def disconnect(self, peer_id: PeerId) -> None:
        """Close the connection to ``peer_id`` (it will be dialled again after the backoff)."""
        peer = self._peers.get(peer_id)
        if peer is not None:
            peer.close()

    def retry_now(self) -> None:
        """Dial every unconnected member at once (resets the backoff), e.g. after the
        ``peer_filter`` changed or the network came back."""
        for member in self._members.values():
            member.backoff = 0.0
            member.poke.set()

    def _allowed(self, peer_id: PeerId) -> bool:
        check = self.config.peer_filter
        return check is None or check(peer_id)

    def _learn(
        self, der: bytes, address: tuple[str, int] | None, *, authoritative: bool
    ) -> _Member | None:
        try:
            record = PeerRecord.from_public_key(der, address=address)
        except ValueError:
            return None
        peer_id = record.peer_id
        if peer_id == self.peer_id:
            return None
        connected = {peer.digest for peer in self._peers}
        for evicted in self._membership.admit(peer_id.digest, trio.current_time(), connected):
            self._evict_member(PeerId(evicted))
        member = self._members.get(peer_id)
        if member is None:
            member = _Member(record, address)
            self._members[peer_id] = member
            self._core.protect(peer_id.digest)
            self._nursery.start_soon(self._run_member, member)
            self._save_member(member)
            self._emit(MemberChanged(self._status(member)))
            self._note_changed()
            gossip = wire.Members((wire.MemberInfo(der, address),)).encode()
            for peer in self._peers.values():
                if peer.peer_id != peer_id:
                    self._queue(peer, gossip)
        elif (
            address is not None
            and (authoritative or member.address is None)
            and member.address != address
        ):
            member.address = address
            member.record = record
            self._save_member(member)
            member.poke.set()
        return member

    def _evict_member(self, peer_id: PeerId) -> None:
        """Make room in a full member table: forget ``peer_id`` and close its connection."""
        member = self._members.pop(peer_id, None)
        self._membership.forget(peer_id.digest)
        if member is None:
            return
        log.info("member table full: forgetting %s", peer_id.short)
        self._counters["members_evicted"] += 1
        member.scope.cancel()
        if member.peer is not None:
            member.peer.close()
        self._core.unprotect(peer_id.digest)
        self._pending_members[peer_id.digest] = None
        self._store_wake.set()

    def _gossiped(self, peer: _Peer, info: wire.MemberInfo) -> None:
        """A member claims another is a member at some address: a candidate to dial, no more
        (see ``_membership``)."""
        digest = PeerId.for_public_key(info.public_key_der).digest
        known = self._members.get(PeerId(digest))
        if known is not None and known.peer is not None:
            return  # connected: its own hello said where it is
        if self._membership.gossiped(
            peer.peer_id.digest,
            digest,
            info.public_key_der,
            info.address,
            trio.current_time(),
            known_address=known.address if known is not None else None,
        ):
            self._candidate_wake.set()

    async def _candidate_loop(self) -> None:
        """Dial gossiped candidates (a few at a time, each a few times with backoff); a
        completed handshake makes one a verified member."""
        limiter = trio.CapacityLimiter(CANDIDATE_DIALS)
        while True:
            now = trio.current_time()
            for digest, candidate in self._membership.due(now, CANDIDATE_BATCH):
                member = self._members.get(PeerId(digest))
                if member is None or member.peer is None:
                    self._nursery.start_soon(self._dial_candidate, candidate, limiter)
                else:
                    self._membership.candidates.pop(digest)  # connected meanwhile
            # Expired candidates are dropped at the next look, at the latest after the TTL.
            wake_at = min(self._membership.next_due() or math.inf, now + CANDIDATE_INTERVAL)
            with trio.move_on_at(wake_at):
                await self._candidate_wake.wait()
            self._candidate_wake = trio.Event()

    async def _dial_candidate(self, candidate: Candidate, limiter: trio.CapacityLimiter) -> None:
        try:
            record = PeerRecord.from_public_key(candidate.public_key_der, address=candidate.address)
            if not self._allowed(record.peer_id):
                return
            stream: SecureStream | None = None
            async with limiter:
                member = self._members.get(record.peer_id)
                if member is not None and member.peer is not None:
                    return  # it connected (or we did) while this dial waited for its turn
                with trio.move_on_after(self.config.connect_timeout):
                    try:
                        stream = await self.host.connect(record, candidate.address)
                    except (
                        OSError,
                        trio.BrokenResourceError,
                        trio.ClosedResourceError,
                        _errors.ProtocolError,
                    ) as exc:
                        log.debug("candidate %s failed: %r", record.peer_id.short, exc)
                        return
            if stream is not None:
                await self._serve_stream(stream, _Member(record, candidate.address))
        except Exception:
            # Whatever a made-up candidate (its key, its address) causes stays here.
            log.exception("dialling a gossiped candidate failed")
            self._counters["errors_contained"] += 1
        finally:
            self._membership.dial_ended(candidate, trio.current_time())
            self._candidate_wake.set()

    async def _run_member(self, member: _Member) -> None:
        """Keep a connection to ``member`` until it is evicted; an error reached by what a
        member sent (an address, a key) ends one attempt, never the node."""
        with member.scope:
            while True:
                try:
                    await self._maintain(member)
                except Exception as exc:
                    expected = isinstance(exc, _errors.ProtocolError | ValueError)
                    log.warning(
                        "connecting to %s failed: %r",
                        member.record.peer_id.short,
                        exc,
                        exc_info=not expected,
                    )
                    self._counters["errors_contained"] += 1
                    config = self.config
                    member.backoff = min(
                        max(member.backoff * 2, config.reconnect_min), config.reconnect_max
                    )
                    await trio.sleep(member.backoff * random.uniform(0.5, 1.0))

    def _save_member(self, member: _Member) -> None:
        self._pending_members[member.record.peer_id.digest] = StoredMember(
            member.record.public_key_der, member.address
        )
        self._store_wake.set()

    def _set_state(self, member: _Member, state: MemberState) -> None:
        if member.state is not state:
            member.state = state
            member.since = time.time()
            self._emit(MemberChanged(self._status(member)))
            self._note_changed()

    # -- background tasks -----------------------------------------------------------------------

    def _start(self, members: list[StoredMember]) -> None:
        for stored in members:
            self._learn(stored.public_key_der, stored.address, authoritative=False)
        for record in self.config.bootstrap:
            self._learn(record.public_key_der, record.address, authoritative=True)
        self._nursery.start_soon(self._store_loop)
        self._nursery.start_soon(self._sign_loop)
        self._nursery.start_soon(self._pull_loop)
        self._nursery.start_soon(self._candidate_loop)
        if self.host.listeners:
            self._nursery.start_soon(self._accept_loop)
        self._store_wake.set()  # the new epoch's certificate and any records issued again

    async def _store_loop(self) -> None:
        core = self._core
        while True:
            await self._store_wake.wait()
            self._store_wake = trio.Event()
            changes = core.take_changes()
            members = list(self._pending_members.items())
            self._pending_members = {}
            if changes.empty and not members:
                continue
            await self._apply(changes, members)
            self._committed(changes)

    def _committed(self, changes: ChangeSet) -> None:
        """``changes`` are stored: acknowledge own writes and offer published batches."""
        core = self._core
        if changes.durable_through is not None:
            self._note_durable(changes.durable_through)
        if changes.published_through is not None and core.publish(changes.published_through):
            for peer in self._peers.values():
                peer.outbound.note_changed(core.own_id)
                peer.kick()
            self._note_changed()  # wait_acknowledged waits for publication

    def _store_now(self) -> None:
        """A node without a database file has nothing to write (see :meth:`_apply`): commit
        its own writes and batches in place instead of waking the store task."""
        if self._store.persistent:
            self._store_wake.set()
            return
        self._pending_members = {}
        self._committed(self._core.take_changes())

    async def _apply(
        self, changes: ChangeSet, members: list[tuple[bytes, StoredMember | None]]
    ) -> None:
        """Write one group commit on a worker thread.

        A node without a database file (``database=None``) skips the write: its in-memory store
        is only read once, when the node opens (empty then), so a copy of what the replica core
        holds would cost two thread hops and a transaction per write and be read by nobody.
        Its epoch counter still lives there (``next_epoch``).
        """
        if self._store.persistent:
            await trio.to_thread.run_sync(
                self._store.apply, changes, members, limiter=self._db_limiter
            )
        else:
            await trio.lowlevel.checkpoint()

    def _note_durable(self, version: wire.Version) -> None:
        self._core.note_durable(version)
        self._sign_wake.set()
        own = self.peer_id
        while self._pending_local and self._pending_local[0].version <= version:
            record = self._pending_local.popleft()
            self._emit(StateChanged(own, record.key, record.value, record.epoch, record.seq, True))
        still = []
        for waiting, done in self._durable_waiters:
            if waiting <= version:
                done.set()
            else:
                still.append((waiting, done))
        self._durable_waiters = still
        self._note_changed()

    async def _sign_loop(self) -> None:
        core = self._core
        config = self.config
        while True:
            await self._sign_wake.wait()
            self._sign_wake = trio.Event()
            if self._rotate_above is not None:
                await self._rotate()
            while core.unsigned_durable:
                if core.unsigned_durable < config.max_batch and config.coalesce_delay > 0:
                    await trio.sleep(config.coalesce_delay)
                if core.sign_pending(config.max_batch) is not None:
                    self._counters["batches_signed"] += 1
                    self._store_now()

    async def _rotate(self) -> None:
        """Our id is held elsewhere at versions we do not have (our store was lost or rolled
        back): write from a new epoch above them, issuing every own record again."""
        seen = self._rotate_above
        assert seen is not None
        self._rotate_above = None
        log.warning(
            "%s: other nodes hold our state (signed) at epoch %d; moving to a newer epoch",
            self.peer_id.short,
            seen[0],
        )
        try:
            epoch = await trio.to_thread.run_sync(
                self._store.next_epoch,
                max(seen[0], self._core.epoch) + 1,
                limiter=self._db_limiter,
            )
            signer = await trio.to_thread.run_sync(
                _crypto.EpochSigner.create, self.config.identity, self._core.network, epoch
            )
            self._core.begin_epoch(signer, reissue_all=True)
        except (StateStoreError, ValueError) as exc:
            # Only our own key can prove such an epoch; still, keep writing in the current one.
            log.error("%s: cannot move to a newer epoch: %s", self.peer_id.short, exc)
            self._counters["errors_contained"] += 1
            return
        self._store_wake.set()

    def _check_own(self, proven: wire.Version) -> None:
        """``proven``: a version of our own id that a signature showed (never a mere claim)."""
        if self._core.note_own_proof(proven) and (
            self._rotate_above is None or proven > self._rotate_above
        ):
            self._rotate_above = proven
            self._sign_wake.set()

    async def _accept_loop(self) -> None:
        async for stream in self.host.incoming():
            self._nursery.start_soon(self._serve_stream, stream, None)

    async def _maintain(self, member: _Member) -> None:
        """Keep one connection to ``member``: dial when it is not connected, with backoff."""
        config = self.config
        while True:
            if member.peer is not None:
                await member.peer.ended.wait()
                member.backoff = 0.0
                continue
            member.poke = trio.Event()
            if member.address is not None and self._allowed(member.record.peer_id):
                await self._dial(member)
                if member.peer is not None:
                    continue
                member.backoff = min(
                    max(member.backoff * 2, config.reconnect_min), config.reconnect_max
                )
                with trio.move_on_after(member.backoff * random.uniform(0.5, 1.0)):
                    await member.poke.wait()
            else:
                await member.poke.wait()

    async def _dial(self, member: _Member) -> None:
        address = member.address
        assert address is not None
        stream: SecureStream | None = None
        with trio.move_on_after(self.config.connect_timeout):
            try:
                stream = await self.host.connect(member.record, address)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.debug("dial %s at %s failed: %r", member.record.peer_id.short, address, exc)
                if isinstance(exc.__cause__, _errors.HandshakeFailed | _errors.PeerRefused):
                    self._handshake_failed(member, address)
                return
        if stream is None:
            return
        member.handshake_failures = 0
        member.last_handshake_failure = None
        member.warn_at = HANDSHAKE_WARN_AFTER
        await self._serve_stream(stream, member)

    def _handshake_failed(self, member: _Member, address: tuple[str, int]) -> None:
        """Count a failed handshake of our own dial. Only what our dials saw is reported, and
        nothing changes on the wire: the failure stays the one generic ``HandshakeFailed``."""
        member.handshake_failures += 1
        member.last_handshake_failure = time.time()
        if member.handshake_failures >= member.warn_at:
            member.warn_at *= 2
            log.warning(
                "handshakes with member %s at %s:%d failed %d times in a row: check that both "
                "nodes use the same network key (compare `p2ptls psk show`) and that its "
                "peer record is current",
                member.record.peer_id.short,
                *address,
                member.handshake_failures,
            )
        self._note_changed()

    # -- one connection -------------------------------------------------------------------------

    async def _serve_stream(self, stream: SecureStream, dialled: _Member | None) -> None:
        """Run one verified stream: hello, register, then reader, sender and watchdog."""
        peer: _Peer | None = None
        try:
            remote = stream.remote_peer
            if remote.peer_id == self.peer_id or not self._allowed(remote.peer_id):
                return
            hello = wire.Hello(self._core.network, self._core.epoch, self.address)
            with trio.fail_after(self.config.connect_timeout):
                await stream.send_message(hello.encode())
                first = wire.parse_message_untrusted(await stream.receive_message(), self._limits)
            if not isinstance(first, wire.Hello):
                raise StateProtocolError("the first message must be a hello")
            if first.network_id != self._core.network:
                raise StateProtocolError("hello from another state network")
            address = self._observed(stream, first.address)
            member = self._learn(remote.public_key_der, address, authoritative=True)
            if member is None:
                return  # the member table is full
            initiator = self.peer_id if dialled is not None else remote.peer_id
            peer = _Peer(
                self,
                stream,
                remote.peer_id,
                initiator=initiator.digest,
                incarnation=first.incarnation,
            )
            if not self._allowed(remote.peer_id) or not self._register(member, peer):
                peer = None  # refused meanwhile (peer_filter changed during the hello), or lost
                return
            self._counters["connections_opened"] += 1
            with peer.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._guard, peer, self._reader)
                    nursery.start_soon(self._guard, peer, self._sender)
                    nursery.start_soon(self._guard, peer, self._watchdog)
            if isinstance(peer.failure, StateProtocolError):
                self._reject(stream, str(peer.failure))
        except StateProtocolError as exc:
            self._reject(stream, str(exc))
        except _errors.ProtocolError as exc:
            log.info("connection ended: %s", exc)
        except (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            trio.EndOfChannel,
            trio.TooSlowError,
        ) as exc:
            log.debug("connection ended: %r", exc)
        except Exception:
            # A bug reached by one peer's input ends that connection, never the node.
            log.exception("unexpected error setting up a connection")
            self._counters["errors_contained"] += 1
        finally:
            if peer is not None:
                self._unregister(peer)
            self.host.forget(stream)
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                await stream.aclose()

    async def _guard(self, peer: _Peer, task: Callable[[_Peer], Awaitable[None]]) -> None:
        """Run one of a connection's tasks; whatever ends it ends the whole connection."""
        try:
            await task(peer)
        except StateProtocolError as exc:
            peer.failure = exc
        except (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            trio.BusyResourceError,
            _errors.ProtocolError,
        ) as exc:
            if peer.failure is None:
                peer.failure = exc
        except Exception as exc:
            # A bug reached by one peer's input must not take the node down: log it with its
            # traceback and drop only that connection.
            log.exception("unexpected error on the connection to %s", peer.peer_id.short)
            self._counters["errors_contained"] += 1
            if peer.failure is None:
                peer.failure = exc
        finally:
            peer.close()

    def _reject(self, stream: SecureStream, reason: str) -> None:
        try:
            peer_id = stream.remote_peer.peer_id
        except trio.NeedHandshakeError:
            return
        log.warning("disconnecting %s: %s", peer_id.short, reason)
        self._counters["peers_rejected"] += 1
        self._emit(PeerRejected(peer_id, reason))

    def _observed(
        self, stream: SecureStream, advertised: tuple[str, int] | None
    ) -> tuple[str, int] | None:
        """The member's address: as it advertises it, with an unspecified host replaced by the
        address its connection comes from."""
        if advertised is None or advertised[0] not in _UNSPECIFIED_HOSTS:
            return advertised
        socket = getattr(stream.transport_stream, "socket", None)
        if socket is None:
            return None
        try:
            host = str(socket.getpeername()[0])
            ipaddress.ip_address(host)
        except (OSError, ValueError):
            return None
        return (host, advertised[1])

    def _register(self, member: _Member, peer: _Peer) -> bool:
        existing = self._peers.get(peer.peer_id)
        if existing is not None:
            if existing.incarnation != peer.incarnation:
                keep_new = peer.incarnation > existing.incarnation
            elif existing.initiator != peer.initiator:
                lower = min(self.peer_id.digest, peer.peer_id.digest)
                keep_new = peer.initiator == lower
            else:
                keep_new = True  # the same side dialled again: it gave the old one up
            if not keep_new:
                return False
            self._peers.pop(existing.peer_id)
            existing.close()
            existing.ended.set()
        self._peers[peer.peer_id] = peer
        member.peer = peer
        member.incarnation = peer.incarnation
        member.backoff = 0.0
        self._set_state(member, MemberState.CONNECTED)
        self._note_changed()  # a new connection to a member that was connected (waiters)
        return True

    def _unregister(self, peer: _Peer) -> None:
        for item in peer.directs:
            item.error = NotConnected("connection ended")
            item.done.set()
        peer.directs.clear()
        if self._peers.get(peer.peer_id) is peer:
            del self._peers[peer.peer_id]
            member = self._members.get(peer.peer_id)
            if member is not None and member.peer is peer:
                member.peer = None
                self._set_state(member, MemberState.UNREACHABLE)
        peer.ended.set()

    def _queue(self, peer: _Peer, message: bytes) -> None:
        if len(peer.control) >= self.config.max_pending_requests:
            if peer.failure is None:
                peer.failure = StateProtocolError("the peer floods requests without reading")
            peer.close()
            log.warning("%s owes too many replies (it does not read); closing", peer.peer_id.short)
            return
        peer.control.append(message)
        peer.kick()

    async def _sender(self, peer: _Peer) -> None:
        stream = peer.stream
        digest = self._core.digest()
        peer.outbound.note_digest_sent(digest)
        await stream.send_message(digest.encode())
        await self._send_members(stream)
        while True:
            await peer.wake.wait()
            peer.wake = trio.Event()
            while True:
                if peer.control:
                    await stream.send_message(peer.control.popleft())
                elif peer.directs:
                    item = peer.directs[0]
                    await stream.send_message(wire.Direct(item.payload).encode())
                    peer.directs.popleft()
                    item.done.set()
                else:
                    updates = peer.outbound.next_updates()
                    if updates is None:
                        if self._ack_due(peer):
                            await stream.send_message(self._ack_ping(peer))
                        break
                    await stream.send_message(updates.encode())

    async def _send_members(self, stream: SecureStream) -> None:
        """Tell a new connection every member we know (a helper, so that the list is not kept
        alive by the sender's frame for the life of the connection)."""
        for chunk in _chunks(self._member_infos(), wire.MAX_MEMBERS_PER_MESSAGE):
            await stream.send_message(wire.Members(tuple(chunk)).encode())

    def _member_infos(self) -> list[wire.MemberInfo]:
        infos = [wire.MemberInfo(self.config.identity.record.public_key_der, self.address)]
        infos.extend(
            wire.MemberInfo(m.record.public_key_der, m.address) for m in self._members.values()
        )
        return infos

    async def _watchdog(self, peer: _Peer) -> None:
        config = self.config
        next_digest = trio.current_time() + config.anti_entropy_interval
        while True:
            await trio.sleep(min(config.ping_interval, config.ping_timeout / 2))
            now = trio.current_time()
            if now - peer.last_received > config.ping_timeout:
                log.info("%s stopped answering; closing", peer.peer_id.short)
                peer.close()
                return
            self._queue(peer, wire.Ping(os.urandom(wire.NONCE_SIZE)).encode())
            if now >= next_digest:
                next_digest = now + config.anti_entropy_interval
                digest = self._core.digest()
                peer.outbound.note_digest_sent(digest)
                self._queue(peer, digest.encode())

    async def _reader(self, peer: _Peer) -> None:
        stream = peer.stream
        while True:
            try:
                data = await stream.receive_message()
            except trio.EndOfChannel:
                return
            peer.last_received = trio.current_time()
            self._handle(peer, wire.parse_message_untrusted(data, self._limits))
            await trio.lowlevel.checkpoint()

    def _handle(self, peer: _Peer, message: wire.Message) -> None:
        core = self._core
        if isinstance(message, wire.Updates):
            outcome = core.receive_updates_untrusted(message, peer.peer_id.digest)
            peer.outbound.note_received(outcome)
            self._counters["records_stale"] += outcome.stale
            self._counters["owners_evicted"] += len(outcome.evicted_owners)
            if outcome.applied:
                self._counters["records_applied"] += len(outcome.applied)
                for record in outcome.applied:
                    self._emit(
                        StateChanged(
                            PeerId(record.owner), record.key, record.value, record.epoch, record.seq
                        )
                    )
                self._note_changed()
            self._store_wake.set()
            for owner in outcome.advanced:
                if owner == peer.peer_id.digest:
                    continue  # straight from its owner: not pushed on (see PULL_INTERVAL)
                for other in self._peers.values():
                    if other is not peer:
                        other.outbound.note_changed(owner)
                        other.kick()
            self._report(outcome.equivocations)
            pulls = [
                (owner, since)
                for owner, since in sorted(outcome.gaps.items())
                if peer.outbound.want_pull(owner, since)
            ]
            if pulls:
                self._queue(peer, wire.Pull(tuple(pulls)).encode())
            self._check_own(outcome.own_proven)
        elif isinstance(message, wire.Digest):
            peer.outbound.note_digest(message)
            pulls = peer.outbound.pulls_to_send(core.wanted(message))
            if pulls:
                self._queue(peer, wire.Pull(tuple(pulls)).encode())
            if peer.outbound.dirty:
                peer.kick()
        elif isinstance(message, wire.Pull):
            peer.outbound.note_pull(message)
            if peer.ack_pings and any(owner == core.own_id for owner, _ in message.entries):
                peer.ack_pings.clear()  # it lacked our state: pings in flight prove nothing
            peer.kick()
        elif isinstance(message, wire.Members):
            for info in message.members:
                self._gossiped(peer, info)
        elif isinstance(message, wire.Direct):
            try:
                self._direct_send.send_nowait(DirectMessage(peer.peer_id, message.payload))
            except trio.WouldBlock:
                self._counters["direct_dropped"] += 1
                log.warning("direct message from %s dropped: nobody reads", peer.peer_id.short)
        elif isinstance(message, wire.Ping):
            self._queue(peer, wire.Pong(message.nonce).encode())
        elif isinstance(message, wire.Pong):
            # Any message proves the peer alive (last_received); an acknowledgement ping's
            # answer also proves what it holds of our state.
            covered = peer.ack_pings.pop(message.nonce, None)
            if covered is not None:
                peer.acked = max(peer.acked, covered)
                self._note_changed()  # wake wait_acknowledged
        else:  # a second hello
            raise StateProtocolError("unexpected hello")

    async def _pull_loop(self) -> None:
        """While some member, gossiped candidate or owner we hold is not connected, send a digest
        to one peer after another, so that it pushes what we lack of the owners we cannot reach
        (see :data:`PULL_INTERVAL`)."""
        turn = 0
        while True:
            await trio.sleep(self.pull_interval * random.uniform(0.5, 1.5))
            if not self._peers or not self._missing_someone():
                continue
            peers = list(self._peers.values())
            peer = peers[turn % len(peers)]
            turn += 1
            digest = self._core.digest()
            peer.outbound.note_digest_sent(digest)
            self._queue(peer, digest.encode())

    def _missing_someone(self) -> bool:
        if any(m.peer is None for m in self._members.values()) or self._membership.candidates:
            return True
        reached = {peer.digest for peer in self._peers}
        reached.add(self.peer_id.digest)
        return any(owner not in reached for owner in self._core.owners)

    def _report(self, equivocations: list[Equivocation]) -> None:
        for evidence in equivocations:
            self._counters["equivocations"] += 1
            log.warning(
                "owner %s equivocated at epoch %d seq %d",
                evidence.owner.hex()[:12],
                evidence.epoch,
                evidence.seq,
            )
            self._emit(
                EquivocationDetected(
                    PeerId(evidence.owner),
                    evidence.epoch,
                    evidence.seq,
                    evidence.held,
                    evidence.offered,
                )
            )

    async def _final_flush(self) -> None:
        """On a clean exit: sign what is durable and write everything pending."""
        core = self._core
        while core.unsigned_durable:
            core.sign_pending(self.config.max_batch)
        changes = core.take_changes()
        members = list(self._pending_members.items())
        if not changes.empty or members:
            await trio.to_thread.run_sync(
                self._store.apply, changes, members, limiter=self._db_limiter
            )


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _check_key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError("a key is a str")
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a key must be encodable as UTF-8") from None
    if len(encoded) > wire.MAX_KEY_BYTES:
        raise ValueError(f"a key is at most {wire.MAX_KEY_BYTES} bytes of UTF-8")
    return key


def _check_value(value: Value | None) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a str value must be encodable as UTF-8") from None
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"a value is bytes or str (None deletes), not {type(value).__name__}")
    return bytes(value)


@asynccontextmanager
async def open_state_node(config: StateNodeConfig) -> AsyncIterator[StateNode]:
    """Run a state node for the duration of the block.

    Opens (or creates) the database, moves to a new epoch (durably, before anything is signed),
    certifies a fresh Ed25519 key, starts listening and joins the members it knows. The node
    serves its stored state at once and catches up in the background. Leaving the block closes
    every connection and the database. An exception raised in the block comes out as it was
    raised (not wrapped in exception groups).

    Example::

        async with open_state_node(config) as node:
            await node.set("foo", "bar")                       # str: stored as UTF-8
            other_value = await node.wait_for(other_id, "foo")  # bytes, once it arrived
    """
    async with _run_state_node(config) as node:
        yield node


@asynccontextmanager
async def _run_state_node(config: StateNodeConfig) -> AsyncIterator[StateNode]:
    identity = config.identity
    network = _crypto.network_id(config.psk)
    own = identity.peer_id.digest
    store = await trio.to_thread.run_sync(
        lambda: StateStore(
            config.database, network=network, owner=own, durability=config.durability
        )
    )
    try:
        core = ReplicaCore(
            network,
            own,
            identity.record.public_key_der,
            config.limits,
            max_owners=config.max_owners,
        )
        members = await trio.to_thread.run_sync(store.load_members)
        # Members' state is never evicted to make room for other owners, also while loading.
        known = [m.public_key_der for m in members] + [r.public_key_der for r in config.bootstrap]
        for der in known:
            core.protect(PeerId.for_public_key(der).digest)
        await trio.to_thread.run_sync(store.load_into, core)
        minimum = 1 if store.persistent else time.time_ns() // 1_000_000
        epoch = await trio.to_thread.run_sync(store.next_epoch, minimum)
        signer = await trio.to_thread.run_sync(_crypto.EpochSigner.create, identity, network, epoch)
        core.begin_epoch(signer)
        host_config = HostConfig(
            identity=identity,
            psk=config.psk,
            peers=config.bootstrap,
            listen=config.listen,
            admission=admit_network_members,
            stream=config.stream,
            replay_state_path=config.replay_state_path,
        )
        async with open_host(host_config) as host, open_service_nursery() as nursery:
            node = StateNode(config, host, store, core, nursery)
            node._start(members)
            clean = False
            try:
                yield node
                clean = True
            finally:
                node._closed = True
                node._note_changed()
                for subscriber in node._subscribers:
                    subscriber.send.close()
                node._direct_send.close()
                nursery.cancel_scope.cancel()
                if clean:
                    with trio.CancelScope(shield=True):
                        await node._final_flush()
    finally:
        store.close()
