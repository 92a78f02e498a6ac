"""The connection manager: the one place a host makes, shares and ends its connections (trio).

Theory of operation
-------------------
Every protocol of a host reaches a peer through :meth:`ConnectionManager.open`. It looks up the
peer's current :class:`~p2ptls.connections.PeerConnection` in the sans-IO
:class:`~p2ptls._connection_table.ConnectionTable` and opens a logical stream on it; if there is
none it dials, and every other open to that peer waits for the same dial (the dial runs in the
host's nursery, so one cancelled opener does not cancel it for the others; once every opener has
left, it is abandoned, and an open after that dials anew). A failed dial puts the
peer in back-off: opens fail at once with :class:`~p2ptls.connections.DialBackoff` until
``retry_after``.

Connections from either direction are *adopted* once their handshake completes. The table decides
which one to keep when two reach the same peer; the other is retired (GOAWAY: its streams go on
for ``replaced_grace`` seconds, new ones are refused with "going away" and the opener retries on
the connection that won). An open refused that way, or cut by a connection ending between the
lookup and the answer, is retried a few times before the error reaches the caller.

Inbound streams go to the handler registered for their protocol with :meth:`serve_protocol`;
each handler runs in its own task and its stream is closed when it returns. An exception from a
handler ends only that stream (and is logged): a peer must not be able to end a host by making a
handler fail.

Subscribers of :meth:`peer_events` learn when a peer gains its first live connection and loses
its last one. Each subscriber has a bounded buffer; one that falls behind is closed (its iteration
ends, a warning is logged) rather than making the host keep events without limit.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable

import attrs
import trio

from ._connection_table import ConnectionTable
from ._connection_table import DialBackoff as BackoffTable
from ._mux_wire import GoAwayCode, check_protocol_name
from .config import ConnectionConfig
from .connections import (
    ConnectionLimitReached,
    DialBackoff,
    PeerConnected,
    PeerConnection,
    PeerDisconnected,
    PeerEvent,
    ProtocolHandler,
    _GoingAway,
)
from .context import SecurityContext
from .identity import PeerId, PeerRecord
from .logical import ConnectionLost, LogicalStream
from .stream import SecureStream

log = logging.getLogger("p2ptls.connections")

MAX_LIVE_PER_PEER = 3
"""Connections one peer may hold at once: the current one and those still retiring (they keep
their streams for ``replaced_grace``). Beyond it the oldest retiring one closes at once, so that a
peer reconnecting again and again cannot hold one connection per reconnection."""
OPEN_ATTEMPTS = 3
"""Tries of one :meth:`ConnectionManager.open` when a connection goes away under it."""

StreamSink = Callable[[LogicalStream], None]


class _Dial:
    """One dial in progress, shared by every open waiting for it; cancelled if they all leave."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: BaseException | None = None
        self.waiters = 0
        self.scope = trio.CancelScope()


class ConnectionManager:
    """Shares one connection per peer between every protocol of a host. Use it through the
    :class:`~p2ptls.Host` (``host.open``, ``host.serve_protocol``, ``host.protect``...)."""

    def __init__(
        self,
        context: SecurityContext,
        config: ConnectionConfig,
        nursery: trio.Nursery,
        *,
        rng: random.Random | None = None,
        randomness: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.context = context
        self.config = config
        self._nursery = nursery
        self.randomness = randomness
        """Random bytes (PING payloads); ``rng`` jitters the dial back-off."""
        self._table: ConnectionTable[PeerConnection] = ConnectionTable(
            context.identity.peer_id, config.max_connections
        )
        self._backoff = BackoffTable(config.dial_backoff_initial, config.dial_backoff_max, rng=rng)
        self._handlers: dict[str, ProtocolHandler] = {}
        self._sinks: dict[str, StreamSink] = {}
        self._dials: dict[PeerId, _Dial] = {}
        self._live: dict[PeerId, dict[PeerConnection, None]] = {}
        """Every connection of each peer that has not ended, oldest first."""
        self._announced: set[PeerId] = set()
        """Peers whose :class:`PeerConnected` went out (and whose :class:`PeerDisconnected` is
        owed when their last live connection ends)."""
        self._arrivals = trio.lowlevel.ParkingLot()
        self._subscribers: list[trio.MemorySendChannel[PeerEvent]] = []
        self._closing = False
        self.unknown_protocol_refusals = 0
        """Streams refused because no handler serves their protocol."""
        self.handler_failures = 0
        """Handlers that ended with an unexpected exception (each logged)."""

    # -- protocols -----------------------------------------------------------------------------

    def serve_protocol(self, protocol: str, handler: ProtocolHandler) -> None:
        """See :meth:`Host.serve_protocol <p2ptls.Host.serve_protocol>`."""
        check_protocol_name(protocol)
        if protocol in self._handlers or protocol in self._sinks:
            raise ValueError(f"protocol {protocol!r} is already served")
        self._handlers[protocol] = handler

    def deliver_protocol(self, protocol: str, sink: StreamSink) -> None:
        """Hand streams of ``protocol`` to ``sink`` (which then owns them) instead of a task."""
        check_protocol_name(protocol)
        self._sinks[protocol] = sink

    def remove_protocol(self, protocol: str) -> None:
        """Stop serving ``protocol`` (streams already open go on)."""
        self._handlers.pop(protocol, None)
        self._sinks.pop(protocol, None)

    def handler_for(self, protocol: str) -> ProtocolHandler | StreamSink | None:
        """What takes the streams of ``protocol`` (``None``: they are refused)."""
        if self._closing:
            return None
        return self._handlers.get(protocol) or self._sinks.get(protocol)

    def _start_handler(self, stream: LogicalStream) -> None:
        sink = self._sinks.get(stream.protocol)
        if sink is not None:
            sink(stream)
            return
        self._nursery.start_soon(self._run_handler, self._handlers[stream.protocol], stream)

    async def _run_handler(self, handler: ProtocolHandler, stream: LogicalStream) -> None:
        try:
            with stream.connection._serving_handler() as scope:
                await handler(stream)
            if scope.cancelled_caught:
                log.info("the handler of %r was cancelled: its connection had ended", stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("%r ended: %r", stream, exc)
        except Exception:
            self.handler_failures += 1
            log.exception("the handler of %r failed", stream)
        finally:
            await stream.aclose()

    # -- connections ---------------------------------------------------------------------------

    @property
    def connections(self) -> tuple[PeerConnection, ...]:
        """The current connection of every connected peer."""
        return self._table.connections()

    def connection(self, peer: PeerId) -> PeerConnection | None:
        """``peer``'s current connection, if there is one."""
        return self._table.current(peer)

    def protect(self, peer: PeerId, tag: str) -> None:
        """See :meth:`Host.protect <p2ptls.Host.protect>`."""
        self._table.protect(peer, tag)

    def unprotect(self, peer: PeerId, tag: str) -> None:
        """See :meth:`Host.unprotect <p2ptls.Host.unprotect>`."""
        self._table.unprotect(peer, tag)
        connection = self._table.current(peer)
        if connection is not None:
            connection._watchdog_lot.unpark_all()  # its idle timer may run now

    def is_protected(self, peer: PeerId) -> bool:
        """Whether any tag protects ``peer``'s connection."""
        return self._table.is_protected(peer)

    def forget_backoff(self, peer: PeerId) -> None:
        """Let ``peer`` be dialled again at once, whatever its earlier dials did (for example
        after the network came back, or the peer's operator said it was fixed)."""
        self._backoff.succeeded(peer)

    def _touch(self, connection: PeerConnection) -> None:
        self._table.touch(connection.remote_peer.peer_id)

    async def open(
        self, record: PeerRecord, protocol: str, address: tuple[str, int] | None = None
    ) -> LogicalStream:
        """A logical stream for ``protocol`` to ``record``'s peer, on its shared connection."""
        check_protocol_name(protocol)
        for attempt in range(OPEN_ATTEMPTS):
            connection = await self.connection_to(record, address)
            try:
                return await connection.open(protocol)
            except _GoingAway:
                if attempt == OPEN_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def connection_to(
        self, record: PeerRecord, address: tuple[str, int] | None = None
    ) -> PeerConnection:
        """The peer's current connection, dialled if there is none."""
        peer = record.peer_id
        for _ in range(OPEN_ATTEMPTS):
            connection = self._table.current(peer)
            if connection is not None and connection.accepts_new_streams:
                return connection
            if self._closing:
                raise trio.ClosedResourceError("the host is closing")
            dial = self._dials.get(peer)
            if dial is None:
                now = trio.current_time()
                retry_at = self._backoff.retry_at(peer, now)
                if retry_at is not None:
                    raise DialBackoff(peer, retry_at - now)
                dial = _Dial()
                self._dials[peer] = dial
                self._nursery.start_soon(self._dial, dial, record, address)
            dial.waiters += 1
            try:
                await dial.done.wait()
            finally:
                dial.waiters -= 1
                if not dial.waiters and not dial.done.is_set():
                    dial.scope.cancel()  # nobody wants it any more
                    if self._dials.get(peer) is dial:  # an open from now on dials anew
                        del self._dials[peer]
            if dial.error is not None:
                raise dial.error
        raise ConnectionLimitReached(f"no usable connection to {peer.short}")

    async def _dial(self, dial: _Dial, record: PeerRecord, address: tuple[str, int] | None) -> None:
        peer = record.peer_id
        try:
            target = address or record.address
            if target is None:
                raise ValueError(f"no address known for peer {peer.short}")
            with dial.scope:
                try:
                    with trio.fail_after(self.config.dial_timeout):
                        connection = await self._connect(record, target)
                except trio.TooSlowError:
                    raise TimeoutError(
                        f"dialling peer {peer.short} at {target[0]}:{target[1]} took longer "
                        f"than dial_timeout ({self.config.dial_timeout:g} s)"
                    ) from None
            if dial.scope.cancelled_caught:
                dial.error = OSError("the dial was abandoned by every opener")
                return
            if self._adopt(connection, initiator=True) is None:
                if self._closing:
                    raise trio.ClosedResourceError("the host is closing")
                raise ConnectionLimitReached(
                    "every connection slot is held by a protected connection"
                )
            self._backoff.succeeded(peer)
        except (OSError, trio.BrokenResourceError) as exc:
            if not isinstance(exc, ConnectionLimitReached):
                self._backoff.failed(peer, trio.current_time())
            dial.error = exc
        except Exception as exc:  # handed to every waiting opener; the host goes on
            dial.error = exc
        finally:
            if self._dials.get(peer) is dial:
                del self._dials[peer]
            dial.done.set()

    async def _connect(self, record: PeerRecord, target: tuple[str, int]) -> PeerConnection:
        """A running connection to ``record``'s peer, once the peer has spoken on it.

        Our side of the handshake completes first (as a TLS client's does), before the peer has
        checked our last flight; the peer may still refuse us, or drop its half-done handshake
        (its bound on handshakes in progress). So the connection counts, and may replace another
        one to the peer, only once its first frame arrived: the answer to a PING sent at once.
        """
        secure = await self._handshake(record, target)
        return await self._start_dialled(secure)

    async def _start_dialled(self, secure: SecureStream) -> PeerConnection:
        """Run the connection we dialled on ``secure`` (its handshake done) and wait for the
        peer's first frame; the caller adopts it."""
        record = secure.remote_peer
        connection = PeerConnection(secure, self, initiator=True)
        self._nursery.start_soon(connection.run)
        try:
            await connection.wait_heard()
        except BaseException:
            connection.close("the dial was abandoned")
            raise
        if connection.closed:
            raise ConnectionLost(
                f"the connection to {record.peer_id.short} ended before the peer answered: "
                f"{connection.cause}"
            ) from connection.cause
        if connection.going_away is GoAwayCode.LIMIT:
            raise ConnectionLost(
                f"peer {record.peer_id.short} turned the connection away: its connection limit "
                "is reached and every connection it holds is protected"
            )
        return connection

    async def _handshake(
        self, record: PeerRecord, target: tuple[str, int], *, resume: bool = True
    ) -> SecureStream:
        tcp = await trio.open_tcp_stream(*target)
        config = None if resume else attrs.evolve(self.context.config, resumption=False)
        try:
            secure = SecureStream(tcp, self.context, remote=record, messages=False, config=config)
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise
        try:
            await secure.do_handshake()
        except trio.BrokenResourceError:
            await trio.aclose_forcefully(secure)
            if secure.resuming:
                # The peer did not take our ticket (it restarted, say): at once, on a new
                # connection, a full handshake (SPEC 3.6, "Fallback").
                return await self._handshake(record, target, resume=False)
            raise
        except BaseException:
            await trio.aclose_forcefully(secure)
            raise
        return secure

    def adopt(self, secure: SecureStream) -> PeerConnection | None:
        """Take an accepted connection whose handshake completed (the host calls it): the
        initiator completed its side before ours, so the connection counts at once."""
        connection = PeerConnection(secure, self, initiator=False)
        self._nursery.start_soon(connection.run)
        return self._adopt(connection, initiator=False)

    def _adopt(self, connection: PeerConnection, *, initiator: bool) -> PeerConnection | None:
        peer = connection.remote_peer.peer_id
        if self._closing:
            connection.close("the host is closing")
            return None
        decision = self._table.add(peer, connection, initiated_by_us=initiator)
        live = self._live.setdefault(peer, {})
        live[connection] = None
        running = [c for c in live if c.cause is None]
        while len(running) > MAX_LIVE_PER_PEER:
            oldest = next(c for c in running if c is not connection and c is not decision.current)
            oldest.close(
                "the peer holds too many connections (it reconnected again and again)", lost=True
            )
            running.remove(oldest)
        if not decision.keep:
            # The peer's other connection wins (or no slot is free): this one never carries a
            # stream of ours; the peer may have opened some already, so it goes away gently.
            connection.retire(GoAwayCode.REPLACED if decision.current else GoAwayCode.LIMIT)
            if decision.current is not None:
                # The peer may have lost the connection that won (a restart): find out in a
                # round trip, so that its next dial succeeds.
                decision.current.probe()
            return decision.current
        for old in decision.retire:
            same_peer = old.remote_peer.peer_id == peer
            old.retire(GoAwayCode.REPLACED if same_peer else GoAwayCode.LIMIT)
        if peer not in self._announced:
            self._announced.add(peer)
            self._emit(PeerConnected(peer, initiator))
        self._arrivals.unpark_all()
        return connection

    def _retired(self, connection: PeerConnection) -> None:
        """Either end retired ``connection``: it is no longer the peer's current one."""
        self._table.remove(connection.remote_peer.peer_id, connection)

    def _connection_ended(self, connection: PeerConnection) -> None:
        peer = connection.remote_peer.peer_id
        self._table.remove(peer, connection)
        live = self._live.get(peer)
        if live is None:
            return
        live.pop(connection, None)
        if not live:
            del self._live[peer]
            if peer in self._announced:
                self._announced.discard(peer)
                self._emit(PeerDisconnected(peer, connection.cause))

    # -- events --------------------------------------------------------------------------------

    def peer_events(self, max_buffer: int = 256) -> trio.MemoryReceiveChannel[PeerEvent]:
        """A channel of :class:`PeerConnected` / :class:`PeerDisconnected` events from now on.

        Read it promptly: once ``max_buffer`` events wait unread, the channel is closed.
        """
        send, receive = trio.open_memory_channel[PeerEvent](max_buffer)
        self._subscribers.append(send)
        return receive

    def _emit(self, event: PeerEvent) -> None:
        kept = []
        for subscriber in self._subscribers:
            try:
                subscriber.send_nowait(event)
            except trio.WouldBlock:
                log.warning("a peer-event subscriber fell behind; its channel is closed")
                subscriber.close()
                continue
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                continue  # the subscriber closed its end
            kept.append(subscriber)
        self._subscribers = kept

    # -- closing -------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close every connection (each tells its peer first) and end the event channels."""
        self._closing = True
        self._arrivals.unpark_all()
        connections = {c for live in self._live.values() for c in live}
        for connection in connections:
            connection.close()
        with trio.move_on_after(2.0):
            for connection in connections:
                await connection.wait_closed()
        for subscriber in self._subscribers:
            subscriber.close()
        self._subscribers = []

    async def wait_connected(self, peer: PeerId) -> PeerConnection:
        """Wait until ``peer`` has a connection that accepts streams;
        ``trio.ClosedResourceError`` once the host is closing."""
        while True:
            connection = self._table.current(peer)
            if connection is not None and connection.accepts_new_streams:
                return connection
            if self._closing:
                raise trio.ClosedResourceError("the host is closing")
            await self._arrivals.park()
