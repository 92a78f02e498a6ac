"""The encrypted peer database (hostile inputs 39 and 40)."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import pytest

import p2ptls
from p2ptls import PeerDatabase, PeerDatabaseError, PeerRecord
from p2ptls.peerdb import MAGIC, NONCE_SIZE, SALT_SIZE, _database_key


def test_round_trip_is_encrypted_and_private(tmp_path: Path, identities) -> None:
    psk = p2ptls.generate_psk()
    path = tmp_path / "peers.db"
    database = PeerDatabase.open(path, psk)
    alice = identities[0].peer_record(name="alice", address=("127.0.0.1", 4000))
    database.add(alice)
    database.add(identities[1].record)
    database.save()

    assert path.stat().st_mode & 0o777 == 0o600
    raw = path.read_bytes()
    assert raw.startswith(MAGIC)
    assert b"alice" not in raw and alice.peer_id.hex().encode() not in raw

    loaded = PeerDatabase.open(path, psk)
    assert len(loaded) == 2
    restored = loaded.get(alice.peer_id)
    assert restored == alice
    assert restored is not None and restored.public_key_der == alice.public_key_der


def test_wrong_key_or_altered_file_is_refused(tmp_path: Path, identities) -> None:
    psk = p2ptls.generate_psk()
    path = tmp_path / "peers.db"
    database = PeerDatabase.open(path, psk)
    database.add(identities[0].record)
    database.save()

    with pytest.raises(PeerDatabaseError, match="failed authentication"):
        PeerDatabase.open(path, p2ptls.generate_psk())

    blob = bytearray(path.read_bytes())
    blob[len(MAGIC) + SALT_SIZE + NONCE_SIZE + 3] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(PeerDatabaseError, match="failed authentication"):
        PeerDatabase.open(path, psk)


def test_entry_whose_id_is_not_the_hash_of_its_key_is_refused(tmp_path: Path, identities) -> None:
    psk = p2ptls.generate_psk()
    path = tmp_path / "peers.db"
    database = PeerDatabase.open(path, psk)
    database.save()
    # Forge a correctly encrypted database whose entry pairs bob's id with alice's key.
    entry = identities[0].record.to_dict()
    entry["peer_id"] = identities[1].peer_id.hex()
    payload = json.dumps({"version": 1, "peers": [entry]}).encode()
    salt, nonce = os.urandom(SALT_SIZE), os.urandom(NONCE_SIZE)
    sealed = _database_key(psk.secret, salt).encrypt(nonce, payload, MAGIC + salt)
    path.write_bytes(MAGIC + salt + nonce + sealed)
    with pytest.raises(PeerDatabaseError, match="not the hash of its key"):
        PeerDatabase.open(path, psk)


def test_record_constructor_refuses_mismatched_id(identities) -> None:
    with pytest.raises(PeerDatabaseError):
        PeerRecord(identities[1].peer_id, identities[0].record.public_key_der)


def test_crash_during_save_leaves_previous_contents(
    tmp_path: Path, identities, monkeypatch
) -> None:
    psk = p2ptls.generate_psk()
    path = tmp_path / "peers.db"
    database = PeerDatabase.open(path, psk)
    database.add(identities[0].record)
    database.save()
    before = path.read_bytes()

    database.add(identities[1].record)

    def crash(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        database.save()
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["peers.db"]  # no temporary file left
    assert len(PeerDatabase.open(path, psk)) == 1


def test_group_readable_database_is_refused(tmp_path: Path) -> None:
    psk = p2ptls.generate_psk()
    path = tmp_path / "peers.db"
    PeerDatabase.open(path, psk).save()
    path.chmod(0o640)
    with pytest.raises(p2ptls.KeyFileError, match="chmod 600"):
        PeerDatabase.open(path, psk)


def _seal(psk: p2ptls.NetworkKey, document: bytes) -> bytes:
    salt, nonce = os.urandom(SALT_SIZE), os.urandom(NONCE_SIZE)
    sealed = _database_key(psk.secret, salt).encrypt(nonce, document, MAGIC + salt)
    return MAGIC + salt + nonce + sealed


def test_a_database_of_another_version_is_refused(tmp_path: Path) -> None:
    psk = p2ptls.generate_psk()
    path = tmp_path / "peers.db"
    path.write_bytes(_seal(psk, json.dumps({"version": 2, "peers": []}).encode()))
    path.chmod(0o600)
    with pytest.raises(PeerDatabaseError, match="version 2"):
        PeerDatabase.open(path, psk)


def test_an_oversized_database_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    limit = p2ptls.peerdb.MAX_DATABASE_SIZE
    path = tmp_path / "peers.db"
    with path.open("wb") as sparse:  # sparse: four times the limit on paper, no disk used
        sparse.write(MAGIC)
        sparse.truncate(4 * limit)
    path.chmod(0o600)
    tracemalloc.start()
    try:
        with pytest.raises(PeerDatabaseError, match="not a p2ptls database"):
            PeerDatabase.open(path, p2ptls.generate_psk())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * limit
