"""A retired connection (GOAWAY) lets its streams finish on both ends, then closes."""

from __future__ import annotations

import trio

import p2ptls
from p2ptls import HostConfig, open_host
from p2ptls._mux_wire import GoAwayCode
from p2ptls.connections import ConnectionRetired


async def _echo(stream: p2ptls.LogicalStream) -> None:
    async for message in stream.messages():
        await stream.send_message(message)


async def test_streams_on_a_retired_connection_go_on_until_they_end(identities) -> None:
    alice, bob = identities[0], identities[1]
    psk = p2ptls.generate_psk()
    bob_config = HostConfig(identity=bob, psk=psk, peers=[alice.record], listen=("127.0.0.1", 0))
    async with open_host(bob_config) as bob_host:
        bob_host.serve_protocol("echo/1", _echo)
        alice_config = HostConfig(identity=alice, psk=psk, peers=[bob_host.peer_record()])
        async with open_host(alice_config) as alice_host:
            stream = await alice_host.open(bob.peer_id, "echo/1")
            connection = stream.connection
            connection.retire(GoAwayCode.REPLACED)
            # Both ends know it is retiring once the GOAWAY went round.
            assert await stream.ping() >= 0
            assert bob_host.connection(alice.peer_id) is None
            assert not connection.accepts_new_streams
            await stream.send_message(b"still here")
            assert await stream.receive_message() == b"still here"
            await stream.aclose()
            with trio.fail_after(10):
                await connection.wait_closed()
            assert isinstance(connection.cause, ConnectionRetired)
            # The next open dials a new connection.
            again = await alice_host.open(bob.peer_id, "echo/1")
            assert again.connection is not connection
            await again.send_message(b"new")
            assert await again.receive_message() == b"new"
            await again.aclose()
