"""The README's first command: the demo runs the whole workflow against its own sandbox."""

from __future__ import annotations

import json

from conftest import ROOT, run_script, script_env


def test_demo_runs_the_whole_workflow_and_joins_every_row(tmp_path):
    work = tmp_path / "demo"
    proc = run_script("demo.py", "--workdir", str(work), env=script_env(key=None), cwd=ROOT,
                      timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for command in ("create_batch_file.py", "submit.py", "poll.py", "fetch_results.py"):
        assert f"$ python3 scripts/{command}" in proc.stdout
    records = [json.loads(line) for line in (work / "reviews.results.jsonl").open()]
    assert [r["custom_id"] for r in records] == ["r001", "r002", "r003", "r004", "r005"]
    reviews = {"r001": "Boils fast", "r003": "Stopped working", "r005": "Consistent grind"}
    for record in records:
        assert record["status"] == "ok"
        assert set(record["json"]) == {"sentiment", "reason"}
        if record["custom_id"] in reviews:
            assert reviews[record["custom_id"]] in record["json"]["reason"]


def test_demo_live_without_key_is_refused_before_anything_runs(tmp_path):
    proc = run_script("demo.py", "--live", "--workdir", str(tmp_path / "d"),
                      env=script_env(key=None), cwd=ROOT)
    assert proc.returncode == 2
    assert "DOUBLEWORD_API_KEY" in proc.stderr and "--model" in proc.stderr
    assert not (tmp_path / "d").exists()
