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

from . import errors
from .secrets import API_KEY_ENV, api_key_from_env

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
    """True for localhost, 127.0.0.0/8 and ::1 (the only hosts plain http may reach)."""
    if not host:
        return False
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_base_url(flag_value: str | None = None) -> str:
    """The base URL to use: --base-url, else $DOUBLEWORD_BASE_URL, else the public service.

    Raises InputError (exit 2) for a URL that is not http(s) or that is plain http to a
    host other than loopback.
    """
    source = "--base-url"
    value = (flag_value or "").strip()
    if not value:
        value = os.environ.get(BASE_URL_ENV, "").strip()
        source = BASE_URL_ENV
    if not value:
        return DEFAULT_BASE_URL
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.InputError(
            f"{source} is not a usable URL: {value!r} (expected http(s)://HOST[:PORT]/v1)",
            hint=f"use e.g. {DEFAULT_BASE_URL} or http://127.0.0.1:8787/v1 for the sandbox",
            code="bad_base_url")
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
