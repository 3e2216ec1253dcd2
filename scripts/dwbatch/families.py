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
"""

from __future__ import annotations

from collections.abc import Iterable

from . import errors
from .provenance import family_id


def _endpoints(target) -> set[str]:
    job = target.job or {}
    found = {s.get("endpoint") for s in job.get("shards", []) if s.get("endpoint")}
    if not found and job.get("endpoint"):
        found = {job["endpoint"]}
    return found


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
