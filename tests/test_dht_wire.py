"""The DHT's RPC messages (SPEC-dht.md §4): round trips, bounds, forged contacts and a fuzz of the
parser (every malformed input raises only ``DhtProtocolError``)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptls.dht import _wire as wire
from p2ptls.dht._errors import DhtProtocolError
from p2ptls.dht._ids import Contact
from p2ptls.dht._records import sign_peer_record
from p2ptls.dht._store import Refusal
from tests.conftest import identity_pool
from tests.dht_record_support import T0, immutable, mutable


def contact(index: int = 0, host: str = "192.0.2.1", port: int = 7400) -> Contact:
    identity = identity_pool()[index]
    return Contact(identity.peer_record(address=(host, port)), host, port)


def every_message() -> list[wire.Message]:
    peer = sign_peer_record(identity_pool()[1], 3, (("192.0.2.9", 9),), T0, T0 + 60)
    return [
        wire.Ping(contact()),
        wire.Ping(),
        wire.Pong(),
        wire.FindNode(bytes(range(32)), contact(1, "2001:db8::5", 1)),
        wire.FindNode(bytes(32)),
        wire.Nodes(tuple(contact(i % 4, f"10.0.0.{i}", 1000 + i) for i in range(20))),
        wire.Nodes(()),
        wire.FindValue(bytes(range(32)), 2**64 - 1, contact()),
        wire.FindValue(peer.key),
        wire.Value(peer),
        wire.Value(mutable(2, None)),
        wire.Store(immutable(b"x" * 4096), contact()),
        wire.Store(mutable(5, b"v", cas=4)),
        wire.Stored(),
        *(wire.Refused(reason) for reason in Refusal),
    ]


@pytest.mark.parametrize("message", every_message(), ids=lambda m: type(m).__name__)
def test_round_trip(message: wire.Message) -> None:
    encoded = message.encode()
    assert len(encoded) <= wire.MAX_MESSAGE_SIZE
    parsed = wire.parse_message_untrusted(encoded)
    assert type(parsed) is type(message) and parsed.encode() == encoded


def test_contacts_keep_their_key_and_address() -> None:
    sent = wire.Nodes((contact(0), contact(1, "2001:db8::1", 65535)))
    parsed = wire.parse_message_untrusted(sent.encode())
    assert isinstance(parsed, wire.Nodes)
    assert [(c.node_id, c.address) for c in parsed.contacts] == [
        (c.node_id, c.address) for c in sent.contacts
    ]
    assert parsed.contacts[1].record.public_key_der == identity_pool()[1].record.public_key_der


def test_a_contact_whose_id_is_not_the_hash_of_its_key_rejects_the_whole_reply() -> None:
    good = wire.encode_contact(contact(0))
    forged = wire.encode_contact(contact(1))
    forged = hashlib.sha256(b"victim").digest() + forged[32:]
    message = bytes([wire.VERSION, wire.MessageType.NODES, 2]) + good + forged
    with pytest.raises(DhtProtocolError, match="hash"):
        wire.parse_message_untrusted(message)


def test_a_forged_sender_is_rejected_too() -> None:
    encoded = bytearray(wire.Ping(contact()).encode())
    encoded[3] ^= 1
    with pytest.raises(DhtProtocolError):
        wire.parse_message_untrusted(bytes(encoded))


def test_at_most_k_contacts() -> None:
    one = wire.encode_contact(contact())
    message = bytes([wire.VERSION, wire.MessageType.NODES, 21]) + one * 21
    with pytest.raises(DhtProtocolError, match="too many"):
        wire.parse_message_untrusted(message)
    with pytest.raises(ValueError):
        wire.Nodes((contact(),) * 21).encode()
    five = wire.Nodes((contact(),) * 5).encode()
    with pytest.raises(DhtProtocolError):
        wire.parse_message_untrusted(five, wire.WireConfig(max_contacts=4))


def test_oversized_and_malformed_headers() -> None:
    with pytest.raises(DhtProtocolError, match="too large"):
        wire.parse_message_untrusted(wire.Ping().encode() + bytes(wire.MAX_MESSAGE_SIZE))
    for data in (b"", b"\x01", b"\x02\x02", b"\x01\x00", b"\x01\x0a", b"\x01\x02\x00"):
        with pytest.raises(DhtProtocolError):
            wire.parse_message_untrusted(data)
    with pytest.raises(DhtProtocolError):
        wire.parse_message_untrusted(b"\x01\x01\x02")  # sender flag 2
    with pytest.raises(DhtProtocolError):
        wire.parse_message_untrusted(b"\x01\x09\x08")  # unknown refusal


def test_a_store_of_an_oversized_value_is_refused_by_the_parser() -> None:
    message = wire.Store(immutable(b"x" * 4097)).encode()
    with pytest.raises(DhtProtocolError, match="too large"):
        wire.parse_message_untrusted(message)


@pytest.mark.parametrize("message", every_message(), ids=lambda m: type(m).__name__)
def test_every_truncation_is_refused(message: wire.Message) -> None:
    encoded = message.encode()
    for end in range(len(encoded)):
        with pytest.raises(DhtProtocolError):
            wire.parse_message_untrusted(encoded[:end])


def _parse_or_protocol_error(data: bytes) -> None:
    try:
        parsed = wire.parse_message_untrusted(data)
    except DhtProtocolError:
        return
    assert parsed.encode() == data  # what parses is canonical


@settings(derandomize=True, max_examples=500)
@given(st.binary(max_size=2000))
def test_fuzz_random_bytes(data: bytes) -> None:
    _parse_or_protocol_error(data)


@settings(derandomize=True, max_examples=500)
@given(
    st.sampled_from([m.encode() for m in every_message()]),
    st.lists(st.tuples(st.integers(0, 20000), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(-3, 3),
)
def test_fuzz_mutated_messages(encoded: bytes, changes: list[tuple[int, int]], resize: int) -> None:
    data = bytearray(encoded)
    for position, value in changes:
        data[position % len(data)] = value
    if resize < 0:
        del data[resize:]
    else:
        data += bytes(resize)
    _parse_or_protocol_error(bytes(data))
