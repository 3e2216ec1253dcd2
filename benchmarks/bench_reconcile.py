"""Reconciling 1,000,000 requests: fetch_results.py --offline on a job whose raw copies exist.

Generates (under benchmarks/work/, gitignored; removed afterwards unless --keep, reused when
present) a job of N chat requests as
submit.py records it, plus raw output and error files as the service writes them: in a
shuffled completion order, 1% failed (JSON-text error messages), 1% truncated, and a
structured-output slice (JSON Schema) with a few schema-invalid answers. Then runs the real
command, `fetch_results.py JOB --offline --json` (no network: only the join), and measures its
wall time and peak resident memory (kernel rusage of that process). The results file is then
checked: one record per request, in input order, each joined to its own answer.

The target: peak memory under 500 MB for 1,000,000 requests (the join is an sqlite3 index of
byte offsets in a temporary file; no result is held in a dict).

    python3 benchmarks/bench_reconcile.py                 # 1,000,000 requests
    python3 benchmarks/bench_reconcile.py --requests 100000
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time

import common

MEMORY_TARGET_MB = 500.0
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


def ensure_job(n: int) -> str:
    """The job folder (reused when complete): input, job file, raw output and error files."""
    folder = common.work_path(f"reconcile-{n}")
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
    order = list(range(n))
    random.Random(1).shuffle(order)
    raw = os.path.join(folder, "bench.raw")
    counts = {"output": [0, 0], "error": [0, 0]}
    with open(os.path.join(raw, f"{BATCH_ID}.output.jsonl"), "wb") as out, \
            open(os.path.join(raw, f"{BATCH_ID}.errors.jsonl"), "wb") as err:
        for i in order:
            kind, obj = result_line(i)
            line = (json.dumps(obj) + "\n").encode()
            (out if kind == "output" else err).write(line)
            counts[kind][0] += 1
            counts[kind][1] += len(line)
    shard = {"index": 0, "path": "bench.jsonl", "input": "bench.jsonl",
             "sha256": digest.hexdigest(), "requests": n, "bytes": size,
             "endpoint": "/v1/chat/completions", "file_id": "bench-input",
             "batch_id": BATCH_ID, "status": "completed",
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


def check_results(path: str, n: int) -> str | None:
    """None when the results file is right, else what is wrong."""
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            rec = json.loads(line)
            if rec["custom_id"] != f"req-{i:08d}":
                return f"line {i + 1}: custom_id {rec['custom_id']} out of order"
            kind = kind_of(i)
            want = {"error": "error", "truncated": "truncated", "structured": "ok",
                    "structured_bad": "schema_invalid", "ok": "ok"}[kind]
            if rec["status"] != want:
                return f"line {i + 1}: status {rec['status']}, expected {want}"
            if kind == "ok" and rec["content"] != f"ECHO question number {i}: say something":
                return f"line {i + 1}: joined to the wrong answer"
    if i + 1 != n:
        return f"{i + 1} records instead of {n}"
    return None


def main() -> int:
    parser = common.parser_for(__doc__)
    parser.add_argument("--requests", "--lines", type=int, default=1_000_000,
                        help="requests to reconcile (default 1,000,000)")
    common.add_common_args(parser)
    args = parser.parse_args()
    n = args.requests
    t0 = time.perf_counter()
    job = ensure_job(n)
    folder = os.path.dirname(job)
    prepared = time.perf_counter() - t0
    try:
        m = common.measure(common.script("fetch_results.py", os.path.basename(job), "--offline",
                                         "--json"), cwd=folder)
        result = m.json()
        problem = check_results(os.path.join(folder, "bench.results.jsonl"), n)
        raw_bytes = common.tree_bytes(os.path.join(folder, "bench.raw"))
    finally:
        if not args.keep:
            common.remove(folder)
    report = common.Report("reconcile", "Reconciliation of results")
    report.info.append(f"job: {os.path.relpath(job, common.ROOT)} (prepared in {prepared:.1f} "
                       f"s; raw output + error files {raw_bytes / 1e6:.1f} MB, shuffled order)")
    table = report.table(f"Reconciliation of {n:,} requests (fetch_results.py --offline: "
                         "the join alone, no network)",
                         ["command", "requests", "wall s", "requests/s", "peak MB", "exit",
                          "results file"], ["", ",", ".1f", ",.0f", ".1f", ""])
    table.add("fetch_results.py --offline", n, m.wall, n / m.wall, m.peak_mb, m.exit_code,
              problem or "one record per request, input order, own answer")
    table.notes.append(f"counts {result.get('counts')}; retry file "
                       f"{result.get('retry_requests')} lines; exit 4 is expected (the "
                       "generated job has failed, truncated and schema-invalid answers)")
    if problem or m.exit_code != 4 or result.get("records") != n:
        report.problems.append(f"fetch_results.py --offline: exit {m.exit_code}, "
                               f"{result.get('records')} records; {problem or 'no check'}")
    report.check(f"reconciliation of {n:,} peak memory < {MEMORY_TARGET_MB:.0f} MB",
                 f"{m.peak_mb:.1f} MB", m.peak_mb < MEMORY_TARGET_MB)
    report.data.update(requests=n, wall=m.wall, peak_mb=m.peak_mb)
    return common.finish(report, args)


if __name__ == "__main__":
    sys.exit(main())
