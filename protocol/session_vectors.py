"""The session vectors (``records.json`` and the records of ``fragmentation.json``): the
handshake and a scripted session run through two p2ptls ``Connection`` objects, every record
compared with what :class:`~protocol.record_reference.ReferenceSealer` seals (SPEC.md sections 5
to 8).

``SESSION_SCRIPT`` lists each side's actions; :func:`run_session` performs them, and for each
send step the records SPEC.md says go on the wire (an owed PONG first, an automatic KEY_UPDATE
after ``key_update_after`` records, a message in fragments) are sealed by the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2ptls._connection import (
    Connection,
    DataReceived,
    EndOfStream,
    Event,
    HandshakeComplete,
    MessageReceived,
    PongReceived,
    PrivateKeyOperationNeeded,
    TicketReceived,
)
from p2ptls.config import StreamConfig
from p2ptls.identity import NetworkKey
from p2ptls.trust import KnownPeers, ReplayGuard
from protocol.handshake_reference import (
    CLOSE,
    DATA,
    KEY_UPDATE,
    MESSAGE_CONTINUE,
    MESSAGE_START,
    PING,
    PONG,
    ReferenceHandshake,
    sha256,
)
from protocol.record_reference import ReferenceSealer
from protocol.vector_inputs import (
    EPHEMERAL_INITIATOR,
    EPHEMERAL_RESPONDER,
    INITIATOR_KEY_UPDATE_AFTER,
    K_INITIATOR,
    K_RESPONDER,
    MESSAGE_LENGTH,
    NOW_NS,
    PING_INITIATOR,
    PING_RESPONDER,
    PSK,
    RECORD_SIZE,
    TIMESTAMP_NS,
    Json,
    fragment_message,
)
from protocol.vector_support import Party, ScriptedRandomness, oaep_hook, require

SessionStep = tuple[str, str, bytes | int | None]

SESSION_SCRIPT: tuple[SessionStep, ...] = (
    ("initiator", "send_data", b"hello"),
    ("initiator", "send_ping", PING_INITIATOR),
    ("responder", "receive", None),
    ("responder", "send_data", b"hello"),
    ("responder", "send_ping", PING_RESPONDER),
    ("responder", "send_message", MESSAGE_LENGTH),
    ("initiator", "receive", None),
    ("initiator", "send_eof", 0),
    ("responder", "receive", None),
    ("responder", "send_eof", 1),
    ("initiator", "receive", None),
)


def _reference_records(step: SessionStep) -> list[tuple[int, bytes]]:
    """What SPEC.md says each send step puts on the wire (type, plaintext), by hand."""
    side, action, argument = step
    if (side, action) == ("responder", "send_data"):
        return [(PONG, PING_INITIATOR), (DATA, b"hello")]  # the owed PONG goes first
    if (side, action) == ("initiator", "send_eof"):
        # sequence 2 = key_update_after: KEY_UPDATE under the old key, then the owed PONG
        return [(KEY_UPDATE, b""), (PONG, PING_RESPONDER), (CLOSE, b"\x00")]
    if action == "send_data":
        assert isinstance(argument, bytes)
        return [(DATA, argument)]
    if action == "send_ping":
        assert isinstance(argument, bytes)
        return [(PING, argument)]
    if action == "send_eof":
        assert isinstance(argument, int)
        return [(CLOSE, bytes([argument]))]
    if action == "send_message":
        message = fragment_message()
        first = RECORD_SIZE - 4
        out = [(MESSAGE_START, len(message).to_bytes(4, "big") + message[:first])]
        for offset in range(first, len(message), RECORD_SIZE):
            out.append((MESSAGE_CONTINUE, message[offset : offset + RECORD_SIZE]))
        return out
    raise AssertionError(action)


def event_json(event: Event) -> Json:
    if isinstance(event, DataReceived):
        return {"event": "DataReceived", "data": event.data.hex()}
    if isinstance(event, MessageReceived):
        return {
            "event": "MessageReceived",
            "length": len(event.data),
            "sha256": sha256(event.data).hex(),
        }
    if isinstance(event, PongReceived):
        return {"event": "PongReceived", "payload": event.payload.hex()}
    if isinstance(event, EndOfStream):
        return {"event": "EndOfStream", "reason": event.reason}
    if isinstance(event, HandshakeComplete):
        return {"event": "HandshakeComplete", "remote": event.remote.peer_id.hex()}
    if isinstance(event, TicketReceived):
        return {"event": "TicketReceived", "lifetime_s": event.lifetime_s}
    return {"event": "PrivateKeyOperationNeeded", "label": event.label.decode()}


@dataclass
class Session:
    handshake_events: list[Json]
    steps: list[Json]
    generations: dict[str, list[Json]]
    message_records: list[tuple[Json, bytes]]


def run_session(ref: ReferenceHandshake, initiator: Party, responder: Party) -> Session:
    """Handshake and session through ``Connection``, checked against the reference."""
    psk = NetworkKey(PSK)
    hook = oaep_hook()
    rand_i = ScriptedRandomness(EPHEMERAL_INITIATOR + K_INITIATOR)
    rand_r = ScriptedRandomness(EPHEMERAL_RESPONDER + K_RESPONDER)
    guard = ReplayGuard()
    conns = {
        "initiator": Connection.initiator(
            StreamConfig(key_update_after=INITIATOR_KEY_UPDATE_AFTER, record_size=RECORD_SIZE),
            initiator.identity,
            psk,
            responder.identity.record,
            timestamp_ns=TIMESTAMP_NS,
            randomness=rand_i,
            oaep_encrypt=hook,
        ),
        "responder": Connection.responder(
            StreamConfig(record_size=RECORD_SIZE),
            responder.identity,
            psk,
            KnownPeers([initiator.identity.record]),
            guard,
            now_ns=NOW_NS,
            randomness=rand_r,
            oaep_encrypt=hook,
        ),
    }
    ci, cr = conns["initiator"], conns["responder"]
    handshake_events: list[Json] = []
    require(ci.start() == [], "start (Connection)")
    hello = ci.data_to_send()
    require(hello == ref.hello, "Hello (Connection)")
    (need,) = cr.receive_data_untrusted(hello)
    assert isinstance(need, PrivateKeyOperationNeeded)
    handshake_events.append({"side": "responder", **event_json(need)})
    require(
        cr.supply_decryption(responder.identity.decrypt_untrusted(need.ciphertext, need.label))
        == [],
        "the responder's key operation completes no event",
    )
    reply = cr.data_to_send()
    require(reply == ref.reply, "Reply (Connection)")
    (need,) = ci.receive_data_untrusted(reply)
    assert isinstance(need, PrivateKeyOperationNeeded)
    handshake_events.append({"side": "initiator", **event_json(need)})
    done = ci.supply_decryption(initiator.identity.decrypt_untrusted(need.ciphertext, need.label))
    require([type(e) for e in done] == [HandshakeComplete], "the initiator's HandshakeComplete")
    finish = ci.data_to_send()
    require(finish == ref.finish, "Finish (Connection)")
    events = cr.receive_data_untrusted(finish)
    handshake_events.extend({"side": "responder", **event_json(e)} for e in events)
    require(rand_i.exhausted and rand_r.exhausted, "randomness consumption order")
    require(guard.newest(initiator.identity.peer_id) == TIMESTAMP_NS, "replay guard")

    values = ref.schedule.values
    sealers = {
        "initiator": ReferenceSealer(values["i2r_traffic_secret"]),
        "responder": ReferenceSealer(values["r2i_traffic_secret"]),
    }
    direction = {"initiator": "i2r", "responder": "r2i"}
    in_flight: dict[str, bytes] = {"initiator": b"", "responder": b""}
    message_records: list[tuple[Json, bytes]] = []
    steps: list[Json] = []
    for number, step in enumerate(SESSION_SCRIPT, 1):
        side, action, argument = step
        conn = conns[side]
        entry: Json = {"step": number, "side": side, "action": action}
        if action == "receive":
            peer = "responder" if side == "initiator" else "initiator"
            got = conn.receive_data_untrusted(in_flight[peer])
            in_flight[peer] = b""
            entry["events"] = [event_json(e) for e in got]
            steps.append(entry)
            continue
        if action == "send_data":
            assert isinstance(argument, bytes)
            entry["data"] = argument.hex()
            output = conn.send_data(argument)
        elif action == "send_ping":
            assert isinstance(argument, bytes)
            entry["payload"] = argument.hex()
            output = conn.send_ping(argument)
        elif action == "send_eof":
            assert isinstance(argument, int)
            entry["reason"] = argument
            output = conn.send_eof(argument)
        else:
            entry["message"] = "fragmentation.json"
            output = conn.send_message(fragment_message())
        expected = b""
        entry["records"] = []
        for content_type, plaintext in _reference_records(step):
            record, info = sealers[side].seal(content_type, plaintext)
            info = {"direction": direction[side], **info}
            expected += record
            entry["records"].append(info)
            if content_type in (MESSAGE_START, MESSAGE_CONTINUE):
                message_records.append((info, record))
        require(output == expected, f"session step {number} ({side} {action})")
        in_flight[side] += output
        steps.append(entry)
    generations = {direction[s]: sealers[s].generations for s in sealers}
    return Session(handshake_events, steps, generations, message_records)
