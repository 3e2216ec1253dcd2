"""Read what people have (prompt lists, tables, records, ready batch lines) one item at a time.

Every reader streams: a file of any size is read line by line (a .json array element by
element), so memory stays flat. Errors name the file, the line and what was expected; invalid
UTF-8 is reported with its byte offset.

Formats: txt (one prompt per line; lines of only whitespace are skipped), csv / tsv (header
row, quoted fields, embedded newlines, UTF-8 with or without BOM), jsonl (records, JSON strings
as prompts, or ready batch lines: decided by the first line), json (an array of the same),
batch (ready batch lines, no guessing). The format comes from the extension unless given;
stdin ('-') is guessed from its first character ('[' json, '{' or '"' jsonl, else txt).

Public interface: open_source(path, input_format=None) -> Source (a context manager whose
.items yields Item), FORMATS, looks_like_batch_line(obj).
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from .errors import InputError

FORMATS = ("txt", "csv", "tsv", "jsonl", "json", "batch")
_EXTENSIONS = {".txt": "txt", ".text": "txt", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv",
               ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}
_BATCH_KEYS = ("custom_id", "method", "url", "body")
_CHUNK = 1 << 16
STDIN_NAME = "<stdin>"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


@dataclass
class Item:
    """One input item. `line` is the physical line where it starts. Exactly one of: `prompt`
    (a txt line or a JSON string), `fields` (a csv/tsv row or a JSON object record), `raw` (a
    ready batch line from jsonl, unparsed, at byte `offset`), `obj` (a ready batch line
    from a json array, parsed)."""

    line: int
    prompt: str | None = None
    fields: dict | None = None
    raw: bytes | None = None
    offset: int = 0
    obj: Any = None


@dataclass
class Source:
    """An opened input: its display name, real path (None for stdin), format, kind
    ("records": build a request from each item, or "batch": ready lines to check and pass
    through), the csv/tsv header, and the items. Close it (or use `with`)."""

    name: str
    path: str | None
    format: str
    kind: str
    items: Iterator[Item]
    columns: list[str] | None = None
    guessed: bool = False
    _closers: list = field(default_factory=list)

    def close(self) -> None:
        for close in self._closers:
            close()
        self._closers.clear()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def looks_like_batch_line(obj: Any) -> bool:
    """A JSON object that is meant as a ready batch line rather than a data record: it has
    three of custom_id/method/url/body, or an object `body` with a url or method."""
    if not isinstance(obj, dict):
        return False
    if sum(k in obj for k in _BATCH_KEYS) >= 3:
        return True
    return isinstance(obj.get("body"), dict) and ("url" in obj or "method" in obj)


def format_of(path: str) -> str:
    """The input format named by a file's extension; InputError when it names none."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in _EXTENSIONS:
        raise InputError(
            f"cannot tell the format of {path!r} from its extension {ext or '(none)'!r}",
            hint=f"give --input-format {'|'.join(FORMATS)} (known extensions: "
                 f"{', '.join(sorted(_EXTENSIONS))})")
    return _EXTENSIONS[ext]


def open_source(path: str, input_format: str | None = None,
                stdin: IO[bytes] | None = None) -> Source:
    """Open an input file ('-' for stdin) and return its Source (not yet read)."""
    if input_format is not None and input_format not in FORMATS:
        raise InputError(f"--input-format {input_format!r} is not a known format",
                         hint=f"use one of: {', '.join(FORMATS)}")
    head: list[bytes] = []
    guessed = False
    if path == "-":
        name, real = STDIN_NAME, None
        stream = stdin if stdin is not None else sys.stdin.buffer
        closers: list = []
        if input_format is None:
            head, input_format = _sniff(stream)
            guessed = True
    else:
        name, real = path, path
        fmt = input_format or format_of(path)
        try:
            stream = open(path, "rb")
        except IsADirectoryError:
            raise InputError(f"{path} is a directory, not an input file",
                             hint="give the path of a .txt, .csv, .tsv, .jsonl or .json file"
                             ) from None
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}",
                             hint="check the path") from None
        closers = [stream.close]
        input_format = fmt
    source = Source(name=name, path=real, format=input_format, kind="records",
                    items=iter(()), guessed=guessed, _closers=closers)
    try:
        _attach_reader(source, head, stream)
    except BaseException:
        source.close()
        raise
    return source


def _sniff(stream: IO[bytes]) -> tuple[list[bytes], str]:
    head: list[bytes] = []
    for raw in stream:
        head.append(raw)
        text = raw.lstrip(b"\xef\xbb\xbf").strip()
        if text:
            first = text[:1]
            return head, ("json" if first == b"[" else
                          "jsonl" if first in (b"{", b'"') else "txt")
    return head, "txt"


def _attach_reader(source: Source, head: list[bytes], stream: IO[bytes]) -> None:
    fmt = source.format
    lines = _numbered_lines(itertools.chain(head, stream))
    if fmt == "txt":
        source.items = _txt_items(source.name, lines)
    elif fmt in ("csv", "tsv"):
        columns, rows = _csv_items(source.name, lines, "," if fmt == "csv" else "\t")
        source.columns, source.items = columns, rows
    elif fmt in ("jsonl", "batch"):
        source.kind, source.items = _jsonl_items(source, lines, force_batch=fmt == "batch")
    else:  # json
        chunks = itertools.chain(head, iter(lambda: stream.read(_CHUNK), b""))
        source.kind, source.items = _json_items(source, chunks)


# --- lines and decoding ---------------------------------------------------------------------
def _numbered_lines(raw_lines: Iterable[bytes]) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, raw bytes) of every physical line."""
    offset = 0
    for lineno, raw in enumerate(raw_lines, 1):
        yield lineno, offset, raw
        offset += len(raw)


def _decode(raw: bytes, name: str, lineno: int, offset: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{name} line {lineno}: invalid UTF-8 at byte offset {offset + exc.start} of the "
            f"file (byte {raw[exc.start]:#04x})",
            hint="save the file as UTF-8 (in a spreadsheet: 'CSV UTF-8')") from None
    if lineno == 1 and text.startswith("\ufeff"):
        text = text[1:]
    return text


def _blank(raw: bytes) -> bool:
    return raw.isspace() or not raw or raw == b"\xef\xbb\xbf" or \
        raw.lstrip(b"\xef\xbb\xbf").isspace()


# --- txt -------------------------------------------------------------------------------------
def _txt_items(name: str, lines) -> Iterator[Item]:
    for lineno, offset, raw in lines:
        if _blank(raw):
            continue
        text = _decode(raw, name, lineno, offset)
        if text.endswith("\n"):
            text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
        yield Item(line=lineno, prompt=text)


# --- csv / tsv -------------------------------------------------------------------------------
def _csv_items(name: str, lines, delimiter: str) -> tuple[list[str] | None, Iterator[Item]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    counter = {"line": 0}

    def text_lines() -> Iterator[str]:
        for lineno, offset, raw in lines:
            counter["line"] = lineno
            yield _decode(raw, name, lineno, offset)

    reader = csv.reader(text_lines(), delimiter=delimiter, strict=True)
    kind = "TSV" if delimiter == "\t" else "CSV"
    header: list[str] | None = None
    try:
        for row in reader:
            if row:
                header = row
                break
    except csv.Error as exc:
        raise InputError(f"{name} line {counter['line']}: not valid {kind}: {exc}",
                         hint="check the quoting of that line") from None
    if header is None:
        return None, iter(())
    seen: dict[str, int] = {}
    for i, col in enumerate(header, 1):
        if col in seen:
            raise InputError(
                f"{name} line {counter['line']}: column name {col!r} appears twice in the header "
                f"(columns {seen[col]} and {i}); the first row must name each column once",
                hint="rename one of the columns")
        seen[col] = i

    def rows() -> Iterator[Item]:
        prev_end = counter["line"]
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise InputError(
                    f"{name} line {prev_end + 1}: not valid {kind}: {exc}",
                    hint="check the quoting from that line on: a field with a delimiter, "
                         "quote or line break must be quoted, and quotes inside doubled") \
                    from None
            first = prev_end + 1
            prev_end = counter["line"]
            if not row or all(not v.strip() for v in row):
                continue  # blank lines, and rows of empty cells that spreadsheets append
            if len(row) != len(header):
                raise InputError(
                    f"{name} line {first}: row has {len(row)} fields but the header has "
                    f"{len(header)} (columns: {', '.join(map(repr, header))})",
                    hint=f"every row needs one value per column; quote fields that contain "
                         f"the delimiter ({'tab' if delimiter == chr(9) else 'comma'}), "
                         "quotes or line breaks")
            yield Item(line=first, fields=dict(zip(header, row, strict=True)))

    return header, rows()


# --- jsonl -----------------------------------------------------------------------------------
def _parse_line(name: str, lineno: int, text: str, guessed: bool) -> Any:
    try:
        return _DECODER.decode(text)
    except ValueError as exc:
        detail = (f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError)
                  else str(exc))
        hint = "each line must be one complete JSON value (an object or a string)"
        if guessed:
            hint += "; the format was guessed from the first character: give --input-format"
        raise InputError(f"{name} line {lineno}: not valid JSON: {detail}", hint=hint) \
            from None


def _jsonl_items(source: Source, lines, force_batch: bool) -> tuple[str, Iterator[Item]]:
    name = source.name
    first: list[tuple[int, int, bytes]] = []
    kind = "batch" if force_batch else None
    if kind is None:
        for lineno, offset, raw in lines:
            first.append((lineno, offset, raw))
            if not _blank(raw):
                kind = _kind_of_first_line(name, lineno, _decode(raw, name, lineno, offset),
                                           source.guessed)
                break
    kind = kind or "records"
    all_lines = itertools.chain(first, lines)
    if kind == "batch":
        return kind, (Item(line=n, raw=raw, offset=off)
                      for n, off, raw in all_lines if not raw.isspace())
    return kind, _record_items(source, all_lines)


def _kind_of_first_line(name: str, lineno: int, text: str, guessed: bool) -> str:
    """'batch' or 'records'. A first line that does not parse but reads like a batch line
    goes to the batch checker, which reports it with its custom_id like --check does."""
    try:
        obj = _DECODER.decode(text)
    except ValueError:
        if '"custom_id"' in text and ('"body"' in text or '"url"' in text):
            return "batch"
        _parse_line(name, lineno, text, guessed)  # raises the error with its position
        raise
    return "batch" if looks_like_batch_line(obj) else "records"


def _record_items(source: Source, lines) -> Iterator[Item]:
    name = source.name
    for lineno, offset, raw in lines:
        if _blank(raw):
            continue
        value = _parse_line(name, lineno, _decode(raw, name, lineno, offset), source.guessed)
        yield _record_item(name, lineno, value)


def _record_item(name: str, lineno: int, value: Any) -> Item:
    if isinstance(value, dict):
        return Item(line=lineno, fields=value)
    if isinstance(value, str):
        return Item(line=lineno, prompt=value)
    got = {list: "an array", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
    raise InputError(f"{name} line {lineno}: expected a JSON object (a record) or a string "
                     f"(a prompt), got {got}",
                     hint="one record per line, e.g. {\"id\": \"a1\", \"text\": \"...\"}")


# --- json array ------------------------------------------------------------------------------
def _json_items(source: Source, chunks: Iterator[bytes]) -> tuple[str, Iterator[Item]]:
    elements = _array_elements(source.name, chunks)
    try:
        first = next(elements)
    except StopIteration:
        return "records", iter(())
    kind = "batch" if looks_like_batch_line(first[1]) else "records"

    def items() -> Iterator[Item]:
        for lineno, value in itertools.chain([first], elements):
            if kind == "batch":
                yield Item(line=lineno, obj=value)
            else:
                yield _record_item(source.name, lineno, value)

    return kind, items()


class _ArrayReader:
    """Incremental reader of one top-level JSON array: yields (line, element) without holding
    more than about one element plus one chunk in memory."""

    def __init__(self, name: str, chunks: Iterator[bytes]) -> None:
        self.name = name
        self.chunks = chunks
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.buf = ""
        self.pos = 0
        self.line = 1
        self.fed = 0
        self.eof = False

    def more(self, at_least: int = 0) -> bool:
        """Read more text into the buffer; False at end of input."""
        if self.eof:
            return False
        want = max(at_least, _CHUNK)
        got = 0
        while got < want:
            chunk = next(self.chunks, None)
            if chunk is None:
                self._feed(b"", final=True)
                self.eof = True
                return got > 0
            self._feed(chunk)
            got += len(chunk)
        return True

    def _feed(self, chunk: bytes, final: bool = False) -> None:
        pending = len(self.decoder.getstate()[0])
        try:
            text = self.decoder.decode(chunk, final)
        except UnicodeDecodeError as exc:
            offset = self.fed - pending + exc.start
            raise InputError(f"{self.name}: invalid UTF-8 at byte offset {offset} "
                             f"(near line {self.line + self.buf.count(chr(10), self.pos)})",
                             hint="save the file as UTF-8") from None
        self.fed += len(chunk)
        if self.pos > _CHUNK and self.pos > len(self.buf) // 2:
            self.buf = self.buf[self.pos:]
            self.pos = 0
        if not self.fed - len(chunk) and text.startswith("\ufeff"):
            text = text[1:]
        self.buf += text

    def skip_ws(self) -> str:
        """The next non-whitespace character ('' at end), consumed up to it."""
        while True:
            n = len(self.buf)
            while self.pos < n and self.buf[self.pos] in " \t\r\n":
                if self.buf[self.pos] == "\n":
                    self.line += 1
                self.pos += 1
            if self.pos < n:
                return self.buf[self.pos]
            if not self.more():
                return ""

    def fail(self, what: str) -> InputError:
        return InputError(f"{self.name} line {self.line}: {what}",
                          hint="a .json input must be one JSON array of records or prompts, "
                               "e.g. [{\"text\": \"...\"}, ...]; for one JSON value per line "
                               "use a .jsonl file")

    def value(self) -> Any:
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                if self.more(len(self.buf)):
                    continue
                raise self.fail(f"not valid JSON: {exc.msg}") from None
            except ValueError as exc:
                raise self.fail(str(exc)) from None
            if end >= len(self.buf) and self.more(len(self.buf)):
                continue  # a number may go on in the next chunk
            self.line += self.buf.count("\n", self.pos, end)
            self.pos = end
            return value


def _array_elements(name: str, chunks: Iterator[bytes]) -> Iterator[tuple[int, Any]]:
    r = _ArrayReader(name, chunks)
    c = r.skip_ws()
    if c == "":
        return
    if c != "[":
        raise r.fail(f"expected a JSON array starting with '[', found {c!r}")
    r.pos += 1
    if r.skip_ws() == "]":
        r.pos += 1
    else:
        while True:
            r.skip_ws()
            yield r.line, r.value()
            c = r.skip_ws()
            r.pos += 1
            if c == "]":
                break
            if c != ",":
                raise r.fail(f"expected ',' or ']' after an array element, found "
                             f"{c or 'the end of the file'!r}")
    if r.skip_ws() != "":
        raise r.fail("extra data after the closing ']' of the array")


