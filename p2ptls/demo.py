"""``make demo``: three local peers authenticate each other and move data.

Creates (or reuses) identity keys for alice, bob and carol, a network key and an encrypted peer
database in ``./demo-run``; starts three hosts on 127.0.0.1, each serving two protocols of the
demo's own (``demo/hello/1``: a greeting and its answer; ``demo/transfer/1``: a file and its
SHA-256); every host greets every other, so that each pair ends up sharing one connection, whoever
dialled it; alice transfers a file-sized payload to bob with a progress bar and streams camera-
sized frames to him over an SLLP channel on the same connection; and it prints who authenticated
whom, the cipher suite, the connections and the throughput (tables and the progress bar drawn with
rich; outside a terminal, as in a CI log, the bar is printed once, when the transfer ends). Then
three state nodes replicate signed state, one stops and is reported stale, and a consensus query
is printed (:mod:`p2ptls.state.demo`).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path

import attrs
import trio
from rich import box
from rich.console import Console
from rich.padding import Padding
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from . import (
    CIPHER_SUITE,
    Host,
    HostConfig,
    Identity,
    LogicalStream,
    NetworkKey,
    PeerDatabase,
    PeerRecord,
    open_host,
    sllp,
)
from .state import demo as state_demo

NAMES = ("alice", "bob", "carol")
CHUNK = 64 * 1024
HELLO = "demo/hello/1"
"""A greeting message, answered with ``"<name> got: <greeting>"``."""
TRANSFER = "demo/transfer/1"
"""A message with the size, that many bytes, answered with their SHA-256."""
FRAMES = 100
FRAME_SIZE = 50_000


def _load_or_create(directory: Path, key_bits: int) -> tuple[NetworkKey, dict[str, Identity]]:
    directory.mkdir(exist_ok=True)
    directory.chmod(0o700)
    psk_path = directory / "network.psk"
    if psk_path.exists():
        psk = NetworkKey.load(psk_path)
    else:
        psk = NetworkKey.generate()
        psk.save(psk_path)
    identities = {}
    for name in NAMES:
        key_path = directory / f"{name}.key"
        if key_path.exists():
            identities[name] = Identity.load(key_path)
        else:
            print(f"  generating an RSA-{key_bits} identity for {name} ...", flush=True)
            identities[name] = Identity.generate(key_bits)
            identities[name].save(key_path)
    return psk, identities


def _console() -> Console:
    """Standard output; outside a terminal 120 columns (unless COLUMNS says otherwise), so that
    the tables of a CI log do not wrap at rich's default of 80."""
    width = None if Console().is_terminal or "COLUMNS" in os.environ else 120
    return Console(width=width, highlight=False)


def _print_table(console: Console, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain table of text cells (as written: never read as rich markup), indented two spaces."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold", pad_edge=False)
    for header in headers:
        table.add_column(Text(header), no_wrap=True)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    console.print(Padding(table, (0, 0, 0, 2), expand=False))
    console.print()


@attrs.frozen
class _Verified:
    """One server-side handshake: ``server`` proved that the client is ``client``."""

    server: str
    client: str
    peer_id: str


def _serve(host: Host, name: str, log: list[_Verified]) -> None:
    """The demo's protocols, served on every connection of ``host`` (each stream in its own
    task, closed when its handler returns)."""
    host.serve_protocol(HELLO, functools.partial(_greet, host=host, name=name, log=log))
    host.serve_protocol(TRANSFER, _receive_file)


async def _greet(stream: LogicalStream, *, host: Host, name: str, log: list[_Verified]) -> None:
    known = host.context.peers.get(stream.remote_peer.peer_id)
    remote_name = known.name if known else "?"
    log.append(_Verified(name, remote_name, stream.remote_peer.peer_id.short + "…"))
    async for message in stream.messages():
        await stream.send_message(f"{name} got: {message.decode()}".encode())


async def _receive_file(stream: LogicalStream) -> None:
    size = int(await stream.receive_message())
    digest = hashlib.sha256()
    received = 0
    while received < size:
        chunk = await stream.receive_some(1 << 20)
        if not chunk:
            break
        digest.update(chunk)
        received += len(chunk)
    await stream.send_message(digest.digest())


async def run(directory: Path, payload_mib: int, key_bits: int) -> None:
    console = _console()
    print(f"p2ptls demo: three peers on 127.0.0.1 (state in {directory}/)")
    psk, identities = _load_or_create(directory, key_bits)
    print(f"  network key fingerprint {psk.fingerprint}")
    log: list[_Verified] = []
    async with (
        open_host(_host_config(identities["alice"], psk)) as alice,
        open_host(_host_config(identities["bob"], psk)) as bob,
        open_host(_host_config(identities["carol"], psk)) as carol,
    ):
        hosts = {"alice": alice, "bob": bob, "carol": carol}
        records = {name: host.peer_record(name) for name, host in hosts.items()}
        database = PeerDatabase.open(directory / "peers.db", psk)
        for record in records.values():
            database.add(record)
        database.save()
        print(f"  peer database: {len(database)} peers, encrypted at rest ({database.path})")
        for host in hosts.values():
            for other in PeerDatabase.open(directory / "peers.db", psk):
                if other.peer_id != host.peer_id:
                    host.add_peer(other)
        for name, host in hosts.items():
            _serve(host, name, log)
        frames = _Frames()
        sllp.serve_datagrams(bob, frames.receive)
        await _exchange(console, hosts, records, log)
        await _transfer(console, alice, records["bob"], payload_mib)
        await _stream_frames(alice, records["bob"], frames)
        _print_connections(console, hosts)
    await state_demo.run(directory / "state", psk, identities)


def _host_config(identity: Identity, psk: NetworkKey) -> HostConfig:
    return HostConfig(identity=identity, psk=psk, listen=("127.0.0.1", 0))


async def _exchange(
    console: Console, hosts: dict[str, Host], records: dict[str, PeerRecord], log: list[_Verified]
) -> None:
    rows = []
    suites = set()
    for name, host in hosts.items():
        for other, record in records.items():
            if other == name:
                continue
            stream = await host.open(record, HELLO)
            await stream.send_message(f"hello from {name}".encode())
            reply = (await stream.receive_message()).decode()
            rows.append([name, other, stream.remote_peer.peer_id.short + "…", reply])
            suites.add(stream.cipher_suite)
            await stream.aclose()
    print(f"\nevery host greets every other on {HELLO} ({', '.join(sorted(suites))}):")
    print("  each client verified the server it reached by the server's RSA key")
    _print_table(console, ["client", "server", "server's peer id", "reply"], rows)
    print("who authenticated whom (server side):")
    print("  each server verified the client that reached it by the client's RSA key")
    _print_table(
        console,
        ["server", "client", "client's peer id"],
        [[v.server, v.client, v.peer_id] for v in sorted(set(log), key=attrs.astuple)],
    )


async def _transfer(console: Console, alice: Host, bob: PeerRecord, payload_mib: int) -> None:
    size = payload_mib * 1024 * 1024
    payload = os.urandom(CHUNK) * (size // CHUNK)
    print(f"transferring a {payload_mib} MiB file from alice to bob on {TRANSFER}:")
    stream = await alice.open(bob, TRANSFER)
    await stream.send_message(str(size).encode())
    view = memoryview(payload)
    started = time.perf_counter()
    with Progress(
        TextColumn("  alice -> bob"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("transfer", total=size)
        for offset in range(0, size, 1 << 20):
            chunk = view[offset : offset + (1 << 20)]
            await stream.send_all(chunk)
            progress.advance(task, len(chunk))
        digest = await stream.receive_message()
    elapsed = time.perf_counter() - started
    ok = digest == hashlib.sha256(payload).digest()
    print(f"  bob's SHA-256 of what arrived {'matches' if ok else 'DOES NOT MATCH'} alice's")
    print(f"  throughput: {size / elapsed / 1e6:.0f} MB/s over {CIPHER_SUITE}")
    await stream.aclose()
    if not ok:
        raise SystemExit(1)


class _Frames:
    """Bob's side of the SLLP part: counts the frames of a channel until alice closes it."""

    def __init__(self) -> None:
        self.whole = 0
        self.done = trio.Event()

    async def receive(self, channel: sllp.SllpChannel) -> None:
        try:
            async for message in channel:
                self.whole += len(message.data) == FRAME_SIZE
        finally:
            self.done.set()


async def _stream_frames(alice: Host, bob: PeerRecord, frames: _Frames) -> None:
    channel = await sllp.connect_datagram(alice, bob)
    print(
        f"\nstreaming {FRAMES} camera-sized frames ({FRAME_SIZE // 1000} KB) from alice to bob "
        f"over SLLP (UDP), set up on {sllp.PROTOCOL}:"
    )
    frame = os.urandom(FRAME_SIZE)
    started = time.perf_counter()
    async with channel:
        for _ in range(FRAMES):
            await channel.send(frame)
        sent = channel.statistics()
    await frames.done.wait()
    elapsed = time.perf_counter() - started
    print(
        f"  bob received {frames.whole}/{FRAMES} frames whole, {sent.datagrams_sent} encrypted "
        f"datagrams in {elapsed * 1e3:.0f} ms (a frame arrives whole or is reported lost, never "
        "retransmitted)"
    )


def _print_connections(console: Console, hosts: dict[str, Host]) -> None:
    names = {host.peer_id: name for name, host in hosts.items()}
    print("\nconnections: one per pair of peers, shared by every protocol, whoever dialled it")
    rows = []
    for name, host in hosts.items():
        for connection in host.connections:
            side = "dialled" if connection.initiator else "accepted"
            rows.append([name, names[connection.remote_peer.peer_id], side])
    _print_table(console, ["host", "peer", "connection"], sorted(rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="p2ptls demo",
        description="Three local peers authenticate each other and move data, then three state "
        "nodes replicate signed state. Keys and databases go to --dir (created or reused).",
    )
    parser.add_argument("--dir", type=Path, default=Path("demo-run"))
    parser.add_argument("--payload-mib", type=int, default=256)
    parser.add_argument("--key-bits", type=int, default=3072)
    args = parser.parse_args(argv)
    trio.run(run, args.dir, args.payload_mib, args.key_bits)


if __name__ == "__main__":
    main()
