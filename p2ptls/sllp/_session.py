"""The SLLP session: a sans-IO state machine for one channel (one peer, two directions).

Theory of operation
-------------------
A :class:`Session` is created after the offer/answer exchange on the secure stream, with the two
per-direction epoch-0 secrets and the negotiated parameters. It does no I/O and reads no clock:
every method takes ``now`` (seconds, any monotonic clock). It follows p2ptls's event convention:

* input calls return the events they completed: :meth:`Session.receive_datagrams_untrusted`
  (and its one-datagram form), :meth:`Session.handle_timers`, and the local actions that end the
  session (:meth:`Session.close`, :meth:`Session.close_received`, :meth:`Session.lifeline_lost`)
  return ``list[Event]``; the session keeps no queue of events for the application;
* sending returns its datagrams at once, as :class:`DatagramTrain` objects
  (:meth:`Session.send_message`, :meth:`Session.send_messages`): the hot path, whose caller sends
  them straight away. The few events a send completes (a send key update; the end on sequence
  exhaustion) come back from the next call that returns events;
* the datagrams the session sends on its own (keep-alive, CLOSE) are pulled with
  :meth:`Session.datagrams_to_send` after the call that made them.

Sending: a message of ``n`` bytes becomes ``ceil(n / fragment_size)`` datagrams (one for an empty
message) written back to back into one buffer. The fragment size follows the send datagram size,
which the channel sets from the path MTU (:meth:`Session.set_send_datagram_size`, at most the
negotiated ``datagram_size``) and may lower while the session runs; the receiver learns each
message's fragment size from the message itself. All the datagrams of a message but the last have
the same size, which is what UDP segmentation offload wants. Each datagram takes the next
sequence number; the nonce is the epoch's IV xor that number, so a (key, nonce) pair is never used
twice. After ``rekey_after`` datagrams the sender moves to the next key epoch and flips the
key-phase bit.

Receiving (:meth:`Session.receive_datagram_untrusted`), in this order, each failure a silent,
counted drop: size within ``[51, datagram_size]``; destination connection id is ours (else nothing
is even parsed further); version and reserved flags; the replay window (before any cryptography);
the key chosen by the key-phase bit (current epoch; the previous one for an older sequence number
while it is kept; the next one otherwise); AEAD authentication. Only then is the window advanced,
the idle timer reset, and the body parsed (DATA goes to the :class:`Reassembler`, CLOSE ends the
session, KEEPALIVE does nothing more). Nothing is ever sent in reply to a datagram.

Timers (:meth:`Session.handle_timers`, due at :meth:`Session.next_deadline`): the idle timeout
ends the session; a keep-alive goes out after ``keepalive_interval`` without sending; incomplete
messages and message-id gaps expire; the previous receive key is dropped after
``previous_key_lifetime``.

Ending: a local :meth:`Session.close`, an authenticated CLOSE from the peer (by datagram or on the
stream), the idle timeout, or the end of the stream. Each erases the keys (drops every reference to
them), clears reassembly, moves to CLOSED and reports :class:`ChannelClosed`; later datagrams are
dropped unread.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable

import attrs
from cryptography.exceptions import InvalidTag

from . import _wire as wire
from ._datagrams import DatagramTrain
from ._errors import DatagramError, SessionClosed
from ._keys import EpochKeys
from ._reassembly import Reassembler
from ._replay import ReplayWindow
from ._sealing import SendBuffer, TrainSealer
from .config import SllpConfig
from .events import (
    ChannelClosed,
    CloseCause,
    Event,
    KeysUpdated,
    LossReason,
    Message,
    MessagesLost,
    Statistics,
)

_HEADER_UNPACK_FROM = wire.HEADER.unpack_from
_BODY_PACK_INTO = wire.BODY.pack_into
_BODY_UNPACK_FROM = wire.BODY.unpack_from
_INDEX_PACK_INTO = struct.Struct(">I").pack_into  # the body's fragment index...
_INDEX_OFFSET = 9  # ...after type u8 and message id u64
_HEADER_SIZE = wire.HEADER_SIZE
_BODY_SIZE = wire.BODY_SIZE
_OVERHEAD = wire.OVERHEAD
_VERSION = wire.VERSION
_TYPE_DATA = wire.TYPE_DATA
_MIN_DATAGRAM = wire.MIN_DATAGRAM
_UNKNOWN_FLAGS = 0xFF & ~wire.KNOWN_FLAGS


class SessionState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


@attrs.frozen
class SessionParameters:
    """What the offer and answer settled for one session."""

    local_connection_id: int
    """Ours: datagrams to us carry it."""
    remote_connection_id: int
    """The peer's: datagrams we send carry it."""
    datagram_size: int
    """Largest UDP payload, both directions: the smaller of the two sides' values. Each side
    sends datagrams of at most this size, as large as its path allows
    (:meth:`Session.set_send_datagram_size`)."""
    peer_max_message_size: int
    """The largest message the peer accepts."""

    @property
    def fragment_size(self) -> int:
        """Payload bytes of the largest fragment."""
        return self.datagram_size - wire.OVERHEAD


class Session:
    """One SLLP session. See the module docstring for the rules it follows."""

    def __init__(
        self,
        config: SllpConfig,
        parameters: SessionParameters,
        send_secret: bytes,
        receive_secret: bytes,
        now: float,
    ) -> None:
        self.config = config
        self.parameters = parameters
        self.state = SessionState.OPEN
        self.closed: ChannelClosed | None = None
        """How the session ended (``None`` while open)."""
        self._events: list[Event] = []  # completed by the call running (or by a send)
        self._outgoing: list[DatagramTrain] = []  # keep-alives and CLOSE, for datagrams_to_send
        self._local_cid = parameters.local_connection_id
        self._remote_cid = parameters.remote_connection_id
        self._datagram_size = parameters.datagram_size
        # What we send: 1200-byte datagrams (or the configured size) until the channel sets the
        # size from the path MTU.
        send_size = config.datagram_size or wire.DEFAULT_DATAGRAM_PAYLOAD
        self._fragment_size = min(send_size, self._datagram_size) - _OVERHEAD
        self.max_send_message = min(config.max_message_size, parameters.peer_max_message_size)
        """The largest message :meth:`send_message` accepts (ours and the peer's limit)."""
        # Sending.
        self._send: EpochKeys | None = EpochKeys(send_secret, 0)
        self._sent_in_epoch = 0
        self._send_sequence = 0
        self._next_message_id = 0
        self._rekey_after = config.rekey_after
        self._scratch = bytearray(self._datagram_size)
        self._scratch_view = memoryview(self._scratch)
        self._last_sent = now
        # Receiving.
        self._receive: EpochKeys | None = EpochKeys(receive_secret, 0)
        self._receive_min_sequence = 0  # lowest sequence authenticated under the current epoch
        self._receive_previous: EpochKeys | None = None
        self._previous_expires = float("inf")
        self._receive_next: EpochKeys | None = None
        self._window = ReplayWindow()
        self._last_received = now
        self._reassembler = Reassembler(config, parameters.fragment_size, self._deliver, self._lose)
        self._max_events = 2 * config.max_unread_messages + 64
        # Counters.
        self.sent = 0
        self.received = 0
        self.lost = 0
        self.replayed = 0
        self.failed_authentication = 0
        self.datagrams_sent = 0
        self.datagrams_received = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.largest_datagram_received = 0
        self.unknown_connection_id = 0
        self.malformed = 0
        self.keepalives_sent = 0

    # -- sending --------------------------------------------------------------------------------

    def send_message(
        self,
        data: bytes | bytearray | memoryview,
        now: float,
        *,
        into: SendBuffer | None = None,
    ) -> DatagramTrain:
        """Seal one message into datagrams. Raises :class:`SessionClosed` once the session ended
        and ``ValueError`` for a message above :attr:`max_send_message`.

        ``into``: seal into this reused buffer instead of a new one (the train is then valid only
        until the next call with it)."""
        return self._seal_messages([data], now, into)[0]

    def send_messages(
        self,
        messages: Iterable[bytes | bytearray | memoryview],
        now: float,
        *,
        into: SendBuffer | None = None,
    ) -> list[DatagramTrain]:
        """Seal several messages, in order, into one buffer; return it as trains of equal-sized
        datagrams (each train as long as the datagrams keep one size, so that one segmentation
        offload call can carry it: many one-datagram messages of one size make one train).

        All or nothing: raises ``ValueError`` (an oversized message) or :class:`SessionClosed`
        before any message takes a message id or a sequence number. ``into`` as for
        :meth:`send_message`."""
        return self._seal_messages(messages, now, into)

    @property
    def send_datagram_size(self) -> int:
        """The size of the datagrams we send (all but a message's last): at most the negotiated
        ``datagram_size``."""
        return self._fragment_size + _OVERHEAD

    def set_send_datagram_size(self, size: int) -> int:
        """Send datagrams of ``size`` bytes from the next message on (the path MTU changed), at
        most the negotiated ``datagram_size``; return the size now in use. ``ValueError`` below
        the protocol's minimum (256)."""
        if size < wire.MIN_DATAGRAM_PAYLOAD:
            raise ValueError(f"datagram size below the minimum ({wire.MIN_DATAGRAM_PAYLOAD})")
        size = min(size, self._datagram_size)
        self._fragment_size = size - _OVERHEAD
        return size

    def _seal_messages(
        self,
        messages: Iterable[bytes | bytearray | memoryview],
        now: float,
        into: SendBuffer | None,
    ) -> list[DatagramTrain]:
        if self._send is None:
            raise self._closed_error()
        fragment_size = self._fragment_size
        limit = self.max_send_message
        views: list[memoryview] = []
        datagrams = 0
        total = 0
        for data in messages:
            view = memoryview(data)
            if view.ndim != 1 or view.itemsize != 1:
                view = view.cast("B")
            size = len(view)
            if size > limit:
                raise ValueError(f"message of {size} bytes exceeds the channel's maximum ({limit})")
            count = -(-size // fragment_size) or 1
            views.append(view)
            datagrams += count
            total += size + count * _OVERHEAD
        if self._send_sequence + datagrams > wire.MAX_SEQUENCE:
            self._end(CloseCause.SEQUENCE_EXHAUSTED, wire.CLOSE_SEQUENCE_EXHAUSTED, "")
            raise self._closed_error()
        scratch = self._scratch
        scratch_view = self._scratch_view
        fragment_body = scratch_view[: _BODY_SIZE + fragment_size]
        fragment_payload = scratch_view[_BODY_SIZE : _BODY_SIZE + fragment_size]
        sealer = TrainSealer(
            bytearray(total) if into is None else into.take(total),
            self._send,
            left_in_epoch=self._rekey_after - self._sent_in_epoch,
            rekey=self._rekey_send,
            rekey_after=self._rekey_after,
            remote_cid=self._remote_cid,
            sequence=self._send_sequence,
        )
        seal = sealer.seal
        message_id = self._next_message_id
        for view in views:
            size = len(view)
            count = -(-size // fragment_size) or 1
            _BODY_PACK_INTO(scratch, 0, _TYPE_DATA, message_id, 0, count)
            offset = 0
            # Every fragment but the last is full: the same slices of the scratch buffer, and
            # only the fragment index changes in the body header.
            for index in range(count - 1):
                _INDEX_PACK_INTO(scratch, _INDEX_OFFSET, index)
                fragment_payload[:] = view[offset : offset + fragment_size]
                seal(fragment_body)
                offset += fragment_size
            if count > 1:
                _INDEX_PACK_INTO(scratch, _INDEX_OFFSET, count - 1)
            end = _BODY_SIZE + size - offset
            scratch_view[_BODY_SIZE:end] = view[offset:size]
            seal(scratch_view[:end])
            message_id += 1
        trains = sealer.trains()
        left_in_epoch = sealer.left_in_epoch
        sequence = sealer.sequence
        self._sent_in_epoch = self._rekey_after - left_in_epoch
        self._send_sequence = sequence
        self._next_message_id = message_id
        self._last_sent = now
        self.sent += len(views)
        self.datagrams_sent += datagrams
        self.bytes_sent += total
        return trains

    def _rekey_send(self) -> EpochKeys:
        assert self._send is not None
        keys = self._send = self._send.successor()
        self._sent_in_epoch = 0
        self._push_event(KeysUpdated("send", keys.epoch))
        return keys

    def _seal_control(self, body_type: int, payload: bytes) -> DatagramTrain:
        """One KEEPALIVE or CLOSE datagram."""
        keys = self._send
        assert keys is not None
        if self._sent_in_epoch >= self._rekey_after:
            keys = self._rekey_send()
        self._sent_in_epoch += 1
        sequence = self._send_sequence
        self._send_sequence = sequence + 1
        header = wire.encode_header(keys.phase, self._remote_cid, sequence)
        body = wire.encode_body(body_type, 0, 0, 0, payload)
        datagram = header + keys.aead.encrypt(wire.nonce(keys.iv, sequence), body, header)
        self.datagrams_sent += 1
        self.bytes_sent += len(datagram)
        return DatagramTrain(datagram, len(datagram), 1)

    # -- receiving ------------------------------------------------------------------------------

    def receive_datagram_untrusted(self, datagram: memoryview | bytes, now: float) -> list[Event]:
        """Take one UDP payload from anyone; return the events it completed. Never raises for
        bad input and never replies."""
        return self.receive_datagrams_untrusted(datagram, len(datagram) or 1, now)

    def receive_datagrams_untrusted(
        self, data: memoryview | bytes | bytearray, segment: int, now: float
    ) -> list[Event]:
        """Take UDP payloads from anyone, laid back to back in ``data``: each ``segment`` bytes but
        the last, which may be shorter (as one ``UDP_GRO`` read returns them). Each datagram is
        checked on its own, in the order of the module docstring, exactly as if it had come alone:
        one that fails is dropped and counted, and the others go on. Returns the events they
        completed (messages, losses, key updates, the end). Never raises for bad input and never
        replies."""
        total = len(data)
        if total == 0 or segment <= 0:
            self.malformed += 1
            return self._completed()
        view = data if type(data) is memoryview else memoryview(data)
        datagram_size = self._datagram_size
        local_cid = self._local_cid
        window = self._window
        blocks, mask = window.blocks, window.mask
        reassembler = self._reassembler
        add_fragment = reassembler.add_untrusted
        received = 0
        received_bytes = 0
        largest = self.largest_datagram_received
        offset = 0
        try:
            while offset < total:
                size = total - offset
                if size > segment:  # noqa: PLR1730 - cheaper than min() per datagram
                    size = segment
                datagram = view[offset : offset + size]
                offset += size
                if size < _MIN_DATAGRAM or size > datagram_size:
                    self.malformed += 1
                    continue
                version, flags, cid, sequence = _HEADER_UNPACK_FROM(datagram)
                keys = self._receive
                if cid != local_cid or keys is None:
                    self.unknown_connection_id += 1
                    continue
                if version != _VERSION or flags & _UNKNOWN_FLAGS:
                    self.malformed += 1
                    continue
                top = window.top
                if sequence <= top and not window.check(sequence):
                    self.replayed += 1
                    continue
                current = keys
                if flags != keys.phase:
                    if sequence < self._receive_min_sequence:
                        previous = self._receive_previous
                        if previous is None:
                            self.replayed += 1  # from an epoch whose key is gone: too old
                            continue
                        keys = previous
                    else:
                        following = self._receive_next
                        if following is None:
                            following = self._receive_next = keys.successor()
                        keys = following
                try:
                    plaintext = keys.aead.decrypt(
                        (keys.iv ^ sequence).to_bytes(12, "big"),
                        datagram[_HEADER_SIZE:],
                        datagram[:_HEADER_SIZE],
                    )
                except InvalidTag:
                    self.failed_authentication += 1
                    continue
                if sequence > top and sequence >> 6 == top >> 6:
                    # The common case, the next number in the same block: set its bit (what
                    # ReplayWindow.update does when no block has to be cleared).
                    blocks[(sequence >> 6) & mask] |= 1 << (sequence & 63)
                    window.top = sequence
                else:
                    window.update(sequence)
                received += 1
                received_bytes += size
                if size > largest:  # noqa: PLR1730 - cheaper than max() per datagram
                    largest = size
                if keys is not current:
                    if keys is self._receive_next:
                        self._receive_previous = current
                        self._previous_expires = now + self.config.previous_key_lifetime
                        self._receive = keys
                        self._receive_next = None
                        self._receive_min_sequence = sequence
                        self._push_event(KeysUpdated("receive", keys.epoch))
                elif sequence < self._receive_min_sequence:
                    self._receive_min_sequence = sequence
                body_type, message_id, index, count = _BODY_UNPACK_FROM(plaintext)
                if body_type == _TYPE_DATA:
                    if reassembler.take_middle(message_id, index, count, plaintext):
                        continue
                    try:
                        add_fragment(
                            message_id, index, count, memoryview(plaintext)[_BODY_SIZE:], now
                        )
                    except DatagramError:
                        self.malformed += 1
                    continue
                self._receive_control(plaintext)
        finally:
            if received:
                self._last_received = now
            self.datagrams_received += received
            self.bytes_received += received_bytes
            self.largest_datagram_received = largest
        return self._completed()

    def _receive_control(self, plaintext: bytes) -> None:
        """An authenticated datagram that is not DATA: KEEPALIVE, CLOSE, or malformed."""
        try:
            body = wire.parse_body_untrusted(plaintext)
        except DatagramError:
            self.malformed += 1
            return
        if body.type == wire.TYPE_CLOSE:
            code, reason = wire.parse_close_payload_untrusted(body.payload)
            self._end(CloseCause.PEER, code, reason)

    def _deliver(self, message: Message) -> None:
        self.received += 1
        self._events.append(message)

    def _lose(self, first_id: int, count: int, reason: LossReason) -> None:
        self.lost += count
        self._push_event(MessagesLost(first_id, count, reason))

    def _push_event(self, event: Event) -> None:
        if len(self._events) < self._max_events:  # (losses and key updates; bounded per call)
            self._events.append(event)

    def _completed(self) -> list[Event]:
        """The events completed since the last call that returned events."""
        events = self._events
        if not events:
            return []
        self._events = []
        return events

    def datagrams_to_send(self) -> list[DatagramTrain]:
        """The datagrams the session made on its own (keep-alive, CLOSE) since the last call,
        oldest first: send them after :meth:`handle_timers`, :meth:`close` or
        :meth:`lifeline_lost`."""
        outgoing = self._outgoing
        if not outgoing:
            return []
        self._outgoing = []
        return outgoing

    # -- timers ---------------------------------------------------------------------------------

    def next_deadline(self) -> float:
        """When :meth:`handle_timers` next has something to do (``inf`` once closed)."""
        if self._send is None:
            return float("inf")
        config = self.config
        return min(
            self._last_received + config.idle_timeout,
            self._last_sent + config.keepalive_interval,
            self._reassembler.next_deadline(),
            self._previous_expires,
        )

    def handle_timers(self, now: float) -> list[Event]:
        """Run whatever is due at ``now``; return the events that completed (losses, partial
        messages, the end on the idle timeout). A keep-alive or CLOSE it makes waits in
        :meth:`datagrams_to_send`."""
        if self._send is None:
            return self._completed()
        config = self.config
        if now >= self._last_received + config.idle_timeout:
            self._send_close(CloseCause.IDLE_TIMEOUT, wire.CLOSE_IDLE_TIMEOUT, "idle timeout")
            return self._completed()
        if now >= self._last_sent + config.keepalive_interval:
            self._outgoing.append(self._seal_control(wire.TYPE_KEEPALIVE, b""))
            self._last_sent = now
            self.keepalives_sent += 1
        self._reassembler.expire(now)
        if now >= self._previous_expires:
            self._receive_previous = None
            self._previous_expires = float("inf")
        return self._completed()

    # -- ending ---------------------------------------------------------------------------------

    def close(self, code: int = wire.CLOSE_NORMAL, reason: str = "") -> list[Event]:
        """End the session; return the events (its :class:`ChannelClosed`; nothing if it had
        ended). The CLOSE datagram waits in :meth:`datagrams_to_send`."""
        if not 0 <= code <= 0xFFFF:
            raise ValueError("close code must fit 16 bits")
        if self._send is not None:
            self._send_close(CloseCause.LOCAL, code, reason)
        return self._completed()

    def close_received(self, code: int, reason: str) -> list[Event]:
        """The peer's authenticated close arrived on the stream; return the events."""
        if self._send is not None:
            self._end(CloseCause.PEER, code, reason)
        return self._completed()

    def lifeline_lost(self) -> list[Event]:
        """The secure stream ended without a close: end the session, telling the peer by UDP (a
        CLOSE datagram in :meth:`datagrams_to_send`); return the events."""
        if self._send is not None:
            self._send_close(
                CloseCause.LIFELINE_LOST, wire.CLOSE_LIFELINE_LOST, "secure stream ended"
            )
        return self._completed()

    def _send_close(self, cause: CloseCause, code: int, reason: str) -> None:
        """Seal a CLOSE datagram for :meth:`datagrams_to_send`, then end the session."""
        self._outgoing.append(
            self._seal_control(wire.TYPE_CLOSE, wire.encode_close_payload(code, reason))
        )
        self._end(cause, code, reason)

    def _end(self, cause: CloseCause, code: int, reason: str) -> None:
        self._send = None
        self._receive = self._receive_previous = self._receive_next = None
        self._previous_expires = float("inf")
        self._reassembler.clear()
        self.state = SessionState.CLOSED
        self.closed = ChannelClosed(cause, code, reason)
        self._events.append(self.closed)

    def _closed_error(self) -> SessionClosed:
        closed = self.closed or ChannelClosed(CloseCause.LOCAL)
        return SessionClosed(closed.cause, closed.code, closed.reason)

    @property
    def has_keys(self) -> bool:
        """Whether any key is still held (``False`` once the session ended)."""
        return any(
            keys is not None
            for keys in (self._send, self._receive, self._receive_previous, self._receive_next)
        )

    @property
    def send_epoch(self) -> int:
        return self._send.epoch if self._send is not None else -1

    @property
    def receive_epoch(self) -> int:
        return self._receive.epoch if self._receive is not None else -1

    def statistics(self) -> Statistics:
        reassembler = self._reassembler
        return Statistics(
            sent=self.sent,
            received=self.received,
            lost=self.lost,
            late=reassembler.late,
            replayed=self.replayed,
            failed_authentication=self.failed_authentication,
            reassembly_timeouts=reassembler.timeouts,
            partial=reassembler.partial,
            datagrams_sent=self.datagrams_sent,
            datagrams_received=self.datagrams_received,
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            largest_datagram_received=self.largest_datagram_received,
            unknown_connection_id=self.unknown_connection_id,
            malformed=self.malformed,
            duplicate_fragments=reassembler.duplicate_fragments,
            keepalives_sent=self.keepalives_sent,
            send_epoch=self.send_epoch,
            receive_epoch=self.receive_epoch,
            in_reassembly=reassembler.messages_held,
            reassembly_bytes=reassembler.bytes_held,
        )

    def __repr__(self) -> str:
        return (
            f"<Session {self.state.value} cid={self._local_cid:016x} "
            f"sent={self.sent} received={self.received}>"
        )
