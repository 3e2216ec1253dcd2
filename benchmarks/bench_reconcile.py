"""Reconciling 1,000,000 requests: fetch_results.py --offline on a job whose raw copies exist.

Generates (under benchmarks/work/, gitignored; removed afterwards unless --keep, reused when
present) a job of N chat requests as
submit.py records it, plus raw output and error files as the service writes them: in a
shuffled completion order, 1% failed (JSON-text error messages), 1% truncated, and a
structured-output slice (JSON Schema) with a few schema-invalid answers. Then runs the real
command, `fetch_results.py JOB --offline --json` (no network: only the join), and measures its
wall time and peak resident memory (kernel rusage of that process). The results file is then
checked: one record per request, in input order, each joined to its own answer.

Baseline, same files, same run: a bare `json.loads` pass over every line of the input, output
and error files (a separate process, like the join): the parse-only floor of any join that
reads every line. Targets: the join at most 2x that pass; peak memory under 100 MB (the join
is an sqlite3 index of byte offsets in a temporary file; no result is held in a dict).

Then a running job: the same N requests with 98% of the results downloaded (batch
in_progress), joined once; then 1% more result lines arrive (appended to the raw copies, as the
downloader does) and `fetch_results.py --offline` runs again: the re-fetch. It is compared
with a full join of the very same files (`--rebuild`): its time (target: at most 20% of the
full join's) and its results and retry files, which must be the full join's byte for byte.

    python3 benchmarks/bench_reconcile.py                 # 1,000,000 requests
    python3 benchmarks/bench_reconcile.py --requests 100000
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import time

import common

MEMORY_TARGET_MB = 100.0
SPEED_TARGET = 2.0  # join wall <= 2x the bare json.loads pass
REFETCH_TARGET = 0.20  # re-fetch after 1% new lines <= 20% of a full join
BASELINE = """\
import json, sys
lines = 0
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        for line in f:
            json.loads(line)
            lines += 1
print(lines)
"""
BATCH_ID = "00000000-0000-4000-8000-00000000b001"
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}},
          "required": ["answer"], "additionalProperties": False}


def kind_of(i: int) -> str:
    if i % 100 == 7:
        return "error"
    if i % 100 == 13:
        return "truncated"
    if i % 50 == 21:
        return "structured_bad" if i % 1000 == 21 else "structured"
    return "ok"


def request_line(i: int) -> dict:
    req = common.chat_request(f"req-{i:08d}", f"question number {i}: say something",
                              max_tokens=64)
    if kind_of(i).startswith("structured"):
        req["body"]["response_format"] = {"type": "json_schema",
                                          "json_schema": {"name": "a", "schema": SCHEMA}}
    return req


def result_line(i: int) -> tuple[str, dict]:
    cid = f"req-{i:08d}"
    kind = kind_of(i)
    if kind == "error":
        message = json.dumps({"type": "NonRetriableHttpStatus", "details": {
            "status": 400, "body": json.dumps({"error": {"message": f"bad request {i}"}})}})
        return "error", {"id": f"batch_req_{i}", "custom_id": cid, "response": None,
                         "error": {"code": None, "message": message}}
    content = f"ECHO question number {i}: say something"
    finish = "stop"
    if kind == "truncated":
        content, finish = "ECHO question", "length"
    elif kind == "structured":
        content = json.dumps({"answer": f"a{i}"})
    elif kind == "structured_bad":
        content = json.dumps({"answer": i})
    body = {"id": f"chatcmpl-{i}", "object": "chat.completion", "model": "sandbox-chat",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}}
    return "output", {"id": f"batch_req_{i}", "custom_id": cid, "error": None,
                      "response": {"status_code": 200, "request_id": None, "body": body}}


def completion_order(n: int) -> list[int]:
    order = list(range(n))
    random.Random(1).shuffle(order)
    return order


def write_results(raw: str, requests: list[int], mode: str = "wb") -> dict:
    """Write (or append) the result lines of `requests`, in that order, to the raw copies."""
    counts = {"output": [0, 0], "error": [0, 0]}
    with open(os.path.join(raw, f"{BATCH_ID}.output.jsonl"), mode) as out, \
            open(os.path.join(raw, f"{BATCH_ID}.errors.jsonl"), mode) as err:
        for i in requests:
            kind, obj = result_line(i)
            line = (json.dumps(obj) + "\n").encode()
            (out if kind == "output" else err).write(line)
            counts[kind][0] += 1
            counts[kind][1] += len(line)
    return counts


def ensure_job(n: int, arrived: int | None = None, name: str = "reconcile",
               status: str = "completed") -> str:
    """The job folder (reused when complete): input, job file, raw output and error files
    holding the first `arrived` results of the completion order (default: all)."""
    folder = common.work_path(f"{name}-{n}")
    job_path = os.path.join(folder, "bench.job.json")
    if os.path.exists(job_path):
        return job_path
    os.makedirs(os.path.join(folder, "bench.raw"), exist_ok=True)
    input_path = os.path.join(folder, "bench.jsonl")
    digest = hashlib.sha256()
    size = 0
    with open(input_path, "wb") as f:
        for i in range(n):
            line = (json.dumps(request_line(i)) + "\n").encode()
            digest.update(line)
            size += len(line)
            f.write(line)
    order = completion_order(n)
    counts = write_results(os.path.join(folder, "bench.raw"), order[:arrived])
    shard = {"index": 0, "path": "bench.jsonl", "input": "bench.jsonl",
             "sha256": digest.hexdigest(), "requests": n, "bytes": size,
             "endpoint": "/v1/chat/completions", "file_id": "bench-input",
             "batch_id": BATCH_ID, "status": status,
             "request_counts": {"total": n, "completed": counts["output"][0],
                                "failed": counts["error"][0]},
             "downloaded": {"output_lines": counts["output"][0],
                            "output_bytes": counts["output"][1],
                            "error_lines": counts["error"][0],
                            "error_bytes": counts["error"][1]}}
    job = {"version": 1, "job_id": "bench-reconcile", "base_url": "http://127.0.0.1:9/v1",
           "endpoint": "/v1/chat/completions", "completion_window": "24h", "metadata": {},
           "inputs": [{"path": "bench.jsonl", "sha256": digest.hexdigest(), "requests": n,
                       "bytes": size}],
           "shards": [shard]}
    with open(job_path + ".tmp", "w") as f:
        json.dump(job, f, indent=2)
    os.replace(job_path + ".tmp", job_path)
    return job_path


def check_results(path: str, n: int, pending: set[int] = frozenset()) -> str | None:
    """None when the results file is right, else what is wrong."""
    i = -1
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            rec = json.loads(line)
            if rec["custom_id"] != f"req-{i:08d}":
                return f"line {i + 1}: custom_id {rec['custom_id']} out of order"
            kind = "pending" if i in pending else kind_of(i)
            want = {"error": "error", "truncated": "truncated", "structured": "ok",
                    "structured_bad": "schema_invalid", "ok": "ok", "pending": "pending"}[kind]
            if rec["status"] != want:
                return f"line {i + 1}: status {rec['status']}, expected {want}"
            if kind == "ok" and rec["content"] != f"ECHO question number {i}: say something":
                return f"line {i + 1}: joined to the wrong answer"
    if i + 1 != n:
        return f"{i + 1} records instead of {n}"
    return None


def fetch(folder: str, *flags: str, scripts: str = common.SCRIPTS) -> common.Measurement:
    return common.measure([sys.executable, os.path.join(scripts, "fetch_results.py"),
                           "bench.job.json", "--offline", "--json", *flags], cwd=folder)


def table_flags() -> list[str]:
    """--table FILE when fetch_results.py writes the user's table: it is compared too."""
    text = common.measure(common.script("fetch_results.py", "--help")).stdout
    return ["--table", "bench.table.csv"] if "--table" in text else []


def outputs(folder: str) -> list[str]:
    """The files a join writes (those that exist): results, retry file, table."""
    names = ["bench.results.jsonl", "bench.retry.jsonl", "bench.table.jsonl", "bench.table.csv"]
    return [name for name in names if os.path.exists(os.path.join(folder, name))]


def same_files(folder: str, saved: str) -> str | None:
    """None when every output in `folder` equals its copy in `saved`, else which differ."""
    mine, theirs = outputs(folder), outputs(saved)
    if mine != theirs:
        return f"different files: {mine} vs {theirs}"
    differ = [name for name in mine if common.sha256_of(os.path.join(folder, name))
              != common.sha256_of(os.path.join(saved, name))]
    return f"{', '.join(differ)} differ" if differ else None


def full_join(n: int, repeat: int, report: common.Report, before: str | None) -> None:
    t0 = time.perf_counter()
    job = ensure_job(n)
    folder = os.path.dirname(job)
    prepared = time.perf_counter() - t0
    raw = os.path.join(folder, "bench.raw")
    files = [os.path.join(folder, "bench.jsonl"), os.path.join(raw, f"{BATCH_ID}.output.jsonl"),
             os.path.join(raw, f"{BATCH_ID}.errors.jsonl")]
    contenders = {
        "baseline": lambda: common.measure([sys.executable, "-c", BASELINE, *files]),
        "join": lambda: fetch(folder, "--rebuild")}
    if before:
        contenders["before"] = lambda: fetch(folder, "--rebuild", "-o", "before.results.jsonl",
                                             "--retry-file", "before.retry.jsonl",
                                             scripts=os.path.join(before, "scripts"))
    runs = common.alternate(contenders, repeat)
    base, m = common.combined(runs["baseline"]), common.combined(runs["join"])
    result = m.json()
    problem = check_results(os.path.join(folder, "bench.results.jsonl"), n)
    raw_bytes = common.tree_bytes(raw)
    report.info.append(f"job: {os.path.relpath(job, common.ROOT)} (prepared in {prepared:.1f} "
                       f"s; raw output + error files {raw_bytes / 1e6:.1f} MB, shuffled order)")
    table = report.table(f"Reconciliation of {n:,} requests (fetch_results.py --offline: "
                         "the join alone, no network) vs a bare json.loads pass over the same "
                         f"files (median of {repeat} runs, taking turns)",
                         ["command", "requests", "wall s", "requests/s", "largest process MB",
                          "all processes MB", "x json.loads", "exit", "results file"],
                         ["", ",", ".2f", ",.0f", ".1f", ".1f", "{:.2f}x", "", ""])
    table.add("json.loads per line of input + output + error files (baseline)", n, base.wall,
              n / base.wall, base.rss_mb, base.tree_mb, 1.0, base.exit_code, "-")
    if before:
        old = common.combined(runs["before"])
        same = common.sha256_of(os.path.join(folder, "before.results.jsonl")) == \
            common.sha256_of(os.path.join(folder, "bench.results.jsonl"))
        table.add(f"the same, scripts of {os.path.basename(before.rstrip('/'))} (before)", n,
                  old.wall, n / old.wall, old.rss_mb, old.tree_mb, old.wall / base.wall,
                  old.exit_code,
                  "the same bytes" if same else "other bytes (record fields changed since)")
    table.add("fetch_results.py --offline --rebuild", n, m.wall, n / m.wall, m.rss_mb,
              m.tree_mb, m.wall / base.wall, m.exit_code,
              problem or "one record per request, input order, own answer")
    table.notes.append("wall times: " + "; ".join(
        f"{k} " + ", ".join(f"{x.wall:.2f}" for x in v) for k, v in runs.items()))
    table.notes.append("largest process MB: the kernel's ru_maxrss of the command and the "
                       "processes it starts, whichever was largest; all processes MB: the "
                       "command and the process it starts to join beside it, together (the "
                       "highest sum of their Pss, sampled every 10 ms); the memory target is "
                       "judged on the larger of the two")
    table.notes.append(f"counts {result.get('counts')}; retry file "
                       f"{result.get('retry_requests')} lines; exit 4 is expected (the "
                       "generated job has failed, truncated and schema-invalid answers)")
    if problem or m.exit_code != 4 or result.get("records") != n:
        report.problems.append(f"fetch_results.py --offline: exit {m.exit_code}, "
                               f"{result.get('records')} records; {problem or 'no check'}")
    report.check(f"reconciliation of {n:,} peak memory < {MEMORY_TARGET_MB:.0f} MB",
                 f"{m.peak_mb:.1f} MB", m.peak_mb < MEMORY_TARGET_MB)
    report.check(f"join at most {SPEED_TARGET:g}x a bare json.loads pass over the same files",
                 f"{m.wall / base.wall:.2f}x", m.wall <= SPEED_TARGET * base.wall)
    report.data.update(requests=n, wall=m.wall, peak_mb=m.peak_mb, baseline_wall=base.wall)


def refetch(n: int, report: common.Report, keep: bool) -> None:
    """A running job: 98% of the results joined, then 1% more arrive; re-fetch vs full join."""
    new = max(1, n // 100)
    before = n - 2 * new
    job = ensure_job(n, arrived=before, name="refetch", status="in_progress")
    folder = os.path.dirname(job)
    saved = os.path.join(folder, "refetched")
    table = table_flags()
    try:
        first = fetch(folder, *table)
        order = completion_order(n)
        write_results(os.path.join(folder, "bench.raw"), order[before:before + new], "ab")
        again = fetch(folder, *table)
        os.makedirs(saved, exist_ok=True)
        for name in outputs(folder):
            shutil.copy(os.path.join(folder, name), os.path.join(saved, name))
        full = fetch(folder, "--rebuild", *table)
        compared = outputs(saved)
        differs = same_files(folder, saved)
        problem = check_results(os.path.join(folder, "bench.results.jsonl"), n,
                                pending=set(order[before + new:]))
    finally:
        if not keep:
            common.remove(folder)
    shown = report.table(
        f"A running job of {n:,} requests: {before:,} results joined, then {new:,} more "
        "arrive (fetch_results.py --offline each time)",
        ["run", "result lines", "wall s", "peak MB", "x full join", "exit"],
        ["", ",", ".2f", ".1f", "{:.1%}", ""])
    shown.add("first fetch (joins everything)", before, first.wall, first.peak_mb,
              first.wall / full.wall, first.exit_code)
    shown.add(f"re-fetch after {new:,} new lines (1%)", before + new, again.wall,
              again.peak_mb, again.wall / full.wall, again.exit_code)
    shown.add("full join of the same files (--rebuild)", before + new, full.wall,
              full.peak_mb, 1.0, full.exit_code)
    shown.notes.append(f"{', '.join(compared)} of the re-fetch against the full "
                       "join's: " + (differs or "byte for byte the same"))
    for name, m in (("first fetch", first), ("re-fetch", again), ("full join", full)):
        if m.exit_code != 3:  # pending requests remain: not finished yet
            report.problems.append(f"{name}: exit {m.exit_code} (3 expected): "
                                   f"{m.stdout[:300]!r}")
    if differs or problem:
        report.problems.append(f"re-fetch: {differs or problem}")
    report.check(f"re-fetch after 1% new lines at most {REFETCH_TARGET:.0%} of a full join",
                 f"{again.wall / full.wall:.1%}", again.wall <= REFETCH_TARGET * full.wall)
    report.data.update(refetch_wall=again.wall, refetch_full_wall=full.wall)


def main() -> int:
    parser = common.parser_for(__doc__)
    parser.add_argument("--requests", "--lines", type=int, default=1_000_000,
                        help="requests to reconcile (default 1,000,000)")
    parser.add_argument("--before", metavar="DIR",
                        help="also time the join of an earlier copy of the project in DIR "
                             "(its scripts/ folder), in the same alternation: e.g. "
                             "git archive COMMIT scripts | tar -x -C DIR")
    parser.add_argument("--join-only", action="store_true",
                        help="measure the full join only, without the running-job re-fetch "
                             "(e.g. to see whether memory grows at 2,000,000)")
    common.add_repeat_arg(parser, default=1)
    common.add_common_args(parser)
    args = parser.parse_args()
    report = common.Report("reconcile", "Reconciliation of results")
    try:
        full_join(args.requests, args.repeat, report, args.before)
    finally:
        if not args.keep:
            common.remove(common.work_path(f"reconcile-{args.requests}"))
    if not args.join_only:
        refetch(args.requests, report, args.keep)
    return common.finish(report, args)


if __name__ == "__main__":
    sys.exit(main())
