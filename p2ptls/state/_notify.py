"""What a state node tells its application: subscribed events, changes waited for, counters (trio).

Theory of operation
-------------------
Every part of a node reports through one :class:`Notifier`. :meth:`Notifier.emit` hands an event
to every subscriber of its type without ever blocking: a subscriber more than its buffer behind
gets :class:`~p2ptls.state.events.SubscriptionOverflowed` and the end of its channel.
:meth:`Notifier.changed` wakes every :meth:`Notifier.wait_until` (state, membership, durability
and acknowledgements all call it), which then checks its predicate again. The counters become
:class:`~p2ptls.state.events.NodeStats`.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import trio

from .events import SubscriptionOverflowed


class _Subscriber:
    __slots__ = ("buffer", "send", "types")

    def __init__(
        self, send: trio.MemorySendChannel[Any], types: tuple[type, ...], buffer: int
    ) -> None:
        self.send = send
        self.types = types
        self.buffer = buffer


class Notifier:
    """Subscribers, waiters and counters of one node."""

    def __init__(self) -> None:
        self.counters: collections.Counter[str] = collections.Counter()
        self.closed = False
        self._subscribers: list[_Subscriber] = []
        self._changed = trio.Event()

    def subscribe(self, types: tuple[type, ...], buffer: int) -> trio.MemoryReceiveChannel[Any]:
        if buffer < 1:
            raise ValueError("buffer must be at least 1")
        send, receive = trio.open_memory_channel[Any](buffer + 1)
        self._subscribers.append(_Subscriber(send, types, buffer))
        return receive

    def emit(self, event: object) -> None:
        for subscriber in list(self._subscribers):
            if not isinstance(event, subscriber.types):
                continue
            try:
                if subscriber.send.statistics().current_buffer_used >= subscriber.buffer:
                    subscriber.send.send_nowait(SubscriptionOverflowed())
                    subscriber.send.close()
                    self._subscribers.remove(subscriber)
                else:
                    subscriber.send.send_nowait(event)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(subscriber)  # the receiver went away

    def changed(self) -> None:
        """Something a waiter may wait for changed."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            self.check_open()
            await self._changed.wait()

    def check_open(self) -> None:
        if self.closed:
            raise trio.ClosedResourceError("the state node is closed")

    def close(self) -> None:
        """The node is closing: waiters raise, subscriptions end."""
        self.closed = True
        self.changed()
        for subscriber in self._subscribers:
            subscriber.send.close()
        self._subscribers = []
