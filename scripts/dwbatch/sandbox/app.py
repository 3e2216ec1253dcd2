"""The HTTP handler: routing, auth, scripted faults, and writing responses to the socket.

HTTP/1.1 with keep-alive: whatever part of a request body a route did not read is drained
before the next request on the connection. Responses carry Content-Length (chunked only for
/results, whose size is not known in advance) and lower-case header names, as the real
server's do.
"""

from __future__ import annotations

import re
import sys
import time
import traceback
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from . import api, control
from .httpio import TEXT, ApiError, BodyReader, Response, busy_error, error_response

WRITE_BATCH = 256 * 1024
_ROUTES = [(method, re.compile(pattern), func) for method, pattern, func in api.ROUTES]


class SandboxHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dw-sandbox/1"
    sys_version = ""
    timeout = 600
    # Headers and body go out as separate small writes: without TCP_NODELAY each call on a
    # kept-alive connection waits ~40 ms for the peer's delayed ACK.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch()

    do_POST = do_DELETE = do_PUT = do_PATCH = do_HEAD = do_GET

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        if self.server.sandbox.options.verbose:
            sys.stderr.write(f"sandbox: {self.address_string()} {format % args}\n")

    # --- one request ----------------------------------------------------------------------
    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        query = parse_qs(split.query, keep_blank_values=True)
        body = self._body_reader()
        if body is None:
            return
        try:
            if path == "/_sandbox" or path.startswith("/_sandbox/"):
                self._control(path, body)
                return
            self._api(path, split.query, query, body)
        except ConnectionError:
            self.close_connection = True

    def _body_reader(self) -> BodyReader | None:
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
        length_text = self.headers.get("Content-Length")
        length = 0
        if length_text and not chunked:
            try:
                length = int(length_text)
            except ValueError:
                self._send(error_response(ApiError(400, "Invalid Content-Length header")))
                self.close_connection = True
                return None
        return BodyReader(self.rfile, length, chunked)

    def _control(self, path: str, body: BodyReader) -> None:
        sandbox = self.server.sandbox
        if not sandbox.options.enable_faults:
            response = error_response(ApiError(404, "Not Found (start the sandbox with "
                                                    "--enable-faults for /_sandbox)"))
        else:
            try:
                response = control.handle(self.command, path, body, sandbox.store,
                                          sandbox.engine, sandbox.faults)
            except ApiError as exc:
                response = error_response(exc)
        self._finish_body(body)
        self._send(response)

    def _api(self, path: str, raw_query: str, query: dict, body: BodyReader) -> None:
        sandbox = self.server.sandbox
        enabled = sandbox.options.enable_faults
        call = sandbox.faults.log(self.command, path, raw_query) if enabled else {}
        fault = sandbox.faults.take(self.command, path) if enabled else None
        if fault is not None:
            call["fault"] = fault["kind"]
            if fault["kind"] == "reset_upload":
                self._reset(body, fault["after_bytes"])
                return
            if fault["kind"] == "delay":
                time.sleep(fault["seconds"])
            elif fault["kind"] == "status":
                self._finish_body(body)
                response = self._fault_status(fault)
                call["status"] = response.status
                self._send(response)
                return
        response = self._route(path, query, body)
        call["status"] = response.status
        self._finish_body(body)
        if fault is not None and fault["kind"] == "lose_response":
            self.close_connection = True
            return
        self._send(response, fault)

    def _route(self, path: str, query: dict, body: BodyReader) -> Response:
        sandbox = self.server.sandbox
        # /models is served by the OpenAI-compatible part of the service: JSON errors there
        compat = sandbox.options.openai_compat or path == "/v1/models"
        matched = [(m, func, rx.fullmatch(path)) for m, rx, func in _ROUTES]
        matched = [(m, func, hit) for m, func, hit in matched if hit]
        if not matched:
            return error_response(ApiError(404, "Not Found"), compat)
        chosen = [(func, hit) for m, func, hit in matched if m == self.command]
        if not chosen:
            return error_response(ApiError(405, "Method Not Allowed"), compat)
        if not self._authorised():
            return error_response(ApiError(401, "Authentication required"), compat)
        func, hit = chosen[0]
        request = api.Request(self.command, path, query, self.headers, body, sandbox.store,
                              sandbox.engine, sandbox.options)
        try:
            return func(request, *hit.groups())
        except ApiError as exc:
            return error_response(exc, compat)
        except ConnectionError:
            raise
        except Exception as exc:  # noqa: BLE001 - answer 500 and say why on stderr
            sys.stderr.write(f"sandbox: internal error on {self.command} {path}:\n"
                             f"{traceback.format_exc()}")
            return error_response(ApiError(500, f"Internal server error: "
                                                f"{type(exc).__name__}: {exc}"), compat)

    def _authorised(self) -> bool:
        header = self.headers.get("Authorization") or ""
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return False
        wanted = self.server.sandbox.options.api_key
        return wanted is None or key.strip() == wanted

    # --- faults ---------------------------------------------------------------------------
    def _fault_status(self, fault: dict) -> Response:
        status = fault["status"]
        if status in (429, 503):
            return error_response(busy_error(status, fault["retry_after"], fault.get("message")))
        from http import HTTPStatus
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        text = fault.get("message") or f"{phrase} (sandbox fault)"
        return Response(status=status, body=text.encode("utf-8"), content_type=TEXT)

    def _reset(self, body: BodyReader, after_bytes: int) -> None:
        """Read `after_bytes` of the body, then close the connection without answering."""
        left = after_bytes
        while left > 0:
            data = body.read(min(65536, left))
            if not data:
                break
            left -= len(data)
        self.close_connection = True

    def _finish_body(self, body: BodyReader) -> None:
        if not body.done and not body.drain():
            self.close_connection = True

    # --- writing --------------------------------------------------------------------------
    def _send(self, response: Response, fault: dict | None = None) -> None:
        """Status line, headers and body; a drop/tear fault cuts the body and closes."""
        stream = response.stream
        length = len(response.body) if stream is None else response.length
        cut = _cut_point(response, length, fault)
        pause = (fault["after_bytes"], fault["seconds"]) \
            if fault is not None and fault["kind"] == "stall" else None
        try:
            self.send_response(response.status)
            if response.content_type and response.status != 204:
                self.send_header("content-type", response.content_type)
            for name, value in response.headers:
                self.send_header(name, value)
            chunked = False
            if response.status != 204 and self.command != "HEAD":
                if length is not None:
                    self.send_header("content-length", str(length))
                else:
                    chunked = True
                    self.send_header("transfer-encoding", "chunked")
            if cut is not None:
                self.close_connection = True
            self.end_headers()
            if response.status == 204 or self.command == "HEAD":
                return
            pieces = [response.body] if stream is None else stream
            if pause is not None:
                pieces = self._pausing(pieces, chunked, *pause)
            self._write_body(pieces, chunked, cut)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    def _write_body(self, pieces, chunked: bool, cut: int | None) -> None:
        sent = 0
        pending: list[bytes] = []
        pending_size = 0
        for piece in pieces:
            if cut is not None and sent + pending_size + len(piece) >= cut:
                piece = piece[: cut - sent - pending_size]
                pending.append(piece)
                self._flush(pending, chunked)
                return
            pending.append(piece)
            pending_size += len(piece)
            if pending_size >= WRITE_BATCH:
                self._flush(pending, chunked)
                sent += pending_size
                pending, pending_size = [], 0
        self._flush(pending, chunked)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _pausing(self, pieces, chunked: bool, after_bytes: int, seconds: float):
        """The body's pieces; after the first `after_bytes` bytes (sent at once), a pause."""
        sent = 0
        pieces = iter(pieces)
        for piece in pieces:
            if sent + len(piece) > after_bytes:
                self._flush([piece[:after_bytes - sent]], chunked)
                time.sleep(seconds)
                yield piece[after_bytes - sent:]
                break
            self._flush([piece], chunked)
            sent += len(piece)
        yield from pieces

    def _flush(self, pending: list[bytes], chunked: bool) -> None:
        data = b"".join(pending)
        if not data:
            return
        if chunked:
            data = f"{len(data):x}\r\n".encode() + data + b"\r\n"
        self.wfile.write(data)


def _cut_point(response: Response, length: int | None, fault: dict | None) -> int | None:
    """How many body bytes a drop/tear fault lets through (None: all)."""
    if fault is None:
        return None
    if fault["kind"] == "drop":
        return fault["after_bytes"]
    if fault["kind"] == "tear":
        if length is None:
            return 0
        if response.last_line_bytes:
            return length - (response.last_line_bytes + 1) // 2
        return length // 2
    return None
