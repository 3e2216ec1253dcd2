#!/usr/bin/env python3
# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "requests>=2.28,<3",
#     "jsonschema>=4.17,<5",
# ]
# ///
"""batches.py: list, get, cancel, retry and delete batches."""

from __future__ import annotations

import argparse

from dwbatch.deps import require  # standard library only

require("requests")  # before anything imports them: a clear error, not a traceback

from dwbatch import cli, client, errors, manage, status

EXIT_CODES = (errors.OK, errors.INTERNAL, errors.INVALID_INPUT, errors.AUTH, errors.UNAVAILABLE,
              errors.INTERRUPTED)


def _sub(subs, name: str, help_text: str, examples: list[str]) -> argparse.ArgumentParser:
    epilog = cli.help_epilog(examples, EXIT_CODES)
    p = subs.add_parser(name, help=help_text, description=help_text, epilog=epilog,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print exactly one JSON object on stdout")
    cli.add_network_args(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser(
        "batches.py",
        "Manage batches on the server: list, get, cancel, retry (in place), delete, and list "
        "the models the key may use. cancel and retry accept a job file (PROMPTS.job.json) "
        "to act on all its batches; cancel never touches a finished batch.",
        ["python3 scripts/batches.py list --status in_progress --json",
         "python3 scripts/batches.py cancel prompts.job.json",
         "python3 scripts/batches.py retry 3fa85f64-5717-4562-b3fc-2c963f66afa6 --json"],
        EXIT_CODES)
    subs = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = _sub(subs, "list", "List batches, newest first, page by page.",
             ["python3 scripts/batches.py list", "python3 scripts/batches.py list --all --json",
              "python3 scripts/batches.py list --status failed --limit 5"])
    p.add_argument("--status", choices=status.ALL_STATUSES, default=None,
                   help="only batches with this status")
    p.add_argument("--limit", type=cli.positive_int, default=manage.DEFAULT_LIST_LIMIT,
                   metavar="N", help=f"show at most N batches (default "
                   f"{manage.DEFAULT_LIST_LIMIT}); pages are fetched as needed")
    p.add_argument("--all", action="store_true", help="every batch (ignores --limit)")
    p.add_argument("--after", metavar="ID", default=None,
                   help="start after this batch id (the `next` of a previous list)")
    p.add_argument("--search", metavar="TEXT", default=None,
                   help="server-side search in metadata, filename and id (e.g. a job_id)")

    p = _sub(subs, "get", "Show one batch: status, counts, file ids, timestamps, notes.",
             ["python3 scripts/batches.py get 3fa85f64-5717-4562-b3fc-2c963f66afa6 --json"])
    p.add_argument("batch_id", metavar="ID")

    p = _sub(subs, "cancel",
             "Cancel a batch, or every unfinished batch of a job file. Requests already "
             "finished keep their results; cancelled ones can be revived with retry. A "
             "finished batch is never sent a cancel (the service would mark it cancelled for "
             "good): a finished batch id is refused (exit 2), a job's finished batches are "
             "skipped.",
             ["python3 scripts/batches.py cancel prompts.job.json --json",
              "python3 scripts/batches.py cancel 3fa85f64-5717-4562-b3fc-2c963f66afa6"])
    p.add_argument("target", metavar="ID|JOB")

    p = _sub(subs, "retry",
             "Retry failed and cancelled requests IN THE SAME BATCH (the server's in-place "
             "retry: no new batch, same id; its counts go back to pending). With a job file: "
             "every batch that has failed or cancelled requests. Exit 2 when there is "
             "nothing to retry.",
             ["python3 scripts/batches.py retry prompts.job.json --json",
              "python3 scripts/batches.py retry 3fa85f64-5717-4562-b3fc-2c963f66afa6"])
    p.add_argument("target", metavar="ID|JOB")

    _sub(subs, "models",
         "List the models this key may use (GET /models), for create_batch_file.py --model. "
         "submit.py checks the files' models against this list before uploading.",
         ["python3 scripts/batches.py models", "python3 scripts/batches.py models --json"])

    p = _sub(subs, "delete",
             "Delete a batch (soft delete; a running batch is cancelled first).",
             ["python3 scripts/batches.py delete 3fa85f64-5717-4562-b3fc-2c963f66afa6"])
    p.add_argument("batch_id", metavar="ID")
    return parser


def main(args: argparse.Namespace) -> cli.Result:
    api = client.client_from_args(args)
    with api:
        if args.action == "list":
            return manage.list_batches(api, status_filter=args.status, limit=args.limit,
                                       all_pages=args.all, after=args.after,
                                       search=args.search)
        if args.action == "get":
            return manage.get_batch(api, args.batch_id)
        if args.action == "cancel":
            return manage.cancel(api, args.target)
        if args.action == "retry":
            return manage.retry(api, args.target)
        if args.action == "models":
            return manage.list_models(api)
        return manage.delete(api, args.batch_id)


if __name__ == "__main__":
    cli.main_entry(build_parser, main)
