"""How a :class:`~p2ptls.SecureStream` drives its handshake (the trio half; the protocol is in
:class:`p2ptls._connection.Connection`): flights out and in under the handshake deadline, the
private-key operation on a worker thread, the tickets received stored in the context, the replay
state persisted. ``SecureStream`` inherits it and owns the state named below.

The stream is HANDSHAKING until the handshake completes (OK); a failure makes it BROKEN, with the
typed error kept as the cause of every later ``trio.BrokenResourceError``. A cancellation
part-way through also makes it BROKEN, with :class:`~p2ptls._errors.StreamInterrupted` as the
cause (a second Hello would be refused, so the handshake cannot be resumed).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable

import trio

from ._connection import Connection
from ._connection_events import (
    Event,
    HandshakeComplete,
    PrivateKeyOperationNeeded,
    TicketReceived,
)
from ._connection_state import HandshakeState
from ._errors import HandshakeFailed, HandshakeTimeout, ProtocolError, StreamInterrupted
from ._stream_transport import TransportIO
from ._tickets import SessionTicket
from ._util import HandOffLock
from .config import StreamConfig
from .context import SecurityContext
from .identity import PeerRecord

log = logging.getLogger("p2ptls.stream")

HANDSHAKE_READ_SIZE = 16 * 1024
"""The most one handshake read asks of the transport: flights are a few KiB, and a TCP read of
``receive_size`` (256 KiB) would allocate that much for each (what follows a flight waits in
the connection's buffer)."""


def new_connection(
    context: SecurityContext, config: StreamConfig, *, remote: PeerRecord | None, source: str
) -> Connection:
    """The sans-IO connection a stream drives: an initiator for ``remote`` (resuming with a ticket
    from the context's cache if ``config.resumption``), or a responder (``remote`` is ``None``)
    for a connection from ``source``."""
    if remote is None:
        return Connection.responder(
            config,
            context.identity,
            context.psk,
            context.peers,
            context.replay_guard,
            now_ns=time.time_ns(),
            source=source,
            budget=context.budget,
            tickets=context.ticket_authority,
        )
    ticket = context.take_ticket(remote.peer_id) if config.resumption else None
    return Connection.initiator(
        config,
        context.identity,
        context.psk,
        remote,
        timestamp_ns=context.next_timestamp(),
        budget=context.budget,
        ticket=ticket,
    )


class StreamState(enum.Enum):
    """A :class:`~p2ptls.SecureStream`'s one state (as trio's ``SSLStream._state``)::

    HANDSHAKING --handshake done--> OK
    HANDSHAKING, OK --a failure or an interrupted record--> BROKEN
    any --aclose--> CLOSED
    """

    HANDSHAKING = "handshaking"
    OK = "ok"
    BROKEN = "broken"
    CLOSED = "closed"


class HandshakeDriving(TransportIO):
    """The handshake half of :class:`~p2ptls.SecureStream`."""

    config: StreamConfig
    context: SecurityContext
    transport_stream: trio.abc.Stream
    server_side: bool
    _conn: Connection
    _state: StreamState
    _error: BaseException | None
    _handshake_lock: HandOffLock
    _check_usable: Callable[[], None]
    _break: Callable[[BaseException], Awaitable[trio.BrokenResourceError]]
    _file_events: Callable[[list[Event]], None]

    async def do_handshake(self) -> None:
        """Run the handshake now (it otherwise runs on first use). Safe to call more than once.

        Raises ``trio.BrokenResourceError`` (cause: :class:`HandshakeFailed` or
        :class:`HandshakeTimeout`) if it fails. Tasks calling it at once (a sender and a receiver
        both needing the handshake) share one: the others wait for it and then return.
        """
        self._check_usable()
        if self._state is StreamState.OK:
            await trio.lowlevel.checkpoint()
            return
        # A hand-off lock: the one caller takes it without a schedule point (the handshake reads
        # the transport, a checkpoint); the others park until it is done.
        async with self._handshake_lock:
            self._check_usable()
            if self._state is not StreamState.HANDSHAKING:  # another task completed it
                return
            timeout = self.config.handshake_timeout
            try:
                with trio.fail_after(timeout if timeout is not None else float("inf")):
                    await self._run_handshake()
            except trio.TooSlowError:
                expired = HandshakeTimeout("handshake deadline passed")
                raise await self._break(expired) from expired
            except ProtocolError as exc:
                raise await self._break(exc) from exc
            except trio.BrokenResourceError as exc:
                failed = HandshakeFailed()
                failed.__cause__ = exc  # keep the transport's error for debugging
                raise await self._break(failed) from failed
            except trio.ClosedResourceError:
                if self._closed_here():
                    raise
                underneath = StreamInterrupted("the transport was closed underneath")
                raise await self._break(underneath) from underneath
            except trio.Cancelled:
                # The handshake cannot resume half-way (a second Hello would be refused).
                self._interrupted("the handshake was cancelled")
                raise
            self._state = StreamState.OK

    def _closed_here(self) -> bool:
        """``aclose`` was called (read through a call: an await may have changed the state)."""
        return self._state is StreamState.CLOSED

    def _interrupted(self, what: str) -> None:
        """A cancellation stopped a handshake or a record part-way: the stream is BROKEN (the
        transport is dropped by whoever uses the stream next, or by ``aclose``)."""
        if self._error is None:
            self._error = StreamInterrupted(what)
        if self._state is not StreamState.CLOSED:
            self._state = StreamState.BROKEN

    async def _run_handshake(self) -> None:
        conn = self._conn
        await self._handle_events(conn.start())
        await self._send_handshake_flights()
        while conn.state is not HandshakeState.ESTABLISHED:
            data = await self.transport_stream.receive_some(
                min(self.config.receive_size, HANDSHAKE_READ_SIZE)
            )
            if not data:
                raise HandshakeFailed()
            await self._handle_events(conn.receive_data_untrusted(data, trio.current_time()))
            await self._send_handshake_flights()

    async def _send_handshake_flights(self) -> None:
        owed = self._conn.data_to_send(handshake_only=True)  # tickets go with our next record
        if owed:
            await self._send_raw(owed)

    async def _private_key_operation(self, event: PrivateKeyOperationNeeded) -> bytes | None:
        result = await self.context.decrypt_once(event.ciphertext, event.label)
        if self._closed_here():
            raise trio.ClosedResourceError("this stream was closed during its handshake")
        return result

    async def _handle_events(self, events: list[Event]) -> None:
        """File the events of a handshake step, running what the handshake needs."""
        conn = self._conn
        for event in events:
            if isinstance(event, PrivateKeyOperationNeeded):
                plaintext = await self._private_key_operation(event)
                events.extend(conn.supply_decryption(plaintext, trio.current_time()))
                await self._send_handshake_flights()  # before anything else waits
            elif isinstance(event, HandshakeComplete):
                if self.server_side:  # an initiator chose its peer; nothing to note or persist
                    self.context.peers.note_authenticated(event.remote)
                    await self._persist_replay_state()
            else:
                self._file_events([event])

    def _store_ticket(self, event: TicketReceived) -> None:
        remote = self._conn.remote
        if remote is not None:
            expires = time.time() + event.lifetime_s
            self.context.store_ticket(
                SessionTicket(remote.peer_id, event.ticket, event.ticket_psk, expires)
            )

    async def _persist_replay_state(self) -> None:
        guard = self.context.replay_guard
        snapshot = guard.snapshot()  # taken on the event loop: no race with accept()
        if snapshot is None:
            return
        try:
            await trio.to_thread.run_sync(guard.write, snapshot)
        except OSError as exc:
            guard.dirty = True  # try again after the next handshake
            log.warning("could not persist the replay state to %s: %s", guard.path, exc)
