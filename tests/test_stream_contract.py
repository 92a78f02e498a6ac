"""SecureStream follows trio's stream contract, checked by trio's own conformance suite."""

from __future__ import annotations

import trio
import trio.testing

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
