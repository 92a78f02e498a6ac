"""Generate the DHT known-answer vectors in ``protocol/vectors/dht.json``.

Run from the repository root::

    .venv/bin/python -m protocol.generate_dht_vectors          # (re)write the file
    .venv/bin/python -m protocol.generate_dht_vectors --check  # exit 1 if it is stale

Every encoding is computed twice: once by a small *reference* implementation written from
``protocol/SPEC-dht.md`` with only ``struct``, ``hashlib``, ``ipaddress`` and the ``cryptography``
primitives (this module), and once by ``p2ptls.dht``. The generator refuses to write anything if
the two disagree, so the vectors pin the code *and* the specification.

Inputs are fixed: an RSA-2048 identity (generated once, then read back from ``dht.json``; delete
its ``inputs`` to make a new one), an Ed25519 seed (Ed25519 is deterministic, so mutable values
are fixed bytes), times and addresses. RSA-PSS is randomised: the peer record's signature is made
once, stored, and checked to verify (never compared with a fresh one); later runs reuse it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import struct
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2ptls.dht import _records as records
from p2ptls.dht import _store as store
from p2ptls.dht import _wire as wire
from p2ptls.dht._errors import DhtProtocolError
from p2ptls.dht._ids import Contact
from p2ptls.identity import Identity
from protocol.vector_files import write_or_check
from protocol.vector_support import rsa_key_from_pem

Json = dict[str, Any]

VECTOR_FILE = Path(__file__).resolve().parent / "vectors" / "dht.json"

# --- constants as SPEC-dht.md states them (deliberately not imported from p2ptls) ---------------

PEER_LABEL = b"p2ptls1 dht peer record\x00"
MUTABLE_LABEL = b"p2ptls1 dht mutable record\x00"
KEY_LABEL = b"p2ptls1 dht mutable key\x00"
PING, PONG, FIND_NODE, NODES, FIND_VALUE, VALUE, STORE, STORED, REFUSED = range(1, 10)


def _fixed(name: str) -> bytes:
    """32 reproducible bytes: SHA-256("p2ptls1 dht vector " + name)."""
    return hashlib.sha256(b"p2ptls1 dht vector " + name.encode("ascii")).digest()


ED25519_SEED = _fixed("ed25519 seed")
ISSUED_AT = 1_767_225_600  # 2026-01-01T00:00:00Z
EXPIRES_AT = ISSUED_AT + 48 * 3600
NOW = ISSUED_AT + 60
ADDRESSES = (("192.0.2.1", 7400), ("2001:db8::1", 7400))
SALT = b"profile"
TARGET = _fixed("target")

# --- reference implementation of SPEC-dht.md ----------------------------------------------------


def ref_address(host: str, port: int) -> bytes:
    ip = ipaddress.ip_address(host)
    return bytes([ip.version]) + ip.packed + struct.pack(">H", port)


def ref_peer_body(der: bytes, sequence: int, issued: int, expires: int) -> bytes:
    addresses = b"".join(ref_address(host, port) for host, port in ADDRESSES)
    return (
        struct.pack(">BQQQH", 1, sequence, issued, expires, len(der))
        + der
        + bytes([len(ADDRESSES)])
        + addresses
    )


def ref_immutable(value: bytes, issued: int, expires: int) -> bytes:
    return struct.pack(">BQQH", 2, issued, expires, len(value)) + value


def ref_mutable_key(owner: bytes, salt: bytes) -> bytes:
    return hashlib.sha256(KEY_LABEL + owner + salt).digest()


def ref_mutable(
    key: Ed25519PrivateKey,
    sequence: int,
    value: bytes | None,
    cas: int | None,
    times: tuple[int, int],
) -> tuple[bytes, bytes]:
    """(signed bytes, encoding)."""
    owner = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    flags = (1 if cas is not None else 0) | (2 if value is None else 0)
    payload = value or b""
    body = (
        struct.pack(">B32sB", 3, owner, len(SALT))
        + SALT
        + struct.pack(">QBQQQH", sequence, flags, cas or 0, times[0], times[1], len(payload))
        + payload
    )
    signed = MUTABLE_LABEL + ref_mutable_key(owner, SALT) + body
    return signed, body + key.sign(signed)


def ref_contact(der: bytes, host: str, port: int) -> bytes:
    return (
        hashlib.sha256(der).digest() + struct.pack(">H", len(der)) + der + ref_address(host, port)
    )


def ref_message(kind: int, body: bytes) -> bytes:
    return bytes([1, kind]) + body


# --- generation -----------------------------------------------------------------------------------


def _load_inputs() -> Json | None:
    if not VECTOR_FILE.exists():
        return None
    inputs = json.loads(VECTOR_FILE.read_text(encoding="utf-8")).get("inputs")
    return inputs if isinstance(inputs, dict) and "rsa_private_key_pem" in inputs else None


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def _error_of(parse: Callable[[bytes], object], data: bytes) -> str:
    try:
        parse(data)
    except DhtProtocolError:
        return "DhtProtocolError"
    raise AssertionError("an invalid vector parsed")


def generate() -> str:
    stored = _load_inputs()
    private_key, pem = rsa_key_from_pem(None if stored is None else stored["rsa_private_key_pem"])
    stored_signature = None if stored is None else bytes.fromhex(stored["peer_record_signature"])
    identity = Identity(private_key)
    der = identity.record.public_key_der
    peer_id = hashlib.sha256(der).digest()
    assert peer_id == identity.peer_id.digest

    # Peer record (RSA-PSS: randomised, so stored once and verified).
    body = ref_peer_body(der, 1, ISSUED_AT, EXPIRES_AT)
    if stored_signature is None:
        stored_signature = private_key.sign(PEER_LABEL + body, _pss(), hashes.SHA256())
    private_key.public_key().verify(stored_signature, PEER_LABEL + body, _pss(), hashes.SHA256())
    peer_encoding = body + struct.pack(">H", len(stored_signature)) + stored_signature
    fresh = records.sign_peer_record(identity, 1, ADDRESSES, ISSUED_AT, EXPIRES_AT)
    assert fresh.encoding[: len(body)] == body, "peer record body disagrees"
    peer = records.parse_record_untrusted(peer_encoding)
    assert isinstance(peer, records.PeerAddressRecord) and peer.key == peer_id
    assert peer.addresses == ADDRESSES

    # Immutable value.
    value = "héllo dht".encode()
    immutable_encoding = ref_immutable(value, ISSUED_AT, EXPIRES_AT)
    immutable = records.make_immutable(value, ISSUED_AT, EXPIRES_AT)
    assert (
        immutable.encoding == immutable_encoding and immutable.key == hashlib.sha256(value).digest()
    )

    # Mutable values (Ed25519 is deterministic).
    ed = Ed25519PrivateKey.from_private_bytes(ED25519_SEED)
    owner = ed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    mutable_key = ref_mutable_key(owner, SALT)
    times = (ISSUED_AT, EXPIRES_AT)
    mutable_specs: dict[str, tuple[int, bytes | None, int | None]] = {
        "v1": (1, b"first", None),
        "v2_cas": (2, b"second", 1),
        "v2": (2, b"second", None),
        "v2_equivocation": (2, b"second, other", None),
        "v3_tombstone": (3, None, None),
        "v3_cas_mismatch": (3, b"third", 1),
    }
    mutable_json = {}
    mutables: dict[str, records.MutableValue] = {}
    for name, (sequence, payload, cas) in mutable_specs.items():
        signed, encoding = ref_mutable(ed, sequence, payload, cas, times)
        ours = records.sign_mutable(
            ed, SALT, sequence, payload, issued_at=times[0], expires_at=times[1], cas=cas
        )
        assert ours.encoding == encoding, f"mutable {name} disagrees"
        parsed = records.parse_record_untrusted(encoding)
        assert isinstance(parsed, records.MutableValue) and parsed.key == mutable_key
        mutables[name] = parsed
        mutable_json[name] = {
            "sequence": sequence,
            "cas": cas,
            "value": None if payload is None else payload.hex(),
            "signed_bytes": signed.hex(),
            "encoding": encoding.hex(),
        }

    # Messages.
    contact = Contact(identity.peer_record(address=ADDRESSES[0]), *ADDRESSES[0])
    contact6 = Contact(identity.peer_record(address=ADDRESSES[1]), *ADDRESSES[1])
    sender = b"\x01" + ref_contact(der, *ADDRESSES[0])
    record_field = struct.pack(">H", len(peer_encoding)) + peer_encoding
    mutable_field = struct.pack(">H", len(mutables["v1"].encoding)) + mutables["v1"].encoding
    messages: dict[str, tuple[bytes, wire.Message]] = {
        "ping": (ref_message(PING, sender), wire.Ping(contact)),
        "ping_not_listening": (ref_message(PING, b"\x00"), wire.Ping()),
        "pong": (ref_message(PONG, b""), wire.Pong()),
        "find_node": (ref_message(FIND_NODE, sender + TARGET), wire.FindNode(TARGET, contact)),
        "nodes": (
            ref_message(
                NODES, b"\x02" + ref_contact(der, *ADDRESSES[0]) + ref_contact(der, *ADDRESSES[1])
            ),
            wire.Nodes((contact, contact6)),
        ),
        "nodes_empty": (ref_message(NODES, b"\x00"), wire.Nodes(())),
        "find_value": (
            ref_message(FIND_VALUE, b"\x00" + mutable_key + struct.pack(">Q", 1)),
            wire.FindValue(mutable_key, 1),
        ),
        "find_peer": (
            ref_message(FIND_VALUE, sender + peer_id + bytes(8)),
            wire.FindValue(peer_id, 0, contact),
        ),
        "value_peer_record": (ref_message(VALUE, record_field), wire.Value(peer)),
        "store_mutable": (
            ref_message(STORE, sender + mutable_field),
            wire.Store(mutables["v1"], contact),
        ),
        "stored": (ref_message(STORED, b""), wire.Stored()),
        "refused_stale": (ref_message(REFUSED, b"\x01"), wire.Refused(store.Refusal.STALE)),
    }
    messages_json = {}
    for name, (reference, message) in messages.items():
        assert message.encode() == reference, f"message {name} disagrees"
        assert wire.parse_message_untrusted(reference).encode() == reference, f"{name} parse"
        messages_json[name] = reference.hex()

    # Invalid inputs (each must raise DhtProtocolError).
    def flip(data: bytes, index: int) -> bytes:
        return data[:index] + bytes([data[index] ^ 1]) + data[index + 1 :]

    v1 = mutables["v1"].encoding
    big = b"x" * 4097
    bad_contact = bytes(32) + ref_contact(der, *ADDRESSES[0])[32:]
    invalid_records = {
        "mutable_bad_signature": flip(v1, len(v1) - 1),
        "mutable_altered_value": flip(v1, len(v1) - 65),
        "peer_bad_signature": flip(peer_encoding, len(peer_encoding) - 1),
        "peer_altered_address": flip(peer_encoding, len(body) - 3),
        "truncated": v1[:-1],
        "trailing": v1 + b"\x00",
        "oversized_value": ref_immutable(big, ISSUED_AT, EXPIRES_AT),
        "unknown_kind": b"\x04" + v1[1:],
        "expires_before_issued": ref_immutable(value, EXPIRES_AT, ISSUED_AT),
    }
    invalid_messages = {
        "contact_id_mismatch": ref_message(NODES, b"\x01" + bad_contact),
        "too_many_contacts": ref_message(NODES, b"\x15" + ref_contact(der, *ADDRESSES[0]) * 21),
        "truncated": ref_message(FIND_NODE, b"\x00" + TARGET[:-1]),
        "trailing": ref_message(PONG, b"\x00"),
        "oversized": ref_message(PING, b"\x00" + bytes(16383)),
        "unknown_type": ref_message(10, b""),
        "unknown_version": bytes([2, PONG]),
        "unknown_refusal": ref_message(REFUSED, b"\x08"),
        "bad_record_in_store": ref_message(
            STORE, b"\x00" + struct.pack(">H", len(v1)) + flip(v1, len(v1) - 1)
        ),
    }
    invalid_json: Json = {"records": {}, "messages": {}}
    for name, data in invalid_records.items():
        error = _error_of(records.parse_record_untrusted, data)
        invalid_json["records"][name] = {"encoding": data.hex(), "error": error}
    for name, data in invalid_messages.items():
        error = _error_of(wire.parse_message_untrusted, data)
        invalid_json["messages"][name] = {"encoding": data.hex(), "error": error}

    # Store decisions: each scenario is a fresh store fed its steps in order.
    future = records.sign_mutable(
        ed, SALT, 9, b"future", issued_at=NOW + 301, expires_at=NOW + 3600
    )
    too_long = records.sign_mutable(
        ed, SALT, 9, b"long", issued_at=ISSUED_AT, expires_at=ISSUED_AT + 48 * 3600 + 1
    )
    extra = {"future": future, "too_long": too_long}
    named: dict[str, records.Record] = {
        **mutables,
        **extra,
        "peer": peer,
        "immutable": immutable,
    }
    scenarios: dict[str, list[tuple[str, int, str | None]]] = {
        "replay_lower_sequence": [("v2_cas", NOW, None), ("v1", NOW, "STALE")],
        "newer_replaces": [("v1", NOW, None), ("v2_cas", NOW, None), ("v3_tombstone", NOW, None)],
        "equivocation_greater_encoding_wins": _equivocation(mutables),
        "cas_mismatch": [
            ("v1", NOW, None),
            ("v2_cas", NOW, None),
            ("v3_cas_mismatch", NOW, "CAS_MISMATCH"),
        ],
        "cas_on_empty_holder": [("v3_cas_mismatch", NOW, None)],
        "same_bytes_again": [("v1", NOW, None), ("v1", NOW, None)],
        "issued_in_future": [("future", NOW, "FUTURE")],
        "lifetime_too_long": [("too_long", NOW, "LIFETIME")],
        "expired": [("immutable", EXPIRES_AT, "EXPIRED")],
        "peer_record": [("peer", NOW, None), ("peer", NOW, None)],
    }
    scenarios_json = {}
    for name, steps in scenarios.items():
        holder = store.RecordStore()
        for record_name, now, expected in steps:
            result = holder.put_untrusted(named[record_name], "source", now)
            decided = None if result.refusal is None else result.refusal.name
            assert decided == expected, f"scenario {name}: {record_name} gave {decided}"
        scenarios_json[name] = [
            {"record": record_name, "now": now, "refusal": expected}
            for record_name, now, expected in steps
        ]

    document = {
        "description": (
            "p2ptls DHT (SPEC-dht.md) with fixed inputs. Hex is lowercase. The peer record's "
            "RSA-PSS signature is randomised: it is stored once and must verify; every other "
            "byte must match exactly. Store scenarios feed a fresh store with default limits; "
            "refusal null means stored."
        ),
        "inputs": {
            "rsa_private_key_pem": pem,
            "peer_record_signature": stored_signature.hex(),
            "ed25519_seed": ED25519_SEED.hex(),
            "issued_at": ISSUED_AT,
            "expires_at": EXPIRES_AT,
            "now": NOW,
            "addresses": [list(address) for address in ADDRESSES],
            "salt": SALT.hex(),
            "target": TARGET.hex(),
        },
        "peer_id": peer_id.hex(),
        "public_key_der": der.hex(),
        "peer_record": {
            "sequence": 1,
            "signed_bytes": (PEER_LABEL + body).hex(),
            "encoding": peer_encoding.hex(),
        },
        "immutable": {
            "value": value.hex(),
            "key": hashlib.sha256(value).hexdigest(),
            "encoding": immutable_encoding.hex(),
        },
        "mutable": {
            "owner": owner.hex(),
            "key": mutable_key.hex(),
            "records": mutable_json,
            "extra": {name: record.encoding.hex() for name, record in extra.items()},
        },
        "messages": messages_json,
        "invalid": invalid_json,
        "store_scenarios": scenarios_json,
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _equivocation(mutables: dict[str, records.MutableValue]) -> list[tuple[str, int, str | None]]:
    """Two records of sequence 2: the greater encoding replaces the lesser, never the reverse."""
    lesser, greater = "v2", "v2_equivocation"
    if mutables[lesser].encoding > mutables[greater].encoding:
        lesser, greater = greater, lesser
    return [(lesser, NOW, None), (greater, NOW, None), (lesser, NOW, "STALE")]


def main(argv: Sequence[str] | None = None) -> int:
    description = __doc__.splitlines()[0] if __doc__ else None
    return write_or_check({VECTOR_FILE.name: generate()}, argv, description)


if __name__ == "__main__":
    sys.exit(main())
