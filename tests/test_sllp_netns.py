"""SLLP across two network namespaces joined by a veth pair with MTU 1280.

The test creates the namespaces itself (``ip netns add``), gives the veth ends 10.231.0.1/30 and
10.231.0.2/30 *inside* the namespaces only, and runs the two peers as ``ip netns exec NS python -m
tests.test_sllp_netns ...`` subprocesses (this module is also the peer program). Every packet stays
between the two namespaces. It is skipped where namespaces cannot be made (not root, no ``ip``).

It checks that messages far larger than the MTU arrive whole, that no datagram exceeded the MTU
(the receiver records its largest datagram, and the kernels' IP fragmentation counters stay at
zero), and that a datagram size above the path MTU fails loudly (don't-fragment) instead of being
fragmented by IP.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio

import p2ptls
from p2ptls import sllp
from p2ptls.sllp import (
    DatagramTooLarge,
    PeerClosed,
    SllpConfig,
    accept_datagram,
    connect_datagram,
)
from p2ptls.sllp.transport import UdpTransport
from tests.conftest import identity_pool

ROOT = Path(__file__).resolve().parent.parent
MTU = 1280
CLIENT_IP, SERVER_IP = "10.231.0.1", "10.231.0.2"
PORT = 47311
MESSAGES = 20
MESSAGE_SIZE = 50_000
TIMEOUT = 60


def _payload(index: int) -> bytes:
    return hashlib.sha256(b"%d" % index).digest() * (MESSAGE_SIZE // 32) + bytes(MESSAGE_SIZE % 32)


def _ip_counters() -> dict[str, int]:
    """This namespace's IP counters from /proc/net/snmp (FragCreates, ReasmReqds...)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    names, values = next((n, v) for n, v in itertools.pairwise(lines) if n[0] == "Ip:")
    return {name: int(value) for name, value in zip(names[1:], values[1:], strict=True)}


# -- the peer program (runs inside a namespace) ---------------------------------------------------


async def _serve(directory: Path) -> dict[str, Any]:
    identity = p2ptls.Identity.load(directory / "server.key")
    client = p2ptls.Identity.load(directory / "client.key")
    psk = p2ptls.NetworkKey.load(directory / "network.psk")
    config = p2ptls.HostConfig(
        identity=identity,
        psk=psk,
        peers=(client.record,),
        listen=(SERVER_IP, PORT),
    )
    before = _ip_counters()
    results: dict[str, Any] = {"channels": []}
    sizes = iter((1200, 1400))  # the client's two channels, one after the other
    both_done = trio.Event()

    async def receive(stream: p2ptls.LogicalStream) -> None:
        datagram_size = next(sizes)
        channel = await accept_datagram(
            stream,
            local_address=(SERVER_IP, 0),
            config=SllpConfig(max_datagram_payload=datagram_size),
        )
        good = 0
        try:
            async for message in channel:
                good += message.data == _payload(message.message_id)
        except PeerClosed:
            pass
        stats = channel.statistics()
        transport = channel.transport
        assert isinstance(transport, UdpTransport)
        results["channels"].append(
            {
                "datagram_size": datagram_size,
                "good_messages": good,
                "received": stats.received,
                "datagrams": stats.datagrams_received,
                "largest_datagram": stats.largest_datagram_received,
                "gro": transport.gro,
            }
        )
        await channel.aclose()
        if len(results["channels"]) == 2:
            both_done.set()

    async with p2ptls.open_host(config) as host:
        host.serve_protocol(sllp.PROTOCOL, receive)
        print("ready", flush=True)
        with trio.fail_after(2 * TIMEOUT):
            await both_done.wait()
    after = _ip_counters()
    results["reassembly_requests"] = after["ReasmReqds"] - before["ReasmReqds"]
    return results


async def _connect(directory: Path) -> dict[str, Any]:
    identity = p2ptls.Identity.load(directory / "client.key")
    server = p2ptls.Identity.load(directory / "server.key")
    psk = p2ptls.NetworkKey.load(directory / "network.psk")
    record = server.peer_record(address=(SERVER_IP, PORT))
    config = p2ptls.HostConfig(identity=identity, psk=psk, peers=(record,))
    before = _ip_counters()
    results: dict[str, Any] = {}
    async with p2ptls.open_host(config) as host:
        with trio.fail_after(TIMEOUT):
            channel = await connect_datagram(host, record, local_address=(CLIENT_IP, 0))
            for index in range(MESSAGES):
                await channel.send(_payload(index))
            transport = channel.transport
            assert isinstance(transport, UdpTransport)
            results["gso"] = transport.gso
            results["dont_fragment"] = transport.dont_fragment
            results["sent_datagrams"] = channel.statistics().datagrams_sent
            await channel.aclose()

            big = await connect_datagram(
                host,
                record,
                local_address=(CLIENT_IP, 0),
                config=SllpConfig(max_datagram_payload=1400),
            )
            results["negotiated_big"] = big.max_datagram_payload
            try:
                await big.send(_payload(0))
            except DatagramTooLarge as exc:
                results["too_large"] = str(exc)
            await big.aclose()
    after = _ip_counters()
    results["fragments_created"] = after["FragCreates"] - before["FragCreates"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["serve", "connect"])
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    run = _serve if args.role == "serve" else _connect
    results = trio.run(run, args.directory)
    (args.directory / f"{args.role}.json").write_text(json.dumps(results))


# -- the test --------------------------------------------------------------------------------------


def _ip(*arguments: str) -> None:
    subprocess.run(["ip", *arguments], check=True, capture_output=True, timeout=30)


def _skip_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    return None


@pytest.mark.netns
def test_large_messages_cross_a_1280_mtu_link_without_ip_fragmentation(tmp_path: Path) -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    suffix = f"{os.getpid() % 100000}"
    ns_client, ns_server = f"sllp-c-{suffix}", f"sllp-s-{suffix}"
    veth_client, veth_server = f"sllpc{suffix}", f"sllps{suffix}"
    made: list[str] = []
    server: subprocess.Popen[str] | None = None
    try:
        try:
            for namespace in (ns_client, ns_server):
                _ip("netns", "add", namespace)
                made.append(namespace)
            _ip("link", "add", veth_client, "type", "veth", "peer", "name", veth_server)
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot create namespaces or veth here: {exc.stderr.strip()}")
        for namespace, device, address in (
            (ns_client, veth_client, CLIENT_IP),
            (ns_server, veth_server, SERVER_IP),
        ):
            _ip("link", "set", device, "netns", namespace)
            _ip("-n", namespace, "link", "set", device, "mtu", str(MTU))
            _ip("-n", namespace, "addr", "add", f"{address}/30", "dev", device)
            _ip("-n", namespace, "link", "set", device, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")

        directory = Path(tempfile.mkdtemp(dir=tmp_path))
        client_id, server_id = identity_pool()[0], identity_pool()[1]
        client_id.save(directory / "client.key")
        server_id.save(directory / "server.key")
        p2ptls.NetworkKey.generate().save(directory / "network.psk")
        command = [sys.executable, "-m", "tests.test_sllp_netns"]
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns_server, *command, "serve", str(directory)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        ready, _, _ = select.select([server.stdout], [], [], TIMEOUT)
        assert ready and server.stdout.readline().strip() == "ready", server.stderr
        client = subprocess.run(
            ["ip", "netns", "exec", ns_client, *command, "connect", str(directory)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert client.returncode == 0, client.stderr
        _, server_errors = server.communicate(timeout=TIMEOUT)
        assert server.returncode == 0, server_errors
        sent = json.loads((directory / "connect.json").read_text())
        received = json.loads((directory / "serve.json").read_text())
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.wait()
        for namespace in made:
            subprocess.run(["ip", "netns", "del", namespace], check=False, capture_output=True)

    print(json.dumps({"client": sent, "server": received}))  # shown with pytest -s
    normal, big = sorted(received["channels"], key=lambda channel: channel["datagram_size"])
    # Messages of 50 KB (about 44 datagrams each) crossed the 1280-byte link whole...
    assert normal["good_messages"] == normal["received"] == MESSAGES
    assert sent["sent_datagrams"] == MESSAGES * 44
    assert normal["datagrams"] == MESSAGES * 44 + 1  # and the close
    # ...and no datagram exceeded the MTU: 1200 bytes of UDP payload + 28 of IPv4/UDP <= 1280.
    assert normal["largest_datagram"] == 1200
    assert sent["dont_fragment"]
    assert sent["fragments_created"] == 0 and received["reassembly_requests"] == 0
    # A datagram size above the path MTU fails loudly instead of being fragmented by IP.
    assert sent["negotiated_big"] == 1400 and "path MTU" in sent["too_large"]
    assert big["received"] == 0


if __name__ == "__main__":
    main()
