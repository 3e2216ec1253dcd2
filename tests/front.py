"""A tiny threaded HTTP server on 127.0.0.1 in front of the sandbox: it passes calls through
(`forward`) and answers the ones a test picks the way a buggy server, a proxy or a captive
portal might. Tests give it one function, `answer(call) -> Reply`, and read back the calls
it received. (tests/hostile.py is the same idea for tests that need no sandbox behind.)"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import requests


@dataclass
class Call:
    method: str
    path: str          # without /v1 and without the query
    query: dict        # name -> first value
    body: bytes
    headers: dict = field(default_factory=dict)


@dataclass
class Reply:
    status: int = 200
    body: bytes | Iterable[bytes] = b""   # an iterable is streamed, then the connection closes
    headers: dict = field(default_factory=dict)

    @staticmethod
    def json(obj, status: int = 200, **headers) -> Reply:
        return Reply(status, json.dumps(obj).encode(), {"Content-Type": "application/json",
                                                         **headers})


class Front:
    """Start with `Front(answer)`; `.base_url` ends with /v1; `.calls`; `.stop()`."""

    def __init__(self, answer: Callable[[Call], Reply]) -> None:
        self.answer = answer
        self.calls: list[Call] = []
        self.sent_bytes = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection closes

            def log_message(self, *args) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                path = url.path[3:] if url.path.startswith("/v1") else url.path
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                call = Call(self.command, path, query, body, dict(self.headers.items()))
                owner.calls.append(call)
                reply = owner.answer(call)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if isinstance(reply.body, bytes):
                    self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                chunks = [reply.body] if isinstance(reply.body, bytes) else reply.body
                try:
                    for chunk in chunks:
                        self.wfile.write(chunk)
                        self.wfile.flush()
                        owner.sent_bytes += len(chunk)
                except OSError:  # the client hung up: what the test wanted to see
                    pass

            do_GET = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def calls_to(self, method: str, prefix: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.path.startswith(prefix)]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


PASSED_HEADERS = ("content-type", "x-last-line", "x-incomplete", "retry-after")


def forward(base_url: str, call: Call) -> Reply:
    """The call as the real sandbox at `base_url` answers it (for a server that misbehaves on
    a few calls only)."""
    headers = {k: v for k, v in call.headers.items()
               if k.lower() in ("authorization", "content-type")}
    r = requests.request(call.method, base_url + call.path, params=call.query,
                         data=call.body or None, headers=headers, timeout=30)
    return Reply(r.status_code, r.content,
                 {k: v for k, v in r.headers.items() if k.lower() in PASSED_HEADERS})
