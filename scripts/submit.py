#!/usr/bin/env python3
# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "requests>=2.28,<3",
#     "jsonschema>=4.17,<5",
# ]
# ///
"""submit.py: upload batch files and start batches, exactly once, resumable."""

from __future__ import annotations

import argparse
import os

from dwbatch.deps import require  # standard library only

require("requests", "jsonschema")  # before anything imports them: a clear error, not a traceback

from dwbatch import cli, errors, families, limits, polling, submitting
from dwbatch.secrets import api_key_from_env


def build_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser(
        "submit.py",
        "Validate batch files (every line, with the same checks as create_batch_file.py "
        "--check; nothing is sent if any line is bad), split files over the limits into "
        "shards beside the job file, upload them (streamed from disk) and create one batch "
        "per shard. Everything is recorded in a job file (default: PROMPTS.job.json beside "
        "the first input) after every step, so re-running the same command never uploads or "
        "creates anything twice: it finishes what is missing and prints the batches. A batch "
        "whose creation answer was lost is found again by its metadata (job_id, shard_index) "
        "instead of being created twice.",
        ["python3 scripts/submit.py prompts.jsonl --json",
         "python3 scripts/submit.py prompts.jsonl --dry-run",
         "python3 scripts/submit.py prompts.jsonl --pilot 20 --json",
         "python3 scripts/submit.py a.jsonl b.jsonl --completion-window 1h --max-cost 5 "
         "--metadata project=demo --job run1.job.json"],
        (errors.OK, errors.INTERNAL, errors.INVALID_INPUT, errors.AUTH, errors.UNAVAILABLE,
         errors.INTERRUPTED))
    parser.add_argument("files", nargs="*", metavar="FILE",
                        help="batch input files (.jsonl, one request per line); several allowed")
    parser.add_argument("--completion-window", default=None, metavar="WINDOW",
                        help="24h (default, cheapest) or 1h (faster, dearer; the default of "
                             "--pilot); any other value is passed to the server, which names "
                             "the values it allows. Fixed once a batch of the job exists")
    parser.add_argument("--pilot", type=cli.positive_int, default=None, metavar="N",
                        help="submit only the first N requests (input order) as a separate "
                             "pilot job, PROMPTS.pilot.jsonl / PROMPTS.pilot.job.json (window "
                             "1h unless given); fetch it to read real answers and a projection "
                             "of the whole input's tokens and cost; then run the same command "
                             "without --pilot")
    parser.add_argument("--metadata", action="extend", nargs="+", default=[],
                        metavar="KEY=VALUE",
                        help="metadata for every batch (string values; repeatable); job_id and "
                             "shard_index are set by submit.py. Fixed once a batch of the job "
                             "exists")
    parser.add_argument("--job", metavar="PATH", default=None,
                        help="job file to write (default: PROMPTS.job.json beside the first "
                             "input); re-run with the same --job to resume")
    parser.add_argument("--max-file-bytes", type=cli.byte_size,
                        default=limits.MAX_FILE_BYTES, metavar="N",
                        help=f"split files larger than this (default {limits.MAX_FILE_BYTES:,}; "
                             "units allowed: 100MB, 100MiB)")
    parser.add_argument("--max-requests", type=cli.positive_int, default=limits.MAX_REQUESTS,
                        metavar="N",
                        help=f"split files with more requests (default {limits.MAX_REQUESTS:,})")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate, split, count requests and estimate input tokens; send "
                             "nothing and write nothing (no network, no key needed); job_id "
                             "is null until the job exists (a new job gets its id when it is "
                             "really submitted)")
    parser.add_argument("--max-cost", metavar="USD", default=None,
                        help="after uploading, ask the server's cost estimate and create no "
                             "batch if the total passes this many US dollars (exit 2; the "
                             "uploaded files stay recorded)")
    parser.add_argument("--force", action="store_true",
                        help="submit even though the job file records other inputs: starts a "
                             "NEW job (the old job file is kept as PROMPTS-<id>.job.json)")
    cli.add_network_args(parser)
    return parser


def _split_files_from_metadata(args: argparse.Namespace) -> None:
    """`--metadata a=1 prompts.jsonl` puts the file into --metadata: move it back."""
    keep = []
    for item in args.metadata:
        if "=" not in item and os.path.exists(item):
            args.files.append(item)
        else:
            keep.append(item)
    args.metadata = keep


def options_from_args(args: argparse.Namespace) -> submitting.SubmitOptions:
    _split_files_from_metadata(args)
    return submitting.SubmitOptions(
        inputs=list(args.files),
        completion_window=args.completion_window,
        metadata=submitting.parse_metadata(args.metadata) if args.metadata else None,
        job_path=args.job,
        max_file_bytes=args.max_file_bytes,
        max_requests=args.max_requests,
        dry_run=args.dry_run,
        max_cost=submitting.parse_max_cost(args.max_cost),
        force=args.force,
        pilot=args.pilot,
    )


def real_run_command(args: argparse.Namespace) -> str:
    """The same command without --dry-run (the `next` of a dry run)."""
    parts = list(args.files)
    if args.pilot is not None:
        parts += ["--pilot", str(args.pilot)]
    if args.completion_window is not None:
        parts += ["--completion-window", args.completion_window]
    for item in args.metadata:
        parts += ["--metadata", item]
    if args.job:
        parts += ["--job", args.job]
    if args.max_file_bytes != limits.MAX_FILE_BYTES:
        parts += ["--max-file-bytes", str(args.max_file_bytes)]
    if args.max_requests != limits.MAX_REQUESTS:
        parts += ["--max-requests", str(args.max_requests)]
    if args.max_cost is not None:
        parts += ["--max-cost", str(args.max_cost)]
    if args.force:
        parts.append("--force")
    if args.base_url:
        parts += ["--base-url", args.base_url]
    parts.append("--json")
    return cli.script_command("submit.py", *parts)


def poll_command(args: argparse.Namespace, job_path: str) -> str:
    parts = [job_path]
    if args.base_url:
        parts += ["--base-url", args.base_url]
    parts.append("--json")
    return cli.script_command("poll.py", *parts)


def fetch_command(args: argparse.Namespace, job_path: str, job: dict) -> str:
    """The fetch to run once the job has finished: its whole family as found on disk (a
    retry job is fetched together with the job it came from, origin first)."""
    names, notes = families.fetch_args([polling.Target(job_path, job_path, job)])
    for note in notes:
        cli.warn("note: " + note)
    parts = list(names)
    if args.base_url:
        parts += ["--base-url", args.base_url]
    return cli.script_command("fetch_results.py", *parts, "--json")


def _shard_view(shard: dict) -> dict:
    return {k: shard.get(k) for k in ("index", "path", "input", "requests", "bytes", "endpoint",
                                      "file_id", "batch_id", "status")}


def main(args: argparse.Namespace) -> cli.Result:
    opts = options_from_args(args)
    outcome = submitting.submit(opts, args,
                                progress_factory=submitting.terminal_progress_factory())
    job = outcome.job
    shards = sorted(job["shards"], key=lambda s: s["index"])
    requests = sum(s.get("requests") or 0 for s in shards)
    tokens = sum(s.get("input_tokens_estimate") or 0 for s in shards)
    fields = {
        "dry_run": outcome.dry_run,
        "job": outcome.job_path,
        "job_id": job.get("job_id"),
        "base_url": job.get("base_url"),
        "completion_window": job.get("completion_window"),
        "endpoint": job.get("endpoint"),
        "requests": requests,
        "input_tokens_estimate": tokens,
        "shards": [_shard_view(s) for s in shards],
        "batch_ids": [s["batch_id"] for s in shards if s.get("batch_id")],
        "uploaded": outcome.uploaded,
        "uploads_found": outcome.uploads_found,
        "created": outcome.created,
        "found": outcome.found,
        "estimated_cost": (str(outcome.estimated_cost)
                           if outcome.estimated_cost is not None else None),
        "replaced_job": outcome.replaced_job,
        "notes": outcome.notes,
        "pilot": job.get("pilot"),
        "fetch_command": None,
    }
    if outcome.dry_run:
        return _dry_run_result(args, outcome, fields, shards, requests, tokens)
    fields["already_submitted"] = (outcome.uploaded == 0 and outcome.created == 0
                                   and outcome.found == 0 and outcome.uploads_found == 0)
    found = [f"{n} {what} found again" for n, what in ((outcome.uploads_found, "upload(s)"),
                                                        (outcome.found, "batch(es)")) if n]
    head = ("already submitted: nothing sent again" if fields["already_submitted"] else
            f"submitted: {outcome.uploaded} file(s) uploaded, {outcome.created} batch(es) "
            f"created" + "".join(f", {f}" for f in found))
    lines = [f"{head}; job {outcome.job_path} (job id {job['job_id']}), {requests:,} requests, "
             f"window {job['completion_window']}"]
    for s in shards:
        lines.append(f"  shard {s['index']}: {s['path']} ({s.get('requests') or 0:,} requests)"
                     f" -> batch {s.get('batch_id')} [{s.get('status') or 'unknown'}]")
    if outcome.estimated_cost is not None:
        lines.append(f"estimated cost: ${outcome.estimated_cost}")
    fields["fetch_command"] = fetch_command(args, outcome.job_path, job)
    if job.get("pilot"):
        lines.append(pilot_text(job["pilot"], fields["fetch_command"]))
    elif job.get("origin"):
        lines.append("a retry job: once it has finished, fetch it together with the job it "
                     f"came from (the whole family): {fields['fetch_command']}")
    lines += [f"note: {n}" for n in outcome.notes]
    return cli.Result(fields=fields, summary="\n".join(lines),
                      next=poll_command(args, outcome.job_path))


def pilot_text(pilot: dict, fetch: str) -> str:
    return (f"pilot: the first {pilot['pilot_requests']:,} of {pilot['full_requests']:,} "
            f"requests. When it has finished, {fetch} shows the answers "
            "and a projection of the whole input's tokens and cost; then submit the whole "
            "input with the same command without --pilot")


def _dry_run_result(args, outcome, fields, shards, requests, tokens) -> cli.Result:
    recorded = [s for s in shards if s.get("file_id") or s.get("batch_id")]
    fields["would_upload"] = sum(1 for s in shards if not s.get("file_id"))
    fields["would_create"] = sum(1 for s in shards if not s.get("batch_id"))
    fields["key_set"] = api_key_from_env() is not None
    lines = [f"dry run (nothing sent, nothing written): {requests:,} requests, about "
             f"{tokens:,} input tokens, in {len(shards)} shard(s); job file would be "
             f"{outcome.job_path}"]
    for s in shards:
        state = (f"batch {s['batch_id']}" if s.get("batch_id") else
                 f"uploaded as {s['file_id']}" if s.get("file_id") else "to upload")
        lines.append(f"  shard {s['index']}: {s['path']} ({s.get('requests') or 0:,} requests, "
                     f"{s.get('bytes') or 0:,} bytes, {s.get('endpoint')}) {state}")
    if recorded:
        lines.append(f"{len(recorded)} shard(s) already recorded in the job file are not sent "
                     "again")
    if not fields["key_set"]:
        lines.append("note: DOUBLEWORD_API_KEY is not set; the real run needs it")
    if outcome.replaced_job:
        lines.append(f"note: --force would keep the current job file as {outcome.replaced_job}")
    lines += [f"note: {n}" for n in outcome.notes]
    return cli.Result(fields=fields, summary="\n".join(lines), next=real_run_command(args))


if __name__ == "__main__":
    cli.main_entry(build_parser, main)
