"""The invariants an adversarial member must not break, as reusable checks.

1. Honest nodes stay up: ``open_state_node`` did not exit, its background tasks run, and it still
   answers a newcomer's hello and ping (:func:`assert_nodes_up`, :func:`assert_nodes_answer`).
2. Honest state is unchanged and still converges: each honest owner is still in the epoch it had
   before the attack and holds exactly what honest code wrote; a write made after the attack
   reaches every honest node (:func:`assert_own_state_unchanged`, :func:`assert_still_converges`).
3. Memory stays bounded: tables within their configured bounds (:func:`assert_tables_bounded`)
   and the heap within a budget across a flood (:func:`memory_budget`).
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager

import trio

from p2ptls import HostConfig, open_host
from p2ptls.state import PROTOCOL, StateNode
from p2ptls.state import _wire as wire

from .network import NODE_TASKS, SAFETY_NET, HonestNode, StateNetwork, converged


def running_tasks(node: StateNode) -> set[str]:
    """Short names of the node's background tasks that are running."""
    return {task.name.rsplit(".", 1)[-1] for task in node._nursery.child_tasks}


def assert_nodes_up(network: StateNetwork) -> None:
    for honest in network.honest:
        assert not honest.exited.is_set(), f"{honest.name} exited: {honest.exit_error!r}"
        assert honest.node is not None
        missing = [name for name in NODE_TASKS if name not in running_tasks(honest.node)]
        assert not missing, f"{honest.name} lost its tasks {missing}"
        served = honest.node.host.manager.handler_for(PROTOCOL)
        assert served is not None, f"{honest.name} no longer serves {PROTOCOL}"


async def answers(network: StateNetwork, honest: HonestNode) -> bool:
    """Whether a newcomer (a spare identity) gets the node's hello and a pong, in time."""
    probe = network.spares[-1]
    with trio.move_on_after(SAFETY_NET):
        async with open_host(HostConfig(identity=probe, psk=network.psk)) as host:
            host.context.offload_private_key_operations = False
            try:
                stream = await host.open(honest.up.peer_record(), PROTOCOL)
                await stream.send_message(wire.StateHello(network.network_id, 1, None).encode())
                limits = wire.Limits(wire.MAX_VALUE_LIMIT)
                first = wire.parse_message_untrusted(await stream.receive_message(), limits)
                if not isinstance(first, wire.StateHello):
                    return False
                await stream.send_message(wire.Ping(b"probe!!!").encode())
                while True:
                    message = wire.parse_message_untrusted(await stream.receive_message(), limits)
                    if message == wire.Pong(b"probe!!!"):
                        await stream.aclose()
                        return True
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel):
                return False
    return False


async def assert_nodes_answer(network: StateNetwork) -> None:
    for honest in network.honest:
        assert await answers(network, honest), f"{honest.name} does not answer a newcomer"


def assert_own_state_unchanged(network: StateNetwork) -> None:
    """No honest node moved to a new epoch, or decided to (the decision is taken at once, when a
    message is handled; the move itself finishes later, on a worker thread), and each holds
    exactly what it wrote."""
    for honest in network.honest:
        node = honest.up
        assert node.epoch == honest.epoch, (
            f"{honest.name} moved from epoch {honest.epoch} to {node.epoch}"
        )
        # Set, and never cleared, when a signature proved lost history and a move was decided.
        assert node._core._own_handled == wire.NO_VERSION, f"{honest.name} decided to move epoch"
        assert node.snapshot() == honest.written, f"{honest.name}'s own state changed"


async def assert_still_converges(network: StateNetwork, tag: str = "after") -> None:
    """Every honest node writes once more; every honest node ends up with every honest state."""
    for honest in network.honest:
        await honest.write(f"{tag}-{honest.name}", b"written after the attack")
    await converged(network)


def assert_tables_bounded(network: StateNetwork) -> None:
    """Every table a peer can add to is within its configured bound."""
    for honest in network.honest:
        node = honest.up
        config = node.config
        core = node._core
        name = honest.name
        assert len(core.owners) <= config.max_owners, f"{name}: owners {len(core.owners)}"
        assert len(node._members) <= config.max_members, f"{name}: members {len(node._members)}"
        for owner, state in core.owners.items():
            if owner == core.own_id:
                continue
            # Spec: a certificate is kept while a batch of its epoch is, plus the newest one.
            epochs = {epoch for epoch, _first in state.proofs}
            assert len(state.certs) <= len(epochs) + 1, (
                f"{name}: {len(state.certs)} certificates held for owner {owner.hex()[:12]} "
                f"with batches in {len(epochs)} epochs"
            )
        for pump in node._sessions.running:
            session = pump.session
            assert len(session.control) <= config.max_pending_requests, f"{name}: control queue"
            # What a session remembers per owner is worth keeping for owners held at most.
            outbound = session.outbound
            for table in ("belief", "pulls_outstanding", "sent_certs", "announced"):
                size = len(getattr(outbound, table))
                assert size <= config.max_owners, (
                    f"{name}: {size} entries in the {table} of the session with "
                    f"{pump.peer_id.short} (max_owners {config.max_owners})"
                )
        buffered = node._sessions.direct_send.statistics().current_buffer_used
        assert buffered <= config.direct_buffer, f"{name}: {buffered} direct messages"
        host = node.host
        assert host.pending_handshakes <= host.config.max_pending_handshakes, f"{name}: handshakes"


@contextmanager
def memory_budget(limit: int, what: str = "the flood") -> Iterator[None]:
    """Fail if the traced heap grew by more than ``limit`` bytes across the block."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        yield
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
        print(f"memory: {what} grew the heap by {grown} bytes (budget {limit})")
        assert grown <= limit, f"{what} grew the heap by {grown} bytes (budget {limit})"
    finally:
        if started:
            tracemalloc.stop()
