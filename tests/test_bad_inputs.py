"""Bad inputs: malformed batch lines and wrong command lines, each fed to submit.py against a
live sandbox. Every one must exit 2, name the place (file and line, custom_id when the line
has one, or the flag), send NOTHING (the sandbox's call log stays empty) and write nothing
(no job file, no shard). Batch-line cases also go through create_batch_file.py --check,
which must name the same place.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, SCRIPTS, TEST_KEY, sandbox_per_file, script_env

CHAT = "/v1/chat/completions"


def line(cid: object = "a", *, url: str = CHAT, drop: tuple = (), **body) -> str:
    """One batch line as text; body fields override a valid chat body."""
    obj = {"custom_id": cid, "method": "POST", "url": url,
           "body": {"model": "sandbox-chat", "messages": [{"role": "user", "content": "hi"}],
                    **body}}
    for key in drop:
        obj.pop(key)
    return json.dumps(obj)


def raw(**top) -> str:
    """A valid line with top-level fields replaced (None removes the field)."""
    obj = json.loads(line("x"))
    for key, value in top.items():
        if value is None:
            obj.pop(key)
        else:
            obj[key] = value
    return json.dumps(obj)


def jsonl(*lines: str) -> str:
    return "".join(x + "\n" for x in lines)


GOOD = jsonl(line("ok-1"), line("ok-2"))
LONG_ID = "é" * 32 + "x"  # 33 characters, 65 UTF-8 bytes

# name: (content of in.jsonl, extra submit args, pieces the error must contain)
# Every batch-line case names the file and line, and the custom_id when the line has one.
BAD_LINES = {
    "not JSON": (jsonl(line("ok"), "{not json"), [], ["in.jsonl line 2", "not valid JSON"]),
    "torn last line": (jsonl(line("ok")) + '{"custom_id": "t2", "method": "POST"', [],
                       ["in.jsonl line 2 (custom_id 't2')", "not valid JSON"]),
    "array, not object": (jsonl("[1, 2]"), [],
                          ["in.jsonl line 1", "must be a JSON object, got array"]),
    "missing custom_id": (jsonl(line(drop=("custom_id",))), [],
                          ["in.jsonl line 1", "missing custom_id"]),
    "empty custom_id": (jsonl(line("")), [], ["in.jsonl line 1", "custom_id is empty"]),
    "custom_id a number": (jsonl(line(42)), [],
                           ["in.jsonl line 1", "custom_id must be a string, got integer 42"]),
    "custom_id 65 bytes": (jsonl(line(LONG_ID)), [],
                           [f"in.jsonl line 1 (custom_id '{LONG_ID}')", "65 UTF-8 bytes"]),
    "control character in custom_id": (jsonl(line("bad\u0007id")), [],
                                       ["in.jsonl line 1", "control character", "U+0007"]),
    "duplicate custom_id": (jsonl(line("d"), line("e"), line("d")), [],
                            ["in.jsonl line 3 (custom_id 'd')",
                             "duplicate custom_id: also used on line 1"]),
    "missing method": (jsonl(line("m", drop=("method",))), [],
                       ["in.jsonl line 1 (custom_id 'm')", "missing method"]),
    "method GET": (jsonl(raw(custom_id="g", method="GET")), [],
                   ["in.jsonl line 1 (custom_id 'g')", "method must be POST"]),
    "missing url": (jsonl(line("u", drop=("url",))), [],
                    ["in.jsonl line 1 (custom_id 'u')", "missing url"]),
    "unknown url": (jsonl(line("u2", url="/v1/chat")), [],
                    ["in.jsonl line 1 (custom_id 'u2')", "url is not an endpoint"]),
    "two urls in one file": (jsonl(line("c1"), raw(custom_id="e1", url="/v1/embeddings",
                                                   body={"model": "sandbox-embed",
                                                         "input": "x"})), [],
                             ["in.jsonl line 2 (custom_id 'e1')", "differs from " + CHAT]),
    "missing body": (jsonl(line("b", drop=("body",))), [],
                     ["in.jsonl line 1 (custom_id 'b')", "missing body"]),
    "body a string": (jsonl(raw(custom_id="bs", body="hello")), [],
                      ["in.jsonl line 1 (custom_id 'bs')", "body must be a JSON object"]),
    "missing model": (jsonl(raw(custom_id="nm", body={"messages": [{"role": "user",
                                                                     "content": "x"}]})), [],
                      ["in.jsonl line 1 (custom_id 'nm')", "missing body.model"]),
    "messages a string": (jsonl(line("ms", messages="hello")), [],
                          ["in.jsonl line 1 (custom_id 'ms')", "body.messages must be a list"]),
    "messages empty": (jsonl(line("me", messages=[])), [],
                       ["in.jsonl line 1 (custom_id 'me')", "body.messages is empty"]),
    "embeddings without input": (jsonl(raw(custom_id="em", url="/v1/embeddings",
                                           body={"model": "sandbox-embed"})), [],
                                 ["in.jsonl line 1 (custom_id 'em')", "missing body.input"]),
    "max_tokens a string": (jsonl(line("mt", max_tokens="ten")), [],
                            ["in.jsonl line 1 (custom_id 'mt')", "body.max_tokens"]),
    "max_tokens negative": (jsonl(line("mn", max_tokens=-5)), [],
                            ["in.jsonl line 1 (custom_id 'mn')", "less than the minimum of 1"]),
    "stream true": (jsonl(line("st", stream=True)), [],
                    ["in.jsonl line 1 (custom_id 'st')", "body.stream must not be true"]),
    "NaN": (jsonl(line("nan").replace('"messages"', '"temperature": NaN, "messages"')), [],
            ["in.jsonl line 1 (custom_id 'nan')", "NaN is not valid JSON"]),
    "invalid UTF-8": (jsonl(line("ok")).encode() + b'{"custom_id": "\xff"}\n', [],
                      ["in.jsonl line 2", "invalid UTF-8", "0xff"]),
    "unpaired surrogate": (jsonl(line("sur", messages=[{"role": "user",
                                                       "content": "x"}]).replace(
                               '"x"', '"\\ud800"')), [],
                           ["in.jsonl line 1 (custom_id 'sur')", "unpaired surrogate"]),
    "empty file": ("", [], ["in.jsonl", "no requests"]),
    "blank lines only": ("\n  \n\r\n", [], ["in.jsonl", "no requests"]),
    "one line over --max-file-bytes": (jsonl(line("ok"), line("big", messages=[
        {"role": "user", "content": "x" * 700}])), ["--max-file-bytes", "500"],
        ["in.jsonl line 2 (custom_id 'big')", "larger than the per-file limit of 500"]),
}

# words that must NOT appear (a misleading second message for the same mistake)
ABSENT = {"custom_id a number": ["contains a control character"]}

# name: (submit args after the good input in.jsonl, pieces the error must contain)
BAD_USAGE = {
    # (an unknown window such as 2h goes to the server, which names the allowed ones)
    "--completion-window blank": (["--completion-window", " "],
                                  ["--completion-window ' '", "not a window name"]),
    "--pilot 0": (["--pilot", "0"], ["--pilot", "at least 1"]),
    "--metadata without =": (["--metadata", "novalue"], ["--metadata 'novalue'", "KEY=VALUE"]),
    "--metadata reserved key": (["--metadata", "job_id=mine"], ["--metadata", "reserved"]),
    "--metadata empty key": (["--metadata", "=v"], ["--metadata '=v'", "empty key"]),
    "--max-cost not money": (["--max-cost", "lots"], ["--max-cost 'lots'"]),
    "--max-cost negative": (["--max-cost", "-1"], ["--max-cost '-1'"]),
    "--max-requests 0": (["--max-requests", "0"], ["--max-requests", "at least 1"]),
    "--max-requests not a number": (["--max-requests", "ten"], ["--max-requests", "'ten'"]),
    "--max-file-bytes not a size": (["--max-file-bytes", "lots"], ["--max-file-bytes", "'lots'"]),
    "--request-timeout 0": (["--request-timeout", "0"], ["--request-timeout", "'0'"]),
    "--max-retries negative": (["--max-retries", "-1"], ["--max-retries", "'-1'"]),
    "unknown flag": (["--wait"], ["unrecognized arguments: --wait"]),
    "--job is a folder": (["--job", "sub"], ["--job sub is a folder"]),
    "--job in a missing folder": (["--job", "nowhere/p.job.json"],
                                  ["nowhere/p.job.json", "does not exist"]),
    "input missing": (["gone.jsonl"], ["gone.jsonl does not exist"]),
    "input is a folder": (["sub"], ["input sub is not a regular file"]),
    "input given twice": (["in.jsonl"], ["in.jsonl is given twice"]),
    "stdin": (["-"], ["not stdin ('-')"]),
    "plain http to a remote host": (["--base-url", "http://example.com/v1"],
                                    ["--base-url", "plain http to example.com"]),
}


shared_sandbox, sb = sandbox_per_file("--enable-faults")


def start(script: str, *args: str, cwd: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, str(SCRIPTS / script), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=60)
    assert TEST_KEY not in out and TEST_KEY not in err
    return proc.returncode, out, err


def error_text(code: int, out: str, err: str) -> str:
    """The --json envelope's error message and hint (plus stderr: argparse's usage lines)."""
    assert code == 2, (out, err)
    env = json.loads(out)  # stdout is exactly one JSON object, even for usage errors
    assert env["ok"] is False and env["exit_code"] == 2 and "next" in env
    return "\n".join([env["error"]["message"], env["error"].get("hint") or "", err])


def assert_nothing_sent_or_written(sb, folder: Path, before: list[str]) -> None:
    assert sb.calls() == [], "a call reached the server"
    assert sorted(os.listdir(folder)) == before, "a file was written"


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_bad_batch_line_is_refused_by_submit_and_check(sb, tmp_path, case):
    content, args, pieces = BAD_LINES[case]
    data = content if isinstance(content, bytes) else content.encode("utf-8")
    (tmp_path / "in.jsonl").write_bytes(data)
    before = sorted(os.listdir(tmp_path))
    env = script_env(sb.base_url)
    submit = start("submit.py", "in.jsonl", *args, "--json", cwd=tmp_path, env=env)
    check = start("create_batch_file.py", "--check", "in.jsonl", *args, cwd=tmp_path,
                  env=script_env(None, key=None))
    text = error_text(*finish(submit))
    for piece in pieces:
        assert piece in text, f"submit.py: {piece!r} not in {text!r}"
    assert "nothing was sent" in text
    code, out, err = finish(check)
    assert code == 2 and out == "", (out, err)
    for piece in pieces:
        assert piece in err, f"--check: {piece!r} not in {err!r}"
    for wrong in ABSENT.get(case, []):
        assert wrong not in text and wrong not in err, f"misleading {wrong!r} in {err!r}"
    assert_nothing_sent_or_written(sb, tmp_path, before)


@pytest.mark.parametrize("case", list(BAD_USAGE))
def test_bad_command_line_is_refused_by_submit(sb, tmp_path, case):
    args, pieces = BAD_USAGE[case]
    (tmp_path / "in.jsonl").write_text(GOOD)
    (tmp_path / "sub").mkdir()
    before = sorted(os.listdir(tmp_path))
    proc = start("submit.py", "in.jsonl", *args, "--json", cwd=tmp_path,
                 env=script_env(sb.base_url))
    text = error_text(*finish(proc))
    for piece in pieces:
        assert piece in text, f"{piece!r} not in {text!r}"
    assert_nothing_sent_or_written(sb, tmp_path, before)


def test_usage_errors_name_the_flag_inside_the_json_envelope(sb, tmp_path):
    """An agent reading only stdout (--json) learns which flag was wrong, not just 'usage'."""
    (tmp_path / "in.jsonl").write_text(GOOD)
    proc = start("submit.py", "in.jsonl", "--max-requests", "0", "--json", cwd=tmp_path,
                 env=script_env(sb.base_url))
    code, out, err = finish(proc)
    envelope = json.loads(out)
    assert code == 2 and envelope["error"]["code"] == "usage"
    assert "--max-requests" in envelope["error"]["message"]
    assert "at least 1" in envelope["error"]["message"]
    assert "usage: submit.py" in err  # the usual argparse text still goes to stderr
    assert sb.calls() == []


def test_there_are_at_least_25_bad_inputs():
    assert len(BAD_LINES) + len(BAD_USAGE) >= 25 and len(BAD_LINES) >= 25
