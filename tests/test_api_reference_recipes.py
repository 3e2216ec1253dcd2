"""Every curl recipe in references/api_reference.md is run, as written, against the sandbox.

Each recipe gets fresh ids in the variables it names ($FILE_ID, $BATCH_ID, $OUTPUT_FILE_ID) and
a prompts.jsonl in its working folder; curl is made to fail on an HTTP error status, so a
recipe that the service would answer with an error fails its test."""

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


def _recipes() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", REFERENCE.read_text(encoding="utf-8"), re.S)
    return [b for b in blocks if re.search(r"^\s*curl ", b, re.M)]


def test_the_reference_has_a_recipe_for_every_operation():
    text = "\n".join(_recipes())
    for needle in ("-F file=@", "/files?", "/files/$FILE_ID\"", "/content?skip=",
                   "/cost-estimate", "-X DELETE \"$DOUBLEWORD_BASE_URL/files/",
                   "\"$DOUBLEWORD_BASE_URL/batches\"", "/batches/$BATCH_ID\"", "/batches?",
                   "/cancel", "/retry", "/results", "/analytics",
                   "-X DELETE \"$DOUBLEWORD_BASE_URL/batches/"):
        assert needle in text, f"no curl recipe with {needle!r}"


def _upload(sb, name: str) -> str:
    r = sb.post("/files", files={"file": (name, PROMPTS.encode())}, data={"purpose": "batch"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("recipe", _recipes(), ids=lambda r: r.split("\n")[0][:60])
def test_recipe_runs_against_the_sandbox(recipe, sandbox_factory, tmp_path):
    sb = sandbox_factory("--manual", "--enable-faults")
    file_id = _upload(sb, "recipe-input.jsonl")
    batch = sb.post("/batches", json={"input_file_id": _upload(sb, "batch-input.jsonl"),
                                      "endpoint": "/v1/chat/completions",
                                      "completion_window": "24h"}).json()
    sb.advance(batch["id"])
    (tmp_path / "prompts.jsonl").write_text(PROMPTS)
    env = {"PATH": "/usr/bin:/bin", "DOUBLEWORD_API_KEY": TEST_KEY,
           "DOUBLEWORD_BASE_URL": sb.base_url, "FILE_ID": file_id, "BATCH_ID": batch["id"],
           "OUTPUT_FILE_ID": batch["output_file_id"]}
    sb.control("DELETE", "/calls")
    script = "set -e\ncurl() { command curl --fail-with-body \"$@\"; }\n" + recipe
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, f"recipe failed:\n{recipe}\n{proc.stdout}\n{proc.stderr}"
    assert sb.calls(), "the recipe made no call to the sandbox"
    assert all(c["status"] < 400 for c in sb.calls()), sb.calls()
