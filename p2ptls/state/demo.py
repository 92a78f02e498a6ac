"""The state network part of ``make demo``: three nodes on 127.0.0.1 replicate signed state.

Alice starts, Bob joins through Alice and Carol through Bob (they find the rest by gossip). Each
writes its own state; every node then holds and reads every node's state locally. Carol stops:
the others report her unreachable and keep her last state, marked stale. Finally Alice asks
which ``color`` most nodes hold.

Run on its own with ``python -m p2ptls.state.demo [--dir DIR]`` (identities and network key are
kept in DIR); ``python -m p2ptls.demo`` runs it after the stream demo, with the stream demo's
identities and network key and the databases in ``demo-run/state/``.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import attrs
import trio
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..identity import Identity, NetworkKey, PeerId, PeerRecord
from ._wire import PROTOCOL
from .config import StateNodeConfig
from .events import MemberState
from .node import StateNode, open_state_node

NAMES = ("alice", "bob", "carol")
WRITES: dict[str, dict[str, bytes]] = {
    "alice": {"color": b"blue", "temperature": b"21.5"},
    "bob": {"color": b"green", "temperature": b"19.0"},
    "carol": {"color": b"blue", "temperature": b"23.1"},
}
DEADLINE = 20.0


@attrs.frozen
class StateDemoResult:
    """What the demo observed (for tests)."""

    views: dict[str, dict[str, dict[str, bytes]]]
    """Per reader, per owner, the state the reader held once converged."""
    converge_ms: float
    stale_seen_by: tuple[str, ...]
    """The nodes that reported the stopped node unreachable."""
    consensus: tuple[tuple[bytes, tuple[str, ...]], ...]
    """``(value, holders)`` for ``color`` at alice after carol stopped, most held first."""


async def run(
    directory: Path,
    psk: NetworkKey,
    identities: Mapping[str, Identity],
    *,
    out: Callable[[str], None] = print,
) -> StateDemoResult:
    """Run the demo with databases in ``directory`` (created) and the given identities."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    out(f"\nstate network: three nodes replicate signed state (databases in {directory}/)")

    def config(name: str, bootstrap: tuple[PeerRecord, ...] = ()) -> StateNodeConfig:
        return StateNodeConfig(
            identity=identities[name],
            psk=psk,
            name=name,
            database=directory / f"{name}.sqlite3",
            listen=("127.0.0.1", 0),
            bootstrap=bootstrap,
        )

    names: dict[PeerId, str] = {identities[n].peer_id: n for n in NAMES}
    async with (
        open_state_node(config("alice")) as alice,
        open_state_node(config("bob", (alice.peer_record("alice"),))) as bob,
    ):
        async with open_state_node(config("carol", (bob.peer_record("bob"),))) as carol:
            nodes = {"alice": alice, "bob": bob, "carol": carol}
            out("  alice started; bob joined through alice, carol through bob")
            started = time.perf_counter()
            for name, node in nodes.items():
                await node.update(WRITES[name])
                shown = ", ".join(f"{k}={v.decode()}" for k, v in WRITES[name].items())
                out(f"    {name} writes its own state: {shown}")
            with trio.fail_after(DEADLINE):
                for node in nodes.values():
                    await node.wait_until(_ready(node, nodes))
            converge_ms = (time.perf_counter() - started) * 1000
            out(
                f"  converged in {converge_ms:.0f} ms: every node holds every node's state "
                "(signed by its owner) and reads it locally"
            )
            views = {
                reader: {names[o.peer_id]: node.snapshot(o.peer_id) for o in nodes.values()}
                for reader, node in nodes.items()
            }
            out(
                f"    the state network is one protocol ({PROTOCOL}) on each host's connections: "
                f"alice holds {len(alice.host.connections)}, one per peer, shared by every protocol"
            )
            out("    what each node reads locally:")
            out(_view_table(views))
            record = bob.record(carol.peer_id, "temperature")
            assert record is not None
            out(
                f"    bob reads carol's temperature={(record.value or b'').decode()} "
                f"(carol's epoch {record.epoch}, sequence {record.sequence}), "
                f"alice's color={(bob.get(alice.peer_id, 'color') or b'').decode()}"
            )
            carol_id = carol.peer_id
            out("  carol stops")
        with trio.fail_after(DEADLINE):
            for node in (alice, bob):
                await node.wait_until(_sees_stale(node, carol_id))
        stale_seen_by = []
        for name, node in (("alice", alice), ("bob", bob)):
            status = node.member(carol_id)
            assert status is not None
            last = (node.get(carol_id, "color") or b"?").decode()
            out(
                f"    {name} sees carol {status.state.value}: her state is kept, marked stale "
                f"(last color={last})"
            )
            stale_seen_by.append(name)
        ranked = alice.consensus("color")
        described = []
        for entry in ranked:
            holders = ", ".join(
                names[o] + (" [stale]" if _is_stale(alice, o) else "") for o in entry.owners
            )
            described.append(f"{entry.value.decode()} held by {entry.count} ({holders})")
        out("  consensus on 'color' at alice: " + "; ".join(described))
        return StateDemoResult(
            views=views,
            converge_ms=converge_ms,
            stale_seen_by=tuple(stale_seen_by),
            consensus=tuple(
                (entry.value, tuple(names[o] for o in entry.owners)) for entry in ranked
            ),
        )


def _view_table(views: Mapping[str, Mapping[str, Mapping[str, bytes]]]) -> str:
    """Per owner and key (rows), the value each reader holds (columns), as an indented table."""
    rows = [
        [owner, key, *((views[reader][owner].get(key) or b"-").decode() for reader in NAMES)]
        for owner in NAMES
        for key in WRITES[owner]
    ]
    return _text_table(["owner", "key", *(f"at {reader}" for reader in NAMES)], rows, indent=6)


def _text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, indent: int) -> str:
    """A plain text table (rich's layout, no colours): one string of lines, ``indent`` deep."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for header in headers:
        table.add_column(Text(header), no_wrap=True)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    buffer = io.StringIO()
    Console(file=buffer, width=200, color_system=None, highlight=False).print(table)
    lines = buffer.getvalue().rstrip("\n").split("\n")
    return "\n".join(" " * indent + line.rstrip() for line in lines)


def _ready(node: StateNode, nodes: Mapping[str, StateNode]) -> Callable[[], bool]:
    def check() -> bool:
        if any(node.snapshot(o.peer_id) != o.snapshot() for o in nodes.values()):
            return False
        members = {m.peer_id: m for m in node.members()}
        return all(
            other is node
            or (
                (status := members.get(other.peer_id)) is not None
                and status.state is MemberState.CONNECTED
            )
            for other in nodes.values()
        )

    return check


def _sees_stale(node: StateNode, peer_id: PeerId) -> Callable[[], bool]:
    def check() -> bool:
        return _is_stale(node, peer_id)

    return check


def _is_stale(node: StateNode, peer_id: PeerId) -> bool:
    status = node.member(peer_id)
    return status is not None and status.stale


def main(argv: list[str] | None = None) -> None:
    """Run the demo alone, with fresh identities and a fresh network key."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, help="where the databases go (default: temporary)")
    args = parser.parse_args(argv)
    if args.dir:
        psk, identities = _load_or_create(args.dir)
        trio.run(run, args.dir / "state", psk, identities)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            psk, identities = _load_or_create(Path(tmp))
            trio.run(run, Path(tmp) / "state", psk, identities)


def _load_or_create(directory: Path) -> tuple[NetworkKey, dict[str, Identity]]:
    """The network key and identities kept in ``directory`` (made on the first run)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    psk_path = directory / "network.psk"
    if not psk_path.exists():
        NetworkKey.generate().save(psk_path)
    identities = {}
    for name in NAMES:
        path = directory / f"{name}.key"
        if not path.exists():
            Identity.generate(2048).save(path)
        identities[name] = Identity.load(path)
    return NetworkKey.load(psk_path), identities


if __name__ == "__main__":
    main()
