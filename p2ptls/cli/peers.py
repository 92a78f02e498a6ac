"""``p2ptls peers ...``: the encrypted peer database (:class:`~p2ptls.PeerDatabase`) a host trusts.

The database is encrypted with a key derived from the network key (``--network-key``), so every
command that reads or writes it needs that file.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..identity import NetworkKey, PeerRecord
from ..peerdb import PeerDatabase
from ..state._bootstrap import (
    MAX_RECORD_FILE_BYTES,
    load_peer_record,
    peer_record_from_json,
)
from ._common import (
    CliError,
    address_callback,
    find_record,
    format_address,
    print_table,
    short_id,
)

F = TypeVar("F", bound=Callable[..., Any])


def database_options(function: F) -> F:
    function = click.option(
        "-k",
        "--network-key",
        type=click.Path(dir_okay=False, path_type=Path),
        default="network.psk",
        show_default=True,
        help="the network key the database is encrypted with",
    )(function)
    return click.option(
        "--db",
        "database",
        type=click.Path(dir_okay=False, path_type=Path),
        required=True,
        help="the peer database file (created by the first add)",
    )(function)


def _open(database: Path, network_key: Path) -> PeerDatabase:
    return PeerDatabase.open(database, NetworkKey.load(network_key))


@click.group(short_help="the encrypted peer database: add, list, remove")
def peers() -> None:
    """The peer database: the public records of the peers a host trusts, encrypted at rest."""


@peers.command("add")
@click.argument("record", metavar="RECORD_FILE")
@click.option("--name", help="set the record's name")
@click.option("--address", metavar="HOST:PORT", callback=address_callback, help="set its address")
@database_options
def peers_add(
    *,
    record: str,
    name: str | None,
    address: tuple[str, int] | None,
    database: Path,
    network_key: Path,
) -> None:
    """Add (or replace) a peer from its record file (JSON from p2ptls identity show; - reads
    standard input).

    \b
    Example:
      p2ptls peers add bob.json --db peers.db
    """
    loaded = _read_record(record)
    if name is not None:
        loaded = PeerRecord.from_public_key(
            loaded.public_key_der, name=name, address=loaded.address
        )
    if address is not None:
        loaded = loaded.with_address(*address)
    if not database.parent.is_dir():
        raise CliError(f"directory {str(database.parent)!r} does not exist")
    db = _open(database, network_key)
    replaced = loaded.peer_id in db
    db.add(loaded)
    db.save()
    label = f"{loaded.name} " if loaded.name else ""
    verb = "replaced" if replaced else "added"
    click.echo(f"{verb} {label}{loaded.peer_id.hex()} in {database} ({len(db)} peers)")


def _read_record(source: str) -> PeerRecord:
    """The peer record in the file ``source``, or on standard input for ``-`` (a
    :class:`~p2ptls.state._bootstrap.BootstrapError`, exit status 1, says what is wrong)."""
    if source != "-":
        return load_peer_record(source)
    data = sys.stdin.buffer.read(MAX_RECORD_FILE_BYTES + 1)
    return peer_record_from_json(data, "the peer record on standard input")


@peers.command("list")
@click.option("--json", "as_json", is_flag=True, help="print the records as JSON")
@database_options
def peers_list(*, as_json: bool, database: Path, network_key: Path) -> None:
    """List the peers in the database.

    \b
    Example:
      p2ptls peers list --db peers.db
    """
    records = sorted(_open(database, network_key), key=lambda r: (r.name, r.peer_id.hex()))
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in records], indent=2, ensure_ascii=False))
        return
    if not records:
        click.echo(f"no peers in {database}", err=True)
        return
    rows = [("name", "peer id", "address")]
    rows += [(r.name or "-", short_id(r.peer_id), format_address(r.address)) for r in records]
    print_table(rows)


@peers.command("remove")
@click.argument("peer")
@database_options
def peers_remove(*, peer: str, database: Path, network_key: Path) -> None:
    """Remove a peer, given by name or by the first digits of its id.

    \b
    Example:
      p2ptls peers remove bob --db peers.db
    """
    if not database.exists():
        raise CliError(f"peer database {str(database)!r} does not exist")
    db = _open(database, network_key)
    found = find_record(db, peer)
    db.remove(found.peer_id)
    db.save()
    click.echo(f"removed {found.name or '-'} {found.peer_id.hex()} from {database}")
