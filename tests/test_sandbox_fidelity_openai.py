"""The official `openai` SDK, a client nobody here wrote, drives the sandbox end to end:
upload, create, retrieve, list with auto-pagination, cancel, and the output and error files,
each result joined back to its input by custom_id and checked against the prompt it came from."""

from __future__ import annotations

import json
import time

import pytest

openai = pytest.importorskip("openai")

from conftest import TEST_KEY  # noqa: E402

CHAT = "/v1/chat/completions"
TERMINAL = {"completed", "failed", "cancelled", "expired"}


def client_for(sb) -> openai.OpenAI:
    return openai.OpenAI(base_url=sb.base_url, api_key=TEST_KEY, max_retries=0, timeout=30)


def chat_line(custom_id: str, prompt: str, **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": CHAT,
            "body": {"model": "sandbox-chat",
                     "messages": [{"role": "system", "content": "be brief"},
                                  {"role": "user", "content": prompt}], **body}}


def write_jsonl(path, lines: list[dict]):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def wait_terminal(client, batch_id: str, sb=None, deadline_s: float = 30):
    """Poll like a client would; in a --manual sandbox, nudge it with /_sandbox/advance."""
    deadline = time.monotonic() + deadline_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} stuck in {batch.status}"
        if sb is not None:
            sb.advance(batch_id)
        time.sleep(0.05)


def ndjson(client, file_id: str) -> list[dict]:
    text = client.files.content(file_id).text
    assert text == "" or text.endswith("\n"), "every line must end with a newline"
    return [json.loads(line) for line in text.splitlines()]


def expected_answer(prompt: str, max_tokens: int | None = None) -> str:
    words = ("ECHO " + prompt).split()
    return " ".join(words[:max_tokens] if max_tokens else words)


def test_round_trip_results_match_their_prompts(sandbox_factory, tmp_path):
    sb = sandbox_factory("--rate", "0", "--validating-seconds", "0", "--seed", "3")
    client = client_for(sb)
    prompts = {f"req-{i:02d}": f"prompt number {i} about {'xyz' * (i % 3)}" for i in range(12)}
    lines = [chat_line(cid, p) for cid, p in prompts.items()]
    lines.append(chat_line("short", "one two three four five", max_tokens=2))
    lines.append(chat_line("broken", "[[fail:400]] please fail"))
    path = write_jsonl(tmp_path / "round trip.jsonl", lines)

    uploaded = client.files.create(file=path.open("rb"), purpose="batch")
    assert uploaded.object == "file" and uploaded.purpose == "batch"
    assert uploaded.bytes == path.stat().st_size and uploaded.filename == "round trip.jsonl"
    assert client.files.retrieve(uploaded.id).id == uploaded.id

    batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT,
                                  completion_window="24h", metadata={"suite": "openai-sdk"})
    assert batch.status in {"validating", "in_progress"}
    assert batch.metadata.get("suite") == "openai-sdk"
    # Doubleword sets both result files at creation (stock OpenAI leaves them null).
    assert batch.output_file_id and batch.error_file_id
    assert batch.request_counts.total == len(lines)

    done = wait_terminal(client, batch.id)
    assert done.status == "completed"
    assert (done.request_counts.completed, done.request_counts.failed) == (len(lines) - 1, 1)
    assert done.completed_at and done.completed_at >= done.created_at

    outputs = ndjson(client, done.output_file_id)
    by_id = {o["custom_id"]: o for o in outputs}
    assert len(by_id) == len(outputs) == len(lines) - 1, "each result exactly once"
    for cid, prompt in prompts.items():
        response = by_id[cid]["response"]
        assert response["status_code"] == 200 and by_id[cid]["error"] is None
        choice = response["body"]["choices"][0]
        assert choice["message"]["content"] == expected_answer(prompt), cid
        assert choice["finish_reason"] == "stop"
        usage = response["body"]["usage"]
        assert usage["completion_tokens"] == len(expected_answer(prompt).split())
    short = by_id["short"]["response"]["body"]["choices"][0]
    assert short["message"]["content"] == expected_answer("one two three four five", 2)
    assert short["finish_reason"] == "length"
    input_order = [line["custom_id"] for line in lines if line["custom_id"] != "broken"]
    assert [o["custom_id"] for o in outputs] != input_order, "results must finish out of order"

    errors = ndjson(client, done.error_file_id)
    assert [e["custom_id"] for e in errors] == ["broken"]
    assert errors[0]["response"] is None
    detail = json.loads(errors[0]["error"]["message"])
    assert detail["type"] == "NonRetriableHttpStatus" and detail["details"]["status"] == 400

    assert client.files.delete(uploaded.id).deleted is True


def test_list_auto_pagination_crosses_pages(sandbox_factory, tmp_path):
    sb = sandbox_factory("--rate", "0", "--validating-seconds", "0", "--enable-faults")
    client = client_for(sb)
    created_files, created_batches = [], []
    for n in range(3):
        path = write_jsonl(tmp_path / f"in{n}.jsonl", [chat_line(f"c{n}", f"list {n}")])
        f = client.files.create(file=path.open("rb"), purpose="batch")
        created_files.append(f.id)
        created_batches.append(client.batches.create(
            input_file_id=f.id, endpoint=CHAT, completion_window="24h").id)

    sb.control("DELETE", "/calls")
    listed = [b.id for b in client.batches.list(limit=2)]
    assert set(created_batches) <= set(listed)
    assert len(listed) == len(set(listed)), "a batch appeared on two pages"
    list_calls = [c for c in sb.calls() if c["method"] == "GET" and c["path"] == "/v1/batches"]
    assert len(list_calls) >= 2 and any("after=" in (c.get("query") or "") for c in list_calls)

    files = [f.id for f in client.files.list(limit=2, purpose="batch")]
    assert set(created_files) <= set(files) and len(files) == len(set(files))
    first = client.batches.list(limit=1)
    assert len(first.data) == 1 and first.has_more is True


def test_cancel_keeps_only_finished_results(sandbox_factory, tmp_path):
    sb = sandbox_factory("--manual", "--enable-faults", "--seed", "11")
    client = client_for(sb)
    prompts = {f"k{i}": f"cancel me {i}" for i in range(5)}
    path = write_jsonl(tmp_path / "cancel.jsonl", [chat_line(c, p) for c, p in prompts.items()])
    f = client.files.create(file=path.open("rb"), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    sb.advance(batch.id, 2)
    running = client.batches.retrieve(batch.id)
    assert running.status == "in_progress" and running.request_counts.completed == 2

    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in {"cancelling", "cancelled"}
    done = wait_terminal(client, batch.id, sb=sb)
    assert done.status == "cancelled" and done.cancelled_at
    outputs = ndjson(client, done.output_file_id)
    assert len(outputs) == 2 == done.request_counts.completed
    for o in outputs:
        content = o["response"]["body"]["choices"][0]["message"]["content"]
        assert content == expected_answer(prompts[o["custom_id"]])
    assert ndjson(client, done.error_file_id) == [], "cancelled requests are in neither file"
    # Cancel answers 200 even on a finished batch.
    assert client.batches.cancel(batch.id).status == "cancelled"


def test_openai_compat_mode_sets_files_only_when_done(sandbox_factory, tmp_path):
    sb = sandbox_factory("--openai-compat", "--rate", "0", "--validating-seconds", "0")
    client = client_for(sb)
    prompts = {"p1": "alpha beta", "p2": "gamma", "p3": "[[fail:503]] down"}
    path = write_jsonl(tmp_path / "compat.jsonl", [chat_line(c, p) for c, p in prompts.items()])
    f = client.files.create(file=path.open("rb"), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    assert batch.output_file_id is None and batch.error_file_id is None
    done = wait_terminal(client, batch.id)
    assert done.status == "completed" and done.output_file_id and done.error_file_id
    outputs = {o["custom_id"]: o for o in ndjson(client, done.output_file_id)}
    assert set(outputs) == {"p1", "p2"}
    for cid, o in outputs.items():
        assert o["response"]["body"]["choices"][0]["message"]["content"] == \
            expected_answer(prompts[cid])
    errors = ndjson(client, done.error_file_id)
    assert [e["custom_id"] for e in errors] == ["p3"]
    assert json.loads(errors[0]["error"]["message"])["type"] == "RetriableHttpStatus"
