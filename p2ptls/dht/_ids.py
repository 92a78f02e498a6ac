"""Keys, XOR distance and contacts: the vocabulary every part of the DHT core shares.

Theory of operation
-------------------
Every node id and every key is 32 bytes (256 bits). A node's id is its p2ptls peer id, the
SHA-256 of its RSA public key (DER), so a node cannot place itself at will in the key space. The
distance between two ids is their XOR read as an unsigned big-endian integer (Kademlia); the
*common prefix length* of two ids (the number of leading bits they share) names the k-bucket a
contact falls into. A :class:`Contact` is a node as the core knows it: its id and the address it
was seen at, plus the peer record needed to dial it (its public key: a p2ptls handshake encrypts
to the responder's key, so a contact without one cannot be dialled). Whether a contact is
*verified* (a handshake proved its id at that address) is the routing table's business, not the
contact's.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from ..identity import PeerRecord
from ._errors import DhtProtocolError

KEY_SIZE = 32
"""Bytes in a node id or a key."""
KEY_BITS = 8 * KEY_SIZE


def check_key_untrusted(raw: bytes) -> bytes:
    """``raw`` if it is a well-formed key (32 bytes); else :class:`DhtProtocolError`."""
    if len(raw) != KEY_SIZE:
        raise DhtProtocolError("a DHT key is 32 bytes")
    return bytes(raw)


def distance(a: bytes, b: bytes) -> int:
    """The XOR distance of two keys, as an integer (0 for equal keys)."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def common_prefix_length(a: bytes, b: bytes) -> int:
    """How many leading bits ``a`` and ``b`` share (256 for equal keys)."""
    return KEY_BITS - distance(a, b).bit_length()


def closest(target: bytes, ids: Iterable[bytes], count: int) -> list[bytes]:
    """The ``count`` ids nearest ``target``, nearest first."""
    return sorted(ids, key=lambda node_id: distance(node_id, target))[:count]


@attrs.frozen
class Contact:
    """A node: its id, where it was seen, and the record to dial it with.

    ``record.peer_id.digest`` is ``node_id``: the id is the hash of the
    key the handshake will encrypt to, so a contact that reaches a handshake is who it claims.
    """

    record: PeerRecord = attrs.field(repr=False)
    host: str
    port: int

    @property
    def node_id(self) -> bytes:
        """The contact's 32-byte id (its peer id's digest)."""
        return self.record.peer_id.digest

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``."""
        return (self.host, self.port)

    @classmethod
    def of(cls, record: PeerRecord) -> Contact:
        """The contact of a record that carries an address."""
        if record.address is None:
            raise ValueError("a contact needs an address")
        host, port = record.address
        return cls(record, host, port)


__all__ = [
    "KEY_BITS",
    "KEY_SIZE",
    "Contact",
    "check_key_untrusted",
    "closest",
    "common_prefix_length",
    "distance",
]
