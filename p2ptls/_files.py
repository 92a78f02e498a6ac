"""Private files: written 0600 atomically, refused when others can read them."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from ._errors import KeyFileError

StrPath = str | os.PathLike[str]


def write_private_file(path: StrPath, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600: temporary file, fsync, rename, fsync directory.

    A crash at any point leaves either the old contents or the new ones, never a mix.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_private_file(path: StrPath, what: str) -> bytes:
    """Read a file that must not be readable or writable by group or others."""
    target = Path(path)
    try:
        info = target.stat()
    except FileNotFoundError:
        raise KeyFileError(f"{what} {str(target)!r} does not exist") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{what} {str(target)!r} is accessible by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); fix it with: chmod 600 {str(target)!r}"
        )
    return target.read_bytes()


def check_own_path(path: StrPath, what: str, error: type[Exception] = KeyFileError) -> None:
    """Refuse a file or directory that another user owns or that group or others may write.

    Whoever can change it could substitute its contents (a peer record with another key, a
    database) or remove it to stop a node from starting. The error names the path and the fix.
    """
    target = Path(path)
    info = target.stat()
    user = os.geteuid()
    if info.st_uid != user:
        raise error(
            f"{what} {str(target)!r} belongs to another user (uid {info.st_uid}, not {user}), "
            f"who could change it; use one of your own or fix it with: "
            f"chown {user} {str(target)!r}"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise error(
            f"{what} {str(target)!r} is writable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); fix it with: chmod go-w {str(target)!r}"
        )
