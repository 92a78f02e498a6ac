"""Known-answer tests of a responder's refusals (the ``responder_cases`` of
``protocol/vectors/handshake.json``, SPEC.md sections 3.4 and 3.5): each Hello refused with no
reply and no RSA work, answered from memory, or answered with a substitute Reply of the genuine
layout that fails at the Finish, run through ``Connection``; and, with real random OAEP, an
untrusting responder that answers with the genuine shape.
"""

from __future__ import annotations

from typing import Any

import pytest

from p2ptls import PeerRefused
from p2ptls import _wire as wire
from p2ptls._connection import (
    Connection,
    HandshakeComplete,
    HandshakeState,
    PrivateKeyOperationNeeded,
)
from p2ptls._errors import HandshakeFailed
from p2ptls._handshake import (
    HELLO_OAEP_LABEL,
    REPLY_OAEP_LABEL,
    InitiatorHandshake,
    ResponderHandshake,
)
from p2ptls.config import StreamConfig
from p2ptls.identity import NetworkKey
from p2ptls.trust import Admission, KnownPeers, ReplayGuard
from protocol.vector_support import ScriptedRandomness
from tests.hostile_support import hello_of, supplied
from tests.vector_files import flight, h, identities, inputs, load, oaep_hook


def responder_connection(case: Any) -> tuple[Connection, ReplayGuard, ScriptedRandomness]:
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
    randomness = ScriptedRandomness(h(inputs()["randomness"][source]))
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
        randomness=ScriptedRandomness(h(inputs()["randomness"]["initiator"])),
        oaep_encrypt=oaep_hook(),
    )


def state_of(conn: Connection) -> HandshakeState:
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
        assert conn.state is HandshakeState.FAILED and conn.data_to_send() == b""
        assert randomness.untouched
        return
    events = conn.receive_data_untrusted(hello)
    needs = [e for e in events if isinstance(e, PrivateKeyOperationNeeded)]
    assert len(needs) == expected["private_key_operations"]
    if needs:
        reply = supplied(conn, res_id.decrypt_untrusted(needs[0].ciphertext, needs[0].label))
    else:
        reply = conn.data_to_send()
    assert reply.hex() == expected["reply_record"]
    assert randomness.exhausted  # every scripted byte drawn, in this order
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
    assert conn.state is HandshakeState.AWAIT_FINISH  # nothing has failed visibly yet
    with pytest.raises(HandshakeFailed):
        conn.receive_data_untrusted(flight("finish"))
    assert state_of(conn) is HandshakeState.FAILED
    assert guard.newest(ini_id.peer_id) == newest_before
    # Only an authenticated but refused initiator is told, with the sealed CLOSE 0x02.
    assert conn.farewell.hex() == expected.get("refusal_record", "")
    if "refusal_record" in expected:
        refused = initiator_connection()
        hello_of(refused)
        (need,) = refused.receive_data_untrusted(reply)
        assert isinstance(need, PrivateKeyOperationNeeded)
        supplied(refused, ini_id.decrypt_untrusted(need.ciphertext, need.label))
        with pytest.raises(PeerRefused):
            refused.receive_data_untrusted(h(expected["refusal_record"]))
    if "initiator" in expected:
        initiator = initiator_connection()
        assert hello_of(initiator) == hello
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
        c_i = responder.receive_hello_untrusted(initiator.start())
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
