"""One logical stream's state inside the multiplexer: its credit in each direction, its
half-closes and the messages it holds (see :mod:`p2ptls._mux`, which alone changes it)."""

from __future__ import annotations

import collections

import attrs

from . import _mux_wire as mw


@attrs.define
class StreamState:
    local: bool
    """Opened by us."""
    window: int
    """The credit this side keeps granting the peer on this stream (it grows, see
    :meth:`Multiplexer._give_back`)."""
    accepted: bool = False
    send_credit: int = mw.INITIAL_WINDOW
    receive_left: int = mw.INITIAL_WINDOW
    """Credit the peer still holds for sending to us."""
    to_return: int = 0
    """Bytes consumed since the last WINDOW frame."""
    sent_fin: bool = False
    received_fin: bool = False
    reset: bool = False
    """Aborted, by either side."""
    peer_reset: bool = False
    # Message channel: credit held per finished, unread message; the message being assembled.
    finished: collections.deque[tuple[int, int]] = attrs.field(factory=collections.deque)
    """(credit held, budget charged) of each finished message not yet taken."""
    assembling: int = 0
    assembling_held: int = 0
    assembling_charged: int = 0
    message_open: bool = False
    sending_message: bool = False
