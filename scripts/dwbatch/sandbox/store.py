"""Files and batches: their records, compact per-request state, and state changes.

Memory stays small whatever the batch size: a request is an index into its input file's
offset table plus one state byte and the location of its result line. Output and error
lines are appended to per-batch files on disk; each file is served as a *view* (an index of
line offsets in completion order), so /retry can take a failed request out of the error view.
All access goes through `Store.lock`.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
import uuid
from array import array
from dataclasses import dataclass, field

from .httpio import ApiError
from .options import Options, window_seconds
from .upload_rules import FileIndex

FILE_TTL_SECONDS = 30 * 86400

PENDING, COMPLETED, FAILED, CANCELLED, EXPIRED = 0, 1, 2, 3, 4
# /results shows a cancelled request as `pending` (the service does: it can be revived)
STATE_NAMES = {PENDING: "pending", COMPLETED: "completed", FAILED: "failed",
               CANCELLED: "pending", EXPIRED: "failed"}
TERMINAL = ("completed", "failed", "cancelled", "expired")
TIMESTAMPS = ("in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at",
              "expired_at", "cancelling_at", "cancelled_at")


class Clock:
    """Wall-clock seconds plus an offset that /_sandbox/clock can move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        return False
    return True


def request_uuid(batch_id: str, index: int) -> str:
    """A stable id for request `index` of a batch (no per-request storage needed)."""
    digest = hashlib.md5(f"{batch_id}:{index}".encode()).digest()
    return str(uuid.UUID(bytes=digest, version=4))


class LineView:
    """Lines appended to one file on disk, listed in completion order; entries removable."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offsets = array("q")
        self.lengths = array("q")
        self.file_size = 0
        self.bytes = 0
        with open(path, "wb"):
            pass

    def append(self, lines: list[bytes]) -> list[int]:
        """Write the lines (each ending in \\n) in one go; return their offsets."""
        if not lines:
            return []
        offsets = []
        with open(self.path, "ab") as f:
            f.write(b"".join(lines))
        for line in lines:
            offsets.append(self.file_size)
            self.offsets.append(self.file_size)
            self.lengths.append(len(line))
            self.file_size += len(line)
            self.bytes += len(line)
        return offsets

    def remove(self, offsets: set[int]) -> None:
        """Take the lines starting at these offsets out of the view (the file is unchanged)."""
        keep_o, keep_l = array("q"), array("q")
        for off, length in zip(self.offsets, self.lengths, strict=False):
            if off in offsets:
                self.bytes -= length
            else:
                keep_o.append(off)
                keep_l.append(length)
        self.offsets, self.lengths = keep_o, keep_l

    def __len__(self) -> int:
        return len(self.offsets)


@dataclass
class FileRecord:
    id: str
    filename: str
    purpose: str
    created_at: int
    expires_at: int | None
    path: str
    seq: int
    index: FileIndex | None = None  # input files
    view: LineView | None = None  # output / error files
    batch_id: str | None = None
    deleted: bool = False
    size: int = 0

    @property
    def bytes(self) -> int:
        return self.view.bytes if self.view is not None else self.size


@dataclass
class Batch:
    id: str
    seq: int
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict
    created_at: int
    expires_at: int
    total: int
    output: FileRecord
    errors: FileRecord
    status: str = "validating"
    times: dict = field(default_factory=dict)
    completed: int = 0
    failed: int = 0
    state: bytearray = field(default_factory=bytearray)
    result_off: array = field(default_factory=lambda: array("q"))
    queue: array = field(default_factory=lambda: array("q"))
    qpos: int = 0
    credit: float = 0.0
    validate_until: float = 0.0
    finalize_after: float = 0.0
    stuck: bool = False  # cancelled while validating: stays `cancelling` (server quirk)
    deleted: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    retries: int = 0

    @property
    def pending(self) -> int:
        return len(self.queue) - self.qpos

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def result_file_purpose(kind: str, openai_compat: bool) -> str:
    """Doubleword names error files `batch_error`; stock OpenAI calls both `batch_output`."""
    return "batch_error" if kind == "error" and not openai_compat else "batch_output"


class Store:
    """Every file and batch of this sandbox, under one lock."""

    def __init__(self, options: Options, data_dir: str) -> None:
        self.options = options
        self.data_dir = data_dir
        self.clock = Clock()
        self.lock = threading.RLock()
        self.files: dict[str, FileRecord] = {}
        self.batches: dict[str, Batch] = {}
        self.seq = 0
        for sub in ("files", "batches", "tmp"):
            os.makedirs(os.path.join(data_dir, sub), exist_ok=True)

    # --- helpers ------------------------------------------------------------------------
    def now(self) -> int:
        return int(self.clock.now())

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def temp_path(self) -> str:
        return os.path.join(self.data_dir, "tmp", f"upload-{uuid.uuid4().hex}.part")

    def get_file(self, file_id: str) -> FileRecord:
        if not is_uuid(file_id):
            raise ApiError(400, "Invalid file ID format")
        rec = self.files.get(file_id)
        if rec is None or rec.deleted or not self.file_visible(rec):
            raise ApiError(404, f"File with ID {file_id} not found")
        return rec

    def get_batch(self, batch_id: str) -> Batch:
        if not is_uuid(batch_id):
            raise ApiError(400, "Invalid batch ID format")
        batch = self.batches.get(batch_id)
        if batch is None or batch.deleted:
            raise ApiError(404, f"Batch with ID {batch_id} not found")
        return batch

    def file_visible(self, rec: FileRecord) -> bool:
        """Compat mode hides a batch's result files until the batch is terminal."""
        if rec.batch_id is None or not self.options.openai_compat:
            return True
        batch = self.batches.get(rec.batch_id)
        return batch is not None and batch.terminal and self._compat_file_shown(batch, rec)

    def _compat_file_shown(self, batch: Batch, rec: FileRecord) -> bool:
        if rec is batch.output:
            return batch.completed > 0 or batch.failed == 0
        return batch.failed > 0

    # --- files --------------------------------------------------------------------------
    def add_input_file(self, temp_path: str, filename: str, size: int, index: FileIndex,
                       expires_after: int | None) -> FileRecord:
        file_id = str(uuid.uuid4())
        path = os.path.join(self.data_dir, "files", f"{file_id}.jsonl")
        os.replace(temp_path, path)
        now = self.now()
        with self.lock:
            rec = FileRecord(id=file_id, filename=filename, purpose="batch", created_at=now,
                             expires_at=now + (expires_after or FILE_TTL_SECONDS), path=path,
                             seq=self._next_seq(), index=index, size=size)
            self.files[file_id] = rec
        return rec

    def delete_file(self, rec: FileRecord) -> None:
        """Delete a file; batches still running on it as input are cancelled."""
        rec.deleted = True
        users = [b for b in self.batches.values() if b.input_file_id == rec.id]
        for batch in users:
            if not batch.terminal:
                self.cancel(batch)
        if rec.index is not None and not users:
            try:
                os.unlink(rec.path)
            except OSError:
                pass

    def list_files(self, purpose: str | None, order: str,
                   search: str | None = None) -> list[FileRecord]:
        """Files, newest first unless order is asc; `search`: case-insensitive substring of
        the filename (how a client finds an upload whose answer it lost)."""
        files = [f for f in self.files.values() if not f.deleted and self.file_visible(f)]
        if purpose:
            files = [f for f in files if f.purpose == purpose.lower()]
        if search:
            needle = search.lower()
            files = [f for f in files if needle in f.filename.lower()]
        files.sort(key=lambda f: f.seq, reverse=(order != "asc"))
        return files

    # --- batches ------------------------------------------------------------------------
    def create_batch(self, source: FileRecord, endpoint: str, window: str,
                     metadata: dict) -> Batch:
        batch_id = str(uuid.uuid4())
        folder = os.path.join(self.data_dir, "batches", batch_id)
        os.makedirs(folder, exist_ok=True)
        now = self.now()
        with self.lock:
            seq = self._next_seq()
            out = self._result_file(batch_id, folder, "output", now)
            err = self._result_file(batch_id, folder, "error", now)
            total = source.index.count
            batch = Batch(id=batch_id, seq=seq, endpoint=endpoint, input_file_id=source.id,
                          completion_window=window, metadata=metadata, created_at=now,
                          expires_at=now + window_seconds(window), total=total, output=out,
                          errors=err, state=bytearray(total),
                          result_off=array("q", bytes(8 * total)))
            batch.queue = shuffled_order(range(total), self.options.seed, seq, 0)
            batch.validate_until = self.clock.now() + self.options.validating_seconds
            self.batches[batch_id] = batch
        return batch

    def _result_file(self, batch_id: str, folder: str, kind: str, now: int) -> FileRecord:
        path = os.path.join(folder, f"{kind}.jsonl")
        rec = FileRecord(id=str(uuid.uuid4()), filename=f"batch_{batch_id}_{kind}.jsonl",
                         purpose=result_file_purpose(kind, self.options.openai_compat),
                         created_at=now,
                         expires_at=now + FILE_TTL_SECONDS, path=path, seq=self._next_seq(),
                         view=LineView(path), batch_id=batch_id)
        self.files[rec.id] = rec
        return rec

    def list_batches(self, search: str | None, status: str | None) -> list[Batch]:
        batches = [b for b in self.batches.values() if not b.deleted]
        if status:
            if status == "expired":
                batches = [b for b in batches if b.times.get("expired_at") or
                           b.status == "expired"]
            else:
                batches = [b for b in batches if b.status == status]
        if search:
            needle = search.lower()
            batches = [b for b in batches if needle in self._search_text(b)]
        batches.sort(key=lambda b: b.seq, reverse=True)
        return batches

    def _search_text(self, batch: Batch) -> str:
        source = self.files.get(batch.input_file_id)
        parts = [batch.id, batch.input_file_id, source.filename if source else ""]
        parts += [str(v) for v in batch.metadata.values()]
        return "\n".join(parts).lower()

    def cancel(self, batch: Batch) -> None:
        """Pending requests become cancelled; the batch goes to `cancelling`.

        Like the service, with no state check: a finished (or finalizing) batch becomes
        `cancelled` for good, its results still readable. Stock OpenAI servers leave a
        finished batch as it is (--openai-compat)."""
        if batch.status in ("cancelling", "cancelled"):
            return
        if batch.terminal or batch.status == "finalizing":
            if not self.options.openai_compat:
                batch.times.setdefault("finalizing_at", self.now())
                batch.times["cancelling_at"] = self.now()
                self.mark_cancelled(batch)
            return
        was_validating = batch.status == "validating"
        for idx in batch.queue[batch.qpos:]:
            batch.state[idx] = CANCELLED
        batch.qpos = len(batch.queue)
        batch.status = "cancelling"
        batch.times["cancelling_at"] = self.now()
        batch.stuck = was_validating and not self.options.openai_compat

    def retry(self, batch: Batch) -> None:
        """Failed and cancelled requests go back to pending, in place (400 if none)."""
        revived = [i for i, s in enumerate(batch.state) if s in (FAILED, CANCELLED, EXPIRED)]
        if not revived:
            raise ApiError(400, "Nothing to retry: this batch has no failed or cancelled "
                                "requests")
        self._revive(batch, revived)

    def _revive(self, batch: Batch, revived: list[int]) -> None:
        """Requests back to pending; failed ones leave the error file (it is rebuilt)."""
        failed_offsets = {batch.result_off[i] for i in revived if batch.state[i] == FAILED}
        if failed_offsets:
            batch.errors.view.remove(failed_offsets)
        for i in revived:
            if batch.state[i] in (FAILED, EXPIRED):
                batch.failed -= 1
            batch.state[i] = PENDING
        batch.retries += 1
        rest = batch.queue[batch.qpos:]
        rest.extend(shuffled_order(revived, self.options.seed, batch.seq, batch.retries))
        batch.queue, batch.qpos = rest, 0
        for key in ("finalizing_at", "completed_at", "failed_at", "cancelling_at",
                    "cancelled_at"):
            batch.times.pop(key, None)
        batch.stuck = False
        batch.status = "in_progress"
        batch.times.setdefault("in_progress_at", self.now())

    def retry_requests(self, batch: Batch, request_ids: list[str]) -> None:
        """Chosen failed requests (by their /results id) go back to pending, in place."""
        wanted = set(request_ids)
        chosen = [i for i, s in enumerate(batch.state)
                  if s in (FAILED, EXPIRED) and request_uuid(batch.id, i) in wanted]
        if not chosen:
            raise ApiError(400, "Nothing to retry: none of the given request ids is a failed "
                                "request of this batch")
        self._revive(batch, chosen)

    def delete_batch(self, batch: Batch) -> None:
        """Soft delete: the batch is cancelled and no longer listed or readable."""
        self.cancel(batch)
        if batch.status == "cancelling" and not batch.stuck:
            self.mark_cancelled(batch)
        batch.deleted = True

    def finish(self, batch: Batch) -> None:
        """All requests done: the final status (completed iff at least one succeeded)."""
        now = self.now()
        batch.times.setdefault("finalizing_at", now)
        if batch.completed > 0:
            batch.status = "completed"
            batch.times["completed_at"] = now
        else:
            batch.status = "failed"
            batch.times["failed_at"] = now

    def mark_cancelled(self, batch: Batch) -> None:
        batch.status = "cancelled"
        batch.times["cancelled_at"] = self.now()

    def request_status(self, batch: Batch, index: int, in_flight: set[int]) -> str:
        state = batch.state[index]
        if state == PENDING and index in in_flight:
            return "in_progress"
        return STATE_NAMES[state]


def shuffled_order(indices, seed: int, batch_seq: int, round_: int) -> array:
    """A deterministic processing order (given --seed) that is visibly not input order."""
    order = array("q", indices)
    rng = random.Random(f"{seed}:{batch_seq}:{round_}")
    rng.shuffle(order)
    if len(order) > 1 and all(order[i] < order[i + 1] for i in range(len(order) - 1)):
        order[0], order[1] = order[1], order[0]
    return order
