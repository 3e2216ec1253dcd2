"""Doubleword's own CLI (`dw`, PyPI dw-cli) against the sandbox: the strictest fidelity check,
because it was written for the real service and relies on its partial-result headers.

dw runs with a temporary HOME holding its config and credentials (never `dw login`, which would
call the real service) and `--server` pointing at the sandbox root. When the binary cannot run
here, tests/prepare_dw_cli.py recorded why and these tests skip with that reason.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import TEST_KEY  # noqa: E402
from dwcli import dw_or_skip  # noqa: E402

pytestmark = pytest.mark.dwcli
CHAT = "/v1/chat/completions"


class DW:
    """Runs the dw binary with its own HOME, pointed at one sandbox."""

    def __init__(self, binary: str, home: Path, sb) -> None:
        self.binary, self.home, self.sb = binary, home, sb
        dw_dir = home / ".dw"
        dw_dir.mkdir(parents=True)
        (dw_dir / "config.toml").write_text(
            'active_account = "default"\ndefault_output = "json"\n\n'
            f'[servers]\nai = "{sb.root_url}"\nadmin = "{sb.root_url}"\n\n'
            "[client]\ntimeout_secs = 30\nconnect_timeout_secs = 5\nmax_retries = 2\n"
            "poll_interval_secs = 1\n"
        )
        creds = dw_dir / "credentials.toml"
        creds.write_text('[accounts.default]\ndisplay_name = "sandbox"\n'
                         f'inference_key = "{TEST_KEY}"\naccount_type = "personal"\n')
        creds.chmod(0o600)
        self.env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "XDG_CONFIG_HOME": str(home / ".config"), "NO_COLOR": "1", "LANG": "C.UTF-8"}

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run([self.binary, "--server", self.sb.root_url, "--output", "json",
                               *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        assert TEST_KEY not in proc.stdout + proc.stderr, "dw printed the API key"
        assert proc.returncode == 0, f"dw {' '.join(args)} exited {proc.returncode}: " \
                                     f"{proc.stderr.strip()[-500:]}"
        return proc

    def json(self, *args: str) -> dict:
        out = self.run(*args).stdout
        try:
            return json.loads(out)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"dw {' '.join(args)} printed no JSON object: {out!r}") from exc

    def json_lines(self, *args: str) -> list[dict]:
        out = self.run(*args).stdout.strip()
        try:
            data = json.loads(out)
        except json.JSONDecodeError:
            return [json.loads(line) for line in out.splitlines() if line.strip()]
        return data if isinstance(data, list) else data.get("data", [data])


@pytest.fixture
def dw_binary() -> str:
    return dw_or_skip()


def chat_line(custom_id: str, prompt: str) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": CHAT,
            "body": {"model": "sandbox-chat", "messages": [{"role": "user", "content": prompt}]}}


def write_jsonl(path: Path, prompts: dict[str, str]) -> Path:
    path.write_text("".join(json.dumps(chat_line(c, p)) + "\n" for c, p in prompts.items()))
    return path


def calls_of(sb, method: str, path: str) -> list[dict]:
    return [c for c in sb.calls() if c["method"] == method and c["path"] == path]


def test_upload_create_get_list_cancel(dw_binary, sandbox_factory, tmp_path):
    sb = sandbox_factory("--manual", "--enable-faults")
    dw = DW(dw_binary, tmp_path / "home", sb)
    path = write_jsonl(tmp_path / "dw-input.jsonl", {f"d{i}": f"dw prompt {i}" for i in range(4)})

    uploaded = dw.json("files", "upload", str(path))
    assert uploaded["object"] == "file" and uploaded["filename"] == "dw-input.jsonl"
    assert uploaded["bytes"] == path.stat().st_size
    upload_calls = calls_of(sb, "POST", "/v1/files")
    assert [c["status"] for c in upload_calls] == [201]

    created = dw.json("batches", "create", "--file", uploaded["id"], "-w", "24h",
                      "--metadata", "suite=dwcli")
    assert created["input_file_id"] == uploaded["id"] and created["status"] == "validating"
    assert created["metadata"]["suite"] == "dwcli"
    assert created["request_counts"]["total"] == 4

    sb.advance(created["id"], 1)
    got = dw.json("batches", "get", created["id"])
    assert got["id"] == created["id"] and got["status"] == "in_progress"
    assert got["request_counts"]["completed"] == 1

    listed = dw.json_lines("batches", "list")
    assert created["id"] in {b["id"] for b in listed}
    assert any("limit=" in (c.get("query") or "") for c in calls_of(sb, "GET", "/v1/batches"))

    # dw reports a cancel on stderr, with the status it read from the sandbox's answer.
    said = dw.run("batches", "cancel", "-y", created["id"]).stderr
    assert re.search(rf"{created['id']} \(status: (cancelling|cancelled)\)", said), said
    cancel_calls = calls_of(sb, "POST", f"/v1/batches/{created['id']}/cancel")
    assert [c["status"] for c in cancel_calls] == [200]
    sb.advance(created["id"])
    assert dw.json("batches", "get", created["id"])["status"] == "cancelled"


def test_stream_delivers_each_result_exactly_once(dw_binary, sandbox_factory, tmp_path):
    # Slow enough that dw (polling every second) reads the output file several times while the
    # batch runs, resuming with ?skip=<X-Last-Line>; out of order thanks to the seed.
    sb = sandbox_factory("--rate", "8", "--seed", "5", "--enable-faults")
    dw = DW(dw_binary, tmp_path / "home", sb)
    prompts = {f"s{i:02d}": f"stream prompt {i} {'word ' * (i % 4)}".strip() for i in range(24)}
    path = write_jsonl(tmp_path / "stream.jsonl", prompts)

    proc = dw.run("stream", str(path), timeout=90)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    received = [r["custom_id"] for r in results]
    assert sorted(received) == sorted(prompts), (
        f"dw stream must get each result exactly once; duplicates "
        f"{sorted({c for c in received if received.count(c) > 1})}, "
        f"missing {sorted(set(prompts) - set(received))}")
    for r in results:
        content = r["response"]["body"]["choices"][0]["message"]["content"]
        assert content == "ECHO " + prompts[r["custom_id"]], r["custom_id"]
    assert received != sorted(received), "sandbox results should arrive out of input order"

    content_calls = [c for c in sb.calls()
                     if c["method"] == "GET" and c["path"].endswith("/content")]
    resumed = [c for c in content_calls if "skip=" in (c.get("query") or "")]
    assert len(content_calls) >= 2 and resumed, (
        f"dw should have read partial results and resumed with skip: {content_calls}")
    assert all(c["status"] == 200 for c in content_calls)


def test_dw_waits_out_429_and_503(dw_binary, sandbox_factory, tmp_path):
    """The sandbox's 429/503 (JSON body + Retry-After) are answers dw knows how to wait out."""
    sb = sandbox_factory("--manual", "--enable-faults")
    dw = DW(dw_binary, tmp_path / "home", sb)
    uploaded = dw.json("files", "upload", str(write_jsonl(tmp_path / "r.jsonl", {"r1": "hi"})))
    created = dw.json("batches", "create", "--file", uploaded["id"])
    for status in (429, 503):
        sb.control("DELETE", "/calls")
        sb.fault(method="GET", path="/v1/batches/*", kind="status", status=status, retry_after=1)
        got = dw.json("batches", "get", created["id"])
        assert got["id"] == created["id"]
        statuses = [c["status"] for c in calls_of(sb, "GET", f"/v1/batches/{created['id']}")]
        assert statuses == [status, 200], statuses
