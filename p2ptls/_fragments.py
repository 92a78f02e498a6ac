"""Message fragmentation and reassembly.

Theory of operation
-------------------
A message is sent as one MESSAGE_START record (a 4-byte total length, then the first fragment)
followed by MESSAGE_CONTINUE records, each no larger than the record payload limit. Other records
(byte-stream data, control) may interleave between fragments; messages themselves never do.

The receiver checks the announced total against ``max_message_size`` before keeping anything,
reserves each fragment's bytes from a :class:`ReassemblyBudget` shared by every connection of a host
(so many peers each holding half a message cannot exhaust memory), refuses a fragment that would
overrun the total, a CONTINUE with no open message, a START inside an open one, and empty fragments.
"""

from __future__ import annotations

from ._errors import MessageTooLarge, ProtocolError, ReassemblyBudgetExceeded

DEFAULT_REASSEMBLY_BUDGET = 256 * 1024 * 1024
# A conforming sender fills every fragment but the last to the record size (at least 256 bytes,
# less the 4-byte length in the first). Smaller non-final fragments would let a peer make us hold
# many small objects per budgeted byte, so they are refused; each kept fragment is also charged
# a fixed overhead.
MIN_NONFINAL_FRAGMENT = 252
FRAGMENT_OVERHEAD = 64


DEFAULT_PER_PEER_BUDGET = 64 * 1024 * 1024


class ReassemblyBudget:
    """Bytes of partly received messages that all connections sharing it may hold.

    Charged per remote peer too, so one peer (however many connections it opens) cannot use more
    than ``per_peer_limit`` and starve the others.
    """

    def __init__(
        self, limit: int = DEFAULT_REASSEMBLY_BUDGET, per_peer_limit: int = DEFAULT_PER_PEER_BUDGET
    ) -> None:
        self.limit = limit
        self.per_peer_limit = per_peer_limit
        self.in_use = 0
        self._by_peer: dict[object, int] = {}

    def reserve(self, size: int, peer: object = None) -> None:
        held = self._by_peer.get(peer, 0)
        if held + size > self.per_peer_limit:
            raise ReassemblyBudgetExceeded("this peer's share of the reassembly budget is used up")
        if self.in_use + size > self.limit:
            raise ReassemblyBudgetExceeded("host reassembly budget exhausted")
        self.in_use += size
        self._by_peer[peer] = held + size

    def release(self, size: int, peer: object = None) -> None:
        if not size:
            return
        self.in_use -= size
        left = self._by_peer.get(peer, 0) - size
        if left > 0:
            self._by_peer[peer] = left
        else:
            self._by_peer.pop(peer, None)

    def __repr__(self) -> str:
        return f"<ReassemblyBudget {self.in_use}/{self.limit}>"


class Reassembler:
    """Reassembles one direction's messages."""

    def __init__(self, max_message_size: int, budget: ReassemblyBudget) -> None:
        self._max = max_message_size
        self._budget = budget
        self.peer: object = None
        """Whom the reservations are charged to (the remote peer id, once known)."""
        self._parts: list[bytes | memoryview] = []
        self._expected = 0
        self._held = 0
        self._charged = 0

    @property
    def in_progress(self) -> bool:
        return bool(self._expected)

    def start_untrusted(self, total: int, fragment: bytes | memoryview) -> bytes | None:
        """Begin a message; return it if this fragment completes it."""
        if self._expected:
            raise ProtocolError("a message started inside an unfinished message")
        if total > self._max:
            raise MessageTooLarge("peer announced a message above max_message_size")
        if total == 0:
            if fragment:
                raise ProtocolError("fragment overruns its message")
            return b""
        self._expected = total
        return self._add(fragment)

    def continue_untrusted(self, fragment: bytes) -> bytes | None:
        """Add a fragment; return the message if it is now complete."""
        if not self._expected:
            raise ProtocolError("message fragment with no message in progress")
        return self._add(fragment)

    def _add(self, fragment: bytes | memoryview) -> bytes | None:
        if not fragment:
            raise ProtocolError("empty message fragment")
        if self._held + len(fragment) > self._expected:
            raise ProtocolError("fragment overruns its message")
        if self._held + len(fragment) == self._expected:
            parts, self._parts = self._parts, []
            self._budget.release(self._charged, self.peer)
            self._held = self._expected = self._charged = 0
            if not parts:
                return bytes(fragment)  # a one-fragment message comes as bytes already
            parts.append(fragment)
            return b"".join(parts)
        if len(fragment) < MIN_NONFINAL_FRAGMENT:
            raise ProtocolError("non-final message fragment below the minimum record size")
        self._budget.reserve(len(fragment) + FRAGMENT_OVERHEAD, self.peer)
        self._parts.append(fragment)
        self._held += len(fragment)
        self._charged += len(fragment) + FRAGMENT_OVERHEAD
        return None

    def discard(self) -> None:
        """Drop any partial message and return its bytes to the budget."""
        self._budget.release(self._charged, self.peer)
        self._parts.clear()
        self._held = self._expected = self._charged = 0


def fragment_sizes(total: int, first_limit: int, limit: int) -> list[tuple[int, int]]:
    """``(offset, size)`` of each fragment of a ``total``-byte message."""
    sizes = [(0, min(total, first_limit))]
    offset = sizes[0][1]
    while offset < total:
        size = min(limit, total - offset)
        sizes.append((offset, size))
        offset += size
    return sizes
