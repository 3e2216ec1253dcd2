"""Keep DOUBLEWORD_API_KEY out of everything the scripts print or write."""

from __future__ import annotations

import os

API_KEY_ENV = "DOUBLEWORD_API_KEY"
REDACTED = "[REDACTED]"


def api_key_from_env() -> str | None:
    """The key, from the environment only (never from the command line)."""
    key = os.environ.get(API_KEY_ENV, "").strip()
    return key or None


def redact(text: str, key: str | None = None) -> str:
    """Return text with the API key (given, or from the environment) replaced."""
    if text is None:
        return text
    key = key if key is not None else api_key_from_env()
    if key and len(key) >= 4 and key in text:
        text = text.replace(key, REDACTED)
    return text
