"""When a shared connection pings, is declared lost, or closes on its own (sans-IO).

Theory of operation
-------------------
A host checks each connection's liveness once, for every protocol on it. :class:`Liveness` is that
check's clock arithmetic, kept apart from trio so that it is tested by feeding it times:

* **keepalive** — after ``keepalive_interval`` seconds with nothing received, send a PING; if
  nothing at all (not only the PONG) arrives within ``keepalive_timeout`` of it, the connection is
  lost. Anything received proves the peer alive. A *probe* asks for a PING at once (the manager
  probes a connection that a newer one from the same peer lost to, so that a connection the peer
  no longer has is found out in a round trip instead of a keepalive interval).
* **idle** — a connection that carries no logical stream for ``idle_timeout`` seconds closes,
  unless a protocol protects it.
* **retirement** — a connection that either side retired (GOAWAY) takes no new streams; it closes
  once its last stream ends, or ``grace`` seconds after the retirement began, whichever is first.

:meth:`Liveness.poll` says what to do now and until when nothing needs doing; the trio layer acts
and sleeps until then (or until something changes).
"""

from __future__ import annotations

import enum
import math

import attrs


class Action(enum.Enum):
    WAIT = "wait"
    """Nothing to do before the returned deadline."""
    PING = "ping"
    """Send a keepalive PING now (then poll again)."""
    LOST = "lost"
    """Nothing arrived within ``keepalive_timeout`` of a PING: the connection is lost."""
    CLOSE = "close"
    """Idle past ``idle_timeout``, or retired and done (or out of grace): close it."""


@attrs.define
class Liveness:
    """Keepalive, idle and retirement timers of one connection."""

    keepalive_interval: float
    keepalive_timeout: float
    idle_timeout: float | None
    grace: float
    last_received: float
    idle_since: float | None
    """When the connection last became free of streams (``None`` while it carries one)."""
    ping_sent_at: float | None = None
    """The keepalive PING awaiting any answer (``None``: none outstanding)."""
    last_ping: float | None = None
    """When the last keepalive PING was sent (kept after it is answered, to time it)."""
    retiring_since: float | None = None
    """When either side retired the connection (``None``: it is not retiring)."""
    probe_wanted: bool = False

    def received(self, now: float) -> None:
        """Something arrived from the peer."""
        self.last_received = now
        self.ping_sent_at = None

    def streams_changed(self, count: int, now: float) -> None:
        if count:
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = now

    def retire(self, now: float) -> None:
        """Either side retired the connection (the first call counts)."""
        if self.retiring_since is None:
            self.retiring_since = now

    def probe(self) -> None:
        """Ping at the next poll, unless a PING is outstanding already."""
        self.probe_wanted = True

    def poll(self, now: float, *, streams: int, protected: bool) -> tuple[Action, float]:
        """What to do at ``now``, and the time until which nothing else is due."""
        if self.retiring_since is not None:
            if streams == 0 or now >= self.retiring_since + self.grace:
                return Action.CLOSE, now
            lifetime_end = self.retiring_since + self.grace
        elif self.idle_since is not None and self.idle_timeout is not None and not protected:
            lifetime_end = self.idle_since + self.idle_timeout
            if now >= lifetime_end:
                return Action.CLOSE, now
        else:
            lifetime_end = math.inf
        if self.ping_sent_at is not None:
            lost_at = self.ping_sent_at + self.keepalive_timeout
            if now >= lost_at:
                return Action.LOST, now
            return Action.WAIT, min(lost_at, lifetime_end)
        ping_at = self.last_received + self.keepalive_interval
        if self.probe_wanted or now >= ping_at:
            self.probe_wanted = False
            self.ping_sent_at = self.last_ping = now
            return Action.PING, now
        return Action.WAIT, min(ping_at, lifetime_end)
