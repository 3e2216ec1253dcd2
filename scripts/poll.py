#!/usr/bin/env python3
# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "requests>=2.28,<3",
#     "jsonschema>=4.17,<5",
# ]
# ///
"""poll.py: where are my batches, and what do I run next? One check by default."""

from __future__ import annotations

import argparse

from dwbatch.deps import require  # standard library only

require("requests")  # before anything imports them: a clear error, not a traceback

from dwbatch import cli, client, polling


def build_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser(
        "poll.py",
        "Check where batches stand: status, completed/failed/total, percent, an ETA from the "
        "progress seen across polls, time left in the completion window, and the next "
        "command. Accepts job files (written by submit.py; a job's shards are shown one by "
        "one and added up) and/or bare batch ids. By default it checks ONCE and returns: "
        "agents should run it again later rather than sleep in a loop. Updates the job file "
        "(status, counts, output/error file ids, progress samples).",
        ["python3 scripts/poll.py prompts.job.json --json",
         "python3 scripts/poll.py 3fa85f64-5717-4562-b3fc-2c963f66afa6 other.job.json",
         "python3 scripts/poll.py prompts.job.json --wait --timeout 3600"])
    parser.add_argument("targets", nargs="+", metavar="JOB_OR_BATCH_ID",
                        help="a job file (PROMPTS.job.json) or a batch id; several allowed")
    cli.add_network_args(parser)
    waiting = parser.add_argument_group("waiting (only with --wait)")
    waiting.add_argument("--wait", action="store_true",
                         help="keep checking until every batch has ended (or --timeout); "
                              "the interval starts at 2 s and grows while nothing changes. "
                              "Ctrl-C stops waiting (exit 130) and never cancels anything")
    waiting.add_argument("--interval", type=cli.positive_seconds,
                         default=polling.DEFAULT_MAX_INTERVAL, metavar="S",
                         help="longest pause between checks, in seconds "
                         f"(default {polling.DEFAULT_MAX_INTERVAL:g}; fractions allowed)")
    waiting.add_argument("--timeout", dest="wait_timeout", type=cli.positive_seconds, default=None,
                         metavar="S", help="with --wait: stop waiting after S seconds and "
                         "exit 3 if anything is still running (default: no limit)")
    return parser


def main(args: argparse.Namespace) -> cli.Result:
    if not args.wait and (args.wait_timeout is not None
                          or args.interval != polling.DEFAULT_MAX_INTERVAL):
        cli.warn("note: --timeout and --interval only apply with --wait; checking once")
    targets = polling.resolve_targets(args.targets)
    clock = polling.clock_from_env()
    api = client.client_from_args(args)
    polling.warn_base_url_mismatch(targets, api.base_url)
    tracker = polling.Tracker(targets, clock)
    with api:
        if not args.wait:
            polling.check(tracker, api.get_batch, only_unsettled=False)
            return polling.report(tracker, None, args.targets)
        line = polling.ProgressLine()
        try:
            outcome = polling.wait(tracker, api.get_batch, cap=args.interval,
                                   timeout=args.wait_timeout, on_progress=line.show)
        finally:
            line.finish()
        if outcome.polls == 0 and outcome.interrupted:
            raise KeyboardInterrupt
        return polling.report(tracker, outcome, args.targets)


if __name__ == "__main__":
    cli.main_entry(build_parser, main)
