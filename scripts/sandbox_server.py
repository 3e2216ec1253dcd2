#!/usr/bin/env python3
# /// script
# requires-python = ">=3.10"
# dependencies = []  # the sandbox is standard library only
# ///
"""Run the local Doubleword sandbox: the batch API on loopback, for free rehearsals and tests."""

from __future__ import annotations

import signal
import sys

from dwbatch import errors
from dwbatch.cli import Result, main_entry, make_parser
from dwbatch.sandbox import Options, SandboxServer
from dwbatch.sandbox.server import is_loopback

DESCRIPTION = """\
Serve the Doubleword batch API (models, files, batches, content, results, analytics, retry,
retry-requests, cost-estimate) on loopback with deterministic mock models, so any script of
this skill can rehearse a whole pipeline for free:  --base-url http://127.0.0.1:PORT/v1

The first line printed on stdout holds the base URL (http://127.0.0.1:PORT/v1). The server
behaves like the real service: bare UUID ids, plain-text errors with the real messages
(401 `Authentication required` without a Bearer key), GET /models listing the mock models
(OpenAI shape, OpenAI-style JSON errors), upload validation line by line (the first bad line
rejects the file; a model it does not serve -> 403), GET /files?search= on the filename,
output/error file ids set at creation, partial results with ?skip= / X-Incomplete /
X-Last-Line, requests finishing OUT OF INPUT ORDER, in-place /retry (the error file is
rebuilt), retriable upstream failures retried by the server before any is reported, and the
quirks: `expired` is never a status (expired_at is stamped, work goes on), cancel has no
state check (a finished batch becomes `cancelled` for good) and a batch cancelled while
still validating stays `cancelling` forever.
--openai-compat switches to stock OpenAI-compatible behaviour instead: file ids null until
the batch is done, no partial-result headers, one final file, `expired` possible, JSON
error bodies, and the Doubleword extensions (/retry, /retry-requests, /results, /analytics,
/cost-estimate) answer 404.

Mock models (names via --chat-models / --embedding-models; any other model: 403 at upload):
  chat/completions/responses/messages answer "ECHO " + the prompt (last user message /
  prompt / input), counted in words: max_tokens (max_output_tokens for responses) below the
  word count cuts the answer -> finish_reason "length" (messages: stop_reason "max_tokens";
  responses: status "incomplete"). usage = word counts. A response_format / text.format
  json_schema gets JSON valid for the schema. Embeddings: 8 floats from sha256(input).
  Like the service, a retriable upstream failure (5xx, 429, 408, 404, 499, timeout) is
  retried by the server (3 attempts here, at once) and only the last failure is written.
  Markers inside a prompt:
    [[fail:NNN]]      every upstream attempt answers NNN: RetriableHttpStatus for
                      5xx/429/408/404/499 once the retries run out, else
                      NonRetriableHttpStatus at once (the message is JSON text)
    [[fail:timeout]]  fails with type Timeout      [[fail:text]]  error message is plain text
    [[flaky:NNN]]     the first upstream attempt answers NNN; the server's own retry then
                      succeeds (a retriable NNN never reaches the error file)
    [[outage:NNN]]    the upstream answers NNN through this body's whole first run, so it
                      fails as RetriableHttpStatus; sent again (/retry, or a new batch) it
                      succeeds: the failure to rehearse retrying with
    [[bad_json]]      structured answer that is not JSON
    [[schema_invalid]] structured answer that is JSON but violates the schema

Control interface (only with --enable-faults; root URL, not /v1; JSON bodies):
  POST   /_sandbox/faults  {"method":"POST"|"*", "path":"/v1/files/*/content" (fnmatch glob
         on the path without query), "kind":K, "times":N (default 1), ...} -> {"id":...}
         K = status        {"status":503,"retry_after":1}: answer that status, nothing is
                           processed (429/503: JSON body + Retry-After; others plain text)
             drop          {"after_bytes":K}: process, send headers + first K body bytes, close
             tear          content: everything but the second half of the last line, close
             delay         {"seconds":S}: wait, then answer normally
             stall         {"after_bytes":K,"seconds":S}: send headers + first K body
                           bytes, wait S seconds, then the rest (no pause if the body
                           is not longer than K)
             lose_response process fully (the batch IS created), close without answering
             reset_upload  {"after_bytes":K}: read K bytes of the request body, close;
                           nothing is processed
         Faults are used first-in first-out, one per call.
  DELETE /_sandbox/faults                  remove all faults
  GET    /_sandbox/calls                   {"calls":[{"method","path","query","status",
                                            "fault"}...]} in arrival order; DELETE clears
  POST   /_sandbox/advance {"batch_id"?, "requests"?}  finish the next N requests (all if
         absent) of that batch (every batch if absent) in its shuffled order: validating ->
         in_progress, all done -> completed/failed, cancelling -> cancelled
  POST   /_sandbox/clock {"advance_seconds":S}  move the sandbox clock (expires_at,
         expired_at; `expired` status with --openai-compat)"""

EXAMPLES = [
    "python3 scripts/sandbox_server.py                      # http://127.0.0.1:8787/v1",
    "python3 scripts/sandbox_server.py --port 0 --manual --enable-faults --seed 7",
    "python3 scripts/sandbox_server.py --rate 0 --max-file-bytes 1000000 --openai-compat",
    "curl -s -F purpose=batch -F file=@prompts.jsonl -H 'Authorization: Bearer x' "
    "http://127.0.0.1:8787/v1/files",
    "curl -s -X POST http://127.0.0.1:8787/_sandbox/advance -d '{\"requests\": 5}'",
]


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser():
    parser = make_parser("sandbox_server.py", DESCRIPTION, EXAMPLES,
                         (errors.OK, errors.INTERNAL, errors.INVALID_INPUT))
    add = parser.add_argument
    add("--host", default="127.0.0.1",
        help="address to bind (default 127.0.0.1); non-loopback needs --allow-remote")
    add("--port", type=int, default=8787, help="port (default 8787; 0 = any free port)")
    add("--api-key", metavar="KEY",
        help="require exactly this Bearer key (default: any non-empty Bearer key)")
    add("--max-file-bytes", type=int, default=200_000_000, metavar="N",
        help="largest accepted upload; larger -> 413 (default 200000000)")
    add("--max-requests", type=int, default=0, metavar="N",
        help="most request lines per file; more -> 400 (default 0 = no cap)")
    add("--completion-windows", default="24h,1h", metavar="LIST",
        help="allowed completion_window values, comma-separated (default 24h,1h)")
    add("--chat-models", default="sandbox-chat", metavar="LIST",
        help="chat model names, comma-separated (default sandbox-chat)")
    add("--embedding-models", default="sandbox-embed", metavar="LIST",
        help="embedding model names, comma-separated (default sandbox-embed)")
    add("--rate", type=float, default=100.0, metavar="R",
        help="requests finished per second per batch (default 100; 0 = as fast as possible)")
    add("--validating-seconds", type=float, default=0.2, metavar="S",
        help="how long a new batch stays `validating` (default 0.2)")
    add("--manual", action="store_true",
        help="batches move only when told via POST /_sandbox/advance (implies --enable-faults)")
    add("--seed", type=int, default=0,
        help="seed of the out-of-order completion (same seed, same order; default 0)")
    add("--openai-compat", action="store_true",
        help="behave like a stock OpenAI-compatible server instead of Doubleword")
    add("--enable-faults", action="store_true",
        help="turn on the /_sandbox control interface (faults, calls, advance, clock)")
    add("--data-dir", metavar="DIR",
        help="where uploads and results are stored (default: a temporary folder, removed "
             "at exit)")
    add("--allow-remote", action="store_true",
        help="allow binding a non-loopback address (the sandbox has no real security)")
    add("--verbose", action="store_true", help="log every request on stderr")
    return parser


def options_from_args(args) -> Options:
    if not args.allow_remote and not is_loopback(args.host):
        raise errors.InputError(
            f"--host {args.host} is not a loopback address; the sandbox binds 127.0.0.1 by "
            "default", hint="use --host 127.0.0.1, or add --allow-remote if you really mean "
                            "to expose it")
    windows = _csv(args.completion_windows)
    chat, embed = _csv(args.chat_models), _csv(args.embedding_models)
    if not windows:
        raise errors.InputError("--completion-windows is empty", hint="e.g. --completion-"
                                                                      "windows 24h,1h")
    if not chat and not embed:
        raise errors.InputError("no models configured",
                                hint="give --chat-models and/or --embedding-models")
    if args.rate < 0 or args.validating_seconds < 0 or args.max_file_bytes < 0 \
            or args.max_requests < 0:
        raise errors.InputError("--rate, --validating-seconds, --max-file-bytes and "
                                "--max-requests must not be negative")
    return Options(host=args.host, port=args.port, api_key=args.api_key,
                   max_file_bytes=args.max_file_bytes, max_requests=args.max_requests,
                   completion_windows=windows, chat_models=chat, embedding_models=embed,
                   rate=args.rate, validating_seconds=args.validating_seconds,
                   manual=args.manual, seed=args.seed, openai_compat=args.openai_compat,
                   enable_faults=args.enable_faults or args.manual, data_dir=args.data_dir,
                   allow_remote=args.allow_remote, verbose=args.verbose)


def main(args) -> Result:
    options = options_from_args(args)
    try:
        server = SandboxServer(options)
    except OSError as exc:
        raise errors.InputError(f"cannot listen on {options.host}:{options.port}: {exc}",
                                hint="choose another --port (or --port 0 for any free one)") \
            from None
    mode = "openai-compat" if options.openai_compat else "doubleword"
    pace = "manual" if options.manual else f"rate {options.rate:g}/s"
    print(f"sandbox serving {server.base_url} ({mode} mode, {pace}, "
          f"faults {'on' if options.enable_faults else 'off'}); Ctrl-C to stop", flush=True)

    def stop(signum, frame):  # noqa: ARG001
        server.shutdown()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    finally:
        server.close()
    return Result(fields={"base_url": server.base_url}, summary="sandbox stopped")


if __name__ == "__main__":
    sys.exit(main_entry(build_parser, main))
