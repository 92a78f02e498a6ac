"""Hostile inputs against the handshake, one numbered section per attack (items 1-5 here; 6-8 and
11 in ``test_hostile_handshake_flights.py``, 9-10 in ``test_hostile_handshake_load.py``, the
protocol review's findings in ``test_hostile_handshake_review.py``).

p2ptls authenticates by decryption, not by signatures: each side encrypts fresh key material to the
other's known RSA key and proves with a Finished MAC that it could derive the session keys. The
attacks a signature-based handshake stops "at the signature" therefore fail at a Finished MAC or
at the check that a peer id is the hash of its key; each test is named after the attack it mounts.

Item 2 as implemented: a responder answers every well-formed, on-time, non-replayed Hello with a
Reply of the genuine shape (a *substitute*, with a random Finished MAC, when the network key, the
OAEP ciphertext or the presented key is wrong), and every failure is then reported at one place,
the Finish, with one error. Zero bytes are sent only for malformed, stale or replayed Hellos.

Most tests drive the sans-IO :class:`~p2ptls._connection.Connection` directly (synchronous and
reproducible, see ``hostile_support``); items 2 and 4 also run against a real host, and each of
those checks afterwards that a good peer is still served (the host's nursery survived).
"""

from __future__ import annotations

import functools
import logging
import os
import pathlib

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from p2ptls import (
    HandshakeFailed,
    Host,
    KnownPeers,
    ProtocolError,
    ReplayGuard,
    SecureStream,
    SecurityContext,
    _handshake,
)
from p2ptls import _keyschedule as ks
from p2ptls import _wire as wire
from p2ptls._connection import Event, HandshakeState, PrivateKeyOperationNeeded
from p2ptls.identity import PeerRecord, encrypt_to
from tests.host_harness import (
    assert_host_serves,
    read_record,
    receive_until_closed,
    serving_host,
    settle,
)
from tests.hostile_support import (
    LOOPBACK,
    NETWORK_KEY,
    OTHER_NETWORK_KEY,
    TIMESTAMP_NS,
    DeterministicRandom,
    decrypt,
    forged_finish,
    handshake,
    hello_of,
    initiator_finish,
    initiator_k,
    key_operation,
    make_initiator,
    make_responder,
    next_timestamp,
    parties,
    rebound_hello,
    responder_reply,
    supplied,
)
from tests.raw_peer import raw_peer

FAR_FUTURE_NS = 2**64 - 1


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
    hello = hello_of(initiator)
    # The MITM cannot open C_I (it is encrypted to the responder), so it guesses k_I.
    assert decrypt(cast.stranger, key_operation_for_hello(hello)) is None
    forged = forge_reply(hello, os.urandom(wire.RANDOM_SIZE))
    with pytest.raises(HandshakeFailed):
        initiator.receive_data_untrusted(forged)  # before any private-key work of the initiator
    assert initiator.state is HandshakeState.FAILED
    assert initiator.remote is None and initiator.data_to_send() == b""


def test_mitm_reply_would_pass_only_with_k_initiator_which_needs_the_responder_key() -> None:
    """Control for the test above: the forged Reply is correct in every other respect."""
    cast = parties()
    initiator = make_initiator()
    hello = hello_of(initiator)
    hello_secret = decrypt(cast.responder, key_operation_for_hello(hello))
    assert hello_secret is not None
    assert hello_secret[wire.ID_SIZE : wire.ID_SIZE + wire.RANDOM_SIZE] == initiator_k()
    operation = key_operation(initiator.receive_data_untrusted(forge_reply(hello, initiator_k())))
    finish = supplied(initiator, decrypt(cast.initiator, operation))
    assert finish and initiator.state is HandshakeState.ESTABLISHED


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
    reply = responder_reply(responder, hello_of(mitm))
    if claimed == "the victim's id":
        with pytest.raises(HandshakeFailed):
            mitm.receive_data_untrusted(reply)  # a substitute: its Finished MAC is random
        finish = forged_finish()
    else:
        # The MITM holds its own private key, so it can even send a correct Finish.
        operation = key_operation(mitm.receive_data_untrusted(reply))
        finish = supplied(mitm, decrypt(cast.stranger, operation))
    with pytest.raises(HandshakeFailed):
        responder.receive_data_untrusted(finish)
    assert responder.state is HandshakeState.FAILED and responder.remote is None
    assert guard.newest(cast.initiator.peer_id) is None
    assert guard.newest(cast.stranger.peer_id) is None


# -- 2. unknown id, wrong PSK and garbage OAEP look alike ------------------------------------------


def failures_reach(host: Host, count: int) -> bool:
    return host.handshake_failures == count


def hostile_hellos(timestamp_ns: int = TIMESTAMP_NS) -> dict[str, bytes]:
    cast = parties()
    garbage = DeterministicRandom(b"garbage oaep")(cast.responder.key_size // 8)
    garbled = hello_of(make_initiator(seed=b"garbage", timestamp_ns=timestamp_ns))
    return {
        "unknown peer id": hello_of(
            make_initiator(identity=cast.stranger, seed=b"stranger", timestamp_ns=timestamp_ns)
        ),
        "wrong network key": hello_of(
            make_initiator(psk=OTHER_NETWORK_KEY, seed=b"outsider", timestamp_ns=timestamp_ns)
        ),
        "garbage OAEP": rebound_hello(garbled, NETWORK_KEY, sealed_secret=garbage),
        "addressed to another peer": hello_of(
            make_initiator(
                responder=cast.other.record, seed=b"misdirected", timestamp_ns=timestamp_ns
            )
        ),
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
            reply = supplied(responder, decrypt(cast.responder, key_operation(events)))
        else:
            reply = responder.data_to_send()
        # The answer is a Reply of the genuine shape: it tells nothing about which check failed.
        assert len(reply) == len(genuine.reply), name
        wire.parse_reply_untrusted(reply[wire.HEADER_SIZE :])
        with pytest.raises(ProtocolError) as info:
            responder.receive_data_untrusted(forged_finish())
        outcomes[name] = (type(info.value), str(info.value))
        assert responder.state is HandshakeState.FAILED and responder.remote is None
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
    reply = responder_reply(responder, hello_of(probe))
    # The Finished verifies (a private-key operation is requested): no difference to see.
    key_operation(probe.receive_data_untrusted(reply))
    with pytest.raises(HandshakeFailed):
        responder.receive_data_untrusted(supplied(probe, os.urandom(32)))


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
    reply = responder_reply(responder, hello_of(impostor))  # nothing is wrong so far
    operation = key_operation(impostor.receive_data_untrusted(reply))
    assert decrypt(cast.stranger, operation) is None
    forged = supplied(impostor, os.urandom(wire.RANDOM_SIZE))  # a guessed k_R
    with pytest.raises(HandshakeFailed):
        responder.receive_data_untrusted(forged)
    assert responder.state is HandshakeState.FAILED and responder.remote is None
    assert guard.newest(cast.initiator.peer_id) is None


def test_stolen_psk_impersonating_the_responder_fails_at_the_responder_finished_mac() -> None:
    cast = parties()
    initiator = make_initiator(seed=b"victim")
    # The thief answers with the responder's public record and the PSK, but its own private key:
    # it cannot open C_I, so all it can send is a Reply the initiator refuses.
    thief = make_responder()
    operation = key_operation(thief.receive_data_untrusted(hello_of(initiator)))
    reply = supplied(thief, decrypt(cast.stranger, operation))
    with pytest.raises(HandshakeFailed):
        initiator.receive_data_untrusted(reply)
    assert initiator.state is HandshakeState.FAILED and initiator.remote is None


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
    assert target.state is HandshakeState.FAILED and target.farewell == b""
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
    finish = initiator_finish(older, responder_reply(responder, hello_of(older)))
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
    assert responder.state is HandshakeState.FAILED


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
    genuine = hello_of(make_initiator(seed=b"rewritten"))
    offset = wire.HEADER_SIZE + 2
    rewritten = genuine[:offset] + wire.TIMESTAMP.pack(FAR_FUTURE_NS) + genuine[offset + 8 :]
    for hello in (hello_of(outsider), rewritten):
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
        responder.receive_data_untrusted(hello_of(member))  # no private-key work, no reply
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
    reply = responder_reply(responder, hello_of(impostor))
    operation = key_operation(impostor.receive_data_untrusted(reply))
    assert decrypt(cast.stranger, operation) is None  # its own key cannot open C_R
    with pytest.raises(HandshakeFailed):
        responder.receive_data_untrusted(supplied(impostor, os.urandom(32)))
    assert guard.newest(cast.initiator.peer_id) is None
    handshake(make_initiator(), make_responder(guard=guard))
    assert guard.newest(cast.initiator.peer_id) == TIMESTAMP_NS
