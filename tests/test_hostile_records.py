"""Hostile inputs against the record layer, one numbered section per attack (items 12-18 below).

Each test first establishes a reproducible session (``hostile_support.established_pair``), then
feeds the receiving side tampered, reordered, truncated, forged or flooded records. The expected
behaviour throughout: a typed :class:`~p2ptls.ProtocolError`, nothing of the bad record delivered,
and a connection that stays failed. The last tests replay the attacks against a real host over TCP.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2ptls import (
    ConnectionLost,
    FloodError,
    LocalProtocolError,
    LogicalStream,
    ProtocolError,
    RecordError,
    StreamConfig,
    TruncatedError,
    _records,
)
from p2ptls import _wire as wire
from p2ptls._connection import (
    Connection,
    DataReceived,
    EndOfStream,
    Event,
    HandshakeState,
    MessageReceived,
    PongReceived,
)
from p2ptls._fragments import ReassemblyBudget
from p2ptls._records import RecordSealer
from tests.host_harness import Harness, assert_host_serves, good_client, serving_host, settle
from tests.hostile_support import (
    established_pair,
    flip_bit,
    forged_sealer,
    make_responder,
    records_of,
)
from tests.raw_peer import RawPeer, message_frame, raw_peer

PROPERTY = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
KNOWN_TYPES = wire.PROTECTED_TYPES | {wire.HANDSHAKE}


def delivered(events: list[Event]) -> list[bytes]:
    """Application data among ``events``."""
    return [e.data for e in events if isinstance(e, DataReceived | MessageReceived)]


def fail(conn: Connection, *chunks: bytes | bytearray) -> tuple[ProtocolError, list[Event]]:
    """Feed ``chunks`` then EOF: the connection must fail. Return the error and the events that
    came before it."""
    events: list[Event] = []
    with pytest.raises(ProtocolError) as info:
        for chunk in chunks:
            events += conn.receive_data_untrusted(chunk)
        conn.receive_eof()
    assert conn.state is HandshakeState.FAILED
    with pytest.raises(LocalProtocolError):  # it stays failed: using it is the caller's bug
        conn.receive_data_untrusted(b"")
    return info.value, events


# -- 12. a flipped bit in header, ciphertext or tag ------------------------------------------------


@pytest.mark.parametrize("region", ["header", "ciphertext", "tag"])
@PROPERTY
@given(data=st.data())
def test_a_flipped_bit_in_a_record_closes_and_delivers_nothing(
    region: str, data: st.DataObject
) -> None:
    initiator, responder = established_pair()
    kind = data.draw(st.sampled_from(["data", "message"]), label="kind")
    payload = b"m" * data.draw(st.integers(1, 600), label="size")
    record = initiator.send_data(payload) if kind == "data" else initiator.send_message(payload)
    bounds = {
        "header": (0, wire.HEADER_SIZE),
        "ciphertext": (wire.HEADER_SIZE, len(record) - wire.TAG_SIZE),
        "tag": (len(record) - wire.TAG_SIZE, len(record)),
    }[region]
    bit = data.draw(st.integers(bounds[0] * 8, bounds[1] * 8 - 1), label="bit")
    error, events = fail(responder, flip_bit(bytes(record), bit))
    assert events == []
    if region != "header":
        assert isinstance(error, RecordError)


def test_a_flipped_bit_in_a_later_fragment_delivers_none_of_the_message() -> None:
    budget = ReassemblyBudget()
    initiator, responder = established_pair(budget=budget)
    records = records_of(initiator.send_message(bytes(range(256)) * 200))
    assert len(records) == 4
    events = responder.receive_data_untrusted(b"".join(records[:2]))
    assert events == [] and budget.in_use > 0
    error, more = fail(responder, flip_bit(records[2], len(records[2]) * 8 - 1), records[3])
    assert isinstance(error, RecordError) and more == []
    assert budget.in_use == 0  # the partial message was released


# -- 13. reordered, replayed, dropped, injected records --------------------------------------------


def data_records(conn: Connection, count: int) -> list[bytes]:
    return [bytes(conn.send_data(b"record %d" % index)) for index in range(count)]


def test_reordered_records_close() -> None:
    initiator, responder = established_pair()
    first, second = data_records(initiator, 2)
    error, events = fail(responder, second, first)
    assert isinstance(error, RecordError) and events == []


def test_a_replayed_record_closes() -> None:
    initiator, responder = established_pair()
    (record,) = data_records(initiator, 1)
    error, events = fail(responder, record, record)
    assert isinstance(error, RecordError)
    assert delivered(events) == [b"record 0"]  # once, not twice


def test_a_dropped_record_closes() -> None:
    initiator, responder = established_pair()
    _, second, third = data_records(initiator, 3)
    error, events = fail(responder, second, third)
    assert isinstance(error, RecordError) and events == []


def test_a_record_from_another_session_closes() -> None:
    initiator, _ = established_pair(seed=b"one")
    _, responder = established_pair(seed=b"two")
    error, events = fail(responder, initiator.send_data(b"from elsewhere"))
    assert isinstance(error, RecordError) and events == []


def test_a_record_reflected_to_its_sender_closes() -> None:
    initiator, _ = established_pair()
    error, events = fail(initiator, initiator.send_data(b"mirror"))
    assert isinstance(error, RecordError) and events == []


def test_a_record_replayed_after_a_key_update_closes() -> None:
    config = StreamConfig(key_update_after=2, hard_record_limit=4)
    initiator, responder = established_pair(initiator_config=config, responder_config=config)
    old = data_records(initiator, 2)
    events = responder.receive_data_untrusted(b"".join(old))
    new = data_records(initiator, 2)  # a key update goes out first
    assert initiator._sealer is not None and initiator._sealer.generation == 1
    events += responder.receive_data_untrusted(b"".join(new))
    assert len(delivered(events)) == 4
    error, more = fail(responder, old[0])
    assert isinstance(error, RecordError) and more == []


# -- 14. EOF in the middle of a record, or without the authenticated close ------------------------


def test_eof_in_the_middle_of_a_record_is_truncation() -> None:
    record = established_pair()[0].send_message(b"half a record" * 10)
    for length in range(1, len(record)):
        _, responder = established_pair()
        error, events = fail(responder, record[:length])
        assert isinstance(error, TruncatedError) and events == []


def test_eof_without_the_authenticated_close_is_truncation() -> None:
    initiator, responder = established_pair()
    error, events = fail(responder, initiator.send_data(b"complete") + initiator.send_message(b"m"))
    assert isinstance(error, TruncatedError)
    assert delivered(events) == [b"complete", b"m"]  # whole records before the cut are fine


def test_eof_inside_a_message_is_truncation_and_the_message_is_never_delivered() -> None:
    budget = ReassemblyBudget()
    initiator, responder = established_pair(budget=budget)
    records = records_of(initiator.send_message(bytes(50_000)))
    error, events = fail(responder, b"".join(records[:-1]))
    assert isinstance(error, TruncatedError) and events == []
    assert budget.in_use == 0


def test_eof_after_the_authenticated_close_is_clean() -> None:
    initiator, responder = established_pair()
    events = responder.receive_data_untrusted(initiator.send_data(b"x") + initiator.send_eof())
    assert events == [DataReceived(b"x"), EndOfStream(wire.CLOSE_END_OF_STREAM)]
    responder.receive_eof()  # no error
    assert responder.state is HandshakeState.ESTABLISHED


def test_a_partial_record_after_the_close_is_truncation() -> None:
    initiator, responder = established_pair()
    sealer = forged_sealer(initiator)
    close = sealer.seal(wire.CLOSE, bytes([wire.CLOSE_GOODBYE]))
    after = sealer.seal(wire.DATA, b"after the close")
    error, events = fail(responder, close + after[:10])
    assert isinstance(error, TruncatedError)
    assert events == [EndOfStream(wire.CLOSE_GOODBYE)]
    _, responder = established_pair()
    error, events = fail(responder, close + after)
    assert not isinstance(error, TruncatedError)  # a whole record after the close
    assert delivered(events) == []


# -- 15. a length field out of range ---------------------------------------------------------------


@PROPERTY
@given(
    content_type=st.sampled_from(sorted(wire.PROTECTED_TYPES)),
    length=st.one_of(
        st.integers(0, wire.TAG_SIZE - 1), st.integers(wire.MAX_CIPHERTEXT + 1, 0xFFFF)
    ),
    established=st.booleans(),
)
def test_a_length_out_of_range_closes_from_the_header_alone(
    content_type: int, length: int, established: bool
) -> None:
    receiver = established_pair()[1] if established else make_responder()
    with pytest.raises(RecordError):
        receiver.receive_data_untrusted(wire.HEADER.pack(content_type, 1, length))
    assert receiver.state is HandshakeState.FAILED


def test_lengths_at_the_limits_are_accepted() -> None:
    initiator, responder = established_pair()
    sealer = forged_sealer(initiator)
    largest = sealer.seal(wire.DATA, bytes(wire.MAX_PLAINTEXT))
    assert len(largest) == wire.HEADER_SIZE + wire.MAX_CIPHERTEXT
    events = responder.receive_data_untrusted(largest)
    assert delivered(events) == [bytes(wire.MAX_PLAINTEXT)]


# -- 16. an unknown content type inside a valid record --------------------------------------------


def test_a_crafted_record_is_accepted_when_its_type_is_known() -> None:
    """Control: records made with the independent sealer are genuine."""
    initiator, responder = established_pair()
    sealer = forged_sealer(initiator)
    events = responder.receive_data_untrusted(sealer.seal(wire.DATA, b"crafted"))
    assert events == [DataReceived(b"crafted")]


def test_every_unknown_content_type_in_an_authentic_record_closes() -> None:
    for content_type in sorted(set(range(256)) - KNOWN_TYPES):
        initiator, responder = established_pair()
        record = forged_sealer(initiator).seal(content_type, b"valid under the session key")
        error, events = fail(responder, record)
        assert isinstance(error, RecordError), content_type
        assert events == []


@pytest.mark.parametrize(
    ("content_type", "plaintext"),
    [
        (wire.HANDSHAKE, b"\x03" + bytes(32)),
        (wire.DATA, b""),
        (wire.KEY_UPDATE, b"\x00"),
        (wire.PING, bytes(7)),
        (wire.PING, bytes(9)),
        (wire.PONG, b""),
        (wire.CLOSE, b""),
        (wire.CLOSE, b"\x02"),
        (wire.CLOSE, b"\x00\x00"),
        (wire.MESSAGE_START, b"\x00\x00\x00"),
        (wire.MESSAGE_START, b"\x00\x00\x00\x00x"),
        (wire.MESSAGE_CONTINUE, b"no message is open"),
    ],
    ids=lambda value: value.hex() if isinstance(value, bytes) else hex(value),
)
def test_a_malformed_record_of_a_known_type_closes(content_type: int, plaintext: bytes) -> None:
    initiator, responder = established_pair()
    record = forged_sealer(initiator).seal(content_type, plaintext)
    _, events = fail(responder, record)
    assert events == []


# -- 17. floods of control records and empty records -----------------------------------------------

FLOOD_CONFIG = StreamConfig(control_burst=16, control_rate=4.0)


def flood_records(sealer: RecordSealer, content_type: int, count: int) -> Iterator[bytes]:
    for index in range(count):
        if content_type == wire.KEY_UPDATE:
            yield sealer.seal(wire.KEY_UPDATE, b"")
            sealer.advance_key()
        else:
            yield sealer.seal(content_type, index.to_bytes(8, "big"))


@pytest.mark.parametrize("content_type", [wire.PING, wire.PONG, wire.KEY_UPDATE])
def test_a_burst_of_control_records_is_bounded_then_closed(content_type: int) -> None:
    initiator, responder = established_pair(responder_config=FLOOD_CONFIG)
    accepted = 0
    with pytest.raises(FloodError):
        sealer = forged_sealer(initiator)
        for record in flood_records(sealer, content_type, 10 * FLOOD_CONFIG.control_burst):
            responder.receive_data_untrusted(record, now=100.0)
            accepted += 1
    assert accepted == FLOOD_CONFIG.control_burst
    assert responder.state is HandshakeState.FAILED


@pytest.mark.parametrize("content_type", [wire.PING, wire.PONG, wire.KEY_UPDATE])
def test_control_records_at_the_configured_rate_are_fine(content_type: int) -> None:
    initiator, responder = established_pair(responder_config=FLOOD_CONFIG)
    count = 5 * FLOOD_CONFIG.control_burst
    sealer = forged_sealer(initiator)
    for index, record in enumerate(flood_records(sealer, content_type, count)):
        responder.receive_data_untrusted(record, now=index / FLOOD_CONFIG.control_rate)
    assert responder.state is HandshakeState.ESTABLISHED
    events = responder.receive_data_untrusted(
        sealer.seal(wire.DATA, b"still flowing"), now=float(count)
    )
    assert delivered(events) == [b"still flowing"]


def test_pongs_owed_for_a_ping_burst_do_not_pile_up() -> None:
    initiator, responder = established_pair()
    pings = [initiator.send_ping(index.to_bytes(8, "big")) for index in range(10)]
    responder.receive_data_untrusted(b"".join(pings))
    owed = records_of(responder.data_to_send())
    assert len(owed) == 1  # one pong, for the latest ping
    assert initiator.receive_data_untrusted(owed[0]) == [PongReceived((9).to_bytes(8, "big"))]


def test_an_empty_data_record_closes() -> None:
    initiator, responder = established_pair()
    error, events = fail(responder, forged_sealer(initiator).seal(wire.DATA, b""))
    assert events == [] and not isinstance(error, TruncatedError)


# -- 18. the key-update threshold and the hard limit -----------------------------------------------


class NonceLog:
    """Replaces the record layer's AES-GCM to log every (key, nonce) it encrypts under."""

    def __init__(self) -> None:
        self.sealed: list[tuple[bytes, bytes]] = []
        self.opened: list[tuple[bytes, bytes]] = []

    def __call__(self, key: bytes) -> _LoggingAead:
        return _LoggingAead(self, key)

    def assert_no_reuse(self) -> None:
        repeated = [pair for pair, n in collections.Counter(self.sealed).items() if n > 1]
        assert repeated == [], f"{len(repeated)} (key, nonce) pairs sealed twice"
        assert len(set(self.opened)) == len(self.opened)

    def keys(self) -> set[bytes]:
        return {key for key, _ in self.sealed}


class _LoggingAead:
    def __init__(self, log: NonceLog, key: bytes) -> None:
        self._log = log
        self._key = key
        self._aead = AESGCM(key)

    def encrypt(self, nonce: bytes, data: bytes | memoryview, aad: bytes | memoryview) -> bytes:
        self._log.sealed.append((self._key, bytes(nonce)))
        return self._aead.encrypt(nonce, data, aad)

    def encrypt_into(
        self, nonce: bytes, data: bytes | memoryview, aad: bytes | memoryview, out: memoryview
    ) -> int:
        self._log.sealed.append((self._key, bytes(nonce)))
        return self._aead.encrypt_into(nonce, data, aad, out)

    def decrypt(self, nonce: bytes, data: bytes | memoryview, aad: bytes | memoryview) -> bytes:
        plaintext = self._aead.decrypt(nonce, data, aad)
        self._log.opened.append((self._key, bytes(nonce)))
        return plaintext


@pytest.fixture
def nonce_log(monkeypatch: pytest.MonkeyPatch) -> NonceLog:
    log = NonceLog()
    monkeypatch.setattr(_records, "AESGCM", log)
    return log


def test_key_updates_happen_at_the_threshold_and_no_nonce_repeats(nonce_log: NonceLog) -> None:
    config = StreamConfig(key_update_after=4, hard_record_limit=6)
    initiator, responder = established_pair(initiator_config=config, responder_config=config)
    to_responder: list[Event] = []
    to_initiator: list[Event] = []
    for index in range(40):
        to_responder += responder.receive_data_untrusted(initiator.send_data(b"i%d" % index))
        to_initiator += initiator.receive_data_untrusted(responder.send_message(b"r%d" % index))
    assert delivered(to_responder) == [b"i%d" % index for index in range(40)]
    assert delivered(to_initiator) == [b"r%d" % index for index in range(40)]
    updates = (40 - 1) // config.key_update_after  # one before every 4 records after the first 4
    for sender, receiver in ((initiator, responder), (responder, initiator)):
        assert sender._sealer is not None and receiver._opener is not None
        assert sender._sealer.generation == updates
        assert receiver._opener.generation == updates
        assert sender._sealer.sequence <= config.key_update_after
    nonce_log.assert_no_reuse()
    assert len(nonce_log.keys()) == 2 * (updates + 1)  # a fresh key per generation and direction
    assert sorted(nonce_log.sealed) == sorted(nonce_log.opened)


def test_a_peer_that_skips_key_updates_is_closed_at_the_hard_limit() -> None:
    lazy = StreamConfig(key_update_after=100, hard_record_limit=101)
    strict = StreamConfig(key_update_after=5, hard_record_limit=6)
    initiator, responder = established_pair(initiator_config=lazy, responder_config=strict)
    events: list[Event] = []
    for index in range(strict.hard_record_limit):
        events += responder.receive_data_untrusted(initiator.send_data(b"%d" % index))
    assert len(delivered(events)) == strict.hard_record_limit
    error, more = fail(responder, initiator.send_data(b"one too many"))
    assert isinstance(error, RecordError) and more == []


# -- the same attacks against a real host ---------------------------------------------------------
#
# The host's connection carries multiplexing frames in its byte stream; the raw peer seals genuine
# frames (a message on its logical stream) in records it then tampers with, so that the record
# layer alone is at fault. A record-layer error ends the shared connection: every logical stream
# on it raises ConnectionLost whose cause is the typed error.

HOST_CONFIG = StreamConfig(control_burst=16, control_rate=1.0)


def _frame_record(peer: RawPeer, payload: bytes) -> bytes:
    """A genuine record carrying a genuine frame: ``payload`` as a message on the peer's stream."""
    return peer.record(message_frame(peer.stream_id, payload))


def _flipped_tag(peer: RawPeer) -> bytes:
    record = _frame_record(peer, b"tampered")
    return flip_bit(record, len(record) * 8 - 1)


def _replayed(peer: RawPeer) -> bytes:
    record = _frame_record(peer, b"once")
    return record + record


def _dropped(peer: RawPeer) -> bytes:
    _frame_record(peer, b"lost")
    return _frame_record(peer, b"after the loss")


def _unknown_type(peer: RawPeer) -> bytes:
    return forged_sealer(peer.conn).seal(0x42, message_frame(peer.stream_id, b"what is this"))


def _ping_flood(peer: RawPeer) -> bytes:
    sealer = forged_sealer(peer.conn)
    return b"".join(flood_records(sealer, wire.PING, 20 * HOST_CONFIG.control_burst))


def _partial_record(peer: RawPeer) -> bytes:
    return _frame_record(peer, b"cut short")[:12]


def _no_close(peer: RawPeer) -> bytes:
    """A whole record (bytes on the stream's byte channel, which the handler does not read),
    then the cut."""
    return peer.record(message_frame(peer.stream_id, b"and then silence", flags=0))


def _partial_message(peer: RawPeer) -> bytes:
    """The first records of a record-layer message (the record layer still reassembles them;
    the host takes no whole message, but the cut comes first)."""
    return b"".join(records_of(peer.conn.send_message(bytes(40_000)))[:-1])


HOST_ATTACKS: dict[str, tuple[Callable[[RawPeer], bytes], type[ProtocolError], bool]] = {
    "flipped tag": (_flipped_tag, RecordError, False),
    "replayed record": (_replayed, RecordError, False),
    "dropped record": (_dropped, RecordError, False),
    "length above the maximum": (
        lambda _: wire.HEADER.pack(wire.MESSAGE_START, 1, 0xFFFF),
        RecordError,
        False,
    ),
    "length below the tag": (lambda _: wire.HEADER.pack(wire.DATA, 1, 15), RecordError, False),
    "unknown content type": (_unknown_type, RecordError, False),
    "ping flood": (_ping_flood, FloodError, False),
    "EOF in the middle of a record": (_partial_record, TruncatedError, True),
    "EOF without the close": (_no_close, TruncatedError, True),
    "EOF inside a message": (_partial_message, TruncatedError, True),
}


@pytest.mark.parametrize("attack", list(HOST_ATTACKS))
async def test_host_closes_only_the_attacked_connection(attack: str) -> None:
    """Every logical stream of the attacked connection fails with the same typed cause; another
    peer's connection is unaffected and the host serves newcomers."""
    make, expected, then_close = HOST_ATTACKS[attack]
    async with serving_host(config=HOST_CONFIG) as harness:
        bystander = await good_client(harness)
        peer = await raw_peer(harness)
        second = await peer.open()
        await harness.wait_accepted(3)
        await peer.echo(b"healthy")
        await peer.echo(b"also healthy", second)
        await peer.send(make(peer))
        if then_close:
            await peer.aclose()  # a plain TCP close: no authenticated CLOSE record
        failures = [await harness.next_failure(), await harness.next_failure()]
        for failure in failures:
            assert isinstance(failure, ConnectionLost)
            assert isinstance(failure.__cause__, expected), repr(failure.__cause__)
        assert failures[0].__cause__ is failures[1].__cause__  # the connection's one cause
        assert sorted(harness.received) == [b"also healthy", b"healthy"]  # nothing of the attack
        await peer.aclose()
        await bystander.send_message(b"unaffected")
        assert await bystander.receive_message() == b"unaffected"
        await bystander.aclose()
        await assert_host_serves(harness)


async def echo_bytes(harness: Harness, stream: LogicalStream) -> None:
    """A handler that only ever reads (and echoes) the byte stream, never messages."""
    while data := await stream.receive_some():
        harness.received.append(data)
        await stream.send_all(data)


async def test_host_refuses_a_record_layer_message_on_its_connection() -> None:
    """The host's connection carries only bytes (the frames): a whole record-layer message, even
    an empty one, is a protocol error that ends the connection (it used to wait, unread, until
    ``max_unread_bytes``; messages now travel in frames, per logical stream)."""
    config = StreamConfig(max_unread_bytes=4096, max_message_size=1024)
    async with serving_host(config=config, handler=echo_bytes) as harness:
        peer = await raw_peer(harness)
        await peer.send(peer.conn.send_message(b"") + peer.record(message_frame(1, b"end")))
        failure = await harness.next_failure()
        assert isinstance(failure, ConnectionLost)
        assert type(failure.__cause__) is ProtocolError
        assert "carries only bytes" in str(failure.__cause__)
        assert harness.received == []
        await peer.aclose()
        await assert_host_serves(harness, byte_stream=True)


async def test_host_streams_keep_working_across_key_updates(nonce_log: NonceLog) -> None:
    config = StreamConfig(key_update_after=4, hard_record_limit=6)
    async with serving_host(config=config) as harness:
        client = await good_client(harness)
        for index in range(30):
            await client.send_message(b"message %d" % index)
            assert await client.receive_message() == b"message %d" % index
        await client.aclose()
        nonce_log.assert_no_reuse()
        assert len(nonce_log.keys()) >= 4  # both sides rekeyed several times
        # A peer that ignores the threshold is closed at the hard limit.
        lazy = StreamConfig(key_update_after=50, hard_record_limit=51)
        peer = await raw_peer(harness, config=lazy)
        frames = [message_frame(peer.stream_id, b"%d" % i) for i in range(10)]
        await peer.send(b"".join(peer.record(frame) for frame in frames))
        failure = await harness.next_failure()
        assert isinstance(failure, ConnectionLost)
        assert isinstance(failure.__cause__, RecordError)
        await peer.aclose()
        await assert_host_serves(harness)


async def firehose(stream: LogicalStream) -> None:
    """Sends until the stream breaks."""
    chunk = bytes(64 * 1024)
    while True:
        await stream.send_all(chunk)


async def test_a_cut_while_the_host_is_writing_is_truncation_not_a_closed_transport() -> None:
    """The peer stops reading, so the host's writer waits on the socket; then the peer ends its
    side of TCP without the authenticated close. The connection's cause, for every logical
    stream, is the truncation, whichever of the host's reader and writer hears of it first (the
    reader drops the transport; the writer then found it closed and used to report that)."""
    async with serving_host() as harness:
        harness.host.serve_protocol("firehose/1", firehose)
        for _ in range(10):  # both orders of the reader's and the writer's wake-ups
            peer = await RawPeer.connect(harness.host, receive_buffer=4096)
            peer.mux.window = 64 * 1024 * 1024  # the host may send far more than the buffers hold
            await peer.handshake()
            await peer.open("firehose/1")
            connection = harness.host.connection(peer.identity.peer_id)
            assert connection is not None
            await settle(connection._output_full)  # its writer is stuck
            await peer.tcp.send_eof()
            await connection.wait_closed()
            assert isinstance(connection.cause, TruncatedError), repr(connection.cause)
            await peer.aclose()
        await assert_host_serves(harness)
