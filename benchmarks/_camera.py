"""Helpers of the camera-stream benchmark: synthetic cameras and an impaired TCP relay.

* :class:`SyntheticCamera` makes a deterministic moving test pattern (scrolling colour bars, a
  scrolling grey ramp, a drifting textured band, a bouncing box and the frame number as a row of
  black and white blocks) as raw RGB frames, in pure Python; :func:`encode_jpeg` encodes them once
  ahead of time with Pillow (when installed).
* :data:`FRAME_HEADER` is what every benchmark frame starts with: camera, sequence, capture time.
* :class:`TcpLossModel` (sans-IO) and :class:`ImpairedTcpRelay` (trio) put a one-way delay and a
  *model* of TCP loss recovery between two TCP endpoints. A real TCP connection never loses
  bytes; when the network drops a segment the sender retransmits it and the receiving application
  sees nothing until the retransmission arrives, while every later byte waits behind it
  (head-of-line blocking). The model: the byte stream is cut into ``mss``-byte segments as it
  passes; each segment is "lost" with probability ``loss``, and a lost segment is released
  ``delay + rto`` after it entered instead of ``delay``; every segment is released no earlier than
  the one before it (order is kept). Losses that overlap in time overlap their stalls (as selective
  acknowledgements recover several holes in one round). Not modelled: congestion control (real TCP
  also halves its window after a loss, so sends slow down), Linux's 200 ms minimum RTO (a lost
  tail segment with nothing behind it can stall that long), bandwidth limits. The model therefore
  flatters TCP-based transports; the SLLP relay (:mod:`p2ptls.sllp.relay`) simply drops datagrams.
"""

from __future__ import annotations

import importlib
import io
import math
import random
import struct
from collections import deque
from dataclasses import dataclass

import trio

FRAME_HEADER = struct.Struct(">IId")
"""Camera index, frame sequence number, capture time (trio clock seconds)."""
LENGTH_PREFIX = struct.Struct(">I")
"""Frame length before each frame on the length-prefixed transports (TCP, TLS)."""

RESOLUTIONS = {"480p": (640, 480), "720p": (1280, 720)}

_BARS = (
    (192, 192, 192),
    (192, 192, 0),
    (0, 192, 192),
    (0, 192, 0),
    (192, 0, 192),
    (192, 0, 0),
    (0, 0, 192),
    (16, 16, 16),
)


class SyntheticCamera:
    """A deterministic moving test pattern: ``frames`` distinct raw RGB frames, looped.

    Frame ``i`` of the loop is the same on every run and every machine (no randomness beyond a
    seeded generator), so a receiver can check what it got.
    """

    def __init__(self, width: int, height: int, frames: int = 8, *, seed: int = 1) -> None:
        if width < 64 or height < 48 or frames < 1:
            raise ValueError("frames of at least 64x48 pixels, at least one frame")
        self.width = width
        self.height = height
        self.count = frames
        self._seed = seed
        self._prepare()
        self.frames: list[bytes] = [self.render(i) for i in range(frames)]
        """The loop of raw frames (``width * height * 3`` bytes each, RGB, row by row)."""

    @property
    def frame_size(self) -> int:
        return self.width * self.height * 3

    def _prepare(self) -> None:
        width = self.width
        bar = max(1, width // len(_BARS))
        row = bytearray()
        for red, green, blue in _BARS:
            row += bytes((red, green, blue)) * bar
        row = row * (2 * width // (bar * len(_BARS)) + 2)
        self._bars = bytes(row)
        ramp = bytearray()
        for x in range(2 * width):
            level = (x * 255 // max(1, width - 1)) % 256
            ramp += bytes((level, level, level))
        self._ramp = bytes(ramp)
        # A soft texture (like out-of-focus detail): a random walk of grey levels, kept narrow so a
        # low-quality JPEG does not blow it up into noise.
        rng = random.Random(self._seed)
        texture = bytearray()
        level = 128
        for _ in range(3 * width):
            level = min(200, max(56, level + rng.randint(-14, 14)))
            texture += bytes((level, (level * 3) // 4 + 32, level // 2 + 40))
        self._texture = bytes(texture)

    def render(self, index: int) -> bytes:
        """Frame ``index`` (any integer; the motion repeats every ``count`` frames)."""
        width, height = self.width, self.height
        phase = index % self.count
        step = max(1, width // self.count)
        stride = width * 3
        bars_rows = height * 55 // 100
        ramp_rows = height * 15 // 100
        texture_rows = height - bars_rows - ramp_rows
        shift = (phase * step) % width
        out = bytearray()
        out += self._bars[shift * 3 : shift * 3 + stride] * bars_rows
        back = (width - shift) % width
        out += self._ramp[back * 3 : back * 3 + stride] * ramp_rows
        texture_span = len(self._texture) // 3 - width
        for y in range(texture_rows):
            start = ((y * 37 + phase * 11) % texture_span) * 3
            out += self._texture[start : start + stride]
        # A bouncing box.
        box = max(8, height // 6)
        span_x, span_y = width - box, height - box
        x = (phase * span_x * 2 // self.count) % (2 * span_x)
        y = (phase * span_y * 3 // self.count) % (2 * span_y)
        x = x if x < span_x else 2 * span_x - x
        y = y if y < span_y else 2 * span_y - y
        white = b"\xf0\xf0\xf0" * box
        for row in range(y, y + box):
            offset = row * stride + x * 3
            out[offset : offset + box * 3] = white
        # The frame number as 16 blocks (black 0, white 1) along the top.
        block = max(4, width // 40)
        for bit in range(16):
            colour = b"\xff\xff\xff" if (index >> (15 - bit)) & 1 else b"\x00\x00\x00"
            for row in range(block):
                offset = (block // 2 + row) * stride + (block // 2 + bit * block) * 3
                out[offset : offset + block * 3] = colour * block
        return bytes(out)


def have_pillow() -> bool:
    try:
        importlib.import_module("PIL.Image")
    except ImportError:
        return False
    return True


def encode_jpeg(raw: bytes, width: int, height: int, quality: int = 30) -> bytes:
    """Encode one raw RGB frame as JPEG with Pillow (raises ``ImportError`` without it).

    Pillow is optional (the ``bench`` extra), so it is imported by name: type checks never need it.
    """
    image = importlib.import_module("PIL.Image").frombytes("RGB", (width, height), raw)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    data: bytes = out.getvalue()
    return data


# -- impaired TCP -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TcpImpairment:
    """One direction of the impaired TCP path (see the module docstring for the model)."""

    delay: float = 0.0
    """One-way delay, seconds."""
    loss: float = 0.0
    """Probability that a segment is lost (and so waits for a retransmission)."""
    rto: float | None = None
    """Extra wait of a lost segment; default: twice the round trip (``4 * delay``), at least
    1 ms."""
    mss: int = 1448
    """Segment size, bytes (1448: a 1500-byte MTU less IPv4, TCP and timestamp headers)."""
    seed: int = 0

    @property
    def stall(self) -> float:
        return self.rto if self.rto is not None else max(0.001, 4 * self.delay)


class TcpLossModel:
    """Release times of the bytes of one TCP direction (sans-IO, deterministic)."""

    def __init__(self, impairment: TcpImpairment) -> None:
        self.impairment = impairment
        self._random = random.Random(impairment.seed)
        self._last_release = -math.inf
        self._partial = 0  # bytes of the current segment already seen
        self._partial_lost = False
        self.segments = 0
        self.lost = 0

    def schedule(self, size: int, now: float) -> list[tuple[int, float]]:
        """``size`` bytes entered at ``now``: ``(byte count, release time)`` runs, in order."""
        imp = self.impairment
        mss = imp.mss
        runs: list[tuple[int, float]] = []
        remaining = size
        while remaining:
            if self._partial == 0:
                self.segments += 1
                self._partial_lost = imp.loss > 0 and self._random.random() < imp.loss
                if self._partial_lost:
                    self.lost += 1
            take = min(remaining, mss - self._partial)
            self._partial = (self._partial + take) % mss
            remaining -= take
            due = now + imp.delay + (imp.stall if self._partial_lost else 0.0)
            due = max(due, self._last_release)
            self._last_release = due
            if runs and runs[-1][1] == due:
                runs[-1] = (runs[-1][0] + take, due)
            else:
                runs.append((take, due))
        return runs


class ImpairedTcpRelay:
    """Forwards TCP connections to ``target`` through a :class:`TcpLossModel` each way.

    Connect to :attr:`address`; each connection gets its own models (seeds offset by the
    connection's index). Run with ``await nursery.start(relay.run)``; stops when cancelled.
    """

    def __init__(
        self,
        target: tuple[str, int],
        forward: TcpImpairment,
        backward: TcpImpairment | None = None,
        *,
        read_size: int = 65536,
    ) -> None:
        self.target = target
        self.forward = forward
        self.backward = backward or TcpImpairment(
            delay=forward.delay, loss=forward.loss, rto=forward.rto, seed=forward.seed + 1
        )
        self.read_size = read_size
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self.models: list[TcpLossModel] = []
        self._connections = 0

    async def run(
        self, *, task_status: trio.TaskStatus[ImpairedTcpRelay] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        host, port = listeners[0].socket.getsockname()[:2]
        self.address = (str(host), int(port))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._handle, listeners)
            task_status.started(self)

    async def _handle(self, client: trio.SocketStream) -> None:
        index = self._connections
        self._connections += 1
        server = await trio.open_tcp_stream(*self.target)
        forward = TcpLossModel(_reseed(self.forward, index * 2))
        backward = TcpLossModel(_reseed(self.backward, index * 2))
        self.models += [forward, backward]
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pipe, client, server, forward)
                nursery.start_soon(self._pipe, server, client, backward)
        finally:
            await trio.aclose_forcefully(client)
            await trio.aclose_forcefully(server)

    async def _pipe(
        self, source: trio.SocketStream, sink: trio.SocketStream, model: TcpLossModel
    ) -> None:
        queue: deque[tuple[float, bytes | memoryview]] = deque()
        wake = trio.lowlevel.ParkingLot()
        done = False

        async def write() -> None:
            while queue or not done:
                if not queue:
                    await wake.park()
                    continue
                due = queue[0][0]
                if due > trio.current_time():
                    await trio.sleep_until(due)
                now = trio.current_time()
                parts: list[bytes | memoryview] = []
                while queue and queue[0][0] <= now:
                    parts.append(queue.popleft()[1])
                await sink.send_all(b"".join(parts) if len(parts) > 1 else parts[0])
            await sink.send_eof()

        async def read() -> None:
            nonlocal done
            while True:
                data = await source.receive_some(self.read_size)
                if not data:
                    break
                view = memoryview(data)
                offset = 0
                for size, due in model.schedule(len(data), trio.current_time()):
                    queue.append((due, view[offset : offset + size]))
                    offset += size
                wake.unpark_all()
            done = True
            wake.unpark_all()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write)
                nursery.start_soon(read)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # one end went away: the relay's connection ends too


def _reseed(impairment: TcpImpairment, offset: int) -> TcpImpairment:
    return TcpImpairment(
        delay=impairment.delay,
        loss=impairment.loss,
        rto=impairment.rto,
        mss=impairment.mss,
        seed=impairment.seed + offset,
    )
