"""The driver: an adversarial member plays hostile moves, reproducibly, for a bounded run.

A :class:`Move` is one hostile action of one protocol (a name and ``async play(conn, rng)``); a
catalogue is a list of moves. ``conn`` is whatever the protocol's arena hands a lane of the
adversary (for the state network: a member that can open state connections, raw TCP connections
and forge signed objects with its own genuine key). :func:`run_adversary` runs ``lanes``
concurrent lanes, each drawing moves from the catalogue with its own RNG derived from one seed,
until the move count or the clock budget is spent, and returns an :class:`AdversaryRun` that
says what was played. It stops by itself: every move runs under a deadline, and the run under the
budget's.

What a hostile move provokes on the adversary's own side (the victim closing the connection, the
handshake failing) is expected and counted, not raised. Anything else is a bug of the harness or a
crash it provoked, and propagates.
"""

from __future__ import annotations

import collections
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Generic, Protocol, TypeVar

import attrs
import trio

from p2ptls import P2PTLSError

C = TypeVar("C")
C_contra = TypeVar("C_contra", contravariant=True)

SEED_VARIABLE = "P2PTLS_ADVERSARY_SEED"
"""Environment variable that overrides the seed of every run (to replay a failure)."""

EXPECTED_ON_THE_ADVERSARY_SIDE: tuple[type[BaseException], ...] = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.EndOfChannel,
    trio.BusyResourceError,
    OSError,
    P2PTLSError,  # every protocol's own errors (its ProtocolError subclasses among them)
)
"""How the victim legitimately ends a hostile move: it closes, refuses or stops answering."""


class Move(Protocol[C_contra]):
    """One hostile action of one protocol."""

    @property
    def name(self) -> str: ...

    async def play(self, conn: C_contra, rng: random.Random) -> None:
        """Do the hostile thing once, with every free choice drawn from ``rng``."""
        ...


@attrs.frozen
class FunctionMove(Generic[C]):
    """A :class:`Move` made from an async function (see :func:`move`)."""

    name: str
    function: Callable[[C, random.Random], Awaitable[None]] = attrs.field(repr=False)

    async def play(self, conn: C, rng: random.Random) -> None:
        await self.function(conn, rng)


def move(
    name: str,
) -> Callable[[Callable[[C, random.Random], Awaitable[None]]], FunctionMove[C]]:
    """Decorator: ``@move("ping-flood") async def ping_flood(conn, rng): ...`` is a Move."""

    def wrap(function: Callable[[C, random.Random], Awaitable[None]]) -> FunctionMove[C]:
        return FunctionMove(name, function)

    return wrap


@attrs.frozen
class Budget:
    """Bounds of one run: it ends when either is spent."""

    moves: int
    """Moves played in all, shared between the lanes."""
    seconds: float
    """Clock seconds for the whole run (virtual seconds under trio's autojump clock)."""
    lanes: int = 1
    """Moves played at once (each lane is one adversarial connection at a time)."""
    move_timeout: float = 10.0
    """A move still running after this long is abandoned (a victim that stopped reading)."""
    cover: bool = True
    """Each lane first plays every move once (in a seeded order), then draws at random."""


@attrs.define
class AdversaryRun:
    """What one run played: enough to reproduce it (the seed) and to read a failure."""

    seed: int
    budget: Budget
    played: list[tuple[int, str]] = attrs.Factory(list)
    """``(lane, move name)`` in the order the moves started."""
    outcomes: collections.Counter[str] = attrs.Factory(collections.Counter)
    """``"move-name: how it ended"`` -> count (``ok``, the victim closed, ...)."""
    cost: dict[str, float] = attrs.Factory(dict)
    """Move name -> real (wall-clock) seconds spent in it: what makes a run slow."""
    timed_out: bool = False
    """The clock budget ended the run before the move count did."""

    def summary(self) -> str:
        moves = collections.Counter(name for _lane, name in self.played)
        listing = ", ".join(f"{name} x{count}" for name, count in sorted(moves.items()))
        return (
            f"adversary run seed={self.seed} ({SEED_VARIABLE}={self.seed} replays it): "
            f"{len(self.played)} moves in {self.budget.lanes} lanes"
            f"{' (stopped by the clock budget)' if self.timed_out else ''}: {listing}"
        )

    def costliest(self, count: int = 5) -> list[tuple[str, float]]:
        """The moves that took the most real time in all."""
        return sorted(self.cost.items(), key=lambda item: -item[1])[:count]

    @contextmanager
    def reported(self) -> Iterator[None]:
        """Attach the seed and the moves played to any failure raised inside the block."""
        try:
            yield
        except BaseException as exc:
            exc.add_note(self.summary())
            raise


def seed_for(default: int) -> int:
    """The seed of a run: ``default`` unless the environment names one."""
    value = os.environ.get(SEED_VARIABLE)
    return int(value) if value else default


LaneFactory = Callable[[int], AbstractAsyncContextManager[C]]
"""Gives lane ``i`` its adversarial context (``conn``) for the whole run."""


async def run_adversary(
    lane: LaneFactory[C],
    moves: Sequence[Move[C]],
    budget: Budget,
    seed: int,
    *,
    after_each_move: Callable[[], None] | None = None,
) -> AdversaryRun:
    """Play ``moves`` (drawn at random) against the arena behind ``lane`` within ``budget``.

    ``after_each_move`` is an invariant check run after every move, while the adversary's
    connections are still open (what a connection holds is gone once it closes); a failure names
    the move and carries the seed.

    Reproducible: the same seed draws the same moves with the same parameters in each lane (the
    interleaving of concurrent lanes is up to the scheduler). The seed is printed, so a failing
    test shows it.
    """
    if not moves:
        raise ValueError("no moves to play")
    run = AdversaryRun(seed, budget)
    print(f"adversary run: seed={seed}, {budget}")
    shares = [budget.moves // budget.lanes] * budget.lanes
    for index in range(budget.moves % budget.lanes):
        shares[index] += 1

    async def play_lane(index: int) -> None:
        rng = random.Random(f"{seed}/{index}")
        first = list(moves) if budget.cover else []
        rng.shuffle(first)
        async with lane(index) as conn:
            for number in range(shares[index]):
                chosen = first[number] if number < len(first) else rng.choice(moves)
                run.played.append((index, chosen.name))
                outcome = "ok"
                started = time.perf_counter()
                with trio.move_on_after(budget.move_timeout) as scope:
                    try:
                        await chosen.play(conn, rng)
                    except EXPECTED_ON_THE_ADVERSARY_SIDE as exc:
                        outcome = type(exc).__name__
                if scope.cancelled_caught:
                    outcome = "timeout"
                run.outcomes[f"{chosen.name}: {outcome}"] += 1
                spent = time.perf_counter() - started
                run.cost[chosen.name] = run.cost.get(chosen.name, 0.0) + spent
                if after_each_move is not None:
                    try:
                        after_each_move()
                    except AssertionError as exc:
                        exc.add_note(f"after move {chosen.name!r} of lane {index}")
                        exc.add_note(run.summary())
                        raise

    with trio.move_on_after(budget.seconds) as whole:
        async with trio.open_nursery() as nursery:
            for index in range(budget.lanes):
                nursery.start_soon(play_lane, index)
    run.timed_out = whole.cancelled_caught
    return run
