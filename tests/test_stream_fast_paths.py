"""The stream's fast paths: one-pass sealing of a write, DATA records parsed straight into the
caller's list, raw socket calls on TCP, and the inline send and pump paths of SecureStream.

Each fast path must behave exactly as the general one: the same bytes on the wire, the same
plaintext in the same order however the transport cuts the records, and the same error (type and
message) for a bad record, after which only that connection is failed.
"""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from p2ptls import LocalProtocolError, ProtocolError, RecordError, SecureStream, StreamConfig
from p2ptls import _wire as wire
from p2ptls._connection import Connection, DataReceived, Event, HandshakeState, MessageReceived
from p2ptls._connection_send import SEND_CHUNK
from p2ptls._fragments import ReassemblyBudget
from p2ptls.testing import connected_contexts, secure_stream_pair_over
from tests.hostile_support import established_pair

SMALL = StreamConfig(record_size=256)  # many records from few bytes


def pattern(size: int, salt: int = 0) -> bytes:
    return bytes((index * 31 + salt) % 256 for index in range(size))


def feed(conn: Connection, *pieces: bytes) -> tuple[list[bytes], list[Event]]:
    """Feed ``pieces`` one receive at a time through the bulk path; what came out."""
    chunks: list[bytes] = []
    events: list[Event] = []
    for piece in pieces:
        events += conn.receive_records_untrusted(memoryview(piece), 0.0, chunks)
    return chunks, events


def seal_at_once(conn: Connection, data: bytes) -> bytes:
    records = conn.seal_data_at_once(data)
    assert records is not None
    return bytes(records)


# -- sealing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 255, 256, 257, 1000, 4096])
def test_sealing_at_once_puts_the_same_bytes_on_the_wire(size: int) -> None:
    # Two reproducible sessions with the same keys: the one-pass sealer and the chunked one must
    # produce identical records (the wire does not change).
    one, _ = established_pair(initiator_config=SMALL, responder_config=SMALL)
    other, _ = established_pair(initiator_config=SMALL, responder_config=SMALL)
    for salt in range(3):
        data = pattern(size, salt)
        assert seal_at_once(one, data) == other.send_data(data)


def test_sealing_at_once_inserts_key_updates_where_due() -> None:
    config = StreamConfig(record_size=256, key_update_after=3, hard_record_limit=4)
    one, receiver = established_pair(initiator_config=config, responder_config=config)
    other, _ = established_pair(initiator_config=config, responder_config=config)
    sent = []
    for size in (10, 700, 256, 1, 2000):
        data = pattern(size, size)
        flight = seal_at_once(one, data)
        assert flight == other.send_data(data)
        sent.append(data)
        chunks, events = feed(receiver, flight)
        assert b"".join(chunks) == data and not events
    assert one._sealer is not None and one._sealer.generation > 0


def test_sealing_at_once_defers_to_the_chunked_path_when_records_are_owed() -> None:
    initiator, responder = established_pair()
    responder.receive_data_untrusted(initiator.send_ping(bytes(8)))
    assert responder.has_pending_output  # a pong is owed: it must go first, so...
    assert responder.seal_data_at_once(b"data") is None  # ...nothing is sealed here
    assert responder._sealer is not None and responder._sealer.sequence == 0
    flight = b"".join(bytes(chunk) for chunk in responder.seal_data(b"data"))
    events = initiator.receive_data_untrusted(flight)
    assert [type(event).__name__ for event in events].count("PongReceived") == 1
    assert [event.data for event in events if isinstance(event, DataReceived)] == [b"data"]


def test_sealing_at_once_refuses_more_than_a_chunk() -> None:
    initiator, _ = established_pair()
    with pytest.raises(ValueError):
        initiator.seal_data_at_once(bytes(SEND_CHUNK + 1))


def test_the_send_buffer_grows_to_fit_a_write() -> None:
    initiator, _ = established_pair()
    initiator.seal_data_at_once(bytes(100))
    small = len(initiator._send_buffer)
    assert small < 1024
    initiator.seal_data_at_once(bytes(40_000))
    assert len(initiator._send_buffer) < 2 * 40_000  # not four times the write


# -- receiving runs of records ---------------------------------------------------------------------


def test_many_records_in_one_receive_come_out_in_order() -> None:
    initiator, responder = established_pair(initiator_config=SMALL, responder_config=SMALL)
    writes = [pattern(size, size) for size in (1, 252, 253, 256, 257, 999, 3000, 5)]
    flight = b"".join(seal_at_once(initiator, data) for data in writes)
    message = pattern(2000, 9)
    flight += initiator.send_message(message) + seal_at_once(initiator, b"tail")
    chunks, events = feed(responder, flight)
    assert b"".join(chunks) == b"".join(writes) + b"tail"
    assert all(len(chunk) <= 256 for chunk in chunks)
    assert [event.data for event in events if isinstance(event, MessageReceived)] == [message]
    assert not any(isinstance(event, DataReceived) for event in events)


def test_without_a_list_byte_stream_records_are_still_events() -> None:
    initiator, responder = established_pair(initiator_config=SMALL, responder_config=SMALL)
    flight = seal_at_once(initiator, pattern(600))
    events = responder.receive_data_untrusted(flight)
    assert [type(event) for event in events] == [DataReceived] * 3
    assert b"".join(event.data for event in events if isinstance(event, DataReceived)) == (
        pattern(600)
    )


def _mixed_flight(initiator: Connection) -> tuple[bytes, bytes, bytes]:
    """Byte-stream data, a message spanning three records, more data: (flight, data, message)."""
    first, message, last = pattern(300, 1), pattern(600, 2), pattern(5, 3)
    flight = seal_at_once(initiator, first) + initiator.send_message(message)
    flight += seal_at_once(initiator, last)
    return flight, first + last, message


def test_a_flight_split_at_every_byte_boundary_gives_the_same_result() -> None:
    initiator, responder = established_pair(initiator_config=SMALL, responder_config=SMALL)
    size = len(_mixed_flight(initiator)[0])
    assert feed(responder, _mixed_flight(initiator)[0][:0]) == ([], [])  # nothing happens
    initiator, responder = established_pair(initiator_config=SMALL, responder_config=SMALL)
    for cut in range(size + 1):
        flight, data, message = _mixed_flight(initiator)
        assert len(flight) == size
        chunks, events = feed(responder, flight[:cut], flight[cut:])
        assert b"".join(chunks) == data, cut
        assert [event.data for event in events if isinstance(event, MessageReceived)] == [message]
        assert not responder._buffer


def test_a_flight_fed_a_byte_at_a_time() -> None:
    initiator, responder = established_pair(initiator_config=SMALL, responder_config=SMALL)
    flight, data, message = _mixed_flight(initiator)
    chunks, events = feed(responder, *(flight[index : index + 1] for index in range(len(flight))))
    assert b"".join(chunks) == data
    assert [event.data for event in events if isinstance(event, MessageReceived)] == [message]


def test_random_cuts_of_a_long_run() -> None:
    initiator, responder = established_pair()
    rng = random.Random(7)
    writes = [rng.randbytes(rng.randrange(1, 70_000)) for _ in range(20)]
    flight = b"".join(seal_at_once(initiator, data) for data in writes)
    cuts = sorted(rng.sample(range(1, len(flight)), 40))
    pieces = [flight[a:b] for a, b in zip([0, *cuts], [*cuts, len(flight)], strict=True)]
    chunks, events = feed(responder, *pieces)
    assert b"".join(chunks) == b"".join(writes) and not events


# -- a bad record in the middle of a run -----------------------------------------------------------


def _tampered_run() -> tuple[Connection, Connection, bytes, int]:
    """A run of five DATA records whose third has one bit of its tag flipped."""
    initiator, responder = established_pair(initiator_config=SMALL, responder_config=SMALL)
    records = [seal_at_once(initiator, pattern(200, salt)) for salt in range(5)]
    third = bytearray(records[2])
    third[-1] ^= 1
    records[2] = bytes(third)
    return initiator, responder, b"".join(records), len(records[0]) * 2


@pytest.mark.parametrize("bulk", [True, False])
def test_a_bad_tag_mid_run_fails_the_connection_with_the_usual_error(bulk: bool) -> None:
    _, responder, flight, _ = _tampered_run()
    with pytest.raises(RecordError, match="record failed authentication"):
        if bulk:
            responder.receive_records_untrusted(flight, 0.0, [])
        else:
            responder.receive_data_untrusted(flight)
    assert responder.state is HandshakeState.FAILED
    with pytest.raises(LocalProtocolError, match="already failed"):
        responder.receive_records_untrusted(b"", 0.0, [])


def test_a_bad_tag_split_across_receives_fails_at_the_same_record() -> None:
    _, responder, flight, good = _tampered_run()
    chunks: list[bytes] = []
    responder.receive_records_untrusted(flight[: good + 3], 0.0, chunks)
    assert b"".join(chunks) == pattern(200, 0) + pattern(200, 1)  # the good records came out
    with pytest.raises(RecordError, match="record failed authentication"):
        responder.receive_records_untrusted(flight[good + 3 :], 0.0, chunks)
    assert responder.state is HandshakeState.FAILED


def test_a_bad_record_fails_only_its_own_connection() -> None:
    budget = ReassemblyBudget()
    _, victim, flight, _ = _tampered_run()
    initiator, bystander = established_pair(
        initiator_config=SMALL, responder_config=SMALL, budget=budget, seed=b"other"
    )
    half = initiator.send_message(pattern(1000))
    feed(bystander, half[: len(half) // 2])
    with pytest.raises(RecordError):
        feed(victim, flight)
    chunks, events = feed(bystander, half[len(half) // 2 :], seal_at_once(initiator, b"ok"))
    assert chunks == [b"ok"] and [type(event) for event in events] == [MessageReceived]
    assert bystander.state is HandshakeState.ESTABLISHED


@pytest.mark.parametrize(
    ("header", "error"),
    [
        (bytes([wire.DATA, wire.PROTOCOL_VERSION + 1, 0, 40]), "unsupported protocol version"),
        (bytes([wire.DATA, wire.PROTOCOL_VERSION, 0, 15]), "length out of range"),
        (bytes([wire.DATA, wire.PROTOCOL_VERSION, 0xFF, 0x01]), "length out of range"),
        (bytes([0x42, wire.PROTOCOL_VERSION, 0, 40]), "unknown content type"),
    ],
)
def test_bad_headers_after_good_records_get_the_general_errors(header: bytes, error: str) -> None:
    initiator, responder = established_pair()
    good = seal_at_once(initiator, b"fine")
    chunks: list[bytes] = []
    with pytest.raises(RecordError, match=error):
        responder.receive_records_untrusted(good + header + bytes(64), 0.0, chunks)
    assert responder.state is HandshakeState.FAILED


def test_an_empty_data_record_is_refused_as_before() -> None:
    initiator, responder = established_pair()
    assert initiator._sealer is not None
    empty = initiator._sealer.seal(wire.DATA, b"")
    with pytest.raises(ProtocolError, match="empty data record"):
        responder.receive_records_untrusted(empty, 0.0, [])


def test_data_after_the_peers_close_is_refused_as_before() -> None:
    initiator, responder = established_pair()
    assert initiator._sealer is not None
    close = initiator.send_eof()
    late = initiator._sealer.seal(wire.DATA, b"late")
    with pytest.raises(ProtocolError, match="after the peer's close"):
        responder.receive_records_untrusted(close + late, 0.0, [])


# -- SecureStream over TCP (the raw socket paths) --------------------------------------------------


async def tcp_secure_streams(
    config: StreamConfig | None = None,
) -> tuple[SecureStream, SecureStream, trio.SocketStream]:
    """A client and a server stream over TCP on 127.0.0.1 (no handshake yet), and the server's
    TCP stream."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client_tcp = await trio.open_tcp_stream("127.0.0.1", port)
    server_tcp = await listeners[0].accept()
    await listeners[0].aclose()
    client, server = secure_stream_pair_over(
        (client_tcp, server_tcp), connected_contexts(config=config)
    )
    assert client._raw_socket is not None and server._raw_socket is not None
    assert isinstance(server_tcp, trio.SocketStream)
    return client, server, server_tcp


def receive_buffer_size(stream: SecureStream) -> int:
    assert stream._receive_buffer is not None
    return len(stream._receive_buffer)


async def tcp_secure_pair(config: StreamConfig | None = None) -> tuple[SecureStream, SecureStream]:
    client, server, _ = await tcp_secure_streams(config)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    return client, server


async def test_writes_of_every_size_arrive_intact_over_tcp() -> None:
    client, server = await tcp_secure_pair(StreamConfig(record_size=1000))
    rng = random.Random(3)
    writes = [rng.randbytes(size) for size in (1, 64, 999, 1000, 1001, 65_536, 300_000, 7)]
    expected = b"".join(writes)
    received = bytearray()

    async def receive() -> None:
        while len(received) < len(expected):
            chunk = await server.receive_some(rng.choice([1, 100, 65_536]))
            assert chunk
            received.extend(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        for data in writes:
            await client.send_all(data)
    assert bytes(received) == expected
    await client.aclose()
    assert await server.receive_some() == b""
    await server.aclose()


async def test_round_trips_and_messages_over_tcp() -> None:
    client, server = await tcp_secure_pair(StreamConfig(record_size=256))

    async def echo() -> None:
        async for message in server.messages():
            await server.send_message(message)
            await server.send_all(message[:64])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo)
        for size in (0, 1, 64, 252, 253, 1000, 100_000):
            message = pattern(size, size)
            await client.send_message(message)
            assert await client.receive_message() == message
            head = message[:64]
            got = b""
            while len(got) < len(head):
                got += await client.receive_some()
            assert got == head
        await client.send_eof()
    await client.aclose()
    await server.aclose()


async def test_concurrent_senders_still_conflict_on_the_fast_path() -> None:
    client, server = await tcp_secure_pair()
    seen: list[type[BaseException]] = []

    async def sender() -> None:
        try:
            for _ in range(50):
                await client.send_all(b"x" * 64)
        except trio.BusyResourceError as exc:
            seen.append(type(exc))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        nursery.start_soon(sender)
    assert seen == [trio.BusyResourceError]
    await client.aclose()
    await server.aclose()


async def test_a_send_cancelled_before_it_starts_seals_nothing() -> None:
    client, server = await tcp_secure_pair()
    assert client._conn._sealer is not None
    sequence = client._conn._sealer.sequence
    with trio.CancelScope() as scope:
        scope.cancel()
        await client.send_all(b"never")
    assert client._conn._sealer.sequence == sequence
    await client.send_all(b"after")
    assert await server.receive_some() == b"after"
    await client.aclose()
    await server.aclose()


async def test_a_tampered_record_over_tcp_breaks_the_stream_with_the_record_error() -> None:
    client, server = await tcp_secure_pair()
    conn = client._conn
    await client.transport_stream.send_all(seal_at_once(conn, b"good"))
    assert await server.receive_some() == b"good"
    records = bytearray(seal_at_once(conn, b"fine") + seal_at_once(conn, b"bad"))
    records[-1] ^= 1
    await client.transport_stream.send_all(bytes(records))
    with pytest.raises(trio.BrokenResourceError) as caught:
        await server.receive_some()
    assert isinstance(caught.value.__cause__, RecordError)
    assert str(caught.value.__cause__) == "record failed authentication"
    await client.aclose()
    await server.aclose()


async def test_reads_across_record_boundaries_keep_the_unread_count_exact() -> None:
    client, server = await tcp_secure_pair(StreamConfig(record_size=256))
    data = pattern(5000, 4)
    await client.send_all(data)
    received = bytearray()
    for limit in (1, 255, 256, 257, 700, 3, 100_000):
        chunk = await server.receive_some(limit)
        assert 0 < len(chunk) <= limit
        received += chunk
        unread = sum(len(part) for part in server._bytes)
        assert server._bytes_size == unread + 64 * len(server._bytes)
        if len(received) == len(data):
            break
    while len(received) < len(data):
        received += await server.receive_some(10_000)
    assert bytes(received) == data and server._bytes_size == 0
    await client.aclose()
    await server.aclose()


async def test_tasks_calling_do_handshake_at_once_share_one_handshake() -> None:
    client, server, _ = await tcp_secure_streams()
    async with trio.open_nursery() as nursery:
        for _ in range(3):  # the others wait for the first, then return
            nursery.start_soon(client.do_handshake)
            nursery.start_soon(server.do_handshake)
    assert client.remote_peer and server.remote_peer
    assert client.session_id == server.session_id
    await client.send_all(b"after")
    assert await server.receive_some() == b"after"
    await client.aclose()
    await server.aclose()


async def test_a_waiting_do_handshake_sees_the_failure_of_the_one_running() -> None:
    client, _server, server_tcp = await tcp_secure_streams()
    errors: list[BaseException] = []

    async def handshake() -> None:
        try:
            await client.do_handshake()
        except trio.BrokenResourceError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(handshake)
        nursery.start_soon(handshake)
        await trio.testing.wait_all_tasks_blocked()
        await server_tcp.aclose()  # the responder's transport goes away without an answer
    assert len(errors) == 2  # the running one and the one that waited for it
    await client.aclose()


async def test_the_receive_buffer_is_allocated_by_the_first_read_after_the_handshake() -> None:
    client, server = await tcp_secure_pair()
    assert client._receive_buffer is None and server._receive_buffer is None  # handshake done
    await client.send_all(b"first")
    assert await server.receive_some() == b"first"
    assert receive_buffer_size(server) == 16 * 1024  # small at first (see the next tests)
    assert client._receive_buffer is None  # it has not read since its handshake
    await client.aclose()
    await server.aclose()


async def test_the_receive_buffer_starts_small_and_grows_while_reads_fill_it() -> None:
    client, server = await tcp_secure_pair(StreamConfig(record_size=1000))
    await client.send_all(b"small")
    assert await server.receive_some() == b"small"
    assert receive_buffer_size(server) == 16 * 1024  # a read that did not fill it
    received = bytearray()
    for round_size in (100_000, 400_000):
        data = pattern(round_size, 5)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, data)
            await trio.testing.wait_all_tasks_blocked()  # the writer is done or the socket full
            before = receive_buffer_size(server)
            chunk = await server.receive_some(1 << 20)  # one read, which fills the buffer
            assert receive_buffer_size(server) == min(4 * before, server.config.receive_size)
            received += chunk
            while len(received) < round_size:
                received += await server.receive_some(1 << 20)
        assert bytes(received) == data  # intact across the growth (records cut anywhere)
        received.clear()
    assert receive_buffer_size(server) == server.config.receive_size
    await client.aclose()
    await server.aclose()


async def test_the_receive_buffer_never_grows_beyond_a_small_receive_size() -> None:
    client, server = await tcp_secure_pair(StreamConfig(record_size=1000, receive_size=5000))
    data = pattern(200_000, 6)
    received = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, data)
        while len(received) < len(data):
            received += await server.receive_some()
    assert bytes(received) == data and receive_buffer_size(server) == 5000
    await client.aclose()
    await server.aclose()


async def test_a_goodbye_that_goes_out_at_once_ends_the_peers_stream_cleanly() -> None:
    client, server = await tcp_secure_pair()
    await client.send_all(b"last")
    await client.aclose()  # the goodbye is written at once, with no timeout scope
    assert await server.receive_some() == b"last"
    assert await server.receive_some() == b""  # the authenticated goodbye, not a truncation
    await server.aclose()


async def test_a_goodbye_into_a_full_socket_gives_up_after_its_second(autojump_clock) -> None:
    client, server = await tcp_secure_pair()
    raw = client._raw_socket
    assert raw is not None
    try:  # fill the client's socket buffers (the server does not read)
        while True:
            raw.send(bytes(65536))
    except BlockingIOError:
        pass
    start = trio.current_time()
    await client.aclose()  # nothing goes at once: the rest waits at most 1 s, then the close
    assert trio.current_time() - start == pytest.approx(1.0)
    await server.aclose()
