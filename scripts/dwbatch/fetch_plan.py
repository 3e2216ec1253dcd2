"""What one fetch_results.py run reads and writes, decided before anything is downloaded.

The paths (results, retry file, raw folders, the user's table), which raw folder belongs to
which job, the sources the join reads (one per batch), the batch statuses recorded last time
(for --offline), and whether the jobs given are their whole family.
"""

from __future__ import annotations

import argparse
import os

from . import (
    cli,
    download,
    errors,
    families,
    jobfile,
    polling,
    reconcile,
    results_io,
    status,
    table,
)


class Plan:
    """Paths this run reads and writes, decided before anything is downloaded."""

    def __init__(self, args: argparse.Namespace, targets: list[polling.Target]) -> None:
        first = targets[0]
        if first.job_path:
            base_dir = os.path.dirname(os.path.abspath(first.job_path))
            stem = jobfile.job_stem(first.job_path)
        else:
            base_dir, stem = os.getcwd(), first.entries[0].batch_id
        self.base_dir, self.stem = base_dir, stem
        self.format = args.format or results_io.format_from_path(args.output)
        self.results = args.output or os.path.join(base_dir, f"{stem}.results.{self.format}")
        self.taken = inputs_of(targets)
        self.default_raw = args.raw_dir or os.path.join(base_dir, f"{stem}.raw")
        self.raw_dirs = {}
        for target in targets:
            if args.raw_dir or not target.job_path:
                self.raw_dirs[target.arg] = self.default_raw
            else:
                self.raw_dirs[target.arg] = os.path.join(
                    os.path.dirname(os.path.abspath(target.job_path)),
                    jobfile.job_stem(target.job_path) + ".raw")
        self.retry = self._retry_path(args.retry_file)
        self.table_source = _table_source(first)
        self.table, self.table_format = self._table_path(args)
        writes = [("-o", self.results), ("--retry-file", self.retry)]
        if self.table:
            writes.append(("--table", self.table))
        for what, path in writes:
            if os.path.abspath(path) in self.taken:
                raise errors.InputError(
                    f"{what} {path} is the input file of a submitted job: writing there would "
                    "destroy the requests its results are joined to",
                    hint=f"choose another path for {what}")
        if self.table and self.table_source and \
                os.path.abspath(self.table) == self.table_source["input"]:
            raise errors.InputError(f"--table {self.table} is the user's own input file: "
                                    "the table is written beside it, never over it",
                                    hint="choose another --table path")
        seen: dict[str, str] = {}
        for what, path in writes:
            other = seen.setdefault(os.path.abspath(path), what)
            if other != what:
                raise errors.InputError(f"{other} and {what} are the same file ({path})",
                                        hint="give them different paths")

    def _table_path(self, args: argparse.Namespace) -> tuple[str | None, str | None]:
        """The user's table: --table PATH, else <stem>.table.<ext> beside the first job
        when its requests came from a recorded input; none with --no-table."""
        if args.no_table:
            return None, None
        if args.table:
            return args.table, table.format_of(args.table)
        if self.table_source is None:
            return None, None
        ext = table.default_extension(self.table_source)
        return os.path.join(self.base_dir, f"{self.stem}.table.{ext}"), ext

    def _retry_path(self, given: str | None) -> str:
        if given:
            return given
        n = 1
        while True:
            path = os.path.join(self.base_dir, families.retry_name(self.stem, n))
            if os.path.abspath(path) not in self.taken and \
                    not os.path.exists(jobfile.default_job_path(path)):
                return path
            n += 1


def _table_source(first: polling.Target) -> dict | None:
    """The first job's recorded input (its path made absolute), or None."""
    source = (first.job or {}).get("source")
    if not isinstance(source, dict) or not isinstance(source.get("input"), str):
        return None
    return dict(source, input=jobfile.abs_path(first.job_path, source["input"]))


def table_answer(plan: Plan, targets: list[polling.Target]) -> dict:
    """What the table's answer columns are: as recorded, else from the first job's
    endpoint (embeddings) or plain text."""
    if plan.table_source:
        return {k: plan.table_source[k] for k in ("answer", "properties")
                if k in plan.table_source}
    endpoint = (targets[0].job or {}).get("endpoint")
    return table.answer_of(endpoint, None)


def inputs_of(targets: list[polling.Target]) -> set[str]:
    taken = set()
    for target in targets:
        if target.job:
            for item in list(target.job["shards"]) + list(target.job["inputs"]):
                taken.add(jobfile.abs_path(target.job_path, item["path"]))
    return taken


def partial_family(targets: list[polling.Target]) -> tuple[list[str] | None, list[str]]:
    """(the family's job files, notes) when the job files given are not their whole family
    as found on disk, origin first (e.g. a retry job alone, or an original whose retry jobs
    were left out); (None, notes) when they are, or for bare batch ids."""
    if not targets or not all(t.job_path for t in targets):
        return None, []
    family = families.on_disk(targets)
    given = [os.path.abspath(t.job_path) for t in targets]
    if given == family.paths:
        return None, family.notes
    return [cli.display_path(p) for p in family.paths], family.notes


def _recorded_batch(target: polling.Target, entry: polling.Entry, plan: Plan) -> dict:
    """The batch as last recorded (for --offline)."""
    if target.job:
        shard = jobfile.shard_by_index(target.job, entry.shard)
        return {"id": entry.batch_id, "status": shard.get("status")}
    raw_dir = plan.raw_dirs[target.arg]
    state = download.SidecarStore(download.raw_paths(raw_dir, entry.batch_id)["state"]).load()
    if not state:
        raise errors.InputError(
            f"--offline: nothing was downloaded yet for batch {entry.batch_id} in {raw_dir}",
            hint="run once without --offline")
    return {"id": entry.batch_id, "status": state.get("batch_status")}


def store_for(target: polling.Target, entry: polling.Entry, raw_dir: str
               ) -> download.StateStore:
    if target.job_path:
        return download.JobShardStore(target.job_path, entry.shard)
    return download.SidecarStore(download.raw_paths(raw_dir, entry.batch_id)["state"])


def recorded_batches(plan: Plan, targets: list[polling.Target]) -> dict:
    batches = {}
    for target in targets:
        for entry in target.entries:
            batches[entry.batch_id] = _recorded_batch(target, entry, plan)
    return batches


def _effective_status(batch: dict) -> str | None:
    """The status that decides pending vs missing: a batch stuck `cancelling` since it was
    validating never ran anything, so it counts as cancelled."""
    if status.cancelled_while_validating(batch):
        return "cancelled"
    return batch.get("status")


def sources(plan: Plan, targets: list[polling.Target], batches: dict) -> list:
    sources = []
    for job_no, target in enumerate(targets):
        raw_dir = plan.raw_dirs[target.arg]
        for entry in target.entries:
            paths = download.raw_paths(raw_dir, entry.batch_id)
            batch_status = _effective_status(batches[entry.batch_id])
            if target.job:
                shard = jobfile.shard_by_index(target.job, entry.shard)
                sources.append(reconcile.Source(
                    jobfile.abs_path(target.job_path, shard["path"]), paths["output"],
                    paths["error"], entry.batch_id, batch_status, job=job_no,
                    label=f"{target.job_path} shard {entry.shard}",
                    expected_sha256=shard.get("sha256")))
            else:
                sources.append(reconcile.Source(
                    paths["input"], paths["output"], paths["error"], entry.batch_id,
                    batch_status, job=job_no, label=f"batch {entry.batch_id}"))
    return sources


