"""Proof of authorship: a record with the batch and certificate that prove who wrote it."""

from __future__ import annotations

import attrs

from ..identity import NetworkKey, PeerId
from . import _crypto
from . import _wire as wire
from .errors import BadSignature, ForeignNetwork, StateProtocolError


@attrs.frozen
class VerifiedRecord:
    """A record whose signature chain checked out."""

    owner: PeerId
    key: str
    value: bytes | None
    epoch: int
    sequence: int


@attrs.frozen
class RecordProof:
    """A record's exact bytes, the signed batch that lists its hash and the owner's epoch
    certificate (which carries the owner's RSA public key). Anyone who knows the network id can
    check it offline with :meth:`verify`."""

    record: bytes = attrs.field(repr=False)
    batch: bytes = attrs.field(repr=False)
    certificate: bytes = attrs.field(repr=False)

    def verify(self, network: NetworkKey | bytes) -> VerifiedRecord:
        """Check the chain certificate -> batch -> record; return the record.

        ``network`` is the network key or the 32-byte state network id. Raises
        :class:`~p2ptls.state.errors.StateProtocolError` (a subclass such as
        :class:`~p2ptls.state.errors.BadSignature`) if anything fails.
        """
        network_id = _crypto.network_id(network) if isinstance(network, NetworkKey) else network
        certificate = wire.parse_certificate_untrusted(self.certificate)
        key, _owner = _crypto.verify_certificate(certificate, network_id)
        batch = wire.parse_batch_untrusted(self.batch)
        if batch.network_id != network_id:
            raise ForeignNetwork("batch of another state network")
        if batch.owner != certificate.owner or batch.epoch != certificate.epoch:
            raise BadSignature("batch and certificate name different owners or epochs")
        if not _crypto.verify_batch(key, batch):
            raise BadSignature("batch signature does not verify")
        record = wire.parse_record_untrusted(
            self.record, wire.Limits(max_value_size=wire.MAX_VALUE_LIMIT)
        )
        if record.owner != batch.owner or record.epoch != batch.epoch:
            raise StateProtocolError("record and batch name different owners or epochs")
        if not batch.first_seq <= record.seq <= batch.last_seq:
            raise StateProtocolError("record lies outside its batch")
        if _crypto.record_hash(record.raw) != batch.hash_at(record.seq):
            raise BadSignature("record does not match its signed hash")
        return VerifiedRecord(
            PeerId(record.owner), record.key, record.value, record.epoch, record.seq
        )
