"""The DHT's RPC service, sans-IO: what a node answers and what a request changes.

Theory of operation
-------------------
Every RPC arrives on its own logical stream (SPEC-dht.md §3), whose connection's handshake proved
the requester's peer id; the node hands the stream's one request message to a fresh
:class:`Exchange` of the node's one :class:`Responder`, with the requester (a
:class:`~._ids.Contact` of its proven record and the connection's remote address) and the time,
and gets back the events the request completed; the reply is pulled with
:meth:`Exchange.message_to_send` (``None``: send nothing and reset the stream).

In order, a request is:

1. **rate limited** per requester (a token bucket per peer id, :class:`~._sources.RateLimiter`)
   *before* it is parsed, since parsing a STORE verifies a signature. Over the limit, a STORE (its
   type byte is peeked) is answered REFUSED ``QUOTA``; any other request is not answered (the
   stream is reset and the requester counts a failed RPC), as SPEC-dht.md §3 says;
2. **parsed** (:func:`~._wire.parse_message_untrusted`; a reply type is a protocol error);
3. **answered**: PING with PONG; FIND_NODE with the routing table's verified contacts nearest the
   target (never the requester); FIND_VALUE with the store's record if it is newer than what the
   requester has, else like FIND_NODE; STORE through :meth:`~._store.RecordStore.put_untrusted`
   charged to the requester's network (:func:`~._sources.store_source`), or refused
   ``NOT_RESPONSIBLE`` when ``k`` verified contacts nearer the key are known;
4. and its ``sender`` (the requester's announced contact) is **taken as hearsay** only: its id
   must be the proven peer id, and the contact is built from the proven public key, the
   connection's *observed* host (never a host the requester names: that would let it point us at
   a victim) and the announced port. Being connected proves the id but not that the requester
   listens there, so a sender the table does not hold as verified is handed to the caller as a
   :class:`~._routing.PingDue`: a ping that succeeds proves it. A peer is asked for at most once
   per ``reverify_interval`` (a bounded table), so requests cannot turn the node into a pinger.

Every table a requester can add to is bounded: the token buckets (``max_tracked_peers``), the
verification memory (the same bound), the store (its quotas), the routing table (its caps).
"""

from __future__ import annotations

from collections import OrderedDict

import attrs

from ._errors import DhtProtocolError
from ._ids import Contact, distance
from ._records import Record
from ._routing import PingDue, RoutingEvent, RoutingTable
from ._sources import RateLimit, RateLimiter, store_source
from ._store import RecordStore, Refusal
from ._wire import (
    DEFAULT_WIRE_CONFIG,
    FindNode,
    FindValue,
    Message,
    MessageType,
    Nodes,
    Ping,
    Pong,
    Refused,
    Store,
    Stored,
    Value,
    WireConfig,
    parse_message_untrusted,
)


@attrs.frozen
class ResponderConfig:
    """The limits of the RPC service."""

    rate_limit: RateLimit = attrs.field(factory=RateLimit)
    """Requests one peer may make: ``rate`` per second, ``burst`` at once."""
    max_tracked_peers: int = attrs.field(default=4096, validator=attrs.validators.ge(1))
    """Peers whose token bucket (and verification time) is remembered; the least recently seen
    is forgotten first."""
    reverify_interval: float = attrs.field(default=300.0, validator=attrs.validators.ge(0))
    """Seconds before a requester not in the routing table may be pinged again."""
    refuse_not_responsible: bool = True
    """Refuse a STORE with ``NOT_RESPONSIBLE`` when ``k`` verified contacts nearer the key are
    known (SPEC-dht.md §6)."""


@attrs.frozen
class RecordStored:
    """A STORE made ``record`` the current record under its key (``evicted``: keys of records
    dropped to make room)."""

    record: Record = attrs.field(repr=False)
    evicted: tuple[bytes, ...] = ()


@attrs.frozen
class RequestLimited:
    """A request of ``node_id`` went over its rate limit."""

    node_id: bytes = attrs.field(repr=lambda node_id: node_id.hex()[:16])


ResponderEvent = RoutingEvent | RecordStored | RequestLimited


class Responder:
    """The RPC service of one node over its routing table and store."""

    def __init__(
        self,
        routing: RoutingTable,
        store: RecordStore,
        config: ResponderConfig | None = None,
        wire: WireConfig = DEFAULT_WIRE_CONFIG,
    ) -> None:
        self.routing = routing
        self.store = store
        self.config = config = config if config is not None else ResponderConfig()
        self.wire = wire
        self._limiter = RateLimiter(config.rate_limit, config.max_tracked_peers)
        self._verify_asked: OrderedDict[bytes, float] = OrderedDict()

    def exchange(self, requester: Contact) -> Exchange:
        """The sans-IO state of one RPC stream from ``requester``."""
        return Exchange(self, requester)

    def answer_untrusted(
        self, requester: Contact, data: bytes, now: float, wall_time: float
    ) -> tuple[Message | None, list[ResponderEvent]]:
        """The reply to one request (``None``: none) and what it changed; :class:`Exchange`
        is the public face of this. ``now`` is the node's monotonic clock (routing, rate
        limits); ``wall_time`` its Unix time (record times)."""
        if not self._limiter.allow(requester.node_id, now):
            limited: list[ResponderEvent] = [RequestLimited(requester.node_id)]
            if data[1:2] == bytes([MessageType.STORE]):
                return Refused(Refusal.QUOTA), limited
            return None, limited
        request = parse_message_untrusted(data, self.wire)
        if isinstance(request, Ping):
            reply: Message = Pong()
        elif isinstance(request, FindNode):
            reply = self._nodes(request.target, requester)
        elif isinstance(request, FindValue):
            reply = self._value(request, requester, wall_time)
        elif isinstance(request, Store):
            reply, events = self._store(request.record, requester, wall_time)
            return reply, events + self._sender_seen(request.sender, requester, now)
        else:
            raise DhtProtocolError("a reply sent as a request")
        return reply, self._sender_seen(request.sender, requester, now)

    def _nodes(self, target: bytes, requester: Contact) -> Nodes:
        count = self.wire.max_contacts
        found = self.routing.closest(target, count + 1)
        return Nodes(tuple(c for c in found if c.node_id != requester.node_id)[:count])

    def _value(self, request: FindValue, requester: Contact, wall_time: float) -> Message:
        record = self.store.get(request.key, wall_time)
        if record is not None and (
            request.have_sequence == 0 or record.sequence > request.have_sequence
        ):
            return Value(record)
        return self._nodes(request.key, requester)

    def _store(
        self, record: Record, requester: Contact, wall_time: float
    ) -> tuple[Message, list[ResponderEvent]]:
        if self.config.refuse_not_responsible and not self._responsible(record.key, requester):
            return Refused(Refusal.NOT_RESPONSIBLE), []
        result = self.store.put_untrusted(record, store_source(requester.host), wall_time)
        if result.refusal is not None:
            return Refused(result.refusal), []
        return Stored(), [RecordStored(record, result.evicted)]

    def _responsible(self, key: bytes, requester: Contact) -> bool:
        """Whether we are among the ``k`` nodes nearest ``key`` we know (the requester aside)."""
        count = self.wire.max_contacts
        own = distance(self.routing.own_id, key)
        nearer = [
            contact
            for contact in self.routing.closest(key, count + 1)
            if contact.node_id != requester.node_id and distance(contact.node_id, key) < own
        ]
        return len(nearer) < count

    def _sender_seen(
        self, sender: Contact | None, requester: Contact, now: float
    ) -> list[ResponderEvent]:
        if sender is None or sender.node_id != requester.node_id:
            return []  # not listening, or naming another node: ignored (SPEC-dht.md §4)
        record = requester.record
        contact = Contact(record.with_address(requester.host, sender.port), requester.host,
                          sender.port)  # fmt: skip
        if contact.node_id in self.routing:
            existing = self.routing.closest(contact.node_id, 1)
            if existing and existing[0].address == contact.address:
                return []
        asked = self._verify_asked.pop(contact.node_id, None)
        if asked is not None and now < asked + self.config.reverify_interval:
            self._verify_asked[contact.node_id] = asked
            return []
        self._verify_asked[contact.node_id] = now
        if len(self._verify_asked) > self.config.max_tracked_peers:
            self._verify_asked.popitem(last=False)
        self.routing.seen_unverified(contact, now, source=None)
        return [PingDue(contact)]


class Exchange:
    """One RPC stream at the responder: one request in, at most one reply out."""

    def __init__(self, responder: Responder, requester: Contact) -> None:
        self._responder = responder
        self.requester = requester
        self._reply: Message | None = None
        self._answered = False

    def receive_request_untrusted(
        self, data: bytes, now: float, wall_time: float
    ) -> list[ResponderEvent]:
        """Take the stream's request; raises only :class:`DhtProtocolError` (reset the stream)."""
        if self._answered:
            raise DhtProtocolError("a second request on one stream")
        self._answered = True
        self._reply, events = self._responder.answer_untrusted(self.requester, data, now, wall_time)
        return events

    def message_to_send(self) -> bytes | None:
        """The reply to send, then finish the stream; ``None``: reset the stream instead."""
        reply, self._reply = self._reply, None
        return None if reply is None else reply.encode()


__all__ = [
    "Exchange",
    "RecordStored",
    "RequestLimited",
    "Responder",
    "ResponderConfig",
    "ResponderEvent",
]
