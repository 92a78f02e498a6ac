"""The host stays fair under connection floods: bounded handshake slots with fair eviction, a
first-flight deadline, and a fair backlog of verified streams.

Flooding sources are other loopback addresses (Linux routes all of 127.0.0.0/8 to ``lo``, so a
client can bind 127.0.0.N before it connects). Tests with real RSA handshakes run on the real
clock and wait for events, never for time; the first-flight tests need no private-key work and run
on the autojump clock.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
import trio.testing

import p2ptls
from p2ptls import HostConfig, open_host
from tests.host_harness import (
    assert_host_serves,
    read_record,
    receive_until_closed,
    serving_host,
    settle,
)
from tests.hostile_support import LOOPBACK, OTHER_NETWORK_KEY, SAFETY_NET, hello_of, make_initiator

FLOODERS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


def _config(identity, psk, peers=(), listen=(LOOPBACK, 0), **options) -> HostConfig:
    return HostConfig(identity=identity, psk=psk, peers=tuple(peers), listen=listen, **options)


@asynccontextmanager
async def _silent_connections(
    address: tuple[str, int], sources: list[str]
) -> AsyncIterator[list[trio.SocketStream]]:
    """One TCP connection from each of ``sources`` (in order) that never sends a byte."""
    connections: list[trio.SocketStream] = []
    try:
        for source in sources:
            connections.append(await trio.open_tcp_stream(*address, local_address=source))
        yield connections
    finally:
        for tcp in connections:
            await tcp.aclose()


async def test_a_flood_from_few_sources_does_not_lock_out_honest_peers(identities) -> None:
    """Silent connections from three sources fill every handshake slot and keep coming; an
    honest peer still completes its handshake, and an established stream keeps flowing."""
    alice, bob = identities[0], identities[1]
    psk = p2ptls.generate_psk()
    capacity, per_source = 8, 4
    # The first-flight deadline is far away: here eviction alone must make room.
    bob_config = _config(
        bob,
        psk,
        [alice.record],
        max_pending_handshakes=capacity,
        max_pending_per_address=per_source,
        first_flight_timeout=SAFETY_NET * 2,
    )
    with trio.fail_after(SAFETY_NET):
        async with (
            open_host(bob_config) as bob_host,
            open_host(_config(alice, psk, [bob_host.peer_record()], listen=None)) as alice_host,
        ):
            incoming = bob_host.incoming()
            established = await alice_host.connect(bob.peer_id)
            served = await incoming.__anext__()

            first_wave = [FLOODERS[i % 3] for i in range(3 * per_source)]  # 12 for 8 slots
            async with _silent_connections(bob_host.address, first_wave) as flood:
                await settle(lambda: bob_host.handshakes_evicted == len(first_wave) - capacity)
                assert bob_host.pending_handshakes == capacity
                # The evicted connections are closed: the oldest of whichever source held most.
                closed = [tcp for tcp in flood if await _closed_now(tcp)]
                assert len(closed) == len(first_wave) - capacity
                assert bob_host.handshake_failures == len(closed)

                async with trio.open_nursery() as nursery:
                    # The flood goes on while the honest peer connects.
                    second_wave = [FLOODERS[i % 3] for i in range(2 * capacity)]
                    nursery.start_soon(_hold_silent, bob_host.address, second_wave)
                    honest = await alice_host.connect(bob.peer_id)
                    verified = await incoming.__anext__()
                    assert verified.remote_peer.peer_id == alice.peer_id
                    await honest.send_message(b"let in during the flood")
                    assert await verified.receive_message() == b"let in during the flood"
                    for index in range(10):
                        message = b"still flowing %d" % index
                        await established.send_message(message)
                        assert await served.receive_message() == message
                    nursery.cancel_scope.cancel()
                assert bob_host.pending_handshakes <= capacity
            await honest.aclose()
            await established.aclose()


async def _closed_now(tcp: trio.SocketStream) -> bool:
    """Whether the host has closed ``tcp`` already (nothing is ever sent on these): a read
    returns at once on a closed connection and blocks on an open one."""
    ended: list[bool] = []

    async def read() -> None:
        try:
            ended.append(await tcp.receive_some() == b"")
        except trio.BrokenResourceError:
            ended.append(True)  # a reset is a close too

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked(0.001)
        nursery.cancel_scope.cancel()
    return ended == [True]


async def _hold_silent(address: tuple[str, int], sources: list[str]) -> None:
    async with _silent_connections(address, sources):
        await trio.sleep_forever()


async def test_a_source_over_its_share_evicts_only_its_own_handshakes() -> None:
    per_source = 3
    async with serving_host(max_pending_per_address=per_source) as harness:
        host = harness.host
        async with (
            _silent_connections(host.address, ["127.0.0.5"]) as bystander,
            _silent_connections(host.address, ["127.0.0.6"] * (per_source + 2)) as flooder,
        ):
            await settle(lambda: host.handshakes_evicted == 2)
            assert host._pending.count("127.0.0.6") == per_source
            assert host._pending.count("127.0.0.5") == 1
            assert [await _closed_now(tcp) for tcp in flooder] == [True, True, False, False, False]
            assert not await _closed_now(bystander[0])


async def test_a_full_table_evicts_the_oldest_of_the_source_holding_most() -> None:
    async with serving_host(max_pending_handshakes=4, max_pending_per_address=4) as harness:
        host = harness.host
        sources = ["127.0.0.7", "127.0.0.8", "127.0.0.8", "127.0.0.8", "127.0.0.9"]
        async with _silent_connections(host.address, sources) as connections:
            await settle(lambda: host.handshakes_evicted == 1)
            # 127.0.0.8 held three of four slots: its oldest made room for 127.0.0.9.
            assert [await _closed_now(tcp) for tcp in connections] == [
                False,
                True,
                False,
                False,
                False,
            ]


@pytest.mark.parametrize(
    "sent",
    ["nothing", "one byte", "the header", "all but the last byte"],
)
async def test_a_first_flight_that_does_not_arrive_is_closed_at_its_deadline(
    sent: str, autojump_clock: trio.testing.MockClock
) -> None:
    hello = hello_of(make_initiator())
    prefix = {
        "nothing": b"",
        "one byte": hello[:1],
        "the header": hello[:4],
        "all but the last byte": hello[:-1],
    }[sent]
    first_flight, total = 2.0, 10.0
    config = p2ptls.StreamConfig(handshake_timeout=total)
    async with serving_host(config=config, first_flight_timeout=first_flight) as harness:
        tcp = await trio.open_tcp_stream(*harness.host.address)
        start = trio.current_time()
        if prefix:
            await tcp.send_all(prefix)
        assert await receive_until_closed(tcp) == b""
        elapsed = trio.current_time() - start
        await tcp.aclose()
        assert first_flight <= elapsed < first_flight + 0.5  # virtual time
        assert harness.host.handshake_failures == 1
        assert harness.host.context.private_key_operations == 0
        autojump_clock.autojump_threshold = math.inf  # real RSA work next
        await assert_host_serves(harness)


async def test_a_first_flight_sent_in_pieces_within_its_deadline_is_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A Hello under another network key: the host answers it with a Reply of the genuine shape,
    # which costs no private-key operation (so the autojump clock is safe).
    hello = hello_of(make_initiator(psk=OTHER_NETWORK_KEY, seed=b"pieces"))
    async with serving_host(first_flight_timeout=2.0) as harness:
        tcp = await trio.open_tcp_stream(*harness.host.address)
        for piece in (hello[:1], hello[1:4], hello[4:100], hello[100:]):
            await tcp.send_all(piece)
            await trio.sleep(0.4)  # virtual: 1.6 s in all, within the deadline
        reply = await read_record(tcp)
        assert reply[:1] == bytes([p2ptls._wire.HANDSHAKE])
        await tcp.aclose()


async def test_unread_incoming_streams_are_bounded_per_peer_and_in_total(identities) -> None:
    """The application does not read ``incoming()``: streams of the default protocol wait, at
    most ``incoming_backlog_per_peer`` per peer and ``incoming_backlog`` in all; the oldest
    waiting stream of the peer holding the most is closed to make room (its opener reads the
    end)."""
    bob, alice, carol, dave = identities
    psk = p2ptls.generate_psk()
    peers = [alice.record, carol.record, dave.record]
    bob_config = _config(bob, psk, peers, incoming_backlog=4, incoming_backlog_per_peer=2)
    with trio.fail_after(SAFETY_NET):
        async with open_host(bob_config) as bob_host, AsyncExitStack() as clients:
            record = bob_host.peer_record()
            hosts: dict[p2ptls.PeerId, p2ptls.Host] = {}
            for identity in (alice, carol, dave):
                config = _config(identity, psk, [record], listen=None)
                hosts[identity.peer_id] = await clients.enter_async_context(open_host(config))

            async def connect(identity: p2ptls.Identity) -> p2ptls.LogicalStream:
                waiting = len(bob_host._backlog) + bob_host.incoming_dropped
                stream = await hosts[identity.peer_id].connect(bob.peer_id)
                await settle(lambda: len(bob_host._backlog) + bob_host.incoming_dropped > waiting)
                return stream

            a1, a2, a3 = [await connect(alice) for _ in range(3)]
            assert bob_host.incoming_dropped == 1  # alice's own oldest
            assert await a1.receive_some() == b""
            c1, c2 = [await connect(carol) for _ in range(2)]
            assert bob_host.incoming_dropped == 1
            d1 = await connect(dave)  # full: alice and carol hold two each, alice's is older
            assert bob_host.incoming_dropped == 2
            assert await a2.receive_some() == b""
            taken = []
            async for stream in bob_host.incoming():
                taken.append(stream)
                if len(taken) == 4:
                    break
            assert [s.remote_peer.peer_id for s in taken] == [
                alice.peer_id,
                carol.peer_id,
                carol.peer_id,
                dave.peer_id,
            ]
            for client_stream, server_stream in zip((a3, c1, c2, d1), taken, strict=True):
                await client_stream.send_message(b"kept")
                assert await server_stream.receive_message() == b"kept"
                await client_stream.aclose()
                await server_stream.aclose()
            # Every client's streams shared one connection to bob.
            assert len(bob_host.connections) == 3


async def test_closed_streams_do_not_pile_up_in_the_host(identities) -> None:
    """A peer that opens streams again and again, each closed after use, leaves both hosts
    tracking none of them (each held buffers and a multiplexer entry), on the one connection."""
    alice, bob = identities[0], identities[1]
    psk = p2ptls.generate_psk()
    with trio.fail_after(SAFETY_NET):
        async with open_host(_config(bob, psk, [alice.record])) as bob_host:
            alice_config = _config(alice, psk, [bob_host.peer_record()], listen=None)
            async with open_host(alice_config) as alice_host:
                incoming = bob_host.incoming()
                for _ in range(12):
                    stream = await alice_host.connect(bob.peer_id)
                    served = await incoming.__anext__()
                    await stream.aclose()
                    await served.aclose()
                ours = alice_host.connection(bob.peer_id)
                theirs = bob_host.connection(alice.peer_id)
                assert ours is not None and theirs is not None
                assert ours.session_id == theirs.session_id  # one connection served them all
                await settle(lambda: ours._mux.stream_count == theirs._mux.stream_count == 0)
                assert ours.stream_count == theirs.stream_count == 0
                assert len(bob_host._backlog) == 0
