"""Datagrams laid back to back for segmentation offload, and the sealing primitive SLLP's session
(:mod:`p2ptls.sllp._session`) writes them with."""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# ``encrypt_into`` (cryptography 45+) seals straight into the send buffer; older versions copy.
_ENCRYPT_INTO = hasattr(AESGCM, "encrypt_into")

EncryptInto = Callable[[bytes, memoryview, memoryview, memoryview], int]


def encrypter(aead: AESGCM) -> EncryptInto:
    """``aead.encrypt_into``: seal ``data`` with ``aad`` into ``buf`` (ciphertext and tag)."""
    if _ENCRYPT_INTO:
        return aead.encrypt_into

    def encrypt_into(  # pragma: no cover - older cryptography
        nonce: bytes, data: memoryview, aad: memoryview, buf: memoryview
    ) -> int:
        buf[:] = aead.encrypt(nonce, bytes(data), bytes(aad))
        return len(buf)

    return encrypt_into  # pragma: no cover


class DatagramTrain:
    """Datagrams laid back to back in one buffer: ``count`` of them, each ``segment_size`` bytes
    except the last (which may be shorter). Hand it to UDP segmentation offload as it is, or send
    the pieces from :meth:`datagrams`."""

    __slots__ = ("count", "data", "segment_size")

    def __init__(self, data: bytes | bytearray | memoryview, segment_size: int, count: int) -> None:
        self.data = data
        self.segment_size = segment_size
        self.count = count

    def __len__(self) -> int:
        return len(self.data)

    def datagrams(self) -> list[bytes]:
        """Each datagram as its own ``bytes``."""
        data = self.data
        size = self.segment_size
        return [bytes(data[offset : offset + size]) for offset in range(0, len(data), size)]

    def __repr__(self) -> str:
        return f"<DatagramTrain {self.count} x {self.segment_size} ({len(self.data)} bytes)>"


def datagram_train(buffer: memoryview, start: int, end: int, segment: int) -> DatagramTrain:
    """The datagrams in ``buffer[start:end]``, each ``segment`` bytes but the last."""
    return DatagramTrain(buffer[start:end], segment, -(-(end - start) // segment))
