"""What a request line says about its answer: its endpoint, and whether it asks for JSON.

Shared by the index (which notes both for every request line) and the join (which classifies
each answer by them).
"""

from __future__ import annotations

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
             "/v1/messages")
ENDPOINT_CODES = {e: i for i, e in enumerate(ENDPOINTS)}
URL_CODES = {e.encode(): i for i, e in enumerate(ENDPOINTS)}

# Flag bits stored per request line.
STRUCTURED = 1


def endpoint_of(url: str | None) -> str:
    """The endpoint path of a request line's url ('/v1/...'), tolerant of a missing /v1."""
    url = (url or "").split("?", 1)[0].rstrip("/")
    if url and not url.startswith("/v1/"):
        url = "/v1" + (url if url.startswith("/") else "/" + url)
    return url


def structured_schema(body: dict) -> tuple[bool, dict | None]:
    """(asked for JSON?, the JSON Schema or None) of a request body, for every endpoint."""
    if not isinstance(body, dict):
        return False, None
    candidates = [body.get("response_format")]
    text = body.get("text")
    if isinstance(text, dict):
        candidates.append(text.get("format"))
    candidates.append(body.get("output_format"))
    config = body.get("output_config")
    if isinstance(config, dict):
        candidates.append(config.get("format"))
    for fmt in candidates:
        if not isinstance(fmt, dict):
            continue
        kind = fmt.get("type")
        if kind == "json_schema":
            inner = fmt.get("json_schema") if isinstance(fmt.get("json_schema"), dict) else fmt
            schema = inner.get("schema")
            return True, schema if isinstance(schema, dict) else None
        if kind == "json_object":
            return True, None
    return False, None
