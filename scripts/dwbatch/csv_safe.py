"""Spreadsheet-safe cells for every CSV/TSV the scripts write.

Why: a cell that starts with `=`, `+`, `-` or `@` (or a tab or carriage return) is read as a
formula by spreadsheet programs, so a model's answer or a server's error text could run
in the user's spreadsheet. Cells that came from the model or the server get a leading `'`
(the usual escape, shown as text); plain numbers such as `-3.5` stay numbers. The user's own
input cells are written as they were read: they are the user's data, not ours to change.
"""

from __future__ import annotations

import re

_RISKY_FIRST = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\Z")


def cell(text: str) -> str:
    """The text as a spreadsheet shows it, never as a formula."""
    if text and text.startswith(_RISKY_FIRST) and not _PLAIN_NUMBER.match(text):
        return "'" + text
    return text
