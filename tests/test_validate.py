"""The request validator (dwbatch.validate), the shard writer (dwbatch.split) and the limits.

Pure logic, tested in-process. The command line that uses them is tested through subprocesses
in test_create_batch_file.py. The agreement test holds the fast hand-written check to the JSON
Schema in references/ on a large generated corpus of good and bad lines.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random

import pytest
from dwbatch import limits, split, tokens, validate
from dwbatch.errors import InputError

CHAT = "/v1/chat/completions"


def chat_line(cid="req-1", content="Hello there", **body_extra) -> dict:
    body = {"model": "m", "messages": [{"role": "user", "content": content}]}
    body.update(body_extra)
    return {"custom_id": cid, "method": "POST", "url": CHAT, "body": body}


GOOD_BY_URL = {
    CHAT: {"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "Hi"}], "max_tokens": 10},
    "/v1/completions": {"model": "m", "prompt": "Once upon", "max_tokens": 5},
    "/v1/embeddings": {"model": "e", "input": ["a", "b"]},
    "/v1/responses": {"model": "m", "input": "Hi", "instructions": "Be brief."},
    "/v1/messages": {"model": "m", "max_tokens": 16, "system": "Be brief.",
                     "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]},
}


def write_lines(path, lines, newline="\n") -> str:
    with open(path, "w", encoding="utf-8", newline="") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + newline)
    return str(path)


# --- agreement: fast path == jsonschema ------------------------------------------------------
PALETTE = [None, True, False, 0, 1, -1, 2, 1.0, 1.5, 3.0, -2.0, 2**70, "", "x", "POST", "post",
           "PoSt", "POST\n", " POST", "GET", "pOSt", [], [1], ["a"], [{}], [{"role": 1}],
           [{"role": "user"}], [{"role": "user", "content": "hi"}, "x"], {}, {"model": "m"},
           {"role": "user"}, "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
           "/v1/responses", "/v1/messages", "/v1/chat/completions/", "/v1/batches",
           "a\nb", "a\tb", "ok\x7f", "x\x85y", "\x9f", "é" * 40, "💥" * 17, "\u2028", "a b",
           "id-" + "x" * 70]


def _paths(obj, prefix=()):
    """Every (container path, key) in a nested JSON value."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix, k
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield prefix, i
            yield from _paths(v, prefix + (i,))


def _mutate(obj, rng: random.Random):
    obj = copy.deepcopy(obj)
    paths = list(_paths(obj))
    extra_keys = [((), "custom_id"), ((), "method"), ((), "url"), ((), "body"),
                  (("body",), "stream"), (("body",), "max_tokens"), (("body",), "model"),
                  (("body",), "messages"), (("body",), "prompt"), (("body",), "input")]
    prefix, key = rng.choice(paths + extra_keys)
    node = obj
    for p in prefix:
        try:
            node = node[p]
        except (KeyError, IndexError, TypeError):
            return obj
    if isinstance(node, dict):
        if key in node and rng.random() < 0.25:
            del node[key]
        else:
            node[key] = copy.deepcopy(rng.choice(PALETTE))
    elif isinstance(node, list) and isinstance(key, int) and key < len(node):
        node[key] = copy.deepcopy(rng.choice(PALETTE))
    return obj


def generated_corpus(n: int, seed: int = 7):
    rng = random.Random(seed)
    bases = [{"custom_id": f"req-{i}", "method": "POST", "url": url, "body": body}
             for i, (url, body) in enumerate(GOOD_BY_URL.items())]
    for i in range(n):
        obj = copy.deepcopy(rng.choice(bases))
        for _ in range(rng.choice((0, 1, 1, 2, 3))):
            obj = _mutate(obj, rng)
        if i % 97 == 0:
            obj = rng.choice(PALETTE)  # not even an object
        yield json.loads(json.dumps(obj))  # exactly what parsing a line gives


def test_fast_path_agrees_with_the_schema_on_a_large_corpus():
    validator = validate.schema_validator()
    good = bad = 0
    disagreements = []
    for obj in generated_corpus(30_000):
        fast_ok = validate.fast_schema_check(obj) is not None
        schema_ok = validator.is_valid(obj)
        if fast_ok != schema_ok:
            disagreements.append((fast_ok, schema_ok, obj))
        good += schema_ok
        bad += not schema_ok
    assert not disagreements[:5], f"{len(disagreements)} disagreements, e.g. {disagreements[:5]}"
    assert good > 3000 and bad > 3000, (good, bad)  # the corpus really has both kinds


@pytest.mark.parametrize("url", sorted(GOOD_BY_URL))
def test_every_endpoint_shape_is_valid_in_both_layers(url):
    obj = {"custom_id": "a", "method": "post", "url": url, "body": GOOD_BY_URL[url]}
    info = validate.fast_schema_check(obj)
    assert info is not None and info.url == url and info.tokens > 0
    assert validate.schema_messages(obj) == []


def test_schema_file_is_a_valid_json_schema_and_states_the_code_rules():
    import jsonschema

    schema = validate.load_schema()
    jsonschema.validators.validator_for(schema).check_schema(schema)
    text = schema["description"]
    for rule in ("64 UTF-8 bytes", "unique", "one url per file", "10 MiB"):
        assert rule in text


def test_schema_messages_name_the_field_and_what_was_expected():
    msgs = validate.schema_messages({"custom_id": "a", "method": "GET", "url": CHAT,
                                     "body": {"model": "m", "messages": "hi", "stream": True}})
    text = "\n".join(msgs)
    assert "method must be POST" in text and '"GET"' in text
    assert "body.messages must be a list" in text and "got string" in text
    assert "body.stream must not be true" in text
    assert validate.schema_messages({"custom_id": "a", "method": "POST", "url": CHAT,
                                     "body": {}}) == [
        "missing body.model (expected: the model name as a non-empty string)",
        "missing body.messages (expected: a non-empty list of message objects, e.g. "
        '[{"role": "user", "content": "Hello"}])']


# --- check_files -----------------------------------------------------------------------------
def test_valid_file_stats(tmp_path):
    lines = [chat_line(f"r{i}", "word " * 40) for i in range(5)]
    path = write_lines(tmp_path / "a.jsonl", lines)
    report = validate.check_files([path])
    assert report.ok and report.problem_count == 0 and report.render() == "no problems found"
    (stats,) = report.files
    data = open(path, "rb").read()
    assert stats.requests == 5 and stats.bytes == len(data)
    assert stats.sha256 == hashlib.sha256(data).hexdigest()
    assert stats.url == stats.endpoint == CHAT and stats.models == {"m": 5}
    assert 5 * 50 <= stats.input_tokens_estimate <= 5 * 80  # 200 bytes of text ~ 50 tokens
    assert stats.to_dict()["endpoint"] == CHAT


def test_blank_lines_crlf_and_physical_line_numbers(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"\r\n" + json.dumps(chat_line("a")).encode() + b"\r\n  \n"
                     + b'{"custom_id": "b", broken\r\n')
    report = validate.check_files([path])
    assert report.files[0].requests == 2
    (problem,) = report.problems
    assert problem.line == 4 and problem.custom_id == "b"
    assert "not valid JSON" in problem.message and "column" in problem.message


def test_every_problem_is_reported_with_line_and_id(tmp_path):
    lines = [
        chat_line("ok-1"),
        "{not json",
        {"custom_id": "no-model", "method": "POST", "url": CHAT, "body": {"messages": []}},
        {"custom_id": "get", "method": "GET", "url": CHAT, "body": {"model": "m",
                                                                    "messages": [{"role": "u"}]}},
        {"custom_id": "unknown-url", "method": "POST", "url": "/v1/chat",
         "body": {"model": "m"}},
        chat_line("streaming", stream=True),
        chat_line("ok-1"),
        {"method": "POST", "url": CHAT, "body": {"model": "m", "messages": [{"role": "u"}]}},
        chat_line("é" * 32 + "x"),  # 65 bytes, 33 characters
        chat_line("tab\there"),
        {"custom_id": "emb", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": "e", "input": "x"}},
        '{"custom_id": "nan", "method": "POST", "url": "/v1/chat/completions", '
        '"body": {"model": "m", "temperature": NaN, "messages": [{"role": "user"}]}}',
    ]
    path = write_lines(tmp_path / "bad.jsonl", lines)
    report = validate.check_files([path])
    by_line = {}
    for p in report.problems:
        by_line.setdefault(p.line, []).append(p)
    assert sorted(by_line) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert "missing body.model" in by_line[3][0].message or \
        "missing body.model" in by_line[3][1].message
    assert any("messages is empty" in p.message for p in by_line[3])
    assert by_line[4][0].custom_id == "get" and "POST" in by_line[4][0].message
    assert "url is not an endpoint" in by_line[5][0].message
    assert "stream" in by_line[6][0].message
    assert "duplicate custom_id: also used on line 1" in by_line[7][0].message
    assert "missing custom_id" in by_line[8][0].message
    assert "65 UTF-8 bytes (33 characters)" in by_line[9][0].message
    assert "control character" in by_line[10][0].message and "U+0009" in by_line[10][0].message
    assert "differs from /v1/chat/completions used first on line 1" in by_line[11][0].message
    assert "NaN is not valid JSON" in by_line[12][0].message and by_line[12][0].custom_id == "nan"
    text = report.render()
    assert text.startswith(f"{report.problem_count} problems found in 1 file:")
    assert f"{path} line 9 (custom_id '{'é' * 32}x')" in text


def test_problems_are_capped_with_a_count_of_the_rest(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", ["{"] * 120)
    report = validate.check_files([path], max_problems=10)
    assert report.problem_count == 120 and len(report.problems) == 10 and not report.ok
    assert "... and 110 more problems (first 10 shown" in report.render()
    assert report.to_dict()["problem_count"] == 120


def test_duplicates_across_files_name_both_lines(tmp_path):
    a = write_lines(tmp_path / "a.jsonl", [chat_line("x"), chat_line("shared")])
    b = write_lines(tmp_path / "b.jsonl", [chat_line("y"), chat_line("z"), chat_line("shared")])
    report = validate.check_files([a, b])
    (p,) = report.problems
    assert (p.file, p.line, p.custom_id) == (b, 3, "shared")
    assert f"also used on line 2 of {a}" in p.message


def test_id_limit_is_64_bytes_not_characters(tmp_path):
    ok64 = "é" * 32  # 64 bytes
    path = write_lines(tmp_path / "a.jsonl", [chat_line(ok64), chat_line("a" * 64),
                                              chat_line("a" * 65), chat_line("😀" * 17)])
    report = validate.check_files([path])
    assert [p.line for p in report.problems] == [3, 4]
    assert "68 UTF-8 bytes (17 characters)" in report.problems[1].message


def test_invalid_utf8_reports_the_byte_offset(tmp_path):
    first = json.dumps(chat_line("a")).encode() + b"\n"
    second = b'{"custom_id": "b\xff"}\n'
    (tmp_path / "a.jsonl").write_bytes(first + second)
    report = validate.check_files([tmp_path / "a.jsonl"])
    (p,) = report.problems
    assert p.line == 2
    assert f"byte offset {len(first) + 16} of the file" in p.message and "0xff" in p.message


def test_lone_surrogate_escape_is_rejected_but_a_pair_is_fine(tmp_path):
    pair = json.dumps(chat_line("a", "smile \U0001F600"))  # ensure_ascii: \ud83d\ude00
    assert "\\ud83d" in pair
    lone = json.dumps(chat_line("b", "x")).replace('"x"', '"\\ud800"')
    path = write_lines(tmp_path / "a.jsonl", [pair, lone])
    report = validate.check_files([path])
    (p,) = report.problems
    assert p.line == 2 and "unpaired surrogate" in p.message


def test_bom_and_empty_and_blank_and_missing_files(tmp_path):
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(chat_line("a")).encode() + b"\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.jsonl"
    blank.write_bytes(b"\n  \n\r\n")
    report = validate.check_files([bom, empty, blank, tmp_path / "missing.jsonl"])
    msgs = [(os.path.basename(p.file), p.message) for p in report.problems]
    assert "byte-order mark" in msgs[0][1]
    assert msgs[1][0] == "empty.jsonl" and "no requests" in msgs[1][1]
    assert msgs[2][0] == "blank.jsonl" and "no requests" in msgs[2][1]
    assert msgs[3][0] == "missing.jsonl" and "cannot read" in msgs[3][1]


def test_body_over_10_mib(tmp_path):
    big = chat_line("big", "x" * (limits.MAX_BODY_BYTES + 10))
    near = chat_line("near", "x" * (limits.MAX_BODY_BYTES - 200))
    path = write_lines(tmp_path / "a.jsonl", [near, big])
    report = validate.check_files([path])
    (p,) = report.problems
    assert p.line == 2 and "10 MiB" in p.message


def test_file_limits_are_problems_unless_splitting_is_allowed(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", [chat_line(f"r{i}") for i in range(5)])
    strict = validate.check_files([path], max_requests=4, max_file_bytes=10_000)
    (p,) = strict.problems
    assert p.line is None and "5 requests (limit 4, --max-requests)" in p.message
    lenient = validate.check_files([path], max_requests=4, split_oversize=True)
    assert lenient.ok and lenient.files[0].needs_split
    one_line = validate.check_files([path], max_file_bytes=50, split_oversize=True)
    assert one_line.problem_count == 5
    assert "larger than the per-file limit of 50 bytes" in one_line.problems[0].message


# --- split -----------------------------------------------------------------------------------
def _lines(n, pad=0):
    return [json.dumps(chat_line(f"r{i:03d}", "x" * pad)) for i in range(n)]


def test_split_by_count_is_deterministic_and_keeps_every_line(tmp_path):
    src = write_lines(tmp_path / "in.jsonl", ["", *_lines(10), "  "], newline="\r\n")
    out = str(tmp_path / "out" / "b.jsonl")
    os.mkdir(tmp_path / "out")
    shards = split.split_file(src, out, max_requests=3)
    names = [os.path.basename(s.path) for s in shards]
    assert names == ["b-001.jsonl", "b-002.jsonl", "b-003.jsonl", "b-004.jsonl"]
    assert [s.requests for s in shards] == [3, 3, 3, 1]
    joined = b"".join(open(s.path, "rb").read() for s in shards)
    assert joined == ("\n".join(_lines(10)) + "\n").encode()
    assert shards[0].sha256 == hashlib.sha256(open(shards[0].path, "rb").read()).hexdigest()
    assert (shards[0].first_line, shards[-1].last_line) == (2, 11)
    again = split.split_file(src, out, max_requests=3)
    assert [s.sha256 for s in again] == [s.sha256 for s in shards]
    assert sorted(os.listdir(tmp_path / "out")) == names  # no temporary files left


def test_split_by_bytes_never_passes_the_limit(tmp_path):
    lines = _lines(20, pad=100)
    size = len(lines[0]) + 1
    src = write_lines(tmp_path / "in.jsonl", lines)
    shards = split.split_file(src, str(tmp_path / "o.jsonl"), max_file_bytes=size * 3 + 5)
    assert [s.requests for s in shards] == [3] * 6 + [2]
    assert all(os.path.getsize(s.path) <= size * 3 + 5 for s in shards)


def test_one_shard_keeps_the_name_unless_numbered_and_stale_shards_go(tmp_path):
    src = write_lines(tmp_path / "in.jsonl", _lines(4))
    out = str(tmp_path / "o.jsonl")
    assert len(split.split_file(src, out, max_requests=2)) == 2
    (only,) = split.split_file(src, out)
    assert only.path == out
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl", "o.jsonl"]  # o-001/-002 removed
    (numbered,) = split.split_file(src, out, numbered=True)
    assert os.path.basename(numbered.path) == "o-001.jsonl"
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl", "o-001.jsonl"]


def test_split_refuses_an_oversize_line_and_leaves_nothing(tmp_path):
    lines = _lines(5) + [json.dumps(chat_line("huge", "x" * 500))]
    src = write_lines(tmp_path / "in.jsonl", lines)
    with pytest.raises(InputError) as exc:
        split.split_file(src, str(tmp_path / "o.jsonl"), max_file_bytes=300, max_requests=2)
    assert "line 6" in exc.value.message and "'huge'" in exc.value.message
    assert os.listdir(tmp_path) == ["in.jsonl"]


def test_split_refuses_to_overwrite_its_input(tmp_path):
    src = write_lines(tmp_path / "o-002.jsonl", _lines(2))
    for out in ("o-002.jsonl", "o.jsonl"):
        with pytest.raises(InputError, match="would overwrite the input"):
            split.split_file(src, str(tmp_path / out))


def test_shard_writer_discards_everything_on_error(tmp_path):
    out = tmp_path / "o.jsonl"
    with pytest.raises(RuntimeError), \
            split.ShardWriter(out, max_requests=1) as writer:
        for line in _lines(3):
            writer.write(line.encode())
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_shard_writer_missing_directory(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        split.ShardWriter(tmp_path / "nope" / "o.jsonl")


# --- limits and tokens -----------------------------------------------------------------------
def test_limits_defaults_and_sizes():
    assert (limits.MAX_FILE_BYTES, limits.MAX_REQUESTS) == (200_000_000, 50_000)
    assert limits.parse_size("200MB") == 200_000_000
    assert limits.parse_size("1MiB") == 1_048_576
    assert limits.parse_size("12345") == 12345
    for bad in ("", "ten", "5XB", "0"):
        with pytest.raises(ValueError):
            limits.parse_size(bad)
    assert limits.endpoint_name(CHAT) == "chat"


def test_token_estimate_is_about_four_bytes_a_token():
    assert tokens.text_tokens("abcd" * 100) == 100
    assert tokens.text_tokens("日本語") == 3  # 9 bytes
    body = GOOD_BY_URL["/v1/messages"]
    assert tokens.estimate_body_tokens("/v1/messages", body) == \
        validate.fast_schema_check({"custom_id": "a", "method": "POST", "url": "/v1/messages",
                                    "body": body}).tokens
