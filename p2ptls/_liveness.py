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

It follows the sans-IO event convention (``ARCHITECTURE.md``): the trio layer reports what
happened (:meth:`~Liveness.received`, :meth:`~Liveness.streams_changed`, :meth:`~Liveness.retire`,
:meth:`~Liveness.probe`, and keeps :attr:`~Liveness.protected` current), sleeps until
:meth:`~Liveness.next_deadline` (or until something changes) and then acts on the events
:meth:`~Liveness.handle_timers` returns.
"""

from __future__ import annotations

import math

import attrs


@attrs.frozen
class PingDue:
    """Send a keepalive PING now (nothing arrived for ``keepalive_interval``, or a probe)."""


@attrs.frozen
class PeerSilent:
    """Nothing arrived within ``keepalive_timeout`` of a PING: the connection is lost."""

    timeout: float


@attrs.frozen
class CloseDue:
    """Close the connection: idle past ``idle_timeout``, or retired and done (or out of grace)."""


LivenessEvent = PingDue | PeerSilent | CloseDue


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
    protected: bool = False
    """A protocol protects the connection: the idle timeout does not apply (the trio layer keeps
    this current and wakes its timer task when it changes)."""

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

    def next_deadline(self) -> float:
        """When :meth:`handle_timers` has something to do (``-inf``: now)."""
        deadlines = [self._lifetime_end()]
        if self.ping_sent_at is not None:
            deadlines.append(self.ping_sent_at + self.keepalive_timeout)
        elif self.probe_wanted:
            return -math.inf
        else:
            deadlines.append(self.last_received + self.keepalive_interval)
        return min(deadlines)

    def handle_timers(self, now: float) -> list[LivenessEvent]:
        """What is due at ``now``: nothing, a PING to send, or the end of the connection."""
        if now >= self._lifetime_end():
            return [CloseDue()]
        if self.ping_sent_at is not None:
            if now >= self.ping_sent_at + self.keepalive_timeout:
                return [PeerSilent(self.keepalive_timeout)]
            return []
        if self.probe_wanted or now >= self.last_received + self.keepalive_interval:
            self.probe_wanted = False
            self.ping_sent_at = self.last_ping = now
            return [PingDue()]
        return []

    def _lifetime_end(self) -> float:
        """When the connection is to close: once a retired one has no stream (or its grace ran
        out), or an idle one that no protocol protects reached the idle timeout."""
        if self.retiring_since is not None:
            if self.idle_since is not None:  # no stream left
                return self.retiring_since
            return self.retiring_since + self.grace
        if self.idle_since is not None and self.idle_timeout is not None and not self.protected:
            return self.idle_since + self.idle_timeout
        return math.inf
