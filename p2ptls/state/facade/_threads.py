"""The facade's two threads per node: the trio run that holds the node, and the callbacks.

:class:`TrioThread` runs ``trio.run`` in a daemon thread and lets any other thread call into it
(blocking until done): the node lives there, and every facade method is such a call.
:class:`CallbackDispatcher` runs the application's callbacks, in order, on a thread of its own:
never on the trio thread (a callback may call back into the facade, which would deadlock there),
and a slow callback delays only the callbacks after it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from ..._util import unwrap_single
from .errors import NodeStopped

log = logging.getLogger("p2ptls.state.facade")

T = TypeVar("T")

CALLBACK_QUEUE = 10_000
"""Callbacks waiting to run at most; more are dropped (and counted)."""
JOIN_TIMEOUT = 30.0
"""Seconds :meth:`TrioThread.stop` waits for the thread to end."""


class TrioThread:
    """A ``trio.run`` in a daemon thread, and blocking calls into it from other threads.

    :meth:`start` runs ``function(*args, task_status=...)`` there and returns once it reported
    started; :meth:`stop` cancels it. Calls made before the start or after the end raise
    :class:`~p2ptls.state.facade.NodeStopped`.
    """

    def __init__(self, name: str, on_crash: Callable[[BaseException], None]) -> None:
        """``on_crash(exc)`` runs (on the thread) if ``function`` fails after it started."""
        self.name = name
        self.stopped = False
        """True once :meth:`stop` was called or the run ended (or never started)."""
        self._on_crash = on_crash
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop_event: trio.Event | None = None

    @property
    def running(self) -> bool:
        """Started, and neither stopped nor ended."""
        return self._ready.is_set() and not self.stopped

    def start(self, function: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``function`` in a new thread; block until it called ``task_status.started()``.

        If it fails before that, its exception (out of trio's exception groups) is raised here.
        """
        if self._thread is not None:
            raise RuntimeError(f"{self.name} was started already")
        self._thread = threading.Thread(
            target=self._main, args=(function, args), name=self.name, daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    def _main(self, function: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        try:
            trio.run(self._run, function, args)
        except BaseException as exc:
            if not self._ready.is_set():
                self._failure = unwrap_single(exc)
            else:
                self._on_crash(exc)
        finally:
            self.stopped = True
            self._ready.set()

    async def _run(self, function: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop_event = stop_event = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(function, *args)
            self._ready.set()
            await stop_event.wait()
            nursery.cancel_scope.cancel()

    def call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await function(*args)`` on the trio thread; block until it returns (or raises)."""
        token = self._live_token()
        try:
            return trio.from_thread.run(function, *args, trio_token=token)
        except trio.RunFinishedError:
            raise NodeStopped("the node has stopped") from None

    def call_sync(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on the trio thread; block until it returns (or raises)."""
        token = self._live_token()
        try:
            return trio.from_thread.run_sync(function, *args, trio_token=token)
        except trio.RunFinishedError:
            raise NodeStopped("the node has stopped") from None

    def _live_token(self) -> trio.lowlevel.TrioToken:
        if self.stopped or self._token is None:
            raise NodeStopped("the node is not running")
        return self._token

    def stop(self) -> None:
        """Cancel ``function`` and wait (up to :data:`JOIN_TIMEOUT`) for the thread to end,
        unless called on that thread. Idempotent."""
        self.stopped = True
        thread, token, stop_event = self._thread, self._token, self._stop_event
        if thread is None or not thread.is_alive() or token is None or stop_event is None:
            return
        if threading.current_thread() is thread:
            stop_event.set()
            return
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(stop_event.set, trio_token=token)
        thread.join(timeout=JOIN_TIMEOUT)


class CallbackDispatcher:
    """Runs callbacks on one thread of its own, in order; a full queue drops (and counts)."""

    def __init__(self, name: str) -> None:
        self._queue: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = queue.Queue(
            CALLBACK_QUEUE
        )
        self.dropped = 0
        self.thread = threading.Thread(target=self._run, name=f"{name}-callbacks", daemon=True)
        self.thread.start()

    def post(self, callback: Callable[..., Any] | None, *args: Any) -> None:
        """Queue ``callback(*args)`` (nothing if ``callback`` is ``None``)."""
        if callback is None:
            return
        try:
            self._queue.put_nowait((callback, args))
        except queue.Full:
            self.dropped += 1
            log.warning("callback queue full; a callback was dropped")

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            callback, args = item
            try:
                callback(*args)
            except Exception:
                log.exception("a facade callback raised")

    def close(self) -> None:
        """Run the callbacks queued so far, then end the thread (waited for unless called on
        it)."""
        while True:
            try:
                self._queue.put(None, timeout=1.0)
                break
            except queue.Full:
                continue
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=10)
