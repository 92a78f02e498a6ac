"""SecureStream and LogicalStream follow trio's stream contract (trio's own conformance suite)."""

from __future__ import annotations

import math

import trio
import trio.testing

import p2ptls
from p2ptls.testing import (
    connected_contexts,
    lockstep_secure_stream_pair,
    memory_secure_stream_pair,
    secure_stream_pair_over,
)
from tests.conftest import identity_pool


def _ids():
    pool = identity_pool()
    return pool[0], pool[1]


async def make_memory_pair():
    return memory_secure_stream_pair(identities=_ids())


async def make_lockstep_pair():
    return lockstep_secure_stream_pair(identities=_ids())


async def make_clogged_pair():
    # Over a lockstep transport, send_all blocks until the other side receives: "clogged".
    client, server = secure_stream_pair_over(
        trio.testing.lockstep_stream_pair(), connected_contexts(identities=_ids())
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    return client, server


async def test_half_closeable_stream_contract_memory():
    await trio.testing.check_half_closeable_stream(make_memory_pair, make_clogged_pair)


async def test_half_closeable_stream_contract_lockstep():
    await trio.testing.check_half_closeable_stream(make_lockstep_pair, make_clogged_pair)


async def test_logical_streams_follow_the_half_closeable_stream_contract(identities) -> None:
    # Over two real hosts: every pair is a new logical stream on the hosts' one connection.
    alice, bob = identities[0], identities[1]
    psk = p2ptls.generate_psk()
    bob_config = p2ptls.HostConfig(
        identity=bob, psk=psk, peers=[alice.record], listen=("127.0.0.1", 0)
    )
    async with p2ptls.open_host(bob_config) as bob_host:
        accepted_send, accepted = trio.open_memory_channel[p2ptls.LogicalStream](math.inf)
        bob_host.manager.deliver_protocol("contract/1", accepted_send.send_nowait)
        alice_config = p2ptls.HostConfig(identity=alice, psk=psk, peers=[bob_host.peer_record()])
        async with p2ptls.open_host(alice_config) as alice_host:

            async def make_pair():
                opened = await alice_host.open(bob.peer_id, "contract/1")
                return opened, await accepted.receive()

            await trio.testing.check_half_closeable_stream(make_pair, None)
            assert len(alice_host.connections) == 1
