"""benchmarks/camera_stream.py and its helpers: the TCP loss model, the relay, a tiny full run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import trio

from benchmarks import camera_stream
from benchmarks._camera import (
    ImpairedTcpRelay,
    SyntheticCamera,
    TcpImpairment,
    TcpLossModel,
    have_pillow,
)


def test_case_names() -> None:
    case = camera_stream.Case.parse("loss1_paced_4x30_jpeg")
    assert (case.source, case.cameras, case.fps, case.loss) == ("jpeg", 4, 30.0, 1.0)
    assert math.isclose(case.deadline, 1 / 30)
    unpaced = camera_stream.Case.parse("unpaced_720p_raw")
    assert (unpaced.cameras, unpaced.paced, unpaced.loss) == (1, False, None)
    with pytest.raises(ValueError):
        camera_stream.Case.parse("paced_4_jpeg")
    for name in (*camera_stream.FULL_CASES, *camera_stream.QUICK_CASES):
        assert camera_stream.Case.parse(name).name == name


def test_synthetic_camera_is_deterministic_and_moves() -> None:
    a, b = SyntheticCamera(160, 120, 4), SyntheticCamera(160, 120, 4)
    assert a.frames == b.frames
    assert len(set(a.frames)) == 4
    assert all(len(frame) == 160 * 120 * 3 for frame in a.frames)


def test_loss_model_keeps_order_and_stalls_lost_segments() -> None:
    clean = TcpLossModel(TcpImpairment(delay=0.005))
    assert clean.schedule(3000, 1.0) == [(3000, 1.005)]
    lossy = TcpLossModel(TcpImpairment(delay=0.005, loss=0.2, seed=3))
    releases: list[float] = []
    waits: list[float] = []
    total = 0
    for step in range(200):
        now = step * 0.001
        for size, due in lossy.schedule(1000, now):
            total += size
            releases.append(due)
            waits.append(due - now)
    assert total == 200_000
    assert releases == sorted(releases)  # order kept: nothing overtakes a stalled segment
    assert 0.1 < lossy.lost / lossy.segments < 0.3
    assert min(waits) >= 0.005 - 1e-9  # never earlier than the one-way delay
    assert max(waits) >= 0.005 + 0.02 - 1e-9  # a lost segment waits an RTO of 4 x delay
    stalled = TcpLossModel(TcpImpairment(delay=0.005, loss=1.0, rto=0.05))
    assert stalled.schedule(100, 0.0) == [(100, 0.055)]


async def test_impaired_relay_delivers_everything_in_order() -> None:
    received = bytearray()
    payload = bytes(range(256)) * 800  # 204,800 bytes
    finished = trio.Event()

    async def sink(stream: trio.SocketStream) -> None:
        while chunk := await stream.receive_some(65536):
            received.extend(chunk)
        finished.set()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, sink, 0)
        port = listeners[0].socket.getsockname()[1]
        relay = ImpairedTcpRelay(("127.0.0.1", port), TcpImpairment(delay=0.002, loss=0.05, seed=7))
        await nursery.start(relay.run)
        client = await trio.open_tcp_stream(*relay.address)
        for offset in range(0, len(payload), 10_000):
            await client.send_all(payload[offset : offset + 10_000])
        await client.send_eof()
        with trio.fail_after(10):
            await finished.wait()
        await client.aclose()
        nursery.cancel_scope.cancel()
    assert bytes(received) == payload
    assert relay.models[0].lost > 0


@pytest.mark.skipif(not have_pillow(), reason="the JPEG cases need Pillow")
def test_tiny_benchmark_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "camera.json"
    code = camera_stream.main(
        [
            "--cases",
            "paced_2x30_jpeg",
            "loss5_paced_2x30_jpeg",
            "--seconds",
            "0.3",
            "--warmup",
            "0.1",
            "--drain",
            "0.3",
            "--verify",
            "--runs",
            "1",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    document = json.loads(out.read_text())
    assert document["benchmark"] == "camera" and document["runs"] == 1
    assert document["params"]["cases"] == ["paced_2x30_jpeg", "loss5_paced_2x30_jpeg"]
    results = document["results"]
    assert set(results) == {"paced_2x30_jpeg", "loss5_paced_2x30_jpeg"}
    for case in results.values():
        assert set(case) == set(camera_stream.TRANSPORTS)
        for figures in case.values():
            assert {"fps", "p50_ms", "p99_ms", "delivered", "on_time", "cpu"} <= set(figures)
    for kind in ("p2ptls_stream", "p2ptls_mux", "tls", "tcp"):
        assert results["paced_2x30_jpeg"][kind]["delivered"] == 1.0
        assert results["loss5_paced_2x30_jpeg"][kind]["delivered"] == 1.0  # reliable streams
    assert "damaged" not in capsys.readouterr().err
