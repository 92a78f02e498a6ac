"""The network simulator (``p2ptls.dht._sim`` and its command line): small networks, a simulated
hour or so each, deterministic by seed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import attrs
import pytest

from p2ptls.dht import simulate
from p2ptls.dht._sim import SimConfig, SimStats, Simulation

SMALL = SimConfig(nodes=300, lookups=100, values=40, mutables=40, seed=7)


@pytest.fixture(scope="module")
def small_run() -> SimStats:
    return Simulation(SMALL).run()


def test_the_same_seed_gives_the_same_figures(small_run: SimStats) -> None:
    again = Simulation(SMALL).run()
    assert simulate.figures(SMALL, again) == simulate.figures(SMALL, small_run)
    assert simulate.extra_figures(again) == simulate.extra_figures(small_run)
    other = Simulation(attrs.evolve(SMALL, seed=8)).run()
    assert simulate.extra_figures(other) != simulate.extra_figures(small_run)


def test_every_workload_ran_under_churn(small_run: SimStats) -> None:
    assert len(small_run.hops) == SMALL.lookups
    assert small_run.reads == SMALL.values
    assert small_run.mutable_reads == SMALL.mutables
    # 20% of 300 nodes per hour over the run's 71 minutes: about 70 replaced.
    assert 40 <= small_run.nodes_left <= 110
    assert small_run.nodes_joined == SMALL.nodes + small_run.nodes_left
    assert small_run.bytes_sent > 0


def test_churn_keeps_stored_values_readable_an_hour_later(small_run: SimStats) -> None:
    assert small_run.success_churn == 1.0
    assert small_run.success >= 0.95
    assert max(small_run.hops) <= 6


def test_stale_holders_do_not_win_the_quorum_read(small_run: SimStats) -> None:
    assert small_run.stale_read_newest >= 0.95


def test_the_quorum_read_measure_sees_stale_holders() -> None:
    """Every holder stale: no read can return the newest version (the measure is not vacuous)."""
    config = attrs.evolve(SMALL, lookups=0, values=0, mutables=20, stale_fraction=1.0)
    assert Simulation(config).run().stale_read_newest == 0.0


def test_a_static_lossless_network_finds_the_nearest_node() -> None:
    config = SimConfig(nodes=300, lookups=100, values=10, mutables=0, churn_per_hour=0, loss=0)
    stats = Simulation(config).run()
    assert stats.nodes_left == 0
    assert stats.success >= 0.99
    assert stats.success_churn == 1.0


def test_nodes_can_join_one_by_one() -> None:
    config = SimConfig(nodes=150, lookups=50, values=10, mutables=0, realistic_join=True, seed=3)
    stats = Simulation(config).run()
    assert stats.success >= 0.95
    assert stats.success_churn == 1.0


def test_the_command_line_writes_the_issue_keys(tmp_path: Path) -> None:
    output = tmp_path / "sim.json"
    argv = ["--nodes", "200", "--lookups", "30", "--values", "10", "--mutables", "10"]
    assert simulate.main([*argv, "--seed", "5", "--quiet", "--json", str(output)]) == 0
    document = json.loads(output.read_text())
    assert set(document["sim"]) == {
        "nodes",
        "hops_p50",
        "hops_p99",
        "lookup_ms_p50",
        "lookup_ms_p99",
        "success",
        "success_churn",
        "stale_read_newest",
    }
    assert document["sim"]["nodes"] == 200
    assert document["params"]["seed"] == 5
    assert {"date", "commit", "results"} <= set(document)
    assert document["results"]["peak_rss_mb"] > 0


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is not None, reason="has matplotlib")
def test_plots_without_matplotlib_say_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert simulate.main(["--nodes", "50", "--quiet", "--plot", str(tmp_path)]) == 2
    assert "matplotlib" in capsys.readouterr().err
