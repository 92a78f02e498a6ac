"""Durable storage of a state node: one SQLite database file per node.

Theory of operation
-------------------
The database holds the node's own records, every replica it keeps (records with their batch
proofs and epoch certificates, and per owner the mark and RSA public key), the members it knows
and the last epoch it used. It is opened in WAL mode with an exclusive lock (one node process per
file) and written only in transactions (``BEGIN IMMEDIATE`` ... ``COMMIT``): a crash at any point
leaves the previous committed contents, never a mix. ``durability="full"`` (the default) syncs the
WAL on every commit, so a committed write survives power loss; ``"normal"`` survives a crash of
the process but may lose the last commits on power loss.

Every call is synchronous and short; the I/O layer runs them on a worker thread, one at a time
(one connection, serialised by a capacity limiter of one). Node ids and keys are only ever SQL
parameters, never paths or SQL text.

The store holds only what the replication core verified (or the node wrote itself), so loading
does not verify signatures again.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Literal

import attrs

from .._files import StrPath
from . import _wire as wire
from ._replica import ChangeSet, ReplicaCore
from .errors import StateProtocolError, StateStoreError

SCHEMA_VERSION = 1
Durability = Literal["full", "normal"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS owners (
    owner BLOB PRIMARY KEY, mark_epoch INTEGER NOT NULL, mark_seq INTEGER NOT NULL,
    public_key BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS certificates (
    owner BLOB NOT NULL, epoch INTEGER NOT NULL, certificate BLOB NOT NULL,
    PRIMARY KEY (owner, epoch));
CREATE TABLE IF NOT EXISTS batches (
    owner BLOB NOT NULL, epoch INTEGER NOT NULL, first_seq INTEGER NOT NULL, batch BLOB NOT NULL,
    PRIMARY KEY (owner, epoch, first_seq));
CREATE TABLE IF NOT EXISTS records (
    owner BLOB NOT NULL, key TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
    record BLOB NOT NULL, batch_epoch INTEGER, batch_first INTEGER,
    PRIMARY KEY (owner, key));
CREATE TABLE IF NOT EXISTS members (
    peer BLOB PRIMARY KEY, public_key BLOB NOT NULL, host TEXT, port INTEGER);
"""


@attrs.frozen
class StoredMember:
    """A member as remembered across restarts."""

    public_key_der: bytes = attrs.field(repr=False)
    address: wire.Address | None


class StateStore:
    """The SQLite database of one node.

    Args:
      path: the database file (created with mode 0600), or ``None`` for a private in-memory
        database (nothing survives the process).
      network: the state network id; a database of another network is refused.
      owner: this node's id; a database of another identity is refused.
      durability: ``"full"`` (sync every commit) or ``"normal"``.
    """

    def __init__(
        self,
        path: StrPath | None,
        *,
        network: bytes,
        owner: bytes,
        durability: Durability = "full",
    ) -> None:
        if durability not in ("full", "normal"):
            raise ValueError("durability must be 'full' or 'normal'")
        self.path = path
        self.persistent = path is not None
        if path is not None:
            _create_private(path)
        try:
            self._db = sqlite3.connect(
                ":memory:" if path is None else os.fspath(path),
                isolation_level=None,
                check_same_thread=False,
                timeout=0.1,  # exclusive locking: a busy database belongs to another process
            )
        except sqlite3.Error as exc:
            raise StateStoreError(f"cannot open the state database: {exc}") from None
        try:
            self._configure(durability)
            self._check_identity(network, owner)
        except sqlite3.OperationalError as exc:
            self._db.close()
            if "locked" in str(exc):
                raise StateStoreError(
                    "the state database is in use by another process (one node per file)"
                ) from None
            raise StateStoreError(f"cannot use the state database: {exc}") from None
        except BaseException:
            self._db.close()
            raise

    def _configure(self, durability: Durability) -> None:
        db = self._db
        if self.persistent:
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StateStoreError("the state database cannot use WAL mode")
        db.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
        with self.transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    def _check_identity(self, network: bytes, owner: bytes) -> None:
        with self.transaction():
            meta = dict(self._db.execute("SELECT name, value FROM meta").fetchall())
            if not meta:
                self._db.executemany(
                    "INSERT INTO meta (name, value) VALUES (?, ?)",
                    [
                        ("schema", SCHEMA_VERSION),
                        ("network", network),
                        ("owner", owner),
                        ("epoch", 0),
                    ],
                )
                return
        if meta.get("schema") != SCHEMA_VERSION:
            raise StateStoreError("the state database has an unknown schema version")
        if meta.get("network") != network:
            raise StateStoreError("the state database belongs to another state network")
        if meta.get("owner") != owner:
            raise StateStoreError("the state database belongs to another identity")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; any exception rolls back and propagates."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- epochs ---------------------------------------------------------------------------------

    @property
    def last_epoch(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE name = 'epoch'").fetchone()
        return int(row[0])

    def next_epoch(self, minimum: int = 1) -> int:
        """Durably record and return a new epoch above every earlier one (and >= ``minimum``)."""
        with self.transaction() as db:
            current = int(db.execute("SELECT value FROM meta WHERE name = 'epoch'").fetchone()[0])
            epoch = max(current + 1, minimum)
            if epoch >= wire.MAX_COUNTER:
                raise StateStoreError("epochs exhausted")
            db.execute("UPDATE meta SET value = ? WHERE name = 'epoch'", (epoch,))
        return epoch

    # -- loading --------------------------------------------------------------------------------

    def load_into(self, core: ReplicaCore) -> None:
        """Restore every owner (ourselves included) into ``core``."""
        limits = wire.Limits(max_value_size=wire.MAX_VALUE_LIMIT)
        db = self._db
        try:
            for owner, mark_epoch, mark_seq, public_key in db.execute(
                "SELECT owner, mark_epoch, mark_seq, public_key FROM owners"
            ).fetchall():
                certificates = [
                    wire.parse_certificate_untrusted(row[0])
                    for row in db.execute(
                        "SELECT certificate FROM certificates WHERE owner = ?", (owner,)
                    )
                ]
                batches = [
                    wire.parse_batch_untrusted(row[0])
                    for row in db.execute("SELECT batch FROM batches WHERE owner = ?", (owner,))
                ]
                rows = [
                    (
                        wire.parse_record_untrusted(record, limits),
                        (batch_epoch, batch_first) if batch_epoch is not None else None,
                    )
                    for record, batch_epoch, batch_first in db.execute(
                        "SELECT record, batch_epoch, batch_first FROM records WHERE owner = ?",
                        (owner,),
                    )
                ]
                core.restore_owner(
                    bytes(owner),
                    public_key_der=bytes(public_key),
                    mark=(mark_epoch, mark_seq),
                    certificates=certificates,
                    batches=batches,
                    rows=rows,
                )
        except (StateProtocolError, ValueError) as exc:
            raise StateStoreError(f"the state database is corrupt: {exc}") from None

    def load_members(self) -> list[StoredMember]:
        rows = self._db.execute("SELECT public_key, host, port FROM members").fetchall()
        return [
            StoredMember(bytes(der), (host, port) if host is not None else None)
            for der, host, port in rows
        ]

    # -- writing --------------------------------------------------------------------------------

    def apply(
        self, changes: ChangeSet, members: Sequence[tuple[bytes, StoredMember | None]] = ()
    ) -> None:
        """Write one change set (and member updates; ``None`` forgets a member) in one
        transaction."""
        with self.transaction() as db:
            if changes.owners_deleted:
                gone = [(owner,) for owner in changes.owners_deleted]
                for table in ("records", "batches", "certificates", "owners"):
                    db.executemany(f"DELETE FROM {table} WHERE owner = ?", gone)
            if changes.proofs_put:
                db.executemany(
                    "INSERT OR REPLACE INTO batches (owner, epoch, first_seq, batch) "
                    "VALUES (?, ?, ?, ?)",
                    [(o, b.epoch, b.first_seq, b.encode()) for o, b in changes.proofs_put],
                )
            if changes.proofs_deleted:
                db.executemany(
                    "DELETE FROM batches WHERE owner = ? AND epoch = ? AND first_seq = ?",
                    [(o, e, f) for o, (e, f) in changes.proofs_deleted],
                )
            if changes.certs_put:
                db.executemany(
                    "INSERT OR REPLACE INTO certificates (owner, epoch, certificate) "
                    "VALUES (?, ?, ?)",
                    [(c.owner, c.epoch, c.encode()) for c in changes.certs_put],
                )
            if changes.certs_deleted:
                db.executemany(
                    "DELETE FROM certificates WHERE owner = ? AND epoch = ?",
                    changes.certs_deleted,
                )
            if changes.records:
                db.executemany(
                    "INSERT OR REPLACE INTO records "
                    "(owner, key, epoch, seq, record, batch_epoch, batch_first) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            owner,
                            key,
                            record.epoch,
                            record.seq,
                            record.raw,
                            batch[0] if batch else None,
                            batch[1] if batch else None,
                        )
                        for owner, key, record, batch in changes.records
                    ],
                )
            if changes.owners:
                db.executemany(
                    "INSERT OR REPLACE INTO owners (owner, mark_epoch, mark_seq, public_key) "
                    "VALUES (?, ?, ?, ?)",
                    [(o, m[0], m[1], der) for o, m, der in changes.owners],
                )
            forgotten = [(peer,) for peer, m in members if m is None]
            if forgotten:
                db.executemany("DELETE FROM members WHERE peer = ?", forgotten)
            kept = [(peer, m) for peer, m in members if m is not None]
            if kept:
                db.executemany(
                    "INSERT OR REPLACE INTO members (peer, public_key, host, port) "
                    "VALUES (?, ?, ?, ?)",
                    [
                        (
                            peer,
                            m.public_key_der,
                            m.address[0] if m.address else None,
                            m.address[1] if m.address else None,
                        )
                        for peer, m in kept
                    ],
                )

    def close(self) -> None:
        self._db.close()


def _create_private(path: StrPath) -> None:
    """Create the database file with mode 0600 if it does not exist yet."""
    try:
        fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StateStoreError(f"cannot create the state database: {exc}") from None
    os.close(fd)
