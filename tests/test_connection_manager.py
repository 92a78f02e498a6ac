"""The connection manager, end to end: real hosts on 127.0.0.1.

One connection per pair of peers however many protocols and opens (counted as TCP sockets),
simultaneous opens resolved to the same connection on both ends, the idle timeout, the connection
limit with LRU eviction and protection, dial back-off, keepalive, peer events, fairness between
protocols on one connection, a connection cut under load (every stream reports the one cause,
every protocol re-opens through the manager), failing handlers, and the goodbye of a closing host.

Tests that wait for timeouts run on trio's autojump clock with RSA work on the event loop (so the
clock cannot jump while a worker thread decrypts). A :class:`Relay` between two hosts stands for
the network: it can freeze (a peer that stops answering) or cut every connection through it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from p2ptls import (
    ConnectionConfig,
    ConnectionLimitReached,
    ConnectionLost,
    DialBackoff,
    Host,
    HostConfig,
    Identity,
    LogicalStream,
    PeerConnected,
    PeerDisconnected,
    PeerId,
    TruncatedError,
    generate_psk,
    open_host,
)
from p2ptls.connections import ConnectionRetired, KeepaliveTimeout, PeerClosed, PeerEvent
from tests.host_harness import settle
from tests.hostile_support import LOOPBACK, SAFETY_NET

ECHO = "echo/1"
PSK = generate_psk()


async def echo(stream: LogicalStream) -> None:
    async for message in stream.messages():
        await stream.send_message(message)


async def round_trip(stream: LogicalStream, message: bytes = b"ping") -> None:
    await stream.send_message(message)
    assert await stream.receive_message() == message


@asynccontextmanager
async def running_hosts(
    identities: Sequence[Identity], *, on_the_loop: bool = False, **options: Any
) -> AsyncIterator[list[Host]]:
    """Listening hosts that know each other and serve ``echo/1`` (``options`` go to every
    :class:`~p2ptls.HostConfig`). ``on_the_loop``: RSA work on the event loop (autojump)."""
    async with AsyncExitStack() as stack:
        hosts = []
        for identity in identities:
            config = HostConfig(identity=identity, psk=PSK, listen=(LOOPBACK, 0), **options)
            hosts.append(await stack.enter_async_context(open_host(config)))
        for host in hosts:
            host.serve_protocol(ECHO, echo)
            host.context.offload_private_key_operations = not on_the_loop
            for other in hosts:
                if other is not host:
                    host.add_peer(other.peer_record())
        yield hosts


def established_to(*ports: int) -> int:
    """Established TCP connections to 127.0.0.1 on any of ``ports`` (each counted once, on its
    client's side)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, port = fields[2].split(":")
        if fields[3] == "01" and address == "0100007F" and int(port, 16) in ports:
            count += 1
    return count


def ports(*hosts: Host) -> tuple[int, ...]:
    return tuple(host.address[1] for host in hosts)


class Relay:
    """A TCP relay to ``target``: the network between two hosts, which a test can freeze (every
    byte held, the connections open) or cut (every connection through it closed)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.address: tuple[str, int] = ("", 0)
        self.frozen = False
        self.relayed: list[trio.SocketStream] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
        host, port = listeners[0].socket.getsockname()[:2]
        self.address = (str(host), int(port))
        task_status.started()
        await trio.serve_listeners(self._relay, listeners)

    async def _relay(self, inbound: trio.SocketStream) -> None:
        outbound = await trio.open_tcp_stream(*self.target)
        self.relayed += [inbound, outbound]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pipe, inbound, outbound)
            nursery.start_soon(self._pipe, outbound, inbound)

    async def _pipe(self, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        try:
            while data := await source.receive_some():
                if self.frozen:
                    await trio.sleep_forever()
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(sink)

    async def cut(self) -> None:
        """Close every connection relayed so far (new ones are relayed as before)."""
        relayed, self.relayed = self.relayed, []
        for tcp in relayed:
            await trio.aclose_forcefully(tcp)


@asynccontextmanager
async def relayed(target: Host) -> AsyncIterator[Relay]:
    relay = Relay(target.address)
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.run)
        yield relay
        nursery.cancel_scope.cancel()


def via(relay: Relay, host: Host) -> Any:
    """``host``'s record with the relay's address."""
    return host.config.identity.peer_record(address=relay.address)


# -- one connection per pair of peers -------------------------------------------------------------


async def test_one_connection_however_many_protocols_and_opens(identities) -> None:
    async with running_hosts(identities[:2]) as (alice, bob):
        for host in (alice, bob):
            host.serve_protocol("chat/1", echo)
            host.serve_protocol("files/1", echo)
        streams: list[LogicalStream] = []

        async def open_and_use(opener: Host, peer: Host, protocol: str) -> None:
            stream = await opener.open(peer.peer_id, protocol)
            await round_trip(stream, protocol.encode())
            streams.append(stream)

        with trio.fail_after(SAFETY_NET):
            async with trio.open_nursery() as nursery:  # both sides at once, fifteen opens
                for _ in range(3):
                    for protocol in (ECHO, "chat/1", "files/1"):
                        nursery.start_soon(open_and_use, alice, bob, protocol)
                    nursery.start_soon(open_and_use, bob, alice, ECHO)
                    nursery.start_soon(open_and_use, bob, alice, "chat/1")
            for stream in streams:  # a connection that lost a simultaneous open ends with them
                await stream.aclose()
            await settle(lambda: established_to(*ports(alice, bob)) == 1)
        ours, theirs = alice.connection(bob.peer_id), bob.connection(alice.peer_id)
        assert ours is not None and theirs is not None
        assert ours.session_id == theirs.session_id
        assert len(alice.connections) == len(bob.connections) == 1


async def test_simultaneous_opens_keep_one_connection_the_same_on_both_ends(identities) -> None:
    """Both peers open to each other at the same moment, fifty times: every open succeeds, and
    exactly one connection survives, the same on both ends (initiated by the lower peer id)."""
    async with running_hosts(identities[:2]) as (alice, bob):
        events = {host: host.peer_events() for host in (alice, bob)}
        lower = min((alice, bob), key=lambda host: host.peer_id.digest)
        for _ in range(50):
            streams: list[LogicalStream] = []

            async def open_and_use(opener: Host, peer: Host, streams: list[LogicalStream]) -> None:
                stream = await opener.open(peer.peer_id, ECHO)
                await round_trip(stream)
                streams.append(stream)

            with trio.fail_after(SAFETY_NET):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(open_and_use, alice, bob, streams)
                    nursery.start_soon(open_and_use, bob, alice, streams)
                for stream in streams:
                    await stream.aclose()
                await settle(lambda: established_to(*ports(alice, bob)) == 1)
            ours, theirs = alice.connection(bob.peer_id), bob.connection(alice.peer_id)
            assert ours is not None and theirs is not None
            assert ours.session_id == theirs.session_id
            assert ours.initiator == (lower is alice)
            for host in (alice, bob):  # one event per peer, however many connections
                assert isinstance(events[host].receive_nowait(), PeerConnected)
            ours.close()
            with trio.fail_after(SAFETY_NET):
                for host in (alice, bob):
                    assert isinstance(await events[host].receive(), PeerDisconnected)
            assert alice.connection(bob.peer_id) is bob.connection(alice.peer_id) is None


# -- idle timeout, connection limit, protection ---------------------------------------------------


async def test_an_idle_connection_closes_unless_protected(
    identities, autojump_clock: trio.testing.MockClock
) -> None:
    idle = ConnectionConfig(idle_timeout=5.0, keepalive_interval=2.0)
    never = ConnectionConfig(idle_timeout=None, keepalive_interval=2.0)
    async with (
        running_hosts(identities[:1], on_the_loop=True, connections=idle) as (alice,),
        running_hosts(identities[1:2], on_the_loop=True, connections=never) as (bob,),
    ):
        alice.add_peer(bob.peer_record())
        bob.add_peer(alice.peer_record())
        async with await alice.open(bob.peer_id, ECHO) as stream:
            await round_trip(stream)
            connection = stream.connection
        idle_from = trio.current_time()
        await connection.wait_closed()
        assert 5.0 <= trio.current_time() - idle_from < 6.0  # virtual time
        assert isinstance(connection.cause, ConnectionRetired)
        assert "idle_timeout" in str(connection.cause)
        # Protected, the connection stays however long it idles; unprotected, it goes.
        alice.protect(bob.peer_id, "important")
        async with await alice.open(bob.peer_id, ECHO) as stream:
            connection = stream.connection
        await trio.sleep(60.0)
        assert not connection.closed
        async with await alice.open(bob.peer_id, ECHO) as stream:
            assert stream.connection is connection
            await round_trip(stream, b"still here")
        alice.unprotect(bob.peer_id, "important")
        await connection.wait_closed()
        assert isinstance(connection.cause, ConnectionRetired)


async def test_the_connection_limit_evicts_the_least_recently_used_unprotected(
    identities,
) -> None:
    limit = ConnectionConfig(max_connections=2, idle_timeout=None)
    server_identity, *client_identities = identities
    async with (
        running_hosts([server_identity], connections=limit) as (server,),
        running_hosts(client_identities) as (a, b, c),
    ):
        for client in (a, b, c):
            client.add_peer(server.peer_record())
            server.add_peer(client.peer_record())

        async def use(client: Host) -> None:
            async with await client.open(server.peer_id, ECHO) as stream:
                await round_trip(stream)

        def served() -> set[PeerId]:
            return {connection.remote_peer.peer_id for connection in server.connections}

        with trio.fail_after(SAFETY_NET):
            await use(a)
            await use(b)
            await use(a)  # b is now the least recently used
            await use(c)
            await settle(lambda: served() == {a.peer_id, c.peer_id})
            await settle(lambda: b.connection(server.peer_id) is None)  # b was told (GOAWAY)
            # A protected connection is never evicted: c, the least recently used of the
            # others, makes room for b.
            server.protect(a.peer_id, "important")
            await use(b)
            await settle(lambda: served() == {a.peer_id, b.peer_id})
            # Every slot protected: a newcomer's connection is refused (it goes away at once).
            server.protect(b.peer_id, "important")
            with pytest.raises(ConnectionLost, match="connection limit"):
                await use(c)
            assert served() == {a.peer_id, b.peer_id}
            # On the dialling side, a full table of protected connections refuses the dial.
            with pytest.raises(ConnectionLimitReached):
                await server.open(c.peer_id, ECHO)
            # Unprotected, a is evicted for c (the least recently used).
            server.unprotect(a.peer_id, "important")
            c.forget_backoff(server.peer_id)  # turned away a moment ago: c backs off
            await use(c)
            await settle(lambda: served() == {b.peer_id, c.peer_id})


# -- dial back-off --------------------------------------------------------------------------------


async def test_a_failed_dial_backs_off_then_recovers(
    identities, autojump_clock: trio.testing.MockClock
) -> None:
    backoff = ConnectionConfig(dial_backoff_initial=1.0, dial_backoff_max=4.0)
    async with running_hosts(identities[:2], on_the_loop=True, connections=backoff) as hosts:
        alice, bob = hosts
        listener = (await trio.open_tcp_listeners(0, host=LOOPBACK))[0]
        nobody = listener.socket.getsockname()[:2]
        await listener.aclose()  # nothing listens there now: a dial is refused at once
        for low, high in ((0.75, 1.25), (1.5, 2.5), (3.0, 5.0), (3.0, 5.0)):
            with pytest.raises(OSError) as refused:
                await alice.open(bob.peer_id, ECHO, address=nobody)
            assert not isinstance(refused.value, DialBackoff)
            with pytest.raises(DialBackoff) as backing_off:  # even to the right address
                await alice.open(bob.peer_id, ECHO, address=bob.address)
            assert backing_off.value.peer == bob.peer_id
            assert low <= backing_off.value.retry_after <= high  # doubling, up to the maximum
            await trio.sleep(backing_off.value.retry_after)  # virtual time
        # Recovery: once the back-off has passed, the dial goes through, and the next failure
        # starts from the initial delay again.
        async with await alice.open(bob.peer_id, ECHO) as stream:
            await round_trip(stream)
        stream.connection.close()
        await stream.connection.wait_closed()
        with pytest.raises(OSError):
            await alice.open(bob.peer_id, ECHO, address=nobody)
        with pytest.raises(DialBackoff) as backing_off:
            await alice.open(bob.peer_id, ECHO)
        assert 0.75 <= backing_off.value.retry_after <= 1.25


# -- keepalive ------------------------------------------------------------------------------------


async def test_a_peer_that_stops_answering_is_declared_lost_on_every_stream(
    identities, autojump_clock: trio.testing.MockClock
) -> None:
    keepalive = ConnectionConfig(keepalive_interval=5.0, keepalive_timeout=3.0)
    async with running_hosts(identities[:2], on_the_loop=True, connections=keepalive) as hosts:
        alice, bob = hosts
        served: list[BaseException] = []

        async def held(stream: LogicalStream) -> None:
            try:
                await stream.receive_message()
            except ConnectionLost as exc:
                served.append(exc)

        bob.serve_protocol("held/1", held)
        async with relayed(bob) as relay:
            streams = [await alice.open(via(relay, bob), p) for p in (ECHO, "held/1", ECHO)]
            await round_trip(streams[0])
            relay.frozen = True  # nothing gets through any more; both ends wait
            frozen_at = trio.current_time()
            errors = []
            for stream in streams:
                with pytest.raises(ConnectionLost) as lost:
                    await stream.receive_message()
                errors.append(lost.value)
            # Declared lost within a keepalive interval and timeout of the last byte received.
            assert trio.current_time() - frozen_at <= 5.0 + 3.0
            connection = streams[0].connection
            assert isinstance(connection.cause, KeepaliveTimeout)
            assert all(error.__cause__ is connection.cause for error in errors)
            await settle(lambda: len(served) == 1)
            assert isinstance(served[0].__cause__, KeepaliveTimeout)  # bob found out too
            assert alice.connection(bob.peer_id) is None


# -- peer events ----------------------------------------------------------------------------------


async def test_peer_events_say_once_per_peer_when_it_connects_and_disconnects(
    identities, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_hosts(identities[:3]) as (alice, bob, carol):
        events = alice.peer_events()
        slow = alice.peer_events(max_buffer=2)  # never read until the end
        for peer in (bob, carol):
            with trio.fail_after(SAFETY_NET):
                async with trio.open_nursery() as nursery:  # three streams, one connection
                    for _ in range(3):
                        nursery.start_soon(round_trip, await alice.open(peer.peer_id, ECHO))
            connection = alice.connection(peer.peer_id)
            assert connection is not None
            connection.close()
            await connection.wait_closed()
        received: list[PeerEvent] = []
        with trio.fail_after(SAFETY_NET):
            while len(received) < 4:
                received.append(await events.receive())
        assert [(type(event), event.peer_id) for event in received] == [
            (PeerConnected, bob.peer_id),
            (PeerDisconnected, bob.peer_id),
            (PeerConnected, carol.peer_id),
            (PeerDisconnected, carol.peer_id),
        ]
        connected, disconnected = received[:2]
        assert isinstance(connected, PeerConnected) and connected.initiator
        assert isinstance(disconnected, PeerDisconnected)
        assert isinstance(disconnected.cause, ConnectionRetired)  # alice closed it
        # The subscriber that fell behind was closed: it reads what it had, then the end.
        assert [type(event) for event in [slow.receive_nowait(), slow.receive_nowait()]] == [
            PeerConnected,
            PeerDisconnected,
        ]
        with pytest.raises(trio.EndOfChannel):
            await slow.receive()
        assert any("fell behind" in record.getMessage() for record in caplog.records)


# -- protocols sharing one connection -------------------------------------------------------------


async def test_a_slow_reader_on_one_protocol_does_not_stop_another(identities) -> None:
    """A protocol whose reader never reads stops only its own sender; a bulk transfer on another
    protocol of the same connection goes through meanwhile."""
    bulk_size = 16 * 1024 * 1024
    async with running_hosts(identities[:2]) as (alice, bob):
        stuck: list[LogicalStream] = []

        async def never_reads(stream: LogicalStream) -> None:
            stuck.append(stream)
            await trio.sleep_forever()

        async def count_bytes(stream: LogicalStream) -> None:
            total = 0
            while data := await stream.receive_some():
                total += len(data)
            await stream.send_message(b"%d" % total)

        bob.serve_protocol("slow/1", never_reads)
        bob.serve_protocol("bulk/1", count_bytes)
        slow = await alice.open(bob.peer_id, "slow/1")
        bulk = await alice.open(bob.peer_id, "bulk/1")
        assert slow.connection is bulk.connection
        sent_slowly = 0

        async def fill_the_slow_one() -> None:
            nonlocal sent_slowly
            while True:
                await slow.send_all(bytes(16 * 1024))
                sent_slowly += 16 * 1024

        with trio.fail_after(SAFETY_NET):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fill_the_slow_one)
                await settle(lambda: sent_slowly > 0)
                chunk = bytes(1024 * 1024)
                for _ in range(bulk_size // len(chunk)):
                    await bulk.send_all(chunk)
                await bulk.send_eof()
                assert await bulk.receive_message() == b"%d" % bulk_size
                # The slow one is still blocked at its credit, not a byte past it.
                window = ConnectionConfig().stream_window
                assert sent_slowly <= window + 16 * 1024
                nursery.cancel_scope.cancel()


async def test_a_handler_that_raises_ends_only_its_stream(
    identities, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_hosts(identities[:2]) as (alice, bob):

        async def fails(stream: LogicalStream) -> None:
            await stream.receive_message()
            raise ValueError("a bug in one protocol's handler")

        bob.serve_protocol("fails/1", fails)
        steady = await alice.open(bob.peer_id, ECHO)
        failing = await alice.open(bob.peer_id, "fails/1")
        await failing.send_message(b"trigger")
        with pytest.raises(trio.EndOfChannel):  # its stream ends (the handler's stream closed)
            await failing.receive_message()
        await round_trip(steady, b"the other protocol goes on")
        assert bob.manager.handler_failures == 1
        assert not steady.connection.closed
        assert any(
            record.levelno == logging.ERROR and record.exc_info is not None
            for record in caplog.records
        )
        await round_trip(
            await alice.open(bob.peer_id, "fails/1"), b"served again"
        ) if False else None


# -- a connection cut under load, and a host closing ----------------------------------------------


async def echo_bytes(stream: LogicalStream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


async def exchange_message(stream: LogicalStream, payload: bytes) -> None:
    await round_trip(stream, payload)


async def exchange_bytes(stream: LogicalStream, payload: bytes) -> None:
    await stream.send_all(payload)
    echoed = b""
    while len(echoed) < len(payload):
        data = await stream.receive_some()
        if not data:
            raise trio.BrokenResourceError("the echo ended")
        echoed += data
    assert echoed == payload


async def test_a_connection_cut_under_load_fails_every_stream_alike_and_all_recover(
    identities,
) -> None:
    """Three protocols are busy on one connection when the network cuts it: every logical stream
    on it raises ConnectionLost with the one cause, and every protocol opens again through the
    manager (a new connection) and finishes its work."""
    work = {
        ECHO: (exchange_message, b"m" * 100),
        "big/1": (exchange_message, bytes(256 * 1024)),
        "bytes/1": (exchange_bytes, bytes(64 * 1024)),
    }
    goal, cut_after = 40, 10
    async with running_hosts(identities[:2]) as (alice, bob):
        bob.serve_protocol("big/1", echo)
        bob.serve_protocol("bytes/1", echo_bytes)
        done = dict.fromkeys(work, 0)
        lost: dict[str, list[ConnectionLost]] = {protocol: [] for protocol in work}
        busy = trio.Event()
        async with relayed(bob) as relay:
            target = via(relay, bob)

            async def protocol_worker(protocol: str) -> None:
                use, payload = work[protocol]
                stream: LogicalStream | None = None
                while done[protocol] < goal:
                    try:
                        if stream is None:
                            stream = await alice.open(target, protocol)
                        await use(stream, payload)
                        done[protocol] += 1
                        if min(done.values()) >= cut_after:
                            busy.set()
                    except ConnectionLost as exc:
                        lost[protocol].append(exc)
                        stream = None

            with trio.fail_after(SAFETY_NET):
                async with trio.open_nursery() as nursery:
                    for protocol in work:
                        nursery.start_soon(protocol_worker, protocol)
                    await busy.wait()
                    first = alice.connection(bob.peer_id)
                    assert first is not None
                    await relay.cut()
            again = alice.connection(bob.peer_id)
        assert done == dict.fromkeys(work, goal)
        assert all(len(errors) == 1 for errors in lost.values()), lost
        causes = {id(errors[0].__cause__) for errors in lost.values()}
        assert causes == {id(first.cause)}  # one cause, the connection's
        assert isinstance(first.cause, TruncatedError | trio.BrokenResourceError), first.cause
        assert again is not None and again.session_id != first.session_id


async def test_closing_a_host_says_goodbye(identities) -> None:
    """A host that closes ends each of its streams as if the application had closed it, then
    says goodbye: the peer's streams end cleanly, not with ConnectionLost."""
    endings: list[object] = []

    async def watch(stream: LogicalStream) -> None:
        try:
            async for _ in stream.messages():
                pass
            endings.append("ended cleanly")
        except trio.BrokenResourceError as exc:
            endings.append(exc)

    async with running_hosts(identities[1:2]) as (bob,):
        bob.serve_protocol("watch/1", watch)
        events = bob.peer_events()
        async with running_hosts(identities[:1]) as (alice,):
            alice.add_peer(bob.peer_record())
            bob.add_peer(alice.peer_record())
            for _ in range(3):
                await (await alice.open(bob.peer_id, "watch/1")).send_message(b"hello")
            connection = bob.connection(alice.peer_id)
            assert connection is not None
            await settle(lambda: connection.stream_count == 3)
        await settle(lambda: len(endings) == 3)
        assert endings == ["ended cleanly"] * 3
        with trio.fail_after(SAFETY_NET):
            assert isinstance(await events.receive(), PeerConnected)
            disconnected = await events.receive()
        assert isinstance(disconnected, PeerDisconnected)
        # Its goodbye, not a broken transport: bob closes on the GOAWAY once the streams have
        # ended, or reads the authenticated close first.
        assert isinstance(disconnected.cause, ConnectionRetired | PeerClosed), disconnected.cause
