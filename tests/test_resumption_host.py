"""Session resumption between real hosts on 127.0.0.1, and hostile ResumeHellos against a host.

The host's dial resumes automatically when its context holds a ticket for the peer (no RSA
operation on either side) and falls back at once to a full handshake on a new connection when the
peer does not take the ticket. A hostile peer replaying, tampering with or flooding ResumeHellos
only ever ends its own connection.
"""

from __future__ import annotations

import contextlib
import time

import pytest
import trio

from p2ptls import HandshakeFailed, Host
from p2ptls import _keyschedule as ks
from p2ptls import _wire as wire
from p2ptls._connection import Connection, HandshakeState
from p2ptls._tickets import SessionTicket, TicketAuthority
from tests.host_harness import (
    Harness,
    assert_host_serves,
    good_client,
    read_record,
    receive_until_closed,
    serving_host,
    settle,
)
from tests.hostile_support import (
    CONFIG,
    LOOPBACK,
    NETWORK_KEY,
    SAFETY_NET,
    flip_bit,
    hello_of,
    parties,
)
from tests.test_connection_manager import ECHO, round_trip, running_hosts


def tickets(host: Host, peer: Host) -> int:
    return host.context.tickets.count(peer.peer_id, now_s=time.time())


def operations(*hosts: Host) -> tuple[int, ...]:
    return tuple(host.context.private_key_operations for host in hosts)


async def reconnect(alice: Host, bob: Host) -> None:
    """Close alice's connection to bob, wait until both ends dropped it, open a new one."""
    connection = alice.connection(bob.peer_id)
    assert connection is not None
    connection.close()
    await settle(lambda: alice.connection(bob.peer_id) is None)
    await settle(lambda: bob.connection(alice.peer_id) is None)
    await round_trip(await alice.open(bob.peer_id, ECHO))


async def test_second_dial_between_hosts_is_resumed(identities) -> None:
    async with running_hosts(identities[:2]) as (alice, bob):
        with trio.fail_after(SAFETY_NET):
            await round_trip(await alice.open(bob.peer_id, ECHO))
            first = alice.connection(bob.peer_id)
            assert first is not None and not first.secure.resumed
            await settle(lambda: tickets(alice, bob) == 2)
            before = operations(alice, bob)
            for _ in range(3):
                await reconnect(alice, bob)
                ours, theirs = alice.connection(bob.peer_id), bob.connection(alice.peer_id)
                assert ours is not None and theirs is not None
                assert ours.secure.resumed and theirs.secure.resumed
                assert ours.session_id == theirs.session_id
            assert operations(alice, bob) == before  # no RSA work on either side
            # Two new per handshake, one spent: 2, 3, 4, then the cache's bound of 4 per peer.
            await settle(lambda: tickets(alice, bob) == 4)


async def test_dial_falls_back_to_a_full_handshake_after_the_peer_restarted(identities) -> None:
    async with running_hosts(identities[:2]) as (alice, bob):
        with trio.fail_after(SAFETY_NET):
            await round_trip(await alice.open(bob.peer_id, ECHO))
            await settle(lambda: tickets(alice, bob) == 2)
            bob.context.ticket_authority = TicketAuthority()  # as after a restart
            before = operations(alice, bob)
            failures = bob.handshake_failures
            await reconnect(alice, bob)
            ours = alice.connection(bob.peer_id)
            assert ours is not None and not ours.secure.resumed
            assert operations(alice, bob) == (before[0] + 1, before[1] + 1)
            await settle(lambda: bob.handshake_failures == failures + 1)  # the refused ticket
            # The new session's tickets work again.
            await settle(lambda: tickets(alice, bob) == 2)
            await reconnect(alice, bob)
            ours = alice.connection(bob.peer_id)
            assert ours is not None and ours.secure.resumed


# -- hostile ResumeHellos ----------------------------------------------------------------------


async def ticket_holder(harness: Harness) -> SessionTicket:
    """A good client's ticket for the harness host (taken out of its cache)."""
    stream = await good_client(harness, identity=parties().initiator)
    await stream.send_message(b"hello")
    assert await stream.receive_message() == b"hello"
    client = await harness.client(parties().initiator)
    server = harness.server.peer_id
    await settle(lambda: client.context.tickets.count(server, now_s=time.time()) > 0)
    ticket = client.context.take_ticket(server)
    assert ticket is not None
    return ticket


def resuming(harness: Harness, ticket: SessionTicket) -> Connection:
    return Connection.initiator(
        CONFIG,
        parties().initiator,
        NETWORK_KEY,
        harness.server.record,
        timestamp_ns=time.time_ns(),
        ticket=ticket,
    )


async def exchange(harness: Harness, hello: bytes) -> tuple[bytes, trio.SocketStream]:
    tcp = await trio.open_tcp_stream(*harness.host.address)
    await tcp.send_all(hello)
    return await read_record(tcp), tcp


async def forged_finish_ends_it(tcp: trio.SocketStream) -> None:
    """A Finish the host cannot verify: it closes this connection (and nothing else)."""
    with contextlib.suppress(trio.BrokenResourceError):
        await tcp.send_all(wire.handshake_record(wire.Finish(bytes(32)).encode()))
    assert await receive_until_closed(tcp) == b""
    await tcp.aclose()


async def test_replayed_resume_hello_from_another_connection() -> None:
    async with serving_host() as harness:
        with trio.fail_after(SAFETY_NET):
            conn = resuming(harness, await ticket_holder(harness))
            hello = hello_of(conn)
            reply, genuine = await exchange(harness, hello)
            conn.receive_data_untrusted(reply)
            assert conn.state is HandshakeState.ESTABLISHED and conn.resumed
            copy_reply, copy = await exchange(harness, hello)
            assert len(copy_reply) == len(reply) and copy_reply != reply  # a substitute
            await forged_finish_ends_it(copy)
            await genuine.send_all(conn.data_to_send())  # the genuine one still completes
            await genuine.aclose()
            await assert_host_serves(harness)


@pytest.mark.parametrize("part", ["ticket", "binder", "sealed_ts"])
async def test_tampered_resume_hello_gets_a_substitute(part: str) -> None:
    async with serving_host() as harness:
        with trio.fail_after(SAFETY_NET):
            ticket = await ticket_holder(harness)
            conn = resuming(harness, ticket)
            hello = hello_of(conn)
            offset = {
                "ticket": wire.HEADER_SIZE + 44 + 40,
                "binder": len(hello) - 5,
                "sealed_ts": len(hello) - wire.MAC_SIZE - 5,
            }[part]
            tampered = flip_bit(hello, offset * 8 + 3)
            if part == "sealed_ts":  # its holder can rebind it: only sealed_ts is then wrong
                early = ks.resume_early_secret(NETWORK_KEY.secret, ticket.ticket_psk)
                key = ks.resume_binder_key(early, harness.server.peer_id.digest)
                tampered = tampered[: -wire.MAC_SIZE] + ks.mac(key, tampered[: -wire.MAC_SIZE])
            reply, tcp = await exchange(harness, tampered)
            assert len(reply) == wire.HEADER_SIZE + wire.RESUME_REPLY_BODY_SIZE
            with pytest.raises(HandshakeFailed):
                conn.receive_data_untrusted(reply)
            await forged_finish_ends_it(tcp)
            await assert_host_serves(harness)


async def test_ticket_from_another_responder() -> None:
    async with serving_host() as harness:
        with trio.fail_after(SAFETY_NET):
            genuine = await ticket_holder(harness)
            foreign = TicketAuthority().seal(
                NETWORK_KEY.secret,
                harness.server.peer_id,
                parties().initiator.record,
                genuine.ticket_psk,
                now_s=int(time.time()),
                lifetime_s=CONFIG.ticket_lifetime,
            )
            ticket = SessionTicket(genuine.peer_id, foreign, genuine.ticket_psk, time.time() + 60)
            conn = resuming(harness, ticket)
            reply, tcp = await exchange(harness, hello_of(conn))
            with pytest.raises(HandshakeFailed):
                conn.receive_data_untrusted(reply)
            await forged_finish_ends_it(tcp)
            await assert_host_serves(harness)


async def test_ticket_length_flood_is_dropped_without_an_answer() -> None:
    async with serving_host() as harness:
        with trio.fail_after(SAFETY_NET):
            body = bytearray(wire.MAX_HANDSHAKE_BODY)
            body[0:2] = bytes([wire.RESUME_HELLO, wire.SUITE_RSA_OAEP_X25519_AES256GCM_SHA256])
            body[42:44] = wire.U16.pack(0xFFFF)
            for _ in range(20):
                tcp = await trio.open_tcp_stream(LOOPBACK, harness.host.address[1])
                await tcp.send_all(wire.handshake_record(bytes(body)))
                assert await receive_until_closed(tcp) == b""
                await tcp.aclose()
            await assert_host_serves(harness)
