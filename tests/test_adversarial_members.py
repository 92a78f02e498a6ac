"""An adversarial member against a small honest network: it stays up, its state stays its own and
converges, and memory stays bounded.

The adversary holds the network key and a genuine identity (``admit_network_members`` admits it)
and plays moves drawn by a seeded RNG from the catalogues of ``tests/adversary/``. A failure shows
the seed; ``P2PTLS_ADVERSARY_SEED=<seed>`` replays the same moves.

The attacks of the hardening issue (8), each of which once broke an honest node, also have
regression tests of their own.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing

from p2ptls import StreamConfig
from p2ptls.sllp import Message as SllpMessage
from p2ptls.sllp import MessagesLost
from p2ptls.sllp import _wire as sllp_wire
from p2ptls.sllp.testing import seal_datagram, session_pair
from tests.adversary import mux as mux_moves
from tests.adversary import sllp as sllp_moves
from tests.adversary import state as state_moves
from tests.adversary import transport as transport_moves
from tests.adversary.core import AdversaryRun, Budget, Move, run_adversary, seed_for
from tests.adversary.invariants import (
    assert_nodes_answer,
    assert_nodes_up,
    assert_own_state_unchanged,
    assert_still_converges,
    assert_tables_bounded,
    memory_budget,
)
from tests.adversary.mux import (
    MuxMember,
    assert_victim_bounded,
    assert_victim_serves,
    assert_victim_up,
    mux_member,
    open_mux_arena,
    reported_victim,
    settle_victim,
)
from tests.adversary.network import (
    StateMember,
    StateNetwork,
    holds_state,
    honest_traffic,
    lanes_of,
    open_state_network,
    until,
)
from tests.adversary.sllp import (
    assert_sllp_bounded,
    assert_sllp_still_flows,
    open_sllp_arena,
    sllp_lane,
)
from tests.host_harness import heap_growth

SMALL = Budget(moves=60, seconds=120.0, lanes=2, move_timeout=30.0)
LONG = Budget(moves=1500, seconds=3600.0, lanes=5, move_timeout=30.0)
ALL_MOVES: tuple[Move[StateMember], ...] = state_moves.STATE_MOVES + transport_moves.TRANSPORT_MOVES


async def attack_sllp_and_check(
    clock: trio.testing.MockClock, budget: Budget, seed: int
) -> AdversaryRun:
    """A hostile peer on an established SLLP channel: the session's tables stay bounded and the
    channel still carries honest messages afterwards."""
    async with open_sllp_arena(clock) as arena:
        lane = functools.partial(sllp_lane, arena)
        run = await run_adversary(lane, sllp_moves.SLLP_MOVES, budget, seed)
        with run.reported():
            assert_sllp_bounded(arena)
            await assert_sllp_still_flows(arena)
            assert_sllp_bounded(arena)
    return run


async def attack_and_check(
    network: StateNetwork,
    moves: Sequence[Move[StateMember]],
    budget: Budget,
    seed: int,
    *,
    traffic: float | None = 1.0,
) -> AdversaryRun:
    """Run the adversary (while honest nodes write every ``traffic`` seconds), then check every
    invariant; failures carry the seed."""
    async with trio.open_nursery() as nursery:
        if traffic is not None:
            nursery.start_soon(honest_traffic, network, traffic)
        bounded = functools.partial(assert_tables_bounded, network)
        run = await run_adversary(lanes_of(network), moves, budget, seed, after_each_move=bounded)
        nursery.cancel_scope.cancel()
    with run.reported():
        assert_nodes_up(network)
        assert_tables_bounded(network)
        assert_own_state_unchanged(network)
        await assert_still_converges(network)
        await assert_nodes_answer(network)
        assert_nodes_up(network)
    return run


async def test_small_network_survives_an_adversarial_member(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_state_network(3, clock=autojump_clock, max_direct_size=64 * 1024) as network:
        run = await attack_and_check(network, ALL_MOVES, SMALL, seed_for(8))
    assert len(run.played) == SMALL.moves and not run.timed_out


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_long_run_against_a_larger_network(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_state_network(
        5, adversaries=3, clock=autojump_clock, max_direct_size=64 * 1024
    ) as network:
        run = await attack_and_check(network, ALL_MOVES, LONG, seed_for(seed), traffic=0.5)
    print(run.summary())
    print("costliest moves:", run.costliest())
    assert len(run.played) == LONG.moves and not run.timed_out


@pytest.mark.slow
async def test_long_sllp_run(autojump_clock: trio.testing.MockClock) -> None:
    budget = Budget(moves=1000, seconds=36000.0, move_timeout=60.0)
    run = await attack_sllp_and_check(autojump_clock, budget, seed_for(1000))
    print(run.summary())


# -- the multiplexer: a hostile member against a host's shared connections ----------------------

MUX_AND_TRANSPORT: tuple[Move[MuxMember], ...] = (
    mux_moves.MUX_MOVES + transport_moves.TRANSPORT_MOVES
)


async def attack_mux_and_check(
    clock: trio.testing.MockClock, budget: Budget, seed: int, moves: Sequence[Move[MuxMember]]
) -> AdversaryRun:
    """Members play multiplexing (and transport) moves against a host while an honest peer's
    traffic flows; the host stays up, bounded, and serves the honest peer and a newcomer."""
    async with open_mux_arena(clock, lanes=budget.lanes) as arena:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mux_moves.honest_traffic, arena, 1.0)
            lane = functools.partial(mux_member, arena)
            bounded = functools.partial(assert_victim_bounded, arena)
            run = await run_adversary(lane, moves, budget, seed, after_each_move=bounded)
            nursery.cancel_scope.cancel()
        with run.reported(), reported_victim(arena):
            assert_victim_up(arena)
            await settle_victim(arena)
            assert_victim_bounded(arena)
            await assert_victim_serves(arena)
    return run


async def test_a_host_survives_hostile_multiplexing_members(
    autojump_clock: trio.testing.MockClock,
) -> None:
    budget = Budget(moves=80, seconds=600.0, lanes=2, move_timeout=30.0)
    run = await attack_mux_and_check(autojump_clock, budget, seed_for(14), MUX_AND_TRANSPORT)
    assert len(run.played) == budget.moves and not run.timed_out


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_long_multiplexing_run(seed: int, autojump_clock: trio.testing.MockClock) -> None:
    budget = Budget(moves=1500, seconds=36000.0, lanes=4, move_timeout=30.0)
    run = await attack_mux_and_check(autojump_clock, budget, seed_for(seed), MUX_AND_TRANSPORT)
    print(run.summary())
    print("costliest moves:", run.costliest())
    assert len(run.played) == budget.moves and not run.timed_out


async def test_memory_stays_bounded_across_multiplexing_floods(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The heap after floods of opens, unknown protocols, windows, resets, pings and messages,
    once the flooders are gone, is what it was, give or take a little bookkeeping."""
    async with open_mux_arena(autojump_clock) as arena:
        budget = Budget(moves=2 * len(mux_moves.MUX_FLOODS), seconds=600.0, move_timeout=30.0)
        lane = functools.partial(mux_member, arena)
        await assert_victim_serves(arena)  # warm: the first newcomer's costs are paid
        with heap_growth() as growth:
            run = await run_adversary(lane, mux_moves.MUX_FLOODS, budget, seed_for(22))
            await settle_victim(arena)
        print(f"memory: the floods grew the heap by {growth.grown} bytes")
        with run.reported(), reported_victim(arena):
            assert growth.grown < 2 * 1024 * 1024, growth.grown
            assert_victim_up(arena)
            await assert_victim_serves(arena)


FLOODS: tuple[Move[StateMember], ...] = (
    state_moves.direct_flood,
    state_moves.ping_flood,
    state_moves.digest_made_up_owners,
    state_moves.updates_made_up_owners,
    state_moves.members_garbage,
    transport_moves.control_flood,
    transport_moves.fragment_oversized,
)
DIRECT_BUFFER = 16
MAX_DIRECT_SIZE = 64 * 1024


async def test_memory_stays_bounded_across_floods(autojump_clock: trio.testing.MockClock) -> None:
    """The heap after a run of floods is within a budget: what the nodes may legitimately keep
    (a full direct-message buffer) plus a little bookkeeping per connection."""
    options: dict[str, Any] = {"direct_buffer": DIRECT_BUFFER, "max_direct_size": MAX_DIRECT_SIZE}
    async with open_state_network(2, clock=autojump_clock, **options) as network:
        budget = Budget(moves=len(FLOODS), seconds=120.0, move_timeout=30.0)
        limit = 2 * DIRECT_BUFFER * MAX_DIRECT_SIZE + 4 * 1024 * 1024
        with memory_budget(limit, "a run of floods"):
            run = await run_adversary(lanes_of(network), FLOODS, budget, seed_for(21))
        with run.reported():
            assert_nodes_up(network)
            assert_tables_bounded(network)
            assert_own_state_unchanged(network)
            await assert_still_converges(network)


REAL_TIME_MOVES: tuple[Move[StateMember], ...] = (
    state_moves.silence,
    state_moves.hello_hostile,
    state_moves.ping_flood,
    state_moves.pull_flood,
    state_moves.updates_replay,
    transport_moves.tcp_silent,
    transport_moves.handshake_half,
    transport_moves.record_forged,
)
"""Moves whose outcome rides on timers (watchdog, hello and handshake deadlines), and a few
others to keep them company."""


async def test_real_time_run_on_loopback() -> None:
    """The same harness on the real clock (no autojump): short timeouts keep it quick."""
    options: dict[str, Any] = {
        "ping_interval": 0.2,
        "ping_timeout": 0.6,
        "connect_timeout": 1.0,
        "stream": StreamConfig(handshake_timeout=1.0),
        "max_direct_size": 64 * 1024,
    }
    async with open_state_network(2, **options) as network:
        budget = Budget(moves=len(REAL_TIME_MOVES), seconds=30.0, lanes=2, move_timeout=3.0)
        run = await attack_and_check(network, REAL_TIME_MOVES, budget, seed_for(16))
    assert len(run.played) == budget.moves and not run.timed_out


async def test_established_sllp_channel_survives_a_hostile_peer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    budget = Budget(moves=40, seconds=600.0, move_timeout=60.0)
    await attack_sllp_and_check(autojump_clock, budget, seed_for(40))


class CountingWindow:
    """Counts the look-ups of a reassembler's window of finished message ids."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.checks = 0

    def check(self, number: int) -> bool:
        self.checks += 1
        return self.inner.check(number)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_jumping_message_ids_cost_little_work_and_every_id_is_accounted_for() -> None:
    """Found by the harness (sllp-message-id-gaps): each message-id jump of a window or more
    cost the receiver a window's worth of look-ups (65472) when its gap was settled; ids that
    left the window are now counted lost at once."""
    offerer, answerer = session_pair()
    reassembler = answerer._reassembler
    counting = CountingWindow(reassembler._done)
    reassembler._done = counting  # type: ignore[assignment]
    message_id, jumps = 0, 200
    for _ in range(jumps):
        message_id += 1 << 20
        body = sllp_wire.encode_body(sllp_wire.TYPE_DATA, message_id, 0, 1, b"jump")
        answerer.receive_datagram_untrusted(seal_datagram(offerer, body), 0.0)
    answerer.handle_timers(10.0)
    # At most the one gap still inside the window is looked at id by id (it was ~13 million).
    assert counting.checks < counting.inner.size + jumps * 10
    events = answerer.take_events()
    lost = sum(e.count for e in events if isinstance(e, MessagesLost))
    delivered = sum(1 for e in events if isinstance(e, SllpMessage))
    assert delivered == jumps
    assert lost + delivered == message_id + 1  # ids 0 .. message_id, each delivered or lost


# -- regressions: the attacks of issue 8, each of which once broke an honest network -------------


async def test_lies_about_the_victims_own_version_leave_its_epoch_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_state_network(2, clock=autojump_clock) as network:
        budget = Budget(moves=6, seconds=60.0, lanes=2, move_timeout=30.0)
        await attack_and_check(network, state_moves.ATTACK_MOVES["item 1"], budget, seed_for(1))


async def test_made_up_members_do_not_lock_out_an_honest_newcomer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_state_network(2, spares=2, clock=autojump_clock) as network:
        budget = Budget(moves=1, seconds=60.0, move_timeout=30.0)
        run = await attack_and_check(
            network, state_moves.ATTACK_MOVES["item 2"], budget, seed_for(2)
        )
        with run.reported():
            await newcomer_joins(network)


@pytest.mark.parametrize(
    "hostile",
    [state_moves.updates_certificates_without_batches, state_moves.updates_stale_with_certificate],
    ids=lambda hostile: hostile.name,
)
async def test_certificates_without_batches_are_not_kept(
    hostile: Move[StateMember], autojump_clock: trio.testing.MockClock
) -> None:
    async with open_state_network(2, clock=autojump_clock) as network:
        budget = Budget(moves=2, seconds=60.0, move_timeout=30.0)
        await attack_and_check(network, (hostile,), budget, seed_for(5))


async def test_many_owners_with_real_keys_do_not_lock_out_an_honest_newcomer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_state_network(
        2, adversaries=3, spares=2, clock=autojump_clock, max_owners=5
    ) as network:
        budget = Budget(moves=2, seconds=60.0, move_timeout=30.0)
        run = await attack_and_check(
            network, (state_moves.updates_many_owners_real_keys,), budget, seed_for(55)
        )
        with run.reported():
            await newcomer_joins(network)


async def test_silent_handshakes_from_a_few_sources_do_not_lock_out_a_newcomer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_state_network(2, clock=autojump_clock) as network:
        async with lanes_of(network)(0) as member:
            flood = transport_moves.silent_handshakes_from_many_sources
            await flood.play(member, random.Random(seed_for(3)))
            # While the flood holds its connections, a newcomer still gets in.
            await assert_nodes_answer(network)
        assert_nodes_up(network)


async def test_made_up_owners_in_digests_and_pulls_are_not_remembered_without_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_state_network(2, clock=autojump_clock) as network:
        budget = Budget(moves=1, seconds=60.0, move_timeout=30.0)
        hostile = state_moves.ATTACK_MOVES["unbounded peer beliefs"]
        await attack_and_check(network, hostile, budget, seed_for(4))


async def newcomer_joins(network: StateNetwork) -> None:
    """An honest newcomer joins through the first node; its write reaches every honest node."""
    identity = network.spares[0]
    newcomer = await network.add_node(identity, "newcomer", via=network.honest[0])
    await newcomer.write("hello", b"from the newcomer")
    expected = {"hello": b"from the newcomer"}
    for honest in network.honest:
        node = honest.up
        await until(node, holds_state(node, identity.peer_id, expected))
