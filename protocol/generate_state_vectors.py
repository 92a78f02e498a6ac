"""Generate the state-network known-answer vectors in ``protocol/vectors/state.json``.

Run from the repository root::

    .venv/bin/python -m protocol.generate_state_vectors          # (re)write the file
    .venv/bin/python -m protocol.generate_state_vectors --check  # exit 1 if it is stale

Every encoding is computed twice: once by a small *reference* implementation written from
``protocol/SPEC-state.md`` with only ``struct``, ``hashlib`` and the ``cryptography`` primitives
(this module), and once by ``p2ptls.state``. The generator refuses to write anything if the two
disagree, so the vectors pin the code *and* the specification.

Inputs are fixed: an RSA-2048 owner key (generated once, then read back from ``state.json``;
delete its ``inputs`` to make a new one), the PSK, an Ed25519 seed (Ed25519 is deterministic, so
batch signatures are fixed bytes), an epoch and the records. RSA-PSS is randomised: the
certificate signature is made once, stored, and checked to verify (never compared with a fresh
one); later runs reuse it.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2ptls._keyschedule import expand_label as p2ptls_expand_label
from p2ptls.identity import Identity, NetworkKey
from p2ptls.state import _crypto
from p2ptls.state import _wire as wire
from p2ptls.state.proof import RecordProof
from protocol.handshake_reference import expand_label as ref_expand_label
from protocol.handshake_reference import hkdf_extract as ref_hkdf_extract
from protocol.vector_files import write_or_check
from protocol.vector_support import rsa_key_from_pem

Json = dict[str, Any]

VECTOR_FILE = Path(__file__).resolve().parent / "vectors" / "state.json"

# --- constants as SPEC-state.md states them (deliberately not imported from p2ptls) -------------

CERT_CONTEXT = b"p2ptls1 state epoch certificate\x00"
BATCH_CONTEXT = b"p2ptls1 state batch\x00"
STATE_HELLO, DIGEST, PULL, UPDATES, MEMBERS, DIRECT, PING, PONG = range(1, 9)
PUT, DELETE = 1, 2


def _fixed(name: str) -> bytes:
    """32 reproducible bytes: SHA-256("p2ptls1 state vector " + name)."""
    return hashlib.sha256(b"p2ptls1 state vector " + name.encode("ascii")).digest()


PSK = _fixed("psk")
ED25519_SEED = _fixed("ed25519 seed")
EPOCH = 3
FIRST_SEQ = 1
RECORDS: list[tuple[str, bytes | None]] = [
    ("color", b"blue"),
    ("greeting", "héllo wörld".encode()),
    ("color", None),
    ("empty", b""),
]
OTHER_OWNER = _fixed("other owner")
PING_NONCE = bytes(range(8))

# --- reference implementation of SPEC-state.md --------------------------------------------------


def ref_network_id(psk: bytes) -> bytes:
    return ref_expand_label(ref_hkdf_extract(bytes(32), psk), "state network id", b"", 32)


def ref_record(owner: bytes, epoch: int, seq: int, key: str, value: bytes | None) -> bytes:
    key_bytes = key.encode("utf-8")
    kind = DELETE if value is None else PUT
    payload = value or b""
    return (
        struct.pack(">B32sQQH", kind, owner, epoch, seq, len(key_bytes))
        + key_bytes
        + struct.pack(">I", len(payload))
        + payload
    )


def ref_batch_body(
    network: bytes, owner: bytes, epoch: int, first: int, raws: list[bytes]
) -> bytes:
    hashes_ = b"".join(hashlib.sha256(raw).digest() for raw in raws)
    return struct.pack(">32s32sQQH", network, owner, epoch, first, len(raws)) + hashes_


def ref_cert_body(network: bytes, owner: bytes, epoch: int, ed_public: bytes) -> bytes:
    return struct.pack(">32s32sQ32s", network, owner, epoch, ed_public)


def ref_certificate(body: bytes, signature: bytes, der: bytes) -> bytes:
    return body + struct.pack(">H", len(signature)) + signature + struct.pack(">H", len(der)) + der


def ref_span(
    owner: bytes, since: tuple[int, int], groups: list[tuple[bytes, list[bytes]]]
) -> bytes:
    out = struct.pack(">32sQQH", owner, since[0], since[1], len(groups))
    for batch, raws in groups:
        out += batch + struct.pack(">H", len(raws))
        for raw in raws:
            out += struct.pack(">I", len(raw)) + raw
    return out


def ref_address(address: tuple[str, int] | None) -> bytes:
    if address is None:
        return b"\x00"
    host = address[0].encode("utf-8")
    return bytes([len(host)]) + host + struct.pack(">H", address[1])


def ref_entries(kind: int, entries: list[tuple[bytes, tuple[int, int]]]) -> bytes:
    out = bytes([kind]) + struct.pack(">I", len(entries))
    for owner, (epoch, seq) in entries:
        out += struct.pack(">32sQQ", owner, epoch, seq)
    return out


# --- generation -----------------------------------------------------------------------------------


def _load_inputs() -> Json | None:
    if not VECTOR_FILE.exists():
        return None
    data = json.loads(VECTOR_FILE.read_text(encoding="utf-8"))
    inputs = data.get("inputs")
    return inputs if isinstance(inputs, dict) and "owner_private_key_pem" in inputs else None


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def generate() -> str:
    stored = _load_inputs()
    private_key, pem = rsa_key_from_pem(None if stored is None else stored["owner_private_key_pem"])
    stored_signature = None if stored is None else bytes.fromhex(stored["certificate_signature"])
    identity = Identity(private_key)
    der = identity.record.public_key_der
    owner = identity.peer_id.digest

    # Network id.
    network = ref_network_id(PSK)
    assert network == _crypto.network_id(NetworkKey(PSK)), "network id disagrees"
    assert p2ptls_expand_label(ref_hkdf_extract(bytes(32), PSK), "state network id", b"", 32) == (
        network
    )

    # Records.
    raws = []
    records_json = []
    for offset, (name, value) in enumerate(RECORDS):
        seq = FIRST_SEQ + offset
        raw = ref_record(owner, EPOCH, seq, name, value)
        record = wire.encode_record(owner, EPOCH, seq, name, value)
        assert record.raw == raw, f"record {seq} disagrees"
        raws.append(raw)
        records_json.append(
            {
                "epoch": EPOCH,
                "sequence": seq,
                "key": name,
                "value": None if value is None else value.hex(),
                "encoding": raw.hex(),
                "sha256": hashlib.sha256(raw).hexdigest(),
            }
        )

    # Epoch certificate (RSA-PSS: randomised, so stored once and verified).
    ed_private = Ed25519PrivateKey.from_private_bytes(ED25519_SEED)
    ed_public = ed_private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    cert_body = ref_cert_body(network, owner, EPOCH, ed_public)
    if stored_signature is None:
        stored_signature = private_key.sign(CERT_CONTEXT + cert_body, _pss(), hashes.SHA256())
    private_key.public_key().verify(
        stored_signature, CERT_CONTEXT + cert_body, _pss(), hashes.SHA256()
    )
    certificate = ref_certificate(cert_body, stored_signature, der)
    parsed_certificate = wire.parse_certificate_untrusted(certificate)
    assert parsed_certificate.body == cert_body and parsed_certificate.encode() == certificate
    _crypto.verify_certificate(parsed_certificate, network)

    # Batch (Ed25519 is deterministic).
    body = ref_batch_body(network, owner, EPOCH, FIRST_SEQ, raws)
    signature = ed_private.sign(BATCH_CONTEXT + body)
    signer = _crypto.EpochSigner(ed_private, parsed_certificate)
    batch = signer.sign_batch(owner, FIRST_SEQ, [hashlib.sha256(r).digest() for r in raws], network)
    assert batch.body == body and batch.signature == signature, "batch disagrees"

    # A span with the current records only (seq 2 and 4; 3 deleted "color" and supersedes 1).
    current = [raws[1], raws[2], raws[3]]
    span = ref_span(owner, (0, 0), [(body + signature, current)])
    parsed_records = tuple(wire.parse_record_untrusted(r, wire.Limits()) for r in current)
    p2p_span = wire.Span(owner, (0, 0), (wire.Group(batch, parsed_records),))
    assert p2p_span.encode() == span, "span disagrees"

    messages: dict[str, tuple[bytes, wire.Message]] = {
        "hello": (
            bytes([STATE_HELLO, 1])
            + network
            + struct.pack(">Q", EPOCH)
            + ref_address(("10.1.2.3", 7400)),
            wire.StateHello(network, EPOCH, ("10.1.2.3", 7400)),
        ),
        "hello_not_listening": (
            bytes([STATE_HELLO, 1]) + network + struct.pack(">Q", EPOCH) + ref_address(None),
            wire.StateHello(network, EPOCH, None),
        ),
        "digest": (
            ref_entries(DIGEST, sorted([(owner, (EPOCH, 4)), (OTHER_OWNER, (1, 9))])),
            wire.Digest(tuple(sorted([(owner, (EPOCH, 4)), (OTHER_OWNER, (1, 9))]))),
        ),
        "pull": (
            ref_entries(PULL, [(owner, (0, 0))]),
            wire.Pull(((owner, (0, 0)),)),
        ),
        "updates": (
            bytes([UPDATES]) + struct.pack(">H", 1) + certificate + struct.pack(">H", 1) + span,
            wire.Updates((parsed_certificate,), (p2p_span,)),
        ),
        "members": (
            bytes([MEMBERS])
            + struct.pack(">H", 1)
            + struct.pack(">H", len(der))
            + der
            + ref_address(("node.example", 7400)),
            wire.Members((wire.MemberInfo(der, ("node.example", 7400)),)),
        ),
        "direct": (bytes([DIRECT]) + b"hello node", wire.Direct(b"hello node")),
        "ping": (bytes([PING]) + PING_NONCE, wire.Ping(PING_NONCE)),
        "pong": (bytes([PONG]) + PING_NONCE, wire.Pong(PING_NONCE)),
    }
    messages_json = {}
    limits = wire.Limits()
    for name, (reference, message) in messages.items():
        assert message.encode() == reference, f"message {name} disagrees"
        assert wire.parse_message_untrusted(reference, limits) == message, f"{name} parse"
        messages_json[name] = reference.hex()

    proof = RecordProof(raws[1], body + signature, certificate)
    verified = proof.verify(network)
    assert verified.key == "greeting"

    document = {
        "description": (
            "p2ptls state network (SPEC-state.md) with fixed inputs. Hex is lowercase. "
            "The certificate's RSA-PSS signature is randomised: it is stored once and must "
            "verify; every other byte must match exactly."
        ),
        "inputs": {
            "psk": PSK.hex(),
            "owner_private_key_pem": pem,
            "ed25519_seed": ED25519_SEED.hex(),
            "epoch": EPOCH,
            "first_sequence": FIRST_SEQ,
            "other_owner": OTHER_OWNER.hex(),
            "certificate_signature": stored_signature.hex(),
        },
        "network_id": network.hex(),
        "owner_id": owner.hex(),
        "owner_public_key_der": der.hex(),
        "ed25519_public_key": ed_public.hex(),
        "records": records_json,
        "certificate": {
            "signed_bytes": (CERT_CONTEXT + cert_body).hex(),
            "body": cert_body.hex(),
            "encoding": certificate.hex(),
        },
        "batch": {
            "signed_bytes": (BATCH_CONTEXT + body).hex(),
            "body": body.hex(),
            "signature": signature.hex(),
            "encoding": (body + signature).hex(),
        },
        "span": {
            "since": [0, 0],
            "sequences": [2, 3, 4],
            "encoding": span.hex(),
        },
        "messages": messages_json,
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    description = __doc__.splitlines()[0] if __doc__ else None
    return write_or_check({VECTOR_FILE.name: generate()}, argv, description)


if __name__ == "__main__":
    sys.exit(main())
