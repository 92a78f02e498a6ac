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
from .config import StreamConfig
from .identity import Identity, NetworkKey, PeerId, PeerRecord
from .stream import SecureStream, SecurityContext
from .trust import AdmissionPolicy, KnownPeers, ReplayGuard, deny_unknown

log = logging.getLogger("p2ptls.host")

Handler = Callable[[SecureStream], Awaitable[Any]]


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
    """Limits of every stream of this host."""
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
        # Every stream to close on exit. Streams the application closed are pruned now and then
        # (each holds its receive buffer), so a peer that connects again and again cannot grow it.
        self._streams: set[SecureStream] = set()
        self._prune_at = _PRUNE_MINIMUM
        # Handshakes in progress, each with the cancel scope that evicts it.
        self._pending: FairTable[trio.CancelScope, trio.CancelScope, str] = FairTable(
            config.max_pending_handshakes, config.max_pending_per_address
        )
        # Verified streams not yet taken from incoming(), charged to their peer.
        self._backlog: FairTable[SecureStream, SecureStream, PeerId] = FairTable(
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
        """Verified streams closed because ``incoming()`` was not read fast enough."""

    @property
    def peer_id(self) -> PeerId:
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

    # -- connecting -----------------------------------------------------------------------------

    async def connect(
        self, peer: PeerRecord | PeerId, address: tuple[str, int] | None = None
    ) -> SecureStream:
        """Open a verified stream to ``peer`` (a record, or the id of a known peer).

        The returned stream has completed its handshake: ``stream.remote_peer`` is ``peer``.
        Raises ``OSError`` if the address is unreachable and ``trio.BrokenResourceError`` if the
        handshake fails. If it fails or is cancelled, the connection is closed.
        """
        record = self._resolve(peer)
        target = address or record.address
        if target is None:
            raise ValueError(f"no address known for peer {record.peer_id.short}")
        tcp = await trio.open_tcp_stream(*target)
        try:
            stream = SecureStream(tcp, self.context, remote=record)
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise
        self._track(stream)
        try:
            await stream.do_handshake()
        except BaseException:
            self._streams.discard(stream)
            await trio.aclose_forcefully(stream)
            raise
        return stream

    def _resolve(self, peer: PeerRecord | PeerId) -> PeerRecord:
        if isinstance(peer, PeerRecord):
            return peer  # connecting to a record does not make it trusted for incoming streams
        record = self.context.peers.get(peer)
        if record is None:
            raise KeyError(f"unknown peer {peer.short}")
        return record

    # -- accepting ------------------------------------------------------------------------------

    async def incoming(self) -> AsyncIterator[SecureStream]:
        """Verified incoming streams, oldest first, as they arrive; ends when the host closes.

        The caller owns (and closes) each one. Streams wait here at most ``incoming_backlog`` at
        once (``incoming_backlog_per_peer`` per peer); beyond that the oldest waiting stream of
        the peer holding the most is closed.
        """
        if not self.listeners:
            raise RuntimeError("this host is not listening (set HostConfig.listen)")
        while True:
            while not self._backlog:
                if self._closing:
                    return
                await self._arrivals.park()
            oldest = next(iter(self._backlog))
            self._backlog.pop(oldest)
            yield oldest

    async def _listen(self, deliver: Handler, *, task_status: trio.TaskStatus[None]) -> None:
        assert self.config.listen is not None
        host, port = self.config.listen
        self.listeners = await trio.open_tcp_listeners(port, host=host)
        async with trio.open_nursery() as nursery:
            for listener in self.listeners:
                nursery.start_soon(self._accept_loop, listener, deliver, nursery)
            task_status.started()

    async def _accept_loop(
        self, listener: trio.SocketListener, deliver: Handler, nursery: trio.Nursery
    ) -> None:
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
                nursery.start_soon(self._handle_connection, tcp, deliver)

    async def _handle_connection(self, tcp: trio.SocketStream, deliver: Handler) -> None:
        stream = await self._verified(tcp)
        if stream is None:
            return
        self._track(stream)
        await deliver(stream)

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
                    stream = SecureStream(tcp, self.context, server_side=True, source=source)
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

    async def _deliver_to_incoming(self, stream: SecureStream) -> None:
        if self._closing:
            self._streams.discard(stream)
            await trio.aclose_forcefully(stream)
            return
        evicted = self._backlog.put(stream, stream, stream.remote_peer.peer_id, trio.current_time())
        self._arrivals.unpark_all()
        for entry in evicted:
            self.incoming_dropped += 1
            log.info(
                "closed a stream from %s that incoming() did not take in time",
                entry.source.short,
            )
            self._streams.discard(entry.value)
            await entry.value.aclose()

    # -- closing --------------------------------------------------------------------------------

    def _track(self, stream: SecureStream) -> None:
        """Close ``stream`` on exit. Amortised O(1): when the set has doubled since the last
        prune, streams whose transport is closed already are dropped from it."""
        self._streams.add(stream)
        if len(self._streams) > self._prune_at:
            self._streams = {s for s in self._streams if not _transport_closed(s)}
            self._prune_at = max(_PRUNE_MINIMUM, 2 * len(self._streams))

    def forget(self, stream: SecureStream) -> None:
        """Stop tracking ``stream`` (the host will not close it on exit)."""
        self._streams.discard(stream)

    async def aclose(self) -> None:
        """Stop listening and close every stream of this host."""
        self._nursery.cancel_scope.cancel()
        self._closing = True
        self._arrivals.unpark_all()
        for waiting in list(self._backlog):  # closed below, with the host's other streams
            self._backlog.pop(waiting)
        streams, self._streams = list(self._streams), set()
        # Shielded: this runs while an exception (or the block's cancellation) propagates, and a
        # checkpoint raising Cancelled here would replace that exception.
        with trio.CancelScope(shield=True):
            with trio.move_on_after(5):
                for stream in streams:
                    await stream.aclose()
            for stream in streams:  # any the polite close ran out of time for
                await trio.aclose_forcefully(stream)


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
                await nursery.start(host._listen, host._deliver_to_incoming)
            yield host
        finally:
            await host.aclose()


async def serve(
    handler: Handler,
    config: HostConfig,
    *,
    task_status: trio.TaskStatus[Host] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen and run ``handler(stream)`` in its own task for every verified incoming stream.

    Like ``trio.serve_tcp``: use with ``nursery.start`` to learn the running :class:`Host` (and so
    its address). The stream is closed when the handler returns. A ``trio.BrokenResourceError`` or
    ``trio.ClosedResourceError`` escaping the handler (the peer broke or cut its connection) is
    logged and ends only that connection; any other exception propagates, as with
    ``trio.serve_tcp``. Runs until cancelled.
    """
    if config.listen is None:
        raise ValueError("serve needs HostConfig.listen")

    async with trio.open_nursery() as nursery:
        host = Host(config, nursery)

        async def run_handler(stream: SecureStream) -> None:
            try:
                await handler(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                # The peer broke its own connection; that must not stop the server.
                log.info("connection from %s ended: %r", stream.remote_peer.peer_id.short, exc)
            finally:
                host.forget(stream)
                await stream.aclose()

        try:
            await nursery.start(host._listen, run_handler)
            task_status.started(host)
            await trio.sleep(math.inf)
        finally:
            await host.aclose()
