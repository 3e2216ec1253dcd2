#!/usr/bin/env python3
# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "requests>=2.28,<3",
#     "jsonschema>=4.17,<5",
# ]
# ///
"""Run the whole doubleword-batch workflow once, printing each command as it runs it.

By default it starts the local sandbox (mock models, no key, no cost) and works on the bundled
example in examples/: a CSV of product reviews, a prompt template and a JSON Schema for
structured output. With --live it runs the same steps against the real service.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile

from dwbatch.deps import require  # standard library only

require("requests", "jsonschema")  # before anything imports them: a clear error, not a traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EXAMPLES = os.path.join(ROOT, "examples")

from dwbatch import cli, errors  # noqa: E402  (scripts/ is on sys.path when run as a script)

DEMO_KEY = "sandbox-demo-key"


def build_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser(
        "demo.py",
        "Run the whole workflow (build, submit, poll, fetch) on the bundled example, printing\n"
        "each step's exact command. Starts its own local sandbox unless --live is given.",
        [
            "python3 scripts/demo.py",
            "python3 scripts/demo.py --workdir demo-run",
            "DOUBLEWORD_API_KEY=... python3 scripts/demo.py --live --model MODEL",
        ],
    )
    parser.add_argument("--workdir", help="folder for the files the demo writes "
                        "(default: a new temporary folder, printed at the end)")
    parser.add_argument("--live", action="store_true",
                        help="use the real service (needs DOUBLEWORD_API_KEY and --model); "
                             "costs real money, though the example is tiny")
    parser.add_argument("--model", help="model name (default in the sandbox: sandbox-chat)")
    parser.add_argument("--timeout", type=cli.positive_seconds, default=120,
                        help="seconds to wait for the batch (default 120; use more with --live)")
    return parser


def start_sandbox() -> tuple[subprocess.Popen, str]:
    """Start scripts/sandbox_server.py on a free loopback port; return it and its base URL."""
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "sandbox_server.py"), "--port", "0",
         "--rate", "4", "--seed", "7"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    match = re.search(r"(http://\S+/v1)", line)
    if not match:
        proc.kill()
        raise errors.DWError(f"the sandbox did not start (it printed {line!r})",
                             code="sandbox_failed", exit_code=errors.INTERNAL,
                             hint="run python3 scripts/sandbox_server.py --port 0 to see why")
    return proc, match.group(1)


def step(title: str, script: str, args: list[str], env: dict, ok_codes: tuple[int, ...]) -> int:
    """Run one script the way a user would; show its command, its output and its exit code."""
    shown = " ".join(["python3", cli.display_path(os.path.join(HERE, script)),
                      *(shlex.quote(a) for a in args)])
    print(f"\n## {title}\n$ {shown}", flush=True)
    proc = subprocess.run([sys.executable, os.path.join(HERE, script), *args],
                          env=env, capture_output=True, text=True)
    for line in (proc.stdout + proc.stderr).rstrip().splitlines():
        print(f"  {line}")
    print(f"  (exit code {proc.returncode})", flush=True)
    if proc.returncode not in ok_codes:
        raise errors.DWError(f"step '{title}' exited {proc.returncode}",
                             code="demo_step_failed", exit_code=proc.returncode or 1,
                             hint="read the step's message above")
    return proc.returncode


def main(args: argparse.Namespace) -> cli.Result:
    env = dict(os.environ)
    if args.live and (not env.get("DOUBLEWORD_API_KEY") or not args.model):
        raise errors.InputError("--live needs DOUBLEWORD_API_KEY in the environment and "
                                "--model MODEL", hint="export DOUBLEWORD_API_KEY=... and "
                                "pass --model with a model your key may use")
    workdir = args.workdir or tempfile.mkdtemp(prefix="doubleword-demo-")
    os.makedirs(workdir, exist_ok=True)
    sandbox = None
    if args.live:
        model = args.model
    else:
        sandbox, base_url = start_sandbox()
        print(f"Started the local sandbox at {base_url} (mock models, nothing leaves this "
              "machine).", flush=True)
        env.update(DOUBLEWORD_BASE_URL=base_url, DOUBLEWORD_API_KEY=DEMO_KEY)
        model = args.model or "sandbox-chat"
    batch_file = cli.display_path(os.path.join(workdir, "reviews.jsonl"))
    job = cli.display_path(os.path.join(workdir, "reviews.job.json"))
    example = cli.display_path(EXAMPLES)
    try:
        step("1. Build a batch file from a CSV and a template", "create_batch_file.py", [
            os.path.join(example, "reviews.csv"), "-o", batch_file, "--model", model,
            "--template", "@" + os.path.join(example, "review_template.txt"),
            "--id-column", "id", "--max-tokens", "200",
            "--response-format", os.path.join(example, "sentiment.schema.json")],
            env, (0,))
        step("2. Upload it and start the batch (exactly once)", "submit.py",
             [batch_file, "--job", job], env, (0,))
        step("3. Check once: an agent does this, then comes back later", "poll.py",
             [job], env, (0, 3, 4))
        step("4. (A person may block until done instead)", "poll.py",
             [job, "--wait", "--timeout", str(args.timeout), "--interval", "2"],
             env, (0, 4))
        step("5. Fetch the results, joined back to the input rows", "fetch_results.py",
             [job], env, (0, 4))
    finally:
        if sandbox is not None:
            sandbox.terminate()
            sandbox.wait(timeout=10)
    results_path = os.path.join(workdir, "reviews.results.jsonl")
    print(f"\n## The results file: {results_path} (one record per input row, in input order)")
    counts: dict[str, int] = {}
    with open(results_path, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            counts[record["status"]] = counts.get(record["status"], 0) + 1
            answer = json.dumps(record.get("json", record.get("content")), ensure_ascii=False)
            print(f"  {record['custom_id']}: {record['status']}: {answer[:110]}")
    return cli.Result(
        {"workdir": workdir, "results_file": results_path, "counts": counts},
        f"\nDone. Everything the demo wrote is in {workdir}",
        errors.OK, None)


if __name__ == "__main__":
    cli.main_entry(build_parser, main)
