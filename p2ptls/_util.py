"""Small trio helpers shared by the package: context managers' nurseries, exception groups, and
the TCP fast paths of :class:`~p2ptls.SecureStream` (``send_tcp``, ``recv_tcp``).

Theory of operation
-------------------
Under trio's strict exception groups, every exception leaving a nursery comes wrapped in an
``ExceptionGroup``. A context manager such as :func:`~p2ptls.open_host` runs the caller's block
inside its own nursery (the host's background tasks live there), so without care a ``KeyError``
raised in the block would come out as ``ExceptionGroup([KeyError])`` and ``except KeyError`` would
miss it: the nursery is an implementation detail and must not change the caller's exceptions.

:func:`open_service_nursery` is the one place that handles this. It remembers the exception the
block raised; if the nursery's group holds that exception and nothing else but cancellations, the
exception is raised on its own (its own traceback, cause and context kept). Anything else the
group holds is a failure of the background tasks and comes out as the group, so it is never
hidden. (This follows trio's own rule for ``trio.as_safe_channel``: unwrap a group only when it
holds a single non-cancellation exception.)
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import NoReturn

import trio


def _raise_keeping_context(exc: BaseException) -> NoReturn:
    """``raise exc`` from inside an ``except`` block without chaining the handled group to it."""
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context


def _is_cancellation(exc: BaseException) -> bool:
    """A ``trio.Cancelled``, or a group of nothing else (from a nested nursery)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_cancellation(member) for member in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


def _same(member: BaseException, raised: BaseException) -> bool:
    """Whether the group's ``member`` is the exception the block raised. (Trio re-creates an
    exception group on its way through a nursery, with the same message and members.)"""
    if member is raised:
        return True
    return (
        isinstance(member, BaseExceptionGroup)
        and isinstance(raised, BaseExceptionGroup)
        and member.message == raised.message
        and len(member.exceptions) == len(raised.exceptions)
        and all(a is b for a, b in zip(member.exceptions, raised.exceptions, strict=True))
    )


@asynccontextmanager
async def open_service_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery for the background tasks of a context manager that runs user code.

    Use it in place of ``trio.open_nursery()`` around the ``yield`` of an
    ``@asynccontextmanager``: an exception raised in the caller's block comes out unwrapped (so
    ``except KeyError`` catches it), while a failure of a background task still surfaces as the
    nursery's ``ExceptionGroup``. A cancellation of the block behaves as with a plain nursery.

    Clean-up that runs after the block inside this nursery, once its scope is cancelled, must be
    shielded: a ``Cancelled`` raised there would replace the block's exception, and the nursery
    would then absorb it (as a plain nursery would).
    """
    raised: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            except BaseException as exc:
                raised = exc
                raise
    except BaseExceptionGroup as group:
        if raised is not None:
            others = [exc for exc in group.exceptions if not _is_cancellation(exc)]
            # The block's exception alone (the background tasks were only cancelled), or only
            # cancellations, of which the block's stands for all (trio re-delivers the others).
            if (len(others) == 1 and _same(others[0], raised)) or (
                not others and isinstance(raised, trio.Cancelled)
            ):
                _raise_keeping_context(raised)
        raise


class ConflictDetector:
    """Raises ``trio.BusyResourceError`` when two tasks use one operation at once (as trio's own
    streams do): ``with detector: ...``."""

    __slots__ = ("_held", "_message")

    def __init__(self, message: str) -> None:
        self._message = message
        self._held = False

    def __enter__(self) -> None:
        if self._held:
            raise trio.BusyResourceError(self._message)
        self._held = True

    def __exit__(self, *exc_info: object) -> None:
        self._held = False


class MessageIterator:
    """``async for message in stream.messages()``: whole messages until the peer's end (the
    iterator of :meth:`SecureStream.messages <p2ptls.SecureStream.messages>` and
    :meth:`LogicalStream.messages <p2ptls.LogicalStream.messages>`)."""

    __slots__ = ("_receive",)

    def __init__(self, receive: Callable[[], Awaitable[bytes]]) -> None:
        self._receive = receive

    def __aiter__(self) -> MessageIterator:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


def unwrap_single(exc: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups of one member each, else ``exc``.

    For reporting what ended a ``trio.run``: its nurseries wrap even a lone failure in a group,
    and a person wants to read the failure itself. A group of several stays a group.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class HandOffLock:
    """Serialises a stream's own tasks on one resource (the transport's send or receive side,
    or the handshake).

    Unlike ``trio.Lock`` it takes no checkpoint of its own when uncontended: every holder goes on
    to a transport call, which checkpoints anyway, and the extra trip through the scheduler would
    cost each round trip (and each handshake).
    """

    __slots__ = ("_held", "_waiters")

    def __init__(self) -> None:
        self._held = False
        self._waiters = trio.lowlevel.ParkingLot()

    def locked(self) -> bool:
        return self._held

    async def __aenter__(self) -> None:
        if self._held:
            await self._waiters.park()  # woken by __aexit__, which hands us the lock
        else:
            self._held = True

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def try_acquire(self) -> bool:
        """Take the lock if it is free (no checkpoint, no await); say whether it was taken."""
        if self._held:
            return False
        self._held = True
        return True

    def release(self) -> None:
        # FIFO hand-off: the first waiter becomes the owner (so a task that loops re-acquiring
        # the lock cannot starve the others).
        if self._waiters:
            self._waiters.unpark()
        else:
            self._held = False


def socket_address(transport: trio.abc.Stream, *, peer: bool) -> tuple[str, int] | None:
    """The ``(host, port)`` of a TCP transport's peer (or own end); ``None`` for other streams."""
    if not isinstance(transport, trio.SocketStream):
        return None
    try:
        name = transport.socket.getpeername() if peer else transport.socket.getsockname()
    except OSError:
        return None
    return str(name[0]), int(name[1])


async def send_tcp(sock: trio.socket.SocketType, data: bytes | bytearray | memoryview) -> None:
    """``SocketStream.send_all`` without its per-call wrappers (the caller's locks serialise)."""
    try:
        with memoryview(data) as view:
            sent = await sock.send(view)
            while sent < len(view):
                sent += await sock.send(view[sent:])
    except OSError as exc:
        if sock.fileno() == -1:
            raise trio.ClosedResourceError("the transport was closed") from None
        raise trio.BrokenResourceError(exc) from exc


def raw_socket(sock: trio.socket.SocketType) -> socket.socket | None:
    """The standard-library socket under a trio socket (trio keeps it as ``_sock``), or ``None``
    if this trio version hides it: :func:`send_raw` and :func:`recv_raw` call it directly."""
    raw = getattr(sock, "_sock", None)
    return raw if isinstance(raw, socket.socket) else None


async def send_raw(
    sock: trio.socket.SocketType,
    raw: socket.socket,
    data: bytes | bytearray | memoryview,
    *,
    schedule: bool = True,
) -> None:
    """:func:`send_tcp` with one non-blocking ``send`` tried first, straight on ``raw`` (the
    socket under ``sock``), then one schedule point: what trio's ``sock.send`` does, minus its
    wrappers. The caller has checked for cancellation. A short write finishes as ``send_tcp``.

    ``schedule=False`` skips the schedule point when the write completes at once: for a write
    inside an operation that passes through a checkpoint elsewhere (trio asks one per call, not
    one per write), such as a handshake flight or a pong owed after a read."""
    try:
        sent = raw.send(data)
    except BlockingIOError:
        sent = 0
    except OSError as exc:
        if sock.fileno() == -1:
            raise trio.ClosedResourceError("the transport was closed") from None
        raise trio.BrokenResourceError(exc) from exc
    if sent == len(data):
        if schedule:
            await trio.lowlevel.cancel_shielded_checkpoint()
        return
    with memoryview(data) as view:
        await send_tcp(sock, view[sent:])


async def recv_raw(
    sock: trio.socket.SocketType, raw: socket.socket, buffer: memoryview
) -> memoryview:
    """:func:`recv_tcp` straight on ``raw`` (the socket under ``sock``): one non-blocking
    ``recv_into`` (then one schedule point), or a wait until ``sock`` is readable and another.
    A checkpoint either way, as trio's own ``recv_into``."""
    await trio.lowlevel.checkpoint_if_cancelled()
    waited = False
    try:
        while True:
            try:
                size = raw.recv_into(buffer)
                break
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                waited = True
    except OSError as exc:
        if sock.fileno() == -1:
            raise trio.ClosedResourceError("the transport was closed") from None
        raise trio.BrokenResourceError(exc) from exc
    if not waited:
        await trio.lowlevel.cancel_shielded_checkpoint()
    return buffer[:size]


async def recv_tcp(sock: trio.socket.SocketType, buffer: memoryview) -> memoryview:
    """One ``recv_into`` of ``buffer``; the part filled (empty at EOF)."""
    try:
        size: int = await sock.recv_into(buffer)
    except OSError as exc:
        if sock.fileno() == -1:
            raise trio.ClosedResourceError("the transport was closed") from None
        raise trio.BrokenResourceError(exc) from exc
    return buffer[:size]
