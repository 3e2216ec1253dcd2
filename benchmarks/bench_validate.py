"""How much slower is validating a batch file than just parsing it?

Generates a file of ~1 KB chat request lines (default ~200 MB) under benchmarks/work/
(gitignored; removed afterwards unless --keep, reused when present), then times, in the same
run and on the same file: a bare `json.loads` per line loop (the ceiling: no validator can
read JSON faster than it is parsed), and dwbatch.validate.check_files (fast path + uniqueness
+ sha256 + token estimate), the checker behind create_batch_file.py --check and submit.py. It
also times jsonschema on a sample of lines, to show why the fast path exists. The target is a
ratio of at most 4x.

    python3 benchmarks/bench_validate.py                 # ~200 MB
    python3 benchmarks/bench_validate.py --size-mb 5     # quick
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

import common
from dwbatch import validate

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi "
         "rho sigma tau upsilon phi chi psi omega summarise translate explain the of and to a "
         "in is that for it as with was on be by this data model batch request").split()


def make_line(i: int, rng: random.Random, line_bytes: int) -> str:
    req = common.chat_request(f"req-{i:08d}", "", model="Qwen/Qwen3-30B-A3B-Instruct-2507",
                              max_tokens=256, system="You are a helpful assistant.")
    req["body"]["temperature"] = 0.2
    base = len(json.dumps(req))
    words, n = [], 0
    while n < line_bytes - base:
        w = rng.choice(WORDS)
        words.append(w)
        n += len(w) + 1
    req["body"]["messages"][1]["content"] = " ".join(words)[: max(0, line_bytes - base)]
    return json.dumps(req) + "\n"


def ensure_file(size_mb: float, line_bytes: int) -> str:
    target = int(size_mb * 1_000_000)

    def lines():
        rng = random.Random(1234)
        written, i = 0, 0
        while written < target:
            i += 1
            line = make_line(i, rng, line_bytes)
            written += len(line)
            yield line

    return common.write_once(
        common.work_path(f"bench-{size_mb:g}MB-{line_bytes}B.jsonl"), lines,
        reuse=lambda p: os.path.exists(p) and os.path.getsize(p) >= target * 0.99)


def bare_parse(path: str) -> int:
    n = 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                json.loads(line)
                n += 1
    return n


def run_validator(path: str) -> int:
    report = validate.check_files([path], split_oversize=True)
    if not report.ok:
        raise SystemExit("benchmark file unexpectedly invalid:\n" + report.render())
    return report.total_requests


def schema_per_line(path: str, sample: int) -> tuple[float, int]:
    validator = validate.schema_validator()
    n = 0
    start = time.perf_counter()
    with open(path, "rb") as f:
        for line in f:
            validator.validate(json.loads(line))
            n += 1
            if n >= sample:
                break
    return time.perf_counter() - start, n


def main() -> int:
    ap = common.parser_for(__doc__)
    ap.add_argument("--size-mb", type=float, default=200, help="file size (default 200)")
    ap.add_argument("--line-bytes", type=int, default=1000, help="bytes per line (default 1000)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each, best kept (default 1)")
    ap.add_argument("--schema-sample", type=int, default=5000,
                    help="lines to time jsonschema on (default 5000)")
    ap.add_argument("--max-ratio", type=float, default=4.0,
                    help="exit 1 when validation is slower than this many times parsing")
    common.add_common_args(ap)
    args = ap.parse_args()

    path = ensure_file(args.size_mb, args.line_bytes)
    try:
        size = os.path.getsize(path)
        bare_parse(path)  # warm the page cache so both runs read from memory
        t_parse, n = common.timed(bare_parse, path, repeat=args.repeat)
        t_check, n2 = common.timed(run_validator, path, repeat=args.repeat)
        t_sample, k = schema_per_line(path, args.schema_sample)
    finally:
        if not args.keep:
            common.remove(path)
    t_schema = t_sample / k * n
    ratio = t_check / t_parse

    report = common.Report("validate", "Validation vs a bare json.loads loop")
    report.info.append(f"file: {os.path.relpath(path, common.ROOT)}  {size / 1e6:,.1f} MB, "
                       f"{n:,} lines (~{size // n:,} B/line)")
    table = report.table("Validation of one file, same file, same run",
                         ["method", "seconds", "MB/s", "lines/s", "vs parse"],
                         ["", ".2f", ".1f", ",.0f", "{:.2f}x"])
    table.add("json.loads per line (baseline, ceiling)", t_parse, size / 1e6 / t_parse,
              n / t_parse, 1.0)
    table.add("validate.check_files", t_check, size / 1e6 / t_check, n / t_check, ratio)
    table.add(f"jsonschema per line (extrapolated from {k:,})", t_schema,
              size / 1e6 / t_schema, n / t_schema, t_schema / t_parse)
    if n != n2:
        report.problems.append(f"the validator counted {n2:,} requests, the parser {n:,}")
    report.check(f"validation at most {args.max_ratio:g}x the parse-only ceiling",
                 f"{ratio:.2f}x", ratio <= args.max_ratio)
    report.data.update(size=size, lines=n, parse_s=t_parse, validate_s=t_check, ratio=ratio)
    return common.finish(report, args)


if __name__ == "__main__":
    sys.exit(main())
