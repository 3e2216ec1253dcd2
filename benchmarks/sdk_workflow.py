"""The baseline of bench_workflow.py: the straightforward script a user writes with the
official `openai` SDK to run a prompts file through the batch API. It is deliberately what the
SDK's documentation leads to, nothing cleverer: build the JSONL, files.create,
batches.create, batches.retrieve every 2 s until the batch ends, files.content of the output
and error files, join by custom_id in a dict, write the results.

    OPENAI_BASE_URL=http://127.0.0.1:PORT/v1 OPENAI_API_KEY=... \\
        python benchmarks/sdk_workflow.py prompts.txt OUT_DIR [--model M] [--max-tokens N]

Prints one JSON line: batch id, status, records written, status calls made.

With --fetch BATCH_ID it does steps 5 and 6 only (the results of a batch that exists), which
is what bench_tools.py compares with the other ways of getting results.
"""

import argparse
import json
import os
import time

from openai import OpenAI

TERMINAL = ("completed", "failed", "expired", "cancelled")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("prompts")
    ap.add_argument("out_dir")
    ap.add_argument("--model", default="sandbox-chat")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--fetch", metavar="BATCH_ID", help="only download and join this batch")
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    batch_path = os.path.join(args.out_dir, "batch.jsonl")
    results_path = os.path.join(args.out_dir, "results.jsonl")
    client = OpenAI()
    if args.fetch:
        batch = client.batches.retrieve(args.fetch)
        polls = 0
        fetch_and_write(client, batch, results_path, polls)
        return

    # 1. build the batch file, one line per prompt
    with open(args.prompts, encoding="utf-8") as f, open(batch_path, "w") as out:
        for i, line in enumerate(f, 1):
            prompt = line.strip()
            if not prompt:
                continue
            out.write(json.dumps({
                "custom_id": f"req-{i:06d}", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": args.model, "max_tokens": args.max_tokens,
                         "messages": [{"role": "user", "content": prompt}]}}) + "\n")

    # 2. upload, 3. create
    with open(batch_path, "rb") as f:
        batch_file = client.files.create(file=f, purpose="batch")
    batch = client.batches.create(input_file_id=batch_file.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")

    # 4. poll every 2 s
    polls = 0
    while batch.status not in TERMINAL:
        time.sleep(args.interval)
        batch = client.batches.retrieve(batch.id)
        polls += 1

    fetch_and_write(client, batch, results_path, polls)


def fetch_and_write(client, batch, results_path, polls):
    # 5. download output and errors, join by custom_id
    results = {}
    if batch.output_file_id:
        for line in client.files.content(batch.output_file_id).text.splitlines():
            r = json.loads(line)
            results[r["custom_id"]] = {
                "custom_id": r["custom_id"],
                "content": r["response"]["body"]["choices"][0]["message"]["content"]}
    if batch.error_file_id:
        for line in client.files.content(batch.error_file_id).text.splitlines():
            r = json.loads(line)
            results[r["custom_id"]] = {"custom_id": r["custom_id"], "error": r["error"]}

    # 6. write the results
    with open(results_path, "w") as f:
        for record in results.values():
            f.write(json.dumps(record) + "\n")
    print(json.dumps({"batch_id": batch.id, "status": batch.status, "records": len(results),
                      "status_calls": polls}))


if __name__ == "__main__":
    main()
