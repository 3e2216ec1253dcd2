"""The user's table for 1,000,000 requests: fetch_results.py --offline with and without it.

Builds on bench_reconcile's generated job (shuffled results, 1% failed, 1% truncated, a
structured slice) in its own folder under benchmarks/work/, adds the user's input the job
was "built" from, a CSV of N rows (`id`, `question`, and a `note` with quotes, commas and a
line break every 10th row), and records it in the job file as create_batch_file.py would
(`source`: the CSV, its id column, plain-text answers). Then runs the real command twice,
`fetch_results.py JOB --offline --no-table --json` (the join alone) and
`fetch_results.py JOB --offline --rebuild --json` (the join and the table), and measures wall
time and peak resident memory of each. The table is checked row by row against the CSV and
the results file: every input row once, in order, input cells as they were, status and
answer as in the record.

The target: peak memory under 100 MB with the table, as for the join alone (the table
streams the input beside the records: nothing is held per row).

    python3 benchmarks/bench_table.py                  # 1,000,000 requests
    python3 benchmarks/bench_table.py --requests 100000
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time

import bench_reconcile
import common

MEMORY_TARGET_MB = 100.0


def note_of(i: int) -> str:
    return f'row {i}, "quoted"\nsecond line' if i % 10 == 0 else f"row {i}"


def ensure_table_job(n: int) -> str:
    """bench_reconcile's job in its own folder, plus the CSV input recorded as its source."""
    job_path = bench_reconcile.ensure_job(n, name="table")
    folder = os.path.dirname(job_path)
    csv_path = os.path.join(folder, "questions.csv")
    if not os.path.exists(csv_path):
        with open(csv_path + ".tmp", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "question", "note"])
            for i in range(n):
                w.writerow([f"req-{i:08d}", f"question number {i}: say something", note_of(i)])
        os.replace(csv_path + ".tmp", csv_path)
        with open(job_path, encoding="utf-8") as f:
            job = json.load(f)
        job["source"] = {"input": "questions.csv", "format": "csv", "id_column": "id",
                         "answer": "text"}
        with open(job_path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(job, f, indent=2)
        os.replace(job_path + ".tmp", job_path)
    return job_path


def check_table(table: str, results: str, n: int) -> str | None:
    """None when the table is right, else what is wrong (streamed, a row at a time)."""
    with open(table, newline="", encoding="utf-8") as t, \
            open(results, encoding="utf-8") as r:
        rows = csv.reader(t)
        if next(rows) != ["id", "question", "note", "status", "answer", "error"]:
            return "unexpected header"
        count = 0
        for i, (row, line) in enumerate(zip(rows, r, strict=True)):
            rec = json.loads(line)
            want = [f"req-{i:08d}", f"question number {i}: say something", note_of(i)]
            if row[:3] != want:
                return f"row {i + 1}: input cells changed or out of order"
            if rec["custom_id"] != row[0] or row[3] != rec["status"]:
                return f"row {i + 1}: not joined to its own record"
            answer = rec["content"] if rec["status"] == "ok" else ""
            if row[4] != answer or (rec["status"] == "ok") != (row[5] == ""):
                return f"row {i + 1}: answer or error does not match the record"
            count += 1
    return None if count == n else f"{count} rows instead of {n}"


def main() -> int:
    parser = common.parser_for(__doc__)
    parser.add_argument("--requests", type=int, default=1_000_000,
                        help="requests (and input rows) (default 1,000,000)")
    common.add_common_args(parser)
    args = parser.parse_args()
    n = args.requests
    t0 = time.perf_counter()
    job = ensure_table_job(n)
    folder = os.path.dirname(job)
    prepared = time.perf_counter() - t0
    name = os.path.basename(job)
    try:
        plain = common.measure(common.script("fetch_results.py", name, "--offline",
                                             "--no-table", "--rebuild", "--json"), cwd=folder)
        full = common.measure(common.script("fetch_results.py", name, "--offline",
                                            "--rebuild", "--json"), cwd=folder)
        result = full.json()
        table_path = os.path.join(folder, result.get("table_file") or "missing")
        problem = check_table(table_path, os.path.join(folder, "bench.results.jsonl"), n) \
            if result.get("table_file") else f"no table: {result.get('table_error')}"
        table_mb = os.path.getsize(table_path) / 1e6 if not problem else 0.0
    finally:
        if not args.keep:
            common.remove(folder)
    report = common.Report("table", "The user's table")
    report.info.append(f"job: {n:,} requests built from a {n:,}-row CSV (prepared in "
                       f"{prepared:.1f} s); results shuffled, 1% failed, 1% truncated")
    tab = report.table(f"fetch_results.py --offline on {n:,} requests, without and with the "
                       "table", ["command", "wall s", "peak MB", "exit", "output"],
                       ["", ".1f", ".1f", "", ""])
    tab.add("--no-table (the join alone)", plain.wall, plain.peak_mb, plain.exit_code,
            "results file")
    tab.add("default (join + table)", full.wall, full.peak_mb, full.exit_code,
            problem or f"table {table_mb:.1f} MB: every row once, in order, own answer")
    tab.notes.append(f"the table costs {full.wall - plain.wall:+.1f} s and "
                     f"{full.peak_mb - plain.peak_mb:+.1f} MB of peak memory over the join")
    if problem or full.exit_code != 4 or result.get("table_rows") != n:
        report.problems.append(f"table: exit {full.exit_code}, {result.get('table_rows')} rows; "
                               f"{problem or 'no check'}")
    report.check(f"table of {n:,} requests peak memory < {MEMORY_TARGET_MB:.0f} MB",
                 f"{full.peak_mb:.1f} MB", full.peak_mb < MEMORY_TARGET_MB)
    report.data.update(requests=n, wall=full.wall, peak_mb=full.peak_mb,
                       join_wall=plain.wall, join_peak_mb=plain.peak_mb)
    return common.finish(report, args)


if __name__ == "__main__":
    sys.exit(main())
