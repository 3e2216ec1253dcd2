"""Join downloaded results back to their requests: one record per request, in input order.

Results arrive in completion order, failures live in a separate error file, a retried request
can appear twice, and an original job plus its retry jobs each hold part of the answer. This
module turns all of that into exactly one record per custom_id, in the order of the inputs.

Memory stays flat for millions of requests: the inputs and the raw result files are indexed
by byte offset in temporary sqlite3 files (join_index.py), and the lines are re-read from disk
(pread) when their record is written. Nothing holds every result in a dict.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

from . import forked
from .join_index import Index
from .jsontext import LINE_ENDS, loads, record_text, strict_decode, strict_loads, strict_scan
from .request_lines import ENDPOINTS, STRUCTURED, structured_schema
from .retry_policy import NOT_RETRIED, is_retriable
from .structured import check_structured, strip_fence

STATUSES = ("ok", "error", "truncated", "invalid_json", "schema_invalid", "pending", "missing")

# Which candidate wins when one custom_id has several (a retried request, or an original job
# plus retry jobs): lower is better. A still-pending retry beats an old failure so that the
# failure is not retried twice; ties go to the later job, then to the later line.
STATUS_RANK = {"ok": 0, "pending": 1, "truncated": 2, "schema_invalid": 3, "invalid_json": 4,
               "error": 5, "missing": 6}

TRUNCATION_REASONS = {"length", "max_tokens", "max_output_tokens"}
# Batch statuses after which a request without a result will never get one. `cancelling`
# is not one of them: requests in flight can still finish (callers pass `cancelled` for a
# batch stuck in `cancelling` since validation, where nothing ever ran).
ENDED_UNSUCCESSFULLY = {"failed", "cancelled", "expired"}
# Error-file codes of requests that never ran because their batch ended (stock
# OpenAI-compatible servers write these): such a request is missing, not failed.
NEVER_RAN_CODES = {"batch_expired", "batch_cancelled"}
TERMINAL = {"completed"} | ENDED_UNSUCCESSFULLY



@dataclass
class Source:
    """One batch: its request lines and the raw output/error files downloaded so far.

    job: position of the job on the command line (a later job supersedes an earlier one).
    batch_status: the batch's last known status (None: not submitted yet).
    """

    input_path: str
    output_path: str | None
    error_path: str | None
    batch_id: str | None
    batch_status: str | None
    job: int = 0
    label: str = ""
    expected_sha256: str | None = None

    @property
    def finished(self) -> bool:
        return self.batch_status in TERMINAL


@dataclass
class Summary:
    """What reconciliation produced, for the command's summary and exit code."""

    counts: dict = field(default_factory=lambda: {s: 0 for s in STATUSES})
    usage: dict = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0,
                                                 "total_tokens": 0})
    # the usage of `ok` records only (what a pilot's projection scales up)
    ok_usage: dict = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0,
                                                    "total_tokens": 0})
    # missing records whose batch failed / was cancelled / expired (exit 5)
    missing_from_ended: int = 0
    # missing records of batches that completed (a result should exist): per batch id
    missing_from_completed: dict = field(default_factory=dict)
    unmatched_results: int = 0
    # result lines that are not JSON objects with a custom_id: no request can be named
    unreadable_results: int = 0
    duplicate_inputs: int = 0
    superseded: int = 0

    @property
    def records(self) -> int:
        """One record per request: the counts add up to it."""
        return sum(self.counts.values())


# --------------------------------------------------------------------------------------------
# Pure pieces: content, errors, structured output, classification of one result line.
# --------------------------------------------------------------------------------------------

_CHOICES_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions"})


def extract_content(endpoint: str, body: dict) -> dict:
    """content / tool_calls / finish_reason / embedding from a successful response body."""
    if not isinstance(body, dict):
        return {"content": None, "finish_reason": None}
    if endpoint in _CHOICES_ENDPOINTS:  # the usual case, decided with the fewest lookups
        kind = body.get("object")
        if kind != "list" and kind != "response" and body.get("type") != "message":
            return _choices_content(body)
    out: dict = {"content": None, "finish_reason": None}
    if endpoint.endswith("/embeddings") or (
            body.get("object") == "list" and isinstance(body.get("data"), list)
            and "choices" not in body):
        data = [d.get("embedding") for d in body.get("data") or [] if isinstance(d, dict)]
        out["embedding"] = data[0] if len(data) == 1 else data
        return out
    if endpoint.endswith("/responses") or body.get("object") == "response":
        texts, calls = [], []
        for item in body.get("output") or []:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "message":
                for part in item.get("content") or []:
                    if isinstance(part, dict) and part.get("type") in ("output_text", "text"):
                        texts.append(part.get("text") or "")
            elif item.get("type") == "function_call":
                calls.append(item)
        if not texts and isinstance(body.get("output_text"), str):
            texts.append(body["output_text"])
        out["content"] = "".join(texts) if texts else None
        if calls:
            out["tool_calls"] = calls
        if body.get("status") == "incomplete":
            reason = (body.get("incomplete_details") or {}).get("reason")
            out["finish_reason"] = "length" if reason in (None, "max_output_tokens") else reason
        else:
            out["finish_reason"] = body.get("status")
        return out
    if endpoint.endswith("/messages") or body.get("type") == "message":
        texts, calls = [], []
        for block in body.get("content") or []:
            if isinstance(block, dict) and block.get("type") == "text":
                texts.append(block.get("text") or "")
            elif isinstance(block, dict) and block.get("type") == "tool_use":
                calls.append(block)
        out["content"] = "".join(texts) if texts else None
        if calls:
            out["tool_calls"] = calls
        out["finish_reason"] = body.get("stop_reason")
        return out
    return _choices_content(body)


def _choices_content(body: dict) -> dict:
    """content / tool_calls / finish_reason of a chat or completions body."""
    out: dict = {"content": None, "finish_reason": None}
    choices = body.get("choices") or []
    first = choices[0] if choices and isinstance(choices[0], dict) else {}
    out["finish_reason"] = first.get("finish_reason")
    if "message" in first:  # chat
        message = first.get("message") or {}
        out["content"] = message.get("content")
        if message.get("tool_calls"):
            out["tool_calls"] = message["tool_calls"]
    else:  # completions
        out["content"] = first.get("text")
    return out


BAD_LINE_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError, RecursionError)


def bad_line_record(kind: str, reason: str) -> dict:
    """The record of a request whose result line cannot be read: an error worth sending
    again (the line is the server's fault, not the request's)."""
    return {"status": "error", "content": None, "finish_reason": None, "usage": None,
            "error": {"code": None, "type": "unreadable_result", "status_code": None,
                      "message": f"the {kind} file's line for this request cannot be read "
                                 f"({reason}); send the request again"}}


def _kind_of(value) -> str:
    return {list: "a list", str: "text", type(None): "missing", bool: "true/false",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _json_or_text(text):
    if isinstance(text, str):
        stripped = text.strip()
        if stripped[:1] in ("{", "["):
            try:
                return strict_loads(stripped)
            except (ValueError, RecursionError):
                return text
    return text


def _message_from_body(body) -> str | None:
    """The human message inside an upstream error body (OpenAI- or plain-style)."""
    body = _json_or_text(body)
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str) and body.get("message"):
            return f"{err}: {body['message']}"
        if body.get("message"):
            return str(body["message"])
        if isinstance(err, str):
            return err
        return json.dumps(body, ensure_ascii=False)
    return None if body is None else str(body)


def error_details(error) -> dict:
    """Upstream status code, type and message of an error-file `error` object.

    The service writes `message` as JSON text ({"type": ..., "details": {"status", "body"}});
    other servers write plain text. Parse it when it is JSON, keep it as text when not.
    """
    if not isinstance(error, dict):
        return {"code": None, "type": None, "status_code": None,
                "message": None if error is None else str(error)}
    out = {"code": error.get("code"), "type": None, "status_code": None, "message": None}
    raw = error.get("message")
    parsed = _json_or_text(raw)
    if isinstance(parsed, dict):
        out["type"] = parsed.get("type")
        details = parsed.get("details")
        if isinstance(details, dict):
            status = details.get("status", details.get("status_code"))
            out["status_code"] = status if isinstance(status, int) else None
            out["message"] = _message_from_body(details.get("body")) or \
                _message_from_body(details.get("message"))
        elif isinstance(details, str):
            out["message"] = details
        if out["message"] is None:
            out["message"] = _message_from_body(parsed.get("message")) or \
                json.dumps(parsed, ensure_ascii=False)
        out["details"] = parsed
    else:
        out["message"] = None if raw is None else str(raw)
    return out


_JSON_STARTS = frozenset("{[`")


def _maybe_json(content):
    """The parsed content when it is a JSON object/array (optionally in a ``` fence)."""
    if not isinstance(content, str):
        return None
    first = content[:1]
    if first not in _JSON_STARTS and not first.isspace():
        return None  # (most answers: plain text, decided without stripping a copy)
    s = strip_fence(content)
    if s[:1] not in ("{", "["):
        return None
    try:
        return strict_loads(s)
    except (ValueError, RecursionError):
        return None


def classify(kind: str, line: dict, request_body: dict | None, endpoint: str) -> dict:
    """The record fields (without custom_id/batch_id) of one output- or error-file line."""
    rec = classify_line(None, kind, line, request_body, endpoint)
    del rec["custom_id"]
    return rec


def _usual_chat(custom_id: str | None, line: dict, request_body: dict | None) -> dict | None:
    """The record of the usual output line of a chat or completions request (a 2xx answer
    in text, no tool calls, no structured output asked for), or None: the general rules below
    decide then. The same record they would make, with fewer steps: it runs once per request.
    """
    response = line.get("response")
    if type(response) is not dict or line.get("error") is not None:
        return None
    status_code, body = response.get("status_code"), response.get("body")
    if type(status_code) is not int or status_code >= 400 or type(body) is not dict:
        return None
    choices = body.get("choices")
    if type(choices) is not list or not choices or body.get("object") in _NOT_CHOICES \
            or body.get("type") == "message":
        return None
    first = choices[0]
    if type(first) is not dict:
        return None
    if "message" in first:
        message = first["message"]
        if type(message) is not dict or message.get("tool_calls"):
            return None
        content = message.get("content")
    else:
        content = first.get("text")
    finish = first.get("finish_reason")
    if finish is not None and type(finish) is not str:
        return None
    if request_body and structured_schema(request_body)[0]:
        return None
    usage = body.get("usage")
    rec = {"custom_id": custom_id, "status": "truncated" if finish in TRUNCATION_REASONS
           else "ok", "content": content, "finish_reason": finish,
           "usage": usage if isinstance(usage, dict) else None, "error": None}
    if type(content) is str and content and (content[0] in _JSON_STARTS or content[0].isspace()):
        parsed = _maybe_json(content)
        if parsed is not None:
            rec["json"] = parsed
    return rec


_NOT_CHOICES = frozenset({"list", "response"})


def classify_line(custom_id: str | None, kind: str, line: dict, request_body: dict | None,
                  endpoint: str) -> dict:
    """classify(), with custom_id as the record's first field (the join adds batch_id last)."""
    if kind == "output" and endpoint in _CHOICES_ENDPOINTS and type(line) is dict:
        rec = _usual_chat(custom_id, line, request_body)
        if rec is not None:
            return rec
    return _classify_any(custom_id, kind, line, request_body, endpoint)


def _classify_any(custom_id: str | None, kind: str, line: dict, request_body: dict | None,
                  endpoint: str) -> dict:
    """classify_line() by the general rules, for every kind of line."""
    rec: dict = {"custom_id": custom_id, "status": "error", "content": None,
                 "finish_reason": None, "usage": None, "error": None}
    if type(line) is dict:  # (parsed JSON: a dict is exactly a dict)
        response, error = line.get("response"), line.get("error")
    else:
        response = error = None
    if kind == "error" or type(response) is not dict:
        rec["error"] = error_details(error if error is not None else
                                     "the result line has neither a response nor an error")
        if rec["error"]["code"] in NEVER_RAN_CODES:
            rec["status"] = "missing"
        return rec
    status_code = response.get("status_code")
    body = response.get("body")
    if isinstance(body, str):
        body = _json_or_text(body)
    if isinstance(body, dict):
        usage = body.get("usage")
        rec["usage"] = usage if isinstance(usage, dict) else None
    if (isinstance(status_code, int) and status_code >= 400) or error:
        rec["error"] = {"code": None, "type": "HttpStatus", "status_code": status_code,
                        "message": _message_from_body(body) if body is not None else
                        error_details(error)["message"]}
        if error:
            rec["error"]["details"] = error
        return rec
    if not isinstance(body, dict):
        return {"custom_id": custom_id,
                **bad_line_record("output", f"its response body is {_kind_of(body)}, not a "
                                            "JSON object")}
    rec.update(extract_content(endpoint, body))
    if rec["finish_reason"] in TRUNCATION_REASONS:
        rec["status"] = "truncated"
        parsed = _maybe_json(rec["content"])
        if parsed is not None:
            rec["json"] = parsed
        return rec
    asked, schema = structured_schema(request_body) if request_body else (False, None)
    if asked:
        status, value, err = check_structured(rec["content"], schema)
        rec["status"] = status
        if value is not None:
            rec["json"] = value
        rec["error"] = err
        return rec
    rec["status"] = "ok"
    parsed = _maybe_json(rec["content"])
    if parsed is not None:
        rec["json"] = parsed
    return rec


MAX_TOKENS = 10 ** 12  # more tokens than any answer has: a count past it counts as 0


def _num(value) -> int:
    """A token count: whole numbers in a sane range only (anything else counts as 0)."""
    if type(value) is int:
        return value if 0 <= value <= MAX_TOKENS else 0
    if isinstance(value, float) and 0 <= value <= MAX_TOKENS:
        return int(value)
    return 0


def usage_numbers(usage) -> tuple[int, int, int]:
    """(prompt, completion, total) tokens of any endpoint's usage object."""
    if not isinstance(usage, dict):
        return 0, 0, 0
    get = usage.get
    prompt, completion, total = get("prompt_tokens"), get("completion_tokens"), \
        get("total_tokens")
    if type(prompt) is int and type(completion) is int and type(total) is int \
            and 0 < total <= MAX_TOKENS and 0 <= prompt <= total and 0 <= completion <= total:
        return prompt, completion, total  # the usual shape: the same numbers as below
    prompt = _num(get("prompt_tokens", get("input_tokens")))
    completion = _num(get("completion_tokens", get("output_tokens")))
    total = _num(get("total_tokens")) or prompt + completion
    return prompt, completion, total


class Reader:
    """pread of lines by offset, with one open descriptor per file."""

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}

    def fd(self, path: str) -> int:
        """The descriptor of `path` (opened the first time)."""
        fd = self.fds.get(path)
        if fd is None:
            fd = self.fds[path] = os.open(path, os.O_RDONLY)
        return fd

    def read(self, path: str, off: int, length: int) -> bytes:
        try:
            return os.pread(self.fds[path], length, off)
        except KeyError:
            return os.pread(self.fd(path), length, off)

    def close(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


# --------------------------------------------------------------------------------------------
# Reconciliation
# --------------------------------------------------------------------------------------------

class Chosen:
    """The winning record of one custom_id, and where its request line lives (input_offset
    and input_length, or None: `lookup(group)` tells them). A record the join's second
    process decided comes as its results line (`text`), parsed only when it is read."""

    __slots__ = ("_record", "text", "status", "source", "input_offset", "input_length",
                 "reader", "group", "lookup")

    def __init__(self, record: dict | None, source: Source, input_offset: int | None,
                 input_length: int | None, reader: Reader, group: int = 0,
                 lookup: Callable[[int], tuple[int, int]] | None = None) -> None:
        self._record, self.text = record, None
        self.status = record["status"] if record else None
        self.source, self.input_offset, self.input_length = source, input_offset, input_length
        self.reader, self.group, self.lookup = reader, group, lookup

    @property
    def record(self) -> dict:
        if self._record is None:
            self._record = loads(self.text)
        return self._record

    @record.setter
    def record(self, record: dict | None) -> None:
        self._record = record

    def request_line(self) -> bytes:
        """The original request line, byte for byte, without its line ending."""
        if self.input_offset is None:
            offset, length = self.lookup(self.group)
        else:
            offset, length = self.input_offset, self.input_length
        return self.reader.read(self.source.input_path, offset, length).rstrip(b"\r\n")


def _no_result_record(source: Source) -> dict:
    rec = {"status": "pending", "content": None, "finish_reason": None, "usage": None,
           "error": None}
    if source.batch_status is None:
        rec["error"] = {"message": f"{source.label or 'this shard'} has not been submitted "
                                   "yet: run submit.py on the job again"}
    elif source.finished:
        rec["status"] = "missing"
        if source.batch_status in ENDED_UNSUCCESSFULLY:
            why = f"batch {source.batch_id} ended '{source.batch_status}' before this " \
                  "request produced a result"
        else:
            why = f"batch {source.batch_id} is '{source.batch_status}' but neither its " \
                  "output nor its error file has a line for this request"
        rec["error"] = {"message": why}
    return rec


_DEEP = 256  # brackets in a line past which its record is test-encoded before it is kept


def _classify_raw(custom_id: str, kind: str, raw: bytes, request_body, endpoint: str) -> dict:
    """classify_line() of one raw result line; a line that cannot be read, or whose content
    would break the results file (nesting too deep to write back), is one bad record, never
    the end of the whole job."""
    try:
        text = raw.decode("utf-8")
        try:  # (strict_loads, without the call)
            line, end = strict_scan(text, 0)
            if text[end:] not in LINE_ENDS:
                line = strict_decode(text)
        except StopIteration:
            line = strict_decode(text)
        if not isinstance(line, dict):
            raise ValueError(f"it is {_kind_of(line)}, not a JSON object")
        rec = classify_line(custom_id, kind, line, request_body, endpoint)
        if raw.count(b"[") + raw.count(b"{") > _DEEP:
            json.dumps(rec, allow_nan=False)
    except BAD_LINE_ERRORS as exc:
        reason = "it is nested too deeply" if isinstance(exc, RecursionError) \
            else (str(exc) or type(exc).__name__)
        return {"custom_id": custom_id, **bad_line_record(kind, reason[:200])}
    return rec


class Judge:
    """Picks the record of one custom_id from its candidate rows (the index's rows() groups).

    A candidate is one source's result line for the request, or the source's "no result yet"
    when it has none. Lower STATUS_RANK wins; ties go to the later job, then file, then line.
    """

    def __init__(self, sources: list[Source], result_files: list[tuple[str, str]],
                 reader: Reader) -> None:
        self.sources, self.result_files, self.reader = sources, result_files, reader

    def candidate(self, row: tuple) -> tuple[dict, Source, tuple]:
        """(record with custom_id and batch_id, its source, its tie-break order) of one row."""
        _group, cid, src, in_off, in_len, ep, flags, fno, r_off, r_len, _line = row
        source = self.sources[src]
        if fno is None:
            rec = {"custom_id": cid, **_no_result_record(source)}
            order = (source.job, -1)
        else:
            path, kind = self.result_files[fno]
            raw = self.reader.read(path, r_off, r_len)
            body = None
            if flags & STRUCTURED:
                body = loads(self.reader.read(source.input_path, in_off, in_len)).get("body")
            rec = _classify_raw(cid, kind, raw, body, ENDPOINTS[ep])
            order = (source.job, fno, r_off)
        rec["batch_id"] = source.batch_id
        return rec, source, order

    def best(self, group: list[tuple]) -> tuple[dict, Source, int, int, int]:
        """(record, source, input offset, input length, candidates superseded) of a group;
        the record ends with attempts (and retriable, when it is not ok or pending)."""
        if len(group) == 1:  # (most requests: one line, one or no result)
            row = group[0]
            record, source, _order = self.candidate(row)
            record["attempts"] = 1
            if record["status"] not in NOT_RETRIED:
                record["retriable"] = is_retriable(record)
            return record, source, row[3], row[4], 0
        best = best_key = None
        for row in group:
            rec, source, order = self.candidate(row)
            key = (-STATUS_RANK[rec["status"]], order)
            if best_key is None or key > best_key:
                best, best_key = (rec, source, row[3], row[4]), key
        record = best[0]
        record["attempts"] = _attempts(group, self.sources)
        if record["status"] not in NOT_RETRIED:
            record["retriable"] = is_retriable(record)
        return (*best, len(group) - 1)


def reconcile(sources: list[Source], on_record: Callable[[Chosen], None],
              tmp_dir: str | None = None,
              progress: Callable[[str], None] | None = None,
              index: Index | None = None) -> Summary:
    """Call `on_record` once per request (union of all sources), in input order.

    Sources are listed job by job; the first job's input order decides the order, and
    custom_ids that only later jobs have follow in their order. A caller that passes its own
    (new) `index` keeps it afterwards: it decides whether it is kept or closed.
    """
    summary = Summary()
    own_index = index is None
    index = Index(tmp_dir) if own_index else index
    reader = Reader()
    gc_was_on = gc.isenabled()
    gc.disable()  # (a join makes millions of short-lived acyclic objects: nothing to collect)
    try:
        index.build(sources, progress)
        count = Counter(summary)
        if index.one_row_each:
            _join_usual(index, sources, on_record, count, reader)
        else:
            best = Judge(sources, index.result_files, reader).best
            for group in index.rows():
                record, source, in_off, in_len, superseded = best(group)
                if superseded:
                    summary.superseded += superseded
                count(record, source)
                on_record(Chosen(record, source, in_off, in_len, reader, group[0][0]))
        summary.duplicate_inputs = index.duplicate_inputs
        summary.unmatched_results = index.unmatched_results
        summary.unreadable_results = index.unreadable_results
    finally:
        if gc_was_on:
            gc.enable()
        reader.close()
        if own_index:
            index.close()
    return summary


def _join_one_row_each(index: Index, sources: list[Source], on_record, count: Counter,
                       reader: Reader, first: int = 1, last: int | None = None) -> int:
    """The usual join, Judge.best of groups of one row without the groups: every request is
    one input line with at most one result line. Its own loop because it runs once per
    request: what a full join costs is mostly what this loop does. The Chosen it passes is
    one object, filled anew for each request (on_record uses it during the call only); where
    the request line is, is looked up only when it is read. Joins the requests numbered
    first..last; returns how many result lines they matched."""
    kinds = [kind for _path, kind in index.result_files]
    fds = [reader.fd(path) if path and os.path.exists(path) else -1
           for path, _kind in index.result_files]
    endpoints = [ENDPOINTS[code] for code in range(len(ENDPOINTS))]
    pread, classify, place = os.pread, _classify_raw, index.input_place
    chosen = Chosen({}, sources[0], None, None, reader, lookup=place)
    ok = ok_prompt = ok_completion = ok_total = matched = 0
    for seq, cid, src, ep, flags, fno, r_off, r_len in index.one_row_each_rows(first, last):
        source = sources[src]
        if fno is None:
            record = {"custom_id": cid, **_no_result_record(source)}
        else:
            matched += 1
            body = None
            if flags:  # (STRUCTURED: the request's body tells what the answer must be)
                body = loads(reader.read(source.input_path, *place(seq))).get("body")
            record = classify(cid, kinds[fno], pread(fds[fno], r_len, r_off), body,
                              endpoints[ep])
        record["batch_id"] = source.batch_id
        record["attempts"] = 1
        status = record["status"]
        if status == "ok":  # counted here, added to the summary once at the end
            ok += 1
            usage = record["usage"]
            if usage:
                prompt, completion, total = usage_numbers(usage)
                ok_prompt += prompt
                ok_completion += completion
                ok_total += total
        else:
            if status != "pending":
                record["retriable"] = is_retriable(record)
            count(record, source)
        chosen.record, chosen.status, chosen.source, chosen.group = record, status, source, seq
        on_record(chosen)
    count.add_ok(ok, ok_prompt, ok_completion, ok_total)
    return matched


# The usual join in two processes: this one joins the first requests while a forked one joins
# the rest into a spool (their results lines, and per request its number, source, status and
# ok tokens); this one then passes the spooled records on, parsing only those it must (not ok,
# or wanted as a dict: a table, CSV). About this share of the requests is joined here.
PARENT_SHARE = 0.5
FORK_FROM_REQUESTS = 50_000
_SPOOL_FIELDS = 7  # seq, src, status, prompt, completion, total tokens, bytes of the line
_STATUS_CODE = {status: code for code, status in enumerate(STATUSES)}


def _join_usual(index: Index, sources: list[Source], on_record, count: Counter,
                reader: Reader) -> None:
    """Every request in order, through _join_one_row_each: half of them in a second process
    when that is quicker (forked.py); when it fails, all of them here."""
    total = index.requests()
    first = int(total * PARENT_SHARE) + 1
    child = None
    if forked.wanted(total, FORK_FROM_REQUESTS):
        index.share_reads()
        child = forked.start(_join_ahead, index, sources, first)
    spool = index.path + "-ahead"
    try:
        matched = _join_one_row_each(index, sources, on_record, count, reader,
                                     last=first - 1 if child else None)
        if child is not None:
            done, child = child.result(), None
            if done is None:  # (it failed: the same work, here)
                matched += _join_one_row_each(index, sources, on_record, count, reader,
                                              first=first)
            else:
                matched += int(done["matched"])
                _pass_on(spool, sources, on_record, count, reader, index.input_place)
    finally:
        if child is not None:
            child.stop()
        for suffix in (".jsonl", ".meta"):
            with contextlib.suppress(OSError):
                os.unlink(spool + suffix)
    index.unmatched_results += index.result_rows - matched


def _join_ahead(index: Index, sources: list[Source], first: int) -> dict:
    """In the forked child: join the requests from `first` on into the spool."""
    index.reconnect()
    reader = Reader()
    spool = index.path + "-ahead"
    src_of = {id(source): src for src, source in enumerate(sources)}
    meta = array("q")
    with open(spool + ".jsonl", "wb", buffering=1 << 20) as lines, \
            open(spool + ".meta", "wb") as numbers:
        def keep(chosen) -> None:
            record = chosen.record
            line = (record_text(record) + "\n").encode("utf-8")
            lines.write(line)
            tokens = usage_numbers(record["usage"]) if chosen.status == "ok" else (0, 0, 0)
            meta.extend((chosen.group, src_of[id(chosen.source)], _STATUS_CODE[chosen.status],
                         *tokens, len(line)))
            if len(meta) >= 65536:
                meta.tofile(numbers)
                del meta[:]

        matched = _join_one_row_each(index, sources, keep, Counter(Summary()), reader,
                                     first=first)
        meta.tofile(numbers)
    return {"matched": matched}


def _pass_on(spool: str, sources: list[Source], on_record, count: Counter, reader: Reader,
             lookup) -> None:
    """The spooled records, in order, to on_record (and counted), as _join_one_row_each
    would pass them."""
    chosen = Chosen(None, sources[0], None, None, reader, lookup=lookup)
    ok = ok_prompt = ok_completion = ok_total = 0
    with open(spool + ".jsonl", "rb", buffering=1 << 20) as lines, \
            open(spool + ".meta", "rb") as numbers:
        read = lines.read
        while True:
            meta = array("q", numbers.read(8 * _SPOOL_FIELDS * 8192))
            if not meta:
                break
            for k in range(0, len(meta), _SPOOL_FIELDS):
                seq, src, code, prompt, completion, total, size = meta[k:k + _SPOOL_FIELDS]
                source = sources[src]
                chosen.text = read(size)
                chosen.record = None
                if code == 0:  # ok
                    ok += 1
                    ok_prompt += prompt
                    ok_completion += completion
                    ok_total += total
                else:
                    count(chosen.record, source)
                chosen.status, chosen.source, chosen.group = STATUSES[code], source, seq
                on_record(chosen)
    count.add_ok(ok, ok_prompt, ok_completion, ok_total)


def _attempts(group: list[tuple], sources: list[Source]) -> int:
    """How many of the given jobs sent this request (an original and its retry jobs)."""
    if len(group) == 1:
        return 1
    return len({sources[row[2]].job for row in group})


class Counter:
    """Adds one record to a Summary: its status, tokens, and why it is missing."""

    def __init__(self, summary: Summary) -> None:
        self.summary = summary
        self.counts, self.usage = summary.counts, summary.usage

    def add_ok(self, records: int, prompt: int, completion: int, total: int) -> None:
        """`records` ok records with these tokens (counted by the caller)."""
        self.counts["ok"] += records
        for totals in (self.usage, self.summary.ok_usage):
            totals["prompt_tokens"] += prompt
            totals["completion_tokens"] += completion
            totals["total_tokens"] += total

    def __call__(self, record: dict, source: Source, sign: int = 1) -> None:
        status = record["status"]
        self.counts[status] += sign
        if status == "missing":
            if source.batch_status in ENDED_UNSUCCESSFULLY:
                self.summary.missing_from_ended += sign
            else:
                done = self.summary.missing_from_completed
                done[source.batch_id] = done.get(source.batch_id, 0) + sign
                if not done[source.batch_id]:
                    del done[source.batch_id]
        usage = record["usage"]
        if usage:
            p, c, t = usage_numbers(usage)
            chosen = [self.usage, self.summary.ok_usage] if status == "ok" else [self.usage]
            for totals in chosen:
                totals["prompt_tokens"] += sign * p
                totals["completion_tokens"] += sign * c
                totals["total_tokens"] += sign * t
