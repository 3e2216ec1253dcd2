"""The real server's upload validation, applied line by line to the stored upload.

The first bad line rejects the whole file with the real server's words. `Line N` counts
non-blank lines (blank lines are skipped; CRLF is fine). What survives is a compact index:
the byte offset and length of every request line, so batches never hold parsed bodies.
"""

from __future__ import annotations

import json
from array import array
from dataclasses import dataclass, field

from .options import ALLOWED_URLS, MAX_REQUEST_BODY_BYTES, Options

MAX_CUSTOM_ID_BYTES = 64
REQUIRED_FIELDS = ("custom_id", "method", "url", "body")
DEFAULT_OUTPUT_TOKENS = 256  # cost estimate when a request sets no max_tokens


class UploadRejected(Exception):
    """The upload is refused: HTTP status and the server's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ModelStats:
    requests: int = 0
    input_bytes: int = 0
    output_tokens: int = 0


@dataclass
class FileIndex:
    """Where each request line sits in the stored file, plus per-model totals."""

    offsets: array = field(default_factory=lambda: array("q"))
    lengths: array = field(default_factory=lambda: array("q"))
    models: dict[str, ModelStats] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.offsets)


def validate_file(path: str, options: Options) -> FileIndex:
    """Check every line of the file at `path`; return its index or raise UploadRejected."""
    index = FileIndex()
    pos = 0
    with open(path, "rb") as f:
        for raw in f:
            start = pos
            pos += len(raw)
            stripped = raw.strip()
            if not stripped:
                continue
            line_no = index.count + 1
            text = _decode(raw, start, line_no).strip()
            if not text:
                continue
            if options.max_requests and index.count >= options.max_requests:
                raise UploadRejected(400, f"File contains {index.count + 1} requests, which "
                                          f"exceeds the maximum of {options.max_requests}")
            request = _parse_line(text, line_no)
            model = _check_request(request, line_no, len(stripped), options)
            lead = len(raw) - len(raw.lstrip())
            index.offsets.append(start + lead)
            index.lengths.append(len(stripped))
            stats = index.models.setdefault(model, ModelStats())
            stats.requests += 1
            stats.input_bytes += len(stripped)
            stats.output_tokens += _max_tokens(request["body"])
    if index.count == 0:
        raise UploadRejected(400, "File contains no valid request templates")
    return index


def _decode(raw: bytes, start: int, line_no: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data":
            detail = f"incomplete utf-8 byte sequence from index {exc.start}"
        else:
            detail = f"invalid utf-8 sequence of {exc.end - exc.start} bytes from index {exc.start}"
        raise UploadRejected(400, f"File contains invalid UTF-8 on/near line {line_no} at byte "
                                  f"offset {start + exc.start}: {detail}") from None


def _json_error(text: str, exc: json.JSONDecodeError) -> str:
    """Python's JSON error phrased the way serde_json (the real server) phrases it."""
    msg = exc.msg
    mapping = {
        "Expecting value": "expected value",
        "Extra data": "trailing characters",
        "Expecting property name enclosed in double quotes": "key must be a string",
        "Unterminated string starting at": "EOF while parsing a string",
        "Expecting ',' delimiter": "expected `,` or `}`",
        "Expecting ':' delimiter": "expected `:`",
        "Invalid control character at": "control character (\\u0000-\\u001F) found while "
                                        "parsing a string",
    }
    phrase = mapping.get(msg, msg[:1].lower() + msg[1:])
    if exc.pos >= len(text) and msg in ("Expecting value", "Expecting ',' delimiter"):
        phrase = "EOF while parsing a value"
    return f"{phrase} at line {exc.lineno} column {exc.colno}"


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f"string {json.dumps(value)}"
    if isinstance(value, list):
        return "sequence"
    if isinstance(value, dict):
        return "map"
    return "null"


def _reject_constant(name: str):
    """NaN / Infinity are not JSON (serde_json refuses them; Python would accept them)."""
    raise json.JSONDecodeError("Expecting value", name, 0)


def _parse_line(text: str, line_no: int) -> dict:
    """The line as a request object, or the real server's `Invalid JSON on line N` error."""
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise UploadRejected(400, f"Invalid JSON on line {line_no}: {_json_error(text, exc)}") \
            from None
    end = f"at line 1 column {len(text)}"
    if not isinstance(value, dict):
        raise UploadRejected(400, f"Invalid JSON on line {line_no}: invalid type: "
                                  f"{_type_name(value)}, expected struct OpenAIBatchRequest {end}")
    for name in REQUIRED_FIELDS:
        if name not in value:
            raise UploadRejected(400, f"Invalid JSON on line {line_no}: missing field `{name}` "
                                      f"{end}")
    for name in ("custom_id", "method", "url"):
        if not isinstance(value[name], str):
            raise UploadRejected(400, f"Invalid JSON on line {line_no}: invalid type: "
                                      f"{_type_name(value[name])}, expected a string {end}")
    return value


def _check_request(request: dict, line_no: int, line_bytes: int, options: Options) -> str:
    """The server's per-line rules, in its order; returns the request's model."""
    def reject(message: str, status: int = 400) -> UploadRejected:
        return UploadRejected(status, f"Line {line_no}: {message}")

    custom_id = request["custom_id"]
    id_bytes = len(custom_id.encode("utf-8"))
    if id_bytes > MAX_CUSTOM_ID_BYTES:
        raise reject(f"custom_id exceeds maximum length of {MAX_CUSTOM_ID_BYTES} characters "
                     f"(got {id_bytes})")
    if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in custom_id):
        raise reject("custom_id contains invalid characters: must be valid ASCII without "
                     "control characters")
    method = request["method"]
    if method.upper() != "POST":
        raise reject(f"Unsupported HTTP method '{method}'. Only POST is currently supported.")
    url = request["url"]
    if url not in ALLOWED_URLS:
        raise reject(f"Unsupported URL path '{url}'. Allowed paths are: "
                     f"{', '.join(ALLOWED_URLS)}")
    body = request["body"]
    model = body.get("model") if isinstance(body, dict) else None
    if not isinstance(model, str):
        raise reject("Missing 'model' field in request body")
    kind = options.model_kind(model)
    if kind is None:
        raise reject(f"Model '{model}' has not been configured or is not available to user",
                     403)
    wanted = "embedding" if url == "/v1/embeddings" else "chat"
    if kind != wanted:
        article = "an" if wanted == "embedding" else "a"
        raise reject(f"Model '{model}' is a {kind} model but endpoint '{url}' requires "
                     f"{article} {wanted} model")
    if line_bytes > MAX_REQUEST_BODY_BYTES:
        size = len(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
        if size > MAX_REQUEST_BODY_BYTES:
            raise reject(f"Request body is {size} bytes, which exceeds the maximum allowed size "
                         f"of {MAX_REQUEST_BODY_BYTES} bytes")
    return model


def _max_tokens(body: dict) -> int:
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return DEFAULT_OUTPUT_TOKENS
