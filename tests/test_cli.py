"""The ``p2ptls`` command in-process: key files, the peer database, ``node init``, error
conventions, help texts; and what a node reports when its handshakes with a member fail.

(``tests/test_state_cli.py`` drives running nodes through the command line in subprocesses.)
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import click
import pytest
import trio

import p2ptls
from p2ptls.cli import cli as root_command
from p2ptls.cli import main
from p2ptls.cli.node import _status
from p2ptls.peerdb import PeerDatabase
from p2ptls.state import StateNodeConfig, open_state_node
from p2ptls.state.cli import (
    StateOptions,
    load_node_config,
    render_node_config,
    run_node,
)
from p2ptls.state.control import ControlClient, ControlError, ControlServer

DEADLINE = 60


def run(capsys: pytest.CaptureFixture[str], *args: str, code: int = 0) -> tuple[str, str]:
    """Run ``p2ptls ARGS`` in-process; check the exit status; return (stdout, stderr)."""
    try:
        main(list(args))
        status: object = 0
    except SystemExit as exc:
        status = exc.code or 0
    out, err = capsys.readouterr()
    assert status == code, (status, out, err)
    assert "Traceback" not in err
    return out, err


@pytest.fixture
def workdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The current directory, short enough for Unix socket paths."""
    path = Path(tempfile.mkdtemp(prefix="p2cli", dir="/tmp"))
    monkeypatch.chdir(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    out, _err = run(capsys, "--version")
    assert out == f"p2ptls, version {p2ptls.__version__}\n"
    paths = [p for p in _commands(root_command) if p != ("demo",)]
    assert ("node", "init") in paths and ("peers", "add") in paths and ("psk", "show") in paths
    for path in [(), *paths]:
        out, _err = run(capsys, *path, "--help")
        assert out.startswith("Usage: p2ptls")
        assert "``" not in out and ":class:" not in out and ":mod:" not in out, path


def test_usage_and_failure_conventions(capsys: pytest.CaptureFixture[str], workdir: Path) -> None:
    _out, err = run(capsys, "node", "put", code=2)
    assert "p2ptls: error: Missing argument 'KEY'" in err
    _out, err = run(capsys, "nonsense", code=2)
    assert "p2ptls: error: No such command 'nonsense'" in err
    _out, err = run(capsys, "node", "get", "k", "-c", "a.toml", "-s", "sock", code=2)
    assert err == "p2ptls: error: give -c CONFIG or -s SOCKET, not both\n"
    _out, err = run(capsys, "node", "peers", code=2)
    assert err.startswith("p2ptls: error: give the node's configuration")
    _out, err = run(capsys, "node", "run", "absent.toml", code=1)
    assert err.startswith("p2ptls: error: cannot read 'absent.toml'")
    _out, err = run(capsys, "node", "peers", "-s", "no.sock", code=3)
    assert err.startswith("p2ptls: error: no node answers at 'no.sock'")
    _out, err = run(capsys, "identity", "show", "k", "--address", "nowhere", code=2)
    assert "p2ptls: error: Invalid value for '--address': 'nowhere' is not HOST:PORT" in err


def test_key_files(capsys: pytest.CaptureFixture[str], workdir: Path, identities) -> None:
    # A missing directory is a one-line error, not a traceback.
    _out, err = run(capsys, "identity", "new", "nodir/alice.key", code=1)
    assert err == (
        "p2ptls: error: cannot write 'nodir/alice.key': directory 'nodir' does not exist\n"
    )
    _out, err = run(capsys, "psk", "new", "nodir/network.psk", code=1)
    assert "directory 'nodir' does not exist" in err

    out, _err = run(capsys, "psk", "new", "network.psk")
    key = p2ptls.NetworkKey.load("network.psk")
    assert out == f"wrote network.psk (mode 0600); fingerprint {key.fingerprint}\n"
    _out, err = run(capsys, "psk", "new", "network.psk", code=1)
    assert err == "p2ptls: error: 'network.psk' exists; refusing to overwrite a network key\n"
    out, _err = run(capsys, "psk", "show", "network.psk")
    assert out == key.fingerprint + "\n"
    assert key.secret.hex() not in out
    os.chmod("network.psk", 0o644)
    _out, err = run(capsys, "psk", "show", "network.psk", code=1)
    assert "chmod 600" in err

    identities[0].save("alice.key")
    out, _err = run(capsys, "identity", "id", "alice.key")
    assert out == identities[0].peer_id.hex() + "\n"
    out, _err = run(capsys, "identity", "show", "alice.key", "--name", "alice")
    record = p2ptls.PeerRecord.from_dict(json.loads(out))
    assert (record.peer_id, record.name, record.address) == (identities[0].peer_id, "alice", None)
    out, _err = run(capsys, "identity", "show", "alice.key", "--address", "[2001:db8::1]:7401")
    assert json.loads(out)["address"] == ["2001:db8::1", 7401]


def test_passphrases(
    capsys: pytest.CaptureFixture[str], workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = Path("secret.txt")
    secret.write_text("correct horse\n")
    secret.chmod(0o600)
    out, _err = run(
        capsys, "identity", "new", "me.key", "--bits", "2048", "--passphrase-file", "secret.txt"
    )
    peer_id = out.split()[-1]
    assert b"ENCRYPTED PRIVATE KEY" in Path("me.key").read_bytes()
    monkeypatch.delenv("P2PTLS_PASSPHRASE", raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal: nobody to ask
    _out, err = run(capsys, "identity", "id", "me.key", code=1)
    assert "is encrypted: give --passphrase-file FILE, set P2PTLS_PASSPHRASE" in err
    out, _err = run(capsys, "identity", "id", "me.key", "--passphrase-file", "secret.txt")
    assert out.strip() == peer_id
    monkeypatch.setenv("P2PTLS_PASSPHRASE", "correct horse")
    out, _err = run(capsys, "identity", "id", "me.key")
    assert out.strip() == peer_id
    monkeypatch.setenv("P2PTLS_PASSPHRASE", "wrong")
    _out, err = run(capsys, "identity", "id", "me.key", code=1)
    assert "wrong passphrase" in err and "wrong" not in err.replace("wrong passphrase", "")
    secret.chmod(0o644)
    _out, err = run(capsys, "identity", "id", "me.key", "--passphrase-file", "secret.txt", code=1)
    assert "passphrase file 'secret.txt' is accessible by group or others" in err


def test_peer_database(
    capsys: pytest.CaptureFixture[str],
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    identities,
) -> None:
    alice, bob = identities[0], identities[1]
    alice.save("alice.key")
    bob.save("bob.key")
    run(capsys, "psk", "new", "network.psk")
    out, _err = run(
        capsys, "identity", "show", "bob.key", "--name", "bob", "--address", "192.0.2.11:7401"
    )
    Path("bob.json").write_text(out)
    out, _err = run(capsys, "peers", "add", "bob.json", "--db", "peers.db")
    assert out == f"added bob {bob.peer_id.hex()} in peers.db (1 peers)\n"
    assert stat.S_IMODE(os.stat("peers.db").st_mode) == 0o600
    record, _err = run(capsys, "identity", "show", "alice.key")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(record.encode())))
    run(capsys, "peers", "add", "-", "--db", "peers.db", "--name", "alice", "--address", "[::1]:7")

    database = PeerDatabase.open("peers.db", p2ptls.NetworkKey.load("network.psk"))
    assert {(r.name, r.address) for r in database} == {
        ("alice", ("::1", 7)),
        ("bob", ("192.0.2.11", 7401)),
    }
    out, _err = run(capsys, "peers", "list", "--db", "peers.db")
    assert out.splitlines() == [
        "name   peer id           address",
        f"alice  {alice.peer_id.hex()[:16]}  [::1]:7",
        f"bob    {bob.peer_id.hex()[:16]}  192.0.2.11:7401",
    ]
    out, _err = run(capsys, "peers", "list", "--db", "peers.db", "--json")
    assert [entry["name"] for entry in json.loads(out)] == ["alice", "bob"]

    _out, err = run(capsys, "peers", "remove", "carol", "--db", "peers.db", code=1)
    assert "'carol' is neither a known name nor a peer id in hex" in err
    run(capsys, "peers", "remove", "bob", "--db", "peers.db")
    run(capsys, "peers", "remove", alice.peer_id.hex()[:8], "--db", "peers.db")
    _out, err = run(capsys, "peers", "list", "--db", "peers.db")
    assert err == "no peers in peers.db\n"

    p2ptls.generate_psk("other.psk")
    _out, err = run(capsys, "peers", "list", "--db", "peers.db", "-k", "other.psk", code=1)
    assert "failed authentication" in err
    _out, err = run(capsys, "peers", "add", "absent.json", "--db", "peers.db", code=1)
    assert "peer record file 'absent.json' does not exist" in err


@pytest.mark.parametrize(
    "text",
    [
        "nowhere",
        "host:",
        ":7401",
        "[::1]",
        "[]:7401",
        "host:65536",
        "host:-1",
        "host:0x10",
        "host:0007401",
        "host: 7401",
        "host:\uff17\uff14\uff10\uff11",  # 7401 in full-width digits
    ],
)
def test_a_bad_address_is_a_usage_error(capsys: pytest.CaptureFixture[str], text: str) -> None:
    _out, err = run(capsys, "identity", "show", "k", "--address", text, code=2)
    assert f"Invalid value for '--address': {text!r} is not HOST:PORT" in err


def test_peers_add_refuses_unusable_records(
    capsys: pytest.CaptureFixture[str],
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    identities,
) -> None:
    """A record file of someone else's making is refused, with what is wrong and the fix;
    nothing is added."""
    run(capsys, "psk", "new", "network.psk")
    record = json.dumps(identities[0].peer_record(name="a").to_dict())
    forged = json.loads(record) | {"peer_id": identities[1].peer_id.hex()}
    files = {
        "open.json": (record, 0o664, "is writable by group or others"),
        "big.json": (" " * (64 * 1024 + 1), 0o600, "is too large"),
        "list.json": ("[]", 0o600, "a peer record is a JSON object"),
        "text.json": ("not json", 0o600, "not a peer record"),
        "forged.json": (json.dumps(forged), 0o600, "id is not the hash of its key"),
    }
    for name, (text, mode, _message) in files.items():
        Path(name).write_text(text)
        Path(name).chmod(mode)
    Path("dir.json").mkdir()
    for name, (_text, _mode, message) in files.items():
        _out, err = run(capsys, "peers", "add", name, "--db", "peers.db", code=1)
        assert err.startswith(f"p2ptls: error: peer record file '{name}'") and message in err
    _out, err = run(capsys, "peers", "add", "open.json", "--db", "peers.db", code=1)
    assert "chmod go-w 'open.json'" in err
    _out, err = run(capsys, "peers", "add", "dir.json", "--db", "peers.db", code=1)
    assert "cannot read peer record file 'dir.json'" in err
    for data, message in (
        (b" " * (64 * 1024 + 1), "the peer record on standard input is too large"),
        (json.dumps(forged).encode(), "id is not the hash of its key"),
    ):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        _out, err = run(capsys, "peers", "add", "-", "--db", "peers.db", code=1)
        assert message in err
    assert not Path("peers.db").exists()


def test_peers_are_found_by_name_or_id(
    capsys: pytest.CaptureFixture[str], workdir: Path, identities
) -> None:
    run(capsys, "psk", "new", "network.psk")
    for index in (0, 1, 2):
        path = Path(f"{index}.json")
        path.write_text(json.dumps(identities[index].peer_record(name="twin").to_dict()))
        path.chmod(0o600)
        run(capsys, "peers", "add", str(path), "--db", "peers.db")
    _out, err = run(capsys, "peers", "remove", "twin", "--db", "peers.db", code=1)
    assert "several peers are named 'twin'" in err and "give a peer id" in err
    _out, err = run(capsys, "peers", "remove", "abc", "--db", "peers.db", code=1)
    assert "a peer id prefix has at least 6 digits" in err
    _out, err = run(
        capsys, "peers", "remove", identities[3].peer_id.hex(), "--db", "peers.db", code=1
    )
    assert "no known peer has the id" in err
    run(capsys, "peers", "remove", identities[0].peer_id.hex().upper(), "--db", "peers.db")
    run(capsys, "peers", "remove", identities[1].peer_id.hex()[:6], "--db", "peers.db")
    out, _err = run(capsys, "peers", "list", "--db", "peers.db", "--json")
    assert [entry["peer_id"] for entry in json.loads(out)] == [identities[2].peer_id.hex()]


def test_demo_takes_its_own_options(capsys: pytest.CaptureFixture[str]) -> None:
    out, _err = run(capsys, "demo", "--help")
    assert "--payload-mib" in out and "--key-bits" in out


def _state_section_defaults(text: str) -> dict[str, object]:
    section = text.split("[state]", 1)[1].split("\n\n", 1)[0]
    lines = [line.removeprefix("# ") for line in section.splitlines()[1:]]
    return tomllib.loads("\n".join(lines))


def test_node_init_writes_a_working_configuration(
    capsys: pytest.CaptureFixture[str], workdir: Path, identities
) -> None:
    out, _err = run(
        capsys,
        "node",
        "init",
        "alice.toml",
        "--listen",
        "127.0.0.1:0",
        "--new-identity",
        "--new-network-key",
        "--bits",
        "2048",
    )
    assert "wrote alice.key" in out and "wrote network.psk" in out and "wrote alice.toml" in out
    for name in ("alice.key", "network.psk"):
        assert stat.S_IMODE(os.stat(name).st_mode) == 0o600
    config = load_node_config("alice.toml")
    assert (config.name, config.identity, config.network_key) == (
        "alice",
        workdir / "alice.key",
        workdir / "network.psk",
    )
    assert config.database == workdir / "alice.sqlite3"
    assert config.record_file == workdir / "alice.record.json"
    assert config.options == attrs.asdict(StateOptions())

    # Nothing is overwritten, and a refused init writes nothing at all.
    _out, err = run(capsys, "node", "init", "alice.toml", code=1)
    assert "'alice.toml' exists; refusing to overwrite a configuration" in err
    _out, err = run(capsys, "node", "init", "bob.toml", "--new-network-key", code=1)
    assert "'network.psk' exists; refusing to overwrite a network key" in err
    assert not Path("bob.toml").exists()
    _out, err = run(capsys, "node", "init", "nodir/bob.toml", code=1)
    assert "directory 'nodir' does not exist" in err

    # Without --new-*: the missing files are named, with the command that makes each.
    out, _err = run(capsys, "node", "init", "bob.toml", "--bootstrap", "alice.record.json")
    assert "bob.key does not exist yet: p2ptls identity new bob.key" in out
    assert "network.psk" not in out
    assert 'record_file = "alice.record.json"' in Path("bob.toml").read_text()

    # The commented [state] lines are the real defaults.
    text = Path("alice.toml").read_text()
    assert _state_section_defaults(text) == attrs.asdict(StateOptions())
    assert (
        StateOptions().coalesce_delay
        == attrs.fields_dict(StateNodeConfig)["coalesce_delay"].default
    )

    # And the node runs from it; with a peer database, it knows bob by name and dials him.
    identities[1].save("bob.key")
    out, _err = run(capsys, "identity", "show", "bob.key", "--name", "bob", "--address", "[::1]:9")
    Path("bob.json").write_text(out)
    run(capsys, "peers", "add", "bob.json", "--db", "peers.db")
    Path("alice.toml").write_text(
        text.replace('# peer_database = "peers.db"', 'peer_database = "peers.db"')
    )
    config = load_node_config("alice.toml")
    assert config.peer_database == workdir / "peers.db"

    async def start_and_stop() -> None:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                node = await nursery.start(run_node, config)
                assert node.config.name == "alice"
                assert node.address is not None
                assert node.member(identities[1].peer_id) is not None
                answers = await trio.to_thread.run_sync(_bob_by_name, config.control_socket)
                nursery.cancel_scope.cancel()
        assert [m["name"] for m in answers["members"]] == ["bob"]

    trio.run(start_and_stop)
    record = json.loads(Path("alice.record.json").read_text())
    assert record["name"] == "alice"
    assert record["peer_id"] == p2ptls.Identity.load("alice.key").peer_id.hex()


def _bob_by_name(socket: Path) -> dict[str, Any]:
    with ControlClient(socket) as client:
        with pytest.raises(ControlError, match="bob has no key 'color'"):
            client.request("get", key="color", owner="bob")
        peers: dict[str, Any] = client.request("peers")
        return peers


def test_rendered_configuration_round_trips(tmp_path: Path) -> None:
    text = render_node_config(
        name='odd "name"',
        identity="keys/odd.key",
        network_key="net.psk",
        database=None,
        listen=None,
        advertise=("2001:db8::1", 7401),
        control_socket="run/odd.sock",
    )
    path = tmp_path / "odd.toml"
    path.write_text(text)
    config = load_node_config(path)
    assert config.name == 'odd "name"' and config.listen is None and config.database is None
    assert config.advertise == ("2001:db8::1", 7401)
    assert config.control_socket == tmp_path / "run" / "odd.sock"
    assert config.identity == tmp_path / "keys" / "odd.key"


async def test_failing_handshakes_are_reported(
    identities, caplog: pytest.LogCaptureFixture
) -> None:
    """A member whose handshakes keep failing (here: another network key) is reported by the
    node that dials it: a warning in the log and a count in ``node peers``."""
    caplog.set_level(logging.WARNING, logger="p2ptls.state")
    quick = {"reconnect_min": 0.01, "reconnect_max": 0.02}
    config_a = StateNodeConfig(identity=identities[0], psk=p2ptls.generate_psk(), name="a")
    async with open_state_node(config_a) as a:
        config_b = StateNodeConfig(
            identity=identities[1],
            psk=p2ptls.generate_psk(),
            bootstrap=[a.peer_record("a")],
            **quick,  # type: ignore[arg-type]
        )
        async with open_state_node(config_b) as b:

            def failures() -> int:
                status = b.member(a.peer_id)
                return status.handshake_failures if status else 0

            with trio.fail_after(DEADLINE):
                await b.wait_until(lambda: failures() >= 3)
            status = b.member(a.peer_id)
            assert status is not None and status.stale
            assert status.last_handshake_failure is not None
            assert a.member(b.peer_id) is None  # the responder learned nothing about b
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert any(
                re.search(r"handshakes with member \w+ at 127.0.0.1:\d+ failed 3 times in a row", w)
                and "network key" in w
                for w in warnings
            ), warnings

            directory = Path(tempfile.mkdtemp(prefix="p2h", dir="/tmp"))
            try:
                server = ControlServer(b, directory / "ctl" / "sock")
                async with trio.open_nursery() as nursery:
                    await nursery.start(server.serve)
                    peers = await trio.to_thread.run_sync(_peers, server.path)
                    nursery.cancel_scope.cancel()
            finally:
                shutil.rmtree(directory, ignore_errors=True)
            (member,) = peers["members"]
            assert member["name"] == "a" and member["handshake_failures"] >= 3
            assert re.fullmatch(r"handshake failing \(\d+x, last \d\d:\d\d:\d\d\)", _status(member))


def _peers(path: Path) -> dict[str, Any]:
    with ControlClient(path) as client:
        result: dict[str, Any] = client.request("peers")
        return result
