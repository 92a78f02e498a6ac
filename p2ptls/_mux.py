"""Many logical streams over one secure connection (sans-IO).

Theory of operation
-------------------
A :class:`Multiplexer` is one side of one connection's multiplexing, as h11's ``Connection`` is
one side of an HTTP/1.1 connection: bytes received go in through
:meth:`~Multiplexer.receive_data_untrusted`, which returns events; the application's actions
(open, accept, send, consume, reset, ping, go away) queue frames, which
:meth:`~Multiplexer.data_to_send` hands out. It never reads a clock, a socket or trio.

**Streams.** The side that initiated the secure connection opens odd stream ids, the other side
even ones, each exactly two above its previous one, so an id can never be reused and a frame for
a stream that was never opened is told apart from a late frame for one that is gone (the first
is a protocol error, the second is dropped). A stream opened by the peer is offered to the
application (:class:`StreamOpened`), which accepts or refuses it; the opener may send data before
the answer, within the initial window. Each stream has two channels in each direction, as a
:class:`~p2ptls.SecureStream` has: a byte stream and whole messages. FIN ends a direction; RESET
aborts both.

**Flow control.** Every stream starts with ``INITIAL_WINDOW`` bytes of credit in each direction;
the receiver grants more in WINDOW frames as the application consumes what arrived, so a stream
whose reader is slow stops only its own sender, never the other streams of the connection.
Sending past the credit is a protocol error. Bytes of a message still being assembled must be
consumed before the whole message can be read, so their credit is given back as they arrive while
no finished message waits unread; those bytes are then charged to the shared
:class:`~p2ptls._fragments.ReassemblyBudget` until the message is taken. Memory per connection is
therefore bounded by ``max_inbound_streams`` × the window plus the budget's per-peer share.

**Trust boundaries.** Everything a frame claims is checked before it is acted on: type, flags and
length (before the payload is buffered), stream id parity and order, the credit. A violation
raises :class:`~p2ptls._errors.MuxError` and the connection ends; nothing else is shared with other
connections. The peer can add to three tables, each bounded: streams it opened (at most
``max_inbound_streams``, beyond that it is refused), our queued replies (at most
``max_output_backlog`` bytes of frames other than DATA: a peer that asks without reading is cut;
our own DATA waiting is bounded by the senders and not counted, so that a peer that pings while we
send in bulk is not taken for one that does not read) and message bytes (the budget).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from . import _mux_wire as mw
from ._errors import LocalProtocolError, MuxError, ReassemblyBudgetExceeded
from ._fragments import FRAGMENT_OVERHEAD, ReassemblyBudget
from ._mux_events import (
    CreditAvailable,
    DataReceived,
    GoAwayReceived,
    MuxEvent,
    OpenRefused,
    PongReceived,
    StreamAborted,
    StreamAccepted,
    StreamEnded,
    StreamOpened,
)
from ._mux_stream import StreamState
from ._mux_wire import Flag, FrameType, GoAwayCode, RefuseCode, ResetCode

__all__ = [
    "CreditAvailable",
    "DataReceived",
    "GoAwayReceived",
    "Multiplexer",
    "MuxEvent",
    "OpenRefused",
    "PongReceived",
    "StreamAborted",
    "StreamAccepted",
    "StreamEnded",
    "StreamOpened",
]

DEFAULT_WINDOW = 256 * 1024
DEFAULT_MAX_OUTPUT_BACKLOG = 4 * 1024 * 1024

# The per-frame paths use plain ints and module constants: an IntFlag operation or an enum
# attribute lookup costs up to a microsecond.
_MESSAGE, _END, _FIN = int(Flag.MESSAGE), int(Flag.END), int(Flag.FIN)
_DATA, _WINDOW, _OPEN = FrameType.DATA, FrameType.WINDOW, FrameType.OPEN
_ACCEPT, _REFUSE = FrameType.ACCEPT, FrameType.REFUSE
_PING, _PONG, _GOAWAY = FrameType.PING, FrameType.PONG, FrameType.GOAWAY


class Multiplexer:
    """One side of the multiplexing of one secure connection.

    Args:
      initiator: whether this side initiated the secure connection (it opens odd stream ids).
      window: the credit this side grants per stream at first (at least ``INITIAL_WINDOW``).
      max_window: how far a stream's window may grow while its reader keeps up and its sender
        waits for credit (default: ``window``, no growth).
      connection_window: the sum of the windows of all streams held, beyond which no window
        grows (default: no bound but ``max_window`` per stream).
      max_inbound_streams: streams the peer may hold open at once; more are refused.
      max_message_size: largest message accepted on a stream's message channel.
      budget: shared memory budget for message bytes held without credit.
      budget_key: whom the budget charges (the remote peer).
      serves: whether this side serves a protocol; an OPEN for one it does not is refused as it
        is read (UNKNOWN_PROTOCOL), so that it never holds one of the peer's stream slots.
    """

    def __init__(
        self,
        *,
        initiator: bool,
        window: int = DEFAULT_WINDOW,
        max_window: int | None = None,
        connection_window: int | None = None,
        max_inbound_streams: int = 64,
        max_message_size: int = 16 * 1024 * 1024,
        budget: ReassemblyBudget | None = None,
        budget_key: object = None,
        max_output_backlog: int = DEFAULT_MAX_OUTPUT_BACKLOG,
        serves: Callable[[str], bool] | None = None,
    ) -> None:
        if not mw.INITIAL_WINDOW <= window <= mw.MAX_WINDOW:
            raise ValueError(f"window must be between {mw.INITIAL_WINDOW} and {mw.MAX_WINDOW}")
        self.initiator = initiator
        self.window = window
        self.max_window = window if max_window is None else max_window
        if not window <= self.max_window <= mw.MAX_WINDOW:
            raise ValueError(f"max_window must be between window and {mw.MAX_WINDOW}")
        self.connection_window = connection_window
        self._windows = 0
        """The sum of the windows of the streams held (for ``connection_window``)."""
        self.max_inbound_streams = max_inbound_streams
        self.max_message_size = max_message_size
        self.budget = budget if budget is not None else ReassemblyBudget()
        self.budget_key = budget_key
        self.max_output_backlog = max_output_backlog
        self.serves = serves
        self._streams: dict[int, StreamState] = {}
        self._inbound = 0
        self._last_local = -1 if initiator else 0  # the next id is two above
        self._last_remote = 0 if initiator else -1
        self._out_pieces: list[bytes | memoryview] = []
        """The queued frames, in pieces joined by :meth:`data_to_send` (a DATA payload is a
        slice of the caller's ``bytes``, which cannot change, so it is copied only there)."""
        self.output_size = 0
        """Bytes of frames queued and not yet taken by :meth:`data_to_send` (read-only; a plain
        attribute, as the trio layer reads it on every send and wake-up)."""
        self._control_size = 0
        """Bytes of the queued frames other than DATA (what :meth:`_reply` bounds)."""
        self._in = bytearray()
        self.go_away_sent = False
        self.go_away_received: GoAwayReceived | None = None

    # -- inspection ------------------------------------------------------------------------------

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    @property
    def inbound_streams(self) -> int:
        return self._inbound

    def send_credit(self, stream_id: int) -> int:
        """Bytes the peer lets us send on ``stream_id`` now (0 for a stream that is gone)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.reset or stream.sent_fin:
            return 0
        return stream.send_credit

    def can_open(self) -> bool:
        """Whether :meth:`open_stream` may be called (no GOAWAY either way, ids left)."""
        return (
            not self.go_away_sent
            and self.go_away_received is None
            and self._last_local + 2 <= mw.MAX_STREAM_ID
        )

    # -- output --------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Every queued frame, in order; the queue is then empty."""
        data = b"".join(self._out_pieces)
        self._out_pieces.clear()
        self.output_size = self._control_size = 0
        return data

    def _queue(
        self, frame_type: FrameType, stream_id: int, payload: bytes = b"", flags: int = 0
    ) -> None:
        self._out_pieces.append(mw.HEADER.pack(frame_type, flags, stream_id, len(payload)))
        self._out_pieces.append(payload)
        self.output_size += mw.HEADER_SIZE + len(payload)
        if frame_type is not _DATA:
            self._control_size += mw.HEADER_SIZE + len(payload)

    def _reply(self, frame_type: FrameType, stream_id: int, payload: bytes = b"") -> None:
        """Queue a frame the peer's input asked for; a peer that asks without reading is cut
        (our own DATA waiting is bounded by the senders and does not count)."""
        if self._control_size > self.max_output_backlog:
            raise MuxError("the peer does not read the replies it asks for")
        self._queue(frame_type, stream_id, payload)

    # -- application actions ---------------------------------------------------------------------

    def open_stream(self, protocol: str) -> int:
        """Queue an OPEN for ``protocol``; the new stream's id."""
        name = mw.check_protocol_name(protocol)
        if not self.can_open():
            raise LocalProtocolError("this connection opens no more streams (going away)")
        self._last_local += 2
        stream_id = self._last_local
        self._streams[stream_id] = self._new_stream(local=True)
        self._queue(FrameType.OPEN, stream_id, name)
        self._grant_window(stream_id, self._streams[stream_id])
        return stream_id

    def accept_stream(self, stream_id: int) -> None:
        stream = self._streams[stream_id]
        if stream.local or stream.accepted:
            raise LocalProtocolError("not a stream waiting to be accepted")
        stream.accepted = True
        self._queue(FrameType.ACCEPT, stream_id)
        self._grant_window(stream_id, stream)

    def refuse_stream(self, stream_id: int, code: RefuseCode) -> None:
        stream = self._streams[stream_id]
        if stream.local or stream.accepted:
            raise LocalProtocolError("not a stream waiting to be accepted")
        self._queue(FrameType.REFUSE, stream_id, bytes([code]))
        self._forget(stream_id)

    def _new_stream(self, *, local: bool) -> StreamState:
        self._windows += self.window
        return StreamState(local=local, window=self.window)

    def _grant_window(self, stream_id: int, stream: StreamState) -> None:
        extra = stream.window - mw.INITIAL_WINDOW
        if extra:
            stream.receive_left += extra
            self._queue(FrameType.WINDOW, stream_id, extra.to_bytes(4, "big"))

    def send_data(
        self,
        stream_id: int,
        data: bytes | bytearray | memoryview,
        *,
        message: bool = False,
        end: bool = False,
        fin: bool = False,
    ) -> int:
        """Queue up to the stream's credit of ``data``; how many bytes were taken.

        ``end`` (message channel) and ``fin`` apply only if all of ``data`` was taken.
        """
        stream = self._streams.get(stream_id)
        if stream is None or stream.reset:
            raise LocalProtocolError("the stream is gone")
        if stream.sent_fin:
            raise LocalProtocolError("this direction of the stream was finished")
        view = memoryview(data)
        immutable = isinstance(view.obj, bytes)
        total = len(view)
        taken = 0
        base = _MESSAGE if message else 0
        last_flags = base | (_END if end else 0) | (_FIN if fin else 0)
        while True:
            size = min(total - taken, stream.send_credit, mw.FRAME_CHUNK)
            last = taken + size == total
            if size == 0 and not (last and (end or fin)):
                break
            flags = last_flags if last else base
            chunk = view[taken : taken + size]
            self._out_pieces.append(mw.HEADER.pack(_DATA, flags, stream_id, size))
            self._out_pieces.append(chunk if immutable else bytes(chunk))
            self.output_size += mw.HEADER_SIZE + size
            stream.send_credit -= size
            taken += size
            if message:
                stream.sending_message = not (flags & Flag.END)
            if last:
                stream.sent_fin = fin
                break
        return taken

    def send_fin(self, stream_id: int) -> None:
        """Finish our direction (both channels) of a stream."""
        self.send_data(stream_id, b"", fin=True)

    def bytes_consumed(self, stream_id: int, size: int) -> None:
        """The application read ``size`` bytes of the stream's byte channel."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._give_back(stream_id, stream, size)

    def message_taken(self, stream_id: int) -> None:
        """The application took the stream's oldest finished message: release its share of the
        reassembly budget and give its credit back to the peer."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.finished:
            return
        held, charged = stream.finished.popleft()
        self.budget.release(charged, self.budget_key)
        credit = held
        if not stream.finished and stream.assembling_held:
            credit += stream.assembling_held
            stream.assembling_held = 0
        self._give_back(stream_id, stream, credit)

    def reset_stream(self, stream_id: int, code: ResetCode = ResetCode.CANCEL) -> None:
        """Abort a stream (both directions) unless both finished already, and forget it."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if not stream.reset and not (stream.sent_fin and stream.received_fin):
            self._queue(FrameType.RESET, stream_id, bytes([code]))
        self._forget(stream_id)

    def close_stream(self, stream_id: int) -> None:
        """The application is done with a stream: finish our direction if it is still open,
        tell the peer to stop sending (RESET) unless it finished too, and forget the stream."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if not stream.reset:
            if not stream.sent_fin and stream.sending_message:
                self._queue(FrameType.RESET, stream_id, bytes([ResetCode.CANCEL]))
                stream.reset = True
            elif not stream.sent_fin:
                self._queue(FrameType.DATA, stream_id, b"", Flag.FIN)
                stream.sent_fin = True
            if not stream.received_fin and not stream.reset:
                self._queue(FrameType.RESET, stream_id, bytes([ResetCode.CANCEL]))
        self._forget(stream_id)

    def send_ping(self, payload: bytes) -> None:
        if len(payload) != mw.PING_SIZE:
            raise ValueError("a ping carries 8 bytes")
        self._queue(FrameType.PING, 0, payload)

    def go_away(self, code: GoAwayCode = GoAwayCode.NORMAL) -> None:
        """Tell the peer this side opens and accepts no more streams (once)."""
        if self.go_away_sent:
            return
        self.go_away_sent = True
        last = max(self._last_remote, 0)
        self._queue(FrameType.GOAWAY, 0, last.to_bytes(4, "big") + bytes([code]))

    # -- input ---------------------------------------------------------------------------------

    def receive_data_untrusted(self, data: bytes | bytearray | memoryview) -> list[MuxEvent]:
        """Feed bytes received from the peer; the events they complete.

        Raises :class:`~p2ptls._errors.MuxError` if the peer broke the protocol (the connection
        must then be closed).
        """
        events: list[MuxEvent] = []
        if self._in:  # the rest of a frame begun earlier
            self._in += data
            with memoryview(self._in) as view:
                offset = self._parse(view, events)
            del self._in[:offset]
        else:  # frames parsed where they are; only an incomplete one at the end is kept
            with memoryview(data).cast("B") as view:
                offset = self._parse(view, events)
                if offset < len(view):
                    self._in += view[offset:]
        return events

    def _parse(self, view: memoryview, events: list[MuxEvent]) -> int:
        """Handle the whole frames at the start of ``view`` (each payload copied once); how many
        bytes they took."""
        offset = 0
        end = len(view)
        while end - offset >= mw.HEADER_SIZE:
            frame_type, flags, stream_id, length = mw.parse_header_untrusted(view, offset)
            start = offset + mw.HEADER_SIZE
            if end - start < length:
                if frame_type is FrameType.DATA:
                    self._check_credit(stream_id, length)  # before buffering the payload
                break
            offset = start + length
            self._handle(frame_type, flags, stream_id, bytes(view[start:offset]), events)
        return offset

    def _check_credit(self, stream_id: int, length: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None and not stream.reset and length > stream.receive_left:
            raise MuxError("DATA past the stream's credit")

    def _handle(
        self,
        frame_type: FrameType,
        flags: int,
        stream_id: int,
        payload: bytes,
        events: list[MuxEvent],
    ) -> None:
        if frame_type is _PING:
            self._reply(_PONG, 0, payload)
            return
        if frame_type is _PONG:
            events.append(PongReceived(payload))
            return
        if frame_type is _GOAWAY:
            self._on_go_away(payload, events)
            return
        if frame_type is _OPEN:
            self._on_open(stream_id, payload, events)
            return
        stream = self._stream_for(stream_id)
        if stream is None:
            return  # a late frame for a stream that is gone
        if frame_type is _DATA:
            self._on_data(stream_id, stream, flags, payload, events)
        elif frame_type is _WINDOW:
            self._on_window(stream_id, stream, int.from_bytes(payload, "big"), events)
        elif frame_type is _ACCEPT:
            if not stream.local or stream.accepted:
                raise MuxError("ACCEPT for a stream not waiting for one")
            stream.accepted = True
            events.append(StreamAccepted(stream_id))
        elif frame_type is _REFUSE:
            if not stream.local or stream.accepted:
                raise MuxError("REFUSE for a stream not waiting for an answer")
            self._forget(stream_id)
            events.append(OpenRefused(stream_id, mw.refuse_code_untrusted(payload[0])))
        else:  # RESET
            if stream.peer_reset:
                raise MuxError("RESET of a stream already reset")
            stream.peer_reset = True
            if stream.reset:
                return  # crossed with our own RESET
            stream.reset = True
            self._release_assembling(stream)
            events.append(
                StreamAborted(stream_id, mw.reset_code_untrusted(payload[0]), by_peer=True)
            )

    def _stream_for(self, stream_id: int) -> StreamState | None:
        """The stream a frame names; ``None`` for one that is gone; error for one never opened."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            return stream
        ours = (stream_id % 2 == 1) == self.initiator
        last = self._last_local if ours else self._last_remote
        if stream_id > last:
            raise MuxError("frame for a stream that was never opened")
        return None

    def _on_open(self, stream_id: int, payload: bytes, events: list[MuxEvent]) -> None:
        if stream_id != self._last_remote + 2:
            raise MuxError("OPEN with an out-of-order or wrong-side stream id")
        protocol = mw.parse_protocol_name_untrusted(payload)
        if self.go_away_received is not None:
            raise MuxError("OPEN after the peer's GOAWAY")
        if self._control_size > self.max_output_backlog:
            raise MuxError("the peer does not read the replies it asks for")
        self._last_remote = stream_id
        if self.go_away_sent:
            self._reply(FrameType.REFUSE, stream_id, bytes([RefuseCode.GOING_AWAY]))
        elif self._inbound >= self.max_inbound_streams:
            self._reply(FrameType.REFUSE, stream_id, bytes([RefuseCode.TOO_MANY_STREAMS]))
        elif self.serves is not None and not self.serves(protocol):
            self._reply(FrameType.REFUSE, stream_id, bytes([RefuseCode.UNKNOWN_PROTOCOL]))
        else:
            self._streams[stream_id] = self._new_stream(local=False)
            self._inbound += 1
            events.append(StreamOpened(stream_id, protocol))

    def _on_data(
        self,
        stream_id: int,
        stream: StreamState,
        flags: int,
        payload: bytes,
        events: list[MuxEvent],
    ) -> None:
        if stream.received_fin or stream.peer_reset:
            raise MuxError("DATA after the stream's FIN or RESET")
        if stream.reset:
            return  # sent before our RESET reached the peer
        if stream.local and not stream.accepted:
            raise MuxError("DATA on a stream the peer has not accepted")
        size = len(payload)
        if size > stream.receive_left:
            raise MuxError("DATA past the stream's credit")
        stream.receive_left -= size
        fin = bool(flags & _FIN)
        if flags & _MESSAGE:
            end = bool(flags & _END)
            if not self._take_fragment(stream_id, stream, size, end):
                events.append(StreamAborted(stream_id, ResetCode.MESSAGE_TOO_LARGE, by_peer=False))
                return
            if size or end:
                events.append(DataReceived(stream_id, payload, True, end))
        elif size:
            events.append(DataReceived(stream_id, payload, False, False))
        if fin:
            if stream.message_open:
                raise MuxError("FIN inside an incomplete message")
            stream.received_fin = True
            events.append(StreamEnded(stream_id))

    def _take_fragment(self, stream_id: int, stream: StreamState, size: int, end: bool) -> bool:
        """Account for a message fragment; False if the stream had to be reset for it."""
        if stream.assembling + size > self.max_message_size:
            self._reset_for(stream_id, stream, ResetCode.MESSAGE_TOO_LARGE)
            return False
        charge = size + FRAGMENT_OVERHEAD  # so that tiny or empty fragments are bounded in count
        if not self._charge(stream_id, stream, charge):
            return False
        stream.assembling += size
        stream.assembling_charged += charge
        stream.message_open = not end
        if stream.finished:
            stream.assembling_held += size  # credit held until the waiting messages are taken
        else:
            self._give_back(stream_id, stream, size)
        if end:
            stream.finished.append((stream.assembling_held, stream.assembling_charged))
            stream.assembling = stream.assembling_held = stream.assembling_charged = 0
        return True

    def _charge(self, stream_id: int, stream: StreamState, size: int) -> bool:
        try:
            self.budget.reserve(size, self.budget_key)
        except ReassemblyBudgetExceeded:
            self._reset_for(stream_id, stream, ResetCode.MESSAGE_TOO_LARGE)
            return False
        return True

    def _reset_for(self, stream_id: int, stream: StreamState, code: ResetCode) -> None:
        """Abort a stream whose peer broke a limit of ours (the stream stays known, reset, until
        the application closes it)."""
        stream.reset = True
        self._release_assembling(stream)
        self._reply(FrameType.RESET, stream_id, bytes([code]))

    def _on_window(
        self, stream_id: int, stream: StreamState, increment: int, events: list[MuxEvent]
    ) -> None:
        if increment == 0:
            raise MuxError("WINDOW of zero")
        stream.send_credit += increment
        if stream.send_credit > mw.MAX_WINDOW:
            raise MuxError("credit beyond 2^31 - 1")
        if not stream.reset and not stream.sent_fin:
            events.append(CreditAvailable(stream_id))

    def _on_go_away(self, payload: bytes, events: list[MuxEvent]) -> None:
        if self.go_away_received is not None:
            raise MuxError("a second GOAWAY")
        last = int.from_bytes(payload[:4], "big")
        notice = GoAwayReceived(last, mw.go_away_code_untrusted(payload[4]))
        self.go_away_received = notice
        events.append(notice)
        for stream_id, stream in list(self._streams.items()):
            if stream.local and not stream.accepted and stream_id > last:
                self._forget(stream_id)
                events.append(OpenRefused(stream_id, RefuseCode.GOING_AWAY))

    # -- bookkeeping ---------------------------------------------------------------------------

    def _give_back(self, stream_id: int, stream: StreamState, size: int) -> None:
        """Credit for ``size`` bytes consumed; a WINDOW once half the stream's window is.

        Window growth (auto-tuning): if, when a grant is due, the peer has used all the credit it
        held (so it waits for this grant: the window, not the reader, limits the stream), the
        stream's window doubles, up to ``max_window`` and while the windows of all streams stay
        within ``connection_window``; the grant carries the increase.
        """
        if stream.received_fin or stream.reset:
            return
        stream.to_return += size
        if stream.to_return >= stream.window // 2:
            grant = stream.to_return
            if stream.receive_left == 0 and stream.window < self.max_window:
                growth = min(stream.window, self.max_window - stream.window)
                if (
                    self.connection_window is None
                    or self._windows + growth <= self.connection_window
                ):
                    stream.window += growth
                    self._windows += growth
                    grant += growth
            stream.receive_left += grant
            self._queue(FrameType.WINDOW, stream_id, grant.to_bytes(4, "big"))
            stream.to_return = 0

    def _release_assembling(self, stream: StreamState) -> None:
        """The stream was reset: the message under assembly will never be whole (the logical
        stream drops its fragments). Finished messages are still read before the reset, so they
        stay charged until taken or the stream is gone."""
        self.budget.release(stream.assembling_charged, self.budget_key)
        stream.assembling = stream.assembling_held = stream.assembling_charged = 0

    def _release_messages(self, stream: StreamState) -> None:
        if not stream.finished and not stream.assembling_charged:
            return  # nothing charged (the common case: a byte stream)
        charged = stream.assembling_charged + sum(c for _, c in stream.finished)
        self.budget.release(charged, self.budget_key)
        stream.finished.clear()
        stream.assembling = stream.assembling_held = stream.assembling_charged = 0

    def _forget(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self._windows -= stream.window
        self._release_messages(stream)
        if not stream.local:
            self._inbound -= 1

    def release_all(self) -> None:
        """The connection is gone: give back every budget charge."""
        for stream_id in list(self._streams):
            self._forget(stream_id)

    def stream_ids(self) -> Iterable[int]:
        return tuple(self._streams)
