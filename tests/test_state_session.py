"""The sans-IO member session, driven without sockets: every decision a session makes.

Sessions are wired back to back (what one sends is what the other receives, in order), and each
message goes through its wire encoding and parser. Time is a number the test passes in.
"""

from __future__ import annotations

import itertools
import random

import attrs
import pytest

from p2ptls.state import _wire as wire
from p2ptls.state._replica import ReplicaCore
from p2ptls.state._session import (
    MAX_ACK_PINGS,
    Acknowledged,
    DigestRotation,
    DirectReceived,
    EquivocationFound,
    MembersGossiped,
    OwnIdProven,
    PeerSession,
    Phase,
    PushOn,
    SessionConfig,
    SessionEnded,
    SessionEvent,
    StateHelloReceived,
    UpdatesApplied,
    keeps_new,
    misses_someone,
)
from p2ptls.state.testing import Forger
from tests.state_support import NETWORK, make_core, publish

CONFIG = SessionConfig(
    limits=wire.Limits(), max_pending_requests=16, anti_entropy_interval=30.0, hello_timeout=10.0
)

Session = PeerSession[str]


def session(
    core: ReplicaCore,
    peer: ReplicaCore,
    *,
    opened_here: bool = True,
    config: SessionConfig = CONFIG,
    now: float = 0.0,
) -> Session:
    nonces = itertools.count(1)
    return PeerSession(
        core,
        peer.own_id,
        wire.StateHello(core.network, core.epoch, None),
        config,
        now,
        opened_here=opened_here,
        randomness=lambda size: next(nonces).to_bytes(size, "big"),
    )


def outgoing(sender: Session) -> list[bytes]:
    sent = []
    while (item := sender.next_message()) is not None:
        sent.append(item.data)
    return sent


def parsed(data: bytes) -> wire.Message:
    return wire.parse_message_untrusted(data, wire.Limits())


def deliver(messages: list[bytes], receiver: Session, now: float = 0.0) -> list[SessionEvent]:
    events: list[SessionEvent] = []
    for data in messages:
        events.extend(receiver.receive_message_untrusted(data, now))
    return events


@attrs.define
class Pair:
    a: Session
    b: Session
    seen_by_a: list[SessionEvent] = attrs.Factory(list)
    seen_by_b: list[SessionEvent] = attrs.Factory(list)
    sent_by_a: list[wire.Message] = attrs.Factory(list)
    sent_by_b: list[wire.Message] = attrs.Factory(list)

    def run(self, now: float = 0.0) -> None:
        """Move messages both ways until neither side has anything to send."""
        while True:
            from_a, from_b = outgoing(self.a), outgoing(self.b)
            if not from_a and not from_b:
                return
            self.sent_by_a += [parsed(m) for m in from_a]
            self.sent_by_b += [parsed(m) for m in from_b]
            self.seen_by_b += deliver(from_a, self.b, now)
            self.seen_by_a += deliver(from_b, self.a, now)


def opened(a_core: ReplicaCore, b_core: ReplicaCore, **options: object) -> Pair:
    """Two sessions back to back, STATE_HELLOs exchanged and both started (as the node does)."""
    pair = Pair(session(a_core, b_core, **options), session(b_core, a_core, opened_here=False))  # type: ignore[arg-type]
    hello_to_b, hello_to_a = outgoing(pair.a), outgoing(pair.b)
    assert isinstance(deliver(hello_to_b, pair.b)[0], StateHelloReceived)
    assert isinstance(deliver(hello_to_a, pair.a)[0], StateHelloReceived)
    pair.a.start(0.0, [])
    pair.b.start(0.0, [])
    return pair


def synced(a_core: ReplicaCore, b_core: ReplicaCore) -> Pair:
    """Two sessions back to back that exchanged what they hold."""
    pair = opened(a_core, b_core)
    pair.run()
    return pair


def of_type(events: list[SessionEvent], kind: type) -> list:  # type: ignore[type-arg]
    return [event for event in events if isinstance(event, kind)]


# -- the hello -------------------------------------------------------------------------------------


def test_our_hello_goes_first_and_nothing_else_before_start(identities) -> None:
    a, b = make_core(identities[0]), make_core(identities[1], epoch=9)
    publish(a, [("k", b"v")])
    ours = session(a, b)
    first = outgoing(ours)
    assert [parsed(m) for m in first] == [wire.StateHello(NETWORK, 5, None)]
    theirs = wire.StateHello(NETWORK, 9, ("10.0.0.1", 7400)).encode()
    assert ours.receive_message_untrusted(theirs, 0.0) == [
        StateHelloReceived(9, ("10.0.0.1", 7400))
    ]
    assert ours.incarnation == 9 and ours.phase is Phase.HELLO
    ours.note_changed(a.own_id)
    assert ours.next_message() is None  # the node has not kept the session yet
    members = [wire.MemberInfo(identities[2].record.public_key_der, None)] * 1500
    ours.start(1.0, members)
    sent = [parsed(m) for m in outgoing(ours)]
    assert isinstance(sent[0], wire.Digest) and sent[0].entries == ((a.own_id, a.mark(a.own_id)),)
    assert [len(m.members) for m in sent[1:] if isinstance(m, wire.Members)] == [
        wire.MAX_MEMBERS_PER_MESSAGE,
        476,
    ]
    assert ours.next_deadline() == 1.0 + CONFIG.anti_entropy_interval
    with pytest.raises(RuntimeError):
        ours.start(2.0, [])


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (wire.Digest(()).encode(), "the first message must be a hello"),
        (wire.StateHello(bytes(32), 1, None).encode(), "hello from another state network"),
        (b"\x01\x02", "message truncated"),
    ],
)
def test_a_first_message_that_is_no_hello_of_ours_is_rejected(identities, first, reason) -> None:
    ours = session(make_core(identities[0]), make_core(identities[1]))
    assert ours.receive_message_untrusted(first, 0.0) == [SessionEnded(reason, rejected=True)]
    assert ours.phase is Phase.ENDED and ours.next_message() is None
    assert ours.receive_message_untrusted(wire.StateHello(NETWORK, 1, None).encode(), 0.0) == []


def test_no_hello_within_the_deadline_ends_the_session_unrejected(identities) -> None:
    ours = session(make_core(identities[0]), make_core(identities[1]), now=100.0)
    assert ours.next_deadline() == 110.0
    assert ours.handle_timers(109.9) == []
    assert ours.handle_timers(110.0) == [SessionEnded("no hello within the deadline", False)]
    assert ours.next_deadline() == float("inf")


def test_a_second_hello_is_rejected(identities) -> None:
    pair = opened(make_core(identities[0]), make_core(identities[1]))
    events = deliver([wire.StateHello(NETWORK, 5, None).encode()], pair.a)
    assert events == [SessionEnded("unexpected hello", rejected=True)]


# -- pulls and pushes ------------------------------------------------------------------------------


def test_digests_make_each_side_pull_what_it_lacks(identities) -> None:
    a, b = make_core(identities[0]), make_core(identities[1])
    publish(a, [("color", b"blue"), ("size", b"9")])
    publish(b, [("color", b"green")])
    pair = synced(a, b)
    # Each pulled the other's own state (its digest showed more); nobody pushed it unasked.
    assert wire.Pull(((a.own_id, wire.NO_VERSION),)) in pair.sent_by_b
    assert wire.Pull(((b.own_id, wire.NO_VERSION),)) in pair.sent_by_a
    assert b.values(a.own_id) == {"color": b"blue", "size": b"9"}
    assert a.values(b.own_id) == {"color": b"green"}
    applied = of_type(pair.seen_by_b, UpdatesApplied)
    assert [r.key for e in applied for r in e.applied] == ["color", "size"]
    # Straight from their owner: nothing to push on.
    assert of_type(pair.seen_by_a + pair.seen_by_b, PushOn) == []
    updates = [m for m in pair.sent_by_a if isinstance(m, wire.Updates)]
    assert len(updates) == 1 and updates[0].certificates  # the certificate, once


def test_a_write_after_the_digests_is_pushed_without_a_pull(identities) -> None:
    a, b = make_core(identities[0]), make_core(identities[1])
    pair = synced(a, b)
    publish(a, [("k", b"1")])
    pair.a.note_changed(a.own_id)
    pair.run()
    assert b.values(a.own_id) == {"k": b"1"}
    assert not [m for m in pair.sent_by_b if isinstance(m, wire.Pull) and m.entries]
    # Superseded writes coalesce: only the newest record of a key travels.
    publish(a, [("k", b"2")])
    publish(a, [("k", b"3")])
    pair.a.note_changed(a.own_id)
    before = len(pair.sent_by_a)
    pair.run()
    (update,) = pair.sent_by_a[before:]
    assert isinstance(update, wire.Updates)
    assert [r.value for s in update.spans for g in s.groups for r in g.records] == [b"3"]


def test_updates_through_a_relay_are_pushed_on_and_gaps_are_pulled_once(identities) -> None:
    owner, relay, reader = (make_core(identities[i]) for i in range(3))
    publish(owner, [("k", b"v")])
    first = opened(owner, relay)
    first.run()
    assert relay.values(owner.own_id) == {"k": b"v"}
    second = opened(relay, reader)
    second.run()
    # The reader got the owner's records from the relay: every other session pushes them on.
    assert PushOn((owner.own_id,)) in second.seen_by_b
    assert reader.values(owner.own_id) == {"k": b"v"}
    # A span that starts past the reader's mark is a gap: one pull, not one per message.
    publish(owner, [("a", b"1")])
    publish(owner, [("b", b"2")])
    state = owner.owners[owner.own_id]
    late = state.span(reader.mark(owner.own_id), 1 << 20)
    assert late is not None
    skipped = wire.Span(late.owner, (owner.epoch, 2), late.groups[-1:])
    gap = wire.Updates((), (skipped,)).encode()
    events = deliver([gap, gap], second.b)
    assert of_type(events, UpdatesApplied)[0].applied == ()
    pulls = [parsed(m) for m in outgoing(second.b)]
    assert pulls == [wire.Pull(((owner.own_id, reader.mark(owner.own_id)),))]


def test_a_pull_is_answered_from_the_version_asked_with_the_certificate_again(
    identities,
) -> None:
    a, b = make_core(identities[0]), make_core(identities[1])
    publish(a, [("x", b"1"), ("y", b"2")])
    pair = synced(a, b)
    deliver([wire.Pull(((a.own_id, wire.NO_VERSION),)).encode()], pair.a)
    (again,) = [parsed(m) for m in outgoing(pair.a)]
    assert isinstance(again, wire.Updates) and again.certificates
    assert [r.key for s in again.spans for g in s.groups for r in g.records] == ["x", "y"]
    # A pull of an owner we do not hold asks for nothing.
    deliver([wire.Pull(((bytes(32), wire.NO_VERSION),)).encode()], pair.a)
    assert outgoing(pair.a) == []


def test_the_anti_entropy_timer_sends_a_digest(identities) -> None:
    a, b = make_core(identities[0]), make_core(identities[1])
    pair = synced(a, b)
    deadline = pair.a.next_deadline()
    assert pair.a.handle_timers(deadline - 1) == [] and outgoing(pair.a) == []
    assert pair.a.handle_timers(deadline) == []
    assert [type(parsed(m)) for m in outgoing(pair.a)] == [wire.Digest]
    assert pair.a.next_deadline() == deadline + CONFIG.anti_entropy_interval
    assert pair.a.send_digest() == []  # the node's turn in its digest rotation
    assert [type(parsed(m)) for m in outgoing(pair.a)] == [wire.Digest]


# -- the other messages ----------------------------------------------------------------------------


def test_members_direct_ping_and_unknown_pongs(identities) -> None:
    pair = synced(make_core(identities[0]), make_core(identities[1]))
    info = wire.MemberInfo(identities[2].record.public_key_der, ("10.0.0.2", 1))
    events = deliver(
        [
            wire.Members((info,)).encode(),
            wire.Direct(b"psst").encode(),
            wire.Ping(b"12345678").encode(),
            wire.Pong(b"87654321").encode(),  # no ping of ours: nothing
        ],
        pair.a,
    )
    assert events == [MembersGossiped((info,)), DirectReceived(b"psst")]
    assert [parsed(m) for m in outgoing(pair.a)] == [wire.Pong(b"12345678")]


def test_wants_to_send_says_when_a_sender_need_not_wake(identities) -> None:
    a, b = make_core(identities[0]), make_core(identities[1])
    pair = synced(a, b)
    assert not pair.a.wants_to_send
    target = publish(a, [("k", b"v")])
    pair.a.note_changed(a.own_id)
    assert pair.a.wants_to_send  # updates to push
    outgoing(pair.a)
    pair.a.want_acknowledgement(target)
    assert pair.a.wants_to_send  # the acknowledgement ping
    outgoing(pair.a)
    assert not pair.a.wants_to_send
    pair.a.send_direct(b"x", "token")
    assert pair.a.wants_to_send
    deliver([b"\xff"], pair.a)
    assert not pair.a.wants_to_send  # ended


def test_control_goes_before_direct_messages_before_updates(identities) -> None:
    a, b = make_core(identities[0]), make_core(identities[1])
    pair = synced(a, b)
    publish(a, [("k", b"v")])
    pair.a.note_changed(a.own_id)
    pair.a.send_direct(b"one", "first")
    pair.a.send_direct(b"two", "second")
    deliver([wire.Ping(b"12345678").encode()], pair.a)
    sent = []
    while (item := pair.a.next_message()) is not None:
        sent.append((type(parsed(item.data)).__name__, item.direct))
    assert sent == [
        ("Pong", None),
        ("Direct", "first"),
        ("Direct", "second"),
        ("Updates", None),
    ]


def test_directs_not_sent_are_handed_back_once_the_session_ends(identities) -> None:
    pair = opened(make_core(identities[0]), make_core(identities[1]))
    pair.a.send_direct(b"lost", "token")
    deliver([b"\xff"], pair.a)  # an unknown message type ends it
    assert pair.a.next_message() is None
    assert pair.a.unsent_directs() == ["token"] and pair.a.unsent_directs() == []
    with pytest.raises(RuntimeError):
        pair.a.send_direct(b"late", "too late")


def test_a_bad_signature_ends_the_session_and_nothing_is_applied(identities) -> None:
    a, b = make_core(identities[0]), make_core(identities[1])
    pair = opened(a, b)
    forger = Forger(identities[1], NETWORK)
    records = forger.records([("k", b"v")])
    batch = forger.batch(records)
    broken = attrs.evolve(batch, signature=bytes(64))
    events = deliver([forger.updates(forger.span(records, batch=broken)).encode()], pair.a)
    assert events == [SessionEnded("batch signature does not verify", rejected=True)]
    assert a.get(b.own_id, "k") is None


def test_equivocation_and_proofs_of_our_own_id_are_reported(identities) -> None:
    a, b = make_core(identities[0], epoch=5), make_core(identities[1])
    pair = opened(a, b)
    owner = Forger(identities[2], NETWORK)
    first = owner.records([("k", b"one")], start=1)
    second = owner.records([("k", b"two")], start=1)
    deliver([owner.updates(owner.span(first)).encode()], pair.a)
    events = deliver([owner.updates(owner.span(second), certificates=()).encode()], pair.a)
    (found,) = of_type(events, EquivocationFound)
    assert (found.evidence.owner, found.evidence.seq) == (identities[2].peer_id.digest, 1)
    # A certificate signed by our own key for a newer epoch proves our store lost history.
    ours = Forger(identities[0], NETWORK, epoch=9)
    events = deliver([wire.Updates((ours.certificate,), ()).encode()], pair.a)
    assert OwnIdProven((9, 0)) in events


# -- acknowledgements ------------------------------------------------------------------------------


def test_an_acknowledgement_ping_follows_the_updates_and_its_pong_acknowledges(
    identities,
) -> None:
    a, b = make_core(identities[0]), make_core(identities[1])
    pair = synced(a, b)
    target = publish(a, [("k", b"v")])
    pair.a.note_changed(a.own_id)
    pair.a.want_acknowledgement(target)
    sent = [parsed(m) for m in outgoing(pair.a)]
    assert [type(m) for m in sent] == [wire.Updates, wire.Ping]
    assert outgoing(pair.a) == []  # the ping in flight covers the target: no second one
    deliver([m.encode() for m in sent], pair.b)
    pong = outgoing(pair.b)
    assert [parsed(m) for m in pong] == [wire.Pong(sent[1].nonce)]  # type: ignore[union-attr]
    assert deliver(pong, pair.a) == [Acknowledged(target)]
    assert pair.a.acked == target
    pair.a.want_acknowledgement(target)
    assert outgoing(pair.a) == []  # already acknowledged


def test_a_pull_of_our_state_voids_the_pings_in_flight(identities) -> None:
    a, b = make_core(identities[0]), make_core(identities[1])
    pair = synced(a, b)
    target = publish(a, [("k", b"v")])
    pair.a.note_changed(a.own_id)
    pair.a.want_acknowledgement(target)
    ping = [parsed(m) for m in outgoing(pair.a)][-1]
    assert isinstance(ping, wire.Ping)
    # It says it lacks our state, then answers the ping: the answer proves nothing...
    deliver([wire.Pull(((a.own_id, wire.NO_VERSION),)).encode()], pair.a)
    assert deliver([wire.Pong(ping.nonce).encode()], pair.a) == []
    # ...and the state goes again, with a new ping.
    again = [parsed(m) for m in outgoing(pair.a)]
    assert [type(m) for m in again] == [wire.Updates, wire.Ping]
    assert again[1] != ping


def test_acknowledgement_pings_in_flight_are_bounded(identities) -> None:
    a, b = make_core(identities[0]), make_core(identities[1])
    pair = synced(a, b)
    for round_ in range(MAX_ACK_PINGS + 3):
        target = publish(a, [("k", b"%d" % round_)])
        pair.a.note_changed(a.own_id)
        pair.a.want_acknowledgement(target)
        outgoing(pair.a)  # never answered
    assert len(pair.a.ack_pings) == MAX_ACK_PINGS


# -- bounds ----------------------------------------------------------------------------------------


def test_a_peer_that_asks_without_reading_is_cut_and_the_queue_stays_bounded(identities) -> None:
    pair = opened(make_core(identities[0]), make_core(identities[1]))
    outgoing(pair.a)
    events: list[SessionEvent] = []
    for index in range(CONFIG.max_pending_requests + 5):
        events += pair.a.receive_message_untrusted(wire.Ping(index.to_bytes(8, "big")).encode(), 0)
        assert len(pair.a.control) <= CONFIG.max_pending_requests
    assert events == [SessionEnded("the peer floods requests without reading", rejected=True)]


def test_gossip_and_digests_to_a_peer_that_does_not_read_end_its_session(identities) -> None:
    pair = opened(make_core(identities[0]), make_core(identities[1]))
    outgoing(pair.a)
    info = wire.MemberInfo(identities[2].record.public_key_der, None)
    for _ in range(CONFIG.max_pending_requests):
        assert pair.a.gossip(info) == []
    assert pair.a.ended is None
    ended = SessionEnded("the peer floods requests without reading", rejected=True)
    assert pair.a.send_digest() == [ended]
    assert pair.a.ended == ended


# -- several sessions ------------------------------------------------------------------------------


def test_both_ends_keep_the_same_one_of_two_sessions(identities) -> None:
    low, high = sorted((make_core(identities[0]), make_core(identities[1])), key=lambda c: c.own_id)

    def pair_of(low_opens: bool, incarnation: int = 5) -> tuple[Session, Session]:
        at_low = session(low, high, opened_here=low_opens)
        at_high = session(high, low, opened_here=not low_opens)
        at_low.incarnation = at_high.incarnation = incarnation
        return at_low, at_high

    low_opened, high_opened = pair_of(True), pair_of(False)
    # The stream opened by the lower id wins, at both ends, whichever came first.
    assert keeps_new(high_opened[0], low_opened[0], low.own_id)
    assert not keeps_new(low_opened[0], high_opened[0], low.own_id)
    assert keeps_new(high_opened[1], low_opened[1], high.own_id)
    assert not keeps_new(low_opened[1], high_opened[1], high.own_id)
    # The same side opened both: the newer.
    again = pair_of(True)
    assert keeps_new(low_opened[0], again[0], low.own_id)
    # A newer run of the member wins whoever opened.
    restarted = pair_of(False, incarnation=6)
    assert keeps_new(low_opened[0], restarted[0], low.own_id)
    assert not keeps_new(restarted[0], low_opened[0], low.own_id)


def kept_of(sessions: list[Session], own: ReplicaCore, current: object = None) -> Session:
    """The session an end keeps after registering ``sessions`` in this order (as the node does:
    each one that HELLOed either replaces the one kept or is closed)."""
    kept = sessions[0]
    for new in sessions[1:]:
        if keeps_new(kept, new, own.own_id, current=current):
            kept = new
    return kept


@pytest.mark.parametrize("low_opens", [True, False])
@pytest.mark.parametrize("same_connection", [True, False])
def test_two_sessions_opened_by_one_side_are_kept_alike_in_either_order(
    identities, low_opens: bool, same_connection: bool
) -> None:
    """One side opened two sessions at about the same time (a candidate dial and the member's
    own task, or a session moving to the connection that won a simultaneous open): their
    STATE_HELLOs may reach the two ends in opposite orders. Both ends must still keep the same
    session, or each closes the one the other kept and both wait for a redial."""
    low, high = sorted((make_core(identities[0]), make_core(identities[1])), key=lambda c: c.own_id)

    def opened_at(core: ReplicaCore, peer: ReplicaCore, opened_here: bool, place: int) -> Session:
        connection = "shared" if same_connection else f"connection-{place}"
        return PeerSession(
            core,
            peer.own_id,
            wire.StateHello(core.network, core.epoch, None),
            CONFIG,
            0.0,
            opened_here=opened_here,
            connection=(core.own_id, connection),  # each end's own object for one connection
            stream_id=2 * place + 1,
        )

    at_low = [opened_at(low, high, low_opens, place) for place in (1, 2)]
    at_high = [opened_at(high, low, not low_opens, place) for place in (1, 2)]
    # Both hosts keep the second connection (when there are two): it is current at both ends.
    current_low, current_high = at_low[1].connection, at_high[1].connection
    for low_order, high_order in [((0, 1), (1, 0)), ((1, 0), (0, 1)), ((0, 1), (0, 1))]:
        kept_at_low = kept_of([at_low[i] for i in low_order], low, current_low)
        kept_at_high = kept_of([at_high[i] for i in high_order], high, current_high)
        assert at_low.index(kept_at_low) == at_high.index(kept_at_high) == 1


def test_digest_rotation_takes_sessions_in_turn_only_while_someone_is_missed() -> None:
    rotation: DigestRotation[str] = DigestRotation(random.Random(1))
    assert rotation.choose(["a", "b", "c"], missing=False) is None
    assert rotation.choose([], missing=True) is None
    assert [rotation.choose(["a", "b", "c"], missing=True) for _ in range(4)] == [
        "a",
        "b",
        "c",
        "a",
    ]
    assert all(0.25 <= rotation.delay(0.5) <= 0.75 for _ in range(100))


def test_misses_someone() -> None:
    held = [b"me", b"x"]
    assert not misses_someone(held, {b"me", b"x"}, members_unreached=False, candidates=False)
    assert misses_someone(held, {b"me"}, members_unreached=False, candidates=False)
    assert misses_someone([b"me"], {b"me"}, members_unreached=True, candidates=False)
    assert misses_someone([b"me"], {b"me"}, members_unreached=False, candidates=True)
