"""The three-flight handshake, as two sans-IO state machines.

Theory of operation
-------------------
Authentication is by decryption (the KEMTLS idea): each side encrypts fresh key material to the
other's RSA key with OAEP, and only the holder of the matching private key can derive the secret
that the other side's Finished MAC proves.

1. **Hello** (initiator -> responder): suite, the initiator's wall-clock timestamp, ephemeral X25519
   key ``e_I``, the first 8 bytes of the responder's id, ``C_I = OAEP(responder, id_I | k_I)``, the
   initiator's public key sealed under a key from ``k_I``, and a binder: HMAC under a key from the
   network PSK over the whole record before it.
2. **Reply** (responder -> initiator): ``e_R``, ``C_R = OAEP(initiator, k_R)``, and the responder's
   Finished MAC, keyed from a secret that needs ``k_I`` and the X25519 secret.
3. **Finish** (initiator -> responder): the initiator's Finished MAC, keyed from a secret that
   needs ``k_R``.

Cheap checks come first and cost no private-key work: the Hello's structure, its timestamp against
the replay window, and a cache of recently seen binders (a replayed Hello is dropped with no
reply). Then, if the binder is right, the responder does its one RSA decryption; if it is wrong, it
does none. From there on the responder always answers with a Reply of the right shape. If the key
material is unsound (wrong PSK, bad OAEP, bad sealed key, id that is not the hash of the key,
low-order X25519 point) the Reply is a *substitute*: fresh key material, ``C_R`` encrypted to the
presented key (or our own), and a random Finished MAC; the Hello's author already knows these facts,
so this reveals nothing. Trust and timestamp freshness never change the Reply (the Hello's author
can verify the responder's Finished, so a different Reply would be an oracle on who is trusted and
when they last connected); they are enforced when the Finish arrives. Every failure is reported at
that one place, with one error.

The initiator checks the responder's Finished (which it can compute from ``k_I`` and the X25519
secret) *before* its own RSA decryption, so an impostor answering its connection costs it nothing.
The per-initiator timestamp guard is only advanced once Finish verifies.
"""

from __future__ import annotations

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
    """Replay protection for Hellos (see :class:`p2ptls.ReplayGuard`)."""

    def admit_hello(self, binder: bytes, timestamp_ns: int, now_ns: int) -> bool:
        """Before any RSA work: False for a Hello outside the window or already seen."""
        ...

    def is_fresh(self, peer_id: PeerId, timestamp_ns: int) -> bool:
        """True if ``timestamp_ns`` is newer than the last accepted one of ``peer_id``."""
        ...

    def accept(self, peer_id: PeerId, timestamp_ns: int) -> None:
        """Record an authenticated handshake's timestamp."""
        ...


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


class Refusal(HandshakeFailed):
    """The initiator proved its identity but is not accepted (see ``receive_finish_untrusted``)."""

    def __init__(self, secrets: ks.SessionSecrets) -> None:
        super().__init__()
        self.secrets = secrets


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
    return ks.transcript_hash(
        hello_record, reply_unfinished_record, initiator.digest, responder.digest
    )


def _full_transcript(
    hello_record: bytes, reply_record: bytes, initiator: PeerId, responder: PeerId
) -> bytes:
    return ks.transcript_hash(hello_record, reply_record, initiator.digest, responder.digest)


def _responder_finished(handshake: bytes, transcript: bytes) -> bytes:
    return ks.mac(ks.expand_label(handshake, "r finished", b"", ks.HASH_SIZE), transcript)


def _initiator_finished(master: bytes, transcript: bytes) -> bytes:
    return ks.mac(ks.expand_label(master, "i finished", b"", ks.HASH_SIZE), transcript)


def _hello_record_prefix(hello: wire.Hello) -> bytes:
    """What the binder covers: the record header (with the final length) and the unbound body."""
    unbound = hello.encode_unbound()
    return wire.encode_header(wire.HANDSHAKE, len(unbound) + wire.MAC_SIZE) + unbound


def _sealed_key_aad(hello: wire.Hello) -> bytes:
    return b"".join(
        [
            bytes([wire.HELLO, hello.suite]),
            wire.TIMESTAMP.pack(hello.timestamp_ns),
            hello.ephemeral,
            hello.responder_id_prefix,
            hello.sealed_secret,
        ]
    )


class InitiatorHandshake:
    """The initiator's side: ``hello_record()``, the Reply, then one private-key operation."""

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
        self._responder = responder
        self._ephemeral = ephemeral or X25519PrivateKey.from_private_bytes(randomness(32))
        k_initiator = randomness(wire.RANDOM_SIZE)
        sealed_secret = oaep_encrypt(
            responder, identity.peer_id.digest + k_initiator, HELLO_OAEP_LABEL
        )
        self._early = ks.early_secret(psk.secret, k_initiator)
        unsealed = wire.Hello(
            suite=wire.SUITE_RSA_OAEP_X25519_AES256GCM_SHA256,
            timestamp_ns=timestamp_ns,
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
        self._handshake_secret: bytes | None = None
        self._reply_record = b""

    def hello_record(self) -> bytes:
        """Flight 1, ready to send."""
        return self._hello_record

    def receive_reply_untrusted(self, record: bytes) -> bytes:
        """Take the Reply record and verify the responder's Finished.

        Returns ``C_R``, which the caller decrypts with the identity key. Raises
        :class:`HandshakeFailed` before any private-key work if the Reply is not from the true
        responder.
        """
        if self._handshake_secret is not None:
            raise HandshakeFailed()
        reply = wire.parse_reply_untrusted(record[wire.HEADER_SIZE :])
        shared = _x25519_shared_or_none(self._ephemeral, reply.ephemeral)
        if shared is None:
            raise HandshakeFailed()
        handshake = ks.handshake_secret(self._early, shared)
        expected = _responder_finished(
            handshake,
            _reply_transcript(
                self._hello_record,
                record[: -wire.MAC_SIZE],
                self._identity.peer_id,
                self._responder.peer_id,
            ),
        )
        if not hmac.compare_digest(expected, reply.finished):
            raise HandshakeFailed()
        self._handshake_secret = handshake
        self._reply_record = record
        return reply.sealed_secret

    def complete_untrusted(self, k_responder: bytes | None) -> tuple[bytes, HandshakeResult]:
        """Given the decrypted ``C_R`` (``None`` if decryption failed), return
        ``(finish_record, result)``; raise :class:`HandshakeFailed` otherwise."""
        handshake = self._handshake_secret
        if handshake is None or k_responder is None or len(k_responder) != wire.RANDOM_SIZE:
            raise HandshakeFailed()
        master = ks.master_secret(handshake, k_responder)
        full = _full_transcript(
            self._hello_record,
            self._reply_record,
            self._identity.peer_id,
            self._responder.peer_id,
        )
        finish_record = wire.handshake_record(
            wire.Finish(_initiator_finished(master, full)).encode()
        )
        result = HandshakeResult(self._responder, ks.session_secrets(master, full), full)
        return finish_record, result


@attrs.frozen(repr=False)
class _Accepted:
    """What the responder keeps between a genuine Reply and the Finish."""

    initiator: PeerRecord
    timestamp_ns: int
    master: bytes
    reply_record: bytes
    authorized: bool
    """The initiator is trusted and its timestamp fresh (checked only once its Finish verifies)."""


class ResponderHandshake:
    """The responder's side: the Hello, at most one private-key operation, the Reply, the Finish."""

    def __init__(
        self,
        identity: Identity,
        psk: NetworkKey,
        policy: TrustPolicy,
        guard: TimestampGuard,
        *,
        now_ns: int,
        randomness: Randomness = os.urandom,
        ephemeral: X25519PrivateKey | None = None,
        oaep_encrypt: OaepEncrypt = encrypt_to,
    ) -> None:
        self._identity = identity
        self._psk = psk
        self._policy = policy
        self._guard = guard
        self._now_ns = now_ns
        self._randomness = randomness
        self._ephemeral = ephemeral
        self._oaep_encrypt = oaep_encrypt
        self._hello: wire.Hello | None = None
        self._hello_record = b""
        self._binder_ok = False
        self._replied = False
        self._accepted: _Accepted | None = None

    def receive_hello_untrusted(self, record: bytes) -> bytes | None:
        """Take the Hello record.

        Raises :class:`HandshakeFailed` (the caller closes without a reply) for a malformed Hello,
        one outside the replay window, or a replay. Otherwise returns ``C_I`` for the caller to
        decrypt with the identity key, or ``None`` when the binder is wrong: then no private-key
        work is done and :meth:`reply_untrusted` is called with ``None`` straight away.
        """
        if self._hello is not None:
            raise HandshakeFailed()
        hello = wire.parse_hello_untrusted(record[wire.HEADER_SIZE :])
        expected_binder = ks.mac(ks.binder_key(self._psk.secret), record[: -wire.MAC_SIZE])
        self._binder_ok = hmac.compare_digest(expected_binder, hello.binder)
        if self._binder_ok and not self._guard.admit_hello(
            hello.binder, hello.timestamp_ns, self._now_ns
        ):
            raise HandshakeFailed()
        self._hello = hello
        self._hello_record = record
        return hello.sealed_secret if self._binder_ok else None

    def reply_untrusted(self, hello_secret: bytes | None) -> bytes:
        """Given the decrypted ``C_I`` (``None`` if decryption failed or was skipped), return the
        Reply record: genuine if every check passed, an indistinguishable substitute otherwise."""
        hello = self._hello
        if hello is None or self._replied:
            raise HandshakeFailed()
        self._replied = True
        ok = self._binder_ok
        if hello_secret is None or len(hello_secret) != wire.HELLO_SECRET_SIZE:
            ok = False
            hello_secret = os.urandom(wire.HELLO_SECRET_SIZE)
        claimed_id = hello_secret[: wire.ID_SIZE]
        k_initiator = hello_secret[wire.ID_SIZE :]
        own_id = self._identity.peer_id
        own_prefix = own_id.digest[: wire.ID_PREFIX_SIZE]
        ok = hmac.compare_digest(hello.responder_id_prefix, own_prefix) and ok
        early = ks.early_secret(self._psk.secret, k_initiator)
        aad = _sealed_key_aad(hello)
        presented: PeerRecord | None = None
        try:
            der = AESGCM(ks.hello_key(early, ks.transcript_hash(aad))).decrypt(
                _ZERO_NONCE, hello.sealed_public_key, aad
            )
            presented = PeerRecord.from_public_key(der)
        except (InvalidTag, ValueError):
            ok = False
        authorized = False
        if presented is not None:
            ok = hmac.compare_digest(presented.peer_id.digest, claimed_id) and ok
            # Trust and freshness do not change the Reply: the author of a Hello can check the
            # responder's Finished itself, so a different Reply would tell a network-key holder
            # who is trusted and when they last connected. They are enforced at the Finish.
            trusted = self._policy.is_trusted(presented)
            authorized = self._guard.is_fresh(presented.peer_id, hello.timestamp_ns) and trusted
        ephemeral = self._ephemeral or X25519PrivateKey.from_private_bytes(self._randomness(32))
        shared = _x25519_shared_or_none(ephemeral, hello.ephemeral)
        ok = ok and shared is not None
        k_responder = self._randomness(wire.RANDOM_SIZE)
        # C_R goes to the presented key when there is one, so a substitute Reply has the right
        # shape for the key the initiator claimed; otherwise to our own key.
        recipient = presented or self._identity.record
        unfinished = wire.Reply(
            ephemeral=_x25519_public_bytes(ephemeral),
            sealed_secret=self._oaep_encrypt(recipient, k_responder, REPLY_OAEP_LABEL),
            finished=b"",
        ).encode_unfinished()
        unfinished_record = (
            wire.encode_header(wire.HANDSHAKE, len(unfinished) + wire.MAC_SIZE) + unfinished
        )
        if not ok or presented is None or shared is None:
            return unfinished_record + os.urandom(wire.MAC_SIZE)
        handshake = ks.handshake_secret(early, shared)
        reply_record = unfinished_record + _responder_finished(
            handshake,
            _reply_transcript(self._hello_record, unfinished_record, presented.peer_id, own_id),
        )
        self._accepted = _Accepted(
            presented,
            hello.timestamp_ns,
            ks.master_secret(handshake, k_responder),
            reply_record,
            authorized,
        )
        return reply_record

    def receive_finish_untrusted(self, record: bytes) -> HandshakeResult:
        """Verify the initiator's Finished; on success, advance the timestamp guard.

        This is the one place where a failed handshake is reported. When the Finished is genuine
        but the initiator is not authorised, :class:`Refusal` (a ``HandshakeFailed``) carries the
        session, so that the caller can tell that initiator, and only it, with a sealed CLOSE.
        """
        if not self._replied:
            raise HandshakeFailed()
        finish = wire.parse_finish_untrusted(record[wire.HEADER_SIZE :])
        accepted, self._accepted = self._accepted, None
        self._replied = False
        if accepted is None:
            raise HandshakeFailed()
        own_id = self._identity.peer_id
        full = _full_transcript(
            self._hello_record, accepted.reply_record, accepted.initiator.peer_id, own_id
        )
        expected = _initiator_finished(accepted.master, full)
        if not hmac.compare_digest(expected, finish.finished):
            raise HandshakeFailed()
        if not accepted.authorized:
            raise Refusal(ks.session_secrets(accepted.master, full))
        self._guard.accept(accepted.initiator.peer_id, accepted.timestamp_ns)
        return HandshakeResult(accepted.initiator, ks.session_secrets(accepted.master, full), full)
