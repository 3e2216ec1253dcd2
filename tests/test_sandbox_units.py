"""Unit tests of the sandbox's pure pieces: the streaming multipart parser, the upload index,
JSON Schema instances of the mock models, line views and the completion order."""

from __future__ import annotations

import io
import json

import jsonschema
import pytest
from dwbatch.sandbox import multipart
from dwbatch.sandbox.mock_models import respond, schema_instance
from dwbatch.sandbox.options import Options
from dwbatch.sandbox.store import LineView, shuffled_order
from dwbatch.sandbox.upload_rules import UploadRejected, validate_file


class TrickleReader:
    """A body reader that hands out at most `step` bytes per read (worst-case chunking)."""

    def __init__(self, data: bytes, step: int) -> None:
        self.buf = io.BytesIO(data)
        self.step = step

    def read(self, n: int) -> bytes:
        return self.buf.read(min(n, self.step))


def body_of(parts, boundary=b"XyZ"):
    out = b""
    for name, filename, data in parts:
        out += b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"" + name + b"\""
        if filename:
            out += b'; filename="' + filename + b'"'
        out += b"\r\n\r\n" + data + b"\r\n"
    return b"preamble\r\n" + out + b"--" + boundary + b"--\r\nepilogue"


@pytest.mark.parametrize("step", [1, 3, 7, 1 << 20])
def test_multipart_parser_survives_any_chunking(step):
    # Near-misses of the delimiter "\r\n--XyZ" (real encoders keep the boundary out).
    tricky = b"line --XyZ not a boundary\r\n-XyZ \r\n--Xy\r\r\n--\r\n\r\n" * 50
    body = body_of([(b"purpose", None, b"batch"), (b"file", b"a b.jsonl", tricky),
                    (b"extra", None, b"ignored")])
    sink = io.BytesIO()
    parts = multipart.parse(TrickleReader(body, step), b"XyZ", sink, 0)
    assert sink.getvalue() == tricky and parts.file_size == len(tricky)
    assert parts.fields == {"purpose": "batch", "extra": "ignored"}
    assert parts.filename == "a b.jsonl" and not parts.too_large


def test_multipart_limits_and_errors():
    body = body_of([(b"file", b"f.jsonl", b"x" * 100)])
    sink = io.BytesIO()
    parts = multipart.parse(TrickleReader(body, 10), b"XyZ", sink, 50)
    assert parts.too_large and len(sink.getvalue()) <= 50
    with pytest.raises(multipart.MultipartError):
        multipart.parse(TrickleReader(body[:-30], 10), b"XyZ", io.BytesIO(), 0)
    assert multipart.boundary_of('multipart/form-data; boundary="a b"') == b"a b"
    with pytest.raises(multipart.MultipartError):
        multipart.boundary_of("application/json")


def test_upload_index_points_at_each_request_line(tmp_path):
    lines = [json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": "sandbox-chat", "messages": [], "max_tokens": 7}})
             for i in range(3)]
    raw = ("\r\n  " + lines[0] + "  \r\n\n" + lines[1] + "\n" + lines[2]).encode()
    path = tmp_path / "in.jsonl"
    path.write_bytes(raw)
    index = validate_file(str(path), Options())
    assert index.count == 3
    for i, (off, length) in enumerate(zip(index.offsets, index.lengths, strict=True)):
        assert raw[off:off + length].decode() == lines[i]
    assert index.models["sandbox-chat"].requests == 3
    assert index.models["sandbox-chat"].output_tokens == 21
    path.write_bytes(raw + b"\n" + lines[0].replace("POST", "PUT").encode())
    with pytest.raises(UploadRejected, match="^Line 4: Unsupported HTTP method 'PUT'"):
        validate_file(str(path), Options())


def test_schema_instances_validate():
    schema = {"$defs": {"item": {"type": "object", "properties": {
                  "n": {"type": "number", "exclusiveMinimum": 5, "maximum": 9},
                  "when": {"type": "string", "format": "date"}}, "required": ["n", "when"]}},
              "type": "object",
              "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/item"},
                                       "minItems": 2},
                             "maybe": {"anyOf": [{"type": "null"}, {"type": "boolean"}]},
                             "code": {"type": "string", "minLength": 40, "maxLength": 50},
                             "kind": {"const": "fixed"}},
              "required": ["items", "maybe", "code", "kind"]}
    value = schema_instance(schema, schema, "ECHO short")
    jsonschema.validate(value, schema)
    assert len(value["items"]) == 2


def test_embeddings_and_failures_are_deterministic():
    body = {"model": "sandbox-embed", "input": ["a", "b"]}
    first = respond("/v1/embeddings", body, "id", 0).body
    assert first == respond("/v1/embeddings", body, "id", 0).body
    assert first["data"][0]["embedding"] != first["data"][1]["embedding"]
    failed = respond("/v1/chat/completions", {"model": "m", "messages": [
        {"role": "user", "content": "x [[fail:404]]"}]}, "id", 0)
    assert json.loads(failed.error)["type"] == "RetriableHttpStatus"
    broken = respond("/v1/chat/completions", {"model": "m", "messages": "nope"}, "id", 0)
    assert broken.body is None or broken.body["choices"][0]["message"]["content"]


def test_line_view_removal_and_order(tmp_path):
    view = LineView(str(tmp_path / "v.jsonl"))
    offsets = view.append([b"a\n", b"bb\n", b"ccc\n"])
    assert offsets == [0, 2, 5] and view.bytes == 9
    view.remove({2})
    assert list(view.offsets) == [0, 5] and view.bytes == 6
    assert shuffled_order(range(2), 0, 1, 0).tolist() == [1, 0], "never input order"
    assert shuffled_order(range(50), 3, 1, 0) == shuffled_order(range(50), 3, 1, 0)
    assert shuffled_order(range(50), 3, 1, 0) != shuffled_order(range(50), 4, 1, 0)
