"""How much slower is validating a batch file than just parsing it?

Generates a file of ~1 KB chat request lines (default ~200 MB) under benchmarks/work/
(gitignored, reused when it is already there), then times, in the same run and on the same
file: a bare `json.loads` per line loop, and dwbatch.validate.check_files (fast path +
uniqueness + sha256 + token estimate). It also times jsonschema on a sample of lines, to show
why the fast path exists. The target is a ratio of at most 4x.

    python3 benchmarks/bench_validate.py                 # ~200 MB
    python3 benchmarks/bench_validate.py --size-mb 5     # quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "scripts"))

from dwbatch import validate  # noqa: E402

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi "
         "rho sigma tau upsilon phi chi psi omega summarise translate explain the of and to a "
         "in is that for it as with was on be by this data model batch request").split()


def make_line(i: int, rng: random.Random, line_bytes: int) -> str:
    req = {"custom_id": f"req-{i:08d}", "method": "POST", "url": "/v1/chat/completions",
           "body": {"model": "Qwen/Qwen3-30B-A3B-Instruct-2507", "max_tokens": 256,
                    "temperature": 0.2,
                    "messages": [{"role": "system", "content": "You are a helpful assistant."},
                                 {"role": "user", "content": ""}]}}
    base = len(json.dumps(req))
    words, n = [], 0
    while n < line_bytes - base:
        w = rng.choice(WORDS)
        words.append(w)
        n += len(w) + 1
    req["body"]["messages"][1]["content"] = " ".join(words)[: max(0, line_bytes - base)]
    return json.dumps(req)


def ensure_file(size_mb: float, line_bytes: int) -> str:
    work = os.path.join(HERE, "work")
    os.makedirs(work, exist_ok=True)
    path = os.path.join(work, f"bench-{size_mb:g}MB-{line_bytes}B.jsonl")
    target = int(size_mb * 1_000_000)
    if os.path.exists(path) and os.path.getsize(path) >= target * 0.99:
        return path
    rng = random.Random(1234)
    tmp = path + ".tmp"
    written = 0
    i = 0
    with open(tmp, "w", encoding="utf-8") as f:
        while written < target:
            i += 1
            line = make_line(i, rng, line_bytes) + "\n"
            f.write(line)
            written += len(line)
    os.replace(tmp, path)
    return path


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


def timed(fn, path: str, repeat: int) -> tuple[float, int]:
    best, n = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        n = fn(path)
        best = min(best, time.perf_counter() - start)
    return best, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=200, help="file size (default 200)")
    ap.add_argument("--line-bytes", type=int, default=1000, help="bytes per line (default 1000)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each, best kept (default 1)")
    ap.add_argument("--schema-sample", type=int, default=5000,
                    help="lines to time jsonschema on (default 5000)")
    ap.add_argument("--max-ratio", type=float, default=4.0,
                    help="exit 1 when validation is slower than this many times parsing")
    args = ap.parse_args()

    path = ensure_file(args.size_mb, args.line_bytes)
    size = os.path.getsize(path)
    bare_parse(path)  # warm the page cache so both runs read from memory
    t_parse, n = timed(bare_parse, path, args.repeat)
    t_check, n2 = timed(run_validator, path, args.repeat)
    assert n == n2, (n, n2)
    t_sample, k = schema_per_line(path, args.schema_sample)
    t_schema = t_sample / k * n

    ratio = t_check / t_parse
    rows = [("json.loads per line (baseline)", t_parse, 1.0),
            ("validate.check_files", t_check, ratio),
            (f"jsonschema per line (extrapolated from {k:,})", t_schema, t_schema / t_parse)]
    print(f"file: {os.path.relpath(path)}  {size / 1e6:,.1f} MB, {n:,} lines "
          f"(~{size // n:,} B/line)")
    print(f"{'method':<46} {'seconds':>9} {'MB/s':>8} {'lines/s':>11} {'vs parse':>9}")
    for name, secs, r in rows:
        print(f"{name:<46} {secs:>9.2f} {size / 1e6 / secs:>8.1f} {n / secs:>11,.0f} "
              f"{r:>8.2f}x")
    verdict = "PASS" if ratio <= args.max_ratio else "FAIL"
    print(f"ratio validate/parse = {ratio:.2f}x (limit {args.max_ratio:g}x): {verdict}")
    return 0 if ratio <= args.max_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
