"""The join's index: where every request line and every result line is, by custom_id.

Memory stays flat for millions of requests: the index lives in temporary sqlite3 files, by
byte offset, and the lines are read again from disk when their record is written. Two files:
the request lines (NAME) and the result lines (NAME-results, attached as `r`), built apart so
that a second process can index the result lines while this one indexes the request lines
(forked.py): the two take about as long, and the join's own loop needs both.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sqlite3
import tempfile
from bisect import bisect_right
from collections.abc import Callable, Iterator
from itertools import accumulate, chain, repeat
from operator import itemgetter
from typing import TYPE_CHECKING

from . import forked
from .errors import InputError
from .jsontext import loads
from .request_lines import ENDPOINT_CODES, STRUCTURED, URL_CODES, endpoint_of, structured_schema

if TYPE_CHECKING:
    from .reconcile import Source

_PRAGMAS = ("journal_mode=OFF", "synchronous=OFF", "temp_store=FILE")
# KiB of page cache of each half of the index (the sort that builds its index uses as much):
# two processes build the two halves at once, and together they stay under 100 MB. The join
# then reads the request lines in order (little cache is needed) and looks each request up in
# the results half (where a cache saves reads).
CACHE_KIB = 8192
JOIN_INPUTS_CACHE_KIB = 1024
# Both tables are only appended to while the files are read (rows in file order, no index to
# keep up: random-key inserts into a b-tree are what made a large join slow); their indexes are
# built once, sorted, when every line is in.
_INPUTS = """CREATE TABLE inp (seq INTEGER PRIMARY KEY, cid TEXT NOT NULL, src INTEGER NOT NULL,
                  off INTEGER NOT NULL, len INTEGER NOT NULL, ep INTEGER NOT NULL,
                  flags INTEGER NOT NULL)"""
_INPUTS_BY_ID = "CREATE INDEX inp_cid ON inp (cid, src)"
_RESULTS = """CREATE TABLE res (cid TEXT NOT NULL, src INTEGER NOT NULL, fno INTEGER NOT NULL,
                  off INTEGER NOT NULL, len INTEGER NOT NULL)"""
_RESULTS_BY_ID = "CREATE INDEX res_cid ON res (cid, src, fno, off, len)"
# Below this many bytes of result lines, a second process is not worth starting.
FORK_FROM_BYTES = 16 << 20

# Every request line with its result lines, in input order. With no custom_id in two input
# lines (the usual case) a request is its own group; otherwise a group is led by the first
# line of its custom_id and holds every line with that custom_id (same batch: repeats; other
# batches: retry jobs), each with its results.
_ROWS_UNIQUE = """
SELECT i.seq, i.cid, i.src, i.off, i.len, i.ep, i.flags, x.fno, x.off, x.len, i.seq
FROM inp i LEFT JOIN res x ON x.cid = i.cid AND x.src = i.src ORDER BY i.seq
"""
_ROWS_ONE_EACH = """
SELECT i.seq, i.cid, i.src, i.ep, i.flags, x.fno, x.off, x.len
FROM inp i LEFT JOIN res x ON x.cid = i.cid AND x.src = i.src WHERE i.seq BETWEEN ? AND ?
ORDER BY i.seq
"""
_ROWS_GROUPED = """
SELECT l.seq, i.cid, i.src, i.off, i.len, i.ep, i.flags, x.fno, x.off, x.len, i.seq
FROM inp l JOIN inp i ON i.cid = l.cid
LEFT JOIN res x ON x.cid = i.cid AND x.src = i.src
WHERE NOT EXISTS (SELECT 1 FROM inp e WHERE e.cid = l.cid AND e.seq < l.seq)
ORDER BY l.seq
"""
_ROWS_TOUCHED = """
SELECT l.seq, i.cid, i.src, i.off, i.len, i.ep, i.flags, x.fno, x.off, x.len, i.seq, x.rowid
FROM temp.touched t JOIN inp l ON l.cid = t.cid
JOIN inp i ON i.cid = l.cid
LEFT JOIN res x ON x.cid = i.cid AND x.src = i.src
WHERE NOT EXISTS (SELECT 1 FROM inp e WHERE e.cid = l.cid AND e.seq < l.seq)
ORDER BY l.seq
"""

_ROWS_PER_INSERT = 100  # rows per INSERT statement: binding is cheaper in one long statement
_INSERT_INTO = {"inp": "INSERT INTO inp (cid, src, off, len, ep, flags) VALUES ",
                "res": "INSERT INTO res (cid, src, fno, off, len) VALUES "}


def _insert(db: sqlite3.Connection, table: str, width: int, rows) -> int:
    """Append `rows` (tuples of `width` values, in order) to `table`, many rows to an INSERT;
    returns how many rows."""
    flat = list(chain.from_iterable(rows))
    one = "(" + ",".join("?" * width) + ")"
    step = _ROWS_PER_INSERT * width
    full = len(flat) // step * step
    if full:
        many = _INSERT_INTO[table] + ",".join([one] * _ROWS_PER_INSERT)
        db.executemany(many, zip(*[iter(flat[:full])] * step, strict=True))
    if full < len(flat):
        db.executemany(_INSERT_INTO[table] + one, zip(*[iter(flat[full:])] * width, strict=True))
    return len(flat) // width


# Fast paths for the common line shapes: a top-level key reached through simple leading
# pairs only ("id":"…", "custom_id":"…", "method":"…", …) is provably the top-level value, so
# it can be read with a few byte searches instead of parsing the whole line. Anything else
# (nested braces or brackets, escapes, odd spacing before the key) falls back to json.loads.
# Any of these keys may ask for structured output: such a request line is parsed in full.
_STRUCTURED_MARKERS = re.compile(rb'"(?:response_format|text|output_format|output_config)"')
# The shapes the scripts and the service write, matched by one anchored pattern each (the
# general search below is several times slower per line).
_USUAL_REQUEST = re.compile(rb'\{"custom_id": ?"([^"\\]*)", ?"method": ?"[A-Z]*", ?'
                            rb'"url": ?"([^"\\]*)"')
_USUAL_RESULT = re.compile(rb'\{(?:"id": ?"[^"\\]*", ?)?"custom_id": ?"([^"\\]*)"')
# The same shapes as whole lines of a run of lines: a run whose every line is one of them is
# indexed without a Python step per line (findall, then C iterators into executemany).
_USUAL_REQUEST_LINES = re.compile(rb'^(\{"custom_id": ?"([^"\\\n]*)", ?"method": ?"[A-Z]*", ?'
                                  rb'"url": ?"([^"\\\n]*)"[^\n]*\n)', re.MULTILINE)
_USUAL_RESULT_LINES = re.compile(rb'^(\{(?:"id": ?"[^"\\\n]*", ?)?"custom_id": ?'
                                 rb'"([^"\\\n]*)"[^\n]*\n)', re.MULTILINE)
# What every request line that may ask for structured output has (a plain search, a superset
# of _STRUCTURED_MARKERS): the key response_format or output_format, or format inside text or
# output_config (structured_schema reads no other).
_MARKER = b'format"'
_first, _second, _third = itemgetter(0), itemgetter(1), itemgetter(2)


def _marked_lines(run: bytes, starts: list[int]) -> list[int]:
    """The numbers (from 0) of the lines of `run` that have _MARKER; `starts`: the
    file offset of each line, then of the run's end."""
    base, marked = starts[0], set()
    at = run.find(_MARKER)
    while at >= 0:
        marked.add(bisect_right(starts, base + at) - 1)
        at = run.find(_MARKER, at + 1)
    return sorted(marked)


def _whole_lines(found: list[tuple], run: bytes) -> list[int] | None:
    """The line lengths of `found` (findall of a *_LINES pattern) when its lines are every
    line of `run`, else None."""
    lengths = list(map(len, map(_first, found)))
    return lengths if sum(lengths) == len(run) else None


def _key_patterns(key: str) -> tuple[bytes, bytes]:
    return (f'"{key}": "'.encode(), f'"{key}":"'.encode())


_CID_KEYS = _key_patterns("custom_id")
_URL_KEYS = _key_patterns("url")


def _simple_string(line: bytes, patterns: tuple[bytes, bytes]) -> bytes | None:
    """The raw bytes of a top-level string value, or None when that cannot be proven cheaply.

    Proof: the line starts with `{`, and before the key there is no brace, bracket or
    backslash and an even number of quotes, so the key is outside any string at depth 1;
    the value has no backslash, so its first closing quote ends it.
    """
    spaced, compact = patterns
    at = line.find(spaced)
    start = at + len(spaced)
    if at < 0:
        at = line.find(compact)
        if at < 0:
            return None
        start = at + len(compact)
    if line[:1] != b"{" or line.find(b"{", 1, at) >= 0 or line.find(b"[", 0, at) >= 0 \
            or line.find(b"\\", 0, at) >= 0 or line.count(b'"', 0, at) % 2:
        return None
    end = line.find(b'"', start)
    if end < 0 or line.find(b"\\", start, end) >= 0:
        return None
    return line[start:end]


def _fast_custom_id(line: bytes) -> str | None:
    m = _USUAL_RESULT.match(line)
    raw = m.group(1) if m is not None else _simple_string(line, _CID_KEYS)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


_BLOCK = 1 << 20  # bytes read at a time while indexing


def _line_runs(f, offset: int) -> Iterator[tuple[int, bytes, bool]]:
    """(file offset, bytes, whole) of the file from `offset` on, in runs of whole lines of
    about _BLOCK bytes (a longer line is one run of its own); the last run, when the file does
    not end with a newline, is what follows the last one (whole: False)."""
    f.seek(offset)
    pieces: list[bytes] = []
    while True:
        data = f.read(_BLOCK)
        if not data:
            break
        cut = data.rfind(b"\n") + 1
        if cut == 0:  # (inside a line longer than a block)
            pieces.append(data)
            continue
        if pieces:
            pieces.append(data[:cut])
            run = b"".join(pieces)
        else:
            run = data if cut == len(data) else data[:cut]
        pieces = [data[cut:]] if cut < len(data) else []
        yield offset, run, True
        offset += len(run)
    if pieces:
        yield offset, b"".join(pieces), False


def _lines_of(run: bytes, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(position, line with its newline) of the lines of run[start:end]."""
    while start < end:
        stop = run.find(b"\n", start, end) + 1 or end
        yield start, run[start:stop]
        start = stop


def _fast_request_fields(line: bytes) -> tuple[str | None, int, int]:
    """(custom_id, endpoint code, flags) without parsing, or (None, 0, 0): parse it then."""
    if _STRUCTURED_MARKERS.search(line) is not None:
        return None, 0, 0
    m = _USUAL_REQUEST.match(line)
    if m is not None:
        raw_cid, raw_url = m.group(1), m.group(2)
    else:
        raw_cid = _simple_string(line, _CID_KEYS)
        raw_url = _simple_string(line, _URL_KEYS)
    if raw_cid is None or raw_url is None:
        return None, 0, 0
    code = URL_CODES.get(raw_url)
    if code is None:
        code = ENDPOINT_CODES.get(endpoint_of(raw_url.decode("utf-8", "replace")))
        if code is None:
            return None, 0, 0
    try:
        return raw_cid.decode("utf-8"), code, 0
    except UnicodeDecodeError:
        return None, 0, 0


def _input_flags(obj: dict) -> tuple[int, int]:
    body = obj.get("body")
    url = obj.get("url")
    ep = ENDPOINT_CODES.get(endpoint_of(url) if isinstance(url, str) else "", 0)
    flags = STRUCTURED if structured_schema(body)[0] else 0
    return ep, flags


def results_file(path: str) -> str:
    """The results half of the index whose request half is `path`."""
    return path + "-results"


def _connect(path: str, cache_kib: int, locking: str = "EXCLUSIVE") -> sqlite3.Connection:
    db = sqlite3.connect(path)
    for pragma in (*_PRAGMAS, f"cache_size=-{cache_kib}", f"locking_mode={locking}"):
        db.execute(f"PRAGMA {pragma}")
    return db


def _exists(db: sqlite3.Connection, query: str) -> bool:
    return bool(db.execute(f"SELECT EXISTS ({query})").fetchone()[0])


class _ResultLines:
    """Indexes raw output and error files into the `res` table of `db`."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.result_files: list[tuple[str | None, str]] = []  # (path, kind) by file number
        self.read_upto: list[tuple[int, int]] = []  # (bytes, lines) read, by file number
        self.result_rows = 0  # result lines with a custom_id; the join counts the matched
        self.unreadable_results = 0

    def add_results(self, src: int, path: str | None, kind: str) -> int:
        """Index every line of one raw output or error file; returns the number of lines.

        Every file gets its number, present or not (a later join that finds it must number
        the files as a full join would); `read_upto[fno]` is how far it was read.
        """
        self.result_files.append((path, kind))
        self.read_upto.append((0, 0))
        if not path or not os.path.exists(path):
            return 0
        return self.add_new_lines(len(self.result_files) - 1, src)

    def add_new_lines(self, fno: int, src: int) -> int:
        """Index the complete lines of result file `fno` beyond read_upto[fno]."""
        path = self.result_files[fno][0]
        off, lineno = self.read_upto[fno]
        count = 0
        with open(path, "rb") as f:
            for base, run, whole in _line_runs(f, off):
                if not whole:
                    break  # never a torn line: the downloader only appends complete ones
                off = base + len(run)
                found = _USUAL_RESULT_LINES.findall(run)
                lengths = _whole_lines(found, run) if found else None
                if lengths is not None:
                    try:  # every line usual: no step per line in Python
                        ids = list(map(bytes.decode, map(_second, found)))
                    except UnicodeDecodeError:
                        lengths = None
                if lengths is not None:
                    count += _insert(self.db, "res", 5, zip(
                        ids, repeat(src), repeat(fno), accumulate(lengths, initial=base),
                        lengths))
                    lineno += len(ids)
                    continue
                lineno += run.count(b"\n")
                rows: list[tuple] = []
                for at, line in _lines_of(run, 0, len(run)):
                    if line.isspace():
                        continue
                    cid = _fast_custom_id(line)
                    if cid is None:
                        try:
                            obj = loads(line)
                            cid = obj.get("custom_id") if isinstance(obj, dict) else None
                        except (ValueError, RecursionError):
                            cid = None
                        if not isinstance(cid, str):  # no request can be named: unreadable
                            self.unreadable_results += 1
                            continue
                    rows.append((cid, src, fno, base + at, len(line)))
                count += _insert(self.db, "res", 5, rows)
        self.result_rows += count
        self.read_upto[fno] = (off, lineno)
        return count


def build_results(path: str, files: list[tuple[int, str | None, str]]) -> dict:
    """Index the result files (source number, path, kind) into a new file `path`, with its
    index; returns what the join needs to know of them. Runs in a forked child or here."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    db = _connect(path, CACHE_KIB)
    try:
        db.execute(_RESULTS)
        lines = _ResultLines(db)
        for src, file_path, kind in files:
            lines.add_results(src, file_path, kind)
        db.execute(_RESULTS_BY_ID)
        repeated = _exists(db, "SELECT 1 FROM res GROUP BY cid, src HAVING COUNT(*) > 1")
        db.commit()
    finally:
        db.close()
    return {"result_files": lines.result_files, "read_upto": lines.read_upto,
            "result_rows": lines.result_rows, "unreadable_results": lines.unreadable_results,
            "repeated_results": repeated}


class Index(_ResultLines):
    """The sqlite3 index of one reconciliation: temporary files removed on close, unless they
    are kept (keep_as) for a later join to bring up to date (Index.reopen)."""

    def __init__(self, tmp_dir: str | None = None, existing: str | None = None,
                 prefix: str = "dwbatch-reconcile-") -> None:
        if existing is None:
            fd, path = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=tmp_dir)
            os.close(fd)
        self.temporary = existing is None
        self.path = existing or path
        super().__init__(_connect(self.path, CACHE_KIB))
        if self.temporary:
            self.db.execute(_INPUTS)
        else:
            self._attach()
        self.duplicate_inputs = 0
        self.unmatched_results = 0
        self.repeated_ids = False  # some custom_id in two input lines (set by build)
        self.repeated_results = False  # some request with two result lines in one batch

    @classmethod
    def reopen(cls, path: str, result_files: list, read_upto: list) -> Index:
        """A kept index, as the join that kept it left it."""
        index = cls(existing=path)
        index.result_files = [(p, k) for p, k in result_files]
        index.read_upto = [(int(b), int(n)) for b, n in read_upto]
        return index

    def _attach(self, locking: str = "EXCLUSIVE") -> None:
        self.db.execute("ATTACH DATABASE ? AS r", (results_file(self.path),))
        for pragma in (*_PRAGMAS, f"cache_size=-{CACHE_KIB}", f"locking_mode={locking}"):
            self.db.execute(f"PRAGMA r.{pragma}")

    def build(self, sources: list, progress: Callable[[str], None] | None = None) -> None:
        """Index every source's request lines here and its result lines beside them (in a
        second process when there are enough of them), each half with its index."""
        files = [(src, path, kind) for src, source in enumerate(sources)
                 for path, kind in ((source.output_path, "output"), (source.error_path, "error"))]
        size = sum(os.path.getsize(p) for _src, p, _kind in files if p and os.path.isfile(p))
        child = forked.start(build_results, results_file(self.path), files) \
            if forked.wanted(size, FORK_FROM_BYTES) else None
        try:
            for src, source in enumerate(sources):
                self.add_inputs(src, source)
                if progress:
                    progress(f"indexed {source.label or source.input_path}")
            self.db.execute(_INPUTS_BY_ID)
            self.repeated_ids = _exists(self.db,
                                        "SELECT 1 FROM inp GROUP BY cid HAVING COUNT(*) > 1")
            self.db.commit()
            done = child.result() if child is not None else None
            child = None
            if done is None:  # (no child, or it failed: the same work, here)
                done = build_results(results_file(self.path), files)
        finally:
            if child is not None:
                child.stop()
        self.result_files = [(p, k) for p, k in done["result_files"]]
        self.read_upto = [(int(b), int(n)) for b, n in done["read_upto"]]
        self.result_rows = int(done["result_rows"])
        self.unreadable_results = int(done["unreadable_results"])
        self.repeated_results = bool(done["repeated_results"])
        self._attach()
        self.db.execute(f"PRAGMA main.cache_size=-{JOIN_INPUTS_CACHE_KIB}")

    def keep_as(self, path: str) -> None:
        """Close the index and move it to `path` (over any older one)."""
        self.db.commit()
        self.db.close()
        os.replace(results_file(self.path), results_file(path))
        os.replace(self.path, path)
        self.path, self.temporary = path, False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.db.close()
        if self.temporary:
            for path in (self.path, results_file(self.path)):
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def place_of(self, custom_id: str) -> int:
        """The request's number (its first input line): where its record is in the results."""
        row = self.db.execute("SELECT MIN(seq) FROM inp WHERE cid = ?", (custom_id,)).fetchone()
        if row[0] is None:
            raise KeyError(custom_id)
        return row[0]

    def input_place(self, seq: int) -> tuple[int, int]:
        """(offset, length) of input line `seq` in its file."""
        return self.db.execute("SELECT off, len FROM inp WHERE seq = ?", (seq,)).fetchone()

    def last_result_row(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(rowid), 0) FROM res").fetchone()[0]

    def add_inputs(self, src: int, source: Source) -> int:
        """Index every request line of one source; returns the number of requests."""
        digest = hashlib.sha256()
        count = lineno = 0
        path = source.input_path
        if not os.path.exists(path):
            raise InputError(
                f"input file {path} of {source.label or 'the job'} does not exist",
                hint="the job file's shard paths are relative to the job file: keep the "
                     "input files beside it (or fetch by bare batch id)")
        codes = URL_CODES
        with open(path, "rb") as f:
            for base, run, whole in _line_runs(f, 0):
                digest.update(run)
                found = _USUAL_REQUEST_LINES.findall(run) if whole else []
                lengths = _whole_lines(found, run) if found else None
                if lengths is not None and codes.keys() >= set(map(_third, found)):
                    try:  # every line usual: no step per line in Python
                        ids = list(map(bytes.decode, map(_second, found)))
                    except UnicodeDecodeError:
                        ids = None
                    if ids is not None:
                        starts = list(accumulate(lengths, initial=base))
                        rows = list(zip(ids, repeat(src), starts, lengths,
                                        map(codes.__getitem__, map(_third, found)),
                                        repeat(0)))
                        for i in _marked_lines(run, starts):  # may ask for structured output
                            line = found[i][0]
                            cid, ep, flags = _fast_request_fields(line)
                            if cid is None:
                                cid, ep, flags = _parsed_request_fields(path, lineno + i + 1,
                                                                        line)
                            rows[i] = (cid, src, starts[i], lengths[i], ep, flags)
                        count += _insert(self.db, "inp", 6, rows)
                        lineno += len(rows)
                        continue
                rows: list[tuple] = []
                lineno = self._odd_inputs(path, src, base, run, 0, len(run), lineno,
                                          rows.append)
                count += _insert(self.db, "inp", 6, rows)
        if source.expected_sha256 and digest.hexdigest() != source.expected_sha256:
            raise InputError(
                f"input file {path} changed since it was submitted (sha256 differs from the "
                f"job file's record for batch {source.batch_id})",
                hint="results are joined to the submitted lines: restore the original file "
                     "(or fetch by bare batch id, which downloads the batch's own input)")
        return count

    @staticmethod
    def _odd_inputs(path: str, src: int, base: int, run: bytes, start: int, end: int,
                    lineno: int, append) -> int:
        """Index the lines of run[start:end] one by one (blank, unusual or structured ones);
        returns the number of the last line."""
        for at, line in _lines_of(run, start, end):
            lineno += 1
            if line.isspace():  # (no copy of the line, unlike strip())
                continue
            cid, ep, flags = _fast_request_fields(line)
            if cid is None:
                cid, ep, flags = _parsed_request_fields(path, lineno, line)
            append((cid, src, base + at, len(line), ep, flags))
        return lineno

    @property
    def one_row_each(self) -> bool:
        """Every request one input line with at most one result line (set by build)."""
        return not self.repeated_ids and not self.repeated_results

    def one_row_each_rows(self, first: int = 1, last: int | None = None) -> sqlite3.Cursor:
        """(seq, custom_id, src, ep, flags, fno|None, off, len) of the requests numbered
        first..last (default: to the end), in order, when one_row_each: what the join's own
        loop reads."""
        return self.db.execute(_ROWS_ONE_EACH, (first, last if last is not None else 1 << 62))

    def requests(self) -> int:
        """How many request lines (numbered from 1)."""
        return self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM inp").fetchone()[0]

    def share_reads(self) -> None:
        """Let go of the exclusive locks, so that another process can read both halves."""
        self.db.commit()
        for schema in ("main", "r"):
            self.db.execute(f"PRAGMA {schema}.locking_mode=NORMAL")
        self.db.execute("SELECT 1 FROM inp, res LIMIT 1").fetchall()  # (that lets them go)

    def reconnect(self) -> None:
        """A connection of this process's own (in a forked child: never the parent's)."""
        self.db = _connect(self.path, JOIN_INPUTS_CACHE_KIB, locking="NORMAL")
        self._attach(locking="NORMAL")

    def rows(self) -> Iterator[list[tuple]]:
        """Per request, in order: its candidate rows
        (group, custom_id, src, in_off, in_len, ep, flags, fno|None, off, len, line seq).
        (When one_row_each, the join reads one_row_each_rows instead.)

        Once every group has been read, duplicate_inputs and unmatched_results are final.
        """
        if self.repeated_ids:
            yield from self._grouped_rows()
            return
        matched = 0
        seq, group = None, None
        for row in self.db.execute(_ROWS_UNIQUE):
            if row[7] is not None:
                matched += 1
            if row[0] != seq:
                if group is not None:
                    yield group
                seq, group = row[0], [row]
            else:
                group.append(row)
        if group is not None:
            yield group
        self.unmatched_results += self.result_rows - matched

    def _grouped_rows(self) -> Iterator[list[tuple]]:
        matched = 0
        lead, group, first_line = None, [], {}
        for row in self.db.execute(_ROWS_GROUPED):
            if row[0] != lead:
                if group:
                    yield group
                lead, group, first_line = row[0], [], {}
            if first_line.setdefault(row[2], row[10]) != row[10]:
                continue  # a repeat of a line of the same batch: its first line counts
            if row[7] is not None:
                matched += 1
            group.append(row)
        if group:
            yield group
        self.duplicate_inputs = self.db.execute(
            "SELECT COUNT(*) - (SELECT COUNT(*) FROM (SELECT DISTINCT cid, src FROM inp)) "
            "FROM inp").fetchone()[0]
        self.unmatched_results += self.result_rows - matched

    def touched_groups(self, after: int) -> Iterator[tuple[list[tuple], list[tuple]]]:
        """(candidate rows now, candidate rows as the last join saw them) of every request
        that has a result line indexed after result row `after`, in input order.

        Result lines of the same file are indexed in file order, so "after" is exactly what
        the last join had not read. Once every group has been read, unmatched_results
        counts the new lines that match no request.
        """
        self.db.execute("DROP TABLE IF EXISTS temp.touched")
        self.db.execute("CREATE TEMP TABLE touched AS SELECT DISTINCT cid FROM res "
                        "WHERE rowid > ?", (after,))
        new_rows = self.db.execute("SELECT COUNT(*) FROM res WHERE rowid > ?",
                                   (after,)).fetchone()[0]
        matched = 0
        lead, rows, first_line = None, [], {}
        for row in self.db.execute(_ROWS_TOUCHED):
            if row[0] != lead:
                if rows:
                    yield _now_and_before(rows, after)
                lead, rows, first_line = row[0], [], {}
            if first_line.setdefault(row[2], row[10]) != row[10]:
                continue  # a repeat of a line of the same batch: its first line counts
            if row[11] is not None and row[11] > after:
                matched += 1
            rows.append(row)
        if rows:
            yield _now_and_before(rows, after)
        self.unmatched_results += new_rows - matched
        self.result_rows += new_rows


def _now_and_before(rows: list[tuple], after: int) -> tuple[list[tuple], list[tuple]]:
    """A group's candidate rows with and without the result rows indexed after `after`, in
    the order a full join sees them (a request line left without any result row becomes its
    "no result" row)."""
    now, before = [], []
    for k, row in enumerate(rows):
        now.append(row[:11])
        old = row[11] is None or row[11] <= after
        if old:
            before.append(row[:11])
        line_ends = k + 1 == len(rows) or rows[k + 1][10] != row[10]
        if line_ends and not any(r[10] == row[10] for r in before):
            before.append(row[:7] + (None, None, None, row[10]))
    return now, before


def _parsed_request_fields(path: str, lineno: int, line: bytes) -> tuple[str, int, int]:
    """(custom_id, endpoint code, flags) of a request line, parsed in full."""
    try:
        obj = loads(line)
        cid = obj["custom_id"]
        if not isinstance(cid, str):
            raise TypeError("custom_id is not a string")
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{path} line {lineno}: not a batch request line with a custom_id "
            f"({exc})", hint="the input file must be the JSONL file that was "
                             "submitted; it seems to have been changed") from None
    ep, flags = _input_flags(obj)
    return cid, ep, flags


