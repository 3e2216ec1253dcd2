"""The whole workflow for 100,000 requests: this project's scripts against a straightforward
script written with the official `openai` SDK (benchmarks/sdk_workflow.py), same prompts, same
sandbox, same run.

Both start from the same prompts file (one prompt per line; 1% of the prompts make the mock
model fail with a 400, 1% get an answer cut by max_tokens) and end with a results file:

  dwbatch scripts   create_batch_file.py -> submit.py -> poll.py --wait -> fetch_results.py,
                    each step one process (wall times add up, peak memory is the largest)
  openai SDK        sdk_workflow.py: build the JSONL, files.create, batches.create,
                    batches.retrieve every 2 s, files.content of output and error file, join
                    by custom_id in a dict, write the dict out

The sandbox runs with --rate 0 (as fast as it can), so it is not the bottleneck; its call log
counts the HTTP calls each side makes. Then both results files are checked against what the
prompts must give: how many records, input order, each answer joined to its own request,
failures and truncated answers flagged, a retry file. Two small side runs measure what the SDK
script does not do: resume (each side killed once its batch exists, then re-run: how many
batches exist?) and the hosted service's 50,000-requests-per-file cap (a sandbox started with
--max-requests 50000: does the upload go through?).

Needs the `openai` package (a dev dependency): run with the project's .venv interpreter.

    .venv/bin/python benchmarks/bench_workflow.py                    # 100,000 requests
    .venv/bin/python benchmarks/bench_workflow.py --requests 10000   # quick
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import common
import requests

SDK_SCRIPT = os.path.join(common.HERE, "sdk_workflow.py")
HOSTED_REQUEST_CAP = 50_000  # the hosted service's documented requests per file
MAX_TOKENS = common.MIXED_MAX_TOKENS
SDK_UPLOAD = """\
import sys
from openai import OpenAI
try:
    OpenAI().files.create(file=open(sys.argv[1], "rb"), purpose="batch")
    print("uploaded")
except Exception as exc:
    print(f"{type(exc).__name__} '{exc}' (the server's words, only in exc.body: "
          f"{getattr(exc, 'body', None)!r})"[:300])
"""


# --- the job: prompts and what each must give (common.mixed_*) ---------------------------

kind_of = common.mixed_kind
prompt_of = common.mixed_prompt
write_prompts = common.write_mixed_prompts


def input_order_note(ids: list[str]) -> str:
    in_place = sum(1 for k, cid in enumerate(ids, 1) if cid == f"req-{k:06d}")
    if in_place == len(ids) and ids == sorted(ids):
        return "yes"
    first = next((k for k, cid in enumerate(ids, 1) if cid != f"req-{k:06d}"), None)
    return (f"NO: first record out of place is #{first}; {in_place:,} of {len(ids):,} at "
            "their input position")


def check_sdk(results: str, n: int) -> dict:
    ids, wrong, flags = [], 0, {"error": 0, "truncated": 0, "truncated_unflagged": 0}
    with open(results, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            ids.append(rec["custom_id"])
            i = int(rec["custom_id"].split("-")[1])
            kind = kind_of(i)
            if "error" in rec:
                flags["error"] += 1
                wrong += kind != "error"
            elif kind == "truncated":
                flags["truncated_unflagged"] += 1  # a cut answer stored like any other
            elif rec.get("content") != "ECHO " + prompt_of(i):
                wrong += 1
    return {"records": len(ids), "order": input_order_note(ids), "wrong": wrong, **flags}


# --- the two sides -------------------------------------------------------------------------

def run_ours(sandbox: common.Sandbox, prompts: str, folder: str, table: common.Table
             ) -> tuple[float, float, int, dict]:
    env = common.script_env(sandbox.base_url)
    steps = [("create_batch_file.py", ["create_batch_file.py", prompts, "-o", "batch.jsonl",
                                        "--model", "sandbox-chat", "--max-tokens",
                                        str(MAX_TOKENS), "--json"]),
             ("submit.py", None),
             ("poll.py --wait", ["poll.py", "batch.job.json", "--wait", "--json"]),
             ("fetch_results.py", ["fetch_results.py", "batch.job.json", "--json"])]
    wall = peak = calls = 0
    outputs = {}
    for name, argv in steps:
        if argv is None:  # submit the files create_batch_file.py wrote
            files = [f["path"] for f in outputs["create_batch_file.py"].get("files", [])]
            argv = ["submit.py", *files, "--job", "batch.job.json", "--json"]
        clear_calls(sandbox)
        m = common.measure(common.script(*argv), env=env, cwd=folder)
        step_calls = len(sandbox.calls())
        outputs[name] = m.json()
        if m.exit_code not in (0, 4):
            raise SystemExit(f"{name} exited {m.exit_code}: {m.stdout[:2000]}")
        table.add(f"dwbatch: {name}", m.wall, m.peak_mb, step_calls, None, None)
        wall, peak, calls = wall + m.wall, max(peak, m.peak_mb), calls + step_calls
    return wall, peak, calls, outputs


def run_sdk(sandbox: common.Sandbox, prompts: str, folder: str, interval: float = 2.0
            ) -> tuple[common.Measurement, int]:
    clear_calls(sandbox)
    env = sdk_env(sandbox)
    err = os.path.join(folder, "stderr.txt")
    os.makedirs(folder, exist_ok=True)
    m = common.measure([sys.executable, SDK_SCRIPT, prompts, folder, "--max-tokens",
                        str(MAX_TOKENS), "--interval", str(interval)], env=env, stderr_to=err)
    if m.exit_code != 0:
        with open(err, encoding="utf-8", errors="replace") as f:
            raise SystemExit(f"sdk_workflow.py exited {m.exit_code}: {f.read()[-2000:]}")
    return m, len(sandbox.calls())


def sdk_env(sandbox: common.Sandbox) -> dict:
    env = {k: v for k, v in common.script_env(sandbox.base_url).items()
           if not k.startswith("OPENAI_")}
    env.update(OPENAI_BASE_URL=sandbox.base_url, OPENAI_API_KEY=sandbox.key)
    return env


def clear_calls(sandbox: common.Sandbox) -> None:
    requests.delete(sandbox.root_url + "/_sandbox/calls", timeout=30)


# --- side runs: resume, and the per-file request cap --------------------------------------

def batch_count(sandbox: common.Sandbox) -> int:
    return len(sandbox.get("/batches?limit=100")["data"])


def kill_once_created(cmd: list[str], sandbox: common.Sandbox, env: dict, cwd: str,
                      want: int) -> bool:
    """Start cmd, SIGKILL it as soon as the sandbox holds `want` batches; False when it had
    already ended by itself."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if batch_count(sandbox) >= want:
            break
        time.sleep(0.02)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return killed


def resume_run(folder: str, n: int = 1000) -> dict:
    """Each side is killed once its batch exists, then re-run the same way (and killed again
    once it has created what it would create). Returns batches created per side."""
    prompts = write_prompts(os.path.join(folder, "resume-prompts.txt"), n)
    counts = {}
    with common.start_sandbox("--manual") as sandbox:  # batches wait: nothing finishes
        ours = os.path.join(folder, "resume-ours")
        os.makedirs(ours)
        env = common.script_env(sandbox.base_url)
        subprocess.run(common.script("create_batch_file.py", prompts, "-o", "batch.jsonl",
                                     "--model", "sandbox-chat", "--json"),
                       cwd=ours, env=env, capture_output=True, check=True)
        submit = common.script("submit.py", "batch.jsonl", "--json")
        counts["ours_killed"] = kill_once_created(submit, sandbox, env, ours, 1)
        subprocess.run(submit, cwd=ours, env=env, capture_output=True)
        counts["ours"] = batch_count(sandbox)

        before = batch_count(sandbox)
        sdk = [sys.executable, SDK_SCRIPT, prompts, os.path.join(folder, "resume-sdk")]
        kill_once_created(sdk, sandbox, sdk_env(sandbox), folder, before + 1)
        kill_once_created(sdk, sandbox, sdk_env(sandbox), folder, before + 2)
        counts["sdk"] = batch_count(sandbox) - before
    return counts


def cap_run(ours_folder: str, sdk_folder: str) -> dict:
    """Upload both sides' files to a sandbox that refuses more than 50,000 requests a file."""
    out = {}
    with common.start_sandbox("--manual", "--max-requests", str(HOSTED_REQUEST_CAP)) \
            as sandbox:
        m = common.measure([sys.executable, "-c", SDK_UPLOAD,
                            os.path.join(sdk_folder, "batch.jsonl")], env=sdk_env(sandbox))
        out["sdk"] = m.stdout.strip()
        shards = sorted(glob.glob(os.path.join(ours_folder, "batch-*.jsonl")))
        m = common.measure(common.script("submit.py", *shards, "--job", "cap.job.json",
                                         "--json"),
                           env=common.script_env(sandbox.base_url), cwd=ours_folder)
        res = m.json()
        out["ours"] = (f"exit {m.exit_code}: {len(res.get('batch_ids') or [])} batches from "
                       f"{len(shards)} files" if m.exit_code == 0 else
                       f"exit {m.exit_code}: {(res.get('error') or {}).get('message', '')[:200]}")
    return out


def main() -> int:
    parser = common.parser_for(__doc__)
    parser.add_argument("--requests", type=int, default=100_000,
                        help="prompts in the job (default 100,000)")
    parser.add_argument("--no-side-runs", action="store_true",
                        help="skip the resume and per-file-cap runs")
    common.add_common_args(parser)
    args = parser.parse_args()
    try:
        import openai  # noqa: F401
    except ImportError:
        raise SystemExit("the openai package is needed: run with .venv/bin/python") from None
    n = args.requests
    folder = common.work_path(f"workflow-{n}")
    common.remove(folder)
    ours_dir, sdk_dir = os.path.join(folder, "ours"), os.path.join(folder, "sdk")
    os.makedirs(ours_dir)
    prompts = write_prompts(os.path.join(folder, "prompts.txt"), n)
    report = common.Report("workflow", f"Whole workflow for {n:,} requests vs the openai SDK")
    table = report.table(
        f"Whole workflow, {n:,} requests, same prompts, same sandbox (--rate 0), same run",
        ["client / step", "wall s", "peak MB", "HTTP calls", "wall x SDK", "mem x SDK"],
        ["", ".2f", ".1f", ",", "{:.2f}x", "{:.2f}x"])
    try:
        with common.start_sandbox("--enable-faults", "--rate", "0") as sandbox:
            wall, peak, calls, outputs = run_ours(sandbox, prompts, ours_dir, table)
            sdk, sdk_calls = run_sdk(sandbox, prompts, sdk_dir)
            sandbox_peak = sandbox.peak_mb()
        table.add("dwbatch scripts, total (4 processes)", wall, peak, calls, wall / sdk.wall,
                  peak / sdk.peak_mb)
        table.add("openai SDK script (baseline, 1 process)", sdk.wall, sdk.peak_mb, sdk_calls,
                  1.0, 1.0)
        ours_check = common.check_results_file(os.path.join(ours_dir, "batch.results.jsonl"),
                                               n)
        sdk_check = check_sdk(os.path.join(sdk_dir, "results.jsonl"), n)
        sdk_out = sdk.json()
        retry_path = os.path.join(ours_dir, "batch.retry.jsonl")
        retry_lines = common.count_lines(retry_path) if os.path.exists(retry_path) else 0
        gave_up = outputs["fetch_results.py"].get("gave_up")
        shards = len(outputs["submit.py"].get("batch_ids") or [])
        side = {} if args.no_side_runs else {"resume": resume_run(folder)}
        if not args.no_side_runs and n > HOSTED_REQUEST_CAP:
            side["cap"] = cap_run(ours_dir, sdk_dir)
    finally:
        if not args.keep:
            common.remove(folder)

    expected = common.mixed_expected(n)
    table.notes.append(
        f"dwbatch split the job into {shards} batch(es) ({HOSTED_REQUEST_CAP:,} requests per "
        "file by default); the SDK script sent one batch. HTTP calls are counted by the "
        f"sandbox. The SDK script made {sdk_out.get('status_calls')} status calls (every 2 s).")
    table.notes.append(f"sandbox peak memory {sandbox_peak or 0:.0f} MB (not counted above)")
    report.info.append(f"prompts: {n:,} (expected: {expected['error']:,} failing with a 400, "
                       f"{expected['truncated']:,} truncated by max_tokens {MAX_TOKENS})")
    cmp = report.table("What each results file holds (measured on the files)",
                       ["check", "dwbatch scripts", "openai SDK script"])
    cmp.add("records (one per request expected)", f"{ours_check['records']:,}",
            f"{sdk_check['records']:,}")
    cmp.add("records in input order", ours_check["order"], sdk_check["order"])
    cmp.add("records joined to the wrong answer or status", f"{ours_check['wrong']:,}",
            f"{sdk_check['wrong']:,}")
    cmp.add(f"failed requests reported ({expected['error']:,} expected)",
            f"{ours_check['error']:,} (status error)",
            f"{sdk_check['error']:,} (error object)")
    cmp.add(f"truncated answers flagged ({expected['truncated']:,} expected)",
            f"{ours_check['truncated']:,} (status truncated)",
            f"0: {sdk_check['truncated_unflagged']:,} cut answers stored as if complete")
    cmp.add(f"retry file of the requests worth sending again ({expected['truncated']:,} "
            f"truncated; the {expected['error']:,} 400s are given up: the same request would "
            "be refused again)", f"{retry_lines:,} lines; {gave_up or 0:,} given up, with why",
            "none")
    if "resume" in side:
        r = side["resume"]
        cmp.add("batches after being killed once the batch exists, then re-run "
                "(1,000 requests)",
                f"{r['ours']}" + ("" if r["ours_killed"] else " (submit.py had already "
                                  "ended when the kill came; re-run only)"),
                f"{r['sdk']}" + (" (uploaded and created again)" if r["sdk"] > 1 else ""))
    if "cap" in side:
        c = side["cap"]
        cmp.add(f"upload where a file may hold at most {HOSTED_REQUEST_CAP:,} requests (the "
                "hosted limit)", c["ours"], c["sdk"])
    else:
        cmp.notes.append(f"the {HOSTED_REQUEST_CAP:,}-requests-per-file cap was not exercised "
                         f"({n:,} requests fit in one file)")
    cmp.add("validation before anything is sent", "every line (create_batch_file.py, again "
            "in submit.py); nothing sent if one is bad", "none of its own (not exercised "
            "here: it writes every line itself; the server rejects a file at its first "
            "bad line)")
    cmp.notes.append("Not measured here, read from the script: the SDK script keeps the "
                     "whole output file and the joined dict in memory (its peak memory grows "
                     "with the output), downloads nothing until the batch has ended, and "
                     "starts from zero after any interruption.")

    problems = []
    if ours_check["records"] != n or ours_check["wrong"] or ours_check["order"] != "yes":
        problems.append(f"dwbatch results file: {ours_check}")
    if ours_check["error"] != expected["error"] or \
            ours_check["truncated"] != expected["truncated"]:
        problems.append(f"dwbatch flagged {ours_check} instead of {expected}")
    if retry_lines != expected["truncated"] or gave_up != expected["error"]:
        problems.append(f"retry file has {retry_lines} lines and {gave_up} were given up, "
                        f"expected {expected['truncated']} and {expected['error']}")
    if sdk_check["records"] != n or sdk_check["wrong"]:
        problems.append(f"the SDK baseline did not do the job: {sdk_check}")
    if "resume" in side and side["resume"]["ours"] != 1:
        problems.append(f"re-running submit.py after a kill made {side['resume']['ours']} "
                        "batches, expected 1")
    report.problems += problems
    report.data.update(requests=n, ours={"wall": wall, "peak_mb": peak, "calls": calls},
                       sdk={"wall": sdk.wall, "peak_mb": sdk.peak_mb, "calls": sdk_calls},
                       ours_check=ours_check, sdk_check=sdk_check, side=side)
    return common.finish(report, args)


if __name__ == "__main__":
    sys.exit(main())
