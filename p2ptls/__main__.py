"""The ``p2ptls`` command: create identities and network keys, show peer records, run the demo,
run a state node and use it (``p2ptls node --help``)."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

from . import Identity, NetworkKey, P2PTLSError
from .demo import main as demo_main
from .state.cli import add_node_commands


def _passphrase(args: argparse.Namespace, confirm: bool) -> bytes | None:
    if not args.passphrase:
        return None
    first = getpass.getpass("passphrase: ")
    if confirm and getpass.getpass("again: ") != first:
        raise SystemExit("passphrases differ")
    return first.encode()


def _identity_new(args: argparse.Namespace) -> None:
    path = Path(args.path)
    if path.exists():
        raise SystemExit(f"{path} exists; refusing to overwrite an identity")
    identity = Identity.generate(args.bits)
    identity.save(path, _passphrase(args, confirm=True))
    print(f"wrote {path} (mode 0600); peer id {identity.peer_id.hex()}")


def _identity_show(args: argparse.Namespace) -> None:
    identity = Identity.load(args.path, _passphrase(args, confirm=False))
    record = identity.peer_record(name=args.name or "")
    print(json.dumps(record.to_dict(), indent=2))


def _psk_new(args: argparse.Namespace) -> None:
    path = Path(args.path)
    if path.exists():
        raise SystemExit(f"{path} exists; refusing to overwrite a network key")
    key = NetworkKey.generate()
    key.save(path)
    print(f"wrote {path} (mode 0600); fingerprint {key.fingerprint}")


def _demo(args: argparse.Namespace) -> None:
    demo_main(args.demo_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2ptls", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    identity = commands.add_parser("identity", help="RSA identities").add_subparsers(
        dest="action", required=True
    )
    new = identity.add_parser("new", help="create an identity key file")
    new.add_argument("path")
    new.add_argument("--bits", type=int, default=3072, choices=(2048, 3072, 4096))
    new.add_argument("--passphrase", action="store_true", help="encrypt it (asks for one)")
    new.set_defaults(run=_identity_new)
    show = identity.add_parser("show", help="print the public peer record of an identity")
    show.add_argument("path")
    show.add_argument("--name", help="label to put in the record")
    show.add_argument("--passphrase", action="store_true")
    show.set_defaults(run=_identity_show)

    psk = commands.add_parser("psk", help="network keys").add_subparsers(
        dest="action", required=True
    )
    psk_new = psk.add_parser("new", help="create a network key file")
    psk_new.add_argument("path")
    psk_new.set_defaults(run=_psk_new)

    demo = commands.add_parser("demo", help="run the three-peer local demo")
    demo.add_argument("demo_args", nargs=argparse.REMAINDER)
    demo.set_defaults(run=_demo)

    add_node_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except P2PTLSError as exc:
        print(f"p2ptls: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
