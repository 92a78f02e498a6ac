"""The three-flight handshake, as two sans-IO state machines.

Theory of operation
-------------------
Authentication is by decryption (the KEMTLS idea): each side encrypts fresh key material to the
other's RSA key with OAEP, and only the holder of the matching private key can derive the secret
that the other side's Finished MAC proves.

1. **Hello** (initiator -> responder): suite, the initiator's wall clock in whole seconds, an
   ephemeral X25519 key ``e_I``, ``C_I = OAEP(responder, id_I | k_I | timestamp in ns)``, the
   initiator's public key sealed under a key from ``k_I``, and a binder: HMAC under a key derived
   from the network PSK *and the responder's full id* over the whole record before it. Nothing in
   the clear names either party.
2. **Reply** (responder -> initiator): ``e_R``, ``C_R = OAEP(initiator, k_R)`` sealed with AES-GCM
   under a key from the handshake secret (needs ``k_I`` and the X25519 secret, so only the two
   true parties can open it and nobody else can tell to which RSA key ``C_R`` was encrypted), and
   the responder's Finished MAC, keyed from that same secret.
3. **Finish** (initiator -> responder): the initiator's Finished MAC, keyed from a secret that
   needs ``k_R``.

Cheap checks come first and cost no private-key work: the Hello's structure, its binder (a Hello
made for another responder fails here), the coarse timestamp against the replay window, and a
cache of recently admitted binders: a copy of a Hello already decrypted is answered from the
remembered decryption, so replays cost no RSA work and a copy raced in ahead of the genuine Hello
cannot make the genuine one fail. From there on the responder always answers with a Reply of the
genuine shape. If the key material is unsound (wrong binder, bad OAEP, timestamps that disagree,
bad or non-canonical sealed key, an id that is not the hash of the key, a low-order X25519 point)
the Reply is a *substitute*: a fresh ``e_R`` and random bytes where the sealed ``C_R`` and the
Finished MAC go, of the lengths a genuine Reply to that initiator has. The Hello's author already
knows these facts, so this reveals nothing. Trust and timestamp freshness never change the Reply
(the Hello's author can verify the responder's Finished, so a different Reply would be an oracle
on who is trusted and when they last connected); they are enforced when the Finish arrives. Every
failure is reported at that one place, with one error.

The initiator checks the responder's Finished (which it can compute from ``k_I`` and the X25519
secret) *before* its own RSA decryption, so an impostor answering its connection costs it nothing.
The per-initiator timestamp guard is only advanced once Finish verifies.

A resumed handshake (a ticket instead of RSA, :mod:`p2ptls._resume`) is the same three flights
with ``ResumeHello``/``ResumeReply``: :class:`ResumingInitiator` on one side, and
:meth:`ResponderHandshake.receive_resume_hello_untrusted` then the same Finish on the other.

States: each class moves its ``phase`` through its role's table in :mod:`p2ptls._connection_state`;
a step the phase does not allow raises :class:`HandshakeFailed` if the peer's record triggered it,
:class:`~p2ptls._errors.LocalProtocolError` if the caller did; a step that raises leaves it FAILED.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from typing import Protocol

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import _keyschedule as ks
from . import _wire as wire
from ._connection_state import (
    INITIATOR,
    RESPONDER,
    RESUMING_INITIATOR,
    HandshakeMachine,
    HandshakeState,
    Trigger,
)
from ._errors import HandshakeFailed, LocalProtocolError
from ._resume import Accepted, answer_resume_hello, resume_hello_record, shared_or_none
from ._tickets import TICKETS_PER_HANDSHAKE, SessionTicket, TicketAuthority
from .identity import Identity, NetworkKey, PeerId, PeerRecord, encrypt_to
from .trust import DEFAULT_SOURCE, Admission, KnownDecryption

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

    def admit_hello(
        self, binder: bytes, timestamp_ns: int, now_ns: int, source: str = DEFAULT_SOURCE
    ) -> Admission:
        """Before any RSA work: refuse a Hello outside the window or at or below its source's
        floor; tell a copy from a new one. ``source`` is where the connection came from."""
        ...

    def decryption_of(self, binder: bytes) -> KnownDecryption | None:
        """The remembered decryption of an admitted Hello, if it is known yet."""
        ...

    def remember_decryption(self, binder: bytes, plaintext: bytes | None) -> None:
        """Keep the decryption of an admitted Hello for its copies."""
        ...

    def is_fresh(self, peer_id: PeerId, timestamp_ns: int) -> bool:
        """True if ``timestamp_ns`` is newer than the last accepted one of ``peer_id``."""
        ...

    def accept(self, peer_id: PeerId, timestamp_ns: int, *, durable: bool = True) -> None:
        """Record an authenticated handshake's timestamp (``durable``: persist it too)."""
        ...


@attrs.frozen(repr=False)
class HandshakeResult:
    """What a completed handshake establishes."""

    remote: PeerRecord
    """The verified remote peer."""
    secrets: ks.SessionSecrets
    transcript_hash: bytes
    """SHA-256 of Hello | Reply | id_I | id_R; identifies the session."""
    resumed: bool = False
    """The handshake used a ticket (SPEC 3.6) instead of RSA."""

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
    return shared_or_none(private, peer_public)  # None: a low-order point


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
            wire.TIMESTAMP.pack(hello.timestamp_s),
            hello.ephemeral,
            hello.sealed_secret,
        ]
    )


def _reply_prefix(ephemeral: bytes, rsa_bytes: int) -> bytes:
    """The Reply record up to its sealed ``C_R``: the AAD of that seal."""
    body_length = 1 + wire.X25519_SIZE + 2 + rsa_bytes + wire.TAG_SIZE + wire.MAC_SIZE
    return b"".join(
        [
            wire.encode_header(wire.HANDSHAKE, body_length),
            bytes([wire.REPLY]),
            ephemeral,
            wire.U16.pack(rsa_bytes + wire.TAG_SIZE),
        ]
    )


class _Initiating(HandshakeMachine):
    """An initiator: its flight 1 is made when it is built, and :meth:`start` hands it out once."""

    _hello_record: bytes

    def hello_record(self) -> bytes:
        """Flight 1 (Hello or ResumeHello), ready to send: the bytes :meth:`start` returns."""
        return self._hello_record

    def start(self) -> bytes:
        """Start the handshake: flight 1, to send."""
        self.phase = self._begin(Trigger.START)
        return self._hello_record


class InitiatorHandshake(_Initiating):
    """The initiator's side (phases: ``INITIATOR``): the Hello, the Reply, one RSA operation."""

    transitions = INITIATOR

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
            responder,
            identity.peer_id.digest + k_initiator + wire.TIMESTAMP.pack(timestamp_ns),
            HELLO_OAEP_LABEL,
        )
        self._early = ks.early_secret(psk.secret, k_initiator)
        unsealed = wire.Hello(
            suite=wire.SUITE_RSA_OAEP_X25519_AES256GCM_SHA256,
            timestamp_s=timestamp_ns // wire.NS_PER_S,
            ephemeral=_x25519_public_bytes(self._ephemeral),
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
        binder_key = ks.binder_key(psk.secret, responder.peer_id.digest)
        binder = ks.mac(binder_key, _hello_record_prefix(unbound))
        self._hello_record = wire.handshake_record(attrs.evolve(unbound, binder=binder).encode())
        self._handshake_secret: bytes | None = None
        self._reply_record = b""
        self.phase = HandshakeState.IDLE

    def receive_reply_untrusted(self, record: bytes) -> bytes:
        """Take the Reply record and verify the responder's Finished.

        Returns ``C_R`` (unsealed), which the caller decrypts with the identity key. Raises
        :class:`HandshakeFailed` before any private-key work if the Reply is not from the true
        responder.
        """
        next_phase = self._begin(Trigger.REPLY)
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
        sealed_end = len(record) - wire.MAC_SIZE - len(reply.sealed_secret)
        try:
            c_r = AESGCM(ks.reply_key(handshake)).decrypt(
                _ZERO_NONCE, reply.sealed_secret, record[:sealed_end]
            )
        except InvalidTag:
            raise HandshakeFailed() from None
        self._handshake_secret = handshake
        self._reply_record = record
        self.phase = next_phase
        return c_r

    def complete_untrusted(self, k_responder: bytes | None) -> tuple[bytes, HandshakeResult]:
        """Given the decrypted ``C_R`` (``None`` if decryption failed), return
        ``(finish_record, result)``; raise :class:`HandshakeFailed` otherwise."""
        next_phase = self._begin(Trigger.SUPPLY_DECRYPTION)
        handshake = self._handshake_secret
        assert handshake is not None  # set on the way to KEY_OPERATION
        if k_responder is None or len(k_responder) != wire.RANDOM_SIZE:
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
        self.phase = next_phase
        return finish_record, result


class ResumingInitiator(_Initiating):
    """The initiator's side of a resumed handshake (SPEC 3.6; phases: ``RESUMING_INITIATOR``)."""

    transitions = RESUMING_INITIATOR

    def __init__(
        self,
        identity: Identity,
        psk: NetworkKey,
        responder: PeerRecord,
        ticket: SessionTicket,
        *,
        timestamp_ns: int,
        randomness: Randomness = os.urandom,
        ephemeral: X25519PrivateKey | None = None,
    ) -> None:
        self._identity = identity
        self._responder = responder
        self._ephemeral = ephemeral or X25519PrivateKey.from_private_bytes(randomness(32))
        self._hello_record, self._early = resume_hello_record(
            psk.secret,
            responder.peer_id,
            ticket,
            _x25519_public_bytes(self._ephemeral),
            timestamp_ns,
        )
        self.phase = HandshakeState.IDLE

    def receive_reply_untrusted(self, record: bytes) -> tuple[bytes, HandshakeResult]:
        """Verify the ResumeReply; return ``(finish_record, result)``.

        Raises :class:`HandshakeFailed` if the reply is not the true responder's (a substitute:
        the responder did not accept the ticket), so the caller can fall back to a full handshake.
        """
        next_phase = self._begin(Trigger.RESUME_REPLY)
        reply = wire.parse_resume_reply_untrusted(record[wire.HEADER_SIZE :])
        shared = _x25519_shared_or_none(self._ephemeral, reply.ephemeral)
        if shared is None:
            raise HandshakeFailed()
        handshake = ks.handshake_secret(self._early, shared)
        own, remote = self._identity.peer_id, self._responder.peer_id
        expected = _responder_finished(
            handshake, _reply_transcript(self._hello_record, record[: -wire.MAC_SIZE], own, remote)
        )
        if not hmac.compare_digest(expected, reply.finished):
            raise HandshakeFailed()
        master = ks.resume_master_secret(handshake)
        full = _full_transcript(self._hello_record, record, own, remote)
        finish_record = wire.handshake_record(
            wire.Finish(_initiator_finished(master, full)).encode()
        )
        secrets = ks.session_secrets(master, full)
        self.phase = next_phase
        return finish_record, HandshakeResult(self._responder, secrets, full, resumed=True)


class ResponderHandshake(HandshakeMachine):
    """The responder's side (phases: ``RESPONDER``): the Hello, at most one private-key operation
    (:meth:`reply_untrusted` or :meth:`reply_without_key_operation` ends KEY_OPERATION), the
    Reply, the Finish; or a ResumeHello, its ResumeReply and the Finish."""

    transitions = RESPONDER

    def __init__(
        self,
        identity: Identity,
        psk: NetworkKey,
        policy: TrustPolicy,
        guard: TimestampGuard,
        *,
        now_ns: int,
        source: str = DEFAULT_SOURCE,
        randomness: Randomness = os.urandom,
        ephemeral: X25519PrivateKey | None = None,
        oaep_encrypt: OaepEncrypt = encrypt_to,
        tickets: TicketAuthority | None = None,
        ticket_lifetime_s: int = 6 * 3600,
    ) -> None:
        self._identity = identity
        self._psk = psk
        self._source = source
        self._tickets = tickets
        self._ticket_lifetime_s = ticket_lifetime_s
        self._resumed = False
        self._binder_key = ks.binder_key(psk.secret, identity.peer_id.digest)
        self._policy = policy
        self._guard = guard
        self._now_ns = now_ns
        self._randomness = randomness
        self._ephemeral = ephemeral
        self._oaep_encrypt = oaep_encrypt
        self._hello: wire.Hello | None = None
        self._hello_record = b""
        self._known: KnownDecryption | None = None
        self._accepted: Accepted | None = None
        self.phase = HandshakeState.AWAIT_HELLO

    def start(self) -> bytes:
        """Nothing to send first: a responder speaks second (checks the phase all the same)."""
        self.phase = self._begin(Trigger.START)
        return b""

    def receive_hello_untrusted(self, record: bytes) -> bytes | None:
        """Take the Hello record.

        Raises :class:`HandshakeFailed` (the caller closes without a reply) for a malformed Hello
        or one outside the replay window. Otherwise returns ``C_I`` for the caller to decrypt with
        the identity key and hand to :meth:`reply_untrusted`, or ``None`` when no private-key
        operation is needed (the binder is wrong, or this is a copy of a Hello whose decryption is
        remembered): then :meth:`reply_without_key_operation` is called straight away.
        """
        next_phase = self._begin(Trigger.HELLO)
        hello = wire.parse_hello_untrusted(record[wire.HEADER_SIZE :])
        expected_binder = ks.mac(self._binder_key, record[: -wire.MAC_SIZE])
        known: KnownDecryption | None = KnownDecryption(None)  # wrong binder: unsound
        if hmac.compare_digest(expected_binder, hello.binder):
            admission = self._guard.admit_hello(
                hello.binder, hello.timestamp_s * wire.NS_PER_S, self._now_ns, self._source
            )
            if admission is Admission.REFUSED:
                raise HandshakeFailed()
            known = None
            if admission is Admission.SEEN:
                known = self._guard.decryption_of(hello.binder)
        self._hello = hello
        self._hello_record = record
        self._known = known
        self.phase = next_phase
        return hello.sealed_secret if known is None else None

    def receive_resume_hello_untrusted(self, record: bytes) -> bytes:
        """Take a ResumeHello record and return the ResumeReply record (genuine or substitute).

        No private-key operation. Raises :class:`HandshakeFailed` (the caller closes without a
        reply) for a malformed ResumeHello or one the replay guard refuses.
        """
        next_phase = self._begin(Trigger.RESUME_HELLO)
        self._hello_record = record
        ephemeral = self._ephemeral or X25519PrivateKey.from_private_bytes(self._randomness(32))
        reply, accepted = answer_resume_hello(
            record,
            responder=self._identity.peer_id,
            psk=self._psk.secret,
            policy=self._policy,
            guard=self._guard,
            authority=self._tickets,
            lifetime_s=self._ticket_lifetime_s,
            now_ns=self._now_ns,
            source=self._source,
            ephemeral=ephemeral,
            randomness=self._randomness,
        )
        self._resumed = True
        self._accepted = accepted
        self.phase = next_phase
        return reply

    def new_tickets(self, result: HandshakeResult) -> list[wire.TicketPayload]:
        """The TICKET payloads to send once ``result`` is established (none without tickets)."""
        authority = self._tickets
        if authority is None:
            return []
        payloads = []
        for _ in range(TICKETS_PER_HANDSHAKE):
            nonce = self._randomness(wire.TICKET_NONCE_SIZE)
            ticket = authority.seal(
                self._psk.secret,
                self._identity.peer_id,
                result.remote,
                ks.ticket_psk(result.secrets.resumption, nonce),
                now_s=self._now_ns // wire.NS_PER_S,
                lifetime_s=self._ticket_lifetime_s,
                nonce=self._randomness(12),
            )
            payloads.append(wire.TicketPayload(self._ticket_lifetime_s, nonce, ticket))
        return payloads

    def reply_untrusted(self, hello_secret: bytes | None) -> bytes:
        """Given the decrypted ``C_I`` (``None`` if decryption failed), return the Reply record:
        genuine if every soundness check passed, an indistinguishable substitute otherwise."""
        if self._known is not None:  # (checked first: misuse changes nothing)
            raise LocalProtocolError("no private-key operation: use reply_without_key_operation")
        next_phase = self._begin(Trigger.SUPPLY_DECRYPTION)
        hello = self._hello
        assert hello is not None  # kept on the way to KEY_OPERATION
        self._guard.remember_decryption(hello.binder, hello_secret)
        reply = self._reply(hello, hello_secret)
        self.phase = next_phase
        return reply

    def reply_without_key_operation(self) -> bytes:
        """The Reply when :meth:`receive_hello_untrusted` returned ``None``."""
        hello, known = self._hello, self._known
        if known is None:  # (checked first: misuse changes nothing)
            raise LocalProtocolError("a private-key operation is needed: use reply_untrusted")
        next_phase = self._begin(Trigger.SUPPLY_DECRYPTION)
        assert hello is not None  # kept on the way to KEY_OPERATION
        reply = self._reply(hello, known.plaintext)
        self.phase = next_phase
        return reply

    def _reply(self, hello: wire.Hello, hello_secret: bytes | None) -> bytes:
        ephemeral = self._ephemeral or X25519PrivateKey.from_private_bytes(self._randomness(32))
        ephemeral_public = _x25519_public_bytes(ephemeral)
        rsa_bytes = wire.initiator_rsa_bytes(hello)
        prefix = _reply_prefix(ephemeral_public, rsa_bytes)
        sound = self._check_hello(hello, hello_secret, ephemeral)
        if sound is None:
            # A substitute: random bytes where the sealed C_R and finished_R go. Without the
            # handshake secret nobody can tell them from a genuine Reply's.
            sealed = self._randomness(rsa_bytes + wire.TAG_SIZE)
            return prefix + sealed + self._randomness(wire.MAC_SIZE)
        initiator, timestamp_ns, handshake, authorized = sound
        k_responder = self._randomness(wire.RANDOM_SIZE)
        c_r = self._oaep_encrypt(initiator, k_responder, REPLY_OAEP_LABEL)
        unfinished_record = prefix + AESGCM(ks.reply_key(handshake)).encrypt(
            _ZERO_NONCE, c_r, prefix
        )
        own_id = self._identity.peer_id
        reply_record = unfinished_record + _responder_finished(
            handshake,
            _reply_transcript(self._hello_record, unfinished_record, initiator.peer_id, own_id),
        )
        self._accepted = Accepted(
            initiator,
            timestamp_ns,
            ks.master_secret(handshake, k_responder),
            reply_record,
            authorized,
        )
        return reply_record

    def _check_hello(
        self, hello: wire.Hello, hello_secret: bytes | None, ephemeral: X25519PrivateKey
    ) -> tuple[PeerRecord, int, bytes, bool] | None:
        """The soundness checks; ``(initiator, timestamp_ns, handshake_secret, authorized)`` or
        ``None`` if one fails. Authorisation (trust, freshness) is only evaluated, not enforced."""
        if hello_secret is None or len(hello_secret) != wire.HELLO_SECRET_SIZE:
            return None
        claimed_id = hello_secret[: wire.ID_SIZE]
        k_initiator = hello_secret[wire.ID_SIZE : wire.ID_SIZE + wire.RANDOM_SIZE]
        (timestamp_ns,) = wire.TIMESTAMP.unpack(hello_secret[wire.ID_SIZE + wire.RANDOM_SIZE :])
        if timestamp_ns // wire.NS_PER_S != hello.timestamp_s:
            return None
        early = ks.early_secret(self._psk.secret, k_initiator)
        aad = _sealed_key_aad(hello)
        try:
            der = AESGCM(ks.hello_key(early, ks.transcript_hash(aad))).decrypt(
                _ZERO_NONCE, hello.sealed_public_key, aad
            )
            presented = PeerRecord.from_public_key(der)
        except (InvalidTag, ValueError):
            return None
        if not hmac.compare_digest(presented.peer_id.digest, claimed_id):
            return None
        if presented.public_key.key_size // 8 != wire.initiator_rsa_bytes(hello):
            return None  # cannot happen for a canonical key; keeps C_R the announced size
        shared = _x25519_shared_or_none(ephemeral, hello.ephemeral)
        if shared is None:
            return None
        # Trust and freshness do not change the Reply: the author of a Hello can check the
        # responder's Finished itself, so a different Reply would tell a network-key holder who
        # is trusted and when they last connected. They are enforced at the Finish.
        trusted = self._policy.is_trusted(presented)
        authorized = self._guard.is_fresh(presented.peer_id, timestamp_ns) and trusted
        return presented, timestamp_ns, ks.handshake_secret(early, shared), authorized

    def receive_finish_untrusted(self, record: bytes) -> HandshakeResult:
        """Verify the initiator's Finished; on success, advance the timestamp guard.

        This is the one place where a failed handshake is reported. When the Finished is genuine
        but the initiator is not authorised, :class:`Refusal` (a ``HandshakeFailed``) carries the
        session, so that the caller can tell that initiator, and only it, with a sealed CLOSE.
        """
        next_phase = self._begin(Trigger.FINISH)
        finish = wire.parse_finish_untrusted(record[wire.HEADER_SIZE :])
        accepted, self._accepted = self._accepted, None
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
        # A ResumeHello cannot be replayed after a restart (its ticket would not open): no write.
        initiator, timestamp_ns = accepted.initiator.peer_id, accepted.timestamp_ns
        self._guard.accept(initiator, timestamp_ns, durable=not self._resumed)
        secrets = ks.session_secrets(accepted.master, full)
        self.phase = next_phase
        return HandshakeResult(accepted.initiator, secrets, full, resumed=self._resumed)
