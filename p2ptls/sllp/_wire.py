"""SLLP wire format: the datagram header and body, and the set-up messages on the stream.

Theory of operation
-------------------
Every SLLP datagram is one UDP payload::

    version u8 | flags u8 | destination connection id u64 | sequence number u64   (header, 18 B)
    AES-256-GCM( type u8 | message id u64 | fragment index u32 | fragment count u32 | payload )
    tag (16 bytes)

The header is the AEAD additional data, so it is authenticated but readable: the receiver finds
the session by the connection id and checks the sequence number against its replay window before
it spends a decryption. The nonce is the direction's IV xor the sequence number, which the sender
never repeats under one key. Bit 0 of ``flags`` is the key phase (the parity of the key epoch); the
other bits must be zero. All integers are big endian.

The set-up messages (offer, answer, close) travel as whole messages on the dedicated, already
authenticated stream (a host's logical stream of ``"p2ptls/sllp/1"``, or a
:class:`~p2ptls.SecureStream`), never over UDP. ``protocol/SPEC-sllp.md`` is the
normative description; the constants here must match it.

This module only encodes and decodes: no state, no cryptography. Decoders end in ``_untrusted``,
check every length before using it, and raise only :class:`DatagramError` or
:class:`NegotiationError`.
"""

from __future__ import annotations

import ipaddress
import struct

import attrs

from ._errors import DatagramError, NegotiationError

VERSION = 1

HEADER = struct.Struct(">BBQQ")
HEADER_SIZE = HEADER.size  # 18
FLAG_KEY_PHASE = 0x01
KNOWN_FLAGS = FLAG_KEY_PHASE

BODY = struct.Struct(">BQII")
BODY_SIZE = BODY.size  # 17
TAG_SIZE = 16
IV_SIZE = 12
KEY_SIZE = 32
OVERHEAD = HEADER_SIZE + BODY_SIZE + TAG_SIZE  # 51: a datagram with an empty payload
MIN_DATAGRAM = OVERHEAD

DEFAULT_DATAGRAM_PAYLOAD = 1200  # UDP payload that fits a 1280-byte IPv6 MTU (40 + 8 + 1200)
MIN_DATAGRAM_PAYLOAD = 256
MAX_DATAGRAM_PAYLOAD = 65507  # the largest UDP payload over IPv4
MIN_FRAGMENT = MIN_DATAGRAM_PAYLOAD - OVERHEAD  # 205: the smallest non-final fragment

MAX_SEQUENCE = (1 << 64) - 1
MAX_MESSAGE_ID = (1 << 64) - 1
MAX_FRAGMENTS = (1 << 32) - 1
MAX_MESSAGE_SIZE = (1 << 32) - 1

# Body types.
TYPE_DATA = 0x01
TYPE_KEEPALIVE = 0x02
TYPE_CLOSE = 0x03

# Close codes 0-15 are SLLP's; applications may use 16-65535.
CLOSE_NORMAL = 0
CLOSE_IDLE_TIMEOUT = 1
CLOSE_LIFELINE_LOST = 2
CLOSE_SEQUENCE_EXHAUSTED = 3
CLOSE_TOO_MANY_CHANNELS = 4  # the accepting side evicted the channel to make room for another
FIRST_APPLICATION_CLOSE_CODE = 16
CLOSE_CODE = struct.Struct(">H")
MAX_CLOSE_REASON = 128  # bytes of UTF-8

# Stream (set-up) messages.
MAGIC = b"SLLP"
KIND_OFFER = 1
KIND_ANSWER = 2
KIND_CLOSE = 3
OFFER = struct.Struct(
    ">4sBBIQ16sHHI"
)  # magic, version, kind, epoch, cid, address, port, dgram, msg
OFFER_SIZE = OFFER.size  # 42
STREAM_CLOSE = struct.Struct(">4sBBHH")  # magic, version, kind, code, reason length
CHANNEL_EPOCH = 1  # version 1 sends exactly one offer per stream, with epoch 1


@attrs.frozen
class Header:
    """A parsed (not yet authenticated) datagram header."""

    flags: int
    connection_id: int
    """The receiver's connection id (chosen by the receiver in its offer or answer)."""
    sequence: int
    """The sender's explicit 64-bit sequence number, unique per direction."""

    @property
    def key_phase(self) -> int:
        return self.flags & FLAG_KEY_PHASE


@attrs.frozen
class Body:
    """A decrypted datagram body."""

    type: int
    message_id: int
    fragment_index: int
    fragment_count: int
    payload: bytes


def encode_header(flags: int, connection_id: int, sequence: int) -> bytes:
    """The 18-byte header (the AEAD additional data)."""
    return HEADER.pack(VERSION, flags, connection_id, sequence)


def parse_header_untrusted(datagram: bytes | bytearray | memoryview) -> Header:
    """Check the size, version and flags of a datagram and return its header."""
    if len(datagram) < MIN_DATAGRAM:
        raise DatagramError("datagram shorter than the SLLP minimum")
    version, flags, connection_id, sequence = HEADER.unpack_from(datagram)
    if version != VERSION:
        raise DatagramError("unsupported SLLP version")
    if flags & ~KNOWN_FLAGS:
        raise DatagramError("reserved header flags set")
    return Header(flags, connection_id, sequence)


def encode_body(
    body_type: int, message_id: int, fragment_index: int, fragment_count: int, payload: bytes
) -> bytes:
    """The plaintext body of a datagram."""
    return BODY.pack(body_type, message_id, fragment_index, fragment_count) + payload


def parse_body_untrusted(plaintext: bytes | bytearray | memoryview) -> Body:
    """Parse a decrypted body; check the fields every body type must satisfy on its own.

    DATA: ``fragment_count >= 1`` and ``fragment_index < fragment_count``. KEEPALIVE and CLOSE:
    message id, index and count are zero; a KEEPALIVE has no payload. (The limits that depend on
    the session, such as the fragment size, are checked by the reassembler.)
    """
    if len(plaintext) < BODY_SIZE:
        raise DatagramError("datagram body too short")
    body_type, message_id, index, count = BODY.unpack_from(plaintext)
    payload = bytes(plaintext[BODY_SIZE:])
    if body_type == TYPE_DATA:
        if count == 0 or index >= count:
            raise DatagramError("fragment index or count out of range")
    elif body_type in (TYPE_KEEPALIVE, TYPE_CLOSE):
        if message_id or index or count:
            raise DatagramError("control datagram with message fields set")
        if body_type == TYPE_KEEPALIVE and payload:
            raise DatagramError("keep-alive with a payload")
        if body_type == TYPE_CLOSE:
            parse_close_payload_untrusted(payload)
    else:
        raise DatagramError("unknown datagram type")
    return Body(body_type, message_id, index, count, payload)


def encode_close_payload(code: int, reason: str) -> bytes:
    """``code u16 | reason`` (UTF-8, cut to :data:`MAX_CLOSE_REASON` bytes on a character edge)."""
    return CLOSE_CODE.pack(code) + _reason_bytes(reason)


def parse_close_payload_untrusted(payload: bytes | bytearray | memoryview) -> tuple[int, str]:
    """Return ``(code, reason)`` from a CLOSE payload."""
    if len(payload) < CLOSE_CODE.size or len(payload) > CLOSE_CODE.size + MAX_CLOSE_REASON:
        raise DatagramError("close payload length out of range")
    (code,) = CLOSE_CODE.unpack_from(payload)
    try:
        reason = bytes(payload[CLOSE_CODE.size :]).decode("utf-8")
    except UnicodeDecodeError:
        raise DatagramError("close reason is not UTF-8") from None
    return code, reason


def _reason_bytes(reason: str) -> bytes:
    data = reason.encode("utf-8")
    if len(data) <= MAX_CLOSE_REASON:
        return data
    return data[:MAX_CLOSE_REASON].decode("utf-8", "ignore").encode("utf-8")


def nonce(iv: int, sequence: int) -> bytes:
    """The 12-byte AEAD nonce: the direction's IV xor the sequence number (left-padded)."""
    return (iv ^ sequence).to_bytes(IV_SIZE, "big")


# -- set-up messages on the stream -----------------------------------------------------------------


@attrs.frozen
class Offer:
    """An SLLP offer (from the side with ``server_side == False``) or answer (the other side).

    Both have the same layout; each describes its sender.
    """

    kind: int
    """:data:`KIND_OFFER` or :data:`KIND_ANSWER`."""
    epoch: int
    """The channel epoch on this stream; version 1 uses 1, and the answer echoes the offer's."""
    connection_id: int
    """The sender's connection id: datagrams *to* the sender carry it. Random, nonzero."""
    address: tuple[str, int]
    """The sender's UDP address (host, port); an unspecified host means "the stream's address"."""
    max_datagram_payload: int
    """The largest UDP payload the sender will send or accept."""
    max_message_size: int
    """The largest message the sender accepts."""


@attrs.frozen
class StreamClose:
    """The authenticated close carried on the stream (the reliable twin of the CLOSE datagram)."""

    code: int
    reason: str


def _encode_address(host: str) -> bytes:
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed).packed
    return address.packed


def _decode_address(packed: bytes) -> str:
    address = ipaddress.IPv6Address(packed)
    mapped = address.ipv4_mapped
    return str(mapped) if mapped is not None else str(address)


def encode_offer(offer: Offer) -> bytes:
    """The 42-byte offer or answer."""
    if offer.kind not in (KIND_OFFER, KIND_ANSWER):
        raise ValueError("not an offer or answer kind")
    host, port = offer.address
    return OFFER.pack(
        MAGIC,
        VERSION,
        offer.kind,
        offer.epoch,
        offer.connection_id,
        _encode_address(host),
        port,
        offer.max_datagram_payload,
        offer.max_message_size,
    )


def parse_offer_untrusted(data: bytes | bytearray | memoryview, kind: int) -> Offer:
    """Parse an offer (``kind=KIND_OFFER``) or an answer and check every field's range."""
    if len(data) != OFFER_SIZE:
        raise NegotiationError("SLLP offer or answer has the wrong size")
    magic, version, got_kind, epoch, cid, packed, port, dgram, max_message = OFFER.unpack_from(data)
    if magic != MAGIC:
        raise NegotiationError("not an SLLP set-up message")
    if version != VERSION:
        raise NegotiationError("unsupported SLLP version")
    if got_kind != kind:
        raise NegotiationError("unexpected SLLP set-up message kind")
    if epoch == 0:
        raise NegotiationError("SLLP epoch must be nonzero")
    if cid == 0:
        raise NegotiationError("SLLP connection id must be nonzero")
    if port == 0:
        raise NegotiationError("SLLP offer without a UDP port")
    if not MIN_DATAGRAM_PAYLOAD <= dgram <= MAX_DATAGRAM_PAYLOAD:
        raise NegotiationError("SLLP datagram size out of range")
    if max_message == 0:
        raise NegotiationError("SLLP maximum message size must be positive")
    return Offer(got_kind, epoch, cid, (_decode_address(packed), port), dgram, max_message)


def encode_stream_close(code: int, reason: str) -> bytes:
    data = _reason_bytes(reason)
    return STREAM_CLOSE.pack(MAGIC, VERSION, KIND_CLOSE, code, len(data)) + data


def parse_stream_close_untrusted(data: bytes | bytearray | memoryview) -> StreamClose:
    """Parse the close message that may follow the answer on the stream."""
    if len(data) < STREAM_CLOSE.size:
        raise NegotiationError("SLLP stream message too short")
    magic, version, kind, code, length = STREAM_CLOSE.unpack_from(data)
    if magic != MAGIC or version != VERSION or kind != KIND_CLOSE:
        raise NegotiationError("unexpected message on the SLLP stream")
    if length > MAX_CLOSE_REASON or len(data) != STREAM_CLOSE.size + length:
        raise NegotiationError("SLLP close reason length out of range")
    try:
        reason = bytes(data[STREAM_CLOSE.size :]).decode("utf-8")
    except UnicodeDecodeError:
        raise NegotiationError("SLLP close reason is not UTF-8") from None
    return StreamClose(code, reason)


def is_offer(message: bytes | bytearray | memoryview) -> bool:
    """Whether a stream message looks like an SLLP offer (for applications sharing a listener)."""
    return len(message) == OFFER_SIZE and bytes(message[:6]) == MAGIC + bytes([VERSION, KIND_OFFER])
