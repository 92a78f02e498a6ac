"""Benchmark SLLP (encrypted datagrams) against plain trio UDP sockets, and SLLP under loss.

Measures, on 127.0.0.1, with both ends in this process and trio run (the same set-up as the
figures measured for the earlier Artifice implementation):

* throughput: for ``--seconds`` the sender sends as fast as it can while the receiver reads;
  datagrams per second and MB/s (10**6 bytes of UDP payload) *delivered*, for

  - ``udp``: plain ``trio.socket`` datagrams of 1200 bytes, one ``sendto`` per datagram;
  - ``sllp``: SLLP messages of ``--message-size`` bytes (50 KB: 44 datagrams of 1200 bytes, sent
    with UDP segmentation offload and read with receive coalescing where the kernel has them);
  - ``sllp-1dgram``: SLLP messages of one datagram (1149 bytes) each, the per-message cost;
  - ``sllp-plain``: as ``sllp`` with GSO/GRO turned off (the batched plain path).

* loss: SLLP messages paced at ``--rate`` per second through the lossy relay
  (:class:`p2ptls.sllp.relay.UdpRelay`) dropping 0 %, 1 % and 5 % of datagrams: the fraction
  delivered and the p50/p99 message latency (send to ``receive()``), for messages of 1, 9 and 44
  datagrams. The JSON ``loss`` figures are those of the 9-datagram (10 KB) messages.

Examples::

    .venv/bin/python benchmarks/sllp.py --quick
    .venv/bin/python benchmarks/sllp.py --json results.json
"""

from __future__ import annotations

import argparse
import json
import math
import socket as stdsocket
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

import p2ptls
from benchmarks._common import log, percentile
from p2ptls.sllp import Message, SllpChannel, SllpConfig
from p2ptls.sllp.relay import LinkConditions, UdpRelay
from p2ptls.sllp.testing import channel_pair
from p2ptls.sllp.transport import UdpTransport

DATAGRAM = 1200
STAMP = struct.Struct(">d")
LOSS_RATES = (0, 1, 5)
LOSS_SIZES = (1_000, 10_000, 50_000)
JSON_LOSS_SIZE = 10_000


# -- throughput ---------------------------------------------------------------------------------


async def plain_udp(seconds: float) -> dict[str, float]:
    receiver = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    sender = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    for sock in (receiver, sender):
        sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_SNDBUF, 4 * 1024 * 1024)
    await receiver.bind(("127.0.0.1", 0))
    await sender.bind(("127.0.0.1", 0))
    target = receiver.getsockname()
    payload = bytes(DATAGRAM)
    received = 0
    buffer = bytearray(2048)
    async with trio.open_nursery() as nursery:

        async def receive() -> None:
            nonlocal received
            while True:
                await receiver.recv_into(buffer)
                received += 1

        nursery.start_soon(receive)
        start = trio.current_time()
        end = start + seconds
        sent = 0
        while trio.current_time() < end:
            for _ in range(64):
                await sender.sendto(payload, target)
            sent += 64
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    receiver.close()
    sender.close()
    return {
        "datagrams_per_s": received / elapsed,
        "MBps": received * DATAGRAM / elapsed / 1e6,
        "app_MBps": received * DATAGRAM / elapsed / 1e6,
        "sent": sent,
        "delivered": received / sent,
    }


async def sllp_throughput(
    seconds: float, message_size: int, config: SllpConfig, identities: Any
) -> dict[str, float]:
    a, b = await channel_pair(config, identities=identities)
    payload = bytes(message_size)
    delivered = 0
    async with trio.open_nursery() as nursery:

        async def receive() -> None:
            nonlocal delivered
            async for _ in b:
                delivered += 1

        nursery.start_soon(receive)
        start = trio.current_time()
        end = start + seconds
        sent = 0
        while trio.current_time() < end:
            await a.send(payload)
            sent += 1
        elapsed = trio.current_time() - start
        received = b.statistics()
        nursery.cancel_scope.cancel()
    transport = a.transport
    assert isinstance(transport, UdpTransport) and isinstance(b.transport, UdpTransport)
    result = {
        "datagrams_per_s": received.datagrams_received / elapsed,
        "MBps": received.bytes_received / elapsed / 1e6,
        "app_MBps": delivered * message_size / elapsed / 1e6,
        "sent": sent,
        "delivered": delivered / sent if sent else math.nan,
        "gso": float(transport.gso),
        "gro": float(b.transport.gro),
    }
    await a.aclose()
    await b.aclose()
    return result


# -- loss ---------------------------------------------------------------------------------------


async def lossy_run(
    drop_percent: int, message_size: int, count: int, rate: float, identities: Any
) -> dict[str, float]:
    config = SllpConfig(reassembly_timeout=0.2)
    ta, tb = UdpTransport.bind(("127.0.0.1", 0)), UdpTransport.bind(("127.0.0.1", 0))
    relay = UdpRelay(
        LinkConditions(drop=drop_percent / 100, seed=drop_percent + message_size),
        a_address=ta.local_address,
        b_address=tb.local_address,
    )
    channels: tuple[SllpChannel, SllpChannel] = await channel_pair(
        config, identities=identities, transports=(ta, tb)
    )
    a, b = channels
    ta.set_peer(relay.a_side)
    tb.set_peer(relay.b_side)
    latencies: list[float] = []
    filler = bytes(max(0, message_size - STAMP.size))
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.run)

        async def receive() -> None:
            async for message in b:
                assert isinstance(message, Message)
                (sent_at,) = STAMP.unpack_from(message.data)
                latencies.append(trio.current_time() - sent_at)

        nursery.start_soon(receive)
        interval = 1 / rate
        next_send = trio.current_time()
        for _ in range(count):
            await a.send(STAMP.pack(trio.current_time()) + filler)
            next_send += interval
            await trio.sleep_until(next_send)
        await trio.sleep(0.1 + 0.05 * message_size / 10_000)  # let the last ones land
        nursery.cancel_scope.cancel()
    await a.aclose()
    await b.aclose()
    return {
        "delivered": len(latencies) / count,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "datagrams_per_message": -(-message_size // (DATAGRAM - 51)),
    }


# -- main ---------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    identities = (p2ptls.Identity.generate(2048), p2ptls.Identity.generate(2048))
    results: dict[str, Any] = {"throughput": {}, "loss_table": {}}
    plans = [
        ("udp", None, None),
        ("sllp", args.message_size, SllpConfig()),
        ("sllp-1dgram", DATAGRAM - 51, SllpConfig()),
        ("sllp-plain", args.message_size, SllpConfig(gso=False, gro=False)),
    ]
    for name, size, config in plans:
        best: dict[str, float] | None = None
        for _ in range(args.repeat):
            log(f"throughput: {name} ...")
            if size is None or config is None:
                row = await plain_udp(args.seconds)
            else:
                row = await sllp_throughput(args.seconds, size, config, identities)
            if best is None or row["datagrams_per_s"] > best["datagrams_per_s"]:
                best = row
        results["throughput"][name] = best
    for size in LOSS_SIZES:
        for drop in LOSS_RATES:
            log(f"loss: {drop}% with {size}-byte messages ...")
            results["loss_table"][f"{size}/{drop}"] = await lossy_run(
                drop, size, args.messages, args.rate, identities
            )
    return results


def report(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    throughput = results["throughput"]
    print(
        f"\nThroughput on 127.0.0.1, one process, {args.seconds:g} s each "
        f"(best of {args.repeat}); datagrams of {DATAGRAM} bytes"
    )
    header = f"{'kind':<13} {'datagrams/s':>12} {'MB/s':>8} {'app MB/s':>9} {'delivered':>9}"
    print(header)
    print("-" * len(header))
    for name, row in throughput.items():
        print(
            f"{name:<13} {row['datagrams_per_s']:>12,.0f} {row['MBps']:>8.1f} "
            f"{row['app_MBps']:>9.1f} {row['delivered']:>9.3f}"
        )
    ratio = throughput["sllp"]["datagrams_per_s"] / throughput["udp"]["datagrams_per_s"]
    gso, gro = throughput["sllp"].get("gso"), throughput["sllp"].get("gro")
    print(
        f"sllp / udp datagrams per second: {ratio:.2f}x (target >= 1, aim 3); GSO={gso} GRO={gro}"
    )
    print(
        f"\nLoss through the relay: {args.messages} messages at {args.rate:g}/s "
        "(delivered fraction, message latency)"
    )
    header = (
        f"{'message':>8} {'datagrams':>9} {'drop':>5} {'delivered':>9} {'p50 ms':>8} {'p99 ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for key, row in results["loss_table"].items():
        size, drop = key.split("/")
        print(
            f"{size:>8} {row['datagrams_per_message']:>9} {drop + '%':>5} "
            f"{row['delivered']:>9.3f} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f}"
        )
    summary = {
        "datagrams_per_s": {
            "sllp": throughput["sllp"]["datagrams_per_s"],
            "udp": throughput["udp"]["datagrams_per_s"],
        },
        "MBps": {"sllp": throughput["sllp"]["MBps"], "udp": throughput["udp"]["MBps"]},
        "loss": {
            str(drop): {
                key: results["loss_table"][f"{JSON_LOSS_SIZE}/{drop}"][key]
                for key in ("delivered", "p50_ms", "p99_ms")
            }
            for drop in LOSS_RATES
        },
        "details": results,
    }
    return summary


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="shorter runs (under a minute)")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--seconds", type=float, default=None, help="per throughput run")
    parser.add_argument("--repeat", type=int, default=None, help="throughput runs (best kept)")
    parser.add_argument("--message-size", type=int, default=50_000)
    parser.add_argument("--messages", type=int, default=None, help="messages per loss run")
    parser.add_argument("--rate", type=float, default=500.0, help="messages per second (loss)")
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 1.0 if args.quick else 3.0
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.messages is None:
        args.messages = 300 if args.quick else 2000
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = trio.run(run, args)
    summary = report(results, args)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(summary, file, indent=2)
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
