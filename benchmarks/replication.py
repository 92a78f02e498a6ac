"""Benchmark state replication: p2ptls state nodes, side by side with distributed-state-network.

Measures, in one run on 127.0.0.1:

* propagation latency of one update to one peer, p50 and p99 in ms: from the writer's call
  (``await node.set`` / ``update_data``) until the peer holds the value (p2ptls: the peer's
  ``StateChanged`` event; distributed-state-network: a spin on the peer's ``read_data``);
* sustained updates per second from one writer to one peer and to ten peers: N updates of
  distinct keys, issued by 64 concurrent writer tasks (p2ptls; each ``set`` waits for its own
  write), from the first call until every peer holds all N (distributed-state-network: one
  ``update_data`` after another, as its synchronous API implies, cycling over 16 keys so its
  whole-state pushes stay small);
* the time for one update to reach every node of an N-node network (default 50 nodes, all in
  this process, fully connected by gossip before measuring): median and worst of several rounds,
  one second apart, with a garbage collection between rounds (the 50 nodes share one Python
  heap, whose full collection pauses the process for about 0.4 s; a node in a process of its own
  holds 1/50 of it); also the time the N nodes took to mesh (every node connected to every
  other) and, after the rounds, the established TCP connections per node (Linux: counted in
  ``/proc``; each node holds one per peer it shares with every protocol, N - 1 in a full mesh).

p2ptls nodes keep their state in memory here (``database=None``: distributed-state-network keeps
its state only in memory too) and sign at once (``coalesce_delay=0``); ``--durability normal`` or
``full`` puts each node's state in an SQLite file in a temporary directory instead (WAL; ``full``
syncs every commit). distributed-state-network 1.2.0 is optional (``pip install
'p2ptls[bench]'``); without it its column is empty. Its HTTP servers are bound to 127.0.0.1 (the
package itself binds every interface; the benchmark overrides that) with AES encryption on.

Targets (from the issue): propagation at least 10 times faster and sustained updates at least
100 times more than distributed-state-network (its figures from this run, else the reference
figures measured when the targets were set: 6.2–6.8 ms, taken as p50 6.2 and p99 6.8, and 160
updates/s), and one update on all 50 nodes within 100 ms.

The latency and sustained-update figures are medians of ``--runs`` runs (3; the latency runs share
one pair of nodes, every sustained-update run starts new nodes); the all-nodes figure is the median
of ``--rounds`` updates on one network.

Examples::

    .venv/bin/python benchmarks/replication.py --quick
    .venv/bin/python benchmarks/replication.py --json results.json --nodes 50
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import math
import os
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio
from rich.progress import Progress, TaskID

import p2ptls
from benchmarks._common import log, median_of, percentiles, print_table, progress, say, write_json
from p2ptls.state import MemberState, StateChanged, StateNode, StateNodeConfig, open_state_node

KEY_BITS = 2048
WRITERS = 64
DSN_KEYS = 16
REFERENCE_DSN = {"propagation_p50_ms": 6.2, "propagation_p99_ms": 6.8, "updates_per_s": 160.0}
"""distributed-state-network's figures when the targets were set (used when it is absent)."""
DEADLINE = 300.0
ROUND_SPACING = 1.0
"""Seconds between the timed updates of the network test."""


@dataclass
class Plan:
    latency_samples: int
    latency_warmup: int
    updates: int
    updates_fanout: int
    nodes: int
    rounds: int
    dsn_latency_samples: int
    dsn_updates: int
    durability: str
    runs: int


class Steps:
    """The progress bar of the whole benchmark: a log line and a step per finished measurement."""

    def __init__(self, bar: Progress, task: TaskID) -> None:
        self.bar = bar
        self.task = task

    def start(self, status: str) -> None:
        self.bar.update(self.task, status=status)
        log(status + "...")

    def done(self, message: str) -> None:
        log("  " + message)
        self.bar.advance(self.task)


# -- p2ptls ------------------------------------------------------------------------------------


class Network:
    """Makes p2ptls state nodes with pooled identities."""

    def __init__(self, count: int, plan: Plan, directory: Path) -> None:
        self.psk = p2ptls.generate_psk()
        self.identities = [p2ptls.Identity.generate(KEY_BITS) for _ in range(count)]
        self.plan = plan
        self.directory = directory
        self.opened = 0

    def config(self, index: int, bootstrap: Sequence[p2ptls.PeerRecord] = ()) -> StateNodeConfig:
        self.opened += 1
        database = None
        durability = "full"
        if self.plan.durability != "memory":
            database = self.directory / f"node-{self.opened}.sqlite3"
            durability = self.plan.durability
        return StateNodeConfig(
            identity=self.identities[index],
            psk=self.psk,
            database=database,
            durability=durability,  # type: ignore[arg-type]
            coalesce_delay=0.0,
            bootstrap=tuple(bootstrap),
            subscriber_buffer=1 << 20,
        )


async def open_nodes(
    stack: contextlib.AsyncExitStack, network: Network, count: int
) -> list[StateNode]:
    """``count`` nodes, each joining through the first; returns once all are connected."""
    nodes: list[StateNode] = []
    for index in range(count):
        bootstrap = (nodes[0].peer_record(),) if nodes else ()
        nodes.append(
            await stack.enter_async_context(open_state_node(network.config(index, bootstrap)))
        )

    def meshed(node: StateNode) -> Callable[[], bool]:
        def check() -> bool:
            members = node.members()
            return len(members) == count - 1 and all(
                m.state is MemberState.CONNECTED for m in members
            )

        return check

    with trio.fail_after(DEADLINE):
        for node in nodes:
            await node.wait_until(meshed(node))
    return nodes


async def p2ptls_latency(network: Network, plan: Plan, steps: Steps) -> list[list[float]]:
    """``plan.runs`` batches of latency samples (ms) on one pair of nodes, after one warm-up."""
    async with contextlib.AsyncExitStack() as stack:
        writer, reader = await open_nodes(stack, network, 2)
        events = reader.subscribe(StateChanged)
        batches: list[list[float]] = []
        counter = 0

        async def one(samples: list[float] | None) -> None:
            nonlocal counter
            counter += 1
            value = str(counter).encode()
            started = time.perf_counter()
            await writer.set("latency", value)
            while True:
                event = await events.receive()
                if event.key == "latency" and event.value == value:
                    break
            if samples is not None:
                samples.append((time.perf_counter() - started) * 1000)

        with trio.fail_after(DEADLINE):
            for _ in range(plan.latency_warmup):
                await one(None)
            for run in range(plan.runs):
                samples: list[float] = []
                for _ in range(plan.latency_samples):
                    await one(samples)
                batches.append(samples)
                p50, p99 = percentiles(samples, 50, 99)
                steps.done(f"[{run + 1}/{plan.runs}] p50 {p50:.3f} ms, p99 {p99:.3f} ms")
        return batches


async def p2ptls_throughput(network: Network, peers: int, updates: int) -> float:
    async with contextlib.AsyncExitStack() as stack:
        nodes = await open_nodes(stack, network, peers + 1)
        writer, readers = nodes[0], nodes[1:]
        owner = writer.peer_id
        last: list[tuple[int, int]] = []

        async def write(first: int) -> None:
            key = ""
            for i in range(first, updates, WRITERS):
                key = f"u{i}"
                await writer.set(key, b"x" * 16)
            record = writer.record(owner, key)
            assert record is not None
            last.append((record.epoch, record.sequence))

        started = time.perf_counter()
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                for first in range(min(WRITERS, updates)):
                    nursery.start_soon(write, first)
            target = max(last)
            for reader in readers:
                await reader.wait_until(_holds(reader, owner, target))
        elapsed = time.perf_counter() - started
        for reader in readers:
            assert len(reader.snapshot(owner)) == updates
        return updates / elapsed


def _holds(node: StateNode, owner: p2ptls.PeerId, version: tuple[int, int]) -> Callable[[], bool]:
    return lambda: node.version(owner) >= version


def established_tcp_connections() -> int | None:
    """TCP sockets of this process in the ESTABLISHED state (from ``/proc``; ``None`` where there
    is none). Both ends of a connection between two nodes of this process count."""
    try:
        descriptors = os.listdir("/proc/self/fd")
    except OSError:
        return None
    inodes = set()
    for descriptor in descriptors:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{descriptor}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
                    count += 1
    return count


async def p2ptls_all_nodes(network: Network, plan: Plan) -> tuple[list[float], float, float | None]:
    """The round times (ms), the time to mesh (s) and the TCP connections per node."""
    async with contextlib.AsyncExitStack() as stack:
        log(f"  starting {plan.nodes} nodes and waiting until all are connected...")
        started = time.perf_counter()
        nodes = await open_nodes(stack, network, plan.nodes)
        mesh_s = time.perf_counter() - started
        log(f"  {plan.nodes} nodes connected in {mesh_s:.1f} s")
        writer, readers = nodes[0], nodes[1:]
        owner = writer.peer_id
        times = []
        for round_ in range(plan.rounds + 1):
            value = f"round {round_}".encode()
            reached: list[float] = []

            async def watch(
                node: StateNode, value: bytes = value, reached: list[float] = reached
            ) -> None:
                await node.wait_until(lambda: node.get(owner, "all") == value)
                reached.append(time.perf_counter())

            with trio.fail_after(DEADLINE):
                async with trio.open_nursery() as nursery:
                    for node in readers:
                        nursery.start_soon(watch, node)
                    await trio.lowlevel.checkpoint()
                    begun = time.perf_counter()
                    await writer.set("all", value)
            if round_:  # the first round is a warm-up
                times.append((max(reached) - begun) * 1000)
            # The nodes share one Python heap here: a full collection of it pauses the process
            # for about 0.4 s, which a node in a process of its own (1/50 of the heap) never
            # sees; collect between rounds so that one does not fall inside a timed round.
            await trio.sleep(ROUND_SPACING / 2)
            gc.collect()
            await trio.sleep(ROUND_SPACING / 2)  # the timers the collection delayed fire here
        sockets = established_tcp_connections()
        per_node = sockets / len(nodes) if sockets is not None else None
        if per_node is not None:
            log(f"  {per_node:.1f} TCP connections per node ({len(nodes) - 1} peers each)")
        return times, mesh_s, per_node


async def run_p2ptls(plan: Plan, directory: Path, steps: Steps) -> dict[str, Any]:
    network = Network(max(plan.nodes, 11), plan, directory)
    results: dict[str, Any] = {}
    steps.start("p2ptls: propagation latency, one writer and one peer")
    batches = await p2ptls_latency(network, plan, steps)
    per_run = [percentiles(batch, 50, 99) for batch in batches]
    results["propagation_p50_ms"] = statistics.median(p50 for p50, _ in per_run)
    results["propagation_p99_ms"] = statistics.median(p99 for _, p99 in per_run)
    for key, peers, updates in (
        ("updates_per_s", 1, plan.updates),
        ("updates_per_s_10_peers", 10, plan.updates_fanout),
    ):
        steps.start(f"p2ptls: sustained updates, one writer and {peers} peer(s), {updates} updates")
        rates = []
        for run in range(plan.runs):
            rates.append(await p2ptls_throughput(network, peers, updates))
            steps.done(f"[{run + 1}/{plan.runs}] {rates[-1]:,.0f} updates/s")
        results[key] = statistics.median(rates)
    steps.start(f"p2ptls: one update reaching all {plan.nodes} nodes ({plan.rounds} rounds)")
    times, mesh_s, per_node = await p2ptls_all_nodes(network, plan)
    results["all_nodes_ms"] = statistics.median(times)
    results["all_nodes_worst_ms"] = max(times)
    results["mesh_s"] = mesh_s
    results["tcp_connections_per_node"] = per_node
    steps.done(f"median {results['all_nodes_ms']:.1f} ms, worst {max(times):.1f} ms")
    return results


# -- distributed-state-network ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.01)
    raise RuntimeError(f"distributed-state-network did not listen on {port}")


def run_dsn(plan: Plan, directory: Path, steps: Steps) -> dict[str, float] | None:
    """The two-node measurements with distributed-state-network, or ``None`` if absent."""
    # Its HTTP client honours proxy variables: make sure nothing leaves this machine.
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "*"
    try:
        dsn: Any = importlib.import_module("distributed_state_network")
        handler: Any = importlib.import_module("distributed_state_network.handler")
    except ImportError:
        return None

    def serve_local(server: Any, port: int) -> None:
        """``DSNodeServer._serve_forever``, bound to 127.0.0.1 instead of every interface."""
        server.running = True
        server.http_server = handler._DSNodeHTTPServer(("127.0.0.1", port), server)
        server.http_server.serve_forever()

    key = dsn.DSNodeServer.generate_key()

    def start(name: str, port: int, bootstrap: list[dict[str, Any]]) -> Any:
        config = dsn.DSNodeConfig.from_dict(
            {
                "node_id": name,
                "port": port,
                "network_ip": "127.0.0.1",
                "aes_key": key,
                "credential_dir": str(directory / "dsn-credentials"),
                "logging_dir": str(directory / "dsn-logs"),
                "bootstrap_nodes": bootstrap,
            }
        )
        server = dsn.DSNodeServer(config, lambda _message: None)
        server.thread = threading.Thread(target=serve_local, args=(server, port), daemon=True)
        server.thread.start()
        _wait_listening(port)
        for endpoint in server.config.bootstrap_nodes:
            server.node.bootstrap(endpoint)
        return server

    port_a, port_b = _free_port(), _free_port()
    writer = start("writer", port_a, [])
    reader = start("reader", port_b, [{"address": "127.0.0.1", "port": port_a}])
    p50s: list[float] = []
    p99s: list[float] = []
    rates: list[float] = []
    try:
        deadline = time.monotonic() + DEADLINE
        warmup = plan.latency_warmup // 5
        for run in range(plan.runs):
            latency = []
            for i in range(warmup + plan.dsn_latency_samples):
                value = f"{run}/{i}"
                started = time.perf_counter()
                writer.node.update_data("latency", value)
                while reader.node.read_data("writer", "latency") != value:
                    if time.monotonic() > deadline:
                        raise RuntimeError("distributed-state-network did not propagate")
                if i >= warmup:
                    latency.append((time.perf_counter() - started) * 1000)
            warmup = 0  # the first run warmed the pair up
            started = time.perf_counter()
            for i in range(plan.dsn_updates):
                writer.node.update_data(f"u{i % DSN_KEYS}", f"{run}/{i}")
            last = plan.dsn_updates - 1
            final = f"{run}/{last}"
            while reader.node.read_data("writer", f"u{last % DSN_KEYS}") != final:
                if time.monotonic() > deadline:
                    raise RuntimeError("distributed-state-network did not propagate")
            rates.append(plan.dsn_updates / (time.perf_counter() - started))
            p50, p99 = percentiles(latency, 50, 99)
            p50s.append(p50)
            p99s.append(p99)
            steps.done(
                f"[{run + 1}/{plan.runs}] p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
                f"{rates[-1]:,.0f} updates/s"
            )
    finally:
        for server in (reader, writer):
            with contextlib.suppress(Exception):
                server.stop()
    return {
        "propagation_p50_ms": statistics.median(p50s),
        "propagation_p99_ms": statistics.median(p99s),
        "updates_per_s": statistics.median(rates),
    }


# -- report -------------------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}"


def report(
    p2p: dict[str, Any], dsn: dict[str, float] | None, plan: Plan, why_no_dsn: str = ""
) -> list[tuple[str, bool]]:
    """Print the table and the targets; return ``(target, met)`` pairs."""
    basis = dsn or REFERENCE_DSN
    source = "this run" if dsn else "reference figures"
    p50_limit = basis["propagation_p50_ms"] / 10
    p99_limit = basis["propagation_p99_ms"] / 10
    rate_floor = basis["updates_per_s"] * 100
    n = plan.nodes

    def theirs(metric: str) -> float | None:
        return dsn[metric] if dsn else None

    rows: list[tuple[str, float, float | None, str, bool | None]] = [
        (
            "propagation p50 (ms)",
            p2p["propagation_p50_ms"],
            theirs("propagation_p50_ms"),
            f"<= {fmt(p50_limit)} (dsn/10)",
            p2p["propagation_p50_ms"] <= p50_limit,
        ),
        (
            "propagation p99 (ms)",
            p2p["propagation_p99_ms"],
            theirs("propagation_p99_ms"),
            f"<= {fmt(p99_limit)} (dsn/10)",
            p2p["propagation_p99_ms"] <= p99_limit,
        ),
        (
            "updates/s, 1 peer",
            p2p["updates_per_s"],
            theirs("updates_per_s"),
            f">= {fmt(rate_floor)} (dsn x100)",
            p2p["updates_per_s"] >= rate_floor,
        ),
        ("updates/s, 10 peers", p2p["updates_per_s_10_peers"], None, "(reported)", None),
        (f"time to mesh {n} nodes (s)", p2p["mesh_s"], None, "(reported)", None),
        (
            "TCP connections per node",
            p2p["tcp_connections_per_node"] or math.nan,
            None,
            f"(reported; {n - 1} peers each)",
            None,
        ),
        (
            f"one update on all {n} nodes (ms)",
            p2p["all_nodes_ms"],
            None,
            f"<= 100 (worst of {plan.rounds}: {fmt(p2p['all_nodes_worst_ms'])})",
            p2p["all_nodes_worst_ms"] <= 100,
        ),
    ]
    headers = ("metric", "p2ptls", "dsn", "target", "met")
    table = [
        (name, fmt(ours), fmt(theirs), target, "-" if met is None else ("yes" if met else "NO"))
        for name, ours, theirs, target, met in rows
    ]
    mode = "in memory" if plan.durability == "memory" else f"SQLite, durability={plan.durability}"
    say()
    say(
        f"p2ptls state nodes: {mode}, coalesce_delay=0, RSA-{KEY_BITS}; "
        f"{plan.latency_samples} latency samples; {plan.updates} updates (1 peer), "
        f"{plan.updates_fanout} (10 peers) by {WRITERS} writer tasks; {n} nodes x {plan.rounds}"
    )
    if dsn is None:
        say(
            f"distributed-state-network {why_no_dsn}: targets use its reference figures "
            f"({REFERENCE_DSN['propagation_p50_ms']}/{REFERENCE_DSN['propagation_p99_ms']} ms, "
            f"{REFERENCE_DSN['updates_per_s']:.0f} updates/s)"
        )
    else:
        say(
            f"distributed-state-network 1.2.0: {plan.dsn_latency_samples} latency samples, "
            f"{plan.dsn_updates} sequential updates; targets use its figures from {source}"
        )
    print_table(
        headers,
        table,
        title=f"State replication on 127.0.0.1 (latency and updates/s: {median_of(plan.runs)})",
    )
    return [(name, bool(met)) for name, _o, _t, _target, met in rows if met is not None]


def build_plan(args: argparse.Namespace) -> Plan:
    quick = args.quick
    return Plan(
        latency_samples=args.samples or (500 if quick else 3000),
        latency_warmup=50 if quick else 200,
        updates=args.updates or (10_000 if quick else 50_000),
        updates_fanout=args.updates_fanout or (5_000 if quick else 20_000),
        nodes=args.nodes,
        rounds=args.rounds or (5 if quick else 20),
        dsn_latency_samples=200 if quick else 1000,
        dsn_updates=300 if quick else 1500,
        durability=args.durability,
        runs=args.runs,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller volumes (about a minute)")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--nodes", type=int, default=50, help="nodes of the network test (50)")
    parser.add_argument("--rounds", type=int, help="updates timed on the network (20, quick 5)")
    parser.add_argument("--samples", type=int, help="latency samples (3000, quick 500)")
    parser.add_argument("--updates", type=int, help="updates to one peer (50000, quick 10000)")
    parser.add_argument(
        "--updates-fanout", type=int, help="updates to ten peers (20000, quick 5000)"
    )
    parser.add_argument(
        "--durability",
        choices=("memory", "normal", "full"),
        default="memory",
        help="p2ptls state in memory (default) or in SQLite files with this durability",
    )
    parser.add_argument("--no-dsn", action="store_true", help="skip distributed-state-network")
    parser.add_argument(
        "--runs", type=int, default=3, help="latency and update runs; medians reported (3)"
    )
    args = parser.parse_args(argv)
    if args.nodes < 2:
        parser.error("--nodes must be at least 2")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = build_plan(args)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 8 * plan.nodes * plan.nodes))
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="p2ptls-replication-") as tmp,
        progress() as bar,
    ):
        total = 3 * plan.runs + 1 + (0 if args.no_dsn else plan.runs)
        steps = Steps(bar, bar.add_task("replication", total=total, status=""))
        log(f"generating {max(plan.nodes, 11)} RSA-{KEY_BITS} identities...")
        p2p = trio.run(run_p2ptls, plan, Path(tmp), steps)
        dsn = None
        why_no_dsn = "skipped (--no-dsn)"
        if not args.no_dsn:
            why_no_dsn = "1.2.0 is not installed"
            steps.start("distributed-state-network: the same two-node measurements")
            dsn = run_dsn(plan, Path(tmp), steps)
            if dsn is None:
                log("distributed-state-network 1.2.0 is not installed; its column is skipped")
                bar.update(steps.task, total=total - plan.runs)
        bar.update(steps.task, status="")
    verdicts = report(p2p, dsn, plan, why_no_dsn)
    log(f"total time {time.perf_counter() - started:.1f} s")
    if args.json:
        nodes_key = "all_50_nodes_ms" if plan.nodes == 50 else f"all_{plan.nodes}_nodes_ms"
        results = {
            "propagation_p50_ms": {
                "p2ptls": p2p["propagation_p50_ms"],
                "dsn": dsn["propagation_p50_ms"] if dsn else None,
            },
            "propagation_p99_ms": {
                "p2ptls": p2p["propagation_p99_ms"],
                "dsn": dsn["propagation_p99_ms"] if dsn else None,
            },
            "updates_per_s": {
                "p2ptls": p2p["updates_per_s"],
                "dsn": dsn["updates_per_s"] if dsn else None,
            },
            "updates_per_s_10_peers": p2p["updates_per_s_10_peers"],
            nodes_key: p2p["all_nodes_ms"],
            "nodes": plan.nodes,
            "all_nodes_worst_ms": p2p["all_nodes_worst_ms"],
            "mesh_s": p2p["mesh_s"],
            "tcp_connections_per_node": p2p["tcp_connections_per_node"],
            "durability": plan.durability,
            "targets_met": dict(verdicts),
        }
        params = {
            "latency_samples": plan.latency_samples,
            "latency_warmup": plan.latency_warmup,
            "updates": plan.updates,
            "updates_fanout": plan.updates_fanout,
            "writer_tasks": WRITERS,
            "nodes": plan.nodes,
            "rounds": plan.rounds,
            "dsn": dsn is not None,
            "dsn_latency_samples": plan.dsn_latency_samples,
            "dsn_updates": plan.dsn_updates,
            "durability": plan.durability,
            "key_bits": KEY_BITS,
        }
        write_json(
            args.json,
            "replication",
            params=params,
            quick=args.quick,
            runs=plan.runs,
            results=results,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
