"""A state node's TOML configuration file, and running the node it describes (``p2ptls node``).

``p2ptls node init`` writes a commented file (:func:`render_node_config`); ``p2ptls node run``
reads it (:func:`load_node_config`) and runs the node with its control socket (:func:`run_node`).
The format (paths are relative to the file's directory; only ``identity`` and ``network_key``
are required)::

    name = "alice"                      # a label for logs, `node peers` and the record file
    identity = "alice.key"              # p2ptls identity new alice.key (or create_identity)
    create_identity = false             # true: create the identity file if it is missing
    key_bits = 3072                     # the size of an identity created so
    network_key = "network.psk"         # p2ptls psk new network.psk (the same on every node)
    database = "alice.sqlite3"          # omit to keep the state in memory only
    listen = "127.0.0.1:7401"           # port 0 picks one; false: only dial out
    advertise = "192.0.2.10:7401"       # what members are told (default: listen)
    control_socket = "run/alice.sock"   # default: <config stem>.control/sock beside the file
    record_file = "alice.record.json"   # written at start: give it to nodes that join
    replay_state = "alice.replay"       # handshake replay state kept across restarts
    peer_database = "peers.db"          # p2ptls peers add ...: names of peers, and members to
                                        #   join through (the records with an address)

    [state]                             # StateNodeConfig tunables (see StateOptions)
    durability = "full"                 # or "normal"
    coalesce_delay = 0.001

    [[bootstrap]]                       # members to join through, each a peer record:
    record_file = "bob.record.json"     #   a record file (e.g. another node's record_file),
    [[bootstrap]]                       #   or the record's fields (p2ptls identity show)
    peer_id = "…"
    public_key = "…"
    address = "127.0.0.1:7402"          # an address given with a record file overrides it

The file is structured with cattrs into :class:`NodeFile`: a wrong type or an unknown key is
refused with its path, e.g. ``node.toml: state.coalesce_delay: expected a number, got "fast"``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import attrs
import cattrs
import trio
from cattrs.errors import ForbiddenExtraKeysError
from cattrs.gen import make_dict_structure_fn

from .._address import MAX_PORT, Address, format_host_port, parse_host_port
from ..identity import Identity, NetworkKey, PeerRecord
from ..peerdb import PeerDatabase
from ._bootstrap import (
    BootstrapError,
    bootstrap_record,
    load_peer_record,
    peer_record_from_dict,
    save_peer_record,
)
from .config import StateNodeConfig
from .control import ControlServer
from .errors import StateError
from .node import StateNode, open_state_node

log = logging.getLogger("p2ptls.state.cli")


class ConfigError(StateError):
    """The node's configuration file is missing, malformed or names unusable files."""


# -- the file's schema ------------------------------------------------------------------------


def _default(name: str) -> Any:
    return attrs.fields_dict(StateNodeConfig)[name].default


def _option(name: str, help_text: str) -> Any:
    return attrs.field(default=_default(name), metadata={"help": help_text})


@attrs.frozen
class StateOptions:
    """The ``[state]`` table: :class:`StateNodeConfig` tunables, with its defaults."""

    durability: Literal["full", "normal"] = _option(
        "durability", '"full": a write survives power loss; "normal": a crash of the process'
    )
    coalesce_delay: float = _option("coalesce_delay", "seconds to gather writes into one batch")
    max_batch: int = _option("max_batch", "most records signed in one batch")
    max_value_size: int = _option("max_value_size", "largest value (the same on every node)")
    max_direct_size: int = _option("max_direct_size", "largest direct message")
    message_budget: int = _option("message_budget", "bytes per update message, about")
    ping_interval: float = _option("ping_interval", "seconds between pings on an idle connection")
    ping_timeout: float = _option("ping_timeout", "a member silent this long is unreachable")
    reconnect_min: float = _option("reconnect_min", "first delay before dialling a member again")
    reconnect_max: float = _option("reconnect_max", "longest delay between dials")
    connect_timeout: float = _option("connect_timeout", "deadline for a dial and handshake")
    anti_entropy_interval: float = _option(
        "anti_entropy_interval", "seconds between digests on an open connection"
    )
    max_members: int = _option("max_members", "most members remembered")
    max_owners: int = _option("max_owners", "most owners whose state is held")
    max_pending_requests: int = _option(
        "max_pending_requests", "replies owed to one peer before it counts as flooding"
    )
    subscriber_buffer: int = _option("subscriber_buffer", "events buffered per watcher")
    direct_buffer: int = _option("direct_buffer", "direct messages buffered for the application")


@attrs.frozen
class BootstrapEntry:
    """One ``[[bootstrap]]`` table: a record file, or a record's fields; ``address`` overrides."""

    record_file: str | None = None
    peer_id: str | None = None
    public_key: str | None = None
    name: str = ""
    address: Address | None = None


@attrs.frozen
class NodeFile:
    """The TOML file as written (paths not yet resolved)."""

    identity: str
    network_key: str
    name: str = ""
    create_identity: bool = False
    key_bits: Literal[2048, 3072, 4096] = 3072
    database: str | None = None
    listen: Address | None = ("127.0.0.1", 0)
    advertise: Address | None = None
    control_socket: str | None = None
    record_file: str | None = None
    replay_state: str | None = None
    peer_database: str | None = None
    state: StateOptions = attrs.field(factory=StateOptions)
    bootstrap: list[BootstrapEntry] = attrs.field(factory=list)


class _Invalid(ValueError):
    """A value of the wrong type or form (the message says what was expected)."""


def _shown(value: object) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return json.dumps(value, ensure_ascii=False, default=str)


def _expect(what: str, check: Callable[[Any], bool]) -> Callable[[Any, Any], Any]:
    def structure(value: Any, _type: Any) -> Any:
        if not check(value):
            raise _Invalid(f"expected {what}, got {_shown(value)}")
        return value

    return structure


def _number(value: Any, _type: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"expected a number, got {_shown(value)}")
    if not math.isfinite(value):
        raise _Invalid(f"expected a finite number, got {value}")
    return float(value)


def _literal(value: Any, type_: Any) -> Any:
    choices = get_args(type_)
    if isinstance(value, bool) or value not in choices:
        wanted = ", ".join(_shown(c) for c in choices)
        raise _Invalid(f"expected one of {wanted}, got {_shown(value)}")
    return value


def parse_address(text: object, where: str = "address") -> Address:
    """``"host:port"`` or ``"[v6 host]:port"`` (or a ``[host, port]`` array). Raises
    :class:`ConfigError` naming ``where``."""
    try:
        return _address(text)
    except _Invalid as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _address(text: object) -> Address:
    if isinstance(text, list) and len(text) == 2:
        host, port = text
        if (
            isinstance(host, str)
            and isinstance(port, int)
            and not isinstance(port, bool)
            and 0 <= port <= MAX_PORT
        ):
            return host, port
        raise _Invalid(f"expected [host, port], got {_shown(text)}")
    if isinstance(text, str):
        with contextlib.suppress(ValueError):
            return parse_host_port(text)
    raise _Invalid(f'expected a "host:port" address, got {_shown(text)}')


def _is_literal(type_: Any) -> bool:
    origin: object = get_origin(type_)
    return origin is Literal


def _optional_address(value: Any, _type: Any) -> Address | None:
    return None if value is False else _address(value)


def _converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook(str, _expect("a string", lambda v: isinstance(v, str)))
    converter.register_structure_hook(bool, _expect("true or false", lambda v: v in (True, False)))
    converter.register_structure_hook(
        int, _expect("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool))
    )
    converter.register_structure_hook(float, _number)
    converter.register_structure_hook_func(lambda t: t == Address | None, _optional_address)
    converter.register_structure_hook_func(_is_literal, _literal)
    for cls in (StateOptions, BootstrapEntry, NodeFile):
        converter.register_structure_hook(cls, _table_of(converter, cls))
    return converter


def _table_of(converter: cattrs.Converter, cls: type) -> Callable[[Any, Any], Any]:
    structure: Callable[[Any, Any], Any] = make_dict_structure_fn(
        cls, converter, _cattrs_forbid_extra_keys=True, _cattrs_detailed_validation=True
    )

    def table(value: Any, type_: Any) -> Any:
        if not isinstance(value, dict):
            raise _Invalid(f"expected a table, got {_shown(value)}")
        return structure(value, type_)

    return table


_CONVERTER = _converter()


def _errors(exc: BaseException, path: str) -> list[str]:
    """``"path: message"`` for every failure inside a cattrs validation error."""
    if isinstance(exc, cattrs.ClassValidationError | cattrs.IterableValidationError):
        found = []
        for inner in exc.exceptions:
            here = path
            for note in getattr(inner, "__notes__", ()):
                if isinstance(note, cattrs.AttributeValidationNote):
                    here = f"{path}.{note.name}" if path else note.name
                elif isinstance(note, cattrs.IterableValidationNote):
                    here = f"{path}[{note.index}]"
            found += _errors(inner, here)
        return found
    where = f"{path}: " if path else ""
    if isinstance(exc, ForbiddenExtraKeysError):
        keys = ", ".join(sorted(exc.extra_fields))
        return [f"{where}unknown setting{'s' if len(exc.extra_fields) > 1 else ''} {keys}"]
    if isinstance(exc, KeyError):
        return [f"{path} is required"]
    if isinstance(exc, _Invalid):
        return [f"{where}{exc}"]
    return [f"{where}{type(exc).__name__}: {exc}"]


def structure_node_file(data: dict[str, Any], where: str) -> NodeFile:
    """Check parsed TOML against :class:`NodeFile`; raises :class:`ConfigError` listing every
    problem as ``where: path: message``."""
    if not isinstance(data.get("bootstrap", []), list):
        raise ConfigError(f"{where}: bootstrap: expected an array of tables ([[bootstrap]])")
    try:
        return _CONVERTER.structure(data, NodeFile)
    except Exception as exc:  # cattrs reports every failure in one exception group
        lines = _errors(exc, "")
        raise ConfigError("\n".join(f"{where}: {line}" for line in lines)) from None


# -- the resolved configuration ---------------------------------------------------------------


@dataclass
class NodeFileConfig:
    """A node configuration as read from its TOML file (paths resolved)."""

    path: Path
    identity: Path
    network_key: Path
    control_socket: Path
    name: str = ""
    create_identity: bool = False
    key_bits: int = 3072
    database: Path | None = None
    listen: tuple[str, int] | None = ("127.0.0.1", 0)
    advertise: tuple[str, int] | None = None
    record_file: Path | None = None
    replay_state: Path | None = None
    peer_database: Path | None = None
    """A :class:`~p2ptls.PeerDatabase` (encrypted with the network key): names of peers, and
    members to join through (its records with an address)."""
    bootstrap: list[PeerRecord] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    """Further :class:`StateNodeConfig` fields (the ``[state]`` table)."""

    def state_config(
        self, identity: Identity, psk: NetworkKey, known: Sequence[PeerRecord] = ()
    ) -> StateNodeConfig:
        """The :class:`StateNodeConfig` this file describes; ``known`` are the peer database's
        records (those with an address join the bootstrap members)."""
        bootstrap = {record.peer_id: record for record in known if record.address is not None}
        bootstrap.update((record.peer_id, record) for record in self.bootstrap)
        bootstrap.pop(identity.peer_id, None)
        try:
            return StateNodeConfig(
                identity=identity,
                psk=psk,
                database=self.database,
                listen=self.listen,
                advertise=self.advertise,
                bootstrap=list(bootstrap.values()),
                name=self.name,
                replay_state_path=str(self.replay_state) if self.replay_state else None,
                **self.options,
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{self.path}: state: {exc}") from None


def load_node_config(path: str | Path) -> NodeFileConfig:
    """Read and check a node's TOML configuration. Raises :class:`ConfigError`."""
    config_path = Path(path)
    where = str(config_path)
    try:
        raw = config_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {where!r}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    parsed = structure_node_file(data, where)
    base = config_path.resolve().parent

    def resolve(name: str, value: str | None) -> Path | None:
        if value is None:
            return None
        if not value:
            raise ConfigError(f"{where}: {name}: expected a path, got an empty string")
        return base / Path(value).expanduser()

    identity = resolve("identity", parsed.identity)
    network_key = resolve("network_key", parsed.network_key)
    assert identity is not None and network_key is not None
    control = resolve("control_socket", parsed.control_socket)
    return NodeFileConfig(
        path=config_path,
        identity=identity,
        network_key=network_key,
        control_socket=control or base / f"{config_path.stem}.control" / "sock",
        name=parsed.name,
        create_identity=parsed.create_identity,
        key_bits=parsed.key_bits,
        database=resolve("database", parsed.database),
        listen=parsed.listen,
        advertise=parsed.advertise,
        record_file=resolve("record_file", parsed.record_file),
        replay_state=resolve("replay_state", parsed.replay_state),
        peer_database=resolve("peer_database", parsed.peer_database),
        bootstrap=[
            _bootstrap(entry, base, f"{where}: bootstrap[{index}]")
            for index, entry in enumerate(parsed.bootstrap)
        ],
        options=attrs.asdict(parsed.state),
    )


def _bootstrap(entry: BootstrapEntry, base: Path, here: str) -> PeerRecord:
    if entry.record_file is None and (entry.peer_id is None or entry.public_key is None):
        raise ConfigError(f"{here}: give record_file, or peer_id and public_key")
    try:
        if entry.record_file is not None:
            record = load_peer_record(base / Path(entry.record_file).expanduser())
        else:
            fields = {"peer_id": entry.peer_id, "public_key": entry.public_key, "name": entry.name}
            record = peer_record_from_dict(fields, "the record")
        return bootstrap_record(record, entry.address)
    except BootstrapError as exc:
        raise ConfigError(f"{here}: {exc}") from None


# -- writing a new file -----------------------------------------------------------------------


def _toml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a TOML basic string


def render_node_config(
    *,
    name: str,
    identity: str,
    network_key: str,
    database: str | None,
    listen: Address | None,
    advertise: Address | None = None,
    control_socket: str | None = None,
    record_file: str | None = None,
    bootstrap: tuple[str, ...] = (),
) -> str:
    """The text of a commented, working node configuration (what ``p2ptls node init`` writes).

    Paths are written as given: relative ones are relative to the configuration's directory.
    Every ``[state]`` tunable is listed, commented out, with its default.
    """

    def setting(key: str, value: str | None, comment: str, example: str = "") -> str:
        line = f"{key} = {value}" if value is not None else f"# {key} = {example}"
        return f"{line:<40}# {comment}"

    quoted = _toml_string
    lines = [
        "# A p2ptls state node. Run it with: p2ptls node run THIS_FILE",
        "# Paths are relative to this file's directory. Only identity and network_key are needed.",
        "",
        setting("name", quoted(name), "a label for logs, `p2ptls node peers` and the record"),
        setting("identity", quoted(identity), "this node's key: p2ptls identity new FILE"),
        setting(
            "create_identity",
            None,
            "true: create the identity at the first start if it is missing",
            "false",
        ),
        setting("network_key", quoted(network_key), "the same file on every node: p2ptls psk new"),
        setting(
            "database",
            quoted(database) if database is not None else None,
            "the node's state on disk; without it, in memory only",
            quoted(f"{name or 'node'}.sqlite3"),
        ),
        setting(
            "listen",
            quoted(format_host_port(listen)) if listen is not None else "false",
            "where members connect (0.0.0.0 for other machines; false: only dial out)",
        ),
        setting(
            "advertise",
            quoted(format_host_port(advertise)) if advertise is not None else None,
            "the address members are told (default: listen)",
            '"192.0.2.10:7401"',
        ),
        setting(
            "control_socket",
            quoted(control_socket) if control_socket is not None else None,
            "for p2ptls node put/get/... (default: <file name>.control/sock)",
            '"run/node.sock"',
        ),
        setting(
            "record_file",
            quoted(record_file) if record_file is not None else None,
            "written at start: give it to the nodes that join through this one",
            quoted(f"{name or 'node'}.record.json"),
        ),
        setting("replay_state", None, "handshake replay state kept across restarts", '"replay"'),
        setting(
            "peer_database",
            None,
            "p2ptls peers add ...: peers' names; those with an address are joined",
            '"peers.db"',
        ),
        "",
        "[state]                                 # tunables; each line shows the default",
    ]
    defaults = StateOptions()
    for option in attrs.fields(StateOptions):
        value = getattr(defaults, option.name)
        shown = quoted(value) if isinstance(value, str) else repr(value)
        lines.append(setting(option.name, None, option.metadata["help"], shown))
    lines += [
        "",
        "# Members to join through, one [[bootstrap]] table each: another node's record file",
        "# (its record_file, or: p2ptls identity show bob.key --address HOST:PORT > bob.json),",
        '# or peer_id = "..." and public_key = "...". address = "host:port" overrides the',
        "# record's address.",
    ]
    if bootstrap:
        for record in bootstrap:
            lines += ["[[bootstrap]]", f"record_file = {quoted(record)}"]
    else:
        lines += [
            "# [[bootstrap]]",
            '# record_file = "bob.record.json"',
            '# address = "192.0.2.11:7401"',
        ]
    return "\n".join(lines) + "\n"


# -- running ----------------------------------------------------------------------------------


def _identity(config: NodeFileConfig, passphrase: bytes | None) -> Identity:
    if not config.identity.exists() and config.create_identity:
        identity = Identity.generate(config.key_bits)
        identity.save(config.identity, passphrase)
        print(f"created identity {config.identity} ({identity.peer_id.hex()})", file=sys.stderr)
        return identity
    return Identity.load(config.identity, passphrase)


async def run_node(
    config: NodeFileConfig,
    *,
    passphrase: bytes | None = None,
    task_status: trio.TaskStatus[StateNode] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the node a configuration file describes, with its control socket, until cancelled.

    ``passphrase`` decrypts the identity file. Writes ``record_file`` (if set) before the
    control socket opens, so a client that reached the socket can read it.
    """
    identity = await trio.to_thread.run_sync(_identity, config, passphrase)
    psk = await trio.to_thread.run_sync(NetworkKey.load, config.network_key)
    known: list[PeerRecord] = []
    if config.peer_database is not None:
        if not config.peer_database.exists():
            raise ConfigError(f"peer database {str(config.peer_database)!r} does not exist")
        database = await trio.to_thread.run_sync(PeerDatabase.open, config.peer_database, psk)
        known = list(database)
    state_config = config.state_config(identity, psk, known)
    names = {record.peer_id: record.name for record in known if record.name}
    async with open_state_node(state_config) as node:
        if config.record_file is not None:
            record = node.peer_record(config.name)
            await trio.to_thread.run_sync(save_peer_record, config.record_file, record)
        server = ControlServer(node, config.control_socket, names)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            task_status.started(node)


__all__ = [
    "BootstrapEntry",
    "ConfigError",
    "NodeFile",
    "NodeFileConfig",
    "StateOptions",
    "load_node_config",
    "parse_address",
    "render_node_config",
    "run_node",
    "structure_node_file",
]
