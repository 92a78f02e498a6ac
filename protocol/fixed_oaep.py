"""RSA-OAEP encryption with a caller-chosen seed, for known-answer vectors only.

TEST-ONLY CODE. Never use it in production: OAEP is secure only with a fresh random seed per
encryption, and this module exists precisely to make the seed fixed so that handshake vectors are
reproducible. p2ptls itself encrypts with :func:`p2ptls.identity.encrypt_to` (OpenSSL, random seed).

This is EME-OAEP encoding exactly as RFC 8017 section 7.1.1 (hash SHA-256, MGF1 with SHA-256, the
p2ptls label) followed by the raw RSA public operation ``c = m^e mod n`` (RSAEP, section 5.1.1).
Any standard RSA-OAEP-SHA256 decryptor accepts its output; the vector tests prove that with
:meth:`p2ptls.identity.Identity.decrypt_untrusted`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric import rsa

if TYPE_CHECKING:  # only a type: the reference implementations import nothing of p2ptls
    from p2ptls.identity import PeerRecord

HASH_SIZE = 32

OaepEncrypt = Callable[["PeerRecord", bytes, bytes], bytes]


def mgf1_sha256(seed: bytes, length: int) -> bytes:
    """MGF1 (RFC 8017 appendix B.2.1) with SHA-256."""
    output = bytearray()
    counter = 0
    while len(output) < length:
        output += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return bytes(output[:length])


def _xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right, strict=True))


def eme_oaep_encode(message: bytes, label: bytes, seed: bytes, modulus_bytes: int) -> bytes:
    """EM = 0x00 | maskedSeed | maskedDB (RFC 8017 section 7.1.1 step 2), ``modulus_bytes`` long."""
    if len(seed) != HASH_SIZE:
        raise ValueError("the OAEP seed is 32 bytes (hLen of SHA-256)")
    if len(message) > modulus_bytes - 2 * HASH_SIZE - 2:
        raise ValueError("message too long for RSA-OAEP-SHA256 with this modulus")
    label_hash = hashlib.sha256(label).digest()
    padding = bytes(modulus_bytes - len(message) - 2 * HASH_SIZE - 2)
    data_block = label_hash + padding + b"\x01" + message
    masked_db = _xor(data_block, mgf1_sha256(seed, modulus_bytes - HASH_SIZE - 1))
    masked_seed = _xor(seed, mgf1_sha256(masked_db, HASH_SIZE))
    return b"\x00" + masked_seed + masked_db


def rsaep(public_key: rsa.RSAPublicKey, encoded: bytes) -> bytes:
    """The raw RSA public operation on an encoded message, I2OSP'd to the modulus length."""
    numbers = public_key.public_numbers()
    modulus_bytes = (numbers.n.bit_length() + 7) // 8
    m = int.from_bytes(encoded, "big")
    if m >= numbers.n:
        raise ValueError("message representative out of range")
    return pow(m, numbers.e, numbers.n).to_bytes(modulus_bytes, "big")


def oaep_encrypt_with_seed(
    public_key: rsa.RSAPublicKey, message: bytes, label: bytes, seed: bytes
) -> bytes:
    """RSAES-OAEP-ENCRYPT (RFC 8017 section 7.1.1) with SHA-256, MGF1-SHA256 and a fixed seed."""
    modulus_bytes = (public_key.key_size + 7) // 8
    return rsaep(public_key, eme_oaep_encode(message, label, seed, modulus_bytes))


def fixed_seed_oaep(seeds: dict[bytes, bytes]) -> OaepEncrypt:
    """An ``oaep_encrypt=`` hook for the handshake: the seed is chosen by the OAEP label.

    ``seeds`` maps each label (``b"p2ptls1 hello"``, ``b"p2ptls1 reply"``) to its 32-byte seed.
    """

    def encrypt(recipient: PeerRecord, plaintext: bytes, label: bytes) -> bytes:
        return oaep_encrypt_with_seed(recipient.public_key, plaintext, label, seeds[label])

    return encrypt
