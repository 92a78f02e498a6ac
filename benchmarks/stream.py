"""Benchmark p2ptls side by side with ``trio.SSLStream`` (TLS 1.3, mutual auth) and plain TCP.

Measures, on 127.0.0.1:

* bulk throughput: ``--bulk-mib`` MiB sent in 64 KiB ``send_all`` writes, read with
  ``receive_some(--read-size)``; MB/s (10**6 bytes) from the first byte sent to the last received;
* 64-byte round trips (ping-pong on the byte stream): p50 and p99 in microseconds after warm-up;
* handshakes per second (p2ptls and TLS): TCP connect + handshake + close, ``--concurrency``
  at once (p2ptls with ``resumption=False``: full handshakes, RSA on both sides);
* resumed handshakes per second (with the ``handshake`` test): TCP connect + resumed handshake
  (p2ptls: a ticket, SPEC 3.6; TLS 1.3: the standard library's session reuse,
  ``SSLContext.wrap_bio(..., session=)``, mutual authentication as for the full handshakes) + one
  64-byte round trip (which brings the server's new tickets, in both) + close; each slot resumes
  the session of its previous connection. The ``tcp`` column of both rows is the floor: the same
  connect (+ round trip) + close in the clear.

The ``mux`` transport is a logical stream (``host.open``) on the one connection between two
hosts (``p2ptls.open_host``, ``host.serve_protocol``); it runs the bulk and round-trip tests as
the others do and is compared with the bare ``SecureStream`` (``p2ptls``) measured in the same
round (the ratios are the median of the per-round ratios). Two tests are its own:

* ``open``: logical streams opened per second on the shared connection, ``--open-concurrency``
  at a time: open and close, and open, one 64-byte round trip and close;
* ``fairness``: one logical stream sends bulk data as fast as it can while another of the same
  connection runs 64-byte round trips; the ``fairness`` figure is the p99 of those round trips
  in milliseconds (also reported: their p50 and the bulk rate meanwhile).

By default both ends run in this process and trio run (how the reference figures were measured);
``--two-process`` moves the accepting side into a child process. Every connection starts with the
handshake (a logical stream starts with its open); the client then sends a 9-byte command (``B``
+ u64 size for bulk, ``S`` for bulk until its end of stream, ``R`` + u64 count for round trips)
or simply closes (the handshake benchmark). The bulk receiver answers with the
``time.perf_counter_ns()`` of its last byte (CLOCK_MONOTONIC, so comparable across processes).
Each figure is the median of ``--runs`` rounds (3), the order of the transports rotating.

Examples::

    .venv/bin/python benchmarks/stream.py --quick
    .venv/bin/python benchmarks/stream.py --json results.json
    .venv/bin/python benchmarks/stream.py --quick --record-size 65264 --only p2ptls --tests bulk
    .venv/bin/python benchmarks/stream.py --quick --only mux --tests bulk rtt open fairness
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import hashlib
import ipaddress
import json
import math
import os
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if __package__ in (None, ""):  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import attrs
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import p2ptls
from benchmarks._common import log, median_of, percentiles, print_table, progress, say, write_json

Kind = Literal["p2ptls", "mux", "tls", "tcp"]
KINDS: tuple[Kind, ...] = ("p2ptls", "tls", "tcp")
"""The transports of the stream table (and of its JSON figures)."""
ALL_KINDS: tuple[Kind, ...] = ("p2ptls", "mux", "tls", "tcp")
"""``mux`` is a logical stream on a host's shared connection, compared with ``p2ptls`` (a bare
``SecureStream``) measured in the same round."""
SECURE_KINDS: tuple[Kind, ...] = ("p2ptls", "tls")
TESTS = ("bulk", "rtt", "handshake", "open", "fairness")
MUX_TESTS = ("open", "fairness")
"""Measured on the multiplexed connection only."""

KEY_BITS = 3072
WRITE_SIZE = 64 * 1024
RTT_PAYLOAD = 64
MIB = 1024 * 1024
COMMAND = struct.Struct(">cQ")
COMMAND_PROTOCOL = "bench/command/1"
"""The hosts' protocol that runs the same commands as the bare listeners."""
OPEN_PROTOCOL = "bench/open/1"
"""The hosts' protocol for the open rate: echo what one read returns (if anything), then end."""
FAIRNESS_LEAD = 8 * MIB
"""Bytes the bulk stream sends before the request-reply stream starts its round trips."""
ACK = struct.Struct(">Q32s")  # receive end time (perf_counter_ns), SHA-256 or zeros
TLS_HOSTNAME = "localhost"

# Targets from the issue: (metric, description, predicate on the row).
Row = dict[str, float]


def _ratio(row: Row, a: str, b: str) -> float:
    if a not in row or b not in row or row[b] == 0:
        return math.nan
    return row[a] / row[b]


TARGETS: list[tuple[str, str, Callable[[Row], float], Callable[[float], bool]]] = [
    ("bulk_MBps", "bulk >= 2.5x tls", lambda r: _ratio(r, "p2ptls", "tls"), lambda x: x >= 2.5),
    ("bulk_MBps", "bulk >= 0.6x tcp", lambda r: _ratio(r, "p2ptls", "tcp"), lambda x: x >= 0.6),
    (
        "rtt64_p50_us",
        "rtt p50 <= 1.3x tcp",
        lambda r: _ratio(r, "p2ptls", "tcp"),
        lambda x: x <= 1.3,
    ),
    (
        "handshakes_per_s",
        "handshakes/s >= tls",
        lambda r: _ratio(r, "p2ptls", "tls"),
        lambda x: x >= 1.0,
    ),
]


# -- small helpers ------------------------------------------------------------------------------


def format_value(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


# -- key material -------------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: str,
    issuer_key: rsa.RSAPrivateKey,
    *,
    ca: bool,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName(TLS_HOSTNAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_tls_material(directory: Path) -> None:
    """A throwaway CA and a server and a client certificate, all RSA-3072, as PEM files."""
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    ca_cert = _certificate("p2ptls bench CA", ca_key, "p2ptls bench CA", ca_key, ca=True)
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for role in ("server", "client"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        cert = _certificate(
            f"bench {role}", key, "p2ptls bench CA", ca_key, ca=False, server=role == "server"
        )
        (directory / f"{role}.pem").write_bytes(
            _pem_key(key) + cert.public_bytes(serialization.Encoding.PEM)
        )


def tls_contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context): TLS 1.3 only, certificates required on both sides."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for context, role in ((server, "server"), (client, "client")):
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_cert_chain(directory / f"{role}.pem")
        context.load_verify_locations(cafile=directory / "ca.pem")
    client.check_hostname = True
    return server, client


@dataclass
class Material:
    """Keys for every side: p2ptls identities and the TLS files."""

    directory: Path
    server: p2ptls.Identity
    clients: list[p2ptls.Identity]
    psk: p2ptls.NetworkKey

    @classmethod
    def generate(cls, directory: Path, clients: int) -> Material:
        # One client identity per concurrent handshake slot: the responder's replay guard wants the
        # Hello timestamps of one initiator to be accepted in order, which handshakes running
        # concurrently from a single identity do not guarantee.
        material = cls(
            directory,
            p2ptls.Identity.generate(KEY_BITS),
            [p2ptls.Identity.generate(KEY_BITS) for _ in range(clients)],
            p2ptls.generate_psk(),
        )
        write_tls_material(directory)
        return material

    def save(self) -> None:
        self.server.save(self.directory / "p2p-server.key")
        for index, identity in enumerate(self.clients):
            identity.save(self.directory / f"p2p-client-{index}.key")
        self.psk.save(self.directory / "p2p.psk")

    @classmethod
    def load(cls, directory: Path, clients: int) -> Material:
        return cls(
            directory,
            p2ptls.Identity.load(directory / "p2p-server.key"),
            [p2ptls.Identity.load(directory / f"p2p-client-{i}.key") for i in range(clients)],
            p2ptls.NetworkKey.load(directory / "p2p.psk"),
        )


def stream_config(args: argparse.Namespace) -> p2ptls.StreamConfig:
    options: dict[str, Any] = {}
    if args.record_size is not None:
        options["record_size"] = args.record_size
    if args.receive_size is not None:
        options["receive_size"] = args.receive_size
    return p2ptls.StreamConfig(**options)


def connection_config(args: argparse.Namespace) -> p2ptls.ConnectionConfig:
    """How the two hosts of the ``mux`` measurements share their connection."""
    options: dict[str, Any] = {}
    if args.stream_window is not None:
        options["stream_window"] = args.stream_window
    if args.max_stream_window is not None:
        options["max_stream_window"] = args.max_stream_window
    return p2ptls.ConnectionConfig(**options)


# -- the accepting side -------------------------------------------------------------------------


class Reader:
    """Exact-size reads over ``receive_some`` (keeps what a read returned beyond the request)."""

    def __init__(self, stream: trio.abc.ReceiveStream, read_size: int) -> None:
        self.stream = stream
        self.read_size = read_size
        self.pending = bytearray()

    async def read_exactly(self, size: int) -> bytes | None:
        """``size`` bytes, or ``None`` at a clean EOF before the first byte."""
        while len(self.pending) < size:
            chunk = await self.stream.receive_some(self.read_size)
            if not chunk:
                if self.pending:
                    raise trio.BrokenResourceError("EOF inside a read")
                return None
            self.pending += chunk
        data = bytes(self.pending[:size])
        del self.pending[:size]
        return data


class Server:
    """Accepts connections of the three kinds, and logical streams on a host, and runs the
    command each connection (or logical stream) sends."""

    def __init__(
        self,
        material: Material,
        config: p2ptls.StreamConfig,
        read_size: int,
        connections: p2ptls.ConnectionConfig,
    ) -> None:
        self.material = material
        self.config = config
        self.connections = connections
        self.read_size = read_size
        self.p2p_context = p2ptls.SecurityContext(
            material.server,
            material.psk,
            p2ptls.KnownPeers([client.record for client in material.clients]),
            config=config,
        )
        self.tls_context, _ = tls_contexts(material.directory)
        self.ports: dict[Kind, int] = {}
        self.errors = 0

    async def start(self, nursery: trio.Nursery) -> None:
        for kind in KINDS:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            sockname = listeners[0].socket.getsockname()
            self.ports[kind] = int(sockname[1])
            nursery.start_soon(
                trio.serve_listeners, functools.partial(self.handle, kind), listeners
            )
        host: p2ptls.Host = await nursery.start(self.run_host)
        self.ports["mux"] = host.address[1]

    async def run_host(self, *, task_status: trio.TaskStatus[p2ptls.Host]) -> None:
        """The accepting host of the ``mux`` measurements (until cancelled)."""
        config = p2ptls.HostConfig(
            identity=self.material.server,
            psk=self.material.psk,
            peers=[client.record for client in self.material.clients],
            listen=("127.0.0.1", 0),
            stream=self.config,
            connections=self.connections,
        )
        async with p2ptls.open_host(config) as host:
            host.serve_protocol(COMMAND_PROTOCOL, self.handle_logical)
            host.serve_protocol(OPEN_PROTOCOL, self.handle_open)
            task_status.started(host)
            await trio.sleep_forever()

    def wrap(self, kind: Kind, transport: trio.SocketStream) -> trio.abc.Stream:
        if kind == "p2ptls":
            return p2ptls.SecureStream(transport, self.p2p_context, server_side=True)
        if kind == "tls":
            return trio.SSLStream(transport, self.tls_context, server_side=True)
        return transport

    async def handle(self, kind: Kind, transport: trio.SocketStream) -> None:
        stream = self.wrap(kind, transport)
        try:
            if isinstance(stream, p2ptls.SecureStream | trio.SSLStream):
                await stream.do_handshake()
            await self.run_command(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.errors += 1
            log(f"server ({kind}): {exc!r} cause={exc.__cause__!r}")
        finally:
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(2),
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
            ):
                await stream.aclose()

    async def handle_logical(self, stream: p2ptls.LogicalStream) -> None:
        """A logical stream of :data:`COMMAND_PROTOCOL` (the host closes it afterwards)."""
        try:
            await self.run_command(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.errors += 1
            log(f"server (mux): {exc!r} cause={exc.__cause__!r}")

    async def handle_open(self, stream: p2ptls.LogicalStream) -> None:
        """A logical stream of :data:`OPEN_PROTOCOL`: echo one read, if the client sends one."""
        data = await stream.receive_some(RTT_PAYLOAD)
        if data:
            await stream.send_all(data)

    async def run_command(self, stream: trio.abc.Stream) -> None:
        """Read the client's command and run it; then wait for the client to close."""
        reader = Reader(stream, self.read_size)
        command = await reader.read_exactly(COMMAND.size)
        if command is None:
            return
        op, value = COMMAND.unpack(command)
        if op in (b"B", b"V"):
            await self.sink(stream, reader, value, verify=op == b"V")
        elif op == b"S":
            await self.sink(stream, reader, None, verify=False)
        elif op == b"R":
            await self.echo(stream, reader, value)
        while await stream.receive_some(self.read_size):
            pass  # pragma: no cover - clients send nothing more

    async def sink(
        self, stream: trio.abc.Stream, reader: Reader, total: int | None, *, verify: bool
    ) -> None:
        """Read ``total`` bytes (``None``: until the client's EOF), then acknowledge."""
        digest = hashlib.sha256(reader.pending) if verify else None
        received = len(reader.pending)
        reader.pending.clear()
        receive_some = stream.receive_some
        read_size = self.read_size
        while total is None or received < total:
            chunk = await receive_some(read_size)
            if not chunk:
                if total is None:
                    break
                raise trio.BrokenResourceError("EOF during bulk transfer")
            received += len(chunk)
            if digest is not None:
                digest.update(chunk)
        end = time.perf_counter_ns()
        if total is not None and received != total:
            raise trio.BrokenResourceError(f"received {received} bytes, expected {total}")
        await stream.send_all(ACK.pack(end, digest.digest() if digest else bytes(32)))

    async def echo(self, stream: trio.abc.Stream, reader: Reader, count: int) -> None:
        for _ in range(count):
            payload = await reader.read_exactly(RTT_PAYLOAD)
            if payload is None:
                raise trio.BrokenResourceError("EOF during round trips")
            await stream.send_all(payload)


# -- the connecting side ------------------------------------------------------------------------


@dataclass
class Fairness:
    """Round trips on one logical stream while another moves bulk data on the same connection."""

    rtt_p50_ms: float
    rtt_p99_ms: float
    bulk_MBps: float
    """The bulk stream's rate while the round trips ran (bytes sent by the client)."""


class Client:
    def __init__(
        self,
        material: Material,
        config: p2ptls.StreamConfig,
        ports: dict[Kind, int],
        read_size: int,
        connections: p2ptls.ConnectionConfig,
        *,
        verify: bool = False,
    ) -> None:
        self.material = material
        self.config = config
        self.connections = connections
        self.read_size = read_size
        self.verify = verify
        self.ports = ports
        self.server_record = material.server.record
        self.host: p2ptls.Host | None = None
        """The connecting host of the ``mux`` measurements, while :meth:`running_host` runs."""
        # Full handshakes unless a measurement asks for resumption (resumed_connect).
        full = attrs.evolve(config, resumption=False)
        self.p2p_contexts = [
            p2ptls.SecurityContext(
                identity, material.psk, p2ptls.KnownPeers([material.server.record]), config=full
            )
            for identity in material.clients
        ]
        _, self.tls_context = tls_contexts(material.directory)
        self.tls_sessions: dict[int, ssl.SSLSession | None] = {}

    @contextlib.asynccontextmanager
    async def running_host(self) -> AsyncIterator[p2ptls.Host]:
        """Run the connecting host (one connection to the server's host, made on first use)."""
        config = p2ptls.HostConfig(
            identity=self.material.clients[0],
            psk=self.material.psk,
            peers=[self.material.server.record],
            stream=self.config,
            connections=self.connections,
        )
        async with p2ptls.open_host(config) as host:
            self.host = host
            try:
                yield host
            finally:
                self.host = None

    async def open_logical(self, protocol: str) -> p2ptls.LogicalStream:
        """A logical stream to the server's host, on the one shared connection."""
        if self.host is None:
            raise RuntimeError("the mux measurements run inside running_host()")
        address = ("127.0.0.1", self.ports["mux"])
        return await self.host.open(self.server_record, protocol, address=address)

    async def connect(self, kind: Kind, slot: int = 0) -> trio.abc.Stream:
        if kind == "mux":
            return await self.open_logical(COMMAND_PROTOCOL)
        transport = await trio.open_tcp_stream("127.0.0.1", self.ports[kind])
        stream: trio.abc.Stream
        if kind == "p2ptls":
            stream = p2ptls.SecureStream(
                transport, self.p2p_contexts[slot], remote=self.server_record
            )
            await stream.do_handshake()
        elif kind == "tls":
            stream = trio.SSLStream(transport, self.tls_context, server_hostname=TLS_HOSTNAME)
            await stream.do_handshake()
        else:
            stream = transport
        return stream

    async def bulk(self, kind: Kind, total: int) -> float:
        """MB/s for ``total`` bytes in 64 KiB writes."""
        payload = os.urandom(WRITE_SIZE)
        writes, tail = divmod(total, WRITE_SIZE)
        stream = await self.connect(kind)
        try:
            await stream.send_all(COMMAND.pack(b"V" if self.verify else b"B", total))
            send_all = stream.send_all
            start = time.perf_counter_ns()
            for _ in range(writes):
                await send_all(payload)
            if tail:
                await send_all(payload[:tail])
            ack = await Reader(stream, self.read_size).read_exactly(ACK.size)
            if ack is None:
                raise RuntimeError("server closed before acknowledging the bulk transfer")
            end: int
            digest: bytes
            end, digest = ACK.unpack(ack)
        finally:
            await stream.aclose()
        if self.verify:
            expected = hashlib.sha256()
            for _ in range(writes):
                expected.update(payload)
            expected.update(payload[:tail])
            if digest != expected.digest():
                raise RuntimeError(f"{kind}: the bytes received differ from the bytes sent")
        return total / ((end - start) / 1e9) / 1e6

    async def round_trips(self, kind: Kind, count: int, warmup: int) -> list[float]:
        """Round-trip times of 64-byte ping-pongs, in microseconds (after ``warmup``)."""
        payload = os.urandom(RTT_PAYLOAD)
        stream = await self.connect(kind)
        samples: list[float] = []
        try:
            await stream.send_all(COMMAND.pack(b"R", count + warmup))
            reader = Reader(stream, self.read_size)
            clock = time.perf_counter_ns
            for index in range(count + warmup):
                start = clock()
                await stream.send_all(payload)
                echoed = await reader.read_exactly(RTT_PAYLOAD)
                elapsed = clock() - start
                if echoed != payload:
                    raise RuntimeError("echo mismatch")
                if index >= warmup:
                    samples.append(elapsed / 1e3)
        finally:
            await stream.aclose()
        return samples

    async def opens(self, count: int, concurrency: int, *, exchange: bool) -> float:
        """Logical streams opened per second on the shared connection: open, one 64-byte round
        trip if ``exchange``, close; ``concurrency`` at a time."""
        payload = os.urandom(RTT_PAYLOAD)
        remaining = count

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                stream = await self.open_logical(OPEN_PROTOCOL)
                try:
                    if exchange:
                        await stream.send_all(payload)
                        echoed = await Reader(stream, RTT_PAYLOAD).read_exactly(RTT_PAYLOAD)
                        if echoed != payload:
                            raise RuntimeError("echo mismatch")
                finally:
                    await stream.aclose()

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        return count / (time.perf_counter() - start)

    async def fairness(self, count: int, warmup: int) -> Fairness:
        """64-byte round trips on one logical stream while another logical stream of the same
        connection sends bulk data as fast as it can (started :data:`FAIRNESS_LEAD` bytes
        earlier)."""
        payload = os.urandom(WRITE_SIZE)
        bulk = await self.open_logical(COMMAND_PROTOCOL)
        sent = 0
        flowing = trio.Event()
        stop = trio.Event()

        async def push() -> None:
            nonlocal sent
            send_all = bulk.send_all
            while not stop.is_set():
                await send_all(payload)
                sent += WRITE_SIZE
                if sent >= FAIRNESS_LEAD:
                    flowing.set()
            await bulk.send_eof()
            if await Reader(bulk, self.read_size).read_exactly(ACK.size) is None:
                raise RuntimeError("server closed before acknowledging the bulk transfer")

        try:
            await bulk.send_all(COMMAND.pack(b"S", 0))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(push)
                await flowing.wait()
                sent_before, start = sent, time.perf_counter_ns()
                samples = await self.round_trips("mux", count, warmup)
                bulk_bytes, elapsed_ns = sent - sent_before, time.perf_counter_ns() - start
                stop.set()
        finally:
            await bulk.aclose()
        p50, p99 = percentiles(samples, 50, 99)
        return Fairness(p50 / 1e3, p99 / 1e3, bulk_bytes / (elapsed_ns / 1e9) / 1e6)

    async def resumed_connect(self, kind: Kind, slot: int) -> bool:
        """Connect resuming the slot's last session (a p2ptls ticket, a TLS 1.3 session), make one
        64-byte round trip (the server's new tickets travel with its answer, for both), close.
        Returns whether the handshake was resumed."""
        transport = await trio.open_tcp_stream("127.0.0.1", self.ports[kind])
        stream: p2ptls.SecureStream | trio.SSLStream[trio.SocketStream] | trio.SocketStream
        if kind == "tcp":  # the floor: the same connect, round trip and close, in the clear
            stream = transport
        elif kind == "p2ptls":
            config = attrs.evolve(self.config, resumption=True)
            stream = p2ptls.SecureStream(
                transport, self.p2p_contexts[slot], remote=self.server_record, config=config
            )
        else:
            context = _ResumingContext(self.tls_context, self.tls_sessions.get(slot))
            stream = trio.SSLStream(
                transport,
                context,  # type: ignore[arg-type]  # only wrap_bio is used
                server_hostname=TLS_HOSTNAME,
            )
        try:
            if not isinstance(stream, trio.SocketStream):
                await stream.do_handshake()
            await stream.send_all(COMMAND.pack(b"R", 1) + bytes(RTT_PAYLOAD))
            reader = Reader(stream, self.read_size)
            if await reader.read_exactly(RTT_PAYLOAD) is None:
                raise RuntimeError("no echo")
            if isinstance(stream, trio.SocketStream):
                return True
            if isinstance(stream, p2ptls.SecureStream):
                return stream.resumed
            self.tls_sessions[slot] = stream.session
            return bool(stream.session_reused)
        finally:
            await stream.aclose()

    async def resumed_handshakes(self, kind: Kind, count: int, concurrency: int) -> float:
        """Resumed handshakes per second (connect, resumed handshake, one round trip, close)."""
        for slot in range(concurrency):  # each slot holds a ticket / session from here on
            await self.resumed_connect(kind, slot)
        remaining = count
        full = 0

        async def worker(slot: int) -> None:
            nonlocal remaining, full
            while remaining > 0:
                remaining -= 1
                if not await self.resumed_connect(kind, slot):
                    full += 1

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for slot in range(concurrency):
                nursery.start_soon(worker, slot)
        rate = count / (time.perf_counter() - start)
        if full:
            log(f"warning: {full} of {count} {kind} handshakes were not resumed")
        return rate

    async def handshakes(self, kind: Kind, count: int, concurrency: int) -> float:
        """Handshakes per second: connect, handshake, close; ``concurrency`` at a time."""
        remaining = count

        async def worker(slot: int) -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                stream = await self.connect(kind, slot)
                await stream.aclose()

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for slot in range(concurrency):
                nursery.start_soon(worker, slot)
        return count / (time.perf_counter() - start)


class _ResumingContext:
    """What ``trio.SSLStream`` needs of an ``ssl.SSLContext`` (``wrap_bio``), resuming
    ``session``: the standard library's session reuse (``SSLContext.wrap_bio(..., session=)``),
    which ``trio.SSLStream`` cannot pass itself."""

    def __init__(self, context: ssl.SSLContext, session: ssl.SSLSession | None) -> None:
        self._context = context
        self._session = session

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | None = None,
    ) -> ssl.SSLObject:
        return self._context.wrap_bio(
            incoming,
            outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
            session=self._session,
        )


# -- orchestration ------------------------------------------------------------------------------


@dataclass
class Plan:
    bulk_bytes: int
    rtt_count: int
    rtt_warmup: int
    handshakes: int
    concurrency: int
    open_count: int
    open_concurrency: int
    fairness_count: int
    runs: int
    kinds: list[Kind]
    tests: list[str]

    def runs_test(self, test: str) -> bool:
        """Whether ``test`` is measured (the mux-only tests need the ``mux`` transport)."""
        return test in self.tests and (test not in MUX_TESTS or "mux" in self.kinds)


def _median(values: Iterable[float]) -> float:
    measured = list(values)
    return statistics.median(measured) if measured else math.nan


@dataclass
class Results:
    bulk: dict[Kind, list[float]] = field(default_factory=dict)
    p50: dict[Kind, list[float]] = field(default_factory=dict)
    p99: dict[Kind, list[float]] = field(default_factory=dict)
    handshakes: dict[Kind, list[float]] = field(default_factory=dict)
    resumed: dict[Kind, list[float]] = field(default_factory=dict)
    opens: list[float] = field(default_factory=list)
    opens_exchange: list[float] = field(default_factory=list)
    fairness: list[Fairness] = field(default_factory=list)

    def vs_stream(self, samples: dict[Kind, list[float]]) -> float:
        """The median over rounds of mux / p2ptls, each ratio taken within one round."""
        pairs = zip(samples.get("mux", []), samples.get("p2ptls", []), strict=False)
        return _median(mux / stream for mux, stream in pairs if stream)

    def mux(self) -> dict[str, Any]:
        """The figures of the multiplexed connection (the JSON ``mux`` section)."""
        return {
            "bulk_MBps": _median(self.bulk.get("mux", [])),
            "rtt64_p50_us": _median(self.p50.get("mux", [])),
            "rtt64_p99_us": _median(self.p99.get("mux", [])),
            "streams_open_per_s": _median(self.opens),
            "streams_open_exchange_per_s": _median(self.opens_exchange),
            "fairness": _median(f.rtt_p99_ms for f in self.fairness),
            "fairness_rtt64_p50_ms": _median(f.rtt_p50_ms for f in self.fairness),
            "fairness_bulk_MBps": _median(f.bulk_MBps for f in self.fairness),
            "vs_stream": {
                "bulk_MBps": self.vs_stream(self.bulk),
                "rtt64_p50_us": self.vs_stream(self.p50),
                "rtt64_p99_us": self.vs_stream(self.p99),
            },
        }

    def table(self) -> dict[str, Row]:
        def median(samples: dict[Kind, list[float]]) -> Row:
            return {kind: statistics.median(values) for kind, values in samples.items() if values}

        return {
            "bulk_MBps": median(self.bulk),
            "rtt64_p50_us": median(self.p50),
            "rtt64_p99_us": median(self.p99),
            "handshakes_per_s": median(self.handshakes),
            "resumed_handshakes_per_s": median(self.resumed),
        }


def plan_steps(plan: Plan) -> int:
    """Measurements in the whole plan (for the progress bar)."""
    per_round = 0
    for test in plan.tests:
        if test == "handshake":  # full and resumed
            per_round += 2 * len([k for k in plan.kinds if k in KINDS])
        elif test == "open":
            per_round += 2 if plan.runs_test(test) else 0
        elif test == "fairness":
            per_round += 1 if plan.runs_test(test) else 0
        else:
            per_round += len(plan.kinds)
    return per_round * plan.runs


async def run_plan(client: Client, plan: Plan) -> Results:
    results = Results()
    with progress() as bar:
        task = bar.add_task("stream", total=plan_steps(plan), status="")

        def done(round_index: int, line: str) -> None:
            log(f"[{round_index + 1}/{plan.runs}] {line}")
            bar.advance(task)

        for round_index in range(plan.runs):
            # Rotate the order each round so no kind always runs first (or last) on a warm machine.
            shift = round_index % len(plan.kinds)
            order = plan.kinds[shift:] + plan.kinds[:shift]
            if "bulk" in plan.tests:
                for kind in order:
                    bar.update(task, status=f"run {round_index + 1}: bulk {kind}")
                    value = await client.bulk(kind, plan.bulk_bytes)
                    results.bulk.setdefault(kind, []).append(value)
                    done(round_index, f"bulk {kind}: {value:,.0f} MB/s")
            if "rtt" in plan.tests:
                for kind in order:
                    bar.update(task, status=f"run {round_index + 1}: rtt64 {kind}")
                    samples = await client.round_trips(kind, plan.rtt_count, plan.rtt_warmup)
                    p50, p99 = percentiles(samples, 50, 99)
                    results.p50.setdefault(kind, []).append(p50)
                    results.p99.setdefault(kind, []).append(p99)
                    done(round_index, f"rtt64 {kind}: p50 {p50:.1f} us, p99 {p99:.1f} us")
            if "handshake" in plan.tests:
                for kind in order:
                    if kind not in KINDS:
                        continue
                    bar.update(task, status=f"run {round_index + 1}: handshakes {kind}")
                    await client.handshakes(kind, plan.concurrency, plan.concurrency)  # warm-up
                    value = await client.handshakes(kind, plan.handshakes, plan.concurrency)
                    results.handshakes.setdefault(kind, []).append(value)
                    done(round_index, f"handshakes {kind}: {value:,.1f}/s")
                    bar.update(task, status=f"run {round_index + 1}: resumed handshakes {kind}")
                    value = await client.resumed_handshakes(kind, plan.handshakes, plan.concurrency)
                    results.resumed.setdefault(kind, []).append(value)
                    done(round_index, f"resumed handshakes {kind}: {value:,.1f}/s")
            if plan.runs_test("open"):
                for exchange, rates in ((False, results.opens), (True, results.opens_exchange)):
                    what = "open+rtt64+close" if exchange else "open+close"
                    bar.update(task, status=f"run {round_index + 1}: mux {what}")
                    warmup = plan.open_concurrency * 4
                    await client.opens(warmup, plan.open_concurrency, exchange=exchange)
                    value = await client.opens(
                        plan.open_count, plan.open_concurrency, exchange=exchange
                    )
                    rates.append(value)
                    done(round_index, f"mux {what}: {value:,.0f} streams/s")
            if plan.runs_test("fairness"):
                bar.update(task, status=f"run {round_index + 1}: mux fairness")
                fair = await client.fairness(plan.fairness_count, plan.rtt_warmup)
                results.fairness.append(fair)
                done(
                    round_index,
                    f"mux fairness: rtt64 p50 {fair.rtt_p50_ms:.2f} ms, p99 "
                    f"{fair.rtt_p99_ms:.2f} ms beside bulk at {fair.bulk_MBps:,.0f} MB/s",
                )
        bar.update(task, status="")
    return results


async def run_same_process(material: Material, args: argparse.Namespace, plan: Plan) -> Results:
    config = stream_config(args)
    connections = connection_config(args)
    server = Server(material, config, args.read_size, connections)
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        client = Client(
            material, config, server.ports, args.read_size, connections, verify=args.verify
        )
        async with client.running_host():
            results = await run_plan(client, plan)
        nursery.cancel_scope.cancel()
    if server.errors:
        log(f"warning: {server.errors} server-side connection errors")
    return results


async def run_two_process(material: Material, args: argparse.Namespace, plan: Plan) -> Results:
    material.save()
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--serve-child",
        str(material.directory),
        "--clients",
        str(len(material.clients)),
        "--read-size",
        str(args.read_size),
    ]
    if args.record_size is not None:
        command += ["--record-size", str(args.record_size)]
    if args.receive_size is not None:
        command += ["--receive-size", str(args.receive_size)]
    if args.stream_window is not None:
        command += ["--stream-window", str(args.stream_window)]
    if args.max_stream_window is not None:
        command += ["--max-stream-window", str(args.max_stream_window)]
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert process.stdout is not None and process.stdin is not None
    try:
        line = b""
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(4096)
            if not chunk:
                raise RuntimeError("the server process exited early")
            line += chunk
        ports: dict[Kind, int] = json.loads(line)
        client = Client(
            material,
            stream_config(args),
            ports,
            args.read_size,
            connection_config(args),
            verify=args.verify,
        )
        async with client.running_host():
            return await run_plan(client, plan)
    finally:
        await process.stdin.aclose()  # the child exits when its stdin closes
        with trio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def serve_child(args: argparse.Namespace) -> None:
    material = Material.load(Path(args.serve_child), args.clients)
    server = Server(material, stream_config(args), args.read_size, connection_config(args))
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        print(json.dumps(server.ports), flush=True)
        await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()


# -- report -------------------------------------------------------------------------------------

ROW_LABELS = {
    "bulk_MBps": "bulk MB/s",
    "rtt64_p50_us": "rtt64 p50 us",
    "rtt64_p99_us": "rtt64 p99 us",
    "handshakes_per_s": "handshakes/s",
    "resumed_handshakes_per_s": "resumed handshakes/s (+ 1 round trip)",
}


MUX_ROWS = [
    ("bulk_MBps", "bulk MB/s"),
    ("rtt64_p50_us", "rtt64 p50 us"),
    ("rtt64_p99_us", "rtt64 p99 us"),
    ("streams_open_per_s", "streams/s: open, close"),
    ("streams_open_exchange_per_s", "streams/s: open, rtt64, close"),
    ("fairness", "fairness: rtt64 p99 ms beside bulk"),
    ("fairness_rtt64_p50_ms", "fairness: rtt64 p50 ms beside bulk"),
    ("fairness_bulk_MBps", "fairness: bulk MB/s meanwhile"),
]

MUX_TARGETS: list[tuple[str, Callable[[dict[str, Any]], float], Callable[[float], bool]]] = [
    ("bulk >= 0.9x stream", lambda m: m["vs_stream"]["bulk_MBps"], lambda x: x >= 0.9),
    ("rtt p50 <= 1.1x stream", lambda m: m["vs_stream"]["rtt64_p50_us"], lambda x: x <= 1.1),
    ("streams/s >= 20,000", lambda m: m["streams_open_per_s"], lambda x: x >= 20_000),
    ("fairness p99 < 5 ms", lambda m: m["fairness"], lambda x: x < 5),
]


def _verdict(value: float, ok: Callable[[float], bool]) -> str:
    return "n/a" if math.isnan(value) else ("MET" if ok(value) else "NOT MET")


def report_mux(mux: dict[str, Any], stream: dict[str, Row], plan: Plan) -> None:
    """The table of the multiplexed connection beside the bare ``SecureStream``."""
    say(
        f"mux: logical streams of one shared connection between two hosts; "
        f"{plan.open_count} opens x{plan.open_concurrency} (+{plan.open_concurrency * 4} "
        f"warm-up); fairness: {plan.fairness_count} round trips on one stream beside a bulk "
        f"stream ({FAIRNESS_LEAD // MIB} MiB ahead); mux/stream is the median of the ratios "
        f"within each run"
    )
    rows = []
    for metric, label in MUX_ROWS:
        bare = stream[metric].get("p2ptls") if metric in stream else None
        ratio = mux["vs_stream"].get(metric, math.nan)
        rows.append([label, format_value(mux[metric]), format_value(bare), format_value(ratio)])
    print_table(
        ["metric", "mux", "stream", "mux/stream"],
        rows,
        title=f"Multiplexed on 127.0.0.1 ({median_of(plan.runs)})",
    )
    checks = []
    for description, measure, ok in MUX_TARGETS:
        value = measure(mux)
        checks.append([description, format_value(value), _verdict(value, ok)])
    print_table(["target", "measured", "verdict"], checks, title="Multiplexing targets")


def report(table: dict[str, Row], args: argparse.Namespace, plan: Plan) -> None:
    config = stream_config(args)
    say()
    say(
        f"p2ptls record_size={config.record_size} receive_size={config.receive_size}; "
        f"bulk {plan.bulk_bytes // MIB} MiB in {WRITE_SIZE // 1024} KiB writes, "
        f"read size {args.read_size}; {plan.rtt_count} round trips (+{plan.rtt_warmup} warm-up); "
        f"{plan.handshakes} handshakes x{plan.concurrency}; RSA-{KEY_BITS}; "
        f"{'two processes' if args.two_process else 'one process'}"
    )
    headers = ["metric", "p2ptls", "tls", "tcp", "p2ptls/tls", "p2ptls/tcp"]
    rows = []
    for metric, label in ROW_LABELS.items():
        row = table[metric]
        rows.append(
            [
                label,
                format_value(row.get("p2ptls")),
                format_value(row.get("tls")),
                format_value(row.get("tcp")),
                format_value(_ratio(row, "p2ptls", "tls")),
                format_value(_ratio(row, "p2ptls", "tcp")),
            ]
        )
    print_table(headers, rows, title=f"Streams on 127.0.0.1 ({median_of(plan.runs)})")
    checks = []
    for metric, description, measure, ok in TARGETS:
        value = measure(table[metric])
        checks.append([description, format_value(value), _verdict(value, ok)])
    full = table["handshakes_per_s"].get("p2ptls")
    resumed = table["resumed_handshakes_per_s"].get("p2ptls")
    speedup = resumed / full if resumed and full else math.nan
    checks.append(["resumed >= 5x full (p2ptls)", format_value(speedup), _verdict(speedup, _x5)])
    print_table(["target", "measured", "verdict"], checks, title="Targets")


def _x5(ratio: float) -> bool:
    return ratio >= 5.0


def json_params(args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    """What the JSON document records about how the figures were measured."""
    config = stream_config(args)
    return {
        "bulk_mib": plan.bulk_bytes // MIB,
        "write_size": WRITE_SIZE,
        "read_size": args.read_size,
        "record_size": config.record_size,
        "receive_size": config.receive_size,
        "rtt_count": plan.rtt_count,
        "rtt_warmup": plan.rtt_warmup,
        "handshakes": plan.handshakes,
        "concurrency": plan.concurrency,
        "key_bits": KEY_BITS,
        "transports": plan.kinds,
        "tests": plan.tests,
        "two_process": args.two_process,
        "verify": args.verify,
        "mux": {
            "open_count": plan.open_count,
            "open_concurrency": plan.open_concurrency,
            "open_warmup": plan.open_concurrency * 4,
            "fairness_count": plan.fairness_count,
            "fairness_lead_mib": FAIRNESS_LEAD // MIB,
            "fairness": "p99 in ms of 64-byte round trips on one logical stream while another "
            "logical stream of the same connection sends bulk data",
            "connections": attrs.asdict(connection_config(args)),
        },
    }


def build_plan(args: argparse.Namespace) -> Plan:
    quick = args.quick
    bulk_mib = args.bulk_mib if args.bulk_mib is not None else (64 if quick else 256)
    kinds: list[Kind] = [k for k in ALL_KINDS if args.only is None or k in args.only]
    if "mux" in kinds and "p2ptls" not in kinds:
        kinds.insert(0, "p2ptls")  # the mux figures are ratios to the bare stream of each round
    return Plan(
        bulk_bytes=bulk_mib * MIB,
        rtt_count=args.rtt_count if args.rtt_count is not None else (3000 if quick else 10000),
        rtt_warmup=200 if quick else 500,
        handshakes=args.handshakes if args.handshakes is not None else (200 if quick else 1000),
        concurrency=args.concurrency,
        open_count=args.open_count if args.open_count is not None else (5000 if quick else 20000),
        open_concurrency=args.open_concurrency,
        fairness_count=(
            args.fairness_count if args.fairness_count is not None else (2000 if quick else 5000)
        ),
        runs=args.runs,
        kinds=kinds,
        tests=args.tests,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller volumes (under a minute)")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--record-size", type=int, help="p2ptls StreamConfig.record_size")
    parser.add_argument("--receive-size", type=int, help="p2ptls StreamConfig.receive_size")
    parser.add_argument(
        "--stream-window", type=int, help="p2ptls ConnectionConfig.stream_window of both hosts"
    )
    parser.add_argument(
        "--max-stream-window",
        type=int,
        help="p2ptls ConnectionConfig.max_stream_window of both hosts (window auto-tuning's cap)",
    )
    parser.add_argument(
        "--read-size", type=int, default=65536, help="receive_some size of the benchmark readers"
    )
    parser.add_argument(
        "--bulk-mib", type=int, help="MiB per bulk transfer (default 256, quick 64)"
    )
    parser.add_argument("--rtt-count", type=int, help="measured round trips")
    parser.add_argument("--handshakes", type=int, help="handshakes per measurement")
    parser.add_argument("--concurrency", type=int, default=4, help="handshakes at once (4)")
    parser.add_argument(
        "--open-count", type=int, help="logical streams opened per measurement (20000, quick 5000)"
    )
    parser.add_argument(
        "--open-concurrency", type=int, default=16, help="logical streams opened at once (16)"
    )
    parser.add_argument(
        "--fairness-count", type=int, help="round trips beside the bulk stream (5000, quick 2000)"
    )
    parser.add_argument(
        "--runs",
        "--repeat",
        type=int,
        default=3,
        help="rounds; the median of each figure is reported (3)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=ALL_KINDS,
        help="measure only these transports (mux brings p2ptls, its reference)",
    )
    parser.add_argument(
        "--tests", nargs="+", choices=TESTS, default=list(TESTS), help="which measurements to run"
    )
    parser.add_argument(
        "--verify", action="store_true", help="check the bulk bytes arrive intact (slower)"
    )
    parser.add_argument(
        "--two-process", action="store_true", help="run the accepting side in a child process"
    )
    parser.add_argument("--serve-child", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bulk_mib is not None and args.quick and args.bulk_mib < 64:
        parser.error("--quick still sends at least 64 MiB")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not 1 <= args.open_concurrency <= p2ptls.ConnectionConfig().max_streams_per_peer // 2:
        parser.error("--open-concurrency must be between 1 and half of max_streams_per_peer")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_child:
        trio.run(serve_child, args)
        return 0
    plan = build_plan(args)
    stream_config(args)  # validate the p2ptls options before the slow key generation
    connection_config(args)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="p2ptls-bench-") as tmp:
        log(f"generating RSA-{KEY_BITS} keys and certificates...")
        material = Material.generate(Path(tmp), max(plan.concurrency, 1))
        runner: Callable[[Material, argparse.Namespace, Plan], Awaitable[Results]] = (
            run_two_process if args.two_process else run_same_process
        )
        results = trio.run(runner, material, args, plan)
    table = results.table()
    mux = results.mux()
    report(table, args, plan)
    if "mux" in plan.kinds:
        report_mux(mux, table, plan)
    log(f"total time {time.perf_counter() - started:.1f} s")
    if args.json:
        write_json(
            args.json,
            "stream",
            params=json_params(args, plan),
            quick=args.quick,
            runs=plan.runs,
            results={
                "bulk_MBps": {k: table["bulk_MBps"].get(k) for k in KINDS},
                "rtt64_p50_us": {k: table["rtt64_p50_us"].get(k) for k in KINDS},
                "rtt64_p99_us": {k: table["rtt64_p99_us"].get(k) for k in KINDS},
                "handshakes_per_s": {k: table["handshakes_per_s"].get(k) for k in SECURE_KINDS},
                "resumed_handshakes_per_s": {
                    "p2ptls": table["resumed_handshakes_per_s"].get("p2ptls"),
                    "tls_resumed": table["resumed_handshakes_per_s"].get("tls"),
                },
                "mux": mux if "mux" in plan.kinds else None,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
