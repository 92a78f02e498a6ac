"""Scripted exchanges with the multiplexing reference, and the frames they feed it: the
building blocks of ``protocol/generate_mux_vectors.py``.

A :class:`Script` drives one :class:`~protocol.mux_reference.RefSide` through actions and
received frames and records each step (the frames out, the events reported) for a vector.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from protocol import mux_reference as ref
from protocol.mux_reference import MuxViolation, RefSide

WIRE_INLINE = 2048


def compact(data: bytes, *, wire: bool = False) -> Any:
    """A payload as the vectors write it (see the module docstring)."""
    if len(data) <= (WIRE_INLINE if wire else 64):
        return data.hex()
    if not wire and data == data[:1] * len(data):
        return {"fill": data[:1].hex(), "length": len(data)}
    return {"sha256": hashlib.sha256(data).hexdigest(), "length": len(data)}


def fill(length: int, byte: bytes = b"a") -> bytes:
    return byte * length


def frames_of(data: bytes) -> list[dict[str, Any]]:
    out = []
    for kind, flags, stream_id, payload in ref.split_frames(data):
        fields = ref.describe(kind, flags, stream_id, payload)
        fields["flags_value"] = flags
        fields["payload"] = compact(payload)
        out.append(fields)
    return out


def events_of(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {key: compact(value) if isinstance(value, bytes) else value for key, value in r.items()}
        for r in reports
    ]


# -- frames from the peer --------------------------------------------------------------------------


def data(stream_id: int, payload: bytes = b"", flags: int = 0) -> bytes:
    return ref.encode("DATA", stream_id, payload, flags)


def window(stream_id: int, increment: int) -> bytes:
    return ref.encode("WINDOW", stream_id, increment.to_bytes(4, "big"))


def open_(stream_id: int, name: bytes | str) -> bytes:
    return ref.encode("OPEN", stream_id, name.encode() if isinstance(name, str) else name)


def accept(stream_id: int) -> bytes:
    return ref.encode("ACCEPT", stream_id)


def refuse(stream_id: int, code: int) -> bytes:
    return ref.encode("REFUSE", stream_id, bytes([code]))


def reset(stream_id: int, code: int) -> bytes:
    return ref.encode("RESET", stream_id, bytes([code]))


def ping(payload: bytes, kind: str = "PING") -> bytes:
    return ref.encode(kind, 0, payload)


def goaway(last: int, code: int) -> bytes:
    return ref.encode("GOAWAY", 0, last.to_bytes(4, "big") + bytes([code]))


# -- scripted exchanges ----------------------------------------------------------------------------


class Script:
    """One exchange: a fresh side, the steps fed to it, and what it must do at each."""

    def __init__(self, name: str, side: str, description: str, **settings: Any) -> None:
        self.peer_reads = settings.pop("peer_reads", True)
        self.side = RefSide(initiator=side == "initiator", **settings)
        if "budget" in settings:
            settings["budget"] = list(settings["budget"])
        self.record: dict[str, Any] = {
            "name": name,
            "side": side,
            "description": description,
            "settings": settings,
            "peer_reads": self.peer_reads,
            "steps": [],
        }
        self.failed = False

    def receive(self, *frames: bytes) -> Script:
        wire = b"".join(frames)
        step: dict[str, Any] = {"receive": frames_of(wire), "bytes": compact(wire, wire=True)}
        return self._feed(step, wire)

    def _feed(self, step: dict[str, Any], wire: bytes) -> Script:
        assert not self.failed
        try:
            step["events"] = events_of(self.side.receive(wire))
        except MuxViolation as error:
            step["error"] = error.args[0]
            self.failed = True
            self.record["steps"].append(step)
            return self
        return self._finish(step)

    def receive_raw(self, wire: bytes) -> Script:
        """Bytes that need not end on a frame boundary."""
        step: dict[str, Any] = {"receive_raw": wire.hex(), "bytes": compact(wire, wire=True)}
        return self._feed(step, wire)

    def do(self, action: str, **args: Any) -> Script:
        assert not self.failed
        method: Callable[..., Any] = getattr(self.side, ACTIONS[action])
        result = method(**args)
        shown = {key: compact(v) if isinstance(v, bytes) else v for key, v in args.items()}
        step: dict[str, Any] = {"action": action, "args": shown}
        if result is not None:
            step["result"] = result
        return self._finish(step)

    def _finish(self, step: dict[str, Any]) -> Script:
        if self.peer_reads:
            out = self.side.take_output()
            step["sends"] = compact(out, wire=True)
            step["sent_frames"] = frames_of(out)
        step["credit"] = {str(sid): self.side.credit(sid) for sid in sorted(self.side.streams)}
        step["can_open"] = not (self.side.goaway_sent or self.side.goaway_received)
        self.record["steps"].append(step)
        return self


ACTIONS = {
    "open": "open",
    "accept": "accept",
    "refuse": "refuse",
    "send": "send",
    "finish": "finish",
    "consume": "consume",
    "take_message": "take_message",
    "reset": "reset_stream",
    "close": "close",
    "ping": "ping",
    "go_away": "go_away",
}

SMALL = {"window": ref.INITIAL_WINDOW}  # no grant at OPEN/ACCEPT: the credit arithmetic is plain


def responder_with_stream(name: str, description: str, **settings: Any) -> Script:
    """A responder whose peer opened stream 1 (``chat/1``) and which accepted it."""
    return (
        Script(name, "responder", description, **settings)
        .receive(open_(1, "chat/1"))
        .do("accept", stream_id=1)
    )


def initiator_with_stream(name: str, description: str, **settings: Any) -> Script:
    """An initiator that opened stream 1 and was accepted (the peer granted nothing more)."""
    return (
        Script(name, "initiator", description, **settings)
        .do("open", protocol="chat/1")
        .receive(accept(1))
    )
