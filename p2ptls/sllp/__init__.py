"""SLLP: the encrypted, loss-tolerant datagram mode of p2ptls.

Between two peers, an SLLP channel carries messages over UDP, encrypted and authenticated with keys
exported from an authenticated stream between them, for data where speed matters more than
completeness. A message of any size up to a configured maximum arrives whole, or the receiver
learns that it was lost; nothing is ever retransmitted. Through a host, the channel is set up on a
logical stream of ``sllp.PROTOCOL`` (``"p2ptls/sllp/1"``) on the host's one connection to the
peer::

    sllp.serve_datagrams(bob_host, handle_channel)             # bob: handle_channel(channel)
    channel = await sllp.connect_datagram(alice_host, bob_id)  # alice
    await channel.send(frame)
    await channel.send_many(readings)                          # many small messages at once
    async for message in channel:
        handle(message.message_id, message.data)
    # or, many at a time: for message in await channel.receive_many(): ...

``open_channel(stream)`` sets one up on a bare :class:`~p2ptls.SecureStream` as well.

Layout: a sans-IO core (``_wire``, ``_keys``, ``_replay``, ``_reassembly``, ``_session``; no trio)
under a thin trio layer (``transport``, ``channel``, ``setup``); ``relay`` simulates lossy links
for tests and benchmarks. ``protocol/SPEC-sllp.md`` is the normative description.
"""

from ._datagrams import DatagramTrain
from ._errors import DatagramError, DatagramTooLarge, NegotiationError, SessionClosed, SllpError
from ._replay import ReplayWindow
from ._session import Session, SessionParameters, SessionState
from ._wire import Offer, is_offer
from .channel import (
    ChannelBroken,
    IdleTimeout,
    Lifeline,
    LifelineLost,
    PeerClosed,
    SequenceExhausted,
    SllpChannel,
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
from .setup import (
    PROTOCOL,
    ChannelHandler,
    accept_datagram,
    connect_datagram,
    open_channel,
    serve_datagrams,
)
from .transport import DatagramTransport, UdpTransport

__all__ = [
    "PROTOCOL",
    "ChannelBroken",
    "ChannelClosed",
    "ChannelHandler",
    "CloseCause",
    "DatagramError",
    "DatagramTooLarge",
    "DatagramTrain",
    "DatagramTransport",
    "DeliveryMode",
    "Event",
    "IdleTimeout",
    "KeysUpdated",
    "Lifeline",
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
    "serve_datagrams",
]
