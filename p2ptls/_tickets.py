"""Resumption tickets: the responder's stateless ticket format and the initiator's ticket cache.

Theory of operation
-------------------
After a handshake the responder hands the initiator tickets (TICKET records, SPEC 3.6). A ticket
is opaque to the initiator: it is the responder's own state, sealed with AES-256-GCM under a
*ticket key* only the responder holds::

    ticket = key_epoch u32 | nonce (12) | AES-GCM(ticket_key(epoch), nonce, aad = key_epoch,
             id_R (32) | issued_at_s u64 | lifetime_s u32 | ticket_psk (32) | DER(pk_I))

Ticket keys derive from a random ``ticket_root`` kept in memory only (a restart invalidates every
ticket) and from the network key (a changed network key invalidates every ticket too)::

    ticket_key(epoch) = ExpandLabel(Extract(salt=psk_secret, ikm=ticket_root), "ticket key",
                                    u32 epoch, 32),    epoch = floor(now_s / lifetime_s)

The responder opens tickets of the current and the previous epoch only, so keys rotate and a
ticket lives at most its lifetime. Each ticket is used once: the responder remembers the nonces
of used tickets until they expire, in a table bounded in total and per initiator; when a bound is
reached the entry issued first of the initiator (or of the one holding the most) makes room and
raises that initiator's floor: tickets issued at or before it are refused (the initiator falls
back to a full handshake), so that an evicted entry does not make its ticket usable again.

The initiator keeps received tickets in a :class:`TicketCache`, bounded per peer and in peers,
and takes a ticket out when it uses it.
"""

from __future__ import annotations

import heapq
import hmac
import os
import struct
from collections import OrderedDict
from collections.abc import Callable

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import _keyschedule as ks
from . import _wire as wire
from .identity import PeerId, PeerRecord

_EPOCH = struct.Struct(">I")
_NONCE_SIZE = 12
_FIXED = struct.Struct(">32sQI32s")  # id_R | issued_at_s | lifetime_s | ticket_psk
TICKET_OVERHEAD = _EPOCH.size + _NONCE_SIZE + _FIXED.size + wire.TAG_SIZE
"""A ticket's length less the initiator's public key (DER)."""
CLOCK_SLACK_S = 60
"""How far in the future a ticket's issue time may lie (the responder's clock may step back)."""
MAX_USED_TICKETS = 65536
MAX_USED_PER_PEER = 256
TICKETS_PER_HANDSHAKE = 2
MAX_TICKETS_PER_PEER = 4
MAX_TICKET_PEERS = 4096
_KEPT_EPOCH_KEYS = 4
"""Ticket ciphers kept (the current and the previous epoch, under up to two network keys)."""


@attrs.frozen(repr=False)
class TicketContents:
    """An opened ticket (responder side)."""

    nonce: bytes
    issued_at_s: int
    lifetime_s: int
    ticket_psk: bytes
    initiator_der: bytes

    @property
    def expires_at_s(self) -> int:
        return self.issued_at_s + self.lifetime_s

    def __repr__(self) -> str:
        return "TicketContents(<secret>)"


@attrs.frozen
class _Use:
    """One used ticket: when it was issued and expires, and the binder of the ResumeHello that
    used it (a copy of that ResumeHello is answered, as a copy of a Hello is)."""

    issued_at_s: int
    expires_at_s: int
    binder: bytes = attrs.field(repr=False)


class _UsedBy:
    """The used tickets of one initiator, by nonce, with what keeps each step of
    :meth:`TicketAuthority.use` cheap however full the table is: a heap of ``(issued_at_s,
    arrival, nonce)`` that names the entry issued first (the next to make room), and the earliest
    expiry (no entry expires before it, so no sweep is needed before then)."""

    __slots__ = ("arrivals", "by_issue", "entries", "floor", "next_expiry_s")

    def __init__(self) -> None:
        self.entries: dict[bytes, _Use] = {}
        self.by_issue: list[tuple[int, int, bytes]] = []
        self.arrivals = 0
        self.next_expiry_s = -1
        self.floor = -1
        """Tickets issued at or before this second are refused (kept while the initiator holds
        entries)."""

    def add(self, nonce: bytes, use: _Use) -> None:
        self.entries[nonce] = use
        self.arrivals += 1
        heapq.heappush(self.by_issue, (use.issued_at_s, self.arrivals, nonce))
        if self.next_expiry_s < 0 or use.expires_at_s < self.next_expiry_s:
            self.next_expiry_s = use.expires_at_s

    def forget_expired(self, now_s: int) -> int:
        """Drop the entries expired at ``now_s``; return how many went."""
        if self.next_expiry_s < 0 or self.next_expiry_s >= now_s:
            return 0
        before = len(self.entries)
        self.entries = {n: use for n, use in self.entries.items() if use.expires_at_s >= now_s}
        self.by_issue = [item for item in self.by_issue if item[2] in self.entries]
        heapq.heapify(self.by_issue)
        self.next_expiry_s = min((use.expires_at_s for use in self.entries.values()), default=-1)
        return before - len(self.entries)

    def evict_first_issued(self) -> None:
        """Drop the entry issued first (the earliest to arrive among equals); raise the floor."""
        _, _, nonce = heapq.heappop(self.by_issue)
        evicted = self.entries.pop(nonce)
        self.floor = max(self.floor, evicted.issued_at_s)


class TicketAuthority:
    """A responder's ticket keys and its table of used tickets (one per security context).

    The used-tickets table is bounded per initiator and in total. When an initiator's share is
    full its entry issued first makes room, and when the table is full the entry issued first
    of the initiator holding the most does; either way that initiator's *floor* rises to the
    evicted ticket's issue time, and tickets issued at or before its floor are refused. So an
    initiator that resumes often keeps resuming (only its older tickets fall back to a full
    handshake), nobody can make a used ticket usable again while the initiator holds entries,
    and one initiator never evicts another's entries unless it holds at least as many.

    The AES-GCM key of an epoch is derived once (the current and the previous epoch are kept).
    """

    def __init__(
        self,
        *,
        root: bytes | None = None,
        max_used: int = MAX_USED_TICKETS,
        max_used_per_peer: int = MAX_USED_PER_PEER,
        randomness: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._randomness = randomness
        """Where the ticket root and each ticket's nonce come from (injected for tests)."""
        self._root = root if root is not None else randomness(32)
        self.max_used = max_used
        self.max_used_per_peer = max_used_per_peer
        self._used: dict[PeerId, _UsedBy] = {}
        """Per initiator holding entries, its used tickets and its floor."""
        self._count = 0
        self._next_expiry_s = -1
        """No remembered entry, of any initiator, expires before this (-1: none held)."""
        self._keys: dict[tuple[bytes, int], AESGCM] = {}

    def __repr__(self) -> str:
        return f"<TicketAuthority {self._count} used tickets>"

    def _cipher(self, psk: bytes, epoch: int) -> AESGCM:
        """The ticket cipher of ``epoch`` under network key ``psk`` (derived once)."""
        cipher = self._keys.get((psk, epoch))
        if cipher is None:
            if len(self._keys) >= _KEPT_EPOCH_KEYS:
                self._keys.clear()
            cipher = AESGCM(ks.ticket_key(psk, self._root, epoch))
            self._keys[psk, epoch] = cipher
        return cipher

    def seal(
        self,
        psk: bytes,
        responder: PeerId,
        initiator: PeerRecord,
        ticket_psk: bytes,
        *,
        now_s: int,
        lifetime_s: int,
        nonce: bytes | None = None,
    ) -> bytes:
        """A ticket for ``initiator``, issued now, under the current epoch's key."""
        epoch = (now_s // lifetime_s) & 0xFFFFFFFF
        epoch_bytes = _EPOCH.pack(epoch)
        nonce = nonce if nonce is not None else self._randomness(_NONCE_SIZE)
        plaintext = (
            _FIXED.pack(responder.digest, now_s, lifetime_s, ticket_psk) + initiator.public_key_der
        )
        return epoch_bytes + nonce + self._cipher(psk, epoch).encrypt(nonce, plaintext, epoch_bytes)

    def open_untrusted(
        self, psk: bytes, responder: PeerId, ticket: bytes, *, now_s: int, lifetime_s: int
    ) -> TicketContents | None:
        """The contents of a ticket this responder issued, still valid now; else ``None``.

        Refused: an epoch other than the current or the previous one, a failed AEAD, another
        responder's id, an expired ticket or one issued in the future beyond the clock slack.
        """
        if len(ticket) < TICKET_OVERHEAD + 1:
            return None
        (epoch,) = _EPOCH.unpack_from(ticket, 0)
        current = (now_s // lifetime_s) & 0xFFFFFFFF
        if epoch not in (current, (current - 1) & 0xFFFFFFFF):
            return None
        nonce = ticket[_EPOCH.size : _EPOCH.size + _NONCE_SIZE]
        try:
            plaintext = self._cipher(psk, epoch).decrypt(
                nonce, ticket[_EPOCH.size + _NONCE_SIZE :], ticket[: _EPOCH.size]
            )
        except InvalidTag:
            return None
        if len(plaintext) < _FIXED.size:
            return None
        responder_id, issued_at_s, lifetime, psk_value = _FIXED.unpack_from(plaintext, 0)
        if responder_id != responder.digest:
            return None
        if issued_at_s + lifetime < now_s or issued_at_s > now_s + CLOCK_SLACK_S:
            return None
        return TicketContents(nonce, issued_at_s, lifetime, psk_value, plaintext[_FIXED.size :])

    def use(
        self, contents: TicketContents, initiator: PeerId, binder: bytes, *, now_s: int
    ) -> bool:
        """Mark a ticket used by the ResumeHello with ``binder``; ``False`` if another
        ResumeHello used it before, or it was issued at or before the initiator's floor."""
        used = self._used.get(initiator)
        if used is not None:
            self._count -= used.forget_expired(now_s)
            if not used.entries:
                del self._used[initiator]  # and its floor
                used = None
        if used is not None:
            previous = used.entries.get(contents.nonce)
            if previous is not None:
                return hmac.compare_digest(previous.binder, binder)
            if contents.issued_at_s <= used.floor:
                return False
        if used is not None and len(used.entries) >= self.max_used_per_peer:
            self._evict(initiator, adding=initiator)
        elif self._count >= self.max_used and not self._forget_all_expired(now_s):
            self._evict(max(self._used, key=lambda p: len(self._used[p].entries)), initiator)
        used = self._used.setdefault(initiator, _UsedBy())
        used.add(contents.nonce, _Use(contents.issued_at_s, contents.expires_at_s, binder))
        self._count += 1
        if self._next_expiry_s < 0 or contents.expires_at_s < self._next_expiry_s:
            self._next_expiry_s = contents.expires_at_s
        return True

    def _forget_all_expired(self, now_s: int) -> bool:
        """When an entry of any initiator has expired, drop every expired entry (and the
        initiators left with none); whether that made room. A full table of other initiators'
        dead entries must not force evictions that raise live initiators' floors."""
        if self._next_expiry_s < 0 or self._next_expiry_s >= now_s:
            return False
        for initiator in list(self._used):
            used = self._used[initiator]
            self._count -= used.forget_expired(now_s)
            if not used.entries:
                del self._used[initiator]
        self._next_expiry_s = min((used.next_expiry_s for used in self._used.values()), default=-1)
        return self._count < self.max_used

    def _evict(self, initiator: PeerId, adding: PeerId) -> None:
        """Make room: ``initiator``'s entry issued first goes and its floor rises (kept while
        it holds entries, or is ``adding`` one)."""
        used = self._used[initiator]
        used.evict_first_issued()
        self._count -= 1
        if not used.entries and initiator != adding:
            del self._used[initiator]

    def used_count(self, initiator: PeerId | None = None) -> int:
        """How many used tickets are remembered (for ``initiator``, or in total)."""
        if initiator is None:
            return self._count
        used = self._used.get(initiator)
        return len(used.entries) if used is not None else 0


@attrs.frozen(repr=False)
class SessionTicket:
    """A ticket the initiator holds for one responder: the opaque ticket and its PSK."""

    peer_id: PeerId
    ticket: bytes
    ticket_psk: bytes
    expires_at_s: float
    """Wall-clock expiry (seconds since the epoch), from the lifetime the responder announced."""

    def __repr__(self) -> str:
        return f"SessionTicket(peer={self.peer_id.short})"


class TicketCache:
    """The initiator's tickets: at most ``per_peer`` per peer, ``max_peers`` peers (the least
    recently used peer is dropped first), expired tickets dropped when seen."""

    def __init__(
        self, *, per_peer: int = MAX_TICKETS_PER_PEER, max_peers: int = MAX_TICKET_PEERS
    ) -> None:
        self.per_peer = per_peer
        self.max_peers = max_peers
        self._tickets: OrderedDict[PeerId, list[SessionTicket]] = OrderedDict()

    def __repr__(self) -> str:
        return f"<TicketCache {len(self._tickets)} peers>"

    def __len__(self) -> int:
        return sum(len(tickets) for tickets in self._tickets.values())

    def put(self, ticket: SessionTicket, *, now_s: float) -> None:
        """Keep ``ticket`` (the oldest of its peer's is dropped beyond ``per_peer``)."""
        tickets = [t for t in self._tickets.pop(ticket.peer_id, []) if t.expires_at_s > now_s]
        tickets.append(ticket)
        self._tickets[ticket.peer_id] = tickets[-self.per_peer :]
        while len(self._tickets) > self.max_peers:
            self._tickets.popitem(last=False)

    def take(self, peer_id: PeerId, *, now_s: float) -> SessionTicket | None:
        """Take out (single use) the newest unexpired ticket for ``peer_id``, if any."""
        tickets = [t for t in self._tickets.pop(peer_id, []) if t.expires_at_s > now_s]
        if not tickets:
            return None
        ticket = tickets.pop()
        if tickets:
            self._tickets[peer_id] = tickets
        return ticket

    def count(self, peer_id: PeerId, *, now_s: float) -> int:
        """How many unexpired tickets are held for ``peer_id``."""
        return sum(1 for t in self._tickets.get(peer_id, []) if t.expires_at_s > now_s)

    def forget(self, peer_id: PeerId | None = None) -> None:
        """Drop the tickets of ``peer_id`` (of every peer if ``None``)."""
        if peer_id is None:
            self._tickets.clear()
        else:
            self._tickets.pop(peer_id, None)
