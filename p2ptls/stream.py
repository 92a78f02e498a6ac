"""SecureStream: a p2ptls session over any trio stream, in the manner of ``trio.SSLStream``.

Theory of operation
-------------------
A :class:`SecureStream` drives a sans-IO :class:`~p2ptls._connection.Connection`. The handshake runs
lazily on the first send or receive, or explicitly through :meth:`SecureStream.do_handshake`, under
a total deadline; its one RSA private-key operation runs on a worker thread through the context's
capacity limiter, so a flood of handshakes never stalls established connections. Identical
operations in flight at once (copies of one Hello on several connections) share one thread.

Sending seals records synchronously and writes them under an internal transport-send lock (shared
with pongs owed by the receive side). A write of up to 256 KiB is sealed in one pass into a reused
buffer and written as one flight (one ``send`` call on TCP, where the stream calls the socket
under trio's directly, with the same checkpoints); larger writes and messages are sealed and
written about 256 KiB at a time. Receiving is a *pump*: whichever receiver needs data reads the
transport once, feeds the bytes to the connection and files the resulting events into two buffers,
one for the byte stream and one for whole messages, so ``receive_some`` and ``receive_message`` may
run in two tasks. The byte-stream records of a read are decrypted straight into the byte buffer
(no event object per record). Each public operation has its own conflict detector, so two tasks
calling ``send_all`` at once get ``trio.BusyResourceError`` as the stream contract requires.

The stream has one state (:class:`~p2ptls._stream_handshake.StreamState`: HANDSHAKING, OK,
BROKEN, CLOSED). Any protocol error breaks the stream: the transport is closed at once and every
later call raises ``trio.BrokenResourceError`` whose ``__cause__`` is the typed
:class:`~p2ptls.ProtocolError`. A cancellation part-way through a handshake or a record breaks it
too, but the cause is then :class:`~p2ptls.StreamInterrupted` (a
:class:`~p2ptls.LocalProtocolError`): the peer did nothing wrong.

Resumption (SPEC 3.6): a connecting stream takes a ticket for its peer out of the context's cache
(if ``config.resumption``) and resumes with no RSA operation; the tickets a peer sends are filed
into that cache as they arrive. If a resumed handshake fails, the stream drops the peer's other
tickets and breaks with :class:`HandshakeFailed`; a retry (a new stream) runs a full handshake.
An accepting stream opens tickets with the context's ticket keys and owes two new ones after each
handshake, sent ahead of its next record.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import operator
import os
from collections.abc import Callable, Iterator
from typing import Final

import trio

from . import _wire as wire
from ._connection import (
    DataReceived,
    EndOfStream,
    Event,
    MessageReceived,
    PongReceived,
    TicketReceived,
)
from ._connection_send import SEND_CHUNK
from ._connection_state import HandshakeState
from ._errors import ProtocolError, StreamInterrupted
from ._stream_handshake import HandshakeDriving, StreamState, new_connection
from ._util import (
    ConflictDetector,
    HandOffLock,
    MessageIterator,
    recv_raw,
    socket_address,
)
from .config import StreamConfig
from .context import SecurityContext
from .identity import PeerRecord
from .trust import DEFAULT_SOURCE

log = logging.getLogger("p2ptls.stream")

# Each buffered chunk or message is charged this much on top of its length, so a flood of tiny
# records cannot hold far more memory than max_unread_bytes says.
_ITEM_OVERHEAD = 64
CIPHER_SUITE = "P2PTLS1_RSA_OAEP_X25519_AES_256_GCM_SHA256"
_DEFAULT_RECEIVE_MAX = 256 * 1024  # what receive_some() without max_bytes returns at most
# The per-read and per-write checks compare with these: an enum member looked up on its class
# costs about 90 ns on Python 3.11, a module global about 20.
_OK: Final = StreamState.OK
_HANDSHAKING: Final = StreamState.HANDSHAKING
_BROKEN: Final = StreamState.BROKEN
_CLOSED: Final = StreamState.CLOSED


class SecureStream(HandshakeDriving, trio.abc.HalfCloseableStream):
    """An authenticated, encrypted stream over ``transport_stream``.

    Args:
      transport_stream: any ``trio.abc.Stream`` (a TCP stream, an in-memory stream...).
      context: the local identity, network key and trusted peers.
      server_side: ``True`` for the accepting side.
      remote: for the connecting side, the peer it expects (required); ignored on the server side.
      config: overrides ``context.config``.
      source: for the accepting side, where the connection came from (the host passes the IPv4
        address or IPv6 /64): the replay guard's memory of Hellos is shared fairly between
        sources. Streams without one share a single default source.
      messages: whether the peer may send whole messages. ``False`` for a stream that carries
        only bytes (a host's shared connection, whose byte stream carries the multiplexing
        frames): a message from the peer is then a protocol error.

    Besides the byte stream, :meth:`send_message` and :meth:`receive_message` carry whole messages
    of up to ``config.max_message_size`` bytes. ``async for chunk in stream`` yields byte chunks
    until EOF (as for any trio stream); ``async for message in stream.messages()`` yields messages.
    """

    def __init__(
        self,
        transport_stream: trio.abc.Stream,
        context: SecurityContext,
        *,
        server_side: bool = False,
        remote: PeerRecord | None = None,
        config: StreamConfig | None = None,
        source: str = DEFAULT_SOURCE,
        messages: bool = True,
    ) -> None:
        self.transport_stream = transport_stream
        self.context = context
        self.config = config or context.config
        self.server_side = server_side
        if not server_side and remote is None:
            raise TypeError("the connecting side needs the remote peer's record")
        self._conn = new_connection(
            context, self.config, remote=None if server_side else remote, source=source
        )
        self._remote_expected = None if server_side else remote
        self._handshake_lock = HandOffLock()
        self._state = StreamState.HANDSHAKING
        self._transport_send_lock = HandOffLock()
        self._pump_lock = HandOffLock()
        self._send_conflict = ConflictDetector("another task is already sending on this stream")
        self._receive_conflict = ConflictDetector("another task is already receiving bytes")
        self._message_conflict = ConflictDetector("another task is already receiving messages")
        self._bytes: collections.deque[bytes] = collections.deque()
        self._bytes_size = 0
        self._messages: collections.deque[bytes] = collections.deque()
        self._messages_size = 0
        self._pongs: dict[bytes, trio.Event] = {}
        self._init_transport_io(transport_stream)
        self._clock: Callable[[], float] | None = None  # the run's clock, from the first read
        self._accept_messages = messages
        self._error: BaseException | None = None
        """Why the stream is BROKEN: the cause of the ``trio.BrokenResourceError`` it raises."""

    # -- public attributes ----------------------------------------------------------------------

    @property
    def remote_peer(self) -> PeerRecord:
        """The authenticated remote peer (after the handshake)."""
        remote = self._conn.remote
        if remote is None or self._state is StreamState.HANDSHAKING:
            raise trio.NeedHandshakeError("the handshake has not completed")
        return remote

    @property
    def resumed(self) -> bool:
        """The handshake completed with a resumption ticket (no RSA operation on either side)."""
        return self._state is not StreamState.HANDSHAKING and self._conn.resumed

    @property
    def resuming(self) -> bool:
        """The connecting side presents a ticket. If that handshake fails, the ticket is spent
        and the context's other tickets for the peer are dropped: retry (a host does at once, on
        a new connection) and a full handshake runs."""
        return self._conn.resuming

    @property
    def local_address(self) -> tuple[str, int] | None:
        """This end's ``(host, port)``, if the transport is a TCP socket (else ``None``)."""
        return socket_address(self.transport_stream, peer=False)

    @property
    def remote_address(self) -> tuple[str, int] | None:
        """The peer's ``(host, port)`` as this end sees it, if the transport is a TCP socket."""
        return socket_address(self.transport_stream, peer=True)

    @property
    def cipher_suite(self) -> str:
        return CIPHER_SUITE

    @property
    def session_id(self) -> bytes:
        """The handshake transcript hash (public), which names this session."""
        session = self._conn.session_id
        if session is None or self._state is StreamState.HANDSHAKING:
            raise trio.NeedHandshakeError("the handshake has not completed")
        return session

    def export_keying_material(self, label: str, context: bytes, length: int) -> bytes:
        """Keying material for a companion protocol bound to this session."""
        if self._conn.remote is None or self._state is StreamState.HANDSHAKING:
            raise trio.NeedHandshakeError("the handshake has not completed")
        return self._conn.export_keying_material(label, context, length)

    # -- state helpers --------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._state is _CLOSED:
            raise trio.ClosedResourceError("this stream was closed")
        if self._state is _BROKEN:
            raise trio.BrokenResourceError("this stream is broken") from self._error

    async def _break(self, error: BaseException) -> trio.BrokenResourceError:
        """Mark the stream broken, drop the transport, and return the error to raise."""
        handshaking = self._state is StreamState.HANDSHAKING
        if self._error is None:
            self._error = error
        if self._state is not StreamState.CLOSED:
            self._state = StreamState.BROKEN
        if self._conn.resuming and handshaking and self._conn.remote is None:
            # The responder did not take our ticket (restarted, network key changed...): the
            # others it issued are likely dead too, so the next attempt runs a full handshake.
            remote = self._remote_expected
            if remote is not None:
                self.context.forget_tickets(remote.peer_id)
        farewell = self._conn.farewell
        self._conn.abandon()
        if farewell and not self._transport_send_lock.locked():
            # Best effort: the refused initiator learns why (nothing else ever gets a reason).
            # (If the peer is gone already there is nobody left to tell.)
            with (
                trio.move_on_after(1.0),
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
            ):
                await self.transport_stream.send_all(farewell)
        await trio.aclose_forcefully(self.transport_stream)
        return trio.BrokenResourceError(str(error) or type(error).__name__)

    def _file_events(self, events: list[Event]) -> None:
        """File application events into the byte and message buffers (after the handshake)."""
        for event in events:
            if type(event) is DataReceived:
                self._bytes.append(event.data)
                self._bytes_size += len(event.data) + _ITEM_OVERHEAD
            elif isinstance(event, MessageReceived):
                if not self._accept_messages:
                    raise ProtocolError("a message on a stream that carries only bytes")
                self._messages.append(event.data)
                self._messages_size += len(event.data) + _ITEM_OVERHEAD
            elif isinstance(event, PongReceived):
                waiter = self._pongs.pop(event.payload, None)
                if waiter is not None:
                    waiter.set()
            elif isinstance(event, TicketReceived):
                self._store_ticket(event)
            else:  # EndOfStream: conn.eof_received says it
                assert isinstance(event, EndOfStream), f"{type(event).__name__} after the handshake"
        limit = self.config.max_unread_bytes
        if self._bytes_size > limit or self._messages_size > limit + self.config.max_message_size:
            raise ProtocolError("peer sent more than the application reads (max_unread_bytes)")

    # -- receiving ------------------------------------------------------------------------------

    async def _receive_until(self, ready: Callable[[], bool]) -> None:
        """Pump the transport until ``ready()``; always passes through a checkpoint."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._state is _HANDSHAKING:
            await self.do_handshake()
        pumped = False
        lock = self._pump_lock
        while not ready():
            if lock.try_acquire():  # the common case: no other receiver (no await to take it)
                try:
                    await self._pump()
                finally:
                    lock.release()
                pumped = True
                continue
            async with lock:
                if ready():
                    break
                await self._pump()
                pumped = True
        if not pumped:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def _pump(self) -> None:
        self._check_usable()
        try:
            raw = self._raw_socket
            buffer = self._receive_buffer
            data: bytes | bytearray | memoryview
            if raw is not None and self._tcp_socket is not None and buffer is not None:
                data = await recv_raw(self._tcp_socket, raw, buffer)
            else:
                data = await self._receive_transport()
                buffer = self._receive_buffer
            if len(data) == len(buffer or b"") < self.config.receive_size:
                self._grow_receive_buffer(len(data))
            if not data:
                self._conn.receive_eof()
                return
            incoming: list[bytes] = []
            clock = self._clock
            if clock is None:  # trio.current_time() without its two wrapper calls per read
                clock = self._clock = trio.lowlevel.current_clock().current_time
            events = self._conn.receive_records_untrusted(data, clock(), incoming)
            if incoming:
                self._bytes.extend(incoming)
                self._bytes_size += sum(map(len, incoming)) + _ITEM_OVERHEAD * len(incoming)
            if events:
                self._file_events(events)
            elif self._bytes_size > self.config.max_unread_bytes:
                raise ProtocolError("peer sent more than the application reads (max_unread_bytes)")
            if self._conn.has_pending_output and not self._transport_send_lock.locked():
                async with self._transport_send_lock:  # sealed under the lock: keeps order
                    owed = self._conn.data_to_send()
                    if owed:  # the read above was this call's checkpoint
                        await self._write(owed, schedule=False)
        except ProtocolError as exc:
            raise await self._break(exc) from exc
        except trio.ClosedResourceError:
            if self._closed_here():
                raise
            underneath = StreamInterrupted("the transport was closed underneath")
            raise await self._break(underneath) from None
        except trio.BrokenResourceError as exc:
            raise await self._break(exc) from exc

    def _bytes_ready(self) -> bool:
        return bool(self._bytes) or self._conn.eof_received

    def _message_ready(self) -> bool:
        return bool(self._messages) or self._conn.eof_received

    def _peer_done(self) -> bool:
        return self._conn.eof_received

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to ``max_bytes`` bytes of the byte stream; ``b""`` after the peer's authenticated EOF.

        Returns ``bytes``: a record's decrypted plaintext as is when it alone is asked for, else
        the buffered records joined once (across record boundaries, up to ``max_bytes``).

        Raises ``trio.BrokenResourceError`` if the peer broke the protocol or the connection was
        cut without an authenticated close (cause: :class:`TruncatedError`).
        """
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        with self._receive_conflict:
            self._check_usable()
            await self._receive_until(self._bytes_ready)
            if not self._bytes:
                return b""
            return self._take_bytes(_DEFAULT_RECEIVE_MAX if max_bytes is None else max_bytes)

    def _take_bytes(self, limit: int) -> bytes:
        """Up to ``limit`` buffered bytes, across record boundaries (not one record per call).

        Each byte is copied at most once: a record taken whole and alone is returned as is;
        otherwise the records (and the head of the last one, as a view) are joined once.
        """
        chunks = self._bytes
        chunk = chunks.popleft()
        size = len(chunk)
        if size > limit:  # part of one record: the rest stays at the front
            rest = chunk[limit:]
            chunks.appendleft(rest)
            self._bytes_size -= limit
            return chunk[:limit]
        self._bytes_size -= size + _ITEM_OVERHEAD
        if size == limit or not chunks:
            return chunk
        parts: list[bytes | memoryview] = [chunk]
        room = limit - size
        while chunks and room > 0:
            following = chunks[0]
            if len(following) <= room:
                chunks.popleft()
                self._bytes_size -= len(following) + _ITEM_OVERHEAD
                parts.append(following)
                room -= len(following)
            else:
                parts.append(memoryview(following)[:room])
                chunks[0] = following[room:]
                self._bytes_size -= room
                room = 0
        return b"".join(parts)

    async def receive_message(self) -> bytes:
        """The next whole message; ``trio.EndOfChannel`` after the peer's authenticated close.

        The message is an immutable ``bytes`` object, owned by the caller (nothing of the stream
        refers to it). It costs at most one copy beyond decryption: a message of one record is
        its decrypted plaintext less the 4-byte length; a longer one is its decrypted fragments
        joined once when the last arrives. (No zero-copy view is offered: a view into a reused
        buffer would be invalidated by the next read, and the join is a fraction of the AEAD
        cost.)
        """
        with self._message_conflict:
            self._check_usable()
            await self._receive_until(self._message_ready)
            if not self._messages:
                raise trio.EndOfChannel
            message = self._messages.popleft()
            self._messages_size -= len(message) + _ITEM_OVERHEAD
            return message

    # ``async for chunk in stream`` is trio's: byte chunks from receive_some() until EOF, as for
    # any trio.abc.ReceiveStream. Whole messages have their own iterator:

    def messages(self) -> MessageIterator:
        """An iterator over whole messages until the peer closes (:meth:`receive_message` in a
        loop): ``async for message in stream.messages(): ...``.

        Iterating over the stream itself (``async for chunk in stream``) yields the byte stream,
        as it does for every ``trio.abc.ReceiveStream``.
        """
        return MessageIterator(self.receive_message)

    # -- sending --------------------------------------------------------------------------------

    async def _send_records(self, chunks: Callable[[], Iterator[memoryview]]) -> None:
        self._check_usable()
        if self._state is _HANDSHAKING:
            await self.do_handshake()
        if self._conn.eof_sent:
            raise trio.ClosedResourceError("send_eof was already called")
        try:
            await self._send_chunks(chunks())
            if self._conn.has_pending_output:  # a pong owed while we held the transport
                await self._send_chunks(iter([memoryview(self._conn.data_to_send())]))
        except ProtocolError as exc:
            raise await self._break(exc) from exc
        except trio.BrokenResourceError as exc:
            raise await self._break(exc) from exc
        except trio.ClosedResourceError:
            if self._error is not None:  # the reader broke the stream and dropped the transport
                raise trio.BrokenResourceError("this stream is broken") from self._error
            raise

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send bytes on the byte stream."""
        with self._send_conflict:
            await trio.lowlevel.checkpoint_if_cancelled()
            if not data:
                self._check_usable()
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
            conn = self._conn
            if (
                len(data) <= SEND_CHUNK
                and self._state is _OK
                and not conn.eof_sent
                and self._transport_send_lock.try_acquire()
            ):
                # The common case, inline: seal the whole write at once, one flight.
                try:
                    try:
                        records = conn.seal_data_at_once(data)
                        if records is not None:
                            await self._write(records)
                    finally:
                        self._transport_send_lock.release()
                except (ProtocolError, trio.BrokenResourceError) as exc:
                    raise await self._break(exc) from exc
                except trio.ClosedResourceError:
                    if self._error is not None:
                        raise trio.BrokenResourceError("this stream is broken") from self._error
                    raise
                if records is not None:
                    if conn.has_pending_output:  # a pong owed while we held the transport
                        await self._send_records(
                            lambda: iter([memoryview(self._conn.data_to_send())])
                        )
                    return
            await self._send_records(functools.partial(self._conn.seal_data, data))

    async def send_message(self, message: bytes | bytearray | memoryview) -> None:
        """Send one message (at most ``config.max_message_size`` bytes), fragmented into records.

        Records are sealed and written about 256 KiB at a time into one reused buffer, so a large
        message never needs a second copy of itself in memory.
        """
        if len(message) > self.config.max_message_size:
            raise ValueError(
                f"message of {len(message)} bytes exceeds max_message_size "
                f"({self.config.max_message_size})"
            )
        with self._send_conflict:
            await trio.lowlevel.checkpoint_if_cancelled()
            await self._send_records(functools.partial(self._conn.seal_message, message))

    async def send_eof(self) -> None:
        """Send the authenticated end of our direction; the peer's reads then return ``b""``.

        We can still receive. Calling it again does nothing.
        """
        with self._send_conflict:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._check_usable()
            if self._conn.eof_sent:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
            await self._send_records(lambda: iter([memoryview(self._conn.send_eof())]))
            if isinstance(self.transport_stream, trio.abc.HalfCloseableStream):
                await self.transport_stream.send_eof()

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_conflict:
            self._check_usable()
            await self.transport_stream.wait_send_all_might_not_block()

    async def ping(self) -> float:
        """Measure one round trip (seconds). Another task must be receiving, or this one pumps."""
        payload = os.urandom(wire.PING_PAYLOAD_SIZE)
        answered = trio.Event()
        self._pongs[payload] = answered
        start = trio.current_time()
        try:
            with self._send_conflict:
                await self._send_records(lambda: iter([memoryview(self._conn.send_ping(payload))]))
            while not answered.is_set():
                if self._peer_done():
                    raise trio.BrokenResourceError("peer closed before answering the ping")
                # Whoever holds the pump lock may be the one reading our pong; the hand-off lets
                # us look again as soon as it lets go.
                async with self._pump_lock:
                    if not answered.is_set():
                        await self._pump()
        finally:
            self._pongs.pop(payload, None)  # also when cancelled: no waiter is left behind
        return trio.current_time() - start

    # -- closing --------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Send an authenticated goodbye (best effort) and close the transport."""
        if self._state is StreamState.CLOSED:
            await trio.lowlevel.checkpoint()
            return
        was, self._state = self._state, StreamState.CLOSED
        self._pongs.clear()
        conn = self._conn
        try:
            if (
                was is StreamState.OK
                and not conn.eof_sent
                and conn.state is HandshakeState.ESTABLISHED
                and not self._transport_send_lock.locked()
            ):
                goodbye = conn.send_eof(wire.CLOSE_GOODBYE)
                async with self._transport_send_lock:  # free (just checked): taken at once
                    sent = self._write_now(goodbye)
                    if sent < len(goodbye):  # the rest waits at most 1 s (the peer may be stuck)
                        with trio.move_on_after(1.0):
                            await self._write(memoryview(goodbye)[sent:], schedule=False)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the transport is going away anyway; nothing more to tell the peer
        except BaseException:
            conn.abandon()
            await trio.aclose_forcefully(self.transport_stream)
            raise
        conn.abandon()
        await self.transport_stream.aclose()

    def __repr__(self) -> str:
        side = "server" if self.server_side else "client"
        remote = self._conn.remote.peer_id.short if self._conn.remote else "?"
        return f"<SecureStream {side} remote={remote} state={self._state.value}>"
