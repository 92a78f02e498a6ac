"""A synchronous facade for programs that are not async, shaped like distributed-state-network.

``DSNodeServer``, ``DSNodeConfig`` and ``generate_key`` follow the API of the PyPI package
distributed-state-network 1.2.0 (``DSNodeServer.start(config, create_alert, disconnect_callback,
update_callback, receive_callback)`` or ``DSNodeServer(config, ...)``, both of which start the
node, with a :class:`DSNodeConfig` or a dict; ``server.node.update_data(key, value)``,
``server.node.read_data(node_id, key)``, ``peers()``, ``send_to_node()``, ``stop()``), on top of a
:class:`~p2ptls.state.StateNode` that runs ``trio`` in a background thread::

    from p2ptls.state.facade import DSNodeServer, generate_key

    generate_key("network.key")                       # once; copy it to every node (mode 0600)
    bootstrap = DSNodeServer({"node_id": "bootstrap", "port": 8000,
                              "aes_key_file": "network.key", "bootstrap_nodes": []})
    connector = DSNodeServer({"node_id": "connector", "port": 8001,
                              "aes_key_file": "network.key",
                              "bootstrap_nodes": [{"address": "127.0.0.1", "port": 8000}]})
    connector.node.update_data("foo", "bar")          # returns once bootstrap acknowledged it
    bootstrap.node.read_data("connector", "foo")      # "bar"
    connector.stop(); bootstrap.stop()

How the concepts map (what differs from distributed-state-network, and why):

* **Network key.** :func:`generate_key` writes a p2ptls network key file (32 random bytes, mode
  0600). Every node needs it (``network_key_file``, or its other name ``aes_key_file``): it admits
  members to connections and derives the state network id. There is no unencrypted mode, and no
  key given inline (``aes_key`` is refused: a key belongs in a 0600 file).
* **Identities.** Every node has an RSA identity, created on first start and kept in
  ``data_dir`` with its database, its replay state and its own peer record. File names are
  derived from a hash of ``node_id`` (``node-<sha256 prefix>.key``, ``.sqlite3``,
  ``.record.json``): a node id never becomes a path component.
* **Node ids are names.** Peers are identified by their peer ids (hashes of their public keys);
  ``node_id`` is a human name. A node writes its name into its own signed state (key
  ``_dsn.node_id``, reserved), so every other node learns it with the state; ``read_data`` and
  ``send_to_node`` resolve a name to the peer that claims it. Names are claims, not unique: a
  name pinned by a bootstrap record that carries it wins; otherwise if two peers claim one name,
  the call raises :class:`AmbiguousNode`. A 64-digit peer id in hex is accepted wherever a name
  is. The name is also the ``name`` of the node's advertised peer record.
* **Bootstrap.** The handshake encrypts to the other node's public key, so a node cannot be
  dialled by address alone and p2ptls has no first-contact fetch of a record by address (that
  would be trust on first use). A ``bootstrap_nodes`` entry is therefore resolved to a peer
  record, in this order: ``{"record": {...}}`` (a peer record as ``PeerRecord.to_dict()``, e.g.
  from ``p2ptls identity show``), ``{"record_file": "path"}``, or ``{"address": host, "port":
  port}`` alone, which is looked up among the record files in ``record_dir`` (default
  ``data_dir``): every node writes its own record there when it starts, so nodes that share a
  directory (one machine, or a directory copied between machines) find each other by address as
  in the original README. Record files must not be writable by group or others. An address
  with no record is a configuration error (:class:`BootstrapError`); further members are
  learned from the network and admitted with ``admit_network_members`` (they must hold the
  network key and prove their own key).
* **Values** are strings (UTF-8) as in the original; ``read_bytes`` returns raw bytes.
  ``update_data`` returns once the write is durable locally and every member connected at that
  moment has acknowledged it (answered a ping sent after the write: see
  :meth:`~p2ptls.state.StateNode.wait_acknowledged`), so a read on such a node right after it
  sees the new value, as with the original's synchronous HTTP push. After ``ack_timeout``
  (default 5 s) it raises :class:`NotAcknowledged`; ``update_data(..., wait=False)`` returns
  once durable locally. ``wait_for_data`` waits for a key on the reading side.
* **Stale state.** A member that goes away is no longer listed by ``peers()`` (as in the
  original), but its last known state stays readable.
* **Callbacks** are called on one dispatcher thread (never the trio thread, so they may call
  back into the facade): ``update_callback()`` after other nodes' state changed (once per
  received message), ``disconnect_callback()`` when a member becomes unreachable,
  ``receive_callback(node_id, data)`` for a message sent with ``send_to_node``, and
  ``create_alert(message)`` for problems (no bootstrap node reached, a peer rejected for breaking
  the protocol, an owner caught equivocating).
* Not carried over: ``whitelist_node_ids`` (every holder of the network key is admitted; use the
  async API's ``peer_filter`` for a policy by peer id), the HTTP transport and ``logging_dir``
  (logging goes to the ``logging`` module, logger ``p2ptls.state.facade``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import trio

from .._errors import PeerDatabaseError
from .._files import StrPath, check_own_path, write_private_file
from ..identity import Identity, NetworkKey, PeerId, PeerRecord
from .config import StateNodeConfig
from .errors import NotConnected, StateError
from .events import (
    EquivocationDetected,
    MemberChanged,
    MemberState,
    PeerRejected,
    StateChanged,
    SubscriptionOverflowed,
)
from .node import StateNode, open_state_node

log = logging.getLogger("p2ptls.state.facade")

T = TypeVar("T")

NAME_KEY = "_dsn.node_id"
"""The key of its own state under which a facade node publishes its name (``node_id``)."""
RESERVED_PREFIX = "_dsn."
"""Keys starting with this are the facade's own; ``update_data`` refuses them."""
MAX_NODE_ID_BYTES = 200
MAX_RECORD_FILE_BYTES = 64 * 1024
MAX_RECORD_FILES = 4096
CALLBACK_QUEUE = 10_000

UpdateCallback = Callable[[], Any]
DisconnectCallback = Callable[[], Any]
ReceiveCallback = Callable[[str, bytes], Any]
AlertCallback = Callable[[str], Any]


class FacadeError(StateError):
    """Base class of the facade's errors."""


class NodeStopped(FacadeError):
    """The node was stopped (or its background thread ended); it cannot be used any more."""


class UnknownNode(FacadeError, KeyError):
    """No member claims this node id (yet): its state has not reached this node."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown node"


class AmbiguousNode(FacadeError, LookupError):
    """Several members claim this node id; address them by peer id (hex) instead."""


class BootstrapError(FacadeError):
    """A ``bootstrap_nodes`` entry cannot be resolved to a peer record."""


class NotAcknowledged(FacadeError, TimeoutError):
    """Connected members did not acknowledge a write in time (``node_ids`` lists them).

    The write itself is durable here and reaches them later, as it reaches any member.
    """

    def __init__(self, message: str, node_ids: Sequence[str]) -> None:
        super().__init__(message)
        self.node_ids = list(node_ids)


def generate_key(path: StrPath) -> NetworkKey:
    """Create the network key file ``path`` (mode 0600) that every node of a network uses.

    Refuses to overwrite an existing file (``FileExistsError``; the check and the creation are
    one atomic step). Returns the key (its ``fingerprint`` is safe to show).
    """
    key = NetworkKey.generate()
    key.save(path)
    return key


def file_stem(node_id: str) -> str:
    """The file name stem of a node's files: ``node-`` and 32 hex digits of SHA-256(node_id).

    A node id is never used as a path component (it may hold ``/``, ``..`` or anything else).
    """
    return "node-" + hashlib.sha256(node_id.encode("utf-8")).hexdigest()[:32]


def save_peer_record(path: StrPath, record: PeerRecord) -> None:
    """Write a peer record file (JSON of ``PeerRecord.to_dict()``, mode 0600, atomically)."""
    write_private_file(path, json.dumps(record.to_dict(), indent=2).encode() + b"\n")


def load_peer_record(path: StrPath) -> PeerRecord:
    """Read a peer record file. Refuses a file that another user owns or that group or others
    may write (whoever can replace it could substitute another key), an oversized file and a
    malformed record."""
    target = Path(path)
    try:
        check_own_path(target, "peer record file", BootstrapError)
        info = target.stat()
    except FileNotFoundError:
        raise BootstrapError(f"peer record file {str(target)!r} does not exist") from None
    if info.st_size > MAX_RECORD_FILE_BYTES:
        raise BootstrapError(f"peer record file {str(target)!r} is too large")
    try:
        data = json.loads(target.read_bytes())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return PeerRecord.from_dict(data)
    except (ValueError, PeerDatabaseError) as exc:
        raise BootstrapError(f"peer record file {str(target)!r}: {exc}") from None


def _normal_host(host: str) -> str:
    return "127.0.0.1" if host == "localhost" else host


@dataclass
class BootstrapNode:
    """One ``bootstrap_nodes`` entry: a peer record, a record file, or an address to look up.

    ``address``/``port``, when given with a record, override the record's address.
    """

    address: str | None = None
    port: int | None = None
    record: PeerRecord | None = None
    record_file: Path | None = None

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> BootstrapNode:
        """Parse ``{"address": ..., "port": ...}``, ``{"record": {...}}`` or
        ``{"record_file": "..."}`` (address and port may accompany either)."""
        unknown = set(data) - {"address", "port", "record", "record_file"}
        if unknown:
            raise BootstrapError(f"unknown bootstrap entry fields: {sorted(unknown)}")
        address = data.get("address")
        port = data.get("port")
        if address is not None and not isinstance(address, str):
            raise BootstrapError("bootstrap address must be a string")
        if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
            raise BootstrapError("bootstrap port must be an integer in 1..65535")
        record = None
        raw_record = data.get("record")
        if isinstance(raw_record, PeerRecord):
            record = raw_record
        elif raw_record is not None:
            if not isinstance(raw_record, dict):
                raise BootstrapError("bootstrap record must be a peer record object")
            try:
                record = PeerRecord.from_dict(raw_record)
            except PeerDatabaseError as exc:
                raise BootstrapError(f"bootstrap record: {exc}") from None
        record_file = data.get("record_file")
        if record_file is not None and not isinstance(record_file, str | os.PathLike):
            raise BootstrapError("bootstrap record_file must be a path")
        entry = BootstrapNode(
            address, port, record, Path(record_file) if record_file is not None else None
        )
        if record is None and record_file is None and (address is None or port is None):
            raise BootstrapError("a bootstrap entry needs a record, a record_file or an address")
        return entry

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"address": self.address, "port": self.port}
        if self.record is not None:
            data["record"] = self.record.to_dict()
        if self.record_file is not None:
            data["record_file"] = str(self.record_file)
        return data


def _bootstrap_entry(value: BootstrapNode | Mapping[str, Any]) -> BootstrapNode:
    if isinstance(value, BootstrapNode):
        return value
    if isinstance(value, Mapping):
        return BootstrapNode.from_dict(value)
    raise BootstrapError("a bootstrap entry is a mapping or a BootstrapNode")


@dataclass
class DSNodeConfig:
    """How to run one facade node (compare distributed-state-network's ``DSNodeConfig``).

    ``network_key_file`` is required (see :func:`generate_key`). ``port`` 0 picks a free port.
    """

    node_id: str
    port: int = 0
    network_key_file: StrPath | None = None
    """The network key file (see :func:`generate_key`); ``aes_key_file`` is another name for it."""
    bootstrap_nodes: Sequence[BootstrapNode | Mapping[str, Any]] = field(default_factory=list)
    """Members to join through: :class:`BootstrapNode` entries or their dict forms."""
    data_dir: Path = Path("dsn-data")
    """Identity, database, replay state and peer record of the node (created mode 0700; an
    existing one must belong to the running user and not be writable by group or others)."""
    network_ip: str = "127.0.0.1"
    """The address other nodes reach this one at (advertised, and written to its record)."""
    listen_ip: str | None = None
    """Where to listen (default ``network_ip``; ``"0.0.0.0"`` for every interface)."""
    record_dir: Path | None = None
    """Where address-only bootstrap entries are looked up (default ``data_dir``)."""
    key_bits: int = 3072
    """RSA size of a newly created identity."""
    durability: Literal["full", "normal"] = "full"
    persistent: bool = True
    """False: keep the state in memory only (nothing survives a restart, as in the original)."""
    start_timeout: float = 10.0
    """Seconds ``start`` waits for the first bootstrap node (then alerts and carries on)."""
    coalesce_delay: float = 0.001
    """Seconds to wait for more writes to sign in one batch (0: sign at once)."""
    ack_timeout: float = 5.0
    """Seconds ``update_data`` waits for connected members to acknowledge a write."""
    aes_key_file: StrPath | None = None
    """Another name for ``network_key_file`` (distributed-state-network users know the network
    key as the AES key)."""
    entries: list[BootstrapNode] = field(init=False, repr=False)
    """``bootstrap_nodes``, parsed."""

    def __post_init__(self) -> None:
        if self.aes_key_file is not None:
            if self.network_key_file is not None and Path(self.network_key_file) != Path(
                self.aes_key_file
            ):
                raise ValueError("network_key_file and aes_key_file name different files")
            self.network_key_file = self.aes_key_file
        if not isinstance(self.node_id, str) or not self.node_id:
            raise ValueError("node_id must be a non-empty string")
        if len(self.node_id.encode("utf-8")) > MAX_NODE_ID_BYTES:
            raise ValueError(f"node_id is at most {MAX_NODE_ID_BYTES} bytes of UTF-8")
        if len(self.node_id) == 64 and _is_hex(self.node_id):
            raise ValueError("node_id must not look like a peer id (64 hex digits)")
        if self.network_ip in ("", "0.0.0.0", "::"):
            raise ValueError(
                "network_ip is the address others reach this node at; to listen on every "
                "interface set listen_ip='0.0.0.0' and network_ip to this machine's address"
            )
        if not isinstance(self.port, int) or not 0 <= self.port < 65536:
            raise ValueError("port must be an integer in 0..65535")
        self.entries = [_bootstrap_entry(entry) for entry in self.bootstrap_nodes]
        self.bootstrap_nodes = list(self.entries)
        self.data_dir = Path(self.data_dir)
        if self.record_dir is not None:
            self.record_dir = Path(self.record_dir)
        if self.durability not in ("full", "normal"):
            raise ValueError("durability must be 'full' or 'normal'")
        if self.start_timeout <= 0:
            raise ValueError("start_timeout must be positive")
        if self.ack_timeout <= 0:
            raise ValueError("ack_timeout must be positive")

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> DSNodeConfig:
        """Build a config from a dict of the original's shape (``node_id``, ``port``,
        ``bootstrap_nodes``) plus ``network_key_file`` and the fields of this class.

        ``aes_key_file`` is another name for ``network_key_file``; ``credential_dir`` is taken as
        ``data_dir``; ``logging_dir`` is ignored, and so is ``network_ip: None`` (the default
        address is used); ``aes_key`` is refused (use a key file); unknown keys are refused.
        """
        known = {
            "node_id",
            "port",
            "network_key_file",
            "aes_key_file",
            "ack_timeout",
            "bootstrap_nodes",
            "data_dir",
            "network_ip",
            "listen_ip",
            "record_dir",
            "key_bits",
            "durability",
            "persistent",
            "start_timeout",
            "coalesce_delay",
        }
        options = dict(data)
        if options.get("aes_key") is not None:
            raise ValueError("aes_key is not used: pass network_key_file (see generate_key)")
        options.pop("aes_key", None)
        options.pop("logging_dir", None)
        if options.get("network_ip", "") is None:
            del options["network_ip"]
        if "credential_dir" in options:
            options.setdefault("data_dir", options.pop("credential_dir"))
        if options.get("whitelist_node_ids"):
            raise ValueError("whitelist_node_ids is not supported (see the facade's docs)")
        options.pop("whitelist_node_ids", None)
        unknown = set(options) - known
        if unknown:
            raise ValueError(f"unknown configuration keys: {sorted(unknown)}")
        if "node_id" not in options:
            raise ValueError("node_id is required")
        return DSNodeConfig(**options)

    @property
    def identity_path(self) -> Path:
        return self.data_dir / f"{file_stem(self.node_id)}.key"

    @property
    def database_path(self) -> Path:
        return self.data_dir / f"{file_stem(self.node_id)}.sqlite3"

    @property
    def replay_path(self) -> Path:
        return self.data_dir / f"{file_stem(self.node_id)}.replay.json"

    @property
    def record_path(self) -> Path:
        """Where this node writes its own peer record when it starts."""
        return self.data_dir / f"{file_stem(self.node_id)}.record.json"


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def _load_or_create_identity(config: DSNodeConfig) -> Identity:
    path = config.identity_path
    if path.exists():
        return Identity.load(path)
    identity = Identity.generate(config.key_bits)
    identity.save(path)
    log.info("%s: created identity %s in %s", config.node_id, identity.peer_id.short, path)
    return identity


def _prepare_dir(path: Path) -> None:
    """Create the data directory (mode 0700), or check that an existing one is ours alone."""
    if not path.exists():
        path.mkdir(mode=0o700, parents=True)
        return
    if not path.is_dir():
        raise FacadeError(f"data directory {str(path)!r} is not a directory")
    check_own_path(path, "data directory", FacadeError)


def resolve_bootstrap(
    entries: Sequence[BootstrapNode], record_dir: Path, own: PeerId | None = None
) -> list[PeerRecord]:
    """Turn bootstrap entries into peer records with addresses (see the module docs).

    Raises :class:`BootstrapError` for an entry that names no usable record.
    """
    records: list[PeerRecord] = []
    index: dict[tuple[str, int], list[tuple[Path, PeerRecord]]] | None = None
    for entry in entries:
        record = entry.record
        if record is None and entry.record_file is not None:
            record = load_peer_record(entry.record_file)
        if record is None:
            assert entry.address is not None and entry.port is not None
            if index is None:
                index = _record_index(record_dir, own)
            wanted = (_normal_host(entry.address), entry.port)
            found = index.get(wanted, [])
            if not found:
                raise BootstrapError(
                    f"no peer record for {entry.address}:{entry.port} in {str(record_dir)!r}: "
                    "the handshake needs the node's public key; give the entry a 'record' or "
                    "'record_file' (its node writes one when it starts)"
                )
            if len({r.peer_id for _path, r in found}) > 1:
                names = ", ".join(sorted(p.name for p, _r in found))
                raise BootstrapError(
                    f"several peer records in {str(record_dir)!r} claim {entry.address}:"
                    f"{entry.port} ({names}); give the entry a 'record_file'"
                )
            record = found[0][1]
        if entry.address is not None and entry.port is not None:
            record = record.with_address(entry.address, entry.port)
        if record.address is None:
            raise BootstrapError(f"bootstrap record {record.peer_id.short} has no address")
        records.append(record)
    return records


def _record_index(
    record_dir: Path, own: PeerId | None
) -> dict[tuple[str, int], list[tuple[Path, PeerRecord]]]:
    index: dict[tuple[str, int], list[tuple[Path, PeerRecord]]] = {}
    if not record_dir.is_dir():
        return index
    # Whoever may add or remove files here could inject a record or hide the right one.
    check_own_path(record_dir, "record directory", BootstrapError)
    for count, path in enumerate(sorted(record_dir.glob("*.record.json"))):
        if count >= MAX_RECORD_FILES:
            break
        try:
            record = load_peer_record(path)
        except BootstrapError as exc:
            log.warning("skipping %s", exc)
            continue
        if record.address is None or record.peer_id == own:
            continue
        host, port = record.address
        index.setdefault((_normal_host(host), port), []).append((path, record))
    return index


class _Dispatcher:
    """Runs callbacks on one thread of its own, in order; a full queue drops (and counts)."""

    def __init__(self, name: str) -> None:
        self._queue: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = queue.Queue(
            CALLBACK_QUEUE
        )
        self.dropped = 0
        self.thread = threading.Thread(target=self._run, name=f"{name}-callbacks", daemon=True)
        self.thread.start()

    def post(self, callback: Callable[..., Any] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            self._queue.put_nowait((callback, args))
        except queue.Full:
            self.dropped += 1
            log.warning("callback queue full; a callback was dropped")

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            callback, args = item
            try:
                callback(*args)
            except Exception:
                log.exception("a facade callback raised")

    def close(self) -> None:
        while True:
            try:
                self._queue.put(None, timeout=1.0)
                break
            except queue.Full:
                continue
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=10)


class DSNode:
    """The ``server.node`` object: reads and writes of one running node, from any thread.

    Every method blocks the calling thread until the node's trio thread has done the work; none
    may be called from inside that trio thread (callbacks run elsewhere, so they may call them).
    """

    def __init__(self, server: DSNodeServer) -> None:
        self._server = server
        self.update_cb: UpdateCallback | None = None
        self.receive_cb: ReceiveCallback | None = None
        self.disconnect_cb: DisconnectCallback | None = None

    @property
    def node_id(self) -> str:
        return self._server.config.node_id

    @property
    def peer_id(self) -> PeerId:
        return self._server.peer_id

    # -- writing --------------------------------------------------------------------------------

    def update_data(
        self, key: str, value: str | bytes, *, wait: bool = True, timeout: float | None = None
    ) -> None:
        """Set ``key`` of this node's state to ``value`` (a string, stored as UTF-8, or bytes).

        The write is durable locally first. Then, as in distributed-state-network, the call
        waits until every member connected at that moment has acknowledged it (proved that it
        holds it), so ``read_data`` on those nodes sees it as soon as this returns. ``timeout``
        (default ``config.ack_timeout``) bounds that wait: then :class:`NotAcknowledged` names
        the members that did not answer (the write still reaches them later). A member whose
        connection ends meanwhile is not waited for. ``wait=False`` returns once durable locally.
        """
        self.update_many({key: value}, wait=wait, timeout=timeout)

    def update_many(
        self,
        values: Mapping[str, str | bytes | None],
        *,
        wait: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Set several keys in one write (``None`` deletes a key); waits as :meth:`update_data`."""
        changes = {_user_key(k): None if v is None else _encode(v) for k, v in values.items()}
        server = self._server
        server._call(server._write, changes, wait, timeout)

    def delete_data(self, key: str, *, wait: bool = True, timeout: float | None = None) -> None:
        """Delete ``key`` from this node's state (a signed tombstone replaces it everywhere);
        waits as :meth:`update_data`."""
        self.update_many({key: None}, wait=wait, timeout=timeout)

    # -- reading --------------------------------------------------------------------------------

    def read_bytes(self, node_id: str, key: str) -> bytes | None:
        """The value ``node_id`` holds for ``key`` as this node knows it, as bytes.

        Raises :class:`UnknownNode` if no member claims ``node_id`` (yet).
        """
        server = self._server

        def read() -> bytes | None:
            return server.state_node.get(server._resolve(node_id), key)

        return server._call_sync(read)

    def read_data(self, node_id: str, key: str) -> str | None:
        """The value ``node_id`` holds for ``key``, decoded as UTF-8 (``None``: no such key).

        Local: no network request. Raises :class:`UnknownNode` for a node not known (yet).
        """
        value = self.read_bytes(node_id, key)
        return value.decode("utf-8") if value is not None else None

    def state(self, node_id: str) -> dict[str, str]:
        """Every key of ``node_id``'s state (the facade's own keys left out), decoded."""
        server = self._server

        def read() -> dict[str, bytes]:
            return server.state_node.snapshot(server._resolve(node_id))

        values = server._call_sync(read)
        return {
            k: v.decode("utf-8", "replace")
            for k, v in values.items()
            if not k.startswith(RESERVED_PREFIX)
        }

    def peers(self) -> list[str]:
        """This node's id and the ids of the members it is connected to.

        A member whose state has not arrived yet is listed by its peer id in hex.
        """
        server = self._server

        def read() -> list[str]:
            node = server.state_node
            names = [server.config.node_id]
            for member in node.members():
                if member.state is MemberState.CONNECTED:
                    names.append(server._name_of(member.peer_id))
            return names

        return server._call_sync(read)

    def wait_for_data(
        self, node_id: str, key: str, value: str | bytes | None = None, timeout: float = 10.0
    ) -> str:
        """Block until this node holds ``key`` of ``node_id`` (equal to ``value`` if given) and
        return it decoded. Raises ``TimeoutError`` after ``timeout`` seconds."""
        server = self._server
        expected = _encode(value) if value is not None else None

        def ready() -> bool:
            try:
                held = server.state_node.get(server._resolve(node_id), key)
            except UnknownNode:
                return False
            return held is not None and (expected is None or held == expected)

        server._wait(ready, timeout)
        found = self.read_bytes(node_id, key)
        assert found is not None
        return found.decode("utf-8")

    def wait_for_peer(self, node_id: str, timeout: float = 10.0) -> None:
        """Block until a member claiming ``node_id`` is connected (``TimeoutError`` after
        ``timeout`` seconds)."""
        server = self._server

        def ready() -> bool:
            try:
                peer_id = server._resolve(node_id)
            except UnknownNode:
                return False
            member = server.state_node.member(peer_id)
            return member is not None and member.state is MemberState.CONNECTED

        server._wait(ready, timeout)

    # -- messages -------------------------------------------------------------------------------

    def send_to_node(self, node_id: str, data: bytes) -> None:
        """Send ``data`` to a connected member; its ``receive_callback(our node_id, data)`` runs.

        Returns once written to the secure stream. Raises :class:`~p2ptls.state.NotConnected`
        if that node is not connected.
        """
        server = self._server
        payload = bytes(data)

        async def send() -> None:
            await server.state_node.send_to(server._resolve(node_id), payload)

        server._call(send)


def _user_key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError("a key is a str")
    if key.startswith(RESERVED_PREFIX):
        raise ValueError(f"keys starting with {RESERVED_PREFIX!r} are reserved")
    return key


def _encode(value: str | bytes) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError("a value is a str or bytes")


class DSNodeServer:
    """One node run in a background thread (compare distributed-state-network's server).

    Create and start with :meth:`start`; stop with :meth:`stop` (or use it as a context
    manager). ``server.node`` holds the data methods; the server offers them too.
    """

    def __init__(
        self,
        config: DSNodeConfig | Mapping[str, Any],
        create_alert: AlertCallback | None = None,
        disconnect_callback: DisconnectCallback | None = None,
        update_callback: UpdateCallback | None = None,
        receive_callback: ReceiveCallback | None = None,
    ) -> None:
        """Start a node (see :meth:`start`); ``config`` may be a dict of
        :meth:`DSNodeConfig.from_dict`'s shape."""
        if not isinstance(config, DSNodeConfig):
            config = DSNodeConfig.from_dict(config)
        if config.network_key_file is None:
            raise ValueError("network_key_file is required (create one with generate_key)")
        self.config = config
        self.create_alert: AlertCallback = create_alert or _log_alert
        self.node = DSNode(self)
        self.node.update_cb = update_callback
        self.node.receive_cb = receive_callback
        self.node.disconnect_cb = disconnect_callback
        self.running = False
        self._shut_down = False
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop_event: trio.Event | None = None
        self._state_node: StateNode | None = None
        self._dispatcher: _Dispatcher | None = None
        self._pinned: dict[str, PeerId] = {}
        self._bootstrap: list[PeerRecord] = []
        self._lock = threading.Lock()
        self._start()

    generate_key = staticmethod(generate_key)

    # -- life cycle -----------------------------------------------------------------------------

    @staticmethod
    def start(
        config: DSNodeConfig | Mapping[str, Any],
        create_alert: AlertCallback | None = None,
        disconnect_callback: DisconnectCallback | None = None,
        update_callback: UpdateCallback | None = None,
        receive_callback: ReceiveCallback | None = None,
    ) -> DSNodeServer:
        """Create the node's files if needed, start it in a background thread and join the
        network through ``bootstrap_nodes`` (the same as ``DSNodeServer(config, ...)``).

        ``config`` is a :class:`DSNodeConfig` or a dict of :meth:`DSNodeConfig.from_dict`'s
        shape. Returns once the node listens and, if it has bootstrap nodes, once it is connected
        to one of them and holds its state (or, after ``start_timeout``, with an alert "Could
        not connect to any bootstrap node", like the original; it keeps trying in the
        background).
        """
        return DSNodeServer(
            config, create_alert, disconnect_callback, update_callback, receive_callback
        )

    def _start(self) -> None:
        config = self.config
        if self._thread is not None:
            raise RuntimeError("this server was started already")
        _prepare_dir(config.data_dir)
        assert config.network_key_file is not None
        psk = NetworkKey.load(config.network_key_file)
        identity = _load_or_create_identity(config)
        self._bootstrap = resolve_bootstrap(
            config.entries, config.record_dir or config.data_dir, identity.peer_id
        )
        for record in self._bootstrap:
            if record.name:
                self._pinned[record.name] = record.peer_id
        listen_host = config.listen_ip or config.network_ip
        advertise = None
        if listen_host != config.network_ip and config.port:
            advertise = (config.network_ip, config.port)
        state_config = StateNodeConfig(
            identity=identity,
            psk=psk,
            database=config.database_path if config.persistent else None,
            listen=(listen_host, config.port),
            advertise=advertise,
            bootstrap=self._bootstrap,
            name=config.node_id,
            durability=config.durability,
            coalesce_delay=config.coalesce_delay,
            replay_state_path=str(config.replay_path) if config.persistent else None,
        )
        self._dispatcher = _Dispatcher(f"dsn-{file_stem(config.node_id)[5:13]}")
        self._thread = threading.Thread(
            target=self._thread_main,
            args=(state_config,),
            name=f"dsn-{file_stem(config.node_id)[5:13]}",
            daemon=True,
        )
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            self._dispatcher.close()
            self._shut_down = True
            raise self._failure
        self.running = True
        record = self.peer_record
        port = record.address[1] if record.address else config.port
        save_peer_record(config.record_path, record.with_address(config.network_ip, port))
        if self._bootstrap:
            self._await_bootstrap()

    def _await_bootstrap(self) -> None:
        ids = [record.peer_id for record in self._bootstrap]

        def joined() -> bool:
            node = self.state_node
            for peer_id in ids:
                member = node.member(peer_id)
                # Connected, and its state arrived (its name; a node that is not a facade
                # may have no name, then any of its state).
                if (
                    member is not None
                    and member.state is MemberState.CONNECTED
                    and (node.get(peer_id, NAME_KEY) is not None or member.version != (0, 0))
                ):
                    return True
            return False

        try:
            self._wait(joined, self.config.start_timeout)
        except TimeoutError:
            log.warning("%s: could not connect to any bootstrap node", self.config.node_id)
            self._alert("Could not connect to any bootstrap node")

    def _thread_main(self, state_config: StateNodeConfig) -> None:
        try:
            trio.run(self._trio_main, state_config)
        except BaseException as exc:
            if not self._ready.is_set():
                self._failure = _single(exc)
            else:
                log.exception("%s: the node's thread failed", self.config.node_id)
                self._alert(f"node stopped after an error: {exc!r}")
        finally:
            self.running = False
            self._shut_down = True
            self._ready.set()

    async def _trio_main(self, state_config: StateNodeConfig) -> None:
        async with open_state_node(state_config) as node:
            name = self.config.node_id.encode("utf-8")
            if node.get(node.peer_id, NAME_KEY) != name:
                await node.set(NAME_KEY, name)
            self._state_node = node
            self._token = trio.lowlevel.current_trio_token()
            self._stop_event = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._forward_events, node)
                nursery.start_soon(self._forward_messages, node)
                self._ready.set()
                await self._stop_event.wait()
                nursery.cancel_scope.cancel()

    async def _forward_events(self, node: StateNode) -> None:
        types = (StateChanged, MemberChanged, PeerRejected, EquivocationDetected)
        while True:
            events = node.subscribe(*types)
            async with events:
                async for event in events:
                    changed = self._dispatch(event)
                    while True:  # whatever else is ready: one update callback for all of it
                        try:
                            more = events.receive_nowait()
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                        changed = self._dispatch(more) or changed
                    if changed:
                        self._post(self.node.update_cb)
            # The channel ended: the subscriber overflowed (or the node is closing).
            await trio.lowlevel.checkpoint()

    def _dispatch(self, event: object) -> bool:
        """Post what ``event`` calls for; True if it is a change of another node's state."""
        if isinstance(event, StateChanged):
            return not event.local
        if isinstance(event, SubscriptionOverflowed):
            return True
        if isinstance(event, MemberChanged):
            if event.status.state is MemberState.UNREACHABLE:
                self._post(self.node.disconnect_cb)
        elif isinstance(event, PeerRejected):
            self._alert(f"rejected peer {event.peer_id.short}: {event.reason}")
        elif isinstance(event, EquivocationDetected):
            self._alert(f"node {event.owner.short} signed two different states (equivocation)")
        return False

    async def _forward_messages(self, node: StateNode) -> None:
        async for message in node.direct_messages:
            callback = self.node.receive_cb
            if callback is not None:
                self._post(callback, self._name_of(message.sender), message.payload)

    def _post(self, callback: Callable[..., Any] | None, *args: Any) -> None:
        if self._dispatcher is not None:
            self._dispatcher.post(callback, *args)

    def _alert(self, message: str) -> None:
        self._post(self.create_alert, message)

    def stop(self) -> None:
        """Stop the node: close its connections and database and end its threads. Idempotent."""
        with self._lock:
            if self._thread is None or (self._shut_down and not self._thread.is_alive()):
                self._shut_down = True
                if self._dispatcher is not None:
                    self._dispatcher.close()
                return
            self._shut_down = True
        token, stop_event = self._token, self._stop_event
        if token is not None and stop_event is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(stop_event.set, trio_token=token)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)
        self.running = False
        if self._dispatcher is not None:
            self._dispatcher.close()

    def is_shut_down(self) -> bool:
        return self._shut_down

    def __enter__(self) -> DSNodeServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- the original's server methods ----------------------------------------------------------

    def node_id(self) -> str:
        return self.config.node_id

    def peers(self) -> list[str]:
        """See :meth:`DSNode.peers`."""
        return self.node.peers()

    def read_data(self, node_id: str, key: str) -> str | None:
        """See :meth:`DSNode.read_data`."""
        return self.node.read_data(node_id, key)

    def update_data(
        self, key: str, value: str | bytes, *, wait: bool = True, timeout: float | None = None
    ) -> None:
        """See :meth:`DSNode.update_data`."""
        self.node.update_data(key, value, wait=wait, timeout=timeout)

    def send_to_node(self, node_id: str, data: bytes) -> None:
        """See :meth:`DSNode.send_to_node`."""
        self.node.send_to_node(node_id, data)

    def set_receive_cb(self, cb: ReceiveCallback) -> None:
        self.node.receive_cb = cb

    def set_update_cb(self, cb: UpdateCallback) -> None:
        self.node.update_cb = cb

    def set_disconnect_cb(self, cb: DisconnectCallback) -> None:
        self.node.disconnect_cb = cb

    def receive_data(self, data: bytes) -> None:
        """Hand ``data`` to this node's own receive callback (as the original does)."""
        if self.node.receive_cb is not None:
            self.node.receive_cb(self.config.node_id, data)

    # -- p2ptls specifics -----------------------------------------------------------------------

    @property
    def state_node(self) -> StateNode:
        """The underlying :class:`StateNode` (use it only from its trio thread)."""
        if self._state_node is None:
            raise NodeStopped("the node is not running")
        return self._state_node

    @property
    def peer_id(self) -> PeerId:
        return self.state_node.peer_id

    @property
    def peer_record(self) -> PeerRecord:
        """This node's peer record (name = node_id, with its address): what others bootstrap
        from. It is also written to ``config.record_path`` at start."""
        return self._call_sync(lambda: self.state_node.peer_record(self.config.node_id))

    def _call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        token = self._live_token()
        try:
            return trio.from_thread.run(function, *args, trio_token=token)
        except trio.RunFinishedError:
            raise NodeStopped("the node has stopped") from None

    def _call_sync(self, function: Callable[..., T], *args: Any) -> T:
        token = self._live_token()
        try:
            return trio.from_thread.run_sync(function, *args, trio_token=token)
        except trio.RunFinishedError:
            raise NodeStopped("the node has stopped") from None

    def _live_token(self) -> trio.lowlevel.TrioToken:
        if self._shut_down or self._token is None:
            raise NodeStopped("the node is not running")
        return self._token

    async def _write(
        self, changes: Mapping[str, bytes | None], wait: bool, limit: float | None
    ) -> None:
        """(trio thread) One durable write, then the members' acknowledgements if ``wait``."""
        node = self.state_node
        await node.update(changes)
        if not wait:
            return
        if limit is None:
            limit = self.config.ack_timeout
        waiting = {
            member.peer_id for member in node.members() if member.state is MemberState.CONNECTED
        }

        async def acknowledge(peer_id: PeerId) -> None:
            await node.wait_acknowledged(peer_id)  # False: it went away, so not waited for
            waiting.discard(peer_id)

        with trio.move_on_after(limit):
            async with trio.open_nursery() as nursery:
                for peer_id in list(waiting):
                    nursery.start_soon(acknowledge, peer_id)
        if waiting:
            names = sorted(self._name_of(peer_id) for peer_id in waiting)
            raise NotAcknowledged(f"not acknowledged within {limit} s by {', '.join(names)}", names)

    def _wait(self, predicate: Callable[[], bool], timeout: float) -> None:
        async def wait() -> None:
            with trio.move_on_after(timeout) as scope:
                await self.state_node.wait_until(predicate)
            if scope.cancelled_caught:
                raise TimeoutError(f"not within {timeout} s")

        self._call(wait)

    def _resolve(self, node_id: str) -> PeerId:
        """(trio thread) The peer id of the member called ``node_id``."""
        node = self.state_node
        if node_id == self.config.node_id:
            return node.peer_id
        pinned = self._pinned.get(node_id)
        if pinned is not None:
            return pinned
        wanted = node_id.encode("utf-8")
        claimants = [
            owner
            for owner in node.owners()
            if owner != node.peer_id and node.get(owner, NAME_KEY) == wanted
        ]
        if len(claimants) == 1:
            return claimants[0]
        if claimants:
            shown = ", ".join(c.short for c in sorted(claimants))
            raise AmbiguousNode(f"several nodes claim the id {node_id!r}: {shown}")
        if len(node_id) == 64 and _is_hex(node_id):
            return PeerId.from_hex(node_id)
        raise UnknownNode(f"no node {node_id!r} is known (yet)")

    def _name_of(self, peer_id: PeerId) -> str:
        """(trio thread) The name ``peer_id`` claims, or its id in hex."""
        claimed = self.state_node.get(peer_id, NAME_KEY)
        if claimed is not None:
            try:
                return claimed.decode("utf-8")
            except UnicodeDecodeError:
                pass
        return peer_id.hex()

    def __repr__(self) -> str:
        return f"DSNodeServer({self.config.node_id!r}, running={self.running})"


def _single(exc: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups of one exception, else ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _log_alert(message: str) -> None:
    log.warning("%s", message)


__all__ = [
    "NAME_KEY",
    "AmbiguousNode",
    "BootstrapError",
    "BootstrapNode",
    "DSNode",
    "DSNodeConfig",
    "DSNodeServer",
    "FacadeError",
    "NodeStopped",
    "NotAcknowledged",
    "NotConnected",
    "UnknownNode",
    "generate_key",
    "load_peer_record",
    "resolve_bootstrap",
    "save_peer_record",
]
