"""The host closes what it opens on every path, and lets the block's errors through unwrapped."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trio
import trio.testing

import p2ptls
from p2ptls import HostConfig, open_host
from p2ptls.state import StateNodeConfig, open_state_node
from tests.host_harness import read_record, receive_until_closed, serving_host, settle
from tests.hostile_support import LOOPBACK, SAFETY_NET, hello_of, make_initiator, next_timestamp


def _config(identity, psk, peers=(), listen=(LOOPBACK, 0), **options) -> HostConfig:
    return HostConfig(identity=identity, psk=psk, peers=tuple(peers), listen=listen, **options)


@contextmanager
def no_resource_warnings() -> Iterator[None]:
    """Fails if anything left unclosed in the block reaches the garbage collector."""
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield
        gc.collect()
    leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaked == []


# -- closing what was opened ------------------------------------------------------------------


async def test_leaving_the_host_closes_the_handshakes_in_progress() -> None:
    with no_resource_warnings(), trio.fail_after(SAFETY_NET):
        # No first-flight deadline: the handshakes are still in progress when the host closes.
        async with serving_host(first_flight_timeout=None) as harness:
            host = harness.host
            silent = [await trio.open_tcp_stream(*host.address) for _ in range(3)]
            # One half-finished: its Hello came and was answered; the host waits for the Finish.
            stalled = await trio.open_tcp_stream(*host.address)
            await stalled.send_all(
                hello_of(make_initiator(seed=b"stalled", timestamp_ns=next_timestamp()))
            )
            assert (await read_record(stalled))[:1] == bytes([p2ptls._wire.HANDSHAKE])
            await settle(lambda: host.pending_handshakes == 4)
        for tcp in [*silent, stalled]:  # each peer sees the close
            assert await receive_until_closed(tcp) == b""
            await tcp.aclose()
        assert host.pending_handshakes == 0


async def test_a_cancelled_connect_closes_its_socket(identities) -> None:
    alice, bob = identities[0], identities[1]
    psk = p2ptls.generate_psk()
    with no_resource_warnings(), trio.fail_after(SAFETY_NET):
        listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
        address = listeners[0].socket.getsockname()[:2]
        async with (
            open_host(_config(alice, psk, [bob.record], listen=None)) as host,
            trio.open_nursery() as nursery,
        ):
            connect_scope = trio.CancelScope()

            async def connect() -> None:
                with connect_scope:
                    await host.connect(bob.record, address=address)
                    raise AssertionError("a silent peer cannot complete a handshake")

            nursery.start_soon(connect)
            accepted = await listeners[0].accept()  # says nothing back
            await trio.testing.wait_all_tasks_blocked()  # the Hello is out; connect() waits
            connect_scope.cancel()
            received = await receive_until_closed(accepted)
            assert received[:1] == bytes([p2ptls._wire.HANDSHAKE])  # the Hello, then the close
            await accepted.aclose()
        await listeners[0].aclose()


async def test_a_stream_waiting_in_incoming_is_closed_with_the_host(identities) -> None:
    alice, bob = identities[0], identities[1]
    psk = p2ptls.generate_psk()
    with no_resource_warnings(), trio.fail_after(SAFETY_NET):
        async with open_host(_config(alice, psk, [bob.record], listen=None)) as alice_host:
            async with open_host(_config(bob, psk, [alice.record])) as bob_host:
                stream = await alice_host.connect(bob_host.peer_record())
                await settle(lambda: len(bob_host._backlog) == 1)
            assert await stream.receive_some() == b""  # bob closed the stream with his host
            await stream.aclose()
            assert [s async for s in bob_host.incoming()] == []


# -- errors in the block ----------------------------------------------------------------------


@pytest.mark.parametrize("error", [KeyError("missing"), OSError(113, "no route to host")])
async def test_an_exception_in_the_host_block_comes_out_unwrapped(identities, error) -> None:
    alice, bob = identities[0], identities[1]
    psk = p2ptls.generate_psk()
    caught: BaseException | None = None
    with trio.fail_after(SAFETY_NET):
        try:
            async with open_host(_config(bob, psk, [alice.record])) as bob_host:
                # The host is busy: an established stream and a handshake in progress.
                alice_config = _config(alice, psk, [bob_host.peer_record()], listen=None)
                async with open_host(alice_config) as alice_host:
                    await alice_host.connect(bob.peer_id)
                    silent = await trio.open_tcp_stream(*bob_host.address)
                    await settle(lambda: bob_host.pending_handshakes == 1)
                    raise error
        except (KeyError, OSError) as exc:
            caught = exc
    assert caught is error
    await silent.aclose()


async def test_connecting_to_an_unknown_peer_id_raises_a_plain_key_error(identities) -> None:
    psk = p2ptls.generate_psk()
    with pytest.raises(KeyError, match="unknown peer"):
        async with open_host(_config(identities[0], psk, listen=None)) as host:
            await host.connect(identities[1].peer_id)


async def test_a_cancelled_host_block_is_cancelled(identities) -> None:
    psk = p2ptls.generate_psk()
    with trio.move_on_after(0) as scope:
        async with open_host(_config(identities[0], psk)):
            await trio.sleep_forever()
    assert scope.cancelled_caught


async def test_a_failure_of_the_hosts_own_tasks_still_surfaces(identities) -> None:
    psk = p2ptls.generate_psk()
    with (
        trio.fail_after(SAFETY_NET),
        pytest.RaisesGroup(trio.ClosedResourceError, flatten_subgroups=True),
    ):
        async with open_host(_config(identities[0], psk)) as host:
            host.listeners[0].socket.close()  # breaks the accept loop underneath
            await trio.sleep_forever()


async def test_an_exception_in_the_state_node_block_comes_out_unwrapped(
    identities, tmp_path
) -> None:
    config = StateNodeConfig(
        identity=identities[0], psk=p2ptls.generate_psk(), database=tmp_path / "state.db"
    )
    with trio.fail_after(SAFETY_NET), pytest.raises(KeyError, match="from the block"):
        async with open_state_node(config):
            raise KeyError("from the block")
