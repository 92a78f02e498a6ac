"""The DHT node on a p2ptls host (trio): RPCs both ways and the routing table's timers.

Theory of operation
-------------------
A :class:`DhtNode` serves protocol ``p2ptls/dht/1`` on its :class:`~p2ptls.Host` and drives the
sans-IO cores; it decides nothing itself:

* **serving**: each stream a peer opens carries one RPC (SPEC-dht.md §3). The handler reads the
  request, hands it to an :class:`~._responder.Exchange` with the requester the handshake proved,
  sends the reply and finishes the stream; a malformed request, a rate-limited one (other than
  STORE) or a timeout (``request_timeout``) resets only that stream. How many RPCs one peer can
  have in the handler at once is bounded by the host: ``ConnectionConfig.max_streams_per_peer``
  inbound streams per connection, and one connection per peer.
* **asking**: :meth:`DhtNode.ping`, :meth:`~DhtNode.find_node`, :meth:`~DhtNode.find_value` and
  :meth:`~DhtNode.store` open a stream to the contact (dialling it through the host if there is no
  connection yet), send one request, read one reply within ``rpc_timeout`` and close. Success is
  a verified sighting of the contact (``routing.verified``); any failure (timeout, dial or
  handshake failure, a reset, a malformed or mismatched reply) is ``routing.failed`` and raises
  :class:`RpcFailed`. Contacts in a NODES reply are hearsay (``routing.seen_unverified`` with the
  responder as source). These calls are what an iterative lookup drives, ``α`` at a time.
* **timers**: one background task sleeps until the routing table's or the store's
  ``next_deadline()`` (or until something changed) and runs their ``handle_timers``. Routing
  events become pings (``PingNeeded``, ``PingDue``: at most ``max_background_pings`` at once, one
  per contact); ``RefreshDue`` keys are kept in :attr:`DhtNode.refreshes_due` for the lookups to
  come (TODO: run a lookup of each).

Two clocks: trio's (``trio.current_time()``) for the routing table, rate limits and timeouts, and
Unix time (``wall_clock``, injectable) for record times.
"""

from __future__ import annotations

import collections
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

import trio

from .._errors import LocalProtocolError, ProtocolError, StreamRefused
from .._util import open_service_nursery
from ..host import Host
from ..identity import PeerRecord
from ..logical import LogicalStream
from ._errors import DhtError, DhtProtocolError
from ._ids import Contact
from ._records import Record
from ._responder import Responder, ResponderEvent
from ._routing import PingDue, PingNeeded, RefreshDue, RoutingTable
from ._store import RecordStore, Refusal
from ._wire import (
    PROTOCOL,
    FindNode,
    FindValue,
    Message,
    Nodes,
    Ping,
    Pong,
    Refused,
    Store,
    Stored,
    Value,
    parse_message_untrusted,
)
from .config import DhtConfig


class RpcFailed(DhtError):
    """An RPC to a contact failed: unreachable, too slow, or its reply broke the protocol
    (``__cause__`` says which). The contact's failure was reported to the routing table."""


_RPC_ERRORS = (OSError, trio.BrokenResourceError, trio.EndOfChannel, ProtocolError, StreamRefused)
"""What a dial, a stream or a reply can raise because of the network or the peer."""


class DhtNode:
    """A DHT node on ``host``. Create with :func:`open_dht_node`."""

    def __init__(
        self,
        host: Host,
        config: DhtConfig,
        nursery: trio.Nursery,
        *,
        wall_clock: Callable[[], float] = time.time,
        randomness: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.host = host
        self.config = config
        self._nursery = nursery
        self._wall_clock = wall_clock
        now = trio.current_time()
        self.routing = RoutingTable(
            host.peer_id.digest, config.routing, now=now, randomness=randomness
        )
        """The k-buckets (sans-IO)."""
        self.records = RecordStore(config.store)
        """The records this node holds for others (sans-IO)."""
        self.responder = Responder(self.routing, self.records, config.responder, config.wire)
        self.refreshes_due: collections.deque[bytes] = collections.deque(
            maxlen=config.max_refreshes_due
        )
        """Keys of bucket refreshes the routing table asked for (run by lookups, to come)."""
        self._pinging: set[bytes] = set()
        self._changed = trio.Event()

    @property
    def node_id(self) -> bytes:
        """Our 32-byte node id (the host's peer id)."""
        return self.routing.own_id

    @property
    def contact(self) -> Contact | None:
        """Our own contact, announced as the ``sender`` of requests (``None`` if the host does
        not listen)."""
        if not self.host.listeners:
            return None
        return Contact.of(self.host.peer_record())

    async def wait_changed(self) -> None:
        """Wait until the routing table or the store next changes (for tests and monitors)."""
        await self._changed.wait()

    def _note_change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- asking --------------------------------------------------------------------------------

    async def ping(self, contact: Contact) -> None:
        """Ping ``contact``; raises :class:`RpcFailed` if it does not answer."""
        await self._call(contact, Ping(self.contact), Pong)

    async def find_node(self, contact: Contact, target: bytes) -> list[Contact]:
        """The contacts ``contact`` knows nearest ``target`` (unverified: hearsay)."""
        reply = await self._call(contact, FindNode(target, self.contact), Nodes)
        assert isinstance(reply, Nodes)
        return self._hearsay(contact, reply)

    async def find_value(
        self, contact: Contact, key: bytes, have_sequence: int = 0
    ) -> Record | list[Contact]:
        """The record ``contact`` holds under ``key`` (newer than ``have_sequence``), or the
        contacts it knows nearest ``key``."""
        request = FindValue(key, have_sequence, self.contact)
        reply = await self._call(contact, request, (Value, Nodes), key=key)
        if isinstance(reply, Value):
            return reply.record
        assert isinstance(reply, Nodes)
        return self._hearsay(contact, reply)

    async def store(self, contact: Contact, record: Record) -> Refusal | None:
        """Ask ``contact`` to hold ``record``: ``None`` if it does, else why it refused."""
        reply = await self._call(contact, Store(record, self.contact), (Stored, Refused))
        return reply.reason if isinstance(reply, Refused) else None

    async def bootstrap(self, records: Iterable[PeerRecord]) -> int:
        """Join through ``records`` (peers with addresses): ping each (a verified contact) and ask
        it for the nodes nearest our own id, then ping those. Returns how many bootstrap peers
        answered."""
        contacts = [Contact.of(record) for record in records]
        answered = 0
        learned: dict[bytes, Contact] = {}

        async def join(contact: Contact) -> None:
            nonlocal answered
            try:
                await self.ping(contact)
                found = await self.find_node(contact, self.node_id)
            except RpcFailed:
                return
            answered += 1
            learned.update((each.node_id, each) for each in found)

        async with trio.open_nursery() as nursery:
            for contact in contacts:
                nursery.start_soon(join, contact)
        async with trio.open_nursery() as nursery:
            for node_id, contact in learned.items():
                if node_id != self.node_id and node_id not in self.routing:
                    nursery.start_soon(self._ping_quietly, contact)
        return answered

    def _hearsay(self, responder: Contact, reply: Nodes) -> list[Contact]:
        now = trio.current_time()
        for contact in reply.contacts:
            self.routing.seen_unverified(contact, now, source=responder.node_id)
        return list(reply.contacts)

    async def _call(
        self,
        contact: Contact,
        request: Message,
        expected: type | tuple[type, ...],
        *,
        key: bytes | None = None,
    ) -> Message:
        if contact.node_id == self.node_id:
            raise LocalProtocolError("an RPC to this node itself")
        try:
            with trio.fail_after(self.config.rpc_timeout):
                data = await self._exchange(contact, request.encode())
            reply = parse_message_untrusted(data, self.config.wire)
            if not isinstance(reply, expected):
                raise DhtProtocolError("the reply does not answer the request")
            if key is not None and isinstance(reply, Value) and reply.record.key != key:
                raise DhtProtocolError("a value under another key")
        except (*_RPC_ERRORS, trio.TooSlowError) as error:
            self._dispatch(self.routing.failed(contact, trio.current_time()))
            raise RpcFailed(f"RPC to {contact.address} failed") from error
        self._dispatch(self.routing.verified(contact, trio.current_time()))
        return reply

    async def _exchange(self, contact: Contact, request: bytes) -> bytes:
        record = contact.record.with_address(contact.host, contact.port)
        stream = await self.host.open(record, PROTOCOL, address=contact.address)
        try:
            await stream.send_message(request)
            await stream.send_eof()
            reply = await stream.receive_message()
            try:
                await stream.receive_message()
            except trio.EndOfChannel:
                return reply
            raise DhtProtocolError("a second reply")
        finally:
            await stream.aclose()

    # -- serving -------------------------------------------------------------------------------

    async def _serve(self, stream: LogicalStream) -> None:
        address = stream.remote_address
        if address is None:
            return
        requester = Contact(stream.remote_peer, address[0], address[1])
        exchange = self.responder.exchange(requester)
        with trio.move_on_after(self.config.request_timeout):
            try:
                data = await stream.receive_message()
                events = exchange.receive_request_untrusted(
                    data, trio.current_time(), self._wall_clock()
                )
            except (DhtProtocolError, trio.EndOfChannel):
                return  # the host closes the stream unanswered: a reset
            self._dispatch(events)
            reply = exchange.message_to_send()
            if reply is not None:
                await stream.send_message(reply)
                await stream.send_eof()

    # -- timers and routing events -------------------------------------------------------------

    def _dispatch(self, events: Iterable[ResponderEvent]) -> None:
        for event in events:
            if isinstance(event, PingNeeded):
                self._start_ping(event.old)
            elif isinstance(event, PingDue):
                self._start_ping(event.contact)
            elif isinstance(event, RefreshDue):
                # TODO(lookups): run a lookup of the key instead of only recording it.
                self.refreshes_due.append(event.key)
        self._note_change()

    def _start_ping(self, contact: Contact) -> None:
        if contact.node_id in self._pinging:
            return
        if len(self._pinging) >= self.config.max_background_pings:
            return  # the table asks again (eviction pings time out, stale entries re-probe)
        self._pinging.add(contact.node_id)
        self._nursery.start_soon(self._background_ping, contact)

    async def _background_ping(self, contact: Contact) -> None:
        try:
            await self._ping_quietly(contact)
        finally:
            self._pinging.discard(contact.node_id)

    async def _ping_quietly(self, contact: Contact) -> None:
        """A ping whose outcome only the routing table needs: ``_call`` reported it there."""
        with contextlib.suppress(RpcFailed):
            await self.ping(contact)

    async def _run_timers(self) -> None:
        while True:
            events = self.routing.handle_timers(trio.current_time())
            expired = self.records.handle_timers(self._wall_clock())
            if events or expired:
                self._dispatch(events)
            store_delay = self.records.next_deadline() - self._wall_clock()
            deadline = min(self.routing.next_deadline(), trio.current_time() + store_delay)
            changed = self._changed
            with trio.move_on_at(deadline):
                await changed.wait()


@asynccontextmanager
async def open_dht_node(
    host: Host,
    config: DhtConfig | None = None,
    *,
    wall_clock: Callable[[], float] = time.time,
    randomness: Callable[[int], bytes] = os.urandom,
) -> AsyncIterator[DhtNode]:
    """Run a DHT node on ``host`` for the duration of the block.

    The host should admit the network's members (``admission=admit_network_members``): a DHT's
    peers are not known in advance. Example::

        async with open_host(host_config) as host, open_dht_node(host) as node:
            await node.bootstrap([bootstrap_record])
    """
    async with open_service_nursery() as nursery:
        node = DhtNode(
            host, config or DhtConfig(), nursery, wall_clock=wall_clock, randomness=randomness
        )
        host.serve_protocol(PROTOCOL, node._serve)
        nursery.start_soon(node._run_timers)
        try:
            yield node
        finally:
            host.remove_protocol(PROTOCOL)
            nursery.cancel_scope.cancel()


__all__ = ["DhtNode", "RpcFailed", "open_dht_node"]
