"""batches.py against the sandbox: list (paginated past 101), get, cancel (id or job),
retry (in place; the server's "nothing to retry"), delete, and the --json envelope."""

from __future__ import annotations

import io
import json
import uuid

import pytest
from conftest import (
    create_batch_direct,
    run_json,
    run_script,
    script_env,
    start_sandbox,
    write_job,
)


@pytest.fixture(scope="module")
def sb():
    box = start_sandbox("--enable-faults", "--manual")
    yield box
    box.stop()


def batches(box, *args):
    return run_json("batches.py", *args, env=script_env(box.base_url))



def test_list_pages_past_101_batches(sb):
    tag = "tag-" + uuid.uuid4().hex[:8]
    line = json.dumps({"custom_id": "r0", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "sandbox-chat",
                                "messages": [{"role": "user", "content": "x"}]}}) + "\n"
    file_id = sb.post("/files", files={"file": ("l.jsonl", io.BytesIO(line.encode()))},
                      data={"purpose": "batch"}).json()["id"]
    ids = []
    for _ in range(105):
        r = sb.post("/batches", json={"input_file_id": file_id, "completion_window": "24h",
                                      "endpoint": "/v1/chat/completions",
                                      "metadata": {"tag": tag}})
        assert r.status_code == 201
        ids.append(r.json()["id"])
    sb.control("DELETE", "/calls")
    code, out = batches(sb, "list", "--search", tag, "--all")
    assert code == 0 and out["count"] == 105 and out["has_more"] is False
    assert {b["id"] for b in out["batches"]} == set(ids)
    pages = [c for c in sb.calls() if c["method"] == "GET" and c["path"] == "/v1/batches"]
    assert len(pages) >= 2  # the server gives at most 101 per page

    code, out = batches(sb, "list", "--search", tag, "--limit", "103")
    assert code == 0 and out["count"] == 103 and out["has_more"] is True
    assert f"--after {out['last_id']}" in out["next"]
    code, rest = batches(sb, "list", "--search", tag, "--after", out["last_id"], "--limit",
                         "103")
    assert rest["count"] == 2 and rest["has_more"] is False and rest["next"] is None
    assert {b["id"] for b in out["batches"] + rest["batches"]} == set(ids)

    human = run_script("batches.py", "list", "--search", tag, "--limit", "3",
                       env=script_env(sb.base_url))
    assert human.returncode == 0
    assert "3 batches (more exist)" in human.stdout and "next: python3" in human.stdout


def test_list_filters_by_status(sb):
    b = create_batch_direct(sb, ["a"], metadata={"tag": "filter-test"})
    sb.advance(b["id"])
    code, out = batches(sb, "list", "--status", "completed", "--search", "filter-test")
    assert code == 0 and [x["id"] for x in out["batches"]] == [b["id"]]
    code, out = batches(sb, "list", "--status", "in_progress", "--search", "filter-test")
    assert out["count"] == 0
    bad = run_script("batches.py", "list", "--status", "done", env=script_env(sb.base_url))
    assert bad.returncode == 2 and "completed" in bad.stderr  # lists the valid values


def test_get_shows_the_batch_and_its_quirks(sb):
    b = create_batch_direct(sb, ["a", "b [[fail:400]]"])
    sb.advance(b["id"])
    code, out = batches(sb, "get", b["id"])
    assert code == 0
    assert out["batch"]["id"] == b["id"] and out["state"] == "completed_with_failures"
    assert any("1 of 2 requests failed" in n for n in out["notes"])
    human = run_script("batches.py", "get", b["id"], env=script_env(sb.base_url))
    assert "output_file_id: " + b["output_file_id"] in human.stdout


def test_cancel_a_job_cancels_only_its_unfinished_batches(sb, tmp_path):
    done = create_batch_direct(sb, ["a"])
    sb.advance(done["id"])
    running = create_batch_direct(sb, ["a", "b", "c"])
    sb.advance(running["id"], 1)
    job = write_job(tmp_path / "c.job.json", sb, [done, running])
    code, out = batches(sb, "cancel", str(job))
    assert code == 0 and out["cancelled"] == 1
    actions = {r["batch_id"]: r["action"] for r in out["results"]}
    assert actions == {done["id"]: "skipped", running["id"]: "cancel_requested"}
    assert not [c for c in sb.calls() if c["path"] == f"/v1/batches/{done['id']}/cancel"]
    assert sb.get(f"/batches/{done['id']}").json()["status"] == "completed"
    shards = json.loads(job.read_text())["shards"]
    assert [s["status"] for s in shards] == ["completed", "cancelling"]
    sb.advance(running["id"])
    assert sb.get(f"/batches/{running['id']}").json()["status"] == "cancelled"


def test_cancel_never_sends_a_cancel_to_a_finished_batch(sb):
    """On the service a cancel of a finished batch turns it `cancelled` for good: refused."""
    done = create_batch_direct(sb, ["a", "b"])
    sb.advance(done["id"])
    all_done = create_batch_direct(sb, ["c"])
    sb.advance(all_done["id"], 1)  # every request done, the batch not yet settled
    for batch in (done, all_done):
        code, out = batches(sb, "cancel", batch["id"])
        assert code == 2 and out["error"]["code"] == "already_finished", out
        assert "cancelled` for good" in out["error"]["message"]
        assert not [c for c in sb.calls() if c["path"] == f"/v1/batches/{batch['id']}/cancel"]
    assert sb.get(f"/batches/{done['id']}").json()["status"] == "completed"


def test_models_lists_what_the_key_may_use(sb):
    code, out = batches(sb, "models")
    assert code == 0 and out["models"] == [{"id": "sandbox-chat", "owned_by": "sandbox"},
                                           {"id": "sandbox-embed", "owned_by": "sandbox"}]
    human = run_script("batches.py", "models", env=script_env(sb.base_url))
    assert human.returncode == 0 and "sandbox-chat" in human.stdout
    assert "--model" in human.stdout
    sb.fault(method="GET", path="/v1/models", kind="status", status=404)
    code, out = batches(sb, "models")
    assert code == 2 and out["error"]["code"] == "models_unsupported"
    sb.fault(method="GET", path="/v1/models", kind="status", status=401,
             message="Authentication required")
    code, out = batches(sb, "models")
    assert code == 6


def test_cancel_while_validating_warns_it_may_stay_cancelling(sb):
    b = create_batch_direct(sb, ["a"])
    code, out = batches(sb, "cancel", b["id"])
    assert code == 0 and "indefinitely" in out["results"][0]["note"]


def test_retry_reuses_the_same_batch_and_says_so(sb, tmp_path):
    b = create_batch_direct(sb, ["a", "b [[fail:400]]", "c [[fail:400]]"])
    sb.advance(b["id"])
    job = write_job(tmp_path / "r.job.json", sb, [b])
    run_json("poll.py", str(job), env=script_env(sb.base_url))
    code, out = batches(sb, "retry", str(job))
    assert code == 0 and out["retried"] == 1
    (r,) = out["results"]
    assert r["batch_id"] == b["id"] and r["requeued"] == 2
    assert r["request_counts"]["failed"] == 0 and r["request_counts_before"]["failed"] == 2
    assert "same batch" in out["explanation"]
    assert out["next"].endswith("poll.py " + str(job) + " --json")
    shard = json.loads(job.read_text())["shards"][0]
    assert shard["request_counts"]["failed"] == 0
    assert len(shard["progress_samples"]) == 1  # counts went down: the ETA history restarts
    human = run_script("batches.py", "retry", b["id"], env=script_env(sb.base_url))
    assert human.returncode == 2  # nothing failed or cancelled any more: the server says no
    assert "nothing to retry in batch " + b["id"] in human.stderr
    assert "Nothing to retry" in human.stderr  # the server's own words


def test_retry_of_a_clean_job_is_exit_2_without_calling_retry(sb, tmp_path):
    b = create_batch_direct(sb, ["a"])
    sb.advance(b["id"])
    job = write_job(tmp_path / "ok.job.json", sb, [b])
    code, out = batches(sb, "retry", str(job))
    assert code == 2 and out["error"]["code"] == "nothing_to_retry"
    assert not [c for c in sb.calls() if c["path"] == f"/v1/batches/{b['id']}/retry"]


def test_delete_then_get_is_not_found(sb):
    b = create_batch_direct(sb, ["a"])
    code, out = batches(sb, "delete", b["id"])
    assert code == 0 and out["deleted"] is True
    code, out = batches(sb, "get", b["id"])
    assert code == 2 and "not found" in out["error"]["message"]
    assert b["id"] in out["error"]["message"]


def test_bad_targets_say_what_is_expected(sb, tmp_path):
    code, out = batches(sb, "cancel", str(tmp_path / "nope.job.json"))
    assert code == 2 and "no such job file" in out["error"]["message"]
    code, out = batches(sb, "get", "has space")
    assert code == 2 and "batches.py list" in out["error"]["hint"]
    job = write_job(tmp_path / "d.job.json", sb, [create_batch_direct(sb, ["a"])])
    code, out = batches(sb, "delete", str(job))
    assert code == 2 and "cancel JOB" in out["error"]["hint"]
    nokey = run_script("batches.py", "list", "--json", env=script_env(sb.base_url, key=None))
    assert nokey.returncode == 6
