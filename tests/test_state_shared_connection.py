"""The state network on the host's one connection per peer, over real sockets on 127.0.0.1.

One session per member pair on one shared connection (also when both open at once), other
protocols on the same connection (their misuse leaves the state session alone), and a connection
cut while everything is busy: every protocol on it reports it, members reconnect, state converges.
Nothing sleeps to wait for an event: tests wait for events under a deadline that only turns a hang
into a failure.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

import p2ptls
from p2ptls import sllp
from p2ptls.state import (
    PROTOCOL,
    MemberChanged,
    MemberState,
    StateNode,
    StateNodeConfig,
    open_state_node,
)
from tests.state_support import DEADLINE, connected, until
from tests.state_support import node_config as config
from tests.test_sllp_host import tcp_connections_through

ECHO = "test/echo/1"


def joining(identity: p2ptls.Identity, psk: p2ptls.NetworkKey, via: StateNode) -> StateNodeConfig:
    return config(identity, psk, bootstrap=(via.peer_record(),))


async def until_both(a: StateNode, b: StateNode, predicate: Callable[[], bool]) -> None:
    """Wait until ``predicate()`` (about both nodes) holds: it is checked on every change of
    either."""
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:

            async def on(node: StateNode) -> None:
                await node.wait_until(predicate)
                nursery.cancel_scope.cancel()

            nursery.start_soon(on, a)
            nursery.start_soon(on, b)


def session_stream(node: StateNode, other: StateNode) -> p2ptls.LogicalStream:
    pump = node._members.pump_of(other.peer_id)
    assert pump is not None
    return pump.stream


def same_session(a: StateNode, b: StateNode) -> bool:
    """Whether both ends hold one and the same logical stream as their session."""
    at_a, at_b = a._members.pump_of(b.peer_id), b._members.pump_of(a.peer_id)
    return (
        at_a is not None
        and at_b is not None
        and at_a.stream.stream_id == at_b.stream.stream_id
        and at_a.stream.session_id == at_b.stream.session_id
        and at_a.stream.server_side != at_b.stream.server_side
    )


def opened_by_lower(a: StateNode, b: StateNode) -> bool:
    """Whether ``a``'s session with ``b`` is the one the lower of the two ids opened (which both
    ends keep when both open one)."""
    pump = a._members.pump_of(b.peer_id)
    if pump is None:
        return False
    opener = b.peer_id if pump.stream.server_side else a.peer_id
    return opener.digest == min(a.peer_id.digest, b.peer_id.digest)


async def echo(stream: p2ptls.LogicalStream) -> None:
    async for message in stream.messages():
        await stream.send_message(message)


async def test_state_and_another_protocol_share_one_connection(identities) -> None:
    psk = p2ptls.generate_psk()
    async with open_state_node(config(identities[0], psk)) as alice:
        alice.host.serve_protocol(ECHO, echo)
        async with open_state_node(joining(identities[1], psk, alice)) as bob:
            await until(bob, connected(bob, alice))
            stream = await bob.host.open(alice.peer_id, ECHO)
            await stream.send_message(b"hello")
            assert await stream.receive_message() == b"hello"
            state = session_stream(bob, alice)
            assert state.protocol == PROTOCOL
            (shared,) = bob.host.connections
            assert stream.connection is shared and state.connection is shared
            assert len(alice.host.connections) == 1
            # Members' connections are protected: no idle timeout, no eviction by the limit.
            assert bob.host.manager.is_protected(alice.peer_id)
            assert alice.host.manager.is_protected(bob.peer_id)


async def test_a_state_node_and_an_sllp_channel_hold_one_tcp_connection(identities) -> None:
    """Two peers with a state node each and an SLLP channel between them hold one TCP
    connection: the state session, the channel's set-up stream (its lifeline) and the
    application's own protocols all ride on it."""
    psk = p2ptls.generate_psk()
    async with open_state_node(config(identities[0], psk)) as alice:
        channels = trio.open_memory_channel[sllp.SllpChannel](1)

        async def accept(channel: sllp.SllpChannel) -> None:
            await channels[0].send(channel)
            await trio.sleep_forever()

        sllp.serve_datagrams(alice.host, accept)
        async with open_state_node(joining(identities[1], psk, alice)) as bob:
            await until(bob, connected(bob, alice))
            await until(alice, connected(alice, bob))
            port = alice.host.address[1]
            async with await sllp.connect_datagram(bob.host, alice.peer_id) as channel:
                with trio.fail_after(DEADLINE):
                    answered = await channels[1].receive()
                await channel.send(b"a frame")
                with trio.fail_after(DEADLINE):
                    assert (await answered.receive()).data == b"a frame"
                await bob.set("k", b"v")
                await until(alice, lambda: alice.get(bob.peer_id, "k") == b"v")
                lifeline = channel.stream
                assert isinstance(lifeline, p2ptls.LogicalStream)
                assert lifeline.connection is session_stream(bob, alice).connection
                assert tcp_connections_through(port) == 2  # one connection: its two ends


@pytest.mark.parametrize("round_", range(10))
async def test_members_opening_at_once_keep_one_session_on_one_connection(
    identities, round_: int
) -> None:
    psk = p2ptls.generate_psk()
    async with (
        open_state_node(config(identities[0], psk)) as alice,
        open_state_node(config(identities[1], psk)) as bob,
    ):
        changes = alice.subscribe(MemberChanged)
        # Both learn of the other at the same moment: both open a session, both dial. Each end
        # keeps the session the lower id opened, whichever was set up first.
        alice.add_member(bob.peer_record())
        bob.add_member(alice.peer_record())
        await until_both(
            alice,
            bob,
            lambda: opened_by_lower(alice, bob) and opened_by_lower(bob, alice),
        )
        await alice.set("k", b"v")
        assert await alice.wait_acknowledged(bob.peer_id)
        assert bob.get(alice.peer_id, "k") == b"v"
        assert same_session(alice, bob)
        # The session's connection is the one both hosts kept.
        assert session_stream(alice, bob).connection is alice.host.connection(bob.peer_id)
        assert session_stream(bob, alice).connection is bob.host.connection(alice.peer_id)
        states = []
        while True:
            try:
                states.append(changes.receive_nowait().status.state)
            except trio.WouldBlock:
                break
        assert MemberState.UNREACHABLE not in states  # no session flapped


async def test_misuse_of_another_protocol_leaves_the_state_session_alone(identities) -> None:
    psk = p2ptls.generate_psk()
    async with open_state_node(config(identities[0], psk)) as alice:

        async def fails(stream: p2ptls.LogicalStream) -> None:
            await stream.receive_message()
            raise RuntimeError("a handler with a bug")

        alice.host.serve_protocol(ECHO, echo)
        alice.host.serve_protocol("test/fails/1", fails)
        async with open_state_node(joining(identities[1], psk, alice)) as bob:
            await until(bob, connected(bob, alice))
            await until(alice, connected(alice, bob))
            state_at_alice = session_stream(alice, bob)
            opened = alice.stats.connections_opened
            with pytest.raises(p2ptls.ProtocolNotSupported):
                await bob.host.open(alice.peer_id, "test/nobody/1")
            # A stream reset while its answer is on the way, and a handler that fails.
            reset = await bob.host.open(alice.peer_id, ECHO)
            await reset.send_message(b"x" * 300_000)
            await reset.aclose()
            failing = await bob.host.open(alice.peer_id, "test/fails/1")
            await failing.send_message(b"go")
            with (
                trio.fail_after(DEADLINE),
                pytest.raises((trio.BrokenResourceError, trio.EndOfChannel)),
            ):
                await failing.receive_message()
            # The state session is the same one and still carries state both ways.
            await bob.set("after", b"misuse")
            await until(alice, lambda: alice.get(bob.peer_id, "after") == b"misuse")
            await alice.set("back", b"too")
            assert await alice.wait_acknowledged(bob.peer_id)
            assert session_stream(alice, bob) is state_at_alice
            assert alice.stats.connections_opened == opened
            assert alice.stats.peers_rejected == 0
            assert alice.host.manager.handler_failures == 1


async def test_a_connection_cut_while_every_protocol_is_busy_is_reported_and_recovered(
    identities,
) -> None:
    psk = p2ptls.generate_psk()
    async with open_state_node(config(identities[0], psk)) as alice:
        alice.host.serve_protocol(ECHO, echo)
        async with open_state_node(joining(identities[1], psk, alice)) as bob:
            await until(bob, connected(bob, alice))
            events = alice.subscribe(MemberChanged)
            echo_stream = await bob.host.open(alice.peer_id, ECHO)
            written = {"alice": 0, "bob": 0}
            echo_error: list[BaseException] = []
            cut = trio.Event()

            async def writes(node: StateNode, name: str) -> None:
                while True:
                    written[name] += 1
                    await node.set("counter", b"%d" % written[name])

            async def echoes() -> None:
                try:
                    while True:
                        await echo_stream.send_message(b"ping")
                        await echo_stream.receive_message()
                except p2ptls.ConnectionLost as exc:
                    echo_error.append(exc)
                    cut.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(writes, alice, "alice")
                nursery.start_soon(writes, bob, "bob")
                nursery.start_soon(echoes)
                await until(alice, lambda: alice.get(bob.peer_id, "counter") is not None)
                # Cut the TCP connection under every protocol at once.
                connection = bob.host.connection(alice.peer_id)
                assert connection is not None
                await trio.aclose_forcefully(connection.secure.transport_stream)
                with trio.fail_after(DEADLINE):
                    await cut.wait()
                    async for event in events:
                        if event.status.state is MemberState.UNREACHABLE:
                            break
                # Members reconnect through their hosts while writes go on.
                await until(alice, connected(alice, bob))
                await until(bob, connected(bob, alice))
                before = dict(written)
                await until(alice, lambda: written["alice"] > before["alice"] + 10)
                nursery.cancel_scope.cancel()
            # Everyone reported the same typed cause, and state converges.
            assert isinstance(echo_error[0], p2ptls.ConnectionLost)
            await until(alice, lambda: alice.snapshot(bob.peer_id) == bob.snapshot())
            await until(bob, lambda: bob.snapshot(alice.peer_id) == alice.snapshot())
            assert bob.host.connection(alice.peer_id) is not connection
            assert alice.stats.peers_rejected == bob.stats.peers_rejected == 0
