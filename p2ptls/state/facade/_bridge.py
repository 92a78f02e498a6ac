"""What every facade call does on the node's trio thread: names, acknowledged writes, waits.

A :class:`NodeBridge` holds the :class:`~p2ptls.state.StateNode` that runs in a
:class:`~p2ptls.state.facade._threads.TrioThread`, and is shared by the server (life cycle,
callbacks) and ``server.node`` (the data methods). Its methods marked "(trio thread)" run there,
inside :meth:`call`/:meth:`call_sync`; it uses only the node's public API.

Names: a facade node publishes its ``node_id`` under :data:`NAME_KEY` in its own state. A
``node_id`` argument means, in order: 64 hex digits, that peer; this node's own name; a name pinned
by a bootstrap record that carries it; the one other member claiming it (several: ambiguous).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

import trio

from ..._peer_lookup import PEER_ID_DIGITS, AmbiguousPeer, PeerLookupError, find_peer
from ...identity import PeerId
from ..events import MemberState
from ..node import StateNode
from ._threads import TrioThread
from .config import NAME_KEY, DSNodeConfig
from .errors import AmbiguousNode, NodeStopped, NotAcknowledged, UnknownNode

T = TypeVar("T")


class NodeBridge:
    """One facade node's :class:`StateNode`, reached from any thread."""

    def __init__(self, config: DSNodeConfig, thread: TrioThread) -> None:
        self.config = config
        self.thread = thread
        self.node: StateNode | None = None
        """Set on the trio thread once the node is open."""
        self.pinned: dict[str, PeerId] = {}
        """Names given by bootstrap records: they win over the names members claim."""

    @property
    def state_node(self) -> StateNode:
        if self.node is None:
            raise NodeStopped("the node is not running")
        return self.node

    def call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        return self.thread.call(function, *args)

    def call_sync(self, function: Callable[..., T], *args: Any) -> T:
        return self.thread.call_sync(function, *args)

    async def write(
        self, changes: Mapping[str, bytes | None], wait: bool, limit: float | None
    ) -> None:
        """(trio thread) One durable write, then the members' acknowledgements if ``wait``."""
        node = self.state_node
        await node.update(changes)
        if not wait:
            return
        if limit is None:
            limit = self.config.ack_timeout
        waiting = {
            member.peer_id for member in node.members() if member.state is MemberState.CONNECTED
        }

        async def acknowledge(peer_id: PeerId) -> None:
            await node.wait_acknowledged(peer_id)  # False: it went away, so not waited for
            waiting.discard(peer_id)

        with trio.move_on_after(limit):
            async with trio.open_nursery() as nursery:
                for peer_id in list(waiting):
                    nursery.start_soon(acknowledge, peer_id)
        if waiting:
            names = sorted(self.name_of(peer_id) for peer_id in waiting)
            raise NotAcknowledged(f"not acknowledged within {limit} s by {', '.join(names)}", names)

    def wait(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Block until ``predicate()`` (run on the trio thread) holds; ``TimeoutError`` after
        ``timeout`` seconds."""

        async def wait() -> None:
            with trio.move_on_after(timeout) as scope:
                await self.state_node.wait_until(predicate)
            if scope.cancelled_caught:
                raise TimeoutError(f"not within {timeout} s")

        self.call(wait)

    def resolve(self, node_id: str) -> PeerId:
        """(trio thread) The peer id ``node_id`` names (see the module docs); raises
        :class:`UnknownNode` or :class:`AmbiguousNode`."""
        node = self.state_node
        if node_id == self.config.node_id:
            return node.peer_id
        pinned = self.pinned.get(node_id)
        if pinned is not None:
            return pinned
        try:
            return find_peer(
                node_id, self._claims(), (), min_prefix=PEER_ID_DIGITS, any_whole_id=True
            )
        except AmbiguousPeer as exc:
            raise AmbiguousNode(str(exc)) from None
        except PeerLookupError:
            raise UnknownNode(f"no node {node_id!r} is known (yet)") from None

    def _claims(self) -> Iterator[tuple[PeerId, str]]:
        own = self.state_node.peer_id
        for owner in self.state_node.owners():
            name = self.claimed_name(owner)
            if owner != own and name is not None:
                yield owner, name

    def claimed_name(self, peer_id: PeerId) -> str | None:
        """(trio thread) The name ``peer_id`` claims in its state, if any (and UTF-8)."""
        claimed = self.state_node.get(peer_id, NAME_KEY)
        if claimed is None:
            return None
        try:
            return claimed.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def name_of(self, peer_id: PeerId) -> str:
        """(trio thread) The name ``peer_id`` claims, or its id in hex."""
        return self.claimed_name(peer_id) or peer_id.hex()
