"""Session resumption on the sans-IO core (SPEC 3.6): no RSA, substitutes for every refusal."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2ptls import HandshakeFailed, Identity, NetworkKey, PeerRefused, ProtocolError
from p2ptls import _keyschedule as ks
from p2ptls import _wire as wire
from p2ptls._connection import Connection, DataReceived, HandshakeState, TicketReceived
from p2ptls._records import RecordSealer
from p2ptls._tickets import (
    SessionTicket,
    TicketAuthority,
    TicketCache,
    TicketContents,
)
from p2ptls.config import StreamConfig
from p2ptls.identity import PeerId

from .conftest import identity_pool
from .hostile_support import flip_bit, hello_of, records_of
from .resumption_support import (
    LIFETIME,
    NOW_NS,
    Side,
    deliver,
    full_handshake,
    initiator,
    responder,
    run,
    sides,
)

LATER = NOW_NS + 60 * wire.NS_PER_S
_FUZZ_SERVER = sides(identity_pool())[1]


@pytest.fixture
def parties(identities: tuple[Identity, ...]) -> tuple[Side, Side]:
    client, server = sides(identities)
    full_handshake(client, server)
    assert len(client.tickets) == 2
    return client, server


def resume(
    client: Side, server: Side, *, now_ns: int = LATER, ticket: SessionTicket | None = None
) -> tuple[bytes, bytes]:
    """Send a ResumeHello and return ``(hello_record, reply_record)``; the initiator's check of the
    reply is left to the caller."""
    c = initiator(client, server, ticket=ticket or client.tickets.pop(), timestamp_ns=now_ns)
    s = responder(server, now_ns=now_ns)
    hello = hello_of(c)
    reply = deliver(s, server, hello)
    return hello, reply


def check_reply(client: Side, server: Side, ticket: SessionTicket, hello_ts: int) -> None:
    """Resume with ``ticket``; assert the initiator gets HandshakeFailed (a substitute)."""
    c = initiator(client, server, ticket=ticket, timestamp_ns=hello_ts)
    s = responder(server, now_ns=hello_ts)
    reply = deliver(s, server, hello_of(c))
    assert len(reply) == wire.HEADER_SIZE + wire.RESUME_REPLY_BODY_SIZE
    with pytest.raises(HandshakeFailed):
        deliver(c, client, reply)
    assert c.state is HandshakeState.FAILED


def test_resumed_handshake_needs_no_private_key_operation(parties: tuple[Side, Side]) -> None:
    client, server = parties
    operations = client.key_operations, server.key_operations
    c = initiator(client, server, ticket=client.tickets.pop(), timestamp_ns=LATER)
    s = responder(server, now_ns=LATER)
    run(c, client, s, server)
    assert (client.key_operations, server.key_operations) == operations
    assert c.state is HandshakeState.ESTABLISHED and s.state is HandshakeState.ESTABLISHED
    assert c.resumed and s.resumed
    assert c.session_id == s.session_id
    assert c.export_keying_material("x", b"", 16) == s.export_keying_material("x", b"", 16)
    # The resumed session issues fresh tickets too (two per handshake).
    assert len(client.tickets) == 3
    events = s.receive_data_untrusted(c.send_data(b"ping"))
    assert events == [DataReceived(b"ping")]
    assert c.receive_data_untrusted(s.send_data(b"pong")) == [DataReceived(b"pong")]


def test_resumption_chains(parties: tuple[Side, Side]) -> None:
    client, server = parties
    for step in range(3):
        now = LATER + step * wire.NS_PER_S
        c = initiator(client, server, ticket=client.tickets.pop(), timestamp_ns=now)
        s = responder(server, now_ns=now)
        run(c, client, s, server)
        assert c.resumed and s.resumed
    assert client.key_operations == 1 and server.key_operations == 1


def test_used_ticket_gets_a_substitute(parties: tuple[Side, Side]) -> None:
    client, server = parties
    ticket = client.tickets.pop()
    c = initiator(client, server, ticket=ticket, timestamp_ns=LATER)
    run(c, client, responder(server, now_ns=LATER), server)
    assert c.resumed
    check_reply(client, server, ticket, LATER + wire.NS_PER_S)


def test_replayed_resume_hello(parties: tuple[Side, Side]) -> None:
    """A copy of a ResumeHello raced in on another connection, ahead of the genuine one, is
    answered like the genuine one (as a copy of a Hello is, SPEC 3.5): the copy cannot make the
    genuine resumption fail, and the copy's sender cannot finish. A copy outside the window gets
    no answer at all."""
    client, server = parties
    c = initiator(client, server, ticket=client.tickets.pop(), timestamp_ns=LATER)
    hello = hello_of(c)
    copy_conn = responder(server, now_ns=LATER)
    copy = deliver(copy_conn, server, hello)  # the copy first
    s = responder(server, now_ns=LATER + 1)
    genuine = deliver(s, server, hello)
    assert len(copy) == len(genuine)
    finish = deliver(c, client, genuine)
    assert c.resumed
    deliver(s, server, finish)  # the genuine initiator completes
    with pytest.raises(HandshakeFailed):  # the copy's sender cannot make a Finish
        deliver(
            copy_conn,
            server,
            wire.encode_header(wire.HANDSHAKE, 33) + bytes([wire.FINISH]) + bytes(32),
        )
    late = responder(server, now_ns=LATER + 3600 * wire.NS_PER_S)
    with pytest.raises(HandshakeFailed):
        deliver(late, server, hello)
    assert late.data_to_send() == b""


def test_expired_ticket(parties: tuple[Side, Side]) -> None:
    client, server = parties
    check_reply(client, server, client.tickets.pop(), NOW_NS + (LIFETIME + 1) * wire.NS_PER_S)


def test_ticket_from_the_future(parties: tuple[Side, Side]) -> None:
    client, server = parties
    check_reply(client, server, client.tickets.pop(), NOW_NS - 3600 * wire.NS_PER_S)


def test_ticket_of_another_epoch(parties: tuple[Side, Side]) -> None:
    client, server = parties
    # The responder's rotation period changed: the ticket's epoch is neither current nor previous.
    server.config = StreamConfig(ticket_lifetime=60)
    check_reply(client, server, client.tickets.pop(), LATER)


def test_previous_epoch_still_opens(identities: tuple[Identity, ...]) -> None:
    authority = TicketAuthority()
    psk = NetworkKey.generate().secret
    me, them = identities[1].peer_id, identities[0].record
    ticket = authority.seal(psk, me, them, bytes(32), now_s=999, lifetime_s=100)
    assert authority.open_untrusted(psk, me, ticket, now_s=1050, lifetime_s=100) is not None
    assert authority.open_untrusted(psk, me, ticket, now_s=1100, lifetime_s=100) is None
    assert authority.open_untrusted(psk, them.peer_id, ticket, now_s=1000, lifetime_s=100) is None
    other = NetworkKey.generate().secret
    assert authority.open_untrusted(other, me, ticket, now_s=1000, lifetime_s=100) is None


def test_changed_network_key(parties: tuple[Side, Side]) -> None:
    client, server = parties
    server.psk = client.psk = NetworkKey.generate()
    check_reply(client, server, client.tickets.pop(), LATER)


def test_ticket_from_another_responder(parties: tuple[Side, Side]) -> None:
    """A restarted responder (new ticket keys) cannot open its old tickets."""
    client, server = parties
    server.authority = TicketAuthority()
    check_reply(client, server, client.tickets.pop(), LATER)


def test_ticket_for_another_responder(
    parties: tuple[Side, Side], identities: tuple[Identity, ...]
) -> None:
    """A ticket presented to a third party (whose network key is the same) is a substitute."""
    client, server = parties
    third = Side(identities[2], client.psk, server.peers, authority=server.authority)
    check_reply(client, third, client.tickets.pop(), LATER)


@pytest.mark.parametrize("part", ["ticket", "sealed_ts", "binder", "ephemeral"])
def test_flipped_bits_get_a_substitute(parties: tuple[Side, Side], part: str) -> None:
    client, server = parties
    ticket = client.tickets.pop()
    c = initiator(client, server, ticket=ticket, timestamp_ns=LATER)
    hello = hello_of(c)
    ticket_size = len(hello) - wire.HEADER_SIZE - wire.resume_hello_body_size(0)
    offsets = {
        "ephemeral": wire.HEADER_SIZE + 10,
        "ticket": wire.HEADER_SIZE + 44 + 2 + ticket_size // 2,
        "sealed_ts": len(hello) - wire.MAC_SIZE - 3,
        "binder": len(hello) - 1,
    }
    tampered = flip_bit(hello, offsets[part] * 8)
    if part == "sealed_ts":  # the ticket's holder can recompute the binder: sealed_ts alone fails
        early = ks.resume_early_secret(client.psk.secret, ticket.ticket_psk)
        key = ks.resume_binder_key(early, server.identity.peer_id.digest)
        tampered = tampered[: -wire.MAC_SIZE] + ks.mac(key, tampered[: -wire.MAC_SIZE])
    s = responder(server, now_ns=LATER)
    reply = deliver(s, server, tampered)
    assert len(reply) == wire.HEADER_SIZE + wire.RESUME_REPLY_BODY_SIZE
    with pytest.raises(HandshakeFailed):
        deliver(c, client, reply)
    with pytest.raises(HandshakeFailed):  # the responder never accepts a Finish for it
        deliver(s, server, wire.handshake_record(wire.Finish(bytes(32)).encode()))


def test_ticket_length_outside_bounds_is_refused_silently(parties: tuple[Side, Side]) -> None:
    client, server = parties
    c = initiator(client, server, ticket=client.tickets.pop(), timestamp_ns=LATER)
    hello = bytearray(hello_of(c))
    for length in (0, wire.MIN_TICKET - 1, wire.MAX_TICKET + 1, 0xFFFF):
        hello[wire.HEADER_SIZE + 42 : wire.HEADER_SIZE + 44] = wire.U16.pack(length)
        s = responder(server, now_ns=LATER)
        with pytest.raises(HandshakeFailed):
            s.receive_data_untrusted(bytes(hello))
        assert s.data_to_send() == b""


def test_removed_peer_is_refused_after_its_finish(parties: tuple[Side, Side]) -> None:
    client, server = parties
    server.peers.remove(client.identity.peer_id)
    c = initiator(client, server, ticket=client.tickets.pop(), timestamp_ns=LATER)
    s = responder(server, now_ns=LATER)
    reply = deliver(s, server, hello_of(c))
    finish = deliver(c, client, reply)
    assert (
        c.state is HandshakeState.ESTABLISHED
    )  # as in a full handshake, the initiator finishes first
    with pytest.raises(HandshakeFailed):
        deliver(s, server, finish)
    assert s.farewell
    with pytest.raises(PeerRefused):
        c.receive_data_untrusted(s.farewell)


def test_stale_timestamp_is_refused_at_the_finish(parties: tuple[Side, Side]) -> None:
    """Freshness (SPEC 3.5 (b)) holds for resumed handshakes: a timestamp at or below one already
    accepted for the initiator (beyond the reorder window) is refused once its Finish verifies."""
    client, server = parties
    server.guard.accept(client.identity.peer_id, LATER + 600 * wire.NS_PER_S)
    c = initiator(client, server, ticket=client.tickets.pop(), timestamp_ns=LATER)
    s = responder(server, now_ns=LATER)
    finish = deliver(c, client, deliver(s, server, hello_of(c)))
    with pytest.raises(HandshakeFailed):
        deliver(s, server, finish)


def test_used_ticket_table_is_bounded_per_initiator(parties: tuple[Side, Side]) -> None:
    """An initiator whose share of the used-tickets table is full keeps resuming: its entry
    issued first makes room, and the ticket it stood for (issued at or before the raised floor)
    stays refused."""
    client, server = parties
    server.authority.max_used_per_peer = 1
    first, second = client.tickets.pop(), client.tickets.pop()
    c = initiator(client, server, ticket=first, timestamp_ns=LATER)
    run(c, client, responder(server, now_ns=LATER), server)
    assert c.resumed
    c = initiator(client, server, ticket=second, timestamp_ns=LATER + wire.NS_PER_S)
    run(c, client, responder(server, now_ns=LATER + wire.NS_PER_S), server)
    assert c.resumed
    assert server.authority.used_count(client.identity.peer_id) == 1
    check_reply(client, server, first, LATER + 2 * wire.NS_PER_S)


def test_a_full_table_evicts_from_the_initiator_holding_the_most(
    identities: tuple[Identity, ...],
) -> None:
    authority = TicketAuthority(max_used=3, max_used_per_peer=3)
    heavy, light = identities[0].peer_id, identities[1].peer_id

    def ticket(nonce: bytes, issued: int) -> TicketContents:
        return TicketContents(nonce * 12, issued, 100, bytes(32), b"")

    assert authority.use(ticket(b"a", 1000), heavy, b"1", now_s=1000)
    assert authority.use(ticket(b"b", 1001), heavy, b"2", now_s=1001)
    assert authority.use(ticket(b"c", 1002), light, b"3", now_s=1002)
    assert authority.use(ticket(b"d", 1003), light, b"4", now_s=1003)  # the table is full
    assert authority.used_count(heavy) == 1 and authority.used_count(light) == 2
    assert not authority.use(ticket(b"a", 1000), heavy, b"5", now_s=1004)  # below heavy's floor
    assert not authority.use(ticket(b"c", 1002), light, b"6", now_s=1004)  # still remembered


def test_used_tickets_are_forgotten_at_expiry(identities: tuple[Identity, ...]) -> None:
    authority = TicketAuthority()
    peer = identities[0].peer_id
    contents = TicketContents(b"n" * 12, 1000, 100, bytes(32), b"")
    assert authority.use(contents, peer, b"binder", now_s=1001)
    assert not authority.use(contents, peer, b"other binder", now_s=1002)
    assert authority.use(contents, peer, b"binder", now_s=1002)  # the same ResumeHello: a copy
    other = TicketContents(b"m" * 12, 1200, 100, bytes(32), b"")
    assert authority.use(other, peer, b"binder", now_s=1201)
    assert authority.used_count() == 1


def test_responder_without_ticket_keys_answers_a_substitute(parties: tuple[Side, Side]) -> None:
    client, server = parties
    c = initiator(client, server, ticket=client.tickets.pop(), timestamp_ns=LATER)
    plain = Connection.responder(
        server.config,
        server.identity,
        server.psk,
        server.peers,
        server.guard,
        now_ns=LATER,
    )
    reply = deliver(plain, server, hello_of(c))
    with pytest.raises(HandshakeFailed):
        deliver(c, client, reply)


def test_no_tickets_when_issuing_is_off(identities: tuple[Identity, ...]) -> None:
    client, server = sides(identities)
    server.config = StreamConfig(issue_tickets=False)
    full_handshake(client, server)
    assert client.tickets == []


def _established(parties: tuple[Side, Side]) -> tuple[object, object]:
    client, server = parties
    c = initiator(client, server, ticket=client.tickets.pop(), timestamp_ns=LATER)
    s = responder(server, now_ns=LATER)
    run(c, client, s, server)
    return c, s


def test_ticket_sent_to_the_responder_is_a_protocol_error(parties: tuple[Side, Side]) -> None:
    c, s = _established(parties)
    sealer = c._sealer  # type: ignore[attr-defined]
    payload = wire.TicketPayload(60, bytes(16), bytes(100)).encode()
    with pytest.raises(ProtocolError):
        s.receive_data_untrusted(sealer.seal(wire.TICKET, payload))  # type: ignore[attr-defined]
    assert s.state is HandshakeState.FAILED  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        wire.TicketPayload(0, bytes(16), bytes(100)).encode(),
        wire.TicketPayload(wire.MAX_TICKET_LIFETIME_S + 1, bytes(16), bytes(100)).encode(),
        wire.TicketPayload(60, bytes(16), bytes(10)).encode(),
        wire.TicketPayload(60, bytes(16), bytes(100)).encode() + b"x",
        wire.TicketPayload(60, bytes(16), bytes(wire.MAX_TICKET + 1)).encode(),
    ],
)
def test_malformed_ticket_is_a_protocol_error(parties: tuple[Side, Side], payload: bytes) -> None:
    c, s = _established(parties)
    sealer = s._sealer  # type: ignore[attr-defined]
    assert isinstance(sealer, RecordSealer)
    with pytest.raises(ProtocolError):
        c.receive_data_untrusted(sealer.seal(wire.TICKET, payload))  # type: ignore[attr-defined]


def test_ticket_record_reaches_the_initiator_as_an_event(parties: tuple[Side, Side]) -> None:
    c, s = _established(parties)
    sealer = s._sealer  # type: ignore[attr-defined]
    payload = wire.TicketPayload(60, bytes(16), bytes(100))
    (event,) = c.receive_data_untrusted(  # type: ignore[attr-defined]
        sealer.seal(wire.TICKET, payload.encode())
    )
    assert isinstance(event, TicketReceived)
    assert event.ticket == bytes(100) and event.lifetime_s == 60
    assert "ticket" not in repr(event).replace("TicketReceived", "")


def test_tickets_arrive_as_two_records_after_the_finish(identities: tuple[Identity, ...]) -> None:
    client, server = sides(identities)
    c, s = initiator(client, server), responder(server)
    reply = deliver(s, server, hello_of(c))
    finish = deliver(c, client, reply)
    after_finish = deliver(s, server, finish)
    records = records_of(after_finish)
    assert [r[0] for r in records] == [wire.TICKET, wire.TICKET]


def test_secrets_never_in_reprs(parties: tuple[Side, Side]) -> None:
    client, server = parties
    ticket = client.tickets[0]
    hello = hello_of(initiator(client, server, ticket=ticket))
    for text in (
        repr(ticket),
        repr(server.authority),
        repr(TicketContents(b"n" * 12, 1, 1, ticket.ticket_psk, b"")),
        repr(wire.TicketPayload(1, bytes(16), ticket.ticket)),
        repr(wire.parse_resume_hello_untrusted(hello[wire.HEADER_SIZE :])),
    ):
        assert ticket.ticket_psk.hex() not in text and ticket.ticket.hex()[:16] not in text
    secrets = ks.session_secrets(bytes(32), bytes(32))
    assert secrets.resumption.hex() not in repr(secrets)


def test_ticket_cache_bounds() -> None:
    cache = TicketCache(per_peer=2, max_peers=2)
    peers = [PeerId(bytes([i]) * 32) for i in range(3)]

    def ticket(peer: PeerId, n: int, expires: float = 100.0) -> SessionTicket:
        return SessionTicket(peer, bytes([n]) * 64, bytes(32), expires)

    for n in range(3):
        cache.put(ticket(peers[0], n), now_s=0)
    assert cache.count(peers[0], now_s=0) == 2
    cache.put(ticket(peers[1], 9, expires=5), now_s=0)
    cache.put(ticket(peers[2], 7), now_s=0)  # evicts the least recently used peer: peers[0]
    assert cache.take(peers[0], now_s=0) is None
    assert cache.take(peers[1], now_s=10) is None  # expired
    taken = cache.take(peers[2], now_s=0)
    assert taken is not None and taken.ticket == bytes([7]) * 64
    assert cache.take(peers[2], now_s=0) is None  # single use
    cache.put(ticket(peers[0], 1), now_s=0)
    cache.forget(peers[0])
    assert len(cache) == 0
    cache.put(ticket(peers[0], 1), now_s=0)
    cache.forget()
    assert len(cache) == 0


def test_ticket_psk_differs_per_nonce(parties: tuple[Side, Side]) -> None:
    client, _ = parties
    first, second = client.tickets
    assert first.ticket_psk != second.ticket_psk and first.ticket != second.ticket
    assert attrs.asdict(first) != attrs.asdict(second)


def test_second_hello_of_either_kind_fails(parties: tuple[Side, Side]) -> None:
    client, server = parties
    hello = hello_of(initiator(client, server, ticket=client.tickets.pop(), timestamp_ns=LATER))
    full_hello = hello_of(initiator(client, server, timestamp_ns=LATER))
    for second in (hello, full_hello):
        s = responder(server, now_ns=LATER)
        deliver(s, server, hello)
        with pytest.raises(HandshakeFailed):
            s.receive_data_untrusted(second)


def test_reply_of_the_other_kind_fails(parties: tuple[Side, Side]) -> None:
    client, server = parties
    resuming = initiator(client, server, ticket=client.tickets.pop(), timestamp_ns=LATER)
    full = initiator(client, server, timestamp_ns=LATER + 1)
    resume_reply = deliver(responder(server, now_ns=LATER), server, hello_of(resuming))
    full_reply = deliver(responder(server, now_ns=LATER), server, hello_of(full))
    with pytest.raises(HandshakeFailed):
        full.receive_data_untrusted(resume_reply)
    with pytest.raises(HandshakeFailed):
        resuming.receive_data_untrusted(full_reply)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(min_size=0, max_size=wire.MAX_HANDSHAKE_BODY - 1))
def test_arbitrary_resume_hello_bodies_only_fail_the_handshake(body: bytes) -> None:
    """Whatever follows the message type, the responder answers (69 bytes) or fails with the one
    generic error; nothing else escapes."""
    server = _FUZZ_SERVER
    s = responder(server, now_ns=LATER)
    try:
        reply = deliver(s, server, wire.handshake_record(bytes([wire.RESUME_HELLO]) + body))
    except HandshakeFailed:
        return
    assert len(reply) == wire.HEADER_SIZE + wire.RESUME_REPLY_BODY_SIZE


def test_ticket_presented_by_another_initiator_fails(
    parties: tuple[Side, Side], identities: tuple[Identity, ...]
) -> None:
    """A ticket names its initiator (sealed inside): another identity presenting it, even with
    its PSK, computes a transcript with its own id and fails at finished_R (no misbinding)."""
    client, server = parties
    thief = Side(identities[2], client.psk, client.peers)
    c = initiator(thief, server, ticket=client.tickets.pop(), timestamp_ns=LATER)
    s = responder(server, now_ns=LATER)
    reply = deliver(s, server, hello_of(c))
    with pytest.raises(HandshakeFailed):
        deliver(c, thief, reply)


def test_ticket_keys_and_nonces_come_from_the_injected_randomness(
    identities: tuple[Identity, ...],
) -> None:
    """Two authorities fed the same randomness seal the same ticket (no hidden os.urandom)."""
    initiator_identity, responder_identity = identities[0], identities[1]

    def sealed() -> bytes:
        stream = iter(range(256))
        authority = TicketAuthority(
            randomness=lambda size: bytes(next(stream) for _ in range(size))
        )
        return authority.seal(
            b"k" * 32,
            responder_identity.peer_id,
            initiator_identity.record,
            b"p" * 32,
            now_s=1_000,
            lifetime_s=3_600,
        )

    assert sealed() == sealed()
