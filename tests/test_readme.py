"""Every Python block of README.md runs as written, so that the README cannot drift.

Each ```` ```python ```` block is a complete program: it runs in-process, in a fresh empty
directory, as ``__main__``, in the order of the README (a block may use files an earlier block of
the same section wrote, as a reader following along would). In the ``console`` blocks, every
``$ p2ptls`` command that needs no running node runs as written, through the installed command;
the node commands run end to end in ``tests/test_state_cli.py``. A Python block meant as a
fragment would be marked ```` ```python notest ````, and there is none. RSA keys are made at 2048
bits here instead of 3072, only for speed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
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
    if "example/echo/1" in code:
        lines = out.splitlines()
        assert lines[:3] == ["b'ping'", "b'hello from bob'", "1 connection"]
        assert "does not serve 'example/unknown/1'" in lines[3]
        assert lines[4].startswith("PeerConnected(")
    if "DSNodeServer" in code:
        assert out.splitlines()[:2] == ["bar", "['bootstrap', 'connector']"]


# -- shell sessions ----------------------------------------------------------------------------

# Commands that need a running node (or run one, listening on every interface) or that are the
# demo: the node commands run end to end in tests/test_state_cli.py, the demo in
# tests/test_examples_and_demo.py.
NEEDS_A_RUNNING_NODE = re.compile(
    r"^p2ptls (node (run|put|get|watch|peers|consensus|delete|info)|demo)\b"
)
# What a reader following the README has from the other machine (bob's record file).
FROM_THE_OTHER_MACHINE = (
    "p2ptls identity new bob.key --bits 2048",
    "p2ptls identity show bob.key --name bob > bob.json",
)
# What alice's node writes when it starts (`node run`), for the second machine to join through.
ALICE_RECORD = "p2ptls identity show alice.key --name alice --address 127.0.0.1:7401"


def console_commands() -> list[tuple[int, str]]:
    """(line number, command) of every ``$ p2ptls`` command of the README's console blocks, with
    continuation lines joined."""
    text = README.read_text(encoding="utf-8")
    commands: list[tuple[int, str]] = []
    for match in FENCE.finditer(text):
        if match.group(1).split()[:1] != ["console"]:
            continue
        first = text.count("\n", 0, match.start()) + 2
        pending: list[str] = []
        for offset, line in enumerate(match.group(2).splitlines()):
            if pending:
                pending.append(line)
            elif line.startswith("$ p2ptls "):
                pending = [line[2:]]
                start = first + offset
            if pending and not line.rstrip().endswith("\\"):
                commands.append((start, "\n".join(pending)))
                pending = []
    return commands


def test_every_standalone_readme_command_runs(tmp_path: Path) -> None:
    """The key, peer-database and ``node init`` commands run as written, in order, in one
    directory (``--bits 2048`` is added for speed)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    other, machine_b = tmp_path / "other", tmp_path / "machine-b"
    other.mkdir()
    machine_b.mkdir()

    def run(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, check=False, shell=True, cwd=cwd, env=env, capture_output=True, text=True
        )

    ran = 0
    for line, as_written in console_commands():
        if NEEDS_A_RUNNING_NODE.match(as_written):
            continue
        cwd, command = tmp_path, as_written
        if command.startswith("p2ptls peers") and not (tmp_path / "bob.json").exists():
            for step in FROM_THE_OTHER_MACHINE:
                assert run(step, other).returncode == 0
            shutil.copy(other / "bob.json", tmp_path / "bob.json")
        if "bob.toml" in command:  # machine B: its own directory, with the files it was given
            cwd = machine_b
            shutil.copy(tmp_path / "network.psk", machine_b / "network.psk")
            record = run(ALICE_RECORD, tmp_path)
            (machine_b / "alice.record.json").write_text(record.stdout)
        if command.startswith("p2ptls identity new") or "--new-identity" in command:
            code, _, comment = command.partition(" #")
            command = f"{code.rstrip()} --bits 2048" + (f" #{comment}" if comment else "")
        result = run(command, cwd)
        assert result.returncode == 0, f"README.md:{line}: {command}\n{result.stderr}"
        ran += 1
    assert ran >= 10
