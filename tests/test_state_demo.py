"""The state network part of ``make demo`` runs, converges, reports the stopped node stale and
prints a consensus; it runs again on the databases it left (restart path)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import p2ptls
from p2ptls.state import demo as state_demo

ROOT = Path(__file__).resolve().parent.parent
SMALL = ("--payload-mib", "1", "--key-bits", "2048")


async def test_state_demo_in_process(tmp_path: Path, identities) -> None:
    psk = p2ptls.generate_psk()
    ids = dict(zip(state_demo.NAMES, identities, strict=False))
    expected = state_demo.WRITES
    for run in range(2):  # the second run restarts from the databases of the first
        lines: list[str] = []
        result = await state_demo.run(tmp_path / "state", psk, ids, out=lines.append)
        assert result.views == {reader: expected for reader in state_demo.NAMES}, run
        assert result.stale_seen_by == ("alice", "bob")
        assert [(value, sorted(holders)) for value, holders in result.consensus] == [
            (b"blue", ["alice", "carol"]),
            (b"green", ["bob"]),
        ]
        text = "\n".join(lines)
        assert "converged in" in text
        assert "alice holds 2, one per peer, shared by every protocol" in text
        table = [line.split() for line in text.splitlines()]
        assert ["owner", "key", "at", "alice", "at", "bob", "at", "carol"] in table
        for owner, writes in expected.items():
            for key, value in writes.items():
                assert [owner, key, *[value.decode()] * 3] in table
        assert "alice sees carol unreachable" in text and "marked stale" in text
        assert "consensus on 'color' at alice: blue held by 2" in text
        assert "carol [stale]" in text
    assert sorted(p.name for p in (tmp_path / "state").glob("*.sqlite3")) == [
        "alice.sqlite3",
        "bob.sqlite3",
        "carol.sqlite3",
    ]


def test_make_demo_includes_the_state_network(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "p2ptls.demo", "--dir", str(tmp_path / "demo"), *SMALL],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "bob's SHA-256 of what arrived matches alice's" in out  # the stream demo is intact
    assert out.index("throughput:") < out.index("state network:")
    assert "bob sees carol unreachable" in out
    assert "consensus on 'color' at alice: blue held by 2" in out


def test_state_demo_runs_alone(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "p2ptls.state.demo", "--dir", str(tmp_path / "alone")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "consensus on 'color'" in done.stdout
