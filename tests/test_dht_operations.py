"""The DHT's operations over real hosts on 127.0.0.1, six nodes in one process: lookups, immutable
and mutable values (quorum reads, write-back, deletion), peer records, dead and silent nodes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import attrs
import pytest
import trio

from p2ptls import Identity, open_host
from p2ptls.dht._ids import distance
from p2ptls.dht._lookup import LookupConfig
from p2ptls.dht._records import MutableValue, mutable_key
from p2ptls.dht._routing import RefreshDue
from p2ptls.dht._store import Refusal
from p2ptls.dht._wire import MessageType, Nodes, Pong, Refused
from p2ptls.dht.config import DhtConfig
from p2ptls.dht.node import DhtNode, NoContacts, StoreFailed, open_dht_node
from tests.conftest import identity_pool
from tests.dht_record_support import immutable, mutable, owner
from tests.host_harness import extra_identity
from tests.test_dht_node import WALL, contact, host_config, hostile_host, until

SMALL_K = DhtConfig(lookup=LookupConfig(k=3, request_timeout=0.5), read_quorum=3)
"""Three holders per key among six nodes, so that some nodes hold nothing."""

_EXTRA = [extra_identity(10 + index) for index in range(3)]


def identities(count: int) -> list[Identity]:
    return [*identity_pool(), *_EXTRA][:count]


@asynccontextmanager
async def dht_node(
    identity: Identity, config: DhtConfig = SMALL_K, wall_clock: Callable[[], float] = lambda: WALL
) -> AsyncIterator[DhtNode]:
    async with (
        open_host(host_config(identity)) as host,
        open_dht_node(host, config, wall_clock=wall_clock) as node,
    ):
        yield node


@asynccontextmanager
async def network(
    count: int = 6, config: DhtConfig = SMALL_K, wall_clock: Callable[[], float] = lambda: WALL
) -> AsyncIterator[list[DhtNode]]:
    """``count`` nodes, each joined through the first (a self-lookup and its peer record)."""
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(dht_node(identity, config, wall_clock))
            for identity in identities(count)
        ]
        for node in nodes[1:]:
            assert await node.bootstrap([nodes[0].host.peer_record()]) == 1
        yield nodes


def by_distance(nodes: list[DhtNode], key: bytes) -> list[DhtNode]:
    """``nodes``, nearest ``key`` first."""
    return sorted(nodes, key=lambda node: distance(node.node_id, key))


def holders(nodes: list[DhtNode], key: bytes) -> list[DhtNode]:
    """The nodes holding a record under ``key``, nearest first."""
    return by_distance([node for node in nodes if node.records.get(key, WALL) is not None], key)


async def test_closest_finds_the_k_nearest_live_nodes() -> None:
    async with network() as nodes:
        key = bytes(32)
        found = await nodes[0].closest(key)
        expected = by_distance(nodes[1:], key)[:3]
        assert [each.node_id for each in found] == [node.node_id for node in expected]
        stats = nodes[0].stats
        assert stats.lookups >= 1 and stats.rpcs_sent >= 3
        assert stats.routing.verified >= 3


async def test_a_value_put_by_one_node_is_got_by_a_node_that_holds_nothing() -> None:
    async with network() as nodes:
        value = b"a value stored at the three nodes nearest its hash"
        result = await nodes[0].put(value)
        assert result.accepted == 3 and result.refusals == () and result.failed == 0
        held_by = holders(nodes, result.key)
        assert len(held_by) == 3 and nodes[0] not in held_by
        reader = next(node for node in nodes[1:] if node not in held_by)
        assert await reader.get(result.key) == value
        assert await reader.get(bytes(32)) is None


async def test_a_quorum_read_returns_the_newest_and_writes_it_back_to_a_stale_holder() -> None:
    async with network() as nodes:
        key_owner = owner("quorum")
        key = mutable_key(mutable(1, key=key_owner).owner, b"salt")
        *nearest, reader, writer = by_distance(nodes, key)
        first = await writer.put_mutable(key_owner, b"salt", b"first")
        assert first.accepted == 3
        assert holders(nodes, key) == by_distance(nearest, key)[:3]
        stale, *fresh = holders(nodes, key)
        newer = mutable(2, b"second", key=key_owner, issued_at=int(WALL))
        for holder in fresh:  # the newer value reaches only two of the three holders
            assert await writer.store(contact(holder), newer) is None
        held = stale.records.get(key, WALL)
        assert isinstance(held, MutableValue) and held.sequence == 1
        found = await reader.get_mutable(key_owner.public_key(), b"salt")
        assert found is not None and found.value == b"second" and found.sequence == 2
        assert stale.records.get(key, WALL) == newer  # written back, exact bytes
        third = await writer.put_mutable(key_owner, b"salt", b"third")  # the next sequence
        assert third.accepted == 3
        found = await reader.get_mutable(key_owner.public_key(), b"salt")
        assert found is not None and (found.sequence, found.value) == (3, b"third")


async def test_a_deleted_value_reads_as_none_and_the_tombstone_wins() -> None:
    async with network() as nodes:
        key_owner = owner("deleted")
        writer, reader = nodes[1], nodes[2]
        await writer.put_mutable(key_owner, b"salt", b"short-lived")
        deleted = await writer.delete(key_owner, b"salt")
        assert deleted.accepted == 3
        assert await reader.get_mutable(key_owner.public_key(), b"salt") is None
        tombstone = holders(nodes, deleted.key)[0].records.get(deleted.key, WALL)
        assert isinstance(tombstone, MutableValue) and tombstone.deleted
        assert tombstone.sequence == 2


async def test_find_peer_finds_a_node_the_finder_never_met() -> None:
    async with network(5) as nodes, AsyncExitStack() as stack:
        departed = await stack.enter_async_context(dht_node(identities(6)[5]))
        assert await departed.bootstrap([nodes[0].host.peer_record()]) == 1  # publishes
        address = departed.host.address
        await stack.aclose()  # the node leaves; its signed record stays with the holders
        async with dht_node(extra_identity(20)) as finder:
            assert await finder.bootstrap([nodes[1].host.peer_record()]) == 1
            assert finder.host.connection(departed.host.peer_id) is None
            record = await finder.find_peer(departed.host.peer_id)
            assert record is not None
            assert record.peer_id == departed.host.peer_id and record.address == address
            assert await finder.find_peer(extra_identity(21).peer_id) is None


async def test_a_lookup_through_a_node_that_went_silent_or_died_still_succeeds() -> None:
    async def silent_after_ping(request: bytes) -> bytes | None:
        return Pong().encode() if request[1] == MessageType.PING else None

    async with network(5) as nodes, hostile_host(silent_after_ping, index=30) as silent:
        seeker = nodes[0]
        await seeker.ping(contact(silent))
        async with AsyncExitStack() as stack:
            dying = await stack.enter_async_context(dht_node(identities(6)[5]))
            await dying.bootstrap([seeker.host.peer_record()])
        assert dying.node_id in seeker.routing and silent.peer_id.digest in seeker.routing
        for key in (silent.peer_id.digest, dying.node_id):
            found = await seeker.closest(key)
            assert [each.node_id for each in found] == [
                node.node_id for node in by_distance(nodes[1:], key)[:3]
            ]
        # the dead node's dial failed; the silent node's request, past its soft timeout, was
        # cancelled when the lookup ended (not its failure: it was never given its full time)
        assert seeker.stats.rpcs_failed >= 1


async def test_refreshes_run_lookups_in_the_background() -> None:
    async with network(3) as nodes:
        node = nodes[0]
        before = node.stats.lookups
        node._dispatch([RefreshDue(bytes(32))])
        with trio.fail_after(30):
            while node.stats.refreshes == 0 or node.stats.lookups == before:
                await node.wait_changed()


class WallClock:
    """A Unix clock the test moves forward (the nodes' record times; trio's clock is real)."""

    def __init__(self) -> None:
        self.now = float(WALL)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float, nodes: list[DhtNode]) -> None:
        self.now += seconds
        for node in nodes:
            node._note_change()  # wake each node's timer task to look at the new time


async def test_the_writer_republishes_its_value_every_22_hours() -> None:
    clock = WallClock()
    async with network(wall_clock=clock) as nodes:
        result = await nodes[0].put(b"republished")
        holder = holders(nodes, result.key)[0]
        first = holder.records.get(result.key, clock.now)
        assert first is not None
        clock.advance(22 * 3600 + 1, nodes)
        await until(holder, lambda: holder.records.get(result.key, clock.now) != first)
        again = holder.records.get(result.key, clock.now)
        assert again is not None and again.issued_at == first.issued_at + 22 * 3600 + 1


async def test_holders_replicate_a_record_to_a_near_node_that_lost_it() -> None:
    clock = WallClock()
    async with network(wall_clock=clock) as nodes:
        result = await nodes[0].put(b"replicated")
        lost, *others = holders(nodes, result.key)
        original = others[0].records.get(result.key, clock.now)
        lost.records._forget(result.key)
        clock.advance(3600 + 1, nodes)
        await until(lost, lambda: lost.records.get(result.key, clock.now) is not None)
        assert lost.records.get(result.key, clock.now) == original  # exact bytes, same expiry


async def test_a_put_nobody_accepts_fails_and_a_node_alone_has_nobody_to_ask() -> None:
    async def refusing(request: bytes) -> bytes:
        if request[1] == MessageType.PING:
            return Pong().encode()
        if request[1] == MessageType.FIND_NODE:
            return Nodes(()).encode()
        return Refused(Refusal.QUOTA).encode()

    async with hostile_host(refusing, index=31) as refuser, dht_node(identities(1)[0]) as node:
        with pytest.raises(NoContacts):
            await node.put(b"nobody to ask")
        await node.ping(contact(refuser))
        with pytest.raises(StoreFailed) as failure:
            await node.put(b"nobody accepts")
        assert failure.value.result.refusals == (Refusal.QUOTA,)
        assert failure.value.result.accepted == 0


async def test_held_records_due_for_replication_never_crowd_out_our_own_republishing() -> None:
    """A peer may fill a node's store (up to its per-source quota); when all of those records
    come due for replication together with our own republishing, ours still runs."""
    clock = WallClock()
    config = attrs.evolve(SMALL_K, max_refreshes_due=2)
    async with network(config=config, wall_clock=clock) as nodes:
        result = await nodes[0].put(b"ours")
        for index in range(20):  # far more than the refresh queue holds
            held = immutable(b"theirs %d" % index, issued_at=int(clock.now), lifetime=47 * 3600)
            assert nodes[0].records.put_untrusted(held, "flooder", clock.now).stored
        holder = holders(nodes, result.key)[0]
        first = holder.records.get(result.key, clock.now)
        assert first is not None
        clock.advance(22 * 3600 + 1, nodes)
        await until(holder, lambda: holder.records.get(result.key, clock.now) != first)
