"""The DHT's RPC service, sans-IO: every request kind, the requester's own contact, rate limits,
store quotas by network and NOT_RESPONSIBLE."""

from __future__ import annotations

from typing import Any

import pytest

from p2ptls import Identity
from p2ptls.dht._errors import DhtProtocolError
from p2ptls.dht._ids import Contact, distance
from p2ptls.dht._responder import (
    RecordStored,
    RequestLimited,
    Responder,
    ResponderConfig,
)
from p2ptls.dht._routing import PingDue, RoutingTable
from p2ptls.dht._sources import RateLimit, RateLimiter, network_prefix, store_source
from p2ptls.dht._store import RecordStore, Refusal, StoreConfig
from p2ptls.dht._wire import (
    FindNode,
    FindValue,
    Nodes,
    Ping,
    Pong,
    Refused,
    Store,
    Stored,
    Value,
    WireConfig,
    parse_message_untrusted,
)
from tests.conftest import identity_pool
from tests.dht_record_support import T0, immutable
from tests.host_harness import extra_identity

NOW = 100.0
WALL = T0 + 60


def identities() -> list[Identity]:
    return [*identity_pool(), *(extra_identity(index) for index in range(1, 4))]


def contact_of(identity: Identity, host: str = "127.0.0.1", port: int = 4000) -> Contact:
    return Contact(identity.record.with_address(host, port), host, port)


def requester_of(identity: Identity, host: str = "127.0.0.1", port: int = 50000) -> Contact:
    return Contact(identity.record, host, port)


def make_responder(
    config: ResponderConfig | None = None,
    store: StoreConfig | None = None,
    wire: WireConfig | None = None,
) -> Responder:
    own = identities()[0]
    return Responder(
        RoutingTable(own.peer_id.digest),
        RecordStore(store),
        config or ResponderConfig(),
        wire or WireConfig(),
    )


def answer(
    responder: Responder, requester: Contact, data: bytes, now: float = NOW
) -> tuple[Any, list[Any]]:
    exchange = responder.exchange(requester)
    events = exchange.receive_request_untrusted(data, now, WALL)
    reply = exchange.message_to_send()
    return (None if reply is None else parse_message_untrusted(reply)), events


def test_ping_is_answered_and_the_sender_is_asked_to_prove_its_address() -> None:
    responder = make_responder()
    alice = identities()[1]
    announced = contact_of(alice, "198.51.100.7", 4100)  # the host it names is not used
    reply, events = answer(responder, requester_of(alice, "203.0.113.9"), Ping(announced).encode())
    assert reply == Pong()
    expected = contact_of(alice, "203.0.113.9", 4100)  # observed host, announced port
    assert events == [PingDue(expected)]
    assert alice.peer_id.digest not in responder.routing  # only a ping proves it
    assert responder.routing.closest(alice.peer_id.digest, 1, verified_only=False) == [expected]
    # Asked once per reverify_interval, however often it asks.
    reply, events = answer(responder, requester_of(alice, "203.0.113.9"), Ping(announced).encode())
    assert (reply, events) == (Pong(), [])


def test_a_sender_naming_another_node_is_ignored() -> None:
    responder = make_responder()
    alice, bob = identities()[1:3]
    reply, events = answer(responder, requester_of(alice), Ping(contact_of(bob)).encode())
    assert (reply, events) == (Pong(), [])
    assert responder.routing.closest(bob.peer_id.digest, 5, verified_only=False) == []


def test_a_verified_sender_at_its_address_is_not_pinged() -> None:
    responder = make_responder()
    alice = identities()[1]
    responder.routing.verified(contact_of(alice, "127.0.0.1", 4100), NOW)
    _reply, events = answer(responder, requester_of(alice), Ping(contact_of(alice)).encode())
    assert events == [PingDue(contact_of(alice))]  # it moved to another port: prove it there
    responder.routing.verified(contact_of(alice), NOW)
    later = NOW + 1000
    _reply, events = answer(responder, requester_of(alice), Ping(contact_of(alice)).encode(), later)
    assert events == []


def test_find_node_answers_verified_contacts_nearest_first_never_the_requester() -> None:
    responder = make_responder()
    own, requester, *others = identities()
    everyone = [requester, *others]
    for identity in everyone:
        responder.routing.verified(contact_of(identity), NOW)
    target = requester.peer_id.digest
    reply, _events = answer(responder, requester_of(requester), FindNode(target).encode())
    ids = [contact.node_id for contact in reply.contacts]
    expected = sorted((i.peer_id.digest for i in others), key=lambda n: distance(n, target))
    assert ids == expected
    assert own.peer_id.digest not in ids


def test_find_node_answers_at_most_max_contacts() -> None:
    responder = make_responder(wire=WireConfig(max_contacts=2))
    _own, requester, *others = identities()
    for identity in others:
        responder.routing.verified(contact_of(identity), NOW)
    reply, _events = answer(responder, requester_of(requester), FindNode(bytes(32)).encode())
    assert len(reply.contacts) == 2


def test_unverified_contacts_are_never_handed_out() -> None:
    responder = make_responder()
    _own, requester, alice, bob, *_ = identities()
    responder.routing.seen_unverified(contact_of(alice), NOW, source=bob.peer_id.digest)
    reply, _events = answer(responder, requester_of(requester), FindNode(bytes(32)).encode())
    assert reply == Nodes(())


def test_find_value_answers_the_record_if_newer_than_the_requesters_else_nodes() -> None:
    responder = make_responder()
    _own, requester, alice, *_ = identities()
    responder.routing.verified(contact_of(alice), NOW)
    record = immutable(b"hello")
    assert responder.store.put_untrusted(record, "somewhere", WALL).stored
    reply, _events = answer(responder, requester_of(requester), FindValue(record.key).encode())
    assert reply == Value(record)
    # An immutable value has sequence 0: a requester holding "sequence 1" gets nodes.
    reply, _events = answer(responder, requester_of(requester), FindValue(record.key, 1).encode())
    assert reply == Nodes((contact_of(alice),))
    missing = immutable(b"nobody stored this")
    reply, _events = answer(responder, requester_of(requester), FindValue(missing.key).encode())
    assert reply == Nodes((contact_of(alice),))


def test_store_is_charged_to_the_requesters_network() -> None:
    record_size = len(immutable(b"x" * 100).encoding)
    responder = make_responder(store=StoreConfig(per_source_bytes=3 * record_size))
    _own, flooder_a, flooder_b, honest, *_ = identities()
    refusals = []
    for serial in range(6):
        flooder = (flooder_a, flooder_b)[serial % 2]  # two peer ids, one /24
        requester = requester_of(flooder, f"198.51.100.{10 + serial}")
        record = immutable(b"%d" % serial + b"x" * 99)
        reply, events = answer(responder, requester, Store(record).encode())
        refusals.append(reply)
        if reply == Stored():
            assert events == [RecordStored(record)]
    assert refusals == [Stored()] * 3 + [Refused(Refusal.QUOTA)] * 3
    record = immutable(b"y" * 100)
    reply, events = answer(responder, requester_of(honest, "203.0.113.5"), Store(record).encode())
    assert (reply, events) == (Stored(), [RecordStored(record)])
    assert responder.store.get(record.key, WALL) == record


def test_store_refusals_come_from_the_store() -> None:
    responder = make_responder()
    requester = requester_of(identities()[1])
    old = immutable(b"old", issued_at=T0 - 100_000, lifetime=1000)
    reply, events = answer(responder, requester, Store(old).encode())
    assert (reply, events) == (Refused(Refusal.EXPIRED), [])


def test_not_responsible_when_k_nearer_contacts_are_known() -> None:
    responder = make_responder(wire=WireConfig(max_contacts=1))
    own, requester, alice, *_ = identities()
    responder.routing.verified(contact_of(alice), NOW)
    near_alice = next(
        record
        for record in (immutable(b"value %d" % serial) for serial in range(64))
        if distance(alice.peer_id.digest, record.key) < distance(own.peer_id.digest, record.key)
    )
    reply, _events = answer(responder, requester_of(requester), Store(near_alice).encode())
    assert reply == Refused(Refusal.NOT_RESPONSIBLE)
    lenient = make_responder(ResponderConfig(refuse_not_responsible=False), None,
                             WireConfig(max_contacts=1))  # fmt: skip
    lenient.routing.verified(contact_of(alice), NOW)
    reply, _events = answer(lenient, requester_of(requester), Store(near_alice).encode())
    assert reply == Stored()


def test_rate_limit_per_requester() -> None:
    config = ResponderConfig(rate_limit=RateLimit(rate=1.0, burst=2))
    responder = make_responder(config)
    _own, alice, bob, *_ = identities()
    ping = Ping().encode()
    assert [answer(responder, requester_of(alice), ping)[0] for _ in range(2)] == [Pong()] * 2
    reply, events = answer(responder, requester_of(alice), ping)
    assert (reply, events) == (None, [RequestLimited(alice.peer_id.digest)])
    # A STORE over the limit is refused QUOTA (not parsed, not stored).
    record = immutable(b"late")
    reply, _events = answer(responder, requester_of(alice), Store(record).encode())
    assert reply == Refused(Refusal.QUOTA)
    assert responder.store.get(record.key, WALL) is None
    # Another peer is not affected; the first gets a token back after a second.
    assert answer(responder, requester_of(bob), ping)[0] == Pong()
    assert answer(responder, requester_of(alice), ping, NOW + 1.0)[0] == Pong()


def test_malformed_requests_and_replies_sent_as_requests_are_protocol_errors() -> None:
    responder = make_responder()
    requester = requester_of(identities()[1])
    for data in (b"", b"\x01", b"\x02\x01\x00", Ping().encode() + b"\x00", Pong().encode()):
        with pytest.raises(DhtProtocolError):
            responder.exchange(requester).receive_request_untrusted(data, NOW, WALL)
    exchange = responder.exchange(requester)
    exchange.receive_request_untrusted(Ping().encode(), NOW, WALL)
    with pytest.raises(DhtProtocolError):
        exchange.receive_request_untrusted(Ping().encode(), NOW, WALL)


def test_rate_limiter_table_is_bounded_and_forgets_the_least_recently_seen() -> None:
    limiter = RateLimiter(RateLimit(rate=1.0, burst=1), capacity=2)
    assert limiter.allow("a", 0.0)
    assert limiter.allow("b", 0.0)
    assert not limiter.allow("a", 0.0)
    assert limiter.allow("c", 0.0)  # "b" (least recently seen) goes
    assert len(limiter) == 2
    assert not limiter.allow("a", 0.0)
    assert limiter.allow("b", 0.0)  # forgotten, so a new (full) bucket


def test_network_prefixes() -> None:
    assert network_prefix("198.51.100.7") == network_prefix("198.51.100.200")
    assert network_prefix("198.51.100.7") != network_prefix("198.51.101.7")
    assert network_prefix("::ffff:198.51.100.7") == network_prefix("198.51.100.9")
    assert network_prefix("2001:db8:1:2::1") == network_prefix("2001:db8:1:ffff::2")
    assert network_prefix("2001:db8:1::1") != network_prefix("2001:db8:2::1")
    assert network_prefix("Example.org") == (0, "example.org")
    assert store_source("127.0.0.1") != store_source("127.0.0.2")  # loopback: each address
    assert store_source("198.51.100.7") == store_source("198.51.100.8")
