"""A streaming multipart/form-data parser: the `file` part goes straight to disk.

An upload of hundreds of megabytes never sits in memory: the body is scanned in chunks for
the boundary and the file part's bytes are written as they arrive. Fields may come in any
order (the openai SDK sends `purpose` first, Doubleword's CLI sends `file` first).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

CHUNK = 256 * 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_FIELD_BYTES = 64 * 1024
_PARAM = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


class MultipartError(Exception):
    """The body is not valid multipart/form-data (the message says why)."""


@dataclass
class Parts:
    fields: dict[str, str] = field(default_factory=dict)
    file_seen: bool = False
    filename: str | None = None
    file_size: int = 0
    too_large: bool = False


def boundary_of(content_type: str | None) -> bytes:
    """The boundary parameter of a multipart/form-data Content-Type."""
    if not content_type or not content_type.lower().startswith("multipart/form-data"):
        raise MultipartError("Invalid `boundary` for `multipart/form-data` request "
                             f"(Content-Type was {content_type or 'missing'!r})")
    for name, value in _PARAM.findall(content_type):
        if name.lower() == "boundary":
            value = value.strip()
            if value.startswith('"'):
                value = value[1:-1]
            if value:
                return value.encode("latin-1")
    raise MultipartError("Invalid `boundary` for `multipart/form-data` request")


def _disposition(headers: dict[str, str]) -> tuple[str | None, str | None]:
    """(name, filename) from a part's Content-Disposition header."""
    value = headers.get("content-disposition", "")
    name = filename = None
    for key, raw in _PARAM.findall(";" + value.split(";", 1)[1] if ";" in value else ""):
        raw = raw.strip()
        if raw.startswith('"'):
            raw = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        key = key.lower()
        if key == "name":
            name = raw
        elif key == "filename" and filename is None:
            filename = raw
        elif key == "filename*":
            filename = raw.split("''", 1)[-1]
    return name, filename


class _Scanner:
    """A byte buffer over a body reader with find-or-read-more helpers."""

    def __init__(self, reader) -> None:
        self.reader = reader
        self.buf = bytearray(b"\r\n")  # lets the first boundary match like the others
        self.eof = False

    def fill(self) -> bool:
        if self.eof:
            return False
        data = self.reader.read(CHUNK)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def find(self, token: bytes, limit: int | None = None) -> int:
        """Index of token in the buffer, reading more as needed; -1 at end of body."""
        start = 0
        while True:
            i = self.buf.find(token, start)
            if i >= 0:
                return i
            if limit is not None and len(self.buf) > limit:
                raise MultipartError("multipart part headers are too long")
            start = max(0, len(self.buf) - len(token) + 1)
            if not self.fill():
                return -1

    def need(self, n: int) -> bool:
        while len(self.buf) < n:
            if not self.fill():
                return False
        return True


def parse(reader, boundary: bytes, file_sink, max_file_bytes: int) -> Parts:
    """Parse the body; the `file` part is passed to `file_sink.write` chunk by chunk.

    Past `max_file_bytes` the file part is no longer written (`too_large` is set) but the
    body is still read to its end so the client sees the answer, not a reset connection.
    """
    parts = Parts()
    scan = _Scanner(reader)
    delim = b"\r\n--" + boundary
    i = scan.find(delim)
    if i < 0:
        raise MultipartError("no multipart boundary found in the body")
    del scan.buf[: i + len(delim)]
    while True:
        if not scan.need(2):
            raise MultipartError("multipart body ended without its closing boundary")
        if scan.buf[:2] == b"--":
            break
        eol = scan.find(b"\r\n", MAX_HEADER_BYTES)
        if eol < 0:
            raise MultipartError("multipart body ended inside a boundary line")
        del scan.buf[: eol + 2]
        end = scan.find(b"\r\n\r\n", MAX_HEADER_BYTES)
        if end < 0:
            raise MultipartError("multipart body ended inside part headers")
        headers = _parse_headers(bytes(scan.buf[:end]))
        del scan.buf[: end + 4]
        name, filename = _disposition(headers)
        if name == "file" and not parts.file_seen:
            parts.file_seen = True
            parts.filename = filename
            _copy_part(scan, delim, _FileTarget(file_sink, parts, max_file_bytes))
        else:
            target = _FieldTarget()
            _copy_part(scan, delim, target)
            if name and name not in parts.fields:
                parts.fields[name] = target.text()
    while scan.fill():  # epilogue: read and ignore
        del scan.buf[:]
    return parts


def _parse_headers(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").split("\r\n"):
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    return headers


def _copy_part(scan: _Scanner, delim: bytes, target) -> None:
    """Move the part's bytes to target until the next boundary delimiter."""
    keep = len(delim) - 1
    start = 0
    while True:
        i = scan.buf.find(delim, start)
        if i >= 0:
            target.write(scan.buf[:i])
            del scan.buf[: i + len(delim)]
            return
        if len(scan.buf) > keep:
            cut = len(scan.buf) - keep
            target.write(scan.buf[:cut])
            del scan.buf[:cut]
        start = 0
        if not scan.fill():
            raise MultipartError("multipart body ended inside a part (missing closing boundary)")


class _FileTarget:
    def __init__(self, sink, parts: Parts, max_bytes: int) -> None:
        self.sink = sink
        self.parts = parts
        self.max_bytes = max_bytes

    def write(self, data) -> None:
        if not data:
            return
        self.parts.file_size += len(data)
        if self.max_bytes and self.parts.file_size > self.max_bytes:
            self.parts.too_large = True
        if not self.parts.too_large:
            self.sink.write(data)


class _FieldTarget:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data) -> None:
        if len(self.data) < MAX_FIELD_BYTES:
            self.data += data[: MAX_FIELD_BYTES - len(self.data)]

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")
