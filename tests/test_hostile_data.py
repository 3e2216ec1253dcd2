"""A hostile server and bad bytes, the data half: answers of the wrong shape, ids that are
paths, saved results put at risk by 404s, shrinking or headerless answers, endless lines and
downloads, malformed result lines, and error files rebuilt by the server's in-place retry.

The scripts run as subprocesses against the sandbox, with a small loopback server in front
(tests/front.py) that passes most calls through and misbehaves on the ones a test names."""

from __future__ import annotations

import json
import os
import sys
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


# =============================================================================== saved lines

def half_fetched(sb, tmp_path, prompts, done: int) -> Job:
    """A job whose first `done` requests finished and were fetched; then the rest finished."""
    job = submitted(sb, tmp_path, prompts)
    batch_id = job.shard()["batch_id"]
    sb.advance(batch_id, done)
    code, out = job.fetch()
    assert code == 3, out
    sb.advance(batch_id)
    return job


def content_of(job: Job, kind: str) -> str:
    return f"/files/{job.batch()[f'{kind}_file_id']}/content"


def assert_saved_as_before(job: Job, kind: str, before: bytes) -> None:
    assert job.raw_file(kind).read_bytes() == before
    assert job.shard()["downloaded"][f"{kind}_lines"] == before.count(b"\n")
    assert not [p for p in job.raw.iterdir() if p.name.endswith((".new", ".part"))]


def assert_finishes_when_healthy(job: Job, want_code: int = 0) -> None:
    code, out = job.fetch()
    assert code == want_code, out
    for kind in ("output", "error"):
        served = job.sb.get(content_of(job, kind)).content
        have = job.raw_file(kind).read_bytes() if job.raw_file(kind).exists() else b""
        assert have == served


def test_a_404_keeps_the_saved_lines_and_says_the_file_is_gone(sb, tmp_path, hostile):
    """2 of 3 results were saved, then the output file answers 404 (deleted or expired): the
    2 saved results stay ok, only the third is missing, and the envelope says the file is
    gone (before: the saved copy was emptied and all 3 went into the retry file)."""
    job = half_fetched(sb, tmp_path, ["a", "b", "c"], 2)
    before = job.raw_file("output").read_bytes()
    out_path = content_of(job, "output")
    gone = hostile(passing(sb, lambda call: Reply(404, b"File with ID x not found")
                           if call.path == out_path else None))
    code, out = job.fetch(base_url=gone.base_url)
    assert code == 4, out
    assert sorted(job.statuses().values()) == ["missing", "ok", "ok"]
    assert out["retry_requests"] == 1
    assert out["batches"][0]["output"]["mode"] == "gone"
    assert any("gone from the server" in n for n in out["notes"])
    assert_saved_as_before(job, "output", before)
    assert_finishes_when_healthy(job)


def test_a_404_while_the_batch_runs_says_the_file_is_gone_not_not_ready(sb, tmp_path,
                                                                       hostile):
    """The service makes result files when the batch is created, so a 404 on one is never
    "not ready yet": the envelope says the file is gone (before: a silent `not_ready`, and an
    agent would wait on it for ever)."""
    job = submitted(sb, tmp_path, ["a", "b"])
    out_path = content_of(job, "output")
    gone = hostile(passing(sb, lambda call: Reply(404, b"File with ID x not found")
                           if call.path == out_path else None))
    code, out = job.fetch(base_url=gone.base_url)
    assert code == 3, out
    assert out["batches"][0]["output"]["mode"] == "gone"
    assert any("gone from the server" in n and "nothing of it was saved" in n
               for n in out["notes"])


@pytest.mark.parametrize("last_line", ["-1", "0", "1", "abc", "99999999999"])
def test_x_last_line_below_the_saved_count_or_nonsense_keeps_the_saved_lines(
        sb, tmp_path, hostile, last_line):
    """X-Last-Line below the 2 saved lines (or no count at all): the saved lines are never
    thrown away; a copy is downloaded beside them and kept only if it holds at least as
    many (before: the copy was emptied first)."""
    job = half_fetched(sb, tmp_path, ["a", "b", "c"], 2)
    before = job.raw_file("output").read_bytes()
    out_path = content_of(job, "output")

    def change(call):
        if call.path == out_path:
            real = forward(sb.base_url, call)
            return Reply(200, real.body, {"X-Last-Line": last_line, "X-Incomplete": "false"})
        return None

    bad = hostile(passing(sb, change))
    code, out = job.fetch("--max-retries", "1", base_url=bad.base_url)
    assert code in (4, 7), out
    assert_saved_as_before(job, "output", before)
    assert_finishes_when_healthy(job)


def test_counts_that_go_backwards_then_a_failing_call_keep_the_saved_errors(
        sb, tmp_path, hostile):
    """The status answer says fewer failed requests than the error lines saved (as after an
    in-place retry), and the download that follows fails: the saved error lines stay
    (before: they were emptied first, then the call failed)."""
    job = submitted(sb, tmp_path, ["a", "[[fail:400]] b", "[[fail:400]] c"])
    sb.advance(job.shard()["batch_id"])
    assert job.fetch()[0] == 4
    before = job.raw_file("error").read_bytes()
    assert before.count(b"\n") == 2
    batch_path = f"/batches/{job.shard()['batch_id']}"
    err_path = content_of(job, "error")

    def change(call):
        if call.path == batch_path:
            batch = json.loads(forward(sb.base_url, call).body)
            batch["request_counts"]["failed"] = 0
            return Reply.json(batch)
        if call.path == err_path:
            return Reply(500, b"internal error")
        return None

    bad = hostile(passing(sb, change))
    code, out = job.fetch("--max-retries", "0", base_url=bad.base_url)
    assert code == 7, out
    assert_saved_as_before(job, "error", before)
    assert_finishes_when_healthy(job, 4)


def test_a_headerless_answer_of_a_finished_batch_never_replaces_the_saved_copy(
        sb, tmp_path, hostile):
    """A captive portal answers the content call with a page and no X-Last-Line: exit 7,
    the saved lines stay (before: the page replaced the saved copy)."""
    job = half_fetched(sb, tmp_path, ["a", "b", "c"], 2)
    before = job.raw_file("output").read_bytes()
    out_path = content_of(job, "output")
    portal = hostile(passing(sb, lambda call: Reply(
        200, b"<html><body>Please log in to the hotel wifi</body></html>\n",
        {"Content-Type": "text/html"}) if call.path == out_path else None))
    code, out = job.fetch(base_url=portal.base_url)
    assert code == 7 and out["error"]["code"] == "bad_response", out
    assert_saved_as_before(job, "output", before)
    assert_finishes_when_healthy(job)


def endless_lines(line: bytes, pause: float = 0.0, seconds: float = 30.0):
    import time
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        yield line * (1 if pause else 200)
        if pause:
            time.sleep(pause)


def test_a_never_ending_download_is_stopped_and_leaves_nothing_behind(sb, tmp_path, hostile):
    """A server without partial-result headers sends a result file that never ends: the
    download stops at the batch's request count (exit 7); no partial copy is left."""
    job = submitted(sb, tmp_path, ["a", "b", "c"])
    sb.advance(job.shard()["batch_id"])
    out_path = content_of(job, "output")
    line = b'{"id": "x", "custom_id": "r0", "response": null, "error": null}\n'
    endless = hostile(passing(sb, lambda call: Reply(200, endless_lines(line))
                              if call.path == out_path else None))
    code, out = job.fetch(base_url=endless.base_url)
    assert code == 7 and "more lines than the batch has requests" in out["error"]["message"]
    assert endless.sent_bytes < 50_000_000
    assert not job.raw.exists() or not [p for p in job.raw.iterdir()
                                        if ".output." in p.name]
    assert_finishes_when_healthy(job)


def test_sigterm_during_a_new_copy_removes_it_and_keeps_the_saved_one(sb, tmp_path, hostile):
    """A new copy is being downloaded beside the saved one (the server reported fewer lines)
    and its answer never ends; SIGTERM: exit 130, the copy beside is removed, the saved
    lines are as they were."""
    import signal
    import subprocess
    import time

    from conftest import PYTHON, SCRIPTS, wait_for

    job = half_fetched(sb, tmp_path, ["a", "b", "c"], 2)
    before = job.raw_file("output").read_bytes()
    out_path = content_of(job, "output")
    real = sb.get(out_path).content.splitlines(keepends=True)

    def change(call):
        if call.path != out_path:
            return None
        if call.query.get("skip") == "2":
            return Reply(200, b"", {"X-Last-Line": "1", "X-Incomplete": "false"})
        return Reply(200, _slow(real[0]), {"X-Last-Line": "3", "X-Incomplete": "false"})

    def _slow(first):
        yield first
        end = time.monotonic() + 30
        while time.monotonic() < end:
            time.sleep(0.1)
            yield b""

    slow = hostile(passing(sb, change))
    proc = subprocess.Popen([PYTHON, str(SCRIPTS / "fetch_results.py"), job.job.name, "--json"],
                            env=script_env(slow.base_url), cwd=job.folder,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    beside = job.raw_file("output").with_name(job.raw_file("output").name + ".new")
    wait_for(lambda: beside.exists() and beside.stat().st_size > 0, what="the copy beside")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert TEST_KEY not in out + err
    assert not beside.exists()
    assert_saved_as_before(job, "output", before)
    assert_finishes_when_healthy(job)


def test_a_line_without_end_is_capped_with_an_error_naming_it(sb, tmp_path, hostile):
    """The second result line never ends (a 3 GB line took 6.4 GB before): the download
    stops at --max-line-bytes with an error naming the line and the cap; the line before it
    is kept; the client stopped reading early."""
    job = submitted(sb, tmp_path, ["a", "b", "c"])
    sb.advance(job.shard()["batch_id"])
    out_path = content_of(job, "output")
    first = sb.get(out_path).content.splitlines(keepends=True)[0]

    def body():
        yield first
        yield from endless_lines(b"x" * 65536)

    long = hostile(passing(sb, lambda call: Reply(200, body(), {"X-Last-Line": "3",
                                                                 "X-Incomplete": "false"})
                           if call.path == out_path else None))
    code, out = job.fetch("--max-line-bytes", "1MiB", base_url=long.base_url)
    assert code == 7 and out["error"]["code"] == "line_too_long", out
    assert "line 2" in out["error"]["message"] and "1,048,576" in out["error"]["message"]
    assert "--max-line-bytes" in out["error"]["hint"]
    assert long.sent_bytes < 40_000_000
    assert job.raw_file("output").read_bytes() == first
    assert job.shard()["downloaded"]["output_lines"] == 1
    assert_finishes_when_healthy(job)


@pytest.mark.parametrize("where", ["output", "beside"])
def test_a_symlink_in_the_raw_folder_is_never_written_through(sb, tmp_path, where):
    """A link planted in the raw folder (at the raw copy, or where a new copy is written
    beside it) never changes its target: the raw copy's link is refused (exit 2, naming it),
    the other is removed, not followed."""
    job = half_fetched(sb, tmp_path, ["a", "b", "c"], 2)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    raw = job.raw_file("output")
    if where == "output":
        raw.unlink()
        raw.symlink_to(victim)
        code, out = job.fetch()
        assert code == 2 and out["error"]["code"] == "unsafe_raw_file", out
        assert str(raw.name) in out["error"]["message"]
        raw.unlink()
    else:
        raw.with_name(raw.name + ".new").symlink_to(victim)
    assert_finishes_when_healthy(job)
    assert victim.read_text() == "precious\n"


def test_hand_edited_download_counts_are_checked_against_the_raw_copy(sb, tmp_path):
    """The job file's count says 3 lines were saved where the raw copy holds 2: the raw copy
    is believed, so the next download asks for line 3 again (before: skip=3 jumped over
    it)."""
    job = submitted(sb, tmp_path, ["a", "b", "c", "d"])
    batch_id = job.shard()["batch_id"]
    sb.advance(batch_id, 2)
    assert job.fetch()[0] == 3
    data = json.loads(job.job.read_text())
    data["shards"][0]["downloaded"]["output_lines"] = 3
    job.job.write_text(json.dumps(data))
    sb.advance(batch_id, 1)
    code, out = job.fetch()
    assert code == 3, out
    served = sb.get(content_of(job, "output")).content
    assert job.raw_file("output").read_bytes() == served and served.count(b"\n") == 3
    sb.advance(batch_id)
    assert_finishes_when_healthy(job)


# =============================================================================== in-place retry

def results_match_the_server(job: Job) -> None:
    """Each record says what the server says of its request (GET /batches/{id}/results), and
    the raw error copy is the server's error file byte for byte."""
    batch_id = job.shard()["batch_id"]
    served = job.sb.get(f"/batches/{batch_id}/results").text.splitlines()
    want = {"completed": "ok", "failed": "error", "pending": "pending",
            "in_progress": "pending"}
    server = {x["custom_id"]: want[x["status"]] for x in map(json.loads, served)}
    assert job.statuses() == server
    assert job.raw_file("error").read_bytes() == job.sb.get(content_of(job, "error")).content


@pytest.mark.parametrize("seed", ["1", "2", "4"])
def test_after_an_in_place_retry_the_saved_error_lines_are_checked(sandbox_factory, tmp_path,
                                                                   seed):
    """The server's /retry rebuilds the error file (retried requests leave it, those that
    fail again come back at the end, after requests that were cancelled and now fail too):
    the next fetch compares its saved error lines with the server's before it resumes with
    skip, and downloads the file again (beside, then swapped) when they differ, even when
    more requests fail after the retry than were saved before it."""
    box = sandbox_factory("--enable-faults", "--manual", "--seed", seed)
    prompts = [f"[[fail:400]] f{i}" for i in range(3)] + [f"ok {i}" for i in range(3)]
    job = submitted(box, tmp_path, prompts)
    batch_id = job.shard()["batch_id"]
    box.advance(batch_id, 3)
    job.fetch()
    saved = job.raw_file("error").read_bytes().count(b"\n") if job.raw_file("error").exists() \
        else 0
    assert job.run("batches.py", "cancel", job.job.name)[0] == 0
    box.advance(batch_id)
    assert job.fetch()[0] == 5
    assert job.run("batches.py", "retry", job.job.name)[0] == 0
    counts = job.batch()["request_counts"]
    box.advance(batch_id, counts["total"] - counts["completed"] - 1)  # all but one
    code, out = job.fetch()
    assert code == 3, out
    results_match_the_server(job)
    assert job.raw_file("error").read_bytes().count(b"\n") >= saved
    box.advance(batch_id)
    assert job.fetch()[0] == 4
    results_match_the_server(job)


# =============================================================================== bad bytes

def result_line(cid: str, body, status_code: int = 200) -> bytes:
    return json.dumps({"id": f"batch_req_{cid}", "custom_id": cid, "error": None, "response":
                       {"status_code": status_code, "request_id": None, "body": body}}).encode()


def chat_body(content: str, **extra) -> dict:
    return {"object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": content},
         "finish_reason": "stop"}], **extra}


def test_malformed_result_lines_become_one_bad_record_each(sb, tmp_path, hostile):
    """NaN in usage, nesting 5,000 deep, a 5,000-digit number, a `[]` line and a body of `[1]`:
    each is one `error` record naming the reason (in the retry file), the rest of the job is
    reconciled, and the results file stays strict JSON (before: exit 1 or exit 2 "delete and
    fetch again" for the whole job, and `[1]` counted as ok)."""
    job = submitted(sb, tmp_path, [f"q{i}" for i in range(6)])
    sb.advance(job.shard()["batch_id"])
    deep = "[" * 5000 + "]" * 5000
    lines = [
        result_line("r0", chat_body("a")).replace(b'"stop"}]', b'"stop"}], "usage": '
                                                  b'{"prompt_tokens": NaN}'),
        result_line("r1", chat_body("b")).replace(b'"stop"}]', b'"stop"}], "x": '
                                                  + deep.encode()),
        result_line("r2", chat_body("c")).replace(b'"stop"}]', b'"stop"}], "usage": '
                                                  b'{"total_tokens": ' + b"9" * 5000 + b"}"),
        b"[]",
        result_line("r4", [1]),
        result_line("r5", chat_body("ECHO q5")),
    ]
    body = b"".join(x + b"\n" for x in lines)
    out_path = content_of(job, "output")
    bad = hostile(passing(sb, lambda call: Reply(200, body, {
        "X-Last-Line": str(len(lines)), "X-Incomplete": "false"}) if call.path == out_path
        and call.query.get("skip") in (None, "0") else None))
    for _ in range(2):  # the same outcome again: nothing to delete by hand
        code, out = job.fetch(base_url=bad.base_url)
        assert code == 4, out
        strict = json.JSONDecoder(parse_constant=lambda c: pytest.fail(f"{c} in results"))
        records = {r["custom_id"]: r for r in map(strict.decode,
                                                   job.results.read_text().splitlines())}
        # Python 3.11+ refuses integers of more than 4,300 digits; 3.10 reads r2 (its usage
        # then counts as 0 tokens)
        big_int_bad = sys.version_info >= (3, 11)
        assert {c: r["status"] for c, r in records.items()} == {
            "r0": "error", "r1": "error", "r2": "error" if big_int_bad else "ok",
            "r3": "missing", "r4": "error", "r5": "ok"}
        for cid in ("r0", "r1", "r2", "r4") if big_int_bad else ("r0", "r1", "r4"):
            assert records[cid]["error"]["type"] == "unreadable_result"
            assert "cannot be read" in records[cid]["error"]["message"]
        assert "not a JSON object" in records["r4"]["error"]["message"]
        assert out["unreadable_results"] == 1
        retry = [json.loads(x)["custom_id"] for x in
                 (tmp_path / "work" / "p.retry.jsonl").read_text().splitlines()]
        assert retry == ["r0", "r1"] + (["r2"] if big_int_bad else []) + ["r3", "r4"]
        assert out["usage"]["total_tokens"] < 10 ** 12


@pytest.mark.parametrize("page", [{"data": "x"}, {"data": [1, 2]}, [],
                                  {"data": [{"id": "../x", "status": "completed"}]},
                                  {"data": [], "has_more": "yes"}])
def test_a_list_page_of_the_wrong_shape_is_exit_7(sb, tmp_path, hostile, page):
    bad = hostile(lambda call: Reply.json(page))
    code, out = run_json("batches.py", "list", env=script_env(bad.base_url), cwd=tmp_path)
    assert code == 7 and out["error"]["code"] == "bad_response", out


def test_a_bare_id_fetch_with_a_hand_edited_state_file_is_exit_2(sb, tmp_path):
    job = submitted(sb, tmp_path, ["a"])
    batch_id = job.shard()["batch_id"]
    sb.advance(batch_id)
    code, out = run_json("fetch_results.py", batch_id, env=script_env(sb.base_url),
                         cwd=tmp_path)
    assert code == 0, out
    state = tmp_path / f"{batch_id}.raw" / f"{batch_id}.state.json"
    data = json.loads(state.read_text())
    data["downloaded"]["output_lines"] = "lots"
    state.write_text(json.dumps(data))
    code, out = run_json("fetch_results.py", batch_id, env=script_env(sb.base_url),
                         cwd=tmp_path)
    assert code == 2 and "state.json" in out["error"]["message"], out
