"""``p2ptls identity ...`` and ``p2ptls psk ...``: key files, as ``wg genkey`` and ``wg pubkey``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..identity import NetworkKey
from ._common import (
    address_callback,
    bits_option,
    check_new_file,
    load_identity,
    new_passphrase,
    passphrase_options,
    write_identity,
    write_network_key,
)

FILE = click.Path(dir_okay=False, path_type=Path)


@click.group(short_help="identity key files (RSA): new, show, id")
def identity() -> None:
    """An identity: this peer's RSA key pair; its peer id is the SHA-256 of the public key."""


@identity.command("new")
@click.argument("path", type=FILE)
@bits_option("RSA key size")
@passphrase_options
def identity_new(*, path: Path, bits: str, ask: bool, passphrase_file: Path | None) -> None:
    """Create an identity key file (mode 0600; never overwrites one).

    \b
    Example:
      p2ptls identity new alice.key
    """
    check_new_file(path, "an identity")
    passphrase = new_passphrase(ask, passphrase_file)
    write_identity(path, int(bits), passphrase)


@identity.command("show")
@click.argument("path", type=FILE)
@click.option("--name", default="", help="a label to put in the record")
@click.option(
    "--address",
    metavar="HOST:PORT",
    callback=address_callback,
    help="where the peer listens (other peers dial it there)",
)
@passphrase_options
def identity_show(
    *,
    path: Path,
    name: str,
    address: tuple[str, int] | None,
    ask: bool,
    passphrase_file: Path | None,
) -> None:
    """Print the public peer record of an identity (JSON, no secret in it).

    Give it to other peers: p2ptls peers add, or a node's [[bootstrap]] record_file.

    \b
    Example:
      p2ptls identity show bob.key --name bob --address 192.0.2.11:7401 > bob.json
    """
    loaded = load_identity(path, ask, passphrase_file)
    record = loaded.peer_record(name=name, address=address)
    click.echo(json.dumps(record.to_dict(), indent=2))


@identity.command("id")
@click.argument("path", type=FILE)
@passphrase_options
def identity_id(*, path: Path, ask: bool, passphrase_file: Path | None) -> None:
    """Print the peer id of an identity (64 hex digits).

    \b
    Example:
      p2ptls identity id alice.key
    """
    click.echo(load_identity(path, ask, passphrase_file).peer_id.hex())


@click.group(short_help="network key files: new, show")
def psk() -> None:
    """The network key: 32 random bytes every member holds; it proves membership."""


@psk.command("new")
@click.argument("path", type=FILE)
def psk_new(*, path: Path) -> None:
    """Create a network key file (mode 0600; never overwrites one). Copy it to every member
    over a secure channel.

    \b
    Example:
      p2ptls psk new network.psk
    """
    check_new_file(path, "a network key")
    write_network_key(path)


@psk.command("show")
@click.argument("path", type=FILE)
def psk_show(*, path: Path) -> None:
    """Print the network key's fingerprint (never the key): the same on two machines means
    the same key.

    \b
    Example:
      p2ptls psk show network.psk
    """
    click.echo(NetworkKey.load(path).fingerprint)
