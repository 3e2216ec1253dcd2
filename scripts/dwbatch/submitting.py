"""The submit workflow: validate, split, upload, create batches, exactly once.

Why it is built this way: submitting spends money, and the failures that matter happen
between steps (a crash after an upload, an answer lost after the server created a batch, a
re-run of the same command). So:

- every input is validated first with the shared validator; nothing is sent if any line is
  bad (exit 2);
- oversize inputs are split into shards beside the job file, named from the input's hash and
  the limits, so a re-run produces the same shards;
- the job file is written atomically after every step (file uploaded -> id; create about to
  be attempted -> a mark; batch created -> id) and locked for the whole run;
- a re-run skips what is recorded; a shard marked "create attempted" without a batch id is
  first searched for with GET /batches?search=<job_id> (each batch carries job_id and
  shard_index in its metadata), and only created when nothing is found;
- a changed input is refused unless --force, which starts a new job and keeps the old job
  file under another name.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from . import cli, errors, jobfile, limits, models, pilot, provenance
from .client import AmbiguousOutcome, APIError, Client
from .config import resolve_base_url, settings_from_args

COMPLETION_WINDOWS = ("24h", "1h")
DEFAULT_WINDOW = "24h"
PILOT_WINDOW = "1h"
META_JOB_ID = "job_id"
META_SHARD = "shard_index"
RESERVED_METADATA = (META_JOB_ID, META_SHARD)
MAX_USER_METADATA = 14          # the API allows 16 pairs; two are ours
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


@dataclass
class SubmitOptions:
    """What the user asked for (from the command line)."""

    inputs: list[str]
    completion_window: str | None = None     # None: not given (24h, 1h for a pilot, or kept)
    metadata: dict[str, str] | None = None   # None: not given (kept on a re-run)
    job_path: str | None = None
    max_file_bytes: int = limits.MAX_FILE_BYTES
    max_requests: int = limits.MAX_REQUESTS
    dry_run: bool = False
    max_cost: Decimal | None = None
    force: bool = False
    pilot: int | None = None


@dataclass
class ShardPlan:
    """One file to upload: an input as it is, or one piece of a split input."""

    input: str                      # absolute path of the input it comes from
    path: str                       # absolute path of the file to upload
    sha256: str
    requests: int
    bytes: int
    endpoint: str | None
    models: dict[str, int]
    input_tokens_estimate: int
    temp_path: str | None = None    # where the split wrote it, until it is moved into place


@dataclass
class Outcome:
    """What submit did, for the command line to print."""

    job_path: str
    job: dict
    dry_run: bool
    uploaded: int = 0
    uploads_found: int = 0
    created: int = 0
    found: int = 0
    notes: list[str] = field(default_factory=list)
    plan: list[ShardPlan] = field(default_factory=list)
    estimated_cost: Decimal | None = None
    replaced_job: str | None = None


# --------------------------------------------------------------------------- arguments

def parse_metadata(items: list[str] | None) -> dict[str, str]:
    """KEY=VALUE pairs from --metadata, checked against the API's limits."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise errors.InputError(
                f"--metadata {item!r} is not KEY=VALUE",
                hint="write --metadata project=demo (repeat --metadata for more pairs)")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise errors.InputError(f"--metadata {item!r} has an empty key",
                                    hint="write --metadata project=demo")
        if key in RESERVED_METADATA:
            raise errors.InputError(
                f"--metadata key {key!r} is reserved: submit.py sets {META_JOB_ID} and "
                f"{META_SHARD} itself to find its batches again", hint="choose another key")
        if len(key) > MAX_METADATA_KEY or len(value) > MAX_METADATA_VALUE:
            raise errors.InputError(
                f"--metadata {key!r}: keys may have at most {MAX_METADATA_KEY} characters "
                f"and values at most {MAX_METADATA_VALUE}", hint="shorten it")
        out[key] = value
    if len(out) > MAX_USER_METADATA:
        raise errors.InputError(
            f"--metadata: {len(out)} pairs given, at most {MAX_USER_METADATA} are allowed "
            f"(the API takes 16 and submit.py uses two)", hint="drop some pairs")
    return out


def parse_max_cost(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        value = Decimal(str(text).strip().lstrip("$"))
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite() or value < 0:
        raise errors.InputError(f"--max-cost {text!r} is not an amount in USD",
                                hint="write e.g. --max-cost 5 or --max-cost 0.50")
    return value


def check_window(window: str | None) -> str | None:
    """`24h` and `1h` are known; any other value is passed to the server (which says
    whether it allows it), with a note on stderr."""
    if window is None:
        return None
    if not window.strip() or any(c.isspace() or ord(c) < 32 for c in window):
        raise errors.InputError(
            f"--completion-window {window!r} is not a window name",
            code="bad_completion_window",
            hint="24h is the cheapest; 1h is faster and dearer")
    if window not in COMPLETION_WINDOWS:
        sys.stderr.write(f"note: --completion-window {window} is not one of the known "
                         f"windows ({', '.join(COMPLETION_WINDOWS)}); it is passed to the "
                         "server, which decides whether it is allowed\n")
    return window


def check_input_paths(paths: list[str]) -> list[str]:
    """Absolute paths of existing, distinct input files (exit 2 naming the first bad one)."""
    if not paths:
        raise errors.InputError("no input file given",
                                hint="python3 scripts/submit.py prompts.jsonl")
    seen: dict[str, str] = {}
    out = []
    for p in paths:
        if p == "-":
            raise errors.InputError("submit.py needs files, not stdin ('-')",
                                    hint="save the requests to a .jsonl file first")
        if not os.path.exists(p):
            hint = "check the path"
            if "=" in p:
                hint = "to pass metadata write --metadata KEY=VALUE (once per pair)"
            raise errors.InputError(f"input file {p} does not exist", hint=hint)
        if not os.path.isfile(p):
            raise errors.InputError(f"input {p} is not a regular file",
                                    hint="pass .jsonl batch files")
        real = os.path.realpath(p)
        if real in seen:
            raise errors.InputError(f"input {p} is given twice (also as {seen[real]})",
                                    hint="pass each file once")
        seen[real] = p
        out.append(os.path.abspath(p))
    return out


# --------------------------------------------------------------------------- planning

def validate_inputs(paths: list[str], opts: SubmitOptions):
    """The shared validator over every input; InputError (exit 2) listing the problems."""
    from .validate import check_files

    report = check_files(paths, max_file_bytes=opts.max_file_bytes,
                         max_requests=opts.max_requests, split_oversize=True)
    if not report.ok:
        raise errors.InputError(
            "the input has problems, so nothing was sent:\n" + report.render(),
            code="invalid_input",
            hint="fix the lines named above (create_batch_file.py --check FILE lists them "
                 "all), then run the same command again",
            extra={"problems": [p.to_dict() for p in report.problems],
                   "problem_count": report.problem_count})
    return report


def shard_tag(sha256: str, max_file_bytes: int, max_requests: int) -> str:
    """A short name part that changes when the input or the limits change."""
    return hashlib.sha256(f"{sha256}:{max_file_bytes}:{max_requests}".encode()).hexdigest()[:8]


def shard_name(input_path: str, tag: str) -> str:
    """prompts.jsonl, tag -> prompts.<tag>.jsonl; the splitter numbers it prompts.<tag>-001.jsonl"""
    stem, ext = os.path.splitext(os.path.basename(input_path))
    return f"{stem}.{tag}{ext or '.jsonl'}"


def plan_shards(report, opts: SubmitOptions, job_path: str, temp_dir: str | None,
                known: dict[str, list[ShardPlan]] | None = None) -> list[ShardPlan]:
    """One ShardPlan per file to upload. Oversize inputs are split into `temp_dir` (the
    caller moves the pieces beside the job file, or drops them on --dry-run), unless `known`
    already holds that input's uploaded shards (a re-run need not split again)."""
    from .split import split_file

    plan: list[ShardPlan] = []
    job_dir = os.path.dirname(os.path.abspath(job_path))
    for stats in report.files:
        src = os.path.abspath(stats.path)
        if known and stats.needs_split and known.get(src):
            plan.extend(known[src])
            continue
        if not stats.needs_split:
            plan.append(ShardPlan(src, src, stats.sha256, stats.requests, stats.bytes,
                                  stats.endpoint, dict(stats.models),
                                  stats.input_tokens_estimate))
            continue
        tag = shard_tag(stats.sha256, opts.max_file_bytes, opts.max_requests)
        pieces = split_file(src, os.path.join(temp_dir, shard_name(src, tag)),
                            max_file_bytes=opts.max_file_bytes,
                            max_requests=opts.max_requests, numbered=True)
        for piece in pieces:
            # the splitter does not parse lines: share the input's token estimate by size
            tokens = round(stats.input_tokens_estimate * piece.bytes / max(1, stats.bytes))
            plan.append(ShardPlan(src, os.path.join(job_dir, os.path.basename(piece.path)),
                                  piece.sha256, piece.requests, piece.bytes, stats.endpoint,
                                  {}, tokens, temp_path=piece.path))
    return plan


def uploaded_shards(existing: dict | None, job_path: str, base_url: str, report,
                    opts: SubmitOptions) -> dict[str, list[ShardPlan]]:
    """Shards of the existing job that need no new split: same server, same input hash, same
    limits, and every shard of that input already uploaded."""
    if not existing or opts.force or existing["base_url"].rstrip("/") != base_url.rstrip("/"):
        return {}
    if existing.get("limits") != {"max_file_bytes": opts.max_file_bytes,
                                  "max_requests": opts.max_requests}:
        return {}
    recorded = {jobfile.abs_path(job_path, i["path"]): i["sha256"] for i in existing["inputs"]}
    known: dict[str, list[ShardPlan]] = {}
    for stats in report.files:
        src = os.path.abspath(stats.path)
        if recorded.get(src) != stats.sha256:
            continue
        shards = sorted((s for s in existing["shards"]
                         if s.get("input") and jobfile.abs_path(job_path, s["input"]) == src),
                        key=lambda s: s["index"])
        if not shards or not all(s.get("file_id") and s.get("sha256") for s in shards):
            continue
        if not all(_looks_intact(jobfile.abs_path(job_path, s["path"]), s) for s in shards):
            continue  # a shard file was removed or changed: split again to restore it
        known[src] = [ShardPlan(src, jobfile.abs_path(job_path, s["path"]), s["sha256"],
                                s.get("requests") or 0, s.get("bytes") or 0,
                                s.get("endpoint"), s.get("models") or {},
                                s.get("input_tokens_estimate") or 0) for s in shards]
    return known


def _looks_intact(path: str, shard: dict) -> bool:
    try:
        return os.path.getsize(path) == shard.get("bytes")
    except OSError:
        return False


def _needs_splitting(report, known: dict) -> bool:
    return any(s.needs_split and not known.get(os.path.abspath(s.path)) for s in report.files)


def file_digest(path: str) -> dict:
    digest = hashlib.sha256()
    lines = 0
    size = 0
    with open(path, "rb") as f:
        for raw in f:
            digest.update(raw)
            size += len(raw)
            if not raw.isspace():
                lines += 1
    return {"sha256": digest.hexdigest(), "bytes": size, "requests": lines}


def inputs_record(report, job_path: str) -> list[dict]:
    return [{"path": jobfile.rel_path(job_path, s.path), "sha256": s.sha256,
             "requests": s.requests, "bytes": s.bytes, "endpoint": s.endpoint}
            for s in report.files]


def shard_records(plan: list[ShardPlan], job_path: str) -> list[dict]:
    return [{"index": i, "path": jobfile.rel_path(job_path, p.path),
             "input": jobfile.rel_path(job_path, p.input), "sha256": p.sha256,
             "requests": p.requests, "bytes": p.bytes, "endpoint": p.endpoint,
             "models": p.models or None, "input_tokens_estimate": p.input_tokens_estimate,
             "file_id": None, "batch_id": None, "status": None}
            for i, p in enumerate(plan)]


def common_endpoint(plan: list[ShardPlan]) -> str | None:
    endpoints = {p.endpoint for p in plan}
    return endpoints.pop() if len(endpoints) == 1 else None


# --------------------------------------------------------------------------- job reconciliation

def _anything_on_server(job: dict) -> bool:
    return any(s.get("file_id") or s.get("batch_id") or s.get("create_attempted_at")
               for s in job["shards"])


def _any_create(job: dict) -> bool:
    return any(s.get("batch_id") or s.get("create_attempted_at") for s in job["shards"])


def _same_inputs(job: dict, new_inputs: list[dict]) -> str | None:
    """None when the job was made from these inputs; else what differs, in words."""
    old = {i["path"]: i["sha256"] for i in job["inputs"]}
    new = {i["path"]: i["sha256"] for i in new_inputs}
    for path, sha in new.items():
        if path in old and old[path] != sha:
            return (f"input {path} changed since this job was submitted (sha256 "
                    f"{old[path][:12]}… then, {sha[:12]}… now)")
    if set(old) != set(new):
        return (f"this job was submitted for {', '.join(sorted(old))}, not "
                f"{', '.join(sorted(new))}")
    return None


def _same_plan(job: dict, records: list[dict]) -> bool:
    old = [(s["path"], s.get("sha256")) for s in sorted(job["shards"], key=lambda s: s["index"])]
    return old == [(r["path"], r["sha256"]) for r in records]


def _archive_name(job_path: str, job_id: str) -> str:
    directory = os.path.dirname(os.path.abspath(job_path))
    return os.path.join(directory, f"{jobfile.job_stem(job_path)}-{job_id[:8]}"
                                   f"{jobfile.JOB_SUFFIX}")


def reconcile_job(existing: dict | None, job_path: str, base_url: str, opts: SubmitOptions,
                  inputs: list[dict], records: list[dict], endpoint: str | None,
                  outcome: Outcome, *, commit: bool) -> dict:
    """The job to work on: the existing one resumed, re-planned, or a new one.

    Refuses (exit 2) a changed input, another server or a different split once anything is
    on the server, unless --force; then the old job file is kept as PROMPTS-<id8>.job.json.
    `commit` False (dry run) decides without renaming anything.
    """
    limits_rec = {"max_file_bytes": opts.max_file_bytes, "max_requests": opts.max_requests}

    def fresh() -> dict:
        job = jobfile.new_job(base_url=base_url, completion_window=default_window(opts),
                              endpoint=endpoint, metadata=opts.metadata, limits=limits_rec)
        job["inputs"] = inputs
        job["shards"] = [dict(r) for r in records]
        return job

    if existing is None:
        return fresh()
    problem = None
    if existing["base_url"].rstrip("/") != base_url.rstrip("/"):
        problem = (f"this job was submitted to {existing['base_url']}, not {base_url}; its "
                   "file and batch ids belong to that server")
    else:
        problem = _same_inputs(existing, inputs)
    if problem is None and not _same_plan(existing, records) and _any_create(existing):
        problem = ("the inputs now split differently (other --max-file-bytes/--max-requests) "
                   "than the shards already submitted")
    if problem is None and _any_create(existing):
        problem = _create_options_changed(existing, opts)
    if problem is not None and _anything_on_server(existing) and not opts.force:
        raise errors.InputError(
            f"{problem}; job file {job_path} is left as it is",
            code="job_mismatch",
            hint="to submit anyway as a new job, add --force (the old job file is kept under "
                 "another name), or pass --job NEW.job.json; to continue the old job, run "
                 "the original command",
            extra={"job": job_path})
    if problem is not None or opts.force:
        if _anything_on_server(existing) and commit:
            archive = _archive_name(job_path, existing["job_id"])
            os.replace(job_path, archive)
            outcome.replaced_job = archive
            outcome.notes.append(f"the previous job was kept as {archive}")
        elif _anything_on_server(existing):
            outcome.replaced_job = _archive_name(job_path, existing["job_id"])
        return fresh()
    job = existing
    if not _same_plan(job, records):
        # nothing created yet: re-plan, keeping uploads whose shard is unchanged
        uploaded = {(s["path"], s.get("sha256")): s for s in job["shards"] if s.get("file_id")}
        new_shards = []
        for r in records:
            old = uploaded.get((r["path"], r["sha256"]))
            rec = dict(r)
            if old:
                rec["file_id"] = old["file_id"]
                rec["uploaded_at"] = old.get("uploaded_at")
            new_shards.append(rec)
        job["shards"] = new_shards
        job["inputs"] = inputs
        outcome.notes.append("the inputs were split again with the new limits")
    job["limits"] = limits_rec
    job["endpoint"] = endpoint
    if not _any_create(job):  # options that only matter at create may still change
        if opts.completion_window is not None:
            job["completion_window"] = opts.completion_window
        if opts.metadata is not None:
            job["metadata"] = dict(opts.metadata)
    return job


def default_window(opts: SubmitOptions) -> str:
    """The window of a new job: as given, else 1h for a pilot (answers soon), else 24h."""
    if opts.completion_window is not None:
        return opts.completion_window
    return PILOT_WINDOW if opts.pilot else DEFAULT_WINDOW


def _create_options_changed(job: dict, opts: SubmitOptions) -> str | None:
    """What differs in the options sent at create, once a batch of the job exists."""
    window = opts.completion_window
    if window is not None and window != job["completion_window"]:
        return (f"this job's batches were created with --completion-window "
                f"{job['completion_window']}, not {window}")
    if opts.metadata is not None and dict(opts.metadata) != dict(job.get("metadata") or {}):
        shown = ", ".join(f"{k}={v}" for k, v in sorted((job.get("metadata") or {}).items()))
        return (f"this job's batches were created with --metadata {shown or '(none)'}; "
                "metadata cannot change once a batch exists")
    return None


def record_provenance(job: dict, report, job_path: str) -> None:
    """Copy what the inputs' records say (dwbatch.provenance) into the job: the user's
    input behind a built file (`source`, for the table) and the job a retry file came from
    (`origin`, its family)."""
    found = provenance.for_job([(f.path, f.sha256) for f in report.files], job_path)
    for key in ("source", "origin"):
        if key in found:
            job[key] = found[key]


def place_shards(plan: list[ShardPlan], job: dict, job_path: str) -> None:
    """Move freshly split pieces beside the job file when the job still needs them there."""
    by_path = {jobfile.abs_path(job_path, s["path"]): s for s in job["shards"]}
    for p in plan:
        if not p.temp_path:
            continue
        shard = by_path.get(p.path)
        if shard is None:
            continue
        if os.path.exists(p.path) and file_digest(p.path)["sha256"] == p.sha256:
            continue
        if shard.get("file_id") and os.path.exists(p.path):
            continue  # already uploaded; never replace a file the job refers to
        os.replace(p.temp_path, p.path)


# --------------------------------------------------------------------------- network steps

def _save(job_path: str, job: dict) -> None:
    jobfile.save_job(job_path, job)


def _context(exc: errors.DWError, prefix: str, job_path: str, job: dict) -> errors.DWError:
    exc.message = f"{prefix}: {exc.message}"
    exc.extra.setdefault("job", job_path)
    exc.extra.setdefault("batch_ids", jobfile.batch_ids(job))
    return exc


def upload_missing(client: Client, job: dict, job_path: str, outcome: Outcome,
                   progress_factory=None, used_models: dict[str, int] | None = None) -> None:
    """Upload every shard without a file id; record each id as soon as it is known."""
    for shard in sorted(job["shards"], key=lambda s: s["index"]):
        if shard.get("file_id"):
            continue
        upload_one(client, job, job_path, shard, outcome, progress_factory, used_models)


def upload_name(job: dict, shard: dict) -> str:
    """The filename sent with a shard's upload, unique per job and shard, so a lost upload
    answer can be looked up by name: prompts.jsonl -> prompts.<job id 8>-<shard>.jsonl"""
    stem, ext = os.path.splitext(os.path.basename(shard["path"]))
    return f"{stem}.{job['job_id'][:8]}-{shard['index']}{ext or '.jsonl'}"


def find_uploaded(client: Client, shard: dict, outcome: Outcome) -> dict | None:
    """The stored file of this shard (same unique name and size), if a lost upload made it."""
    found = client.find_files(shard["upload_name"], size=shard.get("bytes"))
    if not found:
        return None
    found.sort(key=lambda f: (f.get("created_at") or 0, f.get("id") or ""))
    if len(found) > 1:
        extra = [f["id"] for f in found[1:]]
        outcome.notes.append(f"shard {shard['index']}: {len(found)} stored copies of "
                             f"{shard['upload_name']}; using {found[0]['id']}, the others "
                             f"({', '.join(extra)}) are unused and expire by themselves")
    return found[0]


def upload_one(client: Client, job: dict, job_path: str, shard: dict, outcome: Outcome,
               progress_factory=None, used_models: dict[str, int] | None = None) -> None:
    """Upload one shard; after a lost answer, look the file up by name before sending again."""
    shard.setdefault("upload_name", upload_name(job, shard))
    if shard.get("upload_attempted_at"):
        stored = find_uploaded(client, shard, outcome)
        if stored is not None:
            _record_upload(job_path, job, shard, stored)
            outcome.uploads_found += 1
            return
    path = jobfile.abs_path(job_path, shard["path"])
    attempt = 0
    while True:
        earlier_mark = shard.get("upload_attempted_at")
        shard["upload_attempted_at"] = jobfile.now_iso()
        _save(job_path, job)
        progress = progress_factory(shard, path) if progress_factory else None
        try:
            obj = client.upload_file(path, filename=shard["upload_name"],
                                     expected_sha256=shard.get("sha256"), progress=progress,
                                     idempotent=False)
        except AmbiguousOutcome as exc:
            stored = _look_for_lost_upload(client, shard, outcome, exc)
            if stored is not None:
                _record_upload(job_path, job, shard, stored)
                outcome.uploads_found += 1
                return
            if attempt >= client.policy.max_retries:
                raise _context(exc, f"uploading {shard['path']}", job_path, job) from None
            attempt += 1
            continue
        except APIError as exc:
            _restore_mark(shard, "upload_attempted_at", earlier_mark)
            _save(job_path, job)
            raise _upload_error(exc, shard, path, job, job_path, client, used_models) \
                from None
        finally:
            if progress is not None and hasattr(progress, "done"):
                progress.done()
        _record_upload(job_path, job, shard, obj)
        outcome.uploaded += 1
        return


def _record_upload(job_path: str, job: dict, shard: dict, stored: dict) -> None:
    shard["file_id"] = stored.get("id")
    shard["uploaded_at"] = jobfile.now_iso()
    _save(job_path, job)


def _look_for_lost_upload(client: Client, shard: dict, outcome: Outcome,
                          exc: AmbiguousOutcome) -> dict | None:
    return _look_again(client, f"{exc.message}; looking for the file by its name "
                               f"({shard['upload_name']}) before uploading again",
                       lambda: find_uploaded(client, shard, outcome))


def _upload_error(exc: APIError, shard: dict, path: str, job: dict, job_path: str,
                  client: Client | None = None, used_models: dict[str, int] | None = None
                  ) -> errors.DWError:
    name = shard["path"]
    model = models.refused_model(exc)
    if model is not None:
        available = models.fetch_available(client) if client is not None else None
        count = (used_models or {}).get(model) or (shard.get("models") or {}).get(model)
        return models.not_available_error(
            model, count, available, uploaded_nothing=False,
            refused=f"uploading {name} ({exc.status} {exc.server_message})",
            extra={"job": job_path, "http_status": exc.status,
                   "server_message": exc.server_message})
    if exc.status == 413:
        limit = _limit_from_message(exc.server_message)
        suggest = limit if limit else max(1, (shard.get("bytes") or 2) // 2)
        return errors.InputError(
            f"the server refused {name} ({shard.get('bytes', 0):,} bytes) as too large: "
            f"{exc.server_message or '413'}",
            code="file_too_large",
            hint=f"re-run the same command with --max-file-bytes {suggest}: submit.py splits "
                 "the input into smaller shards and uploads nothing twice",
            extra={"job": job_path, "max_file_bytes": suggest, "http_status": 413})
    return _context(exc, f"uploading {name}", job_path, job)


def _limit_from_message(text: str) -> int | None:
    import re

    m = re.search(r"(\d[\d,_]*)\s*bytes", text or "")
    if not m:
        return None
    try:
        return int(m.group(1).replace(",", "").replace("_", ""))
    except ValueError:
        return None


def check_cost(client: Client, job: dict, job_path: str, cap: Decimal, outcome: Outcome
               ) -> None:
    """Ask the server's estimate for every shard; refuse (exit 2) when the total passes `cap`."""
    window = job["completion_window"]
    total = Decimal(0)
    for shard in sorted(job["shards"], key=lambda s: s["index"]):
        cached = shard.get("cost_estimate") or {}
        if cached.get("completion_window") == window and cached.get("file_id") == \
                shard["file_id"] and cached.get("total_estimated_cost") is not None:
            value = cached["total_estimated_cost"]
        else:
            try:
                est = client.cost_estimate(shard["file_id"], window)
            except APIError as exc:
                if exc.status in (404, 405, 501):
                    raise errors.InputError(
                        f"the server gave no cost estimate for {shard['path']} "
                        f"({exc.server_message or exc.status}), so --max-cost cannot be "
                        "checked; no batch was created",
                        code="no_cost_estimate",
                        hint="re-run without --max-cost to submit anyway (nothing is "
                             "uploaded twice)",
                        extra={"job": job_path}) from None
                raise _context(exc, f"estimating the cost of {shard['path']}", job_path,
                               job) from None
            value = str(est.get("total_estimated_cost", "0"))
            shard["cost_estimate"] = {
                "completion_window": window, "file_id": shard["file_id"],
                "total_estimated_cost": value,
                "total_estimated_input_tokens": est.get("total_estimated_input_tokens"),
                "total_estimated_output_tokens": est.get("total_estimated_output_tokens")}
            _save(job_path, job)
        try:
            total += Decimal(str(value))
        except InvalidOperation:
            raise errors.DWError(
                f"the server's cost estimate for {shard['path']} is not a number: {value!r}",
                code="bad_response", exit_code=errors.UNAVAILABLE,
                hint="re-run without --max-cost, or later") from None
    outcome.estimated_cost = total
    if total > cap:
        pending = [s for s in job["shards"] if not s.get("batch_id")]
        ids = ", ".join(s["file_id"] for s in pending)
        raise errors.InputError(
            f"the estimated cost ${total} ({window} window) is over --max-cost ${cap}, so no "
            f"batch was created. The files are uploaded ({ids}) and recorded in {job_path}",
            code="over_max_cost",
            hint="raise --max-cost, use --completion-window 24h (cheaper) or fewer requests; "
                 "re-running the same command uploads nothing again",
            extra={"job": job_path, "estimated_cost": str(total), "max_cost": str(cap),
                   "uploaded_file_ids": [s["file_id"] for s in pending]})


def _batch_metadata(job: dict, shard: dict) -> dict[str, str]:
    meta = {str(k): str(v) for k, v in (job.get("metadata") or {}).items()}
    meta[META_JOB_ID] = job["job_id"]
    meta[META_SHARD] = str(shard["index"])
    return meta


def _record_batch(shard: dict, batch: dict) -> None:
    shard["batch_id"] = batch.get("id")
    shard["status"] = batch.get("status")
    shard["batch_created_at"] = jobfile.now_iso()
    if batch.get("request_counts") is not None:
        shard["request_counts"] = batch.get("request_counts")
    for key in ("output_file_id", "error_file_id", "expires_at"):
        if batch.get(key) is not None:
            shard[key] = batch.get(key)


def find_existing_batch(client: Client, job: dict, shard: dict, outcome: Outcome
                        ) -> dict | None:
    """The batch of this job and shard on the server, if a lost create did make one."""
    found = client.find_batches_by_metadata(
        job["job_id"], {META_JOB_ID: job["job_id"], META_SHARD: str(shard["index"])})
    if shard.get("file_id"):
        same_file = [b for b in found if b.get("input_file_id") in (None, shard["file_id"])]
        found = same_file or found
    if not found:
        return None
    found.sort(key=lambda b: (b.get("created_at") or 0, b.get("id") or ""))
    if len(found) > 1:
        extra = [b["id"] for b in found[1:]]
        shard["duplicate_batch_ids"] = extra
        outcome.notes.append(
            f"shard {shard['index']}: more than one batch carries this job's metadata; using "
            f"{found[0]['id']}, the others ({', '.join(extra)}) can be cancelled with "
            "batches.py cancel ID")
    return found[0]


def create_missing(client: Client, job: dict, job_path: str, outcome: Outcome) -> None:
    """Create a batch for every shard that has none, exactly once each."""
    for shard in sorted(job["shards"], key=lambda s: s["index"]):
        if shard.get("batch_id"):
            continue
        where = f"creating the batch for {shard['path']}"
        try:
            create_one(client, job, job_path, shard, outcome)
        except APIError as exc:
            if _window_refused(exc):
                raise errors.InputError(
                    f"{where}: the server refused --completion-window "
                    f"{job['completion_window']}: {exc.server_message}",
                    code="bad_completion_window",
                    hint="re-run the same command with --completion-window set to one of the "
                         "values the server names (no batch exists yet, so the window may "
                         "change; the files are uploaded and recorded, nothing is uploaded "
                         "twice)",
                    extra={"job": job_path, "completion_window": job["completion_window"],
                           "http_status": exc.status}) from None
            if exc.exit_code == errors.AUTH:
                exc.hint = (exc.hint or "") + ("; the uploaded files are recorded in the job "
                                               "file, so re-running uploads nothing twice")
            raise _context(exc, where, job_path, job) from None


def create_one(client: Client, job: dict, job_path: str, shard: dict, outcome: Outcome) -> None:
    """Create one shard's batch; after a lost answer, look it up before creating again."""
    if shard.get("create_attempted_at"):
        batch = find_existing_batch(client, job, shard, outcome)
        if batch is not None:
            _record_batch(shard, batch)
            _save(job_path, job)
            outcome.found += 1
            return
    attempt = 0
    while True:
        earlier_mark = shard.get("create_attempted_at")
        shard["create_attempted_at"] = jobfile.now_iso()
        shard["create_attempts"] = int(shard.get("create_attempts") or 0) + 1
        _save(job_path, job)
        try:
            batch = client.create_batch(shard["file_id"], shard["endpoint"] or job["endpoint"],
                                        job["completion_window"], _batch_metadata(job, shard))
        except AmbiguousOutcome as exc:
            batch = _look_for_lost_batch(client, job, shard, outcome, exc)
            if batch is not None:
                _record_batch(shard, batch)
                _save(job_path, job)
                outcome.found += 1
                return
            if attempt >= client.policy.max_retries:
                raise
            attempt += 1
            continue
        except APIError:
            # a definite refusal (a 4xx, or 429/503 retried to the end): no batch was made,
            # so this attempt does not count as one (create-only options may still change)
            _restore_mark(shard, "create_attempted_at", earlier_mark)
            _save(job_path, job)
            raise
        _record_batch(shard, batch)
        _save(job_path, job)
        outcome.created += 1
        return


def _restore_mark(shard: dict, key: str, earlier: str | None) -> None:
    if earlier is None:
        shard.pop(key, None)
    else:
        shard[key] = earlier


def _window_refused(exc: APIError) -> bool:
    """A 400 about the completion window (`Unsupported completion_window...` or
    `Model 'm' does not support completion window 'w'...`)."""
    words = (exc.server_message or "").lower()
    return exc.status == 400 and ("completion_window" in words or "completion window" in words)


# An upload or create whose answer was lost may still be in progress on a slow server (a read
# timeout): look again after these pauses before sending it a second time.
LOOKUP_PAUSES = (0.0, 2.0, 5.0)


def _look_again(client: Client, note: str, find) -> dict | None:
    """What `find()` finds within LOOKUP_PAUSES, else None; `note` says why we look."""
    if client.on_retry:
        client.on_retry(note)
    for pause in LOOKUP_PAUSES:
        if pause:
            client.sleep(pause)
        found = find()
        if found is not None:
            return found
    return None


def _look_for_lost_batch(client: Client, job: dict, shard: dict, outcome: Outcome,
                         exc: AmbiguousOutcome) -> dict | None:
    return _look_again(client, f"{exc.message}; looking for the batch by its metadata "
                               f"(job_id {job['job_id']}, shard_index {shard['index']})",
                       lambda: find_existing_batch(client, job, shard, outcome))


# --------------------------------------------------------------------------- the workflow

def submit(opts: SubmitOptions, args, *, progress_factory=None,
           client_factory=None) -> Outcome:
    """Run the whole submit; returns the Outcome or raises DWError with the right exit code.

    `args` are the parsed network flags (--base-url, --max-retries, --request-timeout).
    """
    check_window(opts.completion_window)
    paths = check_input_paths(opts.inputs)
    base_url = resolve_base_url(getattr(args, "base_url", None))
    settings = None
    if not opts.dry_run:
        settings = settings_from_args(args)  # exit 6 now, before any work, without a key
    first_input = opts.inputs[0]
    pilot_info = None
    dry_dir = None
    try:
        if opts.pilot is not None:
            first_input = pilot.pilot_path(opts.inputs[0])
            if opts.dry_run:
                dry_dir = tempfile.mkdtemp(prefix="dwbatch-pilot-")
            paths, pilot_info = _make_pilot(paths, opts, first_input, dry_dir)
        return _submit(opts, args, paths, first_input, base_url, settings, pilot_info,
                       progress_factory, client_factory)
    finally:
        if dry_dir:
            shutil.rmtree(dry_dir, ignore_errors=True)


def _make_pilot(paths: list[str], opts: SubmitOptions, target: str, dry_dir: str | None
                ) -> tuple[list[str], dict]:
    """Validate the whole input, then write its first N requests as the pilot file."""
    full = validate_inputs(paths, opts)
    full_requests = sum(s.requests for s in full.files)
    job_path = opts.job_path or jobfile.default_job_path(target)
    existing = jobfile.load_job(job_path) if os.path.exists(job_path) else None
    may_replace = opts.force or existing is None or not _anything_on_server(existing)
    where = os.path.join(dry_dir, os.path.basename(target)) if dry_dir else target
    count = pilot.write_pilot(paths, opts.pilot, where, may_replace=may_replace)
    if dry_dir is None:
        pilot.record_source([(f.path, f.sha256) for f in full.files], where, count)
    return [os.path.abspath(where)], {"paths": paths, "full_requests": full_requests,
                                      "pilot_requests": count}


def _submit(opts: SubmitOptions, args, paths: list[str], first_input: str, base_url: str,
            settings, pilot_info: dict | None, progress_factory, client_factory) -> Outcome:
    report = validate_inputs(paths, opts)
    job_path = opts.job_path or jobfile.default_job_path(first_input)
    if os.path.isdir(job_path):
        raise errors.InputError(f"--job {job_path} is a folder",
                                hint="pass a file name such as prompts.job.json")
    job_dir = os.path.dirname(os.path.abspath(job_path))
    if not os.path.isdir(job_dir):
        raise errors.InputError(f"the folder of the job file {job_path} does not exist",
                                hint="create it, or choose another --job path")
    if opts.dry_run:
        outcome = _dry_run(report, opts, job_path, base_url)
        if pilot_info is not None:
            outcome.job["pilot"] = {k: pilot_info[k] for k in ("full_requests",
                                                               "pilot_requests")}
            outcome.notes.append(f"the pilot file would be {first_input} (the first "
                                 f"{pilot_info['pilot_requests']:,} of "
                                 f"{pilot_info['full_requests']:,} requests)")
        return outcome
    temp_dir = None
    outcome = Outcome(job_path=job_path, job={}, dry_run=False)
    try:
        with jobfile.job_lock(job_path):
            existing = jobfile.load_job(job_path) if os.path.exists(job_path) else None
            known = uploaded_shards(existing, job_path, base_url, report, opts)
            if _needs_splitting(report, known):
                temp_dir = tempfile.mkdtemp(prefix=".split-", dir=job_dir)
            plan = plan_shards(report, opts, job_path, temp_dir, known)
            outcome.plan = plan
            records = shard_records(plan, job_path)
            inputs = inputs_record(report, job_path)
            job = reconcile_job(existing, job_path, base_url, opts, inputs, records,
                                common_endpoint(plan), outcome, commit=True)
            outcome.job = job
            if pilot_info is not None:
                job["pilot"] = pilot.pilot_record(job_path, pilot_info["paths"],
                                                  pilot_info["full_requests"],
                                                  pilot_info["pilot_requests"])
            record_provenance(job, report, job_path)
            place_shards(plan, job, job_path)
            _save(job_path, job)
            client = (client_factory or Client)(settings)
            try:
                used = models_used(report)
                if any(not s.get("file_id") for s in job["shards"]):
                    models.check_models(client, used)
                upload_missing(client, job, job_path, outcome, progress_factory, used)
                if opts.max_cost is not None:
                    check_cost(client, job, job_path, opts.max_cost, outcome)
                create_missing(client, job, job_path, outcome)
            finally:
                client.close()
            if all(s.get("batch_id") for s in job["shards"]) and not job.get("submitted_at"):
                job["submitted_at"] = jobfile.now_iso()
                _save(job_path, job)
    finally:
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
    return outcome


def models_used(report) -> dict[str, int]:
    """model -> number of requests using it, over every input file."""
    used: dict[str, int] = {}
    for stats in report.files:
        for model, count in (stats.models or {}).items():
            used[model] = used.get(model, 0) + count
    return used


def _dry_run(report, opts: SubmitOptions, job_path: str, base_url: str) -> Outcome:
    """Validate, split, count and estimate, writing nothing and sending nothing."""
    outcome = Outcome(job_path=job_path, job={}, dry_run=True)
    existing = jobfile.load_job(job_path) if os.path.exists(job_path) else None
    known = uploaded_shards(existing, job_path, base_url, report, opts)
    temp_dir = tempfile.mkdtemp(prefix="dwbatch-dry-") if _needs_splitting(report, known) \
        else None
    try:
        plan = plan_shards(report, opts, job_path, temp_dir, known)
    finally:
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
    outcome.plan = plan
    records = shard_records(plan, job_path)
    inputs = inputs_record(report, job_path)
    job = reconcile_job(existing, job_path, base_url, opts, inputs, records,
                        common_endpoint(plan), outcome, commit=False)
    if job is not existing:
        # a new job's id is made when it is really submitted: one shown now would not be it
        job["job_id"] = None
    outcome.job = job
    return outcome


# --------------------------------------------------------------------------- progress

class UploadProgress:
    """A one-line progress bar on stderr (only when stderr is a terminal)."""

    def __init__(self, label: str, stream=None, min_interval: float = 0.2) -> None:
        self.label = label
        self.line = cli.TerminalLine(stream)
        self.min_interval = min_interval
        self.last = 0.0

    def __call__(self, sent: int, total: int) -> None:
        now = time.monotonic()
        if sent < total and now - self.last < self.min_interval:
            return
        self.last = now
        pct = 100.0 * sent / total if total else 100.0
        width = 30
        filled = int(width * pct / 100)
        bar = "#" * filled + "-" * (width - filled)
        self.line.show(f"uploading {self.label} [{bar}] {pct:5.1f}% "
                       f"({sent / 1e6:.1f}/{total / 1e6:.1f} MB)")

    def done(self) -> None:
        self.line.finish()


def terminal_progress_factory(stream=None):
    """A progress_factory for submit(): bars only when stderr is a terminal, else None."""
    stream = stream or sys.stderr
    if not stream.isatty():
        return None

    def factory(shard: dict, path: str) -> UploadProgress:
        return UploadProgress(os.path.basename(path), stream)

    return factory
