"""The protected records of an established secure connection, opened and turned into events:
the receiving half of :class:`p2ptls._connection.Connection` (which inherits it) past the header
checks and the DATA fast path. See SPEC.md §5-§7.

It reads and writes the connection's state named below; only the connection creates it.
"""

from __future__ import annotations

from typing import Final

from . import _wire as wire
from ._connection_events import (
    DataReceived,
    EndOfStream,
    Event,
    MessageReceived,
    PongReceived,
    TicketReceived,
)
from ._connection_state import RECEIVING, DirectionState, Trigger, advance
from ._errors import FloodError, HandshakeFailed, PeerRefused, ProtocolError
from ._fragments import Reassembler
from ._handshake import HandshakeResult
from ._keyschedule import ticket_psk
from ._records import RecordOpener
from .config import StreamConfig

_OPEN: Final = DirectionState.OPEN  # (a module global is faster than an enum member lookup)


class RecordReceiving:
    """Protected records in, events out: the receiving half of
    :class:`~p2ptls._connection.Connection`."""

    config: StreamConfig
    is_initiator: bool
    _opener: RecordOpener | None
    _receiving: DirectionState
    _stream_data: list[bytes] | None
    _reassembler: Reassembler
    _pong_owed: bytes | None
    _control_tokens: float
    _control_time: float | None
    _result: HandshakeResult | None

    def _handle_protected(
        self,
        content_type: int,
        header: memoryview,
        body: memoryview,
        now: float,
        events: list[Event],
    ) -> None:
        opener = self._opener
        if opener is None:
            raise HandshakeFailed()  # protected record before the handshake completed
        if self._receiving is not _OPEN:  # nothing after the peer's close
            advance(RECEIVING, self._receiving, Trigger.RECORD)
        plaintext = opener.open_untrusted(header, body)
        if content_type == wire.DATA:
            if not plaintext:
                raise ProtocolError("empty data record")
            if self._stream_data is not None:
                self._stream_data.append(plaintext)
            else:
                events.append(DataReceived(plaintext))
        elif content_type == wire.MESSAGE_START:
            total, fragment = wire.parse_message_start_untrusted(plaintext)
            message = self._reassembler.start_untrusted(total, fragment)
            if message is not None:
                events.append(MessageReceived(message))
        elif content_type == wire.MESSAGE_CONTINUE:
            message = self._reassembler.continue_untrusted(plaintext)
            if message is not None:
                events.append(MessageReceived(message))
        elif content_type == wire.CLOSE:
            if len(plaintext) == 1 and plaintext[0] == wire.CLOSE_REFUSED and self.is_initiator:
                raise PeerRefused()
            if len(plaintext) != 1 or plaintext[0] not in (
                wire.CLOSE_END_OF_STREAM,
                wire.CLOSE_GOODBYE,
            ):
                raise ProtocolError("malformed close record")
            if self._reassembler.in_progress:
                raise ProtocolError("close inside an unfinished message")
            self._receiving = advance(RECEIVING, self._receiving, Trigger.CLOSE)
            events.append(EndOfStream(plaintext[0]))
        else:
            self._spend_control_token(now)
            if content_type == wire.PING:
                if len(plaintext) != wire.PING_PAYLOAD_SIZE:
                    raise ProtocolError("malformed ping")
                self._pong_owed = plaintext
            elif content_type == wire.PONG:
                if len(plaintext) != wire.PING_PAYLOAD_SIZE:
                    raise ProtocolError("malformed pong")
                events.append(PongReceived(plaintext))
            elif content_type == wire.TICKET:  # its control token was spent above (SPEC §6)
                events.append(self._ticket_untrusted(plaintext))
            else:  # KEY_UPDATE: the only protected type left after the header check
                if plaintext:
                    raise ProtocolError("malformed key update")
                opener.advance_key()

    def _ticket_untrusted(self, plaintext: bytes) -> TicketReceived:
        result = self._result
        if not self.is_initiator or result is None:
            raise ProtocolError("ticket sent to the responder")
        payload = wire.parse_ticket_payload_untrusted(plaintext)
        psk = ticket_psk(result.secrets.resumption, payload.nonce)
        return TicketReceived(payload.ticket, psk, payload.lifetime_s)

    def _spend_control_token(self, now: float) -> None:
        config = self.config
        if self._control_time is not None and now > self._control_time:
            refill = (now - self._control_time) * config.control_rate
            self._control_tokens = min(float(config.control_burst), self._control_tokens + refill)
        self._control_time = now
        self._control_tokens -= 1
        if self._control_tokens < 0:
            raise FloodError("too many control records")
