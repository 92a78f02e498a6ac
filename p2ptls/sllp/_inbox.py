"""The events an SLLP channel holds for its application, bounded (sans-IO).

Theory of operation
-------------------
The sans-IO :class:`~p2ptls.sllp._session.Session` returns the events each call completed and
keeps none; the channel puts them in an :class:`Inbox` until ``receive()`` takes them. The peer
decides how fast messages arrive and the application how fast it reads, so the inbox is bounded:
at most ``max_unread_messages`` messages and ``max_unread_bytes`` of their data wait; a message
beyond either is dropped and reported as lost (``OVERFLOW``), and losses and key updates are kept
up to ``2 * max_unread_messages + 64`` events in all. The end (:class:`ChannelClosed`) is always
kept, after the messages that came before it.
"""

from __future__ import annotations

import collections

from .config import SllpConfig
from .events import ChannelClosed, Event, LossReason, Message, MessagesLost


class Inbox:
    """Events waiting for the application, oldest first, within the configured bounds."""

    def __init__(self, config: SllpConfig) -> None:
        self._events: collections.deque[Event] = collections.deque()
        self._max_messages = config.max_unread_messages
        self._max_bytes = config.max_unread_bytes
        self._max_events = 2 * config.max_unread_messages + 64
        self._messages = 0
        self._bytes = 0
        self.overflowed = 0
        """Messages dropped because the application had the bounds' worth waiting."""

    def __bool__(self) -> bool:
        return bool(self._events)

    def __len__(self) -> int:
        return len(self._events)

    def add(self, events: list[Event]) -> None:
        """Keep what a session call returned (dropping messages beyond the bounds)."""
        queue = self._events
        for event in events:
            kind = type(event)
            if kind is Message:
                size = len(event.data)  # type: ignore[union-attr]
                if self._messages < self._max_messages and self._bytes + size <= self._max_bytes:
                    self._messages += 1
                    self._bytes += size
                    queue.append(event)
                    continue
                self.overflowed += 1
                notice: Event = MessagesLost(event.message_id, 1, LossReason.OVERFLOW)  # type: ignore[union-attr]
            elif kind is ChannelClosed:
                queue.append(event)
                continue
            else:
                notice = event
            if len(queue) < self._max_events:
                queue.append(notice)

    def next_event(self) -> Event | None:
        """The oldest event, or ``None``."""
        if not self._events:
            return None
        event = self._events.popleft()
        if type(event) is Message:
            self._messages -= 1
            self._bytes -= len(event.data)
        return event

    def take_messages(self, limit: int) -> list[Message]:
        """Up to ``limit`` of the oldest events that are messages, in order; other events
        (losses, key updates) met on the way are dropped, and a :class:`ChannelClosed` stops the
        batch and stays for :meth:`next_event`."""
        events = self._events
        taken: list[Message] = []
        size = 0
        while events and len(taken) < limit:
            event = events[0]
            kind = type(event)
            if kind is ChannelClosed:
                break
            events.popleft()
            if kind is Message:
                taken.append(event)  # type: ignore[arg-type]
                size += len(event.data)  # type: ignore[union-attr]
        self._messages -= len(taken)
        self._bytes -= size
        return taken
