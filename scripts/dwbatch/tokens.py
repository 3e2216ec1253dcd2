"""A cheap estimate of input tokens, for budgets and cost checks before submitting.

About four bytes of UTF-8 text per token (close for English, and it does not undercount
non-Latin scripts the way counting characters would), plus a few tokens of overhead per
message and per request. It walks only the text fields of a body, so it costs almost nothing
per line; it is an estimate, not a tokenizer: the server's own count is the truth.
"""

from __future__ import annotations

from typing import Any

BYTES_PER_TOKEN = 4
PER_MESSAGE = 4      # role and separators of one chat message
PER_REQUEST = 3      # the reply primer every chat-style request carries


def text_tokens(text: str) -> int:
    """Estimated tokens of one string."""
    n = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    return (n + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN


def content_tokens(value: Any) -> int:
    """Estimated tokens of a content value: a string, a list of strings or of content parts
    ({"type": "text", "text": ...}), a list of token ids, or nested message lists (the
    responses API); anything else counts zero."""
    t = type(value)
    if t is str:
        return text_tokens(value)
    if t is not list:
        return 0
    total = 0
    for item in value:
        ti = type(item)
        if ti is str:
            total += text_tokens(item)
        elif ti is int:
            total += 1  # a token id
        elif ti is dict:
            text = item.get("text")
            if type(text) is str:
                total += text_tokens(text)
            content = item.get("content")
            if content is not None:
                total += content_tokens(content) + PER_MESSAGE
        elif ti is list:
            total += content_tokens(item)
    return total


def estimate_body_tokens(url: str, body: dict) -> int:
    """Estimated input tokens of one request body sent to `url`."""
    total = PER_REQUEST
    messages = body.get("messages")
    if type(messages) is list:
        for m in messages:
            if type(m) is dict:
                total += content_tokens(m.get("content")) + PER_MESSAGE
    for key in ("prompt", "input", "system", "instructions"):
        if key in body:
            total += content_tokens(body[key])
    return total
