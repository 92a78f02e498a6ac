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
  message, 1200-byte datagrams (the default: fits any path), unordered delivery;
* ``tls``: ``trio.SSLStream``, TLS 1.3 only, mutual authentication with RSA-3072 certificates
  (set up as ``benchmarks/stream.py`` does), frames length-prefixed (u32) on the byte stream;
* ``tcp``: plain trio TCP, length-prefixed: the unencrypted ceiling.

**Each camera has its own connection** (its own TCP connection, TLS session, SecureStream, or SLLP
channel with its own stream and UDP socket), as independent cameras would: one camera's stalls never
hold up another's frames. The receiver reads each connection in its own task.

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
import json
import math
import random
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if __package__ in (None, ""):  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
from benchmarks._common import log, percentile
from benchmarks.stream import TLS_HOSTNAME, tls_contexts, write_tls_material
from p2ptls import sllp
from p2ptls.sllp.relay import LinkConditions, UdpRelay
from p2ptls.sllp.transport import UdpTransport

Transport = Literal["p2ptls_stream", "p2ptls_sllp", "tls", "tcp"]
TRANSPORTS: tuple[Transport, ...] = ("p2ptls_stream", "p2ptls_sllp", "tls", "tcp")
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
    return Result(
        frames=captured,
        fps=len(arrivals) / seconds,
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
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
        psk = p2ptls.generate_psk()
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
    ) -> None:
        self.material = material
        self.nursery = nursery
        self.case = case
        self.kind = kind
        self.delay = delay
        self.seed = seed
        self.listener: trio.SocketListener | None = None
        self.target: tuple[str, int] = ("127.0.0.1", 0)

    async def start(self) -> None:
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
        secure_client, secure_server = await self.secure_pair()
        if self.kind == "p2ptls_stream":
            views = buffers.views

            async def send_message(i: int) -> None:
                await secure_client.send_message(views[i])

            async def receive_messages(sink: FrameSink) -> None:
                async for message in secure_server.messages():
                    sink(message, 0, len(message))

            return Link(send_message, receive_messages, [secure_client, secure_server])
        return await self._sllp_link(index, secure_client, secure_server, buffers)

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
            ta = UdpTransport.bind(("127.0.0.1", 0), SLLP_CONFIG)
            tb = UdpTransport.bind(("127.0.0.1", 0), SLLP_CONFIG)
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
                config=SLLP_CONFIG,
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
class Progress:
    """What the progress line shows."""

    label: str = ""
    index: int = 0
    total: int = 0
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
    progress: Progress,
) -> Result:
    frames = library.frames(case.source)
    recorder = Recorder(verify=frames if args.verify else None)
    rng = random.Random(args.seed)
    async with trio.open_nursery() as infrastructure:
        connector = Connector(
            material, infrastructure, case, kind, delay=args.delay / 1e3, seed=args.seed
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


async def show_progress(progress: Progress, tty: bool) -> None:
    """A single updating line on a terminal; nothing here otherwise (a line per result)."""
    if not tty:
        return
    while True:
        recorder = progress.recorder
        line = f"[{progress.index}/{progress.total}] {progress.label}"
        if recorder is not None:
            now = trio.current_time()
            start, end = progress.window
            if now < start:
                state = "warm-up"
            elif progress.phase == "drain":
                state = "draining"
            else:
                state = f"{min(now, end) - start:4.1f}/{end - start:.1f} s"
            recent = [r - c for c, r in recorder.arrivals[-200:]]
            p99 = percentile(recent, 99) * 1e3 if recent else math.nan
            line += (
                f"  {state}  sent {recorder.sent}  received {recorder.received}"
                f"  recent p99 {format_value(p99, 1)} ms"
            )
        else:
            line += "  setting up"
        sys.stderr.write("\r\x1b[K" + line[:160])
        sys.stderr.flush()
        await trio.sleep(0.2)


async def run_all(
    cases: list[Case], kinds: list[Transport], args: argparse.Namespace, material: Material
) -> dict[str, dict[Transport, Result]]:
    library = FrameLibrary()
    for source in dict.fromkeys(case.source for case in cases):
        log(f"frames {library.describe(source)}")
    results: dict[str, dict[Transport, Result]] = {}
    tty = sys.stderr.isatty()
    progress = Progress(total=len(cases) * len(kinds))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(show_progress, progress, tty)
        for case_index, case in enumerate(cases):
            # Rotate the order per case so that no transport always runs first on a cold machine.
            order = kinds[case_index % len(kinds) :] + kinds[: case_index % len(kinds)]
            for kind in order:
                gc.collect()  # not inside a measurement
                await trio.sleep(0.1)
                progress.index += 1
                progress.label = f"{case.name} / {kind}"
                progress.phase = "setup"
                result = await run_one(
                    material=material,
                    library=library,
                    case=case,
                    kind=kind,
                    args=args,
                    progress=progress,
                )
                results.setdefault(case.name, {})[kind] = result
                if tty:
                    sys.stderr.write("\r\x1b[K")
                log(f"[{progress.index}/{progress.total}] " + result_line(case, kind, result))
                notes = []
                if result.skipped:
                    notes.append(f"{result.skipped} frames skipped by late cameras")
                if result.datagrams_lost >= 0.0005:
                    notes.append(f"{result.datagrams_lost:.2%} of datagrams lost")
                if result.damaged:
                    notes.append(f"WARNING: {result.damaged} frames arrived damaged")
                if notes:
                    log("  (" + "; ".join(notes) + ")")
        nursery.cancel_scope.cancel()
    if tty:
        sys.stderr.write("\r\x1b[K")
    return {name: {k: r[k] for k in kinds if k in r} for name, r in results.items()}


# -- report -------------------------------------------------------------------------------------


def print_table(results: dict[str, dict[Transport, Result]]) -> None:
    headers = ["case", "transport", "fps", "p50 ms", "p99 ms", "delivered", "on time", "cpu"]
    rows: list[list[str]] = []
    for name, by_kind in results.items():
        for i, (kind, r) in enumerate(by_kind.items()):
            rows.append(
                [
                    name if i == 0 else "",
                    kind,
                    format_value(r.fps),
                    format_value(r.p50_ms, 2),
                    format_value(r.p99_ms, 2),
                    format_value(r.delivered, 3),
                    format_value(r.on_time, 3),
                    format_value(r.cpu, 2),
                ]
            )
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    print(line(headers))
    print("-" * len(line(headers)))
    for row in rows:
        print(line(row))


def verdicts(results: dict[str, dict[Transport, Result]]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for each target of the issue that this run can judge."""
    out: list[tuple[str, str, str]] = []
    unpaced = results.get("unpaced_720p_raw", {})
    if "p2ptls_stream" in unpaced and "tls" in unpaced:
        ours, tls = unpaced["p2ptls_stream"], unpaced["tls"]
        fps_ratio = ours.fps / tls.fps if tls.fps else math.nan
        p99_ratio = ours.p99_ms / tls.p99_ms if tls.p99_ms else math.nan
        out.append(
            (
                "unpaced 720p raw: SecureStream fps >= 2.5x SSLStream",
                f"{format_value(ours.fps)} / {format_value(tls.fps)} = {fps_ratio:.2f}x",
                "MET" if fps_ratio >= 2.5 else "NOT MET",
            )
        )
        out.append(
            (
                "unpaced 720p raw: SecureStream p99 <= 0.4x SSLStream",
                f"{format_value(ours.p99_ms, 2)} / {format_value(tls.p99_ms, 2)} ms"
                f" = {p99_ratio:.2f}x",
                "MET" if p99_ratio <= 0.4 else "NOT MET",
            )
        )
    paced = results.get("paced_16x30_jpeg", {})
    for kind in ("p2ptls_stream", "p2ptls_sllp"):
        if kind in paced:
            r = paced[kind]
            ok = r.delivered >= 1.0 and r.on_time >= 1.0 and r.p99_ms < 1e3 / 30
            out.append(
                (
                    f"paced 16x30 jpeg, {kind}: all on time, p99 < 33.3 ms",
                    f"delivered {r.delivered:.4f}, on time {r.on_time:.4f}, "
                    f"p99 {format_value(r.p99_ms, 2)} ms",
                    "MET" if ok else "NOT MET",
                )
            )
    lossy = results.get("loss1_paced_4x30_jpeg", {})
    if "p2ptls_sllp" in lossy and "p2ptls_stream" in lossy:
        d, s = lossy["p2ptls_sllp"], lossy["p2ptls_stream"]
        out.append(
            (
                "1% loss, 4x30 jpeg: SLLP p99 < SecureStream p99",
                f"{format_value(d.p99_ms, 2)} vs {format_value(s.p99_ms, 2)} ms "
                f"(SLLP delivered {d.delivered:.3f})",
                "MET" if d.p99_ms < s.p99_ms else "NOT MET",
            )
        )
    return out


def print_report(
    results: dict[str, dict[Transport, Result]], args: argparse.Namespace, elapsed: float
) -> None:
    print()
    print(
        f"Camera streams on 127.0.0.1, one process; {args.seconds:g} s windows after "
        f"{args.warmup:g} s warm-up; one connection per camera; RSA-{KEY_BITS}; "
        f"impaired cases: {args.delay:g} ms one way; {elapsed:.0f} s in all"
    )
    print()
    print_table(results)
    checks = verdicts(results)
    if checks:
        print()
        print("targets:")
        width = max(len(c[0]) for c in checks)
        for target, measured, verdict in checks:
            print(f"  {target:<{width}}  {measured}  {verdict}")


def write_json(results: dict[str, dict[Transport, Result]], path: str) -> None:
    document = {
        name: {kind: result.summary() for kind, result in by_kind.items()}
        for name, by_kind in results.items()
    }
    Path(path).write_text(json.dumps(document, indent=2) + "\n")
    log(f"wrote {path}")


# -- plots --------------------------------------------------------------------------------------

COLOURS: dict[Transport, str] = {
    "p2ptls_stream": "tab:blue",
    "p2ptls_sllp": "tab:orange",
    "tls": "tab:red",
    "tcp": "tab:gray",
}
STYLES: dict[Transport, str] = {
    "p2ptls_stream": "-",
    "p2ptls_sllp": "-",
    "tls": "--",
    "tcp": ":",
}
HEADER_INCHES = 0.8  # room above the subplots for the title and the legend


def plot(results: dict[str, dict[Transport, Result]], cases: list[Case], directory: str) -> None:
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
    shown = [case for case in cases if case.name in results]
    if not shown:
        return
    columns = min(4, len(shown))
    rows = -(-len(shown) // columns)
    kinds = [k for k in TRANSPORTS if any(k in results[c.name] for c in shown)]

    def finish(figure: Any, handles: list[Any], title: str) -> None:
        height = figure.get_figheight()
        top = 1 - HEADER_INCHES / height
        figure.suptitle(title, y=1 - 0.12 / height, fontsize=11)
        figure.legend(
            handles=handles,
            loc="lower center",
            bbox_to_anchor=(0.5, top + 0.05 / height),
            ncol=len(handles),
            fontsize=9,
            frameon=False,
        )
        figure.tight_layout(rect=(0, 0, 1, top))

    # 1. Latency CDF per case: the curve ends at the delivered fraction.
    figure, axes = plt.subplots(
        rows, columns, figsize=(4.6 * columns, 3.6 * rows + HEADER_INCHES), squeeze=False
    )
    for ax, case in zip(axes.flat, shown, strict=False):
        by_kind = results[case.name]
        for kind in kinds:
            if kind not in by_kind:
                continue
            r = by_kind[kind]
            values = sorted(r.latencies_ms)
            if not values or not r.frames:
                continue
            ys = [(i + 1) / r.frames for i in range(len(values))]
            ax.step(
                values,
                ys,
                where="post",
                color=COLOURS[kind],
                linestyle=STYLES[kind],
                label=kind,
                linewidth=1.5,
            )
        ax.axvline(case.deadline * 1e3, color="black", linestyle="-.", linewidth=0.9)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _pos: f"{value:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_ylim(0, 1.02)
        ax.set_title(case.name, fontsize=10)
        ax.set_xlabel("frame latency, capture to receipt (ms, log)", fontsize=8)
        ax.set_ylabel("fraction of frames delivered", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(shown) :]:
        ax.set_visible(False)
    handles = [
        Line2D([], [], color=COLOURS[k], linestyle=STYLES[k], linewidth=2, label=k) for k in kinds
    ]
    deadline = Line2D(
        [], [], color="black", linestyle="-.", linewidth=0.9, label="deadline (one frame interval)"
    )
    finish(
        figure,
        [*handles, deadline],
        "Frame latency CDF: fraction of captured frames delivered within x ms "
        "(a curve ends at the fraction delivered)",
    )
    latency_path = out / "camera_latency_cdf.png"
    figure.savefig(latency_path, dpi=110)
    plt.close(figure)

    # 2. Delivered frames per second over the measurement window.
    figure, axes = plt.subplots(
        rows, columns, figsize=(4.6 * columns, 3.4 * rows + HEADER_INCHES), squeeze=False
    )
    for ax, case in zip(axes.flat, shown, strict=False):
        by_kind = results[case.name]
        seconds = next(iter(by_kind.values())).seconds
        bin_width = 0.25 if seconds >= 2 else 0.1
        if case.paced:  # a whole number of frame intervals per bin: no aliasing zigzag
            bin_width = max(1, round(bin_width * case.fps)) / case.fps
        bins = max(1, round(seconds / bin_width))
        for kind in kinds:
            if kind not in by_kind:
                continue
            counts = [0] * bins
            for t in by_kind[kind].arrival_times:
                slot = int(t / bin_width)
                if 0 <= slot < bins:
                    counts[slot] += 1
            xs = [(i + 0.5) * bin_width for i in range(bins)]
            ax.plot(
                xs,
                [c / bin_width for c in counts],
                color=COLOURS[kind],
                linestyle=STYLES[kind],
                label=kind,
                linewidth=1.5,
            )
        if case.paced:
            ax.axhline(case.cameras * case.fps, color="black", linestyle="-.", linewidth=0.9)
        ax.set_ylim(bottom=0)
        ax.set_title(case.name, fontsize=10)
        ax.set_xlabel("time in measurement window (s)", fontsize=8)
        ax.set_ylabel(f"frames/s delivered ({bin_width * 1e3:.0f} ms bins)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(shown) :]:
        ax.set_visible(False)
    offered = Line2D(
        [], [], color="black", linestyle="-.", linewidth=0.9, label="offered (cameras x fps)"
    )
    finish(
        figure,
        [*handles, offered],
        "Delivered frames per second over the measurement window (all cameras together)",
    )
    fps_path = out / "camera_fps_over_time.png"
    figure.savefig(fps_path, dpi=110)
    plt.close(figure)
    log(f"wrote {latency_path} and {fps_path}")


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="three cases, short windows (<1 min)")
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
        "--verify", action="store_true", help="check every frame's bytes on arrival (slower)"
    )
    args = parser.parse_args(argv)
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
    print_report(results, args, time.perf_counter() - started)
    if args.json:
        write_json(results, args.json)
    if args.plot:
        plot(results, cases, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
