"""Plan a DHT network: simulate thousands of nodes on a virtual clock and report what they see.

Usage::

    python -m p2ptls.dht.simulate --nodes 10000 --lookups 1000 --seed 1 --json sim.json

The engine (:mod:`p2ptls.dht._sim`) runs the real routing table, record store and lookup of
every node, with log-normal message latency, message loss and churn; its docstring says what is
simulated and what is simplified. This module is the command line and the report: a progress
bar while it runs, then a table of the figures against the DHT's targets, and optionally a JSON
document (``--json``) and plots of the lookup-latency and hop-count distributions (``--plot``,
which needs matplotlib: ``pip install 'p2ptls[bench]'``).

Figures: *hops* is the longest discovery chain among a lookup's ``k`` nearest results; *lookup
ms* runs from a lookup's start to its end (its ``k`` nearest answered or failed; what a caller
waits for), and *nearest ms* to the answer of the nearest node it found; *success* is the share
of lookups of random keys that found the nearest live node; *success_churn* the share of values
found an hour after they were stored, under churn; *stale_read_newest* the share of quorum reads
of mutable values whose newest answer was the newest version; *bytes per node* counts the
encoded size of every message sent, over every node that took part; *memory* is the process's
peak resident set size.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .._run_info import git_commit, json_safe
from ._sim import SimConfig, SimStats, Simulation

TARGETS: Mapping[str, tuple[str, float]] = {
    "hops_p50": ("<=", 3),
    "hops_p99": ("<=", 6),
    "lookup_ms_p50": ("<=", 200),
    "lookup_ms_p99": ("<=", 800),
    "success_churn": (">=", 0.999),
    "stale_read_newest": (">=", 0.99),
    "peak_rss_mb": ("<=", 4096),
}
"""The DHT issue's targets for a 10,000-node network."""


def _percentiles(values: Sequence[float], *qs: int) -> list[float]:
    """Inclusive percentiles (as ``benchmarks/_common.py`` takes them); NaN when empty."""
    if len(values) < 2:
        return [float(values[0]) if values else math.nan for _ in qs]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return [cuts[q - 1] for q in qs]


def figures(config: SimConfig, stats: SimStats) -> dict[str, float]:
    """The issue's ``sim`` figures of a run (deterministic for a given config)."""
    hops_p50, hops_p99 = _percentiles([float(h) for h in stats.hops], 50, 99)
    lookup_p50, lookup_p99 = _percentiles(stats.lookup_seconds, 50, 99)
    return {
        "nodes": config.nodes,
        "hops_p50": hops_p50,
        "hops_p99": hops_p99,
        "lookup_ms_p50": 1000 * lookup_p50,
        "lookup_ms_p99": 1000 * lookup_p99,
        "success": stats.success,
        "success_churn": stats.success_churn,
        "stale_read_newest": stats.stale_read_newest,
    }


def extra_figures(stats: SimStats) -> dict[str, float]:
    """Further figures of a run (deterministic for a given config)."""
    nearest_p50, nearest_p99 = _percentiles(stats.nearest_seconds, 50, 99)
    return {
        "nearest_ms_p50": 1000 * nearest_p50,
        "nearest_ms_p99": 1000 * nearest_p99,
        "bytes_per_node": stats.bytes_sent / max(stats.nodes_joined, 1),
        "messages": stats.messages_sent,
        "lookups": len(stats.hops),
        "reads": stats.reads,
        "mutable_reads": stats.mutable_reads,
        "nodes_joined": stats.nodes_joined,
        "nodes_left": stats.nodes_left,
    }


def document(config: SimConfig, stats: SimStats, measured: Mapping[str, float]) -> dict[str, Any]:
    """The JSON document: the shape of ``benchmarks/*.py`` (benchmark, params, date, commit,
    python, machine, results), with the issue's figures under ``sim``."""
    return {
        "benchmark": "dht_sim",
        "params": json_safe(attrs.asdict(config)),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(Path(__file__).resolve().parent),
        "python": platform.python_version(),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
        "sim": json_safe(figures(config, stats)),
        "results": json_safe({**extra_figures(stats), **measured}),
    }


def _cell(value: float) -> str:
    if math.isnan(value):
        return "-"
    if value == int(value) and abs(value) >= 1:
        return f"{value:,.0f}"
    return f"{value:.4f}" if value < 10 else f"{value:,.1f}"


def summary(config: SimConfig, stats: SimStats, measured: Mapping[str, float]) -> Table:
    """The rich table of every figure, with its target where the issue sets one."""
    table = Table(title=f"DHT simulation: {config.nodes:,} nodes, seed {config.seed}")
    for header in ("figure", "value", "target", "met"):
        table.add_column(header, justify="left" if header == "figure" else "right")
    rows = {**figures(config, stats), **extra_figures(stats), **measured}
    for name, value in rows.items():
        target = TARGETS.get(name)
        if target is None:
            table.add_row(name, _cell(value), "", "")
            continue
        sign, bound = target
        met = value <= bound if sign == "<=" else value >= bound
        verdict = "-" if math.isnan(value) else ("yes" if met else "[bold red]no[/]")
        table.add_row(name, _cell(value), f"{sign} {bound:g}", verdict)
    return table


def plot(stats: SimStats, directory: Path) -> list[Path]:
    """Histograms of lookup latency and hop counts, as PNG files in ``directory``."""
    matplotlib = importlib.import_module("matplotlib")  # an optional dependency
    matplotlib.use("Agg")
    pyplot = importlib.import_module("matplotlib.pyplot")

    directory.mkdir(parents=True, exist_ok=True)
    latency = directory / "lookup_latency.png"
    figure, axes = pyplot.subplots(figsize=(7, 4))
    axes.hist([1000 * s for s in stats.lookup_seconds], bins=60, alpha=0.7, label="lookup end")
    axes.hist([1000 * s for s in stats.nearest_seconds], bins=60, alpha=0.7, label="nearest found")
    axes.set_xlabel("ms")
    axes.set_ylabel("lookups")
    axes.legend()
    figure.savefig(latency, dpi=100, bbox_inches="tight")
    pyplot.close(figure)
    hops = directory / "hops.png"
    figure, axes = pyplot.subplots(figsize=(7, 4))
    counts = [stats.hops.count(h) for h in range(max(stats.hops, default=0) + 1)]
    axes.bar(range(len(counts)), counts)
    axes.set_xlabel("hops")
    axes.set_ylabel("lookups")
    figure.savefig(hops, dpi=100, bbox_inches="tight")
    pyplot.close(figure)
    return [latency, hops]


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = SimConfig()
    parser = argparse.ArgumentParser(
        prog="python -m p2ptls.dht.simulate", description=__doc__.split("\n\n")[0]
    )
    add = parser.add_argument
    add("--nodes", type=int, default=defaults.nodes)
    add("--lookups", type=int, default=defaults.lookups, help="lookups of random keys")
    add("--values", type=int, default=defaults.values, help="immutable values stored, then read")
    add("--mutables", type=int, default=defaults.mutables, help="mutable values (stale holders)")
    add("--seed", type=int, default=defaults.seed)
    add("--churn", type=float, default=defaults.churn_per_hour, help="nodes replaced per hour")
    add("--loss", type=float, default=defaults.loss, help="probability a message is lost")
    add("--latency-median-ms", type=float, default=1000 * defaults.latency_median)
    add("--latency-p99-ms", type=float, default=1000 * defaults.latency_p99)
    add("--stale", type=float, default=defaults.stale_fraction, help="stale holders' share")
    add("--quorum", type=int, default=defaults.read_quorum, help="values a mutable read takes")
    add("--disjoint-paths", type=int, default=defaults.disjoint_paths)
    add("--request-timeout", type=float, default=defaults.request_timeout, help="seconds")
    add("--table-tick", type=float, default=defaults.table_tick,
        help="seconds between runs of each routing table's timers (0: never)")  # fmt: skip
    add("--realistic-join", action="store_true", help="bootstrap by real joins (slow)")
    add("--json", type=Path, metavar="FILE", help="write the figures as JSON")
    add("--plot", type=Path, metavar="DIR", help="write latency and hop plots (matplotlib)")
    add("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def _config(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        nodes=args.nodes,
        lookups=args.lookups,
        values=args.values,
        mutables=args.mutables,
        seed=args.seed,
        churn_per_hour=args.churn,
        loss=args.loss,
        latency_median=args.latency_median_ms / 1000,
        latency_p99=args.latency_p99_ms / 1000,
        stale_fraction=args.stale,
        read_quorum=args.quorum,
        disjoint_paths=args.disjoint_paths,
        request_timeout=args.request_timeout,
        table_tick=args.table_tick,
        realistic_join=args.realistic_join,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulation the arguments describe; print the report; write JSON and plots."""
    args = _arguments(argv)
    config = _config(args)
    if args.plot is not None:
        try:
            importlib.import_module("matplotlib")
        except ImportError:
            print("--plot needs matplotlib: pip install 'p2ptls[bench]'", file=sys.stderr)
            return 2
    console = Console(stderr=True)
    started = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console, disable=args.quiet) as bar:
        task = bar.add_task("bootstrap", total=1.0)

        def progress(phase: str, fraction: float) -> None:
            bar.update(task, description=phase, completed=fraction)

        stats = Simulation(config, progress=progress).run()
    measured = {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_seconds": time.perf_counter() - started,
    }
    Console().print(summary(config, stats, measured))
    if args.json is not None:
        args.json.write_text(json.dumps(document(config, stats, measured), indent=2) + "\n")
    if args.plot is not None:
        for path in plot(stats, args.plot):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
