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

Acceptance happens in two passes: every signature of a message is verified first (``_acceptance``:
one failure rejects the whole message and the peer is disconnected; conflicting signed objects
are equivocation, refused and reported), then the message is applied here. A node never accepts
records of its own id from others.

Results, not events: the core is a component (a replicated store), not a protocol endpoint. It
has no peer, no output queue and no timers; each call answers its caller in full and at once.
:meth:`ReplicaCore.receive_updates_untrusted` therefore returns one plain value, an
:class:`~p2ptls.state._owners.Outcome` (what applying that one message did), which the session
that handed it the message turns into its events (``UpdatesApplied``, ``PushOn``, ...) and its
replies; changes for the store are pulled (:meth:`ReplicaCore.take_changes`), as output is under the
event convention (``ARCHITECTURE.md``). An event list would only make the session collect again what
one call already returned together.

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
Per owner, at most one certificate without a held batch is kept (the newest). What each member
session owes its peer is scheduled by ``_outbound``.

Persistence: the core records which keys, batches, certificates and marks changed; the I/O layer
takes them (:meth:`ReplicaCore.take_changes`, a consistent snapshot of current values) and writes
them in one SQLite transaction. The owner's own records are written (durable) before they are
signed, and a signed batch is written before its records are offered to anyone: the own mark
advertised to peers only moves once its batch is on disk.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .._bounded import FairTable
from .._errors import LocalProtocolError
from . import _crypto
from . import _wire as wire
from ._acceptance import Verdict, find_conflict, verify_certificates, verify_span
from ._owners import (
    BatchKey,
    Certified,
    ChangeSet,
    Entry,
    Equivocation,
    Journal,
    Outcome,
    OwnerId,
    OwnerState,
    Proof,
)
from ._wire import MAX_COUNTER, NO_VERSION, Version

__all__ = ["ChangeSet", "Equivocation", "Outcome", "OwnerId", "ReplicaCore"]


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
        self._journal = Journal()

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
            state.add_proof(Proof(batch))
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
            state.replace(entry, self._journal)
        for proof in [p for p in state.proofs.values() if p.live == 0]:
            state.drop_proof(proof, self._journal)
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
        self._journal.certs.add((self.own_id, signer.epoch))
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
            raise LocalProtocolError("begin_epoch first")
        if value is not None and len(value) > self.limits.max_value_size:
            raise ValueError(
                f"value of {len(value)} bytes exceeds max_value_size ({self.limits.max_value_size})"
            )
        record = wire.encode_record(self.own_id, self.signer.epoch, self.next_seq, key, value)
        self.next_seq += 1
        self._staged.append(record)
        self._overlay[key] = record
        self._journal.key(self.own_id, key)
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
            raise LocalProtocolError("begin_epoch first")
        ready = self._staged[: min(max_batch, self.unsigned_durable)]
        if not ready:
            return None
        hashes = [_crypto.record_hash(r.raw) for r in ready]
        batch = self.signer.sign_batch(self.own_id, ready[0].seq, hashes, self.network)
        del self._staged[: len(ready)]
        proof = Proof(batch)
        batch_key = (batch.epoch, batch.first_seq)
        dirty = self._journal.keys.setdefault(self.own_id, set())
        for record in ready:
            self._proof_of[record.version] = proof
            if self._overlay.get(record.key) is record:
                dirty.add(record.key)  # its stored row now names its batch
        self._pending_proofs[batch_key] = proof
        self._unpublished.append((proof, ready))
        self._journal.proofs.add((self.own_id, batch_key))
        self._signed = batch.last_version
        self._journal.owners.add(self.own_id)
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
            state.add_proof(proof)
            for record in records:
                state.replace(Entry(record, proof), self._journal)
                del self._proof_of[record.version]
                if self._overlay.get(record.key) is record:
                    del self._overlay[record.key]
            if proof.live == 0:
                state.drop_proof(proof, self._journal)
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
        owners, network = self.owners, self.network
        new_certs, conflicts = verify_certificates(
            updates.certificates, owners, network, self.own_id, outcome
        )
        verdicts = [
            verify_span(span, owners, network, new_certs, conflicts) for span in updates.spans
        ]
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
                self._journal.certs.add((owner, certified.certificate.epoch))
                self._journal.owners.add(owner)
                touched[owner] = None
        for span, verdict in zip(updates.spans, verdicts, strict=True):
            self._apply_span(span, verdict, outcome)
        for owner in touched:
            held = self.owners.get(owner)
            if held is not None:
                held.prune_certificates(self._journal)
        return outcome

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
        self._journal.owners.add(owner)
        return state

    def _apply_span(self, span: wire.Span, verdicts: list[Verdict], outcome: Outcome) -> None:
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
            conflict = find_conflict(state, batch)
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
                    state.add_proof(proof)
                    self._journal.proofs.add((owner, (batch.epoch, batch.first_seq)))
                state.replace(Entry(record, proof), self._journal)
                state.mark = record.version
                outcome.applied.append(record)
                self._journal.key(owner, record.key)
            outcome.sender_holds[owner] = max(
                outcome.sender_holds[owner], group.records[-1].version
            )
        if state.mark != start_mark:
            outcome.advanced[owner] = state.mark
            self._journal.owners.add(owner)

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
        self._journal.forget(owner)

    def span(self, owner: OwnerId, since: Version, budget: int) -> wire.Span | None:
        """Current records of ``owner`` newer than ``since`` (up to about ``budget`` bytes)."""
        state = self.owners.get(owner)
        return state.span(since, budget) if state is not None else None

    def certificate(self, owner: OwnerId, epoch: int) -> wire.EpochCertificate | None:
        state = self.owners.get(owner)
        return state.certificate(epoch) if state is not None else None

    # -- persistence ----------------------------------------------------------------------------

    def take_changes(self) -> ChangeSet:
        """Everything that changed since the last call, as current values. Clears the journal."""
        changes = ChangeSet()
        journal = self._journal
        if journal.forgotten:
            changes.owners_deleted = sorted(journal.forgotten)
            journal.forgotten = set()
        for owner, keys in journal.keys.items():
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
        for owner, batch_key in journal.proofs:
            proof = self.owners[owner].proofs.get(batch_key)
            if proof is None and owner == self.own_id:
                proof = self._pending_proofs.get(batch_key)
            if proof is not None:
                changes.proofs_put.append((owner, proof.batch))
            else:
                changes.proofs_deleted.append((owner, batch_key))
        for owner, epoch in journal.certs:
            certified = self.owners[owner].certs.get(epoch)
            if certified is not None:
                changes.certs_put.append(certified.certificate)
            else:
                changes.certs_deleted.append((owner, epoch))
        for owner in journal.owners | set(journal.keys):
            state = self.owners[owner]
            mark = self._signed if owner == self.own_id else state.mark
            changes.owners.append((owner, mark, state.public_key_der))
        if self.own_id in journal.keys:
            changes.durable_through = self.staged_version
        if self.own_id in journal.owners:
            changes.published_through = self._signed
        journal.clear()
        return changes
