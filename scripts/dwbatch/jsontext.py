"""Parsing JSON lines fast, the way json.loads would: the C scanner straight away.

json.loads sniffs the encoding of bytes and goes through two Python layers per call; a join
parses millions of lines, so these call the scanner directly and leave anything unusual
(leading blanks, odd trailing characters, an error) to json's own decode, which accepts or
refuses it exactly as json.loads would.
"""

from __future__ import annotations

import json
import json.scanner

LINE_ENDS = ("", "\n", "\r\n")

_decode = json.JSONDecoder().decode
_scan = json.scanner.make_scanner(json.JSONDecoder())


def loads(line: bytes):
    """json.loads for a UTF-8 line, without the encoding sniffing: the C scanner straight
    away; anything it does not take as is (leading blanks, odd trailing bytes, an error)
    goes through json's own decode, which accepts or refuses it as json.loads would."""
    text = line.decode("utf-8")
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        return _decode(text)
    if text[end:] not in LINE_ENDS:
        return _decode(text)
    return value


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


# What the server sends is parsed strictly: NaN/Infinity are not JSON, and a line that has them
# is a bad line, not a results file that is not JSON later. (Python 3.11+ also refuses
# integers of more than 4,300 digits, with ValueError: a bad line too.)
_STRICT = json.JSONDecoder(parse_constant=_reject_constant)
strict_decode = _STRICT.decode  # (the whole rule, for what the scanner does not take as is)
strict_scan = json.scanner.make_scanner(_STRICT)  # (value, end) of text from an index


def strict_loads(text: str):
    """strict_decode(text), the C scanner straight away: anything it does not take as is
    (leading blanks, odd trailing characters, an error) goes through decode, which accepts or
    refuses it as it always would."""
    try:
        value, end = strict_scan(text, 0)
    except StopIteration:
        return strict_decode(text)
    if text[end:] not in LINE_ENDS:
        return strict_decode(text)
    return value
