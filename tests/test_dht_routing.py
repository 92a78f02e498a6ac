"""The Kademlia routing table: splitting, ordering, ping-before-evict, address caps, hearsay
bounds, persistence, timers, and its bounds under random operations."""

from __future__ import annotations

import ipaddress
import math
import random
from typing import cast

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from p2ptls.dht._ids import KEY_BITS, Contact, common_prefix_length, distance
from p2ptls.dht._routing import (
    PingDue,
    PingNeeded,
    RefreshDue,
    RoutingConfig,
    RoutingTable,
)
from p2ptls.identity import PeerId, PeerRecord

OWN = bytes(32)


@attrs.frozen
class _StubRecord:
    """Stands in for a PeerRecord: the table reads only the id, and real ids cannot be chosen."""

    peer_id: PeerId


def contact(node_id: bytes, host: str = "127.0.0.1", port: int = 4000) -> Contact:
    return Contact(cast(PeerRecord, _StubRecord(PeerId(node_id))), host, port)


def node_id_at(prefix: int, serial: int, own: bytes = OWN) -> bytes:
    """An id sharing exactly ``prefix`` leading bits with ``own`` (``serial`` fills the rest)."""
    free = KEY_BITS - prefix - 1
    value = int.from_bytes(own, "big") ^ (1 << free) ^ (serial % (1 << free))
    return value.to_bytes(32, "big")


def contacts_at(prefix: int, count: int, host: str = "127.0.0.1", start: int = 0) -> list[Contact]:
    return [contact(node_id_at(prefix, start + serial), host) for serial in range(count)]


def fill(table: RoutingTable, contacts: list[Contact], now: float = 0.0) -> None:
    for each in contacts:
        assert table.verified(each, now) == []


# ---- splitting and ordering -------------------------------------------------------------------


def test_only_the_bucket_holding_our_own_id_splits() -> None:
    table = RoutingTable(OWN)
    far = contacts_at(0, 21)
    fill(table, far[:20])
    assert table.stats.buckets == 1
    # The 21st far contact splits the only bucket; all 20 stay in bucket 0, which is full and
    # no longer ours, so it does not split again: the oldest is pinged instead.
    events = table.verified(far[20], 1.0)
    assert events == [PingNeeded(far[0], far[20])]
    assert table.stats.buckets == 2
    assert table.stats.bucket_sizes == (20, 0)
    # Near contacts keep splitting the last bucket.
    fill(table, contacts_at(1, 20) + contacts_at(2, 20) + contacts_at(3, 5))
    assert list(table.stats.bucket_sizes) == [20, 20, 20, 5]
    assert len(table) == 65


def test_a_split_moves_the_nearer_contacts_and_candidates_to_the_new_bucket() -> None:
    table = RoutingTable(OWN)
    near, far = contacts_at(5, 10), contacts_at(0, 10)
    fill(table, near + far)
    hearsay = contact(node_id_at(7, 1))
    table.seen_unverified(hearsay, 0.0, source=None)
    fill(table, [contact(node_id_at(0, 99))])
    assert table.stats.bucket_sizes == (11, 10)
    assert table.closest(OWN, 1, verified_only=False) == [hearsay]


def test_buckets_are_ordered_least_recently_seen_first() -> None:
    table = RoutingTable(OWN)
    first, second, third = contacts_at(0, 3)
    fill(table, [first, second, third])
    assert list(table) == [first, second, third]
    table.verified(first, 5.0)
    assert list(table) == [second, third, first]


# ---- ping before evict ------------------------------------------------------------------------


def full_far_bucket() -> tuple[RoutingTable, list[Contact]]:
    table = RoutingTable(OWN)
    far = contacts_at(0, 20)
    fill(table, far)
    fill(table, contacts_at(1, 1))  # the split: bucket 0 cannot split any more
    return table, far


def test_an_answered_ping_keeps_the_old_contact() -> None:
    table, far = full_far_bucket()
    newcomer = contact(node_id_at(0, 500))
    [event] = table.verified(newcomer, 1.0)
    assert event == PingNeeded(far[0], newcomer)
    assert table.ping_answered(far[0], 2.0) == []
    assert far[0].node_id in table and newcomer.node_id not in table
    assert list(table)[19] == far[0]  # moved to the tail
    # The newcomer waits as a candidate, never an answer to others.
    assert newcomer not in table.closest(newcomer.node_id, 20)
    assert newcomer in table.closest(newcomer.node_id, 20, verified_only=False)


def test_a_failed_ping_admits_the_newcomer() -> None:
    table, far = full_far_bucket()
    newcomer = contact(node_id_at(0, 500))
    table.verified(newcomer, 1.0)
    assert table.ping_failed(far[0], 2.0) == []
    assert far[0].node_id not in table and newcomer.node_id in table
    assert table.stats.pending_pings == 0


def test_one_eviction_ping_per_bucket_and_a_bounded_number_in_all() -> None:
    table = RoutingTable(OWN, RoutingConfig(max_pending_pings=1))
    fill(table, contacts_at(0, 20) + contacts_at(1, 20) + contacts_at(2, 1))
    assert len(table.verified(contact(node_id_at(0, 500)), 1.0)) == 1
    assert table.verified(contact(node_id_at(0, 501)), 1.0) == []  # same bucket: waits
    assert table.verified(contact(node_id_at(1, 501)), 1.0) == []  # table bound
    assert table.stats.pending_pings == 1
    assert table.stats.candidates == 2


def test_an_unreported_eviction_ping_fails_after_its_timeout() -> None:
    table, far = full_far_bucket()
    newcomer = contact(node_id_at(0, 500))
    table.verified(newcomer, 10.0)
    timeout = RoutingConfig().ping_timeout
    assert table.next_deadline() == 10.0 + timeout
    table.handle_timers(10.0 + timeout)
    assert newcomer.node_id in table and far[0].node_id not in table
    assert table.ping_failed(far[0], 11.0 + timeout) == []  # a late report changes nothing


def test_a_sighting_of_the_pinged_contact_counts_as_its_answer() -> None:
    table, far = full_far_bucket()
    table.verified(contact(node_id_at(0, 500)), 1.0)
    assert table.verified(far[0], 2.0) == []
    assert far[0].node_id in table and table.stats.pending_pings == 0


# ---- failures and freed slots -----------------------------------------------------------------


def test_a_contact_that_keeps_failing_is_dropped() -> None:
    table = RoutingTable(OWN, RoutingConfig(max_failures=3))
    [peer] = contacts_at(0, 1)
    fill(table, [peer])
    table.failed(peer, 1.0)
    table.failed(peer, 2.0)
    table.verified(peer, 3.0)  # a success resets the count
    table.failed(peer, 4.0)
    table.failed(peer, 5.0)
    assert peer.node_id in table
    table.failed(peer, 6.0)
    assert peer.node_id not in table


def test_a_freed_slot_goes_to_a_verified_candidate_else_asks_to_prove_one() -> None:
    table, far = full_far_bucket()
    waiting = contact(node_id_at(0, 500))
    table.verified(waiting, 1.0)
    table.ping_answered(far[0], 2.0)  # ``waiting`` stays a verified candidate
    assert table.remove(far[1].node_id, 3.0) == []
    assert waiting.node_id in table
    hearsay = contact(node_id_at(0, 600))
    table.seen_unverified(hearsay, 4.0, source=far[2].node_id)
    assert table.remove(far[2].node_id, 5.0) == [PingDue(hearsay)]
    assert table.ping_answered(hearsay, 6.0) == []
    assert hearsay.node_id in table


def test_a_failing_candidate_is_forgotten() -> None:
    table = RoutingTable(OWN)
    hearsay = contact(node_id_at(3, 1))
    table.seen_unverified(hearsay, 0.0, source=None)
    table.failed(hearsay, 1.0)
    assert table.closest(OWN, 5, verified_only=False) == []


# ---- address caps -----------------------------------------------------------------------------


def test_a_flood_from_one_subnet_cannot_fill_a_bucket() -> None:
    """An eclipse attempt: 50 proved ids, all in one /24, aimed at one bucket."""
    table = RoutingTable(OWN)
    fill(table, contacts_at(5, 20) + contacts_at(6, 1))  # loopback: splits into 7 buckets
    for serial in range(50):
        table.verified(contact(node_id_at(0, serial), f"203.0.113.{serial + 1}"), 0.0)
    assert table.stats.bucket_sizes[0] == 2
    # ... and across buckets, three in the whole table.
    for prefix in (1, 2, 3):
        table.verified(contact(node_id_at(prefix, 7), "203.0.113.200"), 0.0)
    assert table.stats.bucket_sizes[:4] == (2, 1, 0, 0)
    table.verified(contact(node_id_at(2, 9), "203.0.114.1"), 0.0)  # another /24
    assert table.stats.bucket_sizes[:4] == (2, 1, 1, 0)


def test_ipv6_is_capped_per_48_and_mapped_ipv4_as_ipv4() -> None:
    table = RoutingTable(OWN)
    for serial in range(5):
        table.verified(contact(node_id_at(0, serial), f"2001:db8:1:{serial}::1"), 0.0)
    assert len(table) == 2
    for serial in range(5):
        table.verified(contact(node_id_at(0, 10 + serial), f"::ffff:198.51.100.{serial}"), 0.0)
    assert len(table) == 4


def test_loopback_is_exempt_so_a_one_machine_network_works() -> None:
    table = RoutingTable(OWN)
    fill(table, contacts_at(0, 20, "127.0.0.1") + contacts_at(1, 20, "::1"))
    assert len(table) == 40


def test_a_lan_deployment_exempts_its_private_ranges() -> None:
    lan = (ipaddress.IPv4Network("10.0.0.0/8"),)
    table = RoutingTable(OWN, RoutingConfig(exempt_networks=lan))
    fill(table, contacts_at(0, 20, "10.1.2.3"))
    assert len(table) == 20
    table.verified(contact(node_id_at(1, 1), "127.0.0.1"), 0.0)
    table.verified(contact(node_id_at(1, 2), "127.0.0.2"), 0.0)
    table.verified(contact(node_id_at(1, 3), "127.0.0.3"), 0.0)
    assert len(table) == 22  # loopback is no longer exempt


def test_unverified_contacts_do_not_count_toward_the_caps() -> None:
    table = RoutingTable(OWN)
    for serial in range(5):
        table.seen_unverified(contact(node_id_at(0, serial), "203.0.113.9"), 0.0, source=None)
    fill(table, [contact(node_id_at(0, 100 + n), "203.0.113.10") for n in range(2)])
    assert len(table) == 2


def test_the_address_changes_only_on_a_verified_sighting() -> None:
    table = RoutingTable(OWN)
    peer = contact(node_id_at(0, 1), "198.51.100.1")
    fill(table, [peer])
    moved = contact(peer.node_id, "198.51.100.2")
    table.seen_unverified(moved, 1.0, source=node_id_at(2, 2))
    assert list(table) == [peer]
    table.verified(moved, 2.0)
    assert list(table) == [moved]


def test_a_move_into_a_full_subnet_drops_the_contact() -> None:
    table = RoutingTable(OWN)
    crowd = [contact(node_id_at(0, n), "203.0.113.1") for n in range(2)]
    peer = contact(node_id_at(0, 9), "198.51.100.1")
    fill(table, [*crowd, peer])
    table.verified(contact(peer.node_id, "203.0.113.2"), 1.0)
    assert list(table) == crowd


# ---- hearsay ----------------------------------------------------------------------------------


def test_hearsay_is_bounded_per_source() -> None:
    table = RoutingTable(OWN)
    liar = node_id_at(5, 5)
    for serial in range(50):
        table.seen_unverified(contact(node_id_at(0, serial)), 0.0, source=liar)
    assert table.stats.candidates == RoutingConfig().hearsay_per_source
    assert len(table) == 0


def test_a_full_replacement_cache_evicts_from_its_most_represented_source() -> None:
    config = RoutingConfig(replacement_cache_size=4, hearsay_per_source=2)
    table = RoutingTable(OWN, config)
    sources = [node_id_at(9, n) for n in range(4)]
    heard = [contact(node_id_at(0, n)) for n in range(5)]
    table.seen_unverified(heard[0], 0.0, source=sources[0])
    table.seen_unverified(heard[1], 1.0, source=sources[1])
    table.seen_unverified(heard[2], 2.0, source=sources[1])
    table.seen_unverified(heard[3], 3.0, source=sources[2])
    table.seen_unverified(heard[4], 4.0, source=sources[3])
    kept = table.closest(OWN, 10, verified_only=False)
    assert set(kept) == {heard[0], heard[2], heard[3], heard[4]}


def test_unverified_contacts_never_displace_verified_ones() -> None:
    table, far = full_far_bucket()
    waiting = contact(node_id_at(0, 500))
    table.verified(waiting, 1.0)
    table.ping_answered(far[0], 2.0)
    for serial in range(100):
        source = node_id_at(8, serial)
        table.seen_unverified(contact(node_id_at(0, 1000 + serial)), 3.0, source=source)
    assert set(table) == {*far, *contacts_at(1, 1)}
    candidates = set(table.closest(OWN, 100, verified_only=False)) - set(table)
    assert waiting in candidates  # a verified candidate outlives the hearsay flood
    assert len(candidates) == RoutingConfig().replacement_cache_size


def test_the_tables_own_answer_holds_verified_contacts_only() -> None:
    table = RoutingTable(OWN)
    proved, heard = contact(node_id_at(0, 1)), contact(node_id_at(0, 2))
    fill(table, [proved])
    table.seen_unverified(heard, 0.0, source=None)
    assert table.closest(heard.node_id, 5) == [proved]
    assert table.closest(heard.node_id, 5, verified_only=False) == [heard, proved]


def test_our_own_id_is_never_a_contact() -> None:
    table = RoutingTable(OWN)
    assert table.verified(contact(OWN), 0.0) == []
    table.seen_unverified(contact(OWN), 0.0, source=None)
    assert table.stats.verified == table.stats.candidates == 0


# ---- persistence ------------------------------------------------------------------------------


def test_a_restored_table_holds_its_contacts_unverified_until_re_proved() -> None:
    old = RoutingTable(OWN)
    contacts = contacts_at(0, 5) + contacts_at(3, 5)
    for serial, each in enumerate(contacts):
        old.verified(each, float(serial))
    saved = old.snapshot()
    assert [(item.contact, item.last_seen) for item in saved] == [
        (each, float(n)) for n, each in enumerate(contacts)
    ]
    restarted = RoutingTable(OWN, now=100.0)
    events = restarted.restore(saved, 100.0)
    assert len(restarted) == 0
    assert set(events) == {PingDue(each) for each in contacts}
    assert restarted.closest(OWN, 20) == []
    assert set(restarted.closest(OWN, 20, verified_only=False)) == set(contacts)
    restarted.ping_answered(contacts[0], 101.0)
    assert list(restarted) == [contacts[0]]


# ---- timers -----------------------------------------------------------------------------------


def test_a_silent_contact_is_due_a_ping_once_per_stale_period() -> None:
    config = RoutingConfig(stale_after=100.0, refresh_interval=1000.0)
    table = RoutingTable(OWN, config)
    quiet, chatty = contacts_at(0, 2)
    fill(table, [quiet, chatty], now=10.0)
    table.verified(chatty, 60.0)
    assert table.next_deadline() == 110.0
    assert table.handle_timers(109.0) == []
    assert table.handle_timers(110.0) == [PingDue(quiet)]
    assert table.next_deadline() == 160.0
    assert table.handle_timers(159.0) == []
    assert table.handle_timers(160.0) == [PingDue(chatty)]
    assert table.handle_timers(210.0) == [PingDue(quiet)]  # still silent: asked again


def test_a_bucket_no_lookup_touched_is_due_a_refresh_in_its_range() -> None:
    config = RoutingConfig(stale_after=math.inf, refresh_interval=3600.0)
    table = RoutingTable(OWN, config, randomness=random.Random(7).randbytes)
    fill(table, contacts_at(0, 20) + contacts_at(1, 20) + contacts_at(2, 1))
    assert table.stats.buckets == 3
    table.lookup_started(node_id_at(1, 77), 1000.0)
    events = table.handle_timers(3600.0)
    assert all(isinstance(event, RefreshDue) for event in events)
    prefixes = sorted(
        common_prefix_length(OWN, event.key) for event in events if isinstance(event, RefreshDue)
    )
    assert prefixes[0] == 0 and prefixes[1] >= 2 and len(prefixes) == 2
    assert table.next_deadline() == 4600.0
    [event] = table.handle_timers(4600.0)
    assert isinstance(event, RefreshDue) and common_prefix_length(OWN, event.key) == 1


def test_an_empty_table_has_only_its_refresh_deadline() -> None:
    table = RoutingTable(OWN, now=5.0)
    assert table.next_deadline() == 5.0 + RoutingConfig().refresh_interval
    assert RoutingTable(OWN, RoutingConfig(refresh_interval=math.inf)).next_deadline() == math.inf


# ---- closest against a brute-force sort --------------------------------------------------------


def random_ids(rng: random.Random, own: bytes, count: int) -> list[bytes]:
    """Ids at every depth: ``own`` with a random suffix from a random bit on."""
    ids = []
    own_value = int.from_bytes(own, "big")
    for _ in range(count):
        shift = rng.randrange(1, 40) if rng.random() < 0.5 else rng.randrange(1, KEY_BITS + 1)
        value = own_value ^ rng.getrandbits(shift)
        if value != own_value:
            ids.append(value.to_bytes(32, "big"))
    return ids


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    count=st.integers(0, 60),
    verified_only=st.booleans(),
)
def test_closest_matches_a_brute_force_sort(seed: int, count: int, verified_only: bool) -> None:
    rng = random.Random(seed)
    own = rng.randbytes(32)
    table = RoutingTable(own, RoutingConfig(bucket_size=rng.choice([2, 5, 20])))
    for node_id in random_ids(rng, own, 300):
        if rng.random() < 0.7:
            table.verified(contact(node_id), 0.0)
        else:
            table.seen_unverified(contact(node_id), 0.0, source=None)
    pool = set(table) if verified_only else set(table.closest(own, 10**6, verified_only=False))
    for target in [own, rng.randbytes(32), *random_ids(rng, own, 3)]:
        expected = sorted(pool, key=lambda c: distance(c.node_id, target))[:count]
        assert table.closest(target, count, verified_only=verified_only) == expected


# ---- bounds under random operations -----------------------------------------------------------

SMALL = RoutingConfig(
    bucket_size=3,
    replacement_cache_size=3,
    hearsay_per_source=1,
    max_pending_pings=2,
    max_failures=2,
    ping_timeout=5.0,
    stale_after=20.0,
    refresh_interval=50.0,
)
HOSTS = ["127.0.0.1", "::1", "203.0.113.1", "203.0.113.2", "198.51.100.1", "2001:db8::1", "a.test"]
MACHINE_OWN = bytes([0x5A]) * 32


class RoutingTableBounds(RuleBasedStateMachine):
    """Random sightings, hearsay, failures, pings and timers never break the table's bounds."""

    def __init__(self) -> None:
        super().__init__()
        self.table = RoutingTable(MACHINE_OWN, SMALL, randomness=random.Random(1).randbytes)
        self.now = 0.0
        self.asked: list[Contact] = []

    def pick(self, prefix: int, serial: int, host: int) -> Contact:
        return contact(node_id_at(prefix, serial, MACHINE_OWN), HOSTS[host])

    ids = st.tuples(
        st.integers(0, 4), st.integers(0, 7), st.sampled_from([0, 0, 0, 1, 1, 2, 3, 4, 5, 6])
    )

    def record(self, events: list[PingNeeded | PingDue | RefreshDue]) -> None:
        for event in events:
            if isinstance(event, PingNeeded):
                self.asked.append(event.old)
            elif isinstance(event, PingDue):
                self.asked.append(event.contact)

    @rule(node=ids)
    def verified(self, node: tuple[int, int, int]) -> None:
        self.record(self.table.verified(self.pick(*node), self.now))

    @rule(node=ids, source=st.integers(0, 3))
    def hearsay(self, node: tuple[int, int, int], source: int) -> None:
        origin = node_id_at(20, source, MACHINE_OWN)
        self.table.seen_unverified(self.pick(*node), self.now, source=origin)

    @rule(node=ids)
    def failed(self, node: tuple[int, int, int]) -> None:
        self.record(self.table.failed(self.pick(*node), self.now))

    @rule(node=ids)
    def removed(self, node: tuple[int, int, int]) -> None:
        self.record(self.table.remove(self.pick(*node).node_id, self.now))

    @rule(answered=st.booleans())
    def ping_reported(self, answered: bool) -> None:
        if self.asked:
            pinged = self.asked.pop(0)
            report = self.table.ping_answered if answered else self.table.ping_failed
            self.record(report(pinged, self.now))

    @rule(step=st.floats(0.0, 30.0))
    def time_passes(self, step: float) -> None:
        self.now += step
        if self.table.next_deadline() <= self.now:
            self.record(self.table.handle_timers(self.now))
        assert self.table.next_deadline() > self.now

    @invariant()
    def within_bounds(self) -> None:
        table = self.table
        buckets = table._buckets  # the bounds are about the private layout
        assert 1 <= len(buckets) <= KEY_BITS
        seen: set[bytes] = set()
        per_subnet: dict[object, int] = {}
        for index, bucket in enumerate(buckets):
            assert len(bucket.entries) <= SMALL.bucket_size
            assert len(bucket.candidates) <= SMALL.replacement_cache_size
            in_bucket: dict[object, int] = {}
            for node_id in [*bucket.entries, *bucket.candidates]:
                assert node_id not in seen and node_id != MACHINE_OWN
                seen.add(node_id)
                prefix = common_prefix_length(MACHINE_OWN, node_id)
                assert min(prefix, len(buckets) - 1) == index
            for entry in bucket.entries.values():
                if entry.subnet is not None:
                    in_bucket[entry.subnet] = in_bucket.get(entry.subnet, 0) + 1
                    per_subnet[entry.subnet] = per_subnet.get(entry.subnet, 0) + 1
            assert all(n <= SMALL.max_per_subnet_per_bucket for n in in_bucket.values())
            sources = [e.source for e in bucket.candidates.values() if e.source is not None]
            assert all(sources.count(s) <= SMALL.hearsay_per_source for s in sources)
            if bucket.eviction is not None:
                assert bucket.eviction.old_id in bucket.entries
        assert all(n <= SMALL.max_per_subnet_in_table for n in per_subnet.values())
        assert per_subnet == table._subnet_counts
        entries = [entry for bucket in buckets for entry in bucket.entries.values()]
        for bucket in buckets:
            seen_times = [entry.last_seen for entry in bucket.entries.values()]
            assert seen_times == sorted(seen_times)
        expected = min(
            [b.last_lookup + SMALL.refresh_interval for b in buckets]
            + [b.eviction.started + SMALL.ping_timeout for b in buckets if b.eviction]
            + [max(e.last_seen, e.probed) + SMALL.stale_after for e in entries]
        )
        assert table.next_deadline() == expected
        pending = sum(bucket.eviction is not None for bucket in buckets)
        assert pending == table.stats.pending_pings <= SMALL.max_pending_pings


TestRoutingTableBounds = RoutingTableBounds.TestCase
TestRoutingTableBounds.settings = settings(
    max_examples=150, stateful_step_count=60, derandomize=True, deadline=None
)


def test_a_snapshot_restores_into_a_table_of_the_same_bounds() -> None:
    rng = random.Random(3)
    table = RoutingTable(OWN)
    for node_id in random_ids(rng, OWN, 400):
        table.verified(contact(node_id), rng.random())
    assert len(table.snapshot()) == len(table)
    restarted = RoutingTable(OWN)
    events = restarted.restore(table.snapshot(), 1.0)
    assert len(events) == len(table)
    for event in events:
        assert isinstance(event, PingDue)
        restarted.ping_answered(event.contact, 2.0)
    assert len(restarted) == len(table)


@pytest.mark.parametrize("bad", [b"", bytes(31)])
def test_an_own_id_of_the_wrong_size_is_misuse(bad: bytes) -> None:
    with pytest.raises(RuntimeError):
        RoutingTable(bad)


def test_a_failure_or_removal_of_the_pinged_contact_evicts_it() -> None:
    for report in ("failed", "remove"):
        table, far = full_far_bucket()
        newcomer = contact(node_id_at(0, 500))
        table.verified(newcomer, 1.0)
        if report == "failed":
            table.failed(far[0], 2.0)
        else:
            table.remove(far[0].node_id, 2.0)
        assert far[0].node_id not in table and newcomer.node_id in table
        assert table.stats.pending_pings == 0


def test_a_host_name_is_capped_as_one_subnet() -> None:
    table = RoutingTable(OWN)
    for serial in range(5):
        table.verified(contact(node_id_at(0, serial), "Node.Example"), 0.0)
        table.verified(contact(node_id_at(0, 10 + serial), "node.example"), 0.0)
    assert len(table) == 2


def test_the_replacement_cache_prefers_verified_candidates() -> None:
    table, _ = full_far_bucket()
    size = RoutingConfig().replacement_cache_size
    heard = [contact(node_id_at(0, 700 + n)) for n in range(3)]
    for serial, each in enumerate(heard):
        table.seen_unverified(each, 1.0, source=node_id_at(9, serial))
    [ping] = table.verified(contact(node_id_at(0, 500)), 2.0)  # the eviction ping: pending
    waiting = [contact(node_id_at(0, 800 + n)) for n in range(size)]
    fill(table, waiting, now=3.0)  # verified newcomers displace the hearsay first
    candidates = set(table.closest(OWN, 100, verified_only=False)) - set(table)
    assert candidates == set(waiting)
    table.seen_unverified(contact(node_id_at(0, 900)), 4.0, source=node_id_at(9, 9))
    assert set(table.closest(OWN, 100, verified_only=False)) - set(table) == candidates
    assert isinstance(ping, PingNeeded)


def test_membership_is_by_node_id() -> None:
    table = RoutingTable(OWN)
    [peer] = contacts_at(2, 1)
    fill(table, [peer])
    assert peer.node_id in table
    assert peer not in table and b"short" not in table


def test_a_newcomer_waiting_on_an_eviction_ping_is_neither_heard_twice_nor_kept_if_it_fails() -> (
    None
):
    table, far = full_far_bucket()
    newcomer = contact(node_id_at(0, 500))
    table.verified(newcomer, 1.0)
    table.seen_unverified(newcomer, 2.0, source=node_id_at(9, 1))
    assert table.stats.candidates == 0
    table.failed(newcomer, 3.0)
    assert table.stats.pending_pings == 0
    table.ping_failed(far[0], 4.0)  # now an ordinary failure: one of ``max_failures``
    assert far[0].node_id in table and newcomer.node_id not in table


def test_contacts_of_real_peer_records_round_trip_through_a_snapshot(identities) -> None:
    table = RoutingTable(identities[0].peer_id.digest)
    peers = [Contact.of(each.record.with_address("127.0.0.1", 5000)) for each in identities[1:]]
    fill(table, peers)
    restarted = RoutingTable(identities[0].peer_id.digest)
    assert set(restarted.restore(table.snapshot(), 1.0)) == {PingDue(peer) for peer in peers}
    assert restarted.closest(peers[0].node_id, 1, verified_only=False) == [peers[0]]
