"""The first command works on a fresh machine, whatever its Python (issue 12).

- Every entry script run by a Python WITHOUT requests/jsonschema (a bare venv made with
  --without-pip) exits 2 with error.code missing_dependency, names what is missing, gives the
  set-up commands and as `next` the same command run by the skill's own venv; --help works.
- Every entry script's PEP 723 block parses (the PEP's reference regex, then tomllib) and
  declares exactly requirements.txt (the sandbox: nothing, and it runs without them).
- The README's first command, run word for word from a fresh copy of the repository in a clean
  environment, also by an "externally managed" (PEP 668) system Python when there is one.
- `uv run scripts/demo.py` in the published bundle (what .clawhubignore leaves), where uv is.

No test downloads anything: pip and uv install from a local wheelhouse rebuilt from the
packages already installed in the test environment (see `wheelhouse`).
"""

from __future__ import annotations

import base64
import csv
import fnmatch
import hashlib
import importlib.metadata as md
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, SCRIPTS

# What each entry script needs before it can do anything (the sandbox needs neither).
NEEDS = {
    "batches.py": ["requests"],
    "create_batch_file.py": ["jsonschema"],
    "demo.py": ["requests", "jsonschema"],
    "fetch_results.py": ["requests", "jsonschema"],
    "poll.py": ["requests"],
    "submit.py": ["requests", "jsonschema"],
}
STDLIB_ONLY = ["sandbox_server.py"]
ARGS = {  # a plausible command for each script
    "batches.py": ["list", "--status", "failed"],
    "create_batch_file.py": ["my prompts.txt", "-o", "batch.jsonl", "--model", "m"],
    "demo.py": ["--workdir", "demo run"],
    "fetch_results.py": ["prompts.job.json"],
    "poll.py": ["prompts.job.json"],
    "submit.py": ["prompts.jsonl", "--dry-run"],
}
PEP723 = re.compile(r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)$\s(?P<content>(^#(| .*)$\s)+)^# ///$")


def test_every_entry_script_is_covered():
    assert sorted([*NEEDS, *STDLIB_ONLY]) == sorted(p.name for p in SCRIPTS.glob("*.py"))


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def _pep723(path: Path) -> dict:
    """PEP 723's reference reader."""
    tomllib = pytest.importorskip("tomllib")
    matches = [m for m in PEP723.finditer(path.read_text(encoding="utf-8"))
               if m.group("type") == "script"]
    assert len(matches) == 1, f"{path.name}: expected one '# /// script' block"
    content = "".join(line[2:] if line.startswith("# ") else line[1:]
                      for line in matches[0].group("content").splitlines(keepends=True))
    return tomllib.loads(content)


@pytest.mark.parametrize("script", [*NEEDS, *STDLIB_ONLY])
def test_pep723_block_parses_and_declares_the_requirements(script):
    meta = _pep723(SCRIPTS / script)
    assert meta["requires-python"] == ">=3.10"
    assert meta["dependencies"] == ([] if script in STDLIB_ONLY else _requirements())


def test_requirements_and_pyproject_agree():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["dependencies"] == _requirements()
    assert project["requires-python"] == ">=3.10"


@pytest.mark.parametrize("script", sorted(NEEDS))
def test_a_script_imports_only_what_it_checks_for(script):
    """`require(...)` names everything the script imports at start-up (seen on --help): a
    package imported but not named would be a traceback again on a Python without it."""
    proc = subprocess.run([sys.executable, "-X", "importtime", str(SCRIPTS / script), "--help"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in
                proc.stderr.splitlines() if line.startswith("import time:")}
    imported = {"requests" if m == "urllib3" else m for m in imported}
    assert imported & {"requests", "jsonschema"} <= set(NEEDS[script])


# --- a fresh copy of the repository and a Python without the packages -----------------------

def fresh_copy(dest: Path) -> Path:
    """What `git clone` of this working tree would give once committed: the files git tracks
    or would track (untracked but not ignored), as they are now; no .venv, no caches."""
    if not shutil.which("git") or not (ROOT / ".git").exists():
        pytest.skip("git (and a git checkout) is needed to make a fresh copy")
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, names):
        src = ROOT / os.fsdecode(name)
        if src.is_file():
            (dest / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / os.fsdecode(name))
    return dest


def clean_env(home: Path, path: str | None = None) -> dict:
    """An environment with nothing of ours in it: no PYTHONPATH, no venv, no pip/uv settings."""
    env = {"PATH": path or os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "LANG": "C.UTF-8", "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
           "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return env


@pytest.fixture(scope="module")
def skill(tmp_path_factory) -> Path:
    return fresh_copy(tmp_path_factory.mktemp("clone") / "doubleword-batch")


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """A Python with the standard library only: a venv without pip, packages or site dirs."""
    where = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = str(where / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))
    for package in ("requests", "jsonschema"):
        probe = subprocess.run([python, "-c", f"import {package}"], capture_output=True,
                               env=clean_env(where))
        assert probe.returncode != 0, f"the bare venv can import {package}"
    return python


def _run(python: str, script: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([python, str(script), *args], cwd=cwd, capture_output=True, text=True,
                          env=clean_env(cwd), timeout=60)


def _expected(skill: Path, script: str, args: list[str], venv_exists: bool, python: str):
    venv_python = str(skill / ".venv" / "bin" / "python")
    setup = [] if venv_exists else [shlex.join([python, "-m", "venv", str(skill / ".venv")])]
    setup.append(shlex.join([venv_python, "-m", "pip", "install", "-r",
                             str(skill / "requirements.txt")]))
    rerun = shlex.join([venv_python, str(skill / "scripts" / script), *args])
    return " && ".join(setup), rerun


@pytest.mark.parametrize("script", sorted(NEEDS))
def test_missing_packages_are_a_clear_error_with_the_commands(script, skill, bare_python,
                                                              tmp_path):
    proc = _run(bare_python, skill / "scripts" / script, ARGS[script], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    setup, rerun = _expected(skill, script, ARGS[script], False, bare_python)
    lines = proc.stderr.splitlines()
    assert lines[0].startswith(f"error: {script} needs the Python package")
    for package in NEEDS[script]:
        assert package in lines[0]
    assert f"  {setup}" in lines
    assert lines[-1] == f"next: {rerun}"


@pytest.mark.parametrize("script", sorted(NEEDS))
def test_missing_packages_in_the_json_envelope(script, skill, bare_python, tmp_path):
    args = [*ARGS[script], "--json"]
    proc = _run(bare_python, skill / "scripts" / script, args, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    out = json.loads(proc.stdout)
    setup, rerun = _expected(skill, script, args, False, bare_python)
    assert out["ok"] is False and out["exit_code"] == 2
    assert out["error"]["code"] == "missing_dependency"
    assert out["missing"] == NEEDS[script]
    assert all(package in out["error"]["message"] for package in NEEDS[script])
    assert out["setup"] == setup and setup in out["error"]["hint"]
    assert out["next"] == rerun


def test_with_the_venv_already_there_only_the_install_is_asked(skill, bare_python, tmp_path):
    """A .venv that lacks the packages (made, never filled): no second `-m venv`."""
    copy = fresh_copy(tmp_path / "skill")
    (copy / ".venv" / "bin").mkdir(parents=True)
    (copy / ".venv" / "bin" / "python").touch()
    elsewhere = tmp_path / "data"
    elsewhere.mkdir()
    proc = _run(bare_python, copy / "scripts" / "poll.py", ["j.job.json", "--json"], elsewhere)
    out = json.loads(proc.stdout)
    assert out["setup"] == _expected(copy, "poll.py", [], True, bare_python)[0]
    assert "-m venv" not in out["error"]["hint"]


def test_paths_inside_the_current_folder_are_shown_relative(skill, bare_python):
    proc = _run(bare_python, Path("scripts/poll.py"), ["j.job.json"], skill)
    assert proc.stderr.splitlines()[-1] == "next: .venv/bin/python scripts/poll.py j.job.json"
    assert f"  {shlex.quote(bare_python)} -m venv .venv && .venv/bin/python -m pip install " \
           "-r requirements.txt" in proc.stderr.splitlines()


@pytest.mark.parametrize("command", [[s, "--help"] for s in sorted([*NEEDS, *STDLIB_ONLY])]
                         + [["batches.py", "cancel", "--help"], ["poll.py", "-h"]])
def test_help_works_without_the_packages(command, skill, bare_python, tmp_path):
    bare = _run(bare_python, skill / "scripts" / command[0], command[1:], tmp_path)
    full = _run(sys.executable, skill / "scripts" / command[0], command[1:], tmp_path)
    assert bare.returncode == 0, bare.stderr
    assert bare.stdout == full.stdout and "exit codes:" in bare.stdout


def test_the_sandbox_needs_no_package(skill, bare_python, tmp_path):
    proc = subprocess.Popen([bare_python, str(skill / "scripts" / "sandbox_server.py"),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=clean_env(tmp_path))
    try:
        line = proc.stdout.readline()
        assert re.search(r"http://127\.0\.0\.1:\d+/v1", line), line + proc.stderr.read()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- the README's first command and uv run, installing from a local wheelhouse ----------------

def _closure(requirements: list[str]) -> list[md.Distribution]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: dict[str, md.Distribution] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        seen[name] = md.distribution(req.name)
        todo += [Requirement(r) for r in seen[name].requires or []]
    return list(seen.values())


def _rebuild_wheel(dist: md.Distribution, out: Path) -> None:
    """Pack an installed distribution back into a wheel (its files, its dist-info, a new
    RECORD), so that an installer can take it without any network."""
    info = next(f.parts[0] for f in dist.files if f.parts[0].endswith(".dist-info"))
    tags = [v for k, v in (line.split(": ", 1) for line in
                           dist.read_text("WHEEL").splitlines() if ": " in line) if k == "Tag"]
    parts = [sorted({t.split("-")[i] for t in tags}) for i in range(3)]
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"]).lower()
    wheel = out / f"{name}-{dist.version}-{'-'.join('.'.join(p) for p in parts)}.whl"
    skip = {f"{info}/{n}" for n in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")}
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    with zipfile.ZipFile(wheel, "w") as zf:
        for f in dist.files:
            arc = f.as_posix()
            if arc.startswith("..") or "__pycache__" in f.parts or arc in skip:
                continue
            data = Path(f.locate()).read_bytes()
            zf.writestr(arc, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            writer.writerow([arc, "sha256=" + digest.decode(), len(data)])
        writer.writerow([f"{info}/RECORD", "", ""])
        zf.writestr(f"{info}/RECORD", record.getvalue())


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    """Wheels of requirements.txt and everything they need, rebuilt from the packages installed
    here. Why not the network: tests must not download (and here only package registries are
    reachable, not always); why not --system-site-packages: the README line must run word for
    word. PIP_NO_INDEX + PIP_FIND_LINKS (and uv's equivalents) point the installers at it."""
    pytest.importorskip("packaging")
    out = tmp_path_factory.mktemp("wheelhouse")
    for dist in _closure(_requirements()):
        _rebuild_wheel(dist, out)
    return out


def _readme_first_command() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.search(r"```bash\n(.*?)\n```", text, re.S).group(1)


def _pythons() -> list:
    """The interpreters to try the README line with: this one's base Python, and an
    "externally managed" (PEP 668) system Python of the same version where there is one
    (same version: the wheelhouse holds this Python's compiled wheels)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    found = [pytest.param(base, id="base-python")]
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if not os.path.exists(candidate):
            continue
        probe = subprocess.run([candidate, "-c", "import ensurepip, sys, sysconfig; "
                                "print(sysconfig.get_path('stdlib'), sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode != 0:
            continue
        stdlib, _, version = probe.stdout.strip().partition(" ")
        if os.path.exists(os.path.join(stdlib, "EXTERNALLY-MANAGED")):
            ok = version == str(tuple(sys.version_info[:2]))
            found.append(pytest.param(candidate, id="pep668-system-python", marks=() if ok else
                         pytest.mark.skip(reason=f"{candidate} is Python {version}; the local "
                                          "wheelhouse is built for this test's Python")))
            break
    else:
        found.append(pytest.param(None, id="pep668-system-python", marks=pytest.mark.skip(
            reason="no externally managed (PEP 668) system Python with ensurepip here")))
    return found


@pytest.mark.parametrize("python", _pythons())
def test_readme_first_command_from_a_fresh_clone(python, wheelhouse, tmp_path):
    line = _readme_first_command()
    assert line.startswith("python3 -m venv .venv && ") and "scripts/demo.py" in line
    repo = fresh_copy(tmp_path / "doubleword-batch")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(python)
    env = clean_env(tmp_path, f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheelhouse))
    proc = subprocess.run(["bash", "-c", line], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Done. Everything the demo wrote is in" in proc.stdout
    assert proc.stdout.count("(exit code ") == 5  # every step ran, with the venv's Python
    results = re.search(r"## The results file: (\S+)", proc.stdout).group(1)
    assert [json.loads(x)["status"] for x in open(results)] == ["ok"] * 5
    # The steps ran with the Python that ran the demo, the venv's: the PEP 668 python3 on PATH
    # has no packages, so a step run by it would have stopped at missing_dependency.
    assert "missing_dependency" not in proc.stdout + proc.stderr


def _bundle(dest: Path) -> Path:
    """What ClawHub publishes: a fresh copy minus what .clawhubignore names."""
    repo = fresh_copy(dest)
    patterns = [p.strip() for p in (repo / ".clawhubignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    for path in sorted(repo.rglob("*"), reverse=True):
        rel = path.relative_to(repo)
        for pattern in patterns:
            hit = (any(fnmatch.fnmatch(part, pattern.rstrip("/")) for part in rel.parts)
                   if pattern.endswith("/") else fnmatch.fnmatch(path.name, pattern))
            if hit and path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    return repo


def _uv() -> str | None:
    here = Path(sys.executable).parent / ("uv.exe" if os.name == "nt" else "uv")
    return shutil.which("uv") or (str(here) if here.exists() else None)


@pytest.mark.skipif(_uv() is None, reason="uv is not installed (pip install uv, or see "
                    "requirements-dev.txt); `uv run` of the demo is not tested")
def test_uv_run_demo_in_the_published_bundle(wheelhouse, tmp_path):
    bundle = _bundle(tmp_path / "doubleword-batch")
    assert not (bundle / "pyproject.toml").exists() and not (bundle / "tests").exists()
    base = getattr(sys, "_base_executable", None) or sys.executable
    env = clean_env(tmp_path, os.environ.get("PATH"))
    env.update(UV_OFFLINE="1", UV_NO_INDEX="1", UV_FIND_LINKS=str(wheelhouse),
               UV_CACHE_DIR=str(tmp_path / "uv-cache"), UV_PYTHON=base,
               UV_PYTHON_DOWNLOADS="never", UV_NO_CONFIG="1")
    proc = subprocess.run([_uv(), "run", "scripts/demo.py", "--workdir", str(tmp_path / "w")],
                          cwd=bundle, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(x) for x in open(tmp_path / "w" / "reviews.results.jsonl")]
    assert [r["status"] for r in records] == ["ok"] * 5
    assert not (bundle / ".venv").exists()  # uv kept its environment to itself
