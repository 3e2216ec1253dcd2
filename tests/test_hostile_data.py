"""A hostile server and bad bytes, the data half: answers of the wrong shape, ids that are
paths, saved results put at risk by 404s, shrinking or headerless answers, endless lines and
downloads, malformed result lines, and error files rebuilt by the server's in-place retry.

The scripts run as subprocesses against the sandbox, with a small loopback server in front
(tests/front.py) that passes most calls through and misbehaves on the ones a test names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import TEST_KEY, run_json, sandbox_per_file, script_env
from front import Front, Reply, forward

shared_sandbox, sb = sandbox_per_file("--enable-faults", "--manual", "--seed", "3")


# --- helpers -------------------------------------------------------------------------------

def chat(cid: str, prompt: str) -> dict:
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "sandbox-chat", "messages": [{"role": "user", "content": prompt}]}}


class Job:
    """A job folder: `p.jsonl` with the given prompts, submitted to the sandbox."""

    def __init__(self, sb, folder: Path, prompts: list[str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.sb, self.folder = sb, folder
        self.input = folder / "p.jsonl"
        self.input.write_text("".join(json.dumps(chat(f"r{i}", p)) + "\n"
                                      for i, p in enumerate(prompts)))
        self.job = folder / "p.job.json"
        self.raw = folder / "p.raw"
        self.results = folder / "p.results.jsonl"

    def run(self, script: str, *args: str, base_url: str | None = None):
        return run_json(script, *args, env=script_env(base_url or self.sb.base_url),
                        cwd=self.folder)

    def submit(self, base_url: str | None = None):
        return self.run("submit.py", self.input.name, base_url=base_url)

    def fetch(self, *args: str, base_url: str | None = None):
        return self.run("fetch_results.py", self.job.name, *args, base_url=base_url)

    def poll(self, base_url: str | None = None):
        return self.run("poll.py", self.job.name, base_url=base_url)

    def shard(self) -> dict:
        return json.loads(self.job.read_text())["shards"][0]

    def batch(self) -> dict:
        return self.sb.get(f"/batches/{self.shard()['batch_id']}").json()

    def raw_file(self, kind: str) -> Path:
        name = "output" if kind == "output" else "errors"
        return self.raw / f"{self.shard()['batch_id']}.{name}.jsonl"

    def statuses(self) -> dict:
        return {r["custom_id"]: r["status"] for r in
                (json.loads(x) for x in self.results.read_text().splitlines())}


@pytest.fixture
def hostile():
    """Start hostile servers in front of something; all stopped at the end."""
    started = []

    def start(answer):
        h = Front(answer)
        started.append(h)
        return h

    yield start
    for h in started:
        h.stop()


def passing(sb, change):
    """An answer function: `change(call)` decides (a Reply), or None passes the call through."""
    def answer(call):
        reply = change(call)
        return reply if reply is not None else forward(sb.base_url, call)
    return answer


def submitted(sb, tmp_path, prompts) -> Job:
    job = Job(sb, tmp_path / "work", prompts)
    code, out = job.submit()
    assert code == 0, out
    return job


# =============================================================================== shapes

BAD_BATCHES = {
    "status_is_a_list": lambda b: {**b, "status": ["completed"]},
    "integer_id": lambda b: {**b, "id": 12345},
    "object_file_id": lambda b: {**b, "output_file_id": {"id": "x"}},
    "id_that_is_a_path": lambda b: {**b, "id": "../../victimdir/important"},
    "counts_not_numbers": lambda b: {**b, "request_counts": {"total": "3", "failed": -1}},
    "not_an_object": lambda b: [b],
}


@pytest.mark.parametrize("kind", sorted(BAD_BATCHES))
def test_a_status_answer_of_the_wrong_shape_is_exit_7_and_records_nothing(sb, tmp_path,
                                                                          hostile, kind):
    """The answer is refused before anything is recorded, so once the server is healthy
    every command works again (before: the job file held it and every command exited 2)."""
    job = submitted(sb, tmp_path, ["a", "b", "c"])
    batch_path = f"/batches/{job.shard()['batch_id']}"

    def change(call):
        if call.method == "GET" and call.path == batch_path:
            return Reply.json(BAD_BATCHES[kind](json.loads(forward(sb.base_url, call).body)))
        return None

    bad = hostile(passing(sb, change))
    before = job.job.read_bytes()
    for script in ("poll.py", "fetch_results.py"):
        code, out = job.run(script, job.job.name, base_url=bad.base_url)
        assert code == 7, out
        assert out["error"]["code"] == "bad_response"
        assert "nothing was recorded" in out["error"]["message"]
        assert "\n" not in out["error"]["message"]
    assert job.job.read_bytes() == before
    assert not job.results.exists()
    sb.advance(job.shard()["batch_id"])
    assert job.poll()[0] == 0
    assert job.fetch()[0] == 0


@pytest.mark.parametrize("bad_id", [None, "../../victimdir/important", "/tmp/abs", 7])
def test_a_create_answer_without_a_usable_id_is_found_again_not_created_twice(
        sb, tmp_path, hostile, bad_id):
    """The batch was created but its answer has no usable id: exit 7 with nothing recorded
    but the attempt, and the re-run finds the batch by its metadata instead of creating a
    second one (before: "batch None", exit 0, and a second batch on the re-run)."""
    broken = [True]

    def change(call):
        if broken[0] and call.method == "POST" and call.path == "/batches":
            real = forward(sb.base_url, call)
            obj = json.loads(real.body)
            if bad_id is None:
                obj.pop("id")
            else:
                obj["id"] = bad_id
            return Reply.json(obj, status=201)
        return None

    bad = hostile(passing(sb, change))
    job = Job(sb, tmp_path / "work", ["a", "b"])
    code, out = job.submit(base_url=bad.base_url)
    assert code == 7 and out["error"]["code"] == "bad_response", out
    shard = job.shard()
    assert shard["batch_id"] is None and shard["create_attempted_at"]
    assert not (tmp_path / "victimdir").exists()
    broken[0] = False
    code, out = job.submit(base_url=bad.base_url)
    assert code == 0 and out["found"] == 1 and out["created"] == 0, out
    created = [c for c in sb.calls() if c["method"] == "POST" and c["path"] == "/v1/batches"
               and c["status"] == 201]
    assert len(created) == 1


@pytest.mark.parametrize("arg", ["../../victimdir/important", "/etc/passwd", "a/b", "..",
                                 "-rf"])
def test_a_batch_id_that_is_a_path_is_refused_on_the_command_line(sb, tmp_path, arg):
    for script, args in (("fetch_results.py", [arg]), ("poll.py", [arg]),
                         ("batches.py", ["get", arg])):
        code, out = run_json(script, *args, env=script_env(sb.base_url), cwd=tmp_path)
        assert code == 2, (script, out)
    assert sb.calls() == []
    assert list(tmp_path.iterdir()) == []


def test_a_hand_edited_id_or_count_in_the_job_file_is_refused(sb, tmp_path):
    job = submitted(sb, tmp_path, ["a"])
    good = job.job.read_text()
    for edit in ({"batch_id": "../../victimdir/important"}, {"error_file_id": "/abs"},
                 {"downloaded": {"output_lines": "5"}}, {"status": ["completed"]}):
        data = json.loads(good)
        data["shards"][0].update(edit)
        job.job.write_text(json.dumps(data))
        code, out = job.fetch()
        assert code == 2 and out["error"]["code"] == "bad_job_file", (edit, out)
    job.job.write_text(good)
    sb.advance(job.shard()["batch_id"])
    assert job.fetch()[0] == 0
    assert TEST_KEY not in job.job.read_text()
    assert not os.path.exists(tmp_path / "victimdir")
