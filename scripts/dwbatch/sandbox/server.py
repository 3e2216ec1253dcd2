"""Wiring: store + engine + faults behind a threaded HTTP server on loopback."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import tempfile
import threading
from http.server import ThreadingHTTPServer

from .app import SandboxHandler
from .engine import Engine
from .faults import FaultBook
from .options import Options
from .store import Store


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (names are resolved)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class SandboxServer:
    """The sandbox: call start(), read base_url, serve_forever(), then close()."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.own_data_dir = options.data_dir is None
        self.data_dir = options.data_dir or tempfile.mkdtemp(prefix="dw-sandbox-")
        self.store = Store(options, self.data_dir)
        self.engine = Engine(self.store, options)
        self.faults = FaultBook()
        server_class = _HTTPServer6 if ":" in options.host else _HTTPServer
        self.httpd = server_class((options.host, options.port), SandboxHandler)
        self.httpd.sandbox = self
        self._stopped = threading.Event()

    @property
    def root_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    @property
    def base_url(self) -> str:
        return self.root_url + "/v1"

    def serve_forever(self) -> None:
        self.engine.start()
        try:
            self.httpd.serve_forever(poll_interval=0.2)
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serving (safe to call from a signal handler's helper thread)."""
        threading.Thread(target=self.httpd.shutdown, daemon=True).start()

    def close(self) -> None:
        self.engine.stop()
        self.httpd.server_close()
        if self.own_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
