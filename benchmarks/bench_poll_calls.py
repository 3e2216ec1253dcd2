#!/usr/bin/env python3
"""How many status calls does `poll.py --wait` make on a batch that runs for an hour?

Doubleword's official CLI polls every 2 s: 1,800 status calls for a one-hour batch. This
benchmark runs the real `scripts/poll.py --wait` against the local sandbox on a batch that
takes one *simulated* hour, twice: with the default growing interval (cap 60 s) and with
`--interval 2` (which pins the interval at 2 s, i.e. the official CLI's fixed poll). It
counts the GET /v1/batches/{id} calls the sandbox actually received.

How an hour is simulated honestly: DWBATCH_TIME_SCALE=S (a testing aid read only by the
wait loop) makes poll.py's clock run S times faster (every interval, ETA and timeout is in
simulated seconds; each sleep lasts 1/S of it), and the sandbox runs a batch of N requests
at --rate R with N / R = 3600 / S real seconds. Everything else is real: HTTP, the sandbox,
the job-file-free poll of a bare batch id.

The same loop is also run over a fake clock and a fake server (exact and instant), so the
numbers do not depend on this machine's speed. Both sandbox runs happen at the same time.

Target: well under 200 status calls per simulated hour (checked as at most 100, against the
fixed 2 s poll's 1,800).

Usage: python3 benchmarks/bench_poll_calls.py [--scale 30] [--requests 1200]
(takes about 3600/scale seconds: 2 minutes by default).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import common
import requests
from dwbatch import polling

KEY = common.BENCH_KEY
SIM_SECONDS = 3600.0
CALLS_TARGET = 100  # "well under 200" per simulated hour


def create_batch(base_url: str, n: int) -> str:
    headers = {"Authorization": f"Bearer {KEY}"}
    lines = "".join(common.dumps_line(common.chat_request(f"r{i}", f"q {i}")) for i in range(n))
    r = requests.post(base_url + "/files", headers=headers, timeout=30,
                      files={"file": ("bench.jsonl", io.BytesIO(lines.encode()))},
                      data={"purpose": "batch"})
    r.raise_for_status()
    r = requests.post(base_url + "/batches", headers=headers, timeout=30, json={
        "input_file_id": r.json()["id"], "endpoint": "/v1/chat/completions",
        "completion_window": "24h"})
    r.raise_for_status()
    return r.json()["id"]


def status_calls(sandbox: common.Sandbox, batch_id: str) -> int:
    return sum(1 for c in sandbox.calls()
               if c["method"] == "GET" and c["path"] == f"/v1/batches/{batch_id}")


def start_wait(base_url: str, batch_id: str, interval: float, scale: float):
    env = common.script_env(base_url, DWBATCH_TIME_SCALE=str(scale))
    return subprocess.Popen(common.script("poll.py", batch_id, "--wait",
                                          "--interval", str(interval), "--json"),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_wait(proc: subprocess.Popen) -> float:
    stdout, stderr = proc.communicate(timeout=SIM_SECONDS)
    if proc.returncode != 0:
        raise SystemExit(f"poll.py exited {proc.returncode}: {stdout} {stderr}")
    return json.loads(stdout)["wait"]["seconds"]


def call_latency(base_url: str, batch_id: str) -> float:
    """Seconds per status call over a kept-alive connection (what poll.py uses)."""
    with requests.Session() as s:
        s.headers["Authorization"] = f"Bearer {KEY}"
        s.get(f"{base_url}/batches/{batch_id}")
        started = time.perf_counter()
        for _ in range(10):
            s.get(f"{base_url}/batches/{batch_id}")
        return (time.perf_counter() - started) / 10


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def time(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)


def model_calls(cap: float, total: int = 3600) -> tuple[int, float]:
    """The same wait loop over a fake clock and a fake server: exact, instant."""
    clock = FakeClock()

    def get(batch_id: str) -> dict:
        done = min(total, int(max(0.0, clock.t - 5) * total / SIM_SECONDS))
        st = "validating" if clock.t < 5 else "in_progress" if done < total else "completed"
        return {"id": batch_id, "status": st, "in_progress_at": 1,
                "request_counts": {"total": total, "completed": done, "failed": 0}}

    tracker = polling.Tracker([polling.Target("b", entries=[polling.Entry("b")])], clock)
    polling.wait(tracker, get, cap=cap, timeout=None)
    return tracker.calls, clock.t


def main() -> int:
    parser = common.parser_for(__doc__)
    parser.add_argument("--scale", type=float, default=30.0,
                        help="simulated seconds per real second (default 30: 2 minutes)")
    parser.add_argument("--requests", type=int, default=1200,
                        help="requests in each batch (default 1200)")
    common.add_common_args(parser)
    args = parser.parse_args()
    real_seconds = SIM_SECONDS / args.scale
    rate = args.requests / real_seconds
    methods = (("poll.py --wait (growing, cap 60 s)", 60.0),
               ("fixed 2 s poll (poll.py --interval 2)", 2.0))
    rows = []
    for label, cap in methods:
        calls, sim = model_calls(cap)
        rows.append(("model (fake clock)", label, calls, sim))
    with common.start_sandbox("--enable-faults", "--rate", str(rate)) as sandbox:
        runs = []
        for label, interval in methods:
            batch_id = create_batch(sandbox.base_url, args.requests)
            runs.append((label, batch_id, start_wait(sandbox.base_url, batch_id, interval,
                                                     args.scale)))
        latency = call_latency(sandbox.base_url, runs[0][1])
        for label, batch_id, wait_proc in runs:
            sim = finish_wait(wait_proc)
            rows.append(("sandbox (real HTTP)", label, status_calls(sandbox, batch_id), sim))

    report = common.Report("poll", "Status calls for a batch that runs one simulated hour")
    report.info.append(
        f"one simulated hour: sandbox batches of {args.requests} requests at {rate:g}/s = "
        f"{real_seconds:g} s real, poll.py clock x{args.scale:g} (DWBATCH_TIME_SCALE); both "
        "sandbox runs at the same time")
    table = report.table("Status calls (GET /batches/{id}) until the batch has ended",
                         ["run", "method", "status calls", "simulated min", "calls x ours"],
                         ["", "", ",", ".1f", "{:.1f}x"])
    for kind, label, calls, sim in rows:
        ours = next(r[2] for r in rows if r[0] == kind)
        table.add(kind, label, calls, sim / 60, calls / max(1, ours))
    sim_latency = latency * args.scale
    table.notes.append(f"status call latency {latency * 1000:.1f} ms real = {sim_latency:.2f} s "
                       "simulated" + ("; WARNING: longer than the 2 s interval, so the "
                                      "sandbox baseline is undercounted: lower --scale"
                                      if sim_latency >= 2.0 else ""))
    for kind, label, calls, _ in rows:
        if label.startswith("poll.py --wait"):
            report.check(f"poll.py --wait well under 200 status calls per simulated hour "
                         f"(<= {CALLS_TARGET}), {kind}", f"{calls} calls", calls <= CALLS_TARGET)
    report.data.update(rows=rows, latency=latency)
    return common.finish(report, args)


if __name__ == "__main__":
    sys.exit(main())
