"""The host: listen, connect by peer, and accept verified streams, on top of trio's TCP.

Theory of operation
-------------------
A :class:`Host` owns one :class:`~p2ptls.SecurityContext` (identity, network key, trusted peers)
and one nursery. When it listens, an accept loop hands every TCP connection to its own task, which
runs the handshake under the total deadline and the bounds on handshakes in progress (globally and
per source address), then delivers the verified stream to ``host.incoming()`` or to a handler. A
connection that fails its handshake is closed and logged with the generic reason; it can never
cancel the host's nursery. Leaving ``open_host`` closes every stream the host made or accepted.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from ._errors import P2PTLSError
from .config import StreamConfig
from .identity import Identity, NetworkKey, PeerId, PeerRecord
from .stream import SecureStream, SecurityContext
from .trust import AdmissionPolicy, KnownPeers, ReplayGuard, deny_unknown

log = logging.getLogger("p2ptls.host")

Handler = Callable[[SecureStream], Awaitable[Any]]


def _peer_tuple(peers: Iterable[PeerRecord]) -> tuple[PeerRecord, ...]:
    return tuple(peers)


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
    stream: StreamConfig = attrs.field(factory=StreamConfig)
    """Limits of every stream of this host."""
    max_pending_handshakes: int = 64
    """Handshakes in progress at once; further connections are closed at once."""
    max_pending_per_address: int = 8
    """Handshakes in progress from one source address."""
    replay_state_path: str | None = None
    """File where Hello timestamps are persisted (replay protection across restarts)."""
    incoming_backlog: int = 16
    """Verified streams waiting for ``incoming()`` before the accept loop waits."""
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


class Host:
    """A running p2ptls host. Create with :func:`open_host`."""

    def __init__(self, config: HostConfig, nursery: trio.Nursery) -> None:
        self.config = config
        self.context = SecurityContext(
            config.identity,
            config.psk,
            KnownPeers(config.peers, config.admission),
            config=config.stream,
            replay_guard=ReplayGuard(config.replay_state_path),
            private_key_threads=config.private_key_threads,
            max_private_key_operations_per_s=config.max_private_key_operations_per_s,
        )
        self._nursery = nursery
        self._streams: set[SecureStream] = set()
        self._pending_total = 0
        self._pending_by_address: Counter[str] = Counter()
        self._incoming_send, self._incoming_receive = trio.open_memory_channel[SecureStream](
            config.incoming_backlog
        )
        self.listeners: list[trio.SocketListener] = []
        self.handshake_failures = 0
        """Connections closed because their handshake failed or timed out."""

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
        handshake fails.
        """
        record = self._resolve(peer)
        target = address or record.address
        if target is None:
            raise ValueError(f"no address known for peer {record.peer_id.short}")
        tcp = await trio.open_tcp_stream(*target)
        stream = SecureStream(tcp, self.context, remote=record)
        self._streams.add(stream)
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
        """Verified incoming streams, as they arrive. The caller owns (and closes) each one."""
        if not self.listeners:
            raise RuntimeError("this host is not listening (set HostConfig.listen)")
        async for stream in self._incoming_receive:
            yield stream

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
                tcp = await listener.accept()
                nursery.start_soon(self._handle_connection, tcp, deliver)

    async def _handle_connection(self, tcp: trio.SocketStream, deliver: Handler) -> None:
        try:
            source = _source_key(str(tcp.socket.getpeername()[0]))
        except OSError:
            await trio.aclose_forcefully(tcp)
            return
        limits = self.config
        if (
            self._pending_total >= limits.max_pending_handshakes
            or self._pending_by_address[source] >= limits.max_pending_per_address
        ):
            self.handshake_failures += 1
            await trio.aclose_forcefully(tcp)
            return
        stream = SecureStream(tcp, self.context, server_side=True)
        self._pending_total += 1
        self._pending_by_address[source] += 1
        try:
            await stream.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.handshake_failures += 1
            cause = exc.__cause__
            reason = str(cause) if isinstance(cause, P2PTLSError) else "connection lost"
            log.info("handshake from %s failed: %s", source, reason)
            await trio.aclose_forcefully(stream)
            return
        except Exception:
            # A bug reached by one peer's input must not take the whole host down: record it
            # loudly (with the traceback) and drop only that connection.
            self.handshake_failures += 1
            log.exception("unexpected error in the handshake from %s", source)
            await trio.aclose_forcefully(stream)
            return
        finally:
            self._pending_total -= 1
            self._pending_by_address[source] -= 1
            if not self._pending_by_address[source]:
                del self._pending_by_address[source]
        self._streams.add(stream)
        await deliver(stream)

    async def _deliver_to_incoming(self, stream: SecureStream) -> None:
        await self._incoming_send.send(stream)

    # -- closing --------------------------------------------------------------------------------

    def forget(self, stream: SecureStream) -> None:
        """Stop tracking ``stream`` (the host will not close it on exit)."""
        self._streams.discard(stream)

    async def aclose(self) -> None:
        """Stop listening and close every stream of this host."""
        self._nursery.cancel_scope.cancel()
        self._incoming_send.close()
        streams, self._streams = list(self._streams), set()
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            for stream in streams:
                await stream.aclose()


@asynccontextmanager
async def open_host(config: HostConfig) -> AsyncIterator[Host]:
    """Run a host for the duration of the block; listen if ``config.listen`` is set.

    Example::

        async with p2ptls.open_host(config) as host:
            stream = await host.connect(bob)
            await stream.send_all(b"hello")
    """
    async with trio.open_nursery() as nursery:
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
