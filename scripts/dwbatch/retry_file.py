"""The retry file: the original request lines of every record worth another try.

The lines are copied byte for byte from the submitted input (so custom_ids stay the same and a
later fetch of original + retry job merges them), except that `truncated` requests get a
larger token limit (twice the old one unless told otherwise: the same limit would cut the
answer again). Which records go in is the retry policy's call (dwbatch.retry_policy). The file
is a plain batch file that submit.py accepts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from dataclasses import dataclass, field

from .errors import InputError
from .fsutil import atomic_open
from .reconcile import usage_numbers
from .request_lines import endpoint_of
from .retry_policy import NOT_RETRIED, RetryPolicy

RETRYABLE = ("error", "truncated", "invalid_json", "schema_invalid", "missing")


def parse_statuses(text: str | None) -> tuple[str, ...]:
    """The statuses named in a comma list (default: every retryable one)."""
    if not text:
        return RETRYABLE
    picked = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in picked if s not in RETRYABLE]
    if bad or not picked:
        raise InputError(
            f"--retry-status: {', '.join(bad) or '(empty)'} is not a retryable status",
            hint=f"use a comma list of: {','.join(RETRYABLE)}")
    return picked


@dataclass(frozen=True)
class TokenRaise:
    """How to raise the token limit of truncated requests: a factor ('2x') or a number."""

    factor: float | None = None
    absolute: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> TokenRaise | None:
        """'2x', '4096', 'same' (copy unchanged); None (not given) means the default 2x."""
        if text is None:
            return DEFAULT_TOKEN_RAISE
        t = text.strip().lower()
        if t == "same":
            return None
        try:
            if t.endswith("x"):
                factor = float(t[:-1])
                if factor > 1:
                    return cls(factor=factor)
            else:
                value = int(t)
                if value > 0:
                    return cls(absolute=value)
        except ValueError:
            pass
        raise InputError(
            f"--truncated-max-tokens: {text!r} is neither a factor above 1 (e.g. 2x) nor a "
            "positive token count (e.g. 4096)",
            hint="examples: --truncated-max-tokens 2x, --truncated-max-tokens 4096, "
                 "--truncated-max-tokens same (copy the lines unchanged)")


DEFAULT_TOKEN_RAISE = TokenRaise(factor=2.0)


def _token_field(endpoint: str, body: dict) -> str:
    if endpoint.endswith("/responses"):
        return "max_output_tokens"
    if endpoint.endswith("/chat/completions") and "max_completion_tokens" in body:
        return "max_completion_tokens"
    return "max_tokens"


def raise_max_tokens(line: bytes, record: dict, how: TokenRaise) -> bytes:
    """The request line with its token limit raised (re-serialised as compact JSON)."""
    obj = json.loads(line)
    body = obj.get("body")
    if not isinstance(body, dict):
        return line
    key = _token_field(endpoint_of(obj.get("url")), body)
    current = body.get(key)
    if how.absolute is not None:
        new = how.absolute if not isinstance(current, int) else max(how.absolute, current)
    else:
        base = current if isinstance(current, int) and current > 0 else \
            usage_numbers(record.get("usage"))[1]
        if base <= 0:
            return line
        new = math.ceil(base * how.factor)
    body[key] = new
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass
class RetryWriter:
    """Streams retry lines into `path` atomically; with no line, no file (a stale one goes)."""

    path: str
    policy: RetryPolicy
    raise_tokens: TokenRaise | None = DEFAULT_TOKEN_RAISE
    counts: dict = field(default_factory=dict)  # lines written, per status
    sha256: str | None = None
    _digest: object = None
    _stack: contextlib.ExitStack | None = None
    _f: object = None
    _kept: bool = False

    @property
    def lines(self) -> int:
        return sum(self.counts.values())

    def consider(self, record: dict, request_line) -> int:
        """Ask the policy about one record; write its request line when it is to be retried.
        `request_line()` gives the original line (read only when needed). Returns the bytes
        written."""
        if record["status"] in NOT_RETRIED:  # (most records: no need to ask)
            return 0
        if self.policy.decide(record) == "retry":
            return self.add(record, request_line())
        return 0

    def add(self, record: dict, line: bytes) -> int:
        """Write the request line of `record`; returns the bytes written."""
        if record["status"] == "truncated" and self.raise_tokens is not None:
            line = raise_max_tokens(line, record, self.raise_tokens)
        self.write_bytes(line + b"\n")
        self.counts[record["status"]] = self.counts.get(record["status"], 0) + 1
        return len(line) + 1

    def write_bytes(self, data: bytes) -> None:
        """Bytes as they are: lines an earlier run wrote (their counts come with resume())."""
        if not data:
            return
        if self._f is None:
            self._stack = contextlib.ExitStack()
            self._f = self._stack.enter_context(atomic_open(self.path, "wb"))
            self._digest = hashlib.sha256()
        self._f.write(data)
        self._digest.update(data)

    def resume(self, counts: dict) -> None:
        """Start from the counts of the file an earlier run wrote, whose lines are about to be
        copied into this one (write_bytes), with some replaced (discount, then add)."""
        self.counts = dict(counts)

    def discount(self, record: dict) -> None:
        """Take back the line an earlier run wrote for `record` (it is not copied)."""
        self.counts[record["status"]] -= 1
        if not self.counts[record["status"]]:
            del self.counts[record["status"]]

    def keep(self, counts: dict) -> None:
        """The file an earlier run wrote is still right (see results_stamp): report it as
        it is, without writing it again."""
        self.counts, self._kept = dict(counts), True

    def commit(self) -> str | None:
        """Finish the file; returns its path, or None when nothing needed a retry."""
        if self._stack is not None:
            self._stack.close()
            self._stack = None
            self.sha256 = self._digest.hexdigest()
            return self.path
        if self._kept and self.lines:
            return self.path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        return None

    def abort(self) -> None:
        if self._stack is not None:
            with contextlib.suppress(BaseException):
                self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)
            self._stack = None
