"""Logical streams: one protocol's conversation on a connection shared with others (trio).

Theory of operation
-------------------
A :class:`LogicalStream` is a view of one stream id of a
:class:`~p2ptls.connections.PeerConnection`. It never touches the socket: the connection's reader
task files what arrives into the stream's buffers (byte stream and finished messages, kept apart
as on a :class:`~p2ptls.SecureStream`) and wakes its reader; sending hands frames to the
connection's sans-IO :class:`~p2ptls._mux.Multiplexer`, waiting first for the stream's credit and
for room in the connection's output, and the connection's writer task writes them. So a slow
reader on one stream stops only that stream's sender; a cancelled send never leaves half a frame
on the wire (a message cut short by cancellation resets its stream, since its end can no longer
be sent).

Errors: when the connection breaks, every stream on it raises :class:`ConnectionLost` (a
``trio.BrokenResourceError``) whose ``__cause__`` says why; when the peer aborts a stream, that
stream raises :class:`StreamReset`; when a cancellation cut one of our messages short, the stream
raises ``trio.BrokenResourceError`` from :class:`~p2ptls.StreamInterrupted` (the peer did nothing
wrong). Data that arrived before any of these is still read first.
"""

from __future__ import annotations

import collections
import operator
from typing import TYPE_CHECKING

import trio

from ._errors import StreamInterrupted
from ._mux_wire import ResetCode
from ._util import ConflictDetector, MessageIterator
from .identity import PeerRecord

if TYPE_CHECKING:
    from .connections import PeerConnection

_DEFAULT_RECEIVE_MAX = 256 * 1024
_GATHER_BELOW = 4096
"""Byte-stream frames smaller than this are gathered into shared buffers..."""
_GATHER_UP_TO = 64 * 1024
"""...of up to about this many bytes each."""


class ConnectionLost(trio.BrokenResourceError):
    """The shared connection under this logical stream broke (``__cause__`` says why); every
    stream on it raises this. Open a new stream through the host to go on."""


class StreamReset(trio.BrokenResourceError):
    """The peer aborted this logical stream (or it broke one of our limits)."""

    def __init__(self, message: str, code: ResetCode = ResetCode.CANCEL) -> None:
        super().__init__(message)
        self.code = code


class LogicalStream(trio.abc.HalfCloseableStream):
    """One protocol's stream on a connection shared with others. Made by
    :meth:`Host.open <p2ptls.Host.open>` or handed to a protocol's handler.

    It has the API of :class:`~p2ptls.SecureStream`: a byte stream (``send_all``,
    ``receive_some``, ``async for chunk in stream``) and whole messages (``send_message``,
    ``receive_message``, ``messages()``), half-close by ``send_eof``, and ``aclose``, which ends
    our direction and tells the peer to stop sending (it resets the stream unless the peer had
    finished too).
    """

    def __init__(
        self, connection: PeerConnection, stream_id: int, protocol: str, *, server_side: bool
    ) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.protocol = protocol
        self.server_side = server_side
        """``True`` for a stream the peer opened (as on :class:`~p2ptls.SecureStream`, the
        accepting side)."""
        self._bytes: collections.deque[bytes | bytearray] = collections.deque()
        """The byte stream's unread data. Large frames are kept as they came (no copy); small
        ones are gathered into shared buffers, so a peer sending tiny frames costs no object per
        frame (what it may send unread is bounded by the stream's credit)."""
        self._messages: collections.deque[bytes] = collections.deque()
        self._assembly: list[bytes] = []
        self._fin_received = False
        self._fin_sent = False
        self._closed = False
        self._error: BaseException | None = None
        self._receive_lot = trio.lowlevel.ParkingLot()
        self._send_lot = trio.lowlevel.ParkingLot()
        self._receivers_waiting = 0
        """Tasks parked in ``_receive_lot`` (cheaper to test than the lot itself)."""
        self._send_conflict = ConflictDetector("another task is already sending on this stream")
        self._receive_conflict = ConflictDetector("another task is already receiving bytes")
        self._message_conflict = ConflictDetector("another task is already receiving messages")

    # -- attributes ----------------------------------------------------------------------------

    @property
    def remote_peer(self) -> PeerRecord:
        """The authenticated peer at the other end."""
        return self.connection.remote_peer

    @property
    def local_address(self) -> tuple[str, int] | None:
        """This end's ``(host, port)`` of the shared connection (``None`` off TCP)."""
        return self.connection.local_address

    @property
    def remote_address(self) -> tuple[str, int] | None:
        """The peer's ``(host, port)`` of the shared connection, as this end sees it."""
        return self.connection.remote_address

    @property
    def cipher_suite(self) -> str:
        """The shared connection's cipher suite."""
        return self.connection.secure.cipher_suite

    @property
    def session_id(self) -> bytes:
        """The shared connection's session id."""
        return self.connection.session_id

    def export_keying_material(self, label: str, context: bytes, length: int) -> bytes:
        """Keying material bound to the connection's session *and* to this stream (two streams
        of one connection never get the same)."""
        bound = b"p2ptls-mux/1" + self.stream_id.to_bytes(4, "big") + context
        return self.connection.export_keying_material(label, bound, length)

    # -- filled by the connection's reader ---------------------------------------------------------

    def _data_arrived(self, data: bytes, message: bool, end: bool) -> None:
        if not message:
            chunks = self._bytes
            if len(data) >= _GATHER_BELOW:
                chunks.append(data)
            elif chunks and isinstance(chunks[-1], bytearray) and len(chunks[-1]) < _GATHER_UP_TO:
                chunks[-1] += data
            else:
                chunks.append(bytearray(data))
        else:
            if data:
                self._assembly.append(data)
            if end:
                self._messages.append(b"".join(self._assembly))
                self._assembly.clear()
        if self._receivers_waiting:  # an empty ParkingLot's unpark_all still costs about 0.6 us
            self._receive_lot.unpark_all()

    def _fin_arrived(self) -> None:
        self._fin_received = True
        self._receive_lot.unpark_all()

    def _credit_arrived(self) -> None:
        if self._send_lot:
            self._send_lot.unpark_all()

    def _fail(self, error: BaseException) -> None:
        """The stream is reset or its connection lost: every waiter wakes to the error."""
        if self._error is None:
            self._error = error
            self._assembly.clear()
        self._wake_all()

    def _closed_by_host(self) -> None:
        self._closed = True
        self._wake_all()

    def _wake_all(self) -> None:
        """Every task waiting on this stream wakes to find it failed or closed, a sender waiting
        for room in the connection's output included (the other streams' senders waiting there
        check again and wait on)."""
        self._receive_lot.unpark_all()
        self._send_lot.unpark_all()
        drained = self.connection._drained
        if drained:
            drained.unpark_all()

    def _raise_error(self) -> None:
        error = self._error
        assert error is not None
        if isinstance(error, ConnectionLost):
            raise ConnectionLost(str(error)) from error.__cause__
        if isinstance(error, StreamReset):
            raise StreamReset(str(error), error.code)
        if isinstance(error, StreamInterrupted):  # our own cancellation, not the peer's doing
            raise trio.BrokenResourceError(str(error)) from error
        raise error

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this stream was closed")

    # -- receiving -----------------------------------------------------------------------------
    #
    # Every operation is a checkpoint, as trio's streams are: it checks for cancellation first and
    # yields once, by waiting or, when it did not need to wait, by a cancel-shielded checkpoint
    # at the end (so what it did is never undone by a cancellation).

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to ``max_bytes`` bytes of the byte stream; ``b""`` after the peer's end."""
        limit = _DEFAULT_RECEIVE_MAX if max_bytes is None else operator.index(max_bytes)
        if limit < 1:
            raise ValueError("max_bytes must be >= 1")
        with self._receive_conflict:
            await trio.lowlevel.checkpoint_if_cancelled()
            waited = False
            while True:
                if self._closed:
                    self._check_open()
                if self._bytes:
                    data = self._take_bytes(limit)
                    self.connection._bytes_consumed(self.stream_id, len(data))
                    break
                if self._fin_received:
                    data = b""
                    break
                if self._error is not None:
                    self._raise_error()
                await self._wait_receivable()
                waited = True
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    async def _wait_receivable(self) -> None:
        self._receivers_waiting += 1
        try:
            await self._receive_lot.park()
        finally:
            self._receivers_waiting -= 1

    def _take_bytes(self, limit: int) -> bytes:
        chunks = self._bytes
        chunk = chunks.popleft()
        if len(chunk) < limit and chunks:
            parts = [chunk]
            room = limit - len(chunk)
            while chunks and room > 0:
                following = chunks.popleft()
                parts.append(following)
                room -= len(following)
            chunk = b"".join(parts)
        if len(chunk) > limit:
            chunks.appendleft(chunk[limit:])
            chunk = chunk[:limit]
        return chunk if type(chunk) is bytes else bytes(chunk)

    async def receive_message(self) -> bytes:
        """The next whole message; ``trio.EndOfChannel`` after the peer's end."""
        with self._message_conflict:
            await trio.lowlevel.checkpoint_if_cancelled()
            waited = False
            while True:
                self._check_open()
                if self._messages:
                    message = self._messages.popleft()
                    self.connection._message_taken(self)
                    break
                if self._fin_received:
                    raise trio.EndOfChannel
                if self._error is not None:
                    self._raise_error()
                await self._wait_receivable()
                waited = True
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return message

    def messages(self) -> MessageIterator:
        """Whole messages until the peer's end: ``async for message in stream.messages()``."""
        return MessageIterator(self.receive_message)

    # -- sending -------------------------------------------------------------------------------

    async def _wait_sendable(self, *, need_credit: bool) -> bool:
        """Wait for credit (if sending bytes) and room in the connection's output; whether it
        had to wait."""
        connection = self.connection
        waited = False
        while True:
            self._check_open()
            if self._error is not None:
                self._raise_error()
            if self._fin_sent:
                raise trio.ClosedResourceError("send_eof was already called")
            if need_credit and connection._send_credit(self.stream_id) == 0:
                await self._send_lot.park()
            elif connection._output_full():
                await connection._drained.park()
            else:
                return waited
            waited = True

    def _sendable_now(self) -> bool:
        """Whether bytes may be queued now without waiting (the fast path of
        :meth:`_wait_sendable`, which also raises the stream's errors)."""
        return (
            self._error is None
            and not self._closed
            and not self._fin_sent
            and self.connection._sendable(self.stream_id)
        )

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send bytes on the byte stream."""
        with self._send_conflict:
            await trio.lowlevel.checkpoint_if_cancelled()
            view = memoryview(data).cast("B")
            waited = False
            if not view:
                self._check_open()
            while view:
                if not self._sendable_now():
                    waited |= await self._wait_sendable(need_credit=True)
                taken = self.connection._send_data(self.stream_id, view)
                view = view[taken:]
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()

    async def send_message(self, message: bytes | bytearray | memoryview) -> None:
        """Send one whole message (at most the connection's ``max_message_size`` bytes).

        If cancelled part-way, the stream is reset (the rest of a message cannot follow later).
        """
        limit = self.connection.max_message_size
        if len(message) > limit:
            raise ValueError(f"message of {len(message)} bytes exceeds max_message_size ({limit})")
        with self._send_conflict:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._check_open()
            started = False
            waited = False
            view = memoryview(message).cast("B")
            try:
                while True:
                    waited |= await self._wait_sendable(need_credit=bool(view))
                    taken = self.connection._send_data(self.stream_id, view, message=True, end=True)
                    started = True
                    view = view[taken:]
                    if not view:
                        break
            except BaseException:
                if started and self._error is None:  # its end can no longer be sent: reset it
                    self.connection._reset(self.stream_id, ResetCode.CANCEL)
                    self._fail(StreamInterrupted("a message was cut short by cancellation"))
                raise
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()

    async def send_eof(self) -> None:
        """End our direction; the peer's reads then end. Calling it again does nothing."""
        with self._send_conflict:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._check_open()
            if not self._fin_sent:
                if self._error is not None:
                    self._raise_error()
                self.connection._send_data(self.stream_id, b"", fin=True)
                self._fin_sent = True
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the stream has credit and the connection's output has room."""
        with self._send_conflict:
            await trio.lowlevel.checkpoint_if_cancelled()
            if not await self._wait_sendable(need_credit=True):
                await trio.lowlevel.cancel_shielded_checkpoint()

    async def ping(self) -> float:
        """One round trip on the shared connection, in seconds; :class:`ConnectionLost` if the
        connection ends first."""
        return await self.connection.ping()

    # -- closing -------------------------------------------------------------------------------

    def _abort(self, code: ResetCode, reason: str) -> None:
        self.connection._reset(self.stream_id, code)
        self._fail(StreamReset(reason, code))

    async def aclose(self) -> None:
        """End our direction, tell the peer to stop sending, and forget the stream."""
        if not self._closed:
            self._closed = True
            self.connection._close_stream(self)
            self._wake_all()
        await trio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        return (
            f"<LogicalStream {self.protocol} #{self.stream_id} "
            f"remote={self.remote_peer.peer_id.short}>"
        )
