"""Who a state node keeps connections to: verified members and gossiped candidates (sans-IO).

Theory of operation
-------------------
A node learns of other members in two ways that deserve very different trust:

* **verified members** proved who they are: a handshake with them completed (they hold the
  network key and the private key of their id), or the application named them (bootstrap records,
  ``add_member``), or an earlier run saved them after one of those. Only verified members take a
  place in the member table, are gossiped to others (MEMBERS) and are saved. The table holds at
  most ``max_members``; one that authenticates to us always gets a place: when the table is full
  it evicts the member not connected now that was seen longest ago (if every member is connected,
  the one seen longest ago).
* **candidates** are what members *claim* in MEMBERS messages: a public key (any odd modulus
  passes as one, so they cost nothing to make up) and an address. They live in a
  :class:`~p2ptls._bounded.FairTable` charged to the member that gossiped them (at most
  ``per_source`` each, ``max_candidates`` in total, fair eviction), expire ``ttl`` seconds after
  they were gossiped, and are only *dialled*: ``candidate_tries`` times at most, one dial at a time
  each, the next one a doubling delay after the previous one ended. A candidate whose
  handshake completes becomes a verified member (its STATE_HELLO then says where it listens). A
  candidate may also be another address for a verified member that is not connected.

Nothing here does I/O or reads a clock: the node passes ``now`` (``trio.current_time()``).
"""

from __future__ import annotations

import math
from collections.abc import Container

import attrs

from .._bounded import FairTable

PeerDigest = bytes
Address = tuple[str, int]


@attrs.define(slots=True, eq=False)
class Candidate:
    """A member that another member told us about, not verified yet."""

    public_key_der: bytes
    address: Address
    tries: int = 0
    next_try: float = 0.0
    dialling: bool = False


class Membership:
    """The member table and the candidate table of one node.

    Args:
      own: this node's id digest (never a member of its own table).
      max_members: most verified members.
      max_candidates: most candidates in total.
      candidates_per_source: most candidates charged to one gossiping member.
      candidate_ttl: seconds a candidate is kept after it was gossiped.
      candidate_tries: dials of a candidate before it is left to expire.
      retry_delay: seconds after a failed dial before a candidate is dialled again (doubling
        per try, up to ``max_retry_delay``).
    """

    def __init__(
        self,
        own: PeerDigest,
        *,
        max_members: int,
        max_candidates: int,
        candidates_per_source: int,
        candidate_ttl: float,
        candidate_tries: int = 8,
        retry_delay: float = 1.0,
        max_retry_delay: float = 15.0,
    ) -> None:
        self.own = own
        self.members: FairTable[PeerDigest, None, PeerDigest] = FairTable(max_members, max_members)
        """Verified members, each charged to itself; ``added`` is when it was last seen."""
        self.candidates: FairTable[PeerDigest, Candidate, PeerDigest] = FairTable(
            max_candidates, candidates_per_source
        )
        self.candidate_ttl = candidate_ttl
        self.candidate_tries = candidate_tries
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self._seen: dict[PeerDigest, float] = {}

    def admit(self, peer: PeerDigest, now: float, connected: Container[PeerDigest]) -> list[bytes]:
        """``peer`` proved itself (or the application named it): give it a place.

        Returns the members evicted to make room (the caller closes their connections and forgets
        them). ``connected`` holds the members connected now (they are evicted last).
        """
        if peer == self.own:
            return []
        self.candidates.pop(peer)
        self._seen[peer] = now
        if peer in self.members:
            return []
        evicted: list[bytes] = []
        if len(self.members) >= self.members.capacity:
            victim = self._victim(connected)
            self.members.pop(victim)
            del self._seen[victim]
            evicted.append(victim)
        self.members.put(peer, None, peer, now)
        return evicted

    def seen(self, peer: PeerDigest, now: float) -> None:
        """A connection to the verified member ``peer`` was set up or ended now."""
        if peer in self.members:
            self._seen[peer] = now

    def _victim(self, connected: Container[PeerDigest]) -> PeerDigest:
        idle = [peer for peer in self.members if peer not in connected]
        pool = idle or list(self.members)
        return min(pool, key=lambda peer: self._seen.get(peer, 0.0))

    def gossiped(
        self,
        source: PeerDigest,
        peer: PeerDigest,
        public_key_der: bytes,
        address: Address | None,
        now: float,
        *,
        known_address: Address | None = None,
    ) -> bool:
        """``source`` (a connected, authenticated member) claims ``peer`` is a member at
        ``address``. Returns True if that is news worth dialling (a new candidate).

        ``known_address`` is the address of ``peer`` if it is a verified member already; the claim
        then only matters as another address to try while it is not connected.
        """
        if peer in (self.own, source) or address is None:
            return False
        if peer in self.members and address == known_address:
            return False
        held = self.candidates.get(peer)
        if held is not None and held.address == address:
            return False  # already known: the earlier claim keeps its tries and its expiry
        if (
            held is not None
            and held.tries < self.candidate_tries
            and self.candidates.source_of(peer) != source
        ):
            return False  # one live claim per candidate: another member cannot reset its tries
        self.candidates.put(peer, Candidate(public_key_der, address), source, now)
        return True

    def due(self, now: float, limit: int) -> list[tuple[PeerDigest, Candidate]]:
        """Up to ``limit`` candidates to dial now, each marked as being dialled: the caller
        reports the end of every dial with :meth:`dial_ended`."""
        self.candidates.expire(now, self.candidate_ttl)
        ready: list[tuple[PeerDigest, Candidate]] = []
        for peer, candidate in self.candidates.items():
            if len(ready) >= limit:
                break
            if self._waiting(candidate) or candidate.next_try > now:
                continue
            candidate.tries += 1
            candidate.dialling = True
            ready.append((peer, candidate))
        return ready

    def dial_ended(self, candidate: Candidate, now: float) -> None:
        """A dial of ``candidate`` ended (if it succeeded, :meth:`admit` already removed it)."""
        candidate.dialling = False
        delay = self.retry_delay * 2 ** min(candidate.tries - 1, 30)
        candidate.next_try = now + min(delay, self.max_retry_delay)

    def next_deadline(self) -> float:
        """When the next candidate is due to be dialled (``math.inf``: none will be)."""
        times = [c.next_try for _, c in self.candidates.items() if not self._waiting(c)]
        return min(times, default=math.inf)

    def _waiting(self, candidate: Candidate) -> bool:
        return candidate.dialling or candidate.tries >= self.candidate_tries

    def forget(self, peer: PeerDigest) -> None:
        """Forget ``peer`` everywhere (a member evicted or removed)."""
        self.members.pop(peer)
        self.candidates.pop(peer)
        self._seen.pop(peer, None)
