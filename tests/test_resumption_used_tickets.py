"""The used-tickets table of a TicketAuthority (SPEC 3.6) against a plain model of its rules.

The table keeps each step cheap (a heap names the entry issued first, a sweep runs only once an
entry has expired); these tests check that it decides exactly as the rules say: single use,
expiry, the per-initiator and total bounds, eviction of the entry issued first (the earliest to
arrive among equals) and the floor that keeps an evicted ticket refused.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptls._tickets import TicketAuthority, TicketContents
from p2ptls.identity import PeerId

PEERS = [PeerId(bytes([n]) * 32) for n in range(3)]


class ModelTable:
    """The rules of :meth:`TicketAuthority.use`, written as plainly as possible."""

    def __init__(self, max_used: int, max_used_per_peer: int) -> None:
        self.max_used = max_used
        self.max_used_per_peer = max_used_per_peer
        self.used: dict[PeerId, list[tuple[TicketContents, bytes]]] = {}
        """Per initiator, its used tickets and their binders in arrival order."""
        self.floors: dict[PeerId, int] = {}

    def count(self, peer: PeerId | None = None) -> int:
        if peer is None:
            return sum(len(entries) for entries in self.used.values())
        return len(self.used.get(peer, []))

    def use(self, contents: TicketContents, peer: PeerId, binder: bytes, now: int) -> bool:
        entries = self.used.get(peer)
        if entries is not None:
            entries[:] = [(c, b) for c, b in entries if c.expires_at_s >= now]
            if not entries:
                self.forget(peer)
                entries = None
        if entries is not None:
            for used, used_binder in entries:
                if used.nonce == contents.nonce:
                    return used_binder == binder
            if contents.issued_at_s <= self.floors.get(peer, -1):
                return False
        if entries is not None and len(entries) >= self.max_used_per_peer:
            self.evict(peer, peer)
        elif self.count() >= self.max_used:
            # Full: first every initiator's expired entries go (and the initiators left with
            # none, floors and all); if still full, the initiator holding the most (the first of
            # them in the table's order) gives up its entry issued first.
            for other in list(self.used):
                self.used[other][:] = [(c, b) for c, b in self.used[other] if c.expires_at_s >= now]
                if not self.used[other]:
                    self.forget(other)
            if self.count() >= self.max_used:
                self.evict(max(self.used, key=lambda p: len(self.used[p])), peer)
        self.used.setdefault(peer, []).append((contents, binder))
        return True

    def evict(self, peer: PeerId, adding: PeerId) -> None:
        entries = self.used[peer]
        first = min(range(len(entries)), key=lambda i: (entries[i][0].issued_at_s, i))
        evicted, _ = entries.pop(first)
        self.floors[peer] = max(self.floors.get(peer, -1), evicted.issued_at_s)
        if not entries and peer != adding:
            self.forget(peer)

    def forget(self, peer: PeerId) -> None:
        del self.used[peer]
        self.floors.pop(peer, None)


step = st.tuples(
    st.integers(0, 7),  # the ticket
    st.integers(0, 2),  # the initiator
    st.integers(0, 1),  # the binder
    st.integers(0, 3),  # seconds that pass before this step
)


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=60), st.integers(2, 6), st.integers(1, 4))
def test_the_table_decides_as_the_rules_say(
    steps: list[tuple[int, int, int, int]], max_used: int, per_peer: int
) -> None:
    authority = TicketAuthority(max_used=max_used, max_used_per_peer=per_peer)
    model = ModelTable(max_used, per_peer)
    now = 1000
    for ticket, peer_index, binder_index, elapsed in steps:
        now += elapsed
        peer = PEERS[peer_index]
        # Each ticket has its own issue time and lifetime (some issued at the same second).
        issued, lifetime = 990 + ticket // 2, 10 + 7 * (ticket % 3)
        contents = TicketContents(bytes([ticket]) * 12, issued, lifetime, bytes(32), b"")
        binder = bytes([binder_index]) * 32
        expected = model.use(contents, peer, binder, now)
        assert authority.use(contents, peer, binder, now_s=now) == expected
        assert authority.used_count() == model.count()
        for each in PEERS:
            assert authority.used_count(each) == model.count(each)


def test_a_full_share_evicts_the_ticket_issued_first_not_the_first_used() -> None:
    authority = TicketAuthority(max_used_per_peer=2)
    peer = PEERS[0]

    def contents(nonce: int, issued: int) -> TicketContents:
        return TicketContents(bytes([nonce]) * 12, issued, 100, bytes(32), b"")

    assert authority.use(contents(1, 1005), peer, b"b", now_s=1010)
    assert authority.use(contents(2, 1001), peer, b"b", now_s=1010)
    assert authority.use(contents(3, 1003), peer, b"b", now_s=1010)  # evicts 2 (issued 1001)
    assert not authority.use(contents(4, 1001), peer, b"b", now_s=1010)  # at the floor
    assert authority.use(contents(1, 1005), peer, b"b", now_s=1010)  # still remembered: a copy
    assert not authority.use(contents(1, 1005), peer, b"other", now_s=1010)
    assert authority.used_count(peer) == 2


def test_a_full_table_of_expired_entries_makes_room_without_raising_a_live_floor() -> None:
    """Other initiators' dead entries are swept when the table is full, instead of evicting
    (and raising the floor of) an initiator whose entries are still live."""
    authority = TicketAuthority(max_used=4, max_used_per_peer=4)
    live, *others = [PeerId(bytes([n]) * 32) for n in range(1, 5)]
    assert authority.use(_ticket(b"live-one", issued=100, lifetime=1000), live, b"b", now_s=100)
    for index, other in enumerate(others):
        short = _ticket(b"short-%d" % index, issued=100, lifetime=10)
        assert authority.use(short, other, b"b", now_s=100)
    assert authority.used_count() == 4
    newcomer = PeerId(bytes([9]) * 32)
    assert authority.use(_ticket(b"new", issued=200, lifetime=1000), newcomer, b"b", now_s=200)
    assert authority.used_count() == 2  # the three expired entries went, nothing live did
    assert authority.used_count(live) == 1
    # The live initiator's floor did not rise: a ticket it holds from before is still good.
    assert authority.use(_ticket(b"live-two", issued=50, lifetime=1000), live, b"b", now_s=200)


def _ticket(nonce: bytes, *, issued: int, lifetime: int) -> TicketContents:
    return TicketContents(nonce.ljust(16, b"."), issued, lifetime, bytes(32), b"der")
