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

import hmac
import os
import struct
from collections import OrderedDict

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


class TicketAuthority:
    """A responder's ticket keys and its table of used tickets (one per security context).

    The used-tickets table is bounded per initiator and in total. When an initiator's share is
    full its entry issued first makes room, and when the table is full the entry issued first
    of the initiator holding the most does; either way that initiator's *floor* rises to the
    evicted ticket's issue time, and tickets issued at or before its floor are refused. So an
    initiator that resumes often keeps resuming (only its older tickets fall back to a full
    handshake), nobody can make a used ticket usable again while the initiator holds entries,
    and one initiator never evicts another's entries unless it holds at least as many.
    """

    def __init__(
        self,
        *,
        root: bytes | None = None,
        max_used: int = MAX_USED_TICKETS,
        max_used_per_peer: int = MAX_USED_PER_PEER,
    ) -> None:
        self._root = root if root is not None else os.urandom(32)
        self.max_used = max_used
        self.max_used_per_peer = max_used_per_peer
        self._used: dict[PeerId, dict[bytes, _Use]] = {}
        """Per initiator, its used tickets by nonce."""
        self._floors: dict[PeerId, int] = {}
        """Per initiator holding entries: tickets issued at or before this second are refused."""
        self._count = 0

    def __repr__(self) -> str:
        return f"<TicketAuthority {self._count} used tickets>"

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
        epoch = _EPOCH.pack((now_s // lifetime_s) & 0xFFFFFFFF)
        nonce = nonce if nonce is not None else os.urandom(_NONCE_SIZE)
        key = ks.ticket_key(psk, self._root, _EPOCH.unpack(epoch)[0])
        plaintext = (
            _FIXED.pack(responder.digest, now_s, lifetime_s, ticket_psk) + initiator.public_key_der
        )
        return epoch + nonce + AESGCM(key).encrypt(nonce, plaintext, epoch)

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
            plaintext = AESGCM(ks.ticket_key(psk, self._root, epoch)).decrypt(
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
        entries = self._used.get(initiator)
        if entries is not None:
            self._forget_expired(initiator, entries, now_s)
        previous = entries.get(contents.nonce) if entries else None
        if previous is not None:
            return hmac.compare_digest(previous.binder, binder)
        if contents.issued_at_s <= self._floors.get(initiator, -1):
            return False
        if entries is not None and len(entries) >= self.max_used_per_peer:
            self._evict(initiator, adding=initiator)
        elif self._count >= self.max_used:
            self._evict(max(self._used, key=lambda peer: len(self._used[peer])), adding=initiator)
        entries = self._used.setdefault(initiator, {})
        entries[contents.nonce] = _Use(contents.issued_at_s, contents.expires_at_s, binder)
        self._count += 1
        return True

    def _forget_expired(self, initiator: PeerId, entries: dict[bytes, _Use], now_s: int) -> None:
        expired = [nonce for nonce, use in entries.items() if use.expires_at_s < now_s]
        for nonce in expired:
            del entries[nonce]
        self._count -= len(expired)
        if not entries:
            self._forget_initiator(initiator)

    def _evict(self, initiator: PeerId, *, adding: PeerId) -> None:
        """Make room: ``initiator``'s entry issued first goes and its floor rises (kept while
        it holds entries, or is ``adding`` one)."""
        entries = self._used[initiator]
        nonce = min(entries, key=lambda n: entries[n].issued_at_s)
        evicted = entries.pop(nonce)
        self._count -= 1
        self._floors[initiator] = max(self._floors.get(initiator, -1), evicted.issued_at_s)
        if not entries and initiator != adding:
            self._forget_initiator(initiator)

    def _forget_initiator(self, initiator: PeerId) -> None:
        del self._used[initiator]
        self._floors.pop(initiator, None)

    def used_count(self, initiator: PeerId | None = None) -> int:
        """How many used tickets are remembered (for ``initiator``, or in total)."""
        if initiator is None:
            return self._count
        return len(self._used.get(initiator, ()))


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
