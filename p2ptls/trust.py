"""Who a host accepts, and replay protection for Hellos."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ._errors import PeerDatabaseError
from ._files import StrPath, read_private_file, write_private_file
from .identity import PeerId, PeerRecord

AdmissionPolicy = Callable[[PeerRecord], bool]
"""Called for an authenticated peer that holds the network key but is not known; True admits it."""


def deny_unknown(_record: PeerRecord) -> bool:
    """The default admission policy: only known peers may connect."""
    return False


def admit_network_members(_record: PeerRecord) -> bool:
    """Admit any peer that proved it holds the network key and its own private key."""
    return True


class KnownPeers:
    """The set of peers a host trusts, plus an admission policy for the others.

    Implements the handshake's trust policy. Admitted peers are remembered (``admitted``), so an
    application can persist them into its peer database.
    """

    def __init__(
        self, peers: Iterable[PeerRecord] = (), admission: AdmissionPolicy = deny_unknown
    ) -> None:
        self._peers: dict[PeerId, PeerRecord] = {}
        self.admission = admission
        self.admitted: list[PeerRecord] = []
        for record in peers:
            self.add(record)

    def add(self, record: PeerRecord) -> None:
        """Trust ``record`` (replacing any earlier record with the same id)."""
        self._peers[record.peer_id] = record

    def remove(self, peer_id: PeerId) -> None:
        self._peers.pop(peer_id, None)

    def get(self, peer_id: PeerId) -> PeerRecord | None:
        return self._peers.get(peer_id)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers

    def __iter__(self) -> Any:
        return iter(list(self._peers.values()))

    def __len__(self) -> int:
        return len(self._peers)

    def is_trusted(self, record: PeerRecord) -> bool:
        """Known, or admitted by the policy. Has no side effect: a handshake may still fail."""
        return record.peer_id in self._peers or self.admission(record)

    def note_authenticated(self, record: PeerRecord) -> None:
        """Called once a handshake with ``record`` completed; remembers admitted peers."""
        if record.peer_id not in self._peers:
            self._peers[record.peer_id] = record
            self.admitted.append(record)


class ReplayGuard:
    """The newest accepted Hello timestamp per initiator, optionally persisted to a file.

    ``accept`` only runs after the initiator's Finished verified, so forged Hellos never move it.
    With a ``path``, :meth:`save` writes the table atomically (mode 0600); the host calls it off the
    event loop after each accepted handshake.
    """

    def __init__(self, path: StrPath | None = None) -> None:
        self.path = path
        self._newest: dict[PeerId, int] = {}
        self._lock = threading.Lock()  # save() runs on a worker thread
        self.dirty = False
        if path is not None and Path(path).exists():
            raw = read_private_file(path, "replay state file")
            try:
                table = json.loads(raw)
                self._newest = {PeerId.from_hex(k): int(v) for k, v in table.items()}
            except (ValueError, AttributeError, TypeError):
                raise PeerDatabaseError(f"replay state file {str(path)!r} is malformed") from None

    def is_fresh(self, peer_id: PeerId, timestamp_ns: int) -> bool:
        return timestamp_ns > self._newest.get(peer_id, -1)

    def accept(self, peer_id: PeerId, timestamp_ns: int) -> None:
        if timestamp_ns > self._newest.get(peer_id, -1):
            self._newest[peer_id] = timestamp_ns
            self.dirty = True

    def newest(self, peer_id: PeerId) -> int | None:
        return self._newest.get(peer_id)

    def save(self) -> None:
        """Write the table if it changed (no-op without a path)."""
        if self.path is None:
            return
        with self._lock:
            if not self.dirty:
                return
            self.dirty = False
            snapshot = {k.hex(): v for k, v in self._newest.items()}
            write_private_file(self.path, json.dumps(snapshot, sort_keys=True).encode())
