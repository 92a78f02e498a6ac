"""The examples and the demo run as written."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str) -> dict[str, object]:
    return runpy.run_path(str(ROOT / "examples" / name), run_name="example")


async def test_echo_pair_example(tmp_path: Path) -> None:
    main = _load("echo_pair.py")["main"]
    replies = await main(tmp_path)  # type: ignore[operator]
    assert replies == [b"echo: hello", b"echo: p2p", b"echo: world"]
    assert (tmp_path / "alice.key").stat().st_mode & 0o777 == 0o600


async def test_testing_example() -> None:
    main = _load("testing_your_code.py")["main"]
    assert await main() == b"SECURE STREAMS ARE JUST STREAMS"  # type: ignore[operator]


def test_examples_run_as_scripts() -> None:
    for name in ("echo_pair.py", "testing_your_code.py"):
        result = subprocess.run(
            [sys.executable, str(ROOT / "examples" / name)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr


def test_demo_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "p2ptls.demo",
            "--dir",
            str(tmp_path / "demo"),
            "--payload-mib",
            "8",
            "--key-bits",
            "2048",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    names = ("alice", "bob", "carol")
    pairs = {(a, b) for a in names for b in names if a != b}
    rows = [line.split() for line in out.splitlines()]
    # Client side: client, server, the server's peer id, and the server's reply.
    clients = {(r[0], r[1]): r[2] for r in rows if len(r) == 8 and r[4:6] == ["got:", "hello"]}
    assert set(clients) == pairs
    assert all(r[3] == r[1] and r[7] == r[0] for r in rows if len(r) == 8 and r[4] == "got:")
    # Server side: server, client, the client's peer id (the same id it proves as a server).
    servers = {
        (r[0], r[1]): r[2]
        for r in rows
        if len(r) == 3 and (r[0], r[1]) in pairs and r[2].endswith("…")
    }
    assert set(servers) == pairs
    assert all(servers[(a, b)] == clients[(a, b)] for a, b in pairs)  # both: b's peer id
    assert "8.0/8.0 MiB" in out  # the progress bar, printed once at the end outside a terminal
    assert "bob's SHA-256 of what arrived matches alice's" in out
    assert "throughput:" in out
    frames = re.search(r"bob received (\d+)/100 frames whole", out)
    assert frames is not None and int(frames[1]) >= 80  # SLLP on loopback: normally all
    # One connection per pair, shared by both protocols and SLLP: three dialled, three accepted.
    connections = [r for r in rows if len(r) == 3 and r[2] in ("dialled", "accepted")]
    assert sorted((r[0], r[1]) for r in connections) == sorted(pairs)
    assert [r[2] for r in connections].count("dialled") == 3


def test_cli_creates_keys(tmp_path: Path) -> None:
    key, psk = tmp_path / "me.key", tmp_path / "net.psk"
    for args in (["identity", "new", str(key), "--bits", "2048"], ["psk", "new", str(psk)]):
        done = subprocess.run(
            [sys.executable, "-m", "p2ptls", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    shown = subprocess.run(
        [sys.executable, "-m", "p2ptls", "identity", "show", str(key)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert '"peer_id"' in shown.stdout
    key.chmod(0o644)
    refused = subprocess.run(
        [sys.executable, "-m", "p2ptls", "identity", "show", str(key)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert refused.returncode == 1 and "chmod 600" in refused.stderr
