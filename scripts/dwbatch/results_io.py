"""Write reconciled records as JSONL or CSV, atomically (old complete file or new one)."""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterator

from .csv_safe import cell
from .fsutil import atomic_open
from .jsontext import record_text
from .reconcile import usage_numbers
from .retry_policy import NOT_RETRIED

FORMATS = ("jsonl", "csv")
WRITE_BUFFER = 1 << 20  # bytes written at a time (a record is a few hundred)

# The CSV's columns: the contract's record flattened; nested values as JSON text.
CSV_COLUMNS = ("custom_id", "status", "content", "finish_reason", "prompt_tokens",
               "completion_tokens", "total_tokens", "error_type", "error_status_code",
               "error_message", "batch_id", "json", "tool_calls", "embedding", "attempts",
               "retriable")


def _json_text(value) -> str:
    return "" if value is None else json.dumps(value, ensure_ascii=False)


def csv_row(record: dict) -> list:
    """One CSV row of a record; text from the model or the server is spreadsheet-safe."""
    prompt, completion, total = usage_numbers(record.get("usage"))
    has_usage = isinstance(record.get("usage"), dict)
    error = record.get("error") or {}
    content = record.get("content")
    retriable = record.get("retriable")
    return [
        record.get("custom_id"), record.get("status"),
        cell("" if content is None else content),
        cell(record.get("finish_reason") or ""),
        prompt if has_usage else "", completion if has_usage else "",
        total if has_usage else "",
        cell(error.get("type") or ""), "" if error.get("status_code") is None else
        error["status_code"], cell(error.get("message") or ""),
        cell(record.get("batch_id") or ""),
        cell(_json_text(record.get("json"))) if "json" in record else "",
        cell(_json_text(record.get("tool_calls"))), cell(_json_text(record.get("embedding"))),
        record.get("attempts", ""), "" if retriable is None else str(retriable).lower(),
    ]




class _JsonlWriter:
    """Writes records to a binary file; write() says how many bytes each took."""

    head = 0  # bytes before the first record

    def __init__(self, f) -> None:
        self.f = f

    def write(self, record: dict) -> int:
        data = (record_text(record) + "\n").encode("utf-8")
        self.f.write(data)
        return len(data)

    def write_bytes(self, data: bytes) -> None:
        """Bytes copied as they are (records an earlier join wrote)."""
        self.f.write(data)


class CountingSink:
    """A text file (what csv.writer writes to) over a binary file: counts the bytes."""

    def __init__(self, f) -> None:
        self.f, self.written = f, 0

    def write(self, text: str) -> None:
        data = text.encode("utf-8")
        self.f.write(data)
        self.written += len(data)


class _CsvWriter(_JsonlWriter):
    def __init__(self, f) -> None:
        super().__init__(f)
        self.sink = CountingSink(f)
        self.w = csv.writer(self.sink)
        self.w.writerow(CSV_COLUMNS)
        self.head = self.sink.written

    def write(self, record: dict) -> int:
        before = self.sink.written
        self.w.writerow(csv_row(record))
        return self.sink.written - before


@contextlib.contextmanager
def results_writer(path: str, fmt: str = "jsonl") -> Iterator[_JsonlWriter | _CsvWriter]:
    """A writer with .write(record); the file appears at `path` only when complete."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    with atomic_open(path, "wb", buffering=WRITE_BUFFER) as f:
        yield _JsonlWriter(f) if fmt == "jsonl" else _CsvWriter(f)


def format_from_path(path: str | None, default: str = "jsonl") -> str:
    """jsonl or csv, guessed from a file name (for -o without --format)."""
    if path and path.lower().endswith(".csv"):
        return "csv"
    return default


def reconcile_to_files(sources, results_path: str, fmt: str, retry_writer=None,
                       tmp_dir: str | None = None, progress=None, table_writer=None,
                       index=None, sizes=None):
    """Reconcile `sources` into the results file (and the retry file and the user's table);
    returns the Summary.

    Each file appears complete or not at all: on any failure the results file keeps its
    previous version and no partial retry file or table is left behind. `index` (the
    join's, kept by the caller) and `sizes` (a rejoin.RowSizes: what each request took in
    each file) are for a later join that brings these files up to date (rejoin.py).
    """
    from .reconcile import reconcile

    try:
        with results_writer(results_path, fmt) as out:
            if sizes is not None:
                sizes.head = out.head

            write, write_bytes, jsonl = out.write, out.write_bytes, fmt == "jsonl"

            def on_record(chosen):
                text = chosen.text  # (its results line as written already, when it has one)
                if text is not None and jsonl:
                    write_bytes(text)
                    written = len(text)
                else:
                    written = write(chosen.record)
                retried = tabled = 0
                if retry_writer is not None and chosen.status not in NOT_RETRIED:
                    retried = retry_writer.consider(chosen.record, chosen.request_line)
                if table_writer is not None:
                    tabled = table_writer.add(chosen.record)
                if sizes is not None:
                    sizes.add(chosen.group, written, retried, tabled)

            summary = reconcile(sources, on_record, tmp_dir=tmp_dir, progress=progress,
                                index=index)
    except BaseException:
        for writer in (retry_writer, table_writer):
            if writer is not None:
                writer.abort()
        raise
    return summary
