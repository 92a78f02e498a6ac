"""The sans-IO replication core: every owner's state, the acceptance rules, digests and deltas.

Theory of operation
-------------------
Each node *owns* one key-value map and holds a *replica* of every other owner's map. A write is a
:class:`~p2ptls.state._wire.Record` with a version ``(epoch, seq)``; an owner's map is, per key,
its record with the highest version (a deletion is a tombstone record, kept). Versions of one owner
only grow: the owner bumps its epoch at every start and numbers records 1, 2, ... within an
epoch, so no version is ever used twice.

An owner signs *batches*: a batch body lists the SHA-256 of the records of consecutive sequence
numbers of one epoch and carries an Ed25519 signature under the key the owner certified for that
epoch (see ``_crypto``). A node keeps, with every current record, the batch that proves it, so it
can hand the record on to anyone with its proof. A batch is forgotten when none of the records it
proves is current any more; a certificate when none of its epoch's batches is left and a newer
epoch is certified.

Replication is Scuttlebutt-style anti-entropy. A node's *mark* for an owner is the highest version
it holds; the records it holds are all of the owner's current records up to the mark. A *span*
carries every record current at the sender with version in ``(since, last]``, in ascending order;
superseded records are left out, so bursts to a few keys coalesce. The receiver applies a span only
when ``since <= its mark`` (otherwise it would skip records and asks for a pull from its mark),
and of a span only records with version above its mark (the rule "strictly greater than what is
stored for that owner"); its mark then becomes the last version applied.

Acceptance: every certificate is checked (network id, ``SHA-256(key) == owner``, RSA-PSS) and every
batch signature and record hash verified *before* anything of a message is applied; one failure
rejects the whole message with :class:`~p2ptls.state.errors.BadSignature` (the peer is then
disconnected). A batch whose records conflict with a batch already held for the same (owner,
epoch, seq), or a second valid certificate for an (owner, epoch), is *equivocation*: refused and
reported. A node never accepts records of its own id from others.

Trust: what a peer *claims* (a version in a digest, a span's ``since``, an owner it knows) never
makes this core act beyond a bounded, cheap reply to that peer. Only signatures prove anything:
records are applied once their batch verifies; our own id counts as used at a version above our
mark (our store was lost or rolled back: :meth:`ReplicaCore.note_own_proof`) only when a
certificate signed by our own RSA key, or a batch signed under one, shows it. A claim about our
own id only earns a pull of the one record that would prove it (:meth:`ReplicaCore.own_pull`).

Bounds: at most ``max_owners`` owners are held (ourselves included). Those that are not
``protected`` (the node's members are) live in a :class:`~p2ptls._bounded.FairTable`, each charged
to the peer whose message brought its first certificate; when the bound is reached a newcomer
evicts the oldest owner of the peer that brought the most. Members are never evicted: if only
they are held, another owner is refused, while a member still gets a place.
Per owner, at most one certificate without a held batch is kept (the newest). Per connection,
:class:`Outbound` keeps beliefs, outstanding pulls and certificates sent for at most
``max_owners`` owners each (owners held always find room).

Persistence: the core records which keys, batches, certificates and marks changed; the I/O layer
takes them (:meth:`ReplicaCore.take_changes`, a consistent snapshot of current values) and writes
them in one SQLite transaction. The owner's own records are written (durable) before they are
signed, and a signed batch is written before its records are offered to anyone: the own mark
advertised to peers only moves once its batch is on disk.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator

import attrs
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .._bounded import FairTable
from . import _crypto
from . import _wire as wire
from ._wire import MAX_COUNTER, NO_VERSION, Version
from .errors import BadSignature, ForeignNetwork

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


@attrs.define(slots=True)
class _Verified:
    """Pass-one result for a group: verified, or refused as equivocation."""

    refused: Equivocation | None = None
    known: bool = False


class ReplicaCore:
    """All owners' states held by one node, with its own writes. No I/O, no clock.

    Args:
      network: the state network id.
      own_id: this node's peer id digest.
      own_public_key_der: this node's RSA public key.
      limits: parsing bounds.
      max_owners: most owners held (ourselves included); a newcomer evicts an owner that is not
        protected, fairly (see the module's theory of operation).
    """

    STORED_SOURCE = b"stored"
    """The source that owners loaded from the store are charged to."""

    def __init__(
        self,
        network: bytes,
        own_id: OwnerId,
        own_public_key_der: bytes,
        limits: wire.Limits | None = None,
        *,
        max_owners: int = 4096,
    ) -> None:
        self.network = network
        self.own_id = own_id
        self.limits = limits or wire.Limits()
        self.max_owners = max_owners
        self.owners: dict[OwnerId, OwnerState] = {own_id: OwnerState(own_id, own_public_key_der)}
        self.own = self.owners[own_id]
        self.protected: set[OwnerId] = set()
        """Owners never evicted (the node's verified members); see :meth:`protect`."""
        self._charged: FairTable[OwnerId, None, bytes] = FairTable(
            max(1, max_owners - 1), max(1, max_owners - 1)
        )
        """Every other owner, charged to the peer that brought it."""
        self._tick = 0
        """A logical clock for the owner table (it orders entries; this core reads no clock)."""
        self._forgotten: set[OwnerId] = set()
        self._own_handled: Version = NO_VERSION
        """The highest proven version of our own id already answered by a new epoch."""
        self.signer: _crypto.EpochSigner | None = None
        self.next_seq = 1
        # Own writes not yet published live in an overlay over ``self.own`` (which, like every
        # replica, holds only published records): a record is staged, made durable, signed into
        # a batch, the batch made durable, and only then published into ``self.own``.
        self._overlay: dict[str, wire.Record] = {}
        """Per key, the newest own record not yet published."""
        self._staged: list[wire.Record] = []
        """Own records not yet signed, consecutive sequence numbers (superseded ones too)."""
        self._unpublished: list[tuple[Proof, list[wire.Record]]] = []
        """Signed batches (with all their records) waiting to be durable."""
        self._pending_proofs: dict[BatchKey, Proof] = {}
        self._proof_of: dict[Version, Proof] = {}
        self._reissue: list[wire.Record] = []
        """Own records found stored but never signed, to issue again in the next epoch."""
        self._durable: Version = NO_VERSION
        self._signed: Version = NO_VERSION
        self._dirty_keys: dict[OwnerId, set[str]] = {}
        self._dirty_proofs: set[tuple[OwnerId, BatchKey]] = set()
        self._dirty_certs: set[tuple[OwnerId, int]] = set()
        self._dirty_owners: set[OwnerId] = set()

    # -- reading --------------------------------------------------------------------------------

    def current(self, owner: OwnerId, key: str) -> tuple[wire.Record, bool] | None:
        """The current record for ``key`` of ``owner`` and whether it is signed yet."""
        if owner == self.own_id:
            record = self._overlay.get(key)
            if record is not None:
                return record, record.version in self._proof_of
        state = self.owners.get(owner)
        if state is None:
            return None
        entry = state.entries.get(key)
        return (entry.record, entry.proof is not None) if entry is not None else None

    def get(self, owner: OwnerId, key: str) -> wire.Record | None:
        """The current record for ``key`` of ``owner`` (a tombstone has ``value is None``)."""
        found = self.current(owner, key)
        return found[0] if found is not None else None

    def values(self, owner: OwnerId) -> dict[str, bytes]:
        """Every live key of ``owner`` (our own unpublished writes included)."""
        state = self.owners.get(owner)
        values = state.values() if state is not None else {}
        if owner == self.own_id:
            for key, record in self._overlay.items():
                if record.value is None:
                    values.pop(key, None)
                else:
                    values[key] = record.value
        return values

    def keys_with(self, key: str) -> Iterator[tuple[OwnerId, bytes]]:
        """``(owner, value)`` for every owner holding a live value for ``key``."""
        for owner in self.owners:
            record = self.get(owner, key)
            if record is not None and record.value is not None:
                yield owner, record.value

    def mark(self, owner: OwnerId) -> Version:
        state = self.owners.get(owner)
        return state.mark if state is not None else NO_VERSION

    @property
    def epoch(self) -> int:
        return self.signer.epoch if self.signer is not None else 0

    # -- loading from storage -------------------------------------------------------------------

    def restore_owner(
        self,
        owner: OwnerId,
        *,
        public_key_der: bytes,
        mark: Version,
        certificates: Iterable[wire.EpochCertificate],
        batches: Iterable[wire.Batch],
        rows: Iterable[tuple[wire.Record, BatchKey | None]],
    ) -> None:
        """Load one owner as stored (the store only holds what this core verified or wrote)."""
        state = self.owners.get(owner)
        if state is None:
            state = self._owner_for(owner, public_key_der, self.STORED_SOURCE)
            if state is None:
                return
        state.mark = mark
        for certificate in certificates:
            key = Ed25519PublicKey.from_public_bytes(certificate.signing_key)
            state.certs[certificate.epoch] = Certified(certificate, key)
        for batch in batches:
            self._add_proof(state, Proof(batch))
        loaded = []
        for record, batch_key in rows:
            if batch_key is None or record.version > mark:
                if owner != self.own_id:
                    raise ValueError("stored replica record without its batch")
                self._reissue.append(record)
                self._durable = max(self._durable, record.version)
                continue
            proof = state.proofs.get(batch_key)
            if proof is None:
                raise ValueError("stored record refers to a missing batch")
            loaded.append(Entry(record, proof))
        for entry in sorted(loaded, key=lambda e: e.record.version):
            self._replace(state, entry)
        for proof in [p for p in state.proofs.values() if p.live == 0]:
            self._drop_proof(state, proof)
        if owner == self.own_id:
            self._signed = mark
            self._durable = max(self._durable, mark)

    # -- own writes -----------------------------------------------------------------------------

    def begin_epoch(self, signer: _crypto.EpochSigner, *, reissue_all: bool = False) -> None:
        """Start writing in ``signer.epoch`` (already durably recorded as used).

        Own records that were stored but never signed are issued again in the new epoch (their
        old versions were never published); with ``reissue_all`` every own key is (used when
        other nodes hold our id at versions we do not know: our store was lost or rolled back).
        """
        if signer.epoch <= max(self.own.certs, default=0) or signer.epoch <= self._signed[0]:
            raise ValueError("a new epoch must exceed every earlier one")
        self.signer = signer
        self.next_seq = 1
        state = self.own
        state.certs[signer.epoch] = Certified(
            signer.certificate,
            Ed25519PublicKey.from_public_bytes(signer.certificate.signing_key),
        )
        self._dirty_certs.add((self.own_id, signer.epoch))
        reissue = self._reissue + self._staged
        if reissue_all:
            latest = {e.record.key: e.record for e in state.entries.values()}
            latest.update(self._overlay)
            reissue = list(latest.values())
        self._reissue = []
        self._staged = []
        for record in sorted(reissue, key=lambda r: r.version):
            self.stage(record.key, record.value)

    def stage(self, key: str, value: bytes | None) -> wire.Record:
        """Record an own write in memory (not yet durable, not yet signed)."""
        if self.signer is None:
            raise RuntimeError("begin_epoch first")
        if value is not None and len(value) > self.limits.max_value_size:
            raise ValueError(
                f"value of {len(value)} bytes exceeds max_value_size ({self.limits.max_value_size})"
            )
        record = wire.encode_record(self.own_id, self.signer.epoch, self.next_seq, key, value)
        self.next_seq += 1
        self._staged.append(record)
        self._overlay[key] = record
        self._dirty_keys.setdefault(self.own_id, set()).add(key)
        return record

    @property
    def staged_version(self) -> Version:
        """The newest own version written in memory."""
        return self._staged[-1].version if self._staged else self._signed

    @property
    def durable_version(self) -> Version:
        """The newest own version the store holds."""
        return self._durable

    @property
    def unsigned_durable(self) -> int:
        """Own records that are durable but not signed yet."""
        count = 0
        for record in self._staged:
            if record.version > self._durable:
                break
            count += 1
        return count

    def note_durable(self, version: Version) -> None:
        """The store holds own records up to ``version``."""
        self._durable = max(self._durable, version)

    def sign_pending(self, max_batch: int) -> wire.Batch | None:
        """Sign the oldest durable unsigned own records (at most ``max_batch``) as one batch.

        The batch is published (offered to others) by :meth:`publish` once it is durable.
        """
        if self.signer is None:
            raise RuntimeError("begin_epoch first")
        ready = self._staged[: min(max_batch, self.unsigned_durable)]
        if not ready:
            return None
        hashes = [_crypto.record_hash(r.raw) for r in ready]
        batch = self.signer.sign_batch(self.own_id, ready[0].seq, hashes, self.network)
        del self._staged[: len(ready)]
        proof = Proof(batch)
        batch_key = (batch.epoch, batch.first_seq)
        dirty = self._dirty_keys.setdefault(self.own_id, set())
        for record in ready:
            self._proof_of[record.version] = proof
            if self._overlay.get(record.key) is record:
                dirty.add(record.key)  # its stored row now names its batch
        self._pending_proofs[batch_key] = proof
        self._unpublished.append((proof, ready))
        self._dirty_proofs.add((self.own_id, batch_key))
        self._signed = batch.last_version
        self._dirty_owners.add(self.own_id)
        return batch

    def publish(self, version: Version) -> bool:
        """Batches up to ``version`` are durable: make them part of our published state (what
        digests announce and spans carry). True if the published mark moved."""
        state = self.own
        moved = False
        while self._unpublished and self._unpublished[0][0].batch.last_version <= version:
            proof, records = self._unpublished.pop(0)
            batch = proof.batch
            del self._pending_proofs[(batch.epoch, batch.first_seq)]
            self._add_proof(state, proof)
            for record in records:
                self._replace(state, Entry(record, proof))
                del self._proof_of[record.version]
                if self._overlay.get(record.key) is record:
                    del self._overlay[record.key]
            if proof.live == 0:
                self._drop_proof(state, proof)
            state.mark = batch.last_version
            moved = True
        return moved

    # -- receiving ------------------------------------------------------------------------------

    def receive_updates_untrusted(self, updates: wire.Updates, source: bytes = b"") -> Outcome:
        """Verify a parsed Updates message, then apply it.

        ``source`` is the peer that sent it (new owners are charged to it). Raises
        :class:`BadSignature` or :class:`ForeignNetwork` (nothing applied) if any certificate,
        batch signature or record hash fails; the caller disconnects the sender.
        """
        outcome = Outcome()
        new_certs, conflicts = self._verify_certificates(updates.certificates, outcome)
        verdicts = [self._verify_span(span, new_certs, conflicts) for span in updates.spans]
        # Pass two: nothing failed, apply.
        touched: dict[OwnerId, None] = {}
        for certified in new_certs.values():
            owner = certified.certificate.owner
            if owner == self.own_id:
                continue
            state = self._owner_for(owner, certified.certificate.public_key_der, source, outcome)
            if state is None:
                continue
            if certified.certificate.epoch not in state.certs:
                state.certs[certified.certificate.epoch] = certified
                self._dirty_certs.add((owner, certified.certificate.epoch))
                self._dirty_owners.add(owner)
                touched[owner] = None
        for span, verdict in zip(updates.spans, verdicts, strict=True):
            self._apply_span(span, verdict, outcome)
        for owner in touched:
            held = self.owners.get(owner)
            if held is not None:
                self._prune_certificates(held)
        return outcome

    def _prune_certificates(self, state: OwnerState) -> None:
        """Keep only the certificates of epochs with a held batch, and the newest one."""
        newest = max(state.certs, default=0)
        for epoch in [e for e in state.certs if e != newest and e not in state.firsts]:
            del state.certs[epoch]
            self._dirty_certs.add((state.owner, epoch))

    def _verify_certificates(
        self, certificates: Iterable[wire.EpochCertificate], outcome: Outcome
    ) -> tuple[dict[tuple[OwnerId, int], Certified], dict[tuple[OwnerId, int], Certified]]:
        new: dict[tuple[OwnerId, int], Certified] = {}
        conflicts: dict[tuple[OwnerId, int], Certified] = {}
        for certificate in certificates:
            where = (certificate.owner, certificate.epoch)
            state = self.owners.get(certificate.owner)
            held = state.certs.get(certificate.epoch) if state is not None else None
            if held is None:
                held = new.get(where)
            if held is not None and held.certificate == certificate:
                continue  # already verified
            if certificate.network_id != self.network:
                raise ForeignNetwork("certificate of another state network")
            key, _record = _crypto.verify_certificate(certificate, self.network)
            if certificate.owner == self.own_id:
                # Signed by our own RSA key: proof that this epoch was used (by us, earlier, or
                # by a copy of us if it conflicts with the certificate we hold for it).
                seq = MAX_COUNTER if held is not None else 0
                outcome.own_proven = max(outcome.own_proven, (certificate.epoch, seq))
            if held is not None:
                # Two valid certificates for one (owner, epoch): the owner equivocated.
                conflicts[where] = Certified(certificate, key)
                outcome.equivocations.append(
                    Equivocation(
                        certificate.owner,
                        certificate.epoch,
                        0,
                        held.certificate.encode(),
                        certificate.encode(),
                    )
                )
                continue
            new[where] = Certified(certificate, key)
        return new, conflicts

    def _verify_span(
        self,
        span: wire.Span,
        new_certs: dict[tuple[OwnerId, int], Certified],
        conflicts: dict[tuple[OwnerId, int], Certified],
    ) -> list[_Verified]:
        state = self.owners.get(span.owner)
        verdicts = []
        for group in span.groups:
            batch = group.batch
            if batch.network_id != self.network:
                raise ForeignNetwork("batch of another state network")
            verdict = _Verified()
            held_proof = state.proofs.get((batch.epoch, batch.first_seq)) if state else None
            if held_proof is not None and held_proof.batch == batch:
                verdict.known = True
            else:
                certified = state.certs.get(batch.epoch) if state is not None else None
                if certified is None:
                    certified = new_certs.get((span.owner, batch.epoch))
                if certified is None:
                    verdicts.append(verdict)  # no certificate: handled as a gap when applying
                    continue
                if not _crypto.verify_batch(certified.key, batch):
                    other = conflicts.get((span.owner, batch.epoch))
                    if other is None or not _crypto.verify_batch(other.key, batch):
                        raise BadSignature("batch signature does not verify")
                    verdict.refused = Equivocation(
                        span.owner,
                        batch.epoch,
                        batch.first_seq,
                        certified.certificate.encode(),
                        batch.encode(),
                    )
                verdict.known = True
            for record in group.records:
                if _crypto.record_hash(record.raw) != batch.hash_at(record.seq):
                    raise BadSignature("record does not match its signed hash")
            verdicts.append(verdict)
        return verdicts

    def _owner_for(
        self,
        owner: OwnerId,
        public_key_der: bytes,
        source: bytes,
        outcome: Outcome | None = None,
    ) -> OwnerState | None:
        """The state of ``owner``, made (charged to ``source``) if new. When ``max_owners`` are
        held, an owner that is not protected is evicted fairly to make room; ``None`` if every
        owner held is protected and ``owner`` is not (members still get a place)."""
        state = self.owners.get(owner)
        if state is not None:
            return state
        while len(self.owners) >= self.max_owners:
            evicted = self._charged.evict_one()
            if evicted is None:
                break
            self._forget(evicted.key)
            if outcome is not None:
                outcome.evicted_owners.append(evicted.key)
        if owner not in self.protected:
            if len(self.owners) >= self.max_owners:
                return None
            self._tick += 1
            self._charged.put(owner, None, source, self._tick)
        state = self.owners[owner] = OwnerState(owner, public_key_der)
        self._dirty_owners.add(owner)
        return state

    def _apply_span(self, span: wire.Span, verdicts: list[_Verified], outcome: Outcome) -> None:
        owner = span.owner
        if owner == self.own_id:
            # Never applied; only what a signature proves counts (the span's versions are claims).
            for group, verdict in zip(span.groups, verdicts, strict=True):
                if verdict.refused is not None:
                    outcome.own_proven = max(outcome.own_proven, (group.batch.epoch, MAX_COUNTER))
                elif verdict.known:
                    outcome.own_proven = max(outcome.own_proven, group.records[-1].version)
            outcome.stale += sum(len(g.records) for g in span.groups)
            return
        state = self.owners.get(owner)
        if state is None:
            # Unknown owner and no certificate for it in the message: ask for everything.
            outcome.gaps[owner] = NO_VERSION
            return
        if span.since > state.mark:
            outcome.gaps[owner] = state.mark
            return
        # The sender holds at least what it sends us.
        outcome.sender_holds[owner] = max(outcome.sender_holds.get(owner, NO_VERSION), span.since)
        start_mark = state.mark
        for group, verdict in zip(span.groups, verdicts, strict=True):
            batch = group.batch
            if verdict.refused is not None:
                outcome.equivocations.append(verdict.refused)
                break
            if not verdict.known:
                if group.records[-1].version > state.mark:
                    outcome.gaps[owner] = state.mark
                    break
                outcome.stale += len(group.records)
                continue
            conflict = self._conflict(state, batch)
            if conflict is not None:
                outcome.equivocations.append(conflict)
                break
            proof = state.proofs.get((batch.epoch, batch.first_seq))
            for record in group.records:
                if record.version <= state.mark:
                    outcome.stale += 1
                    continue
                if proof is None:
                    proof = Proof(batch)
                    self._add_proof(state, proof)
                    self._dirty_proofs.add((owner, (batch.epoch, batch.first_seq)))
                self._replace(state, Entry(record, proof))
                state.mark = record.version
                outcome.applied.append(record)
                self._dirty_keys.setdefault(owner, set()).add(record.key)
            outcome.sender_holds[owner] = max(
                outcome.sender_holds[owner], group.records[-1].version
            )
        if state.mark != start_mark:
            outcome.advanced[owner] = state.mark
            self._dirty_owners.add(owner)

    def _conflict(self, state: OwnerState, batch: wire.Batch) -> Equivocation | None:
        for held in state.find_overlapping(batch):
            if held.batch == batch:
                continue
            low = max(held.batch.first_seq, batch.first_seq)
            high = min(held.batch.last_seq, batch.last_seq)
            for seq in range(low, high + 1):
                if held.batch.hash_at(seq) != batch.hash_at(seq):
                    return Equivocation(
                        state.owner, batch.epoch, seq, held.batch.encode(), batch.encode()
                    )
        return None

    # -- bookkeeping ----------------------------------------------------------------------------

    def _add_proof(self, state: OwnerState, proof: Proof) -> None:
        batch = proof.batch
        state.proofs[(batch.epoch, batch.first_seq)] = proof
        bisect.insort(state.firsts.setdefault(batch.epoch, []), batch.first_seq)

    def _replace(self, state: OwnerState, entry: Entry) -> None:
        key = entry.record.key
        old = state.entries.get(key)
        if old is not None:
            del state.by_version[old.record.version]
            if old.proof is not None:
                old.proof.live -= 1
                if old.proof.live == 0 and old.proof is not entry.proof:
                    self._drop_proof(state, old.proof)
        state.entries[key] = entry
        state.by_version[entry.record.version] = key
        if entry.proof is not None:
            entry.proof.live += 1

    def _drop_proof(self, state: OwnerState, proof: Proof) -> None:
        batch = proof.batch
        del state.proofs[(batch.epoch, batch.first_seq)]
        firsts = state.firsts[batch.epoch]
        firsts.remove(batch.first_seq)
        self._dirty_proofs.add((state.owner, (batch.epoch, batch.first_seq)))
        if not firsts:
            del state.firsts[batch.epoch]
            newest = max(state.certs, default=0)
            if batch.epoch < newest and batch.epoch in state.certs:
                del state.certs[batch.epoch]
                self._dirty_certs.add((state.owner, batch.epoch))

    # -- anti-entropy ---------------------------------------------------------------------------

    def digest(self) -> wire.Digest:
        """Per owner, the highest version we hold (own: the highest published)."""
        entries = tuple(
            (owner, state.mark)
            for owner, state in sorted(self.owners.items())
            if state.mark != NO_VERSION
        )
        return wire.Digest(entries)

    def wanted(self, digest: wire.Digest) -> list[tuple[OwnerId, Version]]:
        """What to pull after a peer's digest (its versions are claims: a pull is all they earn).

        Unknown owners are asked for from ``(0, 0)``, at most ``max_owners`` per digest; our own
        id only as :meth:`own_pull` says.
        """
        pulls = []
        room = self._charged.capacity
        for owner, version in digest.entries:
            if owner == self.own_id:
                since = self.own_pull(version)
                if since is not None:
                    pulls.append((owner, since))
                continue
            state = self.owners.get(owner)
            if state is None:
                if room <= 0:
                    continue
                room -= 1
                pulls.append((owner, NO_VERSION))
            elif version > state.mark:
                pulls.append((owner, state.mark))
        return pulls

    def own_pull(self, claimed: Version) -> Version | None:
        """Where to pull our own id from when a peer *claims* to hold it at ``claimed``.

        A claim proves nothing (anyone can write any number), so it never moves our epoch. If it
        is above what we published, we ask for the record at ``claimed`` only (a pull from just
        below it): if the peer really holds it, it comes with its batch and certificate, signed
        by our own key, and that proves our store lost history (:meth:`note_own_proof`).
        """
        if claimed <= max(self.own.mark, self._own_handled):
            return None
        epoch, seq = claimed
        if seq > 1:
            return max(self.own.mark, (epoch, seq - 1))
        return self.own.mark

    def note_own_proof(self, proven: Version) -> bool:
        """A signature proved our id was used at ``proven`` (see :attr:`Outcome.own_proven`).

        True when that lies beyond what we published and has not been answered yet: our store
        lost history (a restored backup, a deleted file) or a copy of this node runs. The remedy
        is a new epoch above both ``proven`` and the current one, with every own key issued
        again (:meth:`begin_epoch` with ``reissue_all``). Each proof is answered once.
        """
        if proven <= self.own.mark or proven <= self._own_handled:
            return False
        self._own_handled = proven
        return True

    def protect(self, owner: OwnerId) -> None:
        """Never evict ``owner`` (a verified member) from the owner table."""
        self.protected.add(owner)
        self._charged.pop(owner)

    def unprotect(self, owner: OwnerId) -> None:
        """``owner`` is no longer a member: if held, charge it to itself like any other owner."""
        self.protected.discard(owner)
        if owner in self.owners and owner != self.own_id and owner not in self._charged:
            self._tick += 1
            for evicted in self._charged.put(owner, None, owner, self._tick):
                self._forget(evicted.key)

    @property
    def charged_owners(self) -> int:
        """Owners held that may be evicted (not ourselves, not protected)."""
        return len(self._charged)

    def _forget(self, owner: OwnerId) -> None:
        """Drop everything held about ``owner``; the store deletes its rows at the next commit."""
        del self.owners[owner]
        self._dirty_keys.pop(owner, None)
        self._dirty_proofs = {item for item in self._dirty_proofs if item[0] != owner}
        self._dirty_certs = {item for item in self._dirty_certs if item[0] != owner}
        self._dirty_owners.discard(owner)
        self._forgotten.add(owner)

    def span(self, owner: OwnerId, since: Version, budget: int) -> wire.Span | None:
        """Current records of ``owner`` newer than ``since`` (up to about ``budget`` bytes)."""
        state = self.owners.get(owner)
        if state is None or since >= state.mark:
            return None
        versions = []
        for version in reversed(state.by_version):
            if version <= since:
                break
            versions.append(version)
        versions.reverse()
        groups: list[wire.Group] = []
        current: list[wire.Record] = []
        current_batch: wire.Batch | None = None
        size = wire.SPAN_HEAD.size
        for version in versions:
            entry = state.entries[state.by_version[version]]
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
        return wire.Span(owner, since, tuple(groups))

    def certificate(self, owner: OwnerId, epoch: int) -> wire.EpochCertificate | None:
        state = self.owners.get(owner)
        certified = state.certs.get(epoch) if state is not None else None
        return certified.certificate if certified is not None else None

    # -- persistence ----------------------------------------------------------------------------

    def take_changes(self) -> ChangeSet:
        """Everything that changed since the last call, as current values. Clears the journal."""
        changes = ChangeSet()
        if self._forgotten:
            changes.owners_deleted = sorted(self._forgotten)
            self._forgotten = set()
        for owner, keys in self._dirty_keys.items():
            state = self.owners[owner]
            for key in keys:
                record = self._overlay.get(key) if owner == self.own_id else None
                if record is not None:
                    proof = self._proof_of.get(record.version)
                else:
                    entry = state.entries[key]
                    record, proof = entry.record, entry.proof
                batch_key = (proof.batch.epoch, proof.batch.first_seq) if proof else None
                changes.records.append((owner, key, record, batch_key))
        for owner, batch_key in self._dirty_proofs:
            proof = self.owners[owner].proofs.get(batch_key)
            if proof is None and owner == self.own_id:
                proof = self._pending_proofs.get(batch_key)
            if proof is not None:
                changes.proofs_put.append((owner, proof.batch))
            else:
                changes.proofs_deleted.append((owner, batch_key))
        for owner, epoch in self._dirty_certs:
            certified = self.owners[owner].certs.get(epoch)
            if certified is not None:
                changes.certs_put.append(certified.certificate)
            else:
                changes.certs_deleted.append((owner, epoch))
        for owner in self._dirty_owners | set(self._dirty_keys):
            state = self.owners[owner]
            mark = self._signed if owner == self.own_id else state.mark
            changes.owners.append((owner, mark, state.public_key_der))
        if self.own_id in self._dirty_keys:
            changes.durable_through = self.staged_version
        if self.own_id in self._dirty_owners:
            changes.published_through = self._signed
        self._dirty_keys = {}
        self._dirty_proofs = set()
        self._dirty_certs = set()
        self._dirty_owners = set()
        return changes


class Outbound:
    """What one connection still owes its peer: a sans-IO scheduler of spans.

    ``belief`` is what we think the peer holds per owner (from its digest, its pulls and what we
    sent; an owner missing from its digest counts as ``(0, 0)``, so owners it has never heard of
    reach it too). An owner is *dirty* when we hold more than the belief; :meth:`next_updates`
    builds one Updates message, taking dirty owners in turn (round robin), so one owner's flood
    never holds back another's updates. Certificates are included the first time a connection
    needs them, and again after the peer pulls that owner.
    """

    def __init__(self, core: ReplicaCore, budget: int = 1024 * 1024) -> None:
        self.core = core
        self.budget = budget
        self.belief: dict[OwnerId, Version] = {}
        self.dirty: dict[OwnerId, None] = {}
        self.sent_certs: dict[OwnerId, set[int]] = {}
        """Per owner, the epochs whose certificate this connection already carried."""
        self.pulls_outstanding: dict[OwnerId, Version] = {}
        self.digest_received = False
        """Once the peer's digest arrived, an owner missing from it is one it holds nothing of."""
        self.announced: dict[OwnerId, Version] = {}
        """What our last digest to the peer said."""
        self.max_tracked = core.max_owners
        """Most owners with a belief, with an outstanding pull, or with certificates sent (the
        peer's claims cannot grow any of these past it; owners held always find room)."""

    def _believe(self, owner: OwnerId, version: Version) -> bool:
        """Remember what the peer holds of ``owner``; False if there is no room for it."""
        belief = self.belief
        if owner not in belief and len(belief) >= self.max_tracked:
            held = self.core.owners
            if owner not in held:
                return False
            # Make room for an owner we hold: forget a belief about one we do not.
            stale = next((other for other in belief if other not in held), None)
            if stale is None:
                return False
            del belief[stale]
        belief[owner] = version
        return True

    def note_digest_sent(self, digest: wire.Digest) -> None:
        """We sent ``digest``: the peer pulls every owner where it shows more than it holds."""
        self.announced = dict(digest.entries)

    def note_digest(self, digest: wire.Digest) -> None:
        """The peer's digest: what it holds. Push what it lacks and will not pull."""
        self.digest_received = True
        theirs = dict(digest.entries)
        for owner, version in theirs.items():
            self._believe(owner, max(self.belief.get(owner, NO_VERSION), version))
        for owner in self.core.owners:
            if self.announced.get(owner, NO_VERSION) > theirs.get(owner, NO_VERSION):
                continue  # our digest showed it more: it pulls (no duplicate push)
            self._check(owner)  # e.g. what changed here after our digest went out

    def note_pull(self, pull: wire.Pull) -> None:
        for owner, since in pull.entries:
            if owner not in self.core.owners:
                continue  # nothing to send; a belief about it would only take room
            self._believe(owner, since)
            self.sent_certs.pop(owner, None)
            self._check(owner)

    def note_received(self, outcome: Outcome) -> None:
        for owner, version in outcome.sender_holds.items():
            self._believe(owner, max(self.belief.get(owner, NO_VERSION), version))
            self.pulls_outstanding.pop(owner, None)
        for owner in outcome.advanced:
            self.dirty.pop(owner, None)
            self._check(owner)

    def note_changed(self, owner: OwnerId) -> None:
        """We hold more of ``owner``; push it if we know what the peer holds."""
        self._check(owner)

    def want_pull(self, owner: OwnerId, since: Version) -> bool:
        """Whether a pull of ``owner`` from ``since`` should be sent (not already asked)."""
        if self.pulls_outstanding.get(owner) == since:
            return False
        if owner not in self.pulls_outstanding and len(self.pulls_outstanding) >= self.max_tracked:
            return False
        self.pulls_outstanding[owner] = since
        return True

    def pulls_to_send(
        self, pulls: Iterable[tuple[OwnerId, Version]]
    ) -> list[tuple[OwnerId, Version]]:
        """The pulls a digest asked for, noted as outstanding (within the bound)."""
        sent = []
        for owner, since in pulls:
            if owner in self.pulls_outstanding or len(self.pulls_outstanding) < self.max_tracked:
                self.pulls_outstanding[owner] = since
                sent.append((owner, since))
        return sent

    def _check(self, owner: OwnerId) -> None:
        belief = self.belief.get(owner)
        if belief is None and self.digest_received and owner in self.core.owners:
            belief = NO_VERSION
            self._believe(owner, belief)
        if belief is not None and self.core.mark(owner) > belief:
            self.dirty[owner] = None

    def next_updates(self) -> wire.Updates | None:
        """The next message to send, or ``None`` if the peer is up to date."""
        spans: list[wire.Span] = []
        certificates: list[wire.EpochCertificate] = []
        remaining = self.budget
        for owner in list(self.dirty):
            if remaining <= 0:
                break
            del self.dirty[owner]
            span = self.core.span(owner, self.belief.get(owner, NO_VERSION), remaining)
            if span is None:
                continue
            if owner not in self.sent_certs and len(self.sent_certs) >= self.max_tracked:
                held = self.core.owners
                self.sent_certs = {o: e for o, e in self.sent_certs.items() if o in held}
            sent = self.sent_certs.setdefault(owner, set())
            for group in span.groups:
                if group.batch.epoch not in sent:
                    certificate = self.core.certificate(owner, group.batch.epoch)
                    if certificate is not None:
                        certificates.append(certificate)
                        remaining -= len(certificate.public_key_der) + 600
                    sent.add(group.batch.epoch)
            spans.append(span)
            remaining -= span.encoded_size()
            if self._believe(owner, span.last_version):
                self._check(owner)  # more left: back of the queue
        if not spans:
            return None
        return wire.Updates(tuple(certificates), tuple(spans))
