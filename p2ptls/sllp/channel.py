"""The SLLP channel: a trio ``send``/``receive`` channel over UDP, set up on a stream.

Theory of operation
-------------------
An :class:`SllpChannel` wraps a sans-IO :class:`~p2ptls.sllp.Session` and a
:class:`~p2ptls.sllp.transport.DatagramTransport`, and keeps the stream it was set up on (a
:class:`Lifeline`: a host's logical stream of ``"p2ptls/sllp/1"``, or a bare
:class:`~p2ptls.SecureStream`; see :mod:`p2ptls.sllp.setup`). UDP never carries a handshake.

The channel has no background task (like ``SecureStream``, it is driven by its callers): a task in
:meth:`SllpChannel.receive` drains the socket in batches, runs the session's timers (keep-alives,
idle timeout, reassembly timeouts) and watches the stream, the channel's lifeline, for the peer's
close or its end. While that task waits, it waits on the socket alone (cheap: this is the path
taken under load) and, at least every ``LIFELINE_POLL`` seconds when no datagram comes first, on
the socket and the stream together. On a host's logical stream it also checks, without waiting,
whether the shared connection ended, at least every ``LIFELINE_POLL`` however busy: datagrams that
keep arriving cannot hide a broken connection. :meth:`SllpChannel.send` seals and writes
synchronously, waiting only when the socket buffer is full, and when no task is receiving it does
the same housekeeping (without the stream) at most every ``HOUSEKEEPING_INTERVAL``. So keep a task
in ``receive()`` (or ``async for``) on each side; a side that never receives still learns of a
close by datagram or by the idle timeout.

The end of a channel always reaches the application as an error from ``receive()`` and ``send()``:
:class:`PeerClosed` (a ``trio.EndOfChannel``: ``async for`` ends), :class:`IdleTimeout` and
:class:`LifelineLost` (both ``trio.BrokenResourceError``), or ``trio.ClosedResourceError`` after
our own ``aclose()``. Messages that arrived before the end are delivered first. A
:class:`LifelineLost` has the stream's own error as its ``__cause__`` (for a logical stream whose
connection broke, a :class:`~p2ptls.ConnectionLost`, whose cause says why).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from typing import Protocol

import attrs
import trio

from .._util import ConflictDetector
from ..identity import PeerRecord
from ..logical import LogicalStream
from . import _wire as wire
from ._datagrams import DatagramTrain
from ._errors import DatagramTooLarge, NegotiationError, SllpError
from ._inbox import Inbox
from ._sealing import SendBuffer
from ._session import Session
from .config import SllpConfig
from .events import ChannelClosed, CloseCause, Event, Message, Statistics
from .transport import DatagramTransport

LIFELINE_POLL = 0.05
HOUSEKEEPING_INTERVAL = 0.01
CLOSE_TIMEOUT = 1.0


class PeerClosed(trio.EndOfChannel, SllpError):
    """The peer closed the channel (authenticated), with a code and a reason."""

    def __init__(self, code: int = 0, reason: str = "") -> None:
        super().__init__(
            f"peer closed the SLLP channel (code {code}{': ' + reason if reason else ''})"
        )
        self.code = code
        self.reason = reason


class ChannelBroken(trio.BrokenResourceError, SllpError):
    """The channel ended without the peer closing it."""


class IdleTimeout(ChannelBroken):
    """Nothing authenticated arrived from the peer for ``idle_timeout`` seconds."""


class LifelineLost(ChannelBroken):
    """The stream under the channel ended, was reset, broke with its connection, or carried
    something unexpected; ``__cause__`` is that stream's error."""


class SequenceExhausted(ChannelBroken):
    """The 64-bit sequence space of our direction ran out (never in practice)."""


def _messages_sent(
    messages: Sequence[bytes | bytearray | memoryview], fragment_size: int, sent: int
) -> int:
    """How many of ``messages``, sealed together with ``fragment_size``, lie wholly within the
    first ``sent`` bytes of the batch (each message takes its payload and 51 bytes per
    datagram)."""
    end = 0
    for index, message in enumerate(messages):
        size = memoryview(message).nbytes
        end += size + (-(-size // fragment_size) or 1) * wire.OVERHEAD
        if end > sent:
            return index
    return len(messages)


class Lifeline(Protocol):
    """What SLLP needs of the stream it is set up on, which stays open as the channel's lifeline:
    whole messages both ways, the exporter, and who is who. A host's
    :class:`~p2ptls.LogicalStream` and a :class:`~p2ptls.SecureStream` both qualify."""

    @property
    def server_side(self) -> bool:
        """``False`` on the side that opened the stream: that side offers, the other answers."""
        ...

    @property
    def remote_peer(self) -> PeerRecord: ...

    def export_keying_material(self, label: str, context: bytes, length: int) -> bytes: ...

    async def send_message(self, message: bytes | bytearray | memoryview) -> None: ...

    async def receive_message(self) -> bytes: ...

    async def aclose(self) -> None: ...


async def aclose_forcefully(stream: Lifeline) -> None:
    """Close ``stream`` at once, without waiting to tell the peer (``trio.aclose_forcefully``)."""
    with trio.CancelScope() as scope:
        scope.cancel()
        await stream.aclose()


class SllpChannel(trio.abc.SendChannel[bytes], trio.abc.ReceiveChannel[Message]):
    """An encrypted, authenticated, loss-tolerant message channel to one peer. Use
    :func:`open_channel`, :func:`connect_datagram` or :func:`accept_datagram` to make one.

    ``send`` takes messages up to :attr:`max_message_size` bytes; ``receive`` returns each as a
    :class:`~p2ptls.sllp.Message`, whole (or partial in partial mode), never waiting for a lost
    one. Iterating gives messages until the peer closes. :meth:`send_many` and
    :meth:`receive_many` do the same for many messages at a time, with one system call per 64
    equal-sized datagrams (segmentation offload and receive coalescing, where the kernel has them)
    and one checkpoint per batch: the way to send many small messages fast.
    """

    def __init__(
        self,
        stream: Lifeline,
        session: Session,
        transport: DatagramTransport,
        config: SllpConfig,
    ) -> None:
        self.stream = stream
        """The stream the channel was set up on (its lifeline)."""
        self.session = session
        """The sans-IO session (for inspection)."""
        self.transport = transport
        self.config = config
        self._closed = False
        self._receiver_waiting = False
        self._next_housekeeping = -math.inf
        self._next_lifeline_check = -math.inf
        self._send_guard = ConflictDetector("another task is already sending on this channel")
        self._send_buffer = SendBuffer()  # each send is handed to the kernel before the next
        self._inbox = Inbox(config)
        """The session's events until the application takes them (bounded)."""
        self._receive_guard = ConflictDetector("another task is already receiving")
        self._end_error: BaseException | None = None
        self._lifeline_error: BaseException | None = None

    # -- properties -----------------------------------------------------------------------------

    @property
    def remote_peer(self) -> PeerRecord:
        """The authenticated peer (from the stream)."""
        return self.stream.remote_peer

    @property
    def max_message_size(self) -> int:
        """The largest message :meth:`send` accepts (ours and the peer's limit)."""
        return self.session.max_send_message

    @property
    def max_datagram_payload(self) -> int:
        """The channel's datagram limit (the smaller of the two sides' settings): the largest
        datagram either side sends or accepts."""
        return self.session.parameters.datagram_size

    @property
    def datagram_size(self) -> int:
        """The size of the datagrams this side sends now (from the path MTU, or configured)."""
        return self.session.send_datagram_size

    def size_datagrams(self) -> bool:
        """Size our datagrams: ``SllpConfig.datagram_size``, or the path MTU less the headers as
        the operating system knows it now (1200 bytes where it cannot tell), at most the
        channel's limit. Return whether the size went down. The set-up calls it once; a send
        calls it again when the path refuses a datagram."""
        session = self.session
        before = session.send_datagram_size
        size = self.config.datagram_size
        if size is None:
            path = self.transport.path_datagram_size()
            size = wire.DEFAULT_DATAGRAM_PAYLOAD if path is None else path
        size = max(size, wire.MIN_DATAGRAM_PAYLOAD)
        return session.set_send_datagram_size(size) < before

    def _shrink_to_path(self, error: DatagramTooLarge) -> None:
        """After the path refused a datagram: move to the smaller path MTU, or raise ``error``
        when the size is configured or the path MTU did not go down."""
        if self.config.datagram_size is not None or not self.size_datagrams():
            raise error

    @property
    def local_address(self) -> tuple[str, int]:
        return self.transport.local_address

    @property
    def close_reason(self) -> ChannelClosed | None:
        """How the channel ended, once it has."""
        return self.session.closed

    def statistics(self) -> Statistics:
        """Counters: messages sent, received, lost, late; datagrams; drops (:class:`Statistics`)."""
        statistics = self.session.statistics()
        overflowed = self._inbox.overflowed  # received by the session, dropped unread here
        if not overflowed:
            return statistics
        return attrs.evolve(
            statistics,
            received=statistics.received - overflowed,
            lost=statistics.lost + overflowed,
        )

    # -- errors ---------------------------------------------------------------------------------

    def _error_for(self, closed: ChannelClosed) -> BaseException:
        if self._end_error is None:
            cause = closed.cause
            error: BaseException
            if cause is CloseCause.PEER:
                error = PeerClosed(closed.code, closed.reason)
            elif cause is CloseCause.IDLE_TIMEOUT:
                error = IdleTimeout(f"no authenticated datagram for {self.config.idle_timeout} s")
            elif cause is CloseCause.LIFELINE_LOST:
                error = LifelineLost("the stream under the SLLP channel ended")
                error.__cause__ = self._lifeline_error
            elif cause is CloseCause.SEQUENCE_EXHAUSTED:
                error = SequenceExhausted("sequence numbers exhausted")
            else:
                error = trio.ClosedResourceError("this channel was closed")
            self._end_error = error
        return self._end_error

    def _raise_ended(self, *, sending: bool) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this channel was closed")
        closed = self.session.closed
        if closed is None:
            return
        error = self._error_for(closed)
        if sending and isinstance(error, PeerClosed):
            raise trio.BrokenResourceError("the peer closed the SLLP channel") from error
        raise error

    # -- sending --------------------------------------------------------------------------------

    def _ready_to_send(self) -> float:
        """Raise the channel's end error if it ended, run any housekeeping due (unless a
        receiver runs it), and return the time now."""
        self._raise_ended(sending=True)
        now = trio.current_time()
        if not self._receiver_waiting and now >= self._next_housekeeping:
            self._housekeeping(now)
            self._raise_ended(sending=True)
        return now

    async def send(self, value: bytes | bytearray | memoryview) -> None:
        """Send one message (at most :attr:`max_message_size` bytes) as one or more datagrams.

        Returns once every datagram is handed to the kernel; waits only if the socket buffer is
        full. Raises ``ValueError`` for an oversized message, :class:`DatagramTooLarge` if the
        path refuses the datagram size, and the channel's end error once it ended.
        """
        with self._send_guard:
            await trio.lowlevel.checkpoint_if_cancelled()
            now = self._ready_to_send()
            while True:
                train = self.session.send_message(value, now, into=self._send_buffer)
                try:
                    await self._transmit(train)
                except DatagramTooLarge as exc:
                    # The path shrank: send the message again, whole, in smaller datagrams
                    # (under a new message id: what went of the first try expires unread).
                    self._shrink_to_path(exc)
                    continue
                return

    async def send_many(self, messages: Iterable[bytes | bytearray | memoryview]) -> None:
        """Send several messages, in order, as :meth:`send` would send each, in one go: they are
        sealed together, and datagrams of one size leave together, up to 64 in one system call
        with UDP segmentation offload (so many one-datagram messages of one size cost about one
        ``sendmsg`` per 64); without it, one ``sendto`` per datagram. One checkpoint for the lot.

        Raises ``ValueError`` before sending anything if one message is above
        :attr:`max_message_size`. If cancelled while waiting for the socket buffer, the datagrams
        not yet handed to the kernel are not sent (the receiver loses those messages).
        """
        with self._send_guard:
            await trio.lowlevel.checkpoint_if_cancelled()
            now = self._ready_to_send()
            batch = list(messages)
            while True:
                fragment_size = self.session.send_datagram_size - wire.OVERHEAD
                trains = self.session.send_messages(batch, now, into=self._send_buffer)
                try:
                    await self._transmit_trains(trains)
                except DatagramTooLarge as exc:
                    self._shrink_to_path(exc)
                    # Send again, in smaller datagrams, every message not wholly sent.
                    batch = batch[_messages_sent(batch, fragment_size, exc.offset) :]
                    continue
                return

    async def _transmit_trains(self, trains: list[DatagramTrain]) -> None:
        if len(trains) == 1:
            await self._transmit(trains[0])
            return
        transport = self.transport
        waited = False
        before = 0  # bytes of the batch in the trains already sent
        for train in trains:
            try:
                offset = transport.send_from(train, 0)
                while offset < len(train):
                    waited = True
                    await transport.wait_writable()
                    offset = transport.send_from(train, offset)
            except DatagramTooLarge as exc:
                exc.offset += before
                raise
            before += len(train)
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def _transmit(self, train: DatagramTrain) -> None:
        transport = self.transport
        offset = transport.send_from(train, 0)
        if offset >= len(train):
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        while offset < len(train):
            await transport.wait_writable()
            offset = transport.send_from(train, offset)

    def _transmit_nowait(self, trains: list[DatagramTrain]) -> None:
        """Best effort, for keep-alives and closes: a full buffer or an error drops them."""
        for train in trains:
            with contextlib.suppress(OSError, SllpError, RuntimeError):
                self.transport.send_from(train, 0)

    # -- receiving ------------------------------------------------------------------------------

    async def receive(self) -> Message:
        """The next message. Raises :class:`PeerClosed` (a ``trio.EndOfChannel``) after the
        peer's close, :class:`IdleTimeout` or :class:`LifelineLost` if the channel broke."""
        while True:
            event = await self.receive_event()
            if type(event) is Message:
                return event

    async def receive_many(self, max_messages: int = 1024) -> list[Message]:
        """Every message waiting, up to ``max_messages`` (at least one: waits for it as
        :meth:`receive` does), oldest first. A coalesced read of many datagrams is decrypted and
        delivered with one checkpoint for the lot, not a scheduler pass per message. Losses and
        key updates are skipped as :meth:`receive` skips them; raises as :meth:`receive` does once
        the channel ended and the messages that arrived before its end were taken."""
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        with self._receive_guard:
            await trio.lowlevel.checkpoint_if_cancelled()
            session = self.session
            inbox = self._inbox
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("this channel was closed")
                if inbox:
                    messages = inbox.take_messages(max_messages)
                    if messages:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                        return messages
                    event = inbox.next_event()
                    if type(event) is ChannelClosed:
                        raise self._error_for(event)
                self._raise_ended(sending=False)
                now = trio.current_time()
                self._housekeeping(now)
                if inbox or session.closed is not None:
                    continue
                await self._wait(now)

    async def receive_event(self) -> Event:
        """The next :class:`Message`, :class:`MessagesLost` or :class:`KeysUpdated`; raises as
        :meth:`receive` does when the channel ends."""
        with self._receive_guard:
            await trio.lowlevel.checkpoint_if_cancelled()
            session = self.session
            inbox = self._inbox
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("this channel was closed")
                event = inbox.next_event()
                if event is not None:
                    if type(event) is ChannelClosed:
                        raise self._error_for(event)
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return event
                self._raise_ended(sending=False)
                now = trio.current_time()
                self._housekeeping(now)
                if inbox or session.closed is not None:
                    continue
                await self._wait(now)

    def _housekeeping(self, now: float) -> None:
        """Drain the socket and run due timers (no waiting)."""
        session = self.session
        self.transport.drain(self._receive_datagrams, now, self.config.receive_batch)
        if now >= session.next_deadline():
            self._inbox.add(session.handle_timers(now))
            self._transmit_nowait(session.datagrams_to_send())
        self._next_housekeeping = now + HOUSEKEEPING_INTERVAL

    def _receive_datagrams(self, data: memoryview, segment: int, now: float) -> None:
        """The transport's sink: the session checks the datagrams, the inbox keeps the events."""
        events = self.session.receive_datagrams_untrusted(data, segment, now)
        if events:
            self._inbox.add(events)

    async def _wait(self, now: float) -> None:
        deadline = self.session.next_deadline()
        self._receiver_waiting = True
        try:
            if now >= self._next_lifeline_check:
                # Busy or not, at least every LIFELINE_POLL: datagrams that keep arriving must
                # not hide a lost connection. (Checked without yielding: under load a yield can
                # cost a whole frame of the sender's datagrams when both run in one process.)
                self._next_lifeline_check = now + LIFELINE_POLL
                if self._connection_ended():
                    await self._look_at_lifeline()
                    if self.session.closed is not None:
                        return
            quick = min(deadline, self._next_lifeline_check)
            with trio.move_on_at(quick) as scope:
                await self.transport.wait_readable()
            if not scope.cancelled_caught or quick >= deadline:
                return
            # Quiet: wait on the socket and the stream together, until the next timer.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_lifeline, nursery.cancel_scope)
                with trio.move_on_at(deadline):
                    await self.transport.wait_readable()
                nursery.cancel_scope.cancel()
        finally:
            self._receiver_waiting = False

    def _connection_ended(self) -> bool:
        """Whether the shared connection under a logical-stream lifeline has ended (a bare
        secure stream cannot tell without reading: it is watched while the receiver is quiet)."""
        stream = self.stream
        return isinstance(stream, LogicalStream) and stream.connection.closed

    async def _look_at_lifeline(self) -> None:
        """Let the lifeline watcher take its first step (an ended logical stream is seen there,
        without waiting), then stop it."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_lifeline, nursery.cancel_scope)
            # The watcher's first step runs in the next batch; we cancel it only in the one after
            # (cancelled before that step, it would not even look).
            await trio.lowlevel.checkpoint()
            await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()

    async def _watch_lifeline(self, done: trio.CancelScope) -> None:
        data: bytes | None = None
        error: BaseException | None = None
        try:
            data = await self.stream.receive_message()
        except trio.EndOfChannel:
            error = trio.EndOfChannel("the peer ended the stream without closing the channel")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            error = exc  # reset, or the connection under it lost (ConnectionLost), or closed
        # Whatever the peer sent by UDP before it closed the stream is waiting: take it first.
        if not self._closed:
            self._housekeeping(trio.current_time())
        if data is not None:
            try:
                close = wire.parse_stream_close_untrusted(data)
            except NegotiationError as exc:
                error = exc
            else:
                self._inbox.add(self.session.close_received(close.code, close.reason))
        if error is not None:
            self._lifeline_lost(error)
        done.cancel()

    def _lifeline_lost(self, error: BaseException) -> None:
        if self._lifeline_error is None:
            self._lifeline_error = error
        self._inbox.add(self.session.lifeline_lost())
        trains = self.session.datagrams_to_send()
        if not self._closed:
            self._transmit_nowait(trains)

    # -- closing --------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close with code 0 (see :meth:`close`)."""
        await self.close()

    async def close(self, code: int = wire.CLOSE_NORMAL, reason: str = "") -> None:
        """Tell the peer (an authenticated CLOSE datagram and the same on the stream), erase the
        keys, close the stream and the socket. Codes 0-15 are SLLP's; applications use 16-65535."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._inbox.add(self.session.close(code, reason))
        trains = self.session.datagrams_to_send()
        self._closed = True
        self._transmit_nowait(trains)
        try:
            if trains:
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await self.stream.send_message(wire.encode_stream_close(code, reason))
            await self.stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            await aclose_forcefully(self.stream)
        except BaseException:
            await aclose_forcefully(self.stream)
            raise
        finally:
            self.transport.close()

    def __repr__(self) -> str:
        state = "open" if self.session.closed is None else self.session.closed.cause.value
        return f"<SllpChannel {self.transport.local_address} {state}>"
