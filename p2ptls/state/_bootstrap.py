"""Peer record files and bootstrap entries: how a node learns the members it joins through.

The handshake encrypts to the other node's public key, so a member to join through is always a
peer record (key and address), never an address alone: p2ptls has no first-contact fetch of a
record by address (that would be trust on first use). A record comes from a file (JSON of
:meth:`~p2ptls.PeerRecord.to_dict`, as a node writes its own at start and ``p2ptls identity
show`` prints one) or from a record's fields written inline; an address given beside it
overrides the record's. Every reader of such records (the facade's ``bootstrap_nodes``, the node
configuration file's ``[[bootstrap]]`` tables, ``p2ptls peers add``) goes through this module.

Trust: a record file's contents decide which key a node trusts, so a file that another user owns
or that group or others may write is refused (whoever can change it could substitute a key), and
so is a file over :data:`MAX_RECORD_FILE_BYTES`. The checks are made on the opened file.
"""

from __future__ import annotations

import json

from .._address import Address
from .._errors import PeerDatabaseError
from .._files import StrPath, read_own_file, write_private_file
from ..identity import PeerRecord
from .errors import StateError

MAX_RECORD_FILE_BYTES = 64 * 1024
"""The largest peer record file read (a record is under 1 KiB)."""


class BootstrapError(StateError):
    """A peer record file or a bootstrap entry cannot be turned into a usable peer record."""


def save_peer_record(path: StrPath, record: PeerRecord) -> None:
    """Write a peer record file (JSON of ``PeerRecord.to_dict()``, mode 0600, atomically)."""
    write_private_file(path, json.dumps(record.to_dict(), indent=2).encode() + b"\n")


def load_peer_record(path: StrPath) -> PeerRecord:
    """Read a peer record file. Refuses a file that another user owns or that group or others
    may write (whoever can replace it could substitute another key), an oversized file and a
    malformed record (:class:`BootstrapError`, naming the file)."""
    what = "peer record file"
    data = read_own_file(path, what, MAX_RECORD_FILE_BYTES, BootstrapError)
    return peer_record_from_json(data, f"{what} {str(path)!r}")


def peer_record_from_json(data: bytes, where: str) -> PeerRecord:
    """Parse a peer record's JSON (at most :data:`MAX_RECORD_FILE_BYTES`); ``where`` names its
    source in the :class:`BootstrapError` raised for anything else."""
    if len(data) > MAX_RECORD_FILE_BYTES:
        raise BootstrapError(f"{where} is too large")
    try:
        parsed = json.loads(data)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise BootstrapError(f"{where}: not a peer record: {exc}") from None
    return peer_record_from_dict(parsed, where)


def peer_record_from_dict(data: object, where: str) -> PeerRecord:
    """A peer record from its dict form (``PeerRecord.to_dict()``); refuses anything else, and a
    record whose peer id is not the hash of its key, with :class:`BootstrapError`."""
    if not isinstance(data, dict):
        raise BootstrapError(f"{where}: a peer record is a JSON object")
    try:
        return PeerRecord.from_dict(data)
    except PeerDatabaseError as exc:
        raise BootstrapError(f"{where}: {exc}") from None


def bootstrap_record(record: PeerRecord, address: Address | None) -> PeerRecord:
    """``record`` as a member to join through: with ``address`` (if given) as its address, and
    refused (:class:`BootstrapError`) if it is left without one."""
    if address is not None:
        record = record.with_address(*address)
    if record.address is None:
        raise BootstrapError(
            f"the peer record of {record.peer_id.short} has no address: give the entry one"
        )
    return record


__all__ = [
    "MAX_RECORD_FILE_BYTES",
    "BootstrapError",
    "bootstrap_record",
    "load_peer_record",
    "peer_record_from_dict",
    "peer_record_from_json",
    "save_peer_record",
]
