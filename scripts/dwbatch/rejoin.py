"""Bring the last join's files up to date with the result lines that arrived since it ran.

Why: a running job is fetched again and again, and each fetch brings a few new lines; a full
join of a million requests costs tens of seconds every time. While some request is still
pending, the full join keeps what it built beside the results file: its index of every input
and result line (`.NAME.join.sqlite`, `.NAME.join.sqlite-results`) and the bytes each request
took in the results and retry files (`.NAME.join.sizes`); the stamp records how far each raw
file was read. A later join of
the same sources (same inputs, options, statuses and code: only the raw copies grew) then
indexes the new lines only, decides again just the requests they name, with the very code of a
full join over the request's candidates as they are now and as they were, and writes new
results and retry files by copying every other request's bytes from the old ones. The files
are the ones a full join would write, byte for byte.

Anything unexpected (a cache file missing or changed, a raw copy rewritten rather than grown,
more new lines than a quarter of the requests) means "join in full": that is always right.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
from array import array
from bisect import insort
from collections.abc import Iterator

from . import reconcile as rc
from .fsutil import atomic_open
from .join_index import Index, results_file
from .results_io import reconcile_to_files, results_writer
from .retry_policy import SHOWN_IDS, give_up_reason

STATE_VERSION = 2
# Re-deciding a request costs about what a full join spends on it, plus the copy of the rest:
# beyond this share of new lines a full join is as quick.
MAX_NEW_SHARE = 0.25
_TAIL = 4096  # bytes before the read position whose digest shows a raw copy was not rewritten
_CHUNK = 4 * 65536  # sizes numbers read or written at a time
_COPY_BLOCK = 1 << 20


class Stale(Exception):
    """The kept files do not describe the files beside them: join in full."""


def cache_paths(results_path: str) -> tuple[str, str]:
    """(index, sizes) kept beside `results.jsonl`: `.results.jsonl.join.sqlite`, `...sizes`."""
    directory, name = os.path.split(os.path.abspath(results_path))
    base = os.path.join(directory, f".{name}.join")
    return base + ".sqlite", base + ".sizes"


def remove_cache(results_path: str) -> None:
    """The kept files, and any a killed join left half-written beside them."""
    index_path, _sizes = cache_paths(results_path)
    base = index_path[:-len(".sqlite")]
    for path in glob.glob(glob.escape(base) + ".*"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _file_id(path: str | None) -> list[int] | None:
    try:
        st = os.stat(path) if path else None
    except OSError:
        return None
    return None if st is None else [st.st_size, st.st_mtime_ns, st.st_ino]


def _tail_digest(path: str | None, upto: int) -> str | None:
    """sha256 of the bytes just before `upto` (None: no file)."""
    if not path or not os.path.exists(path):
        return None
    start = max(0, upto - _TAIL)
    with open(path, "rb") as f:
        f.seek(start)
        return hashlib.sha256(f.read(upto - start)).hexdigest()


# --------------------------------------------------------------------------- sizes file

WIDTH = 4  # numbers per request in the sizes file


class RowSizes:
    """(request number, results bytes, retry bytes, table bytes) per request, in results-file
    order, streamed to a binary file of unsigned 32-bit numbers (written atomically)."""

    def __init__(self, path: str) -> None:
        self.path, self.head = path, 0
        self._stack = contextlib.ExitStack()
        self._f = self._stack.enter_context(atomic_open(path, "wb"))
        self._buf = array("I")
        if self._buf.itemsize != 4:  # pragma: no cover - every usual platform has it
            raise Stale("no 32-bit array type here")

    def add(self, group: int, results: int, retry: int, table: int = 0) -> None:
        self._buf.extend((group, results, retry, table))
        if len(self._buf) >= _CHUNK:
            self._flush()

    def extend(self, entries: array) -> None:
        self._flush()
        entries.tofile(self._f)

    def _flush(self) -> None:
        self._buf.tofile(self._f)
        self._buf = array("I")

    def commit(self) -> None:
        self._flush()
        self._stack.close()

    def abort(self) -> None:
        with contextlib.suppress(BaseException):
            self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)


def _read_sizes(path: str) -> Iterator[array]:
    with open(path, "rb") as f:
        while True:
            chunk = array("I")
            data = f.read(_CHUNK * 4)
            if not data:
                return
            if len(data) % (4 * WIDTH):
                raise Stale(f"{path} is cut short")
            chunk.frombytes(data)
            yield chunk


# --------------------------------------------------------------------------- the full join

def full_join(sources: list[rc.Source], results_path: str, fmt: str, retry_writer,
              table_writer=None, progress=None) -> tuple[rc.Summary, dict | None]:
    """A full join; while some request is pending it keeps its index and sizes for update().
    Returns the summary and the state to keep in the stamp (None: nothing kept)."""
    remove_cache(results_path)
    if all(source.finished for source in sources):  # nothing can be pending: keep nothing
        return reconcile_to_files(sources, results_path, fmt, retry_writer,
                                  progress=progress, table_writer=table_writer), None
    index_path, sizes_path = cache_paths(results_path)
    index = Index(tmp_dir=os.path.dirname(index_path),
                     prefix=os.path.basename(index_path) + ".")
    sizes = RowSizes(sizes_path)
    try:
        summary = reconcile_to_files(sources, results_path, fmt, retry_writer,
                                     progress=progress, table_writer=table_writer,
                                     index=index, sizes=sizes)
        if not summary.counts["pending"]:
            sizes.abort()
            return summary, None
        sizes.commit()
        index.keep_as(index_path)
        table_head = table_writer.head if table_writer is not None else 0
        return summary, _state(index, sizes.head, table_head, index_path, sizes_path)
    except BaseException:
        sizes.abort()
        raise
    finally:
        index.close()


def _state(index: Index, head: int, table_head: int, index_path: str, sizes_path: str
           ) -> dict:
    files = []
    for (path, kind), (upto, lines) in zip(index.result_files, index.read_upto, strict=True):
        st = _file_id(path)
        files.append({"path": path, "kind": kind, "bytes": upto, "lines": lines,
                      "inode": st[2] if st else None, "tail": _tail_digest(path, upto)})
    return {"version": STATE_VERSION, "head": head, "table_head": table_head, "files": files,
            "index": _index_id(index_path), "sizes": _file_id(sizes_path)}


def _index_id(index_path: str) -> list:
    """What identifies the kept index: both its files, as they are now."""
    return [_file_id(index_path), _file_id(results_file(index_path))]


# --------------------------------------------------------------------------- the update

def update(sources: list[rc.Source], results_path: str, fmt: str, retry_writer,
           state: dict, summary: rc.Summary, retry_counts: dict, table_writer=None,
           table_info: dict | None = None) -> tuple[rc.Summary, dict | None, int, int] | None:
    """Bring the results and retry files (built from `sources` as they were when `state` was
    kept, with `summary`, `retry_counts` and the retry writer's policy tally, and the user's
    table, written as `table_info` says) up to date with the raw lines added since.

    Returns (summary, state like full_join's, new lines, requests decided again), or None
    when only a full join will do (nothing has been written then). The caller has checked
    that nothing else changed.
    """
    index_path, sizes_path = cache_paths(results_path)
    try:
        index = _reopen(state, index_path, sizes_path)
    except Stale:
        return None
    try:
        after = index.last_result_row()
        try:
            grown = _read_new_lines(index, state)
        except Stale:
            return None
        new_lines = index.last_result_row() - after
        if new_lines > MAX_NEW_SHARE * max(summary.records, 1):
            return None
        if not grown:
            return None  # (the stamp would have kept the files: something else differs)
        try:
            table = table_writer if table_writer is not None and \
                (table_info or {}).get("path") else None
            touched = _merge(index, after, sources, results_path, fmt, retry_writer, table,
                             state, summary, retry_counts, sizes_path)
        except Stale:
            retry_writer.abort()
            return None
        if table_writer is not None:
            table_writer.keep(table_info or {})
        index.db.commit()
        index.close()
        if not summary.counts["pending"]:
            remove_cache(results_path)
            return summary, None, new_lines, touched
        return (summary, _state(index, state["head"], state["table_head"], index_path,
                                sizes_path), new_lines, touched)
    finally:
        index.close()


def _reopen(state: dict, index_path: str, sizes_path: str) -> Index:
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise Stale("no state")
    if _index_id(index_path) != state.get("index") or _file_id(sizes_path) != state.get("sizes"):
        raise Stale("the kept index or sizes file changed")
    files = state["files"]
    return Index.reopen(index_path, [(f["path"], f["kind"]) for f in files],
                           [(f["bytes"], f["lines"]) for f in files])


def _read_new_lines(index: Index, state: dict) -> bool:
    """Index the lines each raw copy gained; False when none gained any. Stale when a copy was
    rewritten, not grown (another inode, shorter, or other bytes before the read position)."""
    grown = False
    for fno, kept in enumerate(state["files"]):
        path = kept["path"]
        st = _file_id(path)
        if st is None:
            if kept["bytes"]:
                raise Stale(f"{path} is gone")
            continue
        if kept["inode"] is not None and (st[2] != kept["inode"] or st[0] < kept["bytes"]):
            raise Stale(f"{path} was replaced")
        if _tail_digest(path, kept["bytes"]) != kept["tail"] and kept["bytes"]:
            raise Stale(f"{path} was rewritten")
        if st[0] > kept["bytes"]:
            grown = True
            index.add_new_lines(fno, fno // 2)  # (each source: its output, then error file)
    return grown


def _merge(index: Index, after: int, sources: list[rc.Source], results_path: str,
           fmt: str, retry_writer, table_writer, state: dict, summary: rc.Summary,
           retry_counts: dict, sizes_path: str) -> int:
    """Write the new results, retry and sizes files: old bytes copied, touched requests
    decided again (counts moved from their old record to their new one). Returns how many
    requests were decided again."""
    reader = rc.Reader()
    judge = rc.Judge(sources, index.result_files, reader)
    count = rc.Counter(summary)
    policy = retry_writer.policy
    tally = _GaveUp(policy, index)
    retry_path = retry_writer.path
    old_sizes = _read_sizes(sizes_path)
    sizes = RowSizes(sizes_path)  # (replaces the old file when committed, after reading it)
    retry_writer.resume(retry_counts)
    touched = 0
    try:
        table_path = table_writer.path if table_writer is not None else None
        with open(results_path, "rb") as old_results, \
                _open_or_empty(retry_path) as old_retry, \
                _open_or_empty(table_path) as old_table, \
                _table_out(table_path) as table_out, \
                results_writer(results_path, fmt) as out:
            if out.head != state["head"]:  # (the writer has written its own header)
                raise Stale("another header")
            _take(old_results, state["head"])
            sizes.head = out.head
            table_out.write(_take(old_table, state["table_head"] if table_path else 0))
            cursor = _SizesCursor(old_sizes, sizes, (old_results, old_retry, old_table),
                                  (out.write_bytes, retry_writer.write_bytes, table_out.write))
            for now, before in index.touched_groups(after):
                group = now[0][0]
                _, _, old_row = cursor.copy_until(group)
                old, old_source, _, _, old_superseded = judge.best(before)
                new, source, in_off, in_len, superseded = judge.best(now)
                count(old, old_source, -1)
                count(new, source)
                summary.superseded += superseded - old_superseded
                verdict = policy.verdict(old)
                if verdict == "retry":
                    retry_writer.discount(old)
                elif verdict == "give_up":
                    tally.remove(old, group)
                written = out.write(new)
                retried = 0
                verdict = policy.verdict(new)
                if verdict == "retry":
                    chosen = rc.Chosen(new, source, in_off, in_len, reader, group)
                    retried = retry_writer.add(new, chosen.request_line())
                elif verdict == "give_up":
                    tally.add(new, group)
                tabled = 0
                if table_path:
                    row = table_writer.row_again(old_row, old, new)
                    if row is None:
                        raise Stale("a table row that does not read back")
                    table_out.write(row)
                    tabled = len(row)
                sizes.add(group, written, retried, tabled)
                touched += 1
            cursor.copy_rest()
        tally.store()
        summary.unmatched_results += index.unmatched_results
        summary.unreadable_results += index.unreadable_results
        sizes.commit()
        return touched
    except BaseException:
        sizes.abort()
        raise
    finally:
        reader.close()


class _GaveUp:
    """The given-up tally of the last join, brought up to date as a full join would count it:
    per reason, how many and the first ten custom_ids in results order (their places are
    looked up in the index); reasons in the order they first occur."""

    def __init__(self, policy, index: Index) -> None:
        self.policy, self.index = policy, index
        self.entries = {reason: {"count": entry["count"],
                                 "ids": sorted((index.place_of(cid), cid)
                                               for cid in entry["custom_ids"])}
                        for reason, entry in policy.reasons.items()}

    def remove(self, record: dict, place: int) -> None:
        entry = self.entries.get(give_up_reason(record))
        if entry is None:
            raise Stale("a given-up request the tally does not know")
        shown = [item for item in entry["ids"] if item[1] != record["custom_id"]]
        if len(shown) < len(entry["ids"]) and entry["count"] > len(entry["ids"]):
            raise Stale("an id the tally did not show would have to take its place")
        entry["ids"], entry["count"] = shown, entry["count"] - 1
        if not entry["count"]:
            del self.entries[give_up_reason(record)]

    def add(self, record: dict, place: int) -> None:
        entry = self.entries.setdefault(give_up_reason(record), {"count": 0, "ids": []})
        entry["count"] += 1
        insort(entry["ids"], (place, record["custom_id"]))
        del entry["ids"][SHOWN_IDS:]

    def store(self) -> None:
        ordered = sorted(self.entries.items(), key=lambda item: item[1]["ids"][0])
        self.policy.reasons = {reason: {"count": e["count"],
                                        "custom_ids": [cid for _, cid in e["ids"]]}
                               for reason, e in ordered}
        self.policy.gave_up = sum(e["count"] for e in self.entries.values())


@contextlib.contextmanager
def _open_or_empty(path: str | None):
    try:
        f = open(path, "rb") if path else open(os.devnull, "rb")
    except FileNotFoundError:
        f = open(os.devnull, "rb")
    with f:
        yield f


@contextlib.contextmanager
def _table_out(path: str | None):
    """The new table (atomic), or a sink that drops everything when there is none."""
    if not path:
        yield open(os.devnull, "wb")
        return
    with atomic_open(path, "wb") as f:
        yield f


def _take(f, nbytes: int) -> bytes:
    data = f.read(nbytes)
    if len(data) != nbytes:
        raise Stale(f"{f.name} is shorter than the join that wrote it")
    return data


def _copy(src, write, nbytes: int) -> None:
    while nbytes:
        data = _take(src, min(nbytes, _COPY_BLOCK))
        write(data)
        nbytes -= len(data)


class _SizesCursor:
    """Walks the old sizes file: copies the requests before a touched one (the bytes of each
    file, their sizes entries) and takes the touched one's old bytes out of the way."""

    def __init__(self, old_sizes: Iterator[array], sizes: RowSizes, olds: tuple,
                 writes: tuple) -> None:
        self.chunks, self.sizes, self.olds, self.writes = old_sizes, sizes, olds, writes
        self.chunk, self.groups, self.at = array("I"), array("I"), 0

    def _next_chunk(self) -> bool:
        self.chunk = next(self.chunks, None)
        if self.chunk is None:
            self.chunk = array("I")
            return False
        self.groups, self.at = self.chunk[0::WIDTH], 0
        return True

    def _copy_entries(self, stop: int) -> None:
        """Copy entries at..stop-1 of the current chunk."""
        if stop <= self.at:
            return
        part = self.chunk[WIDTH * self.at:WIDTH * stop]
        for column, (old, write) in enumerate(zip(self.olds, self.writes, strict=True), 1):
            _copy(old, write, sum(part[column::WIDTH]))
        self.sizes.extend(part)
        self.at = stop

    def copy_until(self, group: int) -> tuple[bytes, ...]:
        """Copy every request before `group`, then take `group`'s old bytes: returned, one
        per file."""
        while True:
            try:
                pos = self.groups.index(group, self.at)
                break
            except ValueError:
                self._copy_entries(len(self.groups))
                if not self._next_chunk():
                    raise Stale(f"request {group} is not in the kept sizes") from None
        self._copy_entries(pos)
        entry = self.chunk[WIDTH * pos:WIDTH * (pos + 1)]
        self.at = pos + 1
        return tuple(_take(old, entry[column])
                     for column, old in enumerate(self.olds, 1))

    def copy_rest(self) -> None:
        while True:
            self._copy_entries(len(self.groups))
            if not self._next_chunk():
                return
