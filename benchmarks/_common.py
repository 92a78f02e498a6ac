"""Helpers shared by the benchmark scripts: percentiles, medians of runs, the JSON document every
benchmark writes, and console output (rich tables and progress, plain enough for CI logs).

Every benchmark's JSON file has one shape (:func:`document`)::

    {"benchmark": "stream", "params": {...}, "quick": true, "date": "2026-01-01T12:00:00Z",
     "commit": "1a2b3c4" or null, "python": "3.11.7", "machine": {"cores": 2, "platform": "..."},
     "runs": 3, "results": {...}}

``results`` holds the benchmark's own figures, each the median of ``runs`` runs
(:func:`median_of_runs`). NaN (nothing measured) is written as ``null``.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from p2ptls import _run_info

ROOT = Path(__file__).resolve().parent.parent
PLAIN_WIDTH = 160
"""Console width outside a terminal (CI logs): wide enough that no table wraps."""


# -- statistics ---------------------------------------------------------------------------------


def percentiles(values: Sequence[float], *qs: int) -> tuple[float, ...]:
    """The ``qs``-th percentiles (whole numbers 1..99) of ``values``.

    ``statistics.quantiles(method="inclusive")``: linear between closest ranks, the minimum and
    maximum being the 0th and 100th percentiles. NaN for each when ``values`` is empty.
    """
    if any(not 1 <= q <= 99 for q in qs):
        raise ValueError("percentiles are whole numbers from 1 to 99")
    if not values:
        return tuple(math.nan for _ in qs)
    if len(values) == 1:  # statistics.quantiles wants two points before Python 3.13
        return tuple(float(values[0]) for _ in qs)
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return tuple(cuts[q - 1] for q in qs)


def percentile(values: Sequence[float], q: int) -> float:
    """The ``q``-th percentile (1..99) of ``values`` (see :func:`percentiles`)."""
    return percentiles(values, q)[0]


def median_of(runs: int) -> str:
    """How a figure was taken, in words: ``"median of 3 runs"``, or ``"one run"``."""
    return "one run" if runs == 1 else f"median of {runs} runs"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def median_of_runs(runs: Sequence[Any]) -> Any:
    """The element-wise median of the results of several runs.

    Each run is a number, ``None``, or a mapping (nested to any depth) of such. Numbers are
    replaced by their median over the runs, leaving out ``None`` and NaN (``None`` when no run
    measured it); anything else (text, flags) is taken from the first run that has it.
    """
    if not runs:
        raise ValueError("no runs")
    present = [run for run in runs if run is not None]
    if not present:
        return None
    if all(isinstance(run, Mapping) for run in present):
        keys = dict.fromkeys(key for run in present for key in run)
        return {key: median_of_runs([run.get(key) for run in present]) for key in keys}
    if all(_is_number(run) for run in present):
        measured = [float(run) for run in present if not math.isnan(run)]
        return statistics.median(measured) if measured else None
    return present[0]


# -- the JSON document --------------------------------------------------------------------------


def git_commit() -> str | None:
    """The repository's short commit hash, or ``None`` outside a git checkout."""
    return _run_info.git_commit(ROOT)


_json_safe = _run_info.json_safe


def document(
    benchmark: str, *, params: Mapping[str, Any], quick: bool, runs: int, results: Any
) -> dict[str, Any]:
    """The JSON document of one benchmark run (the shape in this module's docstring)."""
    return {
        "benchmark": benchmark,
        "params": _json_safe(params),
        "quick": quick,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(),
        "python": platform.python_version(),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
        "runs": runs,
        "results": _json_safe(results),
    }


def write_json(
    path: str | Path,
    benchmark: str,
    *,
    params: Mapping[str, Any],
    quick: bool,
    runs: int,
    results: Any,
) -> None:
    """Write :func:`document` to ``path`` (indented, strict JSON)."""
    body = document(benchmark, params=params, quick=quick, runs=runs, results=results)
    Path(path).write_text(json.dumps(body, indent=2, allow_nan=False) + "\n")
    log(f"wrote {path}")


# -- console output -----------------------------------------------------------------------------


def _console(*, stderr: bool) -> Console:
    # Outside a terminal rich would assume 80 columns and wrap the tables: use a wide line
    # instead (unless COLUMNS says otherwise). Rich writes no colour codes outside a terminal.
    probe = Console(stderr=stderr)
    width = None if probe.is_terminal or "COLUMNS" in os.environ else PLAIN_WIDTH
    return Console(stderr=stderr, width=width, highlight=False)


out = _console(stderr=False)
"""Standard output: tables and reports."""
err = _console(stderr=True)
"""Standard error: progress and log lines, so that the tables on standard output stay clean."""


def log(message: str) -> None:
    """A progress line on standard error (printed above a live progress bar, if one is shown)."""
    err.print(message, markup=False, soft_wrap=True)


def say(message: str = "") -> None:
    """A line of the report on standard output, as written (no markup, no wrapping)."""
    out.print(message, markup=False, soft_wrap=True)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, left: int = 1) -> Table:
    """A table of text cells; the first ``left`` columns are aligned left, the others right."""
    grid = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold", pad_edge=False)
    for index, header in enumerate(headers):
        grid.add_column(Text(header), justify="left" if index < left else "right", no_wrap=True)
    for row in rows:
        grid.add_row(*(Text(cell) for cell in row))  # text as written, never rich markup
    return grid


def print_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    title: str | None = None,
    left: int = 1,
) -> None:
    """Print :func:`table` on standard output, after its ``title`` line if given, and a blank
    line."""
    if title is not None:
        out.print(Text(title, style="bold"), soft_wrap=True)
    out.print(table(headers, rows, left=left))
    out.print()


def progress() -> Progress:
    """A rich progress bar on standard error: redrawn in place on a terminal; elsewhere (CI logs)
    shown once, finished, when it stops, after the log lines printed while it ran.

    Give each task a ``status`` field (``add_task(..., status="")``): it is shown after the bar.
    """
    return Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}", markup=False),
        console=err,
    )
