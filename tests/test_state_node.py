"""State nodes over real sockets on 127.0.0.1: replication, membership, hostile peers, faults.

Nothing here waits with a sleep: tests wait for events (``node.wait_until``, subscriptions, the
closing of a stream) under a generous ``trio.fail_after`` that only turns a hang into a failure.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import pytest
import trio

import p2ptls
from p2ptls.state import (
    DirectMessage,
    EquivocationDetected,
    MemberChanged,
    MemberState,
    NotConnected,
    PeerRejected,
    StateChanged,
    StateNode,
    StateNodeConfig,
    SubscriptionOverflowed,
    _crypto,
    open_state_node,
)
from p2ptls.state import _wire as wire
from p2ptls.state.testing import Forger, RawConnection, raw_peer
from tests.adversary.network import silent_state_member
from tests.state_support import DEADLINE, connected, until
from tests.state_support import node_config as config

T = TypeVar("T")


def holds(node: StateNode, owner: p2ptls.PeerId, key: str, value: bytes) -> Callable[[], bool]:
    return lambda: node.get(owner, key) == value


def stale(node: StateNode, other: StateNode) -> Callable[[], bool]:
    def check() -> bool:
        status = node.member(other.peer_id)
        return status is not None and status.stale

    return check


async def next_event(channel: trio.MemoryReceiveChannel[Any], kind: type[T]) -> T:
    with trio.fail_after(DEADLINE):
        async for event in channel:
            if isinstance(event, kind):
                return event
    raise AssertionError("subscription ended")


# -- replication -----------------------------------------------------------------------------------


async def test_write_on_one_node_is_read_locally_on_another(identities, tmp_path) -> None:
    psk = p2ptls.generate_psk()
    alice_id, bob_id = identities[0], identities[1]
    async with open_state_node(config(alice_id, psk, tmp_path / "a.db")) as alice:
        bob_config = config(bob_id, psk, tmp_path / "b.db", (alice.peer_record(),))
        async with open_state_node(bob_config) as bob:
            changes = bob.subscribe()
            await alice.set("foo", b"bar")
            assert alice.get(alice.peer_id, "foo") == b"bar"  # read-your-writes at once
            event = await next_event(changes, StateChanged)
            assert event == StateChanged(alice.peer_id, "foo", b"bar", alice.epoch, 1)
            assert bob.get(alice.peer_id, "foo") == b"bar"
            assert bob.snapshot(alice.peer_id) == {"foo": b"bar"}
            # Who wrote it: a proof anyone with the network key can check offline.
            proof = bob.proof(alice.peer_id, "foo")
            assert proof is not None
            verified = proof.verify(psk)
            assert (verified.owner, verified.key, verified.value) == (alice.peer_id, "foo", b"bar")
            record = bob.record(alice.peer_id, "foo")
            assert record is not None and record.signed and record.sequence == 1

            await alice.update({"foo": None, "x": b"1", "y": b"2"})
            await until(bob, lambda: bob.snapshot(alice.peer_id) == {"x": b"1", "y": b"2"})
            assert bob.get(alice.peer_id, "foo") is None
            assert bob.version(alice.peer_id) == alice.version(alice.peer_id)
            assert set(bob.owners()) == {alice.peer_id, bob.peer_id}


async def test_three_nodes_converge_although_a_and_c_never_connect(identities) -> None:
    psk = p2ptls.generate_psk()
    a_id, b_id, c_id = identities[0], identities[1], identities[2]

    def refuse(peer_id: p2ptls.PeerId) -> Callable[[p2ptls.PeerId], bool]:
        return lambda other: other != peer_id

    async with open_state_node(config(b_id, psk)) as b:
        seed = (b.peer_record(),)
        async with (
            open_state_node(config(a_id, psk, None, seed, peer_filter=refuse(c_id.peer_id))) as a,
            open_state_node(config(c_id, psk, None, seed, peer_filter=refuse(a_id.peer_id))) as c,
        ):
            await a.set("color", b"blue")
            await c.set("color", b"blue")
            await b.set("color", b"green")
            await c.set("only-c", b"from c")
            await until(a, lambda: a.get(c.peer_id, "only-c") == b"from c")
            await until(c, lambda: c.get(a.peer_id, "color") == b"blue")
            await until(
                a, lambda: len(a.consensus("color")) == 2 and a.get(c.peer_id, "color") is not None
            )
            # A heard of C through B's gossip but never connected to it: C is no verified member
            # of A (gossip proves nothing), yet A holds C's state through B.
            assert a.member(c.peer_id) is None and c.peer_id in a.owners()
            ranked = a.consensus("color")
            assert [(e.value, e.count) for e in ranked] == [(b"blue", 2), (b"green", 1)]
            assert set(ranked[0].owners) == {a.peer_id, c.peer_id}
            assert ranked[1].owners == (b.peer_id,)


async def test_direct_messages(identities) -> None:
    psk = p2ptls.generate_psk()
    async with open_state_node(config(identities[0], psk)) as alice:
        bob_config = config(identities[1], psk, None, (alice.peer_record(),))
        async with open_state_node(bob_config) as bob:
            await until(alice, connected(alice, bob))
            await alice.send_to(bob.peer_id, b"psst")
            with trio.fail_after(DEADLINE):
                message = await bob.direct_messages.receive()
            assert message == DirectMessage(alice.peer_id, b"psst")
            with pytest.raises(NotConnected):
                await alice.send_to(identities[3].peer_id, b"nobody there")


async def test_slow_subscriber_is_cut_off_with_a_marker(identities) -> None:
    psk = p2ptls.generate_psk()
    async with open_state_node(config(identities[0], psk)) as node:
        events = node.subscribe(buffer=2)
        for i in range(5):
            await node.set(f"k{i}", b"v")
        received = [event async for event in events]
        assert [type(e) for e in received] == [StateChanged, StateChanged, SubscriptionOverflowed]


# -- hostile peers (30, 31, 33, 34 over the wire) --------------------------------------------------


async def _assert_rejected(
    node: StateNode,
    send: Callable[[RawConnection], Awaitable[None]],
    raw_identity: p2ptls.Identity,
    psk: p2ptls.NetworkKey,
) -> None:
    rejected = node.subscribe(PeerRejected)
    async with raw_peer(raw_identity, psk, node.peer_record()) as connection:
        await send(connection)
        with trio.fail_after(DEADLINE):
            await connection.wait_closed()
    event = await next_event(rejected, PeerRejected)
    assert event.peer_id == raw_identity.peer_id


async def test_bad_signature_is_rejected_and_the_peer_disconnected(identities) -> None:
    psk = p2ptls.generate_psk()
    network = _crypto.network_id(psk)
    mallory = identities[1]
    async with open_state_node(config(identities[0], psk)) as node:
        forger = Forger(mallory, network)
        records = forger.records([("k", b"v")])
        batch = forger.batch(records)
        broken = wire.Batch(
            batch.network_id,
            batch.owner,
            batch.epoch,
            batch.first_seq,
            batch.count,
            batch.body,
            bytes(64),
        )

        async def send(connection) -> None:
            await connection.send(forger.updates(forger.span(records, batch=broken)))

        await _assert_rejected(node, send, mallory, psk)
        assert node.get(mallory.peer_id, "k") is None
        assert node.stats.peers_rejected == 1
        status = node.member(mallory.peer_id)
        assert status is not None and status.state is MemberState.UNREACHABLE
        # The node goes on serving honest members.
        async with open_state_node(config(identities[2], psk, None, (node.peer_record(),))) as ok:
            await ok.set("fine", b"yes")
            await until(node, lambda: node.get(ok.peer_id, "fine") == b"yes")


async def test_a_record_claiming_another_owner_is_rejected(identities) -> None:
    psk = p2ptls.generate_psk()
    network = _crypto.network_id(psk)
    mallory, bob = identities[1], identities[2]
    async with open_state_node(config(identities[0], psk)) as node:
        forger = Forger(mallory, network)
        records = [wire.encode_record(bob.peer_id.digest, 1, 1, "k", b"forged")]
        batch = forger.batch(records, owner=bob.peer_id.digest)
        span = wire.Span(bob.peer_id.digest, wire.NO_VERSION, (wire.Group(batch, tuple(records)),))
        # Mallory's certificate re-labelled as bob's (bob's key, mallory's signature).
        real = forger.certificate
        relabelled = wire.EpochCertificate(
            network,
            bob.peer_id.digest,
            1,
            real.signing_key,
            real.signature,
            bob.record.public_key_der,
        )

        async def send(connection) -> None:
            await connection.send(wire.Updates((relabelled,), (span,)))

        await _assert_rejected(node, send, mallory, psk)
        assert node.get(bob.peer_id, "k") is None
        assert bob.peer_id not in node.owners()


async def test_wrong_network_id_is_rejected(identities) -> None:
    psk = p2ptls.generate_psk()
    other_network = _crypto.network_id(p2ptls.generate_psk())
    mallory = identities[1]
    async with open_state_node(config(identities[0], psk)) as node:
        forger = Forger(mallory, other_network)
        span = forger.span(forger.records([("k", b"v")]))

        async def send_updates(connection) -> None:
            await connection.send(forger.updates(span))

        await _assert_rejected(node, send_updates, mallory, psk)
        assert node.get(mallory.peer_id, "k") is None
        rejected = node.subscribe(PeerRejected)
        async with raw_peer(mallory, psk, node.peer_record(), network=other_network) as connection:
            with trio.fail_after(DEADLINE):
                await connection.wait_closed()
        assert (await next_event(rejected, PeerRejected)).peer_id == mallory.peer_id


async def test_equivocation_is_refused_and_reported(identities) -> None:
    psk = p2ptls.generate_psk()
    network = _crypto.network_id(psk)
    owner = identities[1]
    async with open_state_node(config(identities[0], psk)) as node:
        reports = node.subscribe(EquivocationDetected)
        forger = Forger(owner, network)
        first = forger.records([("k", b"one")], start=1)
        second = forger.records([("k", b"two")], start=1)
        async with raw_peer(owner, psk, node.peer_record()) as connection:
            await connection.send(forger.updates(forger.span(first)))
            await connection.send(forger.updates(forger.span(second), certificates=()))
            report = await next_event(reports, EquivocationDetected)
            assert (report.owner, report.epoch, report.sequence) == (owner.peer_id, 1, 1)
            assert node.get(owner.peer_id, "k") == b"one"
            # Valid signatures: equivocation is reported, not a reason to cut the relay.
            await connection.send(wire.Ping(b"still up"))
            with trio.fail_after(DEADLINE):
                while not isinstance(await connection.receive(), wire.Pong):
                    pass


async def test_a_member_whose_connection_goes_silent_is_dropped(identities) -> None:
    """Liveness is the connection's: the host pings a silent peer and, with no answer within
    ``ping_timeout``, drops the connection; the state session on it ends with it."""
    psk = p2ptls.generate_psk()
    fast = config(identities[0], psk, ping_interval=0.05, ping_timeout=0.3)
    async with open_state_node(fast) as node:
        members = node.subscribe(MemberChanged)
        async with silent_state_member(identities[1], psk, node.peer_record()) as silent:
            # Never answer anything: the node's host gives up on the connection and closes it.
            with trio.fail_after(DEADLINE):
                await silent.wait_closed()
        states = []
        while MemberState.UNREACHABLE not in states:
            states.append((await next_event(members, MemberChanged)).status.state)
        assert MemberState.CONNECTED in states
        assert node.host.connection(identities[1].peer_id) is None


# -- 32 and 36: versions across restarts -----------------------------------------------------------


async def test_older_versions_are_rejected_after_the_replica_restarts(identities, tmp_path) -> None:
    psk = p2ptls.generate_psk()
    network = _crypto.network_id(psk)
    owner = identities[1]
    forger = Forger(owner, network)
    old = forger.records([("k", b"old")])
    old_batch = forger.batch(old)
    new = forger.records([("k", b"new")])
    database = tmp_path / "replica.db"
    node_config = config(identities[0], psk, database)
    async with open_state_node(node_config) as node:
        connection_to = raw_peer(owner, psk, node.peer_record())
        async with connection_to as connection:
            await connection.send(forger.updates(forger.span(old, batch=old_batch)))
            await connection.send(forger.updates(forger.span(new, since=(1, 1)), certificates=()))
            await until(node, lambda: node.get(owner.peer_id, "k") == b"new")
    async with open_state_node(node_config) as node:
        assert node.get(owner.peer_id, "k") == b"new"  # served from the store at once
        changes = node.subscribe()
        async with raw_peer(owner, psk, node.peer_record()) as connection:
            await connection.send(forger.updates(forger.span(old, batch=old_batch)))
            await connection.send(wire.Ping(b"barrier!"))
            with trio.fail_after(DEADLINE):
                while not isinstance(await connection.receive(), wire.Pong):
                    pass
        assert node.get(owner.peer_id, "k") == b"new"
        assert node.stats.records_stale == 1 and node.stats.records_applied == 0
        with pytest.raises(trio.WouldBlock):
            changes.receive_nowait()


async def test_owner_restarts_in_a_new_epoch_and_never_reuses_versions(
    identities, tmp_path
) -> None:
    psk = p2ptls.generate_psk()
    owner_config = config(identities[0], psk, tmp_path / "owner.db")
    async with open_state_node(config(identities[1], psk)) as watcher:
        reports = watcher.subscribe(EquivocationDetected)
        seen: set[tuple[int, int]] = set()
        changes = watcher.subscribe()
        epochs = []
        for run in range(3):
            async with open_state_node(
                attrs_evolve(owner_config, bootstrap=(watcher.peer_record(),))
            ) as owner:
                epochs.append(owner.epoch)
                await owner.update({"run": b"%d" % run, f"key{run}": b"x"})
                await until(watcher, holds(watcher, owner.peer_id, "run", b"%d" % run))
        assert epochs == sorted(set(epochs)) and len(epochs) == 3
        while True:
            try:
                event = changes.receive_nowait()
            except trio.WouldBlock:
                break
            version = (event.epoch, event.sequence)
            assert version not in seen
            seen.add(version)
        with pytest.raises(trio.WouldBlock):
            reports.receive_nowait()
        assert watcher.snapshot(identities[0].peer_id) == {
            "run": b"2",
            "key0": b"x",
            "key1": b"x",
            "key2": b"x",
        }


def attrs_evolve(value: StateNodeConfig, **changes) -> StateNodeConfig:
    return attrs.evolve(value, **changes)


# -- faults ----------------------------------------------------------------------------------------


async def test_node_killed_mid_burst_keeps_every_acknowledged_write(identities, tmp_path) -> None:
    psk = p2ptls.generate_psk()
    watcher_config = config(identities[1], psk)
    async with open_state_node(watcher_config) as watcher:
        writer_config = config(identities[0], psk, tmp_path / "w.db", (watcher.peer_record(),))
        acknowledged: dict[str, bytes] = {}
        first_epoch = 0
        with trio.CancelScope() as kill:
            async with open_state_node(writer_config) as writer:
                first_epoch = writer.epoch

                async def burst(lane: int) -> None:
                    for i in range(10_000):
                        key, value = f"lane{lane}-{i % 40}", b"%d" % i
                        await writer.set(key, value)
                        acknowledged[key] = value
                        if len(acknowledged) >= 120 and i > 60:
                            kill.cancel()  # abruptly, with the other lanes' writes in flight

                async with trio.open_nursery() as nursery:
                    for lane in range(4):
                        nursery.start_soon(burst, lane)
        assert kill.cancelled_caught
        async with open_state_node(writer_config) as writer:
            assert writer.epoch > first_epoch
            state = writer.snapshot()
            for key, value in acknowledged.items():
                # Never older than what was acknowledged (a later unacknowledged write may win).
                assert int(state[key]) >= int(value)
            await until(watcher, lambda: watcher.snapshot(writer.peer_id) == writer.snapshot())
            await writer.set("after", b"restart")
            await until(watcher, lambda: watcher.get(writer.peer_id, "after") == b"restart")
        assert watcher.stats.equivocations == 0


async def test_partition_heals_and_converges(identities) -> None:
    psk = p2ptls.generate_psk()
    partitioned = False
    group_of = {identity.peer_id: index // 2 for index, identity in enumerate(identities)}

    def make_filter(me: p2ptls.PeerId) -> Callable[[p2ptls.PeerId], bool]:
        return lambda other: not partitioned or group_of[other] == group_of[me]

    def node_config(identity, bootstrap=()):
        return config(identity, psk, None, bootstrap, peer_filter=make_filter(identity.peer_id))

    async with open_state_node(node_config(identities[0])) as a:
        seed = (a.peer_record(),)
        async with (
            open_state_node(node_config(identities[1], seed)) as b,
            open_state_node(node_config(identities[2], seed)) as c,
            open_state_node(node_config(identities[3], seed)) as d,
        ):
            nodes = [a, b, c, d]
            for node in nodes:
                await until(node, connected(node, *[n for n in nodes if n is not node]))
            await a.set("shared", b"before")
            await until(d, lambda: d.get(a.peer_id, "shared") == b"before")

            partitioned = True
            for node in nodes:
                for other in nodes:
                    if group_of[other.peer_id] != group_of[node.peer_id]:
                        node.disconnect(other.peer_id)
            for node in nodes:
                for other in nodes:
                    if group_of[other.peer_id] != group_of[node.peer_id]:
                        await until(node, stale(node, other))
            await a.set("shared", b"written in group 0")  # each group goes on writing
            await c.set("shared", b"written in group 1")
            await d.set("d-only", b"d")
            await until(b, lambda: b.get(a.peer_id, "shared") == b"written in group 0")
            await until(d, lambda: d.get(c.peer_id, "shared") == b"written in group 1")
            assert b.get(c.peer_id, "shared") is None and a.get(d.peer_id, "d-only") is None
            assert d.get(a.peer_id, "shared") == b"before"  # last known, stale

            partitioned = False
            for node in nodes:
                node.retry_now()

            def converged(node: StateNode) -> Callable[[], bool]:
                return lambda: all(
                    node.snapshot(other.peer_id) == other.snapshot() for other in nodes
                )

            for node in nodes:
                await until(node, converged(node))
            assert [e.count for e in a.consensus("shared")] == [1, 1]


async def test_member_that_goes_away_is_reported_and_its_state_kept(identities, tmp_path) -> None:
    psk = p2ptls.generate_psk()
    async with open_state_node(config(identities[0], psk)) as alice:
        members = alice.subscribe(MemberChanged)
        bob_config = config(identities[1], psk, tmp_path / "bob.db", (alice.peer_record(),))
        async with open_state_node(bob_config) as bob:
            bob_id = bob.peer_id
            await bob.set("status", b"alive")
            await until(alice, lambda: alice.get(bob_id, "status") == b"alive")
        while True:
            event = await next_event(members, MemberChanged)
            if event.status.peer_id == bob_id and event.status.state is MemberState.UNREACHABLE:
                break
        status = alice.member(bob_id)
        assert status is not None and status.stale
        assert alice.get(bob_id, "status") == b"alive"  # last known state kept
        # Bob comes back (on another port) and is connected again.
        async with open_state_node(bob_config) as bob:
            await until(alice, connected(alice, bob))
            assert not alice.member(bob_id).stale  # type: ignore[union-attr]
            await bob.set("status", b"back")
            await until(alice, lambda: alice.get(bob_id, "status") == b"back")


async def test_flood_from_one_owner_does_not_hold_back_another(identities) -> None:
    psk = p2ptls.generate_psk()
    async with open_state_node(config(identities[0], psk)) as hub:
        seed = (hub.peer_record(),)
        async with (
            open_state_node(config(identities[1], psk, None, seed)) as flooder,
            open_state_node(config(identities[2], psk, None, seed)) as quiet,
        ):
            await until(hub, connected(hub, flooder, quiet))
            stop = trio.Event()
            calls = 0

            async def flood() -> None:
                nonlocal calls
                while not stop.is_set():
                    calls += 1
                    await flooder.update({f"k{i}": b"%d" % calls for i in range(100)})

            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood)
                await until(hub, lambda: calls >= 5)
                await quiet.set("hello", b"world")
                # The quiet owner's update arrives while the flood goes on.
                await until(hub, lambda: hub.get(quiet.peer_id, "hello") == b"world")
                assert not stop.is_set()
                stop.set()
            await until(hub, lambda: hub.snapshot(flooder.peer_id) == flooder.snapshot())
            stats = flooder.stats
            assert stats.batches_signed * 50 <= stats.records_written  # batched, not one by one


# -- embedding in a thread -------------------------------------------------------------------------


def test_node_runs_in_a_background_thread(identities) -> None:
    """The recipe for synchronous callers: trio in a thread, trio.from_thread from outside."""
    psk = p2ptls.generate_psk()
    ready = threading.Event()
    started: list[tuple[StateNode, trio.lowlevel.TrioToken, trio.Event]] = []

    async def run() -> None:
        stop = trio.Event()
        async with open_state_node(config(identities[0], psk)) as node:
            started.append((node, trio.lowlevel.current_trio_token(), stop))
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=trio.run, args=(run,))
    thread.start()
    try:
        assert ready.wait(DEADLINE)
        node, token, _stop = started[0]
        trio.from_thread.run(node.set, "k", b"from another thread", trio_token=token)
        value = trio.from_thread.run_sync(node.get, node.peer_id, "k", trio_token=token)
        assert value == b"from another thread"
    finally:
        if started:
            _node, token, stop = started[0]
            trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join(DEADLINE)
    assert not thread.is_alive()


async def test_owner_whose_store_was_rolled_back_moves_past_what_others_hold(
    identities, tmp_path
) -> None:
    """A restored backup reuses an epoch others saw: the owner notices (their digest shows its id
    beyond its own mark), moves to a newer epoch and issues its whole state again."""
    psk = p2ptls.generate_psk()
    database = tmp_path / "owner.db"
    backup = tmp_path / "backup"
    backup.mkdir()
    async with open_state_node(config(identities[1], psk)) as watcher:
        owner_config = config(identities[0], psk, database, (watcher.peer_record(),))
        async with open_state_node(owner_config) as owner:
            await owner.set("k", b"v1")
            await until(watcher, lambda: watcher.get(owner.peer_id, "k") == b"v1")
        for file in tmp_path.glob("owner.db*"):
            shutil.copy(file, backup / file.name)
        async with open_state_node(owner_config) as owner:
            await owner.set("k", b"v2")
            await owner.set("other", b"x")
            await until(watcher, lambda: watcher.get(owner.peer_id, "other") == b"x")
            reused_epoch = owner.epoch
        for file in tmp_path.glob("owner.db*"):
            file.unlink()
        for file in backup.iterdir():
            shutil.copy(file, tmp_path / file.name)
        async with open_state_node(owner_config) as owner:
            assert owner.epoch == reused_epoch  # the restored store does not know it was used
            await owner.set("after", b"restore")
            await until(owner, lambda: owner.epoch > reused_epoch)
            assert owner.snapshot() == {"k": b"v1", "after": b"restore"}
            # The restored values win everywhere; a key that only the lost history had stays
            # with the others until the owner writes or deletes it.
            expected = {"k": b"v1", "after": b"restore", "other": b"x"}
            await until(watcher, lambda: watcher.snapshot(owner.peer_id) == expected)
            await owner.delete("other")
            await until(watcher, lambda: "other" not in watcher.snapshot(owner.peer_id))
