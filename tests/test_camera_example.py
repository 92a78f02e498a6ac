"""examples/camera_stream.py: the in-process demo; setup, receive and send as processes."""

from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "camera_stream.py"


def _example() -> dict[str, object]:
    return runpy.run_path(str(EXAMPLE), run_name="example")


@pytest.mark.parametrize("transport", ["stream", "sllp"])
async def test_demo_delivers_every_frame(transport: str) -> None:
    demo = _example()["demo"]
    result = await demo(30, transport, 100.0, (320, 240))  # type: ignore[operator]
    assert result["sent"] == 30
    # Loopback with 4 MB socket buffers: SLLP normally delivers all of them too.
    assert result["received"] == 30 - result["lost"]
    assert result["received"] >= (30 if transport == "stream" else 27)
    assert 0 <= result["p50_ms"] <= result["p99_ms"] < 1000


def test_synthetic_camera_frames_carry_their_number() -> None:
    camera_class = _example()["SyntheticCamera"]
    camera = camera_class(128, 96, 30)  # type: ignore[operator]
    first, second = camera.raw(1), camera.raw(2)
    assert len(first) == 128 * 96 * 3
    assert first != second and camera.raw(1) == first


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )


@pytest.mark.parametrize("transport", ["stream", "sllp"])
def test_setup_receive_send_as_processes(tmp_path: Path, transport: str) -> None:
    keys = tmp_path / "keys"
    made = _run("setup", str(keys), "--bits", "2048")
    assert made.returncode == 0, made.stderr
    for name in ("sender.key", "receiver.key", "network.psk"):
        assert (keys / name).stat().st_mode & 0o777 == 0o600
    record = json.loads((keys / "receiver.peer.json").read_text())
    assert len(record["peer_id"]) == 64

    receiver = subprocess.Popen(
        [
            sys.executable,
            "-u",
            str(EXAMPLE),
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--key",
            str(keys / "receiver.key"),
            "--psk",
            str(keys / "network.psk"),
            "--peer",
            str(keys / "sender.peer.json"),
            "--once",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert receiver.stdout is not None
        deadline = time.monotonic() + 30
        port = None
        while port is None and time.monotonic() < deadline:
            line = receiver.stdout.readline()
            if not line:
                break
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if match:
                port = int(match[1])
        assert port is not None, receiver.stderr.read() if receiver.stderr else ""
        sent = _run(
            "send",
            "--to",
            f"127.0.0.1:{port}",
            "--key",
            str(keys / "sender.key"),
            "--psk",
            str(keys / "network.psk"),
            "--peer",
            str(keys / "receiver.peer.json"),
            "--transport",
            transport,
            "--frames",
            "20",
            "--fps",
            "100",
            "--size",
            "320x240",
        )
        assert sent.returncode == 0, sent.stderr
        assert "sent 20 frames" in sent.stdout
        output, errors = receiver.communicate(timeout=30)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    assert receiver.returncode == 0, errors
    match = re.search(r"\((stream|sllp)\): total (\d+) frames.*lost (\d+)", output)
    assert match is not None, output
    assert match[1] == transport
    received, lost = int(match[2]), int(match[3])
    assert received + lost == 20
    assert received >= (20 if transport == "stream" else 17)
