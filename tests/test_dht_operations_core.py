"""The decisions of the DHT's operations, sans-IO: which values count, which wins, where to write
back, and when to republish and replicate."""

from __future__ import annotations

import math

import attrs

from p2ptls.dht._lookup import Found, LookupResult, ValueAnswer
from p2ptls.dht._operations import (
    Maintenance,
    ReplicationDue,
    RepublishDue,
    newest,
    usable_value,
    write_back_targets,
)
from p2ptls.dht._records import DEFAULT_LIMITS, ImmutableValue, MutableValue, Record
from p2ptls.dht._store import RecordStore, StoreConfig
from tests.dht_record_support import T0, immutable, mutable


@attrs.frozen
class Node:
    node_id: bytes


def node(number: int) -> Node:
    return Node(bytes([number]) * 32)


def result(closest: list[Node], values: dict[int, Record]) -> LookupResult[Node, Record]:
    return LookupResult(
        target=bytes(32),
        closest=tuple(Found(each, 1) for each in closest),
        values=tuple(ValueAnswer(node(number), value) for number, value in values.items()),
        verified_contacts=tuple(closest),
        requests_sent=len(closest),
        failures=0,
        elapsed=0.0,
    )


def test_only_current_values_of_the_kind_asked_for_count() -> None:
    current = mutable(1)
    assert usable_value(current, MutableValue, T0 + 1, DEFAULT_LIMITS)
    assert not usable_value(current, ImmutableValue, T0 + 1, DEFAULT_LIMITS)
    assert not usable_value(current, MutableValue, current.expires_at, DEFAULT_LIMITS)
    assert not usable_value(current, MutableValue, T0 - 3600, DEFAULT_LIMITS)  # from the future


def test_the_newest_value_wins_whatever_the_order() -> None:
    values = [mutable(2, b"b"), mutable(3, b"c"), mutable(1, b"a")]
    assert newest(values) == values[1]
    assert newest(reversed(values)) == values[1]
    assert newest([]) is None


def test_write_back_goes_to_the_nearest_that_returned_nothing_or_an_older_value() -> None:
    old, best, newer = mutable(1, b"old"), mutable(2, b"best"), mutable(3, b"newer")
    closest = [node(1), node(2), node(3), node(4)]
    found = result(closest, {1: best, 2: old, 4: newer, 9: old})
    assert write_back_targets(found, best) == [node(2), node(3)]
    # a holder farther than the k nearest (node 9) is not written to
    assert write_back_targets(result([], {9: old}), best) == []


def test_republishing_comes_every_interval_and_stops_when_forgotten() -> None:
    schedule = Maintenance(republish_interval=100.0, replication_check=1000.0, now=0.0)
    assert schedule.next_deadline() == 1000.0
    schedule.published(b"a", now=10.0)
    schedule.published(b"b", now=20.0)
    assert schedule.next_deadline() == 110.0
    assert schedule.handle_timers(109.0) == []
    assert schedule.handle_timers(125.0) == [RepublishDue(b"a"), RepublishDue(b"b")]
    assert schedule.next_deadline() == 225.0  # one interval after the node was due to republish
    schedule.published(b"a", now=130.0)  # the node republished: the interval starts again
    schedule.forget(b"b")
    assert schedule.next_deadline() == 230.0
    assert b"b" not in schedule and b"a" in schedule
    assert schedule.handle_timers(230.0) == [RepublishDue(b"a")]


def test_replication_checks_come_every_interval_and_the_store_says_what_is_due() -> None:
    schedule = Maintenance(republish_interval=math.inf, replication_check=300.0, now=T0)
    store = RecordStore(StoreConfig(replicate_interval=3600.0))
    record = immutable(b"held")
    assert store.put_untrusted(record, "source", T0).stored
    assert schedule.handle_timers(T0 + 299) == []
    assert schedule.handle_timers(T0 + 300) == [ReplicationDue()]
    assert store.records_to_replicate(T0 + 300) == []  # received less than an hour ago
    assert schedule.next_deadline() == T0 + 600
    assert store.records_to_replicate(T0 + 3600) == [record]
    assert store.records_to_replicate(T0 + 3900) == []  # offered once per hour
