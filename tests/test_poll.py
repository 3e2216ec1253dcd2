"""poll.py: the wait loop's policy (unit, fake clock) and the real script against the sandbox:
every state and exit code, mixed shards, --wait finishing / timing out / Ctrl-C, job file
updates."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid

import pytest
from conftest import (
    PYTHON,
    SCRIPTS,
    TEST_KEY,
    create_batch_direct,
    run_json,
    run_script,
    script_env,
    start_sandbox,
    write_job,
)
from dwbatch import errors, polling

# =============================================================================== unit

class FakeClock:
    def __init__(self) -> None:
        self.t = 1_000_000.0
        self.scale = 1.0

    def time(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)


def linear_batch(clock, t0, total=3600, validating=5.0, rate=1.0, finalizing=5.0):
    """A fake server: validating, then `rate` requests/s, then finalizing, then completed."""
    def get(batch_id):
        el = clock.t - t0
        counts = {"total": total, "completed": 0, "failed": 0}
        if el < validating:
            return {"id": batch_id, "status": "validating", "request_counts": counts}
        done = min(total, int((el - validating) * rate))
        counts["completed"] = done
        if done < total:
            st = "in_progress"
        else:
            ended = validating + total / rate
            st = "finalizing" if el < ended + finalizing else "completed"
        return {"id": batch_id, "status": st, "request_counts": counts, "in_progress_at": 1}
    return get


def tracker_for(clock, *ids):
    return polling.Tracker([polling.Target(i, entries=[polling.Entry(i)]) for i in ids], clock)


@pytest.mark.parametrize("current,reset,cap,eta,expected", [
    (2.0, False, 60.0, None, 3.0),       # grows while nothing changes
    (50.0, False, 60.0, None, 60.0),     # capped
    (60.0, True, 60.0, None, 2.0),       # back to short after a change
    (60.0, False, 60.0, 30.0, 15.0),     # pulled in by the ETA
    (60.0, False, 60.0, 1.0, 2.0),       # but never below the start
    (0.2, False, 0.2, None, 0.2),        # a cap below the start wins
])
def test_next_interval(current, reset, cap, eta, expected):
    assert polling.next_interval(current, reset=reset, cap=cap, eta=eta) == pytest.approx(
        expected)


def test_an_hour_long_batch_costs_well_under_200_checks():
    clock = FakeClock()
    get = linear_batch(clock, clock.t)
    tracker = tracker_for(clock, "b1")
    intervals = []
    out = polling.wait(tracker, get, cap=60.0, timeout=None,
                       on_progress=lambda t, n: intervals.append(n))
    assert not out.timed_out and not out.interrupted
    assert tracker.batches["b1"]["status"] == "completed"
    assert tracker.calls == out.polls < 120
    assert max(intervals) == pytest.approx(60.0)
    # the end is noticed soon after it happens (the ETA pulls the interval in)
    assert out.seconds <= 5 + 3600 + 5 + 4


def test_steady_progress_does_not_reset_but_progress_after_a_stall_does():
    clock = FakeClock()
    t0 = clock.t

    def get(batch_id):  # queued for 10 minutes, then 1 request/s
        done = max(0, min(1200, int(clock.t - t0 - 600)))
        return {"id": batch_id, "status": "in_progress" if done < 1200 else "completed",
                "in_progress_at": 1,
                "request_counts": {"total": 1200, "completed": done, "failed": 0}}

    tracker = tracker_for(clock, "q")
    log = []
    polling.wait(tracker, get, cap=60.0, timeout=None,
                 on_progress=lambda t, n: log.append((clock.t - t0, n)))
    before = [n for t, n in log if t < 600]
    after_start = [n for t, n in log if 600 < t < 700]
    assert before[-1] == pytest.approx(60.0)  # nothing moved: grew to the cap
    assert after_start[0] == pytest.approx(2.0)  # moving after the stall: short again
    steady = [n for t, n in log if 900 < t < 1500]
    assert steady and min(steady) > 30  # steady progress keeps the long interval


def test_check_again_is_the_soonest_of_several_batches_from_their_own_counts():
    """The issue's case: one batch measurably near its end (ETA ~6 s), one with nothing to
    measure yet: look again in 30 s (the soonest, floored), not in 10 minutes."""
    clock = FakeClock()
    now = clock.t
    batches = {
        "fast": {"id": "fast", "status": "in_progress", "in_progress_at": now - 60,
                 "request_counts": {"total": 100, "completed": 90, "failed": 0}},
        "queued": {"id": "queued", "status": "validating", "created_at": now - 5,
                   "request_counts": {"total": 100, "completed": 0, "failed": 0}},
    }
    tracker = tracker_for(clock, "fast", "queued")
    polling.check(tracker, batches.__getitem__, only_unsettled=False)
    result = polling.report(tracker, None, ["fast", "queued"])
    views = {v["batch_id"]: v for v in result.fields["batches"]}
    assert views["fast"]["eta_seconds"] == pytest.approx(6.7, abs=0.1)  # 90 done in 60 s
    assert views["queued"]["eta_seconds"] is None
    assert result.fields["check_again_in_seconds"] == 30
    # only the queued one left, still not moving: 60 s, then 120 s
    tracker = tracker_for(clock, "queued")
    for expected in (60, 120, 240):
        polling.check(tracker, batches.__getitem__, only_unsettled=False)
        assert polling.report(tracker, None, ["queued"]).fields["check_again_in_seconds"] \
            == expected
        clock.sleep(expected)


def test_fixed_two_second_interval_costs_what_the_official_cli_does():
    clock = FakeClock()
    tracker = tracker_for(clock, "b1")
    polling.wait(tracker, linear_batch(clock, clock.t), cap=2.0, timeout=None)
    assert 1790 <= tracker.calls <= 1815


def test_timeout_stops_waiting_and_reports_running():
    clock = FakeClock()
    tracker = tracker_for(clock, "b1")
    out = polling.wait(tracker, linear_batch(clock, clock.t), cap=60.0, timeout=100.0)
    assert out.timed_out and out.seconds == pytest.approx(100.0, abs=0.01)
    result = polling.report(tracker, out, ["b1"])
    assert result.exit_code == errors.NOT_FINISHED
    assert result.fields["wait"]["timed_out"] is True
    assert "poll.py b1 --json" in result.next


def test_ctrl_c_during_wait_is_reported_not_raised():
    clock = FakeClock()
    get = linear_batch(clock, clock.t)
    calls = []

    def get_then_interrupt(batch_id):
        calls.append(batch_id)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return get(batch_id)

    tracker = tracker_for(clock, "b1")
    out = polling.wait(tracker, get_then_interrupt, cap=60.0, timeout=None)
    assert out.interrupted and out.polls == 2
    result = polling.report(tracker, out, ["b1"])
    assert result.exit_code == errors.INTERRUPTED
    assert "nothing was cancelled" in result.summary


def test_wait_skips_settled_batches_and_gives_up_on_a_stuck_cancel():
    clock = FakeClock()
    done = {"id": "a", "status": "completed",
            "request_counts": {"total": 1, "completed": 1, "failed": 0}}
    stuck = {"id": "b", "status": "cancelling", "in_progress_at": 5,
             "request_counts": {"total": 4, "completed": 1, "failed": 0}}
    seen = []

    def get(batch_id):
        seen.append(batch_id)
        return done if batch_id == "a" else stuck

    tracker = tracker_for(clock, "a", "b")
    out = polling.wait(tracker, get, cap=60.0, timeout=None)
    assert seen.count("a") == 1 and seen.count("b") > 1
    assert out.seconds < polling.CANCELLING_GRACE + 20
    result = polling.report(tracker, out, ["a", "b"])
    assert result.exit_code == errors.BATCH_UNSUCCESSFUL


def test_cancelled_while_validating_is_not_waited_on():
    clock = FakeClock()
    tracker = tracker_for(clock, "v")
    out = polling.wait(tracker, lambda i: {"id": i, "status": "cancelling",
                                           "request_counts": {"total": 3}},
                       cap=60.0, timeout=None)
    assert out.polls == 1
    result = polling.report(tracker, out, ["v"])
    assert result.exit_code == errors.BATCH_UNSUCCESSFUL
    assert result.fields["batches"][0]["state"] == "cancelled_while_validating"


def test_time_scale_env_is_checked(monkeypatch):
    monkeypatch.setenv(polling.TIME_SCALE_ENV, "0")
    with pytest.raises(errors.InputError):
        polling.clock_from_env()
    monkeypatch.setenv(polling.TIME_SCALE_ENV, "100")
    clock = polling.clock_from_env()
    t0, start = clock.time(), time.monotonic()
    clock.sleep(2.0)
    assert time.monotonic() - start < 1.0 and clock.time() - t0 >= 2.0


# =============================================================================== sandbox

@pytest.fixture(scope="module")
def sb():
    """One manual sandbox for the module: batches move only when a test advances them."""
    box = start_sandbox("--enable-faults", "--manual")
    yield box
    box.stop()


def env_for(box):
    return script_env(box.base_url)



def poll(box, *args, **kw):
    return run_json("poll.py", *args, env=env_for(box), **kw)


def test_running_batch_is_exit_3_with_the_same_poll_command_next(sb):
    b = create_batch_direct(sb, ["a", "b", "c", "d", "e"])
    code, out = poll(sb, b["id"])
    assert code == 3 and out["ok"] is False
    assert out["batches"][0]["state"] == "validating"
    assert out["next"].endswith(f"poll.py {b['id']} --json")
    assert out["check_again_in_seconds"] == 60, "nothing to measure yet: a minute"
    assert "again in about 1m 00s" in out["hint"]
    sb.advance(b["id"], 2)
    code, out = poll(sb, b["id"])
    assert code == 3
    view = out["batches"][0]
    assert view["status"] == "in_progress" and view["percent"] == 40.0
    assert view["request_counts"] == {"total": 5, "completed": 2, "failed": 0}
    assert view["expires_in_seconds"] > 23 * 3600
    human = run_script("poll.py", b["id"], env=env_for(sb))
    assert human.returncode == 3
    assert "2/5 done (40%)" in human.stdout and "expires in 23h" in human.stdout
    assert "next: " in human.stdout and human.stderr == ""


@pytest.mark.parametrize("prompts,code,state", [
    (["a", "b"], 0, "completed"),
    (["a", "b [[fail:400]]"], 4, "completed_with_failures"),
    (["a [[fail:400]]", "b [[fail:422]]"], 5, "failed"),
])
def test_finished_states_and_exit_codes(sb, prompts, code, state):
    b = create_batch_direct(sb, prompts)
    sb.advance(b["id"])
    got, out = poll(sb, b["id"])
    assert got == code
    assert out["batches"][0]["state"] == state
    assert "fetch_results.py" in out["next"] and out["next"].endswith("--json")
    if code == 4:
        assert "batches.py retry" in out["hint"] and "retry file" in out["hint"]
        assert f"retry {b['id']} --json" in out["hint"]
        assert out["batches"][0]["request_counts"]["failed"] == 1


def test_cancelled_and_cancelled_while_validating_are_exit_5(sb):
    running = create_batch_direct(sb, ["a", "b", "c"])
    sb.advance(running["id"], 1)
    sb.post(f"/batches/{running['id']}/cancel")
    code, out = poll(sb, running["id"])
    assert code == 5 and out["batches"][0]["state"] == "cancelling"
    sb.advance(running["id"])
    code, out = poll(sb, running["id"])
    assert code == 5 and out["batches"][0]["state"] == "cancelled"

    early = create_batch_direct(sb, ["a"])
    sb.post(f"/batches/{early['id']}/cancel")
    sb.advance(early["id"])  # the server quirk: it stays cancelling
    assert sb.get(f"/batches/{early['id']}").json()["status"] == "cancelling"
    started = time.monotonic()
    code, out = poll(sb, early["id"], "--wait", "--interval", "0.2")
    assert code == 5 and time.monotonic() - started < 10
    view = out["batches"][0]
    assert view["state"] == "cancelled_while_validating"
    assert any("indefinitely" in n for n in view["notes"])


def test_expired_on_a_stock_openai_server(sandbox_factory):
    box = sandbox_factory("--enable-faults", "--manual", "--openai-compat")
    b = create_batch_direct(box, ["a", "b", "c"], window="1h")
    box.advance(b["id"], 1)
    code, out = poll(box, b["id"])
    assert code == 3
    view = out["batches"][0]
    assert view["output_file_id"] is None  # this kind of server sets it at the end
    assert any("no output file id yet" in n for n in view["notes"])
    box.control("POST", "/clock", {"advance_seconds": 7200})
    code, out = poll(box, b["id"])
    assert code == 5 and out["batches"][0]["state"] == "expired"
    assert "fetch_results.py" in out["next"]


def test_job_with_mixed_shards_is_aggregated_and_shown_per_shard(sb, tmp_path):
    done = create_batch_direct(sb, ["a", "b"])
    partial = create_batch_direct(sb, ["a", "b [[fail:400]]"])
    running = create_batch_direct(sb, ["a", "b", "c", "d"])
    for b in (done, partial):
        sb.advance(b["id"])
    sb.advance(running["id"], 1)
    job = write_job(tmp_path / "mix.job.json", sb, [done, partial, running])
    code, out = poll(sb, str(job))
    assert code == 3  # running beats failed requests
    (j,) = out["jobs"]
    assert j["state"] == "mixed" and j["batches"] == 3
    assert j["request_counts"] == {"total": 8, "completed": 4, "failed": 1}
    assert [v["shard"] for v in out["batches"]] == [0, 1, 2]
    human = run_script("poll.py", str(job), env=env_for(sb))
    assert "mix.job.json (3 batches): mixed" in human.stdout
    assert "shard 2 " in human.stdout and "completed_with_failures" in human.stdout

    sb.advance(running["id"])
    code, out = poll(sb, str(job))
    assert code == 4  # all finished, some requests failed
    cancelled = create_batch_direct(sb, ["x"])
    sb.post(f"/batches/{cancelled['id']}/cancel")
    code, out = poll(sb, str(job), cancelled["id"])  # a job and a bare id together
    assert code == 5
    assert len(out["batches"]) == 4 and out["batches"][3]["job_file"] is None
    assert "fetch_results.py" in out["next"] and cancelled["id"] in out["next"]


def test_job_file_is_updated_with_counts_ids_and_progress_for_the_eta(sb, tmp_path):
    b = create_batch_direct(sb, [str(i) for i in range(10)])
    path = write_job(tmp_path / "p.job.json", sb, [b])
    before = json.loads(path.read_text())
    assert "output_file_id" not in before["shards"][0]
    sb.advance(b["id"], 2)
    code, out = poll(sb, str(path))
    # one sample: the ETA comes from the batch's own counts since in_progress_at
    assert code == 3 and out["batches"][0]["eta_seconds"] is not None
    assert out["check_again_in_seconds"] == 30  # half a tiny ETA, but never below 30 s
    time.sleep(0.3)
    sb.advance(b["id"], 4)
    code, out = poll(sb, str(path))
    assert out["batches"][0]["eta_seconds"] is not None
    assert out["jobs"][0]["eta_seconds"] == out["batches"][0]["eta_seconds"]
    shard = json.loads(path.read_text())["shards"][0]
    assert shard["status"] == "in_progress"
    assert shard["request_counts"] == {"total": 10, "completed": 6, "failed": 0}
    assert shard["output_file_id"] == b["output_file_id"]
    assert shard["error_file_id"] == b["error_file_id"]
    assert [s[1] for s in shard["progress_samples"]] == [2, 6]
    assert not list(tmp_path.glob(".p.job.json.*.tmp"))  # atomic writes leave no temp file


def test_wait_returns_when_the_batch_finishes(sb):
    b = create_batch_direct(sb, ["a", "b", "c"])
    proc = subprocess.Popen(
        [PYTHON, str(SCRIPTS / "poll.py"), b["id"], "--wait", "--interval", "0.2", "--json"],
        env=env_for(sb), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_status_calls(sb, b["id"], 2)
    sb.advance(b["id"])
    stdout, stderr = proc.communicate(timeout=30)
    assert TEST_KEY not in stdout + stderr
    out = json.loads(stdout)
    assert proc.returncode == 0 and out["exit_code"] == 0
    assert out["wait"]["polls"] >= 2 and not out["wait"]["timed_out"]
    assert stderr == ""  # no live progress line when stderr is not a terminal


def test_wait_times_out_with_exit_3(sb):
    b = create_batch_direct(sb, ["a"])
    started = time.monotonic()
    code, out = poll(sb, b["id"], "--wait", "--timeout", "1", "--interval", "0.2")
    assert code == 3 and out["wait"]["timed_out"] is True
    assert 0.9 <= time.monotonic() - started < 10
    assert out["wait"]["polls"] >= 3
    assert out["next"].endswith(f"poll.py {b['id']} --json")


def test_ctrl_c_during_wait_exits_130_and_leaves_the_batch_running(sb):
    b = create_batch_direct(sb, ["a", "b"])
    sb.advance(b["id"], 1)
    proc = subprocess.Popen(
        [PYTHON, str(SCRIPTS / "poll.py"), b["id"], "--wait", "--interval", "0.2", "--json"],
        env=env_for(sb), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_status_calls(sb, b["id"], 2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    out = json.loads(stdout)
    assert out["exit_code"] == 130 and out["wait"]["interrupted"] is True
    assert "Traceback" not in stderr
    assert sb.get(f"/batches/{b['id']}").json()["status"] == "in_progress"
    assert not [c for c in sb.calls() if c["path"].endswith(f"{b['id']}/cancel")]


def test_bad_targets_are_exit_2_and_say_what_to_do(sb, tmp_path):
    code, out = poll(sb, str(tmp_path / "missing.job.json"))
    assert code == 2 and "no such job file" in out["error"]["message"]
    (tmp_path / "in.jsonl").write_text("{}\n")
    code, out = poll(sb, str(tmp_path / "in.jsonl"))
    assert code == 2 and "not a job file" in out["error"]["message"]
    unknown = str(uuid.uuid4())
    code, out = poll(sb, unknown)
    assert code == 2 and unknown in out["error"]["message"]
    assert "not found" in out["error"]["message"]
    broken = tmp_path / "broken.job.json"
    broken.write_text("{not json")
    code, out = poll(sb, str(broken))
    assert code == 2 and "broken.job.json" in out["error"]["message"]
    assert broken.read_text() == "{not json"


def _wait_for_status_calls(box, batch_id: str, n: int, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    path = f"/v1/batches/{batch_id}"
    while time.monotonic() < deadline:
        if sum(1 for c in box.calls() if c["path"] == path and c["method"] == "GET") >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"poll.py made fewer than {n} status calls in {limit} s")


def test_live_progress_line_only_on_a_terminal(sb):
    import os
    import pty

    b = create_batch_direct(sb, ["a", "b"])
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [PYTHON, str(SCRIPTS / "poll.py"), b["id"], "--wait", "--timeout", "0.7",
             "--interval", "0.2", "--json"],
            env=env_for(sb), stdout=subprocess.PIPE, stderr=slave, text=True, timeout=30)
        os.close(slave)
        slave = None
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if slave is not None:
            os.close(slave)
        os.close(master)
    assert proc.returncode == 3 and json.loads(proc.stdout)["wait"]["timed_out"]
    text = seen.decode()
    assert "validating: 0/2 done (0%)" in text and "next check in" in text
    assert TEST_KEY not in text


def test_job_submitted_elsewhere_is_named_with_the_flag_to_use(capsys):
    here = polling.Target("a.job.json", "a.job.json", {"base_url": "http://127.0.0.1:1/v1/"})
    there = polling.Target("b.job.json", "b.job.json", {"base_url": "https://other.example/v1"})
    polling.warn_base_url_mismatch([here, there, polling.Target("batch-1")],
                                   "http://127.0.0.1:1/v1")
    err = capsys.readouterr().err
    assert "a.job.json" not in err  # a trailing slash is the same server
    assert "b.job.json was submitted to https://other.example/v1" in err
    assert "--base-url https://other.example/v1" in err
