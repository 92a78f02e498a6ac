"""Writing (or checking) the vector files: the command line every generator shares.

``python -m protocol.generate_X`` rewrites the files whose content changed; with ``--check`` it
writes nothing and exits 1 if any file is stale (CI and the tests use that).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

VECTOR_DIR = Path(__file__).resolve().parent / "vectors"


def write_or_check(
    rendered: Mapping[str, str], argv: Sequence[str] | None, description: str | None
) -> int:
    """``rendered`` maps file names under ``protocol/vectors/`` to their content."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    stale = [
        name
        for name, text in rendered.items()
        if not (VECTOR_DIR / name).exists()
        or (VECTOR_DIR / name).read_text(encoding="utf-8") != text
    ]
    if args.check:
        for name in stale:
            print(f"stale: protocol/vectors/{name}", file=sys.stderr)
        return 1 if stale else 0
    VECTOR_DIR.mkdir(parents=True, exist_ok=True)
    for name in stale:
        (VECTOR_DIR / name).write_text(rendered[name], encoding="utf-8")
        print(f"wrote protocol/vectors/{name}")
    return 0
