"""JSON lines read and written fast, with exactly json's results.

json.loads sniffs the encoding of bytes and goes through two Python layers per call, and
json.dumps builds a new encoder per call; a join reads and writes millions of lines, so these
call the C scanner and encoder directly, and leave anything unusual (leading blanks, odd
trailing characters, an error) to json's own decode, which accepts or refuses it exactly as
json.loads would.
"""

from __future__ import annotations

import json
import json.scanner

LINE_ENDS = ("", "\n", "\r\n")

def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


_LENIENT = json.JSONDecoder()
# What the server sends is parsed strictly: NaN/Infinity are not JSON, and a line that has them
# is a bad line, not a results file that is not JSON later. (Python 3.11+ also refuses
# integers of more than 4,300 digits, with ValueError: a bad line too.)
_STRICT = json.JSONDecoder(parse_constant=_reject_constant)
strict_decode = _STRICT.decode  # (the whole rule, for what the scanner does not take as is)
strict_scan = json.scanner.make_scanner(_STRICT)  # (value, end) of text from an index


def _parser(scan, decode):
    """decode(text), the C scanner straight away: anything it does not take as is (leading
    blanks, odd trailing characters, an error) goes through decode, which accepts or refuses
    it as it always would."""
    def parse(text: str):
        try:
            value, end = scan(text, 0)
        except StopIteration:
            return decode(text)
        if text[end:] not in LINE_ENDS:
            return decode(text)
        return value

    return parse


_lenient_loads = _parser(json.scanner.make_scanner(_LENIENT), _LENIENT.decode)
strict_loads = _parser(strict_scan, strict_decode)


def loads(line: bytes):
    """json.loads of a UTF-8 line (what json.loads accepts, without its encoding sniffing)."""
    return _lenient_loads(line.decode("utf-8"))


# The keys of the usual record (an ok or cut answer in text, with the usual usage), in order.
_USUAL_KEYS = ("custom_id", "status", "content", "finish_reason", "usage", "error", "batch_id",
               "attempts")
_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


def _record_encoder():
    """JSON text of a record, as json.JSONEncoder(ensure_ascii=False).encode gives it.

    encode() builds a new C encoder for every call; a record is written a million times, so
    the C encoder is made once here (records come from parsed JSON: no cycles to check). The
    usual record is put together from its strings' JSON text, the same characters the encoder
    writes, in about half its time (tests compare both on every kind of record).
    """
    plain = json.JSONEncoder(ensure_ascii=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return plain.encode
    text = json.encoder.encode_basestring
    try:
        encoder = make(None, plain.default, text, None, ": ", ", ", False, False, True)
    except TypeError:  # another signature: keep the plain encoder
        return plain.encode
    join = "".join

    def encode(record: dict) -> str:
        if len(record) == 8 and tuple(record) == _USUAL_KEYS:
            cid, status, content, finish, usage, error, batch, attempts = record.values()
            if error is None and type(content) is str and type(finish) is str \
                    and type(cid) is str and type(status) is str and type(batch) is str \
                    and type(attempts) is int and type(usage) is dict and len(usage) == 3 \
                    and tuple(usage) == _USAGE_KEYS:
                prompt, completion, total = usage.values()
                if type(prompt) is int and type(completion) is int and type(total) is int:
                    return (f'{{"custom_id": {text(cid)}, "status": {text(status)}, '
                            f'"content": {text(content)}, "finish_reason": {text(finish)}, '
                            f'"usage": {{"prompt_tokens": {prompt}, "completion_tokens": '
                            f'{completion}, "total_tokens": {total}}}, "error": null, '
                            f'"batch_id": {text(batch)}, "attempts": {attempts}}}')
        return join(encoder(record, 0))

    return encode


record_text = _record_encoder()  # JSON text of one record (no line ending)
