"""Datagram transports for SLLP channels: the UDP socket (with Linux GSO/GRO), and the interface.

Theory of operation
-------------------
A channel talks to a :class:`DatagramTransport`: non-blocking ``send_from`` and ``drain`` calls
plus two waits. :class:`UdpTransport` is the real one. Its cost is per datagram, so it works in
batches: ``drain`` reads the socket with ``recv_into`` into one reused buffer until
``BlockingIOError`` (or ``receive_batch`` reads), handing each read to the session as a
memoryview without copying, and only then does the channel yield to trio. With ``UDP_GRO`` the
kernel hands over many same-sized datagrams in one read, with their size in a control message; the
whole read goes to the session in one call (:meth:`Session.receive_datagrams_untrusted`), which
checks and decrypts each datagram on its own. A :class:`~p2ptls.sllp._session.DatagramTrain`
(one large message, or many one-datagram messages of one size from ``send_many``) leaves with
``UDP_SEGMENT`` (segmentation offload): one ``sendmsg`` carries up to 64 equal-sized datagrams
(at most 65,000 bytes) that the kernel splits; without it, or for datagrams above 32,500 bytes,
one ``sendto`` per datagram. Both are detected at run time and fall back to the plain path if
the kernel refuses them.

The socket sets don't-fragment (``IP_PMTUDISC_DO``, and the IPv6 equivalent), so a datagram above
the path MTU fails with ``EMSGSIZE``, reported as :class:`DatagramTooLarge` (with the offset of
the refused datagram), instead of being split by IP. :meth:`UdpTransport.path_datagram_size` reads
the kernel's MTU of the path to the peer (``IP_MTU``/``IPV6_MTU``, which include what ICMP
"packet too big" taught the kernel) from a probe socket connected to the peer, less the IP and
UDP headers: the channel sizes its datagrams by it. The probe is a separate socket because
connecting the channel's own socket would make the kernel drop datagrams from any other source
address, and SLLP accepts authenticated datagrams from wherever they come (NAT rebinding).
Where the options are missing (not Linux) it returns ``None`` and the channel uses 1200 bytes.
"""

from __future__ import annotations

import abc
import errno
import socket
import sys
from collections.abc import Callable

import trio

from .._errors import LocalProtocolError
from ._datagrams import DatagramTrain
from ._errors import DatagramTooLarge
from .config import SllpConfig

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2
IPV6_MTU_DISCOVER = 23
IPV6_PMTUDISC_DO = 2
IP_MTU = 14
IPV6_MTU = 24
IPV4_UDP_HEADERS = 20 + 8
IPV6_UDP_HEADERS = 40 + 8
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000
RECEIVE_BUFFER = 65536 + 512

Sink = Callable[[memoryview, int, float], None]
"""Takes received datagrams laid back to back (each ``segment`` bytes but the last, which may be
shorter: what one ``UDP_GRO`` read returns; one datagram has ``segment == len(view)``), the segment
size and the time; must not keep the memoryview."""

_SEND_DROPPED = frozenset(
    {errno.ENOBUFS, errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EPERM}
)


class DatagramTransport(abc.ABC):
    """Where a channel sends and receives datagrams (a UDP socket, or an in-process relay)."""

    local_address: tuple[str, int]
    """The address to put in the offer or answer."""

    @abc.abstractmethod
    def set_peer(self, address: tuple[str, int]) -> None:
        """Where datagrams go from now on."""

    @abc.abstractmethod
    def send_from(self, train: DatagramTrain, offset: int) -> int:
        """Send from byte ``offset`` of ``train`` (a datagram boundary) without blocking; return
        the offset reached (``len(train)`` when all went)."""

    @abc.abstractmethod
    async def wait_writable(self) -> None:
        """Wait until ``send_from`` can make progress."""

    @abc.abstractmethod
    def drain(self, sink: Sink, now: float, limit: int) -> int:
        """Hand every datagram waiting (up to ``limit`` reads) to ``sink``, a coalesced read as
        one call; return the reads."""

    @abc.abstractmethod
    async def wait_readable(self) -> None:
        """Wait until ``drain`` may find something."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the transport; waiting tasks are woken with ``trio.ClosedResourceError``."""

    def path_datagram_size(self) -> int | None:
        """The largest UDP payload the path to the peer carries unfragmented, as far as the
        operating system knows now; ``None`` when it cannot tell."""
        return None


def _try_setsockopt(sock: socket.socket, level: int, option: int, value: int) -> bool:
    try:
        sock.setsockopt(level, option, value)
    except OSError:
        return False
    return True


def gso_supported(sock: socket.socket) -> bool:
    """Whether the kernel knows UDP_SEGMENT on this socket."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


def enable_gro(sock: socket.socket) -> bool:
    """Turn on UDP_GRO; whether the kernel accepted it."""
    return sys.platform.startswith("linux") and _try_setsockopt(sock, SOL_UDP, UDP_GRO, 1)


def set_dont_fragment(sock: socket.socket) -> bool:
    """Set don't-fragment (path MTU discovery "do"); whether it took."""
    if not sys.platform.startswith("linux"):
        return False
    if sock.family == socket.AF_INET6:
        done = _try_setsockopt(sock, socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
        _try_setsockopt(sock, socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)  # dual stack
        return done
    return _try_setsockopt(sock, socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)


def path_mtu(family: int, peer: tuple[str, int]) -> tuple[int, int] | None:
    """``(MTU, IP and UDP header bytes)`` of the path to ``peer`` as the kernel knows it now
    (Linux ``IP_MTU``/``IPV6_MTU`` of a socket connected to it), or ``None`` where it cannot
    tell. Nothing is sent."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(peer)
            if family == socket.AF_INET6 and not peer[0].startswith("::ffff:"):
                return probe.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU), IPV6_UDP_HEADERS
            return probe.getsockopt(socket.IPPROTO_IP, IP_MTU), IPV4_UDP_HEADERS
    except OSError:
        return None


class UdpTransport(DatagramTransport):
    """A non-blocking UDP socket driven through ``trio.lowlevel``."""

    def __init__(self, sock: socket.socket, *, gso: bool = True, gro: bool = True) -> None:
        sock.setblocking(False)
        self.socket = sock
        host, port = sock.getsockname()[:2]
        self.local_address = (str(host), int(port))
        self.dont_fragment = set_dont_fragment(sock)
        self.gso = gso and gso_supported(sock)
        """Whether sends use UDP segmentation offload (turned off if the kernel refuses it)."""
        self.gro = gro and enable_gro(sock)
        """Whether receives accept coalesced datagrams."""
        self._gso_probation = False
        self._peer: tuple[str, int] | None = None
        self._buffer = bytearray(RECEIVE_BUFFER)
        self._view = memoryview(self._buffer)
        self._cmsg_space = socket.CMSG_SPACE(4)
        self.send_calls = 0
        """System calls that sent datagrams (one per GSO batch)."""
        self.receive_calls = 0
        """System calls that returned datagrams (one per GRO batch)."""
        self.send_drops = 0
        """Datagrams the kernel refused transiently (ENOBUFS, unreachable...): lost."""
        self.receive_errors = 0

    @classmethod
    def bind(cls, address: tuple[str, int], config: SllpConfig | None = None) -> UdpTransport:
        """A UDP socket bound to ``address`` (IPv6 if the host contains a colon)."""
        config = config or SllpConfig()
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                _try_setsockopt(sock, socket.SOL_SOCKET, option, config.socket_buffer_size)
            sock.bind(address)
            return cls(sock, gso=config.gso, gro=config.gro)
        except BaseException:
            sock.close()
            raise

    @property
    def peer_address(self) -> tuple[str, int] | None:
        return self._peer

    def set_peer(self, address: tuple[str, int]) -> None:
        self._peer = address

    def path_datagram_size(self) -> int | None:
        """The path MTU to the peer less the IP and UDP headers (see the module docstring)."""
        if self._peer is None:
            return None
        found = path_mtu(self.socket.family, self._peer)
        if found is None:
            return None
        mtu, headers = found
        return mtu - headers

    # -- sending --------------------------------------------------------------------------------

    def send_from(self, train: DatagramTrain, offset: int) -> int:
        peer = self._peer
        if peer is None:
            raise LocalProtocolError("no peer address set")
        data = train.data
        total = len(data)
        segment = train.segment_size
        view = memoryview(data)
        sock = self.socket
        # Datagrams per segmentation-offload call; below 2 (datagrams above 32,500 bytes) GSO
        # has nothing to offer, and 0 would send nothing at all.
        per_call = min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // segment)
        while offset < total:
            remaining = total - offset
            if self.gso and remaining > segment and per_call > 1:
                chunk = min(remaining, segment * per_call)
                try:
                    sock.sendmsg(
                        [view[offset : offset + chunk]],
                        [(SOL_UDP, UDP_SEGMENT, segment.to_bytes(2, sys.byteorder))],
                        0,
                        peer,
                    )
                except BlockingIOError:
                    return offset
                except OSError as exc:
                    if exc.errno in _SEND_DROPPED:
                        self.send_drops += -(-chunk // segment)
                        offset += chunk
                        continue
                    # The kernel refused segmentation (or the segment exceeds the path MTU):
                    # retry plainly; a plain success proves GSO is at fault and keeps it off.
                    self.gso = False
                    self._gso_probation = True
                    continue
                self.send_calls += 1
                offset += chunk
            else:
                size = min(segment, remaining)
                try:
                    sock.sendto(view[offset : offset + size], peer)
                except BlockingIOError:
                    return offset
                except OSError as exc:
                    if exc.errno == errno.EMSGSIZE:
                        if self._gso_probation:
                            self.gso = True
                            self._gso_probation = False
                        raise DatagramTooLarge(
                            f"a {size}-byte datagram exceeds the path MTU (don't-fragment is set)",
                            offset,
                        ) from exc
                    if exc.errno not in _SEND_DROPPED:
                        raise
                    self.send_drops += 1
                else:
                    self._gso_probation = False
                    self.send_calls += 1
                offset += size
        return offset

    async def wait_writable(self) -> None:
        await trio.lowlevel.wait_writable(self.socket)

    # -- receiving ------------------------------------------------------------------------------

    def drain(self, sink: Sink, now: float, limit: int) -> int:
        sock = self.socket
        view = self._view
        reads = 0
        if self.gro:
            buffers = [self._buffer]
            space = self._cmsg_space
            while reads < limit:
                try:
                    size, ancillary, _flags, _address = sock.recvmsg_into(buffers, space)
                except BlockingIOError:
                    break
                except OSError:
                    self.receive_errors += 1  # e.g. an ICMP error queued on the socket
                    reads += 1
                    continue
                reads += 1
                segment = size
                for level, kind, data in ancillary:
                    if level == SOL_UDP and kind == UDP_GRO and len(data) >= 2:
                        segment = int.from_bytes(
                            data[:4] if len(data) >= 4 else data, sys.byteorder
                        )
                if not 0 < segment < size:
                    segment = size
                sink(view[:size], segment, now)  # the session splits and checks each datagram
        else:
            receive_into = sock.recv_into
            buffer = self._buffer
            while reads < limit:
                try:
                    size = receive_into(buffer)
                except BlockingIOError:
                    break
                except OSError:
                    self.receive_errors += 1
                    reads += 1
                    continue
                reads += 1
                sink(view[:size], size, now)
        self.receive_calls += reads
        return reads

    async def wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self.socket)

    def close(self) -> None:
        if self.socket.fileno() != -1:
            trio.lowlevel.notify_closing(self.socket)
            self.socket.close()

    def __repr__(self) -> str:
        return f"<UdpTransport {self.local_address} gso={self.gso} gro={self.gro}>"
