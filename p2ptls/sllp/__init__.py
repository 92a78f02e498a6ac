"""SLLP: the encrypted, loss-tolerant datagram mode of p2ptls.

Between two peers that share an established :class:`~p2ptls.SecureStream`, an SLLP channel carries
messages over UDP, encrypted and authenticated with keys exported from the stream, for data where
speed matters more than completeness. A message of any size up to a configured maximum arrives
whole, or the receiver learns that it was lost; nothing is ever retransmitted. ::

    channel = await p2ptls.sllp.open_channel(stream, local_address=("127.0.0.1", 0))
    await channel.send(frame)
    async for message in channel:
        handle(message.message_id, message.data)

Layout: a sans-IO core (``_wire``, ``_keys``, ``_replay``, ``_reassembly``, ``_session``; no trio)
under a thin trio layer (``transport``, ``channel``); ``relay`` simulates lossy links for tests and
benchmarks. ``protocol/SPEC-sllp.md`` is the normative description.
"""

from ._errors import DatagramError, DatagramTooLarge, NegotiationError, SessionClosed, SllpError
from ._replay import ReplayWindow
from ._session import DatagramTrain, Session, SessionParameters, SessionState
from ._wire import Offer, is_offer
from .channel import (
    ChannelBroken,
    IdleTimeout,
    LifelineLost,
    PeerClosed,
    SequenceExhausted,
    SllpChannel,
    accept_datagram,
    connect_datagram,
    open_channel,
)
from .config import DeliveryMode, SllpConfig
from .events import (
    ChannelClosed,
    CloseCause,
    Event,
    KeysUpdated,
    LossReason,
    Message,
    MessagesLost,
    Statistics,
)
from .transport import DatagramTransport, UdpTransport

__all__ = [
    "ChannelBroken",
    "ChannelClosed",
    "CloseCause",
    "DatagramError",
    "DatagramTooLarge",
    "DatagramTrain",
    "DatagramTransport",
    "DeliveryMode",
    "Event",
    "IdleTimeout",
    "KeysUpdated",
    "LifelineLost",
    "LossReason",
    "Message",
    "MessagesLost",
    "NegotiationError",
    "Offer",
    "PeerClosed",
    "ReplayWindow",
    "SequenceExhausted",
    "Session",
    "SessionClosed",
    "SessionParameters",
    "SessionState",
    "SllpChannel",
    "SllpConfig",
    "SllpError",
    "Statistics",
    "UdpTransport",
    "accept_datagram",
    "connect_datagram",
    "is_offer",
    "open_channel",
]
