"""Known-answer tests: p2ptls, byte for byte, against ``protocol/vectors/*.json``.

The vectors and their layout are described in ``protocol/SPEC.md`` and produced by
``protocol/generate_vectors.py``. These tests only read the JSON; they drive the real classes
(``InitiatorHandshake``, ``ResponderHandshake``, ``Connection``, ``RecordSealer``/``RecordOpener``,
``Reassembler``, ``ReplayGuard``) with the fixed inputs and compare every byte.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from p2ptls import PeerRefused
from p2ptls import _keyschedule as ks
from p2ptls import _wire as wire
from p2ptls._connection import (
    Connection,
    DataReceived,
    EndOfStream,
    Event,
    HandshakeComplete,
    MessageReceived,
    PongReceived,
    PrivateKeyOperationNeeded,
    State,
)
from p2ptls._errors import HandshakeFailed, ProtocolError
from p2ptls._fragments import Reassembler, ReassemblyBudget, fragment_sizes
from p2ptls._handshake import (
    HELLO_OAEP_LABEL,
    REPLY_OAEP_LABEL,
    HandshakeResult,
    InitiatorHandshake,
    Randomness,
    ResponderHandshake,
)
from p2ptls._records import RecordOpener, RecordSealer
from p2ptls.config import StreamConfig
from p2ptls.identity import Identity, NetworkKey
from p2ptls.trust import Admission, KnownPeers, ReplayGuard
from protocol import generate_vectors
from protocol.fixed_oaep import OaepEncrypt, fixed_seed_oaep, oaep_encrypt_with_seed

VECTORS = Path(__file__).resolve().parent.parent / "protocol" / "vectors"


@functools.cache
def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def inputs() -> Any:
    return load("handshake.json")["inputs"]


def schedule() -> dict[str, bytes]:
    return {step["name"]: h(step["output"]) for step in load("key_schedule.json")["steps"]}


@functools.cache
def identities() -> tuple[Identity, Identity]:
    """(initiator, responder) from the PEM keys stored in handshake.json."""
    out = []
    for role in ("initiator", "responder"):
        pem = inputs()[role]["private_key_pem"].encode("ascii")
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        out.append(Identity(key))
    return out[0], out[1]


def oaep_hook() -> OaepEncrypt:
    return fixed_seed_oaep(
        {
            HELLO_OAEP_LABEL: h(inputs()["oaep_seed_hello"]),
            REPLY_OAEP_LABEL: h(inputs()["oaep_seed_reply"]),
        }
    )


class Scripted:
    """A ``randomness=`` hook returning fixed bytes in order."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def __call__(self, size: int) -> bytes:
        chunk = self.data[self.pos : self.pos + size]
        assert len(chunk) == size, "the code drew more randomness than the vectors provide"
        self.pos += size
        return chunk


def flight(name: str) -> bytes:
    return h(load("handshake.json")["flights"][name]["record"])


def make_handshakes(
    responder_randomness: Randomness | None = None,
) -> tuple[InitiatorHandshake, ResponderHandshake, ReplayGuard]:
    ini_id, res_id = identities()
    psk = NetworkKey(h(inputs()["psk"]))
    guard = ReplayGuard()
    initiator = InitiatorHandshake(
        ini_id,
        psk,
        res_id.record,
        timestamp_ns=inputs()["timestamp_ns"],
        randomness=Scripted(h(inputs()["k_I"])),
        ephemeral=X25519PrivateKey.from_private_bytes(h(inputs()["initiator_ephemeral_private"])),
        oaep_encrypt=oaep_hook(),
    )
    responder = ResponderHandshake(
        res_id,
        psk,
        KnownPeers([ini_id.record]),
        guard,
        now_ns=inputs()["responder_now_ns"],
        randomness=responder_randomness or Scripted(h(inputs()["k_R"])),
        ephemeral=X25519PrivateKey.from_private_bytes(h(inputs()["responder_ephemeral_private"])),
        oaep_encrypt=oaep_hook(),
    )
    return initiator, responder, guard


def check_result(result: HandshakeResult) -> None:
    values = schedule()
    assert result.transcript_hash == values["full_transcript_hash"]
    assert result.secrets.initiator_to_responder == values["i2r_traffic_secret"]
    assert result.secrets.responder_to_initiator == values["r2i_traffic_secret"]
    assert result.secrets.exporter == values["exporter_secret"]


# -- inputs ------------------------------------------------------------------------------------


def test_inputs_are_consistent() -> None:
    ini_id, res_id = identities()
    for role, identity in (("initiator", ini_id), ("responder", res_id)):
        assert identity.key_size == 2048
        assert identity.record.public_key_der.hex() == inputs()[role]["public_key_der"]
        assert identity.peer_id.hex() == inputs()[role]["peer_id"]
        assert hashlib.sha256(identity.record.public_key_der).hexdigest() == identity.peer_id.hex()
    for role in ("initiator", "responder"):
        private = X25519PrivateKey.from_private_bytes(h(inputs()[f"{role}_ephemeral_private"]))
        assert private.public_key().public_bytes_raw().hex() == inputs()[f"{role}_ephemeral_public"]
    # RFC 7748 section 6.1 shared secret
    assert schedule()["x25519_shared"].hex() == (
        "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    )


# -- OAEP --------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["hello", "reply"])
def test_oaep_vector_decrypts_with_real_oaep(which: str) -> None:
    """The fixed-seed encoder is real RSA-OAEP: OpenSSL's decryption accepts its output."""
    vector = load("handshake.json")["oaep"][which]
    ini_id, res_id = identities()
    recipient = res_id if which == "hello" else ini_id
    label = vector["label"].encode("ascii")
    ciphertext = h(vector["ciphertext"])
    assert recipient.decrypt_untrusted(ciphertext, label) == h(vector["plaintext"])
    if which == "hello":  # id_I | k_I | the precise timestamp (only whole seconds are clear)
        timestamp = inputs()["timestamp_ns"].to_bytes(8, "big")
        assert h(vector["plaintext"]) == ini_id.peer_id.digest + h(inputs()["k_I"]) + timestamp
        assert len(h(vector["plaintext"])) == wire.HELLO_SECRET_SIZE == 72
    assert recipient.decrypt_untrusted(ciphertext, label + b"x") is None  # label is bound
    # and the raw RSA private operation gives back the documented EME-OAEP encoding
    pem = inputs()["responder" if which == "hello" else "initiator"]["private_key_pem"]
    key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    numbers = key.private_numbers()
    em = pow(int.from_bytes(ciphertext, "big"), numbers.d, numbers.public_numbers.n)
    assert em.to_bytes(256, "big") == h(vector["encoded_message"])
    assert (
        oaep_encrypt_with_seed(
            recipient.record.public_key, h(vector["plaintext"]), label, h(vector["seed"])
        )
        == ciphertext
    )


# -- handshake ---------------------------------------------------------------------------------


def test_handshake_classes_reproduce_every_flight() -> None:
    ini_id, res_id = identities()
    initiator, responder, guard = make_handshakes()
    assert initiator.hello_record() == flight("hello")
    c_i = responder.receive_hello_untrusted(flight("hello"))
    assert c_i is not None  # the binder verified
    assert c_i.hex() == load("handshake.json")["oaep"]["hello"]["ciphertext"]
    reply = responder.reply_untrusted(res_id.decrypt_untrusted(c_i, HELLO_OAEP_LABEL))
    assert reply == flight("reply")
    c_r = initiator.receive_reply_untrusted(reply)
    assert c_r.hex() == load("handshake.json")["oaep"]["reply"]["ciphertext"]
    finish, initiator_result = initiator.complete_untrusted(
        ini_id.decrypt_untrusted(c_r, REPLY_OAEP_LABEL)
    )
    assert finish == flight("finish")
    responder_result = responder.receive_finish_untrusted(finish)
    check_result(initiator_result)
    check_result(responder_result)
    assert initiator_result.remote.peer_id == res_id.peer_id
    assert responder_result.remote.peer_id == ini_id.peer_id
    assert guard.newest(ini_id.peer_id) == inputs()["timestamp_ns"]


def test_flight_fields_match_records_and_parsers() -> None:
    flights = load("handshake.json")["flights"]
    for name in ("hello", "reply", "finish"):
        fields = flights[name]["fields"]
        record = h(flights[name]["record"])
        assert b"".join(h(f["hex"]) for f in fields) == record
        for f in fields:
            assert record[f["offset"] : f["offset"] + f["length"]].hex() == f["hex"]
        assert wire.parse_header_untrusted(record[:4]) == (wire.HANDSHAKE, len(record) - 4)
    by_name = {f["name"]: h(f["hex"]) for f in flights["hello"]["fields"]}
    hello = wire.parse_hello_untrusted(flight("hello")[4:])
    assert [(f["name"], f["offset"], f["length"]) for f in flights["hello"]["fields"]] == [
        ("record_header", 0, 4),
        ("msg_type", 4, 1),
        ("suite", 5, 1),
        ("timestamp_s", 6, 8),
        ("initiator_ephemeral", 14, 32),
        ("sealed_secret_length", 46, 2),
        ("sealed_secret", 48, 256),
        ("sealed_public_key_length", 304, 2),
        ("sealed_public_key", 306, 294 + 16),
        ("binder", 616, 32),
    ]
    assert hello.timestamp_s == inputs()["timestamp_s"] == inputs()["timestamp_ns"] // 10**9
    assert by_name["timestamp_s"] == inputs()["timestamp_s"].to_bytes(8, "big")
    assert hello.ephemeral == by_name["initiator_ephemeral"]
    assert hello.sealed_secret == by_name["sealed_secret"]
    assert hello.sealed_public_key == by_name["sealed_public_key"]
    assert hello.binder == by_name["binder"]
    reply = wire.parse_reply_untrusted(flight("reply")[4:])
    assert [(f["name"], f["offset"], f["length"]) for f in flights["reply"]["fields"]] == [
        ("record_header", 0, 4),
        ("msg_type", 4, 1),
        ("responder_ephemeral", 5, 32),
        ("sealed_c_r_length", 37, 2),
        ("sealed_c_r", 39, 256 + 16),
        ("finished", 311, 32),
    ]
    assert reply.sealed_secret.hex() == flights["reply"]["fields"][4]["hex"]
    assert reply.finished.hex() == flights["reply"]["fields"][-1]["hex"]
    assert wire.parse_finish_untrusted(flight("finish")[4:]).finished == schedule()["i_finished"]


def test_sealed_public_key_and_binder() -> None:
    vectors = load("handshake.json")
    sealed = vectors["sealed_public_key"]
    aad = h(sealed["aad"])
    # the AAD is the Hello body from msg_type to C_I, without C_I's length field
    hello = flight("hello")
    k = int.from_bytes(hello[46:48], "big")
    assert aad == hello[4:46] + hello[48 : 48 + k]
    assert ks.hello_key(schedule()["early_secret"], ks.transcript_hash(aad)) == h(
        sealed["hello_key"]
    )
    der = AESGCM(h(sealed["hello_key"])).decrypt(h(sealed["nonce"]), h(sealed["ciphertext"]), aad)
    assert der == identities()[0].record.public_key_der == h(sealed["plaintext"])
    binder = vectors["binder"]
    assert h(binder["covered"]) == flight("hello")[:-32]
    binder_key = ks.binder_key(h(inputs()["psk"]), identities()[1].peer_id.digest)
    assert binder_key == h(binder["key"]) == schedule()["binder_key"]
    assert ks.mac(binder_key, h(binder["covered"])) == h(binder["binder"])
    # Keyed by the responder's id: the same Hello is not valid at any other member.
    other_key = ks.binder_key(h(inputs()["psk"]), identities()[0].peer_id.digest)
    assert ks.mac(other_key, h(binder["covered"])) != h(binder["binder"])


def test_sealed_c_r() -> None:
    """C_R travels sealed under reply_key (from the handshake secret), AAD = the Reply up to it."""
    vector = load("handshake.json")["sealed_c_r"]
    reply = flight("reply")
    assert h(vector["aad"]) == reply[:39]
    assert ks.reply_key(schedule()["handshake_secret"]) == h(vector["reply_key"])
    assert schedule()["reply_key"] == h(vector["reply_key"])
    sealed = AESGCM(h(vector["reply_key"])).encrypt(
        h(vector["nonce"]), h(vector["plaintext"]), h(vector["aad"])
    )
    assert sealed == h(vector["ciphertext"]) == reply[39:-32]
    assert h(vector["plaintext"]).hex() == load("handshake.json")["oaep"]["reply"]["ciphertext"]


def test_tampered_hello_gets_no_private_key_work() -> None:
    """Any changed Hello byte (the timestamp included) fails at parsing, or fails the binder: then
    no private-key operation is requested, a substitute Reply of the genuine length is sent and
    the handshake fails at the Finish."""
    for f in load("handshake.json")["flights"]["hello"]["fields"][1:]:
        tampered = bytearray(flight("hello"))
        tampered[f["offset"]] ^= 0x01
        _, responder, guard = make_handshakes(os.urandom)  # a substitute draws random bytes
        try:
            sealed = responder.receive_hello_untrusted(bytes(tampered))
        except HandshakeFailed:
            assert f["name"] in ("msg_type", "suite") or f["name"].endswith("_length")
            continue
        assert sealed is None, f["name"]
        reply = responder.reply_without_key_operation()
        assert len(reply) == len(flight("reply")) and reply[:4] == flight("reply")[:4]
        with pytest.raises(HandshakeFailed):
            responder.receive_finish_untrusted(flight("finish"))
        assert guard.newest(identities()[0].peer_id) is None


def test_tampered_reply_fails_before_private_key_work() -> None:
    """Any changed Reply byte fails in ``receive_reply_untrusted``: at parsing (type, length) or
    at finished_R, which the initiator checks before it decrypts C_R."""
    for f in load("handshake.json")["flights"]["reply"]["fields"][1:]:
        tampered = bytearray(flight("reply"))
        tampered[f["offset"] + f["length"] - 1] ^= 0x01
        initiator, _, _ = make_handshakes()
        with pytest.raises(HandshakeFailed):
            initiator.receive_reply_untrusted(bytes(tampered))
    initiator, _, _ = make_handshakes()
    with pytest.raises(HandshakeFailed):  # and nothing to complete without a verified Reply
        initiator.complete_untrusted(h(inputs()["k_R"]))


def responder_connection(case: Any) -> tuple[Connection, ReplayGuard, Scripted]:
    """A responder set up as a ``responder_cases`` entry of handshake.json says."""
    ini_id, res_id = identities()
    setup = case["responder"]
    guard = ReplayGuard()
    for seen in setup["admitted_before"]:
        binder = h(seen["binder"])
        outcome = guard.admit_hello(binder, seen["timestamp_ns"], seen["now_ns"])
        assert outcome is Admission.NEW
        if setup["decryption_remembered"] is not None:
            assert setup["decryption_remembered"] == "oaep.hello.plaintext"
            plaintext = h(load("handshake.json")["oaep"]["hello"]["plaintext"])
            guard.remember_decryption(binder, plaintext)
    if setup["newest_accepted_for_initiator"] is not None:
        guard.accept(ini_id.peer_id, setup["newest_accepted_for_initiator"])
    source = setup["randomness"].removeprefix("inputs.randomness.")
    randomness = Scripted(h(inputs()["randomness"][source]))
    conn = Connection.responder(
        StreamConfig(),
        res_id,
        NetworkKey(h(setup["psk"])),
        KnownPeers([ini_id.record] if setup["trusts_initiator"] else []),
        guard,
        now_ns=setup["now_ns"],
        randomness=randomness,
        oaep_encrypt=oaep_hook(),
    )
    return conn, guard, randomness


def initiator_connection() -> Connection:
    ini_id, res_id = identities()
    return Connection.initiator(
        StreamConfig(),
        ini_id,
        NetworkKey(h(inputs()["psk"])),
        res_id.record,
        timestamp_ns=inputs()["timestamp_ns"],
        randomness=Scripted(h(inputs()["randomness"]["initiator"])),
        oaep_encrypt=oaep_hook(),
    )


def state_of(conn: Connection) -> State:
    """The state, read through a call (so type checkers do not keep an earlier narrowing)."""
    return conn.state


CASES = {case["name"]: case for case in load("handshake.json")["responder_cases"]}


@pytest.mark.parametrize("name", sorted(CASES))
def test_responder_case(name: str) -> None:
    """Refused Hellos get nothing and cost no RSA work; every other failure gets a substitute
    Reply with the genuine layout and fails at the Finish, the single failure point."""
    case = CASES[name]
    ini_id, res_id = identities()
    expected = case["expected"]
    hello = flight("hello") if case["hello"] == "flights.hello" else h(case["hello"]["record"])
    conn, guard, randomness = responder_connection(case)
    newest_before = guard.newest(ini_id.peer_id)
    if expected["reply"] == "none":
        with pytest.raises(HandshakeFailed):
            conn.receive_data_untrusted(hello)
        assert conn.state is State.FAILED and conn.data_to_send() == b""
        assert randomness.pos == 0
        return
    events = conn.receive_data_untrusted(hello)
    needs = [e for e in events if isinstance(e, PrivateKeyOperationNeeded)]
    assert len(needs) == expected["private_key_operations"]
    if needs:
        reply = conn.supply_decryption(
            res_id.decrypt_untrusted(needs[0].ciphertext, needs[0].label)
        )
    else:
        reply = conn.data_to_send()
    assert reply.hex() == expected["reply_record"]
    assert randomness.pos == len(randomness.data)  # every scripted byte drawn, in this order
    assert len(reply) == len(flight("reply"))  # genuine or substitute, one length
    if expected["reply"] == "genuine":
        assert reply == flight("reply")
        (complete,) = conn.receive_data_untrusted(flight("finish"))
        assert isinstance(complete, HandshakeComplete)
        return
    if expected["reply"] == "refused at finish":
        # Trust and freshness never change the Reply: no oracle for the Hello's author.
        assert reply == flight("reply")
    else:
        assert expected["reply"] == "substitute"
        assert reply[:37] == flight("reply")[:37]  # same header, type and e_R
        assert reply[37:] != flight("reply")[37:]
    assert conn.state is State.HANDSHAKING  # nothing has failed visibly yet
    with pytest.raises(HandshakeFailed):
        conn.receive_data_untrusted(flight("finish"))
    assert state_of(conn) is State.FAILED
    assert guard.newest(ini_id.peer_id) == newest_before
    # Only an authenticated but refused initiator is told, with the sealed CLOSE 0x02.
    assert conn.farewell.hex() == expected.get("refusal_record", "")
    if "refusal_record" in expected:
        refused = initiator_connection()
        refused.start()
        (need,) = refused.receive_data_untrusted(reply)
        assert isinstance(need, PrivateKeyOperationNeeded)
        refused.supply_decryption(ini_id.decrypt_untrusted(need.ciphertext, need.label))
        with pytest.raises(PeerRefused):
            refused.receive_data_untrusted(h(expected["refusal_record"]))
    if "initiator" in expected:
        initiator = initiator_connection()
        assert initiator.start() == hello
        with pytest.raises(HandshakeFailed):  # no PrivateKeyOperationNeeded first
            initiator.receive_data_untrusted(reply)


def test_untrusting_responder_replies_with_the_genuine_shape() -> None:
    """Property: a responder that does not trust the initiator answers with a genuine Reply (real
    OAEP, random seeds), so the Hello's author learns nothing; it fails only at the Finish."""
    ini_id, res_id = identities()
    psk = NetworkKey(h(inputs()["psk"]))
    for trusted in (True, False):
        initiator = InitiatorHandshake(ini_id, psk, res_id.record, timestamp_ns=1 << 62)
        guard = ReplayGuard()
        responder = ResponderHandshake(
            res_id, psk, KnownPeers([ini_id.record] if trusted else []), guard, now_ns=1 << 62
        )
        c_i = responder.receive_hello_untrusted(initiator.hello_record())
        assert c_i is not None
        reply = responder.reply_untrusted(res_id.decrypt_untrusted(c_i, HELLO_OAEP_LABEL))
        parsed = wire.parse_reply_untrusted(reply[4:])
        assert len(reply) == len(flight("reply"))
        assert reply[:4] == flight("reply")[:4] and reply[4] == wire.REPLY
        assert len(parsed.ephemeral) == 32 and len(parsed.sealed_secret) == 256 + 16
        # C_R is sealed: what travels is no OAEP ciphertext, not even for its recipient.
        assert ini_id.decrypt_untrusted(parsed.sealed_secret[:256], REPLY_OAEP_LABEL) is None
        if trusted:
            c_r = initiator.receive_reply_untrusted(reply)
            finish, _ = initiator.complete_untrusted(
                ini_id.decrypt_untrusted(c_r, REPLY_OAEP_LABEL)
            )
            assert responder.receive_finish_untrusted(finish).remote.peer_id == ini_id.peer_id
            continue
        c_r = initiator.receive_reply_untrusted(reply)  # the Reply verifies: no oracle
        finish, _ = initiator.complete_untrusted(ini_id.decrypt_untrusted(c_r, REPLY_OAEP_LABEL))
        with pytest.raises(HandshakeFailed):  # even the true initiator's Finish
            responder.receive_finish_untrusted(finish)
        assert guard.newest(ini_id.peer_id) is None


# -- replay guard ------------------------------------------------------------------------------


def test_replay_guard_defaults() -> None:
    defaults = load("replay.json")["defaults"]
    guard = ReplayGuard()
    assert guard.window_ns == defaults["window_ns"] == 600 * 10**9
    assert guard.max_future_skew_ns == defaults["max_future_skew_ns"] == 60 * 10**9
    assert guard.max_recent_hellos == defaults["max_recent_hellos"] == 65536
    assert guard.max_recent_per_source == defaults["max_recent_per_source"] == 4096


def test_replay_guard_script() -> None:
    script = load("replay.json")["script"]
    guard = ReplayGuard(
        window_s=script["window_ns"] / 1e9,
        max_recent_hellos=script["max_recent_hellos"],
        max_recent_per_source=script["max_recent_per_source"],
    )
    assert guard.window_ns == script["window_ns"]
    sources = {step["source"] for step in script["steps"]}
    for step in script["steps"]:
        binder = h(script["binders"][step["binder"]])
        outcome = guard.admit_hello(binder, step["timestamp_ns"], step["now_ns"], step["source"])
        assert outcome.value == step["outcome"], step
        floors = {source: guard.floor_of(source) for source in sources}
        assert floors == {source: step["floors_after"].get(source, -1) for source in sources}
        if outcome is Admission.NEW:  # remembered: its decryption is kept for its copies
            guard.remember_decryption(binder, step["binder"].encode())
        remembered = {
            name for name in script["binders"] if guard.decryption_of(h(script["binders"][name]))
        }
        assert remembered == {name for name, _ in step["remembered_after"]}, step


# -- key schedule ------------------------------------------------------------------------------


def test_key_schedule_steps() -> None:
    values: dict[str, bytes] = {"zeros(32)": bytes(32), "empty": b""}
    for step in load("key_schedule.json")["steps"]:
        output = h(step["output"])
        if step["function"] == "HKDF-Extract":
            assert ks.hkdf_extract(values[step["salt"]], values[step["ikm"]]) == output
        elif step["function"] == "HKDF-Expand-Label":
            label = step["label"].removeprefix("p2ptls1 ")
            secret, context = values[step["secret"]], values[step["context"]]
            assert ks.expand_label(secret, label, context, step["length"]) == output
            assert ks.hkdf_expand(secret, h(step["info"]), step["length"]) == output
        values[step["name"]] = output


def test_key_schedule_functions() -> None:
    v = schedule()
    psk = h(inputs()["psk"])
    assert ks.psk_secret(psk) == v["psk_secret"]
    assert ks.binder_key(psk, v["responder_id"]) == v["binder_key"]
    assert v["responder_id"] == identities()[1].peer_id.digest
    assert ks.reply_key(v["handshake_secret"]) == v["reply_key"]
    assert ks.derive_secret(v["psk_secret"], "derived") == v["derived_psk"]
    assert ks.early_secret(psk, v["k_I"]) == v["early_secret"]
    assert ks.hello_key(v["early_secret"], v["hello_aad_hash"]) == v["hello_key"]
    assert ks.handshake_secret(v["early_secret"], v["x25519_shared"]) == v["handshake_secret"]
    assert ks.master_secret(v["handshake_secret"], v["k_R"]) == v["master_secret"]
    ids = identities()[0].peer_id.digest + identities()[1].peer_id.digest
    reply_prefix = flight("reply")[:-32]
    assert ks.transcript_hash(flight("hello"), reply_prefix, ids) == v["reply_transcript_hash"]
    assert ks.transcript_hash(flight("hello"), flight("reply"), ids) == v["full_transcript_hash"]
    r_key = ks.expand_label(v["handshake_secret"], "r finished", b"", 32)
    i_key = ks.expand_label(v["master_secret"], "i finished", b"", 32)
    assert ks.mac(r_key, v["reply_transcript_hash"]) == v["r_finished"]
    assert ks.mac(i_key, v["full_transcript_hash"]) == v["i_finished"]
    secrets = ks.session_secrets(v["master_secret"], v["full_transcript_hash"])
    assert secrets.initiator_to_responder == v["i2r_traffic_secret"]
    assert secrets.responder_to_initiator == v["r2i_traffic_secret"]
    assert secrets.exporter == v["exporter_secret"]
    for direction in ("i2r", "r2i"):
        keys = ks.traffic_keys(v[f"{direction}_traffic_secret"])
        assert (keys.key, keys.iv) == (v[f"{direction}_key"], v[f"{direction}_iv"])


def test_key_update_chain() -> None:
    chain = load("key_schedule.json")["key_update"]["chain"]
    assert h(chain[0]["traffic_secret"]) == schedule()["i2r_traffic_secret"]
    for current, following in itertools.pairwise(chain):
        assert ks.next_traffic_secret(h(current["traffic_secret"])) == h(
            following["traffic_secret"]
        )
    for generation in chain:
        keys = ks.traffic_keys(h(generation["traffic_secret"]))
        assert (keys.key.hex(), keys.iv.hex()) == (generation["key"], generation["iv"])


def test_exporter() -> None:
    vector = load("key_schedule.json")["exporter"]
    output = ks.export_keying_material(
        schedule()["exporter_secret"], vector["label"], h(vector["context"]), vector["length"]
    )
    assert output.hex() == vector["output"]


# -- records -----------------------------------------------------------------------------------


def message() -> bytes:
    vector = load("fragmentation.json")["message"]
    data = bytes(i % 251 for i in range(vector["length"]))
    assert hashlib.sha256(data).hexdigest() == vector["sha256"]
    return data


def message_plaintexts() -> list[bytes]:
    data = message()
    out = []
    for index, fragment in enumerate(load("fragmentation.json")["fragments"]):
        part = data[fragment["offset"] : fragment["offset"] + fragment["size"]]
        out.append(len(data).to_bytes(4, "big") + part if index == 0 else part)
    return out


def session_records(direction: str) -> list[tuple[Any, bytes]]:
    """(record vector, plaintext) in sending order for one direction."""
    plaintexts = iter(message_plaintexts())
    out = []
    for step in load("records.json")["steps"]:
        for record in step.get("records", []):
            if record["direction"] != direction:
                continue
            if "plaintext" in record:
                plaintext = h(record["plaintext"])
            else:
                plaintext = next(plaintexts)
                assert hashlib.sha256(plaintext).hexdigest() == record["plaintext_sha256"]
            out.append((record, plaintext))
    return out


def matches(record: bytes | bytearray, vector: Any) -> bool:
    if "record" in vector:
        return bool(record.hex() == vector["record"])
    return bool(hashlib.sha256(record).hexdigest() == vector["record_sha256"])


@pytest.mark.parametrize("direction", ["i2r", "r2i"])
def test_record_sealer_and_opener(direction: str) -> None:
    generations = load("records.json")["traffic"][direction]
    assert h(generations[0]["traffic_secret"]) == schedule()[f"{direction}_traffic_secret"]
    sealer = RecordSealer(h(generations[0]["traffic_secret"]))
    opener = RecordOpener(h(generations[0]["traffic_secret"]))
    for vector, plaintext in session_records(direction):
        assert (sealer.generation, sealer.sequence) == (vector["generation"], vector["sequence"])
        iv = int.from_bytes(h(generations[vector["generation"]]["iv"]), "big")
        assert (iv ^ vector["sequence"]).to_bytes(12, "big").hex() == vector["nonce"]
        record = sealer.seal(vector["content_type"], plaintext)
        assert matches(record, vector)
        content_type, length = wire.parse_header_untrusted(record[:4])
        assert (content_type, length) == (vector["content_type"], len(record) - 4)
        assert opener.open_untrusted(record[:4], record[4:]) == plaintext
        if content_type == wire.KEY_UPDATE:
            sealer.advance_key()
            opener.advance_key()
            previous, current = generations[sealer.generation - 1 : sealer.generation + 1]
            next_secret = ks.next_traffic_secret(h(previous["traffic_secret"]))
            assert next_secret.hex() == current["traffic_secret"]


def _event_json(event: Event) -> dict[str, Any]:
    if isinstance(event, DataReceived):
        return {"event": "DataReceived", "data": event.data.hex()}
    if isinstance(event, MessageReceived):
        digest = hashlib.sha256(event.data).hexdigest()
        return {"event": "MessageReceived", "length": len(event.data), "sha256": digest}
    if isinstance(event, PongReceived):
        return {"event": "PongReceived", "payload": event.payload.hex()}
    if isinstance(event, EndOfStream):
        return {"event": "EndOfStream", "reason": event.reason}
    if isinstance(event, HandshakeComplete):
        return {"event": "HandshakeComplete", "remote": event.remote.peer_id.hex()}
    assert isinstance(event, PrivateKeyOperationNeeded)
    return {"event": "PrivateKeyOperationNeeded", "label": event.label.decode()}


def connected_pair() -> dict[str, Connection]:
    """Both sides through Connection, fed randomness in the documented order."""
    ini_id, res_id = identities()
    psk = NetworkKey(h(inputs()["psk"]))
    config = load("records.json")["config"]
    initiator = Connection.initiator(
        StreamConfig(**config["initiator"]),
        ini_id,
        psk,
        res_id.record,
        timestamp_ns=inputs()["timestamp_ns"],
        randomness=Scripted(h(inputs()["randomness"]["initiator"])),
        oaep_encrypt=oaep_hook(),
    )
    responder = Connection.responder(
        StreamConfig(**config["responder"]),
        res_id,
        psk,
        KnownPeers([ini_id.record]),
        ReplayGuard(),
        now_ns=inputs()["responder_now_ns"],
        randomness=Scripted(h(inputs()["randomness"]["responder"])),
        oaep_encrypt=oaep_hook(),
    )
    expected_events = iter(load("handshake.json")["connection_events"])
    identity = {"initiator": ini_id, "responder": res_id}
    conns = {"initiator": initiator, "responder": responder}
    in_flight = initiator.start()
    assert in_flight == flight("hello")
    receiver = "responder"
    while in_flight:
        events = conns[receiver].receive_data_untrusted(in_flight)
        in_flight = b""
        for event in events:
            assert {"side": receiver, **_event_json(event)} == next(expected_events)
            if isinstance(event, PrivateKeyOperationNeeded):
                plaintext = identity[receiver].decrypt_untrusted(event.ciphertext, event.label)
                in_flight = conns[receiver].supply_decryption(plaintext)
                assert in_flight == flight("reply" if receiver == "responder" else "finish")
        receiver = "initiator" if receiver == "responder" else "responder"
    assert next(expected_events, None) is None
    assert initiator.state is State.ESTABLISHED and responder.state is State.ESTABLISHED
    return conns


def test_session_through_connection() -> None:
    conns = connected_pair()
    session_id = load("handshake.json")["result"]["session_id"]
    exporter = load("key_schedule.json")["exporter"]
    for conn in conns.values():
        assert conn.session_id is not None and conn.session_id.hex() == session_id
        ekm = conn.export_keying_material(
            exporter["label"], h(exporter["context"]), exporter["length"]
        )
        assert ekm.hex() == exporter["output"]
    sent: dict[str, bytes] = {"initiator": b"", "responder": b""}
    for step in load("records.json")["steps"]:
        side, action = step["side"], step["action"]
        conn = conns[side]
        if action == "receive":
            peer = "responder" if side == "initiator" else "initiator"
            events = conn.receive_data_untrusted(sent[peer])
            sent[peer] = b""
            assert [_event_json(e) for e in events] == step["events"]
            continue
        if action == "send_data":
            output = conn.send_data(h(step["data"]))
        elif action == "send_ping":
            output = conn.send_ping(h(step["payload"]))
        elif action == "send_eof":
            output = conn.send_eof(step["reason"])
        else:
            assert action == "send_message"
            output = conn.send_message(message())
        position = 0
        for vector in step["records"]:
            _, length = wire.parse_header_untrusted(output[position : position + 4])
            assert matches(output[position : position + 4 + length], vector)
            position += 4 + length
        assert position == len(output)
        sent[side] += output
    for conn in conns.values():
        assert conn.eof_received and conn.eof_sent
        conn.receive_eof()  # a clean end: no TruncatedError


# -- fragmentation -----------------------------------------------------------------------------


def test_fragmentation() -> None:
    vector = load("fragmentation.json")
    data = message()
    sizes = fragment_sizes(len(data), vector["first_fragment_limit"], vector["record_size"])
    assert [{"offset": o, "size": s} for o, s in sizes] == vector["fragments"]
    sealer = RecordSealer(h(vector["traffic_secret"]))
    opener = RecordOpener(h(vector["traffic_secret"]))
    sealer.sequence = opener.sequence = vector["records"][0]["sequence"]
    reassembler = Reassembler(16 * 1024 * 1024, ReassemblyBudget())
    delivered: list[bytes] = []
    for record_vector, plaintext in zip(vector["records"], message_plaintexts(), strict=True):
        record = sealer.seal(record_vector["content_type"], plaintext)
        assert record.hex() == record_vector["record"]
        assert hashlib.sha256(record).hexdigest() == record_vector["record_sha256"]
        opened = opener.open_untrusted(record[:4], record[4:])
        if record_vector["content_type"] == wire.MESSAGE_START:
            total, first = wire.parse_message_start_untrusted(opened)
            assert total == len(data)
            result = reassembler.start_untrusted(total, first)
        else:
            result = reassembler.continue_untrusted(opened)
        if result is not None:
            delivered.append(result)
    assert delivered == [data]


def test_reassembly_budget_and_fragment_minimum() -> None:
    vector = load("fragmentation.json")["reassembly"]
    data = message()
    budget = ReassemblyBudget()
    reassembler = Reassembler(16 * 1024 * 1024, budget)
    in_use = []
    for index, fragment in enumerate(load("fragmentation.json")["fragments"]):
        part = data[fragment["offset"] : fragment["offset"] + fragment["size"]]
        if index == 0:
            reassembler.start_untrusted(len(data), part)
        else:
            reassembler.continue_untrusted(part)
        in_use.append(budget.in_use)
    assert in_use == vector["budget_in_use_after_each_record"]
    for case in vector["cases"]:
        budget = ReassemblyBudget()
        reassembler = Reassembler(16 * 1024 * 1024, budget)
        outcome, charges = "incomplete", []
        try:
            for record in case["records"]:
                fragment = bytes(record["fragment_length"])
                if record["type"] == "MESSAGE_START":
                    result = reassembler.start_untrusted(record["total"], fragment)
                else:
                    result = reassembler.continue_untrusted(fragment)
                charges.append(budget.in_use)
                if result is not None:
                    outcome = "delivered"
        except ProtocolError as exc:
            outcome = type(exc).__name__
        assert outcome == case["outcome"], case["description"]
        assert charges == case["budget_in_use_after_each_accepted_record"]


# -- the generator -----------------------------------------------------------------------------


def test_generator_reproduces_the_files() -> None:
    """Re-running the generator (with the stored keys) gives the committed JSON exactly."""
    rendered = generate_vectors.generate(VECTORS)
    assert sorted(rendered) == sorted(generate_vectors.FILES)
    for name, text in rendered.items():
        assert text == (VECTORS / name).read_text(encoding="utf-8"), name


def test_binder_uses_the_final_header() -> None:
    """The binder covers the record header with the Hello's final length (SPEC.md 3.1)."""
    hello = flight("hello")
    expected = hmac.digest(schedule()["binder_key"], hello[:-32], "sha256")
    assert hello[-32:] == expected
    assert int.from_bytes(hello[2:4], "big") == len(hello) - 4
