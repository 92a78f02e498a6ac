"""The resumed handshake (SPEC 3.6): a ticket instead of RSA, with a fresh X25519 exchange.

Theory of operation
-------------------
A resumed handshake has the three flights of a full one, with no RSA operation on either side:

1. **ResumeHello** (initiator -> responder): suite, the coarse timestamp, an ephemeral ``e_I``, the
   ticket (opaque, the responder's own sealed state), the precise timestamp sealed under a key from
   the ticket's PSK, and a binder (HMAC under a key from the ticket's PSK, the network key and the
   responder's id). Nothing in the clear names either party, and each ticket is used once, so two
   resumptions cannot be linked.
2. **ResumeReply** (responder -> initiator): ``e_R`` and the responder's Finished, keyed from the
   handshake secret (the ticket's PSK and the X25519 secret).
3. **Finish**: as in a full handshake.

The responder answers every ResumeHello it cannot accept (a ticket it cannot open, expired, of
an old epoch, for another responder, used by another ResumeHello; a wrong binder or sealed
timestamp) with a *substitute* ResumeReply of the same length (a fresh ``e_R`` and a random
Finished), and remembers nothing; the initiator's check of the Finished then fails and it falls
back to a full handshake. A copy of an accepted ResumeHello is answered as the original is: it
cannot make the genuine resumption fail, and its sender cannot finish.
Only a ResumeHello outside the replay window (checked after its binder) is dropped without an
answer, as a Hello would be. Trust and freshness never change the reply; they are enforced at the
Finish, like in a full handshake.
"""

from __future__ import annotations

import functools
import hmac
from typing import TYPE_CHECKING

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import _keyschedule as ks
from . import _wire as wire
from ._errors import HandshakeFailed
from ._tickets import SessionTicket, TicketAuthority, TicketContents
from .identity import PeerId, PeerRecord
from .trust import Admission

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._handshake import TimestampGuard, TrustPolicy

_ZERO_NONCE = bytes(12)
_INITIATOR_RECORDS_KEPT = 1024


@attrs.frozen(repr=False)
class Accepted:
    """What the responder keeps between a genuine reply (full or resumed) and the Finish."""

    initiator: PeerRecord
    timestamp_ns: int
    master: bytes
    reply_record: bytes
    authorized: bool
    """The initiator is trusted and its timestamp fresh (checked only once its Finish verifies)."""

    def __repr__(self) -> str:
        return f"Accepted(initiator={self.initiator.peer_id!r})"


def responder_finished(handshake: bytes, transcript: bytes) -> bytes:
    """``finished_R = HMAC(ExpandLabel(handshake_sec, "r finished"), transcript)``."""
    return ks.mac(ks.expand_label(handshake, "r finished", b"", ks.HASH_SIZE), transcript)


def reply_transcript(
    hello_record: bytes, reply_unfinished: bytes, initiator: PeerId, responder: PeerId
) -> bytes:
    return ks.transcript_hash(hello_record, reply_unfinished, initiator.digest, responder.digest)


def shared_or_none(private: X25519PrivateKey, peer_public: bytes) -> bytes | None:
    """The X25519 secret, or ``None`` for a low-order point."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        return None


def resume_hello_record(
    psk: bytes,
    responder: PeerId,
    ticket: SessionTicket,
    ephemeral_public: bytes,
    timestamp_ns: int,
) -> tuple[bytes, bytes]:
    """Build a ResumeHello record; return ``(record, resume_early_secret)``."""
    early = ks.resume_early_secret(psk, ticket.ticket_psk)
    hello = wire.ResumeHello(
        suite=wire.SUITE_RSA_OAEP_X25519_AES256GCM_SHA256,
        timestamp_s=timestamp_ns // wire.NS_PER_S,
        ephemeral=ephemeral_public,
        ticket=ticket.ticket,
        sealed_timestamp=b"",
        binder=b"",
    )
    body_size = wire.resume_hello_body_size(len(ticket.ticket))
    prefix = wire.encode_header(wire.HANDSHAKE, body_size) + hello.encode_prefix()
    sealed = AESGCM(ks.resume_hello_key(early, ks.transcript_hash(prefix))).encrypt(
        _ZERO_NONCE, wire.TIMESTAMP.pack(timestamp_ns), prefix
    )
    unbound = prefix + sealed
    binder = ks.mac(ks.resume_binder_key(early, responder.digest), unbound)
    return unbound + binder, early


def _reply_unfinished(ephemeral_public: bytes) -> bytes:
    return (
        wire.encode_header(wire.HANDSHAKE, wire.RESUME_REPLY_BODY_SIZE)
        + bytes([wire.RESUME_REPLY])
        + ephemeral_public
    )


def answer_resume_hello(
    record: bytes,
    *,
    responder: PeerId,
    psk: bytes,
    policy: TrustPolicy,
    guard: TimestampGuard,
    authority: TicketAuthority | None,
    lifetime_s: int,
    now_ns: int,
    source: str,
    ephemeral: X25519PrivateKey,
    randomness: Callable[[int], bytes],
) -> tuple[bytes, Accepted | None]:
    """The responder's processing of a ResumeHello record, with no RSA operation.

    Returns ``(reply_record, accepted)``; ``accepted`` is ``None`` when the reply is a substitute.
    Raises :class:`HandshakeFailed` (nothing is sent) for a malformed ResumeHello, or one whose
    binder verified but which the replay guard refuses.
    """
    hello = wire.parse_resume_hello_untrusted(record[wire.HEADER_SIZE :])
    unfinished = _reply_unfinished(ephemeral.public_key().public_bytes_raw())
    accepted = None
    early = _verified_early_secret(
        hello,
        record,
        responder=responder,
        psk=psk,
        authority=authority,
        lifetime_s=lifetime_s,
        now_ns=now_ns,
    )
    if early is not None:
        contents, early_secret = early
        admission = guard.admit_hello(
            hello.binder, hello.timestamp_s * wire.NS_PER_S, now_ns, source
        )
        if admission is Admission.REFUSED:
            raise HandshakeFailed()
        assert authority is not None
        accepted = _accept(
            hello,
            record,
            unfinished=unfinished,
            responder=responder,
            early=early_secret,
            contents=contents,
            authority=authority,
            now_ns=now_ns,
            policy=policy,
            guard=guard,
            ephemeral=ephemeral,
        )
    if accepted is None:
        # A substitute: a fresh e_R and a random Finished, the length of a genuine reply.
        return unfinished + randomness(wire.MAC_SIZE), None
    return accepted.reply_record, accepted


def _verified_early_secret(
    hello: wire.ResumeHello,
    record: bytes,
    *,
    responder: PeerId,
    psk: bytes,
    authority: TicketAuthority | None,
    lifetime_s: int,
    now_ns: int,
) -> tuple[TicketContents, bytes] | None:
    """Open the ticket and check the binder: ``(contents, resume_early)`` or ``None``."""
    if authority is None:
        return None
    contents = authority.open_untrusted(
        psk, responder, hello.ticket, now_s=now_ns // wire.NS_PER_S, lifetime_s=lifetime_s
    )
    if contents is None:
        return None
    early = ks.resume_early_secret(psk, contents.ticket_psk)
    expected = ks.mac(ks.resume_binder_key(early, responder.digest), record[: -wire.MAC_SIZE])
    if not hmac.compare_digest(expected, hello.binder):
        return None
    return contents, early


@functools.lru_cache(maxsize=_INITIATOR_RECORDS_KEPT)
def _initiator_record(public_key_der: bytes) -> PeerRecord:
    """The record of a ticket's initiator (its key parsed once: records are immutable)."""
    return PeerRecord.from_public_key(public_key_der)


def _accept(
    hello: wire.ResumeHello,
    record: bytes,
    *,
    unfinished: bytes,
    responder: PeerId,
    early: bytes,
    contents: TicketContents,
    authority: TicketAuthority,
    now_ns: int,
    policy: TrustPolicy,
    guard: TimestampGuard,
    ephemeral: X25519PrivateKey,
) -> Accepted | None:
    """The checks after the binder; the genuine reply's state, or ``None`` for a substitute."""
    prefix = record[: -(wire.MAC_SIZE + wire.SEALED_TIMESTAMP_SIZE)]
    try:
        opened = AESGCM(ks.resume_hello_key(early, ks.transcript_hash(prefix))).decrypt(
            _ZERO_NONCE, hello.sealed_timestamp, prefix
        )
    except InvalidTag:
        return None
    (timestamp_ns,) = wire.TIMESTAMP.unpack(opened)
    if timestamp_ns // wire.NS_PER_S != hello.timestamp_s:
        return None
    try:
        initiator = _initiator_record(contents.initiator_der)
    except ValueError:
        return None
    if not authority.use(contents, initiator.peer_id, hello.binder, now_s=now_ns // wire.NS_PER_S):
        return None  # used by another ResumeHello, or issued at or before the initiator's floor
    shared = shared_or_none(ephemeral, hello.ephemeral)
    if shared is None:
        return None
    handshake = ks.handshake_secret(early, shared)
    reply = unfinished + responder_finished(
        handshake, reply_transcript(record, unfinished, initiator.peer_id, responder)
    )
    # Trust and freshness do not change the reply; they are enforced at the Finish.
    authorized = policy.is_trusted(initiator) and guard.is_fresh(initiator.peer_id, timestamp_ns)
    return Accepted(initiator, timestamp_ns, ks.resume_master_secret(handshake), reply, authorized)
