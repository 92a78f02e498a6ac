"""Fuzzing every parser: random and mutated input never raises anything but the protocol's error.

Whatever bytes arrive, the only exception that may leave a parser or the sans-IO connection is the
protocol's own :class:`~p2ptls.ProtocolError` (or a subclass); after one, the connection is FAILED,
stays failed and holds nothing (feeding a FAILED connection is the caller's
:class:`~p2ptls.LocalProtocolError`). Inputs mix plain random bytes, mutations of genuine flights,
records whose header lies about the body, and *authentic* records (sealed under the session key)
of every content type with random contents, so that the code behind the AEAD is reached too. The
connection is fuzzed for both roles in every state, fed whole and byte by byte.

The default runs are small and reproducible (``derandomize``); the ``slow`` variants
(``pytest -m slow``) run many more random examples.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2ptls import LocalProtocolError, MuxError, ProtocolError, ReassemblyBudget, ReplayGuard
from p2ptls import _mux_wire as mw
from p2ptls import _wire as wire
from p2ptls._connection import Connection, HandshakeState
from p2ptls._mux import Multiplexer
from p2ptls._mux_wire import FrameType
from p2ptls._records import RecordSealer
from p2ptls.trust import Admission
from protocol.record_reference import ReferenceReplayCache
from tests.hostile_support import (
    Flights,
    decrypt,
    established_pair,
    forged_sealer,
    handshake,
    hello_of,
    key_operation,
    make_initiator,
    make_responder,
    parties,
    supplied,
)

FAST = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW = settings(
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TYPES = sorted(wire.PROTECTED_TYPES | {wire.HANDSHAKE})


@functools.cache
def genuine() -> Flights:
    return handshake(make_initiator(), make_responder())


def samples() -> dict[str, bytes]:
    flights = genuine()
    return {
        "header": flights.hello[: wire.HEADER_SIZE],
        "hello": flights.hello[wire.HEADER_SIZE :],
        "reply": flights.reply[wire.HEADER_SIZE :],
        "finish": flights.finish[wire.HEADER_SIZE :],
        "message start": wire.MESSAGE_LENGTH.pack(11) + b"eleven byte",
    }


PARSERS: dict[str, Callable[[bytes], object]] = {
    "header": wire.parse_header_untrusted,
    "hello": wire.parse_hello_untrusted,
    "reply": wire.parse_reply_untrusted,
    "finish": wire.parse_finish_untrusted,
    "message start": wire.parse_message_start_untrusted,
}


def mutate(sample: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply ``(kind, position, value)`` edits: overwrite, flip, delete, insert, truncate, or
    overwrite a 16-bit field (where lengths live)."""
    data = bytearray(sample)
    for kind, position, value in edits:
        at = position % (len(data) + 1)
        if kind == 0 and at < len(data):
            data[at] = value
        elif kind == 1 and at < len(data):
            data[at] ^= 1 << (value % 8)
        elif kind == 2 and at < len(data):
            del data[at]
        elif kind == 3:
            data.insert(at, value)
        elif kind == 4:
            del data[at:]
        elif kind == 5 and at + 2 <= len(data):
            data[at : at + 2] = (value * 257).to_bytes(2, "big")
    return bytes(data)


EDITS = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 4096), st.integers(0, 255)), max_size=6
)


def inputs_like(sample: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=2 * len(sample) + 8),
        EDITS.map(lambda edits: mutate(sample, edits)),
    )


# -- the parsers ---------------------------------------------------------------------------------


def check_parser(name: str, data: st.DataObject) -> None:
    blob = data.draw(inputs_like(samples()[name]), label="input")
    for end in range(len(blob) + 1):  # the whole input and every prefix of it
        with contextlib.suppress(ProtocolError):
            PARSERS[name](blob[:end])


@pytest.mark.parametrize("name", list(PARSERS))
@FAST
@given(data=st.data())
def test_parsers_raise_only_protocol_errors(name: str, data: st.DataObject) -> None:
    check_parser(name, data)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PARSERS))
@SLOW
@given(data=st.data())
def test_parsers_raise_only_protocol_errors_long_run(name: str, data: st.DataObject) -> None:
    check_parser(name, data)


def test_parsers_accept_the_genuine_samples() -> None:
    """Control: the samples the mutations start from are valid."""
    for name, sample in samples().items():
        PARSERS[name](sample)


# -- the connection, both roles, every state -------------------------------------------------------

STATES = [
    "initiator handshaking",
    "initiator key operation",
    "initiator established",
    "responder handshaking",
    "responder key operation",
    "responder awaiting finish",
    "responder established",
    "failed",
]


def connection_in(
    state: str,
) -> tuple[Connection, RecordSealer | None, Callable[[], object] | None]:
    """A connection in ``state``; a sealer whose records it would authenticate (if any); and how
    to finish its pending private-key operation (if any)."""
    cast = parties()
    flights = genuine()
    if state.startswith("initiator"):
        if state == "initiator established":
            initiator, responder = established_pair()
            return initiator, forged_sealer(responder), None
        initiator = make_initiator()
        hello_of(initiator)
        if state == "initiator handshaking":
            return initiator, None, None
        operation = key_operation(initiator.receive_data_untrusted(flights.reply))
        return (
            initiator,
            None,
            lambda: supplied(initiator, decrypt(cast.initiator, operation)),
        )
    if state == "responder established":
        initiator, responder = established_pair()
        return responder, forged_sealer(initiator), None
    responder = make_responder()
    if state == "failed":
        with pytest.raises(ProtocolError):
            responder.receive_data_untrusted(b"\xff" * 8)
        return responder, None, None
    if state == "responder handshaking":
        return responder, None, None
    operation = key_operation(responder.receive_data_untrusted(flights.hello))

    def resume() -> object:
        return supplied(responder, decrypt(cast.responder, operation))

    if state == "responder key operation":
        return responder, None, resume
    resume()
    return responder, None, None


# One record (or a piece of garbage) to send; turned into bytes once the connection exists.
RECORD_SPECS = st.one_of(
    st.tuples(st.just("raw"), st.binary(max_size=200)),
    st.tuples(
        st.just("framed"),
        st.sampled_from([*TYPES, 0, 0x42, 0xFF]),
        st.sampled_from([wire.PROTOCOL_VERSION, wire.PROTOCOL_VERSION, 0, 2]),
        st.binary(max_size=300),
    ),
    st.tuples(
        st.just("lying length"),
        st.sampled_from(TYPES),
        st.integers(0, 0xFFFF),
        st.binary(max_size=100),
    ),
    st.tuples(
        st.just("authentic"),
        st.sampled_from([*TYPES, *TYPES, 0x42]),
        st.binary(max_size=600),
    ),
    st.tuples(
        st.just("message start"),
        st.one_of(st.integers(0, 2000), st.integers(0, 2**32 - 1)),
        st.binary(max_size=600),
    ),
    st.tuples(st.just("flight"), st.sampled_from(["hello", "reply", "finish"])),
    st.tuples(st.just("mutated flight"), st.sampled_from(["hello", "reply", "finish"]), EDITS),
)

_UNRELATED = RecordSealer(bytes(32))


def materialize(spec: tuple[Any, ...], sealer: RecordSealer | None) -> bytes:
    kind, *fields = spec
    seal = (sealer or _UNRELATED).seal
    if kind == "raw":
        return bytes(fields[0])
    if kind == "framed":
        content_type, version, body = fields
        return wire.HEADER.pack(content_type, version, len(body)) + bytes(body)
    if kind == "lying length":
        content_type, length, body = fields
        return wire.HEADER.pack(content_type, wire.PROTOCOL_VERSION, length) + bytes(body)
    if kind == "authentic":
        content_type, plaintext = fields
        return seal(content_type, plaintext)
    if kind == "message start":
        total, fragment = fields
        return seal(wire.MESSAGE_START, wire.MESSAGE_LENGTH.pack(total) + fragment)
    flight: bytes = getattr(genuine(), fields[0])
    if kind == "mutated flight":
        return mutate(flight, fields[1])
    return flight


def check_connection(state: str, whole: bool, specs: list[tuple[Any, ...]]) -> None:
    conn, sealer, resume = connection_in(state)
    stream = b"".join(materialize(spec, sealer) for spec in specs)
    pieces = [stream] if whole else [stream[index : index + 1] for index in range(len(stream))]
    try:
        for index, piece in enumerate(pieces):
            conn.receive_data_untrusted(piece, now=index / 1000)
        if resume is not None and conn.state is HandshakeState.KEY_OPERATION:
            resume()  # also processes what was buffered meanwhile
        conn.data_to_send()
        conn.receive_eof()
    except LocalProtocolError:
        assert state == "failed"  # fed to a connection that had already failed: the caller's bug
    except ProtocolError:
        assert conn.state is HandshakeState.FAILED
        assert conn.data_to_send() == b""
        with pytest.raises(LocalProtocolError):  # using a failed connection is the caller's bug
            conn.receive_data_untrusted(b"more")
    conn.abandon()
    assert conn._reassembler._budget.in_use == 0


@pytest.mark.parametrize("whole", [True, False], ids=["whole", "byte by byte"])
@pytest.mark.parametrize("state", STATES)
@FAST
@given(specs=st.lists(RECORD_SPECS, max_size=6))
def test_connection_raises_only_protocol_errors(
    state: str, whole: bool, specs: list[tuple[Any, ...]]
) -> None:
    check_connection(state, whole, specs)


@pytest.mark.slow
@pytest.mark.parametrize("whole", [True, False], ids=["whole", "byte by byte"])
@pytest.mark.parametrize("state", STATES)
@SLOW
@given(specs=st.lists(RECORD_SPECS, max_size=12))
def test_connection_raises_only_protocol_errors_long_run(
    state: str, whole: bool, specs: list[tuple[Any, ...]]
) -> None:
    check_connection(state, whole, specs)


@pytest.mark.parametrize("state", [s for s in STATES if s != "failed"])
def test_connection_states_are_what_they_claim(state: str) -> None:
    """Control: the fuzzed connections are really in the states named, and the authentic
    records of the established ones do authenticate."""
    conn, sealer, resume = connection_in(state)
    expected = {
        "initiator handshaking": HandshakeState.AWAIT_REPLY,
        "initiator key operation": HandshakeState.KEY_OPERATION,
        "initiator established": HandshakeState.ESTABLISHED,
        "responder handshaking": HandshakeState.AWAIT_HELLO,
        "responder key operation": HandshakeState.KEY_OPERATION,
        "responder awaiting finish": HandshakeState.AWAIT_FINISH,
        "responder established": HandshakeState.ESTABLISHED,
    }[state]
    assert conn.state is expected
    assert (resume is not None) == (expected is HandshakeState.KEY_OPERATION)
    if sealer is not None:
        events = conn.receive_data_untrusted(sealer.seal(wire.DATA, b"authentic"))
        assert [type(e).__name__ for e in events] == ["DataReceived"]


# -- the replay guard against the specification's reference -----------------------------------


SOURCES = ("192.0.2.1", "192.0.2.2", "2001:db8::/64")


@FAST
@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 7),
            st.integers(-14, 4),
            st.integers(0, 3),
            st.booleans(),
            st.sampled_from(SOURCES),
        ),
        max_size=80,
    )
)
def test_replay_guard_matches_the_reference_and_remembers_decryptions(
    steps: list[tuple[int, int, int, bool, str]],
) -> None:
    """Random Hellos (binder, timestamp relative to the clock, clock advance, whether the first
    decryption finished, source) against the reference rule of SPEC.md section 3.5: the same
    outcome and the same floors every time, memory within its bounds (in total, per source, one
    floor at most per source holding binders), and a copy answered only with its own Hello's
    decryption."""
    reference = ReferenceReplayCache(window_ns=10, capacity=4, per_source=2, future_ns=2)
    guard = ReplayGuard(
        window_s=10e-9, max_future_skew_s=2e-9, max_recent_hellos=4, max_recent_per_source=2
    )
    assert (guard.window_ns, guard.max_future_skew_ns) == (10, 2)
    now = 100
    for binder_index, offset, advance, decrypted, source in steps:
        now += advance
        binder = bytes([binder_index]) * 32
        expected, _ = reference.admit(binder, now + offset, now, source)
        outcome = guard.admit_hello(binder, now + offset, now, source)
        assert outcome.value == expected
        assert {s: guard.floor_of(s) for s in SOURCES} == {
            s: reference.floors.get(s, -1) for s in SOURCES
        }
        if outcome is Admission.NEW and decrypted:
            guard.remember_decryption(binder, b"plaintext of %d" % binder_index)
        known = guard.decryption_of(binder)
        if known is not None:  # only ever this binder's own decryption
            assert known.plaintext == b"plaintext of %d" % binder_index
        assert len(reference.entries) <= 4
        assert all(reference.held(s) <= 2 for s in SOURCES)
        assert all(reference.held(s) > 0 for s in reference.floors)


# -- the multiplexer (SPEC §14) -------------------------------------------------------------------
#
# Whatever frames arrive, the sans-IO multiplexer raises only MuxError (a ProtocolError): for a
# header alone, and for a multiplexer with streams in every state (opened by either side,
# accepted, waiting for an answer, half-finished, reset, with a message half-assembled or
# finished and unread), fed random frames, genuine frames mutated, and plain bytes, whole or byte
# by byte. Its budget charges are never negative and all come back when the connection goes.

FRAME_TYPES = list(mw.FrameType)


@FAST
@given(header=st.binary(min_size=mw.HEADER_SIZE, max_size=mw.HEADER_SIZE))
def test_the_frame_header_parser_raises_only_mux_errors(header: bytes) -> None:
    try:
        frame_type, flags, stream_id, length = mw.parse_header_untrusted(header)
    except MuxError:
        return
    assert frame_type in FRAME_TYPES
    assert (stream_id == 0) == (frame_type in (FrameType.PING, FrameType.PONG, FrameType.GOAWAY))
    assert length <= mw.MAX_DATA_PAYLOAD and 0 <= flags <= 7


def busy_multiplexer() -> tuple[Multiplexer, Multiplexer, ReassemblyBudget]:
    """``(peer, victim)``, the victim the responder, with streams in every state."""
    budget = ReassemblyBudget(limit=1 << 24, per_peer_limit=1 << 24)
    peer = Multiplexer(initiator=True)
    victim = Multiplexer(initiator=False, budget=budget, budget_key="peer", max_inbound_streams=4)

    def deliver() -> None:
        victim.receive_data_untrusted(peer.data_to_send())
        peer.receive_data_untrusted(victim.data_to_send())

    accepted, _waiting, finished, reset = (peer.open_stream("fuzz/1") for _ in range(4))
    deliver()
    for stream_id in (accepted, finished, reset):
        victim.accept_stream(stream_id)
    deliver()  # ``waiting`` is offered and not answered
    ours = victim.open_stream("fuzz/2")  # accepted by the peer below
    peer.receive_data_untrusted(victim.data_to_send())
    peer.accept_stream(ours)
    peer.send_data(accepted, b"half a message", message=True)
    peer.send_data(finished, b"a message nobody reads", message=True, end=True)
    peer.send_data(finished, b"bytes", fin=True)
    peer.reset_stream(reset)
    deliver()
    return peer, victim, budget


def frame_strategy(stream_ids: list[int]) -> st.SearchStrategy[bytes]:
    payloads = st.one_of(
        st.binary(max_size=20), st.sampled_from([bytes(4), (1).to_bytes(4, "big"), b"\x01"])
    )
    return st.builds(
        lambda frame_type, flags, stream_id, payload: (
            mw.HEADER.pack(frame_type, flags, stream_id, len(payload)) + payload
        ),
        st.sampled_from([*FRAME_TYPES, 9, 255]),
        st.sampled_from([0, 1, 2, 3, 4, 5, 7, 8]),
        st.sampled_from([0, *stream_ids, 2**32 - 1]),
        payloads,
    )


def check_multiplexer(data: st.DataObject, whole: bool) -> None:
    _peer, victim, budget = busy_multiplexer()
    ids = [1, 2, 3, 5, 7, 9, 11, 13]
    genuine = [
        mw.frame(FrameType.DATA, 1, b"more", mw.Flag.MESSAGE | mw.Flag.END),
        mw.frame(FrameType.WINDOW, 1, (1000).to_bytes(4, "big")),
        mw.frame(FrameType.OPEN, 9, b"fuzz/1"),
        mw.frame(FrameType.RESET, 5, b"\x00"),
        mw.frame(FrameType.PING, 0, bytes(8)),
        mw.frame(FrameType.GOAWAY, 0, bytes(5)),
    ]
    chunks = data.draw(
        st.lists(
            st.one_of(
                frame_strategy(ids),
                st.sampled_from(genuine),
                st.sampled_from(genuine).flatmap(inputs_like),
            ),
            max_size=12,
        ),
        label="frames",
    )
    blob = b"".join(chunks)
    pieces = [blob] if whole else [blob[i : i + 1] for i in range(len(blob))]
    try:
        for piece in pieces:
            victim.receive_data_untrusted(piece)
            assert budget.in_use >= 0
            victim.data_to_send()
    except MuxError:
        pass
    victim.release_all()
    assert budget.in_use == 0


@pytest.mark.parametrize("whole", [True, False], ids=["whole", "byte by byte"])
@FAST
@given(data=st.data())
def test_the_multiplexer_raises_only_mux_errors(whole: bool, data: st.DataObject) -> None:
    check_multiplexer(data, whole)


@pytest.mark.slow
@pytest.mark.parametrize("whole", [True, False], ids=["whole", "byte by byte"])
@SLOW
@given(data=st.data())
def test_the_multiplexer_raises_only_mux_errors_long_run(whole: bool, data: st.DataObject) -> None:
    check_multiplexer(data, whole)


def test_the_busy_multiplexer_is_in_the_states_named() -> None:
    """Control: the fuzzed multiplexer holds the streams the fuzzing means to reach."""
    _, victim, budget = busy_multiplexer()
    assert sorted(victim.stream_ids()) == [1, 2, 3, 5, 7]
    assert victim.inbound_streams == 4  # its bound: one more OPEN is refused
    streams = victim._streams
    assert streams[1].accepted and streams[1].message_open
    assert not streams[3].accepted  # offered, not answered
    assert streams[5].finished and streams[5].received_fin
    assert streams[7].peer_reset
    assert streams[2].local and streams[2].accepted
    assert budget.in_use > 0  # the half message and the unread one are charged
