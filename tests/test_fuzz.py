"""Fuzzing every parser: random and mutated input never raises anything but the protocol's error.

Whatever bytes arrive, the only exception that may leave a parser or the sans-IO connection is the
protocol's own :class:`~p2ptls.ProtocolError` (or a subclass); after one, the connection is FAILED,
stays failed and holds nothing. Inputs mix plain random bytes, mutations of genuine flights,
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

from p2ptls import ProtocolError, ReplayGuard
from p2ptls import _wire as wire
from p2ptls._connection import Connection, State
from p2ptls._records import RecordSealer
from p2ptls.trust import Admission
from protocol.record_reference import ReferenceReplayCache
from tests.hostile_support import (
    Flights,
    decrypt,
    established_pair,
    forged_sealer,
    handshake,
    key_operation,
    make_initiator,
    make_responder,
    parties,
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
        initiator.start()
        if state == "initiator handshaking":
            return initiator, None, None
        operation = key_operation(initiator.receive_data_untrusted(flights.reply))
        return (
            initiator,
            None,
            lambda: initiator.supply_decryption(decrypt(cast.initiator, operation)),
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
        return responder.supply_decryption(decrypt(cast.responder, operation))

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
        if resume is not None and conn.state is State.KEY_OPERATION:
            resume()
            conn.receive_data_untrusted(b"", now=len(pieces) / 1000)
        conn.data_to_send()
        conn.receive_eof()
    except ProtocolError:
        assert conn.state is State.FAILED
        assert conn.data_to_send() == b""
        with pytest.raises(ProtocolError):
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
        "handshaking": State.HANDSHAKING,
        "key operation": State.KEY_OPERATION,
        "awaiting finish": State.HANDSHAKING,
        "established": State.ESTABLISHED,
    }[state.split(" ", 1)[1]]
    assert conn.state is expected
    assert (resume is not None) == (expected is State.KEY_OPERATION)
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
