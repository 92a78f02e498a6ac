"""Setting up SLLP channels: on a stream, or through a host's shared connection (trio).

Theory of operation
-------------------
An SLLP channel is set up by one offer and one answer, whole messages on an authenticated stream
between the two peers (SPEC-sllp.md §3); the side that opened the stream offers. Both sides then
derive the two direction secrets from the stream's exporter, bound to the exact offer and answer
bytes, and the stream stays open as the channel's lifeline (:class:`~p2ptls.sllp.SllpChannel`).
UDP never carries a handshake.

Through a host, the stream is a logical stream of protocol :data:`PROTOCOL` (``"p2ptls/sllp/1"``)
on the host's one connection to the peer: :func:`connect_datagram` opens it with ``host.open``,
and :func:`serve_datagrams` (or the application's own handler and :func:`accept_datagram`) answers
it. A logical stream's exporter is bound to its stream id, so two channels on one connection never
share keys. When the connection breaks, every logical stream on it fails, and so every channel set
up on it ends with :class:`~p2ptls.sllp.LifelineLost`; opening a new channel dials the peer again.

Every channel a peer opens costs the accepting side a UDP socket and up to its configured
reassembly memory, so :func:`serve_datagrams` holds them in a
:class:`~p2ptls._bounded.FairTable` charged to the peer: a peer that already holds
``max_channels_per_peer`` loses its own oldest channel to open another, and when ``max_channels``
are open the oldest channel of the peer holding the most is closed (code 4, "too many
channels"). A peer opening channels without limit therefore only ever closes its own.

:func:`open_channel` takes any stream with the :class:`~p2ptls.sllp.Lifeline` API, so a bare
:class:`~p2ptls.SecureStream` (its handshake runs on first use) works the same way.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections.abc import Awaitable, Callable

import trio

from .._bounded import FairTable
from ..host import Host
from ..identity import PeerId, PeerRecord
from ..logical import LogicalStream
from ..stream import SecureStream
from . import _wire as wire
from ._errors import NegotiationError
from ._keys import direction_secrets
from ._session import Session, SessionParameters
from .channel import Lifeline, PeerClosed, SllpChannel, aclose_forcefully
from .config import SllpConfig
from .transport import DatagramTransport, UdpTransport

log = logging.getLogger("p2ptls.sllp")

PROTOCOL = "p2ptls/sllp/1"
"""The protocol of the logical stream an SLLP channel is set up on, through a host."""
MAX_CHANNELS = 128
"""Default bound on the channels :func:`serve_datagrams` keeps open at once."""
MAX_CHANNELS_PER_PEER = 16
"""Default bound on the channels one peer keeps open through :func:`serve_datagrams`."""

ChannelHandler = Callable[[SllpChannel], Awaitable[object]]


def _stream_host(stream: Lifeline, *, peer: bool) -> str | None:
    """The IP address of the stream's own end (or the peer's), where it runs over TCP."""
    if not isinstance(stream, LogicalStream | SecureStream):
        return None
    address = stream.remote_address if peer else stream.local_address
    return None if address is None else address[0]


def _peer_address(
    stream: Lifeline, offered: tuple[str, int], override: tuple[str, int] | None
) -> tuple[str, int]:
    if override is not None:
        return override
    host, port = offered
    if ipaddress.ip_address(host).is_unspecified:
        seen = _stream_host(stream, peer=True)
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


Randomness = Callable[[int], bytes]
"""Where connection ids come from: ``n`` random bytes (``os.urandom`` unless a test injects)."""


def _new_connection_id(randomness: Randomness, avoid: int = 0) -> int:
    while True:
        cid = int.from_bytes(randomness(8), "big")
        if cid and cid != avoid:
            return cid


async def _exchange(
    stream: Lifeline, mine: wire.Offer, first_message: bytes | None, randomness: Randomness
) -> tuple[wire.Offer, wire.Offer, bytes, bytes]:
    """The offer/answer exchange: ``(ours, theirs, offer bytes, answer bytes)``."""
    if not stream.server_side:
        offer_bytes = wire.encode_offer(mine)
        await stream.send_message(offer_bytes)
        answer_bytes = await stream.receive_message()
        theirs = wire.parse_offer_untrusted(answer_bytes, wire.KIND_ANSWER)
        if theirs.epoch != mine.epoch:
            raise NegotiationError("SLLP answer for another epoch")
        if theirs.connection_id == mine.connection_id:
            raise NegotiationError("SLLP answer reuses the offer's connection id")
        return mine, theirs, offer_bytes, answer_bytes
    if first_message is None:
        first_message = await stream.receive_message()
    offer_bytes = bytes(first_message)
    theirs = wire.parse_offer_untrusted(offer_bytes, wire.KIND_OFFER)
    mine = wire.Offer(
        kind=wire.KIND_ANSWER,
        epoch=theirs.epoch,
        connection_id=_new_connection_id(randomness, avoid=theirs.connection_id),
        address=mine.address,
        max_datagram_payload=mine.max_datagram_payload,
        max_message_size=mine.max_message_size,
    )
    answer_bytes = wire.encode_offer(mine)
    await stream.send_message(answer_bytes)
    return mine, theirs, offer_bytes, answer_bytes


async def open_channel(
    stream: Lifeline,
    *,
    local_address: tuple[str, int] | None = None,
    config: SllpConfig | None = None,
    peer_address: tuple[str, int] | None = None,
    transport: DatagramTransport | None = None,
    first_message: bytes | None = None,
    randomness: Randomness = os.urandom,
) -> SllpChannel:
    """Set up an SLLP channel over a stream dedicated to it; call on both sides.

    Args:
      stream: a host's :class:`~p2ptls.LogicalStream` or a :class:`~p2ptls.SecureStream` (any
        :class:`~p2ptls.sllp.Lifeline`). The side that opened it (``server_side == False``)
        offers. It becomes the channel's lifeline: the channel closes it, and its end ends the
        channel.
      local_address: where to bind the UDP socket; default: the stream's local host, port 0.
      config: limits and tunables (each side has its own).
      peer_address: send to this address instead of the one in the peer's offer (a relay, NAT).
      transport: a ready transport instead of a new UDP socket (tests, the in-process relay).
      first_message: the offer, if the accepting application already read it from the stream.
      randomness: where the connection id comes from (``os.urandom``; tests inject their own).

    Raises :class:`NegotiationError` if the exchange fails or times out (``setup_timeout``). The
    stream is left open on failure; the caller owns it.
    """
    config = config or SllpConfig()
    own_transport = transport is None
    if transport is None:
        if local_address is None:
            local_address = (_stream_host(stream, peer=False) or "127.0.0.1", 0)
        transport = UdpTransport.bind(local_address, config)
    try:
        host, port = transport.local_address
        proposal = wire.Offer(
            kind=wire.KIND_ANSWER if stream.server_side else wire.KIND_OFFER,
            epoch=wire.CHANNEL_EPOCH,
            connection_id=_new_connection_id(randomness),
            address=(host, port),
            max_datagram_payload=config.max_datagram_payload,
            max_message_size=config.max_message_size,
        )
        try:
            with trio.fail_after(config.setup_timeout):
                mine, theirs, offer, answer = await _exchange(
                    stream, proposal, first_message, randomness
                )
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
        stream.export_keying_material, offer, answer
    )
    if stream.server_side:
        send_secret, receive_secret = answerer_to_offerer, offerer_to_answerer
    else:
        send_secret, receive_secret = offerer_to_answerer, answerer_to_offerer
    parameters = SessionParameters(
        local_connection_id=mine.connection_id,
        remote_connection_id=theirs.connection_id,
        datagram_size=min(mine.max_datagram_payload, theirs.max_datagram_payload),
        peer_max_message_size=theirs.max_message_size,
    )
    session = Session(config, parameters, send_secret, receive_secret, trio.current_time())
    channel = SllpChannel(stream, session, transport, config)
    channel.size_datagrams()
    return channel


async def connect_datagram(
    host: Host,
    peer: PeerRecord | PeerId,
    *,
    address: tuple[str, int] | None = None,
    local_address: tuple[str, int] | None = None,
    config: SllpConfig | None = None,
    protocol: str = PROTOCOL,
) -> SllpChannel:
    """Open an SLLP channel to ``peer``, set up on a logical stream of ``protocol`` on the host's
    one connection to the peer (dialled if there is none; ``address`` overrides the record's).

    The peer accepts it with :func:`serve_datagrams` (or a handler of its own for ``protocol``
    that calls :func:`accept_datagram`). Raises what ``host.open`` raises
    (:class:`~p2ptls.ProtocolNotSupported` if the peer accepts no SLLP channels) and
    :class:`NegotiationError` if the set-up fails.
    """
    stream = await host.open(peer, protocol, address=address)
    try:
        return await open_channel(stream, local_address=local_address, config=config)
    except BaseException:
        await aclose_forcefully(stream)
        raise


async def accept_datagram(
    stream: Lifeline,
    *,
    local_address: tuple[str, int] | None = None,
    config: SllpConfig | None = None,
    first_message: bytes | None = None,
) -> SllpChannel:
    """Answer the SLLP offer on a stream the peer opened (in a handler of ``sllp.PROTOCOL``,
    or a :class:`~p2ptls.SecureStream` accepted some other way).

    Pass ``first_message`` if the application already read the offer (see ``is_offer``).
    """
    if not stream.server_side:
        raise ValueError("accept_datagram needs the accepting side of a stream")
    return await open_channel(
        stream, local_address=local_address, config=config, first_message=first_message
    )


def serve_datagrams(
    host: Host,
    handler: ChannelHandler,
    *,
    config: SllpConfig | None = None,
    local_address: tuple[str, int] | None = None,
    protocol: str = PROTOCOL,
    max_channels: int = MAX_CHANNELS,
    max_channels_per_peer: int = MAX_CHANNELS_PER_PEER,
) -> None:
    """Accept the SLLP channels peers open with :func:`connect_datagram`: ``handler(channel)``
    runs in its own task for each, and the channel is closed when it returns.

    At most ``max_channels`` are open at once, ``max_channels_per_peer`` per peer: beyond that
    the peer's own oldest channel (or, when all are taken, the oldest of the peer holding the
    most) is closed with code 4 and its handler cancelled. A set-up that fails (a malformed
    offer, a timeout) is logged and ends only that stream; so does the channel's end reaching the
    handler (``PeerClosed``, ``LifelineLost``...). Stop accepting with
    ``host.remove_protocol(sllp.PROTOCOL)``.
    """
    channels: FairTable[trio.CancelScope, SllpChannel, PeerId] = FairTable(
        max_channels, max_channels_per_peer
    )

    async def accept(stream: LogicalStream) -> None:
        peer = stream.remote_peer.peer_id
        try:
            channel = await accept_datagram(stream, local_address=local_address, config=config)
        except NegotiationError as exc:
            log.info("SLLP set-up from %s failed: %s", peer.short, exc)
            return
        handling = trio.CancelScope()
        for evicted in channels.put(handling, channel, peer, trio.current_time()):
            log.info("closing an SLLP channel of %s: too many channels", evicted.source.short)
            evicted.key.cancel()
        try:
            with handling:
                await handler(channel)
        except PeerClosed as exc:  # the handler read past the end: not a failure
            log.info("the SLLP channel from %s ended: %s", peer.short, exc)
        finally:
            channels.pop(handling)
            if handling.cancelled_caught:
                await channel.close(wire.CLOSE_TOO_MANY_CHANNELS, "too many channels")
            else:
                await channel.aclose()

    host.serve_protocol(protocol, accept)
