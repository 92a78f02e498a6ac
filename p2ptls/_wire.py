"""Wire format: record header, content types and handshake flights.

Theory of operation
-------------------
Every byte p2ptls puts on a TCP connection belongs to a *record*::

    content_type u8 | version u8 | length u16 (big endian) | body[length]

Handshake records (``HANDSHAKE``) carry one handshake flight in the clear. Every other content
type is an AEAD-protected record: its body is AES-256-GCM ciphertext plus the 16-byte tag, and
the 4-byte header is the additional data, so the type, version and length are authenticated too.

This module only encodes and decodes; it holds no state and does no cryptography. Decoders end in
``_untrusted``, check every length before using it, and raise only :class:`ProtocolError`.
``protocol/SPEC.md`` is the normative description; the constants here must match it.
"""

from __future__ import annotations

import struct

import attrs

from ._errors import HandshakeFailed, ProtocolError, RecordError

PROTOCOL_VERSION = 2
SUITE_RSA_OAEP_X25519_AES256GCM_SHA256 = 1

# Content types.
HANDSHAKE = 0x16
DATA = 0x17
MESSAGE_START = 0x18
MESSAGE_CONTINUE = 0x19
CLOSE = 0x1A
PING = 0x1B
PONG = 0x1C
KEY_UPDATE = 0x1D
TICKET = 0x1E  # responder -> initiator only: a resumption ticket (SPEC 3.6)
PROTECTED_TYPES = frozenset(
    {DATA, MESSAGE_START, MESSAGE_CONTINUE, CLOSE, PING, PONG, KEY_UPDATE, TICKET}
)

# Handshake message types (first byte of a HANDSHAKE record body).
HELLO = 0x01
REPLY = 0x02
FINISH = 0x03
RESUME_HELLO = 0x04
RESUME_REPLY = 0x05

HEADER = struct.Struct(">BBH")
HEADER_SIZE = HEADER.size
TAG_SIZE = 16
# The largest body of a protected record: ciphertext plus tag. A length field above this is
# refused before the body is read.
MAX_CIPHERTEXT = 65280
MAX_PLAINTEXT = MAX_CIPHERTEXT - TAG_SIZE
MAX_HANDSHAKE_BODY = 2048

# CLOSE reasons.
CLOSE_END_OF_STREAM = 0
CLOSE_GOODBYE = 1
CLOSE_REFUSED = 2  # responder -> initiator only, right after a Finish it will not accept

PING_PAYLOAD_SIZE = 8
MESSAGE_LENGTH = struct.Struct(">I")

ID_SIZE = 32
X25519_SIZE = 32
MAC_SIZE = 32
RANDOM_SIZE = 32
TIMESTAMP = struct.Struct(">Q")
NS_PER_S = 10**9
HELLO_SECRET_SIZE = ID_SIZE + RANDOM_SIZE + TIMESTAMP.size  # id_I | k_I | ts_ns
MIN_RSA_BYTES = 256  # RSA-2048
MAX_RSA_BYTES = 512  # RSA-4096
# The canonical DER SubjectPublicKeyInfo of an RSA key with e = 65537 has one length per size,
# so a Hello's sealed key announces the initiator's modulus size (in the clear, as its length).
RSA_BYTES_FOR_DER_SIZE = {294: 256, 422: 384, 550: 512}
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")

# Resumption (SPEC 3.6). A ticket is opaque to the initiator; its length is bounded on the wire.
MIN_TICKET = 64
MAX_TICKET = 1024
TICKET_NONCE_SIZE = 16
MAX_TICKET_LIFETIME_S = 7 * 86400
SEALED_TIMESTAMP_SIZE = TIMESTAMP.size + TAG_SIZE  # AES-GCM(resume hello key, ts_ns)


def encode_header(content_type: int, length: int) -> bytes:
    """Return the 4-byte record header."""
    return HEADER.pack(content_type, PROTOCOL_VERSION, length)


def parse_header_untrusted(header: bytes | bytearray | memoryview) -> tuple[int, int]:
    """Check a record header and return ``(content_type, body_length)``.

    The length is checked against the limit of its content type before any body is read.
    """
    if len(header) != HEADER_SIZE:
        raise RecordError("record header has the wrong size")
    content_type, version, length = HEADER.unpack(header)
    check_header_fields_untrusted(content_type, version, length)
    return content_type, length


def check_header_fields_untrusted(content_type: int, version: int, length: int) -> None:
    """Refuse a header whose version, type or length cannot be valid."""
    if version != PROTOCOL_VERSION:
        raise RecordError("unsupported protocol version")
    if content_type == HANDSHAKE:
        if length == 0 or length > MAX_HANDSHAKE_BODY:
            raise RecordError("handshake record length out of range")
    elif content_type in PROTECTED_TYPES:
        if length < TAG_SIZE or length > MAX_CIPHERTEXT:
            raise RecordError("protected record length out of range")
    else:
        raise RecordError("unknown content type")


def handshake_record(body: bytes) -> bytes:
    """Wrap a handshake flight in its record header."""
    if len(body) > MAX_HANDSHAKE_BODY:
        raise ValueError("handshake flight too large")
    return encode_header(HANDSHAKE, len(body)) + body


class _Reader:
    """Bounds-checked reads from a handshake flight; every failure is ``HandshakeFailed``."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, size: int) -> bytes:
        end = self._pos + size
        if size < 0 or end > len(self._data):
            raise HandshakeFailed()
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def take_u8(self) -> int:
        return self.take(1)[0]

    def take_vector(self, minimum: int, maximum: int) -> bytes:
        (size,) = U16.unpack(self.take(2))
        if not minimum <= size <= maximum:
            raise HandshakeFailed()
        return self.take(size)

    @property
    def offset(self) -> int:
        return self._pos

    def finish(self) -> None:
        if self._pos != len(self._data):
            raise HandshakeFailed()


@attrs.frozen
class Hello:
    """Flight 1, initiator to responder (see SPEC.md, "Hello")."""

    suite: int
    timestamp_s: int
    """The initiator's wall clock in whole seconds (coarse, in the clear): enough for the replay
    window before any RSA work. The precise value travels inside ``C_I``."""
    ephemeral: bytes
    sealed_secret: bytes
    """``C_I``: OAEP(responder key, initiator id | k_I | timestamp in ns)."""
    sealed_public_key: bytes
    """The initiator's public key (DER), AES-GCM under the hello key."""
    binder: bytes

    def encode_unbound(self) -> bytes:
        """The body up to (not including) the binder."""
        return b"".join(
            [
                bytes([HELLO, self.suite]),
                TIMESTAMP.pack(self.timestamp_s),
                self.ephemeral,
                U16.pack(len(self.sealed_secret)),
                self.sealed_secret,
                U16.pack(len(self.sealed_public_key)),
                self.sealed_public_key,
            ]
        )

    def encode(self) -> bytes:
        return self.encode_unbound() + self.binder


def parse_hello_untrusted(body: bytes) -> Hello:
    """Decode a Hello body; any structural fault is the generic handshake failure."""
    reader = _Reader(body)
    if reader.take_u8() != HELLO:
        raise HandshakeFailed()
    suite = reader.take_u8()
    if suite != SUITE_RSA_OAEP_X25519_AES256GCM_SHA256:
        raise HandshakeFailed()
    hello = Hello(
        suite=suite,
        timestamp_s=TIMESTAMP.unpack(reader.take(TIMESTAMP.size))[0],
        ephemeral=reader.take(X25519_SIZE),
        sealed_secret=reader.take_vector(MIN_RSA_BYTES, MAX_RSA_BYTES),
        sealed_public_key=reader.take_vector(TAG_SIZE + 294, TAG_SIZE + 550),
        binder=reader.take(MAC_SIZE),
    )
    reader.finish()
    if len(hello.sealed_public_key) - TAG_SIZE not in RSA_BYTES_FOR_DER_SIZE:
        raise HandshakeFailed()
    return hello


def initiator_rsa_bytes(hello: Hello) -> int:
    """The initiator's modulus size, as its sealed key's length announces it (checked in parsing):
    what a Reply's ``C_R`` is sized to, genuine or substitute."""
    return RSA_BYTES_FOR_DER_SIZE[len(hello.sealed_public_key) - TAG_SIZE]


@attrs.frozen
class Reply:
    """Flight 2, responder to initiator."""

    ephemeral: bytes
    sealed_secret: bytes
    """``C_R`` = OAEP(initiator key, k_R), sealed with AES-GCM under the reply key (16 bytes
    longer than the modulus)."""
    finished: bytes

    def encode_unfinished(self) -> bytes:
        return b"".join(
            [bytes([REPLY]), self.ephemeral, U16.pack(len(self.sealed_secret)), self.sealed_secret]
        )

    def encode(self) -> bytes:
        return self.encode_unfinished() + self.finished


def parse_reply_untrusted(body: bytes) -> Reply:
    reader = _Reader(body)
    if reader.take_u8() != REPLY:
        raise HandshakeFailed()
    reply = Reply(
        ephemeral=reader.take(X25519_SIZE),
        sealed_secret=reader.take_vector(MIN_RSA_BYTES + TAG_SIZE, MAX_RSA_BYTES + TAG_SIZE),
        finished=reader.take(MAC_SIZE),
    )
    reader.finish()
    return reply


@attrs.frozen
class Finish:
    """Flight 3, initiator to responder."""

    finished: bytes

    def encode(self) -> bytes:
        return bytes([FINISH]) + self.finished


def parse_finish_untrusted(body: bytes) -> Finish:
    reader = _Reader(body)
    if reader.take_u8() != FINISH:
        raise HandshakeFailed()
    finish = Finish(finished=reader.take(MAC_SIZE))
    reader.finish()
    return finish


def parse_message_start_untrusted(plaintext: bytes) -> tuple[int, bytes | memoryview]:
    """Split a MESSAGE_START plaintext into ``(total_length, first_fragment)``.

    When more fragments follow (they are joined once, at the end), the first fragment is a view
    of ``plaintext`` rather than a copy; a one-record message is a slice (bytes).
    """
    if len(plaintext) < MESSAGE_LENGTH.size:
        raise ProtocolError("message start too short")
    (total,) = MESSAGE_LENGTH.unpack_from(plaintext)
    if total > len(plaintext) - MESSAGE_LENGTH.size:
        return total, memoryview(plaintext)[MESSAGE_LENGTH.size :]
    return total, plaintext[MESSAGE_LENGTH.size :]


@attrs.frozen(repr=False)
class ResumeHello:
    """Flight 1 of a resumed handshake (see SPEC.md, "ResumeHello")."""

    suite: int
    timestamp_s: int
    ephemeral: bytes
    ticket: bytes
    sealed_timestamp: bytes
    """AES-GCM(resume hello key, nonce 0, aad = the record up to here, ts_ns u64)."""
    binder: bytes

    def encode_prefix(self) -> bytes:
        """The body up to (not including) the sealed timestamp."""
        return b"".join(
            [
                bytes([RESUME_HELLO, self.suite]),
                TIMESTAMP.pack(self.timestamp_s),
                self.ephemeral,
                U16.pack(len(self.ticket)),
                self.ticket,
            ]
        )

    def encode(self) -> bytes:
        return self.encode_prefix() + self.sealed_timestamp + self.binder

    def __repr__(self) -> str:
        return f"ResumeHello(<{len(self.ticket)}-byte ticket>)"


def resume_hello_body_size(ticket_size: int) -> int:
    """The body length of a ResumeHello carrying a ticket of ``ticket_size`` bytes."""
    return 1 + 1 + TIMESTAMP.size + X25519_SIZE + 2 + ticket_size + SEALED_TIMESTAMP_SIZE + MAC_SIZE


def parse_resume_hello_untrusted(body: bytes) -> ResumeHello:
    """Decode a ResumeHello body; any structural fault is the generic handshake failure."""
    reader = _Reader(body)
    if reader.take_u8() != RESUME_HELLO:
        raise HandshakeFailed()
    suite = reader.take_u8()
    if suite != SUITE_RSA_OAEP_X25519_AES256GCM_SHA256:
        raise HandshakeFailed()
    hello = ResumeHello(
        suite=suite,
        timestamp_s=TIMESTAMP.unpack(reader.take(TIMESTAMP.size))[0],
        ephemeral=reader.take(X25519_SIZE),
        ticket=reader.take_vector(MIN_TICKET, MAX_TICKET),
        sealed_timestamp=reader.take(SEALED_TIMESTAMP_SIZE),
        binder=reader.take(MAC_SIZE),
    )
    reader.finish()
    return hello


@attrs.frozen
class ResumeReply:
    """Flight 2 of a resumed handshake: ``e_R`` and the responder's Finished."""

    ephemeral: bytes
    finished: bytes

    def encode(self) -> bytes:
        return bytes([RESUME_REPLY]) + self.ephemeral + self.finished


RESUME_REPLY_BODY_SIZE = 1 + X25519_SIZE + MAC_SIZE


def parse_resume_reply_untrusted(body: bytes) -> ResumeReply:
    reader = _Reader(body)
    if reader.take_u8() != RESUME_REPLY:
        raise HandshakeFailed()
    reply = ResumeReply(ephemeral=reader.take(X25519_SIZE), finished=reader.take(MAC_SIZE))
    reader.finish()
    return reply


@attrs.frozen(repr=False)
class TicketPayload:
    """A TICKET record's plaintext: ``lifetime_s u32 | ticket_nonce (16) | u16 len | ticket``."""

    lifetime_s: int
    nonce: bytes
    ticket: bytes

    def encode(self) -> bytes:
        return b"".join(
            [U32.pack(self.lifetime_s), self.nonce, U16.pack(len(self.ticket)), self.ticket]
        )

    def __repr__(self) -> str:
        return f"TicketPayload(lifetime_s={self.lifetime_s})"


def parse_ticket_payload_untrusted(plaintext: bytes) -> TicketPayload:
    """Decode a TICKET record's plaintext; raises :class:`ProtocolError` if malformed."""
    fixed = U32.size + TICKET_NONCE_SIZE + U16.size
    if len(plaintext) < fixed:
        raise ProtocolError("malformed ticket")
    (lifetime_s,) = U32.unpack_from(plaintext, 0)
    (size,) = U16.unpack_from(plaintext, U32.size + TICKET_NONCE_SIZE)
    if (
        not MIN_TICKET <= size <= MAX_TICKET
        or len(plaintext) != fixed + size
        or not 0 < lifetime_s <= MAX_TICKET_LIFETIME_S
    ):
        raise ProtocolError("malformed ticket")
    return TicketPayload(
        lifetime_s, plaintext[U32.size : U32.size + TICKET_NONCE_SIZE], plaintext[fixed:]
    )
