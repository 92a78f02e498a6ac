"""Known-answer tests: p2ptls's multiplexing against ``protocol/vectors/mux.json``.

The vectors come from the reference implementation of ``protocol/SPEC.md`` §14
(``protocol/mux_reference.py``, which uses nothing from p2ptls). These tests drive the real
``p2ptls._mux_wire`` and ``p2ptls._mux.Multiplexer`` through every vector: frame encodings,
headers refused before their payload, and scripted exchanges with a fresh initiator or responder.

Where p2ptls and the specification disagree and the specification is right, the vector's test is
marked ``xfail(strict=True)`` with the fix in its reason (``DISAGREEMENTS``, empty today): it
starts to fail the day the code is fixed, so the mark cannot outlive the bug. The last tests
check two rules of §14.10 and §14.5 that only the trio layer (``p2ptls.connections``) can show,
over an in-memory secure connection whose other end speaks raw frames.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from p2ptls import _mux
from p2ptls import _mux_wire as mw
from p2ptls._errors import MuxError, StreamRefused
from p2ptls._fragments import ReassemblyBudget
from p2ptls._mux_wire import Flag, FrameType, GoAwayCode, RefuseCode, ResetCode
from p2ptls.config import ConnectionConfig
from p2ptls.logical import LogicalStream, StreamReset
from p2ptls.manager import ConnectionManager
from p2ptls.stream import SecureStream
from p2ptls.testing import connected_contexts
from protocol import generate_mux_vectors, mux_script
from protocol import mux_reference as ref
from protocol.mux_script import compact

VECTORS = Path(__file__).resolve().parent.parent / "protocol" / "vectors" / "mux.json"
ALL = json.loads(VECTORS.read_text())

DISAGREEMENTS: dict[str, str] = {}
HEADER_DISAGREEMENTS: dict[str, str] = {}


def _payload(value: Any) -> bytes:
    if isinstance(value, str):
        return bytes.fromhex(value)
    assert "fill" in value, "a digest cannot be turned back into bytes"
    return bytes.fromhex(str(value["fill"])) * int(value["length"])


def _wire(frames: list[dict[str, Any]]) -> bytes:
    """The frames of a vector, encoded by p2ptls."""
    return b"".join(
        mw.frame(FrameType[f["type"]], f["stream_id"], _payload(f["payload"]), f["flags_value"])
        for f in frames
    )


def _report(event: _mux.MuxEvent) -> dict[str, Any]:
    """A p2ptls event in the vectors' words (SPEC 14.5)."""
    match event:
        case _mux.StreamOpened(stream_id, protocol):
            return {"event": "opened", "stream_id": stream_id, "protocol": protocol}
        case _mux.StreamAccepted(stream_id):
            return {"event": "accepted", "stream_id": stream_id}
        case _mux.OpenRefused(stream_id, code):
            return {"event": "refused", "stream_id": stream_id, "code": code.name}
        case _mux.DataReceived(stream_id, data, message, end):
            channel = "message" if message else "bytes"
            return {
                "event": "data",
                "stream_id": stream_id,
                "channel": channel,
                "data": compact(data),
                "end": end,
            }
        case _mux.StreamEnded(stream_id):
            return {"event": "ended", "stream_id": stream_id}
        case _mux.CreditAvailable(stream_id):
            return {"event": "credit", "stream_id": stream_id}
        case _mux.StreamAborted(stream_id, code, by_peer):
            return {
                "event": "aborted",
                "stream_id": stream_id,
                "code": code.name,
                "by_peer": by_peer,
            }
        case _mux.PongReceived(payload):
            return {"event": "pong", "payload": compact(payload)}
        case _mux.GoAwayReceived(last_stream_id, code):
            return {"event": "goaway", "last_stream_id": last_stream_id, "code": code.name}
    raise AssertionError(f"unknown event {event!r}")


def _side(exchange: dict[str, Any]) -> _mux.Multiplexer:
    settings = exchange["settings"]
    total, per_peer = settings.get("budget", (256 << 20, 64 << 20))
    return _mux.Multiplexer(
        initiator=exchange["side"] == "initiator",
        window=settings.get("window", ref.DEFAULT_WINDOW),
        max_window=settings.get("max_window"),
        connection_window=settings.get("connection_window"),
        max_inbound_streams=settings.get("max_inbound_streams", 64),
        max_message_size=settings.get("max_message_size", 16 * 1024 * 1024),
        budget=ReassemblyBudget(total, per_peer),
        budget_key="peer",
        max_output_backlog=settings.get("max_output_backlog", ref.DEFAULT_MAX_OUTPUT_BACKLOG),
    )


def _act(mux: _mux.Multiplexer, action: str, args: dict[str, Any]) -> Any:
    stream_id = args.get("stream_id", 0)
    if action == "open":
        return mux.open_stream(args["protocol"])
    if action == "accept":
        return mux.accept_stream(stream_id)
    if action == "refuse":
        return mux.refuse_stream(stream_id, RefuseCode[args["code"]])
    if action == "send":
        flags = {key: args.get(key, False) for key in ("message", "end", "fin")}
        return mux.send_data(stream_id, _payload(args["data"]), **flags)
    if action == "finish":
        return mux.send_fin(stream_id)
    if action == "consume":
        return mux.bytes_consumed(stream_id, args["size"])
    if action == "take_message":
        return mux.message_taken(stream_id)
    if action == "reset":
        return mux.reset_stream(stream_id, ResetCode[args["code"]])
    if action == "close":
        return mux.close_stream(stream_id)
    if action == "ping":
        return mux.send_ping(_payload(args["payload"]))
    if action == "go_away":
        return mux.go_away(GoAwayCode[args["code"]])
    raise AssertionError(f"unknown action {action}")


def _run(exchange: dict[str, Any]) -> None:
    mux = _side(exchange)
    for number, step in enumerate(exchange["steps"]):
        where = f"{exchange['name']}, step {number}"
        if "action" in step:
            result = _act(mux, step["action"], step["args"])
            if "result" in step:
                assert result == step["result"], where
        else:
            if "receive_raw" in step:
                wire = bytes.fromhex(step["receive_raw"])
            else:
                wire = _wire(step["receive"])
            assert compact(wire, wire=True) == step["bytes"], f"{where}: p2ptls encodes otherwise"
            if "error" in step:
                with pytest.raises(MuxError):
                    mux.receive_data_untrusted(wire)
                return
            events = [_report(event) for event in mux.receive_data_untrusted(wire)]
            assert events == step["events"], where
        if exchange["peer_reads"]:
            sent = mux.data_to_send()
            assert mux_script.frames_of(sent) == step["sent_frames"], where
            assert compact(sent, wire=True) == step["sends"], where
        held = {
            str(stream_id): mux.send_credit(stream_id) for stream_id in sorted(mux.stream_ids())
        }
        assert held == step["credit"], f"{where}: streams held and their credit"
        assert mux.can_open() == step["can_open"], where


# -- the vectors themselves ------------------------------------------------------------------------


def test_vectors_are_current() -> None:
    assert generate_mux_vectors.generate() == VECTORS.read_text()


def test_constants() -> None:
    constants = ALL["constants"]
    assert constants["header_size"] == mw.HEADER_SIZE
    assert constants["max_data_payload"] == mw.MAX_DATA_PAYLOAD
    assert constants["frame_chunk"] == mw.FRAME_CHUNK
    assert constants["max_protocol_name"] == mw.MAX_PROTOCOL_NAME
    assert constants["ping_size"] == mw.PING_SIZE
    assert constants["max_stream_id"] == mw.MAX_STREAM_ID
    assert constants["initial_window"] == mw.INITIAL_WINDOW
    assert constants["max_window"] == mw.MAX_WINDOW
    assert constants["default_window"] == _mux.DEFAULT_WINDOW == ConnectionConfig().stream_window
    assert constants["max_output_backlog"] == _mux.DEFAULT_MAX_OUTPUT_BACKLOG
    assert constants["types"] == {t.name: t.value for t in FrameType}
    assert constants["flags"] == {f.name: f.value for f in (Flag.MESSAGE, Flag.END, Flag.FIN)}
    assert constants["refuse_codes"] == {c.name: c.value for c in RefuseCode}
    assert constants["reset_codes"] == {c.name: c.value for c in ResetCode}
    assert constants["goaway_codes"] == {c.name: c.value for c in GoAwayCode}


@pytest.mark.parametrize("vector", ALL["frames"], ids=lambda v: v["bytes"][:24])
def test_frame_encoding(vector: dict[str, Any]) -> None:
    wire = bytes.fromhex(vector["bytes"])
    payload = _payload(vector["payload"])
    kind = FrameType[vector["type"]]
    assert mw.frame(kind, vector["stream_id"], payload, vector["flags_value"]) == wire
    header = mw.parse_header_untrusted(wire[: mw.HEADER_SIZE])
    assert header == (kind, vector["flags_value"], vector["stream_id"], len(payload))
    if kind is FrameType.OPEN:
        assert mw.parse_protocol_name_untrusted(payload) == vector["protocol"]
        assert mw.check_protocol_name(vector["protocol"]) == payload
    codes = {
        FrameType.REFUSE: RefuseCode,
        FrameType.RESET: ResetCode,
        FrameType.GOAWAY: GoAwayCode,
    }
    if kind in codes:
        assert codes[kind](payload[-1]).name == vector["code"]


def _params(
    vectors: list[dict[str, Any]], name: str, key: str, disagreements: dict[str, str]
) -> list[Any]:
    """One test per vector, named ``vector[name]``; where ``vector[key]`` names a known
    disagreement, a strict xfail."""
    params = []
    for vector in vectors:
        reason = disagreements.get(vector[key])
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(vector, id=vector[name], marks=marks))
    return params


@pytest.mark.parametrize(
    "vector", _params(ALL["rejected_headers"], "header", "rule", HEADER_DISAGREEMENTS)
)
def test_header_rejected_before_its_payload(vector: dict[str, Any]) -> None:
    header = bytes.fromhex(vector["header"])
    with pytest.raises(MuxError):
        mw.parse_header_untrusted(header)
    for initiator in (True, False):
        with pytest.raises(MuxError):  # the header alone: no byte of its payload has arrived
            _mux.Multiplexer(initiator=initiator).receive_data_untrusted(header)


@pytest.mark.parametrize("vector", ALL["accepted_headers"], ids=lambda v: v["header"])
def test_header_on_the_edge_accepted(vector: dict[str, Any]) -> None:
    kind, flags, stream_id, length = mw.parse_header_untrusted(bytes.fromhex(vector["header"]))
    assert (kind.name, flags, stream_id, length) == (
        vector["type"],
        vector["flags_value"],
        vector["stream_id"],
        vector["length"],
    )


@pytest.mark.parametrize("exchange", _params(ALL["exchanges"], "name", "name", DISAGREEMENTS))
def test_exchange(exchange: dict[str, Any]) -> None:
    _run(exchange)


def test_every_disagreement_names_a_vector() -> None:
    assert set(DISAGREEMENTS) <= {exchange["name"] for exchange in ALL["exchanges"]}
    assert set(HEADER_DISAGREEMENTS) <= {vector["rule"] for vector in ALL["rejected_headers"]}


class _Exporter:
    """Stands for a connection: records what a logical stream asks its exporter for."""

    def export_keying_material(self, label: str, context: bytes, length: int) -> bytes:
        return label.encode() + b"|" + context + b"|" + bytes([length])


def test_stream_keying_material_is_bound_to_the_stream() -> None:
    vector = ALL["keying_material"]
    stream = LogicalStream(_Exporter(), vector["stream_id"], "x/1", server_side=False)  # type: ignore[arg-type]
    asked = stream.export_keying_material(vector["label"], bytes.fromhex(vector["context"]), 32)
    expected = bytes.fromhex(vector["exporter_context"])
    assert asked == vector["label"].encode() + b"|" + expected + b"|" + bytes([32])


# -- rules only the trio layer shows (a raw peer on an in-memory connection) -----------------------


class _RawPeer:
    """The initiator of a shared connection, speaking frames by hand (the reference's codec)."""

    def __init__(self, secure: SecureStream) -> None:
        self.secure = secure
        self._buffer = bytearray()

    async def send(self, *frames: bytes) -> None:
        await self.secure.send_all(b"".join(frames))

    async def next_frame(self, *skip: str) -> tuple[str, int, int, bytes] | None:
        """The next frame not of a type in ``skip``; ``None`` at the end of the connection."""
        while True:
            while len(self._buffer) >= ref.HEADER_SIZE:
                kind, flags, stream_id, length = ref.check_header(bytes(self._buffer[:10]))
                if len(self._buffer) < ref.HEADER_SIZE + length:
                    break
                payload = bytes(self._buffer[ref.HEADER_SIZE : ref.HEADER_SIZE + length])
                del self._buffer[: ref.HEADER_SIZE + length]
                if kind not in skip:
                    return kind, flags, stream_id, payload
            data = await self.secure.receive_some()
            if not data:
                return None
            self._buffer += data


async def _hosted(
    nursery: trio.Nursery, identities: Any
) -> tuple[_RawPeer, ConnectionManager, SecureStream]:
    """A host's connection manager holding a connection whose other end is a :class:`_RawPeer`."""
    raw_context, host_context = connected_contexts(identities=(identities[0], identities[1]))
    raw_end, host_end = trio.testing.memory_stream_pair()
    raw = SecureStream(raw_end, raw_context, remote=host_context.identity.record, messages=False)
    hosted = SecureStream(host_end, host_context, server_side=True, messages=False)
    async with trio.open_nursery() as handshakes:
        handshakes.start_soon(raw.do_handshake)
        handshakes.start_soon(hosted.do_handshake)
    manager = ConnectionManager(host_context, ConnectionConfig(), nursery)
    assert manager.adopt(hosted) is not None
    return _RawPeer(raw), manager, raw


async def test_goaway_received_lets_open_streams_finish(
    identities: Any, autojump_clock: Any
) -> None:
    # SPEC 14.10: streams at or below last_stream_id go on after the peer's GOAWAY. Counting
    # the grace from time 0 instead of the GOAWAY once cut them at once on trio's real clock,
    # which starts 10,000 s or more from 0; this one is moved as far.
    autojump_clock.jump(10_000)
    async with trio.open_nursery() as nursery:
        peer, manager, _ = await _hosted(nursery, identities)

        async def echo(stream: LogicalStream) -> None:
            async for message in stream.messages():
                await stream.send_message(message)

        manager.serve_protocol("echo/1", echo)
        await peer.send(mux_script.open_(1, "echo/1"))
        assert await peer.next_frame("WINDOW") == ("ACCEPT", 0, 1, b"")
        await peer.send(mux_script.goaway(0, ref.code_of(ref.GOAWAY_CODES, "REPLACED")))
        await peer.send(mux_script.ping(b"12345678"))
        assert await peer.next_frame("WINDOW") == ("PONG", 0, 0, b"12345678")
        await peer.send(mux_script.data(1, b"still open?", ref.MESSAGE | ref.END))
        echoed = await peer.next_frame("WINDOW", "PING", "GOAWAY")
        assert echoed == ("DATA", ref.MESSAGE | ref.END, 1, b"still open?")
        nursery.cancel_scope.cancel()


async def test_open_answered_by_reset_fails_with_the_reset(
    identities: Any, autojump_clock: Any
) -> None:
    async with trio.open_nursery() as nursery:
        peer, manager, raw = await _hosted(nursery, identities)

        async def answer_with_reset() -> None:
            opened = await peer.next_frame("WINDOW")
            assert opened is not None and opened[0] == "OPEN"
            await peer.send(mux_script.reset(opened[2], ref.code_of(ref.RESET_CODES, "CANCEL")))

        nursery.start_soon(answer_with_reset)
        with pytest.raises((StreamReset, StreamRefused)):
            await manager.open(raw.context.identity.record, "x/1")
        nursery.cancel_scope.cancel()
