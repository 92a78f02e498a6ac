"""Session resumption through SecureStream and SecurityContext, over memory streams."""

from __future__ import annotations

import time

import attrs
import pytest
import trio
import trio.testing

from p2ptls import (
    HandshakeFailed,
    Identity,
    NetworkKey,
    PeerRefused,
    SecureStream,
    SecurityContext,
)
from p2ptls._tickets import TicketAuthority
from p2ptls.config import StreamConfig
from p2ptls.testing import connected_contexts, secure_stream_pair_over

Contexts = tuple[SecurityContext, SecurityContext]


@pytest.fixture
def contexts(identities: tuple[Identity, ...]) -> Contexts:
    return connected_contexts(identities=(identities[0], identities[1]))


async def connect(contexts: Contexts) -> tuple[SecureStream, SecureStream]:
    """A connected pair, handshake done and one byte each way (the responder's tickets travel
    ahead of its first record)."""
    client, server = secure_stream_pair_over(trio.testing.memory_stream_pair(), contexts)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    await server.send_all(b"s")
    assert await client.receive_some() == b"s"
    await client.send_all(b"c")
    assert await server.receive_some() == b"c"
    return client, server


def operations(contexts: Contexts) -> tuple[int, int]:
    return contexts[0].private_key_operations, contexts[1].private_key_operations


def tickets_for(contexts: Contexts) -> int:
    client, server = contexts
    return client.tickets.count(server.identity.peer_id, now_s=time.time())


async def test_second_stream_resumes_without_rsa(contexts: Contexts) -> None:
    first, first_server = await connect(contexts)
    assert not first.resumed and not first_server.resumed
    assert tickets_for(contexts) == 2
    before = operations(contexts)
    second, second_server = await connect(contexts)
    assert second.resumed and second_server.resumed
    assert operations(contexts) == before  # no private-key operation on either side
    assert second.session_id == second_server.session_id != first.session_id
    assert second.remote_peer.peer_id == contexts[1].identity.peer_id
    assert second_server.remote_peer.peer_id == contexts[0].identity.peer_id
    assert tickets_for(contexts) == 3  # one spent, two new
    await second.send_message(b"m" * 100_000)
    assert await second_server.receive_message() == b"m" * 100_000
    for stream in (first, first_server, second, second_server):
        await stream.aclose()


async def test_tickets_travel_with_a_goodbye(contexts: Contexts) -> None:
    """A responder that never sends still hands its tickets over ahead of its goodbye."""
    client, server = secure_stream_pair_over(trio.testing.memory_stream_pair(), contexts)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    await server.aclose()
    assert await client.receive_some() == b""
    assert tickets_for(contexts) == 2


async def test_resumption_can_be_turned_off(contexts: Contexts) -> None:
    await connect(contexts)
    client_transport, server_transport = trio.testing.memory_stream_pair()
    client = SecureStream(
        client_transport,
        contexts[0],
        remote=contexts[1].identity.record,
        config=StreamConfig(resumption=False),
    )
    server = SecureStream(server_transport, contexts[1], server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    assert not client.resumed and not server.resumed
    assert tickets_for(contexts) == 2  # untouched


async def test_no_tickets_when_the_responder_issues_none(identities: tuple[Identity, ...]) -> None:
    contexts = connected_contexts(
        identities=(identities[0], identities[1]), config=StreamConfig(issue_tickets=False)
    )
    await connect(contexts)
    assert tickets_for(contexts) == 0


async def both_fail(client: SecureStream, server: SecureStream) -> list[BaseException]:
    """Run both handshakes at once; both must fail. Returns the initiator's error's cause."""
    causes: dict[bool, BaseException | None] = {}

    async def run(stream: SecureStream) -> None:
        with pytest.raises(trio.BrokenResourceError) as caught:
            await stream.do_handshake()
        causes[stream.server_side] = caught.value.__cause__

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, client)
        nursery.start_soon(run, server)
    cause = causes[False]
    assert cause is not None
    return [cause]


async def test_restarted_responder_refuses_and_a_retry_runs_a_full_handshake(
    contexts: Contexts,
) -> None:
    await connect(contexts)
    contexts[1].ticket_authority = TicketAuthority()  # a restart: new ticket keys
    client, server = secure_stream_pair_over(trio.testing.memory_stream_pair(), contexts)
    assert client.resuming
    # The responder's substitute reply fails at the initiator, which closes before its Finish.
    (cause,) = await both_fail(client, server)
    assert type(cause) is HandshakeFailed
    assert tickets_for(contexts) == 0
    before = operations(contexts)
    retry, retry_server = await connect(contexts)
    assert not retry.resuming and not retry.resumed
    assert operations(contexts) == (before[0] + 1, before[1] + 1)
    await retry.aclose()
    await retry_server.aclose()


async def test_changed_network_key_breaks_tickets(contexts: Contexts) -> None:
    await connect(contexts)
    new_key = NetworkKey.generate()
    contexts[0].psk = contexts[1].psk = new_key
    client, server = secure_stream_pair_over(trio.testing.memory_stream_pair(), contexts)
    (cause,) = await both_fail(client, server)
    assert type(cause) is HandshakeFailed
    retry, _ = await connect(contexts)
    assert not retry.resumed


async def test_removed_peer_is_refused_and_its_tickets_dropped(contexts: Contexts) -> None:
    await connect(contexts)
    client_context, server_context = contexts
    # The responder stops trusting the initiator: its resumed handshake is refused.
    server_context.peers.remove(client_context.identity.peer_id)
    client, server = secure_stream_pair_over(trio.testing.memory_stream_pair(), contexts)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)  # completes: the initiator finishes first
        with pytest.raises(trio.BrokenResourceError):
            await server.do_handshake()
    with pytest.raises(trio.BrokenResourceError) as caught:
        await client.receive_some()
    assert isinstance(caught.value.__cause__, PeerRefused)
    # The initiator removing the responder drops its tickets for it.
    assert tickets_for(contexts) == 1
    client_context.peers.remove(server_context.identity.peer_id)
    assert tickets_for(contexts) == 0


async def test_forget_tickets(contexts: Contexts) -> None:
    await connect(contexts)
    contexts[0].forget_tickets(contexts[1].identity.peer_id)
    assert tickets_for(contexts) == 0
    await connect(contexts)
    contexts[0].forget_tickets()
    assert len(contexts[0].tickets) == 0


async def test_expired_tickets_are_not_used(contexts: Contexts) -> None:
    await connect(contexts)
    cache = contexts[0].tickets
    peer = contexts[1].identity.peer_id
    held = [cache.take(peer, now_s=0), cache.take(peer, now_s=0)]
    for ticket in held:
        assert ticket is not None
        cache.put(attrs.evolve(ticket, expires_at_s=1.0), now_s=0)
    client, _ = secure_stream_pair_over(trio.testing.memory_stream_pair(), contexts)
    assert not client.resuming


async def test_reprs_hold_no_secret(contexts: Contexts) -> None:
    await connect(contexts)
    ticket = contexts[0].tickets.take(contexts[1].identity.peer_id, now_s=0)
    assert ticket is not None
    for text in (repr(contexts[0]), repr(contexts[0].tickets), repr(ticket)):
        assert ticket.ticket_psk.hex() not in text and ticket.ticket.hex()[:16] not in text


def test_ticket_lifetime_is_bounded() -> None:
    assert StreamConfig().ticket_lifetime == 6 * 3600
    assert StreamConfig(ticket_lifetime=7 * 86400).ticket_lifetime == 7 * 86400
    for bad in (0, -1, 7 * 86400 + 1):
        with pytest.raises(ValueError):
            StreamConfig(ticket_lifetime=bad)


async def test_resumed_is_false_before_the_handshake(contexts: Contexts) -> None:
    await connect(contexts)
    client, server = secure_stream_pair_over(trio.testing.memory_stream_pair(), contexts)
    assert client.resuming and not client.resumed and not server.resumed
    await _both(client, server)
    assert client.resumed and server.resumed


async def _both(client: SecureStream, server: SecureStream) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
