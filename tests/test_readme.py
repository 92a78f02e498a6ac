"""Every Python block of README.md runs as written, so that the README cannot drift.

Each ```` ```python ```` block is a complete program: it runs in-process, in a fresh empty
directory, as ``__main__``, in the order of the README (a block may use files an earlier block of
the same section wrote, as a reader following along would). Blocks of other languages (shell
sessions) are not run; a Python block meant as a fragment would be marked ```` ```python notest
````, and there is none. RSA keys are made at 2048 bits here instead of 3072, only for speed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import p2ptls

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
PYTHON = {"python", "py", "python3"}


def python_blocks() -> list[tuple[int, str]]:
    """(line number, code) of every runnable Python block, in order."""
    text = README.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        info = match.group(1).split()
        if info and info[0] in PYTHON and "notest" not in info[1:]:
            line = text.count("\n", 0, match.start()) + 2
            blocks.append((line, match.group(2)))
    return blocks


def test_the_readme_has_python_blocks() -> None:
    assert len(python_blocks()) >= 5


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for the whole README, as a reader running the blocks one after another."""
    return tmp_path_factory.mktemp("readme")


@pytest.fixture
def fast_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    generate = p2ptls.Identity.generate.__func__  # type: ignore[attr-defined]

    def quick(cls: type[p2ptls.Identity], bits: int = 2048) -> p2ptls.Identity:
        return generate(cls, 2048)  # type: ignore[no-any-return]

    monkeypatch.setattr(p2ptls.Identity, "generate", classmethod(quick))


@pytest.mark.parametrize(
    ("line", "code"),
    [pytest.param(line, code, id=f"README.md:{line}") for line, code in python_blocks()],
)
@pytest.mark.usefixtures("fast_keys")
def test_readme_block_runs(
    line: int,
    code: str,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(workdir)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(code, f"README.md:{line}", "exec"), namespace)
    out = capsys.readouterr().out
    if "bob_handles_one_stream" in code:
        assert "bob got 27 bytes and b'or whole messages, up to 16 MiB'" in out
    if "DSNodeServer" in code:
        assert out.splitlines()[:2] == ["bar", "['bootstrap', 'connector']"]
