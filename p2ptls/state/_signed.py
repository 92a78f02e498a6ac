"""The signed objects of the state network: records, batches, epoch certificates and spans.

Theory of operation
-------------------
The bytes that carry authenticity are never re-serialised: a *record* is signed (through its
SHA-256 in a batch) exactly as it travels, a *batch body* is signed by Ed25519 exactly as it
travels, and an *epoch certificate body* is signed by RSA-PSS exactly as it travels. Receivers keep
those exact bytes and hand them on unchanged, so a relayed record is byte-identical to what its
owner signed.

::

    record      = kind u8 | owner 32 | epoch u64 | seq u64 | klen u16 | key | vlen u32 | value
    batch body  = network 32 | owner 32 | epoch u64 | first_seq u64 | n u16 | n x SHA-256(record)
    certificate = body(network 32 | owner 32 | epoch u64 | ed25519 key 32)
                  | slen u16 | RSA-PSS signature | dlen u16 | owner's RSA key (DER SPKI)
    span        = owner 32 | from_epoch u64 | from_seq u64 | g u16 | g x group
    group       = batch body | Ed25519 signature 64 | r u16 | r x (rlen u32 | record)

This module only encodes and decodes; it holds no state and does no cryptography except hashing
record bytes where a parser needs nothing else. Decoders end in ``_untrusted``, check each
length against the bytes that remain (and every count against its bound) before slicing, and
raise only
:class:`~p2ptls.state.errors.StateProtocolError`. The messages that carry these objects are in
``_wire``; ``protocol/SPEC-state.md`` is normative.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import attrs

from .errors import StateProtocolError

ID_SIZE = 32
HASH_SIZE = 32
ED25519_KEY_SIZE = 32
ED25519_SIGNATURE_SIZE = 64
MAX_KEY_BYTES = 256
"""Longest key, in UTF-8 bytes."""
MAX_VALUE_LIMIT = 8 * 1024 * 1024
"""No configuration may allow values above this (a record must fit one message)."""
DEFAULT_MAX_VALUE_SIZE = 1024 * 1024
MAX_BATCH_LIMIT = 4096
"""Most records one batch may cover (receivers accept up to this whatever their own setting)."""
MIN_RSA_SIGNATURE = 256
MAX_RSA_SIGNATURE = 512
MAX_PUBLIC_KEY_DER = 1024

# Record kinds.
PUT = 0x01
DELETE = 0x02

RECORD_HEAD = struct.Struct(">B32sQQH")  # kind, owner, epoch, seq, key length
BATCH_HEAD = struct.Struct(">32s32sQQH")  # network, owner, epoch, first_seq, count
CERT_BODY = struct.Struct(">32s32sQ32s")  # network, owner, epoch, Ed25519 public key
SPAN_HEAD = struct.Struct(">32sQQH")  # owner, from_epoch, from_seq, group count
U8 = struct.Struct(">B")
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
MAX_U64 = (1 << 64) - 1
MAX_COUNTER = (1 << 63) - 1
"""Epochs and sequence numbers lie in ``1 .. MAX_COUNTER - 1`` (they fit SQLite's integers)."""

Version = tuple[int, int]
"""``(epoch, sequence)``; compared lexicographically. ``(0, 0)`` means "nothing yet"."""
NO_VERSION: Version = (0, 0)


@attrs.frozen
class Limits:
    """Bounds a receiver enforces while parsing."""

    max_value_size: int = DEFAULT_MAX_VALUE_SIZE
    """Largest value in a record (must be the same on every node of a network)."""
    max_direct_size: int = 1024 * 1024
    """Largest direct-message payload."""

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.max_value_size <= MAX_VALUE_LIMIT:
            raise ValueError(f"max_value_size must be between 0 and {MAX_VALUE_LIMIT}")
        if not 0 <= self.max_direct_size <= MAX_VALUE_LIMIT:
            raise ValueError(f"max_direct_size must be between 0 and {MAX_VALUE_LIMIT}")


class Reader:
    """Bounds-checked reading from untrusted bytes."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, size: int) -> bytes:
        if size < 0 or size > self.remaining:
            raise StateProtocolError("message truncated")
        start = self._pos
        self._pos = start + size
        return self._data[start : self._pos]

    def unpack(self, fmt: struct.Struct) -> tuple[Any, ...]:
        if fmt.size > self.remaining:
            raise StateProtocolError("message truncated")
        values = fmt.unpack_from(self._data, self._pos)
        self._pos += fmt.size
        return values

    def u8(self) -> int:
        return int(self.unpack(U8)[0])

    def u16(self) -> int:
        return int(self.unpack(U16)[0])

    def u32(self) -> int:
        return int(self.unpack(U32)[0])

    def count(self, fmt: struct.Struct, limit: int, min_item_size: int) -> int:
        """Read a count and refuse it if it exceeds ``limit`` or the bytes that remain."""
        value = self.u16() if fmt is U16 else self.u32()
        if value > limit or value * min_item_size > self.remaining:
            raise StateProtocolError("count exceeds its bound")
        return value

    def end(self) -> None:
        if self._pos != len(self._data):
            raise StateProtocolError("trailing bytes")


def check_version(epoch: int, seq: int) -> None:
    if not (1 <= epoch < MAX_COUNTER and 1 <= seq < MAX_COUNTER):
        raise StateProtocolError("epoch and sequence must be between 1 and 2^63-2")


# --- records ----------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class Record:
    """One signed write of an owner: ``value`` is ``None`` for a deletion (tombstone).

    ``raw`` holds the exact bytes; the batch signature covers ``SHA-256(raw)``.
    """

    owner: bytes
    epoch: int
    seq: int
    key: str
    value: bytes | None
    raw: bytes = attrs.field(repr=False)

    @property
    def version(self) -> Version:
        return (self.epoch, self.seq)


def encode_record(owner: bytes, epoch: int, seq: int, key: str, value: bytes | None) -> Record:
    """Build a record (``value=None`` deletes ``key``). Raises ``ValueError`` on bad input."""
    if len(owner) != ID_SIZE:
        raise ValueError("an owner id is 32 bytes")
    if not (1 <= epoch < MAX_COUNTER and 1 <= seq < MAX_COUNTER):
        raise ValueError("epoch and sequence must be between 1 and 2^63-2")
    key_bytes = key.encode("utf-8")
    if len(key_bytes) > MAX_KEY_BYTES:
        raise ValueError(f"a key is at most {MAX_KEY_BYTES} bytes of UTF-8")
    kind = DELETE if value is None else PUT
    payload = b"" if value is None else bytes(value)
    if len(payload) > MAX_VALUE_LIMIT:
        raise ValueError("value too large")
    raw = b"".join(
        (
            RECORD_HEAD.pack(kind, owner, epoch, seq, len(key_bytes)),
            key_bytes,
            U32.pack(len(payload)),
            payload,
        )
    )
    return Record(owner, epoch, seq, key, None if value is None else payload, raw)


def parse_record_untrusted(raw: bytes, limits: Limits) -> Record:
    """Parse one record's exact bytes."""
    reader = Reader(raw)
    kind, owner, epoch, seq, key_length = reader.unpack(RECORD_HEAD)
    if kind not in (PUT, DELETE):
        raise StateProtocolError("unknown record kind")
    check_version(epoch, seq)
    if key_length > MAX_KEY_BYTES:
        raise StateProtocolError("key too long")
    try:
        key = reader.take(key_length).decode("utf-8")
    except UnicodeDecodeError:
        raise StateProtocolError("key is not UTF-8") from None
    value_length = reader.u32()
    if value_length > limits.max_value_size:
        raise StateProtocolError("value too large")
    if kind == DELETE and value_length:
        raise StateProtocolError("a deletion carries no value")
    value = reader.take(value_length)
    reader.end()
    return Record(owner, epoch, seq, key, value if kind == PUT else None, raw)


# --- batches ----------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class Batch:
    """A signed list of record hashes covering ``first_seq .. first_seq + count - 1``.

    ``body`` is the exact signed bytes; ``signature`` the Ed25519 signature under the owner's
    certified key for ``epoch``.
    """

    network_id: bytes
    owner: bytes
    epoch: int
    first_seq: int
    count: int
    body: bytes = attrs.field(repr=False)
    signature: bytes = attrs.field(repr=False)

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1

    @property
    def first_version(self) -> Version:
        return (self.epoch, self.first_seq)

    @property
    def last_version(self) -> Version:
        return (self.epoch, self.last_seq)

    def hash_at(self, seq: int) -> bytes:
        """The record hash this batch signs for ``seq`` (which must be in range)."""
        offset = BATCH_HEAD.size + (seq - self.first_seq) * HASH_SIZE
        return self.body[offset : offset + HASH_SIZE]

    def encode(self) -> bytes:
        return self.body + self.signature


def encode_batch_body(
    network_id: bytes, owner: bytes, epoch: int, first_seq: int, hashes: Sequence[bytes]
) -> bytes:
    """The exact bytes an owner signs for a batch."""
    if not 1 <= len(hashes) <= MAX_BATCH_LIMIT:
        raise ValueError(f"a batch covers 1 to {MAX_BATCH_LIMIT} records")
    if not (
        1 <= epoch < MAX_COUNTER and first_seq >= 1 and first_seq + len(hashes) - 1 < MAX_COUNTER
    ):
        raise ValueError("epoch or sequence out of range")
    head = BATCH_HEAD.pack(network_id, owner, epoch, first_seq, len(hashes))
    return head + b"".join(hashes)


def read_batch_untrusted(reader: Reader) -> Batch:
    head = reader.take(BATCH_HEAD.size)
    network_id, owner, epoch, first_seq, count = BATCH_HEAD.unpack(head)
    check_version(epoch, first_seq)
    if not 1 <= count <= MAX_BATCH_LIMIT:
        raise StateProtocolError("batch count out of range")
    if first_seq + count - 1 >= MAX_COUNTER:
        raise StateProtocolError("batch sequence out of range")
    hashes = reader.take(count * HASH_SIZE)
    signature = reader.take(ED25519_SIGNATURE_SIZE)
    return Batch(network_id, owner, epoch, first_seq, count, head + hashes, signature)


def parse_batch_untrusted(data: bytes) -> Batch:
    """Parse ``batch body | signature`` (the form stored by nodes and used in vectors)."""
    reader = Reader(data)
    batch = read_batch_untrusted(reader)
    reader.end()
    return batch


# --- epoch certificates -----------------------------------------------------------------------


@attrs.frozen(slots=True)
class EpochCertificate:
    """An owner's RSA-PSS signature over (network, owner, epoch, Ed25519 public key).

    ``public_key_der`` is the owner's RSA identity key; its SHA-256 must equal ``owner``.
    """

    network_id: bytes
    owner: bytes
    epoch: int
    signing_key: bytes
    signature: bytes = attrs.field(repr=False)
    public_key_der: bytes = attrs.field(repr=False)

    @property
    def body(self) -> bytes:
        """The exact bytes the RSA signature covers (after the fixed context string)."""
        return CERT_BODY.pack(self.network_id, self.owner, self.epoch, self.signing_key)

    def encode(self) -> bytes:
        return b"".join(
            (
                self.body,
                U16.pack(len(self.signature)),
                self.signature,
                U16.pack(len(self.public_key_der)),
                self.public_key_der,
            )
        )


def read_certificate_untrusted(reader: Reader) -> EpochCertificate:
    network_id, owner, epoch, signing_key = reader.unpack(CERT_BODY)
    if not 1 <= epoch < MAX_COUNTER:
        raise StateProtocolError("epoch out of range")
    signature_length = reader.u16()
    if not MIN_RSA_SIGNATURE <= signature_length <= MAX_RSA_SIGNATURE:
        raise StateProtocolError("certificate signature length out of range")
    signature = reader.take(signature_length)
    key_length = reader.u16()
    if not 1 <= key_length <= MAX_PUBLIC_KEY_DER:
        raise StateProtocolError("certificate key length out of range")
    der = reader.take(key_length)
    return EpochCertificate(network_id, owner, epoch, signing_key, signature, der)


def parse_certificate_untrusted(data: bytes) -> EpochCertificate:
    """Parse one encoded certificate."""
    reader = Reader(data)
    certificate = read_certificate_untrusted(reader)
    reader.end()
    return certificate


# --- spans ------------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class Group:
    """Records of one batch, in ascending sequence, with the batch that proves them."""

    batch: Batch
    records: tuple[Record, ...]


@attrs.frozen(slots=True)
class Span:
    """All of one owner's *current* records with versions in ``(since, last]``, ascending.

    ``since`` is the sender's claim about what the receiver already holds; records the owner has
    since overwritten are left out (they are superseded), which is what coalesces bursts.
    """

    owner: bytes
    since: Version
    groups: tuple[Group, ...]

    @property
    def last_version(self) -> Version:
        return self.groups[-1].records[-1].version

    def encoded_size(self) -> int:
        size = SPAN_HEAD.size
        for group in self.groups:
            size += len(group.batch.body) + ED25519_SIGNATURE_SIZE + U16.size
            size += sum(U32.size + len(record.raw) for record in group.records)
        return size

    def encode(self) -> bytes:
        parts = [SPAN_HEAD.pack(self.owner, self.since[0], self.since[1], len(self.groups))]
        for group in self.groups:
            parts.append(group.batch.body)
            parts.append(group.batch.signature)
            parts.append(U16.pack(len(group.records)))
            for record in group.records:
                parts.append(U32.pack(len(record.raw)))
                parts.append(record.raw)
        return b"".join(parts)


MIN_GROUP = BATCH_HEAD.size + HASH_SIZE + ED25519_SIGNATURE_SIZE + U16.size


def read_span_untrusted(reader: Reader, limits: Limits) -> Span:
    owner, since_epoch, since_seq, group_count = reader.unpack(SPAN_HEAD)
    if group_count == 0 or group_count * MIN_GROUP > reader.remaining:
        raise StateProtocolError("span group count out of range")
    if since_epoch >= MAX_COUNTER or since_seq >= MAX_COUNTER:
        raise StateProtocolError("span start out of range")
    since: Version = (since_epoch, since_seq)
    groups = []
    previous: Version = since
    for _ in range(group_count):
        batch = read_batch_untrusted(reader)
        if batch.owner != owner:
            raise StateProtocolError("a batch in a span names another owner")
        record_count = reader.u16()
        if not 1 <= record_count <= batch.count:
            raise StateProtocolError("group record count out of range")
        records = []
        for _ in range(record_count):
            length = reader.u32()
            if length < RECORD_HEAD.size + U32.size or length > reader.remaining:
                raise StateProtocolError("record length out of range")
            record = parse_record_untrusted(reader.take(length), limits)
            if record.owner != owner or record.epoch != batch.epoch:
                raise StateProtocolError("a record names another owner or epoch than its batch")
            if not batch.first_seq <= record.seq <= batch.last_seq:
                raise StateProtocolError("a record lies outside its batch")
            if record.version <= previous:
                raise StateProtocolError("records out of order")
            previous = record.version
            records.append(record)
        groups.append(Group(batch, tuple(records)))
    return Span(owner, since, tuple(groups))
