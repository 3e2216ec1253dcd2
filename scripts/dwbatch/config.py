"""Where the API is and which key to use, decided once for every networked script.

The base URL comes from `--base-url`, then `DOUBLEWORD_BASE_URL`, then the public service.
Plain `http://` is refused unless the host is loopback, because the key travels in a header
and must not cross a network in clear text. The key comes from the environment only.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from . import errors
from .safetext import as_data
from .secrets import API_KEY_ENV, MIN_KEY_LENGTH, api_key_from_env

DEFAULT_BASE_URL = "https://api.doubleword.ai/v1"
BASE_URL_ENV = "DOUBLEWORD_BASE_URL"
DEFAULT_MAX_RETRIES = 5
DEFAULT_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Settings:
    """Everything the HTTP client needs, already checked."""

    base_url: str
    api_key: str | None
    max_retries: int = DEFAULT_MAX_RETRIES
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT


def is_loopback_host(host: str | None) -> bool:
    """True for `localhost` and literal loopback addresses (127.0.0.0/8, ::1): the only hosts
    plain http may reach. Other names ending in .localhost are not trusted: they are looked
    up through DNS on many systems."""
    if not host:
        return False
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_problem(value: str) -> str | None:
    """Why `value` cannot be used as the base URL, or None.

    The URL is read twice, by the standard library and by urllib3 (what requests will
    connect to), and refused unless both agree on scheme, host and port: a URL the two read
    differently (a backslash before an `@`, say) could pass the loopback check with one host
    and send the key to another. Anything ambiguous is refused outright.
    """
    if any(ord(c) <= 0x20 or ord(c) >= 0x7f for c in value):
        return "it contains a space, a control character or a non-ASCII character"
    if "\\" in value:
        return "it contains a backslash"
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return "it is not an http:// or https:// URL with a host"
    if "@" in parts.netloc:
        return "it contains a user name or password (user@host)"
    if "%" in parts.netloc:
        return "its host is percent-encoded"
    if parts.query or parts.fragment or "?" in value or "#" in value:
        return "it has a query (?) or fragment (#); the base URL is a plain path like /v1"
    try:
        port = parts.port
        seen = parse_url(value)
    except (ValueError, LocationParseError):
        return "its host or port cannot be read"
    if not parts.hostname or (seen.scheme, (seen.host or "").lower(), seen.port) != \
            (parts.scheme, parts.hostname.lower() if ":" not in parts.hostname
             else f"[{parts.hostname.lower()}]", port):
        return "it is read differently by different URL parsers"
    return None


def resolve_base_url(flag_value: str | None = None) -> str:
    """The base URL to use: --base-url, else $DOUBLEWORD_BASE_URL, else the public service.

    Raises InputError (exit 2) for a URL that is not plain http(s)://HOST[:PORT]/PATH (see
    _url_problem) or that is plain http to a host other than loopback.
    """
    source = "--base-url"
    value = (flag_value or "").strip()
    if not value:
        value = os.environ.get(BASE_URL_ENV, "").strip()
        source = BASE_URL_ENV
    if not value:
        return DEFAULT_BASE_URL
    problem = _url_problem(value)
    if problem:
        raise errors.InputError(
            f"{source} is not a usable URL: {as_data(value)!r}: {problem} "
            "(expected http(s)://HOST[:PORT]/v1)",
            hint=f"use e.g. {DEFAULT_BASE_URL} or http://127.0.0.1:8787/v1 for the sandbox",
            code="bad_base_url")
    parts = urlsplit(value)
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise errors.InputError(
            f"{source} uses plain http to {parts.hostname}: the API key would cross the "
            "network unencrypted, so it is refused",
            hint="use https://, or plain http only to localhost / 127.0.0.1 / ::1 "
                 "(e.g. the local sandbox)",
            code="insecure_base_url")
    return value.rstrip("/")


def require_api_key() -> str:
    """The API key from the environment, or DWError exit 6 saying how to set it."""
    key = api_key_from_env()
    if not key:
        raise errors.DWError(
            f"no API key: the environment variable {API_KEY_ENV} is not set",
            code="no_api_key", exit_code=errors.AUTH,
            hint=f"export {API_KEY_ENV}=<your key> (create one in the Doubleword console "
                 "under API keys); keys are never taken on the command line")
    if any(ord(c) < 0x21 or ord(c) > 0x7e for c in key):
        raise errors.DWError(
            f"the key in {API_KEY_ENV} contains a space, line break or non-ASCII character, "
            "which cannot be sent in an HTTP header",
            code="bad_api_key", exit_code=errors.AUTH,
            hint=f"copy the key again and export {API_KEY_ENV}=<your key> without extra "
                 "characters")
    if len(key) < MIN_KEY_LENGTH:
        raise errors.DWError(
            f"the key in {API_KEY_ENV} is {len(key)} characters long; keys shorter than "
            f"{MIN_KEY_LENGTH} are refused (too short to be a real key, and too short to be kept "
            "out of the scripts' output reliably)",
            code="bad_api_key", exit_code=errors.AUTH,
            hint=f"export {API_KEY_ENV}=<your key> with the whole key from the Doubleword "
                 "console (for the sandbox, any 8 or more characters, e.g. sandbox-key)")
    return key


def settings_from_args(args, *, need_key: bool = True) -> Settings:
    """Settings from parsed arguments made with cli.add_network_args (missing flags default)."""
    base_url = resolve_base_url(getattr(args, "base_url", None))
    key = require_api_key() if need_key else api_key_from_env()
    max_retries = getattr(args, "max_retries", None)
    timeout = getattr(args, "request_timeout", None)
    return Settings(
        base_url=base_url,
        api_key=key,
        max_retries=DEFAULT_MAX_RETRIES if max_retries is None else int(max_retries),
        timeout=DEFAULT_TIMEOUT if timeout is None else float(timeout),
    )
