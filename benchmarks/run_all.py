"""Run every benchmark, one after the other, and write benchmarks/RESULTS.md.

Each benchmark runs as its own process (python3 benchmarks/bench_X.py ... --report FILE) and
measures against its baseline in that same run; this script adds what a reader needs to judge
the numbers: the machine, the date, the commit, and how loaded the machine was while each
benchmark ran (load average sampled every 2 s, and how many pytest processes of other people
were running). Generated data goes under benchmarks/work/ and is removed unless --keep.

    .venv/bin/python benchmarks/run_all.py            # full sizes -> benchmarks/RESULTS.md
    .venv/bin/python benchmarks/run_all.py --quick    # small sizes -> work/RESULTS-quick.md
    .venv/bin/python benchmarks/run_all.py --only upload download   # -> work/RESULTS-partial.md

Use the project's .venv interpreter: the workflow benchmark needs the `openai` package.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import threading
import time

import common

# name: (script, full-size arguments, quick arguments)
BENCHMARKS = {
    "validate": ("bench_validate.py", ["--size-mb", "200"], ["--size-mb", "10"]),
    "upload": ("bench_upload.py", ["--size-mb", "200"], ["--size-mb", "20"]),
    "download": ("bench_download.py", ["--lines", "1000000"], ["--lines", "50000"]),
    "reconcile": ("bench_reconcile.py", ["--requests", "1000000"], ["--requests", "50000"]),
    "table": ("bench_table.py", ["--requests", "1000000"], ["--requests", "50000"]),
    "poll": ("bench_poll_calls.py", ["--scale", "30", "--requests", "1200"],
             ["--scale", "240", "--requests", "600"]),
    "workflow": ("bench_workflow.py", ["--requests", "100000"], ["--requests", "5000"]),
    "tools": ("bench_tools.py", ["--requests", "100000"], ["--requests", "5000"]),
    "scale": ("bench_scale.py", ["--requests", "1000000"],
              ["--requests", "20000", "--max-requests", "5000"]),
}


class LoadSampler:
    """Load average and other people's pytest processes, sampled while a benchmark runs."""

    def __init__(self) -> None:
        self.loads: list[float] = []
        self.pytests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.loads.append(os.getloadavg()[0])
            self.pytests = max(self.pytests, count_pytest())
            if self._stop.wait(2.0):
                return

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> str:
        if not self.loads:
            return "-"
        return (f"{sum(self.loads) / len(self.loads):.2f} mean / {max(self.loads):.2f} max; "
                f"other pytest processes: {self.pytests}")


def count_pytest() -> int:
    """Running pytest processes (benchmarks never start pytest, so these are other people's)."""
    n = 0
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"pytest") or a == b"pytest" for a in argv[:3]):
            n += 1
    return n


def machine() -> list[tuple[str, str]]:
    def first(path: str, key: str) -> str:
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "?"

    mem_kb = first("/proc/meminfo", "MemTotal").split()[0]
    mem = f"{int(mem_kb) / 1024 / 1024:.1f} GiB" if mem_kb.isdigit() else "?"
    curl = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout
    try:
        import openai
        openai_version = openai.__version__
    except ImportError:
        openai_version = "not installed"
    try:
        dw = subprocess.run([os.path.join(common.ROOT, ".dwtools", "dw"), "--version"],
                            capture_output=True, text=True).stdout.strip() or "does not start"
    except OSError:
        dw = "not prepared (tests/prepare_dw_cli.py)"
    commit = subprocess.run(["git", "-C", common.ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", common.ROOT, "status", "--porcelain", "--",
                            "scripts", "references"], capture_output=True, text=True).stdout
    changed = [line[3:] for line in dirty.splitlines() if line.strip()]
    if changed:
        commit += f" plus uncommitted changes in {', '.join(changed)}"
    return [("CPU", f"{os.cpu_count()} cores, {first('/proc/cpuinfo', 'model name')}"),
            ("memory", mem),
            ("OS", f"{platform.system()} {platform.release()}"),
            ("Python", f"{platform.python_version()} ({sys.executable})"),
            ("curl", curl.split("\n")[0][:60] or "?"),
            ("openai SDK", openai_version),
            ("Doubleword dw CLI", dw),
            ("commit", commit or "?"),
            ("peak memory measured by", (common.GNU_TIME and f"GNU {common.GNU_TIME} -f %M "
             "(the kernel's ru_maxrss of each command)" or "a python3 -S fork launcher")
             + "; and the sum of Pss of a command and the processes it starts, sampled every "
               "10 ms: the larger of the two is reported")]


def run_one(name: str, quick: bool, keep: bool, reports: str) -> dict:
    script, full, small = BENCHMARKS[name]
    report_path = os.path.join(reports, f"{name}.json")
    log_path = os.path.join(reports, f"{name}.log")
    common.remove(report_path)
    bench_args = small if quick else full
    cmd = [sys.executable, os.path.join(common.HERE, script), *bench_args,
           "--report", report_path] + (["--keep"] if keep else [])
    print(f"\n=== {name}: benchmarks/{script} {' '.join(bench_args)}", flush=True)
    started = datetime.datetime.now().astimezone()
    t0 = time.perf_counter()
    with LoadSampler() as load, open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=common.ROOT)
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        proc.wait()
    result = {"name": name, "args": bench_args, "exit": proc.returncode,
              "seconds": time.perf_counter() - t0, "started": started, "load": load.summary()}
    if os.path.exists(report_path):
        result["report"] = common.Report.load(report_path)
    else:
        with open(log_path) as f:
            result["tail"] = f.read()[-3000:]
    return result


def markdown(results: list[dict], quick: bool, began: datetime.datetime,
             command: str, machine_rows: list[tuple[str, str]]) -> str:
    out = ["# Benchmark results", "",
           f"Written by `{command}` on {began:%Y-%m-%d %H:%M %Z}"
           + (" with **--quick** sizes (too small for the speed targets: process start-up "
              "dominates; the targets apply to the full sizes)" if quick else "") + ".",
           "Every comparison is against a baseline measured in the same run, on the same "
           "machine, against the same local sandbox (scripts/sandbox_server.py on loopback). "
           "See benchmarks/README.md for what each benchmark does and how to re-run it.", "",
           "## Machine", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in machine_rows]
    now = dict(machine())["commit"]
    if now != dict(machine_rows)["commit"]:
        out.append(f"| scripts when this file was written | {now} (they changed during the "
                   "run; each benchmark used the scripts as they were when it ran) |")
    out += ["", "Load while each benchmark ran (1-minute load average sampled every 2 s on "
            f"{os.cpu_count()} cores; it includes the benchmark's own client and sandbox, "
            "about 1 to 2 when they are busy; other people's test runs share the machine):",
            "",
            "| benchmark | started | seconds | load | exit |", "|---|---|---:|---|---:|"]
    for r in results:
        out.append(f"| {r['name']} | {r['started']:%H:%M:%S} | {r['seconds']:.0f} | "
                   f"{r['load']} | {r['exit']} |")
    out += ["", "## Targets", "", "| benchmark | target | measured | result |",
            "|---|---|---|---|"]
    for r in results:
        rep = r.get("report")
        if rep is None:
            out.append(f"| {r['name']} | (benchmark did not finish: exit {r['exit']}) | - | "
                       "**FAIL** |")
            continue
        for c in rep.checks:
            out.append(f"| {r['name']} | {c.target} | {c.measured} | "
                       f"{'pass' if c.passed else '**FAIL**'} |")
        for p in rep.problems:
            out.append(f"| {r['name']} | correct output | {p} | **FAIL** |")
        if not rep.checks and not rep.problems:
            out.append(f"| {r['name']} | (no numeric target) correct output | as expected | "
                       "pass |")
    for r in results:
        rep = r.get("report")
        out += ["", f"## {rep.title if rep else r['name']}", "",
                f"`python3 benchmarks/{BENCHMARKS[r['name']][0]} {' '.join(r['args'])}`", ""]
        if rep is None:
            out += ["Did not finish. Last output:", "", "```", r.get("tail", ""), "```"]
            continue
        out += [f"- {i}" for i in rep.info]
        for t in rep.tables:
            out += ["", t.markdown()]
        if rep.checks or rep.problems:
            out.append("")
        out += [f"- {'PASS' if c.passed else '**FAIL**'}: {c.target}: {c.measured}"
                for c in rep.checks]
        out += [f"- **PROBLEM**: {p}" for p in rep.problems]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = common.parser_for(__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), metavar="NAME",
                        help=f"run only these ({', '.join(BENCHMARKS)})")
    parser.add_argument("--skip", nargs="+", choices=list(BENCHMARKS), metavar="NAME",
                        default=[], help="leave these out")
    parser.add_argument("--keep", action="store_true",
                        help="keep generated data in benchmarks/work/")
    parser.add_argument("-o", "--output",
                        help="where to write the results (default: benchmarks/RESULTS.md for a "
                             "full run of everything; benchmarks/work/RESULTS-quick.md or "
                             "RESULTS-partial.md otherwise, so the committed results stay)")
    args = parser.parse_args()
    names = [n for n in (args.only or BENCHMARKS) if n not in args.skip]
    if not args.output:
        partial = args.quick or len(names) < len(BENCHMARKS)
        args.output = (common.work_path("RESULTS-quick.md" if args.quick else
                                        "RESULTS-partial.md")
                       if partial else os.path.join(common.HERE, "RESULTS.md"))
    reports = common.work_path("reports")
    os.makedirs(reports, exist_ok=True)
    began = datetime.datetime.now().astimezone()
    command = "python3 benchmarks/run_all.py" + (" --quick" if args.quick else "") + \
        (f" --only {' '.join(args.only)}" if args.only else "") + \
        (f" --skip {' '.join(args.skip)}" if args.skip else "")
    machine_rows = machine()  # as the run starts
    results = []
    for name in names:
        results.append(run_one(name, args.quick, args.keep, reports))
        with open(args.output + ".tmp", "w", encoding="utf-8") as f:  # after each: partial
            f.write(markdown(results, args.quick, began, command, machine_rows))
        os.replace(args.output + ".tmp", args.output)
    ok = all(r["exit"] == 0 for r in results)
    print(f"\n{'all targets met' if ok else 'some targets missed or benchmarks failed'}; "
          f"wrote {os.path.relpath(args.output, common.ROOT)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
