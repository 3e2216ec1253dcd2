"""The poll workflow: check batches once (default) or wait until they end, cheaply.

Why it is shaped like this: agents cannot sit in sleep loops, so the default is one check
that says where everything stands and what to run next. `--wait` exists for people and
scripts that can block; it must not cost 1,800 status calls an hour (a fixed 2 s poll), so
the interval starts short, grows while nothing changes, is capped by `--interval`, and
is pulled in by the ETA so the end is seen soon after it happens.

Progress samples ([time, done, total]) are kept per shard in the job file
(`progress_samples`), so an ETA can be given even by one-shot polls minutes apart.

Testing aid: DWBATCH_TIME_SCALE=N (read only here) makes the wait loop's clock run N times
faster than real time: every interval, timeout and ETA is in simulated seconds and each
sleep lasts 1/N of it. benchmarks/bench_poll_calls.py uses it to simulate an hour quickly.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import cli, errors, families, jobfile, shapes, status
from .safetext import as_data

START_INTERVAL = 2.0
GROWTH = 1.5
DEFAULT_MAX_INTERVAL = 60.0
TIME_SCALE_ENV = "DWBATCH_TIME_SCALE"
# A normal cancel settles within seconds; one that stays `cancelling` longer than this while
# waiting is reported as it is instead of being waited on forever.
CANCELLING_GRACE = 30.0
# Progress after this long without any counts as a change (the interval starts short again).
STALL_SECONDS = 60.0


# --- the clock ---------------------------------------------------------------------------

class Clock:
    """Wall-clock seconds and sleep, optionally `scale` times faster (testing aid)."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self._wall0 = time.time()
        self._mono0 = time.monotonic()

    def time(self) -> float:
        return self._wall0 + (time.monotonic() - self._mono0) * self.scale

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds / self.scale)


def clock_from_env() -> Clock:
    raw = os.environ.get(TIME_SCALE_ENV, "").strip()
    if not raw:
        return Clock()
    try:
        scale = float(raw)
    except ValueError:
        scale = 0.0
    if not scale > 0:
        raise errors.InputError(f"{TIME_SCALE_ENV}={raw!r} is not a number > 0",
                                hint=f"unset {TIME_SCALE_ENV} (it is a testing aid only)")
    return Clock(scale)


def next_interval(current: float, *, reset: bool, cap: float, eta: float | None = None,
                  start: float = START_INTERVAL, factor: float = GROWTH) -> float:
    """Seconds until the next check.

    Back to `start` after something changed (a status moved, progress resumed after a
    stall), else `current * factor`; never above `cap`. A known ETA pulls it in to half
    the time left, so the end is noticed soon after it happens. Never below min(start, cap).
    """
    floor = min(start, cap)
    nxt = start if reset else current * factor
    nxt = min(nxt, cap)
    if eta is not None:
        nxt = min(nxt, max(floor, eta / 2.0))
    return max(floor, nxt)


# --- what was asked about ----------------------------------------------------------------

@dataclass
class Entry:
    """One batch as asked about: directly by id, or as a shard of a job file."""

    batch_id: str
    job_path: str | None = None
    shard: int | None = None


@dataclass
class Target:
    arg: str
    job_path: str | None = None
    job: dict | None = None
    entries: list[Entry] = field(default_factory=list)


def looks_like_job_file(arg: str) -> bool:
    return arg.lower().endswith(".json") and os.path.isfile(arg)


def resolve_targets(args: list[str]) -> list[Target]:
    """Job files (existing paths ending in .json) and bare batch ids, in the order given."""
    targets = []
    for arg in args:
        if looks_like_job_file(arg):
            job = jobfile.load_job(arg)
            target = Target(arg, arg, job)
            missing = [s["index"] for s in job["shards"] if not s.get("batch_id")]
            if missing or not job["shards"]:
                which = (f"shard(s) {', '.join(map(str, missing))} have"
                         if job["shards"] else "it has")
                raise errors.InputError(
                    f"job file {arg}: {which} no batch yet (the submission did not finish)",
                    hint="re-run the same submit.py command: it continues where it stopped "
                         "without creating anything twice", code="not_submitted")
            for shard in sorted(job["shards"], key=lambda s: s["index"]):
                target.entries.append(Entry(shard["batch_id"], arg, shard["index"]))
        elif arg.lower().endswith(".json"):
            raise errors.InputError(
                f"{arg}: no such job file", code="no_such_job_file",
                hint="check the path; submit.py writes PROMPTS.job.json beside the input "
                     "(or pass batch ids: batches.py list shows them)")
        elif os.path.isfile(arg):
            raise errors.InputError(
                f"{arg} is a file but not a job file (job files end in .json)",
                hint="pass the job file submit.py wrote (e.g. prompts.job.json) or batch ids")
        elif not shapes.is_id(arg):
            raise errors.InputError(
                f"{arg!r} is neither a job file nor a batch id ({shapes.id_problem(arg)})",
                hint="pass the job file submit.py wrote (PROMPTS.job.json) or a batch id as "
                     "batches.py list shows it")
        else:
            target = Target(arg)
            target.entries.append(Entry(arg))
            targets.append(target)
            continue
        targets.append(target)
    return targets


def warn_base_url_mismatch(targets: list[Target], base_url: str) -> None:
    """A job submitted to another server than this command talks to: say so (its batch ids
    would answer 404 here)."""
    for target in targets:
        recorded = (target.job or {}).get("base_url")
        if isinstance(recorded, str) and recorded.rstrip("/") != base_url.rstrip("/"):
            recorded = as_data(recorded)  # a job file handed over is data, like server text
            cli.warn(f"warning: job file {target.job_path} was submitted to {recorded}, but "
                     f"this command talks to {base_url}; pass --base-url {recorded} if its "
                     "batches are not found")


# --- checking ------------------------------------------------------------------------------

@dataclass
class Tracker:
    """The batches asked about, their latest objects and progress history."""

    targets: list[Target]
    clock: Clock
    batches: dict[str, dict] = field(default_factory=dict)
    samples: dict[str, list] = field(default_factory=dict)
    checked_at: dict[str, float] = field(default_factory=dict)
    cancelling_since: dict[str, float] = field(default_factory=dict)
    calls: int = 0

    def batch_ids(self) -> list[str]:
        seen: dict[str, None] = {}
        for target in self.targets:
            for entry in target.entries:
                seen.setdefault(entry.batch_id)
        return list(seen)

    def settled(self, batch_id: str) -> bool:
        batch = self.batches.get(batch_id)
        if batch is None:
            return False
        if status.is_settled(batch):
            return True
        since = self.cancelling_since.get(batch_id)
        return since is not None and self.clock.time() - since >= CANCELLING_GRACE

    def all_settled(self) -> bool:
        return all(self.settled(b) for b in self.batch_ids())


def check(tracker: Tracker, get_batch: Callable[[str], dict], *, only_unsettled: bool) -> dict:
    """GET every batch (or every unsettled one), record samples, update job files.

    Returns {batch_id: (old batch or None, new batch)} for the batches fetched.
    """
    fetched = {}
    for batch_id in tracker.batch_ids():
        if only_unsettled and tracker.settled(batch_id):
            continue
        batch = get_batch(batch_id)
        tracker.calls += 1
        now = tracker.clock.time()
        fetched[batch_id] = (tracker.batches.get(batch_id), batch)
        tracker.batches[batch_id] = batch
        tracker.checked_at[batch_id] = now
        if batch.get("status") == "cancelling":
            tracker.cancelling_since.setdefault(batch_id, now)
        else:
            tracker.cancelling_since.pop(batch_id, None)
        counts = status.request_counts(batch)
        tracker.samples[batch_id] = status.add_progress_sample(
            tracker.samples.get(batch_id), now, counts["completed"] + counts["failed"],
            counts["total"])
    for target in tracker.targets:
        mine = {e.batch_id: fetched[e.batch_id][1] for e in target.entries
                if e.batch_id in fetched}
        if target.job_path and mine:
            target.job = record_in_job_file(target.job_path, mine, tracker.clock.time())
            for shard in target.job["shards"]:
                if shard.get("batch_id") in mine:
                    tracker.samples[shard["batch_id"]] = shard["progress_samples"]
    return fetched


def record_in_job_file(job_path: str, batches: dict[str, dict], now: float) -> dict:
    """Write what the server said about these batches into the job file; return the job.

    Under the job's lock, re-read then saved atomically, so a concurrent command's fields
    are kept. Per shard: status, request_counts, output/error file ids (only once known:
    some servers set them at the end), expires_at and the progress history for the ETA
    (kept in the file so separate one-shot polls build an ETA together).
    """
    with jobfile.job_lock(job_path):
        job = jobfile.load_job(job_path)
        for shard in job["shards"]:
            batch = batches.get(shard.get("batch_id"))
            if batch is None:
                continue
            counts = status.request_counts(batch)
            shard["status"] = batch.get("status")
            shard["request_counts"] = counts
            for key in ("output_file_id", "error_file_id"):
                if batch.get(key):
                    shard[key] = batch[key]
            if batch.get("expires_at") is not None:
                shard["expires_at"] = batch["expires_at"]
            history = shard.get("progress_samples")
            shard["progress_samples"] = status.add_progress_sample(
                history if isinstance(history, list) else [], now,
                counts["completed"] + counts["failed"], counts["total"])
            shard["polled_at"] = jobfile.now_iso()
        jobfile.save_job(job_path, job)
    return job


def something_changed(fetched: dict, last_moved: dict[str, float],
                      last_still: dict[str, float], stall: float = STALL_SECONDS) -> bool:
    """A status moved, or a batch that sat still for `stall` seconds started moving again.

    last_moved / last_still: when each batch was last seen making progress / not making
    progress. Ordinary steady progress is not a change: resetting on it would keep a busy
    batch at the shortest interval for its whole run (1,800 checks an hour); the ETA takes
    care of noticing its end.
    """
    for batch_id, (old, new) in fetched.items():
        if old is None:
            continue
        if old.get("status") != new.get("status"):
            return True
        moved = status.done_count(new) > status.done_count(old)
        moved_at = last_moved.get(batch_id)
        still_at = last_still.get(batch_id)
        if moved and moved_at is not None and still_at is not None \
                and still_at - moved_at >= stall:
            return True
    return False


def soonest_eta(tracker: Tracker) -> float | None:
    now = tracker.clock.time()
    etas = []
    for batch_id in tracker.batch_ids():
        batch = tracker.batches.get(batch_id)
        if batch is None or status.outcome_of(batch) != status.RUNNING:
            continue
        eta = status.eta_seconds(tracker.samples.get(batch_id), now)
        if eta is not None:
            etas.append(eta)
    return min(etas) if etas else None


@dataclass
class WaitOutcome:
    polls: int = 0
    seconds: float = 0.0
    timed_out: bool = False
    interrupted: bool = False


def wait(tracker: Tracker, get_batch: Callable[[str], dict], *, cap: float,
         timeout: float | None, on_progress: Callable[[Tracker, float], None] | None = None,
         start: float = START_INTERVAL) -> WaitOutcome:
    """Check until every batch is settled, the timeout passes, or Ctrl-C (never cancels).

    Sleeps are scheduled from the start of each check, so slow answers do not stretch the
    interval. Returns how it ended; the tracker holds the latest state.
    """
    clock = tracker.clock
    began = clock.time()
    outcome = WaitOutcome()
    interval = min(start, cap)
    last_moved: dict[str, float] = {}
    last_still: dict[str, float] = {}
    first = True
    try:
        while True:
            check_started = clock.time()
            fetched = check(tracker, get_batch, only_unsettled=not first)
            outcome.polls += 1
            now = clock.time()
            changed = not first and something_changed(fetched, last_moved, last_still)
            for batch_id, (old, new) in fetched.items():
                if old is None or status.done_count(new) > status.done_count(old):
                    last_moved[batch_id] = now
                else:
                    last_still[batch_id] = now
            if tracker.all_settled():
                break
            now = clock.time()
            if timeout is not None and now - began >= timeout:
                outcome.timed_out = True
                break
            interval = start if first else next_interval(
                interval, reset=changed, cap=cap, eta=soonest_eta(tracker), start=start)
            interval = min(interval, cap)
            first = False
            wake = check_started + interval
            if timeout is not None:
                wake = min(wake, began + timeout)
            if on_progress:
                on_progress(tracker, max(0.0, wake - now))
            clock.sleep(wake - clock.time())
    except KeyboardInterrupt:
        outcome.interrupted = True
    outcome.seconds = round(clock.time() - began, 1)
    return outcome


# --- the report ----------------------------------------------------------------------------

def build_views(tracker: Tracker) -> dict[str, dict]:
    now = tracker.clock.time()
    views = {}
    for batch_id in tracker.batch_ids():
        batch = tracker.batches.get(batch_id)
        if batch is None:
            continue
        view = status.batch_view(batch, tracker.samples.get(batch_id), now)
        if status.outcome_of(batch) == status.UNSUCCESSFUL and not status.is_settled(batch) \
                and tracker.settled(batch_id):
            view["notes"].append("still 'cancelling' after the wait: reported as cancelled")
        views[batch_id] = view
    return views


def live_line(tracker: Tracker, next_in: float) -> str:
    """One line for a terminal: overall progress and when the next check is."""
    views = list(build_views(tracker).values())
    agg = status.aggregate(views)
    running = agg["exit_code"] == errors.NOT_FINISHED
    text = status.progress_text(agg["request_counts"], agg["percent"], agg["eta_seconds"],
                                agg["expires_in_seconds"], running)
    return f"{agg['state']}: {text}; next check in {status.format_duration(next_in)}"


class ProgressLine:
    """The --wait progress line (only when stderr is a terminal)."""

    def __init__(self, stream=None) -> None:
        self.line = cli.TerminalLine(stream)

    def show(self, tracker: Tracker, next_in: float) -> None:
        if self.line.enabled:
            self.line.show(live_line(tracker, next_in)[:200])

    def finish(self) -> None:
        self.line.finish()


def report(tracker: Tracker, waited: WaitOutcome | None, raw_targets: list[str]) -> cli.Result:
    """The Result: per-job and per-batch fields, the exit code, a human summary, `next`."""
    views = build_views(tracker)
    all_views = [views[b] for b in tracker.batch_ids() if b in views]
    code = status.exit_code_for(v["outcome"] for v in all_views)
    lines: list[str] = []
    jobs = []
    flat = []
    for target in tracker.targets:
        tviews = []
        for entry in target.entries:
            view = dict(views[entry.batch_id], job_file=entry.job_path, shard=entry.shard)
            tviews.append(view)
            flat.append(view)
        if target.job_path:
            agg = status.aggregate(tviews)
            jobs.append({"job_file": target.job_path, "job_id": (target.job or {}).get("job_id"),
                         **agg, "batch_ids": [v["batch_id"] for v in tviews]})
            running = agg["exit_code"] == errors.NOT_FINISHED
            lines.append(f"{target.job_path} ({len(tviews)} batch"
                         f"{'es' if len(tviews) != 1 else ''}): {agg['state']}  "
                         + status.progress_text(agg["request_counts"], agg["percent"],
                                                agg["eta_seconds"], agg["expires_in_seconds"],
                                                running))
            for view in tviews:
                lines.append("  " + status.render_batch_line(view, f"shard {view['shard']} "))
                lines.extend(f"    note: {n}" for n in view["notes"])
        else:
            view = tviews[0]
            lines.append(status.render_batch_line(view))
            lines.extend(f"  note: {n}" for n in view["notes"])
    agg_all = status.aggregate(all_views)
    recheck = check_again_in(tracker, views) if code == errors.NOT_FINISHED else None
    hint, next_cmd = advice(code, raw_targets, tracker, waited, recheck)
    fields = {
        "state": agg_all["state"],
        "request_counts": agg_all["request_counts"],
        "percent": agg_all["percent"],
        "eta_seconds": agg_all["eta_seconds"],
        "jobs": jobs,
        "batches": flat,
        "status_calls": tracker.calls,
        "check_again_in_seconds": recheck,
        "hint": hint,
    }
    if waited is not None:
        fields["wait"] = {"polls": waited.polls, "seconds": waited.seconds,
                          "timed_out": waited.timed_out, "interrupted": waited.interrupted}
        if waited.interrupted:
            code = errors.INTERRUPTED
            lines.append(f"stopped waiting (Ctrl-C) after {waited.seconds:g} s; nothing was "
                         "cancelled: the batches keep running on the server")
        elif waited.timed_out:
            lines.append(f"--timeout reached after {waited.seconds:g} s "
                         f"({waited.polls} checks); still running")
    lines.append(hint)
    return cli.Result(fields, "\n".join(lines), code, next_cmd)


RECHECK_MIN, RECHECK_MAX = 30, 3600
STALLED_FIRST, STALLED_MAX = 60, 900


def recheck_after(eta: float | None, stalled: int = 0) -> int:
    """When an agent should look again at one running batch: half the ETA, kept between 30 s
    and 1 hour; with no progress to measure, 60 s, doubling with each check that saw nothing
    move, at most 15 minutes. Checking more often only spends calls."""
    if eta is None:
        return int(min(STALLED_MAX, STALLED_FIRST * 2 ** min(stalled, 10)))
    return int(min(RECHECK_MAX, max(RECHECK_MIN, eta / 2)))


def check_again_in(tracker: Tracker, views: dict[str, dict]) -> int | None:
    """The soonest recheck over the running batches (None when none is running)."""
    soonest = None
    for batch_id, view in views.items():
        if view["outcome"] != status.RUNNING:
            continue
        samples = tracker.samples.get(batch_id)
        wait = recheck_after(view["eta_seconds"], status.stalled_checks(samples))
        soonest = wait if soonest is None else min(soonest, wait)
    return soonest


def fetch_commands(targets: list[Target]) -> str:
    """One fetch command per family (an original job and its retry jobs, the whole family as
    found on disk), joined with &&: results of unrelated jobs must never be merged
    (dwbatch.families)."""
    commands = []
    for group in families.groups(targets):
        names, notes = families.fetch_args(group)
        for note in notes:
            cli.warn("note: " + note)
        commands.append(cli.script_command("fetch_results.py", *names, "--json"))
    return " && ".join(commands)


def advice(code: int, raw_targets: list[str], tracker: Tracker,
           waited: WaitOutcome | None, recheck: int | None = None) -> tuple[str, str]:
    """(what it means, the next command) for an exit code."""
    poll_cmd = cli.script_command("poll.py", *raw_targets, "--json")
    fetch_cmd = fetch_commands(tracker.targets)
    if waited is not None and waited.interrupted:
        return ("interrupted: nothing was cancelled; check again with the next command",
                poll_cmd)
    if code == errors.NOT_FINISHED:
        return ("not finished yet: run the next command again in about "
                f"{status.format_duration(recheck or STALLED_FIRST)} (do other work meanwhile,"
                " or end your turn and resume with it; no need to sleep in a loop)."
                " fetch_results.py can already save partial results", poll_cmd)
    if code == errors.OK:
        return "all batches completed with no failed requests: fetch the results", fetch_cmd
    if code == errors.PARTIAL_FAILURE:
        failed = sum(status.request_counts(b)["failed"] for b in tracker.batches.values())
        in_place = in_place_retry(tracker, lambda b: status.request_counts(b)["failed"] > 0)
        return (f"finished, but {failed} request(s) failed: fetch the results (the next "
                "command); fetch_results.py decides what is worth sending again and writes it "
                "to a retry file for submit.py (a request the model server rejected fails the "
                "same way every time, so it is given up)"
                + (f". To re-run the failed requests inside the same batch instead: {in_place}"
                   if in_place else ""), fetch_cmd)
    in_place = in_place_retry(tracker, lambda b: b.get("status") in ("cancelled", "cancelling"))
    return ("a batch failed, expired or was cancelled: fetch first (the next command): it "
            "saves what finished and decides what is worth retrying; it writes a retry file "
            "for submit.py only when something is, and says so when nothing is left"
            + (f". Requests of a cancelled batch can also be run again inside the same batch: "
               f"{in_place}" if in_place else ""), fetch_cmd)


def in_place_retry(tracker: Tracker, applies: Callable[[dict], bool]) -> str | None:
    """The batches.py retry command(s) for the targets with a batch where `applies`, named
    by their job file or batch id (one command each, joined with &&), or None."""
    commands = [cli.script_command("batches.py", "retry", target.arg, "--json")
                for target in tracker.targets
                if any(applies(tracker.batches.get(e.batch_id) or {}) for e in target.entries)]
    return " && ".join(commands) or None
