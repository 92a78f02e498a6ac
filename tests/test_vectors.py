"""The core known-answer vectors (``protocol/vectors/*.json`` but ``mux``, ``sllp`` and
``state``): their inputs are consistent, and the generator reproduces every file exactly.

The vectors and their layout are described in ``protocol/SPEC.md`` and produced by
``protocol/generate_vectors.py``. The tests of p2ptls against them, one file per part, take every
input and expectation from the JSON (:mod:`tests.vector_files`), drive the real classes with the
fixed inputs and compare every byte: ``test_handshake_vectors.py`` (OAEP, flights, sealed key,
binder, ``C_R``, tampering), ``test_responder_vectors.py`` (refused Hellos and substitute
Replies), ``test_key_schedule_vectors.py``, ``test_records_vectors.py`` (record layer and
session), ``test_fragmentation_vectors.py`` (fragmentation and reassembly) and
``test_replay_vectors.py``.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol import generate_vectors
from tests.vector_files import VECTORS, h, identities, inputs, schedule


def test_inputs_are_consistent() -> None:
    ini_id, res_id = identities()
    for role, identity in (("initiator", ini_id), ("responder", res_id)):
        assert identity.key_size == 2048
        assert identity.record.public_key_der.hex() == inputs()[role]["public_key_der"]
        assert identity.peer_id.hex() == inputs()[role]["peer_id"]
        assert hashlib.sha256(identity.record.public_key_der).hexdigest() == identity.peer_id.hex()
    for role in ("initiator", "responder"):
        private = X25519PrivateKey.from_private_bytes(h(inputs()[f"{role}_ephemeral_private"]))
        assert private.public_key().public_bytes_raw().hex() == inputs()[f"{role}_ephemeral_public"]
    # RFC 7748 section 6.1 shared secret
    assert schedule()["x25519_shared"].hex() == (
        "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    )


def test_generator_reproduces_the_files() -> None:
    """Re-running the generator (with the stored keys) gives the committed JSON exactly."""
    rendered = generate_vectors.generate(VECTORS)
    assert sorted(rendered) == sorted(generate_vectors.FILES)
    for name, text in rendered.items():
        assert text == (VECTORS / name).read_text(encoding="utf-8"), name
