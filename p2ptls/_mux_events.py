"""What the multiplexer reports (sans-IO events, as h11's ``_events.py``).

:meth:`~p2ptls._mux.Multiplexer.receive_data_untrusted` returns these, in the order the frames
that caused them arrived; the trio layer (:mod:`p2ptls.connections`) files each with the logical
stream it is for.
"""

from __future__ import annotations

import attrs

from ._mux_wire import GoAwayCode, RefuseCode, ResetCode


@attrs.frozen
class StreamOpened:
    """The peer opened a stream: accept or refuse it."""

    stream_id: int
    protocol: str


@attrs.frozen
class StreamAccepted:
    stream_id: int


@attrs.frozen
class OpenRefused:
    """The peer refused a stream we opened (it is gone)."""

    stream_id: int
    code: RefuseCode


@attrs.frozen
class DataReceived:
    stream_id: int
    data: bytes
    message: bool
    """For the message channel (else the byte stream)."""
    end: bool
    """The last fragment of a message."""


@attrs.frozen
class StreamEnded:
    """The peer finished its direction of the stream (FIN)."""

    stream_id: int


@attrs.frozen
class CreditAvailable:
    """The peer granted more credit: a blocked sender may go on."""

    stream_id: int


@attrs.frozen
class StreamAborted:
    """The stream was aborted, by the peer or (``by_peer=False``) by us for breaking a limit."""

    stream_id: int
    code: ResetCode
    by_peer: bool


@attrs.frozen
class PongReceived:
    payload: bytes


@attrs.frozen
class GoAwayReceived:
    """The peer opens no more streams and accepts none above ``last_stream_id``."""

    last_stream_id: int
    code: GoAwayCode


MuxEvent = (
    StreamOpened
    | StreamAccepted
    | OpenRefused
    | DataReceived
    | StreamEnded
    | CreditAvailable
    | StreamAborted
    | PongReceived
    | GoAwayReceived
)
