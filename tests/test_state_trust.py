"""Sans-IO decisions on what peers claim: claims earn at most a bounded reply, signatures prove.

The replica core and the membership tables are driven directly (every message through its wire
encoding and parser, as from a peer); ``tests/test_state_hostile_members.py`` mounts the same
attacks over the wire against running nodes.
"""

from __future__ import annotations

import functools
import math

import pytest

import p2ptls
from p2ptls.state import _wire as wire
from p2ptls.state._membership import Membership
from p2ptls.state._outbound import Outbound
from p2ptls.state._replica import ReplicaCore
from p2ptls.state._store import StateStore, StoredMember
from p2ptls.state.testing import Forger
from tests.state_support import NETWORK, make_core, publish

HIGH = (wire.MAX_COUNTER - 1, wire.MAX_COUNTER - 1)


@functools.cache
def more_identities() -> tuple[p2ptls.Identity, ...]:
    """Owners for a flood (real keys: an owner's certificate must verify)."""
    return tuple(p2ptls.Identity.generate(2048) for _ in range(3))


def parsed(message: wire.Message) -> wire.Message:
    return wire.parse_message_untrusted(message.encode(), wire.Limits())


def deliver(core: ReplicaCore, updates: wire.Updates, source: bytes = b"peer"):
    message = parsed(updates)
    assert isinstance(message, wire.Updates)
    return core.receive_updates_untrusted(message, source)


# -- our own id: claims versus proofs ----------------------------------------------------------


def test_a_digest_claiming_our_own_id_earns_one_pull_never_a_new_epoch(identities) -> None:
    me = identities[0]
    core = make_core(me)
    publish(core, [("k", b"v")])
    mark = core.mark(me.peer_id.digest)
    digest = parsed(wire.Digest(((me.peer_id.digest, HIGH),)))
    assert isinstance(digest, wire.Digest)
    pulls = core.wanted(digest)
    # Only the record at the claimed version is asked for: it would come with its proof.
    assert pulls == [(me.peer_id.digest, (HIGH[0], HIGH[1] - 1))]
    assert core.epoch == 5 and core.mark(me.peer_id.digest) == mark
    # A claim at seq 1 asks from our mark (a pull needs a valid version).
    assert core.own_pull((9, 1)) == mark
    assert core.own_pull(mark) is None


def test_an_unsigned_span_of_our_own_id_proves_nothing(identities) -> None:
    me, attacker = identities[0], identities[1]
    core = make_core(me)
    forger = Forger(attacker, NETWORK, epoch=HIGH[0])
    records = forger.records([("k", b"evil")], owner=me.peer_id.digest, start=HIGH[1])
    batch = forger.batch(records, owner=me.peer_id.digest)
    span = wire.Span(
        me.peer_id.digest, (HIGH[0], HIGH[1] - 1), (wire.Group(batch, tuple(records)),)
    )
    # With the attacker's own certificate (for its id) and without any.
    for certificates in ([forger.certificate], []):
        outcome = deliver(core, forger.updates(span, certificates=certificates))
        assert outcome.own_proven == wire.NO_VERSION and outcome.applied == []
        assert not core.note_own_proof(outcome.own_proven)
    assert core.get(me.peer_id.digest, "k") is None


def test_a_batch_signed_by_our_own_key_proves_lost_history_once(identities) -> None:
    me = identities[0]
    core = make_core(me, epoch=5)
    restored = Forger(me, NETWORK, epoch=7)  # what a lost newer copy of this store signed
    updates = restored.updates(restored.span(restored.records([("k", b"x"), ("j", b"y")])))
    outcome = deliver(core, updates)
    assert outcome.own_proven == (7, 2)
    assert core.note_own_proof(outcome.own_proven)
    # The same proof again (a replay, or a second peer) is answered by the same new epoch.
    assert not core.note_own_proof(deliver(core, updates).own_proven)
    assert core.own_pull((7, 2)) is None


def test_a_certificate_of_ours_alone_proves_its_epoch(identities) -> None:
    me = identities[0]
    core = make_core(me, epoch=5)
    newer = Forger(me, NETWORK, epoch=9)
    outcome = deliver(core, wire.Updates((newer.certificate,), ()))
    assert outcome.own_proven == (9, 0) and core.note_own_proof(outcome.own_proven)
    # A copy of us signing in our current epoch conflicts with our certificate.
    twin = Forger(me, NETWORK, epoch=5)
    outcome = deliver(core, wire.Updates((twin.certificate,), ()))
    assert outcome.own_proven == (5, wire.MAX_COUNTER)
    # An old certificate of ours (below what we published) proves nothing new.
    publish(core, [("k", b"v")])
    old = Forger(me, NETWORK, epoch=2)
    assert not core.note_own_proof(deliver(core, wire.Updates((old.certificate,), ())).own_proven)


# -- certificates and owners: bounded, charged, evicted fairly ---------------------------------


def test_certificates_without_a_batch_keep_only_the_newest(identities) -> None:
    core = make_core(identities[0])
    owner = identities[1]
    forgers = [Forger(owner, NETWORK, epoch=epoch) for epoch in (3, 8, 5, 2)]
    for forger in forgers:
        deliver(core, wire.Updates((forger.certificate,), ()))
    assert set(core.owners[owner.peer_id.digest].certs) == {8}
    # A certificate that comes with a batch stays as long as the batch does.
    five = forgers[2]
    deliver(core, five.updates(five.span(five.records([("k", b"v")]))))
    assert set(core.owners[owner.peer_id.digest].certs) == {5, 8}


def test_a_flooding_source_only_evicts_its_own_owners(identities) -> None:
    me, honest = identities[:2]
    core = make_core(me, max_owners=4)  # three owners besides us
    first = Forger(honest, NETWORK)
    deliver(core, first.updates(first.span(first.records([("k", b"v")]))), source=b"relay")
    for identity in identities[2:] + more_identities():
        forger = Forger(identity, NETWORK)
        outcome = deliver(core, forger.updates(forger.span(forger.records([("k", b"x")]))), b"bad")
        assert honest.peer_id.digest not in outcome.evicted_owners
    assert honest.peer_id.digest in core.owners and core.charged_owners == 3
    assert core.get(honest.peer_id.digest, "k") is not None


def test_members_are_protected_from_owner_eviction(identities) -> None:
    me, member, other, third = identities
    core = make_core(me, max_owners=3)
    core.protect(member.peer_id.digest)
    for identity in (other, member, third):
        forger = Forger(identity, NETWORK)
        deliver(core, forger.updates(forger.span(forger.records([("k", b"v")]))), b"src")
    # The member took the place of nobody but an ordinary owner; the next one evicted that one.
    assert set(core.owners) == {me.peer_id.digest, member.peer_id.digest, third.peer_id.digest}
    # A member that leaves becomes an ordinary owner again, charged to itself.
    core.unprotect(member.peer_id.digest)
    assert core.charged_owners == 2 and len(core.owners) == 3


def test_members_get_a_place_even_when_only_members_are_held(identities) -> None:
    me, member, other, _ = identities
    core = make_core(me, max_owners=1)
    core.protect(member.peer_id.digest)
    for identity in (member, other):
        forger = Forger(identity, NETWORK)
        deliver(core, forger.updates(forger.span(forger.records([("k", b"v")]))), b"src")
    assert set(core.owners) == {me.peer_id.digest, member.peer_id.digest}


def test_evicted_owners_leave_the_store(identities, tmp_path) -> None:
    me, a, b, _ = identities
    store = StateStore(tmp_path / "db", network=NETWORK, owner=me.peer_id.digest)
    core = make_core(me, max_owners=2)
    for identity in (a, b):
        forger = Forger(identity, NETWORK)
        deliver(core, forger.updates(forger.span(forger.records([("k", b"v")]))))
        store.apply(core.take_changes())
    store.apply(core.take_changes(), [(a.peer_id.digest, None)])
    reloaded = ReplicaCore(NETWORK, me.peer_id.digest, me.record.public_key_der)
    store.load_into(reloaded)
    assert set(reloaded.owners) == {me.peer_id.digest, b.peer_id.digest}
    store.close()


def test_claims_in_digests_and_pulls_cannot_grow_a_connection_without_bound(identities) -> None:
    core = make_core(identities[0], max_owners=4)
    outbound = Outbound(core)
    made_up = [bytes([i // 256, i % 256]) + bytes(30) for i in range(100)]
    digest = wire.Digest(tuple((owner, (1, 1)) for owner in made_up))
    outbound.note_digest(digest)
    pulls = outbound.pulls_to_send(core.wanted(digest))
    bound = core.max_owners
    assert len(pulls) <= core.max_owners and len(outbound.belief) <= bound
    outbound.note_pull(wire.Pull(tuple((owner, wire.NO_VERSION) for owner in made_up)))
    assert len(outbound.belief) <= bound
    assert len(outbound.pulls_outstanding) <= outbound.max_tracked
    assert outbound.next_updates() is None


# -- membership: gossip is a candidate, a handshake makes a member ------------------------------


def make_membership(**options: float) -> Membership:
    settings: dict[str, float] = {
        "max_members": 3,
        "max_candidates": 8,
        "candidates_per_source": 2,
        "candidate_ttl": 60.0,
    }
    settings.update(options)
    return Membership(b"me", **settings)  # type: ignore[arg-type]


def test_gossip_is_bounded_per_source_and_never_takes_a_member_place() -> None:
    table = make_membership()
    for i in range(50):
        table.gossiped(b"liar", b"fake%d" % i, b"der", ("10.0.0.1", 1000 + i), now=float(i))
    assert table.candidates.count(b"liar") == 2 and len(table.members) == 0
    assert table.gossiped(b"honest", b"real", b"der", ("10.0.0.2", 1), now=50.0)
    assert b"real" in table.candidates
    # Gossip about ourselves, about the gossiper, or without an address is ignored.
    assert not table.gossiped(b"honest", b"me", b"der", ("h", 1), now=50.0)
    assert not table.gossiped(b"honest", b"honest", b"der", ("h", 1), now=50.0)
    assert not table.gossiped(b"honest", b"x", b"der", None, now=50.0)


def test_candidates_expire_are_dialled_a_few_times_and_cannot_be_reset_by_others() -> None:
    table = make_membership(candidate_ttl=100.0, candidate_tries=3)
    table.gossiped(b"a", b"peer", b"der", ("h", 1), now=0.0)
    [(peer, candidate)] = table.due(0.0, 8)
    assert peer == b"peer" and table.due(5.0, 8) == []  # one dial at a time
    table.dial_ended(candidate, now=5.0)
    assert table.next_deadline() == 6.0 and table.due(5.5, 8) == []  # backoff: 1 s, doubling
    # Another member cannot restart the tries (nor replace the address) of a live claim.
    assert not table.gossiped(b"b", b"peer", b"der", ("elsewhere", 2), now=5.6)
    for now, wait in ((6.0, 2.0), (8.0, 4.0)):
        assert table.due(now, 8) == [(peer, candidate)]
        table.dial_ended(candidate, now)
        assert table.next_deadline() == (math.inf if wait == 4.0 else now + wait)
    assert table.due(50.0, 8) == []  # tries used up
    table.due(101.0, 8)
    assert len(table.candidates) == 0  # expired


def test_a_member_that_authenticates_always_gets_a_place() -> None:
    table = make_membership(max_members=2)
    assert table.admit(b"old", now=1.0, connected=set()) == []
    assert table.admit(b"busy", now=2.0, connected=set()) == []
    # Full: the member not connected now that was seen longest ago makes room.
    assert table.admit(b"new", now=3.0, connected={b"busy"}) == [b"old"]
    # Every member connected: still a place, the one seen longest ago goes.
    assert table.admit(b"newer", now=4.0, connected={b"busy", b"new"}) == [b"busy"]
    assert set(table.members) == {b"new", b"newer"}
    # A candidate that authenticates leaves the candidate table.
    table.gossiped(b"new", b"cand", b"der", ("h", 1), now=5.0)
    table.admit(b"cand", now=6.0, connected=set())
    assert b"cand" not in table.candidates and b"cand" in table.members


def test_forgotten_members_leave_the_store(identities, tmp_path) -> None:
    me = identities[0]
    store = StateStore(tmp_path / "db", network=NETWORK, owner=me.peer_id.digest)
    der = identities[1].record.public_key_der
    store.apply(make_core(me).take_changes(), [(b"x" * 32, StoredMember(der, ("h", 1)))])
    assert len(store.load_members()) == 1
    store.apply(make_core(me, epoch=6).take_changes(), [(b"x" * 32, None)])
    assert store.load_members() == []
    store.close()


@pytest.mark.parametrize("count", [0, 1])
def test_unknown_owner_spans_ask_for_a_pull_even_when_the_table_is_full(identities, count) -> None:
    me = identities[0]
    core = make_core(me, max_owners=2)
    for identity in identities[1 : 2 + count]:
        forger = Forger(identity, NETWORK)
        deliver(core, forger.updates(forger.span(forger.records([("k", b"v")]))))
    stranger = Forger(identities[3], NETWORK)
    span = stranger.span(stranger.records([("k", b"v")]))
    outcome = deliver(core, stranger.updates(span, certificates=[]))
    assert outcome.gaps == {identities[3].peer_id.digest: wire.NO_VERSION}


def test_members_keep_their_state_when_a_full_table_is_loaded(identities, tmp_path) -> None:
    me, member, a, b = identities
    store = StateStore(tmp_path / "db", network=NETWORK, owner=me.peer_id.digest)
    core = make_core(me)
    for identity in (a, member, b):
        forger = Forger(identity, NETWORK)
        deliver(core, forger.updates(forger.span(forger.records([("k", b"v")]))))
    store.apply(core.take_changes())
    smaller = ReplicaCore(NETWORK, me.peer_id.digest, me.record.public_key_der, max_owners=3)
    smaller.protect(member.peer_id.digest)  # what the node does before loading
    store.load_into(smaller)
    assert member.peer_id.digest in smaller.owners and smaller.charged_owners == 1
    store.close()
