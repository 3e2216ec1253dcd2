"""fetch_results.py end to end: the real script as a subprocess, real HTTP, the sandbox and
its faults. Batches move only when a test advances them (--manual), so every partial state
is deterministic; the sandbox's prompt-derived answers ("ECHO " + prompt) prove each record
was joined to its own request."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest
from conftest import (
    TEST_KEY,
    assert_no_key_in_tree,
    chat_line,
    run_json,
    run_script,
    sandbox_per_file,
    script_env,
    write_lines,
)
from dwbatch import errors
from dwbatch.download import count_complete_lines, raw_dir_lock, sync_raw_file

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}},
          "required": ["answer"], "additionalProperties": False}


shared_sandbox, sb = sandbox_per_file("--enable-faults", "--manual", "--seed", "7")


# --- helpers -------------------------------------------------------------------------------

def submit(sb, path: Path) -> tuple[Path, str]:
    code, out = run_json("submit.py", path.name, env=script_env(sb.base_url), cwd=path.parent)
    assert code == 0, out
    job = path.parent / out["job"]
    return job, out["batch_ids"][0]


def fetch(sb, cwd: Path, *args: str) -> tuple[int, dict]:
    return run_json("fetch_results.py", *args, env=script_env(sb.base_url), cwd=cwd)


def records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def raw_lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_bytes().splitlines()]


def prompts_of(n: int, prefix: str = "prompt") -> list[str]:
    return [f"{prefix} {i} {'word ' * (i % 3)}".strip() for i in range(n)]


def content_calls(sb, batch_file_id: str | None = None) -> list[dict]:
    return [c for c in sb.calls() if c["path"].endswith("/content")
            and (batch_file_id is None or batch_file_id in c["path"])]


def job_shard(job: Path) -> dict:
    return json.loads(job.read_text())["shards"][0]


# --- tests -----------------------------------------------------------------------------------

def test_out_of_order_output_is_joined_to_its_own_requests(sb, tmp_path):
    prompts = prompts_of(25)
    src = write_lines(tmp_path / "p.jsonl", [chat_line(f"r{i}", p) for i, p in enumerate(prompts)])
    job, batch_id = submit(sb, src)
    sb.advance(batch_id)
    code, out = fetch(sb, tmp_path, job.name)
    assert code == 0 and out["ok"] and out["next"] is None, out
    recs = records(tmp_path / "p.results.jsonl")
    assert [r["custom_id"] for r in recs] == [f"r{i}" for i in range(25)]
    for rec, prompt in zip(recs, prompts, strict=True):
        assert rec["status"] == "ok" and rec["content"] == "ECHO " + prompt
        assert rec["batch_id"] == batch_id and rec["usage"]["total_tokens"] > 0
    raw = raw_lines(tmp_path / "p.raw" / f"{batch_id}.output.jsonl")
    assert [r["custom_id"] for r in raw] != [f"r{i}" for i in range(25)]  # really shuffled
    assert sorted(r["custom_id"] for r in raw) == sorted(f"r{i}" for i in range(25))
    assert out["counts"]["ok"] == 25 and out["retry_file"] is None
    assert out["usage"]["total_tokens"] == sum(r["usage"]["total_tokens"] for r in recs)
    assert not (tmp_path / "p.retry.jsonl").exists()
    assert_no_key_in_tree(tmp_path)


def test_fetch_during_the_run_then_again_then_at_the_end(sb, tmp_path):
    n = 30
    src = write_lines(tmp_path / "p.jsonl", [chat_line(f"r{i}", f"q {i}") for i in range(n)])
    job, batch_id = submit(sb, src)
    sb.calls()
    code, out = fetch(sb, tmp_path, job.name)  # validating: nothing yet
    assert code == 3 and out["counts"]["pending"] == n
    assert out["next"].endswith("fetch_results.py p.job.json --json")
    sb.advance(batch_id, 10)
    code, out = fetch(sb, tmp_path, job.name)
    assert code == 3 and out["counts"]["ok"] == 10 and out["counts"]["pending"] == 20
    assert job_shard(job)["downloaded"]["output_lines"] == 10
    sb.advance(batch_id, 12)
    sb.control("DELETE", "/calls")
    code, out = fetch(sb, tmp_path, job.name)
    assert code == 3 and out["counts"]["ok"] == 22
    out_file = job_shard(job)["output_file_id"]
    skips = [c["query"] for c in content_calls(sb, out_file)]
    assert any("skip=10" in q for q in skips), skips  # only the new lines were asked for
    sb.advance(batch_id)
    code, out = fetch(sb, tmp_path, job.name)
    assert code == 0 and out["counts"]["ok"] == n
    raw = raw_lines(tmp_path / "p.raw" / f"{batch_id}.output.jsonl")
    ids = [r["custom_id"] for r in raw]
    assert len(ids) == n and len(set(ids)) == n  # no duplicate, no lost line
    assert all(r["content"] == f"ECHO q {r['custom_id'][1:]}"
               for r in records(tmp_path / "p.results.jsonl"))
    # a further run downloads nothing new and changes nothing
    before = (tmp_path / "p.raw" / f"{batch_id}.output.jsonl").read_bytes()
    code, out = fetch(sb, tmp_path, job.name)
    assert code == 0 and out["batches"][0]["output"]["new_lines"] == 0
    assert (tmp_path / "p.raw" / f"{batch_id}.output.jsonl").read_bytes() == before


@pytest.mark.parametrize("kind", ["drop", "tear"])
def test_broken_download_resumes_without_duplicates(sb, tmp_path, kind):
    n = 40
    src = write_lines(tmp_path / "p.jsonl", [chat_line(f"r{i}", f"w {i}") for i in range(n)])
    job, batch_id = submit(sb, src)
    sb.advance(batch_id)
    out_file = sb.get(f"/batches/{batch_id}").json()["output_file_id"]
    spec = {"kind": kind, "method": "GET", "path": f"/v1/files/{out_file}/content",
            "times": 1}
    if kind == "drop":
        spec["after_bytes"] = 3000  # headers and a few lines, then the connection closes
    sb.fault(**spec)
    sb.control("DELETE", "/calls")
    code, out = fetch(sb, tmp_path, job.name)
    assert code == 0, out
    calls = content_calls(sb, out_file)
    assert calls[0]["fault"] and not calls[1]["fault"]  # cut once, then continued
    resumed_at = int(calls[1]["query"].split("skip=")[1].split("&")[0])
    assert 0 < resumed_at < n and (kind == "drop" or resumed_at == n - 1)
    raw = (tmp_path / "p.raw" / f"{batch_id}.output.jsonl").read_bytes()
    assert raw.endswith(b"\n")
    ids = [json.loads(x)["custom_id"] for x in raw.splitlines()]
    assert len(ids) == n and len(set(ids)) == n
    served = sb.get(f"/files/{out_file}/content").content
    assert raw == served  # byte for byte as served


def test_download_that_keeps_breaking_exits_7_then_rerun_completes(sb, tmp_path):
    n = 40
    src = write_lines(tmp_path / "p.jsonl", [chat_line(f"r{i}", f"x {i}") for i in range(n)])
    job, batch_id = submit(sb, src)
    sb.advance(batch_id)
    out_file = sb.get(f"/batches/{batch_id}").json()["output_file_id"]
    content = f"/v1/files/{out_file}/content"
    sb.fault(kind="drop", method="GET", path=content, after_bytes=2000)  # a few lines
    sb.fault(kind="drop", method="GET", path=content, after_bytes=50, times=50)  # none
    code, out = fetch(sb, tmp_path, job.name, "--max-retries", "1")
    assert code == 7 and out["error"]["code"] == "download_interrupted", out
    saved = job_shard(job)["downloaded"]["output_lines"]
    raw = tmp_path / "p.raw" / f"{batch_id}.output.jsonl"
    assert 0 < saved < n and len(raw.read_bytes().splitlines()) == saved
    sb.clear_faults()
    code, out = fetch(sb, tmp_path, job.name)
    assert code == 0 and out["batches"][0]["output"]["new_lines"] == n - saved
    ids = [r["custom_id"] for r in raw_lines(raw)]
    assert sorted(ids) == sorted(f"r{i}" for i in range(n))


def test_crash_between_append_and_count_update_is_repaired(sb, tmp_path):
    n = 20
    src = write_lines(tmp_path / "p.jsonl", [chat_line(f"r{i}", f"c {i}") for i in range(n)])
    job, batch_id = submit(sb, src)
    sb.advance(batch_id, 8)
    assert fetch(sb, tmp_path, job.name)[0] == 3
    # as if a crash hit after lines were appended but before the counts were stored:
    # the job file says 5 lines, the raw copy holds 8 plus a torn tail
    data = json.loads(job.read_text())
    raw = tmp_path / "p.raw" / f"{batch_id}.output.jsonl"
    lines = raw.read_bytes().splitlines(keepends=True)
    data["shards"][0]["downloaded"]["output_lines"] = 5
    data["shards"][0]["downloaded"]["output_bytes"] = sum(len(x) for x in lines[:5])
    job.write_text(json.dumps(data))
    with open(raw, "ab") as f:
        f.write(b'{"id": "torn')
    sb.advance(batch_id)
    code, out = fetch(sb, tmp_path, job.name)
    assert code == 0, out
    ids = [r["custom_id"] for r in raw_lines(raw)]
    assert len(ids) == n and len(set(ids)) == n


def test_error_file_json_and_plain_text_messages(sb, tmp_path):
    lines = [chat_line("ok", "fine"), chat_line("j400", "[[fail:400]] bad"),
             chat_line("txt", "[[fail:text]] odd"), chat_line("t500", "[[fail:503]] busy"),
             chat_line("tmo", "[[fail:timeout]] slow")]
    job, batch_id = submit(sb, write_lines(tmp_path / "p.jsonl", lines))
    sb.advance(batch_id)
    code, out = fetch(sb, tmp_path, job.name)
    assert code == 4 and out["counts"]["error"] == 4 and out["counts"]["ok"] == 1
    recs = {r["custom_id"]: r for r in records(tmp_path / "p.results.jsonl")}
    assert recs["j400"]["error"]["status_code"] == 400
    assert recs["j400"]["error"]["type"] == "NonRetriableHttpStatus"
    assert "[[fail:400]]" in recs["j400"]["error"]["message"]
    assert recs["t500"]["error"]["status_code"] == 503
    assert recs["t500"]["error"]["type"] == "RetriableHttpStatus"
    assert recs["txt"]["error"]["type"] is None and recs["txt"]["error"]["status_code"] is None
    assert "plain text" in recs["txt"]["error"]["message"]
    assert recs["tmo"]["error"]["type"] == "Timeout"
    assert recs["j400"]["retriable"] is False and recs["j400"]["attempts"] == 1
    assert all(recs[c]["retriable"] is True for c in ("txt", "t500", "tmo"))
    assert "retriable" not in recs["ok"] and recs["ok"]["attempts"] == 1
    retry = tmp_path / "p.retry.jsonl"
    assert out["retry_file"] == "p.retry.jsonl" and out["retry_requests"] == 3
    originals = {json.loads(x)["custom_id"]: x for x in (tmp_path / "p.jsonl").read_text()
                 .splitlines()}
    assert retry.read_text().splitlines() == [originals[c] for c in ("txt", "t500", "tmo")]
    assert out["gave_up"] == 1 and out["gave_up_reasons"] == [{
        "reason": "rejected by the model server (HTTP 400): the request itself is refused, "
                  "so sending it again would fail the same way", "count": 1,
        "custom_ids": ["j400"]}]
    assert out["next"].endswith("submit.py p.retry.jsonl --json")


def test_truncated_answers_and_raised_limit_in_retry_file(sb, tmp_path):
    lines = [chat_line("short", "one two three four five", max_tokens=2),
             chat_line("fine", "hi", max_tokens=50)]
    job, batch_id = submit(sb, write_lines(tmp_path / "p.jsonl", lines))
    sb.advance(batch_id)
    code, out = fetch(sb, tmp_path, job.name, "--truncated-max-tokens", "3x")
    assert code == 4 and out["counts"]["truncated"] == 1
    short = records(tmp_path / "p.results.jsonl")[0]
    assert short["status"] == "truncated" and short["finish_reason"] == "length"
    assert short["content"] == "ECHO one"
    retry = [json.loads(x) for x in (tmp_path / "p.retry.jsonl").read_text().splitlines()]
    assert [r["custom_id"] for r in retry] == ["short"] and retry[0]["body"]["max_tokens"] == 6


def test_structured_output_schema_invalid_and_bad_json(sb, tmp_path):
    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA, "strict": True}}
    lines = [chat_line("good", "tell me", response_format=rf),
             chat_line("schema", "[[schema_invalid]] tell me", response_format=rf),
             chat_line("bad", "[[bad_json]] tell me", response_format=rf)]
    job, batch_id = submit(sb, write_lines(tmp_path / "p.jsonl", lines))
    sb.advance(batch_id)
    code, out = fetch(sb, tmp_path, job.name, "--retry-status", "schema_invalid")
    assert code == 4, out
    good, schema, bad = records(tmp_path / "p.results.jsonl")
    assert good["status"] == "ok" and isinstance(good["json"]["answer"], str)
    assert schema["status"] == "schema_invalid" and "json" in schema
    assert "JSON Schema" in schema["error"]["message"]
    assert bad["status"] == "invalid_json" and "json" not in bad
    retry = (tmp_path / "p.retry.jsonl").read_text().splitlines()
    assert [json.loads(x)["custom_id"] for x in retry] == ["schema"]  # --retry-status


def test_cancelled_batch_keeps_partial_results_exit_5(sb, tmp_path):
    n = 12
    src = write_lines(tmp_path / "p.jsonl", [chat_line(f"r{i}", f"k {i}") for i in range(n)])
    job, batch_id = submit(sb, src)
    sb.advance(batch_id, 5)
    assert sb.post(f"/batches/{batch_id}/cancel").status_code == 200
    sb.advance(batch_id)  # cancelling -> cancelled
    code, out = fetch(sb, tmp_path, job.name)
    assert code == 5, out
    assert out["counts"]["ok"] == 5 and out["counts"]["missing"] == n - 5
    recs = records(tmp_path / "p.results.jsonl")
    assert len(recs) == n
    missing = [r for r in recs if r["status"] == "missing"]
    assert all("cancelled" in r["error"]["message"] for r in missing)
    retry = [json.loads(x)["custom_id"] for x in (tmp_path / "p.retry.jsonl").read_text()
             .splitlines()]
    assert retry == [r["custom_id"] for r in missing]
    assert "submit.py p.retry.jsonl" in out["next"]


def test_batch_cancelled_while_validating_counts_as_cancelled(sb, tmp_path):
    src = write_lines(tmp_path / "p.jsonl", [chat_line(f"r{i}", f"v {i}") for i in range(3)])
    job, batch_id = submit(sb, src)
    assert sb.post(f"/batches/{batch_id}/cancel").json()["status"] == "cancelling"
    code, out = fetch(sb, tmp_path, job.name)  # stuck `cancelling`: nothing will ever run
    assert code == 5 and out["counts"]["missing"] == 3, out
    assert out["batches"][0]["status"] == "cancelling"


def test_compat_server_whole_file_once_terminal(sandbox_factory, tmp_path):
    compat = sandbox_factory("--openai-compat", "--enable-faults", "--manual", "--seed", "3")
    n = 15
    src = write_lines(tmp_path / "p.jsonl", [chat_line(f"r{i}", f"z {i}") for i in range(n)])
    job, batch_id = submit(compat, src)
    compat.advance(batch_id, 6)
    code, out = fetch(compat, tmp_path, job.name)
    assert code == 3 and out["counts"]["pending"] == n, out
    compat.advance(batch_id)
    code, out = fetch(compat, tmp_path, job.name)
    assert code == 0 and out["counts"]["ok"] == n, out
    assert out["batches"][0]["output"]["mode"] == "whole_file"
    recs = records(tmp_path / "p.results.jsonl")
    assert [r["content"] for r in recs] == [f"ECHO z {i}" for i in range(n)]
    compat.control("DELETE", "/calls")
    code, out = fetch(compat, tmp_path, job.name)  # already complete: not downloaded again
    assert code == 0 and not content_calls(compat)


def test_original_plus_retry_job_merged_and_retry_file_submitted(sb, tmp_path):
    lines = [chat_line("a", "alpha"), chat_line("b", "one two three four", max_tokens=2),
             chat_line("c", "gamma"), chat_line("d", "[[fail:503]] delta")]
    job, batch_id = submit(sb, write_lines(tmp_path / "p.jsonl", lines))
    sb.advance(batch_id)
    code, out = fetch(sb, tmp_path, job.name, "--truncated-max-tokens", "100")
    assert code == 4 and out["retry_requests"] == 2
    retry_job, retry_batch = submit(sb, tmp_path / "p.retry.jsonl")
    assert retry_job.name == "p.retry.job.json"
    assert out["after_retry"].endswith("fetch_results.py p.job.json p.retry.job.json --json")
    sb.advance(retry_batch)
    code, out = fetch(sb, tmp_path, job.name, retry_job.name)
    assert code == 4, out  # d fails again: still an error
    recs = records(tmp_path / "p.results.jsonl")
    assert [r["custom_id"] for r in recs] == ["a", "b", "c", "d"]
    assert [r["status"] for r in recs] == ["ok", "ok", "ok", "error"]
    assert recs[1]["content"] == "ECHO one two three four" and recs[1]["batch_id"] == retry_batch
    assert recs[0]["batch_id"] == batch_id
    # the new retry file must not overwrite the retry job's own input
    assert out["retry_file"] == "p.retry2.jsonl"
    assert [json.loads(x)["custom_id"] for x in (tmp_path / "p.retry2.jsonl").read_text()
            .splitlines()] == ["d"]
    assert len((tmp_path / "p.retry.jsonl").read_text().splitlines()) == 2


def test_retry_job_that_fixes_everything_gives_exit_0(sb, tmp_path):
    lines = [chat_line("a", "alpha beta gamma", max_tokens=2), chat_line("b", "b")]
    job, batch_id = submit(sb, write_lines(tmp_path / "p.jsonl", lines))
    sb.advance(batch_id)
    assert fetch(sb, tmp_path, job.name, "--truncated-max-tokens", "2x")[0] == 4
    retry_job, retry_batch = submit(sb, tmp_path / "p.retry.jsonl")
    sb.advance(retry_batch, 0)
    code, out = fetch(sb, tmp_path, job.name, retry_job.name)
    assert code == 3 and out["counts"]["pending"] == 1  # the retry is still running
    sb.advance(retry_batch)
    code, out = fetch(sb, tmp_path, job.name, retry_job.name)
    assert code == 0 and out["next"] is None and out["retry_file"] is None, out
    assert [r["status"] for r in records(tmp_path / "p.results.jsonl")] == ["ok", "ok"]


def test_embeddings_and_csv(sb, tmp_path):
    lines = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": "sandbox-embed", "input": f"text {i}"}} for i in range(4)]
    job, batch_id = submit(sb, write_lines(tmp_path / "emb.jsonl", lines))
    sb.advance(batch_id)
    code, out = fetch(sb, tmp_path, job.name)
    assert code == 0, out
    recs = records(tmp_path / "emb.results.jsonl")
    assert all(len(r["embedding"]) == 8 and r["content"] is None for r in recs)
    assert recs[0]["embedding"] != recs[1]["embedding"]
    code, out = fetch(sb, tmp_path, job.name, "--format", "csv")
    assert code == 0 and out["results_file"] == "emb.results.csv"
    text = (tmp_path / "emb.results.csv").read_text()
    assert text.splitlines()[0].startswith("custom_id,status,content")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert json.loads(rows[0]["embedding"]) == recs[0]["embedding"]
    assert (rows[0]["attempts"], rows[0]["retriable"]) == ("1", "")


def test_responses_endpoint_text_truncation_and_schema(sb, tmp_path):
    fmt = {"format": {"type": "json_schema", "name": "a", "schema": SCHEMA}}
    lines = [{"custom_id": cid, "method": "POST", "url": "/v1/responses",
              "body": {"model": "sandbox-chat", "input": text, **extra}}
             for cid, text, extra in (("plain", "hello there friend", {}),
                                      ("cut", "hello there friend", {"max_output_tokens": 2}),
                                      ("json", "hi", {"text": fmt}),
                                      ("badjson", "[[schema_invalid]] hi", {"text": fmt}))]
    job, batch_id = submit(sb, write_lines(tmp_path / "resp.jsonl", lines))
    sb.advance(batch_id)
    code, out = fetch(sb, tmp_path, job.name)
    assert code == 4, out
    plain, cut, js, bad = records(tmp_path / "resp.results.jsonl")
    assert (plain["status"], plain["content"]) == ("ok", "ECHO hello there friend")
    assert (cut["status"], cut["content"]) == ("truncated", "ECHO hello")
    assert js["status"] == "ok" and isinstance(js["json"]["answer"], str)
    assert bad["status"] == "schema_invalid"
    assert out["usage"]["prompt_tokens"] == sum(r["usage"]["input_tokens"]
                                                for r in (plain, cut, js, bad))


def test_bare_batch_id_uses_the_batches_own_input_order(sb, tmp_path):
    prompts = prompts_of(10, "bare")
    src = write_lines(tmp_path / "p.jsonl", [chat_line(f"b{i}", p) for i, p in enumerate(prompts)])
    _, batch_id = submit(sb, src)
    work = tmp_path / "elsewhere"
    work.mkdir()
    sb.advance(batch_id, 4)
    code, out = fetch(sb, work, batch_id)
    assert code == 3 and out["counts"]["ok"] == 4
    sb.advance(batch_id)
    code, out = fetch(sb, work, batch_id)
    assert code == 0, out
    recs = records(work / f"{batch_id}.results.jsonl")
    assert [r["content"] for r in recs] == ["ECHO " + p for p in prompts]
    assert (work / f"{batch_id}.raw" / f"{batch_id}.input.jsonl").exists()
    code, out = fetch(sb, work, batch_id, "--offline", "-o", "again.jsonl")
    assert code == 0 and records(work / "again.jsonl") == recs


def test_server_side_retry_shrinking_the_error_file_is_handled(sb, tmp_path):
    lines = [chat_line("a", "a"), chat_line("f1", "[[fail:400]] x"), chat_line("b", "b"),
             chat_line("f2", "[[fail:400]] y"), chat_line("c", "c")]
    job, batch_id = submit(sb, write_lines(tmp_path / "p.jsonl", lines))
    sb.advance(batch_id)
    assert fetch(sb, tmp_path, job.name)[0] == 4
    assert sb.post(f"/batches/{batch_id}/retry").status_code == 200
    code, out = fetch(sb, tmp_path, job.name)  # failed requests are pending again
    assert code == 3 and out["counts"]["pending"] == 2, out
    assert job_shard(job)["downloaded"]["error_lines"] == 0
    sb.advance(batch_id)
    code, out = fetch(sb, tmp_path, job.name)
    assert code == 4 and out["counts"] == {**out["counts"], "ok": 3, "error": 2}
    errs = raw_lines(tmp_path / "p.raw" / f"{batch_id}.errors.jsonl")
    assert sorted(e["custom_id"] for e in errs) == ["f1", "f2"]


def test_bad_usage_is_exit_2_and_names_the_problem(sb, tmp_path):
    job, _ = submit(sb, write_lines(tmp_path / "p.jsonl", [chat_line("a", "a")]))
    code, out = fetch(sb, tmp_path, job.name, "-o", "p.jsonl")
    assert code == 2 and "input file of a submitted job" in out["error"]["message"]
    code, out = fetch(sb, tmp_path, job.name, "--retry-status", "ok")
    assert code == 2 and "--retry-status" in out["error"]["message"]
    code, out = fetch(sb, tmp_path, "missing.job.json")
    assert code == 2
    proc = run_script("fetch_results.py", "--help")
    assert proc.returncode == 0 and "--retry-file" in proc.stdout and "130" in proc.stdout


def test_human_output_and_key_never_written(sb, tmp_path):
    job, batch_id = submit(sb, write_lines(tmp_path / "p.jsonl",
                                           [chat_line("a", "a"), chat_line("x", "[[fail:422]]")]))
    sb.advance(batch_id)
    proc = run_script("fetch_results.py", job.name, env=script_env(sb.base_url), cwd=tmp_path)
    assert proc.returncode == 4
    assert "results: p.results.jsonl (2 records: 1 ok, 1 error)" in proc.stdout
    assert "next: " not in proc.stdout, "a 422 is given up at once: nothing left to retry"
    assert "gave up on 1 request(s)" in proc.stdout and "HTTP 422" in proc.stdout
    assert "custom_id x" in proc.stdout and "the job is finished" in proc.stdout
    assert TEST_KEY not in json.dumps(json.loads(job.read_text()))
    assert_no_key_in_tree(tmp_path)
    assert os.path.isdir(tmp_path / "p.raw")


# --- re-runs with nothing new keep the files (the stamp beside the results) -----------------

def file_identity(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def without_downloads(envelope: dict, offline: bool = False) -> dict:
    """The envelope minus what only says what this run downloaded (all of it offline)."""
    out = json.loads(json.dumps(envelope))
    for item in out["batches"]:
        for kind in ("output", "error"):
            if offline:
                item.pop(kind, None)
            else:
                item.get(kind, {}).pop("new_lines", None)
    return out


def test_refetch_with_nothing_new_keeps_the_files_and_the_envelope(sb, tmp_path):
    lines = [chat_line(f"r{i}", f"k {i}") for i in range(6)] + [chat_line("f", "[[fail:503]]")]
    job, batch_id = submit(sb, write_lines(tmp_path / "p.jsonl", lines))
    sb.advance(batch_id)
    code, first = fetch(sb, tmp_path, job.name)
    assert code == 4 and first["counts"]["ok"] == 6 and first["retry_requests"] == 1, first
    results, retry = tmp_path / "p.results.jsonl", tmp_path / "p.retry.jsonl"
    stamp = tmp_path / ".p.results.jsonl.stamp.json"
    assert stamp.exists()
    before = (file_identity(results), file_identity(retry), results.read_bytes())
    for args in ((), ("--offline",)):
        proc = run_script("fetch_results.py", job.name, "--json", *args,
                          env=script_env(sb.base_url), cwd=tmp_path)
        again = json.loads(proc.stdout)
        assert proc.returncode == 4 and "nothing changed" in proc.stderr, proc.stderr
        assert (file_identity(results), file_identity(retry), results.read_bytes()) == before
        offline = bool(args)
        assert without_downloads(again, offline) == without_downloads(first, offline)
    # --rebuild writes both files again (new inodes), with the same bytes and envelope
    code, rebuilt = fetch(sb, tmp_path, job.name, "--rebuild")
    assert code == 4 and without_downloads(rebuilt) == without_downloads(first)
    assert file_identity(results)[0] != before[0][0] and results.read_bytes() == before[2]
    # an option that shapes the output is part of the stamp: it rebuilds
    code, out = fetch(sb, tmp_path, job.name, "--retry-status", "missing")
    assert code == 4 and out["retry_file"] is None and not retry.exists()
    # so is a changed results file: it is written again, not trusted
    results.write_text("edited\n")
    code, out = fetch(sb, tmp_path, job.name, "--retry-status", "missing")
    assert code == 4 and [r["custom_id"] for r in records(results)][-1] == "f"


def test_refetch_rebuilds_after_new_lines_or_a_new_batch_status(sb, tmp_path):
    job, batch_id = submit(sb, write_lines(tmp_path / "p.jsonl",
                                           [chat_line(f"r{i}", f"n {i}") for i in range(9)]))
    results = tmp_path / "p.results.jsonl"
    sb.advance(batch_id, 3)
    code, out = fetch(sb, tmp_path, job.name)
    assert code == 3 and out["counts"]["ok"] == 3 and out["counts"]["pending"] == 6
    kept = file_identity(results)
    assert fetch(sb, tmp_path, job.name)[0] == 3 and file_identity(results) == kept
    sb.advance(batch_id, 3)  # new lines arrive
    code, out = fetch(sb, tmp_path, job.name)
    assert code == 3 and out["counts"]["ok"] == 6 and out["counts"]["pending"] == 3, out
    assert file_identity(results) != kept
    assert [r["status"] for r in records(results)].count("ok") == 6
    # no new line, but the batch ends: pending requests become missing
    assert sb.post(f"/batches/{batch_id}/cancel").status_code == 200
    sb.advance(batch_id)  # cancelling -> cancelled, no request finishes
    code, out = fetch(sb, tmp_path, job.name)
    assert code == 5 and out["counts"]["missing"] == 3 and out["counts"]["pending"] == 0, out
    assert out["batches"][0]["output"]["new_lines"] == 0
    assert [r["status"] for r in records(results)].count("missing") == 3
    assert out["retry_requests"] == 3


# --- the raw copy's upkeep (pure file logic, no network) -----------------------------------

def _raw(tmp_path: Path, n: int, tail: bytes = b"") -> Path:
    path = tmp_path / "raw.jsonl"
    path.write_bytes(b"".join(b'{"custom_id": "c%d"}\n' % i for i in range(n)) + tail)
    return path


def test_sync_raw_file_cuts_back_to_the_recorded_count(tmp_path):
    path = _raw(tmp_path, 5, b'{"torn')
    three = count_complete_lines(str(path), stop_after=3)
    assert three == (3, len(b"".join(b'{"custom_id": "c%d"}\n' % i for i in range(3))))
    assert count_complete_lines(str(path)) == (5, path.stat().st_size - len(b'{"torn'))
    # longer than recorded (crash after the append): cut back to the recorded bytes
    assert sync_raw_file(str(path), 3, three[1], print) == three
    assert path.read_bytes().count(b"\n") == 3 and path.read_bytes().endswith(b"\n")


def test_sync_raw_file_without_byte_count_or_shorter_than_recorded(tmp_path):
    notes = []
    path = _raw(tmp_path, 4, b'{"to')
    # only a line count recorded (the contract's minimal `downloaded`): count, keep 4 lines
    lines, nbytes = sync_raw_file(str(path), 4, None, notes.append)
    assert (lines, nbytes) == (4, path.stat().st_size) and not notes
    # more recorded than the raw copy holds: resume after what is really there
    lines, _ = sync_raw_file(str(path), 10, None, notes.append)
    assert lines == 4 and notes
    # more lines in the raw copy than recorded and no byte count: keep only the recorded ones
    lines, nbytes = sync_raw_file(str(path), 2, None, notes.append)
    assert lines == 2 and path.read_bytes().count(b"\n") == 2 == len(path.read_bytes()
                                                                      .splitlines())
    # raw copy deleted: start again from 0
    path.unlink()
    assert sync_raw_file(str(path), 2, nbytes, notes.append) == (0, 0)


def _line_stream(data: bytes):
    import io

    import requests
    import urllib3
    from dwbatch.client import LineStream
    resp = requests.Response()
    resp.status_code = 200
    resp.raw = urllib3.response.HTTPResponse(body=io.BytesIO(data), preload_content=False)
    return LineStream(resp, "GET", "/files/x/content")


def test_line_blocks_keep_torn_tail_and_stop_at_max_lines():
    from dwbatch.client import iter_line_blocks
    lines = [b'{"n": %d, "pad": "%s"}\n' % (i, b"x" * (i * 997 % 70000)) for i in range(60)]
    data = b"".join(lines) + b'{"torn'
    stream = _line_stream(data)
    blocks = [(b"".join(pieces), n) for pieces, n in iter_line_blocks(stream)]
    assert all(block.endswith(b"\n") and block.count(b"\n") == n for block, n in blocks)
    assert b"".join(b for b, _ in blocks) == b"".join(lines)
    assert sum(n for _, n in blocks) == 60 and stream.partial == b'{"torn' and stream.finished
    stream = _line_stream(data)
    blocks = [(b"".join(pieces), n) for pieces, n in iter_line_blocks(stream, max_lines=37)]
    assert b"".join(b for b, _ in blocks) == b"".join(lines[:37])
    assert sum(n for _, n in blocks) == 37 == stream.lines_read


class _RecordingStore:
    """A StateStore that checks, at every save, that the counts it is given are on disk."""

    def __init__(self, path: Path, fail_after: int | None = None) -> None:
        self.path = path
        self.saved: list[tuple[int, int]] = []
        self.fail_after = fail_after

    def load(self) -> dict:
        return {}

    def save(self, state: dict) -> None:
        if self.fail_after is not None and len(self.saved) >= self.fail_after:
            raise OSError("disk full while saving the job file")
        lines, nbytes = state["output_lines"], state["output_bytes"]
        on_disk = self.path.read_bytes()
        assert len(on_disk) >= nbytes and on_disk[:nbytes].count(b"\n") == lines
        self.saved.append((lines, nbytes))


def _many_lines(count: int) -> list[bytes]:
    return [b'{"custom_id": "r-%d", "pad": "%s"}\n' % (i, b"y" * (i * 31 % 900))
            for i in range(count)]


def test_long_download_stores_counts_as_it_goes_never_ahead_of_the_disk(tmp_path, monkeypatch):
    from dwbatch import download
    monkeypatch.setattr(download, "CHECKPOINT_LINES", 500)
    lines = _many_lines(6000)
    path = tmp_path / "out.jsonl"
    store = _RecordingStore(path)
    counts = download._Counts({}, "output", store)
    got, nbytes, interrupted = download._append(_line_stream(b"".join(lines) + b'{"to'),
                                                str(path), 0, 0, 6000, counts)
    assert (got, nbytes, interrupted) == (6000, len(b"".join(lines)), False)
    assert path.read_bytes() == b"".join(lines)
    assert store.saved[-1] == (6000, nbytes)
    assert len(store.saved) >= 2  # at least one checkpoint before the end
    assert store.saved == sorted(store.saved)


def test_a_checkpoint_that_cannot_be_saved_stops_the_download_with_its_error(
        tmp_path, monkeypatch):
    from dwbatch import download
    monkeypatch.setattr(download, "CHECKPOINT_LINES", 500)
    lines = _many_lines(6000)
    path = tmp_path / "out.jsonl"
    store = _RecordingStore(path, fail_after=0)
    counts = download._Counts({}, "output", store)
    with pytest.raises(OSError, match="disk full"):
        download._append(_line_stream(b"".join(lines)), str(path), 0, 0, 6000, counts)
    assert store.saved == []


def test_one_download_at_a_time_per_raw_folder(tmp_path):
    raw = str(tmp_path / "p.raw")
    with raw_dir_lock(raw):
        with pytest.raises(errors.DWError) as exc, raw_dir_lock(raw, wait=0.2):
            pass
        assert exc.value.code == "download_busy" and exc.value.exit_code == 7
        assert raw in exc.value.message and "re-run" in exc.value.hint
    with raw_dir_lock(raw, wait=0.2):  # free again once the holder let go
        pass


# --- what it cost, and what the whole input will cost ----------------------------------------

def _analytics_cost(sb, batch_id: str) -> float:
    return float(sb.get(f"/batches/{batch_id}/analytics").json()["total_cost"])


def test_the_actual_cost_is_the_sum_of_the_batches_analytics(sb, tmp_path):
    src = write_lines(tmp_path / "p.jsonl", [chat_line(f"r{i}", f"tell me about {i} things")
                                              for i in range(7)])
    code, out = run_json("submit.py", src.name, "--max-requests", "4",
                         env=script_env(sb.base_url), cwd=tmp_path)
    assert code == 0 and len(out["batch_ids"]) == 2, out
    sb.advance()
    code, res = fetch(sb, tmp_path, out["job"])
    assert code == 0, res
    expected = sum(_analytics_cost(sb, b) for b in out["batch_ids"])
    assert expected > 0 and res["cost_usd"] == round(expected, 6)
    assert [c for c in sb.calls() if c["path"].endswith("/analytics")]
    human = run_script("fetch_results.py", out["job"], env=script_env(sb.base_url),
                       cwd=tmp_path)
    assert "(the server's analytics)" in human.stdout
    code, offline = fetch(sb, tmp_path, out["job"], "--offline")
    assert offline["cost_usd"] == res["cost_usd"], "offline: what the job file recorded"
    job = json.loads((tmp_path / out["job"]).read_text())
    assert sum(float(s["total_cost"]) for s in job["shards"]) == pytest.approx(expected)
    assert "projection" not in res, "only a pilot job has a projection"


def test_no_cost_where_the_server_reports_none(sandbox_factory, tmp_path):
    box = sandbox_factory("--openai-compat", "--rate", "0")
    src = write_lines(tmp_path / "p.jsonl", [chat_line("a", "hello")])
    job, batch_id = submit(box, src)
    code, res = 3, {}
    for _ in range(100):
        code, res = fetch(box, tmp_path, job.name)
        if code != 3:
            break
    assert code == 0 and res["cost_usd"] is None, res


def test_a_pilot_fetch_projects_the_whole_inputs_usage_and_cost(sb, tmp_path):
    rows = [chat_line(f"r{i}", f"question number {i} " + "word " * (i % 4)) for i in range(10)]
    rows[1] = chat_line("r1", "this one is refused [[fail:400]]")
    src = write_lines(tmp_path / "prompts.jsonl", rows)
    code, sub = run_json("submit.py", src.name, "--pilot", "4", env=script_env(sb.base_url),
                         cwd=tmp_path)
    assert code == 0 and sub["completion_window"] == "1h", sub
    sb.advance()
    code, res = fetch(sb, tmp_path, sub["job"])
    assert code == 4, res  # the refused row
    oks = [r for r in records(tmp_path / "prompts.pilot.results.jsonl") if r["status"] == "ok"]
    assert len(oks) == 3
    prompt = sum(r["usage"]["prompt_tokens"] for r in oks)
    completion = sum(r["usage"]["completion_tokens"] for r in oks)
    cost = _analytics_cost(sb, sub["batch_ids"][0])
    assert res["projection"] == {
        "pilot_requests": 3, "full_requests": 10, "prompt_tokens": round(prompt * 10 / 3),
        "completion_tokens": round(completion * 10 / 3),
        "total_tokens": round((prompt + completion) * 10 / 3),
        "cost_usd": round(cost * 10 / 3, 6), "completion_window": "1h"}
    assert res["cost_usd"] == round(cost, 6)


def test_a_good_pilot_points_to_the_full_submit(sb, tmp_path):
    src = write_lines(tmp_path / "prompts.jsonl", [chat_line(f"r{i}", f"row {i}")
                                                    for i in range(6)])
    code, sub = run_json("submit.py", src.name, "--pilot", "2", env=script_env(sb.base_url),
                         cwd=tmp_path)
    assert code == 0, sub
    sb.advance()
    proc = run_script("fetch_results.py", sub["job"], env=script_env(sb.base_url),
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert "projection for all 6 requests, from 2 ok pilot answers" in proc.stdout
    code, res = fetch(sb, tmp_path, sub["job"])
    assert code == 0 and res["next"].split()[-2:] == ["prompts.jsonl", "--json"], res["next"]
    assert "--pilot" not in res["next"] and "submit.py" in res["next"]
    code, full = run_json("submit.py", "prompts.jsonl", env=script_env(sb.base_url),
                          cwd=tmp_path)
    assert code == 0 and full["requests"] == 6 and full["job"].endswith("prompts.job.json")
