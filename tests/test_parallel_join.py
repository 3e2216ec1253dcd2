"""The join in two processes: result lines indexed by a forked child while the parent indexes
the request lines, then the later requests joined by a forked child while the parent joins the
first ones. It writes the very bytes one process writes; a child that fails, is killed or says
too much leaves the work to the parent; a parent that stops leaves no child and no index file
behind."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time

import pytest
from conftest import run_script, sandbox_per_file, script_env, write_lines
from dwbatch import forked, join_index, reconcile
from dwbatch.errors import InputError
from test_reconcile import SCHEMA, chat_ok, chat_req, err_line, run, source
from test_rejoin import assert_same_as_full_join, mixed_requests, submit

shared_sandbox, sb = sandbox_per_file("--enable-faults", "--manual", "--seed", "11")

FORMAT = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}


@pytest.fixture
def forks(monkeypatch):
    """The process ids of the children started (forked.start, unchanged otherwise)."""
    started = []
    real = forked.start

    def counting(function, *args):
        child = real(function, *args)
        started.append(child.pid if child is not None else None)
        return child

    monkeypatch.setattr(forked, "start", counting)
    return started


def family(tmp_path, n=60):
    """An original job (shuffled answers, failures, cut answers, structured ones, a repeated
    custom_id, an unreadable line) and its retry job, still running."""
    reqs = []
    for i in range(n):
        if i % 7 == 3:
            reqs.append(chat_req(f"r{i}", f"p{i}", response_format=FORMAT))
        else:
            reqs.append(chat_req(f"r{i}", f"p{i}"))
    reqs.append(chat_req("r5", "repeated"))
    outs, errs = [], []
    for i in range(n):
        if i % 7 == 3:
            outs.append(chat_ok(f"r{i}", json.dumps({"answer": i} if i % 2 else {"answer": "y"})))
        elif i % 5 == 1:
            errs.append(err_line(f"r{i}", "boom"))
        elif i % 11 == 2:
            outs.append(chat_ok(f"r{i}", "cut", finish="length"))
        else:
            outs.append(chat_ok(f"r{i}", f"ECHO p{i}"))
    random.Random(3).shuffle(outs)
    first = source(tmp_path, "orig", reqs, outs, errs)
    with open(first.output_path, "a") as f:
        f.write('{"custom_id": "r0", "response": {"body": [1, 2\nnot JSON, no custom_id\n')
    retried = [r for r in reqs if int(r["custom_id"][1:]) % 10 == 1]
    second = source(tmp_path, "retry", retried, [chat_ok(retried[0]["custom_id"], "at last")],
                    [], status="in_progress", job=1)
    return [first, second]


def one_job(tmp_path, n=80):
    """One running job, every request once: the usual join (ok, failed, cut, structured,
    unreadable, pending and answers to no request)."""
    sources = family(tmp_path, n)
    first = sources[0]
    lines = open(first.input_path).read().splitlines(keepends=True)[:n]
    open(first.input_path, "w").writelines(lines)
    body = open(first.output_path).read().replace('{"custom_id": "r0", "response"', '{"r"')
    for i in (9, 19):  # no answer yet (theirs name no request)
        body = body.replace(f'"custom_id": "r{i}"', f'"custom_id": "x{i}"')
    open(first.output_path, "w").write(body)
    first.batch_status = "in_progress"
    return [first]


def joined(tmp_path, mode, monkeypatch, scenario=family, fmt="jsonl"):
    monkeypatch.setenv(forked.MODE_ENV, mode)
    folder = tmp_path / mode
    folder.mkdir(exist_ok=True)
    summary, records, retry = run(scenario(tmp_path), folder, fmt=fmt)
    return summary, (folder / f"results.{fmt}").read_bytes(), records, \
        open(retry, "rb").read() if retry else None


@pytest.mark.parametrize("scenario,fmt,children", [(family, "jsonl", 1), (one_job, "jsonl", 2),
                                                   (one_job, "csv", 2)])
def test_a_forked_join_writes_what_one_process_writes(tmp_path, monkeypatch, forks, scenario,
                                                      fmt, children):
    one = joined(tmp_path, "never", monkeypatch, scenario, fmt)
    assert forks == []
    two = joined(tmp_path, "always", monkeypatch, scenario, fmt)
    # the result lines indexed apart (and, with every request once, the later ones joined apart)
    assert len(forks) == children and all(forks)
    assert two[1] == one[1] and two[3] == one[3]
    assert two[0] == one[0]  # the same counts, usage, unreadable and superseded lines
    assert one[0].unreadable_results >= 1
    statuses = {r["status"] for r in one[2]}
    assert {"ok", "error", "truncated", "schema_invalid", "pending"} <= statuses


@pytest.mark.parametrize("scenario", [family, one_job])
@pytest.mark.parametrize("failure", ["raises", "exits", "killed", "says too much"])
def test_a_failed_child_leaves_the_work_to_the_parent(tmp_path, monkeypatch, failure, scenario):
    expected = joined(tmp_path, "never", monkeypatch, scenario)
    real = forked.start

    def broken(*args):
        if failure == "raises":
            raise OSError("the disk is gone")
        if failure == "exits":
            os._exit(3)
        if failure == "killed":
            os.kill(os.getpid(), signal.SIGKILL)
        return {"result_files": "x" * (2 << 20)}

    monkeypatch.setattr(forked, "start", lambda function, *args: real(broken, *args))
    got = joined(tmp_path, "always", monkeypatch, scenario)
    assert got[1] == expected[1] and got[3] == expected[3] and got[0] == expected[0]


def test_a_stopped_build_leaves_no_child_and_no_index_file(tmp_path, monkeypatch, forks):
    monkeypatch.setenv(forked.MODE_ENV, "always")
    sources = family(tmp_path)
    os.unlink(sources[1].input_path)  # the parent stops at the retry job's request lines
    work = tmp_path / "work"
    work.mkdir()
    index = join_index.Index(str(work))
    with pytest.raises(InputError, match="does not exist"):
        index.build(sources)
    index.close()
    assert len(forks) == 1 and forks[0]
    with pytest.raises(ChildProcessError):  # stopped and waited for: no zombie either
        os.waitpid(forks[0], os.WNOHANG)
    assert list(work.iterdir()) == []


def test_a_join_stopped_halfway_leaves_no_child_and_no_spool(tmp_path, monkeypatch, forks):
    monkeypatch.setenv(forked.MODE_ENV, "always")
    work = tmp_path / "work"
    work.mkdir()
    seen = []

    def on_record(chosen):
        seen.append(chosen.record["custom_id"])
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        reconcile.reconcile(one_job(tmp_path), on_record, tmp_dir=str(work))
    assert len(forks) == 2 and all(forks)
    for pid in forks:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    assert list(work.iterdir()) == []


def test_a_child_gives_back_its_value_or_none():
    child = forked.start(lambda a, b: {"sum": a + b, "text": "é"}, 2, 3)
    assert child.result() == {"sum": 5, "text": "é"}
    assert forked.start(lambda: 1 / 0).result() is None
    sleeper = forked.start(time.sleep, 60)
    started = time.monotonic()
    sleeper.stop()
    assert time.monotonic() - started < 10
    assert sleeper.result() is None  # (already reaped: nothing to wait for, no value)


def test_when_to_fork(monkeypatch):
    monkeypatch.setattr(forked, "_can_fork", lambda: True)
    monkeypatch.delenv(forked.MODE_ENV, raising=False)
    assert not forked.wanted(10, 100) and forked.wanted(100, 100)
    monkeypatch.setenv(forked.MODE_ENV, "never")
    assert not forked.wanted(10**9, 100)
    monkeypatch.setenv(forked.MODE_ENV, "always")
    assert forked.wanted(0, 100)
    monkeypatch.setattr(forked, "_can_fork", lambda: False)
    assert not forked.wanted(10**9, 100)


def test_no_fork_while_another_thread_runs(monkeypatch):
    monkeypatch.setenv(forked.MODE_ENV, "always")
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert not forked.wanted(10**9, 1)
    finally:
        stop.set()
        thread.join()


def test_fetches_of_a_running_job_in_two_processes_write_what_one_process_writes(sb, tmp_path):
    """End to end: the forked full join keeps both halves of its index, a later fetch brings
    them up to date, and every file is what a one-process full join writes."""
    job, batch_id = submit(sb, write_lines(tmp_path / "p.jsonl", mixed_requests(48)))
    both = dict(script_env(sb.base_url), DWBATCH_PARALLEL="always")
    sb.advance(batch_id, 20)
    proc = run_script("fetch_results.py", job.name, "--json", env=both, cwd=tmp_path)
    assert proc.returncode == 3, proc.stdout
    assert sorted(p.name for p in tmp_path.glob(".p.results.jsonl.join.*")) == [
        ".p.results.jsonl.join.sizes", ".p.results.jsonl.join.sqlite",
        ".p.results.jsonl.join.sqlite-results"]
    sb.advance(batch_id, 10)
    proc = run_script("fetch_results.py", job.name, "--json", env=both, cwd=tmp_path)
    assert "new result line(s) joined into" in proc.stderr, proc.stderr
    assert_same_as_full_join(sb, tmp_path, json.loads(proc.stdout), [job.name], "jsonl")
