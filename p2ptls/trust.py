"""Who a host accepts, and replay protection for Hellos."""

from __future__ import annotations

import enum
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs

from ._bounded import FairTable
from ._errors import PeerDatabaseError
from ._files import StrPath, read_private_file, write_private_file
from .identity import PeerId, PeerRecord

AdmissionPolicy = Callable[[PeerRecord], bool]
"""Called for a peer that is not known but holds the network key, with the public key it presented
(its id already checked against it). True lets the handshake go on; the peer is admitted only once
its Finished proves it holds the private key."""


def deny_unknown(_record: PeerRecord) -> bool:
    """The default admission policy: only known peers may connect."""
    return False


def admit_network_members(_record: PeerRecord) -> bool:
    """Admit any peer that proved it holds the network key and its own private key."""
    return True


DEFAULT_MAX_ADMITTED = 4096


class KnownPeers:
    """The set of peers a host trusts, plus an admission policy for the others.

    Implements the handshake's trust policy. Peers that the policy admitted (not configured ones)
    are remembered, most recently authenticated last, so an application can persist them into its
    peer database (``admitted``). Identities are cheap to make, so that memory is bounded: beyond
    ``max_admitted`` the admitted peer authenticated longest ago is forgotten (the policy still
    admits it again on its next handshake). Configured peers are never forgotten.
    """

    def __init__(
        self,
        peers: Iterable[PeerRecord] = (),
        admission: AdmissionPolicy = deny_unknown,
        *,
        max_admitted: int = DEFAULT_MAX_ADMITTED,
    ) -> None:
        self._peers: dict[PeerId, PeerRecord] = {}
        self.admission = admission
        # Each admitted peer is its own source: the table then evicts the oldest entry (LRU).
        self._admitted: FairTable[PeerId, PeerRecord, PeerId] = FairTable(max_admitted, 1)
        self._clock = 0
        self.removal_listeners: list[Callable[[PeerId], None]] = []
        """Called with the id of each peer :meth:`remove` removes (a security context drops its
        resumption tickets for it)."""
        for record in peers:
            self.add(record)

    @property
    def admitted(self) -> list[PeerRecord]:
        """Peers admitted by the policy and still remembered, oldest authentication first."""
        return [record for _, record in self._admitted.items()]

    def add(self, record: PeerRecord) -> None:
        """Trust ``record`` (replacing any earlier record with the same id)."""
        self._admitted.pop(record.peer_id)
        self._peers[record.peer_id] = record

    def remove(self, peer_id: PeerId) -> None:
        """Stop trusting ``peer_id``: its resumed handshakes are refused from now on, too."""
        self._peers.pop(peer_id, None)
        self._admitted.pop(peer_id)
        for listener in self.removal_listeners:
            listener(peer_id)

    def get(self, peer_id: PeerId) -> PeerRecord | None:
        return self._peers.get(peer_id) or self._admitted.get(peer_id)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers or peer_id in self._admitted

    def __iter__(self) -> Any:
        return iter([*self._peers.values(), *self.admitted])

    def __len__(self) -> int:
        return len(self._peers) + len(self._admitted)

    def is_trusted(self, record: PeerRecord) -> bool:
        """Known, or admitted by the policy. Has no side effect: a handshake may still fail."""
        return record.peer_id in self or self.admission(record)

    def note_authenticated(self, record: PeerRecord) -> None:
        """Called once a handshake with ``record`` completed; remembers admitted peers."""
        if record.peer_id in self._peers:
            return
        self._clock += 1
        self._admitted.put(record.peer_id, record, record.peer_id, now=self._clock)


DEFAULT_HELLO_WINDOW_S = 600.0
DEFAULT_MAX_FUTURE_SKEW_S = 60.0
DEFAULT_MAX_RECENT_HELLOS = 65536
# Each source (IPv4 address, IPv6 /64) may hold this share of the binder memory: 4096 by default.
RECENT_HELLOS_SHARE = 16
DEFAULT_SOURCE = "-"
"""The source of Hellos whose connection's origin is not known (streams made without a host)."""
# Handshakes from one initiator may complete out of order (several connections opened at once);
# timestamps this far below the newest accepted one are still taken, once each.
DEFAULT_REORDER_WINDOW_S = 60.0
MAX_REMEMBERED_PER_PEER = 1024


class Admission(enum.Enum):
    """What :meth:`ReplayGuard.admit_hello` decides about a Hello whose binder verified."""

    REFUSED = "refused"
    """Outside the window or at or below the floor: no reply, no RSA work."""
    NEW = "new"
    """Not seen before: decrypt ``C_I``, then :meth:`ReplayGuard.remember_decryption`."""
    SEEN = "seen"
    """A copy of a remembered Hello: answer it from :meth:`ReplayGuard.decryption_of` when that
    is known (no RSA work). A remembered copy is answered, not refused, so whoever races a copy
    of a genuine Hello in ahead of it cannot make the genuine one fail."""

    def __bool__(self) -> bool:
        """Only a refusal is false (``if guard.admit_hello(...)`` reads as "admitted")."""
        return self is not Admission.REFUSED


@attrs.frozen(repr=False)
class KnownDecryption:
    """The result of the RSA decryption of a remembered Hello's ``C_I`` (``None``: it failed)."""

    plaintext: bytes | None

    def __repr__(self) -> str:
        return "KnownDecryption(<secret>)"


@attrs.define(repr=False)
class _SeenHello:
    timestamp_ns: int
    decryption: KnownDecryption | None = None


class ReplayGuard:
    """Replay protection for Hellos.

    Two layers: before any RSA work, a Hello's coarse timestamp must lie within ``window_s`` of
    our clock, and a copy of a Hello seen before (same binder, bounded memory) is answered with
    the remembered decryption instead of a new RSA operation; after authentication, each precise
    timestamp of an initiator is accepted at most once and must be newer than its newest accepted
    one less a reorder window (that table is optionally persisted to a file).

    The memory of binders holds ``max_recent_hellos``, of which one source (the connection's IPv4
    address or IPv6 /64) may hold ``max_recent_per_source`` (by default 1/16, at least 2), with a
    floor per source (see :meth:`admit_hello`).

    ``accept`` only runs after the initiator's Finished verified, so forged Hellos never move it.
    With a ``path``, the newest timestamp per peer of its full handshakes is written atomically
    (mode 0600): the I/O layer takes a :meth:`snapshot` on its event loop and hands it to
    :meth:`write` on a worker thread. Resumed handshakes never make it dirty (see :meth:`accept`).
    """

    def __init__(
        self,
        path: StrPath | None = None,
        *,
        window_s: float = DEFAULT_HELLO_WINDOW_S,
        max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S,
        max_recent_hellos: int = DEFAULT_MAX_RECENT_HELLOS,
        max_recent_per_source: int | None = None,
    ) -> None:
        per_source = (
            max(2, max_recent_hellos // RECENT_HELLOS_SHARE)
            if max_recent_per_source is None
            else max_recent_per_source
        )
        if not 2 <= per_source <= max_recent_hellos:
            raise ValueError("need 2 <= max_recent_per_source <= max_recent_hellos")
        self.path = path
        self.window_ns = int(window_s * 1e9)
        self.max_future_skew_ns = int(max_future_skew_s * 1e9)
        self.max_recent_hellos = max_recent_hellos
        self.max_recent_per_source = per_source
        # Binders by source (fair eviction), and the same binders in arrival order (expiry).
        self._recent: FairTable[bytes, _SeenHello, str] = FairTable(max_recent_hellos, per_source)
        self._arrivals: OrderedDict[bytes, int] = OrderedDict()
        self._arrival_count = 0
        self._floors: dict[str, int] = {}
        self._newest: dict[PeerId, int] = {}
        self._durable: dict[PeerId, int] = {}
        """The newest timestamp per peer of the full handshakes: what the file holds."""
        self._accepted: dict[PeerId, set[int]] = {}
        self._floor: dict[PeerId, int] = {}
        self.reorder_window_ns = int(DEFAULT_REORDER_WINDOW_S * 1e9)
        self.dirty = False
        if path is not None and Path(path).exists():
            raw = read_private_file(path, "replay state file")
            try:
                table = json.loads(raw)
                self._newest = {PeerId.from_hex(k): int(v) for k, v in table.items()}
                self._durable = dict(self._newest)
                # After a restart the exact newest Hello stays refused; older ones in the reorder
                # window may cost an RSA decryption but can never complete (no Finish).
                self._accepted = {peer: {newest} for peer, newest in self._newest.items()}
            except (ValueError, AttributeError, TypeError):
                raise PeerDatabaseError(f"replay state file {str(path)!r} is malformed") from None

    def admit_hello(
        self, binder: bytes, timestamp_ns: int, now_ns: int, source: str = DEFAULT_SOURCE
    ) -> Admission:
        """Cheap replay check run before any RSA work, for Hellos whose binder verified.

        Refuses a timestamp more than ``window_s`` behind our clock or ``max_future_skew_s`` ahead
        of it, or at or below ``source``'s floor. A binder seen within the window (from any
        source) is :attr:`Admission.SEEN`. The memory of binders is bounded per source and in
        total, with fair eviction: a source holding its share forgets its own earliest binder, and
        a full memory forgets the earliest binder of the source holding the most. A forgotten
        binder raises only its own source's floor, so a flood from a few sources (only network-key
        holders can make binders) never refuses anyone else's Hellos. ``source`` is where the
        connection came from (the host passes the IPv4 address or IPv6 /64).
        """
        if (
            timestamp_ns < now_ns - self.window_ns
            or timestamp_ns > now_ns + self.max_future_skew_ns
            or timestamp_ns <= self._floors.get(source, -1)
        ):
            return Admission.REFUSED
        horizon = now_ns - self.window_ns
        arrivals = self._arrivals
        while arrivals:
            earliest, earliest_ts = next(iter(arrivals.items()))
            if earliest_ts >= horizon:
                break
            self._forget(earliest)
        if binder in self._recent:
            return Admission.SEEN
        self._arrival_count += 1
        evicted = self._recent.put(binder, _SeenHello(timestamp_ns), source, self._arrival_count)
        arrivals[binder] = timestamp_ns
        for gone in evicted:  # at most one: made room for this binder, which is not counted
            del arrivals[gone.key]
            newcomer = 1 if gone.source == source else 0
            self._after_removal(gone.source, gone.value.timestamp_ns, horizon, newcomer)
        if timestamp_ns <= self._floors.get(source, -1):
            self._forget(binder)
            return Admission.REFUSED
        return Admission.NEW

    def _forget(self, binder: bytes) -> None:
        """Remove a binder (expired, or just refused) from the memory."""
        source = self._recent.source_of(binder)
        self._recent.pop(binder)
        del self._arrivals[binder]
        if source is not None:
            self._after_removal(source, -1, 0)

    def _after_removal(
        self, source: str, timestamp_ns: int, horizon: int, not_counted: int = 0
    ) -> None:
        # A floor is kept only while its source holds binders, so there are never more floors
        # than sources in the memory. An evicted binder still inside the window raises its
        # source's floor (a source always keeps one when it evicts its own: per_source >= 2).
        if self._recent.count(source) == not_counted:
            self._floors.pop(source, None)
        elif timestamp_ns >= horizon:
            self._floors[source] = max(self._floors.get(source, -1), timestamp_ns)

    def floor_of(self, source: str = DEFAULT_SOURCE) -> int:
        """The floor of ``source``: its Hellos at or below it are refused (-1: none)."""
        return self._floors.get(source, -1)

    def decryption_of(self, binder: bytes) -> KnownDecryption | None:
        """The remembered decryption of an admitted Hello, ``None`` while unknown."""
        seen = self._recent.get(binder)
        return seen.decryption if seen is not None else None

    def remember_decryption(self, binder: bytes, plaintext: bytes | None) -> None:
        """Keep the RSA result of an admitted Hello, so that copies of it cost no RSA work.

        Kept as long as the binder (at most the window, 600 s by default): the plaintext holds
        ``k_I``, which with the network key gives the early secret but, without the initiator's
        X25519 key, no session key.
        """
        seen = self._recent.get(binder)
        if seen is not None and seen.decryption is None:
            seen.decryption = KnownDecryption(plaintext)

    def is_fresh(self, peer_id: PeerId, timestamp_ns: int) -> bool:
        """Newer than the newest accepted timestamp of ``peer_id`` less the reorder window, and
        never accepted before."""
        newest = self._newest.get(peer_id)
        if newest is None:
            return True
        if timestamp_ns <= max(newest - self.reorder_window_ns, self._floor.get(peer_id, -1)):
            return False
        return timestamp_ns not in self._accepted.get(peer_id, ())

    def accept(self, peer_id: PeerId, timestamp_ns: int, *, durable: bool = True) -> None:
        """Record an authenticated handshake's timestamp.

        ``durable=False`` (a resumed handshake) records it in memory only: it never makes the
        table :attr:`dirty`, so it costs no file write. What the file guards against, a Hello
        replayed after a restart, cannot happen with a ResumeHello: its ticket was sealed under
        keys that a restart forgets, so it gets a substitute reply. The file keeps, per peer, the
        newest timestamp of its full handshakes.
        """
        self._newest[peer_id] = max(timestamp_ns, self._newest.get(peer_id, timestamp_ns))
        newest = self._newest[peer_id]
        if durable and timestamp_ns > self._durable.get(peer_id, -1):
            self._durable[peer_id] = timestamp_ns
            self.dirty = True
        seen = self._accepted.setdefault(peer_id, set())
        seen.add(timestamp_ns)
        if len(seen) <= MAX_REMEMBERED_PER_PEER:
            # Timestamps that fell below the reorder window are refused by is_fresh anyway;
            # they go once the set is full, so that each accept does not rebuild it.
            return
        floor = newest - self.reorder_window_ns
        seen = {t for t in seen if t > floor}
        if len(seen) > MAX_REMEMBERED_PER_PEER:
            ordered = sorted(seen)
            forgotten = ordered[:-MAX_REMEMBERED_PER_PEER]
            seen = set(ordered[-MAX_REMEMBERED_PER_PEER:])
            # What is forgotten must stay refused: the peer's floor rises above it.
            self._floor[peer_id] = max(self._floor.get(peer_id, -1), forgotten[-1])
        self._accepted[peer_id] = seen

    def newest(self, peer_id: PeerId) -> int | None:
        return self._newest.get(peer_id)

    def snapshot(self) -> bytes | None:
        """The serialised table if it must be written (clears ``dirty``), else ``None``."""
        if self.path is None or not self.dirty:
            return None
        self.dirty = False
        return json.dumps({k.hex(): v for k, v in self._durable.items()}, sort_keys=True).encode()

    def write(self, snapshot: bytes) -> None:
        """Write a snapshot to ``path`` (safe to run on a worker thread)."""
        if self.path is not None:
            write_private_file(self.path, snapshot)

    def save(self) -> None:
        """Snapshot and write in one step (for synchronous callers)."""
        snapshot = self.snapshot()
        if snapshot is not None:
            self.write(snapshot)
