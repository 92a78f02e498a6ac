"""Known-answer tests: the DHT's records, messages and store decisions against
``protocol/vectors/dht.json``.

The vectors are described in ``protocol/SPEC-dht.md`` (§10) and produced by
``protocol/generate_dht_vectors.py``. These tests drive ``p2ptls.dht`` with the fixed inputs and
compare every byte; the peer record's RSA-PSS signature (randomised) is checked to verify instead.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2ptls.dht import _records as records
from p2ptls.dht import _store as store
from p2ptls.dht import _wire as wire
from p2ptls.dht._errors import DhtProtocolError
from p2ptls.identity import Identity
from protocol import generate_dht_vectors

VECTORS = Path(__file__).resolve().parent.parent / "protocol" / "vectors" / "dht.json"


@functools.cache
def vectors() -> Any:
    return json.loads(VECTORS.read_text(encoding="utf-8"))


def identity() -> Identity:
    pem = vectors()["inputs"]["rsa_private_key_pem"].encode("ascii")
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return Identity(key)


def ed25519() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vectors()["inputs"]["ed25519_seed"]))


def test_the_generator_is_current() -> None:
    assert generate_dht_vectors.main(["--check"]) == 0


def test_peer_record_verifies_and_its_unsigned_bytes_match() -> None:
    data = vectors()
    inputs = data["inputs"]
    encoding = bytes.fromhex(data["peer_record"]["encoding"])
    record = records.parse_record_untrusted(encoding)
    assert isinstance(record, records.PeerAddressRecord)
    assert record.key.hex() == data["peer_id"] == identity().peer_id.hex()
    assert record.peer.public_key_der.hex() == data["public_key_der"]
    assert [list(address) for address in record.addresses] == inputs["addresses"]
    addresses = tuple((host, port) for host, port in inputs["addresses"])
    fresh = records.sign_peer_record(
        identity(), 1, addresses, inputs["issued_at"], inputs["expires_at"]
    )
    signed = bytes.fromhex(data["peer_record"]["signed_bytes"])
    body = signed[len(records.PEER_RECORD_LABEL) :]
    assert signed.startswith(records.PEER_RECORD_LABEL)
    assert fresh.encoding.startswith(body) and encoding.startswith(body)
    assert records.parse_record_untrusted(fresh.encoding).key == record.key  # PSS: fresh bytes


def test_immutable_value_byte_for_byte() -> None:
    data = vectors()
    value = bytes.fromhex(data["immutable"]["value"])
    inputs = data["inputs"]
    made = records.make_immutable(value, inputs["issued_at"], inputs["expires_at"])
    assert made.encoding.hex() == data["immutable"]["encoding"]
    assert made.key.hex() == data["immutable"]["key"] == hashlib.sha256(value).hexdigest()


def test_mutable_values_byte_for_byte() -> None:
    data = vectors()
    inputs = data["inputs"]
    salt = bytes.fromhex(inputs["salt"])
    for name, entry in data["mutable"]["records"].items():
        value = None if entry["value"] is None else bytes.fromhex(entry["value"])
        made = records.sign_mutable(
            ed25519(),
            salt,
            entry["sequence"],
            value,
            issued_at=inputs["issued_at"],
            expires_at=inputs["expires_at"],
            cas=entry["cas"],
        )
        assert made.encoding.hex() == entry["encoding"], name
        assert made.owner.hex() == data["mutable"]["owner"]
        assert made.key.hex() == data["mutable"]["key"]
        signed = bytes.fromhex(entry["signed_bytes"])
        assert signed == records.MUTABLE_RECORD_LABEL + made.key + made.encoding[:-64]
        parsed = records.parse_record_untrusted(made.encoding)
        assert isinstance(parsed, records.MutableValue)
        assert (parsed.sequence, parsed.cas, parsed.value) == (
            entry["sequence"],
            entry["cas"],
            value,
        )


def test_every_message_round_trips() -> None:
    for name, encoding in vectors()["messages"].items():
        raw = bytes.fromhex(encoding)
        assert wire.parse_message_untrusted(raw).encode() == raw, name


@pytest.mark.parametrize("kind", ["records", "messages"])
def test_invalid_inputs_raise_the_protocol_error(kind: str) -> None:
    parse = records.parse_record_untrusted if kind == "records" else wire.parse_message_untrusted
    for entry in vectors()["invalid"][kind].values():
        assert entry["error"] == "DhtProtocolError"
        with pytest.raises(DhtProtocolError):
            parse(bytes.fromhex(entry["encoding"]))


def _named_records() -> dict[str, records.Record]:
    data = vectors()
    named: dict[str, records.Record] = {
        name: records.parse_record_untrusted(bytes.fromhex(entry["encoding"]))
        for name, entry in data["mutable"]["records"].items()
    }
    for name, encoding in data["mutable"]["extra"].items():
        named[name] = records.parse_record_untrusted(bytes.fromhex(encoding))
    named["peer"] = records.parse_record_untrusted(bytes.fromhex(data["peer_record"]["encoding"]))
    named["immutable"] = records.parse_record_untrusted(
        bytes.fromhex(data["immutable"]["encoding"])
    )
    return named


def test_store_scenarios_decide_as_the_vectors_say() -> None:
    named = _named_records()
    for name, steps in vectors()["store_scenarios"].items():
        holder = store.RecordStore()
        for step in steps:
            result = holder.put_untrusted(named[step["record"]], "source", step["now"])
            decided = None if result.refusal is None else result.refusal.name
            assert decided == step["refusal"], (name, step)
