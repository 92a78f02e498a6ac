"""Generate the resumption known-answer vectors, ``protocol/vectors/resumption.json`` (SPEC 3.6).

Run from the repository root::

    .venv/bin/python -m protocol.generate_resumption_vectors          # (re)write the file
    .venv/bin/python -m protocol.generate_resumption_vectors --check  # exit 1 if it is stale

The reference (:func:`protocol.handshake_reference.reference_resumption`, written from SPEC.md
alone) issues a ticket after the full handshake of ``handshake.json`` (its ``master_secret`` and
``TH_full``) and resumes with it. p2ptls is then driven with the same fixed inputs
(:func:`drive_p2ptls`: ticket sealing, the TICKET payload, both sides of the resumed handshake
and the responder's answer to ResumeHellos it must refuse); the generator refuses to write if the
two disagree. The RSA keys are those of ``handshake.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from p2ptls import _keyschedule as ks
from p2ptls import _wire as wire
from p2ptls._errors import HandshakeFailed
from p2ptls._handshake import ResponderHandshake, ResumingInitiator
from p2ptls._tickets import SessionTicket, TicketAuthority
from p2ptls.identity import Identity, NetworkKey
from p2ptls.trust import KnownPeers, ReplayGuard
from protocol.generate_vectors import load_existing, load_or_make_keys
from protocol.handshake_reference import reference_handshake, reference_resumption
from protocol.vector_files import write_or_check
from protocol.vector_inputs import (
    PSK,
    TIMESTAMP_NS,
    TIMESTAMP_S,
    Json,
    fixed_bytes,
)
from protocol.vector_support import Party, ScriptedRandomness

FILE = "resumption.json"
LIFETIME_S = 21600
RESUME_NS = TIMESTAMP_NS + 3600 * 10**9 + 7  # an hour after the full handshake


def inputs() -> Json:
    return {
        "psk": PSK.hex(),
        "ticket_nonce": fixed_bytes("ticket nonce")[:16].hex(),
        "ticket_root": fixed_bytes("ticket root").hex(),
        "ticket_aead_nonce": fixed_bytes("ticket aead nonce")[:12].hex(),
        "issued_at_s": TIMESTAMP_S,
        "lifetime_s": LIFETIME_S,
        "timestamp_ns": RESUME_NS,
        "now_ns": RESUME_NS,
        "initiator_ephemeral_private": fixed_bytes("resume e_I").hex(),
        "responder_ephemeral_private": fixed_bytes("resume e_R").hex(),
        "substitute_finished": fixed_bytes("resume substitute finished").hex(),
    }


def _h(value: str) -> bytes:
    return bytes.fromhex(value)


# The ResumeHellos a responder must answer with a substitute or not at all (SPEC 3.6.3).
CASES: list[Json] = [
    {"name": "genuine", "outcome": "genuine reply"},
    {"name": "other ticket keys (restarted responder)", "outcome": "substitute"},
    {"name": "other network key", "outcome": "substitute"},
    {"name": "expired", "now_offset_s": LIFETIME_S + 3600 + 1, "outcome": "substitute"},
    {"name": "wrong binder", "flip_byte_from_end": 1, "outcome": "substitute"},
    {
        "name": "wrong sealed_ts (binder recomputed by the ticket's holder)",
        "flip_byte_from_end": 40,
        "rebind": True,
        "outcome": "substitute",
    },
    {
        "name": "a copy of the genuine ResumeHello (answered alike; it cannot finish)",
        "outcome": "genuine reply",
    },
    {
        "name": "used ticket (another ResumeHello with the ticket, one second later)",
        "second_hello": True,
        "outcome": "substitute",
    },
    {"name": "outside the replay window", "now_offset_s": 700, "outcome": "no reply"},
]


def drive_p2ptls(data: Json, initiator: Identity, responder: Identity) -> Json:
    """Run p2ptls with the inputs of ``data['inputs']`` (and the full handshake's secrets in
    ``data['full_handshake']``); return what the vectors record."""
    given = data["inputs"]
    psk = NetworkKey(_h(given["psk"]))
    master = _h(data["full_handshake"]["master_secret"])
    full = _h(data["full_handshake"]["full_transcript_hash"])
    lifetime = given["lifetime_s"]
    resumption = ks.session_secrets(master, full).resumption
    nonce = _h(given["ticket_nonce"])
    ticket_psk = ks.ticket_psk(resumption, nonce)
    root = _h(given["ticket_root"])
    ticket = TicketAuthority(root=root).seal(
        psk.secret,
        responder.peer_id,
        initiator.record,
        ticket_psk,
        now_s=given["issued_at_s"],
        lifetime_s=lifetime,
        nonce=_h(given["ticket_aead_nonce"]),
    )
    payload = wire.TicketPayload(lifetime, nonce, ticket).encode()
    parsed = wire.parse_ticket_payload_untrusted(payload)
    assert (parsed.ticket, parsed.nonce, parsed.lifetime_s) == (ticket, nonce, lifetime)

    held = SessionTicket(responder.peer_id, ticket, ticket_psk, 1e18)
    e_i = X25519PrivateKey.from_private_bytes(_h(given["initiator_ephemeral_private"]))
    resuming = ResumingInitiator(
        initiator, psk, responder.record, held, timestamp_ns=given["timestamp_ns"], ephemeral=e_i
    )
    hello = resuming.start()
    authority = TicketAuthority(root=root)
    guard = ReplayGuard()

    def answer(
        record: bytes, *, now_ns: int, keys: TicketAuthority, network: NetworkKey = psk
    ) -> tuple[ResponderHandshake, bytes | None]:
        handshake = ResponderHandshake(
            responder,
            network,
            KnownPeers([initiator.record]),
            guard,
            now_ns=now_ns,
            randomness=ScriptedRandomness(_h(given["substitute_finished"])),
            ephemeral=X25519PrivateKey.from_private_bytes(_h(given["responder_ephemeral_private"])),
            tickets=keys,
            ticket_lifetime_s=lifetime,
        )
        try:
            return handshake, handshake.receive_resume_hello_untrusted(record)
        except HandshakeFailed:
            return handshake, None

    now = given["now_ns"]
    cases = []
    genuine: Json = {}
    for case in CASES:
        name = case["name"]
        record = hello
        if case.get("second_hello"):
            record = ResumingInitiator(
                initiator,
                psk,
                responder.record,
                held,
                timestamp_ns=given["timestamp_ns"] + wire.NS_PER_S,
                ephemeral=e_i,
            ).hello_record()
        if "flip_byte_from_end" in case:
            position = len(hello) - case["flip_byte_from_end"]
            record = hello[:position] + bytes([hello[position] ^ 1]) + hello[position + 1 :]
        if case.get("rebind"):
            early = ks.resume_early_secret(psk.secret, ticket_psk)
            binder_key = ks.resume_binder_key(early, responder.peer_id.digest)
            record = record[: -wire.MAC_SIZE] + ks.mac(binder_key, record[: -wire.MAC_SIZE])
        when = now + case.get("now_offset_s", 0) * wire.NS_PER_S
        keys = authority
        network = psk
        if name == "other ticket keys (restarted responder)":
            keys = TicketAuthority(root=fixed_bytes("other ticket root"))
        elif name == "other network key":
            network = NetworkKey(fixed_bytes("other psk"))
        handshake, reply = answer(record, now_ns=when, keys=keys, network=network)
        entry: Json = {**case, "now_ns": when, "reply": None if reply is None else reply.hex()}
        if record != hello:
            entry["resume_hello"] = record.hex()
        cases.append(entry)
        if name == "genuine":
            assert reply is not None
            finish, initiator_result = resuming.receive_reply_untrusted(reply)
            responder_result = handshake.receive_finish_untrusted(finish)
            assert responder_result.resumed and initiator_result.resumed
            assert responder_result.secrets == initiator_result.secrets
            genuine = {
                "resume_reply": reply.hex(),
                "finish": finish.hex(),
                "i2r_traffic_secret": initiator_result.secrets.initiator_to_responder.hex(),
                "r2i_traffic_secret": initiator_result.secrets.responder_to_initiator.hex(),
                "exporter_secret": initiator_result.secrets.exporter.hex(),
                "resumption_secret_after": initiator_result.secrets.resumption.hex(),
                "session_id": initiator_result.transcript_hash.hex(),
            }
    return {
        "resumption_secret": resumption.hex(),
        "ticket_psk": ticket_psk.hex(),
        "ticket": ticket.hex(),
        "ticket_payload": payload.hex(),
        "resume_hello": hello.hex(),
        **genuine,
        "responder_cases": cases,
    }


def build(initiator: Party, responder: Party) -> Json:
    full = reference_handshake(initiator, responder)
    given = inputs()
    data: Json = {
        "description": "SPEC.md section 3.6: a ticket issued after the full handshake of "
        "handshake.json, then a resumed handshake with it (no RSA), and the responder's answers "
        "to ResumeHellos it must refuse. The RSA keys are handshake.json's.",
        "inputs": given,
        "full_handshake": {
            "master_secret": full.schedule.values["master_secret"].hex(),
            "full_transcript_hash": full.schedule.values["full_transcript_hash"].hex(),
        },
    }
    ref = reference_resumption(
        initiator,
        responder,
        psk=_h(given["psk"]),
        master_secret=full.schedule.values["master_secret"],
        full_transcript_hash=full.schedule.values["full_transcript_hash"],
        ticket_nonce=_h(given["ticket_nonce"]),
        ticket_root=_h(given["ticket_root"]),
        ticket_aead_nonce=_h(given["ticket_aead_nonce"]),
        issued_at_s=given["issued_at_s"],
        lifetime_s=given["lifetime_s"],
        timestamp_ns=given["timestamp_ns"],
        e_i_private=_h(given["initiator_ephemeral_private"]),
        e_r_private=_h(given["responder_ephemeral_private"]),
        substitute_finished=_h(given["substitute_finished"]),
    )
    values = ref.schedule.values
    reference = {
        "resumption_secret": values["resumption_secret"].hex(),
        "ticket_psk": values["ticket_psk"].hex(),
        "ticket": ref.ticket.hex(),
        "ticket_payload": ref.ticket_payload.hex(),
        "resume_hello": ref.hello.hex(),
        "resume_reply": ref.reply.hex(),
        "finish": ref.finish.hex(),
        "i2r_traffic_secret": values["i2r_traffic_secret"].hex(),
        "r2i_traffic_secret": values["r2i_traffic_secret"].hex(),
        "exporter_secret": values["resumed_exporter_secret"].hex(),
        "resumption_secret_after": values["resumed_resumption_secret"].hex(),
        "session_id": values["resumed_full_transcript_hash"].hex(),
    }
    driven = drive_p2ptls(data, initiator.identity, responder.identity)
    mismatched = [key for key in reference if reference[key] != driven[key]]
    expected_replies = {
        "genuine reply": ref.reply.hex(),
        "substitute": ref.substitute_reply.hex(),
        "no reply": None,
    }
    for case in driven["responder_cases"]:
        if case["reply"] != expected_replies[case["outcome"]]:
            mismatched.append(f"responder case {case['name']!r}")
    if mismatched:
        raise SystemExit(f"p2ptls disagrees with the reference on: {', '.join(mismatched)}")
    data.update(
        {
            "schedule": ref.schedule.steps,
            "ticket": {
                "plaintext": ref.ticket_plaintext.hex(),
                "plaintext_layout": "id_R (32) | issued_at_s u64 | lifetime_s u32 | "
                "ticket_psk (32) | DER(pk_I)",
                "fields": ref.ticket_fields,
                "bytes": ref.ticket.hex(),
            },
            "ticket_record_plaintext": ref.ticket_payload.hex(),
            "resume_hello": {"fields": ref.hello_fields, "record": ref.hello.hex()},
            "resume_reply": {"fields": ref.reply_fields, "record": ref.reply.hex()},
            "finish": ref.finish.hex(),
            "substitute_reply": ref.substitute_reply.hex(),
            "session": {
                key: reference[key]
                for key in (
                    "i2r_traffic_secret",
                    "r2i_traffic_secret",
                    "exporter_secret",
                    "session_id",
                )
            }
            | {"resumption_secret": reference["resumption_secret_after"]},
            "responder_cases": driven["responder_cases"],
        }
    )
    return data


def generate() -> dict[str, str]:
    initiator, responder = load_or_make_keys(load_existing())
    data = build(initiator, responder)
    return {FILE: json.dumps(data, indent=2) + "\n"}


def main(argv: Sequence[str] | None = None) -> int:
    description = __doc__.splitlines()[0] if __doc__ else None
    return write_or_check(generate(), argv, description)


if __name__ == "__main__":
    raise SystemExit(main())
