"""Re-fetches of a running job bring the results up to date with the new lines only (rejoin.py),
and what they write is exactly what a full join of the same files writes: the real scripts as
subprocesses, real HTTP against the sandbox (--manual: batches move only when a test advances
them), and raw lines appended by hand where the service cannot be made to write them (a
request answered twice, a result for an unknown custom_id, a torn last line)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from conftest import chat_line, run_json, run_script, sandbox_per_file, script_env, write_lines

shared_sandbox, sb = sandbox_per_file("--enable-faults", "--manual", "--seed", "11")

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}},
          "required": ["answer"], "additionalProperties": False}
FORMAT = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}


def mixed_requests(n: int) -> list[dict]:
    """ok, failing (400), truncated (tiny max_tokens), structured (valid, schema-invalid)."""
    out = []
    for i in range(n):
        kind = i % 6
        if kind == 1:
            out.append(chat_line(f"r{i}", f"fails {i} [[fail:400]]"))
        elif kind == 2:
            out.append(chat_line(f"r{i}", f"a long question {i} " + "word " * 30, max_tokens=3))
        elif kind == 3:
            out.append(chat_line(f"r{i}", f"structured {i}", response_format=FORMAT))
        elif kind == 4:
            out.append(chat_line(f"r{i}", f"[[schema_invalid]] s {i}", response_format=FORMAT))
        else:
            out.append(chat_line(f"r{i}", f"question {i}"))
    return out


def submit(sb, path: Path) -> tuple[Path, str]:
    code, out = run_json("submit.py", path.name, env=script_env(sb.base_url), cwd=path.parent)
    assert code == 0, out
    return path.parent / out["job"], out["batch_ids"][0]


def fetch(sb, cwd: Path, *args: str) -> tuple[int, dict]:
    """(exit code, envelope with "join": how the results were written, from the notes)."""
    proc = run_script("fetch_results.py", *args, "--json", env=script_env(sb.base_url),
                      cwd=cwd)
    out = json.loads(proc.stdout)
    assert out["exit_code"] == proc.returncode
    if "new result line(s) joined into" in proc.stderr:
        out["join"] = "updated"
    elif "nothing changed since" in proc.stderr:
        out["join"] = "kept"
    else:
        out["join"] = "full"
    return proc.returncode, out


def comparable(envelope: dict) -> dict:
    """What a join decides (records, counts, tokens, retry file, superseded, unmatched...)."""
    keys = ("records", "counts", "usage", "retry_requests", "retry_counts",
            "superseded_results", "unmatched_results", "unreadable_results", "gave_up",
            "gave_up_reasons", "exit_code")
    return {k: envelope.get(k) for k in keys}


def assert_same_as_full_join(sb, cwd: Path, envelope: dict, jobs: list[str], fmt: str,
                             stem: str = "p", extra: tuple[str, ...] = ()) -> None:
    """A full join of the same files (--offline --rebuild, other paths) writes the same bytes."""
    code, full = fetch(sb, cwd, *jobs, "--offline", "--rebuild", "--format", fmt,
                       "-o", f"full.results.{fmt}", "--retry-file", "full.retry.jsonl", *extra)
    assert full["join"] == "full"
    assert comparable(full) == comparable(envelope)
    ours = cwd / f"{stem}.results.{fmt}"
    assert ours.read_bytes() == (cwd / f"full.results.{fmt}").read_bytes()
    assert (envelope["retry_file"] is None) == (full["retry_file"] is None)
    if envelope["retry_file"]:
        assert (cwd / envelope["retry_file"]).read_bytes() == \
            (cwd / full["retry_file"]).read_bytes()


def records(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    return [json.loads(x) for x in path.read_text().splitlines()]


def cache_files(cwd: Path, fmt: str) -> list[str]:
    return sorted(p.name for p in cwd.glob(f".p.results.{fmt}.join.*"))


def raw_output(cwd: Path, batch_id: str, stem: str = "p") -> Path:
    return cwd / f"{stem}.raw" / f"{batch_id}.output.jsonl"


def answer_line(cid: str, content: str) -> str:
    body = {"object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": content},
         "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}}
    return json.dumps({"id": f"batch_req_x{cid}", "custom_id": cid, "error": None,
                       "response": {"status_code": 200, "request_id": None, "body": body}})


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_refetches_of_a_running_job_update_only_what_is_new(sb, tmp_path, fmt):
    requests_ = mixed_requests(36)
    job, batch_id = submit(sb, write_lines(tmp_path / "p.jsonl", requests_))
    args = (job.name, "--format", fmt)

    sb.advance(batch_id, 10)
    code, out = fetch(sb, tmp_path, *args)
    assert code == 3 and out["join"] == "full" and out["counts"]["pending"] == 26, out
    assert cache_files(tmp_path, fmt) == [f".p.results.{fmt}.join.sizes",
                                          f".p.results.{fmt}.join.sqlite",
                                          f".p.results.{fmt}.join.sqlite-results"]
    assert_same_as_full_join(sb, tmp_path, out, [job.name], fmt)

    for step in (9, 1):  # new lines arrive: only they are joined
        sb.advance(batch_id, step)
        code, out = fetch(sb, tmp_path, *args)
        assert code == 3 and out["join"] == "updated", out
        assert out["batches"][0]["output"]["new_lines"] + \
            out["batches"][0].get("error", {}).get("new_lines", 0) == step
        assert_same_as_full_join(sb, tmp_path, out, [job.name], fmt)

    # lines an earlier download saved (--offline joins what is on disk): a request answered
    # twice (the later ok supersedes its failure), an answer for an unknown custom_id, and a
    # torn last line, which waits until it is complete
    failed = next(r["custom_id"] for r in records(tmp_path / f"p.results.{fmt}")
                  if r["status"] == "error")
    pending = next(r["custom_id"] for r in records(tmp_path / f"p.results.{fmt}")
                   if r["status"] == "pending")
    raw = raw_output(tmp_path, batch_id)
    with open(raw, "a") as f:
        f.write(answer_line(failed, "a second answer") + "\n")
        f.write(answer_line("nobody", "no such request") + "\n")
        # malformed: a body that is a list (one bad record), a line naming no request
        f.write(answer_line(pending, "x").replace('"body": {', '"body": [{', 1)
                .replace('}}}', '}]}}', 1) + "\n")
        f.write('{"id": "batch_req_q", "response": {"status_code": 200}}\n')
        f.write(answer_line("r0", "torn")[:40])
    code, out = fetch(sb, tmp_path, *args, "--offline")
    assert code == 3 and out["join"] == "updated", out
    assert out["unmatched_results"] == 1 and out["superseded_results"] == 1
    assert out["unreadable_results"] == 1
    bad = next(r for r in records(tmp_path / f"p.results.{fmt}") if r["custom_id"] == pending)
    assert bad["status"] == "error", bad
    assert next(r for r in records(tmp_path / f"p.results.{fmt}")
                if r["custom_id"] == failed)["status"] == "ok"
    assert_same_as_full_join(sb, tmp_path, out, [job.name], fmt)

    # the batch ends: its statuses change, so the join is a full one, and no cache is left
    with open(raw, "rb+") as f:  # (drop the torn line, as the downloader would)
        f.truncate(len(raw.read_bytes().rsplit(b"\n", 1)[0]) + 1)
    sb.advance(batch_id)
    code, out = fetch(sb, tmp_path, *args)
    assert code == 4 and out["join"] == "full" and out["counts"]["pending"] == 0, out
    assert cache_files(tmp_path, fmt) == []
    assert_same_as_full_join(sb, tmp_path, out, [job.name], fmt)


def test_updates_with_a_retry_job_supersede_like_a_full_join(sb, tmp_path):
    job, batch_id = submit(sb, write_lines(tmp_path / "p.jsonl", mixed_requests(24)))
    sb.advance(batch_id)
    code, out = fetch(sb, tmp_path, job.name)
    assert code == 4 and out["retry_file"] == "p.retry.jsonl", out
    retry_job, retry_batch = submit(sb, tmp_path / "p.retry.jsonl")
    jobs = [job.name, retry_job.name]

    sb.advance(retry_batch, 3)
    code, out = fetch(sb, tmp_path, *jobs)
    assert code == 3 and out["join"] == "full", out
    assert_same_as_full_join(sb, tmp_path, out, jobs, "jsonl")
    sb.advance(retry_batch, 2)
    code, out = fetch(sb, tmp_path, *jobs)
    assert code == 3 and out["join"] == "updated", out
    assert out["superseded_results"] > 0
    assert_same_as_full_join(sb, tmp_path, out, jobs, "jsonl")


def test_a_raw_copy_rewritten_rather_than_grown_is_joined_in_full(sb, tmp_path):
    job, batch_id = submit(sb, write_lines(tmp_path / "p.jsonl", mixed_requests(12)))
    sb.advance(batch_id, 5)
    code, out = fetch(sb, tmp_path, job.name)
    assert code == 3 and out["join"] == "full"
    raw = raw_output(tmp_path, batch_id)
    lines = raw.read_bytes().splitlines(keepends=True)
    # the same lines in another order, plus one: every byte before the old end differs
    tmp = raw.with_suffix(".new")
    tmp.write_bytes(b"".join(reversed(lines)) + answer_line("r0", "late").encode() + b"\n")
    os.replace(tmp, raw)
    code, out = fetch(sb, tmp_path, job.name, "--offline")
    assert code == 3 and out["join"] == "full", out
    assert_same_as_full_join(sb, tmp_path, out, [job.name], "jsonl")
    # a kept cache file that is not what the stamp recorded: joined in full as well
    raw.write_bytes(raw.read_bytes() + answer_line("r1", "later").encode() + b"\n")
    for name in (".p.results.jsonl.join.sqlite", ".p.results.jsonl.join.sqlite-results"):
        raw.write_bytes(raw.read_bytes() + answer_line("r2", f"after {name}").encode() + b"\n")
        index = tmp_path / name
        index.write_bytes(index.read_bytes())
        code, out = fetch(sb, tmp_path, job.name, "--offline")
        assert code == 3 and out["join"] == "full", (name, out)
        assert_same_as_full_join(sb, tmp_path, out, [job.name], "jsonl")


def table_rows(n: int) -> list[dict]:
    """Rows of the user's own input: some fail, some are long enough to be cut off."""
    rows = []
    for i in range(n):
        question = f"question {i}"
        if i % 5 == 1:
            question += " [[fail:400]]"
        elif i % 5 == 2:
            question = f"tell me at length {i}, " + "with many words " * 8
        rows.append({"id": f"row{i}", "question": question, "note": f"=cell {i}, \"q\""})
    return rows


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_the_users_table_is_updated_like_a_full_join_writes_it(sb, tmp_path, fmt):
    rows = table_rows(20)
    source = tmp_path / f"rows.{fmt}"
    if fmt == "csv":
        with open(source, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["id", "question", "note"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        write_lines(source, rows)
    code, out = run_json("create_batch_file.py", source.name, "-o", "p.jsonl", "--model",
                         "sandbox-chat", "--template", "{question}", "--id-column", "id",
                         "--max-tokens", "8", cwd=tmp_path)
    assert code == 0, out
    job, batch_id = submit(sb, tmp_path / "p.jsonl")
    table = tmp_path / f"p.table.{fmt}"

    def same_table_as_full_join(out: dict) -> None:
        assert_same_as_full_join(sb, tmp_path, out, [job.name], "jsonl",
                                 extra=("--table", f"full.table.{fmt}"))
        assert table.read_bytes() == (tmp_path / f"full.table.{fmt}").read_bytes()

    sb.advance(batch_id, 6)
    code, out = fetch(sb, tmp_path, job.name)
    assert code == 3 and out["join"] == "full" and table.exists(), out
    same_table_as_full_join(out)
    for step in (5, 4):
        sb.advance(batch_id, step)
        code, out = fetch(sb, tmp_path, job.name)
        assert code == 3 and out["join"] == "updated", out
        same_table_as_full_join(out)
    rows_now = records(tmp_path / "p.results.jsonl")
    assert [r["status"] for r in rows_now].count("pending") == 5
