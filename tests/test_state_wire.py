"""State-network wire format: round trips, bounds, and fuzzing of every parser (hostile input 41).

Only :class:`StateProtocolError` (or a subclass) may escape a parser, whatever the input: whole
random inputs, every truncation of valid messages, and bit flips, insertions and deletions in them.
The same holds for the core when it is fed what the parser accepted.
"""

from __future__ import annotations

import contextlib
import functools

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import p2ptls
from p2ptls.state import RecordProof, _crypto
from p2ptls.state import _wire as wire
from p2ptls.state._replica import ReplicaCore
from p2ptls.state.errors import StateProtocolError
from p2ptls.state.testing import Forger
from tests.conftest import identity_pool

PSK = p2ptls.NetworkKey(bytes(range(32)))
NETWORK = _crypto.network_id(PSK)
LIMITS = wire.Limits(max_value_size=4096, max_direct_size=4096)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def samples() -> dict[str, bytes]:
    """One valid encoding of every message type (and of the stored forms)."""
    owner, other = identity_pool()[0], identity_pool()[1]
    forger = Forger(owner, NETWORK, seed=bytes(32))
    records = forger.records([("alpha", b"one"), ("beta", None), ("gamma", b"\x00" * 40)])
    batch = forger.batch(records)
    span = forger.span([records[0], records[2]], batch=batch)
    return {
        "hello": wire.StateHello(NETWORK, 7, ("127.0.0.1", 4242)).encode(),
        "hello-no-address": wire.StateHello(NETWORK, 1, None).encode(),
        "digest": wire.Digest(
            tuple(sorted(((owner.peer_id.digest, (1, 3)), (other.peer_id.digest, (2, 9)))))
        ).encode(),
        "pull": wire.Pull(((owner.peer_id.digest, (0, 0)),)).encode(),
        "updates": forger.updates(span).encode(),
        "members": wire.Members(
            (
                wire.MemberInfo(owner.record.public_key_der, ("10.0.0.1", 1)),
                wire.MemberInfo(other.record.public_key_der, None),
            )
        ).encode(),
        "direct": wire.Direct(b"hi there").encode(),
        "ping": wire.Ping(b"12345678").encode(),
        "pong": wire.Pong(b"87654321").encode(),
        "record": records[0].raw,
        "batch": batch.encode(),
        "certificate": forger.certificate.encode(),
    }


MESSAGES = ("hello", "hello-no-address", "digest", "pull", "updates", "members", "direct", "ping")


def replica() -> ReplicaCore:
    me = identity_pool()[2]
    core = ReplicaCore(NETWORK, me.peer_id.digest, me.record.public_key_der, LIMITS)
    return core


def check_message(data: bytes) -> None:
    """Parse, and feed the core whatever parses: only the protocol's own error may escape."""
    try:
        message = wire.parse_message_untrusted(data, LIMITS)
    except StateProtocolError:
        return
    if isinstance(message, wire.Updates):
        try:
            replica().receive_updates_untrusted(message)
        except StateProtocolError:
            return


def check_stored(name: str, data: bytes) -> None:
    parser = {
        "record": lambda d: wire.parse_record_untrusted(d, LIMITS),
        "batch": wire.parse_batch_untrusted,
        "certificate": wire.parse_certificate_untrusted,
    }[name]
    with contextlib.suppress(StateProtocolError):
        parser(data)


@pytest.mark.parametrize("name", (*MESSAGES, "pong"))
def test_messages_round_trip(name: str) -> None:
    data = samples()[name]
    message = wire.parse_message_untrusted(data, LIMITS)
    assert message.encode() == data


def test_stored_forms_round_trip() -> None:
    data = samples()
    assert wire.parse_record_untrusted(data["record"], LIMITS).raw == data["record"]
    assert wire.parse_batch_untrusted(data["batch"]).encode() == data["batch"]
    assert wire.parse_certificate_untrusted(data["certificate"]).encode() == data["certificate"]


@pytest.mark.parametrize("name", [n for n in MESSAGES if n != "direct"])
def test_every_truncation_is_refused(name: str) -> None:
    data = samples()[name]
    for length in range(len(data)):
        with pytest.raises(StateProtocolError):
            wire.parse_message_untrusted(data[:length], LIMITS)
    with pytest.raises(StateProtocolError):
        wire.parse_message_untrusted(data + b"\x00", LIMITS)


@pytest.mark.parametrize("name", ["record", "batch", "certificate"])
def test_every_truncation_of_stored_forms_is_refused(name: str) -> None:
    data = samples()[name]
    for length in range(len(data)):
        with pytest.raises(StateProtocolError):
            check_stored_strict(name, data[:length])


def check_stored_strict(name: str, data: bytes) -> None:
    if name == "record":
        wire.parse_record_untrusted(data, LIMITS)
    elif name == "batch":
        wire.parse_batch_untrusted(data)
    else:
        wire.parse_certificate_untrusted(data)


def test_huge_counts_are_refused_before_allocation() -> None:
    for kind in (wire.DIGEST, wire.PULL):
        with pytest.raises(StateProtocolError):
            wire.parse_message_untrusted(bytes([kind]) + b"\xff\xff\xff\xff", LIMITS)
    with pytest.raises(StateProtocolError):
        wire.parse_message_untrusted(bytes([wire.UPDATES]) + b"\xff\xff", LIMITS)
    with pytest.raises(StateProtocolError):
        wire.parse_message_untrusted(bytes([wire.MEMBERS]) + b"\xff\xff", LIMITS)
    # A record announcing a 4 GiB value.
    head = wire.RECORD_HEAD.pack(wire.PUT, bytes(32), 1, 1, 1) + b"k"
    with pytest.raises(StateProtocolError):
        wire.parse_record_untrusted(head + b"\xff\xff\xff\xff", LIMITS)


def test_bounds_on_values_keys_and_directs() -> None:
    owner = bytes(32)
    big = wire.encode_record(owner, 1, 1, "k", b"x" * (LIMITS.max_value_size + 1))
    with pytest.raises(StateProtocolError):
        wire.parse_record_untrusted(big.raw, LIMITS)
    with pytest.raises(ValueError):
        wire.encode_record(owner, 1, 1, "k" * (wire.MAX_KEY_BYTES + 1), b"")
    with pytest.raises(StateProtocolError):
        wire.parse_message_untrusted(
            wire.Direct(b"x" * (LIMITS.max_direct_size + 1)).encode(), LIMITS
        )
    tombstone_with_value = bytearray(wire.encode_record(owner, 1, 1, "k", b"v").raw)
    tombstone_with_value[0] = wire.DELETE
    with pytest.raises(StateProtocolError):
        wire.parse_record_untrusted(bytes(tombstone_with_value), LIMITS)
    for epoch, seq in ((0, 1), (1, 0), (wire.MAX_COUNTER, 1)):
        raw = wire.RECORD_HEAD.pack(wire.PUT, owner, epoch, seq, 0) + b"\x00" * 4
        with pytest.raises(StateProtocolError):
            wire.parse_record_untrusted(raw, LIMITS)


def test_entries_must_be_ascending_and_records_in_order() -> None:
    a, b = b"\x01" * 32, b"\x02" * 32
    with pytest.raises(StateProtocolError):
        wire.parse_message_untrusted(wire.Digest(((b, (1, 1)), (a, (1, 1)))).encode(), LIMITS)
    with pytest.raises(StateProtocolError):
        wire.parse_message_untrusted(wire.Digest(((a, (1, 1)), (a, (1, 2)))).encode(), LIMITS)
    forger = Forger(identity_pool()[0], NETWORK, seed=bytes(32))
    records = forger.records([("a", b"1"), ("b", b"2")])
    batch = forger.batch(records)
    backwards = wire.Span(forger.owner, (0, 0), (wire.Group(batch, (records[1], records[0])),))
    with pytest.raises(StateProtocolError):
        wire.parse_message_untrusted(forger.updates(backwards).encode(), LIMITS)
    not_after_since = wire.Span(forger.owner, (1, 1), (wire.Group(batch, tuple(records)),))
    with pytest.raises(StateProtocolError):
        wire.parse_message_untrusted(forger.updates(not_after_since).encode(), LIMITS)


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_whole_messages(data: bytes) -> None:
    check_message(data)


@FUZZ
@given(st.sampled_from(range(1, 9)), st.binary(max_size=1024))
def test_fuzz_messages_with_valid_type(kind: int, body: bytes) -> None:
    check_message(bytes([kind]) + body)


@FUZZ
@given(st.sampled_from(["record", "batch", "certificate"]), st.binary(max_size=1024))
def test_fuzz_stored_forms(name: str, data: bytes) -> None:
    check_stored(name, data)


def _mutations() -> st.SearchStrategy[tuple[str, int, int, int]]:
    return st.tuples(
        st.sampled_from((*MESSAGES, "record", "batch", "certificate")),
        st.integers(min_value=0, max_value=10**6),
        st.integers(min_value=0, max_value=255),
        st.sampled_from(["flip", "set", "insert", "delete"]),
    )


@FUZZ
@given(st.lists(_mutations(), min_size=1, max_size=4))
def test_fuzz_mutated_valid_messages(mutations: list[tuple[str, int, int, str]]) -> None:
    name = mutations[0][0]
    data = bytearray(samples()[name])
    for _name, position, byte, how in mutations:
        index = position % max(len(data), 1)
        if how == "flip" and data:
            data[index] ^= 1 << (byte % 8)
        elif how == "set" and data:
            data[index] = byte
        elif how == "insert":
            data.insert(index, byte)
        elif how == "delete" and data:
            del data[index]
    if name in ("record", "batch", "certificate"):
        check_stored(name, bytes(data))
    else:
        check_message(bytes(data))


@FUZZ
@given(st.binary(max_size=600), st.binary(max_size=600), st.binary(max_size=600))
def test_fuzz_record_proofs(record: bytes, batch: bytes, certificate: bytes) -> None:
    """A random proof never verifies; it is refused with the protocol's own error."""
    with pytest.raises(StateProtocolError):
        RecordProof(record, batch, certificate).verify(NETWORK)


def sample_proof() -> RecordProof:
    data = samples()
    return RecordProof(data["record"], data["batch"], data["certificate"])


def test_the_sample_proof_verifies() -> None:
    """Control for the fuzzing below: it starts from a proof that checks out."""
    verified = sample_proof().verify(NETWORK)
    assert (verified.key, verified.value, verified.epoch, verified.sequence) == (
        "alpha",
        b"one",
        1,
        1,
    )
    assert verified.owner == identity_pool()[0].peer_id


@FUZZ
@given(st.data())
def test_fuzz_altered_valid_proofs(data: st.DataObject) -> None:
    """Bytes changed in (or cut from) one part of a valid proof: the proof is refused with the
    protocol's own error, or (if the bytes did not really change) verifies to the same record."""
    honest = sample_proof()
    part = data.draw(st.sampled_from(["record", "batch", "certificate"]))
    original = getattr(honest, part)
    altered = bytearray(original)
    for _ in range(data.draw(st.integers(1, 3))):
        altered[data.draw(st.integers(0, len(altered) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del altered[data.draw(st.integers(0, len(altered) - 1)) :]
    proof = attrs.evolve(honest, **{part: bytes(altered)})
    if altered == original:
        assert proof.verify(NETWORK) == honest.verify(NETWORK)
        return
    with pytest.raises(StateProtocolError):
        proof.verify(NETWORK)


def test_every_single_bit_flip_of_an_update_is_refused_or_harmless() -> None:
    """A flipped bit either fails to parse, fails verification, or (in an unsigned field such
    as a length-checked count) changes nothing that is applied."""
    data = samples()["updates"]
    honest = replica()
    original = wire.parse_message_untrusted(data, LIMITS)
    assert isinstance(original, wire.Updates)
    expected = honest.receive_updates_untrusted(original)
    for index in range(len(data)):
        for bit in range(8):
            mutated = bytearray(data)
            mutated[index] ^= 1 << bit
            try:
                message = wire.parse_message_untrusted(bytes(mutated), LIMITS)
                if not isinstance(message, wire.Updates):
                    continue  # the type byte changed: another (harmless) message
                outcome = replica().receive_updates_untrusted(message)
            except StateProtocolError:
                continue
            # Only the span's unsigned "since" claim may change without failing.
            assert [r.raw for r in outcome.applied] in ([r.raw for r in expected.applied], [])
