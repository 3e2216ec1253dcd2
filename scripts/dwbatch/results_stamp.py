"""The stamp beside a results file: what it was built from, so a re-run with nothing new is cheap.

Why: joining a million requests takes tens of seconds, and agents re-run fetch_results.py
often (a finished job is fetched again, a retry job's results are merged later). When every
input the join reads is as it was (the request files, the raw output and error copies, the
batch statuses, the options that shape the output, the join's own code) and the results
and retry files are the very files the last run wrote, the join would write the same bytes
again: the stamp lets the caller keep those files and report the summary stored with it.

A file counts as unchanged when its size, modification time (ns) and inode are the same: the
downloader only ever appends to a raw copy or replaces it, and results are replaced by rename,
so any new line or rewrite changes at least one of them. A missing, unreadable or foreign
stamp just means "rebuild"; the stamp is removed before a rebuild so that a crash halfway never
leaves a stamp that vouches for files it did not see written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os

from .fsutil import write_json_atomic

STAMP_VERSION = 2
# The modules whose code decides the bytes of the results and retry files.
_JOIN_MODULES = ("reconcile.py", "results_io.py", "retry_file.py", "retry_policy.py",
                 "table.py", "csv_safe.py", "inputs.py", "rejoin.py")


def stamp_path(results_path: str) -> str:
    """`results.jsonl` -> `.results.jsonl.stamp.json` beside it (hidden: it is a cache)."""
    directory, name = os.path.split(os.path.abspath(results_path))
    return os.path.join(directory, f".{name}.stamp.json")


def file_state(path: str | None) -> list[int] | None:
    """[size, mtime_ns, inode] of a file, or None when there is no such file."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def code_digest() -> str:
    """sha256 of the join's own code: updated scripts rebuild instead of trusting old output."""
    digest = hashlib.sha256()
    here = os.path.dirname(os.path.abspath(__file__))
    for name in _JOIN_MODULES:
        try:
            with open(os.path.join(here, name), "rb") as f:
                digest.update(f.read())
        except OSError:
            digest.update(b"(unreadable)")
    return digest.hexdigest()


def fingerprint(sources, options: dict) -> dict:
    """Everything the join reads: each source (paths, batch id and status, job position, label,
    recorded sha256) with the state of its input and raw files, the output options and the
    join's code."""
    items = []
    for source in sources:
        item = dataclasses.asdict(source)
        for key in ("input_path", "output_path", "error_path"):
            item[key + "_state"] = file_state(item[key])
        items.append(item)
    return {"version": STAMP_VERSION, "code": code_digest(), "options": options,
            "sources": items}


def load(results_path: str, retry_path: str, others: tuple[str | None, ...] = ()
         ) -> dict | None:
    """The stamp, when the results and retry files (and `others`: the table) are the very
    ones it describes."""
    try:
        with open(stamp_path(results_path), encoding="utf-8") as f:
            stamp = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or not isinstance(stamp.get("outcome"), dict):
        return None
    if file_state(results_path) is None or \
            stamp.get("results_state") != file_state(results_path) or \
            stamp.get("retry_state") != file_state(retry_path) or \
            stamp.get("other_states", []) != [file_state(p) for p in others]:
        return None
    return stamp


def load_reusable(results_path: str, retry_path: str, current: dict,
                  others: tuple[str | None, ...] = ()) -> dict | None:
    """The outcome stored with the stamp when it vouches for the files as they are, else None."""
    stamp = load(results_path, retry_path, others)
    if stamp is None or stamp.get("fingerprint") != current:
        return None
    return stamp["outcome"]


def only_raw_files_differ(stamped: dict, current: dict) -> bool:
    """Do two fingerprints differ in the state of raw output/error copies only? (Whether
    those only grew is for rejoin.py to check, line by line.)"""
    def without_raw(fp) -> object:
        if not isinstance(fp, dict) or not isinstance(fp.get("sources"), list):
            return None
        sources = [{k: v for k, v in item.items()
                    if k not in ("output_path_state", "error_path_state")}
                   for item in fp["sources"] if isinstance(item, dict)]
        return {**fp, "sources": sources}
    return without_raw(stamped) is not None and without_raw(stamped) == without_raw(current)


def forget(results_path: str) -> None:
    """Remove the stamp (before the files it describes are rewritten)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(stamp_path(results_path))


def save(results_path: str, retry_path: str, current: dict, outcome: dict,
         others: tuple[str | None, ...] = ()) -> None:
    """Record that the results and retry files as they are now were built from `current`."""
    write_json_atomic(stamp_path(results_path), {
        "fingerprint": current, "results_state": file_state(results_path),
        "retry_state": file_state(retry_path),
        "other_states": [file_state(p) for p in others], "outcome": outcome})
