"""submit.py end to end: the real script as a subprocess, real HTTP, the sandbox and its faults.

The promise under test is "exactly once": after a re-run, a lost create answer, bursts of
429/503, or a SIGKILL at the worst moments, the server holds exactly one file and one batch
per shard, proven by the sandbox's own call log.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import socket
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
    run_script,
    script_env,
    wait_for,
)
from dwbatch import jobfile

CHAT = "/v1/chat/completions"


# --------------------------------------------------------------------------- helpers

def write_batch(path: Path, n: int, *, prefix: str = "r", model: str = "sandbox-chat",
                pad: int = 0) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({
                "custom_id": f"{prefix}-{i}", "method": "POST", "url": CHAT,
                "body": {"model": model, "max_tokens": 20,
                         "messages": [{"role": "user", "content": f"hello {i} " + "x" * pad}]},
            }) + "\n")
    return path


def posts(sandbox, path: str) -> list[dict]:
    return [c for c in sandbox.calls() if c["method"] == "POST" and c["path"] == path]


def batches_of_job(sandbox, job_id: str) -> list[dict]:
    r = sandbox.get("/batches", params={"search": job_id, "limit": 100})
    r.raise_for_status()
    return [b for b in r.json()["data"] if (b.get("metadata") or {}).get("job_id") == job_id]


def files_on_server(sandbox) -> list[dict]:
    r = sandbox.get("/files", params={"limit": 100, "purpose": "batch"})
    r.raise_for_status()
    return [f for f in r.json()["data"] if f.get("purpose") == "batch"]


def submit(sandbox, *args, env=None, cwd=None):
    return run_json("submit.py", *args, env=env or script_env(sandbox.base_url), cwd=cwd)


def load(path) -> dict:
    return json.loads(Path(path).read_text())


def start_submit(sandbox, *args, cwd=None) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, str(SCRIPTS / "submit.py"), *args, "--json"],
                            env=script_env(sandbox.base_url), cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert TEST_KEY not in out and TEST_KEY not in err


# --------------------------------------------------------------------------- happy path

def test_submit_records_everything_and_rerun_sends_nothing(sandbox, tmp_path):
    src = write_batch(tmp_path / "prompts.jsonl", 5)
    code, out = submit(sandbox, str(src), "--metadata", "project=demo")
    assert code == 0, out
    job_path = tmp_path / "prompts.job.json"
    assert out["job"] == str(job_path) and out["created"] == 1 and out["uploaded"] == 1
    assert out["next"].endswith(f"poll.py {job_path} --json")
    job = load(job_path)
    assert job["version"] == 1 and job["base_url"] == sandbox.base_url
    assert job["endpoint"] == CHAT and job["completion_window"] == "24h"
    assert job["inputs"][0]["path"] == "prompts.jsonl"  # relative to the job file
    assert job["inputs"][0]["requests"] == 5
    (shard,) = job["shards"]
    assert shard["path"] == "prompts.jsonl" and shard["file_id"] and shard["batch_id"]
    assert shard["create_attempted_at"] and shard["status"] == "validating"
    assert out["batch_ids"] == [shard["batch_id"]]
    (batch,) = batches_of_job(sandbox, job["job_id"])
    assert batch["id"] == shard["batch_id"] and batch["input_file_id"] == shard["file_id"]
    assert batch["metadata"]["shard_index"] == "0" and batch["metadata"]["project"] == "demo"
    assert batch["endpoint"] == CHAT

    code, again = submit(sandbox, str(src), "--metadata", "project=demo")
    assert code == 0 and again["already_submitted"] is True
    assert again["batch_ids"] == out["batch_ids"] and again["job_id"] == out["job_id"]
    assert len(posts(sandbox, "/v1/files")) == 1
    assert len(posts(sandbox, "/v1/batches")) == 1
    assert len(batches_of_job(sandbox, job["job_id"])) == 1
    assert_no_key_in_tree(tmp_path)


def test_human_output_names_batches_and_next(sandbox, tmp_path):
    src = write_batch(tmp_path / "p.jsonl", 2)
    proc = run_script("submit.py", str(src), env=script_env(sandbox.base_url))
    assert proc.returncode == 0, proc.stderr
    job = load(tmp_path / "p.job.json")
    assert job["shards"][0]["batch_id"] in proc.stdout
    assert "next: python3" in proc.stdout and "poll.py" in proc.stdout
    assert "uploading" not in proc.stderr  # no progress bar when stderr is not a terminal


def test_three_shard_split_creates_three_batches(sandbox, tmp_path):
    src = write_batch(tmp_path / "big.jsonl", 25)
    jobdir = tmp_path / "jobs"
    jobdir.mkdir()
    code, out = submit(sandbox, str(src), "--max-requests", "10",
                       "--job", str(jobdir / "run.job.json"))
    assert code == 0, out
    job = load(jobdir / "run.job.json")
    assert [s["index"] for s in job["shards"]] == [0, 1, 2]
    assert [s["requests"] for s in job["shards"]] == [10, 10, 5]
    for s in job["shards"]:
        shard_file = jobdir / s["path"]
        assert shard_file.parent == jobdir and shard_file.exists()  # beside the job file
        assert s["input"] == "../big.jsonl"
        assert s["file_id"] and s["batch_id"]
    batches = batches_of_job(sandbox, job["job_id"])
    assert sorted(b["metadata"]["shard_index"] for b in batches) == ["0", "1", "2"]
    assert sorted(b["request_counts"]["total"] for b in batches) == [5, 10, 10]
    uploads = files_on_server(sandbox)
    # unique per job and shard, starting with the shard file's own name
    assert sorted(f["filename"] for f in uploads) == sorted(
        f"{os.path.basename(s['path'])[:-len('.jsonl')]}.{job['job_id'][:8]}-{s['index']}.jsonl"
        for s in job["shards"])
    assert sorted(f["filename"] for f in uploads) == sorted(s["upload_name"]
                                                            for s in job["shards"])
    assert not list(jobdir.glob(".split-*"))  # temporary split folder cleaned up
    code, again = submit(sandbox, str(src), "--max-requests", "10",
                         "--job", str(jobdir / "run.job.json"))
    assert code == 0 and again["already_submitted"]
    assert len(posts(sandbox, "/v1/files")) == 3 and len(posts(sandbox, "/v1/batches")) == 3
    # a shard file that went missing is written again (later scripts read it), nothing sent
    lost = jobdir / job["shards"][1]["path"]
    content = lost.read_bytes()
    lost.unlink()
    code, again = submit(sandbox, str(src), "--max-requests", "10",
                         "--job", str(jobdir / "run.job.json"))
    assert code == 0 and again["already_submitted"] and lost.read_bytes() == content
    assert len(posts(sandbox, "/v1/files")) == 3


def test_several_inputs_and_a_moved_job_folder(sandbox, tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    a = write_batch(folder / "a.jsonl", 3, prefix="a")
    b = write_batch(folder / "b.jsonl", 4, prefix="b")
    code, out = submit(sandbox, str(a), str(b), "--job", str(folder / "ab.job.json"))
    assert code == 0 and len(out["batch_ids"]) == 2
    moved = tmp_path / "moved"
    folder.rename(moved)
    code, again = submit(sandbox, "a.jsonl", "b.jsonl", "--job", "ab.job.json", cwd=moved)
    assert code == 0 and again["already_submitted"] and again["batch_ids"] == out["batch_ids"]


# ----------------------------------------------------------------- exactly once under faults

@pytest.mark.parametrize("fault", [{"kind": "lose_response"},
                                   {"kind": "drop", "after_bytes": 20}])
def test_lost_create_answer_is_found_not_repeated(sandbox, tmp_path, fault):
    src = write_batch(tmp_path / "p.jsonl", 3)
    sandbox.fault(method="POST", path="/v1/batches", **fault)
    code, out = submit(sandbox, str(src))
    assert code == 0, out
    assert out["found"] == 1 and out["created"] == 0
    job = load(tmp_path / "p.job.json")
    (batch,) = batches_of_job(sandbox, job["job_id"])
    assert job["shards"][0]["batch_id"] == batch["id"]
    assert len(posts(sandbox, "/v1/batches")) == 1
    searches = [c for c in sandbox.calls()
                if c["method"] == "GET" and c["path"] == "/v1/batches"]
    assert searches and job["job_id"] in searches[0]["query"]


def test_create_timing_out_on_a_slow_server_is_found_later(sandbox, tmp_path):
    src = write_batch(tmp_path / "p.jsonl", 3)
    sandbox.fault(method="POST", path="/v1/batches", kind="delay", seconds=1.5)
    code, out = submit(sandbox, str(src), "--request-timeout", "0.5")
    assert code == 0, out
    assert out["found"] == 1 and out["created"] == 0
    assert len(posts(sandbox, "/v1/batches")) == 1
    assert len(batches_of_job(sandbox, out["job_id"])) == 1


def test_429_and_503_bursts_with_retry_after(sandbox, tmp_path):
    src = write_batch(tmp_path / "p.jsonl", 3)
    sandbox.fault(method="POST", path="/v1/files", kind="status", status=429, retry_after=1)
    sandbox.fault(method="POST", path="/v1/files", kind="status", status=503, retry_after=0)
    sandbox.fault(method="POST", path="/v1/batches", kind="status", status=503, retry_after=0)
    sandbox.fault(method="POST", path="/v1/batches", kind="status", status=429, retry_after=0,
                  times=2)
    start = time.monotonic()
    code, out = submit(sandbox, str(src))
    assert code == 0, out
    assert time.monotonic() - start >= 1.0  # the Retry-After: 1 was honoured
    assert [c["status"] for c in posts(sandbox, "/v1/files")] == [429, 503, 201]
    assert [c["status"] for c in posts(sandbox, "/v1/batches")] == [503, 429, 429, 201]
    assert len(files_on_server(sandbox)) == 1
    assert len(batches_of_job(sandbox, out["job_id"])) == 1


def test_retries_exhausted_is_exit_7_and_rerun_completes(sandbox, tmp_path):
    src = write_batch(tmp_path / "p.jsonl", 3)
    sandbox.fault(method="POST", path="/v1/batches", kind="status", status=503, retry_after=0,
                  times=3)
    code, out = submit(sandbox, str(src), "--max-retries", "2")
    assert code == 7 and out["error"]["code"] == "unavailable"
    assert "re-run" in out["error"]["hint"]
    code, out = submit(sandbox, str(src))
    assert code == 0 and out["uploaded"] == 0 and out["created"] == 1
    assert len(posts(sandbox, "/v1/files")) == 1
    assert len(batches_of_job(sandbox, out["job_id"])) == 1


def test_sigkill_between_upload_and_create_then_rerun(sandbox, tmp_path):
    src = write_batch(tmp_path / "p.jsonl", 3)
    job_path = tmp_path / "p.job.json"
    # the create is answered "come back in 30 s": the process sits in its retry wait
    sandbox.fault(method="POST", path="/v1/batches", kind="status", status=503,
                  retry_after=30)
    proc = start_submit(sandbox, str(src))
    wait_for(lambda: posts(sandbox, "/v1/batches"), what="the create call")
    kill9(proc)
    job = load(job_path)
    assert job["shards"][0]["file_id"] and job["shards"][0]["create_attempted_at"]
    assert not job["shards"][0].get("batch_id")
    sandbox.clear_faults()
    code, out = submit(sandbox, str(src))
    assert code == 0, out
    assert out["uploaded"] == 0 and out["created"] == 1
    assert len(posts(sandbox, "/v1/files")) == 1  # no second upload
    assert len(batches_of_job(sandbox, job["job_id"])) == 1
    assert_no_key_in_tree(tmp_path)


def test_sigkill_after_create_before_job_file_written_then_rerun(sandbox, tmp_path):
    src = write_batch(tmp_path / "p.jsonl", 3)
    job_path = tmp_path / "p.job.json"
    # the batch is created but its answer is lost; the search that would find it hangs
    sandbox.fault(method="POST", path="/v1/batches", kind="lose_response")
    sandbox.fault(method="GET", path="/v1/batches", kind="delay", seconds=30)
    proc = start_submit(sandbox, str(src))
    wait_for(lambda: [c for c in sandbox.calls()
                      if c["method"] == "GET" and c["path"] == "/v1/batches"],
             what="the search after the lost answer")
    kill9(proc)
    job = load(job_path)
    assert not job["shards"][0].get("batch_id")  # the process died before recording it
    assert len(batches_of_job(sandbox, job["job_id"])) == 1  # but the server has it
    sandbox.clear_faults()
    code, out = submit(sandbox, str(src))
    assert code == 0, out
    assert out["found"] == 1 and out["created"] == 0 and out["uploaded"] == 0
    assert len(posts(sandbox, "/v1/batches")) == 1
    assert len(posts(sandbox, "/v1/files")) == 1
    assert out["batch_ids"] == [b["id"] for b in batches_of_job(sandbox, job["job_id"])]
    assert_no_key_in_tree(tmp_path)


def test_sigkill_while_the_create_is_in_flight_then_rerun(sandbox, tmp_path):
    src = write_batch(tmp_path / "p.jsonl", 3)
    sandbox.fault(method="POST", path="/v1/batches", kind="delay", seconds=1)
    proc = start_submit(sandbox, str(src))
    wait_for(lambda: posts(sandbox, "/v1/batches"), what="the create call")
    kill9(proc)
    # the server finishes the create it received, though nobody hears the answer
    wait_for(lambda: all(c["status"] for c in posts(sandbox, "/v1/batches")),
             what="the delayed create to finish")
    job_id = load(tmp_path / "p.job.json")["job_id"]
    assert len(batches_of_job(sandbox, job_id)) == 1
    code, out = submit(sandbox, str(src))
    assert code == 0 and out["found"] == 1 and out["created"] == 0
    assert len(posts(sandbox, "/v1/batches")) == 1
    assert len(batches_of_job(sandbox, job_id)) == 1


def test_two_submits_at_once_share_the_job_safely(sandbox, tmp_path):
    src = write_batch(tmp_path / "p.jsonl", 3)
    sandbox.fault(method="POST", path="/v1/batches", kind="delay", seconds=1)
    first = start_submit(sandbox, str(src))
    wait_for(lambda: posts(sandbox, "/v1/files"), what="the first upload")
    second = start_submit(sandbox, str(src))
    out1, _ = first.communicate(timeout=30)
    out2, _ = second.communicate(timeout=30)
    assert first.returncode == 0 and second.returncode == 0
    a, b = json.loads(out1), json.loads(out2)
    assert a["batch_ids"] == b["batch_ids"] and len(a["batch_ids"]) == 1
    assert b["already_submitted"] is True
    assert len(posts(sandbox, "/v1/files")) == 1 and len(posts(sandbox, "/v1/batches")) == 1


def test_dropped_upload_is_retried(sandbox, tmp_path):
    src = write_batch(tmp_path / "p.jsonl", 50, pad=200)
    sandbox.fault(method="POST", path="/v1/files", kind="reset_upload", after_bytes=1000)
    code, out = submit(sandbox, str(src))
    assert code == 0, out
    assert [c["status"] for c in posts(sandbox, "/v1/files")][-1] == 201
    assert len(files_on_server(sandbox)) == 1


# --------------------------------------------------------------------------- refusals

def test_invalid_input_sends_nothing(sandbox, tmp_path):
    src = write_batch(tmp_path / "p.jsonl", 3)
    with open(src, "a") as f:
        f.write('{"custom_id": "r-0", "method": "POST", "url": "/v1/chat/completions", '
                '"body": {"model": "sandbox-chat", "messages": [{"role": "user", '
                '"content": "dup"}]}}\n')
        f.write("not json\n")
    code, out = submit(sandbox, str(src))
    assert code == 2
    assert "line 4" in out["error"]["message"] and "duplicate custom_id" in out["error"]["message"]
    assert "line 5" in out["error"]["message"] and out["problem_count"] == 2
    assert sandbox.calls() == []
    assert not (tmp_path / "p.job.json").exists()


def test_changed_input_refused_unless_force(sandbox, tmp_path):
    src = write_batch(tmp_path / "p.jsonl", 3)
    code, first = submit(sandbox, str(src))
    assert code == 0
    job_path = tmp_path / "p.job.json"
    before = job_path.read_bytes()
    write_batch(src, 4)
    sandbox.control("DELETE", "/calls")
    code, out = submit(sandbox, str(src))
    assert code == 2 and out["error"]["code"] == "job_mismatch"
    assert "changed" in out["error"]["message"] and "--force" in out["error"]["hint"]
    assert sandbox.calls() == [] and job_path.read_bytes() == before
    code, forced = submit(sandbox, str(src), "--force")
    assert code == 0 and forced["job_id"] != first["job_id"] and forced["created"] == 1
    kept = Path(forced["replaced_job"])
    assert kept.exists() and load(kept)["job_id"] == first["job_id"]
    assert kept.name.endswith(".job.json")


def test_other_base_url_refused(sandbox_factory, tmp_path):
    one = sandbox_factory("--enable-faults")
    two = sandbox_factory("--enable-faults")
    src = write_batch(tmp_path / "p.jsonl", 2)
    assert submit(one, str(src))[0] == 0
    code, out = submit(two, str(src))
    assert code == 2 and one.base_url in out["error"]["message"]
    assert two.calls() == []


def test_corrupt_job_file_is_reported_and_left_untouched(sandbox, tmp_path):
    src = write_batch(tmp_path / "p.jsonl", 2)
    job_path = tmp_path / "p.job.json"
    job_path.write_text('{"version": 1, "job_id": "x",\n  "shards": [oops]}')
    before = job_path.read_bytes()
    code, out = submit(sandbox, str(src))
    assert code == 2 and out["error"]["code"] == "bad_job_file"
    assert "line 2" in out["error"]["message"] and "untouched" in out["error"]["message"]
    assert job_path.read_bytes() == before and sandbox.calls() == []
    job_path.write_text(json.dumps({"version": 1, "job_id": "x", "base_url": "u",
                                    "completion_window": "24h", "inputs": [],
                                    "shards": [{"index": "zero", "path": "p.jsonl"}]}))
    code, out = submit(sandbox, str(src))
    assert code == 2 and "shards[0].index" in out["error"]["message"]


def test_max_cost_refuses_before_creating(sandbox, tmp_path):
    src = write_batch(tmp_path / "p.jsonl", 5, pad=400)
    code, out = submit(sandbox, str(src), "--max-cost", "0.0000001")
    assert code == 2 and out["error"]["code"] == "over_max_cost"
    job = load(tmp_path / "p.job.json")
    file_id = job["shards"][0]["file_id"]
    assert file_id in out["error"]["message"] and "uploaded" in out["error"]["message"]
    assert out["uploaded_file_ids"] == [file_id]
    assert posts(sandbox, "/v1/batches") == []
    est = [c for c in sandbox.calls() if c["path"].endswith("/cost-estimate")]
    assert est and "completion_window=24h" in est[0]["query"]
    code, out = submit(sandbox, str(src), "--max-cost", "1000")
    assert code == 0 and out["uploaded"] == 0 and out["created"] == 1
    assert float(out["estimated_cost"]) > 0
    assert len(posts(sandbox, "/v1/files")) == 1


def test_413_names_the_limit_and_the_flag(sandbox_factory, tmp_path):
    sb = sandbox_factory("--enable-faults", "--max-file-bytes", "3000")
    src = write_batch(tmp_path / "p.jsonl", 20, pad=100)
    assert src.stat().st_size > 3000
    code, out = submit(sb, str(src))
    assert code == 2 and out["error"]["code"] == "file_too_large"
    assert "--max-file-bytes 3000" in out["error"]["hint"]
    code, out = submit(sb, str(src), "--max-file-bytes", "3000")
    assert code == 0, out
    assert len(out["batch_ids"]) == len(out["shards"]) > 1


def test_402_and_403_are_exit_6_in_the_servers_words(sandbox, tmp_path):
    src = write_batch(tmp_path / "p.jsonl", 2)
    sandbox.fault(method="POST", path="/v1/batches", kind="status", status=402,
                  message="Insufficient balance: top up your account")
    code, out = submit(sandbox, str(src))
    assert code == 6 and "Insufficient balance: top up your account" in out["error"]["message"]
    assert "uploads nothing twice" in out["error"]["hint"]
    assert len(posts(sandbox, "/v1/batches")) == 1  # never retried
    other = write_batch(tmp_path / "q.jsonl", 2)
    sandbox.fault(method="POST", path="/v1/batches", kind="status", status=403,
                  message="Insufficient permissions to Create batch using file x")
    code, out = submit(sandbox, str(other))
    assert code == 6 and out["error"]["code"] == "forbidden"
    assert "Insufficient permissions to Create batch" in out["error"]["message"]


# --------------------------------------------------------------------------- models

def test_a_model_the_key_cannot_use_is_refused_before_any_upload(sandbox, tmp_path):
    src = write_batch(tmp_path / "p.jsonl", 3, model="sandbox-chta")
    code, out = submit(sandbox, str(src))
    assert code == 2 and out["error"]["code"] == "model_not_available", out
    err = out["error"]
    assert (out["model"], out["requests"]) == ("sandbox-chta", 3)
    assert out["closest"][0] == "sandbox-chat"
    assert "'sandbox-chta' (3 requests use it)" in err["message"]
    assert "Nothing was uploaded" in err["message"] and "batches.py models" in err["hint"]
    assert [(c["method"], c["path"]) for c in sandbox.calls()] == [("GET", "/v1/models")]


def test_a_403_model_answer_at_upload_is_the_same_error_not_exit_6(sandbox, tmp_path):
    """A server without /models (404) skips the check; the upload's 403 then names the model."""
    sandbox.fault(method="GET", path="/v1/models", kind="status", status=404, times=5)
    src = write_batch(tmp_path / "p.jsonl", 2, model="no-such-model")
    code, out = submit(sandbox, str(src))
    assert code == 2 and out["error"]["code"] == "model_not_available", out
    assert out["model"] == "no-such-model" and out["requests"] == 2
    assert "has not been configured" in out["server_message"]
    assert "the server refused the upload" in out["error"]["message"]
    assert "batches.py" in out["next"] and "models" in out["next"]
    assert not posts(sandbox, "/v1/batches")
    assert files_on_server(sandbox) == []


def test_models_route_auth_failure_is_exit_6_and_other_failures_skip(sandbox, tmp_path):
    src = write_batch(tmp_path / "p.jsonl", 2)
    sandbox.fault(method="GET", path="/v1/models", kind="status", status=401,
                  message="Authentication required")
    code, out = submit(sandbox, str(src))
    assert code == 6 and not posts(sandbox, "/v1/files")
    sandbox.fault(method="GET", path="/v1/models", kind="status", status=500, times=3)
    proc = run_script("submit.py", str(src), "--max-retries", "0", "--json",
                      env=script_env(sandbox.base_url))
    assert proc.returncode == 0, proc.stdout
    assert "could not list the models" in proc.stderr
    assert json.loads(proc.stdout)["created"] == 1


# --------------------------------------------------------------------------- lost uploads

def test_a_lost_upload_answer_is_found_by_name_not_uploaded_twice(sandbox, tmp_path):
    src = write_batch(tmp_path / "p.jsonl", 4)
    sandbox.fault(method="POST", path="/v1/files", kind="lose_response")
    code, out = submit(sandbox, str(src))
    assert code == 0, out
    assert (out["uploaded"], out["uploads_found"], out["created"]) == (0, 1, 1)
    assert len(files_on_server(sandbox)) == 1, "exactly one stored file"
    assert len(posts(sandbox, "/v1/files")) == 1
    job = load(tmp_path / "p.job.json")
    (shard,) = job["shards"]
    searches = [c for c in sandbox.calls() if c["path"] == "/v1/files" and
                c["method"] == "GET" and "search=" in c["query"]]
    assert searches, "the file was looked up by its name"
    assert files_on_server(sandbox)[0]["id"] == shard["file_id"]


def test_an_upload_that_never_arrived_is_sent_again(sandbox, tmp_path):
    src = write_batch(tmp_path / "p.jsonl", 4)
    sandbox.fault(method="POST", path="/v1/files", kind="status", status=502)
    code, out = submit(sandbox, str(src))
    assert code == 0, out
    assert (out["uploaded"], out["uploads_found"]) == (1, 0)
    assert len(files_on_server(sandbox)) == 1


# --------------------------------------------------------------------------- windows

def test_an_unknown_window_is_passed_through_with_a_note(sandbox_factory, tmp_path):
    sb = sandbox_factory("--enable-faults", "--completion-windows", "24h,1h,background")
    src = write_batch(tmp_path / "p.jsonl", 2)
    proc = run_script("submit.py", str(src), "--completion-window", "background", "--json",
                      env=script_env(sb.base_url))
    assert proc.returncode == 0, proc.stdout
    assert "not one of the known windows" in proc.stderr
    (batch_id,) = json.loads(proc.stdout)["batch_ids"]
    assert sb.get(f"/batches/{batch_id}").json()["completion_window"] == "background"


def test_a_refused_window_is_shown_in_the_servers_words_and_may_change(sandbox, tmp_path):
    src = write_batch(tmp_path / "p.jsonl", 2)
    code, out = submit(sandbox, str(src), "--completion-window", "2h")
    assert code == 2 and out["error"]["code"] == "bad_completion_window"
    assert "Unsupported completion_window. Allowed values: 24h, 1h" in out["error"]["message"]
    assert not [c for c in posts(sandbox, "/v1/batches") if c["status"] == 201]
    code, out = submit(sandbox, str(src), "--completion-window", "1h")
    assert code == 0, out
    assert (out["uploaded"], out["created"], out["completion_window"]) == (0, 1, "1h")


def test_create_only_options_are_fixed_once_a_batch_exists(sandbox, tmp_path):
    src = write_batch(tmp_path / "p.jsonl", 2)
    code, out = submit(sandbox, str(src), "--metadata", "team=blue")
    assert code == 0, out
    code, again = submit(sandbox, str(src))  # not given: the job's own values are kept
    assert code == 0 and again["already_submitted"]
    for flags in (["--metadata", "team=red"], ["--completion-window", "1h"]):
        code, refused = submit(sandbox, str(src), *flags)
        assert code == 2 and refused["error"]["code"] == "job_mismatch", flags
        assert "--force" in refused["error"]["hint"]
    assert len(posts(sandbox, "/v1/batches")) == 1
    code, forced = submit(sandbox, str(src), "--metadata", "team=red", "--force")
    assert code == 0 and forced["job_id"] != out["job_id"]
    (batch,) = batches_of_job(sandbox, forced["job_id"])
    assert batch["metadata"]["team"] == "red"


# --------------------------------------------------------------------------- pilot

def test_pilot_submits_the_first_n_requests_as_its_own_job(sandbox, tmp_path):
    src = write_batch(tmp_path / "prompts.jsonl", 10)
    code, out = submit(sandbox, str(src), "--pilot", "3")
    assert code == 0, out
    pilot_file = tmp_path / "prompts.pilot.jsonl"
    assert pilot_file.read_text().splitlines() == src.read_text().splitlines()[:3]
    assert out["job"].endswith("prompts.pilot.job.json")
    assert out["pilot"] == {"inputs": ["prompts.jsonl"], "full_requests": 10,
                            "pilot_requests": 3}
    assert out["completion_window"] == "1h" and out["requests"] == 3
    assert "prompts.pilot.job.json" in out["next"]
    job = load(tmp_path / "prompts.pilot.job.json")
    assert job["pilot"]["full_requests"] == 10
    code, again = submit(sandbox, str(src), "--pilot", "3")
    assert code == 0 and again["already_submitted"]
    code, other = submit(sandbox, str(src), "--pilot", "5")
    assert code == 2 and other["error"]["code"] == "job_mismatch"
    assert len(pilot_file.read_text().splitlines()) == 3, "the pilot file was left as it was"
    code, full = submit(sandbox, str(src))
    assert code == 0 and full["requests"] == 10 and full["completion_window"] == "24h"
    assert full["job"].endswith("prompts.job.json") and full["pilot"] is None


def test_pilot_dry_run_writes_nothing(sandbox, tmp_path):
    src = write_batch(tmp_path / "prompts.jsonl", 4)
    code, out = submit(sandbox, str(src), "--pilot", "2", "--dry-run")
    assert code == 0, out
    assert out["requests"] == 2 and out["pilot"]["full_requests"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.jsonl"]
    assert sandbox.calls() == []


def test_server_refusing_the_window_says_so(sandbox_factory, tmp_path):
    sb = sandbox_factory("--enable-faults", "--completion-windows", "24h")
    src = write_batch(tmp_path / "p.jsonl", 2)
    code, out = submit(sb, str(src), "--completion-window", "1h")
    assert code == 2 and "Allowed values: 24h" in out["error"]["message"]


def test_missing_key_is_exit_6_and_sends_nothing(sandbox, tmp_path):
    src = write_batch(tmp_path / "p.jsonl", 2)
    code, out = run_json("submit.py", str(src), env=script_env(sandbox.base_url, key=None))
    assert code == 6 and "DOUBLEWORD_API_KEY" in out["error"]["hint"]
    assert sandbox.calls() == []


def test_wrong_key_is_exit_6(sandbox, tmp_path):
    src = write_batch(tmp_path / "p.jsonl", 2)
    code, out = run_json("submit.py", str(src),
                         env=script_env(sandbox.base_url, key="dw-wrong-key-123456"))
    assert code == 6 and "Authentication required" in out["error"]["message"]
    assert "dw-wrong-key-123456" not in json.dumps(out)


def test_plain_http_to_a_remote_host_is_refused(tmp_path):
    src = write_batch(tmp_path / "p.jsonl", 2)
    code, out = run_json("submit.py", str(src), "--base-url", "http://example.com/v1")
    assert code == 2 and out["error"]["code"] == "insecure_base_url"


def test_metadata_errors(sandbox, tmp_path):
    src = write_batch(tmp_path / "p.jsonl", 2)
    code, out = submit(sandbox, str(src), "--metadata", "job_id=mine")
    assert code == 2 and "reserved" in out["error"]["message"]
    code, out = submit(sandbox, str(src), "--metadata", "novalue")
    assert code == 2 and "KEY=VALUE" in out["error"]["message"]
    assert sandbox.calls() == []


# --------------------------------------------------------------------------- dry run

def test_dry_run_against_a_closed_port(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    src = write_batch(tmp_path / "p.jsonl", 25)
    env = script_env(f"http://127.0.0.1:{port}/v1")
    code, out = run_json("submit.py", str(src), "--dry-run", "--max-requests", "10", env=env)
    assert code == 0, out
    assert out["dry_run"] is True and out["requests"] == 25
    assert [s["requests"] for s in out["shards"]] == [10, 10, 5]
    assert out["would_upload"] == 3 and out["would_create"] == 3
    assert out["input_tokens_estimate"] > 0
    assert "--dry-run" not in out["next"] and "submit.py" in out["next"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]  # nothing written
    code, out = run_json("submit.py", str(src), "--dry-run",
                         env=script_env(f"http://127.0.0.1:{port}/v1", key=None))
    assert code == 0 and out["key_set"] is False


def test_thousands_of_shards_need_neither_many_descriptors_nor_memory_per_shard(tmp_path):
    """A split keeps only the shard being written open: 400 shards under a limit of 64 open
    files (each finished shard used to stay open, with its buffer, until the end)."""
    import resource

    src = write_batch(tmp_path / "p.jsonl", 400)

    def few_descriptors():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    proc = subprocess.run([PYTHON, str(SCRIPTS / "submit.py"), str(src), "--dry-run",
                           "--max-requests", "1", "--json"], env=script_env(),
                          capture_output=True, text=True, timeout=120,
                          preexec_fn=few_descriptors)
    out = json.loads(proc.stdout)
    assert proc.returncode == 0, out
    assert len(out["shards"]) == 400 and all(s["requests"] == 1 for s in out["shards"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]


def test_dry_run_of_a_submitted_job_shows_what_is_recorded(sandbox, tmp_path):
    src = write_batch(tmp_path / "p.jsonl", 3)
    code, before = submit(sandbox, str(src), "--dry-run")
    assert code == 0 and before["job_id"] is None, "no job exists yet, so no job id is shown"
    code, real = submit(sandbox, str(src))
    assert code == 0 and real["job_id"]
    sandbox.control("DELETE", "/calls")
    code, out = submit(sandbox, str(src), "--dry-run")
    assert code == 0 and out["would_upload"] == 0 and out["would_create"] == 0
    assert out["job_id"] == real["job_id"], "the dry run of an existing job shows its id"
    assert sandbox.calls() == []


# --------------------------------------------------------------------------- terminal progress

def test_progress_bar_only_on_a_terminal(sandbox, tmp_path):
    src = write_batch(tmp_path / "p.jsonl", 200, pad=100)
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([PYTHON, str(SCRIPTS / "submit.py"), str(src), "--json"],
                                env=script_env(sandbox.base_url), stdout=subprocess.PIPE,
                                stderr=slave, text=True)
        os.close(slave)
        out, _ = proc.communicate(timeout=30)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    assert proc.returncode == 0
    err = b"".join(chunks).decode()
    assert "uploading p.jsonl" in err and "100.0%" in err
    assert json.loads(out)["ok"] is True  # stdout stays one JSON object
    assert TEST_KEY not in err


# --------------------------------------------------------------------------- job file unit tests

def test_job_lock_excludes_another_process_and_nests_in_one(tmp_path):
    path = str(tmp_path / "x.job.json")
    holder = subprocess.Popen(
        [PYTHON, "-c", "import sys, time; sys.path.insert(0, sys.argv[2]);"
         "from dwbatch import jobfile\n"
         "with jobfile.job_lock(sys.argv[1]):\n"
         "    print('held', flush=True); time.sleep(30)", path, str(SCRIPTS)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Exception) as info:
            with jobfile.job_lock(path, wait=0.2):
                pass
        assert getattr(info.value, "exit_code", None) == 7
        assert "another command" in str(info.value)
    finally:
        holder.kill()
        holder.wait()
    with jobfile.job_lock(path, wait=2):  # free again once the holder is gone
        with jobfile.job_lock(path, wait=0.2):  # nested in the same process: no deadlock
            pass
        assert jobfile.lock_path(path) == os.path.realpath(tmp_path / ".x.job.json.lock")
        fd = os.open(jobfile.lock_path(path), os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # still held by the outer lock
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


def test_job_file_round_trip_and_paths(tmp_path):
    job = jobfile.new_job(base_url="https://x/v1", completion_window="24h", endpoint=CHAT)
    job_path = str(tmp_path / "sub" / "p.job.json")
    os.makedirs(os.path.dirname(job_path))
    job["shards"] = [{"index": 0, "path": jobfile.rel_path(job_path, str(tmp_path / "p.jsonl")),
                      "file_id": None, "batch_id": None}]
    jobfile.save_job(job_path, job)
    again = jobfile.load_job(job_path)
    assert again["shards"][0]["path"] == "../p.jsonl"
    assert jobfile.abs_path(job_path, "../p.jsonl") == str(tmp_path / "p.jsonl")
    assert jobfile.default_job_path("dir/prompts.jsonl") == "dir/prompts.job.json"
    assert jobfile.job_stem("a/run.job.json") == "run"
