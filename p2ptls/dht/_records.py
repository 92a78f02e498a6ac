"""Signed DHT records: peer records, immutable values and mutable values (SPEC-dht.md §5).

Theory of operation
-------------------
A record is a byte string with a fixed layout. Its *encoding* is what is signed (behind a
domain-separation label), stored, hashed and forwarded: nothing is ever re-serialised, so a
holder hands on exactly the bytes the writer signed (as BEP 44 does). Three kinds share one
header byte:

* a **peer record** lists a peer's current addresses, signed with its RSA identity (RSA-PSS,
  SHA-256, salt 32, as :mod:`p2ptls.identity` signs); its key is the peer id, the SHA-256 of the
  public key it carries;
* an **immutable value** is keyed by its own SHA-256 and carries no signature;
* a **mutable value** is named by an Ed25519 owner key and a salt; its key is
  ``SHA-256(MUTABLE_KEY_LABEL | owner | salt)``; the owner signs the key, a sequence number that
  never goes down, an optional compare-and-swap sequence, the expiry and the value (or a deletion
  flag: a signed tombstone).

:func:`parse_record_untrusted` checks everything a record says about itself (layout, bounds,
signature, the key it derives); everything that depends on the holder (its clock, what it already
holds, its quotas) is :class:`p2ptls.dht._store.RecordStore`'s business. Every record has an
issue time and an expiry (whole Unix seconds); its lifetime is bounded, a holder never extends it.
Of two records under one key the *newer* wins (:func:`newer`): the higher sequence, and at equal
sequence the greater encoding (bytewise), so every honest holder picks the same one.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import struct
from typing import Any

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .._errors import PeerDatabaseError
from ..identity import PSS_SALT_LENGTH, Identity, PeerRecord
from ._errors import DhtProtocolError

PEER_RECORD_LABEL = b"p2ptls1 dht peer record\x00"
MUTABLE_RECORD_LABEL = b"p2ptls1 dht mutable record\x00"
MUTABLE_KEY_LABEL = b"p2ptls1 dht mutable key\x00"
ED25519_KEY_SIZE = 32
ED25519_SIGNATURE_SIZE = 64
MAX_SALT_SIZE = 64
MAX_ADDRESSES = 8
MAX_SEQUENCE = 2**64 - 1
FLAG_CAS = 0x01
FLAG_DELETED = 0x02
_MAX_DER_SIZE = 1024
_MAX_RSA_SIGNATURE_SIZE = 512

_U16 = struct.Struct(">H")
_PEER_HEAD = struct.Struct(">BQQQH")  # kind, sequence, issued_at, expires_at, der length
_IMMUTABLE_HEAD = struct.Struct(">BQQH")  # kind, issued_at, expires_at, value length
_MUTABLE_HEAD = struct.Struct(">B32sB")  # kind, owner, salt length
_MUTABLE_MIDDLE = struct.Struct(">QBQQQH")  # sequence, flags, cas, issued, expires, value length


class RecordKind(enum.IntEnum):
    """The first byte of every record."""

    PEER = 1
    IMMUTABLE = 2
    MUTABLE = 3


@attrs.frozen
class RecordLimits:
    """What a node accepts in a record; equal on every node of a network."""

    max_value_size: int = attrs.field(default=4096)
    """Bytes of an immutable or mutable value (at most 12288: a record fits a 16 KiB message)."""
    max_lifetime: float = 48 * 3600.0
    """Longest ``expires_at - issued_at`` accepted (48 h)."""
    max_clock_skew: float = 300.0
    """How far in the future ``issued_at`` may lie by the holder's clock."""

    @max_value_size.validator
    def _check_value_size(self, _attribute: Any, value: int) -> None:
        if not 0 <= value <= 12288:
            raise ValueError("max_value_size must lie in 0..12288")


DEFAULT_LIMITS = RecordLimits()


@attrs.frozen
class PeerAddressRecord:
    """A peer's signed current addresses; key = its peer id."""

    sequence: int
    issued_at: int
    expires_at: int
    peer: PeerRecord = attrs.field(repr=False)
    addresses: tuple[tuple[str, int], ...]
    encoding: bytes = attrs.field(repr=False)

    @property
    def key(self) -> bytes:
        return self.peer.peer_id.digest


@attrs.frozen
class ImmutableValue:
    """A value keyed by its SHA-256."""

    issued_at: int
    expires_at: int
    value: bytes = attrs.field(repr=False)
    encoding: bytes = attrs.field(repr=False)

    @property
    def key(self) -> bytes:
        return hashlib.sha256(self.value).digest()

    @property
    def sequence(self) -> int:
        return 0


@attrs.frozen
class MutableValue:
    """A value (or tombstone) named by an Ed25519 owner and a salt, signed by the owner."""

    owner: bytes = attrs.field(repr=False)
    salt: bytes = attrs.field(repr=False)
    sequence: int
    cas: int | None
    issued_at: int
    expires_at: int
    value: bytes | None = attrs.field(repr=False)
    """``None`` for a signed deletion."""
    encoding: bytes = attrs.field(repr=False)

    @property
    def key(self) -> bytes:
        return mutable_key(self.owner, self.salt)

    @property
    def deleted(self) -> bool:
        return self.value is None


Record = PeerAddressRecord | ImmutableValue | MutableValue


def mutable_key(owner: bytes, salt: bytes) -> bytes:
    """The key of the mutable value ``(owner, salt)``."""
    return hashlib.sha256(MUTABLE_KEY_LABEL + owner + salt).digest()


def newer(candidate: Record, held: Record) -> bool:
    """Whether ``candidate`` replaces ``held`` (same key): a higher sequence, or an equal one and a
    greater encoding. For immutable values (sequence 0) this compares the encodings, whose first
    field after the kind is the issue time."""
    if candidate.sequence != held.sequence:
        return candidate.sequence > held.sequence
    return candidate.encoding > held.encoding


# --- addresses ----------------------------------------------------------------------


def encode_address(host: str, port: int) -> bytes:
    """``family (4 or 6) | 4 or 16 address bytes | u16 port``; hosts are IP literals."""
    ip = ipaddress.ip_address(host)
    if not 1 <= port <= 65535:
        raise ValueError("a port lies in 1..65535")
    return bytes([ip.version]) + ip.packed + _U16.pack(port)


def parse_address_untrusted(data: bytes, offset: int) -> tuple[tuple[str, int], int]:
    """One address at ``offset``; returns it and the offset after it."""
    family = take_bytes(data, offset, 1)[0]
    if family not in (4, 6):
        raise DhtProtocolError("unknown address family")
    size = 4 if family == 4 else 16
    raw = take_bytes(data, offset + 1, size)
    (port,) = _U16.unpack(take_bytes(data, offset + 1 + size, 2))
    if port == 0:
        raise DhtProtocolError("port 0")
    host = str(ipaddress.IPv4Address(raw) if family == 4 else ipaddress.IPv6Address(raw))
    return (host, port), offset + 3 + size


def take_bytes(data: bytes, offset: int, size: int) -> bytes:
    """``size`` bytes of untrusted ``data`` at ``offset``, or :class:`DhtProtocolError`."""
    if size < 0 or offset + size > len(data):
        raise DhtProtocolError("truncated")
    return data[offset : offset + size]


def load_public_key_untrusted(der: bytes) -> PeerRecord:
    """The peer whose canonical RSA public key is ``der``."""
    try:
        return PeerRecord.from_public_key(der)
    except (ValueError, PeerDatabaseError):
        raise DhtProtocolError("not an acceptable RSA public key") from None


# --- peer records --------------------------------------------------------------------------------


def sign_peer_record(
    identity: Identity,
    sequence: int,
    addresses: tuple[tuple[str, int], ...],
    issued_at: int,
    expires_at: int,
) -> PeerAddressRecord:
    """The identity's signed peer record (its encoding is final)."""
    if not 1 <= len(addresses) <= MAX_ADDRESSES:
        raise ValueError(f"a peer record lists 1..{MAX_ADDRESSES} addresses")
    _check_times(sequence, issued_at, expires_at)
    der = identity.record.public_key_der
    body = (
        _PEER_HEAD.pack(RecordKind.PEER, sequence, issued_at, expires_at, len(der))
        + der
        + bytes([len(addresses)])
        + b"".join(encode_address(host, port) for host, port in addresses)
    )
    signature = identity.sign_pss(PEER_RECORD_LABEL + body)
    encoding = body + _U16.pack(len(signature)) + signature
    return PeerAddressRecord(
        sequence, issued_at, expires_at, identity.record, tuple(addresses), encoding
    )


def _parse_peer(data: bytes) -> PeerAddressRecord:
    _kind, sequence, issued_at, expires_at, der_size = _PEER_HEAD.unpack(
        take_bytes(data, 0, _PEER_HEAD.size)
    )
    if der_size > _MAX_DER_SIZE:
        raise DhtProtocolError("public key too long")
    offset = _PEER_HEAD.size
    peer = load_public_key_untrusted(take_bytes(data, offset, der_size))
    offset += der_size
    count = take_bytes(data, offset, 1)[0]
    if not 1 <= count <= MAX_ADDRESSES:
        raise DhtProtocolError("bad address count")
    offset += 1
    addresses = []
    for _ in range(count):
        address, offset = parse_address_untrusted(data, offset)
        addresses.append(address)
    body_end = offset
    (signature_size,) = _U16.unpack(take_bytes(data, offset, 2))
    if signature_size > _MAX_RSA_SIGNATURE_SIZE:
        raise DhtProtocolError("signature too long")
    signature = take_bytes(data, offset + 2, signature_size)
    if offset + 2 + signature_size != len(data):
        raise DhtProtocolError("trailing bytes")
    _check_times_untrusted(sequence, issued_at, expires_at)
    try:
        peer.public_key.verify(
            signature,
            PEER_RECORD_LABEL + data[:body_end],
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT_LENGTH),
            hashes.SHA256(),
        )
    except InvalidSignature:
        raise DhtProtocolError("bad signature") from None
    return PeerAddressRecord(sequence, issued_at, expires_at, peer, tuple(addresses), data)


# --- immutable values ----------------------------------------------------------------------


def make_immutable(value: bytes, issued_at: int, expires_at: int) -> ImmutableValue:
    """An immutable value record."""
    _check_times(0, issued_at, expires_at, first_sequence=0)
    encoding = _IMMUTABLE_HEAD.pack(RecordKind.IMMUTABLE, issued_at, expires_at, len(value)) + value
    return ImmutableValue(issued_at, expires_at, value, encoding)


def _parse_immutable(data: bytes, limits: RecordLimits) -> ImmutableValue:
    _kind, issued_at, expires_at, size = _IMMUTABLE_HEAD.unpack(
        take_bytes(data, 0, _IMMUTABLE_HEAD.size)
    )
    if size > limits.max_value_size:
        raise DhtProtocolError("value too large")
    if _IMMUTABLE_HEAD.size + size != len(data):
        raise DhtProtocolError("truncated or trailing bytes")
    _check_times_untrusted(0, issued_at, expires_at, first_sequence=0)
    return ImmutableValue(issued_at, expires_at, data[_IMMUTABLE_HEAD.size :], data)


# --- mutable values ------------------------------------------------------------------------------


def sign_mutable(
    private_key: Ed25519PrivateKey,
    salt: bytes,
    sequence: int,
    value: bytes | None,
    *,
    issued_at: int,
    expires_at: int,
    cas: int | None = None,
) -> MutableValue:
    """The owner's signed mutable value (``value=None``: a signed deletion)."""
    if len(salt) > MAX_SALT_SIZE:
        raise ValueError(f"a salt is at most {MAX_SALT_SIZE} bytes")
    _check_times(sequence, issued_at, expires_at)
    if cas is not None and not 0 <= cas < sequence:
        raise ValueError("cas names an earlier sequence")
    owner = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    flags = (FLAG_CAS if cas is not None else 0) | (FLAG_DELETED if value is None else 0)
    payload = value or b""
    body = (
        _MUTABLE_HEAD.pack(RecordKind.MUTABLE, owner, len(salt))
        + salt
        + _MUTABLE_MIDDLE.pack(sequence, flags, cas or 0, issued_at, expires_at, len(payload))
        + payload
    )
    signature = private_key.sign(MUTABLE_RECORD_LABEL + mutable_key(owner, salt) + body)
    return MutableValue(owner, salt, sequence, cas, issued_at, expires_at, value, body + signature)


def _parse_mutable(data: bytes, limits: RecordLimits) -> MutableValue:
    _kind, owner, salt_size = _MUTABLE_HEAD.unpack(take_bytes(data, 0, _MUTABLE_HEAD.size))
    if salt_size > MAX_SALT_SIZE:
        raise DhtProtocolError("salt too long")
    offset = _MUTABLE_HEAD.size
    salt = take_bytes(data, offset, salt_size)
    offset += salt_size
    sequence, flags, cas, issued_at, expires_at, size = _MUTABLE_MIDDLE.unpack(
        take_bytes(data, offset, _MUTABLE_MIDDLE.size)
    )
    offset += _MUTABLE_MIDDLE.size
    if flags & ~(FLAG_CAS | FLAG_DELETED):
        raise DhtProtocolError("unknown flags")
    if size > limits.max_value_size:
        raise DhtProtocolError("value too large")
    if flags & FLAG_DELETED and size:
        raise DhtProtocolError("a deletion carries no value")
    if not flags & FLAG_CAS and cas:
        raise DhtProtocolError("cas without its flag")
    if flags & FLAG_CAS and cas >= sequence:
        raise DhtProtocolError("cas names a later sequence")
    value = take_bytes(data, offset, size)
    offset += size
    signature = take_bytes(data, offset, ED25519_SIGNATURE_SIZE)
    if offset + ED25519_SIGNATURE_SIZE != len(data):
        raise DhtProtocolError("trailing bytes")
    _check_times_untrusted(sequence, issued_at, expires_at)
    try:
        Ed25519PublicKey.from_public_bytes(owner).verify(
            signature, MUTABLE_RECORD_LABEL + mutable_key(owner, salt) + data[:offset]
        )
    except (InvalidSignature, ValueError):
        raise DhtProtocolError("bad signature") from None
    return MutableValue(
        owner,
        salt,
        sequence,
        cas if flags & FLAG_CAS else None,
        issued_at,
        expires_at,
        None if flags & FLAG_DELETED else value,
        data,
    )


# --- shared checks -------------------------------------------------------------------------------


def _check_times(
    sequence: int, issued_at: int, expires_at: int, *, first_sequence: int = 1
) -> None:
    if not first_sequence <= sequence <= MAX_SEQUENCE:
        raise ValueError("sequence out of range")
    if not 0 <= issued_at < expires_at <= MAX_SEQUENCE:
        raise ValueError("a record expires after it is issued")


def _check_times_untrusted(
    sequence: int, issued_at: int, expires_at: int, *, first_sequence: int = 1
) -> None:
    try:
        _check_times(sequence, issued_at, expires_at, first_sequence=first_sequence)
    except ValueError:
        raise DhtProtocolError("sequence or times out of range") from None


def parse_record_untrusted(data: bytes, limits: RecordLimits = DEFAULT_LIMITS) -> Record:
    """Parse and verify one record: layout, bounds, signature (the key follows from the record).

    Raises only :class:`DhtProtocolError`. Time, sequence order and quotas are the store's.
    """
    data = bytes(data)
    if not data:
        raise DhtProtocolError("empty record")
    kind = data[0]
    if kind == RecordKind.PEER:
        return _parse_peer(data)
    if kind == RecordKind.IMMUTABLE:
        return _parse_immutable(data, limits)
    if kind == RecordKind.MUTABLE:
        return _parse_mutable(data, limits)
    raise DhtProtocolError("unknown record kind")


__all__ = [
    "DEFAULT_LIMITS",
    "MAX_ADDRESSES",
    "MAX_SALT_SIZE",
    "MUTABLE_KEY_LABEL",
    "MUTABLE_RECORD_LABEL",
    "PEER_RECORD_LABEL",
    "ImmutableValue",
    "MutableValue",
    "PeerAddressRecord",
    "Record",
    "RecordKind",
    "RecordLimits",
    "encode_address",
    "load_public_key_untrusted",
    "make_immutable",
    "mutable_key",
    "newer",
    "parse_address_untrusted",
    "parse_record_untrusted",
    "sign_mutable",
    "sign_peer_record",
    "take_bytes",
]
