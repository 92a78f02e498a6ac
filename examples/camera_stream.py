"""Stream a camera over p2ptls: a sender and a receiver, in two terminals or on two machines.

One-time set-up (writes two identities, the network key and the two public peer records)::

    python examples/camera_stream.py setup keys/

Then, in one terminal (or on the receiving machine)::

    python examples/camera_stream.py receive --listen 127.0.0.1:9000 \\
        --key keys/receiver.key --psk keys/network.psk --peer keys/sender.peer.json

and in another (or on the sending machine)::

    python examples/camera_stream.py send --to 127.0.0.1:9000 --transport sllp \\
        --key keys/sender.key --psk keys/network.psk --peer keys/receiver.peer.json

On two machines, copy ``network.psk`` (secret: it proves membership of the network) and the other
side's ``*.peer.json`` (public) to each, and each side's ``.key`` (secret) to that side only.

``--transport stream`` sends each frame as one message on a logical stream of the example's own
protocol, ``camera/frames/1`` (reliable, in order: a lost packet delays every later frame);
``--transport sllp`` opens an SLLP channel (set up on a logical stream of ``p2ptls/sllp/1``) and
sends each frame as encrypted UDP datagrams (a frame arrives whole or not at all, never late
because of another). Either way the stream shares the one connection the sender's host keeps to
the receiver; the receiver serves both protocols and tells the cameras apart by the protocol.

The sender reads a real camera through OpenCV with ``--camera 0`` (``pip install -e '.[camera]'``,
or ``pip install opencv-python-headless``) and otherwise, or if that fails, a synthetic camera: a
moving test pattern encoded as JPEG (quality 30, like the Artifice camera example) with Pillow or
OpenCV, or raw RGB if neither is installed. Every frame carries its sequence number and capture
time; the receiver reports frames per second, lost frames and latency (capture to receipt, by the
wall clocks of the two machines: synchronise them, e.g. with NTP, or the latency means little).

``demo`` runs both ends in this process with fresh keys::

    python examples/camera_stream.py demo --frames 90 --transport sllp
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import math
import statistics
import struct
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

import p2ptls
from p2ptls import sllp

FRAME_HEADER = struct.Struct(">Qd")  # sequence number, capture time (time.time())
# Ordered delivery: a frame that completes after a later one was shown is dropped (counted lost).
SLLP_CONFIG = sllp.SllpConfig(
    max_message_size=8 * 1024 * 1024,
    max_reassembly_bytes=32 * 1024 * 1024,
    delivery=sllp.DeliveryMode.ORDERED,
)
STREAM_CONFIG = p2ptls.StreamConfig(max_message_size=8 * 1024 * 1024)
FRAMES_PROTOCOL = "camera/frames/1"
"""One frame per message, until the sender closes the stream."""


def optional_module(name: str) -> Any:
    """The module, or ``None`` when it is not installed (OpenCV and Pillow are optional)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


# -- cameras ------------------------------------------------------------------------------------


class SyntheticCamera:
    """A moving test pattern (scrolling colour bars, a bouncing box, the frame number in blocks)."""

    BARS = (b"\xc0\xc0\xc0", b"\xc0\xc0\x00", b"\x00\xc0\xc0", b"\x00\xc0\x00", b"\xc0\x00\xc0")

    def __init__(self, width: int, height: int, quality: int) -> None:
        self.width, self.height, self.quality = width, height, quality
        bar = width // len(self.BARS) + 1
        self._row = b"".join(colour * bar for colour in self.BARS) * 3
        self.pil = optional_module("PIL.Image")
        self.cv2 = None if self.pil is not None else optional_module("cv2")
        self.format = "jpeg" if self.pil is not None or self.cv2 is not None else "raw RGB"

    def raw(self, number: int) -> bytes:
        width, height = self.width, self.height
        shift = (number * 8) % (len(self._row) // 3 - width)
        frame = bytearray(self._row[shift * 3 : (shift + width) * 3] * height)
        box = height // 5
        x = (number * 7) % (width - box)
        y = (number * 5) % (height - box)
        for row in range(y, y + box):
            start = (row * width + x) * 3
            frame[start : start + box * 3] = b"\xff\xff\xff" * box
        for bit in range(16):  # the frame number, black and white blocks along the top
            colour = b"\xff\xff\xff" if (number >> (15 - bit)) & 1 else b"\x00\x00\x00"
            for row in range(8, 24):
                start = (row * width + 8 + bit * 16) * 3
                frame[start : start + 48] = colour * 16
        return bytes(frame)

    def frame(self, number: int) -> bytes:
        raw = self.raw(number)
        if self.pil is not None:
            out = io.BytesIO()
            image = self.pil.frombytes("RGB", (self.width, self.height), raw)
            image.save(out, format="JPEG", quality=self.quality)
            return out.getvalue()
        if self.cv2 is not None:
            numpy = importlib.import_module("numpy")
            pixels = numpy.frombuffer(raw, dtype=numpy.uint8).reshape(self.height, self.width, 3)
            ok, encoded = self.cv2.imencode(
                ".jpg", pixels[:, :, ::-1], [self.cv2.IMWRITE_JPEG_QUALITY, self.quality]
            )
            if ok:
                return bytes(encoded)
        return raw


class OpenCvCamera:
    """A real camera through OpenCV; frames JPEG-encoded at ``quality``."""

    def __init__(self, cv2: Any, capture: Any, quality: int) -> None:
        self.cv2, self.capture, self.quality = cv2, capture, quality
        self.format = "jpeg"

    @classmethod
    def open(cls, index: int, width: int, height: int, quality: int) -> OpenCvCamera | None:
        cv2 = optional_module("cv2")
        if cv2 is None:
            print("OpenCV is not installed (pip install opencv-python-headless): synthetic camera")
            return None
        capture = cv2.VideoCapture(index)
        if not capture.isOpened():
            print(f"camera {index} could not be opened: synthetic camera")
            return None
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        return cls(cv2, capture, quality)

    def read(self) -> bytes | None:
        """The next frame (blocks until the camera has one), or ``None`` if it failed."""
        ok, image = self.capture.read()
        if not ok:
            return None
        ok, encoded = self.cv2.imencode(
            ".jpg", image, [self.cv2.IMWRITE_JPEG_QUALITY, self.quality]
        )
        return bytes(encoded) if ok else None

    def close(self) -> None:
        self.capture.release()


async def frames(
    args: argparse.Namespace,
) -> AsyncIterator[tuple[int, float, bytes]]:
    """``(number, capture time, encoded frame)``: from the camera, paced by it (and ``--fps``),
    or from the synthetic camera at ``--fps``."""
    width, height = args.size
    camera = None
    if args.camera is not None:
        camera = OpenCvCamera.open(args.camera, width, height, args.quality)
    synthetic = SyntheticCamera(width, height, args.quality) if camera is None else None
    source = f"camera {args.camera}" if camera is not None else "the synthetic camera"
    form = camera.format if camera is not None else synthetic.format  # type: ignore[union-attr]
    rate = f"up to {args.fps:g} fps" if args.fps > 0 else "as fast as they go"
    print(f"sending {form} frames from {source}, {width}x{height}, {rate}")
    interval = 1 / args.fps if args.fps > 0 else 0.0
    next_due = trio.current_time()
    number = 0
    try:
        while args.frames is None or number < args.frames:
            if camera is not None:
                data = await trio.to_thread.run_sync(camera.read)
                if data is None:
                    print("the camera stopped delivering frames")
                    return
            else:
                assert synthetic is not None
                data = synthetic.frame(number)
            yield number, time.time(), data
            number += 1
            if interval:
                next_due = max(next_due + interval, trio.current_time() - interval)
                await trio.sleep_until(next_due)
    finally:
        if camera is not None:
            camera.close()


# -- receiving ----------------------------------------------------------------------------------


@dataclass
class Report:
    """Frame statistics of one incoming camera."""

    label: str
    frames: int = 0
    byte_count: int = 0
    lost: int = 0
    next_number: int = 0
    latencies: list[float] = field(default_factory=list)  # ms, since the last report
    all_latencies: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    last_report: float = field(default_factory=time.monotonic)
    frames_at_last_report: int = 0

    def add(self, message: bytes, now: float) -> None:
        number, captured = FRAME_HEADER.unpack_from(message)
        if number > self.next_number:
            self.lost += number - self.next_number  # a gap: those frames never came
        self.next_number = max(self.next_number, number + 1)
        self.frames += 1
        self.byte_count += len(message)
        latency = (now - captured) * 1e3
        self.latencies.append(latency)
        self.all_latencies.append(latency)

    def line(self, final: bool = False) -> str:
        now = time.monotonic()
        if final:
            frames, seconds, latencies = self.frames, now - self.started, self.all_latencies
        else:
            frames = self.frames - self.frames_at_last_report
            seconds, latencies = now - self.last_report, self.latencies
        self.last_report, self.frames_at_last_report, self.latencies = now, self.frames, []
        fps = frames / seconds if seconds > 0 else math.nan
        size = self.byte_count / self.frames / 1000 if self.frames else 0.0
        return (
            f"{self.label}: {'total ' if final else ''}{frames} frames, {fps:.1f} fps, "
            f"latency p50 {percentile(latencies, 50):.1f} ms p99 {percentile(latencies, 99):.1f}"
            f" ms, lost {self.lost}, {size:.1f} KB/frame"
        )


def percentile(values: list[float], q: int) -> float:
    """The ``q``-th percentile (1..99), linear between closest ranks; NaN when empty."""
    if len(values) < 2:
        return values[0] if values else math.nan
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def receive_frames(
    messages: AsyncIterator[bytes], report: Report, limit: int | None, every: float
) -> None:
    """Frames from one sender, until it stops or ``limit``."""
    print(f"{report.label}: receiving")
    try:
        async for message in messages:
            report.add(message, time.time())
            if time.monotonic() - report.last_report >= every:
                print(report.line())
            if limit is not None and report.frames >= limit:
                break
    except trio.BrokenResourceError as exc:
        print(f"{report.label}: connection ended: {exc!r}")
    print(report.line(final=True))


class Receiver:
    """A host's receiving side: cameras arrive on ``camera/frames/1`` streams or on SLLP channels
    (each in its own task, closed when done); one :class:`Report` per camera."""

    def __init__(self, host: p2ptls.Host, limit: int | None, every: float) -> None:
        self.limit, self.every = limit, every
        self.reports: list[Report] = []
        self.first_done = trio.Event()
        """Set when the first camera has stopped (or reached ``limit``)."""
        host.serve_protocol(FRAMES_PROTOCOL, self.from_stream)
        sllp.serve_datagrams(host, self.from_channel, config=SLLP_CONFIG)

    def _report(self, peer: p2ptls.PeerId, transport: str) -> Report:
        report = Report(f"camera from {peer.short} #{len(self.reports)} ({transport})")
        self.reports.append(report)
        return report

    async def from_stream(self, stream: p2ptls.LogicalStream) -> None:
        report = self._report(stream.remote_peer.peer_id, "stream")
        try:
            await receive_frames(stream.messages(), report, self.limit, self.every)
        finally:
            self.first_done.set()

    async def from_channel(self, channel: sllp.SllpChannel) -> None:
        report = self._report(channel.remote_peer.peer_id, "sllp")
        try:
            messages = (message.data async for message in channel)
            await receive_frames(messages, report, self.limit, self.every)
        finally:
            self.first_done.set()


async def receive(args: argparse.Namespace) -> list[Report]:
    identity = p2ptls.Identity.load(args.key)
    psk = p2ptls.NetworkKey.load(args.psk)
    peers = [load_peer(path) for path in args.peer]
    config = p2ptls.HostConfig(
        identity=identity, psk=psk, peers=peers, listen=args.listen, stream=STREAM_CONFIG
    )
    async with p2ptls.open_host(config) as host:
        receiver = Receiver(host, args.frames, args.report_every)
        host_address, port = host.address
        print(f"listening on {host_address}:{port} as {identity.peer_id.short}", flush=True)
        if args.once:
            await receiver.first_done.wait()
        else:
            await trio.sleep_forever()
    return receiver.reports


# -- sending ------------------------------------------------------------------------------------


async def send(args: argparse.Namespace) -> dict[str, Any]:
    identity = p2ptls.Identity.load(args.key)
    psk = p2ptls.NetworkKey.load(args.psk)
    receiver = load_peer(args.peer[0])
    config = p2ptls.HostConfig(identity=identity, psk=psk, peers=[receiver], stream=STREAM_CONFIG)
    async with p2ptls.open_host(config) as host:
        return await send_frames(host, receiver, args.to, args)


async def send_frames(
    host: p2ptls.Host, receiver: p2ptls.PeerRecord, to: tuple[str, int], args: argparse.Namespace
) -> dict[str, Any]:
    sent = 0
    if args.transport == "sllp":
        channel = await sllp.connect_datagram(host, receiver, address=to, config=SLLP_CONFIG)
        print(f"connected to {receiver.peer_id.short} at {to[0]}:{to[1]} (sllp)")
        started = time.monotonic()
        async with channel, trio.open_nursery() as nursery:

            async def drain() -> None:  # keep a task in receive(): timers, the peer's close
                try:
                    async for _ in channel:
                        pass
                except trio.BrokenResourceError:
                    pass
                nursery.cancel_scope.cancel()  # the receiver went away

            nursery.start_soon(drain)
            async for number, captured, data in frames(args):
                await channel.send(FRAME_HEADER.pack(number, captured) + data)
                sent += 1
            nursery.cancel_scope.cancel()
    else:
        stream = await host.open(receiver, FRAMES_PROTOCOL, address=to)
        print(f"connected to {receiver.peer_id.short} at {to[0]}:{to[1]} (stream)")
        started = time.monotonic()
        async with stream:
            async for number, captured, data in frames(args):
                await stream.send_message(FRAME_HEADER.pack(number, captured) + data)
                sent += 1
    seconds = time.monotonic() - started
    print(f"sent {sent} frames in {seconds:.1f} s ({sent / seconds if seconds else 0:.1f} fps)")
    return {"sent": sent, "seconds": seconds}


# -- set-up and demo ----------------------------------------------------------------------------


def load_peer(path: str) -> p2ptls.PeerRecord:
    return p2ptls.PeerRecord.from_dict(json.loads(Path(path).read_text()))


def setup(args: argparse.Namespace) -> None:
    directory = Path(args.directory)
    directory.mkdir(parents=True, exist_ok=True)
    p2ptls.generate_psk(directory / "network.psk")
    for name in ("sender", "receiver"):
        identity = p2ptls.Identity.generate(args.bits)
        identity.save(directory / f"{name}.key")
        record = identity.peer_record(name=name)
        (directory / f"{name}.peer.json").write_text(json.dumps(record.to_dict(), indent=2) + "\n")
        print(f"{name}: {identity.peer_id}  -> {name}.key (secret), {name}.peer.json (public)")
    print(f"network key -> {directory / 'network.psk'} (secret; copy it to both machines)")


async def demo(
    frames_count: int = 90,
    transport: str = "stream",
    fps: float = 30.0,
    size: tuple[int, int] = (640, 480),
    quality: int = 30,
) -> dict[str, Any]:
    """Both ends in this process, fresh RSA-2048 keys: returns the receiver's totals."""
    sender_id, receiver_id = p2ptls.Identity.generate(2048), p2ptls.Identity.generate(2048)
    psk = p2ptls.NetworkKey.generate()
    args = argparse.Namespace(
        camera=None, size=size, quality=quality, fps=fps, frames=frames_count, transport=transport
    )
    receiver_config = p2ptls.HostConfig(
        identity=receiver_id,
        psk=psk,
        peers=[sender_id.record],
        listen=("127.0.0.1", 0),
        stream=STREAM_CONFIG,
    )
    async with p2ptls.open_host(receiver_config) as receiver_host:
        receiver = Receiver(receiver_host, frames_count, 1.0)
        sender_config = p2ptls.HostConfig(
            identity=sender_id, psk=psk, peers=[receiver_id.record], stream=STREAM_CONFIG
        )
        async with p2ptls.open_host(sender_config) as sender:
            sent = await send_frames(sender, receiver_id.record, receiver_host.address, args)
        with trio.move_on_after(5):  # the last frames, then the receiver ends on the close
            await receiver.first_done.wait()
    report = receiver.reports[0]
    return {
        "sent": sent["sent"],
        "received": report.frames,
        "lost": report.lost,
        "p50_ms": percentile(report.all_latencies, 50),
        "p99_ms": percentile(report.all_latencies, 99),
    }


# -- command line -------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit()) or int(width) < 64 or int(height) < 64:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT (at least 64x64), got {text!r}")
    return int(width), int(height)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    make = commands.add_parser("setup", help="write two identities, a network key, peer records")
    make.add_argument("directory")
    make.add_argument("--bits", type=int, default=3072, choices=(2048, 3072, 4096))

    def keys(sub: argparse.ArgumentParser, me: str, other: str) -> None:
        sub.add_argument("--key", required=True, help=f"this side's identity ({me}.key)")
        sub.add_argument("--psk", required=True, help="the network key (network.psk)")
        sub.add_argument(
            "--peer",
            required=True,
            action="append",
            help=f"the other side's public record ({other}.peer.json); repeat for more senders",
        )

    rx = commands.add_parser("receive", help="listen for cameras and report fps and latency")
    rx.add_argument("--listen", type=parse_address, required=True, help="HOST:PORT (port 0: any)")
    keys(rx, "receiver", "sender")
    rx.add_argument("--frames", type=int, help="stop after this many frames")
    rx.add_argument("--once", action="store_true", help="stop when the first sender is done")
    rx.add_argument("--report-every", type=float, default=1.0, help="seconds between reports")

    tx = commands.add_parser("send", help="send camera frames to a receiver")
    tx.add_argument("--to", type=parse_address, required=True, help="the receiver's HOST:PORT")
    keys(tx, "sender", "receiver")

    def sending(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--transport", choices=("stream", "sllp"), default="stream")
        sub.add_argument("--fps", type=float, default=30.0, help="frames a second at most (30)")
        sub.add_argument("--frames", type=int, help="stop after this many frames")
        sub.add_argument("--size", type=parse_size, default=(640, 480), help="WxH (640x480)")
        sub.add_argument("--quality", type=int, default=30, help="JPEG quality (30)")

    sending(tx)
    tx.add_argument("--camera", type=int, help="read this OpenCV camera (0: the first one)")

    run = commands.add_parser("demo", help="sender and receiver in this process")
    sending(run)
    run.set_defaults(frames=90)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "setup":
        setup(args)
    elif args.command == "receive":
        trio.run(receive, args)
    elif args.command == "send":
        trio.run(send, args)
    else:
        result = trio.run(demo, args.frames, args.transport, args.fps, args.size, args.quality)
        print(
            f"demo: sent {result['sent']}, received {result['received']}, lost {result['lost']}, "
            f"latency p50 {result['p50_ms']:.1f} ms p99 {result['p99_ms']:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
