"""``p2ptls node ...``: write a node's configuration, run the node, and use a running one.

``init`` and ``run`` work with the node's TOML file (:mod:`p2ptls.state.cli`); the other commands
talk to a running node through its control socket (:mod:`p2ptls.state.control`), found through
the configuration (``-c FILE``) or named directly (``-s SOCKET``).

Exit status of the client commands: 0 done, 1 failed (e.g. ``get`` of a missing key), 2 bad
request, 3 no node answers on the socket, 4 timeout.
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import trio

from .._errors import P2PTLSError
from .._util import unwrap_single
from ..state.cli import NodeFileConfig, load_node_config, render_node_config, run_node
from ..state.control import ControlClient
from ..state.node import StateNode
from ._common import (
    CliError,
    address_callback,
    bits_option,
    check_new_file,
    format_address,
    identity_passphrase,
    new_passphrase,
    passphrase_options,
    print_table,
    short_id,
    write_identity,
    write_network_key,
)

log = logging.getLogger("p2ptls.cli")

F = TypeVar("F", bound=Callable[..., Any])
FILE = click.Path(dir_okay=False, path_type=Path)


@click.group(short_help="run a state node, and use a running one")
def node() -> None:
    """A state node: init writes its configuration, run runs it; put, get, delete, watch, peers,
    consensus and info use a running node through its control socket (-c CONFIG or -s SOCKET)."""


# -- init ---------------------------------------------------------------------------------------


@node.command("init", short_help="Write a commented configuration (and keys).")
@click.argument("path", type=FILE, default="node.toml")
@click.option("--name", help="the node's label  [default: the file's name]")
@click.option("--identity", help="identity key file  [default: NAME.key]")
@click.option("--network-key", default="network.psk", show_default=True, help="network key file")
@click.option("--database", help="SQLite file  [default: NAME.sqlite3]")
@click.option("--in-memory", is_flag=True, help="no database: the state lives in memory only")
@click.option(
    "--listen",
    metavar="HOST:PORT",
    default="127.0.0.1:7401",
    show_default=True,
    callback=address_callback,
    help="where members connect (0.0.0.0:PORT for other machines)",
)
@click.option(
    "--advertise", metavar="HOST:PORT", callback=address_callback, help="address members are told"
)
@click.option(
    "--bootstrap",
    "bootstrap",
    multiple=True,
    metavar="RECORD_FILE",
    help="a member to join through (its record file; repeatable)",
)
@click.option("--new-identity", is_flag=True, help="also create the identity file")
@click.option("--new-network-key", is_flag=True, help="also create the network key file")
@bits_option("RSA key size of a new identity")
@passphrase_options
def node_init(
    *,
    path: Path,
    name: str | None,
    identity: str | None,
    network_key: str,
    database: str | None,
    in_memory: bool,
    listen: tuple[str, int],
    advertise: tuple[str, int] | None,
    bootstrap: tuple[str, ...],
    new_identity: bool,
    new_network_key: bool,
    bits: str,
    ask: bool,
    passphrase_file: Path | None,
) -> None:
    """Write a commented node configuration (and, with --new-identity / --new-network-key, the
    files it names). Never overwrites a file. Paths are relative to the configuration's directory.

    \b
    Example:
      p2ptls node init alice.toml --new-identity --new-network-key
    """
    name = path.stem if name is None else name
    stem = name or "node"
    identity = identity or f"{stem}.key"
    if in_memory and database is not None:
        raise CliError("give --database or --in-memory, not both", exit_code=2)
    database = None if in_memory else database or f"{stem}.sqlite3"
    base = path.parent
    check_new_file(path, "a configuration")
    identity_path, key_path = base / identity, base / network_key
    if new_identity:
        check_new_file(identity_path, "an identity")
    if new_network_key:
        check_new_file(key_path, "a network key")
    text = render_node_config(
        name=name,
        identity=identity,
        network_key=network_key,
        database=database,
        listen=listen,
        advertise=advertise,
        record_file=f"{stem}.record.json",
        bootstrap=bootstrap,
    )
    passphrase = new_passphrase(ask, passphrase_file) if new_identity else None
    if new_network_key:
        write_network_key(key_path)
    if new_identity:
        write_identity(identity_path, int(bits), passphrase)
    with path.open("x", encoding="utf-8") as out:
        out.write(text)
    click.echo(f"wrote {path}")
    for needed, command in (
        (identity_path, f"p2ptls identity new {identity_path}"),
        (key_path, f"p2ptls psk new {key_path}  (or copy the network's key file there)"),
    ):
        if not needed.exists():
            click.echo(f"  {needed} does not exist yet: {command}")
    if listen[0] in ("0.0.0.0", "::") and advertise is None:
        click.echo(
            "  note: the record file will say "
            f"{format_address(listen)}; nodes on other machines need --advertise HOST:PORT"
        )
    click.echo(f"run it with: p2ptls node run {path}")


# -- run ----------------------------------------------------------------------------------------


@node.command("run")
@click.argument("config", type=FILE)
@click.option("-v", "--verbose", count=True, help="log more (INFO; twice: DEBUG)")
@click.option(
    "--passphrase-file",
    type=FILE,
    help="the identity's passphrase (first line of FILE); or set P2PTLS_PASSPHRASE",
)
def node_run(*, config: Path, verbose: int, passphrase_file: Path | None) -> None:
    """Run a state node from its TOML file until Ctrl-C or SIGTERM.

    An encrypted identity's passphrase comes from --passphrase-file, P2PTLS_PASSPHRASE, or a
    prompt on a terminal.

    \b
    Example:
      p2ptls node run alice.toml
    """
    if verbose:
        logging.getLogger().setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    loaded = load_node_config(config)
    passphrase = None
    if loaded.identity.exists():
        passphrase = identity_passphrase(loaded.identity, False, passphrase_file)
    elif passphrase_file is not None:
        passphrase = new_passphrase(False, passphrase_file)
    try:
        trio.run(_run_until_signalled, loaded, passphrase)
    except BaseException as exc:
        error = unwrap_single(exc)
        if isinstance(error, OSError) and error.errno == errno.EADDRINUSE and loaded.listen:
            raise CliError(
                f"cannot listen on {format_address(loaded.listen)}: address already in use "
                "(another node running? change listen in the configuration)"
            ) from None
        if isinstance(error, P2PTLSError):
            raise CliError(f"cannot run the node: {error}") from None
        if isinstance(error, OSError):
            raise CliError(f"cannot run the node: {error.strerror or error}") from None
        raise


async def _run_until_signalled(config: NodeFileConfig, passphrase: bytes | None) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            running: StateNode = await nursery.start(
                lambda task_status: run_node(config, passphrase=passphrase, task_status=task_status)
            )
            address = running.address
            shown = format_address(address) if address else "(not listening)"
            click.echo(
                f"node {config.name or '-'} {running.peer_id.hex()} listening on {shown}; "
                f"control socket {config.control_socket}"
            )
            sys.stdout.flush()
            async for signum in signals:
                log.info("signal %d: stopping", signum)
                nursery.cancel_scope.cancel()
                break


# -- the client commands ------------------------------------------------------------------------


def client_options(*, timeout: float | None = 30.0) -> Callable[[F], F]:
    """``-c/--config`` or ``-s/--socket``, and ``--timeout``."""

    def decorate(function: F) -> F:
        function = click.option(
            "--timeout",
            type=float,
            default=timeout,
            show_default=timeout is not None,
            help="seconds to wait for the node",
        )(function)
        function = click.option("-s", "--socket", type=FILE, help="the node's control socket")(
            function
        )
        return click.option(
            "-c", "--config", type=FILE, help="the node's TOML file (to find its socket)"
        )(function)

    return decorate


def _socket(config: Path | None, socket: Path | None) -> Path:
    if config is not None and socket is not None:
        raise CliError("give -c CONFIG or -s SOCKET, not both", exit_code=2)
    if socket is not None:
        return socket
    if config is not None:
        return load_node_config(config).control_socket
    raise CliError(
        "give the node's configuration (-c FILE) or its control socket (-s PATH)", exit_code=2
    )


def _request(
    config: Path | None, socket: Path | None, timeout: float | None, op: str, **arguments: Any
) -> Any:
    """One request to the node that ``-c``/``-s`` name; its result."""
    with ControlClient(_socket(config, socket), timeout=timeout) as client:
        return client.request(op, **arguments)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


@node.command("put", short_help="Set a key of the node's own state.")
@click.argument("key")
@click.argument("value")
@click.option("--b64", is_flag=True, help="VALUE is base64 (any bytes)")
@click.option("--json", "as_json", is_flag=True, help="print the new version as JSON")
@client_options()
def node_put(
    *,
    key: str,
    value: str,
    b64: bool,
    as_json: bool,
    config: Path | None,
    socket: Path | None,
    timeout: float | None,
) -> None:
    """Set KEY of the node's own state to VALUE (- reads the value's bytes from standard input,
    exactly as they are).

    \b
    Examples:
      p2ptls node put -c alice.toml color blue
      p2ptls node put -c alice.toml settings - < settings.json
    """
    argument: dict[str, str]
    if value == "-" and not b64:
        data = sys.stdin.buffer.read()
        argument = {"value_b64": base64.b64encode(data).decode("ascii")}
    elif b64:
        text = sys.stdin.read().strip() if value == "-" else value
        try:
            base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise CliError("VALUE is not valid base64", exit_code=2) from None
        argument = {"value_b64": text}
    else:
        argument = {"value": value}
    result = _request(config, socket, timeout, "put", key=key, **argument)
    if as_json:
        _print_json(result)


@node.command("delete")
@click.argument("key")
@client_options()
def node_delete(
    *, key: str, config: Path | None, socket: Path | None, timeout: float | None
) -> None:
    """Delete KEY from the node's own state.

    \b
    Example:
      p2ptls node delete -c alice.toml color
    """
    _request(config, socket, timeout, "delete", key=key)


@node.command("get", short_help="Print a key of the node's state or of another owner's.")
@click.argument("key")
@click.option("--owner", help="whose state: a name, or a peer id (6+ hex digits)  [default: own]")
@click.option("--wait", type=float, default=0.0, help="wait up to this many seconds for the key")
@click.option("--json", "as_json", is_flag=True, help="print the record as JSON")
@client_options()
def node_get(
    *,
    key: str,
    owner: str | None,
    wait: float,
    as_json: bool,
    config: Path | None,
    socket: Path | None,
    timeout: float | None,
) -> None:
    """Print KEY of the node's own state, or of another owner's replica.

    \b
    Example:
      p2ptls node get -c bob.toml color --owner alice --wait 10
    """
    request: dict[str, Any] = {"key": key}
    if owner:
        request["owner"] = owner
    if wait:
        request["wait"] = wait
    total = None if timeout is None else timeout + wait
    result = _request(config, socket, total, "get", **request)
    if as_json:
        _print_json(result)
    elif result["value"] is not None:
        click.echo(result["value"])
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(base64.b64decode(result["value_b64"]))
        sys.stdout.buffer.flush()


@node.command("watch")
@click.option("--owner", help="only this owner's changes (a name or a peer id)")
@click.option("--key", help="only this key")
@click.option("--members", is_flag=True, help="also membership changes")
@click.option("--count", type=int, default=0, help="stop after this many events")
@client_options(timeout=None)
def node_watch(
    *,
    owner: str | None,
    key: str | None,
    members: bool,
    count: int,
    config: Path | None,
    socket: Path | None,
    timeout: float | None,
) -> None:
    """Print changes as they happen, one JSON object per line.

    \b
    Example:
      p2ptls node watch -c bob.toml --owner alice
    """
    request: dict[str, Any] = {"members": members}
    if owner:
        request["owner"] = owner
    if key is not None:
        request["key"] = key
    with ControlClient(_socket(config, socket), timeout=timeout) as client:
        events = client.watch(**request)
        click.echo("watching (Ctrl-C to stop)", err=True)
        for seen, event in enumerate(events, 1):
            click.echo(json.dumps(event, ensure_ascii=False))
            sys.stdout.flush()
            if count and seen >= count:
                return


@node.command("peers", short_help="List the members and their status.")
@click.option("--json", "as_json", is_flag=True, help="print the members as JSON")
@client_options()
def node_peers(
    *, as_json: bool, config: Path | None, socket: Path | None, timeout: float | None
) -> None:
    """List the members: connected, or stale (their last known state is kept), and whether
    this node's handshakes with one keep failing (often: a different network key).

    \b
    Example:
      p2ptls node peers -c alice.toml
    """
    result = _request(config, socket, timeout, "peers")
    if as_json:
        _print_json(result)
        return
    me = result["self"]
    rows = [("name", "peer", "status", "address", "state version")]
    rows.append(
        (me["name"] or "-", short_id(me["peer_id"]), "self", me["address"] or "-", _version(me))
    )
    for member in result["members"]:
        rows.append(
            (
                member.get("name") or "-",
                short_id(member["peer_id"]),
                _status(member),
                member["address"] or "-",
                _version(member),
            )
        )
    print_table(rows)


def _version(entry: dict[str, Any]) -> str:
    epoch, sequence = entry["version"]
    return f"{epoch}:{sequence}"


def _status(member: dict[str, Any]) -> str:
    status = str(member["state"]) + (" (stale)" if member["stale"] else "")
    failures = member.get("handshake_failures", 0)
    if failures and member["stale"]:
        last = member.get("last_handshake_failure")
        when = time.strftime("%H:%M:%S", time.localtime(last)) if last else "?"
        status = f"handshake failing ({failures}x, last {when})"
    return status


@node.command("consensus", short_help="Values held for a key, most widely held first.")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="print the entries as JSON")
@client_options()
def node_consensus(
    *, key: str, as_json: bool, config: Path | None, socket: Path | None, timeout: float | None
) -> None:
    """The values the nodes hold for KEY, most widely held first: count, value, owners.

    \b
    Example:
      p2ptls node consensus -c alice.toml color
    """
    result = _request(config, socket, timeout, "consensus", key=key)
    if as_json:
        _print_json(result)
        return
    if not result["entries"]:
        raise CliError(f"no node holds {key!r}")
    names = result.get("names", {})
    for entry in result["entries"]:
        shown = entry["value"] if entry["value"] is not None else "b64:" + entry["value_b64"]
        stale = set(entry["stale"])
        owners = ", ".join(
            names.get(o, o[:12]) + (" (stale)" if o in stale else "") for o in entry["owners"]
        )
        click.echo(f"{entry['count']}\t{shown}\t{owners}")


@node.command("info")
@client_options()
def node_info(*, config: Path | None, socket: Path | None, timeout: float | None) -> None:
    """The node's peer id, name, address and peer record (JSON).

    \b
    Example:
      p2ptls node info -c alice.toml
    """
    _print_json(_request(config, socket, timeout, "info"))


__all__ = ["node"]
