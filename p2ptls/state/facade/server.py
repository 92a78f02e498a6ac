"""``DSNodeServer``: one facade node's life cycle, its callbacks, and the original's server API.

Starting a server prepares the node's files (data directory, identity, bootstrap records), runs a
:class:`~p2ptls.state.StateNode` in a :class:`~p2ptls.state.facade._threads.TrioThread`, writes
the node's own peer record, and waits for a bootstrap member. Two tasks on the trio thread turn
the node's events and direct messages into the application's callbacks, which a
:class:`~p2ptls.state.facade._threads.CallbackDispatcher` runs on a thread of their own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from ..._files import check_own_path
from ...identity import Identity, NetworkKey, PeerId, PeerRecord
from .._bootstrap import save_peer_record
from ..config import StateNodeConfig
from ..events import (
    EquivocationDetected,
    MemberChanged,
    MemberState,
    PeerRejected,
    StateChanged,
    SubscriptionOverflowed,
)
from ..node import StateNode, open_state_node
from ._bridge import NodeBridge
from ._threads import CallbackDispatcher, TrioThread
from .bootstrap import resolve_bootstrap
from .config import NAME_KEY, DSNodeConfig, file_stem, generate_key
from .errors import FacadeError
from .node import DisconnectCallback, DSNode, ReceiveCallback, UpdateCallback

log = logging.getLogger("p2ptls.state.facade")

AlertCallback = Callable[[str], Any]


class DSNodeServer:
    """One node run in a background thread (compare distributed-state-network's server).

    Create and start with :meth:`start`; stop with :meth:`stop` (or use it as a context
    manager). ``server.node`` holds the data methods; the server offers them too.
    """

    def __init__(
        self,
        config: DSNodeConfig | Mapping[str, Any],
        create_alert: AlertCallback | None = None,
        disconnect_callback: DisconnectCallback | None = None,
        update_callback: UpdateCallback | None = None,
        receive_callback: ReceiveCallback | None = None,
    ) -> None:
        """Start a node (see :meth:`start`); ``config`` may be a dict of
        :meth:`DSNodeConfig.from_dict`'s shape."""
        if not isinstance(config, DSNodeConfig):
            config = DSNodeConfig.from_dict(config)
        if config.network_key_file is None:
            raise ValueError("network_key_file is required (create one with generate_key)")
        self.config = config
        self.create_alert: AlertCallback = create_alert or _log_alert
        name = f"dsn-{file_stem(config.node_id)[5:13]}"
        self._thread = TrioThread(name, self._crashed)
        self._bridge = NodeBridge(config, self._thread)
        self.node = DSNode(self._bridge)
        self.node.update_cb = update_callback
        self.node.receive_cb = receive_callback
        self.node.disconnect_cb = disconnect_callback
        self._dispatcher = CallbackDispatcher(name)
        self._bootstrap: list[PeerRecord] = []
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    generate_key = staticmethod(generate_key)

    # -- life cycle -----------------------------------------------------------------------------

    @staticmethod
    def start(
        config: DSNodeConfig | Mapping[str, Any],
        create_alert: AlertCallback | None = None,
        disconnect_callback: DisconnectCallback | None = None,
        update_callback: UpdateCallback | None = None,
        receive_callback: ReceiveCallback | None = None,
    ) -> DSNodeServer:
        """Create the node's files if needed, start it in a background thread and join the
        network through ``bootstrap_nodes`` (the same as ``DSNodeServer(config, ...)``).

        ``config`` is a :class:`DSNodeConfig` or a dict of :meth:`DSNodeConfig.from_dict`'s
        shape. Returns once the node listens and, if it has bootstrap nodes, once it is connected
        to one of them and holds its state (or, after ``start_timeout``, with an alert "Could
        not connect to any bootstrap node", like the original; it keeps trying in the
        background).
        """
        return DSNodeServer(
            config, create_alert, disconnect_callback, update_callback, receive_callback
        )

    @property
    def running(self) -> bool:
        """Started, and neither stopped nor ended by an error."""
        return self._thread.running

    def _start(self) -> None:
        config = self.config
        _prepare_dir(config.data_dir)
        assert config.network_key_file is not None
        psk = NetworkKey.load(config.network_key_file)
        identity = _load_or_create_identity(config)
        self._bootstrap = resolve_bootstrap(
            config.entries, config.record_dir or config.data_dir, identity.peer_id
        )
        for record in self._bootstrap:
            if record.name:
                self._bridge.pinned[record.name] = record.peer_id
        listen_host = config.listen_ip or config.network_ip
        advertise = None
        if listen_host != config.network_ip and config.port:
            advertise = (config.network_ip, config.port)
        state_config = StateNodeConfig(
            identity=identity,
            psk=psk,
            database=config.database_path if config.persistent else None,
            listen=(listen_host, config.port),
            advertise=advertise,
            bootstrap=self._bootstrap,
            name=config.node_id,
            durability=config.durability,
            coalesce_delay=config.coalesce_delay,
            replay_state_path=str(config.replay_path) if config.persistent else None,
        )
        self._thread.start(self._run_node, state_config)
        record = self.peer_record
        port = record.address[1] if record.address else config.port
        save_peer_record(config.record_path, record.with_address(config.network_ip, port))
        if self._bootstrap:
            self._await_bootstrap()

    def _await_bootstrap(self) -> None:
        ids = [record.peer_id for record in self._bootstrap]

        def joined() -> bool:
            node = self.state_node
            for peer_id in ids:
                member = node.member(peer_id)
                # Connected, and its state arrived (its name; a node that is not a facade
                # may have no name, then any of its state).
                if (
                    member is not None
                    and member.state is MemberState.CONNECTED
                    and (node.get(peer_id, NAME_KEY) is not None or member.version != (0, 0))
                ):
                    return True
            return False

        try:
            self._bridge.wait(joined, self.config.start_timeout)
        except TimeoutError:
            log.warning("%s: could not connect to any bootstrap node", self.config.node_id)
            self._alert("Could not connect to any bootstrap node")

    async def _run_node(
        self,
        state_config: StateNodeConfig,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """(trio thread) The node, open until cancelled, with its name published and its events
        forwarded to the callbacks."""
        async with open_state_node(state_config) as node:
            name = self.config.node_id.encode("utf-8")
            if node.get(node.peer_id, NAME_KEY) != name:
                await node.set(NAME_KEY, name)
            self._bridge.node = node
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._forward_events, node)
                nursery.start_soon(self._forward_messages, node)
                task_status.started()

    def _crashed(self, exc: BaseException) -> None:
        log.error("%s: the node's thread failed", self.config.node_id, exc_info=exc)
        self._alert(f"node stopped after an error: {exc!r}")

    async def _forward_events(self, node: StateNode) -> None:
        types = (StateChanged, MemberChanged, PeerRejected, EquivocationDetected)
        while True:
            events = node.subscribe(*types)
            async with events:
                async for event in events:
                    changed = self._dispatch(event)
                    while True:  # whatever else is ready: one update callback for all of it
                        try:
                            more = events.receive_nowait()
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                        changed = self._dispatch(more) or changed
                    if changed:
                        self._dispatcher.post(self.node.update_cb)
            # The channel ended: the subscriber overflowed (or the node is closing).
            await trio.lowlevel.checkpoint()

    def _dispatch(self, event: object) -> bool:
        """Post what ``event`` calls for; True if it is a change of another node's state."""
        if isinstance(event, StateChanged):
            return not event.local
        if isinstance(event, SubscriptionOverflowed):
            return True
        if isinstance(event, MemberChanged):
            if event.status.state is MemberState.UNREACHABLE:
                self._dispatcher.post(self.node.disconnect_cb)
        elif isinstance(event, PeerRejected):
            self._alert(f"rejected peer {event.peer_id.short}: {event.reason}")
        elif isinstance(event, EquivocationDetected):
            self._alert(f"node {event.owner.short} signed two different states (equivocation)")
        return False

    async def _forward_messages(self, node: StateNode) -> None:
        async for message in node.direct_messages:
            callback = self.node.receive_cb
            if callback is not None:
                self._dispatcher.post(
                    callback, self._bridge.name_of(message.sender), message.payload
                )

    def _alert(self, message: str) -> None:
        self._dispatcher.post(self.create_alert, message)

    def stop(self) -> None:
        """Stop the node: close its connections and database and end its threads. Idempotent."""
        self._thread.stop()
        self._dispatcher.close()

    def is_shut_down(self) -> bool:
        return self._thread.stopped

    def __enter__(self) -> DSNodeServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- the original's server methods ----------------------------------------------------------

    def node_id(self) -> str:
        return self.config.node_id

    def peers(self) -> list[str]:
        """See :meth:`DSNode.peers`."""
        return self.node.peers()

    def read_data(self, node_id: str, key: str) -> str | None:
        """See :meth:`DSNode.read_data`."""
        return self.node.read_data(node_id, key)

    def update_data(
        self, key: str, value: str | bytes, *, wait: bool = True, timeout: float | None = None
    ) -> None:
        """See :meth:`DSNode.update_data`."""
        self.node.update_data(key, value, wait=wait, timeout=timeout)

    def send_to_node(self, node_id: str, data: bytes) -> None:
        """See :meth:`DSNode.send_to_node`."""
        self.node.send_to_node(node_id, data)

    def set_receive_cb(self, cb: ReceiveCallback) -> None:
        self.node.receive_cb = cb

    def set_update_cb(self, cb: UpdateCallback) -> None:
        self.node.update_cb = cb

    def set_disconnect_cb(self, cb: DisconnectCallback) -> None:
        self.node.disconnect_cb = cb

    def receive_data(self, data: bytes) -> None:
        """Hand ``data`` to this node's own receive callback (as the original does)."""
        if self.node.receive_cb is not None:
            self.node.receive_cb(self.config.node_id, data)

    # -- p2ptls specifics -----------------------------------------------------------------------

    @property
    def state_node(self) -> StateNode:
        """The underlying :class:`StateNode` (use it only from its trio thread)."""
        return self._bridge.state_node

    @property
    def peer_id(self) -> PeerId:
        return self.state_node.peer_id

    @property
    def peer_record(self) -> PeerRecord:
        """This node's peer record (name = node_id, with its address): what others bootstrap
        from. It is also written to ``config.record_path`` at start."""
        return self._thread.call_sync(lambda: self.state_node.peer_record(self.config.node_id))

    def __repr__(self) -> str:
        return f"DSNodeServer({self.config.node_id!r}, running={self.running})"


def _load_or_create_identity(config: DSNodeConfig) -> Identity:
    path = config.identity_path
    if path.exists():
        return Identity.load(path)
    identity = Identity.generate(config.key_bits)
    identity.save(path)
    log.info("%s: created identity %s in %s", config.node_id, identity.peer_id.short, path)
    return identity


def _prepare_dir(path: Path) -> None:
    """Create the data directory (mode 0700), or check that an existing one is ours alone."""
    if not path.exists():
        path.mkdir(mode=0o700, parents=True)
        return
    if not path.is_dir():
        raise FacadeError(f"data directory {str(path)!r} is not a directory")
    check_own_path(path, "data directory", FacadeError)


def _log_alert(message: str) -> None:
    log.warning("%s", message)


__all__ = ["AlertCallback", "DSNodeServer"]
