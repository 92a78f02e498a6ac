"""The AEAD record layer: one sealing and one opening direction.

Theory of operation
-------------------
Each direction has its own traffic secret, from which an AES-256-GCM key and a 12-byte IV are
derived. Record ``n`` under a key uses the nonce ``IV xor n`` (``n`` left-padded to 12 bytes), so
sequence numbers are implicit: a reordered, replayed, dropped or injected record fails
authentication. The 4-byte record header is the additional data.

After ``key_update_after`` records the sealer emits a KEY_UPDATE record under the old key and moves
to ``next_traffic_secret``; the opener moves when it opens that record. The sequence number restarts
at zero under each new key and each key comes from a fresh secret, so a (key, nonce) pair never
repeats. An opener that sees ``hard_limit`` records under one key without a key update fails.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import _keyschedule as ks
from . import _wire as wire
from ._errors import RecordError

_pack_header_into = wire.HEADER.pack_into
_HEADER_SIZE = wire.HEADER_SIZE
_TAG_SIZE = wire.TAG_SIZE
_VERSION = wire.PROTOCOL_VERSION

KEY_UPDATE_AFTER = 1 << 23
HARD_LIMIT = 1 << 24


class _Direction:
    __slots__ = ("_aead", "_iv", "_secret", "generation", "sequence")

    def __init__(self, secret: bytes) -> None:
        self.generation = 0
        self._install(secret)

    def _install(self, secret: bytes) -> None:
        keys = ks.traffic_keys(secret)
        self._secret = secret
        self._aead = AESGCM(keys.key)
        self._iv = int.from_bytes(keys.iv, "big")
        self.sequence = 0

    def _nonce(self) -> bytes:
        return (self._iv ^ self.sequence).to_bytes(12, "big")

    def advance_key(self) -> None:
        self._install(ks.next_traffic_secret(self._secret))
        self.generation += 1

    def __repr__(self) -> str:
        return f"<{type(self).__name__} generation={self.generation} sequence={self.sequence}>"


class RecordSealer(_Direction):
    """Seals outgoing records for one direction."""

    __slots__ = ("key_update_after",)

    def __init__(self, secret: bytes, key_update_after: int = KEY_UPDATE_AFTER) -> None:
        super().__init__(secret)
        self.key_update_after = key_update_after

    def seal(self, content_type: int, plaintext: bytes | memoryview) -> bytes:
        """Return one complete record (header and ciphertext). The caller keeps sizes in range."""
        header = wire.HEADER.pack(
            content_type, wire.PROTOCOL_VERSION, len(plaintext) + wire.TAG_SIZE
        )
        ciphertext = self._aead.encrypt(self._nonce(), plaintext, header)
        self.sequence += 1
        return header + ciphertext

    def seal_into(
        self,
        out: bytearray | memoryview,
        offset: int,
        content_type: int,
        plaintext: bytes | bytearray | memoryview,
    ) -> int:
        """Write one record into ``out`` at ``offset``; return the offset just after it."""
        size = len(plaintext)
        body = offset + _HEADER_SIZE
        end = body + size + _TAG_SIZE
        _pack_header_into(out, offset, content_type, _VERSION, size + _TAG_SIZE)
        sequence = self.sequence
        nonce = (self._iv ^ sequence).to_bytes(12, "big")
        if type(out) is memoryview:
            self._aead.encrypt_into(nonce, plaintext, out[offset:body], out[body:end])
        else:
            with memoryview(out) as view:
                self._aead.encrypt_into(nonce, plaintext, view[offset:body], view[body:end])
        self.sequence = sequence + 1
        return end

    @property
    def needs_key_update(self) -> bool:
        return self.sequence >= self.key_update_after


class RecordOpener(_Direction):
    """Opens incoming records for one direction."""

    __slots__ = ("hard_limit",)

    def __init__(self, secret: bytes, hard_limit: int = HARD_LIMIT) -> None:
        super().__init__(secret)
        self.hard_limit = hard_limit

    def open_untrusted(self, header: bytes | memoryview, body: bytes | memoryview) -> bytes:
        """Authenticate and decrypt one record body; raise :class:`RecordError` on any failure."""
        sequence = self.sequence
        if sequence >= self.hard_limit:
            raise RecordError("peer exceeded the record limit without a key update")
        try:
            plaintext = self._aead.decrypt((self._iv ^ sequence).to_bytes(12, "big"), body, header)
        except InvalidTag:
            raise RecordError("record failed authentication") from None
        self.sequence = sequence + 1
        return plaintext
