"""create_batch_file.py through its real command line (subprocesses, no network involved).

Every input format, every endpoint's body shape, splitting, --check, stdin, the --json
envelope, and every bad input of the issue: exit 2, a message naming file/line/id/column and
what was expected, and no output file left behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import PYTHON, run_json, run_script

SCRIPT = "create_batch_file.py"
CHAT = "/v1/chat/completions"


def lines_of(path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines()]


def batch_line(cid="a", url=CHAT, **body) -> dict:
    b = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    b.update(body)
    return {"custom_id": cid, "method": "POST", "url": url, "body": b}


def jsonl(*objs) -> str:
    return "".join((o if isinstance(o, str) else json.dumps(o, ensure_ascii=False)) + "\n"
                   for o in objs)


def build(tmp_path, *args, **kw):
    return run_json(SCRIPT, *args, cwd=tmp_path, **kw)


def check_submit_next(env: dict, *paths) -> None:
    assert env["next"].split()[0] in ("python3", PYTHON) and "submit.py" in env["next"]
    assert env["next"].split()[2:] == [*paths, "--json"], "next keeps the caller's --json"


# --- building from each input format -----------------------------------------------------------
def test_txt_prompts_to_chat_requests_with_envelope_and_next(tmp_path):
    (tmp_path / "p.txt").write_text("What is 2+2?\n\n   \nName a colour.\r\n", encoding="utf-8")
    code, env = build(tmp_path, "p.txt", "-o", "out.jsonl", "--model", "m",
                      "--system", "Be brief.", "--max-tokens", "20", "--temperature", "0.5")
    assert code == 0 and env["ok"]
    out = lines_of(tmp_path / "out.jsonl")
    assert [x["custom_id"] for x in out] == ["req-000001", "req-000002"]
    assert out[1]["body"] == {"model": "m", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
        "max_tokens": 20, "temperature": 0.5}
    assert out[0]["method"] == "POST" and out[0]["url"] == CHAT
    (f,) = env["files"]
    assert f["path"] == "out.jsonl" and f["requests"] == 2
    assert f["bytes"] == os.path.getsize(tmp_path / "out.jsonl") and len(f["sha256"]) == 64
    assert env["endpoint"] == CHAT and env["models"] == {"m": 2}
    assert env["input_tokens_estimate"] > 10 and env["requests"] == 2
    check_submit_next(env, "out.jsonl")
    # the human summary says the same and the file passes --check
    proc = run_script(SCRIPT, "--check", "out.jsonl", cwd=tmp_path)
    assert proc.returncode == 0 and "ok: out.jsonl: 2 requests" in proc.stdout
    assert "next: python3" in proc.stdout


def test_ids_are_stable_across_runs_and_output_is_deterministic(tmp_path):
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}\n" for i in range(30)))
    build(tmp_path, "p.txt", "-o", "a.jsonl", "--model", "m", "--id-prefix", "job7")
    build(tmp_path, "p.txt", "-o", "b.jsonl", "--model", "m", "--id-prefix", "job7")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert lines_of(tmp_path / "a.jsonl")[29]["custom_id"] == "job7-000030"


def test_csv_with_bom_quotes_embedded_newlines_template_and_id_column(tmp_path):
    data = ('\ufeffid,text,lang\r\n'
            'a1,"Hello, ""world""\nsecond line",fr\r\n'
            ',,\r\n'
            'a2,plain,de\r\n')
    (tmp_path / "d.csv").write_bytes(data.encode("utf-8"))
    code, env = build(tmp_path, "d.csv", "-o", "o.jsonl", "--model", "m", "--id-column", "id",
                      "--template", "Translate to {lang} {{as JSON}}: {text}")
    assert code == 0, env
    out = lines_of(tmp_path / "o.jsonl")
    assert [x["custom_id"] for x in out] == ["a1", "a2"]
    assert out[0]["body"]["messages"][0]["content"] == \
        'Translate to fr {as JSON}: Hello, "world"\nsecond line'
    assert env["input_format"] == "csv"


def test_tsv_with_prompt_column(tmp_path):
    (tmp_path / "d.tsv").write_text("n\tquestion\n1\tWhy, though?\n2\t\"quoted\ttab\"\n")
    code, env = build(tmp_path, "d.tsv", "-o", "o.jsonl", "--model", "m",
                      "--prompt-column", "question")
    assert code == 0, env
    assert [x["body"]["messages"][0]["content"] for x in lines_of(tmp_path / "o.jsonl")] == \
        ["Why, though?", "quoted\ttab"]


def test_jsonl_records_and_strings(tmp_path):
    (tmp_path / "r.jsonl").write_text(jsonl({"id": 7, "q": "Why?", "meta": {"k": 1}},
                                            {"id": 8, "q": "How?", "meta": None}))
    code, env = build(tmp_path, "r.jsonl", "-o", "o.jsonl", "--model", "m",
                      "--template", "{q} {meta}", "--id-column", "id")
    assert code == 0 and env["mode"] == "records"
    out = lines_of(tmp_path / "o.jsonl")
    assert [x["custom_id"] for x in out] == ["7", "8"]
    assert out[0]["body"]["messages"][0]["content"] == 'Why? {"k": 1}'
    assert out[1]["body"]["messages"][0]["content"] == "How? "
    (tmp_path / "s.jsonl").write_text(jsonl('"first prompt"', '"second"'))
    code, env = build(tmp_path, "s.jsonl", "-o", "s-out.jsonl", "--model", "m")
    assert code == 0 and [x["body"]["messages"][0]["content"]
                          for x in lines_of(tmp_path / "s-out.jsonl")] == ["first prompt", "second"]


def test_jsonl_ready_batch_lines_pass_through_byte_for_byte(tmp_path):
    text = jsonl(batch_line("x1"), "", batch_line("x2", max_tokens=5))
    (tmp_path / "ready.jsonl").write_text(text)
    proc = run_script(SCRIPT, "ready.jsonl", "-o", "o.jsonl", "--model", "other", "--json",
                      cwd=tmp_path)
    env = json.loads(proc.stdout)
    assert proc.returncode == 0 and env["mode"] == "batch"
    assert (tmp_path / "o.jsonl").read_text() == text.replace("\n\n", "\n")
    assert "--model did not apply" in proc.stderr and env["models"] == {"m": 2}


def test_json_array_of_records_strings_and_batch_lines(tmp_path):
    records = [{"text": f"item {i}", "id": f"r{i}"} for i in range(3)]
    (tmp_path / "a.json").write_text(json.dumps(records, indent=2))
    code, env = build(tmp_path, "a.json", "-o", "o.jsonl", "--model", "m", "--id-column", "id",
                      "--prompt-column", "text")
    assert code == 0 and [x["custom_id"] for x in lines_of(tmp_path / "o.jsonl")] == \
        ["r0", "r1", "r2"]
    (tmp_path / "s.json").write_text('["a", "b"]')
    code, _ = build(tmp_path, "s.json", "-o", "s.jsonl", "--model", "m")
    assert code == 0 and len(lines_of(tmp_path / "s.jsonl")) == 2
    (tmp_path / "b.json").write_text(json.dumps([batch_line("b1"), batch_line("b2")]))
    code, env = build(tmp_path, "b.json", "-o", "b.jsonl")
    assert code == 0 and env["mode"] == "batch"
    assert lines_of(tmp_path / "b.jsonl") == [batch_line("b1"), batch_line("b2")]


def test_big_json_array_streams_across_chunks(tmp_path):
    records = [{"text": "x" * 500 + str(i), "n": 1.5e300, "i": 12345678901234567890}
               for i in range(400)]  # ~200 KB: several 64 KiB chunks, numbers at boundaries
    (tmp_path / "a.json").write_text(json.dumps(records))
    code, env = build(tmp_path, "a.json", "-o", "o.jsonl", "--model", "m",
                      "--template", "{text} {i}")
    assert code == 0 and env["requests"] == 400
    last = lines_of(tmp_path / "o.jsonl")[-1]["body"]["messages"][0]["content"]
    assert last == "x" * 500 + "399 12345678901234567890"


def test_stdin_guessed_and_explicit(tmp_path):
    code, env = build(tmp_path, "-", "-o", "o.jsonl", "--model", "m", input="one\ntwo\n")
    assert code == 0 and env["input"] == "<stdin>" and env["input_format"] == "txt"
    assert len(lines_of(tmp_path / "o.jsonl")) == 2
    code, env = build(tmp_path, "-", "-o", "j.jsonl", "--model", "m",
                      input=jsonl({"prompt": "p1"}, {"prompt": "p2"}))
    assert code == 0 and env["input_format"] == "jsonl"
    assert lines_of(tmp_path / "j.jsonl")[1]["body"]["messages"][0]["content"] == "p2"
    code, env = build(tmp_path, "-", "-o", "c.jsonl", "--model", "m", "--input-format", "csv",
                      "--prompt-column", "q", input="q\nfrom csv\n")
    assert code == 0 and env["input_format"] == "csv"
    assert lines_of(tmp_path / "c.jsonl")[0]["body"]["messages"][0]["content"] == "from csv"
    code, env = build(tmp_path, "-", "-o", "b.jsonl", input=jsonl(batch_line("s1")))
    assert code == 0 and env["mode"] == "batch"


def test_system_and_template_from_files(tmp_path):
    (tmp_path / "p.txt").write_text("Paris\n")
    (tmp_path / "sys.txt").write_text("You are a geographer.\nAnswer in one word.\n")
    (tmp_path / "tpl.txt").write_text("Which country has {prompt} as its capital?\n")
    code, env = build(tmp_path, "p.txt", "-o", "o.jsonl", "--model", "m",
                      "--system", "@sys.txt", "--template", "@tpl.txt")
    assert code == 0
    (line,) = lines_of(tmp_path / "o.jsonl")
    assert line["body"]["messages"] == [
        {"role": "system", "content": "You are a geographer.\nAnswer in one word."},
        {"role": "user", "content": "Which country has Paris as its capital?"}]
    code, env = build(tmp_path, "p.txt", "-o", "o.jsonl", "--model", "m",
                      "--system", "@missing.txt")
    assert code == 2 and "--system @missing.txt: cannot read missing.txt" in \
        env["error"]["message"]


def test_python_interface_builds_and_writes(tmp_path):
    from dwbatch.build import BuildOptions, Template, build_request, write_requests
    from dwbatch.errors import InputError

    opts = BuildOptions(model="m", max_tokens=8)
    result = write_requests((build_request(f"d{i}", f"text {i}", opts) for i in range(5)),
                            str(tmp_path / "b.jsonl"), max_requests=2)
    assert [s.requests for s in result.shards] == [2, 2, 1]
    assert lines_of(tmp_path / "b-001.jsonl")[0]["body"]["max_tokens"] == 8
    bad = [build_request("x", "a", opts), build_request("x", "b", opts),
           build_request("y", "c", BuildOptions(model="m", temperature=float("nan")))]
    with pytest.raises(InputError) as exc:
        write_requests(bad, str(tmp_path / "c.jsonl"))
    assert "<requests> line 2 (custom_id 'x'): duplicate" in exc.value.message
    assert "<requests> line 3: cannot be written as JSON" in exc.value.message
    assert not (tmp_path / "c.jsonl").exists()
    t = Template("{{literal}} {a}-{b c}")
    assert t.fields == ["a", "b c"] and t.render({"a": 1, "b c": "x"}) == "{literal} 1-x"
    for broken in ("{", "{}", "a}", "{a{b}"):
        with pytest.raises(InputError):
            Template(broken)


# --- every endpoint's body shape ----------------------------------------------------------
SCHEMA = {"type": "object", "title": "Verdict", "properties": {"ok": {"type": "boolean"}},
          "required": ["ok"], "additionalProperties": False}


@pytest.mark.parametrize("endpoint,extra,expected", [
    ("chat", ["--system", "S", "--stop", "END", "--response-format", "v.json"],
     {"model": "m", "messages": [{"role": "system", "content": "S"},
                                 {"role": "user", "content": "Q"}],
      "max_tokens": 9, "stop": ["END"],
      "response_format": {"type": "json_schema", "json_schema": {
          "name": "Verdict", "schema": SCHEMA, "strict": True}}}),
    ("completions", ["--stop", "END", "--stop", "STOP"],
     {"model": "m", "prompt": "Q", "max_tokens": 9, "stop": ["END", "STOP"]}),
    ("embeddings", [], {"model": "m", "input": "Q"}),
    ("responses", ["--system", "S", "--response-format", "v.json"],
     {"model": "m", "input": "Q", "instructions": "S", "max_output_tokens": 9,
      "text": {"format": {"type": "json_schema", "name": "Verdict", "schema": SCHEMA,
                          "strict": True}}}),
    ("messages", ["--system", "S", "--stop", "END"],
     {"model": "m", "system": "S", "messages": [{"role": "user", "content": "Q"}],
      "max_tokens": 9, "stop_sequences": ["END"]}),
])
def test_endpoint_body_shapes(tmp_path, endpoint, extra, expected):
    (tmp_path / "p.txt").write_text("Q\n")
    (tmp_path / "v.json").write_text(json.dumps(SCHEMA))
    tokens = [] if endpoint == "embeddings" else ["--max-tokens", "9"]
    code, env = build(tmp_path, "p.txt", "-o", "o.jsonl", "--model", "m",
                      "--endpoint", endpoint, *tokens, *extra, "--param", "seed=42")
    assert code == 0, env
    (line,) = lines_of(tmp_path / "o.jsonl")
    url = "/v1/chat/completions" if endpoint == "chat" else f"/v1/{endpoint}"
    assert line["url"] == env["endpoint"] == url
    assert line["body"] == {**expected, "seed": 42}


@pytest.mark.parametrize("args,message", [
    (["--endpoint", "embeddings", "--max-tokens", "5"],
     "--max-tokens does not apply to --endpoint embeddings"),
    (["--endpoint", "completions", "--system", "S"], "--system does not apply"),
    (["--endpoint", "messages"], "--endpoint messages needs --max-tokens"),
    (["--endpoint", "responses", "--stop", "x"], "--stop does not apply"),
    (["--max-tokens", "5", "--param", "max_tokens=6"], "--param max_tokens=... conflicts"),
    (["--param", "messages=[]"], "conflicts with the input"),
    (["--param", "stream=true"], "cannot stream"),
])
def test_option_combinations_that_cannot_work(tmp_path, args, message):
    (tmp_path / "p.txt").write_text("Q\n")
    code, env = build(tmp_path, "p.txt", "-o", "o.jsonl", "--model", "m", *args)
    assert code == 2 and message in env["error"]["message"]
    assert sorted(os.listdir(tmp_path)) == ["p.txt"]


# --- splitting --------------------------------------------------------------------------------
def test_split_by_count_names_and_stale_removal(tmp_path):
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}\n" for i in range(7)))
    code, env = build(tmp_path, "p.txt", "-o", "out.jsonl", "--model", "m",
                      "--max-requests", "3")
    assert code == 0
    assert [f["path"] for f in env["files"]] == ["out-001.jsonl", "out-002.jsonl",
                                                 "out-003.jsonl"]
    assert [f["requests"] for f in env["files"]] == [3, 3, 1]
    ids = [x["custom_id"] for p in ("out-001", "out-002", "out-003")
           for x in lines_of(tmp_path / f"{p}.jsonl")]
    assert ids == [f"req-{i:06d}" for i in range(1, 8)]
    check_submit_next(env, "out-001.jsonl", "out-002.jsonl", "out-003.jsonl")
    # one record of where the requests came from, for all the pieces (the user's table)
    record = json.loads((tmp_path / "out.source.json").read_text())
    assert [f["path"] for f in record["files"]] == [f["path"] for f in env["files"]]
    assert [f["sha256"] for f in record["files"]] == [f["sha256"] for f in env["files"]]
    assert {k: record["table"][k] for k in ("input", "format", "id_column", "id_prefix",
                                            "answer")} == {
        "input": "p.txt", "format": "txt", "id_column": None, "id_prefix": "req",
        "answer": "text"}
    # a later run that fits one file replaces the shards instead of leaving them around
    code, env = build(tmp_path, "p.txt", "-o", "out.jsonl", "--model", "m")
    assert code == 0 and sorted(os.listdir(tmp_path)) == ["out.jsonl", "out.source.json",
                                                          "p.txt"]
    assert env["removed_stale"] == ["out-001.jsonl", "out-002.jsonl", "out-003.jsonl"]


def test_split_by_bytes_never_passes_the_limit(tmp_path):
    (tmp_path / "p.txt").write_text("".join(f"prompt number {i:03d}\n" for i in range(50)))
    code, env = build(tmp_path, "p.txt", "-o", "o.jsonl", "--model", "m",
                      "--max-file-bytes", "1000")
    assert code == 0 and len(env["files"]) > 5
    for f in env["files"]:
        assert f["bytes"] == os.path.getsize(tmp_path / f["path"]) <= 1000
    assert sum(f["requests"] for f in env["files"]) == 50


def test_error_after_several_shards_leaves_nothing(tmp_path):
    rows = [f"r{i},prompt {i}" for i in range(20)] + ["r3,duplicate id"]
    (tmp_path / "d.csv").write_text("id,q\n" + "\n".join(rows) + "\n")
    code, env = build(tmp_path, "d.csv", "-o", "o.jsonl", "--model", "m", "--id-column", "id",
                      "--prompt-column", "q", "--max-requests", "2")
    assert code == 2
    assert "d.csv line 22 (custom_id 'r3'): duplicate custom_id: also used on line 5" in \
        env["error"]["message"]
    assert env["problems"][0]["line"] == 22 and env["problem_count"] == 1
    assert sorted(os.listdir(tmp_path)) == ["d.csv"]


def test_a_full_disk_is_exit_2_with_what_to_do_and_leaves_nothing(tmp_path):
    """Writing the batch files fails half way (a file-size limit stands in for a full disk):
    not an internal error but exit 2 that says to free space; no partial file is left."""
    import resource
    import signal
    import subprocess

    from conftest import PYTHON, SCRIPTS, script_env

    (tmp_path / "p.txt").write_text("".join(f"prompt number {i}\n" for i in range(3000)))

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))

    proc = subprocess.run([PYTHON, str(SCRIPTS / SCRIPT), "p.txt", "-o", "o.jsonl", "--model",
                           "m", "--json"], cwd=tmp_path, env=script_env(), capture_output=True,
                          text=True, timeout=60, preexec_fn=small_disk)
    env = json.loads(proc.stdout)
    assert proc.returncode == 2 and env["exit_code"] == 2, env
    assert env["error"]["code"] == "local_file_error" and env["errno"] == "EFBIG"
    assert "free disk space" in env["error"]["hint"]
    assert sorted(os.listdir(tmp_path)) == ["p.txt"]


# --- --check ------------------------------------------------------------------------------
def test_check_reports_every_problem_and_caps_the_list(tmp_path):
    bad = [batch_line(f"id{i}", stream=True) for i in range(8)]
    (tmp_path / "a.jsonl").write_text(jsonl(batch_line("ok"), *bad, "{broken"))
    (tmp_path / "b.jsonl").write_text(jsonl(batch_line("x"), batch_line("ok")))
    code, env = run_json(SCRIPT, "--check", "a.jsonl", "b.jsonl", "--max-problems", "5",
                         cwd=tmp_path)
    assert code == 2 and not env["ok"] and env["error"]["code"] == "invalid_input"
    assert env["problem_count"] == 10 and len(env["problems"]) == 5
    msg = env["error"]["message"]
    assert "10 problems found in 1 file" in msg and "... and 5 more problems" in msg
    assert "a.jsonl line 2 (custom_id 'id0'): body.stream must not be true" in msg
    assert "--check a.jsonl b.jsonl" in env["error"]["hint"]
    proc = run_script(SCRIPT, "--check", "a.jsonl", "b.jsonl", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "a.jsonl line 10: not valid JSON" in proc.stderr
    assert "b.jsonl line 2 (custom_id 'ok'): duplicate custom_id: also used on line 1 of " \
           "a.jsonl" in proc.stderr


def test_check_oversize_file_is_left_to_submit_to_split(tmp_path):
    (tmp_path / "a.jsonl").write_text(jsonl(*[batch_line(f"i{i}") for i in range(4)]))
    code, env = run_json(SCRIPT, "--check", "a.jsonl", "--max-requests", "3", cwd=tmp_path)
    assert code == 0 and env["files"][0]["needs_split"] is True
    proc = run_script(SCRIPT, "--check", "a.jsonl", "--max-requests", "3", cwd=tmp_path)
    assert "submit.py splits it into shards" in proc.stdout


def test_check_usage_errors(tmp_path):
    code, env = run_json(SCRIPT, "--check", cwd=tmp_path)
    assert code == 2 and "at least one batch file" in env["error"]["message"]
    code, env = run_json(SCRIPT, "--check", "x.jsonl", "--model", "m", cwd=tmp_path)
    assert code == 2 and "--model" in env["error"]["message"]


def test_help_lists_examples_formats_and_exit_codes(tmp_path):
    proc = run_script(SCRIPT, "--help", cwd=tmp_path)
    assert proc.returncode == 0
    for text in ("--check", "--template", "--response-format", "examples:", "exit codes:",
                 "130", ".tsv", "stdin", "OUT-001.jsonl"):
        assert text in proc.stdout


def test_usage_errors_name_the_flag(tmp_path):
    (tmp_path / "p.txt").write_text("Q\n")
    code, env = build(tmp_path, "p.txt", "--model", "m")
    assert code == 2 and "-o OUT.jsonl is required" in env["error"]["message"]
    code, env = build(tmp_path, "p.txt", "-o", "o.jsonl")
    assert code == 2 and "--model is required" in env["error"]["message"]
    code, env = build(tmp_path, "p.dat", "-o", "o.jsonl", "--model", "m")
    assert code == 2 and "--input-format" in env["error"]["hint"]


# --- every bad input of the issue: exit 2, named, nothing written --------------------------
LONG_ID = "é" * 32 + "x"  # 33 characters, 65 bytes
BAD_INPUTS = {
    "malformed JSON line": (
        "in.jsonl", jsonl(batch_line("a"), '{"custom_id": "b", "method": "POST",'), [],
        ["in.jsonl line 2 (custom_id 'b'): not valid JSON", "column"]),
    "missing custom_id": (
        "in.jsonl", jsonl({k: v for k, v in batch_line().items() if k != "custom_id"}), [],
        ["in.jsonl line 1: missing custom_id (expected: a unique, non-empty string"]),
    "missing method": (
        "in.jsonl", jsonl({k: v for k, v in batch_line("m1").items() if k != "method"}), [],
        ["line 1 (custom_id 'm1'): missing method (expected: \"POST\")"]),
    "missing url": (
        "in.jsonl", jsonl({k: v for k, v in batch_line("u1").items() if k != "url"}), [],
        ["line 1 (custom_id 'u1'): missing url (expected: one of /v1/chat/completions"]),
    "missing body": (
        "in.jsonl", jsonl({k: v for k, v in batch_line("b1").items() if k != "body"}), [],
        ["line 1 (custom_id 'b1'): missing body (expected: a JSON object"]),
    "missing body.model": (
        "in.jsonl", jsonl({"custom_id": "bm", "method": "POST", "url": CHAT,
                           "body": {"messages": [{"role": "user", "content": "x"}]}}), [],
        ["line 1 (custom_id 'bm'): missing body.model (expected: the model name"]),
    "non-POST": (
        "in.jsonl", jsonl(batch_line("g"), {**batch_line("g2"), "method": "GET"}), [],
        ["line 2 (custom_id 'g2'): method must be POST", 'got "GET"']),
    "unknown url": (
        "in.jsonl", jsonl({**batch_line("u"), "url": "/v1/chat"}), [],
        ["line 1 (custom_id 'u'): url is not an endpoint", '"/v1/chat"',
         "/v1/embeddings"]),
    "mixed urls": (
        "in.jsonl", jsonl(batch_line("c"), batch_line("e", url="/v1/embeddings", input="x")),
        [], ["line 2 (custom_id 'e'): url /v1/embeddings differs from /v1/chat/completions "
             "used first on line 1", "one url"]),
    "duplicate ids": (
        "in.jsonl", jsonl(batch_line("same"), batch_line("other"), batch_line("same")), [],
        ["line 3 (custom_id 'same'): duplicate custom_id: also used on line 1"]),
    "65-byte multi-byte id": (
        "in.jsonl", jsonl(batch_line(LONG_ID)), [],
        [f"custom_id '{LONG_ID}'", "65 UTF-8 bytes (33 characters)", "64 bytes"]),
    "65-byte id from --id-column": (
        "in.csv", f"id,q\n{LONG_ID},hello\n", ["--model", "m", "--id-column", "id",
                                               "--prompt-column", "q"],
        ["in.csv line 2", "65 UTF-8 bytes"]),
    "control character in id": (
        "in.jsonl", jsonl(batch_line("bad\u0007id")), [],
        ["custom_id contains a control character", "U+0007 at character 4"]),
    "stream true": (
        "in.jsonl", jsonl(batch_line("s", stream=True)), [],
        ["line 1 (custom_id 's'): body.stream must not be true"]),
    "empty input": (
        "in.txt", "", ["--model", "m"], ["in.txt contains no requests"]),
    "blank lines only": (
        "in.jsonl", "\n   \n\r\n", ["--model", "m"], ["in.jsonl contains no requests",
                                                      "only blank lines"]),
    "invalid UTF-8 in txt": (
        "in.txt", b"fine\ncaf\xe9 au lait\n", ["--model", "m"],
        ["in.txt line 2: invalid UTF-8 at byte offset 8", "0xe9"]),
    "invalid UTF-8 in a batch line": (
        "in.jsonl", jsonl(batch_line("a")).encode() + b'{"custom_id": "\xff"}\n', [],
        ["line 2: invalid UTF-8 at byte offset", "0xff"]),
    "placeholder with no such column": (
        "in.csv", "id,text\n1,hi\n", ["--model", "m", "--template", "Say {txet}"],
        ["--template placeholder {txet} names no column of in.csv",
         "the columns are: 'id', 'text'"]),
    "placeholder missing in a jsonl record": (
        "in.jsonl", jsonl({"a": 1, "b": 2}, {"a": 3}), ["--model", "m", "--template", "{a}{b}"],
        ["in.jsonl line 2: --template placeholder {b} has no such field",
         "the fields there are: 'a'"]),
    "--prompt-column missing": (
        "in.csv", "id,text\n1,hi\n", ["--model", "m", "--prompt-column", "body"],
        ["--prompt-column 'body' is not a column of in.csv", "'id', 'text'"]),
    "no prompt column given": (
        "in.csv", "id,text\n1,hi\n", ["--model", "m"],
        ["in.csv line 2: which field is the prompt?", "--prompt-column"]),
    "request larger than --max-file-bytes": (
        "in.txt", "short\n" + "x" * 600 + "\n", ["--model", "m", "--max-file-bytes", "500"],
        ["in.txt line 2 (custom_id 'req-000002')", "larger than the per-file limit of 500"]),
    "messages not a list": (
        "in.jsonl", jsonl(batch_line("ml", messages="hello")), [],
        ["line 1 (custom_id 'ml'): body.messages must be a list (JSON array), got string"]),
    "--param not JSON": (
        "in.txt", "Q\n", ["--model", "m", "--param", "user=alice"],
        ["--param user: the value 'alice' is not JSON"]),
    "--param without =": (
        "in.txt", "Q\n", ["--model", "m", "--param", "seed"], ["--param 'seed' is not KEY=JSON"]),
    "--response-format not a JSON Schema": (
        "in.txt", "Q\n", ["--model", "m", "--response-format", "s.json"],
        ["--response-format s.json: not a valid JSON Schema", "'nonsense'"]),
    "--response-format not JSON": (
        "in.txt", "Q\n", ["--model", "m", "--response-format", "t.json"],
        ["--response-format t.json: not valid JSON", "line 1 column"]),
    "output path equal to input": (
        "in.txt", "Q\n", ["--model", "m", "-o", "in.txt"],
        ["-o in.txt is the input file itself"]),
    "output path would overwrite input via shard names": (
        "o-001.jsonl", jsonl(batch_line("a")), ["-o", "o.jsonl"],
        ["would overwrite the input"]),
    "csv row with too many fields": (
        "in.csv", "id,q\n1,a,b\n", ["--model", "m", "--prompt-column", "q"],
        ["in.csv line 2: row has 3 fields but the header has 2"]),
    "csv unclosed quote": (
        "in.csv", 'q\n"never closed\nmore\n', ["--model", "m", "--prompt-column", "q"],
        ["in.csv line 2: not valid CSV"]),
    "template with a lone brace": (
        "in.txt", "Q\n", ["--model", "m", "--template", "a } b"],
        ["--template: single '}' at character 3"]),
    "NaN in a batch line": (
        "in.jsonl", '{"custom_id": "n", "method": "POST", "url": "/v1/chat/completions", '
                    '"body": {"model": "m", "temperature": NaN, "messages": []}}\n', [],
        ["(custom_id 'n'): not valid JSON: NaN is not valid JSON"]),
    "unpaired surrogate in a record": (
        "in.jsonl", '{"prompt": "bad \\ud800 text"}\n', ["--model", "m"],
        ["in.jsonl line 1: contains an unpaired surrogate"]),
    "--id-column on txt input": (
        "in.txt", "Q\n", ["--model", "m", "--id-column", "id"],
        ["--id-column 'id': in.txt has no columns"]),
    "empty id in --id-column": (
        "in.csv", "id,q\n,hello\n", ["--model", "m", "--id-column", "id",
                                      "--prompt-column", "q"],
        ["in.csv line 2: --id-column 'id' is empty"]),
    "json array broken": (
        "in.json", '[{"prompt": "a"},\n {"prompt": "b"}\n {"prompt": "c"}]',
        ["--model", "m"], ["in.json line 3: expected ',' or ']'"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_names_the_place_and_writes_nothing(tmp_path, case):
    name, content, args, expected = BAD_INPUTS[case]
    data = content if isinstance(content, bytes) else content.encode("utf-8")
    (tmp_path / name).write_bytes(data)
    (tmp_path / "s.json").write_text('{"type": "nonsense"}')
    (tmp_path / "t.json").write_text("{'single': 'quotes'}")
    # an earlier good output must survive a failed run untouched
    (tmp_path / "o.jsonl").write_text("previous\n")
    before = sorted(os.listdir(tmp_path))
    out = [] if "-o" in args else ["-o", "o.jsonl"]
    code, env = build(tmp_path, name, *out, *args)
    assert code == 2 and env["ok"] is False and env["error"]["code"] == "invalid_input", env
    text = env["error"]["message"] + "\n" + (env["error"]["hint"] or "")
    for piece in expected:
        assert piece in text, f"{piece!r} not in {text!r}"
    assert sorted(os.listdir(tmp_path)) == before  # no output, not even a partial one
    assert (tmp_path / "o.jsonl").read_text() == "previous\n"
    assert env["next"] is None or "create_batch_file.py" in env["next"]


@pytest.mark.parametrize("case", [c for c in sorted(BAD_INPUTS)
                                  if BAD_INPUTS[c][0] == "in.jsonl" and not BAD_INPUTS[c][2]])
def test_check_finds_the_same_bad_batch_lines(tmp_path, case):
    name, content, _args, expected = BAD_INPUTS[case]
    data = content if isinstance(content, bytes) else content.encode("utf-8")
    (tmp_path / name).write_bytes(data)
    proc = run_script(SCRIPT, "--check", name, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    for piece in expected:
        assert piece in proc.stderr


def test_built_files_for_every_endpoint_are_accepted_by_the_server(tmp_path, sandbox_factory):
    """The sandbox applies the real server's upload rules: what we build, it must accept."""
    sb = sandbox_factory()
    (tmp_path / "q.txt").write_text("first question\nsecond question\n")
    (tmp_path / "v.json").write_text(json.dumps(SCHEMA))
    for endpoint in ("chat", "completions", "embeddings", "responses", "messages"):
        model = "sandbox-embed" if endpoint == "embeddings" else "sandbox-chat"
        extra = [] if endpoint == "embeddings" else ["--max-tokens", "5"]
        if endpoint in ("chat", "responses"):
            extra += ["--response-format", "v.json"]
        out = f"{endpoint}.jsonl"
        code, env = build(tmp_path, "q.txt", "-o", out, "--model", model,
                          "--endpoint", endpoint, *extra)
        assert code == 0, env
        with open(tmp_path / out, "rb") as f:
            r = sb.post("/files", files={"file": (out, f)}, data={"purpose": "batch"})
        assert r.status_code == 201, (endpoint, r.text)
        assert r.json()["bytes"] == env["bytes"]
