"""Hostile inputs against the handshake, one numbered section per attack (items 1-11 below).

p2ptls authenticates by decryption, not by signatures: each side encrypts fresh key material to the
other's known RSA key and proves with a Finished MAC that it could derive the session keys. The
attacks a signature-based handshake stops "at the signature" therefore fail at a Finished MAC or
at the check that a peer id is the hash of its key; each test is named after the attack it mounts.

Item 2 as implemented: a responder answers every well-formed, on-time, non-replayed Hello with a
Reply of the genuine shape (a *substitute*, with a random Finished MAC, when the network key, the
OAEP ciphertext or the presented key is wrong), and every failure is then reported at one place,
the Finish, with one error. Zero bytes are sent only for malformed, stale or replayed Hellos.

Most tests drive the sans-IO :class:`~p2ptls._connection.Connection` directly (synchronous and
reproducible, see ``hostile_support``); items 2, 4, 9, 10 and 11 also run against a real host, and
each of those checks afterwards that a good peer is still served (the host's nursery survived).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import math
import os
import pathlib
import threading
import tracemalloc
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2ptls import (
    ConnectionConfig,
    ConnectionLost,
    DialBackoff,
    HandshakeFailed,
    HandshakeTimeout,
    Host,
    HostConfig,
    Identity,
    KnownPeers,
    PeerDatabaseError,
    PeerRefused,
    ProtocolError,
    RecordError,
    ReplayGuard,
    SecureStream,
    SecurityContext,
    StreamConfig,
    TruncatedError,
    _handshake,
    admit_network_members,
    open_host,
)
from p2ptls import _keyschedule as ks
from p2ptls import _wire as wire
from p2ptls._connection import Connection, Event, PrivateKeyOperationNeeded, State
from p2ptls.identity import PeerRecord, encrypt_to
from tests.host_harness import (
    adopt,
    assert_host_serves,
    good_client,
    read_record,
    receive_until_closed,
    serving_host,
    settle,
)
from tests.hostile_support import (
    CONFIG,
    LOOPBACK,
    NETWORK_KEY,
    OTHER_NETWORK_KEY,
    SAFETY_NET,
    TIMESTAMP_NS,
    DeterministicRandom,
    Flights,
    crafted_hello,
    decrypt,
    flip_bit,
    forged_finish,
    handshake,
    initiator_k,
    key_operation,
    make_initiator,
    make_responder,
    next_timestamp,
    parties,
    rebound_hello,
    reframed,
    reply_is_genuine,
)
from tests.raw_peer import RawPeer, raw_peer

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
FAR_FUTURE_NS = 2**64 - 1
LOW_ORDER_POINTS = [
    bytes(32),
    bytes([1]) + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ec" + "ff" * 30 + "7f"),  # p - 1
    bytes.fromhex("ed" + "ff" * 30 + "7f"),  # p
    bytes.fromhex("ee" + "ff" * 30 + "7f"),  # p + 1
]
# X25519 ignores the top bit, so each point has a second encoding.
LOW_ORDER_POINTS += [point[:31] + bytes([point[31] | 0x80]) for point in LOW_ORDER_POINTS]


def point_id(point: bytes) -> str:
    return point.hex()[:8] + "-" + point.hex()[-2:]


def responder_reply(responder: Connection, hello: bytes) -> bytes:
    """Feed ``hello`` to a fresh responder and return its Reply."""
    operation = key_operation(responder.receive_data_untrusted(hello))
    return responder.supply_decryption(decrypt(parties().responder, operation))


def initiator_finish(initiator: Connection, reply: bytes) -> bytes:
    operation = key_operation(initiator.receive_data_untrusted(reply))
    return initiator.supply_decryption(decrypt(parties().initiator, operation))


def forge_reply(hello: bytes, k_initiator: bytes, *, seed: bytes = b"mitm") -> bytes:
    """A man in the middle's Reply to ``hello``: its own X25519 key, its own ``k_R`` encrypted to
    the real initiator, and a Finished MAC keyed as if ``k_initiator`` were the Hello's ``k_I``.

    Everything in it is exactly what an honest responder would send, except that without the
    responder's private key the MITM cannot learn ``k_I`` from ``C_I`` and has to guess it.
    """
    cast = parties()
    rng = DeterministicRandom(seed)
    ephemeral = X25519PrivateKey.from_private_bytes(rng(32))
    parsed = wire.parse_hello_untrusted(hello[wire.HEADER_SIZE :])
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(parsed.ephemeral))
    secret = ks.handshake_secret(ks.early_secret(NETWORK_KEY.secret, k_initiator), shared)
    c_r = encrypt_to(cast.initiator.record, rng(32), _handshake.REPLY_OAEP_LABEL)
    prefix = _handshake._reply_prefix(ephemeral.public_key().public_bytes_raw(), len(c_r))
    sealed = AESGCM(ks.reply_key(secret)).encrypt(bytes(12), c_r, prefix)
    unfinished_record = prefix + sealed
    transcript = ks.transcript_hash(
        hello, unfinished_record, cast.initiator.peer_id.digest, cast.responder.peer_id.digest
    )
    finished = ks.mac(ks.expand_label(secret, "r finished", b"", ks.HASH_SIZE), transcript)
    return unfinished_record + finished


# -- 1. a man in the middle substitutes its own RSA key -------------------------------------------


def test_mitm_substituting_its_own_key_material_in_the_reply_fails_at_the_finished_mac() -> None:
    cast = parties()
    initiator = make_initiator()
    hello = initiator.start()
    # The MITM cannot open C_I (it is encrypted to the responder), so it guesses k_I.
    assert decrypt(cast.stranger, key_operation_for_hello(hello)) is None
    forged = forge_reply(hello, os.urandom(wire.RANDOM_SIZE))
    with pytest.raises(HandshakeFailed):
        initiator.receive_data_untrusted(forged)  # before any private-key work of the initiator
    assert initiator.state is State.FAILED
    assert initiator.remote is None and initiator.data_to_send() == b""


def test_mitm_reply_would_pass_only_with_k_initiator_which_needs_the_responder_key() -> None:
    """Control for the test above: the forged Reply is correct in every other respect."""
    cast = parties()
    initiator = make_initiator()
    hello = initiator.start()
    hello_secret = decrypt(cast.responder, key_operation_for_hello(hello))
    assert hello_secret is not None
    assert hello_secret[wire.ID_SIZE : wire.ID_SIZE + wire.RANDOM_SIZE] == initiator_k()
    operation = key_operation(initiator.receive_data_untrusted(forge_reply(hello, initiator_k())))
    finish = initiator.supply_decryption(decrypt(cast.initiator, operation))
    assert finish and initiator.state is State.ESTABLISHED


def key_operation_for_hello(hello: bytes) -> PrivateKeyOperationNeeded:
    """The private-key operation a responder is asked for on ``hello`` (binder valid)."""
    return key_operation(make_responder(seed=b"probe").receive_data_untrusted(hello))


@pytest.mark.parametrize("claimed", ["the victim's id", "its own id"])
def test_mitm_substituting_its_rsa_key_in_the_hello_fails_at_the_id_or_trust_check(
    claimed: str,
) -> None:
    """A network member sends a Hello carrying its own public key, claiming to be the initiator
    (the id is then not the hash of the key: a substitute Reply) or under its own id (not
    trusted: the Reply does not say so, but its Finish is refused)."""
    cast = parties()

    def claim_victim(record: PeerRecord, plaintext: bytes, label: bytes) -> bytes:
        return encrypt_to(record, cast.initiator.peer_id.digest + plaintext[wire.ID_SIZE :], label)

    mitm = make_initiator(
        identity=cast.stranger,
        seed=b"mitm hello",
        oaep_encrypt=claim_victim if claimed == "the victim's id" else encrypt_to,
    )
    guard = ReplayGuard()
    responder = make_responder(guard=guard)
    reply = responder_reply(responder, mitm.start())
    if claimed == "the victim's id":
        with pytest.raises(HandshakeFailed):
            mitm.receive_data_untrusted(reply)  # a substitute: its Finished MAC is random
        finish = forged_finish()
    else:
        # The MITM holds its own private key, so it can even send a correct Finish.
        operation = key_operation(mitm.receive_data_untrusted(reply))
        finish = mitm.supply_decryption(decrypt(cast.stranger, operation))
    with pytest.raises(HandshakeFailed):
        responder.receive_data_untrusted(finish)
    assert responder.state is State.FAILED and responder.remote is None
    assert guard.newest(cast.initiator.peer_id) is None
    assert guard.newest(cast.stranger.peer_id) is None


# -- 2. unknown id, wrong PSK and garbage OAEP look alike ------------------------------------------


def state_of(conn: Connection) -> State:
    """``conn.state``, without letting a type checker assume it cannot change."""
    return conn.state


def failures_reach(host: Host, count: int) -> bool:
    return host.handshake_failures == count


def hostile_hellos(timestamp_ns: int = TIMESTAMP_NS) -> dict[str, bytes]:
    cast = parties()
    garbage = DeterministicRandom(b"garbage oaep")(cast.responder.key_size // 8)
    garbled = make_initiator(seed=b"garbage", timestamp_ns=timestamp_ns).start()
    return {
        "unknown peer id": make_initiator(
            identity=cast.stranger, seed=b"stranger", timestamp_ns=timestamp_ns
        ).start(),
        "wrong network key": make_initiator(
            psk=OTHER_NETWORK_KEY, seed=b"outsider", timestamp_ns=timestamp_ns
        ).start(),
        "garbage OAEP": rebound_hello(garbled, NETWORK_KEY, sealed_secret=garbage),
        "addressed to another peer": make_initiator(
            responder=cast.other.record, seed=b"misdirected", timestamp_ns=timestamp_ns
        ).start(),
    }


def test_unknown_id_wrong_psk_and_garbage_oaep_fail_identically() -> None:
    cast = parties()
    genuine = handshake(make_initiator(), make_responder())
    outcomes: dict[str, tuple[type[BaseException], str]] = {}
    operations: dict[str, int] = {}
    for name, hello in hostile_hellos().items():
        guard = ReplayGuard()
        responder = make_responder(guard=guard)
        operations[name] = 0
        events: list[Event] = []
        # Byte by byte: the responder must not ask for a private-key operation early either.
        for index in range(len(hello)):
            events = responder.receive_data_untrusted(hello[index : index + 1])
            operations[name] += sum(isinstance(e, PrivateKeyOperationNeeded) for e in events)
        if events:
            reply = responder.supply_decryption(decrypt(cast.responder, key_operation(events)))
        else:
            reply = responder.data_to_send()
        # The answer is a Reply of the genuine shape: it tells nothing about which check failed.
        assert len(reply) == len(genuine.reply), name
        wire.parse_reply_untrusted(reply[wire.HEADER_SIZE :])
        with pytest.raises(ProtocolError) as info:
            responder.receive_data_untrusted(forged_finish())
        outcomes[name] = (type(info.value), str(info.value))
        assert responder.state is State.FAILED and responder.remote is None
        assert responder.data_to_send() == b""
        assert guard.newest(cast.initiator.peer_id) is None
    assert set(outcomes.values()) == {(HandshakeFailed, "handshake failed")}, outcomes
    # Without the network key the binder fails: no private-key work at all.
    assert operations["wrong network key"] == operations["addressed to another peer"] == 0
    assert operations["unknown peer id"] == operations["garbage OAEP"] == 1


@pytest.mark.parametrize("case", ["trusted", "untrusted", "stale timestamp"])
def test_a_network_member_cannot_probe_trust_or_freshness(case: str) -> None:
    """Holding the PSK, an attacker can make a Hello for any public key and check the
    responder's Finished itself; the Reply must verify whether or not that peer is trusted or
    its timestamp fresh, and the handshake then fails at the Finish in every case."""
    cast = parties()
    victim = cast.stranger if case == "untrusted" else cast.initiator
    guard = ReplayGuard()
    if case == "stale timestamp":
        guard.accept(victim.peer_id, TIMESTAMP_NS + 1)  # the victim connected more recently
    probe = make_initiator(identity=victim, seed=b"probe " + case.encode())
    responder = make_responder(guard=guard)
    reply = responder_reply(responder, probe.start())
    # The Finished verifies (a private-key operation is requested): no difference to see.
    key_operation(probe.receive_data_untrusted(reply))
    with pytest.raises(HandshakeFailed):
        responder.receive_data_untrusted(probe.supply_decryption(os.urandom(32)))


async def test_host_answers_unknown_id_wrong_psk_and_garbage_oaep_alike(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="p2ptls.host")
    async with serving_host() as harness:
        host = harness.host
        cost: dict[str, int] = {}
        reply_sizes: dict[str, int] = {}
        logged: dict[str, list[str]] = {}
        for name, hello in hostile_hellos(next_timestamp()).items():
            before = host.context.private_key_operations
            failures = host.handshake_failures
            caplog.clear()
            tcp = await trio.open_tcp_stream(*host.address)
            await tcp.send_all(hello)
            reply = await read_record(tcp)
            reply_sizes[name] = len(reply)
            await tcp.send_all(forged_finish())
            assert await receive_until_closed(tcp) == b"", name  # nothing after the Finish
            await tcp.aclose()
            await settle(functools.partial(failures_reach, host, failures + 1))
            cost[name] = host.context.private_key_operations - before
            logged[name] = [r.getMessage() for r in caplog.records if r.name == "p2ptls.host"]
        assert len(set(reply_sizes.values())) == 1 and 0 not in reply_sizes.values(), reply_sizes
        assert cost["wrong network key"] == cost["addressed to another peer"] == 0
        assert cost["unknown peer id"] == cost["garbage OAEP"] == 1
        expected = [f"handshake from {LOOPBACK} failed: handshake failed"]
        assert all(messages == expected for messages in logged.values()), logged
        await assert_host_serves(harness)


async def test_a_client_with_the_wrong_network_key_fails_generically_at_no_rsa_cost() -> None:
    async with serving_host() as harness:
        context = SecurityContext(
            parties().other, OTHER_NETWORK_KEY, KnownPeers([harness.server.record])
        )
        tcp = await trio.open_tcp_stream(*harness.host.address)
        stream = SecureStream(tcp, context, remote=harness.server.record)
        with pytest.raises(trio.BrokenResourceError) as info:
            await stream.do_handshake()
        assert isinstance(info.value.__cause__, HandshakeFailed)
        assert context.private_key_operations == 0  # the substitute Reply is refused before it
        await stream.aclose()
        await settle(functools.partial(failures_reach, harness.host, 1))
        assert harness.host.context.private_key_operations == 0
        await assert_host_serves(harness)


# -- 3. a stolen PSK with the wrong RSA key -------------------------------------------------------


def test_stolen_psk_impersonating_the_initiator_fails_at_the_initiator_finished_mac() -> None:
    cast = parties()
    guard = ReplayGuard()
    # The thief has the network key and the initiator's public record, not its private key.
    impostor = make_initiator(seed=b"thief")
    responder = make_responder(guard=guard)
    reply = responder_reply(responder, impostor.start())  # nothing is wrong so far
    operation = key_operation(impostor.receive_data_untrusted(reply))
    assert decrypt(cast.stranger, operation) is None
    forged = impostor.supply_decryption(os.urandom(wire.RANDOM_SIZE))  # a guessed k_R
    with pytest.raises(HandshakeFailed):
        responder.receive_data_untrusted(forged)
    assert responder.state is State.FAILED and responder.remote is None
    assert guard.newest(cast.initiator.peer_id) is None


def test_stolen_psk_impersonating_the_responder_fails_at_the_responder_finished_mac() -> None:
    cast = parties()
    initiator = make_initiator(seed=b"victim")
    # The thief answers with the responder's public record and the PSK, but its own private key:
    # it cannot open C_I, so all it can send is a Reply the initiator refuses.
    thief = make_responder()
    operation = key_operation(thief.receive_data_untrusted(initiator.start()))
    reply = thief.supply_decryption(decrypt(cast.stranger, operation))
    with pytest.raises(HandshakeFailed):
        initiator.receive_data_untrusted(reply)
    assert initiator.state is State.FAILED and initiator.remote is None


# -- 4. a replayed Hello --------------------------------------------------------------------------


def test_replayed_hello_costs_no_private_key_work_and_cannot_complete() -> None:
    """A copy of a Hello the responder already decrypted is answered from the remembered
    decryption (a Reply of the genuine shape, no RSA work); without ``k_R`` nobody can finish."""
    cast = parties()
    guard = ReplayGuard()
    flights = handshake(make_initiator(), make_responder(guard=guard))
    newest = guard.newest(cast.initiator.peer_id)
    assert newest == TIMESTAMP_NS
    target = make_responder(guard=guard, seed=b"replay target")
    assert target.receive_data_untrusted(flights.hello) == []  # no PrivateKeyOperationNeeded
    reply = target.data_to_send()
    assert len(reply) == len(flights.reply) and reply != flights.reply
    with pytest.raises(HandshakeFailed):
        target.receive_data_untrusted(flights.finish)  # the recorded Finish is for another Reply
    assert target.state is State.FAILED and target.farewell == b""
    assert guard.newest(cast.initiator.peer_id) == newest


def test_older_hello_with_a_fresh_binder_cannot_complete() -> None:
    cast = parties()
    guard = ReplayGuard()
    handshake(make_initiator(), make_responder(guard=guard))
    # Even the true initiator's own, correctly finished Hello never completes when it is older
    # than the reorder window allows (parallel connects may finish out of order within it).
    too_old = TIMESTAMP_NS - guard.reorder_window_ns
    older = make_initiator(timestamp_ns=too_old, seed=b"older")
    responder = make_responder(guard=guard, seed=b"older target")
    finish = initiator_finish(older, responder_reply(responder, older.start()))
    with pytest.raises(HandshakeFailed):
        responder.receive_data_untrusted(finish)
    assert guard.newest(cast.initiator.peer_id) == TIMESTAMP_NS
    # A genuinely new Hello from the same initiator still works.
    handshake(
        make_initiator(timestamp_ns=TIMESTAMP_NS + 1, seed=b"new"), make_responder(guard=guard)
    )
    assert guard.newest(cast.initiator.peer_id) == TIMESTAMP_NS + 1


def test_replayed_hello_is_refused_after_a_restart(tmp_path: pathlib.Path) -> None:
    """The binder memory is lost on restart; the persisted timestamp still refuses the replay."""
    cast = parties()
    state = tmp_path / "replay.json"
    guard = ReplayGuard(state)
    flights = handshake(make_initiator(), make_responder(guard=guard))
    guard.save()
    restarted = ReplayGuard(state)
    assert restarted.newest(cast.initiator.peer_id) == TIMESTAMP_NS
    responder = make_responder(guard=restarted, seed=b"after restart")
    reply = responder_reply(responder, flights.hello)
    assert len(reply) == len(flights.reply) and reply != flights.reply  # a new session
    with pytest.raises(HandshakeFailed):
        responder.receive_data_untrusted(flights.finish)  # even the recorded Finish
    assert restarted.newest(cast.initiator.peer_id) == TIMESTAMP_NS


def test_replayed_hello_on_the_same_connection_is_refused() -> None:
    initiator, responder = make_initiator(), make_responder()
    flights = handshake(initiator, responder)
    with pytest.raises(ProtocolError):
        responder.receive_data_untrusted(flights.hello)
    assert responder.state is State.FAILED


async def test_host_answers_a_replayed_hello_without_private_key_work() -> None:
    cast = parties()
    async with serving_host() as harness:
        host = harness.host
        peer = await raw_peer(harness)
        flights = peer.flights
        assert flights is not None
        await peer.echo(b"genuine")  # the host has verified the Finish
        newest = host.context.replay_guard.newest(cast.initiator.peer_id)
        assert newest is not None
        before = (host.handshake_failures, host.context.private_key_operations)
        tcp = await trio.open_tcp_stream(*host.address)
        await tcp.send_all(flights.hello)
        reply = await read_record(tcp)
        assert len(reply) == len(flights.reply) and reply != flights.reply
        await tcp.send_all(flights.finish)
        assert await receive_until_closed(tcp) == b""
        await tcp.aclose()
        await settle(lambda: host.handshake_failures == before[0] + 1)
        assert host.context.private_key_operations == before[1]
        assert host.context.replay_guard.newest(cast.initiator.peer_id) == newest
        await peer.echo(b"the genuine session is unaffected")
        await peer.aclose()
        await assert_host_serves(harness)


# -- 5. a far-future timestamp --------------------------------------------------------------------


def test_far_future_hello_without_a_valid_binder_gets_only_a_substitute() -> None:
    cast = parties()
    guard = ReplayGuard()
    outsider = make_initiator(psk=OTHER_NETWORK_KEY, timestamp_ns=FAR_FUTURE_NS, seed=b"future")
    # A genuine Hello whose clear timestamp was rewritten: the binder no longer matches.
    genuine = make_initiator(seed=b"rewritten").start()
    offset = wire.HEADER_SIZE + 2
    rewritten = genuine[:offset] + wire.TIMESTAMP.pack(FAR_FUTURE_NS) + genuine[offset + 8 :]
    for hello in (outsider.start(), rewritten):
        responder = make_responder(guard=guard)
        assert responder.receive_data_untrusted(hello) == []  # no private-key work
        assert len(responder.data_to_send()) > 0  # a substitute Reply
        with pytest.raises(HandshakeFailed):
            responder.receive_data_untrusted(forged_finish())
    assert guard.newest(cast.initiator.peer_id) is None
    # The real initiator is not locked out.
    handshake(make_initiator(), make_responder(guard=guard))
    assert guard.newest(cast.initiator.peer_id) == TIMESTAMP_NS


def test_far_future_hello_with_a_valid_binder_is_outside_the_window() -> None:
    guard = ReplayGuard()
    responder = make_responder(guard=guard)
    member = make_initiator(timestamp_ns=FAR_FUTURE_NS, seed=b"member future")
    with pytest.raises(HandshakeFailed):
        responder.receive_data_untrusted(member.start())  # no private-key work, no reply
    assert responder.data_to_send() == b""
    assert guard.newest(parties().initiator.peer_id) is None


def test_future_hello_from_a_network_member_cannot_lock_the_initiator_out() -> None:
    """With the PSK an attacker can bind a Hello for the victim stamped as far ahead as the
    guard allows, but cannot finish it: the stored timestamp does not move."""
    cast = parties()
    guard = ReplayGuard()
    late = TIMESTAMP_NS + guard.max_future_skew_ns // 2
    impostor = make_initiator(timestamp_ns=late, seed=b"future")
    responder = make_responder(guard=guard)
    reply = responder_reply(responder, impostor.start())
    operation = key_operation(impostor.receive_data_untrusted(reply))
    assert decrypt(cast.stranger, operation) is None  # its own key cannot open C_R
    with pytest.raises(HandshakeFailed):
        responder.receive_data_untrusted(impostor.supply_decryption(os.urandom(32)))
    assert guard.newest(cast.initiator.peer_id) is None
    handshake(make_initiator(), make_responder(guard=guard))
    assert guard.newest(cast.initiator.peer_id) == TIMESTAMP_NS


# -- 6. version, suite, and any single bit ---------------------------------------------------------


@pytest.mark.parametrize("flight", ["hello", "reply", "finish"])
@pytest.mark.parametrize("version", [0, wire.PROTOCOL_VERSION + 1, 255])
def test_changed_record_version_fails(flight: str, version: int) -> None:
    flights = handshake(make_initiator(), make_responder())
    record = getattr(flights, flight)
    receiver = receiver_for(flight)
    with pytest.raises(RecordError):
        receiver.receive_data_untrusted(record[:1] + bytes([version]) + record[2:])
    assert receiver.state is State.FAILED


@pytest.mark.parametrize("suite", [0, 2, 255])
def test_changed_suite_fails_even_with_a_valid_binder(suite: int) -> None:
    hello = rebound_hello(make_initiator().start(), NETWORK_KEY, suite=suite)
    responder = make_responder()
    with pytest.raises(HandshakeFailed):
        responder.receive_data_untrusted(hello)


@functools.cache
def genuine_flights() -> Flights:
    """The flights of the reproducible handshake (the same bytes every time)."""
    return handshake(make_initiator(), make_responder())


@PROPERTY
@given(data=st.data())
def test_any_single_bit_flipped_in_the_hello_fails_without_private_key_work(
    data: st.DataObject,
) -> None:
    flights = genuine_flights()
    bit = data.draw(st.integers(0, len(flights.hello) * 8 - 1), label="bit")
    responder = make_responder()
    events: list[Event] = []
    with pytest.raises(ProtocolError):
        events += responder.receive_data_untrusted(flip_bit(flights.hello, bit))
        substitute = responder.data_to_send()
        if substitute:  # the binder failed: a substitute Reply the initiator cannot use
            initiator = make_initiator()
            initiator.start()
            with pytest.raises(HandshakeFailed):
                initiator.receive_data_untrusted(substitute)
        # Not even the genuine Finish completes it.
        events += responder.receive_data_untrusted(flights.finish)
        responder.receive_eof()
    assert events == []
    assert responder.state is State.FAILED and responder.remote is None


@PROPERTY
@given(data=st.data())
def test_any_single_bit_flipped_in_the_reply_fails_without_private_key_work(
    data: st.DataObject,
) -> None:
    flights = genuine_flights()
    bit = data.draw(st.integers(0, len(flights.reply) * 8 - 1), label="bit")
    initiator = receiver_for("reply")
    events: list[Event] = []
    with pytest.raises(ProtocolError):
        events += initiator.receive_data_untrusted(flip_bit(flights.reply, bit))
        initiator.receive_eof()
    assert events == []
    assert initiator.state is State.FAILED and initiator.remote is None


@PROPERTY
@given(data=st.data())
def test_any_single_bit_flipped_in_the_finish_fails(data: st.DataObject) -> None:
    flights = genuine_flights()
    bit = data.draw(st.integers(0, len(flights.finish) * 8 - 1), label="bit")
    guard = ReplayGuard()
    responder = make_responder(guard=guard)
    assert responder_reply(responder, flights.hello) == flights.reply
    events: list[Event] = []
    with pytest.raises(ProtocolError):
        events += responder.receive_data_untrusted(flip_bit(flights.finish, bit))
        responder.receive_eof()
    assert events == []
    assert responder.remote is None
    assert guard.newest(parties().initiator.peer_id) is None


# -- 7. truncated flights, trailing bytes, huge lengths --------------------------------------------


def receiver_for(flight: str) -> Connection:
    """A connection waiting for ``flight`` of the reproducible handshake."""
    if flight == "reply":
        initiator = make_initiator()
        initiator.start()
        return initiator
    responder = make_responder()
    if flight == "finish":
        responder_reply(responder, make_initiator().start())
    return responder


@pytest.mark.parametrize("flight", ["hello", "reply", "finish"])
def test_every_truncated_flight_followed_by_eof_is_truncation(flight: str) -> None:
    record = getattr(handshake(make_initiator(), make_responder()), flight)
    for length in range(len(record)):
        receiver = receiver_for(flight)
        assert receiver.receive_data_untrusted(record[:length]) == []
        with pytest.raises(TruncatedError):
            receiver.receive_eof()
        assert receiver.state is State.FAILED


@pytest.mark.parametrize("flight", ["hello", "reply", "finish"])
def test_every_truncated_flight_body_with_a_matching_length_fails(flight: str) -> None:
    record = getattr(handshake(make_initiator(), make_responder()), flight)
    body = record[wire.HEADER_SIZE :]
    for length in range(len(body)):
        receiver = receiver_for(flight)
        expected: type[ProtocolError] = HandshakeFailed if length else RecordError
        with pytest.raises(expected):
            receiver.receive_data_untrusted(reframed(record, body[:length]))
        assert receiver.state is State.FAILED


@pytest.mark.parametrize("flight", ["hello", "reply", "finish"])
@pytest.mark.parametrize("extra", [b"\x00", bytes(32), b"\xff" * 300])
def test_trailing_bytes_inside_a_flight_fail(flight: str, extra: bytes) -> None:
    record = getattr(handshake(make_initiator(), make_responder()), flight)
    receiver = receiver_for(flight)
    with pytest.raises(HandshakeFailed):
        receiver.receive_data_untrusted(reframed(record, record[wire.HEADER_SIZE :] + extra))


def test_trailing_garbage_after_the_hello_fails_right_after_the_key_operation() -> None:
    responder = make_responder()
    events = responder.receive_data_untrusted(make_initiator().start() + b"\x00" * 10)
    responder.supply_decryption(decrypt(parties().responder, key_operation(events)))
    with pytest.raises(RecordError):
        responder.receive_data_untrusted(b"")


@pytest.mark.parametrize("flight", ["hello", "reply", "finish"])
@pytest.mark.parametrize("length", [0xFFFF, wire.MAX_CIPHERTEXT, wire.MAX_HANDSHAKE_BODY + 1])
def test_huge_length_field_closes_from_the_header_alone(flight: str, length: int) -> None:
    receiver = receiver_for(flight)
    tracemalloc.start()
    try:
        with pytest.raises(RecordError):
            receiver.receive_data_untrusted(wire.HEADER.pack(wire.HANDSHAKE, 1, length))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024  # far below the 64 KiB bodies announced; nothing was reserved
    assert receiver.state is State.FAILED


@pytest.mark.parametrize("side", ["initiator", "responder"])
def test_bytes_piling_up_during_the_private_key_operation_are_bounded(side: str) -> None:
    if side == "responder":
        conn = make_responder()
        key_operation(conn.receive_data_untrusted(make_initiator().start()))
    else:
        conn = make_initiator()
        key_operation(conn.receive_data_untrusted(responder_reply(make_responder(), conn.start())))
    assert state_of(conn) is State.KEY_OPERATION
    chunk = bytes(64 * 1024)
    fed = 0
    with pytest.raises(ProtocolError):
        while fed < 4 * 1024 * 1024:
            conn.receive_data_untrusted(chunk)
            fed += len(chunk)
    assert fed <= wire.HEADER_SIZE + wire.MAX_CIPHERTEXT + conn.config.receive_size
    assert conn.state is State.FAILED


# -- 8. X25519 low-order points -------------------------------------------------------------------


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=point_id)
def test_low_order_point_in_the_hello_is_the_generic_failure(
    point: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(_handshake, "_x25519_public_bytes", lambda _private: point)
        hello = make_initiator().start()  # consistent: the sealed key and binder cover the point
    assert wire.parse_hello_untrusted(hello[wire.HEADER_SIZE :]).ephemeral == point
    guard = ReplayGuard()
    responder = make_responder(guard=guard)
    reply = responder_reply(responder, hello)
    assert len(reply) == len(genuine_flights().reply)  # a substitute of the genuine shape
    with pytest.raises(HandshakeFailed) as info:
        responder.receive_data_untrusted(forged_finish())
    assert str(info.value) == "handshake failed"
    assert responder.remote is None and guard.newest(parties().initiator.peer_id) is None


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=point_id)
def test_low_order_point_in_the_reply_is_the_generic_failure(
    point: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    initiator, responder = make_initiator(), make_responder()
    hello = initiator.start()
    with monkeypatch.context() as patch:
        patch.setattr(_handshake, "_x25519_public_bytes", lambda _private: point)
        reply = responder_reply(responder, hello)
    with pytest.raises(HandshakeFailed) as info:
        initiator.receive_data_untrusted(reply)  # before the initiator's private-key work
    assert str(info.value) == "handshake failed"
    assert initiator.state is State.FAILED


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=point_id)
def test_low_order_points_are_refused_by_the_exchange(point: bytes) -> None:
    private = X25519PrivateKey.from_private_bytes(DeterministicRandom(b"x25519")(32))
    assert _handshake._x25519_shared_or_none(private, point) is None


# -- 9. slow handshakes and the per-source bound ---------------------------------------------------


@pytest.mark.parametrize("pace", ["silent", "one byte every 3 s"])
async def test_slow_handshake_hits_the_total_deadline(
    pace: str, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="p2ptls.host")
    deadline = 10.0
    # No first-flight deadline: this test is about the total one (the first flight has its own).
    config = StreamConfig(handshake_timeout=deadline)
    async with serving_host(config=config, first_flight_timeout=None) as harness:
        hello = make_initiator().start()
        tcp = await trio.open_tcp_stream(*harness.host.address)
        start = trio.current_time()

        async def dribble() -> None:
            if pace == "silent":
                return
            for byte in hello:
                await tcp.send_all(bytes([byte]))
                await trio.sleep(3)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(dribble)
            assert await receive_until_closed(tcp) == b""
            elapsed = trio.current_time() - start
            nursery.cancel_scope.cancel()
        await tcp.aclose()
        assert deadline <= elapsed < deadline + 3  # virtual time: the deadline, not a byte later
        assert harness.host.handshake_failures == 1
        assert harness.host.context.private_key_operations == 0
        assert any("handshake deadline passed" in r.getMessage() for r in caplog.records)
        # Stop the clock: the good handshake's worker thread must not look like idleness.
        autojump_clock.autojump_threshold = math.inf
        await assert_host_serves(harness)


async def test_a_silent_responder_hits_the_initiators_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The handshake's deadline ends a dial to a silent responder (the dial's own, longer,
    deadline does not come into it); the peer then backs off, and a dial after the back-off
    reaches the genuine responder."""
    config = StreamConfig(handshake_timeout=10.0)
    async with serving_host(config=config) as harness, trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
        silent_address = listeners[0].socket.getsockname()[:2]
        held: list[trio.SocketStream] = []

        async def accept_and_say_nothing() -> None:
            held.append(await listeners[0].accept())

        nursery.start_soon(accept_and_say_nothing)
        client_config = HostConfig(
            identity=parties().other,
            psk=NETWORK_KEY,
            stream=config,
            connections=ConnectionConfig(dial_timeout=20.0),
        )
        async with open_host(client_config) as client:
            start = trio.current_time()
            with pytest.raises(trio.BrokenResourceError) as info:
                await client.connect(harness.server.record, address=silent_address)
            elapsed = trio.current_time() - start
            assert isinstance(info.value.__cause__, HandshakeTimeout)
            assert 10.0 <= elapsed < 11.0
            with pytest.raises(DialBackoff) as backing_off:
                await client.connect(harness.server.record, address=harness.host.address)
            await trio.sleep(backing_off.value.retry_after)  # virtual time
            # Stop the clock for the real handshakes (their RSA runs on worker threads).
            autojump_clock.autojump_threshold = math.inf
            stream = await client.connect(harness.server.record, address=harness.host.address)
            await stream.send_message(b"the client host is fine")
            assert await stream.receive_message() == b"the client host is fine"
        for tcp in held:
            await tcp.aclose()
        await listeners[0].aclose()
        await assert_host_serves(harness)


async def test_handshakes_in_progress_per_source_are_bounded() -> None:
    bound = 3
    async with serving_host(max_pending_per_address=bound) as harness:
        host = harness.host

        def pending_from_loopback() -> int:
            return host._pending.count(LOOPBACK)

        silent = [await trio.open_tcp_stream(*host.address) for _ in range(bound)]
        await settle(lambda: pending_from_loopback() == bound)
        newest = await trio.open_tcp_stream(*host.address)
        # The source's own oldest handshake makes room; the newcomer is not refused.
        assert await receive_until_closed(silent[0]) == b""
        await settle(lambda: host.handshakes_evicted == 1)
        assert host.handshake_failures == 1
        assert pending_from_loopback() == bound
        # Another source is not affected while this one is saturated.
        await assert_host_serves(harness, local_address="127.0.0.2")
        assert pending_from_loopback() == bound
        for tcp in [*silent, newest]:
            await tcp.aclose()
        await settle(lambda: pending_from_loopback() == 0)
        await assert_host_serves(harness)


# -- 10. a handshake flood ------------------------------------------------------------------------


class GatedDecryption:
    """Wraps an identity's private-key operation: counts it, records its thread, and holds it
    until the gate opens, so the test sees a flood in progress without timing anything."""

    def __init__(self, identity: Identity) -> None:
        self._inner: Callable[[bytes, bytes], bytes | None] = identity.decrypt_untrusted
        self._lock = threading.Lock()
        self.gate = threading.Event()
        self.active = 0
        self.most_active = 0
        self.calls = 0
        self.threads: set[int] = set()

    def __call__(self, ciphertext: bytes, label: bytes) -> bytes | None:
        with self._lock:
            self.calls += 1
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            self.threads.add(threading.get_ident())
        try:
            self.gate.wait(timeout=30)
            return self._inner(ciphertext, label)
        finally:
            with self._lock:
                self.active -= 1


async def test_handshake_flood_is_bounded_runs_off_the_loop_and_streams_keep_flowing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sources = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    # Each source fills its share exactly (what a newer connection evicts is tested in
    # tests/test_host_flood.py): every Hello is taken and costs one RSA operation.
    per_source, bound = 4, 4
    async with serving_host(max_pending_per_address=bound) as harness:
        host = harness.host
        established = await good_client(harness)
        gated = GatedDecryption(harness.server)
        monkeypatch.setattr(harness.server, "decrypt_untrusted", gated)
        # A network member that nobody trusts: each Hello passes the binder and the replay check
        # (each is new) and costs an RSA operation.
        flood_hellos = [
            make_initiator(
                identity=parties().stranger, seed=b"flood %d" % index, timestamp_ns=next_timestamp()
            ).start()
            for index in range(per_source * len(sources))
        ]
        replies: list[bytes] = []
        operations_before = host.context.private_key_operations
        try:
            async with trio.open_nursery() as nursery:

                async def flood(source: str, hello: bytes) -> None:
                    tcp = await trio.open_tcp_stream(*host.address, local_address=source)
                    await tcp.send_all(hello)
                    replies.append(await read_record(tcp))  # then give up
                    await tcp.aclose()

                for index, hello in enumerate(flood_hellos):
                    nursery.start_soon(flood, sources[index % len(sources)], hello)
                refused = (per_source - bound) * len(sources)
                limiter = host.context.key_limiter
                await settle(
                    lambda: (
                        host.handshake_failures == refused
                        and host.pending_handshakes == bound * len(sources)
                        and gated.active == limiter.total_tokens
                        and limiter.statistics().tasks_waiting > 0
                    )
                )
                # Every worker is busy and more handshakes are queued: the loop still serves.
                for index in range(20):
                    message = b"flowing %d" % index
                    await established.send_message(message)
                    assert await established.receive_message() == message
                gated.gate.set()
        finally:
            gated.gate.set()
        accepted = bound * len(sources)
        refused_count = (per_source - bound) * len(sources)
        assert (
            sorted(map(len, replies))
            == [0] * refused_count + [len(genuine_flights().reply)] * accepted
        )  # refused at once, or a substitute Reply
        await settle(lambda: host.handshake_failures == per_source * len(sources))
        assert host.context.private_key_operations - operations_before == accepted
        assert gated.calls == accepted
        assert gated.most_active <= host.context.key_limiter.total_tokens
        assert threading.get_ident() not in gated.threads  # off the event loop
        await established.send_message(b"after the flood")
        assert await established.receive_message() == b"after the flood"
        await established.aclose()
        await assert_host_serves(harness)


# -- 11. flights out of order ---------------------------------------------------------------------


def test_application_data_before_finish_is_refused() -> None:
    cast = parties()
    guard = ReplayGuard()
    initiator, responder = make_initiator(), make_responder(guard=guard)
    finish = initiator_finish(initiator, responder_reply(responder, initiator.start()))
    early = initiator.send_data(b"early data")  # properly sealed, but ahead of the Finish
    with pytest.raises(HandshakeFailed):
        responder.receive_data_untrusted(early + finish)
    assert responder.state is State.FAILED and responder.remote is None
    assert guard.newest(cast.initiator.peer_id) is None


def protected_garbage() -> bytes:
    return wire.encode_header(wire.DATA, 40) + bytes(40)


def scenario_conn(name: str) -> tuple[Connection, bytes, type[ProtocolError]]:
    """``(connection, bytes it receives, error expected)`` for each out-of-order flight."""
    flights = handshake(make_initiator(), make_responder())
    if name == "data before the hello":
        return make_responder(), protected_garbage(), HandshakeFailed
    if name == "data before the reply":
        initiator = make_initiator()
        initiator.start()
        return initiator, protected_garbage(), HandshakeFailed
    if name == "data between reply and finish":
        return receiver_for("finish"), protected_garbage(), HandshakeFailed
    if name == "finish before the hello":
        return make_responder(), flights.finish, HandshakeFailed
    if name == "second hello before the finish":
        return receiver_for("finish"), flights.hello, HandshakeFailed
    if name == "reply sent to the responder":
        return make_responder(), flights.reply, HandshakeFailed
    if name == "hello sent to the initiator":
        return receiver_for("reply"), flights.hello, HandshakeFailed
    initiator, responder = make_initiator(), make_responder()
    handshake(initiator, responder)
    if name == "second finish":
        return responder, flights.finish, ProtocolError
    if name == "hello on an established responder":
        return responder, flights.hello, ProtocolError
    if name == "hello on an established initiator":
        return initiator, flights.hello, ProtocolError
    assert name == "second reply"
    return initiator, flights.reply, ProtocolError


@pytest.mark.parametrize(
    "name",
    [
        "data before the hello",
        "data before the reply",
        "data between reply and finish",
        "finish before the hello",
        "second hello before the finish",
        "reply sent to the responder",
        "hello sent to the initiator",
        "second finish",
        "hello on an established responder",
        "hello on an established initiator",
        "second reply",
    ],
)
def test_out_of_order_flights_close_the_connection(name: str) -> None:
    conn, data, expected = scenario_conn(name)
    with pytest.raises(expected):
        conn.receive_data_untrusted(data)
    assert conn.state is State.FAILED
    with pytest.raises(ProtocolError):
        conn.receive_data_untrusted(b"")  # a failed connection stays failed


async def test_host_refuses_application_data_before_finish() -> None:
    async with serving_host() as harness:
        host = harness.host
        peer = await RawPeer.connect(host)
        await peer.send(peer.conn.start())
        reply = b""
        events: list[Event] = []
        while not events:
            data = await peer.tcp.receive_some()
            assert data
            reply += data
            events = peer.conn.receive_data_untrusted(data)
        plaintext = decrypt(peer.identity, key_operation(events))
        finish = peer.conn.supply_decryption(plaintext)
        await peer.send(peer.conn.send_data(b"early") + finish)
        assert await receive_until_closed(peer.tcp) == b""
        await peer.aclose()
        await settle(lambda: host.handshake_failures == 1)
        assert harness.received == [] and harness.failures == []
        await assert_host_serves(harness)


@pytest.mark.parametrize("flight", ["hello", "reply", "finish"])
async def test_host_closes_a_stream_that_sends_a_handshake_flight_after_the_handshake(
    flight: str,
) -> None:
    async with serving_host() as harness:
        peer = await raw_peer(harness)
        await peer.echo(b"established")
        await peer.send(getattr(peer.flights, flight))
        failure = await harness.next_failure()
        assert isinstance(failure, ConnectionLost)
        assert isinstance(failure.__cause__, ProtocolError)
        await peer.aclose()
        await assert_host_serves(harness)


def test_parallel_handshakes_may_finish_out_of_order_but_each_timestamp_once() -> None:
    """Several connections opened at once may complete in any order: a slightly older timestamp
    is accepted once, and the same timestamp never twice."""
    cast = parties()
    guard = ReplayGuard()
    handshake(make_initiator(timestamp_ns=TIMESTAMP_NS + 5), make_responder(guard=guard))
    handshake(
        make_initiator(timestamp_ns=TIMESTAMP_NS + 3, seed=b"slower"),
        make_responder(guard=guard, seed=b"slower target"),
    )
    assert guard.newest(cast.initiator.peer_id) == TIMESTAMP_NS + 5
    again = make_initiator(timestamp_ns=TIMESTAMP_NS + 3, seed=b"same timestamp")
    responder = make_responder(guard=guard, seed=b"same target")
    finish = initiator_finish(again, responder_reply(responder, again.start()))
    with pytest.raises(HandshakeFailed):
        responder.receive_data_untrusted(finish)


def test_an_authenticated_but_untrusted_initiator_gets_a_sealed_refusal() -> None:
    """The true holder of an untrusted key learns it was refused, from a CLOSE sealed under keys
    only it can derive; a forger (who cannot produce the Finish) never gets one."""
    cast = parties()
    initiator = make_initiator()
    responder = make_responder(trusted=[cast.other.record])
    finish = initiator_finish(initiator, responder_reply(responder, initiator.start()))
    with pytest.raises(HandshakeFailed):
        responder.receive_data_untrusted(finish)
    assert responder.farewell
    with pytest.raises(PeerRefused):
        initiator.receive_data_untrusted(responder.farewell)
    # Without the genuine Finish there is no refusal to send.
    forger = make_responder(trusted=[cast.other.record], seed=b"forged finish")
    responder_reply(forger, make_initiator(seed=b"forger").start())
    with pytest.raises(HandshakeFailed):
        forger.receive_data_untrusted(finish)
    assert forger.farewell == b""


# -- protocol review: responder binding, replay racing, identity leaks, key encodings -------------


def test_a_hello_made_for_another_responder_fails_at_the_binder_before_any_rsa_work() -> None:
    """The binder key is derived from the network key and the responder's full id: a Hello is
    valid only at the responder it was made for. This fails if the responder-binding check is
    removed (a binder keyed by the network key alone)."""
    cast = parties()
    genuine = make_initiator(seed=b"bound").start()
    for_other = rebound_hello(genuine, NETWORK_KEY, responder=cast.other.record)
    for_us = rebound_hello(genuine, NETWORK_KEY, responder=cast.responder.record)
    assert for_us == genuine  # control: the same re-binding for our own id is the genuine Hello
    guard = ReplayGuard()
    responder = make_responder(guard=guard)
    assert responder.receive_data_untrusted(for_other) == []  # no PrivateKeyOperationNeeded
    substitute = responder.data_to_send()
    assert len(substitute) == len(genuine_flights().reply)
    with pytest.raises(HandshakeFailed):
        responder.receive_data_untrusted(forged_finish())
    # Not remembered either: the genuine Hello then costs its one RSA operation and completes.
    target = make_responder(guard=guard, seed=b"bound target")
    key_operation(target.receive_data_untrusted(for_us))


async def test_a_hello_captured_towards_one_member_costs_another_no_private_key_operation() -> None:
    """Cross-responder replay: an eavesdropper copies a genuine Hello sent to member A and
    replays it to member B (same network key). B does no RSA work and answers a substitute."""
    cast = parties()
    async with serving_host() as harness:
        peer = await raw_peer(harness)  # the genuine initiator talking to A
        flights = peer.flights
        assert flights is not None
        b_config = HostConfig(
            identity=cast.other,
            psk=NETWORK_KEY,
            peers=(cast.initiator.record,),
            listen=(LOOPBACK, 0),
            stream=harness.config,
        )
        async with open_host(b_config) as member_b:
            tcp = await trio.open_tcp_stream(*member_b.address)
            await tcp.send_all(flights.hello)
            reply = await read_record(tcp)
            assert len(reply) == len(flights.reply)  # a substitute of the genuine shape
            await tcp.send_all(forged_finish())
            assert await receive_until_closed(tcp) == b""
            await tcp.aclose()
            await settle(lambda: member_b.handshake_failures == 1)
            assert member_b.context.private_key_operations == 0
        await peer.echo(b"the session with A is unaffected")
        await peer.aclose()
        await assert_host_serves(harness)


def test_a_copy_raced_in_ahead_of_the_genuine_hello_does_not_make_it_fail() -> None:
    """An attacker who sees a Hello injects a copy on a connection of its own ahead of it.

    Before: the copy filled the binder cache and the genuine Hello was refused with no reply; the
    initiator's retry (a new Hello, a new timestamp and binder) could be raced the same way, every
    time. Now a copy is answered from the remembered decryption (no second RSA operation) and
    only the genuine initiator can finish. Both orders of the RSA work are covered: the copy's
    decryption done before the genuine Hello arrives, and still pending when it arrives."""
    cast = parties()
    for pending in (False, True):
        guard = ReplayGuard()
        initiator = make_initiator(seed=b"raced %d" % pending)
        hello = initiator.start()
        attacker_side = make_responder(guard=guard, seed=b"attacker's connection")
        copy_operation = key_operation(attacker_side.receive_data_untrusted(hello))
        if not pending:
            attacker_side.supply_decryption(decrypt(cast.responder, copy_operation))
        genuine_side = make_responder(guard=guard, seed=b"genuine connection")
        events = genuine_side.receive_data_untrusted(hello)
        if pending:  # the I/O layer runs one decryption for both (SecurityContext.decrypt_once)
            reply = genuine_side.supply_decryption(decrypt(cast.responder, key_operation(events)))
            attacker_side.supply_decryption(decrypt(cast.responder, copy_operation))
        else:
            assert events == []  # answered from the remembered decryption
            reply = genuine_side.data_to_send()
        finish = initiator_finish(initiator, reply)
        done = genuine_side.receive_data_untrusted(finish)
        assert [type(event).__name__ for event in done] == ["HandshakeComplete"]
        assert genuine_side.remote == cast.initiator.record
        with pytest.raises(HandshakeFailed):
            attacker_side.receive_data_untrusted(forged_finish())


class CountingDecryption:
    """Wraps an identity's private-key operation: counts calls and holds each one until the gate
    opens, so a test can make a second request arrive while the first is in flight."""

    def __init__(self, identity: Identity) -> None:
        self._inner: Callable[[bytes, bytes], bytes | None] = identity.decrypt_untrusted
        self.gate = threading.Event()
        self.calls = 0
        self.started = threading.Event()

    def __call__(self, ciphertext: bytes, label: bytes) -> bytes | None:
        self.calls += 1
        self.started.set()
        self.gate.wait(timeout=30)
        return self._inner(ciphertext, label)


class RacingTransport(trio.abc.Stream):
    """The genuine initiator's transport, watched by an attacker: the attacker copies the Hello
    onto a connection of its own and sends it first (then ``before_genuine`` runs); the genuine
    Hello follows (then ``after_genuine`` runs)."""

    def __init__(
        self,
        genuine: trio.SocketStream,
        attacker: trio.SocketStream,
        before_genuine: Callable[[], Awaitable[None]],
        after_genuine: Callable[[], Awaitable[None]],
    ) -> None:
        self.genuine = genuine
        self.attacker = attacker
        self.before_genuine = before_genuine
        self.after_genuine = after_genuine
        self.raced = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.raced:
            await self.genuine.send_all(data)
            return
        self.raced = True
        await self.attacker.send_all(data)
        await self.before_genuine()
        await self.genuine.send_all(data)
        await self.after_genuine()

    async def wait_send_all_might_not_block(self) -> None:
        await self.genuine.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.genuine.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.genuine.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.genuine.aclose()
        await self.attacker.aclose()


@pytest.mark.parametrize("race", ["copy answered first", "copy still decrypting"])
async def test_host_serves_the_genuine_initiator_when_a_copy_of_its_hello_races_ahead(
    race: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cast = parties()
    async with serving_host() as harness:
        counting = CountingDecryption(harness.server)
        monkeypatch.setattr(harness.server, "decrypt_untrusted", counting)
        attacker = await trio.open_tcp_stream(*harness.host.address)
        attacker_reply: list[bytes] = []

        async def before_genuine() -> None:
            if race == "copy answered first":
                counting.gate.set()
                attacker_reply.append(await read_record(attacker))
            else:  # the copy's decryption has started and is held at the gate
                await settle(counting.started.is_set)

        async def after_genuine() -> None:
            # Loopback delivers at once: once every task waits, the host has taken the genuine
            # Hello and waits for the decryption in flight. Only then may it finish.
            await trio.testing.wait_all_tasks_blocked()
            counting.gate.set()

        context = SecurityContext(
            cast.initiator, NETWORK_KEY, KnownPeers([harness.server.record]), config=harness.config
        )
        genuine_tcp = await trio.open_tcp_stream(*harness.host.address)
        transport = RacingTransport(genuine_tcp, attacker, before_genuine, after_genuine)
        secure = SecureStream(transport, context, remote=harness.server.record, messages=False)
        with trio.fail_after(SAFETY_NET):
            await secure.do_handshake()
        stream = await adopt(harness, secure)
        await stream.send_message(b"the genuine initiator got through")
        assert await stream.receive_message() == b"the genuine initiator got through"
        assert counting.calls == 1  # one RSA decryption for the copy and the original together
        if race == "copy answered first":
            assert len(attacker_reply[0]) == len(genuine_flights().reply)
        await stream.aclose()
        await assert_host_serves(harness)


def test_the_clear_flights_name_neither_party_nor_the_precise_clock() -> None:
    """Nothing an observer sees names the responder or the initiator, and the clock shows only
    whole seconds (the precise timestamp travels inside C_I)."""
    cast = parties()
    precise = TIMESTAMP_NS + 123_456_789
    initiator = make_initiator(timestamp_ns=precise, seed=b"observed")
    responder = make_responder(seed=b"observed responder")
    flights = handshake(initiator, responder)
    seen = flights.hello + flights.reply + flights.finish
    for party in (cast.initiator, cast.responder):
        for start in range(0, 32 - 4 + 1, 4):
            assert party.peer_id.digest[start : start + 4] not in seen
    hello = wire.parse_hello_untrusted(flights.hello[wire.HEADER_SIZE :])
    assert hello.timestamp_s == precise // 10**9
    assert wire.TIMESTAMP.pack(precise) not in seen
    assert responder.remote == cast.initiator.record


def test_the_reply_does_not_show_to_which_key_c_r_was_encrypted() -> None:
    """RSA-OAEP does not hide its recipient (a ciphertext is below its modulus), so the Reply
    carries C_R sealed under a key from the handshake secret: what travels is 16 bytes longer than
    the modulus, and no key, not even the true recipient's, opens it as an OAEP ciphertext."""
    cast = parties()
    flights = genuine_flights()
    sealed = wire.parse_reply_untrusted(flights.reply[wire.HEADER_SIZE :]).sealed_secret
    modulus_bytes = cast.initiator.key_size // 8
    assert len(sealed) == modulus_bytes + wire.TAG_SIZE
    for offset in range(wire.TAG_SIZE + 1):
        window = sealed[offset : offset + modulus_bytes]
        assert cast.initiator.decrypt_untrusted(window, _handshake.REPLY_OAEP_LABEL) is None


def test_a_rewritten_clear_timestamp_gives_a_substitute() -> None:
    """A network member re-binds a captured Hello with another whole-second timestamp (to move it
    into the window): the precise timestamp inside C_I disagrees, so the Reply is a substitute."""
    cast = parties()
    seed = b"clock rewritten"
    hello = make_initiator(seed=seed).start()
    parsed = wire.parse_hello_untrusted(hello[wire.HEADER_SIZE :])
    for shift in (-1, 1):
        moved = rebound_hello(hello, NETWORK_KEY, timestamp_s=parsed.timestamp_s + shift)
        responder = make_responder(now_ns=TIMESTAMP_NS)
        reply = responder_reply(responder, moved)
        assert len(reply) == len(genuine_flights().reply)
        assert not reply_is_genuine(
            moved, reply, claimed_id=cast.initiator.peer_id.digest, seed=seed
        )
    control = make_responder(seed=b"control")
    assert reply_is_genuine(
        hello, responder_reply(control, hello), claimed_id=cast.initiator.peer_id.digest, seed=seed
    )


def spki_der(public_key: rsa.RSAPublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def pkcs1_der(public_key: rsa.RSAPublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)


def with_exponent(identity: Identity, exponent: int) -> bytes:
    """The SPKI DER of the RSA public key with ``identity``'s modulus and ``exponent``."""
    modulus = identity.record.public_key.public_numbers().n
    return spki_der(rsa.RSAPublicNumbers(exponent, modulus).public_key())


def test_one_key_has_one_id_the_pkcs1_encoding_is_refused_everywhere() -> None:
    """A PKCS#1 DER and the SPKI DER of one key would hash to two peer ids."""
    cast = parties()
    key = cast.initiator.record.public_key
    pkcs1 = pkcs1_der(key)
    parsed = serialization.load_der_public_key(pkcs1)  # the parser itself accepts it
    assert isinstance(parsed, rsa.RSAPublicKey)
    assert parsed.public_numbers() == key.public_numbers()
    with pytest.raises(ValueError):
        PeerRecord.from_public_key(pkcs1)
    entry = cast.initiator.record.to_dict()
    entry["public_key"] = base64.b64encode(pkcs1).decode()
    entry["peer_id"] = hashlib.sha256(pkcs1).hexdigest()
    with pytest.raises(PeerDatabaseError):
        PeerRecord.from_dict(entry)  # a peers file
    # On the wire, presented to a responder that admits every network member: refused from the
    # Hello's length alone (no canonical key has it), with no RSA work and no reply.
    claimed = hashlib.sha256(pkcs1).digest()
    responder = make_responder()
    with pytest.raises(HandshakeFailed):
        responder.receive_data_untrusted(crafted_hello(pkcs1, claimed))
    assert responder.data_to_send() == b""


@pytest.mark.parametrize("exponent", [3, 65539])
def test_an_rsa_exponent_other_than_65537_is_refused(exponent: int) -> None:
    cast = parties()
    der = with_exponent(cast.initiator, exponent)
    with pytest.raises(ValueError):
        PeerRecord.from_public_key(der)
    if len(der) != len(cast.initiator.record.public_key_der):
        return  # e = 3 is shorter: no Hello can carry it (see the PKCS#1 test)
    # e = 65539 has the canonical length: a responder admitting every network member must still
    # treat it as unsound. Its author can check the Reply: a substitute, not a genuine one.
    claimed = hashlib.sha256(der).digest()
    hello = crafted_hello(der, claimed, seed=b"odd exponent")
    responder = Connection.responder(
        CONFIG,
        cast.responder,
        NETWORK_KEY,
        KnownPeers(admission=admit_network_members),
        ReplayGuard(),
        now_ns=TIMESTAMP_NS,
        randomness=DeterministicRandom(b"odd exponent responder"),
    )
    reply = responder_reply(responder, hello)
    assert len(reply) == len(genuine_flights().reply)
    assert not reply_is_genuine(hello, reply, claimed_id=claimed, seed=b"odd exponent")
    # Control: the same Hello with the genuine key is accepted (the author sees a genuine Reply).
    own = cast.initiator.record.public_key_der
    good = crafted_hello(own, cast.initiator.peer_id.digest, seed=b"odd exponent")
    control = Connection.responder(
        CONFIG,
        cast.responder,
        NETWORK_KEY,
        KnownPeers(admission=admit_network_members),
        ReplayGuard(),
        now_ns=TIMESTAMP_NS,
    )
    good_reply = responder_reply(control, good)
    assert reply_is_genuine(
        good, good_reply, claimed_id=cast.initiator.peer_id.digest, seed=b"odd exponent"
    )


@functools.cache
def large_initiator() -> Identity:
    """An RSA-3072 initiator, so that its Replies differ in size from the 2048-bit responder's."""
    return Identity.generate(3072)


def substitute_cases(initiator: Identity) -> dict[str, bytes]:
    """Hellos from ``initiator`` that each fail one soundness check."""
    cast = parties()
    own = initiator.record.public_key_der
    genuine = make_initiator(identity=initiator, seed=b"sized").start()
    garbage = DeterministicRandom(b"sized garbage")(cast.responder.key_size // 8)
    return {
        "wrong network key": make_initiator(
            identity=initiator, psk=OTHER_NETWORK_KEY, seed=b"sized"
        ).start(),
        "made for another responder": make_initiator(
            identity=initiator, responder=cast.other.record, seed=b"sized"
        ).start(),
        "garbage OAEP": rebound_hello(genuine, NETWORK_KEY, sealed_secret=garbage),
        "id is not the hash of the key": crafted_hello(own, bytes(32), seed=b"sized id"),
        "sealed key does not open": rebound_hello(
            genuine,
            NETWORK_KEY,
            sealed_public_key=flip_bit(
                wire.parse_hello_untrusted(genuine[wire.HEADER_SIZE :]).sealed_public_key, 3
            ),
        ),
    }


@pytest.mark.parametrize("bits", [2048, 3072])
def test_every_substitute_reply_has_the_genuine_length_for_that_initiator(bits: int) -> None:
    cast = parties()
    initiator = cast.initiator if bits == 2048 else large_initiator()
    trusted = [initiator.record, cast.other.record]
    genuine_reply = responder_reply(
        make_responder(trusted=trusted), make_initiator(identity=initiator, seed=b"sized").start()
    )
    assert len(genuine_reply) == 4 + 1 + 32 + 2 + bits // 8 + wire.TAG_SIZE + 32
    for name, hello in substitute_cases(initiator).items():
        responder = make_responder(trusted=trusted, seed=b"substitute")
        events = responder.receive_data_untrusted(hello)
        if events:
            reply = responder.supply_decryption(decrypt(cast.responder, key_operation(events)))
        else:
            reply = responder.data_to_send()
        assert len(reply) == len(genuine_reply), name
        assert reply[: wire.HEADER_SIZE + 1] == genuine_reply[: wire.HEADER_SIZE + 1], name
        parsed = wire.parse_reply_untrusted(reply[wire.HEADER_SIZE :])
        assert reply[37:39] == genuine_reply[37:39], name  # the sealed C_R's length field
        assert len(parsed.sealed_secret) == bits // 8 + wire.TAG_SIZE, name
        # Drawn from the injected randomness only: the same seed gives the same substitute.
        again = make_responder(trusted=trusted, seed=b"substitute")
        events = again.receive_data_untrusted(hello)
        if events:
            repeat = again.supply_decryption(decrypt(cast.responder, key_operation(events)))
        else:
            repeat = again.data_to_send()
        assert repeat == reply, name
        with pytest.raises(HandshakeFailed):
            responder.receive_data_untrusted(forged_finish())
