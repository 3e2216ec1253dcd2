"""HTTP plumbing shared by the routes: request-body readers, the Response, and ApiError.

Bodies are read through a small reader (Content-Length or chunked) so an upload can be
streamed to disk and so that whatever a route did not read can be drained before the
connection is reused (keep-alive).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import BinaryIO

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
NDJSON = "application/x-ndjson"


class ApiError(Exception):
    """An error answer: plain text like the real server, or JSON for 429/503/409."""

    def __init__(self, status: int, message: str, *, json_body: dict | None = None,
                 headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.json_body = json_body
        self.headers = list(headers or [])


def busy_error(status: int, retry_after: int, message: str | None = None) -> ApiError:
    """429/503 the way the real server sends them: JSON body plus a Retry-After header."""
    kind = "too_many_requests" if status == 429 else "service_unavailable"
    text = message or ("Too many requests, retry later" if status == 429
                       else "Service temporarily unavailable, retry later")
    body = {"error": kind, "message": text, "retry_after_seconds": retry_after}
    return ApiError(status, text, json_body=body, headers=[("retry-after", str(retry_after))])


@dataclass
class Response:
    """What a route answers. `stream` (chunks) replaces `body` for large content.

    `length` is the stream's total size when known (else chunked encoding is used);
    `last_line_bytes` lets the tear fault cut the second half of the last line.
    """

    status: int = 200
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: Iterable[bytes] | None = None
    length: int | None = None
    last_line_bytes: int = 0


def json_response(obj: object, status: int = 200, headers: list | None = None) -> Response:
    data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Response(status=status, body=data, content_type=JSON, headers=list(headers or []))


def error_response(err: ApiError, compat: bool = False) -> Response:
    """Plain text (Doubleword) or OpenAI-style JSON (--openai-compat); 429/503 JSON always."""
    if err.json_body is not None:
        return json_response(err.json_body, err.status, err.headers)
    if compat:
        kinds = {401: ("authentication_error", "invalid_api_key"),
                 404: ("invalid_request_error", "not_found")}
        kind, code = kinds.get(err.status, ("invalid_request_error" if err.status < 500
                                            else "server_error", None))
        return json_response({"error": {"message": err.message, "type": kind, "param": None,
                                        "code": code}}, err.status, err.headers)
    return Response(status=err.status, body=err.message.encode("utf-8"), content_type=TEXT,
                    headers=err.headers)


class BodyReader:
    """Reads a request body framed by Content-Length or chunked transfer encoding."""

    def __init__(self, rfile: BinaryIO, length: int | None, chunked: bool) -> None:
        self.rfile = rfile
        self.remaining = length or 0
        self.chunked = chunked
        self.chunk_left = 0
        self.done = not chunked and not self.remaining
        self.bytes_read = 0

    def read(self, n: int = 65536) -> bytes:
        """Up to n bytes; b'' at the end of the body."""
        if self.done:
            return b""
        data = self._read_chunked(n) if self.chunked else self._read_plain(n)
        self.bytes_read += len(data)
        return data

    def _read_plain(self, n: int) -> bytes:
        data = self.rfile.read1(min(n, self.remaining)) if hasattr(self.rfile, "read1") \
            else self.rfile.read(min(n, self.remaining))
        if not data:
            raise ConnectionError("client closed the connection in the middle of the body")
        self.remaining -= len(data)
        if self.remaining <= 0:
            self.done = True
        return data

    def _read_chunked(self, n: int) -> bytes:
        if self.chunk_left == 0:
            line = self.rfile.readline(65537)
            if not line:
                raise ConnectionError("client closed the connection in the middle of the body")
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError as exc:
                raise ConnectionError(f"bad chunk size line {line[:40]!r}") from exc
            if size == 0:
                while True:  # trailers until the empty line
                    trailer = self.rfile.readline(65537)
                    if trailer in (b"\r\n", b"\n", b""):
                        break
                self.done = True
                return b""
            self.chunk_left = size
        data = self.rfile.read(min(n, self.chunk_left))
        if not data:
            raise ConnectionError("client closed the connection in the middle of the body")
        self.chunk_left -= len(data)
        if self.chunk_left == 0:
            self.rfile.readline(3)  # CRLF after the chunk
        return data

    def read_all(self, limit: int) -> bytes:
        """The whole body (small JSON bodies); ApiError 413 past `limit` bytes."""
        parts = []
        total = 0
        while True:
            data = self.read(65536)
            if not data:
                break
            total += len(data)
            if total > limit:
                raise ApiError(413, f"Request body exceeds the maximum allowed size of {limit} "
                                    "bytes")
            parts.append(data)
        return b"".join(parts)

    def drain(self, limit: int = 1 << 30) -> bool:
        """Read and discard the rest of the body; False if more than `limit` was left."""
        seen = 0
        while not self.done:
            data = self.read(1 << 20)
            if not data:
                break
            seen += len(data)
            if seen > limit:
                return False
        return True
