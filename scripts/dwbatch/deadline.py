"""Deadlines for whole calls, not single socket reads.

A socket timeout bounds one read: a server that sends one byte every two seconds never
trips a 60 s timeout and keeps a command alive for ever. So every call gets a `Deadline`: a
watchdog thread that, when the deadline passes, shuts the call's socket down, which ends the
blocked read at once (requests then reports a broken connection, and the client, seeing
`expired`, reports the deadline instead). Streams (uploads, downloads) get a deadline that
moves forward each time PROGRESS_BYTES more have moved, so a large transfer may take as long
as it needs while it keeps moving, and one that trickles is cut.

How the socket is found: the session's adapter uses connection pools that hand each
connection they give out to the deadline of the call running in that thread.
"""

from __future__ import annotations

import socket
import threading
import time

from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import ProxyManager

PROGRESS_BYTES = 64 * 1024  # a stream must move this much per deadline period
_WATCH_STEP = 0.2
_running = threading.local()


class Deadline:
    """The deadline of one call: `seconds` from now, or from the last progress for streams.

    claim() before the call, detach() once it is sent, stop() when it is over. `expired`
    tells whether the deadline cut the call.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expires = time.monotonic() + seconds
        self.expired = False
        self._moved = 0
        self._conns: list = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- what the call does -------------------------------------------------------------
    def start(self) -> Deadline:
        self._thread = threading.Thread(target=self._watch, name="dwbatch-deadline",
                                        daemon=True)
        self._thread.start()
        return self

    def restart(self, seconds: float | None = None) -> None:
        """A new period from now (e.g. after an upload's last byte, the wait for the answer)."""
        if seconds is not None:
            self.seconds = seconds
        self.expires = time.monotonic() + self.seconds
        self._moved = 0

    def progress(self, nbytes: int) -> None:
        """`nbytes` more have moved; every PROGRESS_BYTES moves the deadline forward."""
        self._moved += nbytes
        if self._moved >= PROGRESS_BYTES:
            self.restart()

    def stop(self) -> None:
        with self._lock:
            self._done.set()
            self._conns.clear()

    def claim(self) -> Deadline:
        """Start watching, and take every connection this thread opens from now on."""
        _running.deadline = self
        return self.start()

    def detach(self) -> None:
        """Stop taking new connections (the ones taken stay watched until stop())."""
        if getattr(_running, "deadline", None) is self:
            _running.deadline = None

    # ---- the watchdog -------------------------------------------------------------------
    def watch(self, conn) -> None:
        with self._lock:
            if not self._done.is_set():
                self._conns.append(conn)

    def _watch(self) -> None:
        """Sleep until the deadline; then cut every socket of the call, and keep cutting
        (a connection still being opened has no socket yet) until the call ends."""
        while True:
            left = self.expires - time.monotonic()
            if self._done.wait(min(_WATCH_STEP, left) if left > 0 else _WATCH_STEP):
                return
            if time.monotonic() < self.expires:
                continue
            with self._lock:
                if self._done.is_set():
                    return
                self.expired = True
                for conn in self._conns:
                    _shut(getattr(conn, "sock", None))


def _shut(sock) -> None:
    """End every blocked read and write on `sock` now. The plain socket's own shutdown, so a
    TLS socket's state is left for its owner to clean up."""
    if sock is None:
        return
    raw = sock if isinstance(sock, socket.socket) else getattr(sock, "socket", None)
    if not isinstance(raw, socket.socket):
        return
    try:
        socket.socket.shutdown(raw, socket.SHUT_RDWR)
    except OSError:
        pass


class _Watched:
    """A connection pool that gives each connection it hands out to the running deadline."""

    def _get_conn(self, timeout=None):
        conn = super()._get_conn(timeout)
        deadline = getattr(_running, "deadline", None)
        if deadline is not None:
            deadline.watch(conn)
        return conn


class _WatchedHTTPPool(_Watched, HTTPConnectionPool):
    pass


class _WatchedHTTPSPool(_Watched, HTTPSConnectionPool):
    pass


POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class WatchedAdapter(HTTPAdapter):
    """requests' adapter with pools whose connections a Deadline can cut (also through an
    https proxy's tunnel; a SOCKS proxy keeps its own pools and only the socket timeouts)."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(POOLS)

    def proxy_manager_for(self, proxy, **kwargs):
        manager = super().proxy_manager_for(proxy, **kwargs)
        if type(manager) is ProxyManager:
            manager.pool_classes_by_scheme = dict(POOLS)
        return manager
