"""benchmarks/_common.py: percentiles, medians of runs, the JSON document every benchmark writes."""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

import pytest

from benchmarks import _common


def test_percentiles_interpolate_between_closest_ranks() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    p50, p99 = _common.percentiles(values, 50, 99)
    assert p50 == pytest.approx(50.5)
    assert p99 == pytest.approx(99.01)
    assert _common.percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)  # unsorted input
    assert _common.percentile([7.0], 99) == 7.0
    assert math.isnan(_common.percentile([], 50))
    with pytest.raises(ValueError):
        _common.percentiles(values, 100)


def test_median_of_runs_is_element_wise() -> None:
    runs = [
        {"a": {"x": 1.0, "y": None}, "n": 3, "label": "first", "only": 5.0},
        {"a": {"x": 3.0, "y": math.nan}, "n": 1, "label": "second"},
        {"a": {"x": 2.0, "y": 4.0}, "n": 2, "label": "third"},
    ]
    assert _common.median_of_runs(runs) == {
        "a": {"x": 2.0, "y": 4.0},
        "n": 2.0,
        "label": "first",
        "only": 5.0,
    }
    assert _common.median_of_runs([None, None]) is None
    with pytest.raises(ValueError):
        _common.median_of_runs([])


def test_the_json_document_has_one_shape(tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    _common.write_json(
        path,
        "example",
        params={"size": 3, "kinds": ("a", "b")},
        quick=True,
        runs=3,
        results={"rate": {"a": 1.5, "b": math.nan}},
    )
    document = json.loads(path.read_text())  # strict JSON: no NaN
    assert list(document) == [
        "benchmark",
        "params",
        "quick",
        "date",
        "commit",
        "python",
        "machine",
        "runs",
        "results",
    ]
    assert document["benchmark"] == "example" and document["quick"] is True
    assert document["params"] == {"size": 3, "kinds": ["a", "b"]}
    assert document["runs"] == 3
    assert document["results"] == {"rate": {"a": 1.5, "b": None}}
    date = datetime.datetime.fromisoformat(document["date"])
    assert date.utcoffset() == datetime.timedelta(0)
    assert document["commit"] is None or isinstance(document["commit"], str)
    assert set(document["machine"]) == {"cores", "platform"}


def test_tables_print_text_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    _common.print_table(["name", "value"], [["[bold]x", "1,234"]], title="a [red]title")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "a [red]title"
    assert lines[1].split() == ["name", "value"]
    assert lines[3].split() == ["[bold]x", "1,234"]
    assert all(line == line.rstrip() for line in lines)
