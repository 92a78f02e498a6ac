"""The DHT record store (SPEC-dht.md §6): order, CAS, time, expiry, replication and quotas."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptls.dht import _records as records
from p2ptls.dht._store import RecordExpired, RecordStore, Refusal, StoreConfig
from tests.conftest import identity_pool
from tests.dht_record_support import LIFETIME, T0, immutable, mutable, owner

NOW = T0 + 10


def test_newer_record_replaces_and_replay_of_a_lower_sequence_is_refused() -> None:
    store = RecordStore()
    assert store.put_untrusted(mutable(1, b"one"), "a", NOW).stored
    assert store.put_untrusted(mutable(2, b"two"), "a", NOW).stored
    assert store.put_untrusted(mutable(1, b"one"), "b", NOW).refusal is Refusal.STALE
    held = store.get(mutable(1).key, NOW)
    assert isinstance(held, records.MutableValue) and held.value == b"two"


def test_equivocation_converges_whatever_the_order() -> None:
    one, other = mutable(4, b"one"), mutable(4, b"other")
    winner = one if one.encoding > other.encoding else other
    for first, second in ((one, other), (other, one)):
        store = RecordStore()
        store.put_untrusted(first, "a", NOW)
        store.put_untrusted(second, "b", NOW)
        assert store.get(one.key, NOW) == winner


@settings(derandomize=True, max_examples=50)
@given(st.permutations(range(6)))
def test_any_arrival_order_ends_at_the_same_record(order: list[int]) -> None:
    candidates = [mutable(1 + i // 2, bytes([i])) for i in range(6)]
    store = RecordStore()
    for index in order:
        store.put_untrusted(candidates[index], "a", NOW)
    best = max(candidates, key=lambda r: (r.sequence, r.encoding))
    assert store.get(best.key, NOW) == best


def test_cas_must_name_the_held_sequence() -> None:
    store = RecordStore()
    store.put_untrusted(mutable(1), "a", NOW)
    store.put_untrusted(mutable(2), "a", NOW)
    assert store.put_untrusted(mutable(3, cas=1), "a", NOW).refusal is Refusal.CAS_MISMATCH
    assert store.put_untrusted(mutable(3, cas=2), "a", NOW).stored
    # A holder that holds nothing cannot judge: it accepts (replication must reach it).
    assert RecordStore().put_untrusted(mutable(9, cas=4), "a", NOW).stored


def test_tombstone_wins_and_the_old_value_cannot_come_back() -> None:
    store = RecordStore()
    store.put_untrusted(mutable(1, b"v"), "a", NOW)
    assert store.put_untrusted(mutable(2, None), "a", NOW).stored
    held = store.get(mutable(1).key, NOW)
    assert isinstance(held, records.MutableValue) and held.deleted
    assert store.put_untrusted(mutable(1, b"v"), "a", NOW).refusal is Refusal.STALE


def test_time_checks() -> None:
    store = RecordStore()
    skew = store.config.limits.max_clock_skew
    assert store.put_untrusted(mutable(1, issued_at=NOW + 301), "a", NOW).refusal is Refusal.FUTURE
    assert store.put_untrusted(mutable(1, issued_at=int(NOW + skew)), "a", NOW).stored
    long = mutable(2, lifetime=48 * 3600 + 1)
    assert store.put_untrusted(long, "a", NOW).refusal is Refusal.LIFETIME
    old = mutable(3, issued_at=T0 - LIFETIME)
    assert store.put_untrusted(old, "a", NOW).refusal is Refusal.EXPIRED


def test_the_same_bytes_again_change_nothing() -> None:
    store = RecordStore()
    record = immutable(b"x")
    assert store.put_untrusted(record, "a", NOW).stored
    assert store.put_untrusted(record, "b", NOW).stored
    assert len(store) == 1 and store.total_bytes == len(record.encoding)
    assert store.next_deadline() == record.expires_at


def test_expiry_sweep_and_deadline() -> None:
    store = RecordStore()
    assert store.next_deadline() == math.inf
    short = immutable(b"short", lifetime=100)
    long = immutable(b"long", lifetime=200)
    store.put_untrusted(long, "a", NOW)
    store.put_untrusted(short, "a", NOW)
    assert store.next_deadline() == T0 + 100
    assert store.handle_timers(T0 + 99) == []
    assert store.handle_timers(T0 + 100) == [RecordExpired(short.key)]
    assert store.get(short.key, T0 + 100) is None and store.get(long.key, T0 + 100) == long
    assert store.handle_timers(T0 + 500) == [RecordExpired(long.key)]
    assert len(store) == 0 and store.total_bytes == 0 and store.next_deadline() == math.inf


def test_a_replaced_record_keeps_only_its_own_expiry() -> None:
    store = RecordStore()
    store.put_untrusted(mutable(1, lifetime=100), "a", NOW)
    store.put_untrusted(mutable(2, lifetime=1000), "a", NOW)
    assert store.handle_timers(T0 + 100) == []
    assert store.next_deadline() == T0 + 1000


def test_records_are_offered_for_replication_once_an_hour() -> None:
    store = RecordStore()
    record = immutable(b"x")
    store.put_untrusted(record, "a", NOW)
    assert store.records_to_replicate(NOW + 3599) == []
    assert store.records_to_replicate(NOW + 3600) == [record]
    assert store.records_to_replicate(NOW + 3601) == []
    assert store.records_to_replicate(NOW + 7200) == [record]


def test_a_flooding_source_evicts_only_its_own_records() -> None:
    config = StoreConfig(max_records=100, per_source_records=60)
    store = RecordStore(config)
    honest = [immutable(b"honest %d" % i) for i in range(10)]
    for index, record in enumerate(honest):
        assert store.put_untrusted(record, f"honest-{index % 5}", NOW).stored
    for index in range(1000):
        result = store.put_untrusted(immutable(b"flood %d" % index), "flooder", NOW)
        assert result.stored
        assert not set(result.evicted) & {record.key for record in honest}
    assert all(store.get(record.key, NOW) == record for record in honest)
    assert len(store) <= 100


def test_many_flooding_sources_still_leave_a_small_honest_source_alone() -> None:
    store = RecordStore(StoreConfig(max_records=50, per_source_records=10))
    honest = immutable(b"honest")
    store.put_untrusted(honest, "honest", NOW)
    for index in range(500):
        store.put_untrusted(immutable(b"flood %d" % index), f"flooder-{index % 20}", NOW)
    assert store.get(honest.key, NOW) == honest


def test_per_source_bytes_are_refused_beyond_the_quota() -> None:
    store = RecordStore(StoreConfig(per_source_bytes=1000))
    sizes = []
    for index in range(100):
        result = store.put_untrusted(immutable(b"%d" % index + bytes(200)), "a", NOW)
        if not result.stored:
            assert result.refusal is Refusal.QUOTA
            break
        sizes.append(index)
    assert store.total_bytes <= 1000 and len(sizes) == 4
    assert store.put_untrusted(immutable(bytes(200)), "b", NOW).stored


def test_total_bytes_are_kept_by_fair_eviction() -> None:
    store = RecordStore(StoreConfig(max_bytes=5000, per_source_bytes=4000))
    honest = immutable(b"honest" + bytes(200))
    store.put_untrusted(honest, "honest", NOW)
    for index in range(40):
        store.put_untrusted(immutable(b"%d" % index + bytes(400)), f"f{index % 2}", NOW)
        assert store.total_bytes <= 5000
    assert store.get(honest.key, NOW) == honest


def test_replacing_a_record_moves_its_bytes_to_the_new_source() -> None:
    store = RecordStore(StoreConfig(per_source_bytes=400))
    store.put_untrusted(mutable(1, bytes(200)), "a", NOW)
    assert store.put_untrusted(mutable(2, bytes(200)), "a", NOW).stored  # own bytes freed first
    assert store.put_untrusted(mutable(3, bytes(200)), "b", NOW).stored
    assert store.put_untrusted(mutable(1, bytes(200), key=owner("x")), "a", NOW).stored
    assert store.total_bytes == sum(len(mutable(i, bytes(200)).encoding) for i in (1, 3))


def test_the_newest_peer_record_wins() -> None:
    identity = identity_pool()[0]
    older = records.sign_peer_record(identity, 1, (("192.0.2.1", 1),), T0, T0 + 3600)
    newer = records.sign_peer_record(identity, 2, (("192.0.2.2", 2),), T0, T0 + 3600)
    store = RecordStore()
    assert store.put_untrusted(newer, "a", NOW).stored
    assert store.put_untrusted(older, "b", NOW).refusal is Refusal.STALE
    assert store.get(identity.peer_id.digest, NOW) == newer


def test_frequent_updates_of_one_key_keep_the_expiry_heap_small() -> None:
    store = RecordStore()
    for sequence in range(1, 500):
        assert store.put_untrusted(mutable(sequence, lifetime=1000 + sequence), "a", NOW).stored
    assert len(store._expiries) <= 2 * len(store) + 64
    assert store.next_deadline() == T0 + 1000 + 499
