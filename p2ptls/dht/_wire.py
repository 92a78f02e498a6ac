"""The DHT's RPC messages (SPEC-dht.md §4): one request and its reply per logical stream.

Theory of operation
-------------------
A DHT RPC runs on its own logical stream of protocol ``p2ptls/dht/1`` on the host's shared
connection: the requester opens the stream, sends one request message, and the responder answers
with one reply message and finishes the stream. The stream pairs the reply with its request, so
messages carry no request id and nobody keeps a table of outstanding ids a peer could fill;
cancelling an RPC is resetting its stream.

Every message is ``version (1) | type | fields``, at most :data:`MAX_MESSAGE_SIZE` (16 KiB)
bytes; variable fields are length-prefixed and every length is checked against what remains and
against its bound before anything is allocated. :func:`parse_message_untrusted` raises only
:class:`DhtProtocolError`. Records inside messages are parsed and verified by
:func:`p2ptls.dht._records.parse_record_untrusted`. Contacts (in NODES, and the requester's own in
every request) are ``node id | public key | address``: the parser drops the *whole message* if a
node id is not the SHA-256 of its key (a responder that relays a forged contact is faulty, so
nothing it says is used). A parsed contact is unverified: only a handshake to its address proves
it.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from typing import Any

import attrs

from ._errors import DhtProtocolError
from ._ids import KEY_SIZE, Contact
from ._records import (
    DEFAULT_LIMITS,
    Record,
    RecordLimits,
    encode_address,
    load_public_key_untrusted,
    parse_address_untrusted,
    parse_record_untrusted,
    take_bytes,
)
from ._store import Refusal

PROTOCOL = "p2ptls/dht/1"
"""The logical stream protocol DHT RPCs run on."""
VERSION = 1
MAX_MESSAGE_SIZE = 16384
MAX_CONTACTS = 20
"""At most k contacts in a NODES reply."""
_MAX_DER_SIZE = 1024
_U16 = struct.Struct(">H")


class MessageType(enum.IntEnum):
    """The second byte of every message."""

    PING = 1
    PONG = 2
    FIND_NODE = 3
    NODES = 4
    FIND_VALUE = 5
    VALUE = 6
    STORE = 7
    STORED = 8
    REFUSED = 9


REQUESTS = frozenset({MessageType.PING, MessageType.FIND_NODE, MessageType.FIND_VALUE,
                      MessageType.STORE})  # fmt: skip


@attrs.frozen
class WireConfig:
    """Limits of the RPC layer."""

    max_contacts: int = attrs.field(default=MAX_CONTACTS)
    record_limits: RecordLimits = DEFAULT_LIMITS

    @max_contacts.validator
    def _check_contacts(self, _attribute: Any, value: int) -> None:
        if not 1 <= value <= MAX_CONTACTS:
            raise ValueError(f"max_contacts must lie in 1..{MAX_CONTACTS}")


DEFAULT_WIRE_CONFIG = WireConfig()


def encode_contact(contact: Contact) -> bytes:
    """``node id (32) | u16 der length | der | address``."""
    der = contact.record.public_key_der
    return contact.node_id + _U16.pack(len(der)) + der + encode_address(contact.host, contact.port)


def _parse_contact(data: bytes, offset: int) -> tuple[Contact, int]:
    node_id = take_bytes(data, offset, KEY_SIZE)
    (der_size,) = _U16.unpack(take_bytes(data, offset + KEY_SIZE, 2))
    if der_size > _MAX_DER_SIZE:
        raise DhtProtocolError("public key too long")
    der = take_bytes(data, offset + KEY_SIZE + 2, der_size)
    if hashlib.sha256(der).digest() != node_id:
        raise DhtProtocolError("a contact's id is not the hash of its key")
    peer = load_public_key_untrusted(der)
    (host, port), end = parse_address_untrusted(data, offset + KEY_SIZE + 2 + der_size)
    return Contact(peer.with_address(host, port), host, port), end


def _encode_sender(sender: Contact | None) -> bytes:
    if sender is None:
        return b"\x00"
    return b"\x01" + encode_contact(sender)


def _parse_sender(data: bytes, offset: int) -> tuple[Contact | None, int]:
    flag = take_bytes(data, offset, 1)[0]
    if flag == 0:
        return None, offset + 1
    if flag != 1:
        raise DhtProtocolError("bad sender flag")
    return _parse_contact(data, offset + 1)


def _header(kind: MessageType) -> bytes:
    return bytes([VERSION, kind])


@attrs.frozen
class Ping:
    """Are you there? ``sender``: the requester's own contact, if it listens."""

    sender: Contact | None = None

    def encode(self) -> bytes:
        return _header(MessageType.PING) + _encode_sender(self.sender)


@attrs.frozen
class Pong:
    """Yes."""

    def encode(self) -> bytes:
        return _header(MessageType.PONG)


@attrs.frozen
class FindNode:
    """Which nodes do you know nearest ``target``?"""

    target: bytes
    sender: Contact | None = None

    def encode(self) -> bytes:
        return _header(MessageType.FIND_NODE) + _encode_sender(self.sender) + self.target


@attrs.frozen
class Nodes:
    """The responder's nearest contacts to the target (at most k)."""

    contacts: tuple[Contact, ...]

    def encode(self) -> bytes:
        if len(self.contacts) > MAX_CONTACTS:
            raise ValueError(f"at most {MAX_CONTACTS} contacts")
        return (
            _header(MessageType.NODES)
            + bytes([len(self.contacts)])
            + b"".join(encode_contact(contact) for contact in self.contacts)
        )


@attrs.frozen
class FindValue:
    """The record under ``key``, if it is newer than ``have_sequence``; else your nearest nodes.

    A peer record is found as the FIND_VALUE of the peer id.
    """

    key: bytes
    have_sequence: int = 0
    sender: Contact | None = None

    def encode(self) -> bytes:
        return (
            _header(MessageType.FIND_VALUE)
            + _encode_sender(self.sender)
            + self.key
            + self.have_sequence.to_bytes(8, "big")
        )


@attrs.frozen
class Value:
    """The record the responder holds under the key asked for (its exact bytes)."""

    record: Record

    def encode(self) -> bytes:
        return (
            _header(MessageType.VALUE)
            + _U16.pack(len(self.record.encoding))
            + (self.record.encoding)
        )


@attrs.frozen
class Store:
    """Hold this record (a signed deletion is a mutable record too)."""

    record: Record
    sender: Contact | None = None

    def encode(self) -> bytes:
        return (
            _header(MessageType.STORE)
            + _encode_sender(self.sender)
            + _U16.pack(len(self.record.encoding))
            + self.record.encoding
        )


@attrs.frozen
class Stored:
    """The record is held (it is now the responder's current one under its key)."""

    def encode(self) -> bytes:
        return _header(MessageType.STORED)


@attrs.frozen
class Refused:
    """The record was not stored, and why."""

    reason: Refusal

    def encode(self) -> bytes:
        return _header(MessageType.REFUSED) + bytes([self.reason])


Message = Ping | Pong | FindNode | Nodes | FindValue | Value | Store | Stored | Refused


def _parse_body(kind: int, data: bytes, config: WireConfig) -> tuple[Message, int]:
    if kind == MessageType.PONG:
        return Pong(), 2
    if kind == MessageType.STORED:
        return Stored(), 2
    if kind == MessageType.REFUSED:
        try:
            return Refused(Refusal(take_bytes(data, 2, 1)[0])), 3
        except ValueError:
            raise DhtProtocolError("unknown refusal reason") from None
    if kind == MessageType.NODES:
        count = take_bytes(data, 2, 1)[0]
        if count > config.max_contacts:
            raise DhtProtocolError("too many contacts")
        offset = 3
        contacts = []
        for _ in range(count):
            contact, offset = _parse_contact(data, offset)
            contacts.append(contact)
        return Nodes(tuple(contacts)), offset
    if kind == MessageType.VALUE:
        record, end = _parse_record(data, 2, config)
        return Value(record), end
    if kind not in REQUESTS:
        raise DhtProtocolError("unknown message type")
    sender, offset = _parse_sender(data, 2)
    if kind == MessageType.PING:
        return Ping(sender), offset
    if kind == MessageType.FIND_NODE:
        return FindNode(take_bytes(data, offset, KEY_SIZE), sender), offset + KEY_SIZE
    if kind == MessageType.FIND_VALUE:
        key = take_bytes(data, offset, KEY_SIZE)
        have = int.from_bytes(take_bytes(data, offset + KEY_SIZE, 8), "big")
        return FindValue(key, have, sender), offset + KEY_SIZE + 8
    record, end = _parse_record(data, offset, config)
    return Store(record, sender), end


def _parse_record(data: bytes, offset: int, config: WireConfig) -> tuple[Record, int]:
    (size,) = _U16.unpack(take_bytes(data, offset, 2))
    raw = take_bytes(data, offset + 2, size)
    return parse_record_untrusted(raw, config.record_limits), offset + 2 + size


def parse_message_untrusted(data: bytes, config: WireConfig = DEFAULT_WIRE_CONFIG) -> Message:
    """Parse one whole message; raises only :class:`DhtProtocolError`."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise DhtProtocolError("message too large")
    data = bytes(data)
    if len(data) < 2:
        raise DhtProtocolError("truncated")
    if data[0] != VERSION:
        raise DhtProtocolError("unsupported version")
    message, end = _parse_body(data[1], data, config)
    if end != len(data):
        raise DhtProtocolError("trailing bytes")
    return message


__all__ = [
    "MAX_CONTACTS",
    "MAX_MESSAGE_SIZE",
    "PROTOCOL",
    "REQUESTS",
    "VERSION",
    "FindNode",
    "FindValue",
    "Message",
    "MessageType",
    "Nodes",
    "Ping",
    "Pong",
    "Refused",
    "Store",
    "Stored",
    "Value",
    "WireConfig",
    "encode_contact",
    "parse_message_untrusted",
]
