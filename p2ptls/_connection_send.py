"""The sending half of a secure connection's sans-IO core (:class:`p2ptls._connection.Connection`
inherits it): protected records sealed into one reused buffer, the pong and tickets owed put
ahead of the next record, key updates where due. See SPEC.md §5-§7.

It reads and writes the connection's state named below; only the connection creates it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final

from . import _wire as wire
from ._connection_state import SENDING, DirectionState, HandshakeState, Trigger, advance
from ._errors import LocalProtocolError
from ._fragments import fragment_sizes
from ._records import RecordSealer
from .config import StreamConfig

# The per-read and per-write checks compare with these: an enum member looked up on its class
# costs about 90 ns on Python 3.11, a module global about 20.
_ESTABLISHED: Final = HandshakeState.ESTABLISHED
_FAILED: Final = HandshakeState.FAILED
_OPEN: Final = DirectionState.OPEN
_CLOSED: Final = DirectionState.CLOSED

SEND_CHUNK = 256 * 1024
"""About how many bytes of records ``seal_data``/``seal_message`` hand out at a time."""


class RecordSending:
    """Sealing and the records owed: the sending half of :class:`~p2ptls._connection.Connection`."""

    config: StreamConfig
    _settled: HandshakeState | None
    _sending: DirectionState
    _sealer: RecordSealer | None
    _send_buffer: bytearray
    _send_view: memoryview
    _fragment: int
    _first_fragment: int
    _pong_owed: bytes | None
    _tickets_owed: list[bytes]
    _handshake_output: list[bytes]

    def _sealer_for_sending(self) -> RecordSealer:
        """The sealer, if the state allows a send (else :class:`LocalProtocolError`)."""
        settled = self._settled
        if settled is not _ESTABLISHED:
            raise LocalProtocolError(
                "cannot send: "
                + ("the connection failed" if settled else "the handshake is not complete")
            )
        if self._sending is not _OPEN:  # the table says why (not after our CLOSE)
            advance(SENDING, self._sending, Trigger.SEND)
        sealer = self._sealer
        assert sealer is not None  # set when ESTABLISHED
        return sealer

    def _seal(
        self, sealer: RecordSealer, out: list[bytes], content_type: int, payload: bytes | memoryview
    ) -> None:
        if sealer.needs_key_update:
            out.append(sealer.seal(wire.KEY_UPDATE, b""))
            sealer.advance_key()
        out.append(sealer.seal(content_type, payload))

    def seal_data(self, data: bytes | bytearray | memoryview) -> Iterator[memoryview]:
        """The records carrying ``data`` on the byte stream, a chunk at a time (see ``_chunks``)."""
        view = memoryview(data)
        step = self._fragment
        return self._chunks(
            (wire.DATA, view[offset : offset + step]) for offset in range(0, len(view), step)
        )

    def seal_message(self, message: bytes | bytearray | memoryview) -> Iterator[memoryview]:
        """The records carrying one message, fragmented to the record size, a chunk at a time."""
        if len(message) > self.config.max_message_size:
            raise ValueError("message larger than max_message_size")
        view = memoryview(message)

        def records() -> Iterator[tuple[int, bytes | memoryview]]:
            fragments = fragment_sizes(len(view), self._first_fragment, self._fragment)
            offset, size = fragments[0]
            first = wire.MESSAGE_LENGTH.pack(len(view)) + view[offset : offset + size]
            yield wire.MESSAGE_START, first
            for offset, size in fragments[1:]:
                yield wire.MESSAGE_CONTINUE, view[offset : offset + size]

        return self._chunks(records())

    def _chunks(self, records: Iterable[tuple[int, bytes | memoryview]]) -> Iterator[memoryview]:
        """Seal ``records`` (with any pong owed first, and key updates where due) into one buffer
        the connection reuses, yielding about ``SEND_CHUNK`` bytes at a time.

        Records are sealed lazily: each yielded view must be sent, and is invalid, before the next
        is asked for. So other records sealed in between (a pong) still go out in sequence order.
        """
        sealer = self._sealer_for_sending()
        overhead = wire.HEADER_SIZE + wire.TAG_SIZE
        buffer = self._send_buffer
        pos = 0
        for record in records:
            batch = [record]
            if self._pong_owed is not None:  # control records interleave with fragments
                batch.insert(0, (wire.PONG, self._pong_owed))
                self._pong_owed = None
            if self._tickets_owed:  # ahead of the responder's first record
                batch[:0] = [(wire.TICKET, payload) for payload in self._tickets_owed]
                self._tickets_owed = []
            for content_type, payload in batch:
                need = len(payload) + 2 * overhead  # room for a key update too
                if pos and pos + need > len(buffer):
                    yield memoryview(buffer)[:pos]
                    pos = 0
                if pos + need > len(buffer):
                    # Grow on demand (small messages keep small buffers), up to about a chunk.
                    buffer = self._send_buffer = bytearray(max(need, min(SEND_CHUNK, 4 * need)))
                if sealer.needs_key_update:
                    pos = sealer.seal_into(buffer, pos, wire.KEY_UPDATE, b"")
                    sealer.advance_key()
                pos = sealer.seal_into(buffer, pos, content_type, payload)
        if pos:
            yield memoryview(buffer)[:pos]

    def seal_data_at_once(self, data: bytes | bytearray | memoryview) -> memoryview | None:
        """The records carrying ``data`` (at most ``SEND_CHUNK`` bytes), sealed in one pass into
        the reused send buffer: the small-write path, with no generator per write.

        Returns ``None`` (seal nothing) when records are owed first (a pong, tickets): use
        :meth:`seal_data` then. The view is valid until the next ``seal_*`` call.
        """
        sealer = self._sealer_for_sending()
        if self._pong_owed is not None or self._tickets_owed:
            return None
        size = len(data)
        if size > SEND_CHUNK:
            raise ValueError("seal_data_at_once takes at most SEND_CHUNK bytes")
        step = self._fragment
        overhead = wire.HEADER_SIZE + wire.TAG_SIZE
        need = size + (size // step + 1) * 2 * overhead  # every record, and its key update
        buffer = self._send_buffer
        view = self._send_view
        if need > len(buffer):  # grown to fit, not ahead: a burst must not pin a large buffer
            buffer = self._send_buffer = bytearray(max(need, min(SEND_CHUNK, 2 * len(buffer))))
        if view.obj is not buffer:  # grown here, or replaced by _chunks
            view = self._send_view = memoryview(buffer)
        pos = 0
        if size <= step:
            if sealer.sequence >= sealer.key_update_after:  # needs_key_update, without the call
                pos = sealer.seal_into(view, pos, wire.KEY_UPDATE, b"")
                sealer.advance_key()
            pos = sealer.seal_into(view, pos, wire.DATA, data)
        else:
            source = memoryview(data)
            seal_into = sealer.seal_into
            if sealer.sequence + -(-size // step) <= sealer.key_update_after:
                for offset in range(0, size, step):  # no key update falls due in this write
                    pos = seal_into(view, pos, wire.DATA, source[offset : offset + step])
            else:
                for offset in range(0, size, step):
                    if sealer.needs_key_update:
                        pos = sealer.seal_into(view, pos, wire.KEY_UPDATE, b"")
                        sealer.advance_key()
                    pos = sealer.seal_into(view, pos, wire.DATA, source[offset : offset + step])
        return view[:pos]

    def send_data(self, data: bytes | bytearray | memoryview) -> bytes:
        """Protect byte-stream data; return the records to send."""
        return b"".join(bytes(chunk) for chunk in self.seal_data(data))

    def send_message(self, message: bytes | bytearray | memoryview) -> bytes:
        """Protect one message, fragmented to the record size; return the records to send."""
        return b"".join(bytes(chunk) for chunk in self.seal_message(message))

    def send_ping(self, payload: bytes) -> bytes:
        """A PING record; the peer answers with a PONG carrying ``payload`` (8 bytes)."""
        if len(payload) != wire.PING_PAYLOAD_SIZE:
            raise ValueError("ping payload must be 8 bytes")
        sealer = self._sealer_for_sending()
        out = self._take_pending()
        self._seal(sealer, out, wire.PING, payload)
        return b"".join(out)

    def send_eof(self, reason: int = wire.CLOSE_END_OF_STREAM) -> bytes:
        """The authenticated CLOSE record that ends our direction."""
        sealer = self._sealer_for_sending()
        self._sending = advance(SENDING, self._sending, Trigger.SEND_CLOSE)
        out = self._take_pending()
        self._seal(sealer, out, wire.CLOSE, bytes([reason]))
        return b"".join(out)

    def data_to_send(self, *, handshake_only: bool = False) -> bytes:
        """Bytes owed to the peer outside a ``send_*`` call: a handshake flight, or the records
        owed (tickets, a pong) unless ``handshake_only``."""
        if self._settled is _FAILED:
            return b""
        if self._handshake_output:
            flights, self._handshake_output = self._handshake_output, []
            return b"".join(flights)
        if self._sealer is None or self._sending is _CLOSED or handshake_only:
            return b""
        return b"".join(self._take_pending())

    def _take_pending(self) -> list[bytes]:
        out: list[bytes] = []
        if self._tickets_owed and self._sealer is not None:
            payloads, self._tickets_owed = self._tickets_owed, []
            for payload in payloads:
                self._seal(self._sealer, out, wire.TICKET, payload)
        if self._pong_owed is not None and self._sealer is not None:
            payload, self._pong_owed = self._pong_owed, None
            self._seal(self._sealer, out, wire.PONG, payload)
        return out

    @property
    def has_pending_output(self) -> bool:
        return self._pong_owed is not None or bool(self._handshake_output)
