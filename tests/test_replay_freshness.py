"""The replay guard's per-initiator freshness table (SPEC 3.5 (b)) against a plain model.

``ReplayGuard.accept`` keeps timestamps that fell below the reorder window until the set is
full (they are refused by the window anyway), so that an accept does not rebuild the set; these
tests check that :meth:`ReplayGuard.is_fresh` answers exactly as the rules say.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptls import trust
from p2ptls.identity import PeerId
from p2ptls.trust import ReplayGuard

PEER = PeerId(b"i" * 32)
CAP = 4
WINDOW = 10


class ModelFreshness:
    """The rules: at most ``CAP`` timestamps above ``newest - WINDOW`` remembered; what the cap
    forgets raises the floor."""

    def __init__(self) -> None:
        self.newest: int | None = None
        self.accepted: set[int] = set()
        self.floor = -1

    def is_fresh(self, timestamp: int) -> bool:
        if self.newest is None:
            return True
        if timestamp <= max(self.newest - WINDOW, self.floor):
            return False
        return timestamp not in self.accepted

    def accept(self, timestamp: int) -> None:
        self.newest = timestamp if self.newest is None else max(self.newest, timestamp)
        seen = {t for t in self.accepted if t > self.newest - WINDOW} | {timestamp}
        if len(seen) > CAP:
            ordered = sorted(seen)
            self.floor = max(self.floor, ordered[-CAP - 1])
            seen = set(ordered[-CAP:])
        self.accepted = seen


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.booleans()), max_size=80))
def test_freshness_is_decided_as_the_rules_say(steps: list[tuple[int, bool]]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trust, "MAX_REMEMBERED_PER_PEER", CAP)
        guard = ReplayGuard()
        guard.reorder_window_ns = WINDOW
        model = ModelFreshness()
        for timestamp, accept in steps:
            fresh = model.is_fresh(timestamp)
            assert guard.is_fresh(PEER, timestamp) == fresh
            if accept and fresh:  # the handshake only accepts fresh timestamps
                model.accept(timestamp)
                guard.accept(PEER, timestamp)
        for timestamp in range(45):
            assert guard.is_fresh(PEER, timestamp) == model.is_fresh(timestamp)
