"""Generate the SLLP known-answer vectors in ``protocol/vectors/sllp.json``.

Run from the repository root::

    .venv/bin/python -m protocol.generate_sllp_vectors          # (re)write the JSON file
    .venv/bin/python -m protocol.generate_sllp_vectors --check  # exit 1 if the file is stale

Every value is computed twice: once by a small *reference* implementation written from
``protocol/SPEC-sllp.md`` with only ``struct``, the ``cryptography`` AES-GCM primitive and the
handshake reference's HKDF (``protocol.handshake_reference``, which uses nothing of p2ptls) (this
module), and once by p2ptls's SLLP session (``p2ptls.sllp``). The generator refuses to write
anything if the two disagree, so the vectors pin the code *and* the specification.

Inputs are fixed: the secure stream's exporter secret (standing for a completed handshake), an
offer and an answer, the messages, and the stream id of a host's logical stream (for the secrets
of a channel set up on one). Nothing is random.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from p2ptls.sllp import Message, SllpConfig
from p2ptls.sllp import _wire as wire
from p2ptls.sllp._keys import direction_secrets
from p2ptls.sllp.testing import logical_stream_exporter, make_offer, sessions_from
from protocol.handshake_reference import expand_label as ref_expand_label
from protocol.vector_files import write_or_check

OUTPUT = Path(__file__).resolve().parent / "vectors" / "sllp.json"

EXPORTER_SECRET = bytes(range(32))
OFFERER_CONFIG = SllpConfig(max_datagram_payload=300, max_message_size=65536)
ANSWERER_CONFIG = SllpConfig(max_datagram_payload=1200, max_message_size=1 << 20, rekey_after=16)
SHORT_MESSAGE = b"hello, sllp"
LONG_MESSAGE = bytes(i % 251 for i in range(600))  # 3 fragments of at most 249 bytes
CLOSE_CODE, CLOSE_REASON = 16, "bye"
REKEY_MESSAGES = 17  # answerer -> offerer: the 17th datagram is the first of key epoch 1
LOGICAL_STREAM_ID = 3  # the connection initiator's second logical stream


# -- the reference implementation (from SPEC-sllp.md) ----------------------------------------------


def ref_exporter(exporter_secret: bytes, label: str, context: bytes, length: int) -> bytes:
    derived = ref_expand_label(exporter_secret, label, b"", 32)
    return ref_expand_label(derived, "exporter", hashlib.sha256(context).digest(), length)


def ref_logical_stream_exporter(
    exporter_secret: bytes, stream_id: int, label: str, context: bytes, length: int
) -> bytes:
    """A logical stream's exporter: the connection's, its context prefixed by the stream."""
    bound = b"p2ptls-mux/1" + struct.pack(">I", stream_id) + context
    return ref_exporter(exporter_secret, label, bound, length)


def ref_offer(kind: int, cid: int, host_v6: bytes, port: int, *limits: int) -> bytes:
    """``limits``: max_datagram_payload, max_message_size."""
    return b"SLLP" + struct.pack(">BBIQ16sHHI", 1, kind, 1, cid, host_v6, port, *limits)


def ref_epochs(secret: bytes, count: int) -> list[dict[str, Any]]:
    out = []
    for epoch in range(count):
        out.append(
            {
                "epoch": epoch,
                "secret": secret.hex(),
                "key": ref_expand_label(secret, "sllp key", b"", 32).hex(),
                "iv": ref_expand_label(secret, "sllp iv", b"", 12).hex(),
            }
        )
        secret = ref_expand_label(secret, "sllp key update", b"", 32)
    return out


def ref_datagram(epoch: dict[str, Any], dcid: int, sequence: int, body: bytes) -> bytes:
    header = struct.pack(">BBQQ", 1, int(epoch["epoch"]) & 1, dcid, sequence)
    iv = bytes.fromhex(epoch["iv"])
    nonce = bytes(a ^ b for a, b in zip(iv, sequence.to_bytes(12, "big"), strict=True))
    return header + AESGCM(bytes.fromhex(epoch["key"])).encrypt(nonce, body, header)


def ref_body(body_type: int, message_id: int, index: int, count: int, payload: bytes) -> bytes:
    return struct.pack(">BQII", body_type, message_id, index, count) + payload


def reference() -> dict[str, Any]:
    offerer_cid, answerer_cid = 0x0102030405060708, 0x1112131415161718
    offer = ref_offer(
        1, offerer_cid, bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1]), 40001, 300, 65536
    )
    v6 = bytes.fromhex("20010db8000000000000000000000002")
    answer = ref_offer(2, answerer_cid, v6, 40002, 1200, 1 << 20)
    context = offer + answer
    o2a = ref_exporter(EXPORTER_SECRET, "sllp1 offerer to answerer", context, 32)
    a2o = ref_exporter(EXPORTER_SECRET, "sllp1 answerer to offerer", context, 32)
    o2a_epochs, a2o_epochs = ref_epochs(o2a, 2), ref_epochs(a2o, 2)
    fragment = 300 - 51
    datagrams = []

    def add(direction: str, sequence: int, body: bytes, what: str) -> None:
        epochs, dcid = (
            (o2a_epochs, answerer_cid) if direction == "o2a" else (a2o_epochs, offerer_cid)
        )
        epoch = epochs[0] if direction == "o2a" or sequence < 16 else epochs[1]
        datagrams.append(
            {
                "direction": direction,
                "description": what,
                "sequence": sequence,
                "key_epoch": int(epoch["epoch"]),
                "body": body.hex(),
                "datagram": ref_datagram(epoch, dcid, sequence, body).hex(),
            }
        )

    add("o2a", 0, ref_body(1, 0, 0, 1, SHORT_MESSAGE), "message 0, one fragment")
    for index in range(3):
        piece = LONG_MESSAGE[index * fragment : (index + 1) * fragment]
        add("o2a", 1 + index, ref_body(1, 1, index, 3, piece), f"message 1, fragment {index} of 3")
    add("o2a", 4, ref_body(2, 0, 0, 0, b""), "keep-alive")
    close = struct.pack(">H", CLOSE_CODE) + CLOSE_REASON.encode()
    add("o2a", 5, ref_body(3, 0, 0, 0, close), f"close, code {CLOSE_CODE}")
    add("a2o", 16, ref_body(1, 16, 0, 1, b"n16"), "answerer message 16: key epoch 1, phase 1")
    logical = {
        "stream_id": LOGICAL_STREAM_ID,
        "offerer_to_answerer": ref_logical_stream_exporter(
            EXPORTER_SECRET, LOGICAL_STREAM_ID, "sllp1 offerer to answerer", context, 32
        ).hex(),
        "answerer_to_offerer": ref_logical_stream_exporter(
            EXPORTER_SECRET, LOGICAL_STREAM_ID, "sllp1 answerer to offerer", context, 32
        ).hex(),
    }
    return {
        "description": (
            "SLLP known answers (SPEC-sllp.md). The exporter secret stands for a completed "
            "p2ptls handshake: Exporter(label, context, L) = ExpandLabel(ExpandLabel(exporter, "
            'label, "", 32), "exporter", SHA-256(context), L). All datagrams but the last go '
            "offerer to answerer in order; the last is the 17th datagram answerer to offerer "
            "(rekey_after = 16), the first under key epoch 1. derived.logical_stream: the epoch-0 "
            "secrets of the same offer and answer on a host's logical stream (the exporter "
            "secret is then the connection's): Exporter(label, 'p2ptls-mux/1' | stream_id (u32) "
            "| offer | answer, 32)."
        ),
        "inputs": {
            "exporter_secret": EXPORTER_SECRET.hex(),
            "offer": offer.hex(),
            "answer": answer.hex(),
            "offerer": {"max_datagram_payload": 300, "max_message_size": 65536},
            "answerer": {
                "max_datagram_payload": 1200,
                "max_message_size": 1 << 20,
                "rekey_after": 16,
            },
            "messages": {
                "short": SHORT_MESSAGE.hex(),
                "long": LONG_MESSAGE.hex(),
                "close": {"code": CLOSE_CODE, "reason": CLOSE_REASON},
            },
        },
        "derived": {
            "datagram_size": 300,
            "fragment_size": fragment,
            "offerer_to_answerer": o2a_epochs,
            "answerer_to_offerer": a2o_epochs,
            "logical_stream": logical,
        },
        "datagrams": datagrams,
    }


# -- the same through p2ptls -----------------------------------------------------------------------


def implementation(expected: dict[str, Any]) -> dict[str, Any]:
    """Rebuild the datagrams with p2ptls.sllp and check that the receiver accepts them."""
    offer = make_offer(OFFERER_CONFIG)
    answer = make_offer(ANSWERER_CONFIG, kind=wire.KIND_ANSWER)
    assert wire.encode_offer(offer).hex() == expected["inputs"]["offer"]
    assert wire.encode_offer(answer).hex() == expected["inputs"]["answer"]
    offerer, answerer = sessions_from(
        EXPORTER_SECRET,
        offer,
        answer,
        offerer_config=OFFERER_CONFIG,
        answerer_config=ANSWERER_CONFIG,
    )
    o2a: list[bytes | bytearray | memoryview] = [
        *offerer.send_message(SHORT_MESSAGE, 0.0).datagrams(),
        *offerer.send_message(LONG_MESSAGE, 0.0).datagrams(),
    ]
    offerer.handle_timers(OFFERER_CONFIG.keepalive_interval)  # a keep-alive...
    offerer.close(CLOSE_CODE, CLOSE_REASON)  # ...and the close, pulled together
    o2a += [train.data for train in offerer.datagrams_to_send()]
    a2o = [answerer.send_message(b"n%02d" % i, 0.0).data for i in range(REKEY_MESSAGES)]
    produced = [bytes(d).hex() for d in o2a] + [bytes(a2o[16]).hex()]
    delivered = []
    for datagram in o2a:
        for event in answerer.receive_datagram_untrusted(bytes(datagram), 1.0):
            if isinstance(event, Message):
                delivered.append(event.data)
    assert delivered == [SHORT_MESSAGE, LONG_MESSAGE], "the answerer did not deliver the messages"
    assert answerer.closed is not None and answerer.closed.code == CLOSE_CODE
    export = logical_stream_exporter(EXPORTER_SECRET, LOGICAL_STREAM_ID)
    secrets = direction_secrets(export, wire.encode_offer(offer), wire.encode_offer(answer))
    return {"datagrams": produced, "logical_stream": [secret.hex() for secret in secrets]}


def build() -> dict[str, Any]:
    expected = reference()
    produced = implementation(expected)
    reference_datagrams = [d["datagram"] for d in expected["datagrams"]]
    logical = expected["derived"]["logical_stream"]
    reference_logical = [logical["offerer_to_answerer"], logical["answerer_to_offerer"]]
    if produced["datagrams"] != reference_datagrams or produced["logical_stream"] != (
        reference_logical
    ):
        raise SystemExit("p2ptls.sllp and the reference implementation disagree")
    return expected


def main(argv: Sequence[str] | None = None) -> int:
    return write_or_check({OUTPUT.name: json.dumps(build(), indent=2) + "\n"}, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
