"""What every script's command line shares: help layout, --json envelope, exit handling.

A script builds its parser with `make_parser`, does its work in a function that returns a
`Result` (or raises `DWError`), and hands that function to `run`, which prints either the
human summary or exactly one JSON envelope on stdout and exits with the contract's code.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import shutil
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import errors
from .limits import parse_size
from .safetext import as_data, for_terminal, json_safe
from .secrets import redact


@dataclass
class Result:
    """What a command did: envelope fields, a human summary, the exit code and next command."""

    fields: dict = field(default_factory=dict)
    summary: str = ""
    exit_code: int = errors.OK
    next: str | None = None


def help_epilog(examples: Sequence[str], exit_codes: Sequence[int] | None = None) -> str:
    """The end of every --help: examples, then the exit codes this command can give."""
    return "examples:\n" + "\n".join(f"  {e}" for e in examples) + "\n\n" + \
        errors.exit_code_table(exit_codes)


def make_parser(prog: str, description: str, examples: Sequence[str],
                exit_codes: Sequence[int] | None = None) -> argparse.ArgumentParser:
    """An ArgumentParser whose --help ends with examples and the exit-code table.

    exit_codes: the codes this script can give (default: all of the contract's).
    """
    epilog = help_epilog(examples, exit_codes)
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true",
                        help="print exactly one JSON object on stdout (progress goes to stderr)")
    return parser


def display_path(path: str) -> str:
    """A path as the user can type it: relative when inside the current folder, else absolute."""
    rel = os.path.relpath(os.path.abspath(path))
    return rel if not rel.startswith("..") else os.path.abspath(path)


def same_interpreter(a: str, b: str) -> bool:
    """Two interpreter paths are one interpreter: the same absolute path, or two names in the
    same folder for the same binary (a venv's `python` and `python3`). Symlinks are not
    followed across folders: a venv's python links to the system binary but has other
    packages."""
    a, b = os.path.abspath(a), os.path.abspath(b)
    if a == b:
        return True
    return os.path.dirname(a) == os.path.dirname(b) and os.path.realpath(a) == os.path.realpath(b)


def interpreter() -> str:
    """How `next` names the Python running this script: `python3` when that is what PATH
    finds, else the absolute path (so an agent in a venv stays in it)."""
    running = sys.executable
    if not running:
        return "python3"
    on_path = shutil.which("python3")
    if on_path and same_interpreter(on_path, running):
        return "python3"
    return os.path.abspath(running)


def script_command(script: str, *args: str) -> str:
    """A copy-pasteable command line for another script of this skill, run by this Python."""
    here = os.path.dirname(os.path.abspath(sys.argv[0])) if sys.argv and sys.argv[0] else ""
    path = display_path(os.path.join(here, script)) if here else os.path.join("scripts", script)
    return " ".join([shlex.quote(interpreter()), shlex.quote(path),
                     *(shlex.quote(a) for a in args)])


def same_command() -> str:
    """This very command line again (the `next` of exit 7 and 130: safe to re-run)."""
    return script_command(os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0]
                          else "script.py", *sys.argv[1:])


def envelope(ok: bool, exit_code: int, fields: dict, next_cmd: str | None,
             error: dict | None = None) -> dict:
    """The --json envelope of the contract."""
    out = {"ok": ok, "exit_code": exit_code}
    out.update(fields)
    out["next"] = next_cmd
    if error is not None:
        out["error"] = error
    return out


def next_for_mode(command: str | None, json_mode: bool) -> str | None:
    """The `next` command in the caller's own mode: with --json when they used it, else without."""
    if not command:
        return command
    parts = []
    for part in command.split(" && "):  # several commands (one per job family)
        words = [w for w in part.split(" ") if w != "--json"]
        parts.append(" ".join(words + ["--json"] if json_mode else words))
    return " && ".join(parts)


def _print_json(obj: dict) -> None:
    sys.stdout.write(json_safe(redact(json.dumps(obj, ensure_ascii=False, indent=None))) + "\n")
    sys.stdout.flush()


def warn(message: str) -> None:
    """A warning or progress note: always stderr, never stdout."""
    sys.stderr.write(for_terminal(redact(message)) + "\n")
    sys.stderr.flush()


class TerminalLine:
    """A progress line on stderr that rewrites itself; silent unless stderr is a terminal."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.shown = False

    def show(self, text: str) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[2K" + text)
            self.stream.flush()
            self.shown = True

    def finish(self) -> None:
        """End the line (once), so what follows starts on a fresh one."""
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False


def run(main: Callable[[argparse.Namespace], Result], parser: argparse.ArgumentParser,
        argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run `main`, print the outcome, and return the exit code.

    argparse usage errors already exit 2. Known failures (DWError) print their message and
    hint; Ctrl-C exits 130; anything else is an internal error (exit 1) with where it came from.
    """
    want_json = "--json" in (argv if argv is not None else sys.argv[1:])
    said = io.StringIO()  # argparse's complaint, also for the envelope
    try:
        with contextlib.redirect_stderr(said):
            args = parser.parse_args(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else errors.INVALID_INPUT
        if code != 0 and want_json:
            _print_json(envelope(False, errors.INVALID_INPUT, {}, None, {
                "code": "usage", "message": _usage_message(said.getvalue()),
                "hint": f"run {parser.prog} --help"}))
        return code
    finally:
        sys.stderr.write(said.getvalue())
    _stop_on_sigterm()
    try:
        result = main(args)
    except errors.DWError as exc:
        return _report_error(args, exc)
    except KeyboardInterrupt:
        exc = errors.DWError("interrupted; everything done so far is saved",
                             code="interrupted", exit_code=errors.INTERRUPTED,
                             hint="re-run the same command to resume")
        return _report_error(args, exc)
    except OSError as exc:
        local = errors.local_file_error(exc)
        if local is None:
            return _internal_error(args, exc)
        return _report_error(args, local)
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        return _internal_error(args, exc)
    ok = result.exit_code == errors.OK
    json_mode = getattr(args, "json", False)
    next_cmd = next_for_mode(result.next, json_mode)
    if json_mode:
        _print_json(envelope(ok, result.exit_code, result.fields, next_cmd))
    else:
        text = result.summary.rstrip("\n")
        if next_cmd:
            text += ("\n" if text else "") + f"next: {next_cmd}"
        if text:
            sys.stdout.write(for_terminal(redact(text)) + "\n")
    return result.exit_code


def _stop_on_sigterm() -> None:
    """SIGTERM stops a command the way Ctrl-C does: cleanup runs (a half-downloaded copy
    beside a saved one is removed), what was saved stays, and the exit code is 130."""
    def stop(signum, frame):
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not the main thread (tests calling run())
        signal.signal(signal.SIGTERM, stop)


def _usage_message(stderr_text: str) -> str:
    """argparse's own words ("argument --max-requests: ... must be at least 1"), else a pointer."""
    for line in reversed(stderr_text.splitlines()):
        _, sep, said = line.partition(": error: ")
        if sep and said.strip():
            return redact(said.strip())
    return "invalid command-line usage (see stderr)"


def _internal_error(args: argparse.Namespace, exc: BaseException) -> int:
    where = traceback.extract_tb(exc.__traceback__)[-1]
    message = (f"internal error: {type(exc).__name__}: {as_data(str(exc))} "
               f"(at {os.path.basename(where.filename)}:{where.lineno})")
    if os.environ.get("DWBATCH_DEBUG"):
        sys.stderr.write(redact(traceback.format_exc()))
    err = errors.DWError(message, code="internal_error", exit_code=errors.INTERNAL,
                         hint="this is a bug: report it with the command you ran "
                              "(set DWBATCH_DEBUG=1 for a traceback)")
    return _report_error(args, err)


def _report_error(args: argparse.Namespace, exc: errors.DWError) -> int:
    json_mode = getattr(args, "json", False)
    again = exc.next
    if again is None and exc.exit_code in (errors.UNAVAILABLE, errors.INTERRUPTED):
        again = same_command()  # nothing is lost: the same command continues
    next_cmd = next_for_mode(again, json_mode)
    if json_mode:
        err = {"code": exc.code, "message": redact(exc.message), "hint": redact(exc.hint or "")}
        _print_json(envelope(False, exc.exit_code, exc.extra, next_cmd, err))
    else:
        lines = [f"error: {exc.message}"]
        if exc.hint:
            lines.append(f"hint: {exc.hint}")
        if next_cmd:
            lines.append(f"next: {next_cmd}")
        sys.stderr.write(for_terminal(redact("\n".join(lines))) + "\n")
    return exc.exit_code


def main_entry(build_parser: Callable[[], argparse.ArgumentParser],
               main: Callable[[argparse.Namespace], Result]) -> None:
    """`if __name__ == "__main__": main_entry(build_parser, main)` for every script."""
    sys.exit(run(main, build_parser()))


def add_network_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--base-url, --max-retries and --request-timeout for every script that talks to the API.

    The help states the deadlines (client.Client, deadline.py): an agent must be able to
    tell from --help how long a command can take whatever the server does."""
    from .config import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT  # late: config imports errors only

    group = parser.add_argument_group("network")
    group.add_argument(
        "--base-url", metavar="URL", default=None,
        help="API base URL (default: $DOUBLEWORD_BASE_URL, else https://api.doubleword.ai/v1; "
             "plain http only to localhost, 127.0.0.0/8 or ::1, e.g. the sandbox; refused "
             "with a user@, a backslash, a query or a fragment; loopback never goes through "
             "a proxy)")
    group.add_argument(
        "--max-retries", metavar="N", type=non_negative_int, default=DEFAULT_MAX_RETRIES,
        help=f"retries of a call on 429/5xx/network errors, with backoff that honours "
             f"Retry-After (default {DEFAULT_MAX_RETRIES}; 0 = no retries)")
    group.add_argument(
        "--request-timeout", metavar="SECONDS", type=positive_seconds, default=DEFAULT_TIMEOUT,
        help=f"deadline of each call in seconds (default {DEFAULT_TIMEOUT:g}): a call not "
             "answered in full within it is cut and counts as a timeout (retried as "
             "--max-retries says). Uploads and downloads may run longer while they keep "
             "moving: they are cut when less than 64 KiB moved in the last SECONDS (uploads: "
             "at least 300 s, also for the answer). Waits between retries are capped at "
             "360 s in all")
    return parser


# --- argparse value types: every script's numeric flags are read (and refused) alike -------

def _number(text: str, convert: Callable[[str], float], ok: Callable[[float], bool],
            expected: str):
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type for counts and limits (--max-requests, --limit, --max-tokens)."""
    return _number(text, int, lambda v: v >= 1, "a whole number of at least 1")


def non_negative_int(text: str) -> int:
    """argparse type for counts where 0 means none (--max-retries)."""
    return _number(text, int, lambda v: v >= 0, "a whole number of at least 0")


def positive_seconds(text: str) -> float:
    """argparse type for durations (--request-timeout, --interval, --timeout)."""
    return _number(text, float, lambda v: v > 0, "seconds > 0 (e.g. 60 or 0.5)")


def byte_size(text: str) -> int:
    """argparse type for --max-file-bytes: bytes, or a unit (200MB, 100MiB)."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
