"""Datagram sizes: each side sends datagrams sized from its path MTU (at most the channel's limit),
the receiver takes any fragment size per message, and a channel whose path shrinks moves to the
smaller size and sends again. Deterministic: sans-IO sessions, and channels on in-memory
transports whose path limit the test sets (the real path MTU is in ``test_sllp_netns.py`` and
``test_sllp_channel.py``)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import p2ptls
from p2ptls.sllp import (
    DatagramTooLarge,
    DeliveryMode,
    Event,
    LossReason,
    Message,
    MessagesLost,
    Session,
    SllpConfig,
)
from p2ptls.sllp import _wire as wire
from p2ptls.sllp.channel import _messages_sent
from p2ptls.sllp.relay import memory_transport_pair
from p2ptls.sllp.testing import FragmentFeeder, RecordingSession, channel_pair, session_pair
from tests.conftest import identity_pool


def ids() -> tuple[p2ptls.Identity, p2ptls.Identity]:
    return identity_pool()[0], identity_pool()[1]


def drain(session: RecordingSession) -> list[Event]:
    return session.take_events()


def deliver(sender: Session, receiver: Session, data: bytes) -> None:
    for datagram in sender.send_message(data, 0.0).datagrams():
        receiver.receive_datagram_untrusted(datagram, 0.0)


# -- the session -----------------------------------------------------------------------------------


def test_a_session_sends_1200_byte_datagrams_until_told_the_path() -> None:
    a, _ = session_pair()
    assert a.parameters.datagram_size == wire.MAX_DATAGRAM_PAYLOAD
    assert a.send_datagram_size == wire.DEFAULT_DATAGRAM_PAYLOAD
    configured, _ = session_pair(SllpConfig(datagram_size=5000))
    assert configured.send_datagram_size == 5000
    capped, _ = session_pair(SllpConfig(datagram_size=5000), SllpConfig(max_datagram_payload=900))
    assert capped.send_datagram_size == 900


def test_the_send_size_is_capped_by_the_limit_and_bounded_below() -> None:
    a, _ = session_pair(SllpConfig(max_datagram_payload=9000))
    assert a.set_send_datagram_size(65507) == 9000 == a.send_datagram_size
    assert a.set_send_datagram_size(300) == 300
    with pytest.raises(ValueError, match="minimum"):
        a.set_send_datagram_size(wire.MIN_DATAGRAM_PAYLOAD - 1)
    with pytest.raises(ValueError, match="datagram_size"):
        SllpConfig(datagram_size=wire.MAX_DATAGRAM_PAYLOAD + 1)


def test_each_side_sends_its_own_size_and_the_receiver_takes_them_all() -> None:
    a, b = session_pair()
    a.set_send_datagram_size(65507)
    b.set_send_datagram_size(700)
    payload = bytes(range(256)) * 1000
    deliver(a, b, payload)
    deliver(b, a, payload)
    a.set_send_datagram_size(256)  # the smallest: fragments of 205 bytes
    deliver(a, b, payload)
    got_b = [(e.data, e.fragment_size) for e in drain(b) if isinstance(e, Message)]
    got_a = [(e.data, e.fragment_size) for e in drain(a) if isinstance(e, Message)]
    assert got_b == [(payload, 65507 - wire.OVERHEAD), (payload, wire.MIN_FRAGMENT)]
    assert got_a == [(payload, 700 - wire.OVERHEAD)]
    assert b.statistics().malformed == a.statistics().malformed == 0


def test_non_final_fragments_of_one_message_share_one_size() -> None:
    a, b = session_pair(SllpConfig(reassembly_timeout=60.0))
    send = FragmentFeeder(a, b)
    send(0, 0, 3, 1000)
    send(0, 1, 3, 999)  # a second size within the message: dropped
    assert b.statistics().malformed == 1
    send(0, 1, 3, 1000)
    send(0, 2, 3, 1001)  # a final fragment above the message's fragment size: dropped
    assert b.statistics().malformed == 2
    send(0, 2, 3, 1000)
    assert [(e.message_id, len(e.data)) for e in drain(b) if isinstance(e, Message)] == [(0, 3000)]


def test_a_final_fragment_that_came_first_is_held_to_the_size_learned_later() -> None:
    a, b = session_pair(SllpConfig(max_message_size=5000, reassembly_timeout=60.0))
    send = FragmentFeeder(a, b)
    send(0, 2, 3, 800)
    send(0, 0, 3, 700)  # the final fragment (800) cannot follow 700-byte fragments: dropped
    assert b.statistics().malformed == 1
    send(0, 0, 3, 2101)  # 2 x 2101 + 800 > 5000: dropped
    assert b.statistics().malformed == 2
    send(0, 0, 3, 2000)
    send(0, 1, 3, 2000)
    assert [len(e.data) for e in drain(b) if isinstance(e, Message)] == [4800]


def test_middle_fragments_after_a_final_one_are_held_to_the_minimum_and_one_size() -> None:
    """The final fragment came first, so the message's fragment size is not known yet: empty or
    undersized middle fragments are still refused (not slipped in by a fast path)."""
    a, b = session_pair(SllpConfig(max_message_size=5000, reassembly_timeout=60.0))
    send = FragmentFeeder(a, b)
    send(0, 3, 4, 10)  # the final fragment first
    send(0, 1, 4, 0)  # an empty middle fragment: below MIN_FRAGMENT
    send(0, 2, 4, 0)
    assert b.statistics().malformed == 2
    send(0, 0, 4, wire.MIN_FRAGMENT)
    send(0, 1, 4, wire.MIN_FRAGMENT)
    send(0, 2, 4, wire.MIN_FRAGMENT)
    assert [len(e.data) for e in drain(b) if isinstance(e, Message)] == [3 * wire.MIN_FRAGMENT + 10]


@pytest.mark.parametrize(
    ("index", "count", "size"),
    [
        (0, 2, wire.MIN_FRAGMENT - 1),  # a non-final fragment below the smallest allowed
        (0, 2, 1200 - wire.OVERHEAD + 1),  # above the channel's limit less the overhead
        (0, 5, 300),  # 4 x 300 + 1 > 1000: more than max_message_size
        (4, 5, 1000 - 4 * wire.MIN_FRAGMENT + 1),  # even with the smallest fragment size
    ],
)
def test_fragment_sizes_out_of_range_are_dropped(index: int, count: int, size: int) -> None:
    config = SllpConfig(max_datagram_payload=1200, max_message_size=1000)
    a, b = session_pair(config)
    a._datagram_size = a._fragment_size = 65507  # a peer that ignores the limits
    a._scratch = bytearray(65507)
    a._scratch_view = memoryview(a._scratch)
    FragmentFeeder(a, b)(0, index, count, size)
    stats = b.statistics()
    assert stats.malformed + stats.in_reassembly == 1 and stats.in_reassembly == 0


def test_partial_delivery_fills_gaps_with_the_message_s_own_fragment_size() -> None:
    config = SllpConfig(delivery=DeliveryMode.PARTIAL, reassembly_timeout=1.0)
    a, b = session_pair(config)
    send = FragmentFeeder(a, b)
    send(0, 0, 3, 400)
    send(0, 2, 3, 10)  # fragment 1 never comes
    send(1, 2, 3, 10)  # nothing but the final fragment: filled at the peer's latest size
    b.handle_timers(1.0)
    messages = [e for e in drain(b) if isinstance(e, Message)]
    assert [(m.message_id, m.missing, len(m.data), m.fragment_size) for m in messages] == [
        (0, (1,), 810, 400),
        (1, (0, 1), 810, 400),
    ]


def test_messages_wholly_within_a_sent_prefix() -> None:
    batch = [b"a" * 10, b"b" * 3000, b"", b"c" * 10]
    # 61 + (3000 + 3 x 51 = 3153) + 51 + 61 bytes, with 1149-byte fragments
    assert [_messages_sent(batch, 1149, sent) for sent in (0, 60, 61, 3213, 3214, 3265)] == [
        0,
        0,
        1,
        1,
        2,
        3,
    ]
    assert _messages_sent(batch, 1149, 10**6) == 4


# -- channels whose path shrinks -------------------------------------------------------------------


async def memory_channels(
    clock: trio.testing.MockClock, path: int, config: SllpConfig | None = None
) -> tuple[p2ptls.sllp.SllpChannel, p2ptls.sllp.SllpChannel]:
    transports = memory_transport_pair()
    transports[0].path_limit = path
    return await channel_pair(config, identities=ids(), transports=transports, clock=clock)


async def test_a_channel_takes_its_path_size_and_follows_it_down(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = await memory_channels(autojump_clock, path=1000)
    assert a.datagram_size == 1000 and b.datagram_size == wire.DEFAULT_DATAGRAM_PAYLOAD
    await a.send(bytes(5000))
    first = await b.receive()
    a.transport.path_limit = 700  # type: ignore[attr-defined]
    await a.send(b"x" * 5000)  # refused at 1000 bytes: sent again in 700-byte datagrams
    second = await b.receive()
    assert a.datagram_size == 700
    assert [(m.message_id, m.data, m.fragment_size) for m in (first, second)] == [
        (0, bytes(5000), 1000 - wire.OVERHEAD),
        (2, b"x" * 5000, 700 - wire.OVERHEAD),  # id 1 was refused whole
    ]
    await a.aclose()
    await b.aclose()


async def test_send_many_resends_only_what_the_path_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = await memory_channels(autojump_clock, path=1000)
    a.transport.path_limit = 600  # type: ignore[attr-defined]
    batch = [b"%d" % i for i in range(3)] + [b"big" * 1000] + [b"%d" % i for i in range(3, 5)]
    await a.send_many(batch)
    got: list[Message] = []
    while len(got) < len(batch):
        got.extend(await b.receive_many())
    # The three small messages went before the big one's first datagram was refused; the big
    # one and those after it went again under new message ids: ids 3 to 5 never left, and the
    # receiver reports them lost when their reassembly timeout passes.
    assert [m.data for m in got] == batch
    assert [m.message_id for m in got] == [0, 1, 2, 6, 7, 8]
    assert a.datagram_size == 600
    autojump_clock.jump(2.0)
    assert await b.receive_event() == MessagesLost(3, 3, LossReason.NEVER_ARRIVED)
    await a.aclose()
    await b.aclose()


async def test_a_configured_size_the_path_refuses_raises(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = await memory_channels(autojump_clock, path=1000, config=SllpConfig(datagram_size=1100))
    assert a.datagram_size == 1100
    with pytest.raises(DatagramTooLarge, match="path MTU"):
        await a.send(bytes(5000))
    await a.send(bytes(900))  # one datagram that fits still goes
    assert (await b.receive()).data == bytes(900)
    await a.aclose()
    await b.aclose()
