"""The trio SLLP channel: real UDP on 127.0.0.1 (with and without GSO/GRO), the in-process lossy
relay under trio's autojump clock, the lifecycle (close, idle timeout, keep-alives, rekeying, the
stream as lifeline), set-up on a bare SecureStream, and the API's contract (set-up through hosts:
test_sllp_host.py)."""

from __future__ import annotations

import errno
import os
import random
import socket
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

import p2ptls
from p2ptls.sllp import (
    DeliveryMode,
    IdleTimeout,
    KeysUpdated,
    Lifeline,
    LifelineLost,
    Message,
    MessagesLost,
    NegotiationError,
    PeerClosed,
    SllpChannel,
    SllpConfig,
    is_offer,
    open_channel,
)
from p2ptls.sllp import _wire as wire
from p2ptls.sllp.channel import LIFELINE_POLL
from p2ptls.sllp.relay import LinkConditions, UdpRelay, memory_transport_pair
from p2ptls.sllp.testing import channel_pair
from p2ptls.sllp.transport import UdpTransport, gso_supported
from p2ptls.testing import memory_secure_stream_pair
from tests.conftest import identity_pool

SIZES = [0, 1, 1149, 1150, 50_000, 300_000]


def ids() -> tuple[p2ptls.Identity, p2ptls.Identity]:
    pool = identity_pool()
    return pool[0], pool[1]


async def close_all(*channels: SllpChannel) -> None:
    for channel in channels:
        await channel.aclose()


# -- real UDP -------------------------------------------------------------------------------------


@pytest.mark.parametrize("offload", [True, False], ids=["gso-gro", "plain"])
async def test_messages_over_udp(offload: bool) -> None:
    config = SllpConfig(gso=offload, gro=offload, datagram_size=1200)
    a, b = await channel_pair(config, identities=ids())
    try:
        assert isinstance(a.transport, UdpTransport) and isinstance(b.transport, UdpTransport)
        assert a.transport.dont_fragment
        if not offload:
            assert not a.transport.gso and not b.transport.gro
        elif gso_supported(a.transport.socket):
            assert a.transport.gso and b.transport.gro
        payloads = [os.urandom(size) for size in SIZES]
        for payload in payloads:
            await a.send(payload)
        for i, payload in enumerate(payloads):
            message = await b.receive()
            assert (message.message_id, message.data) == (i, payload)
        await b.send(b"reply")
        assert (await a.receive()).data == b"reply"
        sent, received = a.statistics(), b.statistics()
        assert sent.sent == len(SIZES) and received.received == len(SIZES)
        assert received.datagrams_received == sent.datagrams_sent
        assert received.largest_datagram_received == 1200 == a.datagram_size
        if a.transport.gso:  # one system call per batch of up to 64 datagrams
            assert a.transport.send_calls < sent.datagrams_sent / 10
        else:
            assert a.transport.send_calls == sent.datagrams_sent
        if b.transport.gro:
            assert b.transport.receive_calls < received.datagrams_received
    finally:
        await close_all(a, b)


class _RefusingGso:
    """A socket stand-in whose kernel refuses UDP_SEGMENT at send time."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.refused = 0

    def sendmsg(self, *args: Any) -> int:
        self.refused += 1
        raise OSError(errno.EIO, "segmentation offload unavailable")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def fileno(self) -> int:
        return self._sock.fileno()


async def test_gso_refused_at_run_time_falls_back_to_plain_sends() -> None:
    a, b = await channel_pair(SllpConfig(datagram_size=1200), identities=ids())
    transport = a.transport
    assert isinstance(transport, UdpTransport)
    refusing = _RefusingGso(transport.socket)
    try:
        transport.socket = refusing  # type: ignore[assignment]
        transport.gso = True
        payload = os.urandom(100_000)
        await a.send(payload)
        assert (await b.receive()).data == payload
        assert refusing.refused == 1 and not transport.gso
        await a.send(payload)
        assert (await b.receive()).data == payload
        assert refusing.refused == 1
    finally:
        transport.socket = refusing._sock
        await close_all(a, b)


async def test_datagrams_take_the_loopback_path_mtu() -> None:
    a, b = await channel_pair(SllpConfig(max_message_size=2**20), identities=ids())
    try:
        # Loopback's path MTU (65,535 for IPv4) less 28 bytes of IPv4 and UDP headers.
        assert a.max_datagram_payload == a.datagram_size == b.datagram_size == 65507
        payload = os.urandom(2**20)
        await a.send(payload)
        assert (await b.receive()).data == payload
        assert b.statistics().largest_datagram_received == 65507
        assert a.statistics().datagrams_sent == -(-len(payload) // (65507 - wire.OVERHEAD))
    finally:
        await close_all(a, b)


async def test_a_smaller_limit_of_either_side_caps_the_path_mtu() -> None:
    a, b = await channel_pair(SllpConfig(), SllpConfig(max_datagram_payload=9000), identities=ids())
    try:
        assert a.datagram_size == b.datagram_size == a.max_datagram_payload == 9000
        await a.send(bytes(20_000))
        assert (await b.receive()).fragment_size == 9000 - wire.OVERHEAD
    finally:
        await close_all(a, b)


async def test_connection_ids_come_from_the_injected_randomness(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = await channel_pair(
        identities=ids(),
        transports=memory_transport_pair(),
        clock=autojump_clock,
        randomness=random.Random(7).randbytes,
    )
    # Three draws in all (the two proposals, then the answer's own): which side drew first is
    # the scheduler's choice, so the ids are two of the first three.
    draws = random.Random(7)
    first_three = {int.from_bytes(draws.randbytes(8), "big") for _ in range(3)}
    cids = {a.session.parameters.local_connection_id, b.session.parameters.local_connection_id}
    assert len(cids) == 2 and cids <= first_three
    await close_all(a, b)


async def test_ipv6_loopback() -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    a, b = await channel_pair(identities=ids(), local_address=("::1", 0))
    try:
        assert a.transport.local_address[0] == "::1"
        await a.send(b"six" * 1000)
        assert (await b.receive()).data == b"six" * 1000
    finally:
        await close_all(a, b)


async def test_close_with_a_reason_ends_iteration_and_sending() -> None:
    a, b = await channel_pair(identities=ids())
    for i in range(3):
        await a.send(b"%d" % i)
    await a.close(300, "see you")
    got = [message.data async for message in b]  # messages first, then the end
    assert got == [b"0", b"1", b"2"]
    assert b.close_reason is not None and b.close_reason.code == 300
    with pytest.raises(PeerClosed) as info:
        await b.receive()
    assert (info.value.code, info.value.reason) == (300, "see you")
    assert isinstance(info.value, trio.EndOfChannel)
    with pytest.raises(trio.BrokenResourceError) as broken:
        await b.send(b"too late")
    assert isinstance(broken.value.__cause__, PeerClosed)
    with pytest.raises(trio.ClosedResourceError):
        await a.send(b"closed")
    with pytest.raises(trio.ClosedResourceError):
        await a.receive()
    await a.aclose()  # twice is fine
    await b.aclose()
    assert not a.session.has_keys and not b.session.has_keys


async def test_concurrent_send_and_receive_tasks() -> None:
    a, b = await channel_pair(identities=ids())
    count = 200
    got: list[int] = []
    async with trio.open_nursery() as nursery:

        async def receiver() -> None:
            async for message in b:
                got.append(message.message_id)
                if len(got) == count:
                    return

        nursery.start_soon(receiver)
        for i in range(count):
            await a.send(i.to_bytes(4, "big") * 1000)
    assert sorted(got) == list(range(count))
    await close_all(a, b)


async def test_two_receivers_or_two_senders_are_refused() -> None:
    a, b = await channel_pair(identities=ids())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(b.receive)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await b.receive()
        nursery.cancel_scope.cancel()
    await close_all(a, b)


async def test_message_above_the_maximum_is_refused_locally() -> None:
    a, b = await channel_pair(
        SllpConfig(max_message_size=100_000), SllpConfig(max_message_size=10_000), identities=ids()
    )
    assert a.max_message_size == 10_000 and b.max_message_size == 10_000
    with pytest.raises(ValueError):
        await a.send(bytes(10_001))
    await a.send(bytes(10_000))
    assert len((await b.receive()).data) == 10_000
    await close_all(a, b)


async def test_loss_through_the_udp_relay() -> None:
    """Real sockets through the relay: whatever is not delivered is reported lost."""
    config = SllpConfig(reassembly_timeout=0.2)
    ta, tb = UdpTransport.bind(("127.0.0.1", 0)), UdpTransport.bind(("127.0.0.1", 0))
    relay = UdpRelay(
        LinkConditions(drop=0.02, duplicate=0.02, reorder=0.05, seed=3),
        a_address=ta.local_address,
        b_address=tb.local_address,
    )
    a, b = await channel_pair(config, identities=ids(), transports=(ta, tb))
    ta.set_peer(relay.a_side)
    tb.set_peer(relay.b_side)
    total = 150
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.run)
        delivered: set[int] = set()
        lost: set[int] = set()

        async def ticker() -> None:  # later messages reveal the loss of the last ones
            for _ in range(200):
                await a.send(b"tick")
                await trio.sleep(0.02)

        for i in range(total):
            await a.send(bytes([i % 256]) * 20_000)
        nursery.start_soon(ticker)
        with trio.fail_after(20):
            while len(delivered | lost) < total:
                event = await b.receive_event()
                if isinstance(event, Message) and event.message_id < total:
                    assert event.data == bytes([event.message_id % 256]) * 20_000
                    assert event.message_id not in delivered
                    delivered.add(event.message_id)
                elif isinstance(event, MessagesLost):
                    last = min(event.first_id + event.count, total)
                    lost.update(range(event.first_id, last))
        nursery.cancel_scope.cancel()
    assert delivered.isdisjoint(lost) and len(delivered) + len(lost) >= total
    assert len(delivered) >= total // 2
    await close_all(a, b)


# -- the in-process relay under the autojump clock ------------------------------------------------


async def memory_pair(
    clock: trio.testing.MockClock,
    config: SllpConfig | None = None,
    conditions: LinkConditions | None = None,
    answerer_config: SllpConfig | None = None,
) -> tuple[SllpChannel, SllpChannel]:
    transports = memory_transport_pair(conditions)
    return await channel_pair(
        config, answerer_config, identities=ids(), transports=transports, clock=clock
    )


async def run_lossy_transfer(
    clock: trio.testing.MockClock, seed: int, delivery: DeliveryMode = DeliveryMode.UNORDERED
) -> tuple[list[int], list[tuple[int, int]], Any]:
    conditions = LinkConditions(
        drop=0.03, duplicate=0.02, reorder=0.05, delay=0.01, jitter=0.005, seed=seed
    )
    config = SllpConfig(reassembly_timeout=0.5, delivery=delivery)
    a, b = await memory_pair(clock, config, conditions)
    total = 200
    delivered: list[int] = []
    partial: list[tuple[int, int]] = []
    lost: set[int] = set()
    async with trio.open_nursery() as nursery:

        async def sender() -> None:
            for i in range(total):
                await a.send(i.to_bytes(2, "big") * 5_000)  # 10 KB: 9 datagrams
                await trio.sleep(0.001)
            while True:  # later messages reveal a lost tail
                await a.send(b"tick")
                await trio.sleep(0.05)

        nursery.start_soon(sender)
        while len(delivered) + len(lost) + len(partial) < total:
            event = await b.receive_event()
            if isinstance(event, Message) and event.message_id < total:
                if event.complete:
                    assert event.data == event.message_id.to_bytes(2, "big") * 5_000
                    delivered.append(event.message_id)
                else:
                    partial.append((event.message_id, len(event.missing)))
            elif isinstance(event, MessagesLost):
                lost.update(
                    i for i in range(event.first_id, event.first_id + event.count) if i < total
                )
        nursery.cancel_scope.cancel()
    assert len(set(delivered)) == len(delivered)  # never twice
    assert not lost & set(delivered)
    stats = b.statistics()
    await close_all(a, b)
    return delivered, partial, (sorted(lost), stats)


async def test_lossy_relay_every_message_is_delivered_whole_or_reported_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    delivered, partial, (lost, stats) = await run_lossy_transfer(autojump_clock, seed=11)
    assert partial == []
    assert len(delivered) + len(lost) == 200
    assert 100 < len(delivered) < 200 and lost  # 3% of 9 datagrams: about a quarter lost
    assert stats.replayed > 0  # the duplicates were refused
    assert stats.lost >= len(lost) and stats.reassembly_timeouts > 0


async def test_lossy_relay_is_deterministic(autojump_clock: trio.testing.MockClock) -> None:
    first = await run_lossy_transfer(autojump_clock, seed=5)
    second = await run_lossy_transfer(autojump_clock, seed=5)
    assert first[0] == second[0] and first[2][0] == second[2][0]


async def test_lossy_relay_partial_mode(autojump_clock: trio.testing.MockClock) -> None:
    delivered, partial, (lost, stats) = await run_lossy_transfer(
        autojump_clock, seed=11, delivery=DeliveryMode.PARTIAL
    )
    assert partial and all(0 < missing < 9 for _, missing in partial)
    assert len(delivered) + len(partial) + len(lost) == 200
    assert stats.partial == len([p for p in partial])


async def test_ordered_mode_over_a_reordering_link(autojump_clock: trio.testing.MockClock) -> None:
    conditions = LinkConditions(reorder=0.3, reorder_delay=0.02, seed=8)
    config = SllpConfig(delivery=DeliveryMode.ORDERED)
    a, b = await memory_pair(autojump_clock, config, conditions)
    for i in range(100):
        await a.send(b"m%d" % i)
        await trio.sleep(0.001)
    seen: list[tuple[int, bytes]] = []
    with trio.move_on_after(1) as quiet:  # a second after the last send, everything has landed
        async for message in b:
            seen.append((message.message_id, message.data))
    assert quiet.cancelled_caught  # the channel is still open: the wait ended, not the stream
    delivered = [message_id for message_id, _ in seen]
    assert all(data == b"m%d" % message_id for message_id, data in seen)
    assert delivered == sorted(set(delivered))  # in order, none twice
    assert 50 <= len(seen) < 100  # most arrive; those overtaken are dropped, not delivered late
    assert b.statistics().late == 100 - len(seen)
    await close_all(a, b)


async def test_idle_timeout_when_the_peer_goes_silent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = SllpConfig(idle_timeout=5.0, keepalive_interval=1.0)
    a, b = await memory_pair(autojump_clock, config)
    start = trio.current_time()
    with pytest.raises(IdleTimeout):  # b never receives, so it never sends keep-alives
        await a.receive()
    assert trio.current_time() - start == pytest.approx(5.0, abs=0.1)
    assert isinstance(IdleTimeout("x"), trio.BrokenResourceError)
    with pytest.raises(PeerClosed) as info:  # a said why it left
        await b.receive()
    assert info.value.code == 1
    await close_all(a, b)


async def test_keepalives_keep_a_quiet_channel_open(autojump_clock: trio.testing.MockClock) -> None:
    config = SllpConfig(idle_timeout=3.0, keepalive_interval=1.0)
    a, b = await memory_pair(autojump_clock, config)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.receive)
        nursery.start_soon(b.receive)
        await trio.sleep(60)  # virtual time: a minute of silence from the application
        nursery.cancel_scope.cancel()
    assert a.close_reason is None and b.close_reason is None
    assert a.statistics().keepalives_sent >= 55 and b.statistics().keepalives_sent >= 55
    await a.send(b"still here")
    assert (await b.receive()).data == b"still here"
    await close_all(a, b)


async def test_lifeline_end_ends_the_channel(autojump_clock: trio.testing.MockClock) -> None:
    a, b = await memory_pair(autojump_clock)
    await b.stream.aclose()  # the stream ends without an SLLP close
    with pytest.raises(LifelineLost) as lost:
        await a.receive()
    assert isinstance(lost.value.__cause__, trio.EndOfChannel)
    assert a.close_reason is not None and a.close_reason.code == 2
    with pytest.raises(trio.BrokenResourceError):
        await a.send(b"x")
    with pytest.raises((LifelineLost, PeerClosed)):
        await b.receive()
    await close_all(a, b)


class CuttableLifeline:
    """A lifeline the test cuts: its end is seen at once, as a logical stream's is."""

    def __init__(self, stream: Lifeline) -> None:
        self.stream = stream
        self.server_side = stream.server_side
        self.remote_peer = stream.remote_peer
        self.cut = False
        self.looks = 0

    def export_keying_material(self, label: str, context: bytes, length: int) -> bytes:
        return self.stream.export_keying_material(label, context, length)

    async def send_message(self, message: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_message(self) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        self.looks += 1
        if self.cut:
            raise trio.BrokenResourceError("cut by the test")
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self.stream.aclose()


async def test_a_busy_receiver_looks_at_its_lifeline_every_poll(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Datagrams every LIFELINE_POLL / 5 never leave the receiver quiet for LIFELINE_POLL; it
    still watches its lifeline, and sees it end within one LIFELINE_POLL (the sender, which
    never receives, never closes)."""
    a, b = await memory_pair(autojump_clock)
    lifeline = CuttableLifeline(b.stream)
    b.stream = lifeline
    async with trio.open_nursery() as nursery:

        async def frames() -> None:
            while True:
                await a.send(b"frame")
                await trio.sleep(LIFELINE_POLL / 5)

        nursery.start_soon(frames)
        for _ in range(20):  # a second of frames: the lifeline is looked at, and holds
            await b.receive()
        lifeline.cut = True
        cut_at = trio.current_time()
        with trio.fail_after(1), pytest.raises(LifelineLost) as lost:
            while True:
                await b.receive()
        assert trio.current_time() - cut_at <= LIFELINE_POLL + 0.001
        assert isinstance(lost.value.__cause__, trio.BrokenResourceError)
        nursery.cancel_scope.cancel()
    await close_all(a, b)


async def test_every_look_at_the_lifeline_reaches_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The quick look of a busy receiver is never cancelled before the stream was asked."""
    a, b = await memory_pair(autojump_clock)
    lifeline = CuttableLifeline(b.stream)
    b.stream = lifeline
    for _ in range(100):
        await b._look_at_lifeline()
    assert lifeline.looks == 100 and b.close_reason is None
    lifeline.cut = True
    await b._look_at_lifeline()
    assert b.close_reason is not None and b.close_reason.code == 2
    await close_all(a, b)


async def test_close_reaches_the_peer_even_if_the_close_datagram_is_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = await memory_pair(autojump_clock)
    assert a.transport is not None
    a.transport.outgoing.conditions = LinkConditions(drop=1.0)  # type: ignore[attr-defined]
    await a.close(77, "by stream")
    with pytest.raises(PeerClosed) as info:
        await b.receive()
    assert info.value.code == 77 and not b.session.has_keys
    await b.aclose()


async def test_rekeying_over_the_channel(autojump_clock: trio.testing.MockClock) -> None:
    config = SllpConfig(rekey_after=16)
    # Reordering never spans more than one epoch here (the previous key is all that is kept).
    conditions = LinkConditions(reorder=0.1, reorder_delay=0.003, seed=4)
    a, b = await memory_pair(autojump_clock, config, conditions)
    for i in range(50):
        await a.send(b"r" * (i * 100))
        await trio.sleep(0.002)
    got: list[int] = []
    epochs: list[int] = []
    while len(got) < 50:
        event = await b.receive_event()
        if isinstance(event, Message):
            got.append(event.message_id)
        elif isinstance(event, KeysUpdated):
            epochs.append(event.epoch)
    assert sorted(got) == list(range(50))
    assert epochs == list(range(1, a.session.send_epoch + 1)) and len(epochs) >= 5
    assert b.statistics().failed_authentication == 0
    await close_all(a, b)


# -- set-up ----------------------------------------------------------------------------------------


async def test_setup_refuses_a_stream_message_that_is_not_an_offer() -> None:
    client, server = memory_secure_stream_pair(identities=ids())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_message, b"hello, not an offer")
        with pytest.raises(NegotiationError):
            await open_channel(server)
    await client.aclose()
    await server.aclose()


async def test_setup_times_out(autojump_clock: trio.testing.MockClock) -> None:
    client, server = memory_secure_stream_pair(identities=ids())
    autojump_clock.autojump_threshold = float("inf")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    autojump_clock.autojump_threshold = 0
    with pytest.raises(NegotiationError, match="setup_timeout"):
        await open_channel(client, config=SllpConfig(setup_timeout=3.0))
    offer = await server.receive_message()
    assert is_offer(offer)
    await client.aclose()
    await server.aclose()
