"""The facade's errors (a bootstrap entry that names no usable record raises
:class:`~p2ptls.state.facade.BootstrapError`, shared with the node configuration file)."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import StateError


class FacadeError(StateError):
    """Base class of the facade's errors."""


class NodeStopped(FacadeError):
    """The node was stopped (or its background thread ended); it cannot be used any more."""


class UnknownNode(FacadeError, KeyError):
    """No member claims this node id (yet): its state has not reached this node."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown node"


class AmbiguousNode(FacadeError, LookupError):
    """Several members claim this node id; address them by peer id (hex) instead."""


class NotAcknowledged(FacadeError, TimeoutError):
    """Connected members did not acknowledge a write in time (``node_ids`` lists them).

    The write itself is durable here and reaches them later, as it reaches any member.
    """

    def __init__(self, message: str, node_ids: Sequence[str]) -> None:
        super().__init__(message)
        self.node_ids = list(node_ids)


__all__ = ["AmbiguousNode", "FacadeError", "NodeStopped", "NotAcknowledged", "UnknownNode"]
