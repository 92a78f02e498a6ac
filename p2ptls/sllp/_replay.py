"""An anti-replay sliding window in the style of RFC 6479.

Theory of operation
-------------------
The window is a ring of 64-bit blocks (a Python list of ints). Bit ``n % 64`` of block
``(n // 64) % blocks`` records whether sequence number ``n`` has been accepted. ``top`` is the
highest accepted number. A number above ``top`` is new; one at least ``size`` (the ring's bits less
one block) below ``top`` is too old; anything between is new unless its bit is set. Moving ``top``
forward clears only the blocks it passes over, so no bitmap is ever shifted.

The receiver calls :meth:`check` before it decrypts (so stale and replayed datagrams cost nothing)
and :meth:`update` only after authentication succeeds, so a forged datagram with a huge sequence
number and a bad tag never moves the window.
"""

from __future__ import annotations

DEFAULT_WINDOW_BITS = 4096
_BLOCK_BITS = 64


class ReplayWindow:
    """Remembers which recent sequence numbers were accepted."""

    __slots__ = ("blocks", "mask", "size", "top")

    def __init__(self, bits: int = DEFAULT_WINDOW_BITS) -> None:
        blocks = bits // _BLOCK_BITS
        if blocks < 2 or blocks & (blocks - 1) or bits % _BLOCK_BITS:
            raise ValueError("window bits must be a power of two, at least 128")
        self.blocks = [0] * blocks
        """The ring (read-only outside this class, but for a receiver's inlined fast path)."""
        self.mask = blocks - 1
        self.size = bits - _BLOCK_BITS
        """How far below ``top`` a number may be and still be accepted (4032 by default)."""
        self.top = 0
        """The highest accepted number (0 before any)."""

    def check(self, number: int) -> bool:
        """Whether ``number`` is new (not seen, not too old). Does not change the window."""
        top = self.top
        if number > top:
            return True
        if top - number >= self.size:
            return False
        return not (self.blocks[(number >> 6) & self.mask] >> (number & 63)) & 1

    def update(self, number: int) -> None:
        """Mark ``number`` accepted (after authentication); numbers older than the window are
        ignored."""
        top = self.top
        blocks = self.blocks
        mask = self.mask
        if number > top:
            current = top >> 6
            diff = (number >> 6) - current
            if diff > mask:
                diff = mask + 1
            for step in range(1, diff + 1):
                blocks[(current + step) & mask] = 0
            self.top = number
        elif top - number >= self.size:
            return
        blocks[(number >> 6) & mask] |= 1 << (number & 63)

    def __repr__(self) -> str:
        return f"<ReplayWindow top={self.top} size={self.size}>"
