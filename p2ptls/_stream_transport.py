"""How a :class:`~p2ptls.SecureStream` reads and writes its transport (the trio half's lowest
layer): writes under the transport send lock, a cancellation part-way through a write breaking
the stream (a partial record is on the wire), and reads of a TCP transport straight from its
socket into one reused buffer. ``SecureStream`` inherits it and owns the state named below.

The receive buffer is allocated by the first read after the handshake (a connection that never
gets that far never holds ``receive_size`` bytes), starts small and grows four times over while
reads fill it, up to ``receive_size``: a buffer of 256 KiB costs about 75 us to allocate (fresh
pages), one of 16 KiB about 1 us.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import trio

from ._util import HandOffLock, raw_socket, recv_raw, recv_tcp, send_raw, send_tcp
from .config import StreamConfig

_FIRST_RECEIVE_BUFFER = 16 * 1024
"""A TCP stream's first receive buffer."""


class TransportIO:
    """The transport reads and writes of :class:`~p2ptls.SecureStream` (a mixin)."""

    config: StreamConfig
    transport_stream: trio.abc.Stream
    _transport_send_lock: HandOffLock
    _receive_buffer: memoryview | None
    _tcp_socket: trio.socket.SocketType | None
    _raw_socket: socket.socket | None
    _interrupted: Callable[[str], None]

    def _init_transport_io(self, transport_stream: trio.abc.Stream) -> None:
        # A TCP transport is read into one reused buffer (the connection never keeps it).
        self._receive_buffer = None
        self._tcp_socket = None
        self._raw_socket = None
        if type(transport_stream) is trio.SocketStream:
            self._tcp_socket = transport_stream.socket
            self._raw_socket = raw_socket(self._tcp_socket)

    async def _send_raw(self, data: bytes | bytearray) -> None:
        """Write ``data`` (a handshake flight, or records already in order) under the lock.

        For writes inside an operation that checkpoints elsewhere (a handshake reads the
        transport; ``aclose`` closes it): a write that completes at once adds no schedule point.
        """
        async with self._transport_send_lock:
            await self._write(data, schedule=False)

    async def _send_chunks(self, chunks: Iterator[memoryview]) -> None:
        """Seal and write records chunk by chunk, each chunk sealed while holding the lock, so
        that records sealed elsewhere (a pong) always reach the wire in sequence order."""
        started = False
        try:
            while True:
                async with self._transport_send_lock:
                    chunk = next(chunks, None)
                    if chunk is None:
                        return
                    started = True
                    await self._write(chunk)
        except trio.Cancelled:
            if started:  # part of a message is on the wire; the stream cannot carry another one
                self._interrupted("a send was cancelled part-way through")
            raise

    async def _write(self, data: bytes | bytearray | memoryview, *, schedule: bool = True) -> None:
        """One write to the transport. A cancellation part-way through a write leaves a partial
        record on the wire, so it breaks the stream. ``schedule=False``: see ``send_raw``."""
        try:
            sock = self._tcp_socket
            if sock is None:
                await self.transport_stream.send_all(data)
            elif self._raw_socket is not None:
                await send_raw(sock, self._raw_socket, data, schedule=schedule)
            else:
                await send_tcp(sock, data)
        except trio.Cancelled:
            self._interrupted("a send was cancelled part-way through a record")
            raise

    def _write_now(self, data: bytes) -> int:
        """What of ``data`` a TCP transport takes at once, with no await (0 for other streams):
        a goodbye that goes out whole needs no timeout scope."""
        raw = self._raw_socket
        if raw is None:
            return 0
        try:
            return raw.send(data)
        except OSError:  # full (BlockingIOError), or broken: the write that follows reports it
            return 0

    def _grow_receive_buffer(self, filled: int) -> None:
        """A read filled ``filled`` bytes, its whole buffer: the next read gets four times the
        room, up to receive_size (unless the buffer was replaced meanwhile). The bytes read stay
        valid: the old buffer lives on under them."""
        current = self._receive_buffer
        if current is not None and len(current) == filled:
            size = min(4 * filled, self.config.receive_size)
            self._receive_buffer = memoryview(bytearray(size))

    async def _receive_transport(self) -> bytes | bytearray | memoryview:
        """One read from the transport: into the reused buffer for TCP, else ``receive_some``."""
        sock = self._tcp_socket
        if sock is None:
            return await self.transport_stream.receive_some(self.config.receive_size)
        buffer = self._receive_buffer
        if buffer is None:
            # The first read after the handshake (which reads small flights with receive_some):
            # a connection that never gets this far never holds receive_size bytes.
            size = min(self.config.receive_size, _FIRST_RECEIVE_BUFFER)
            buffer = self._receive_buffer = memoryview(bytearray(size))
        if self._raw_socket is not None:
            return await recv_raw(sock, self._raw_socket, buffer)
        return await recv_tcp(sock, buffer)
