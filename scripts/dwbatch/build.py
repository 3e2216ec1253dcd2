"""Turn prompts, table rows or records into batch request lines, and write them to files.

Each endpoint gets the body shape it expects: chat `messages`, completions `prompt`,
embeddings `input`, responses `input` (+ `instructions`), messages (Anthropic-style) `messages`
+ `system` + the required `max_tokens`. Every line written goes through the same validator as
`--check` (dwbatch.validate), so the builder can never write a line `--check` would refuse, and
through the shard writer (dwbatch.split), so a failure leaves no output at all.

Public interface:
  BuildOptions(model, endpoint="chat", system, template, prompt_column, id_column,
               id_prefix="req", max_tokens, temperature, top_p, stop, params,
               response_format, response_format_name)
  check_options(opts); Template(text); parse_param("KEY=JSON") -> (key, value);
  load_response_format(path) -> (schema, name);
  build_body(prompt, opts) -> dict; build_request(custom_id, prompt, opts) -> dict;
  write_batch_files(source, out_path, opts, *, max_file_bytes, max_requests, max_problems)
      -> WriteResult(shards, removed, kind)
  write_requests(requests, out_path, *, max_file_bytes, max_requests, max_problems)
      -> WriteResult: for Python callers with request dicts of their own, e.g.
        opts = BuildOptions(model="MODEL", max_tokens=256)
        reqs = (build_request(f"doc-{i}", text, opts) for i, text in enumerate(texts))
        write_requests(reqs, "batch.jsonl")
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import limits
from .errors import InputError
from .inputs import Item, Source
from .split import ShardStats, ShardWriter, is_output_of
from .validate import Checker, Problem, Report

ID_WIDTH = 6
_NAME_OK = re.compile(r"[^a-zA-Z0-9_-]+")
_BOM = b"\xef\xbb\xbf"


@dataclass
class BuildOptions:
    """How to turn one prompt into one request. `endpoint` is a short name (see
    limits.ENDPOINT_URLS); `params` are extra body fields (from --param); `response_format` is
    a JSON Schema for structured output (sent as response_format of type json_schema)."""

    model: str | None = None
    endpoint: str = "chat"
    system: str | None = None
    template: str | None = None
    prompt_column: str | None = None
    id_column: str | None = None
    id_prefix: str = "req"
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    response_format: dict | None = None
    response_format_name: str = "response"

    @property
    def url(self) -> str:
        return limits.ENDPOINT_URLS[self.endpoint]


# --- options ---------------------------------------------------------------------------------
_NOT_FOR = {
    "embeddings": {"system": "--system", "max_tokens": "--max-tokens",
                   "temperature": "--temperature", "top_p": "--top-p", "stop": "--stop",
                   "response_format": "--response-format"},
    "completions": {"system": "--system", "response_format": "--response-format"},
    "responses": {"stop": "--stop"},
    "messages": {"response_format": "--response-format"},
}
_BODY_KEYS_OF_FLAGS = {
    "model": "--model", "messages": "the input (the prompt)", "prompt": "the input (the prompt)",
    "input": "the input (the prompt)", "system": "--system", "instructions": "--system",
    "max_tokens": "--max-tokens", "max_output_tokens": "--max-tokens",
    "temperature": "--temperature", "top_p": "--top-p", "stop": "--stop",
    "stop_sequences": "--stop", "response_format": "--response-format",
    "text": "--response-format",
}


def check_options(opts: BuildOptions) -> None:
    """Refuse option combinations that would build requests the endpoint cannot use."""
    if opts.endpoint not in limits.ENDPOINT_URLS:
        raise InputError(f"--endpoint {opts.endpoint!r} is not known",
                         hint=f"use one of: {', '.join(limits.ENDPOINT_URLS)}")
    if not opts.model or not opts.model.strip():
        raise InputError("--model is required to build requests",
                         hint="give the model name, e.g. --model Qwen/Qwen3-30B-A3B-Instruct-2507")
    for attr, flag in _NOT_FOR.get(opts.endpoint, {}).items():
        if getattr(opts, attr) is not None:
            extra = (": put the instruction into --template instead"
                     if opts.endpoint == "completions" and attr == "system" else "")
            raise InputError(f"{flag} does not apply to --endpoint {opts.endpoint}{extra}",
                             hint=f"drop {flag}, or choose another --endpoint")
    if opts.endpoint == "messages" and opts.max_tokens is None:
        raise InputError("--endpoint messages needs --max-tokens (Anthropic-style requests "
                         "must say how many tokens the answer may use)",
                         hint="add e.g. --max-tokens 1024")
    if opts.template is not None and opts.prompt_column is not None:
        raise InputError("give either --template or --prompt-column, not both",
                         hint="--template 'Summarise: {text}' uses any columns; "
                              "--prompt-column text uses one column as it is")
    for key in opts.params:
        flag = _BODY_KEYS_OF_FLAGS.get(key)
        from_input = bool(flag) and flag.startswith("the input")
        if flag and (from_input or _flag_is_set(opts, flag)):
            fix = "drop the --param" if from_input else f"use {flag} or the --param, not both"
            raise InputError(f"--param {key}=... conflicts with {flag}",
                             hint=f"set {key} once: {fix}")
        value = opts.params[key]
        if key == "stream" and value is not False and value is not None:
            raise InputError("--param stream=true: batch requests cannot stream",
                             hint="drop --param stream")
    if opts.id_prefix is not None:
        _check_id_prefix(opts.id_prefix)


def _flag_is_set(opts: BuildOptions, flag: str) -> bool:
    attr = {"--model": "model", "--system": "system", "--max-tokens": "max_tokens",
            "--temperature": "temperature", "--top-p": "top_p", "--stop": "stop",
            "--response-format": "response_format"}[flag]
    return getattr(opts, attr) is not None


def _check_id_prefix(prefix: str) -> None:
    sample = f"{prefix}-{'9' * ID_WIDTH}"
    if len(sample.encode("utf-8")) > limits.MAX_CUSTOM_ID_BYTES:
        raise InputError(f"--id-prefix {prefix!r} is too long: ids like {sample!r} would pass "
                         f"{limits.MAX_CUSTOM_ID_BYTES} bytes", hint="use a shorter prefix")
    if any(ord(c) < 32 or 127 <= ord(c) <= 159 for c in prefix):
        raise InputError("--id-prefix contains a control character",
                         hint="use letters, digits, '-' or '_'")


def parse_param(text: str) -> tuple[str, Any]:
    """'KEY=JSON' -> (key, value). The value must be JSON: 42, 0.5, true, "text", [..], {..}."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise InputError(f"--param {text!r} is not KEY=JSON",
                         hint="write e.g. --param seed=42 or "
                              "--param 'logit_bias={\"50256\": -100}'")
    try:
        parsed = json.loads(value, parse_constant=_no_constant)
    except ValueError as exc:
        raise InputError(
            f"--param {key}: the value {value!r} is not JSON ({exc})",
            hint=f"write numbers, true/false and null as they are, and quote text: "
                 f"--param '{key}=\"{value}\"'") from None
    return key, parsed


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def load_response_format(path: str) -> tuple[dict, str]:
    """Read a JSON Schema file for structured output; InputError unless it is a valid
    JSON Schema object. Returns (schema, name) where name comes from its title or file name."""
    import jsonschema

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--response-format: cannot read {path}: {exc}",
                         hint="give the path of a JSON Schema file (UTF-8)") from None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--response-format {path}: not valid JSON: {exc.msg} at line "
                         f"{exc.lineno} column {exc.colno}",
                         hint="the file must hold one JSON Schema object") from None
    if isinstance(schema, dict) and schema.get("type") == "json_schema" and \
            isinstance(schema.get("json_schema"), dict):  # a whole response_format object
        schema = schema["json_schema"].get("schema")
    if not isinstance(schema, dict):
        raise InputError(f"--response-format {path}: a JSON Schema must be a JSON object, "
                         f"got {type(schema).__name__}",
                         hint='e.g. {"type": "object", "properties": {"answer": '
                              '{"type": "string"}}, "required": ["answer"]}')
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(map(str, exc.absolute_path)) or "the top level"
        raise InputError(f"--response-format {path}: not a valid JSON Schema: {exc.message} "
                         f"(at {where})",
                         hint="fix the schema (see https://json-schema.org/understanding-json-schema)"
                         ) from None
    title = schema.get("title") if isinstance(schema.get("title"), str) else None
    name = _NAME_OK.sub("_", title or os.path.splitext(os.path.basename(path))[0])[:64]
    return schema, name.strip("_") or "response"


# --- templates -------------------------------------------------------------------------------
class Template:
    """A prompt template with {column} placeholders; {{ and }} are literal braces."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.parts: list[tuple[str, str | None]] = []  # (literal, field or None)
        literal: list[str] = []
        i, n = 0, len(text)
        while i < n:
            c = text[i]
            if c == "{" and text.startswith("{{", i):
                literal.append("{")
                i += 2
            elif c == "}" and text.startswith("}}", i):
                literal.append("}")
                i += 2
            elif c == "{":
                end = text.find("}", i + 1)
                inner = text[i + 1:end] if end != -1 else ""
                if end == -1 or "{" in inner:
                    raise InputError(f"--template: '{{' at character {i + 1} is not closed",
                                     hint="write {column} for a value and {{ for a literal {")
                if not inner.strip():
                    raise InputError(f"--template: empty placeholder {{}} at character {i + 1}",
                                     hint="name a column inside the braces, e.g. {text}")
                self.parts.append(("".join(literal), inner))
                literal = []
                i = end + 1
            elif c == "}":
                raise InputError(f"--template: single '}}' at character {i + 1}",
                                 hint="write }} for a literal }, or {column} for a value")
            else:
                literal.append(c)
                i += 1
        self.parts.append(("".join(literal), None))
        self.fields = [f for _, f in self.parts if f is not None]

    def missing(self, columns) -> list[str]:
        have = set(columns)
        return [f for f in dict.fromkeys(self.fields) if f not in have]

    def render(self, values: Mapping[str, Any]) -> str:
        out = []
        for literal, name in self.parts:
            out.append(literal)
            if name is not None:
                out.append(value_text(values[name]))
        return "".join(out)


def value_text(value: Any) -> str:
    """A column value as prompt text: strings as they are, null as '', others as JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False)


def _columns_text(columns) -> str:
    cols = list(columns)
    return ", ".join(map(repr, cols)) if cols else "(none)"


# --- bodies ----------------------------------------------------------------------------------
def build_body(prompt: str, opts: BuildOptions) -> dict:
    """The request body for one prompt, shaped for opts.endpoint."""
    ep = opts.endpoint
    body: dict[str, Any] = {"model": opts.model}
    if ep == "chat":
        messages = [{"role": "system", "content": opts.system}] if opts.system else []
        messages.append({"role": "user", "content": prompt})
        body["messages"] = messages
    elif ep == "completions":
        body["prompt"] = prompt
    elif ep == "embeddings":
        body["input"] = prompt
    elif ep == "responses":
        body["input"] = prompt
        if opts.system:
            body["instructions"] = opts.system
    elif ep == "messages":
        if opts.system:
            body["system"] = opts.system
        body["messages"] = [{"role": "user", "content": prompt}]
    if opts.max_tokens is not None:
        body["max_output_tokens" if ep == "responses" else "max_tokens"] = opts.max_tokens
    if opts.temperature is not None:
        body["temperature"] = opts.temperature
    if opts.top_p is not None:
        body["top_p"] = opts.top_p
    if opts.stop:
        body["stop_sequences" if ep == "messages" else "stop"] = list(opts.stop)
    if opts.response_format is not None:
        spec = {"name": opts.response_format_name, "schema": opts.response_format,
                "strict": True}
        if ep == "responses":
            body["text"] = {"format": {"type": "json_schema", **spec}}
        else:
            body["response_format"] = {"type": "json_schema", "json_schema": spec}
    body.update(opts.params)
    return body


def build_request(custom_id: str, prompt: str, opts: BuildOptions) -> dict:
    """One complete batch line (as a dict) for a prompt."""
    return {"custom_id": custom_id, "method": "POST", "url": opts.url,
            "body": build_body(prompt, opts)}


def encode_line(request: dict) -> bytes:
    """The compact JSON line of a request (UTF-8, without newline)."""
    return json.dumps(request, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode("utf-8")


# --- from items to requests ------------------------------------------------------------------
class _ItemBuilder:
    def __init__(self, source: Source, opts: BuildOptions) -> None:
        self.source = source
        self.opts = opts
        self.template = Template(opts.template) if opts.template is not None else None
        if source.columns is not None:
            self._check_columns(source.columns)

    def _where(self, item: Item) -> str:
        return f"{self.source.name} line {item.line}"

    def _check_columns(self, columns: list[str]) -> None:
        """Header problems once, before any row (csv/tsv)."""
        src = self.source.name
        if self.template is not None:
            missing = self.template.missing(columns)
            if missing:
                raise InputError(
                    f"--template placeholder {{{missing[0]}}} names no column of {src}; "
                    f"the columns are: {_columns_text(columns)}",
                    hint="use one of those names in braces (names are case-sensitive)")
        for flag, col in (("--prompt-column", self.opts.prompt_column),
                          ("--id-column", self.opts.id_column)):
            if col is not None and col not in columns:
                raise InputError(f"{flag} {col!r} is not a column of {src}; the columns are: "
                                 f"{_columns_text(columns)}",
                                 hint=f"give {flag} one of those names (case-sensitive)")

    def prompt(self, item: Item) -> str:
        if item.prompt is not None:
            fields: Mapping[str, Any] = {"prompt": item.prompt}
            if self.opts.prompt_column not in (None, "prompt"):
                raise InputError(f"--prompt-column {self.opts.prompt_column!r}: "
                                 f"{self.source.name} has no columns ({self.source.format} "
                                 "input: each item is a prompt)",
                                 hint="drop --prompt-column (or use {prompt} in --template)")
        else:
            fields = item.fields
        if self.template is not None:
            missing = self.template.missing(fields)
            if missing:
                raise InputError(
                    f"{self._where(item)}: --template placeholder {{{missing[0]}}} has no "
                    f"such field; the fields there are: {_columns_text(fields)}",
                    hint="use one of those names in braces (names are case-sensitive)")
            return self.template.render(fields)
        column = self.opts.prompt_column or "prompt"
        if column not in fields:
            if self.opts.prompt_column is None:
                raise InputError(
                    f"{self._where(item)}: which field is the prompt? There is no 'prompt' "
                    f"field; the fields are: {_columns_text(fields)}",
                    hint="give --prompt-column NAME, or --template 'text with {NAME}'")
            raise InputError(
                f"{self._where(item)}: --prompt-column {column!r} is missing; the fields "
                f"there are: {_columns_text(fields)}",
                hint="give --prompt-column one of those names (case-sensitive)")
        return value_text(fields[column])

    def custom_id(self, item: Item, ordinal: int) -> str:
        col = self.opts.id_column
        if col is None:
            return f"{self.opts.id_prefix}-{ordinal:0{ID_WIDTH}d}"
        if item.fields is None:
            raise InputError(f"--id-column {col!r}: {self.source.name} has no columns "
                             f"({self.source.format} input)",
                             hint="drop --id-column: ids are then <prefix>-<item number>")
        if col not in item.fields:
            raise InputError(f"{self._where(item)}: --id-column {col!r} is missing; the "
                             f"fields there are: {_columns_text(item.fields)}",
                             hint="every record needs an id in that field")
        value = item.fields[col]
        if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
            raise InputError(f"{self._where(item)}: --id-column {col!r} is "
                             f"{'empty' if value in ('', None) else 'not text or a number'}",
                             hint="every row needs a non-empty id (or drop --id-column to "
                                  "generate ids)")
        return str(value)


@dataclass
class WriteResult:
    """What write_batch_files wrote: the files, stale earlier output it removed, and whether
    the input was built from records or passed through as ready batch lines."""

    shards: list[ShardStats]
    removed: list[str]
    kind: str


def write_batch_files(source: Source, out_path: str, opts: BuildOptions | None = None, *,
                      max_file_bytes: int = limits.MAX_FILE_BYTES,
                      max_requests: int = limits.MAX_REQUESTS,
                      max_problems: int = limits.DEFAULT_MAX_PROBLEMS) -> WriteResult:
    """Build (or pass through) every item of `source` into OUT.jsonl / OUT-001.jsonl...

    Every line is checked by the same validator as --check; all problems are collected and
    raised together as one InputError (extra: the report). Nothing is left on disk on error.
    `opts` is needed unless the source holds ready batch lines."""
    if source.path is not None and is_output_of(source.path, out_path):
        raise InputError(f"output {out_path!r} would overwrite the input {source.path!r}",
                         hint="choose another -o path")
    if source.kind == "records":
        if opts is None:
            raise InputError("build options are needed for records input")
        check_options(opts)
    report = Report(max_problems=max_problems)
    protect = [source.path] if source.path else []
    with Checker(report) as checker, ShardWriter(
            out_path, max_file_bytes=max_file_bytes, max_requests=max_requests,
            protect=protect) as writer:
        stats = checker.begin_file(source.name)
        if source.kind == "batch":
            _pass_through(source, checker, stats, writer, max_file_bytes)
        else:
            _build_all(source, opts, checker, stats, writer, max_file_bytes)
        checker.finish()
        _raise_if_problems(report, writer, source.name)
        shards = writer.commit()
    return WriteResult(shards, writer.removed, source.kind)


def write_requests(requests, out_path: str, *, max_file_bytes: int = limits.MAX_FILE_BYTES,
                   max_requests: int = limits.MAX_REQUESTS,
                   max_problems: int = limits.DEFAULT_MAX_PROBLEMS) -> WriteResult:
    """Validate and write request dicts (e.g. from build_request) into OUT.jsonl or
    OUT-001.jsonl...; problems name the request's position (1-based) as its line. All or
    nothing, like write_batch_files."""
    report = Report(max_problems=max_problems)
    name = "<requests>"
    with Checker(report) as checker, ShardWriter(out_path, max_file_bytes=max_file_bytes,
                                                 max_requests=max_requests) as writer:
        stats = checker.begin_file(name)
        for n, request in enumerate(requests, 1):
            _check_and_write(checker, stats, writer, request, name, n, max_file_bytes)
        checker.finish()
        _raise_if_problems(report, writer, name)
        shards = writer.commit()
    return WriteResult(shards, writer.removed, "batch")


def _raise_if_problems(report: Report, writer: ShardWriter, name: str) -> None:
    if not report.ok:
        raise InputError(
            report.render() + "\nno output was written",
            hint="fix the input and run the same command again",
            extra={"problems": [p.to_dict() for p in report.problems],
                   "problem_count": report.problem_count})
    if writer.requests == 0:
        raise InputError(f"{name} contains no requests (it is empty or has only "
                         "blank lines); no output was written",
                         hint="give an input with at least one prompt, row or record")


def _check_and_write(checker: Checker, stats, writer: ShardWriter, request: Any, name: str,
                     lineno: int, max_file_bytes: int) -> None:
    try:
        line = encode_line(request)
    except UnicodeEncodeError:
        checker.report.add(_surrogate_problem(name, lineno))
        return
    except (TypeError, ValueError) as exc:
        checker.report.add(Problem(name, lineno, None, f"cannot be written as JSON: {exc}"))
        return
    info = checker.check_obj(stats, lineno, request, len(line))
    if info is not None:
        _write(writer, checker.report, line, info, name, lineno, max_file_bytes)


def _write(writer: ShardWriter, report: Report, line: bytes, info, source: str, lineno: int,
           max_file_bytes: int) -> None:
    if len(line) + 1 > max_file_bytes:
        report.add(Problem(source, lineno, info.custom_id,
                           f"this request is {len(line) + 1:,} bytes, larger than the per-file "
                           f"limit of {max_file_bytes:,} bytes (--max-file-bytes); a request "
                           "cannot be split across files: shorten it or raise --max-file-bytes"))
        return
    if report.ok:  # once something is wrong nothing will be kept: stop writing
        writer.write(line, custom_id=info.custom_id, url=info.url, model=info.model,
                     tokens=info.tokens, source_line=lineno)


def _pass_through(source: Source, checker: Checker, stats, writer: ShardWriter,
                  max_file_bytes: int) -> None:
    for item in source.items:
        if item.raw is not None:
            raw = item.raw
            if item.line == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            info = checker.check_raw(stats, item.line, raw, item.offset)
            if info is not None:
                _write(writer, checker.report, raw.rstrip(b"\r\n"), info, source.name,
                       item.line, max_file_bytes)
        else:
            _check_and_write(checker, stats, writer, item.obj, source.name, item.line,
                             max_file_bytes)


def _build_all(source: Source, opts: BuildOptions, checker: Checker, stats,
               writer: ShardWriter, max_file_bytes: int) -> None:
    builder = _ItemBuilder(source, opts)
    checker.track_ids = opts.id_column is not None  # generated ids are unique already
    for ordinal, item in enumerate(source.items, 1):
        request = build_request(builder.custom_id(item, ordinal), builder.prompt(item), opts)
        _check_and_write(checker, stats, writer, request, source.name, item.line,
                         max_file_bytes)


def _surrogate_problem(name: str, line: int) -> Problem:
    return Problem(name, line, None, "contains an unpaired surrogate escape (like \\ud800) "
                   "that is not valid Unicode: remove it")
