"""The handshake vectors driven through p2ptls: the handshake classes against the reference, and
the ``responder_cases`` of ``handshake.json``.

:func:`check_handshake_classes` runs ``InitiatorHandshake``/``ResponderHandshake`` with the
fixed inputs and compares every flight and secret with :func:`reference_handshake`'s.
:func:`responder_cases` builds each Hello a responder must refuse, answer from memory, or answer
with a substitute Reply (SPEC.md sections 3.4, 3.5) from the reference, runs it through
``Connection`` (:func:`check_responder_case`) and returns the cases as ``handshake.json`` writes
them.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from p2ptls._connection import Connection, HandshakeComplete, PrivateKeyOperationNeeded
from p2ptls._errors import HandshakeFailed
from p2ptls._handshake import InitiatorHandshake, ResponderHandshake
from p2ptls.config import StreamConfig
from p2ptls.identity import NetworkKey
from p2ptls.trust import Admission, KnownPeers, ReplayGuard
from protocol.handshake_reference import (
    CLOSE,
    HELLO_OAEP_LABEL,
    REPLY_OAEP_LABEL,
    TAG_SIZE,
    ReferenceHandshake,
    expand_label,
    reference_hello,
    reference_substitute,
)
from protocol.record_reference import MAX_FUTURE_SKEW_NS, REPLAY_WINDOW_NS, ReferenceSealer
from protocol.vector_inputs import (
    COARSE_NS,
    EPHEMERAL_INITIATOR,
    EPHEMERAL_RESPONDER,
    K_INITIATOR,
    K_RESPONDER,
    NOW_NS,
    OTHER_PSK,
    OTHER_RESPONDER_ID,
    PSK,
    SUBSTITUTE_FINISHED,
    SUBSTITUTE_SEALED,
    TIMESTAMP_NS,
    TIMESTAMP_S,
    Json,
)
from protocol.vector_support import Party, ScriptedRandomness, oaep_hook, require


def check_handshake_classes(ref: ReferenceHandshake, initiator: Party, responder: Party) -> None:
    """Run InitiatorHandshake/ResponderHandshake with explicit ephemerals and compare."""
    psk = NetworkKey(PSK)
    hook = oaep_hook()
    ini = InitiatorHandshake(
        initiator.identity,
        psk,
        responder.identity.record,
        timestamp_ns=TIMESTAMP_NS,
        randomness=ScriptedRandomness(K_INITIATOR),
        ephemeral=X25519PrivateKey.from_private_bytes(EPHEMERAL_INITIATOR),
        oaep_encrypt=hook,
    )
    res = ResponderHandshake(
        responder.identity,
        psk,
        KnownPeers([initiator.identity.record]),
        ReplayGuard(),
        now_ns=NOW_NS,
        randomness=ScriptedRandomness(K_RESPONDER),
        ephemeral=X25519PrivateKey.from_private_bytes(EPHEMERAL_RESPONDER),
        oaep_encrypt=hook,
    )
    require(ini.start() == ref.hello, "Hello")
    c_i = res.receive_hello_untrusted(ref.hello)
    require(c_i is not None, "binder")
    assert c_i is not None
    reply = res.reply_untrusted(responder.identity.decrypt_untrusted(c_i, HELLO_OAEP_LABEL))
    require(reply == ref.reply, "Reply")
    c_r = ini.receive_reply_untrusted(reply)
    finish, result_i = ini.complete_untrusted(
        initiator.identity.decrypt_untrusted(c_r, REPLY_OAEP_LABEL)
    )
    require(finish == ref.finish, "Finish")
    result_r = res.receive_finish_untrusted(finish)
    values = ref.schedule.values
    for result in (result_i, result_r):
        require(result.transcript_hash == values["full_transcript_hash"], "session id")
        secrets = result.secrets
        require(secrets.initiator_to_responder == values["i2r_traffic_secret"], "i2r secret")
        require(secrets.responder_to_initiator == values["r2i_traffic_secret"], "r2i secret")
        require(secrets.exporter == values["exporter_secret"], "exporter secret")


@dataclass
class ResponderCase:
    """One Hello a responder must refuse, answer from memory, or answer with a substitute
    (SPEC.md sections 3.4, 3.5). The expectations are the reference's; ``check_responder_case``
    runs ``Connection``.
    """

    name: str
    description: str
    hello: bytes | None  # None: the Hello of flights.hello
    hello_change: str
    psk: bytes
    trusts_initiator: bool
    now_ns: int
    admitted_before: list[tuple[bytes, int, int]]  # admit_hello(binder, ts, now) calls
    remembered: bool  # the decryption of flights.hello's C_I is remembered for its binder
    newest_for_initiator: int | None  # ReplayGuard.accept() before the Hello
    reply: str  # "none", "genuine", "refused at finish" or "substitute"
    private_key_operations: int
    randomness: str  # a key of inputs.randomness
    expected_reply: bytes | None


def responder_randomness() -> dict[str, bytes]:
    return {
        "responder": EPHEMERAL_RESPONDER + K_RESPONDER,
        "responder_substitute": EPHEMERAL_RESPONDER
        + SUBSTITUTE_SEALED[: 256 + TAG_SIZE]
        + SUBSTITUTE_FINISHED,
    }


def responder_cases(ref: ReferenceHandshake, initiator: Party, responder: Party) -> list[Json]:
    """Build the cases from the reference, run each through p2ptls, return their JSON."""
    values = ref.schedule.values
    e_r_pub = X25519PrivateKey.from_private_bytes(EPHEMERAL_RESPONDER).public_key()
    e_i_pub = X25519PrivateKey.from_private_bytes(EPHEMERAL_INITIATOR).public_key()
    c_i = bytes.fromhex(ref.oaep["hello"]["ciphertext"])
    hello_inputs: Json = {
        "c_i": c_i,
        "early_secret": values["early_secret"],
    }
    low_order = reference_hello(
        initiator,
        timestamp_s=TIMESTAMP_S,
        e_i_pub=bytes(32),
        binder_key=values["binder_key"],
        **hello_inputs,
    ).record
    moved_clock = reference_hello(
        initiator,
        timestamp_s=TIMESTAMP_S + 1,
        e_i_pub=e_i_pub.public_bytes_raw(),
        binder_key=values["binder_key"],
        **hello_inputs,
    ).record
    other_binder_key = expand_label(values["psk_secret"], "binder", OTHER_RESPONDER_ID, 32)
    misdirected = reference_hello(
        initiator,
        timestamp_s=TIMESTAMP_S,
        e_i_pub=e_i_pub.public_bytes_raw(),
        binder_key=other_binder_key,
        **hello_inputs,
    ).record
    substitute_reply = reference_substitute(e_r_pub.public_bytes_raw(), 256)
    binder = ref.hello[-32:]
    admitted = [(binder, COARSE_NS, NOW_NS)]
    base: Json = {
        "hello": None,
        "hello_change": "",
        "psk": PSK,
        "trusts_initiator": True,
        "now_ns": NOW_NS,
        "admitted_before": [],
        "remembered": False,
        "newest_for_initiator": None,
        "randomness": "responder",
    }
    refused: Json = {"reply": "none", "private_key_operations": 0, "expected_reply": None}
    genuine: Json = {"reply": "genuine", "private_key_operations": 1, "expected_reply": ref.reply}
    refused_at_finish: Json = {**genuine, "reply": "refused at finish"}
    substitute: Json = {
        "reply": "substitute",
        "private_key_operations": 1,
        "expected_reply": substitute_reply,
        "randomness": "responder_substitute",
    }
    window = REPLAY_WINDOW_NS
    specs: list[Json] = [
        {
            **refused,
            "name": "Hello too old",
            "description": "clear timestamp more than the window behind the responder's clock",
            "now_ns": COARSE_NS + window + 1,
        },
        {
            **refused,
            "name": "Hello from the future",
            "description": "clear timestamp more than the future skew ahead of the responder's "
            "clock",
            "now_ns": COARSE_NS - MAX_FUTURE_SKEW_NS - 1,
        },
        {
            **genuine,
            "name": "window edge",
            "description": "clear timestamp exactly the window behind: still admitted",
            "now_ns": COARSE_NS + window,
        },
        {
            **genuine,
            "name": "copy, decryption remembered",
            "description": "a copy of a Hello already admitted and decrypted (a replay, or a copy "
            "raced in ahead of the genuine one): answered from the remembered decryption with no "
            "private-key operation; only the true initiator can finish",
            "admitted_before": admitted,
            "remembered": True,
            "private_key_operations": 0,
        },
        {
            **genuine,
            "name": "copy, decryption pending",
            "description": "a copy of a Hello admitted but whose decryption has not finished: "
            "decrypted again (an I/O layer shares one operation between identical requests)",
            "admitted_before": admitted,
        },
        {
            **refused_at_finish,
            "name": "copy of a completed Hello",
            "description": "a replay after the original completed: answered from memory, "
            "refused at the Finish (the initiator's timestamp is not fresh)",
            "admitted_before": admitted,
            "remembered": True,
            "newest_for_initiator": TIMESTAMP_NS,
            "private_key_operations": 0,
        },
        {
            **substitute,
            "name": "wrong network key",
            "description": "the responder's PSK differs: the binder fails, no private-key work, "
            "a substitute Reply",
            "psk": OTHER_PSK,
            "private_key_operations": 0,
        },
        {
            **substitute,
            "name": "made for another responder",
            "description": "a Hello whose binder is keyed with another member's id (a capture "
            "replayed to the wrong member): the binder fails, no private-key work",
            "hello": misdirected,
            "hello_change": "binder keyed with responder id SHA-256('p2ptls1 test vector other "
            "responder id')",
            "private_key_operations": 0,
        },
        {
            **refused_at_finish,
            "name": "untrusted initiator",
            "description": "the trust policy refuses the initiator",
            "trusts_initiator": False,
        },
        {
            **refused_at_finish,
            "name": "stale timestamp",
            "description": "the initiator's last accepted timestamp is not older",
            "newest_for_initiator": TIMESTAMP_NS,
        },
        {
            **substitute,
            "name": "low-order X25519 key",
            "description": "e_I is the all-zero point (valid binder)",
            "hello": low_order,
            "hello_change": "initiator_ephemeral = 0^32, sealed_public_key and binder recomputed",
        },
        {
            **substitute,
            "name": "clear timestamp disagrees",
            "description": "timestamp_s is one more than the precise timestamp inside C_I allows "
            "(re-bound by a network member): unsound",
            "hello": moved_clock,
            "hello_change": "timestamp_s + 1, sealed_public_key and binder recomputed",
        },
    ]
    out = []
    for spec in specs:
        case = ResponderCase(**{**base, **spec})
        check_responder_case(case, ref, initiator, responder)
        out.append(_case_json(case, ref))
    return out


def _case_json(case: ResponderCase, ref: ReferenceHandshake) -> Json:
    expected: Json = {
        "private_key_operations": case.private_key_operations,
        "reply": case.reply,
    }
    if case.reply == "none":
        expected["responder"] = "HandshakeFailed on the Hello; nothing is sent"
    else:
        assert case.expected_reply is not None
        expected["reply_record"] = case.expected_reply.hex()
    if case.reply == "genuine":
        expected["finish"] = "flights.finish completes the handshake"
    elif case.reply == "refused at finish":
        expected["finish"] = (
            "flights.finish: HandshakeFailed (trust and freshness are enforced only here)"
        )
        expected["refusal_record"] = refusal_record(ref).hex()
    elif case.reply == "substitute":
        expected["finish"] = "flights.finish: HandshakeFailed (the single failure point)"
        if case.hello is None:
            expected["initiator"] = "HandshakeFailed on this Reply, before its private-key work"
    hello: Json | str = "flights.hello"
    if case.hello is not None:
        hello = {"change": case.hello_change, "record": case.hello.hex()}
    return {
        "name": case.name,
        "description": case.description,
        "hello": hello,
        "responder": {
            "psk": case.psk.hex(),
            "trusts_initiator": case.trusts_initiator,
            "now_ns": case.now_ns,
            "admitted_before": [
                {"binder": b.hex(), "timestamp_ns": ts, "now_ns": now}
                for b, ts, now in case.admitted_before
            ],
            "decryption_remembered": "oaep.hello.plaintext" if case.remembered else None,
            "newest_accepted_for_initiator": case.newest_for_initiator,
            "randomness": f"inputs.randomness.{case.randomness}",
        },
        "expected": expected,
    }


def refusal_record(ref: ReferenceHandshake) -> bytes:
    """The sealed CLOSE (reason 0x02) a responder sends an authenticated but refused initiator."""
    record, _ = ReferenceSealer(ref.schedule.values["r2i_traffic_secret"]).seal(CLOSE, b"\x02")
    return record


def check_responder_case(
    case: ResponderCase, ref: ReferenceHandshake, initiator: Party, responder: Party
) -> None:
    what = f"responder case {case.name!r}"
    guard = ReplayGuard()
    for binder, ts, now in case.admitted_before:
        require(guard.admit_hello(binder, ts, now) is Admission.NEW, f"{what}: setup")
        if case.remembered:
            guard.remember_decryption(binder, bytes.fromhex(ref.oaep["hello"]["plaintext"]))
    if case.newest_for_initiator is not None:
        guard.accept(initiator.identity.peer_id, case.newest_for_initiator)
    rand = ScriptedRandomness(responder_randomness()[case.randomness])
    conn = Connection.responder(
        StreamConfig(),
        responder.identity,
        NetworkKey(case.psk),
        KnownPeers([initiator.identity.record] if case.trusts_initiator else []),
        guard,
        now_ns=case.now_ns,
        randomness=rand,
        oaep_encrypt=oaep_hook(),
    )
    try:
        events = conn.receive_data_untrusted(case.hello or ref.hello)
    except HandshakeFailed:
        require(case.reply == "none", f"{what}: refused the Hello")
        require(conn.data_to_send() == b"" and rand.untouched, f"{what}: no reply")
        return
    require(case.reply != "none", f"{what}: admitted the Hello")
    needs = [e for e in events if isinstance(e, PrivateKeyOperationNeeded)]
    require(len(needs) == case.private_key_operations, f"{what}: private-key operations")
    if needs:
        plain = responder.identity.decrypt_untrusted(needs[0].ciphertext, needs[0].label)
        require(conn.supply_decryption(plain) == [], f"{what}: no event before the Finish")
        reply = conn.data_to_send()
    else:
        reply = conn.data_to_send()
    require(rand.exhausted, f"{what}: randomness")
    require(reply == case.expected_reply, f"{what}: the Reply")
    require(len(reply) == len(ref.reply), f"{what}: Reply length")
    if case.reply == "genuine":
        done = conn.receive_data_untrusted(ref.finish)
        require([type(e) for e in done] == [HandshakeComplete], f"{what}: Finish")
        return
    try:
        conn.receive_data_untrusted(ref.finish)
    except HandshakeFailed:
        pass
    else:
        require(False, f"{what}: the Finish must fail")
    expected_farewell = b""
    if case.reply == "refused at finish":
        # SPEC.md section 3.4 step 5: CLOSE 0x02 as record 0 under the r2i traffic key.
        expected_farewell = refusal_record(ref)
    require(conn.farewell == expected_farewell, f"{what}: the refusal record")
    newest = guard.newest(initiator.identity.peer_id)
    require(newest == case.newest_for_initiator, f"{what}: guard untouched")
    if case.hello is None and case.reply == "substitute":
        ini = _initiator_connection(initiator, responder)
        ini.start()
        try:
            ini.receive_data_untrusted(reply)
        except HandshakeFailed:
            pass
        else:
            require(False, f"{what}: the initiator must refuse the substitute before RSA work")


def _initiator_connection(initiator: Party, responder: Party) -> Connection:
    return Connection.initiator(
        StreamConfig(),
        initiator.identity,
        NetworkKey(PSK),
        responder.identity.record,
        timestamp_ns=TIMESTAMP_NS,
        randomness=ScriptedRandomness(EPHEMERAL_INITIATOR + K_INITIATOR),
        oaep_encrypt=oaep_hook(),
    )
