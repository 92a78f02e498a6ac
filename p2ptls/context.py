"""SecurityContext: what every secure stream of a host shares (like ``ssl.SSLContext``).

The local identity, the network key, the trusted peers, the replay guard, the reassembly budget,
and the limiter (and optional rate limit) for RSA private-key operations, which run on worker
threads so that a flood of handshakes never stalls established connections; identical
operations in flight at once share one thread. Also the resumption state (SPEC 3.6): the ticket
keys this context issues tickets under, and the cache of tickets it received from its peers.
"""

from __future__ import annotations

import os
import time

import attrs
import trio

from ._fragments import ReassemblyBudget
from ._tickets import SessionTicket, TicketAuthority, TicketCache
from .config import StreamConfig
from .identity import Identity, NetworkKey, PeerId
from .trust import KnownPeers, ReplayGuard


@attrs.define(repr=False)
class _Decryption:
    """One private-key operation in flight, awaited by every identical request."""

    done: trio.Event = attrs.field(factory=trio.Event)
    finished: bool = False
    result: bytes | None = None


class SecurityContext:
    """Everything a host shares between its secure streams (like ``ssl.SSLContext``).

    Holds the local identity, the network key, the trusted peers, the replay guard, the reassembly
    budget shared by all streams, and the limiter for RSA private-key operations.
    """

    def __init__(
        self,
        identity: Identity,
        psk: NetworkKey,
        peers: KnownPeers | None = None,
        *,
        config: StreamConfig | None = None,
        replay_guard: ReplayGuard | None = None,
        budget: ReassemblyBudget | None = None,
        private_key_threads: int | None = None,
        max_private_key_operations_per_s: float | None = None,
        offload_private_key_operations: bool = True,
    ) -> None:
        self.identity = identity
        self.psk = psk
        self.peers = peers if peers is not None else KnownPeers()
        self.config = config or StreamConfig()
        self.replay_guard = replay_guard or ReplayGuard()
        self.budget = budget or ReassemblyBudget()
        threads = private_key_threads or max(1, (os.cpu_count() or 2) // 2)
        self.key_limiter = trio.CapacityLimiter(threads)
        """At most this many RSA private-key operations at once (default: half the cores, so
        established connections keep the rest)."""
        self._key_rate = max_private_key_operations_per_s
        self._key_tokens = max_private_key_operations_per_s or 0.0
        self._key_time: float | None = None
        self.offload_private_key_operations = offload_private_key_operations
        """Run RSA private-key operations on worker threads (the default). In-memory test pairs
        turn it off so that trio's autojump clock does not jump while a thread works."""
        self._last_timestamp = 0
        self.private_key_operations = 0
        """How many RSA private-key operations this context has run (for monitoring and tests)."""
        self._decryptions_in_flight: dict[tuple[bytes, bytes], _Decryption] = {}
        self.ticket_authority = TicketAuthority()
        """The keys of the tickets this context issues as a responder (memory only: a restart
        invalidates them) and its table of used tickets."""
        self.tickets = TicketCache()
        """Tickets received from peers (at most 4 per peer, 4096 peers), each used once."""
        self.peers.removal_listeners.append(self.forget_tickets)

    def take_ticket(self, peer_id: PeerId) -> SessionTicket | None:
        """Take out (single use) a ticket for resuming a session with ``peer_id``, if any."""
        return self.tickets.take(peer_id, now_s=time.time())

    def store_ticket(self, ticket: SessionTicket) -> None:
        """Keep a ticket received from a peer."""
        self.tickets.put(ticket, now_s=time.time())

    def forget_tickets(self, peer_id: PeerId | None = None) -> None:
        """Drop the tickets held for ``peer_id`` (for every peer if ``None``): the next connection
        to it runs a full handshake. Removing a peer from ``peers`` calls this."""
        self.tickets.forget(peer_id)

    async def private_key_turn(self) -> None:
        """Wait for the rate limit on private-key operations (a token bucket of one second's
        worth), if one is set; a flood of handshakes then queues here, bounded by the host's
        limit on handshakes in progress."""
        rate = self._key_rate
        if rate is None:
            return
        now = trio.current_time()
        if self._key_time is not None:
            self._key_tokens = min(rate, self._key_tokens + (now - self._key_time) * rate)
        self._key_time = now
        self._key_tokens -= 1
        if self._key_tokens < 0:
            await trio.sleep(-self._key_tokens / rate)

    async def decrypt_once(self, ciphertext: bytes, label: bytes) -> bytes | None:
        """RSA-OAEP decryption with the identity key, on a worker thread under the limiter.

        Identical requests in flight at the same time share one operation: copies of one Hello
        raced in on several connections at once cost one decryption (the replay guard answers
        later copies from the remembered result).
        """
        key = (label, ciphertext)
        while (pending := self._decryptions_in_flight.get(key)) is not None:
            await pending.done.wait()
            if pending.finished:
                return pending.result
        pending = _Decryption()
        self._decryptions_in_flight[key] = pending
        try:
            pending.result = await self._decrypt(ciphertext, label)
            pending.finished = True
        finally:
            del self._decryptions_in_flight[key]
            pending.done.set()
        return pending.result

    async def _decrypt(self, ciphertext: bytes, label: bytes) -> bytes | None:
        await self.private_key_turn()
        self.private_key_operations += 1
        identity = self.identity
        if not self.offload_private_key_operations:
            await trio.lowlevel.checkpoint()
            return identity.decrypt_untrusted(ciphertext, label)
        return await trio.to_thread.run_sync(
            identity.decrypt_untrusted, ciphertext, label, limiter=self.key_limiter
        )

    def next_timestamp(self) -> int:
        """A Hello timestamp: wall-clock nanoseconds, strictly increasing in this process."""
        self._last_timestamp = max(time.time_ns(), self._last_timestamp + 1)
        return self._last_timestamp

    def __repr__(self) -> str:
        return f"<SecurityContext {self.identity!r}, {len(self.peers)} known peers>"
