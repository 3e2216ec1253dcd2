"""What a batch's status means for the user, including the service's quirks.

Pure functions over batch objects as the server sends them (a dict; absent fields mean
null). They decide the per-batch outcome and the exit code over many batches, estimate an
ETA from progress samples seen across polls, and render the one-glance summary.

Quirks handled here (see the API facts document):
- `completed` can hide failed requests: a completed batch with failed > 0 is a partial
  success (exit 4), not a success.
- `finalizing` can linger for seconds after every request is done: still running (exit 3).
- a batch cancelled while `validating` can stay `cancelling` forever: reported as
  cancelled-in-progress (exit 5) and never waited on.
- `/retry` puts failed requests back to pending, so done counts can go *down*: the progress
  history restarts instead of producing a negative rate.
- `expired` is not a Doubleword status but is one elsewhere: terminal, exit 5. `expired_at`
  alone (Doubleword stamps it even on completed batches) changes nothing.
- output/error file ids may be absent until the end on stock OpenAI-compatible servers.
"""

from __future__ import annotations

import math

from . import errors

RUNNING_STATUSES = ("validating", "in_progress", "finalizing")
ENDED_BADLY_STATUSES = ("failed", "expired", "cancelled")
TERMINAL_STATUSES = ("completed", "failed", "expired", "cancelled")
ALL_STATUSES = RUNNING_STATUSES + ("completed", "failed", "expired", "cancelling", "cancelled")

# Outcomes, in the order the exit-code rule checks them.
UNSUCCESSFUL = "unsuccessful"   # failed, expired, cancelling, cancelled -> 5
RUNNING = "running"             # validating, in_progress, finalizing -> 3
PARTIAL = "partial"             # completed, some requests failed -> 4
SUCCEEDED = "succeeded"         # completed, nothing failed -> 0

OUTCOME_EXIT_CODES = {
    UNSUCCESSFUL: errors.BATCH_UNSUCCESSFUL,
    RUNNING: errors.NOT_FINISHED,
    PARTIAL: errors.PARTIAL_FAILURE,
    SUCCEEDED: errors.OK,
}

MAX_PROGRESS_SAMPLES = 20


def request_counts(batch: dict) -> dict:
    """`request_counts` with missing or null members read as 0."""
    raw = batch.get("request_counts") or {}
    return {k: _as_int(raw.get(k)) for k in ("total", "completed", "failed")}


def _as_int(value) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def done_count(batch: dict) -> int:
    """Requests that reached an end (completed or failed)."""
    counts = request_counts(batch)
    return counts["completed"] + counts["failed"]


def cancelled_while_validating(batch: dict) -> bool:
    """A `cancelling` batch that never started: the server may leave it cancelling forever."""
    return batch.get("status") == "cancelling" and not batch.get("in_progress_at")


def state_of(batch: dict) -> str:
    """A finer word than `status` for people: splits the quirky cases out."""
    status = batch.get("status") or "unknown"
    if status == "completed" and request_counts(batch)["failed"] > 0:
        return "completed_with_failures"
    if status == "cancelling" and cancelled_while_validating(batch):
        return "cancelled_while_validating"
    if status not in ALL_STATUSES:
        return "unknown"
    return status


def outcome_of(batch: dict) -> str:
    """Which exit-code bucket this batch falls in (an unknown status counts as running)."""
    status = batch.get("status")
    if status in ENDED_BADLY_STATUSES or status == "cancelling":
        return UNSUCCESSFUL
    if status == "completed":
        return PARTIAL if request_counts(batch)["failed"] > 0 else SUCCEEDED
    return RUNNING


def exit_code_for(outcomes) -> int:
    """The contract's rule over all batches asked about; first match wins: 5, 3, 4, else 0."""
    outcomes = set(outcomes)
    for outcome in (UNSUCCESSFUL, RUNNING, PARTIAL):
        if outcome in outcomes:
            return OUTCOME_EXIT_CODES[outcome]
    return errors.OK


def is_terminal(batch: dict) -> bool:
    """The server will not change this batch any more on its own."""
    return batch.get("status") in TERMINAL_STATUSES


def is_settled(batch: dict) -> bool:
    """Nothing left to wait for: terminal, or stuck cancelling since validation."""
    return is_terminal(batch) or cancelled_while_validating(batch)


# --- progress and ETA -----------------------------------------------------------------

def add_progress_sample(samples: list | None, when: float, done: int, total: int,
                        limit: int = MAX_PROGRESS_SAMPLES) -> list:
    """Append [when, done, total] to a copy of the history and keep the last `limit`.

    The history restarts when done went down or total changed (a `/retry` sent failed
    requests back to pending), so rates never come out negative. A sample equal to the last
    one in count replaces nothing: stalls are history too (they slow the rate down).
    """
    history = [list(s) for s in (samples or []) if _valid_sample(s)]
    if history:
        _, last_done, last_total = history[-1]
        if done < last_done or total != last_total or when < history[-1][0]:
            history = []
    history.append([round(float(when), 3), int(done), int(total)])
    return history[-limit:]


def _valid_sample(sample) -> bool:
    return (isinstance(sample, (list, tuple)) and len(sample) == 3
            and all(isinstance(x, (int, float)) for x in sample))


def eta_seconds(samples: list | None, now: float | None = None) -> float | None:
    """Seconds until every request is done, from the rate seen across the samples.

    None when there is no measurable progress yet (fewer than two samples, or a stall).
    With `now`, the time passed since the newest sample is taken off.
    """
    history = [s for s in (samples or []) if _valid_sample(s)]
    if len(history) < 2:
        return None
    t0, d0, _ = history[0]
    t1, d1, total = history[-1]
    if t1 <= t0 or d1 <= d0:
        return None
    rate = (d1 - d0) / (t1 - t0)
    remaining = max(0, total - d1)
    eta = remaining / rate
    if now is not None:
        eta = max(0.0, eta - max(0.0, now - t1))
    return eta


def eta_from_timestamps(batch: dict, now: float) -> float | None:
    """The ETA a first look can give, with no earlier sample: the batch's own rate so far
    (requests done since `in_progress_at`, else since `created_at`). None with nothing done
    yet or no usable timestamp."""
    counts = request_counts(batch)
    done, total = counts["completed"] + counts["failed"], counts["total"]
    started = batch.get("in_progress_at") or batch.get("created_at")
    try:
        elapsed = now - float(started)
    except (TypeError, ValueError):
        return None
    if done <= 0 or elapsed <= 0 or total <= 0:
        return None
    return max(0, total - done) / (done / elapsed)


def stalled_checks(samples: list | None) -> int:
    """How many checks in a row (after the first) saw no progress at the end of the history."""
    history = [s for s in (samples or []) if _valid_sample(s)]
    still = 0
    for older, newer in zip(reversed(history[:-1]), reversed(history[1:]), strict=True):
        if newer[1] > older[1]:
            break
        still += 1
    return still


def seconds_until(timestamp, now: float) -> float | None:
    """Seconds from now to a Unix timestamp (negative when past), or None when absent."""
    if timestamp is None:
        return None
    try:
        return float(timestamp) - now
    except (TypeError, ValueError):
        return None


def window_left(batch: dict, now: float) -> float | None:
    """Seconds left to expires_at. The server's own `expired_at` stamp wins over our clock:
    when it is set the window has passed, by at least expires_at - expired_at."""
    left = seconds_until(batch.get("expires_at"), now)
    stamped = batch.get("expired_at")
    if left is None or stamped is None:
        return left
    try:
        return min(left, float(batch["expires_at"]) - float(stamped))
    except (TypeError, ValueError):
        return left


# --- one batch, as shown ---------------------------------------------------------------

def batch_view(batch: dict, samples: list | None, now: float) -> dict:
    """Everything the summary shows about one batch, as plain JSON-ready values."""
    counts = request_counts(batch)
    done = counts["completed"] + counts["failed"]
    total = counts["total"]
    running = outcome_of(batch) == RUNNING
    eta = None
    if running:
        eta = eta_seconds(samples, now)
        if eta is None and len(samples or []) < 2:
            eta = eta_from_timestamps(batch, now)
        if eta is None and done >= total > 0:
            eta = 0.0
    expires_in = window_left(batch, now)
    return {
        "batch_id": batch.get("id"),
        "status": batch.get("status"),
        "state": state_of(batch),
        "outcome": outcome_of(batch),
        "request_counts": counts,
        "percent": percent(done, total),
        "eta_seconds": None if eta is None else round(eta, 1),
        "expires_at": batch.get("expires_at"),
        "expires_in_seconds": None if expires_in is None else round(expires_in, 1),
        "output_file_id": batch.get("output_file_id"),
        "error_file_id": batch.get("error_file_id"),
        "notes": notes_for(batch, now),
    }


def percent(done: int, total: int) -> float:
    if total <= 0:
        return 0.0
    return round(100.0 * min(done, total) / total, 1)


def notes_for(batch: dict, now: float) -> list[str]:
    """Plain-words notes about the quirks this batch shows right now."""
    notes = []
    status = batch.get("status")
    counts = request_counts(batch)
    done = counts["completed"] + counts["failed"]
    if status == "completed" and counts["failed"]:
        notes.append(f"completed, but {counts['failed']} of {counts['total']} requests failed:"
                     " the error file has them; fetch_results.py writes a retry file")
    if status == "finalizing" and counts["total"] and done >= counts["total"]:
        notes.append("every request is done; the server is finalizing (this can linger for"
                     " a few seconds): poll again shortly")
    if cancelled_while_validating(batch):
        notes.append("cancelled while validating: the server can leave such a batch"
                     " 'cancelling' indefinitely; treat it as cancelled (nothing ran)")
    elif status == "cancelling":
        notes.append("cancel in progress: in-flight requests are stopping; cancelled requests"
                     " appear in neither output nor error file")
    if status == "failed":
        notes.append("no request succeeded: read the error file (fetch_results.py) before"
                     " resubmitting")
    if status == "expired":
        notes.append("the completion window passed before the batch finished; finished"
                      " requests can still be fetched")
    if status not in ALL_STATUSES:
        notes.append(f"unknown status {status!r} from the server: treated as still running")
    expires_in = window_left(batch, now)
    if status in RUNNING_STATUSES and expires_in is not None and expires_in < 0:
        notes.append("past its completion window; Doubleword keeps running the requests,"
                     " other servers may expire it")
    if status in RUNNING_STATUSES and not batch.get("output_file_id"):
        notes.append("no output file id yet (this server sets it when the batch ends)")
    return notes


# --- a job: several shards --------------------------------------------------------------

def aggregate(views: list[dict]) -> dict:
    """One line's worth for a job made of several shard batches."""
    totals = {"total": 0, "completed": 0, "failed": 0}
    for view in views:
        for key in totals:
            totals[key] += view["request_counts"][key]
    outcomes = [v["outcome"] for v in views]
    code = exit_code_for(outcomes)
    running = [v for v in views if v["outcome"] == RUNNING]
    etas = [v["eta_seconds"] for v in running]
    eta = None if not running or any(e is None for e in etas) else max(etas)
    expiries = [v["expires_in_seconds"] for v in running if v["expires_in_seconds"] is not None]
    statuses = sorted({v["state"] for v in views})
    return {
        "state": statuses[0] if len(statuses) == 1 else "mixed",
        "states": {s: sum(1 for v in views if v["state"] == s) for s in statuses},
        "exit_code": code,
        "request_counts": totals,
        "percent": percent(totals["completed"] + totals["failed"], totals["total"]),
        "eta_seconds": eta,
        "expires_in_seconds": min(expiries) if expiries else None,
        "batches": len(views),
    }


# --- human rendering --------------------------------------------------------------------

def format_duration(seconds: float | None) -> str:
    """Short human duration: 45s, 4m 10s, 3h 05m, 2d 03h."""
    if seconds is None:
        return "unknown"
    seconds = int(math.ceil(max(0.0, seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def progress_text(counts: dict, pct: float, eta: float | None, expires_in: float | None,
                  running: bool) -> str:
    """`800/1200 done (66.7%), 3 failed, ETA ~4m 10s, expires in 23h 10m`."""
    done = counts["completed"] + counts["failed"]
    parts = [f"{done}/{counts['total']} done ({pct:g}%)", f"{counts['failed']} failed"]
    if running:
        parts.append("ETA " + ("unknown (poll again to measure progress)" if eta is None
                               else "~" + format_duration(eta)))
        if expires_in is not None:
            # Time left is rounded down: never promise more of the window than there is.
            parts.append(f"expires in {format_duration(math.floor(expires_in))}"
                         if expires_in >= 0
                         else f"window passed {format_duration(-expires_in)} ago")
    return ", ".join(parts)


def render_batch_line(view: dict, label: str = "") -> str:
    running = view["outcome"] == RUNNING
    head = f"{label}{view['batch_id']}: {view['state']}"
    text = head + "  " + progress_text(view["request_counts"], view["percent"],
                                       view["eta_seconds"], view["expires_in_seconds"], running)
    return text
