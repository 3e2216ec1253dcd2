"""Downloading a 1,000,000-line output file: fetch_results.py against `curl`, same sandbox.

Builds (once, under benchmarks/work/, gitignored) a batch file of N short chat requests,
starts scripts/sandbox_server.py on an ephemeral loopback port (--rate 0: the batch finishes
in seconds), submits it with submit.py as one shard, waits until the batch has completed, and
then measures, one process at a time, wall time and peak resident memory (kernel rusage of
that process) of:

  curl                 curl -o FILE .../files/{output_file_id}/content (the baseline)
  download only        dwbatch.download.download_file: the incremental downloader alone
  fetch_results.py     the whole command: batch check, download of output and error files,
                       reconciliation of every request, results and retry files
  fetch_results.py #2  the same command again: nothing new to download (one skip= request),
                       the join is redone

The raw copy fetch_results.py keeps must equal curl's file byte for byte.

    python3 benchmarks/bench_download.py                    # 1,000,000 lines
    python3 benchmarks/bench_download.py --requests 100000  # quick
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPTS = os.path.join(ROOT, "scripts")
BENCH_KEY = "dw-bench-download-key-0000"


def ensure_input(n: int) -> str:
    work = os.path.join(HERE, "work")
    os.makedirs(work, exist_ok=True)
    path = os.path.join(work, f"download-{n}.jsonl")
    if os.path.exists(path):
        return path
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({
                "custom_id": f"req-{i:08d}", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "sandbox-chat", "max_tokens": 32,
                         "messages": [{"role": "user", "content": f"tell me about item {i}"}]}},
                separators=(",", ":")) + "\n")
    os.replace(path + ".tmp", path)
    return path


def start_sandbox() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, os.path.join(SCRIPTS, "sandbox_server.py"), "--port", "0",
         "--api-key", BENCH_KEY, "--rate", "0", "--max-file-bytes", str(2_000_000_000)],
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
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    peak_mb = usage.ru_maxrss / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0)
    return wall, peak_mb, os.waitstatus_to_exitcode(status), text


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def wait_completed(base_url: str, batch_id: str, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {BENCH_KEY}"}
    while time.monotonic() < deadline:
        batch = requests.get(f"{base_url}/batches/{batch_id}", headers=headers, timeout=60).json()
        if batch.get("status") in ("completed", "failed", "cancelled", "expired"):
            return batch
        time.sleep(0.5)
    raise SystemExit(f"batch {batch_id} did not finish in {timeout:.0f} s")


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    args = parser.parse_args()
    if not shutil.which("curl"):
        raise SystemExit("curl is needed for the baseline")
    n = args.requests
    source = ensure_input(n)
    sandbox, base_url = start_sandbox()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOUBLEWORD_")}
    env.update(DOUBLEWORD_API_KEY=BENCH_KEY, DOUBLEWORD_BASE_URL=base_url)
    rows = []
    try:
        with tempfile.TemporaryDirectory(dir=os.path.join(HERE, "work")) as tmp:
            job_input = os.path.join(tmp, "bench.jsonl")
            os.link(source, job_input)
            t0 = time.perf_counter()
            done = subprocess.run(
                [sys.executable, os.path.join(SCRIPTS, "submit.py"), job_input,
                 "--max-requests", str(n), "--max-file-bytes", "2GB", "--json"],
                env=env, capture_output=True, text=True)
            sub = json.loads(done.stdout or "{}")
            if done.returncode != 0:
                raise SystemExit(f"submit.py failed: {done.stdout} {done.stderr}")
            batch = wait_completed(base_url, sub["batch_ids"][0])
            print(f"{n:,} requests submitted and completed in {time.perf_counter() - t0:.1f} s")
            out_id = batch["output_file_id"]
            url = f"{base_url}/files/{out_id}/content"

            header_file = os.path.join(tmp, "auth.txt")  # keeps the key off curl's argv
            with open(header_file, "w") as f:
                f.write(f"Authorization: Bearer {BENCH_KEY}\n")
            curl_file = os.path.join(tmp, "curl.jsonl")
            wall, peak, code, _ = measure(["curl", "-sS", "-H", f"@{header_file}", "-o",
                                           curl_file, url])
            size = os.path.getsize(curl_file)
            with open(curl_file, "rb") as f:
                lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
            rows.append(("curl", wall, peak, code == 0 and lines == n))
            expected_sha = sha256_of(curl_file)

            only = os.path.join(tmp, "only.jsonl")
            wall, peak, code, out = measure(
                [sys.executable, "-c", DOWNLOAD_ONLY.format(scripts=SCRIPTS, file_id=out_id,
                                                             path=only)], env=env)
            ok = code == 0 and json.loads(out or "{}").get("lines") == n and \
                sha256_of(only) == expected_sha
            rows.append(("download only (dwbatch.download)", wall, peak, ok))
            os.unlink(only)

            fetch = [sys.executable, os.path.join(SCRIPTS, "fetch_results.py"), "bench.job.json",
                     "--json"]
            for label in ("fetch_results.py (download + join)",
                          "fetch_results.py again (nothing new)"):
                wall, peak, code, out = measure(fetch, env=env, cwd=tmp)
                res = json.loads(out or "{}")
                raw = os.path.join(tmp, "bench.raw", f"{batch['id']}.output.jsonl")
                ok = code == 0 and res.get("counts", {}).get("ok") == n and \
                    sha256_of(raw) == expected_sha
                rows.append((label, wall, peak, ok))
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)

    base_wall, base_peak = rows[0][1], rows[0][2]
    print(f"output file: {n:,} lines, {size / 1e6:.1f} MB")
    print(f"{'client':<40} {'wall s':>8} {'peak MB':>9} {'wall x curl':>12}  ok")
    for name, wall, peak, ok in rows:
        print(f"{name:<40} {wall:8.2f} {peak:9.1f} {wall / base_wall:12.2f}  "
              f"{'yes' if ok else 'NO'}")
    print(f"(curl peak memory: {base_peak:.1f} MB)")
    return 0 if all(r[3] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
