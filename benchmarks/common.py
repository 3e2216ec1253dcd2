"""What every benchmark shares: paths, the sandbox, measuring one child process, generated
data under benchmarks/work/, and the report (tables, target checks) each benchmark prints and,
with --report PATH, saves as JSON for run_all.py to put into RESULTS.md.

Peak memory is the kernel's own number (ru_maxrss, the peak resident set of exactly the
measured process), so nothing polls and nothing is missed. One trap, measured and avoided: on
Linux a child's ru_maxrss starts at the RSS of the process it was forked from (fork copies the
parent's mappings, and exec keeps the larger high-water mark), so a child reaped directly by
this Python process can never show less than this process's own RSS (a `true` started from a
Python process holding 300 MB reports 313 MB). So each command is started through GNU
`/usr/bin/time -f %M`, a ~1 MB process that forks it; without GNU time, through a bare
`python3 -S` launcher (a floor of about 8 MB instead of 1 MB).
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
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPTS = os.path.join(ROOT, "scripts")
WORK = os.path.join(HERE, "work")
BENCH_KEY = "dw-bench-key-not-a-secret-0000"

if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)


# --- paths and generated data ------------------------------------------------------------

def work_path(*parts: str) -> str:
    """A path under benchmarks/work/ (gitignored); the folder is created."""
    os.makedirs(WORK, exist_ok=True)
    return os.path.join(WORK, *parts)


def script(name: str, *args: str) -> list[str]:
    """The command line of one real script, run with this interpreter."""
    return [sys.executable, os.path.join(SCRIPTS, name), *args]


def dumps_line(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":")) + "\n"


def chat_request(custom_id: str, content: str, *, model: str = "sandbox-chat",
                 max_tokens: int | None = None, system: str | None = None) -> dict:
    body: dict = {"model": model}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    messages = [{"role": "system", "content": system}] if system else []
    body["messages"] = messages + [{"role": "user", "content": content}]
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": body}


# The mixed prompts job of bench_workflow.py and bench_scale.py: prompt i (1-based) is an
# ordinary one, or makes the mock model fail with a 400 (1%), or is long enough for its answer
# to be cut by max_tokens 32 (1%). The sandbox answers "ECHO " + prompt.
MIXED_MAX_TOKENS = 32


def mixed_kind(i: int) -> str:
    return {37: "error", 59: "truncated"}.get(i % 100, "ok")


def mixed_prompt(i: int) -> str:
    kind = mixed_kind(i)
    if kind == "error":
        return f"Describe item {i} in one short sentence. [[fail:400]]"
    if kind == "truncated":
        return f"Describe item {i} at length: " + " ".join(f"word{k}" for k in range(40))
    return f"Describe item {i} in one short sentence."


def write_mixed_prompts(path: str, n: int) -> str:
    return write_once(path, lambda: (mixed_prompt(i) + "\n" for i in range(1, n + 1)),
                      reuse=lambda p: os.path.exists(p) and count_lines(p) == n)


def check_results_file(results: str, n: int) -> dict:
    """What fetch_results.py wrote for the mixed job: records, input order, statuses."""
    wrong, flags, records, in_place = 0, {"error": 0, "truncated": 0}, 0, 0
    with open(results, encoding="utf-8") as f:
        for k, line in enumerate(f, 1):
            rec = json.loads(line)
            records += 1
            i = int(rec["custom_id"].split("-")[1])
            in_place += i == k
            kind = mixed_kind(i)
            if rec["status"] != kind or (kind == "ok" and rec["content"] != "ECHO "
                                         + mixed_prompt(i)):
                wrong += 1
            if rec["status"] in flags:
                flags[rec["status"]] += 1
    order = "yes" if in_place == records else f"NO: {in_place:,} of {records:,} in place"
    return {"records": records, "order": order, "wrong": wrong, **flags}


def mixed_expected(n: int) -> dict:
    return {"error": sum(mixed_kind(i) == "error" for i in range(1, n + 1)),
            "truncated": sum(mixed_kind(i) == "truncated" for i in range(1, n + 1))}


def write_once(path: str, make_lines: Callable[[], Iterable[str]],
               reuse: Callable[[str], bool] = os.path.exists) -> str:
    """Write make_lines() to path (temp file, then rename) unless reuse(path) says the file
    there (kept by an earlier --keep run) will do."""
    if reuse(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for line in make_lines():
            f.write(line)
    os.replace(tmp, path)
    return path


def remove(*paths: str) -> None:
    """Delete generated files and folders (what a run without --keep leaves behind)."""
    for path in paths:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.unlink(path)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def count_lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def tree_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


# --- the sandbox ---------------------------------------------------------------------------

class Sandbox:
    """A running scripts/sandbox_server.py on an ephemeral loopback port."""

    def __init__(self, proc: subprocess.Popen, base_url: str, key: str) -> None:
        self.proc = proc
        self.base_url = base_url  # ends with /v1
        self.root_url = base_url[: -len("/v1")]
        self.key = key

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"}

    def get(self, path: str) -> dict:
        import requests
        r = requests.get(self.base_url + path, headers=self.headers(), timeout=60)
        r.raise_for_status()
        return r.json()

    def calls(self) -> list[dict]:
        """The call log (needs --enable-faults or --manual)."""
        import requests
        return requests.get(self.root_url + "/_sandbox/calls", timeout=60).json()["calls"]

    def wait_batch(self, batch_id: str, timeout: float = 1800) -> dict:
        """The batch once it has ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = self.get(f"/batches/{batch_id}")
            if batch.get("status") in ("completed", "failed", "cancelled", "expired"):
                return batch
            time.sleep(0.5)
        raise SystemExit(f"batch {batch_id} did not finish in {timeout:.0f} s")

    def peak_mb(self) -> float | None:
        """The sandbox's own peak resident memory so far (VmHWM), Linux only."""
        return proc_peak_mb(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_sandbox(*flags: str, key: str = BENCH_KEY) -> Sandbox:
    """Start the sandbox (`flags` as on its command line) and wait for its base URL."""
    proc = subprocess.Popen(script("sandbox_server.py", "--port", "0", "--api-key", key, *flags),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line or "")
        if m:
            return Sandbox(proc, m.group(1), key)
        if not line:
            break
    proc.kill()
    raise SystemExit("the sandbox did not start")


def script_env(base_url: str, key: str = BENCH_KEY, **extra: str) -> dict:
    """This environment without any DOUBLEWORD_* setting, pointed at the sandbox."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOUBLEWORD_")}
    env.update(DOUBLEWORD_API_KEY=key, DOUBLEWORD_BASE_URL=base_url, **extra)
    return env


def curl_header_file(folder: str, key: str = BENCH_KEY) -> str:
    """A header file for curl -H @FILE, so the key stays off curl's argv."""
    path = os.path.join(folder, "auth-header.txt")
    with open(path, "w") as f:
        f.write(f"Authorization: Bearer {key}\n")
    return path


def need_curl() -> None:
    if not shutil.which("curl"):
        raise SystemExit("curl is needed for the baseline")


# --- measuring -----------------------------------------------------------------------------

@dataclass
class Measurement:
    wall: float  # seconds
    rss_mb: float  # peak resident set of the process, MB (2**20 bytes): the kernel's ru_maxrss
    exit_code: int
    stdout: str
    # the command and every process it started, together: the highest sum of their
    # proportional set sizes (Pss: a page two of them share counts half in each), sampled
    # every 10 ms (None: not sampled). The kernel's peak above is of the largest one only.
    tree_mb: float | None = None

    @property
    def peak_mb(self) -> float:
        """The memory figure to judge: the larger of the two."""
        return max(self.rss_mb, self.tree_mb or 0.0)

    def json(self) -> dict:
        try:
            return json.loads(self.stdout or "{}")
        except ValueError:
            return {}


def proc_peak_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


LAUNCHER = """\
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write("%d\\n" % usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def _gnu_time() -> str | None:
    path = "/usr/bin/time"
    if sys.platform != "linux" or not os.access(path, os.X_OK):
        return None
    probe = subprocess.run([path, "-f", "%M", "true"], capture_output=True, text=True)
    return path if probe.returncode == 0 and probe.stderr.strip().isdigit() else None


GNU_TIME = _gnu_time()


def _launch(cmd: list[str], report_file: str) -> list[str]:
    """cmd started by a small process that writes cmd's peak RSS (KB) to report_file."""
    if GNU_TIME:
        return [GNU_TIME, "-f", "%M", "-o", report_file, *cmd]
    return [sys.executable, "-S", "-c", LAUNCHER, report_file, *cmd]


def _peak_kb(report_file: str) -> float:
    with open(report_file) as f:  # GNU time may put "Command exited with ..." first
        lines = [ln.strip() for ln in f if ln.strip()]
    return float(lines[-1])


def measure(cmd: list[str], env: dict | None = None, cwd: str | None = None,
            stderr_to: str | None = None, tree: bool = True) -> Measurement:
    """Run one child to its end: wall seconds, its own peak RSS, exit status, stdout; with
    tree (the default), also the sampled memory of it and the processes it starts
    (Measurement.tree_mb; peak_mb is the larger of the two). stderr is dropped unless
    stderr_to names a file for it."""
    with tempfile.TemporaryFile() as out, tempfile.NamedTemporaryFile(suffix=".rss") as rss:
        err = open(stderr_to, "wb") if stderr_to else subprocess.DEVNULL
        try:
            start = time.perf_counter()
            proc = subprocess.Popen(_launch(cmd, rss.name), stdout=out, stderr=err, env=env,
                                    cwd=cwd)
            sampler = TreeSampler(proc.pid) if tree else None
            proc.wait()
            wall = time.perf_counter() - start
            tree_mb = sampler.stop() if sampler else None
        finally:
            if stderr_to:
                err.close()
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
        peak_kb = _peak_kb(rss.name)
    divisor = 1024.0 * 1024.0 if sys.platform == "darwin" and not GNU_TIME else 1024.0
    return Measurement(wall, peak_kb / divisor, proc.returncode, text, tree_mb)


class TreeSampler:
    """The highest sum of Pss over a process and its descendants, sampled every 10 ms in a
    thread (Linux /proc; elsewhere None). The launcher (GNU time) is in the tree too: a few
    hundred KB."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kb = pid, 0
        self.works = os.path.exists(f"/proc/{pid}/smaps_rollup")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, sum(_pss_kb(p) for p in _tree(self.pid)))
            self._stop.wait(0.01)

    def stop(self) -> float | None:
        self._stop.set()
        self._thread.join()
        return self.peak_kb / 1024.0 if self.works else None


def _tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    pids += _tree(int(child))
    except OSError:
        pass
    return pids


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def combined(runs: list[Measurement]) -> Measurement:
    """Several runs of one command as one: median wall time, highest peak memory (of either
    kind), the first failing exit status (else 0), the last stdout."""
    walls = sorted(m.wall for m in runs)
    mid = len(walls) // 2
    median = walls[mid] if len(walls) % 2 else (walls[mid - 1] + walls[mid]) / 2
    failed = [m.exit_code for m in runs if m.exit_code != 0]
    trees = [m.tree_mb for m in runs if m.tree_mb is not None]
    return Measurement(median, max(m.rss_mb for m in runs), failed[0] if failed else 0,
                       runs[-1].stdout, max(trees) if trees else None)


def alternate(commands: dict[str, Callable[[], Measurement]], repeat: int,
              before: Callable[[], None] | None = None) -> dict[str, list[Measurement]]:
    """Run each contender `repeat` times, taking turns (a, b, a, b, ...), so a burst of load
    from other processes hits both rather than one. `before` runs ahead of every run,
    unmeasured (e.g. settle)."""
    runs: dict[str, list[Measurement]] = {name: [] for name in commands}
    for _ in range(max(1, repeat)):
        for name, run in commands.items():
            if before is not None:
                before()
            runs[name].append(run())
    return runs


def settle() -> None:
    """Let the disk finish what earlier runs left it (writing back their files, discarding
    deleted ones) so that work is not charged to whichever command runs next."""
    if hasattr(os, "sync"):
        os.sync()


def timed(fn: Callable, *args, repeat: int = 1) -> tuple[float, object]:
    """Best wall time of fn(*args) in this process over `repeat` runs, and its result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


# --- reports -------------------------------------------------------------------------------

def fmt(value: object, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if "{" in spec:  # a template: "{:.2f}x"
        return spec.format(value)
    if spec:
        return format(value, spec)
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@dataclass
class Table:
    """Columns, rows of already formatted cells, and notes printed under it."""
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)  # per column: ".1f", "{:.2f}x" or ""

    def add(self, *cells: object) -> None:
        specs = self.formats + [""] * (len(cells) - len(self.formats))
        self.rows.append([fmt(c, s) for c, s in zip(cells, specs, strict=False)])

    def _numeric(self, col: int) -> bool:
        cells = [r[col] for r in self.rows if r[col] not in ("-", "")]
        return bool(cells) and all(re.fullmatch(r"[-+]?[\d,]*\.?\d+[x%]?", c) for c in cells)

    def text(self) -> str:
        widths = [max([len(c)] + [len(r[i]) for r in self.rows])
                  for i, c in enumerate(self.columns)]
        right = [self._numeric(i) for i in range(len(self.columns))]

        def line(cells: list[str]) -> str:
            return "  ".join(c.rjust(w) if r else c.ljust(w)
                             for c, w, r in zip(cells, widths, right, strict=True)).rstrip()

        out = [self.title, line(self.columns)] + [line(r) for r in self.rows]
        return "\n".join(out + [f"  note: {n}" for n in self.notes])

    def markdown(self) -> str:
        right = [self._numeric(i) for i in range(len(self.columns))]
        head = "| " + " | ".join(self.columns) + " |"
        rule = "|" + "|".join("---:" if r else "---" for r in right) + "|"
        body = ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in self.rows]
        notes = [f"- {n}" for n in self.notes]
        return "\n".join([f"**{self.title}**", "", head, rule, *body]
                         + (["", *notes] if notes else []))


@dataclass
class Check:
    """One target: what it is, what was measured, whether it was met."""
    target: str
    measured: str
    passed: bool


@dataclass
class Report:
    name: str
    title: str
    info: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # correctness failures (wrong output)
    data: dict = field(default_factory=dict)  # raw numbers for run_all.py

    def table(self, title: str, columns: list[str], formats: list[str] | None = None) -> Table:
        t = Table(title, columns, formats=formats or [])
        self.tables.append(t)
        return t

    def check(self, target: str, measured: str, passed: bool) -> None:
        self.checks.append(Check(target, measured, passed))

    @property
    def ok(self) -> bool:
        return not self.problems and all(c.passed for c in self.checks)

    def text(self) -> str:
        parts = [*self.info]
        for t in self.tables:
            parts += ["", t.text()]
        if self.problems:
            parts += [""] + [f"PROBLEM: {p}" for p in self.problems]
        for c in self.checks:
            parts.append(f"{'PASS' if c.passed else 'FAIL'}: {c.target}: {c.measured}")
        return "\n".join(parts)

    def save(self, path: str) -> None:
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(asdict(self), f, indent=1)
        os.replace(path + ".tmp", path)

    @classmethod
    def load(cls, path: str) -> Report:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        raw["tables"] = [Table(**t) for t in raw["tables"]]
        raw["checks"] = [Check(**c) for c in raw["checks"]]
        return cls(**raw)


def add_repeat_arg(parser: argparse.ArgumentParser, default: int = 3) -> None:
    parser.add_argument("--repeat", type=int, default=default,
                        help=f"runs of each contender, taking turns; the median wall time and "
                             f"the highest peak memory are reported (default {default})")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep", action="store_true",
                        help="keep generated data in benchmarks/work/ (reused by the next run)")
    parser.add_argument("--report", metavar="PATH",
                        help="also save the report as JSON (run_all.py reads it)")


def finish(report: Report, args: argparse.Namespace) -> int:
    """Print the report, save it if asked; exit status 0 when every target and check held."""
    print(report.text(), flush=True)
    if getattr(args, "report", None):
        report.save(args.report)
    return 0 if report.ok else 1


def parser_for(doc: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
