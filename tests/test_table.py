"""The user's own table back, as an agent gets it: create_batch_file.py -> submit.py ->
fetch_results.py over real HTTP against the sandbox, the table checked cell by cell against
the input file and the results file."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from conftest import run_json, sandbox_per_file, script_env
from dwbatch import csv_safe, results_io

shared_sandbox, sb = sandbox_per_file("--enable-faults", "--manual", "--seed", "11")

SCHEMA = {"type": "object", "additionalProperties": False,
          "properties": {"category": {"type": "string", "enum": ["=HYPERLINK(\"x\")", "b"]},
                         "urgency": {"type": "integer"}, "summary": {"type": "string"},
                         "tags": {"type": "array", "items": {"type": "string"}},
                         "flag": {"type": "boolean"}, "note": {"type": "null"}},
          "required": ["category", "urgency", "summary", "tags", "flag", "note"]}

TICKETS = [
    {"ticket_id": "T-1", "subject": "printer on fire", "body": "it smokes"},
    {"ticket_id": "T-2", "subject": 'quotes "inside", commas', "body": "line one\nline two"},
    {"ticket_id": "T-3", "subject": "ünïcödé ✓ 日本", "body": "=SUM(A1:A9)"},
    {"ticket_id": "T-4", "subject": "rejected", "body": "[[fail:400]]"},
    {"ticket_id": "T-5", "subject": "down for a while", "body": "[[outage:503]]"},
]


def write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return path


def read_csv(path: Path, delimiter: str = ",") -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter=delimiter))


def run(sb, cwd: Path, script: str, *args: str) -> tuple[int, dict]:
    return run_json(script, *args, env=script_env(sb.base_url), cwd=cwd)


def build_submit(sb, cwd: Path, inp: str, out: str, *args: str) -> Path:
    code, env = run(sb, cwd, "create_batch_file.py", inp, "-o", out, *args)
    assert code == 0, env
    code, env = run(sb, cwd, "submit.py", out)
    assert code == 0, env
    return cwd / env["job"]


def advance(sb, job: Path, n: int | None = None) -> None:
    for shard in json.loads(job.read_text())["shards"]:
        sb.advance(shard["batch_id"], n)


def results(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def expected_cell(value) -> str:
    """A structured answer's value as a CSV cell, spreadsheet-safe."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return csv_safe.cell(text)


def test_csv_table_structured_cell_by_cell_while_running_and_through_a_retry(sb, tmp_path):
    write_csv(tmp_path / "tickets.csv", TICKETS)
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    job = build_submit(sb, tmp_path, "tickets.csv", "classify.jsonl", "--model", "sandbox-chat",
                       "--template", "Classify: {subject} / {body}", "--id-column", "ticket_id",
                       "--response-format", "schema.json")
    assert json.loads(job.read_text())["source"]["input"] == "tickets.csv"

    # while running: every row, pending rows with empty answers
    advance(sb, job, 2)
    code, out = run(sb, tmp_path, "fetch_results.py", job.name)
    assert code == 3 and out["table_file"] == "classify.table.csv" and out["table_rows"] == 5
    rows = read_csv(tmp_path / "classify.table.csv")
    assert [r["ticket_id"] for r in rows] == [t["ticket_id"] for t in TICKETS]
    assert [r["status"] for r in rows].count("pending") == 3
    assert all(r["summary"] == "" for r in rows if r["status"] == "pending")

    advance(sb, job)
    code, out = run(sb, tmp_path, "fetch_results.py", job.name)
    assert code == 4 and out["retry_file"] == "classify.retry.jsonl", out
    code, env = run(sb, tmp_path, "submit.py", "classify.retry.jsonl")
    assert code == 0
    retry_job = tmp_path / env["job"]
    advance(sb, retry_job)
    code, out = run(sb, tmp_path, "fetch_results.py", job.name, retry_job.name)
    assert code == 4 and out["next"] is None, out  # T-4 (400) given up; T-5 fixed by the retry
    assert out["table_file"] == "classify.table.csv"

    rows = read_csv(tmp_path / "classify.table.csv")
    recs = results(tmp_path / "classify.results.jsonl")
    header = list(rows[0])
    assert header == ["ticket_id", "subject", "body", "status", "category", "urgency",
                      "summary", "tags", "flag", "note", "error"]
    for row, ticket, rec in zip(rows, TICKETS, recs, strict=True):
        assert {k: row[k] for k in ticket} == ticket, "input cells as they were read"
        assert rec["custom_id"] == ticket["ticket_id"] and row["status"] == rec["status"]
        for prop in SCHEMA["properties"]:
            want = expected_cell(rec["json"][prop]) if rec["status"] == "ok" else ""
            assert row[prop] == want, (ticket["ticket_id"], prop)
        assert row["error"] == ("" if rec["status"] == "ok" else rec["error"]["message"])
    by_id = {r["ticket_id"]: r for r in rows}
    assert by_id["T-5"]["status"] == "ok", "the family's latest answer"
    assert by_id["T-4"]["status"] == "error" and "HTTP 400" in by_id["T-4"]["error"]
    assert by_id["T-1"]["category"] == "'=HYPERLINK(\"x\")", "a model's formula is defused"
    assert by_id["T-3"]["body"] == "=SUM(A1:A9)", "the user's own cell is kept as it was"
    assert by_id["T-1"]["urgency"].isdigit() and by_id["T-1"]["flag"] == "true"
    assert json.loads(by_id["T-1"]["tags"]) == recs[0]["json"]["tags"]
    assert by_id["T-1"]["note"] == ""


@pytest.mark.parametrize("kind", ["tsv", "jsonl", "json", "txt"])
def test_every_input_kind_gets_its_table_in_its_own_format(sb, tmp_path, kind):
    rows = [{"id": f"x{i}", "text": t} for i, t in enumerate(
        ["plain", "tab\tinside", "new\nline", "ünï ✓", "-minus start"])]
    args = ["--model", "sandbox-chat", "--prompt-column", "text"]
    if kind == "tsv":
        write_csv(tmp_path / "in.tsv", rows, delimiter="\t")
        args += ["--id-column", "id"]
    elif kind == "jsonl":
        (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        args += ["--id-column", "id"]
    elif kind == "json":
        (tmp_path / "in.json").write_text(json.dumps(rows))
        args += ["--id-column", "id"]
    else:
        (tmp_path / "in.txt").write_text("".join(r["text"].replace("\n", " ") + "\n"
                                                 for r in rows))
        args = ["--model", "sandbox-chat"]
    job = build_submit(sb, tmp_path, f"in.{kind}", "b.jsonl", *args)
    advance(sb, job)
    code, out = run(sb, tmp_path, "fetch_results.py", job.name)
    assert code == 0, out
    recs = results(tmp_path / "b.results.jsonl")
    ext = {"tsv": "tsv", "jsonl": "jsonl", "json": "jsonl", "txt": "csv"}[kind]
    table = tmp_path / f"b.table.{ext}"
    assert out["table_file"] == table.name
    if ext == "jsonl":
        got = [json.loads(x) for x in table.read_text().splitlines()]
        assert got == [{**r, "status": "ok", "answer": rec["content"], "error": ""}
                       for r, rec in zip(rows, recs, strict=True)]
    elif ext == "tsv":
        got = read_csv(table, "\t")
        assert [{k: g[k] for k in ("id", "text")} for g in got] == rows
        assert [g["answer"] for g in got] == [csv_safe.cell(r["content"]) for r in recs]
    else:
        got = read_csv(table)
        assert [g["prompt"] for g in got] == [r["text"].replace("\n", " ") for r in rows]
        assert [g["answer"] for g in got] == [r["content"] for r in recs]
        assert [r["custom_id"] for r in recs] == [f"req-{i:06d}" for i in range(1, 6)]


def test_embeddings_table_and_an_input_changed_since_the_build(sb, tmp_path):
    rows = [{"id": f"e{i}", "text": f"text {i}"} for i in range(4)]
    write_csv(tmp_path / "docs.csv", rows)
    job = build_submit(sb, tmp_path, "docs.csv", "emb.jsonl", "--model", "sandbox-embed",
                       "--endpoint", "embeddings", "--prompt-column", "text", "--id-column", "id")
    advance(sb, job)
    code, out = run(sb, tmp_path, "fetch_results.py", job.name)
    assert code == 0
    got = read_csv(tmp_path / "emb.table.csv")
    recs = results(tmp_path / "emb.results.jsonl")
    assert list(got[0]) == ["id", "text", "status", "embedding", "error"]
    assert [json.loads(g["embedding"]) for g in got] == [r["embedding"] for r in recs]

    # the user reorders their file: the ids no longer match, the table is not written, the
    # results are (and the exit code is judged on them as always)
    write_csv(tmp_path / "docs.csv", rows[::-1])
    code, out = run(sb, tmp_path, "fetch_results.py", job.name, "--table", "again.csv")
    assert code == 0 and out["table_file"] is None and out["records"] == 4
    assert "line 2" in out["table_error"] and "'e3'" in out["table_error"]
    assert not (tmp_path / "again.csv").exists()
    assert any("the table was not written" in n for n in out["notes"])


def test_table_without_a_recorded_source_and_no_table(sb, tmp_path):
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "sandbox-chat", "messages": [{"role": "user",
                                                              "content": f"@q {i}"}]}}
             for i in range(3)]
    (tmp_path / "ready.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    code, env = run(sb, tmp_path, "submit.py", "ready.jsonl")
    job = tmp_path / env["job"]
    advance(sb, job)
    code, out = run(sb, tmp_path, "fetch_results.py", job.name)
    assert code == 0 and out["table_file"] is None  # nothing recorded: no table by default
    code, out = run(sb, tmp_path, "fetch_results.py", job.name, "--table", "mine.tsv")
    assert code == 0 and out["table_file"] == "mine.tsv"
    got = read_csv(tmp_path / "mine.tsv", "\t")
    assert [list(g.values()) for g in got] == [[f"c{i}", "ok", f"ECHO @q {i}", ""]
                                               for i in range(3)]
    code, out = run(sb, tmp_path, "fetch_results.py", job.name, "--no-table")
    assert code == 0 and out["table_file"] is None
    code, out = run(sb, tmp_path, "fetch_results.py", job.name, "--table", "ready.jsonl")
    assert code == 2 and "input file of a submitted job" in out["error"]["message"]
    code, out = run(sb, tmp_path, "fetch_results.py", job.name, "--table", "x.xlsx")
    assert code == 2 and ".csv, .tsv or .jsonl" in out["error"]["hint"]


def test_results_csv_cells_from_the_model_or_server_are_spreadsheet_safe():
    record = {"custom_id": "=id-from-input", "status": "error", "content": "=cmd|' /C calc'!A0",
              "finish_reason": "stop", "usage": None, "batch_id": "@b",
              "error": {"type": "+T", "status_code": 400, "message": "-danger"},
              "attempts": 1, "retriable": False}
    buf = io.StringIO()
    csv.writer(buf).writerow(results_io.csv_row(record))
    row = dict(zip(results_io.CSV_COLUMNS, next(csv.reader(io.StringIO(buf.getvalue()))),
                   strict=True))
    assert row["content"] == "'=cmd|' /C calc'!A0" and row["batch_id"] == "'@b"
    assert row["error_type"] == "'+T" and row["error_message"] == "'-danger"
    assert row["custom_id"] == "=id-from-input", "ids come from the user's input"
    assert (row["attempts"], row["retriable"]) == ("1", "false")


@pytest.mark.parametrize("text,safe", [
    ("=1+2", "'=1+2"), ("+x", "'+x"), ("-x", "'-x"), ("@x", "'@x"), ("\tx", "'\tx"),
    ("\rx", "'\rx"), ("-3.5", "-3.5"), ("+7", "+7"), ("-1e5", "-1e5"), ("plain", "plain"),
    ("", ""), ("a=b", "a=b"), ("-", "'-"),
])
def test_spreadsheet_safe_cell(text, safe):
    assert csv_safe.cell(text) == safe


def test_a_build_split_into_several_files_gives_one_table(sb, tmp_path):
    (tmp_path / "in.txt").write_text("".join(f"prompt {i}\n" for i in range(5)))
    code, env = run(sb, tmp_path, "create_batch_file.py", "in.txt", "-o", "b.jsonl",
                    "--model", "sandbox-chat", "--max-requests", "2")
    assert code == 0 and len(env["files"]) == 3
    code, env = run(sb, tmp_path, "submit.py", *(f["path"] for f in env["files"]))
    assert code == 0
    job = tmp_path / env["job"]
    assert json.loads(job.read_text())["source"]["input"] == "in.txt"
    advance(sb, job)
    code, out = run(sb, tmp_path, "fetch_results.py", job.name)
    assert code == 0 and out["table_file"] == "b-001.table.csv", out
    got = read_csv(tmp_path / "b-001.table.csv")
    assert [(g["prompt"], g["answer"]) for g in got] == [(f"prompt {i}", f"ECHO prompt {i}")
                                                         for i in range(5)]


def test_a_refetch_with_nothing_new_keeps_the_table_and_a_lost_table_is_written_again(
        sb, tmp_path):
    write_csv(tmp_path / "rows.csv", [{"id": f"k{i}", "text": f"t {i}"} for i in range(3)])
    job = build_submit(sb, tmp_path, "rows.csv", "b.jsonl", "--model", "sandbox-chat",
                       "--prompt-column", "text", "--id-column", "id")
    advance(sb, job)
    assert run(sb, tmp_path, "fetch_results.py", job.name)[0] == 0
    table = tmp_path / "b.table.csv"
    before = (table.stat().st_ino, table.read_bytes())
    code, out = run(sb, tmp_path, "fetch_results.py", job.name, "--offline")
    assert code == 0 and out["table_file"] == "b.table.csv" and out["table_rows"] == 3
    assert (table.stat().st_ino, table.read_bytes()) == before, "kept as it was"
    table.unlink()
    code, out = run(sb, tmp_path, "fetch_results.py", job.name, "--offline")
    assert code == 0 and table.read_bytes() == before[1], "written again, the same"


def test_a_job_records_a_source_only_when_every_input_comes_from_the_same_build(tmp_path):
    from dwbatch import provenance

    def build(name: str, rows: str) -> tuple[str, str]:
        (tmp_path / f"{name}.txt").write_text(rows)
        batch = tmp_path / f"{name}.jsonl"
        batch.write_text(rows)  # any bytes: the record vouches for them by sha256
        sha = provenance.sha256_of(str(batch))
        provenance.write(str(batch), "build", [(str(batch), sha)], table=provenance.table_source(
            str(tmp_path / f"{name}.txt"), "txt", str(batch), id_column=None, id_prefix="req",
            id_width=6, answer={"answer": "text"}))
        return str(batch), sha

    a, b = build("a", "x\n"), build("b", "y\n")
    job = str(tmp_path / "sub" / "a.job.json")
    assert provenance.for_job([a], job)["source"]["input"] == "../a.txt"
    assert provenance.for_job([a, b], job) == {}, "two builds: no one table"
    (tmp_path / "a.jsonl").write_text("changed\n")
    changed = (a[0], provenance.sha256_of(a[0]))
    assert provenance.for_job([changed], job) == {}, "a record never vouches for other bytes"


def test_a_pilot_gets_the_table_of_its_first_rows_cell_by_cell(sb, tmp_path):
    write_csv(tmp_path / "tickets.csv", TICKETS)
    code, out = run(sb, tmp_path, "create_batch_file.py", "tickets.csv", "-o", "triage.jsonl",
                    "--model", "sandbox-chat", "--template", "Triage: {subject} / {body}")
    assert code == 0, out
    code, out = run(sb, tmp_path, "submit.py", "triage.jsonl", "--pilot", "3")
    assert code == 0 and out["job"].endswith("triage.pilot.job.json"), out
    pilot_job = tmp_path / "triage.pilot.job.json"
    assert json.loads(pilot_job.read_text())["source"]["input"] == "tickets.csv"
    advance(sb, pilot_job)
    code, out = run(sb, tmp_path, "fetch_results.py", pilot_job.name)
    assert code == 0 and out["table_file"] == "triage.pilot.table.csv", out
    assert out["table_rows"] == 3 and out["table_error"] is None

    rows = read_csv(tmp_path / "triage.pilot.table.csv")
    recs = results(tmp_path / "triage.pilot.results.jsonl")
    assert list(rows[0]) == ["ticket_id", "subject", "body", "status", "answer", "error"]
    assert len(rows) == len(recs) == 3
    for row, ticket, rec in zip(rows, TICKETS[:3], recs, strict=True):
        assert {k: row[k] for k in ticket} == ticket, "input cells as they were read"
        assert row["status"] == rec["status"] == "ok"
        assert row["answer"] == csv_safe.cell(rec["content"])
        prompt = f"Triage: {ticket['subject']} / {ticket['body']}"
        assert row["answer"] == "ECHO " + " ".join(prompt.split()), "this row's own answer"
        assert row["error"] == ""

    # the whole input afterwards: its own table, every row
    code, out = run(sb, tmp_path, "submit.py", "triage.jsonl")
    advance(sb, tmp_path / out["job"])
    code, out = run(sb, tmp_path, "fetch_results.py", "triage.job.json")
    assert out["table_file"] == "triage.table.csv" and out["table_rows"] == 5, out
