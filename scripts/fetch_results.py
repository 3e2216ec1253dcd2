#!/usr/bin/env python3
# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "requests>=2.28,<3",
#     "jsonschema>=4.17,<5",
# ]
# ///
"""fetch_results.py: download results incrementally and join them back to their requests."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys

from dwbatch.deps import require  # standard library only

require("requests", "jsonschema")  # before anything imports them: a clear error, not a traceback

from dwbatch import (
    cli,
    client,
    download,
    errors,
    jobfile,
    polling,
    reconcile,
    results_io,
    results_stamp,
    retry_file,
    status,
)

DESCRIPTION = """\
Download the output AND error files of batches (job files written by submit.py, or bare
batch ids) and write ONE reconciled record per input request, in input order:
{"custom_id", "status", "content", "finish_reason", "usage", "error", "batch_id"} (+ "json"
when the content is JSON, "embedding" for embeddings, "tool_calls" when the model called
tools). status is one of: ok, error, truncated, invalid_json, schema_invalid, pending (batch
still running), missing (batch ended without a result for it).

Safe to run at any time: while a batch runs it saves what exists (exit 3) and later runs
download only the new lines (?skip=<lines saved>); a broken connection never loses or
duplicates a line. Raw downloads are kept byte for byte in PROMPTS.raw/. Given several jobs
(an original and its retries), a later ok supersedes an earlier failure for the same
custom_id. Every non-ok, non-pending record's original request line goes into a retry file
that submit.py accepts. A re-run with nothing new (no new lines, same batch statuses, same
options) keeps the results and retry files as they are and reports the same summary (a stamp
beside the results file, .NAME.stamp.json, records what they were built from).

Bare batch ids (no job file): the input order is taken from the batch's own input file,
downloaded with GET /files/{input_file_id}/content into the raw folder; files go into the
current folder, named after the first batch id."""

EXAMPLES = [
    "python3 scripts/fetch_results.py prompts.job.json --json",
    "python3 scripts/fetch_results.py prompts.job.json prompts.retry.job.json --format csv "
    "-o results.csv",
    "python3 scripts/fetch_results.py 3fa85f64-5717-4562-b3fc-2c963f66afa6 "
    "--retry-status error,missing --truncated-max-tokens 2x",
]


def build_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser("fetch_results.py", DESCRIPTION, EXAMPLES)
    parser.add_argument("targets", nargs="+", metavar="JOB_OR_BATCH_ID",
                        help="job files (PROMPTS.job.json) and/or batch ids; list an original "
                             "job first and its retry jobs after it")
    parser.add_argument("-o", "--output", metavar="PATH", default=None,
                        help="reconciled results file (default: PROMPTS.results.jsonl beside "
                             "the first job file; .csv with --format csv)")
    parser.add_argument("--format", choices=results_io.FORMATS, default=None,
                        help="jsonl (default) or csv (default: from the -o extension)")
    parser.add_argument("--raw-dir", metavar="DIR", default=None,
                        help="where raw downloads are kept (default: PROMPTS.raw/ beside each "
                             "job file)")
    parser.add_argument("--retry-file", metavar="PATH", default=None,
                        help="retry file to write (default: PROMPTS.retry.jsonl beside the "
                             "first job file, or PROMPTS.retryN.jsonl when that name is "
                             "already a submitted job's input)")
    parser.add_argument("--retry-status", metavar="LIST", default=None,
                        help="which statuses go into the retry file, comma-separated (default: "
                             f"all of {','.join(retry_file.RETRYABLE)})")
    parser.add_argument("--truncated-max-tokens", metavar="N|Kx", default=None,
                        help="raise the token limit of truncated requests in the retry file: "
                             "a number (4096) or a factor of the old limit (2x); default: "
                             "lines are copied unchanged")
    parser.add_argument("--offline", action="store_true",
                        help="no network: reconcile only what is already downloaded, with the "
                             "batch statuses recorded last time (no key needed)")
    parser.add_argument("--rebuild", action="store_true",
                        help="write the results and retry files again even when nothing "
                             "changed since the last run (default: such a run keeps them)")
    cli.add_network_args(parser)
    return parser


# --------------------------------------------------------------------------- planning

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
        self.taken = _inputs_of(targets)
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
        for what, path in (("-o", self.results), ("--retry-file", self.retry)):
            if os.path.abspath(path) in self.taken:
                raise errors.InputError(
                    f"{what} {path} is the input file of a submitted job: writing there would "
                    "destroy the requests its results are joined to",
                    hint=f"choose another path for {what}")
        if os.path.abspath(self.results) == os.path.abspath(self.retry):
            raise errors.InputError(f"-o and --retry-file are the same file ({self.results})",
                                    hint="give them different paths")

    def _retry_path(self, given: str | None) -> str:
        if given:
            return given
        n = 1
        while True:
            path = os.path.join(self.base_dir, _retry_name(self.stem, n))
            if os.path.abspath(path) not in self.taken and \
                    not os.path.exists(jobfile.default_job_path(path)):
                return path
            n += 1


def _retry_name(stem: str, n: int) -> str:
    """The n-th retry file of a job: PROMPTS.retry.jsonl, PROMPTS.retry2.jsonl, ..."""
    return f"{stem}.retry.jsonl" if n == 1 else f"{stem}.retry{n}.jsonl"


def _inputs_of(targets: list[polling.Target]) -> set[str]:
    taken = set()
    for target in targets:
        if target.job:
            for item in list(target.job["shards"]) + list(target.job["inputs"]):
                taken.add(jobfile.abs_path(target.job_path, item["path"]))
    return taken


def _sibling_retry_jobs(targets: list[polling.Target]) -> list[str]:
    """Retry jobs of the first job that exist beside it but were not given."""
    first = targets[0]
    if not first.job_path:
        return []
    given = {os.path.abspath(t.job_path) for t in targets if t.job_path}
    base = os.path.dirname(os.path.abspath(first.job_path))
    stem = jobfile.job_stem(first.job_path)
    found = []
    for n in range(1, 20):
        path = jobfile.default_job_path(os.path.join(base, _retry_name(stem, n)))
        if not os.path.exists(path):
            break
        if path not in given:
            found.append(cli.display_path(path))
    return found


# --------------------------------------------------------------------------- downloading

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


def _store_for(target: polling.Target, entry: polling.Entry, raw_dir: str
               ) -> download.StateStore:
    if target.job_path:
        return download.JobShardStore(target.job_path, entry.shard)
    return download.SidecarStore(download.raw_paths(raw_dir, entry.batch_id)["state"])


def _recorded_batches(plan: Plan, targets: list[polling.Target]) -> dict:
    batches = {}
    for target in targets:
        for entry in target.entries:
            batches[entry.batch_id] = _recorded_batch(target, entry, plan)
    return batches


def _check_batches(api, targets: list[polling.Target]) -> dict:
    """GET every batch; the job files learn status, counts and file ids (as poll.py does)."""
    tracker = polling.Tracker(targets, polling.Clock())
    polling.check(tracker, api.get_batch, only_unsettled=False)
    return dict(tracker.batches)


def _download(api, plan: Plan, targets: list[polling.Target], batches: dict,
              max_retries: int, refetch: set[str] = frozenset()) -> dict:
    """BatchDownload per batch id; batches in `refetch` get every file again from line 0."""
    downloads: dict[str, download.BatchDownload] = {}
    for target in targets:
        raw_dir = plan.raw_dirs[target.arg]
        for entry in target.entries:
            if entry.batch_id in downloads or (refetch and entry.batch_id not in refetch):
                continue
            batch = batches[entry.batch_id]
            downloads[entry.batch_id] = download.download_batch(
                api, batch, raw_dir, _store_for(target, entry, raw_dir),
                terminal=status.is_terminal(batch), need_input=not target.job_path,
                refetch=download.KINDS if entry.batch_id in refetch else (),
                max_retries=max_retries, warn=cli.warn)
    return downloads


def _effective_status(batch: dict) -> str | None:
    """The status that decides pending vs missing: a batch stuck `cancelling` since it was
    validating never ran anything, so it counts as cancelled."""
    if status.cancelled_while_validating(batch):
        return "cancelled"
    return batch.get("status")


def _sources(plan: Plan, targets: list[polling.Target], batches: dict) -> list:
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


# --------------------------------------------------------------------------- joining

def _join(sources: list, plan: Plan, statuses: tuple[str, ...],
          raise_tokens: retry_file.TokenRaise | None, progress, *, reuse: bool
          ) -> tuple[reconcile.Summary, retry_file.RetryWriter, dict | None]:
    """Reconcile into the results and retry files, or keep them when their stamp says that
    nothing they are built from changed. Returns (summary, retry writer, the fingerprint to
    stamp once the retry file is committed, or None when the files were kept)."""
    writer = retry_file.RetryWriter(plan.retry, statuses, raise_tokens)
    current = results_stamp.fingerprint(sources, {
        "format": plan.format, "results": os.path.abspath(plan.results),
        "retry": os.path.abspath(plan.retry), "retry_statuses": list(statuses),
        "truncated_max_tokens": dataclasses.asdict(raise_tokens) if raise_tokens else None})
    stored = results_stamp.load_reusable(plan.results, plan.retry, current) if reuse else None
    summary = _stored_summary(stored)
    if summary is not None:
        writer.keep(stored["retry_counts"])
        cli.warn(f"note: nothing changed since {_show(plan.results)} was written: kept as it "
                 "is (--rebuild writes it again)")
        return summary, writer, None
    results_stamp.forget(plan.results)
    summary = results_io.reconcile_to_files(sources, plan.results, plan.format, writer,
                                            progress=progress)
    return summary, writer, current


def _stored_summary(stored: dict | None) -> reconcile.Summary | None:
    if not stored:
        return None
    try:
        summary = reconcile.Summary(**stored["summary"])
        if not all(isinstance(n, int) for n in dict(stored["retry_counts"]).values()):
            return None
    except (KeyError, TypeError, ValueError):
        return None
    return summary


# --------------------------------------------------------------------------- reporting

def _exit_code(summary: reconcile.Summary) -> int:
    """Judged on the records: 5 missing because a batch ended badly; 3 pending; 4 not ok."""
    counts = summary.counts
    if summary.missing_from_ended:
        return errors.BATCH_UNSUCCESSFUL
    if counts["pending"]:
        return errors.NOT_FINISHED
    if summary.records - counts["ok"]:
        return errors.PARTIAL_FAILURE
    return errors.OK


def _show(path: str | None) -> str | None:
    return None if path is None else cli.display_path(path)


def _counts_text(counts: dict) -> str:
    parts = [f"{n} {s}" for s, n in counts.items() if n]
    return ", ".join(parts) or "no records"


def main(args: argparse.Namespace) -> cli.Result:
    statuses = retry_file.parse_statuses(args.retry_status)
    raise_tokens = retry_file.TokenRaise.parse(args.truncated_max_tokens)
    targets = polling.resolve_targets(args.targets)
    plan = Plan(args, targets)
    progress = cli.warn if sys.stderr.isatty() else None
    with contextlib.ExitStack() as stack:
        for raw_dir in sorted(set(plan.raw_dirs.values())):
            stack.enter_context(download.raw_dir_lock(raw_dir))
        if args.offline:
            api, downloads = None, {}
            batches = _recorded_batches(plan, targets)
        else:
            api = stack.enter_context(client.client_from_args(args, on_retry=cli.warn))
            polling.warn_base_url_mismatch(targets, api.base_url)
            batches = _check_batches(api, targets)
            downloads = _download(api, plan, targets, batches, args.max_retries)
        sources = _sources(plan, targets, batches)
        summary, writer, stamp = _join(sources, plan, statuses, raise_tokens, progress,
                                       reuse=not args.rebuild)
        if api is not None and summary.missing_from_completed:
            # A completed batch must have a line for every request: the saved copies no
            # longer line up with the server's files (e.g. after a /retry). Once, from 0.
            lost = set(summary.missing_from_completed)
            cli.warn(f"note: {sum(summary.missing_from_completed.values())} requests of "
                     f"completed batch(es) {', '.join(sorted(lost))} have no result in the "
                     "saved files; downloading those batches' files again")
            downloads.update(_download(api, plan, targets, batches, args.max_retries,
                                       refetch=lost))
            writer.abort()
            summary, writer, stamp = _join(sources, plan, statuses, raise_tokens, progress,
                                           reuse=False)
        # still under the raw folders' locks: the stamp describes these very files
        retry_path = _show(writer.commit())
        if stamp is not None:
            results_stamp.save(plan.results, plan.retry, stamp, {
                "summary": dataclasses.asdict(summary), "retry_counts": writer.counts})
    results_path = _show(plan.results)
    code = _exit_code(summary)

    submit_cmd = cli.script_command("submit.py", retry_path, *(["--json"] if args.json else []))\
        if retry_path else None
    merge_cmd = None
    if retry_path:
        merge_cmd = cli.script_command(
            "fetch_results.py", *args.targets, _show(jobfile.default_job_path(retry_path)),
            *(["--json"] if args.json else []))
    if code == errors.NOT_FINISHED:
        # the same command (online: --offline would only re-read what is saved)
        next_cmd = cli.script_command("fetch_results.py",
                                      *(a for a in sys.argv[1:] if a != "--offline"))
    elif code in (errors.PARTIAL_FAILURE, errors.BATCH_UNSUCCESSFUL):
        next_cmd = submit_cmd
    else:
        next_cmd = None

    notes = []
    siblings = _sibling_retry_jobs(targets)
    if siblings:
        notes.append("retry job(s) " + ", ".join(siblings) + " exist beside the job but were "
                     "not given: list them after it to merge their results")
    if summary.duplicate_inputs:
        notes.append(f"{summary.duplicate_inputs} request lines repeat a custom_id of the same "
                     "batch: one record each custom_id")
    if summary.unmatched_results:
        notes.append(f"{summary.unmatched_results} result lines name a custom_id that is not "
                     "among their batch's requests: ignored")
    if summary.counts["pending"]:
        notes.append(f"{summary.counts['pending']} requests are still pending: run the same "
                     "command later to fetch the rest (only new lines are downloaded)")
    for note in notes:
        cli.warn("note: " + note)

    batch_fields = []
    for target in targets:
        for entry in target.entries:
            item = {"batch_id": entry.batch_id, "job_file": target.job_path,
                    "shard": entry.shard, "status": batches[entry.batch_id].get("status")}
            if entry.batch_id in downloads:
                for kind, res in downloads[entry.batch_id].files.items():
                    item[kind] = res.as_dict()
            batch_fields.append(item)
    fields = {
        "results_file": results_path, "format": plan.format, "records": summary.records,
        "counts": summary.counts, "usage": summary.usage,
        "retry_file": retry_path, "retry_requests": writer.lines,
        "retry_counts": writer.counts,
        "raw_dirs": sorted({_show(d) for d in plan.raw_dirs.values()}),
        "jobs": [t.job_path for t in targets if t.job_path],
        "batches": batch_fields,
        "superseded_results": summary.superseded,
        "unmatched_results": summary.unmatched_results,
        "after_retry": merge_cmd,
        "notes": notes,
    }
    lines = [f"results: {results_path} ({summary.records} records: "
             f"{_counts_text(summary.counts)})",
             f"tokens: {summary.usage['prompt_tokens']} prompt, "
             f"{summary.usage['completion_tokens']} completion, "
             f"{summary.usage['total_tokens']} total"]
    for item in batch_fields:
        got = []
        for kind in ("output", "error"):
            if kind in item:
                got.append(f"{kind} {item[kind]['lines']} lines (+{item[kind]['new_lines']})")
        lines.append(f"batch {item['batch_id']}: {item['status']}"
                     + (": " + ", ".join(got) if got else ""))
    lines.append("raw downloads: " + ", ".join(fields["raw_dirs"]))
    if retry_path:
        lines.append(f"retry file: {retry_path} ({writer.lines} requests: "
                     f"{_counts_text(writer.counts)})")
        lines.append(f"after submitting it, merge with: {merge_cmd}")
    return cli.Result(fields, "\n".join(lines), code, next_cmd)


if __name__ == "__main__":
    cli.main_entry(build_parser, main)
