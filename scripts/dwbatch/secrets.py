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
import re
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


class ByteScrubber:
    """Redacts the key in downloaded bytes, cheaply enough for every block of a download.

    `probe` is the longest run of the key's letters, digits, `-`, `_` and `.`: no escaping
    (JSON, repr, URL) changes those, so every spelling of the key contains it, and one fast
    search per block tells whether anything needs replacing at all.
    """

    def __init__(self, key: str) -> None:
        self.forms = [form.encode() for form in key_spellings(key)]
        runs = re.findall(r"[A-Za-z0-9._-]+", key)
        longest = max(runs, key=len) if runs else ""
        self.probe = longest.encode() if len(longest) >= 4 else None
        self.reach = len(self.probe) if self.probe else max(len(f) for f in self.forms)

    def has_key(self, data, start: int = 0, end: int | None = None) -> bool:
        end = len(data) if end is None else end
        if self.probe is not None:
            return data.find(self.probe, start, end) >= 0
        return any(data.find(form, start, end) >= 0 for form in self.forms)

    def clean(self, data: bytes) -> bytes:
        for form in self.forms:
            data = data.replace(form, REDACTED.encode())
        return data


def byte_scrubber(key: str | None) -> ByteScrubber | None:
    """A ByteScrubber for a key long enough to redact (see MIN_KEY_LENGTH), else None."""
    return ByteScrubber(key) if key and len(key) >= MIN_KEY_LENGTH else None
