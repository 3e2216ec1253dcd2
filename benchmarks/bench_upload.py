"""Uploading a big batch file: submit.py against `curl -F`, same file, same local sandbox.

Generates a file of chat request lines (default ~200 MB, kept under submit.py's 200,000,000
byte limit so it is one shard) under benchmarks/work/ (gitignored; removed afterwards unless
--keep, reused when present), starts scripts/sandbox_server.py on an ephemeral loopback port,
then measures, one process at a time, wall time and peak resident memory (from the kernel's
rusage of that process) of:

  curl -F        curl -F purpose=batch -F file=@FILE  (the baseline: a C client, streaming)
  client upload  dwbatch.client.Client.upload_file alone (the streamed multipart upload)
  submit.py      the whole command: validate every line, upload, create the batch

The targets: peak memory under 100 MB whatever the file size, and the upload at least half
as fast as curl (wall time at most 2x curl's).

    python3 benchmarks/bench_upload.py                  # ~200 MB
    python3 benchmarks/bench_upload.py --size-mb 20     # quick
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import common

MEMORY_TARGET_MB = 100.0
SPEED_TARGET = 2.0  # at most this many times curl's wall time

UPLOAD = """\
import json, os, sys
sys.path.insert(0, {scripts!r})
from dwbatch.client import Client
from dwbatch.config import Settings
c = Client(Settings(os.environ["DOUBLEWORD_BASE_URL"], os.environ["DOUBLEWORD_API_KEY"]))
print(json.dumps(c.upload_file({path!r})))
"""


def ensure_file(size_mb: float, line_bytes: int) -> str:
    """A valid batch file of about size_mb MB (never above it)."""
    target = int(size_mb * 1_000_000)
    filler = "lorem ipsum dolor sit amet " * (line_bytes // 27 + 1)

    def lines():
        written, i = 0, 0
        while True:
            req = common.chat_request(f"req-{i:09d}", "", max_tokens=16)
            base = len(json.dumps(req)) + 1
            req["body"]["messages"][0]["content"] = filler[: max(1, line_bytes - base)]
            line = json.dumps(req) + "\n"
            if written + len(line) > target:
                return
            written += len(line)
            i += 1
            yield line

    return common.write_once(
        common.work_path(f"upload-{size_mb:g}MB.jsonl"), lines,
        reuse=lambda p: os.path.exists(p) and target * 0.98 <= os.path.getsize(p) <= target)


def main() -> int:
    parser = common.parser_for(__doc__)
    parser.add_argument("--size-mb", type=float, default=200.0,
                        help="file size in MB (10**6 bytes; default 200)")
    parser.add_argument("--line-bytes", type=int, default=5000,
                        help="bytes per request line (default 5000: 200 MB stays under "
                             "submit.py's 50,000-request limit, so one shard)")
    common.add_repeat_arg(parser, default=5)
    common.add_common_args(parser)
    args = parser.parse_args()
    common.need_curl()
    path = ensure_file(args.size_mb, args.line_bytes)
    size = os.path.getsize(path)
    report = common.Report("upload", "Upload of a big file vs curl -F")
    table = report.table(f"Upload, same file, same sandbox, one process at a time (curl and "
                         f"client upload: median of {args.repeat} runs, taking turns)",
                         ["client", "wall s", "peak MB", "wall x curl", "mem x curl", "ok"],
                         ["", ".2f", ".1f", "{:.2f}x", "{:.2f}x"])
    rows = []
    try:
        with common.start_sandbox("--max-file-bytes", str(max(size * 2, 1_000_000)),
                                  "--manual") as sandbox, tempfile.TemporaryDirectory() as tmp:
            env = common.script_env(sandbox.base_url)
            header = common.curl_header_file(tmp)
            runs = common.alternate({
                "curl": lambda: common.measure(
                    ["curl", "-sS", "-H", f"@{header}", "-F", "purpose=batch",
                     "-F", f"file=@{path};type=application/jsonl", f"{sandbox.base_url}/files"]),
                "client": lambda: common.measure(
                    [sys.executable, "-c", UPLOAD.format(scripts=common.SCRIPTS, path=path)],
                    env=env)}, args.repeat, before=common.settle)
            for label, key in (("curl -F (baseline)", "curl"),
                               ("client upload (dwbatch.client)", "client")):
                ok = all(m.exit_code == 0 and m.json().get("bytes") == size for m in runs[key])
                rows.append((label, common.combined(runs[key]), ok))

            m = common.measure(common.script("submit.py", path, "--job",
                                             os.path.join(tmp, "bench.job.json"), "--json"),
                               env=env)
            res = m.json()
            shards = res.get("shards") or []
            rows.append((f"submit.py ({len(shards)} shard(s), incl. validation + create)", m,
                         m.exit_code == 0 and len(res.get("batch_ids") or []) == len(shards) >= 1))
    finally:
        if not args.keep:
            common.remove(path)

    base = rows[0][1]
    for name, m, ok in rows:
        table.add(name, m.wall, m.peak_mb, m.wall / base.wall, m.peak_mb / base.peak_mb, ok)
        if not ok:
            report.problems.append(f"{name}: exit {m.exit_code}, unexpected answer "
                                   f"{m.stdout[:300]!r}")
    report.info.append(f"file: {os.path.relpath(path, common.ROOT)} ({size / 1e6:.1f} MB, "
                       f"{size:,} bytes)")
    upload, submit = rows[1][1], rows[2][1]
    table.notes.append("wall times of the curl and client upload runs: " + "; ".join(
        f"{k} " + ", ".join(f"{m.wall:.2f}" for m in v) for k, v in runs.items()))
    for name, m, _ in rows[1:]:
        report.check(f"{name.split(' (')[0]} peak memory < {MEMORY_TARGET_MB:.0f} MB",
                     f"{m.peak_mb:.1f} MB", m.peak_mb < MEMORY_TARGET_MB)
    report.check(f"upload at least half as fast as curl -F (client upload wall <= "
                 f"{SPEED_TARGET:g}x curl)", f"{upload.wall / base.wall:.2f}x",
                 upload.wall <= SPEED_TARGET * base.wall)
    table.notes.append(
        f"submit.py end to end is {submit.wall / base.wall:.2f}x curl: before uploading it "
        f"validates every line and hashes the file (one extra pass, "
        f"{max(0.0, submit.wall - upload.wall):.2f} s here; see the validation table), "
        "and it creates the batch; curl does neither. The speed target is judged on the "
        "upload itself.")
    report.data.update(size=size, rows={n: [m.wall, m.peak_mb] for n, m, _ in rows})
    return common.finish(report, args)


if __name__ == "__main__":
    sys.exit(main())
