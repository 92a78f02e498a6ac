"""A reference implementation of the multiplexing of ``protocol/SPEC.md`` §14, for the vectors.

Written from the specification text alone, with the standard library only: it imports nothing
from p2ptls, so that ``protocol/vectors/mux.json`` says what the *specification* requires and
``tests/test_mux_vectors.py`` checks p2ptls against it. It favours being easy to check against
the text over speed; each rule names the section it comes from.

:class:`RefSide` is one side of one connection: :meth:`RefSide.receive` takes bytes from the peer
and returns what the side reports (dicts: the event's name and fields) or raises
:class:`MuxViolation` for a connection error; the action methods are the application's; the
frames the side must send collect in :attr:`RefSide.output`.
"""

from __future__ import annotations

import collections
import struct
from typing import Any

# §14.2, §14.13
HEADER = struct.Struct(">BBII")
HEADER_SIZE = 10
MAX_DATA_PAYLOAD = 1 << 20
FRAME_CHUNK = 1 << 16
MAX_PROTOCOL_NAME = 128
PING_SIZE = 8
MAX_STREAM_ID = (1 << 32) - 1
INITIAL_WINDOW = 1 << 16
MAX_WINDOW = (1 << 31) - 1
FRAGMENT_OVERHEAD = 64
DEFAULT_WINDOW = 256 * 1024
DEFAULT_MAX_OUTPUT_BACKLOG = 4 * 1024 * 1024

TYPES = ["DATA", "WINDOW", "OPEN", "ACCEPT", "REFUSE", "RESET", "PING", "PONG", "GOAWAY"]
CONNECTION_TYPES = {"PING", "PONG", "GOAWAY"}
FIXED_LENGTH = {
    "WINDOW": 4,
    "ACCEPT": 0,
    "REFUSE": 1,
    "RESET": 1,
    "PING": 8,
    "PONG": 8,
    "GOAWAY": 5,
}
MESSAGE, END, FIN = 0x01, 0x02, 0x04
FLAG_NAMES = {MESSAGE: "MESSAGE", END: "END", FIN: "FIN"}
REFUSE_CODES = {1: "UNKNOWN_PROTOCOL", 2: "TOO_MANY_STREAMS", 3: "GOING_AWAY"}
RESET_CODES = {0: "CANCEL", 1: "MESSAGE_TOO_LARGE", 2: "INTERNAL"}
GOAWAY_CODES = {0: "NORMAL", 1: "IDLE", 2: "REPLACED", 3: "LIMIT", 4: "PROTOCOL_ERROR"}


class MuxViolation(Exception):
    """A connection error (§14): ``args[0]`` names the rule that was broken."""


def code_of(codes: dict[int, str], name: str) -> int:
    return next(number for number, known in codes.items() if known == name)


# -- frames (§14.2, §14.3) -------------------------------------------------------------------------


def encode(kind: str, stream_id: int, payload: bytes = b"", flags: int = 0) -> bytes:
    return HEADER.pack(TYPES.index(kind), flags, stream_id, len(payload)) + payload


def check_header(header: bytes) -> tuple[str, int, int, int]:
    """§14.3, in its order: ``(type, flags, stream_id, length)`` or a connection error."""
    type_code, flags, stream_id, length = HEADER.unpack(header)
    if type_code >= len(TYPES):
        raise MuxViolation("14.3.1 unknown frame type")
    kind = TYPES[type_code]
    if (kind in CONNECTION_TYPES) != (stream_id == 0):
        raise MuxViolation("14.3.2 stream id 0 for the connection's frames only")
    if kind == "DATA":
        if flags & ~(MESSAGE | END | FIN):
            raise MuxViolation("14.3.3 unknown DATA flag")
        if flags & END and not flags & MESSAGE:
            raise MuxViolation("14.3.3 END without MESSAGE")
        if length > MAX_DATA_PAYLOAD:
            raise MuxViolation("14.3.3 DATA longer than 1048576")
    elif flags:
        raise MuxViolation("14.3.4 flags on a frame type that has none")
    if kind == "OPEN":
        if not 1 <= length <= MAX_PROTOCOL_NAME:
            raise MuxViolation("14.3.5 OPEN name length outside 1..128")
    elif kind in FIXED_LENGTH and length != FIXED_LENGTH[kind]:
        raise MuxViolation(f"14.3.5 {kind} length must be {FIXED_LENGTH[kind]}")
    return kind, flags, stream_id, length


def split_frames(data: bytes) -> list[tuple[str, int, int, bytes]]:
    """Whole frames of ``data`` (which must hold nothing else)."""
    frames = []
    offset = 0
    while offset < len(data):
        kind, flags, stream_id, length = check_header(data[offset : offset + HEADER_SIZE])
        start = offset + HEADER_SIZE
        frames.append((kind, flags, stream_id, data[start : start + length]))
        offset = start + length
    return frames


def describe(kind: str, flags: int, stream_id: int, payload: bytes) -> dict[str, Any]:
    """A frame's fields, readably (the form of the vectors)."""
    out: dict[str, Any] = {"type": kind, "stream_id": stream_id}
    if kind == "DATA":
        out["flags"] = [name for bit, name in FLAG_NAMES.items() if flags & bit]
        out["payload"] = payload.hex()
    elif kind == "WINDOW":
        out["increment"] = int.from_bytes(payload, "big")
    elif kind == "OPEN":
        out["protocol"] = payload.decode("ascii", errors="replace")
    elif kind in ("REFUSE", "RESET"):
        codes = REFUSE_CODES if kind == "REFUSE" else RESET_CODES
        out["code"] = codes.get(payload[0], payload[0])
    elif kind in ("PING", "PONG"):
        out["payload"] = payload.hex()
    elif kind == "GOAWAY":
        out["last_stream_id"] = int.from_bytes(payload[:4], "big")
        out["code"] = GOAWAY_CODES.get(payload[4], payload[4])
    return out


def describe_all(data: bytes) -> list[dict[str, Any]]:
    return [describe(*frame) for frame in split_frames(data)]


def stream_keying_context(stream_id: int, context: bytes) -> bytes:
    """§14.12: the exporter context of a logical stream."""
    return b"p2ptls-mux/1" + stream_id.to_bytes(4, "big") + context


# -- one side of a connection (§14.4 - §14.10) -----------------------------------------------------


class RefStream:
    def __init__(self, mine: bool, window: int) -> None:
        self.mine = mine
        self.window = window  # the credit we keep granting (§14.7: it may grow)
        self.accepted = False
        self.send_credit = INITIAL_WINDOW
        self.peer_credit = INITIAL_WINDOW  # credit granted to the peer and not yet used
        self.consumed = 0  # consumed since our last WINDOW (§14.7)
        self.sent_fin = False
        self.peer_fin = False
        self.reset = False  # RESET received, or sent by us for a broken limit
        self.peer_reset = False
        self.message_out = False  # our outgoing message is incomplete
        self.message_in = False  # the peer's message is incomplete
        self.complete: collections.deque[list[int]] = collections.deque()  # [held, charge]
        self.assembling_size = 0
        self.assembling_held = 0
        self.assembling_charge = 0


class RefSide:
    def __init__(
        self,
        *,
        initiator: bool,
        window: int = DEFAULT_WINDOW,
        max_window: int | None = None,
        connection_window: int | None = None,
        max_inbound_streams: int = 64,
        max_message_size: int = 16 * 1024 * 1024,
        budget: tuple[int, int] = (256 << 20, 64 << 20),
        max_output_backlog: int = DEFAULT_MAX_OUTPUT_BACKLOG,
    ) -> None:
        self.initiator = initiator
        self.window = window
        self.max_window = window if max_window is None else max_window
        self.connection_window = connection_window
        self.windows = 0  # the sum of the windows of the streams we hold
        self.max_inbound_streams = max_inbound_streams
        self.max_message_size = max_message_size
        self.budget_total, self.budget_per_peer = budget
        self.budget_used = 0
        self.max_output_backlog = max_output_backlog
        self.streams: dict[int, RefStream] = {}
        self.inbound = 0
        # §14.4: "none yet" is -1 for the initiator's ids, 0 for the responder's.
        self.last_local = -1 if initiator else 0
        self.last_remote = 0 if initiator else -1
        self.goaway_sent = False
        self.goaway_received = False
        self.output = bytearray()
        self.control_waiting = 0  # bytes of output other than DATA (§14.9)
        self._input = bytearray()
        self._events: list[dict[str, Any]] = []

    # -- helpers -----------------------------------------------------------------------------------

    def take_output(self) -> bytes:
        data = bytes(self.output)
        self.output.clear()
        self.control_waiting = 0
        return data

    def _send(self, kind: str, stream_id: int, payload: bytes = b"", flags: int = 0) -> None:
        frame = encode(kind, stream_id, payload, flags)
        self.output += frame
        if kind != "DATA":
            self.control_waiting += len(frame)

    def _check_backlog(self) -> None:
        """§14.9: a reply is due; a peer that does not read its replies is cut (our own DATA
        waiting does not count)."""
        if self.control_waiting > self.max_output_backlog:
            raise MuxViolation("14.9 more than max_output_backlog bytes wait for the peer")

    def _report(self, event: str, **fields: Any) -> None:
        self._events.append({"event": event, **fields})

    def credit(self, stream_id: int) -> int:
        stream = self.streams.get(stream_id)
        if stream is None or stream.reset or stream.sent_fin:
            return 0
        return stream.send_credit

    def _new_stream(self, *, mine: bool) -> RefStream:
        self.windows += self.window
        return RefStream(mine=mine, window=self.window)

    def _grant_initial(self, stream: RefStream, stream_id: int) -> None:
        extra = stream.window - INITIAL_WINDOW
        if extra > 0:
            stream.peer_credit += extra
            self._send("WINDOW", stream_id, extra.to_bytes(4, "big"))

    def _consume(self, stream: RefStream, stream_id: int, size: int) -> None:
        """§14.7: grant once half the window has been consumed."""
        if stream.peer_fin or stream.reset:
            return
        stream.consumed += size
        if stream.consumed >= stream.window // 2:
            grant = stream.consumed
            # §14.7 growth: the peer used all its credit, so the window limited the stream.
            if stream.peer_credit == 0 and stream.window < self.max_window:
                growth = min(stream.window, self.max_window - stream.window)
                if self.connection_window is None or (
                    self.windows + growth <= self.connection_window
                ):
                    stream.window += growth
                    self.windows += growth
                    grant += growth
            stream.peer_credit += grant
            self._send("WINDOW", stream_id, grant.to_bytes(4, "big"))
            stream.consumed = 0

    def _release_assembling(self, stream: RefStream) -> None:
        """§14.6: a reset drops the message under assembly; finished ones stay charged."""
        self.budget_used -= stream.assembling_charge
        stream.assembling_size = stream.assembling_held = stream.assembling_charge = 0

    def _release(self, stream: RefStream) -> None:
        charged = stream.assembling_charge + sum(charge for _, charge in stream.complete)
        self.budget_used -= charged
        stream.complete.clear()
        stream.assembling_size = stream.assembling_held = stream.assembling_charge = 0

    def _forget(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id)
        self.windows -= stream.window
        self._release(stream)
        if not stream.mine:
            self.inbound -= 1

    # -- the application's actions (§14.5) ---------------------------------------------------------

    def open(self, protocol: str) -> int:
        name = protocol.encode("ascii")
        assert 1 <= len(name) <= MAX_PROTOCOL_NAME and all(0x21 <= b <= 0x7E for b in name)
        assert not self.goaway_sent and not self.goaway_received
        assert self.last_local + 2 <= MAX_STREAM_ID
        self.last_local += 2
        stream = self.streams[self.last_local] = self._new_stream(mine=True)
        self._send("OPEN", self.last_local, name)
        self._grant_initial(stream, self.last_local)
        return self.last_local

    def accept(self, stream_id: int) -> None:
        stream = self.streams[stream_id]
        assert not stream.mine and not stream.accepted
        stream.accepted = True
        self._send("ACCEPT", stream_id)
        self._grant_initial(stream, stream_id)

    def refuse(self, stream_id: int, code: str) -> None:
        stream = self.streams[stream_id]
        assert not stream.mine and not stream.accepted
        self._send("REFUSE", stream_id, bytes([code_of(REFUSE_CODES, code)]))
        self._forget(stream_id)

    def send(
        self,
        stream_id: int,
        data: bytes,
        *,
        message: bool = False,
        end: bool = False,
        fin: bool = False,
    ) -> int:
        """Frames of at most ``min(credit, 65536)`` bytes; how many bytes were taken."""
        stream = self.streams[stream_id]
        assert not stream.reset and not stream.sent_fin
        assert not (fin and (message or stream.message_out) and not end), "FIN inside a message"
        taken = 0
        while True:
            size = min(len(data) - taken, stream.send_credit, FRAME_CHUNK)
            last = taken + size == len(data)
            if size == 0 and not (last and (end or fin)):
                return taken
            flags = MESSAGE if message else 0
            if last:
                flags |= (END if end else 0) | (FIN if fin else 0)
            self._send("DATA", stream_id, data[taken : taken + size], flags)
            stream.send_credit -= size
            taken += size
            if message:
                stream.message_out = not flags & END
            if last:
                stream.sent_fin = fin
                return taken

    def finish(self, stream_id: int) -> None:
        self.send(stream_id, b"", fin=True)

    def consume(self, stream_id: int, size: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._consume(stream, stream_id, size)

    def take_message(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or not stream.complete:
            return
        held, charge = stream.complete.popleft()
        self.budget_used -= charge
        credit = held
        if not stream.complete:
            credit += stream.assembling_held
            stream.assembling_held = 0
        self._consume(stream, stream_id, credit)

    def reset_stream(self, stream_id: int, code: str) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if not stream.reset and not (stream.sent_fin and stream.peer_fin):
            self._send("RESET", stream_id, bytes([code_of(RESET_CODES, code)]))
        self._forget(stream_id)

    def close(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if not stream.reset:
            reset_sent = False
            if not stream.sent_fin:
                if stream.message_out:
                    self._send("RESET", stream_id, bytes([code_of(RESET_CODES, "CANCEL")]))
                    reset_sent = True
                else:
                    self._send("DATA", stream_id, b"", FIN)
            if not stream.peer_fin and not reset_sent:
                self._send("RESET", stream_id, bytes([code_of(RESET_CODES, "CANCEL")]))
        self._forget(stream_id)

    def ping(self, payload: bytes) -> None:
        assert len(payload) == PING_SIZE
        self._send("PING", 0, payload)

    def go_away(self, code: str) -> None:
        if self.goaway_sent:
            return
        self.goaway_sent = True
        last = max(self.last_remote, 0)
        self._send("GOAWAY", 0, last.to_bytes(4, "big") + bytes([code_of(GOAWAY_CODES, code)]))

    # -- receiving ---------------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[dict[str, Any]]:
        """Reports for the frames ``data`` completes; raises :class:`MuxViolation`."""
        self._events = []
        self._input += data
        while len(self._input) >= HEADER_SIZE:
            kind, flags, stream_id, length = check_header(bytes(self._input[:HEADER_SIZE]))
            if len(self._input) < HEADER_SIZE + length:
                self._check_credit_early(kind, stream_id, length)
                break
            payload = bytes(self._input[HEADER_SIZE : HEADER_SIZE + length])
            del self._input[: HEADER_SIZE + length]
            self._frame(kind, flags, stream_id, payload)
        return self._events

    def _check_credit_early(self, kind: str, stream_id: int, length: int) -> None:
        """§14.3: a DATA header past the credit of a held stream, before its payload."""
        stream = self.streams.get(stream_id)
        held = kind == "DATA" and stream is not None and not stream.reset
        if held and stream is not None and length > stream.peer_credit:
            raise MuxViolation("14.3 DATA header beyond the credit")

    def _frame(self, kind: str, flags: int, stream_id: int, payload: bytes) -> None:
        if kind == "PING":
            self._check_backlog()
            self._send("PONG", 0, payload)
        elif kind == "PONG":
            self._report("pong", payload=payload)
        elif kind == "GOAWAY":
            self._on_goaway(payload)
        elif kind == "OPEN":
            self._on_open(stream_id, payload)
        else:
            stream = self._held(stream_id)
            if stream is not None:
                getattr(self, f"_on_{kind.lower()}")(stream_id, stream, flags, payload)

    def _held(self, stream_id: int) -> RefStream | None:
        """§14.4: the stream, or ``None`` (gone: drop), or a connection error (never opened)."""
        stream = self.streams.get(stream_id)
        if stream is not None:
            return stream
        ours = (stream_id % 2 == 1) == self.initiator
        if stream_id > (self.last_local if ours else self.last_remote):
            raise MuxViolation("14.4 a frame for a stream never opened")
        return None

    def _on_open(self, stream_id: int, payload: bytes) -> None:
        if stream_id != self.last_remote + 2:
            raise MuxViolation("14.4 OPEN id is not the peer's last + 2")
        if not all(0x21 <= b <= 0x7E for b in payload):
            raise MuxViolation("14.2 protocol name outside 0x21..0x7E")
        if self.goaway_received:
            raise MuxViolation("14.10 OPEN after the peer's GOAWAY")
        self._check_backlog()
        self.last_remote = stream_id
        if self.goaway_sent:
            self._send("REFUSE", stream_id, bytes([code_of(REFUSE_CODES, "GOING_AWAY")]))
        elif self.inbound >= self.max_inbound_streams:
            self._send("REFUSE", stream_id, bytes([code_of(REFUSE_CODES, "TOO_MANY_STREAMS")]))
        else:
            self.streams[stream_id] = self._new_stream(mine=False)
            self.inbound += 1
            self._report("opened", stream_id=stream_id, protocol=payload.decode("ascii"))

    def _on_accept(self, stream_id: int, stream: RefStream, _flags: int, _payload: bytes) -> None:
        if not stream.mine or stream.accepted:
            raise MuxViolation("14.5 ACCEPT for a stream that is not opening")
        stream.accepted = True
        self._report("accepted", stream_id=stream_id)

    def _on_refuse(self, stream_id: int, stream: RefStream, _flags: int, payload: bytes) -> None:
        if not stream.mine or stream.accepted:
            raise MuxViolation("14.5 REFUSE for a stream that is not opening")
        if payload[0] not in REFUSE_CODES:
            raise MuxViolation("14.8 unknown REFUSE code")
        self._forget(stream_id)
        self._report("refused", stream_id=stream_id, code=REFUSE_CODES[payload[0]])

    def _on_reset(self, stream_id: int, stream: RefStream, _flags: int, payload: bytes) -> None:
        if stream.peer_reset:
            raise MuxViolation("14.5 a second RESET")
        stream.peer_reset = True
        if stream.reset:
            return
        stream.reset = True
        self._release_assembling(stream)
        code = RESET_CODES.get(payload[0], "INTERNAL")
        self._report("aborted", stream_id=stream_id, code=code, by_peer=True)

    def _on_window(self, stream_id: int, stream: RefStream, _flags: int, payload: bytes) -> None:
        increment = int.from_bytes(payload, "big")
        if increment == 0:
            raise MuxViolation("14.7 WINDOW of 0")
        stream.send_credit += increment
        if stream.send_credit > MAX_WINDOW:
            raise MuxViolation("14.7 credit above 2^31 - 1")
        if not stream.reset and not stream.sent_fin:
            self._report("credit", stream_id=stream_id)

    def _on_data(self, stream_id: int, stream: RefStream, flags: int, payload: bytes) -> None:
        if stream.peer_fin or stream.peer_reset:
            raise MuxViolation("14.5 DATA after the peer's FIN or RESET")
        if stream.reset:
            return
        if stream.mine and not stream.accepted:
            raise MuxViolation("14.5 DATA from the acceptor before ACCEPT")
        size = len(payload)
        if size > stream.peer_credit:
            raise MuxViolation("14.7 DATA beyond the credit")
        stream.peer_credit -= size
        if flags & MESSAGE:
            if not self._fragment(stream_id, stream, flags, payload):
                return
        elif size:
            self._report("data", stream_id=stream_id, channel="bytes", data=payload, end=False)
        if flags & FIN:
            if stream.message_in:
                raise MuxViolation("14.6 FIN inside an incomplete message")
            stream.peer_fin = True
            self._report("ended", stream_id=stream_id)

    def _fragment(self, stream_id: int, stream: RefStream, flags: int, payload: bytes) -> bool:
        """§14.6, §14.7: keep a message fragment; False if the stream had to be reset."""
        size = len(payload)
        charge = size + FRAGMENT_OVERHEAD
        if stream.assembling_size + size > self.max_message_size or not self._reserve(charge):
            self._check_backlog()
            stream.reset = True
            self._release_assembling(stream)
            self._send("RESET", stream_id, bytes([code_of(RESET_CODES, "MESSAGE_TOO_LARGE")]))
            self._report("aborted", stream_id=stream_id, code="MESSAGE_TOO_LARGE", by_peer=False)
            return False
        stream.assembling_size += size
        stream.assembling_charge += charge
        if stream.complete:
            stream.assembling_held += size
        else:
            self._consume(stream, stream_id, size)
        end = bool(flags & END)
        stream.message_in = not end
        if size or end:
            self._report("data", stream_id=stream_id, channel="message", data=payload, end=end)
        if end:
            stream.complete.append([stream.assembling_held, stream.assembling_charge])
            stream.assembling_size = stream.assembling_held = stream.assembling_charge = 0
        return True

    def _reserve(self, size: int) -> bool:
        if self.budget_used + size > min(self.budget_total, self.budget_per_peer):
            return False
        self.budget_used += size
        return True

    def _on_goaway(self, payload: bytes) -> None:
        if self.goaway_received:
            raise MuxViolation("14.10 a second GOAWAY")
        self.goaway_received = True
        last = int.from_bytes(payload[:4], "big")
        code = GOAWAY_CODES.get(payload[4], "NORMAL")
        self._report("goaway", last_stream_id=last, code=code)
        for stream_id in sorted(self.streams):
            stream = self.streams[stream_id]
            if stream.mine and not stream.accepted and stream_id > last:
                self._forget(stream_id)
                self._report("refused", stream_id=stream_id, code="GOING_AWAY")
