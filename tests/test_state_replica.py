"""The sans-IO replication core: acceptance rules (hostile inputs 30-36), relaying, coalescing.

Every message goes through its wire encoding and ``parse_message_untrusted`` before the core sees
it, as it would from a peer.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes

import p2ptls
from p2ptls.state import _crypto
from p2ptls.state import _wire as wire
from p2ptls.state._outbound import Outbound
from p2ptls.state._replica import ReplicaCore
from p2ptls.state._store import StateStore
from p2ptls.state.errors import BadSignature, ForeignNetwork, StateProtocolError
from p2ptls.state.testing import Forger

PSK = p2ptls.NetworkKey(bytes(range(32)))
NETWORK = _crypto.network_id(PSK)


def make_core(identity: p2ptls.Identity, epoch: int = 1, network: bytes = NETWORK) -> ReplicaCore:
    core = ReplicaCore(network, identity.peer_id.digest, identity.record.public_key_der)
    core.begin_epoch(_crypto.EpochSigner.create(identity, network, epoch))
    core.take_changes()  # the new epoch's certificate
    return core


def deliver(core: ReplicaCore, updates: wire.Updates):
    parsed = wire.parse_message_untrusted(updates.encode(), core.limits)
    assert isinstance(parsed, wire.Updates)
    return core.receive_updates_untrusted(parsed)


def write_and_publish(
    core: ReplicaCore, items: list[tuple[str, bytes | None]], store: StateStore | None = None
) -> None:
    """What the node does for a local write: stage, persist, sign, persist, publish."""
    for key, value in items:
        core.stage(key, value)
    changes = core.take_changes()
    if store is not None:
        store.apply(changes)
    if changes.durable_through is not None:
        core.note_durable(changes.durable_through)
    while core.sign_pending(256) is not None:
        pass
    changes = core.take_changes()
    if store is not None:
        store.apply(changes)
    if changes.published_through is not None:
        core.publish(changes.published_through)


def value(core: ReplicaCore, owner: p2ptls.Identity, key: str) -> bytes | None:
    found = core.get(owner.peer_id.digest, key)
    return None if found is None else found.value


def record(core: ReplicaCore, owner: p2ptls.Identity, key: str) -> wire.Record:
    found = core.get(owner.peer_id.digest, key)
    assert found is not None
    return found


def test_signed_span_is_applied(identities) -> None:
    replica, owner = identities[0], identities[1]
    core = make_core(replica)
    forger = Forger(owner, NETWORK)
    records = forger.records([("foo", b"bar"), ("gone", None)])
    outcome = deliver(core, forger.updates(forger.span(records)))
    assert [r.key for r in outcome.applied] == ["foo", "gone"]
    assert value(core, owner, "foo") == b"bar"
    assert core.mark(owner.peer_id.digest) == (1, 2)
    assert outcome.advanced == {owner.peer_id.digest: (1, 2)}


# -- 30: bad signatures ----------------------------------------------------------------------------


def test_bad_batch_signature_rejects_the_whole_message(identities) -> None:
    replica, owner, other = identities[0], identities[1], identities[2]
    core = make_core(replica)
    good = Forger(other, NETWORK)
    forger = Forger(owner, NETWORK)
    records = forger.records([("foo", b"bar")])
    batch = forger.batch(records)
    broken = wire.Batch(
        batch.network_id,
        batch.owner,
        batch.epoch,
        batch.first_seq,
        batch.count,
        batch.body,
        bytes([batch.signature[0] ^ 1]) + batch.signature[1:],
    )
    good_span = good.span(good.records([("x", b"1")]))
    message = wire.Updates(
        (good.certificate, forger.certificate), (good_span, forger.span(records, batch=broken))
    )
    with pytest.raises(BadSignature):
        deliver(core, message)
    # Nothing of the message was applied, not even the valid span before the bad one.
    assert value(core, other, "x") is None
    assert value(core, owner, "foo") is None
    assert core.take_changes().empty


def test_bad_certificate_signature_is_rejected(identities) -> None:
    core = make_core(identities[0])
    forger = Forger(identities[1], NETWORK)
    certificate = forger.certificate
    forged = wire.EpochCertificate(
        certificate.network_id,
        certificate.owner,
        certificate.epoch,
        certificate.signing_key,
        certificate.signature[:-1] + bytes([certificate.signature[-1] ^ 0x80]),
        certificate.public_key_der,
    )
    span = forger.span(forger.records([("foo", b"bar")]))
    with pytest.raises(BadSignature):
        deliver(core, forger.updates(span, certificates=[forged]))
    assert value(core, identities[1], "foo") is None


def test_record_that_does_not_match_its_signed_hash_is_rejected(identities) -> None:
    core = make_core(identities[0])
    forger = Forger(identities[1], NETWORK)
    honest = forger.records([("foo", b"bar")])
    batch = forger.batch(honest)
    tampered = wire.encode_record(forger.owner, 1, 1, "foo", b"baz")  # same length, other value
    with pytest.raises(BadSignature):
        deliver(core, forger.updates(forger.span([tampered], batch=batch)))
    assert value(core, identities[1], "foo") is None


# -- 31: A signs a record claiming to be B ---------------------------------------------------------


def test_certificate_for_another_owner_with_own_key_is_rejected(identities) -> None:
    core = make_core(identities[0])
    alice, bob = identities[1], identities[2]
    forger = Forger(alice, NETWORK)
    real = forger.certificate
    claimed = wire.EpochCertificate(
        real.network_id,
        bob.peer_id.digest,
        real.epoch,
        real.signing_key,
        real.signature,
        real.public_key_der,  # alice's key: SHA-256(key) is not bob's id
    )
    with pytest.raises(BadSignature):
        deliver(core, wire.Updates((claimed,), ()))


def test_certificate_for_another_owner_with_its_key_but_own_signature_is_rejected(
    identities,
) -> None:
    core = make_core(identities[0])
    alice, bob = identities[1], identities[2]
    forger = Forger(alice, NETWORK)
    unsigned = wire.EpochCertificate(
        NETWORK, bob.peer_id.digest, 1, forger.certificate.signing_key, b"", b""
    )
    signature = alice._private_key.sign(
        _crypto.CERT_CONTEXT + unsigned.body, _crypto._pss(), hashes.SHA256()
    )
    claimed = wire.EpochCertificate(
        NETWORK,
        bob.peer_id.digest,
        1,
        forger.certificate.signing_key,
        signature,
        bob.record.public_key_der,
    )
    with pytest.raises(BadSignature):
        deliver(core, wire.Updates((claimed,), ()))
    assert bob.peer_id.digest not in core.owners


def test_batch_for_another_owner_signed_with_own_key_is_rejected(identities) -> None:
    core = make_core(identities[0])
    alice, bob = identities[1], identities[2]
    honest_bob = Forger(bob, NETWORK)
    deliver(core, honest_bob.updates(honest_bob.span(honest_bob.records([("k", b"bob's")]))))
    mallory = Forger(alice, NETWORK)
    records = [wire.encode_record(bob.peer_id.digest, 1, 2, "k", b"forged")]
    batch = mallory.batch(records, owner=bob.peer_id.digest)  # alice's Ed25519 key
    span = wire.Span(bob.peer_id.digest, (1, 1), (wire.Group(batch, tuple(records)),))
    with pytest.raises(BadSignature):
        deliver(core, mallory.updates(span))
    assert value(core, bob, "k") == b"bob's"


def test_record_claiming_another_owner_inside_own_batch_is_rejected(identities) -> None:
    core = make_core(identities[0])
    alice, bob = identities[1], identities[2]
    mallory = Forger(alice, NETWORK)
    records = [wire.encode_record(bob.peer_id.digest, 1, 1, "k", b"forged")]
    batch = mallory.batch(records)  # alice's batch, hashing a record that names bob
    span = wire.Span(alice.peer_id.digest, wire.NO_VERSION, (wire.Group(batch, tuple(records)),))
    with pytest.raises(StateProtocolError):
        deliver(core, mallory.updates(span))
    assert bob.peer_id.digest not in core.owners


# -- 32: older versions, also after the replica restarts -------------------------------------------


def test_older_version_is_rejected_also_after_restart(identities, tmp_path) -> None:
    replica, owner = identities[0], identities[1]
    forger = Forger(owner, NETWORK)
    old = forger.records([("k", b"old")])
    old_batch = forger.batch(old)
    new = forger.records([("k", b"new")])
    path = tmp_path / "replica.sqlite3"

    store = StateStore(path, network=NETWORK, owner=replica.peer_id.digest)
    core = make_core(replica)
    deliver(core, forger.updates(forger.span(old, batch=old_batch)))
    deliver(core, forger.updates(forger.span(new, since=(1, 1))))
    store.apply(core.take_changes())
    replay = deliver(core, forger.updates(forger.span(old, batch=old_batch)))
    assert replay.applied == [] and replay.stale == 1
    store.close()

    # A restarted replica: state and marks come back from the database.
    store = StateStore(path, network=NETWORK, owner=replica.peer_id.digest)
    restarted = ReplicaCore(NETWORK, replica.peer_id.digest, replica.record.public_key_der)
    store.load_into(restarted)
    store.close()
    assert value(restarted, owner, "k") == b"new"
    assert restarted.mark(owner.peer_id.digest) == (1, 2)
    replay = deliver(restarted, forger.updates(forger.span(old, batch=old_batch)))
    assert replay.applied == [] and replay.stale == 1
    assert value(restarted, owner, "k") == b"new"
    # An older epoch is older whatever its sequence number.
    earlier = Forger(owner, NETWORK, epoch=1)
    earlier.next_seq = 50
    late = earlier.records([("k", b"older epoch")])
    newer_epoch = Forger(owner, NETWORK, epoch=2)
    deliver(restarted, newer_epoch.updates(newer_epoch.span(newer_epoch.records([("k", b"e2")]))))
    outcome = deliver(restarted, earlier.updates(earlier.span(late, since=(1, 2))))
    assert outcome.applied == [] and value(restarted, owner, "k") == b"e2"


# -- 33: equivocation ------------------------------------------------------------------------------


def test_same_version_with_different_value_is_refused_and_reported(identities) -> None:
    core = make_core(identities[0])
    owner = identities[1]
    forger = Forger(owner, NETWORK)
    first = forger.records([("k", b"one")], start=1)
    second = forger.records([("k", b"two")], start=1)
    assert first[0].version == second[0].version
    deliver(core, forger.updates(forger.span(first)))
    outcome = deliver(core, forger.updates(forger.span(second)))
    assert outcome.applied == []
    assert len(outcome.equivocations) == 1
    evidence = outcome.equivocations[0]
    assert (evidence.owner, evidence.epoch, evidence.seq) == (owner.peer_id.digest, 1, 1)
    assert value(core, owner, "k") == b"one"
    # The evidence is two valid signatures by the owner over different record hashes.
    held = wire.parse_batch_untrusted(evidence.held)
    offered = wire.parse_batch_untrusted(evidence.offered)
    key = forger.signer._private_key.public_key()
    assert _crypto.verify_batch(key, held) and _crypto.verify_batch(key, offered)
    assert held.hash_at(1) != offered.hash_at(1)


def test_overlapping_batches_that_disagree_are_equivocation(identities) -> None:
    core = make_core(identities[0])
    forger = Forger(identities[1], NETWORK)
    three = forger.records([("a", b"1"), ("b", b"2"), ("c", b"3")], start=1)
    deliver(core, forger.updates(forger.span(three)))
    other = forger.records([("b", b"2"), ("c", b"X"), ("d", b"4")], start=2)
    outcome = deliver(core, forger.updates(forger.span(other)))
    assert [e.seq for e in outcome.equivocations] == [3]
    assert value(core, identities[1], "d") is None


def test_two_certificates_for_one_epoch_are_equivocation(identities) -> None:
    core = make_core(identities[0])
    owner = identities[1]
    first = Forger(owner, NETWORK, epoch=3)
    second = Forger(owner, NETWORK, epoch=3)  # another Ed25519 key for the same epoch
    deliver(core, first.updates(first.span(first.records([("k", b"one")]))))
    records = second.records([("k", b"two")], start=2)
    outcome = deliver(core, second.updates(second.span(records, since=(3, 1))))
    assert outcome.applied == []
    assert [e.seq for e in outcome.equivocations] == [0, 2]
    assert value(core, owner, "k") == b"one"


# -- 34: another network ---------------------------------------------------------------------------


def test_records_of_another_network_are_rejected(identities) -> None:
    core = make_core(identities[0])
    other_network = _crypto.network_id(p2ptls.NetworkKey(bytes(32)))
    foreign = Forger(identities[1], other_network)
    span = foreign.span(foreign.records([("k", b"v")]))
    with pytest.raises(ForeignNetwork):
        deliver(core, foreign.updates(span))
    # A batch of the other network under a certificate of ours is refused too.
    local = Forger(identities[2], NETWORK)
    records = local.records([("k", b"v")])
    batch = local.batch(records, network=other_network)
    with pytest.raises(ForeignNetwork):
        deliver(core, local.updates(local.span(records, batch=batch)))
    assert core.take_changes().empty


# -- 35: floods are coalesced and do not hold others back ------------------------------------------


def test_flood_from_one_owner_is_coalesced_and_others_still_flow(identities) -> None:
    relay, flooder, quiet, peer = identities[0], identities[1], identities[2], identities[3]
    core = make_core(relay)
    flood = Forger(flooder, NETWORK)
    # 20,000 writes to 4,000 keys, in batches of 200: the relay keeps only the current records.
    for _ in range(100):
        records = flood.records(
            [(f"key-{(flood.next_seq + i) % 4000}", b"x" * 100) for i in range(200)]
        )
        deliver(core, flood.updates(flood.span(records, since=core.mark(flood.owner))))
    assert len(core.owners[flood.owner].entries) == 4000
    calm = Forger(quiet, NETWORK)
    deliver(core, calm.updates(calm.span(calm.records([("hello", b"world")]))))

    outbound = Outbound(core, budget=64 * 1024)
    outbound.note_digest(wire.Digest(((flood.owner, wire.NO_VERSION), (calm.owner, (0, 0)))))
    outbound.note_changed(flood.owner)
    outbound.note_changed(calm.owner)
    receiver = make_core(peer)
    messages = []
    while (message := outbound.next_updates()) is not None:
        messages.append(message)
        deliver(receiver, message)
    owners_per_message = [{span.owner for span in m.spans} for m in messages]
    # The quiet owner's update goes out within the first two messages although the flood
    # needs many; the flood arrives coalesced: 4,000 current records, not 20,000 writes.
    assert any(calm.owner in owners for owners in owners_per_message[:2])
    assert len(messages) > 5
    sent = sum(len(g.records) for m in messages for s in m.spans for g in s.groups)
    assert sent == 4000 + 1
    assert receiver.owners[flood.owner].values() == core.owners[flood.owner].values()
    assert value(receiver, quiet, "hello") == b"world"


# -- 36: restarts never reuse versions -------------------------------------------------------------


def test_owner_restart_moves_to_a_new_epoch_and_reissues_unsigned_records(
    identities, tmp_path
) -> None:
    owner = identities[0]
    path = tmp_path / "owner.sqlite3"
    store = StateStore(path, network=NETWORK, owner=owner.peer_id.digest)
    epoch = store.next_epoch()
    core = ReplicaCore(NETWORK, owner.peer_id.digest, owner.record.public_key_der)
    core.begin_epoch(_crypto.EpochSigner.create(owner, NETWORK, epoch))
    write_and_publish(core, [("a", b"1"), ("b", b"2")], store)
    # Two more writes become durable, then the process dies before signing them.
    core.stage("b", b"3")
    core.stage("c", b"4")
    changes = core.take_changes()
    store.apply(changes)
    lost_versions = {(1, 3), (1, 4)}
    assert changes.durable_through == (1, 4)
    store.close()

    store = StateStore(path, network=NETWORK, owner=owner.peer_id.digest)
    restarted = ReplicaCore(NETWORK, owner.peer_id.digest, owner.record.public_key_der)
    store.load_into(restarted)
    epoch = store.next_epoch()
    assert epoch == 2
    restarted.begin_epoch(_crypto.EpochSigner.create(owner, NETWORK, epoch))
    # The acknowledged writes survive, under new versions of the new epoch.
    assert value(restarted, owner, "b") == b"3" and value(restarted, owner, "c") == b"4"
    reissued = {record(restarted, owner, k).version for k in ("b", "c")}
    assert reissued == {(2, 1), (2, 2)}
    assert not reissued & lost_versions
    write_and_publish(restarted, [], store)
    assert restarted.mark(owner.peer_id.digest) == (2, 2)
    # A replica that saw epoch 1 accepts epoch 2 as newer.
    replica = make_core(identities[1])
    outbound = Outbound(restarted)
    outbound.note_digest(wire.Digest(((owner.peer_id.digest, (1, 2)),)))
    message = outbound.next_updates()
    assert message is not None
    assert [s.since for s in message.spans] == [(1, 2)]
    outcome = deliver(replica, message)
    assert outcome.gaps == {owner.peer_id.digest: wire.NO_VERSION}
    outbound.note_pull(wire.Pull(((owner.peer_id.digest, wire.NO_VERSION),)))
    while (message := outbound.next_updates()) is not None:
        deliver(replica, message)
    assert replica.owners[owner.peer_id.digest].values() == {"a": b"1", "b": b"3", "c": b"4"}
    store.close()


def test_epochs_only_grow(identities, tmp_path) -> None:
    store = StateStore(tmp_path / "e.sqlite3", network=NETWORK, owner=identities[0].peer_id.digest)
    assert [store.next_epoch() for _ in range(3)] == [1, 2, 3]
    assert store.next_epoch(minimum=100) == 100
    assert store.next_epoch() == 101
    store.close()


# -- anti-entropy details --------------------------------------------------------------------------


def test_relay_hands_on_exact_bytes_and_third_party_converges(identities) -> None:
    owner, relay, far = identities[0], identities[1], identities[2]
    owner_core, relay_core, far_core = make_core(owner), make_core(relay), make_core(far)
    write_and_publish(owner_core, [("a", b"1"), ("b", b"2")])
    write_and_publish(owner_core, [("a", b"3"), ("c", None)])

    def sync(source: ReplicaCore, target: ReplicaCore) -> None:
        outbound = Outbound(source)
        outbound.note_digest(target.digest())
        for owner_id, since in target.wanted(source.digest()):
            outbound.note_pull(wire.Pull(((owner_id, since),)))
        while (message := outbound.next_updates()) is not None:
            deliver(target, message)

    sync(owner_core, relay_core)
    sync(relay_core, far_core)
    oid = owner.peer_id.digest
    assert far_core.owners[oid].values() == {"a": b"3", "b": b"2"}
    assert record(far_core, owner, "c").value is None  # the tombstone travelled
    for key in ("a", "b", "c"):
        assert record(far_core, owner, key).raw == record(owner_core, owner, key).raw
    # The first batch still proves "b"; once every record of a batch is superseded it is dropped.
    assert len(far_core.owners[oid].proofs) == 2
    write_and_publish(owner_core, [("b", b"4")])
    sync(owner_core, relay_core)
    sync(relay_core, far_core)
    assert len(far_core.owners[oid].proofs) == 2
    assert record(far_core, owner, "b").value == b"4"


def test_span_past_our_mark_is_a_gap_not_applied(identities) -> None:
    core = make_core(identities[0])
    forger = Forger(identities[1], NETWORK)
    first = forger.records([("a", b"1")])
    second = forger.records([("b", b"2")])
    outcome = deliver(core, forger.updates(forger.span(second, since=(1, 1))))
    assert outcome.applied == [] and outcome.gaps == {forger.owner: wire.NO_VERSION}
    deliver(core, forger.updates(forger.span(first)))
    deliver(core, forger.updates(forger.span(second, since=(1, 1))))
    assert core.owners[forger.owner].values() == {"a": b"1", "b": b"2"}


def test_missing_certificate_asks_for_a_pull_instead_of_failing(identities) -> None:
    core = make_core(identities[0])
    forger = Forger(identities[1], NETWORK)
    span = forger.span(forger.records([("a", b"1")]))
    outcome = deliver(core, forger.updates(span, certificates=[]))
    assert outcome.applied == [] and outcome.gaps == {forger.owner: wire.NO_VERSION}


def test_own_records_from_others_are_never_applied(identities) -> None:
    me = identities[0]
    core = make_core(me, epoch=5)
    old_me = Forger(me, NETWORK, epoch=7)
    outcome = deliver(core, old_me.updates(old_me.span(old_me.records([("k", b"x")]))))
    assert outcome.applied == [] and outcome.own_proven == (7, 1)
    assert core.get(me.peer_id.digest, "k") is None
    assert core.note_own_proof(outcome.own_proven)


def test_owner_table_is_bounded(identities) -> None:
    core = ReplicaCore(
        NETWORK, identities[0].peer_id.digest, identities[0].record.public_key_der, max_owners=2
    )
    core.begin_epoch(_crypto.EpochSigner.create(identities[0], NETWORK, 1))
    for identity in identities[1:]:
        forger = Forger(identity, NETWORK)
        deliver(core, forger.updates(forger.span(forger.records([("k", b"v")]))))
    assert len(core.owners) == 2
