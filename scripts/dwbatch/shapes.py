"""The shape of every object the server sends, checked before anything uses or records it.

Why: the job file is the scripts' only memory. One wrong answer recorded in it (a status that
is a list, an integer batch id, a file id that is a path) would make every later command
refuse the file. And ids end up in local file names, so an id such as "../../x" must never
get that far. So every File, Batch and list page is checked here, in one place, when it
arrives; a wrong shape is the server's fault: exit 7, the server's words shown as data, and
nothing recorded. `jobfile.validate_job` holds recorded values to the same rules.

Ids are opaque to the scripts (the service sends UUIDs; other servers other tokens), but they
must be short tokens: letters, digits, `-`, `_` and `.`, starting with a letter or a digit.
"""

from __future__ import annotations

import json
import math
import re

from . import errors

MAX_ID_LENGTH = 200
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")  # MAX_ID_LENGTH in all
STATUS_PATTERN = re.compile(r"[A-Za-z][A-Za-z_]{0,39}")
MAX_COUNT = 10 ** 12  # no batch holds more requests than this
MAX_SHOWN = 300       # characters of a wrong answer quoted in the error

BATCH_ID_FIELDS = ("input_file_id", "output_file_id", "error_file_id")
BATCH_TIME_FIELDS = ("created_at", "in_progress_at", "expires_at", "finalizing_at",
                     "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at")
COUNT_FIELDS = ("total", "completed", "failed")


class BadAnswer(errors.DWError):
    """The server answered, but not with what the API says it sends (exit 7)."""

    def __init__(self, where: str, problem: str, answer: object) -> None:
        super().__init__(
            f"{where}: the server's answer is not usable ({problem}); nothing was recorded. "
            f"The answer began: {quote(answer)}",
            code="bad_response", exit_code=errors.UNAVAILABLE,
            hint="the server or something between (a proxy, a captive portal) sent a wrong "
                 "answer: check --base-url, then re-run the same command later (nothing "
                 "recorded is repeated)")


def quote(value: object, limit: int = MAX_SHOWN) -> str:
    """A value as escaped JSON text, cut short: server text shown as data, never as lines or
    terminal control codes."""
    try:
        text = json.dumps(value, ensure_ascii=True, default=repr)
    except (ValueError, RecursionError):
        text = repr(type(value))
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text) - limit} more characters)"
    return text


def is_id(value: object) -> bool:
    """A server-sent id the scripts accept: a short token that can name no path."""
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def id_problem(value: object) -> str:
    """Why a value is not an id, in words."""
    if not isinstance(value, str):
        return f"an id must be a string, found {quote(value, 60)}"
    return (f"{quote(value, 60)} is not an id (expected 1 to {MAX_ID_LENGTH} letters, digits, "
            "'-', '_' or '.', starting with a letter or a digit)")


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT


def _is_time(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _need(ok: bool, where: str, problem: str, answer: object) -> None:
    if not ok:
        raise BadAnswer(where, problem, answer)


def _optional_id(obj: dict, key: str, where: str) -> None:
    value = obj.get(key)
    _need(value is None or is_id(value), where, f"'{key}': {id_problem(value)}", obj)


def _object_with_id(obj: object, kind: str, where: str, expected_id: str | None) -> None:
    """An object with a well-formed id (the one asked for, when one was)."""
    _need(isinstance(obj, dict), where, f"a {kind} must be a JSON object", obj)
    _need(is_id(obj.get("id")), where, f"'id': {id_problem(obj.get('id'))}", obj)
    if expected_id is not None:
        _need(obj["id"] == expected_id, where,
              f"it describes {kind} {quote(obj['id'], 60)}, not {expected_id}", obj)


def batch(obj: object, where: str, expected_id: str | None = None) -> dict:
    """A Batch object, checked; `expected_id`: the id that was asked for."""
    _object_with_id(obj, "batch", where, expected_id)
    status = obj.get("status")
    _need(status is None or (isinstance(status, str) and
                             STATUS_PATTERN.fullmatch(status) is not None), where,
          f"'status' must be a word such as \"in_progress\", found {quote(status, 60)}", obj)
    for key in BATCH_ID_FIELDS:
        _optional_id(obj, key, where)
    counts = obj.get("request_counts")
    _need(counts is None or isinstance(counts, dict), where,
          "'request_counts' must be an object", obj)
    for key in COUNT_FIELDS:
        value = (counts or {}).get(key)
        _need(value is None or _is_count(value), where,
              f"'request_counts.{key}' must be a whole number >= 0, found {quote(value, 60)}",
              obj)
    for key in BATCH_TIME_FIELDS:
        value = obj.get(key)
        _need(value is None or _is_time(value), where,
              f"'{key}' must be a Unix time in seconds, found {quote(value, 60)}", obj)
    for key in ("endpoint", "completion_window"):
        value = obj.get(key)
        _need(value is None or isinstance(value, str), where, f"'{key}' must be a string",
              obj)
    _need(obj.get("metadata") is None or isinstance(obj["metadata"], dict), where,
          "'metadata' must be an object", obj)
    return obj


def file(obj: object, where: str, expected_id: str | None = None) -> dict:
    """A File object, checked; `expected_id`: the id that was asked for."""
    _object_with_id(obj, "file", where, expected_id)
    _need(obj.get("bytes") is None or _is_count(obj["bytes"]), where,
          "'bytes' must be a whole number >= 0", obj)
    for key in ("filename", "purpose"):
        _need(obj.get(key) is None or isinstance(obj[key], str), where,
              f"'{key}' must be a string", obj)
    return obj


def page(obj: object, where: str) -> dict:
    """A list page: {"data": [objects], "has_more"?: bool, "last_id"?: str}."""
    _need(isinstance(obj, dict), where, "a list page must be a JSON object", obj)
    _need(isinstance(obj.get("data", []), list), where, "'data' must be a list", obj)
    _need(all(isinstance(item, dict) for item in obj.get("data") or []), where,
          "every item of 'data' must be an object", obj)
    _need(obj.get("has_more") is None or isinstance(obj["has_more"], bool), where,
          "'has_more' must be true or false", obj)
    for key in ("first_id", "last_id"):
        _need(obj.get(key) is None or isinstance(obj[key], str), where,
              f"'{key}' must be a string", obj)
    return obj
