#!/usr/bin/env python3
# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "requests>=2.28,<3",
#     "jsonschema>=4.17,<5",
# ]
# ///
"""Build valid batch files from prompts, CSV rows or records; or --check existing files.

Nothing here touches the network. The request validator is dwbatch.validate (shared with
submit.py); reading inputs is dwbatch.inputs, building bodies and writing files dwbatch.build,
splitting dwbatch.split.
"""

from __future__ import annotations

import argparse
import os

from dwbatch.deps import require  # standard library only

require("jsonschema")  # before anything imports them: a clear error, not a traceback

from dwbatch import cli, errors, limits, provenance, table
from dwbatch.build import (
    ID_WIDTH,
    BuildOptions,
    load_response_format,
    parse_param,
    write_batch_files,
)
from dwbatch.errors import InputError
from dwbatch.inputs import FORMATS, open_source
from dwbatch.validate import check_files

DESCRIPTION = """\
Turn what you have into batch input files the Doubleword batch API accepts, never
hand-written JSONL:
  .txt   one prompt per line (lines of only whitespace are skipped)
  .csv/.tsv  a header row, then one row per request (--template or --prompt-column)
  .jsonl records (fields for --template), JSON strings (prompts), or ready batch lines
         (checked and passed through)
  .json  an array of the same;  '-' reads stdin (format guessed; --input-format to say)
Every line is validated (schema: references/batch_request.schema.json) and output is split
into OUT-001.jsonl, OUT-002.jsonl... when it would pass --max-file-bytes or --max-requests.
Ids: --id-column, else <id-prefix>-<item number> (req-000001, ...), stable across runs.
On any error nothing is written (exit 2). --check FILE... validates existing batch files and
lists every problem with file, line and custom_id."""

EXAMPLES = [
    "python3 scripts/create_batch_file.py prompts.txt -o batch.jsonl --model MODEL "
    "--max-tokens 512",
    "python3 scripts/create_batch_file.py reviews.csv -o batch.jsonl --model MODEL "
    "--template 'Classify this review: {text}' --id-column review_id "
    "--response-format label.schema.json",
    "python3 scripts/create_batch_file.py docs.jsonl -o emb.jsonl --endpoint embeddings "
    "--model MODEL --prompt-column body",
    "python3 scripts/create_batch_file.py --check batch-001.jsonl batch-002.jsonl --json",
]

_BUILD_ONLY = ("output", "model", "template", "prompt_column", "system", "id_column",
               "max_tokens", "temperature", "top_p", "stop", "param", "response_format",
               "input_format")


def _text_or_file(value: str, flag: str) -> str:
    """--system / --template: the text itself, or @path for a file's contents."""
    if not value.startswith("@"):
        return value
    path = value[1:]
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{flag} {value}: cannot read {path}: {exc}",
                         hint=f"give {flag} TEXT, or {flag} @FILE with a UTF-8 file") from None
    return text[:-1] if text.endswith("\n") else text


def build_parser() -> argparse.ArgumentParser:
    p = cli.make_parser("create_batch_file.py", DESCRIPTION, EXAMPLES, errors.LOCAL_EXIT_CODES)
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="the input file ('-' = stdin); with --check, the batch files to check")
    p.add_argument("-o", "--output", metavar="OUT.jsonl",
                   help="output path; split output is OUT-001.jsonl, OUT-002.jsonl, ...")
    p.add_argument("--check", action="store_true",
                   help="validate existing batch files (INPUT...) instead of building")
    p.add_argument("--model", help="model name for every request (required to build)")
    p.add_argument("--endpoint", default="chat", choices=list(limits.ENDPOINT_URLS),
                   help="request kind: chat (messages), completions (prompt), embeddings "
                        "(input), responses (input), messages (Anthropic-style; needs "
                        "--max-tokens). Default: chat")
    p.add_argument("--input-format", choices=FORMATS,
                   help="override the format the extension implies; 'batch' = ready batch "
                        "lines")
    p.add_argument("--template", metavar="TEXT|@FILE",
                   help="prompt template with {column} placeholders ({{ and }} for literal "
                        "braces); for .txt input the line is {prompt}. Text is used as "
                        "given (a typed \\n stays two characters): put a multi-line template "
                        "in a file and pass @FILE")
    p.add_argument("--prompt-column", metavar="COLUMN",
                   help="use this column/field as the prompt (default: a field named "
                        "'prompt')")
    p.add_argument("--system", metavar="TEXT|@FILE", help="system prompt for every request")
    p.add_argument("--id-column", metavar="COLUMN",
                   help="take custom_id from this column (unique, at most 64 UTF-8 bytes)")
    p.add_argument("--id-prefix", default="req",
                   help="prefix of generated ids <prefix>-<item number>, e.g. req-000001 "
                        "(default: req)")
    p.add_argument("--max-tokens", type=cli.positive_int, metavar="N",
                   help="answer length cap (max_output_tokens for responses)")
    p.add_argument("--temperature", type=float, metavar="T",
                   help="sampling temperature, e.g. 0 for the most likely answer")
    p.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling, e.g. 0.9")
    p.add_argument("--stop", action="append", metavar="TEXT",
                   help="stop sequence (repeat for several)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=JSON",
                   help='any other body field, value as JSON: --param seed=42 '
                        '--param \'logit_bias={"50256": -100}\' (repeatable)')
    p.add_argument("--response-format", metavar="SCHEMA.json",
                   help="structured output: a JSON Schema file, sent as response_format of "
                        "type json_schema (text.format for responses) with strict: true and "
                        "the file's name as the schema name. Strict mode wants every property "
                        "in `required` and additionalProperties: false")
    p.add_argument("--max-file-bytes", type=cli.byte_size, default=limits.MAX_FILE_BYTES,
                   metavar="N",
                   help=f"largest output file, bytes or 200MB/100MiB (default "
                        f"{limits.MAX_FILE_BYTES:,})")
    p.add_argument("--max-requests", type=cli.positive_int, default=limits.MAX_REQUESTS,
                   metavar="N",
                   help=f"most requests per output file (default {limits.MAX_REQUESTS:,})")
    p.add_argument("--max-problems", type=cli.positive_int,
                   default=limits.DEFAULT_MAX_PROBLEMS, metavar="N",
                   help=f"problems listed in detail before '... and N more' (default "
                        f"{limits.DEFAULT_MAX_PROBLEMS})")
    return p


def main(args: argparse.Namespace) -> cli.Result:
    if args.check:
        return run_check(args)
    return run_build(args)


# --- --check ---------------------------------------------------------------------------------
def run_check(args: argparse.Namespace) -> cli.Result:
    used = [f"--{name.replace('_', '-')}" for name in _BUILD_ONLY
            if getattr(args, name) not in (None, [])]
    if used:
        raise InputError(f"--check only validates files; {', '.join(used)} do not apply",
                         hint="drop those flags, or drop --check to build a file")
    if not args.inputs:
        raise InputError("--check needs at least one batch file",
                         hint="python3 scripts/create_batch_file.py --check FILE.jsonl")
    if "-" in args.inputs:
        raise InputError("--check reads files, not stdin",
                         hint="save the lines to a file first")
    report = check_files(args.inputs, max_problems=args.max_problems,
                         max_file_bytes=args.max_file_bytes, max_requests=args.max_requests,
                         split_oversize=True)
    files = [f.to_dict() for f in report.files]
    again = cli.script_command("create_batch_file.py", "--check", *args.inputs)
    if not report.ok:
        raise InputError(
            report.render(),
            hint="fix the lines listed (or rebuild the file with create_batch_file.py), "
                 f"then check again: {again}",
            extra={"files": files, "problems": [p.to_dict() for p in report.problems],
                   "problem_count": report.problem_count})
    submit = cli.script_command("submit.py", *args.inputs)
    lines = []
    for f in report.files:
        lines.append(f"ok: {f.path}: {f.requests:,} requests, {f.bytes:,} bytes, "
                     f"{f.url}, {_models_text(f.models)}, ~{f.input_tokens_estimate:,} "
                     "input tokens (estimate)")
        if f.needs_split:
            lines.append(f"  over the per-file limits ({args.max_file_bytes:,} bytes / "
                         f"{args.max_requests:,} requests): submit.py splits it into shards "
                         "by itself")
    fields = {"files": files, "requests": report.total_requests, "problems": [],
              "problem_count": 0}
    return cli.Result(fields=fields, summary="\n".join(lines), next=submit)


# --- build -----------------------------------------------------------------------------------
def _options(args: argparse.Namespace) -> BuildOptions:
    params = dict(parse_param(p) for p in args.param)
    schema, name = (load_response_format(args.response_format)
                    if args.response_format else (None, "response"))
    return BuildOptions(
        model=args.model, endpoint=args.endpoint,
        system=_text_or_file(args.system, "--system") if args.system is not None else None,
        template=(_text_or_file(args.template, "--template")
                  if args.template is not None else None),
        prompt_column=args.prompt_column, id_column=args.id_column, id_prefix=args.id_prefix,
        max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
        stop=args.stop, params=params, response_format=schema, response_format_name=name)


def run_build(args: argparse.Namespace) -> cli.Result:
    if len(args.inputs) != 1:
        raise InputError(
            "give exactly one INPUT to build from" if args.inputs else "no INPUT given",
            hint="python3 scripts/create_batch_file.py INPUT -o OUT.jsonl --model MODEL "
                 "(or --check FILE... to validate batch files)")
    if not args.output:
        raise InputError("-o OUT.jsonl is required: where to write the batch file",
                         hint="add -o batch.jsonl (split output becomes batch-001.jsonl, ...)")
    (path,) = args.inputs
    if path != "-" and os.path.exists(args.output) and os.path.exists(path) and \
            os.path.samefile(path, args.output):
        raise InputError(f"-o {args.output} is the input file itself",
                         hint="write the batch file to another path")
    opts = _options(args)
    with open_source(path, args.input_format) as source:
        result = write_batch_files(source, args.output, opts,
                                   max_file_bytes=args.max_file_bytes,
                                   max_requests=args.max_requests,
                                   max_problems=args.max_problems)
        if result.kind == "batch":
            ignored = [f"--{n.replace('_', '-')}" for n in _BUILD_ONLY
                       if n not in ("output", "input_format")
                       and getattr(args, n) not in (None, [])]
            if ignored:
                cli.warn(f"note: {source.name} holds ready batch lines, passed through as they "
                         f"are; {', '.join(ignored)} did not apply")
    _record_source(path, args.output, source.format, opts, result)
    return _build_result(source.name, source.format, result)


def _record_source(input_path: str, out_path: str, fmt: str, opts: BuildOptions,
                   result) -> None:
    """Beside the batch file: where its requests came from, so fetch_results.py can give
    the user's own table back (dwbatch.provenance). Ready batch lines and stdin have no
    table to give back: a stale record of an earlier build goes."""
    if result.kind != "records" or input_path == "-":
        provenance.remove(out_path)
        return
    answer = table.answer_of(opts.url, opts.response_format)
    source = provenance.table_source(input_path, fmt, out_path, id_column=opts.id_column,
                                     id_prefix=opts.id_prefix, id_width=ID_WIDTH,
                                     answer=answer)
    provenance.write(out_path, "build", [(s.path, s.sha256) for s in result.shards],
                     table=source)


def _models_text(models: dict) -> str:
    if not models:
        return "no model"
    return "models " + ", ".join(f"{m} ({n:,})" for m, n in sorted(models.items()))


def _build_result(input_name: str, fmt: str, result) -> cli.Result:
    shards = result.shards
    models: dict[str, int] = {}
    for s in shards:
        for m, n in s.models.items():
            models[m] = models.get(m, 0) + n
    total_requests = sum(s.requests for s in shards)
    total_bytes = sum(s.bytes for s in shards)
    tokens = sum(s.input_tokens_estimate for s in shards)
    endpoint = shards[0].url
    paths = [s.path for s in shards]
    kind = "passed through" if result.kind == "batch" else "built"
    lines = [f"{kind} {total_requests:,} requests from {input_name} ({fmt}) into "
             f"{len(shards)} file{'s' if len(shards) != 1 else ''}: {endpoint}, "
             f"{_models_text(models)}, ~{tokens:,} input tokens (estimate)"]
    for s in shards:
        lines.append(f"  {s.path}: {s.requests:,} requests, {s.bytes:,} bytes")
    for r in result.removed:
        lines.append(f"  removed stale {r} (output of an earlier run)")
    fields = {"input": input_name, "input_format": fmt, "mode": result.kind,
              "files": [s.to_dict() for s in shards], "requests": total_requests,
              "bytes": total_bytes, "endpoint": endpoint,
              "models": dict(sorted(models.items())), "input_tokens_estimate": tokens,
              "removed_stale": result.removed}
    return cli.Result(fields=fields, summary="\n".join(lines),
                      next=cli.script_command("submit.py", *paths))


if __name__ == "__main__":
    cli.main_entry(build_parser, main)
