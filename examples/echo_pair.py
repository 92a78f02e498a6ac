"""Two peers on 127.0.0.1: bob echoes messages, alice sends some.

Run it as written:  python examples/echo_pair.py  [--dir DIR]

It writes alice's and bob's identity keys and the network key into DIR (a temporary directory by
default), loads them back as a real deployment would, and opens one authenticated stream: a
logical stream of the default protocol (``p2ptls.serve`` serves it, ``host.connect`` opens it), on
the one connection alice's host keeps to bob's. Programs with exchanges of their own give each its
protocol name (``host.serve_protocol``, ``host.open``): see ``camera_stream.py`` and the demo.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import trio

import p2ptls


async def echo(stream: p2ptls.LogicalStream) -> None:
    async for message in stream.messages():
        await stream.send_message(b"echo: " + message)


async def main(directory: Path) -> list[bytes]:
    # One-time set-up, normally done with the `p2ptls identity new` and `p2ptls psk new` commands.
    for name in ("alice", "bob"):
        p2ptls.Identity.generate(2048).save(directory / f"{name}.key")
    p2ptls.generate_psk(directory / "network.psk")

    alice = p2ptls.Identity.load(directory / "alice.key")
    bob = p2ptls.Identity.load(directory / "bob.key")
    psk = p2ptls.NetworkKey.load(directory / "network.psk")

    replies = []
    async with trio.open_nursery() as nursery:
        bob_config = p2ptls.HostConfig(
            identity=bob, psk=psk, peers=[alice.record], listen=("127.0.0.1", 0)
        )
        bob_host = await nursery.start(p2ptls.serve, echo, bob_config)

        alice_config = p2ptls.HostConfig(identity=alice, psk=psk, peers=[bob_host.peer_record()])
        async with p2ptls.open_host(alice_config) as alice_host:
            stream = await alice_host.connect(bob.peer_id)
            print(f"alice verified bob: {stream.remote_peer.peer_id.short}…")
            for text in (b"hello", b"p2p", b"world"):
                await stream.send_message(text)
                replies.append(await stream.receive_message())
                print(replies[-1].decode())
            await stream.aclose()
        nursery.cancel_scope.cancel()
    return replies


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
        trio.run(main, args.dir)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            trio.run(main, Path(tmp))
