"""Write batch lines into files that never pass the per-file limits, all or nothing.

One output path OUT.jsonl becomes OUT.jsonl when everything fits in one file, else
OUT-001.jsonl, OUT-002.jsonl, ... (a new file starts when the next line would pass
max_file_bytes or max_requests; a line is never split). The same lines and limits always give
the same files. Every file is written to a temporary name beside its final one and renamed
only when all of them are complete, so an error or Ctrl-C leaves no output at all, not even a
partial file; earlier output that is no longer part of the result (OUT.jsonl or OUT-NNN.jsonl
from a previous run with other limits) is then removed, so a glob never mixes runs.

Public interface:
  ShardWriter(out_path, *, max_file_bytes, max_requests, numbered=False, protect=())
      .write(line, *, where, custom_id, url, model, tokens); .commit() -> list[ShardStats];
      used as a context manager (commit on success, discard on error).
  split_file(path, out_path, *, max_file_bytes, max_requests, numbered=False)
      -> list[ShardStats]: split an existing (already validated) batch file into shards.
  shard_path(out_path, index, width=3) -> "OUT-001.jsonl"
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO

from . import limits
from .errors import InputError
from .fsutil import make_temp_beside


@dataclass
class ShardStats:
    """One written file: where, how many requests and bytes, its sha256, which url and
    models it uses, its input-token estimate and which source lines (first, last) it holds."""

    path: str
    requests: int = 0
    bytes: int = 0
    sha256: str = ""
    url: str | None = None
    models: dict[str, int] = field(default_factory=dict)
    input_tokens_estimate: int = 0
    first_line: int | None = None
    last_line: int | None = None

    @property
    def endpoint(self) -> str | None:
        return self.url

    def to_dict(self) -> dict:
        return {"path": self.path, "requests": self.requests, "bytes": self.bytes,
                "sha256": self.sha256, "endpoint": self.url,
                "models": dict(sorted(self.models.items())),
                "input_tokens_estimate": self.input_tokens_estimate}


def shard_path(out_path: str, index: int, width: int = 3) -> str:
    """OUT.jsonl, 1 -> OUT-001.jsonl (the suffix is kept; no suffix -> OUT-001)."""
    root, ext = os.path.splitext(out_path)
    return f"{root}-{index:0{width}d}{ext}"


def existing_outputs(out_path: str) -> list[str]:
    """Files that an earlier run for out_path may have left: OUT.jsonl and OUT-NNN.jsonl."""
    directory = os.path.dirname(out_path) or "."
    root, ext = os.path.splitext(os.path.basename(out_path))
    pattern = re.compile(re.escape(root) + r"-\d{3,}" + re.escape(ext) + r"\Z")
    found = []
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            if name == os.path.basename(out_path) or pattern.match(name):
                found.append(os.path.join(os.path.dirname(out_path), name))
    return sorted(found)


def is_output_of(candidate: str, out_path: str) -> bool:
    """True when `candidate` is out_path or one of its numbered shards (same directory)."""
    a, b = os.path.realpath(candidate), os.path.realpath(out_path)
    if os.path.dirname(a) != os.path.dirname(b):
        return False
    root, ext = os.path.splitext(os.path.basename(b))
    name = os.path.basename(a)
    return name == os.path.basename(b) or bool(
        re.fullmatch(re.escape(root) + r"-\d{3,}" + re.escape(ext), name))


class _Part:
    def __init__(self, directory: str, base: str) -> None:
        fd, self.tmp = make_temp_beside(os.path.join(directory, base), suffix=".part")
        self.file: IO[bytes] = os.fdopen(fd, "wb", buffering=1 << 20)
        self.hash = hashlib.sha256()
        self.stats = ShardStats(path="")

    def finish(self) -> None:
        """Flush, fsync and close the file once it is full: only the file being written is
        open, so a split into thousands of shards holds one buffer and one descriptor."""
        if not self.file.closed:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()


class ShardWriter:
    """Streams lines into size- and count-limited files; see the module docstring.

    `numbered=True` names even a single file OUT-001.jsonl. `protect` lists paths that must
    never be removed as stale output (the inputs). After commit(), `.removed` lists stale
    files that were removed."""

    def __init__(self, out_path: str | os.PathLike, *,
                 max_file_bytes: int = limits.MAX_FILE_BYTES,
                 max_requests: int = limits.MAX_REQUESTS, numbered: bool = False,
                 protect: Iterable[str] = ()) -> None:
        self.out_path = os.fspath(out_path)
        self.directory = os.path.dirname(os.path.abspath(self.out_path))
        if not os.path.isdir(self.directory):
            raise InputError(f"output directory {os.path.dirname(self.out_path)!r} does not "
                             "exist", hint="create it first, or choose another -o path")
        self.max_file_bytes = max_file_bytes
        self.max_requests = max_requests
        self.numbered = numbered
        self.protect = {os.path.realpath(p) for p in protect}
        self.parts: list[_Part] = []
        self.removed: list[str] = []
        self._done = False

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._done:
            self.discard()

    def write(self, line: bytes, *, where: str = "", custom_id: str | None = None,
              url: str | None = None, model: str | None = None, tokens: int = 0,
              source_line: int | None = None) -> None:
        """Append one request line (bytes without its newline). `where`/`custom_id` name it
        in the error raised when the line alone is larger than max_file_bytes."""
        size = len(line) + 1
        if size > self.max_file_bytes:
            name = f" (custom_id {custom_id!r})" if custom_id is not None else ""
            raise InputError(
                f"{where}{name}: this request is {size:,} bytes, larger than the per-file "
                f"limit of {self.max_file_bytes:,} bytes (--max-file-bytes); a line cannot be "
                "split across files",
                hint="shorten the request or raise --max-file-bytes")
        part = self.parts[-1] if self.parts else None
        if part is None or part.stats.requests >= self.max_requests or \
                part.stats.bytes + size > self.max_file_bytes:
            if part is not None:
                part.finish()
            part = _Part(self.directory, os.path.basename(self.out_path))
            self.parts.append(part)
        part.file.write(line)
        part.file.write(b"\n")
        part.hash.update(line)
        part.hash.update(b"\n")
        s = part.stats
        s.requests += 1
        s.bytes += size
        if url is not None and s.url is None:
            s.url = url
        if model is not None:
            s.models[model] = s.models.get(model, 0) + 1
        s.input_tokens_estimate += tokens
        if source_line is not None:
            s.first_line = source_line if s.first_line is None else s.first_line
            s.last_line = source_line

    @property
    def requests(self) -> int:
        return sum(p.stats.requests for p in self.parts)

    def commit(self) -> list[ShardStats]:
        """Flush, fsync and rename every file to its final name; remove stale output.
        Returns the files in order. With no lines written, nothing is written: []."""
        names = self._final_names()
        renamed: list[str] = []
        try:
            for part in self.parts:
                part.finish()
            for part, name in zip(self.parts, names, strict=True):
                os.replace(part.tmp, name)
                part.tmp = None
                renamed.append(name)
                part.stats.path = name
                part.stats.sha256 = part.hash.hexdigest()
        except BaseException:
            for name in renamed:  # a rename failed halfway: take back what was renamed
                with contextlib.suppress(OSError):
                    os.unlink(name)
            self.discard()
            raise
        self._done = True
        self._remove_stale(set(names))
        if self.parts and os.name == "posix":
            with contextlib.suppress(OSError):
                fd = os.open(self.directory, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        return [p.stats for p in self.parts]

    def discard(self) -> None:
        """Remove every temporary file; nothing of this run stays on disk."""
        for part in self.parts:
            with contextlib.suppress(OSError):
                part.file.close()
            if part.tmp:
                with contextlib.suppress(OSError):
                    os.unlink(part.tmp)
                part.tmp = None

    def _final_names(self) -> list[str]:
        n = len(self.parts)
        if n == 1 and not self.numbered:
            return [self.out_path]
        width = max(3, len(str(n)))
        return [shard_path(self.out_path, i + 1, width) for i in range(n)]

    def _remove_stale(self, keep: set[str]) -> None:
        keep_real = {os.path.realpath(k) for k in keep}
        for path in existing_outputs(self.out_path):
            real = os.path.realpath(path)
            if real in keep_real or real in self.protect:
                continue
            with contextlib.suppress(OSError):
                os.unlink(path)
                self.removed.append(path)


def split_file(path: str | os.PathLike, out_path: str | os.PathLike, *,
               max_file_bytes: int = limits.MAX_FILE_BYTES,
               max_requests: int = limits.MAX_REQUESTS,
               numbered: bool = False) -> list[ShardStats]:
    """Split an existing batch file into shards under the limits, streaming, all or nothing.

    The lines are copied byte for byte (blank lines dropped, line endings normalised to \\n),
    in order; validate the file first (validate.check_files with split_oversize=True), since
    this only splits. Shards are named from out_path as described in the module docstring
    (`numbered=True` to get OUT-001.jsonl even for one shard, e.g. for a job's shard folder).
    out_path must not be the input itself or one of its would-be shard names. ShardStats.url
    and .models stay empty here (the lines are not parsed); first_line/last_line give each
    shard's range of physical source lines.
    """
    path, out_path = os.fspath(path), os.fspath(out_path)
    if is_output_of(path, out_path):
        raise InputError(f"output {out_path!r} would overwrite the input {path!r}",
                         hint="choose another output path (e.g. in a separate folder)")
    with ShardWriter(out_path, max_file_bytes=max_file_bytes, max_requests=max_requests,
                     numbered=numbered, protect=[path]) as writer:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if raw.isspace():
                    continue
                line = raw.rstrip(b"\r\n")
                writer.write(line, where=f"{path} line {lineno}",
                             custom_id=_id_of(line) if len(line) + 1 > max_file_bytes
                             else None, source_line=lineno)
        if writer.requests == 0:
            raise InputError(f"{path} contains no requests (empty or blank lines only)",
                             hint="give a file with one JSON request per line")
        return writer.commit()


def _id_of(line: bytes) -> str | None:
    from .validate import id_from_text

    return id_from_text(line[:4096].decode("utf-8", "replace"))
