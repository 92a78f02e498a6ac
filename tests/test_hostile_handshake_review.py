"""The handshake protocol review's findings, each a test: the responder binding of the Hello,
replays raced ahead of the genuine Hello (sans-IO and against a real host), what the clear flights
do not reveal, one encoding and one exponent per RSA key, and substitute replies of the genuine
length for every key size.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import threading
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from p2ptls import (
    HandshakeFailed,
    HostConfig,
    Identity,
    KnownPeers,
    PeerDatabaseError,
    ReplayGuard,
    SecureStream,
    SecurityContext,
    _handshake,
    admit_network_members,
    open_host,
)
from p2ptls import _wire as wire
from p2ptls._connection import Connection
from p2ptls.identity import PeerRecord
from tests.host_harness import (
    adopt,
    assert_host_serves,
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
    crafted_hello,
    decrypt,
    flip_bit,
    forged_finish,
    genuine_flights,
    handshake,
    hello_of,
    initiator_finish,
    key_operation,
    make_initiator,
    make_responder,
    parties,
    rebound_hello,
    reply_is_genuine,
    responder_reply,
    supplied,
)
from tests.raw_peer import raw_peer

# -- protocol review: responder binding, replay racing, identity leaks, key encodings -------------


def test_a_hello_made_for_another_responder_fails_at_the_binder_before_any_rsa_work() -> None:
    """The binder key is derived from the network key and the responder's full id: a Hello is
    valid only at the responder it was made for. This fails if the responder-binding check is
    removed (a binder keyed by the network key alone)."""
    cast = parties()
    genuine = hello_of(make_initiator(seed=b"bound"))
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
        hello = hello_of(initiator)
        attacker_side = make_responder(guard=guard, seed=b"attacker's connection")
        copy_operation = key_operation(attacker_side.receive_data_untrusted(hello))
        if not pending:
            supplied(attacker_side, decrypt(cast.responder, copy_operation))
        genuine_side = make_responder(guard=guard, seed=b"genuine connection")
        events = genuine_side.receive_data_untrusted(hello)
        if pending:  # the I/O layer runs one decryption for both (SecurityContext.decrypt_once)
            reply = supplied(genuine_side, decrypt(cast.responder, key_operation(events)))
            supplied(attacker_side, decrypt(cast.responder, copy_operation))
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
    hello = hello_of(make_initiator(seed=seed))
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
    genuine = hello_of(make_initiator(identity=initiator, seed=b"sized"))
    garbage = DeterministicRandom(b"sized garbage")(cast.responder.key_size // 8)
    return {
        "wrong network key": hello_of(
            make_initiator(identity=initiator, psk=OTHER_NETWORK_KEY, seed=b"sized")
        ),
        "made for another responder": hello_of(
            make_initiator(identity=initiator, responder=cast.other.record, seed=b"sized")
        ),
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
        make_responder(trusted=trusted), hello_of(make_initiator(identity=initiator, seed=b"sized"))
    )
    assert len(genuine_reply) == 4 + 1 + 32 + 2 + bits // 8 + wire.TAG_SIZE + 32
    for name, hello in substitute_cases(initiator).items():
        responder = make_responder(trusted=trusted, seed=b"substitute")
        events = responder.receive_data_untrusted(hello)
        if events:
            reply = supplied(responder, decrypt(cast.responder, key_operation(events)))
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
            repeat = supplied(again, decrypt(cast.responder, key_operation(events)))
        else:
            repeat = again.data_to_send()
        assert repeat == reply, name
        with pytest.raises(HandshakeFailed):
            responder.receive_data_untrusted(forged_finish())
