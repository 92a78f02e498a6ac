"""Three state nodes on 127.0.0.1: each writes its own state and reads the others' locally.

Run it as written:  python examples/state_network.py  [--dir DIR]

Alice starts first; Bob joins through Alice, Carol through Bob, and they learn the rest from each
other. Every node writes a few keys of its own state; every node then reads every other node's
state locally (no request on the read path), checks who wrote a value, asks what most nodes
think a key should be, and sends one direct message. Each node keeps its state in a SQLite file in
DIR (a temporary directory by default). The state network is one protocol (``p2ptls/state/1``) on
each node's host, which keeps one connection per peer: ``node.host`` serves and opens protocols of
the application's own on the same connections.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import trio

import p2ptls
from p2ptls.state import MemberState, StateNode, StateNodeConfig, open_state_node

NAMES = ("alice", "bob", "carol")


async def main(directory: Path) -> dict[str, dict[str, dict[str, bytes]]]:
    psk = p2ptls.generate_psk()
    identities = {name: p2ptls.Identity.generate(2048) for name in NAMES}

    def config(name: str, bootstrap: tuple[p2ptls.PeerRecord, ...] = ()) -> StateNodeConfig:
        return StateNodeConfig(
            identity=identities[name],
            psk=psk,
            name=name,
            database=directory / f"{name}.sqlite3",
            listen=("127.0.0.1", 0),
            bootstrap=bootstrap,
        )

    async with (
        open_state_node(config("alice")) as alice,
        open_state_node(config("bob", (alice.peer_record("alice"),))) as bob,
        open_state_node(config("carol", (bob.peer_record("bob"),))) as carol,
    ):
        nodes = {"alice": alice, "bob": bob, "carol": carol}
        names = {node.peer_id: name for name, node in nodes.items()}

        await alice.update({"role": b"first", "color": b"blue"})
        await bob.update({"role": b"second", "color": b"green"})
        await carol.update({"role": b"third", "color": b"blue"})

        # Wait until every node holds every node's state and is connected to every other node
        # (no polling: wait_until wakes on each change).
        def converged(node: StateNode) -> bool:
            return all(node.snapshot(o.peer_id) == o.snapshot() for o in nodes.values())

        def meshed(node: StateNode) -> bool:
            members = node.members()
            return len(members) == 2 and all(m.state is MemberState.CONNECTED for m in members)

        def ready(node: StateNode) -> Callable[[], bool]:
            return lambda: converged(node) and meshed(node)

        with trio.fail_after(30):
            for node in nodes.values():
                await node.wait_until(ready(node))

        views = {
            reader: {names[o.peer_id]: node.snapshot(o.peer_id) for o in nodes.values()}
            for reader, node in nodes.items()
        }
        for reader, view in views.items():
            shown = ", ".join(
                f"{owner}.role={state['role'].decode()}" for owner, state in view.items()
            )
            print(f"{reader} reads locally: {shown}")

        record = carol.record(alice.peer_id, "role")
        proof = carol.proof(alice.peer_id, "role")
        assert record is not None and proof is not None
        verified = proof.verify(psk)
        print(
            f"carol: alice's 'role' was signed by {verified.owner.short}… "
            f"(alice is {alice.peer_id.short}…) at epoch {record.epoch}, "
            f"sequence {record.sequence}"
        )

        ranked = bob.consensus("color")
        print(
            "bob: 'color' by consensus: "
            + "; ".join(
                f"{entry.value.decode()} held by {entry.count} "
                f"({', '.join(names[o] for o in entry.owners)})"
                for entry in ranked
            )
        )

        await carol.send_to(bob.peer_id, b"hello bob, carol here")
        with trio.fail_after(30):
            message = await bob.direct_messages.receive()
        print(f"bob got a direct message from {names[message.sender]}: {message.payload!r}")

        members = ", ".join(f"{names[m.peer_id]} {m.state.value}" for m in alice.members())
        print(f"alice's members: {members}")

        # An application protocol beside the state network, on the same connections.
        async def uptime(stream: p2ptls.LogicalStream) -> None:
            await stream.send_message(b"alice has been up since the start")

        alice.host.serve_protocol("example/uptime/1", uptime)
        async with await carol.host.open(alice.peer_id, "example/uptime/1") as asked:
            answer = (await asked.receive_message()).decode()
        count = len(carol.host.connections)
        print(f"carol asked alice over {count} connections (one per peer): {answer}")
        return views


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
