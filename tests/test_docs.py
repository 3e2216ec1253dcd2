"""Gates that keep the documentation true to the code: SKILL.md frontmatter is valid under the
Agent Skills reference validator, every script is documented and answers --help, every
environment variable a script reads is declared, and every relative link resolves."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, SCRIPTS, run_script

SKILL = ROOT / "SKILL.md"


def _frontmatter() -> dict:
    text = SKILL.read_text(encoding="utf-8")
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert match, "SKILL.md must start with a --- frontmatter block"
    return yaml.safe_load(match.group(1))


def test_reference_validator_accepts_the_skill(tmp_path):
    skill_dir = tmp_path / "doubleword-batch"
    skip = shutil.ignore_patterns(".git", ".venv", ".dwtools", "work", "__pycache__",
                                  ".pytest_cache")
    shutil.copytree(ROOT, skill_dir, ignore=skip)
    proc = subprocess.run([sys.executable, "-m", "skills_ref.cli", "validate", str(skill_dir)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_frontmatter_has_the_fields_clawhub_needs():
    fm = _frontmatter()
    assert set(fm) <= {"name", "description", "license", "compatibility", "metadata",
                       "allowed-tools"}
    assert fm["name"] == "doubleword-batch"
    assert fm["license"] == "MIT-0"
    assert len(fm["description"]) <= 1024 and "Use when" in fm["description"]
    claw = fm["metadata"]["openclaw"]
    assert claw["primaryEnv"] == "DOUBLEWORD_API_KEY"
    assert claw["requires"]["env"] == ["DOUBLEWORD_API_KEY"]
    assert claw["requires"]["bins"] == ["python3"]
    assert fm["metadata"]["version"]


def test_frontmatter_is_block_style_yaml_only():
    text = SKILL.read_text(encoding="utf-8").split("\n---\n", 1)[0]
    for line in text.splitlines()[1:]:
        value = line.split(":", 1)[1].strip() if ":" in line else line.strip()
        assert not value.startswith(("{", "[")), f"flow-style YAML in SKILL.md: {line!r}"


def test_skill_md_is_under_500_lines():
    assert len(SKILL.read_text(encoding="utf-8").splitlines()) < 500


def _scripts() -> list[str]:
    return sorted(p.name for p in SCRIPTS.glob("*.py"))


@pytest.mark.parametrize("script", _scripts())
def test_every_script_is_in_skill_md_and_answers_help(script):
    assert f"scripts/{script}" in SKILL.read_text(encoding="utf-8"), \
        f"{script} is not mentioned in SKILL.md"
    proc = run_script(script, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "examples:" in proc.stdout and "exit codes:" in proc.stdout


def test_every_environment_variable_read_is_declared():
    declared = {v["name"] for v in _frontmatter()["metadata"]["openclaw"]["envVars"]}
    read: set[str] = set()
    pattern = re.compile(r"""(?:environ(?:\.get)?[\[(]|getenv\()\s*["']([A-Z][A-Z0-9_]+)["']""")
    constants = re.compile(r"""^([A-Z_]+_ENV)\s*=\s*["']([A-Z][A-Z0-9_]+)["']""", re.M)
    for path in SCRIPTS.rglob("*.py"):
        if "sandbox" in path.parts or path.name == "sandbox_server.py":
            continue
        text = path.read_text(encoding="utf-8")
        read.update(pattern.findall(text))
        read.update(name for _, name in constants.findall(text))
    assert read, "found no environment variables at all: the scan is broken"
    assert read <= declared, f"undeclared in SKILL.md frontmatter: {sorted(read - declared)}"


def _markdown_files() -> list[Path]:
    return [ROOT / "SKILL.md", ROOT / "README.md", *sorted((ROOT / "references").glob("*.md"))]


@pytest.mark.parametrize("doc", _markdown_files(), ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    text = doc.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        assert (doc.parent / path).exists(), f"{doc.name} links to missing {target}"
