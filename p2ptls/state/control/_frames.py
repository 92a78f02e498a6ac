"""What both ends of the control socket share: frames, typed errors, values (sans-IO).

A frame is a 4-byte big-endian length and that many bytes of a UTF-8 JSON object.
:class:`FrameBuffer` takes bytes as they arrive and gives whole frames back, refusing one whose
announced length is over the limit from its header alone (before its body is held).
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

from ..errors import StateError

FRAME = struct.Struct(">I")
MAX_RESPONSE = 64 * 1024 * 1024
"""The largest answer (frame body) a node sends and a client accepts."""

ERROR_TYPES = (
    "bad_request",
    "not_found",
    "ambiguous",
    "too_large",
    "timeout",
    "not_connected",
    "busy",
    "overflowed",
    "internal",
)
"""The typed errors a response may carry."""


class ControlError(StateError):
    """A control request failed; ``kind`` is one of :data:`ERROR_TYPES` (or ``"unavailable"``
    when the socket cannot be reached, ``"protocol"`` when the answer is malformed)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    def to_dict(self) -> dict[str, str]:
        return {"type": self.kind, "message": str(self)}


def max_request_size(max_value_size: int) -> int:
    """The largest request a node accepts: a value as base64 or escaped JSON text, plus room."""
    return 4 * max_value_size + 64 * 1024


def encode_frame(obj: Any) -> bytes:
    """One frame holding ``obj`` as compact JSON."""
    data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return FRAME.pack(len(data)) + data


def decode_frame(data: bytes) -> dict[str, Any]:
    """A frame body's JSON object; :class:`ControlError` ``bad_request`` for anything else."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ControlError("bad_request", "a frame is a UTF-8 JSON object") from None
    if not isinstance(obj, dict):
        raise ControlError("bad_request", "a frame is a UTF-8 JSON object")
    return obj


def value_fields(value: bytes | None) -> dict[str, Any]:
    """``value`` (text or ``None``) and ``value_b64`` of some bytes."""
    if value is None:
        return {"value": None, "value_b64": None}
    try:
        text: str | None = value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {"value": text, "value_b64": base64.b64encode(value).decode("ascii")}


class FrameBuffer:
    """Bytes in (:meth:`feed`), whole frame bodies out (:meth:`next_frame`)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def pending(self) -> bool:
        """Whether part of a frame is held (an end of the stream now cuts a frame)."""
        return bool(self._buffer)

    @property
    def missing(self) -> int:
        """Bytes still needed to complete the frame begun (at least its header's)."""
        if len(self._buffer) < FRAME.size:
            return FRAME.size - len(self._buffer)
        size: int = FRAME.unpack_from(self._buffer)[0]
        return max(0, FRAME.size + size - len(self._buffer))

    def next_frame(self, limit: int) -> bytes | None:
        """The next whole frame's body, or ``None`` until more bytes arrive. A frame announced
        larger than ``limit`` raises :class:`ControlError` ``too_large``."""
        if len(self._buffer) < FRAME.size:
            return None
        (size,) = FRAME.unpack_from(self._buffer)
        if size > limit:
            raise ControlError("too_large", f"a frame of {size} bytes exceeds {limit}")
        if len(self._buffer) < FRAME.size + size:
            return None
        data = bytes(self._buffer[FRAME.size : FRAME.size + size])
        del self._buffer[: FRAME.size + size]
        return data
