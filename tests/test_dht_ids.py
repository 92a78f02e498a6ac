"""The DHT's shared vocabulary: keys, XOR distance, contacts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2ptls.dht._errors import DhtProtocolError
from p2ptls.dht._ids import (
    KEY_BITS,
    Contact,
    check_key_untrusted,
    closest,
    common_prefix_length,
    distance,
)

keys = st.binary(min_size=32, max_size=32)


@given(keys, keys, keys)
def test_xor_distance_is_a_metric(a: bytes, b: bytes, c: bytes) -> None:
    assert distance(a, a) == 0
    assert distance(a, b) == distance(b, a)
    assert distance(a, c) <= distance(a, b) + distance(b, c)
    assert (distance(a, b) == 0) == (a == b)


@given(keys, keys)
def test_common_prefix_length_counts_shared_leading_bits(a: bytes, b: bytes) -> None:
    length = common_prefix_length(a, b)
    bits_a = format(int.from_bytes(a, "big"), "0256b")
    bits_b = format(int.from_bytes(b, "big"), "0256b")
    assert bits_a[:length] == bits_b[:length]
    assert length == KEY_BITS or bits_a[length] != bits_b[length]


def test_closest_orders_by_distance_to_the_target() -> None:
    target = bytes(32)
    ids = [bytes([0x80]) + bytes(31), bytes(31) + b"\x01", bytes([0x01]) + bytes(31)]
    assert closest(target, ids, 2) == [ids[1], ids[2]]


@pytest.mark.parametrize("size", [0, 31, 33])
def test_a_key_of_the_wrong_size_is_a_protocol_error(size: int) -> None:
    with pytest.raises(DhtProtocolError):
        check_key_untrusted(bytes(size))


def test_a_contact_is_named_by_its_records_id(identities) -> None:
    record = identities[0].record.with_address("127.0.0.1", 4000)
    contact = Contact.of(record)
    assert contact.node_id == identities[0].peer_id.digest
    assert contact.address == ("127.0.0.1", 4000)
    with pytest.raises(ValueError):
        Contact.of(identities[0].record)
