"""What a node holds about each owner, and what replicating it reports (data only, sans-IO).

Theory of operation
-------------------
An :class:`OwnerState` is one owner's replica: per key its current :class:`Entry` (the record and
the :class:`Proof`, the verified batch that signs it), the batches held (each while ``live`` of its
records are current), the certificates of its epochs and its *mark* (the highest version held).
:class:`~p2ptls.state._replica.ReplicaCore` keeps one per owner and changes them; this module only
defines them and the reports a change makes: :class:`Outcome` (what one Updates message did),
:class:`Equivocation` (evidence of an owner signing two things for one version) and
:class:`ChangeSet` (what to write in the next transaction).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

import attrs
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import _wire as wire
from ._wire import NO_VERSION, Version

OwnerId = bytes
BatchKey = tuple[int, int]
"""``(epoch, first_seq)`` of a batch."""


@attrs.define(slots=True, eq=False)
class Proof:
    """A verified batch held because ``live`` of its records are current."""

    batch: wire.Batch
    live: int = 0


@attrs.define(slots=True, eq=False)
class Entry:
    """An owner's current record for one key; ``proof`` is ``None`` for an own unsigned record."""

    record: wire.Record
    proof: Proof | None


@attrs.define(slots=True, eq=False)
class Certified:
    certificate: wire.EpochCertificate
    key: Ed25519PublicKey


class Journal:
    """What changed since the store last wrote, by row: the core notes it, and
    :meth:`~p2ptls.state._replica.ReplicaCore.take_changes` turns it into a :class:`ChangeSet`."""

    def __init__(self) -> None:
        self.keys: dict[OwnerId, set[str]] = {}
        self.proofs: set[tuple[OwnerId, BatchKey]] = set()
        self.certs: set[tuple[OwnerId, int]] = set()
        self.owners: set[OwnerId] = set()
        self.forgotten: set[OwnerId] = set()

    def key(self, owner: OwnerId, key: str) -> None:
        self.keys.setdefault(owner, set()).add(key)

    def forget(self, owner: OwnerId) -> None:
        """``owner`` is dropped: none of its rows is written, all are deleted."""
        self.keys.pop(owner, None)
        self.proofs = {item for item in self.proofs if item[0] != owner}
        self.certs = {item for item in self.certs if item[0] != owner}
        self.owners.discard(owner)
        self.forgotten.add(owner)

    def clear(self) -> None:
        self.keys = {}
        self.proofs = set()
        self.certs = set()
        self.owners = set()


class OwnerState:
    """Everything held about one owner."""

    def __init__(self, owner: OwnerId, public_key_der: bytes) -> None:
        self.owner = owner
        self.public_key_der = public_key_der
        self.mark: Version = NO_VERSION
        self.entries: dict[str, Entry] = {}
        self.by_version: dict[Version, str] = {}
        """Version -> key of current records, in ascending version order."""
        self.proofs: dict[BatchKey, Proof] = {}
        self.firsts: dict[int, list[int]] = {}
        """Per epoch, the sorted first sequence numbers of the held batches."""
        self.certs: dict[int, Certified] = {}

    def find_overlapping(self, batch: wire.Batch) -> Iterator[Proof]:
        firsts = self.firsts.get(batch.epoch)
        if not firsts:
            return
        index = bisect.bisect_right(firsts, batch.last_seq)
        while index > 0:
            index -= 1
            proof = self.proofs[(batch.epoch, firsts[index])]
            if proof.batch.last_seq < batch.first_seq:
                # Held batches of one epoch never overlap each other, so none further left can.
                return
            yield proof

    def add_proof(self, proof: Proof) -> None:
        batch = proof.batch
        self.proofs[(batch.epoch, batch.first_seq)] = proof
        bisect.insort(self.firsts.setdefault(batch.epoch, []), batch.first_seq)

    def replace(self, entry: Entry, journal: Journal) -> None:
        """Make ``entry`` the current one of its key (a batch no record needs is dropped)."""
        key = entry.record.key
        old = self.entries.get(key)
        if old is not None:
            del self.by_version[old.record.version]
            if old.proof is not None:
                old.proof.live -= 1
                if old.proof.live == 0 and old.proof is not entry.proof:
                    self.drop_proof(old.proof, journal)
        self.entries[key] = entry
        self.by_version[entry.record.version] = key
        if entry.proof is not None:
            entry.proof.live += 1

    def drop_proof(self, proof: Proof, journal: Journal) -> None:
        """Forget a batch (and its epoch's certificate once no batch of that epoch is left,
        unless it is the newest)."""
        batch = proof.batch
        del self.proofs[(batch.epoch, batch.first_seq)]
        firsts = self.firsts[batch.epoch]
        firsts.remove(batch.first_seq)
        journal.proofs.add((self.owner, (batch.epoch, batch.first_seq)))
        if not firsts:
            del self.firsts[batch.epoch]
            newest = max(self.certs, default=0)
            if batch.epoch < newest and batch.epoch in self.certs:
                del self.certs[batch.epoch]
                journal.certs.add((self.owner, batch.epoch))

    def prune_certificates(self, journal: Journal) -> None:
        """Keep only the certificates of epochs with a held batch, and the newest one."""
        newest = max(self.certs, default=0)
        for epoch in [e for e in self.certs if e != newest and e not in self.firsts]:
            del self.certs[epoch]
            journal.certs.add((self.owner, epoch))

    def certificate(self, epoch: int) -> wire.EpochCertificate | None:
        certified = self.certs.get(epoch)
        return certified.certificate if certified is not None else None

    def span(self, since: Version, budget: int) -> wire.Span | None:
        """Current records newer than ``since`` (up to about ``budget`` bytes), with their
        batches."""
        if since >= self.mark:
            return None
        versions = []
        for version in reversed(self.by_version):
            if version <= since:
                break
            versions.append(version)
        versions.reverse()
        groups: list[wire.Group] = []
        current: list[wire.Record] = []
        current_batch: wire.Batch | None = None
        size = wire.SPAN_HEAD.size
        for version in versions:
            entry = self.entries[self.by_version[version]]
            proof = entry.proof
            assert proof is not None  # every published record is signed
            cost = 4 + len(entry.record.raw)
            if proof.batch is not current_batch:
                cost += len(proof.batch.body) + wire.ED25519_SIGNATURE_SIZE + 2
            if size + cost > budget and (current or groups):
                break
            if proof.batch is not current_batch:
                if current_batch is not None:
                    groups.append(wire.Group(current_batch, tuple(current)))
                current_batch, current = proof.batch, []
            current.append(entry.record)
            size += cost
        if current_batch is not None:
            groups.append(wire.Group(current_batch, tuple(current)))
        if not groups:
            return None
        return wire.Span(self.owner, since, tuple(groups))

    def values(self) -> dict[str, bytes]:
        return {
            key: e.record.value for key, e in self.entries.items() if e.record.value is not None
        }


@attrs.frozen
class Equivocation:
    """Evidence that an owner signed two different things for one (epoch, seq) or epoch."""

    owner: OwnerId
    epoch: int
    seq: int
    """The first conflicting sequence number (0 for two certificates of one epoch)."""
    held: bytes
    """What we hold: the batch (body | signature) or certificate."""
    offered: bytes
    """The conflicting batch or certificate that was refused."""


@attrs.define
class Outcome:
    """What applying one Updates message did."""

    applied: list[wire.Record] = attrs.Factory(list)
    """Records that became current, in order."""
    advanced: dict[OwnerId, Version] = attrs.Factory(dict)
    """Owners whose mark moved, with the new mark."""
    gaps: dict[OwnerId, Version] = attrs.Factory(dict)
    """Owners whose span started past our mark (or lacked a certificate): pull from this version."""
    sender_holds: dict[OwnerId, Version] = attrs.Factory(dict)
    """Versions the sender evidently holds (the end of each span it sent)."""
    equivocations: list[Equivocation] = attrs.Factory(list)
    stale: int = 0
    """Records ignored because we already hold that version or newer."""
    evicted_owners: list[OwnerId] = attrs.Factory(list)
    """Owners forgotten to make room for new ones (the owner table is full)."""
    own_proven: Version = NO_VERSION
    """The highest version of our own id that a signature in the message proves was used: the
    last record of a verified batch of ours, ``(epoch, 0)`` for a valid certificate of ours, or
    ``(epoch, MAX_COUNTER)`` for a certificate or batch of ours that conflicts with what we sign
    in that epoch (a copy of this node is running). Unsigned claims never count."""


@attrs.define
class ChangeSet:
    """A consistent snapshot of what changed since the last one, for one transaction."""

    records: list[tuple[OwnerId, str, wire.Record, BatchKey | None]] = attrs.Factory(list)
    proofs_put: list[tuple[OwnerId, wire.Batch]] = attrs.Factory(list)
    proofs_deleted: list[tuple[OwnerId, BatchKey]] = attrs.Factory(list)
    certs_put: list[wire.EpochCertificate] = attrs.Factory(list)
    certs_deleted: list[tuple[OwnerId, int]] = attrs.Factory(list)
    owners: list[tuple[OwnerId, Version, bytes]] = attrs.Factory(list)
    owners_deleted: list[OwnerId] = attrs.Factory(list)
    """Owners evicted from the owner table: every row of theirs goes (before the puts above)."""
    durable_through: Version | None = None
    """Highest own staged version this change set makes durable."""
    published_through: Version | None = None
    """Highest own signed version whose batch this change set makes durable."""

    @property
    def empty(self) -> bool:
        return not (
            self.records
            or self.proofs_put
            or self.proofs_deleted
            or self.certs_put
            or self.certs_deleted
            or self.owners
            or self.owners_deleted
        )
