"""Known-answer tests of the handshake (``protocol/vectors/handshake.json``, SPEC.md section 3):
the OAEP encodings, each flight field by field, the sealed public key, the binder and the sealed
``C_R``, all reproduced by ``InitiatorHandshake``/``ResponderHandshake`` and the wire parsers, and
a tampered Hello or Reply refused before any private-key work. The responder cases of the same
file are checked in ``test_responder_vectors.py``.
"""

from __future__ import annotations

import hmac
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from p2ptls import _keyschedule as ks
from p2ptls import _wire as wire
from p2ptls._errors import HandshakeFailed, LocalProtocolError
from p2ptls._handshake import (
    HELLO_OAEP_LABEL,
    REPLY_OAEP_LABEL,
    HandshakeResult,
    InitiatorHandshake,
    Randomness,
    ResponderHandshake,
)
from p2ptls.identity import NetworkKey
from p2ptls.trust import KnownPeers, ReplayGuard
from protocol.fixed_oaep import oaep_encrypt_with_seed
from protocol.vector_support import ScriptedRandomness
from tests.vector_files import flight, h, identities, inputs, load, oaep_hook, schedule


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
        randomness=ScriptedRandomness(h(inputs()["k_I"])),
        ephemeral=X25519PrivateKey.from_private_bytes(h(inputs()["initiator_ephemeral_private"])),
        oaep_encrypt=oaep_hook(),
    )
    responder = ResponderHandshake(
        res_id,
        psk,
        KnownPeers([ini_id.record]),
        guard,
        now_ns=inputs()["responder_now_ns"],
        randomness=responder_randomness or ScriptedRandomness(h(inputs()["k_R"])),
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
    assert initiator.start() == flight("hello")
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
        initiator.start()
        with pytest.raises(HandshakeFailed):
            initiator.receive_reply_untrusted(bytes(tampered))
    initiator, _, _ = make_handshakes()
    initiator.start()
    with pytest.raises(LocalProtocolError):  # and nothing to complete without a verified Reply
        initiator.complete_untrusted(h(inputs()["k_R"]))


def test_binder_uses_the_final_header() -> None:
    """The binder covers the record header with the Hello's final length (SPEC.md 3.1)."""
    hello = flight("hello")
    expected = hmac.digest(schedule()["binder_key"], hello[:-32], "sha256")
    assert hello[-32:] == expected
    assert int.from_bytes(hello[2:4], "big") == len(hello) - 4
