"""Generate the p2ptls known-answer vectors in ``protocol/vectors/*.json``.

Run from the repository root::

    .venv/bin/python -m protocol.generate_vectors          # (re)write the JSON files
    .venv/bin/python -m protocol.generate_vectors --check  # exit 1 if the files are stale

Every value is computed twice: once by a small *reference* implementation written from
``protocol/SPEC.md`` using only ``hashlib``, ``hmac`` and the ``cryptography`` primitives (this
module), and once by p2ptls itself (``InitiatorHandshake``/``ResponderHandshake``, ``Connection``,
``ReplayGuard``, ``Reassembler``), including the Hellos a responder must refuse or answer with a
substitute Reply. The generator refuses to write anything if the two disagree, so the vectors pin
the code *and* the specification.

Inputs are fixed: RSA-2048 keys (generated once, then read back from ``handshake.json``; delete
that file's ``inputs`` to make new ones), a PSK, the X25519 keys of RFC 7748 section 6.1, ``k_I``,
``k_R``, a timestamp (the responder's clock ``now_ns`` equals it) and the two OAEP seeds. OAEP uses
:mod:`protocol.fixed_oaep` (test-only).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from p2ptls._connection import (
    Connection,
    DataReceived,
    EndOfStream,
    Event,
    HandshakeComplete,
    MessageReceived,
    PongReceived,
    PrivateKeyOperationNeeded,
)
from p2ptls._errors import HandshakeFailed, ProtocolError
from p2ptls._fragments import Reassembler, ReassemblyBudget
from p2ptls._handshake import InitiatorHandshake, ResponderHandshake
from p2ptls.config import StreamConfig
from p2ptls.identity import Identity, NetworkKey
from p2ptls.trust import Admission, KnownPeers, ReplayGuard
from protocol.fixed_oaep import OaepEncrypt, eme_oaep_encode, fixed_seed_oaep, rsaep

Json = dict[str, Any]

VECTOR_DIR = Path(__file__).resolve().parent / "vectors"
FILES = (
    "handshake.json",
    "key_schedule.json",
    "records.json",
    "fragmentation.json",
    "replay.json",
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
REPLAY_WINDOW_NS = 600 * 10**9  # how far behind the responder's clock a Hello may be
MAX_FUTURE_SKEW_NS = 60 * 10**9  # how far ahead of it
MAX_RECENT_HELLOS = 65536  # binders remembered
MAX_RECENT_PER_SOURCE = 4096  # of which one source (IPv4 address, IPv6 /64) may hold
MIN_NONFINAL_FRAGMENT = 252
FRAGMENT_OVERHEAD = 64
INLINE_RECORD_LIMIT = 1024  # larger records appear as SHA-256 in records.json, in full elsewhere

# --- fixed inputs -----------------------------------------------------------------------------


def _fixed(name: str) -> bytes:
    """32 reproducible bytes: SHA-256("p2ptls1 test vector " + name)."""
    return hashlib.sha256(b"p2ptls1 test vector " + name.encode("ascii")).digest()


PSK = _fixed("psk")
K_INITIATOR = _fixed("k_I")
K_RESPONDER = _fixed("k_R")
SEED_HELLO = _fixed("oaep seed hello")
SEED_REPLY = _fixed("oaep seed reply")
TIMESTAMP_NS = 1_767_225_600_123_456_789  # 2026-01-01T00:00:00.123456789Z
TIMESTAMP_S = TIMESTAMP_NS // 10**9  # what travels in the clear
COARSE_NS = TIMESTAMP_S * 10**9  # the clear timestamp, as the window check sees it
NOW_NS = TIMESTAMP_NS  # the responder's clock when the Hello arrives
OTHER_PSK = _fixed("other psk")
OTHER_RESPONDER_ID = _fixed("other responder id")  # a member the Hello was not made for
# The responder's randomness for a substitute Reply: e_R, then the sealed C_R (k' + 16) and
# finished_R (32) as random bytes.
SUBSTITUTE_SEALED = hashlib.sha256(b"p2ptls1 test vector substitute").digest() * 9
SUBSTITUTE_FINISHED = _fixed("substitute finished")
# RFC 7748 section 6.1: Alice is the initiator's ephemeral, Bob the responder's.
EPHEMERAL_INITIATOR = bytes.fromhex(
    "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
)
EPHEMERAL_RESPONDER = bytes.fromhex(
    "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
)
RFC7748_SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
PING_INITIATOR = bytes(range(8))
PING_RESPONDER = bytes(range(8, 16))
MESSAGE_LENGTH = 40_000
RECORD_SIZE = 16_384
INITIATOR_KEY_UPDATE_AFTER = 2
EXPORTER_LABEL = "example"
EXPORTER_CONTEXT = b"p2ptls vector context"
EXPORTER_LENGTH = 32


def fragment_message() -> bytes:
    """The fragmented message: byte ``i`` is ``i mod 251``."""
    return bytes(i % 251 for i in range(MESSAGE_LENGTH))


# --- reference implementation of SPEC.md ------------------------------------------------------


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


@dataclass
class Party:
    identity: Identity
    pem: str

    @property
    def der(self) -> bytes:
        return self.identity.record.public_key_der

    @property
    def peer_id(self) -> bytes:
        return self.identity.peer_id.digest

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.identity.record.public_key


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
    initiator: Party,
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


def reference_oaep(recipient: Party, message: bytes, label: bytes, seed: bytes) -> bytes:
    k = (recipient.public_key.key_size + 7) // 8
    return rsaep(recipient.public_key, eme_oaep_encode(message, label, seed, k))


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


def reference_handshake(initiator: Party, responder: Party) -> ReferenceHandshake:
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


class ReferenceSealer:
    """The record layer of SPEC.md: nonce = IV xor sequence, header as AAD."""

    def __init__(self, secret: bytes) -> None:
        self.generation = -1
        self.generations: list[Json] = []
        self._install(secret)

    def _install(self, secret: bytes) -> None:
        self.secret = secret
        self.key = expand_label(secret, "key", b"", 32)
        self.iv = expand_label(secret, "iv", b"", 12)
        self.sequence = 0
        self.generation += 1
        self.generations.append(
            {
                "generation": self.generation,
                "traffic_secret": secret.hex(),
                "key": self.key.hex(),
                "iv": self.iv.hex(),
            }
        )

    def seal(self, content_type: int, plaintext: bytes) -> tuple[bytes, Json]:
        nonce = (int.from_bytes(self.iv, "big") ^ self.sequence).to_bytes(12, "big")
        head = header(content_type, len(plaintext) + TAG_SIZE)
        record = head + AESGCM(self.key).encrypt(nonce, plaintext, head)
        info: Json = {
            "generation": self.generation,
            "sequence": self.sequence,
            "content_type": content_type,
            "content_type_name": TYPE_NAMES[content_type],
            "nonce": nonce.hex(),
        }
        if len(record) > INLINE_RECORD_LIMIT:
            info["plaintext_length"] = len(plaintext)
            info["plaintext_head"] = plaintext[:16].hex()
            info["plaintext_sha256"] = sha256(plaintext).hex()
            info["record_length"] = len(record)
            info["record_sha256"] = sha256(record).hex()
        else:
            info["plaintext"] = plaintext.hex()
            info["record"] = record.hex()
        self.sequence += 1
        if content_type == KEY_UPDATE:
            self._install(expand_label(self.secret, "key update", b"", 32))
        return record, info


class ReferenceReplayCache:
    """The Hello admission rule of SPEC.md section 3.5, for Hellos whose binder verified."""

    def __init__(
        self,
        window_ns: int,
        capacity: int,
        per_source: int,
        future_ns: int = MAX_FUTURE_SKEW_NS,
    ) -> None:
        self.window_ns = window_ns
        self.future_ns = future_ns
        self.capacity = capacity
        self.per_source = per_source
        self.entries: list[tuple[bytes, int, str]] = []  # (binder, timestamp, source), arrivals
        self.floors: dict[str, int] = {}  # only for sources holding entries

    def held(self, source: str) -> int:
        return sum(1 for _, _, held_by in self.entries if held_by == source)

    def admit(self, binder: bytes, timestamp: int, now: int, source: str) -> tuple[str, str]:
        """``(outcome, reason)``; outcome "refused", "new" (decrypt C_I) or "seen" (a copy:
        answered from the remembered decryption, or decrypted again while that is pending)."""
        if timestamp < now - self.window_ns or timestamp > now + self.future_ns:
            return "refused", "outside the window"
        if timestamp <= self.floors.get(source, -1):
            return "refused", "at or below the source's floor"
        horizon = now - self.window_ns
        while self.entries and self.entries[0][1] < horizon:
            self._remove(0, horizon, raise_floor=False)
        if any(seen == binder for seen, _, _ in self.entries):
            return "seen", "binder remembered"
        sources = [held_by for _, _, held_by in self.entries]
        if sources.count(source) >= self.per_source:
            self._remove(sources.index(source), horizon, raise_floor=True)
        elif len(self.entries) >= self.capacity:
            most = max(sources.count(held_by) for held_by in sources)
            # The earliest entry of a source holding the most: that source's earliest entry, and
            # among such sources the one whose earliest entry arrived first.
            victim = next(i for i, held_by in enumerate(sources) if sources.count(held_by) == most)
            self._remove(victim, horizon, raise_floor=True)
        if timestamp <= self.floors.get(source, -1):
            return "refused", "its own earliest binder made room and raised its floor above it"
        self.entries.append((binder, timestamp, source))
        return "new", "admitted"

    def _remove(self, index: int, horizon: int, *, raise_floor: bool) -> None:
        _, timestamp, source = self.entries.pop(index)
        if self.held(source) == 0:
            self.floors.pop(source, None)
        elif raise_floor and timestamp >= horizon:
            self.floors[source] = max(self.floors.get(source, -1), timestamp)


def reference_reassembly_charges(fragment_sizes_: Sequence[int]) -> list[int]:
    """Budget in use after each fragment of one message (SPEC.md section 6): every fragment but
    the completing one is kept and charged its length plus the fixed overhead."""
    total, held, charged, out = sum(fragment_sizes_), 0, 0, []
    for size in fragment_sizes_:
        held += size
        if held == total:
            charged = 0
        else:
            if size < MIN_NONFINAL_FRAGMENT:
                raise SystemExit("reference: a conforming sender never sends this")
            charged += size + FRAGMENT_OVERHEAD
        out.append(charged)
    return out


# --- the implementation, driven with the fixed inputs ------------------------------------------


class ScriptedRandomness:
    """A ``randomness=`` hook that hands out fixed bytes in order and checks they are all used."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def __call__(self, size: int) -> bytes:
        chunk = self._data[self._pos : self._pos + size]
        if len(chunk) != size:
            raise SystemExit("the code consumed more randomness than the vectors script")
        self._pos += size
        return chunk

    @property
    def exhausted(self) -> bool:
        return self._pos == len(self._data)

    @property
    def untouched(self) -> bool:
        return self._pos == 0


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"p2ptls disagrees with the reference (SPEC.md) on: {what}")


def _oaep_hook() -> OaepEncrypt:
    return fixed_seed_oaep({HELLO_OAEP_LABEL: SEED_HELLO, REPLY_OAEP_LABEL: SEED_REPLY})


def check_handshake_classes(ref: ReferenceHandshake, initiator: Party, responder: Party) -> None:
    """Run InitiatorHandshake/ResponderHandshake with explicit ephemerals and compare."""
    psk = NetworkKey(PSK)
    hook = _oaep_hook()
    ini = InitiatorHandshake(
        initiator.identity,
        psk,
        responder.identity.record,
        timestamp_ns=TIMESTAMP_NS,
        randomness=ScriptedRandomness(K_INITIATOR),
        ephemeral=X25519PrivateKey.from_private_bytes(EPHEMERAL_INITIATOR),
        oaep_encrypt=hook,
    )
    res = ResponderHandshake(
        responder.identity,
        psk,
        KnownPeers([initiator.identity.record]),
        ReplayGuard(),
        now_ns=NOW_NS,
        randomness=ScriptedRandomness(K_RESPONDER),
        ephemeral=X25519PrivateKey.from_private_bytes(EPHEMERAL_RESPONDER),
        oaep_encrypt=hook,
    )
    _require(ini.hello_record() == ref.hello, "Hello")
    c_i = res.receive_hello_untrusted(ref.hello)
    _require(c_i is not None, "binder")
    assert c_i is not None
    reply = res.reply_untrusted(responder.identity.decrypt_untrusted(c_i, HELLO_OAEP_LABEL))
    _require(reply == ref.reply, "Reply")
    c_r = ini.receive_reply_untrusted(reply)
    finish, result_i = ini.complete_untrusted(
        initiator.identity.decrypt_untrusted(c_r, REPLY_OAEP_LABEL)
    )
    _require(finish == ref.finish, "Finish")
    result_r = res.receive_finish_untrusted(finish)
    values = ref.schedule.values
    for result in (result_i, result_r):
        _require(result.transcript_hash == values["full_transcript_hash"], "session id")
        secrets = result.secrets
        _require(secrets.initiator_to_responder == values["i2r_traffic_secret"], "i2r secret")
        _require(secrets.responder_to_initiator == values["r2i_traffic_secret"], "r2i secret")
        _require(secrets.exporter == values["exporter_secret"], "exporter secret")


# --- responder outcomes: refused Hellos and substitute Replies ---------------------------------


@dataclass
class ResponderCase:
    """One Hello a responder must refuse, answer from memory, or answer with a substitute
    (SPEC.md sections 3.4, 3.5). The expectations are the reference's; ``check_responder_case``
    runs ``Connection``.
    """

    name: str
    description: str
    hello: bytes | None  # None: the Hello of flights.hello
    hello_change: str
    psk: bytes
    trusts_initiator: bool
    now_ns: int
    admitted_before: list[tuple[bytes, int, int]]  # admit_hello(binder, ts, now) calls
    remembered: bool  # the decryption of flights.hello's C_I is remembered for its binder
    newest_for_initiator: int | None  # ReplayGuard.accept() before the Hello
    reply: str  # "none", "genuine", "refused at finish" or "substitute"
    private_key_operations: int
    randomness: str  # a key of inputs.randomness
    expected_reply: bytes | None


def responder_randomness() -> dict[str, bytes]:
    return {
        "responder": EPHEMERAL_RESPONDER + K_RESPONDER,
        "responder_substitute": EPHEMERAL_RESPONDER
        + SUBSTITUTE_SEALED[: 256 + TAG_SIZE]
        + SUBSTITUTE_FINISHED,
    }


def responder_cases(ref: ReferenceHandshake, initiator: Party, responder: Party) -> list[Json]:
    """Build the cases from the reference, run each through p2ptls, return their JSON."""
    values = ref.schedule.values
    e_r_pub = X25519PrivateKey.from_private_bytes(EPHEMERAL_RESPONDER).public_key()
    e_i_pub = X25519PrivateKey.from_private_bytes(EPHEMERAL_INITIATOR).public_key()
    c_i = bytes.fromhex(ref.oaep["hello"]["ciphertext"])
    hello_inputs: Json = {
        "c_i": c_i,
        "early_secret": values["early_secret"],
    }
    low_order = reference_hello(
        initiator,
        timestamp_s=TIMESTAMP_S,
        e_i_pub=bytes(32),
        binder_key=values["binder_key"],
        **hello_inputs,
    ).record
    moved_clock = reference_hello(
        initiator,
        timestamp_s=TIMESTAMP_S + 1,
        e_i_pub=e_i_pub.public_bytes_raw(),
        binder_key=values["binder_key"],
        **hello_inputs,
    ).record
    other_binder_key = expand_label(values["psk_secret"], "binder", OTHER_RESPONDER_ID, 32)
    misdirected = reference_hello(
        initiator,
        timestamp_s=TIMESTAMP_S,
        e_i_pub=e_i_pub.public_bytes_raw(),
        binder_key=other_binder_key,
        **hello_inputs,
    ).record
    substitute_reply = reference_substitute(e_r_pub.public_bytes_raw(), 256)
    binder = ref.hello[-32:]
    admitted = [(binder, COARSE_NS, NOW_NS)]
    base: Json = {
        "hello": None,
        "hello_change": "",
        "psk": PSK,
        "trusts_initiator": True,
        "now_ns": NOW_NS,
        "admitted_before": [],
        "remembered": False,
        "newest_for_initiator": None,
        "randomness": "responder",
    }
    refused: Json = {"reply": "none", "private_key_operations": 0, "expected_reply": None}
    genuine: Json = {"reply": "genuine", "private_key_operations": 1, "expected_reply": ref.reply}
    refused_at_finish: Json = {**genuine, "reply": "refused at finish"}
    substitute: Json = {
        "reply": "substitute",
        "private_key_operations": 1,
        "expected_reply": substitute_reply,
        "randomness": "responder_substitute",
    }
    window = REPLAY_WINDOW_NS
    specs: list[Json] = [
        {
            **refused,
            "name": "Hello too old",
            "description": "clear timestamp more than the window behind the responder's clock",
            "now_ns": COARSE_NS + window + 1,
        },
        {
            **refused,
            "name": "Hello from the future",
            "description": "clear timestamp more than the future skew ahead of the responder's "
            "clock",
            "now_ns": COARSE_NS - MAX_FUTURE_SKEW_NS - 1,
        },
        {
            **genuine,
            "name": "window edge",
            "description": "clear timestamp exactly the window behind: still admitted",
            "now_ns": COARSE_NS + window,
        },
        {
            **genuine,
            "name": "copy, decryption remembered",
            "description": "a copy of a Hello already admitted and decrypted (a replay, or a copy "
            "raced in ahead of the genuine one): answered from the remembered decryption with no "
            "private-key operation; only the true initiator can finish",
            "admitted_before": admitted,
            "remembered": True,
            "private_key_operations": 0,
        },
        {
            **genuine,
            "name": "copy, decryption pending",
            "description": "a copy of a Hello admitted but whose decryption has not finished: "
            "decrypted again (an I/O layer shares one operation between identical requests)",
            "admitted_before": admitted,
        },
        {
            **refused_at_finish,
            "name": "copy of a completed Hello",
            "description": "a replay after the original completed: answered from memory, "
            "refused at the Finish (the initiator's timestamp is not fresh)",
            "admitted_before": admitted,
            "remembered": True,
            "newest_for_initiator": TIMESTAMP_NS,
            "private_key_operations": 0,
        },
        {
            **substitute,
            "name": "wrong network key",
            "description": "the responder's PSK differs: the binder fails, no private-key work, "
            "a substitute Reply",
            "psk": OTHER_PSK,
            "private_key_operations": 0,
        },
        {
            **substitute,
            "name": "made for another responder",
            "description": "a Hello whose binder is keyed with another member's id (a capture "
            "replayed to the wrong member): the binder fails, no private-key work",
            "hello": misdirected,
            "hello_change": "binder keyed with responder id SHA-256('p2ptls1 test vector other "
            "responder id')",
            "private_key_operations": 0,
        },
        {
            **refused_at_finish,
            "name": "untrusted initiator",
            "description": "the trust policy refuses the initiator",
            "trusts_initiator": False,
        },
        {
            **refused_at_finish,
            "name": "stale timestamp",
            "description": "the initiator's last accepted timestamp is not older",
            "newest_for_initiator": TIMESTAMP_NS,
        },
        {
            **substitute,
            "name": "low-order X25519 key",
            "description": "e_I is the all-zero point (valid binder)",
            "hello": low_order,
            "hello_change": "initiator_ephemeral = 0^32, sealed_public_key and binder recomputed",
        },
        {
            **substitute,
            "name": "clear timestamp disagrees",
            "description": "timestamp_s is one more than the precise timestamp inside C_I allows "
            "(re-bound by a network member): unsound",
            "hello": moved_clock,
            "hello_change": "timestamp_s + 1, sealed_public_key and binder recomputed",
        },
    ]
    out = []
    for spec in specs:
        case = ResponderCase(**{**base, **spec})
        check_responder_case(case, ref, initiator, responder)
        out.append(_case_json(case, ref))
    return out


def _case_json(case: ResponderCase, ref: ReferenceHandshake) -> Json:
    expected: Json = {
        "private_key_operations": case.private_key_operations,
        "reply": case.reply,
    }
    if case.reply == "none":
        expected["responder"] = "HandshakeFailed on the Hello; nothing is sent"
    else:
        assert case.expected_reply is not None
        expected["reply_record"] = case.expected_reply.hex()
    if case.reply == "genuine":
        expected["finish"] = "flights.finish completes the handshake"
    elif case.reply == "refused at finish":
        expected["finish"] = (
            "flights.finish: HandshakeFailed (trust and freshness are enforced only here)"
        )
        expected["refusal_record"] = refusal_record(ref).hex()
    elif case.reply == "substitute":
        expected["finish"] = "flights.finish: HandshakeFailed (the single failure point)"
        if case.hello is None:
            expected["initiator"] = "HandshakeFailed on this Reply, before its private-key work"
    hello: Json | str = "flights.hello"
    if case.hello is not None:
        hello = {"change": case.hello_change, "record": case.hello.hex()}
    return {
        "name": case.name,
        "description": case.description,
        "hello": hello,
        "responder": {
            "psk": case.psk.hex(),
            "trusts_initiator": case.trusts_initiator,
            "now_ns": case.now_ns,
            "admitted_before": [
                {"binder": b.hex(), "timestamp_ns": ts, "now_ns": now}
                for b, ts, now in case.admitted_before
            ],
            "decryption_remembered": "oaep.hello.plaintext" if case.remembered else None,
            "newest_accepted_for_initiator": case.newest_for_initiator,
            "randomness": f"inputs.randomness.{case.randomness}",
        },
        "expected": expected,
    }


def refusal_record(ref: ReferenceHandshake) -> bytes:
    """The sealed CLOSE (reason 0x02) a responder sends an authenticated but refused initiator."""
    record, _ = ReferenceSealer(ref.schedule.values["r2i_traffic_secret"]).seal(CLOSE, b"\x02")
    return record


def check_responder_case(
    case: ResponderCase, ref: ReferenceHandshake, initiator: Party, responder: Party
) -> None:
    what = f"responder case {case.name!r}"
    guard = ReplayGuard()
    for binder, ts, now in case.admitted_before:
        _require(guard.admit_hello(binder, ts, now) is Admission.NEW, f"{what}: setup")
        if case.remembered:
            guard.remember_decryption(binder, bytes.fromhex(ref.oaep["hello"]["plaintext"]))
    if case.newest_for_initiator is not None:
        guard.accept(initiator.identity.peer_id, case.newest_for_initiator)
    rand = ScriptedRandomness(responder_randomness()[case.randomness])
    conn = Connection.responder(
        StreamConfig(),
        responder.identity,
        NetworkKey(case.psk),
        KnownPeers([initiator.identity.record] if case.trusts_initiator else []),
        guard,
        now_ns=case.now_ns,
        randomness=rand,
        oaep_encrypt=_oaep_hook(),
    )
    try:
        events = conn.receive_data_untrusted(case.hello or ref.hello)
    except HandshakeFailed:
        _require(case.reply == "none", f"{what}: refused the Hello")
        _require(conn.data_to_send() == b"" and rand.untouched, f"{what}: no reply")
        return
    _require(case.reply != "none", f"{what}: admitted the Hello")
    needs = [e for e in events if isinstance(e, PrivateKeyOperationNeeded)]
    _require(len(needs) == case.private_key_operations, f"{what}: private-key operations")
    if needs:
        plain = responder.identity.decrypt_untrusted(needs[0].ciphertext, needs[0].label)
        reply = conn.supply_decryption(plain)
    else:
        reply = conn.data_to_send()
    _require(rand.exhausted, f"{what}: randomness")
    _require(reply == case.expected_reply, f"{what}: the Reply")
    _require(len(reply) == len(ref.reply), f"{what}: Reply length")
    if case.reply == "genuine":
        done = conn.receive_data_untrusted(ref.finish)
        _require([type(e) for e in done] == [HandshakeComplete], f"{what}: Finish")
        return
    try:
        conn.receive_data_untrusted(ref.finish)
    except HandshakeFailed:
        pass
    else:
        _require(False, f"{what}: the Finish must fail")
    expected_farewell = b""
    if case.reply == "refused at finish":
        # SPEC.md section 3.4 step 5: CLOSE 0x02 as record 0 under the r2i traffic key.
        expected_farewell = refusal_record(ref)
    _require(conn.farewell == expected_farewell, f"{what}: the refusal record")
    newest = guard.newest(initiator.identity.peer_id)
    _require(newest == case.newest_for_initiator, f"{what}: guard untouched")
    if case.hello is None and case.reply == "substitute":
        ini = _initiator_connection(initiator, responder)
        ini.start()
        try:
            ini.receive_data_untrusted(reply)
        except HandshakeFailed:
            pass
        else:
            _require(False, f"{what}: the initiator must refuse the substitute before RSA work")


def _initiator_connection(initiator: Party, responder: Party) -> Connection:
    return Connection.initiator(
        StreamConfig(),
        initiator.identity,
        NetworkKey(PSK),
        responder.identity.record,
        timestamp_ns=TIMESTAMP_NS,
        randomness=ScriptedRandomness(EPHEMERAL_INITIATOR + K_INITIATOR),
        oaep_encrypt=_oaep_hook(),
    )


# --- the replay cache -------------------------------------------------------------------------

REPLAY_SCRIPT_WINDOW_S = 600
REPLAY_SCRIPT_CAPACITY = 4
REPLAY_SCRIPT_PER_SOURCE = 2
T = COARSE_NS
W = REPLAY_WINDOW_NS
F = MAX_FUTURE_SKEW_NS
X, Y, Z = "192.0.2.1", "192.0.2.2", "2001:db8::/64"  # sources: IPv4 addresses, an IPv6 /64
# (binder name, timestamp, now, source)
REPLAY_SCRIPT: tuple[tuple[str, int, int, str], ...] = (
    ("A", T, T, X),
    ("A", T, T, X),
    ("A", T, T, Y),  # a copy from another source is answered too
    ("B", T + 1, T, X),
    ("C", T - W - 1, T, X),
    ("C", T + F + 1, T, X),
    ("G", T + F, T, Y),
    ("C", T - W, T, Y),  # the memory is full
    ("D", T + 2, T, X),  # X holds its share: forgets its own A, floor(X) = T
    ("A", T, T, X),  # refused: X's floor
    ("A", T, T, Z),  # from Z it costs a decryption again (it cannot complete); B (X) makes room
    ("E", T + 3, T + 1, Z),  # Y holds the most: G makes room, floor(Y) = T + F
    ("F", T + 1, T + 1, Y),  # Y's own future stamps refuse Y only
    ("H", T + 1, T + 1, X),  # refused: X's floor
    ("F", T + W + 1, T + W + 1, Y),  # C expires; Y held nothing else, its floor goes with it
    ("G", T + F, T + W + 1, Y),  # so G is taken again; A (Z, now outside the window) makes room
    ("J", T + W + F, T + W + 1, X),  # Y holds the most: F makes room, floor(Y) = T + W + 1
    ("K", T + 2, T + W + 1, X),  # X's D makes room and raises floor(X) to T + 2: refused
)


def _replay_binder(name: str) -> bytes:
    return _fixed(f"binder {name}")


def replay_vectors() -> Json:
    reference = ReferenceReplayCache(
        REPLAY_WINDOW_NS, REPLAY_SCRIPT_CAPACITY, REPLAY_SCRIPT_PER_SOURCE
    )
    guard = ReplayGuard(
        window_s=REPLAY_SCRIPT_WINDOW_S,
        max_recent_hellos=REPLAY_SCRIPT_CAPACITY,
        max_recent_per_source=REPLAY_SCRIPT_PER_SOURCE,
    )
    default = ReplayGuard()
    _require(default.window_ns == REPLAY_WINDOW_NS, "default replay window")
    _require(default.max_future_skew_ns == MAX_FUTURE_SKEW_NS, "default future skew")
    _require(default.max_recent_hellos == MAX_RECENT_HELLOS, "default binder memory")
    _require(
        default.max_recent_per_source == MAX_RECENT_PER_SOURCE, "default binder memory per source"
    )
    names = {_replay_binder(n): n for n, _, _, _ in REPLAY_SCRIPT}
    steps = []
    for number, (name, ts, now, source) in enumerate(REPLAY_SCRIPT, 1):
        binder = _replay_binder(name)
        outcome, reason = reference.admit(binder, ts, now, source)
        _require(
            guard.admit_hello(binder, ts, now, source).value == outcome, f"replay step {number}"
        )
        for held_by in (X, Y, Z):
            _require(
                guard.floor_of(held_by) == reference.floors.get(held_by, -1),
                f"replay step {number}: floor of {held_by}",
            )
        steps.append(
            {
                "step": number,
                "binder": name,
                "source": source,
                "timestamp_ns": ts,
                "now_ns": now,
                "outcome": outcome,
                "reason": reason,
                "remembered_after": [[names[b], held_by] for b, _, held_by in reference.entries],
                "floors_after": dict(sorted(reference.floors.items())),
            }
        )
    return {
        "description": "ReplayGuard.admit_hello, the cheap check a responder runs on a Hello "
        "whose binder verified, before its RSA work (SPEC.md section 3.5); timestamp_ns is the "
        "Hello's clear timestamp_s times 10^9, source where its connection came from (IPv4 "
        "address or IPv6 /64). Binder NAME is SHA-256('p2ptls1 test vector binder NAME'). "
        "'refused': no reply; 'new': decrypt C_I; 'seen': a copy, answered from the remembered "
        "decryption (no RSA work once it is known). remembered_after lists [binder, source] in "
        "arrival order; floors_after the floor of each source that has one (others: -1).",
        "defaults": {
            "window_ns": REPLAY_WINDOW_NS,
            "max_future_skew_ns": MAX_FUTURE_SKEW_NS,
            "max_recent_hellos": MAX_RECENT_HELLOS,
            "max_recent_per_source": MAX_RECENT_PER_SOURCE,
        },
        "script": {
            "window_ns": REPLAY_SCRIPT_WINDOW_S * 10**9,
            "max_recent_hellos": REPLAY_SCRIPT_CAPACITY,
            "max_recent_per_source": REPLAY_SCRIPT_PER_SOURCE,
            "binders": {name: binder.hex() for binder, name in names.items()},
            "steps": steps,
        },
    }


# --- reassembly -------------------------------------------------------------------------------

# ((record kind, announced total or None, fragment length), ...), expected outcome, description
ReassemblyCase = tuple[tuple[tuple[str, int | None, int], ...], str, str]
REASSEMBLY_CASES: tuple[ReassemblyCase, ...] = (
    (
        (("start", 503, 251),),
        "ProtocolError",
        "a non-final first fragment below the minimum",
    ),
    (
        (("start", 1000, 252), ("continue", None, 251)),
        "ProtocolError",
        "a non-final continuation below the minimum",
    ),
    (
        (("start", 503, 252), ("continue", None, 251)),
        "delivered",
        "a final fragment may be short",
    ),
    (
        (("start", 100, 100),),
        "delivered",
        "a message in one record is never kept",
    ),
)


def reassembly_vectors(sizes: Sequence[int]) -> Json:
    charges = reference_reassembly_charges(sizes)
    budget = ReassemblyBudget()
    reassembler = Reassembler(16 * 1024 * 1024, budget)
    message = fragment_message()
    offset, observed = 0, []
    for index, size in enumerate(sizes):
        part = message[offset : offset + size]
        offset += size
        if index == 0:
            reassembler.start_untrusted(len(message), part)
        else:
            reassembler.continue_untrusted(part)
        observed.append(budget.in_use)
    _require(observed == charges, "reassembly budget charges")
    cases = []
    for ops, outcome, description in REASSEMBLY_CASES:
        budget = ReassemblyBudget()
        reassembler = Reassembler(16 * 1024 * 1024, budget)
        got, in_use = "incomplete", []
        try:
            for kind, total, length in ops:
                if kind == "start":
                    assert total is not None
                    result = reassembler.start_untrusted(total, bytes(length))
                else:
                    result = reassembler.continue_untrusted(bytes(length))
                in_use.append(budget.in_use)
                if result is not None:
                    got = "delivered"
        except ProtocolError as exc:
            got = type(exc).__name__
        _require(got == outcome, f"reassembly case {description!r}")
        cases.append(
            {
                "description": description,
                "records": [
                    {"type": f"MESSAGE_{kind.upper()}", "total": total, "fragment_length": length}
                    if total is not None
                    else {"type": f"MESSAGE_{kind.upper()}", "fragment_length": length}
                    for kind, total, length in ops
                ],
                "outcome": outcome,
                "budget_in_use_after_each_accepted_record": in_use,
            }
        )
    return {
        "min_nonfinal_fragment": MIN_NONFINAL_FRAGMENT,
        "fragment_overhead": FRAGMENT_OVERHEAD,
        "budget_in_use_after_each_record": charges,
        "cases": cases,
    }


# --- the session after the handshake ---------------------------------------------------------

SessionStep = tuple[str, str, bytes | int | None]

SESSION_SCRIPT: tuple[SessionStep, ...] = (
    ("initiator", "send_data", b"hello"),
    ("initiator", "send_ping", PING_INITIATOR),
    ("responder", "receive", None),
    ("responder", "send_data", b"hello"),
    ("responder", "send_ping", PING_RESPONDER),
    ("responder", "send_message", MESSAGE_LENGTH),
    ("initiator", "receive", None),
    ("initiator", "send_eof", 0),
    ("responder", "receive", None),
    ("responder", "send_eof", 1),
    ("initiator", "receive", None),
)


def _reference_records(step: SessionStep) -> list[tuple[int, bytes]]:
    """What SPEC.md says each send step puts on the wire (type, plaintext), by hand."""
    side, action, argument = step
    if (side, action) == ("responder", "send_data"):
        return [(PONG, PING_INITIATOR), (DATA, b"hello")]  # the owed PONG goes first
    if (side, action) == ("initiator", "send_eof"):
        # sequence 2 = key_update_after: KEY_UPDATE under the old key, then the owed PONG
        return [(KEY_UPDATE, b""), (PONG, PING_RESPONDER), (CLOSE, b"\x00")]
    if action == "send_data":
        assert isinstance(argument, bytes)
        return [(DATA, argument)]
    if action == "send_ping":
        assert isinstance(argument, bytes)
        return [(PING, argument)]
    if action == "send_eof":
        assert isinstance(argument, int)
        return [(CLOSE, bytes([argument]))]
    if action == "send_message":
        message = fragment_message()
        first = RECORD_SIZE - 4
        out = [(MESSAGE_START, len(message).to_bytes(4, "big") + message[:first])]
        for offset in range(first, len(message), RECORD_SIZE):
            out.append((MESSAGE_CONTINUE, message[offset : offset + RECORD_SIZE]))
        return out
    raise AssertionError(action)


def event_json(event: Event) -> Json:
    if isinstance(event, DataReceived):
        return {"event": "DataReceived", "data": event.data.hex()}
    if isinstance(event, MessageReceived):
        return {
            "event": "MessageReceived",
            "length": len(event.data),
            "sha256": sha256(event.data).hex(),
        }
    if isinstance(event, PongReceived):
        return {"event": "PongReceived", "payload": event.payload.hex()}
    if isinstance(event, EndOfStream):
        return {"event": "EndOfStream", "reason": event.reason}
    if isinstance(event, HandshakeComplete):
        return {"event": "HandshakeComplete", "remote": event.remote.peer_id.hex()}
    return {"event": "PrivateKeyOperationNeeded", "label": event.label.decode()}


@dataclass
class Session:
    handshake_events: list[Json]
    steps: list[Json]
    generations: dict[str, list[Json]]
    message_records: list[tuple[Json, bytes]]


def run_session(ref: ReferenceHandshake, initiator: Party, responder: Party) -> Session:
    """Handshake and session through ``Connection``, checked against the reference."""
    psk = NetworkKey(PSK)
    hook = _oaep_hook()
    rand_i = ScriptedRandomness(EPHEMERAL_INITIATOR + K_INITIATOR)
    rand_r = ScriptedRandomness(EPHEMERAL_RESPONDER + K_RESPONDER)
    guard = ReplayGuard()
    conns = {
        "initiator": Connection.initiator(
            StreamConfig(key_update_after=INITIATOR_KEY_UPDATE_AFTER, record_size=RECORD_SIZE),
            initiator.identity,
            psk,
            responder.identity.record,
            timestamp_ns=TIMESTAMP_NS,
            randomness=rand_i,
            oaep_encrypt=hook,
        ),
        "responder": Connection.responder(
            StreamConfig(record_size=RECORD_SIZE),
            responder.identity,
            psk,
            KnownPeers([initiator.identity.record]),
            guard,
            now_ns=NOW_NS,
            randomness=rand_r,
            oaep_encrypt=hook,
        ),
    }
    ci, cr = conns["initiator"], conns["responder"]
    handshake_events: list[Json] = []
    hello = ci.start()
    _require(hello == ref.hello, "Hello (Connection)")
    (need,) = cr.receive_data_untrusted(hello)
    assert isinstance(need, PrivateKeyOperationNeeded)
    handshake_events.append({"side": "responder", **event_json(need)})
    reply = cr.supply_decryption(responder.identity.decrypt_untrusted(need.ciphertext, need.label))
    _require(reply == ref.reply, "Reply (Connection)")
    (need,) = ci.receive_data_untrusted(reply)
    assert isinstance(need, PrivateKeyOperationNeeded)
    handshake_events.append({"side": "initiator", **event_json(need)})
    finish = ci.supply_decryption(initiator.identity.decrypt_untrusted(need.ciphertext, need.label))
    _require(finish == ref.finish, "Finish (Connection)")
    events = cr.receive_data_untrusted(finish)
    handshake_events.extend({"side": "responder", **event_json(e)} for e in events)
    _require(rand_i.exhausted and rand_r.exhausted, "randomness consumption order")
    _require(guard.newest(initiator.identity.peer_id) == TIMESTAMP_NS, "replay guard")

    values = ref.schedule.values
    sealers = {
        "initiator": ReferenceSealer(values["i2r_traffic_secret"]),
        "responder": ReferenceSealer(values["r2i_traffic_secret"]),
    }
    direction = {"initiator": "i2r", "responder": "r2i"}
    in_flight: dict[str, bytes] = {"initiator": b"", "responder": b""}
    message_records: list[tuple[Json, bytes]] = []
    steps: list[Json] = []
    for number, step in enumerate(SESSION_SCRIPT, 1):
        side, action, argument = step
        conn = conns[side]
        entry: Json = {"step": number, "side": side, "action": action}
        if action == "receive":
            peer = "responder" if side == "initiator" else "initiator"
            got = conn.receive_data_untrusted(in_flight[peer])
            in_flight[peer] = b""
            entry["events"] = [event_json(e) for e in got]
            steps.append(entry)
            continue
        if action == "send_data":
            assert isinstance(argument, bytes)
            entry["data"] = argument.hex()
            output = conn.send_data(argument)
        elif action == "send_ping":
            assert isinstance(argument, bytes)
            entry["payload"] = argument.hex()
            output = conn.send_ping(argument)
        elif action == "send_eof":
            assert isinstance(argument, int)
            entry["reason"] = argument
            output = conn.send_eof(argument)
        else:
            entry["message"] = "fragmentation.json"
            output = conn.send_message(fragment_message())
        expected = b""
        entry["records"] = []
        for content_type, plaintext in _reference_records(step):
            record, info = sealers[side].seal(content_type, plaintext)
            info = {"direction": direction[side], **info}
            expected += record
            entry["records"].append(info)
            if content_type in (MESSAGE_START, MESSAGE_CONTINUE):
                message_records.append((info, record))
        _require(output == expected, f"session step {number} ({side} {action})")
        in_flight[side] += output
        steps.append(entry)
    generations = {direction[s]: sealers[s].generations for s in sealers}
    return Session(handshake_events, steps, generations, message_records)


# --- assembling the files ---------------------------------------------------------------------


def load_or_make_keys(existing: Json | None) -> tuple[Party, Party]:
    """The two RSA-2048 keys: read from an existing handshake.json, or generated once."""
    parties = []
    for role in ("initiator", "responder"):
        pem: str | None = None
        if existing is not None:
            pem = existing.get("inputs", {}).get(role, {}).get("private_key_pem")
        if pem is None:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode("ascii")
        loaded = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise SystemExit(f"{role} key in handshake.json is not RSA")
        parties.append(Party(Identity(loaded), pem))
    return parties[0], parties[1]


def _party_json(party: Party) -> Json:
    return {
        "private_key_pem": party.pem,
        "public_key_der": party.der.hex(),
        "peer_id": party.peer_id.hex(),
    }


def build_vectors(initiator: Party, responder: Party) -> dict[str, Json]:
    """Every vector file's content, computed and cross-checked (deterministic given the keys)."""
    ref = reference_handshake(initiator, responder)
    check_handshake_classes(ref, initiator, responder)
    session = run_session(ref, initiator, responder)
    values = ref.schedule.values
    e_i_pub = X25519PrivateKey.from_private_bytes(EPHEMERAL_INITIATOR).public_key()
    e_r_pub = X25519PrivateKey.from_private_bytes(EPHEMERAL_RESPONDER).public_key()

    handshake = {
        "description": "p2ptls1 handshake with fixed inputs (SPEC.md section 3). Hex is lowercase. "
        "'responder_cases' are Hellos the responder refuses or answers with a substitute Reply, "
        "each run on a fresh responder with the same inputs except those listed.",
        "inputs": {
            "initiator": _party_json(initiator),
            "responder": _party_json(responder),
            "psk": PSK.hex(),
            "initiator_ephemeral_private": EPHEMERAL_INITIATOR.hex(),
            "initiator_ephemeral_public": e_i_pub.public_bytes_raw().hex(),
            "responder_ephemeral_private": EPHEMERAL_RESPONDER.hex(),
            "responder_ephemeral_public": e_r_pub.public_bytes_raw().hex(),
            "k_I": K_INITIATOR.hex(),
            "k_R": K_RESPONDER.hex(),
            "timestamp_ns": TIMESTAMP_NS,
            "timestamp_s": TIMESTAMP_S,
            "responder_now_ns": NOW_NS,
            "oaep_seed_hello": SEED_HELLO.hex(),
            "oaep_seed_reply": SEED_REPLY.hex(),
            "randomness": {
                "note": "bytes for the randomness= hooks of Connection.initiator/responder, "
                "in the order the code draws them: X25519 private key (32), then k_I or k_R (32); "
                "for a substitute Reply the responder draws its X25519 key (32), then the sealed "
                "C_R (k' + 16 = 272) and finished_R (32)",
                "initiator": (EPHEMERAL_INITIATOR + K_INITIATOR).hex(),
                **{name: data.hex() for name, data in responder_randomness().items()},
            },
        },
        "oaep": ref.oaep,
        "sealed_public_key": ref.sealed_key,
        "binder": ref.binder,
        "sealed_c_r": ref.sealed_c_r,
        "flights": {
            "hello": {"record": ref.hello.hex(), "fields": ref.hello_fields},
            "reply": {"record": ref.reply.hex(), "fields": ref.reply_fields},
            "finish": {"record": ref.finish.hex(), "fields": ref.finish_fields},
        },
        "connection_events": session.handshake_events,
        "responder_cases": responder_cases(ref, initiator, responder),
        "result": {
            "session_id": values["full_transcript_hash"].hex(),
            "initiator_authenticates": responder.peer_id.hex(),
            "responder_authenticates": initiator.peer_id.hex(),
            "replay_guard_after_finish": TIMESTAMP_NS,
        },
    }

    chain = []
    secret = values["i2r_traffic_secret"]
    for generation in range(3):
        chain.append(
            {
                "generation": generation,
                "traffic_secret": secret.hex(),
                "key": expand_label(secret, "key", b"", 32).hex(),
                "iv": expand_label(secret, "iv", b"", 12).hex(),
            }
        )
        secret = expand_label(secret, "key update", b"", 32)
    exporter = values["exporter_secret"]
    key_schedule = {
        "description": "Every HKDF step of the handshake in handshake.json (SPEC.md section 4). "
        "'info' is the full HKDF-Expand info (HkdfLabel); 'salt', 'ikm', 'secret' and 'context' "
        "name earlier steps.",
        "steps": ref.schedule.steps,
        "key_update": {
            "direction": "i2r",
            "rule": "next = HKDF-Expand-Label(secret, 'key update', '', 32)",
            "chain": chain,
        },
        "exporter": {
            "label": EXPORTER_LABEL,
            "context": EXPORTER_CONTEXT.hex(),
            "length": EXPORTER_LENGTH,
            "rule": "HKDF-Expand-Label(Derive-Secret(exporter_secret, label, ''), 'exporter', "
            "SHA-256(context), length)",
            "output": expand_label(
                expand_label(exporter, EXPORTER_LABEL, b"", 32),
                "exporter",
                sha256(EXPORTER_CONTEXT),
                EXPORTER_LENGTH,
            ).hex(),
        },
    }

    records = {
        "description": "The session after the handshake in handshake.json, driven through "
        "Connection (SPEC.md sections 5, 7, 8). Each side sends before it reads the other's "
        "records. Records above 1024 bytes are given by SHA-256 here and in full in "
        "fragmentation.json.",
        "config": {
            "initiator": {"key_update_after": INITIATOR_KEY_UPDATE_AFTER, "record_size": 16384},
            "responder": {"record_size": RECORD_SIZE},
        },
        "traffic": session.generations,
        "steps": session.steps,
    }

    message = fragment_message()
    fragments = [{"offset": 0, "size": RECORD_SIZE - 4}]
    for offset in range(RECORD_SIZE - 4, len(message), RECORD_SIZE):
        fragments.append({"offset": offset, "size": min(RECORD_SIZE, len(message) - offset)})
    r2i = session.generations["r2i"][0]
    fragmentation = {
        "description": "One 40,000-byte message sent by the responder at record_size 16384 "
        "(step 6 of records.json) (SPEC.md section 6). 'reassembly': what the receiver's "
        "ReassemblyBudget holds after each of its records, and the fragment-size rule.",
        "message": {
            "length": len(message),
            "pattern": "byte i = i mod 251",
            "sha256": sha256(message).hex(),
        },
        "record_size": RECORD_SIZE,
        "first_fragment_limit": RECORD_SIZE - 4,
        "fragments": fragments,
        "direction": "r2i",
        "traffic_secret": r2i["traffic_secret"],
        "key": r2i["key"],
        "iv": r2i["iv"],
        "records": [{**info, "record": record.hex()} for info, record in session.message_records],
        "reassembly": reassembly_vectors([f["size"] for f in fragments]),
    }
    return {
        "handshake.json": handshake,
        "key_schedule.json": key_schedule,
        "records.json": records,
        "fragmentation.json": fragmentation,
        "replay.json": replay_vectors(),
    }


def render(vectors: dict[str, Json]) -> dict[str, str]:
    return {name: json.dumps(data, indent=2) + "\n" for name, data in vectors.items()}


def load_existing(directory: Path = VECTOR_DIR) -> Json | None:
    path = directory / "handshake.json"
    if not path.exists():
        return None
    data: Json = json.loads(path.read_text(encoding="utf-8"))
    return data


def generate(directory: Path = VECTOR_DIR) -> dict[str, str]:
    """The rendered files, reusing the RSA keys already in ``directory`` if there are any."""
    initiator, responder = load_or_make_keys(load_existing(directory))
    return render(build_vectors(initiator, responder))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    rendered = generate()
    stale = [
        name
        for name, text in rendered.items()
        if not (VECTOR_DIR / name).exists()
        or (VECTOR_DIR / name).read_text(encoding="utf-8") != text
    ]
    if args.check:
        for name in stale:
            print(f"stale: protocol/vectors/{name}", file=sys.stderr)
        return 1 if stale else 0
    VECTOR_DIR.mkdir(parents=True, exist_ok=True)
    for name in stale:
        (VECTOR_DIR / name).write_text(rendered[name], encoding="utf-8")
        print(f"wrote protocol/vectors/{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
