"""The sans-IO connection: bytes in, events out; data in, bytes out.

Theory of operation
-------------------
A :class:`Connection` owns one side of one p2ptls session. It never touches a socket, a clock or a
thread: the I/O layer feeds it received bytes (``receive_data_untrusted``) with the current time,
gets back a list of events, and sends whatever bytes its ``send_*`` methods return.

The calls follow one convention: input calls (``receive_data_untrusted``, ``start``,
``supply_decryption``) return the list of events they completed; the bytes to send are pulled with
``data_to_send`` (handshake flights, owed records) or returned by the ``send_*``/``seal_*`` calls
that make them.

States
------
The state machines are data, in :mod:`p2ptls._connection_state`::

    initiator:          IDLE --start--> AWAIT_REPLY --Reply--> KEY_OPERATION
                        --supply_decryption--> ESTABLISHED (Finish queued, HandshakeComplete)
    resuming initiator: IDLE --start--> AWAIT_REPLY --ResumeReply--> ESTABLISHED (the same)
    responder:          AWAIT_HELLO --Hello--> KEY_OPERATION --supply_decryption--> AWAIT_FINISH
                        --Finish--> ESTABLISHED (HandshakeComplete)
                        AWAIT_HELLO --ResumeHello, or a Hello needing no RSA--> AWAIT_FINISH
    any state --an error--> FAILED
    once ESTABLISHED, each direction: OPEN --its CLOSE record--> CLOSED

While the handshake runs, its phase is the handshake object's (:mod:`p2ptls._handshake`); the
connection keeps only the outcome (ESTABLISHED or FAILED) once it drops that object. In
KEY_OPERATION the connection waits for the caller to perform one RSA private-key decryption
(:class:`PrivateKeyOperationNeeded`), which an I/O layer runs on a worker thread; bytes that arrive
meanwhile are buffered, and ``supply_decryption`` processes them before it returns. Once
ESTABLISHED, records are opened in order and turned into events. Any protocol error moves the
connection to FAILED, releases its reassembly reservation and is raised; every later call raises
:class:`~p2ptls._errors.LocalProtocolError`. Each direction ends with an authenticated CLOSE
record; a transport EOF without one is truncation.

A responder given a :class:`~p2ptls._tickets.TicketAuthority` owes two TICKET records once it is
ESTABLISHED; they are sealed ahead of its next record (``data_to_send`` or any ``send_*``), so the
handshake never waits for them. An initiator reports each as :class:`TicketReceived`.
"""

from __future__ import annotations

import os
import struct
from typing import Final

from . import _wire as wire
from ._connection_events import (
    DataReceived,
    EndOfStream,
    Event,
    HandshakeComplete,
    MessageReceived,
    PongReceived,
    PrivateKeyOperationNeeded,
    TicketReceived,
)
from ._connection_receive import RecordReceiving
from ._connection_send import RecordSending
from ._connection_state import DirectionState, HandshakeState
from ._errors import (
    HandshakeFailed,
    LocalProtocolError,
    ProtocolError,
    TruncatedError,
)
from ._fragments import Reassembler, ReassemblyBudget
from ._handshake import (
    HELLO_OAEP_LABEL,
    REPLY_OAEP_LABEL,
    HandshakeResult,
    InitiatorHandshake,
    OaepEncrypt,
    Randomness,
    Refusal,
    ResponderHandshake,
    ResumingInitiator,
    TimestampGuard,
    TrustPolicy,
)
from ._keyschedule import export_keying_material
from ._records import RecordOpener, RecordSealer
from ._tickets import SessionTicket, TicketAuthority
from .config import StreamConfig
from .identity import Identity, NetworkKey, PeerRecord, encrypt_to
from .trust import DEFAULT_SOURCE

_TYPE_VERSION_LENGTH = struct.Struct(">HH")  # the record header, type and version as one
_DATA_V = wire.DATA << 8 | wire.PROTOCOL_VERSION
_MIN_DATA_BODY = wire.TAG_SIZE + 1  # an empty DATA record is refused (by the general path)
_MAX_BODY = wire.MAX_CIPHERTEXT
_HEADER_SIZE = wire.HEADER_SIZE
# The per-read and per-write checks compare with these: an enum member looked up on its class
# costs about 90 ns on Python 3.11, a module global about 20.
_FAILED: Final = HandshakeState.FAILED
_OPEN: Final = DirectionState.OPEN


class Connection(RecordReceiving, RecordSending):
    """One side of a p2ptls session, without I/O: build with :meth:`initiator`/:meth:`responder`."""

    def __init__(
        self,
        config: StreamConfig,
        handshake: InitiatorHandshake | ResumingInitiator | ResponderHandshake,
        budget: ReassemblyBudget,
    ) -> None:
        self.config = config
        self._handshake: InitiatorHandshake | ResumingInitiator | ResponderHandshake | None = (
            handshake
        )
        self.is_initiator = not isinstance(handshake, ResponderHandshake)
        self.resuming = isinstance(handshake, ResumingInitiator)
        """An initiator using a ticket (its failure means: fall back to a full handshake)."""
        self._buffer = bytearray()
        self._sealer: RecordSealer | None = None
        self._opener: RecordOpener | None = None
        self._result: HandshakeResult | None = None
        self._reassembler = Reassembler(config.max_message_size, budget)
        self._handshake_output: list[bytes] = []
        self._send_buffer = bytearray()
        self._send_view = memoryview(self._send_buffer)
        self.farewell = b""
        """Bytes to send, best effort, after a failure (an initiator's refusal), else empty."""
        self._pong_owed: bytes | None = None
        self._tickets_owed: list[bytes] = []
        self._control_tokens = float(config.control_burst)
        self._control_time: float | None = None
        self._settled: HandshakeState | None = None  # ESTABLISHED or FAILED, once decided
        self._sending = DirectionState.OPEN
        self._receiving = DirectionState.OPEN
        self._fragment = config.record_payload
        self._first_fragment = self._fragment - wire.MESSAGE_LENGTH.size
        self._stream_data: list[bytes] | None = None

    @classmethod
    def initiator(
        cls,
        config: StreamConfig,
        identity: Identity,
        psk: NetworkKey,
        responder: PeerRecord,
        *,
        timestamp_ns: int,
        budget: ReassemblyBudget | None = None,
        randomness: Randomness = os.urandom,
        oaep_encrypt: OaepEncrypt = encrypt_to,
        ticket: SessionTicket | None = None,
    ) -> Connection:
        """The connecting side; ``responder`` is the peer it expects to reach.

        With a ``ticket`` (for ``responder``, from an earlier session) the handshake is resumed:
        no private-key operation; if it fails (:class:`HandshakeFailed`) the ticket is spent and
        the caller may retry with a full handshake. ``randomness`` and ``oaep_encrypt`` exist for
        known-answer tests; leave them alone.
        """
        if ticket is not None:
            resuming = ResumingInitiator(
                identity, psk, responder, ticket, timestamp_ns=timestamp_ns, randomness=randomness
            )
            return cls(config, resuming, budget or ReassemblyBudget())
        handshake = InitiatorHandshake(
            identity,
            psk,
            responder,
            timestamp_ns=timestamp_ns,
            randomness=randomness,
            oaep_encrypt=oaep_encrypt,
        )
        return cls(config, handshake, budget or ReassemblyBudget())

    @classmethod
    def responder(
        cls,
        config: StreamConfig,
        identity: Identity,
        psk: NetworkKey,
        policy: TrustPolicy,
        guard: TimestampGuard,
        *,
        now_ns: int,
        source: str = DEFAULT_SOURCE,
        budget: ReassemblyBudget | None = None,
        randomness: Randomness = os.urandom,
        oaep_encrypt: OaepEncrypt = encrypt_to,
        tickets: TicketAuthority | None = None,
    ) -> Connection:
        """The accepting side; ``policy`` decides who may connect, ``guard`` refuses replays.

        ``now_ns`` is the wall clock (ns since the epoch) when the connection arrived, ``source``
        where it came from (the replay guard's memory is shared fairly between sources).
        ``tickets`` (the context's ticket keys) lets it accept resumed handshakes and, if
        ``config.issue_tickets``, issue tickets.
        """
        handshake = ResponderHandshake(
            identity,
            psk,
            policy,
            guard,
            now_ns=now_ns,
            source=source,
            randomness=randomness,
            oaep_encrypt=oaep_encrypt,
            tickets=tickets,
            ticket_lifetime_s=config.ticket_lifetime,
        )
        return cls(config, handshake, budget or ReassemblyBudget())

    # -- handshake ------------------------------------------------------------------------------

    @property
    def state(self) -> HandshakeState:
        """Where the handshake stands (see "States" above)."""
        handshake = self._handshake
        if handshake is None:
            assert self._settled is not None
            return self._settled
        return handshake.phase

    @property
    def eof_sent(self) -> bool:
        """Our direction is closed (we sent our CLOSE)."""
        return self._sending is DirectionState.CLOSED

    @property
    def eof_received(self) -> bool:
        """The peer's direction is closed (its authenticated CLOSE arrived)."""
        return self._receiving is DirectionState.CLOSED

    def start(self) -> list[Event]:
        """Start the handshake: an initiator queues its Hello (``data_to_send``); a responder,
        which speaks second, has nothing to do. Returns the events completed (none)."""
        handshake = self._handshake
        if handshake is None:
            raise LocalProtocolError(f"cannot start the handshake in state {self.state.name}")
        hello = handshake.start()
        if hello:
            self._handshake_output.append(hello)
        return []

    def supply_decryption(self, plaintext: bytes | None, now: float = 0.0) -> list[Event]:
        """Hand in the result of :class:`PrivateKeyOperationNeeded` (``None`` if it failed).

        Queues the next flight (``data_to_send``), then processes the bytes that arrived during
        the operation. Returns the events completed: :class:`HandshakeComplete` for an initiator,
        then those of the buffered bytes. Raises :class:`HandshakeFailed` (or another
        :class:`ProtocolError` from the buffered bytes); :class:`LocalProtocolError` if no
        operation is pending.
        """
        handshake = self._handshake
        if handshake is None or self.state is not HandshakeState.KEY_OPERATION:
            raise LocalProtocolError(f"no private-key operation pending in state {self.state.name}")
        events: list[Event] = []
        try:
            if isinstance(handshake, InitiatorHandshake):
                finish, result = handshake.complete_untrusted(plaintext)
                self._handshake_output.append(finish)
                self._establish(result, initiator=True)
                events.append(HandshakeComplete(result.remote))
            else:
                assert isinstance(handshake, ResponderHandshake)
                self._handshake_output.append(handshake.reply_untrusted(plaintext))
        except ProtocolError:
            self._fail()
            raise
        events += self._receive(b"", now)  # the bytes buffered during the operation
        return events

    def _establish(self, result: HandshakeResult, *, initiator: bool) -> None:
        secrets = result.secrets
        outgoing, incoming = (
            (secrets.initiator_to_responder, secrets.responder_to_initiator)
            if initiator
            else (secrets.responder_to_initiator, secrets.initiator_to_responder)
        )
        self._sealer = RecordSealer(outgoing, self.config.key_update_after)
        self._opener = RecordOpener(incoming, self.config.hard_record_limit)
        self._result = result
        self._handshake = None
        self._settled = HandshakeState.ESTABLISHED
        self._reassembler.peer = result.remote.peer_id

    @property
    def resumed(self) -> bool:
        """The handshake completed with a ticket instead of RSA."""
        return self._result is not None and self._result.resumed

    @property
    def remote(self) -> PeerRecord | None:
        """The authenticated peer, once the handshake is complete."""
        return self._result.remote if self._result else None

    @property
    def session_id(self) -> bytes | None:
        """The transcript hash, once the handshake is complete (public; identifies the session)."""
        return self._result.transcript_hash if self._result else None

    def export_keying_material(self, label: str, context: bytes, length: int) -> bytes:
        """Keys for a companion protocol, bound to this session (used by SLLP)."""
        if self._result is None:
            raise LocalProtocolError("the handshake is not complete")
        return export_keying_material(self._result.secrets.exporter, label, context, length)

    # -- receiving ------------------------------------------------------------------------------

    def receive_data_untrusted(
        self, data: bytes | bytearray | memoryview, now: float = 0.0
    ) -> list[Event]:
        """Feed bytes from the transport; return the events they complete.

        ``data`` is not kept, so the caller may reuse its buffer; empty ``data`` is no input (not
        EOF: that is :meth:`receive_eof`). The peer's bytes raise only :class:`ProtocolError` (or
        a subclass); after one, the connection is FAILED and feeding it more is the caller's
        :class:`LocalProtocolError`.
        """
        return self.receive_records_untrusted(data, now, None)

    def receive_records_untrusted(
        self,
        data: bytes | bytearray | memoryview,
        now: float,
        stream_data: list[bytes] | None,
    ) -> list[Event]:
        """:meth:`receive_data_untrusted`, but with ``stream_data`` (a list) the plaintext of
        each byte-stream record is appended to it, in order, instead of being reported as a
        :class:`DataReceived` event (the I/O layer's bulk path: no event object per record).

        On a :class:`ProtocolError` the records before the bad one may already be in
        ``stream_data``; the connection is FAILED all the same. Empty ``data`` does nothing (EOF
        is :meth:`receive_eof`).
        """
        if self._settled is _FAILED:
            raise LocalProtocolError("the connection already failed")
        if not data:
            return []
        self._stream_data = stream_data
        try:
            return self._receive(data, now)
        finally:
            self._stream_data = None  # the caller's list is not kept

    def _receive(self, data: bytes | bytearray | memoryview, now: float) -> list[Event]:
        events: list[Event] = []
        if self._handshake is not None and self.awaiting_key_operation:  # (no call once set up)
            self._buffer += data
            self._check_buffer_bound()
            return events
        try:
            source: bytes | bytearray | memoryview = data
            if self._buffer:
                # Complete the pending record with just the bytes it lacks, rather than copying
                # every read into the buffer behind it.
                used = self._top_up_buffer(data)
                if used < 0:
                    self._check_buffer_bound()
                    return events
                buffered, self._buffer = self._buffer, bytearray()
                backlog = bytes(buffered[self._parse(buffered, now, events) :])
                rest = memoryview(data)[used:]
                if self.awaiting_key_operation:
                    self._buffer = bytearray(backlog) + rest
                    self._check_buffer_bound()
                    return events
                source = backlog + bytes(rest) if backlog else rest
            consumed = (  # a TCP read is a view already: no _parse wrapper call per read
                self._parse_view(source, now, events)
                if type(source) is memoryview
                else self._parse(source, now, events)
            )
            if consumed < len(source):  # the start of a record: keep one copy of it
                with memoryview(source) as view:
                    self._buffer = bytearray(view[consumed:])
        except ProtocolError:
            self._fail()
            raise
        if self._buffer:
            self._check_buffer_bound()
        return events

    def _top_up_buffer(self, data: bytes | bytearray | memoryview) -> int:
        """Move the bytes the buffered record still lacks from ``data`` into the buffer.

        Returns how many bytes of ``data`` were used, or -1 if the record is still incomplete.
        """
        buffer = self._buffer
        view = memoryview(data)
        used = 0
        if len(buffer) < wire.HEADER_SIZE:
            used = min(wire.HEADER_SIZE - len(buffer), len(view))
            buffer += view[:used]
            if len(buffer) < wire.HEADER_SIZE:
                return -1
        content_type, version, length = wire.HEADER.unpack_from(buffer, 0)
        wire.check_header_fields_untrusted(content_type, version, length)
        self._check_type_allowed_untrusted(content_type)
        missing = wire.HEADER_SIZE + length - len(buffer)
        if missing > 0:
            taken = view[used : used + missing]
            buffer += taken
            used += len(taken)
            if len(taken) < missing:
                return -1
        return used

    def _parse(
        self, source: bytes | bytearray | memoryview, now: float, events: list[Event]
    ) -> int:
        """Handle the whole records at the start of ``source``; return how many bytes they
        took (the rest is the start of a record)."""
        if type(source) is memoryview:
            return self._parse_view(source, now, events)
        with memoryview(source) as view:
            return self._parse_view(view, now, events)

    def _parse_view(self, view: memoryview, now: float, events: list[Event]) -> int:
        opener = self._opener
        # DATA records once established (the bulk of the traffic) take a short path that
        # checks the header exactly as the general path does: type and version in one
        # comparison, a length that leaves a non-empty plaintext, no close received yet.
        fast = opener is not None and self._receiving is _OPEN
        sink = self._stream_data
        pos = 0
        end_of_data = len(view)
        while end_of_data - pos >= _HEADER_SIZE:
            type_version, length = _TYPE_VERSION_LENGTH.unpack_from(view, pos)
            if fast and type_version == _DATA_V and _MIN_DATA_BODY <= length <= _MAX_BODY:
                body_start = pos + _HEADER_SIZE
                record_end = body_start + length
                if record_end > end_of_data:
                    break
                assert opener is not None
                plaintext = opener.open_untrusted(view[pos:body_start], view[body_start:record_end])
                if sink is not None:
                    sink.append(plaintext)
                else:
                    events.append(DataReceived(plaintext))
                pos = record_end
                continue
            content_type = type_version >> 8
            wire.check_header_fields_untrusted(content_type, type_version & 0xFF, length)
            self._check_type_allowed_untrusted(content_type)
            body_start = pos + wire.HEADER_SIZE
            record_end = body_start + length
            if record_end > end_of_data:
                break
            if content_type == wire.HANDSHAKE:
                self._handle_handshake(bytes(view[pos:record_end]), events)
            else:
                self._handle_protected(
                    content_type, view[pos:body_start], view[body_start:record_end], now, events
                )
            pos = record_end
            if self.awaiting_key_operation:
                break
            opener = self._opener
            fast = opener is not None and self._receiving is _OPEN
        return pos

    def _check_type_allowed_untrusted(self, content_type: int) -> None:
        """Refuse, from the header alone, a protected record before the handshake completed."""
        if content_type != wire.HANDSHAKE and self._opener is None:
            raise HandshakeFailed()

    @property
    def awaiting_key_operation(self) -> bool:
        """True while a :class:`PrivateKeyOperationNeeded` awaits :meth:`supply_decryption`."""
        handshake = self._handshake
        return handshake is not None and handshake.phase is HandshakeState.KEY_OPERATION

    def _check_buffer_bound(self) -> None:
        if len(self._buffer) > wire.HEADER_SIZE + wire.MAX_CIPHERTEXT + self.config.receive_size:
            self._fail()
            raise ProtocolError("peer sent too much before the handshake completed")

    def _handle_handshake(self, record: bytes, events: list[Event]) -> None:
        """A handshake record; each handshake call checks its own phase (HandshakeFailed)."""
        handshake = self._handshake
        if handshake is None:
            raise ProtocolError("handshake record on an established connection")
        if isinstance(handshake, InitiatorHandshake):
            c_r = handshake.receive_reply_untrusted(record)
            events.append(PrivateKeyOperationNeeded(c_r, REPLY_OAEP_LABEL))
            return
        if isinstance(handshake, ResumingInitiator):
            finish, result = handshake.receive_reply_untrusted(record)
            self._handshake_output.append(finish)
            self._establish(result, initiator=True)
            events.append(HandshakeComplete(result.remote))
            return
        if record[wire.HEADER_SIZE] == wire.RESUME_HELLO:
            self._handshake_output.append(handshake.receive_resume_hello_untrusted(record))
            return
        if record[wire.HEADER_SIZE] == wire.HELLO:
            c_i = handshake.receive_hello_untrusted(record)
            if c_i is None:  # wrong binder, or a copy already decrypted: no private-key work
                self._handshake_output.append(handshake.reply_without_key_operation())
                return
            events.append(PrivateKeyOperationNeeded(c_i, HELLO_OAEP_LABEL))
            return
        try:
            result = handshake.receive_finish_untrusted(record)
        except Refusal as refusal:
            # Tell the initiator (only it can open this record) before the connection closes.
            sealer = RecordSealer(refusal.secrets.responder_to_initiator)
            self.farewell = sealer.seal(wire.CLOSE, bytes([wire.CLOSE_REFUSED]))
            raise HandshakeFailed() from None
        if self.config.issue_tickets:
            # Sealed lazily ahead of our next record (see _take_pending and _chunks): the
            # handshake never waits for an initiator that is not reading yet.
            self._tickets_owed = [payload.encode() for payload in handshake.new_tickets(result)]
        self._establish(result, initiator=False)
        events.append(HandshakeComplete(result.remote))

    def receive_eof(self) -> None:
        """The transport reached EOF: :class:`TruncatedError` unless the peer closed first."""
        if self._settled is HandshakeState.FAILED:
            return
        if not self.eof_received or self._buffer:
            self._fail()
            raise TruncatedError("connection ended without the peer's authenticated close")

    # -- teardown -------------------------------------------------------------------------------

    def _fail(self) -> None:
        self._settled = HandshakeState.FAILED
        self._reassembler.discard()
        self._buffer = bytearray()
        self._handshake = None

    def abandon(self) -> None:
        """Release resources (partial messages) when the I/O layer drops the connection."""
        if self._settled is not HandshakeState.FAILED:
            self._fail()


__all__ = [
    "Connection",
    "DataReceived",
    "EndOfStream",
    "Event",
    "HandshakeComplete",
    "HandshakeState",
    "MessageReceived",
    "PongReceived",
    "PrivateKeyOperationNeeded",
    "TicketReceived",
]
