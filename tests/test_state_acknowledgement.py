"""What the state node offers a newcomer: str values, unwrapped errors, waiting for a key, and
acknowledgements a member must prove (``wait_acknowledged``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

import p2ptls
from p2ptls.state import MemberState, StateNode, StateNodeConfig, open_state_node
from p2ptls.state import _wire as wire
from p2ptls.state.testing import RawConnection, raw_peer

DEADLINE = 30


def config(identity: p2ptls.Identity, psk: p2ptls.NetworkKey, *bootstrap, **options):
    options.setdefault("ping_interval", 600.0)  # no watchdog pings in these tests
    options.setdefault("ping_timeout", 1200.0)
    return StateNodeConfig(identity=identity, psk=psk, bootstrap=bootstrap, **options)


async def test_str_values_are_stored_as_utf8_and_read_as_bytes(identities) -> None:
    psk = p2ptls.generate_psk()
    async with open_state_node(config(identities[0], psk)) as node:
        await node.set("color", "blue")
        await node.update({"name": "Zoë", "raw": b"\x00\xff"})
        assert node.get(node.peer_id, "color") == b"blue"
        assert node.get(node.peer_id, "name") == "Zoë".encode()
        assert node.snapshot() == {"color": b"blue", "name": "Zoë".encode(), "raw": b"\x00\xff"}


async def test_a_wrong_value_type_raises_a_plain_type_error(identities) -> None:
    psk = p2ptls.generate_psk()
    with pytest.raises(TypeError, match="bytes or str") as caught:
        async with open_state_node(config(identities[0], psk)) as node:
            await node.set("count", 3)  # type: ignore[arg-type]
    assert type(caught.value) is TypeError  # not wrapped in exception groups


async def test_an_error_in_the_block_comes_out_unwrapped(identities) -> None:
    psk = p2ptls.generate_psk()
    with pytest.raises(KeyError) as caught:
        async with open_state_node(config(identities[0], psk)):
            raise KeyError("mine")
    assert caught.value.args == ("mine",)


async def test_wait_for_returns_another_owners_value_once_it_arrived(identities) -> None:
    psk = p2ptls.generate_psk()
    async with (
        open_state_node(config(identities[0], psk)) as alice,
        open_state_node(config(identities[1], psk, alice.peer_record())) as bob,
    ):
        with trio.fail_after(DEADLINE):
            await bob.set("color", "green")
            await bob.set("color", "blue")
            assert await alice.wait_for(bob.peer_id, "color", "blue") == b"blue"
            assert await alice.wait_for(bob.peer_id, "color") == b"blue"


async def test_after_wait_acknowledged_the_member_holds_the_write(identities) -> None:
    psk = p2ptls.generate_psk()
    async with (
        open_state_node(config(identities[0], psk)) as alice,
        open_state_node(config(identities[1], psk, alice.peer_record())) as bob,
    ):
        with trio.fail_after(DEADLINE):
            await alice.wait_until(
                lambda: (
                    (m := alice.member(bob.peer_id)) is not None
                    and m.state is MemberState.CONNECTED
                )
            )
            for round_ in range(20):
                await alice.set("n", str(round_))
                assert await alice.wait_acknowledged(bob.peer_id)
                # No waiting on bob's side: the acknowledgement proved he holds it.
                assert bob.get(alice.peer_id, "n") == str(round_).encode()
        # A peer that is not connected cannot acknowledge.
        assert not await alice.wait_acknowledged(identities[2].peer_id)


async def _ping_after_updates(raw: RawConnection, owner: bytes) -> wire.Ping:
    """Read until a PING that follows a span of ``owner``; answer earlier pings at once."""
    saw_updates = False
    while True:
        message = await raw.receive()
        if isinstance(message, wire.Updates):
            saw_updates = saw_updates or any(span.owner == owner for span in message.spans)
        elif isinstance(message, wire.Ping):
            if saw_updates:
                return message
            await raw.send(wire.Pong(message.nonce))


def _acknowledgement_waiter(
    node: StateNode, peer_id: p2ptls.PeerId
) -> tuple[list[bool], Callable[[], Awaitable[None]]]:
    """A task that waits for ``peer_id``'s acknowledgement, and the list it appends to."""
    acked: list[bool] = []

    async def wait() -> None:
        acked.append(await node.wait_acknowledged(peer_id))

    return acked, wait


async def _barrier(raw: RawConnection) -> None:
    """Return once the node handled everything sent before (it answers pings in order)."""
    await raw.send(wire.Ping(b"barrier!"))
    while True:
        message = await raw.receive()
        if isinstance(message, wire.Pong) and message.nonce == b"barrier!":
            break
    await trio.testing.wait_all_tasks_blocked()


async def test_a_pong_after_a_pull_of_our_state_proves_nothing(identities) -> None:
    psk = p2ptls.generate_psk()
    member = identities[1]
    async with open_state_node(config(identities[0], psk)) as node:
        own = node.peer_id.digest
        await node.set("k", "v")
        async with raw_peer(member, psk, node.peer_record()) as raw:
            await raw.send(wire.Pull(((own, wire.NO_VERSION),)))  # it asks for our state
            acked, wait = _acknowledgement_waiter(node, member.peer_id)
            with trio.fail_after(DEADLINE):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(wait)
                    ping = await _ping_after_updates(raw, own)
                    # It claims to lack our state, then answers: that answer proves nothing.
                    await raw.send(wire.Pull(((own, wire.NO_VERSION),)))
                    await raw.send(wire.Pong(ping.nonce))
                    again = await _ping_after_updates(raw, own)  # the state again, a new ping
                    await _barrier(raw)
                    assert acked == []
                    await raw.send(wire.Pong(b"\x00" * wire.NONCE_SIZE))  # an unknown nonce
                    await _barrier(raw)
                    assert acked == []
                    await raw.send(wire.Pong(again.nonce))
            assert acked == [True]


async def test_a_member_that_never_answers_never_acknowledges(identities) -> None:
    psk = p2ptls.generate_psk()
    member = identities[1]
    async with open_state_node(config(identities[0], psk)) as node:
        await node.set("k", "v")
        async with raw_peer(member, psk, node.peer_record()) as raw:
            await raw.send(wire.Pull(((node.peer_id.digest, wire.NO_VERSION),)))
            with trio.fail_after(DEADLINE):
                async with trio.open_nursery() as nursery:
                    done = trio.Event()

                    async def wait() -> None:
                        with trio.move_on_after(0.5):
                            await node.wait_acknowledged(member.peer_id)
                            pytest.fail("acknowledged without an answer")
                        done.set()

                    nursery.start_soon(wait)
                    await _ping_after_updates(raw, node.peer_id.digest)  # and never answer
                    await done.wait()


async def test_a_waiter_hears_at_once_that_the_member_session_ended(identities) -> None:
    """The member's session ends while another one of its sessions is still being set up (the
    member stays connected meanwhile): ``wait_acknowledged`` returns False at once, instead of
    waiting for the other session's STATE_HELLO or its deadline."""
    psk = p2ptls.generate_psk()
    member = identities[1]
    slow_hello = config(identities[0], psk, connect_timeout=3600.0)
    async with open_state_node(slow_hello) as node:
        await node.set("k", "v")
        async with raw_peer(member, psk, node.peer_record()) as raw:
            await raw.send(wire.Pull(((node.peer_id.digest, wire.NO_VERSION),)))
            await raw.stream.connection.open(wire.PROTOCOL)  # and never says STATE_HELLO on it
            acked, wait = _acknowledgement_waiter(node, member.peer_id)
            with trio.fail_after(DEADLINE):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(wait)
                    await _ping_after_updates(raw, node.peer_id.digest)  # and never answer
                    await raw.stream.aclose()
            assert acked == [False]
