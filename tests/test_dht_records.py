"""Signed DHT records (SPEC-dht.md §5): encodings, verification, forgeries, the newer-wins order."""

from __future__ import annotations

import contextlib
import struct

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptls.dht import _records as records
from p2ptls.dht._errors import DhtProtocolError
from p2ptls.identity import Identity
from tests.conftest import identity_pool
from tests.dht_record_support import T0, immutable, mutable, owner

ADDRESSES = (("198.51.100.7", 7400), ("2001:db8::7", 7401))


def peer_record(identity: Identity, sequence: int = 1) -> records.PeerAddressRecord:
    return records.sign_peer_record(identity, sequence, ADDRESSES, T0, T0 + 3600)


def test_peer_record_round_trips_and_is_keyed_by_the_peer_id() -> None:
    identity = identity_pool()[0]
    made = peer_record(identity, 7)
    parsed = records.parse_record_untrusted(made.encoding)
    assert isinstance(parsed, records.PeerAddressRecord)
    assert parsed.key == identity.peer_id.digest
    assert (parsed.sequence, parsed.addresses) == (7, ADDRESSES)
    assert (parsed.issued_at, parsed.expires_at) == (T0, T0 + 3600)
    assert parsed.encoding == made.encoding


def test_peer_record_carrying_another_key_is_refused() -> None:
    """A signs, but puts B's key in the record: B's key does not verify A's signature."""
    signer, victim = identity_pool()[:2]
    made = peer_record(signer)
    der_a = signer.record.public_key_der
    der_b = victim.record.public_key_der
    assert len(der_a) == len(der_b)
    forged = made.encoding.replace(der_a, der_b)
    with pytest.raises(DhtProtocolError):
        records.parse_record_untrusted(forged)


def test_peer_record_with_altered_address_or_other_salt_length_is_refused() -> None:
    identity = identity_pool()[0]
    made = peer_record(identity)
    altered = made.encoding.replace(bytes([198, 51, 100, 7]), bytes([198, 51, 100, 8]))
    with pytest.raises(DhtProtocolError):
        records.parse_record_untrusted(altered)
    # The PSS salt length is pinned to 32: a signature with salt 20 does not verify.
    body = made.encoding[: -2 - 256]
    other_salt = identity._private_key.sign(
        records.PEER_RECORD_LABEL + body,
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=20),
        hashes.SHA256(),
    )
    with pytest.raises(DhtProtocolError):
        records.parse_record_untrusted(body + struct.pack(">H", 256) + other_salt)


def test_peer_record_with_a_non_canonical_key_is_refused() -> None:
    identity = identity_pool()[0]
    made = peer_record(identity)
    pkcs1 = identity.record.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.PKCS1
    )
    der = identity.record.public_key_der
    head = made.encoding[:25]
    rest = made.encoding[27 + len(der) :]
    with pytest.raises(DhtProtocolError):
        records.parse_record_untrusted(head + struct.pack(">H", len(pkcs1)) + pkcs1 + rest)


@pytest.mark.parametrize("count", [0, records.MAX_ADDRESSES + 1])
def test_peer_record_address_count_is_bounded(count: int) -> None:
    addresses = tuple(("192.0.2.1", 1000 + i) for i in range(count))
    with pytest.raises(ValueError, match="addresses"):
        records.sign_peer_record(identity_pool()[0], 1, addresses, T0, T0 + 60)


def test_addresses_are_ip_literals() -> None:
    with pytest.raises(ValueError):
        records.encode_address("example.com", 80)
    with pytest.raises(ValueError):
        records.encode_address("192.0.2.1", 0)
    with pytest.raises(DhtProtocolError):
        records.parse_address_untrusted(b"\x05" + bytes(6), 0)
    with pytest.raises(DhtProtocolError):
        records.parse_address_untrusted(b"\x04" + bytes(6), 0)  # port 0


def test_immutable_value_is_keyed_by_its_hash() -> None:
    made = immutable(b"content")
    parsed = records.parse_record_untrusted(made.encoding)
    assert isinstance(parsed, records.ImmutableValue)
    assert parsed.value == b"content" and parsed.key == made.key


def test_mutable_value_round_trips_with_cas_and_as_a_tombstone() -> None:
    for made in (mutable(5, b"v", cas=4), mutable(6, None), mutable(1, b"")):
        parsed = records.parse_record_untrusted(made.encoding)
        assert isinstance(parsed, records.MutableValue)
        assert (parsed.sequence, parsed.cas, parsed.value) == (made.sequence, made.cas, made.value)
        assert parsed.key == records.mutable_key(parsed.owner, b"salt")
    assert mutable(6, None).deleted and not mutable(1, b"").deleted


def test_mutable_key_separates_owners_and_salts() -> None:
    keys = {
        mutable(1).key,
        mutable(1, salt=b"other").key,
        mutable(1, key=owner("someone else")).key,
    }
    assert len(keys) == 3


def test_forged_mutable_value_is_refused() -> None:
    """An attacker puts the victim's owner key on a record it signed with its own key."""
    victim = mutable(1, key=owner("victim"))
    attacker = mutable(2, b"evil", key=owner("attacker"))
    forged = attacker.encoding[:1] + victim.owner + attacker.encoding[33:]
    with pytest.raises(DhtProtocolError):
        records.parse_record_untrusted(forged)


def test_every_flipped_bit_of_a_mutable_value_is_refused() -> None:
    made = mutable(3, b"hello", cas=2).encoding
    for index in range(len(made)):
        for bit in (0x01, 0x80):
            changed = made[:index] + bytes([made[index] ^ bit]) + made[index + 1 :]
            with pytest.raises(DhtProtocolError):
                records.parse_record_untrusted(changed)


def _raw_mutable(flags: int, cas: int, sequence: int, value: bytes) -> bytes:
    """A mutable record with a signature of zeros (checks before the signature must catch it)."""
    return (
        struct.pack(">B32sB", 3, bytes(32), 0)
        + struct.pack(">QBQQQH", sequence, flags, cas, T0, T0 + 60, len(value))
        + value
        + bytes(64)
    )


@pytest.mark.parametrize(
    ("flags", "cas", "sequence", "value"),
    [
        (0x04, 0, 1, b""),  # unknown flag
        (0x02, 0, 1, b"x"),  # a deletion with a value
        (0x00, 3, 5, b""),  # cas without its flag
        (0x01, 5, 5, b""),  # cas not below the sequence
        (0x00, 0, 0, b""),  # sequence 0
    ],
)
def test_malformed_mutable_fields_are_refused(
    flags: int, cas: int, sequence: int, value: bytes
) -> None:
    with pytest.raises(DhtProtocolError):
        records.parse_record_untrusted(_raw_mutable(flags, cas, sequence, value))


def test_value_size_limit_is_configurable_and_bounded() -> None:
    made = immutable(b"x" * 11)
    with pytest.raises(DhtProtocolError):
        records.parse_record_untrusted(made.encoding, records.RecordLimits(max_value_size=10))
    assert records.parse_record_untrusted(made.encoding, records.RecordLimits(max_value_size=11))
    big = immutable(b"x" * 4097)
    with pytest.raises(DhtProtocolError):
        records.parse_record_untrusted(big.encoding)
    with pytest.raises(ValueError):
        records.RecordLimits(max_value_size=12289)


def test_salt_is_bounded() -> None:
    with pytest.raises(ValueError):
        mutable(1, salt=bytes(records.MAX_SALT_SIZE + 1))
    long_salt = struct.pack(">B32sB", 3, bytes(32), records.MAX_SALT_SIZE + 1) + bytes(200)
    with pytest.raises(DhtProtocolError):
        records.parse_record_untrusted(long_salt)


def test_writer_side_checks() -> None:
    with pytest.raises(ValueError):
        mutable(2, cas=2)
    with pytest.raises(ValueError):
        mutable(0)
    with pytest.raises(ValueError):
        records.make_immutable(b"", T0, T0)


def test_newer_is_higher_sequence_then_greater_encoding() -> None:
    low, high = mutable(1, b"zzz"), mutable(2, b"aaa")
    assert records.newer(high, low) and not records.newer(low, high)
    one, other = mutable(2, b"one"), mutable(2, b"other")
    assert records.newer(one, other) != records.newer(other, one)
    assert not records.newer(one, one)


@settings(derandomize=True, max_examples=200)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_the_protocol_error(data: bytes) -> None:
    with contextlib.suppress(DhtProtocolError):
        records.parse_record_untrusted(data)
