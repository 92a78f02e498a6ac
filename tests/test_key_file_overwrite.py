"""Key files are never silently overwritten: ``FileExistsError`` unless ``overwrite=True``."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from p2ptls import Identity, NetworkKey, generate_psk
from p2ptls.state.facade import generate_key


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_identity_save_refuses_an_existing_file(
    tmp_path: Path, identities: tuple[Identity, ...]
) -> None:
    path = tmp_path / "alice.key"
    identities[0].save(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError) as caught:
        identities[1].save(path)
    assert caught.value.filename == str(path)
    assert "overwrite=True" in str(caught.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice.key"]  # no temporary left
    identities[1].save(path, overwrite=True)
    assert Identity.load(path).peer_id == identities[1].peer_id
    assert _mode(path) == 0o600


def test_network_key_save_and_generate_psk_refuse_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "network.psk"
    first = generate_psk(path)
    with pytest.raises(FileExistsError):
        generate_psk(path)
    with pytest.raises(FileExistsError):
        NetworkKey.generate().save(path)
    assert NetworkKey.load(path) == first
    second = generate_psk(path, overwrite=True)
    assert NetworkKey.load(path) == second
    assert _mode(path) == 0o600


def test_facade_generate_key_refuses_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "network.key"
    key = generate_key(path)
    with pytest.raises(FileExistsError):
        generate_key(path)
    assert NetworkKey.load(path) == key


def test_a_symlink_in_the_way_is_refused_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    link = tmp_path / "network.psk"
    os.symlink(elsewhere, link)  # dangling: a plain open(O_CREAT) would create `elsewhere`
    with pytest.raises(FileExistsError):
        generate_psk(link)
    assert not elsewhere.exists()


def test_a_new_key_file_is_0600_whatever_the_umask(
    tmp_path: Path, identities: tuple[Identity, ...]
) -> None:
    old = os.umask(0)
    try:
        identities[0].save(tmp_path / "a.key")
        generate_psk(tmp_path / "a.psk")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.key") == 0o600
    assert _mode(tmp_path / "a.psk") == 0o600
