"""Signatures of the state network: epoch certificates (RSA-PSS) and batch signatures (Ed25519).

Theory of operation
-------------------
An RSA private-key operation costs milliseconds, so owners do not sign updates with their RSA
identity. At every start a node makes a fresh Ed25519 key and signs, once, an *epoch certificate*
with its RSA identity: RSA-PSS (SHA-256, MGF1-SHA-256, salt length 32 on signing *and* verifying,
never ``PSS.AUTO``) over ``CERT_CONTEXT | network id | owner id | epoch | Ed25519 public key``.
Each batch of records is then signed with Ed25519 over ``BATCH_CONTEXT | batch body``. A receiver
verifies the certificate once per (owner, epoch) and then one Ed25519 signature per batch.

The RSA identity key also decrypts handshake secrets (RSA-OAEP); the fixed context strings keep the
two uses apart (no OAEP ciphertext is ever a valid PSS signature input of this form, and PSS
signatures are only made over these context-prefixed bodies).
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .._keyschedule import ZERO_SALT, expand_label, hkdf_extract
from ..identity import Identity, NetworkKey, PeerRecord
from . import _wire as wire
from .errors import BadSignature, ForeignNetwork

CERT_CONTEXT = b"p2ptls1 state epoch certificate\x00"
BATCH_CONTEXT = b"p2ptls1 state batch\x00"
PSS_SALT_LENGTH = 32


def network_id(psk: NetworkKey | bytes) -> bytes:
    """``ExpandLabel(Extract(0^32, psk), "state network id", "", 32)``."""
    secret = psk.secret if isinstance(psk, NetworkKey) else psk
    return expand_label(hkdf_extract(ZERO_SALT, secret), "state network id", b"", 32)


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT_LENGTH)


def record_hash(raw: bytes) -> bytes:
    """The leaf a batch signs for one record: SHA-256 of its exact bytes."""
    return hashlib.sha256(raw).digest()


def sign_certificate(
    identity: Identity, network: bytes, epoch: int, signing_key: Ed25519PublicKey
) -> wire.EpochCertificate:
    """Certify ``signing_key`` for ``epoch`` with the identity's RSA key (RSA-PSS, salt 32)."""
    raw_key = signing_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    owner = identity.peer_id.digest
    unsigned = wire.EpochCertificate(network, owner, epoch, raw_key, b"", b"")
    signature = identity.sign_pss(CERT_CONTEXT + unsigned.body)
    return wire.EpochCertificate(
        network, owner, epoch, raw_key, signature, identity.record.public_key_der
    )


def verify_certificate(
    certificate: wire.EpochCertificate, network: bytes
) -> tuple[Ed25519PublicKey, PeerRecord]:
    """Check a certificate; return its Ed25519 key and the owner's identity record.

    Raises :class:`ForeignNetwork` for another network's certificate and :class:`BadSignature`
    if the carried key is not the owner's (``SHA-256(key) != owner``), is not an acceptable RSA
    key, or the signature fails.
    """
    if certificate.network_id != network:
        raise ForeignNetwork("certificate of another state network")
    if hashlib.sha256(certificate.public_key_der).digest() != certificate.owner:
        raise BadSignature("certificate key is not the owner's")
    try:
        owner = PeerRecord.from_public_key(certificate.public_key_der)
    except ValueError:
        raise BadSignature("certificate carries an unacceptable key") from None
    if len(certificate.signature) != owner.public_key.key_size // 8:
        raise BadSignature("certificate signature has the wrong length")
    try:
        owner.public_key.verify(
            certificate.signature, CERT_CONTEXT + certificate.body, _pss(), hashes.SHA256()
        )
    except InvalidSignature:
        raise BadSignature("certificate signature does not verify") from None
    try:
        key = Ed25519PublicKey.from_public_bytes(certificate.signing_key)
    except ValueError:
        raise BadSignature("certificate carries a malformed signing key") from None
    return key, owner


def verify_batch(key: Ed25519PublicKey, batch: wire.Batch) -> bool:
    """Whether ``batch.signature`` is ``key``'s Ed25519 signature over the batch body."""
    try:
        key.verify(batch.signature, BATCH_CONTEXT + batch.body)
    except InvalidSignature:
        return False
    return True


class EpochSigner:
    """An owner's signing key for one epoch, with its certificate.

    Create with :meth:`create` (a fresh key, certified by the identity: one RSA signature).
    """

    def __init__(self, private_key: Ed25519PrivateKey, certificate: wire.EpochCertificate) -> None:
        self._private_key = private_key
        self.certificate = certificate

    @classmethod
    def create(
        cls,
        identity: Identity,
        network: bytes,
        epoch: int,
        private_key: Ed25519PrivateKey | None = None,
    ) -> EpochSigner:
        """Certify a fresh (or the given) Ed25519 key for ``epoch``. Costs one RSA signature."""
        key = private_key or Ed25519PrivateKey.generate()
        return cls(key, sign_certificate(identity, network, epoch, key.public_key()))

    @property
    def epoch(self) -> int:
        return self.certificate.epoch

    def sign_batch(
        self, owner: bytes, first_seq: int, hashes_: list[bytes], network: bytes
    ) -> wire.Batch:
        """Sign a batch of record hashes starting at ``first_seq`` in this epoch."""
        body = wire.encode_batch_body(network, owner, self.epoch, first_seq, hashes_)
        signature = self._private_key.sign(BATCH_CONTEXT + body)
        return wire.Batch(network, owner, self.epoch, first_seq, len(hashes_), body, signature)

    def __repr__(self) -> str:
        return f"EpochSigner(epoch={self.epoch})"
