"""The DHT node over real hosts on 127.0.0.1: bootstrap, store and fetch, and hostile responders
(a forged contact, silence, a malformed reply) that fail only their own RPC."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio

import p2ptls
from p2ptls import Host, HostConfig, Identity, LogicalStream, NetworkKey, open_host
from p2ptls.dht._errors import DhtProtocolError
from p2ptls.dht._ids import Contact
from p2ptls.dht._responder import ResponderConfig
from p2ptls.dht._routing import PingDue, PingNeeded, RoutingConfig
from p2ptls.dht._sources import RateLimit
from p2ptls.dht._store import Refusal
from p2ptls.dht._wire import PROTOCOL, MessageType, Nodes, Pong, Stored, Value, encode_contact
from p2ptls.dht.config import DhtConfig
from p2ptls.dht.node import DhtNode, RpcFailed, open_dht_node
from tests.conftest import identity_pool
from tests.dht_record_support import T0, immutable
from tests.host_harness import extra_identity

WALL = T0 + 60
PSK = NetworkKey.generate()


def host_config(identity: Identity) -> HostConfig:
    return HostConfig(
        identity=identity,
        psk=PSK,
        listen=("127.0.0.1", 0),
        admission=p2ptls.admit_network_members,
    )


@asynccontextmanager
async def dht_nodes(count: int, config: DhtConfig | None = None) -> AsyncIterator[list[DhtNode]]:
    """``count`` DHT nodes (at most 4: the session's identities), each on its own host."""
    async with AsyncExitStack() as stack:
        nodes = []
        for identity in identity_pool()[:count]:
            host = await stack.enter_async_context(open_host(host_config(identity)))
            node = open_dht_node(host, config, wall_clock=lambda: WALL)
            nodes.append(await stack.enter_async_context(node))
        yield nodes


Responder = Callable[[bytes], Awaitable[bytes | None]]


@asynccontextmanager
async def hostile_host(respond: Responder, index: int = 1) -> AsyncIterator[Host]:
    """A host serving ``p2ptls/dht/1`` with ``respond(request) -> reply bytes`` (``None``: stay
    silent until the stream is reset)."""

    async def handler(stream: LogicalStream) -> None:
        request = await stream.receive_message()
        reply = await respond(request)
        if reply is None:
            await trio.sleep_forever()
        await stream.send_message(reply)
        await stream.send_eof()

    async with open_host(host_config(extra_identity(index))) as host:
        host.serve_protocol(PROTOCOL, handler)
        yield host


def contact(node: DhtNode | Host) -> Contact:
    host = node.host if isinstance(node, DhtNode) else node
    return Contact.of(host.peer_record())


async def until(node: DhtNode, predicate: Callable[[], bool]) -> None:
    """Wait, without polling, until ``predicate`` holds for ``node``'s tables."""
    with trio.fail_after(30):
        while not predicate():
            await node.wait_changed()


def knows_all(node: DhtNode, nodes: list[DhtNode]) -> Callable[[], bool]:
    return lambda: all(other.node_id in node.routing for other in nodes if other is not node)


async def test_nodes_bootstrap_through_one_learn_each_other_and_share_records() -> None:
    async with dht_nodes(4) as nodes:
        first, *joining = nodes
        for serial, node in enumerate(joining):
            assert await node.bootstrap([first.host.peer_record()]) == 1
            # The first node proves each newcomer by pinging it back before the next one asks.
            await until(first, knows_all(first, nodes[: serial + 2]))
        for node in nodes:
            await until(node, knows_all(node, nodes))
        record = immutable(b"stored on one node, found from another")
        assert await joining[0].store(contact(joining[1]), record) is None
        found = await joining[2].find_value(contact(joining[1]), record.key)
        assert found == record
        # A node without the record answers with the nodes it knows nearest the key.
        nearest = await joining[2].find_value(contact(first), record.key)
        assert isinstance(nearest, list)
        assert {each.node_id for each in nearest} == {
            node.node_id for node in nodes if node not in (first, joining[2])
        }


async def test_store_refusals_reach_the_writer() -> None:
    async with dht_nodes(2) as (alice, bob):
        expired = immutable(b"old", issued_at=T0 - 100_000, lifetime=1000)
        assert await alice.store(contact(bob), expired) == Refusal.EXPIRED
        assert len(bob.records) == 0


async def test_a_forged_contact_in_a_nodes_reply_is_refused() -> None:
    victim = identity_pool()[3]
    liar = extra_identity(2)
    forged_contact = bytearray(
        encode_contact(Contact.of(liar.peer_record(address=("127.0.0.1", 1))))
    )
    forged_contact[:32] = victim.peer_id.digest  # an id that is not the hash of the key

    async def forge(request: bytes) -> bytes:
        if request[1] == MessageType.PING:
            return Pong().encode()
        return bytes([1, MessageType.NODES, 1]) + bytes(forged_contact)

    async with hostile_host(forge) as hostile, dht_nodes(1) as (node,):
        await node.ping(contact(hostile))
        assert hostile.peer_id.digest in node.routing
        with pytest.raises(RpcFailed) as failure:
            await node.find_node(contact(hostile), victim.peer_id.digest)
        assert isinstance(failure.value.__cause__, DhtProtocolError)
        assert node.routing.closest(victim.peer_id.digest, 5, verified_only=False) == [
            contact(hostile)
        ]  # nothing the liar said was used; the liar's failure is counted
        await node.ping(contact(hostile))  # the connection goes on


async def test_a_silent_responder_times_out_and_only_that_rpc_fails() -> None:
    async def silent(_request: bytes) -> None:
        return None

    config = DhtConfig(rpc_timeout=1.0)
    async with hostile_host(silent) as hostile, dht_nodes(2, config) as (node, good):
        await node.ping(contact(good))
        outcomes: dict[str, object] = {}

        async def ask_silent() -> None:
            with pytest.raises(RpcFailed) as failure:
                await node.find_node(contact(hostile), node.node_id)
            outcomes["silent"] = failure.value.__cause__

        async def ask_good() -> None:
            outcomes["good"] = await node.find_node(contact(good), node.node_id)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask_silent)
            nursery.start_soon(ask_good)
        assert isinstance(outcomes["silent"], trio.TooSlowError)
        assert outcomes["good"] == []
        assert good.node_id in node.routing
        assert hostile.peer_id.digest not in node.routing


async def test_a_malformed_reply_ends_only_that_stream() -> None:
    async def garbled(request: bytes) -> bytes:
        if request[1] == MessageType.PING:
            return Pong().encode()
        return Nodes(()).encode() + b"trailing"

    async with hostile_host(garbled) as hostile, dht_nodes(2) as (node, good):
        await node.ping(contact(hostile))
        connection = node.host.connection(hostile.peer_id)
        with pytest.raises(RpcFailed) as failure:
            await node.find_node(contact(hostile), node.node_id)
        assert isinstance(failure.value.__cause__, DhtProtocolError)
        await node.ping(contact(hostile))
        assert node.host.connection(hostile.peer_id) is connection
        await node.ping(contact(good))


async def test_a_malformed_request_resets_only_its_stream() -> None:
    async with dht_nodes(1) as (node,), open_host(host_config(extra_identity(1))) as client:
        stream = await client.open(node.host.peer_record(), PROTOCOL)
        await stream.send_message(b"\x01\x63garbage")
        await stream.send_eof()
        with pytest.raises((trio.BrokenResourceError, trio.EndOfChannel)):
            await stream.receive_message()
        await stream.aclose()
        stream = await client.open(node.host.peer_record(), PROTOCOL)
        await stream.send_message(bytes([1, MessageType.PING, 0]))
        await stream.send_eof()
        assert await stream.receive_message() == Pong().encode()
        await stream.aclose()


async def test_timers_expire_records_and_run_refresh_lookups() -> None:
    start = trio.current_time()

    def wall_clock() -> float:
        return WALL + trio.current_time() - start

    config = DhtConfig(routing=RoutingConfig(refresh_interval=0.5))
    async with AsyncExitStack() as stack:
        nodes = []
        for identity in identity_pool()[:2]:
            host = await stack.enter_async_context(open_host(host_config(identity)))
            nodes.append(
                await stack.enter_async_context(open_dht_node(host, config, wall_clock=wall_clock))
            )
        alice, bob = nodes
        brief = immutable(b"gone in a second", issued_at=WALL - 10, lifetime=11)
        assert await alice.store(contact(bob), brief) is None
        assert len(bob.records) == 1
        await until(bob, lambda: len(bob.records) == 0)
        await until(alice, lambda: alice.stats.refreshes > 0)


async def test_pings_the_routing_table_asks_for_run_once_each_and_verify() -> None:
    async with dht_nodes(2) as (alice, bob):
        due = PingDue(contact(bob))
        alice._dispatch([due, due, PingNeeded(contact(bob), contact(alice))])
        assert len(alice._pinging) == 1  # one ping per contact at a time
        await until(alice, lambda: bob.node_id in alice.routing)
        await until(alice, lambda: not alice._pinging)


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(Stored().encode(), id="a reply of another type"),
        pytest.param(Value(immutable(b"another key")).encode(), id="a value under another key"),
        pytest.param(Pong().encode() + Pong().encode(), id="two replies in one message"),
    ],
)
async def test_a_reply_that_does_not_answer_the_request_fails_the_rpc(reply: bytes) -> None:
    asked = immutable(b"the key asked for")

    async def wrong(request: bytes) -> bytes:
        return Pong().encode() if request[1] == MessageType.PING else reply

    async with hostile_host(wrong) as hostile, dht_nodes(1) as (node,):
        await node.ping(contact(hostile))
        with pytest.raises(RpcFailed) as failure:
            await node.find_value(contact(hostile), asked.key)
        assert isinstance(failure.value.__cause__, DhtProtocolError)
        await node.ping(contact(hostile))


async def test_an_rpc_to_the_node_itself_is_a_local_error() -> None:
    async with dht_nodes(1) as (node,):
        with pytest.raises(p2ptls.LocalProtocolError):
            await node.ping(contact(node))


async def test_a_requester_over_its_rate_limit_fails_only_its_own_rpcs() -> None:
    slow = ResponderConfig(rate_limit=RateLimit(rate=0.001, burst=2))
    async with dht_nodes(3, DhtConfig(responder=slow)) as (limited, busy, other):
        await limited.ping(contact(busy))
        await limited.ping(contact(busy))
        with pytest.raises(RpcFailed):
            await limited.ping(contact(busy))  # reset unanswered
        assert await limited.store(contact(busy), immutable(b"more")) == Refusal.QUOTA
        await other.ping(contact(busy))
        await limited.ping(contact(other))
