"""``make demo``: three local peers authenticate each other and move data.

Creates (or reuses) identity keys for alice, bob and carol, a network key and an encrypted peer
database in ``./demo-run``; starts three hosts on 127.0.0.1; connects every pair; exchanges
messages; transfers a file-sized payload with a progress bar; and prints who authenticated whom,
the cipher suite and the throughput. Then three state nodes replicate signed state, one stops and
is reported stale, and a consensus query is printed (:mod:`p2ptls.state.demo`).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import trio

from . import (
    CIPHER_SUITE,
    Host,
    HostConfig,
    Identity,
    NetworkKey,
    PeerDatabase,
    PeerRecord,
    SecureStream,
    open_host,
)
from .state import demo as state_demo

NAMES = ("alice", "bob", "carol")
CHUNK = 64 * 1024


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


class Progress:
    """A one-line progress bar (redrawn in place on a terminal, a few lines otherwise)."""

    def __init__(self, total: int, label: str) -> None:
        self.total = total
        self.label = label
        self.start = time.perf_counter()
        self.tty = sys.stdout.isatty()
        self._last_tenth = -1

    def update(self, done: int) -> None:
        fraction = done / self.total
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = done / elapsed / 1e6
        bar = "#" * int(fraction * 30)
        line = f"  {self.label} [{bar:<30}] {fraction:6.1%} {rate:7.1f} MB/s"
        if self.tty:
            print("\r" + line, end="", flush=True)
        elif int(fraction * 10) != self._last_tenth:
            self._last_tenth = int(fraction * 10)
            print(line, flush=True)

    def finish(self) -> float:
        if self.tty:
            print()
        return time.perf_counter() - self.start


async def _serve_peer(host: Host, name: str, log: list[str]) -> None:
    async with trio.open_nursery() as nursery:
        async for stream in host.incoming():
            known = host.context.peers.get(stream.remote_peer.peer_id)
            nursery.start_soon(_handle, stream, name, known.name if known else "?", log)


async def _handle(stream: SecureStream, name: str, remote_name: str, log: list[str]) -> None:
    remote = stream.remote_peer.peer_id
    log.append(f"  {name} verified {remote_name} (peer id {remote.short}…) by its RSA key")
    async with stream:
        async for message in stream.messages():
            if message.startswith(b"SEND "):
                size = int(message.split()[1])
                digest = hashlib.sha256()
                received = 0
                while received < size:
                    chunk = await stream.receive_some(1 << 20)
                    if not chunk:
                        break
                    digest.update(chunk)
                    received += len(chunk)
                await stream.send_message(digest.digest())
            else:
                await stream.send_message(f"{name} got: {message.decode()}".encode())


async def run(directory: Path, payload_mib: int, key_bits: int) -> None:
    print(f"p2ptls demo: three peers on 127.0.0.1 (state in {directory}/)")
    psk, identities = _load_or_create(directory, key_bits)
    print(f"  network key fingerprint {psk.fingerprint}")
    log: list[str] = []
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
        async with trio.open_nursery() as nursery:
            for name, host in hosts.items():
                nursery.start_soon(_serve_peer, host, name, log)
            await _exchange(hosts, records, log)
            await _transfer(alice, records["bob"], payload_mib)
            nursery.cancel_scope.cancel()
    await state_demo.run(directory / "state", psk, identities)


def _host_config(identity: Identity, psk: NetworkKey) -> HostConfig:
    return HostConfig(identity=identity, psk=psk, listen=("127.0.0.1", 0))


async def _exchange(hosts: dict[str, Host], records: dict[str, PeerRecord], log: list[str]) -> None:
    print("\nconnecting every pair:")
    for name, host in hosts.items():
        for other, record in records.items():
            if other == name:
                continue
            stream = await host.connect(record)
            print(
                f"  {name} -> {other}: verified {other} ({stream.remote_peer.peer_id.short}…), "
                f"suite {stream.cipher_suite}"
            )
            await stream.send_message(f"hello from {name}".encode())
            print(f"    reply: {(await stream.receive_message()).decode()}")
            await stream.aclose()
    print("\nwho authenticated whom (server side):")
    for line in sorted(set(log)):
        print(line)


async def _transfer(alice: Host, bob: PeerRecord, payload_mib: int) -> None:
    size = payload_mib * 1024 * 1024
    payload = os.urandom(CHUNK) * (size // CHUNK)
    print(f"\ntransferring a {payload_mib} MiB file from alice to bob:")
    stream = await alice.connect(bob)
    await stream.send_message(f"SEND {size}".encode())
    progress = Progress(size, "alice -> bob")
    view = memoryview(payload)
    for offset in range(0, size, 1 << 20):
        await stream.send_all(view[offset : offset + (1 << 20)])
        progress.update(offset + min(1 << 20, size - offset))
    digest = await stream.receive_message()
    elapsed = progress.finish()
    ok = digest == hashlib.sha256(payload).digest()
    print(f"  bob's SHA-256 of what arrived {'matches' if ok else 'DOES NOT MATCH'} alice's")
    print(f"  throughput: {size / elapsed / 1e6:.0f} MB/s over {CIPHER_SUITE}")
    await stream.aclose()
    if not ok:
        raise SystemExit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path("demo-run"))
    parser.add_argument("--payload-mib", type=int, default=256)
    parser.add_argument("--key-bits", type=int, default=3072)
    args = parser.parse_args(argv)
    trio.run(run, args.dir, args.payload_mib, args.key_bits)


if __name__ == "__main__":
    main()
