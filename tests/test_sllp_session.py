"""The sans-IO SLLP session: delivery, fragmentation, keys, timers and the delivery modes."""

from __future__ import annotations

import os
from collections.abc import Iterable

import pytest

from p2ptls.sllp import (
    ChannelClosed,
    CloseCause,
    DatagramTrain,
    DeliveryMode,
    Event,
    KeysUpdated,
    LossReason,
    Message,
    MessagesLost,
    Session,
    SessionClosed,
    SessionState,
    SllpConfig,
)
from p2ptls.sllp import _wire as wire
from p2ptls.sllp._inbox import Inbox
from p2ptls.sllp.testing import RecordingSession, seal_datagram, session_pair


def deliver(trains: DatagramTrain | Iterable[DatagramTrain], receiver: Session, now: float) -> None:
    if isinstance(trains, DatagramTrain):
        trains = [trains]
    for train in trains:
        for datagram in train.datagrams():
            receiver.receive_datagram_untrusted(datagram, now)


def drain(session: RecordingSession) -> list[Event]:
    return session.take_events()


def messages(session: RecordingSession) -> list[Message]:
    return [event for event in drain(session) if isinstance(event, Message)]


@pytest.mark.parametrize("size", [0, 1, 1149, 1150, 2298, 2299, 50_000, 1 << 20])
def test_messages_of_every_size_arrive_whole(size: int) -> None:
    sender, receiver = session_pair()
    data = os.urandom(size)
    train = sender.send_message(data, 0.0)
    fragment = 1200 - wire.OVERHEAD
    assert train.count == max(1, -(-size // fragment))
    datagrams = train.datagrams()
    assert all(len(d) == 1200 for d in datagrams[:-1])
    assert 0 < len(datagrams[-1]) <= 1200
    assert len(train) == size + train.count * wire.OVERHEAD
    deliver(train, receiver, 0.0)
    (message,) = messages(receiver)
    assert message.data == data and message.complete and message.message_id == 0
    assert message.fragment_count == train.count


def test_both_directions_and_message_ids() -> None:
    a, b = session_pair()
    for i in range(5):
        deliver(a.send_message(b"a%d" % i, 0.0), b, 0.0)
        deliver(b.send_message(b"b%d" % i, 0.0), a, 0.0)
    assert [(m.message_id, m.data) for m in messages(b)] == [(i, b"a%d" % i) for i in range(5)]
    assert [m.data for m in messages(a)] == [b"b%d" % i for i in range(5)]
    stats = b.statistics()
    assert (stats.sent, stats.received, stats.lost) == (5, 5, 0)


def test_message_size_limits() -> None:
    a, _ = session_pair(SllpConfig(max_message_size=10_000), SllpConfig(max_message_size=5_000))
    assert a.max_send_message == 5_000
    with pytest.raises(ValueError, match="exceeds"):
        a.send_message(bytes(5_001), 0.0)
    a.send_message(bytes(5_000), 0.0)


def test_negotiated_datagram_size_is_the_smaller() -> None:
    a, b = session_pair(SllpConfig(max_datagram_payload=1400), SllpConfig(max_datagram_payload=600))
    train = a.send_message(bytes(5000), 0.0)
    assert max(len(d) for d in train.datagrams()) == 600
    deliver(train, b, 0.0)
    assert messages(b)[0].data == bytes(5000)


def test_sequence_numbers_and_nonces_never_repeat_across_rekeys() -> None:
    config = SllpConfig(rekey_after=16)
    a, b = session_pair(config)
    sequences = []
    for i in range(60):
        train = a.send_message(os.urandom(i * 300), 0.0)
        for datagram in train.datagrams():
            header = wire.parse_header_untrusted(datagram)
            sequences.append(header.sequence)
            assert header.key_phase == (header.sequence // 16) & 1
        deliver(train, b, 0.0)
    # One sequence space per direction, never reset: with one key per epoch, (key, nonce) is unique.
    assert sequences == list(range(len(sequences)))
    assert a.send_epoch == (len(sequences) - 1) // 16
    assert b.receive_epoch == a.send_epoch
    events = drain(b)
    assert sum(isinstance(e, Message) for e in events) == 60
    updates = [e for e in events if isinstance(e, KeysUpdated)]
    assert [u.epoch for u in updates] == list(range(1, a.send_epoch + 1))
    assert all(u.direction == "receive" for u in updates)
    # A send's key updates come back from the next call that returns events.
    sent = a.handle_timers(0.0)
    assert any(isinstance(e, KeysUpdated) and e.direction == "send" for e in sent)


def test_previous_key_is_kept_briefly_for_reordered_datagrams() -> None:
    config = SllpConfig(rekey_after=16, previous_key_lifetime=2.0)
    a, b = session_pair(config)
    trains = [a.send_message(b"m%d" % i, 0.0) for i in range(20)]  # 16 in epoch 0, 4 in epoch 1
    late, late2 = trains[14], trains[15]
    for train in trains[:14] + trains[16:]:
        deliver(train, b, 1.0)
    assert b.receive_epoch == 1
    deliver(late, b, 1.5)  # epoch 0, within the previous key's lifetime
    b.handle_timers(3.5)  # the previous key is dropped now
    assert b.datagrams_to_send() == []
    deliver(late2, b, 3.6)
    got = sorted(m.message_id for m in messages(b))
    assert got == [*range(15), *range(16, 20)]
    stats = b.statistics()
    assert stats.failed_authentication == 0
    assert stats.replayed == 1  # the old-epoch datagram after its key was dropped


def test_out_of_order_fragments_and_messages() -> None:
    a, b = session_pair()
    trains = [a.send_message(bytes([i]) * 3000, 0.0) for i in range(4)]
    datagrams = [d for train in trains for d in train.datagrams()]
    for datagram in reversed(datagrams):
        b.receive_datagram_untrusted(datagram, 0.0)
    got = messages(b)
    assert [m.message_id for m in got] == [3, 2, 1, 0]
    assert all(m.data == bytes([m.message_id]) * 3000 for m in got)
    assert b.statistics().late == 3  # delivered anyway in unordered mode


def test_ordered_mode_drops_late_messages() -> None:
    a, b = session_pair(SllpConfig(delivery=DeliveryMode.ORDERED))
    trains = [a.send_message(bytes([i]) * 2000, 0.0) for i in range(4)]
    first_of_1 = trains[1].datagrams()[0]
    deliver(trains[0], b, 0.0)
    b.receive_datagram_untrusted(first_of_1, 0.0)  # message 1 begins...
    deliver(trains[2], b, 0.0)  # ...message 2 completes first: 1 is now late
    for datagram in trains[1].datagrams()[1:]:
        b.receive_datagram_untrusted(datagram, 0.0)
    deliver(trains[3], b, 0.0)
    assert [m.message_id for m in messages(b)] == [0, 2, 3]
    stats = b.statistics()
    assert stats.late == 2  # message 1, plus one of its stragglers
    assert stats.in_reassembly == 0 and stats.reassembly_bytes == 0
    assert stats.lost == 0


def test_lost_message_is_reported_after_the_timeout() -> None:
    a, b = session_pair(SllpConfig(reassembly_timeout=0.5))
    trains = [a.send_message(b"x" * 10, 0.0) for _ in range(5)]
    for i in (0, 3, 4):
        deliver(trains[i], b, 1.0)
    assert [m.message_id for m in messages(b)] == [0, 3, 4]
    assert b.next_deadline() == pytest.approx(1.5)
    b.handle_timers(1.49)
    assert b.statistics().lost == 0
    deliver(trains[1], b, 1.49)  # message 1 was only late
    b.handle_timers(1.5)
    events = drain(b)
    assert MessagesLost(2, 1, LossReason.NEVER_ARRIVED) in events
    assert [e.message_id for e in events if isinstance(e, Message)] == [1]
    assert b.statistics().lost == 1
    deliver(trains[2], b, 2.0)  # after it was given up: dropped as late
    assert messages(b) == []
    assert b.statistics().late >= 1


def test_the_channel_inbox_bounds_unread_messages() -> None:
    a, b = session_pair()
    inbox = Inbox(SllpConfig(max_unread_messages=3, max_unread_bytes=1 << 20))

    def send(data: bytes) -> None:
        for datagram in a.send_message(data, 0.0).datagrams():
            inbox.add(b.receive_datagram_untrusted(datagram, 0.0))

    for _ in range(5):
        send(b"x")
    events = [inbox.next_event() for _ in range(len(inbox))]
    assert sum(isinstance(e, Message) for e in events) == 3
    assert MessagesLost(3, 1, LossReason.OVERFLOW) in events
    assert inbox.overflowed == 2 and inbox.next_event() is None
    send(b"y")  # room again once read
    assert inbox.take_messages(10)[0].data == b"y"


def test_keepalive_and_idle_timeout() -> None:
    config = SllpConfig(idle_timeout=3.0, keepalive_interval=1.0)
    a, b = session_pair(config)
    assert a.next_deadline() == 1.0
    assert a.handle_timers(1.0) == []
    trains = a.datagrams_to_send()
    assert len(trains) == 1 and a.statistics().keepalives_sent == 1
    deliver(trains, b, 2.9)  # refreshes b's idle timer
    assert b.handle_timers(3.0) == [] and b.closed is None
    assert len(b.datagrams_to_send()) == 1  # its own keep-alive
    closed = ChannelClosed(CloseCause.IDLE_TIMEOUT, wire.CLOSE_IDLE_TIMEOUT, "idle timeout")
    assert b.handle_timers(5.9) == [closed]
    trains = b.datagrams_to_send()
    assert trains and b.state.value == "closed" and b.closed == closed
    assert not b.has_keys
    deliver(trains, a, 6.0)  # the idle side told the other
    assert a.closed is not None and a.closed.cause is CloseCause.PEER
    assert a.closed.code == wire.CLOSE_IDLE_TIMEOUT


def test_local_close_and_sending_after_it() -> None:
    a, b = session_pair()
    assert a.close(300, "done") == [ChannelClosed(CloseCause.LOCAL, 300, "done")]
    (train,) = a.datagrams_to_send()
    assert a.close() == [] and a.datagrams_to_send() == []
    with pytest.raises(SessionClosed) as info:
        a.send_message(b"x", 0.0)
    assert info.value.code == 300 and info.value.cause is CloseCause.LOCAL
    deliver(train, b, 0.0)
    assert drain(b) == [ChannelClosed(CloseCause.PEER, 300, "done")]
    with pytest.raises(ValueError):
        a.close(70000)


def test_close_received_on_the_stream_and_lifeline_lost() -> None:
    a, b = session_pair()
    closed = ChannelClosed(CloseCause.PEER, 20, "stream close")
    assert a.close_received(20, "stream close") == [closed]
    assert a.closed == closed and not a.has_keys
    assert a.lifeline_lost() == [] and a.datagrams_to_send() == []
    (event,) = b.lifeline_lost()
    assert len(b.datagrams_to_send()) == 1 and event == b.closed
    assert b.closed is not None and b.closed.cause is CloseCause.LIFELINE_LOST
    assert b.handle_timers(100.0) == [] and b.next_deadline() == float("inf")


def test_sequence_exhaustion_closes_instead_of_wrapping() -> None:
    a, _ = session_pair()
    a._send_sequence = wire.MAX_SEQUENCE - 1  # test hook
    with pytest.raises(SessionClosed):
        a.send_message(b"x" * 5000, 0.0)
    assert a.closed is not None and a.closed.cause is CloseCause.SEQUENCE_EXHAUSTED


def test_authenticated_garbage_is_dropped_not_fatal() -> None:
    a, b = session_pair()
    b.receive_datagram_untrusted(seal_datagram(a, b"\x01"), 0.0)  # body too short for a header
    b.receive_datagram_untrusted(seal_datagram(a, wire.encode_body(0x55, 0, 0, 0, b"")), 0.0)
    assert b.statistics().malformed == 2 and b.state is SessionState.OPEN
    deliver(a.send_message(b"fine", 0.0), b, 0.0)
    assert messages(b)[0].data == b"fine"
