"""The stream core's state machines (``p2ptls._connection_state``) and who is blamed for what.

Every transition missing from a table raises the error of whoever pulled the trigger: the caller
(:class:`LocalProtocolError`) or the peer (:class:`HandshakeFailed` during the handshake, else
:class:`ProtocolError`). Both roles report :class:`HandshakeComplete`. Misusing a connection is a
``LocalProtocolError``; a cancellation part-way through a handshake or a record breaks the stream
with a cause that is not a ``ProtocolError``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

import pytest
import trio
import trio.testing

from p2ptls import (
    HandshakeFailed,
    Identity,
    LocalProtocolError,
    ProtocolError,
    StreamInterrupted,
)
from p2ptls import _connection_state as machine
from p2ptls._connection import HandshakeComplete
from p2ptls._connection_state import DirectionState, HandshakeState, S, Trigger, advance
from p2ptls.testing import lockstep_secure_stream_pair
from tests.hostile_support import (
    decrypt,
    established_pair,
    hello_of,
    key_operation,
    make_initiator,
    make_responder,
    parties,
    state_of,
)
from tests.resumption_support import LIFETIME, NOW_NS, full_handshake, initiator, responder, sides

HANDSHAKE_TABLES = {
    "initiator": machine.INITIATOR,
    "resuming initiator": machine.RESUMING_INITIATOR,
    "responder": machine.RESPONDER,
}
DIRECTION_TABLES = {"sending": machine.SENDING, "receiving": machine.RECEIVING}


def missing_transitions(
    table: Mapping[tuple[S, Trigger], S], states: Iterable[S]
) -> list[tuple[S, Trigger]]:
    """Every ``(state, trigger)`` pair the table has no transition for."""
    return [pair for pair in itertools.product(states, Trigger) if pair not in table]


@pytest.mark.parametrize("role", HANDSHAKE_TABLES)
def test_every_missing_handshake_transition_blames_the_right_side(role: str) -> None:
    table = HANDSHAKE_TABLES[role]
    for (state, trigger), target in table.items():
        assert advance(table, state, trigger) is target
    missing = missing_transitions(table, HandshakeState)
    assert missing
    for state, trigger in missing:
        expected = LocalProtocolError if trigger.local else HandshakeFailed
        with pytest.raises(expected) as info:
            advance(table, state, trigger)
        assert not (trigger.local and isinstance(info.value, ProtocolError))


@pytest.mark.parametrize("direction", DIRECTION_TABLES)
def test_every_missing_direction_transition_blames_the_right_side(direction: str) -> None:
    table = DIRECTION_TABLES[direction]
    for state, trigger in missing_transitions(table, DirectionState):
        with pytest.raises((LocalProtocolError, ProtocolError)) as info:
            advance(table, state, trigger)
        if trigger.local:
            assert type(info.value) is LocalProtocolError
        else:
            assert type(info.value) is ProtocolError


def test_the_states_each_role_goes_through() -> None:
    """The handshake objects follow their tables: the connection's state is their phase."""
    initiator_conn, responder_conn = make_initiator(), make_responder()
    assert state_of(initiator_conn) is HandshakeState.IDLE
    assert state_of(responder_conn) is HandshakeState.AWAIT_HELLO
    hello = hello_of(initiator_conn)
    assert state_of(initiator_conn) is HandshakeState.AWAIT_REPLY
    operation = key_operation(responder_conn.receive_data_untrusted(hello))
    assert state_of(responder_conn) is HandshakeState.KEY_OPERATION
    assert responder_conn.supply_decryption(decrypt(parties().responder, operation)) == []
    assert state_of(responder_conn) is HandshakeState.AWAIT_FINISH
    reply = responder_conn.data_to_send()
    operation = key_operation(initiator_conn.receive_data_untrusted(reply))
    assert state_of(initiator_conn) is HandshakeState.KEY_OPERATION
    initiator_conn.supply_decryption(decrypt(parties().initiator, operation))
    assert state_of(initiator_conn) is HandshakeState.ESTABLISHED
    responder_conn.receive_data_untrusted(initiator_conn.data_to_send())
    assert state_of(responder_conn) is HandshakeState.ESTABLISHED


def test_initiator_and_responder_both_report_handshake_complete() -> None:
    cast = parties()
    initiator_conn, responder_conn = make_initiator(), make_responder()
    assert initiator_conn.start() == []
    operation = key_operation(responder_conn.receive_data_untrusted(initiator_conn.data_to_send()))
    assert responder_conn.supply_decryption(decrypt(cast.responder, operation)) == []
    operation = key_operation(initiator_conn.receive_data_untrusted(responder_conn.data_to_send()))
    initiator_events = initiator_conn.supply_decryption(decrypt(cast.initiator, operation))
    responder_events = responder_conn.receive_data_untrusted(initiator_conn.data_to_send())
    assert initiator_events == [HandshakeComplete(cast.responder.record)]
    assert responder_events == [HandshakeComplete(cast.initiator.record)]


def test_a_resumed_handshake_reports_handshake_complete_on_both_sides(
    identities: tuple[Identity, ...],
) -> None:
    client, server = sides(identities)
    full_handshake(client, server)
    later = NOW_NS + LIFETIME // 2 * 10**9
    c = initiator(client, server, ticket=client.tickets.pop(), timestamp_ns=later)
    s = responder(server, now_ns=later)
    assert c.start() == []
    assert s.receive_data_untrusted(c.data_to_send()) == []  # ResumeHello: no RSA, no event
    assert s.state is HandshakeState.AWAIT_FINISH
    initiator_events = c.receive_data_untrusted(s.data_to_send())
    assert initiator_events == [HandshakeComplete(server.identity.record)]
    responder_events = s.receive_data_untrusted(c.data_to_send())
    assert responder_events == [HandshakeComplete(client.identity.record)]
    assert c.resumed and s.resumed


def test_empty_input_is_no_input_in_every_state() -> None:
    """``receive_data_untrusted(b"")`` never means EOF and never drains anything."""
    fresh = make_responder()
    assert fresh.receive_data_untrusted(b"") == []
    assert fresh.state is HandshakeState.AWAIT_HELLO
    waiting = make_responder()
    key_operation(waiting.receive_data_untrusted(hello_of(make_initiator())))
    assert waiting.receive_data_untrusted(b"") == []
    assert waiting.state is HandshakeState.KEY_OPERATION
    initiator_conn, responder_conn = established_pair()
    assert responder_conn.receive_data_untrusted(b"") == []
    assert responder_conn.receive_data_untrusted(initiator_conn.send_data(b"x"))


def test_misuse_is_a_local_protocol_error() -> None:
    conn = make_initiator()
    with pytest.raises(LocalProtocolError):
        conn.supply_decryption(None)  # nothing pending
    with pytest.raises(LocalProtocolError):
        conn.send_data(b"early")  # before the handshake
    with pytest.raises(LocalProtocolError):
        conn.export_keying_material("label", b"", 16)
    hello_of(conn)
    with pytest.raises(LocalProtocolError):
        conn.start()  # twice
    assert conn.state is HandshakeState.AWAIT_REPLY  # misuse changes nothing

    initiator_conn, responder_conn = established_pair()
    with pytest.raises(LocalProtocolError):
        initiator_conn.start()
    with pytest.raises(LocalProtocolError):
        initiator_conn.supply_decryption(b"k" * 32)
    initiator_conn.send_eof()
    for send in (
        lambda: initiator_conn.send_data(b"late"),
        lambda: initiator_conn.send_message(b"late"),
        lambda: initiator_conn.send_ping(bytes(8)),
        initiator_conn.send_eof,
    ):
        with pytest.raises(LocalProtocolError, match="CLOSED"):
            send()

    with pytest.raises(ProtocolError):  # the peer's fault...
        responder_conn.receive_data_untrusted(b"\xff" * 8)
    with pytest.raises(LocalProtocolError):  # ...then the caller's, if it goes on
        responder_conn.receive_data_untrusted(b"more")
    with pytest.raises(LocalProtocolError, match="failed"):
        responder_conn.send_data(b"more")
    assert not issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(LocalProtocolError, RuntimeError)


def test_a_local_protocol_error_never_fails_the_connection() -> None:
    initiator_conn, responder_conn = established_pair()
    with pytest.raises(LocalProtocolError):
        responder_conn.supply_decryption(None)
    assert responder_conn.state is HandshakeState.ESTABLISHED
    assert responder_conn.receive_data_untrusted(initiator_conn.send_data(b"still fine"))


def test_a_resuming_initiator_has_no_key_operation_to_supply(
    identities: tuple[Identity, ...],
) -> None:
    client, server = sides(identities)
    full_handshake(client, server)
    c = initiator(client, server, ticket=client.tickets.pop())
    hello_of(c)
    with pytest.raises(LocalProtocolError):
        c.supply_decryption(b"k" * 32)


# -- SecureStream: an interrupted handshake or record is not the peer's fault -------------------


async def test_a_cancelled_handshake_breaks_the_stream_without_blaming_the_peer(
    pair_identities: tuple[Identity, Identity], autojump_clock: trio.testing.MockClock
) -> None:
    client, _server = lockstep_secure_stream_pair(identities=pair_identities)
    with trio.move_on_after(1):  # nobody reads the Hello: the write is cancelled part-way
        await client.do_handshake()
    with pytest.raises(trio.BrokenResourceError) as info:
        await client.send_all(b"after")
    cause = info.value.__cause__
    assert isinstance(cause, StreamInterrupted) and not isinstance(cause, ProtocolError)
    with pytest.raises(trio.BrokenResourceError):
        await client.receive_some()
    await client.aclose()


async def test_a_cancelled_send_breaks_the_stream_without_blaming_the_peer(
    pair_identities: tuple[Identity, Identity], autojump_clock: trio.testing.MockClock
) -> None:
    client, server = lockstep_secure_stream_pair(identities=pair_identities)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    with trio.move_on_after(1):  # the server reads nothing: the write stalls part-way
        await client.send_all(b"x" * 100_000)
    with pytest.raises(trio.BrokenResourceError) as info:
        await client.send_all(b"after")
    cause = info.value.__cause__
    assert isinstance(cause, StreamInterrupted) and not isinstance(cause, ProtocolError)
    await client.aclose()
    await server.aclose()
