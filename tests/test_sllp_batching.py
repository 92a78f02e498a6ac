"""SLLP batching: several messages sealed together into trains of equal-sized datagrams
(``Session.send_messages``, ``SllpChannel.send_many``), a coalesced read taken in one call
(``Session.receive_datagrams_untrusted``), and ``SllpChannel.receive_many``: the same bytes on the
wire and the same checks per datagram as one by one, over the lossy in-process relay and over
real UDP with and without GSO/GRO."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

import p2ptls
from p2ptls.sllp import (
    DatagramTrain,
    DeliveryMode,
    Message,
    PeerClosed,
    SllpConfig,
)
from p2ptls.sllp import _wire as wire
from p2ptls.sllp._sealing import SendBuffer
from p2ptls.sllp.relay import LinkConditions, memory_transport_pair
from p2ptls.sllp.testing import RecordingSession, channel_pair, seal_datagram, session_pair
from p2ptls.sllp.transport import UdpTransport, gso_supported
from tests.conftest import identity_pool

FRAGMENT = 1200 - wire.OVERHEAD  # 1149 payload bytes per datagram by default


def ids() -> tuple[p2ptls.Identity, p2ptls.Identity]:
    pool = identity_pool()
    return pool[0], pool[1]


def drain(session: RecordingSession) -> list[Message]:
    return [event for event in session.take_events() if isinstance(event, Message)]


def wire_bytes(trains: list[DatagramTrain]) -> bytes:
    return b"".join(bytes(train.data) for train in trains)


def shape(trains: list[DatagramTrain]) -> list[tuple[int, int, int]]:
    return [(train.count, train.segment_size, len(train)) for train in trains]


# -- sealing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sizes",
    [
        [64] * 100,
        [0, 1, 64, 64, 1000, 1149, 1150, 3000, 64],
        [50_000, 50_000, 10, 10, 10],
        [2 * FRAGMENT, 2 * FRAGMENT, FRAGMENT, 7],
    ],
    ids=["equal", "mixed", "large-then-small", "exact-fragments"],
)
def test_send_messages_is_send_message_one_by_one(sizes: list[int]) -> None:
    batch_sender, batch_receiver = session_pair()
    single_sender, _ = session_pair()
    payloads = [os.urandom(size) for size in sizes]
    trains = batch_sender.send_messages(payloads, 0.0)
    singles = [single_sender.send_message(payload, 0.0) for payload in payloads]
    assert wire_bytes(trains) == wire_bytes(singles)  # same ids, sequence numbers, nonces
    assert sum(train.count for train in trains) == sum(train.count for train in singles)
    for train in trains:  # every train is equal-sized datagrams, the last maybe shorter
        datagrams = train.datagrams()
        assert len(datagrams) == train.count
        assert all(len(d) == train.segment_size for d in datagrams[:-1])
        assert 0 < len(datagrams[-1]) <= train.segment_size
    assert batch_sender.statistics() == single_sender.statistics()
    for train in trains:
        batch_receiver.receive_datagrams_untrusted(train.data, train.segment_size, 0.0)
    got = drain(batch_receiver)
    assert [(m.message_id, m.data) for m in got] == list(enumerate(payloads))


def test_trains_follow_datagram_sizes() -> None:
    sender, _ = session_pair()
    # 100 messages of one size: one train (the transport cuts it into sends of 64).
    assert shape(sender.send_messages([bytes(64)] * 100, 0.0)) == [(100, 115, 11_500)]
    # A shorter datagram ends a train; a longer one starts a new one.
    trains = sender.send_messages([bytes(100), bytes(100), bytes(50), bytes(100), bytes(200)], 0.0)
    assert shape(trains) == [(3, 151, 403), (1, 151, 151), (1, 251, 251)]
    # Full datagrams of two large messages run on; each message's short tail ends a train.
    trains = sender.send_messages([bytes(2 * FRAGMENT + 1), bytes(FRAGMENT), bytes(1)], 0.0)
    assert shape(trains) == [(3, 1200, 2452), (2, 1200, 1252)]


def test_send_messages_is_all_or_nothing() -> None:
    sender, receiver = session_pair(SllpConfig(max_message_size=10_000))
    with pytest.raises(ValueError):
        sender.send_messages([b"fine", bytes(10_001)], 0.0)
    assert sender.statistics().sent == 0 and sender.statistics().datagrams_sent == 0
    trains = sender.send_messages([b"first"], 0.0)
    receiver.receive_datagrams_untrusted(trains[0].data, trains[0].segment_size, 0.0)
    assert [(m.message_id, m.data) for m in drain(receiver)] == [(0, b"first")]
    assert sender.send_messages([], 0.0) == []


def test_send_messages_rekeys_mid_batch() -> None:
    config = SllpConfig(rekey_after=16)
    sender, receiver = session_pair(config)
    single, _ = session_pair(config)
    payloads = [os.urandom(40) for _ in range(50)] + [os.urandom(30_000), os.urandom(5)]
    trains = sender.send_messages(payloads, 0.0)
    assert wire_bytes(trains) == wire_bytes([single.send_message(p, 0.0) for p in payloads])
    assert sender.send_epoch == 4  # 50 + 27 + 1 datagrams: the large message spans a rekey
    for train in trains:
        receiver.receive_datagrams_untrusted(train.data, train.segment_size, 0.0)
    assert [m.data for m in drain(receiver)] == payloads
    assert receiver.receive_epoch == 4


# -- receiving a coalesced read -------------------------------------------------------------------


def test_one_bad_datagram_in_a_coalesced_read_harms_no_other() -> None:
    sender, receiver = session_pair()
    good = sender.send_messages([bytes([i]) * 64 for i in range(6)], 0.0)[0].datagrams()
    segment = len(good[0])
    forged = bytearray(good[1])
    forged[-1] ^= 1  # bad tag
    other_cid = bytearray(good[2])
    other_cid[2] ^= 0xFF
    wrong_version = bytearray(seal_datagram(sender, wire.encode_body(wire.TYPE_DATA, 9, 0, 1, b"")))
    wrong_version[0] = 2
    read = b"".join(
        [good[0], bytes(forged), bytes(other_cid), good[3], good[0], good[4], good[5][:-20]]
    )
    receiver.receive_datagrams_untrusted(read, segment, 0.0)
    receiver.receive_datagrams_untrusted(bytes(wrong_version), len(wrong_version), 0.0)
    assert [m.message_id for m in drain(receiver)] == [0, 3, 4]
    stats = receiver.statistics()
    assert stats.failed_authentication == 2  # the forged one and the truncated last one
    assert stats.unknown_connection_id == 1 and stats.replayed == 1 and stats.malformed == 1
    assert stats.datagrams_received == 3
    # The genuine datagrams refused above (forged, cut) were never accepted: they still count.
    receiver.receive_datagrams_untrusted(good[1] + good[5], segment, 0.0)
    assert [m.message_id for m in drain(receiver)] == [1, 5]


def test_degenerate_reads_are_dropped() -> None:
    _, receiver = session_pair()
    receiver.receive_datagrams_untrusted(b"", 115, 0.0)
    receiver.receive_datagrams_untrusted(bytes(200), 0, 0.0)
    receiver.receive_datagram_untrusted(b"", 0.0)
    receiver.receive_datagrams_untrusted(bytes(120), 40, 0.0)  # three below the minimum
    assert receiver.statistics().malformed == 6
    assert drain(receiver) == []


def test_a_close_in_the_middle_of_a_read_drops_the_rest_unread() -> None:
    sender, receiver = session_pair()
    before = sender.send_messages([bytes(64)] * 2, 0.0)[0].datagrams()
    after = seal_datagram(sender, wire.encode_body(wire.TYPE_DATA, 2, 0, 1, bytes(64)))
    sender.close(20, "x" * 62)  # as long as the others, so one read can hold it
    (close,) = sender.datagrams_to_send()
    assert len(before[0]) == len(after) == len(close.data) == 115
    read = before[0] + bytes(close.data) + after + before[1]
    receiver.receive_datagrams_untrusted(read, 115, 0.0)
    assert receiver.closed is not None and receiver.closed.code == 20
    stats = receiver.statistics()
    assert stats.received == 1 and stats.unknown_connection_id == 2
    assert stats.datagrams_received == 2


def test_middle_fragment_completing_a_message_out_of_order() -> None:
    sender, receiver = session_pair()
    payload = os.urandom(5 * FRAGMENT)
    datagrams = sender.send_message(payload, 0.0).datagrams()
    order = [0, 4, 1, 3, 1, 2]  # the last to arrive is a middle fragment; one duplicate
    for index in order:
        receiver.receive_datagram_untrusted(datagrams[index], 0.0)
    got = drain(receiver)
    assert [(m.message_id, m.data) for m in got] == [(0, payload)]
    assert receiver.statistics().replayed == 1


def test_middle_fragments_of_a_message_past_the_message_window_are_late() -> None:
    config = SllpConfig(max_reassembly_messages=4)
    sender, receiver = session_pair(config)
    first = sender.send_message(bytes(3 * FRAGMENT), 0.0).datagrams()
    receiver.receive_datagram_untrusted(first[0], 0.0)  # message 0 starts, incomplete
    # Message ids jump far ahead (an authenticated peer may): message 0 falls out of the window.
    body = wire.encode_body(wire.TYPE_DATA, 70_000, 0, 1, b"x")
    receiver.receive_datagram_untrusted(seal_datagram(sender, body), 0.0)
    receiver.receive_datagram_untrusted(first[1], 0.0)
    receiver.receive_datagram_untrusted(first[2], 0.0)
    got = drain(receiver)
    assert [m.message_id for m in got] == [70_000]
    assert receiver.statistics().late >= 2


# -- channels ----------------------------------------------------------------------------------


async def test_send_many_and_receive_many_over_a_lossy_link(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conditions = LinkConditions(drop=0.05, duplicate=0.05, reorder=0.1, delay=0.01, seed=3)
    config = SllpConfig(reassembly_timeout=0.2)
    a, b = await channel_pair(
        config, identities=ids(), transports=memory_transport_pair(conditions), clock=autojump_clock
    )
    payloads = [os.urandom(size) for size in [64] * 300 + [3000] * 20]
    received: dict[int, bytes] = {}
    async with trio.open_nursery() as nursery:

        async def receiver() -> None:
            while True:
                for message in await b.receive_many(max_messages=50):
                    assert len(received) < len(payloads)
                    received[message.message_id] = message.data

        nursery.start_soon(receiver)
        for start in range(0, len(payloads), 64):
            await a.send_many(payloads[start : start + 64])
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert 0.8 * len(payloads) < len(received) < len(payloads)
    assert all(payloads[i] == data for i, data in received.items())
    stats = b.statistics()
    assert stats.received == len(received) and stats.replayed > 0
    await a.aclose()
    await b.aclose()


async def test_receive_many_returns_what_came_before_the_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = await channel_pair(
        identities=ids(), transports=memory_transport_pair(), clock=autojump_clock
    )
    await a.send_many([b"one", b"two", b"three"])
    await a.close(20, "done")
    got = await b.receive_many()
    assert [m.data for m in got] == [b"one", b"two", b"three"]
    with pytest.raises(PeerClosed):
        await b.receive_many()
    with pytest.raises(PeerClosed):
        await b.receive_many()
    with pytest.raises(ValueError):
        await b.receive_many(0)
    await b.aclose()


async def test_receive_many_limit_and_order(autojump_clock: trio.testing.MockClock) -> None:
    config = SllpConfig(delivery=DeliveryMode.ORDERED)
    a, b = await channel_pair(
        config, identities=ids(), transports=memory_transport_pair(), clock=autojump_clock
    )
    await a.send_many([b"%d" % i for i in range(10)])
    first = await b.receive_many(max_messages=4)
    rest = await b.receive_many()
    assert [m.message_id for m in first] == [0, 1, 2, 3]
    assert [m.message_id for m in rest] == list(range(4, 10))
    await a.aclose()
    await b.aclose()


@pytest.mark.parametrize("offload", [True, False], ids=["gso-gro", "plain"])
async def test_send_many_over_udp(offload: bool) -> None:
    config = SllpConfig(gso=offload, gro=offload, datagram_size=1200)
    a, b = await channel_pair(config, identities=ids())
    try:
        ta, tb = a.transport, b.transport
        assert isinstance(ta, UdpTransport) and isinstance(tb, UdpTransport)
        with_offload = offload and gso_supported(ta.socket)
        assert ta.gso == tb.gro == with_offload
        payloads = [os.urandom(64) for _ in range(128)] + [os.urandom(1000) for _ in range(61)]
        payloads += [os.urandom(50_000), b""]
        await a.send_many(payloads)
        got: list[Message] = []
        while len(got) < len(payloads):
            got.extend(await b.receive_many())
        assert [(m.message_id, m.data) for m in got] == list(enumerate(payloads))
        datagrams = a.statistics().datagrams_sent
        assert b.statistics().datagrams_received == datagrams == 128 + 61 + 44 + 1
        if with_offload:  # 2 + 1 offload sends for the small ones, 1 for the large message
            assert ta.send_calls <= 2 + 1 + 1 + 1
            assert tb.receive_calls < datagrams
        else:
            assert ta.send_calls == tb.receive_calls == datagrams
    finally:
        await a.aclose()
        await b.aclose()


async def test_datagrams_too_large_for_offload_go_one_by_one() -> None:
    config = SllpConfig(datagram_size=60_000, max_message_size=200_000)
    a, b = await channel_pair(config, identities=ids())
    try:
        payload = os.urandom(150_000)  # three datagrams of up to 60,000 bytes
        await a.send(payload)
        assert (await b.receive()).data == payload
        assert isinstance(a.transport, UdpTransport) and a.transport.send_calls == 3
    finally:
        await a.aclose()
        await b.aclose()


def test_a_reused_send_buffer_seals_the_same_datagrams() -> None:
    a, _ = session_pair()
    reference, _ = session_pair()
    buffer = SendBuffer()
    small = a.send_message(b"x" * 3000, 0.0, into=buffer)
    small_bytes = bytes(reference.send_message(b"x" * 3000, 0.0).data)
    assert bytes(small.data) == small_bytes
    first = buffer.take(0)
    big = a.send_message(b"y" * 9000, 0.0, into=buffer)  # larger: a new buffer...
    assert buffer.take(0) is not first
    assert bytes(big.data) == bytes(reference.send_message(b"y" * 9000, 0.0).data)
    assert bytes(small.data) == small_bytes  # ...so the views of the old one stay valid
    second = buffer.take(0)
    again = a.send_message(b"z" * 100, 0.0, into=buffer)  # smaller: the same buffer
    assert buffer.take(0) is second and len(again.data) == 100 + wire.OVERHEAD
    assert bytes(again.data) == bytes(reference.send_message(b"z" * 100, 0.0).data)
