"""Generate the p2ptls known-answer vectors in ``protocol/vectors/*.json``.

Run from the repository root::

    .venv/bin/python -m protocol.generate_vectors          # (re)write the JSON files
    .venv/bin/python -m protocol.generate_vectors --check  # exit 1 if the files are stale

Every value is computed twice: once by a small *reference* implementation written from
``protocol/SPEC.md`` using only ``hashlib``, ``hmac`` and the ``cryptography`` primitives, and
once by p2ptls itself (``InitiatorHandshake``/``ResponderHandshake``, ``Connection``,
``ReplayGuard``, ``Reassembler``), including the Hellos a responder must refuse or answer with a
substitute Reply. The generator refuses to write anything if the two disagree, so the vectors pin
the code *and* the specification.

Inputs are fixed: RSA-2048 keys (generated once, then read back from ``handshake.json``; delete
that file's ``inputs`` to make new ones), a PSK, the X25519 keys of RFC 7748 section 6.1, ``k_I``,
``k_R``, a timestamp (the responder's clock ``now_ns`` equals it) and the two OAEP seeds. OAEP uses
:mod:`protocol.fixed_oaep` (test-only).

This module assembles the files; the parts are, by job:

- :mod:`protocol.vector_inputs`: the fixed inputs;
- :mod:`protocol.handshake_reference`, :mod:`protocol.record_reference`: the reference
  implementation (no p2ptls import);
- :mod:`protocol.vector_support`: what driving p2ptls with the inputs needs;
- :mod:`protocol.handshake_vectors` (the handshake classes and the responder cases),
  :mod:`protocol.session_vectors` (the records of a scripted session),
  :mod:`protocol.reassembly_vectors` and :mod:`protocol.replay_vectors`: p2ptls driven and
  checked against the reference, part by part.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from p2ptls.identity import Identity
from protocol.handshake_reference import expand_label, reference_handshake, sha256
from protocol.handshake_vectors import (
    check_handshake_classes,
    responder_cases,
    responder_randomness,
)
from protocol.reassembly_vectors import reassembly_vectors
from protocol.replay_vectors import replay_vectors
from protocol.session_vectors import run_session
from protocol.vector_files import VECTOR_DIR, write_or_check
from protocol.vector_inputs import (
    EPHEMERAL_INITIATOR,
    EPHEMERAL_RESPONDER,
    EXPORTER_CONTEXT,
    EXPORTER_LABEL,
    EXPORTER_LENGTH,
    INITIATOR_KEY_UPDATE_AFTER,
    K_INITIATOR,
    K_RESPONDER,
    NOW_NS,
    PSK,
    RECORD_SIZE,
    SEED_HELLO,
    SEED_REPLY,
    TIMESTAMP_NS,
    TIMESTAMP_S,
    Json,
    fragment_message,
)
from protocol.vector_support import Party, rsa_key_from_pem

__all__ = [
    "FILES",
    "VECTOR_DIR",
    "build_vectors",
    "generate",
    "load_existing",
    "load_or_make_keys",
    "main",
    "render",
]

FILES = (
    "handshake.json",
    "key_schedule.json",
    "records.json",
    "fragmentation.json",
    "replay.json",
)


def load_or_make_keys(existing: Json | None) -> tuple[Party, Party]:
    """The two RSA-2048 keys: read from an existing handshake.json, or generated once."""
    parties = []
    for role in ("initiator", "responder"):
        pem: str | None = None
        if existing is not None:
            pem = existing.get("inputs", {}).get(role, {}).get("private_key_pem")
        loaded, pem = rsa_key_from_pem(pem)
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
    description = __doc__.splitlines()[0] if __doc__ else None
    return write_or_check(generate(), argv, description)


if __name__ == "__main__":
    raise SystemExit(main())
