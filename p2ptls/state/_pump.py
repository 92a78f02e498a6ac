"""The per-member trio pump over a sans-IO session, and what a node does with session events.

Theory of operation
-------------------
A :class:`SessionPump` runs one :class:`~p2ptls.state._session.PeerSession` on one logical stream of
``p2ptls/state/1`` and decides nothing itself. Its **reader** hands every message to the session and
the resulting events to :class:`Sessions`; it never waits for a send, so a peer that does not read
cannot stop us reading (the session bounds what we owe it). Its **writer** sends whatever the
session has to send, in the session's order; a third task fires the session's timers (the
STATE_HELLO deadline, the anti-entropy digest). Whatever ends one of them ends the pump: the session
ended, the peer closed the stream, the stream was reset, or the shared connection under it broke
(:class:`~p2ptls.ConnectionLost`, the same for every protocol on that connection).

:class:`Sessions` serves the state protocol for a node: it runs a pump for every stream (opened by a
member, or by the node through :class:`~p2ptls.state._members.Members`), registers a session with
its member once STATE_HELLOs are exchanged, and routes each event: records to the subscribers and
the store, owners to push on to the *other* sessions, gossip to the member table, direct messages to
the application. A peer that broke the protocol is reported (``PeerRejected``); only its session
ends, never the node. While this node misses a member, a candidate or an owner, it sends a digest to
one session after another (:class:`~p2ptls.state._session.DigestRotation`).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
from collections.abc import Awaitable, Callable

import trio

from .._errors import ProtocolError
from ..identity import PeerId
from ..logical import LogicalStream
from . import _wire as wire
from ._members import Members
from ._notify import Notifier
from ._pipeline import WritePipeline
from ._replica import ReplicaCore
from ._session import (
    Acknowledged,
    DigestRotation,
    DirectReceived,
    EquivocationFound,
    MembersGossiped,
    OwnIdProven,
    PeerSession,
    PushOn,
    SessionConfig,
    SessionEnded,
    SessionEvent,
    StateHelloReceived,
    UpdatesApplied,
)
from .config import StateNodeConfig
from .errors import NotConnected
from .events import DirectMessage, EquivocationDetected, PeerRejected, StateChanged

log = logging.getLogger("p2ptls.state")

_UNSPECIFIED_HOSTS = frozenset({"", "0.0.0.0", "::"})

# How a session's stream legitimately ends: the peer closed or reset it, its connection broke.
_STREAM_ENDED = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.BusyResourceError,
    trio.EndOfChannel,
    ProtocolError,
)


class DirectSend:
    """A direct message waiting to be written (``send_to`` waits for ``done``)."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


Dispatch = Callable[["SessionPump", list[SessionEvent]], None]


class SessionPump:
    """Runs one session on one logical stream (see the module's theory of operation)."""

    def __init__(
        self, stream: LogicalStream, session: PeerSession[DirectSend], dispatch: Dispatch
    ) -> None:
        self.stream = stream
        self.session = session
        self._dispatch = dispatch
        self.peer_id = stream.remote_peer.peer_id
        self.ended = trio.Event()
        self.failure: BaseException | None = None
        """What ended the stream, if not the session."""
        self.unexpected = False
        """A bug ended it (logged with its traceback)."""
        self._wake = trio.Event()
        self._scope = trio.CancelScope()

    def __repr__(self) -> str:
        return f"<SessionPump {self.peer_id.short} {self.stream!r}>"

    def kick(self) -> None:
        """The session may have something new to send."""
        self._wake.set()

    def handle(self, events: list[SessionEvent]) -> None:
        """Dispatch what a local action on the session returned, and send what it queued."""
        self._dispatch(self, events)
        self.kick()

    def close(self) -> None:
        self._scope.cancel()

    async def run(self) -> None:
        """Pump until the session or its stream ends."""
        with self._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._guarded, self._reader, self._dispatch)
                nursery.start_soon(self._guarded, self._writer, self._dispatch)
                nursery.start_soon(self._guarded, self._timers, self._dispatch)

    async def _guarded(
        self, task: Callable[[Dispatch], Awaitable[None]], dispatch: Dispatch
    ) -> None:
        try:
            await task(dispatch)
        except _STREAM_ENDED as exc:
            if self.failure is None:
                self.failure = exc
        except Exception as exc:
            # A bug reached by one peer's input ends that session, never the node.
            log.exception("unexpected error in the state session with %s", self.peer_id.short)
            self.unexpected = True
            if self.failure is None:
                self.failure = exc
        finally:
            self.close()

    async def _reader(self, dispatch: Dispatch) -> None:
        session = self.session
        while session.ended is None:
            data = await self.stream.receive_message()
            dispatch(self, session.receive_message_untrusted(data, trio.current_time()))
            if session.wants_to_send or session.ended is not None:
                self.kick()
            await trio.lowlevel.checkpoint()

    async def _writer(self, _dispatch: Dispatch) -> None:
        session = self.session
        while session.ended is None:
            outgoing = session.next_message()
            if outgoing is None:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            try:
                await self.stream.send_message(outgoing.data)
            except BaseException as exc:
                if outgoing.direct is not None:
                    outgoing.direct.fail(exc)
                raise
            if outgoing.direct is not None:
                outgoing.direct.done.set()

    async def _timers(self, dispatch: Dispatch) -> None:
        """Fire the session's timers. (Sleeping until the deadline seen last can only delay the
        first anti-entropy digest after the STATE_HELLOs, and ``start`` sends a digest anyway.)"""
        session = self.session
        while session.ended is None:
            await trio.sleep_until(session.next_deadline())
            dispatch(self, session.handle_timers(trio.current_time()))
            self.kick()


class Sessions:
    """Serves ``p2ptls/state/1`` for one node: runs and routes every member session."""

    def __init__(
        self,
        config: StateNodeConfig,
        core: ReplicaCore,
        *,
        notifier: Notifier,
        pipeline: WritePipeline,
        members: Members,
        address: Callable[[], tuple[str, int] | None],
        rng: random.Random | None = None,
        randomness: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.config = config
        self._randomness = randomness
        """Random bytes for the sessions (acknowledgement nonces)."""
        self._core = core
        self._notify = notifier
        self._pipeline = pipeline
        self._members = members
        self._address = address
        self._own = config.identity.peer_id
        self.session_config = SessionConfig(
            limits=config.limits,
            message_budget=config.message_budget,
            max_pending_requests=config.max_pending_requests,
            anti_entropy_interval=config.anti_entropy_interval,
            hello_timeout=config.connect_timeout,
        )
        self.running: set[SessionPump] = set()
        """Every pump running (registered or not yet)."""
        self._rotation: DigestRotation[SessionPump] = DigestRotation(rng)
        self.direct_send, self.direct_receive = trio.open_memory_channel[DirectMessage](
            config.direct_buffer
        )

    # -- one session -------------------------------------------------------------------------------

    async def serve(self, stream: LogicalStream) -> None:
        """Run one state session on ``stream`` until it ends (the caller closes the stream)."""
        remote = stream.remote_peer.peer_id
        if remote == self._own or not self._members.allowed(remote) or self._notify.closed:
            return
        hello = wire.StateHello(self._core.network, self._core.epoch, self._address())
        now = trio.current_time()
        session: PeerSession[DirectSend] = PeerSession(
            self._core,
            remote.digest,
            hello,
            self.session_config,
            now,
            opened_here=not stream.server_side,
            connection=stream.connection,
            stream_id=stream.stream_id,
            randomness=self._randomness,
        )
        pump = SessionPump(stream, session, self._dispatch)
        self.running.add(pump)
        self._members.opening(pump)
        try:
            await pump.run()
        finally:
            self.running.discard(pump)
            for direct in session.unsent_directs():
                direct.fail(NotConnected("the session ended"))
            self._members.unregister(pump)
            pump.ended.set()
            self._ended(pump)

    def _ended(self, pump: SessionPump) -> None:
        ended = pump.session.ended
        if ended is not None and ended.rejected:
            log.warning("disconnecting %s: %s", pump.peer_id.short, ended.reason)
            self._notify.counters["peers_rejected"] += 1
            self._notify.emit(PeerRejected(pump.peer_id, ended.reason))
        elif pump.unexpected:
            self._notify.counters["errors_contained"] += 1
        elif ended is not None:
            log.info("state session with %s ended: %s", pump.peer_id.short, ended.reason)
        else:
            log.debug("state session with %s ended: %r", pump.peer_id.short, pump.failure)

    def _dispatch(self, pump: SessionPump, events: list[SessionEvent]) -> None:
        notify = self._notify
        for event in events:
            if isinstance(event, UpdatesApplied):
                self._applied(event)
            elif isinstance(event, PushOn):
                for other in self._members.pumps():
                    if other is not pump:
                        for owner in event.owners:
                            other.session.note_changed(owner)
                        other.kick()
            elif isinstance(event, EquivocationFound):
                self._report(event)
            elif isinstance(event, OwnIdProven):
                self._pipeline.check_own(event.version)
            elif isinstance(event, MembersGossiped):
                for info in event.members:
                    self._members.gossiped(pump.peer_id, info)
            elif isinstance(event, DirectReceived):
                try:
                    self.direct_send.send_nowait(DirectMessage(pump.peer_id, event.payload))
                except trio.WouldBlock:
                    notify.counters["direct_dropped"] += 1
                    log.warning("direct message from %s dropped: nobody reads", pump.peer_id.short)
            elif isinstance(event, Acknowledged):
                notify.changed()  # wake wait_acknowledged
            elif isinstance(event, StateHelloReceived):
                self._hello(pump, event)
            elif isinstance(event, SessionEnded):
                pump.close()

    def _hello(self, pump: SessionPump, hello: StateHelloReceived) -> None:
        """Both STATE_HELLOs are exchanged: keep the session as the member's, or close it."""
        remote = pump.stream.remote_peer
        address = _observed(pump.stream, hello.address)
        member = self._members.learn(remote.public_key_der, address, authoritative=True)
        if (
            member is None
            or not self._members.allowed(remote.peer_id)
            or not self._members.register(member, pump)
        ):
            pump.close()  # refused meanwhile (peer_filter changed), or another session wins
            return
        self._notify.counters["connections_opened"] += 1
        pump.session.start(trio.current_time(), self._members.infos())

    def _applied(self, event: UpdatesApplied) -> None:
        counters = self._notify.counters
        counters["records_stale"] += event.stale
        counters["owners_evicted"] += event.evicted_owners
        if event.applied:
            counters["records_applied"] += len(event.applied)
            for record in event.applied:
                self._notify.emit(
                    StateChanged(
                        PeerId(record.owner), record.key, record.value, record.epoch, record.seq
                    )
                )
            self._notify.changed()
        self._pipeline.wake_store()

    def _report(self, event: EquivocationFound) -> None:
        evidence = event.evidence
        self._notify.counters["equivocations"] += 1
        log.warning(
            "owner %s equivocated at epoch %d seq %d",
            evidence.owner.hex()[:12],
            evidence.epoch,
            evidence.seq,
        )
        self._notify.emit(
            EquivocationDetected(
                PeerId(evidence.owner),
                evidence.epoch,
                evidence.seq,
                evidence.held,
                evidence.offered,
            )
        )

    # -- every session -----------------------------------------------------------------------------

    def published(self) -> None:
        """Our own new batches are durable: offer them to every member."""
        own = self._core.own_id
        for pump in self._members.pumps():
            pump.session.note_changed(own)
            pump.kick()

    async def digest_loop(self, interval: Callable[[], float]) -> None:
        """While this node misses someone, send a digest to one session after another."""
        rotation = self._rotation
        while True:
            await trio.sleep(rotation.delay(interval()))
            members = self._members
            chosen = rotation.choose(list(members.pumps()), members.misses_someone())
            if chosen is not None:
                chosen.handle(chosen.session.send_digest())

    async def send_to(self, peer_id: PeerId, payload: bytes) -> None:
        pump = self._members.pump_of(peer_id)
        if pump is None or pump.session.ended is not None:
            raise NotConnected(f"not connected to {peer_id.short}")
        direct = DirectSend()
        pump.session.send_direct(payload, direct)
        pump.kick()
        await direct.done.wait()
        if direct.error is not None:
            raise NotConnected(f"connection to {peer_id.short} ended") from direct.error

    async def wait_acknowledged(self, peer_id: PeerId) -> bool:
        core = self._core
        target = core.staged_version
        await self._notify.wait_until(lambda: core.mark(core.own_id) >= target)
        while True:
            pump = self._members.pump_of(peer_id)
            if pump is None:
                return False
            session = pump.session
            if session.acked >= target:
                return True
            self._notify.check_open()
            if session.ack_target < target:
                session.want_acknowledgement(target)
                pump.kick()
            await self._notify.wait_changed()

    def close(self) -> None:
        """The node is closing: end every session and the direct-message channel."""
        for pump in self.running:
            pump.close()
        self.direct_send.close()


def _observed(stream: LogicalStream, advertised: tuple[str, int] | None) -> tuple[str, int] | None:
    """The member's address: as it advertises it, with an unspecified host replaced by the
    address its connection comes from."""
    if advertised is None or advertised[0] not in _UNSPECIFIED_HOSTS:
        return advertised
    seen = stream.remote_address
    if seen is None:
        return None
    try:
        ipaddress.ip_address(seen[0])
    except ValueError:
        return None
    return (seen[0], advertised[1])
