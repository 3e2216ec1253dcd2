"""Every curl recipe in references/api_reference.md is run, as written, against the sandbox.

Each recipe gets fresh ids in the variables it names ($FILE_ID, $BATCH_ID, $OUTPUT_FILE_ID,
$ERROR_FILE_ID) and a prompts.jsonl in its working folder; curl is made to fail on an HTTP
error status, so a recipe that the service would answer with an error fails its test. The
resume recipe is run again and again while a batch progresses, as a user would paste it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from conftest import ROOT, TEST_KEY

REFERENCE = ROOT / "references" / "api_reference.md"
PROMPTS = "\n".join(json.dumps({
    "custom_id": f"row-{i}", "method": "POST", "url": "/v1/chat/completions",
    "body": {"model": "sandbox-chat",
             "messages": [{"role": "user", "content": prompt}]}})
    for i, prompt in enumerate(["Say hello", "This one fails [[fail:400]]"])) + "\n"
STRICT = "set -e\ncurl() { command curl --fail-with-body \"$@\"; }\n"
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def _recipes() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", REFERENCE.read_text(encoding="utf-8"), re.S)
    return [b for b in blocks if re.search(r"^\s*(STATE=\$\()?curl ", b, re.M)
            or "$(curl" in b or "curl -sS" in b]


def _resume_recipe() -> str:
    (recipe,) = [r for r in _recipes() if "content?skip=$SKIP" in r]
    return recipe


def test_the_reference_has_a_recipe_for_every_operation():
    text = "\n".join(_recipes())
    for needle in ("-F file=@", "/files?", "search=", "/files/$FILE_ID\"", "/content?skip=",
                   "/cost-estimate", "-X DELETE \"$DOUBLEWORD_BASE_URL/files/",
                   "\"$DOUBLEWORD_BASE_URL/batches\"", "/batches/$BATCH_ID\"", "/batches?",
                   "/cancel", "/retry\"", "/retry-requests", "/results", "/analytics",
                   "-X DELETE \"$DOUBLEWORD_BASE_URL/batches/", "/models"):
        assert needle in text, f"no curl recipe with {needle!r}"


def test_every_recipe_prints_the_http_status():
    for recipe in _recipes():
        assert "%{http_code}" in recipe, f"recipe does not print the HTTP status:\n{recipe}"


def _upload(sb, name: str) -> str:
    r = sb.post("/files", files={"file": (name, PROMPTS.encode())}, data={"purpose": "batch"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _env(sb, file_id: str, batch: dict) -> dict:
    return {"PATH": "/usr/bin:/bin", "DOUBLEWORD_API_KEY": TEST_KEY,
            "DOUBLEWORD_BASE_URL": sb.base_url, "FILE_ID": file_id, "BATCH_ID": batch["id"],
            "OUTPUT_FILE_ID": batch["output_file_id"], "ERROR_FILE_ID": batch["error_file_id"]}


def _run(script: str, cwd, env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


def _batch(sb) -> dict:
    return sb.post("/batches", json={"input_file_id": _upload(sb, "batch-input.jsonl"),
                                     "endpoint": "/v1/chat/completions",
                                     "completion_window": "24h"}).json()


@needs_curl
@pytest.mark.parametrize("recipe", _recipes(), ids=lambda r: r.split("\n")[0][:60])
def test_recipe_runs_against_the_sandbox(recipe, sandbox_factory, tmp_path):
    sb = sandbox_factory("--manual", "--enable-faults")
    file_id = _upload(sb, "recipe-input.jsonl")
    batch = _batch(sb)
    cancelling = "/cancel" in recipe
    if not cancelling:  # the cancel recipe is shown a running batch: it must cancel that
        sb.advance(batch["id"])
    (tmp_path / "prompts.jsonl").write_text(PROMPTS)
    sb.control("DELETE", "/calls")
    proc = _run(STRICT + recipe, tmp_path, _env(sb, file_id, batch))
    assert proc.returncode == 0, f"recipe failed:\n{recipe}\n{proc.stdout}\n{proc.stderr}"
    assert re.search(r"HTTP [1-5]\d\d", proc.stdout), "the recipe printed no HTTP status"
    assert sb.calls(), "the recipe made no call to the sandbox"
    assert all(c["status"] < 400 for c in sb.calls()), sb.calls()
    if cancelling:
        assert sb.get(f"/batches/{batch['id']}").json()["status"] in ("cancelling",
                                                                      "cancelled")


@needs_curl
def test_the_cancel_recipe_leaves_a_finished_batch_alone(sandbox_factory, tmp_path):
    sb = sandbox_factory("--manual", "--enable-faults")
    batch = _batch(sb)
    sb.advance(batch["id"])
    (recipe,) = [r for r in _recipes() if "/cancel" in r]
    proc = _run(STRICT + recipe, tmp_path, _env(sb, "unused", batch))
    assert proc.returncode == 0 and "not cancelled" in proc.stdout, proc.stdout
    assert not [c for c in sb.calls() if c["path"].endswith("/cancel")]
    assert sb.get(f"/batches/{batch['id']}").json()["status"] == "completed"


@needs_curl
def test_the_resume_recipe_is_safe_to_paste_again_and_again(sandbox_factory, tmp_path):
    """Run while the batch progresses, then twice more after it ended: the saved file holds
    exactly the served lines, each once; a 404 (deleted file) prints its status and adds
    nothing."""
    sb = sandbox_factory("--manual", "--enable-faults")
    lines = "".join(json.dumps({"custom_id": f"r{i}", "method": "POST",
                                "url": "/v1/chat/completions",
                                "body": {"model": "sandbox-chat", "messages": [
                                    {"role": "user", "content": f"prompt {i}"}]}}) + "\n"
                    for i in range(6))
    file_id = sb.post("/files", files={"file": ("r.jsonl", lines.encode())},
                      data={"purpose": "batch"}).json()["id"]
    batch = sb.post("/batches", json={"input_file_id": file_id,
                                      "endpoint": "/v1/chat/completions",
                                      "completion_window": "24h"}).json()
    env = _env(sb, file_id, batch)
    recipe = _resume_recipe()
    saved = tmp_path / "output.jsonl"
    for step in (0, 2, None, None, None):  # nothing yet, 2 done, all done, then twice again
        if step != 0:
            sb.advance(batch["id"], step)
        proc = _run(recipe, tmp_path, env)  # pasted as written, no strict mode
        assert proc.returncode == 0 and "HTTP 200" in proc.stdout, proc.stdout + proc.stderr
        served = sb.get(f"/files/{batch['output_file_id']}/content").content
        assert saved.read_bytes() == served, f"after step {step}: saved != served"
    assert len(saved.read_bytes().splitlines()) == 6
    sb.fault(method="GET", path=f"/v1/files/{batch['output_file_id']}/content", kind="tear")
    before = saved.read_bytes()
    _run(recipe, tmp_path, env)
    assert saved.read_bytes() == before, "a torn answer adds no partial line"
    gone = dict(env, OUTPUT_FILE_ID="3fa85f64-5717-4562-b3fc-2c963f66afa6")
    proc = _run(recipe, tmp_path, gone)
    assert "HTTP 404" in proc.stdout and saved.read_bytes() == before, proc.stdout
