"""How a :class:`~p2ptls.SecureStream` drives its handshake (the trio half; the protocol is in
:class:`p2ptls._connection.Connection`): flights out and in under the handshake deadline, the
private-key operation on a worker thread, the tickets received stored in the context, the replay
state persisted. ``SecureStream`` inherits it and owns the state named below.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import trio

from ._connection import Connection
from ._connection_events import (
    Event,
    HandshakeComplete,
    PrivateKeyOperationNeeded,
    State,
    TicketReceived,
)
from ._errors import HandshakeFailed, HandshakeTimeout, ProtocolError
from ._tickets import SessionTicket
from .config import StreamConfig
from .context import SecurityContext

log = logging.getLogger("p2ptls.stream")


class HandshakeDriving:
    """The handshake half of :class:`~p2ptls.SecureStream`."""

    config: StreamConfig
    context: SecurityContext
    transport_stream: trio.abc.Stream
    _conn: Connection
    _closed: bool
    _error: BaseException | None
    _handshake_done: bool
    _handshake_lock: trio.Lock
    _check_usable: Callable[[], None]
    _break: Callable[[BaseException], Awaitable[trio.BrokenResourceError]]
    _send_raw: Callable[[bytes | bytearray], Awaitable[None]]
    _file_events: Callable[[list[Event]], None]

    async def do_handshake(self) -> None:
        """Run the handshake now (it otherwise runs on first use). Safe to call more than once.

        Raises ``trio.BrokenResourceError`` (cause: :class:`HandshakeFailed` or
        :class:`HandshakeTimeout`) if it fails.
        """
        self._check_usable()
        if self._handshake_done:
            await trio.lowlevel.checkpoint()
            return
        async with self._handshake_lock:
            self._check_usable()
            if self._handshake_done:
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
                if self._closed:
                    raise
                failed = HandshakeFailed()
                raise await self._break(failed) from failed
            except trio.Cancelled:
                # The handshake cannot resume half-way (a second Hello would be refused).
                if self._error is None:
                    self._error = ProtocolError("the handshake was cancelled")
                raise
            self._handshake_done = True

    async def _run_handshake(self) -> None:
        conn = self._conn
        first = conn.start()
        if first:
            await self._send_raw(first)
        while conn.state is not State.ESTABLISHED:
            data = await self.transport_stream.receive_some(self.config.receive_size)
            if not data:
                raise HandshakeFailed()
            await self._handle_events(conn.receive_data_untrusted(data, trio.current_time()))
            owed = conn.data_to_send(handshake_only=True)  # tickets go with our next record
            if owed:
                await self._send_raw(owed)

    async def _private_key_operation(self, event: PrivateKeyOperationNeeded) -> bytes | None:
        result = await self.context.decrypt_once(event.ciphertext, event.label)
        if self._closed:
            raise trio.ClosedResourceError("this stream was closed during its handshake")
        return result

    async def _handle_events(self, events: list[Event]) -> None:
        """File the events of a handshake read, running what the handshake needs."""
        conn = self._conn
        for event in events:
            if isinstance(event, PrivateKeyOperationNeeded):
                plaintext = await self._private_key_operation(event)
                await self._send_raw(conn.supply_decryption(plaintext))
                events.extend(conn.receive_data_untrusted(b"", trio.current_time()))
            elif isinstance(event, HandshakeComplete):
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
