"""Unit tests for the status logic: outcomes incl. the service's quirks, the exit-code rule
over many batches, ETA from progress samples, shard aggregation and rendering."""

from __future__ import annotations

import pytest
from dwbatch import status


def batch(st, total=10, completed=0, failed=0, **extra):
    b = {"id": f"b-{st}", "status": st,
         "request_counts": {"total": total, "completed": completed, "failed": failed}}
    b.update(extra)
    return b


@pytest.mark.parametrize("st,kw,outcome,state", [
    ("validating", {}, status.RUNNING, "validating"),
    ("in_progress", {"completed": 3}, status.RUNNING, "in_progress"),
    ("finalizing", {"completed": 10}, status.RUNNING, "finalizing"),
    ("completed", {"completed": 10}, status.SUCCEEDED, "completed"),
    ("completed", {"completed": 9, "failed": 1}, status.PARTIAL, "completed_with_failures"),
    ("failed", {"failed": 10}, status.UNSUCCESSFUL, "failed"),
    ("expired", {"completed": 2}, status.UNSUCCESSFUL, "expired"),
    ("cancelled", {}, status.UNSUCCESSFUL, "cancelled"),
    ("cancelling", {"in_progress_at": 5}, status.UNSUCCESSFUL, "cancelling"),
    ("cancelling", {}, status.UNSUCCESSFUL, "cancelled_while_validating"),
    ("something_new", {}, status.RUNNING, "unknown"),
])
def test_outcome_and_state_of_every_status(st, kw, outcome, state):
    counts = {k: kw.pop(k) for k in ("completed", "failed") if k in kw}
    b = batch(st, **counts, **kw)
    assert status.outcome_of(b) == outcome
    assert status.state_of(b) == state


def test_absent_fields_mean_null():
    b = {"id": "x", "status": "in_progress"}
    assert status.request_counts(b) == {"total": 0, "completed": 0, "failed": 0}
    view = status.batch_view(b, None, now=100.0)
    assert view["output_file_id"] is None and view["expires_in_seconds"] is None
    assert view["percent"] == 0.0
    b2 = {"id": "y", "status": "completed", "request_counts": {"total": 3, "completed": None}}
    assert status.outcome_of(b2) == status.SUCCEEDED


def test_expired_at_alone_does_not_make_a_completed_batch_expired():
    b = batch("completed", completed=10, expired_at=123, expires_at=100)
    assert status.outcome_of(b) == status.SUCCEEDED


def test_settled_includes_stuck_cancelling_but_not_running_or_normal_cancelling():
    assert status.is_settled(batch("completed", completed=10))
    assert status.is_settled(batch("expired"))
    assert status.is_settled(batch("cancelling"))  # never started: stuck
    assert not status.is_settled(batch("cancelling", in_progress_at=1))
    assert not status.is_settled(batch("finalizing", completed=10))


@pytest.mark.parametrize("outcomes,code", [
    ([], 0),
    ([status.SUCCEEDED], 0),
    ([status.SUCCEEDED, status.PARTIAL], 4),
    ([status.PARTIAL, status.RUNNING], 3),
    ([status.RUNNING, status.UNSUCCESSFUL, status.PARTIAL], 5),
    ([status.SUCCEEDED, status.UNSUCCESSFUL], 5),
    ([status.RUNNING, status.SUCCEEDED], 3),
])
def test_exit_code_first_match_wins(outcomes, code):
    assert status.exit_code_for(outcomes) == code


def test_eta_from_samples_and_restart_after_retry():
    s = status.add_progress_sample(None, 1000.0, 0, 100)
    assert status.eta_seconds(s) is None  # one sample: no rate yet
    s = status.add_progress_sample(s, 1010.0, 10, 100)
    assert status.eta_seconds(s) == pytest.approx(90.0)
    assert status.eta_seconds(s, now=1030.0) == pytest.approx(70.0)
    s = status.add_progress_sample(s, 1020.0, 10, 100)  # a stall slows the rate
    assert status.eta_seconds(s) == pytest.approx(180.0)
    # /retry: failed went back to pending, done went down -> history restarts
    s = status.add_progress_sample(s, 1030.0, 5, 100)
    assert s == [[1030.0, 5, 100]]
    assert status.eta_seconds(s) is None


def test_stall_gives_no_eta_and_history_is_capped():
    s = None
    for i in range(30):
        s = status.add_progress_sample(s, float(i), 7, 50)
    assert len(s) == status.MAX_PROGRESS_SAMPLES
    assert status.eta_seconds(s) is None
    s = status.add_progress_sample([["junk"], [1, 2]], 5.0, 1, 5)
    assert s == [[5.0, 1, 5]]


def test_batch_view_eta_expiry_and_notes():
    b = batch("in_progress", total=100, completed=40, failed=10, expires_at=5000,
              output_file_id="o", error_file_id="e")
    samples = [[1000.0, 0, 100], [1050.0, 50, 100]]
    view = status.batch_view(b, samples, now=1050.0)
    assert view["percent"] == 50.0
    assert view["eta_seconds"] == 50.0
    assert view["expires_in_seconds"] == 3950.0
    assert view["notes"] == []
    late = status.batch_view(dict(b, output_file_id=None), samples, now=6000.0)
    assert any("past its completion window" in n for n in late["notes"])
    assert any("no output file id yet" in n for n in late["notes"])
    fin = status.batch_view(batch("finalizing", completed=10, output_file_id="o"), None, 1.0)
    assert fin["eta_seconds"] == 0.0 and "finalizing" in fin["notes"][0]
    done = status.batch_view(batch("completed", completed=8, failed=2), samples, 1.0)
    assert done["eta_seconds"] is None and "2 of 10 requests failed" in done["notes"][0]
    stuck = status.batch_view(batch("cancelling"), None, 1.0)
    assert "indefinitely" in stuck["notes"][0]


def test_aggregate_mixed_shards():
    views = [
        status.batch_view(batch("completed", total=10, completed=10), None, 0.0),
        dict(status.batch_view(batch("in_progress", total=10, completed=4,
                                     expires_at=100), None, 0.0), eta_seconds=30.0),
        dict(status.batch_view(batch("in_progress", total=20, completed=1, failed=1,
                                     expires_at=50), None, 0.0), eta_seconds=90.0),
    ]
    agg = status.aggregate(views)
    assert agg["state"] == "mixed"
    assert agg["states"] == {"completed": 1, "in_progress": 2}
    assert agg["exit_code"] == 3
    assert agg["request_counts"] == {"total": 40, "completed": 15, "failed": 1}
    assert agg["percent"] == 40.0
    assert agg["eta_seconds"] == 90.0
    assert agg["expires_in_seconds"] == 50.0
    views.append(status.batch_view(batch("cancelled"), None, 0.0))
    assert status.aggregate(views)["exit_code"] == 5
    one_unknown = views[:2] + [status.batch_view(batch("in_progress"), None, 0.0)]
    assert status.aggregate(one_unknown)["eta_seconds"] is None


@pytest.mark.parametrize("seconds,text", [
    (None, "unknown"), (0, "0s"), (44.2, "45s"), (250, "4m 10s"), (3 * 3600 + 300, "3h 05m"),
    (3 * 86400 + 3600, "3d 01h"),
])
def test_format_duration(seconds, text):
    assert status.format_duration(seconds) == text


def test_render_line_running_and_done():
    view = status.batch_view(batch("in_progress", total=1200, completed=797, failed=3,
                                   expires_at=1000 + 3600 * 23 + 600, output_file_id="o"),
                             [[0.0, 0, 1200], [100.0, 800, 1200]], now=100.0)
    line = status.render_batch_line(view, "shard 0 ")
    assert line.startswith("shard 0 b-in_progress: in_progress")
    assert "800/1200 done (66.7%)" in line and "3 failed" in line
    assert "ETA ~50s" in line and "expires in 23h" in line
    done = status.render_batch_line(status.batch_view(batch("completed", completed=10), None, 0))
    assert "ETA" not in done and "10/10 done (100%)" in done


def test_recheck_is_half_the_eta_within_30_s_and_an_hour_else_backs_off_from_a_minute():
    from dwbatch.polling import recheck_after
    assert [recheck_after(None, stalled) for stalled in range(6)] == [60, 120, 240, 480, 900,
                                                                      900]
    assert recheck_after(10) == 30
    assert recheck_after(100) == 50
    assert recheck_after(1800) == 900
    assert recheck_after(20 * 3600) == 3600


def test_first_look_eta_from_the_batchs_own_counts_and_timestamps():
    b = batch("in_progress", total=100, completed=20, failed=5, output_file_id="o")
    b.update(created_at=900, in_progress_at=1000)
    assert status.eta_from_timestamps(b, 1050.0) == pytest.approx(150.0)  # 25 in 50 s
    b.pop("in_progress_at")
    assert status.eta_from_timestamps(b, 1050.0) == pytest.approx(450.0)  # since created_at
    assert status.eta_from_timestamps(batch("in_progress", total=100), 1050.0) is None
    view = status.batch_view(dict(b, in_progress_at=1000), [[1050.0, 25, 100]], 1050.0)
    assert view["eta_seconds"] == 150.0
    # two samples that saw no progress: no ETA, and the stall is counted
    assert status.batch_view(b, [[1000.0, 25, 100], [1050.0, 25, 100]], 1050.0)[
        "eta_seconds"] is None
    assert status.stalled_checks([[1, 5, 9], [2, 5, 9], [3, 5, 9]]) == 2
    assert status.stalled_checks([[1, 4, 9], [2, 5, 9], [3, 5, 9]]) == 1
    assert status.stalled_checks([[1, 5, 9]]) == 0
