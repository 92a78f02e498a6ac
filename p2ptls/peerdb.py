"""The peer database: the public records a host trusts, encrypted and authenticated at rest.

File layout (all integers big endian)::

    magic "P2PDB1\\n\\0" (8) | salt (16) | nonce (12) | AES-256-GCM(key, JSON, aad = magic | salt)

The key is ``HKDF-SHA256(ikm = secret, salt = salt, info = "p2ptls1 peer database")`` where the
secret is the network key (default) or any 32-byte secret the application chooses. Every save uses a
fresh salt, so a (key, nonce) pair is never reused. A file that fails authentication, or holds an
entry whose id is not the SHA-256 of its key, is refused as a whole. Saves are atomic (temporary
file, fsync, rename), so a crash leaves the previous database intact.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._errors import PeerDatabaseError
from ._files import StrPath, read_private_file, write_private_file
from .identity import NetworkKey, PeerId, PeerRecord

MAGIC = b"P2PDB1\n\0"
SALT_SIZE = 16
NONCE_SIZE = 12
MAX_DATABASE_SIZE = 64 * 1024 * 1024
_INFO = b"p2ptls1 peer database"


def _database_key(secret: bytes, salt: bytes) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_INFO)
    return AESGCM(hkdf.derive(secret))


class PeerDatabase:
    """A set of :class:`PeerRecord`, keyed by peer id, stored encrypted in one file.

    Use :meth:`open` to load (or start) a database, change it with :meth:`add` and :meth:`remove`,
    and :meth:`save` to write it atomically.
    """

    def __init__(self, path: StrPath, secret: bytes, records: Iterable[PeerRecord] = ()) -> None:
        if len(secret) < 32:
            raise ValueError("the database secret must be at least 32 bytes")
        self.path = Path(path)
        self._secret = secret
        self._records: dict[PeerId, PeerRecord] = {r.peer_id: r for r in records}

    @classmethod
    def open(cls, path: StrPath, key: NetworkKey | bytes) -> PeerDatabase:
        """Load the database at ``path`` (an empty one if the file does not exist yet)."""
        secret = key.secret if isinstance(key, NetworkKey) else key
        database = cls(path, secret)
        if database.path.exists():
            database._records = {r.peer_id: r for r in database._load()}
        return database

    def _load(self) -> list[PeerRecord]:
        blob = read_private_file(self.path, "peer database", MAX_DATABASE_SIZE)
        header = len(MAGIC) + SALT_SIZE + NONCE_SIZE
        if len(blob) > MAX_DATABASE_SIZE or len(blob) < header + 16 or not blob.startswith(MAGIC):
            raise PeerDatabaseError(f"peer database {str(self.path)!r} is not a p2ptls database")
        salt = blob[len(MAGIC) : len(MAGIC) + SALT_SIZE]
        nonce = blob[len(MAGIC) + SALT_SIZE : header]
        try:
            plaintext = _database_key(self._secret, salt).decrypt(
                nonce, blob[header:], MAGIC + salt
            )
        except InvalidTag:
            raise PeerDatabaseError(
                f"peer database {str(self.path)!r} failed authentication "
                "(wrong key, or the file was altered)"
            ) from None
        try:
            document = json.loads(plaintext)
            if document["version"] != 1:
                raise PeerDatabaseError(
                    f"peer database {str(self.path)!r} has version {document['version']!r}; "
                    "this p2ptls reads version 1"
                )
            entries = document["peers"]
            if not isinstance(entries, list):
                raise TypeError("peers is not a list")
        except (ValueError, KeyError, TypeError):
            raise PeerDatabaseError(f"peer database {str(self.path)!r} is malformed") from None
        return [PeerRecord.from_dict(entry) for entry in entries]

    def save(self) -> None:
        """Write the database atomically (mode 0600)."""
        payload = json.dumps(
            {"version": 1, "peers": [r.to_dict() for r in self._records.values()]}, sort_keys=True
        ).encode()
        salt = os.urandom(SALT_SIZE)
        nonce = os.urandom(NONCE_SIZE)
        sealed = _database_key(self._secret, salt).encrypt(nonce, payload, MAGIC + salt)
        write_private_file(self.path, MAGIC + salt + nonce + sealed)

    def add(self, record: PeerRecord) -> None:
        """Add or replace a peer (saved on :meth:`save`)."""
        self._records[record.peer_id] = record

    def remove(self, peer_id: PeerId) -> None:
        self._records.pop(peer_id, None)

    def get(self, peer_id: PeerId) -> PeerRecord | None:
        return self._records.get(peer_id)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._records

    def __iter__(self) -> Iterator[PeerRecord]:
        return iter(list(self._records.values()))

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"<PeerDatabase {str(self.path)!r}: {len(self)} peers>"
