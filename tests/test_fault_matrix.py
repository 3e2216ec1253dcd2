"""The fault matrix: one test per fault, each a whole job (submit -> poll -> fetch_results) run
through the real scripts as subprocesses against the sandbox with the fault injected, and
each ending in the SAME check (`assert_job_intact`):

- every input request has exactly one record in the results file, in input order, and every
  `ok` record carries its own request's answer (the sandbox answers "ECHO " + prompt);
- no batch was created twice (POST /v1/batches that created something, from the sandbox's
  call log, and GET /v1/batches?search=<job_id>);
- no file was uploaded twice: after a lost upload answer the stored file is found by its
  unique name (GET /v1/files?search=), so each shard has exactly one stored file;
- no line was downloaded twice: each raw copy has no duplicate line and holds exactly the
  lines the server serves for that file, as many as the job file records;
- no file under the job folder holds the API key.

Batches move only when a test says so (--manual + /_sandbox/advance), so every state is
deterministic. The README's "Reliability" table lists these rows.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    PYTHON,
    SCRIPTS,
    TEST_KEY,
    assert_no_key_in_tree,
    run_json,
    sandbox_per_file,
    script_env,
    wait_for,
)

CHAT = "/v1/chat/completions"
RAW_NAMES = {"output": "output", "error": "errors"}  # <batch>.<name>.jsonl in PROMPTS.raw/


# =============================================================================== fixtures

shared_sandbox, sb = sandbox_per_file("--enable-faults", "--manual", "--seed", "5")


# =============================================================================== a job

class Job:
    """One job folder: its input file (n chat requests, some failing on purpose) and the
    scripts run in that folder the way an agent runs them."""

    def __init__(self, sb, folder: Path, n: int = 12, name: str = "p", fail_every: int = 5,
                 pad: int = 0, write: bool = True) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.sb, self.folder, self.name = sb, folder, name
        self.input = folder / f"{name}.jsonl"
        self.job_path = folder / f"{name}.job.json"
        self.results = folder / f"{name}.results.jsonl"
        self.raw_dir = folder / f"{name}.raw"
        if write:
            with open(self.input, "w", encoding="utf-8") as f:
                for i in range(n):
                    prompt = f"question {i}" + (" " + "x" * pad if pad else "")
                    if fail_every and i % fail_every == 3:
                        prompt = f"[[fail:400]] question {i}"
                    f.write(json.dumps({"custom_id": f"r{i:03d}", "method": "POST", "url": CHAT,
                                        "body": {"model": "sandbox-chat", "messages": [
                                            {"role": "user", "content": prompt}]}}) + "\n")
        self.lines = [json.loads(x) for x in self.input.read_text().splitlines()]
        self.prompts = {x["custom_id"]: x["body"]["messages"][-1]["content"] for x in self.lines}

    # --- running scripts ---------------------------------------------------------------
    def env(self) -> dict:
        return script_env(self.sb.base_url)

    def run(self, script: str, *args: str) -> tuple[int, dict]:
        return run_json(script, *args, env=self.env(), cwd=self.folder)

    def submit(self, *args: str) -> tuple[int, dict]:
        return self.run("submit.py", self.input.name, *args)

    def poll(self, *args: str) -> tuple[int, dict]:
        return self.run("poll.py", self.job_path.name, *args)

    def fetch(self, *args: str) -> tuple[int, dict]:
        return self.run("fetch_results.py", self.job_path.name, *args)

    def start(self, script: str, *args: str) -> subprocess.Popen:
        """The script in the background (for signals and concurrency), --json on."""
        return subprocess.Popen([PYTHON, str(SCRIPTS / script), *args, "--json"],
                                env=self.env(), cwd=self.folder, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    # --- state -------------------------------------------------------------------------
    def data(self) -> dict:
        return json.loads(self.job_path.read_text())

    def batch_ids(self) -> list[str]:
        return [s["batch_id"] for s in self.data()["shards"]]

    def advance(self, requests_: int | None = None) -> None:
        for batch_id in self.batch_ids():
            self.sb.advance(batch_id, requests_)

    def expected(self) -> dict[str, str]:
        """custom_id -> the status a clean run gives it."""
        return {cid: "error" if "[[fail:" in p else "ok" for cid, p in self.prompts.items()}

    def file_id(self, index: int, kind: str) -> str:
        batch = self.sb.get(f"/batches/{self.data()['shards'][index]['batch_id']}").json()
        return batch[f"{kind}_file_id"]


def submitted(sb, tmp_path: Path, *args: str, **kw) -> Job:
    job = Job(sb, tmp_path / "work", **kw)
    code, out = job.submit(*args)
    assert code == 0, out
    return job


def final_code(job: Job) -> int:
    """The exit code of a clean fetch of the finished job: 4 when it has failing lines."""
    return 4 if "error" in job.expected().values() else 0


def communicate(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, dict | None, str]:
    out, err = proc.communicate(timeout=timeout)
    assert TEST_KEY not in out and TEST_KEY not in err
    return proc.returncode, (json.loads(out) if out.strip() else None), err


def rerun_resumes_at(sb, job: Job, file_id: str, skip: int) -> None:
    """The same fetch again finishes the job, asking for the file from line `skip` on (the
    lines recorded before), and the job ends intact."""
    mark = len(sb.calls())
    code, out = job.fetch()
    assert code == 0, out
    again = [c for c in sb.calls()[mark:] if c["path"] == f"/v1/files/{file_id}/content"]
    assert [c["query"] for c in again] == [f"skip={skip}"]
    assert_job_intact(sb, [job])


def served_lines(sb, file_id: str) -> int:
    return sb.get(f"/files/{file_id}/content").content.count(b"\n")


def calls_to(sb, method: str, path: str) -> list[dict]:
    return [c for c in sb.calls() if c["method"] == method and c["path"] == path]


# =============================================================================== the check

def assert_job_intact(sb, jobs: list[Job], *, expect: dict[str, str] | None = None
                      ) -> list[dict]:
    """The one check every row ends with (see the module docstring). `jobs`: the job and any
    retry jobs merged into its results file; `expect`: custom_id -> status where a row differs
    from a clean run."""
    first = jobs[0]
    calls = sb.calls()  # counted before this check makes calls of its own
    shards = [(job, s) for job in jobs for s in job.data()["shards"]]

    # no batch created twice
    created = [c for c in calls if c["method"] == "POST" and c["path"] == "/v1/batches"
               and c["status"] in (200, 201)]
    assert len(created) == len(shards), f"{len(created)} batches created for {len(shards)} shards"
    for job in jobs:
        data = job.data()
        found = sb.get("/batches", params={"search": data["job_id"], "limit": 100}).json()["data"]
        mine = [b for b in found if (b.get("metadata") or {}).get("job_id") == data["job_id"]]
        assert sorted(b["id"] for b in mine) == sorted(s["batch_id"] for s in data["shards"])
        assert sorted(b["metadata"]["shard_index"] for b in mine) == \
            sorted(str(s["index"]) for s in data["shards"])

    # no file uploaded twice: exactly one stored file per shard
    uploads = [c for c in calls if c["method"] == "POST" and c["path"] == "/v1/files"
               and c["status"] == 201]
    assert len(uploads) == len(shards), f"{len(uploads)} uploads for {len(shards)} shards"

    # no line downloaded twice, none lost: raw copy == what the server holds
    for job, shard in shards:
        batch = sb.get(f"/batches/{shard['batch_id']}").json()
        for kind, name in RAW_NAMES.items():
            raw = job.raw_dir / f"{shard['batch_id']}.{name}.jsonl"
            have = raw.read_bytes().splitlines() if raw.exists() else []
            assert len(set(have)) == len(have), f"duplicate lines in {raw}"
            file_id = batch.get(f"{kind}_file_id")
            served = sb.get(f"/files/{file_id}/content").content.splitlines() if file_id else []
            assert have == served, f"{raw} does not hold what the server serves"
            recorded = (shard.get("downloaded") or {}).get(f"{kind}_lines", 0)
            assert recorded == len(have), f"job file records {recorded} {kind} lines"

    # exactly one record per input request, in input order, each joined to its own request
    records = [json.loads(x) for x in first.results.read_text().splitlines()]
    assert [r["custom_id"] for r in records] == [x["custom_id"] for x in first.lines]
    want = {**first.expected(), **(expect or {})}
    assert {r["custom_id"]: r["status"] for r in records} == want
    for r in records:
        if r["status"] == "ok":
            assert r["content"] == "ECHO " + first.prompts[r["custom_id"]]

    for job in jobs:
        assert_no_key_in_tree(job.folder)
    return records


def finish(job: Job, *extra: str) -> dict:
    """Let every batch finish, fetch, and expect the clean end state's exit code."""
    job.advance()
    code, out = job.fetch(*extra)
    assert code == final_code(job), out
    return out


# =============================================================================== the rows

def test_429_storm_with_retry_after(sb, tmp_path):
    """429 on every route: the scripts wait as long as Retry-After says, then go on (default
    --max-retries 5 covers a storm of five in a row)."""
    job = Job(sb, tmp_path / "work")
    sb.fault(method="POST", path="/v1/files", kind="status", status=429, retry_after=1)
    sb.fault(method="POST", path="/v1/batches", kind="status", status=429, retry_after=0,
             times=5)
    started = time.monotonic()
    code, out = job.submit()
    assert code == 0, out
    assert time.monotonic() - started >= 1.0  # the Retry-After: 1 was honoured
    assert [c["status"] for c in calls_to(sb, "POST", "/v1/batches")] == [429] * 5 + [201]
    (batch_id,) = job.batch_ids()
    sb.fault(method="GET", path=f"/v1/batches/{batch_id}", kind="status", status=429,
             retry_after=0, times=5)
    assert job.poll()[0] == 3
    sb.fault(method="GET", path="/v1/files/*/content", kind="status", status=429,
             retry_after=0, times=4)
    job.advance()
    code, out = job.fetch()
    assert code == final_code(job), out
    statuses = [c["status"] for c in sb.calls() if c["fault"]]
    assert statuses.count(429) == 1 + 5 + 5 + 4  # every injected answer was met and retried
    assert_job_intact(sb, [job])


def test_5xx_bursts_on_every_route(sb, tmp_path):
    """500, 502 and 503 in a row on upload, batch status and file content; 503 and 500 on
    create (a 500 there is ambiguous: the batch is looked up by its metadata, not re-created
    blindly)."""
    job = Job(sb, tmp_path / "work")
    for status in (500, 502, 503):
        sb.fault(method="POST", path="/v1/files", kind="status", status=status, retry_after=0)
    for status in (503, 500):
        sb.fault(method="POST", path="/v1/batches", kind="status", status=status, retry_after=0)
    for status in (500, 502, 503):
        sb.fault(method="GET", path="/v1/batches/*", kind="status", status=status,
                 retry_after=0)
    for status in (500, 502, 503):
        sb.fault(method="GET", path="/v1/files/*/content", kind="status", status=status,
                 retry_after=0)
    code, out = job.submit()
    assert code == 0, out
    assert [c["status"] for c in calls_to(sb, "POST", "/v1/files")] == [500, 502, 503, 201]
    assert [c["status"] for c in calls_to(sb, "POST", "/v1/batches")] == [503, 500, 201]
    searches = [c for c in calls_to(sb, "GET", "/v1/batches") if "search=" in c["query"]]
    assert searches  # the 500 made submit look before creating again
    assert job.poll()[0] == 3
    finish(job)
    faulted = [c for c in sb.calls() if c["fault"]]
    assert len(faulted) == 11 and all(c["status"] in (500, 502, 503) for c in faulted)
    assert_job_intact(sb, [job])


@pytest.mark.parametrize("kind", ["reset_upload", "drop"])
def test_connection_breaks_mid_upload(sb, tmp_path, kind):
    """reset_upload: the connection closes after 1000 bytes of the body, nothing processed ->
    the file is looked up by its unique name, not found, and uploaded again. drop: the upload
    IS processed but the answer breaks off -> the stored file is found by its name
    (GET /files?search=) and used: one file."""
    job = Job(sb, tmp_path / "work", n=40, pad=200)
    assert job.input.stat().st_size > 5000
    if kind == "reset_upload":
        sb.fault(method="POST", path="/v1/files", kind=kind, after_bytes=1000, times=2)
    else:
        sb.fault(method="POST", path="/v1/files", kind=kind, after_bytes=10)
    code, out = job.submit()
    assert code == 0, out
    files = calls_to(sb, "POST", "/v1/files")
    expected = [kind, kind, None] if kind == "reset_upload" else [kind]
    assert [c["fault"] for c in files] == expected
    assert [c for c in calls_to(sb, "GET", "/v1/files") if "search=" in c["query"]]
    assert (out["uploaded"], out["uploads_found"]) == \
        ((1, 0) if kind == "reset_upload" else (0, 1))
    finish(job)
    assert_job_intact(sb, [job])


def _after_lines(sb, file_id: str, k: int) -> int:
    """Body bytes that hold the first k complete lines of a file, plus a few of the next."""
    lines = sb.get(f"/files/{file_id}/content").content.splitlines(keepends=True)
    assert len(lines) > k
    return sum(len(x) for x in lines[:k]) + 5


def test_connection_drop_mid_download(sb, tmp_path):
    """The output and the error download each break off inside a line: the next request
    resumes with ?skip=<complete lines saved>, never repeating or losing one."""
    job = submitted(sb, tmp_path, n=40)
    job.advance()
    cuts = {job.file_id(0, "output"): 10, job.file_id(0, "error"): 3}
    for file_id, k in cuts.items():
        sb.fault(method="GET", path=f"/v1/files/{file_id}/content", kind="drop",
                 after_bytes=_after_lines(sb, file_id, k))
    mark = len(sb.calls())
    code, out = job.fetch()
    assert code == 4, out
    for file_id, k in cuts.items():
        calls = [c for c in sb.calls()[mark:] if c["path"] == f"/v1/files/{file_id}/content"]
        assert calls[0]["fault"] == "drop" and calls[0]["query"] in ("", "skip=0")
        assert calls[1]["fault"] is None and calls[1]["query"].startswith(f"skip={k}")
    assert_job_intact(sb, [job])


def test_torn_last_line(sb, tmp_path):
    """Both downloads lose the second half of their last line: the torn line is not saved;
    the next request asks for it again from its start."""
    job = submitted(sb, tmp_path, n=20)
    job.advance()
    out_id, err_id = job.file_id(0, "output"), job.file_id(0, "error")
    sb.fault(method="GET", path=f"/v1/files/{out_id}/content", kind="tear")
    sb.fault(method="GET", path=f"/v1/files/{err_id}/content", kind="tear")
    code, out = job.fetch()
    assert code == 4, out
    out_calls = [c for c in sb.calls() if c["path"] == f"/v1/files/{out_id}/content"]
    assert out_calls[0]["fault"] == "tear" and "skip=15" in out_calls[1]["query"]  # 16 ok
    assert_job_intact(sb, [job])


def test_server_stalls_past_the_read_timeout(sb, tmp_path):
    """Batch status and both file downloads stall 1 s against --request-timeout 0.3: the
    reads time out and are retried, nothing is saved twice. (A create that times out is
    looked up by its metadata and found instead of repeated:
    test_submit.py::test_create_timing_out_on_a_slow_server_is_found_later.)"""
    job = submitted(sb, tmp_path)
    timeout = ("--request-timeout", "0.3")
    (batch_id,) = job.batch_ids()
    sb.fault(method="GET", path=f"/v1/batches/{batch_id}", kind="delay", seconds=1)
    assert job.poll(*timeout)[0] == 3
    job.advance()
    sb.fault(method="GET", path="/v1/files/*/content", kind="delay", seconds=1, times=2)
    code, out = job.fetch(*timeout)
    assert code == final_code(job), out
    delayed = [c for c in sb.calls() if c["fault"] == "delay"]
    assert len(delayed) == 3
    assert len([c for c in sb.calls() if c["path"].endswith("/content")]) >= 4  # retried
    assert_job_intact(sb, [job])


@pytest.mark.parametrize("moment", ["during_upload", "after_upload",
                                    "after_create_before_job_file"])
def test_sigkill_during_submit_then_rerun(sb, tmp_path, moment):
    """submit.py killed with SIGKILL (no cleanup at all) at each step, then run again.
    during_upload: the server still stores the file it received; the job file never learnt
    its id, but recorded that an upload was attempted, so the re-run finds the stored file by
    its unique name instead of uploading again. after_upload: the file id
    is recorded, the re-run only creates. after_create_before_job_file: the batch exists but
    the job file does not know it; the re-run finds it by metadata instead of creating."""
    job = Job(sb, tmp_path / "work")
    if moment == "during_upload":
        sb.fault(method="POST", path="/v1/files", kind="delay", seconds=1)
        reached = lambda: calls_to(sb, "POST", "/v1/files")  # noqa: E731
    elif moment == "after_upload":
        sb.fault(method="POST", path="/v1/batches", kind="status", status=503, retry_after=30)
        reached = lambda: calls_to(sb, "POST", "/v1/batches")  # noqa: E731
    else:
        sb.fault(method="POST", path="/v1/batches", kind="lose_response")
        sb.fault(method="GET", path="/v1/batches", kind="delay", seconds=10)
        reached = lambda: calls_to(sb, "GET", "/v1/batches")  # noqa: E731
    proc = job.start("submit.py", job.input.name)
    wait_for(reached, what=f"submit.py to reach {moment}")
    proc.kill()
    code, _, _ = communicate(proc)
    assert code == -signal.SIGKILL
    shard = job.data()["shards"][0]  # the job file is whole (written atomically)
    assert not shard.get("batch_id")
    if moment == "during_upload":
        assert not shard.get("file_id")
        wait_for(lambda: calls_to(sb, "POST", "/v1/files")[0]["status"] == 201,
                 what="the server to store the upload")
    else:
        assert shard["file_id"] and shard["create_attempted_at"]
    sb.clear_faults()
    code, out = job.submit()
    assert code == 0, out
    assert (out["uploaded"], out["uploads_found"], out["created"], out["found"]) == {
        "during_upload": (0, 1, 1, 0), "after_upload": (0, 0, 1, 0),
        "after_create_before_job_file": (0, 0, 0, 1)}[moment]
    finish(job)
    assert_job_intact(sb, [job])


def test_sigint_during_poll_wait_then_rerun(sb, tmp_path):
    """Ctrl-C while poll.py --wait waits: exit 130, the job file is whole, the batch keeps
    running (nothing is cancelled); waiting again later finishes the job."""
    job = submitted(sb, tmp_path)
    job.advance(4)
    (batch_id,) = job.batch_ids()
    proc = job.start("poll.py", job.job_path.name, "--wait", "--interval", "0.2")
    wait_for(lambda: len(calls_to(sb, "GET", f"/v1/batches/{batch_id}")) >= 2,
             what="poll.py to check twice")
    proc.send_signal(signal.SIGINT)
    code, out, err = communicate(proc)
    assert code == 130 and out["wait"]["interrupted"] is True, err
    assert "Traceback" not in err
    counts = job.data()["shards"][0]["request_counts"]  # 4 done, whichever they were
    assert counts["completed"] + counts["failed"] == 4, counts
    assert sb.get(f"/batches/{batch_id}").json()["status"] == "in_progress"
    assert not [c for c in sb.calls() if c["path"].endswith("/cancel")]
    job.advance()
    code, out = job.poll("--wait", "--interval", "0.2")
    assert code == 4, out  # finished, some requests failed (the [[fail:400]] lines)
    finish(job)
    assert_job_intact(sb, [job])


def test_sigint_during_download_then_rerun(sb, tmp_path):
    """Ctrl-C while fetch_results.py waits for the second shard's output: exit 130, the first
    shard's lines are saved and recorded; the re-run downloads only what is missing."""
    job = submitted(sb, tmp_path, "--max-requests", "6", n=12)
    assert len(job.batch_ids()) == 2
    job.advance()
    slow = job.file_id(1, "output")
    sb.fault(method="GET", path=f"/v1/files/{slow}/content", kind="delay", seconds=10)
    proc = job.start("fetch_results.py", job.job_path.name)
    wait_for(lambda: [c for c in sb.calls() if c["path"] == f"/v1/files/{slow}/content"],
             what="the second shard's download")
    proc.send_signal(signal.SIGINT)
    code, out, err = communicate(proc)
    assert code == 130 and out["error"]["code"] == "interrupted", err
    assert "Traceback" not in err
    first = job.data()["shards"][0]
    assert first["downloaded"]["output_lines"] == 5 and first["downloaded"]["error_lines"] == 1
    first_out = f"/v1/files/{job.file_id(0, 'output')}/content"
    mark = len(sb.calls())
    code, out = job.fetch()
    assert code == 4, out
    again = [c for c in sb.calls()[mark:] if c["path"] == first_out]
    assert again and all("skip=5" in c["query"] for c in again)  # shard 0: nothing twice
    assert_job_intact(sb, [job])


def test_sigkill_during_download_then_rerun(sb, tmp_path):
    """fetch_results.py killed with SIGKILL (no cleanup at all) while it holds half of an
    answer: the lines it appended but had not recorded yet are cut off on the re-run and
    fetched again, so none is kept twice and none is lost."""
    job = submitted(sb, tmp_path, n=200, pad=200, fail_every=0)
    job.advance()
    out_id = job.file_id(0, "output")
    size = len(sb.get(f"/files/{out_id}/content").content)
    sb.fault(method="GET", path=f"/v1/files/{out_id}/content", kind="stall",
             after_bytes=size // 2, seconds=60)
    proc = job.start("fetch_results.py", job.job_path.name)
    raw = job.raw_dir / f"{job.batch_ids()[0]}.output.jsonl"
    wait_for(lambda: raw.exists() and raw.stat().st_size > 0, what="half the output on disk")
    proc.kill()
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert 0 < raw.stat().st_size <= size // 2
    assert not (job.data()["shards"][0].get("downloaded") or {}).get("output_lines")
    rerun_resumes_at(sb, job, out_id, 0)


def test_sigkill_after_a_checkpoint_of_a_long_download_then_rerun(sb, tmp_path):
    """A download long enough to record its progress on the way (every CHECKPOINT_LINES
    lines, fsync first) is killed after such a checkpoint: the re-run keeps the recorded
    lines, cuts off the rest and continues after them with ?skip=."""
    from dwbatch.download import CHECKPOINT_LINES

    n = CHECKPOINT_LINES + 8_000
    job = submitted(sb, tmp_path, "--max-requests", str(n), n=n, fail_every=0)
    job.advance()
    out_id = job.file_id(0, "output")
    served = sb.get(f"/files/{out_id}/content").content
    stall_at = sum(len(x) + 1 for x in served.split(b"\n")[:CHECKPOINT_LINES + 5_000])
    sb.fault(method="GET", path=f"/v1/files/{out_id}/content", kind="stall",
             after_bytes=stall_at, seconds=60)
    proc = job.start("fetch_results.py", job.job_path.name)

    def recorded() -> int:
        try:
            return (job.data()["shards"][0].get("downloaded") or {}).get("output_lines") or 0
        except ValueError:  # the job file is being replaced this instant
            return 0

    lines = wait_for(recorded, timeout=60, what="a checkpoint in the job file")
    raw = job.raw_dir / f"{job.batch_ids()[0]}.output.jsonl"
    wait_for(lambda: raw.stat().st_size >= stall_at, what="the download at the stall")
    proc.kill()
    proc.communicate(timeout=30)
    assert CHECKPOINT_LINES <= lines < raw.read_bytes().count(b"\n") <= CHECKPOINT_LINES + 5_000
    rerun_resumes_at(sb, job, out_id, lines)


def test_disk_full_in_the_middle_of_a_download_then_rerun(sb, tmp_path):
    """The disk fills up while fetch_results.py writes the raw copy (a file-size limit stands
    in for a full disk): exit 2 naming the problem and what to do, not an internal error;
    nothing half-written is recorded, and once there is room the same command finishes."""
    import resource

    job = submitted(sb, tmp_path, n=200, pad=200, fail_every=0)
    job.advance()
    out_id = job.file_id(0, "output")
    size = len(sb.get(f"/files/{out_id}/content").content)

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 3, size // 3))

    proc = subprocess.run([PYTHON, str(SCRIPTS / "fetch_results.py"), job.job_path.name,
                           "--json"], env=job.env(), cwd=job.folder, capture_output=True,
                          text=True, timeout=60, preexec_fn=small_disk)
    out = json.loads(proc.stdout)
    assert proc.returncode == 2, out
    assert out["error"]["code"] == "local_file_error" and "too large" in out["error"]["message"]
    assert "free disk space" in out["error"]["hint"] and "Traceback" not in proc.stderr
    # whatever is recorded is on disk (how much depends on how the body was cut into reads)
    recorded = (job.data()["shards"][0].get("downloaded") or {}).get("output_lines") or 0
    raw = job.raw_dir / f"{job.batch_ids()[0]}.output.jsonl"
    assert raw.stat().st_size <= size // 3
    assert recorded <= raw.read_bytes().count(b"\n") < served_lines(sb, out_id)
    rerun_resumes_at(sb, job, out_id, recorded)


def test_two_fetches_on_one_job_at_once(sb, tmp_path):
    """A second fetch_results.py starts while the first is downloading: it waits for the
    first (a lock on the raw folder) and then finds nothing new; neither duplicates a line."""
    job = submitted(sb, tmp_path, n=20)
    job.advance()
    sb.fault(method="GET", path="/v1/files/*/content", kind="delay", seconds=0.5)
    first = job.start("fetch_results.py", job.job_path.name)
    wait_for(lambda: [c for c in sb.calls() if c["path"].endswith("/content")],
             what="the first download")
    second = job.start("fetch_results.py", job.job_path.name)
    code1, out1, err1 = communicate(first)
    code2, out2, err2 = communicate(second)
    assert code1 == code2 == 4, (err1, err2)
    news = sorted(out["batches"][0]["output"]["new_lines"] for out in (out1, out2))
    assert news == [0, 16]  # one of them downloaded everything, the other nothing
    assert_job_intact(sb, [job])


def _edit(change):
    def apply(data: bytes) -> bytes:
        obj = json.loads(data)
        change(obj)
        return json.dumps(obj, indent=2).encode()
    return apply


JOB_FILE_EDITS = {
    # name: (how the bytes are changed, words the error message must contain, scripts run)
    "torn write": (lambda b: b[: len(b) // 2], ["not valid JSON", "line "],
                   ["submit.py", "poll.py", "fetch_results.py", "batches.py"]),
    "index as text": (_edit(lambda d: d["shards"][0].update(index="0")), ["shards[0].index"],
                      ["fetch_results.py", "submit.py"]),
    "newer version": (_edit(lambda d: d.update(version=2)), ["version 2"],
                      ["poll.py", "batches.py"]),
    "shards removed": (_edit(lambda d: d.pop("shards")), ["'shards'"], ["fetch_results.py"]),
    "not UTF-8": (lambda b: b.replace(b'"version"', b'"versi\xff\xfen"', 1), ["UTF-8"],
                  ["poll.py"]),
}


def test_corrupted_or_hand_edited_job_file(sb, tmp_path):
    """A torn, broken or hand-edited job file makes submit, poll, fetch_results and batches
    cancel exit 2 naming the file and the problem; the file stays byte for byte as it was
    and nothing is sent. With the original bytes back, the job finishes as if nothing had
    happened."""
    job = submitted(sb, tmp_path)
    job.advance(5)
    good = job.job_path.read_bytes()
    args = {"submit.py": [job.input.name], "poll.py": [job.job_path.name],
            "fetch_results.py": [job.job_path.name],
            "batches.py": ["cancel", job.job_path.name]}
    for name, (change, words, scripts) in JOB_FILE_EDITS.items():
        broken = change(good)
        assert broken != good
        job.job_path.write_bytes(broken)
        mark = len(sb.calls())
        procs = [(script, job.start(script, *args[script])) for script in scripts]
        for script, proc in procs:  # at once: they only read the job file
            code, out, err = communicate(proc)
            assert code == 2 and out["error"]["code"] == "bad_job_file", (name, script, err)
            message = out["error"]["message"]
            assert job.job_path.name in message and "untouched" in message, (name, message)
            for word in words:
                assert word in message, (name, script, message)
        assert job.job_path.read_bytes() == broken, name
        assert sb.calls()[mark:] == [], name
    job.job_path.write_bytes(good)
    finish(job)
    assert_job_intact(sb, [job])


def _finished_ids(sb, batch_id: str) -> set[str]:
    """custom_ids the server has a result line for (output or error file)."""
    batch = sb.get(f"/batches/{batch_id}").json()
    ids = set()
    for kind in ("output", "error"):
        if batch.get(f"{kind}_file_id"):
            body = sb.get(f"/files/{batch[f'{kind}_file_id']}/content").content
            ids |= {json.loads(x)["custom_id"] for x in body.splitlines()}
    return ids


def test_batch_cancelled_half_way(sb, tmp_path):
    """batches.py cancel after 5 of 12 requests: those 5 keep their results, the other 7 are
    `missing` (exit 5) and their original lines are in the retry file; submitting it and
    fetching both jobs together gives every request its result."""
    job = submitted(sb, tmp_path)
    job.advance(5)
    assert job.fetch()[0] == 3
    code, out = job.run("batches.py", "cancel", job.job_path.name)
    assert code == 0, out
    job.advance()  # cancelling -> cancelled
    code, out = job.fetch()
    assert code == 5, out
    (batch_id,) = job.batch_ids()
    done = _finished_ids(sb, batch_id)
    assert len(done) == 5
    expect = {cid: ("missing" if cid not in done else status)
              for cid, status in job.expected().items()}
    records = assert_job_intact(sb, [job], expect=expect)
    originals = job.input.read_text().splitlines()
    retry = (job.folder / "p.retry.jsonl").read_text().splitlines()
    assert retry == [line for line, r in zip(originals, records, strict=True)
                     if r["status"] != "ok" and r["retriable"]]  # byte for byte, in order
    assert out["next"].endswith("submit.py p.retry.jsonl --json")
    code, out = job.run("submit.py", "p.retry.jsonl")
    assert code == 0, out
    retry_job = Job(sb, job.folder, name="p.retry", write=False)
    retry_job.advance()
    code, out = job.fetch(retry_job.job_path.name)
    assert code == final_code(job), out
    assert_job_intact(sb, [job, retry_job])


def test_batch_past_expires_at_keeps_running_on_doubleword(sb, tmp_path):
    """The sandbox clock passes expires_at with 4 of 12 done: Doubleword stamps expired_at
    but keeps working (no `expired` status), so poll says running (exit 3) with a note, the
    partial fetch saves what exists, and the batch finishes normally."""
    job = submitted(sb, tmp_path)
    job.advance(4)
    sb.control("POST", "/clock", {"advance_seconds": 25 * 3600})
    code, out = job.poll()
    assert code == 3, out
    view = out["batches"][0]
    assert view["status"] == "in_progress" and view["expires_in_seconds"] < 0
    assert any("past its completion window" in n for n in view["notes"])
    assert sb.get(f"/batches/{job.batch_ids()[0]}").json()["expired_at"]
    code, out = job.fetch()
    assert code == 3 and out["counts"]["pending"] == 8, out
    finish(job)
    assert_job_intact(sb, [job])


def test_batch_past_expires_at_expires_on_a_stock_server(sandbox_factory, tmp_path):
    """The same on an OpenAI-compatible server (--openai-compat): the batch becomes
    `expired` (poll exit 5); the 4 finished requests keep their results, the 8 that never ran
    come back in the error file as expired: `missing` records (fetch exit 5, like poll), all
    in the retry file."""
    compat = sandbox_factory("--openai-compat", "--enable-faults", "--manual", "--seed", "5")
    job = submitted(compat, tmp_path)
    job.advance(4)
    compat.control("POST", "/clock", {"advance_seconds": 25 * 3600})
    code, out = job.poll()
    assert code == 5 and out["batches"][0]["state"] == "expired", out
    code, out = job.fetch()
    assert code == 5 and out["counts"]["pending"] == 0, out
    assert out["counts"]["missing"] == 8, "requests that never ran are missing, not failed"
    batch = compat.get(f"/batches/{job.batch_ids()[0]}").json()
    ran = {json.loads(x)["custom_id"]
           for x in compat.get(f"/files/{batch['output_file_id']}/content").content.splitlines()}
    expired = set()
    for x in compat.get(f"/files/{batch['error_file_id']}/content").content.splitlines():
        line = json.loads(x)
        (expired if line["error"]["code"] == "batch_expired" else ran).add(line["custom_id"])
    assert len(ran) == 4 and len(expired) == 8
    expect = {cid: "missing" if cid in expired else status
              for cid, status in job.expected().items()}
    records = assert_job_intact(compat, [job], expect=expect)
    for r in records:
        if r["custom_id"] in expired:
            assert "completion window" in r["error"]["message"]
    retry = [json.loads(x)["custom_id"]
             for x in (job.folder / "p.retry.jsonl").read_text().splitlines()]
    assert retry == [r["custom_id"] for r in records
                     if r["status"] != "ok" and r["retriable"]], "rejected (400) ones are not"
    assert set(retry) >= expired


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under the job folder (lock files aside) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def test_key_that_stops_working_mid_job(sb, tmp_path):
    """The key is refused (401) first at create, later on every read: each command exits 6
    at once (401 is never retried), changes no file, and the same commands finish the job
    once the key works again: nothing uploaded or created twice, nothing lost."""
    job = Job(sb, tmp_path / "work")
    sb.fault(method="POST", path="/v1/batches", kind="status", status=401,
             message="Authentication required")
    code, out = job.submit()
    assert code == 6 and "Authentication required" in out["error"]["message"], out
    assert job.data()["shards"][0]["file_id"] and not job.data()["shards"][0].get("batch_id")
    code, out = job.submit()
    assert code == 0 and out["uploaded"] == 0 and out["created"] == 1, out
    job.advance(5)
    assert job.fetch()[0] == 3
    before = _snapshot(job.folder)
    sb.fault(method="GET", path="/v1/*", kind="status", status=401, times=50,
             message="Authentication required")
    mark = len(sb.calls())
    for run in (job.poll, job.fetch):
        code, out = run()
        assert code == 6 and out["error"]["code"] == "unauthorized", out
        assert "Authentication required" in out["error"]["message"]
        assert "DOUBLEWORD_API_KEY" in out["error"]["hint"]
    assert len(sb.calls()) - mark == 2  # one call each: a 401 is never retried
    assert _snapshot(job.folder) == before  # nothing saved was touched or lost
    sb.clear_faults()
    finish(job)
    assert_job_intact(sb, [job])
