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
- everything streams to disk: memory does not grow with the file.

The counts live in a `StateStore`: the job file's shard `downloaded` object, or a small JSON
file beside the raw copies for batches fetched by bare id.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from . import client as api_client
from . import errors, jobfile
from .fsutil import exclusive_lock, write_json_atomic

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
        return data.get("downloaded") or {} if isinstance(data, dict) else {}

    def save(self, state: dict) -> None:
        write_json_atomic(self.path, {"downloaded": state})


# --------------------------------------------------------------------------- paths and locks

def raw_paths(raw_dir: str, batch_id: str) -> dict[str, str]:
    """Raw copies of one batch: output, error and (bare ids only) input lines."""
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
    with open(path, "r+b") as f:
        f.truncate(nbytes)
        f.flush()
        os.fsync(f.fileno())


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


# --------------------------------------------------------------------------- one file

@dataclass
class FileResult:
    """What happened to one output or error file in this run."""

    kind: str
    file_id: str | None
    lines: int = 0          # lines saved in total
    new_lines: int = 0      # lines saved by this run
    # incremental | whole_file | not_ready | waiting_for_end | gone | none
    mode: str = "none"
    complete: bool = False  # the server said there is nothing more to come

    def as_dict(self) -> dict:
        return {"file_id": self.file_id, "lines": self.lines, "new_lines": self.new_lines,
                "mode": self.mode, "complete": self.complete}


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

    def set(self, lines: int, nbytes: int, **extra) -> None:
        """Store the counts (and extra fields); nothing is written when nothing changed."""
        values = {f"{self.kind}_lines": lines, f"{self.kind}_bytes": nbytes,
                  **{f"{self.kind}_{key}": value for key, value in extra.items()}}
        if all(key in self.state and self.state[key] == value
               for key, value in values.items()):
            return
        self.state.update(values)
        self.store.save(self.state)


def _header_int(stream, name: str) -> int | None:
    value = stream.header(name)
    if value is None:
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        return None


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

    def __init__(self, f, counts: _Counts) -> None:
        self.f = f
        self.counts = counts
        self.thread: threading.Thread | None = None
        self.failure: BaseException | None = None

    def start(self, lines: int, nbytes: int) -> None:
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
        self.counts.set(lines, nbytes)


def _append(stream, path: str, skip: int, nbytes: int, limit: int, counts: _Counts
            ) -> tuple[int, int, bool]:
    """Append up to `limit` complete lines of `stream` to `path`, saving counts as it goes.

    Returns (lines appended, new byte count, interrupted?).
    """
    got = 0
    checkpoint = CHECKPOINT_LINES
    interrupted = False
    with open(path, "ab") as f:
        checkpoints = _Checkpoints(f, counts)
        try:
            if limit > 0:
                for pieces, n in api_client.iter_line_blocks(stream, max_lines=limit):
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


def download_file(api, file_id: str | None, path: str, kind: str, state: dict,
                  store: StateStore, *, terminal: bool, start_over: str | None = None,
                  max_retries: int = MAX_ATTEMPTS_WITHOUT_PROGRESS,
                  warn: Callable[[str], None] = lambda m: None,
                  sleep: Callable[[float], None] = time.sleep) -> FileResult:
    """Bring the raw copy of one output/error file up to date; return what happened.

    start_over: a reason to discard the raw copy and download the file from line 0.
    max_retries: how many answers in a row may break off without a single new line.
    """
    result = FileResult(kind, file_id)
    counts = _Counts(state, kind, store)
    if not file_id:
        result.mode = "waiting_for_end" if not terminal else "none"
        return result
    if state.get(f"{kind}_file_id") not in (None, file_id):
        start_over = f"the {kind} file id changed ({state.get(f'{kind}_file_id')} -> {file_id})"
    if start_over:
        warn(f"note: {start_over}; downloading the {kind} file again from the start")
        counts.set(0, 0, complete=False, mode=None, file_id=file_id)
        _truncate(path)
    lines, nbytes = sync_raw_file(path, counts.lines, counts.bytes, warn)
    if (lines, nbytes) != (counts.lines, counts.bytes) or \
            state.get(f"{kind}_file_id") != file_id:
        counts.set(lines, nbytes, file_id=file_id)
    result.lines = lines
    if state.get(f"{kind}_mode") == "whole_file" and state.get(f"{kind}_complete") and terminal:
        result.mode, result.complete = "whole_file", True
        return result

    stalled = 0
    restarted = False
    while True:
        try:
            stream = api.file_content(file_id, skip=lines)
        except api_client.APIError as exc:
            if exc.status != 404:
                raise
            if lines == 0:  # nothing is ready yet (what Doubleword's own CLI assumes too)
                result.mode = "not_ready"
                return result
            warn(f"note: the {kind} file {file_id} is no longer on the server (404); using "
                 f"the {lines} lines saved in {path}")
            result.mode = "gone"
            return result
        with stream:
            last = _header_int(stream, "X-Last-Line")
            if last is None:
                if not terminal:
                    result.mode = "waiting_for_end"
                    return result
                first = stream if lines == 0 else None
                if first is None:
                    stream.close()
                return _whole_file(api, file_id, path, kind, counts, result, warn, sleep,
                                   max_retries, first)
            if last < lines:
                if restarted:
                    raise errors.DWError(
                        f"{kind} file {file_id}: the server reports {last} lines but "
                        f"{lines} were saved before, even after starting over",
                        code="download_inconsistent", exit_code=errors.UNAVAILABLE,
                        hint=f"delete {path} and re-run the same command")
                warn(f"note: the server's {kind} file {file_id} now has fewer lines ({last}) "
                     f"than were saved ({lines}) (a retry moved failed requests back to "
                     "pending?); downloading it again from the start")
                restarted = True
                _truncate(path)
                lines = nbytes = 0
                counts.set(0, 0, complete=False)
                continue
            incomplete = str(stream.header("X-Incomplete") or "").strip().lower()
            expected = last - lines
            got, nbytes, _ = _append(stream, path, lines, nbytes, expected, counts)
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


def _truncate(path: str) -> None:
    if os.path.exists(path):
        with open(path, "r+b") as f:
            f.truncate(0)


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


def download_whole(api, file_id: str, path: str, *, attempts: int = MAX_ATTEMPTS_WITHOUT_PROGRESS,
                   first=None, sleep: Callable[[float], None] = time.sleep,
                   warn: Callable[[str], None] = lambda m: None) -> tuple[int, int]:
    """Download a whole file into `path` (temp file, then rename); returns (lines, bytes).

    first: an already open answer for the whole file to use for the first attempt.
    A last line without a newline is kept (with one added) when the body ended cleanly and
    it is whole JSON: some servers do not end their files with a newline.
    """
    tmp = path + ".part"
    for attempt in range(attempts):
        lines = nbytes = 0
        try:
            stream = first if first is not None and attempt == 0 else \
                api.file_content(file_id)
            with stream, open(tmp, "wb") as f:
                for pieces, n in api_client.iter_line_blocks(stream):
                    nbytes += _write(f, pieces)
                    lines += n
                if stream.partial:
                    if not _is_json(stream.partial):
                        raise api_client.StreamInterrupted(
                            f"file {file_id} ended inside a line", lines_read=lines)
                    f.write(stream.partial + b"\n")
                    lines += 1
                    nbytes += len(stream.partial) + 1
                f.flush()
                os.fsync(f.fileno())
        except api_client.StreamInterrupted:
            warn(f"note: the download of file {file_id} broke off; starting it again")
            sleep(min(0.1 * (2 ** attempt), 5.0))
            continue
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.replace(tmp, path)
        return lines, nbytes
    with contextlib.suppress(OSError):
        os.unlink(tmp)
    raise errors.DWError(
        f"the download of file {file_id} kept breaking off", code="download_interrupted",
        exit_code=errors.UNAVAILABLE, hint="re-run the same command later")


def _whole_file(api, file_id, path, kind, counts: _Counts, result: FileResult, warn, sleep,
                max_retries: int, first=None) -> FileResult:
    """Servers without partial-result headers: the whole file, once the batch has ended."""
    before = counts.lines
    lines, nbytes = download_whole(api, file_id, path, attempts=max_retries + 1, first=first,
                                   sleep=sleep, warn=warn)
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
                   max_retries: int = MAX_ATTEMPTS_WITHOUT_PROGRESS,
                   warn: Callable[[str], None] = lambda m: None,
                   sleep: Callable[[float], None] = time.sleep) -> BatchDownload:
    """Bring the raw output and error copies (and, for bare ids, the input) up to date.

    refetch: kinds ("error") to download again from line 0 whatever was saved.
    """
    batch_id = batch["id"]
    paths = raw_paths(raw_dir, batch_id)
    state = store.load()
    loaded = dict(state)
    if isinstance(store, SidecarStore):  # a job file has the status in the shard already
        state["batch_status"] = batch.get("status")
    files = {}
    if need_input:
        files["input"] = _input_copy(api, batch, paths["input"], state, store, warn, sleep,
                                     max_retries)
    for kind in KINDS:
        reason = (f"asked to check the {kind} file of batch {batch_id} again"
                  if kind in refetch else _shrunk(batch, state, kind))
        files[kind] = download_file(api, batch.get(f"{kind}_file_id"), paths[kind], kind,
                                    state, store, terminal=terminal, start_over=reason,
                                    max_retries=max_retries, warn=warn, sleep=sleep)
    if state != loaded:  # a re-run with nothing new rewrites no job file
        store.save(state)
    return BatchDownload(batch_id, batch.get("status"), paths, files)


_COUNT_OF_KIND = {"output": "completed", "error": "failed"}


def _shrunk(batch: dict, state: dict, kind: str) -> str | None:
    """Why the saved lines cannot all still be on the server, or None.

    A batch's `/retry` moves failed requests back to pending and takes their lines out of the
    error file, so the saved lines no longer line up with the server's: skip would then jump
    over new lines. More saved lines than the batch counts is the sign.
    """
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
                max_retries: int) -> FileResult:
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
                                   warn=warn)
    state.update(input_file_id=file_id, input_lines=lines, input_bytes=nbytes,
                 input_complete=True)
    store.save(state)
    result.lines = result.new_lines = lines
    result.complete = True
    return result
