"""The test-only control interface under /_sandbox (only with --enable-faults).

  POST   /_sandbox/faults   {"method","path","kind",...,"times"} -> {"id"}
  DELETE /_sandbox/faults
  GET    /_sandbox/calls    -> {"calls":[{"method","path","query","status","fault"}...]}
  DELETE /_sandbox/calls
  POST   /_sandbox/advance  {"batch_id"?, "requests"?} -> {"batches":[{"id","status",...}]}
  POST   /_sandbox/clock    {"advance_seconds": S} -> {"now": ...}
"""

from __future__ import annotations

import json

from .faults import FaultSpecError
from .httpio import ApiError, Response, json_response


def _payload(body) -> dict:
    raw = body.read_all(1 << 20)
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"control body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "control body must be a JSON object")
    return data


def handle(method: str, path: str, body, store, engine, faults) -> Response:
    """Answer one /_sandbox call."""
    route = (method, path.rstrip("/"))
    if route == ("POST", "/_sandbox/faults"):
        try:
            return json_response(faults.add(_payload(body)))
        except FaultSpecError as exc:
            raise ApiError(400, str(exc)) from None
    if route == ("DELETE", "/_sandbox/faults"):
        faults.clear()
        return json_response({"cleared": True})
    if route == ("GET", "/_sandbox/faults"):
        with faults.lock:
            return json_response({"faults": [dict(f) for f in faults.faults]})
    if route == ("GET", "/_sandbox/calls"):
        return json_response({"calls": faults.list_calls()})
    if route == ("DELETE", "/_sandbox/calls"):
        faults.clear_calls()
        return json_response({"cleared": True})
    if route == ("POST", "/_sandbox/advance"):
        data = _payload(body)
        count = data.get("requests")
        if count is not None and (not isinstance(count, int) or count < 0):
            raise ApiError(400, "'requests' must be a non-negative integer")
        return json_response({"batches": engine.advance(data.get("batch_id"), count)})
    if route == ("POST", "/_sandbox/clock"):
        data = _payload(body)
        seconds = data.get("advance_seconds", 0)
        if not isinstance(seconds, (int, float)) or seconds < 0:
            raise ApiError(400, "'advance_seconds' must be a non-negative number")
        with store.lock:
            store.clock.offset += seconds
            engine.check_expiry()
            return json_response({"now": store.now(), "offset_seconds": store.clock.offset})
    raise ApiError(404, f"unknown control route {method} {path}; see sandbox_server.py --help")
