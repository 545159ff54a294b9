"""Files that a killed process never leaves half written.

Each file is written to a temporary file in its own directory, flushed and fsynced, then renamed over its
name (``os.replace``: atomic within one file system), and the directory is fsynced so that the rename
survives a crash as well. A reader sees the old file or the new one, never a mix; a kill leaves at most a
temporary named after its writer (``.last.ckpt.<pid>@<host>.<random>.tmp``), which
:func:`remove_stale_temporaries` deletes at the next start.

Why in the destination directory: a temporary anywhere else ($TMPDIR on /dev/shm or a node-local disk,
outputs on a network share) is on another file system, where the rename becomes a copy over the target,
and a kill during that copy truncates the target.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal

import torch

_TEMPORARY = re.compile(r"^\..+\.(?P<pid>\d+)@(?P<host>[^@/]+)\.[0-9a-f]{8}\.tmp$")


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A new name next to ``path`` for a temporary file or folder that becomes ``path``, marked with this
    process (pid and host) so that a later start can tell the leftovers of a dead writer."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}@{socket.gethostname()}.{secrets.token_hex(4)}.tmp")


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make the renames and deletions in ``directory`` durable (a no-op where the file system cannot
    fsync a directory)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_write(
    path: str | os.PathLike, mode: Literal["wb", "w"] = "wb", encoding: str | None = None
) -> Iterator[IO[Any]]:
    """``with atomic_write(path) as f: ...`` writes ``f`` to a temporary in ``path``'s directory (created if
    missing) and, when the block ends without an error, fsyncs it and renames it over ``path``. On an
    error the temporary is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    # os.open with 0o666, unlike tempfile.mkstemp's 0o600: the file gets the permissions open() would give
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def _writer_is_gone(pid: int, host: str, path: Path, foreign_after_s: float) -> bool:
    if host != socket.gethostname():
        # another machine's process cannot be asked: its temporary is stale once untouched for long
        return time.time() - path.lstat().st_mtime > foreign_after_s
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user's
        pass
    return False


def remove_stale_temporaries(directory: str | os.PathLike, foreign_after_s: float = 3600.0) -> list[Path]:
    """Delete the temporaries (files or folders named by :func:`temporary_sibling`) in ``directory`` whose
    writer is dead: a process of this host that no longer exists, or, on another host, one that has not
    touched its temporary for ``foreign_after_s`` seconds. Returns the paths removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in directory.iterdir():
        match = _TEMPORARY.match(entry.name)
        try:
            if not match or not _writer_is_gone(int(match["pid"]), match["host"], entry, foreign_after_s):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:  # another process cleaned it up meanwhile
            continue
        removed.append(entry)
    return removed


def os_error(error: OSError, message: str) -> OSError:
    """An error of ``error``'s class (PermissionError, NotADirectoryError, ...) and errno whose text is
    ``message``, then the OS's words and the path it failed on."""
    where = f": {error.filename!r}" if error.filename else ""
    text = f"{message}: {error.strerror or error}{where}"
    return type(error)(error.errno, text) if error.errno is not None else type(error)(text)


def check_writable(directory: str | os.PathLike, what: str = "directory") -> None:
    """Create ``directory`` if missing and write and delete a probe file in it, so that an unwritable
    output directory fails a run before training, not after it.

    Raises:
        OSError (of the class the OS gave): naming ``what``, ``directory`` and the OS error.
    """
    directory = Path(directory)
    probe = temporary_sibling(directory / "write-probe")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            os.write(fd, b"vtrain write probe\n")
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as e:
        raise os_error(e, f"{what} {directory} is not writable") from e
