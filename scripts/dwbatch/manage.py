"""What batches.py does: list, get, cancel, retry and delete batches, in plain words.

Each action returns a cli.Result. Where the server says no (nothing to retry, not found,
an extension this server lacks), the error says so in words and names the next step.
Cancel and retry of a job act on its batches and record the new state in the job file.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone

from . import cli, client, errors, jobfile, polling, shapes, status

DEFAULT_LIST_LIMIT = 20


# --- targets ---------------------------------------------------------------------------

def batch_ids_of(arg: str) -> tuple[str | None, list[str]]:
    """(job path or None, batch ids) for an argument that is a job file or a batch id."""
    if polling.looks_like_job_file(arg):
        job = jobfile.load_job(arg)
        ids = jobfile.batch_ids(job)
        if not ids:
            raise errors.InputError(
                f"job file {arg} records no batch yet (the submission did not create one)",
                hint="re-run the same submit.py command to finish submitting",
                code="not_submitted")
        return arg, ids
    if arg.lower().endswith(".json"):
        raise errors.InputError(f"{arg}: no such job file", code="no_such_job_file",
                                hint="check the path, or pass a batch id (batches.py list)")
    _check_id(arg)
    return None, [arg]


def _check_id(arg: str) -> None:
    if os.path.isfile(arg):
        raise errors.InputError(f"{arg} is a file, not a batch id or job file (*.json)",
                                hint="pass the job file submit.py wrote, or a batch id")
    if not shapes.is_id(arg):
        raise errors.InputError(f"{arg!r} is not a batch id ({shapes.id_problem(arg)})",
                                hint="batch ids look like 3fa85f64-5717-4562-b3fc-2c963f66afa6:"
                                     " python3 scripts/batches.py list shows them")


def _when(ts) -> str:
    if ts is None:
        return "-"
    try:
        return datetime.fromtimestamp(float(ts), timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(ts)


def _counts_text(batch: dict) -> str:
    c = status.request_counts(batch)
    return f"{c['completed'] + c['failed']}/{c['total']} done, {c['failed']} failed"


# --- list ------------------------------------------------------------------------------

def list_batches(api: client.Client, *, status_filter: str | None, limit: int | None,
                 all_pages: bool, after: str | None, search: str | None) -> cli.Result:
    """GET /batches page by page (the server gives at most 101 per page)."""
    want = None if all_pages else (limit or DEFAULT_LIST_LIMIT)
    # One more than wanted tells whether more exist, without a separate call.
    found = list(api.iter_batches(search=search, status=status_filter, after=after,
                                  max_items=None if want is None else want + 1))
    has_more = want is not None and len(found) > want
    shown = found[:want] if want is not None else found
    rows = [dict(b, state=status.state_of(b)) for b in shown]
    lines = [f"{b.get('id')}  {status.state_of(b):<26} {_counts_text(b):<28} "
             f"created {_when(b.get('created_at'))}  {b.get('endpoint') or ''}"
             for b in shown]
    where = f" with status {status_filter}" if status_filter else ""
    lines.append(f"{len(shown)} batch{'es' if len(shown) != 1 else ''}{where}"
                 + (" (more exist)" if has_more else ""))
    next_cmd = None
    if has_more and shown:
        extra = ["--after", shown[-1]["id"]]
        if status_filter:
            extra += ["--status", status_filter]
        if search:
            extra += ["--search", search]
        next_cmd = cli.script_command("batches.py", "list", *extra, "--limit", str(want),
                                      "--json")
    fields = {"batches": rows, "count": len(shown), "has_more": has_more,
              "last_id": shown[-1]["id"] if shown else None}
    return cli.Result(fields, "\n".join(lines), errors.OK, next_cmd)


# --- get -------------------------------------------------------------------------------

def get_batch(api: client.Client, batch_id: str) -> cli.Result:
    _check_id(batch_id)
    batch = api.get_batch(batch_id)
    view = status.batch_view(batch, None, time.time())
    lines = [status.render_batch_line(view)]
    lines += [f"  note: {n}" for n in view["notes"]]
    for key in ("endpoint", "completion_window", "input_file_id", "output_file_id",
                "error_file_id"):
        lines.append(f"  {key}: {batch.get(key) or '-'}")
    for key in ("created_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at",
                "cancelling_at", "cancelled_at", "expires_at", "expired_at"):
        if batch.get(key) is not None:
            lines.append(f"  {key}: {_when(batch[key])}")
    if batch.get("metadata"):
        meta = ", ".join(f"{k}={v}" for k, v in sorted(batch["metadata"].items()))
        lines.append(f"  metadata: {meta}")
    fields = {"batch": batch, "state": view["state"], "outcome": view["outcome"],
              "notes": view["notes"]}
    return cli.Result(fields, "\n".join(lines), errors.OK,
                      cli.script_command("poll.py", batch_id, "--json"))


# --- cancel ------------------------------------------------------------------------------

FINISHED_NOTE = ("the service's cancel has no state check: cancelling a finished batch "
                 "would mark it `cancelled` for good, so it is never sent")


def finished_reason(batch: dict) -> str | None:
    """Why cancelling this batch would do nothing but harm, or None when it is running.

    Finished: terminal, `finalizing`, or every request done (about to finalize)."""
    state = batch.get("status")
    if state in ("cancelled", "cancelling"):
        return f"already {state}: nothing to cancel"
    counts = status.request_counts(batch)
    done = counts["total"] > 0 and counts["completed"] + counts["failed"] >= counts["total"]
    if status.is_terminal(batch) or state == "finalizing" or done:
        return f"already finished ({state}, {_counts_text(batch)}): nothing to cancel"
    return None


def cancel(api: client.Client, arg: str) -> cli.Result:
    """Cancel a batch, or every unfinished batch of a job. Finished ones are never sent a
    cancel (the service would mark them cancelled for good)."""
    job_path, ids = batch_ids_of(arg)
    results, after = [], {}
    for batch_id in ids:
        before = api.get_batch(batch_id)
        reason = finished_reason(before)
        if reason is not None:
            if job_path is None:
                raise errors.InputError(
                    f"batch {batch_id} is {reason}; no cancel was sent ({FINISHED_NOTE})",
                    code="already_finished",
                    hint="read its results with fetch_results.py; to stop a running job, "
                         "cancel its job file",
                    next=cli.script_command("poll.py", batch_id, "--json"),
                    extra={"batch_id": batch_id, "status": before.get("status")})
            results.append({"batch_id": batch_id, "action": "skipped",
                            "status": before.get("status"), "reason": reason})
            after[batch_id] = before
            continue
        batch = api.cancel_batch(batch_id) or api.get_batch(batch_id)
        after[batch_id] = batch
        entry = {"batch_id": batch_id, "action": "cancel_requested",
                 "status": batch.get("status"), "request_counts": status.request_counts(batch)}
        if status.cancelled_while_validating(batch) or before.get("status") == "validating":
            entry["note"] = ("cancelled while validating: the server can leave it 'cancelling'"
                             " indefinitely; poll.py reports it as cancelled")
        results.append(entry)
    if job_path:
        polling.record_in_job_file(job_path, after, time.time())
    cancelled = [r for r in results if r["action"] == "cancel_requested"]
    lines = []
    for r in results:
        if r["action"] == "skipped":
            lines.append(f"{r['batch_id']}: {r['reason']}")
        else:
            lines.append(f"{r['batch_id']}: cancel requested, now {r['status']} "
                         f"({_counts_text({'request_counts': r['request_counts']})})")
            if r.get("note"):
                lines.append(f"  note: {r['note']}")
    if cancelled:
        lines.append(f"{len(cancelled)} batch(es) cancelling: requests already finished keep "
                     "their results; cancelled ones appear in neither output nor error file. "
                     "`batches.py retry` can revive cancelled requests in the same batch")
        next_cmd = cli.script_command("fetch_results.py", arg, "--json")
    else:
        lines.append("nothing to cancel: every batch had already ended (no cancel was sent: "
                     f"{FINISHED_NOTE})")
        next_cmd = cli.script_command("poll.py", arg, "--json")
    fields = {"target": arg, "job_file": job_path, "results": results,
              "cancelled": len(cancelled)}
    return cli.Result(fields, "\n".join(lines), errors.OK, next_cmd)


# --- retry -------------------------------------------------------------------------------

RETRY_EXPLAINED = ("retry reuses the same batch (same id, no new batch): its failed and "
                   "cancelled requests go back to pending and run again; requests that "
                   "already succeeded are kept")


def _worth_retrying(batch: dict) -> bool:
    return status.request_counts(batch)["failed"] > 0 or \
        batch.get("status") in ("cancelled", "cancelling", "failed", "expired")


def retry(api: client.Client, arg: str) -> cli.Result:
    """The server's in-place retry of failed and cancelled requests, per batch."""
    job_path, ids = batch_ids_of(arg)
    results, after = [], {}
    for batch_id in ids:
        before = api.get_batch(batch_id)
        if job_path and not _worth_retrying(before):
            results.append({"batch_id": batch_id, "action": "skipped",
                            "status": before.get("status"),
                            "reason": "no failed or cancelled requests"})
            continue
        try:
            batch = api.retry_batch(batch_id) or api.get_batch(batch_id)
        except client.APIError as exc:
            if exc.status == 400:
                results.append({"batch_id": batch_id, "action": "refused",
                                "status": before.get("status"),
                                "reason": f"the server says: {exc.server_message or exc}"})
                continue
            if exc.status in (404, 405, 501):
                raise errors.DWError(
                    f"batch {batch_id}: this server has no in-place retry (POST "
                    f"/batches/{batch_id}/retry answered {exc.status}: "
                    f"{exc.server_message or 'no message'}); it is a Doubleword extension",
                    code="retry_unsupported", exit_code=errors.INVALID_INPUT,
                    hint="fetch the results: fetch_results.py writes a retry file of the "
                         "failed requests, then submit it with submit.py",
                    next=cli.script_command("fetch_results.py", arg, "--json")) from None
            raise
        after[batch_id] = batch
        b_counts = status.request_counts(before)
        a_counts = status.request_counts(batch)
        results.append({"batch_id": batch_id, "action": "retried",
                        "status_before": before.get("status"), "status": batch.get("status"),
                        "request_counts_before": b_counts, "request_counts": a_counts,
                        "requeued": max(0, (b_counts["completed"] + b_counts["failed"])
                                        - (a_counts["completed"] + a_counts["failed"]))})
    if job_path and after:
        polling.record_in_job_file(job_path, after, time.time())
    retried = [r for r in results if r["action"] == "retried"]
    fields = {"target": arg, "job_file": job_path, "results": results,
              "retried": len(retried), "explanation": RETRY_EXPLAINED}
    if not retried:
        if job_path:
            reasons = "; ".join(f"batch {r['batch_id']}: {r['reason']}" for r in results)
            message = f"nothing to retry in job {job_path}: {reasons}"
        else:
            message = f"nothing to retry in batch {arg}: {results[0]['reason']}"
        raise errors.DWError(
            message,
            code="nothing_to_retry", exit_code=errors.INVALID_INPUT,
            hint="retry only re-runs failed or cancelled requests; check the batch with "
                 "poll.py, or fetch its results", extra=fields,
            next=cli.script_command("poll.py", arg, "--json"))
    lines = []
    for r in results:
        if r["action"] == "retried":
            lines.append(f"{r['batch_id']}: retried in place; {r['status_before']} -> "
                         f"{r['status']}, {r['requeued']} request(s) back to pending "
                         f"(now {_counts_text({'request_counts': r['request_counts']})})")
        else:
            lines.append(f"{r['batch_id']}: not retried ({r['reason']})")
    lines.append(RETRY_EXPLAINED + ". Poll the same batch again; once it ends, run "
                 "fetch_results.py again")
    return cli.Result(fields, "\n".join(lines), errors.OK,
                      cli.script_command("poll.py", arg, "--json"))


# --- models ------------------------------------------------------------------------------

def list_models(api: client.Client) -> cli.Result:
    """GET /models: the models this key may use, for --model in create_batch_file.py."""
    try:
        found = api.list_models()
    except client.APIError as exc:
        if exc.status in (404, 405, 501):
            raise errors.DWError(
                f"this server has no model list (GET /models answered {exc.status}: "
                f"{exc.server_message or 'no message'})",
                code="models_unsupported", exit_code=errors.INVALID_INPUT,
                hint="ask the server's operator which model names it serves; a wrong name is "
                     "refused when submit.py uploads the file") from None
        raise
    rows = [{"id": m["id"], "owned_by": m.get("owned_by")} for m in found]
    rows.sort(key=lambda m: m["id"].lower())
    lines = [f"{m['id']}" + (f"  (owned by {m['owned_by']})" if m.get("owned_by") else "")
             for m in rows]
    lines.append(f"{len(rows)} model{'s' if len(rows) != 1 else ''} this key may use; pass "
                 "one to create_batch_file.py --model NAME (embedding models with "
                 "--endpoint embeddings)")
    return cli.Result({"models": rows, "count": len(rows)}, "\n".join(lines), errors.OK, None)


# --- delete ------------------------------------------------------------------------------

def delete(api: client.Client, batch_id: str) -> cli.Result:
    if polling.looks_like_job_file(batch_id):
        raise errors.InputError(
            f"delete takes a batch id, not a job file ({batch_id})",
            hint="to stop a whole job use: batches.py cancel JOB; to delete, pass each batch "
                 "id (poll.py JOB lists them)")
    _check_id(batch_id)
    api.delete_batch(batch_id)
    text = (f"{batch_id}: deleted (a soft delete: it no longer shows in lists; if it was "
            "still running it was cancelled first)")
    return cli.Result({"batch_id": batch_id, "deleted": True}, text, errors.OK,
                      cli.script_command("batches.py", "list", "--json"))
