"""Checks that an earlier hand-made mutation run showed no test would miss.

Each test here is built so that only the one check it names can refuse the input: removing or
weakening that check makes the test fail (every one was verified by applying the mutation by hand).
The inputs reach the code the way a peer's would: through the wire parsers and the sans-IO cores.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import p2ptls
from p2ptls import PeerDatabase, ProtocolError, ReassemblyBudget, TruncatedError
from p2ptls import _wire as stream_wire
from p2ptls._connection import EndOfStream, HandshakeState, MessageReceived
from p2ptls._records import RecordSealer
from p2ptls.peerdb import MAGIC, NONCE_SIZE, SALT_SIZE
from p2ptls.sllp import LossReason, Message, MessagesLost, SllpConfig
from p2ptls.sllp import _wire as sllp_wire
from p2ptls.sllp.testing import FragmentFeeder, session_pair
from p2ptls.state import RecordProof, _crypto
from p2ptls.state import _wire as state_wire
from p2ptls.state._replica import ReplicaCore
from p2ptls.state._store import StateStore
from p2ptls.state.errors import BadSignature
from p2ptls.state.testing import Forger
from tests.hostile_support import established_pair, forged_sealer

PSK = p2ptls.NetworkKey(bytes(range(32)))
NETWORK = _crypto.network_id(PSK)


# -- state: a certificate whose owner id is not the hash of the key that signed it ----------------


def owner_mismatch_certificate(
    signer: p2ptls.Identity, claimed: p2ptls.Identity, signing_key: Ed25519PrivateKey
) -> state_wire.EpochCertificate:
    """A certificate naming ``claimed`` as its owner, carrying ``signer``'s RSA key and signed by
    ``signer`` over exactly these fields: its signature is valid, only the owner is wrong."""
    raw_key = signing_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    owner = claimed.peer_id.digest
    unsigned = state_wire.EpochCertificate(NETWORK, owner, 1, raw_key, b"", b"")
    signature = signer.sign_pss(_crypto.CERT_CONTEXT + unsigned.body)
    certificate = state_wire.EpochCertificate(
        NETWORK, owner, 1, raw_key, signature, signer.record.public_key_der
    )
    # As a peer would send it: through its encoding and the parser.
    return state_wire.parse_certificate_untrusted(certificate.encode())


def test_the_forged_owner_certificate_is_validly_signed(identities) -> None:
    """Control: the signature checks out under the carried key, so the test below can only pass
    because of the owner-hash check."""
    alice, bob = identities[1], identities[2]
    certificate = owner_mismatch_certificate(alice, bob, Ed25519PrivateKey.generate())
    alice.record.public_key.verify(
        certificate.signature,
        _crypto.CERT_CONTEXT + certificate.body,
        _crypto._pss(),
        hashes.SHA256(),
    )  # raises if it does not verify
    honest = owner_mismatch_certificate(alice, alice, Ed25519PrivateKey.generate())
    _crypto.verify_certificate(honest, NETWORK)  # the same construction, owner right: accepted


def test_a_validly_signed_certificate_for_another_owner_is_refused(identities) -> None:
    alice, bob = identities[1], identities[2]
    certificate = owner_mismatch_certificate(alice, bob, Ed25519PrivateKey.generate())
    with pytest.raises(BadSignature, match="not the owner's"):
        _crypto.verify_certificate(certificate, NETWORK)


def test_records_under_a_validly_signed_certificate_for_another_owner_are_refused(
    identities,
) -> None:
    replica, alice, bob = identities[0], identities[1], identities[2]
    core = ReplicaCore(NETWORK, replica.peer_id.digest, replica.record.public_key_der)
    core.begin_epoch(_crypto.EpochSigner.create(replica, NETWORK, 1))
    core.take_changes()
    # Alice certifies an Ed25519 key of her own as bob's, then signs records as bob with it.
    key = Ed25519PrivateKey.generate()
    certificate = owner_mismatch_certificate(alice, bob, key)
    mallory = Forger(alice, NETWORK)
    mallory.signer = _crypto.EpochSigner(key, certificate)
    records = mallory.records([("k", b"forged")], owner=bob.peer_id.digest)
    span = mallory.span(records, batch=mallory.batch(records, owner=bob.peer_id.digest))
    updates = state_wire.parse_message_untrusted(mallory.updates(span).encode(), core.limits)
    assert isinstance(updates, state_wire.Updates)
    with pytest.raises(BadSignature):
        core.receive_updates_untrusted(updates)
    assert core.get(bob.peer_id.digest, "k") is None
    assert bob.peer_id.digest not in core.owners
    # The same chain as an offline proof of authorship is refused too.
    proof = RecordProof(records[0].raw, span.groups[0].batch.encode(), certificate.encode())
    with pytest.raises(BadSignature):
        proof.verify(NETWORK)


@pytest.mark.parametrize("claim", ["another owner", "another epoch"])
def test_a_proof_whose_batch_and_certificate_disagree_is_refused(identities, claim: str) -> None:
    """Alice's honest certificate and a batch signed with its key, but naming bob as the owner
    (or another epoch): every signature verifies, only the cross-check refuses the proof."""
    alice, bob = identities[1], identities[2]
    seed = bytes(range(32))
    certified = Forger(alice, NETWORK, epoch=1, seed=seed)
    signing = certified if claim == "another owner" else Forger(alice, NETWORK, epoch=2, seed=seed)
    owner = bob.peer_id.digest if claim == "another owner" else alice.peer_id.digest
    records = signing.records([("k", b"forged")], owner=owner)
    batch = signing.batch(records, owner=owner)
    assert _crypto.verify_batch(
        _crypto.verify_certificate(certified.certificate, NETWORK)[0], batch
    )
    proof = RecordProof(records[0].raw, batch.encode(), certified.certificate.encode())
    with pytest.raises(BadSignature, match="different owners or epochs"):
        proof.verify(NETWORK)


# -- secure stream: a CLOSE record inside an unfinished message -----------------------------------


def message_start(sealer: RecordSealer, total: int, fragment: bytes) -> bytes:
    return sealer.seal(stream_wire.MESSAGE_START, stream_wire.MESSAGE_LENGTH.pack(total) + fragment)


def message_continue(sealer: RecordSealer, fragment: bytes) -> bytes:
    return sealer.seal(stream_wire.MESSAGE_CONTINUE, fragment)


def close_record(sealer: RecordSealer, reason: int) -> bytes:
    return sealer.seal(stream_wire.CLOSE, bytes([reason]))


@pytest.mark.parametrize("reason", [stream_wire.CLOSE_END_OF_STREAM, stream_wire.CLOSE_GOODBYE])
def test_a_close_record_inside_an_unfinished_message_fails_the_connection(reason: int) -> None:
    budget = ReassemblyBudget()
    initiator, responder = established_pair(budget=budget)
    sealer = forged_sealer(initiator)
    assert responder.receive_data_untrusted(message_start(sealer, 1000, bytes(600))) == []
    assert budget.in_use > 0  # the first fragment is held: a message is open
    with pytest.raises(ProtocolError, match="close inside an unfinished message"):
        responder.receive_data_untrusted(close_record(sealer, reason))
    assert responder.state is HandshakeState.FAILED and not responder.eof_received
    assert budget.in_use == 0


@pytest.mark.parametrize("reason", [stream_wire.CLOSE_END_OF_STREAM, stream_wire.CLOSE_GOODBYE])
def test_a_close_record_after_a_finished_message_ends_the_stream(reason: int) -> None:
    """Control for the test above: the same records, the message completed first."""
    initiator, responder = established_pair()
    sealer = forged_sealer(initiator)
    events = responder.receive_data_untrusted(
        message_start(sealer, 1000, bytes(600))
        + message_continue(sealer, bytes(400))
        + close_record(sealer, reason)
    )
    assert events == [MessageReceived(bytes(1000)), EndOfStream(reason)]
    assert responder.eof_received
    responder.receive_eof()  # a clean end: no truncation


MALFORMED_FRAGMENT_SEQUENCES = {
    "continue with no message open": (
        lambda s: [message_continue(s, bytes(300))],
        "no message in progress",
    ),
    "empty first fragment": (lambda s: [message_start(s, 300, b"")], "empty message fragment"),
    "empty later fragment": (
        lambda s: [message_start(s, 1000, bytes(600)), message_continue(s, b"")],
        "empty message fragment",
    ),
    "tiny non-final fragment": (
        lambda s: [message_start(s, 1000, bytes(10))],
        "below the minimum record size",
    ),
    "zero-length message with a fragment": (
        lambda s: [message_start(s, 0, b"x")],
        "overruns its message",
    ),
    "close inside a message": (
        lambda s: [
            message_start(s, 1000, bytes(600)),
            close_record(s, stream_wire.CLOSE_END_OF_STREAM),
        ],
        "close inside an unfinished message",
    ),
}


@pytest.mark.parametrize("plan", list(MALFORMED_FRAGMENT_SEQUENCES))
def test_each_malformed_fragment_sequence_is_refused_by_its_own_check(plan: str) -> None:
    """Each sequence gets a sealer of its own, so every record authenticates and the error is
    the framing check's (not a failed authentication from a sealer that ran ahead)."""
    make_records, why = MALFORMED_FRAGMENT_SEQUENCES[plan]
    budget = ReassemblyBudget()
    initiator, responder = established_pair(budget=budget)
    records = make_records(forged_sealer(initiator))
    with pytest.raises(ProtocolError, match=why) as info:
        for record in records:
            assert responder.receive_data_untrusted(record) == []
        responder.receive_eof()
    assert not isinstance(info.value, TruncatedError)
    assert responder.state is HandshakeState.FAILED and budget.in_use == 0


# -- SLLP: the reassembly byte cap ----------------------------------------------------------------

FRAGMENT = sllp_wire.DEFAULT_DATAGRAM_PAYLOAD - sllp_wire.OVERHEAD  # payload bytes per fragment
BYTE_CAP = 64 * 1024


class CappedFeeder(FragmentFeeder):
    """A feeder that checks the receiver stays within ``BYTE_CAP`` after every datagram."""

    def __call__(self, message_id: int, index: int, count: int, size: int) -> None:
        super().__call__(message_id, index, count, size)
        assert self.receiver.statistics().reassembly_bytes <= BYTE_CAP


def test_the_reassembly_byte_cap_evicts_as_many_messages_as_it_takes() -> None:
    """Multi-fragment incomplete messages reach ``max_reassembly_bytes`` far below the message
    cap; the cap holds exactly (full is allowed, one byte more is not), and a fragment that
    needs more room than the oldest message frees evicts the next oldest too."""
    config = SllpConfig(
        max_message_size=BYTE_CAP,
        max_reassembly_bytes=BYTE_CAP,
        max_reassembly_messages=1000,
        reassembly_timeout=60.0,
    )
    a, b = session_pair(config)
    send = CappedFeeder(a, b)
    count = -(-BYTE_CAP // FRAGMENT)  # fragments of a maximum-size message (58)
    assert FRAGMENT == 1149 and count == 58
    send(0, 1, 2, 1)  # message 0: only its 1-byte last fragment
    for index in range(count - 2):  # message 1: all but its last two fragments
        send(1, index, count, FRAGMENT)
    send(2, 0, 2, FRAGMENT)  # message 2: its first fragment
    held = 1 + (count - 2) * FRAGMENT + FRAGMENT
    last = BYTE_CAP - held
    assert 0 < last < FRAGMENT
    send(3, count - 1, count, last)  # message 3's last fragment: exactly full
    stats = b.statistics()
    assert (stats.reassembly_bytes, stats.in_reassembly, stats.lost) == (BYTE_CAP, 4, 0)
    # One more fragment: message 0 frees one byte, not enough; message 1 goes too.
    send(4, 0, 2, FRAGMENT)
    stats = b.statistics()
    assert stats.reassembly_bytes == FRAGMENT + last + FRAGMENT
    assert stats.in_reassembly == 3 and stats.lost == 2
    events = b.take_events()
    assert [e for e in events if isinstance(e, MessagesLost)] == [
        MessagesLost(0, 1, LossReason.EVICTED),
        MessagesLost(1, 1, LossReason.EVICTED),
    ]
    assert not any(isinstance(e, Message) for e in events)
    # The messages still held complete normally.
    send(2, 1, 2, 7)
    delivered = [e for e in b.take_events() if isinstance(e, Message)]
    assert [(m.message_id, m.data) for m in delivered] == [(2, bytes([2]) * (FRAGMENT + 7))]


# -- peer database: a fresh salt and nonce on every save ------------------------------------------


def test_every_save_of_the_peer_database_uses_a_fresh_salt_and_nonce(tmp_path, identities) -> None:
    psk = p2ptls.generate_psk()
    path = tmp_path / "peers.db"
    database = PeerDatabase.open(path, psk)
    database.add(identities[0].record)
    blobs = []
    for _ in range(3):
        database.save()  # the same content each time
        blobs.append(path.read_bytes())
    salts = {blob[len(MAGIC) : len(MAGIC) + SALT_SIZE] for blob in blobs}
    nonces = {blob[len(MAGIC) + SALT_SIZE : len(MAGIC) + SALT_SIZE + NONCE_SIZE] for blob in blobs}
    assert len(salts) == 3 and len(nonces) == 3
    assert bytes(SALT_SIZE) not in salts and bytes(NONCE_SIZE) not in nonces
    assert [r.peer_id for r in PeerDatabase.open(path, psk)] == [identities[0].peer_id]


# -- state: a span delivered twice ----------------------------------------------------------------


def test_a_span_delivered_twice_is_applied_once(identities) -> None:
    replica, owner = identities[0], identities[1]
    core = ReplicaCore(NETWORK, replica.peer_id.digest, replica.record.public_key_der)
    core.begin_epoch(_crypto.EpochSigner.create(replica, NETWORK, 1))
    core.take_changes()
    forger = Forger(owner, NETWORK)
    updates = forger.updates(forger.span(forger.records([("a", b"1"), ("b", b"2")])))

    def deliver():
        parsed = state_wire.parse_message_untrusted(updates.encode(), core.limits)
        assert isinstance(parsed, state_wire.Updates)
        return core.receive_updates_untrusted(parsed)

    first = deliver()
    assert [r.key for r in first.applied] == ["a", "b"]
    assert core.mark(owner.peer_id.digest) == (1, 2)
    assert not core.take_changes().empty
    again = deliver()  # the record at the mark, (1, 2), included
    assert again.applied == [] and again.stale == 2 and again.advanced == {}
    assert core.take_changes().empty  # nothing to store, no change to report
    found = core.get(owner.peer_id.digest, "b")
    assert found is not None and found.value == b"2"


# -- state store: durability sets SQLite's synchronous mode ---------------------------------------

SYNCHRONOUS_NORMAL, SYNCHRONOUS_FULL = 1, 2


@pytest.mark.parametrize(
    ("durability", "expected"), [("full", SYNCHRONOUS_FULL), ("normal", SYNCHRONOUS_NORMAL)]
)
@pytest.mark.parametrize("on_disk", [True, False])
def test_durability_sets_sqlite_synchronous(
    tmp_path, durability, expected: int, on_disk: bool
) -> None:
    path = tmp_path / "state.sqlite3" if on_disk else None
    store = StateStore(path, network=NETWORK, owner=bytes(32), durability=durability)
    try:
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == expected
    finally:
        store.close()


def test_full_durability_is_the_default(tmp_path) -> None:
    store = StateStore(tmp_path / "state.sqlite3", network=NETWORK, owner=bytes(32))
    try:
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == SYNCHRONOUS_FULL
    finally:
        store.close()
