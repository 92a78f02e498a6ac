"""Hostile inputs against fragmentation and reassembly, one numbered section per attack.

Fragments are crafted with an independent :class:`~p2ptls._records.RecordSealer` in step with the
sender (``hostile_support.forged_sealer``), so every record authenticates and only the message
framing is hostile. Memory is measured with ``tracemalloc`` and through the shared
:class:`~p2ptls.ReassemblyBudget`, which must always return to zero.
"""

from __future__ import annotations

import functools
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2ptls import (
    ConnectionLost,
    Identity,
    MessageTooLarge,
    ProtocolError,
    ReassemblyBudget,
    ReassemblyBudgetExceeded,
    StreamConfig,
    TruncatedError,
    admit_network_members,
)
from p2ptls import _wire as wire
from p2ptls._connection import (
    Connection,
    DataReceived,
    Event,
    HandshakeState,
    MessageReceived,
)
from p2ptls._fragments import MIN_NONFINAL_FRAGMENT, fragment_sizes
from p2ptls._records import RecordSealer
from tests.host_harness import assert_host_serves, extra_identity, serving_host, settle
from tests.hostile_support import established_pair, forged_sealer, parties, records_of
from tests.raw_peer import raw_peer

PROPERTY = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
MiB = 1024 * 1024


def messages(events: list[Event]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, MessageReceived)]


def fail(conn: Connection, *chunks: bytes) -> tuple[ProtocolError, list[Event]]:
    """Feed ``chunks`` one by one, then EOF: the connection must fail."""
    events: list[Event] = []
    with pytest.raises(ProtocolError) as info:
        for chunk in chunks:
            events += conn.receive_data_untrusted(chunk)
        conn.receive_eof()
    assert conn.state is HandshakeState.FAILED
    return info.value, events


def start(sealer: RecordSealer, total: int, fragment: bytes) -> bytes:
    return sealer.seal(wire.MESSAGE_START, wire.MESSAGE_LENGTH.pack(total) + fragment)


def more(sealer: RecordSealer, fragment: bytes) -> bytes:
    return sealer.seal(wire.MESSAGE_CONTINUE, fragment)


# -- 19. a declared total above the maximum --------------------------------------------------------


@pytest.mark.parametrize("excess", [1, 1000, 2**32 - 1 - 16 * MiB])
def test_declared_total_above_the_maximum_closes_without_allocating(excess: int) -> None:
    budget = ReassemblyBudget()
    initiator, responder = established_pair(budget=budget)
    declared = responder.config.max_message_size + excess
    record = start(forged_sealer(initiator), declared, bytes(1000))
    tracemalloc.start()
    try:
        with pytest.raises(MessageTooLarge):
            responder.receive_data_untrusted(record)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, peak  # against a declared size of at least 16 MiB
    assert responder.state is HandshakeState.FAILED
    assert budget.in_use == 0


def test_declaring_the_maximum_reserves_only_what_has_arrived() -> None:
    budget = ReassemblyBudget()
    initiator, responder = established_pair(budget=budget)
    first = bytes(responder.config.record_payload - wire.MESSAGE_LENGTH.size)
    record = start(forged_sealer(initiator), responder.config.max_message_size, first)
    tracemalloc.start()
    try:
        assert responder.receive_data_untrusted(record) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(record), peak  # not the 16 MiB announced
    assert len(first) <= budget.in_use < 2 * len(first)
    responder.abandon()
    assert budget.in_use == 0


def test_the_sender_refuses_a_message_above_the_maximum() -> None:
    config = StreamConfig(max_message_size=1024)
    initiator, _ = established_pair(initiator_config=config)
    with pytest.raises(ValueError, match="max_message_size"):
        initiator.send_message(bytes(1025))


# -- 20. fragments that do not add up, missing, or restarted ---------------------------------------


def test_fragments_overrunning_the_declared_total_close() -> None:
    budget = ReassemblyBudget()
    initiator, responder = established_pair(budget=budget)
    sealer = forged_sealer(initiator)
    error, events = fail(responder, start(sealer, 1000, bytes(600)), more(sealer, bytes(600)))
    assert "overruns" in str(error) and events == []
    assert budget.in_use == 0


def test_a_missing_last_fragment_then_eof_is_truncation_and_nothing_is_delivered() -> None:
    budget = ReassemblyBudget()
    initiator, responder = established_pair(budget=budget)
    sealer = forged_sealer(initiator)
    error, events = fail(responder, start(sealer, 1000, bytes(600)))
    assert isinstance(error, TruncatedError) and events == []
    assert budget.in_use == 0


def test_a_new_message_inside_an_open_one_closes() -> None:
    budget = ReassemblyBudget()
    initiator, responder = established_pair(budget=budget)
    sealer = forged_sealer(initiator)
    error, events = fail(responder, start(sealer, 1000, bytes(600)), start(sealer, 10, bytes(10)))
    assert "inside an unfinished message" in str(error) and events == []
    assert budget.in_use == 0


@pytest.mark.parametrize(
    "plan",
    [
        "continue with no message open",
        "empty first fragment",
        "empty later fragment",
        "tiny non-final fragment",
        "zero-length message with a fragment",
        "close inside a message",
    ],
)
def test_malformed_fragment_sequences_close(plan: str) -> None:
    budget = ReassemblyBudget()
    initiator, responder = established_pair(budget=budget)
    sealer = forged_sealer(initiator)
    # Built lazily: sealing every plan's records would advance the sealer's sequence numbers, and
    # the chosen plan would then fail on authentication instead of the check it names.
    plans: dict[str, Callable[[], list[bytes]]] = {
        "continue with no message open": lambda: [more(sealer, bytes(300))],
        "empty first fragment": lambda: [start(sealer, 300, b"")],
        "empty later fragment": lambda: [start(sealer, 1000, bytes(600)), more(sealer, b"")],
        "tiny non-final fragment": lambda: [start(sealer, 1000, bytes(10))],
        "zero-length message with a fragment": lambda: [start(sealer, 0, b"x")],
        "close inside a message": lambda: [
            start(sealer, 1000, bytes(600)),
            sealer.seal(wire.CLOSE, bytes([wire.CLOSE_END_OF_STREAM])),
        ],
    }
    records = plans[plan]()
    error, events = fail(responder, *records)
    assert not isinstance(error, TruncatedError), error
    assert "authentication" not in str(error), error
    assert messages(events) == []
    assert budget.in_use == 0


def test_control_and_data_records_may_interleave_with_fragments() -> None:
    """Control for the tests above: a well-formed interleaving is delivered whole."""
    budget = ReassemblyBudget()
    initiator, responder = established_pair(budget=budget)
    sealer = forged_sealer(initiator)
    payload = bytes(range(256)) * 5
    events = responder.receive_data_untrusted(
        start(sealer, len(payload), payload[:600])
        + sealer.seal(wire.DATA, b"between")
        + sealer.seal(wire.PING, bytes(8))
        + more(sealer, payload[600:])
    )
    assert events[0] == DataReceived(b"between")
    assert messages(events) == [payload]
    assert budget.in_use == 0


@PROPERTY
@given(
    sizes=st.lists(st.integers(0, 1200), min_size=1, max_size=6),
    last_declared=st.integers(1, 1300),
    interleave=st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_a_message_is_delivered_exactly_when_its_fragments_add_up(
    sizes: list[int], last_declared: int, interleave: list[bool]
) -> None:
    """The declared total is the fragments before the last plus ``last_declared``: it is never
    reached before the last fragment. The message is delivered (intact) exactly when the last
    fragment matches, no fragment is empty and every non-final one has at least the minimum
    record size; otherwise the connection fails (at once, or as truncation at EOF) and the
    budget is released."""
    budget = ReassemblyBudget()
    initiator, responder = established_pair(budget=budget)
    sealer = forged_sealer(initiator)
    payload = bytes(index % 251 for index in range(sum(sizes)))
    total = sum(sizes[:-1]) + last_declared
    records = []
    offset = 0
    for index, size in enumerate(sizes):
        fragment = payload[offset : offset + size]
        offset += size
        records.append(start(sealer, total, fragment) if index == 0 else more(sealer, fragment))
        if interleave[index]:
            records.append(sealer.seal(wire.DATA, b"data %d" % index))
    well_formed = (
        last_declared == sizes[-1]
        and all(sizes)
        and all(size >= MIN_NONFINAL_FRAGMENT for size in sizes[:-1])
    )
    if well_formed:
        events: list[Event] = []
        for record in records:
            events += responder.receive_data_untrusted(record)
        assert messages(events) == [payload]
        assert responder.state is HandshakeState.ESTABLISHED
    else:
        _, events = fail(responder, *records)
        assert messages(events) == []
    assert budget.in_use == 0


# -- 21. a shared reassembly budget ----------------------------------------------------------------

HALF_CONFIG = StreamConfig(max_message_size=64 * 1024, record_size=16 * 1024)


def holds_at_least(budget: ReassemblyBudget, size: int) -> bool:
    return budget.in_use >= size


def fragment_bytes(records: bytes) -> int:
    """How many message bytes the MESSAGE_START/CONTINUE ``records`` carry."""
    return sum(
        len(record)
        - wire.HEADER_SIZE
        - wire.TAG_SIZE
        - (wire.MESSAGE_LENGTH.size if record[0] == wire.MESSAGE_START else 0)
        for record in records_of(records)
    )


def split_message(conn: Connection) -> tuple[bytes, bytes]:
    """The records of a maximum-size message from ``conn``: its first half, and the rest."""
    records = records_of(conn.send_message(bytes(conn.config.max_message_size)))
    half = len(records) // 2
    return b"".join(records[:half]), b"".join(records[half:])


class HalvedMessage:
    """A maximum-size message sent in two halves through a forged sealer, so that other records
    can be sealed between the halves (in sequence)."""

    def __init__(self, conn: Connection) -> None:
        self.sealer = forged_sealer(conn)
        self.size = conn.config.max_message_size
        step = conn.config.record_payload
        self._fragments = fragment_sizes(self.size, step - wire.MESSAGE_LENGTH.size, step)
        self._half = len(self._fragments) // 2

    def _seal(self, fragments: list[tuple[int, int]]) -> bytes:
        return b"".join(
            start(self.sealer, self.size, bytes(size))
            if offset == 0
            else more(self.sealer, bytes(size))
            for offset, size in fragments
        )

    def first_half(self) -> bytes:
        return self._seal(self._fragments[: self._half])

    def rest(self) -> bytes:
        return self._seal(self._fragments[self._half :])


def test_a_shared_budget_holds_against_many_half_messages() -> None:
    """Connections each holding half a maximum-size message fill the shared budget; the one that
    would exceed it fails, the others keep their state and keep working, and what a connection
    held is returned when it goes away."""
    half = HALF_CONFIG.max_message_size // 2
    budget = ReassemblyBudget(limit=int(3.5 * half), per_peer_limit=10**9)
    pairs = [
        established_pair(
            seed=b"pair %d" % index,
            budget=budget,
            initiator_config=HALF_CONFIG,
            responder_config=HALF_CONFIG,
        )
        for index in range(6)
    ]
    halves = [HalvedMessage(initiator) for initiator, _ in pairs]
    outcome = []
    for (_, responder), halved in zip(pairs, halves, strict=True):
        try:
            assert responder.receive_data_untrusted(halved.first_half()) == []
            outcome.append("holding")
        except ReassemblyBudgetExceeded:
            outcome.append("refused")
        assert budget.in_use <= budget.limit
    assert outcome == ["holding"] * 3 + ["refused"] * 3
    for _, responder in pairs[3:]:
        assert responder.state is HandshakeState.FAILED
    # The holders are unaffected: data still flows on each, their partial messages intact.
    for (_, responder), halved in zip(pairs[:3], halves, strict=False):
        events = responder.receive_data_untrusted(halved.sealer.seal(wire.DATA, b"still here"))
        assert events == [DataReceived(b"still here")]
    # When two of them go away, the third can finish its message; nothing stays reserved.
    for _, responder in pairs[:2]:
        responder.abandon()
    _, responder = pairs[2]
    events = responder.receive_data_untrusted(halves[2].rest())
    assert messages(events) == [bytes(HALF_CONFIG.max_message_size)]
    assert budget.in_use == 0


def test_one_peer_cannot_take_the_whole_budget() -> None:
    half = HALF_CONFIG.max_message_size // 2
    budget = ReassemblyBudget(limit=10**9, per_peer_limit=int(2.5 * half))
    greedy = [
        established_pair(
            seed=b"greedy %d" % index,
            budget=budget,
            initiator_config=HALF_CONFIG,
            responder_config=HALF_CONFIG,
        )
        for index in range(3)
    ]
    outcome = []
    for initiator, responder in greedy:
        try:
            responder.receive_data_untrusted(split_message(initiator)[0])
            outcome.append("holding")
        except ReassemblyBudgetExceeded:
            outcome.append("refused")
    assert outcome == ["holding", "holding", "refused"]
    # Another peer still gets its share.
    initiator, responder = established_pair(
        seed=b"other peer",
        budget=budget,
        initiator_config=HALF_CONFIG,
        responder_config=HALF_CONFIG,
        initiator_identity=parties().other,
    )
    first, rest = split_message(initiator)
    assert responder.receive_data_untrusted(first) == []
    assert messages(responder.receive_data_untrusted(rest)) == [bytes(65536)]


# -- the same against a real host ------------------------------------------------------------------
#
# The host's connection carries only bytes (the multiplexing frames), but its record layer still
# reassembles record-layer messages before refusing a whole one: the fragment attacks reach it as
# before, and each ends the shared connection (every logical stream on it raises ConnectionLost
# with the typed cause). The same attacks on messages inside logical streams are in
# tests/test_mux_hostile.py.


@pytest.mark.parametrize(
    "attack", ["huge declared total", "overrun", "new message inside an open one"]
)
async def test_host_closes_a_connection_with_bad_fragments(attack: str) -> None:
    expected = MessageTooLarge if attack == "huge declared total" else ProtocolError
    async with serving_host() as harness:
        peer = await raw_peer(harness)
        await peer.echo(b"healthy")
        sealer = forged_sealer(peer.conn)
        if attack == "huge declared total":
            data = start(sealer, 2**32 - 1, bytes(1000))
        elif attack == "overrun":
            data = start(sealer, 1000, bytes(600)) + more(sealer, bytes(600))
        else:
            data = start(sealer, 1000, bytes(600)) + start(sealer, 10, bytes(10))
        await peer.send(data)
        failure = await harness.next_failure()
        assert isinstance(failure, ConnectionLost)
        assert isinstance(failure.__cause__, expected), repr(failure.__cause__)
        assert harness.received == [b"healthy"]
        assert harness.host.context.budget.in_use == 0
        await peer.aclose()
        await assert_host_serves(harness)


def _holder_identities() -> list[Identity]:
    """Four peers (a host keeps one connection per peer, so each holder is a peer of its own)."""
    cast = parties()
    return [cast.initiator, cast.other, cast.stranger, extra_identity(1)]


async def test_host_budget_holds_against_many_half_messages() -> None:
    """Peers each holding half a maximum-size record-layer message fill the host's budget; the
    one that would exceed it is cut. A peer whose half message is released by its leaving makes
    room; a record-layer message completed on the host's connection is now refused (the
    connection carries only frames), and its bytes are released too."""
    async with serving_host(config=HALF_CONFIG, admission=admit_network_members) as harness:
        half = HALF_CONFIG.max_message_size // 2
        budget = harness.host.context.budget = ReassemblyBudget(
            limit=int(3.5 * half), per_peer_limit=10**9
        )
        *holder_identities, greedy_identity = _holder_identities()
        holders = []
        for identity in holder_identities:
            peer = await raw_peer(harness, identity=identity)
            await peer.echo(b"established")
            first, rest = split_message(peer.conn)
            target = budget.in_use + fragment_bytes(first)
            await peer.send(first)
            await settle(functools.partial(holds_at_least, budget, target))
            holders.append((peer, rest))
        greedy = await raw_peer(harness, identity=greedy_identity)
        await greedy.echo(b"established")
        await greedy.send(split_message(greedy.conn)[0])
        failure = await harness.next_failure()
        assert isinstance(failure, ConnectionLost)
        assert isinstance(failure.__cause__, ReassemblyBudgetExceeded)
        assert budget.in_use <= budget.limit
        await greedy.aclose()
        # Two holders leave (a plain close: truncation), the third finishes its message.
        for peer, _ in holders[:2]:
            await peer.aclose()
        for _ in range(2):
            assert isinstance((await harness.next_failure()).__cause__, TruncatedError)
        peer, rest = holders[2]
        await peer.send(rest)
        finished = await harness.next_failure()
        assert "carries only bytes" in str(finished.__cause__)
        await peer.aclose()
        await settle(lambda: budget.in_use == 0)
        await assert_host_serves(harness)
