"""benchmarks/stream.py: the multiplexed connection's figures, their plan, and a tiny real run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import stream


def test_mux_figures_are_medians_of_ratios_taken_within_each_round() -> None:
    results = stream.Results(
        bulk={"mux": [100.0, 300.0, 200.0], "p2ptls": [200.0, 300.0, 800.0]},
        p50={"mux": [20.0], "p2ptls": [10.0]},
        p99={"mux": [40.0], "p2ptls": [0.0]},  # a zero reference gives no ratio
        opens=[3.0, 1.0, 2.0],
        fairness=[stream.Fairness(0.1, 1.0, 50.0), stream.Fairness(0.3, 3.0, 70.0)],
    )
    mux = results.mux()
    # Per round 0.5, 1.0, 0.25: their median, not the ratio of the medians (200 / 300).
    assert mux["vs_stream"]["bulk_MBps"] == pytest.approx(0.5)
    assert mux["bulk_MBps"] == 200.0
    assert mux["vs_stream"]["rtt64_p50_us"] == pytest.approx(2.0)
    assert math.isnan(mux["vs_stream"]["rtt64_p99_us"])
    assert mux["streams_open_per_s"] == 2.0
    assert math.isnan(mux["streams_open_exchange_per_s"])  # not measured
    assert mux["fairness"] == pytest.approx(2.0)  # the p99 in milliseconds
    assert mux["fairness_rtt64_p50_ms"] == pytest.approx(0.2)
    assert mux["fairness_bulk_MBps"] == pytest.approx(60.0)


def test_the_mux_transport_brings_its_reference_and_its_own_tests() -> None:
    plan = stream.build_plan(stream.parse_args(["--quick", "--only", "mux"]))
    assert plan.kinds == ["p2ptls", "mux"]
    assert plan.runs_test("open") and plan.runs_test("fairness")
    # bulk and rtt for both kinds, full and resumed handshakes (p2ptls only: none for mux), open
    # (two variants) and fairness.
    assert stream.plan_steps(plan) == plan.runs * (2 + 2 + 2 + 2 + 1)
    without = stream.build_plan(stream.parse_args(["--quick", "--only", "tls", "tcp"]))
    assert not without.runs_test("open") and not without.runs_test("fairness")
    # Plain TCP has the handshake rows too: connect (+ one round trip) + close, the floor.
    floor = stream.build_plan(stream.parse_args(["--only", "tcp", "--tests", "handshake"]))
    assert stream.plan_steps(floor) == floor.runs * 2
    with pytest.raises(SystemExit):
        stream.parse_args(["--open-concurrency", "64"])  # more than half the stream limit


def test_a_tiny_run_writes_every_mux_figure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(stream, "KEY_BITS", 2048)  # faster key generation; same code paths
    monkeypatch.setattr(stream, "FAIRNESS_LEAD", 1 << 20)
    path = tmp_path / "stream.json"
    arguments = ["--runs", "1", "--only", "mux", "--concurrency", "1", "--bulk-mib", "2"]
    arguments += ["--rtt-count", "20", "--open-count", "40", "--open-concurrency", "4"]
    arguments += ["--fairness-count", "20", "--stream-window", str(1 << 20), "--json", str(path)]
    assert stream.main([*arguments, "--tests", "bulk", "rtt", "open", "fairness"]) == 0
    log = capsys.readouterr().err
    assert "wrote" in log  # the log is captured
    assert "server (mux)" not in log and "server-side connection errors" not in log
    document = json.loads(path.read_text())
    mux = document["results"]["mux"]
    for key in ("bulk_MBps", "rtt64_p50_us", "streams_open_per_s", "fairness"):
        assert mux[key] > 0, key
    assert mux["streams_open_exchange_per_s"] > 0
    assert set(mux["vs_stream"]) == {"bulk_MBps", "rtt64_p50_us", "rtt64_p99_us"}
    assert all(ratio > 0 for ratio in mux["vs_stream"].values())
    assert document["results"]["bulk_MBps"]["p2ptls"] > 0  # the reference, in the same run
    assert document["params"]["mux"]["connections"]["stream_window"] == 1 << 20
    assert document["params"]["transports"] == ["p2ptls", "mux"]


def test_a_tiny_run_measures_resumed_handshakes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(stream, "KEY_BITS", 2048)
    path = tmp_path / "stream.json"
    arguments = ["--runs", "1", "--only", "p2ptls", "tls", "--concurrency", "2"]
    arguments += ["--handshakes", "6", "--tests", "handshake", "--json", str(path)]
    assert stream.main(arguments) == 0
    log = capsys.readouterr().err
    assert "not resumed" not in log and "server-side connection errors" not in log
    results = json.loads(path.read_text())["results"]
    assert set(results["handshakes_per_s"]) == {"p2ptls", "tls"}
    assert set(results["resumed_handshakes_per_s"]) == {"p2ptls", "tls_resumed"}
    assert all(rate > 0 for rate in results["resumed_handshakes_per_s"].values())


def test_the_handshake_floor_is_measured_in_the_clear(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(stream, "KEY_BITS", 2048)  # faster key generation; same code paths
    arguments = ["--runs", "1", "--only", "tcp", "--tests", "handshake", "--concurrency", "1"]
    assert stream.main([*arguments, "--handshakes", "4"]) == 0
    out = capsys.readouterr()
    assert "were not resumed" not in out.err
    assert "resumed handshakes tcp" in out.err
