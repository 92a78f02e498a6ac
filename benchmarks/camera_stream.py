"""Camera-stream load benchmark: video frames over p2ptls (stream and SLLP), TLS and plain TCP.

Synthetic cameras (:mod:`benchmarks._camera`: a deterministic moving test pattern) send frames of
three kinds: raw RGB 640x480 (``480p_raw``, 921,600 bytes) and 1280x720 (``720p_raw``, 2,764,800
bytes), and JPEG 640x480 at quality 30 (``jpeg``, about 19 KB, as in the Artifice camera example),
encoded once ahead of time with Pillow so that encoding never blurs the transport figures (without
Pillow the JPEG cases are skipped). Every frame starts with a 16-byte header: camera, sequence
number, capture time.

Transports, all on 127.0.0.1 with both ends in this process and one trio run (the same set-up as
the figures measured for the earlier Artifice implementation):

* ``p2ptls_stream``: a :class:`p2ptls.SecureStream` (RSA-3072 identities); one frame per
  ``send_message`` / ``receive_message``;
* ``p2ptls_sllp``: an SLLP channel (``p2ptls.sllp.open_channel`` on a SecureStream), one frame per
  message, datagrams sized from the path MTU (the default: 65,507 bytes on loopback;
  ``--sllp-datagram`` fixes another size, such as 1200, which fits any path), unordered delivery;
* ``p2ptls_mux``: two p2ptls hosts; each camera opens a logical stream of ``camera/frames/1``
  (``host.open``) on the **one** connection the sending host keeps to the receiving host (the
  receiver serves the protocol with ``host.serve_protocol``); one frame per message. Each stream
  has its own credit (flow control), but all share one TCP connection and its losses;
* ``tls``: ``trio.SSLStream``, TLS 1.3 only, mutual authentication with RSA-3072 certificates
  (set up as ``benchmarks/stream.py`` does), frames length-prefixed (u32) on the byte stream;
* ``tcp``: plain trio TCP, length-prefixed: the unencrypted ceiling.

**Each camera has its own connection** (its own TCP connection, TLS session, SecureStream, or SLLP
channel with its own stream and UDP socket), as independent cameras would: one camera's stalls never
hold up another's frames; except ``p2ptls_mux``, where every camera is a logical stream of one
shared connection, as the protocols of one host are. The receiver reads each stream in its own
task.

Regimes (case names):

* ``unpaced_<kind>``: one camera sending as fast as the transport goes;
* ``paced_<N>x<fps>_<kind>``: N cameras at ``fps`` frames a second each, with seeded random phases
  (independent cameras are not in step). A camera that falls a whole frame interval behind skips the
  frame, as a live camera does; a skipped frame counts as not delivered;
* ``loss<P>_paced_...``: the same through impairing relays, ``--delay`` ms one way (default 5) and
  P % loss: for SLLP :class:`p2ptls.sllp.relay.UdpRelay` drops P % of datagrams; for the stream
  transports :class:`benchmarks._camera.ImpairedTcpRelay` models TCP loss recovery (P % of 1448-byte
  segments wait for a retransmission, an RTO of twice the round trip, and every later byte waits
  behind them; see that module for what the model leaves out: it flatters TCP). ``loss0`` is delay
  alone.

Figures per case and transport, over the measurement window (after a warm-up; the frames *captured*
in the window, delivered whenever they arrive before the drain ends):

* ``fps``: frames delivered per second (all cameras together);
* ``p50_ms``, ``p99_ms``: frame latency, capture to complete receipt, of the delivered frames;
* ``delivered``: fraction of captured frames that arrived (skipped and lost frames do not);
* ``on_time``: fraction of captured frames that arrived within one frame interval (1/fps; 1/30 s
  for the unpaced cases);
* ``cpu``: ``time.process_time()`` of this one process (sender, receiver, relays) over wall time,
  in cores.

Every case runs ``--runs`` times (3), the runs interleaved; the table and the JSON give the median
of each figure, and the plots pool the frames of all runs.

Examples::

    .venv/bin/python benchmarks/camera_stream.py --quick
    .venv/bin/python benchmarks/camera_stream.py --json camera.json --plot bench-results
    .venv/bin/python benchmarks/camera_stream.py --cases paced_16x30_jpeg --transports p2ptls_sllp
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import math
import random
import re
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if __package__ in (None, ""):  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import attrs
import trio

import p2ptls
from benchmarks._camera import (
    FRAME_HEADER,
    LENGTH_PREFIX,
    RESOLUTIONS,
    ImpairedTcpRelay,
    SyntheticCamera,
    TcpImpairment,
    encode_jpeg,
    have_pillow,
)
from benchmarks._common import (
    log,
    median_of,
    median_of_runs,
    percentile,
    percentiles,
    print_table,
    progress,
    say,
    write_json,
)
from benchmarks.stream import TLS_HOSTNAME, tls_contexts, write_tls_material
from p2ptls import sllp
from p2ptls.sllp.relay import LinkConditions, UdpRelay
from p2ptls.sllp.transport import UdpTransport

Transport = Literal["p2ptls_stream", "p2ptls_sllp", "p2ptls_mux", "tls", "tcp"]
TRANSPORTS: tuple[Transport, ...] = ("p2ptls_stream", "p2ptls_sllp", "p2ptls_mux", "tls", "tcp")
CAMERA_PROTOCOL = "camera/frames/1"
SOURCES = ("480p_raw", "720p_raw", "jpeg")
KEY_BITS = 3072
READ_SIZE = 256 * 1024
JPEG_QUALITY = 30
JPEG_LOOP = 30  # distinct JPEG frames (one second at 30 fps)
RAW_LOOP = 8  # distinct raw frames (memory: each camera holds its own copies)
UNPACED_DEADLINE = 1 / 30
SLLP_CONFIG = sllp.SllpConfig(
    max_message_size=4 * 1024 * 1024,
    max_reassembly_bytes=16 * 1024 * 1024,
    reassembly_timeout=0.5,
)

FULL_CASES = (
    "unpaced_480p_raw",
    "unpaced_720p_raw",
    "unpaced_jpeg",
    "paced_1x30_jpeg",
    "paced_4x30_jpeg",
    "paced_16x30_jpeg",
    "paced_1x30_720p_raw",
    "paced_4x30_720p_raw",
    "paced_16x30_480p_raw",
    "loss0_paced_4x30_jpeg",
    "loss1_paced_4x30_jpeg",
    "loss5_paced_4x30_jpeg",
    "loss1_paced_16x30_jpeg",
)
QUICK_CASES = ("unpaced_720p_raw", "paced_16x30_jpeg", "loss1_paced_4x30_jpeg")
CASE_PATTERN = re.compile(
    r"^(?:loss(?P<loss>\d+(?:\.\d+)?)_)?(?:unpaced|paced_(?P<cameras>\d+)x(?P<fps>\d+(?:\.\d+)?))"
    r"_(?P<source>480p_raw|720p_raw|jpeg)$"
)


# -- cases --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    source: str
    cameras: int
    fps: float  # 0: unpaced
    loss: float | None  # percent; None: straight loopback

    @classmethod
    def parse(cls, name: str) -> Case:
        match = CASE_PATTERN.match(name)
        if match is None:
            raise ValueError(
                f"bad case name {name!r}: "
                "[loss<P>_](unpaced|paced_<N>x<FPS>)_(480p_raw|720p_raw|jpeg)"
            )
        paced = match["cameras"] is not None
        cameras = int(match["cameras"]) if paced else 1
        fps = float(match["fps"]) if paced else 0.0
        if paced and (cameras < 1 or fps <= 0):
            raise ValueError(f"bad case name {name!r}: cameras and fps must be positive")
        loss = float(match["loss"]) if match["loss"] is not None else None
        return cls(name, match["source"], cameras, fps, loss)

    @property
    def paced(self) -> bool:
        return self.fps > 0

    @property
    def deadline(self) -> float:
        return 1 / self.fps if self.paced else UNPACED_DEADLINE


# -- frames -------------------------------------------------------------------------------------


class FrameLibrary:
    """The frames of each source, built once: raw loops and pre-encoded JPEG."""

    def __init__(self) -> None:
        self._frames: dict[str, list[bytes]] = {}

    def frames(self, source: str) -> list[bytes]:
        if source not in self._frames:
            if source == "jpeg":
                width, height = RESOLUTIONS["480p"]
                camera = SyntheticCamera(width, height, JPEG_LOOP)
                self._frames[source] = [
                    encode_jpeg(raw, width, height, JPEG_QUALITY) for raw in camera.frames
                ]
            else:
                width, height = RESOLUTIONS[source.split("_", maxsplit=1)[0]]
                self._frames[source] = SyntheticCamera(width, height, RAW_LOOP).frames
        return self._frames[source]

    def describe(self, source: str) -> str:
        frames = self.frames(source)
        mean = sum(map(len, frames)) / len(frames)
        return f"{source}: {len(frames)} frames, {mean / 1000:,.1f} KB each"


class CameraBuffers:
    """One camera's copies of the frame loop, each ``[length][header][payload]``, so that the
    header is patched in place and every transport sends without building the frame."""

    def __init__(self, frames: list[bytes]) -> None:
        self.buffers: list[bytearray] = []
        self.views: list[memoryview] = []  # without the length prefix
        for payload in frames:
            size = FRAME_HEADER.size + len(payload)
            buffer = bytearray(LENGTH_PREFIX.size + size)
            LENGTH_PREFIX.pack_into(buffer, 0, size)
            buffer[LENGTH_PREFIX.size + FRAME_HEADER.size :] = payload
            self.buffers.append(buffer)
            self.views.append(memoryview(buffer)[LENGTH_PREFIX.size :])

    def stamp(self, camera: int, sequence: int, captured: float) -> int:
        """Write the header into the buffer for ``sequence``; return its index."""
        index = sequence % len(self.buffers)
        FRAME_HEADER.pack_into(self.buffers[index], LENGTH_PREFIX.size, camera, sequence, captured)
        return index


# -- measurement --------------------------------------------------------------------------------


@dataclass
class Recorder:
    """What the cameras captured and sent and what the receivers got."""

    verify: list[bytes] | None = None
    captures: list[float] = field(default_factory=list)  # every frame captured (sent or skipped)
    sent: int = 0
    received: int = 0
    arrivals: list[tuple[float, float]] = field(default_factory=list)  # (captured, received)
    damaged: int = 0
    senders_done: bool = False
    all_in: trio.Event = field(default_factory=trio.Event)

    def frame(self, data: bytes | bytearray, offset: int, size: int) -> None:
        now = trio.current_time()
        _camera, sequence, captured = FRAME_HEADER.unpack_from(data, offset)
        if self.verify is not None:
            expected = self.verify[sequence % len(self.verify)]
            start = offset + FRAME_HEADER.size
            if size != FRAME_HEADER.size + len(expected) or (
                data[start : offset + size] != expected
            ):
                self.damaged += 1
        self.arrivals.append((captured, now))
        self.received += 1
        if self.senders_done and self.received >= self.sent:
            self.all_in.set()


@dataclass
class Result:
    frames: int
    fps: float
    p50_ms: float
    p99_ms: float
    delivered: float
    on_time: float
    cpu: float
    latencies_ms: list[float]
    arrival_times: list[float]  # seconds since the window opened
    seconds: float
    damaged: int
    skipped: int = 0  # frames a camera skipped because it was a whole interval late
    datagrams_lost: float = math.nan  # SLLP: fraction of datagrams that never arrived

    def summary(self) -> dict[str, float | int | None]:
        def clean(value: float) -> float | None:  # JSON has no NaN
            return None if math.isnan(value) else round(value, 4)

        return {
            "fps": clean(self.fps),
            "p50_ms": clean(self.p50_ms),
            "p99_ms": clean(self.p99_ms),
            "delivered": clean(self.delivered),
            "on_time": clean(self.on_time),
            "cpu": clean(self.cpu),
            "frames": self.frames,
        }


def summarise(case: Case, recorder: Recorder, window: tuple[float, float], cpu: float) -> Result:
    start, end = window
    seconds = end - start
    captured = sum(1 for t in recorder.captures if start <= t < end)
    arrivals = [(c, r) for c, r in recorder.arrivals if start <= c < end]
    latencies = [(r - c) * 1e3 for c, r in arrivals]
    deadline_ms = case.deadline * 1e3
    on_time = sum(1 for latency in latencies if latency <= deadline_ms)
    p50, p99 = percentiles(latencies, 50, 99)
    return Result(
        frames=captured,
        fps=len(arrivals) / seconds,
        p50_ms=p50,
        p99_ms=p99,
        delivered=len(arrivals) / captured if captured else math.nan,
        on_time=on_time / captured if captured else math.nan,
        cpu=cpu,
        latencies_ms=latencies,
        arrival_times=[r - start for _c, r in arrivals],
        seconds=seconds,
        damaged=recorder.damaged,
    )


# -- connections --------------------------------------------------------------------------------


FrameSink = Callable[[bytes | bytearray, int, int], None]


@dataclass
class Link:
    """One camera's connection: how to send a frame buffer, the receive loop, what to close."""

    send: Callable[[int], Awaitable[None]]  # argument: index into the camera's buffers
    receive: Callable[[FrameSink], Awaitable[None]]
    resources: list[trio.abc.AsyncResource]
    background: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    datagrams: Callable[[], tuple[int, int]] | None = None  # SLLP: (sent, received)


async def receive_length_prefixed(stream: trio.abc.ReceiveStream, sink: FrameSink) -> None:
    """Frames ``[u32 length][frame]`` from a byte stream, parsed in one growing buffer."""
    buffer = bytearray()
    receive_some = stream.receive_some
    prefix = LENGTH_PREFIX.size
    while True:
        size = -1
        while True:
            if len(buffer) >= prefix:
                (size,) = LENGTH_PREFIX.unpack_from(buffer, 0)
                if len(buffer) >= prefix + size:
                    break
            chunk = await receive_some(READ_SIZE)
            if not chunk:
                return
            buffer += chunk
        sink(buffer, prefix, size)
        del buffer[: prefix + size]  # O(1) at the front of a bytearray


class Material:
    """Keys for both ends: p2ptls identities and the TLS certificates (all RSA-3072)."""

    def __init__(self, directory: Path) -> None:
        self.server = p2ptls.Identity.generate(KEY_BITS)
        self.client = p2ptls.Identity.generate(KEY_BITS)
        self.psk = psk = p2ptls.generate_psk()
        self.server_context = p2ptls.SecurityContext(
            self.server, psk, p2ptls.KnownPeers([self.client.record])
        )
        self.client_context = p2ptls.SecurityContext(
            self.client, psk, p2ptls.KnownPeers([self.server.record])
        )
        write_tls_material(directory)
        self.tls_server, self.tls_client = tls_contexts(directory)


class Connector:
    """Makes the per-camera links of one transport, directly or through impairing relays."""

    def __init__(
        self,
        material: Material,
        nursery: trio.Nursery,
        case: Case,
        kind: Transport,
        *,
        delay: float,
        seed: int,
        sllp_config: sllp.SllpConfig = SLLP_CONFIG,
    ) -> None:
        self.material = material
        self.sllp_config = sllp_config
        self.nursery = nursery
        self.case = case
        self.kind = kind
        self.delay = delay
        self.seed = seed
        self.listener: trio.SocketListener | None = None
        self.target: tuple[str, int] = ("127.0.0.1", 0)
        self.hosts: tuple[p2ptls.Host, p2ptls.Host] | None = None  # p2ptls_mux: sender, receiver
        self.accepted: trio.MemoryReceiveChannel[p2ptls.LogicalStream] | None = None

    async def start(self) -> None:
        if self.kind == "p2ptls_mux":
            self.hosts = await self.nursery.start(self._run_hosts)
            self.target = self.hosts[1].address
        else:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            self.listener = listeners[0]
            host, port = self.listener.socket.getsockname()[:2]
            self.target = (str(host), int(port))
        if self.case.loss is not None and self.kind != "p2ptls_sllp":
            relay = ImpairedTcpRelay(
                self.target,
                TcpImpairment(delay=self.delay, loss=self.case.loss / 100, seed=self.seed),
            )
            await self.nursery.start(relay.run)
            self.target = relay.address

    async def _run_hosts(
        self, *, task_status: trio.TaskStatus[tuple[p2ptls.Host, p2ptls.Host]]
    ) -> None:
        """A sending and a receiving host, until cancelled; the receiver hands every camera
        stream to :meth:`link` and keeps it open until the host closes."""
        material = self.material
        receiving = p2ptls.HostConfig(
            identity=material.server,
            psk=material.psk,
            peers=[material.client.record],
            listen=("127.0.0.1", 0),
        )
        sending = p2ptls.HostConfig(
            identity=material.client, psk=material.psk, peers=[material.server.record]
        )
        accepted, self.accepted = trio.open_memory_channel[p2ptls.LogicalStream](math.inf)

        async def hand_over(stream: p2ptls.LogicalStream) -> None:
            accepted.send_nowait(stream)
            await trio.sleep_forever()

        async with p2ptls.open_host(receiving) as receiver, p2ptls.open_host(sending) as sender:
            receiver.serve_protocol(CAMERA_PROTOCOL, hand_over)
            task_status.started((sender, receiver))
            await trio.sleep_forever()

    async def logical_pair(self) -> tuple[p2ptls.LogicalStream, p2ptls.LogicalStream]:
        """A camera's logical stream (sender, receiver) on the hosts' one shared connection."""
        assert self.hosts is not None and self.accepted is not None
        sender = await self.hosts[0].open(
            self.material.server.record, CAMERA_PROTOCOL, address=self.target
        )
        return sender, await self.accepted.receive()

    async def tcp_pair(self) -> tuple[trio.SocketStream, trio.SocketStream]:
        assert self.listener is not None
        client = await trio.open_tcp_stream(*self.target)
        server = await self.listener.accept()
        for stream in (client, server):
            stream.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, True)
        return client, server

    async def secure_pair(self) -> tuple[p2ptls.SecureStream, p2ptls.SecureStream]:
        tcp_client, tcp_server = await self.tcp_pair()
        client = p2ptls.SecureStream(
            tcp_client, self.material.client_context, remote=self.material.server.record
        )
        server = p2ptls.SecureStream(tcp_server, self.material.server_context, server_side=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.do_handshake)
            nursery.start_soon(server.do_handshake)
        return client, server

    async def link(self, index: int, buffers: CameraBuffers) -> Link:
        if self.kind == "tcp":
            client, server = await self.tcp_pair()
            return self._byte_stream_link(client, server, buffers)
        if self.kind == "tls":
            tcp_client, tcp_server = await self.tcp_pair()
            tls_client = trio.SSLStream(
                tcp_client, self.material.tls_client, server_hostname=TLS_HOSTNAME
            )
            tls_server = trio.SSLStream(tcp_server, self.material.tls_server, server_side=True)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(tls_client.do_handshake)
                nursery.start_soon(tls_server.do_handshake)
            return self._byte_stream_link(tls_client, tls_server, buffers)
        if self.kind == "p2ptls_mux":
            return self._message_link(*await self.logical_pair(), buffers)
        secure_client, secure_server = await self.secure_pair()
        if self.kind == "p2ptls_stream":
            return self._message_link(secure_client, secure_server, buffers)
        return await self._sllp_link(index, secure_client, secure_server, buffers)

    def _message_link(
        self,
        client: p2ptls.SecureStream | p2ptls.LogicalStream,
        server: p2ptls.SecureStream | p2ptls.LogicalStream,
        buffers: CameraBuffers,
    ) -> Link:
        views = buffers.views
        send_message = client.send_message

        async def send(i: int) -> None:
            await send_message(views[i])

        async def receive(sink: FrameSink) -> None:
            async for message in server.messages():
                sink(message, 0, len(message))

        return Link(send, receive, [client, server])

    def _byte_stream_link(
        self, client: trio.abc.Stream, server: trio.abc.Stream, buffers: CameraBuffers
    ) -> Link:
        whole = buffers.buffers
        send_all = client.send_all

        async def send(i: int) -> None:
            await send_all(whole[i])

        async def receive(sink: FrameSink) -> None:
            await receive_length_prefixed(server, sink)

        return Link(send, receive, [client, server])

    async def _sllp_link(
        self,
        index: int,
        client: p2ptls.SecureStream,
        server: p2ptls.SecureStream,
        buffers: CameraBuffers,
    ) -> Link:
        channels: dict[str, sllp.SllpChannel] = {}
        if self.case.loss is None:
            transports: tuple[UdpTransport | None, UdpTransport | None] = (None, None)
            peers: tuple[tuple[str, int] | None, tuple[str, int] | None] = (None, None)
        else:
            ta = UdpTransport.bind(("127.0.0.1", 0), self.sllp_config)
            tb = UdpTransport.bind(("127.0.0.1", 0), self.sllp_config)
            relay = UdpRelay(
                LinkConditions(
                    drop=self.case.loss / 100, delay=self.delay, seed=self.seed + 2 * index
                ),
                a_address=ta.local_address,
                b_address=tb.local_address,
            )
            await self.nursery.start(relay.run)
            transports, peers = (ta, tb), (relay.a_side, relay.b_side)

        async def open_one(name: str, stream: p2ptls.SecureStream, side: int) -> None:
            channels[name] = await sllp.open_channel(
                stream,
                local_address=("127.0.0.1", 0),
                config=self.sllp_config,
                transport=transports[side],
                peer_address=peers[side],
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(open_one, "client", client, 0)
            nursery.start_soon(open_one, "server", server, 1)
        sender, receiver = channels["client"], channels["server"]
        views = buffers.views

        async def send(i: int) -> None:
            await sender.send(views[i])

        async def receive(sink: FrameSink) -> None:
            async for message in receiver:
                sink(message.data, 0, len(message.data))

        async def sender_side() -> None:
            # Keep a task in receive() on the sending side too (timers, the peer's close).
            async for _ in sender:
                pass

        def datagrams() -> tuple[int, int]:
            return sender.statistics().datagrams_sent, receiver.statistics().datagrams_received

        return Link(send, receive, [sender, receiver], [sender_side], datagrams)


# -- one run ------------------------------------------------------------------------------------


@dataclass
class LiveStatus:
    """What the progress bar shows of the measurement under way."""

    label: str = ""
    window: tuple[float, float] = (math.inf, math.inf)
    recorder: Recorder | None = None
    phase: str = ""


async def camera_task(
    *,
    case: Case,
    camera: int,
    link: Link,
    buffers: CameraBuffers,
    recorder: Recorder,
    start: float,
    stop: float,
    phase: float,
) -> None:
    send = link.send
    stamp = buffers.stamp
    sequence = 0
    if not case.paced:
        while (now := trio.current_time()) < stop:
            recorder.captures.append(now)
            await send(stamp(camera, sequence, now))
            recorder.sent += 1
            sequence += 1
        return
    interval = 1 / case.fps
    while True:
        captured = start + phase + sequence * interval
        if captured >= stop:
            return
        now = trio.current_time()
        if captured > now:
            await trio.sleep_until(captured)
            now = trio.current_time()
        recorder.captures.append(captured)
        if now - captured <= interval:  # a whole frame behind: skip it, as a live camera does
            await send(stamp(camera, sequence, captured))
            recorder.sent += 1
        sequence += 1


async def run_one(
    *,
    material: Material,
    library: FrameLibrary,
    case: Case,
    kind: Transport,
    args: argparse.Namespace,
    progress: LiveStatus,
) -> Result:
    frames = library.frames(case.source)
    recorder = Recorder(verify=frames if args.verify else None)
    rng = random.Random(args.seed)
    async with trio.open_nursery() as infrastructure:
        connector = Connector(
            material,
            infrastructure,
            case,
            kind,
            delay=args.delay / 1e3,
            seed=args.seed,
            sllp_config=attrs.evolve(SLLP_CONFIG, datagram_size=args.sllp_datagram),
        )
        await connector.start()
        cameras = [CameraBuffers(frames) for _ in range(case.cameras)]
        links = [await connector.link(i, cameras[i]) for i in range(case.cameras)]
        phases = [rng.random() / case.fps if case.paced else 0.0 for _ in range(case.cameras)]
        begin = trio.current_time() + 0.02
        window = (begin + args.warmup, begin + args.warmup + args.seconds)
        cpu = math.nan
        counters: list[tuple[int, int]] = []
        progress.recorder, progress.window, progress.phase = recorder, window, "run"
        try:
            async with trio.open_nursery() as nursery:
                for link in links:
                    nursery.start_soon(link.receive, recorder.frame)
                    for task in link.background:
                        nursery.start_soon(task)

                async def meter() -> None:
                    nonlocal cpu
                    await trio.sleep_until(window[0])
                    cpu0, wall0 = time.process_time(), time.perf_counter()
                    await trio.sleep_until(window[1])
                    cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)

                async with trio.open_nursery() as cameras_nursery:
                    cameras_nursery.start_soon(meter)
                    for i, link in enumerate(links):
                        cameras_nursery.start_soon(
                            functools.partial(
                                camera_task,
                                case=case,
                                camera=i,
                                link=link,
                                buffers=cameras[i],
                                recorder=recorder,
                                start=begin,
                                stop=window[1],
                                phase=phases[i],
                            )
                        )
                recorder.senders_done = True
                progress.phase = "drain"
                if recorder.received >= recorder.sent:
                    recorder.all_in.set()
                with trio.move_on_after(args.drain):
                    await recorder.all_in.wait()
                counters = [link.datagrams() for link in links if link.datagrams is not None]
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for link in links:
                    for resource in link.resources:
                        await trio.aclose_forcefully(resource)
            infrastructure.cancel_scope.cancel()
    progress.recorder = None
    result = summarise(case, recorder, window, cpu)
    result.skipped = len(recorder.captures) - recorder.sent
    if counters:
        sent = sum(c[0] for c in counters)
        result.datagrams_lost = 1 - sum(c[1] for c in counters) / sent if sent else math.nan
    return result


# -- the whole run ------------------------------------------------------------------------------

Runs = dict[str, dict[Transport, list[Result]]]
"""Per case, per transport: the result of every run."""
Figures = dict[str, dict[Transport, dict[str, Any]]]
"""Per case, per transport: the medians over the runs of :meth:`Result.summary`."""


def format_value(value: float | None, digits: int = 1) -> str:
    if value is None or math.isnan(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def result_line(case: Case, kind: Transport, result: Result) -> str:
    return (
        f"{case.name} / {kind}: {format_value(result.fps)} fps, "
        f"p50 {format_value(result.p50_ms, 2)} ms, p99 {format_value(result.p99_ms, 2)} ms, "
        f"delivered {format_value(result.delivered, 3)}, on time {format_value(result.on_time, 3)}"
        f", cpu {format_value(result.cpu, 2)}"
    )


def live_status(status: LiveStatus) -> str:
    """The progress bar's status text: the measurement under way, and how it goes."""
    recorder = status.recorder
    if recorder is None:
        return f"{status.label}: setting up"
    now = trio.current_time()
    start, end = status.window
    if now < start:
        state = "warm-up"
    elif status.phase == "drain":
        state = "draining"
    else:
        state = f"{min(now, end) - start:4.1f}/{end - start:.1f} s"
    recent = [r - c for c, r in recorder.arrivals[-200:]]
    p99 = percentile(recent, 99) * 1e3
    return (
        f"{status.label}: {state}, sent {recorder.sent}, received {recorder.received}, "
        f"recent p99 {format_value(p99, 1)} ms"
    )


async def run_all(
    cases: list[Case], kinds: list[Transport], args: argparse.Namespace, material: Material
) -> Runs:
    library = FrameLibrary()
    for source in dict.fromkeys(case.source for case in cases):
        log(f"frames {library.describe(source)}")
    results: Runs = {case.name: {} for case in cases}
    status = LiveStatus()
    total = args.runs * len(cases) * len(kinds)
    with progress() as bar:
        task = bar.add_task("camera", total=total, status="")
        async with trio.open_nursery() as nursery:

            async def refresh() -> None:
                while True:
                    bar.update(task, status=live_status(status))
                    await trio.sleep(0.2)

            nursery.start_soon(refresh)
            step = 0
            for run_index in range(args.runs):
                for case_index, case in enumerate(cases):
                    # Rotate the order so that no transport always runs first on a cold machine.
                    shift = (case_index + run_index) % len(kinds)
                    for kind in kinds[shift:] + kinds[:shift]:
                        gc.collect()  # not inside a measurement
                        await trio.sleep(0.1)
                        step += 1
                        status.label = f"run {run_index + 1}: {case.name} / {kind}"
                        status.phase = "setup"
                        result = await run_one(
                            material=material,
                            library=library,
                            case=case,
                            kind=kind,
                            args=args,
                            progress=status,
                        )
                        results[case.name].setdefault(kind, []).append(result)
                        log(f"[{step}/{total}] " + result_line(case, kind, result))
                        notes = []
                        if result.skipped:
                            notes.append(f"{result.skipped} frames skipped by late cameras")
                        if result.datagrams_lost >= 0.0005:
                            notes.append(f"{result.datagrams_lost:.2%} of datagrams lost")
                        if result.damaged:
                            notes.append(f"WARNING: {result.damaged} frames arrived damaged")
                        if notes:
                            log("  (" + "; ".join(notes) + ")")
                        bar.advance(task)
            nursery.cancel_scope.cancel()
        bar.update(task, status="")
    return {name: {k: r[k] for k in kinds if k in r} for name, r in results.items()}


# -- report -------------------------------------------------------------------------------------


def medians(results: Runs) -> Figures:
    """The median of each figure over the runs."""
    return {
        name: {
            kind: median_of_runs([run.summary() for run in runs]) for kind, runs in by_kind.items()
        }
        for name, by_kind in results.items()
    }


def _num(value: float | None) -> float:
    return math.nan if value is None else float(value)


def print_results(figures: Figures, title: str) -> None:
    headers = ["case", "transport", "fps", "p50 ms", "p99 ms", "delivered", "on time", "cpu"]
    rows: list[list[str]] = []
    for name, by_kind in figures.items():
        for i, (kind, f) in enumerate(by_kind.items()):
            rows.append(
                [
                    name if i == 0 else "",
                    kind,
                    format_value(f["fps"]),
                    format_value(f["p50_ms"], 2),
                    format_value(f["p99_ms"], 2),
                    format_value(f["delivered"], 3),
                    format_value(f["on_time"], 3),
                    format_value(f["cpu"], 2),
                ]
            )
    print_table(headers, rows, title=title, left=2)


def verdicts(figures: Figures) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for each target of the issue that this run can judge."""
    out: list[tuple[str, str, str]] = []
    unpaced = figures.get("unpaced_720p_raw", {})
    if "p2ptls_stream" in unpaced and "tls" in unpaced:
        ours, tls = unpaced["p2ptls_stream"], unpaced["tls"]
        fps_ratio = _num(ours["fps"]) / _num(tls["fps"]) if tls["fps"] else math.nan
        p99_ratio = _num(ours["p99_ms"]) / _num(tls["p99_ms"]) if tls["p99_ms"] else math.nan
        out.append(
            (
                "unpaced 720p raw: SecureStream fps >= 2.5x SSLStream",
                f"{format_value(ours['fps'])} / {format_value(tls['fps'])} = {fps_ratio:.2f}x",
                "MET" if fps_ratio >= 2.5 else "NOT MET",
            )
        )
        out.append(
            (
                "unpaced 720p raw: SecureStream p99 <= 0.4x SSLStream",
                f"{format_value(ours['p99_ms'], 2)} / {format_value(tls['p99_ms'], 2)} ms"
                f" = {p99_ratio:.2f}x",
                "MET" if p99_ratio <= 0.4 else "NOT MET",
            )
        )
    paced = figures.get("paced_16x30_jpeg", {})
    for kind in ("p2ptls_stream", "p2ptls_sllp"):
        if kind in paced:
            f = paced[kind]
            delivered, on_time, p99 = _num(f["delivered"]), _num(f["on_time"]), _num(f["p99_ms"])
            ok = delivered >= 1.0 and on_time >= 1.0 and p99 < 1e3 / 30
            out.append(
                (
                    f"paced 16x30 jpeg, {kind}: all on time, p99 < 33.3 ms",
                    f"delivered {delivered:.4f}, on time {on_time:.4f}, "
                    f"p99 {format_value(p99, 2)} ms",
                    "MET" if ok else "NOT MET",
                )
            )
    lossy = figures.get("loss1_paced_4x30_jpeg", {})
    if "p2ptls_sllp" in lossy and "p2ptls_stream" in lossy:
        d, s = lossy["p2ptls_sllp"], lossy["p2ptls_stream"]
        out.append(
            (
                "1% loss, 4x30 jpeg: SLLP p99 < SecureStream p99",
                f"{format_value(d['p99_ms'], 2)} vs {format_value(s['p99_ms'], 2)} ms "
                f"(SLLP delivered {_num(d['delivered']):.3f})",
                "MET" if _num(d["p99_ms"]) < _num(s["p99_ms"]) else "NOT MET",
            )
        )
    return out


def sllp_datagrams(args: argparse.Namespace) -> str:
    if args.sllp_datagram is None:
        return "from the path MTU"
    return f"of {args.sllp_datagram} bytes"


def print_report(figures: Figures, args: argparse.Namespace, elapsed: float) -> None:
    say()
    say(
        f"{args.seconds:g} s windows after {args.warmup:g} s warm-up; one connection per camera "
        "(p2ptls_mux: one logical stream per camera, one connection); "
        f"RSA-{KEY_BITS}; impaired cases: {args.delay:g} ms one way; "
        f"SLLP datagrams {sllp_datagrams(args)}; {elapsed:.0f} s in all"
    )
    print_results(figures, f"Camera streams on 127.0.0.1, one process ({median_of(args.runs)})")
    checks = verdicts(figures)
    if checks:
        print_table(["target", "measured", "verdict"], checks, title="Targets", left=2)


def json_params(
    args: argparse.Namespace, cases: list[Case], kinds: list[Transport]
) -> dict[str, Any]:
    """What the JSON document records about how the figures were measured."""
    return {
        "cases": [case.name for case in cases],
        "transports": kinds,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "drain": args.drain,
        "delay_ms": args.delay,
        "seed": args.seed,
        "verify": args.verify,
        "key_bits": KEY_BITS,
        "jpeg_quality": JPEG_QUALITY,
        "sllp_datagram": args.sllp_datagram,
    }


# -- plots --------------------------------------------------------------------------------------

TRANSPORT_LABELS: dict[Transport, str] = {
    "p2ptls_stream": "p2ptls SecureStream",
    "p2ptls_sllp": "p2ptls SLLP datagrams",
    "p2ptls_mux": "p2ptls host: logical streams, one connection",
    "tls": "TLS 1.3 (trio SSLStream)",
    "tcp": "plain TCP, unencrypted",
}
SOURCE_LABELS = {
    "480p_raw": "raw RGB 640×480",
    "720p_raw": "raw RGB 1280×720",
    "jpeg": "JPEG 640×480",
}
COLOURS: dict[Transport, str] = {
    "p2ptls_stream": "tab:blue",
    "p2ptls_sllp": "tab:orange",
    "p2ptls_mux": "tab:green",
    "tls": "tab:red",
    "tcp": "tab:gray",
}
STYLES: dict[Transport, str] = {
    "p2ptls_stream": "-",
    "p2ptls_sllp": "-",
    "p2ptls_mux": "-",
    "tls": "--",
    "tcp": ":",
}


def case_title(case: Case, delay_ms: float) -> str:
    """A case described in words: the cameras and frames, then the network."""
    if case.paced:
        plural = "s" if case.cameras > 1 else ""
        cameras = f"{case.cameras} camera{plural} at {case.fps:g} frames/s"
    else:
        cameras = "1 camera sending as fast as it can"
    network = (
        "loopback, no impairment"
        if case.loss is None
        else f"{case.loss:g}% loss, {delay_ms:g} ms one-way delay"
    )
    return f"{cameras}, {SOURCE_LABELS[case.source]}\n{network}"


def plot(results: Runs, cases: list[Case], directory: str, delay_ms: float) -> None:
    """The latency CDF and the delivered frame rate of each case, frames of all runs pooled."""
    try:  # optional (the bench extra); imported by name so that type checks never need it
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
        ticker = importlib.import_module("matplotlib.ticker")
        Line2D = importlib.import_module("matplotlib.lines").Line2D
    except ImportError:
        log("matplotlib is not installed: no plots (pip install -e '.[bench]')")
        return
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    shown = [case for case in cases if results.get(case.name)]
    if not shown:
        return
    columns = min(3, len(shown))
    rows = -(-len(shown) // columns)
    kinds = [k for k in TRANSPORTS if any(k in results[c.name] for c in shown)]
    runs = max(len(r) for c in shown for r in results[c.name].values())
    pooled = "one run" if runs == 1 else f"{runs} runs pooled"
    averaged = "one run" if runs == 1 else f"mean of {runs} runs"
    handles = [
        Line2D(
            [], [], color=COLOURS[k], linestyle=STYLES[k], linewidth=2, label=TRANSPORT_LABELS[k]
        )
        for k in kinds
    ]

    def figure_of(height: float) -> Any:
        return plt.subplots(
            rows,
            columns,
            figsize=(4.8 * columns, height * rows + 1.0),
            squeeze=False,
            layout="constrained",
        )

    def finish(figure: Any, axes: Any, marker: Any, title: str) -> None:
        for ax in list(axes.flat)[len(shown) :]:
            ax.set_visible(False)
        width = 50 * columns  # characters that fit across the figure
        figure.suptitle(
            "\n".join(textwrap.fill(line, width) for line in title.split("\n")), fontsize=11
        )
        # Outside the axes, under the plots: a legend never covers a curve.
        legend = [*handles, marker]
        figure.legend(
            handles=legend,
            loc="outside lower center",
            ncol=len(legend) if columns >= 3 else 2,
            fontsize=9,
            frameon=False,
        )

    # 1. Latency CDF per case: the curve ends at the fraction delivered.
    figure, axes = figure_of(3.7)
    for ax, case in zip(axes.flat, shown, strict=False):
        by_kind = results[case.name]
        for kind in kinds:
            if kind not in by_kind:
                continue
            values = sorted(v for run in by_kind[kind] for v in run.latencies_ms)
            captured = sum(run.frames for run in by_kind[kind])
            if not values or not captured:
                continue
            ax.step(
                values,
                [(i + 1) / captured for i in range(len(values))],
                where="post",
                color=COLOURS[kind],
                linestyle=STYLES[kind],
                linewidth=1.5,
            )
        ax.axvline(case.deadline * 1e3, color="black", linestyle="-.", linewidth=0.9)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _pos: f"{value:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_ylim(0, 1.02)
        ax.set_title(case_title(case, delay_ms), fontsize=10)
        ax.set_xlabel("Frame latency, capture to receipt (ms, log scale)", fontsize=8)
        ax.set_ylabel("Fraction of captured frames received", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(True, which="both", alpha=0.3)
    deadline = Line2D(
        [], [], color="black", linestyle="-.", linewidth=0.9, label="Deadline: one frame interval"
    )
    finish(
        figure,
        axes,
        deadline,
        f"Camera frame latency ({pooled})\n"
        "Fraction of captured frames received within x ms; a curve ends at the fraction received",
    )
    latency_path = out / "camera_latency_cdf.png"
    figure.savefig(latency_path, dpi=110)
    plt.close(figure)

    # 2. Delivered frames per second over the measurement window (mean over the runs).
    figure, axes = figure_of(3.5)
    for ax, case in zip(axes.flat, shown, strict=False):
        by_kind = results[case.name]
        seconds = next(iter(by_kind.values()))[0].seconds
        bin_width = 0.25 if seconds >= 2 else 0.1
        if case.paced:  # a whole number of frame intervals per bin: no aliasing zigzag
            bin_width = max(1, round(bin_width * case.fps)) / case.fps
        bins = max(1, round(seconds / bin_width))
        for kind in kinds:
            if kind not in by_kind:
                continue
            counts = [0] * bins
            for run in by_kind[kind]:
                for t in run.arrival_times:
                    slot = int(t / bin_width)
                    if 0 <= slot < bins:
                        counts[slot] += 1
            scale = 1 / (bin_width * len(by_kind[kind]))
            ax.plot(
                [(i + 0.5) * bin_width for i in range(bins)],
                [c * scale for c in counts],
                color=COLOURS[kind],
                linestyle=STYLES[kind],
                linewidth=1.5,
            )
        if case.paced:
            ax.axhline(case.cameras * case.fps, color="black", linestyle="-.", linewidth=0.9)
        ax.set_ylim(bottom=0)
        ax.set_title(case_title(case, delay_ms), fontsize=10)
        ax.set_xlabel("Time since the measurement window opened (s)", fontsize=8)
        ax.set_ylabel(f"Frames received per second ({bin_width * 1e3:.0f} ms bins)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
    offered = Line2D(
        [], [], color="black", linestyle="-.", linewidth=0.9, label="Offered: cameras × frame rate"
    )
    finish(
        figure,
        axes,
        offered,
        f"Frames received per second ({averaged})\n"
        "All cameras together, during the measurement window",
    )
    fps_path = out / "camera_fps_over_time.png"
    figure.savefig(fps_path, dpi=110)
    plt.close(figure)
    log(f"wrote {latency_path} and {fps_path}")


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="three cases, short windows (about 30 s a run)"
    )
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    parser.add_argument("--plot", metavar="DIR", help="write PNG figures into DIR (matplotlib)")
    parser.add_argument(
        "--cases", nargs="+", metavar="CASE", help=f"cases to run (default: {' '.join(FULL_CASES)})"
    )
    parser.add_argument("--transports", nargs="+", choices=TRANSPORTS, help="transports to run")
    parser.add_argument("--seconds", type=float, help="measurement window (3; quick 1.5)")
    parser.add_argument("--warmup", type=float, help="seconds before the window (0.5; quick 0.3)")
    parser.add_argument(
        "--drain", type=float, default=1.0, help="seconds to wait for the last frames (1)"
    )
    parser.add_argument(
        "--delay", type=float, default=5.0, help="one-way delay of the impaired cases, ms (5)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of phases and losses")
    parser.add_argument(
        "--runs", type=int, default=3, help="runs of every case; medians reported (3)"
    )
    parser.add_argument(
        "--verify", action="store_true", help="check every frame's bytes on arrival (slower)"
    )
    parser.add_argument(
        "--sllp-datagram",
        type=int,
        default=None,
        metavar="BYTES",
        help="SLLP's datagram_size (default: from the path MTU, 65507 on loopback; 1200 fits any"
        " path)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.seconds is None:
        args.seconds = 1.5 if args.quick else 3.0
    if args.warmup is None:
        args.warmup = 0.3 if args.quick else 0.5
    names = args.cases or list(QUICK_CASES if args.quick else FULL_CASES)
    try:
        args.case_list = [Case.parse(name) for name in names]
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cases: list[Case] = args.case_list
    if any(case.source == "jpeg" for case in cases) and not have_pillow():
        log("Pillow is not installed: skipping the JPEG cases (pip install -e '.[bench]')")
        cases = [case for case in cases if case.source != "jpeg"]
    kinds: list[Transport] = list(args.transports or TRANSPORTS)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="p2ptls-camera-") as tmp:
        log(f"generating RSA-{KEY_BITS} keys and certificates...")
        material = Material(Path(tmp))
        results = trio.run(run_all, cases, kinds, args, material)
    figures = medians(results)
    print_report(figures, args, time.perf_counter() - started)
    if args.json:
        write_json(
            args.json,
            "camera",
            params=json_params(args, cases, kinds),
            quick=args.quick,
            runs=args.runs,
            results=figures,
        )
    if args.plot:
        plot(results, cases, args.plot, args.delay)
    return 0


if __name__ == "__main__":
    sys.exit(main())
