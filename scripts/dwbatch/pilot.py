"""`submit.py --pilot N`: the first N requests as a job of their own, before paying for all.

Why: the service's cost estimate guesses the output tokens, and nobody should pay for a
million answers before reading twenty. The pilot file `<stem>.pilot.jsonl` (the first N
request lines in input order) is submitted as the job `<stem>.pilot.job.json`; the job records
how many requests the whole input has, so fetching it can project the real usage and cost
of the whole input from what the pilot measured. When create_batch_file.py built the input,
the pilot file gets a source record of its own (the same input, its first N rows), so its
fetch writes the user's table for those rows too.
"""

from __future__ import annotations

import hashlib

from . import errors, jobfile, provenance
from .fsutil import atomic_open

PILOT_SUFFIX = ".pilot.jsonl"


def pilot_path(first_input: str) -> str:
    """prompts.jsonl -> prompts.pilot.jsonl, beside the input."""
    stem = jobfile.default_job_path(first_input)[: -len(jobfile.JOB_SUFFIX)]
    return stem + PILOT_SUFFIX


def first_lines(paths: list[str], count: int):
    """The first `count` request lines (blank lines skipped) of the inputs, in order, as bytes
    each ending with a newline."""
    left = count
    for path in paths:
        with open(path, "rb") as f:
            for raw in f:
                if not raw.strip():
                    continue
                yield raw.rstrip(b"\r\n") + b"\n"
                left -= 1
                if left <= 0:
                    return


def _digest_of_lines(lines) -> tuple[str, int]:
    digest = hashlib.sha256()
    count = 0
    for line in lines:
        digest.update(line)
        count += 1
    return digest.hexdigest(), count


def _file_digest(path: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


def write_pilot(paths: list[str], count: int, target: str, *, may_replace: bool) -> int:
    """Write the pilot file (atomically) unless it already holds exactly these lines;
    returns its number of requests. An existing pilot file with other content is replaced
    only when `may_replace` (its job has nothing on the server yet, or --force); else exit 2.
    """
    wanted, written = _digest_of_lines(first_lines(paths, count))
    existing = _file_digest(target)
    if existing == wanted:
        return written
    if existing is not None and not may_replace:
        raise errors.InputError(
            f"the pilot file {target} already holds other requests (another --pilot N or a "
            "changed input) and its pilot job has batches on the server",
            code="job_mismatch",
            hint="add --force to start a new pilot job (the old job file is kept under "
                 "another name), or submit the whole input without --pilot")
    with atomic_open(target, "wb") as f:
        for line in first_lines(paths, count):
            f.write(line)
    return written


def pilot_record(job_path: str, paths: list[str], full_requests: int, pilot_requests: int
                 ) -> dict:
    """What the pilot job remembers about the whole input (for the projection)."""
    return {"inputs": [jobfile.rel_path(job_path, p) for p in paths],
            "full_requests": full_requests, "pilot_requests": pilot_requests}


def record_source(inputs: list[tuple[str, str]], pilot_file: str, count: int) -> None:
    """Beside the pilot file: the whole input's recorded source (dwbatch.provenance) limited
    to its first `count` rows, the pilot's; no record when the whole input has none."""
    found = provenance.for_job(inputs, pilot_file).get("source")
    if found is None:
        provenance.remove(pilot_file)
        return
    provenance.write(pilot_file, "build", [(pilot_file, provenance.sha256_of(pilot_file))],
                     table=dict(found, rows=count))
