"""A reference implementation of the handshake and key schedule of ``protocol/SPEC.md`` (sections
3 and 4), for the vectors.

Written from the specification text with ``hashlib``, ``hmac`` and the ``cryptography``
primitives only: it imports nothing from p2ptls (its OAEP is :mod:`protocol.fixed_oaep`), so that
``handshake.json`` and ``key_schedule.json`` say what the *specification* requires.
:func:`reference_handshake` computes every flight from the fixed inputs of
:mod:`protocol.vector_inputs` and records each key-schedule step (:class:`Schedule`) as it goes;
:func:`reference_hello` and :func:`reference_substitute` build the variants the responder cases
need. The record layer, the replay rule and reassembly accounting are in
:mod:`protocol.record_reference`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from protocol.fixed_oaep import eme_oaep_encode, rsaep
from protocol.vector_inputs import (
    EPHEMERAL_INITIATOR,
    EPHEMERAL_RESPONDER,
    K_INITIATOR,
    K_RESPONDER,
    PSK,
    RFC7748_SHARED,
    SEED_HELLO,
    SEED_REPLY,
    SUBSTITUTE_FINISHED,
    SUBSTITUTE_SEALED,
    TIMESTAMP_NS,
    TIMESTAMP_S,
    Json,
)

# --- protocol constants, as SPEC.md states them (deliberately not imported from p2ptls) ---------

VERSION = 0x02
SUITE = 0x01
HANDSHAKE, DATA, MESSAGE_START, MESSAGE_CONTINUE = 0x16, 0x17, 0x18, 0x19
CLOSE, PING, PONG, KEY_UPDATE = 0x1A, 0x1B, 0x1C, 0x1D
TYPE_NAMES = {
    HANDSHAKE: "HANDSHAKE",
    DATA: "DATA",
    MESSAGE_START: "MESSAGE_START",
    MESSAGE_CONTINUE: "MESSAGE_CONTINUE",
    CLOSE: "CLOSE",
    PING: "PING",
    PONG: "PONG",
    KEY_UPDATE: "KEY_UPDATE",
}
HELLO, REPLY, FINISH = 0x01, 0x02, 0x03
LABEL_PREFIX = b"p2ptls1 "
HELLO_OAEP_LABEL = b"p2ptls1 hello"
REPLY_OAEP_LABEL = b"p2ptls1 reply"
TAG_SIZE = 16


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.digest(salt, ikm, "sha256")


def label_info(label: str, context: bytes, length: int) -> bytes:
    """HkdfLabel: u16 length | u8 len | "p2ptls1 " + label | u8 len | context."""
    full = LABEL_PREFIX + label.encode("ascii")
    return length.to_bytes(2, "big") + bytes([len(full)]) + full + bytes([len(context)]) + context


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    output, block, counter = b"", b"", 1
    while len(output) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), "sha256")
        output += block
        counter += 1
    return output[:length]


def expand_label(secret: bytes, label: str, context: bytes, length: int) -> bytes:
    return hkdf_expand(secret, label_info(label, context, length), length)


def sha256(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


def header(content_type: int, length: int) -> bytes:
    return bytes([content_type, VERSION]) + length.to_bytes(2, "big")


def u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


@dataclass
class Schedule:
    """Records every key-schedule step as it is computed."""

    steps: list[Json] = field(default_factory=list)
    values: dict[str, bytes] = field(default_factory=dict)

    def extract(self, name: str, salt_name: str, salt: bytes, ikm_name: str, ikm: bytes) -> bytes:
        out = hkdf_extract(salt, ikm)
        self.steps.append(
            {
                "name": name,
                "function": "HKDF-Extract",
                "salt": salt_name,
                "ikm": ikm_name,
                "output": out.hex(),
            }
        )
        self.values[name] = out
        return out

    def expand(
        self,
        name: str,
        secret_name: str,
        label: str,
        context_name: str,
        context: bytes,
        *,
        length: int = 32,
    ) -> bytes:
        secret = self.values[secret_name]
        out = expand_label(secret, label, context, length)
        self.steps.append(
            {
                "name": name,
                "function": "HKDF-Expand-Label",
                "secret": secret_name,
                "label": (LABEL_PREFIX + label.encode("ascii")).decode("ascii"),
                "context": context_name,
                "length": length,
                "info": label_info(label, context, length).hex(),
                "output": out.hex(),
            }
        )
        self.values[name] = out
        return out

    def value(self, name: str, data: bytes, how: str) -> bytes:
        self.steps.append({"name": name, "function": how, "output": data.hex()})
        self.values[name] = data
        return data


class Member(Protocol):
    """What the reference needs of a network member: its key and the peer id derived from it."""

    @property
    def der(self) -> bytes: ...

    @property
    def peer_id(self) -> bytes: ...

    @property
    def public_key(self) -> rsa.RSAPublicKey: ...


def _fields(parts: Sequence[tuple[str, bytes]]) -> list[Json]:
    out, offset = [], 0
    for name, data in parts:
        out.append({"name": name, "offset": offset, "length": len(data), "hex": data.hex()})
        offset += len(data)
    return out


@dataclass
class ReferenceHello:
    """A Hello built from SPEC.md section 3.1."""

    parts: list[tuple[str, bytes]]
    aad: bytes
    hello_key: bytes
    sealed_pk: bytes
    covered: bytes
    binder: bytes

    @property
    def record(self) -> bytes:
        return b"".join(d for _, d in self.parts)


def reference_hello(
    initiator: Member,
    *,
    timestamp_s: int,
    e_i_pub: bytes,
    c_i: bytes,
    early_secret: bytes,
    binder_key: bytes,
) -> ReferenceHello:
    ts = timestamp_s.to_bytes(8, "big")
    aad = bytes([HELLO, SUITE]) + ts + e_i_pub + c_i
    hello_key = expand_label(early_secret, "hello key", sha256(aad), 32)
    sealed_pk = AESGCM(hello_key).encrypt(bytes(12), initiator.der, aad)
    unbound = [
        ("msg_type", bytes([HELLO])),
        ("suite", bytes([SUITE])),
        ("timestamp_s", ts),
        ("initiator_ephemeral", e_i_pub),
        ("sealed_secret_length", u16(len(c_i))),
        ("sealed_secret", c_i),
        ("sealed_public_key_length", u16(len(sealed_pk))),
        ("sealed_public_key", sealed_pk),
    ]
    body_len = sum(len(d) for _, d in unbound) + 32
    covered = header(HANDSHAKE, body_len) + b"".join(d for _, d in unbound)
    binder = hmac.digest(binder_key, covered, "sha256")
    parts = [("record_header", header(HANDSHAKE, body_len)), *unbound, ("binder", binder)]
    return ReferenceHello(parts, aad, hello_key, sealed_pk, covered, binder)


def reference_reply_prefix(e_r_pub: bytes, sealed_length: int) -> list[tuple[str, bytes]]:
    """The Reply record up to its sealed C_R (SPEC.md section 3.2): the AAD of that seal."""
    length = 1 + 32 + 2 + sealed_length + 32
    return [
        ("record_header", header(HANDSHAKE, length)),
        ("msg_type", bytes([REPLY])),
        ("responder_ephemeral", e_r_pub),
        ("sealed_c_r_length", u16(sealed_length)),
    ]


def reference_substitute(e_r_pub: bytes, modulus_bytes: int) -> bytes:
    """A substitute Reply: the genuine layout, random bytes for the sealed C_R and finished_R."""
    sealed = SUBSTITUTE_SEALED[: modulus_bytes + TAG_SIZE]
    prefix = b"".join(d for _, d in reference_reply_prefix(e_r_pub, len(sealed)))
    return prefix + sealed + SUBSTITUTE_FINISHED


@dataclass
class ReferenceHandshake:
    """The handshake computed from the specification alone."""

    schedule: Schedule
    oaep: Json
    hello_fields: list[Json]
    reply_fields: list[Json]
    finish_fields: list[Json]
    hello: bytes
    reply: bytes
    finish: bytes
    sealed_key: Json
    binder: Json
    sealed_c_r: Json


def reference_handshake(initiator: Member, responder: Member) -> ReferenceHandshake:
    s = Schedule()
    e_i = X25519PrivateKey.from_private_bytes(EPHEMERAL_INITIATOR)
    e_r = X25519PrivateKey.from_private_bytes(EPHEMERAL_RESPONDER)
    e_i_pub = e_i.public_key().public_bytes_raw()
    e_r_pub = e_r.public_key().public_bytes_raw()
    shared = e_i.exchange(X25519PublicKey.from_public_bytes(e_r_pub))
    if shared != RFC7748_SHARED:
        raise SystemExit("X25519 does not reproduce RFC 7748 section 6.1")

    # OAEP: C_I = OAEP(responder, id_I | k_I | ts_ns), C_R = OAEP(initiator, k_R)
    hello_secret = initiator.peer_id + K_INITIATOR + TIMESTAMP_NS.to_bytes(8, "big")
    k = (responder.public_key.key_size + 7) // 8
    em_i = eme_oaep_encode(hello_secret, HELLO_OAEP_LABEL, SEED_HELLO, k)
    c_i = rsaep(responder.public_key, em_i)
    k = (initiator.public_key.key_size + 7) // 8
    em_r = eme_oaep_encode(K_RESPONDER, REPLY_OAEP_LABEL, SEED_REPLY, k)
    c_r = rsaep(initiator.public_key, em_r)
    oaep = {
        "hash": "SHA-256",
        "mgf": "MGF1-SHA-256",
        "hello": {
            "recipient": "responder",
            "label": HELLO_OAEP_LABEL.decode(),
            "plaintext": hello_secret.hex(),
            "plaintext_layout": "initiator id (32) | k_I (32) | timestamp_ns (u64)",
            "seed": SEED_HELLO.hex(),
            "encoded_message": em_i.hex(),
            "ciphertext": c_i.hex(),
        },
        "reply": {
            "recipient": "initiator",
            "label": REPLY_OAEP_LABEL.decode(),
            "plaintext": K_RESPONDER.hex(),
            "plaintext_layout": "k_R (32)",
            "seed": SEED_REPLY.hex(),
            "encoded_message": em_r.hex(),
            "ciphertext": c_r.hex(),
        },
    }

    s.value("psk", PSK, "input")
    s.extract("psk_secret", "zeros(32)", bytes(32), "psk", PSK)
    s.value("responder_id", responder.peer_id, "input: the responder's peer id")
    s.expand("binder_key", "psk_secret", "binder", "responder_id", responder.peer_id)
    s.expand("derived_psk", "psk_secret", "derived", "empty", b"")
    s.value("k_I", K_INITIATOR, "input")
    s.extract("early_secret", "derived_psk", s.values["derived_psk"], "k_I", K_INITIATOR)

    built = reference_hello(
        initiator,
        timestamp_s=TIMESTAMP_S,
        e_i_pub=e_i_pub,
        c_i=c_i,
        early_secret=s.values["early_secret"],
        binder_key=s.values["binder_key"],
    )
    aad_hash = s.value("hello_aad_hash", sha256(built.aad), "SHA-256(sealed-key AAD)")
    hello_key = s.expand("hello_key", "early_secret", "hello key", "hello_aad_hash", aad_hash)
    if hello_key != built.hello_key:
        raise SystemExit("reference: hello_key computed two ways differs")
    hello = built.record

    s.value("x25519_shared", shared, "X25519(e_I, e_R)")
    s.expand("derived_early", "early_secret", "derived", "empty", b"")
    s.extract(
        "handshake_secret", "derived_early", s.values["derived_early"], "x25519_shared", shared
    )
    s.expand("reply_key", "handshake_secret", "reply key", "empty", b"")
    reply_parts = reference_reply_prefix(e_r_pub, len(c_r) + TAG_SIZE)
    sealed_aad = b"".join(d for _, d in reply_parts)
    sealed_c_r = AESGCM(s.values["reply_key"]).encrypt(bytes(12), c_r, sealed_aad)
    reply_parts.append(("sealed_c_r", sealed_c_r))
    reply_prefix = b"".join(d for _, d in reply_parts)
    ids = initiator.peer_id + responder.peer_id
    s.value("reply_transcript_hash", sha256(hello, reply_prefix, ids), "SHA-256(...)")
    s.expand("r_finished_key", "handshake_secret", "r finished", "empty", b"")
    r_mac = hmac.digest(s.values["r_finished_key"], s.values["reply_transcript_hash"], "sha256")
    s.value("r_finished", r_mac, "HMAC-SHA256(r_finished_key, reply_transcript_hash)")
    reply_parts.append(("finished", r_mac))
    reply = b"".join(d for _, d in reply_parts)

    s.value("k_R", K_RESPONDER, "input")
    s.expand("derived_handshake", "handshake_secret", "derived", "empty", b"")
    derived_hs = s.values["derived_handshake"]
    s.extract("master_secret", "derived_handshake", derived_hs, "k_R", K_RESPONDER)
    full = s.value("full_transcript_hash", sha256(hello, reply, ids), "SHA-256(...)")
    s.expand("i_finished_key", "master_secret", "i finished", "empty", b"")
    i_mac = hmac.digest(s.values["i_finished_key"], full, "sha256")
    s.value("i_finished", i_mac, "HMAC-SHA256(i_finished_key, full_transcript_hash)")
    finish_parts = [
        ("record_header", header(HANDSHAKE, 33)),
        ("msg_type", bytes([FINISH])),
        ("finished", i_mac),
    ]
    finish = b"".join(d for _, d in finish_parts)

    for direction in ("i2r", "r2i"):
        name = f"{direction}_traffic_secret"
        s.expand(name, "master_secret", f"{direction} traffic", "full_transcript_hash", full)
        s.expand(f"{direction}_key", name, "key", "empty", b"")
        s.expand(f"{direction}_iv", name, "iv", "empty", b"", length=12)
    s.expand("exporter_secret", "master_secret", "exporter", "full_transcript_hash", full)

    sealed_key = {
        "key": "hello_key (key_schedule.json)",
        "hello_key": hello_key.hex(),
        "nonce": bytes(12).hex(),
        "aad": built.aad.hex(),
        "aad_layout": "0x01 | suite | timestamp_s | initiator_ephemeral | sealed_secret",
        "plaintext": initiator.der.hex(),
        "ciphertext": built.sealed_pk.hex(),
    }
    binder_json = {
        "key": s.values["binder_key"].hex(),
        "covered": built.covered.hex(),
        "covered_layout": "record header (with the final length) | Hello body without binder",
        "key_context": "the responder's full peer id (binder_key in key_schedule.json)",
        "binder": built.binder.hex(),
    }
    sealed_c_r_json = {
        "key": "reply_key (key_schedule.json)",
        "reply_key": s.values["reply_key"].hex(),
        "nonce": bytes(12).hex(),
        "aad": sealed_aad.hex(),
        "aad_layout": "record header | 0x02 | responder_ephemeral | sealed_c_r_length",
        "plaintext": c_r.hex(),
        "plaintext_layout": "C_R (oaep.reply.ciphertext)",
        "ciphertext": sealed_c_r.hex(),
    }
    return ReferenceHandshake(
        s,
        oaep,
        _fields(built.parts),
        _fields(reply_parts),
        _fields(finish_parts),
        hello,
        reply,
        finish,
        sealed_key,
        binder_json,
        sealed_c_r_json,
    )


# --- resumption (SPEC.md section 3.6) -----------------------------------------------------------

RESUME_HELLO, RESUME_REPLY = 0x04, 0x05
TICKET = 0x1E


@dataclass
class ReferenceResumption:
    """A ticket and a resumed handshake computed from SPEC.md section 3.6 alone."""

    schedule: Schedule
    ticket_payload: bytes
    ticket_fields: list[Json]
    ticket_plaintext: bytes
    ticket: bytes
    hello_fields: list[Json]
    reply_fields: list[Json]
    hello: bytes
    reply: bytes
    finish: bytes
    substitute_reply: bytes


def reference_resumption(
    initiator: Member,
    responder: Member,
    *,
    psk: bytes,
    master_secret: bytes,
    full_transcript_hash: bytes,
    ticket_nonce: bytes,
    ticket_root: bytes,
    ticket_aead_nonce: bytes,
    issued_at_s: int,
    lifetime_s: int,
    timestamp_ns: int,
    e_i_private: bytes,
    e_r_private: bytes,
    substitute_finished: bytes,
) -> ReferenceResumption:
    """Issue a ticket after the session of ``master_secret``, then resume with it."""
    s = Schedule()
    s.value("master_secret", master_secret, "input: the full handshake's master_secret")
    s.value("full_transcript_hash", full_transcript_hash, "input: the full handshake's TH_full")
    s.expand(
        "resumption_secret", "master_secret", "resumption", "full_transcript_hash",
        full_transcript_hash,
    )  # fmt: skip
    s.value("ticket_nonce", ticket_nonce, "input")
    ticket_psk = s.expand("ticket_psk", "resumption_secret", "ticket", "ticket_nonce", ticket_nonce)

    # The ticket: key_epoch | nonce | AES-GCM(ticket_key(epoch), nonce, aad = key_epoch, ...).
    s.value("psk", psk, "input")
    s.extract("psk_secret", "zeros(32)", bytes(32), "psk", psk)
    s.value("ticket_root", ticket_root, "input")
    s.extract("ticket_root_prk", "psk_secret", s.values["psk_secret"], "ticket_root", ticket_root)
    epoch = (issued_at_s // lifetime_s).to_bytes(4, "big")
    s.value("key_epoch", epoch, "floor(issued_at_s / lifetime_s), u32")
    ticket_key = s.expand("ticket_key", "ticket_root_prk", "ticket key", "key_epoch", epoch)
    plaintext = (
        responder.peer_id
        + issued_at_s.to_bytes(8, "big")
        + lifetime_s.to_bytes(4, "big")
        + ticket_psk
        + initiator.der
    )
    ticket = (
        epoch + ticket_aead_nonce + AESGCM(ticket_key).encrypt(ticket_aead_nonce, plaintext, epoch)
    )
    ticket_fields = [
        ("key_epoch", epoch),
        ("nonce", ticket_aead_nonce),
        ("sealed", ticket[16:]),
    ]
    payload = lifetime_s.to_bytes(4, "big") + ticket_nonce + u16(len(ticket)) + ticket

    # The resumed handshake.
    e_i = X25519PrivateKey.from_private_bytes(e_i_private)
    e_r = X25519PrivateKey.from_private_bytes(e_r_private)
    e_i_pub = e_i.public_key().public_bytes_raw()
    e_r_pub = e_r.public_key().public_bytes_raw()
    s.expand("resumption_derived", "psk_secret", "resumption derived", "empty", b"")
    s.extract(
        "resume_early", "resumption_derived", s.values["resumption_derived"], "ticket_psk",
        ticket_psk,
    )  # fmt: skip
    s.value("responder_id", responder.peer_id, "input: the responder's peer id")
    s.expand(
        "resume_binder_key", "resume_early", "resume binder", "responder_id", responder.peer_id
    )
    timestamp_s = timestamp_ns // 10**9
    body_length = 1 + 1 + 8 + 32 + 2 + len(ticket) + 24 + 32
    prefix_parts = [
        ("record_header", header(HANDSHAKE, body_length)),
        ("msg_type", bytes([RESUME_HELLO])),
        ("suite", bytes([SUITE])),
        ("timestamp_s", timestamp_s.to_bytes(8, "big")),
        ("initiator_ephemeral", e_i_pub),
        ("ticket_length", u16(len(ticket))),
        ("ticket", ticket),
    ]
    prefix = b"".join(d for _, d in prefix_parts)
    prefix_hash = s.value("resume_prefix_hash", sha256(prefix), "SHA-256(ResumeHello prefix)")
    resume_hello_key = s.expand(
        "resume_hello_key", "resume_early", "resume hello key", "resume_prefix_hash", prefix_hash
    )
    sealed_ts = AESGCM(resume_hello_key).encrypt(bytes(12), timestamp_ns.to_bytes(8, "big"), prefix)
    binder = hmac.digest(s.values["resume_binder_key"], prefix + sealed_ts, "sha256")
    hello_parts = [*prefix_parts, ("sealed_timestamp", sealed_ts), ("binder", binder)]
    hello = b"".join(d for _, d in hello_parts)

    shared = e_i.exchange(X25519PublicKey.from_public_bytes(e_r_pub))
    s.value("x25519_shared", shared, "X25519(e_I, e_R)")
    s.expand("derived_early", "resume_early", "derived", "empty", b"")
    s.extract(
        "handshake_secret", "derived_early", s.values["derived_early"], "x25519_shared", shared
    )
    reply_prefix = header(HANDSHAKE, 65) + bytes([RESUME_REPLY]) + e_r_pub
    ids = initiator.peer_id + responder.peer_id
    s.value("reply_transcript_hash", sha256(hello, reply_prefix, ids), "SHA-256(...)")
    s.expand("r_finished_key", "handshake_secret", "r finished", "empty", b"")
    r_mac = hmac.digest(s.values["r_finished_key"], s.values["reply_transcript_hash"], "sha256")
    reply_parts = [
        ("record_header", header(HANDSHAKE, 65)),
        ("msg_type", bytes([RESUME_REPLY])),
        ("responder_ephemeral", e_r_pub),
        ("finished", r_mac),
    ]
    reply = b"".join(d for _, d in reply_parts)
    s.expand("derived_handshake", "handshake_secret", "derived", "empty", b"")
    s.extract(
        "resumed_master_secret", "derived_handshake", s.values["derived_handshake"], "zeros(32)",
        bytes(32),
    )  # fmt: skip
    full = s.value("resumed_full_transcript_hash", sha256(hello, reply, ids), "SHA-256(...)")
    s.expand("i_finished_key", "resumed_master_secret", "i finished", "empty", b"")
    i_mac = hmac.digest(s.values["i_finished_key"], full, "sha256")
    finish = header(HANDSHAKE, 33) + bytes([FINISH]) + i_mac
    for direction in ("i2r", "r2i"):
        s.expand(
            f"{direction}_traffic_secret", "resumed_master_secret", f"{direction} traffic",
            "resumed_full_transcript_hash", full,
        )  # fmt: skip
    s.expand(
        "resumed_exporter_secret", "resumed_master_secret", "exporter",
        "resumed_full_transcript_hash", full,
    )  # fmt: skip
    s.expand(
        "resumed_resumption_secret", "resumed_master_secret", "resumption",
        "resumed_full_transcript_hash", full,
    )  # fmt: skip
    substitute = reply_prefix + substitute_finished
    return ReferenceResumption(
        s,
        payload,
        _fields(ticket_fields),
        plaintext,
        ticket,
        _fields(hello_parts),
        _fields(reply_parts),
        hello,
        reply,
        finish,
        substitute,
    )
