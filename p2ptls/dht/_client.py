"""The asking side of a DHT node (trio): one RPC at a time, and iterative lookups over them.

Theory of operation
-------------------
A :class:`DhtClient` sends requests for its :class:`~p2ptls.dht.node.DhtNode` and drives the
sans-IO :class:`~._lookup.Lookup`; it decides nothing itself:

* **RPCs**: :meth:`DhtClient.ping`, :meth:`~DhtClient.find_node`, :meth:`~DhtClient.find_value`
  and :meth:`~DhtClient.store` open a stream to the contact (dialling it through the host if
  there is no connection yet), send one request, read one reply within ``rpc_timeout`` and close.
  Success is a verified sighting of the contact (``routing.verified``); any failure (timeout, dial
  or handshake failure, a reset, a malformed or mismatched reply) is ``routing.failed`` and raises
  :class:`RpcFailed`. Contacts in a NODES reply are hearsay (``routing.seen_unverified`` with the
  responder as source). The routing table's events go to the node's dispatcher.
* **lookups**: :meth:`DhtClient.lookup` pumps a Lookup seeded from the routing table's nearest
  contacts (verified or not): each request it asks for runs as a task of a nursery (``α`` per
  path in flight), each outcome is fed back as it arrives, the Lookup's soft deadlines wake the
  loop, and the tasks still running when it is done are cancelled. A value is fed back only if it
  is of the kind asked for and current (:func:`~._operations.usable_value`); otherwise the reply
  counts as one without a value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import attrs
import trio

from .._errors import LocalProtocolError, ProtocolError, StreamRefused
from ..host import Host
from ._errors import DhtError, DhtProtocolError
from ._ids import Contact
from ._lookup import Lookup, LookupResult, Request, RequestKind
from ._operations import NoContacts, usable_value
from ._records import Record
from ._routing import RoutingEvent, RoutingTable
from ._store import Refusal
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


class DhtClient:
    """The requests of the node on ``host``; see the module's theory of operation."""

    def __init__(
        self,
        host: Host,
        routing: RoutingTable,
        config: DhtConfig,
        dispatch: Callable[[Iterable[RoutingEvent]], None],
        wall_clock: Callable[[], float],
    ) -> None:
        self.host = host
        self.routing = routing
        self.config = config
        self._dispatch = dispatch
        self._wall_clock = wall_clock
        self.rpcs_sent = 0
        self.rpcs_failed = 0
        self.lookups = 0

    @property
    def node_id(self) -> bytes:
        return self.routing.own_id

    @property
    def contact(self) -> Contact | None:
        """Our own contact, announced as the ``sender`` of requests (``None`` if the host does
        not listen)."""
        if not self.host.listeners:
            return None
        return Contact.of(self.host.peer_record())

    # -- RPCs -----------------------------------------------------------------------------------

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
        self.rpcs_sent += 1
        try:
            with trio.fail_after(self.config.rpc_timeout):
                data = await self._exchange(contact, request.encode())
            reply = parse_message_untrusted(data, self.config.wire)
            if not isinstance(reply, expected):
                raise DhtProtocolError("the reply does not answer the request")
            if key is not None and isinstance(reply, Value) and reply.record.key != key:
                raise DhtProtocolError("a value under another key")
        except (*_RPC_ERRORS, trio.TooSlowError) as error:
            self.rpcs_failed += 1
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

    # -- lookups -------------------------------------------------------------------------------

    async def closest(self, key: bytes) -> list[Contact]:
        """The ``k`` nodes nearest ``key`` that answered an iterative lookup, nearest first.
        Raises :class:`~._operations.NoContacts` if the routing table is empty."""
        result = await self.lookup(key, RequestKind.FIND_NODE)
        return [found.contact for found in result.closest]

    async def lookup(
        self,
        target: bytes,
        kind: RequestKind,
        *,
        quorum: int = 1,
        value_kind: type[Record] | tuple[type[Record], ...] = (),
    ) -> LookupResult[Contact, Record]:
        config = attrs.evolve(self.config.lookup, value_quorum=quorum)
        seeds = self.routing.closest(target, config.max_candidates, verified_only=False)
        now = trio.current_time()
        try:
            lookup: Lookup[Contact, Record] = Lookup(
                target, seeds, config, now, kind=kind, own_id=self.node_id
            )
        except ValueError:
            raise NoContacts("the routing table holds no contact to look up from") from None
        self.routing.lookup_started(target, now)
        self.lookups += 1
        progress = _Progress()
        async with trio.open_nursery() as nursery:
            while True:
                for request in lookup.requests_to_send(trio.current_time()):
                    nursery.start_soon(self._ask, lookup, request, value_kind, progress)
                if lookup.done:
                    break
                with trio.move_on_at(lookup.next_deadline()):
                    await progress.wait()
                lookup.handle_timers(trio.current_time())
            nursery.cancel_scope.cancel()  # requests past their soft timeout: no longer needed
        return lookup.result

    async def _ask(
        self,
        lookup: Lookup[Contact, Record],
        request: Request[Contact],
        value_kind: type[Record] | tuple[type[Record], ...],
        progress: _Progress,
    ) -> None:
        contact = request.contact
        value: Record | None = None
        try:
            if request.kind is RequestKind.FIND_NODE:
                contacts = await self.find_node(contact, request.target)
            else:
                reply = await self.find_value(contact, request.target)
                contacts, value = (reply, None) if isinstance(reply, list) else ([], reply)
        except RpcFailed:
            lookup.request_failed(contact, trio.current_time())
        else:
            limits = self.config.store.limits
            if value is not None and not usable_value(
                value, value_kind, self._wall_clock(), limits
            ):
                value = None  # a stale or foreign value is an answer without one
            lookup.reply_received(contact, contacts, trio.current_time(), value)
        progress.set()


class _Progress:
    """Wakes a lookup's loop whenever one of its requests ended (a trio event that re-arms)."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


__all__ = ["DhtClient", "RpcFailed"]
