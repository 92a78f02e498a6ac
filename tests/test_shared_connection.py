"""The host's shared connections: retirement, dial deadlines."""

from __future__ import annotations

import pytest
import trio
import trio.testing

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


async def _hold_silently(tcp: trio.SocketStream) -> None:
    async with tcp:
        await trio.sleep_forever()


async def test_a_dial_that_never_completes_its_handshake_times_out_then_backs_off(
    identities, autojump_clock: trio.testing.MockClock
) -> None:
    alice, bob = identities[0], identities[1]
    psk = p2ptls.generate_psk()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    silent = bob.peer_record(address=("127.0.0.1", port))
    config = HostConfig(
        identity=alice,
        psk=psk,
        peers=[silent],
        connections=p2ptls.ConnectionConfig(dial_timeout=3.0, dial_backoff_initial=5.0),
    )
    async with trio.open_nursery() as nursery, open_host(config) as host:
        nursery.start_soon(trio.serve_listeners, _hold_silently, listeners)
        start = trio.current_time()
        with pytest.raises(TimeoutError, match="dial_timeout"):
            await host.open(bob.peer_id, "echo/1")
        assert trio.current_time() - start == pytest.approx(3.0)
        with pytest.raises(p2ptls.DialBackoff) as backing_off:
            await host.open(bob.peer_id, "echo/1")
        assert 3.75 <= backing_off.value.retry_after <= 6.25
        nursery.cancel_scope.cancel()


async def test_the_keepalive_measures_the_round_trip(
    identities, autojump_clock: trio.testing.MockClock
) -> None:
    alice, bob = identities[0], identities[1]
    psk = p2ptls.generate_psk()
    connections = p2ptls.ConnectionConfig(keepalive_interval=5.0)
    bob_config = HostConfig(
        identity=bob,
        psk=psk,
        peers=[alice.record],
        listen=("127.0.0.1", 0),
        connections=connections,
    )
    async with open_host(bob_config) as bob_host:
        bob_host.context.offload_private_key_operations = False  # no threads: the clock jumps
        bob_host.serve_protocol("echo/1", _echo)
        config = HostConfig(
            identity=alice, psk=psk, peers=[bob_host.peer_record()], connections=connections
        )
        async with open_host(config) as host:
            host.context.offload_private_key_operations = False
            async with await host.open(bob.peer_id, "echo/1") as stream:
                connection = stream.connection
                assert connection.rtt is not None  # the dial's first ping measured it
                first_ping = connection._liveness.last_ping
                await trio.sleep(11.0)  # virtual: a keepalive interval passes on both sides
                assert connection._liveness.last_ping != first_ping  # measured again
                assert 0.0 <= connection.rtt < 1.0


class _DropsAfterItsReply(trio.abc.Stream):
    """A responder's transport that goes dead once the Reply is sent: the initiator completes
    its side of the handshake, but the responder never completes its own."""

    def __init__(self, tcp: trio.SocketStream) -> None:
        self.tcp = tcp

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.tcp.send_all(data)
        await self.tcp.aclose()

    async def wait_send_all_might_not_block(self) -> None:
        await self.tcp.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.tcp.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.tcp.aclose()


async def test_a_dialled_connection_counts_only_once_the_peer_has_spoken(identities) -> None:
    alice, bob = identities[0], identities[1]
    psk = p2ptls.generate_psk()
    bob_context = p2ptls.SecurityContext(bob, psk, p2ptls.KnownPeers([alice.record]))

    async def half_handshake(tcp: trio.SocketStream) -> None:
        secure = p2ptls.SecureStream(_DropsAfterItsReply(tcp), bob_context, server_side=True)
        with pytest.raises(trio.BrokenResourceError):
            await secure.do_handshake()
        await trio.aclose_forcefully(secure)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    config = HostConfig(
        identity=alice, psk=psk, peers=[bob.peer_record(address=("127.0.0.1", port))]
    )
    async with trio.open_nursery() as nursery, open_host(config) as host:
        nursery.start_soon(trio.serve_listeners, half_handshake, listeners)
        events = host.peer_events()
        with pytest.raises(p2ptls.ConnectionLost, match="before the peer answered"):
            await host.open(bob.peer_id, "echo/1")
        assert host.connections == ()
        with pytest.raises(trio.WouldBlock):
            events.receive_nowait()  # no PeerConnected for a connection bob never completed
        nursery.cancel_scope.cancel()
