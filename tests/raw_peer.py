"""A peer that speaks p2ptls by hand: the sans-IO record layer and multiplexer over raw TCP.

A host's secure connection carries multiplexing frames in its byte stream (``protocol/SPEC.md``,
"Multiplexing"). :class:`RawPeer` drives a sans-IO :class:`~p2ptls._connection.Connection` (the
record layer) and a sans-IO :class:`~p2ptls._mux.Multiplexer` (the frames) over a plain TCP
stream to a host, so that it can behave like a good peer (complete the handshake, open logical
streams, exchange messages, answer pings and grant credit) and then send anything at all: forged,
replayed or truncated records, frames with bad stream ids, data past its credit, floods.

It reads only when a test asks it to (:meth:`RawPeer.pump` and the waits built on it), so a test
can also play a peer that stops reading.
"""

from __future__ import annotations

import collections
import socket
from collections.abc import Callable

import trio

from p2ptls import (
    DEFAULT_PROTOCOL,
    Host,
    Identity,
    NetworkKey,
    PeerRecord,
    ProtocolNotSupported,
    StreamConfig,
    StreamRefused,
)
from p2ptls import _connection as records
from p2ptls import _mux as mux
from p2ptls import _mux_wire as mw
from p2ptls._mux_wire import Flag, FrameType, RefuseCode, ResetCode
from tests.host_harness import Harness
from tests.hostile_support import SAFETY_NET, Flights, next_timestamp, parties

MESSAGE_END = Flag.MESSAGE | Flag.END


def message_frame(stream_id: int, payload: bytes, flags: int = MESSAGE_END) -> bytes:
    """One DATA frame carrying a whole message (or, with other ``flags``, a fragment)."""
    return mw.frame(FrameType.DATA, stream_id, payload, flags)


class RawPeer:
    """A hand-driven peer of a host (see the module docstring)."""

    def __init__(
        self, tcp: trio.SocketStream, conn: records.Connection, identity: Identity
    ) -> None:
        self.tcp = tcp
        self.conn = conn
        self.identity = identity
        self.mux = mux.Multiplexer(initiator=True)
        self.stream_id = 0
        """The first stream :meth:`open` opened (what :meth:`echo` uses)."""
        self.messages: dict[int, collections.deque[bytes]] = collections.defaultdict(
            collections.deque
        )
        self._assembly: dict[int, list[bytes]] = collections.defaultdict(list)
        self.answers: dict[int, RefuseCode | None] = {}
        """Answers to our OPENs: ``None`` for ACCEPT, else the refusal's code."""
        self.ended: set[int] = set()
        """Streams the host finished (FIN)."""
        self.resets: dict[int, ResetCode] = {}
        """Streams the host aborted, with its code."""
        self.pongs: list[bytes] = []
        self.go_away: mux.GoAwayReceived | None = None
        self.goodbye = False
        """The host sent its authenticated close."""
        self.eof = False
        """The host closed the TCP connection."""
        self.flights: Flights | None = None
        """The handshake's flights, once :meth:`handshake` ran."""

    @classmethod
    async def connect(
        cls,
        host: Host,
        *,
        identity: Identity | None = None,
        psk: NetworkKey | None = None,
        config: StreamConfig | None = None,
        receive_buffer: int | None = None,
    ) -> RawPeer:
        """A TCP connection to ``host`` (no byte sent yet). ``receive_buffer`` shrinks the
        socket's receive buffer (for a peer that does not read)."""
        identity = identity or parties().initiator
        address = host.address
        if receive_buffer is None:
            tcp = await trio.open_tcp_stream(*address)
        else:
            sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            await sock.connect(address)
            tcp = trio.SocketStream(sock)
        conn = records.Connection.initiator(
            config or host.config.stream,
            identity,
            psk or host.config.psk,
            host.config.identity.record,
            timestamp_ns=next_timestamp(),
        )
        return cls(tcp, conn, identity)

    @property
    def server(self) -> PeerRecord:
        remote = self.conn.remote
        assert remote is not None, "handshake not complete"
        return remote

    @property
    def next_stream_id(self) -> int:
        """The id our next OPEN must carry (odd, two above the last)."""
        return self.mux._last_local + 2

    # -- the handshake -------------------------------------------------------------------------

    async def handshake(self) -> Flights:
        """Complete the handshake (the host then adopts the connection)."""
        self.conn.start()
        hello = self.conn.data_to_send()
        await self.tcp.send_all(hello)
        reply = b""
        while self.conn.state is not records.HandshakeState.ESTABLISHED:
            data = await self.tcp.receive_some()
            assert data, "the host closed the connection during the handshake"
            reply += data
            for event in self.conn.receive_data_untrusted(data):
                if isinstance(event, records.PrivateKeyOperationNeeded):
                    plaintext = self.identity.decrypt_untrusted(event.ciphertext, event.label)
                    self.conn.supply_decryption(plaintext)
                    finish = self.conn.data_to_send()
                    await self.tcp.send_all(finish)
                    self.flights = Flights(hello, reply, finish)
                    return self.flights
        raise AssertionError("no private-key operation during the handshake")

    # -- sending ---------------------------------------------------------------------------------

    async def send(self, data: bytes | bytearray) -> None:
        """Raw bytes on the TCP connection."""
        await self.tcp.send_all(data)

    def record(self, frames: bytes) -> bytes:
        """``frames`` sealed as byte-stream (DATA) records, in sequence."""
        return self.conn.send_data(frames)

    async def send_frames(self, frames: bytes) -> None:
        """Send ``frames`` (anything at all) in the connection's byte stream."""
        await self.send(self.record(frames))

    async def flush(self) -> None:
        """Send what the multiplexer owes the host (answers, credit, our own frames)."""
        owed = self.mux.data_to_send()
        if owed:
            await self.send_frames(owed)

    async def open(self, protocol: str = DEFAULT_PROTOCOL) -> int:
        """Open a logical stream and wait for the host's answer; its id.

        Raises :class:`~p2ptls.ProtocolNotSupported` or :class:`~p2ptls.StreamRefused` as
        :meth:`Host.open <p2ptls.Host.open>` does.
        """
        stream_id = self.mux.open_stream(protocol)
        await self.flush()
        await self.wait_for(lambda: stream_id in self.answers)
        code = self.answers[stream_id]
        if code is RefuseCode.UNKNOWN_PROTOCOL:
            raise ProtocolNotSupported(protocol)
        if code is not None:
            raise StreamRefused(code.name)
        if not self.stream_id:
            self.stream_id = stream_id
        return stream_id

    async def open_many(self, protocols: list[str]) -> list[RefuseCode | None]:
        """Open a stream for each of ``protocols`` at once; the host's answers, in order
        (``None`` for an accepted stream). Answers are not kept (for floods)."""
        ids = [self.mux.open_stream(protocol) for protocol in protocols]
        await self.flush()
        await self.wait_for(lambda: all(stream_id in self.answers for stream_id in ids[-1:]))
        return [self.answers.pop(stream_id) for stream_id in ids]

    async def send_message(self, payload: bytes, stream_id: int | None = None) -> None:
        """A whole message on a stream, within the credit the host grants."""
        stream_id = stream_id or self.stream_id
        view = memoryview(payload)
        while True:
            taken = self.mux.send_data(stream_id, view, message=True, end=True)
            view = view[taken:]
            await self.flush()
            if not view:
                return
            await self.wait_for(lambda: self.mux.send_credit(stream_id) > 0)

    # -- receiving -------------------------------------------------------------------------------

    async def pump(self) -> None:
        """Read once from the host and file what arrived; answer what the host asked for."""
        if self.eof:
            raise trio.BrokenResourceError("the host closed the connection")
        try:
            data = await self.tcp.receive_some()
        except trio.BrokenResourceError:
            data = b""
        if not data:
            self.eof = True
            return
        for event in self.conn.receive_data_untrusted(data):
            if isinstance(event, records.DataReceived):
                for frame_event in self.mux.receive_data_untrusted(event.data):
                    self._file(frame_event)
            elif isinstance(event, records.EndOfStream):
                self.goodbye = True
        await self.flush()

    def _file(self, event: mux.MuxEvent) -> None:
        if isinstance(event, mux.DataReceived):
            if event.message:
                self._assembly[event.stream_id].append(event.data)
                if event.end:
                    message = b"".join(self._assembly.pop(event.stream_id))
                    self.messages[event.stream_id].append(message)
            else:  # the byte stream: read and dropped at once
                self.mux.bytes_consumed(event.stream_id, len(event.data))
        elif isinstance(event, mux.StreamAccepted):
            self.answers[event.stream_id] = None
        elif isinstance(event, mux.OpenRefused):
            self.answers[event.stream_id] = event.code
        elif isinstance(event, mux.StreamEnded):
            self.ended.add(event.stream_id)
        elif isinstance(event, mux.StreamAborted):
            self.resets[event.stream_id] = event.code
        elif isinstance(event, mux.PongReceived):
            self.pongs.append(event.payload)
        elif isinstance(event, mux.GoAwayReceived):
            self.go_away = event
        # StreamOpened: the host opens nothing to a raw peer in these tests; CreditAvailable:
        # the multiplexer keeps the credit.

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Read until ``predicate()`` holds; fails if the host closes first."""
        with trio.fail_after(SAFETY_NET):
            while not predicate():
                if self.eof:
                    raise trio.BrokenResourceError("the host closed the connection")
                await self.pump()

    async def receive_message(self, stream_id: int | None = None) -> bytes:
        """The next whole message the host sends on a stream (its credit is given back)."""
        stream_id = stream_id or self.stream_id
        await self.wait_for(lambda: bool(self.messages[stream_id]))
        self.mux.message_taken(stream_id)
        return self.messages[stream_id].popleft()

    async def echo(self, payload: bytes, stream_id: int | None = None) -> None:
        """Send a message and check the host's echo: the connection is healthy."""
        await self.send_message(payload, stream_id)
        assert await self.receive_message(stream_id) == payload

    async def until_closed(self) -> None:
        """Read (answering nothing more) until the host closes the TCP connection."""
        with trio.fail_after(SAFETY_NET):
            while not self.eof:
                try:
                    data = await self.tcp.receive_some()
                except trio.BrokenResourceError:
                    data = b""
                self.eof = not data

    async def aclose(self) -> None:
        await self.tcp.aclose()


async def raw_peer(
    harness: Harness,
    *,
    identity: Identity | None = None,
    config: StreamConfig | None = None,
) -> RawPeer:
    """A raw peer connected to the harness host, its handshake done and one stream of the default
    protocol open, which the host has handed to the harness's handler."""
    peer = await RawPeer.connect(harness.host, identity=identity, config=config)
    await peer.handshake()
    accepted = harness.accepted
    await peer.open()
    await harness.wait_accepted(accepted + 1)
    return peer
