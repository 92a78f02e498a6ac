"""``server.node``: the data methods of one facade node (distributed-state-network's ``DSNode``).

Every method blocks the calling thread while the node's trio thread does the work.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ...identity import PeerId
from ..events import MemberState
from ._bridge import NodeBridge
from .config import RESERVED_PREFIX
from .errors import UnknownNode

UpdateCallback = Callable[[], Any]
DisconnectCallback = Callable[[], Any]
ReceiveCallback = Callable[[str, bytes], Any]


class DSNode:
    """The ``server.node`` object: reads and writes of one running node, from any thread.

    Every method blocks the calling thread until the node's trio thread has done the work; none
    may be called from inside that trio thread (callbacks run elsewhere, so they may call them).
    """

    def __init__(self, bridge: NodeBridge) -> None:
        self._bridge = bridge
        self.update_cb: UpdateCallback | None = None
        self.receive_cb: ReceiveCallback | None = None
        self.disconnect_cb: DisconnectCallback | None = None

    @property
    def node_id(self) -> str:
        return self._bridge.config.node_id

    @property
    def peer_id(self) -> PeerId:
        return self._bridge.state_node.peer_id

    # -- writing --------------------------------------------------------------------------------

    def update_data(
        self, key: str, value: str | bytes, *, wait: bool = True, timeout: float | None = None
    ) -> None:
        """Set ``key`` of this node's state to ``value`` (a string, stored as UTF-8, or bytes).

        The write is durable locally first. Then, as in distributed-state-network, the call
        waits until every member connected at that moment has acknowledged it (proved that it
        holds it), so ``read_data`` on those nodes sees it as soon as this returns. ``timeout``
        (default ``config.ack_timeout``) bounds that wait: then :class:`NotAcknowledged` names
        the members that did not answer (the write still reaches them later). A member whose
        connection ends meanwhile is not waited for. ``wait=False`` returns once durable locally.
        """
        self.update_many({key: value}, wait=wait, timeout=timeout)

    def update_many(
        self,
        values: Mapping[str, str | bytes | None],
        *,
        wait: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Set several keys in one write (``None`` deletes a key); waits as :meth:`update_data`."""
        changes = {_user_key(k): None if v is None else _encode(v) for k, v in values.items()}
        bridge = self._bridge
        bridge.call(bridge.write, changes, wait, timeout)

    def delete_data(self, key: str, *, wait: bool = True, timeout: float | None = None) -> None:
        """Delete ``key`` from this node's state (a signed tombstone replaces it everywhere);
        waits as :meth:`update_data`."""
        self.update_many({key: None}, wait=wait, timeout=timeout)

    # -- reading --------------------------------------------------------------------------------

    def read_bytes(self, node_id: str, key: str) -> bytes | None:
        """The value ``node_id`` holds for ``key`` as this node knows it, as bytes.

        Raises :class:`UnknownNode` if no member claims ``node_id`` (yet).
        """
        bridge = self._bridge

        def read() -> bytes | None:
            return bridge.state_node.get(bridge.resolve(node_id), key)

        return bridge.call_sync(read)

    def read_data(self, node_id: str, key: str) -> str | None:
        """The value ``node_id`` holds for ``key``, decoded as UTF-8 (``None``: no such key).

        Local: no network request. Raises :class:`UnknownNode` for a node not known (yet).
        """
        value = self.read_bytes(node_id, key)
        return value.decode("utf-8") if value is not None else None

    def state(self, node_id: str) -> dict[str, str]:
        """Every key of ``node_id``'s state (the facade's own keys left out), decoded."""
        bridge = self._bridge

        def read() -> dict[str, bytes]:
            return bridge.state_node.snapshot(bridge.resolve(node_id))

        values = bridge.call_sync(read)
        return {
            k: v.decode("utf-8", "replace")
            for k, v in values.items()
            if not k.startswith(RESERVED_PREFIX)
        }

    def peers(self) -> list[str]:
        """This node's id and the ids of the members it is connected to.

        A member whose state has not arrived yet is listed by its peer id in hex.
        """
        bridge = self._bridge

        def read() -> list[str]:
            node = bridge.state_node
            names = [bridge.config.node_id]
            for member in node.members():
                if member.state is MemberState.CONNECTED:
                    names.append(bridge.name_of(member.peer_id))
            return names

        return bridge.call_sync(read)

    def wait_for_data(
        self, node_id: str, key: str, value: str | bytes | None = None, timeout: float = 10.0
    ) -> str:
        """Block until this node holds ``key`` of ``node_id`` (equal to ``value`` if given) and
        return it decoded. Raises ``TimeoutError`` after ``timeout`` seconds."""
        bridge = self._bridge
        expected = _encode(value) if value is not None else None

        def ready() -> bool:
            try:
                held = bridge.state_node.get(bridge.resolve(node_id), key)
            except UnknownNode:
                return False
            return held is not None and (expected is None or held == expected)

        bridge.wait(ready, timeout)
        found = self.read_bytes(node_id, key)
        assert found is not None
        return found.decode("utf-8")

    def wait_for_peer(self, node_id: str, timeout: float = 10.0) -> None:
        """Block until a member claiming ``node_id`` is connected (``TimeoutError`` after
        ``timeout`` seconds)."""
        bridge = self._bridge

        def ready() -> bool:
            try:
                peer_id = bridge.resolve(node_id)
            except UnknownNode:
                return False
            member = bridge.state_node.member(peer_id)
            return member is not None and member.state is MemberState.CONNECTED

        bridge.wait(ready, timeout)

    # -- messages -------------------------------------------------------------------------------

    def send_to_node(self, node_id: str, data: bytes) -> None:
        """Send ``data`` to a connected member; its ``receive_callback(our node_id, data)`` runs.

        Returns once written to the secure stream. Raises :class:`~p2ptls.state.NotConnected`
        if that node is not connected.
        """
        bridge = self._bridge
        payload = bytes(data)

        async def send() -> None:
            await bridge.state_node.send_to(bridge.resolve(node_id), payload)

        bridge.call(send)


def _user_key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError("a key is a str")
    if key.startswith(RESERVED_PREFIX):
        raise ValueError(f"keys starting with {RESERVED_PREFIX!r} are reserved")
    return key


def _encode(value: str | bytes) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError("a value is a str or bytes")


__all__ = ["DSNode", "DisconnectCallback", "ReceiveCallback", "UpdateCallback"]
