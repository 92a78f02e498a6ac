"""Key files at rest: files others can read (37 below) and encrypted identities (38 below).

Identity and network-key files are written with mode 0600 whatever the umask; a file that group
or others may read or write is refused with a message that names the file and the fix; a
passphrase-encrypted identity loads only with its passphrase, and a wrong one is a clean
:class:`~p2ptls.KeyFileError` (no traceback from the crypto library, no key material).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from p2ptls import Identity, KeyFileError, NetworkKey, generate_psk
from p2ptls.__main__ import main as cli
from p2ptls.identity import encrypt_to

PASSPHRASE = b"correct horse battery staple"
UNSAFE_MODES = [0o640, 0o604, 0o644, 0o660, 0o620, 0o602, 0o606, 0o666, 0o610, 0o601]


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_key(kind: str, path: Path, identity: Identity) -> Callable[[], object]:
    """Write a key file of ``kind`` and return how to load it."""
    if kind == "identity":
        identity.save(path)
        return lambda: Identity.load(path)
    key = NetworkKey.generate()
    key.save(path)
    return lambda: NetworkKey.load(path)


# -- 37. files readable by group or others ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["identity", "network key"])
def test_key_files_are_written_0600_whatever_the_umask(
    kind: str, tmp_path: Path, identities: tuple[Identity, ...]
) -> None:
    path = tmp_path / "key"
    with umask(0):
        load = write_key(kind, path, identities[0])
    assert mode_of(path) == 0o600
    load()  # and it loads back
    # Rewriting (on request) keeps the mode, and leaves no temporary file behind.
    with umask(0):
        if kind == "identity":
            identities[0].save(path, overwrite=True)
        else:
            NetworkKey.generate().save(path, overwrite=True)
    assert mode_of(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]


def test_generate_psk_writes_0600(tmp_path: Path) -> None:
    path = tmp_path / "network.key"
    with umask(0o022):
        key = generate_psk(path)
    assert mode_of(path) == 0o600
    assert NetworkKey.load(path) == key


@pytest.mark.parametrize("kind", ["identity", "network key"])
@pytest.mark.parametrize("mode", UNSAFE_MODES, ids=oct)
def test_key_file_open_to_group_or_others_is_refused_naming_the_file_and_the_fix(
    kind: str, mode: int, tmp_path: Path, identities: tuple[Identity, ...]
) -> None:
    path = tmp_path / "key file"
    load = write_key(kind, path, identities[0])
    contents = path.read_bytes()
    path.chmod(mode)
    with pytest.raises(KeyFileError) as info:
        load()
    message = str(info.value)
    assert str(path) in message
    assert "chmod 600" in message
    assert f"{mode:04o}" in message
    secret_lines = [line for line in contents.decode().splitlines() if "-----" not in line]
    assert not any(line in message for line in secret_lines)  # no key material
    path.chmod(0o600)  # the fix the message names
    load()


def test_cli_refuses_to_start_with_an_exposed_identity(
    tmp_path: Path, identities: tuple[Identity, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node.pem"
    identities[0].save(path)
    path.chmod(0o644)
    with pytest.raises(SystemExit) as info:
        cli(["identity", "show", str(path)])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert str(path) in err and "chmod 600" in err
    assert "Traceback" not in err


def test_missing_key_file_is_a_clean_refusal(tmp_path: Path) -> None:
    path = tmp_path / "absent.pem"
    with pytest.raises(KeyFileError, match="does not exist") as info:
        Identity.load(path)
    assert str(path) in str(info.value)


def test_malformed_network_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "network.key"
    path.write_bytes(b"p2ptls-network-key-v1 c2hvcnQ=\n")
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="malformed"):
        NetworkKey.load(path)
    path.write_bytes(b"something else entirely\n")
    with pytest.raises(KeyFileError, match="not a p2ptls network key"):
        NetworkKey.load(path)


# -- 38. an identity encrypted at rest -------------------------------------------------------------


def test_passphrase_encrypted_identity_round_trips(
    tmp_path: Path, identities: tuple[Identity, ...]
) -> None:
    path = tmp_path / "node.pem"
    identities[0].save(path, PASSPHRASE)
    assert mode_of(path) == 0o600
    pem = path.read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in pem
    loaded = Identity.load(path, PASSPHRASE)
    assert loaded.peer_id == identities[0].peer_id
    # The loaded key really is the private key: it decrypts what is encrypted to the record.
    ciphertext = encrypt_to(identities[0].record, b"secret", b"label")
    assert loaded.decrypt_untrusted(ciphertext, b"label") == b"secret"


@pytest.mark.parametrize(
    "passphrase", [b"wrong", b"", PASSPHRASE + b"x", PASSPHRASE.upper(), None], ids=repr
)
def test_wrong_or_missing_passphrase_is_a_clean_refusal(
    passphrase: bytes | None, tmp_path: Path, identities: tuple[Identity, ...]
) -> None:
    path = tmp_path / "node.pem"
    identities[0].save(path, PASSPHRASE)
    with pytest.raises(KeyFileError) as info:
        Identity.load(path, passphrase)
    message = str(info.value)
    assert str(path) in message and "passphrase" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert PASSPHRASE.decode() not in message


def test_passphrase_given_for_an_unencrypted_identity_is_refused(
    tmp_path: Path, identities: tuple[Identity, ...]
) -> None:
    path = tmp_path / "node.pem"
    identities[0].save(path)
    with pytest.raises(KeyFileError, match="passphrase"):
        Identity.load(path, PASSPHRASE)


def test_cli_refuses_a_wrong_passphrase_cleanly(
    tmp_path: Path,
    identities: tuple[Identity, ...],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "node.pem"
    identities[0].save(path, PASSPHRASE)
    monkeypatch.setattr("getpass.getpass", lambda _prompt="": "not the passphrase")
    with pytest.raises(SystemExit) as info:
        cli(["identity", "show", "--passphrase", str(path)])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "wrong passphrase" in err and str(path) in err
    assert "Traceback" not in err
    monkeypatch.setattr("getpass.getpass", lambda _prompt="": PASSPHRASE.decode())
    cli(["identity", "show", "--passphrase", str(path)])
    assert identities[0].peer_id.hex() in capsys.readouterr().out
