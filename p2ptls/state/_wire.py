"""Messages of the state network: what travels on a ``p2ptls/state/1`` logical stream.

Theory of operation
-------------------
Every state-network message is one whole message of its logical stream
(:meth:`~p2ptls.LogicalStream.send_message`) whose first byte is its type. STATE_HELLO opens a
session both ways; DIGEST and PULL carry per-owner versions; UPDATES carries certificates and spans
of signed records (their encoding, and the exact bytes their signatures cover, are in ``_signed``,
re-exported here so that ``_wire`` is the one name of the whole format); MEMBERS gossips members;
DIRECT carries an application payload; PING and PONG carry a nonce.

This module only encodes and decodes. :func:`parse_message_untrusted` checks each length against
the bytes that remain (and every count against its bound) before slicing, and raises only
:class:`~p2ptls.state.errors.StateProtocolError`. ``protocol/SPEC-state.md`` is normative.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import attrs

from ._signed import (
    BATCH_HEAD,
    CERT_BODY,
    DEFAULT_MAX_VALUE_SIZE,
    DELETE,
    ED25519_KEY_SIZE,
    ED25519_SIGNATURE_SIZE,
    HASH_SIZE,
    ID_SIZE,
    MAX_BATCH_LIMIT,
    MAX_COUNTER,
    MAX_KEY_BYTES,
    MAX_PUBLIC_KEY_DER,
    MAX_RSA_SIGNATURE,
    MAX_U64,
    MAX_VALUE_LIMIT,
    MIN_GROUP,
    MIN_RSA_SIGNATURE,
    NO_VERSION,
    PUT,
    RECORD_HEAD,
    SPAN_HEAD,
    U8,
    U16,
    U32,
    U64,
    Batch,
    EpochCertificate,
    Group,
    Limits,
    Reader,
    Record,
    Span,
    Version,
    check_version,
    encode_batch_body,
    encode_record,
    parse_batch_untrusted,
    parse_certificate_untrusted,
    parse_record_untrusted,
    read_certificate_untrusted,
    read_span_untrusted,
)
from .errors import StateProtocolError

__all__ = [
    "BATCH_HEAD",
    "CERT_BODY",
    "DEFAULT_MAX_VALUE_SIZE",
    "DELETE",
    "DIGEST",
    "DIRECT",
    "ED25519_KEY_SIZE",
    "ED25519_SIGNATURE_SIZE",
    "ENTRY",
    "HASH_SIZE",
    "ID_SIZE",
    "MAX_BATCH_LIMIT",
    "MAX_CERTS_PER_MESSAGE",
    "MAX_COUNTER",
    "MAX_DIGEST_ENTRIES",
    "MAX_HOST_BYTES",
    "MAX_KEY_BYTES",
    "MAX_MEMBERS_PER_MESSAGE",
    "MAX_PUBLIC_KEY_DER",
    "MAX_RSA_SIGNATURE",
    "MAX_SPANS_PER_MESSAGE",
    "MAX_U64",
    "MAX_VALUE_LIMIT",
    "MEMBERS",
    "MIN_RSA_SIGNATURE",
    "NONCE_SIZE",
    "NO_VERSION",
    "PING",
    "PONG",
    "PROTOCOL",
    "PROTOCOL_VERSION",
    "PULL",
    "PUT",
    "RECORD_HEAD",
    "SPAN_HEAD",
    "STATE_HELLO",
    "STATE_HELLO_BODY",
    "STATE_HELLO_HEAD",
    "U8",
    "U16",
    "U32",
    "U64",
    "UPDATES",
    "Address",
    "Batch",
    "Digest",
    "Direct",
    "EpochCertificate",
    "Group",
    "Limits",
    "MemberInfo",
    "Members",
    "Message",
    "Ping",
    "Pong",
    "Pull",
    "Record",
    "Span",
    "StateHello",
    "Updates",
    "Version",
    "encode_batch_body",
    "encode_record",
    "parse_batch_untrusted",
    "parse_certificate_untrusted",
    "parse_message_untrusted",
    "parse_record_untrusted",
]

PROTOCOL = "p2ptls/state/1"
"""The state network's protocol name on the host's shared connections (``host.open``)."""
PROTOCOL_VERSION = 1
MAX_DIGEST_ENTRIES = 65536
MAX_MEMBERS_PER_MESSAGE = 1024
MAX_CERTS_PER_MESSAGE = 4096
MAX_SPANS_PER_MESSAGE = 65535
MAX_HOST_BYTES = 255
NONCE_SIZE = 8

# Message types (first byte of every message).
STATE_HELLO = 0x01
DIGEST = 0x02
PULL = 0x03
UPDATES = 0x04
MEMBERS = 0x05
DIRECT = 0x06
PING = 0x07
PONG = 0x08

ENTRY = struct.Struct(">32sQQ")  # owner, epoch, seq
STATE_HELLO_HEAD = struct.Struct(">BB32sQ")  # type, version, network, incarnation
STATE_HELLO_BODY = struct.Struct(">B32sQ")  # version, network, incarnation (after the type byte)
Address = tuple[str, int]


def _encode_address(address: Address | None) -> bytes:
    if address is None:
        return U8.pack(0)
    host = address[0].encode("utf-8")
    if not 1 <= len(host) <= MAX_HOST_BYTES or not 1 <= address[1] <= 65535:
        raise ValueError("address host must be 1..255 bytes and port 1..65535")
    return U8.pack(len(host)) + host + U16.pack(address[1])


def _parse_address(reader: Reader) -> Address | None:
    length = reader.u8()
    if length == 0:
        return None
    try:
        host = reader.take(length).decode("utf-8")
    except UnicodeDecodeError:
        raise StateProtocolError("address is not UTF-8") from None
    port = reader.u16()
    if port == 0:
        raise StateProtocolError("port 0 in an address")
    return (host, port)


@attrs.frozen
class StateHello:
    """First message on every connection, both ways."""

    network_id: bytes
    incarnation: int
    """The sender's current epoch: a restarted node always has a higher one."""
    address: Address | None
    """Where the sender listens, if it does."""

    def encode(self) -> bytes:
        head = STATE_HELLO_HEAD.pack(
            STATE_HELLO, PROTOCOL_VERSION, self.network_id, self.incarnation
        )
        return head + _encode_address(self.address)


@attrs.frozen
class Digest:
    """Per owner, the highest version the sender holds (ascending owners, no duplicates)."""

    entries: tuple[tuple[bytes, Version], ...]

    def encode(self) -> bytes:
        return _encode_entries(DIGEST, self.entries)


@attrs.frozen
class Pull:
    """Per owner, the version after which the sender wants every current record."""

    entries: tuple[tuple[bytes, Version], ...]

    def encode(self) -> bytes:
        return _encode_entries(PULL, self.entries)


def _encode_entries(kind: int, entries: Sequence[tuple[bytes, Version]]) -> bytes:
    if len(entries) > MAX_DIGEST_ENTRIES:
        raise ValueError("too many entries")
    parts = [U8.pack(kind), U32.pack(len(entries))]
    parts.extend(ENTRY.pack(owner, epoch, seq) for owner, (epoch, seq) in entries)
    return b"".join(parts)


def _parse_entries(reader: Reader, allow_zero: bool) -> tuple[tuple[bytes, Version], ...]:
    count = reader.count(U32, MAX_DIGEST_ENTRIES, ENTRY.size)
    entries = []
    previous = b""
    for _ in range(count):
        owner, epoch, seq = reader.unpack(ENTRY)
        if owner <= previous:
            raise StateProtocolError("entries not in ascending owner order")
        previous = owner
        if allow_zero and epoch == 0 and seq == 0:
            pass
        else:
            check_version(epoch, seq)
        entries.append((owner, (epoch, seq)))
    reader.end()
    return tuple(entries)


@attrs.frozen
class Updates:
    """Certificates the receiver may need, then spans of records."""

    certificates: tuple[EpochCertificate, ...]
    spans: tuple[Span, ...]

    def encode(self) -> bytes:
        parts = [U8.pack(UPDATES), U16.pack(len(self.certificates))]
        parts.extend(certificate.encode() for certificate in self.certificates)
        parts.append(U16.pack(len(self.spans)))
        parts.extend(span.encode() for span in self.spans)
        return b"".join(parts)


@attrs.frozen
class MemberInfo:
    """A member as gossiped: its RSA public key (its id is the key's SHA-256) and address."""

    public_key_der: bytes = attrs.field(repr=False)
    address: Address | None


@attrs.frozen
class Members:
    members: tuple[MemberInfo, ...]

    def encode(self) -> bytes:
        parts = [U8.pack(MEMBERS), U16.pack(len(self.members))]
        for member in self.members:
            parts.append(U16.pack(len(member.public_key_der)))
            parts.append(member.public_key_der)
            parts.append(_encode_address(member.address))
        return b"".join(parts)


@attrs.frozen
class Direct:
    """A one-shot application payload for the receiving node."""

    payload: bytes

    def encode(self) -> bytes:
        return U8.pack(DIRECT) + self.payload


@attrs.frozen
class Ping:
    nonce: bytes

    def encode(self) -> bytes:
        return U8.pack(PING) + self.nonce


@attrs.frozen
class Pong:
    nonce: bytes

    def encode(self) -> bytes:
        return U8.pack(PONG) + self.nonce


Message = StateHello | Digest | Pull | Updates | Members | Direct | Ping | Pong


def parse_message_untrusted(data: bytes, limits: Limits) -> Message:
    """Parse one message. Raises only :class:`StateProtocolError`."""
    if not isinstance(data, bytes):
        data = bytes(data)
    reader = Reader(data)
    kind = reader.u8()
    if kind == STATE_HELLO:
        version, network_id, incarnation = reader.unpack(STATE_HELLO_BODY)
        if version != PROTOCOL_VERSION:
            raise StateProtocolError("unsupported state protocol version")
        if not 1 <= incarnation < MAX_COUNTER:
            raise StateProtocolError("incarnation out of range")
        address = _parse_address(reader)
        reader.end()
        return StateHello(network_id, incarnation, address)
    if kind == DIGEST:
        return Digest(_parse_entries(reader, allow_zero=False))
    if kind == PULL:
        return Pull(_parse_entries(reader, allow_zero=True))
    if kind == UPDATES:
        min_certificate = CERT_BODY.size + 2 + MIN_RSA_SIGNATURE + 2 + 1
        certificate_count = reader.count(U16, MAX_CERTS_PER_MESSAGE, min_certificate)
        certificates = tuple(read_certificate_untrusted(reader) for _ in range(certificate_count))
        span_count = reader.count(U16, MAX_SPANS_PER_MESSAGE, SPAN_HEAD.size + MIN_GROUP)
        spans = tuple(read_span_untrusted(reader, limits) for _ in range(span_count))
        reader.end()
        if not spans and not certificates:
            raise StateProtocolError("empty updates")
        return Updates(certificates, spans)
    if kind == MEMBERS:
        count = reader.count(U16, MAX_MEMBERS_PER_MESSAGE, 2 + 1 + 1)
        members = []
        for _ in range(count):
            key_length = reader.u16()
            if not 1 <= key_length <= MAX_PUBLIC_KEY_DER:
                raise StateProtocolError("member key length out of range")
            der = reader.take(key_length)
            members.append(MemberInfo(der, _parse_address(reader)))
        reader.end()
        return Members(tuple(members))
    if kind == DIRECT:
        if reader.remaining > limits.max_direct_size:
            raise StateProtocolError("direct message too large")
        return Direct(reader.take(reader.remaining))
    if kind in (PING, PONG):
        nonce = reader.take(NONCE_SIZE)
        reader.end()
        return Ping(nonce) if kind == PING else Pong(nonce)
    raise StateProtocolError("unknown message type")
