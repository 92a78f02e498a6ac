"""``python -m p2ptls``: the ``p2ptls`` command (see :mod:`p2ptls.cli`)."""

from __future__ import annotations

from .cli import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
