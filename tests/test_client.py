"""The shared API client: backoff and Retry-After rules, base URL and key resolution, error
wording, streamed uploads and line reads, pagination, against the real sandbox over HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
import tracemalloc
from urllib.parse import quote

import pytest
from conftest import TEST_KEY, sandbox_per_file
from dwbatch import errors
from dwbatch.client import (
    AmbiguousOutcome,
    APIError,
    Client,
    MultipartFileBody,
    RetryPolicy,
    StreamInterrupted,
    backoff_delay,
    parse_retry_after,
    retry_after_seconds,
    server_words,
)
from dwbatch.config import (
    DEFAULT_BASE_URL,
    Settings,
    is_loopback_host,
    require_api_key,
    resolve_base_url,
)
from dwbatch.safetext import as_data, for_terminal, map_strings
from dwbatch.secrets import byte_scrubber, key_spellings, redact

# --------------------------------------------------------------------------- pure logic


@pytest.mark.parametrize("host,expected", [
    ("localhost", True), ("LOCALHOST", True), ("127.0.0.1", True), ("127.1.2.3", True),
    ("::1", True), ("[::1]", True), ("api.localhost", False), ("localhost.", False),
    ("128.0.0.1", False), ("10.0.0.1", False), ("example.com", False),
    ("localhost.example.com", False), ("::2", False), ("", False), (None, False),
    ("0.0.0.0", False),
])
def test_loopback_detection(host, expected):
    assert is_loopback_host(host) is expected


def test_base_url_precedence(monkeypatch):
    monkeypatch.delenv("DOUBLEWORD_BASE_URL", raising=False)
    assert resolve_base_url(None) == DEFAULT_BASE_URL
    monkeypatch.setenv("DOUBLEWORD_BASE_URL", "https://env.example/v1/")
    assert resolve_base_url(None) == "https://env.example/v1"
    assert resolve_base_url("http://127.0.0.1:9/v1") == "http://127.0.0.1:9/v1"


@pytest.mark.parametrize("url", ["http://example.com/v1", "http://10.0.0.5:8787/v1",
                                 "http://localhost.evil.com/v1"])
def test_plain_http_refused_off_loopback(url):
    with pytest.raises(errors.DWError) as info:
        resolve_base_url(url)
    assert info.value.exit_code == errors.INVALID_INPUT
    assert "plain http" in info.value.message and "--base-url" in info.value.message


@pytest.mark.parametrize("url", ["ftp://x/v1", "api.doubleword.ai/v1", "https:///v1"])
def test_unusable_url_refused(url):
    with pytest.raises(errors.DWError) as info:
        resolve_base_url(url)
    assert info.value.exit_code == errors.INVALID_INPUT


@pytest.mark.parametrize("url,why", [
    ("http://0.0.0.0:19002\\@127.0.0.1:19001/v1", "backslash"),
    ("http://evil.example\\.127.0.0.1/v1", "backslash"),
    ("http://user:pw@127.0.0.1:8787/v1", "user name or password"),
    ("https://127.0.0.1@evil.example/v1", "user name or password"),
    ("http://127.0.0.1:8787 /v1", "space"),
    ("http://127.0.0.1:8787/v1\x00", "control character"),
    ("http://127.0.0.1\t:8787/v1", "control character"),
    ("http://%31%32%37.0.0.1/v1", "percent-encoded"),
    ("http://127.0.0.1:8787/v1?x=1", "query"),
    ("http://127.0.0.1:8787/v1#@evil.example", "fragment"),
    ("http://127.0.0.1:99999/v1", "port"),
])
def test_ambiguous_base_urls_are_refused_saying_why(url, why):
    with pytest.raises(errors.DWError) as info:
        resolve_base_url(url)
    assert info.value.code == "bad_base_url" and info.value.exit_code == errors.INVALID_INPUT
    assert why in info.value.message
    assert "\x00" not in info.value.message and "\t" not in info.value.message


def test_https_and_loopback_http_allowed():
    assert resolve_base_url("https://api.example.com/v1") == "https://api.example.com/v1"
    assert resolve_base_url("http://[::1]:8787/v1") == "http://[::1]:8787/v1"
    assert resolve_base_url("http://localhost:8787/v1") == "http://localhost:8787/v1"


def test_missing_key_is_exit_6_with_how_to_set_it(monkeypatch):
    monkeypatch.delenv("DOUBLEWORD_API_KEY", raising=False)
    with pytest.raises(errors.DWError) as info:
        require_api_key()
    assert info.value.exit_code == errors.AUTH
    assert "export DOUBLEWORD_API_KEY=" in info.value.hint


def test_key_that_cannot_be_a_header_is_exit_6_and_not_shown(monkeypatch):
    monkeypatch.setenv("DOUBLEWORD_API_KEY", "dw-secret-part1\ndw-secret-part2")
    with pytest.raises(errors.DWError) as info:
        require_api_key()
    assert info.value.exit_code == errors.AUTH
    text = f"{info.value.message} {info.value.hint}"
    assert "secret-part" not in text


def test_key_shorter_than_8_characters_is_refused(monkeypatch):
    monkeypatch.setenv("DOUBLEWORD_API_KEY", "abc1234")
    with pytest.raises(errors.DWError) as info:
        require_api_key()
    assert info.value.exit_code == errors.AUTH and info.value.code == "bad_api_key"
    monkeypatch.setenv("DOUBLEWORD_API_KEY", "abcd1234")
    assert require_api_key() == "abcd1234"


@pytest.mark.parametrize("key", ['dw-"quoted"-key', "dw-back\\slash-key", "dw-k/ey+=&x"])
def test_redaction_covers_every_spelling_of_the_key(key):
    texts = [key, json.dumps(key), json.dumps(json.dumps(key)), repr(key),
             quote(key, safe=""), json.dumps({"message": f"bad key {key}"})]
    for text in texts:
        out = redact(text, key)
        assert "[REDACTED]" in out, text
        for spelling in (key, json.dumps(key)[1:-1]):
            assert spelling not in out


@pytest.mark.parametrize("key", ["dw-test-k3y-DO-NOT-LEAK-8f2c1e", '!"#$%&()*+,/:;<=>?@[]^'])
def test_byte_scrubber_finds_every_spelling_of_the_key_in_downloaded_bytes(key):
    scrub = byte_scrubber(key)
    for spelling in key_spellings(key):
        data = b'{"content": "key ' + spelling.encode() + b' end"}\n'
        assert scrub.has_key(data)
        cleaned = scrub.clean(data)
        assert b"[REDACTED]" in cleaned and spelling.encode() not in cleaned
    assert not scrub.has_key(b'{"content": "nothing secret"}\n')
    assert byte_scrubber(None) is None and byte_scrubber("short") is None


def test_server_text_is_escaped_as_data_and_terminal_output_keeps_only_its_own_lines():
    evil = "oops\nnext: curl x | sh\r\x1b[2K\u2028\u202e\x9b"
    shown = as_data(evil)
    assert "\n" not in shown and "\x1b" not in shown and "\u2028" not in shown
    assert shown.startswith("oops\\nnext: curl x | sh\\r\\x1b[2K")
    assert map_strings({"a\n": ["x\ny", {"b": 1, "c": "\x1b"}]}) == \
        {"a\\n": ["x\\ny", {"b": 1, "c": "\\x1b"}]}
    assert for_terminal("line one\n\tline two\x1b[1A\r") == "line one\n\tline two\\x1b[1A\\r"
    deep = []
    for _ in range(100_000):
        deep = [deep, "\n"]
    map_strings(deep)  # no RecursionError


def test_parse_retry_after_forms():
    assert parse_retry_after("60") == 60.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-3") is None
    # HTTP date, 30 s after a fixed "now"
    now = 1_700_000_000.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 30))
    assert parse_retry_after(date, now=now) == pytest.approx(30.0, abs=1)
    past = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now - 30))
    assert parse_retry_after(past, now=now) == 0.0


def test_retry_after_header_wins_over_body():
    body = b'{"error":"too_many_requests","message":"slow down","retry_after_seconds":30}'
    assert retry_after_seconds({"Retry-After": "60"}, body) == 60.0
    assert retry_after_seconds({}, body) == 30.0
    assert retry_after_seconds({"Retry-After": "garbage"}, body) == 30.0
    assert retry_after_seconds({}, b"plain text") is None
    assert retry_after_seconds({}, b'{"retry_after_seconds": true}') is None


def test_backoff_grows_with_jitter_and_honours_server_wait():
    policy = RetryPolicy(max_retries=5, base_delay=0.5, max_delay=30)
    rng = random.Random(7)
    for attempt in range(8):
        ceiling = min(30, 0.5 * 2 ** attempt)
        values = {backoff_delay(attempt, policy, None, rng) for _ in range(20)}
        assert all(ceiling / 2 <= v <= ceiling for v in values)
        assert len(values) > 1  # jittered
    for wait in (0.0, 1.0, 60.0):
        d = backoff_delay(0, policy, wait, rng)
        assert wait <= d <= wait + min(1.0, wait * 0.1)


def test_server_words_plain_and_json():
    assert server_words(b"Authentication required") == "Authentication required"
    assert server_words(b'{"error":"service_unavailable","message":"try later",'
                        b'"retry_after_seconds":3}') == "service_unavailable: try later"
    assert server_words(b'{"error":{"message":"bad model","type":"x"}}') == "bad model"
    assert server_words(b'{"detail":"conflict"}') == "conflict"
    assert server_words(b"{not json") == "{not json"
    long = server_words(b"x" * 5000)
    assert len(long) < 2100 and "more characters" in long


def test_multipart_body_length_matches_bytes_sent(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a":1}\n' * 1000)
    seen = []
    body = MultipartFileBody(str(path), "in.jsonl", {"purpose": "batch"},
                             progress=lambda sent, total: seen.append((sent, total)),
                             chunk_size=1024)
    data = b"".join(body)
    assert len(data) == len(body)
    assert b'name="file"; filename="in.jsonl"' in data
    assert body.sent_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert seen[-1] == (len(body), len(body))
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)


# --------------------------------------------------------------------------- over HTTP

shared_sandbox, sandbox = sandbox_per_file("--enable-faults", name="sandbox")


def make_client(sandbox, *, max_retries=3, key=TEST_KEY, timeout=10.0, notes=None,
                total_wait=30.0):
    settings = Settings(base_url=sandbox.base_url, api_key=key, max_retries=max_retries,
                        timeout=timeout)
    policy = RetryPolicy(max_retries=max_retries, base_delay=0.05, max_delay=0.2,
                         max_total_wait=total_wait)
    return Client(settings, policy=policy,
                  on_retry=(notes.append if notes is not None else None))


def write_requests(path, n, model="sandbox-chat", prefix="r"):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({
                "custom_id": f"{prefix}-{i}", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": model, "messages": [{"role": "user", "content": f"hi {i}"}]},
            }) + "\n")
    return str(path)


def test_upload_create_get_list_cancel(sandbox, tmp_path):
    client = make_client(sandbox)
    src = write_requests(tmp_path / "p.jsonl", 5)
    progress = []
    f = client.upload_file(src, progress=lambda s, t: progress.append((s, t)))
    assert f["id"] and f["filename"] == "p.jsonl" and f["bytes"] == os.path.getsize(src)
    assert progress and progress[-1][0] == progress[-1][1]
    assert client.get_file(f["id"])["id"] == f["id"]
    b = client.create_batch(f["id"], "/v1/chat/completions", "24h",
                            {"job_id": "job-xyz", "shard_index": "0"})
    assert b["metadata"]["job_id"] == "job-xyz"
    assert client.get_batch(b["id"])["id"] == b["id"]
    found = client.find_batches_by_metadata("job-xyz", {"job_id": "job-xyz",
                                                        "shard_index": "0"})
    assert [x["id"] for x in found] == [b["id"]]
    assert client.find_batches_by_metadata("job-xyz", {"shard_index": "1"}) == []
    est = client.cost_estimate(f["id"], "24h")
    assert "total_estimated_cost" in est
    assert client.cancel_batch(b["id"])["id"] == b["id"]


def test_list_pagination_follows_has_more(sandbox, tmp_path):
    client = make_client(sandbox)
    src = write_requests(tmp_path / "p.jsonl", 1)
    f = client.upload_file(src)
    ids = {client.create_batch(f["id"], "/v1/chat/completions", "24h",
                               {"job_id": "pages"})["id"] for _ in range(5)}
    listed = [b["id"] for b in client.iter_batches(search="pages", page_size=2)]
    assert set(listed) == ids and len(listed) == 5
    gets = [c for c in sandbox.calls() if c["method"] == "GET" and c["path"] == "/v1/batches"]
    assert len(gets) >= 3  # 5 items at 2 per page
    assert len(client.list_batches(search="pages", limit=3)) == 3


def test_retries_429_and_503_honouring_retry_after(sandbox):
    notes = []
    client = make_client(sandbox, notes=notes)
    sandbox.fault(method="GET", path="/v1/batches", kind="status", status=429,
                  retry_after=1, times=1)
    sandbox.fault(method="GET", path="/v1/batches", kind="status", status=503,
                  retry_after=0, times=1)
    start = time.monotonic()
    client.list_batches(limit=1)
    assert time.monotonic() - start >= 1.0  # the Retry-After of 1 s was honoured
    statuses = [c["status"] for c in sandbox.calls() if c["path"] == "/v1/batches"]
    assert statuses == [429, 503, 200]
    assert len(notes) == 2 and "429" in notes[0] and "retry 1 of 3" in notes[0]


def test_gives_up_after_max_retries_with_exit_7(sandbox):
    client = make_client(sandbox, max_retries=2)
    sandbox.fault(method="GET", path="/v1/batches", kind="status", status=503,
                  retry_after=0, times=10)
    with pytest.raises(APIError) as info:
        client.list_batches(limit=1)
    assert info.value.exit_code == errors.UNAVAILABLE
    assert "after 2 retries" in info.value.message
    assert len([c for c in sandbox.calls() if c["path"] == "/v1/batches"]) == 3


def test_total_wait_cap_stops_early(sandbox):
    client = make_client(sandbox, max_retries=5, total_wait=2.0)
    sandbox.fault(method="GET", path="/v1/batches", kind="status", status=429,
                  retry_after=30, times=3)
    start = time.monotonic()
    with pytest.raises(APIError) as info:
        client.list_batches(limit=1)
    assert time.monotonic() - start < 5
    assert info.value.exit_code == errors.UNAVAILABLE and "cap" in info.value.message


@pytest.mark.parametrize("status,exit_code", [(400, 2), (401, 6), (402, 6), (403, 6),
                                              (404, 2), (409, 2), (413, 2), (422, 2)])
def test_never_retries_client_errors(sandbox, status, exit_code):
    client = make_client(sandbox)
    sandbox.fault(method="GET", path="/v1/batches", kind="status", status=status, times=5)
    with pytest.raises(APIError) as info:
        client.list_batches(limit=1)
    assert info.value.exit_code == exit_code and info.value.status == status
    assert len([c for c in sandbox.calls() if c["path"] == "/v1/batches"]) == 1


def test_wrong_key_is_exit_6_in_servers_words_and_redacted(sandbox):
    bad_key = "dw-wrong-key-0123456789"
    client = make_client(sandbox, key=bad_key)
    with pytest.raises(APIError) as info:
        client.get_batch("3fa85f64-5717-4562-b3fc-2c963f66afa6")
    assert info.value.exit_code == errors.AUTH and info.value.status == 401
    assert "Authentication required" in info.value.message
    assert bad_key not in str(info.value) and bad_key not in (info.value.hint or "")


def test_connection_drop_is_retried_for_reads(sandbox, tmp_path):
    client = make_client(sandbox)
    sandbox.fault(method="GET", path="/v1/batches", kind="drop", after_bytes=0, times=1)
    assert isinstance(client.list_batches(limit=1), list)
    assert len([c for c in sandbox.calls() if c["path"] == "/v1/batches"]) == 2


def test_lost_create_answer_is_ambiguous_not_repeated(sandbox, tmp_path):
    client = make_client(sandbox)
    f = client.upload_file(write_requests(tmp_path / "p.jsonl", 2))
    sandbox.fault(method="POST", path="/v1/batches", kind="lose_response", times=1)
    with pytest.raises(AmbiguousOutcome) as info:
        client.create_batch(f["id"], "/v1/chat/completions", "24h", {"job_id": "lost-1"})
    assert info.value.exit_code == errors.UNAVAILABLE
    posts = [c for c in sandbox.calls() if c["method"] == "POST" and c["path"] == "/v1/batches"]
    assert len(posts) == 1  # not repeated blindly
    assert len(client.find_batches_by_metadata("lost-1", {"job_id": "lost-1"})) == 1


@pytest.mark.parametrize("status", [500, 502, 504])
def test_create_answered_5xx_is_ambiguous_not_repeated(sandbox, tmp_path, status):
    client = make_client(sandbox)
    f = client.upload_file(write_requests(tmp_path / "p.jsonl", 2))
    sandbox.fault(method="POST", path="/v1/batches", kind="status", status=status, times=3)
    with pytest.raises(AmbiguousOutcome) as info:
        client.create_batch(f["id"], "/v1/chat/completions", "24h", {"job_id": "amb"})
    assert info.value.status == status
    assert len([c for c in sandbox.calls() if c["method"] == "POST"
                and c["path"] == "/v1/batches"]) == 1


def test_create_retried_on_429_because_nothing_was_done(sandbox, tmp_path):
    client = make_client(sandbox)
    f = client.upload_file(write_requests(tmp_path / "p.jsonl", 2))
    sandbox.fault(method="POST", path="/v1/batches", kind="status", status=429,
                  retry_after=0, times=2)
    client.create_batch(f["id"], "/v1/chat/completions", "24h", {"job_id": "busy-1"})
    assert len(client.find_batches_by_metadata("busy-1", {"job_id": "busy-1"})) == 1


def test_closed_port_is_exit_7_after_retries(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    settings = Settings(base_url=f"http://127.0.0.1:{port}/v1", api_key=TEST_KEY,
                        max_retries=1, timeout=2)
    client = Client(settings, policy=RetryPolicy(max_retries=1, base_delay=0.01),
                    on_retry=None)
    with pytest.raises(APIError) as info:
        client.get_batch("x")
    assert info.value.exit_code == errors.UNAVAILABLE
    assert TEST_KEY not in info.value.message


def test_content_lines_skip_limit_and_headers(sandbox_factory, tmp_path):
    sb = sandbox_factory("--enable-faults", "--manual")
    client = make_client(sb)
    f = client.upload_file(write_requests(tmp_path / "p.jsonl", 6))
    b = client.create_batch(f["id"], "/v1/chat/completions", "24h")
    sb.advance(b["id"], 4)
    out_id = client.get_batch(b["id"]).get("output_file_id")
    assert out_id
    with client.file_content(out_id) as stream:
        lines = list(stream)
        assert stream.complete
        assert stream.header("x-incomplete") == "true" == stream.headers["X-Incomplete"]
        assert int(stream.header("X-Last-Line")) == 4
    assert len(lines) == 4 and all(line.endswith(b"\n") for line in lines)
    with client.file_content(out_id, skip=1, limit=2) as stream:
        assert list(stream) == lines[1:3]


def test_torn_and_dropped_downloads_hand_back_only_complete_lines(sandbox_factory, tmp_path):
    sb = sandbox_factory("--enable-faults", "--manual")
    client = make_client(sb)
    f = client.upload_file(write_requests(tmp_path / "p.jsonl", 5))
    b = client.create_batch(f["id"], "/v1/chat/completions", "24h")
    sb.advance(b["id"])
    out_id = client.get_batch(b["id"])["output_file_id"]
    with client.file_content(out_id) as stream:
        full = list(stream)
    assert len(full) == 5
    sb.fault(method="GET", path="/v1/files/*/content", kind="tear", times=1)
    got = []
    stream = client.file_content(out_id)
    try:
        for line in stream:
            got.append(line)
    except StreamInterrupted as exc:
        assert exc.lines_read == 4
    assert got == full[:4] and not stream.complete
    sb.fault(method="GET", path="/v1/files/*/content", kind="drop",
             after_bytes=len(full[0]) + 5, times=1)
    got = []
    with pytest.raises(StreamInterrupted):
        with client.file_content(out_id) as stream:
            for line in stream:
                got.append(line)
    assert got == full[:1]


def test_upload_memory_stays_flat(sandbox, tmp_path):
    """A 20 MB upload allocates far less than the file size in Python memory."""
    path = tmp_path / "big.jsonl"
    line = ('{"custom_id":"c-%07d","method":"POST","url":"/v1/chat/completions",'
            '"body":{"model":"sandbox-chat","messages":[{"role":"user","content":"'
            + "x" * 300 + '"}]}}\n')
    with open(path, "w") as f:
        for i in range(20_000_000 // len(line)):
            f.write(line % i)
    client = make_client(sandbox)
    tracemalloc.start()
    try:
        obj = client.upload_file(str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert obj["bytes"] == os.path.getsize(path)
    assert peak < 8 * 1024 * 1024, peak


def test_keyboard_interrupt_is_not_swallowed(sandbox):
    """Ctrl-C during a retry wait propagates (scripts turn it into exit 130)."""
    def sleeper(_):
        raise KeyboardInterrupt

    settings = Settings(base_url=sandbox.base_url, api_key=TEST_KEY, max_retries=3)
    client = Client(settings, sleep=sleeper, on_retry=None)
    sandbox.fault(method="GET", path="/v1/batches", kind="status", status=503,
                  retry_after=0, times=1)
    with pytest.raises(KeyboardInterrupt):
        client.list_batches(limit=1)
