"""``examples/state_network.py`` runs as written: in-process and as a script."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "state_network.py"


async def test_state_network_example_converges(tmp_path: Path) -> None:
    main = runpy.run_path(str(EXAMPLE), run_name="example")["main"]
    views = await main(tmp_path)
    expected = {
        "alice": {"role": b"first", "color": b"blue"},
        "bob": {"role": b"second", "color": b"green"},
        "carol": {"role": b"third", "color": b"blue"},
    }
    assert views == {reader: expected for reader in ("alice", "bob", "carol")}
    assert sorted(p.name for p in tmp_path.glob("*.sqlite3")) == [
        "alice.sqlite3",
        "bob.sqlite3",
        "carol.sqlite3",
    ]


def test_state_network_example_runs_as_a_script() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "carol reads locally: alice.role=first, bob.role=second, carol.role=third" in out
    assert "'color' by consensus: blue held by 2" in out
    assert "direct message from carol" in out
    assert "carol asked alice over 2 connections (one per peer)" in out
