"""SLLP across two network namespaces joined by a veth pair with MTU 1400.

The test creates the namespaces itself (``ip netns add``, with names unique to the run), gives the
veth ends 10.231.0.1/30 and 10.231.0.2/30 *inside* the namespaces only, and runs the two peers as
``ip netns exec NS python -m tests.test_sllp_netns ...`` subprocesses (this module is also the peer
program), each bounded by a timeout. Every packet stays between the two namespaces, and the
namespaces are deleted however the test ends. It is skipped where namespaces cannot be made (not
root, no ``ip``).

It checks that a channel sizes its datagrams from the path MTU (1400 less 28 bytes of IPv4 and
UDP headers: 1372) and delivers 1 MB messages whole; that when the path shrinks under it (the
client lowers its link's MTU to 1300 between two messages) the refused send moves the channel to
1272-byte datagrams and the message still arrives; that no datagram exceeded the MTU (the
receiver records its largest datagram, and the kernels' IP fragmentation counters stay at zero);
and that an explicit datagram size above the path MTU fails loudly (don't-fragment) instead of
being fragmented by IP.
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
import uuid
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
MTU, SHRUNK_MTU = 1400, 1300
CLIENT_IP, SERVER_IP = "10.231.0.1", "10.231.0.2"
PORT = 47311
MESSAGE_SIZE = 1_000_000
TIMEOUT = 60


def _payload(index: int) -> bytes:
    return hashlib.sha256(b"%d" % index).digest() * (MESSAGE_SIZE // 32) + bytes(MESSAGE_SIZE % 32)


PAYLOADS = {hashlib.sha256(_payload(index)).digest(): index for index in range(2)}


def _ip_counters() -> dict[str, int]:
    """This namespace's IP counters from /proc/net/snmp (FragCreates, ReasmReqds...)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    names, values = next((n, v) for n, v in itertools.pairwise(lines) if n[0] == "Ip:")
    return {name: int(value) for name, value in zip(names[1:], values[1:], strict=True)}


def _host_config(directory: Path, me: str, peer: str) -> p2ptls.HostConfig:
    identity = p2ptls.Identity.load(directory / f"{me}.key")
    other = p2ptls.Identity.load(directory / f"{peer}.key")
    psk = p2ptls.NetworkKey.load(directory / "network.psk")
    if me == "server":
        return p2ptls.HostConfig(
            identity=identity, psk=psk, peers=(other.record,), listen=(SERVER_IP, PORT)
        )
    record = other.peer_record(address=(SERVER_IP, PORT))
    return p2ptls.HostConfig(identity=identity, psk=psk, peers=(record,))


# -- the peer programs (each runs inside its namespace) -------------------------------------------


async def _serve(directory: Path, _device: str) -> dict[str, Any]:
    before = _ip_counters()
    results: dict[str, Any] = {"channels": []}
    both_done = trio.Event()

    async def receive(stream: p2ptls.LogicalStream) -> None:
        channel = await accept_datagram(stream, local_address=(SERVER_IP, 0))
        messages = []
        try:
            async for message in channel:
                index = PAYLOADS.get(hashlib.sha256(message.data).digest(), -1)
                messages.append({"index": index, "fragment_size": message.fragment_size})
        except PeerClosed:
            pass
        stats = channel.statistics()
        results["channels"].append(
            {
                "messages": messages,
                "datagrams": stats.datagrams_received,
                "largest_datagram": stats.largest_datagram_received,
                "malformed": stats.malformed,
            }
        )
        await channel.aclose()
        if len(results["channels"]) == 2:
            both_done.set()

    async with p2ptls.open_host(_host_config(directory, "server", "client")) as host:
        host.serve_protocol(sllp.PROTOCOL, receive)
        print("ready", flush=True)
        with trio.fail_after(2 * TIMEOUT):
            await both_done.wait()
    after = _ip_counters()
    results["reassembly_requests"] = after["ReasmReqds"] - before["ReasmReqds"]
    return results


async def _connect(directory: Path, device: str) -> dict[str, Any]:
    config = _host_config(directory, "client", "server")
    record = config.peers[0]
    before = _ip_counters()
    results: dict[str, Any] = {}
    async with p2ptls.open_host(config) as host:
        with trio.fail_after(TIMEOUT):
            channel = await connect_datagram(host, record, local_address=(CLIENT_IP, 0))
            transport = channel.transport
            assert isinstance(transport, UdpTransport)
            results["dont_fragment"] = transport.dont_fragment
            results["limit"] = channel.max_datagram_payload
            results["sizes"] = [channel.datagram_size]
            await channel.send(_payload(0))
            # The path shrinks under the channel: the next send is refused, and resent smaller.
            subprocess.run(
                ["ip", "link", "set", "dev", device, "mtu", str(SHRUNK_MTU)],
                check=True,
                timeout=TIMEOUT,
            )
            await channel.send(_payload(1))
            results["sizes"].append(channel.datagram_size)
            await channel.aclose()

            fixed = await connect_datagram(
                host,
                record,
                local_address=(CLIENT_IP, 0),
                config=SllpConfig(datagram_size=MTU),
            )
            results["fixed_size"] = fixed.datagram_size
            try:
                await fixed.send(_payload(0))
            except DatagramTooLarge as exc:
                results["too_large"] = str(exc)
            await fixed.aclose()
    after = _ip_counters()
    results["fragments_created"] = after["FragCreates"] - before["FragCreates"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["serve", "connect"])
    parser.add_argument("directory", type=Path)
    parser.add_argument("device", help="this namespace's veth end")
    args = parser.parse_args()
    run = _serve if args.role == "serve" else _connect
    results = trio.run(run, args.directory, args.device)
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


def _run_peers(ns_client: str, ns_server: str, devices: tuple[str, str], directory: Path) -> None:
    """Run the server, then the client, each in its namespace; fail on any error or timeout."""
    command = [sys.executable, "-m", "tests.test_sllp_netns"]
    server = subprocess.Popen(
        ["ip", "netns", "exec", ns_server, *command, "serve", str(directory), devices[1]],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        ready, _, _ = select.select([server.stdout], [], [], TIMEOUT)
        assert ready and server.stdout.readline().strip() == "ready", server.stderr
        client = subprocess.run(
            ["ip", "netns", "exec", ns_client, *command, "connect", str(directory), devices[0]],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert client.returncode == 0, client.stderr
        _, server_errors = server.communicate(timeout=TIMEOUT)
        assert server.returncode == 0, server_errors
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


@pytest.mark.netns
def test_datagrams_fit_the_path_mtu_and_follow_it_down(tmp_path: Path) -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    suffix = uuid.uuid4().hex[:8]
    ns_client, ns_server = f"sllp-c-{suffix}", f"sllp-s-{suffix}"
    veth_client, veth_server = f"sllpc{suffix}", f"sllps{suffix}"
    made: list[str] = []
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
        _run_peers(ns_client, ns_server, (veth_client, veth_server), directory)
        sent = json.loads((directory / "connect.json").read_text())
        received = json.loads((directory / "serve.json").read_text())
    finally:
        # Deleting a namespace deletes the veth end in it, and with it the pair.
        for namespace in made:
            subprocess.run(
                ["ip", "netns", "del", namespace], check=False, capture_output=True, timeout=30
            )
        subprocess.run(
            ["ip", "link", "del", veth_client], check=False, capture_output=True, timeout=30
        )

    print(json.dumps({"client": sent, "server": received}))  # shown with pytest -s
    auto, fixed = received["channels"]
    # The channel's limit is the protocol's (neither side lowered it); its datagrams are the path
    # MTU less 28 bytes of IPv4 and UDP headers: 1372 bytes, then 1272 once the link shrank.
    assert sent["limit"] == 65507
    assert sent["sizes"] == [MTU - 28, SHRUNK_MTU - 28]
    # Both 1 MB messages arrived whole: the first in 1321-byte fragments, the second (resent
    # after the path refused its first datagram) in 1221-byte ones.
    assert [(m["index"], m["fragment_size"]) for m in auto["messages"]] == [
        (0, MTU - 28 - 51),
        (1, SHRUNK_MTU - 28 - 51),
    ]
    assert auto["largest_datagram"] == MTU - 28 and auto["malformed"] == 0
    assert sent["dont_fragment"]
    assert sent["fragments_created"] == 0 and received["reassembly_requests"] == 0
    # An explicit datagram size above the path MTU fails loudly instead of being fragmented by IP.
    assert sent["fixed_size"] == MTU and "path MTU" in sent["too_large"]
    assert fixed["messages"] == []


if __name__ == "__main__":
    main()
