"""The three-flight handshake, as two sans-IO state machines.

Theory of operation
-------------------
Authentication is by decryption (the KEMTLS idea): each side encrypts fresh key material to the
other's RSA key with OAEP, and only the holder of the matching private key can derive the secret
that the other side's Finished MAC proves.

1. **Hello** (initiator -> responder): suite, ephemeral X25519 key ``e_I``, the first 8 bytes of the
   responder's id, ``C_I = OAEP(responder, id_I | k_I | timestamp)``, the initiator's public key
   sealed under a key from ``k_I``, and a binder: HMAC under a key from the network PSK over the
   whole record before it.
2. **Reply** (responder -> initiator): ``e_R``, ``C_R = OAEP(initiator, k_R)``, and the responder's
   Finished MAC, keyed from a secret that needs ``k_I`` and the X25519 secret.
3. **Finish** (initiator -> responder): the initiator's Finished MAC, keyed from a secret that
   needs ``k_R``.

The responder checks the binder before any private-key work, so a stranger without the PSK costs
only an HMAC. Every later check (OAEP, the sealed key, id = hash(key), the trust policy, the
timestamp, the X25519 result) runs to the end on substitutes and the handshake fails at a single
place with a single error, :class:`HandshakeFailed`. The private-key operation itself is handed to
the caller (``pending_decryption``) so an I/O layer can run it off its event loop.

The timestamp guard is only advanced once Finish verifies, so a forged Hello (anyone can encrypt to
the responder) can never move it and lock the real initiator out.
"""

from __future__ import annotations

import enum
import hmac
import os
from collections.abc import Callable
from typing import Protocol

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import _keyschedule as ks
from . import _wire as wire
from ._errors import HandshakeFailed
from .identity import Identity, NetworkKey, PeerId, PeerRecord, encrypt_to

HELLO_OAEP_LABEL = b"p2ptls1 hello"
REPLY_OAEP_LABEL = b"p2ptls1 reply"
_ZERO_NONCE = bytes(12)

Randomness = Callable[[int], bytes]
OaepEncrypt = Callable[[PeerRecord, bytes, bytes], bytes]
"""``(recipient, plaintext, label) -> ciphertext``; :func:`~p2ptls.identity.encrypt_to` unless a
known-answer test needs OAEP with a fixed seed."""


class TrustPolicy(Protocol):
    """Decides which authenticated peers a responder accepts."""

    def is_trusted(self, record: PeerRecord) -> bool:
        """True if ``record`` (whose id already matches its key) may connect."""
        ...


class TimestampGuard(Protocol):
    """Remembers the newest accepted Hello timestamp per initiator (replay protection)."""

    def is_fresh(self, peer_id: PeerId, timestamp_ns: int) -> bool: ...

    def accept(self, peer_id: PeerId, timestamp_ns: int) -> None: ...


@attrs.frozen(repr=False)
class HandshakeResult:
    """What a completed handshake establishes."""

    remote: PeerRecord
    """The verified remote peer."""
    secrets: ks.SessionSecrets
    transcript_hash: bytes
    """SHA-256 of Hello | Reply | id_I | id_R; identifies the session."""

    def __repr__(self) -> str:
        return f"HandshakeResult(remote={self.remote.peer_id!r})"


class Role(enum.Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


def _x25519_public_bytes(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes_raw()


def _x25519_shared_or_none(private: X25519PrivateKey, peer_public: bytes) -> bytes | None:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:  # wrong size or a low-order point (all-zero shared secret)
        return None


def _reply_transcript(
    hello_record: bytes, reply_unfinished_record: bytes, initiator: PeerId, responder: PeerId
) -> bytes:
    return ks.transcript_hash(hello_record, reply_unfinished_record, initiator.digest, responder.digest)


def _full_transcript(
    hello_record: bytes, reply_record: bytes, initiator: PeerId, responder: PeerId
) -> bytes:
    return ks.transcript_hash(hello_record, reply_record, initiator.digest, responder.digest)


def _hello_record_prefix(hello: wire.Hello) -> bytes:
    """The bytes the binder covers: the record header (with the final length) and the unbound body."""
    unbound = hello.encode_unbound()
    return wire.encode_header(wire.HANDSHAKE, len(unbound) + wire.MAC_SIZE) + unbound


def _sealed_key_aad(hello: wire.Hello) -> bytes:
    return b"".join(
        [
            bytes([wire.HELLO, hello.suite]),
            hello.ephemeral,
            hello.responder_id_prefix,
            hello.sealed_secret,
        ]
    )


class InitiatorHandshake:
    """The initiator's side: ``hello_record()``, then the Reply, then one private-key operation."""

    def __init__(
        self,
        identity: Identity,
        psk: NetworkKey,
        responder: PeerRecord,
        *,
        timestamp_ns: int,
        randomness: Randomness = os.urandom,
        ephemeral: X25519PrivateKey | None = None,
        oaep_encrypt: OaepEncrypt = encrypt_to,
    ) -> None:
        self._identity = identity
        self._psk = psk
        self._responder = responder
        self._ephemeral = ephemeral or X25519PrivateKey.from_private_bytes(randomness(32))
        self._k_initiator = randomness(wire.RANDOM_SIZE)
        sealed_secret = oaep_encrypt(
            responder,
            identity.peer_id.digest + self._k_initiator + wire.TIMESTAMP.pack(timestamp_ns),
            HELLO_OAEP_LABEL,
        )
        self._early = ks.early_secret(psk.secret, self._k_initiator)
        unsealed = wire.Hello(
            suite=wire.SUITE_RSA_OAEP_X25519_AES256GCM_SHA256,
            ephemeral=_x25519_public_bytes(self._ephemeral),
            responder_id_prefix=responder.peer_id.digest[: wire.ID_PREFIX_SIZE],
            sealed_secret=sealed_secret,
            sealed_public_key=b"",
            binder=b"",
        )
        aad = _sealed_key_aad(unsealed)
        hello_key = ks.hello_key(self._early, ks.transcript_hash(aad))
        sealed_public_key = AESGCM(hello_key).encrypt(
            _ZERO_NONCE, identity.record.public_key_der, aad
        )
        unbound = attrs.evolve(unsealed, sealed_public_key=sealed_public_key)
        binder = ks.mac(ks.binder_key(psk.secret), _hello_record_prefix(unbound))
        self._hello_record = wire.handshake_record(attrs.evolve(unbound, binder=binder).encode())
        self._reply: wire.Reply | None = None
        self._reply_record = b""

    def hello_record(self) -> bytes:
        """Flight 1, ready to send."""
        return self._hello_record

    def receive_reply_untrusted(self, record: bytes) -> bytes:
        """Take the Reply record; return ``C_R``, which the caller decrypts with the identity key."""
        if self._reply is not None:
            raise HandshakeFailed()
        self._reply = wire.parse_reply_untrusted(record[wire.HEADER_SIZE :])
        self._reply_record = record
        return self._reply.sealed_secret

    def complete_untrusted(self, k_responder: bytes | None) -> tuple[bytes, HandshakeResult]:
        """Given the decrypted ``C_R`` (``None`` if decryption failed), verify the responder's
        Finished and return ``(finish_record, result)``; raise :class:`HandshakeFailed` otherwise."""
        reply = self._reply
        if reply is None:
            raise HandshakeFailed()
        ok = k_responder is not None and len(k_responder) == wire.RANDOM_SIZE
        k_r = k_responder if ok and k_responder is not None else os.urandom(wire.RANDOM_SIZE)
        shared = _x25519_shared_or_none(self._ephemeral, reply.ephemeral)
        ok = ok and shared is not None
        handshake = ks.handshake_secret(self._early, shared or os.urandom(32))
        initiator_id = self._identity.peer_id
        responder_id = self._responder.peer_id
        reply_unfinished = self._reply_record[: -wire.MAC_SIZE]
        expected = ks.mac(
            ks.expand_label(handshake, "r finished", b"", ks.HASH_SIZE),
            _reply_transcript(self._hello_record, reply_unfinished, initiator_id, responder_id),
        )
        ok = hmac.compare_digest(expected, reply.finished) and ok
        if not ok:
            raise HandshakeFailed()
        master = ks.master_secret(handshake, k_r)
        full = _full_transcript(self._hello_record, self._reply_record, initiator_id, responder_id)
        finished = ks.mac(ks.expand_label(master, "i finished", b"", ks.HASH_SIZE), full)
        finish_record = wire.handshake_record(wire.Finish(finished).encode())
        result = HandshakeResult(self._responder, ks.session_secrets(master, full), full)
        return finish_record, result


class ResponderHandshake:
    """The responder's side: the Hello, one private-key operation, the Reply, then Finish."""

    def __init__(
        self,
        identity: Identity,
        psk: NetworkKey,
        policy: TrustPolicy,
        guard: TimestampGuard,
        *,
        randomness: Randomness = os.urandom,
        ephemeral: X25519PrivateKey | None = None,
        oaep_encrypt: OaepEncrypt = encrypt_to,
    ) -> None:
        self._identity = identity
        self._psk = psk
        self._oaep_encrypt = oaep_encrypt
        self._policy = policy
        self._guard = guard
        self._randomness = randomness
        self._ephemeral = ephemeral
        self._hello: wire.Hello | None = None
        self._hello_record = b""
        self._pending: tuple[PeerRecord, int, bytes, bytes] | None = None

    def receive_hello_untrusted(self, record: bytes) -> bytes:
        """Take the Hello record. Return ``C_I`` for the caller to decrypt with the identity key.

        Raises :class:`HandshakeFailed`, before any private-key work, if the binder is wrong.
        """
        if self._hello is not None:
            raise HandshakeFailed()
        hello = wire.parse_hello_untrusted(record[wire.HEADER_SIZE :])
        expected_binder = ks.mac(ks.binder_key(self._psk.secret), record[: -wire.MAC_SIZE])
        if not hmac.compare_digest(expected_binder, hello.binder):
            raise HandshakeFailed()
        self._hello = hello
        self._hello_record = record
        return hello.sealed_secret

    def reply_untrusted(self, hello_secret: bytes | None) -> bytes:
        """Given the decrypted ``C_I`` (``None`` if decryption failed), return the Reply record.

        Every check runs on substitutes after the first failure; failure is raised once, here.
        """
        hello = self._hello
        if hello is None or self._pending is not None:
            raise HandshakeFailed()
        ok = hello_secret is not None and len(hello_secret) == wire.HELLO_SECRET_SIZE
        if not ok or hello_secret is None:
            hello_secret = os.urandom(wire.HELLO_SECRET_SIZE)
        claimed_id = hello_secret[: wire.ID_SIZE]
        k_initiator = hello_secret[wire.ID_SIZE : wire.ID_SIZE + wire.RANDOM_SIZE]
        (timestamp,) = wire.TIMESTAMP.unpack_from(hello_secret, wire.ID_SIZE + wire.RANDOM_SIZE)
        own_id = self._identity.peer_id
        ok = hmac.compare_digest(hello.responder_id_prefix, own_id.digest[: wire.ID_PREFIX_SIZE]) and ok
        early = ks.early_secret(self._psk.secret, k_initiator)
        aad = _sealed_key_aad(hello)
        initiator: PeerRecord | None = None
        try:
            der = AESGCM(ks.hello_key(early, ks.transcript_hash(aad))).decrypt(
                _ZERO_NONCE, hello.sealed_public_key, aad
            )
            initiator = PeerRecord.from_public_key(der)
        except (InvalidTag, ValueError):
            ok = False
        if initiator is not None:
            ok = hmac.compare_digest(initiator.peer_id.digest, claimed_id) and ok
            ok = self._policy.is_trusted(initiator) and ok
            ok = self._guard.is_fresh(initiator.peer_id, timestamp) and ok
        ephemeral = self._ephemeral or X25519PrivateKey.from_private_bytes(self._randomness(32))
        shared = _x25519_shared_or_none(ephemeral, hello.ephemeral)
        ok = ok and shared is not None
        if not ok or initiator is None or shared is None:
            raise HandshakeFailed()
        k_responder = self._randomness(wire.RANDOM_SIZE)
        handshake = ks.handshake_secret(early, shared)
        unfinished = wire.Reply(
            ephemeral=_x25519_public_bytes(ephemeral),
            sealed_secret=self._oaep_encrypt(initiator, k_responder, REPLY_OAEP_LABEL),
            finished=b"",
        ).encode_unfinished()
        reply_length = len(unfinished) + wire.MAC_SIZE
        unfinished_record = wire.encode_header(wire.HANDSHAKE, reply_length) + unfinished
        finished = ks.mac(
            ks.expand_label(handshake, "r finished", b"", ks.HASH_SIZE),
            _reply_transcript(self._hello_record, unfinished_record, initiator.peer_id, own_id),
        )
        reply_record = unfinished_record + finished
        self._pending = (initiator, timestamp, ks.master_secret(handshake, k_responder), reply_record)
        return reply_record

    def receive_finish_untrusted(self, record: bytes) -> HandshakeResult:
        """Verify the initiator's Finished; on success, advance the timestamp guard."""
        if self._pending is None:
            raise HandshakeFailed()
        initiator, timestamp, master, reply_record = self._pending
        self._pending = None
        finish = wire.parse_finish_untrusted(record[wire.HEADER_SIZE :])
        own_id = self._identity.peer_id
        full = _full_transcript(self._hello_record, reply_record, initiator.peer_id, own_id)
        expected = ks.mac(ks.expand_label(master, "i finished", b"", ks.HASH_SIZE), full)
        if not hmac.compare_digest(expected, finish.finished):
            raise HandshakeFailed()
        self._guard.accept(initiator.peer_id, timestamp)
        return HandshakeResult(initiator, ks.session_secrets(master, full), full)
