"""SLLP codec and replay window: encodings, every refusal, and fuzzing of the untrusted parsers."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptls import ProtocolError
from p2ptls.sllp import DatagramError, NegotiationError, ReplayWindow, is_offer
from p2ptls.sllp import _wire as wire

# -- datagram header and body ----------------------------------------------------------------------


def test_header_round_trip_and_layout() -> None:
    header = wire.encode_header(wire.FLAG_KEY_PHASE, 0x0102030405060708, 0x1112131415161718)
    assert header.hex() == "0101" + "0102030405060708" + "1112131415161718"
    parsed = wire.parse_header_untrusted(header + bytes(wire.BODY_SIZE + wire.TAG_SIZE))
    assert (parsed.flags, parsed.connection_id, parsed.sequence) == (
        1,
        0x0102030405060708,
        0x1112131415161718,
    )
    assert parsed.key_phase == 1
    assert wire.OVERHEAD == 51


@pytest.mark.parametrize(
    ("datagram", "why"),
    [
        (b"", "shorter"),
        (bytes(wire.MIN_DATAGRAM - 1), "shorter"),
        (bytes([2, 0]) + bytes(wire.MIN_DATAGRAM - 2), "version"),
        (bytes([1, 2]) + bytes(wire.MIN_DATAGRAM - 2), "flags"),
        (bytes([1, 0x80]) + bytes(wire.MIN_DATAGRAM - 2), "flags"),
    ],
)
def test_header_refusals(datagram: bytes, why: str) -> None:
    with pytest.raises(DatagramError, match=why):
        wire.parse_header_untrusted(datagram)


def test_body_round_trip() -> None:
    body = wire.encode_body(wire.TYPE_DATA, 7, 2, 3, b"abc")
    parsed = wire.parse_body_untrusted(body)
    assert (parsed.type, parsed.message_id, parsed.fragment_index, parsed.fragment_count) == (
        1,
        7,
        2,
        3,
    )
    assert parsed.payload == b"abc"
    close = wire.parse_body_untrusted(
        wire.encode_body(wire.TYPE_CLOSE, 0, 0, 0, wire.encode_close_payload(20, "bye"))
    )
    assert wire.parse_close_payload_untrusted(close.payload) == (20, "bye")
    assert wire.parse_body_untrusted(wire.encode_body(wire.TYPE_KEEPALIVE, 0, 0, 0, b"")).type == 2


@pytest.mark.parametrize(
    "body",
    [
        b"\x01" * (wire.BODY_SIZE - 1),
        wire.encode_body(wire.TYPE_DATA, 0, 0, 0, b"x"),  # count 0
        wire.encode_body(wire.TYPE_DATA, 0, 3, 3, b"x"),  # index out of range
        wire.encode_body(wire.TYPE_KEEPALIVE, 1, 0, 0, b""),
        wire.encode_body(wire.TYPE_KEEPALIVE, 0, 0, 0, b"x"),
        wire.encode_body(wire.TYPE_CLOSE, 0, 0, 1, b"\0\0"),
        wire.encode_body(wire.TYPE_CLOSE, 0, 0, 0, b"\0"),
        wire.encode_body(wire.TYPE_CLOSE, 0, 0, 0, b"\0\0" + b"x" * (wire.MAX_CLOSE_REASON + 1)),
        wire.encode_body(wire.TYPE_CLOSE, 0, 0, 0, b"\0\0\xff"),
        wire.encode_body(0x7F, 0, 0, 0, b""),
    ],
)
def test_body_refusals(body: bytes) -> None:
    with pytest.raises(DatagramError):
        wire.parse_body_untrusted(body)


def test_close_reason_is_cut_on_a_character_edge() -> None:
    payload = wire.encode_close_payload(1, "é" * 100)
    assert len(payload) <= 2 + wire.MAX_CLOSE_REASON
    code, reason = wire.parse_close_payload_untrusted(payload)
    assert code == 1 and reason == "é" * 64


def test_nonce_is_iv_xor_sequence() -> None:
    iv = int.from_bytes(bytes(range(12)), "big")
    assert wire.nonce(iv, 0) == bytes(range(12))
    assert wire.nonce(iv, 1) == bytes(range(11)) + bytes([11 ^ 1])
    assert wire.nonce(iv, (1 << 64) - 1)[:4] == bytes(range(4))


# -- offer, answer and close on the stream --------------------------------------------------------


def _offer(**changes: object) -> wire.Offer:
    fields: dict[str, object] = {
        "kind": wire.KIND_OFFER,
        "epoch": 1,
        "connection_id": 5,
        "address": ("10.1.2.3", 4000),
        "max_datagram_payload": 1200,
        "max_message_size": 1 << 20,
    }
    fields.update(changes)
    return wire.Offer(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("host", ["10.1.2.3", "0.0.0.0", "2001:db8::7", "::"])
def test_offer_round_trip(host: str) -> None:
    offer = _offer(address=(host, 4000))
    data = wire.encode_offer(offer)
    assert len(data) == wire.OFFER_SIZE == 42
    assert wire.parse_offer_untrusted(data, wire.KIND_OFFER) == offer
    assert is_offer(data)
    answer = _offer(kind=wire.KIND_ANSWER)
    assert not is_offer(wire.encode_offer(answer))
    assert wire.parse_offer_untrusted(wire.encode_offer(answer), wire.KIND_ANSWER) == answer


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (wire.encode_offer(_offer())[:-1], "size"),
        (wire.encode_offer(_offer()) + b"\0", "size"),
        (b"XLLP" + wire.encode_offer(_offer())[4:], "not an SLLP"),
        (wire.encode_offer(_offer())[:4] + b"\x02" + wire.encode_offer(_offer())[5:], "version"),
        (wire.encode_offer(_offer(kind=wire.KIND_ANSWER)), "kind"),
        (wire.encode_offer(_offer(epoch=0)), "epoch"),
        (wire.encode_offer(_offer(connection_id=0)), "connection id"),
        (wire.encode_offer(_offer(address=("10.0.0.1", 0))), "port"),
        (wire.encode_offer(_offer(max_datagram_payload=255)), "datagram size"),
        (wire.encode_offer(_offer(max_datagram_payload=65508)), "datagram size"),
        (wire.encode_offer(_offer(max_message_size=0)), "message size"),
    ],
)
def test_offer_refusals(data: bytes, why: str) -> None:
    with pytest.raises(NegotiationError, match=why):
        wire.parse_offer_untrusted(data, wire.KIND_OFFER)


def test_stream_close_round_trip_and_refusals() -> None:
    data = wire.encode_stream_close(300, "shutting down")
    assert wire.parse_stream_close_untrusted(data) == wire.StreamClose(300, "shutting down")
    for bad in (
        data[:-1],
        data + b"x",
        data[:4],
        wire.encode_offer(_offer()),
        b"SLLP\x01\x03\0\0\0\x01\xff",
    ):
        with pytest.raises(NegotiationError):
            wire.parse_stream_close_untrusted(bad)


# -- fuzzing: the untrusted parsers raise only the protocol's errors ------------------------------


def _only_protocol_errors(parse: object, data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        parse(data)  # type: ignore[operator]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_parsers_raise_only_protocol_errors(data: bytes) -> None:
    _only_protocol_errors(wire.parse_header_untrusted, data)
    _only_protocol_errors(wire.parse_body_untrusted, data)
    _only_protocol_errors(wire.parse_close_payload_untrusted, data)
    _only_protocol_errors(wire.parse_stream_close_untrusted, data)
    _only_protocol_errors(lambda d: wire.parse_offer_untrusted(d, wire.KIND_OFFER), data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_mutated_valid_messages(data: st.DataObject) -> None:
    samples = [
        wire.encode_offer(_offer(address=("2001:db8::1", 9))),
        wire.encode_stream_close(5, "ok"),
        wire.encode_body(wire.TYPE_CLOSE, 0, 0, 0, wire.encode_close_payload(1, "x")),
        wire.encode_body(wire.TYPE_DATA, 1, 0, 2, b"abc"),
    ]
    sample = bytearray(data.draw(st.sampled_from(samples)))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(sample) - 1))
        sample[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(sample)))
    for candidate in (bytes(sample), bytes(sample[:cut])):
        _only_protocol_errors(lambda d: wire.parse_offer_untrusted(d, wire.KIND_OFFER), candidate)
        _only_protocol_errors(wire.parse_stream_close_untrusted, candidate)
        _only_protocol_errors(wire.parse_body_untrusted, candidate)


# -- the replay window -----------------------------------------------------------------------------


def test_replay_window_basics() -> None:
    window = ReplayWindow()
    assert window.size == 4032
    assert window.check(0)
    window.update(0)
    assert not window.check(0)
    for number in (5, 3, 1000):
        assert window.check(number)
        window.update(number)
        assert not window.check(number)
    assert window.check(4) and window.check(999)
    window.update(5000)
    assert not window.check(5000 - 4032)  # exactly the window: too old
    assert window.check(5000 - 4031)
    assert not window.check(3)
    window.update(10**15)  # a jump far beyond the ring clears it all
    assert window.check(10**15 - 1) and not window.check(10**15)
    assert not window.check(5000)


def test_replay_window_rejects_bad_sizes() -> None:
    for bits in (64, 100, 3 * 64):
        with pytest.raises(ValueError):
            ReplayWindow(bits)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 20_000), max_size=400), st.sampled_from([128, 1024, 4096]))
def test_replay_window_matches_a_reference_model(numbers: list[int], bits: int) -> None:
    window = ReplayWindow(bits)
    seen: set[int] = set()
    top = 0
    for number in numbers:
        expected = number not in seen and (number > top or top - number < bits - 64)
        assert window.check(number) == expected
        if expected:
            window.update(number)
            seen.add(number)
            top = max(top, number)


def test_replay_window_long_random_walk() -> None:
    rng = random.Random(7)
    window = ReplayWindow()
    accepted = set()
    base = 0
    for _ in range(20_000):
        base += rng.randint(0, 3)
        number = max(0, base - rng.randint(0, 5000))
        if window.check(number):
            assert number not in accepted
            window.update(number)
            accepted.add(number)
