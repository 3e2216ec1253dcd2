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
    costs,
    download,
    errors,
    families,
    fetch_plan,
    jobfile,
    limits,
    polling,
    provenance,
    reconcile,
    rejoin,
    results_io,
    results_stamp,
    retry_file,
    retry_policy,
    status,
    table,
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
duplicates a line. Raw downloads are kept byte for byte in PROMPTS.raw/; saved lines are only
ever replaced by a complete new copy downloaded beside them, and a file the server no longer
has (404: deleted or expired) keeps its saved lines. A result line that cannot be read becomes
one "error" record (retriable), never the end of the job. Given several jobs
of one family (an original and its retry jobs), a later ok supersedes an earlier failure for
the same custom_id; jobs of different families or endpoints are refused (exit 2,
unrelated_jobs). Given part of a family as found on disk (a retry job without the job it came
from), it saves what it can, says so, and next is the fetch of the whole family. Each
record carries "attempts" (how many of the given jobs sent it) and, when not ok/pending,
"retriable". The retry file (which submit.py accepts) holds only what is worth
sending again: retriable records sent fewer than --max-attempts times; the rest are given up
and listed by reason ("gave_up_reasons"). With nothing left to retry: no retry file, exit 4,
next null: the job is finished.

The user's table (the deliverable): when create_batch_file.py built the job's requests, it
also writes PROMPTS.table.<the input's format> beside the first job file: every input row
once, in input order, the input's own cells as read, then status, the answer (one column per
top-level property of the response schema, else answer, or embedding) and error. Rows are
matched by id, not by position; cells from the model or server are spreadsheet-safe (a
leading ' before = + - @). --table PATH (.csv, .tsv or .jsonl) or --no-table to choose.

A re-run with nothing new (no new lines, same batch statuses, same options) keeps the
results, retry and table files as they are and reports the same summary (a stamp beside the
results file, .NAME.stamp.json, records what they were built from). A re-run that finds only
new result lines joins just those: the requests they name are decided again and every other
record and table row is copied: the results, retry file and table come out byte for byte as
a full join writes them (while requests are pending the join keeps its index beside the
results file: .NAME.join.sqlite, .NAME.join.sqlite-results, .NAME.join.sizes).

The summary gives the token usage and the actual cost (cost_usd: the batches' own
GET /batches/{id}/analytics total_cost, summed; null when the server does not report it, or
with --offline). Fetching a pilot job (submit.py --pilot N) adds "projection": the pilot's
measured usage and cost scaled to the whole input ({"pilot_requests" (its ok records),
"full_requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd",
"completion_window"}); once every pilot record is ok, next is the submit of the whole input.

Bare batch ids (no job file): the input order is taken from the batch's own input file,
downloaded with GET /files/{input_file_id}/content into the raw folder; files go into the
current folder, named after the first batch id."""

EXAMPLES = [
    "python3 scripts/fetch_results.py prompts.job.json --json",
    "python3 scripts/fetch_results.py prompts.job.json prompts.retry.job.json --json",
    "python3 scripts/fetch_results.py prompts.job.json --table answers.tsv --json",
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
    parser.add_argument("--truncated-max-tokens", metavar="N|Kx|same", default=None,
                        help="the token limit of truncated requests in the retry file: a "
                             "number (4096), a factor of the old limit (3x), or 'same' to copy "
                             "the lines unchanged (default: 2x)")
    parser.add_argument("--max-attempts", type=cli.positive_int,
                        default=retry_policy.DEFAULT_MAX_ATTEMPTS, metavar="N",
                        help="give a request up once it has been sent this many times over the "
                             "jobs given (default "
                             f"{retry_policy.DEFAULT_MAX_ATTEMPTS}); requests the model server "
                             "rejected as invalid (HTTP 400, 404, 413, 422...) are given up at "
                             "once")
    tables = parser.add_mutually_exclusive_group()
    tables.add_argument("--table", metavar="PATH", default=None,
                        help="where to write the user's table: every input row once, in input "
                             "order, the input's columns as they were, then status, the answer "
                             "(one column per schema property, or answer / embedding) and "
                             "error; .csv, .tsv or .jsonl by extension (default: "
                             "PROMPTS.table.<the input's format> beside the first job file "
                             "when create_batch_file.py built its requests; without that "
                             "record, --table writes one row per request, custom_id first)")
    tables.add_argument("--no-table", action="store_true",
                        help="do not write the user's table")
    parser.add_argument("--offline", action="store_true",
                        help="no network: reconcile only what is already downloaded, with the "
                             "batch statuses recorded last time (no key needed)")
    parser.add_argument("--max-line-bytes", metavar="N", type=cli.byte_size,
                        default=limits.MAX_RESULT_LINE_BYTES,
                        help="longest result line accepted from the server (default 64MiB); "
                             "a longer one stops the download with an error naming it")
    parser.add_argument("--rebuild", action="store_true",
                        help="join everything and write the results and retry files again, "
                             "even when nothing changed since the last run or only new result "
                             "lines came (default: keep them, or join only the new lines)")
    cli.add_network_args(parser)
    return parser


# --------------------------------------------------------------------------- downloading

def _check_batches(api, targets: list[polling.Target]) -> dict:
    """GET every batch; the job files learn status, counts and file ids (as poll.py does)."""
    tracker = polling.Tracker(targets, polling.Clock())
    polling.check(tracker, api.get_batch, only_unsettled=False)
    return dict(tracker.batches)


def _check_bare_endpoints(api, targets: list[polling.Target]) -> None:
    """Several targets with bare batch ids: their endpoints must agree (asked before the job
    files are touched or anything is downloaded)."""
    if len(targets) < 2 or all(t.job for t in targets):
        return
    bare = {e.batch_id: api.get_batch(e.batch_id) for t in targets if not t.job
            for e in t.entries}
    families.check_related(targets, _fetch_command, bare)


def _download(api, plan: fetch_plan.Plan, targets: list[polling.Target], batches: dict,
              args: argparse.Namespace, refetch: set[str] = frozenset()) -> dict:
    """BatchDownload per batch id; batches in `refetch` get every file again from line 0."""
    downloads: dict[str, download.BatchDownload] = {}
    for target in targets:
        raw_dir = plan.raw_dirs[target.arg]
        for entry in target.entries:
            if entry.batch_id in downloads or (refetch and entry.batch_id not in refetch):
                continue
            batch = batches[entry.batch_id]
            requests = None
            if target.job:
                requests = jobfile.shard_by_index(target.job, entry.shard).get("requests")
            downloads[entry.batch_id] = download.download_batch(
                api, batch, raw_dir, fetch_plan.store_for(target, entry, raw_dir),
                terminal=status.is_terminal(batch), need_input=not target.job_path,
                refetch=download.KINDS if entry.batch_id in refetch else (),
                requests=requests, max_line_bytes=args.max_line_bytes,
                max_retries=args.max_retries, warn=cli.warn)
    return downloads


# --------------------------------------------------------------------------- joining

@dataclasses.dataclass
class Options:
    """What shapes the files this run writes (part of the stamp)."""

    statuses: tuple[str, ...]
    raise_tokens: retry_file.TokenRaise | None
    max_attempts: int
    table_answer: dict

    def fingerprint(self, plan: fetch_plan.Plan) -> dict:
        source = plan.table_source
        return {"format": plan.format, "results": os.path.abspath(plan.results),
                "retry": os.path.abspath(plan.retry), "retry_statuses": list(self.statuses),
                "truncated_max_tokens": dataclasses.asdict(self.raise_tokens)
                if self.raise_tokens else None, "max_attempts": self.max_attempts,
                "table": os.path.abspath(plan.table) if plan.table else None,
                "table_format": plan.table_format, "table_source": source,
                "table_answer": self.table_answer,
                "table_input": results_stamp.file_state(source["input"]) if source else None}


def _join(sources: list, plan: fetch_plan.Plan, options: Options, progress, *, reuse: bool
          ) -> tuple[reconcile.Summary, retry_file.RetryWriter, table.TableWriter | None,
                     dict | None]:
    """Reconcile into the results and retry files and the user's table, or keep them when
    their stamp says that nothing they are built from changed, or bring them up to date when
    only new result lines arrived (rejoin.py). Returns (summary, retry writer, table writer,
    the stamp to save once the files are committed: {"fingerprint", "join" (what rejoin.py
    keeps)}, or None when the files were kept)."""
    policy = retry_policy.RetryPolicy(options.statuses, options.max_attempts)
    writer = retry_file.RetryWriter(plan.retry, policy, options.raise_tokens)
    table_writer = table.TableWriter(plan.table, plan.table_format, plan.table_source,
                                     options.table_answer) if plan.table else None
    current = results_stamp.fingerprint(sources, options.fingerprint(plan))
    stamped = results_stamp.load(plan.results, plan.retry, (plan.table,)) if reuse else None
    stored = stamped["outcome"] if stamped and stamped.get("fingerprint") == current else None
    summary = _stored_summary(stored)
    if summary is not None:
        writer.keep(stored["retry_counts"])
        policy.keep(stored["gave_up"], stored["gave_up_reasons"])
        if table_writer is not None:
            table_writer.keep(stored["table"])
        cli.warn(f"note: nothing changed since {_show(plan.results)} was written: kept as it "
                 "is (--rebuild writes it again)")
        return summary, writer, table_writer, None
    results_stamp.forget(plan.results)
    updated = _update(sources, plan, writer, table_writer, stamped, current)
    if updated is not None:
        summary, state, new_lines, touched = updated
        cli.warn(f"note: {new_lines} new result line(s) joined into {_show(plan.results)}: "
                 f"{touched} request(s) decided again, the other records copied as they were "
                 "(--rebuild joins everything again)")
    else:
        writer = retry_file.RetryWriter(plan.retry, policy.fresh(), options.raise_tokens)
        table_writer = table.TableWriter(plan.table, plan.table_format, plan.table_source,
                                         options.table_answer) if plan.table else None
        summary, state = rejoin.full_join(sources, plan.results, plan.format, writer,
                                          table_writer, progress=progress)
    return summary, writer, table_writer, {"fingerprint": current, "join": state}


def _update(sources: list, plan: fetch_plan.Plan, writer: retry_file.RetryWriter,
            table_writer: table.TableWriter | None, stamped: dict | None, current: dict
            ) -> tuple[reconcile.Summary, dict | None, int, int] | None:
    """The files brought up to date with the new result lines only, when the stamp allows:
    (summary, state to keep, new lines, requests decided again)."""
    if not stamped or not results_stamp.only_raw_files_differ(stamped["fingerprint"], current):
        return None
    outcome = stamped["outcome"]
    summary = _stored_summary(outcome)
    if summary is None or not isinstance(outcome.get("join"), dict):
        return None
    writer.policy.keep(outcome["gave_up"], outcome["gave_up_reasons"])
    return rejoin.update(sources, plan.results, plan.format, writer, outcome["join"],
                         summary, outcome["retry_counts"], table_writer, outcome["table"])


def _stored_summary(stored: dict | None) -> reconcile.Summary | None:
    if not stored:
        return None
    try:
        if "ok_usage" not in stored["summary"]:
            return None  # written before ok usage was kept: build the files again
        summary = reconcile.Summary(**stored["summary"])
        if not all(isinstance(n, int) for n in dict(stored["retry_counts"]).values()):
            return None
        if not isinstance(stored["gave_up"], int) or \
                not isinstance(stored["gave_up_reasons"], list) or \
                not isinstance(stored["table"], dict):
            return None
    except (KeyError, TypeError, ValueError):
        return None
    return summary


def _record_origin(targets: list[polling.Target], retry_path: str | None,
                   writer: retry_file.RetryWriter, plan: fetch_plan.Plan) -> None:
    """Beside a freshly written retry file: the job it came from (its family); a retry file
    that is gone takes its record with it."""
    if retry_path is None:
        provenance.remove(plan.retry)
        return
    first = targets[0]
    if writer.sha256 is None or not first.job:
        return  # kept as it was (its record too), or no job to name
    provenance.write(plan.retry, "retry", [(plan.retry, writer.sha256)],
                     origin=provenance.origin_of(first.job, first.job_path, plan.retry))


# --------------------------------------------------------------------------- reporting

def _exit_code(summary: reconcile.Summary, retry_path: str | None) -> int:
    """Judged on the records: 5 missing because a batch ended badly; 3 pending; 4 not ok.
    With nothing pending and nothing left worth retrying the job is finished: 4."""
    counts = summary.counts
    if summary.missing_from_ended and (retry_path or counts["pending"]):
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


def _fetch_command(targets: list[polling.Target]) -> str:
    return cli.script_command("fetch_results.py", *(t.arg for t in targets), "--json")


def main(args: argparse.Namespace) -> cli.Result:
    targets = polling.resolve_targets(args.targets)
    families.check_related(targets, _fetch_command)
    plan = fetch_plan.Plan(args, targets)
    options = Options(retry_file.parse_statuses(args.retry_status),
                      retry_file.TokenRaise.parse(args.truncated_max_tokens), args.max_attempts,
                      fetch_plan.table_answer(plan, targets))
    progress = cli.warn if sys.stderr.isatty() else None
    with contextlib.ExitStack() as stack:
        for raw_dir in sorted(set(plan.raw_dirs.values())):
            stack.enter_context(download.raw_dir_lock(raw_dir))
        if args.offline:
            api, downloads = None, {}
            batches = fetch_plan.recorded_batches(plan, targets)
        else:
            api = stack.enter_context(client.client_from_args(args, on_retry=cli.warn))
            polling.warn_base_url_mismatch(targets, api.base_url)
            _check_bare_endpoints(api, targets)
            batches = _check_batches(api, targets)
            downloads = _download(api, plan, targets, batches, args)
        sources = fetch_plan.sources(plan, targets, batches)
        summary, writer, table_writer, stamp = _join(sources, plan, options, progress,
                                                     reuse=not args.rebuild)
        if api is not None and summary.missing_from_completed:
            # A completed batch must have a line for every request: the saved copies no
            # longer line up with the server's files (e.g. after a /retry). Once, from 0.
            lost = set(summary.missing_from_completed)
            cli.warn(f"note: {sum(summary.missing_from_completed.values())} requests of "
                     f"completed batch(es) {', '.join(sorted(lost))} have no result in the "
                     "saved files; downloading those batches' files again")
            downloads.update(_download(api, plan, targets, batches, args, refetch=lost))
            writer.abort()
            if table_writer is not None:
                table_writer.abort()
            summary, writer, table_writer, stamp = _join(sources, plan, options, progress,
                                                         reuse=False)
        # still under the raw folders' locks: the stamp describes these very files
        retry_path = _show(writer.commit())
        _record_origin(targets, retry_path, writer, plan)
        table_info = table_writer.commit() if table_writer is not None else None
        if stamp is not None:
            results_stamp.save(plan.results, plan.retry, stamp["fingerprint"], {
                "summary": dataclasses.asdict(summary), "retry_counts": writer.counts,
                "gave_up": writer.policy.gave_up,
                "gave_up_reasons": writer.policy.reasons_list(),
                "table": table_info or {}, "join": stamp["join"]}, (plan.table,))
    cost = _actual_cost(api, targets, batches)
    return _report(args, targets, plan, summary, writer, retry_path, batches, downloads, cost,
                   table_info)


# --------------------------------------------------------------------------- cost

def _actual_cost(api, targets: list[polling.Target], batches: dict):
    """What the batches really cost (their analytics' total_cost, summed), recorded in the
    job files; offline, what they recorded. None when the cost of any batch is unknown."""
    if api is None:
        known: dict = {}
        for target in targets:
            if target.job:
                known.update(costs.recorded_costs(target.job))
        return costs.total_cost(known.get(batch_id) for batch_id in batches)
    by_batch = {batch_id: costs.batch_cost(api, batch_id, cli.warn) for batch_id in batches}
    for target in targets:
        if target.job_path:
            costs.record_costs(target.job_path, by_batch)
    return costs.total_cost(by_batch.values())


def _projection(targets: list[polling.Target], summary: reconcile.Summary, cost
                ) -> dict | None:
    """For a pilot job (submit.py --pilot N): its usage and cost scaled to the whole input."""
    first = targets[0]
    pilot = (first.job or {}).get("pilot") if first.job else None
    if not isinstance(pilot, dict):
        return None
    return costs.projection(pilot, summary.counts["ok"], summary.ok_usage, cost,
                            first.job.get("completion_window"))


def _full_submit_command(targets: list[polling.Target], args) -> str | None:
    """After a good pilot: the same submit for the whole input (without --pilot)."""
    first = targets[0]
    inputs = (first.job.get("pilot") or {}).get("inputs") or []
    if not inputs:
        return None
    paths = [_show(jobfile.abs_path(first.job_path, p)) for p in inputs]
    return cli.script_command("submit.py", *paths, *(["--json"] if args.json else []))


def _report(args, targets, plan, summary, writer, retry_path, batches, downloads, cost,
            table_info: dict | None) -> cli.Result:
    results_path = _show(plan.results)
    code = _exit_code(summary, retry_path)
    policy = writer.policy
    reasons = policy.reasons_list()
    family, family_notes = fetch_plan.partial_family(targets)
    json_flag = ["--json"] if args.json else []
    merge_cmd = None
    if retry_path and family is None:
        merge_cmd = cli.script_command(
            "fetch_results.py", *args.targets, _show(jobfile.default_job_path(retry_path)),
            *json_flag)
    if code == errors.NOT_FINISHED:
        # the same command (online: --offline would only re-read what is saved)
        next_cmd = cli.script_command("fetch_results.py",
                                      *(a for a in sys.argv[1:] if a != "--offline"))
    elif retry_path and code in (errors.PARTIAL_FAILURE, errors.BATCH_UNSUCCESSFUL):
        next_cmd = cli.script_command("submit.py", retry_path,
                                      *(["--json"] if args.json else []))
    else:
        next_cmd = None

    notes = list(family_notes)
    if family is not None:
        # part of a family: its attempts, supersessions and table need the whole family
        next_cmd = cli.script_command("fetch_results.py", *family, *json_flag)
        notes.append("these jobs are part of a family (the origin job, then its retry jobs): "
                     + ", ".join(family) + ". Results of part of a family miss what the other "
                     "jobs did (attempts, answers that superseded failures, the table), so "
                     "this retry file is not the one to submit: fetch the whole family with "
                     "the next command")
    if summary.duplicate_inputs:
        notes.append(f"{summary.duplicate_inputs} request lines repeat a custom_id of the same "
                     "batch: one record each custom_id")
    if summary.unmatched_results:
        notes.append(f"{summary.unmatched_results} result lines name a custom_id that is not "
                     "among their batch's requests: ignored")
    if summary.unreadable_results:
        notes.append(f"{summary.unreadable_results} result lines are not JSON objects with a "
                     "custom_id (a broken server answer): no request can be named for them, "
                     "so they were ignored")
    for item in downloads.values():
        notes.extend(res.note for res in item.files.values() if res.note)
    if summary.counts["pending"]:
        notes.append(f"{summary.counts['pending']} requests are still pending: run the same "
                     "command later to fetch the rest (only new lines are downloaded)")
    table_info = table_info or {}
    if table_info.get("error"):
        notes.append(f"the table was not written: {table_info['error']}")
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
    finished = code != errors.NOT_FINISHED and not retry_path and family is None \
        and summary.records != summary.counts["ok"]
    fields = {
        "results_file": results_path, "format": plan.format, "records": summary.records,
        "counts": summary.counts, "usage": summary.usage,
        "retry_file": retry_path, "retry_requests": writer.lines,
        "retry_counts": writer.counts,
        "max_attempts": policy.max_attempts,
        "gave_up": policy.gave_up, "gave_up_reasons": reasons,
        "raw_dirs": sorted({_show(d) for d in plan.raw_dirs.values()}),
        "jobs": [t.job_path for t in targets if t.job_path],
        "batches": batch_fields,
        "superseded_results": summary.superseded,
        "unmatched_results": summary.unmatched_results,
        "unreadable_results": summary.unreadable_results,
        "after_retry": merge_cmd,
        "cost_usd": costs.cost_number(cost),
        "table_file": _show(table_info.get("path")),
        "table_rows": table_info.get("rows"),
        "table_error": table_info.get("error"),
        "notes": notes,
    }
    projection = _projection(targets, summary, cost)
    if projection is not None:
        fields["projection"] = projection
        if code == errors.OK:
            next_cmd = _full_submit_command(targets, args) or next_cmd
    lines = [f"results: {results_path} ({summary.records} records: "
             f"{_counts_text(summary.counts)})",
             f"tokens: {summary.usage['prompt_tokens']} prompt, "
             f"{summary.usage['completion_tokens']} completion, "
             f"{summary.usage['total_tokens']} total"
             + (f"; cost {costs.dollars(fields['cost_usd'])} (the server's analytics)"
                if fields["cost_usd"] is not None else "")]
    if projection is not None:
        lines.append(costs.projection_text(projection))
        lines.append("read some answers in the results file; if they are good, submit the "
                     "whole input with the same submit command without --pilot")
    for item in batch_fields:
        got = []
        for kind in ("output", "error"):
            if kind in item:
                got.append(f"{kind} {item[kind]['lines']} lines (+{item[kind]['new_lines']})")
        lines.append(f"batch {item['batch_id']}: {item['status']}"
                     + (": " + ", ".join(got) if got else ""))
    if table_info.get("path"):
        lines.append(f"table: {fields['table_file']} ({table_info['rows']} rows: "
                     f"{table_info['columns']})")
    lines.append("raw downloads: " + ", ".join(fields["raw_dirs"]))
    if policy.gave_up:
        lines.append(f"gave up on {policy.gave_up} request(s) (not worth sending again):")
        lines += ["  " + text for text in retry_policy.describe(reasons)]
    if retry_path:
        lines.append(f"retry file: {retry_path} ({writer.lines} requests: "
                     f"{_counts_text(writer.counts)})")
        if merge_cmd:
            lines.append(f"after submitting it, merge with: {merge_cmd}")
    elif finished:
        lines.append("nothing left to retry: the job is finished. Tell the user which requests "
                     "could not be done and why (above); the results file has every record")
    return cli.Result(fields, "\n".join(lines), code, next_cmd)


if __name__ == "__main__":
    cli.main_entry(build_parser, main)
