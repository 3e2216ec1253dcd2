"""Shared test fixtures: the sandbox server on an ephemeral loopback port, and a runner
that calls the real scripts as subprocesses (the way agents run them) and checks that the
API key never shows up in anything they print."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from dwbatch import jobfile

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
TEST_KEY = "dw-test-k3y-DO-NOT-LEAK-8f2c1e"
PYTHON = sys.executable


class Sandbox:
    """A running scripts/sandbox_server.py and its test-only control interface."""

    def __init__(self, proc: subprocess.Popen, base_url: str) -> None:
        self.proc = proc
        self.base_url = base_url  # ends with /v1
        self.root_url = base_url[: -len("/v1")]
        self.port = int(base_url.rsplit(":", 1)[1].split("/")[0])

    # --- plain API access for tests -------------------------------------------------
    def headers(self, key: str = TEST_KEY) -> dict:
        return {"Authorization": f"Bearer {key}"}

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.base_url + path, headers=self.headers(), timeout=30, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.base_url + path, headers=self.headers(), timeout=30, **kw)

    # --- control interface (only with --enable-faults) ---------------------------------
    def control(self, method: str, path: str, payload: dict | None = None) -> dict:
        r = requests.request(method, self.root_url + "/_sandbox" + path, json=payload, timeout=30)
        r.raise_for_status()
        return r.json() if r.content else {}

    def fault(self, **spec) -> dict:
        return self.control("POST", "/faults", spec)

    def clear_faults(self) -> None:
        self.control("DELETE", "/faults")

    def calls(self) -> list[dict]:
        return self.control("GET", "/calls")["calls"]

    def advance(self, batch_id: str | None = None, requests_: int | None = None) -> dict:
        payload: dict = {}
        if batch_id:
            payload["batch_id"] = batch_id
        if requests_ is not None:
            payload["requests"] = requests_
        return self.control("POST", "/advance", payload)

    def reset(self) -> None:
        """No faults left and an empty call log: a shared sandbox as good as new for a test."""
        self.clear_faults()
        self.control("DELETE", "/calls")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_sandbox(*args: str, api_key: str | None = TEST_KEY) -> Sandbox:
    """Start the sandbox on an ephemeral port and wait until it prints its base URL."""
    cmd = [PYTHON, str(SCRIPTS / "sandbox_server.py"), "--port", "0", *args]
    if api_key is not None:
        cmd += ["--api-key", api_key]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
        if m:
            return Sandbox(proc, m.group(1))
    proc.kill()
    raise RuntimeError(f"sandbox did not start: {line!r} {proc.stderr.read()!r}")


def sandbox_per_file(*flags: str, name: str = "sb"):
    """Fixtures for a test file that shares one sandbox (started with `flags`) among its tests:
    `shared_sandbox` (module scope) and `name` (per test: faults and call log reset around it).
    Use as `shared_sandbox, sb = sandbox_per_file("--manual")`."""

    @pytest.fixture(scope="module", name="shared_sandbox")
    def shared() -> Sandbox:
        sb = start_sandbox(*flags)
        yield sb
        sb.stop()

    @pytest.fixture(name=name)
    def per_test(shared_sandbox: Sandbox) -> Sandbox:
        shared_sandbox.reset()
        yield shared_sandbox
        shared_sandbox.clear_faults()

    return shared, per_test


@pytest.fixture
def sandbox_factory():
    """Start sandboxes with chosen flags; all are stopped at the end of the test."""
    started: list[Sandbox] = []

    def factory(*args: str, **kw) -> Sandbox:
        sb = start_sandbox(*args, **kw)
        started.append(sb)
        return sb

    yield factory
    for sb in started:
        sb.stop()


@pytest.fixture
def sandbox(sandbox_factory) -> Sandbox:
    """A sandbox with the fault/control interface on and default speed."""
    return sandbox_factory("--enable-faults")


def script_env(base_url: str | None = None, key: str | None = TEST_KEY, **extra) -> dict:
    """The environment of a script run: no DOUBLEWORD_* but the ones given, and the test's
    interpreter folder first on PATH, as in an activated venv (so `next` says `python3`;
    test_shared_pieces covers the other case)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOUBLEWORD_")}
    env["PATH"] = os.path.dirname(PYTHON) + os.pathsep + env.get("PATH", "")
    if key is not None:
        env["DOUBLEWORD_API_KEY"] = key
    if base_url is not None:
        env["DOUBLEWORD_BASE_URL"] = base_url
    env.update(extra)
    return env


def run_script(name: str, *args: str, env: dict | None = None, input: str | None = None,
               cwd: str | os.PathLike | None = None, timeout: float = 120,
               ) -> subprocess.CompletedProcess:
    """Run scripts/NAME with args; fail the test if the API key appears in its output."""
    proc = subprocess.run(
        [PYTHON, str(SCRIPTS / name), *args],
        env=env if env is not None else script_env(),
        input=input, capture_output=True, text=True, cwd=cwd, timeout=timeout,
    )
    assert TEST_KEY not in proc.stdout, f"API key leaked on stdout of {name}"
    assert TEST_KEY not in proc.stderr, f"API key leaked on stderr of {name}"
    return proc


def run_json(name: str, *args: str, **kw) -> tuple[int, dict]:
    """Run a script with --json; return (exit code, parsed envelope). stdout must be one object."""
    proc = run_script(name, *args, "--json", **kw)
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:  # pragma: no cover - a failing test explains itself
        raise AssertionError(
            f"{name} --json printed no single JSON object: {proc.stdout!r} / {proc.stderr!r}"
        ) from exc
    assert data["exit_code"] == proc.returncode
    assert "next" in data and "ok" in data
    return proc.returncode, data


def assert_no_key_in_tree(path: str | os.PathLike) -> None:
    """No file under `path` contains the API key."""
    for p in Path(path).rglob("*"):
        if p.is_file():
            assert TEST_KEY.encode() not in p.read_bytes(), f"API key written into {p}"


def chat_line(custom_id: str, prompt: str, model: str = "sandbox-chat", **body) -> dict:
    """One /v1/chat/completions batch line (markers like [[fail:400]] go in the prompt; other
    body fields, e.g. max_tokens or response_format, as keywords)."""
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": prompt}],
                     **body}}


def write_lines(path: Path, lines: list[dict]) -> Path:
    """A JSONL file of `lines`, one JSON object a line."""
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def create_batch_direct(sb: Sandbox, prompts: list[str], metadata: dict | None = None,
                        window: str = "24h") -> dict:
    """Upload a chat batch file and create its batch with plain HTTP (no project code)."""
    import io

    body = "".join(json.dumps(chat_line(f"r{i}", p)) + "\n" for i, p in enumerate(prompts))
    r = sb.post("/files", files={"file": ("t.jsonl", io.BytesIO(body.encode()))},
                data={"purpose": "batch"})
    assert r.status_code == 201, r.text
    payload = {"input_file_id": r.json()["id"], "endpoint": "/v1/chat/completions",
               "completion_window": window}
    if metadata:
        payload["metadata"] = metadata
    r = sb.post("/batches", json=payload)
    assert r.status_code == 201, r.text
    return r.json()


def write_job(path: Path, box, batches: list[dict]) -> Path:
    """A job file as submit.py records it, for batches created directly."""
    job = jobfile.new_job(base_url=box.base_url, completion_window="24h",
                          endpoint="/v1/chat/completions")
    job["inputs"].append({"path": "in.jsonl", "sha256": "0" * 64, "requests": 1, "bytes": 1})
    for i, b in enumerate(batches):
        job["shards"].append({"index": i, "path": f"in-{i:03d}.jsonl", "requests": 1,
                              "batch_id": b["id"], "status": b["status"]})
    jobfile.save_job(str(path), job)
    return path


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    """Poll `predicate` until it returns something truthy (returned), or fail after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.03)
    raise AssertionError(f"timed out waiting for {what}")
