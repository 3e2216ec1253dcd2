"""Uploading a big batch file: submit.py against `curl -F`, same file, same local sandbox.

Generates a file of chat request lines (default ~200 MB, kept under submit.py's 200,000,000
byte limit so it is one shard) under benchmarks/work/ (gitignored; removed afterwards unless
--keep, reused when present),
starts scripts/sandbox_server.py on an ephemeral loopback port, then measures, one process
at a time, wall time and peak resident memory (from the kernel's rusage of that process) of:

  curl -F        curl -F purpose=batch -F file=@FILE  (the baseline: a C client, streaming)
  client upload  dwbatch.client.Client.upload_file alone (the streamed multipart upload)
  submit.py      the whole command: validate every line, upload, create the batch

The target: submit.py's peak memory stays under 100 MB whatever the file size.

    python3 benchmarks/bench_upload.py                  # ~200 MB
    python3 benchmarks/bench_upload.py --size-mb 20     # quick
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPTS = os.path.join(ROOT, "scripts")
BENCH_KEY = "dw-bench-upload-key-0000"
MEMORY_TARGET_MB = 100.0


def ensure_file(size_mb: float, line_bytes: int) -> str:
    """A valid batch file of about size_mb MB (never above it), built once and reused."""
    work = os.path.join(HERE, "work")
    os.makedirs(work, exist_ok=True)
    path = os.path.join(work, f"upload-{size_mb:g}MB.jsonl")
    target = int(size_mb * 1_000_000)
    if os.path.exists(path) and target * 0.98 <= os.path.getsize(path) <= target:
        return path
    filler = "lorem ipsum dolor sit amet " * (line_bytes // 27 + 1)
    tmp = path + ".tmp"
    written = 0
    i = 0
    with open(tmp, "w", encoding="utf-8") as f:
        while True:
            req = {"custom_id": f"req-{i:09d}", "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": "sandbox-chat", "max_tokens": 16,
                            "messages": [{"role": "user", "content": ""}]}}
            base = len(json.dumps(req)) + 1
            req["body"]["messages"][0]["content"] = filler[: max(1, line_bytes - base)]
            line = json.dumps(req) + "\n"
            if written + len(line) > target:
                break
            f.write(line)
            written += len(line)
            i += 1
    os.replace(tmp, path)
    return path


def start_sandbox(max_file_bytes: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, os.path.join(SCRIPTS, "sandbox_server.py"), "--port", "0",
         "--api-key", BENCH_KEY, "--max-file-bytes", str(max_file_bytes), "--manual"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line or "")
        if m:
            return proc, m.group(1)
        if not line:
            break
    proc.kill()
    raise SystemExit("the sandbox did not start")


def measure(cmd: list[str], env: dict | None = None, cwd: str | None = None
            ) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS in MB, exit status, stdout) of one child process."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    peak_mb = usage.ru_maxrss / 1024.0  # Linux: kilobytes
    if sys.platform == "darwin":
        peak_mb = usage.ru_maxrss / (1024.0 * 1024.0)
    return wall, peak_mb, proc.returncode, text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=200.0,
                        help="file size in MB (10**6 bytes; default 200)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the generated file in benchmarks/work/ for the next run")
    parser.add_argument("--line-bytes", type=int, default=5000,
                        help="bytes per request line (default 5000: 200 MB stays under "
                             "submit.py's 50,000-request limit, so one shard)")
    args = parser.parse_args()
    if not shutil.which("curl"):
        raise SystemExit("curl is needed for the baseline")
    path = ensure_file(args.size_mb, args.line_bytes)
    size = os.path.getsize(path)
    sandbox, base_url = start_sandbox(max(size * 2, 1_000_000))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOUBLEWORD_")}
    env.update(DOUBLEWORD_API_KEY=BENCH_KEY, DOUBLEWORD_BASE_URL=base_url)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            header_file = os.path.join(tmp, "auth.txt")  # keeps the key off curl's argv
            with open(header_file, "w") as f:
                f.write(f"Authorization: Bearer {BENCH_KEY}\n")
            wall, peak, code, out = measure(
                ["curl", "-sS", "-H", f"@{header_file}", "-F", "purpose=batch",
                 "-F", f"file=@{path};type=application/jsonl", f"{base_url}/files"])
            ok = code == 0 and json.loads(out or "{}").get("bytes") == size
            rows.append(("curl -F", wall, peak, ok))

            upload = (f"import sys; sys.path.insert(0, {SCRIPTS!r})\n"
                      "from dwbatch.client import Client\n"
                      "from dwbatch.config import Settings\n"
                      "import os, json\n"
                      "c = Client(Settings(os.environ['DOUBLEWORD_BASE_URL'],"
                      " os.environ['DOUBLEWORD_API_KEY']))\n"
                      f"print(json.dumps(c.upload_file({path!r})))\n")
            wall, peak, code, out = measure([sys.executable, "-c", upload], env=env)
            ok = code == 0 and json.loads(out or "{}").get("bytes") == size
            rows.append(("client upload", wall, peak, ok))

            job = os.path.join(tmp, "bench.job.json")
            wall, peak, code, out = measure(
                [sys.executable, os.path.join(SCRIPTS, "submit.py"), path, "--job", job,
                 "--json"], env=env)
            result = json.loads(out or "{}")
            shards = result.get("shards") or []
            ok = code == 0 and len(result.get("batch_ids") or []) == len(shards) >= 1
            rows.append((f"submit.py ({len(shards)} shard(s), incl. validation)", wall, peak,
                         ok))
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)
        if not args.keep:
            os.unlink(path)

    base_wall, base_peak = rows[0][1], rows[0][2]
    print(f"file: {path} ({size / 1e6:.1f} MB, {size:,} bytes)")
    print(f"{'client':<40} {'wall s':>8} {'peak MB':>9} {'wall x curl':>12} "
          f"{'mem x curl':>11}  ok")
    for name, wall, peak, ok in rows:
        print(f"{name:<40} {wall:8.2f} {peak:9.1f} {wall / base_wall:12.2f} "
              f"{peak / base_peak:11.2f}  {'yes' if ok else 'NO'}")
    submit_peak = rows[-1][2]
    verdict = "PASS" if submit_peak < MEMORY_TARGET_MB else "FAIL"
    print(f"submit.py peak memory {submit_peak:.1f} MB, target < {MEMORY_TARGET_MB:.0f} MB: "
          f"{verdict}")
    return 0 if verdict == "PASS" and all(r[3] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
