"""Finishing a job, as an agent runs it: retries that end, and families that are never mixed.

The real scripts as subprocesses over real HTTP against the sandbox (batches move only when a
test advances them). The agent follows `next` from each envelope, as SKILL.md tells it to.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from conftest import (
    PYTHON,
    chat_line,
    run_json,
    run_script,
    sandbox_per_file,
    script_env,
    write_lines,
)
from dwbatch import families, polling

shared_sandbox, sb = sandbox_per_file("--enable-faults", "--manual", "--seed", "5")


def follow(sb, cwd: Path, command: str) -> tuple[int, dict]:
    """Run a `next` command as given (its interpreter is this test's Python)."""
    argv = shlex.split(command)
    assert argv[0] in ("python3", PYTHON) and argv[-1] == "--json", command
    return run_json(Path(argv[1]).name, *argv[2:-1], env=script_env(sb.base_url), cwd=cwd)


def records(path: Path) -> dict[str, dict]:
    return {r["custom_id"]: r for r in map(json.loads, path.read_text().splitlines())}


def advance_all(sb, job: Path) -> None:
    for shard in json.loads(job.read_text())["shards"]:
        sb.advance(shard["batch_id"])


def test_retries_end_rejected_given_up_at_once_truncated_fixed_failing_given_up_after_3(
        sb, tmp_path):
    lines = [chat_line("fine", "all good"),
             chat_line("bad", "[[fail:400]] rejected"),
             chat_line("cut", "one two three", max_tokens=2),  # "ECHO one two three": 4 words
             chat_line("busy", "[[fail:503]] always busy")]
    src = write_lines(tmp_path / "p.jsonl", lines)
    env = script_env(sb.base_url)
    code, out = run_json("submit.py", src.name, env=env, cwd=tmp_path)
    assert code == 0
    job = tmp_path / out["job"]
    advance_all(sb, job)

    # 1st fetch: the 400 is given up at once; truncated and 503 go into the retry file
    code, out = run_json("fetch_results.py", job.name, env=env, cwd=tmp_path)
    assert code == 4 and out["retry_file"] == "p.retry.jsonl", out
    recs = records(tmp_path / "p.results.jsonl")
    assert {c: (r["status"], r["attempts"], r.get("retriable")) for c, r in recs.items()} == {
        "fine": ("ok", 1, None), "bad": ("error", 1, False), "cut": ("truncated", 1, True),
        "busy": ("error", 1, True)}
    assert out["gave_up"] == 1 and out["gave_up_reasons"][0]["custom_ids"] == ["bad"]
    assert "HTTP 400" in out["gave_up_reasons"][0]["reason"]
    retry = [json.loads(x) for x in (tmp_path / "p.retry.jsonl").read_text().splitlines()]
    assert [r["custom_id"] for r in retry] == ["cut", "busy"]
    assert retry[0]["body"]["max_tokens"] == 4, "a truncated request gets twice the tokens"
    origin = json.loads((tmp_path / "p.retry.source.json").read_text())
    assert origin["kind"] == "retry" and origin["origin"]["job_file"] == "p.job.json"

    # 2nd round: submit the retry file (next), then fetch the family (after_retry)
    merge = out["after_retry"]
    code, sub = follow(sb, tmp_path, out["next"])
    assert code == 0 and sub["job"].endswith("p.retry.job.json")
    retry_job = json.loads((tmp_path / "p.retry.job.json").read_text())
    first_job = json.loads(job.read_text())
    assert retry_job["origin"]["family_id"] == first_job["job_id"]
    assert retry_job["origin"]["job_file"] == "p.job.json"
    advance_all(sb, tmp_path / "p.retry.job.json")
    code, out = follow(sb, tmp_path, merge)
    assert code == 4 and out["retry_file"] == "p.retry2.jsonl", out
    recs = records(tmp_path / "p.results.jsonl")
    assert (recs["cut"]["status"], recs["cut"]["content"]) == ("ok", "ECHO one two three")
    assert recs["busy"]["attempts"] == 2 and recs["bad"]["attempts"] == 1
    assert out["gave_up"] == 1

    # 3rd round: the 503 fails a third time and is given up; nothing is left to retry
    merge = out["after_retry"]
    assert follow(sb, tmp_path, out["next"])[0] == 0
    advance_all(sb, tmp_path / "p.retry2.job.json")
    code, out = follow(sb, tmp_path, merge)
    assert code == 4 and out["next"] is None and out["retry_file"] is None, out
    assert not (tmp_path / "p.retry3.jsonl").exists()
    assert out["gave_up"] == 2
    reasons = {e["custom_ids"][0]: e for e in out["gave_up_reasons"]}
    assert reasons["busy"]["count"] == 1 and "3 attempts" in reasons["busy"]["reason"]
    assert "HTTP 400" in reasons["bad"]["reason"]
    recs = records(tmp_path / "p.results.jsonl")
    assert [r["status"] for r in recs.values()] == ["ok", "error", "ok", "error"]
    assert recs["busy"]["attempts"] == 3
    # the human summary says the same in words
    proc = run_script("fetch_results.py", *merge.split()[2:-1], env=script_env(sb.base_url),
                      cwd=tmp_path)
    assert proc.returncode == 4 and "next:" not in proc.stdout
    assert "gave up on 2 request(s)" in proc.stdout and "custom_id busy" in proc.stdout
    assert "nothing left to retry: the job is finished" in proc.stdout


def test_max_attempts_1_gives_up_everything_at_the_first_fetch(sb, tmp_path):
    src = write_lines(tmp_path / "p.jsonl", [chat_line("busy", "[[fail:503]] x"),
                                             chat_line("ok", "y")])
    code, out = run_json("submit.py", src.name, env=script_env(sb.base_url), cwd=tmp_path)
    advance_all(sb, tmp_path / out["job"])
    code, out = run_json("fetch_results.py", "p.job.json", "--max-attempts", "1",
                         env=script_env(sb.base_url), cwd=tmp_path)
    assert code == 4 and out["next"] is None and out["gave_up"] == 1 and out["max_attempts"] == 1
    assert "1 attempts" in out["gave_up_reasons"][0]["reason"]


# --- families ---------------------------------------------------------------------------------

TICKETS = ("ticket_id,subject,extra\n"
           "T-1,printer on fire,\n"
           "T-2,cannot log in,[[outage:503]]\n"
           "T-3,refund please,\n")


def build_and_submit(sb, cwd: Path, out_name: str, *build_args: str) -> Path:
    env = script_env(sb.base_url)
    code, out = run_json("create_batch_file.py", "tickets.csv", "-o", out_name,
                         "--id-column", "ticket_id", *build_args, env=env, cwd=cwd)
    assert code == 0, out
    code, out = run_json("submit.py", out_name, env=env, cwd=cwd)
    assert code == 0, out
    return cwd / out["job"]


def chat_and_embedding_jobs(sb, tmp_path: Path, template: str) -> tuple[Path, Path]:
    """Two finished jobs over the same tickets (so the same custom_ids): chat and embeddings."""
    (tmp_path / "tickets.csv").write_text(TICKETS)
    classify = build_and_submit(sb, tmp_path, "classify.jsonl", "--model", "sandbox-chat",
                                "--template", template)
    embed = build_and_submit(sb, tmp_path, "embed.jsonl", "--model", "sandbox-embed",
                             "--endpoint", "embeddings", "--prompt-column", "subject")
    advance_all(sb, classify)
    advance_all(sb, embed)
    return classify, embed


def test_a_chat_job_and_an_embeddings_job_sharing_custom_ids_are_never_merged(sb, tmp_path):
    classify, embed = chat_and_embedding_jobs(sb, tmp_path, "Classify: {subject} {extra}")
    env = script_env(sb.base_url)

    # poll both: `next` fetches each family on its own
    code, out = run_json("poll.py", classify.name, embed.name, env=env, cwd=tmp_path)
    assert code == 4, out
    commands = out["next"].split(" && ")
    assert len(commands) == 2
    assert [shlex.split(c)[2:] for c in commands] == [[classify.name, "--json"],
                                                      [embed.name, "--json"]]

    # fetch both at once: refused before anything is downloaded or written
    sb.control("DELETE", "/calls")
    code, out = run_json("fetch_results.py", classify.name, embed.name, env=env, cwd=tmp_path)
    assert code == 2 and out["error"]["code"] == "unrelated_jobs", out
    assert "different families" in out["error"]["message"]
    assert "fetch_results.py classify.job.json --json" in out["error"]["hint"]
    assert sb.calls() == [], "nothing was asked of the server"
    assert not list(tmp_path.glob("*.results.*")) and not list(tmp_path.glob("*.raw"))

    # the case: the chat job's retry job polled together with the embeddings job
    for command in commands:
        assert follow(sb, tmp_path, command)[0] in (0, 4)
    code, out = follow(sb, tmp_path, "python3 scripts/submit.py classify.retry.jsonl --json")
    assert code == 0
    retry_job = tmp_path / "classify.retry.job.json"
    advance_all(sb, retry_job)
    code, out = run_json("poll.py", retry_job.name, embed.name, env=env, cwd=tmp_path)
    assert len(out["next"].split(" && ")) == 2
    code, out = run_json("fetch_results.py", retry_job.name, embed.name, env=env, cwd=tmp_path)
    assert code == 2 and out["error"]["code"] == "unrelated_jobs"
    # the family fetched together: T-2's retry fixed it, and it is a classification
    code, out = run_json("fetch_results.py", classify.name, retry_job.name, env=env,
                         cwd=tmp_path)
    assert code == 0, out
    recs = records(tmp_path / "classify.results.jsonl")
    assert recs["T-2"]["content"].startswith("ECHO Classify: cannot log in")
    assert "embedding" not in recs["T-2"] and recs["T-2"]["attempts"] == 2
    embeds = records(tmp_path / "embed.results.jsonl")
    assert all(len(r["embedding"]) == 8 for r in embeds.values())


def _target(arg: str, job_id: str, endpoint: str, family: str | None = None):
    job = {"job_id": job_id, "endpoint": endpoint, "shards": [{"endpoint": endpoint}]}
    if family:
        job["origin"] = {"family_id": family}
    return polling.Target(arg, arg, job, [polling.Entry("b-" + arg, arg, 0)])


def test_family_rule_on_job_files():
    orig = _target("a.job.json", "A", "/v1/chat/completions")
    retry = _target("a.retry.job.json", "R", "/v1/chat/completions", family="A")
    deeper = _target("a.retry2.job.json", "R2", "/v1/chat/completions", family="A")
    other = _target("b.job.json", "B", "/v1/chat/completions")
    families.check_related([orig, retry, deeper], lambda g: "fetch")
    assert [[t.arg for t in g] for g in families.groups([orig, other, retry])] == [
        ["a.job.json", "a.retry.job.json"], ["b.job.json"]]
    with pytest.raises(Exception) as exc:
        families.check_related([orig, other], lambda g: "fetch " + g[0].arg)
    assert exc.value.code == "unrelated_jobs" and "fetch b.job.json" in exc.value.hint
    mixed = _target("a.emb.job.json", "E", "/v1/embeddings", family="A")
    with pytest.raises(Exception) as exc:
        families.check_related([orig, mixed], lambda g: "fetch")
    assert exc.value.code == "unrelated_jobs" and "different endpoints" in exc.value.message


def test_fetch_commands_name_the_whole_family_even_when_only_a_retry_job_is_asked_about(
        sb, tmp_path):
    classify, embed = chat_and_embedding_jobs(sb, tmp_path, "Route: {subject} {extra}")
    env = script_env(sb.base_url)
    code, out = run_json("fetch_results.py", classify.name, env=env, cwd=tmp_path)
    assert code == 4 and out["retry_file"] == "classify.retry.jsonl", out
    family = ["classify.job.json", "classify.retry.job.json"]

    # submit.py of the retry file: the fetch it suggests is the family's
    code, sub = follow(sb, tmp_path, out["next"])
    assert code == 0, sub
    assert shlex.split(sub["fetch_command"])[2:] == [*family, "--json"]
    assert shlex.split(sub["next"])[2:] == ["classify.retry.job.json", "--json"]
    retry_job = tmp_path / "classify.retry.job.json"
    advance_all(sb, retry_job)

    # poll.py on the retry job with another job: the chat family whole, origin first
    code, out = run_json("poll.py", retry_job.name, embed.name, env=env, cwd=tmp_path)
    assert code == 0, out
    assert [shlex.split(c)[2:] for c in out["next"].split(" && ")] == [
        [*family, "--json"], [embed.name, "--json"]]
    # and alone
    code, out = run_json("poll.py", retry_job.name, env=env, cwd=tmp_path)
    assert shlex.split(out["next"])[2:] == [*family, "--json"]

    # fetch_results.py of the retry job alone: a partial result, said so, and `next` is the
    # family fetch (not a submit of a retry file made from half the family)
    proc = run_script("fetch_results.py", retry_job.name, "--json", env=env, cwd=tmp_path)
    out = json.loads(proc.stdout)
    assert shlex.split(out["next"])[2:] == [*family, "--json"], out
    assert out["after_retry"] is None and out["table_file"] is None
    assert "part of a family" in proc.stderr and "classify.job.json" in proc.stderr

    # the family fetch: everything ok, the table beside the origin job
    code, out = follow(sb, tmp_path, out["next"])
    assert code == 0 and out["table_file"] == "classify.table.csv", out
    assert records(tmp_path / "classify.results.jsonl")["T-2"]["attempts"] == 2
    # the jobs' lock files are hidden: the folder shows the user's files
    locks = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".lock"))
    assert ".classify.job.json.lock" in locks and ".classify.retry.job.json.lock" in locks
    assert all(name.startswith(".") for name in locks), locks

    # the origin job file gone: said so, and the command falls back to what was given
    classify.rename(tmp_path / "elsewhere.json")
    proc = run_script("poll.py", retry_job.name, "--json", env=env, cwd=tmp_path)
    out = json.loads(proc.stdout)
    assert shlex.split(out["next"])[2:] == ["classify.retry.job.json", "--json"]
    assert "came from classify.job.json, which is gone" in proc.stderr


def test_a_failed_last_retry_batch_leads_to_the_family_fetch_first(sb, tmp_path):
    """The retry job's only request fails again, so the server marks its batch `failed`:
    poll.py exits 5 and leads to the family's fetch (which decides what is worth retrying),
    never to an in-place retry of a request that keeps failing."""
    src = write_lines(tmp_path / "q.jsonl", [chat_line("fine", "all good here"),
                                             chat_line("busy", "[[fail:503]] still busy")])
    env = script_env(sb.base_url)
    code, out = run_json("submit.py", src.name, env=env, cwd=tmp_path)
    advance_all(sb, tmp_path / out["job"])
    code, out = run_json("fetch_results.py", "q.job.json", env=env, cwd=tmp_path)
    assert code == 4 and out["retry_file"] == "q.retry.jsonl", out
    assert follow(sb, tmp_path, out["next"])[0] == 0
    advance_all(sb, tmp_path / "q.retry.job.json")

    code, out = run_json("poll.py", "q.retry.job.json", env=env, cwd=tmp_path)
    assert code == 5 and out["batches"][0]["status"] == "failed", out
    assert shlex.split(out["next"])[2:] == ["q.job.json", "q.retry.job.json", "--json"]
    assert "fetch first" in out["hint"] and "decides what is worth retrying" in out["hint"]
    assert "batches.py" not in out["hint"], "no in-place retry of a batch that failed"
    code, out = follow(sb, tmp_path, out["next"])
    assert code == 4 and out["jobs"] == ["q.job.json", "q.retry.job.json"], out
    assert records(tmp_path / "q.results.jsonl")["busy"]["attempts"] == 2


def test_every_command_poll_suggests_runs_as_printed(sb, tmp_path):
    """The in-place retry poll.py offers names the real job file, and runs as printed."""
    src = write_lines(tmp_path / "r.jsonl", [chat_line("ok", "fine words"),
                                             chat_line("bad", "[[fail:400]] no")])
    env = script_env(sb.base_url)
    code, out = run_json("submit.py", src.name, env=env, cwd=tmp_path)
    advance_all(sb, tmp_path / "r.job.json")
    code, out = run_json("poll.py", "r.job.json", env=env, cwd=tmp_path)
    assert code == 4 and out["hint"].startswith("finished, but 1 request(s) failed: fetch"), out
    offered = out["hint"].split("inside the same batch instead: ", 1)[1]
    argv = shlex.split(offered)
    assert argv[1].endswith("batches.py") and argv[2:] == ["retry", "r.job.json", "--json"]
    code, done = follow(sb, tmp_path, offered)
    assert code == 0, done

    # a cancelled batch: exit 5, fetch first, the in-place retry offered by its batch id
    code, sub = run_json("submit.py", write_lines(tmp_path / "c.jsonl", [
        chat_line("a", "one"), chat_line("b", "two")]).name, env=env, cwd=tmp_path)
    batch_id = sub["batch_ids"][0]
    sb.advance(batch_id, 1)
    sb.post(f"/batches/{batch_id}/cancel")
    sb.advance(batch_id)
    code, out = run_json("poll.py", batch_id, env=env, cwd=tmp_path)
    assert code == 5 and out["hint"].startswith("a batch failed, expired or was cancelled: "
                                                "fetch first"), out
    offered = out["hint"].split("inside the same batch: ", 1)[1]
    assert shlex.split(offered)[2:] == ["retry", batch_id, "--json"]
    assert follow(sb, tmp_path, offered)[0] == 0
