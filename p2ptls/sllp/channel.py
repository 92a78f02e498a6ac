"""The SLLP channel: a trio ``send``/``receive`` channel over UDP, opened from a secure stream.

Theory of operation
-------------------
:func:`open_channel` runs the offer/answer exchange on an established, dedicated
:class:`~p2ptls.SecureStream` (the side with ``server_side == False`` offers), derives the two
direction secrets from the stream's exporter, and wraps a sans-IO
:class:`~p2ptls.sllp.Session` and a :class:`~p2ptls.sllp.transport.DatagramTransport` in an
:class:`SllpChannel`. UDP never carries a handshake.

The channel has no background task (like ``SecureStream``, it is driven by its callers): a task in
:meth:`SllpChannel.receive` drains the socket in batches, runs the session's timers (keep-alives,
idle timeout, reassembly timeouts) and watches the stream, the channel's lifeline, for the peer's
close or its end. While that task waits, it first waits on the socket alone (cheap: this is the
path taken under load) and, after ``LIFELINE_POLL`` seconds of quiet, on the socket and the stream
together. :meth:`SllpChannel.send` seals and writes synchronously, waiting only when the socket
buffer is full, and when no task is receiving it does the same housekeeping (without the stream)
at most every ``HOUSEKEEPING_INTERVAL``. So keep a task in ``receive()`` (or ``async for``) on each
side; a side that never receives still learns of a close by datagram or by the idle timeout.

The end of a channel always reaches the application as an error from ``receive()`` and ``send()``:
:class:`PeerClosed` (a ``trio.EndOfChannel``: ``async for`` ends), :class:`IdleTimeout` and
:class:`LifelineLost` (both ``trio.BrokenResourceError``), or ``trio.ClosedResourceError`` after
our own ``aclose()``. Messages that arrived before the end are delivered first.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import socket

import trio

from .._util import ConflictDetector
from ..host import Host
from ..identity import PeerId, PeerRecord
from ..stream import SecureStream
from . import _wire as wire
from ._errors import NegotiationError, SllpError
from ._keys import direction_secrets
from ._session import DatagramTrain, Session, SessionParameters
from .config import SllpConfig
from .events import ChannelClosed, CloseCause, Event, Message, Statistics
from .transport import DatagramTransport, UdpTransport

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
    """The secure stream under the channel ended (or carried something unexpected)."""


class SequenceExhausted(ChannelBroken):
    """The 64-bit sequence space of our direction ran out (never in practice)."""


class SllpChannel(trio.abc.SendChannel[bytes], trio.abc.ReceiveChannel[Message]):
    """An encrypted, authenticated, loss-tolerant message channel to one peer. Use
    :func:`open_channel`, :func:`connect_datagram` or :func:`accept_datagram` to make one.

    ``send`` takes messages up to :attr:`max_message_size` bytes; ``receive`` returns each as a
    :class:`~p2ptls.sllp.Message`, whole (or partial in partial mode), never waiting for a lost
    one. Iterating gives messages until the peer closes.
    """

    def __init__(
        self,
        stream: SecureStream,
        session: Session,
        transport: DatagramTransport,
        config: SllpConfig,
    ) -> None:
        self.stream = stream
        """The secure stream the channel was set up on (its lifeline)."""
        self.session = session
        """The sans-IO session (for inspection)."""
        self.transport = transport
        self.config = config
        self._closed = False
        self._receiver_waiting = False
        self._next_housekeeping = -math.inf
        self._send_guard = ConflictDetector("another task is already sending on this channel")
        self._receive_guard = ConflictDetector("another task is already receiving")
        self._end_error: BaseException | None = None

    # -- properties -----------------------------------------------------------------------------

    @property
    def remote_peer(self) -> PeerRecord:
        """The authenticated peer (from the secure stream)."""
        return self.stream.remote_peer

    @property
    def max_message_size(self) -> int:
        """The largest message :meth:`send` accepts (ours and the peer's limit)."""
        return self.session.max_send_message

    @property
    def max_datagram_payload(self) -> int:
        """The UDP payload size in use (the smaller of the two sides' settings)."""
        return self.session.parameters.datagram_size

    @property
    def local_address(self) -> tuple[str, int]:
        return self.transport.local_address

    @property
    def close_reason(self) -> ChannelClosed | None:
        """How the channel ended, once it has."""
        return self.session.closed

    def statistics(self) -> Statistics:
        """Counters: messages sent, received, lost, late; datagrams; drops (:class:`Statistics`)."""
        return self.session.statistics()

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
                error = LifelineLost("the secure stream under the SLLP channel ended")
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

    async def send(self, value: bytes | bytearray | memoryview) -> None:
        """Send one message (at most :attr:`max_message_size` bytes) as one or more datagrams.

        Returns once every datagram is handed to the kernel; waits only if the socket buffer is
        full. Raises ``ValueError`` for an oversized message, :class:`DatagramTooLarge` if the
        path refuses the datagram size, and the channel's end error once it ended.
        """
        with self._send_guard:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._raise_ended(sending=True)
            now = trio.current_time()
            if not self._receiver_waiting and now >= self._next_housekeeping:
                self._housekeeping(now)
                self._raise_ended(sending=True)
            train = self.session.send_message(value, now)
            await self._transmit(train)

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

    async def receive_event(self) -> Event:
        """The next :class:`Message`, :class:`MessagesLost` or :class:`KeysUpdated`; raises as
        :meth:`receive` does when the channel ends."""
        with self._receive_guard:
            await trio.lowlevel.checkpoint_if_cancelled()
            session = self.session
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("this channel was closed")
                event = session.next_event()
                if event is not None:
                    if type(event) is ChannelClosed:
                        raise self._error_for(event)
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return event
                self._raise_ended(sending=False)
                now = trio.current_time()
                self._housekeeping(now)
                if session.events or session.closed is not None:
                    continue
                await self._wait(now)

    def _housekeeping(self, now: float) -> None:
        """Drain the socket and run due timers (no waiting)."""
        session = self.session
        self.transport.drain(session.receive_datagram_untrusted, now, self.config.receive_batch)
        if now >= session.next_deadline():
            trains = session.handle_timers(now)
            if trains:
                self._transmit_nowait(trains)
        self._next_housekeeping = now + HOUSEKEEPING_INTERVAL

    async def _wait(self, now: float) -> None:
        deadline = self.session.next_deadline()
        quick = min(deadline, now + LIFELINE_POLL)
        self._receiver_waiting = True
        try:
            with trio.move_on_at(quick) as scope:
                await self.transport.wait_readable()
            if not scope.cancelled_caught or quick >= deadline:
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_lifeline, nursery.cancel_scope)
                with trio.move_on_at(deadline):
                    await self.transport.wait_readable()
                nursery.cancel_scope.cancel()
        finally:
            self._receiver_waiting = False

    async def _watch_lifeline(self, done: trio.CancelScope) -> None:
        try:
            data = await self.stream.receive_message()
        except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
            data = None
        # Whatever the peer sent by UDP before it closed the stream is waiting: take it first.
        if not self._closed:
            self._housekeeping(trio.current_time())
        close = None
        if data is not None:
            with contextlib.suppress(NegotiationError):
                close = wire.parse_stream_close_untrusted(data)
        if close is not None:
            self.session.close_received(close.code, close.reason)
        else:
            self._lifeline_lost()
        done.cancel()

    def _lifeline_lost(self) -> None:
        train = self.session.lifeline_lost()
        if train is not None and not self._closed:
            self._transmit_nowait([train])

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
        train = self.session.close(code, reason)
        self._closed = True
        if train is not None:
            self._transmit_nowait([train])
        try:
            if train is not None:
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await self.stream.send_message(wire.encode_stream_close(code, reason))
            await self.stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            await trio.aclose_forcefully(self.stream)
        except BaseException:
            await trio.aclose_forcefully(self.stream)
            raise
        finally:
            self.transport.close()

    def __repr__(self) -> str:
        state = "open" if self.session.closed is None else self.session.closed.cause.value
        return f"<SllpChannel {self.transport.local_address} {state}>"


# -- opening ----------------------------------------------------------------------------------


def _stream_socket_address(stream: SecureStream, *, peer: bool) -> str | None:
    sock = getattr(stream.transport_stream, "socket", None)
    if sock is None:
        return None
    try:
        address = sock.getpeername() if peer else sock.getsockname()
    except (OSError, AttributeError):
        return None
    return str(address[0])


def _peer_address(
    stream: SecureStream, offered: tuple[str, int], override: tuple[str, int] | None
) -> tuple[str, int]:
    if override is not None:
        return override
    host, port = offered
    if ipaddress.ip_address(host).is_unspecified:
        seen = _stream_socket_address(stream, peer=True)
        if seen is None:
            raise NegotiationError("peer offered no UDP host and the stream has no peer address")
        host = seen
    return host, port


def _fit_family(transport: DatagramTransport, address: tuple[str, int]) -> tuple[str, int]:
    """The peer address in a form our socket can send to (or a NegotiationError)."""
    if not isinstance(transport, UdpTransport):
        return address
    host, port = address
    ipv6 = ipaddress.ip_address(host).version == 6
    if transport.socket.family == socket.AF_INET6:
        return (host, port) if ipv6 else (f"::ffff:{host}", port)
    if ipv6:
        raise NegotiationError("peer's UDP address is IPv6 but our socket is IPv4")
    return address


def _new_connection_id(avoid: int = 0) -> int:
    while True:
        cid = int.from_bytes(os.urandom(8), "big")
        if cid and cid != avoid:
            return cid


async def open_channel(
    stream: SecureStream,
    *,
    local_address: tuple[str, int] | None = None,
    config: SllpConfig | None = None,
    peer_address: tuple[str, int] | None = None,
    transport: DatagramTransport | None = None,
    first_message: bytes | None = None,
) -> SllpChannel:
    """Set up an SLLP channel over an established, dedicated secure stream; call on both sides.

    Args:
      stream: the secure stream (its handshake runs now if it has not). It becomes the channel's
        lifeline: the channel closes it, and its end ends the channel.
      local_address: where to bind the UDP socket; default: the stream's local host, port 0.
      config: limits and tunables (each side has its own).
      peer_address: send to this address instead of the one in the peer's offer (a relay, NAT).
      transport: a ready transport instead of a new UDP socket (tests, the in-process relay).
      first_message: the offer, if the accepting application already read it from the stream.

    Raises :class:`NegotiationError` if the exchange fails or times out (``setup_timeout``). The
    stream is left open on failure; the caller owns it.
    """
    config = config or SllpConfig()
    await stream.do_handshake()
    offerer = not stream.server_side
    own_transport = transport is None
    if transport is None:
        if local_address is None:
            local_address = (_stream_socket_address(stream, peer=False) or "127.0.0.1", 0)
        transport = UdpTransport.bind(local_address, config)
    try:
        host, port = transport.local_address
        mine = wire.Offer(
            kind=wire.KIND_OFFER if offerer else wire.KIND_ANSWER,
            epoch=wire.CHANNEL_EPOCH,
            connection_id=_new_connection_id(),
            address=(host, port),
            max_datagram_payload=config.max_datagram_payload,
            max_message_size=config.max_message_size,
        )
        try:
            with trio.fail_after(config.setup_timeout):
                if offerer:
                    offer_bytes = wire.encode_offer(mine)
                    await stream.send_message(offer_bytes)
                    answer_bytes = await stream.receive_message()
                    theirs = wire.parse_offer_untrusted(answer_bytes, wire.KIND_ANSWER)
                    if theirs.epoch != mine.epoch:
                        raise NegotiationError("SLLP answer for another epoch")
                    if theirs.connection_id == mine.connection_id:
                        raise NegotiationError("SLLP answer reuses the offer's connection id")
                else:
                    if first_message is None:
                        first_message = await stream.receive_message()
                    offer_bytes = bytes(first_message)
                    theirs = wire.parse_offer_untrusted(offer_bytes, wire.KIND_OFFER)
                    mine = wire.Offer(
                        kind=wire.KIND_ANSWER,
                        epoch=theirs.epoch,
                        connection_id=_new_connection_id(avoid=theirs.connection_id),
                        address=mine.address,
                        max_datagram_payload=mine.max_datagram_payload,
                        max_message_size=mine.max_message_size,
                    )
                    answer_bytes = wire.encode_offer(mine)
                    await stream.send_message(answer_bytes)
        except trio.TooSlowError:
            raise NegotiationError("SLLP set-up did not finish within setup_timeout") from None
        except trio.EndOfChannel:
            raise NegotiationError("the stream ended during SLLP set-up") from None
        address = _peer_address(stream, theirs.address, peer_address)
        transport.set_peer(_fit_family(transport, address))
    except BaseException:
        if own_transport:
            transport.close()
        raise
    offerer_to_answerer, answerer_to_offerer = direction_secrets(
        stream.export_keying_material, offer_bytes, answer_bytes
    )
    send_secret, receive_secret = (
        (offerer_to_answerer, answerer_to_offerer)
        if offerer
        else (answerer_to_offerer, offerer_to_answerer)
    )
    parameters = SessionParameters(
        local_connection_id=mine.connection_id,
        remote_connection_id=theirs.connection_id,
        datagram_size=min(mine.max_datagram_payload, theirs.max_datagram_payload),
        peer_max_message_size=theirs.max_message_size,
    )
    session = Session(config, parameters, send_secret, receive_secret, trio.current_time())
    return SllpChannel(stream, session, transport, config)


async def connect_datagram(
    host: Host,
    peer: PeerRecord | PeerId,
    *,
    address: tuple[str, int] | None = None,
    local_address: tuple[str, int] | None = None,
    config: SllpConfig | None = None,
) -> SllpChannel:
    """Open a dedicated secure stream to ``peer`` with ``host.connect`` and an SLLP channel on it.

    The peer accepts with :func:`accept_datagram` on the stream it gets from ``host.incoming()``.
    """
    stream = await host.connect(peer, address)
    try:
        return await open_channel(stream, local_address=local_address, config=config)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def accept_datagram(
    stream: SecureStream,
    *,
    local_address: tuple[str, int] | None = None,
    config: SllpConfig | None = None,
    first_message: bytes | None = None,
) -> SllpChannel:
    """Answer the SLLP offer on an accepted stream (from ``host.incoming()`` or ``serve``).

    Pass ``first_message`` if the application already read the offer (see ``is_offer``).
    """
    if not stream.server_side:
        raise ValueError("accept_datagram needs the accepting side of a stream")
    return await open_channel(
        stream, local_address=local_address, config=config, first_message=first_message
    )
