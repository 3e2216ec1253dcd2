"""Deterministic mock models: answers derived from the prompt, so a mis-joined result shows.

Chat, completions, responses and messages answer "ECHO " + the prompt text, counted in
words: with max_tokens below the answer's word count the answer is cut and marked as
truncated. A JSON Schema response format gets a JSON answer valid for that schema.
Embeddings are 8 floats from the SHA-256 of the input. Like the service, the sandbox retries
a retriable upstream failure itself (5xx, 429, 408, 404, 499, timeouts; here up to
UPSTREAM_ATTEMPTS times, at once) and writes only the final failure, as RetriableHttpStatus
or Timeout; other 4xx fail at once as NonRetriableHttpStatus. Markers inside a request body
make that one request fail or misbehave:

  [[fail:NNN]]       upstream answers HTTP NNN on every attempt (RetriableHttpStatus for
                     5xx/429/408/404/499 after the sandbox's own retries, else
                     NonRetriableHttpStatus at once); the error message is JSON text
  [[fail:timeout]]   every upstream attempt times out (type Timeout, after the retries)
  [[fail:text]]      an error whose message is plain text, not JSON
  [[flaky:NNN]]      the first upstream attempt for that request body answers NNN; the
                     sandbox's own retry succeeds, so the request completes (never in the
                     error file, as on the service)
  [[outage:NNN]]     the upstream answers NNN through the whole first run of that request
                     body, so it fails as RetriableHttpStatus once the retries run out (what
                     the service reports after hours of a failing upstream); sent again (in
                     place with /retry or in a new batch) it succeeds
  [[bad_json]]       a structured-output answer that is not JSON
  [[schema_invalid]] a structured-output answer that is JSON but violates the schema
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass


def _compact(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)

FAIL_MARKER = re.compile(r"\[\[fail:(\d{3}|timeout|text)\]\]")
FLAKY_MARKER = re.compile(r"\[\[flaky:(\d{3})\]\]")
OUTAGE_MARKER = re.compile(r"\[\[outage:(\d{3})\]\]")
UPSTREAM_ATTEMPTS = 3  # the service tries up to ~1,000 times over hours; 3 at once here
_flaky_seen: set[str] = set()
_flaky_lock = threading.Lock()
RETRIABLE = {404, 408, 429, 499}


@dataclass
class Outcome:
    """A finished request: a response body, or an error message (a string)."""

    body: dict | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retriable: bool = False
    attempts: int = 1


def respond(url: str, body: dict, request_id: str, created: int) -> Outcome:
    """What the service records for one request: upstream attempts until one succeeds, a
    non-retriable failure comes, or UPSTREAM_ATTEMPTS retriable failures have been seen."""
    marker_text = json.dumps(body, ensure_ascii=False)
    outage = OUTAGE_MARKER.search(marker_text)
    down = outage.group(1) if outage and _first_time("outage" + url + marker_text) else None
    outcome = Outcome()
    for attempt in range(1, UPSTREAM_ATTEMPTS + 1):
        outcome = _attempt(url, body, request_id, created, marker_text, down)
        outcome.attempts = attempt
        if outcome.error is None or not outcome.retriable:
            break
    return outcome


def _attempt(url: str, body: dict, request_id: str, created: int, marker_text: str,
             down: str | None) -> Outcome:
    """One upstream call: what the mock model answers this time."""
    failure = FAIL_MARKER.search(marker_text)
    if failure:
        return _failure(failure.group(1))
    if down is not None:
        return _failure(down)
    flaky = FLAKY_MARKER.search(marker_text)
    if flaky and _first_time(url + marker_text):
        return _failure(flaky.group(1))
    try:
        if url == "/v1/embeddings":
            return _embeddings(body)
        return _generate(url, body, request_id, created, marker_text)
    except (AttributeError, TypeError, KeyError, IndexError, ValueError) as exc:
        upstream = _compact({"error": {"message": f"invalid request body: {exc}",
                                         "type": "invalid_request_error"}})
        return Outcome(error=_compact({"type": "NonRetriableHttpStatus",
                                         "details": {"status": 400, "body": upstream}}))


def _first_time(text: str) -> bool:
    """True the first time this process sees `text` (for [[flaky:NNN]])."""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    with _flaky_lock:
        if digest in _flaky_seen:
            return False
        _flaky_seen.add(digest)
        return True


def _failure(what: str) -> Outcome:
    retriable = what == "timeout" or (what.isdigit() and _retriable_status(int(what)))
    return Outcome(error=failure_message(what), retriable=retriable)


def _retriable_status(status: int) -> bool:
    return status >= 500 or status in RETRIABLE


def failure_message(what: str) -> str:
    """The error-file `message` for a [[fail:...]] marker."""
    if what == "timeout":
        return _compact({"type": "Timeout",
                           "details": "upstream request timed out (sandbox marker "
                                      "[[fail:timeout]])"})
    if what == "text":
        return "upstream connection closed unexpectedly (sandbox marker [[fail:text]]; " \
               "this message is plain text, not JSON)"
    status = int(what)
    kind = "RetriableHttpStatus" if _retriable_status(status) else "NonRetriableHttpStatus"
    upstream = _compact({"error": {"message": f"upstream answered HTTP {status} (sandbox "
                                                f"marker [[fail:{status}]])",
                                     "type": "sandbox_upstream_error", "code": status}})
    return _compact({"type": kind, "details": {"status": status, "body": upstream}})


# --- prompt extraction -------------------------------------------------------------------
def _text_of(content) -> str:
    """Text of a message content: a string or a list of parts with `text`."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(_text_of(p.get("text", p.get("content")) if isinstance(p, dict) else p)
                        for p in content)
    if isinstance(content, dict):
        return _text_of(content.get("text", content.get("content")))
    return str(content)


def _last_user(messages) -> str:
    if isinstance(messages, str):
        return messages
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages/input must be a non-empty list")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    chosen = users[-1] if users else messages[-1]
    return _text_of(chosen.get("content") if isinstance(chosen, dict) else chosen)


def prompt_text(url: str, body: dict) -> str:
    """The prompt the answer echoes: last user message / prompt / input."""
    if url == "/v1/completions":
        prompt = body.get("prompt", "")
        return " ".join(map(str, prompt)) if isinstance(prompt, list) else str(prompt)
    if url == "/v1/responses":
        return _last_user(body.get("input", ""))
    return _last_user(body.get("messages"))


def _max_tokens(url: str, body: dict) -> int | None:
    keys = ("max_output_tokens",) if url == "/v1/responses" else \
        ("max_tokens", "max_completion_tokens")
    for key in keys:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _schema_of(url: str, body: dict) -> tuple[bool, dict | None]:
    """(structured?, JSON Schema or None) from response_format / text.format / output_format."""
    if url == "/v1/responses":
        fmt = (body.get("text") or {}).get("format") or {}
    elif url == "/v1/messages":
        fmt = body.get("output_format") or {}
    else:
        fmt = body.get("response_format") or {}
    if not isinstance(fmt, dict):
        return False, None
    kind = fmt.get("type")
    if kind == "json_schema":
        schema = fmt.get("schema")
        if schema is None and isinstance(fmt.get("json_schema"), dict):
            schema = fmt["json_schema"].get("schema")
        return True, schema if isinstance(schema, dict) else {}
    if kind == "json_object":
        return True, None
    return False, None


# --- answers -----------------------------------------------------------------------------
def _answer(url: str, body: dict, marker_text: str) -> tuple[str, bool, int]:
    """(content, cut by max_tokens?, prompt word count)."""
    prompt = prompt_text(url, body)
    echo = "ECHO " + prompt
    structured, schema = _schema_of(url, body)
    if structured:
        if "[[bad_json]]" in marker_text:
            content = echo + " (this answer is not JSON)"
        elif "[[schema_invalid]]" in marker_text:
            content = json.dumps(_violating(schema, echo))
        elif schema is None:
            content = json.dumps({"answer": echo})
        else:
            content = json.dumps(schema_instance(schema, schema, echo))
    else:
        content = echo
    words = content.split()
    limit = _max_tokens(url, body)
    cut = limit is not None and 0 <= limit < len(words)
    if cut or not structured:  # plain answers are word-tokenised: "ECHO" + prompt words
        content = " ".join(words[:limit] if cut else words)
    return content, cut, len(prompt.split())


def _generate(url: str, body: dict, request_id: str, created: int, marker_text: str) -> Outcome:
    content, cut, prompt_words = _answer(url, body, marker_text)
    out_words = len(content.split())
    model = body.get("model")
    short = request_id.replace("-", "")[:24]
    if url == "/v1/chat/completions":
        usage = {"prompt_tokens": prompt_words, "completion_tokens": out_words,
                 "total_tokens": prompt_words + out_words}
        answer = {"id": f"chatcmpl-{short}", "object": "chat.completion", "created": created,
                  "model": model, "choices": [{
                      "index": 0, "message": {"role": "assistant", "content": content},
                      "logprobs": None, "finish_reason": "length" if cut else "stop"}],
                  "usage": usage}
    elif url == "/v1/completions":
        usage = {"prompt_tokens": prompt_words, "completion_tokens": out_words,
                 "total_tokens": prompt_words + out_words}
        answer = {"id": f"cmpl-{short}", "object": "text_completion", "created": created,
                  "model": model, "choices": [{
                      "index": 0, "text": content, "logprobs": None,
                      "finish_reason": "length" if cut else "stop"}],
                  "usage": usage}
    elif url == "/v1/responses":
        answer = {"id": f"resp_{short}", "object": "response", "created_at": created,
                  "model": model, "status": "incomplete" if cut else "completed",
                  "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
                  "output": [{"type": "message", "id": f"msg_{short}",
                              "status": "incomplete" if cut else "completed",
                              "role": "assistant",
                              "content": [{"type": "output_text", "text": content,
                                           "annotations": []}]}],
                  "usage": {"input_tokens": prompt_words, "output_tokens": out_words,
                            "total_tokens": prompt_words + out_words}}
    else:  # /v1/messages
        answer = {"id": f"msg_{short}", "type": "message", "role": "assistant", "model": model,
                  "content": [{"type": "text", "text": content}],
                  "stop_reason": "max_tokens" if cut else "end_turn", "stop_sequence": None,
                  "usage": {"input_tokens": prompt_words, "output_tokens": out_words}}
    return Outcome(body=answer, prompt_tokens=prompt_words, completion_tokens=out_words)


def embedding_of(text: str) -> list[float]:
    """8 floats in [-1, 1] from the SHA-256 of the text."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return [round(int.from_bytes(digest[2 * i:2 * i + 2], "big") / 32767.5 - 1.0, 6)
            for i in range(8)]


def _embeddings(body: dict) -> Outcome:
    raw = body.get("input")
    if raw is None:
        raise ValueError("'input' is required for embeddings")
    inputs = raw if isinstance(raw, list) else [raw]
    texts = [i if isinstance(i, str) else json.dumps(i) for i in inputs]
    tokens = sum(len(t.split()) for t in texts)
    answer = {"object": "list", "model": body.get("model"),
              "data": [{"object": "embedding", "index": n, "embedding": embedding_of(t)}
                       for n, t in enumerate(texts)],
              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return Outcome(body=answer, prompt_tokens=tokens)


# --- JSON Schema instances ---------------------------------------------------------------
def _resolve(ref: str, root: dict) -> dict:
    node = root
    for part in ref.lstrip("#/").split("/"):
        if part:
            node = node.get(part.replace("~1", "/").replace("~0", "~"), {})
    return node if isinstance(node, dict) else {}


def schema_instance(schema, root: dict, text: str, depth: int = 0):
    """A value valid for the (common subset of) JSON Schema, with strings from `text`."""
    if not isinstance(schema, dict) or depth > 12:
        return text
    if "$ref" in schema:
        return schema_instance(_resolve(schema["$ref"], root), root, text, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        options = [o for o in schema.get(key) or [] if not (isinstance(o, dict)
                                                             and o.get("type") == "null")]
        if options:
            return schema_instance(options[0], root, text, depth + 1)
    if schema.get("allOf"):
        merged: dict = {"type": "object", "properties": {}, "required": []}
        for part in schema["allOf"]:
            part = _resolve(part["$ref"], root) if "$ref" in part else part
            merged["properties"].update(part.get("properties", {}))
            merged["required"] += part.get("required", [])
        return schema_instance(merged, root, text, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema \
            else "string"
    if kind == "object":
        props = schema.get("properties") or {}
        out = {name: schema_instance(sub, root, text, depth + 1) for name, sub in props.items()}
        for name in schema.get("required") or []:
            out.setdefault(name, text)
        return out
    if kind == "array":
        count = max(int(schema.get("minItems", 0)), 1)
        if "maxItems" in schema:
            count = min(count, int(schema["maxItems"]))
        prefix = schema.get("prefixItems") or []
        items = [schema_instance(p, root, text, depth + 1) for p in prefix[:count]]
        while len(items) < count:
            items.append(schema_instance(schema.get("items", {}), root, text, depth + 1))
        return items
    if kind in ("integer", "number"):
        return _number(schema, kind, len(text.split()))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string(schema, text)


def _number(schema: dict, kind: str, guess: int):
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    value = float(guess)
    if low is not None:
        value = max(value, low + (1 if "exclusiveMinimum" in schema and "minimum" not in schema
                                  else 0))
    if high is not None:
        value = min(value, high - (1 if "exclusiveMaximum" in schema and "maximum" not in schema
                                   else 0))
    return int(value) if kind == "integer" else value


def _string(schema: dict, text: str) -> str:
    formats = {"date": "2024-01-01", "date-time": "2024-01-01T00:00:00Z",
               "time": "00:00:00Z", "email": "echo@example.com",
               "uuid": "00000000-0000-4000-8000-000000000000", "uri": "https://example.com/"}
    value = formats.get(schema.get("format"), text)
    low = int(schema.get("minLength", 0))
    if len(value) < low:
        value += "x" * (low - len(value))
    if "maxLength" in schema:
        value = value[: int(schema["maxLength"])]
    return value


def _violating(schema: dict | None, text: str):
    """JSON that does not match the schema: the wrong top-level type."""
    kind = (schema or {}).get("type", "object")
    if kind == "object" or (isinstance(kind, list) and "object" in kind):
        return [text]
    return {"schema_invalid": text}
