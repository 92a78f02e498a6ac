"""A lossy relay for tests and benchmarks: drop, duplicate, reorder and delay datagrams.

Theory of operation
-------------------
:class:`LossyLink` is one direction of an unreliable network, sans-IO and deterministic: each
datagram handed to :meth:`LossyLink.submit` is dropped, or scheduled once (or twice, if duplicated)
at ``now + delay + jitter`` (plus ``reorder_delay`` if it was picked to be overtaken), using a
``random.Random(seed)``. :meth:`LossyLink.pop_due` returns what is due, in due order. The same seed
and the same inputs give the same fates, so loss tests are reproducible.

Two ways to put links between SLLP endpoints:

* :func:`memory_transport_pair` gives two in-process :class:`MemoryTransport` objects joined by a
  link per direction. Delivery times are trio times, so under ``trio.testing.MockClock`` with
  autojump (the ``autojump_clock`` fixture) delays and timeouts take no real time and every run is
  the same. A test can also drive two sans-IO sessions through a link by hand.
* :class:`UdpRelay` forwards real UDP datagrams on 127.0.0.1 between two channels through a link per
  direction (used by the benchmark and the real-socket loss tests).
"""

from __future__ import annotations

import heapq
import math
import random
import socket
from typing import Any

import attrs
import trio

from ._datagrams import DatagramTrain
from ._errors import DatagramTooLarge
from .transport import RECEIVE_BUFFER, DatagramTransport, Sink


def _probability(_instance: Any, attribute: Any, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be between 0 and 1")


def _non_negative(_instance: Any, attribute: Any, value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative")


@attrs.frozen
class LinkConditions:
    """How one direction of the relay mistreats datagrams."""

    drop: float = attrs.field(default=0.0, validator=_probability)
    """Probability that a datagram is lost."""
    duplicate: float = attrs.field(default=0.0, validator=_probability)
    """Probability that a delivered datagram arrives twice."""
    reorder: float = attrs.field(default=0.0, validator=_probability)
    """Probability that a datagram is held back by ``reorder_delay`` so later ones overtake it."""
    delay: float = attrs.field(default=0.0, validator=_non_negative)
    """One-way latency, seconds."""
    jitter: float = attrs.field(default=0.0, validator=_non_negative)
    """Extra latency drawn uniformly from ``[0, jitter]`` per datagram."""
    reorder_delay: float = attrs.field(default=0.005, validator=_non_negative)
    """How long a reordered datagram is held back."""
    max_size: int | None = None
    """Datagrams above this many bytes are dropped (a path MTU); ``None``: no limit."""
    seed: int = 0
    """Seed of the link's random generator."""


class LossyLink:
    """One direction of an unreliable network (sans-IO, deterministic)."""

    def __init__(self, conditions: LinkConditions | None = None) -> None:
        self.conditions = conditions or LinkConditions()
        self._random = random.Random(self.conditions.seed)
        self._heap: list[tuple[float, int, bytes]] = []
        self._counter = 0
        self.submitted = 0
        self.bytes_submitted = 0
        self.largest_submitted = 0
        self.dropped = 0
        self.duplicated = 0
        self.reordered = 0
        self.delivered = 0

    def submit(self, datagram: bytes, now: float) -> None:
        """A datagram enters the link at ``now``."""
        conditions = self.conditions
        rand = self._random.random
        self.submitted += 1
        self.bytes_submitted += len(datagram)
        self.largest_submitted = max(self.largest_submitted, len(datagram))
        if (conditions.drop and rand() < conditions.drop) or (
            conditions.max_size is not None and len(datagram) > conditions.max_size
        ):
            self.dropped += 1
            return
        copies = 1
        if conditions.duplicate and rand() < conditions.duplicate:
            copies = 2
            self.duplicated += 1
        for _ in range(copies):
            due = now + conditions.delay
            if conditions.jitter:
                due += rand() * conditions.jitter
            if conditions.reorder and rand() < conditions.reorder:
                due += conditions.reorder_delay
                self.reordered += 1
            self._counter += 1
            heapq.heappush(self._heap, (due, self._counter, datagram))

    def next_due(self) -> float:
        """When the next datagram comes out (``inf`` if none is in flight)."""
        return self._heap[0][0] if self._heap else math.inf

    def pop_due(self, now: float, limit: int | None = None) -> list[bytes]:
        """The datagrams due at ``now``, in order of arrival."""
        heap = self._heap
        out: list[bytes] = []
        while heap and heap[0][0] <= now and (limit is None or len(out) < limit):
            out.append(heapq.heappop(heap)[2])
        self.delivered += len(out)
        return out

    @property
    def in_flight(self) -> int:
        return len(self._heap)


class MemoryTransport(DatagramTransport):
    """An in-process endpoint: what it sends goes through ``outgoing`` to its peer's inbox."""

    def __init__(self, address: tuple[str, int], incoming: LossyLink, outgoing: LossyLink) -> None:
        self.local_address = address
        self.incoming = incoming
        """The link that delivers to this endpoint."""
        self.outgoing = outgoing
        """The link this endpoint sends into."""
        self.peer: MemoryTransport | None = None
        self.peer_address: tuple[str, int] | None = None
        self.path_limit: int | None = None
        """The path MTU less the headers, if set: what :meth:`path_datagram_size` reports, and
        larger datagrams are refused with :class:`DatagramTooLarge`, as a UDP socket with
        don't-fragment refuses them."""
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False

    def set_peer(self, address: tuple[str, int]) -> None:
        self.peer_address = address

    def path_datagram_size(self) -> int | None:
        return self.path_limit

    def inject(self, datagram: bytes) -> None:
        """Deliver a datagram to this endpoint now (a spoofer's, in tests)."""
        self.incoming.submit(datagram, -math.inf)
        self._lot.unpark_all()

    def send_from(self, train: DatagramTrain, offset: int) -> int:
        if self._closed:
            raise trio.ClosedResourceError("transport closed")
        now = trio.current_time()
        data = bytes(train.data)
        size = train.segment_size
        try:
            for start in range(offset, len(data), size):
                datagram = data[start : start + size]
                if self.path_limit is not None and len(datagram) > self.path_limit:
                    raise DatagramTooLarge(
                        f"a {len(datagram)}-byte datagram exceeds the path MTU", start
                    )
                self.outgoing.submit(datagram, now)
        finally:
            if self.peer is not None:
                self.peer._lot.unpark_all()
        return len(data)

    async def wait_writable(self) -> None:
        await trio.lowlevel.checkpoint()

    def drain(self, sink: Sink, now: float, limit: int) -> int:
        if self._closed:
            return 0
        datagrams = self.incoming.pop_due(now, limit)
        for datagram in datagrams:
            sink(memoryview(datagram), len(datagram), now)
        return len(datagrams)

    async def wait_readable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("transport closed")
        due = self.incoming.next_due()
        if due <= trio.current_time():
            await trio.lowlevel.checkpoint()
            return
        with trio.move_on_at(due):
            await self._lot.park()
        if self._closed:
            raise trio.ClosedResourceError("transport closed")

    def close(self) -> None:
        self._closed = True
        self._lot.unpark_all()


def memory_transport_pair(
    a_to_b: LinkConditions | None = None, b_to_a: LinkConditions | None = None
) -> tuple[MemoryTransport, MemoryTransport]:
    """Two in-process transports joined by a lossy link each way (``b_to_a`` defaults to
    ``a_to_b`` with the seed plus one)."""
    a_to_b = a_to_b or LinkConditions()
    if b_to_a is None:
        b_to_a = attrs.evolve(a_to_b, seed=a_to_b.seed + 1)
    forward, backward = LossyLink(a_to_b), LossyLink(b_to_a)
    a = MemoryTransport(("127.0.0.1", 40001), incoming=backward, outgoing=forward)
    b = MemoryTransport(("127.0.0.1", 40002), incoming=forward, outgoing=backward)
    a.peer, b.peer = b, a
    return a, b


class UdpRelay:
    """Forwards UDP between endpoint A and endpoint B through a :class:`LossyLink` each way.

    A sends to :attr:`a_side` and B to :attr:`b_side`. The relay forwards to the addresses given
    (or, if ``None``, learned from the first datagram each side sends). Run it with
    ``await nursery.start(relay.run)``; it stops when cancelled.
    """

    def __init__(
        self,
        a_to_b: LinkConditions | None = None,
        b_to_a: LinkConditions | None = None,
        *,
        a_address: tuple[str, int] | None = None,
        b_address: tuple[str, int] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        a_to_b = a_to_b or LinkConditions()
        if b_to_a is None:
            b_to_a = attrs.evolve(a_to_b, seed=a_to_b.seed + 1)
        self.link_a_to_b = LossyLink(a_to_b)
        self.link_b_to_a = LossyLink(b_to_a)
        self.a_address = a_address
        self.b_address = b_address
        self._a_socket = self._socket(host)
        self._b_socket = self._socket(host)
        self.a_side: tuple[str, int] = self._a_socket.getsockname()[:2]
        """Where A sends."""
        self.b_side: tuple[str, int] = self._b_socket.getsockname()[:2]
        """Where B sends."""
        self.unroutable = 0
        self._lot = trio.lowlevel.ParkingLot()

    @staticmethod
    def _socket(host: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, 4 * 1024 * 1024)
        sock.bind((host, 0))
        sock.setblocking(False)
        return sock

    async def run(
        self, *, task_status: trio.TaskStatus[UdpRelay] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._listen, self._a_socket, self.link_a_to_b, "a")
                nursery.start_soon(self._listen, self._b_socket, self.link_b_to_a, "b")
                nursery.start_soon(self._forward)
                task_status.started(self)
        finally:
            self._a_socket.close()
            self._b_socket.close()

    async def _listen(self, sock: socket.socket, link: LossyLink, side: str) -> None:
        buffer = bytearray(RECEIVE_BUFFER)
        while True:
            await trio.lowlevel.wait_readable(sock)
            now = trio.current_time()
            while True:
                try:
                    size, source = sock.recvfrom_into(buffer)
                except BlockingIOError:
                    break
                except OSError:
                    continue
                if side == "a" and self.a_address is None:
                    self.a_address = source[:2]
                elif side == "b" and self.b_address is None:
                    self.b_address = source[:2]
                link.submit(bytes(buffer[:size]), now)
            self._lot.unpark_all()

    async def _forward(self) -> None:
        while True:
            now = trio.current_time()
            for link, sock, target_side in (
                (self.link_a_to_b, self._b_socket, "b"),
                (self.link_b_to_a, self._a_socket, "a"),
            ):
                target = self.b_address if target_side == "b" else self.a_address
                for datagram in link.pop_due(now):
                    if target is None:
                        self.unroutable += 1
                        continue
                    try:
                        sock.sendto(datagram, target)
                    except OSError:
                        self.unroutable += 1
            due = min(self.link_a_to_b.next_due(), self.link_b_to_a.next_due())
            with trio.move_on_at(due):
                await self._lot.park()
