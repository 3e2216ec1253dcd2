"""The job file: everything about one submission, so any command can be re-run at any time.

Why it matters: it is the only memory between runs. It is written atomically after every
step (a crash leaves the old or the new complete version), locked so two commands on the
same job cannot interleave their writes, checked on load so a corrupted or hand-edited file
is reported instead of silently "repaired" (and never overwritten then), and holds paths
relative to itself so a job folder can be moved. It never holds a secret.

Shape (cli-contract.md "The job file"): version, job_id, base_url, endpoint,
completion_window, metadata, limits, inputs[{path, sha256, requests, bytes}], and
shards[{index, path, sha256, requests, bytes, endpoint, input, file_id, batch_id, status, ...}].
Other scripts add their own shard fields (request_counts, output_file_id, downloaded, ...);
unknown fields are kept as they are.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone

from . import errors, shapes
from .fsutil import exclusive_lock, write_json_atomic

JOB_VERSION = 1
JOB_SUFFIX = ".job.json"
LOCK_SUFFIX = ".lock"
DEFAULT_LOCK_WAIT = 10.0


class JobFileError(errors.InputError):
    """The job file cannot be used as it is (exit 2). It is left untouched."""

    def __init__(self, path: str, problem: str, hint: str | None = None) -> None:
        super().__init__(
            f"job file {path}: {problem}; the file was left untouched",
            code="bad_job_file",
            hint=hint or ("if it was edited by hand, undo the edit; otherwise restore it from a "
                          "copy, or pass --job NEW.job.json to start a separate job (batches "
                          "already created are still on the server: batches.py list)"))


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_job_path(first_input: str) -> str:
    """prompts.jsonl -> prompts.job.json, beside the input."""
    directory, name = os.path.split(first_input)
    stem = name
    for ext in (".jsonl", ".ndjson", ".json", ".txt"):
        if stem.lower().endswith(ext) and len(stem) > len(ext):
            stem = stem[: -len(ext)]
            break
    return os.path.join(directory, stem + JOB_SUFFIX)


def job_stem(job_path: str) -> str:
    """prompts.job.json -> prompts (used to name files that belong to the job)."""
    name = os.path.basename(job_path)
    if name.endswith(JOB_SUFFIX) and len(name) > len(JOB_SUFFIX):
        return name[: -len(JOB_SUFFIX)]
    return os.path.splitext(name)[0] or name


def rel_path(job_path: str, path: str) -> str:
    """`path` as stored in the job file: relative to the job file's folder."""
    base = os.path.dirname(os.path.abspath(job_path))
    return os.path.relpath(os.path.abspath(path), base)


def abs_path(job_path: str, stored: str) -> str:
    """A path stored in the job file, resolved against the job file's folder."""
    if os.path.isabs(stored):
        return stored
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(job_path)), stored))


def new_job(*, base_url: str, completion_window: str, endpoint: str | None,
            metadata: dict[str, str] | None = None, limits: dict | None = None) -> dict:
    """A fresh job with a new job_id (uuid4, also sent as batch metadata)."""
    stamp = now_iso()
    return {
        "version": JOB_VERSION,
        "job_id": str(uuid.uuid4()),
        "created_at": stamp,
        "updated_at": stamp,
        "base_url": base_url,
        "endpoint": endpoint,
        "completion_window": completion_window,
        "metadata": dict(metadata or {}),
        "limits": dict(limits or {}),
        "inputs": [],
        "shards": [],
    }


# --------------------------------------------------------------------------- checking

_OPTIONAL_STR_FIELDS = ("file_id", "batch_id", "status", "output_file_id", "error_file_id",
                        "endpoint", "input", "create_attempted_at", "uploaded_at",
                        "batch_created_at")


def _need(cond: bool, path: str, problem: str) -> None:
    if not cond:
        raise JobFileError(path, problem)


def validate_job(job: object, path: str) -> dict:
    """Check the structure every script relies on; raise JobFileError naming the first problem."""
    _need(isinstance(job, dict), path, "expected a JSON object at the top level")
    version = job.get("version")
    if version != JOB_VERSION:
        if isinstance(version, int) and version > JOB_VERSION:
            raise JobFileError(path, f"it is version {version}, newer than this tool's "
                                     f"version {JOB_VERSION}",
                               hint="update the doubleword-batch scripts")
        raise JobFileError(path, f"'version' must be {JOB_VERSION}, found {version!r}")
    for key in ("job_id", "base_url", "completion_window"):
        _need(isinstance(job.get(key), str) and job[key], path,
              f"'{key}' must be a non-empty string, found {job.get(key)!r}")
    _need(job.get("endpoint") is None or isinstance(job["endpoint"], str), path,
          "'endpoint' must be a string or null")
    _need(isinstance(job.get("metadata", {}), dict), path, "'metadata' must be an object")
    _need(isinstance(job.get("inputs"), list), path, "'inputs' must be a list")
    for i, item in enumerate(job["inputs"]):
        where = f"inputs[{i}]"
        _need(isinstance(item, dict), path, f"{where} must be an object")
        _need(isinstance(item.get("path"), str) and item["path"], path,
              f"{where}.path must be a non-empty string")
        _need(isinstance(item.get("sha256"), str), path, f"{where}.sha256 must be a string")
    _need(isinstance(job.get("shards"), list), path, "'shards' must be a list")
    seen = set()
    for i, shard in enumerate(job["shards"]):
        where = f"shards[{i}]"
        _need(isinstance(shard, dict), path, f"{where} must be an object")
        index = shard.get("index")
        _need(isinstance(index, int) and not isinstance(index, bool) and index >= 0, path,
              f"{where}.index must be a whole number >= 0, found {index!r}")
        _need(index not in seen, path, f"{where}.index {index} appears twice")
        seen.add(index)
        _need(isinstance(shard.get("path"), str) and shard["path"], path,
              f"{where}.path must be a non-empty string")
        for key in _OPTIONAL_STR_FIELDS:
            value = shard.get(key)
            _need(value is None or isinstance(value, str), path,
                  f"{where}.{key} must be a string or null, found {value!r}")
        for key in ("requests", "bytes"):
            value = shard.get(key)
            _need(value is None or (isinstance(value, int) and not isinstance(value, bool)),
                  path, f"{where}.{key} must be a whole number, found {value!r}")
        for key in ("request_counts", "downloaded"):
            _need(shard.get(key) is None or isinstance(shard[key], dict), path,
                  f"{where}.{key} must be an object or null")
        _check_server_values(shard, where, path)
    return job


_ID_FIELDS = ("file_id", "batch_id", "output_file_id", "error_file_id")


def _check_server_values(shard: dict, where: str, path: str) -> None:
    """What the server said, held to the rules it was checked by when it arrived (shapes.py):
    a job file never holds what the scripts would refuse to use (ids name local files)."""
    for key in _ID_FIELDS:
        value = shard.get(key)
        _need(value is None or shapes.is_id(value), path,
              f"{where}.{key}: {shapes.id_problem(value)}")
    status = shard.get("status")
    _need(status is None or shapes.STATUS_PATTERN.fullmatch(status) is not None, path,
          f"{where}.status must be a word such as \"in_progress\", found {status!r}")
    for key, value in (shard.get("request_counts") or {}).items():
        _need(value is None or (isinstance(value, int) and not isinstance(value, bool)
                                and value >= 0), path,
              f"{where}.request_counts.{key} must be a whole number >= 0, found {value!r}")
    for key, value in (shard.get("downloaded") or {}).items():
        if key.endswith(("_lines", "_bytes")):
            _need(value is None or (isinstance(value, int) and not isinstance(value, bool)
                                    and value >= 0), path,
                  f"{where}.downloaded.{key} must be a whole number >= 0, found {value!r}")
        elif key.endswith("_file_id"):
            _need(value is None or shapes.is_id(value), path,
                  f"{where}.downloaded.{key}: {shapes.id_problem(value)}")


def load_job(path: str) -> dict:
    """Read and check a job file. Missing -> JobFileError too (callers check existence first)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise JobFileError(path, "no such file",
                           hint="check the path; submit.py writes PROMPTS.job.json beside the "
                                "input file") from None
    except UnicodeDecodeError as exc:
        raise JobFileError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise JobFileError(path, f"cannot be read ({exc.strerror})",
                           hint="check the file's permissions") from None
    if not text.strip():
        raise JobFileError(path, "the file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JobFileError(path, f"not valid JSON (line {exc.lineno}, column {exc.colno}: "
                                 f"{exc.msg})") from None
    return validate_job(data, path)


def save_job(path: str, job: dict) -> None:
    """Write the job atomically (temp file + fsync + rename)."""
    job["updated_at"] = now_iso()
    write_json_atomic(path, job)


_HELD: dict[str, int] = {}  # lock files this process holds -> nesting depth


def lock_path(job_path: str) -> str:
    """The job's lock file: hidden beside it (`prompts.job.json` -> `.prompts.job.json.lock`),
    so a folder of results shows the user's files, not the scripts' bookkeeping. From the
    real path, so two names of one job file share one lock."""
    directory, name = os.path.split(os.path.realpath(job_path))
    return os.path.join(directory, "." + name + LOCK_SUFFIX)


@contextlib.contextmanager
def job_lock(path: str, wait: float = DEFAULT_LOCK_WAIT) -> Iterator[None]:
    """Hold an exclusive lock on `.<job file>.lock` so two commands on one job cannot
    interleave.

    Waits up to `wait` seconds, then raises DWError (exit 7: safe to re-run later).
    Re-entrant within one process (a nested job_lock on the same job just goes through).
    """
    lock = lock_path(path)
    if _HELD.get(lock):
        _HELD[lock] += 1
        try:
            yield
        finally:
            _HELD[lock] -= 1
        return
    os.makedirs(os.path.dirname(lock), exist_ok=True)

    def busy() -> errors.DWError:
        return errors.DWError(
            f"another command is working on the job file {path} "
            f"(it holds the lock {lock})", code="job_busy",
            exit_code=errors.UNAVAILABLE,
            hint="wait for that command to finish, then re-run this one")

    with exclusive_lock(lock, wait, busy):
        _HELD[lock] = 1
        try:
            yield
        finally:
            _HELD.pop(lock, None)


def shard_by_index(job: dict, index: int) -> dict:
    for shard in job["shards"]:
        if shard["index"] == index:
            return shard
    raise KeyError(index)


def batch_ids(job: dict) -> list[str]:
    """The batch ids recorded so far, in shard order."""
    return [s["batch_id"] for s in sorted(job["shards"], key=lambda s: s["index"])
            if s.get("batch_id")]
