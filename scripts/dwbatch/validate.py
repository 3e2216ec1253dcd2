"""Check batch input lines before anything leaves the machine: the one validator.

`create_batch_file.py --check`, the builder and `submit.py` all use it, so a file one of them
accepts, the others accept too.

Why two layers: the JSON Schema in references/batch_request.schema.json is the authority on
the shape of a line, but running jsonschema on every line is ~20x slower than parsing it. So
`fast_schema_check` (plain Python, written to agree exactly with the schema; a test holds it to
that on a large generated corpus) decides the common case, and jsonschema runs only on a line the
fast check rejects, to confirm and to explain what is wrong. Rules a schema cannot state are
checked in code here: custom_id <= 64 UTF-8 bytes and unique across all files, one url per file,
body <= 10 MiB, valid UTF-8, finite numbers, file size and request count.

Public interface:
  check_files(paths, *, max_problems=50, max_file_bytes=None, max_requests=None,
              split_oversize=False) -> Report
  Report(.ok, .problems, .problem_count, .files, .total_requests, .render(), .to_dict())
  Problem(file, line, custom_id, message); FileStats(path, requests, bytes, url/endpoint,
  models, sha256, input_tokens_estimate, needs_split)
  Checker: the same checks one line at a time (used by the builder for its own lines); use it
  in a `with` block and call .finish() after the last line (see idtable.IdSet).
  fast_schema_check(obj) / schema_messages(obj): the two layers, exposed for tests.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from . import limits, tokens
from .idtable import IdSet

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "references" / "batch_request.schema.json"

_CHAT, _COMPLETIONS, _EMBEDDINGS, _RESPONSES, _MESSAGES = limits.ALLOWED_URLS
_URLS = frozenset(limits.ALLOWED_URLS)
_POST = frozenset(
    a + b + c + d for a in "Pp" for b in "Oo" for c in "Ss" for d in "Tt")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_ID_IN_TEXT = re.compile(r'"custom_id"\s*:\s*"((?:[^"\\]|\\.){0,200})"')


# --- results -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One thing wrong: where (file, 1-based physical line or None for the whole file), which
    custom_id when known, and a message that says what was expected."""

    file: str
    line: int | None
    custom_id: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file} line {self.line}"
        if self.custom_id is not None:
            where += f" (custom_id {self.custom_id!r})"
        return f"{where}: {self.message}"

    def to_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "custom_id": self.custom_id,
                "message": self.message}


@dataclass
class FileStats:
    """What a checked file holds. `url` is also the batch `endpoint` (e.g.
    /v1/chat/completions); `models` maps model -> request count; `bytes` is the file size;
    `needs_split` is set when the file passes the per-file limits (see check_files)."""

    path: str
    requests: int = 0
    bytes: int = 0
    url: str | None = None
    models: dict[str, int] = field(default_factory=dict)
    sha256: str = ""
    input_tokens_estimate: int = 0
    needs_split: bool = False
    url_line: int | None = None

    @property
    def endpoint(self) -> str | None:
        return self.url

    def to_dict(self) -> dict:
        return {"path": self.path, "requests": self.requests, "bytes": self.bytes,
                "endpoint": self.url, "models": dict(sorted(self.models.items())),
                "sha256": self.sha256, "input_tokens_estimate": self.input_tokens_estimate,
                "needs_split": self.needs_split}


@dataclass
class Report:
    """Everything check_files found. `problems` holds the first `max_problems`;
    `problem_count` counts them all. `ok` is true when there is no problem at all."""

    files: list[FileStats] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    max_problems: int = limits.DEFAULT_MAX_PROBLEMS

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    @property
    def total_requests(self) -> int:
        return sum(f.requests for f in self.files)

    def add(self, problem: Problem) -> None:
        self.problem_count += 1
        if len(self.problems) < self.max_problems:
            self.problems.append(problem)

    def render(self) -> str:
        """The problems as text for the user: one per line, then how many more there are."""
        if self.ok:
            return "no problems found"
        files = len({p.file for p in self.problems})
        head = (f"{self.problem_count} problem{'s' if self.problem_count != 1 else ''} "
                f"found" + (f" in {files} file{'s' if files != 1 else ''}" if files else ""))
        lines = [head + ":"] + [f"  {p}" for p in self.problems]
        rest = self.problem_count - len(self.problems)
        if rest > 0:
            lines.append(f"  ... and {rest} more problem{'s' if rest != 1 else ''} "
                         f"(first {len(self.problems)} shown; fix these and check again)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"files": [f.to_dict() for f in self.files],
                "problems": [p.to_dict() for p in self.problems],
                "problem_count": self.problem_count}


class LineInfo(NamedTuple):
    """What a valid line says: its id, url, model and a rough input-token estimate."""

    custom_id: str
    url: str
    model: str
    tokens: int


# --- layer 1: the fast check (must agree with the schema exactly) -----------------------
def _bad_max_tokens(body: dict) -> bool:
    if "max_tokens" not in body:
        return False
    mt = body["max_tokens"]
    if mt is None:
        return False
    t = type(mt)
    if t is int:
        return mt < 1
    if t is float:  # jsonschema counts 3.0 as an integer
        return not mt.is_integer() or mt < 1
    return True


def _messages_tokens(msgs: Any) -> int | None:
    """Token estimate of a valid messages list, or None when the list breaks the schema."""
    if type(msgs) is not list or not msgs:
        return None
    total = 0
    for m in msgs:
        if type(m) is not dict or type(m.get("role")) is not str:
            return None
        total += tokens.content_tokens(m.get("content")) + tokens.PER_MESSAGE
    return total


def fast_schema_check(obj: Any) -> LineInfo | None:
    """LineInfo when `obj` satisfies references/batch_request.schema.json, else None.

    Plain Python for speed; it must give the same yes/no as jsonschema on every input
    (tests/test_validate.py checks that on a large generated corpus)."""
    if type(obj) is not dict:
        return None
    cid = obj.get("custom_id")
    if type(cid) is not str or not cid:
        return None
    if not cid.isprintable() and _CONTROL.search(cid):
        return None
    method = obj.get("method")
    if type(method) is not str or method not in _POST:
        return None
    url = obj.get("url")
    if type(url) is not str or url not in _URLS:
        return None
    body = obj.get("body")
    if type(body) is not dict:
        return None
    model = body.get("model")
    if type(model) is not str or not model:
        return None
    stream = body.get("stream")
    if stream is not None and stream is not False:
        return None
    if _bad_max_tokens(body):
        return None
    if url == _CHAT:
        n = _messages_tokens(body.get("messages"))
        if n is None:
            return None
    elif url == _MESSAGES:
        n = _messages_tokens(body.get("messages"))
        if n is None or body.get("max_tokens") is None:
            return None
        n += tokens.content_tokens(body.get("system"))
    else:
        key = "prompt" if url == _COMPLETIONS else "input"
        value = body.get(key)
        if type(value) is not str and type(value) is not list:
            return None
        n = tokens.content_tokens(value)
        if url == _RESPONSES:
            n += tokens.content_tokens(body.get("instructions"))
    return LineInfo(cid, url, model, n + tokens.PER_REQUEST)


# --- layer 2: jsonschema, the authority and the explainer -----------------------------------
@functools.lru_cache(maxsize=1)
def load_schema() -> dict:
    """The JSON Schema of one batch line (references/batch_request.schema.json)."""
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return json.load(f)


@functools.lru_cache(maxsize=1)
def schema_validator():
    """A jsonschema validator for one line (imported lazily: only bad lines need it)."""
    import jsonschema

    schema = load_schema()
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


_JSON_TYPE = {dict: "object", list: "array", str: "string", int: "integer", float: "number",
              bool: "boolean", type(None): "null"}
_A_TYPE = {"object": "a JSON object", "array": "a list (JSON array)", "string": "a string",
           "integer": "a whole number", "number": "a number", "boolean": "true or false",
           "null": "null"}


def _location(path: Iterable) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _resolve(subschema: Any) -> dict:
    if isinstance(subschema, dict) and "$ref" in subschema:
        ref = subschema["$ref"]
        node: Any = load_schema()
        for key in ref.lstrip("#/").split("/"):
            node = node[key]
        return node
    return subschema if isinstance(subschema, dict) else {}


def _describe(err) -> str:
    """One jsonschema error as a sentence naming the field and what was expected."""
    schema = _resolve(err.schema)
    loc = _location(err.absolute_path)
    custom = schema.get("x-errors", {}).get(err.validator)
    expected = schema.get("x-expected")
    if err.validator == "required":
        missing = next((p for p in err.validator_value
                        if isinstance(err.instance, dict) and p not in err.instance
                        and repr(p) in err.message), err.validator_value[0])
        hint = _resolve(schema.get("properties", {}).get(missing, {})).get("x-expected")
        where = f"{loc}.{missing}" if loc else missing
        text = f"missing {where!s}"
        return text + (f" (expected: {hint})" if hint else "")
    if err.validator == "type":
        got = _JSON_TYPE.get(type(err.instance), type(err.instance).__name__)
        want = err.validator_value
        want = want if isinstance(want, list) else [want]
        text = (f"{loc or 'the line'} must be {' or '.join(_A_TYPE.get(w, w) for w in want)}"
                f", got {got}"
                + (f" {_short(err.instance)}" if got not in ("object", "array") else ""))
    elif custom:
        text = custom.replace("{loc}", loc)
        if err.validator == "not" and isinstance(err.instance, str):
            m = _CONTROL.search(err.instance)
            if m:
                text += f" (U+{ord(m.group()):04X} at character {m.start() + 1})"
        elif err.validator == "enum":
            text += f"; got {_short(err.instance)}"
    else:
        text = f"{loc or 'the line'}: {err.message}"
    if expected:
        text += f" (expected: {expected})"
    return text


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def schema_messages(obj: Any) -> list[str]:
    """What jsonschema says is wrong with one parsed line, in words; [] when it is valid."""
    errors = sorted(schema_validator().iter_errors(obj),
                    key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    return [_describe(e) for e in errors]


def _loose_info(obj: Any) -> tuple[str | None, str | None]:
    """custom_id and url of a line that broke the schema, when they are usable."""
    if not isinstance(obj, dict):
        return None, None
    cid = obj.get("custom_id")
    url = obj.get("url")
    return ((cid if isinstance(cid, str) else None),
            (url if isinstance(url, str) and url in _URLS else None))


# --- parsing -------------------------------------------------------------------------------
def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _has_lone_surrogate(obj: Any) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def id_from_text(text: str) -> str | None:
    """The custom_id of a line that does not parse, found by pattern (for error messages)."""
    m = _ID_IN_TEXT.search(text)
    if not m:
        return None
    try:
        return json.loads('"' + m.group(1) + '"')
    except ValueError:
        return m.group(1)


# --- the line checker ----------------------------------------------------------------------
_LINE_BITS = (1 << 40) - 1  # an id's place: file index << 40 | line


class Checker:
    """Checks lines one at a time and collects problems into a Report.

    It remembers every custom_id it has seen (in any file) so duplicates are found across
    files, and each FileStats' url so mixed urls are found within a file. Used by check_files,
    and by the builder for the lines it makes (with file/line naming the input). Call
    finish() after the last line: repeats in a job too big to keep its ids in memory are
    only found then."""

    def __init__(self, report: Report | None = None, *, track_ids: bool = True) -> None:
        self.report = report if report is not None else Report()
        self.track_ids = track_ids  # False only for ids unique by construction
        self._seen = IdSet()  # custom_id -> file index << 40 | line of its first use
        self._sources: list[str] = []
        self._finished = False

    def begin_file(self, path: str) -> FileStats:
        stats = FileStats(path=path)
        self.report.files.append(stats)
        return stats

    def check_raw(self, stats: FileStats, lineno: int, raw: bytes, offset: int = 0,
                  source: str | None = None) -> LineInfo | None:
        """Decode and check one raw line (without or with its newline). `offset` is the byte
        offset of the line in its file (for invalid UTF-8); `source` names the file in
        problems (default stats.path). Returns LineInfo when the line is valid."""
        source = source or stats.path
        stats.requests += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.report.add(Problem(
                source, lineno, None,
                f"invalid UTF-8 at byte offset {offset + exc.start} of the file (byte "
                f"{raw[exc.start]:#04x} at byte {exc.start + 1} of the line); batch files must "
                "be UTF-8: re-save it as UTF-8"))
            return None
        try:
            obj = _DECODER.decode(text)
        except ValueError as exc:
            self.report.add(Problem(source, lineno, id_from_text(text),
                                    _json_error_message(exc, text, lineno)))
            return None
        if "\\u" in text and _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(obj):
            self.report.add(Problem(
                source, lineno, id_from_text(text),
                "contains an unpaired surrogate escape (like \\ud800) that is not valid "
                "Unicode: remove it or write the character as UTF-8"))
            return None
        return self.check_obj(stats, lineno, obj, len(raw), source=source, counted=True)

    def check_obj(self, stats: FileStats, lineno: int, obj: Any, size: int,
                  source: str | None = None, counted: bool = False) -> LineInfo | None:
        """Check one parsed line of `size` bytes. Returns LineInfo when it is valid; counts it
        in `stats` either way (unless `counted`)."""
        source = source or stats.path
        if not counted:
            stats.requests += 1
        info = fast_schema_check(obj)
        ok = info is not None
        if info is None:
            cid, url = _loose_info(obj)
            messages = schema_messages(obj)
            for message in messages:
                self.report.add(Problem(source, lineno, cid, message))
            ok = not messages
            if ok:  # jsonschema accepts what the fast path did not: trust the schema
                body = obj["body"]
                info = LineInfo(cid, url, body["model"],
                                tokens.estimate_body_tokens(url, body))
        else:
            cid, url = info.custom_id, info.url
        if cid and not self._id_ok(source, lineno, cid):
            ok = False
        if url is not None and not self._url_ok(stats, source, lineno, cid, url):
            ok = False
        if size > limits.MAX_BODY_BYTES and isinstance(obj, dict) and \
                not self._body_size_ok(obj.get("body"), source, lineno, cid):
            ok = False
        if not ok:
            return None
        stats.models[info.model] = stats.models.get(info.model, 0) + 1
        stats.input_tokens_estimate += info.tokens
        return info

    def _id_ok(self, source: str, lineno: int, cid: str) -> bool:
        ok = True
        if len(cid) > limits.MAX_CUSTOM_ID_BYTES // 4:
            n = len(cid.encode("utf-8", "surrogatepass"))
            if n > limits.MAX_CUSTOM_ID_BYTES:
                self.report.add(Problem(
                    source, lineno, cid,
                    f"custom_id is {n} UTF-8 bytes ({len(cid)} characters); the limit is "
                    f"{limits.MAX_CUSTOM_ID_BYTES} bytes (the server counts bytes, not "
                    "characters): use a shorter id"))
                ok = False
        if not self.track_ids:
            return ok
        if not self._sources or self._sources[-1] != source:
            self._sources.append(source)
        first = self._seen.add(cid.encode("utf-8", "surrogatepass"),
                               (len(self._sources) - 1) << 40 | lineno)
        if first is not None:
            self.report.add(self._duplicate(source, lineno, cid, first))
            ok = False
        return ok

    def _duplicate(self, source: str, lineno: int, cid: str, first: int) -> Problem:
        first_source, first_line = self._sources[first >> 40], first & _LINE_BITS
        where = f"line {first_line}" + ("" if first_source == source else f" of {first_source}")
        return Problem(source, lineno, cid,
                       f"duplicate custom_id: also used on {where}; ids must be unique across "
                       "all files of a job, because results are joined back by id")

    def finish(self) -> Report:
        """Call after the last line: a job with more ids than fit in memory has its repeated
        ids found here, in one pass over temporary files (see idtable.IdSet). They join the
        other problems in file and line order, so the report still lists the first ones."""
        if self._finished:
            return self.report
        self._finished = True
        report = self.report
        repeats, count = self._seen.finish(report.max_problems)
        if count:
            found = [self._duplicate(self._sources[where >> 40], where & _LINE_BITS,
                                     key.decode("utf-8", "surrogatepass"), first)
                     for first, where, key in repeats]
            file_order: dict[str, int] = {}
            for index, stats in enumerate(report.files):
                file_order.setdefault(stats.path, index)

            def place(problem: Problem) -> tuple[int, float]:
                line = problem.line if problem.line is not None else float("inf")
                return file_order.get(problem.file, len(file_order)), line

            report.problems = sorted(report.problems + found, key=place)[:report.max_problems]
            report.problem_count += count
        return report

    def close(self) -> None:
        """Remove the id check's temporary files, if any (finish() does too)."""
        self._seen.close()

    def __enter__(self) -> Checker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _url_ok(self, stats: FileStats, source: str, lineno: int, cid: str | None,
                url: str) -> bool:
        if stats.url is None:
            stats.url, stats.url_line = url, lineno
            return True
        if url == stats.url:
            return True
        self.report.add(Problem(
            source, lineno, cid,
            f"url {url} differs from {stats.url} used first on line {stats.url_line}; a batch "
            "file must use one url: put each endpoint's requests in a file of its own"))
        return False

    def _body_size_ok(self, body: Any, source: str, lineno: int, cid: str | None) -> bool:
        if body is None:
            return True
        n = len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        if n <= limits.MAX_BODY_BYTES:
            return True
        self.report.add(Problem(
            source, lineno, cid,
            f"request body is {n:,} bytes; the server accepts at most "
            f"{limits.MAX_BODY_BYTES:,} bytes (10 MiB) per request: shorten it"))
        return False


def _json_error_message(exc: ValueError, text: str, lineno: int) -> str:
    if lineno == 1 and text.startswith("\ufeff"):
        return ("the file starts with a UTF-8 byte-order mark (BOM), which is not valid "
                "JSON here: re-save the file as UTF-8 without BOM")
    if isinstance(exc, json.JSONDecodeError):
        detail = f"{exc.msg} at column {exc.colno}"
    else:
        detail = str(exc)
    return (f"not valid JSON: {detail}; each line must be one complete JSON object "
            '{"custom_id", "method", "url", "body"} with no line break inside')


# --- whole files ---------------------------------------------------------------------------
def check_files(paths: Iterable[str | os.PathLike], *,
                max_problems: int = limits.DEFAULT_MAX_PROBLEMS,
                max_file_bytes: int | None = None, max_requests: int | None = None,
                split_oversize: bool = False) -> Report:
    """Validate batch files line by line (streaming: memory stays flat) and report every
    problem (the first `max_problems` in detail, the rest counted).

    custom_ids must be unique across all the files together; each file must use one url.
    Blank lines are skipped (as the server does); line numbers are physical (editor) lines.
    Limits: a single line longer than `max_file_bytes` is always a problem (it can never be
    uploaded). A whole file over `max_file_bytes` / `max_requests` is a problem too, unless
    `split_oversize` is true (submit.py and --check: they split such a file into shards), in
    which case the file's FileStats.needs_split is set instead.
    """
    with Checker(Report(max_problems=max_problems)) as checker:
        for path in paths:
            _check_one_file(checker, os.fspath(path), max_file_bytes, max_requests,
                            split_oversize)
        return checker.finish()


def _check_one_file(checker: Checker, path: str, max_file_bytes: int | None,
                    max_requests: int | None, split_oversize: bool) -> None:
    report = checker.report
    stats = checker.begin_file(path)
    digest = hashlib.sha256()
    offset = 0
    lineno = 0
    try:
        f = open(path, "rb")
    except OSError as exc:
        report.add(Problem(path, None, None,
                           f"cannot read the file: {exc.strerror or exc}; check the path"))
        return
    with f:
        for raw in f:
            lineno += 1
            digest.update(raw)
            size = len(raw)
            if raw.isspace():
                offset += size
                continue
            if max_file_bytes is not None and size > max_file_bytes:
                report.add(Problem(
                    path, lineno, id_from_text(raw[:4096].decode("utf-8", "replace")),
                    f"this request line is {size:,} bytes, larger than the per-file limit of "
                    f"{max_file_bytes:,} bytes (--max-file-bytes); one line cannot be split "
                    "across files: shorten the request or raise --max-file-bytes"))
            checker.check_raw(stats, lineno, raw, offset)
            offset += size
    stats.bytes = offset
    stats.sha256 = digest.hexdigest()
    if stats.requests == 0:
        report.add(Problem(path, None, None,
                           "contains no requests (the file is empty or has only blank lines)"
                           "; expected one JSON request per line"))
        return
    over = []
    if max_file_bytes is not None and stats.bytes > max_file_bytes:
        over.append(f"{stats.bytes:,} bytes (limit {max_file_bytes:,}, --max-file-bytes)")
    if max_requests is not None and stats.requests > max_requests:
        over.append(f"{stats.requests:,} requests (limit {max_requests:,}, --max-requests)")
    if over:
        if split_oversize:
            stats.needs_split = True
        else:
            report.add(Problem(
                path, None, None,
                "file is over the per-file limits: " + " and ".join(over) + "; split it "
                "(create_batch_file.py FILE -o OUT.jsonl writes OUT-001.jsonl, OUT-002.jsonl"
                "...; submit.py splits by itself)"))
