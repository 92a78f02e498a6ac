"""Helpers shared by the state network's tests: replica cores driven by hand, node configs
with quick reconnects, and waits that only turn a hang into a failure."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

import p2ptls
from p2ptls.state import MemberState, StateNode, StateNodeConfig, _crypto
from p2ptls.state import _wire as wire
from p2ptls.state._replica import ReplicaCore

DEADLINE = 30
PSK = p2ptls.NetworkKey(bytes(range(32)))
NETWORK = _crypto.network_id(PSK)


def make_core(identity: p2ptls.Identity, epoch: int = 5, max_owners: int = 4096) -> ReplicaCore:
    """A replica core of ``identity`` in ``epoch`` of the test network (nothing written)."""
    core = ReplicaCore(
        NETWORK, identity.peer_id.digest, identity.record.public_key_der, max_owners=max_owners
    )
    core.begin_epoch(_crypto.EpochSigner.create(identity, NETWORK, epoch))
    core.take_changes()
    return core


def publish(core: ReplicaCore, items: list[tuple[str, bytes | None]]) -> wire.Version:
    """A local write as a node makes it: staged, durable, signed, durable, published. Returns
    the version of the last record."""
    for key, value in items:
        core.stage(key, value)
    core.note_durable(core.staged_version)
    batch = core.sign_pending(256)
    assert batch is not None
    core.publish(batch.last_version)
    core.take_changes()
    return batch.last_version


def node_config(
    identity: p2ptls.Identity,
    psk: p2ptls.NetworkKey,
    database: Path | None = None,
    bootstrap: tuple[p2ptls.PeerRecord, ...] = (),
    **options: Any,
) -> StateNodeConfig:
    """A node's config with quick reconnects (tests wait for members to come back)."""
    options.setdefault("reconnect_min", 0.05)
    options.setdefault("reconnect_max", 0.5)
    return StateNodeConfig(
        identity=identity, psk=psk, database=database, bootstrap=bootstrap, **options
    )


async def until(node: StateNode, predicate: Callable[[], bool]) -> None:
    """Wait (woken by the node's changes) until ``predicate()`` holds, under a deadline."""
    with trio.fail_after(DEADLINE):
        await node.wait_until(predicate)


def connected(node: StateNode, *others: StateNode) -> Callable[[], bool]:
    """Whether ``node`` has a session with each of ``others``."""

    def check() -> bool:
        return all(
            (status := node.member(other.peer_id)) is not None
            and status.state is MemberState.CONNECTED
            for other in others
        )

    return check
