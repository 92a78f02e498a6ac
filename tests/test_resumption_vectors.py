"""p2ptls against the resumption vectors (``protocol/vectors/resumption.json``, SPEC 3.6).

The vectors come from the reference implementation of SPEC.md alone
(:func:`protocol.handshake_reference.reference_resumption`); here p2ptls is driven with the
inputs stored in the JSON and every byte is compared: the resumption secret and ticket PSK, the
sealed ticket and the TICKET record's plaintext, the ResumeHello, the ResumeReply, the Finish, the
resumed session's secrets, and the responder's answer to each ResumeHello it must refuse.
"""

from __future__ import annotations

from p2ptls import _keyschedule as ks
from p2ptls import _wire as wire
from protocol import generate_resumption_vectors as gen
from tests.vector_files import VECTORS, h, identities, load, schedule

FILE = "resumption.json"


def test_the_full_handshake_is_handshake_json() -> None:
    data = load(FILE)
    assert h(data["full_handshake"]["master_secret"]) == schedule()["master_secret"]
    full = h(data["full_handshake"]["full_transcript_hash"])
    assert full == schedule()["full_transcript_hash"]


def test_p2ptls_reproduces_every_value() -> None:
    data = load(FILE)
    driven = gen.drive_p2ptls(data, *identities())
    assert driven["ticket"] == data["ticket"]["bytes"]
    assert driven["ticket_payload"] == data["ticket_record_plaintext"]
    assert driven["resume_hello"] == data["resume_hello"]["record"]
    assert driven["resume_reply"] == data["resume_reply"]["record"]
    assert driven["finish"] == data["finish"]
    session = data["session"]
    for key in ("i2r_traffic_secret", "r2i_traffic_secret", "exporter_secret", "session_id"):
        assert driven[key] == session[key], key
    assert driven["resumption_secret_after"] == session["resumption_secret"]
    steps = {step["name"]: step["output"] for step in data["schedule"]}
    assert driven["resumption_secret"] == steps["resumption_secret"]
    assert driven["ticket_psk"] == steps["ticket_psk"]
    assert driven["responder_cases"] == data["responder_cases"]


def test_key_schedule_steps() -> None:
    data = load(FILE)
    steps = {step["name"]: h(step["output"]) for step in data["schedule"]}
    psk = h(data["inputs"]["psk"])
    early = ks.resume_early_secret(psk, steps["ticket_psk"])
    assert early == steps["resume_early"]
    _, responder = identities()
    assert ks.resume_binder_key(early, responder.peer_id.digest) == steps["resume_binder_key"]
    key = ks.ticket_key(psk, h(data["inputs"]["ticket_root"]), int.from_bytes(steps["key_epoch"]))
    assert key == steps["ticket_key"]
    assert ks.resume_master_secret(steps["handshake_secret"]) == steps["resumed_master_secret"]


def test_layouts_match_the_spec() -> None:
    data = load(FILE)
    hello = h(data["resume_hello"]["record"])
    ticket = h(data["ticket"]["bytes"])
    assert len(ticket) == 108 + 294  # an RSA-2048 initiator's ticket
    assert len(hello) == 104 + len(ticket) == 4 + wire.resume_hello_body_size(len(ticket))
    offsets = {f["name"]: f["offset"] for f in data["resume_hello"]["fields"]}
    assert offsets["ticket"] == 48 and offsets["sealed_timestamp"] == 48 + len(ticket)
    assert offsets["binder"] == 72 + len(ticket)
    assert len(h(data["resume_reply"]["record"])) == 69
    parsed = wire.parse_resume_hello_untrusted(hello[wire.HEADER_SIZE :])
    assert parsed.ticket == ticket
    payload = wire.parse_ticket_payload_untrusted(h(data["ticket_record_plaintext"]))
    assert payload.ticket == ticket and payload.lifetime_s == data["inputs"]["lifetime_s"]


def test_generator_reproduces_the_file() -> None:
    rendered = gen.generate()
    assert rendered[gen.FILE] == (VECTORS / gen.FILE).read_text(encoding="utf-8")
