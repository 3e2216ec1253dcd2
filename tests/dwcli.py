"""Find and prepare Doubleword's own CLI (`dw`, PyPI `dw-cli`) as a third-party test client.

The wheel carries a prebuilt binary that asks for glibc 2.39. On an older system (Debian 12 has
2.36) it is started through the loader of the next Debian release's libc6, fetched with
`apt-get download` into `.dwtools/` using private apt state, so the system's apt state and
libc stay untouched. The result is one shell wrapper, `.dwtools/dw`, that the tests call; when
anything fails, the reason goes to `.dwtools/SKIP_REASON` and the dw tests skip with it.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
import platform
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".dwtools"
WRAPPER = TOOLS / "dw"
SKIP_REASON = TOOLS / "SKIP_REASON"
LIBC_ROOT = TOOLS / "root"
APT_DIR = TOOLS / "apt"

# Debian 13 ships glibc 2.41, enough for the dw binary (it needs 2.39).
NEWER_SUITE = "trixie"
NEWER_PACKAGES = ("libc6", "libgcc-s1")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MULTIARCH = "x86_64-linux-gnu"
LOADER_NAME = "ld-linux-x86-64.so.2"
COMMAND_TIMEOUT = 300


class PrepareError(Exception):
    """A step of the preparation failed; the message is the skip reason."""


# --- finding the binary -----------------------------------------------------------------------
def bundled_binary() -> Path:
    """Path of the `dw` binary inside the installed `dw-cli` wheel."""
    spec = importlib.util.find_spec("dw_cli")
    if spec is None or spec.origin is None:
        raise PrepareError(
            "the dw-cli package is not installed in this Python; "
            "run: python -m pip install -r requirements-dev.txt"
        )
    binary = Path(spec.origin).parent / "bin" / "dw"
    if not binary.is_file():
        raise PrepareError(f"dw-cli is installed but carries no binary at {binary}")
    return binary


def run_version(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=60)


# --- the wrapper -------------------------------------------------------------------------------
def wrapper_text(argv: list[str], binary: Path) -> str:
    return (
        "#!/bin/sh\n"
        "# Written by tests/prepare_dw_cli.py: starts Doubleword's dw for the tests.\n"
        f"# binary: {binary}\n"
        f"exec {' '.join(shlex.quote(a) for a in argv)} \"$@\"\n"
    )


def write_wrapper(argv: list[str], binary: Path) -> None:
    tmp = WRAPPER.with_suffix(".tmp")
    tmp.write_text(wrapper_text(argv, binary))
    tmp.chmod(0o755)
    os.replace(tmp, WRAPPER)


def wrapper_ready(binary: Path) -> str | None:
    """The version line when the existing wrapper starts this same binary, else None."""
    if not WRAPPER.is_file() or f"# binary: {binary}\n" not in WRAPPER.read_text():
        return None
    try:
        proc = run_version([str(WRAPPER)])
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


# --- the newer glibc, from Debian's archive ------------------------------------------------------
def system_mirror() -> tuple[str, str]:
    """(mirror URL, keyring) of the system's main Debian source, or Debian's defaults."""
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        for stanza in Path(path).read_text().split("\n\n"):
            fields = {}
            for line in stanza.splitlines():
                if ":" in line and not line.lstrip().startswith("#"):
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.strip()
            uris = fields.get("uris", "").split()
            if "deb" in fields.get("types", "").split() and uris and "security" not in uris[0]:
                if uris[0].rstrip("/").endswith("/debian"):
                    return uris[0].rstrip("/"), fields.get("signed-by", DEFAULT_KEYRING)
    return DEFAULT_MIRROR, DEFAULT_KEYRING


def copied_acquire_settings() -> str:
    """The system's proxy and date-check settings, without its apt.conf.d hooks."""
    try:
        dump = subprocess.run(["apt-config", "dump"], capture_output=True, text=True,
                              timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    keep = ("Acquire::http::Proxy", "Acquire::https::Proxy", "Acquire::Check-Valid-Until",
            "Acquire::Check-Date", "Acquire::ForceIPv4", "Acquire::Retries")
    return "".join(line + "\n" for line in dump.splitlines() if line.startswith(keep))


def private_apt_config() -> Path:
    """An APT_CONFIG that points every apt state folder into .dwtools/apt."""
    mirror, keyring = system_mirror()
    for sub in ("lists/partial", "cache/archives/partial", "state", "etc/sources.list.d",
                "etc/apt.conf.d", "etc/preferences.d", "debs"):
        (APT_DIR / sub).mkdir(parents=True, exist_ok=True)
    (APT_DIR / "state" / "status").write_text("")
    (APT_DIR / "etc" / "sources.list").write_text("")
    (APT_DIR / "etc" / "sources.list.d" / f"{NEWER_SUITE}.sources").write_text(
        f"Types: deb\nURIs: {mirror}\nSuites: {NEWER_SUITE}\nComponents: main\n"
        f"Signed-By: {keyring}\n"
    )
    conf = APT_DIR / "apt.conf"
    conf.write_text(
        f'Dir::State "{APT_DIR}/state";\n'
        f'Dir::State::Lists "{APT_DIR}/lists";\n'
        f'Dir::State::status "{APT_DIR}/state/status";\n'
        f'Dir::Cache "{APT_DIR}/cache";\n'
        f'Dir::Etc::SourceList "{APT_DIR}/etc/sources.list";\n'
        f'Dir::Etc::SourceParts "{APT_DIR}/etc/sources.list.d";\n'
        f'Dir::Etc::Parts "{APT_DIR}/etc/apt.conf.d";\n'
        f'Dir::Etc::Main "{APT_DIR}/etc/apt.conf";\n'
        f'Dir::Etc::Preferences "{APT_DIR}/etc/preferences";\n'
        f'Dir::Etc::PreferencesParts "{APT_DIR}/etc/preferences.d";\n'
        'APT::Sandbox::User "root";\n'
        + copied_acquire_settings()
    )
    return conf


def run_step(argv: list[str], what: str, **kw) -> None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, **kw)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PrepareError(f"{what} failed: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise PrepareError(f"{what} failed (exit {proc.returncode}): {' | '.join(tail)}")


def fetch_newer_libc() -> None:
    """Download and unpack the next Debian release's libc6 and libgcc-s1 into .dwtools/root."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise PrepareError(
                f"the dw binary needs glibc 2.39 and `{tool}` is not here to fetch it")
    if platform.machine() != "x86_64":
        raise PrepareError(f"the dw-cli wheel is for x86_64, this machine is {platform.machine()}")
    env = dict(os.environ, APT_CONFIG=str(private_apt_config()), DEBIAN_FRONTEND="noninteractive")
    run_step(["apt-get", "-q", "update"], f"apt-get update for Debian {NEWER_SUITE}", env=env)
    debs = APT_DIR / "debs"
    for old in debs.glob("*.deb"):
        old.unlink()
    run_step(["apt-get", "-q", "download", *NEWER_PACKAGES],
             f"apt-get download {' '.join(NEWER_PACKAGES)} from Debian {NEWER_SUITE}",
             env=env, cwd=debs)
    staging = TOOLS / "root.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    for deb in sorted(debs.glob("*.deb")):
        run_step(["dpkg-deb", "-x", str(deb), str(staging)], f"dpkg-deb -x {deb.name}")
    shutil.rmtree(LIBC_ROOT, ignore_errors=True)
    os.replace(staging, LIBC_ROOT)
    shutil.rmtree(APT_DIR, ignore_errors=True)


def loader_argv(binary: Path) -> list[str]:
    libdir = LIBC_ROOT / "usr" / "lib" / MULTIARCH
    return [str(libdir / LOADER_NAME), "--library-path", str(libdir), str(binary)]


# --- the whole preparation ---------------------------------------------------------------------
def prepare(log=print) -> str:
    """Make `.dwtools/dw --version` work; return its version line. Raises PrepareError."""
    TOOLS.mkdir(exist_ok=True)
    binary = bundled_binary()
    ready = wrapper_ready(binary)
    if ready:
        return ready
    direct = run_version([str(binary)])
    if direct.returncode == 0:
        write_wrapper([str(binary)], binary)
        return direct.stdout.strip()
    if "GLIBC_" not in direct.stderr:
        raise PrepareError(f"`dw --version` failed (exit {direct.returncode}): "
                           f"{direct.stderr.strip()[:300]}")
    needed = re.search(r"GLIBC_[0-9.]+", direct.stderr)
    log(f"dw needs {needed.group(0) if needed else 'a newer glibc'}, newer than this system's; "
        f"fetching libc6 from Debian {NEWER_SUITE} into {LIBC_ROOT}")
    argv = loader_argv(binary)
    fetched = False
    if not Path(argv[0]).is_file():
        fetch_newer_libc()
        fetched = True
    proc = run_version(argv)
    if proc.returncode != 0 and not fetched:  # a damaged earlier unpack: fetch it again
        fetch_newer_libc()
        proc = run_version(argv)
    if proc.returncode != 0:
        raise PrepareError(f"dw through Debian {NEWER_SUITE}'s loader failed "
                           f"(exit {proc.returncode}): {proc.stderr.strip()[:300]}")
    write_wrapper(argv, binary)
    return proc.stdout.strip()


def prepare_or_record_skip(log=print) -> tuple[bool, str]:
    """Run prepare(); on failure write the reason to SKIP_REASON. Returns (ready, message)."""
    started = time.monotonic()
    try:
        version = prepare(log)
    except PrepareError as exc:
        TOOLS.mkdir(exist_ok=True)
        reason = f"Doubleword's dw CLI cannot run here: {exc}"
        SKIP_REASON.write_text(reason + "\n")
        WRAPPER.unlink(missing_ok=True)
        return False, reason
    SKIP_REASON.unlink(missing_ok=True)
    return True, f"{version} ready as {WRAPPER} ({time.monotonic() - started:.1f} s)"


@functools.lru_cache(maxsize=1)
def _checked() -> tuple[bool, str]:
    if SKIP_REASON.is_file():
        return False, SKIP_REASON.read_text().strip()
    return prepare_or_record_skip(log=lambda _msg: None)


def dw_or_skip() -> str:
    """Path of the dw wrapper for tests; skips the test (with the reason) when it cannot run."""
    import pytest

    ready, message = _checked()
    if not ready:
        pytest.skip(f"{message} (after fixing it, run: python tests/prepare_dw_cli.py)")
    return str(WRAPPER)
