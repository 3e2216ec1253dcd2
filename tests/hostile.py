"""A tiny threaded http.server on 127.0.0.1 whose answers a test writes: what a buggy
server, a proxy or a captive portal might send and the sandbox never does (trickles, endless
bodies, decompression bombs, redirects elsewhere, text that poses as our output).

Every request is logged (method, path with query, headers); what a handler writes is
counted in `sent`, so a test can assert that the client stopped reading early. Handlers
must bound what they send: tests never really fill memory or the disk.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BATCH = {"id": "batch_x1", "object": "batch", "endpoint": "/v1/chat/completions",
         "input_file_id": "file_in1", "completion_window": "24h", "status": "in_progress",
         "output_file_id": None, "error_file_id": None, "created_at": 1700000000,
         "in_progress_at": 1700000001, "expires_at": 4102444800,
         "request_counts": {"total": 2, "completed": 1, "failed": 0}, "metadata": {}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()  # headers and body go out as separate writes: do not wait for ACKs
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length and self.server.read_bodies else b""
        self.server.calls.append({"method": self.command, "path": self.path,
                                  "headers": dict(self.headers), "body": body})
        try:
            self.server.answer(self)
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_GET = do_POST = do_DELETE = _handle

    # ---- ways to answer ----------------------------------------------------------------
    def write(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()
        self.server.sent += len(data)

    def head(self, status: int, headers: dict | None = None, length: int | None = None
             ) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def reply(self, status: int, body: bytes | str | dict, headers: dict | None = None) -> None:
        if isinstance(body, dict):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/json")
        self.head(status, headers, len(body))
        self.write(body)

    def endless(self, status: int, first: bytes, filler: bytes, cap: int,
                headers: dict | None = None) -> None:
        """`first`, then `filler` again and again (chunked, no end) up to `cap` bytes."""
        self.close_connection = True
        self.head(status, {"Transfer-Encoding": "chunked", **(headers or {})})
        data = first
        while self.server.sent < cap and not self.server.stopping.is_set():
            self.write(b"%x\r\n%s\r\n" % (len(data), data))
            data = filler

    def trickle(self, data: bytes, every: float) -> None:
        """Raw bytes (status line and headers included) one at a time, `every` s apart."""
        self.close_connection = True
        for i in range(len(data)):
            if self.server.stopping.wait(every):
                return
            self.write(data[i:i + 1])


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class Hostile:
    """`Hostile(answer)`: answer(handler) is called for every request; use as a context
    manager (the server stops at the end)."""

    def __init__(self, answer: Callable[[Handler], None], *, read_bodies: bool = True) -> None:
        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.answer = answer
        self.server.calls = []
        self.server.sent = 0
        self.server.read_bodies = read_bodies
        self.server.stopping = threading.Event()
        self.port = self.server.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self.base_url = self.origin + "/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def calls(self) -> list[dict]:
        return self.server.calls

    @property
    def sent(self) -> int:
        return self.server.sent

    def __enter__(self) -> Hostile:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stopping.set()
        self.server.shutdown()
        self.server.server_close()


def gzip_bomb(size: int, unit: bytes = b"\0") -> bytes:
    """`size` bytes of `unit` repeated, gzip-compressed (about a thousand times smaller)."""
    return gzip.compress(unit * (size // len(unit)), compresslevel=9)


def elapsed(start: float) -> float:
    return time.monotonic() - start
