"""Unit tests for the pieces every script shares: envelope, exit handling, redaction,
crash-safe writes."""

from __future__ import annotations

import json
import os

import pytest
from dwbatch import cli, errors, fsutil, secrets


def _parser():
    return cli.make_parser("demo.py", "A demo.", ["python3 demo.py --json"])


def test_help_ends_with_examples_and_exit_code_table(capsys):
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "python3 demo.py --json" in out
    for code in ("0 ", "2 ", "3 ", "4 ", "5 ", "6 ", "7 ", "130"):
        assert f"  {code}" in out


def test_json_envelope_on_success(capsys):
    code = cli.run(lambda a: cli.Result({"n": 1}, "one", errors.NOT_FINISHED, "again"),
                   _parser(), ["--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 3
    assert out == {"ok": False, "exit_code": 3, "n": 1, "next": "again --json"}


def test_json_envelope_on_error_carries_code_message_hint(capsys):
    def boom(_):
        raise errors.InputError("line 3 of a.jsonl: bad", hint="fix line 3")

    code = cli.run(boom, _parser(), ["--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 2
    assert out["ok"] is False and out["exit_code"] == 2 and out["next"] is None
    assert out["error"] == {"code": "invalid_input", "message": "line 3 of a.jsonl: bad",
                            "hint": "fix line 3"}


def test_human_error_goes_to_stderr_and_stdout_stays_empty(capsys):
    def boom(_):
        raise errors.DWError("no key", code="auth", exit_code=errors.AUTH, hint="set it")

    assert cli.run(boom, _parser(), []) == 6
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "error: no key" in captured.err and "hint: set it" in captured.err


def test_unexpected_exception_is_exit_1_and_names_where(capsys):
    def bug(_):
        raise ZeroDivisionError("x")

    assert cli.run(bug, _parser(), []) == 1
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError" in err and "test_shared_pieces.py:" in err


def test_ctrl_c_is_exit_130(capsys):
    def interrupted(_):
        raise KeyboardInterrupt

    assert cli.run(interrupted, _parser(), ["--json"]) == 130
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "interrupted"


def test_usage_error_with_json_still_prints_one_envelope(capsys):
    assert cli.run(lambda a: cli.Result(), _parser(), ["--json", "--nope"]) == 2
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "usage"


def test_key_is_redacted_from_output(monkeypatch, capsys):
    monkeypatch.setenv(secrets.API_KEY_ENV, "sk-very-secret-123")

    def leaky(_):
        raise errors.DWError("failed with sk-very-secret-123 in it", code="x", exit_code=7)

    cli.run(leaky, _parser(), [])
    err = capsys.readouterr().err
    assert "sk-very-secret-123" not in err and secrets.REDACTED in err


def test_atomic_open_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), fsutil.atomic_open(target) as f:
        f.write("half of the new")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.json"]


def test_write_json_atomic_replaces_whole_file(tmp_path):
    target = tmp_path / "job.json"
    fsutil.write_json_atomic(target, {"a": 1})
    fsutil.write_json_atomic(target, {"b": 2})
    assert json.loads(target.read_text()) == {"b": 2}


def test_atomic_writes_follow_the_umask_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh.json"
        fsutil.write_json_atomic(fresh, {})
        assert fresh.stat().st_mode & 0o777 == 0o644
        shared = tmp_path / "shared.json"
        shared.write_text("{}")
        shared.chmod(0o664)
        fsutil.write_json_atomic(shared, {"a": 1})
        assert shared.stat().st_mode & 0o777 == 0o664, "a replaced file keeps its mode"
    finally:
        os.umask(old)


def test_next_command_follows_the_callers_mode(capsys):
    result = cli.Result({}, "done", errors.NOT_FINISHED, "python3 scripts/poll.py a.job.json")
    cli.run(lambda a: result, _parser(), ["--json"])
    assert json.loads(capsys.readouterr().out)["next"].endswith("poll.py a.job.json --json")
    result.next = "python3 scripts/poll.py a.job.json --json"
    cli.run(lambda a: result, _parser(), [])
    assert capsys.readouterr().out.endswith("next: python3 scripts/poll.py a.job.json\n")


def test_help_lists_only_the_exit_codes_a_script_can_give(capsys):
    parser = cli.make_parser("local.py", "Local only.", ["python3 local.py"],
                             errors.LOCAL_EXIT_CODES)
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    table = capsys.readouterr().out.split("exit codes:")[1]
    codes = [line.split()[0] for line in table.strip().splitlines()]
    assert codes == ["0", "1", "2", "130"]


def test_argparse_value_types_accept_and_refuse_alike():
    import argparse

    assert cli.positive_int("3") == 3 and cli.non_negative_int("0") == 0
    assert cli.positive_seconds("0.5") == 0.5 and cli.byte_size("2MB") == 2_000_000
    for kind, bad, words in ((cli.positive_int, "0", "at least 1"),
                             (cli.positive_int, "ten", "'ten'"),
                             (cli.non_negative_int, "-1", "at least 0"),
                             (cli.positive_seconds, "0", "seconds > 0"),
                             (cli.positive_seconds, "nan", "'nan'"),
                             (cli.byte_size, "lots", "'lots'")):
        with pytest.raises(argparse.ArgumentTypeError) as exc:
            kind(bad)
        assert words in str(exc.value), (kind.__name__, bad, str(exc.value))


def test_terminal_line_rewrites_itself_only_on_a_terminal():
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        line = cli.TerminalLine(stream)
        line.show("1/2")
        line.show("2/2")
        line.finish()
        line.finish()  # ends the line once
    assert tty.getvalue() == "\r\x1b[2K1/2\r\x1b[2K2/2\n"
    assert pipe.getvalue() == ""


# --- `next` names the interpreter that ran the script ---------------------------------------

def test_next_starts_with_python3_only_when_path_finds_this_very_interpreter(tmp_path):
    """Run a script with a venv's python: `python3` on PATH from another folder is another
    interpreter (other packages) even when it links to the same binary."""
    import subprocess
    import sys

    from conftest import SCRIPTS

    venv_bin = os.path.dirname(os.path.abspath(sys.executable))
    elsewhere = tmp_path / "bin"
    elsewhere.mkdir()
    (elsewhere / "python3").symlink_to(os.path.realpath(sys.executable))
    (tmp_path / "in.txt").write_text("hello\n")

    def next_of(path_dirs: list[str]) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOUBLEWORD_")}
        env["PATH"] = os.pathsep.join(path_dirs + ["/usr/bin", "/bin"])
        proc = subprocess.run(
            [sys.executable, str(SCRIPTS / "create_batch_file.py"), "in.txt", "-o", "b.jsonl",
             "--model", "m", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True)
        return json.loads(proc.stdout)["next"]

    if os.path.exists(os.path.join(venv_bin, "python3")):
        assert next_of([venv_bin]).startswith("python3 "), "same folder, same binary"
    assert next_of([str(elsewhere)]).startswith(os.path.abspath(sys.executable) + " ")
    assert cli.same_interpreter("/v/bin/python3", "/v/bin/../bin/python3")
    assert not cli.same_interpreter(str(elsewhere / "python3"), sys.executable)


def test_exit_7_and_130_give_the_same_command_again_as_next(capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["/x/scripts/poll.py", "a.job.json", "--json"])

    def unavailable(_):
        raise errors.DWError("down", code="unavailable", exit_code=errors.UNAVAILABLE)

    def interrupted(_):
        raise KeyboardInterrupt

    for work, code in ((unavailable, 7), (interrupted, 130)):
        assert cli.run(work, _parser(), ["--json"]) == code
        out = json.loads(capsys.readouterr().out)
        assert out["exit_code"] == code
        assert out["next"].endswith("poll.py a.job.json --json"), out
        assert out["next"].split()[0] in ("python3", cli.interpreter())
