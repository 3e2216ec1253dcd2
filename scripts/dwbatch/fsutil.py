"""Crash-safe file writes: readers see the old complete file or the new one, never a torn one;
and the lock that keeps two commands from writing the same files at once."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import IO

from .secrets import redact

try:  # POSIX; elsewhere the lock is a no-op (the atomic writes still hold)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


def make_temp_beside(path: str, suffix: str = ".tmp") -> tuple[int, str]:
    """A temporary file in `path`'s folder with the permissions a plain open() would give.

    mkstemp makes files private (0600); a file renamed over `path` should instead keep the
    mode of the file it replaces, or follow the umask like any new file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=suffix,
                               dir=directory)
    try:
        mode = os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.fchmod(fd, mode)
    return fd, tmp


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8",
                newline: str | None = None, buffering: int = -1) -> Iterator[IO]:
    """Open a temporary file beside `path`; on success fsync and rename it over `path`.

    On any exception (or Ctrl-C) the temporary file is removed and `path` is untouched.
    """
    path = os.fspath(path)
    fd, tmp = make_temp_beside(path)
    try:
        if "b" in mode:
            f = os.fdopen(fd, mode, buffering)
        else:
            f = os.fdopen(fd, mode, buffering, encoding=encoding, newline=newline)
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, data: object) -> None:
    """Write `data` as pretty JSON to `path` atomically, with the API key redacted in every
    spelling (job files and state files hold what servers sent, and no secret)."""
    text = redact(json.dumps(data, indent=2, ensure_ascii=False))
    with atomic_open(path, "w") as f:
        f.write(text)
        f.write("\n")


@contextlib.contextmanager
def exclusive_lock(lock_path: str, wait: float, busy: Callable[[], BaseException]
                   ) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` (created if missing) while the block runs.

    Waits up to `wait` seconds for another holder to let go, then raises busy().
    """
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise busy() from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
