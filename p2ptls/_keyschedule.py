"""The HKDF-SHA256 key schedule.

Theory of operation
-------------------
The schedule has the shape of TLS 1.3's (RFC 8446 section 7.1). Every label is prefixed
``"p2ptls1 "``. Secrets are chained by HKDF-Extract so that each later secret depends on every
earlier input::

    psk_secret     = Extract(salt=0^32, ikm=network PSK)
    binder_key     = ExpandLabel(psk_secret, "binder", id_R, 32)    (one per responder)
    early_secret   = Extract(salt=Derive(psk_secret, "derived"), ikm=k_I)
    handshake_sec  = Extract(salt=Derive(early_secret, "derived"), ikm=X25519(e_I, e_R))
    master_secret  = Extract(salt=Derive(handshake_sec, "derived"), ikm=k_R)
    resumption     = Derive(master_secret, "resumption", TH_full)

A resumed handshake (SPEC 3.6) replaces ``k_I`` and ``k_R`` by a ticket's PSK::

    ticket_psk     = ExpandLabel(resumption, "ticket", ticket_nonce, 32)
    resume_early   = Extract(salt=Derive(psk_secret, "resumption derived"), ikm=ticket_psk)
    binder         = ExpandLabel(resume_early, "resume binder", id_R, 32)
    hello key      = ExpandLabel(resume_early, "resume hello key", H(prefix), 32)
    handshake_sec  = Extract(salt=Derive(resume_early, "derived"), ikm=X25519(e_I, e_R))
    master_secret  = Extract(salt=Derive(handshake_sec, "derived"), ikm=0^32)

The binder key is bound to the responder's full peer id (as WireGuard keys its mac1 with the
responder's public key), so a Hello is only valid at the responder it was made for. The Reply's
``C_R`` travels sealed under ``reply_key = ExpandLabel(handshake_sec, "reply key")``, which only
the two true parties can derive.

``k_I`` is only known to the initiator and the holder of the responder's private key, ``k_R`` only
to the responder and the holder of the initiator's private key. The responder's Finished key comes
from ``handshake_sec`` (needs ``k_I``), the initiator's from ``master_secret`` (needs ``k_R``).
Traffic secrets are per direction (labels "i2r traffic", "r2i traffic") and bound to the
transcript hash; a key update replaces a traffic secret with ``ExpandLabel(secret, "key update")``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac

import attrs

LABEL_PREFIX = b"p2ptls1 "
HASH_SIZE = 32
KEY_SIZE = 32
IV_SIZE = 12
ZERO_SALT = bytes(HASH_SIZE)


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """RFC 5869 HKDF-Extract with SHA-256."""
    return hmac.digest(salt, ikm, "sha256")


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF-Expand with SHA-256."""
    if length <= HASH_SIZE:  # every key, IV and secret of the schedule: one block
        return hmac.digest(prk, info + b"\x01", "sha256")[:length]
    if length > 255 * HASH_SIZE:
        raise ValueError("HKDF output too long")
    blocks: list[bytes] = []
    block = b""
    counter = 1
    while HASH_SIZE * len(blocks) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), "sha256")
        blocks.append(block)
        counter += 1
    return b"".join(blocks)[:length]


def expand_label(secret: bytes, label: str, context: bytes, length: int) -> bytes:
    """HKDF-Expand-Label: info = u16 length | u8 len | "p2ptls1 " + label | u8 len | context."""
    info = _label_prefix(label, length) + bytes([len(context)]) + context
    return hkdf_expand(secret, info, length)


@functools.lru_cache(maxsize=128)
def _label_prefix(label: str, length: int) -> bytes:
    """The constant head of an ExpandLabel info: u16 length | u8 len | "p2ptls1 " + label."""
    full_label = LABEL_PREFIX + label.encode("ascii")
    return length.to_bytes(2, "big") + bytes([len(full_label)]) + full_label


def derive_secret(secret: bytes, label: str, transcript_hash: bytes = b"") -> bytes:
    """Derive-Secret: ExpandLabel(secret, label, transcript hash, 32)."""
    return expand_label(secret, label, transcript_hash, HASH_SIZE)


def transcript_hash(*parts: bytes) -> bytes:
    """SHA-256 over the concatenated parts."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.digest()


def mac(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256."""
    return hmac.digest(key, data, "sha256")


@attrs.frozen(repr=False)
class TrafficKeys:
    """An AES-256-GCM key and the 12-byte IV its nonces are derived from."""

    key: bytes
    iv: bytes

    def __repr__(self) -> str:
        return "TrafficKeys(<secret>)"


def traffic_keys(secret: bytes) -> TrafficKeys:
    """Key and IV for one direction from its traffic secret."""
    return TrafficKeys(
        key=expand_label(secret, "key", b"", KEY_SIZE), iv=expand_label(secret, "iv", b"", IV_SIZE)
    )


def next_traffic_secret(secret: bytes) -> bytes:
    """The traffic secret after a key update."""
    return expand_label(secret, "key update", b"", HASH_SIZE)


def psk_secret(psk: bytes) -> bytes:
    return hkdf_extract(ZERO_SALT, psk)


def binder_key(psk: bytes, responder_id: bytes) -> bytes:
    """The key of the binders of Hellos addressed to ``responder_id`` (its full 32-byte id)."""
    return expand_label(psk_secret(psk), "binder", responder_id, HASH_SIZE)


def early_secret(psk: bytes, k_initiator: bytes) -> bytes:
    return hkdf_extract(derive_secret(psk_secret(psk), "derived"), k_initiator)


def hello_key(early: bytes, hello_prefix_hash: bytes) -> bytes:
    """The one-use key that seals the initiator's public key inside the Hello."""
    return expand_label(early, "hello key", hello_prefix_hash, KEY_SIZE)


def handshake_secret(early: bytes, shared_secret: bytes) -> bytes:
    return hkdf_extract(derive_secret(early, "derived"), shared_secret)


def reply_key(handshake: bytes) -> bytes:
    """The one-use key that seals ``C_R`` inside the Reply."""
    return expand_label(handshake, "reply key", b"", KEY_SIZE)


def master_secret(handshake: bytes, k_responder: bytes) -> bytes:
    return hkdf_extract(derive_secret(handshake, "derived"), k_responder)


@attrs.frozen(repr=False)
class SessionSecrets:
    """What a completed handshake yields: one traffic secret per direction, an exporter and the
    resumption secret (the root of the tickets issued on the session)."""

    initiator_to_responder: bytes
    responder_to_initiator: bytes
    exporter: bytes
    resumption: bytes

    def __repr__(self) -> str:
        return "SessionSecrets(<secret>)"


def session_secrets(master: bytes, full_transcript_hash: bytes) -> SessionSecrets:
    return SessionSecrets(
        initiator_to_responder=derive_secret(master, "i2r traffic", full_transcript_hash),
        responder_to_initiator=derive_secret(master, "r2i traffic", full_transcript_hash),
        exporter=derive_secret(master, "exporter", full_transcript_hash),
        resumption=derive_secret(master, "resumption", full_transcript_hash),
    )


def ticket_psk(resumption: bytes, ticket_nonce: bytes) -> bytes:
    """The PSK of one ticket, from the session's resumption secret and the ticket's nonce."""
    return expand_label(resumption, "ticket", ticket_nonce, HASH_SIZE)


def resume_early_secret(psk: bytes, ticket_psk_value: bytes) -> bytes:
    """The early secret of a resumed handshake: the ticket's PSK under the network key."""
    return hkdf_extract(derive_secret(psk_secret(psk), "resumption derived"), ticket_psk_value)


def resume_binder_key(resume_early: bytes, responder_id: bytes) -> bytes:
    return expand_label(resume_early, "resume binder", responder_id, HASH_SIZE)


def resume_hello_key(resume_early: bytes, prefix_hash: bytes) -> bytes:
    """The one-use key that seals the precise timestamp inside a ResumeHello."""
    return expand_label(resume_early, "resume hello key", prefix_hash, KEY_SIZE)


def resume_master_secret(handshake: bytes) -> bytes:
    return master_secret(handshake, ZERO_SALT)


def ticket_key(psk: bytes, ticket_root: bytes, epoch: int) -> bytes:
    """The key sealing the tickets a responder issues in ``epoch``."""
    return expand_label(
        hkdf_extract(psk_secret(psk), ticket_root), "ticket key", epoch.to_bytes(4, "big"), KEY_SIZE
    )


def export_keying_material(exporter: bytes, label: str, context: bytes, length: int) -> bytes:
    """Keying material for another protocol (SLLP) bound to this session."""
    return expand_label(
        derive_secret(exporter, label), "exporter", transcript_hash(context), length
    )
