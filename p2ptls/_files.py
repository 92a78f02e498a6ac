"""Private files: written 0600 atomically, refused when others can read them; and files of
our own, refused when others could change them."""

from __future__ import annotations

import contextlib
import errno
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
    tmp_name = _durable_temporary(target, directory, data)
    try:
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(directory)


def _durable_temporary(target: Path, directory: Path, data: bytes) -> str:
    """A new temporary file beside ``target`` (mode 0600) holding ``data``, fsynced."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    return tmp_name


def _fsync_directory(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def create_private_file(path: StrPath, data: bytes, what: str = "file") -> None:
    """Write ``data`` to a new file ``path`` (mode 0600), atomically, never replacing a file.

    The data goes to a temporary file (created with ``O_EXCL``, mode 0600) that is fsynced and
    then hard-linked to ``path``: the link fails if ``path`` exists, even when another process
    creates it at the same moment, and a crash leaves either no file or the whole file. Raises
    ``FileExistsError`` if ``path`` exists. On a file system without hard links the file is
    created with ``O_CREAT | O_EXCL`` and written in place instead.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    message = f"refusing to overwrite the existing {what} (pass overwrite=True)"
    refused = FileExistsError(errno.EEXIST, message, str(target))
    if target.exists() or target.is_symlink():
        raise refused
    tmp_name = _durable_temporary(target, directory, data)
    try:
        try:
            os.link(tmp_name, target)
        except FileExistsError:
            raise refused from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            _write_exclusive(target, data, refused)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
    _fsync_directory(directory)


def _write_exclusive(target: Path, data: bytes, refused: FileExistsError) -> None:
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise refused from None
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def read_private_file(path: StrPath, what: str, max_size: int | None = None) -> bytes:
    """Read a file that must not be readable or writable by group or others.

    The mode is checked on the opened file (no window between check and read). With
    ``max_size``, at most ``max_size + 1`` bytes are read, so the caller can refuse a larger file
    without having held it in memory.
    """
    target = Path(path)
    try:
        handle = target.open("rb")
    except FileNotFoundError:
        raise KeyFileError(f"{what} {str(target)!r} does not exist") from None
    with handle:
        info = os.fstat(handle.fileno())
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"{what} {str(target)!r} is accessible by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); fix it with: chmod 600 {str(target)!r}"
            )
        return handle.read() if max_size is None else handle.read(max_size + 1)


def check_own_path(path: StrPath, what: str, error: type[Exception] = KeyFileError) -> None:
    """Refuse a file or directory that another user owns or that group or others may write.

    Whoever can change it could substitute its contents (a peer record with another key, a
    database) or remove it to stop a node from starting. The error names the path and the fix.
    """
    target = Path(path)
    _check_own(target.stat(), target, what, error)


def read_own_file(
    path: StrPath, what: str, max_size: int, error: type[Exception] = KeyFileError
) -> bytes:
    """Read a file whose contents are trusted but not secret (a peer record): it must belong to
    the running user and not be writable by group or others (see :func:`check_own_path`).

    The checks are made on the opened file (no window between check and read). At most
    ``max_size + 1`` bytes are read, so the caller can refuse a larger file without having held
    it in memory. Every failure, a missing file included, raises ``error`` naming the path.
    """
    target = Path(path)
    try:
        handle = target.open("rb")
    except FileNotFoundError:
        raise error(f"{what} {str(target)!r} does not exist") from None
    except OSError as exc:
        raise error(f"cannot read {what} {str(target)!r}: {exc.strerror or exc}") from None
    with handle:
        _check_own(os.fstat(handle.fileno()), target, what, error)
        return handle.read(max_size + 1)


def _check_own(info: os.stat_result, target: Path, what: str, error: type[Exception]) -> None:
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
