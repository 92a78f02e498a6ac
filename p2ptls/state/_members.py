"""A state node's members: who they are, which one has a session, and opening sessions (trio).

Theory of operation
-------------------
:class:`Members` is the trio side of :class:`~p2ptls.state._membership.Membership` (the sans-IO
member and candidate tables). Every verified member has a :class:`Member` entry and one task that
keeps a state session with it: while it has none, the task opens a logical stream of
``p2ptls/state/1`` to it through the host (``host.open``), which reuses the host's one connection
to that peer, or dials one. Dialling is the host's: concurrent opens (other protocols, gossiped
candidates) share one dial, and a peer whose dial failed backs off there
(:class:`~p2ptls.DialBackoff` says for how long), so the node keeps no dial back-off of its own. It
waits ``reconnect_min`` (doubling up to ``reconnect_max``) only after a session could not be set
up over a working connection (the peer refused the stream, or broke the protocol).

A member's session is *registered* here once both STATE_HELLOs were exchanged; of two sessions with
one member, both ends keep the same one (:func:`~p2ptls.state._session.keeps_new`). While a member
has a session, the host protects its connection (``host.protect(peer, "state")``), so the connection
limit and the idle timeout never close it. When the session ends (its stream was closed, the
connection was lost: :class:`~p2ptls.ConnectionLost`), the member is reported unreachable, its state
kept, and its task opens a new session.

Gossiped candidates are dialled a few at a time (``_membership``); one whose handshake completes
becomes a verified member. No error caused by what a member sent (an address, a key) ends the
node: it ends one attempt, is logged and counted.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

import trio

from .. import _errors
from .._mux_wire import GoAwayCode
from ..connections import ConnectionLimitReached, DialBackoff
from ..host import Host
from ..identity import PeerId, PeerRecord
from ..logical import ConnectionLost, LogicalStream
from . import _wire as wire
from ._membership import Candidate, Membership
from ._notify import Notifier
from ._pipeline import WritePipeline
from ._replica import ReplicaCore
from ._session import Phase, keeps_new, misses_someone
from ._store import StoredMember
from ._wire import PROTOCOL
from .config import StateNodeConfig
from .events import MemberChanged, MemberState, MemberStatus

if TYPE_CHECKING:
    from ._pump import SessionPump

log = logging.getLogger("p2ptls.state")

PROTECTION_TAG = "state"
"""The tag with which a node protects the connections of its members' sessions."""

CANDIDATE_INTERVAL = 10.0
"""Longest time between looks at the gossiped candidates (they are also looked at whenever one
is gossiped or due to be dialled again)."""
CANDIDATE_DIALS = 64
"""Candidates dialled at once, at most."""
CANDIDATE_BATCH = 64
"""Candidates started per look (each waits for one of the ``CANDIDATE_DIALS`` slots)."""
HANDSHAKE_WARN_AFTER = 3
"""Failed handshakes in a row, on this node's own dials to a member, before a warning is logged
(then again each time the count doubles). Most often the two use different network keys."""

# What opening a session may raise: the host cannot reach the peer or set up a stream to it.
_OPEN_ERRORS = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    _errors.P2PTLSError,
)

Serve = Callable[[LogicalStream], Awaitable[None]]
"""Runs one state session on a logical stream."""


class Member:
    """A verified member and its session, if it has one."""

    def __init__(self, record: PeerRecord, address: tuple[str, int] | None) -> None:
        self.record = record
        self.address = address
        self.state = MemberState.UNKNOWN
        self.since = time.time()
        self.incarnation = 0
        self.pump: SessionPump | None = None
        """Its registered session."""
        self.poke = trio.Event()
        self.retry_delay = 0.0
        """Seconds before opening again after a session could not be set up."""
        self.attempts = 0
        self.handshake_failures = 0
        """Handshakes of this node's own dials to the member that failed in a row."""
        self.last_handshake_failure: float | None = None
        self.warn_at = HANDSHAKE_WARN_AFTER
        self.scope = trio.CancelScope()
        """Cancelled when the member is evicted from the member table."""

    @property
    def peer_id(self) -> PeerId:
        return self.record.peer_id


class Members:
    """The member table of one node and the tasks that keep a session with each member."""

    def __init__(
        self,
        config: StateNodeConfig,
        host: Host,
        core: ReplicaCore,
        *,
        notifier: Notifier,
        pipeline: WritePipeline,
        nursery: trio.Nursery,
        serve: Serve,
        address: Callable[[], tuple[str, int] | None],
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.host = host
        self._rng = rng or random.Random()
        """Jitters the delay before a member's next attempt."""
        self._core = core
        self._notify = notifier
        self._pipeline = pipeline
        self._nursery = nursery
        self._serve = serve
        self._address = address
        self._own = config.identity.peer_id
        self.by_id: dict[PeerId, Member] = {}
        self._running: dict[PeerId, set[SessionPump]] = {}
        """Every session running, registered or not, by peer."""
        self.table = Membership(
            self._own.digest,
            max_members=config.max_members,
            max_candidates=config.max_member_candidates,
            candidates_per_source=config.member_candidates_per_source,
            candidate_ttl=config.member_candidate_ttl,
            retry_delay=config.reconnect_min,
            max_retry_delay=config.reconnect_max,
        )
        self._candidate_wake = trio.Event()

    # -- queries -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.by_id)

    def pumps(self) -> Iterator[SessionPump]:
        """Every registered session (one per connected member)."""
        for member in self.by_id.values():
            if member.pump is not None:
                yield member.pump

    def pump_of(self, peer_id: PeerId) -> SessionPump | None:
        member = self.by_id.get(peer_id)
        return member.pump if member is not None else None

    def status(self, member: Member) -> MemberStatus:
        return MemberStatus(
            member.peer_id,
            member.address,
            member.state,
            member.since,
            member.incarnation,
            self._core.mark(member.peer_id.digest),
            member.handshake_failures,
            member.last_handshake_failure,
        )

    def infos(self) -> list[wire.MemberInfo]:
        """Every member we know, ourselves first (what a new session is told)."""
        infos = [wire.MemberInfo(self.config.identity.record.public_key_der, self._address())]
        infos.extend(
            wire.MemberInfo(m.record.public_key_der, m.address) for m in self.by_id.values()
        )
        return infos

    def allowed(self, peer_id: PeerId) -> bool:
        check = self.config.peer_filter
        return check is None or check(peer_id)

    def misses_someone(self) -> bool:
        connected = {member.peer_id.digest for member in self.by_id.values() if member.pump}
        return misses_someone(
            self._core.owners,
            connected | {self._own.digest},
            members_unreached=len(connected) < len(self.by_id),
            candidates=bool(self.table.candidates),
        )

    # -- learning and forgetting -------------------------------------------------------------------

    def learn(
        self, der: bytes, address: tuple[str, int] | None, *, authoritative: bool
    ) -> Member | None:
        """A member proved itself (or the application or the store named it): keep a session
        with it. ``authoritative``: its address replaces the one held."""
        try:
            record = PeerRecord.from_public_key(der, address=address)
        except ValueError:
            return None
        peer_id = record.peer_id
        if peer_id == self._own:
            return None
        connected = {member.peer_id.digest for member in self.by_id.values() if member.pump}
        for evicted in self.table.admit(peer_id.digest, trio.current_time(), connected):
            self._evict(PeerId(evicted))
        member = self.by_id.get(peer_id)
        if member is None:
            member = Member(record, address)
            self.by_id[peer_id] = member
            self._core.protect(peer_id.digest)
            self._nursery.start_soon(self._run_member, member)
            self._save(member)
            self._notify.emit(MemberChanged(self.status(member)))
            self._notify.changed()
            info = wire.MemberInfo(der, address)
            for pump in list(self.pumps()):
                if pump.peer_id != peer_id:
                    pump.handle(pump.session.gossip(info))
        elif (
            address is not None
            and (authoritative or member.address is None)
            and member.address != address
        ):
            member.address = address
            member.record = record
            self._save(member)
            member.poke.set()
        return member

    def _evict(self, peer_id: PeerId) -> None:
        """Make room in a full member table: forget ``peer_id`` and close its session."""
        member = self.by_id.pop(peer_id, None)
        self.table.forget(peer_id.digest)
        if member is None:
            return
        log.info("member table full: forgetting %s", peer_id.short)
        self._notify.counters["members_evicted"] += 1
        member.scope.cancel()
        if member.pump is not None:
            member.pump.close()
        self._core.unprotect(peer_id.digest)
        self._pipeline.save_member(peer_id.digest, None)

    def _save(self, member: Member) -> None:
        stored = StoredMember(member.record.public_key_der, member.address)
        self._pipeline.save_member(member.peer_id.digest, stored)

    def _set_state(self, member: Member, state: MemberState) -> None:
        if member.state is not state:
            member.state = state
            member.since = time.time()
            self._notify.emit(MemberChanged(self.status(member)))
            self._notify.changed()

    # -- sessions ----------------------------------------------------------------------------------

    def opening(self, pump: SessionPump) -> None:
        """A session with ``pump.peer_id`` starts (its STATE_HELLOs are not exchanged yet)."""
        self._running.setdefault(pump.peer_id, set()).add(pump)

    def _setting_up(self, peer_id: PeerId) -> bool:
        """Whether a session with ``peer_id`` is still exchanging STATE_HELLOs."""
        return any(pump.session.phase is Phase.HELLO for pump in self._running.get(peer_id, ()))

    def _moving(self, pump: SessionPump) -> bool:
        """Whether the host has replaced the connection under ``pump`` (a simultaneous open:
        the loser's streams end after a grace): the member is not gone, its task opens a
        session on the connection that won at once."""
        if not isinstance(pump.failure, ConnectionLost):
            return False  # the session itself ended (closed, refused, broke the protocol)
        connection = pump.stream.connection
        if connection.retired is GoAwayCode.REPLACED:
            return True  # this end kept another one (gone too if the ends disagreed: redial)
        current = self.host.connection(pump.peer_id)
        return current is not None and current is not connection and current.accepts_new_streams

    def _no_session(self, member: Member) -> None:
        """A connected member's last session ended and none is being set up: it is
        unreachable."""
        connected = member.state is MemberState.CONNECTED
        if connected and member.pump is None and not self._setting_up(member.peer_id):
            self._set_state(member, MemberState.UNREACHABLE)

    def register(self, member: Member, pump: SessionPump) -> bool:
        """``pump``'s session with ``member`` exchanged STATE_HELLOs: make it the member's session,
        unless the one it has wins (see ``keeps_new``). False if ``pump`` is to be closed."""
        existing = member.pump
        if existing is not None and existing is not pump:
            current = self.host.connection(member.peer_id)
            if not keeps_new(existing.session, pump.session, self._own.digest, current=current):
                return False
            existing.close()
        member.pump = pump
        member.incarnation = pump.session.incarnation
        member.retry_delay = 0.0
        member.poke.set()
        self.host.protect(member.peer_id, PROTECTION_TAG)
        self._set_state(member, MemberState.CONNECTED)
        self._notify.changed()  # a new session with a member that was connected (waiters)
        return True

    def unregister(self, pump: SessionPump) -> None:
        """``pump``'s session ended. Its member is unreachable unless another session with it
        runs, or is being set up (when both open a session at once, one end may close the
        losing session before the other end has seen the winner's STATE_HELLO)."""
        peer_id = pump.peer_id
        running = self._running.get(peer_id)
        if running is not None:
            running.discard(pump)
            if not running:
                del self._running[peer_id]
        member = self.by_id.get(peer_id)
        if member is not None:
            if member.pump is pump:
                member.pump = None
                self._notify.changed()  # its waiters (wait_acknowledged) see it gone at once
            if not self._moving(pump):
                self._no_session(member)
            member.poke.set()
        if member is None or member.pump is None:
            self.host.unprotect(peer_id, PROTECTION_TAG)

    def gossiped(self, source: PeerId, info: wire.MemberInfo) -> None:
        """A member claims another is a member at some address: a candidate to dial, no more
        (see ``_membership``)."""
        digest = PeerId.for_public_key(info.public_key_der).digest
        known = self.by_id.get(PeerId(digest))
        if known is not None and known.pump is not None:
            return  # connected: its own hello said where it is
        if self.table.gossiped(
            source.digest,
            digest,
            info.public_key_der,
            info.address,
            trio.current_time(),
            known_address=known.address if known is not None else None,
        ):
            self._candidate_wake.set()
            if known is not None:
                known.poke.set()

    # -- membership control ------------------------------------------------------------------------

    def disconnect(self, peer_id: PeerId) -> None:
        pump = self.pump_of(peer_id)
        if pump is not None:
            pump.close()

    def retry_now(self) -> None:
        for member in self.by_id.values():
            member.retry_delay = 0.0
            self.host.forget_backoff(member.record.peer_id)
            member.poke.set()

    @property
    def _open_timeout(self) -> float:
        """A dial (bounded by the host's ``dial_timeout``), then the peer's answer to the open."""
        return 2 * self.config.connect_timeout

    # -- keeping a session with every member -------------------------------------------------------

    async def _run_member(self, member: Member) -> None:
        """Keep a session with ``member`` until it is evicted; an error reached by what a member
        sent (an address, a key) ends one attempt, never the node."""
        with member.scope:
            while True:
                try:
                    await self._maintain(member)
                except Exception as exc:
                    expected = isinstance(exc, _errors.ProtocolError | ValueError)
                    log.warning(
                        "opening a session with %s failed: %r",
                        member.peer_id.short,
                        exc,
                        exc_info=not expected,
                    )
                    self._notify.counters["errors_contained"] += 1
                    await trio.sleep(self._longer_delay(member))

    async def _maintain(self, member: Member) -> None:
        while True:
            if member.pump is not None:
                await member.pump.ended.wait()
                continue
            member.poke = trio.Event()
            if self._setting_up(member.peer_id):
                await member.poke.wait()  # a session the member opened may be the one
                continue
            address = self._next_address(member)
            if address is None or not self.allowed(member.peer_id):
                self._no_session(member)  # (a session that was moving cannot be reopened)
                await member.poke.wait()
                continue
            delay = await self._open(member, address)
            self._no_session(member)  # after a session moved to a new connection, or failed to
            if member.pump is None and delay > 0:
                with trio.move_on_after(delay):
                    await member.poke.wait()

    def _next_address(self, member: Member) -> tuple[str, int] | None:
        """Where to dial ``member``: its own address (from its STATE_HELLO, the application or the
        store) and, in turn with it, another one a member gossiped while it is not connected.
        (The host backs a peer off as a whole, so one task tries both.)"""
        candidate = self.table.candidates.get(member.peer_id.digest)
        addresses = [member.address] if member.address is not None else []
        if candidate is not None and candidate.address != member.address:
            addresses.append(candidate.address)
        if not addresses:
            return None
        member.attempts += 1
        return addresses[member.attempts % len(addresses)]

    async def _open(self, member: Member, address: tuple[str, int]) -> float:
        """Open a session with ``member`` at ``address`` and run it; returns how long to wait
        before the next attempt if none could be set up."""
        try:
            with trio.fail_after(self._open_timeout):
                stream = await self.host.open(member.record, PROTOCOL, address=address)
        except DialBackoff as exc:
            return exc.retry_after
        except _OPEN_ERRORS as exc:
            log.debug("opening a session with %s failed: %r", member.peer_id.short, exc)
            if isinstance(exc.__cause__, _errors.HandshakeFailed | _errors.PeerRefused):
                self._handshake_failed(member, address)
            if _dial_failed(exc):
                return 0.0  # the host backs the peer off: the next open says how long
            return self._longer_delay(member)
        member.handshake_failures = 0
        member.last_handshake_failure = None
        member.warn_at = HANDSHAKE_WARN_AFTER
        try:
            await self._serve(stream)
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()
        return 0.0 if member.pump is not None else self._longer_delay(member)

    def _longer_delay(self, member: Member) -> float:
        config = self.config
        member.retry_delay = min(
            max(member.retry_delay * 2, config.reconnect_min), config.reconnect_max
        )
        return member.retry_delay * self._rng.uniform(0.5, 1.0)

    def _handshake_failed(self, member: Member, address: tuple[str, int]) -> None:
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
                member.peer_id.short,
                *address,
                member.handshake_failures,
            )
        self._notify.changed()

    # -- gossiped candidates -----------------------------------------------------------------------

    async def candidate_loop(self) -> None:
        """Dial gossiped candidates (a few at a time, each a few times with backoff); a
        completed handshake makes one a verified member."""
        limiter = trio.CapacityLimiter(CANDIDATE_DIALS)
        while True:
            now = trio.current_time()
            for digest, candidate in self.table.due(now, CANDIDATE_BATCH):
                member = self.by_id.get(PeerId(digest))
                if member is None:
                    self._nursery.start_soon(self._dial_candidate, candidate, limiter)
                    continue
                # Another address of a member: its own task dials it (see _next_address).
                self.table.dial_ended(candidate, now)
                if member.pump is None:
                    member.poke.set()
                else:
                    self.table.candidates.pop(digest)  # connected meanwhile
            # Expired candidates are dropped at the next look, at the latest after the TTL.
            wake_at = min(self.table.next_deadline(), now + CANDIDATE_INTERVAL)
            with trio.move_on_at(wake_at):
                await self._candidate_wake.wait()
            self._candidate_wake = trio.Event()

    async def _dial_candidate(self, candidate: Candidate, limiter: trio.CapacityLimiter) -> None:
        try:
            record = PeerRecord.from_public_key(candidate.public_key_der, address=candidate.address)
            if not self.allowed(record.peer_id):
                return
            async with limiter:
                if self.pump_of(record.peer_id) is not None:
                    return  # it connected (or we did) while this dial waited for its turn
                try:
                    with trio.fail_after(self._open_timeout):
                        stream = await self.host.open(record, PROTOCOL, address=candidate.address)
                except _OPEN_ERRORS as exc:
                    log.debug("candidate %s failed: %r", record.peer_id.short, exc)
                    return
            try:
                await self._serve(stream)
            finally:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
        except Exception:
            # Whatever a made-up candidate (its key, its address) causes stays here.
            log.exception("dialling a gossiped candidate failed")
            self._notify.counters["errors_contained"] += 1
        finally:
            self.table.dial_ended(candidate, trio.current_time())
            self._candidate_wake.set()


def _dial_failed(exc: BaseException) -> bool:
    """Whether ``exc`` is a failed dial, which the host backs off (a refused or lost stream, a
    full connection table or a timeout is not)."""
    if isinstance(exc, ConnectionLost | ConnectionLimitReached | trio.TooSlowError):
        return False
    return isinstance(exc, OSError | trio.BrokenResourceError)
