"""Known-answer tests of the records of a session (``protocol/vectors/records.json``, SPEC.md
sections 5, 7 and 8): ``RecordSealer``/``RecordOpener`` reproduce every record of both directions
(key updates included), and two ``Connection`` objects run the handshake and the scripted session
to the same events and bytes.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from p2ptls import _keyschedule as ks
from p2ptls import _wire as wire
from p2ptls._connection import (
    Connection,
    HandshakeComplete,
    HandshakeState,
    PrivateKeyOperationNeeded,
)
from p2ptls._records import RecordOpener, RecordSealer
from p2ptls.config import StreamConfig
from p2ptls.identity import NetworkKey
from p2ptls.trust import KnownPeers, ReplayGuard
from protocol.session_vectors import event_json
from protocol.vector_support import ScriptedRandomness
from tests.vector_files import (
    flight,
    h,
    identities,
    inputs,
    load,
    message,
    message_plaintexts,
    oaep_hook,
    schedule,
)


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
        randomness=ScriptedRandomness(h(inputs()["randomness"]["initiator"])),
        oaep_encrypt=oaep_hook(),
    )
    responder = Connection.responder(
        StreamConfig(**config["responder"]),
        res_id,
        psk,
        KnownPeers([ini_id.record]),
        ReplayGuard(),
        now_ns=inputs()["responder_now_ns"],
        randomness=ScriptedRandomness(h(inputs()["randomness"]["responder"])),
        oaep_encrypt=oaep_hook(),
    )
    expected_events = iter(load("handshake.json")["connection_events"])
    identity = {"initiator": ini_id, "responder": res_id}
    conns = {"initiator": initiator, "responder": responder}
    assert initiator.start() == []
    in_flight = initiator.data_to_send()
    assert in_flight == flight("hello")
    receiver = "responder"
    while in_flight:
        events = conns[receiver].receive_data_untrusted(in_flight)
        in_flight = b""
        for event in events:
            assert {"side": receiver, **event_json(event)} == next(expected_events)
            if isinstance(event, PrivateKeyOperationNeeded):
                plaintext = identity[receiver].decrypt_untrusted(event.ciphertext, event.label)
                done = conns[receiver].supply_decryption(plaintext)
                # the initiator completes here (the responder at the Finish)
                assert [type(e) for e in done] == [HandshakeComplete] * (receiver == "initiator")
                in_flight = conns[receiver].data_to_send()
                assert in_flight == flight("reply" if receiver == "responder" else "finish")
        receiver = "initiator" if receiver == "responder" else "responder"
    assert next(expected_events, None) is None
    assert (
        initiator.state is HandshakeState.ESTABLISHED
        and responder.state is HandshakeState.ESTABLISHED
    )
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
            assert [event_json(e) for e in events] == step["events"]
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
