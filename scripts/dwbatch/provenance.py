"""Where a batch file's requests came from, recorded beside it: `prompts.jsonl` ->
`prompts.source.json`.

Why: the job must be finished into what the user asked for. create_batch_file.py records the
user's input (file, format, id rule, answer columns) so fetch_results.py can write the user's
own table back; fetch_results.py records, beside a retry file, the job it came from, so the
retry job joins its family and unrelated jobs are never merged. submit.py copies what it finds
into the job file (`source`, `origin`). A record vouches only for the files whose sha256 it
lists: a batch file changed or rebuilt since is not described by an old record.

Record shape: {"version": 1, "kind": "build" | "retry", "files": [{"path", "sha256"}],
"table": {...} (build), "origin": {"job_id", "family_id", "job_file"} (retry)}; paths are
relative to the record's folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re

from .fsutil import write_json_atomic

VERSION = 1
SUFFIX = ".source.json"
_SHARD_NUMBER = re.compile(r"-\d{3,}$")


def record_path(batch_path: str) -> str:
    """`prompts.jsonl` -> `prompts.source.json` beside it."""
    directory, name = os.path.split(batch_path)
    stem = name
    for ext in (".jsonl", ".ndjson", ".json"):
        if stem.lower().endswith(ext) and len(stem) > len(ext):
            stem = stem[: -len(ext)]
            break
    return os.path.join(directory, stem + SUFFIX)


def _candidates(batch_path: str) -> list[str]:
    """The record of the file itself, then of the build it is a split piece of."""
    own = record_path(batch_path)
    directory, name = os.path.split(own)
    stem = name[: -len(SUFFIX)]
    whole = _SHARD_NUMBER.sub("", stem)
    return [own] + ([os.path.join(directory, whole + SUFFIX)] if whole != stem else [])


def write(batch_path: str, kind: str, files: list[tuple[str, str]], **content) -> str:
    """Write the record of `batch_path`; files: (path, sha256) of the batch files described."""
    path = record_path(batch_path)
    base = os.path.dirname(os.path.abspath(path))
    record = {"version": VERSION, "kind": kind,
              "files": [{"path": os.path.relpath(os.path.abspath(p), base), "sha256": sha}
                        for p, sha in files], **content}
    write_json_atomic(path, record)
    return path


def sha256_of(path: str) -> str:
    """sha256 of a file, read a block at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def table_source(input_path: str, fmt: str, batch_path: str, *, id_column: str | None,
                 id_prefix: str, id_width: int, answer: dict) -> dict:
    """The `table` part of a build's record: the user's input (relative to the record),
    its format and sha256, how ids were made, and what the answers look like."""
    base = os.path.dirname(os.path.abspath(record_path(batch_path)))
    out = {"input": os.path.relpath(os.path.abspath(input_path), base), "format": fmt,
           "sha256": sha256_of(input_path), "id_column": id_column}
    if id_column is None:
        out.update(id_prefix=id_prefix, id_width=id_width)
    out.update(answer)
    return out


def remove(batch_path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(record_path(batch_path))


def load_for(batch_path: str, sha256: str) -> tuple[dict, str] | None:
    """(record, its path) that describes this very batch file (by sha256), or None."""
    for path in _candidates(batch_path):
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or record.get("version") != VERSION:
            continue
        files = record.get("files")
        if isinstance(files, list) and any(isinstance(x, dict) and x.get("sha256") == sha256
                                           for x in files):
            return record, path
    return None


def rebase(value: str, from_file: str, to_file: str) -> str:
    """A path stored relative to one file's folder, made relative to another's."""
    absolute = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(from_file)),
                                             value))
    return os.path.relpath(absolute, os.path.dirname(os.path.abspath(to_file)))


def for_job(inputs: list[tuple[str, str]], job_path: str) -> dict:
    """The job-file fields (`source`, `origin`) from the records of a job's inputs
    ((path, sha256) each). Only what every input agrees on is kept: inputs built from
    different sources have no one table."""
    found = [load_for(path, sha) for path, sha in inputs]
    if not found or any(f is None for f in found):
        return {}
    out: dict = {}
    tables = [(r.get("table"), p) for r, p in found]
    if all(t is not None for t, _ in tables):
        rebased = []
        for table, path in tables:
            table = dict(table)
            table["input"] = rebase(table["input"], path, job_path)
            rebased.append(table)
        if all(t == rebased[0] for t in rebased):
            out["source"] = rebased[0]
    origins = [(r.get("origin"), p) for r, p in found]
    if all(isinstance(o, dict) for o, _ in origins):
        first = dict(origins[0][0])
        if all(o.get("family_id") == first.get("family_id") for o, _ in origins):
            if first.get("job_file"):
                first["job_file"] = rebase(first["job_file"], origins[0][1], job_path)
            out["origin"] = first
    return out


def family_id(job: dict) -> str:
    """The family a job belongs to: its origin's family, else the job itself."""
    origin = job.get("origin")
    if isinstance(origin, dict) and isinstance(origin.get("family_id"), str):
        return origin["family_id"]
    return job["job_id"]


def origin_of(job: dict, job_path: str, retry_path: str) -> dict:
    """The origin a retry file written from this job records (job_file relative to the
    retry file's record)."""
    return {"job_id": job["job_id"], "family_id": family_id(job),
            "job_file": os.path.relpath(os.path.abspath(job_path),
                                        os.path.dirname(os.path.abspath(retry_path)))}

