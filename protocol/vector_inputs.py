"""The fixed inputs of the core vectors (``protocol/vectors/*.json`` but ``mux``, ``sllp`` and
``state``), shared by the reference implementation and the code that drives p2ptls with them.

A PSK, ``k_I``, ``k_R``, the OAEP seeds and the other 32-byte values are SHA-256 of a name; the
X25519 keys are those of RFC 7748 section 6.1; the timestamp is not a whole second, and the
responder's clock equals it. The RSA-2048 keys are not here: :mod:`protocol.generate_vectors`
reads them back from ``handshake.json``. This module imports nothing from p2ptls.
"""

from __future__ import annotations

import hashlib
from typing import Any

Json = dict[str, Any]


def fixed_bytes(name: str) -> bytes:
    """32 reproducible bytes: SHA-256("p2ptls1 test vector " + name)."""
    return hashlib.sha256(b"p2ptls1 test vector " + name.encode("ascii")).digest()


PSK = fixed_bytes("psk")
K_INITIATOR = fixed_bytes("k_I")
K_RESPONDER = fixed_bytes("k_R")
SEED_HELLO = fixed_bytes("oaep seed hello")
SEED_REPLY = fixed_bytes("oaep seed reply")
TIMESTAMP_NS = 1_767_225_600_123_456_789  # 2026-01-01T00:00:00.123456789Z
TIMESTAMP_S = TIMESTAMP_NS // 10**9  # what travels in the clear
COARSE_NS = TIMESTAMP_S * 10**9  # the clear timestamp, as the window check sees it
NOW_NS = TIMESTAMP_NS  # the responder's clock when the Hello arrives
OTHER_PSK = fixed_bytes("other psk")
OTHER_RESPONDER_ID = fixed_bytes("other responder id")  # a member the Hello was not made for
# The responder's randomness for a substitute Reply: e_R, then the sealed C_R (k' + 16) and
# finished_R (32) as random bytes.
SUBSTITUTE_SEALED = hashlib.sha256(b"p2ptls1 test vector substitute").digest() * 9
SUBSTITUTE_FINISHED = fixed_bytes("substitute finished")
# RFC 7748 section 6.1: Alice is the initiator's ephemeral, Bob the responder's.
EPHEMERAL_INITIATOR = bytes.fromhex(
    "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
)
EPHEMERAL_RESPONDER = bytes.fromhex(
    "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
)
RFC7748_SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
PING_INITIATOR = bytes(range(8))
PING_RESPONDER = bytes(range(8, 16))
MESSAGE_LENGTH = 40_000
RECORD_SIZE = 16_384
INITIATOR_KEY_UPDATE_AFTER = 2
EXPORTER_LABEL = "example"
EXPORTER_CONTEXT = b"p2ptls vector context"
EXPORTER_LENGTH = 32


def fragment_message() -> bytes:
    """The fragmented message: byte ``i`` is ``i mod 251``."""
    return bytes(i % 251 for i in range(MESSAGE_LENGTH))
