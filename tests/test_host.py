"""The host over real sockets on 127.0.0.1: connect, incoming, serve, policy, shutdown."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import p2ptls
import p2ptls.testing
from p2ptls import HostConfig, open_host
from p2ptls.host import _source_key


def _config(identity, psk, peers=(), listen=("127.0.0.1", 0), **options) -> HostConfig:
    return HostConfig(identity=identity, psk=psk, peers=tuple(peers), listen=listen, **options)


async def test_connect_and_incoming_exchange_messages_and_bytes(identities) -> None:
    alice, bob = identities[0], identities[1]
    psk = p2ptls.generate_psk()
    async with (
        open_host(_config(bob, psk, [alice.record])) as bob_host,
        open_host(_config(alice, psk, [bob.record], listen=None)) as alice_host,
    ):
        bob_record = bob_host.peer_record("bob")
        async with trio.open_nursery() as nursery:

            async def answer() -> None:
                async for stream in bob_host.incoming():
                    assert stream.remote_peer.peer_id == alice.peer_id
                    message = await stream.receive_message()
                    await stream.send_message(message.upper())
                    await stream.send_all(b"bytes too")
                    await stream.send_eof()
                    return

            nursery.start_soon(answer)
            stream = await alice_host.connect(bob_record)
            assert stream.remote_peer.peer_id == bob.peer_id
            assert stream.cipher_suite == p2ptls.CIPHER_SUITE
            await stream.send_message(b"hello bob")
            assert await stream.receive_message() == b"HELLO BOB"
            received = b""
            while chunk := await stream.receive_some():
                received += chunk
            assert received == b"bytes too"


async def test_connect_by_peer_id_uses_the_known_address(identities) -> None:
    alice, bob = identities[0], identities[1]
    psk = p2ptls.generate_psk()

    async def echo(stream: p2ptls.LogicalStream) -> None:
        async for message in stream.messages():
            await stream.send_message(message)

    async with trio.open_nursery() as nursery:
        bob_host = await nursery.start(p2ptls.serve, echo, _config(bob, psk, [alice.record]))
        config = _config(alice, psk, [bob_host.peer_record()], listen=None)
        async with open_host(config) as alice_host:
            stream = await alice_host.connect(bob.peer_id)
            await stream.send_message(b"x" * 100_000)
            assert await stream.receive_message() == b"x" * 100_000
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_unknown_peer_is_refused_and_host_keeps_serving(identities) -> None:
    alice, bob, mallory = identities[0], identities[1], identities[2]
    psk = p2ptls.generate_psk()
    served = []

    async def handler(stream: p2ptls.LogicalStream) -> None:
        served.append(stream.remote_peer.peer_id)
        await stream.send_message(b"welcome")

    async with trio.open_nursery() as nursery:
        bob_host = await nursery.start(p2ptls.serve, handler, _config(bob, psk, [alice.record]))
        # Mallory holds the network key and knows bob, but bob does not know mallory. As with a
        # TLS 1.3 client certificate, she completes her side; bob's refusal then arrives sealed
        # under keys only she can derive.
        async with open_host(_config(mallory, psk, [bob_host.peer_record()], listen=None)) as host:
            with pytest.raises(p2ptls.ConnectionLost) as failure:
                await host.connect(bob.peer_id)
            assert isinstance(failure.value.__cause__, p2ptls.PeerRefused)
        async with open_host(_config(alice, psk, [bob_host.peer_record()], listen=None)) as host:
            stream = await host.connect(bob.peer_id)
            assert await stream.receive_message() == b"welcome"
        assert served == [alice.peer_id]
        assert bob_host.handshake_failures == 1
        nursery.cancel_scope.cancel()


async def test_wrong_network_key_is_refused_without_private_key_work(identities) -> None:
    alice, bob = identities[0], identities[1]

    async def handler(stream: p2ptls.LogicalStream) -> None:
        raise AssertionError("no stream may be delivered")

    async with trio.open_nursery() as nursery:
        config = _config(bob, p2ptls.generate_psk(), [alice.record])
        bob_host = await nursery.start(p2ptls.serve, handler, config)
        other = _config(alice, p2ptls.generate_psk(), [bob_host.peer_record()], listen=None)
        async with open_host(other) as host:
            with pytest.raises(trio.BrokenResourceError):
                await host.connect(bob.peer_id)
        assert bob_host.context.private_key_operations == 0
        nursery.cancel_scope.cancel()


async def test_admission_policy_admits_network_members(identities) -> None:
    alice, bob = identities[0], identities[1]
    psk = p2ptls.generate_psk()
    bob_config = _config(bob, psk, admission=p2ptls.admit_network_members)
    async with open_host(bob_config) as bob_host:
        alice_config = _config(alice, psk, [bob_host.peer_record()], listen=None)
        async with open_host(alice_config) as host, trio.open_nursery() as nursery:

            async def accept() -> None:
                async for stream in bob_host.incoming():
                    await stream.send_message(stream.remote_peer.peer_id.digest)
                    return

            nursery.start_soon(accept)
            stream = await host.connect(bob.peer_id)
            assert await stream.receive_message() == alice.peer_id.digest
        assert [r.peer_id for r in bob_host.context.peers.admitted] == [alice.peer_id]


async def test_leaving_the_host_closes_its_streams(identities) -> None:
    alice, bob = identities[0], identities[1]
    psk = p2ptls.generate_psk()
    async with open_host(_config(bob, psk, [alice.record])) as bob_host:
        async with open_host(_config(alice, psk, [bob_host.peer_record()], listen=None)) as host:
            stream = await host.connect(bob.peer_id)
            server_stream = await bob_host.incoming().__anext__()
        # Alice's host closed: her stream is closed, and bob sees an authenticated goodbye.
        with pytest.raises(trio.ClosedResourceError):
            await stream.send_all(b"late")
        assert await server_stream.receive_some() == b""


async def test_replay_state_is_persisted(identities, tmp_path) -> None:
    alice, bob = identities[0], identities[1]
    psk = p2ptls.generate_psk()
    state = tmp_path / "replay.json"
    config = _config(bob, psk, [alice.record], replay_state_path=str(state))
    async with open_host(config) as bob_host:
        async with open_host(_config(alice, psk, [bob_host.peer_record()], listen=None)) as host:
            await host.connect(bob.peer_id)
            await bob_host.incoming().__anext__()
        newest = bob_host.context.replay_guard.newest(alice.peer_id)
    assert newest is not None
    assert state.stat().st_mode & 0o777 == 0o600
    assert p2ptls.ReplayGuard(state).newest(alice.peer_id) == newest


async def test_private_key_operations_are_rate_limited(identities, autojump_clock) -> None:
    """With a rate limit, a burst of handshakes is spread out: the clock (autojump) must advance
    by at least the time the bucket needs to refill, and every handshake still completes."""
    alice, bob = identities[0], identities[1]
    psk = p2ptls.generate_psk()
    server = p2ptls.SecurityContext(
        bob,
        psk,
        p2ptls.KnownPeers([alice.record]),
        max_private_key_operations_per_s=2.0,
        offload_private_key_operations=False,
    )
    client = p2ptls.SecurityContext(
        alice, psk, p2ptls.KnownPeers([bob.record]), offload_private_key_operations=False
    )
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(6):
            client_stream, server_stream = p2ptls.testing.secure_stream_pair_over(
                trio.testing.memory_stream_pair(), (client, server)
            )
            nursery.start_soon(client_stream.do_handshake)
            nursery.start_soon(server_stream.do_handshake)
    assert server.private_key_operations == 6
    # Two tokens at the start, then one every half second for the other four.
    assert trio.current_time() - start >= 2.0


def test_per_source_bound_counts_ipv6_by_prefix() -> None:
    assert _source_key("192.0.2.7") == "192.0.2.7"
    assert _source_key("2001:db8:1:2:aaaa::1") == _source_key("2001:db8:1:2:bbbb::9")
    assert _source_key("2001:db8:1:2::1") != _source_key("2001:db8:1:3::1")
    assert _source_key("::ffff:192.0.2.7") == "192.0.2.7"
