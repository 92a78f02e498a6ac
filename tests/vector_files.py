"""Reading the core known-answer vectors (``protocol/vectors/*.json`` but ``mux``, ``sllp`` and
``state``) for the tests that check p2ptls against them.

The tests take every input from the JSON, not from the generator: ``load`` reads a file,
``inputs`` the fixed inputs of ``handshake.json``, ``schedule`` the key-schedule values by name,
``identities`` the two members from their stored PEM keys, ``oaep_hook`` the fixed-seed OAEP with
the stored seeds, ``flight`` a handshake record, and ``message``/``message_plaintexts`` the
fragmented message of ``fragmentation.json`` and the plaintext of each of its records.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from p2ptls._handshake import HELLO_OAEP_LABEL, REPLY_OAEP_LABEL
from p2ptls.identity import Identity
from protocol.fixed_oaep import OaepEncrypt, fixed_seed_oaep

VECTORS = Path(__file__).resolve().parent.parent / "protocol" / "vectors"


@functools.cache
def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def inputs() -> Any:
    return load("handshake.json")["inputs"]


def schedule() -> dict[str, bytes]:
    return {step["name"]: h(step["output"]) for step in load("key_schedule.json")["steps"]}


@functools.cache
def identities() -> tuple[Identity, Identity]:
    """(initiator, responder) from the PEM keys stored in handshake.json."""
    out = []
    for role in ("initiator", "responder"):
        pem = inputs()[role]["private_key_pem"].encode("ascii")
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        out.append(Identity(key))
    return out[0], out[1]


def oaep_hook() -> OaepEncrypt:
    return fixed_seed_oaep(
        {
            HELLO_OAEP_LABEL: h(inputs()["oaep_seed_hello"]),
            REPLY_OAEP_LABEL: h(inputs()["oaep_seed_reply"]),
        }
    )


def flight(name: str) -> bytes:
    return h(load("handshake.json")["flights"][name]["record"])


def message() -> bytes:
    vector = load("fragmentation.json")["message"]
    data = bytes(i % 251 for i in range(vector["length"]))
    assert hashlib.sha256(data).hexdigest() == vector["sha256"]
    return data


def message_plaintexts() -> list[bytes]:
    data = message()
    out = []
    for index, fragment in enumerate(load("fragmentation.json")["fragments"]):
        part = data[fragment["offset"] : fragment["offset"] + fragment["size"]]
        out.append(len(data).to_bytes(4, "big") + part if index == 0 else part)
    return out
