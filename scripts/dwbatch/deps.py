"""The packages an entry script needs, checked before anything imports them.

Standard library only (and this package's errors and secrets): every entry script calls
`require(...)` after its standard-library imports and before importing a module that imports
requests or jsonschema. Run by a Python without them, the script does not die with a
`ModuleNotFoundError` traceback: it exits 2 with the error code `missing_dependency` (inside the
--json envelope when --json was given), names what is missing, gives the exact commands that
make the skill's own virtual environment (<skill>/.venv), and as `next` the same command run by
that environment's Python. `--help` still works: only names are needed to build a parser, so
the missing modules are stood in for by placeholders that refuse to be used.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import shlex
import shutil
import sys
import types

from . import errors
from .secrets import redact

SKILL_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_DIR = os.path.join(SKILL_DIR, ".venv")
REQUIREMENTS = os.path.join(SKILL_DIR, "requirements.txt")
# Distribution name -> the modules it brings that the code imports (client.py imports urllib3,
# which requests installs).
PROVIDES = {"requests": ("requests", "urllib3"), "jsonschema": ("jsonschema",)}


def require(*packages: str, argv: list[str] | None = None) -> None:
    """Return if this Python has every package named; else report them and exit 2 (with
    --help: stand in for them so the help can be printed)."""
    argv = list(sys.argv if argv is None else argv)
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if not missing:
        return
    if _asks_for_help(argv[1:]):
        _stand_in([m for p in missing for m in PROVIDES.get(p, (p,))], missing, argv)
        return
    exc = missing_dependency(missing, argv)
    if "--json" in argv[1:]:
        out = {"ok": False, "exit_code": exc.exit_code, **exc.extra, "next": exc.next,
               "error": {"code": exc.code, "message": exc.message, "hint": exc.hint}}
        sys.stdout.write(redact(json.dumps(out, ensure_ascii=False)) + "\n")
    else:
        lines = [f"error: {exc.message}", f"hint: {exc.advice}:", f"  {exc.extra['setup']}",
                 *(f"  {note}" for note in exc.notes), f"next: {exc.next}"]
        sys.stderr.write(redact("\n".join(lines)) + "\n")
    sys.exit(exc.exit_code)


class MissingDependency(errors.DWError):
    """Exit 2, code missing_dependency; extra: missing, python, setup (one line to paste)."""

    def __init__(self, message: str, advice: str, setup: str, notes: list[str], **kwargs):
        hint = f"{advice}: {setup}" + "".join(f"; {note}" for note in notes)
        super().__init__(message, code="missing_dependency", exit_code=errors.INVALID_INPUT,
                         hint=hint, **kwargs)
        self.advice = advice
        self.notes = notes


def venv_python() -> str:
    """The Python of the skill's own virtual environment (it may not exist yet)."""
    if os.name == "nt":
        return os.path.join(VENV_DIR, "Scripts", "python.exe")
    return os.path.join(VENV_DIR, "bin", "python")


def missing_dependency(missing: list[str], argv: list[str]) -> MissingDependency:
    """The error for a Python without `missing`: what is missing, the set-up commands (one
    line, `extra["setup"]`) and `next`, the same command run by the venv's Python."""
    python = venv_python()
    shown_python = _shown(python, program=True)
    setup = []
    if not os.path.exists(python):
        setup.append(_join(sys.executable, "-m", "venv", _shown(VENV_DIR)))
    setup.append(_join(shown_python, "-m", "pip", "install", "-r", _shown(REQUIREMENTS)))
    script = _shown(argv[0]) if argv and argv[0] else "scripts/<script>.py"
    rerun = _join(shown_python, script, *argv[1:])
    name = os.path.basename(script)
    version = ".".join(map(str, sys.version_info[:3]))
    what = "the Python package" + ("s " if len(missing) > 1 else " ") + " and ".join(missing)
    message = f"{name} needs {what}, which this Python ({sys.executable}, {version}) does not have"
    advice = ("install the skill's requirements into its own virtual environment once (any "
              "Python 3.10+, also an \"externally managed\" system Python), then run this and "
              "every later command of the skill with that environment's Python")
    notes = []
    if len(setup) > 1:
        notes.append("if venv says ensurepip is not available (Debian/Ubuntu), install the "
                     "python3-venv package first")
    if shutil.which("uv"):
        notes.append(f"or, with uv: {_join('uv', 'run', script, *argv[1:])}")
    one_line = " && ".join(setup)
    return MissingDependency(message, advice, one_line, notes, next=rerun,
                             extra={"missing": list(missing), "python": sys.executable,
                                    "setup": one_line})


def _asks_for_help(args: list[str]) -> bool:
    for arg in args:
        if arg == "--":
            return False
        if arg in ("-h", "--help"):
            return True
    return False


def _shown(path: str, program: bool = False) -> str:
    """A path as the user can type it: relative when inside the current folder, else absolute
    (a program always with a folder in it, so the shell does not look it up on PATH)."""
    absolute = os.path.abspath(path)
    rel = os.path.relpath(absolute)
    if rel.startswith(".."):
        return absolute
    return os.path.join(".", rel) if program and os.sep not in rel else rel


def _join(*words: str) -> str:
    return " ".join(shlex.quote(w) for w in words)


# --- placeholders for --help ------------------------------------------------------------------

class _Missing(type):
    """A class standing in for anything a missing package defines: it can be subclassed, named
    in `except` and annotations, and reached through (requests.exceptions.X); using it raises
    the missing_dependency error (the parser of --help never does)."""

    error: errors.DWError

    def __getattr__(cls, name: str):
        return _placeholder(name, cls.error)

    def __call__(cls, *args, **kwargs):
        raise cls.error


class _StandIns(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, modules: list[str], error: errors.DWError) -> None:
        self.modules = set(modules)
        self.error = error

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in self.modules:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        error = self.error
        module.__getattr__ = lambda name: _placeholder(name, error)
        return module

    def exec_module(self, module) -> None:
        module.__path__ = []


def _placeholder(name: str, error: errors.DWError) -> _Missing:
    if name.startswith("__"):
        raise AttributeError(name)
    return _Missing(name, (Exception,), {"error": error})


def _stand_in(modules: list[str], missing: list[str], argv: list[str]) -> None:
    sys.meta_path.append(_StandIns(modules, missing_dependency(missing, argv)))
