"""Iterative lookups (sans-IO), driven in memory on a virtual clock.

The networks are built from seeded random ids; every node answers from a k-bucket table of its
own (``SimNetwork``) and a brute-force "closest k" over all ids is the oracle. Tests assert on
the order of events, never on wall-clock time.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptls._errors import LocalProtocolError
from p2ptls.dht._ids import distance
from p2ptls.dht._lookup import (
    Lookup,
    LookupConfig,
    LookupFinished,
    Request,
    RequestKind,
    RequestTimedOut,
)
from p2ptls.dht._lookup_sim import (
    SILENT,
    LookupDriver,
    Outcome,
    Reply,
    SimContact,
    SimLookup,
    SimNetwork,
)

K = 20


def make_ids(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(32) for _ in range(count)]


@pytest.fixture(scope="module")
def network() -> SimNetwork:
    return SimNetwork(make_ids(2000, seed=1), K)


def varied_latency(node_id: bytes) -> float:
    """A fixed round trip per node, 10 to 59 ms."""
    return 0.01 + (node_id[0] % 50) / 1000


def run_one(driver: LookupDriver, lookup: SimLookup) -> LookupFinished[SimContact, bytes]:
    index = driver.start(lookup)
    driver.run()
    finished = driver.finished(index)
    assert finished is not None
    return finished


def contacts(*node_ids: bytes) -> list[SimContact]:
    return [SimContact(node_id) for node_id in node_ids]


def key_near(target: bytes, offset: int) -> bytes:
    """The id at XOR distance ``offset`` from ``target``."""
    return (int.from_bytes(target, "big") ^ offset).to_bytes(32, "big")


# -- finding the k closest -------------------------------------------------------------------


def test_lookups_find_the_true_k_closest_in_few_hops(network: SimNetwork) -> None:
    rng = random.Random(7)
    driver = LookupDriver(network.answer, varied_latency)
    hops = []
    for _ in range(40):
        origin, target = rng.choice(network.node_ids), rng.randbytes(32)
        lookup: SimLookup = Lookup(
            target, network.seeds(origin, target), LookupConfig(k=K), driver.now, own_id=origin
        )
        result = run_one(driver, lookup).result
        assert [found.contact.node_id for found in result.closest] == network.closest(target, K)
        assert {f.contact for f in result.closest} <= set(result.verified_contacts)
        assert result.failures == 0
        assert len(result.verified_contacts) == result.requests_sent < 4 * K
        assert all(found.depth >= 1 for found in result.closest)
        hops.append(result.hops)
    # O(log N): a k-bucket table gains about log2(k) bits per hop; log2(2000) is 11.
    assert max(hops) <= math.log2(len(network.node_ids))
    assert sum(hops) / len(hops) <= 4


@settings(derandomize=True, max_examples=100, deadline=None)
@given(
    size=st.integers(2, 400),
    k=st.integers(4, 12),
    alpha=st.integers(1, 4),
    paths=st.integers(1, 3),
    seed=st.integers(0, 2**32),
)
def test_any_honest_network_yields_the_true_k_closest(
    size: int, k: int, alpha: int, paths: int, seed: int
) -> None:
    """Small networks of every shape, honest nodes with k-bucket tables: the result is the true
    k nearest (the origin aside), and no more than alpha requests per path are ever in flight."""
    rng = random.Random(seed)
    network = SimNetwork(make_ids(size, seed), k)
    origin, target = rng.choice(network.node_ids), rng.randbytes(32)
    config = LookupConfig(k=k, alpha=alpha, disjoint_paths=paths, max_candidates=3 * k)

    def check(lookup: SimLookup) -> None:
        assert lookup.in_flight <= alpha * paths

    driver = LookupDriver(network.answer, varied_latency, after_input=check)
    seeds = network.seeds(origin, target)
    lookup: SimLookup = Lookup(target, seeds, config, 0.0, own_id=origin)
    result = run_one(driver, lookup).result
    truth = [n for n in network.closest(target, k + 1) if n != origin][:k]
    assert [found.contact.node_id for found in result.closest] == truth


def test_a_lookup_for_a_node_finds_it_first(network: SimNetwork) -> None:
    origin, target = network.node_ids[0], network.node_ids[1234]
    driver = LookupDriver(network.answer)
    lookup: SimLookup = Lookup(target, network.seeds(origin, target), LookupConfig(), 0.0)
    assert run_one(driver, lookup).result.closest[0].contact.node_id == target


def test_depth_is_the_length_of_the_discovery_chain() -> None:
    target = bytes(32)
    seed, second, third = (
        key_near(target, 1 << 200),
        key_near(target, 1 << 100),
        key_near(target, 1),
    )
    lookup: SimLookup = Lookup(target, contacts(seed), LookupConfig(k=2), 0.0)
    assert [r.contact.node_id for r in lookup.requests_to_send(0.0)] == [seed]
    lookup.reply_received(SimContact(seed), contacts(second), 0.1)
    assert [r.contact.node_id for r in lookup.requests_to_send(0.1)] == [second]
    lookup.reply_received(SimContact(second), contacts(third, seed), 0.2)
    lookup.requests_to_send(0.2)
    events = lookup.reply_received(SimContact(third), [], 0.3)
    (finished,) = events
    assert isinstance(finished, LookupFinished)
    assert [(f.contact.node_id, f.depth) for f in finished.result.closest] == [
        (third, 3),
        (second, 2),
    ]
    assert finished.result.hops == 3
    assert finished.result.elapsed == pytest.approx(0.3)


# -- alpha in flight, no round barrier -------------------------------------------------------


class InFlightOracle:
    """Rebuilds from the driver's log what a lookup was told, asked and answered, and checks
    after every input that fewer than alpha requests in flight means no useful candidate is
    left unqueried (useful: nearer than the k-th nearest answer, or any while fewer answered)."""

    def __init__(self, network: SimNetwork, config: LookupConfig, silent: set[bytes]) -> None:
        self.network, self.config, self.silent = network, config, silent
        self.replies: dict[bytes, Reply] = {}
        self.checks = 0

    def answer(self, request: Request[SimContact]) -> Outcome:
        if request.contact.node_id in self.silent:
            return SILENT
        reply = self.network.answer(request)
        assert isinstance(reply, Reply)
        self.replies[request.contact.node_id] = reply
        return reply

    def run(self, origin: bytes, target: bytes) -> None:
        seeds = self.network.seeds(origin, target)

        def check(lookup: SimLookup) -> None:
            assert lookup.in_flight <= self.config.alpha
            if lookup.done or lookup.in_flight == self.config.alpha:
                return
            asked = {entry.node_id for entry in driver.log if entry.what == "send"}
            answered = [entry.node_id for entry in driver.log if entry.what == "reply"]
            known = {seed.node_id for seed in seeds}
            for node_id in answered:
                known |= {c.node_id for c in self.replies[node_id].contacts[: self.config.k]}
            kth = sorted(distance(n, target) for n in answered)[self.config.k - 1 :][:1]
            assert not [n for n in known - asked if not kth or distance(n, target) < kth[0]]
            self.checks += 1

        driver = LookupDriver(self.answer, varied_latency, after_input=check)
        lookup: SimLookup = Lookup(target, seeds, self.config, driver.now, own_id=origin)
        result = run_one(driver, lookup).result
        assert result.requests_sent <= self.config.max_requests


def test_alpha_requests_are_in_flight_whenever_a_useful_candidate_is_known(
    network: SimNetwork,
) -> None:
    config = LookupConfig(k=K, max_candidates=100_000)
    # Some nodes never answer, so soft timeouts happen.
    oracle = InFlightOracle(network, config, silent=set(network.node_ids[::7]))
    rng = random.Random(3)
    for _ in range(10):
        oracle.run(rng.choice(network.node_ids), rng.randbytes(32))
    assert oracle.checks > 10


def test_a_slow_node_does_not_hold_back_the_others() -> None:
    target = bytes(32)
    slow, fast1, fast2 = (key_near(target, 1 << n) for n in (100, 101, 102))
    found_by_fast = [key_near(target, 1 << n) for n in (10, 11, 12)]

    def answer(request: Request[SimContact]) -> Outcome:
        if request.contact.node_id in (fast1, fast2):
            return Reply(tuple(contacts(*found_by_fast)))
        return Reply(())

    def latency(node_id: bytes) -> float:
        return 1.5 if node_id == slow else 0.05

    driver = LookupDriver(answer, latency)
    lookup: SimLookup = Lookup(target, contacts(slow, fast1, fast2), LookupConfig(), 0.0)
    run_one(driver, lookup)
    order = [(entry.what, entry.node_id) for entry in driver.log]
    slow_reply = order.index(("reply", slow))
    for node_id in found_by_fast:
        assert order.index(("send", node_id)) < slow_reply
    # The first fast reply alone sends a new request out, before the second fast reply.
    assert order[3] == ("reply", fast1)
    assert order[4][0] == "send"
    assert order[5] == ("reply", fast2)


# -- timeouts --------------------------------------------------------------------------------


def test_a_soft_timeout_frees_the_slot_and_a_late_reply_is_still_used() -> None:
    target = bytes(32)
    seeds = [key_near(target, 1 << n) for n in (200, 201, 202, 203)]
    config = LookupConfig(k=3, request_timeout=2.0)
    lookup: SimLookup = Lookup(target, contacts(*seeds), config, 10.0)
    assert [r.contact.node_id for r in lookup.requests_to_send(10.0)] == seeds[:3]
    assert lookup.next_deadline() == 12.0
    assert lookup.handle_timers(11.9) == []
    events = lookup.handle_timers(12.0)
    assert [e.contact.node_id for e in events if isinstance(e, RequestTimedOut)] == seeds[:3]
    assert lookup.in_flight == 0
    assert [r.contact.node_id for r in lookup.requests_to_send(12.0)] == [seeds[3]]
    assert lookup.next_deadline() == 14.0
    # The first seed answers late: what it says is used at once.
    near = key_near(target, 5)
    assert lookup.reply_received(SimContact(seeds[0]), contacts(near), 12.5) == []
    assert [r.contact.node_id for r in lookup.requests_to_send(12.5)] == [near]
    lookup.reply_received(SimContact(near), [], 12.6)
    lookup.request_failed(SimContact(seeds[1]), 12.7)
    events = lookup.reply_received(SimContact(seeds[3]), [], 12.8)
    # seeds[2] is still unanswered but counts as failed: it does not hold up the end.
    (finished,) = events
    assert isinstance(finished, LookupFinished)
    result = finished.result
    assert [f.contact.node_id for f in result.closest] == [near, seeds[0], seeds[3]]
    assert result.requests_sent == 5
    assert result.failures == 2
    assert lookup.next_deadline() == math.inf
    assert lookup.reply_received(SimContact(seeds[2]), contacts(key_near(target, 1)), 13.0) == []


def test_a_lookup_whose_nodes_are_all_silent_ends_on_its_timers() -> None:
    driver = LookupDriver(lambda request: SILENT)
    target = bytes(32)
    seeds = contacts(*(key_near(target, 1 << n) for n in range(10, 15)))
    result = run_one(driver, Lookup(target, seeds, LookupConfig(), 0.0)).result
    assert result.closest == ()
    assert result.failures == result.requests_sent == 5
    assert [e.what for e in driver.log].count("timeout") == 5
    assert driver.now == pytest.approx(4.0)  # two waves of soft timeouts, 2 s each


# -- hostile replies -------------------------------------------------------------------------


def ever_closer(request: Request[SimContact]) -> Outcome:
    """A Sybil that answers with k fresh ids, each nearer the target than itself."""
    own = distance(request.contact.node_id, request.target)
    fakes = []
    for index in range(K):
        noise = hashlib.sha256(request.contact.node_id + bytes([index])).digest()
        offset = int.from_bytes(noise, "big") % max(own // 2, 1)
        fakes.append(SimContact(key_near(request.target, offset or 1)))
    return Reply(tuple(fakes))


def with_hostile(
    network: SimNetwork, hostile: set[bytes], behaviour: Callable[[Request[SimContact]], Outcome]
) -> Callable[[Request[SimContact]], Outcome]:
    """Nodes in ``hostile`` and every id not in the network (their Sybils) behave as given."""
    members = set(network.node_ids)

    def answer(request: Request[SimContact]) -> Outcome:
        node_id = request.contact.node_id
        if node_id in hostile or node_id not in members:
            return behaviour(request)
        return network.answer(request)

    return answer


def test_endless_closer_contacts_end_within_the_request_budget(network: SimNetwork) -> None:
    target = network.node_ids[500]
    origin = network.node_ids[0]
    seeds = network.seeds(origin, target)
    answer = with_hostile(network, {seeds[0].node_id}, ever_closer)
    config = LookupConfig(max_requests=60)
    driver = LookupDriver(answer, varied_latency)
    result = run_one(driver, Lookup(target, seeds, config, 0.0)).result
    # The chain never ends by itself: the budget ends it, and Sybils crowd the results.
    assert result.requests_sent == config.max_requests
    members = set(network.node_ids)
    assert any(f.contact.node_id not in members for f in result.closest)
    # Three disjoint paths keep two honest ones, which find the target.
    config = LookupConfig(max_requests=60, disjoint_paths=3)
    driver = LookupDriver(answer, varied_latency)
    result = run_one(driver, Lookup(target, seeds, config, 0.0)).result
    assert result.requests_sent <= config.max_requests
    assert result.closest[0].contact.node_id == target


def test_fake_contacts_that_fail_do_not_stop_the_lookup(network: SimNetwork) -> None:
    rng = random.Random(11)
    hostile = set(rng.sample(network.node_ids, 200))

    def fakes(request: Request[SimContact]) -> Outcome:
        if request.contact.node_id in hostile:
            return ever_closer(request)
        return SILENT  # the fake ids do not exist

    answer = with_hostile(network, hostile, fakes)
    honest = [n for n in network.node_ids if n not in hostile]
    for _ in range(10):
        origin, target = rng.choice(honest), rng.choice(honest)
        driver = LookupDriver(answer, varied_latency)
        lookup: SimLookup = Lookup(target, network.seeds(origin, target), LookupConfig(), 0.0)
        result = run_one(driver, lookup).result
        assert result.closest[0].contact.node_id == target
        assert result.requests_sent <= LookupConfig().max_requests


def test_one_reply_gives_at_most_k_contacts() -> None:
    target = bytes(32)
    seed = key_near(target, 1 << 255)
    lookup: SimLookup = Lookup(target, contacts(seed), LookupConfig(k=3), 0.0)
    lookup.requests_to_send(0.0)
    flood = [key_near(target, 1000 - n) for n in range(100)]  # the nearest beyond the first k
    lookup.reply_received(SimContact(seed), contacts(*flood), 0.1)
    requests = lookup.requests_to_send(0.1)
    assert [r.contact.node_id for r in requests] == flood[:3][::-1]
    for request in requests:
        lookup.reply_received(request.contact, [], 0.2)
    assert lookup.done
    assert lookup.result.requests_sent == 4


def test_the_farthest_candidates_are_evicted() -> None:
    target = bytes(32)
    seed = key_near(target, 1 << 255)
    config = LookupConfig(k=3, alpha=1, max_candidates=3)
    lookup: SimLookup = Lookup(target, contacts(seed), config, 0.0)
    asked = [r.contact.node_id for r in lookup.requests_to_send(0.0)]
    lookup.reply_received(
        SimContact(seed), contacts(*(key_near(target, d) for d in (100, 101, 102))), 0.1
    )
    (request,) = lookup.requests_to_send(0.1)
    asked.append(request.contact.node_id)
    # Three nearer contacts evict 101 and 102 (the candidates are bounded) ...
    lookup.reply_received(
        request.contact, contacts(*(key_near(target, d) for d in (50, 51, 52))), 0.2
    )
    while not lookup.done:
        (request,) = lookup.requests_to_send(0.3)
        asked.append(request.contact.node_id)
        lookup.request_failed(request.contact, 0.3)
    # ... so when those fail, nothing is left to ask.
    assert asked == [seed] + [key_near(target, d) for d in (100, 50, 51, 52)]
    assert [f.contact.node_id for f in lookup.result.closest] == [key_near(target, 100), seed]


def test_the_own_id_and_duplicates_are_never_queried() -> None:
    target = bytes(32)
    own, other = key_near(target, 7), key_near(target, 1 << 100)
    lookup: SimLookup = Lookup(target, contacts(own, other, other), LookupConfig(), 0.0, own_id=own)
    (request,) = lookup.requests_to_send(0.0)
    assert request.contact.node_id == other
    events = lookup.reply_received(request.contact, contacts(own, other, own), 0.1)
    assert lookup.requests_to_send(0.1) == []
    (finished,) = events
    assert isinstance(finished, LookupFinished)
    assert finished.result.requests_sent == 1


# -- disjoint paths --------------------------------------------------------------------------


def test_disjoint_paths_never_share_a_node(network: SimNetwork) -> None:
    rng = random.Random(5)
    for _ in range(10):
        origin, target = rng.choice(network.node_ids), rng.randbytes(32)
        paths: dict[int, set[bytes]] = {}
        driver = LookupDriver(functools.partial(record_path, network, paths), varied_latency)
        config = LookupConfig(disjoint_paths=4)
        lookup: SimLookup = Lookup(target, network.seeds(origin, target), config, 0.0)
        result = run_one(driver, lookup).result
        assert sorted(paths) == [0, 1, 2, 3]
        assert sum(map(len, paths.values())) == result.requests_sent
        assert [f.contact.node_id for f in result.closest] == network.closest(target, K)


def record_path(
    network: SimNetwork, paths: dict[int, set[bytes]], request: Request[SimContact]
) -> Outcome:
    """Answer honestly, checking that no other path asked this node before."""
    node_id = request.contact.node_id
    assert all(node_id not in nodes for nodes in paths.values())
    paths.setdefault(request.path, set()).add(node_id)
    return network.answer(request)


def test_more_disjoint_paths_succeed_more_often_against_sybils(network: SimNetwork) -> None:
    """30% of the nodes answer with Sybils ever nearer the target that answer alike; success
    is reaching the target node. A path the Sybils capture spends its whole share of the
    request budget (here 100), so more paths cost more requests, for a higher rate."""
    rng = random.Random(2)
    hostile = set(rng.sample(network.node_ids, 600))
    honest = [n for n in network.node_ids if n not in hostile]
    answer = with_hostile(network, hostile, ever_closer)
    pairs = [(rng.choice(honest), rng.choice(honest)) for _ in range(60)]
    successes = []
    for paths in (1, 2, 4):
        config = LookupConfig(disjoint_paths=paths, max_requests=100)
        found = 0
        for origin, target in pairs:
            driver = LookupDriver(answer, varied_latency)
            lookup: SimLookup = Lookup(target, network.seeds(origin, target), config, 0.0)
            result = run_one(driver, lookup).result
            assert result.requests_sent <= config.max_requests
            found += target in {c.node_id for c in result.verified_contacts}
        successes.append(found)
    assert successes[0] < successes[1] <= successes[2]
    assert successes[2] >= 0.95 * len(pairs)


# -- FIND_VALUE ------------------------------------------------------------------------------


def value_network(network: SimNetwork, key: bytes, stale: int) -> None:
    """The k nodes nearest ``key`` hold a value; the ``stale`` nearest hold an older one."""
    network.values.clear()
    for rank, node_id in enumerate(network.closest(key, K)):
        network.values[node_id] = {key: b"old" if rank < stale else b"new"}


def test_find_value_stops_at_the_first_value(network: SimNetwork) -> None:
    key = bytes(range(32))
    value_network(network, key, stale=0)
    origin = network.node_ids[3]
    try:
        driver = LookupDriver(network.answer, varied_latency)
        seeds = network.seeds(origin, key)
        config = LookupConfig()
        lookup: SimLookup = Lookup(key, seeds, config, 0.0, kind=RequestKind.FIND_VALUE)
        result = run_one(driver, lookup).result
        assert result.value == b"new"
        assert len(result.values) == 1
        driver = LookupDriver(network.answer, varied_latency)
        full: SimLookup = Lookup(key, seeds, config, 0.0)
        assert run_one(driver, full).result.requests_sent > result.requests_sent
    finally:
        network.values.clear()


def test_find_value_with_a_quorum_reports_who_returned_what(network: SimNetwork) -> None:
    key = bytes(range(32, 64))
    value_network(network, key, stale=2)
    origin = network.node_ids[9]
    try:
        driver = LookupDriver(network.answer, varied_latency)
        config = LookupConfig(value_quorum=5)
        lookup: SimLookup = Lookup(
            key, network.seeds(origin, key), config, 0.0, kind=RequestKind.FIND_VALUE
        )
        result = run_one(driver, lookup).result
        # Who returned what, in the order they answered: the caller picks the newest record and
        # writes it back to the stale holders and to the nearest nodes without a value.
        assert len(result.values) == 5
        for answer in result.values:
            assert network.values[answer.contact.node_id][key] == answer.value
        assert {answer.value for answer in result.values} == {b"old", b"new"}
        holders = {answer.contact for answer in result.values}
        assert not holders & set(result.without_value)
        assert len(result.without_value) == len(result.closest) - len(
            holders & {f.contact for f in result.closest}
        )
    finally:
        network.values.clear()


def test_a_find_node_lookup_ignores_values() -> None:
    target = bytes(32)
    seed = key_near(target, 9)
    lookup: SimLookup = Lookup(target, contacts(seed), LookupConfig(), 0.0)
    lookup.requests_to_send(0.0)
    (finished,) = lookup.reply_received(SimContact(seed), [], 0.1, b"value")
    assert isinstance(finished, LookupFinished)
    assert finished.result.values == ()
    assert finished.result.value is None


# -- misuse ----------------------------------------------------------------------------------


def test_misuse_is_refused() -> None:
    target = bytes(32)
    seed, stranger = key_near(target, 9), key_near(target, 10)
    with pytest.raises(ValueError):
        Lookup(target, contacts(target), LookupConfig(), 0.0, own_id=target)
    with pytest.raises(ValueError):
        Lookup(bytes(31), contacts(seed), LookupConfig(), 0.0)
    for bad in ({"alpha": 0}, {"max_candidates": 5}, {"request_timeout": 0.0}):
        with pytest.raises(ValueError):
            LookupConfig(**bad)
    lookup: SimLookup = Lookup(target, contacts(seed, stranger), LookupConfig(alpha=1), 0.0)
    lookup.requests_to_send(0.0)
    with pytest.raises(LocalProtocolError):
        lookup.reply_received(SimContact(stranger), [], 0.1)
    lookup.request_failed(SimContact(seed), 0.1)
    with pytest.raises(LocalProtocolError):
        lookup.reply_received(SimContact(seed), [], 0.2)
