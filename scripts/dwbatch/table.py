"""The user's own table back: every input row once, in input order, with the answers added.

Why: the results file holds `custom_id` + answers; the user asked for their table (their
columns, their order) with the answers beside each row. create_batch_file.py records where
its requests came from (dwbatch.provenance: the input file, its format, the id rule, the kind
of answer); this module reads that input again and writes, row by row, the input's cells as
they were read, then `status`, the answer (one column per top-level schema property for
structured output, else `answer`, or `embedding`), then `error`.

Memory stays flat: the reconciled records arrive in input order (the first job's order is the
build's order), so the input is streamed side by side with them, a row at a time, and each
row's id is checked against its record's custom_id: a table is never joined by position
alone. A mismatch abandons the table (the results file is not affected) with what is wrong.

Formats: the input's own (.csv -> .csv, .tsv -> .tsv, .jsonl/.json records -> .jsonl, .txt
prompts -> .csv with a `prompt` column), or chosen by the --table extension. In CSV/TSV,
cells from the model or the server are spreadsheet-safe (dwbatch.csv_safe); input cells are
written as read. Without a recorded source, one row per request with `custom_id` first.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Iterator

from .csv_safe import cell
from .errors import InputError
from .fsutil import atomic_open
from .inputs import open_source
from .provenance import sha256_of
from .results_io import CountingSink

TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl",
                 ".ndjson": "jsonl"}
_FROM_INPUT = {"csv": "csv", "tsv": "tsv", "jsonl": "jsonl", "json": "jsonl", "txt": "csv"}
ID_WIDTH = 6
_encode = json.JSONEncoder(ensure_ascii=False).encode


def default_extension(source: dict | None) -> str:
    """The table's extension for a recorded input format (csv for .txt prompts)."""
    return _FROM_INPUT.get((source or {}).get("format"), "csv")


def format_of(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in TABLE_FORMATS:
        raise InputError(f"--table {path}: the extension {ext or '(none)'} names no table "
                         "format", hint="end the path in .csv, .tsv or .jsonl")
    return TABLE_FORMATS[ext]


def answer_of(endpoint: str | None, response_format: dict | None) -> dict:
    """What a build's answers look like, for its source record: structured (the schema's
    top-level properties, in order), embedding, or text."""
    if endpoint and endpoint.endswith("/embeddings"):
        return {"answer": "embedding"}
    props = (response_format or {}).get("properties")
    if isinstance(props, dict) and props:
        return {"answer": "structured", "properties": list(props)}
    return {"answer": "text"}


class TableError(Exception):
    """The table cannot be written as it should (its rows no longer match the results)."""


def _text(value) -> str:
    """A JSON value as a CSV cell: strings as they are, null empty, the rest JSON text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return _encode(value)


def error_text(record: dict) -> str:
    """The `error` column: why a record is not ok (empty when ok or pending)."""
    status = record["status"]
    if status in ("ok", "pending"):
        return ""
    message = (record.get("error") or {}).get("message")
    if message:
        return str(message)
    if status == "truncated":
        return "the answer was cut off at the token limit"
    return status


class _Columns:
    """The added columns: status, the answer's, error (renamed when the input has one)."""

    def __init__(self, input_columns: list[str], answer: dict) -> None:
        self.kind = answer.get("answer", "text")
        self.properties = list(answer.get("properties") or []) if self.kind == "structured" \
            else []
        base = ["status"] + (self.properties or [self.kind if self.kind == "embedding"
                                                 else "answer"]) + ["error"]
        taken = set(input_columns)
        self.names = [n + "_result" if n in taken else n for n in base]

    def values(self, record: dict) -> list:
        """status, answer values (JSON values; None when not ok), error text."""
        ok = record["status"] == "ok"
        if self.kind == "structured":
            data = record.get("json") if ok and isinstance(record.get("json"), dict) else {}
            answers = [data.get(p) for p in self.properties]
        elif self.kind == "embedding":
            answers = [record.get("embedding") if ok else None]
        else:
            answers = [record.get("content") if ok else None]
        return [record["status"], *answers, error_text(record)]


class _Sink:
    """Rows into CSV/TSV (cells as text) or JSONL (objects), into an atomic file (`f`: a
    results_io.CountingSink, which says how many bytes the header and each row took)."""

    def __init__(self, f, fmt: str) -> None:
        self.fmt = fmt
        self.f = f
        self.writer = csv.writer(f, delimiter="\t" if fmt == "tsv" else ",") \
            if fmt in ("csv", "tsv") else None
        self.header: list[str] | None = None
        self.head = 0  # bytes of the header row
        self.last_row = 0  # bytes of the last row

    def start(self, header: list[str]) -> None:
        self.header = header
        before = self.f.written
        if self.writer is not None:
            self.writer.writerow(header)
        self.head = self.f.written - before

    def row(self, input_cells: list, added: list, added_names: list[str]) -> None:
        before = self.f.written
        if self.writer is not None:
            # input cells as read; what came from the model or server made spreadsheet-safe
            self.writer.writerow([_text(v) for v in input_cells]
                                 + [added[0]] + [cell(_text(v)) for v in added[1:]])
        else:
            obj = dict(zip(self.header[:len(input_cells)], input_cells, strict=True))
            obj.update(zip(added_names, added, strict=True))
            self.f.write(_encode(obj) + "\n")
        self.last_row = self.f.written - before


class TableWriter:
    """Writes the table while the records stream by (`add` in input order), then `commit`.

    source: the job's recorded source (input path absolute), or None for one row per
    request. answer: {"answer": "text"|"structured"|"embedding", "properties": [...]}.
    A problem abandons the table: `failed` says why, the results go on.
    """

    def __init__(self, path: str, fmt: str, source: dict | None, answer: dict) -> None:
        self.path, self.fmt, self.source, self.answer = path, fmt, source, answer
        self.failed: str | None = None
        self.rows = 0
        self._stack = contextlib.ExitStack()
        self._items: Iterator | None = None
        self._sink: _Sink | None = None
        self._columns: _Columns | None = None
        self._input_columns: list[str] | None = None
        self._ordinal = 0
        self._kept: dict | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def _open(self) -> None:
        f = self._stack.enter_context(atomic_open(self.path, "wb"))
        self._sink = _Sink(CountingSink(f), self.fmt)
        if self.source is None:
            return
        recorded = self.source.get("sha256")
        if not self.source.get("id_column") and recorded and \
                sha256_of(self.source["input"]) != recorded:
            raise TableError(f"{self.source['input']} changed since the batch file was built, "
                             "and its rows have no id column to match them by (ids were "
                             "generated from row numbers)")
        src = self._stack.enter_context(open_source(self.source["input"],
                                                    self.source.get("format")))
        if src.kind != "records":
            raise TableError(f"{self.source['input']} now holds ready batch lines, not the "
                             "rows it was built from")
        self._items = iter(src.items)
        if src.columns is not None:
            self._input_columns = list(src.columns)

    def add(self, record: dict) -> int:
        """Write `record`'s row; returns the bytes the row took (0: the table is abandoned)."""
        if self.failed is not None:
            return 0
        try:
            if self._sink is None:
                self._open()
            if self.source is None:
                self._add_plain(record)
            else:
                self._add_row(record)
        except (TableError, InputError, OSError) as exc:
            self._fail(str(exc))
            return 0
        return self._sink.last_row

    def commit(self) -> dict:
        """Finish the file. Returns {"path" (None when abandoned), "rows", "columns" (in
        words), "error" (why it was abandoned)}."""
        if self._kept is not None:
            return self._kept
        if self.failed is None and self._items is not None and self.source.get("rows") is None:
            # (a source limited to its first `rows` rows, a pilot's, may have more)
            extra = next(self._items, None)
            if extra is not None:
                self._fail(f"{self.source['input']} line {extra.line}: the input has more "
                           f"rows than the job has requests ({self.rows})")
        if self.failed is None:
            try:
                if self._sink is None:
                    self._open()
                    self._sink.start(["custom_id", *_Columns(["custom_id"], self.answer).names])
                self._stack.close()
            except (TableError, InputError) as exc:
                self._fail(str(exc))
        if self.failed is not None:
            return {"path": None, "rows": 0, "columns": None, "error": self.failed}
        return {"path": self.path, "rows": self.rows, "columns": self._columns_text(),
                "error": None}

    @property
    def head(self) -> int:
        """Bytes of the header row (written with the first row)."""
        return self._sink.head if self._sink is not None else 0

    def row_again(self, old_row: bytes, old: dict, new: dict) -> bytes | None:
        """The row of record `new` in place of the row an earlier run wrote for record `old`
        (its input cells read back from it), or None when that row does not read back to
        exactly its own bytes: then only a full join will do."""
        added = len(_Columns([], self.answer).names)
        try:
            if self.fmt in ("csv", "tsv"):
                rows = list(csv.reader(io.StringIO(old_row.decode("utf-8"), newline=""),
                                       delimiter="\t" if self.fmt == "tsv" else ","))
                if len(rows) != 1 or len(rows[0]) < added:
                    return None
                cells, keys, names = rows[0][:-added], None, None
            else:
                obj = json.loads(old_row)
                keys = list(obj) if isinstance(obj, dict) else []
                if len(keys) < added:
                    return None
                keys, names = keys[:-added], keys[-added:]
                cells = [obj[k] for k in keys]
        except (ValueError, csv.Error):
            return None
        columns = _Columns([], self.answer)

        def render(record: dict) -> bytes:
            buffer = io.BytesIO()
            sink = _Sink(CountingSink(buffer), self.fmt)
            sink.header = None if keys is None else [*keys, *names]
            sink.row(cells, columns.values(record), names or columns.names)
            return buffer.getvalue()

        return render(new) if render(old) == old_row else None

    def keep(self, info: dict) -> None:
        """The table an earlier run wrote is still right (see results_stamp)."""
        self._kept = dict(info)

    def _columns_text(self) -> str:
        added = ", ".join(self._columns.names) if self._columns else "status, answer, error"
        if self.source is None:
            return f"custom_id, {added}"
        return f"{len(self._input_columns or [])} input columns, then {added}"

    def abort(self) -> None:
        with contextlib.suppress(BaseException):
            self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def _fail(self, why: str) -> None:
        self.failed = why
        self.abort()

    # -- rows ---------------------------------------------------------------------------------
    def _add_plain(self, record: dict) -> None:
        if self._columns is None:
            self._columns = _Columns(["custom_id"], self.answer)
            self._sink.start(["custom_id", *self._columns.names])
        self._sink.row([record["custom_id"]], self._columns.values(record),
                       self._columns.names)
        self.rows += 1

    def _add_row(self, record: dict) -> None:
        item = next(self._items, None)
        self._ordinal += 1
        if item is None:
            raise TableError(f"{self.source['input']} has fewer rows than the job has "
                             f"requests: none left for {record['custom_id']!r}")
        if item.prompt is not None:
            fields = {"prompt": item.prompt}
        else:
            fields = item.fields
        expected = self._row_id(item, fields)
        if expected != record["custom_id"]:
            raise TableError(
                f"{self.source['input']} line {item.line}: this row's id is {expected!r} but "
                f"request {self._ordinal} of the job is {record['custom_id']!r}: the input "
                "changed since the batch file was built")
        if self._columns is None:
            names = self._input_columns or list(fields)
            self._input_columns = names
            self._columns = _Columns(names, self.answer)
            self._sink.start([*names, *self._columns.names])
        names = self._input_columns
        if self._sink.writer is not None and any(k not in names for k in fields):
            extra = next(k for k in fields if k not in names)
            raise TableError(f"{self.source['input']} line {item.line}: field {extra!r} is "
                             "not among the first record's fields, so it has no column in a "
                             "CSV/TSV table: write the table as .jsonl (--table NAME.jsonl)")
        cells = [fields.get(n) for n in names] if self._sink.writer is not None \
            else [fields[n] for n in fields]
        if self._sink.writer is None:
            self._sink.header = [*fields, *self._columns.names]
        self._sink.row(cells, self._columns.values(record), self._columns.names)
        self.rows += 1

    def _row_id(self, item, fields: dict) -> str:
        column = self.source.get("id_column")
        if column:
            value = fields.get(column)
            return "" if value is None else str(value)
        prefix = self.source.get("id_prefix", "req")
        width = int(self.source.get("id_width", ID_WIDTH))
        return f"{prefix}-{self._ordinal:0{width}d}"
