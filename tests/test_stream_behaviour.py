"""What a user of SecureStream relies on: bytes, messages, half-close, session facts, limits."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import p2ptls
import p2ptls._connection
import p2ptls.config
from p2ptls import StreamConfig
from p2ptls.testing import memory_secure_stream_pair


@pytest.fixture
def pair(pair_identities):
    return memory_secure_stream_pair(identities=pair_identities)


async def _both_handshake(client, server) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)


async def test_explicit_handshake_authenticates_both_sides(pair, pair_identities) -> None:
    client, server = pair
    with pytest.raises(trio.NeedHandshakeError):
        _ = client.remote_peer
    await _both_handshake(client, server)
    assert client.remote_peer.peer_id == pair_identities[1].peer_id
    assert server.remote_peer.peer_id == pair_identities[0].peer_id
    assert client.session_id == server.session_id
    a = client.export_keying_material("test", b"ctx", 32)
    assert a == server.export_keying_material("test", b"ctx", 32)
    assert a != client.export_keying_material("test", b"other", 32)
    await client.do_handshake()  # a second call is a no-op


@pytest.mark.parametrize("size", [0, 1, 16383, 16384, 16385, 100_000, 1 << 20])
async def test_messages_keep_their_boundaries(pair, size: int) -> None:
    client, server = pair
    messages = [bytes([i % 251]) * size for i in range(3)]
    async with trio.open_nursery() as nursery:

        async def send() -> None:
            for message in messages:
                await client.send_message(message)

        nursery.start_soon(send)
        for message in messages:
            assert await server.receive_message() == message


async def test_maximum_size_message_and_above(pair_identities) -> None:
    config = StreamConfig(max_message_size=1 << 20)
    client, server = memory_secure_stream_pair(config=config, identities=pair_identities)
    big = bytes(range(256)) * 4096
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_message, big)
        assert await server.receive_message() == big
    with pytest.raises(ValueError, match="max_message_size"):
        await client.send_message(big + b"x")


async def test_bytes_and_messages_interleave(pair) -> None:
    client, server = pair
    async with trio.open_nursery() as nursery:

        async def send() -> None:
            await client.send_all(b"abc")
            await client.send_message(b"M1")
            await client.send_all(b"def")
            await client.send_message(b"M2")
            await client.send_eof()

        nursery.start_soon(send)
        assert await server.receive_message() == b"M1"
        assert await server.receive_message() == b"M2"
        data = b""
        while chunk := await server.receive_some():
            data += chunk
        assert data == b"abcdef"
        with pytest.raises(trio.EndOfChannel):
            await server.receive_message()


async def test_half_close_lets_the_other_direction_continue(pair) -> None:
    client, server = pair
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, b"request")
        assert await server.receive_some() == b"request"
    await client.send_eof()
    await client.send_eof()  # idempotent
    assert await server.receive_some() == b""
    with pytest.raises(trio.ClosedResourceError):
        await client.send_all(b"more")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.send_all, b"response")
        assert await client.receive_some() == b"response"


async def test_receive_some_respects_max_bytes(pair) -> None:
    client, server = pair
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, b"0123456789")
        first = await server.receive_some(4)
    rest = b""
    while len(first + rest) < 10:
        rest += await server.receive_some(4)
    assert first == b"0123" and first + rest == b"0123456789"


async def test_mtu_limits_record_size(pair_identities) -> None:
    config = StreamConfig(mtu=1280)
    client, server = memory_secure_stream_pair(config=config, identities=pair_identities)
    await _both_handshake(client, server)
    wire_bytes = client._conn.send_message(b"z" * 50_000)
    # Walk the records: each one fits in a single TCP segment on a 1280-byte path.
    offset, records = 0, 0
    while offset < len(wire_bytes):
        length = int.from_bytes(wire_bytes[offset + 2 : offset + 4], "big")
        assert 4 + length <= 1280 - p2ptls.config.IP_TCP_OVERHEAD
        offset += 4 + length
        records += 1
    assert offset == len(wire_bytes) and records == -(-50_004 // config.record_payload)
    events = server._conn.receive_data_untrusted(wire_bytes)
    assert [e.data for e in events if isinstance(e, p2ptls._connection.MessageReceived)] == [
        b"z" * 50_000
    ]


async def test_key_update_is_transparent(pair_identities) -> None:
    config = StreamConfig(key_update_after=8, hard_record_limit=16, record_size=1024)
    client, server = memory_secure_stream_pair(config=config, identities=pair_identities)
    payload = bytes(range(256)) * 400  # 100 records of 1 KiB: a dozen key updates
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, payload)
        received = b""
        while len(received) < len(payload):
            received += await server.receive_some()
    assert received == payload
    assert client._conn._sealer is not None and client._conn._sealer.generation >= 12
    assert server._conn._opener is not None
    assert server._conn._opener.generation == client._conn._sealer.generation


async def test_ping_measures_a_round_trip(pair) -> None:
    client, server = pair
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            while await server.receive_some():
                pass

        nursery.start_soon(serve)
        rtt = await client.ping()
        assert rtt >= 0
        await client.send_eof()


async def test_aclose_sends_goodbye_and_closes(pair) -> None:
    client, server = pair
    await _both_handshake(client, server)
    await client.aclose()
    await client.aclose()  # idempotent
    assert await server.receive_some() == b""
    with pytest.raises(trio.ClosedResourceError):
        await client.receive_some()


async def test_concurrent_senders_are_refused(pair) -> None:
    client, server = pair
    await _both_handshake(client, server)
    with pytest.RaisesGroup(trio.BusyResourceError):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, b"x" * (1 << 20))
            nursery.start_soon(client.send_message, b"y")


async def test_pongs_interleave_with_a_large_message_in_sequence_order(pair) -> None:
    """The receive side answers pings while the same stream is in the middle of sending a large
    message: the pong records must reach the wire in sequence order between the fragments."""
    client, server = pair
    message = bytes(range(256)) * (16 * 1024)  # 4 MiB: many chunks of records
    pings_done = trio.Event()
    async with trio.open_nursery() as nursery:

        async def client_receives() -> None:  # its pump answers the server's pings
            assert await client.receive_some() == b""

        async def server_pings() -> None:
            for _ in range(5):
                await server.ping()
            pings_done.set()

        nursery.start_soon(client_receives)
        nursery.start_soon(client.send_message, message)
        nursery.start_soon(server_pings)
        assert await server.receive_message() == message
        await pings_done.wait()
        await server.send_eof()


async def test_a_cancelled_ping_leaves_no_waiter_behind(pair) -> None:
    client, server = pair
    await _both_handshake(client, server)
    with trio.move_on_after(0.01):  # nobody on the server side reads, so no pong ever comes
        await client.ping()
    assert client._pongs == {}


async def test_ping_after_the_peer_closed_is_an_error(pair) -> None:
    client, server = pair
    await _both_handshake(client, server)
    await server.send_eof()
    assert await client.receive_some() == b""
    with pytest.raises(trio.BrokenResourceError):
        await client.ping()
    assert client._pongs == {}
