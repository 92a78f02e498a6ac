"""Helpers for testing code on the state network, in the manner of ``trio.testing``.

:class:`Forger` builds signed protocol objects (certificates, records, batches, spans) for an
identity, honestly or not: tests use it to play a misbehaving owner or relay. :func:`raw_peer`
connects to a running node as a bare protocol speaker that sends exactly the messages a test
gives it, on a logical stream of ``p2ptls/state/1`` as a node opens one.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import attrs
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..host import HostConfig, open_host
from ..identity import Identity, NetworkKey, PeerRecord
from ..logical import LogicalStream
from . import _crypto
from . import _wire as wire
from ._wire import PROTOCOL


class Forger:
    """Signed objects of one identity for one epoch.

    ``seed`` makes the Ed25519 key deterministic (32 bytes). ``network`` is the state network id.
    """

    def __init__(
        self, identity: Identity, network: bytes, epoch: int = 1, *, seed: bytes | None = None
    ) -> None:
        self.identity = identity
        self.network = network
        self.owner = identity.peer_id.digest
        key = Ed25519PrivateKey.from_private_bytes(seed) if seed is not None else None
        self.signer = _crypto.EpochSigner.create(identity, network, epoch, private_key=key)
        self.next_seq = 1

    @property
    def certificate(self) -> wire.EpochCertificate:
        return self.signer.certificate

    @property
    def epoch(self) -> int:
        return self.signer.epoch

    def records(
        self,
        items: Sequence[tuple[str, bytes | None]],
        *,
        owner: bytes | None = None,
        start: int | None = None,
    ) -> list[wire.Record]:
        """Records for consecutive sequence numbers (from ``start`` or the next unused one)."""
        seq = self.next_seq if start is None else start
        made = []
        for key, value in items:
            made.append(wire.encode_record(owner or self.owner, self.epoch, seq, key, value))
            seq += 1
        self.next_seq = max(self.next_seq, seq)
        return made

    def batch(
        self,
        records: Sequence[wire.Record],
        *,
        owner: bytes | None = None,
        network: bytes | None = None,
        signer: _crypto.EpochSigner | None = None,
    ) -> wire.Batch:
        """A batch over ``records`` (consecutive sequence numbers), signed by ``signer``."""
        hashes = [_crypto.record_hash(r.raw) for r in records]
        signing = signer or self.signer
        net = network or self.network
        claimed = owner or self.owner
        body = wire.encode_batch_body(net, claimed, signing.epoch, records[0].seq, hashes)
        signature = signing._private_key.sign(_crypto.BATCH_CONTEXT + body)
        return wire.Batch(net, claimed, signing.epoch, records[0].seq, len(hashes), body, signature)

    def span(
        self,
        records: Sequence[wire.Record],
        *,
        since: wire.Version = wire.NO_VERSION,
        batch: wire.Batch | None = None,
    ) -> wire.Span:
        """One span with one group: ``records`` proven by ``batch`` (default: a fresh one)."""
        proof = batch or self.batch(records)
        return wire.Span(proof.owner, since, (wire.Group(proof, tuple(records)),))

    def updates(
        self, *spans: wire.Span, certificates: Sequence[wire.EpochCertificate] | None = None
    ) -> wire.Updates:
        """An Updates message carrying this forger's certificate unless told otherwise."""
        certs = (self.certificate,) if certificates is None else tuple(certificates)
        return wire.Updates(certs, tuple(spans))


@attrs.define
class RawConnection:
    """A state stream to a node on which the test speaks the protocol itself (the logical stream
    shares the test host's one connection to the node, so ``stream.connection`` is there to
    open other protocols on, or to cut)."""

    stream: LogicalStream
    hello: wire.StateHello
    limits: wire.Limits
    received: collections.deque[bytes] = attrs.field(factory=collections.deque)
    """Messages read ahead (by :meth:`taken`) and not handed out by :meth:`receive` yet."""

    async def send(self, message: wire.Message | bytes) -> None:
        data = message if isinstance(message, bytes) else message.encode()
        await self.stream.send_message(data)

    async def receive(self) -> wire.Message:
        data = self.received.popleft() if self.received else await self.stream.receive_message()
        return wire.parse_message_untrusted(data, self.limits)

    async def taken(self) -> bool:
        """Wait until the node has taken this session (it answers a PING only after it handled
        our STATE_HELLO and kept the session); what it sends meanwhile stays for :meth:`receive`.
        False if it closed the stream instead."""
        nonce = b"taken?!!"
        await self.send(wire.Ping(nonce))
        try:
            while True:
                data = await self.stream.receive_message()
                if data == wire.Pong(nonce).encode():
                    return True
                self.received.append(data)
        except (trio.EndOfChannel, trio.BrokenResourceError):
            return False

    async def wait_closed(self) -> None:
        """Read (and drop) messages until the node closes the stream (or it breaks)."""
        try:
            self.received.clear()
            while True:
                await self.stream.receive_message()
        except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
            return


@asynccontextmanager
async def raw_peer(
    identity: Identity,
    psk: NetworkKey,
    node: PeerRecord,
    *,
    network: bytes | None = None,
    incarnation: int = 1,
) -> AsyncIterator[RawConnection]:
    """Open a state stream to ``node`` (a record with its address), exchange hellos and wait
    until the node has taken the session (:meth:`RawConnection.taken`).

    ``network`` overrides the state network id the hello claims.
    """
    network_id = network if network is not None else _crypto.network_id(psk)
    async with open_host(HostConfig(identity=identity, psk=psk)) as host:
        stream = await host.open(node, PROTOCOL)
        await stream.send_message(wire.StateHello(network_id, incarnation, None).encode())
        limits = wire.Limits(max_value_size=wire.MAX_VALUE_LIMIT)
        first = wire.parse_message_untrusted(await stream.receive_message(), limits)
        assert isinstance(first, wire.StateHello)
        connection = RawConnection(stream, first, limits)
        await connection.taken()
        yield connection
