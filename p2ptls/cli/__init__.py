"""The ``p2ptls`` command (click): identities and network keys, the peer database, the demo, and
state nodes. :func:`main` is the entry point.

Every failure is reported on standard error as ``p2ptls: error: MESSAGE``, without a traceback.
Exit status: 0 success, 1 failure, 2 usage error (a wrong option or argument, or a request the
node refused as malformed), 3 no node answers on the control socket, 4 the node timed out,
130 interrupted.
"""

from __future__ import annotations

import logging
import sys

import click

from .. import __version__
from .._errors import P2PTLSError
from ..demo import main as demo_main
from ..state.control import ControlError
from ._common import CliError
from .keys import identity, psk
from .node import node
from .peers import peers

CONTROL_EXIT_CODES = {
    "not_found": 1,
    "bad_request": 2,
    "ambiguous": 2,
    "too_large": 2,
    "unavailable": 3,
    "timeout": 4,
}
"""Exit status per control error type; any other type exits with 1."""


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="p2ptls")
@click.option("-v", "--verbose", count=True, help="log more (INFO; twice: DEBUG)")
@click.option("-q", "--quiet", is_flag=True, help="log only errors")
def cli(verbose: int, quiet: bool) -> None:
    """p2ptls: secure peer-to-peer networking.

    First steps: p2ptls identity new alice.key (like wg genkey), p2ptls identity show alice.key
    (like wg pubkey: the public record to give others), p2ptls psk new network.psk (the network's
    shared key, copied to every member), then p2ptls node init alice.toml and p2ptls node run
    alice.toml. Every command has --help.
    """
    level = logging.WARNING
    if quiet:
        level = logging.ERROR
    elif verbose:
        level = logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


@cli.command(
    "demo",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
    short_help="the local demo (its options: p2ptls demo --help)",
)
@click.argument("arguments", nargs=-1, type=click.UNPROCESSED)
def demo(arguments: tuple[str, ...]) -> None:
    """Run the local demo: three peers, then three state nodes (options: p2ptls demo --help)."""
    demo_main(list(arguments))


cli.add_command(identity)
cli.add_command(psk)
cli.add_command(peers)
cli.add_command(node)


def fail(message: str, exit_code: int) -> None:
    """Report ``message`` the one way every command does, and exit."""
    print(f"p2ptls: error: {message}", file=sys.stderr)
    raise SystemExit(exit_code)


def main(argv: list[str] | None = None) -> None:
    """Run the ``p2ptls`` command with ``argv`` (default: the process's arguments)."""
    try:
        code = cli.main(args=argv, prog_name="p2ptls", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
        raise SystemExit(2) from None
    except click.UsageError as exc:
        if exc.ctx is not None:
            click.echo(exc.ctx.get_usage(), err=True)
            click.echo(f"Try '{exc.ctx.command_path} --help' for help.", err=True)
        fail(exc.format_message(), 2)
    except click.ClickException as exc:
        fail(exc.format_message(), exc.exit_code)
    except click.Abort:
        print(file=sys.stderr)
        raise SystemExit(130) from None
    except CliError as exc:
        fail(str(exc), exc.exit_code)
    except ControlError as exc:
        fail(str(exc), CONTROL_EXIT_CODES.get(exc.kind, 1))
    except P2PTLSError as exc:
        fail(str(exc), 1)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except OSError as exc:
        where = f" {exc.filename!r}" if exc.filename else ""
        fail(f"{exc.strerror or exc}{where}", 1)
    if isinstance(code, int) and code:
        raise SystemExit(code)


__all__ = ["cli", "main"]
