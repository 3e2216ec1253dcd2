"""Incremental, resumable downloads of a batch's output and error files.

Why it is careful: results are expensive, and a download that breaks off must neither lose
a line nor save one twice. So:
- each request asks for `?skip=<lines already saved>` and the answer is trusted as the
  service describes it (`X-Last-Line` = skip + lines in this answer, `X-Incomplete` = more
  may come); header names are compared case-insensitively;
- only complete lines (ending in "\\n") are appended to the raw copy; a torn last line is
  dropped and asked for again;
- after every append (and during a long one, about every CHECKPOINT_LINES lines, in a thread
  so the download does not wait for the disk) the raw file is fsynced and then the counts
  (lines and bytes) are stored; on the next run a raw file longer than the stored count (a
  crash between the two) is cut back to it, so the extra lines are fetched again instead of
  duplicated;
- servers without those headers (stock OpenAI-compatible ones) give the whole file once the
  batch has ended: it is then downloaded whole into a temporary file and renamed into place;
- saved lines are only ever replaced by a complete, checked new copy: when they no longer
  line up with the server's (fewer lines than saved, a changed file id, counts that went
  backwards, an error file rebuilt by the server's in-place retry), the file is downloaded
  again beside the saved copy and renamed over it only once it is whole and holds at least
  what it must; a 404 means the file is gone (deleted or expired), and the saved lines stay;
- nothing the server sends can make it unbounded or leave the raw folder: X-Last-Line must be
  a line count no larger than the batch, a line no longer than a cap (64 MiB by default), ids
  are checked (shapes.py) before they name a file, and a raw copy that is a symbolic link is
  refused;
- counts stored here carry a seal: counts edited by hand are not trusted, the raw copy's own
  lines are counted instead;
- everything streams to disk: memory does not grow with the file.

The counts live in a `StateStore`: the job file's shard `downloaded` object, or a small JSON
file beside the raw copies for batches fetched by bare id.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from . import client as api_client
from . import errors, jobfile, shapes
from .fsutil import exclusive_lock, write_json_atomic
from .limits import MAX_RESULT_LINE_BYTES

CHECKPOINT_LINES = 100_000
MAX_ATTEMPTS_WITHOUT_PROGRESS = 5
KINDS = ("output", "error")


# --------------------------------------------------------------------------- where counts live

class StateStore:
    """Where the download counts of one batch are kept between runs."""

    def load(self) -> dict:
        raise NotImplementedError

    def save(self, state: dict) -> None:
        raise NotImplementedError


class JobShardStore(StateStore):
    """The `downloaded` object of one shard of a job file (saved under the job file's lock)."""

    def __init__(self, job_path: str, shard_index: int) -> None:
        self.job_path = job_path
        self.shard_index = shard_index

    def load(self) -> dict:
        job = jobfile.load_job(self.job_path)
        return dict(jobfile.shard_by_index(job, self.shard_index).get("downloaded") or {})

    def save(self, state: dict) -> None:
        with jobfile.job_lock(self.job_path):
            job = jobfile.load_job(self.job_path)
            jobfile.shard_by_index(job, self.shard_index)["downloaded"] = dict(state)
            jobfile.save_job(self.job_path, job)


class SidecarStore(StateStore):
    """A JSON file beside the raw copies, for batches fetched by bare id (no job file)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise errors.InputError(
                f"download state {self.path} cannot be read ({exc})",
                hint=f"delete {self.path} (the raw files beside it are then counted afresh)"
            ) from None
        state = data.get("downloaded") if isinstance(data, dict) else None
        if state is None:
            return {}
        if not isinstance(state, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0
                for k, v in state.items() if k.endswith(("_lines", "_bytes"))):
            raise errors.InputError(
                f"download state {self.path} is not as this tool writes it",
                hint=f"delete {self.path} (the raw files beside it are then counted afresh)")
        return state

    def save(self, state: dict) -> None:
        write_json_atomic(self.path, {"downloaded": state})


# --------------------------------------------------------------------------- paths and locks

def raw_paths(raw_dir: str, batch_id: str) -> dict[str, str]:
    """Raw copies of one batch: output, error and (bare ids only) input lines.

    The id was checked when it arrived (shapes.py); checked again here, as it names files."""
    if not shapes.is_id(batch_id):
        raise errors.InputError(f"batch id {batch_id!r}: {shapes.id_problem(batch_id)}",
                                hint="pass the batch id as batches.py list shows it")
    return {"output": os.path.join(raw_dir, f"{batch_id}.output.jsonl"),
            "error": os.path.join(raw_dir, f"{batch_id}.errors.jsonl"),
            "input": os.path.join(raw_dir, f"{batch_id}.input.jsonl"),
            "state": os.path.join(raw_dir, f"{batch_id}.state.json")}


@contextlib.contextmanager
def raw_dir_lock(raw_dir: str, wait: float = 10.0) -> Iterator[None]:
    """One download into a raw folder at a time (two would append the same lines twice)."""
    os.makedirs(raw_dir, exist_ok=True)
    lock_path = os.path.join(raw_dir, ".download.lock")

    def busy() -> errors.DWError:
        return errors.DWError(
            f"another fetch_results.py is downloading into {raw_dir} (it holds {lock_path})",
            code="download_busy", exit_code=errors.UNAVAILABLE,
            hint="wait for it to finish, then re-run this command")

    with exclusive_lock(lock_path, wait, busy):
        yield


# --------------------------------------------------------------------------- raw file upkeep

BESIDE = ".new"  # a fresh copy is downloaded here, then renamed over the saved one
PROBE_LINES = 101  # the most lines one `limit` answer gives: the error file check reads these


@dataclass(frozen=True)
class Caps:
    """What any answer may hold at most, whatever the server sends: lines in a file (the
    batch's request count, when known) and bytes in one line."""

    max_lines: int | None = None
    max_line_bytes: int = MAX_RESULT_LINE_BYTES


def refuse_link(path: str) -> None:
    """A raw copy that is a symbolic link is refused: writing would change its target."""
    if os.path.islink(path):
        raise errors.InputError(
            f"{path} is a symbolic link (to {os.readlink(path)}): the raw folder holds "
            "downloads only and the scripts never write through a link",
            code="unsafe_raw_file",
            hint=f"remove the link (rm {shlex.quote(path)}) and re-run the same command; the "
                 "file is then downloaded again")


def _open_raw(path: str, flags: int) -> int:
    """os.open that never follows a link at `path` (a raw copy is a plain file or nothing)."""
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o666)


def _new_file(path: str):
    """A fresh, empty file at `path` for writing (whatever was there, even a link, is gone)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return os.fdopen(_open_raw(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb")


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def count_complete_lines(path: str, stop_after: int | None = None) -> tuple[int, int]:
    """(lines, bytes) of the complete lines at the start of a file, streamed.

    stop_after: count at most that many lines (bytes then end after the last one counted).
    """
    lines = end = pos = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            n = chunk.count(b"\n")
            if stop_after is not None and lines + n >= stop_after:
                cut = -1
                for _ in range(stop_after - lines):
                    cut = chunk.index(b"\n", cut + 1)
                return stop_after, pos + cut + 1 if stop_after else 0
            if n:
                lines += n
                end = pos + chunk.rindex(b"\n") + 1
            pos += len(chunk)
    return lines, end


def _cut(path: str, nbytes: int) -> None:
    fd = _open_raw(path, os.O_RDWR)
    try:
        os.ftruncate(fd, nbytes)
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_raw_file(path: str, lines: int, nbytes: int | None, warn: Callable[[str], None]
                  ) -> tuple[int, int]:
    """Make the raw copy agree with the stored counts; return the counts to resume from.

    Longer than recorded (a crash after the append, before the counts were stored): cut
    back, the lines are fetched again. Shorter, missing, or without a recorded byte count:
    count the complete lines it holds (never more than recorded) and resume after them.
    """
    size = os.path.getsize(path) if os.path.exists(path) else 0
    if nbytes is not None:
        if size == nbytes and (lines > 0 or nbytes == 0):
            return lines, nbytes
        if size > nbytes and ((lines == 0 and nbytes == 0) or
                              (lines > 0 and nbytes > 0 and _ends_line(path, nbytes))):
            _cut(path, nbytes)
            return lines, nbytes
    if size == 0:
        if lines:
            warn(f"note: raw copy {path} is gone; downloading that file again from the start")
        return 0, 0
    counted, end = count_complete_lines(path, stop_after=lines)
    if end != size:
        _cut(path, end)
    if counted != lines:
        warn(f"note: raw copy {path} holds {counted} complete lines, not the recorded "
             f"{lines}; resuming after line {counted}")
    return counted, end


def _ends_line(path: str, nbytes: int) -> bool:
    with open(path, "rb") as f:
        f.seek(nbytes - 1)
        return f.read(1) == b"\n"


def _saved_counts(path: str, counts: _Counts, warn: Callable[[str], None]) -> tuple[int, int]:
    """The counts to resume from. Counts stored by this module carry a seal; counts without
    a matching one (edited by hand, or written by something else) are not trusted: the raw
    copy's own complete lines are counted instead."""
    if counts.sealed:
        return sync_raw_file(path, counts.lines, counts.bytes, warn)
    if not os.path.exists(path):
        return 0, 0
    lines, end = count_complete_lines(path)
    if end != os.path.getsize(path):
        _cut(path, end)
    warn(f"note: the download counts recorded for {path} ({counts.lines} lines) do not match "
         f"what was saved (edited by hand?); using the {lines} complete lines it holds")
    return lines, end


def _last_line(path: str, nbytes: int) -> bytes:
    """The last complete line of the first `nbytes` bytes of a file."""
    with open(path, "rb") as f:
        start = max(0, nbytes - (1 << 16))
        while True:
            f.seek(start)
            data = f.read(nbytes - start)
            cut = data.rfind(b"\n", 0, len(data) - 1)
            if cut >= 0 or start == 0:
                return data[cut + 1:]
            start = max(0, start - (1 << 20))


# --------------------------------------------------------------------------- one file

@dataclass
class FileResult:
    """What happened to one output or error file in this run."""

    kind: str
    file_id: str | None
    lines: int = 0          # lines saved in total
    new_lines: int = 0      # lines saved by this run
    # incremental | whole_file | replaced | kept | waiting_for_end | gone | none
    mode: str = "none"
    complete: bool = False  # the server said there is nothing more to come
    note: str | None = None  # why saved lines were kept as they are (gone, kept)

    def as_dict(self) -> dict:
        out = {"file_id": self.file_id, "lines": self.lines, "new_lines": self.new_lines,
               "mode": self.mode, "complete": self.complete}
        if self.note:
            out["note"] = self.note
        return out


def _seal(kind: str, lines: int, nbytes: int) -> str:
    return hashlib.sha256(f"{kind}:{lines}:{nbytes}".encode()).hexdigest()[:16]


class _Counts:
    """The stored counts of one file kind inside the state dict, saved through the store."""

    def __init__(self, state: dict, kind: str, store: StateStore) -> None:
        self.state = state
        self.kind = kind
        self.store = store

    @property
    def lines(self) -> int:
        return int(self.state.get(f"{self.kind}_lines") or 0)

    @property
    def bytes(self) -> int | None:
        """None when only a line count was recorded (then the raw copy is counted)."""
        value = self.state.get(f"{self.kind}_bytes")
        if value is None:
            return 0 if self.lines == 0 else None
        return int(value)

    @property
    def sealed(self) -> bool:
        """The counts are as this module stored them (nothing recorded counts as sealed)."""
        if self.lines == 0 and not self.bytes:
            return True
        return self.bytes is not None and \
            self.state.get(f"{self.kind}_seal") == _seal(self.kind, self.lines, self.bytes)

    def set(self, lines: int, nbytes: int, **extra) -> None:
        """Store the counts (and extra fields); nothing is written when nothing changed."""
        values = {f"{self.kind}_lines": lines, f"{self.kind}_bytes": nbytes,
                  f"{self.kind}_seal": _seal(self.kind, lines, nbytes),
                  **{f"{self.kind}_{key}": value for key, value in extra.items()}}
        if all(key in self.state and self.state[key] == value
               for key, value in values.items()):
            return
        self.state.update(values)
        self.store.save(self.state)


def _last_line_header(stream, skip: int, caps: Caps, file_id: str) -> int | None:
    """X-Last-Line as a number, None when absent; a value no server can mean is refused."""
    value = stream.header("X-Last-Line")
    if value is None:
        return None
    try:
        last = int(str(value).strip())
    except ValueError:
        last = -1
    if last < 0 or (caps.max_lines is not None and last > caps.max_lines):
        stream.close()
        limit = f" (the batch has {caps.max_lines} requests)" if caps.max_lines is not None \
            else ""
        raise errors.DWError(
            f"GET /files/{file_id}/content?skip={skip}: the server's X-Last-Line header is "
            f"{shapes.quote(value, 40)}, which cannot be a line count{limit}; nothing saved "
            "was changed", code="bad_response", exit_code=errors.UNAVAILABLE,
            hint="the server or something between sent a wrong answer: re-run the same "
                 "command later (the saved lines are kept)")
    return last


def _write(f, pieces: list) -> int:
    """Write one block's pieces; return how many bytes that was."""
    size = 0
    for piece in pieces:
        f.write(piece)
        size += len(piece)
    return size


class _Checkpoints:
    """Make the lines saved so far durable and record their counts, beside the download.

    A checkpoint waits for the disk (fsync) before the counts are stored, so the counts never
    claim lines a crash could lose. That wait runs in a thread while the download goes on (the
    disk and the network are both slow; waiting for one then the other would add them up).
    One checkpoint at a time: when the previous one is still running, the next is skipped.
    """

    def __init__(self, f, counts: _Counts | None) -> None:
        self.f = f
        self.counts = counts
        self.thread: threading.Thread | None = None
        self.failure: BaseException | None = None

    def start(self, lines: int, nbytes: int) -> None:
        if self.counts is None:
            return
        if self.thread is not None and self.thread.is_alive():
            return
        self.wait()
        self.f.flush()
        self.thread = threading.Thread(target=self._save, args=(lines, nbytes), daemon=True)
        self.thread.start()

    def _save(self, lines: int, nbytes: int) -> None:
        try:
            os.fsync(self.f.fileno())
            self.counts.set(lines, nbytes)
        except BaseException as exc:  # handed to the download's thread by wait()
            self.failure = exc

    def wait(self) -> None:
        """Let the running checkpoint finish, even through Ctrl-C (the file must not be closed
        under its fsync); then raise what went wrong in it, or the Ctrl-C."""
        interrupted = None
        while self.thread is not None and self.thread.is_alive():
            try:
                self.thread.join()
            except KeyboardInterrupt as exc:
                interrupted = exc
        self.thread = None
        failure, self.failure = self.failure, None
        if failure is not None:
            raise failure
        if interrupted is not None:
            raise interrupted

    def final(self, lines: int, nbytes: int) -> None:
        self.wait()
        self.f.flush()
        os.fsync(self.f.fileno())
        if self.counts is not None:
            self.counts.set(lines, nbytes)


def _append(stream, path: str, skip: int, nbytes: int, limit: int, counts: _Counts | None,
            caps: Caps = Caps()) -> tuple[int, int, bool]:
    """Append up to `limit` complete lines of `stream` to `path`, saving counts as it goes
    (counts None: a copy beside the saved one, recorded only once it is whole).

    Returns (lines appended, new byte count, interrupted?).
    """
    got = 0
    checkpoint = CHECKPOINT_LINES
    interrupted = False
    with _open_append(path) as f:
        checkpoints = _Checkpoints(f, counts)
        try:
            if limit > 0:
                for pieces, n in api_client.iter_line_blocks(
                        stream, max_lines=limit, max_line_bytes=caps.max_line_bytes):
                    nbytes += _write(f, pieces)
                    f.flush()  # whole lines reach the file as they arrive, not a buffer later
                    got += n
                    if got >= checkpoint:
                        checkpoints.start(skip + got, nbytes)
                        checkpoint = got + CHECKPOINT_LINES
        except api_client.StreamInterrupted:
            interrupted = True
        finally:
            checkpoints.final(skip + got, nbytes)
    return got, nbytes, interrupted


def _open_append(path: str):
    return os.fdopen(_open_raw(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab")


def _headerless(file_id: str, path: str, lines: int) -> errors.DWError:
    return errors.DWError(
        f"GET /files/{file_id}/content answered without the X-Last-Line header it sent "
        f"before: that is not this server's answer (a proxy or a captive portal?). The "
        f"{lines} lines saved in {path} are kept", code="bad_response",
        exit_code=errors.UNAVAILABLE,
        hint="check the network and --base-url, then re-run the same command")


def download_file(api, file_id: str | None, path: str, kind: str, state: dict,
                  store: StateStore, *, terminal: bool, start_over: str | None = None,
                  floor: int | None = None, caps: Caps = Caps(),
                  max_retries: int = MAX_ATTEMPTS_WITHOUT_PROGRESS,
                  warn: Callable[[str], None] = lambda m: None,
                  sleep: Callable[[float], None] = time.sleep) -> FileResult:
    """Bring the raw copy of one output/error file up to date; return what happened.

    start_over: a reason to download the file again from line 0 (beside the saved copy,
    which it replaces only once it is complete and holds at least `floor` lines: default,
    as many as were saved).
    max_retries: how many answers in a row may break off without a single new line.
    """
    result = FileResult(kind, file_id)
    counts = _Counts(state, kind, store)
    if not file_id:
        result.mode = "waiting_for_end" if not terminal else "none"
        return result
    refuse_link(path)
    _remove(path + BESIDE)  # left by a run that was killed: the saved copy is what counts
    old_id = state.get(f"{kind}_file_id")
    if old_id not in (None, file_id):
        start_over = f"the {kind} file id changed ({old_id} -> {file_id})"
    lines, nbytes = _saved_counts(path, counts, warn)
    if (lines, nbytes) != (counts.lines, counts.bytes) or not counts.sealed:
        counts.set(lines, nbytes)
    if old_id is None or (lines == 0 and old_id != file_id):
        counts.set(lines, nbytes, file_id=file_id)
    result.lines = lines
    floor = lines if floor is None else floor
    fresh = _Fresh(api, file_id, path, kind, counts, result, floor, caps, max_retries, warn,
                   sleep)
    if start_over and lines:
        return fresh.replace(start_over)
    if state.get(f"{kind}_mode") == "whole_file" and state.get(f"{kind}_complete") and terminal:
        result.mode, result.complete = "whole_file", True
        return result
    if kind == "error" and lines and state.get(f"{kind}_mode") == "incremental":
        why = fresh.check_saved_lines(lines, nbytes)
        if why == "gone":
            return result
        if why:
            return fresh.replace(why)

    stalled = 0
    while True:
        try:
            stream = api.file_content(file_id, skip=lines)
        except api_client.APIError as exc:
            if exc.status != 404:
                raise
            return fresh.gone()
        with stream:
            last = _last_line_header(stream, lines, caps, file_id)
            if last is None:
                if lines and state.get(f"{kind}_mode") != "whole_file":
                    raise _headerless(file_id, path, lines)
                if not terminal:
                    result.mode = "waiting_for_end"
                    return result
                return _whole_file(api, file_id, path, kind, counts, result, warn, sleep,
                                   max_retries, caps, stream)
            if last < lines:
                stream.close()
                return fresh.replace(
                    f"the server's {kind} file {file_id} now has fewer lines ({last}) than "
                    f"were saved ({lines})")
            incomplete = str(stream.header("X-Incomplete") or "").strip().lower()
            expected = last - lines
            got, nbytes, _ = _append(stream, path, lines, nbytes, expected, counts, caps)
        lines += got
        result.lines = lines
        result.new_lines += got
        result.mode = "incremental"
        if got >= expected:
            result.complete = incomplete == "false"
            counts.set(lines, nbytes, complete=result.complete, mode="incremental")
            return result
        stalled = 0 if got else stalled + 1
        if stalled > max_retries:
            raise errors.DWError(
                f"the download of {kind} file {file_id} kept breaking off at line "
                f"{lines + 1} ({lines} lines are saved in {path})",
                code="download_interrupted", exit_code=errors.UNAVAILABLE,
                hint="re-run the same command later: it continues after the saved lines")
        warn(f"note: the {kind} file download broke off after {lines} saved lines; "
             "continuing from there")
        sleep(min(0.1 * (2 ** stalled), 5.0))


@dataclass
class _Fresh:
    """A fresh copy of one file downloaded beside the saved one, which it replaces only once
    it is complete and checked; and the other ways saved lines are kept as they are."""

    api: object
    file_id: str
    path: str
    kind: str
    counts: _Counts
    result: FileResult
    floor: int
    caps: Caps
    max_retries: int
    warn: Callable[[str], None]
    sleep: Callable[[float], None]

    def gone(self) -> FileResult:
        """A 404: the file is unknown or was deleted (files expire), never "not ready yet"
        (a server that makes result files at the end names no file id before) and never
        "start over": the saved lines stay."""
        lines = self.result.lines
        self.result.mode = "gone"
        kept = (f"the {lines} lines saved before are kept and used" if lines
                else "nothing of it was saved before")
        self.result.note = (f"the {self.kind} file {self.file_id} is gone from the server "
                            f"(404: deleted or expired); {kept}")
        return self.result

    def replace(self, reason: str) -> FileResult:
        saved = self.result.lines
        new = self.path + BESIDE
        self.warn(f"note: {reason}; downloading the {self.kind} file again beside the saved "
                  f"copy, which is kept until the new one is complete")
        try:
            lines, nbytes, complete = self._download(new)
        except api_client.APIError as exc:
            _remove(new)
            if exc.status == 404:
                return self.gone()
            raise
        except BaseException:
            _remove(new)
            raise
        if lines < self.floor:
            _remove(new)
            self.result.mode = "kept"
            self.result.note = (f"the server's {self.kind} file {self.file_id} now has "
                                f"{lines} lines, fewer than the {self.floor} it must hold; "
                                f"the {saved} lines saved before are kept")
            return self.result
        os.replace(new, self.path)
        self.counts.set(lines, nbytes, complete=complete, mode="incremental",
                        file_id=self.file_id)
        self.result.lines, self.result.new_lines = lines, max(0, lines - saved)
        self.result.mode, self.result.complete = "replaced", complete
        return self.result

    def _download(self, new: str) -> tuple[int, int, bool]:
        """The whole file from line 0 into `new`: (lines, bytes, complete?)."""
        lines = nbytes = stalled = 0
        _new_file(new).close()
        while True:
            with self.api.file_content(self.file_id, skip=lines) as stream:
                last = _last_line_header(stream, lines, self.caps, self.file_id)
                if last is None:
                    raise _headerless(self.file_id, self.path, self.result.lines)
                if last < lines:
                    raise errors.DWError(
                        f"{self.kind} file {self.file_id}: the server reports {last} "
                        f"lines after serving {lines}; the saved copy is kept",
                        code="download_inconsistent", exit_code=errors.UNAVAILABLE,
                        hint="re-run the same command later")
                incomplete = str(stream.header("X-Incomplete") or "").strip().lower()
                got, nbytes, _ = _append(stream, new, lines, nbytes, last - lines, None,
                                         self.caps)
            lines += got
            if lines >= last:
                return lines, nbytes, incomplete == "false"
            stalled = 0 if got else stalled + 1
            if stalled > self.max_retries:
                raise errors.DWError(
                    f"the new download of {self.kind} file {self.file_id} kept breaking "
                    f"off; the saved copy {self.path} is kept as it was",
                    code="download_interrupted", exit_code=errors.UNAVAILABLE,
                    hint="re-run the same command later")
            self.sleep(min(0.1 * (2 ** stalled), 5.0))

    def check_saved_lines(self, lines: int, nbytes: int) -> str | None:
        """Do the saved error lines still line up with the server's? None when they do, else
        the reason (or "gone" on a 404).

        The server's in-place retry rebuilds the error file: retried requests leave it and
        those that fail again come back at the end, so `skip` would jump over new lines. The
        first lines (up to PROBE_LINES: usually all of them) and the last saved line are read
        again and compared byte for byte.
        """
        first = min(lines, PROBE_LINES)
        probes = [(0, first)] + ([(lines - 1, 1)] if lines > first else [])
        for skip, count in probes:
            try:
                stream = self.api.file_content(self.file_id, skip=skip, limit=count)
            except api_client.APIError as exc:
                if exc.status != 404:
                    raise
                self.gone()
                return "gone"
            with stream, open(self.path, "rb") as saved:
                if skip:
                    saved_bytes = _last_line(self.path, nbytes)
                    seen = b"".join(bytes(p) for pieces, _ in api_client.iter_line_blocks(
                        stream, max_lines=1, max_line_bytes=self.caps.max_line_bytes)
                        for p in pieces)
                    same = seen == saved_bytes
                else:
                    same = True
                    for pieces, _ in api_client.iter_line_blocks(
                            stream, max_lines=count, max_line_bytes=self.caps.max_line_bytes):
                        for piece in pieces:
                            if saved.read(len(piece)) != piece:
                                same = False
                        if not same:
                            break
                    same = same and stream.lines_read >= count
            if not same:
                return (f"the saved lines of {self.kind} file {self.file_id} no longer match "
                        "the server's (an in-place retry rebuilds the error file)")
        return None


def _is_json_object(data: bytes) -> bool:
    try:
        return isinstance(json.loads(data), dict)
    except (ValueError, RecursionError):
        return False


def download_whole(api, file_id: str, path: str, *, attempts: int = MAX_ATTEMPTS_WITHOUT_PROGRESS,
                   first=None, sleep: Callable[[float], None] = time.sleep,
                   warn: Callable[[str], None] = lambda m: None, caps: Caps = Caps()
                   ) -> tuple[int, int]:
    """Download a whole file into `path` (temp file, then rename); returns (lines, bytes).

    first: an already open answer for the whole file to use for the first attempt.
    Every line must be a JSON object (a captive portal's page is not), there must be no more
    than caps.max_lines of them, none longer than caps.max_line_bytes; otherwise nothing is
    replaced. A last line without a newline is kept (with one added) when the body ended
    cleanly and it is whole JSON: some servers do not end their files with a newline.
    """
    tmp = path + ".part"
    refuse_link(path)
    for attempt in range(attempts):
        lines = nbytes = 0
        try:
            stream = first if first is not None and attempt == 0 else \
                api.file_content(file_id)
            with stream, _new_file(tmp) as f:
                for pieces, n in api_client.iter_line_blocks(
                        stream, max_line_bytes=caps.max_line_bytes):
                    block = b"".join(bytes(p) for p in pieces)
                    _check_json_lines(block, file_id, lines)
                    nbytes += _write(f, [block])
                    lines += n
                    _check_line_count(lines, caps, file_id)
                if stream.partial:
                    if not _is_json_object(stream.partial):
                        raise api_client.StreamInterrupted(
                            f"file {file_id} ended inside a line", lines_read=lines)
                    f.write(stream.partial + b"\n")
                    lines += 1
                    nbytes += len(stream.partial) + 1
                    _check_line_count(lines, caps, file_id)
                f.flush()
                os.fsync(f.fileno())
        except api_client.StreamInterrupted:
            warn(f"note: the download of file {file_id} broke off; starting it again")
            sleep(min(0.1 * (2 ** attempt), 5.0))
            continue
        except BaseException:
            _remove(tmp)
            raise
        os.replace(tmp, path)
        return lines, nbytes
    _remove(tmp)
    raise errors.DWError(
        f"the download of file {file_id} kept breaking off", code="download_interrupted",
        exit_code=errors.UNAVAILABLE, hint="re-run the same command later")


def _check_json_lines(block: bytes, file_id: str, before: int) -> None:
    for i, line in enumerate(block.splitlines()):
        if line.strip() and not _is_json_object(line):
            raise errors.DWError(
                f"GET /files/{file_id}/content: line {before + i + 1} is not a JSON object "
                f"(it begins {shapes.quote(line[:80].decode('utf-8', 'replace'), 120)}): not "
                "a result file (a proxy or a captive portal?); nothing saved was replaced",
                code="bad_response", exit_code=errors.UNAVAILABLE,
                hint="check the network and --base-url, then re-run the same command")


def _check_line_count(lines: int, caps: Caps, file_id: str) -> None:
    if caps.max_lines is not None and lines > caps.max_lines:
        raise errors.DWError(
            f"GET /files/{file_id}/content sent more lines than the batch has requests "
            f"({caps.max_lines}); the download was stopped and nothing saved was replaced",
            code="bad_response", exit_code=errors.UNAVAILABLE,
            hint="the server or something between sent a wrong answer: re-run the same "
                 "command later")


def _whole_file(api, file_id, path, kind, counts: _Counts, result: FileResult, warn, sleep,
                max_retries: int, caps: Caps, first=None) -> FileResult:
    """Servers without partial-result headers: the whole file, once the batch has ended."""
    before = counts.lines
    lines, nbytes = download_whole(api, file_id, path, attempts=max_retries + 1, first=first,
                                   sleep=sleep, warn=warn, caps=caps)
    counts.set(lines, nbytes, complete=True, mode="whole_file", file_id=file_id)
    result.lines = lines
    result.new_lines = max(0, lines - before)
    result.mode = "whole_file"
    result.complete = True
    return result


# --------------------------------------------------------------------------- one batch

@dataclass
class BatchDownload:
    """The raw copies of one batch after this run, and what the run did to them."""

    batch_id: str
    status: str | None
    paths: dict
    files: dict  # kind -> FileResult

    def as_dict(self) -> dict:
        return {"batch_id": self.batch_id, "status": self.status,
                **{kind: res.as_dict() for kind, res in self.files.items()}}


def download_batch(api, batch: dict, raw_dir: str, store: StateStore, *, terminal: bool,
                   need_input: bool = False, refetch: tuple[str, ...] = (),
                   requests: int | None = None,
                   max_line_bytes: int = MAX_RESULT_LINE_BYTES,
                   max_retries: int = MAX_ATTEMPTS_WITHOUT_PROGRESS,
                   warn: Callable[[str], None] = lambda m: None,
                   sleep: Callable[[float], None] = time.sleep) -> BatchDownload:
    """Bring the raw output and error copies (and, for bare ids, the input) up to date.

    refetch: kinds ("error") to download again from line 0 whatever was saved.
    requests: how many requests the batch has, when the batch does not say (caps the lines).
    """
    batch_id = batch["id"]
    paths = raw_paths(raw_dir, batch_id)
    for path in paths.values():
        refuse_link(path)
    counts = batch.get("request_counts") or {}
    caps = Caps(counts.get("total") or requests, max_line_bytes)
    state = store.load()
    loaded = dict(state)
    if isinstance(store, SidecarStore):  # a job file has the status in the shard already
        state["batch_status"] = batch.get("status")
    files = {}
    if need_input:
        files["input"] = _input_copy(api, batch, paths["input"], state, store, warn, sleep,
                                     max_retries, caps)
    for kind in KINDS:
        reason = (f"asked to check the {kind} file of batch {batch_id} again"
                  if kind in refetch else _shrunk(batch, state, kind))
        files[kind] = download_file(api, batch.get(f"{kind}_file_id"), paths[kind], kind,
                                    state, store, terminal=terminal, start_over=reason,
                                    floor=_floor(batch, kind), caps=caps,
                                    max_retries=max_retries, warn=warn, sleep=sleep)
    if state != loaded:  # a re-run with nothing new rewrites no job file
        store.save(state)
    return BatchDownload(batch_id, batch.get("status"), paths, files)


_COUNT_OF_KIND = {"output": "completed", "error": "failed"}


def _floor(batch: dict, kind: str) -> int | None:
    """The fewest lines a new copy of a file must hold to replace the saved one: an output
    file never loses lines (None: as many as were saved); an error file holds at least the
    requests the batch counts as failed (its in-place retry takes the others out)."""
    if kind != "error":
        return None
    failed = (batch.get("request_counts") or {}).get("failed")
    return failed if isinstance(failed, int) else None


def _shrunk(batch: dict, state: dict, kind: str) -> str | None:
    """Why the saved error lines cannot all still be on the server, or None.

    A batch's `/retry` moves failed requests back to pending and takes their lines out of the
    error file, so the saved lines no longer line up with the server's: skip would then jump
    over new lines. More saved lines than the batch counts is the sign. (Output files never
    lose lines: there, fewer lines on the server is the server's error, not a reason.)
    """
    if kind != "error":
        return None
    counts = batch.get("request_counts") or {}
    try:
        total = int(counts.get("total") or 0)
        have = int(counts.get(_COUNT_OF_KIND[kind]) or 0)
    except (TypeError, ValueError):
        return None
    saved = int(state.get(f"{kind}_lines") or 0)
    if total > 0 and saved > have:
        return (f"{saved} {kind} lines were saved but batch {batch.get('id')} now counts "
                f"{have} {_COUNT_OF_KIND[kind]} requests (a retry sent failed requests back?)")
    return None


def _input_copy(api, batch: dict, path: str, state: dict, store: StateStore, warn, sleep,
                max_retries: int, caps: Caps) -> FileResult:
    """The batch's own input file, once: it gives the input order for bare batch ids."""
    file_id = batch.get("input_file_id")
    result = FileResult("input", file_id, mode="whole_file")
    if not file_id:
        raise errors.DWError(
            f"batch {batch.get('id')} names no input_file_id, so its results cannot be put "
            "back in input order", code="no_input_file", exit_code=errors.UNAVAILABLE,
            hint="fetch it through the job file submit.py wrote instead")
    recorded = state.get("input_file_id") == file_id and state.get("input_complete")
    if recorded and os.path.exists(path) and os.path.getsize(path) == state.get("input_bytes"):
        result.lines, result.complete = int(state.get("input_lines") or 0), True
        return result
    lines, nbytes = download_whole(api, file_id, path, attempts=max_retries + 1, sleep=sleep,
                                   warn=warn, caps=caps)
    state.update(input_file_id=file_id, input_lines=lines, input_bytes=nbytes,
                 input_complete=True)
    store.save(state)
    result.lines = result.new_lines = lines
    result.complete = True
    return result
