"""What every ``p2ptls`` command shares: its errors, passphrases, new files, names of peers."""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
import rich.box
import rich.console
import rich.table
import rich.text

from .._address import Address, format_host_port, parse_host_port
from .._files import read_private_file
from .._peer_lookup import find_peer
from ..identity import ALLOWED_KEY_BITS, DEFAULT_KEY_BITS, Identity, NetworkKey, PeerId, PeerRecord

PASSPHRASE_ENV = "P2PTLS_PASSPHRASE"
"""The environment variable that may hold an encrypted identity's passphrase."""

F = TypeVar("F", bound=Callable[..., Any])


class CliError(Exception):
    """A failure to report as ``p2ptls: error: MESSAGE`` with exit status ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def check_new_file(path: Path, what: str) -> None:
    """Refuse to overwrite ``path``, and say so when its directory does not exist."""
    if path.exists() or path.is_symlink():
        raise CliError(f"{str(path)!r} exists; refusing to overwrite {what}")
    directory = path.parent
    if not directory.is_dir():
        raise CliError(f"cannot write {str(path)!r}: directory {str(directory)!r} does not exist")


def write_identity(path: Path, bits: int, passphrase: bytes | None) -> None:
    """Create an identity file (mode 0600; never replacing one) and say so, with its peer id."""
    created = Identity.generate(bits)
    created.save(path, passphrase)
    click.echo(f"wrote {path} (mode 0600); peer id {created.peer_id.hex()}")


def write_network_key(path: Path) -> None:
    """Create a network key file (mode 0600; never replacing one) and say so, with its
    fingerprint."""
    key = NetworkKey.generate()
    key.save(path)
    click.echo(f"wrote {path} (mode 0600); fingerprint {key.fingerprint}")


def bits_option(help_text: str) -> Callable[[F], F]:
    """``--bits``: the RSA key size of a new identity, one of the allowed sizes."""
    return click.option(
        "--bits",
        type=click.Choice([str(b) for b in ALLOWED_KEY_BITS]),
        default=str(DEFAULT_KEY_BITS),
        show_default=True,
        help=help_text,
    )


def passphrase_options(function: F) -> F:
    """``--passphrase`` (ask for it) and ``--passphrase-file FILE``."""
    function = click.option(
        "--passphrase-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="read the passphrase from FILE (its first line; mode 0600)",
    )(function)
    return click.option("--passphrase", "ask", is_flag=True, help="ask for the passphrase")(
        function
    )


def read_passphrase_file(path: Path) -> bytes:
    """The first line of a private file (refused when group or others may read it)."""
    lines = read_private_file(path, "passphrase file").splitlines()
    if not lines or not lines[0]:
        raise CliError(f"passphrase file {str(path)!r} is empty")
    return lines[0]


def ask_passphrase(prompt: str, *, confirm: bool = False) -> bytes:
    first = getpass.getpass(prompt)
    if not first:
        raise CliError("the passphrase is empty")
    if confirm and getpass.getpass("again: ") != first:
        raise CliError("the passphrases differ")
    return first.encode()


def new_passphrase(ask: bool, passphrase_file: Path | None) -> bytes | None:
    """The passphrase to encrypt a new identity with (``None``: unencrypted)."""
    if passphrase_file is not None:
        return read_passphrase_file(passphrase_file)
    if ask:
        return ask_passphrase("passphrase: ", confirm=True)
    return None


def is_encrypted(path: Path) -> bool:
    """Whether an identity file is passphrase-encrypted (checks its permissions first)."""
    return b"ENCRYPTED PRIVATE KEY" in read_private_file(path, "identity key file")


def identity_passphrase(path: Path, ask: bool, passphrase_file: Path | None) -> bytes | None:
    """The passphrase for the identity at ``path``: from ``--passphrase-file``, asked for with
    ``--passphrase``; else, if the file is encrypted, from :data:`PASSPHRASE_ENV` or asked for on
    a terminal."""
    if passphrase_file is not None:
        return read_passphrase_file(passphrase_file)
    if ask:
        return ask_passphrase("passphrase: ")
    if not is_encrypted(path):
        return None
    from_environment = os.environ.get(PASSPHRASE_ENV)
    if from_environment:
        return from_environment.encode()
    if sys.stdin.isatty():
        return ask_passphrase(f"passphrase for {path}: ")
    raise CliError(
        f"identity key file {str(path)!r} is encrypted: give --passphrase-file FILE, "
        f"set {PASSPHRASE_ENV}, or run on a terminal to be asked"
    )


def load_identity(path: Path, ask: bool, passphrase_file: Path | None) -> Identity:
    return Identity.load(path, identity_passphrase(path, ask, passphrase_file))


def address_callback(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> Address | None:
    """A click callback: ``HOST:PORT`` or ``[V6HOST]:PORT`` from the command line."""
    if value is None:
        return None
    try:
        return parse_host_port(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not HOST:PORT") from None


def format_address(address: Address | list[Any] | None) -> str:
    """An address for a table: ``HOST:PORT`` (``[V6HOST]:PORT``), or ``-`` for none."""
    if not address:
        return "-"
    host, port = address
    return format_host_port((str(host), int(port)))


def find_record(records: Iterable[PeerRecord], wanted: str) -> PeerRecord:
    """The one record named ``wanted``, or whose peer id is or starts with it (six hex digits
    at least). A :class:`~p2ptls._peer_lookup.PeerLookupError` (exit status 1) says why not."""
    by_id = {record.peer_id: record for record in records}
    names = ((peer_id, record.name) for peer_id, record in by_id.items() if record.name)
    return by_id[find_peer(wanted, names, by_id)]


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """A table with rich (the first row is the header): ruled and coloured on a terminal, plain
    aligned columns in a pipe (for scripts), never wrapped or cut (peer ids stay whole)."""
    console = rich.console.Console(highlight=False)
    terminal = console.is_terminal
    table = rich.table.Table(
        box=rich.box.SIMPLE_HEAD if terminal else None,
        pad_edge=False,
        show_edge=False,
        header_style="bold" if terminal else "",
    )
    for heading in rows[0]:
        table.add_column(heading, no_wrap=True, overflow="ignore")
    for row in rows[1:]:
        table.add_row(*(rich.text.Text(cell) for cell in row))  # Text: no markup in cells
    if not terminal:
        width = sum(max(len(row[i]) for row in rows) + 2 for i in range(len(rows[0])))
        console = rich.console.Console(highlight=False, width=max(width, 80), color_system=None)
    with console.capture() as captured:
        console.print(table)
    click.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


def short_id(peer_id: PeerId | str) -> str:
    return (peer_id.hex() if isinstance(peer_id, PeerId) else peer_id)[:16]
