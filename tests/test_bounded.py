"""FairTable: per-source and total bounds with fair eviction."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2ptls._bounded import FairTable
from p2ptls.trust import KnownPeers, admit_network_members


def test_a_source_at_its_share_evicts_only_its_own_oldest() -> None:
    table: FairTable[int, str, str] = FairTable(capacity=10, per_source=3)
    table.put(100, "honest", "honest")
    evicted = []
    for key in range(8):
        evicted += table.put(key, "flood", "flooder", now=key)
    assert table.count("flooder") == 3
    assert table.get(100) == "honest"
    assert [e.key for e in evicted] == [0, 1, 2, 3, 4]
    assert all(e.source == "flooder" for e in evicted)


def test_when_full_the_largest_source_loses_its_oldest_entry() -> None:
    table: FairTable[str, int, str] = FairTable(capacity=6, per_source=4)
    for i in range(4):
        table.put(f"a{i}", i, "a", now=i)
    table.put("b0", 0, "b", now=10)
    table.put("b1", 1, "b", now=11)
    evicted = table.put("c0", 0, "c", now=12)
    assert [(e.key, e.source) for e in evicted] == [("a0", "a")]
    assert len(table) == 6
    assert "c0" in table


def test_a_single_entry_source_survives_a_flood_from_a_few_sources() -> None:
    table: FairTable[str, None, str] = FairTable(capacity=8, per_source=4)
    table.put("honest", None, "h", now=0)
    for i in range(1000):
        table.put(f"x{i}", None, f"attacker{i % 3}", now=i + 1)
        assert "honest" in table
    assert len(table) == 8


def test_replacing_a_key_moves_it_and_expire_removes_old_entries() -> None:
    table: FairTable[str, int, str] = FairTable(capacity=4, per_source=4)
    table.put("k", 1, "a", now=0)
    table.put("k", 2, "b", now=5)
    assert table.source_of("k") == "b"
    assert table.count("a") == 0
    table.put("old", 0, "a", now=1)
    expired = table.expire(now=10, max_age=6)
    assert [e.key for e in expired] == ["old"]
    assert table.get("k") == 2
    assert table.pop("k") == 2
    assert table.pop("k") is None
    assert len(table) == 0


def test_would_evict_other() -> None:
    table: FairTable[int, None, str] = FairTable(capacity=2, per_source=2)
    table.put(1, None, "a")
    assert not table.would_evict_other("b")
    table.put(2, None, "a")
    assert table.would_evict_other("b")
    assert not table.would_evict_other("a")  # a evicts its own


def test_bounds_are_validated() -> None:
    with pytest.raises(ValueError):
        FairTable(capacity=0, per_source=1)


@given(
    st.integers(1, 20),
    st.integers(1, 20),
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 6)), max_size=200),
)
def test_bounds_always_hold(capacity: int, per_source: int, puts: list[tuple[int, int]]) -> None:
    table: FairTable[int, int, int] = FairTable(capacity, per_source)
    for now, (key, source) in enumerate(puts):
        table.put(key, now, source, now=now)
        assert len(table) <= capacity
        assert all(table.count(s) <= per_source for s in range(7))
        assert sum(table.count(s) for s in range(7)) == len(table)


def test_admitted_peers_are_bounded_and_configured_peers_are_never_forgotten(identities) -> None:
    configured, first, second, third = (identity.record for identity in identities[:4])
    peers = KnownPeers([configured], admit_network_members, max_admitted=2)
    for record in (first, second, first, third):  # first authenticates again: most recent
        peers.note_authenticated(record)
    assert [r.peer_id for r in peers.admitted] == [first.peer_id, third.peer_id]
    assert second.peer_id not in peers
    assert configured.peer_id in peers
    peers.note_authenticated(configured)
    assert len(peers) == 3
    assert peers.is_trusted(second)  # the policy still admits a forgotten peer


def test_evict_one_takes_the_fairest_victim() -> None:
    table: FairTable[str, int, str] = FairTable(capacity=10, per_source=10)
    assert table.evict_one() is None
    table.put("a1", 1, "a", now=1.0)
    table.put("b1", 1, "b", now=2.0)
    table.put("b2", 2, "b", now=3.0)
    evicted = table.evict_one()
    assert evicted is not None and (evicted.key, evicted.source) == ("b1", "b")
    assert set(table) == {"a1", "b2"}


@given(
    st.integers(1, 12),
    st.integers(1, 12),
    st.lists(st.tuples(st.integers(0, 30), st.integers(0, 8), st.booleans()), max_size=300),
)
def test_eviction_always_takes_the_oldest_entry_of_a_largest_source(
    capacity: int, per_source: int, steps: list[tuple[int, int, bool]]
) -> None:
    table: FairTable[int, int, int] = FairTable(capacity, per_source)
    added: dict[int, tuple[int, int]] = {}  # key -> (source, insertion number)
    for number, (key, source, remove) in enumerate(steps):
        if remove:
            table.pop(key)
            added.pop(key, None)
            continue
        before = {s: table.count(s) for s in range(9)}
        own_full = before[source] - (added.get(key, (None,))[0] == source) >= table.per_source
        added.pop(key, None)
        evicted = table.put(key, number, source, now=0.0)  # equal times: order breaks ties
        for victim in evicted:
            if victim.source == source and own_full:
                continue  # a source at its share evicts its own oldest
            largest = max(before.values())
            assert before[victim.source] == largest
            oldest = min((order, k) for k, (s, order) in added.items() if before[s] == largest)
            assert victim.key == oldest[1]
        for victim in evicted:
            added.pop(victim.key, None)
        added[key] = (source, number)
