"""Known-answer tests: p2ptls.sllp, byte for byte, against ``protocol/vectors/sllp.json``.

The layout is described in ``protocol/SPEC-sllp.md`` and produced by
``protocol/generate_sllp_vectors.py``. These tests read the JSON and drive the real code: the
offer/answer codec, the key schedule, the sending and the receiving session.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from p2ptls import _keyschedule as ks
from p2ptls.sllp import KeysUpdated, Message, SllpConfig
from p2ptls.sllp import _keys as keys
from p2ptls.sllp import _wire as wire
from p2ptls.sllp.testing import logical_stream_exporter, sessions_from
from protocol import generate_sllp_vectors

VECTORS = Path(__file__).resolve().parent.parent / "protocol" / "vectors" / "sllp.json"


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    return json.loads(VECTORS.read_text())  # type: ignore[no-any-return]


def _configs(vectors: dict[str, Any]) -> tuple[SllpConfig, SllpConfig]:
    inputs = vectors["inputs"]
    return SllpConfig(**inputs["offerer"]), SllpConfig(**inputs["answerer"])


def _sessions(vectors: dict[str, Any]) -> Any:
    inputs = vectors["inputs"]
    offer = wire.parse_offer_untrusted(bytes.fromhex(inputs["offer"]), wire.KIND_OFFER)
    answer = wire.parse_offer_untrusted(bytes.fromhex(inputs["answer"]), wire.KIND_ANSWER)
    offerer_config, answerer_config = _configs(vectors)
    return sessions_from(
        bytes.fromhex(inputs["exporter_secret"]),
        offer,
        answer,
        offerer_config=offerer_config,
        answerer_config=answerer_config,
    )


def test_offer_and_answer_decode_and_re_encode(vectors: dict[str, Any]) -> None:
    inputs = vectors["inputs"]
    offer = wire.parse_offer_untrusted(bytes.fromhex(inputs["offer"]), wire.KIND_OFFER)
    answer = wire.parse_offer_untrusted(bytes.fromhex(inputs["answer"]), wire.KIND_ANSWER)
    assert offer.address == ("192.0.2.1", 40001) and answer.address == ("2001:db8::2", 40002)
    assert (offer.max_datagram_payload, answer.max_datagram_payload) == (300, 1200)
    assert wire.encode_offer(offer).hex() == inputs["offer"]
    assert wire.encode_offer(answer).hex() == inputs["answer"]


def test_key_schedule(vectors: dict[str, Any]) -> None:
    inputs = vectors["inputs"]
    exporter = bytes.fromhex(inputs["exporter_secret"])

    def export(label: str, context: bytes, length: int) -> bytes:
        return ks.export_keying_material(exporter, label, context, length)

    o2a, a2o = keys.direction_secrets(
        export, bytes.fromhex(inputs["offer"]), bytes.fromhex(inputs["answer"])
    )
    derived = vectors["derived"]
    pairs = ((o2a, derived["offerer_to_answerer"]), (a2o, derived["answerer_to_offerer"]))
    for first, epochs in pairs:
        secret = first
        for expected in epochs:
            key, iv = keys.key_and_iv(secret)
            got = (secret.hex(), key.hex(), iv.hex())
            assert got == (expected["secret"], expected["key"], expected["iv"])
            secret = keys.next_secret(secret)


def test_key_schedule_on_a_logical_stream(vectors: dict[str, Any]) -> None:
    """A channel set up on a host's logical stream: the stream's exporter binds the secrets to
    the stream id (other ids give other secrets)."""
    inputs, logical = vectors["inputs"], vectors["derived"]["logical_stream"]
    exporter = bytes.fromhex(inputs["exporter_secret"])
    offer, answer = bytes.fromhex(inputs["offer"]), bytes.fromhex(inputs["answer"])
    export = logical_stream_exporter(exporter, logical["stream_id"])
    o2a, a2o = keys.direction_secrets(export, offer, answer)
    assert (o2a.hex(), a2o.hex()) == (
        logical["offerer_to_answerer"],
        logical["answerer_to_offerer"],
    )
    other = logical_stream_exporter(exporter, logical["stream_id"] + 2)
    assert keys.direction_secrets(other, offer, answer)[0] != o2a
    assert o2a.hex() != vectors["derived"]["offerer_to_answerer"][0]["secret"]


def test_datagrams_are_reproduced_byte_for_byte(vectors: dict[str, Any]) -> None:
    offerer, answerer = _sessions(vectors)
    messages = vectors["inputs"]["messages"]
    produced = [
        *offerer.send_message(bytes.fromhex(messages["short"]), 0.0).datagrams(),
        *offerer.send_message(bytes.fromhex(messages["long"]), 0.0).datagrams(),
    ]
    offerer.handle_timers(offerer.config.keepalive_interval)
    offerer.close(messages["close"]["code"], messages["close"]["reason"])
    produced += [bytes(train.data) for train in offerer.datagrams_to_send()]
    a2o = [answerer.send_message(b"n%02d" % i, 0.0).data for i in range(17)]
    produced.append(bytes(a2o[16]))
    assert [d.hex() for d in produced] == [v["datagram"] for v in vectors["datagrams"]]


def test_datagrams_open_with_the_derived_keys(vectors: dict[str, Any]) -> None:
    derived = vectors["derived"]
    for vector in vectors["datagrams"]:
        datagram = bytes.fromhex(vector["datagram"])
        header = wire.parse_header_untrusted(datagram)
        assert header.sequence == vector["sequence"]
        assert header.key_phase == vector["key_epoch"] & 1
        direction = "offerer_to_answerer" if vector["direction"] == "o2a" else "answerer_to_offerer"
        epoch = derived[direction][vector["key_epoch"]]
        iv = int.from_bytes(bytes.fromhex(epoch["iv"]), "big")
        body = AESGCM(bytes.fromhex(epoch["key"])).decrypt(
            wire.nonce(iv, header.sequence),
            datagram[wire.HEADER_SIZE :],
            datagram[: wire.HEADER_SIZE],
        )
        assert body.hex() == vector["body"]
        parsed = wire.parse_body_untrusted(body)
        fields = (parsed.type, parsed.message_id, parsed.fragment_index, parsed.fragment_count)
        assert fields == _described_fields(vector["description"]), vector["description"]
        assert wire.encode_body(*fields, parsed.payload) == body
        assert len(datagram) <= derived["datagram_size"]


def _described_fields(description: str) -> tuple[int, int, int, int]:
    """``(type, message id, fragment index, fragment count)`` as a vector's description says."""
    if description == "keep-alive":
        return (wire.TYPE_KEEPALIVE, 0, 0, 0)
    if description.startswith("close"):
        return (wire.TYPE_CLOSE, 0, 0, 0)
    found = re.search(r"message (\d+)(?:, fragment (\d+) of (\d+)|, one fragment|:)", description)
    assert found is not None, description
    message_id, index, count = found.groups()
    if index is None:
        return (wire.TYPE_DATA, int(message_id), 0, 1)
    return (wire.TYPE_DATA, int(message_id), int(index), int(count))


def test_the_receivers_accept_the_vectors(vectors: dict[str, Any]) -> None:
    offerer, answerer = _sessions(vectors)
    messages = vectors["inputs"]["messages"]
    for vector in vectors["datagrams"]:
        receiver = answerer if vector["direction"] == "o2a" else offerer
        receiver.receive_datagram_untrusted(bytes.fromhex(vector["datagram"]), 1.0)
    delivered = [e.data for e in answerer.take_events() if isinstance(e, Message)]
    assert delivered == [bytes.fromhex(messages["short"]), bytes.fromhex(messages["long"])]
    assert answerer.closed is not None and answerer.closed.code == messages["close"]["code"]
    assert answerer.closed.reason == messages["close"]["reason"] and not answerer.has_keys
    events = offerer.take_events()
    assert KeysUpdated("receive", 1) in events
    assert [(e.message_id, e.data) for e in events if isinstance(e, Message)] == [(16, b"n16")]


def test_generator_agrees_with_the_file() -> None:
    assert generate_sllp_vectors.main(["--check"]) == 0
