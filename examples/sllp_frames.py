"""Camera-style frames over SLLP: alice sends a few hundred 50 KB frames to bob on 127.0.0.1.

Run it as written:  python examples/sllp_frames.py  [--frames N] [--size BYTES] [--fps FPS]

Both peers run p2ptls hosts (fresh identities, a fresh network key). Bob accepts SLLP channels
(``sllp.serve_datagrams``); alice opens one (``sllp.connect_datagram``), set up on a logical stream
of ``"p2ptls/sllp/1"`` on the one connection her host keeps to bob's. Each frame travels as about
44 encrypted, authenticated UDP datagrams; bob gets each frame whole or learns it was lost, and
never waits for a retransmission.
"""

from __future__ import annotations

import argparse
import hashlib
import struct

import trio

import p2ptls
from p2ptls import sllp

FRAME_HEADER = struct.Struct(">Id")  # frame number, send time


def synthetic_frame(number: int, size: int) -> bytes:
    """A frame whose content bob can check: its number, the send time and a hash-derived fill."""
    fill = hashlib.sha256(number.to_bytes(4, "big")).digest()
    body = (fill * (size // len(fill) + 1))[: size - FRAME_HEADER.size]
    return FRAME_HEADER.pack(number, trio.current_time()) + body


async def bob_receives(channel: sllp.SllpChannel, report: dict[str, object]) -> None:
    """Bob's handler of one channel (``serve_datagrams`` closes it when this returns)."""
    delivered, damaged = 0, 0
    async for message in channel:  # ends when alice closes the channel
        number, _sent = FRAME_HEADER.unpack_from(message.data)
        if message.data != synthetic_frame_checked(number, len(message.data), message.data):
            damaged += 1
        delivered += 1
    report.update(delivered=delivered, damaged=damaged, stats=channel.statistics())


def synthetic_frame_checked(number: int, size: int, received: bytes) -> bytes:
    """The frame alice would have sent (with the send time copied from what arrived)."""
    fill = hashlib.sha256(number.to_bytes(4, "big")).digest()
    body = (fill * (size // len(fill) + 1))[: size - FRAME_HEADER.size]
    return received[: FRAME_HEADER.size] + body


async def main(frames: int = 300, size: int = 50_000, fps: float = 0.0) -> dict[str, object]:
    alice_id, bob_id = p2ptls.Identity.generate(2048), p2ptls.Identity.generate(2048)
    psk = p2ptls.NetworkKey.generate()
    report: dict[str, object] = {"frames": frames}
    bob_config = p2ptls.HostConfig(
        identity=bob_id,
        psk=psk,
        peers=(alice_id.record,),
        listen=("127.0.0.1", 0),
    )
    received = trio.Event()

    async def on_channel(channel: sllp.SllpChannel) -> None:
        try:
            await bob_receives(channel, report)
        finally:
            received.set()

    async with p2ptls.open_host(bob_config) as bob:
        sllp.serve_datagrams(bob, on_channel)
        alice_config = p2ptls.HostConfig(
            identity=alice_id,
            psk=psk,
            peers=(bob.peer_record(),),
        )
        async with p2ptls.open_host(alice_config) as alice:
            channel = await sllp.connect_datagram(alice, bob_id.peer_id)
            print(
                f"alice -> bob: {frames} frames of {size} bytes, "
                f"{-(-size // (channel.datagram_size - 51))} datagrams each"
            )
            async with channel:
                for number in range(frames):
                    await channel.send(synthetic_frame(number, size))
                    if fps:
                        await trio.sleep(1 / fps)
                sent = channel.statistics()
            report["datagrams_sent"] = sent.datagrams_sent
        await received.wait()  # bob's count, after alice's close
    stats = report["stats"]
    assert isinstance(stats, sllp.Statistics)
    lost = frames - int(report["delivered"])  # type: ignore[call-overload]
    report["lost"] = lost
    print(
        f"bob: delivered {report['delivered']}/{frames} frames, lost {lost}, "
        f"damaged {report['damaged']}; {stats.datagrams_received} datagrams authenticated, "
        f"{stats.failed_authentication} failed authentication"
    )
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", type=int, default=50_000)
    parser.add_argument("--fps", type=float, default=0.0, help="pace the frames (0: flat out)")
    args = parser.parse_args()
    trio.run(main, args.frames, args.size, args.fps)
