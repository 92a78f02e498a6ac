"""SLLP through hosts: channels set up on logical streams of ``sllp.PROTOCOL`` on the one
connection two hosts share with every other protocol; keys bound to the stream; the lifeline (the
peer's close, a reset, the connection breaking) and reconnecting. Real sockets on 127.0.0.1."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

import p2ptls
from p2ptls import sllp
from p2ptls._mux_wire import ResetCode
from p2ptls.sllp import (
    LifelineLost,
    NegotiationError,
    PeerClosed,
    SllpChannel,
    accept_datagram,
    is_offer,
    open_channel,
)
from p2ptls.sllp import _wire as sllp_wire
from p2ptls.sllp._keys import EXPORT_LABEL_OFFERER_TO_ANSWERER
from p2ptls.sllp.channel import LIFELINE_POLL
from tests.conftest import identity_pool

ECHO = "test/echo/1"


@asynccontextmanager
async def two_hosts() -> AsyncIterator[tuple[p2ptls.Host, p2ptls.Host]]:
    """Alice and bob, both listening on 127.0.0.1 and trusting each other."""
    alice, bob = identity_pool()[:2]
    psk = p2ptls.NetworkKey.generate()

    def config(me: p2ptls.Identity, other: p2ptls.PeerRecord) -> p2ptls.HostConfig:
        return p2ptls.HostConfig(identity=me, psk=psk, peers=(other,), listen=("127.0.0.1", 0))

    async with (
        p2ptls.open_host(config(bob, alice.record)) as bob_host,
        p2ptls.open_host(config(alice, bob_host.peer_record())) as alice_host,
    ):
        bob_host.add_peer(alice_host.peer_record())
        yield alice_host, bob_host


class Accepted:
    """Channels a host accepts through ``sllp.serve_datagrams``, handed to the test (which reads
    them); each handler keeps its channel open until the host closes."""

    def __init__(self, host: p2ptls.Host) -> None:
        self.send, self.receive = trio.open_memory_channel[SllpChannel](16)
        sllp.serve_datagrams(host, self._handle)

    async def _handle(self, channel: SllpChannel) -> None:
        await self.send.send(channel)
        await trio.sleep_forever()

    async def next(self) -> SllpChannel:
        with trio.fail_after(10):
            return await self.receive.receive()


async def echo(stream: p2ptls.LogicalStream) -> None:
    async for message in stream.messages():
        await stream.send_message(message)


def tcp_connections_through(port: int) -> int:
    """Established TCP sockets of this process with ``port`` at one end (``/proc``, Linux)."""
    fd_directory = Path("/proc/self/fd")
    if not fd_directory.exists():
        pytest.skip("needs /proc")
    inodes = set()
    for fd in os.listdir(fd_directory):
        try:
            target = os.readlink(fd_directory / fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    count = 0
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            established = fields[3] == "01"
            if established and fields[9] in inodes and port in (local_port, remote_port):
                count += 1
    return count


async def exchange(sender: SllpChannel, receiver: SllpChannel, payload: bytes) -> None:
    await sender.send(payload)
    with trio.fail_after(10):
        message = await receiver.receive()
    assert message.data == payload


def cut(host: p2ptls.Host, peer: p2ptls.PeerId) -> None:
    """Cut the TCP connection under the host's connection to ``peer`` (both ends see it end)."""
    connection = host.connection(peer)
    assert connection is not None
    transport = connection.secure.transport_stream
    assert isinstance(transport, trio.SocketStream)
    transport.socket.shutdown(socket.SHUT_RDWR)


async def test_connect_and_serve_through_hosts() -> None:
    async with two_hosts() as (alice, bob):
        accepted = Accepted(bob)
        channel = await sllp.connect_datagram(alice, bob.peer_id)
        bob_channel = await accepted.next()
        assert isinstance(channel.stream, p2ptls.LogicalStream)
        assert channel.stream.protocol == sllp.PROTOCOL == "p2ptls/sllp/1"
        assert channel.remote_peer.peer_id == bob.peer_id
        assert bob_channel.remote_peer.peer_id == alice.peer_id
        await exchange(channel, bob_channel, b"over the shared connection" * 100)
        await exchange(bob_channel, channel, b"and back")
        await channel.close(300, "done")
        with trio.fail_after(10):
            assert [message async for message in bob_channel] == []  # ends on the close
        assert bob_channel.close_reason is not None and bob_channel.close_reason.code == 300
        assert bob.manager.handler_failures == 0


async def test_channels_and_other_protocols_share_one_tcp_connection() -> None:
    async with two_hosts() as (alice, bob):
        bob_accepted, alice_accepted = Accepted(bob), Accepted(alice)
        bob.serve_protocol(ECHO, echo)
        port = bob.address[1]
        assert tcp_connections_through(port) == 0

        first = await sllp.connect_datagram(alice, bob.peer_id)
        second = await sllp.connect_datagram(alice, bob.peer_id)
        echo_stream = await alice.open(bob.peer_id, ECHO)
        default_stream = await alice.connect(bob.peer_id)
        # Bob opens a channel the other way: on the connection alice dialled.
        reverse = await sllp.connect_datagram(bob, alice.peer_id)

        assert len(alice.connections) == 1 and len(bob.connections) == 1
        shared = alice.connection(bob.peer_id)
        assert shared is not None and shared.initiator
        for stream in (first.stream, second.stream, echo_stream, default_stream):
            assert isinstance(stream, p2ptls.LogicalStream) and stream.connection is shared
        assert isinstance(reverse.stream, p2ptls.LogicalStream)
        assert reverse.stream.connection is bob.connection(alice.peer_id)
        assert tcp_connections_through(port) == 2  # one TCP connection: its two ends

        # Everything works at once on it.
        await exchange(first, await bob_accepted.next(), b"first")
        await exchange(second, await bob_accepted.next(), b"second")
        await exchange(reverse, await alice_accepted.next(), b"reverse")
        await echo_stream.send_message(b"echo")
        assert await echo_stream.receive_message() == b"echo"
        async for incoming in bob.incoming():
            assert incoming.remote_peer.peer_id == alice.peer_id
            await default_stream.send_message(b"default")
            assert await incoming.receive_message() == b"default"
            await incoming.aclose()
            break
        assert tcp_connections_through(port) == 2
        for channel in (first, second, reverse):
            await channel.aclose()
        await echo_stream.aclose()
        await default_stream.aclose()


async def test_two_channels_on_one_connection_never_share_keys() -> None:
    async with two_hosts() as (alice, bob):
        accepted = Accepted(bob)
        first = await sllp.connect_datagram(alice, bob.peer_id)
        second = await sllp.connect_datagram(alice, bob.peer_id)
        bob_first, bob_second = await accepted.next(), await accepted.next()
        streams = [first.stream, second.stream, bob_first.stream, bob_second.stream]
        assert all(isinstance(stream, p2ptls.LogicalStream) for stream in streams)
        ids = [stream.stream_id for stream in streams]  # type: ignore[attr-defined]
        assert ids[0] == ids[2] != ids[1] == ids[3]
        assert first.stream.connection is second.stream.connection  # type: ignore[attr-defined]

        # The same label and context give each logical stream its own secret (and the same at
        # both of its ends).
        context = bytes(84)
        exported = [
            stream.export_keying_material(EXPORT_LABEL_OFFERER_TO_ANSWERER, context, 32)
            for stream in streams
        ]
        assert exported[0] == exported[2] != exported[1] == exported[3]
        # And so the channels' keys differ.
        assert first.session._send is not None and second.session._send is not None
        assert first.session._send.iv != second.session._send.iv

        await exchange(first, bob_first, b"to the first")
        await exchange(second, bob_second, b"to the second")
        assert bob_first.statistics().failed_authentication == 0
        await first.aclose()
        await second.aclose()


async def test_lifeline_lost_with_the_connection_then_a_new_channel() -> None:
    async with two_hosts() as (alice, bob):
        accepted = Accepted(bob)
        channel = await sllp.connect_datagram(alice, bob.peer_id)
        bob_channel = await accepted.next()
        await exchange(channel, bob_channel, b"before the cut")
        old_connection = alice.connection(bob.peer_id)

        cut(alice, bob.peer_id)
        with trio.fail_after(10), pytest.raises(LifelineLost) as lost:
            await channel.receive()
        assert isinstance(lost.value.__cause__, p2ptls.ConnectionLost)
        assert lost.value.__cause__.__cause__ is not None  # why the connection ended
        assert channel.close_reason is not None and channel.close_reason.code == 2
        with pytest.raises(LifelineLost):
            await channel.send(b"after the cut")
        # Bob learns it from his own lifeline, or from alice's CLOSE datagram (code 2) first.
        with trio.fail_after(10), pytest.raises((LifelineLost, PeerClosed)):
            await bob_channel.receive()
        assert bob_channel.close_reason is not None and bob_channel.close_reason.code == 2
        await channel.aclose()

        # The manager dials again for the next channel.
        again = await sllp.connect_datagram(alice, bob.peer_id)
        assert alice.connection(bob.peer_id) is not old_connection
        await exchange(again, await accepted.next(), b"after the reconnect")
        await again.aclose()


async def test_the_peer_closing_the_stream_without_a_close_is_a_lost_lifeline() -> None:
    async with two_hosts() as (alice, bob):
        done = trio.Event()

        async def closes_the_stream_only(stream: p2ptls.LogicalStream) -> None:
            await accept_datagram(stream)
            await stream.aclose()  # no SLLP close: the lifeline just ends
            await done.wait()

        bob.serve_protocol(sllp.PROTOCOL, closes_the_stream_only)
        channel = await sllp.connect_datagram(alice, bob.peer_id)
        with trio.fail_after(10), pytest.raises((LifelineLost, PeerClosed)) as ended:
            await channel.receive()
        if isinstance(ended.value, LifelineLost):
            assert isinstance(ended.value.__cause__, trio.EndOfChannel | p2ptls.StreamReset)
        done.set()
        await channel.aclose()
        assert len(alice.connections) == 1  # the connection goes on


async def test_the_peer_resetting_the_stream_is_a_lost_lifeline() -> None:
    async with two_hosts() as (alice, bob):
        done = trio.Event()

        async def resets_the_stream(stream: p2ptls.LogicalStream) -> None:
            await accept_datagram(stream)
            stream._abort(ResetCode.CANCEL, "the test resets it")  # what a crashing peer does
            await done.wait()

        bob.serve_protocol(sllp.PROTOCOL, resets_the_stream)
        channel = await sllp.connect_datagram(alice, bob.peer_id)
        with trio.fail_after(10), pytest.raises(LifelineLost) as lost:
            await channel.receive()
        assert isinstance(lost.value.__cause__, p2ptls.StreamReset)
        done.set()
        await channel.aclose()


async def test_a_peer_without_sllp_refuses_the_stream() -> None:
    async with two_hosts() as (alice, bob):
        with pytest.raises(p2ptls.ProtocolNotSupported):
            await sllp.connect_datagram(alice, bob.peer_id)
        bob.serve_protocol(ECHO, echo)
        stream = await alice.open(bob.peer_id, ECHO)  # the connection is unharmed
        await stream.send_message(b"still here")
        assert await stream.receive_message() == b"still here"
        await stream.aclose()


async def test_a_bad_offer_ends_only_its_stream(caplog: pytest.LogCaptureFixture) -> None:
    async with two_hosts() as (alice, bob):
        accepted = Accepted(bob)
        bad = await alice.open(bob.peer_id, sllp.PROTOCOL)
        with caplog.at_level(logging.INFO, logger="p2ptls.sllp"):
            await bad.send_message(b"not an offer")
            with trio.fail_after(10), pytest.raises((trio.EndOfChannel, p2ptls.StreamReset)):
                await bad.receive_message()
        assert "SLLP set-up from" in caplog.text
        await bad.aclose()
        assert bob.manager.handler_failures == 0
        channel = await sllp.connect_datagram(alice, bob.peer_id)
        await exchange(channel, await accepted.next(), b"a good one after it")
        await channel.aclose()


async def test_a_channel_on_a_stream_of_another_protocol() -> None:
    """``open_channel`` on any logical stream: here the default protocol, whose accepting
    application tells an offer apart from its own messages (``is_offer``)."""
    async with two_hosts() as (alice, bob):
        async with trio.open_nursery() as nursery:
            accepted: list[SllpChannel] = []

            async def accept() -> None:
                async for stream in bob.incoming():
                    first = await stream.receive_message()
                    assert is_offer(first)
                    accepted.append(await accept_datagram(stream, first_message=first))
                    return

            nursery.start_soon(accept)
            stream = await alice.connect(bob.peer_id)
            channel = await open_channel(stream, local_address=("0.0.0.0", 0))
        bob_channel = accepted[0]
        assert channel.transport.local_address[0] == "0.0.0.0"
        await exchange(channel, bob_channel, b"offered to 0.0.0.0: sent to the stream's address")
        await channel.aclose()
        with pytest.raises(PeerClosed):
            await bob_channel.receive()
        await bob_channel.aclose()


async def test_a_failed_setup_closes_the_stream_it_opened() -> None:
    async with two_hosts() as (alice, bob):
        answered = trio.Event()

        async def answers_nonsense(stream: p2ptls.LogicalStream) -> None:
            await stream.receive_message()
            await stream.send_message(b"not an answer")
            await answered.wait()

        bob.serve_protocol(sllp.PROTOCOL, answers_nonsense)
        with pytest.raises(NegotiationError):
            await sllp.connect_datagram(alice, bob.peer_id)
        answered.set()
        connection = alice.connection(bob.peer_id)
        assert connection is not None and connection.stream_count == 0  # closed by connect


async def test_a_peer_opening_channels_without_limit_closes_only_its_own_oldest() -> None:
    async with two_hosts() as (alice, bob):
        handed: list[SllpChannel] = []

        async def hold(channel: SllpChannel) -> None:
            handed.append(channel)
            await trio.sleep_forever()

        sllp.serve_datagrams(bob, hold, max_channels=3, max_channels_per_peer=2)
        opened = [await sllp.connect_datagram(alice, bob.peer_id) for _ in range(5)]
        for channel in opened[:3]:  # each newcomer beyond two closed alice's oldest
            with trio.fail_after(10), pytest.raises(PeerClosed) as closed:
                await channel.receive()
            assert closed.value.code == sllp_wire.CLOSE_TOO_MANY_CHANNELS == 4
            with trio.fail_after(10), pytest.raises(trio.EndOfChannel):  # bob closed its end
                while True:
                    await channel.stream.receive_message()
        assert [c.close_reason is None for c in handed] == [False, False, False, True, True]
        connection = bob.connection(alice.peer_id)
        assert connection is not None and connection.stream_count == 2
        for channel, accepted in zip(opened[3:], handed[3:], strict=True):
            await exchange(channel, accepted, b"the newest two still work")
            await channel.aclose()
        assert bob.manager.handler_failures == 0


async def test_a_busy_receiver_learns_of_a_lost_lifeline() -> None:
    """Datagrams arriving more often than LIFELINE_POLL do not hide that the connection broke
    (alice never receives, so she never sends a CLOSE: bob must see it himself)."""
    async with two_hosts() as (alice, bob):
        accepted = Accepted(bob)
        channel = await sllp.connect_datagram(alice, bob.peer_id)
        bob_channel = await accepted.next()
        async with trio.open_nursery() as nursery:

            async def frames() -> None:
                while True:
                    await channel.send(b"frame")
                    await trio.sleep(LIFELINE_POLL / 10)  # pacing, as a camera does

            nursery.start_soon(frames)
            await bob_channel.receive()
            cut(bob, alice.peer_id)
            with trio.fail_after(10), pytest.raises(LifelineLost) as lost:
                while True:
                    await bob_channel.receive()
            assert isinstance(lost.value.__cause__, p2ptls.ConnectionLost)
            nursery.cancel_scope.cancel()
        await channel.aclose()
