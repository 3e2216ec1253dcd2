"""Plain-HTTP tests of the sandbox server: the rules the SDKs do not exercise.

Upload rejections and their exact messages, multipart field orders, partial results
(skip / X-Last-Line / X-Incomplete) across a running batch, out-of-order completion, status
progression, cancel and retry semantics, pagination, --openai-compat, and every fault kind.
Batches are moved deterministically with --manual + /_sandbox/advance wherever possible.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import time

import jsonschema
import pytest
import requests
from conftest import PYTHON, SCRIPTS, TEST_KEY

CHAT = "/v1/chat/completions"
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


# --- helpers ------------------------------------------------------------------------------
def chat_line(custom_id: str, prompt: str = "hello", url: str = CHAT, **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url,
            "body": {"model": "sandbox-chat", "messages": [{"role": "user", "content": prompt}],
                     **body}}


def jsonl(lines: list[dict]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0undary-XyZ"):
    """A multipart body with the parts in exactly this order."""
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        if filename:
            out += b"Content-Type: application/jsonl\r\n"
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def upload(sb, data: bytes, filename: str = "in.jsonl", **kw) -> requests.Response:
    """Upload the way the openai SDK does (purpose first, then file)."""
    return sb.post("/files", files={"file": (filename, data)}, data={"purpose": "batch"}, **kw)


def upload_ok(sb, lines: list[dict]) -> str:
    r = upload(sb, jsonl(lines))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def create(sb, file_id: str, **extra) -> dict:
    payload = {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h", **extra}
    r = sb.post("/batches", json=payload)
    assert r.status_code == 201, r.text
    return r.json()


def batch_of(sb, lines: list[dict], **extra) -> dict:
    return create(sb, upload_ok(sb, lines), **extra)


def content(sb, file_id: str, **params) -> tuple[requests.Response, list[dict]]:
    r = sb.get(f"/files/{file_id}/content", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-ndjson"
    assert r.text == "" or r.text.endswith("\n")
    return r, [json.loads(x) for x in r.text.splitlines()]


def get_batch(sb, batch_id: str) -> dict:
    r = sb.get(f"/batches/{batch_id}")
    assert r.status_code == 200, r.text
    return r.json()


def wait_status(sb, batch_id: str, wanted: set[str], timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        batch = get_batch(sb, batch_id)
        if batch["status"] in wanted:
            return batch
        assert time.monotonic() < deadline, f"batch stuck in {batch['status']}"
        time.sleep(0.03)


def raw_get(sb, path: str) -> tuple[int, dict, bytes, bool]:
    """GET with http.client: (status, headers, body bytes received, complete?)."""
    conn = http.client.HTTPConnection("127.0.0.1", sb.port, timeout=10)
    conn.request("GET", "/v1" + path, headers=AUTH)
    resp = conn.getresponse()
    headers = {k.lower(): v for k, v in resp.getheaders()}
    try:
        return resp.status, headers, resp.read(), True
    except http.client.IncompleteRead as exc:
        return resp.status, headers, exc.partial, False
    finally:
        conn.close()


@pytest.fixture
def manual(sandbox_factory):
    return sandbox_factory("--manual", "--enable-faults", "--seed", "1")


# --- auth, ids, plain-text errors ---------------------------------------------------------
def test_auth_and_id_errors_use_the_real_words(manual):
    sb = manual
    r = requests.get(sb.base_url + "/batches", timeout=10)
    assert (r.status_code, r.text) == (401, "Authentication required")
    assert r.headers["content-type"].startswith("text/plain")
    r = requests.get(sb.base_url + "/batches", headers={"Authorization": "Bearer wrong"},
                     timeout=10)
    assert r.status_code == 401
    assert sb.get("/batches/not-a-uuid").text == "Invalid batch ID format"
    missing = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
    r = sb.get(f"/batches/{missing}")
    assert (r.status_code, r.text) == (404, f"Batch with ID {missing} not found")
    r = sb.get(f"/files/{missing}")
    assert (r.status_code, r.text) == (404, f"File with ID {missing} not found")
    assert sb.get("/files/nope/content").status_code == 400
    fid = upload_ok(sb, [chat_line("a")])
    bad = {"input_file_id": fid, "endpoint": CHAT, "completion_window": "48h"}
    r = sb.post("/batches", json=bad)
    assert (r.status_code, r.text) == (400, "Unsupported completion_window. Allowed values: "
                                            "24h, 1h")
    r = sb.post("/batches", json={**bad, "completion_window": "24h", "endpoint": "/v1/x"})
    assert r.status_code == 400 and r.text.startswith("Unsupported endpoint '/v1/x'")
    r = sb.post("/batches", json={**bad, "completion_window": "24h", "input_file_id": "x"})
    assert (r.status_code, r.text) == (400, "Invalid input_file_id format")
    r = sb.post("/batches", json={**bad, "completion_window": "24h", "input_file_id": missing})
    assert r.status_code == 404
    r = sb.post("/batches", json={"endpoint": CHAT, "completion_window": "24h"})
    assert r.status_code == 422 and "input_file_id" in r.text


def test_objects_are_bare_uuids_without_null_fields(manual):
    sb = manual
    fid = upload_ok(sb, [chat_line("a")])
    f = sb.get(f"/files/{fid}").json()
    batch = create(sb, fid, metadata={"job": "j1"})
    for obj in (f, batch, sb.get("/batches").json(), sb.get("/files").json()):
        text = json.dumps(obj)
        assert "null" not in text, f"null field sent: {text}"
    assert len(fid) == 36 and fid.count("-") == 4
    assert batch["status"] == "validating" and batch["request_counts"]["total"] == 1
    assert batch["output_file_id"] and batch["error_file_id"]  # set at creation
    assert batch["metadata"]["job"] == "j1"
    assert batch["expires_at"] - batch["created_at"] == 86400
    assert {"id", "object", "bytes", "created_at", "filename", "purpose"} <= set(f)


# --- uploads --------------------------------------------------------------------------------
GOOD = json.dumps(chat_line("ok-1"))
REJECTIONS = [
    ("bad json", f"{GOOD}\n{{\"custom_id\": \n", 400, "Invalid JSON on line 2: "),
    ("blank lines not counted", f"\n\n{GOOD}\n\n   \n{{oops\n", 400, "Invalid JSON on line 2: "),
    ("missing custom_id", json.dumps({"method": "POST", "url": CHAT, "body": {}}), 400,
     "Invalid JSON on line 1: missing field `custom_id`"),
    ("missing body", json.dumps({"custom_id": "a", "method": "POST", "url": CHAT}), 400,
     "Invalid JSON on line 1: missing field `body`"),
    ("missing model", json.dumps({"custom_id": "a", "method": "POST", "url": CHAT,
                                  "body": {"messages": []}}), 400,
     "Line 1: Missing 'model' field in request body"),
    ("bad method", f"{GOOD}\n" + json.dumps({**chat_line("b"), "method": "GET"}), 400,
     "Line 2: Unsupported HTTP method 'GET'. Only POST is currently supported."),
    ("bad url", json.dumps({**chat_line("b"), "url": "/v1/chat"}), 400,
     "Line 1: Unsupported URL path '/v1/chat'. Allowed paths are: /v1/chat/completions, "
     "/v1/completions, /v1/embeddings, /v1/responses, /v1/messages"),
    ("65-byte custom_id", json.dumps(chat_line("x" * 65)), 400,
     "Line 1: custom_id exceeds maximum length of 64 characters (got 65)"),
    ("custom_id counted in bytes", json.dumps(chat_line("é" * 33), ensure_ascii=False), 400,
     "Line 1: custom_id exceeds maximum length of 64 characters (got 66)"),
    ("control char in custom_id", json.dumps(chat_line("a\nb")), 400,
     "Line 1: custom_id contains invalid characters: must be valid ASCII without control "
     "characters"),
    ("empty file", "", 400, "File contains no valid request templates"),
    ("only blank lines", "\n \r\n\n", 400, "File contains no valid request templates"),
    ("forbidden model", json.dumps({**chat_line("a"), "body": {"model": "gpt-4o"}}), 403,
     "Line 1: Model 'gpt-4o' has not been configured or is not available to user"),
    ("chat model on embeddings", json.dumps(chat_line("a", url="/v1/embeddings")), 400,
     "Line 1: Model 'sandbox-chat' is a chat model but endpoint '/v1/embeddings' requires an "
     "embedding model"),
]


def test_each_upload_rejection_has_its_message_and_stores_nothing(manual):
    sb = manual
    for name, text, status, message in REJECTIONS:
        r = upload(sb, text.encode())
        assert r.status_code == status, (name, r.text)
        assert r.text.startswith(message), (name, r.text)
        assert r.headers["content-type"].startswith("text/plain"), name
    bad = GOOD.encode() + b"\n" + GOOD.replace("ok-1", "ok-\xff").encode("latin-1") + b"\n"
    r = upload(sb, bad)
    offset = len(GOOD) + 1 + GOOD.index("ok-1") + 3
    assert r.status_code == 400
    assert r.text.startswith(f"File contains invalid UTF-8 on/near line 2 at byte offset "
                             f"{offset}"), r.text
    assert sb.get("/files").json()["data"] == [], "a rejected upload must store nothing"
    r = sb.post("/files", files={"file": ("x.jsonl", GOOD)}, data={"purpose": "fine-tune"})
    assert r.status_code == 400 and "purpose" in r.text
    r = sb.post("/files", data={"purpose": "batch"}, files={"other": ("x", b"1")})
    assert (r.status_code, r.text) == (400, "No file field found in multipart upload")


def test_size_and_request_limits(sandbox_factory):
    sb = sandbox_factory("--max-file-bytes", "2000", "--max-requests", "2")
    line = GOOD.encode() + b"\n"
    for data in (line * 20, b"x" * 30_000):  # streamed past the limit / rejected up front
        r = upload(sb, data)
        assert (r.status_code, r.text) == (413, "File exceeds the maximum allowed size of "
                                                "2000 bytes")
    r = upload(sb, jsonl([chat_line(f"r{i}") for i in range(3)]))
    assert (r.status_code, r.text) == (400, "File contains 3 requests, which exceeds the "
                                            "maximum of 2")
    assert upload(sb, jsonl([chat_line("r1"), chat_line("r2")])).status_code == 201


def test_multipart_fields_in_any_order_and_chunked(manual):
    sb = manual
    data = b"\r\n" + jsonl([chat_line("a"), chat_line("b")]).replace(b"\n", b"\r\n") + b"\n\n"
    orders = [
        [("file", "first.jsonl", data), ("purpose", None, b"batch")],
        [("purpose", None, b"BATCH"), ("file", "second.jsonl", data)],
        [("file", "third.jsonl", data)],
        [("expires_after[anchor]", None, b"created_at"), ("file", "fourth.jsonl", data),
         ("expires_after[seconds]", None, b"3600"), ("purpose", None, b"batch")],
    ]
    for parts in orders:
        body, ctype = multipart(parts)
        r = requests.post(sb.base_url + "/files", data=body, timeout=10,
                          headers={**AUTH, "Content-Type": ctype})
        assert r.status_code == 201, r.text
        f = r.json()
        assert f["filename"] == parts[[p[0] for p in parts].index("file")][1]
        assert f["bytes"] == len(data) and f["purpose"] == "batch"
    assert f["expires_at"] - f["created_at"] == 3600
    body, ctype = multipart(orders[0])
    r = requests.post(sb.base_url + "/files", timeout=10,  # chunked transfer encoding
                      data=(body[i:i + 7] for i in range(0, len(body), 7)),
                      headers={**AUTH, "Content-Type": ctype})
    assert r.status_code == 201, r.text
    r, lines = content(sb, r.json()["id"])
    assert [x["custom_id"] for x in lines] == ["a", "b"]
    assert r.text.count("\r") == 0 and "x-last-line" not in r.headers
    r, lines = content(sb, f["id"], skip=1, limit=5)
    assert [x["custom_id"] for x in lines] == ["b"]
    assert (r.headers["x-last-line"], r.headers["x-incomplete"]) == ("2", "false")


# --- partial results, order, progression -------------------------------------------------------
def test_skip_last_line_and_incomplete_across_a_running_batch(manual):
    sb = manual
    batch = batch_of(sb, [chat_line(f"r{i}", f"prompt {i}") for i in range(10)])
    out = batch["output_file_id"]
    r, lines = content(sb, out)
    assert lines == [] and r.headers["x-incomplete"] == "true" and \
        r.headers["x-last-line"] == "0"
    assert "x-last-line" in [k for k, _ in r.raw.headers.items()], "header names lower case"
    sb.advance(batch["id"], 4)
    assert get_batch(sb, batch["id"])["status"] == "in_progress"
    r, first = content(sb, out)
    assert len(first) == 4 and (r.headers["x-last-line"], r.headers["x-incomplete"]) == \
        ("4", "true")
    r, none = content(sb, out, skip=4)
    assert none == [] and r.headers["x-last-line"] == "4"
    sb.advance(batch["id"], 3)
    r, page = content(sb, out, skip=1, limit=2)
    assert page == first[1:3] and r.headers["x-last-line"] == "3"
    r, offset_ignored = content(sb, out, offset=4)
    assert offset_ignored[:4] == first, "`offset` is ignored: the answer restarts at line 0"
    r, more = content(sb, out, skip=4)
    assert len(more) == 3 and r.headers["x-last-line"] == "7"
    sb.advance(batch["id"])
    done = get_batch(sb, batch["id"])
    assert done["status"] == "completed" and done["request_counts"]["completed"] == 10
    r, rest = content(sb, out, skip=7)
    assert len(rest) == 3 and (r.headers["x-last-line"], r.headers["x-incomplete"]) == \
        ("10", "false")
    r, _ = content(sb, out, limit=5)
    assert r.headers["x-incomplete"] == "true", "a limit page that leaves lines is incomplete"
    every = first + more + rest
    assert sorted(x["custom_id"] for x in every) == sorted(f"r{i}" for i in range(10))
    for x in every:
        answer = x["response"]["body"]["choices"][0]["message"]["content"]
        assert answer == f"ECHO prompt {x['custom_id'][1:]}", "result joined to its prompt"
        assert x["id"].startswith("batch_req_") and x["error"] is None
        assert x["response"]["status_code"] == 200


def test_completion_is_out_of_order_and_deterministic_per_seed(sandbox_factory):
    lines = [chat_line(f"r{i:02d}", f"p {i}") for i in range(30)]

    def order(seed: str) -> list[str]:
        sb = sandbox_factory("--rate", "0", "--validating-seconds", "0", "--seed", seed)
        batch = batch_of(sb, lines)
        wait_status(sb, batch["id"], {"completed"})
        return [x["custom_id"] for x in content(sb, batch["output_file_id"])[1]]

    first, again, other = order("5"), order("5"), order("6")
    assert sorted(first) == [x["custom_id"] for x in lines], "each result exactly once"
    assert first != sorted(first), "results must not come in input order"
    assert first == again, "same --seed, same completion order"
    assert first != other


def test_status_progression_in_the_background(sandbox_factory):
    sb = sandbox_factory("--rate", "25", "--validating-seconds", "0.3")
    batch = batch_of(sb, [chat_line(f"r{i}") for i in range(12)])
    seen = [batch["status"]]
    partial = False
    deadline = time.monotonic() + 15
    while seen[-1] not in ("completed", "failed") and time.monotonic() < deadline:
        b = get_batch(sb, batch["id"])
        if b["status"] != seen[-1]:
            seen.append(b["status"])
        partial |= b["status"] == "in_progress" and 0 < b["request_counts"]["completed"] < 12
        time.sleep(0.02)
    assert seen[0] == "validating" and seen[-1] == "completed"
    assert "in_progress" in seen and partial, seen
    assert [s for s in seen if s not in ("in_progress", "finalizing")] == \
        ["validating", "completed"], seen
    b = get_batch(sb, batch["id"])
    assert b["created_at"] <= b["in_progress_at"] <= b["finalizing_at"] <= b["completed_at"]


def test_failures_go_to_the_error_file_and_all_failed_means_failed(manual):
    sb = manual
    batch = batch_of(sb, [chat_line("t500", "a [[fail:500]]"), chat_line("t400", "[[fail:400]]"),
                          chat_line("tto", "[[fail:timeout]]"), chat_line("txt", "[[fail:text]]")])
    sb.advance(batch["id"])
    done = get_batch(sb, batch["id"])
    assert done["status"] == "failed" and "failed_at" in done and "completed_at" not in done
    assert done["request_counts"] == {"total": 4, "completed": 0, "failed": 4}
    assert content(sb, done["output_file_id"])[1] == []
    errors = {e["custom_id"]: e for e in content(sb, done["error_file_id"])[1]}
    assert set(errors) == {"t500", "t400", "tto", "txt"}
    for e in errors.values():
        assert e["response"] is None and e["error"]["code"] is None
        assert isinstance(e["error"]["message"], str)
    assert json.loads(errors["t500"]["error"]["message"])["type"] == "RetriableHttpStatus"
    detail = json.loads(errors["t400"]["error"]["message"])
    assert detail["type"] == "NonRetriableHttpStatus" and detail["details"]["status"] == 400
    assert json.loads(errors["tto"]["error"]["message"])["type"] == "Timeout"
    with pytest.raises(json.JSONDecodeError):
        json.loads(errors["txt"]["error"]["message"])


# --- cancel and retry -------------------------------------------------------------------------
def test_retry_in_place_takes_failures_out_of_the_error_view(manual):
    sb = manual
    batch = batch_of(sb, [chat_line(f"r{i}") for i in range(5)] +
                     [chat_line("bad", "[[fail:503]]")])
    r = sb.post(f"/batches/{batch['id']}/retry")
    assert r.status_code == 400 and r.text.startswith("Nothing to retry")
    sb.advance(batch["id"])
    done = get_batch(sb, batch["id"])
    assert done["status"] == "completed" and done["request_counts"]["failed"] == 1
    assert len(content(sb, done["error_file_id"])[1]) == 1
    r = sb.post(f"/batches/{batch['id']}/retry")
    assert r.status_code == 200
    again = r.json()
    assert (again["id"], again["output_file_id"]) == (batch["id"], batch["output_file_id"])
    assert again["status"] == "in_progress" and again["request_counts"]["failed"] == 0
    assert "completed_at" not in again
    resp, errors = content(sb, done["error_file_id"])
    assert errors == [] and resp.headers["x-incomplete"] == "true"
    results = [json.loads(x) for x in sb.get(f"/batches/{batch['id']}/results").text.splitlines()]
    assert [x["custom_id"] for x in results] == [f"r{i}" for i in range(5)] + ["bad"]
    assert results[-1]["status"] in ("pending", "in_progress")
    assert results[0]["status"] == "completed" and results[0]["response_body"]["choices"]
    sb.advance(batch["id"])
    final = get_batch(sb, batch["id"])
    assert final["status"] == "completed" and final["request_counts"]["failed"] == 1
    assert len(content(sb, final["output_file_id"])[1]) == 5


def test_cancel_then_retry_revives_the_cancelled_requests(manual):
    sb = manual
    batch = batch_of(sb, [chat_line(f"r{i}", f"p{i}") for i in range(6)])
    sb.advance(batch["id"], 2)
    r = sb.post(f"/batches/{batch['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelling"
    assert "cancelling_at" in r.json()
    sb.advance(batch["id"])
    done = get_batch(sb, batch["id"])
    assert done["status"] == "cancelled" and "cancelled_at" in done
    assert done["request_counts"] == {"total": 6, "completed": 2, "failed": 0}
    assert len(content(sb, done["output_file_id"])[1]) == 2
    assert content(sb, done["error_file_id"])[1] == [], "cancelled requests in neither file"
    assert content(sb, done["output_file_id"])[0].headers["x-incomplete"] == "false"
    r = sb.post(f"/batches/{batch['id']}/cancel")  # always 200, even when finished
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert sb.post(f"/batches/{batch['id']}/retry").json()["status"] == "in_progress"
    sb.advance(batch["id"])
    final = get_batch(sb, batch["id"])
    assert final["status"] == "completed" and final["request_counts"]["completed"] == 6


def test_retry_rebuilds_the_error_file_as_the_service_does(manual):
    """/retry rebuilds the error file (API facts): every retried request leaves it at once,
    those that fail again come back at the end in the order they fail, one line each, and
    requests revived from `cancelled` that fail join them, so the file can end up longer
    than before the retry; lines saved before no longer line up with skip."""
    sb = manual
    lines = ([chat_line(f"f{i}", f"[[fail:400]] {i}") for i in range(3)] +
             [chat_line(f"o{i}", f"p{i}") for i in range(3)])
    batch = batch_of(sb, lines)
    sb.advance(batch["id"], 3)
    sb.post(f"/batches/{batch['id']}/cancel")
    sb.advance(batch["id"])
    before = content(sb, batch["error_file_id"])[1]
    failed_before = {x["custom_id"] for x in before}
    assert get_batch(sb, batch["id"])["request_counts"]["failed"] == len(before)
    assert sb.post(f"/batches/{batch['id']}/retry").status_code == 200
    resp, emptied = content(sb, batch["error_file_id"])
    assert emptied == [] and resp.headers["x-last-line"] == "0"
    sb.advance(batch["id"], 1)
    one = content(sb, batch["error_file_id"])[1]
    sb.advance(batch["id"])
    after = content(sb, batch["error_file_id"])[1]
    assert [x["custom_id"] for x in after[:len(one)]] == [x["custom_id"] for x in one]
    assert sorted(x["custom_id"] for x in after) == ["f0", "f1", "f2"]
    assert len(after) > len(before) and failed_before < {"f0", "f1", "f2"}
    final = get_batch(sb, batch["id"])
    assert final["request_counts"] == {"total": 6, "completed": 3, "failed": 3}


def test_cancel_with_no_body_and_keep_alive(manual):
    sb = manual
    batch = batch_of(sb, [chat_line("a")])
    conn = http.client.HTTPConnection("127.0.0.1", sb.port, timeout=10)
    conn.putrequest("POST", f"/v1/batches/{batch['id']}/cancel")
    conn.putheader("Authorization", f"Bearer {TEST_KEY}")
    conn.endheaders()  # no body, no Content-Length
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["status"] == "cancelling"
    conn.request("GET", f"/v1/batches/{batch['id']}", headers=AUTH)  # same connection
    assert json.loads(conn.getresponse().read())["id"] == batch["id"]
    conn.close()


def test_cancelled_while_validating_stays_cancelling(sandbox_factory, manual):
    batch = batch_of(manual, [chat_line("a")])
    manual.post(f"/batches/{batch['id']}/cancel")
    manual.advance(batch["id"])
    assert get_batch(manual, batch["id"])["status"] == "cancelling"
    sb = sandbox_factory("--validating-seconds", "30")
    batch = batch_of(sb, [chat_line("a")])
    sb.post(f"/batches/{batch['id']}/cancel")
    time.sleep(0.2)
    assert get_batch(sb, batch["id"])["status"] == "cancelling"


def test_delete_batch_and_delete_file(manual):
    sb = manual
    fid = upload_ok(sb, [chat_line("a"), chat_line("b")])
    running = create(sb, fid)
    sb.advance(running["id"], 1)
    r = sb.post("/batches", json={"input_file_id": fid, "endpoint": CHAT,
                                  "completion_window": "1h"})
    doomed = r.json()
    r = requests.delete(f"{sb.base_url}/batches/{doomed['id']}", headers=AUTH, timeout=10)
    assert (r.status_code, r.content) == (204, b"")
    assert sb.get(f"/batches/{doomed['id']}").status_code == 404
    r = requests.delete(f"{sb.base_url}/files/{fid}", headers=AUTH, timeout=10)
    assert r.json() == {"id": fid, "object": "file", "deleted": True}
    assert sb.get(f"/files/{fid}").status_code == 404
    after = get_batch(sb, running["id"])
    assert after["status"] == "cancelling", \
        "deleting the input file cancels batches still running on it"
    assert "input_file_id" not in after, "and unlinks it from them; the batch stays"


# --- lists ------------------------------------------------------------------------------------
def test_pagination_search_and_filters(manual):
    sb = manual
    ids = []
    for i in range(5):
        fid = upload_ok(sb, [chat_line(f"r{i}")])
        ids.append(create(sb, fid, metadata={"job": f"job-{i}", "team": "blue"})["id"])
    seen, after = [], None
    while True:
        page = sb.get("/batches", params={"limit": 2, **({"after": after} if after else {})})
        data = page.json()
        seen += [b["id"] for b in data["data"]]
        assert data["first_id"] == data["data"][0]["id"]
        if not data["has_more"]:
            break
        after = data["last_id"]
    assert seen == ids[::-1], "newest first, each exactly once"
    assert len(sb.get("/batches", params={"limit": 500}).json()["data"]) == 5
    found = sb.get("/batches", params={"search": "JOB-3"}).json()["data"]
    assert [b["id"] for b in found] == [ids[3]]
    assert [b["id"] for b in sb.get("/batches", params={"search": ids[1][:13]}).json()["data"]]\
        == [ids[1]]
    assert len(sb.get("/batches", params={"search": "in.jsonl"}).json()["data"]) == 5
    sb.post(f"/batches/{ids[0]}/cancel")
    only = sb.get("/batches", params={"status": "cancelling"}).json()["data"]
    assert [b["id"] for b in only] == [ids[0]]
    files = sb.get("/files", params={"purpose": "batch", "limit": 101}).json()
    assert len(files["data"]) == 5 and all(f["purpose"] == "batch" for f in files["data"])
    asc = sb.get("/files", params={"purpose": "batch", "order": "asc"}).json()["data"]
    assert [f["id"] for f in asc] == [f["id"] for f in files["data"]][::-1]
    page = sb.get("/files", params={"limit": 3}).json()
    assert page["has_more"] and len(page["data"]) == 3
    rest = sb.get("/files", params={"limit": 101, "after": page["last_id"]}).json()
    assert len(page["data"]) + len(rest["data"]) == 15  # 5 inputs + 5 outputs + 5 error files


# --- mock models ----------------------------------------------------------------------------
def test_mock_models_answers(manual):
    sb = manual
    schema = {"type": "object", "properties": {"label": {"type": "string", "enum": ["a", "b"]},
                                               "score": {"type": "integer", "minimum": 3},
                                               "tags": {"type": "array",
                                                        "items": {"type": "string"}}},
              "required": ["label", "score", "tags"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    lines = [chat_line("cut", "one two three four", max_tokens=2),
             chat_line("schema", "classify me", response_format=fmt),
             chat_line("badjson", "[[bad_json]]", response_format=fmt),
             chat_line("invalid", "[[schema_invalid]]", response_format=fmt),
             {"custom_id": "comp", "method": "POST", "url": "/v1/completions",
              "body": {"model": "sandbox-chat", "prompt": "say hi"}},
             {"custom_id": "resp", "method": "post", "url": "/v1/responses",
              "body": {"model": "sandbox-chat", "input": "a b c d", "max_output_tokens": 1}},
             {"custom_id": "msg", "method": "POST", "url": "/v1/messages",
              "body": {"model": "sandbox-chat", "max_tokens": 1,
                       "messages": [{"role": "user", "content": "x y"}]}}]
    batch = batch_of(sb, lines)
    emb_file = upload_ok(sb, [{"custom_id": "e", "method": "POST", "url": "/v1/embeddings",
                               "body": {"model": "sandbox-embed", "input": "same text"}}])
    emb = create(sb, emb_file, endpoint="/v1/embeddings")
    sb.advance()
    out = {x["custom_id"]: x["response"]["body"]
           for x in content(sb, batch["output_file_id"])[1]}
    cut = out["cut"]["choices"][0]
    assert (cut["message"]["content"], cut["finish_reason"]) == ("ECHO one", "length")
    assert out["cut"]["usage"] == {"prompt_tokens": 4, "completion_tokens": 2,
                                   "total_tokens": 6}
    jsonschema.validate(json.loads(out["schema"]["choices"][0]["message"]["content"]), schema)
    with pytest.raises(json.JSONDecodeError):
        json.loads(out["badjson"]["choices"][0]["message"]["content"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(out["invalid"]["choices"][0]["message"]["content"]),
                            schema)
    assert out["comp"]["choices"][0]["text"] == "ECHO say hi"
    assert out["resp"]["status"] == "incomplete"
    assert out["resp"]["output"][0]["content"][0]["text"] == "ECHO"
    assert out["msg"]["stop_reason"] == "max_tokens"
    vectors = content(sb, emb["output_file_id"])[1][0]["response"]["body"]["data"]
    assert len(vectors[0]["embedding"]) == 8
    assert all(-1 <= v <= 1 for v in vectors[0]["embedding"])
    analytics = sb.get(f"/batches/{batch['id']}/analytics").json()
    assert analytics["total_requests"] == 7 and analytics["total_tokens"] > 0
    estimate = sb.get(f"/files/{emb_file}/cost-estimate",
                      params={"completion_window": "1h"}).json()
    assert estimate["total_requests"] == 1 and float(estimate["total_estimated_cost"]) > 0


def test_the_server_retries_retriable_upstream_failures_itself(manual):
    """Like the service: a 5xx/429 upstream answer is retried while the request stays
    pending, so a passing failure never reaches the error file; only the final failure of
    an upstream that keeps failing is written, and a 4xx fails at once."""
    sb = manual
    batch = batch_of(sb, [chat_line("flaky503", "x [[flaky:503]]"),
                          chat_line("flaky429", "y [[flaky:429]]"),
                          chat_line("down", "z [[fail:503]]"),
                          chat_line("client", "w [[flaky:400]]")])
    sb.advance(batch["id"])
    done = get_batch(sb, batch["id"])
    assert done["request_counts"] == {"total": 4, "completed": 2, "failed": 2}
    errors = {e["custom_id"]: json.loads(e["error"]["message"])
              for e in content(sb, done["error_file_id"])[1]}
    assert set(errors) == {"down", "client"}, "a passing upstream failure is not reported"
    assert errors["down"]["type"] == "RetriableHttpStatus"
    assert errors["client"]["type"] == "NonRetriableHttpStatus"
    answered = {x["custom_id"] for x in content(sb, done["output_file_id"])[1]}
    assert answered == {"flaky503", "flaky429"}


def test_outage_marker_fails_its_first_run_then_succeeds_when_sent_again(manual):
    """[[outage:NNN]]: what the service reports after its own retries ran out (a
    RetriableHttpStatus worth sending again), for rehearsing a retry."""
    sb = manual
    lines = [chat_line("steady"), chat_line("outage", "try me [[outage:503]]")]
    first = batch_of(sb, lines)
    sb.advance(first["id"])
    assert get_batch(sb, first["id"])["request_counts"] == {"total": 2, "completed": 1,
                                                             "failed": 1}
    error = content(sb, first["error_file_id"])[1][0]
    assert error["custom_id"] == "outage"
    assert json.loads(error["error"]["message"])["type"] == "RetriableHttpStatus"
    assert sb.post(f"/batches/{first['id']}/retry").status_code == 200
    sb.advance(first["id"])
    done = get_batch(sb, first["id"])
    assert done["status"] == "completed" and done["request_counts"]["failed"] == 0
    again = batch_of(sb, [lines[1]])
    sb.advance(again["id"])
    assert get_batch(sb, again["id"])["request_counts"]["completed"] == 1, \
        "a body that failed its first run succeeds in any later batch"


# --- clock and compat mode --------------------------------------------------------------------
def test_expiry_is_a_timestamp_not_a_status(manual):
    sb = manual
    batch = batch_of(sb, [chat_line("a"), chat_line("b")])
    sb.advance(batch["id"], 1)
    sb.control("POST", "/clock", {"advance_seconds": 25 * 3600})
    b = get_batch(sb, batch["id"])
    assert b["status"] == "in_progress" and b["expired_at"] >= b["expires_at"]
    sb.advance(batch["id"])
    assert get_batch(sb, batch["id"])["status"] == "completed", "work goes on past expiry"
    listed = sb.get("/batches", params={"status": "expired"}).json()["data"]
    assert [x["id"] for x in listed] == [batch["id"]]


def test_openai_compat_mode(sandbox_factory):
    sb = sandbox_factory("--openai-compat", "--manual")
    batch = batch_of(sb, [chat_line("a"), chat_line("b", "[[fail:400]]"), chat_line("c")])
    assert "output_file_id" not in batch and "error_file_id" not in batch
    assert "request_source" not in batch["metadata"]
    sb.advance(batch["id"], 2)
    assert "output_file_id" not in get_batch(sb, batch["id"])
    sb.advance(batch["id"])
    done = get_batch(sb, batch["id"])
    assert done["status"] == "completed"
    r, lines = content(sb, done["output_file_id"], skip=1, limit=1)
    assert len(lines) == 2, "skip/limit are ignored: one final file"
    assert "x-incomplete" not in r.headers and "x-last-line" not in r.headers
    assert [e["custom_id"] for e in content(sb, done["error_file_id"])[1]] == ["b"]
    r = sb.post(f"/batches/{batch['id']}/retry")
    assert r.status_code == 404
    assert "error" in sb.get("/batches/bad-id").json()  # OpenAI-style JSON errors
    late = batch_of(sb, [chat_line("x"), chat_line("y")])
    sb.advance(late["id"], 1)
    sb.control("POST", "/clock", {"advance_seconds": 86401})
    expired = get_batch(sb, late["id"])
    assert expired["status"] == "expired" and "expired_at" in expired
    errors = content(sb, expired["error_file_id"])[1]
    assert [e["error"]["code"] for e in errors] == ["batch_expired"]


# --- faults -----------------------------------------------------------------------------------
def test_status_faults(manual):
    sb = manual
    fid = upload_ok(sb, [chat_line("a")])
    sb.fault(method="POST", path="/v1/batches", kind="status", status=503, retry_after=7)
    sb.fault(method="*", path="/v1/batches", kind="status", status=429, times=1)
    sb.fault(method="POST", path="/v1/batches", kind="status", status=502, times=2)
    payload = {"input_file_id": fid, "endpoint": CHAT, "completion_window": "24h"}
    r = sb.post("/batches", json=payload)
    assert r.status_code == 503 and r.headers["retry-after"] == "7"
    assert r.json() == {"error": "service_unavailable", "message": r.json()["message"],
                        "retry_after_seconds": 7}
    r = sb.post("/batches", json=payload)
    assert r.status_code == 429 and r.json()["error"] == "too_many_requests"
    assert r.headers["retry-after"] == "1"
    for _ in range(2):
        r = sb.post("/batches", json=payload)
        assert r.status_code == 502 and r.headers["content-type"].startswith("text/plain")
    assert sb.get("/batches").json()["data"] == [], "a status fault processes nothing"
    assert sb.post("/batches", json=payload).status_code == 201
    calls = [c for c in sb.calls() if c["path"] == "/v1/batches" and c["method"] == "POST"]
    assert [(c["status"], c["fault"]) for c in calls] == [
        (503, "status"), (429, "status"), (502, "status"), (502, "status"), (201, None)]
    sb.control("DELETE", "/calls")
    assert sb.calls() == []


def test_drop_tear_delay_faults_on_content(manual):
    sb = manual
    batch = batch_of(sb, [chat_line(f"r{i}", f"text {i}") for i in range(5)])
    sb.advance(batch["id"])
    path = f"/files/{batch['output_file_id']}/content"
    status, headers, full, complete = raw_get(sb, path)
    assert complete and len(full) == int(headers["content-length"])
    sb.fault(method="GET", path="/v1/files/*/content", kind="drop", after_bytes=50)
    status, headers, got, complete = raw_get(sb, path)
    assert (status, complete, got) == (200, False, full[:50])
    sb.fault(method="GET", path="/v1/files/*/content", kind="tear")
    status, headers, got, complete = raw_get(sb, path)
    last = full[full.rstrip(b"\n").rfind(b"\n") + 1:]
    assert not complete and got == full[: len(full) - (len(last) + 1) // 2]
    assert headers["x-last-line"] == "5"
    sb.fault(method="GET", path="/v1/files/*/content", kind="delay", seconds=0.4)
    start = time.monotonic()
    assert raw_get(sb, path)[2] == full
    assert time.monotonic() - start >= 0.4
    sb.fault(method="GET", path="/v1/files/*/content", kind="stall", after_bytes=50,
             seconds=1.0)
    conn = http.client.HTTPConnection("127.0.0.1", sb.port, timeout=10)
    conn.request("GET", "/v1" + path, headers=AUTH)
    start = time.monotonic()
    resp = conn.getresponse()
    head = resp.read(50)  # the first 50 bytes come at once, the rest after the pause
    head_at = time.monotonic() - start
    rest = resp.read()
    conn.close()
    assert head + rest == full and head_at < 0.8 <= 1.0 <= time.monotonic() - start
    assert raw_get(sb, path)[2] == full, "faults hit only `times` calls"


def test_lose_response_and_reset_upload(manual):
    sb = manual
    fid = upload_ok(sb, [chat_line("a")])
    sb.fault(method="POST", path="/v1/batches", kind="lose_response")
    with pytest.raises(requests.ConnectionError):
        sb.post("/batches", json={"input_file_id": fid, "endpoint": CHAT,
                                  "completion_window": "24h", "metadata": {"job": "lost-1"}})
    found = sb.get("/batches", params={"search": "lost-1"}).json()["data"]
    assert len(found) == 1, "the batch exists although its answer was lost"
    sb.fault(method="POST", path="/v1/files", kind="reset_upload", after_bytes=1000)
    with pytest.raises(requests.ConnectionError):
        upload(sb, jsonl([chat_line(f"r{i}") for i in range(400)]))
    assert len(sb.get("/files", params={"purpose": "batch"}).json()["data"]) == 1
    assert upload(sb, jsonl([chat_line("again")])).status_code == 201
    r = requests.post(sb.root_url + "/_sandbox/faults", json={"kind": "nope"}, timeout=10)
    assert r.status_code == 400 and "kind" in r.text


def test_control_interface_is_off_by_default(sandbox_factory):
    sb = sandbox_factory()
    r = requests.post(sb.root_url + "/_sandbox/advance", json={}, timeout=10)
    assert r.status_code == 404


# --- the command line -------------------------------------------------------------------------
def test_refuses_remote_host_and_stops_cleanly_on_sigterm(sandbox_factory):
    proc = subprocess.run([PYTHON, str(SCRIPTS / "sandbox_server.py"), "--host", "0.0.0.0",
                           "--port", "0"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--allow-remote" in proc.stderr
    sb = sandbox_factory()
    assert sb.get("/files").status_code == 200
    sb.proc.send_signal(signal.SIGTERM)
    assert sb.proc.wait(timeout=10) == 0
    helptext = subprocess.run([PYTHON, str(SCRIPTS / "sandbox_server.py"), "--help"],
                              capture_output=True, text=True, timeout=30).stdout
    for needle in ("--manual", "/_sandbox/faults", "reset_upload", "[[fail:NNN]]",
                   "--openai-compat", "examples:"):
        assert needle in helptext


# --- where the service differs from what a client would guess --------------------------------
def test_cancel_of_a_finished_batch_makes_it_cancelled_for_good(manual):
    """The service's cancel has no state check: a completed batch answers 200 and reports
    `cancelled` from then on, its results still readable."""
    sb = manual
    batch = batch_of(sb, [chat_line("a"), chat_line("b")])
    sb.advance(batch["id"])
    assert get_batch(sb, batch["id"])["status"] == "completed"
    r = sb.post(f"/batches/{batch['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    sb.advance(batch["id"])
    after = get_batch(sb, batch["id"])
    assert after["status"] == "cancelled" and "cancelled_at" in after
    assert after["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    resp, lines = content(sb, batch["output_file_id"])
    assert len(lines) == 2 and resp.headers["x-incomplete"] == "false"


def test_models_lists_the_mock_models_openai_style(manual):
    sb = manual
    r = sb.get("/models")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["sandbox-chat", "sandbox-embed"]
    for model in body["data"]:
        assert set(model) == {"id", "object", "created", "owned_by"}
        assert model["object"] == "model" and isinstance(model["created"], int)
    r = requests.get(sb.base_url + "/models", timeout=10)
    assert r.status_code == 401
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "code"}, "errors on /models are OpenAI-style JSON"


def test_models_follow_the_configured_names(sandbox_factory):
    sb = sandbox_factory("--chat-models", "m-one,m-two", "--embedding-models", "e-one")
    assert [m["id"] for m in sb.get("/models").json()["data"]] == ["m-one", "m-two", "e-one"]
    r = upload(sb, jsonl([chat_line("a")]))  # sandbox-chat is not served here
    assert (r.status_code, r.text) == (
        403, "Line 1: Model 'sandbox-chat' has not been configured or is not available to user")


def test_files_can_be_searched_by_filename(manual):
    sb = manual
    for name in ("prompts.a1b2c3d4.jsonl", "prompts.ffff0000.jsonl", "other.jsonl"):
        assert upload(sb, jsonl([chat_line("a")]), filename=name).status_code == 201
    found = sb.get("/files", params={"search": "A1B2C3"}).json()["data"]
    assert [f["filename"] for f in found] == ["prompts.a1b2c3d4.jsonl"], "case-insensitive"
    found = sb.get("/files", params={"search": "prompts."}).json()["data"]
    assert sorted(f["filename"] for f in found) == ["prompts.a1b2c3d4.jsonl",
                                                    "prompts.ffff0000.jsonl"]
    assert sb.get("/files", params={"search": "nothing-like-it"}).json()["data"] == []


def test_analytics_reports_the_actual_cost(manual):
    sb = manual
    batch = batch_of(sb, [chat_line("a", "one two three"), chat_line("b", "four five")])
    sb.advance(batch["id"])
    stats = sb.get(f"/batches/{batch['id']}/analytics").json()
    assert stats["total_prompt_tokens"] == 5 and stats["total_completion_tokens"] == 7
    assert isinstance(stats["total_cost"], str), "the service sends a decimal string"
    expected = 5 * 0.10 / 1e6 + 7 * 0.40 / 1e6  # the sandbox's made-up 24h prices
    assert abs(float(stats["total_cost"]) - expected) < 1e-9


def test_results_show_cancelled_requests_as_pending_and_filter(manual):
    sb = manual
    batch = batch_of(sb, [chat_line(f"row-{i}", f"p{i}") for i in range(4)] +
                     [chat_line("bad-1", "[[fail:400]]")])
    sb.advance(batch["id"], 3)
    sb.post(f"/batches/{batch['id']}/cancel")
    sb.advance(batch["id"])
    assert get_batch(sb, batch["id"])["status"] == "cancelled"
    r = sb.get(f"/batches/{batch['id']}/results")
    rows = [json.loads(x) for x in r.text.splitlines()]
    assert len(rows) == 5 and {x["status"] for x in rows} <= {"completed", "failed", "pending"}
    assert sum(x["status"] == "pending" for x in rows) == 2, "cancelled requests show pending"
    assert (r.headers["x-incomplete"], r.headers["x-last-line"]) == ("false", "5")
    r = sb.get(f"/batches/{batch['id']}/results", params={"skip": 1, "limit": 2})
    assert [json.loads(x)["custom_id"] for x in r.text.splitlines()] == ["row-1", "row-2"]
    assert (r.headers["x-incomplete"], r.headers["x-last-line"]) == ("true", "3")
    found = sb.get(f"/batches/{batch['id']}/results", params={"search": "BAD"}).text
    assert [json.loads(x)["custom_id"] for x in found.splitlines()] == ["bad-1"]
    pending = sb.get(f"/batches/{batch['id']}/results", params={"status": "pending"}).text
    assert len(pending.splitlines()) == 2


def test_retry_requests_revives_only_the_chosen_failures(manual):
    sb = manual
    batch = batch_of(sb, [chat_line("ok"), chat_line("f1", "[[outage:503]] one"),
                          chat_line("f2", "[[outage:503]] two")])
    sb.advance(batch["id"])
    rows = [json.loads(x) for x in sb.get(f"/batches/{batch['id']}/results").text.splitlines()]
    chosen = [x["id"] for x in rows if x["custom_id"] == "f1"]
    r = sb.post(f"/batches/{batch['id']}/retry-requests", json={"request_ids": chosen})
    assert r.status_code == 200 and r.json()["request_counts"]["failed"] == 1
    assert [e["custom_id"] for e in content(sb, batch["error_file_id"])[1]] == ["f2"], \
        "the error file is rebuilt: the retried request left it"
    sb.advance(batch["id"])
    assert get_batch(sb, batch["id"])["request_counts"] == {"total": 3, "completed": 2,
                                                             "failed": 1}
    r = sb.post(f"/batches/{batch['id']}/retry-requests", json={"request_ids": ["nope"]})
    assert r.status_code == 400 and r.text.startswith("Nothing to retry")
