"""The connection manager's sans-IO decisions: which connection to keep, whom to evict, when to
dial again, and a connection's keepalive, idle and retirement timers."""

from __future__ import annotations

import math
import random

import pytest

from p2ptls._connection_table import ConnectionTable, DialBackoff
from p2ptls._liveness import CloseDue, Liveness, PeerSilent, PingDue
from p2ptls.identity import PeerId

LOW = PeerId(bytes(32))
HIGH = PeerId(b"\xff" * 32)
OTHERS = [PeerId(bytes([i]) * 32) for i in range(1, 10)]


def test_simultaneous_open_keeps_the_connection_of_the_lower_peer_id_on_both_ends() -> None:
    # LOW dialled HIGH ("low->high") while HIGH dialled LOW ("high->low"); each end sees the two
    # connections in either order and must keep the same one.
    for order in (("outbound", "inbound"), ("inbound", "outbound")):
        low_end: ConnectionTable[str] = ConnectionTable(LOW, 10)
        high_end: ConnectionTable[str] = ConnectionTable(HIGH, 10)
        for arrival in order:
            low_end.add(
                HIGH,
                "low->high" if arrival == "outbound" else "high->low",
                initiated_by_us=arrival == "outbound",
            )
        for arrival in reversed(order):
            high_end.add(
                LOW,
                "high->low" if arrival == "outbound" else "low->high",
                initiated_by_us=arrival == "outbound",
            )
        assert low_end.current(HIGH) == high_end.current(LOW) == "low->high"


def test_the_losing_connection_is_retired_and_the_winner_reported() -> None:
    table: ConnectionTable[str] = ConnectionTable(LOW, 10)
    table.add(HIGH, "theirs", initiated_by_us=False)
    admission = table.add(HIGH, "ours", initiated_by_us=True)
    assert admission.keep and admission.retire == ("theirs",) and admission.current == "ours"
    admission = table.add(HIGH, "theirs again", initiated_by_us=False)
    assert not admission.keep and admission.current == "ours"


def test_a_newer_connection_from_the_same_initiator_replaces_the_older() -> None:
    table: ConnectionTable[str] = ConnectionTable(LOW, 10)
    table.add(HIGH, "old", initiated_by_us=False)
    admission = table.add(HIGH, "new", initiated_by_us=False)
    assert admission.keep and admission.retire == ("old",)
    assert table.current(HIGH) == "new"


def test_the_limit_evicts_the_least_recently_used_unprotected_connection() -> None:
    table: ConnectionTable[str] = ConnectionTable(LOW, 3)
    for peer in OTHERS[:3]:
        table.add(peer, peer.short, initiated_by_us=True)
    table.touch(OTHERS[0])
    table.protect(OTHERS[1], "state")
    admission = table.add(OTHERS[3], "new", initiated_by_us=True)
    assert admission.keep and admission.retire == (OTHERS[2].short,)
    assert len(table) == 3


def test_a_full_table_of_protected_connections_refuses_a_new_one() -> None:
    table: ConnectionTable[str] = ConnectionTable(LOW, 2)
    for peer in OTHERS[:2]:
        table.add(peer, peer.short, initiated_by_us=True)
        table.protect(peer, "a")
    assert not table.add(OTHERS[2], "new", initiated_by_us=True).keep


def test_protection_is_a_set_of_tags() -> None:
    table: ConnectionTable[str] = ConnectionTable(LOW, 2)
    table.protect(HIGH, "state")
    table.protect(HIGH, "sllp")
    table.unprotect(HIGH, "state")
    assert table.is_protected(HIGH)
    table.unprotect(HIGH, "sllp")
    assert not table.is_protected(HIGH)
    table.unprotect(HIGH, "never set")


def test_remove_forgets_only_the_current_connection() -> None:
    table: ConnectionTable[str] = ConnectionTable(LOW, 2)
    table.add(HIGH, "current", initiated_by_us=True)
    assert not table.remove(HIGH, "another")
    assert table.remove(HIGH, "current")
    assert table.current(HIGH) is None


def test_dial_backoff_doubles_with_jitter_up_to_its_maximum() -> None:
    backoff = DialBackoff(1.0, 8.0, rng=random.Random(1))
    delays = [backoff.failed(HIGH, 0.0) for _ in range(6)]
    for attempt, delay in enumerate(delays):
        nominal = min(8.0, 2.0**attempt)
        assert 0.75 * nominal <= delay <= 1.25 * nominal
    assert backoff.retry_at(HIGH, 0.0) == delays[-1]
    assert backoff.retry_at(HIGH, delays[-1]) is None
    backoff.succeeded(HIGH)
    assert backoff.retry_at(HIGH, 0.0) is None


def test_dial_backoff_forgets_the_oldest_failures_beyond_its_capacity() -> None:
    backoff = DialBackoff(1.0, 8.0, capacity=3)
    for peer in OTHERS[:4]:
        backoff.failed(peer, 0.0)
    assert backoff.retry_at(OTHERS[0], 0.0) is None
    assert backoff.retry_at(OTHERS[3], 0.0) is not None


def liveness(**overrides: float | bool | None) -> Liveness:
    options: dict[str, float | bool | None] = {
        "keepalive_interval": 15.0,
        "keepalive_timeout": 10.0,
        "idle_timeout": 60.0,
        "grace": 5.0,
        "last_received": 0.0,
        "idle_since": None,
    }
    options.update(overrides)
    return Liveness(**options)  # type: ignore[arg-type]


def test_a_silent_peer_is_pinged_then_declared_lost() -> None:
    timers = liveness()
    assert timers.next_deadline() == 15.0
    assert timers.handle_timers(14.0) == []
    assert timers.handle_timers(15.0) == [PingDue()]
    assert timers.next_deadline() == 25.0
    assert timers.handle_timers(15.0) == []
    assert timers.handle_timers(25.0) == [PeerSilent(10.0)]


def test_anything_received_answers_a_ping() -> None:
    timers = liveness()
    timers.handle_timers(15.0)
    timers.received(20.0)
    assert timers.handle_timers(25.0) == []
    assert timers.next_deadline() == 35.0


def test_a_probe_pings_at_once_but_never_twice() -> None:
    timers = liveness()
    timers.probe()
    assert timers.next_deadline() == -math.inf
    assert timers.handle_timers(1.0) == [PingDue()]
    timers.probe()
    assert timers.next_deadline() == 11.0  # the PING in flight answers the probe too
    assert timers.handle_timers(1.0) == []


def test_an_idle_connection_closes_after_the_idle_timeout_unless_protected() -> None:
    timers = liveness(keepalive_interval=1000.0)
    timers.streams_changed(0, 10.0)
    assert timers.next_deadline() == 70.0
    assert timers.handle_timers(10.0) == []
    timers.protected = True
    assert timers.next_deadline() == 1000.0
    assert timers.handle_timers(70.0) == []
    timers.protected = False
    assert timers.handle_timers(70.0) == [CloseDue()]
    timers.streams_changed(1, 70.0)
    assert timers.handle_timers(80.0) == []
    assert timers.next_deadline() == 1000.0


def test_no_idle_timeout_keeps_a_connection_without_streams() -> None:
    timers = liveness(keepalive_interval=1000.0, idle_timeout=None, idle_since=0.0)
    assert timers.handle_timers(999.0) == []
    assert timers.next_deadline() == 1000.0


@pytest.mark.parametrize("streams", [0, 2])
def test_a_retired_connection_closes_when_its_streams_end_or_its_grace_runs_out(
    streams: int,
) -> None:
    timers = liveness(keepalive_interval=1000.0, protected=True)
    timers.streams_changed(streams, 99.0)
    timers.retire(100.0)
    timers.retire(102.0)  # the first retirement counts
    if streams == 0:
        assert timers.next_deadline() == 100.0
        assert timers.handle_timers(100.0) == [CloseDue()]
    else:
        assert timers.next_deadline() == 105.0
        assert timers.handle_timers(104.0) == []
        assert timers.handle_timers(105.0) == [CloseDue()]
        timers.streams_changed(0, 104.0)  # (or its last stream ends first)
        assert timers.next_deadline() == 100.0
