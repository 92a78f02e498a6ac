"""Pass one of accepting an Updates message: verify every signature before anything is applied.

Theory of operation
-------------------
Every certificate is checked (network id, ``SHA-256(key) == owner``, RSA-PSS) and every batch
signature and record hash verified *before* anything of a message is applied; one failure rejects
the whole message with :class:`~p2ptls.state.errors.BadSignature` (or
:class:`~p2ptls.state.errors.ForeignNetwork`), and the peer is then disconnected. A batch whose
records conflict with a batch already held for the same (owner, epoch, seq), or a second valid
certificate for an (owner, epoch), is *equivocation*: refused and reported, not an error of the
relay that carried it. A group whose epoch has no certificate at all is left unverified: the
receiver pulls instead. Pass two (applying) is :meth:`~p2ptls.state._replica.ReplicaCore.
receive_updates_untrusted`. These functions read the owner table and change nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from . import _crypto
from . import _wire as wire
from ._owners import Certified, Equivocation, Outcome, OwnerId, OwnerState
from ._wire import MAX_COUNTER
from .errors import BadSignature, ForeignNetwork

Certificates = dict[tuple[OwnerId, int], Certified]
"""Verified certificates by ``(owner, epoch)``."""


@attrs.define(slots=True)
class Verdict:
    """Pass-one result for a group: verified, or refused as equivocation."""

    refused: Equivocation | None = None
    known: bool = False


def verify_certificates(
    certificates: Iterable[wire.EpochCertificate],
    owners: Mapping[OwnerId, OwnerState],
    network: bytes,
    own_id: OwnerId,
    outcome: Outcome,
) -> tuple[Certificates, Certificates]:
    """Verify every certificate not held yet. Returns the new valid ones and those that conflict
    with a held one (reported as equivocation in ``outcome``); raises on any invalid one."""
    new: Certificates = {}
    conflicts: Certificates = {}
    for certificate in certificates:
        where = (certificate.owner, certificate.epoch)
        state = owners.get(certificate.owner)
        held = state.certs.get(certificate.epoch) if state is not None else None
        if held is None:
            held = new.get(where)
        if held is not None and held.certificate == certificate:
            continue  # already verified
        if certificate.network_id != network:
            raise ForeignNetwork("certificate of another state network")
        key, _record = _crypto.verify_certificate(certificate, network)
        if certificate.owner == own_id:
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


def verify_span(
    span: wire.Span,
    owners: Mapping[OwnerId, OwnerState],
    network: bytes,
    new_certs: Certificates,
    conflicts: Certificates,
) -> list[Verdict]:
    """Verify each group of ``span`` (its batch signature and record hashes); raises on any
    failure. A group whose epoch has no certificate is left unverified (a gap, not an error)."""
    state = owners.get(span.owner)
    verdicts = []
    for group in span.groups:
        batch = group.batch
        if batch.network_id != network:
            raise ForeignNetwork("batch of another state network")
        verdict = Verdict()
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


def find_conflict(state: OwnerState, batch: wire.Batch) -> Equivocation | None:
    """A held batch of the same epoch that signs another record at some sequence number."""
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
