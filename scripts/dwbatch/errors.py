"""Exit codes and the one exception type every script reports through.

The exit codes are the contract agents act on (see SKILL.md): keep them identical in
every script.
"""

from __future__ import annotations

import errno

OK = 0
INTERNAL = 1
INVALID_INPUT = 2
NOT_FINISHED = 3
PARTIAL_FAILURE = 4
BATCH_UNSUCCESSFUL = 5
AUTH = 6
UNAVAILABLE = 7
INTERRUPTED = 130

EXIT_CODE_MEANINGS = {
    OK: "done, fully successful",
    INTERNAL: "internal error (a bug): report it",
    INVALID_INPUT: "invalid input or usage; nothing was sent: fix what the message names",
    NOT_FINISHED: "not finished yet; partial results saved: run the suggested command later",
    PARTIAL_FAILURE: "finished, but some requests failed or are missing; retry file written",
    BATCH_UNSUCCESSFUL: "a batch failed, was cancelled or expired; partial results saved",
    AUTH: "authentication, permission or credit problem: fix the key or account",
    UNAVAILABLE: "service unavailable or network failure after all retries: re-run later",
    INTERRUPTED: "interrupted (Ctrl-C); state is saved: re-run the same command to resume",
}

LOCAL_EXIT_CODES = (OK, INTERNAL, INVALID_INPUT, INTERRUPTED)


def exit_code_table(codes=None) -> str:
    """The --help table of the exit codes a script can give (all of them by default)."""
    chosen = sorted(EXIT_CODE_MEANINGS if codes is None else codes)
    return "exit codes:\n" + "\n".join(f"  {c:<4} {EXIT_CODE_MEANINGS[c]}" for c in chosen)



class DWError(Exception):
    """An expected failure, with what to tell the user and which exit code to use.

    code: a snake_case identifier for the --json envelope (e.g. "invalid_input").
    message: what went wrong, in words that name the file, line, flag or id.
    hint: what to do next.
    next: an exact command to run next, when there is one.
    extra: more fields for the --json envelope.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "invalid_input",
        exit_code: int = INVALID_INPUT,
        hint: str | None = None,
        next: str | None = None,
        extra: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.exit_code = exit_code
        self.hint = hint
        self.next = next
        self.extra = dict(extra or {})


class InputError(DWError):
    """Invalid input or usage (exit 2): nothing was sent."""

    def __init__(self, message: str, *, hint: str | None = None, code: str = "invalid_input",
                 **kwargs) -> None:
        super().__init__(message, code=code, exit_code=INVALID_INPUT, hint=hint, **kwargs)


_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EFBIG}
_ACCESS = {errno.EACCES, errno.EPERM, errno.EROFS}
_DESCRIPTORS = {errno.EMFILE, errno.ENFILE}


def local_file_error(exc: OSError) -> DWError | None:
    """A full disk, a read-only folder, too many open files: the machine's trouble, not a bug
    of the tool, so it gets exit 2 and what to fix (None for any other OSError). Files are
    written whole or not at all, so what was saved before the failure is still there."""
    if exc.errno in _SPACE:
        hint = ("free disk space (a job folder needs about 1 KB per request; temporary files "
                "go to TMPDIR), then re-run the same command: what was saved is kept")
    elif exc.errno in _ACCESS:
        hint = ("make the folder named writable, or run the command from a folder you can "
                "write to (temporary files go to TMPDIR), then re-run it: what was saved is "
                "kept")
    elif exc.errno in _DESCRIPTORS:
        hint = "raise the open-file limit (ulimit -n), then re-run the same command"
    else:
        return None
    where = f": {exc.filename}" if exc.filename else ""
    return DWError(f"local file problem: {exc.strerror or exc}{where}",
                   code="local_file_error", exit_code=INVALID_INPUT, hint=hint,
                   extra={"errno": errno.errorcode.get(exc.errno, exc.errno)})
