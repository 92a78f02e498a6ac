"""Reassembly of fragmented messages, loss detection by message id, and the delivery modes.

Theory of operation
-------------------
Every message has an id (the sender counts 0, 1, 2...) and is sent as ``count`` fragments of one
size ``F`` except the last (1 to ``F`` bytes; an empty message is one empty fragment). The sender
picks ``F`` per message (from its path MTU, and smaller after the path shrank), between
``MIN_FRAGMENT`` and the negotiated datagram size less the overhead; the receiver learns it from
the message's first non-final fragment and holds every later one to it. It checks each fragment
against those rules and against its own ``max_message_size`` before it keeps anything, so a peer
cannot make it hold more than it configured. A one-fragment message is delivered at once without
being stored.

Incomplete messages live in a dict in arrival order; since every message gets the same timeout
from its first fragment, the first entry is always the next to expire. Two bounds hold at all
times, ``max_reassembly_messages`` and ``max_reassembly_bytes``: to make room the oldest incomplete
message is given up (EVICTED). At its timeout an incomplete message is given up (TIMEOUT) or, in
partial mode, delivered with its missing fragments listed.

A second :class:`ReplayWindow`, over message ids, remembers which ids are finished (delivered or
given up), so a straggling fragment never starts a message again. When a fragment reveals a gap
(ids that jumped), the gap is remembered with the reassembly timeout; ids of it with no fragment
by then are reported lost (NEVER_ARRIVED). In ordered mode a message older than one already
delivered is dropped as late, together with any incomplete messages older than the one delivered.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from ._errors import DatagramError
from ._replay import ReplayWindow
from ._wire import BODY_SIZE as _BODY_SIZE
from ._wire import MIN_FRAGMENT
from .config import DeliveryMode, SllpConfig
from .events import LossReason, Message

MESSAGE_WINDOW_BITS = 65536
MAX_GAP_ENTRIES = 4096

Deliver = Callable[[Message], None]
Lose = Callable[[int, int, LossReason], None]


class _Partial:
    __slots__ = ("count", "deadline", "fragment_size", "last_size", "parts", "size")

    def __init__(self, count: int, deadline: float) -> None:
        self.count = count
        self.deadline = deadline
        self.parts: dict[int, bytes | memoryview] = {}
        self.size = 0
        self.fragment_size = 0  # F, from the first non-final fragment (0: none yet)
        self.last_size = 0  # the final fragment's size, once it arrived

    def learn_sizes_untrusted(self, final: bool, size: int, max_message_size: int) -> None:
        """Check a fragment's size against the message's others (raise :class:`DatagramError`),
        and remember what it tells."""
        fragment_size, last_size = self.fragment_size, self.last_size
        if final:
            if fragment_size and (
                size > fragment_size or (self.count - 1) * fragment_size + size > max_message_size
            ):
                raise DatagramError("final fragment size out of range")
            self.last_size = size
        elif not fragment_size:
            if last_size and (
                last_size > size or (self.count - 1) * size + last_size > max_message_size
            ):
                raise DatagramError("final fragment size out of range")
            self.fragment_size = size
        elif size != fragment_size:
            raise DatagramError("non-final fragments of different sizes")


class Reassembler:
    """One direction's reassembly state. Calls ``deliver`` and ``lose`` with its results."""

    def __init__(
        self, config: SllpConfig, max_fragment_size: int, deliver: Deliver, lose: Lose
    ) -> None:
        self.max_fragment_size = max_fragment_size
        """The largest fragment the negotiated datagram size allows."""
        self.fragment_size = max_fragment_size
        """The peer's latest fragment size ``F`` (the largest allowed until one is seen): what a
        partial message with no non-final fragment is filled in with."""
        self.max_message_size = config.max_message_size
        self.max_fragments = max(1, -(-config.max_message_size // MIN_FRAGMENT))
        self.timeout = config.reassembly_timeout
        self.max_messages = config.max_reassembly_messages
        self.max_bytes = config.max_reassembly_bytes
        self.mode = config.delivery
        self._deliver = deliver
        self._lose = lose
        self._partials: dict[int, _Partial] = {}
        self._current: _Partial | None = None  # the partial last added to (a fast path)
        self._current_id = -1
        self._done = ReplayWindow(MESSAGE_WINDOW_BITS)
        self._gaps: collections.deque[tuple[int, int, float]] = collections.deque()
        self._highest = -1
        self._highest_delivered = -1
        self.bytes_held = 0
        self.late = 0
        self.timeouts = 0
        self.partial = 0
        self.duplicate_fragments = 0

    @property
    def messages_held(self) -> int:
        return len(self._partials)

    def next_deadline(self) -> float:
        deadline = float("inf")
        if self._partials:
            deadline = next(iter(self._partials.values())).deadline
        if self._gaps and self._gaps[0][2] < deadline:
            deadline = self._gaps[0][2]
        return deadline

    # -- fragments ----------------------------------------------------------------------------

    def take_middle(self, message_id: int, index: int, count: int, plaintext: bytes) -> bool:
        """The fast path of :meth:`add_untrusted` for a whole decrypted DATA body: keep it and
        return ``True`` if it is a middle fragment of the message being reassembled that
        :meth:`add_untrusted` would keep without further ado (as its payload, after the body
        header); otherwise ``False``, and the caller goes the long way."""
        current = self._current
        if (
            current is None
            or message_id != self._current_id
            or count != current.count
            or index + 1 >= count
            or len(plaintext) - _BODY_SIZE != current.fragment_size
        ):
            return False
        parts = current.parts
        done = self._done
        if index in parts or len(parts) + 1 >= count or done.top - message_id >= done.size:
            return False
        size = current.fragment_size
        bytes_held = self.bytes_held + size
        if bytes_held > self.max_bytes:
            return False
        parts[index] = memoryview(plaintext)[_BODY_SIZE:]
        current.size += size
        self.bytes_held = bytes_held
        return True

    def add_untrusted(
        self, message_id: int, index: int, count: int, payload: memoryview | bytes, now: float
    ) -> None:
        """Take one authenticated DATA fragment. Raises :class:`DatagramError` if it is invalid."""
        size = len(payload)
        if count == 0 or index >= count:
            raise DatagramError("fragment index or count out of range")
        if count > self.max_fragments:
            raise DatagramError("fragment count above what max_message_size allows")
        final = index + 1 == count
        if not final:
            if not MIN_FRAGMENT <= size <= self.max_fragment_size:
                raise DatagramError("non-final fragment size out of range")
            if (count - 1) * size >= self.max_message_size:
                raise DatagramError("fragment count and size above max_message_size")
        elif count > 1:
            if size == 0 or (count - 1) * MIN_FRAGMENT + size > self.max_message_size:
                raise DatagramError("final fragment size out of range")
        elif size > self.max_message_size:
            raise DatagramError("message above max_message_size")

        done = self._done
        if not done.check(message_id):
            self.late += 1  # a fragment of a message already finished (or far too old)
            return
        if message_id > self._highest:
            if message_id > self._highest + 1:
                self._note_gap(self._highest + 1, message_id, now)
            self._highest = message_id
        if self.mode is DeliveryMode.ORDERED and message_id < self._highest_delivered:
            self._drop_late(message_id)
            return
        if count == 1:
            done.update(message_id)
            self._complete(message_id, bytes(payload), 1, size)
            return

        partials = self._partials
        partial = partials.get(message_id)
        if partial is None:
            while len(partials) >= self.max_messages:
                self._give_up_oldest(message_id)
            partial = _Partial(count, now + self.timeout)
            partials[message_id] = partial
        elif partial.count != count:
            raise DatagramError("inconsistent fragment count within one message")
        parts = partial.parts
        if index in parts:
            self.duplicate_fragments += 1
            return
        partial.learn_sizes_untrusted(final, size, self.max_message_size)
        if partial.fragment_size:  # only once its fragment size is known (take_middle checks it)
            self._current, self._current_id = partial, message_id
        if not final:
            self.fragment_size = size
        while self.bytes_held + size > self.max_bytes:
            self._give_up_oldest(message_id)
        parts[index] = payload
        partial.size += size
        self.bytes_held += size
        if len(parts) == count:
            del partials[message_id]
            self._current = None
            self.bytes_held -= partial.size
            done.update(message_id)
            data = b"".join([parts[i] for i in range(count)])
            self._complete(message_id, data, count, partial.fragment_size)

    def _complete(self, message_id: int, data: bytes, count: int, fragment_size: int) -> None:
        if message_id < self._highest_delivered:
            self.late += 1  # (ordered mode never gets here with a late message)
        else:
            self._highest_delivered = message_id
            if self.mode is DeliveryMode.ORDERED and self._partials:
                for older in [m for m in self._partials if m < message_id]:
                    self._drop_late(older)
        self._deliver(Message(message_id, data, (), count, fragment_size))

    def _drop_late(self, message_id: int) -> None:
        partial = self._partials.pop(message_id, None)
        if partial is not None:
            self.bytes_held -= partial.size
            if partial is self._current:
                self._current = None
        self._done.update(message_id)
        self.late += 1

    def _give_up_oldest(self, keep: int) -> None:
        for message_id in self._partials:
            if message_id != keep:
                break
        else:  # pragma: no cover - the limits make room for one message
            raise DatagramError("reassembly limits cannot hold one message")
        self._give_up(message_id, LossReason.EVICTED)

    def _give_up(self, message_id: int, reason: LossReason) -> None:
        partial = self._partials.pop(message_id)
        self.bytes_held -= partial.size
        if partial is self._current:
            self._current = None
        self._done.update(message_id)
        if reason is LossReason.TIMEOUT:
            self.timeouts += 1
        if self.mode is DeliveryMode.PARTIAL:
            self.partial += 1
            self._deliver(self._partial_message(message_id, partial))
        else:
            self._lose(message_id, 1, reason)

    def _partial_message(self, message_id: int, partial: _Partial) -> Message:
        fragment_size = partial.fragment_size or self.fragment_size
        filler = bytes(fragment_size)
        pieces: list[bytes | memoryview] = []
        missing = []
        last = partial.count - 1
        for index in range(partial.count):
            piece = partial.parts.get(index)
            if piece is None:
                missing.append(index)
                if index != last:
                    pieces.append(filler)
            else:
                pieces.append(piece)
        return Message(message_id, b"".join(pieces), tuple(missing), partial.count, fragment_size)

    # -- gaps and timeouts ----------------------------------------------------------------------

    def _note_gap(self, start: int, end: int, now: float) -> None:
        window = self._done.size
        if end - start > window:
            self._lose(start, end - window - start, LossReason.NEVER_ARRIVED)
            start = end - window
        if len(self._gaps) >= MAX_GAP_ENTRIES:
            self._settle_gap(*self._gaps.popleft()[:2])
        self._gaps.append((start, end, now + self.timeout))

    def _settle_gap(self, start: int, end: int) -> None:
        done = self._done
        partials = self._partials
        # Ids that fell out of the window since the gap was noted count as lost all at once:
        # looking at them one by one would let a peer that makes its ids jump cost a window's
        # worth of work per datagram.
        run_start = start
        run = max(0, min(end, done.top - done.size + 1) - start)
        for message_id in range(start + run, end):
            arrived = message_id in partials or not done.check(message_id)
            if arrived and done.top - message_id < done.size:
                if run:
                    self._lose(run_start, run, LossReason.NEVER_ARRIVED)
                    run = 0
                continue
            done.update(message_id)
            if not run:
                run_start = message_id
            run += 1
        if run:
            self._lose(run_start, run, LossReason.NEVER_ARRIVED)

    def expire(self, now: float) -> None:
        """Give up what has timed out (or deliver it partially in partial mode)."""
        partials = self._partials
        while partials:
            message_id, partial = next(iter(partials.items()))
            if partial.deadline > now:
                break
            self._give_up(message_id, LossReason.TIMEOUT)
        gaps = self._gaps
        while gaps and gaps[0][2] <= now:
            start, end, _ = gaps.popleft()
            self._settle_gap(start, end)

    def clear(self) -> None:
        """Forget everything (the session ended)."""
        self._partials.clear()
        self._current = None
        self._gaps.clear()
        self.bytes_held = 0
