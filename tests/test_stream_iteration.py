"""``async for`` over a SecureStream: byte chunks like any trio stream; messages on request."""

from __future__ import annotations

import trio

from p2ptls.testing import memory_secure_stream_pair


async def _collect_bytes(stream: trio.abc.ReceiveStream) -> bytes:
    """Generic trio code: read any ReceiveStream to its end by iterating over it."""
    return b"".join([chunk async for chunk in stream])


async def test_iterating_a_stream_yields_the_byte_stream_until_eof(pair_identities) -> None:
    client, server = memory_secure_stream_pair(identities=pair_identities)
    payload = bytes(range(256)) * 1000
    received: list[bytes] = []

    async def receive() -> None:
        received.append(await _collect_bytes(server))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await client.send_all(payload[:1000])
        await client.send_message(b"a message is not part of the byte stream")
        await client.send_all(payload[1000:])
        await client.send_eof()
    assert received == [payload]
    assert await server.receive_message() == b"a message is not part of the byte stream"


async def test_messages_iterates_over_whole_messages_until_close(pair_identities) -> None:
    client, server = memory_secure_stream_pair(identities=pair_identities)
    sent = [b"one", b"", b"three" * 1000]
    received: list[bytes] = []

    async def receive() -> None:
        async for message in server.messages():
            received.append(message)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        for message in sent:
            await client.send_message(message)
        await client.send_all(b"bytes are not messages")
        await client.send_eof()
    assert received == sent
    assert await server.receive_some() == b"bytes are not messages"
