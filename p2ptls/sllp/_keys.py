"""SLLP's key schedule: per-direction secrets from the stream's exporter, and key epochs.

Theory of operation
-------------------
The two SLLP directions get separate secrets from the secure stream's exporter, each bound to the
exact offer and answer bytes::

    offerer→answerer = Exporter("sllp1 offerer to answerer", offer | answer, 32)
    answerer→offerer = Exporter("sllp1 answerer to offerer", offer | answer, 32)

A direction's traffic secret for key epoch 0 is its exported secret; epoch ``n + 1`` is
``ExpandLabel(secret_n, "sllp key update", "", 32)``. Each epoch's AES-256-GCM key and IV are
``ExpandLabel(secret_n, "sllp key", "", 32)`` and ``ExpandLabel(secret_n, "sllp iv", "", 12)``.
(``ExpandLabel`` is p2ptls's, with its "p2ptls1 " label prefix.) Both sides compute the same chain,
so the sender alone decides when to move on: it sets the key-phase bit to the new epoch's parity and
the receiver follows (see ``_session``). A secret is dropped as soon as its successor is derived.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._errors import LocalProtocolError
from .._keyschedule import expand_label
from ._wire import IV_SIZE, KEY_SIZE

EXPORT_LABEL_OFFERER_TO_ANSWERER = "sllp1 offerer to answerer"
EXPORT_LABEL_ANSWERER_TO_OFFERER = "sllp1 answerer to offerer"
SECRET_SIZE = 32
LABEL_KEY = "sllp key"
LABEL_IV = "sllp iv"
LABEL_KEY_UPDATE = "sllp key update"

Exporter = Callable[[str, bytes, int], bytes]
"""The stream's ``export_keying_material``: ``(label, context, length) -> bytes``."""


def direction_secrets(export: Exporter, offer: bytes, answer: bytes) -> tuple[bytes, bytes]:
    """``(offerer→answerer, answerer→offerer)`` epoch-0 secrets for this offer and answer."""
    context = offer + answer
    return (
        export(EXPORT_LABEL_OFFERER_TO_ANSWERER, context, SECRET_SIZE),
        export(EXPORT_LABEL_ANSWERER_TO_OFFERER, context, SECRET_SIZE),
    )


def next_secret(secret: bytes) -> bytes:
    """The traffic secret of the next key epoch."""
    return expand_label(secret, LABEL_KEY_UPDATE, b"", SECRET_SIZE)


def key_and_iv(secret: bytes) -> tuple[bytes, bytes]:
    """The AES-256-GCM key and the 12-byte IV of one epoch."""
    return expand_label(secret, LABEL_KEY, b"", KEY_SIZE), expand_label(
        secret, LABEL_IV, b"", IV_SIZE
    )


class EpochKeys:
    """One direction's keys for one epoch: the AEAD, the IV as an integer, and the secret."""

    __slots__ = ("aead", "epoch", "iv", "phase", "secret")

    def __init__(self, secret: bytes, epoch: int) -> None:
        key, iv = key_and_iv(secret)
        self.secret: bytes | None = secret
        self.epoch = epoch
        self.phase = epoch & 1
        self.aead = AESGCM(key)
        self.iv = int.from_bytes(iv, "big")

    def successor(self) -> EpochKeys:
        """The next epoch's keys. This object forgets its secret (it is needed only once)."""
        if self.secret is None:
            raise LocalProtocolError("this epoch's secret was already used")
        following = EpochKeys(next_secret(self.secret), self.epoch + 1)
        self.secret = None
        return following

    def __repr__(self) -> str:
        return f"<EpochKeys epoch={self.epoch}>"
