"""The facade's ``bootstrap_nodes`` entries, and their resolution to peer records.

An entry is, as in distributed-state-network, ``{"address": host, "port": port}``, or (because
the handshake needs the other node's public key) ``{"record": {...}}`` or ``{"record_file":
path}``, with an address and port that override the record's. An address alone is looked up among
the record files (``*.record.json``) of a record directory, which every facade node writes its own
record into when it starts: nodes that share a directory find each other by address alone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..._address import MAX_PORT, Address
from ..._files import check_own_path
from ...identity import PeerId, PeerRecord
from .._bootstrap import BootstrapError, bootstrap_record, load_peer_record, peer_record_from_dict

log = logging.getLogger("p2ptls.state.facade")

MAX_RECORD_FILES = 4096
"""Record files read from a record directory at most (the rest are not looked at)."""

RecordIndex = dict[Address, list[tuple[Path, PeerRecord]]]


@dataclass
class BootstrapNode:
    """One ``bootstrap_nodes`` entry: a peer record, a record file, or an address to look up.

    ``address``/``port``, when given with a record, override the record's address.
    """

    address: str | None = None
    port: int | None = None
    record: PeerRecord | None = None
    record_file: Path | None = None

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> BootstrapNode:
        """Parse ``{"address": ..., "port": ...}``, ``{"record": {...}}`` or
        ``{"record_file": "..."}`` (address and port may accompany either)."""
        unknown = set(data) - {"address", "port", "record", "record_file"}
        if unknown:
            raise BootstrapError(f"unknown bootstrap entry fields: {sorted(unknown)}")
        address = data.get("address")
        port = data.get("port")
        if address is not None and not isinstance(address, str):
            raise BootstrapError("bootstrap address must be a string")
        if port is not None and (
            not isinstance(port, int) or isinstance(port, bool) or not 0 < port <= MAX_PORT
        ):
            raise BootstrapError(f"bootstrap port must be an integer in 1..{MAX_PORT}")
        record = data.get("record")
        if record is not None and not isinstance(record, PeerRecord):
            record = peer_record_from_dict(record, "bootstrap record")
        record_file = data.get("record_file")
        if record_file is not None and not isinstance(record_file, str | os.PathLike):
            raise BootstrapError("bootstrap record_file must be a path")
        if record is None and record_file is None and (address is None or port is None):
            raise BootstrapError("a bootstrap entry needs a record, a record_file or an address")
        return BootstrapNode(
            address, port, record, Path(record_file) if record_file is not None else None
        )

    @staticmethod
    def parse(value: BootstrapNode | Mapping[str, Any]) -> BootstrapNode:
        """An entry as given in ``bootstrap_nodes``: a :class:`BootstrapNode` or its dict form."""
        if isinstance(value, BootstrapNode):
            return value
        if isinstance(value, Mapping):
            return BootstrapNode.from_dict(value)
        raise BootstrapError("a bootstrap entry is a mapping or a BootstrapNode")

    @property
    def override(self) -> Address | None:
        """The address given with the entry, if both host and port are."""
        if self.address is None or self.port is None:
            return None
        return self.address, self.port

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"address": self.address, "port": self.port}
        if self.record is not None:
            data["record"] = self.record.to_dict()
        if self.record_file is not None:
            data["record_file"] = str(self.record_file)
        return data


def resolve_bootstrap(
    entries: Sequence[BootstrapNode], record_dir: Path, own: PeerId | None = None
) -> list[PeerRecord]:
    """Turn bootstrap entries into peer records with addresses (see the module docs); ``own``
    (this node's id) is never found by address.

    Raises :class:`BootstrapError` for an entry that names no usable record.
    """
    records: list[PeerRecord] = []
    index: RecordIndex | None = None
    for entry in entries:
        record = entry.record
        if record is None and entry.record_file is not None:
            record = load_peer_record(entry.record_file)
        if record is None:
            if index is None:
                index = _record_index(record_dir, own)
            record = _by_address(entry, index, record_dir)
        records.append(bootstrap_record(record, entry.override))
    return records


def _by_address(entry: BootstrapNode, index: RecordIndex, record_dir: Path) -> PeerRecord:
    assert entry.address is not None and entry.port is not None
    found = index.get((_normal_host(entry.address), entry.port), [])
    if not found:
        raise BootstrapError(
            f"no peer record for {entry.address}:{entry.port} in {str(record_dir)!r}: "
            "the handshake needs the node's public key; give the entry a 'record' or "
            "'record_file' (its node writes one when it starts)"
        )
    if len({record.peer_id for _path, record in found}) > 1:
        names = ", ".join(sorted(path.name for path, _record in found))
        raise BootstrapError(
            f"several peer records in {str(record_dir)!r} claim {entry.address}:"
            f"{entry.port} ({names}); give the entry a 'record_file'"
        )
    return found[0][1]


def _record_index(record_dir: Path, own: PeerId | None) -> RecordIndex:
    """The record files of ``record_dir`` by the address in them (a file that cannot be used is
    skipped, with a warning)."""
    index: RecordIndex = {}
    if not record_dir.is_dir():
        return index
    # Whoever may add or remove files here could inject a record or hide the right one.
    check_own_path(record_dir, "record directory", BootstrapError)
    for count, path in enumerate(sorted(record_dir.glob("*.record.json"))):
        if count >= MAX_RECORD_FILES:
            break
        try:
            record = load_peer_record(path)
        except BootstrapError as exc:
            log.warning("skipping %s", exc)
            continue
        if record.address is None or record.peer_id == own:
            continue
        host, port = record.address
        index.setdefault((_normal_host(host), port), []).append((path, record))
    return index


def _normal_host(host: str) -> str:
    return "127.0.0.1" if host == "localhost" else host


__all__ = ["BootstrapNode", "resolve_bootstrap"]
