"""A reference implementation of the record layer (``protocol/SPEC.md`` section 5), the Hello
admission rule of the replay cache (section 3.5) and the reassembly budget (section 6), for the
vectors.

Like :mod:`protocol.handshake_reference`, it is written from the specification text and imports
nothing from p2ptls. :class:`ReferenceSealer` seals records and describes each one as
``records.json`` and ``fragmentation.json`` write it; :class:`ReferenceReplayCache` decides each
Hello of the ``replay.json`` script (``tests/test_fuzz.py`` also races p2ptls's ``ReplayGuard``
against it); :func:`reference_reassembly_charges` gives the budget a receiver holds.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from protocol.handshake_reference import (
    KEY_UPDATE,
    TAG_SIZE,
    TYPE_NAMES,
    expand_label,
    header,
    sha256,
)
from protocol.vector_inputs import Json

# --- protocol constants, as SPEC.md states them (deliberately not imported from p2ptls) ---------

REPLAY_WINDOW_NS = 600 * 10**9  # how far behind the responder's clock a Hello may be
MAX_FUTURE_SKEW_NS = 60 * 10**9  # how far ahead of it
MAX_RECENT_HELLOS = 65536  # binders remembered
MAX_RECENT_PER_SOURCE = 4096  # of which one source (IPv4 address, IPv6 /64) may hold
MIN_NONFINAL_FRAGMENT = 252
FRAGMENT_OVERHEAD = 64
INLINE_RECORD_LIMIT = 1024  # larger records appear as SHA-256 in records.json, in full elsewhere


class ReferenceSealer:
    """The record layer of SPEC.md: nonce = IV xor sequence, header as AAD."""

    def __init__(self, secret: bytes) -> None:
        self.generation = -1
        self.generations: list[Json] = []
        self._install(secret)

    def _install(self, secret: bytes) -> None:
        self.secret = secret
        self.key = expand_label(secret, "key", b"", 32)
        self.iv = expand_label(secret, "iv", b"", 12)
        self.sequence = 0
        self.generation += 1
        self.generations.append(
            {
                "generation": self.generation,
                "traffic_secret": secret.hex(),
                "key": self.key.hex(),
                "iv": self.iv.hex(),
            }
        )

    def seal(self, content_type: int, plaintext: bytes) -> tuple[bytes, Json]:
        nonce = (int.from_bytes(self.iv, "big") ^ self.sequence).to_bytes(12, "big")
        head = header(content_type, len(plaintext) + TAG_SIZE)
        record = head + AESGCM(self.key).encrypt(nonce, plaintext, head)
        info: Json = {
            "generation": self.generation,
            "sequence": self.sequence,
            "content_type": content_type,
            "content_type_name": TYPE_NAMES[content_type],
            "nonce": nonce.hex(),
        }
        if len(record) > INLINE_RECORD_LIMIT:
            info["plaintext_length"] = len(plaintext)
            info["plaintext_head"] = plaintext[:16].hex()
            info["plaintext_sha256"] = sha256(plaintext).hex()
            info["record_length"] = len(record)
            info["record_sha256"] = sha256(record).hex()
        else:
            info["plaintext"] = plaintext.hex()
            info["record"] = record.hex()
        self.sequence += 1
        if content_type == KEY_UPDATE:
            self._install(expand_label(self.secret, "key update", b"", 32))
        return record, info


class ReferenceReplayCache:
    """The Hello admission rule of SPEC.md section 3.5, for Hellos whose binder verified."""

    def __init__(
        self,
        window_ns: int,
        capacity: int,
        per_source: int,
        future_ns: int = MAX_FUTURE_SKEW_NS,
    ) -> None:
        self.window_ns = window_ns
        self.future_ns = future_ns
        self.capacity = capacity
        self.per_source = per_source
        self.entries: list[tuple[bytes, int, str]] = []  # (binder, timestamp, source), arrivals
        self.floors: dict[str, int] = {}  # only for sources holding entries

    def held(self, source: str) -> int:
        return sum(1 for _, _, held_by in self.entries if held_by == source)

    def admit(self, binder: bytes, timestamp: int, now: int, source: str) -> tuple[str, str]:
        """``(outcome, reason)``; outcome "refused", "new" (decrypt C_I) or "seen" (a copy:
        answered from the remembered decryption, or decrypted again while that is pending)."""
        if timestamp < now - self.window_ns or timestamp > now + self.future_ns:
            return "refused", "outside the window"
        if timestamp <= self.floors.get(source, -1):
            return "refused", "at or below the source's floor"
        horizon = now - self.window_ns
        while self.entries and self.entries[0][1] < horizon:
            self._remove(0, horizon, raise_floor=False)
        if any(seen == binder for seen, _, _ in self.entries):
            return "seen", "binder remembered"
        sources = [held_by for _, _, held_by in self.entries]
        if sources.count(source) >= self.per_source:
            self._remove(sources.index(source), horizon, raise_floor=True)
        elif len(self.entries) >= self.capacity:
            most = max(sources.count(held_by) for held_by in sources)
            # The earliest entry of a source holding the most: that source's earliest entry, and
            # among such sources the one whose earliest entry arrived first.
            victim = next(i for i, held_by in enumerate(sources) if sources.count(held_by) == most)
            self._remove(victim, horizon, raise_floor=True)
        if timestamp <= self.floors.get(source, -1):
            return "refused", "its own earliest binder made room and raised its floor above it"
        self.entries.append((binder, timestamp, source))
        return "new", "admitted"

    def _remove(self, index: int, horizon: int, *, raise_floor: bool) -> None:
        _, timestamp, source = self.entries.pop(index)
        if self.held(source) == 0:
            self.floors.pop(source, None)
        elif raise_floor and timestamp >= horizon:
            self.floors[source] = max(self.floors.get(source, -1), timestamp)


def reference_reassembly_charges(fragment_sizes_: Sequence[int]) -> list[int]:
    """Budget in use after each fragment of one message (SPEC.md section 6): every fragment but
    the completing one is kept and charged its length plus the fixed overhead."""
    total, held, charged, out = sum(fragment_sizes_), 0, 0, []
    for size in fragment_sizes_:
        held += size
        if held == total:
            charged = 0
        else:
            if size < MIN_NONFINAL_FRAGMENT:
                raise SystemExit("reference: a conforming sender never sends this")
            charged += size + FRAGMENT_OVERHEAD
        out.append(charged)
    return out
