"""Testing your own protocol code against a SecureStream, without sockets.

p2ptls.testing.memory_secure_stream_pair() returns two connected secure streams over trio's
in-memory streams, as trio.testing.memory_stream_pair() does for plain streams.

Run it as written:  python examples/testing_your_code.py
"""

from __future__ import annotations

import trio

from p2ptls.testing import memory_secure_stream_pair


async def uppercase_server(stream: trio.abc.Stream) -> None:
    """The code under test: reads bytes until EOF and answers in upper case."""
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    await stream.send_all(data.upper())


async def main() -> bytes:
    client, server = memory_secure_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(uppercase_server, server)
        await client.send_all(b"secure streams are just streams")
        await client.send_eof()  # an authenticated half-close
        answer = await client.receive_some()
    print(answer.decode())
    return answer


if __name__ == "__main__":
    trio.run(main)
