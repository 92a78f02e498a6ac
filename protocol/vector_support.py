"""What the vector builders share when they drive p2ptls with the fixed inputs.

:class:`Party` is one of the two members (a p2ptls ``Identity`` and the PEM it was read from; it
is what :mod:`protocol.handshake_reference` calls a ``Member``), :class:`ScriptedRandomness` a
``randomness=`` hook that hands out the scripted bytes, :func:`oaep_hook` the fixed-seed OAEP of
:mod:`protocol.fixed_oaep`, and :func:`require` stops the generator wherever p2ptls and the
reference disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from p2ptls.identity import Identity
from protocol.fixed_oaep import OaepEncrypt, fixed_seed_oaep
from protocol.handshake_reference import HELLO_OAEP_LABEL, REPLY_OAEP_LABEL
from protocol.vector_inputs import SEED_HELLO, SEED_REPLY


def rsa_key_from_pem(pem: str | None) -> tuple[rsa.RSAPrivateKey, str]:
    """The RSA key a generator stored as ``pem`` (a fixed input, so the vectors never change),
    or a new 2048-bit one when there is none yet; with its PEM either way."""
    if pem is None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")
        return key, pem
    loaded = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    assert isinstance(loaded, rsa.RSAPrivateKey)
    return loaded, pem


@dataclass
class Party:
    """A member as the vectors use it: ``identity`` for p2ptls, ``pem`` for ``handshake.json``."""

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


def require(condition: bool, what: str) -> None:
    """Stop the generator, writing nothing, if p2ptls and the reference disagree on ``what``."""
    if not condition:
        raise SystemExit(f"p2ptls disagrees with the reference (SPEC.md) on: {what}")


def oaep_hook() -> OaepEncrypt:
    """The ``oaep_encrypt=`` hook of the handshake with the fixed seeds of the vectors."""
    return fixed_seed_oaep({HELLO_OAEP_LABEL: SEED_HELLO, REPLY_OAEP_LABEL: SEED_REPLY})
