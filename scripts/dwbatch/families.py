"""Families of jobs: an original job and its retry jobs, at any depth.

Why: fetch_results.py merges the jobs it is given ("a later ok supersedes an earlier failure
for the same custom_id"). Applied across unrelated jobs that happen to share custom_ids (a
chat job and an embeddings job over the same rows) it silently reports one job's answer as
the other's. So jobs are merged only within a family: a retry job records the job it came
from (`origin.family_id`, see dwbatch.provenance), and jobs of different families, or with
different endpoints, are refused before anything is downloaded or written. poll.py's `next`
gives one fetch command per family.

Bare batch ids carry no family: each is its own group for poll.py; fetch_results.py checks
their endpoints (from the batch objects) when it is given several.

A fetch command the scripts suggest names the whole family as it is on disk (`on_disk`): the
origin job first, then its retry jobs in the order they were made, even when only a retry
job was asked about. Fetching part of a family gives wrong attempts (so retries would never
end) and no table (the table belongs to the origin job).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from . import cli, errors, jobfile
from .provenance import family_id

MAX_RETRY_FILES = 50  # how far <stem>.retryN.job.json is looked for beside a job


def retry_name(stem: str, n: int) -> str:
    """The n-th retry file of a job: PROMPTS.retry.jsonl, PROMPTS.retry2.jsonl, ..."""
    return f"{stem}.retry.jsonl" if n == 1 else f"{stem}.retry{n}.jsonl"


@dataclass
class Family:
    """The job files of one family found on disk (absolute paths, origin first) and what
    could not be followed (in words)."""

    paths: list[str]
    notes: list[str] = field(default_factory=list)


def _load(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    try:
        return jobfile.load_job(path)
    except errors.DWError:
        return None


def _origin_chain(path: str, job: dict, notes: list[str]) -> list[tuple[str, dict]]:
    """This job and the jobs its recorded origin leads back to, the origin job first. Stops,
    with a note, where an origin job file is gone or is now another job."""
    chain = [(path, job)]
    while True:
        origin = job.get("origin")
        if not isinstance(origin, dict) or not isinstance(origin.get("job_file"), str):
            return chain
        parent_path = jobfile.abs_path(path, origin["job_file"])
        parent = _load(parent_path)
        if parent is None or parent.get("job_id") != origin.get("job_id"):
            what = "is gone" if parent is None else "now holds another job"
            notes.append(f"the job {cli.display_path(path)} came from "
                         f"{cli.display_path(parent_path)}, which {what}: the family is taken "
                         "from the jobs given")
            return chain
        if any(p == parent_path for p, _ in chain):
            return chain
        chain.insert(0, (parent_path, parent))
        path, job = parent_path, parent


def _named_retry_jobs(path: str) -> list[str]:
    """The retry jobs fetch_results.py names beside a job: STEM.retry.job.json, .retry2..."""
    base, stem = os.path.dirname(path), jobfile.job_stem(path)
    found = []
    for n in range(1, MAX_RETRY_FILES + 1):
        candidate = jobfile.default_job_path(os.path.join(base, retry_name(stem, n)))
        if not os.path.exists(candidate):
            break
        found.append(candidate)
    return found


def on_disk(group: list) -> Family:
    """The family of these job targets as known on disk: the origin job (found through the
    recorded origins), then every retry job of the family beside it or given, oldest first."""
    notes: list[str] = []
    known: dict[str, dict] = {}
    chains = []
    for target in group:
        chain = _origin_chain(os.path.abspath(target.job_path), target.job, notes)
        chains.append(chain)
        for path, job in chain:
            known.setdefault(path, job)
    roots = [c[0] for c in chains]
    root_path, root = next(((p, j) for p, j in roots if not j.get("origin")), roots[0])
    wanted = family_id(root)
    queue = [root_path]
    while queue:
        for path in _named_retry_jobs(queue.pop(0)):
            if path in known:
                continue
            job = _load(path)
            if job is not None and family_id(job) == wanted and job.get("origin"):
                known[path] = job
                queue.append(path)
    order = list(known)
    rest = sorted((p for p in order if p != root_path),
                  key=lambda p: (str(known[p].get("created_at") or ""), order.index(p)))
    return Family([root_path, *rest], notes)


def _endpoints(target) -> set[str]:
    job = target.job or {}
    found = {s.get("endpoint") for s in job.get("shards", []) if s.get("endpoint")}
    if not found and job.get("endpoint"):
        found = {job["endpoint"]}
    return found


def fetch_args(group: list) -> tuple[list[str], list[str]]:
    """(what a fetch command of this group names, notes): the whole family on disk for job
    files, the ids as given for bare batch ids."""
    if not all(t.job_path for t in group):
        return [t.arg for t in group], []
    family = on_disk(group)
    return [cli.display_path(p) for p in family.paths], family.notes


def group_key(target) -> str:
    """Targets with the same key may be fetched together."""
    if target.job:
        return "family:" + family_id(target.job)
    return "batch:" + target.arg


def groups(targets: Iterable) -> list[list]:
    """Targets grouped by family, in the order first seen."""
    out: dict[str, list] = {}
    for target in targets:
        out.setdefault(group_key(target), []).append(target)
    return list(out.values())


def unrelated_error(message: str, commands: list[str]) -> errors.InputError:
    return errors.InputError(
        message + "; nothing was downloaded or written", code="unrelated_jobs",
        hint="fetch each family on its own (an original job first, then its retry jobs): "
             + " && ".join(commands) if commands else "fetch each job on its own")


def check_related(targets: list, fetch_command, batches: dict | None = None) -> None:
    """Refuse (exit 2, unrelated_jobs) jobs of different families or endpoints.

    fetch_command(list of targets) -> the command line that fetches one group.
    batches: batch objects by id, when known, to compare the endpoints of bare batch ids.
    """
    if len(targets) < 2:
        return
    parts = groups(targets)
    job_groups = [g for g in parts if g[0].job]
    if len(job_groups) > 1:
        names = "; ".join(", ".join(t.arg for t in g) for g in job_groups)
        raise unrelated_error(
            f"these jobs belong to different families (an original job and its retry jobs "
            f"form one): {names}. Merging them would let one job's answer stand in for "
            "another's where their custom_ids are the same",
            [fetch_command(g) for g in parts])
    endpoints: dict[str, list[str]] = {}
    for target in targets:
        found = set(_endpoints(target))
        if not target.job and batches is not None:
            for entry in target.entries:
                endpoint = (batches.get(entry.batch_id) or {}).get("endpoint")
                if endpoint:
                    found.add(endpoint)
        for endpoint in found:
            endpoints.setdefault(endpoint, []).append(target.arg)
    if len(endpoints) > 1:
        names = "; ".join(f"{e}: {', '.join(dict.fromkeys(a))}" for e, a in endpoints.items())
        raise unrelated_error(
            f"these jobs use different endpoints ({names}): their results cannot be one "
            "table", [fetch_command([t]) for t in targets])
