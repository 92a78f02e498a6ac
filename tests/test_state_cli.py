"""``p2ptls node``: real nodes in subprocesses on 127.0.0.1, driven through the command line.

The only polling is for process start-up (``wait_for_socket``: a bounded retry loop on the
control socket); everything else waits for events (``get --wait``, the watcher's own output).
The control socket's security (directory and socket modes, peer uid) is checked in-process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import p2ptls
from p2ptls import PeerId
from p2ptls.state import StateNodeConfig, open_state_node
from p2ptls.state.cli import ConfigError, load_node_config, parse_address
from p2ptls.state.control import (
    FRAME,
    ControlClient,
    ControlError,
    ControlServer,
    encode_frame,
    peer_credentials,
    wait_for_socket,
)

DEADLINE = 60
ROOT = Path(__file__).resolve().parent.parent
NODE = (sys.executable, "-m", "p2ptls", "node")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (Unix socket paths are limited to about 100 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="p2c", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write_config(directory: Path, name: str, **extra: Any) -> Path:
    lines = [
        f'name = "{name}"',
        f'identity = "{name}.key"',
        'network_key = "network.psk"',
        f'database = "{name}.sqlite3"',
        'listen = "127.0.0.1:0"',
        f'control_socket = "ctl-{name}/sock"',
        f'record_file = "{name}.record.json"',
    ]
    bootstrap = extra.pop("bootstrap", None)
    lines += [f"{key} = {json.dumps(value)}" for key, value in extra.items()]
    lines += ["[state]", "coalesce_delay = 0.0", "reconnect_min = 0.05", "reconnect_max = 0.5"]
    if bootstrap:
        lines += ["[[bootstrap]]", f'record_file = "{bootstrap}"']
    path = directory / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def cli(
    *args: str, check: bool = True, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(DEADLINE):
        result = await trio.run_process(
            [sys.executable, "-m", "p2ptls", "node", *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=ROOT,
        )
    if check:
        assert result.returncode == 0, result.stderr.decode()
    return result


class NodeProcess:
    def __init__(self, process: trio.Process, config: Path) -> None:
        self.process = process
        self.config = load_node_config(config)

    async def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        with trio.fail_after(DEADLINE):
            return await self.process.wait()


async def start_node(config: Path, log: Path, env: dict[str, str] | None = None) -> NodeProcess:
    output = log.open("wb")
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "p2ptls", "node", "run", str(config)],
        stdout=output,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    output.close()
    node = NodeProcess(process, config)
    # Start-up only: poll the control socket (bounded) until the node answers.
    await trio.to_thread.run_sync(wait_for_socket, node.config.control_socket, DEADLINE)
    return node


async def test_cli_against_running_nodes(short_dir: Path, identities) -> None:
    directory = short_dir
    p2ptls.generate_psk(directory / "network.psk")
    identities[0].save(directory / "alice.key")
    identities[1].save(directory / "bob.key", b"bob's passphrase")  # encrypted
    alice_config = write_config(directory, "alice")
    bob_config = write_config(directory, "bob", bootstrap="alice.record.json")
    alice = await start_node(alice_config, directory / "alice.log")
    bob = None
    try:
        # No terminal: an encrypted identity needs its passphrase from somewhere.
        refused = await cli("run", str(bob_config), check=False)
        assert refused.returncode == 1
        assert b"p2ptls: error: " in refused.stderr and b"P2PTLS_PASSPHRASE" in refused.stderr
        bob = await start_node(
            bob_config, directory / "bob.log", env={"P2PTLS_PASSPHRASE": "bob's passphrase"}
        )
        alice_id = identities[0].peer_id.hex()
        bob_id = identities[1].peer_id.hex()
        assert "listening on 127.0.0.1:" in (directory / "alice.log").read_text()

        # put on alice, get alice's key on bob (waiting for it to arrive).
        put = await cli("put", "-c", str(alice_config), "color", "blue", "--json")
        assert json.loads(put.stdout)["key"] == "color"
        got = await cli(
            "get", "-c", str(bob_config), "color", "--owner", alice_id[:10], "--wait", "30"
        )
        assert got.stdout == b"blue\n"
        # Owners by name: alice's name comes from the record file bob joined through.
        by_name = await cli("get", "-c", str(bob_config), "color", "--owner", "alice")
        assert by_name.stdout == b"blue\n"
        # A value from standard input, byte for byte.
        await cli("put", "-c", str(alice_config), "raw", "-", stdin=b"\x00\xff line\n")
        raw = json.loads((await cli("get", "-c", str(alice_config), "raw", "--json")).stdout)
        assert raw["value_b64"] == "AP8gbGluZQo="
        own = await cli("get", "-s", str(alice.config.control_socket), "color", "--json")
        record = json.loads(own.stdout)
        assert record["owner"] == alice_id and record["value"] == "blue"

        # watch on bob: started, then a put on alice, then exactly one event.
        async with trio.open_nursery() as nursery:
            watcher = await trio.lowlevel.open_process(
                [*NODE, "watch", "-c", str(bob_config), "--key", "x", "--count", "1"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=ROOT,
            )
            assert watcher.stderr is not None and watcher.stdout is not None
            with trio.fail_after(DEADLINE):
                seen = b""
                while b"watching" not in seen:
                    chunk = await watcher.stderr.receive_some(4096)
                    assert chunk, seen
                    seen += chunk
            nursery.start_soon(cli, "put", "-c", str(alice_config), "x", "42")
            with trio.fail_after(DEADLINE):
                out = b""
                while chunk := await watcher.stdout.receive_some(4096):
                    out += chunk
                assert await watcher.wait() == 0
        event = json.loads(out.decode().strip())
        assert event["type"] == "changed"
        assert (event["owner"], event["key"], event["value"]) == (alice_id, "x", "42")

        # peers: each sees the other connected.
        peers = json.loads((await cli("peers", "-c", str(alice_config), "--json")).stdout)
        assert peers["self"]["peer_id"] == alice_id
        assert [(m["peer_id"], m["state"]) for m in peers["members"]] == [(bob_id, "connected")]
        table = (await cli("peers", "-c", str(bob_config))).stdout.decode()
        assert alice_id[:16] in table and "connected" in table
        header, own_row, member_row = table.splitlines()
        assert "state version" in header and "bob" in own_row and "self" in own_row
        assert member_row.startswith("alice ") and "connected" in member_row
        assert peers["members"][0]["handshake_failures"] == 0

        # A second node on alice's port: the error names the address.
        port = json.loads((await cli("info", "-c", str(alice_config))).stdout)["address"]
        identities[2].save(directory / "carol.key")
        carol_config = write_config(directory, "carol")
        carol_config.write_text(
            carol_config.read_text().replace('listen = "127.0.0.1:0"', f'listen = "{port}"')
        )
        busy = await cli("run", str(carol_config), check=False)
        assert busy.returncode == 1, busy.stderr
        assert f"p2ptls: error: cannot listen on {port}: address already in use".encode() in (
            busy.stderr
        )
        assert b"Traceback" not in busy.stderr

        # consensus: bob agrees on blue, then both hold it.
        await cli("put", "-c", str(bob_config), "color", "blue")
        await cli("get", "-c", str(alice_config), "color", "--owner", bob_id, "--wait", "30")
        ranked = (await cli("consensus", "-c", str(alice_config), "color")).stdout.decode()
        assert ranked.startswith("2\tblue\t")
        data = json.loads((await cli("consensus", "-c", str(bob_config), "color", "--json")).stdout)
        assert data["entries"][0]["count"] == 2

        # info, delete, typed errors and their exit codes.
        info = json.loads((await cli("info", "-c", str(bob_config))).stdout)
        assert info["peer_id"] == bob_id and info["record"]["peer_id"] == bob_id
        await cli("delete", "-c", str(alice_config), "color")
        missing = await cli("get", "-c", str(alice_config), "color", check=False)
        assert missing.returncode == 1 and b"has no key" in missing.stderr
        await cli("put", "-c", str(alice_config), "bin", "AP8=", "--b64")
        binary = json.loads((await cli("get", "-c", str(alice_config), "bin", "--json")).stdout)
        assert binary["value_b64"] == "AP8="
        bad_owner = await cli("get", "-c", str(alice_config), "k", "--owner", "zz", check=False)
        assert bad_owner.returncode == 2
        assert b"p2ptls: error: 'zz' is neither a known name nor a peer id" in bad_owner.stderr
        nowhere = await cli("peers", "-s", str(directory / "nowhere.sock"), check=False)
        assert nowhere.returncode == 3 and b"no node answers" in nowhere.stderr

        # Stop bob: alice reports him stale.
        assert await bob.stop() == 0
        bob = None
        peers = json.loads((await cli("peers", "-c", str(alice_config), "--json")).stdout)
        # (the member turns unreachable when bob's connection closes, before bob exits)
        assert peers["members"][0]["stale"] is True
    finally:
        if bob is not None:
            await bob.stop()
        assert await alice.stop() == 0
    assert not alice.config.control_socket.exists()
    socket_dir = alice.config.control_socket.parent
    assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
    record = json.loads((directory / "alice.record.json").read_text())
    assert record["peer_id"] == identities[0].peer_id.hex()


def test_config_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, identities) -> None:
    """Every problem is reported with the file and the path of the setting in it."""
    monkeypatch.chdir(tmp_path)
    bad = Path("node.toml")

    def errors(text: str) -> list[str]:
        bad.write_text(text)
        with pytest.raises(ConfigError) as caught:
            load_node_config(bad)
        return str(caught.value).splitlines()

    base = 'identity = "a.key"\nnetwork_key = "n"\n'
    assert errors('identity = "a.key"\n') == ["node.toml: network_key is required"]
    assert errors(base + "colour = 1\n") == ["node.toml: unknown setting colour"]
    assert errors(base + '[state]\ncoalesce_delay = "fast"\n') == [
        'node.toml: state.coalesce_delay: expected a number, got "fast"'
    ]
    assert sorted(
        errors(base + "listen = 7\nkey_bits = 1000\n[state]\nmax_batch = 1.5\nx = 1")
    ) == [
        "node.toml: key_bits: expected one of 2048, 3072, 4096, got 1000",
        'node.toml: listen: expected a "host:port" address, got 7',
        "node.toml: state.max_batch: expected an integer, got 1.5",
        "node.toml: state: unknown setting x",
    ]
    assert errors(base + '[state]\ndurability = "fast"\nping_interval = true\n') == [
        'node.toml: state.durability: expected one of "full", "normal", got "fast"',
        "node.toml: state.ping_interval: expected a number, got true",
    ]
    assert errors(base + "[[bootstrap]]\naddress = 5\nrecord = 1\n") == [
        'node.toml: bootstrap[0].address: expected a "host:port" address, got 5',
        "node.toml: bootstrap[0]: unknown setting record",
    ]
    assert errors(base + '[[bootstrap]]\nrecord_file = "no"\n') == [
        f"node.toml: bootstrap[0]: peer record file {str(tmp_path / 'no')!r} does not exist"
    ]
    assert errors(base + '[bootstrap]\nrecord_file = "x"\n') == [
        "node.toml: bootstrap: expected an array of tables ([[bootstrap]])"
    ]
    assert errors(base + "state = 3\n") == ["node.toml: state: expected a table, got 3"]
    for address in ("host:", ":7401", "[::1]", "host:65536", "host:7401x"):
        assert errors(base + f'listen = "{address}"\n') == [
            f'node.toml: listen: expected a "host:port" address, got "{address}"'
        ]
    assert errors("identity = [")[0].startswith("node.toml: not valid TOML")

    good = tmp_path / "good.toml"
    good.write_text(base.replace('"n"', '"n.psk"') + 'listen = "[::1]:7400"\n')
    config = load_node_config(good)
    assert config.listen == ("::1", 7400)
    assert config.identity == tmp_path / "a.key"
    assert config.control_socket == tmp_path / "good.control" / "sock"
    good.write_text(base + "listen = false\n[state]\nreconnect_min = 2\nreconnect_max = 1.0\n")
    config = load_node_config(good)
    assert config.listen is None and config.options["reconnect_min"] == 2.0
    with pytest.raises(ConfigError, match=r"good\.toml: state: reconnect_max must be at least"):
        config.state_config(identities[0], p2ptls.generate_psk())
    assert parse_address("127.0.0.1:1", "x") == ("127.0.0.1", 1)
    assert parse_address(["::1", 0], "x") == ("::1", 0)
    with pytest.raises(ConfigError, match="x: expected"):
        parse_address("127.0.0.1", "x")


def test_bootstrap_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, identities) -> None:
    """A ``[[bootstrap]]`` table is a record file or a record's fields, with an address."""
    monkeypatch.chdir(tmp_path)
    path = Path("node.toml")
    record = identities[1].peer_record(name="bob")
    fields = record.to_dict()
    inline = (
        'identity = "a.key"\nnetwork_key = "n"\n[[bootstrap]]\n'
        f'peer_id = "{fields["peer_id"]}"\npublic_key = "{fields["public_key"]}"\nname = "bob"\n'
    )

    def errors(text: str) -> str:
        path.write_text(text)
        with pytest.raises(ConfigError) as caught:
            load_node_config(path)
        return str(caught.value)

    assert errors(inline) == (
        f"node.toml: bootstrap[0]: the peer record of {record.peer_id.short} has no address: "
        "give the entry one"
    )
    path.write_text(inline + 'address = "[::1]:7402"\n')
    (loaded,) = load_node_config(path).bootstrap
    assert loaded == record.with_address("::1", 7402)
    forged = inline.replace(fields["peer_id"], identities[2].peer_id.hex())
    assert "bootstrap[0]: the record: peer entry" in errors(forged + 'address = "h:1"\n')
    assert errors('identity = "a.key"\nnetwork_key = "n"\n[[bootstrap]]\nname = "x"\n') == (
        "node.toml: bootstrap[0]: give record_file, or peer_id and public_key"
    )
    # A record file: its address, or the one given beside it; never one others may write.
    record_file = Path("bob.record.json")
    record_file.write_text(json.dumps(record.with_address("127.0.0.1", 7).to_dict()))
    record_file.chmod(0o600)
    by_file = (
        'identity = "a.key"\nnetwork_key = "n"\n[[bootstrap]]\nrecord_file = "bob.record.json"\n'
    )
    path.write_text(by_file)
    assert load_node_config(path).bootstrap[0].address == ("127.0.0.1", 7)
    path.write_text(by_file + 'address = "192.0.2.1:8"\n')
    assert load_node_config(path).bootstrap[0].address == ("192.0.2.1", 8)
    record_file.chmod(0o666)
    message = errors(by_file)
    assert "node.toml: bootstrap[0]: peer record file" in message
    assert "is writable by group or others" in message


def test_run_refuses_a_missing_identity(tmp_path: Path) -> None:
    config = tmp_path / "n.toml"
    config.write_text('identity = "none.key"\nnetwork_key = "none.psk"\n')
    done = subprocess.run(
        [sys.executable, "-m", "p2ptls", "node", "run", str(config)],
        capture_output=True,
        timeout=DEADLINE,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 1 and b"does not exist" in done.stderr
    assert done.stderr.startswith(b"p2ptls: error: ") and b"Traceback" not in done.stderr


async def test_control_socket_is_private(short_dir: Path, identities) -> None:
    psk = p2ptls.generate_psk()
    loose = short_dir / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    async with open_state_node(StateNodeConfig(identity=identities[0], psk=psk)) as node:
        with pytest.raises(ControlError, match="accessible by group or others"):
            await ControlServer(node, loose / "sock").serve()
        path = short_dir / "ctl" / "sock"
        # Two peers with one local name: asking for that name is ambiguous.
        twins = {PeerId(bytes([1]) * 32): "twin", PeerId(bytes([2]) * 32): "twin"}
        server = ControlServer(node, path, twins)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
            assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
            with pytest.raises(ControlError, match="another node"):
                await ControlServer(node, path).serve()
            await trio.to_thread.run_sync(_check_requests, path)
            if os.getuid() == 0 and Path("/usr/bin/python3").exists():
                await _check_other_user(path, server)
            nursery.cancel_scope.cancel()
    assert not path.exists()


def _check_requests(path: Path) -> None:
    with ControlClient(path) as client:
        assert client.request("put", key="k", value="v")["key"] == "k"
        assert client.request("get", key="k")["value"] == "v"
        own = client.request("info")["peer_id"]
        for owner in (own.upper(), own[:6], "self"):
            assert client.request("get", key="k", owner=owner)["owner"] == own
        for request, kind in (
            ({"op": "nonsense"}, "bad_request"),
            ({"op": "put", "key": 5, "value": "v"}, "bad_request"),
            ({"op": "put", "key": "k", "value_b64": "***"}, "bad_request"),
            ({"op": "get", "key": "absent"}, "not_found"),
            ({"op": "get", "key": "k", "owner": "abcdef"}, "not_found"),
            ({"op": "get", "key": "k", "owner": "abc"}, "bad_request"),
            ({"op": "get", "key": "k", "owner": "twin"}, "ambiguous"),
            ({"op": "get", "key": "k", "owner": "x" * 257}, "bad_request"),
            ({"op": "get", "key": "k", "wait": -1}, "bad_request"),
            ({"op": "send", "to": "ab" * 32, "value": "x"}, "not_connected"),
        ):
            with pytest.raises(ControlError) as caught:
                client.request(**request)
            assert caught.value.kind == kind, request
        assert client.request("consensus", key="k")["entries"][0]["count"] == 1
        # A watcher gets events; one that goes away mid-stream ends only its own connection.
        with ControlClient(path) as watcher:
            events = watcher.watch(key="w")
            client.request("put", key="w", value="1")
            event = next(events)
            assert (event["type"], event["key"], event["value"]) == ("changed", "w", "1")
        for value in "234":
            client.request("put", key="w", value=value)
        assert client.request("get", key="w")["value"] == "4"
    # Not JSON, then a frame larger than the node accepts: typed errors, then the end.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(DEADLINE)
        raw.connect(os.fspath(path))
        raw.sendall(FRAME.pack(3) + b"{x]")
        assert b'"bad_request"' in _read_frame(raw)
        raw.sendall(FRAME.pack(1 << 30))
        assert b'"too_large"' in _read_frame(raw)
        assert raw.recv(1) == b""
    # Our own uid is what SO_PEERCRED reports for our connections.
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        assert peer_credentials(left)[1] == os.getuid()
    assert encode_frame({"a": 1})[FRAME.size :] == b'{"a":1}'


def _read_frame(sock: socket.socket) -> bytes:
    data = b""
    while len(data) < FRAME.size or len(data) < FRAME.size + FRAME.unpack_from(data)[0]:
        chunk = sock.recv(65536)
        assert chunk
        data += chunk
    return data[FRAME.size :]


async def _check_other_user(path: Path, server: ControlServer) -> None:
    """Another user (nobody) can neither reach the socket through its 0700 directory nor, when
    the directory and socket are opened up by mistake, get an answer (SO_PEERCRED)."""
    probe = (
        "import socket, struct, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.settimeout(20)\n"
        "try:\n"
        "    s.connect(sys.argv[1])\n"
        "except PermissionError:\n"
        "    print('denied'); sys.exit(0)\n"
        "try:\n"
        "    s.sendall(struct.pack('>I', 13) + b'{\"op\":\"info\"}')\n"
        "    print('closed' if s.recv(1) == b'' else 'answered')\n"
        "except (BrokenPipeError, ConnectionResetError):\n"
        "    print('closed')\n"
    )

    async def attempt() -> str:
        with trio.fail_after(DEADLINE):
            done = await trio.run_process(
                ["/usr/bin/python3", "-c", probe, str(path)],
                capture_stdout=True,
                check=True,
                user=65534,
                group=65534,
                extra_groups=[],
            )
        return done.stdout.decode().strip()

    assert await attempt() == "denied"
    path.parent.chmod(0o755)
    path.chmod(0o666)
    try:
        assert await attempt() == "closed"
        assert server.refused == 1
    finally:
        path.parent.chmod(0o700)
        path.chmod(0o600)
