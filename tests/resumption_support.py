"""Helpers for the resumption tests: sans-IO parties that hold tickets."""

from __future__ import annotations

import attrs

from p2ptls import Identity, KnownPeers, NetworkKey, ReplayGuard
from p2ptls import _wire as wire
from p2ptls._connection import (
    Connection,
    Event,
    HandshakeState,
    PrivateKeyOperationNeeded,
    TicketReceived,
)
from p2ptls._tickets import SessionTicket, TicketAuthority
from p2ptls.config import StreamConfig

NOW_NS = 1_800_000_000 * wire.NS_PER_S
LIFETIME = 6 * 3600


@attrs.define
class Side:
    """One party's long-lived state (what its SecurityContext would hold)."""

    identity: Identity
    psk: NetworkKey
    peers: KnownPeers
    guard: ReplayGuard = attrs.field(factory=ReplayGuard)
    authority: TicketAuthority = attrs.field(factory=TicketAuthority)
    config: StreamConfig = attrs.field(factory=StreamConfig)
    key_operations: int = 0
    tickets: list[SessionTicket] = attrs.field(factory=list)


def sides(identities: tuple[Identity, ...]) -> tuple[Side, Side]:
    client_id, server_id = identities[0], identities[1]
    psk = NetworkKey.generate()
    client = Side(client_id, psk, KnownPeers([server_id.record]))
    server = Side(server_id, psk, KnownPeers([client_id.record]))
    return client, server


def initiator(
    client: Side,
    server: Side,
    *,
    ticket: SessionTicket | None = None,
    timestamp_ns: int = NOW_NS,
) -> Connection:
    return Connection.initiator(
        client.config,
        client.identity,
        client.psk,
        server.identity.record,
        timestamp_ns=timestamp_ns,
        ticket=ticket,
    )


def responder(server: Side, *, now_ns: int = NOW_NS, source: str = "-") -> Connection:
    return Connection.responder(
        server.config,
        server.identity,
        server.psk,
        server.peers,
        server.guard,
        now_ns=now_ns,
        source=source,
        tickets=server.authority,
    )


def deliver(conn: Connection, side: Side, data: bytes, peer: Side | None = None) -> bytes:
    """Feed ``data`` to ``conn``, run its key operations, store its tickets; return what it owes."""
    out = b""
    events: list[Event] = list(conn.receive_data_untrusted(data))
    while events:
        event = events.pop(0)
        if isinstance(event, PrivateKeyOperationNeeded):
            side.key_operations += 1
            events.extend(
                conn.supply_decryption(
                    side.identity.decrypt_untrusted(event.ciphertext, event.label)
                )
            )
        elif isinstance(event, TicketReceived) and peer is not None:
            side.tickets.append(
                SessionTicket(peer.identity.peer_id, event.ticket, event.ticket_psk, 1e18)
            )
    return out + conn.data_to_send()


def run(client_conn: Connection, client: Side, server_conn: Connection, server: Side) -> None:
    """Exchange flights until neither side has anything to send (errors propagate)."""
    client_conn.start()
    to_server = client_conn.data_to_send()
    while to_server:
        to_client = deliver(server_conn, server, to_server)
        if not to_client:
            break
        to_server = deliver(client_conn, client, to_client, peer=server)


def full_handshake(client: Side, server: Side, *, now_ns: int = NOW_NS) -> None:
    """A full handshake that leaves its tickets in ``client.tickets``."""
    c, s = initiator(client, server, timestamp_ns=now_ns), responder(server, now_ns=now_ns)
    run(c, client, s, server)
    assert c.state is HandshakeState.ESTABLISHED and s.state is HandshakeState.ESTABLISHED
    assert not c.resumed and not s.resumed
