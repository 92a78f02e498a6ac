"""Checks that mutants of ``make mutate`` survived: each test here kills one or more of them.

Only survivors that change what a peer (or a file) can make us accept, hold or deliver are
covered; error wording, statistics counters and equivalent mutants are left alone.
"""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import example, given, settings
from hypothesis import strategies as st

import p2ptls
from p2ptls import (
    Identity,
    KnownPeers,
    PeerDatabase,
    PeerDatabaseError,
    PeerRecord,
    ReassemblyBudget,
    ReassemblyBudgetExceeded,
    ReplayGuard,
    trust,
)
from p2ptls import _wire as stream_wire
from p2ptls._connection import MessageReceived
from p2ptls.peerdb import MAGIC, NONCE_SIZE, SALT_SIZE
from p2ptls.sllp import (
    LossReason,
    Message,
    MessagesLost,
    NegotiationError,
    ReplayWindow,
    SllpConfig,
)
from p2ptls.sllp import _wire as sllp_wire
from p2ptls.sllp.testing import FragmentFeeder, RecordingSession, session_pair
from p2ptls.state import _crypto
from p2ptls.state import _wire as state_wire
from p2ptls.state._replica import ReplicaCore
from p2ptls.state.errors import StateProtocolError
from p2ptls.state.testing import Forger
from tests.hostile_support import CONFIG, established_pair, forged_sealer

HEADER = len(MAGIC) + SALT_SIZE + NONCE_SIZE

# -- peer database: the file format, and what is not a database -----------------------------------


def test_the_peer_database_file_is_what_its_format_says(tmp_path, identities) -> None:
    """Opened with a raw 32-byte secret; decrypted here independently of p2ptls: the key is
    HKDF-SHA256(secret, salt, "p2ptls1 peer database"), the AAD is magic | salt."""
    secret = bytes(range(32, 64))
    path = tmp_path / "peers.db"
    database = PeerDatabase.open(path, secret)
    database.add(identities[0].record)
    database.save()
    blob = path.read_bytes()
    assert blob.startswith(MAGIC)
    salt = blob[len(MAGIC) : len(MAGIC) + SALT_SIZE]
    nonce = blob[len(MAGIC) + SALT_SIZE : HEADER]
    key = HKDF(hashes.SHA256(), 32, salt=salt, info=b"p2ptls1 peer database").derive(secret)
    plaintext = AESGCM(key).decrypt(nonce, blob[HEADER:], MAGIC + salt)
    assert json.loads(plaintext) == {"version": 1, "peers": [identities[0].record.to_dict()]}
    reopened = PeerDatabase.open(path, secret)
    assert [record.peer_id for record in reopened] == [identities[0].peer_id]


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        ("other magic", "not a p2ptls database"),
        ("shorter than a tag", "not a p2ptls database"),
        ("only a tag", "failed authentication"),
    ],
)
def test_what_is_not_a_peer_database_is_refused(tmp_path, damage: str, why: str) -> None:
    psk = p2ptls.generate_psk()
    path = tmp_path / "peers.db"
    PeerDatabase.open(path, psk).save()
    blob = path.read_bytes()
    path.write_bytes(
        {
            "other magic": b"P2PDB2\n\0" + blob[len(MAGIC) :],
            "shorter than a tag": blob[: HEADER + 15],
            "only a tag": blob[: HEADER + 16],
        }[damage]
    )
    with pytest.raises(PeerDatabaseError, match=why):
        PeerDatabase.open(path, psk)


def test_the_state_network_id_is_the_same_from_the_key_or_its_secret() -> None:
    psk = p2ptls.NetworkKey(bytes(range(32)))
    assert _crypto.network_id(psk.secret) == _crypto.network_id(psk)


# -- secure stream reassembly: the budget's bounds, an empty message, a peer's share --------------


def test_the_reassembly_budget_may_be_filled_exactly_and_no_further() -> None:
    budget = ReassemblyBudget(limit=1000, per_peer_limit=600)
    budget.reserve(600, "a")  # a's whole share
    with pytest.raises(ReassemblyBudgetExceeded):
        budget.reserve(1, "a")
    budget.reserve(400, "b")  # the rest of the host's budget
    with pytest.raises(ReassemblyBudgetExceeded):
        budget.reserve(1, "c")
    budget.release(600, "a")
    budget.release(400, "b")
    assert budget.in_use == 0


def test_an_empty_message_is_delivered_empty() -> None:
    initiator, responder = established_pair()
    assert responder.receive_data_untrusted(initiator.send_message(b"")) == [MessageReceived(b"")]
    sealer = forged_sealer(initiator)
    record = sealer.seal(stream_wire.MESSAGE_START, stream_wire.MESSAGE_LENGTH.pack(0))
    assert responder.receive_data_untrusted(record) == [MessageReceived(b"")]


def test_a_peer_gets_its_share_back_when_its_connections_fail_mid_message() -> None:
    size = 2 * CONFIG.record_payload
    budget = ReassemblyBudget(per_peer_limit=size + 1024)
    for attempt in range(3):  # one peer, one connection after another, each dropped
        initiator, responder = established_pair(seed=b"attempt %d" % attempt, budget=budget)
        records = initiator.send_message(bytes(size))
        assert responder.receive_data_untrusted(records[: len(records) // 2]) == []
        assert budget.in_use > 0
        responder.abandon()
        assert budget.in_use == 0


def test_a_peer_gets_its_share_of_the_budget_back_with_each_finished_message() -> None:
    """Each message holds most of the peer's share until it completes; one after another they
    all fit only if every completed message returns its bytes to the peer's share."""
    size = 2 * CONFIG.record_payload  # three records: two fragments are held at a time
    budget = ReassemblyBudget(per_peer_limit=size + 1024)
    initiator, responder = established_pair(budget=budget)
    for index in range(4):
        message = bytes([index]) * size
        assert responder.receive_data_untrusted(initiator.send_message(message)) == [
            MessageReceived(message)
        ]
    assert budget.in_use == 0


# -- SLLP reassembly: fragment bounds, the message cap, eviction, id jumps, unordered delivery -----

FRAGMENT = sllp_wire.DEFAULT_DATAGRAM_PAYLOAD - sllp_wire.OVERHEAD  # 1149 payload bytes


def delivered(session: RecordingSession) -> list[tuple[int, bytes]]:
    return [(e.message_id, e.data) for e in session.log if isinstance(e, Message)]


def losses(session: RecordingSession) -> list[MessagesLost]:
    return [e for e in session.log if isinstance(e, MessagesLost)]


def test_a_final_fragment_may_reach_max_message_size_and_not_pass_it() -> None:
    a, b = session_pair(SllpConfig(max_message_size=5000, reassembly_timeout=60.0))
    send = FragmentFeeder(a, b)
    send(0, 0, 5, FRAGMENT)  # the message's fragment size, from its first non-final fragment
    last = 5000 - 4 * FRAGMENT  # a 5-fragment message ends with at most 404 bytes
    send(0, 4, 5, last + 1)
    assert b.statistics().malformed == 1 and b.statistics().in_reassembly == 1
    send(0, 4, 5, last)
    assert b.statistics().malformed == 1 and b.statistics().in_reassembly == 1
    send(1, 1, 2, 0)  # an empty last fragment
    assert b.statistics().malformed == 2 and b.statistics().in_reassembly == 1


def test_a_two_fragment_message_may_not_pass_max_message_size() -> None:
    a, b = session_pair(SllpConfig(max_message_size=1500, reassembly_timeout=60.0))
    send = FragmentFeeder(a, b)
    send(0, 0, 2, FRAGMENT)  # the message's fragment size, from its first non-final fragment
    send(0, 1, 2, 1500 - FRAGMENT + 1)
    assert b.statistics().malformed == 1 and b.statistics().in_reassembly == 1
    send(0, 1, 2, 1500 - FRAGMENT)
    assert b.statistics().malformed == 1 and [len(data) for _, data in delivered(b)] == [1500]


def test_a_single_fragment_message_may_reach_max_message_size_and_not_pass_it() -> None:
    a, b = session_pair(SllpConfig(max_message_size=1000))
    send = FragmentFeeder(a, b)
    send(0, 0, 1, 1001)
    send(1, 0, 2, FRAGMENT)  # two fragments cannot carry a message of at most 1000 bytes
    assert b.statistics().malformed == 2 and b.statistics().in_reassembly == 0
    send(2, 0, 1, 1000)
    assert delivered(b) == [(2, bytes([2]) * 1000)]


def test_the_reassembly_message_cap_holds_exactly() -> None:
    a, b = session_pair(SllpConfig(max_reassembly_messages=4, reassembly_timeout=60.0))
    send = FragmentFeeder(a, b)
    for message_id in range(10):
        send(message_id, 0, 3, FRAGMENT)
        assert b.statistics().in_reassembly <= 4
    assert b.statistics().in_reassembly == 4
    assert losses(b) == [MessagesLost(i, 1, LossReason.EVICTED) for i in range(6)]


def test_room_for_a_fragment_is_never_made_by_evicting_its_own_message() -> None:
    cap = 64 * 1024
    config = SllpConfig(
        max_message_size=cap,
        max_reassembly_bytes=cap,
        max_reassembly_messages=1000,
        reassembly_timeout=60.0,
    )
    a, b = session_pair(config)
    send = FragmentFeeder(a, b)
    count = -(-cap // FRAGMENT)
    for index in range(30):  # message 0, the oldest, half received
        send(0, index, count, FRAGMENT)
    for index in range(25):  # message 1
        send(1, index, count, FRAGMENT)
    for index in range(30, count - 1):  # the rest of message 0 needs message 1's room
        send(0, index, count, FRAGMENT)
    send(0, count - 1, count, cap - (count - 1) * FRAGMENT)
    assert delivered(b) == [(0, bytes(cap))]
    assert losses(b) == [MessagesLost(1, 1, LossReason.EVICTED)]
    assert b.statistics().reassembly_bytes == 0


def test_ids_skipped_by_a_far_jump_are_reported_lost_not_fatal() -> None:
    a, b = session_pair(SllpConfig(reassembly_timeout=1.0))
    send = FragmentFeeder(a, b)
    send(0, 0, 1, 5)
    send(200_000, 0, 1, 5)  # far beyond the 65536-id window
    b.handle_timers(1.0)
    assert [message_id for message_id, _ in delivered(b)] == [0, 200_000]
    lost = losses(b)
    assert all(e.reason is LossReason.NEVER_ARRIVED for e in lost)
    assert lost[0].first_id == 1 and lost[-1].first_id + lost[-1].count == 200_000
    assert sum(e.count for e in lost) == 199_999 == b.statistics().lost
    send(200_010, 0, 1, 5)  # and the session goes on; a small gap is a small loss
    b.handle_timers(2.0)
    assert delivered(b)[-1][0] == 200_010
    assert losses(b)[len(lost) :] == [MessagesLost(200_001, 9, LossReason.NEVER_ARRIVED)]
    assert b.statistics().lost == 199_999 + 9


def test_unordered_mode_keeps_an_older_message_when_a_newer_one_completes_first() -> None:
    a, b = session_pair()
    older = a.send_message(b"o" * 3000, 0.0).datagrams()
    newer = a.send_message(b"n" * 10, 0.0).datagrams()
    for datagram in [older[0], *newer, *older[1:]]:
        b.receive_datagram_untrusted(datagram, 0.0)
    assert delivered(b) == [(1, b"n" * 10), (0, b"o" * 3000)]
    assert all(e.complete and e.missing == () for e in b.log if isinstance(e, Message))
    assert b.statistics().in_reassembly == 0


# -- the SLLP replay window against a model, where it matters: near its top ----------------------


NEAR, JUMP, REPLAY = "near", "jump", "replay"
STEPS = st.lists(
    st.tuples(st.sampled_from([NEAR, JUMP, REPLAY]), st.integers(-1000, 1000), st.booleans()),
    max_size=200,
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(bits=st.sampled_from([128, 256, 4096]), steps=STEPS)
# A move of exactly the ring's size less one block, then a replay just inside the window.
@example(bits=128, steps=[(NEAR, 10, True), (NEAR, 60, True), (REPLAY, 1, False)])
# Moving into the next block clears it: a stale bit must not refuse a new number.
@example(bits=128, steps=[(NEAR, 10, True), (NEAR, 60, True), (NEAR, 70, True), (NEAR, -2, False)])
@example(bits=256, steps=[(NEAR, 5, True), (NEAR, 300, True), (NEAR, 20, True), (NEAR, -5, False)])
# A jump past the whole ring clears every block.
@example(bits=128, steps=[(NEAR, 10, True), (JUMP, 100, True), (NEAR, -32, False)])
def test_the_replay_window_is_exact_near_its_top(
    bits: int, steps: list[tuple[str, int, bool]]
) -> None:
    """Numbers a little above or below the highest accepted one, jumps of any number of blocks,
    and replays of recently accepted numbers: a number within the window is new exactly when it
    was never accepted."""
    window = ReplayWindow(bits)
    accepted: list[int] = []
    top = 0
    for kind, value, accept in steps:
        if kind == REPLAY and accepted:
            number = accepted[-1 - abs(value) % min(len(accepted), 8)]
        elif kind == JUMP:
            number = max(0, top + value * bits // 16)
        else:
            number = max(0, top + value)
        new = number > top or (top - number < window.size and number not in accepted)
        assert window.check(number) == new, (number, top)
        if new and accept:
            window.update(number)
            accepted.append(number)
            top = max(top, number)


# -- trust: admitted peers, and replay protection that must outlast its bounded memory -----------

SECOND = 1_000_000_000


def test_a_peer_admitted_by_the_policy_is_remembered_once(identities) -> None:
    known_record, newcomer, stranger = (identities[i].record for i in range(3))
    known = KnownPeers([known_record], admission=lambda r: r.peer_id == newcomer.peer_id)
    assert known.is_trusted(known_record) and known.is_trusted(newcomer)
    assert not known.is_trusted(stranger)  # the policy sees the record it is asked about
    known.note_authenticated(known_record)
    assert known.admitted == []
    known.note_authenticated(newcomer)
    known.note_authenticated(newcomer)
    assert known.admitted == [newcomer] and known.get(newcomer.peer_id) == newcomer
    assert known.get(known_record.peer_id) == known_record


def test_accepted_handshake_timestamps_stay_refused_per_peer(identities) -> None:
    alice, bob = identities[0].peer_id, identities[1].peer_id
    guard = ReplayGuard()
    first, second = 100 * SECOND, 110 * SECOND  # within the reorder window of each other
    guard.accept(alice, first)
    guard.accept(alice, second)
    assert not guard.is_fresh(alice, first) and not guard.is_fresh(alice, second)
    assert guard.is_fresh(alice, first + 1)  # never accepted, within the reorder window
    assert guard.is_fresh(bob, first) and guard.is_fresh(bob, second)  # another peer's clock


def test_what_the_guard_forgets_of_a_peer_stays_refused(identities) -> None:
    alice = identities[0].peer_id
    guard = ReplayGuard()
    limit = trust.MAX_REMEMBERED_PER_PEER
    stamps = [1000 * SECOND + 2 * i for i in range(limit)]  # even: accepted
    for stamp in stamps:
        guard.accept(alice, stamp)
    assert guard.is_fresh(alice, stamps[0] + 1)  # exactly full: nothing forgotten yet
    guard.accept(alice, stamps[-1] + 2)  # one more: the oldest is forgotten
    assert not guard.is_fresh(alice, stamps[0])  # ...and stays refused
    assert all(not guard.is_fresh(alice, stamp) for stamp in stamps)
    assert guard.is_fresh(alice, stamps[1] + 1)  # never accepted, above what was forgotten
    assert guard.is_fresh(alice, stamps[-1] + 3)


def test_a_forgotten_hello_is_refused_when_replayed() -> None:
    now = 1000 * SECOND
    guard = ReplayGuard(max_recent_hellos=2)
    for index in range(3):  # the third pushes the first out of the bounded memory
        assert guard.admit_hello(b"binder %d" % index, now + index, now)
    assert guard.admit_hello(b"binder 0", now, now) is trust.Admission.REFUSED  # its source's floor
    # A copy of a remembered Hello is answered from its remembered decryption (no RSA work).
    assert guard.admit_hello(b"binder 2", now + 2, now) is trust.Admission.SEEN


# -- identity: which RSA keys are made and accepted, and what a key file may hold -----------------


def test_a_public_key_with_an_even_modulus_is_refused(identities) -> None:
    numbers = identities[0].record.public_key.public_numbers()
    even = next(n for n in (numbers.n + 1, numbers.n + 3) if n % 3)  # even, not a multiple of 3
    key = rsa.RSAPublicNumbers(numbers.e, even).public_key()
    assert key.key_size == 2048
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="modulus"):
        PeerRecord.from_public_key(der)


def test_identities_are_generated_only_with_an_allowed_size() -> None:
    with pytest.raises(ValueError, match="key size"):
        Identity.generate(1024)
    identity = Identity.generate(2048)
    public = identity.record.public_key
    assert public.key_size == 2048 and public.public_numbers().e == 65537


def test_a_network_key_file_with_stray_characters_is_refused(tmp_path) -> None:
    path = tmp_path / "network.key"
    psk = p2ptls.generate_psk(path)
    header, encoded = path.read_bytes().split(b" ", 1)
    path.write_bytes(header + b" " + encoded[:10] + b"!" + encoded[10:])
    with pytest.raises(p2ptls.KeyFileError, match="malformed"):
        p2ptls.NetworkKey.load(path)
    path.write_bytes(header + b" " + encoded)
    assert p2ptls.NetworkKey.load(path) == psk


# -- SLLP negotiation and close messages: every field checked on its own, limits inclusive --------


@pytest.mark.parametrize(("offset", "value"), [(0, ord("X")), (4, 2), (5, sllp_wire.KIND_OFFER)])
def test_a_stream_close_with_one_wrong_header_field_is_refused(offset: int, value: int) -> None:
    data = bytearray(sllp_wire.encode_stream_close(7, "bye"))
    data[offset] = value  # the magic, the version or the kind
    with pytest.raises(NegotiationError, match="unexpected message"):
        sllp_wire.parse_stream_close_untrusted(bytes(data))


@pytest.mark.parametrize("reason", ["", "r" * sllp_wire.MAX_CLOSE_REASON])
def test_close_reasons_of_the_extreme_lengths_are_accepted(reason: str) -> None:
    stream_close = sllp_wire.encode_stream_close(7, reason)
    assert sllp_wire.parse_stream_close_untrusted(stream_close) == sllp_wire.StreamClose(7, reason)
    payload = sllp_wire.encode_close_payload(9, reason)
    assert sllp_wire.parse_close_payload_untrusted(payload) == (9, reason)


def test_a_stream_close_reason_above_the_limit_is_refused() -> None:
    too_long = sllp_wire.STREAM_CLOSE.pack(
        sllp_wire.MAGIC, sllp_wire.VERSION, sllp_wire.KIND_CLOSE, 7, sllp_wire.MAX_CLOSE_REASON + 1
    ) + b"r" * (sllp_wire.MAX_CLOSE_REASON + 1)
    with pytest.raises(NegotiationError, match="length"):
        sllp_wire.parse_stream_close_untrusted(too_long)


@pytest.mark.parametrize("size", [sllp_wire.MIN_DATAGRAM_PAYLOAD, sllp_wire.MAX_DATAGRAM_PAYLOAD])
def test_offers_of_the_extreme_datagram_sizes_are_accepted(size: int) -> None:
    offer = sllp_wire.Offer(
        kind=sllp_wire.KIND_OFFER,
        epoch=1,
        connection_id=5,
        address=("10.1.2.3", 4000),
        max_datagram_payload=size,
        max_message_size=1 << 20,
    )
    data = sllp_wire.encode_offer(offer)
    assert sllp_wire.parse_offer_untrusted(data, sllp_wire.KIND_OFFER) == offer


# -- state: what a peer's digest can make a replica ask for ---------------------------------------


def test_a_digest_makes_a_replica_pull_only_what_it_has_room_for(identities) -> None:
    me, alice = identities[0], identities[1]
    network = _crypto.network_id(p2ptls.NetworkKey(bytes(range(32))))
    core = ReplicaCore(network, me.peer_id.digest, me.record.public_key_der, max_owners=4)
    core.begin_epoch(_crypto.EpochSigner.create(me, network, 1))
    forger = Forger(alice, network)
    outcome = core.receive_updates_untrusted(
        forger.updates(forger.span(forger.records([("k", b"v")]))), alice.peer_id.digest
    )
    assert outcome.applied  # alice is held now, at (1, 1)
    strangers = sorted(bytes([i]) * 32 for i in range(1, 6))
    digest = state_wire.Digest(
        tuple(
            sorted(
                [(me.peer_id.digest, (3, 7)), (alice.peer_id.digest, (1, 5))]
                + [(owner, (1, 1)) for owner in strangers]
            )
        )
    )
    pulls = core.wanted(digest)
    # A claim about our own state earns one pull of just the record that would prove it: never an
    # epoch move (only our own signature can prove it).
    assert (me.peer_id.digest, (3, 6)) in pulls
    assert (alice.peer_id.digest, (1, 1)) in pulls  # alice: from what we hold onwards
    unknown = [owner for owner, since in pulls if owner in strangers]
    assert len(unknown) == 3  # max_owners less our own, however many are offered
    assert all(since == state_wire.NO_VERSION for owner, since in pulls if owner in strangers)
    assert len(pulls) == 5


# -- state wire: a count is checked against the bytes that remain before anything is read ---------


def test_a_count_that_the_remaining_bytes_cannot_hold_is_refused_up_front(identities) -> None:
    limits = state_wire.Limits(max_value_size=4096, max_direct_size=4096)
    owners = sorted(identity.peer_id.digest for identity in identities[:2])
    digest = bytearray(state_wire.Digest(((owners[0], (1, 1)), (owners[1], (1, 2)))).encode())
    digest[1:5] = (3).to_bytes(4, "big")  # three entries claimed, two present
    members = bytearray(
        state_wire.Members(
            tuple(state_wire.MemberInfo(i.record.public_key_der, None) for i in identities[:2])
        ).encode()
    )
    members[1:3] = (1000).to_bytes(2, "big")  # far more than the bytes could hold
    for message in (digest, members):
        with pytest.raises(StateProtocolError, match="count exceeds its bound"):
            state_wire.parse_message_untrusted(bytes(message), limits)
