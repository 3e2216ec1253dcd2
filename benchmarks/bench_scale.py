"""Scale: the largest job run through the real scripts, and what grows with it.

Runs the mixed prompts job (1% failing, 1% truncated; see common.mixed_prompt) of N requests
(default 1,000,000) through create_batch_file.py -> submit.py -> poll.py --wait ->
fetch_results.py (and fetch_results.py once more, nothing new to fetch) against the sandbox
(--rate 0), split into shards of --max-requests (default 50,000, the hosted service's cap:
20 shards, 20 batches). Every step is one process: wall time, peak memory (kernel rusage),
HTTP calls (the sandbox's call log), the peak size of its temporary files (TMPDIR pointed at a
watched folder) and the bytes on disk afterwards are recorded, and the results file is checked
(one record per request, input order, own answer, failures and truncations flagged).

The same job at N/10 is run first, so each step's growth is measured (two points, same run)
rather than guessed: the growth table extrapolates each step's peak memory, temporary space
and time linearly from those two points. Then the steps whose memory grows are run alone,
without network, at N and at --probe-factor x N (default 2: 2,000,000 requests), to see
whether the growth goes on past the largest job: validation (`submit.py --dry-run` on the
shard files create_batch_file.py writes) and the join (`fetch_results.py --offline` on
bench_reconcile.py's generated job).

Target checked here: submit.py's peak memory under 100 MB (the upload target, "any size").

    python3 benchmarks/bench_scale.py                          # 1,000,000 (and 100,000)
    python3 benchmarks/bench_scale.py --requests 20000 --max-requests 5000   # quick
"""

from __future__ import annotations

import glob
import os
import sys
import threading
import time

import bench_reconcile
import common
import requests

STEPS = ("create_batch_file.py", "submit.py", "poll.py --wait", "fetch_results.py",
         "fetch_results.py again")
UPLOAD_TARGET_MB = 100.0
PROBED_STEP = {"create_batch_file.py": "create_batch_file.py",  # probe -> step of the job
               "submit.py --dry-run (validation)": "submit.py",
               "fetch_results.py --offline (join)": "fetch_results.py"}
WHY_IT_STOPS = {"submit.py": "its duplicate-id check keeps up to 32 MB of custom_ids in "
                             "memory, then goes on in temporary files",
                "fetch_results.py": "the join's sqlite index keeps a 16 MiB cache; the rest "
                                    "stays on disk"}


class DirWatcher:
    """Largest total size a folder reaches while a step runs (sampled every 50 ms)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, common.tree_bytes(self.path))
            except OSError:
                pass
            self._stop.wait(0.05)

    def __enter__(self) -> DirWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def batch_files(folder: str) -> list[str]:
    """What create_batch_file.py wrote: batch.jsonl, or batch-001.jsonl... when split."""
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "batch*.jsonl")))


def step_argv(name: str, folder: str, max_requests: int) -> list[str]:
    if name == "create_batch_file.py":
        return ["create_batch_file.py", "prompts.txt", "-o", "batch.jsonl", "--model",
                "sandbox-chat", "--max-tokens", str(common.MIXED_MAX_TOKENS),
                "--max-requests", str(max_requests), "--json"]
    if name == "submit.py":
        return ["submit.py", *batch_files(folder), "--job", "batch.job.json",
                "--max-requests", str(max_requests), "--json"]
    if name == "poll.py --wait":
        return ["poll.py", "batch.job.json", "--wait", "--json"]
    return ["fetch_results.py", "batch.job.json", "--json"]


def run_job(n: int, max_requests: int, keep: bool) -> dict:
    """One job of n requests through every step; the numbers of each step."""
    folder = common.work_path(f"scale-{n}")
    common.remove(folder)
    tmp = os.path.join(folder, "tmp")
    os.makedirs(tmp)
    t0 = time.perf_counter()
    common.write_mixed_prompts(os.path.join(folder, "prompts.txt"), n)
    out: dict = {"requests": n, "max_requests": max_requests, "steps": {},
                 "prompts_s": time.perf_counter() - t0}
    try:
        with common.start_sandbox("--enable-faults", "--rate", "0",
                                  "--max-file-bytes", str(2_000_000_000)) as sandbox:
            env = common.script_env(sandbox.base_url, TMPDIR=tmp)
            for name in STEPS:
                requests.delete(sandbox.root_url + "/_sandbox/calls", timeout=60)
                with DirWatcher(tmp) as watch:
                    m = common.measure(common.script(*step_argv(name, folder, max_requests)),
                                       env=env, cwd=folder)
                calls = sandbox.calls()
                if m.exit_code not in (0, 4):
                    raise SystemExit(f"{name} ({n:,} requests) exited {m.exit_code}: "
                                     f"{m.stdout[:2000]}")
                out["steps"][name] = {"wall": m.wall, "peak_mb": m.peak_mb, "calls": len(calls),
                                      "status_calls": sum(1 for c in calls if c["method"] == "GET"
                                                          and c["path"].startswith("/v1/batches/")),
                                      "tmp_peak": watch.peak, "exit": m.exit_code,
                                      "result": m.json()}
            out["sandbox_peak_mb"] = sandbox.peak_mb()
        shards = sorted(glob.glob(os.path.join(folder, "batch-*.jsonl"))) or \
            [os.path.join(folder, "batch.jsonl")]
        out["shards"] = len(shards)
        out["bytes"] = {
            "prompts": os.path.getsize(os.path.join(folder, "prompts.txt")),
            "batch files": sum(os.path.getsize(p) for p in shards),
            "raw downloads": common.tree_bytes(os.path.join(folder, "batch.raw")),
            "results file": os.path.getsize(os.path.join(folder, "batch.results.jsonl")),
            "retry file": os.path.getsize(os.path.join(folder, "batch.retry.jsonl")),
            "job file": os.path.getsize(os.path.join(folder, "batch.job.json")),
        }
        out["check"] = common.check_results_file(os.path.join(folder, "batch.results.jsonl"), n)
    finally:
        if not keep:
            common.remove(folder)
    return out


def probe(n: int, max_requests: int, keep: bool) -> dict:
    """The growing steps alone, no network, at n requests: create_batch_file.py (to make the
    files), submit.py --dry-run (validates every line of every file), and
    fetch_results.py --offline on a generated job (the join)."""
    folder = common.work_path(f"probe-{n}")
    common.remove(folder)
    os.makedirs(folder)
    out = {}
    try:
        common.write_mixed_prompts(os.path.join(folder, "prompts.txt"), n)
        env = common.script_env("http://127.0.0.1:9/v1", TMPDIR=folder)
        m = common.measure(common.script(*step_argv("create_batch_file.py", folder,
                                                    max_requests)), env=env, cwd=folder)
        out["create_batch_file.py"] = m
        m = common.measure(common.script("submit.py", *batch_files(folder), "--max-requests",
                                         str(max_requests), "--dry-run", "--json"),
                           env=env, cwd=folder)
        out["submit.py --dry-run (validation)"] = m
        common.remove(folder)
        job = bench_reconcile.ensure_job(n)
        m = common.measure(common.script("fetch_results.py", os.path.basename(job),
                                         "--offline", "--json"),
                           env=dict(env, TMPDIR=os.path.dirname(job)), cwd=os.path.dirname(job))
        out["fetch_results.py --offline (join)"] = m
        if not keep:
            common.remove(os.path.dirname(job))
    finally:
        common.remove(folder)
    for name, m in out.items():
        if m.exit_code not in (0, 4):
            raise SystemExit(f"{name} at {n:,} exited {m.exit_code}: {m.stdout[:1000]}")
    return out


def crossing(n1: int, v1: float, n2: int, v2: float, limit: float) -> str:
    """Requests at which a quantity growing linearly through (n1, v1), (n2, v2) hits limit."""
    if v2 >= limit:
        return f"already at {n2:,}"
    slope = (v2 - v1) / (n2 - n1)
    if slope <= 0:
        return "flat: never"
    return f"~{n2 + (limit - v2) / slope:,.0f}"


def main() -> int:
    parser = common.parser_for(__doc__)
    parser.add_argument("--requests", type=int, default=1_000_000,
                        help="requests in the big job (default 1,000,000)")
    parser.add_argument("--max-requests", type=int, default=50_000,
                        help="requests per shard (default 50,000, the hosted cap)")
    parser.add_argument("--small", type=int, default=None,
                        help="requests in the growth-reference job (default requests/10)")
    parser.add_argument("--probe-factor", type=float, default=2.0,
                        help="also run the growing steps alone at this many times --requests "
                             "(default 2; 0 = skip)")
    common.add_common_args(parser)
    args = parser.parse_args()
    n2 = args.requests
    n1 = args.small or max(1, n2 // 10)
    runs = [run_job(n, args.max_requests, args.keep) for n in (n1, n2)]
    small, big = runs

    report = common.Report("scale", f"Scale: {n2:,} requests through the real scripts")
    total = sum(s["wall"] for s in big["steps"].values() if s is not big["steps"][STEPS[-1]])
    report.info.append(
        f"largest job: {n2:,} requests in {big['shards']} shards of at most "
        f"{args.max_requests:,} ({big['shards']} batches); batch files "
        f"{big['bytes']['batch files'] / 1e6:,.1f} MB; create -> submit -> poll --wait -> "
        f"fetch: {total:,.1f} s; sandbox (--rate 0) peak memory "
        f"{big['sandbox_peak_mb'] or 0:,.0f} MB")
    for run in runs:
        t = report.table(
            f"{run['requests']:,} requests, {run['shards']} shard(s): each step, one process",
            ["step", "wall s", "requests/s", "peak MB", "HTTP calls", "status calls",
             "temp files peak MB"], ["", ".1f", ",.0f", ".1f", ",", ",", ".1f"])
        for name in STEPS:
            s = run["steps"][name]
            t.add(name, s["wall"], run["requests"] / s["wall"], s["peak_mb"], s["calls"],
                  s["status_calls"], s["tmp_peak"] / 1e6)
        t.notes.append("bytes on disk afterwards: " + ", ".join(
            f"{k} {v / 1e6:,.1f} MB" for k, v in run["bytes"].items())
            + f" (total {sum(run['bytes'].values()) / 1e6:,.1f} MB, "
              f"{sum(run['bytes'].values()) / run['requests']:,.0f} bytes per request)")
        check = run["check"]
        t.notes.append(f"results file: {check['records']:,} records, input order "
                       f"{check['order']}, {check['wrong']:,} wrong, {check['error']:,} "
                       f"error, {check['truncated']:,} truncated")
        expected = common.mixed_expected(run["requests"])
        if check["records"] != run["requests"] or check["wrong"] or check["order"] != "yes" \
                or check["error"] != expected["error"] \
                or check["truncated"] != expected["truncated"]:
            report.problems.append(f"{run['requests']:,}-request results file: {check}")

    growth = report.table(
        f"Growth per step from {n1:,} to {n2:,} requests (measured), and where it leads "
        "(linear extrapolation)",
        ["step", f"peak MB at {n1:,}", f"peak MB at {n2:,}", "MB per 1M requests",
         "passes 100 MB at", "passes 1 GB at", "s per 1M requests",
         "temp MB per 1M requests"],
        ["", ".1f", ".1f", ".1f", "", "", ".1f", ".1f"])
    per_m = 1_000_000 / (n2 - n1)
    for name in STEPS:
        a, b = small["steps"][name], big["steps"][name]
        growth.add(name, a["peak_mb"], b["peak_mb"], (b["peak_mb"] - a["peak_mb"]) * per_m,
                   crossing(n1, a["peak_mb"], n2, b["peak_mb"], 100.0),
                   crossing(n1, a["peak_mb"], n2, b["peak_mb"], 1024.0),
                   (b["wall"] - a["wall"]) * per_m, (b["tmp_peak"] - a["tmp_peak"]) / 1e6 * per_m)
    jb = (big["bytes"]["job file"] - small["bytes"]["job file"]) / max(1, big["shards"]
                                                                        - small["shards"])
    growth.notes.append(f"job file: {small['bytes']['job file']:,} bytes at {small['shards']} "
                        f"shard(s), {big['bytes']['job file']:,} at {big['shards']} "
                        f"(~{jb:,.0f} bytes per shard; it is rewritten after every step)")
    s_calls = big["steps"]["poll.py --wait"]["status_calls"]
    growth.notes.append(f"poll.py --wait made {s_calls} status calls for {big['shards']} "
                        "batches (one GET per unfinished batch per round)")
    growth.notes.append("poll.py --wait's wall time is the sandbox working through the "
                        "requests (--rate 0, as fast as it can), not the client's cost")
    submit_peak = big["steps"]["submit.py"]["peak_mb"]
    report.check(f"submit.py peak memory < {UPLOAD_TARGET_MB:.0f} MB at {n2:,} requests "
                 f"({big['shards']} files; the upload target, any size)",
                 f"{submit_peak:.1f} MB", submit_peak < UPLOAD_TARGET_MB)

    if args.probe_factor > 0:
        n3 = int(n2 * args.probe_factor)
        at = {n: probe(n, args.max_requests, args.keep) for n in (n2, n3)}
        beyond = report.table(
            f"Beyond the largest job: the growing steps alone (no network) at {n2:,} and "
            f"{n3:,} requests", ["step", f"peak MB at {n2:,}", f"peak MB at {n3:,}",
                                 "MB per 1M requests", "passes 1 GB at",
                                 f"wall s at {n2:,}", f"wall s at {n3:,}"],
            ["", ".1f", ".1f", ".1f", "", ".1f", ".1f"])
        per_m3 = 1_000_000 / (n3 - n2)
        for name in at[n2]:
            a, b = at[n2][name], at[n3][name]
            beyond.add(name, a.peak_mb, b.peak_mb, (b.peak_mb - a.peak_mb) * per_m3,
                       crossing(n2, a.peak_mb, n3, b.peak_mb, 1024.0), a.wall, b.wall)
        beyond.notes.append("create_batch_file.py and submit.py --dry-run read "
                            f"{args.max_requests:,}-request files; the join reads "
                            "bench_reconcile.py's generated job (one batch, shuffled "
                            "results)")
        report.data["probe"] = {n: {k: [m.wall, m.peak_mb] for k, m in v.items()}
                                for n, v in at.items()}
        stopped = [PROBED_STEP[name] for name in at[n2]
                   if (at[n3][name].peak_mb - at[n2][name].peak_mb) * per_m3 < 1.0
                   and (big["steps"][PROBED_STEP[name]]["peak_mb"]
                        - small["steps"][PROBED_STEP[name]]["peak_mb"]) * per_m >= 1.0]
        for step in stopped:
            why = WHY_IT_STOPS.get(step)
            growth.notes.append(
                f"{step} stops growing past {n2:,}: its peak did not grow from {n2:,} to "
                f"{n3:,} (next table), so its crossings extrapolated here do not happen"
                + (f" ({why})" if why else ""))
        limits_table(report, n2, n3, at, big)
    report.data.update(runs=runs)
    return common.finish(report, args)


def requests_at(n_a: int, v_a: float, n_b: int, v_b: float, limit: float) -> float | None:
    """Requests at which a quantity growing linearly through both points (both below limit)
    reaches limit; None when it does not grow."""
    slope = (v_b - v_a) / (n_b - n_a)
    return None if slope <= 0 else n_b + (limit - v_b) / slope


def limits_table(report: common.Report, n2: int, n3: int, at: dict, big: dict) -> None:
    """Each limit a bigger job runs into, and at how many requests, from the growth measured
    between n2 and n3 requests (linear; the probes show whether growth is linear)."""
    t = report.table(f"What breaks first beyond {n2:,} requests (from the growth measured "
                     f"between {n2:,} and {n3:,})",
                     ["limit", "measured", "reached at (requests)"], ["", "", ""])
    rows = []
    for name, limit, label in (
            ("submit.py --dry-run (validation)", 100.0, "submit.py memory > 100 MB (upload "
                                                        "target)"),
            ("submit.py --dry-run (validation)", 1024.0, "submit.py memory > 1 GB"),
            ("fetch_results.py --offline (join)", 100.0, "fetch_results.py memory > 100 MB "
                                                         "(download target)"),
            ("fetch_results.py --offline (join)", 500.0, "fetch_results.py memory > 500 MB "
                                                         "(reconciliation target)"),
            ("fetch_results.py --offline (join)", 1024.0, "fetch_results.py memory > 1 GB"),
            ("create_batch_file.py", 1024.0, "create_batch_file.py memory > 1 GB")):
        a, b = at[n2][name], at[n3][name]
        growth = (b.peak_mb - a.peak_mb) / (n3 - n2) * 1e6
        if a.peak_mb >= limit:
            where, text = float(n2), f"already at {n2:,} (measured)"
        elif b.peak_mb >= limit:
            where, text = float(n3), f"between {n2:,} and {n3:,} (measured)"
        else:
            found = requests_at(n2, a.peak_mb, n3, b.peak_mb, limit)
            where = found if found is not None else float("inf")
            text = "never (flat)" if found is None else f"~{found:,.0f} (extrapolated)"
        rows.append((where, label, f"{a.peak_mb:.0f} -> {b.peak_mb:.0f} MB "
                     f"({growth:+.0f} MB per 1M requests)", text))
    for _, label, measured, where in sorted(rows, key=lambda r: r[0]):
        t.add(label, measured, where)
    per_request = sum(big["bytes"].values()) / big["requests"]
    tmp = big["steps"]["fetch_results.py"]["tmp_peak"] / big["requests"]
    t.add("disk: the job folder (prompts, batch files, raw copies, results, retry file)",
          f"{per_request:,.0f} bytes per request, plus {tmp:,.0f} bytes per request of "
          "temporary files while fetch_results.py joins",
          f"1 GB of disk per ~{1e9 / (per_request + tmp):,.0f} requests")
    shards = big["shards"]
    status = big["steps"]["poll.py --wait"]["status_calls"]
    t.add("status calls: one GET per unfinished batch per poll round",
          f"{shards} batches: {status} calls for the whole wait",
          f"{shards} calls per round at {n2:,}; 200 per round at "
          f"{200 * n2 // max(1, shards):,}")
    t.notes.append("Memory rows are linear extrapolations of two measured points; a step "
                   "whose peak did not grow between them is reported as flat.")



if __name__ == "__main__":
    sys.exit(main())
