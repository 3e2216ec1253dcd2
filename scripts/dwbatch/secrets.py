"""Keep DOUBLEWORD_API_KEY out of everything the scripts print or write.

A key can reach output in other spellings than its own: inside JSON (`"` and `\\` escaped,
once, or twice when a JSON text is itself put in JSON), in a Python repr, or URL-encoded.
`redact` replaces every one of those. Keys shorter than MIN_KEY_LENGTH are refused where the
key is read (config.require_api_key): a two-letter key could not be told apart from ordinary
words, so it could neither be redacted reliably nor be a real key.
"""

from __future__ import annotations

import json
import os
from urllib.parse import quote

API_KEY_ENV = "DOUBLEWORD_API_KEY"
REDACTED = "[REDACTED]"
MIN_KEY_LENGTH = 8


def api_key_from_env() -> str | None:
    """The key, from the environment only (never from the command line)."""
    key = os.environ.get(API_KEY_ENV, "").strip()
    return key or None


def key_spellings(key: str) -> list[str]:
    """The ways `key` can appear in text we produce, longest first."""
    once = json.dumps(key)[1:-1]
    forms = {key, once, json.dumps(once)[1:-1], repr(key)[1:-1], quote(key, safe="")}
    return sorted(forms, key=len, reverse=True)


def redact(text: str, key: str | None = None) -> str:
    """Return text with the API key (given, or from the environment) replaced, in any of
    its spellings (see key_spellings)."""
    if not text:
        return text
    key = key if key is not None else api_key_from_env()
    if not key or len(key) < MIN_KEY_LENGTH:  # refused before use: never sent anywhere
        return text
    for form in key_spellings(key):
        if form in text:
            text = text.replace(form, REDACTED)
    return text
