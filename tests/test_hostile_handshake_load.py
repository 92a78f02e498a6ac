"""Hostile load on the handshake (items 9-10 of ``test_hostile_handshake.py``), against a real
host: slow handshakes meet their deadlines, handshakes in progress are bounded per source, and a
flood of genuine Hellos is bounded, its RSA work runs off the event loop and established streams
keep flowing.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable

import pytest
import trio
import trio.testing

from p2ptls import (
    ConnectionConfig,
    DialBackoff,
    HandshakeTimeout,
    HostConfig,
    Identity,
    StreamConfig,
    open_host,
)
from tests.host_harness import (
    assert_host_serves,
    good_client,
    read_record,
    receive_until_closed,
    serving_host,
    settle,
)
from tests.hostile_support import (
    LOOPBACK,
    NETWORK_KEY,
    genuine_flights,
    hello_of,
    make_initiator,
    next_timestamp,
    parties,
)

# -- 9. slow handshakes and the per-source bound ---------------------------------------------------


@pytest.mark.parametrize("pace", ["silent", "one byte every 3 s"])
async def test_slow_handshake_hits_the_total_deadline(
    pace: str, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="p2ptls.host")
    deadline = 10.0
    # No first-flight deadline: this test is about the total one (the first flight has its own).
    config = StreamConfig(handshake_timeout=deadline)
    async with serving_host(config=config, first_flight_timeout=None) as harness:
        hello = hello_of(make_initiator())
        tcp = await trio.open_tcp_stream(*harness.host.address)
        start = trio.current_time()

        async def dribble() -> None:
            if pace == "silent":
                return
            for byte in hello:
                await tcp.send_all(bytes([byte]))
                await trio.sleep(3)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(dribble)
            assert await receive_until_closed(tcp) == b""
            elapsed = trio.current_time() - start
            nursery.cancel_scope.cancel()
        await tcp.aclose()
        assert deadline <= elapsed < deadline + 3  # virtual time: the deadline, not a byte later
        assert harness.host.handshake_failures == 1
        assert harness.host.context.private_key_operations == 0
        assert any("handshake deadline passed" in r.getMessage() for r in caplog.records)
        # Stop the clock: the good handshake's worker thread must not look like idleness.
        autojump_clock.autojump_threshold = math.inf
        await assert_host_serves(harness)


async def test_a_silent_responder_hits_the_initiators_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The handshake's deadline ends a dial to a silent responder (the dial's own, longer,
    deadline does not come into it); the peer then backs off, and a dial after the back-off
    reaches the genuine responder."""
    config = StreamConfig(handshake_timeout=10.0)
    async with serving_host(config=config) as harness, trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
        silent_address = listeners[0].socket.getsockname()[:2]
        held: list[trio.SocketStream] = []

        async def accept_and_say_nothing() -> None:
            held.append(await listeners[0].accept())

        nursery.start_soon(accept_and_say_nothing)
        client_config = HostConfig(
            identity=parties().other,
            psk=NETWORK_KEY,
            stream=config,
            connections=ConnectionConfig(dial_timeout=20.0),
        )
        async with open_host(client_config) as client:
            start = trio.current_time()
            with pytest.raises(trio.BrokenResourceError) as info:
                await client.connect(harness.server.record, address=silent_address)
            elapsed = trio.current_time() - start
            assert isinstance(info.value.__cause__, HandshakeTimeout)
            assert 10.0 <= elapsed < 11.0
            with pytest.raises(DialBackoff) as backing_off:
                await client.connect(harness.server.record, address=harness.host.address)
            await trio.sleep(backing_off.value.retry_after)  # virtual time
            # Stop the clock for the real handshakes (their RSA runs on worker threads).
            autojump_clock.autojump_threshold = math.inf
            stream = await client.connect(harness.server.record, address=harness.host.address)
            await stream.send_message(b"the client host is fine")
            assert await stream.receive_message() == b"the client host is fine"
        for tcp in held:
            await tcp.aclose()
        await listeners[0].aclose()
        await assert_host_serves(harness)


async def test_handshakes_in_progress_per_source_are_bounded() -> None:
    bound = 3
    async with serving_host(max_pending_per_address=bound) as harness:
        host = harness.host

        def pending_from_loopback() -> int:
            return host._pending.count(LOOPBACK)

        silent = [await trio.open_tcp_stream(*host.address) for _ in range(bound)]
        await settle(lambda: pending_from_loopback() == bound)
        newest = await trio.open_tcp_stream(*host.address)
        # The source's own oldest handshake makes room; the newcomer is not refused.
        assert await receive_until_closed(silent[0]) == b""
        await settle(lambda: host.handshakes_evicted == 1)
        assert host.handshake_failures == 1
        assert pending_from_loopback() == bound
        # Another source is not affected while this one is saturated.
        await assert_host_serves(harness, local_address="127.0.0.2")
        assert pending_from_loopback() == bound
        for tcp in [*silent, newest]:
            await tcp.aclose()
        await settle(lambda: pending_from_loopback() == 0)
        await assert_host_serves(harness)


# -- 10. a handshake flood ------------------------------------------------------------------------


class GatedDecryption:
    """Wraps an identity's private-key operation: counts it, records its thread, and holds it
    until the gate opens, so the test sees a flood in progress without timing anything."""

    def __init__(self, identity: Identity) -> None:
        self._inner: Callable[[bytes, bytes], bytes | None] = identity.decrypt_untrusted
        self._lock = threading.Lock()
        self.gate = threading.Event()
        self.active = 0
        self.most_active = 0
        self.calls = 0
        self.threads: set[int] = set()

    def __call__(self, ciphertext: bytes, label: bytes) -> bytes | None:
        with self._lock:
            self.calls += 1
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            self.threads.add(threading.get_ident())
        try:
            self.gate.wait(timeout=30)
            return self._inner(ciphertext, label)
        finally:
            with self._lock:
                self.active -= 1


async def test_handshake_flood_is_bounded_runs_off_the_loop_and_streams_keep_flowing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sources = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    # Each source fills its share exactly (what a newer connection evicts is tested in
    # tests/test_host_flood.py): every Hello is taken and costs one RSA operation.
    per_source, bound = 4, 4
    async with serving_host(max_pending_per_address=bound) as harness:
        host = harness.host
        established = await good_client(harness)
        # A genuine Reply's size, computed (and cached) before the gate counts decryptions.
        reply_size = len(genuine_flights().reply)
        gated = GatedDecryption(harness.server)
        monkeypatch.setattr(harness.server, "decrypt_untrusted", gated)
        # A network member that nobody trusts: each Hello passes the binder and the replay check
        # (each is new) and costs an RSA operation.
        flood_hellos = [
            hello_of(
                make_initiator(
                    identity=parties().stranger,
                    seed=b"flood %d" % index,
                    timestamp_ns=next_timestamp(),
                )
            )
            for index in range(per_source * len(sources))
        ]
        replies: list[bytes] = []
        operations_before = host.context.private_key_operations
        try:
            async with trio.open_nursery() as nursery:

                async def flood(source: str, hello: bytes) -> None:
                    tcp = await trio.open_tcp_stream(*host.address, local_address=source)
                    await tcp.send_all(hello)
                    replies.append(await read_record(tcp))  # then give up
                    await tcp.aclose()

                for index, hello in enumerate(flood_hellos):
                    nursery.start_soon(flood, sources[index % len(sources)], hello)
                refused = (per_source - bound) * len(sources)
                limiter = host.context.key_limiter
                await settle(
                    lambda: (
                        host.handshake_failures == refused
                        and host.pending_handshakes == bound * len(sources)
                        and gated.active == limiter.total_tokens
                        and limiter.statistics().tasks_waiting > 0
                    )
                )
                # Every worker is busy and more handshakes are queued: the loop still serves.
                for index in range(20):
                    message = b"flowing %d" % index
                    await established.send_message(message)
                    assert await established.receive_message() == message
                gated.gate.set()
        finally:
            gated.gate.set()
        accepted = bound * len(sources)
        refused_count = (per_source - bound) * len(sources)
        assert (
            sorted(map(len, replies)) == [0] * refused_count + [reply_size] * accepted
        )  # refused at once, or a substitute Reply
        await settle(lambda: host.handshake_failures == per_source * len(sources))
        assert host.context.private_key_operations - operations_before == accepted
        assert gated.calls == accepted
        assert gated.most_active <= host.context.key_limiter.total_tokens
        assert threading.get_ident() not in gated.threads  # off the event loop
        await established.send_message(b"after the flood")
        assert await established.receive_message() == b"after the flood"
        await established.aclose()
        await assert_host_serves(harness)
