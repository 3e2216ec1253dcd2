"""Downloading a 1,000,000-line output file: fetch_results.py against `curl`, same sandbox.

Builds a batch file of N short chat requests under benchmarks/work/ (gitignored; removed
afterwards unless --keep, reused when present), starts scripts/sandbox_server.py on an
ephemeral loopback port (--rate 0: the batch finishes in seconds), submits it with submit.py
as one shard, waits until the batch has completed, and then measures, one process at a time,
wall time and peak resident memory (kernel rusage of that process) of:

  curl                 curl -o FILE .../files/{output_file_id}/content (the baseline)
  download only        dwbatch.download.download_file: the incremental downloader alone
  fetch_results.py     the whole command: batch check, download of output and error files,
                       reconciliation of every request, results and retry files
  fetch_results.py #2  the same command again: nothing new to download (one skip= request
                       per file); the join is redone unless fetch_results.py finds that
                       nothing it is built from changed

Before each curl and download-only run the earlier files are deleted and the disk is
settled (sync), so one run's leftover disk work is not charged to the next. The raw copy
fetch_results.py keeps must equal curl's file byte for byte. Targets: peak
memory under 100 MB, the download at least half as fast as curl (wall at most 2x curl's).

    python3 benchmarks/bench_download.py                    # 1,000,000 lines
    python3 benchmarks/bench_download.py --requests 100000  # quick
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import common

MEMORY_TARGET_MB = 100.0
SPEED_TARGET = 2.0

DOWNLOAD_ONLY = """\
import json, os, sys
sys.path.insert(0, {scripts!r})
from dwbatch import download
from dwbatch.client import Client
from dwbatch.config import Settings

class Memory(download.StateStore):
    def __init__(self): self.state = {{}}
    def load(self): return dict(self.state)
    def save(self, state): self.state = dict(state)

api = Client(Settings(os.environ["DOUBLEWORD_BASE_URL"], os.environ["DOUBLEWORD_API_KEY"]))
res = download.download_file(api, {file_id!r}, {path!r}, "output", {{}}, Memory(),
                             terminal=True)
print(json.dumps(res.as_dict()))
"""


def ensure_input(n: int) -> str:
    def lines():
        for i in range(n):
            yield common.dumps_line(common.chat_request(
                f"req-{i:08d}", f"tell me about item {i}", max_tokens=32))
    return common.write_once(common.work_path(f"download-{n}.jsonl"), lines)


def main() -> int:
    parser = common.parser_for(__doc__)
    parser.add_argument("--requests", "--lines", type=int, default=1_000_000,
                        help="requests, so output lines (default 1,000,000)")
    common.add_repeat_arg(parser, default=5)
    common.add_common_args(parser)
    args = parser.parse_args()
    common.need_curl()
    n = args.requests
    source = ensure_input(n)
    report = common.Report("download", "Download of a big output file vs curl")
    rows = []
    try:
        with common.start_sandbox("--rate", "0", "--max-file-bytes", str(2_000_000_000)) \
                as sandbox, tempfile.TemporaryDirectory(dir=common.work_path()) as tmp:
            env = common.script_env(sandbox.base_url)
            job_input = os.path.join(tmp, "bench.jsonl")
            os.link(source, job_input)
            t0 = time.perf_counter()
            m = common.measure(common.script("submit.py", job_input, "--max-requests", str(n),
                                             "--max-file-bytes", "2GB", "--json"), env=env)
            if m.exit_code != 0:
                raise SystemExit(f"submit.py failed: {m.stdout}")
            batch = sandbox.wait_batch(m.json()["batch_ids"][0])
            report.info.append(f"{n:,} requests submitted and completed in "
                               f"{time.perf_counter() - t0:.1f} s")
            out_id = batch["output_file_id"]
            content_url = f"{sandbox.base_url}/files/{out_id}/content"

            curl_file = os.path.join(tmp, "curl.jsonl")
            header = common.curl_header_file(tmp)
            m = common.measure(["curl", "-sS", "-H", f"@{header}", "-o", curl_file, content_url])
            if m.exit_code != 0 or common.count_lines(curl_file) != n:
                raise SystemExit(f"curl could not download the output file: exit {m.exit_code}")
            size = os.path.getsize(curl_file)
            expected_sha = common.sha256_of(curl_file)
            only = os.path.join(tmp, "only.jsonl")

            def curl() -> common.Measurement:
                common.remove(curl_file)
                common.settle()
                m = common.measure(["curl", "-sS", "-H", f"@{header}", "-o", curl_file,
                                    content_url])
                checks.append(("curl", m.exit_code == 0 and common.sha256_of(curl_file)
                               == expected_sha))
                return m

            def download_only() -> common.Measurement:
                common.remove(only)
                common.settle()
                m = common.measure([sys.executable, "-c", DOWNLOAD_ONLY.format(
                    scripts=common.SCRIPTS, file_id=out_id, path=only)], env=env)
                checks.append(("only", m.exit_code == 0 and m.json().get("lines") == n
                               and common.sha256_of(only) == expected_sha))
                return m

            checks: list[tuple[str, bool]] = []
            runs = common.alternate({"curl": curl, "only": download_only}, args.repeat)
            common.remove(curl_file, only)
            rows.append(("curl (baseline)", common.combined(runs["curl"]),
                         all(ok for k, ok in checks if k == "curl")))
            rows.append(("download only (dwbatch.download)", common.combined(runs["only"]),
                         all(ok for k, ok in checks if k == "only")))

            raw = os.path.join(tmp, "bench.raw", f"{batch['id']}.output.jsonl")
            for label in (f"fetch_results.py (download + join of {n:,})",
                          "fetch_results.py again (nothing new)"):
                m = common.measure(common.script("fetch_results.py", "bench.job.json", "--json"),
                                   env=env, cwd=tmp)
                rows.append((label, m, m.exit_code == 0
                             and m.json().get("counts", {}).get("ok") == n
                             and common.sha256_of(raw) == expected_sha))
    finally:
        if not args.keep:
            common.remove(source)

    base = rows[0][1]
    report.info.append(f"output file: {n:,} lines, {size / 1e6:.1f} MB")
    table = report.table(f"Download, same output file, same sandbox, one process at a time "
                         f"(curl and download only: median of {args.repeat} runs, taking turns)",
                         ["client", "wall s", "peak MB", "wall x curl", "mem x curl", "ok"],
                         ["", ".2f", ".1f", "{:.2f}x", "{:.2f}x"])
    for name, m, ok in rows:
        table.add(name, m.wall, m.peak_mb, m.wall / base.wall, m.peak_mb / base.peak_mb, ok)
        if not ok:
            report.problems.append(f"{name}: exit {m.exit_code}, wrong or missing lines "
                                   f"({m.stdout[:300]!r})")
    only, fetch = rows[1][1], rows[2][1]
    table.notes.append("wall times of the curl and download-only runs: " + "; ".join(
        f"{k} " + ", ".join(f"{m.wall:.2f}" for m in v) for k, v in runs.items()))
    table.notes.append(
        "ok = every line arrived and the copy equals curl's byte for byte (fetch_results.py: "
        "also every request reconciled as ok).")
    table.notes.append(
        f"fetch_results.py end to end is {fetch.wall / base.wall:.2f}x curl: besides the "
        "download it checks the batch, fetches the error file and joins every request "
        "into the results file (the join alone: see the reconciliation table).")
    for name, m, _ in rows[1:]:
        report.check(f"{name} peak memory < {MEMORY_TARGET_MB:.0f} MB",
                     f"{m.peak_mb:.1f} MB", m.peak_mb < MEMORY_TARGET_MB)
    report.check(f"download at least half as fast as curl (download only wall <= "
                 f"{SPEED_TARGET:g}x curl)", f"{only.wall / base.wall:.2f}x",
                 only.wall <= SPEED_TARGET * base.wall)
    report.data.update(lines=n, size=size, rows={r[0]: [r[1].wall, r[1].peak_mb] for r in rows})
    return common.finish(report, args)


if __name__ == "__main__":
    sys.exit(main())
