"""``p2ptls node``: run a state node from a TOML file and use it through its control socket.

::

    p2ptls node run node.toml                   # runs until Ctrl-C / SIGTERM
    p2ptls node put -c node.toml color blue     # -c finds the socket in the config,
    p2ptls node get -c node.toml color          #   -s SOCKET names it directly
    p2ptls node get -c node.toml color --owner 3f2a9c --wait 10
    p2ptls node delete -c node.toml color
    p2ptls node watch -c node.toml [--owner ID] [--key KEY] [--members] [--count N]
    p2ptls node peers -c node.toml [--json]
    p2ptls node consensus -c node.toml color [--json]
    p2ptls node info -c node.toml               # peer id, address and peer record (JSON)

The configuration (paths are relative to the file's directory; only ``identity`` and
``network_key`` are required)::

    name = "alice"                      # a label for logs and the peer record
    identity = "alice.key"              # p2ptls identity new alice.key (or create_identity)
    create_identity = false             # true: create the identity file if it is missing
    network_key = "network.psk"         # p2ptls psk new network.psk
    database = "alice.sqlite3"          # omit to keep the state in memory only
    listen = "127.0.0.1:7401"           # port 0 picks one
    advertise = "192.0.2.10:7401"       # what members are told (default: listen)
    control_socket = "run/alice.sock"   # default: <config stem>.control/sock beside the file
    record_file = "alice.record.json"   # written at start: give it to nodes that join

    [state]                             # StateNodeConfig options
    durability = "full"                 # or "normal"
    coalesce_delay = 0.001

    [[bootstrap]]                       # members to join through, each a peer record:
    record_file = "bob.record.json"     #   a record file (e.g. another node's record_file),
    [[bootstrap]]                       #   or the record's fields (p2ptls identity show)
    peer_id = "…"
    public_key = "…"
    address = "127.0.0.1:7402"          # an address given with a record file overrides it

The control socket's directory is created with mode 0700 (an existing one must be yours and
0700) and the socket is 0600; the node also checks every client's uid (``SO_PEERCRED``), so only
the user running the node can use it (see :mod:`p2ptls.state.control`).

Exit status of the client commands: 0 done, 1 not found (``get``), 2 bad request or
configuration, 3 no node answers on the socket, 4 timeout.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import math
import signal
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from .._errors import P2PTLSError, PeerDatabaseError
from ..identity import ALLOWED_KEY_BITS, Identity, NetworkKey, PeerRecord
from .config import StateNodeConfig
from .control import ControlClient, ControlError, ControlServer
from .errors import StateError
from .facade import BootstrapError, load_peer_record, save_peer_record
from .node import StateNode, open_state_node

log = logging.getLogger("p2ptls.state.cli")

EXIT_CODES = {"not_found": 1, "unavailable": 3, "timeout": 4}
"""Exit status per control error type; any other error exits with 2."""

_FLOAT_OPTIONS = (
    "coalesce_delay",
    "ping_interval",
    "ping_timeout",
    "reconnect_min",
    "reconnect_max",
    "connect_timeout",
    "anti_entropy_interval",
)
_INT_OPTIONS = (
    "max_batch",
    "max_value_size",
    "max_direct_size",
    "max_members",
    "max_owners",
    "subscriber_buffer",
    "direct_buffer",
)
_TOP_LEVEL = {
    "name",
    "identity",
    "create_identity",
    "key_bits",
    "network_key",
    "database",
    "listen",
    "advertise",
    "control_socket",
    "record_file",
    "replay_state",
    "state",
    "bootstrap",
}


class ConfigError(StateError):
    """The node's configuration file is missing, malformed or names unusable files."""


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
    bootstrap: list[PeerRecord] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    """Further :class:`StateNodeConfig` fields (the ``[state]`` table)."""

    def state_config(self, identity: Identity, psk: NetworkKey) -> StateNodeConfig:
        """The :class:`StateNodeConfig` this file describes."""
        try:
            return StateNodeConfig(
                identity=identity,
                psk=psk,
                database=self.database,
                listen=self.listen,
                advertise=self.advertise,
                bootstrap=self.bootstrap,
                name=self.name,
                replay_state_path=str(self.replay_state) if self.replay_state else None,
                **self.options,
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{self.path}: [state]: {exc}") from None


def parse_address(text: object, where: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6 host]:port"`` (or a ``[host, port]`` array)."""
    if isinstance(text, list) and len(text) == 2:
        host, port = text
        if isinstance(host, str) and isinstance(port, int) and 0 <= port < 65536:
            return host, port
        raise ConfigError(f"{where}: an address is [host, port]")
    if not isinstance(text, str):
        raise ConfigError(f"{where}: an address is a 'host:port' string")
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"{where}: {text!r} is not a 'host:port' address")
    return host, int(port_text)


def load_node_config(path: str | Path) -> NodeFileConfig:
    """Read and check a node's TOML configuration. Raises :class:`ConfigError`."""
    config_path = Path(path)
    try:
        raw = config_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {str(config_path)!r}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{config_path}: not valid TOML: {exc}") from None
    where = str(config_path)
    unknown = set(data) - _TOP_LEVEL
    if unknown:
        raise ConfigError(f"{where}: unknown settings {sorted(unknown)}")
    base = config_path.resolve().parent

    def path_of(name: str, *, required: bool = False) -> Path | None:
        value = data.get(name)
        if value is None:
            if required:
                raise ConfigError(f"{where}: {name} is required")
            return None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: {name} must be a path")
        return base / Path(value).expanduser()

    identity = path_of("identity", required=True)
    network_key = path_of("network_key", required=True)
    assert identity is not None and network_key is not None
    name = data.get("name", "")
    if not isinstance(name, str):
        raise ConfigError(f"{where}: name must be a string")
    create_identity = data.get("create_identity", False)
    if not isinstance(create_identity, bool):
        raise ConfigError(f"{where}: create_identity must be true or false")
    key_bits = data.get("key_bits", 3072)
    if key_bits not in ALLOWED_KEY_BITS or isinstance(key_bits, bool):
        raise ConfigError(f"{where}: key_bits must be one of {ALLOWED_KEY_BITS}")
    control = path_of("control_socket") or base / f"{config_path.stem}.control" / "sock"
    listen: tuple[str, int] | None = ("127.0.0.1", 0)
    if "listen" in data:
        listen = None if data["listen"] is False else parse_address(data["listen"], "listen")
    advertise = parse_address(data["advertise"], "advertise") if "advertise" in data else None
    config = NodeFileConfig(
        path=config_path,
        identity=identity,
        network_key=network_key,
        control_socket=control,
        name=name,
        create_identity=create_identity,
        key_bits=key_bits,
        database=path_of("database"),
        listen=listen,
        advertise=advertise,
        record_file=path_of("record_file"),
        replay_state=path_of("replay_state"),
        bootstrap=_bootstrap(data.get("bootstrap", []), base, where),
        options=_options(data.get("state", {}), where),
    )
    return config


def _bootstrap(entries: object, base: Path, where: str) -> list[PeerRecord]:
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: bootstrap is an array of tables ([[bootstrap]])")
    records = []
    for number, entry in enumerate(entries, 1):
        here = f"{where}: bootstrap #{number}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{here}: not a table")
        unknown = set(entry) - {"record_file", "peer_id", "public_key", "name", "address"}
        if unknown:
            raise ConfigError(f"{here}: unknown fields {sorted(unknown)}")
        address = parse_address(entry["address"], here) if "address" in entry else None
        try:
            if "record_file" in entry:
                if not isinstance(entry["record_file"], str):
                    raise ConfigError(f"{here}: record_file must be a path")
                record = load_peer_record(base / Path(entry["record_file"]).expanduser())
            else:
                fields = {k: v for k, v in entry.items() if k != "address"}
                fields["address"] = list(address) if address else None
                record = PeerRecord.from_dict(fields)
        except (BootstrapError, PeerDatabaseError) as exc:
            raise ConfigError(f"{here}: {exc}") from None
        if address is not None:
            record = record.with_address(*address)
        if record.address is None:
            raise ConfigError(f"{here}: the record has no address")
        records.append(record)
    return records


def _options(table: object, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [state] must be a table")
    options: dict[str, Any] = {}
    for name, value in table.items():
        if name in _FLOAT_OPTIONS:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where}: state.{name} must be a number")
            if not math.isfinite(value):
                raise ConfigError(f"{where}: state.{name} must be finite")
            options[name] = float(value)
        elif name in _INT_OPTIONS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where}: state.{name} must be an integer")
            options[name] = value
        elif name == "durability":
            if value not in ("full", "normal"):
                raise ConfigError(f"{where}: state.durability must be 'full' or 'normal'")
            options[name] = value
        else:
            raise ConfigError(f"{where}: unknown option state.{name}")
    return options


def _identity(config: NodeFileConfig) -> Identity:
    if not config.identity.exists() and config.create_identity:
        identity = Identity.generate(config.key_bits)
        identity.save(config.identity)
        print(f"created identity {config.identity} ({identity.peer_id.hex()})", file=sys.stderr)
        return identity
    return Identity.load(config.identity)


async def run_node(
    config: NodeFileConfig,
    *,
    task_status: trio.TaskStatus[StateNode] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the node a configuration file describes, with its control socket, until cancelled.

    Writes ``record_file`` (if set) before the control socket opens, so a client that reached
    the socket can read it.
    """
    identity = await trio.to_thread.run_sync(_identity, config)
    psk = await trio.to_thread.run_sync(NetworkKey.load, config.network_key)
    state_config = config.state_config(identity, psk)
    async with open_state_node(state_config) as node:
        if config.record_file is not None:
            record = node.peer_record(config.name)
            await trio.to_thread.run_sync(save_peer_record, config.record_file, record)
        server = ControlServer(node, config.control_socket)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            task_status.started(node)


async def _run_until_signalled(config: NodeFileConfig) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            node: StateNode = await nursery.start(run_node, config)
            address = node.address
            shown = f"{address[0]}:{address[1]}" if address else "(not listening)"
            print(
                f"node {config.name or '-'} {node.peer_id.hex()} listening on {shown}; "
                f"control socket {config.control_socket}",
                flush=True,
            )
            async for signum in signals:
                log.info("signal %d: stopping", signum)
                nursery.cancel_scope.cancel()
                break


# -- commands ---------------------------------------------------------------------------------


def _node_run(args: argparse.Namespace) -> None:
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    config = load_node_config(args.config)
    try:
        trio.run(_run_until_signalled, config)
    except BaseException as exc:
        error = _single(exc)
        if isinstance(error, ControlError | P2PTLSError):
            raise ConfigError(f"cannot run the node: {error}") from None
        if isinstance(error, OSError):
            raise ConfigError(f"cannot run the node: {error}") from None
        raise


def _single(exc: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups of one exception, else ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _socket(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    if args.config:
        return load_node_config(args.config).control_socket
    raise ConfigError("give the node's configuration (-c FILE) or its control socket (-s PATH)")


def _client(args: argparse.Namespace) -> ControlClient:
    return ControlClient(_socket(args), timeout=args.timeout)


def _value_argument(args: argparse.Namespace) -> dict[str, str]:
    if args.b64:
        try:
            base64.b64decode(args.value, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("VALUE is not valid base64") from None
        return {"value_b64": args.value}
    return {"value": args.value}


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _put(args: argparse.Namespace) -> None:
    with _client(args) as client:
        result = client.request("put", key=args.key, **_value_argument(args))
    if args.json:
        _print_json(result)


def _delete(args: argparse.Namespace) -> None:
    with _client(args) as client:
        client.request("delete", key=args.key)


def _get(args: argparse.Namespace) -> None:
    request: dict[str, Any] = {"key": args.key}
    if args.owner:
        request["owner"] = args.owner
    if args.wait:
        request["wait"] = args.wait
    timeout = None if args.timeout is None else args.timeout + (args.wait or 0)
    with ControlClient(_socket(args), timeout=timeout) as client:
        result = client.request("get", **request)
    if args.json:
        _print_json(result)
    elif result["value"] is not None:
        print(result["value"])
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(base64.b64decode(result["value_b64"]))
        sys.stdout.buffer.flush()


def _watch(args: argparse.Namespace) -> None:
    request: dict[str, Any] = {"members": args.members}
    if args.owner:
        request["owner"] = args.owner
    if args.key is not None:
        request["key"] = args.key
    with _client(args) as client:
        events = client.watch(**request)
        print("watching (Ctrl-C to stop)", file=sys.stderr, flush=True)
        for seen, event in enumerate(events, 1):
            print(json.dumps(event, ensure_ascii=False), flush=True)
            if args.count and seen >= args.count:
                return


def _peers(args: argparse.Namespace) -> None:
    with _client(args) as client:
        result = client.request("peers")
    if args.json:
        _print_json(result)
        return
    me = result["self"]
    rows = [("peer", "state", "address", "version")]
    rows.append(
        (
            me["peer_id"][:16] + " (self)",
            "-",
            me["address"] or "-",
            "{}.{}".format(*me["version"]),
        )
    )
    for member in result["members"]:
        state = member["state"] + (" (stale)" if member["stale"] else "")
        rows.append(
            (
                member["peer_id"][:16],
                state,
                member["address"] or "-",
                "{}.{}".format(*member["version"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())


def _consensus(args: argparse.Namespace) -> None:
    with _client(args) as client:
        result = client.request("consensus", key=args.key)
    if args.json:
        _print_json(result)
        return
    if not result["entries"]:
        print(f"no node holds {args.key!r}", file=sys.stderr)
        raise SystemExit(1)
    for entry in result["entries"]:
        shown = entry["value"] if entry["value"] is not None else "b64:" + entry["value_b64"]
        stale = set(entry["stale"])
        owners = ", ".join(o[:12] + (" (stale)" if o in stale else "") for o in entry["owners"])
        print(f"{entry['count']}\t{shown}\t{owners}")


def _info(args: argparse.Namespace) -> None:
    with _client(args) as client:
        _print_json(client.request("info"))


def _client_command(
    function: Callable[[argparse.Namespace], None],
) -> Callable[[argparse.Namespace], None]:
    def run(args: argparse.Namespace) -> None:
        try:
            function(args)
        except ControlError as exc:
            print(f"p2ptls: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_CODES.get(exc.kind, 2)) from None
        except KeyboardInterrupt:
            raise SystemExit(130) from None

    return run


def add_node_commands(commands: Any) -> None:
    """Add ``node run|put|get|delete|watch|peers|consensus|info`` to the ``p2ptls`` parser
    (``commands`` is its subparsers object)."""
    node = commands.add_parser(
        "node", help="run a state node; use a running one through its control socket"
    ).add_subparsers(dest="action", required=True)

    run = node.add_parser("run", help="run a state node from a TOML configuration file")
    run.add_argument("config", help="the node's TOML file")
    run.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    run.set_defaults(run=_node_run)

    def client(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = node.add_parser(name, help=help_text)
        where = parser.add_mutually_exclusive_group()
        where.add_argument("-c", "--config", help="the node's TOML file (to find its socket)")
        where.add_argument("-s", "--socket", help="the node's control socket")
        parser.add_argument(
            "--timeout", type=float, default=30.0, help="seconds to wait for the node"
        )
        return parser

    put = client("put", "set a key of the node's own state")
    put.add_argument("key")
    put.add_argument("value")
    put.add_argument("--b64", action="store_true", help="VALUE is base64 (any bytes)")
    put.add_argument("--json", action="store_true", help="print the new version as JSON")
    put.set_defaults(run=_client_command(_put))

    delete = client("delete", "delete a key of the node's own state")
    delete.add_argument("key")
    delete.set_defaults(run=_client_command(_delete))

    get = client("get", "print a key of the node's state or of another owner's")
    get.add_argument("key")
    get.add_argument("--owner", help="peer id in hex, or a unique prefix (default: the node)")
    get.add_argument("--wait", type=float, default=0.0, help="wait up to this long for the key")
    get.add_argument("--json", action="store_true", help="print the record as JSON")
    get.set_defaults(run=_client_command(_get))

    watch = client("watch", "print changes as JSON lines")
    watch.add_argument("--owner", help="only this owner's changes")
    watch.add_argument("--key", help="only this key")
    watch.add_argument("--members", action="store_true", help="also membership changes")
    watch.add_argument("--count", type=int, default=0, help="stop after this many events")
    watch.set_defaults(run=_client_command(_watch), timeout=None)

    peers = client("peers", "list the members and whether they are connected or stale")
    peers.add_argument("--json", action="store_true")
    peers.set_defaults(run=_client_command(_peers))

    consensus = client("consensus", "the values nodes hold for a key, most widely held first")
    consensus.add_argument("key")
    consensus.add_argument("--json", action="store_true")
    consensus.set_defaults(run=_client_command(_consensus))

    info = client("info", "the node's peer id, address and peer record")
    info.set_defaults(run=_client_command(_info))


__all__ = [
    "ConfigError",
    "NodeFileConfig",
    "add_node_commands",
    "load_node_config",
    "run_node",
]
