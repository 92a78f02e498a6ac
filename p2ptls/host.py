"""The host: listen, connect by peer, and accept verified streams, on top of trio's TCP.

Theory of operation
-------------------
A :class:`Host` owns one :class:`~p2ptls.SecurityContext` (identity, network key, trusted peers)
and one nursery. When it listens, an accept loop hands every TCP connection to its own task, which
runs the handshake and then delivers the verified stream to ``host.incoming()`` or to a handler.

Nothing a connection claims is known before its handshake ends, so every resource an
unauthenticated connection holds is bounded and can be taken back:

* a handshake in progress holds a *slot* in a :class:`~p2ptls._bounded.FairTable`, charged to its
  source address (the IPv4 address or the IPv6 /64). A source that holds
  ``max_pending_per_address`` slots loses its own oldest one to open another; when all
  ``max_pending_handshakes`` slots are taken, the oldest slot of the source holding the most is
  evicted. A newcomer is never refused for lack of room, and a flood from a few sources only
  ever displaces the flooders' own handshakes. An evicted handshake is cancelled and its
  connection closed.
* the first handshake record (the Hello) must arrive whole within ``first_flight_timeout``, much
  shorter than the total ``handshake_timeout``; until then the connection costs no cryptography
  (the record is only peeked at). Silent and dribbling connections give their slot back early.
* verified streams that the application has not taken from ``incoming()`` wait in a second fair
  table, charged to the authenticated peer: ``incoming_backlog`` in total,
  ``incoming_backlog_per_peer`` per peer; when it is full the oldest waiting stream of the peer
  holding the most is closed.

A connection that fails its handshake is closed and logged with the generic reason; it can never
cancel the host's nursery. Every path closes what it opened, cancellation included (a host
closing mid-handshake, a cancelled :meth:`Host.connect`). Leaving ``open_host`` closes every stream
the host made or accepted; an exception raised in its block comes out as itself, not wrapped in
an ``ExceptionGroup``.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from . import _wire as wire
from ._bounded import FairTable
from ._errors import P2PTLSError, RecordError
from ._util import open_service_nursery
from .config import ConnectionConfig, StreamConfig
from .connections import PeerConnection, PeerEvent, ProtocolHandler
from .context import SecurityContext
from .identity import Identity, NetworkKey, PeerId, PeerRecord
from .logical import LogicalStream
from .manager import ConnectionManager
from .stream import SecureStream
from .trust import AdmissionPolicy, KnownPeers, ReplayGuard, deny_unknown

log = logging.getLogger("p2ptls.host")

Handler = Callable[[LogicalStream], Awaitable[Any]]

DEFAULT_PROTOCOL = "p2ptls/stream/1"
"""The protocol of :meth:`Host.connect`, :meth:`Host.incoming` and :func:`serve`."""


def _peer_tuple(peers: Iterable[PeerRecord]) -> tuple[PeerRecord, ...]:
    return tuple(peers)


def _at_least_one(_instance: Any, attribute: Any, value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1")


def _positive(_instance: Any, attribute: Any, value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be positive")


# What accept() raises when the process or system is out of descriptors or memory (as in
# trio.serve_listeners): the host waits a moment and goes on instead of ending.
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_ACCEPT_CAPACITY_PAUSE = 0.1
_PRUNE_MINIMUM = 64


@attrs.frozen
class HostConfig:
    """How a host identifies itself, whom it trusts and where it listens."""

    identity: Identity
    """This host's RSA identity."""
    psk: NetworkKey
    """The network's pre-shared key."""
    peers: tuple[PeerRecord, ...] = attrs.field(default=(), converter=_peer_tuple)
    """Known peers (with addresses, to connect to them by id)."""
    listen: tuple[str, int] | None = None
    """``(address, port)`` to listen on; ``None`` for a client-only host. Port 0 picks one."""
    admission: AdmissionPolicy = deny_unknown
    """Whether to admit an authenticated peer that holds the network key but is not known."""
    max_admitted_peers: int = attrs.field(default=4096, validator=attrs.validators.ge(1))
    """Admitted peers remembered (``host.context.peers.admitted``); the least recently
    authenticated is forgotten first."""
    stream: StreamConfig = attrs.field(factory=StreamConfig)
    """Limits of every secure connection of this host."""
    connections: ConnectionConfig = attrs.field(factory=ConnectionConfig)
    """How connections are shared between protocols: limits, timeouts, flow control."""
    max_pending_handshakes: int = attrs.field(default=64, validator=_at_least_one)
    """Handshakes in progress at once; a new connection then evicts the oldest handshake of the
    source holding the most."""
    max_pending_per_address: int = attrs.field(default=8, validator=_at_least_one)
    """Handshakes in progress from one source address (IPv4 address or IPv6 /64); a new one from
    that source evicts its own oldest."""
    first_flight_timeout: float | None = attrs.field(default=2.0, validator=_positive)
    """Seconds from accept until the whole first handshake record (the Hello) must have arrived
    (``None``: only ``stream.handshake_timeout`` applies)."""
    replay_state_path: str | None = None
    """File where Hello timestamps are persisted (replay protection across restarts)."""
    incoming_backlog: int = attrs.field(default=16, validator=_at_least_one)
    """Verified streams waiting for ``incoming()``; beyond it the oldest waiting stream of the
    peer holding the most is closed."""
    incoming_backlog_per_peer: int = attrs.field(default=4, validator=_at_least_one)
    """Verified streams of one peer waiting for ``incoming()``; beyond it its oldest is closed."""
    private_key_threads: int | None = None
    """RSA private-key operations at once (default: half the cores)."""
    max_private_key_operations_per_s: float | None = None
    """Rate limit on RSA private-key operations (``None``: only the thread limit applies)."""


def _source_key(address: str) -> str:
    """What the per-source handshake bound counts: the IPv4 address, or the IPv6 /64 (one host
    usually owns a whole /64)."""
    parsed = ipaddress.ip_address(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return address


def _set_receive_low_water(sock: trio.socket.SocketType, size: int) -> bool:
    """Make ``sock`` readable only once ``size`` bytes are buffered; False where unsupported."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
    except (OSError, AttributeError):
        return False
    return True


def _first_record_size(peeked: bytes) -> int:
    """How many bytes the first record needs, from what has arrived of it (0: no valid Hello
    header, which the handshake refuses at once, so there is nothing to wait for)."""
    if len(peeked) < wire.HEADER_SIZE:
        return wire.HEADER_SIZE
    try:
        content_type, length = wire.parse_header_untrusted(peeked[: wire.HEADER_SIZE])
    except RecordError:
        return 0
    return wire.HEADER_SIZE + length if content_type == wire.HANDSHAKE else 0


async def _first_flight_arrived(sock: trio.socket.SocketType) -> bool:
    """Wait until the first record (the Hello) is buffered whole, without reading it; False if
    the peer closed first.

    Usually the whole Hello is there with its first byte, and one peek settles it. Otherwise the
    socket's receive low-water mark is raised to the size still missing, so the wait costs no
    wake-up per byte of a dribbling peer.
    """
    most = wire.HEADER_SIZE + wire.MAX_HANDSHAKE_BODY
    peeked = await sock.recv(most, socket.MSG_PEEK)
    while peeked:
        needed = _first_record_size(peeked)
        if len(peeked) >= needed:
            return True
        if not _set_receive_low_water(sock, needed):
            return True  # cannot wait for the whole record here: its first bytes must do
        try:
            await trio.lowlevel.wait_readable(sock)
            more = await sock.recv(most, socket.MSG_PEEK)
        finally:
            _set_receive_low_water(sock, 1)
        if 0 < len(more) <= len(peeked):
            # Readable without more data: the peer closed part-way (the handshake reads what
            # came and fails at once).
            return True
        peeked = more
    return False


def _transport_closed(stream: SecureStream) -> bool:
    """Whether nothing is left to close: the stream's TCP socket is closed (by ``aclose``, or
    because the stream broke)."""
    transport = stream.transport_stream
    return isinstance(transport, trio.SocketStream) and transport.socket.fileno() == -1


class Host:
    """A running p2ptls host. Create with :func:`open_host`."""

    def __init__(self, config: HostConfig, nursery: trio.Nursery) -> None:
        self.config = config
        self.context = SecurityContext(
            config.identity,
            config.psk,
            KnownPeers(config.peers, config.admission, max_admitted=config.max_admitted_peers),
            config=config.stream,
            replay_guard=ReplayGuard(config.replay_state_path),
            private_key_threads=config.private_key_threads,
            max_private_key_operations_per_s=config.max_private_key_operations_per_s,
        )
        self._nursery = nursery
        self.manager = ConnectionManager(self.context, config.connections, nursery)
        """Makes, shares and ends this host's connections (one per peer)."""
        self.manager.deliver_protocol(DEFAULT_PROTOCOL, self._deliver_to_incoming)
        # Handshakes in progress, each with the cancel scope that evicts it.
        self._pending: FairTable[trio.CancelScope, trio.CancelScope, str] = FairTable(
            config.max_pending_handshakes, config.max_pending_per_address
        )
        # Streams of DEFAULT_PROTOCOL not yet taken from incoming(), charged to their peer.
        self._backlog: FairTable[LogicalStream, LogicalStream, PeerId] = FairTable(
            config.incoming_backlog, config.incoming_backlog_per_peer
        )
        self._arrivals = trio.lowlevel.ParkingLot()
        self._closing = False
        self.listeners: list[trio.SocketListener] = []
        self.handshake_failures = 0
        """Connections closed because their handshake failed, timed out or was evicted."""
        self.handshakes_evicted = 0
        """Handshakes cancelled to make room for newer connections (also in
        ``handshake_failures``)."""
        self.incoming_dropped = 0
        """Incoming streams closed because ``incoming()`` was not read fast enough."""

    @property
    def peer_id(self) -> PeerId:
        """This host's peer id."""
        return self.config.identity.peer_id

    @property
    def address(self) -> tuple[str, int]:
        """The first listening address (after port 0 was resolved)."""
        if not self.listeners:
            raise RuntimeError("this host is not listening")
        host, port = self.listeners[0].socket.getsockname()[:2]
        return str(host), int(port)

    @property
    def pending_handshakes(self) -> int:
        """Incoming handshakes in progress."""
        return len(self._pending)

    def peer_record(self, name: str = "") -> PeerRecord:
        """This host's public record, with its listening address if it has one."""
        address = self.address if self.listeners else None
        return self.config.identity.peer_record(name=name, address=address)

    def add_peer(self, record: PeerRecord) -> None:
        """Trust another peer from now on."""
        self.context.peers.add(record)

    # -- connections and protocols --------------------------------------------------------------

    @property
    def connections(self) -> tuple[PeerConnection, ...]:
        """The current connection of every connected peer (one per peer)."""
        return self.manager.connections

    def connection(self, peer: PeerId) -> PeerConnection | None:
        """The current connection to ``peer``, if there is one."""
        return self.manager.connection(peer)

    async def open(
        self,
        peer: PeerRecord | PeerId,
        protocol: str,
        *,
        address: tuple[str, int] | None = None,
    ) -> LogicalStream:
        """Open a logical stream for ``protocol`` to ``peer`` (a record, or a known peer's id).

        Uses the one connection this host keeps to the peer, dialling it if there is none
        (concurrent opens share one dial). Returns once the peer accepted the stream.

        Raises :class:`~p2ptls.ProtocolNotSupported` if the peer serves no such protocol,
        :class:`~p2ptls.StreamRefused` if it has too many of our streams open,
        :class:`~p2ptls.DialBackoff` (an ``OSError``) while a failed dial backs off, ``OSError``
        if the address is unreachable (``TimeoutError`` after ``dial_timeout``),
        ``trio.BrokenResourceError`` if the handshake fails (its ``__cause__`` says why),
        :class:`~p2ptls.ConnectionLost` if the connection ends meanwhile, ``KeyError`` for the
        id of a peer this host does not know, ``ValueError`` for a bad protocol name or a peer
        with no address, and ``trio.ClosedResourceError`` once the host is closing. It waits for
        the peer's answer without a deadline of its own: wrap it in ``trio.move_on_after`` to
        bound it.
        """
        return await self.manager.open(self._resolve(peer), protocol, address)

    def serve_protocol(self, protocol: str, handler: ProtocolHandler) -> None:
        """Run ``handler(stream)`` in its own task for every stream a peer opens for
        ``protocol``; the stream is closed when the handler returns.

        A peer that opens a protocol nobody serves is refused (its ``open`` raises
        :class:`~p2ptls.ProtocolNotSupported`). An exception from the handler ends only its
        stream: it is logged (a ``BrokenResourceError`` or ``ClosedResourceError``, the peer
        going away, at info level; anything else as an error, counted in
        ``host.manager.handler_failures``). When the connection breaks, the stream's next
        operation raises :class:`~p2ptls.ConnectionLost`; a handler still running
        ``handler_grace`` seconds (:class:`~p2ptls.ConnectionConfig`) after its connection ended
        is cancelled, so that handlers waiting on something else than their stream do not pile
        up when a peer reconnects again and again.
        """
        self.manager.serve_protocol(protocol, handler)

    def remove_protocol(self, protocol: str) -> None:
        """Stop serving ``protocol`` (streams already open go on)."""
        self.manager.remove_protocol(protocol)

    def protect(self, peer: PeerId, tag: str) -> None:
        """Keep the connection to ``peer`` open: it is never closed as idle or evicted by the
        connection limit while any tag protects it."""
        self.manager.protect(peer, tag)

    def unprotect(self, peer: PeerId, tag: str) -> None:
        """Withdraw the protection ``tag`` gave ``peer``'s connection (other tags still hold)."""
        self.manager.unprotect(peer, tag)

    def forget_backoff(self, peer: PeerId) -> None:
        """Let ``peer`` be dialled again at once, even while its failed dials back off."""
        self.manager.forget_backoff(peer)

    def peer_events(self, max_buffer: int = 256) -> trio.MemoryReceiveChannel[PeerEvent]:
        """:class:`~p2ptls.PeerConnected` and :class:`~p2ptls.PeerDisconnected` events from now
        on (a peer's first live connection, and its last one ending). A reader that falls
        ``max_buffer`` events behind has its channel closed."""
        return self.manager.peer_events(max_buffer)

    async def connect(
        self, peer: PeerRecord | PeerId, address: tuple[str, int] | None = None
    ) -> LogicalStream:
        """Open a stream of the default protocol (``"p2ptls/stream/1"``) to ``peer``: the one a
        peer reads from :meth:`incoming` or serves with :func:`serve`.

        Same as ``host.open(peer, DEFAULT_PROTOCOL, address=address)``; the stream shares the
        host's one connection to the peer. ``stream.remote_peer`` is ``peer``.
        """
        return await self.open(peer, DEFAULT_PROTOCOL, address=address)

    def _resolve(self, peer: PeerRecord | PeerId) -> PeerRecord:
        if isinstance(peer, PeerRecord):
            return peer  # connecting to a record does not make it trusted for incoming streams
        record = self.context.peers.get(peer)
        if record is None:
            connection = self.manager.connection(peer)
            if connection is None:
                raise KeyError(f"unknown peer {peer.short}")
            record = connection.remote_peer  # connected to us: its handshake proved it
        return record

    # -- accepting ------------------------------------------------------------------------------

    async def incoming(self) -> AsyncIterator[LogicalStream]:
        """Streams of the default protocol that peers open (:meth:`connect`), oldest first, as
        they arrive; ends when the host closes.

        The caller owns (and closes) each one. Streams wait here at most ``incoming_backlog`` at
        once (``incoming_backlog_per_peer`` per peer); beyond that the oldest waiting stream of
        the peer holding the most is closed.
        """
        while True:
            while not self._backlog:
                if self._closing:
                    return
                await self._arrivals.park()
            oldest = next(iter(self._backlog))
            self._backlog.pop(oldest)
            yield oldest

    async def _listen(self, *, task_status: trio.TaskStatus[None]) -> None:
        assert self.config.listen is not None
        host, port = self.config.listen
        self.listeners = await trio.open_tcp_listeners(port, host=host)
        async with trio.open_nursery() as nursery:
            for listener in self.listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            task_status.started()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                try:
                    tcp = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                        raise
                    log.warning("accept failed (%s); pausing before the next one", exc)
                    await trio.sleep(_ACCEPT_CAPACITY_PAUSE)
                    continue
                # From here the task owns the connection, and closes it on every path (a task
                # started in a cancelled nursery still runs until its first checkpoint).
                nursery.start_soon(self._handle_connection, tcp)

    async def _handle_connection(self, tcp: trio.SocketStream) -> None:
        stream = await self._verified(tcp)
        if stream is not None:
            self.manager.adopt(stream)

    async def _verified(self, tcp: trio.SocketStream) -> SecureStream | None:
        """Run the handshake of an accepted connection under the host's bounds.

        Returns the verified stream, or ``None`` once the connection is closed. Closes the
        connection on every other path, cancellation included.
        """
        try:
            source = _source_key(str(tcp.socket.getpeername()[0]))
        except OSError:  # already reset by the peer
            await trio.aclose_forcefully(tcp)
            return None
        slot = trio.CancelScope()
        for evicted in self._pending.put(slot, slot, source, trio.current_time()):
            evicted.value.cancel()
            self.handshakes_evicted += 1
        stream: SecureStream | None = None
        reason: str | None = None
        try:
            with slot:
                if await self._first_flight(tcp):
                    stream = SecureStream(
                        tcp, self.context, server_side=True, source=source, messages=False
                    )
                    await stream.do_handshake()
                    return stream
                reason = "no Hello within first_flight_timeout"
            if slot.cancelled_caught:
                reason = "evicted by newer connections"
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            cause = exc.__cause__
            reason = str(cause) if isinstance(cause, P2PTLSError) else "connection lost"
        except Exception:
            # A bug reached by one peer's input must not take the whole host down: record it
            # loudly (with the traceback) and drop only that connection.
            log.exception("unexpected error in the handshake from %s", source)
        except BaseException:  # cancelled: the host is closing
            await trio.aclose_forcefully(stream if stream is not None else tcp)
            raise
        finally:
            self._pending.pop(slot)
        # Counted and logged before the close, so whoever sees the close sees the count.
        self.handshake_failures += 1
        if reason is not None:
            log.info("handshake from %s failed: %s", source, reason)
        await trio.aclose_forcefully(stream if stream is not None else tcp)
        return None

    async def _first_flight(self, tcp: trio.SocketStream) -> bool:
        """Whether the Hello arrived whole within ``first_flight_timeout``."""
        timeout = self.config.first_flight_timeout
        if timeout is None:
            return True
        with trio.move_on_after(timeout):
            try:
                return await _first_flight_arrived(tcp.socket)
            except OSError:  # reset by the peer
                return False
        return False

    def _deliver_to_incoming(self, stream: LogicalStream) -> None:
        if self._closing:
            self.manager._nursery.start_soon(stream.aclose)
            return
        evicted = self._backlog.put(stream, stream, stream.remote_peer.peer_id, trio.current_time())
        self._arrivals.unpark_all()
        for entry in evicted:
            self.incoming_dropped += 1
            log.info(
                "closed a stream from %s that incoming() did not take in time",
                entry.source.short,
            )
            self._nursery.start_soon(entry.value.aclose)

    # -- closing --------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop listening and close every connection of this host (each peer is told)."""
        self._closing = True
        self._arrivals.unpark_all()
        waiting = list(self._backlog)
        for stream in waiting:
            self._backlog.pop(stream)
        # Shielded: this runs while an exception (or the block's cancellation) propagates, and a
        # checkpoint raising Cancelled here would replace that exception.
        with trio.CancelScope(shield=True):
            for stream in waiting:
                await stream.aclose()
            await self.manager.aclose()
        self._nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_host(config: HostConfig) -> AsyncIterator[Host]:
    """Run a host for the duration of the block; listen if ``config.listen`` is set.

    An exception raised in the block comes out as itself (not in an ``ExceptionGroup``); a
    failure of the host's own tasks comes out as an ``ExceptionGroup``.

    Example::

        async with p2ptls.open_host(config) as host:
            stream = await host.connect(bob)
            await stream.send_all(b"hello")
    """
    async with open_service_nursery() as nursery:
        host = Host(config, nursery)
        try:
            if config.listen is not None:
                await nursery.start(host._listen)
            yield host
        finally:
            await host.aclose()


async def serve(
    handler: Handler,
    config: HostConfig,
    *,
    task_status: trio.TaskStatus[Host] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen and run ``handler(stream)`` in its own task for every stream of the default
    protocol a peer opens (with :meth:`Host.connect`).

    Like ``trio.serve_tcp``: use with ``nursery.start`` to learn the running :class:`Host` (and so
    its address). The stream is closed when the handler returns; an exception from the handler
    ends only that stream and is logged (see :meth:`Host.serve_protocol`). Runs until cancelled.
    """
    if config.listen is None:
        raise ValueError("serve needs HostConfig.listen")
    async with open_host(config) as host:
        host.remove_protocol(DEFAULT_PROTOCOL)
        host.serve_protocol(DEFAULT_PROTOCOL, handler)
        task_status.started(host)
        await trio.sleep(math.inf)
