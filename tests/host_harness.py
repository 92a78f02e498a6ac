"""The host harness of the hostile-input tests: a real host under attack, and good peers.

* :func:`serving_host` runs a listening :class:`~p2ptls.Host` (``parties().responder``) whose
  streams of the default protocol go to a handler (an echo of messages by default); the
  :class:`Harness` records what they received and the error that ended each (a
  :class:`~p2ptls.ConnectionLost` when their connection broke, its ``__cause__`` the reason).
* Good peers are real client hosts (:func:`good_client`, one per identity, sharing one connection
  per peer as every host does); :func:`assert_host_serves` proves with a fresh one (a new
  handshake) that a bad peer did not take the host, or its nursery, down.
* :func:`settle` waits, event-driven, for what loopback has delivered; :func:`heap_growth`
  measures the heap across a flood.

The hostile peer, which speaks the record layer and the multiplexer by hand, is
``tests/raw_peer.py``; reproducible handshakes and forgery are ``tests/hostile_support.py``.
"""

from __future__ import annotations

import functools
import gc
import logging
import math
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import attrs
import trio
import trio.testing

from p2ptls import (
    Host,
    HostConfig,
    Identity,
    LogicalStream,
    NetworkKey,
    PeerId,
    SecureStream,
    StreamConfig,
    open_host,
)
from p2ptls import _wire as wire
from tests.hostile_support import CONFIG, LOOPBACK, NETWORK_KEY, SAFETY_NET, parties


@functools.cache
def extra_identity(index: int) -> Identity:
    """Identities beyond the session's pool (each made once), for tests that need many peers:
    a host keeps one connection per peer, so peers that must hold connections at once need
    identities of their own."""
    return Identity.generate(2048)


def probe_identity() -> Identity:
    """The identity of the fresh good peer :func:`assert_host_serves` connects with (trusted by
    the harness host, used by no other peer, so that its connection replaces nobody's)."""
    return extra_identity(0)


Handler = Callable[["Harness", LogicalStream], Awaitable[None]]


async def echo_messages(harness: Harness, stream: LogicalStream) -> None:
    """Echo every message until the peer closes."""
    async for message in stream.messages():
        harness.received.append(message)
        await stream.send_message(message)


@attrs.define
class Harness:
    """A listening host (``parties().responder``), what the streams of the default protocol that
    peers open went through, and the good peers' client hosts."""

    host: Host
    config: StreamConfig
    nursery: trio.Nursery
    received: list[bytes] = attrs.field(factory=list)
    """Messages the server side received, in order."""
    failures: list[BaseException] = attrs.field(factory=list)
    """Errors that ended a server-side stream (a :class:`~p2ptls.ConnectionLost` when its
    connection broke: ``__cause__`` says why)."""
    _changed: trio.Event = attrs.field(factory=trio.Event)
    _consumed: int = 0
    _clients: dict[PeerId, Host] = attrs.field(factory=dict)
    accepted: int = 0
    """Streams the host handed to the handler so far."""

    @property
    def server(self) -> Identity:
        return self.host.config.identity

    @property
    def psk(self) -> NetworkKey:
        return self.host.config.psk

    async def serve(self, handler: Handler) -> None:
        async with trio.open_nursery() as nursery:
            async for stream in self.host.incoming():
                nursery.start_soon(self._run, handler, stream)

    async def _run(self, handler: Handler, stream: LogicalStream) -> None:
        self.accepted += 1
        self._notify()
        try:
            await handler(self, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.failures.append(exc)
        finally:
            await stream.aclose()
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_accepted(self, count: int) -> None:
        """Wait until the host has handed ``count`` streams to the handler."""
        with trio.fail_after(SAFETY_NET):
            while self.accepted < count:
                await self._changed.wait()

    async def next_failure(self) -> BaseException:
        """The next server-side stream failure not yet returned (waiting for it if need be)."""
        with trio.fail_after(SAFETY_NET):
            while len(self.failures) <= self._consumed:
                await self._changed.wait()
        self._consumed += 1
        return self.failures[self._consumed - 1]

    async def client(self, identity: Identity, config: StreamConfig | None = None) -> Host:
        """A client host of ``identity`` (one per identity, running until the harness ends)."""
        host = self._clients.get(identity.peer_id)
        if host is None:
            host = await self.nursery.start(_run_client, self, identity, config or self.config)
            self._clients[identity.peer_id] = host
        return host


async def _run_client(
    harness: Harness,
    identity: Identity,
    config: StreamConfig,
    *,
    task_status: trio.TaskStatus[Host] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with open_host(_client_config(harness, identity, config)) as host:
        task_status.started(host)
        await trio.sleep_forever()


def _client_config(harness: Harness, identity: Identity, config: StreamConfig) -> HostConfig:
    return HostConfig(
        identity=identity, psk=harness.psk, peers=(harness.host.peer_record(),), stream=config
    )


_HOST_LOGGERS = ("p2ptls.host", "p2ptls.connections")


@contextmanager
def host_alarms() -> Iterator[list[logging.LogRecord]]:
    """Collect the warnings and errors hosts log in the block. A hostile peer must only ever
    cause the protocol's own, expected failures: the host's catch-alls for unexpected errors
    (which would hide a bug) must never fire."""
    alarms = _Alarms()
    for name in _HOST_LOGGERS:
        logging.getLogger(name).addHandler(alarms)
    try:
        yield alarms.records
    finally:
        for name in _HOST_LOGGERS:
            logging.getLogger(name).removeHandler(alarms)


@asynccontextmanager
async def serving_host(
    *, config: StreamConfig = CONFIG, handler: Handler = echo_messages, **options: Any
) -> AsyncIterator[Harness]:
    """Run a host on 127.0.0.1 that trusts ``initiator``, ``other`` and the probe and serves
    ``handler`` for the default protocol (``host.incoming()``)."""
    cast = parties()
    host_config = HostConfig(
        identity=cast.responder,
        psk=NETWORK_KEY,
        peers=(cast.initiator.record, cast.other.record, probe_identity().record),
        listen=(LOOPBACK, 0),
        stream=config,
        **options,
    )
    with host_alarms() as alarms:
        async with open_host(host_config) as host, trio.open_nursery() as nursery:
            harness = Harness(host, config, nursery)
            nursery.start_soon(harness.serve, handler)
            yield harness
            nursery.cancel_scope.cancel()
    assert alarms == [], [record.getMessage() for record in alarms]


class _Alarms(logging.Handler):
    """Collects the host's warnings and errors."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def dial_from(host: Host, server: Host, local_address: str) -> None:
    """Connect ``host`` to ``server`` from ``local_address`` (a host dials from wherever the
    system chooses): the handshake as the host's own dial makes it, then the host adopts the
    connection as if it had dialled it."""
    tcp = await trio.open_tcp_stream(*server.address, local_address=local_address)
    secure = SecureStream(tcp, host.context, remote=server.peer_record(), messages=False)
    try:
        await secure.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(secure)
        raise
    host.manager._adopt(await host.manager._start_dialled(secure), initiator=True)


async def good_client(
    harness: Harness,
    *,
    identity: Identity | None = None,
    local_address: str | None = None,
    config: StreamConfig | None = None,
) -> LogicalStream:
    """A well-behaved peer's stream of the default protocol to the harness host, from a real
    client host (``other`` by default; its streams share one connection)."""
    client = await harness.client(identity or parties().other, config)
    if local_address is not None:
        await dial_from(client, harness.host, local_address)
    return await client.connect(harness.host.peer_record())


async def adopt(harness: Harness, secure: SecureStream) -> LogicalStream:
    """A stream of the default protocol on ``secure`` (a connection to the harness host whose
    handshake a test drove itself), through a real client host that adopts it."""
    client = await harness.client(secure.context.identity)
    client.manager._adopt(await client.manager._start_dialled(secure), initiator=True)
    return await client.connect(harness.host.peer_record())


async def assert_host_serves(
    harness: Harness, *, local_address: str | None = None, byte_stream: bool = False
) -> None:
    """A new good peer (its own client host, a fresh handshake) can still connect and exchange
    data: the host and its nursery are alive.

    ``byte_stream``: the host's handler echoes the byte stream instead of messages.
    """
    large = min(40_000, harness.config.max_message_size)
    config = _client_config(harness, probe_identity(), harness.config)
    with trio.fail_after(SAFETY_NET):
        async with open_host(config) as client:
            if local_address is not None:
                await dial_from(client, harness.host, local_address)
            async with await client.connect(harness.server.peer_id) as stream:
                assert stream.remote_peer.peer_id == harness.server.peer_id
                for payload in (b"the host still serves good peers", b"x" * large):
                    if byte_stream:
                        await stream.send_all(payload)
                        echoed = b""
                        while len(echoed) < len(payload):
                            echoed += await stream.receive_some()
                        assert echoed == payload
                    else:
                        await stream.send_message(payload)
                        assert await stream.receive_message() == payload


@attrs.define
class HeapGrowth:
    grown: int = 0
    """Bytes the traced heap grew by across the block (after a garbage collection)."""


@contextmanager
def heap_growth() -> Iterator[HeapGrowth]:
    """Measure how much the heap grew across the block (with ``tracemalloc``)."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    growth = HeapGrowth()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        yield growth
        gc.collect()
        growth.grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        if started:
            tracemalloc.stop()


def _autojumping() -> bool:
    clock = trio.lowlevel.current_clock()
    return isinstance(clock, trio.testing.MockClock) and clock.autojump_threshold < math.inf


async def settle(predicate: Callable[[], bool]) -> None:
    """Let every task run until ``predicate()`` holds.

    Loopback TCP delivers synchronously, so once all tasks are blocked the host has seen
    everything that was sent; worker threads (RSA) may need a few rounds. On trio's autojump
    clock, what the predicate waits for may be a timer: the wait is then a short virtual sleep,
    which lets the clock jump to the next timer (waiting for all tasks to block would not: the
    clock jumps only when nothing else waits for that).
    """
    with trio.fail_after(SAFETY_NET):
        while not predicate():
            if _autojumping():
                await trio.sleep(0.01)
            else:
                await trio.testing.wait_all_tasks_blocked(0.001)


async def read_record(tcp: trio.abc.ReceiveStream) -> bytes:
    """One whole record from ``tcp`` (as sent by the host), or ``b""`` if it closes first."""
    data = bytearray()
    with trio.fail_after(SAFETY_NET):
        while True:
            if len(data) >= wire.HEADER_SIZE:
                _, _, length = wire.HEADER.unpack_from(data)
                if len(data) >= wire.HEADER_SIZE + length:
                    assert len(data) == wire.HEADER_SIZE + length, "more than one record"
                    return bytes(data)
            try:
                chunk = await tcp.receive_some()
            except trio.BrokenResourceError:
                chunk = b""
            if not chunk:
                assert not data, "the connection closed in the middle of a record"
                return b""
            data += chunk


async def receive_until_closed(tcp: trio.abc.ReceiveStream) -> bytes:
    """Everything the other side sends until it closes the connection."""
    received = bytearray()
    with trio.fail_after(SAFETY_NET):
        try:
            while chunk := await tcp.receive_some():
                received += chunk
        except trio.BrokenResourceError:
            pass  # a reset is a close too
    return bytes(received)
