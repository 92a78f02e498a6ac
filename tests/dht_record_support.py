"""Helpers shared by the DHT record, store and wire tests: fixed Ed25519 owners and records
signed at fixed times."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2ptls.dht import _records as records

T0 = 1_767_225_600
"""Every test record is issued at this time (2026-01-01) unless told otherwise."""
LIFETIME = 24 * 3600


def owner(name: str = "owner") -> Ed25519PrivateKey:
    """A fixed Ed25519 key per name."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(name.encode()).digest())


def mutable(
    sequence: int,
    value: bytes | None = b"value",
    *,
    key: Ed25519PrivateKey | None = None,
    salt: bytes = b"salt",
    cas: int | None = None,
    issued_at: int = T0,
    lifetime: int = LIFETIME,
) -> records.MutableValue:
    """A mutable value of ``owner()`` (or ``key``) under ``salt``."""
    return records.sign_mutable(
        key or owner(),
        salt,
        sequence,
        value,
        issued_at=issued_at,
        expires_at=issued_at + lifetime,
        cas=cas,
    )


def immutable(
    value: bytes, issued_at: int = T0, lifetime: int = LIFETIME
) -> records.ImmutableValue:
    return records.make_immutable(value, issued_at, issued_at + lifetime)
