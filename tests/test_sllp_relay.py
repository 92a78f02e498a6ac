"""The lossy relay used by the loss tests and the benchmark: seeded fates, rates that hold."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from p2ptls.sllp import DatagramTrain
from p2ptls.sllp.relay import LinkConditions, LossyLink, memory_transport_pair


def fates(conditions: LinkConditions, count: int = 2000) -> list[bytes]:
    link = LossyLink(conditions)
    for i in range(count):
        link.submit(i.to_bytes(4, "big"), i * 0.001)
    return link.pop_due(1e9)


def test_same_seed_same_fates_other_seed_other_fates() -> None:
    conditions = LinkConditions(drop=0.1, duplicate=0.05, reorder=0.1, jitter=0.002, seed=9)
    assert fates(conditions) == fates(conditions)
    assert fates(conditions) != fates(
        LinkConditions(drop=0.1, duplicate=0.05, reorder=0.1, seed=10)
    )


def test_rates_and_counters() -> None:
    link = LossyLink(LinkConditions(drop=0.05, duplicate=0.02, reorder=0.1, seed=1))
    for i in range(20_000):
        link.submit(i.to_bytes(4, "big"), i * 0.0001)
    out = link.pop_due(1e9)
    assert 0.04 < link.dropped / 20_000 < 0.06
    assert 0.01 < link.duplicated / 20_000 < 0.03
    assert len(out) == 20_000 - link.dropped + link.duplicated == link.delivered
    numbers = [int.from_bytes(d, "big") for d in out]
    assert numbers != sorted(numbers)  # reordered
    assert link.in_flight == 0 and link.next_due() == float("inf")


def test_delay_and_mtu() -> None:
    link = LossyLink(LinkConditions(delay=0.5, max_size=100))
    link.submit(b"x" * 100, 1.0)
    link.submit(b"x" * 101, 1.0)
    assert link.dropped == 1 and link.largest_submitted == 101
    assert link.pop_due(1.49) == [] and link.next_due() == 1.5
    assert link.pop_due(1.5) == [b"x" * 100]


def test_conditions_are_validated() -> None:
    with pytest.raises(ValueError):
        LinkConditions(drop=1.5)
    with pytest.raises(ValueError):
        LinkConditions(delay=-1)


async def test_memory_transports_deliver_on_trio_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = memory_transport_pair(LinkConditions(delay=2.0))
    got: list[bytes] = []
    a.send_from(DatagramTrain(b"abcdef", 3, 2), 0)
    start = trio.current_time()
    while len(got) < 2:
        await b.wait_readable()
        b.drain(lambda view, _segment, _now: got.append(bytes(view)), trio.current_time(), 10)
    assert got == [b"abc", b"def"] and trio.current_time() - start == 2.0
    b.close()
    with pytest.raises(trio.ClosedResourceError):
        await b.wait_readable()
