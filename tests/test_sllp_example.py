"""examples/sllp_frames.py runs as written and delivers its frames."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "sllp_frames.py"


async def test_sllp_frames_example() -> None:
    main = runpy.run_path(str(EXAMPLE), run_name="example")["main"]
    report = await main(frames=120, size=50_000)
    assert report["delivered"] == 120 - report["lost"]
    assert report["delivered"] >= 100  # loopback with 4 MB buffers: normally all of them
    assert report["damaged"] == 0
    # Loopback's path MTU (65,535) takes a 50 KB frame in one datagram.
    assert report["datagrams_sent"] == 120


def test_sllp_frames_example_runs_as_a_script() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--frames", "200"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "delivered" in result.stdout and "/200 frames" in result.stdout
