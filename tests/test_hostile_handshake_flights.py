"""Hostile inputs against the handshake's flights (items 6-8 and 11 of
``test_hostile_handshake.py``): a changed version or suite, any single bit flipped, truncated
flights, trailing bytes and huge lengths, X25519 low-order points, and flights out of order (the
last also against a real host). Every one fails with the protocol's own error, most before any
private-key work.
"""

from __future__ import annotations

import tracemalloc

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2ptls import (
    ConnectionLost,
    HandshakeFailed,
    LocalProtocolError,
    PeerRefused,
    ProtocolError,
    RecordError,
    ReplayGuard,
    TruncatedError,
    _handshake,
)
from p2ptls import _wire as wire
from p2ptls._connection import Connection, Event, HandshakeState
from tests.host_harness import (
    assert_host_serves,
    receive_until_closed,
    serving_host,
    settle,
)
from tests.hostile_support import (
    NETWORK_KEY,
    TIMESTAMP_NS,
    DeterministicRandom,
    decrypt,
    flip_bit,
    forged_finish,
    genuine_flights,
    handshake,
    hello_of,
    initiator_finish,
    key_operation,
    make_initiator,
    make_responder,
    parties,
    rebound_hello,
    reframed,
    responder_reply,
    state_of,
    supplied,
)
from tests.raw_peer import RawPeer, raw_peer

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
LOW_ORDER_POINTS = [
    bytes(32),
    bytes([1]) + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ec" + "ff" * 30 + "7f"),  # p - 1
    bytes.fromhex("ed" + "ff" * 30 + "7f"),  # p
    bytes.fromhex("ee" + "ff" * 30 + "7f"),  # p + 1
]
# X25519 ignores the top bit, so each point has a second encoding.
LOW_ORDER_POINTS += [point[:31] + bytes([point[31] | 0x80]) for point in LOW_ORDER_POINTS]


def point_id(point: bytes) -> str:
    return point.hex()[:8] + "-" + point.hex()[-2:]


# -- 6. version, suite, and any single bit ---------------------------------------------------------


@pytest.mark.parametrize("flight", ["hello", "reply", "finish"])
@pytest.mark.parametrize("version", [0, wire.PROTOCOL_VERSION + 1, 255])
def test_changed_record_version_fails(flight: str, version: int) -> None:
    flights = handshake(make_initiator(), make_responder())
    record = getattr(flights, flight)
    receiver = receiver_for(flight)
    with pytest.raises(RecordError):
        receiver.receive_data_untrusted(record[:1] + bytes([version]) + record[2:])
    assert receiver.state is HandshakeState.FAILED


@pytest.mark.parametrize("suite", [0, 2, 255])
def test_changed_suite_fails_even_with_a_valid_binder(suite: int) -> None:
    hello = rebound_hello(hello_of(make_initiator()), NETWORK_KEY, suite=suite)
    responder = make_responder()
    with pytest.raises(HandshakeFailed):
        responder.receive_data_untrusted(hello)


@PROPERTY
@given(data=st.data())
def test_any_single_bit_flipped_in_the_hello_fails_without_private_key_work(
    data: st.DataObject,
) -> None:
    flights = genuine_flights()
    bit = data.draw(st.integers(0, len(flights.hello) * 8 - 1), label="bit")
    responder = make_responder()
    events: list[Event] = []
    with pytest.raises(ProtocolError):
        events += responder.receive_data_untrusted(flip_bit(flights.hello, bit))
        substitute = responder.data_to_send()
        if substitute:  # the binder failed: a substitute Reply the initiator cannot use
            initiator = make_initiator()
            hello_of(initiator)
            with pytest.raises(HandshakeFailed):
                initiator.receive_data_untrusted(substitute)
        # Not even the genuine Finish completes it.
        events += responder.receive_data_untrusted(flights.finish)
        responder.receive_eof()
    assert events == []
    assert responder.state is HandshakeState.FAILED and responder.remote is None


@PROPERTY
@given(data=st.data())
def test_any_single_bit_flipped_in_the_reply_fails_without_private_key_work(
    data: st.DataObject,
) -> None:
    flights = genuine_flights()
    bit = data.draw(st.integers(0, len(flights.reply) * 8 - 1), label="bit")
    initiator = receiver_for("reply")
    events: list[Event] = []
    with pytest.raises(ProtocolError):
        events += initiator.receive_data_untrusted(flip_bit(flights.reply, bit))
        initiator.receive_eof()
    assert events == []
    assert initiator.state is HandshakeState.FAILED and initiator.remote is None


@PROPERTY
@given(data=st.data())
def test_any_single_bit_flipped_in_the_finish_fails(data: st.DataObject) -> None:
    flights = genuine_flights()
    bit = data.draw(st.integers(0, len(flights.finish) * 8 - 1), label="bit")
    guard = ReplayGuard()
    responder = make_responder(guard=guard)
    assert responder_reply(responder, flights.hello) == flights.reply
    events: list[Event] = []
    with pytest.raises(ProtocolError):
        events += responder.receive_data_untrusted(flip_bit(flights.finish, bit))
        responder.receive_eof()
    assert events == []
    assert responder.remote is None
    assert guard.newest(parties().initiator.peer_id) is None


# -- 7. truncated flights, trailing bytes, huge lengths --------------------------------------------


def receiver_for(flight: str) -> Connection:
    """A connection waiting for ``flight`` of the reproducible handshake."""
    if flight == "reply":
        initiator = make_initiator()
        hello_of(initiator)
        return initiator
    responder = make_responder()
    if flight == "finish":
        responder_reply(responder, hello_of(make_initiator()))
    return responder


@pytest.mark.parametrize("flight", ["hello", "reply", "finish"])
def test_every_truncated_flight_followed_by_eof_is_truncation(flight: str) -> None:
    record = getattr(handshake(make_initiator(), make_responder()), flight)
    for length in range(len(record)):
        receiver = receiver_for(flight)
        assert receiver.receive_data_untrusted(record[:length]) == []
        with pytest.raises(TruncatedError):
            receiver.receive_eof()
        assert receiver.state is HandshakeState.FAILED


@pytest.mark.parametrize("flight", ["hello", "reply", "finish"])
def test_every_truncated_flight_body_with_a_matching_length_fails(flight: str) -> None:
    record = getattr(handshake(make_initiator(), make_responder()), flight)
    body = record[wire.HEADER_SIZE :]
    for length in range(len(body)):
        receiver = receiver_for(flight)
        expected: type[ProtocolError] = HandshakeFailed if length else RecordError
        with pytest.raises(expected):
            receiver.receive_data_untrusted(reframed(record, body[:length]))
        assert receiver.state is HandshakeState.FAILED


@pytest.mark.parametrize("flight", ["hello", "reply", "finish"])
@pytest.mark.parametrize("extra", [b"\x00", bytes(32), b"\xff" * 300])
def test_trailing_bytes_inside_a_flight_fail(flight: str, extra: bytes) -> None:
    record = getattr(handshake(make_initiator(), make_responder()), flight)
    receiver = receiver_for(flight)
    with pytest.raises(HandshakeFailed):
        receiver.receive_data_untrusted(reframed(record, record[wire.HEADER_SIZE :] + extra))


def test_trailing_garbage_after_the_hello_fails_right_after_the_key_operation() -> None:
    responder = make_responder()
    events = responder.receive_data_untrusted(hello_of(make_initiator()) + b"\x00" * 10)
    with pytest.raises(RecordError):  # supply_decryption processes what was buffered meanwhile
        responder.supply_decryption(decrypt(parties().responder, key_operation(events)))
    assert responder.data_to_send() == b""  # the Reply is not sent on a failed connection


@pytest.mark.parametrize("flight", ["hello", "reply", "finish"])
@pytest.mark.parametrize("length", [0xFFFF, wire.MAX_CIPHERTEXT, wire.MAX_HANDSHAKE_BODY + 1])
def test_huge_length_field_closes_from_the_header_alone(flight: str, length: int) -> None:
    receiver = receiver_for(flight)
    tracemalloc.start()
    try:
        with pytest.raises(RecordError):
            receiver.receive_data_untrusted(wire.HEADER.pack(wire.HANDSHAKE, 1, length))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024  # far below the 64 KiB bodies announced; nothing was reserved
    assert receiver.state is HandshakeState.FAILED


@pytest.mark.parametrize("side", ["initiator", "responder"])
def test_bytes_piling_up_during_the_private_key_operation_are_bounded(side: str) -> None:
    if side == "responder":
        conn = make_responder()
        key_operation(conn.receive_data_untrusted(hello_of(make_initiator())))
    else:
        conn = make_initiator()
        key_operation(
            conn.receive_data_untrusted(responder_reply(make_responder(), hello_of(conn)))
        )
    assert state_of(conn) is HandshakeState.KEY_OPERATION
    chunk = bytes(64 * 1024)
    fed = 0
    with pytest.raises(ProtocolError):
        while fed < 4 * 1024 * 1024:
            conn.receive_data_untrusted(chunk)
            fed += len(chunk)
    assert fed <= wire.HEADER_SIZE + wire.MAX_CIPHERTEXT + conn.config.receive_size
    assert conn.state is HandshakeState.FAILED


# -- 8. X25519 low-order points -------------------------------------------------------------------


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=point_id)
def test_low_order_point_in_the_hello_is_the_generic_failure(
    point: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(_handshake, "_x25519_public_bytes", lambda _private: point)
        hello = hello_of(make_initiator())  # consistent: the sealed key and binder cover the point
    assert wire.parse_hello_untrusted(hello[wire.HEADER_SIZE :]).ephemeral == point
    guard = ReplayGuard()
    responder = make_responder(guard=guard)
    reply = responder_reply(responder, hello)
    assert len(reply) == len(genuine_flights().reply)  # a substitute of the genuine shape
    with pytest.raises(HandshakeFailed) as info:
        responder.receive_data_untrusted(forged_finish())
    assert str(info.value) == "handshake failed"
    assert responder.remote is None and guard.newest(parties().initiator.peer_id) is None


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=point_id)
def test_low_order_point_in_the_reply_is_the_generic_failure(
    point: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    initiator, responder = make_initiator(), make_responder()
    hello = hello_of(initiator)
    with monkeypatch.context() as patch:
        patch.setattr(_handshake, "_x25519_public_bytes", lambda _private: point)
        reply = responder_reply(responder, hello)
    with pytest.raises(HandshakeFailed) as info:
        initiator.receive_data_untrusted(reply)  # before the initiator's private-key work
    assert str(info.value) == "handshake failed"
    assert initiator.state is HandshakeState.FAILED


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=point_id)
def test_low_order_points_are_refused_by_the_exchange(point: bytes) -> None:
    private = X25519PrivateKey.from_private_bytes(DeterministicRandom(b"x25519")(32))
    assert _handshake._x25519_shared_or_none(private, point) is None


# -- 11. flights out of order ---------------------------------------------------------------------


def test_application_data_before_finish_is_refused() -> None:
    cast = parties()
    guard = ReplayGuard()
    initiator, responder = make_initiator(), make_responder(guard=guard)
    finish = initiator_finish(initiator, responder_reply(responder, hello_of(initiator)))
    early = initiator.send_data(b"early data")  # properly sealed, but ahead of the Finish
    with pytest.raises(HandshakeFailed):
        responder.receive_data_untrusted(early + finish)
    assert responder.state is HandshakeState.FAILED and responder.remote is None
    assert guard.newest(cast.initiator.peer_id) is None


def protected_garbage() -> bytes:
    return wire.encode_header(wire.DATA, 40) + bytes(40)


def scenario_conn(name: str) -> tuple[Connection, bytes, type[ProtocolError]]:
    """``(connection, bytes it receives, error expected)`` for each out-of-order flight."""
    flights = handshake(make_initiator(), make_responder())
    if name == "data before the hello":
        return make_responder(), protected_garbage(), HandshakeFailed
    if name == "data before the reply":
        initiator = make_initiator()
        hello_of(initiator)
        return initiator, protected_garbage(), HandshakeFailed
    if name == "data between reply and finish":
        return receiver_for("finish"), protected_garbage(), HandshakeFailed
    if name == "finish before the hello":
        return make_responder(), flights.finish, HandshakeFailed
    if name == "second hello before the finish":
        return receiver_for("finish"), flights.hello, HandshakeFailed
    if name == "reply sent to the responder":
        return make_responder(), flights.reply, HandshakeFailed
    if name == "hello sent to the initiator":
        return receiver_for("reply"), flights.hello, HandshakeFailed
    initiator, responder = make_initiator(), make_responder()
    handshake(initiator, responder)
    if name == "second finish":
        return responder, flights.finish, ProtocolError
    if name == "hello on an established responder":
        return responder, flights.hello, ProtocolError
    if name == "hello on an established initiator":
        return initiator, flights.hello, ProtocolError
    assert name == "second reply"
    return initiator, flights.reply, ProtocolError


@pytest.mark.parametrize(
    "name",
    [
        "data before the hello",
        "data before the reply",
        "data between reply and finish",
        "finish before the hello",
        "second hello before the finish",
        "reply sent to the responder",
        "hello sent to the initiator",
        "second finish",
        "hello on an established responder",
        "hello on an established initiator",
        "second reply",
    ],
)
def test_out_of_order_flights_close_the_connection(name: str) -> None:
    conn, data, expected = scenario_conn(name)
    with pytest.raises(expected):
        conn.receive_data_untrusted(data)
    assert conn.state is HandshakeState.FAILED
    with pytest.raises(LocalProtocolError):  # a failed connection stays failed
        conn.receive_data_untrusted(b"")


async def test_host_refuses_application_data_before_finish() -> None:
    async with serving_host() as harness:
        host = harness.host
        peer = await RawPeer.connect(host)
        await peer.send(hello_of(peer.conn))
        reply = b""
        events: list[Event] = []
        while not events:
            data = await peer.tcp.receive_some()
            assert data
            reply += data
            events = peer.conn.receive_data_untrusted(data)
        plaintext = decrypt(peer.identity, key_operation(events))
        finish = supplied(peer.conn, plaintext)
        await peer.send(peer.conn.send_data(b"early") + finish)
        assert await receive_until_closed(peer.tcp) == b""
        await peer.aclose()
        await settle(lambda: host.handshake_failures == 1)
        assert harness.received == [] and harness.failures == []
        await assert_host_serves(harness)


@pytest.mark.parametrize("flight", ["hello", "reply", "finish"])
async def test_host_closes_a_stream_that_sends_a_handshake_flight_after_the_handshake(
    flight: str,
) -> None:
    async with serving_host() as harness:
        peer = await raw_peer(harness)
        await peer.echo(b"established")
        await peer.send(getattr(peer.flights, flight))
        failure = await harness.next_failure()
        assert isinstance(failure, ConnectionLost)
        assert isinstance(failure.__cause__, ProtocolError)
        await peer.aclose()
        await assert_host_serves(harness)


def test_parallel_handshakes_may_finish_out_of_order_but_each_timestamp_once() -> None:
    """Several connections opened at once may complete in any order: a slightly older timestamp
    is accepted once, and the same timestamp never twice."""
    cast = parties()
    guard = ReplayGuard()
    handshake(make_initiator(timestamp_ns=TIMESTAMP_NS + 5), make_responder(guard=guard))
    handshake(
        make_initiator(timestamp_ns=TIMESTAMP_NS + 3, seed=b"slower"),
        make_responder(guard=guard, seed=b"slower target"),
    )
    assert guard.newest(cast.initiator.peer_id) == TIMESTAMP_NS + 5
    again = make_initiator(timestamp_ns=TIMESTAMP_NS + 3, seed=b"same timestamp")
    responder = make_responder(guard=guard, seed=b"same target")
    finish = initiator_finish(again, responder_reply(responder, hello_of(again)))
    with pytest.raises(HandshakeFailed):
        responder.receive_data_untrusted(finish)


def test_an_authenticated_but_untrusted_initiator_gets_a_sealed_refusal() -> None:
    """The true holder of an untrusted key learns it was refused, from a CLOSE sealed under keys
    only it can derive; a forger (who cannot produce the Finish) never gets one."""
    cast = parties()
    initiator = make_initiator()
    responder = make_responder(trusted=[cast.other.record])
    finish = initiator_finish(initiator, responder_reply(responder, hello_of(initiator)))
    with pytest.raises(HandshakeFailed):
        responder.receive_data_untrusted(finish)
    assert responder.farewell
    with pytest.raises(PeerRefused):
        initiator.receive_data_untrusted(responder.farewell)
    # Without the genuine Finish there is no refusal to send.
    forger = make_responder(trusted=[cast.other.record], seed=b"forged finish")
    responder_reply(forger, hello_of(make_initiator(seed=b"forger")))
    with pytest.raises(HandshakeFailed):
        forger.receive_data_untrusted(finish)
    assert forger.farewell == b""
