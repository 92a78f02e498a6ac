"""How to run one facade node: :class:`DSNodeConfig` (or the original's dict), the network key
file (:func:`generate_key`), and the names of the node's files."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..._files import StrPath
from ..._peer_lookup import looks_like_peer_id
from ...identity import NetworkKey
from .bootstrap import BootstrapNode

NAME_KEY = "_dsn.node_id"
"""The key of its own state under which a facade node publishes its name (``node_id``)."""
RESERVED_PREFIX = "_dsn."
"""Keys starting with this are the facade's own; ``update_data`` refuses them."""
MAX_NODE_ID_BYTES = 200

_FIELDS = {
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
"""The keys :meth:`DSNodeConfig.from_dict` passes on."""


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
        if looks_like_peer_id(self.node_id):
            raise ValueError("node_id must not look like a peer id (64 hex digits)")
        if self.network_ip in ("", "0.0.0.0", "::"):
            raise ValueError(
                "network_ip is the address others reach this node at; to listen on every "
                "interface set listen_ip='0.0.0.0' and network_ip to this machine's address"
            )
        if not isinstance(self.port, int) or not 0 <= self.port < 65536:
            raise ValueError("port must be an integer in 0..65535")
        self.entries = [BootstrapNode.parse(entry) for entry in self.bootstrap_nodes]
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
        unknown = set(options) - _FIELDS
        if unknown:
            raise ValueError(f"unknown configuration keys: {sorted(unknown)}")
        if "node_id" not in options:
            raise ValueError("node_id is required")
        return DSNodeConfig(**options)

    def _file(self, suffix: str) -> Path:
        return self.data_dir / (file_stem(self.node_id) + suffix)

    @property
    def identity_path(self) -> Path:
        return self._file(".key")

    @property
    def database_path(self) -> Path:
        return self._file(".sqlite3")

    @property
    def replay_path(self) -> Path:
        return self._file(".replay.json")

    @property
    def record_path(self) -> Path:
        """Where this node writes its own peer record when it starts."""
        return self._file(".record.json")


__all__ = ["NAME_KEY", "RESERVED_PREFIX", "DSNodeConfig", "file_stem", "generate_key"]
