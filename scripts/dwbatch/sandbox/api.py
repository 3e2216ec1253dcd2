"""The /v1 routes: files, batches, content, results, analytics, cost estimates.

Each route takes a Request (the parsed call) and returns a Response or raises ApiError with
the real server's status and words. Objects leave out fields whose value is null.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from decimal import Decimal

from . import multipart
from .content import content_response, int_param
from .engine import IN_FLIGHT, Engine, price_per_token
from .httpio import NDJSON, ApiError, BodyReader, Response, json_response
from .options import ALLOWED_URLS, MULTIPART_OVERHEAD, Options
from .store import Batch, FileRecord, Store, request_uuid
from .upload_rules import UploadRejected, validate_file

DEFAULT_LIST_LIMIT = 20
MAX_LIST_LIMIT = 101
MAX_JSON_BODY = 1 << 20
DOUBLEWORD_ONLY = ("retry", "retry-requests", "results", "analytics", "cost-estimate")


@dataclass
class Request:
    method: str
    path: str
    query: dict
    headers: object  # http.client.HTTPMessage
    body: BodyReader
    store: Store
    engine: Engine
    options: Options


# --- objects -------------------------------------------------------------------------------
def file_object(rec: FileRecord) -> dict:
    obj = {"id": rec.id, "object": "file", "bytes": rec.bytes, "created_at": rec.created_at,
           "filename": rec.filename, "purpose": rec.purpose}  # the real File has no status
    if rec.expires_at is not None:
        obj["expires_at"] = rec.expires_at
    return obj


def batch_object(store: Store, batch: Batch) -> dict:
    obj = {"id": batch.id, "object": "batch", "endpoint": batch.endpoint,
           "input_file_id": batch.input_file_id, "completion_window": batch.completion_window,
           "status": batch.status}
    source = store.files.get(batch.input_file_id)
    if source is not None and source.deleted:
        del obj["input_file_id"]  # deleting a file unlinks it from its batches (SET NULL)
    if not store.options.openai_compat:
        obj["output_file_id"] = batch.output.id
        obj["error_file_id"] = batch.errors.id
    elif batch.terminal:
        for key, rec in (("output_file_id", batch.output), ("error_file_id", batch.errors)):
            if store.file_visible(rec):
                obj[key] = rec.id
    obj["created_at"] = batch.created_at
    for key in ("in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at",
                "expired_at", "cancelling_at", "cancelled_at"):
        value = batch.expires_at if key == "expires_at" else batch.times.get(key)
        if value is not None:
            obj[key] = value
    obj["request_counts"] = {"total": batch.total, "completed": batch.completed,
                             "failed": batch.failed}
    obj["metadata"] = dict(batch.metadata)
    return obj


def list_object(items: list, after: str | None, limit: int, render) -> dict:
    """A page of `items` (already ordered) after the cursor id, OpenAI list shape."""
    start = 0
    if after:
        ids = [item.id for item in items]
        start = ids.index(after) + 1 if after in ids else len(items)
    page = items[start:start + limit]
    out = {"object": "list", "data": [render(item) for item in page],
           "has_more": start + limit < len(items)}
    if page:
        out["first_id"] = page[0].id
        out["last_id"] = page[-1].id
    return out


def _limit(query: dict) -> int:
    value = int_param(query, "limit", DEFAULT_LIST_LIMIT)
    return max(1, min(value, MAX_LIST_LIMIT))


def _param(query: dict, name: str) -> str | None:
    values = query.get(name)
    return values[0] if values and values[0] != "" else None


def _compat_404(req: Request) -> None:
    raise ApiError(404, f"Not Found: {req.path} is a Doubleword extension that stock "
                        "OpenAI-compatible servers do not have (sandbox runs --openai-compat)")


# --- files ---------------------------------------------------------------------------------
def upload_file(req: Request) -> Response:
    opts = req.options
    length = req.headers.get("Content-Length")
    if length and length.isdigit() and opts.max_file_bytes and \
            int(length) > opts.max_file_bytes + MULTIPART_OVERHEAD:
        raise ApiError(413, f"File exceeds the maximum allowed size of {opts.max_file_bytes} "
                            "bytes")
    try:
        boundary = multipart.boundary_of(req.headers.get("Content-Type"))
    except multipart.MultipartError as exc:
        raise ApiError(400, f"Invalid multipart request: {exc}") from None
    temp = req.store.temp_path()
    try:
        with open(temp, "wb") as sink:
            try:
                parts = multipart.parse(req.body, boundary, sink, opts.max_file_bytes)
            except multipart.MultipartError as exc:
                raise ApiError(400, f"Invalid multipart request: {exc}") from None
        if parts.too_large:
            raise ApiError(413, f"File exceeds the maximum allowed size of "
                                f"{opts.max_file_bytes} bytes")
        if not parts.file_seen:
            raise ApiError(400, "No file field found in multipart upload")
        purpose = parts.fields.get("purpose")
        if purpose is not None and purpose.strip().lower() != "batch":
            raise ApiError(400, f"Invalid purpose '{purpose}'. Only 'batch' is supported")
        expires_after = _expires_after(parts.fields)
        try:
            index = validate_file(temp, opts)
        except UploadRejected as exc:
            raise ApiError(exc.status, exc.message) from None
        rec = req.store.add_input_file(temp, parts.filename or "upload.jsonl", parts.file_size,
                                       index, expires_after)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)
    return json_response(file_object(rec), 201)


def _expires_after(fields: dict) -> int | None:
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if seconds is None:
        return None
    if anchor not in (None, "created_at"):
        raise ApiError(400, f"Invalid expires_after[anchor] '{anchor}'. Only 'created_at' is "
                            "supported")
    try:
        value = int(seconds)
    except ValueError:
        return None
    return value if value > 0 else None


def list_files(req: Request) -> Response:
    order = (_param(req.query, "order") or "desc").lower()
    if order not in ("asc", "desc"):
        raise ApiError(400, f"Invalid order '{order}'. Allowed values: asc, desc")
    with req.store.lock:
        files = req.store.list_files(_param(req.query, "purpose"), order,
                                     _param(req.query, "search"))
        return json_response(list_object(files, _param(req.query, "after"), _limit(req.query),
                                         file_object))


def get_file(req: Request, file_id: str) -> Response:
    with req.store.lock:
        return json_response(file_object(req.store.get_file(file_id)))


def delete_file(req: Request, file_id: str) -> Response:
    with req.store.lock:
        rec = req.store.get_file(file_id)
        req.store.delete_file(rec)
    return json_response({"id": rec.id, "object": "file", "deleted": True})


def file_content(req: Request, file_id: str) -> Response:
    with req.store.lock:
        rec = req.store.get_file(file_id)
        batch = req.store.batches.get(rec.batch_id) if rec.batch_id else None
        return content_response(rec, batch, req.query, req.options.openai_compat)


def cost_estimate(req: Request, file_id: str) -> Response:
    if req.options.openai_compat:
        _compat_404(req)
    window = _param(req.query, "completion_window") or req.options.completion_windows[0]
    _check_window(req.options, window)
    with req.store.lock:
        rec = req.store.get_file(file_id)
        models = dict(rec.index.models) if rec.index is not None else {}
    price_in, price_out = price_per_token(window)
    rows, total_in, total_out, total_cost = [], 0, 0, Decimal(0)
    for model, stats in sorted(models.items()):
        tokens_in = max(1, stats.input_bytes // 4) if stats.requests else 0
        cost = Decimal(str(round(tokens_in * price_in + stats.output_tokens * price_out, 8)))
        rows.append({"model": model, "request_count": stats.requests,
                     "estimated_input_tokens": tokens_in,
                     "estimated_output_tokens": stats.output_tokens,
                     "estimated_cost": f"{cost:f}"})
        total_in += tokens_in
        total_out += stats.output_tokens
        total_cost += cost
    return json_response({"file_id": file_id,
                          "total_requests": sum(s.requests for s in models.values()),
                          "total_estimated_input_tokens": total_in,
                          "total_estimated_output_tokens": total_out,
                          "total_estimated_cost": f"{total_cost:f}", "models": rows})


# --- batches -------------------------------------------------------------------------------
def _check_window(options: Options, window: str) -> None:
    if window not in options.completion_windows:
        raise ApiError(400, "Unsupported completion_window. Allowed values: "
                            + ", ".join(options.completion_windows))


def _json_body(req: Request) -> dict:
    raw = req.body.read_all(MAX_JSON_BODY)
    ctype = (req.headers.get("Content-Type") or "").lower()
    if "json" not in ctype:
        raise ApiError(415, "Expected request with `Content-Type: application/json`")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"Failed to parse the request body as JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(422, "Failed to deserialize the JSON body into the target type: "
                            "invalid type: expected struct CreateBatchRequest")
    return data


def create_batch(req: Request) -> Response:
    data = _json_body(req)
    for name in ("input_file_id", "endpoint", "completion_window"):
        if name not in data:
            raise ApiError(422, "Failed to deserialize the JSON body into the target type: "
                                f"missing field `{name}`")
        if not isinstance(data[name], str):
            raise ApiError(422, "Failed to deserialize the JSON body into the target type: "
                                f"{name}: invalid type: expected a string")
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ApiError(422, "Failed to deserialize the JSON body into the target type: "
                            "metadata: invalid type: expected a map of strings to strings")
    _check_window(req.options, data["completion_window"])
    if data["endpoint"] not in ALLOWED_URLS:
        raise ApiError(400, f"Unsupported endpoint '{data['endpoint']}'. Supported: "
                            + ", ".join(ALLOWED_URLS))
    with req.store.lock:
        file_id = data["input_file_id"]
        try:
            source = req.store.get_file(file_id)
        except ApiError as exc:
            if exc.status == 400:
                raise ApiError(400, "Invalid input_file_id format") from None
            raise
        if source.index is None:
            raise ApiError(400, f"File {file_id} has purpose '{source.purpose}': only files "
                                "uploaded with purpose 'batch' can be a batch input")
        merged = dict(metadata)
        if not req.options.openai_compat:
            merged.update({"request_source": "api", "created_by_email": "sandbox@localhost"})
        batch = req.store.create_batch(source, data["endpoint"], data["completion_window"],
                                       merged)
        return json_response(batch_object(req.store, batch), 201)


def list_batches(req: Request) -> Response:
    with req.store.lock:
        batches = req.store.list_batches(_param(req.query, "search"),
                                         _param(req.query, "status"))
        return json_response(list_object(batches, _param(req.query, "after"),
                                         _limit(req.query),
                                         lambda b: batch_object(req.store, b)))


def get_batch(req: Request, batch_id: str) -> Response:
    with req.store.lock:
        return json_response(batch_object(req.store, req.store.get_batch(batch_id)))


def cancel_batch(req: Request, batch_id: str) -> Response:
    with req.store.lock:
        batch = req.store.get_batch(batch_id)
        req.store.cancel(batch)
        return json_response(batch_object(req.store, batch))


def retry_batch(req: Request, batch_id: str) -> Response:
    if req.options.openai_compat:
        _compat_404(req)
    with req.store.lock:
        batch = req.store.get_batch(batch_id)
        req.store.retry(batch)
        return json_response(batch_object(req.store, batch))


def delete_batch(req: Request, batch_id: str) -> Response:
    with req.store.lock:
        req.store.delete_batch(req.store.get_batch(batch_id))
    return Response(status=204)


def analytics(req: Request, batch_id: str) -> Response:
    if req.options.openai_compat:
        _compat_404(req)
    with req.store.lock:
        b = req.store.get_batch(batch_id)
        return json_response({
            "batch_id": b.id, "total_requests": b.total, "completed_requests": b.completed,
            "failed_requests": b.failed, "pending_requests": b.pending,
            "total_prompt_tokens": b.prompt_tokens,
            "total_completion_tokens": b.completion_tokens,
            "total_tokens": b.prompt_tokens + b.completion_tokens,
            "total_cost": f"{Decimal(str(round(b.cost, 8))):f}"})


def retry_requests(req: Request, batch_id: str) -> Response:
    """Doubleword extension: chosen failed requests (ids from /results) back to pending."""
    if req.options.openai_compat:
        _compat_404(req)
    data = _json_body(req)
    ids = data.get("request_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ApiError(422, "Failed to deserialize the JSON body into the target type: "
                            "missing field `request_ids`")
    with req.store.lock:
        batch = req.store.get_batch(batch_id)
        req.store.retry_requests(batch, ids)
        return json_response(batch_object(req.store, batch))


RESULT_STATUSES = ("pending", "in_progress", "completed", "failed")


def results(req: Request, batch_id: str) -> Response:
    """One line per input request, in input order, with its current result.

    `search` keeps custom_ids containing the text and `status` keeps one status; then
    `skip`/`limit` page what is kept. X-Incomplete / X-Last-Line as on file content."""
    if req.options.openai_compat:
        _compat_404(req)
    status = _param(req.query, "status")
    if status is not None and status not in RESULT_STATUSES:
        raise ApiError(400, f"Invalid status '{status}'. Allowed values: "
                            + ", ".join(RESULT_STATUSES))
    search = _param(req.query, "search")
    with req.store.lock:
        batch = req.store.get_batch(batch_id)
        source = req.store.files[batch.input_file_id]
        in_flight = set(batch.queue[batch.qpos:batch.qpos + IN_FLIGHT]) \
            if batch.status == "in_progress" else set()
        kept = _kept_requests(req.store, batch, source, in_flight, search, status)
        skip = min(len(kept), max(0, int_param(req.query, "skip", 0) or 0))
        limit = int_param(req.query, "limit", None)
        end = len(kept) if limit is None else min(len(kept), skip + max(1, limit))
        unfinished = not batch.terminal or end < len(kept)
    headers = [("x-incomplete", "true" if unfinished else "false"), ("x-last-line", str(end))]
    return Response(status=200, content_type=NDJSON, headers=headers,
                    stream=_result_lines(req.store, batch, source, kept[skip:end], in_flight))


def _kept_requests(store: Store, batch: Batch, source: FileRecord, in_flight,
                   search: str | None, status: str | None):
    """Indices of the requests that pass the filters, in input order."""
    indices = range(batch.total)
    if status:
        indices = [i for i in indices if store.request_status(batch, i, in_flight) == status]
    if search:
        needle = search.lower()
        with open(source.path, "rb") as f:
            def custom_id(i: int) -> str:
                f.seek(source.index.offsets[i])
                return json.loads(f.read(source.index.lengths[i]))["custom_id"]
            indices = [i for i in indices if needle in custom_id(i).lower()]
    return indices


def _result_lines(store: Store, batch: Batch, source: FileRecord, indices, in_flight):
    out_f = open(batch.output.path, "rb")
    err_f = open(batch.errors.path, "rb")
    in_f = open(source.path, "rb")
    try:
        buf = []
        for idx in indices:
            in_f.seek(source.index.offsets[idx])
            request = json.loads(in_f.read(source.index.lengths[idx]))
            with store.lock:
                status = store.request_status(batch, idx, in_flight)
                off = batch.result_off[idx]
            line = {"id": request_uuid(batch.id, idx), "custom_id": request["custom_id"],
                    "model": (request["body"] or {}).get("model"),
                    "input_body": request["body"], "response_body": None, "error": None,
                    "status": status}
            if status in ("completed", "failed"):
                f = out_f if status == "completed" else err_f
                f.seek(off)
                record = json.loads(f.readline())
                if status == "completed":
                    line["response_body"] = record["response"]["body"]
                else:
                    line["error"] = record["error"]["message"]
            buf.append(json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n")
            if len(buf) >= 256:
                yield "".join(buf).encode("utf-8")
                buf = []
        if buf:
            yield "".join(buf).encode("utf-8")
    finally:
        out_f.close()
        err_f.close()
        in_f.close()


# --- models --------------------------------------------------------------------------------
MODELS_CREATED = 1_700_000_000


def list_models(req: Request) -> Response:
    """GET /models: the mock models, OpenAI list shape (errors here are OpenAI-style JSON)."""
    names = list(req.options.chat_models) + list(req.options.embedding_models)
    if (_param(req.query, "available_for_realtime") or "").lower() == "false":
        names = []  # every mock model also serves real-time requests: none is batch-only
    data = [{"id": name, "object": "model", "created": MODELS_CREATED, "owned_by": "sandbox"}
            for name in names]
    return json_response({"object": "list", "data": data})


ROUTES = [
    ("GET", r"/v1/models", list_models),
    ("POST", r"/v1/files", upload_file),
    ("GET", r"/v1/files", list_files),
    ("GET", r"/v1/files/([^/]+)", get_file),
    ("DELETE", r"/v1/files/([^/]+)", delete_file),
    ("GET", r"/v1/files/([^/]+)/content", file_content),
    ("GET", r"/v1/files/([^/]+)/cost-estimate", cost_estimate),
    ("POST", r"/v1/batches", create_batch),
    ("GET", r"/v1/batches", list_batches),
    ("GET", r"/v1/batches/([^/]+)", get_batch),
    ("DELETE", r"/v1/batches/([^/]+)", delete_batch),
    ("POST", r"/v1/batches/([^/]+)/cancel", cancel_batch),
    ("POST", r"/v1/batches/([^/]+)/retry", retry_batch),
    ("GET", r"/v1/batches/([^/]+)/results", results),
    ("GET", r"/v1/batches/([^/]+)/analytics", analytics),
    ("POST", r"/v1/batches/([^/]+)/retry-requests", retry_requests),
]
