"""The tools people would use instead, side by side: same sandbox, same files, same run.

One batch file of N chat requests (the mixed job of benchmarks/common.py: 1% of the prompts
make the mock model fail with a 400, 1% get an answer cut by max_tokens) is uploaded, and the
results of one completed batch of it are fetched, by each of:

  curl             curl -F purpose=batch -F file=@FILE .../files (the baseline), and one curl
                   process downloading the output and the error file (-o OUT URL -o ERR URL)
  dw               Doubleword's own CLI (PyPI dw-cli, `.dwtools/dw`, prepared by
                   tests/prepare_dw_cli.py): `dw files upload FILE`, `dw batches results ID -o F`
  openai SDK       files.create(file=open(FILE, "rb"), purpose="batch"), and
                   benchmarks/sdk_workflow.py --fetch ID (files.content of the output and error
                   files, joined by custom_id in a dict)
  dwbatch          submit.py FILE (validation + upload + batch create), and fetch_results.py JOB
                   (batch check, download of output and error files, the join)

Each contender runs --repeat times, taking turns, one process at a time; the median wall time
and the highest peak memory (kernel rusage of that process) are reported. Uploads run against a
sandbox started with --manual (batches created by submit.py stay put, so no batch work runs
behind a measurement); downloads against a sandbox with --rate 0 holding one completed batch.
Every upload is checked (the server's copy equals the file byte for byte), and every results
file is checked against what the prompts must give: one record per request, each request once,
in input order, each joined to its own answer, failures and cut answers marked as such.

When the dw binary cannot run here, its rows say why (never skipped silently).

    .venv/bin/python benchmarks/bench_tools.py                    # 100,000 requests
    .venv/bin/python benchmarks/bench_tools.py --requests 10000   # quick
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import common

SDK_SCRIPT = os.path.join(common.HERE, "sdk_workflow.py")
DW = os.path.join(common.ROOT, ".dwtools", "dw")
SDK_UPLOAD = """\
import sys
from openai import OpenAI
print(OpenAI().files.create(file=open(sys.argv[1], "rb"), purpose="batch").id)
"""


# --- the job -------------------------------------------------------------------------------

def ensure_batch_file(n: int) -> str:
    """The batch file every tool uploads: request i (1-based) is custom_id req-{i:06d}."""
    def lines():
        for i in range(1, n + 1):
            yield common.dumps_line(common.chat_request(
                f"req-{i:06d}", common.mixed_prompt(i), max_tokens=common.MIXED_MAX_TOKENS))
    return common.write_once(common.work_path(f"tools-{n}.jsonl"), lines,
                             reuse=lambda p: os.path.exists(p) and common.count_lines(p) == n)


def judge(records: list[tuple[str, str, object]], n: int) -> str:
    """'yes' when the (custom_id, outcome, content) records are one correct record per
    request, else what is wrong. outcome: ok / error / truncated, or 'answer' when the record
    does not say (a raw server line, or an answer stored without its finish reason)."""
    seen, in_place, wrong, problems = set(), 0, 0, []
    unmarked = {"error": 0, "truncated": 0}
    for k, (cid, outcome, content) in enumerate(records, 1):
        seen.add(cid)
        in_place += cid == f"req-{k:06d}"
        i = int(cid.split("-")[1])
        kind = common.mixed_kind(i)
        if kind != "ok" and outcome != kind:
            unmarked[kind] += 1
        elif kind == "ok" and (outcome not in ("ok", "answer")
                               or content != "ECHO " + common.mixed_prompt(i)):
            wrong += 1
    expected = common.mixed_expected(n)
    if len(records) != n or len(seen) != n:
        problems.append(f"{len(records):,} records for {len(seen):,} of {n:,} requests")
    if in_place != len(records):
        problems.append("completion order, not input order")
    if wrong:
        problems.append(f"{wrong:,} joined to the wrong answer")
    for kind in ("error", "truncated"):
        if unmarked[kind]:
            problems.append(f"{unmarked[kind]:,} of {expected[kind]:,} {kind} not marked")
    return "yes" if not problems else "no: " + "; ".join(problems)


def read_ours(path: str) -> list[tuple[str, str, object]]:
    with open(path, encoding="utf-8") as f:
        return [(r["custom_id"], r["status"], r["content"]) for r in map(json.loads, f)]


def read_sdk(path: str) -> list[tuple[str, str, object]]:
    with open(path, encoding="utf-8") as f:
        return [(r["custom_id"], "error" if "error" in r else "answer", r.get("content"))
                for r in map(json.loads, f)]


def read_raw(*paths: str) -> list[tuple[str, str, object]]:
    """Server lines as they are: a failure is visible (an error object or an HTTP status of
    400 or more), a cut answer only inside the body (finish_reason), not as the record's
    outcome."""
    out = []
    for path in paths:
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                response = r.get("response") or {}
                if r.get("error") or (response.get("status_code") or 0) >= 400:
                    out.append((r["custom_id"], "error", None))
                    continue
                choices = (response.get("body") or {}).get("choices") or [{}]
                out.append((r["custom_id"], "answer",
                            (choices[0].get("message") or {}).get("content")))
    return out


# --- dw ------------------------------------------------------------------------------------

def dw_setup(sandbox: common.Sandbox, home: str) -> tuple[list[str] | None, dict, str]:
    """(dw command prefix or None, its environment, version or the reason it cannot run)."""
    if not os.access(DW, os.X_OK):
        return None, {}, (f"{os.path.relpath(DW, common.ROOT)} is missing: run "
                          "tests/prepare_dw_cli.py to prepare Doubleword's dw binary")
    dw_dir = os.path.join(home, ".dw")
    os.makedirs(dw_dir, exist_ok=True)
    with open(os.path.join(dw_dir, "config.toml"), "w") as f:
        f.write('active_account = "default"\ndefault_output = "json"\n\n'
                f'[servers]\nai = "{sandbox.root_url}"\nadmin = "{sandbox.root_url}"\n\n'
                "[client]\ntimeout_secs = 600\nconnect_timeout_secs = 10\nmax_retries = 2\n"
                "poll_interval_secs = 1\n")
    creds = os.path.join(dw_dir, "credentials.toml")
    with open(creds, "w") as f:
        f.write('[accounts.default]\ndisplay_name = "sandbox"\n'
                f'inference_key = "{sandbox.key}"\naccount_type = "personal"\n')
    os.chmod(creds, 0o600)
    env = {"HOME": home, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NO_COLOR": "1",
           "LANG": "C.UTF-8", "XDG_CONFIG_HOME": os.path.join(home, ".config")}
    probe = subprocess.run([DW, "--version"], capture_output=True, text=True, env=env)
    if probe.returncode != 0:
        return None, env, f"dw does not start here: {probe.stderr.strip()[-200:]}"
    return [DW, "--server", sandbox.root_url, "--output", "json"], env, probe.stdout.strip()



LABELS = {"curl": "curl (baseline)", "dw": "dw (Doubleword CLI)", "sdk": "openai SDK",
          "ours": "dwbatch"}


def side_by_side(report: common.Report, name: str, runs: dict, verdict, dw_note: str,
                 title: str, last_column: str, commands: dict) -> common.Table:
    """The table of one task done by each tool: times and memory against curl's, and
    verdict(key, measurement) in the last column (a tool that did not run says why)."""
    base = common.combined(runs["curl"])
    table = report.table(title, ["tool", "command", "wall s", "peak MB", "wall x curl",
                                 "mem x curl", last_column],
                         ["", "", ".2f", ".1f", "{:.2f}x", "{:.2f}x", ""])
    for key in ("curl", "dw", "sdk", "ours"):
        if key not in runs:
            table.add(LABELS[key], commands[key], None, None, None, None,
                      f"not run: {dw_note}")
            continue
        m = common.combined(runs[key])
        table.add(LABELS[key], commands[key], m.wall, m.peak_mb, m.wall / base.wall,
                  m.peak_mb / base.peak_mb, verdict(key, m))
    table.notes.append("wall times: " + "; ".join(
        f"{k} " + ", ".join(f"{m.wall:.2f}" for m in v) for k, v in runs.items()))
    report.data[name] = {k: [common.combined(v).wall, common.combined(v).peak_mb]
                         for k, v in runs.items()}
    return table


# --- uploads -------------------------------------------------------------------------------

def upload_round(sandbox: common.Sandbox, batch_file: str, tmp: str, n: int, repeat: int,
                 report: common.Report) -> None:
    env = common.script_env(sandbox.base_url)
    sdk_env = {**{k: v for k, v in env.items() if not k.startswith("OPENAI_")},
               "OPENAI_BASE_URL": sandbox.base_url, "OPENAI_API_KEY": sandbox.key}
    header = common.curl_header_file(tmp)
    want = common.sha256_of(batch_file)
    dw, dw_env, dw_note = dw_setup(sandbox, os.path.join(tmp, "home-up"))
    checks: dict[str, list[str]] = {}

    def stored(name: str, file_id: str | None) -> None:
        """Is the server's copy the file, byte for byte?"""
        ok = "no: no file id"
        if file_id:
            copy = os.path.join(tmp, "stored.jsonl")
            got = subprocess.run(["curl", "-sS", "-H", f"@{header}", "-o", copy,
                                  f"{sandbox.base_url}/files/{file_id}/content"])
            ok = "yes" if got.returncode == 0 and common.sha256_of(copy) == want else \
                "no: the stored copy differs"
            common.remove(copy)
        checks.setdefault(name, []).append(ok)

    def curl() -> common.Measurement:
        m = common.measure(["curl", "-sS", "-H", f"@{header}", "-F", "purpose=batch",
                            "-F", f"file=@{batch_file}", f"{sandbox.base_url}/files"])
        stored("curl", m.json().get("id"))
        return m

    def dw_upload() -> common.Measurement:
        m = common.measure([*dw, "files", "upload", batch_file], env=dw_env)
        stored("dw", m.json().get("id"))
        return m

    def sdk() -> common.Measurement:
        m = common.measure([sys.executable, "-c", SDK_UPLOAD, batch_file], env=sdk_env)
        stored("sdk", m.stdout.strip() or None)
        return m

    def ours() -> common.Measurement:
        folder = tempfile.mkdtemp(dir=tmp)
        os.link(batch_file, os.path.join(folder, "batch.jsonl"))
        m = common.measure(common.script("submit.py", "batch.jsonl", "--max-requests",
                                         str(n), "--json"), env=env, cwd=folder)
        result = m.json()
        file_ids = [s.get("file_id") for s in result.get("shards", [])] or \
            result.get("file_ids") or [None]
        stored("ours", file_ids[0] if m.exit_code == 0 else None)
        shutil.rmtree(folder, ignore_errors=True)
        return m

    contenders = {"curl": curl, "sdk": sdk, "ours": ours}
    if dw:
        contenders["dw"] = dw_upload
    runs = common.alternate(contenders, repeat, before=common.settle)
    def verdict(key: str, m: common.Measurement) -> str:
        ok = "yes" if all(c == "yes" for c in checks[key]) else \
            next(c for c in checks[key] if c != "yes")
        if ok != "yes" or m.exit_code != 0:
            report.problems.append(f"upload with {LABELS[key]}: exit {m.exit_code}, {ok}")
        return ok

    table = side_by_side(
        report, "upload", runs, verdict, dw_note,
        f"Upload of one batch file ({n:,} requests, {os.path.getsize(batch_file) / 1e6:.1f} MB"
        f"), same sandbox, one process at a time (median of {repeat} runs, taking turns)",
        "server's copy byte-identical",
        {"curl": "curl -F purpose=batch -F file=@FILE", "dw": "dw files upload FILE",
         "sdk": 'files.create(file=..., purpose="batch")',
         "ours": "submit.py FILE (validates, uploads, creates the batch)"})
    if dw:
        table.notes.append(f"dw: {dw_note}")
    table.notes.append("submit.py also validates every line and hashes the file before it "
                       "uploads, and creates the batch after (one more call); the others only "
                       "upload.")


# --- downloads -----------------------------------------------------------------------------

def download_round(sandbox: common.Sandbox, batch_file: str, tmp: str, n: int, repeat: int,
                   report: common.Report) -> None:
    env = common.script_env(sandbox.base_url)
    sdk_env = {**{k: v for k, v in env.items() if not k.startswith("OPENAI_")},
               "OPENAI_BASE_URL": sandbox.base_url, "OPENAI_API_KEY": sandbox.key}
    job_dir = os.path.join(tmp, "job")
    os.makedirs(job_dir)
    os.link(batch_file, os.path.join(job_dir, "batch.jsonl"))
    m = common.measure(common.script("submit.py", "batch.jsonl", "--max-requests", str(n),
                                     "--json"), env=env, cwd=job_dir)
    if m.exit_code != 0:
        raise SystemExit(f"submit.py failed: {m.stdout[:2000]}")
    batch = sandbox.wait_batch(m.json()["batch_ids"][0])
    header = common.curl_header_file(tmp)
    url = f"{sandbox.base_url}/files/%s/content"
    dw, dw_env, dw_note = dw_setup(sandbox, os.path.join(tmp, "home-down"))
    out = os.path.join(tmp, "out")
    verdicts: dict[str, list[str]] = {}

    def fresh() -> str:
        common.remove(out)
        os.makedirs(out)
        common.settle()
        return out

    def curl() -> common.Measurement:
        folder = fresh()
        cmd = ["curl", "-sS", "-H", f"@{header}",
               "-o", os.path.join(folder, "output.jsonl"), url % batch["output_file_id"]]
        if batch.get("error_file_id"):
            cmd += ["-o", os.path.join(folder, "errors.jsonl"), url % batch["error_file_id"]]
        m = common.measure(cmd)
        verdicts.setdefault("curl", []).append(judge(read_raw(
            os.path.join(folder, "output.jsonl"), os.path.join(folder, "errors.jsonl")), n))
        return m

    def dw_results() -> common.Measurement:
        folder = fresh()
        m = common.measure([*dw, "batches", "results", batch["id"], "-o",
                            os.path.join(folder, "results.jsonl")], env=dw_env)
        verdicts.setdefault("dw", []).append(judge(read_raw(
            os.path.join(folder, "results.jsonl")), n))
        return m

    def sdk() -> common.Measurement:
        folder = fresh()
        m = common.measure([sys.executable, SDK_SCRIPT, "-", folder, "--fetch", batch["id"]],
                           env=sdk_env)
        verdicts.setdefault("sdk", []).append(judge(read_sdk(
            os.path.join(folder, "results.jsonl")), n))
        return m

    def ours() -> common.Measurement:
        folder = fresh()
        for name in ("batch.jsonl", "batch.job.json"):
            shutil.copy(os.path.join(job_dir, name), os.path.join(folder, name))
        m = common.measure(common.script("fetch_results.py", "batch.job.json", "--json"),
                           env=env, cwd=folder)
        verdicts.setdefault("ours", []).append(judge(read_ours(
            os.path.join(folder, "batch.results.jsonl")), n))
        return m

    contenders = {"curl": curl, "sdk": sdk, "ours": ours}
    if dw:
        contenders["dw"] = dw_results
    runs = common.alternate(contenders, repeat)
    common.remove(out)
    def verdict(key: str, m: common.Measurement) -> str:
        said = verdicts[key][-1]
        if m.exit_code not in (0, 4):
            report.problems.append(f"{LABELS[key]}: exit {m.exit_code}: {m.stdout[:300]!r}")
        if key == "ours" and said != "yes":
            report.problems.append(f"fetch_results.py: {said}")
        return said

    table = side_by_side(
        report, "download", runs, verdict, dw_note,
        f"Results of one completed batch ({n:,} requests), same sandbox, one process at a "
        f"time (median of {repeat} runs, taking turns)", "one correct record per request",
        {"curl": "curl -o OUT .../files/OUTPUT/content -o ERR .../files/ERROR/content",
         "dw": "dw batches results ID -o FILE",
         "sdk": "sdk_workflow.py --fetch ID (files.content x2, dict join)",
         "ours": "fetch_results.py JOB (download + join)"})
    expected = common.mixed_expected(n)
    table.notes.append(
        f"expected: {n:,} records, {expected['error']:,} failed requests (error), "
        f"{expected['truncated']:,} answers cut by max_tokens (truncated), all in input order. "
        "A raw server line shows a cut answer only as finish_reason inside its body; "
        "dw batches results writes the output file only (failures are in the error file, "
        "a second `dw files content ERROR_FILE_ID`).")


def main() -> int:
    parser = common.parser_for(__doc__)
    parser.add_argument("--requests", type=int, default=100_000,
                        help="requests in the batch file (default 100,000)")
    common.add_repeat_arg(parser, default=3)
    common.add_common_args(parser)
    args = parser.parse_args()
    common.need_curl()
    n = args.requests
    batch_file = ensure_batch_file(n)
    report = common.Report("tools", "Other tools side by side: dw CLI, openai SDK, curl")
    try:
        with tempfile.TemporaryDirectory(dir=common.work_path()) as tmp:
            big = ("--max-file-bytes", str(2_000_000_000))
            with common.start_sandbox("--manual", *big) as sandbox:
                upload_round(sandbox, batch_file, tmp, n, args.repeat, report)
            with common.start_sandbox("--rate", "0", *big) as sandbox:
                download_round(sandbox, batch_file, tmp, n, args.repeat, report)
    finally:
        if not args.keep:
            common.remove(batch_file)
    report.data.update(requests=n)
    return common.finish(report, args)


if __name__ == "__main__":
    sys.exit(main())
