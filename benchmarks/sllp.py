"""Benchmark SLLP (encrypted datagrams) against plain trio UDP sockets, and SLLP under loss.

Measures, on 127.0.0.1, with both ends in this process and trio run (the same set-up as the
figures measured for the earlier Artifice implementation):

* throughput: for ``--seconds`` the sender sends as fast as it can while the receiver reads;
  datagrams per second and MB/s (10**6 bytes of UDP payload) *delivered*, for

  - ``udp``: plain ``trio.socket`` datagrams of 1200 bytes, one ``sendto`` per datagram;
  - ``sllp``: SLLP messages of ``--message-size`` bytes (50 KB: 44 datagrams of 1200 bytes, sent
    with UDP segmentation offload and read with receive coalescing where the kernel has them);
  - ``sllp-1dgram``: SLLP messages of one datagram (1149 bytes) each, the per-message cost;
  - ``sllp-plain``: as ``sllp`` with GSO/GRO turned off (the batched plain path);
  - ``sllp-path``: as ``sllp`` with datagrams sized from the path MTU (the channel's default;
    65,507 bytes on loopback, so a 50 KB message is one datagram): compare its MB/s.

  Every other SLLP figure fixes 1200-byte datagrams (``SllpConfig(datagram_size=1200)``), the
  size of the plain UDP datagrams it is compared with.

* small messages (JSON ``small_messages_per_s``): one-datagram messages of 64 and 1,000 bytes
  sent as fast as the receiver keeps up (the sender parks while it is 512 messages ahead of what
  the receiver counted, so none is lost to a full socket buffer), messages delivered per second:

  - ``udp``: plain ``trio.socket``, one ``await sendto`` per message and one ``await recv_into``
    per message (trio's ordinary datagram API);
  - ``sllp``: ``send_many`` of 64 messages (one segmentation-offload ``sendmsg`` per train of
    equal-sized datagrams) and ``receive_many`` (one coalesced read decrypted in one call);
  - ``sllp-plain``: the same with GSO/GRO off (one ``sendto`` and one read per datagram);
  - ``sllp-one-by-one``: ``send`` and ``receive`` per message.

  Ratios to ``udp`` are taken within each run; the top-level JSON figures are the 64-byte ones,
  ``by_size`` has both sizes.

* loss: SLLP messages paced at ``--rate`` per second through the lossy relay
  (:class:`p2ptls.sllp.relay.UdpRelay`) dropping 0 %, 1 % and 5 % of datagrams: the fraction
  delivered and the p50/p99 message latency (send to ``receive()``), for messages of 1, 9 and 44
  datagrams. The JSON ``loss`` figures are those of the 9-datagram (10 KB) messages.

Every figure is the median of ``--runs`` runs (3).

Examples::

    .venv/bin/python benchmarks/sllp.py --quick
    .venv/bin/python benchmarks/sllp.py --json results.json
"""

from __future__ import annotations

import argparse
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
from benchmarks._common import (
    log,
    median_of,
    median_of_runs,
    percentiles,
    print_table,
    progress,
    say,
    write_json,
)
from p2ptls.sllp import Message, SllpChannel, SllpConfig
from p2ptls.sllp.relay import LinkConditions, UdpRelay
from p2ptls.sllp.testing import channel_pair
from p2ptls.sllp.transport import UdpTransport

DATAGRAM = 1200
STAMP = struct.Struct(">d")
LOSS_RATES = (0, 1, 5)
LOSS_SIZES = (1_000, 10_000, 50_000)
JSON_LOSS_SIZE = 10_000
SMALL_SIZES = (64, 1_000)
SMALL_BATCH = 64  # messages per send_many (and per burst of sendto on the UDP side)
SMALL_WINDOW = 512  # messages the sender may be ahead of the receiver


# -- throughput ---------------------------------------------------------------------------------


async def udp_pair() -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    """A receiving and a sending plain UDP socket on 127.0.0.1, with 4 MiB buffers."""
    receiver = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    sender = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    for sock in (receiver, sender):
        sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_SNDBUF, 4 * 1024 * 1024)
    await receiver.bind(("127.0.0.1", 0))
    await sender.bind(("127.0.0.1", 0))
    return receiver, sender


async def plain_udp(seconds: float) -> dict[str, float]:
    receiver, sender = await udp_pair()
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


# -- small messages -----------------------------------------------------------------------------


class Credit:
    """The receiver's count and a lot the sender parks on while it is ``WINDOW`` ahead: messages
    go as fast as the receiver keeps up, never overrunning the socket buffer (so none is lost)."""

    def __init__(self) -> None:
        self.received = 0
        self.lot = trio.lowlevel.ParkingLot()

    def add(self, count: int) -> None:
        self.received += count
        if self.lot:
            self.lot.unpark_all()

    async def wait_below(self, sent: int) -> None:
        while sent - self.received >= SMALL_WINDOW:
            await self.lot.park()


async def small_udp(seconds: float, size: int) -> dict[str, float]:
    """Plain trio UDP: one ``await sendto`` per message, one ``await recv_into`` per message."""
    receiver, sender = await udp_pair()
    target = receiver.getsockname()
    payload = bytes(size)
    credit = Credit()
    buffer = bytearray(2048)
    async with trio.open_nursery() as nursery:

        async def receive() -> None:
            while True:
                await receiver.recv_into(buffer)
                credit.add(1)

        nursery.start_soon(receive)
        start = trio.current_time()
        end = start + seconds
        sent = 0
        while trio.current_time() < end:
            for _ in range(SMALL_BATCH):
                await sender.sendto(payload, target)
            sent += SMALL_BATCH
            await credit.wait_below(sent)
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    receiver.close()
    sender.close()
    return {"messages_per_s": credit.received / elapsed, "delivered": credit.received / sent}


async def small_sllp(
    seconds: float, size: int, identities: Any, *, batched: bool, offload: bool = True
) -> dict[str, float]:
    """SLLP messages of ``size`` bytes (one datagram each): ``send_many`` of 64 and
    ``receive_many`` (``batched``), or one ``send`` and one ``receive`` per message."""
    config = SllpConfig(gso=offload, gro=offload, datagram_size=DATAGRAM)
    a, b = await channel_pair(config, identities=identities)
    payload = bytes(size)
    batch = [payload] * SMALL_BATCH
    credit = Credit()
    async with trio.open_nursery() as nursery:

        async def receive() -> None:
            if batched:
                while True:
                    credit.add(len(await b.receive_many()))
            else:
                async for _ in b:
                    credit.add(1)

        nursery.start_soon(receive)
        start = trio.current_time()
        end = start + seconds
        sent = 0
        while trio.current_time() < end:
            if batched:
                await a.send_many(batch)
            else:
                for message in batch:
                    await a.send(message)
            sent += SMALL_BATCH
            await credit.wait_below(sent)
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    transport = a.transport
    assert isinstance(transport, UdpTransport) and isinstance(b.transport, UdpTransport)
    result = {
        "messages_per_s": credit.received / elapsed,
        "delivered": credit.received / sent,
        "send_calls_per_message": transport.send_calls / sent,
        "receive_calls_per_message": b.transport.receive_calls / max(1, credit.received),
    }
    await a.aclose()
    await b.aclose()
    return result


async def small_messages(seconds: float, identities: Any) -> dict[str, Any]:
    """Per message size: plain UDP, SLLP batched, SLLP batched without GSO/GRO, SLLP one by one;
    and the ratios to UDP within this run."""
    out: dict[str, Any] = {}
    for size in SMALL_SIZES:
        row = {
            "udp": await small_udp(seconds, size),
            "sllp": await small_sllp(seconds, size, identities, batched=True),
            "sllp-plain": await small_sllp(seconds, size, identities, batched=True, offload=False),
            "sllp-one-by-one": await small_sllp(seconds, size, identities, batched=False),
        }
        udp = row["udp"]["messages_per_s"]
        row["ratio"] = {
            name: row[name]["messages_per_s"] / udp
            for name in ("sllp", "sllp-plain", "sllp-one-by-one")
        }
        out[str(size)] = row
    return out


# -- loss ---------------------------------------------------------------------------------------


async def lossy_run(
    drop_percent: int, message_size: int, count: int, rate: float, identities: Any
) -> dict[str, float]:
    config = SllpConfig(reassembly_timeout=0.2, datagram_size=DATAGRAM)
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
    p50, p99 = percentiles(latencies, 50, 99)
    return {
        "delivered": len(latencies) / count,
        "p50_ms": p50 * 1e3,
        "p99_ms": p99 * 1e3,
        "datagrams_per_message": -(-message_size // (DATAGRAM - 51)),
    }


# -- main ---------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement ``args.runs`` times; the element-wise medians."""
    identities = (p2ptls.Identity.generate(2048), p2ptls.Identity.generate(2048))
    plans = [
        ("udp", None, None),
        ("sllp", args.message_size, SllpConfig(datagram_size=DATAGRAM)),
        ("sllp-1dgram", DATAGRAM - 51, SllpConfig(datagram_size=DATAGRAM)),
        ("sllp-plain", args.message_size, SllpConfig(gso=False, gro=False, datagram_size=DATAGRAM)),
        ("sllp-path", args.message_size, SllpConfig()),
    ]
    runs: list[dict[str, Any]] = []
    with progress() as bar:
        steps = args.runs * (len(plans) + 1 + len(LOSS_SIZES) * len(LOSS_RATES))
        task = bar.add_task("sllp", total=steps, status="")
        for run_index in range(args.runs):
            tag = f"[{run_index + 1}/{args.runs}]"
            results: dict[str, Any] = {"throughput": {}, "loss_table": {}}
            for name, size, config in plans:
                bar.update(task, status=f"run {run_index + 1}: throughput {name}")
                if size is None or config is None:
                    row = await plain_udp(args.seconds)
                else:
                    row = await sllp_throughput(args.seconds, size, config, identities)
                results["throughput"][name] = row
                log(f"{tag} throughput {name}: {row['datagrams_per_s']:,.0f} datagrams/s")
                bar.advance(task)
            bar.update(task, status=f"run {run_index + 1}: small messages")
            results["small_messages"] = await small_messages(args.seconds, identities)
            for size, row in results["small_messages"].items():
                log(
                    f"{tag} {size}-byte messages: sllp {row['ratio']['sllp']:.2f}x udp "
                    f"({row['sllp']['messages_per_s']:,.0f} against "
                    f"{row['udp']['messages_per_s']:,.0f}/s)"
                )
            bar.advance(task)
            for size in LOSS_SIZES:
                for drop in LOSS_RATES:
                    bar.update(task, status=f"run {run_index + 1}: loss {drop}%, {size} bytes")
                    row = await lossy_run(drop, size, args.messages, args.rate, identities)
                    results["loss_table"][f"{size}/{drop}"] = row
                    log(
                        f"{tag} loss {drop}% with {size}-byte messages: delivered "
                        f"{row['delivered']:.3f}, p99 {row['p99_ms']:.2f} ms"
                    )
                    bar.advance(task)
            runs.append(results)
        bar.update(task, status="")
    medians: dict[str, Any] = median_of_runs(runs)
    return medians


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def report(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    throughput = results["throughput"]
    say()
    print_table(
        ["kind", "datagrams/s", "MB/s", "app MB/s", "delivered"],
        [
            [
                name,
                _cell(row["datagrams_per_s"], ",.0f"),
                _cell(row["MBps"], ".1f"),
                _cell(row["app_MBps"], ".1f"),
                _cell(row["delivered"], ".3f"),
            ]
            for name, row in throughput.items()
        ],
        title=(
            f"Throughput on 127.0.0.1, one process, {args.seconds:g} s each, "
            f"{median_of(args.runs)}; datagrams of {DATAGRAM} bytes"
        ),
    )
    ratio = throughput["sllp"]["datagrams_per_s"] / throughput["udp"]["datagrams_per_s"]
    gso, gro = throughput["sllp"].get("gso"), throughput["sllp"].get("gro")
    say(f"sllp / udp datagrams per second: {ratio:.2f}x (target >= 1, aim 3); GSO={gso} GRO={gro}")
    say()
    small = results["small_messages"]
    print_table(
        ["bytes", "kind", "messages/s", "/ udp", "delivered", "sends/msg", "reads/msg"],
        [
            [
                size,
                name,
                _cell(row[name]["messages_per_s"], ",.0f"),
                _cell(row["ratio"].get(name, 1.0), ".2f"),
                _cell(row[name]["delivered"], ".3f"),
                _cell(row[name].get("send_calls_per_message", 1.0), ".3f"),
                _cell(row[name].get("receive_calls_per_message", 1.0), ".3f"),
            ]
            for size, row in small.items()
            for name in ("udp", "sllp", "sllp-plain", "sllp-one-by-one")
        ],
        title=(
            "One-datagram messages as fast as the receiver keeps up (at most "
            f"{SMALL_WINDOW} ahead): udp = one await sendto / recv_into each; sllp = send_many "
            f"of {SMALL_BATCH} / receive_many; sllp-plain = the same without GSO/GRO; "
            f"sllp-one-by-one = send / receive ({median_of(args.runs)}; ratios within a run)"
        ),
        left=2,
    )
    say()
    rows = []
    for key, row in results["loss_table"].items():
        size, drop = key.split("/")
        rows.append(
            [
                size,
                _cell(row["datagrams_per_message"], ".0f"),
                drop + "%",
                _cell(row["delivered"], ".3f"),
                _cell(row["p50_ms"], ".2f"),
                _cell(row["p99_ms"], ".2f"),
            ]
        )
    print_table(
        ["message bytes", "datagrams", "drop", "delivered", "p50 ms", "p99 ms"],
        rows,
        title=(
            f"Loss through the relay: {args.messages} messages at {args.rate:g}/s "
            f"(delivered fraction, message latency; {median_of(args.runs)})"
        ),
        left=0,
    )
    summary = {
        "datagrams_per_s": {
            "sllp": throughput["sllp"]["datagrams_per_s"],
            "udp": throughput["udp"]["datagrams_per_s"],
        },
        "MBps": {"sllp": throughput["sllp"]["MBps"], "udp": throughput["udp"]["MBps"]},
        "small_messages_per_s": {
            "sllp": small[str(SMALL_SIZES[0])]["sllp"]["messages_per_s"],
            "udp": small[str(SMALL_SIZES[0])]["udp"]["messages_per_s"],
            "ratio": small[str(SMALL_SIZES[0])]["ratio"]["sllp"],
            "message_size": SMALL_SIZES[0],
            "by_size": {
                size: {
                    "sllp": row["sllp"]["messages_per_s"],
                    "udp": row["udp"]["messages_per_s"],
                    "ratio": row["ratio"]["sllp"],
                    "sllp_plain": row["sllp-plain"]["messages_per_s"],
                    "sllp_plain_ratio": row["ratio"]["sllp-plain"],
                    "sllp_one_by_one": row["sllp-one-by-one"]["messages_per_s"],
                    "sllp_one_by_one_ratio": row["ratio"]["sllp-one-by-one"],
                }
                for size, row in small.items()
            },
        },
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
    parser.add_argument("--quick", action="store_true", help="shorter runs (about half a minute)")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--seconds", type=float, default=None, help="per throughput run")
    parser.add_argument(
        "--runs", "--repeat", type=int, default=3, help="runs; the median is reported (3)"
    )
    parser.add_argument("--message-size", type=int, default=50_000)
    parser.add_argument("--messages", type=int, default=None, help="messages per loss run")
    parser.add_argument("--rate", type=float, default=500.0, help="messages per second (loss)")
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 1.0 if args.quick else 3.0
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.messages is None:
        args.messages = 300 if args.quick else 2000
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = trio.run(run, args)
    summary = report(results, args)
    if args.json:
        write_json(
            args.json,
            "sllp",
            params={
                "seconds": args.seconds,
                "message_size": args.message_size,
                "datagram_size": DATAGRAM,
                "loss_messages": args.messages,
                "loss_rate_per_s": args.rate,
                "loss_drop_percent": list(LOSS_RATES),
                "loss_message_sizes": list(LOSS_SIZES),
                "json_loss_message_size": JSON_LOSS_SIZE,
                "small_message_sizes": list(SMALL_SIZES),
                "small_batch": SMALL_BATCH,
                "small_window": SMALL_WINDOW,
                "small_udp_sends": "one await sendto per datagram, one await recv_into each",
                "small_sllp_sends": f"send_many of {SMALL_BATCH}, receive_many",
            },
            quick=args.quick,
            runs=args.runs,
            results=summary,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
