"""Resumed handshakes and the persisted replay state (SPEC 3.5 (b), 3.6).

A resumed handshake advances the per-peer guard in memory only: it never makes the replay state
file dirty, so it costs no write (no worker thread, no fsync). The guarantee the file gives, a
Hello replayed after a restart cannot complete, holds for ResumeHellos without it: a restart
forgets the ticket keys, so a replayed ResumeHello gets a substitute reply.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from p2ptls import HandshakeFailed, Identity, ReplayGuard
from p2ptls import _wire as wire
from p2ptls._connection_state import HandshakeState
from p2ptls._tickets import TicketAuthority

from .resumption_support import NOW_NS, Side, deliver, full_handshake, initiator, responder, sides

LATER = NOW_NS + 60 * wire.NS_PER_S


@pytest.fixture
def persisted(identities: tuple[Identity, ...], tmp_path: Path) -> tuple[Side, Side, Path]:
    """A client holding tickets and a server whose replay guard persists to a file."""
    client, server = sides(identities)
    path = tmp_path / "replay.json"
    server.guard = ReplayGuard(path)
    full_handshake(client, server)
    server.guard.save()
    return client, server, path


def resumed_flights(client: Side, server: Side, timestamp_ns: int) -> tuple[bytes, bytes]:
    """Resume once; return the initiator's two flights (ResumeHello, Finish)."""
    c = initiator(client, server, ticket=client.tickets.pop(), timestamp_ns=timestamp_ns)
    s = responder(server, now_ns=timestamp_ns)
    assert c.start() == []
    hello = c.data_to_send()
    finish = deliver(c, client, deliver(s, server, hello), peer=server)
    deliver(s, server, finish)
    assert c.resumed and s.state is HandshakeState.ESTABLISHED
    return hello, finish


def test_a_full_handshake_dirties_the_file_and_a_resumed_one_does_not(
    persisted: tuple[Side, Side, Path],
) -> None:
    client, server, path = persisted
    written = path.read_bytes()
    assert ReplayGuard(path).newest(client.identity.peer_id) == NOW_NS
    resumed_flights(client, server, LATER)
    # In memory the guard moved (a second use of that timestamp is refused) ...
    assert server.guard.newest(client.identity.peer_id) == LATER
    assert not server.guard.is_fresh(client.identity.peer_id, LATER)
    # ... but there is nothing to write.
    assert not server.guard.dirty and server.guard.snapshot() is None
    assert path.read_bytes() == written
    # A later full handshake writes its own timestamp (the newest full one).
    full_handshake(client, server, now_ns=LATER + wire.NS_PER_S)
    assert server.guard.dirty
    server.guard.save()
    assert ReplayGuard(path).newest(client.identity.peer_id) == LATER + wire.NS_PER_S


def test_a_full_handshake_older_than_a_resumed_one_is_still_written(
    persisted: tuple[Side, Side, Path],
) -> None:
    """The file holds the newest *full* timestamp, even when a resumption was newer."""
    client, server, path = persisted
    resumed_flights(client, server, LATER)
    full_handshake(client, server, now_ns=LATER - wire.NS_PER_S)  # within the reorder window
    server.guard.save()
    assert ReplayGuard(path).newest(client.identity.peer_id) == LATER - wire.NS_PER_S


def test_a_resumed_handshake_replayed_after_a_restart_cannot_complete(
    persisted: tuple[Side, Side, Path],
) -> None:
    client, server, path = persisted
    hello, finish = resumed_flights(client, server, LATER)
    # Replayed before the restart: answered as the original (a copy), but it cannot finish.
    copy = responder(server, now_ns=LATER)
    assert deliver(copy, server, hello)
    with pytest.raises(HandshakeFailed):
        deliver(copy, server, finish)
    # The restart: the guard comes back from its file, the ticket keys are new.
    server.guard = ReplayGuard(path)
    server.authority = TicketAuthority()
    replayed = responder(server, now_ns=LATER + wire.NS_PER_S)
    assert deliver(replayed, server, hello)  # a substitute reply, of the genuine length
    with pytest.raises(HandshakeFailed):
        deliver(replayed, server, finish)
    assert server.guard.newest(client.identity.peer_id) == NOW_NS
