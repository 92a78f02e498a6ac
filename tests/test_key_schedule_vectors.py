"""Known-answer tests of the key schedule (``protocol/vectors/key_schedule.json``, SPEC.md
section 4): every HKDF step with its full ``info``, the named functions of ``_keyschedule``, the
key-update chain and an exporter output.
"""

from __future__ import annotations

import itertools

from p2ptls import _keyschedule as ks
from tests.vector_files import flight, h, identities, inputs, load, schedule


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
