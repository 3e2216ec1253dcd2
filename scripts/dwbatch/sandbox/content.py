"""GET /files/{id}/content: input files, and output/error files as partial-result views.

Output and error files answer `skip` (lines to skip), `limit` (1..101), `X-Incomplete`
(true while the batch is unfinished, or while a `limit` page leaves lines behind) and
`X-Last-Line` (skip + lines in this answer). Without `limit` the body holds exactly the lines
counted when the request arrived. Every line ends with "\\n". The bytes are streamed from
disk in large runs, so a million-line download stays fast and flat in memory.
With --openai-compat: no partial-result headers and `skip`/`limit` are ignored.
"""

from __future__ import annotations

from array import array

from .httpio import NDJSON, ApiError, Response
from .store import Batch, FileRecord

MAX_LIMIT = 101
READ_BYTES = 1 << 20


def int_param(query: dict, name: str, default: int | None) -> int | None:
    values = query.get(name)
    if not values or values[0] == "":
        return default
    try:
        return int(values[0])
    except ValueError:
        raise ApiError(400, f"Failed to deserialize query string: {name}: invalid digit found "
                            "in string") from None


def content_response(rec: FileRecord, batch: Batch | None, query: dict,
                     compat: bool) -> Response:
    """Build the answer for one file's content (call with the store lock held)."""
    skip = 0 if compat else max(0, int_param(query, "skip", 0) or 0)
    limit = None if compat else int_param(query, "limit", None)
    if limit is not None:
        limit = max(1, min(limit, MAX_LIMIT))
    if rec.view is not None:
        offsets, lengths, total = rec.view.offsets, rec.view.lengths, len(rec.view)
        newline = False
    else:
        offsets, lengths, total = rec.index.offsets, rec.index.lengths, rec.index.count
        newline = True
    start = min(skip, total)
    end = total if limit is None else min(total, start + limit)
    offs, lens = offsets[start:end], lengths[start:end]
    count = end - start
    length = sum(lens) + (count if newline else 0)
    headers: list[tuple[str, str]] = []
    if not compat:
        more = limit is not None and end < total
        if rec.view is not None:
            unfinished = batch is not None and not batch.terminal
            headers.append(("x-incomplete", "true" if (unfinished or more) else "false"))
            headers.append(("x-last-line", str(skip + count)))
        elif limit is not None:
            headers.append(("x-incomplete", "true" if more else "false"))
            headers.append(("x-last-line", str(skip + count)))
    last = (lens[-1] + (1 if newline else 0)) if count else 0
    return Response(status=200, content_type=NDJSON, headers=headers, length=length,
                    stream=stream_lines(rec.path, offs, lens, newline), last_line_bytes=last)


def stream_lines(path: str, offsets: array, lengths: array, newline: bool):
    """Yield the lines' bytes in order, reading contiguous runs of the file at once.

    `newline`: stored lengths exclude the line end (input files), so add "\\n" per line.
    """
    if not offsets:
        return
    with open(path, "rb") as f:
        run_start = offsets[0]
        run_end = run_start + lengths[0]
        for off, length in zip(offsets[1:], lengths[1:], strict=False):
            gap = 1 if newline else 0
            if off == run_end + gap:
                run_end = off + length
                continue
            yield from _read_run(f, run_start, run_end, newline)
            run_start, run_end = off, off + length
        yield from _read_run(f, run_start, run_end, newline)


def _read_run(f, start: int, end: int, newline: bool):
    f.seek(start)
    left = end - start
    while left > 0:
        data = f.read(min(READ_BYTES, left))
        if not data:
            raise OSError(f"stored file {f.name} is shorter than its index")
        left -= len(data)
        yield data
    if newline:
        yield b"\n"
