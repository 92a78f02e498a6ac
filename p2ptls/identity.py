"""Identities, peer ids, peer records and the network pre-shared key.

A peer's identity is an RSA key pair; its :class:`PeerId` is the SHA-256 of the DER encoding of its
public key (SubjectPublicKeyInfo), so nobody can claim an id without holding the matching key and a
record whose id and key disagree is refused everywhere.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from typing import Any

import attrs
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ._errors import KeyFileError, PeerDatabaseError
from ._files import StrPath, create_private_file, read_private_file, write_private_file

DEFAULT_KEY_BITS = 3072
ALLOWED_KEY_BITS = (2048, 3072, 4096)
PSK_SIZE = 32
_PSK_HEADER = b"p2ptls-network-key-v1 "


PSS_SALT_LENGTH = 32
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT_LENGTH)


def _oaep(label: bytes) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label)


@attrs.frozen(order=True)
class PeerId:
    """A peer's id: the SHA-256 of its public key (32 bytes)."""

    digest: bytes = attrs.field(repr=False)
    """The 32 raw bytes."""

    @digest.validator
    def _check(self, _attribute: Any, value: bytes) -> None:
        if not isinstance(value, bytes) or len(value) != 32:
            raise ValueError("a peer id is 32 bytes")

    @classmethod
    def for_public_key(cls, public_key_der: bytes) -> PeerId:
        """The id of a DER SubjectPublicKeyInfo."""
        return cls(hashlib.sha256(public_key_der).digest())

    @classmethod
    def from_hex(cls, text: str) -> PeerId:
        """Parse the 64-character hex form."""
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ValueError("a peer id is 64 hex digits") from None
        return cls(raw)

    def hex(self) -> str:
        """The full 64-character hex form."""
        return self.digest.hex()

    @property
    def short(self) -> str:
        """The first 12 hex digits, for display."""
        return self.digest.hex()[:12]

    def __str__(self) -> str:
        return self.hex()

    def __repr__(self) -> str:
        return f"PeerId({self.short}…)"


def _load_public_key(der: bytes) -> rsa.RSAPublicKey:
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("not a DER RSA public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")
    numbers = key.public_numbers()
    if key.key_size not in ALLOWED_KEY_BITS or numbers.e != 65537:
        raise ValueError("RSA key size must be 2048, 3072 or 4096 bits with e = 65537")
    if numbers.n % 2 == 0 or numbers.n.bit_length() != key.key_size:
        raise ValueError("malformed RSA modulus")
    # One key, one id: a PKCS#1 RSAPublicKey (or any other encoding the parser accepts) of the
    # same key would hash to a second peer id, so only the canonical SubjectPublicKeyInfo DER is.
    canonical = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if canonical != der:
        raise ValueError("not the canonical DER SubjectPublicKeyInfo of an RSA key")
    return key


@attrs.frozen(eq=False)
class PeerRecord:
    """What a host knows about another peer: its id, public key, and where to reach it.

    Build with :meth:`from_public_key` or :meth:`from_dict`; the id is always the hash of the key.
    """

    peer_id: PeerId
    """SHA-256 of ``public_key_der``."""
    public_key_der: bytes = attrs.field(repr=False)
    """The peer's RSA public key, DER SubjectPublicKeyInfo."""
    name: str = ""
    """A human label (not authenticated)."""
    address: tuple[str, int] | None = None
    """Where the peer listens, if it does: ``(host, port)``."""
    public_key: rsa.RSAPublicKey = attrs.field(repr=False, eq=False, init=False)
    """The parsed key."""

    def __attrs_post_init__(self) -> None:
        if PeerId.for_public_key(self.public_key_der) != self.peer_id:
            raise PeerDatabaseError("peer id is not the SHA-256 of the public key")
        object.__setattr__(self, "public_key", _load_public_key(self.public_key_der))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PeerRecord):
            return NotImplemented
        return (self.peer_id, self.name, self.address) == (other.peer_id, other.name, other.address)

    def __hash__(self) -> int:
        return hash(self.peer_id)

    @classmethod
    def from_public_key(
        cls, public_key_der: bytes, *, name: str = "", address: tuple[str, int] | None = None
    ) -> PeerRecord:
        """Build a record from a DER public key; raises ``ValueError`` for a key we refuse."""
        return cls(PeerId.for_public_key(public_key_der), public_key_der, name, address)

    def with_address(self, host: str, port: int) -> PeerRecord:
        """A copy with a new address."""
        return attrs.evolve(self, address=(host, port))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "peer_id": self.peer_id.hex(),
            "public_key": base64.b64encode(self.public_key_der).decode("ascii"),
            "name": self.name,
            "address": list(self.address) if self.address else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeerRecord:
        """Inverse of :meth:`to_dict`; refuses an entry whose id is not the hash of its key."""
        try:
            der = base64.b64decode(data["public_key"], validate=True)
            claimed = PeerId.from_hex(data["peer_id"])
            address = data.get("address")
            parsed_address = (str(address[0]), int(address[1])) if address else None
            record = cls.from_public_key(
                der, name=str(data.get("name", "")), address=parsed_address
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise PeerDatabaseError(f"malformed peer entry: {exc}") from None
        if record.peer_id != claimed:
            raise PeerDatabaseError(f"peer entry {claimed.short}: id is not the hash of its key")
        return record


class Identity:
    """This peer's RSA key pair. The private key never appears in a repr, log or error."""

    def __init__(self, private_key: rsa.RSAPrivateKey) -> None:
        if private_key.key_size not in ALLOWED_KEY_BITS:
            raise ValueError("RSA key size must be 2048, 3072 or 4096 bits")
        self._private_key = private_key
        der = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.record: PeerRecord = PeerRecord.from_public_key(der)
        """The public half, as a peer record others can trust."""

    @classmethod
    def generate(cls, bits: int = DEFAULT_KEY_BITS) -> Identity:
        """A fresh RSA key pair (3072 bits unless told otherwise)."""
        if bits not in ALLOWED_KEY_BITS:
            raise ValueError("RSA key size must be 2048, 3072 or 4096 bits")
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=bits))

    @property
    def peer_id(self) -> PeerId:
        return self.record.peer_id

    @property
    def key_size(self) -> int:
        return self._private_key.key_size

    def peer_record(self, *, name: str = "", address: tuple[str, int] | None = None) -> PeerRecord:
        """This identity's public record, with a label and address to hand to other peers."""
        return attrs.evolve(self.record, name=name, address=address)

    def save(
        self, path: StrPath, passphrase: bytes | None = None, *, overwrite: bool = False
    ) -> None:
        """Write the private key as PKCS#8 PEM, mode 0600, encrypted if a passphrase is given.

        Refuses to replace an existing file (``FileExistsError``) unless ``overwrite=True``; the
        file appears whole or not at all.
        """
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        pem = self._private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        _write_key_file(path, pem, "identity key file", overwrite)

    @classmethod
    def load(cls, path: StrPath, passphrase: bytes | None = None) -> Identity:
        """Read a key written by :meth:`save`; refuses files others can read."""
        pem = read_private_file(path, "identity key file")
        try:
            key = serialization.load_pem_private_key(pem, password=passphrase)
        except TypeError:
            raise KeyFileError(
                f"identity key file {str(path)!r}: passphrase missing or not needed"
            ) from None
        except (ValueError, UnsupportedAlgorithm):
            raise KeyFileError(
                f"identity key file {str(path)!r}: wrong passphrase or not a PEM private key"
            ) from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise KeyFileError(f"identity key file {str(path)!r} does not hold an RSA key")
        return cls(key)

    def sign_pss(self, data: bytes) -> bytes:
        """RSA-PSS signature of ``data``: SHA-256, MGF1-SHA-256, salt length 32.

        The only signature an identity makes (state epoch certificates); callers prefix ``data``
        with a context string of their own so no signature serves two purposes.
        """
        return self._private_key.sign(data, _PSS, hashes.SHA256())

    def decrypt_untrusted(self, ciphertext: bytes, label: bytes) -> bytes | None:
        """RSA-OAEP(SHA-256) decryption; ``None`` on any failure (no detail, no exception)."""
        try:
            return self._private_key.decrypt(ciphertext, _oaep(label))
        except ValueError:
            return None

    def __repr__(self) -> str:
        return f"Identity({self.peer_id!r}, rsa{self.key_size})"


def encrypt_to(record: PeerRecord, plaintext: bytes, label: bytes) -> bytes:
    """RSA-OAEP(SHA-256) encryption to a peer's public key."""
    return record.public_key.encrypt(plaintext, _oaep(label))


@attrs.frozen(repr=False)
class NetworkKey:
    """The network's pre-shared key: 32 random bytes every member holds. Proves membership only."""

    secret: bytes = attrs.field(repr=False)

    @secret.validator
    def _check(self, _attribute: Any, value: bytes) -> None:
        if len(value) != PSK_SIZE:
            raise ValueError("a network key is 32 bytes")

    @classmethod
    def generate(cls) -> NetworkKey:
        return cls(secrets.token_bytes(PSK_SIZE))

    def save(self, path: StrPath, *, overwrite: bool = False) -> None:
        """Write the key file, mode 0600, atomically.

        Refuses to replace an existing file (``FileExistsError``) unless ``overwrite=True``.
        """
        data = _PSK_HEADER + base64.b64encode(self.secret) + b"\n"
        _write_key_file(path, data, "network key file", overwrite)

    @classmethod
    def load(cls, path: StrPath) -> NetworkKey:
        """Read a key file; refuses files others can read and malformed contents."""
        data = read_private_file(path, "network key file").strip()
        if not data.startswith(_PSK_HEADER):
            raise KeyFileError(f"network key file {str(path)!r} is not a p2ptls network key")
        try:
            secret = base64.b64decode(data[len(_PSK_HEADER) :], validate=True)
        except ValueError:
            raise KeyFileError(f"network key file {str(path)!r} is malformed") from None
        if len(secret) != PSK_SIZE:
            raise KeyFileError(f"network key file {str(path)!r} is malformed")
        return cls(secret)

    @property
    def fingerprint(self) -> str:
        """A short public fingerprint, safe to print, for checking two hosts share a key."""
        return hashlib.sha256(b"p2ptls1 psk fingerprint" + self.secret).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"NetworkKey(fingerprint={self.fingerprint})"


def generate_psk(path: StrPath | None = None, *, overwrite: bool = False) -> NetworkKey:
    """Create a network key, writing it to ``path`` (mode 0600) when given.

    Refuses to replace an existing file (``FileExistsError``) unless ``overwrite=True``.
    """
    key = NetworkKey.generate()
    if path is not None:
        key.save(path, overwrite=overwrite)
    return key


def _write_key_file(path: StrPath, data: bytes, what: str, overwrite: bool) -> None:
    if overwrite:
        write_private_file(path, data)
    else:
        create_private_file(path, data, what)


def random_bytes(size: int) -> bytes:
    """Cryptographically secure random bytes."""
    return os.urandom(size)
