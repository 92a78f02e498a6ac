"""Known-answer tests: the state network, byte for byte, against ``protocol/vectors/state.json``.

The vectors are described in ``protocol/SPEC-state.md`` and produced by
``protocol/generate_state_vectors.py``. These tests drive ``p2ptls.state`` with the fixed inputs and
compare every byte; the RSA-PSS certificate signature (randomised) is checked to verify instead.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2ptls.identity import Identity, NetworkKey
from p2ptls.state import RecordProof, _crypto
from p2ptls.state import _wire as wire
from p2ptls.state.errors import BadSignature
from protocol import generate_state_vectors

VECTORS = Path(__file__).resolve().parent.parent / "protocol" / "vectors" / "state.json"


@functools.cache
def vectors() -> Any:
    return json.loads(VECTORS.read_text(encoding="utf-8"))


def owner() -> Identity:
    pem = vectors()["inputs"]["owner_private_key_pem"].encode("ascii")
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return Identity(key)


def signer() -> _crypto.EpochSigner:
    data = vectors()
    ed = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(data["inputs"]["ed25519_seed"]))
    certificate = wire.parse_certificate_untrusted(bytes.fromhex(data["certificate"]["encoding"]))
    return _crypto.EpochSigner(ed, certificate)


def network() -> bytes:
    return _crypto.network_id(NetworkKey(bytes.fromhex(vectors()["inputs"]["psk"])))


def test_network_and_owner_ids() -> None:
    data = vectors()
    assert network().hex() == data["network_id"]
    assert owner().peer_id.hex() == data["owner_id"]
    assert owner().record.public_key_der.hex() == data["owner_public_key_der"]


def test_records_byte_for_byte() -> None:
    data = vectors()
    digest = owner().peer_id.digest
    for entry in data["records"]:
        value = None if entry["value"] is None else bytes.fromhex(entry["value"])
        record = wire.encode_record(digest, entry["epoch"], entry["sequence"], entry["key"], value)
        assert record.raw.hex() == entry["encoding"]
        assert _crypto.record_hash(record.raw).hex() == entry["sha256"]
        parsed = wire.parse_record_untrusted(record.raw, wire.Limits())
        assert (parsed.key, parsed.value, parsed.seq) == (entry["key"], value, entry["sequence"])


def test_certificate_verifies_and_encodes() -> None:
    data = vectors()
    encoded = bytes.fromhex(data["certificate"]["encoding"])
    certificate = wire.parse_certificate_untrusted(encoded)
    assert certificate.body.hex() == data["certificate"]["body"]
    assert (_crypto.CERT_CONTEXT + certificate.body).hex() == data["certificate"]["signed_bytes"]
    assert certificate.signing_key.hex() == data["ed25519_public_key"]
    assert certificate.signature.hex() == data["inputs"]["certificate_signature"]
    key, record = _crypto.verify_certificate(certificate, network())
    assert record.peer_id == owner().peer_id
    assert (
        key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
        == (data["ed25519_public_key"])
    )
    # A fresh certificate over the same body differs (PSS is randomised) but also verifies.
    fresh = _crypto.sign_certificate(owner(), network(), certificate.epoch, key)
    assert fresh.body == certificate.body
    _crypto.verify_certificate(fresh, network())
    # Salt length is pinned: a PSS signature with another salt length does not verify.
    other_salt = owner()._private_key.sign(
        _crypto.CERT_CONTEXT + certificate.body,
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=20),
        hashes.SHA256(),
    )
    salted = wire.EpochCertificate(
        certificate.network_id,
        certificate.owner,
        certificate.epoch,
        certificate.signing_key,
        other_salt,
        certificate.public_key_der,
    )
    with pytest.raises(BadSignature):
        _crypto.verify_certificate(salted, network())


def test_batch_byte_for_byte() -> None:
    data = vectors()
    digest = owner().peer_id.digest
    raws = [bytes.fromhex(entry["encoding"]) for entry in data["records"]]
    hashes = [hashlib.sha256(raw).digest() for raw in raws]
    batch = signer().sign_batch(digest, data["inputs"]["first_sequence"], hashes, network())
    assert batch.body.hex() == data["batch"]["body"]
    assert batch.signature.hex() == data["batch"]["signature"]  # Ed25519 is deterministic
    assert batch.encode().hex() == data["batch"]["encoding"]
    assert (_crypto.BATCH_CONTEXT + batch.body).hex() == data["batch"]["signed_bytes"]
    key = signer()._private_key.public_key()
    assert _crypto.verify_batch(key, wire.parse_batch_untrusted(batch.encode()))


def test_span_and_messages_byte_for_byte() -> None:
    data = vectors()
    batch = wire.parse_batch_untrusted(bytes.fromhex(data["batch"]["encoding"]))
    records = tuple(
        wire.parse_record_untrusted(
            bytes.fromhex(data["records"][seq - 1]["encoding"]), wire.Limits()
        )
        for seq in data["span"]["sequences"]
    )
    span = wire.Span(
        owner().peer_id.digest, tuple(data["span"]["since"]), (wire.Group(batch, records),)
    )
    assert span.encode().hex() == data["span"]["encoding"]
    for name, encoding in data["messages"].items():
        raw = bytes.fromhex(encoding)
        message = wire.parse_message_untrusted(raw, wire.Limits())
        assert message.encode() == raw, name
    updates = wire.parse_message_untrusted(
        bytes.fromhex(data["messages"]["updates"]), wire.Limits()
    )
    assert isinstance(updates, wire.Updates)
    assert updates.spans[0].encode() == span.encode()


def test_record_proof_from_vectors() -> None:
    data = vectors()
    proof = RecordProof(
        bytes.fromhex(data["records"][1]["encoding"]),
        bytes.fromhex(data["batch"]["encoding"]),
        bytes.fromhex(data["certificate"]["encoding"]),
    )
    verified = proof.verify(NetworkKey(bytes.fromhex(data["inputs"]["psk"])))
    assert (verified.owner, verified.key) == (owner().peer_id, "greeting")
    with pytest.raises(BadSignature):
        RecordProof(
            bytes.fromhex(data["records"][0]["encoding"]).replace(b"blue", b"bleu"),
            proof.batch,
            proof.certificate,
        ).verify(network())


def test_vector_file_is_up_to_date() -> None:
    assert generate_state_vectors.generate() == VECTORS.read_text(encoding="utf-8")
