"""SKILL.md's workflow, run as written: every command of its "The workflow" section, in the
order shown, against the sandbox, each exiting as SKILL.md says it will."""

from __future__ import annotations

import csv
import json
import re
import shlex
import subprocess

from conftest import PYTHON, ROOT, TEST_KEY, assert_no_key_in_tree, script_env

SKILL = (ROOT / "SKILL.md").read_text(encoding="utf-8")
WORKFLOW = SKILL[SKILL.index("## The workflow"):SKILL.index("## Exit codes")]


def _steps() -> list[tuple[str, str]]:
    """(command, the step's text) for each command line of the workflow, in order."""
    steps = []
    for text in re.split(r"\n(?=\d\. \*\*)", WORKFLOW)[1:]:
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            steps += [(line.strip(), text) for line in block.splitlines() if line.strip()]
    return steps


def _run(command: str, cwd, env) -> subprocess.CompletedProcess:
    argv = shlex.split(command.replace("{baseDir}", str(ROOT)).replace("MODEL", "sandbox-chat"))
    assert argv[0] == "python3"
    proc = subprocess.run([PYTHON, *argv[1:]], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert TEST_KEY not in proc.stdout + proc.stderr
    return proc


def test_workflow_commands_run_in_order_and_exit_as_documented(sandbox_factory, tmp_path):
    sb = sandbox_factory("--manual", "--seed", "3")
    rows = ["id,text", "a1,I loved it", "a2,Terrible service", "a3,It was fine [[outage:503]]",
            "a4,Would buy again"]
    (tmp_path / "rows.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    env = script_env(sb.base_url)
    steps = _steps()
    assert [c.split()[1].rsplit("/", 1)[1] for c, _ in steps] == [
        "create_batch_file.py", "submit.py", "poll.py", "fetch_results.py", "submit.py",
        "fetch_results.py"], "the test's scenario below follows SKILL.md's steps"
    # What this scenario should give at each step; each code must be what SKILL.md promises.
    expected = [0, 0, 3, 4, 0, 0]
    advance_before = {3: True, 5: True}  # the sandbox finishes the batches before these steps
    nexts: list[str] = []
    for index, ((command, text), code) in enumerate(zip(steps, expected, strict=True)):
        if advance_before.get(index):
            sb.advance()
        proc = _run(command, tmp_path, env)
        out = json.loads(proc.stdout)
        assert proc.returncode == code, f"step {index + 1}: {command}\n{proc.stdout}{proc.stderr}"
        assert re.search(rf"\b[Ee]xit {code}\b", text), \
            f"SKILL.md does not say that `{command}` can exit {code}"
        assert out["exit_code"] == code and "next" in out
        nexts.append(out["next"] or "")
    assert "submit.py" in nexts[0] and "poll.py" in nexts[1] and "poll.py" in nexts[2]
    assert "submit.py" in nexts[3] and "prompts.retry.jsonl" in nexts[3], \
        "after failures, next is the command that submits the retry file"
    results = [json.loads(line) for line in (tmp_path / "prompts.results.jsonl").open()]
    assert [r["custom_id"] for r in results] == ["a1", "a2", "a3", "a4"]
    assert all(r["status"] == "ok" for r in results)
    assert results[1]["content"].endswith("Terrible service")
    # the user's own table: rows.csv with the answers added, cell by cell
    with open(tmp_path / "prompts.table.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    source = [dict(zip(["id", "text"], r.split(","), strict=True)) for r in rows[1:]]
    assert [{"id": t["id"], "text": t["text"]} for t in table] == source
    assert [(t["status"], t["answer"], t["error"]) for t in table] == [
        ("ok", r["content"], "") for r in results]
    # ... and a valid input for the next stage
    nxt = _run("python3 {baseDir}/scripts/create_batch_file.py prompts.table.csv -o next.jsonl "
               "--model MODEL --id-column id --template 'Shorten: {answer}' --json",
               tmp_path, env)
    assert nxt.returncode == 0, nxt.stdout + nxt.stderr
    assert (tmp_path / "prompts.job.json").exists()
    assert (tmp_path / "prompts.retry.job.json").exists()
    assert_no_key_in_tree(tmp_path)


def test_check_command_shown_in_skill_md_lists_problems(tmp_path):
    assert "create_batch_file.py --check FILE.jsonl" in WORKFLOW
    bad = tmp_path / "FILE.jsonl"
    bad.write_text('{"custom_id": "x", "method": "GET"}\nnot json\n', encoding="utf-8")
    proc = _run("python3 {baseDir}/scripts/create_batch_file.py --check FILE.jsonl", tmp_path,
                script_env())
    assert proc.returncode == 2
    assert "line 1" in proc.stderr.lower() and "line 2" in proc.stderr.lower()
