"""The honest state network under attack, and the adversarial member's side of it.

:func:`open_state_network` runs a few honest :class:`~p2ptls.state.StateNode` (in memory, on
127.0.0.1, full mesh), each in its own task so that a node that dies is *observed* (its error is
kept) instead of tearing the test down. Every honest node writes a baseline value, and the
network converges, before the attack starts.

Under trio's autojump clock (``clock=``) set-up runs at the pace of the real clock (the nodes
start with RSA work on worker threads, which autojump would take for idleness); once the mesh
stands, private-key operations move onto the event loop and the clock jumps whenever everything
waits, so watchdogs, pings, backoffs and anti-entropy run in virtual time.

:class:`StateMember` is one lane of the adversary: a genuine member (its own RSA identity and the
network key, admitted by ``admit_network_members``) that opens state connections to its victim,
raw TCP connections to the victim's host, and signs whatever it likes with its own keys. Its
state streams are logical streams of ``p2ptls/state/1`` opened through its own host
(``host.open``), on the one connection that host keeps to the victim; :func:`silent_state_member`
is a member with a connection of its own that goes silent.
"""

from __future__ import annotations

import collections
import functools
import math
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio.testing

from p2ptls import (
    Host,
    HostConfig,
    Identity,
    KnownPeers,
    NetworkKey,
    PeerId,
    PeerRecord,
    SecureStream,
    SecurityContext,
    open_host,
)
from p2ptls._mux import DataReceived, Multiplexer
from p2ptls.state import (
    PROTOCOL,
    MemberState,
    StateNode,
    StateNodeConfig,
    _crypto,
    open_state_node,
)
from p2ptls.state import _wire as wire
from p2ptls.state.testing import Forger
from tests.conftest import identity_pool

SAFETY_NET = 60.0
"""Clock seconds before a wait that should succeed fails the test (only reached by a bug)."""

NODE_TASKS = ("_store_loop", "_sign_loop", "digest_loop", "candidate_loop")
"""Background tasks every state node runs for as long as it is up (it also serves
``p2ptls/state/1`` on its host: see ``invariants.assert_nodes_up``)."""


@functools.cache
def _extra_identities(count: int) -> tuple[Identity, ...]:
    return tuple(Identity.generate(2048) for _ in range(count))


def member_identities(count: int) -> tuple[Identity, ...]:
    """``count`` distinct RSA-2048 identities (the session's pool first; made once per run)."""
    pool = identity_pool()
    if count <= len(pool):
        return pool[:count]
    return pool + _extra_identities(count - len(pool))


@attrs.define(eq=False)
class HonestNode:
    """One honest node run by the harness, and what honest code did with it."""

    name: str
    config: StateNodeConfig
    node: StateNode | None = None
    exit_error: BaseException | None = None
    """Why ``open_state_node`` ended before the harness closed it (an invariant violation)."""
    written: dict[str, bytes] = attrs.Factory(dict)
    """Every live key honest code wrote, with its value."""
    epoch: int = 0
    """The node's epoch once the network stood (before any attack)."""
    stop: trio.Event = attrs.Factory(trio.Event)
    exited: trio.Event = attrs.Factory(trio.Event)

    @property
    def up(self) -> StateNode:
        """The running node (fails if it is gone)."""
        assert self.node is not None and not self.exited.is_set(), (
            f"honest node {self.name} exited: {self.exit_error!r}"
        )
        return self.node

    @property
    def peer_id(self) -> PeerId:
        return self.config.identity.peer_id

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with open_state_node(self.config) as node:
                self.node = node
                task_status.started()
                await self.stop.wait()
        except* Exception as group:  # observed (assert_nodes_up reports it); Cancelled is not
            self.exit_error = group
        finally:
            self.exited.set()

    async def write(self, key: str, value: bytes) -> None:
        # Noted first: a write whose wait is cancelled still happens.
        self.written[key] = value
        await self.up.set(key, value)


@attrs.define(eq=False)
class StateNetwork:
    """Honest nodes plus the identities the adversary and the test's newcomers use."""

    psk: NetworkKey
    honest: list[HonestNode]
    adversaries: tuple[Identity, ...]
    """Genuine member identities the adversary holds (lane ``i`` uses ``i % len``)."""
    spares: tuple[Identity, ...]
    """Identities of honest newcomers and probes (never used by the adversary)."""
    options: dict[str, Any]
    clock: trio.testing.MockClock | None
    nursery: trio.Nursery

    @property
    def network_id(self) -> bytes:
        return _crypto.network_id(self.psk)

    def node_config(self, identity: Identity, bootstrap: tuple[PeerRecord, ...] = ()) -> Any:
        return honest_config(identity, self.psk, bootstrap, **self.options)

    def victim(self, lane: int) -> HonestNode:
        return self.honest[lane % len(self.honest)]

    async def add_node(self, identity: Identity, name: str, via: HonestNode) -> HonestNode:
        """Start one more honest node that joins through ``via`` (an honest newcomer)."""
        honest = HonestNode(name, self.node_config(identity, (via.up.peer_record(),)))
        await self.nursery.start(honest.run)
        assert honest.node is not None
        _on_the_loop(honest.node)
        self.honest.append(honest)
        return honest


def honest_config(
    identity: Identity,
    psk: NetworkKey,
    bootstrap: tuple[PeerRecord, ...] = (),
    **options: Any,
) -> StateNodeConfig:
    options.setdefault("reconnect_min", 0.05)
    options.setdefault("reconnect_max", 0.5)
    return StateNodeConfig(identity=identity, psk=psk, bootstrap=bootstrap, **options)


def _on_the_loop(node: StateNode) -> None:
    """Run the node's RSA private-key work on the event loop (autojump must see it as busy)."""
    node.host.context.offload_private_key_operations = False


async def until(node: StateNode, predicate: Callable[[], bool]) -> None:
    """Wait (event-driven) until ``predicate()`` holds, with a safety net."""
    with trio.fail_after(SAFETY_NET):
        await node.wait_until(predicate)


def fully_connected(nodes: list[StateNode]) -> Callable[[StateNode], Callable[[], bool]]:
    def check(node: StateNode) -> Callable[[], bool]:
        def connected() -> bool:
            for other in nodes:
                if other is node:
                    continue
                status = node.member(other.peer_id)
                if status is None or status.state is not MemberState.CONNECTED:
                    return False
            return True

        return connected

    return check


@asynccontextmanager
async def open_state_network(
    size: int,
    *,
    adversaries: int = 1,
    spares: int = 1,
    clock: trio.testing.MockClock | None = None,
    psk: NetworkKey | None = None,
    **options: Any,
) -> AsyncIterator[StateNetwork]:
    """Run ``size`` honest state nodes, connected and converged, for the duration of the block.

    ``options`` go to every honest node's :class:`StateNodeConfig`.
    """
    identities = member_identities(size + adversaries + spares)
    psk = psk or NetworkKey.generate()
    if clock is not None:
        clock.autojump_threshold, clock.rate = math.inf, 1.0  # real pace while threads work
    async with trio.open_nursery() as nursery:
        network = StateNetwork(
            psk,
            [],
            identities[size : size + adversaries],
            identities[size + adversaries :],
            options,
            clock,
            nursery,
        )
        first = HonestNode("honest-0", network.node_config(identities[0]))
        await nursery.start(first.run)
        network.honest.append(first)
        seed = (first.up.peer_record(),)
        for index in range(1, size):
            honest = HonestNode(f"honest-{index}", network.node_config(identities[index], seed))
            await nursery.start(honest.run)
            network.honest.append(honest)
        nodes = [h.up for h in network.honest]
        for node in nodes:
            _on_the_loop(node)
        for node in nodes:
            await until(node, fully_connected(nodes)(node))
        for honest in network.honest:
            await honest.write("baseline", honest.name.encode())
        await converged(network)
        for honest in network.honest:
            honest.epoch = honest.up.epoch
        if clock is not None:
            clock.rate, clock.autojump_threshold = 0.0, 0.0
        try:
            yield network
        finally:
            for honest in network.honest:
                honest.stop.set()


async def honest_traffic(network: StateNetwork, interval: float) -> None:
    """Every honest node writes a counter every ``interval`` seconds (until cancelled), so the
    attack meets a network that is busy with its own work."""
    count = 0
    while True:
        count += 1
        for honest in network.honest:
            if honest.node is not None and not honest.exited.is_set():
                await honest.write("traffic", b"%d" % count)
        await trio.sleep(interval)


async def converged(network: StateNetwork) -> None:
    """Wait until every honest node holds every honest owner's written state exactly."""
    for honest in network.honest:
        node = honest.up
        for owner in network.honest:
            await until(node, holds_state(node, owner.peer_id, dict(owner.written)))


def holds_state(node: StateNode, owner: PeerId, expected: dict[str, bytes]) -> Callable[[], bool]:
    return lambda: node.snapshot(owner) == expected


# -- the adversary's side --------------------------------------------------------------------------


class StateConnection:
    """A state-protocol connection of the adversary to its victim (hellos exchanged or not).

    A reader task keeps reading what the victim sends (a member that does not read gets cut for
    it, which would end most moves early); the last messages are kept for replays.
    """

    def __init__(self, stream: Any, victim_hello: wire.StateHello | None) -> None:
        self.stream = stream
        self.victim_hello = victim_hello
        self.received: collections.deque[bytes] = collections.deque(maxlen=32)
        self.closed = trio.Event()

    async def send(self, message: wire.Message | bytes) -> None:
        data = message if isinstance(message, bytes) else message.encode()
        await self.stream.send_message(data)

    async def read_forever(self) -> None:
        try:
            while True:
                self.received.append(await self.stream.receive_message())
        except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.closed.set()

    async def barrier(self) -> None:
        """A PING: once the victim is past it, every earlier message was handled (the reader
        drops the PONG with everything else; closing instead is fine too)."""
        await self.send(wire.Ping(b"barrier!"))


class StateMember:
    """One lane of the adversary: a genuine member attacking one honest victim."""

    def __init__(
        self,
        network: StateNetwork,
        lane: int,
        host: Host,
        nursery: trio.Nursery,
    ) -> None:
        self.network = network
        self.lane = lane
        self.host = host
        self.identity = host.config.identity
        self.victim = network.victim(lane)
        self._nursery = nursery
        self._current: StateConnection | None = None
        self._forgers: dict[tuple[bytes, int], Forger] = {}
        self.connections: list[StateConnection] = []
        self.held: list[trio.SocketStream] = []
        """Raw TCP connections a move keeps open (closed when the lane ends)."""

    @property
    def victim_node(self) -> StateNode:
        return self.victim.up

    @property
    def victim_record(self) -> PeerRecord:
        return self.victim_node.peer_record()

    @property
    def victim_host(self) -> Host:
        """The victim's host (what the transport moves attack)."""
        return self.victim_node.host

    @property
    def psk(self) -> NetworkKey:
        return self.network.psk

    @property
    def network_id(self) -> bytes:
        return self.network.network_id

    def forger(self, epoch: int = 1, identity: Identity | None = None) -> Forger:
        """Signs as ``identity`` (default: this member) in ``epoch`` (one RSA signature each)."""
        identity = identity or self.identity
        key = (identity.peer_id.digest, epoch)
        if key not in self._forgers:
            seed = random.Random(f"forger {key[0].hex()} {epoch}").randbytes(32)
            self._forgers[key] = Forger(identity, self.network_id, epoch, seed=seed)
        return self._forgers[key]

    async def stream(self) -> Any:
        """A fresh state stream to the victim (no state hello sent yet), on the lane's shared
        connection to it."""
        return await self.host.open(self.victim_record, PROTOCOL)

    async def fresh(self, *, hello: bool = True, incarnation: int = 1) -> StateConnection:
        """A new state connection (replacing the lane's current one)."""
        stream = await self.stream()
        victim_hello = None
        if hello:
            await stream.send_message(wire.StateHello(self.network_id, incarnation, None).encode())
            data = await stream.receive_message()
            first = wire.parse_message_untrusted(data, wire.Limits(wire.MAX_VALUE_LIMIT))
            assert isinstance(first, wire.StateHello)
            victim_hello = first
        connection = StateConnection(stream, victim_hello)
        self._nursery.start_soon(connection.read_forever)
        self._current = connection
        self.connections.append(connection)
        return connection

    async def state(self) -> StateConnection:
        """The lane's current state connection, opened again if the victim closed it."""
        current = self._current
        if current is None or current.closed.is_set():
            current = await self.fresh()
        return current

    async def close(self) -> None:
        for tcp in self.held:
            await tcp.aclose()
        self.held.clear()
        for connection in self.connections:
            with trio.move_on_after(1.0):
                await connection.stream.aclose()
        self.connections.clear()


@asynccontextmanager
async def state_member(network: StateNetwork, lane: int) -> AsyncIterator[StateMember]:
    """Lane ``lane`` of the adversary (use as the lane factory of ``run_adversary``)."""
    identity = network.adversaries[lane % len(network.adversaries)]
    async with (
        open_host(HostConfig(identity=identity, psk=network.psk)) as host,
        trio.open_nursery() as nursery,
    ):
        host.context.offload_private_key_operations = False
        member = StateMember(network, lane, host, nursery)
        try:
            yield member
        finally:
            with trio.CancelScope(shield=True):
                await member.close()
            nursery.cancel_scope.cancel()


def lanes_of(network: StateNetwork) -> Callable[[int], Any]:
    """The lane factory for :func:`~tests.adversary.core.run_adversary`."""
    return functools.partial(state_member, network)


class SilentMember:
    """A member's own connection to a node (no host runs it: nothing answers the node's
    keepalive pings) with a state session on it; see :func:`silent_state_member`."""

    def __init__(self, secure: SecureStream, mux: Multiplexer, stream_id: int) -> None:
        self.secure = secure
        self.mux = mux
        self.stream_id = stream_id
        self._assembly: list[bytes] = []

    async def send(self, message: wire.Message) -> None:
        self.mux.send_data(self.stream_id, message.encode(), message=True, end=True)
        await self.secure.send_all(self.mux.data_to_send())

    async def receive_until(self, wanted: bytes) -> None:
        """Read (without answering anything) until the node sends the message ``wanted``."""
        while True:
            data = await self.secure.receive_some()
            if not data:
                raise trio.EndOfChannel
            for event in self.mux.receive_data_untrusted(data):
                if not isinstance(event, DataReceived) or event.stream_id != self.stream_id:
                    continue
                self._assembly.append(event.data)
                if event.end:
                    message = b"".join(self._assembly)
                    self._assembly.clear()
                    self.mux.message_taken(self.stream_id)
                    if message == wanted:
                        return

    async def wait_closed(self) -> None:
        """Read (and drop) everything, answering nothing, until the node closes the
        connection."""
        try:
            while await self.secure.receive_some():
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


@asynccontextmanager
async def silent_state_member(
    identity: Identity, psk: NetworkKey, node: PeerRecord
) -> AsyncIterator[SilentMember]:
    """A member that dials ``node`` on a connection of its own, opens a state session, exchanges
    HELLOs, waits until the node took the session (a state PING answered), and then answers
    nothing more: from the node's side, a member whose connection went silent."""
    assert node.address is not None
    tcp = await trio.open_tcp_stream(*node.address)
    context = SecurityContext(identity, psk, KnownPeers([node]))
    secure = SecureStream(tcp, context, remote=node, messages=False)
    try:
        await secure.do_handshake()
        mux = Multiplexer(initiator=True)
        member = SilentMember(secure, mux, mux.open_stream(PROTOCOL))
        await member.send(wire.StateHello(_crypto.network_id(psk), 1, None))
        await member.send(wire.Ping(b"silence!"))
        await member.receive_until(wire.Pong(b"silence!").encode())
        yield member
    finally:
        await trio.aclose_forcefully(secure)
