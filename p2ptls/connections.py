"""The host's shared connections: one secure connection per peer, many protocols on it (trio).

Theory of operation
-------------------
A :class:`PeerConnection` wraps one verified :class:`~p2ptls.SecureStream` and the sans-IO
:class:`~p2ptls._mux.Multiplexer` that multiplexes it. Three tasks run it:

* the **reader** feeds every byte received to the multiplexer and files the events: data into its
  :class:`~p2ptls.logical.LogicalStream`, a new stream to the protocol's handler (or a refusal for
  a protocol nobody serves), credit to a waiting sender. It never waits for a send, so two peers
  that both stop reading cannot deadlock each other;
* the **writer** writes whatever frames are queued, as one write, while senders queue more;
* the **watchdog** pings a silent peer (``keepalive_interval``) and declares the connection lost
  if nothing arrives within ``keepalive_timeout``; it also closes a connection that has had no
  stream for ``idle_timeout`` (unless a protocol protects it).

When any of them ends, the connection ends: the secure stream is closed and every logical stream
on it fails with one :class:`~p2ptls.logical.ConnectionLost` whose cause is the reason (the peer's
protocol error, a lost transport, a timeout, the host closing). A connection retired on purpose
(replaced by a simultaneous open, evicted by the limit, idle) first sends GOAWAY: the peer opens
no new stream on it, and streams already open there run for ``replaced_grace`` seconds.

The host's :class:`~p2ptls.manager.ConnectionManager` makes, shares and ends these connections.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import attrs
import trio

from . import _mux
from ._errors import MuxError, P2PTLSError, ProtocolNotSupported, StreamRefused
from ._liveness import Liveness, PeerSilent, PingDue
from ._mux_wire import FRAME_CHUNK, GoAwayCode, RefuseCode, ResetCode
from .identity import PeerId, PeerRecord
from .logical import ConnectionLost, LogicalStream, StreamReset
from .stream import SecureStream

if TYPE_CHECKING:
    from .manager import ConnectionManager

log = logging.getLogger("p2ptls.connections")

FLUSH_TIMEOUT = 1.0
"""Seconds a connection closed on purpose may take to flush its output and say goodbye."""

ProtocolHandler = Callable[[LogicalStream], Awaitable[Any]]


class DialBackoff(OSError):
    """A recent dial to this peer failed; the host waits ``retry_after`` seconds before the next."""

    def __init__(self, peer: PeerId, retry_after: float) -> None:
        super().__init__(
            f"peer {peer.short} is backing off after a failed dial (retry in {retry_after:.1f} s)"
        )
        self.peer = peer
        self.retry_after = retry_after


class ConnectionLimitReached(OSError):
    """Every connection slot is held by a protected connection."""


class ConnectionRetired(Exception):
    """Why a connection was closed on purpose (the cause of :class:`ConnectionLost`)."""


class KeepaliveTimeout(Exception):
    """The peer answered nothing within ``keepalive_timeout`` after a ping."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"no answer to a keepalive ping within {timeout:g} s")


class _GoingAway(ConnectionLost):
    """The connection takes no new streams (it is being retired): open on another one."""


class PeerClosed(Exception):
    """The peer closed the connection."""


@attrs.frozen
class PeerConnected:
    """A connection to ``peer_id`` became the current one."""

    peer_id: PeerId
    initiator: bool
    """Whether this host dialled it."""


@attrs.frozen
class PeerDisconnected:
    """The connection to ``peer_id`` ended and no other replaced it."""

    peer_id: PeerId
    cause: BaseException | None


PeerEvent = PeerConnected | PeerDisconnected


class PeerConnection:
    """One shared, verified connection to a peer. Made by the host; open streams on it with
    :meth:`open` (or :meth:`Host.open <p2ptls.Host.open>`)."""

    def __init__(
        self, secure: SecureStream, manager: ConnectionManager, *, initiator: bool
    ) -> None:
        self.secure = secure
        self.manager = manager
        self.initiator = initiator
        self.remote_peer: PeerRecord = secure.remote_peer
        config = manager.config
        self.max_message_size = secure.config.max_message_size
        self._mux = _mux.Multiplexer(
            initiator=initiator,
            window=config.stream_window,
            max_window=max(config.stream_window, config.max_stream_window),
            connection_window=config.connection_window,
            max_inbound_streams=config.max_streams_per_peer,
            max_message_size=self.max_message_size,
            budget=secure.context.budget,
            budget_key=self.remote_peer.peer_id,  # one share per peer, as the record layer
            serves=self._serves,
        )
        self._high_water = config.output_high_water
        self._streams: dict[int, LogicalStream] = {}
        self._opening: dict[int, trio.Event] = {}
        self._refusals: dict[int, RefuseCode] = {}
        self._reset_while_opening: set[int] = set()
        self._pongs: dict[bytes, trio.Event] = {}
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._writer_waiting = False
        """The writer is parked and nobody woke it yet (checked before each wake-up: a
        ParkingLot's own truth test costs two Python calls)."""
        self._drained = trio.lowlevel.ParkingLot()
        self._watchdog_lot = trio.lowlevel.ParkingLot()
        self._cancel = trio.CancelScope()
        """Ends the reader and the watchdog."""
        self._writer_scope = trio.CancelScope()
        self._flushing = False
        """Reading has stopped: the writer ends once the output is empty."""
        self._writer_failed = False
        self._closed = trio.Event()
        self._handler_scopes: set[trio.CancelScope] = set()
        """The cancel scopes of the protocol handlers serving this connection's streams."""
        self._handler_grace = config.handler_grace
        self.cause: BaseException | None = None
        """Why the connection ended (``None`` while it runs)."""
        now = trio.current_time()
        self._liveness = Liveness(
            keepalive_interval=config.keepalive_interval,
            keepalive_timeout=config.keepalive_timeout,
            idle_timeout=config.idle_timeout,
            grace=config.replaced_grace,
            last_received=now,
            idle_since=now,
        )
        self.retired: GoAwayCode | None = None
        """Why this side retired the connection (``None``: it did not)."""
        self.rtt: float | None = None
        """The round trip of the last answered keepalive ping, in seconds."""
        self._keepalive_ping = b""
        self._heard = trio.Event()
        """Set once the first bytes from the peer arrived on this connection."""

    # -- attributes ----------------------------------------------------------------------------

    @property
    def session_id(self) -> bytes:
        """The secure connection's session id."""
        return self.secure.session_id

    def export_keying_material(self, label: str, context: bytes, length: int) -> bytes:
        """The secure connection's exporter (a logical stream's binds its stream id too)."""
        return self.secure.export_keying_material(label, context, length)

    @property
    def local_address(self) -> tuple[str, int] | None:
        """This end's ``(host, port)`` (see :attr:`SecureStream.local_address`)."""
        return self.secure.local_address

    @property
    def remote_address(self) -> tuple[str, int] | None:
        """The peer's ``(host, port)`` as this end sees it."""
        return self.secure.remote_address

    @property
    def closed(self) -> bool:
        """Whether the connection has ended (:attr:`cause` says why)."""
        return self._closed.is_set()

    @property
    def stream_count(self) -> int:
        """Logical streams open on the connection."""
        return len(self._streams)

    @property
    def accepts_new_streams(self) -> bool:
        """Whether :meth:`open` may open a stream here (not ended, not retired either way, stream
        ids left)."""
        return not self.closed and self.retired is None and self._mux.can_open()

    @property
    def going_away(self) -> GoAwayCode | None:
        """Why the peer retired this connection (its GOAWAY), or ``None``: streams go on for the
        grace period, new ones go to another connection."""
        notice = self._mux.go_away_received
        return None if notice is None else notice.code

    async def wait_closed(self) -> None:
        """Wait until the connection has ended."""
        await self._closed.wait()

    async def wait_heard(self) -> None:
        """Ping the peer and wait until it has said anything on this connection (proof that it
        completed the handshake), or until the connection ended."""
        self.probe()
        await self._heard.wait()

    def __repr__(self) -> str:
        side = "out" if self.initiator else "in"
        return (
            f"<PeerConnection {side} remote={self.remote_peer.peer_id.short} "
            f"streams={len(self._streams)}{' closed' if self.closed else ''}>"
        )

    # -- opening -------------------------------------------------------------------------------

    async def open(self, protocol: str) -> LogicalStream:
        """Open a logical stream for ``protocol``; returns once the peer accepted it.

        Raises :class:`~p2ptls.ProtocolNotSupported` or :class:`~p2ptls.StreamRefused` if the peer
        refused it, :class:`~p2ptls.ConnectionLost` if the connection ended first.
        """
        if not self.accepts_new_streams:
            raise _GoingAway("this connection opens no more streams") from self.cause
        stream_id = self._mux.open_stream(protocol)
        if not self._mux.can_open():  # that was our last stream id: the next open dials
            self.retire(GoAwayCode.NORMAL)
        stream = LogicalStream(self, stream_id, protocol, server_side=False)
        self._streams[stream_id] = stream
        self._liveness.streams_changed(len(self._streams), trio.current_time())
        answered = trio.Event()
        self._opening[stream_id] = answered
        self._wake_writer()
        try:
            await answered.wait()
        except BaseException:
            self._opening.pop(stream_id, None)
            await stream.aclose()
            raise
        code = self._refusals.pop(stream_id, None)
        if code is not None:
            self._streams.pop(stream_id, None)
            self._stream_gone()
            if code is RefuseCode.UNKNOWN_PROTOCOL:
                raise ProtocolNotSupported(
                    f"peer {self.remote_peer.peer_id.short} does not serve {protocol!r}"
                )
            if code is RefuseCode.GOING_AWAY:
                raise _GoingAway("the peer is retiring this connection")
            raise StreamRefused(
                f"peer {self.remote_peer.peer_id.short} refused a stream for {protocol!r} "
                "(too many streams)"
            )
        if stream_id in self._reset_while_opening:
            self._reset_while_opening.discard(stream_id)
            await stream.aclose()
            stream._raise_error()
        if self.closed or stream._closed:
            if isinstance(self.cause, ConnectionRetired):  # worth a try on another connection
                raise _GoingAway(f"the connection ended: {self.cause}") from self.cause
            raise ConnectionLost(f"the connection ended: {self.cause}") from self.cause
        self.manager._touch(self)
        return stream

    # -- used by LogicalStream -----------------------------------------------------------------

    def _send_credit(self, stream_id: int) -> int:
        return self._mux.send_credit(stream_id)

    def _output_full(self) -> bool:
        return self._mux.output_size >= self._high_water

    def _sendable(self, stream_id: int) -> bool:
        """Whether a send on ``stream_id`` may queue bytes now (credit, room in the output)."""
        mux = self._mux
        return mux.output_size < self._high_water and mux.send_credit(stream_id) > 0

    def _send_data(
        self,
        stream_id: int,
        data: memoryview | bytes,
        *,
        message: bool = False,
        end: bool = False,
        fin: bool = False,
    ) -> int:
        # One send queues at most up to the high-water mark (a frame at least), so a small frame
        # of another stream never waits behind a whole window of ours.
        room = max(self._high_water - self._mux.output_size, FRAME_CHUNK)
        if len(data) > room:
            data = data[:room]
            end = fin = False
        taken = self._mux.send_data(stream_id, data, message=message, end=end, fin=fin)
        self._wake_writer()
        return taken

    def _bytes_consumed(self, stream_id: int, size: int) -> None:
        self._mux.bytes_consumed(stream_id, size)
        self._wake_writer()

    def _message_taken(self, stream: LogicalStream) -> None:
        self._mux.message_taken(stream.stream_id)
        self._wake_writer()

    def _reset(self, stream_id: int, code: ResetCode) -> None:
        self._mux.reset_stream(stream_id, code)
        self._wake_writer()

    def _close_stream(self, stream: LogicalStream) -> None:
        if self._streams.pop(stream.stream_id, None) is None:
            return
        if not self.closed:
            self._mux.close_stream(stream.stream_id)
            self._wake_writer()
        self._stream_gone()

    def _stream_gone(self) -> None:
        if not self._streams:
            self._liveness.streams_changed(0, trio.current_time())
            self._watchdog_lot.unpark_all()

    def _wake_writer(self) -> None:
        # Checked first: unpark on an empty ParkingLot (a writer busy writing) costs about 0.5 us;
        # once woken, the writer is not woken again before it runs.
        if self._writer_waiting and self._mux.output_size:
            self._writer_waiting = False
            self._writer_lot.unpark()

    # -- running -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the connection until it ends; then fail its streams and close it.

        A connection retired on purpose (:class:`ConnectionRetired`) stops reading, lets the
        writer flush what is queued (the streams' ends, the GOAWAY) and says goodbye; one that
        failed is closed at once.
        """
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._run_writer)
                with self._cancel:
                    async with trio.open_nursery() as readers:
                        readers.start_soon(self._guarded, self._watchdog)
                        await self._guarded(self._reader)
                self._flushing = True
                if isinstance(self.cause, ConnectionRetired):
                    self._writer_scope.deadline = trio.current_time() + FLUSH_TIMEOUT
                    self._writer_lot.unpark_all()
                else:
                    self._writer_scope.cancel()
        finally:
            self._finish(self.cause or ConnectionRetired("the host closed the connection"))
            with trio.CancelScope(shield=True):
                if isinstance(self.cause, ConnectionRetired) and not self._writer_failed:
                    with trio.move_on_after(FLUSH_TIMEOUT):
                        await self.secure.aclose()  # the authenticated goodbye
                await trio.aclose_forcefully(self.secure)

    async def _run_writer(self) -> None:
        with self._writer_scope:
            await self._guarded(self._writer)
        if self._writer_scope.cancelled_caught:
            self._writer_failed = True  # it may have stopped part-way through a record

    async def _guarded(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run one of the connection's tasks; whatever ends it ends the connection (and only
        it: one peer's input never ends the host)."""
        try:
            await task()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # The secure stream's own cause (the peer's refusal, a bad record, a truncation)
            # says more than its wrapper.
            cause = exc.__cause__
            self._end(cause if isinstance(cause, P2PTLSError) else exc)
        except KeepaliveTimeout as exc:
            self._end(exc)
        except MuxError as exc:
            log.info("peer %s broke the multiplexing protocol: %s", self._short, exc)
            self._end(exc)
        except Exception as exc:
            log.exception("unexpected error on the connection to %s", self._short)
            self._end(exc)

    def _end(self, cause: BaseException) -> None:
        if self.cause is None:
            self.cause = cause
        self._cancel.cancel()

    @property
    def _short(self) -> str:
        return self.remote_peer.peer_id.short

    async def _reader(self) -> None:
        secure = self.secure
        mux = self._mux
        heard = False
        while True:
            data = await secure.receive_some()
            if not data:
                self._end(PeerClosed("the peer closed the connection"))
                return
            self._liveness.received(trio.current_time())
            if not heard:
                self._heard.set()
                heard = True
            for event in mux.receive_data_untrusted(data):
                self._file(event)
            self._wake_writer()

    def _file(self, event: _mux.MuxEvent) -> None:
        if isinstance(event, _mux.DataReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._data_arrived(event.data, event.message, event.end)
            else:  # closed here while data was in flight: give the credit back
                self._mux.bytes_consumed(event.stream_id, len(event.data))
        elif isinstance(event, _mux.CreditAvailable):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._credit_arrived()
        elif isinstance(event, _mux.StreamOpened):
            self._offer(event.stream_id, event.protocol)
        elif isinstance(event, _mux.StreamAccepted):
            self._answer(event.stream_id)
        elif isinstance(event, _mux.OpenRefused):
            self._refusals[event.stream_id] = event.code
            self._answer(event.stream_id)
        elif isinstance(event, _mux.StreamEnded):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._fin_arrived()
        elif isinstance(event, _mux.StreamAborted):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                reason = "the peer reset the stream" if event.by_peer else "the peer broke a limit"
                stream._fail(StreamReset(reason, event.code))
            answered = self._opening.pop(event.stream_id, None)
            if answered is not None:  # reset instead of an answer
                self._reset_while_opening.add(event.stream_id)
                answered.set()
        elif isinstance(event, _mux.PongReceived):
            if event.payload == self._keepalive_ping and self._liveness.last_ping is not None:
                self.rtt = trio.current_time() - self._liveness.last_ping
            answered = self._pongs.pop(event.payload, None)
            if answered is not None:
                answered.set()
        else:  # GoAwayReceived
            self._liveness.retire(trio.current_time())
            self.manager._retired(self)
            self._watchdog_lot.unpark_all()

    def _answer(self, stream_id: int) -> None:
        answered = self._opening.pop(stream_id, None)
        if answered is not None:
            answered.set()
        elif stream_id in self._refusals:
            del self._refusals[stream_id]  # the opener gave up waiting

    def _serves(self, protocol: str) -> bool:
        """Whether a handler serves ``protocol`` (the multiplexer refuses an OPEN at once if
        not; each such refusal is counted)."""
        if self.manager.handler_for(protocol) is not None:
            return True
        self.manager.unknown_protocol_refusals += 1
        return False

    def _offer(self, stream_id: int, protocol: str) -> None:
        handler = self.manager.handler_for(protocol)
        if handler is None:
            self._mux.refuse_stream(stream_id, RefuseCode.UNKNOWN_PROTOCOL)
            self.manager.unknown_protocol_refusals += 1
            return
        self._mux.accept_stream(stream_id)
        stream = LogicalStream(self, stream_id, protocol, server_side=True)
        self._streams[stream_id] = stream
        self._liveness.streams_changed(len(self._streams), trio.current_time())
        self.manager._touch(self)
        self.manager._start_handler(stream)

    async def _writer(self) -> None:
        secure = self.secure
        mux = self._mux
        try:
            while True:
                while not mux.output_size:
                    if self._flushing:
                        return
                    self._writer_waiting = True
                    try:
                        await self._writer_lot.park()
                    finally:
                        self._writer_waiting = False
                data = mux.data_to_send()
                if self._drained:
                    self._drained.unpark_all()
                await secure.send_all(data)
        except BaseException:
            self._writer_failed = True
            raise

    async def _watchdog(self) -> None:
        liveness = self._liveness
        peer = self.remote_peer.peer_id
        while True:
            liveness.protected = self.manager.is_protected(peer)
            for event in liveness.handle_timers(trio.current_time()):
                if isinstance(event, PingDue):
                    self._keepalive_ping = self.manager.randomness(8)
                    self._mux.send_ping(self._keepalive_ping)
                    self._wake_writer()
                elif isinstance(event, PeerSilent):
                    raise KeepaliveTimeout(event.timeout)
                else:
                    self._retire_now()
                    return
            with trio.move_on_at(liveness.next_deadline()):
                await self._watchdog_lot.park()

    def probe(self) -> None:
        """Check now that the peer still answers (a PING), instead of at the next keepalive."""
        self._liveness.probe()
        self._watchdog_lot.unpark_all()

    def retire(self, code: GoAwayCode) -> None:
        """Stop accepting new streams; close once the open ones end (or after the grace). The
        host's next open to the peer uses (or dials) another connection."""
        if self.retired is None and not self.closed:
            self.retired = code
            self.manager._retired(self)
            self._liveness.retire(trio.current_time())
            self._mux.go_away(code)
            self._wake_writer()
            self._watchdog_lot.unpark_all()

    def _retire_now(self) -> None:
        if self.retired is None and self._mux.go_away_received is not None:
            reason = "the peer retired it"
        else:
            if self.retired is None:
                self.retire(GoAwayCode.IDLE)
            reason = {
                GoAwayCode.IDLE: "closed after idle_timeout without streams",
                GoAwayCode.REPLACED: "replaced by another connection to the same peer",
                GoAwayCode.LIMIT: "evicted by the connection limit",
            }.get(self.retired or GoAwayCode.NORMAL, "closed by the host")
        self._end(ConnectionRetired(reason))

    def close(self, reason: str = "the host closed the connection", *, lost: bool = False) -> None:
        """Close the connection and every stream on it now, as if the application had closed
        each stream: the peer reads the end of each, then the connection's goodbye.

        ``lost``: our application did not close it (the peer holds too many connections), so
        our streams fail with :class:`~p2ptls.ConnectionLost`, as on a broken connection,
        instead of becoming closed.
        """
        if self.cause is not None or self.closed:
            return
        cause = ConnectionRetired(reason)
        for stream in list(self._streams.values()):
            if lost:
                stream._fail(self._lost(cause))
            else:
                stream._closed_by_host()
            self._mux.close_stream(stream.stream_id)
        self._streams.clear()
        self.retire(GoAwayCode.NORMAL)
        self._end(cause)

    def _lost(self, cause: BaseException) -> ConnectionLost:
        lost = ConnectionLost(f"the connection to {self._short} was lost: {cause}")
        lost.__cause__ = cause
        return lost

    def _finish(self, cause: BaseException) -> None:
        if self.cause is None:
            self.cause = cause
        lost = self._lost(self.cause)
        for stream in list(self._streams.values()):
            stream._fail(lost)
        for answered in [*self._opening.values(), *self._pongs.values()]:
            answered.set()
        self._opening.clear()
        self._mux.release_all()
        self._closed.set()
        deadline = trio.current_time() + self._handler_grace
        for scope in self._handler_scopes:
            scope.deadline = min(scope.deadline, deadline)
        self._heard.set()  # nobody waits for a peer that is gone
        self._drained.unpark_all()
        self.manager._connection_ended(self)

    @contextlib.contextmanager
    def _serving_handler(self) -> Iterator[trio.CancelScope]:
        """The cancel scope a protocol handler of this connection runs in: cancelled
        ``handler_grace`` seconds after the connection ends."""
        scope = trio.CancelScope()
        if self.closed:
            scope.deadline = trio.current_time() + self._handler_grace
        self._handler_scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._handler_scopes.discard(scope)

    async def ping(self) -> float:
        """One round trip on this connection, in seconds; :class:`~p2ptls.ConnectionLost` if it
        ends first."""
        if self.closed:
            raise ConnectionLost("the connection ended before the ping") from self.cause
        payload = self.manager.randomness(8)
        answered = trio.Event()
        self._pongs[payload] = answered
        start = trio.current_time()
        try:
            self._mux.send_ping(payload)
            self._wake_writer()
            await answered.wait()
        finally:
            self._pongs.pop(payload, None)
        if self.closed:
            raise ConnectionLost("the connection ended before the pong") from self.cause
        return trio.current_time() - start
