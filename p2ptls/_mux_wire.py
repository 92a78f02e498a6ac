"""The multiplexing frames: encoding and parsing (sans-IO, no state).

Every frame is a 10-byte header and a payload, carried in the byte stream of one secure
connection (``protocol/SPEC.md``, "Multiplexing")::

    type u8 | flags u8 | stream_id u32 | length u32 | payload[length]

:func:`parse_header_untrusted` checks everything the header alone can tell (type, flags, which
stream ids a type may use, the length a type allows) before a byte of the payload is buffered, so
a peer cannot make the parser hold more than the largest frame it allows.
"""

from __future__ import annotations

import enum
import re
import struct

from ._errors import MuxError

HEADER = struct.Struct(">BBII")
HEADER_SIZE = HEADER.size  # 10

MAX_DATA_PAYLOAD = 1 << 20
"""Largest DATA payload on the wire (senders cut data into frames of ``FRAME_CHUNK`` bytes)."""
FRAME_CHUNK = 64 * 1024
"""DATA payload a sender puts in one frame: large enough for speed, small enough that streams
sharing the connection take turns often."""
MAX_PROTOCOL_NAME = 128
PING_SIZE = 8
MAX_STREAM_ID = (1 << 32) - 1
INITIAL_WINDOW = 64 * 1024
"""Credit every new stream starts with, in each direction, before any WINDOW frame."""
MAX_WINDOW = (1 << 31) - 1


class FrameType(enum.IntEnum):
    DATA = 0
    WINDOW = 1
    OPEN = 2
    ACCEPT = 3
    REFUSE = 4
    RESET = 5
    PING = 6
    PONG = 7
    GOAWAY = 8


class Flag(enum.IntFlag):
    MESSAGE = 0x1
    """The payload belongs to the message channel (else to the byte stream)."""
    END = 0x2
    """The last fragment of a message (only with MESSAGE)."""
    FIN = 0x4
    """The sender's last frame on this stream: both of its channels end."""


class RefuseCode(enum.IntEnum):
    UNKNOWN_PROTOCOL = 1
    TOO_MANY_STREAMS = 2
    GOING_AWAY = 3


class ResetCode(enum.IntEnum):
    CANCEL = 0
    MESSAGE_TOO_LARGE = 1
    INTERNAL = 2


class GoAwayCode(enum.IntEnum):
    NORMAL = 0
    IDLE = 1
    REPLACED = 2
    LIMIT = 3
    PROTOCOL_ERROR = 4


# An int, not an IntFlag: ~ of an IntFlag keeps only its members (~_DATA_FLAGS would be 0).
_DATA_FLAGS = int(Flag.MESSAGE | Flag.END | Flag.FIN)
# (fixed payload length or None, connection-level frame)
_SHAPES: dict[FrameType, tuple[int | None, bool]] = {
    FrameType.DATA: (None, False),
    FrameType.WINDOW: (4, False),
    FrameType.OPEN: (None, False),
    FrameType.ACCEPT: (0, False),
    FrameType.REFUSE: (1, False),
    FrameType.RESET: (1, False),
    FrameType.PING: (PING_SIZE, True),
    FrameType.PONG: (PING_SIZE, True),
    FrameType.GOAWAY: (5, True),
}
# The parser works on plain ints: an enum call or an IntFlag operation costs about a microsecond.
_SHAPE_OF_RAW = {int(t): (t, fixed, level) for t, (fixed, level) in _SHAPES.items()}
_MESSAGE, _END = int(Flag.MESSAGE), int(Flag.END)
_DATA, _OPEN = FrameType.DATA, FrameType.OPEN


def parse_header_untrusted(
    data: bytes | bytearray | memoryview, offset: int = 0
) -> tuple[FrameType, int, int, int]:
    """``(type, flags, stream_id, length)`` of the frame header at ``offset`` of ``data`` (at
    least ``HEADER_SIZE`` bytes from there); raises :class:`MuxError`."""
    raw_type, flags, stream_id, length = HEADER.unpack_from(data, offset)
    shape = _SHAPE_OF_RAW.get(raw_type)
    if shape is None:
        raise MuxError("unknown frame type")
    frame_type, fixed, connection_level = shape
    if connection_level != (stream_id == 0):
        raise MuxError("stream id not allowed for this frame type")
    if frame_type is _DATA:
        if flags & ~_DATA_FLAGS:
            raise MuxError("unknown DATA flags")
        if flags & _END and not flags & _MESSAGE:
            raise MuxError("END without MESSAGE")
        if length > MAX_DATA_PAYLOAD:
            raise MuxError("DATA frame too long")
    elif flags:
        raise MuxError("flags on a frame that has none")
    if frame_type is _OPEN:
        if not 1 <= length <= MAX_PROTOCOL_NAME:
            raise MuxError("bad protocol name length")
    elif fixed is not None and length != fixed:
        raise MuxError("bad frame length")
    return frame_type, flags, stream_id, length


_VISIBLE_ASCII = re.compile(rb"[\x21-\x7e]*")


def check_protocol_name(name: str) -> bytes:
    """The wire form of a protocol name: 1 to 128 visible ASCII characters."""
    encoded = name.encode("ascii") if name.isascii() else b""  # refused below, never as "?"
    if not 1 <= len(encoded) <= MAX_PROTOCOL_NAME or not _VISIBLE_ASCII.fullmatch(encoded):
        raise ValueError("a protocol name is 1 to 128 visible ASCII characters, e.g. 'chat/1'")
    return encoded


def parse_protocol_name_untrusted(payload: bytes) -> str:
    if not _VISIBLE_ASCII.fullmatch(payload):
        raise MuxError("protocol name is not visible ASCII")
    return payload.decode("ascii")


def frame(frame_type: FrameType, stream_id: int, payload: bytes = b"", flags: int = 0) -> bytes:
    """One whole frame."""
    return HEADER.pack(frame_type, flags, stream_id, len(payload)) + payload


def refuse_code_untrusted(raw: int) -> RefuseCode:
    """A REFUSE frame's code; one we do not know is a protocol error."""
    try:
        return RefuseCode(raw)
    except ValueError:
        raise MuxError("unknown REFUSE code") from None


def reset_code_untrusted(raw: int) -> ResetCode:
    """A RESET frame's code; one we do not know reads as INTERNAL."""
    try:
        return ResetCode(raw)
    except ValueError:
        return ResetCode.INTERNAL  # a reason we do not know still aborts the stream


def go_away_code_untrusted(raw: int) -> GoAwayCode:
    """A GOAWAY frame's code; one we do not know reads as NORMAL."""
    try:
        return GoAwayCode(raw)
    except ValueError:
        return GoAwayCode.NORMAL
