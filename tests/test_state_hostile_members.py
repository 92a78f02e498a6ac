"""Hostile *members* over the wire: a peer that holds the network key and an identity of its own
(what ``admit_network_members`` admits) attacks a real state node on 127.0.0.1.

Each test mounts one attack with a raw protocol speaker (``p2ptls.state.testing.raw_peer``) and
checks that the victim stays up, that its state and epoch are unharmed (also after a restart from
its database), that the tables the attacker can add to stay within their bounds and that an honest
newcomer still joins. Nothing sleeps: tests wait for the victim's answers (a PONG is sent after
everything before it on the connection was handled) or for events, under a deadline that only turns
a hang into a failure. The sans-IO decisions behind these are tested in ``test_state_trust.py``.
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import p2ptls
from p2ptls.state import StateNode, StateNodeConfig, _crypto, open_state_node
from p2ptls.state import _wire as wire
from p2ptls.state.facade import (
    BootstrapError,
    BootstrapNode,
    DSNodeConfig,
    DSNodeServer,
    FacadeError,
    load_peer_record,
    resolve_bootstrap,
    save_peer_record,
)
from p2ptls.state.testing import Forger, RawConnection, raw_peer

DEADLINE = 30
HIGH = (wire.MAX_COUNTER - 1, wire.MAX_COUNTER - 1)
NOBODY = 65534


def config(identity: p2ptls.Identity, psk: p2ptls.NetworkKey, **options) -> StateNodeConfig:
    options.setdefault("reconnect_min", 0.05)
    options.setdefault("reconnect_max", 0.5)
    return StateNodeConfig(identity=identity, psk=psk, **options)


async def until(node: StateNode, predicate: Callable[[], bool]) -> None:
    with trio.fail_after(DEADLINE):
        await node.wait_until(predicate)


async def handled(conn: RawConnection) -> list[wire.Message]:
    """Ping and return everything the node sent before the pong: once it arrives, the node has
    handled every message sent before the ping."""
    nonce = os.urandom(wire.NONCE_SIZE)
    await conn.send(wire.Ping(nonce))
    seen: list[wire.Message] = []
    with trio.fail_after(DEADLINE):
        while True:
            message = await conn.receive()
            if isinstance(message, wire.Pong) and message.nonce == nonce:
                return seen
            seen.append(message)


async def received_update(conn: RawConnection, owner: bytes, key: str, value: bytes) -> wire.Record:
    """Read until the node pushes the record of ``owner`` setting ``key`` to ``value``."""
    with trio.fail_after(DEADLINE):
        while True:
            message = await conn.receive()
            if isinstance(message, wire.Updates):
                for span in message.spans:
                    for group in span.groups:
                        for record in group.records:
                            if (record.owner, record.key, record.value) == (owner, key, value):
                                return record


def fake_key_der() -> bytes:
    """A made-up "RSA key": any odd 2048-bit modulus with e = 65537 parses as one, for free."""
    modulus = secrets.randbits(2048) | (1 << 2047) | 1
    key = rsa.RSAPublicNumbers(65537, modulus).public_key()
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@functools.cache
def owner_pool() -> tuple[p2ptls.Identity, ...]:
    """Real keys for an owner-table flood (certificates must verify)."""
    return tuple(p2ptls.Identity.generate(2048) for _ in range(3))


# -- 1. claims about the victim's own state -----------------------------------------------------


async def test_a_digest_claiming_the_victims_own_state_cannot_touch_its_epoch(
    identities, tmp_path
) -> None:
    victim_id, attacker = identities[0], identities[1]
    psk = p2ptls.generate_psk()
    database = tmp_path / "victim.db"
    own = victim_id.peer_id.digest
    async with open_state_node(config(victim_id, psk, database=database)) as victim:
        await victim.set("k", b"before")
        epoch = victim.epoch
        async with raw_peer(attacker, psk, victim.peer_record()) as conn:
            await conn.send(wire.Digest(((own, HIGH),)))
            seen = await handled(conn)
            # All the claim earns: a pull of the one record that would prove it.
            pulls = [m for m in seen if isinstance(m, wire.Pull)]
            assert ((own, (HIGH[0], HIGH[1] - 1)),) in [p.entries for p in pulls]
            # A smaller claim (one past the victim's only write) earns no re-signing either.
            await conn.send(wire.Digest(((own, (epoch, 2)),)))
            await handled(conn)
            signed_before = victim.stats.batches_signed
            # The claims only fool the victim about what the claimer holds: ask afresh.
            await conn.send(wire.Pull(((own, wire.NO_VERSION),)))
            await victim.set("k", b"after")
            record = await received_update(conn, own, "k", b"after")
            assert record.epoch == epoch and record.value == b"after"
            assert victim.stats.batches_signed == signed_before + 1  # no state issued again
        assert victim.epoch == epoch and victim.snapshot() == {"k": b"after"}
    # The claim was never stored: the next run takes the next epoch, as always.
    async with open_state_node(config(victim_id, psk, database=database)) as victim:
        assert victim.epoch == epoch + 1 and victim.snapshot() == {"k": b"after"}


async def test_an_unsigned_span_of_the_victims_own_id_is_no_proof(identities, tmp_path) -> None:
    victim_id, attacker = identities[0], identities[1]
    psk = p2ptls.generate_psk()
    network = _crypto.network_id(psk)
    own = victim_id.peer_id.digest
    database = tmp_path / "victim.db"
    async with open_state_node(config(victim_id, psk, database=database)) as victim:
        await victim.set("k", b"mine")
        epoch = victim.epoch
        forger = Forger(attacker, network, epoch=HIGH[0])
        records = forger.records([("k", b"forged")], owner=own, start=HIGH[1])
        batch = forger.batch(records, owner=own)
        span = wire.Span(own, (HIGH[0], HIGH[1] - 1), (wire.Group(batch, tuple(records)),))
        async with raw_peer(attacker, psk, victim.peer_record()) as conn:
            await conn.send(wire.Digest(()))  # "I hold nothing": the victim pushes to it
            await conn.send(forger.updates(span))  # with the attacker's own certificate
            await conn.send(forger.updates(span, certificates=[]))
            await handled(conn)
            await victim.set("k", b"still mine")
            record = await received_update(conn, own, "k", b"still mine")
            assert record.epoch == epoch
        assert victim.epoch == epoch and victim.get(victim.peer_id, "k") == b"still mine"
        assert victim.stats.errors_contained == 0
    async with open_state_node(config(victim_id, psk, database=database)) as victim:
        assert victim.epoch == epoch + 1


# -- 2. made-up members -------------------------------------------------------------------------


async def test_a_thousand_made_up_members_lock_nobody_out(identities, tmp_path) -> None:
    victim_id, attacker, newcomer_id, observer = identities
    psk = p2ptls.generate_psk()
    database = tmp_path / "victim.db"
    options = {"max_members": 8, "member_candidates_per_source": 16, "database": database}
    fakes = [fake_key_der() for _ in range(1000)]
    gossip = wire.Members(tuple(wire.MemberInfo(der, ("127.0.0.1", 1)) for der in fakes))
    fake_ids = {p2ptls.PeerId.for_public_key(der) for der in fakes}
    async with open_state_node(config(victim_id, psk, **options)) as victim:
        async with raw_peer(attacker, psk, victim.peer_record()) as conn:
            await conn.send(gossip)
            await handled(conn)
            assert {m.peer_id for m in victim.members()} == {attacker.peer_id}
            assert len(victim._members.table.candidates) <= 16
            # Not passed on: a member connecting now hears of no made-up member.
            async with raw_peer(observer, psk, victim.peer_record()) as other:
                told = [m for m in await handled(other) if isinstance(m, wire.Members)]
                heard = {
                    p2ptls.PeerId.for_public_key(i.public_key_der) for m in told for i in m.members
                }
                assert heard and not heard & fake_ids
            # An honest newcomer joins, and the victim holds its state.
            newcomer_config = config(newcomer_id, psk, bootstrap=(victim.peer_record(),))
            async with open_state_node(newcomer_config) as newcomer:
                await newcomer.set("hello", b"world")
                await until(victim, lambda: victim.get(newcomer.peer_id, "hello") == b"world")
        assert victim.stats.errors_contained >= 0  # dials of made-up candidates stay contained
    # Nothing made up was saved.
    async with open_state_node(config(victim_id, psk, **options)) as victim:
        assert not {m.peer_id for m in victim.members()} & fake_ids


async def test_a_full_member_table_still_admits_a_member_that_authenticates(identities) -> None:
    victim_id, _attacker, newcomer_id, _ = identities
    psk = p2ptls.generate_psk()
    async with open_state_node(config(victim_id, psk, max_members=2)) as victim:
        for der in (fake_key_der(), fake_key_der()):  # members named but gone for good
            victim.add_member(p2ptls.PeerRecord.from_public_key(der, address=("127.0.0.1", 1)))
        assert len(victim.members()) == 2
        newcomer_config = config(newcomer_id, psk, bootstrap=(victim.peer_record(),))
        async with open_state_node(newcomer_config) as newcomer:
            await newcomer.set("k", b"v")
            await until(victim, lambda: victim.get(newcomer.peer_id, "k") == b"v")
            status = victim.member(newcomer.peer_id)
            assert status is not None and len(victim.members()) == 2
            assert victim.stats.members_evicted == 1


class NotP2ptls:
    """A TCP listener at an address a member may name: it answers every dial with garbage (the
    dialler's handshake fails) and counts the connections the dialler closed."""

    def __init__(self) -> None:
        self.closed = 0
        self.changed = trio.Event()
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    async def serve(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, self._answer, 0, host="127.0.0.1")
        )
        self.address = ("127.0.0.1", listeners[0].socket.getsockname()[1])

    async def _answer(self, stream: trio.SocketStream) -> None:
        try:
            await stream.send_all(b"\x16\x03\x01 this is not a p2ptls handshake " * 8)
            while await stream.receive_some():
                pass
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()
            self.closed += 1
            self.changed.set()
            self.changed = trio.Event()

    async def wait_closed(self, count: int) -> None:
        with trio.fail_after(DEADLINE):
            while self.closed < count:
                await self.changed.wait()


async def test_a_gossiped_candidate_whose_handshake_fails_does_not_end_the_node(
    identities,
) -> None:
    victim_id, attacker = identities[0], identities[1]
    psk = p2ptls.generate_psk()
    impostor = NotP2ptls()
    async with trio.open_nursery() as nursery:
        await impostor.serve(nursery)
        async with (
            open_state_node(config(victim_id, psk)) as victim,
            raw_peer(attacker, psk, victim.peer_record()) as conn,
        ):
            await conn.send(wire.Members((wire.MemberInfo(fake_key_der(), impostor.address),)))
            await impostor.wait_closed(1)
            await conn.send(wire.Digest(()))
            await victim.set("alive", b"yes")
            record = await received_update(conn, victim.peer_id.digest, "alive", b"yes")
            assert record.value == b"yes"
        nursery.cancel_scope.cancel()


async def test_a_member_address_where_the_handshake_fails_does_not_end_the_node(
    identities,
) -> None:
    """Dialling a member at an address that answers with garbage raises from the handshake; the
    node keeps dialling it (with backoff) and keeps serving."""
    victim_id, member_id = identities[0], identities[1]
    psk = p2ptls.generate_psk()
    impostor = NotP2ptls()
    async with trio.open_nursery() as nursery:
        await impostor.serve(nursery)
        async with open_state_node(config(victim_id, psk)) as victim:
            victim.add_member(member_id.peer_record(address=impostor.address))
            await impostor.wait_closed(2)  # a second dial: the first failure ended no task
            await victim.set("alive", b"yes")
            assert victim.get(victim.peer_id, "alive") == b"yes"
        nursery.cancel_scope.cancel()


# -- 5. owners and certificates -----------------------------------------------------------------


async def test_an_owner_flood_evicts_only_the_flood_and_members_stay(identities) -> None:
    victim_id, attacker, newcomer_id, _ = identities
    psk = p2ptls.generate_psk()
    network = _crypto.network_id(psk)
    async with open_state_node(config(victim_id, psk, max_owners=3)) as victim:
        newcomer_config = config(newcomer_id, psk, bootstrap=(victim.peer_record(),))
        async with (
            open_state_node(newcomer_config) as newcomer,
            raw_peer(attacker, psk, victim.peer_record()) as conn,
        ):
            await newcomer.set("k", b"honest")
            await until(victim, lambda: victim.get(newcomer.peer_id, "k") == b"honest")
            for identity in owner_pool():
                forger = Forger(identity, network)
                await conn.send(forger.updates(forger.span(forger.records([("k", b"x")]))))
            await handled(conn)
            assert victim._core.charged_owners <= 2
            assert victim.stats.owners_evicted >= 1
            # Members (the newcomer, the attacker itself) are never evicted for non-members.
            assert victim.get(newcomer.peer_id, "k") == b"honest"
            await newcomer.set("k", b"later")
            await until(victim, lambda: victim.get(newcomer.peer_id, "k") == b"later")


# -- 7. sessions ----------------------------------------------------------------------------------


async def test_a_member_opening_state_streams_without_limit_holds_one_session(identities) -> None:
    """A member opens state streams and never says STATE_HELLO: the victim holds at most the host's
    ``max_streams_per_peer`` of them (the rest are refused at the opener), keeps the one session
    the member does set up, and serves an honest newcomer meanwhile."""
    victim_id, attacker, newcomer_id, _ = identities
    psk = p2ptls.generate_psk()
    hello = wire.StateHello(_crypto.network_id(psk), 1, None).encode()
    async with (
        open_state_node(config(victim_id, psk)) as victim,
        p2ptls.open_host(p2ptls.HostConfig(identity=attacker, psk=psk)) as host,
    ):
        record = victim.peer_record()
        limit = victim.host.config.connections.max_streams_per_peer
        streams, refused = [], 0
        for _ in range(limit + 20):
            try:
                streams.append(await host.open(record, wire.PROTOCOL))
            except p2ptls.StreamRefused:
                refused += 1
        assert len(streams) == limit and refused == 20
        assert len(victim._sessions.running) == limit
        # The member sets one of them up: that one is its session, the others wait for STATE_HELLO.
        chosen = streams[-1]
        await chosen.send_message(hello)
        await chosen.send_message(wire.Ping(b"set up!!").encode())
        with trio.fail_after(DEADLINE):
            while await chosen.receive_message() != wire.Pong(b"set up!!").encode():
                pass
        session = victim._members.pump_of(attacker.peer_id)
        assert session is not None and session.stream.stream_id == chosen.stream_id
        newcomer_config = config(newcomer_id, psk, bootstrap=(record,))
        async with open_state_node(newcomer_config) as newcomer:
            await newcomer.set("k", b"v")
            await until(victim, lambda: victim.get(newcomer.peer_id, "k") == b"v")
        for stream in streams:
            await stream.aclose()
        assert victim.stats.errors_contained == 0


async def test_certificates_without_batches_are_not_kept(identities, tmp_path) -> None:
    victim_id, attacker = identities[0], identities[1]
    psk = p2ptls.generate_psk()
    network = _crypto.network_id(psk)
    database = tmp_path / "victim.db"
    certificates = tuple(Forger(attacker, network, epoch=e).certificate for e in range(1, 21))
    async with (
        open_state_node(config(victim_id, psk, database=database)) as victim,
        raw_peer(attacker, psk, victim.peer_record()) as conn,
    ):
        await conn.send(wire.Updates(certificates, ()))
        await handled(conn)
        assert set(victim._core.owners[attacker.peer_id.digest].certs) == {20}
    async with open_state_node(config(victim_id, psk, database=database)) as victim:
        assert set(victim._core.owners[attacker.peer_id.digest].certs) == {20}


# -- 6. the facade's files ----------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


@needs_root
def test_a_record_file_of_another_user_is_refused(identities, tmp_path: Path) -> None:
    path = tmp_path / "peer.record.json"
    save_peer_record(path, identities[1].peer_record(address=("127.0.0.1", 7400)))
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(BootstrapError, match="belongs to another user") as caught:
        load_peer_record(path)
    assert str(path) in str(caught.value) and "chown" in str(caught.value)


@needs_root
def test_another_users_record_cannot_block_or_join_a_bootstrap(identities, tmp_path: Path) -> None:
    records = tmp_path / "records"
    records.mkdir(mode=0o700)
    real = identities[1].peer_record(address=("127.0.0.1", 7400))
    save_peer_record(records / "real.record.json", real)
    planted = records / "planted.record.json"
    save_peer_record(planted, identities[2].peer_record(address=("127.0.0.1", 7400)))
    os.chown(planted, NOBODY, NOBODY)
    entry = BootstrapNode(address="127.0.0.1", port=7400)
    assert resolve_bootstrap([entry], records) == [real]


@needs_root
def test_a_data_directory_another_user_owns_or_may_write_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "network.key"
    p2ptls.generate_psk(key)
    for mode, owner, message, fix in (
        (0o777, os.geteuid(), "writable by group or others", "chmod go-w"),
        (0o700, NOBODY, "belongs to another user", "chown"),
    ):
        data_dir = tmp_path / f"data-{mode:o}-{owner}"
        data_dir.mkdir()
        data_dir.chmod(mode)
        os.chown(data_dir, owner, owner)
        node_config = DSNodeConfig(node_id="n", port=0, network_key_file=key, data_dir=data_dir)
        with pytest.raises(FacadeError, match=message) as caught:
            DSNodeServer.start(node_config)
        assert str(data_dir) in str(caught.value) and fix in str(caught.value)


def test_a_record_file_others_may_write_is_refused(identities, tmp_path: Path) -> None:
    path = tmp_path / "peer.record.json"
    save_peer_record(path, identities[1].peer_record(address=("127.0.0.1", 7400)))
    path.chmod(0o622)
    with pytest.raises(BootstrapError, match="writable by group or others"):
        load_peer_record(path)
