"""Helpers for testing SLLP and code that uses it, in the manner of ``p2ptls.testing``.

* :func:`session_pair` gives two sans-IO sessions (offerer, answerer) set up as a real offer and
  answer would, from a fixed exporter secret: no stream, no sockets, no clock. They are
  :class:`RecordingSession` objects, which also keep the events their calls return, for tests
  that look at them later.
* :func:`channel_pair` gives two connected channels over a fresh in-memory secure stream pair, on
  real UDP sockets (127.0.0.1) or on the transports you pass (such as
  :func:`~p2ptls.sllp.relay.memory_transport_pair`).
* :func:`seal_datagram` makes an authentic datagram with any body, to test what a misbehaving
  peer can do after authentication.
* :func:`logical_stream_exporter` is the exporter a channel set up on a host's logical stream
  uses, from a fixed connection exporter secret (the known-answer vectors).
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, cast

import trio
import trio.testing

from .._keyschedule import export_keying_material
from ..identity import Identity
from ..logical import LogicalStream
from ..testing import memory_secure_stream_pair
from . import _wire as wire
from ._keys import Exporter, direction_secrets
from ._session import Session, SessionParameters
from .channel import SllpChannel
from .config import SllpConfig
from .setup import PROTOCOL, Randomness, open_channel
from .transport import DatagramTransport

if TYPE_CHECKING:
    from ..connections import PeerConnection
    from .events import Event

TEST_EXPORTER_SECRET = bytes(range(32))
OFFERER_CID = 0x0102030405060708
ANSWERER_CID = 0x1112131415161718


def make_offer(config: SllpConfig | None = None, *, kind: int = wire.KIND_OFFER) -> wire.Offer:
    """A fixed offer (or answer, with ``kind=KIND_ANSWER``) describing a side with ``config``."""
    config = config or SllpConfig()
    offerer = kind == wire.KIND_OFFER
    return wire.Offer(
        kind=kind,
        epoch=wire.CHANNEL_EPOCH,
        connection_id=OFFERER_CID if offerer else ANSWERER_CID,
        address=("192.0.2.1", 40001) if offerer else ("2001:db8::2", 40002),
        max_datagram_payload=config.max_datagram_payload,
        max_message_size=config.max_message_size,
    )


class RecordingSession(Session):
    """A :class:`Session` that also keeps in :attr:`log` every event its calls return."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log: list[Event] = []
        """Events returned so far and not yet taken with :meth:`take_events`."""

    def _record(self, events: list[Event]) -> list[Event]:
        self.log.extend(events)
        return events

    def take_events(self) -> list[Event]:
        """The events returned since the last call, oldest first."""
        log, self.log = self.log, []
        return log

    def receive_datagrams_untrusted(
        self, data: memoryview | bytes | bytearray, segment: int, now: float
    ) -> list[Event]:
        return self._record(super().receive_datagrams_untrusted(data, segment, now))

    def handle_timers(self, now: float) -> list[Event]:
        return self._record(super().handle_timers(now))

    def close(self, code: int = wire.CLOSE_NORMAL, reason: str = "") -> list[Event]:
        return self._record(super().close(code, reason))

    def close_received(self, code: int, reason: str) -> list[Event]:
        return self._record(super().close_received(code, reason))

    def lifeline_lost(self) -> list[Event]:
        return self._record(super().lifeline_lost())


def sessions_from(
    exporter_secret: bytes,
    offer: wire.Offer,
    answer: wire.Offer,
    *,
    offerer_config: SllpConfig,
    answerer_config: SllpConfig,
    now: float = 0.0,
) -> tuple[RecordingSession, RecordingSession]:
    """The two sessions that ``offer`` and ``answer`` set up under ``exporter_secret``."""
    offer_bytes, answer_bytes = wire.encode_offer(offer), wire.encode_offer(answer)

    def export(label: str, context: bytes, length: int) -> bytes:
        return export_keying_material(exporter_secret, label, context, length)

    o2a, a2o = direction_secrets(export, offer_bytes, answer_bytes)
    size = min(offer.max_datagram_payload, answer.max_datagram_payload)
    offerer = RecordingSession(
        offerer_config,
        SessionParameters(offer.connection_id, answer.connection_id, size, answer.max_message_size),
        o2a,
        a2o,
        now,
    )
    answerer = RecordingSession(
        answerer_config,
        SessionParameters(answer.connection_id, offer.connection_id, size, offer.max_message_size),
        a2o,
        o2a,
        now,
    )
    return offerer, answerer


def session_pair(
    config: SllpConfig | None = None,
    answerer_config: SllpConfig | None = None,
    *,
    now: float = 0.0,
    exporter_secret: bytes = TEST_EXPORTER_SECRET,
) -> tuple[RecordingSession, RecordingSession]:
    """Two sans-IO sessions (offerer, answerer) joined by fixed test keys (from
    ``exporter_secret``, standing for the secure stream's exporter)."""
    config = config or SllpConfig()
    answerer_config = answerer_config or config
    return sessions_from(
        exporter_secret,
        make_offer(config),
        make_offer(answerer_config, kind=wire.KIND_ANSWER),
        offerer_config=config,
        answerer_config=answerer_config,
        now=now,
    )


class FragmentFeeder:
    """Authentic DATA datagrams with any fragment fields (valid or not), from ``sender`` straight
    into ``receiver``: ``feed(message_id, index, count, size)``. For tests of reassembly."""

    def __init__(self, sender: Session, receiver: Session) -> None:
        self.sender = sender
        self.receiver = receiver

    def __call__(self, message_id: int, index: int, count: int, size: int) -> None:
        body = wire.encode_body(
            wire.TYPE_DATA, message_id, index, count, bytes([message_id % 256]) * size
        )
        self.receiver.receive_datagram_untrusted(seal_datagram(self.sender, body), 0.0)


def logical_stream_exporter(exporter_secret: bytes, stream_id: int) -> Exporter:
    """The exporter of logical stream ``stream_id`` of a connection whose exporter secret is
    ``exporter_secret``: what an SLLP channel set up on that stream derives its keys from."""

    class _Connection:  # only the exporter of a connection, for a stream that is not connected
        def export_keying_material(self, label: str, context: bytes, length: int) -> bytes:
            return export_keying_material(exporter_secret, label, context, length)

    connection = cast("PeerConnection", _Connection())
    return LogicalStream(connection, stream_id, PROTOCOL, server_side=False).export_keying_material


def seal_datagram(
    session: Session,
    body: bytes,
    *,
    sequence: int | None = None,
    connection_id: int | None = None,
    flags: int | None = None,
) -> bytes:
    """An authentic datagram from ``session`` carrying ``body`` as its plaintext, whatever it is.

    Takes the session's next sequence number unless ``sequence`` is given.
    """
    keys = session._send
    if keys is None:
        raise RuntimeError("the session has no send key")
    if sequence is None:
        sequence = session._send_sequence
        session._send_sequence += 1
    header = wire.encode_header(
        keys.phase if flags is None else flags,
        session.parameters.remote_connection_id if connection_id is None else connection_id,
        sequence,
    )
    return header + keys.aead.encrypt(wire.nonce(keys.iv, sequence), body, header)


async def channel_pair(
    config: SllpConfig | None = None,
    answerer_config: SllpConfig | None = None,
    *,
    identities: tuple[Identity, Identity] | None = None,
    transports: tuple[DatagramTransport, DatagramTransport] | None = None,
    local_address: tuple[str, int] = ("127.0.0.1", 0),
    clock: trio.testing.MockClock | None = None,
    randomness: Randomness = os.urandom,
) -> tuple[SllpChannel, SllpChannel]:
    """Two connected channels (offerer, answerer) over an in-memory secure stream pair
    (``randomness`` makes both sides' connection ids).

    Pass the ``clock`` when running under an autojumping ``MockClock``: the stream handshake's RSA
    work runs in a thread, which autojump would take for idleness, so the clock is held still
    during the handshake.
    """
    client, server = memory_secure_stream_pair(identities=identities)
    threshold = clock.autojump_threshold if clock is not None else 0.0
    if clock is not None:
        clock.autojump_threshold = math.inf
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.do_handshake)
            nursery.start_soon(server.do_handshake)
    finally:
        if clock is not None:
            clock.autojump_threshold = threshold
    answerer_config = answerer_config or config
    channels: dict[str, SllpChannel] = {}

    async def open_one(name: str) -> None:
        stream = client if name == "offerer" else server
        channels[name] = await open_channel(
            stream,
            local_address=local_address,
            config=config if name == "offerer" else answerer_config,
            transport=None if transports is None else transports[name != "offerer"],
            randomness=randomness,
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(open_one, "offerer")
        nursery.start_soon(open_one, "answerer")
    return channels["offerer"], channels["answerer"]
