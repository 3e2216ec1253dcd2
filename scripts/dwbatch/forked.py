"""Run one function in a second process, beside this one, and get its result back.

Why: a large join has two halves of work that need nothing from each other (indexing the
request lines, indexing the result lines), and most machines have a second CPU that would
otherwise stay idle.

Only where that is safe: Linux (fork without exec), two or more CPUs for this process, and
no other thread running (a forked child has only the thread that forked; a lock another
thread held would stay locked in it). The child's result comes back as JSON through a pipe.
A child that fails in any way gives None, and the caller does the work itself: the result
is the same, only later. DWBATCH_PARALLEL=never keeps everything in one process; =always
forks whatever the size (what the tests use to check both ways give the same files).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable

MODE_ENV = "DWBATCH_PARALLEL"
MODES = ("auto", "always", "never")
_MAX_ANSWER = 1 << 20  # bytes of JSON a child may send back


def wanted(work_bytes: int, worth_it: int) -> bool:
    """Whether to fork for `work_bytes` of work (auto: from `worth_it` bytes on)."""
    mode = os.environ.get(MODE_ENV, "auto").strip().lower()
    if mode == "never" or not _can_fork():
        return False
    return mode == "always" or work_bytes >= worth_it


def _can_fork() -> bool:
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return False
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return cpus >= 2 and threading.active_count() == 1


class Child:
    """A forked child running one function; result() waits for it, stop() ends it."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid, self.fd = pid, fd

    def result(self):
        """The function's return value, or None when the child failed, said too much or
        was stopped."""
        chunks, size = [], 0
        if self.fd >= 0:
            with os.fdopen(self.fd, "rb") as pipe:
                self.fd = -1
                while size <= _MAX_ANSWER:
                    data = pipe.read(65536)
                    if not data:
                        break
                    chunks.append(data)
                    size += len(data)
        if size > _MAX_ANSWER:  # (it may be blocked writing the rest: end it)
            self.stop()
            return None
        if self._wait() != 0:
            return None
        try:
            answer = json.loads(b"".join(chunks))
        except ValueError:
            return None
        return answer.get("value") if isinstance(answer, dict) and "value" in answer else None

    def stop(self) -> None:
        """End the child now (the caller is giving up) and wait for it."""
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        self._wait()

    def _wait(self) -> int | None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        if self.pid <= 0:
            return None
        try:
            _pid, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            status = None
        self.pid = 0
        return None if status is None else os.waitstatus_to_exitcode(status)


def start(function: Callable, *args) -> Child | None:
    """function(*args) in a forked child (its JSON-able value comes back through result());
    None when the fork itself fails: then the caller does the work."""
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        return None
    if pid == 0:  # the child: never returns, never runs the parent's cleanup
        code = 1
        try:
            os.close(read_end)
            # Ctrl-C or a stop ends the child at once; the parent removes what it leaves.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            data = json.dumps({"value": function(*args)}).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(write_end, view):]
            code = 0
        except BaseException:  # noqa: BLE001 - whatever it was, the parent does the work
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    return Child(pid, read_end)
