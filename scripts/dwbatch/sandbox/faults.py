"""Scripted faults and the call log: what tests use to make the sandbox misbehave on purpose.

A fault matches calls by method ("*" for any) and an fnmatch glob on the path without the
query, and hits the next `times` matching calls; faults are consumed first-in first-out
(one fault per call). Kinds and their parameters:

  status         `status` (int); answer it without processing. 429/503 get the real JSON
                 body and `Retry-After: retry_after` (default 1); others plain text.
  drop           `after_bytes` (default 0); process normally, send the headers and the first
                 after_bytes bytes of the body, then close the connection.
  tear           content responses: send everything except the second half of the last line,
                 then close (other responses: the second half of the body).
  delay          `seconds` (default 1); sleep, then answer normally.
  stall          `after_bytes` (default 0), `seconds` (default 1); process normally, send the
                 headers and the first after_bytes bytes of the body, wait, then send the rest
                 (a client can be killed while it holds half an answer). A body no longer than
                 after_bytes is sent whole, without a pause.
  lose_response  process fully (e.g. the batch IS created), then close without answering.
  reset_upload   `after_bytes` (default 0); read that much of the request body, then close;
                 nothing is processed.
"""

from __future__ import annotations

import fnmatch
import itertools
import threading

KINDS = ("status", "drop", "tear", "delay", "stall", "lose_response", "reset_upload")
MAX_CALLS = 50_000  # oldest calls are forgotten past this


class FaultSpecError(ValueError):
    pass


def _number(spec: dict, key: str, default, kind=int):
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise FaultSpecError(f"fault field {key!r} must be a non-negative number, got {value!r}")
    return kind(value)


def normalise(spec: dict) -> dict:
    """A validated copy of a fault spec (FaultSpecError says what is wrong)."""
    if not isinstance(spec, dict):
        raise FaultSpecError("fault spec must be a JSON object")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise FaultSpecError(f"fault kind must be one of {', '.join(KINDS)}; got {kind!r}")
    path = spec.get("path", "*")
    method = str(spec.get("method", "*")).upper()
    if not isinstance(path, str) or not path:
        raise FaultSpecError("fault path must be a glob string such as '/v1/files/*/content'")
    out = {"kind": kind, "method": method, "path": path,
           "times": _number(spec, "times", 1)}
    if kind == "status":
        status = spec.get("status")
        if not isinstance(status, int) or not 100 <= status <= 599:
            raise FaultSpecError("a 'status' fault needs 'status': an HTTP status code such as "
                                 "429, 500, 502 or 503")
        out["status"] = status
        out["retry_after"] = _number(spec, "retry_after", 1)
        if "message" in spec:
            out["message"] = str(spec["message"])
    elif kind in ("drop", "reset_upload"):
        out["after_bytes"] = _number(spec, "after_bytes", 0)
    elif kind == "delay":
        out["seconds"] = _number(spec, "seconds", 1.0, float)
    elif kind == "stall":
        out["after_bytes"] = _number(spec, "after_bytes", 0)
        out["seconds"] = _number(spec, "seconds", 1.0, float)
    return out


class FaultBook:
    """Active faults (FIFO) and the log of every /v1 call, thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.faults: list[dict] = []
        self.calls: list[dict] = []
        self.ids = itertools.count(1)

    def add(self, spec: dict) -> dict:
        fault = normalise(spec)
        with self.lock:
            fault["id"] = f"fault-{next(self.ids)}"
            fault["remaining"] = fault["times"]
            self.faults.append(fault)
        return {"id": fault["id"]}

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()

    def take(self, method: str, path: str) -> dict | None:
        """The first active fault matching this call, used up by one hit."""
        with self.lock:
            for fault in self.faults:
                if fault["remaining"] <= 0:
                    continue
                if fault["method"] not in ("*", method):
                    continue
                if not fnmatch.fnmatchcase(path, fault["path"]):
                    continue
                fault["remaining"] -= 1
                return dict(fault)
        return None

    def log(self, method: str, path: str, query: str) -> dict:
        call = {"method": method, "path": path, "query": query, "status": None, "fault": None}
        with self.lock:
            if len(self.calls) >= MAX_CALLS:
                del self.calls[: MAX_CALLS // 10]
            self.calls.append(call)
        return call

    def list_calls(self) -> list[dict]:
        with self.lock:
            return [dict(c) for c in self.calls]

    def clear_calls(self) -> None:
        with self.lock:
            self.calls.clear()
