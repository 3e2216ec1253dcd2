"""The one HTTP client every networked script uses.

Why one: retries, backoff, error wording, key redaction and streaming are easy to get subtly
wrong, and a script that gets them wrong loses work or money. Everything here follows the
contract (`cli-contract.md`) and the live server's behaviour (`doubleword-api.md`):

- retries on 429/500/502/503/504, connection errors and timeouts, with exponential backoff
  and jitter, honouring `Retry-After` (header, then body `retry_after_seconds`), bounded by
  `max_retries` and a total wait cap; never on other 4xx;
- a call that is not idempotent (creating a batch) is never repeated blindly when its
  outcome is unknown (answer lost after sending, read timeout, 500/502/504): the caller gets
  `AmbiguousOutcome` and must look the object up before trying again;
- errors become `APIError` (a DWError) with the server's own words, plain text or JSON,
  exit 6 for 401/402/403 and exit 7 once retries are used up; the key never appears in them;
- uploads stream multipart from disk with a known Content-Length (memory does not grow with
  the file); downloads hand back complete lines only; lists are paged through, with a page
  cap and a check that the server's cursor moves;
- nothing the server sends can hang a command or fill its memory: every call has a deadline
  (deadline.py), every answer a size cap and compressed answers a ratio cap (bodies.py);
- the key only goes where the base URL says: no proxy for loopback, no redirect on writes,
  same-origin redirects only on reads; text from the server is escaped as data (safetext.py).
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urljoin

import requests
import urllib3
from requests.structures import CaseInsensitiveDict

from . import __version__, bodies, errors, shapes
from .config import Settings, is_loopback_host
from .deadline import PROGRESS_BYTES, Deadline, WatchedAdapter
from .safetext import as_data, for_terminal, map_strings
from .secrets import byte_scrubber, redact

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# 429 and 503 mean "not processed, come back later": safe to repeat even a create.
# 500/502/504 may arrive after the work was done, so a create must be looked up first.
NOT_PROCESSED_STATUSES = frozenset({429, 503})
UPLOAD_MIN_READ_TIMEOUT = 300.0
DEFAULT_MAX_TOTAL_WAIT = 360.0
DEFAULT_BASE_DELAY = 0.5
DEFAULT_MAX_DELAY = 30.0
MAX_SERVER_WORDS = 2000
UPLOAD_CHUNK = 64 * 1024  # the unit of an upload's progress deadline
LINE_CHUNK = 1 << 20
LIST_PAGE_SIZE = 100
MAX_LIST_PAGES = 1000  # 100,000 items at the default page size
MAX_REDIRECTS = 5
PROGRESS_KIB = PROGRESS_BYTES // 1024
NO_PROXY = {"http": None, "https": None, "all": None}
# What a connection that breaks off while a body streams in raises (requests, urllib3 or
# http.client, depending on where it broke).
BROKEN_CONNECTION = (requests.exceptions.RequestException, urllib3.exceptions.HTTPError,
                     http.client.HTTPException, OSError)

ProgressCallback = Callable[[int, int], None]


# --------------------------------------------------------------------------- errors

class APIError(errors.DWError):
    """A call that failed: HTTP status (None for network failures) and the server's words."""

    def __init__(self, message: str, *, status: int | None = None, server_message: str = "",
                 method: str = "", path: str = "", **kwargs) -> None:
        extra = dict(kwargs.pop("extra", None) or {})
        if status is not None:
            extra.setdefault("http_status", status)
        super().__init__(message, extra=extra, **kwargs)
        self.status = status
        self.server_message = server_message
        self.method = method
        self.path = path


class AmbiguousOutcome(APIError):
    """A non-idempotent call whose answer was lost: the server may or may not have done it."""


class LineTooLong(errors.DWError):
    """A downloaded line passed the length cap: the download stops there (exit 7)."""

    def __init__(self, path: str, line_no: int, cap: int) -> None:
        super().__init__(
            f"GET {path}: line {line_no} is longer than {cap:,} bytes (the --max-line-bytes "
            "cap on one result line); the download stopped there and the lines before it "
            "are kept", code="line_too_long", exit_code=errors.UNAVAILABLE,
            extra={"line": line_no, "max_line_bytes": cap},
            hint="a result line that long is most likely a broken server or proxy answer; if "
                 "the results really are that large, re-run with a higher --max-line-bytes")


class StreamInterrupted(APIError):
    """A streamed download broke off; every complete line before the break was handed back."""

    def __init__(self, message: str, *, lines_read: int = 0, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.lines_read = lines_read


# --------------------------------------------------------------------------- backoff

@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry. Total wait is capped so a command always ends."""

    max_retries: int = 5
    base_delay: float = DEFAULT_BASE_DELAY
    max_delay: float = DEFAULT_MAX_DELAY
    max_total_wait: float = DEFAULT_MAX_TOTAL_WAIT


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; else None."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        now = time.time() if now is None else now
        return max(0.0, when.timestamp() - now)
    if seconds != seconds or seconds < 0:  # NaN or negative
        return None
    return seconds


def retry_after_seconds(headers, body: bytes | str | None) -> float | None:
    """The server's requested wait: the Retry-After header first, then JSON retry_after_seconds."""
    header = parse_retry_after(headers.get("Retry-After")) if headers is not None else None
    if header is not None:
        return header
    data = _json_or_none(body)
    if isinstance(data, dict):
        value = data.get("retry_after_seconds")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            return float(value)
        if isinstance(value, str):
            return parse_retry_after(value)
    return None


def backoff_delay(attempt: int, policy: RetryPolicy, server_wait: float | None = None,
                  rng: random.Random | None = None) -> float:
    """Seconds before retry number `attempt + 1`.

    With a server-requested wait: that wait plus up to 10% (at most 1 s) of jitter, so many
    clients told the same number do not return in lockstep. Otherwise exponential backoff
    (base * 2**attempt, capped at max_delay) with jitter between half and the full value.
    """
    rng = rng or random
    if server_wait is not None:
        return server_wait + rng.uniform(0.0, min(1.0, server_wait * 0.1))
    ceiling = min(policy.max_delay, policy.base_delay * (2 ** attempt))
    return rng.uniform(ceiling / 2, ceiling)


# --------------------------------------------------------------------------- error text

def _json_or_none(body):
    if body is None:
        return None
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            return None
    body = body.strip()
    if not body or body[0] not in "{[":
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def server_words(body: bytes | str | None) -> str:
    """The server's own error text, whether it sent plain text or JSON.

    JSON bodies: `message` (plus the `error` code when both exist), OpenAI-style
    `{"error": {"message": ...}}`, else the JSON itself. Plain text as sent. Truncated, and
    shown as data: line breaks and control characters escaped (safetext.as_data), so an
    error body cannot put a line such as `next: ...` of its own into our output.
    """
    data = _json_or_none(body)
    text = ""
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            text = str(err["message"])
        elif data.get("message"):
            text = str(data["message"])
            if isinstance(err, str) and err and err not in text:
                text = f"{err}: {text}"
        elif isinstance(err, str) and err:
            text = err
        elif data.get("detail"):
            text = str(data["detail"])
    if not text:
        if isinstance(body, bytes):
            body = body.decode("utf-8", errors="replace")
        text = (body or "").strip()
    if len(text) > MAX_SERVER_WORDS:
        text = text[:MAX_SERVER_WORDS] + f"... ({len(text) - MAX_SERVER_WORDS} more characters)"
    return as_data(text)


def _hint_for_status(status: int) -> tuple[str, int, str]:
    """(code, exit code, hint) for a status that is not retried."""
    if status == 401:
        return ("unauthorized", errors.AUTH,
                "the key in DOUBLEWORD_API_KEY was refused: check it is set to a valid, "
                "unrevoked key for this base URL; do not retry in a loop")
    if status == 402:
        return ("payment_required", errors.AUTH,
                "the account's balance or spend cap does not allow this: add credits or raise "
                "the cap in the Doubleword console, then re-run the same command")
    if status == 403:
        return ("forbidden", errors.AUTH,
                "the key may not use this file, batch or model: check the model names and "
                "that the ids belong to this account")
    if status == 404:
        return ("not_found", errors.INVALID_INPUT,
                "check the id: it is unknown to this server or belongs to another account")
    if status == 413:
        return ("too_large", errors.INVALID_INPUT,
                "the file is larger than the server allows: split it into smaller files")
    if status >= 500:
        return ("server_error", errors.UNAVAILABLE,
                "the service failed; re-run the same command later")
    return ("rejected", errors.INVALID_INPUT,
            "fix what the server's message names, then re-run")


# --------------------------------------------------------------------------- streaming bodies

class MultipartFileBody:
    """A multipart/form-data body streamed from disk, with its exact length known up front.

    requests sends an iterable that has a length with a Content-Length header, chunk by
    chunk, so memory stays at one chunk whatever the file size. A fresh instance is needed
    for every attempt. The sha256 of what was actually sent is kept in `sent_sha256`.
    """

    def __init__(self, path: str, filename: str, fields: dict[str, str],
                 progress: ProgressCallback | None = None, chunk_size: int = UPLOAD_CHUNK):
        self.path = path
        self.file_size = os.path.getsize(path)
        self.progress = progress
        self.chunk_size = chunk_size
        self.sent_sha256: str | None = None
        self.deadline: Deadline | None = None  # told about every block sent
        boundary = "dwbatch-" + uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={boundary}"
        safe_name = filename.replace("\\", "_").replace('"', "_").replace("\r", "_") \
            .replace("\n", "_")
        head = []
        for name, value in fields.items():
            head.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'
                        f"\r\n\r\n{value}\r\n")
        head.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                    f'filename="{safe_name}"\r\nContent-Type: application/jsonl\r\n\r\n')
        self.head = "".join(head).encode("utf-8")
        self.tail = f"\r\n--{boundary}--\r\n".encode()

    def __len__(self) -> int:
        return len(self.head) + self.file_size + len(self.tail)

    def __iter__(self) -> Iterator[bytes]:
        total = len(self)
        sent = len(self.head)
        digest = hashlib.sha256()
        yield self.head
        remaining = self.file_size
        with open(self.path, "rb") as f:
            while remaining > 0:
                if self.deadline is not None:  # asked for the next block: the last one left
                    self.deadline.progress(self.chunk_size)
                chunk = f.read(min(self.chunk_size, remaining))
                if not chunk:
                    raise errors.InputError(
                        f"{self.path} shrank while it was being uploaded "
                        f"({remaining} bytes missing)",
                        hint="do not modify input files during submit; re-run the command")
                remaining -= len(chunk)
                digest.update(chunk)
                sent += len(chunk)
                yield chunk
                if self.progress:
                    self.progress(sent, total)
        self.sent_sha256 = digest.hexdigest()
        yield self.tail
        if self.deadline is not None:  # all sent: the answer gets a whole period
            self.deadline.restart()
        if self.progress:
            self.progress(total, total)


class LineStream:
    """A streamed response read as complete lines (bytes, each ending with b"\\n").

    `headers` is case-insensitive. A trailing piece without a newline (a torn last line) is
    never handed back: it is kept in `partial`. If the connection breaks, the complete lines
    received so far are yielded first, then StreamInterrupted is raised. The same happens
    when the body stops moving (less than deadline.PROGRESS_BYTES in a deadline period) or is
    a decompression bomb. Use as a context manager (or call close()) so the connection is
    released.
    """

    def __init__(self, response: requests.Response, method: str = "GET", path: str = "",
                 key: str | None = None, deadline: Deadline | None = None):
        self.response = response
        self.deadline = deadline
        self.status_code = response.status_code
        self.headers: CaseInsensitiveDict = response.headers
        self.lines_read = 0
        self.partial = b""
        self.finished = False
        self._method = method
        self._path = path
        self._key = key
        self.scrubber = byte_scrubber(key)  # a key the server echoes is not handed on

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)

    @property
    def complete(self) -> bool:
        """True when the body ended cleanly on a line boundary."""
        return self.finished and not self.partial

    def __iter__(self) -> Iterator[bytes]:
        pending = bytearray()
        try:
            for chunk in self.chunks():
                start = 0
                while True:
                    nl = chunk.find(b"\n", start)
                    if nl < 0:
                        pending += chunk[start:]
                        break
                    pending += chunk[start:nl + 1]
                    line = bytes(pending)
                    pending.clear()
                    start = nl + 1
                    self.lines_read += 1
                    if self.scrubber is not None and self.scrubber.has_key(line):
                        line = self.scrubber.clean(line)
                    yield line
        except (*BROKEN_CONNECTION, bodies.BodyRefused) as exc:
            raise self._broke_off(exc, bytes(pending)) from None
        self._ended(bytes(pending))

    def chunks(self) -> Iterator[bytes]:
        """The decoded body as it arrives, each arrival moving the progress deadline."""
        on_wire = self.deadline.progress if self.deadline is not None else None
        return bodies.decoded_chunks(self.response, on_wire=on_wire, size=LINE_CHUNK)

    def _broke_off(self, exc: BaseException, partial: bytes) -> StreamInterrupted:
        """Keep the torn tail, release the connection, and say how far the download got."""
        self.partial = partial
        expired = self.deadline is not None and self.deadline.expired
        self.close()
        if expired:
            why = (f"it moved less than {PROGRESS_KIB} KiB in {self.deadline.seconds:g} s "
                   "(--request-timeout), so it was cut off")
        elif isinstance(exc, bodies.BodyRefused):
            why = as_data(str(exc))
        else:
            why = as_data(f"{type(exc).__name__}: {exc}")
        return StreamInterrupted(
            redact(f"{self._method} {self._path}: the download broke off after "
                   f"{self.lines_read} complete lines ({why})", self._key),
            lines_read=self.lines_read, code="stream_interrupted",
            exit_code=errors.UNAVAILABLE, method=self._method, path=self._path,
            hint="the lines before the break are complete; re-run to continue")

    def _ended(self, partial: bytes) -> None:
        """The body ended cleanly; `partial` is a last piece without a newline, if any."""
        if partial and self.scrubber is not None and self.scrubber.has_key(partial):
            partial = self.scrubber.clean(partial)
        self.partial = partial
        self.finished = True
        self.close()

    def close(self) -> None:
        if self.deadline is not None:
            self.deadline.stop()
        self.response.close()

    def __enter__(self) -> LineStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- the client

def _sent_before_failure(exc: Exception) -> bool:
    """False when the connection never opened (nothing reached the server), else True."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return False
    u3 = urllib3.exceptions
    seen = set()
    stack = [exc]
    while stack:
        cur = stack.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, (u3.NewConnectionError, u3.ConnectTimeoutError)):
            return False
        if isinstance(cur, ConnectionRefusedError):
            return False
        stack.extend([getattr(cur, "reason", None), cur.__cause__, cur.__context__])
        stack.extend(a for a in getattr(cur, "args", ()) if isinstance(a, BaseException))
    return True


def default_retry_note(message: str) -> None:
    sys.stderr.write(for_terminal(message) + "\n")
    sys.stderr.flush()


class _Bearer(requests.auth.AuthBase):
    """The key as a bearer token. Set as the session's auth, so requests never replaces it
    with a ~/.netrc entry; its repr never shows the key."""

    def __init__(self, key: str) -> None:
        self._key = key

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self._key}"
        return request

    def __repr__(self) -> str:
        return "<bearer token>"


class _DeadlinePassed(Exception):
    """One attempt ran past its deadline (handled like a timeout)."""


def same_origin(url: str, other: str) -> bool:
    """Same scheme, host and port, as urllib3 (what connects) reads them."""
    try:
        a, b = urllib3.util.parse_url(url), urllib3.util.parse_url(other)
    except urllib3.exceptions.LocationParseError:
        return False
    if a.auth or b.auth:
        return False
    return (a.scheme, (a.host or "").lower(), a.port or _DEFAULT_PORTS.get(a.scheme)) == \
        (b.scheme, (b.host or "").lower(), b.port or _DEFAULT_PORTS.get(b.scheme))


_DEFAULT_PORTS = {"http": 80, "https": 443}


class Client:
    """Doubleword API client: `Client(settings)`; every method returns parsed JSON (dicts).

    on_retry(message) is told about each retry (default: a line on stderr).

    Deadlines (see deadline.py): a call must be answered in full within `settings.timeout`
    seconds (--request-timeout). Uploads and downloads may take longer as long as they keep
    moving: they are cut when less than PROGRESS_BYTES moved in the last `settings.timeout`
    seconds (uploads: UPLOAD_MIN_READ_TIMEOUT at least, also for the wait for the answer).
    A cut call counts as a timeout: retried like one, and never repeated blindly when it
    was not idempotent.
    """

    def __init__(self, settings: Settings, *, policy: RetryPolicy | None = None,
                 on_retry: Callable[[str], None] | None = default_retry_note,
                 sleep: Callable[[float], None] = time.sleep,
                 session: requests.Session | None = None) -> None:
        self.settings = settings
        self.base_url = settings.base_url.rstrip("/")
        self.policy = policy or RetryPolicy(max_retries=settings.max_retries)
        self.on_retry = on_retry
        self.sleep = sleep
        self._key = settings.api_key
        self.session = session or requests.Session()
        self.session.trust_env = True  # HTTPS_PROXY and CA bundles of the environment
        adapter = WatchedAdapter()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = f"doubleword-batch/{__version__}"
        self.session.headers["Accept-Encoding"] = bodies.ACCEPT_ENCODING
        if settings.api_key:
            self.session.auth = _Bearer(settings.api_key)
        # A proxy for a loopback address would receive the key (in clear text over plain
        # http) and connect to its own loopback, not ours: never use one. For https hosts
        # an environment proxy is used through a CONNECT tunnel, which carries the TLS
        # session end to end: the proxy sees the host name, never the key.
        host = urllib3.util.parse_url(self.base_url).host
        self._proxies = dict(NO_PROXY) if is_loopback_host(host) else None

    # ---- plumbing -----------------------------------------------------------------------
    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _redact(self, text: str) -> str:
        return redact(redact(text, self._key))

    def url(self, path: str) -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def request(self, method: str, path: str, *, params: dict | None = None,
                json_body: object = None, body_factory: Callable[[], tuple] | None = None,
                idempotent: bool = True, stream: bool = False,
                read_timeout: float | None = None,
                ok: tuple[int, ...] = (200, 201, 202, 204)) -> requests.Response:
        """One API call with the retry rules; returns the successful Response.

        Without `stream`, the answer has been read (at most bodies.MAX_JSON_BYTES) within
        the call's deadline and is in `.content`. With `stream`, the body is the caller's to
        read, with `.deadline` a progress deadline the caller must stop (LineStream does).
        body_factory() -> (data, headers) builds a fresh body per attempt (streamed uploads).
        idempotent=False: a lost answer raises AmbiguousOutcome instead of being repeated.
        """
        policy = self.policy
        seconds = read_timeout or self.settings.timeout
        timeout = (self.settings.connect_timeout, seconds)
        where = f"{method} {path}"
        attempt = 0
        waited = 0.0
        while True:
            data = None
            headers = None
            if body_factory is not None:
                data, headers = body_factory()
            deadline = Deadline(seconds)
            if hasattr(data, "deadline"):
                data.deadline = deadline
            try:
                resp = self._attempt(method, path, params=params, json_body=json_body,
                                     data=data, headers=headers, timeout=timeout,
                                     stream=stream, ok=ok, deadline=deadline)
            except errors.DWError:
                raise
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                    requests.exceptions.ChunkedEncodingError, _DeadlinePassed) as exc:
                expired = isinstance(exc, _DeadlinePassed)
                sent = expired or _sent_before_failure(exc)
                if expired:
                    reason = (f"no complete answer within the deadline of {seconds:g} s "
                              "(--request-timeout)")
                else:
                    reason = self._redact(as_data(f"{type(exc).__name__}: {exc}"))
                if sent and not idempotent:
                    raise AmbiguousOutcome(
                        f"{where}: the answer was lost after the request was sent ({reason}); "
                        "the server may have done it",
                        code="outcome_unknown", exit_code=errors.UNAVAILABLE,
                        method=method, path=path,
                        hint="look the object up before repeating the call") from None
                server_wait = None
                status = None
            except requests.exceptions.RequestException as exc:
                raise APIError(self._redact(as_data(f"{where} could not be sent: "
                                                    f"{type(exc).__name__}: {exc}")),
                               code="request_error", exit_code=errors.INTERNAL,
                               method=method, path=path) from None
            else:
                status = resp.status_code
                if status in ok:
                    return resp
                body = resp.content
                words = self._redact(server_words(body))
                if status not in RETRY_STATUSES:
                    raise self._error(method, path, status, words)
                if not idempotent and status not in NOT_PROCESSED_STATUSES:
                    raise AmbiguousOutcome(
                        f"{where} answered {status} ({words or 'no message'}); the server "
                        "may or may not have done it",
                        status=status, server_message=words, code="outcome_unknown",
                        exit_code=errors.UNAVAILABLE, method=method, path=path,
                        hint="look the object up before repeating the call")
                server_wait = retry_after_seconds(resp.headers, body)
                reason = f"{status} {words}".strip()
            if attempt >= policy.max_retries:
                raise self._exhausted(method, path, status, reason, attempt, waited)
            delay = backoff_delay(attempt, policy, server_wait)
            if waited + delay > policy.max_total_wait:
                raise self._exhausted(method, path, status, reason, attempt, waited,
                                      wanted=delay)
            attempt += 1
            if self.on_retry:
                self.on_retry(self._redact(
                    f"{where}: {reason}; retry {attempt} of {policy.max_retries} in "
                    f"{delay:.1f} s"))
            self.sleep(delay)
            waited += delay

    def _attempt(self, method: str, path: str, *, params, json_body, data, headers, timeout,
                 stream: bool, ok: tuple[int, ...], deadline: Deadline) -> requests.Response:
        """Send once, under `deadline`; read the answer unless it is a stream to hand back.

        Error answers are read up to bodies.MAX_ERROR_BYTES and the connection closed."""
        handed_over = False
        deadline.claim()
        try:
            resp = self._send(method, path, params=params, json_body=json_body, data=data,
                              headers=headers, timeout=timeout)
            if resp.status_code in ok and stream:
                deadline.restart()  # from here on a progress deadline
                resp.deadline = deadline
                handed_over = True
                return resp
            limit = bodies.MAX_JSON_BYTES if resp.status_code in ok else bodies.MAX_ERROR_BYTES
            try:
                body, more = bodies.read_capped(resp, limit)
            except bodies.BodyRefused as exc:
                raise self._bad_answer(method, path, resp.status_code, str(exc)) from None
            except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
                raise requests.exceptions.ConnectionError(exc) from None
            finally:
                resp.close()
            if more and resp.status_code in ok:
                raise self._bad_answer(
                    method, path, resp.status_code,
                    f"it is larger than {bodies.MAX_JSON_BYTES // 2**20} MiB, far more than "
                    "any API object; it was not read further")
            resp._content = body
            resp._content_consumed = True
            return resp
        except errors.DWError:
            raise
        except Exception:
            if deadline.expired:
                raise _DeadlinePassed() from None
            raise
        finally:
            deadline.detach()
            if not handed_over:
                deadline.stop()

    def _send(self, method: str, path: str, *, params, json_body, data, headers, timeout
              ) -> requests.Response:
        """The request, following redirects only where that is safe: never on a write (the
        body and the key would go where the server says), and on reads only to the same
        scheme, host and port."""
        url = self.url(path)
        for _hop in range(MAX_REDIRECTS + 1):
            resp = self.session.request(method, url, params=params, json=json_body, data=data,
                                        headers=headers, timeout=timeout, stream=True,
                                        allow_redirects=False, proxies=self._proxies)
            if not resp.is_redirect:
                return resp
            target = urljoin(resp.url, resp.headers.get("Location", ""))
            resp.close()
            shown = as_data(target)[:300]
            if method not in ("GET", "HEAD"):
                raise self._redirect_refused(
                    method, path, resp.status_code,
                    f"it redirects this write to {shown}; writes are never redirected")
            if not same_origin(target, self.base_url):
                raise self._redirect_refused(
                    method, path, resp.status_code,
                    f"it redirects to another address, {shown}; only redirects to the same "
                    "scheme, host and port are followed")
            url, params = target, None
        raise self._redirect_refused(method, path, resp.status_code,
                                     f"more than {MAX_REDIRECTS} redirects in a row")

    def _redirect_refused(self, method: str, path: str, status: int, why: str) -> APIError:
        return APIError(
            self._redact(f"{method} {path} answered {status}: {why}"),
            status=status, code="redirect_refused", exit_code=errors.INVALID_INPUT,
            method=method, path=path,
            hint="check --base-url (or DOUBLEWORD_BASE_URL): it should be the API's own "
                 "address; if you trust the address the server names, use that instead")

    def _bad_answer(self, method: str, path: str, status: int, why: str) -> APIError:
        return APIError(
            self._redact(f"{method} {path} answered {status} with an answer that was refused: "
                         f"{as_data(why)}"),
            status=status, code="bad_response", exit_code=errors.UNAVAILABLE,
            method=method, path=path,
            hint="check --base-url points at the API (it should end with /v1); if it does, "
                 "the service is misbehaving: re-run the same command later")

    def _error(self, method: str, path: str, status: int, words: str) -> APIError:
        code, exit_code, hint = _hint_for_status(status)
        message = f"{method} {path} answered {status}: {words or '(no message)'}"
        return APIError(message, status=status, server_message=words, code=code,
                        exit_code=exit_code, hint=hint, method=method, path=path)

    def _exhausted(self, method: str, path: str, status: int | None, reason: str,
                   attempts: int, waited: float, wanted: float | None = None) -> APIError:
        why = f"after {attempts} retries and {waited:.0f} s of waiting"
        if wanted is not None:
            why += (f" (the next wait, {wanted:.0f} s, would pass the "
                    f"{self.policy.max_total_wait:.0f} s cap)")
        return APIError(
            self._redact(f"{method} {path} failed {why}: {reason}"),
            status=status, code="unavailable", exit_code=errors.UNAVAILABLE,
            method=method, path=path,
            hint="the service is busy or unreachable; re-run the same command later "
                 "(nothing recorded is repeated), or raise --max-retries")

    def get_json(self, path: str, params: dict | None = None) -> dict:
        return self._json(self.request("GET", path, params=params), "GET", path)

    def _json(self, resp: requests.Response, method: str, path: str) -> dict:
        """The answer parsed, every string in it escaped as data (safetext) and with the key
        redacted, so nothing the server echoes can reach output or the job file as it was."""
        if resp.status_code == 204 or not resp.content:
            return {}
        try:
            return map_strings(json.loads(resp.content), lambda t: self._redact(as_data(t)))
        except (ValueError, RecursionError):
            raise APIError(
                self._redact(f"{method} {path} answered {resp.status_code} with a body that is "
                             f"not JSON: {server_words(resp.content)[:200]}"),
                status=resp.status_code, code="bad_response", exit_code=errors.UNAVAILABLE,
                method=method, path=path,
                hint="check --base-url points at the API (it should end with /v1)") from None

    def iter_list(self, path: str, params: dict | None = None, *,
                  page_size: int = LIST_PAGE_SIZE, max_items: int | None = None,
                  max_pages: int = MAX_LIST_PAGES,
                  check_item: Callable[[object, str], dict] | None = None
                  ) -> Iterator[dict]:
        """Every item of a list endpoint, following has_more / last_id page by page.

        A server that keeps saying has_more for ever, or whose cursor stops moving (the same
        `after` twice), must not keep a command paging for ever: after `max_pages` pages, or
        at the first repeated cursor, this raises APIError (exit 7, `bad_response`) rather
        than hand back a list that silently misses items. Each page, and each item with
        `check_item(item, where)`, is checked (shapes.py).
        """
        params = {k: v for k, v in (params or {}).items() if v is not None}
        after = params.pop("after", None)
        count = 0
        seen_after = {after} if after else set()
        for _page in range(max_pages):
            page = dict(params)
            page["limit"] = page_size if max_items is None else min(page_size,
                                                                    max_items - count)
            if after:
                page["after"] = after
            data = self.get_json(path, page)
            items = data.get("data") if isinstance(data, dict) else None
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise self._bad_page(path, "it is not a list page ({\"data\": [objects...]})")
            shapes.page(data, f"GET {path}")
            for item in items:
                yield check_item(item, f"GET {path}") if check_item else item
                count += 1
                if max_items is not None and count >= max_items:
                    return
            if data.get("has_more") is not True or not items:
                return
            after = data.get("last_id") or items[-1].get("id")
            if not isinstance(after, str) or not after:
                raise self._bad_page(path, "it says has_more but gives no last_id to go on from")
            if after in seen_after:
                raise self._bad_page(path, f"it sent the page after {after!r} again: its "
                                           "paging goes round in a circle")
            seen_after.add(after)
        raise self._bad_page(path, f"it still said has_more after {max_pages} pages "
                                   f"({count} items)")

    def _bad_page(self, path: str, why: str) -> APIError:
        return APIError(
            self._redact(f"GET {path}: the list was not read to its end: {why}"),
            code="bad_response", exit_code=errors.UNAVAILABLE, method="GET", path=path,
            hint="the service's list is misbehaving; re-run the same command later")

    # ---- files --------------------------------------------------------------------------
    def upload_file(self, path: str, *, filename: str | None = None, purpose: str = "batch",
                    progress: ProgressCallback | None = None,
                    expected_sha256: str | None = None, idempotent: bool = True) -> dict:
        """POST /files, streaming `path` from disk. Returns the File object.

        idempotent=False: an answer lost after the body was sent (or a 500/502/504) raises
        AmbiguousOutcome instead of uploading again, so the caller can look the file up by
        its (unique) filename with find_files() first. With expected_sha256, a file that
        changed since it was checked is deleted again and refused.
        """
        filename = filename or os.path.basename(path)
        bodies: list[MultipartFileBody] = []

        def body_factory():
            body = MultipartFileBody(path, filename, {"purpose": purpose}, progress)
            bodies.append(body)
            return body, {"Content-Type": body.content_type}

        read_timeout = max(self.settings.timeout, UPLOAD_MIN_READ_TIMEOUT)
        resp = self.request("POST", "/files", body_factory=body_factory,
                            read_timeout=read_timeout, idempotent=idempotent)
        obj = shapes.file(self._json(resp, "POST", "/files"), "POST /files")
        sent = bodies[-1].sent_sha256 if bodies else None
        if expected_sha256 and sent and sent != expected_sha256:
            if obj.get("id"):
                try:
                    self.delete_file(obj["id"])
                except errors.DWError:
                    pass
            raise errors.InputError(
                f"{path} changed while it was being uploaded (sha256 {sent[:12]}… instead of "
                f"{expected_sha256[:12]}…); the uploaded copy was deleted",
                hint="do not modify input files during submit; re-run the command")
        return obj

    def get_file(self, file_id: str) -> dict:
        return shapes.file(self.get_json(f"/files/{file_id}"), f"GET /files/{file_id}",
                           file_id)

    def delete_file(self, file_id: str) -> dict:
        path = f"/files/{file_id}"
        return self._json(self.request("DELETE", path), "DELETE", path)

    def list_files(self, *, purpose: str | None = None, max_items: int | None = None,
                   order: str | None = None) -> list[dict]:
        return list(self.iter_list("/files", {"purpose": purpose, "order": order},
                                   max_items=max_items, check_item=shapes.file))

    def find_files(self, filename: str, *, size: int | None = None) -> list[dict]:
        """Files whose filename is exactly `filename` (and whose size is `size`, if given),
        found with GET /files?search= (a case-insensitive substring match on the server)."""
        found = []
        for item in self.iter_list("/files", {"search": filename}, check_item=shapes.file):
            if item.get("filename") != filename:
                continue
            if size is not None and item.get("bytes") != size:
                continue
            found.append(item)
        return found

    def list_models(self) -> list[dict]:
        """GET /models: the models this key may use (OpenAI list shape, one page)."""
        data = self.get_json("/models")
        models = data.get("data") if isinstance(data, dict) else None
        if not isinstance(models, list):
            raise APIError("GET /models answered something that is not a model list",
                           status=200, code="bad_response", exit_code=errors.UNAVAILABLE,
                           method="GET", path="/models",
                           hint="check --base-url points at the API (it should end with /v1)")
        return [m for m in models if isinstance(m, dict) and isinstance(m.get("id"), str)]

    def cost_estimate(self, file_id: str, completion_window: str) -> dict:
        """GET /files/{id}/cost-estimate; total_estimated_cost is a decimal string."""
        return self.get_json(f"/files/{file_id}/cost-estimate",
                             {"completion_window": completion_window})

    def file_content(self, file_id: str, *, skip: int | None = None,
                     limit: int | None = None) -> LineStream:
        """GET /files/{id}/content streamed: `.headers` (case-insensitive) and complete lines.

        Resume with skip=<X-Last-Line of the previous answer> (the server ignores `offset`).
        """
        return self.stream_lines(f"/files/{file_id}/content", {"skip": skip, "limit": limit})

    def stream_lines(self, path: str, params: dict | None = None) -> LineStream:
        """Any streamed NDJSON endpoint (file content, batch results) as a LineStream."""
        params = {k: v for k, v in (params or {}).items() if v is not None}
        resp = self.request("GET", path, params=params, stream=True)
        return LineStream(resp, "GET", path, self._key, deadline=getattr(resp, "deadline", None))

    # ---- batches ------------------------------------------------------------------------
    def create_batch(self, input_file_id: str, endpoint: str, completion_window: str,
                     metadata: dict[str, str] | None = None) -> dict:
        """POST /batches. Not idempotent: a lost answer raises AmbiguousOutcome, so the
        caller can search by metadata (find_batches_by_metadata) before creating again."""
        body: dict = {"input_file_id": input_file_id, "endpoint": endpoint,
                      "completion_window": completion_window}
        if metadata:
            body["metadata"] = {str(k): str(v) for k, v in metadata.items()}
        return shapes.batch(self._json(self.request("POST", "/batches", json_body=body,
                                                    idempotent=False), "POST", "/batches"),
                            "POST /batches")

    def get_batch(self, batch_id: str) -> dict:
        return shapes.batch(self.get_json(f"/batches/{batch_id}"), f"GET /batches/{batch_id}",
                            batch_id)

    def iter_batches(self, *, search: str | None = None, status: str | None = None,
                     after: str | None = None, max_items: int | None = None,
                     page_size: int = LIST_PAGE_SIZE) -> Iterator[dict]:
        return self.iter_list("/batches", {"search": search, "status": status, "after": after},
                              page_size=page_size, max_items=max_items,
                              check_item=shapes.batch)

    def list_batches(self, *, search: str | None = None, status: str | None = None,
                     after: str | None = None, limit: int | None = None) -> list[dict]:
        """GET /batches across pages; `limit` caps the number of batches returned."""
        return list(self.iter_batches(search=search, status=status, after=after,
                                      max_items=limit))

    def find_batches_by_metadata(self, search: str, match: dict[str, str]) -> list[dict]:
        """Batches found by GET /batches?search= whose metadata has every key/value of match."""
        found = []
        for batch in self.iter_batches(search=search):
            meta = batch.get("metadata") or {}
            if all(str(meta.get(k)) == str(v) for k, v in match.items()):
                found.append(batch)
        return found

    def cancel_batch(self, batch_id: str) -> dict:
        path = f"/batches/{batch_id}/cancel"
        return self._batch_or_empty(self._json(self.request("POST", path), "POST", path),
                                    path, batch_id)

    def retry_batch(self, batch_id: str) -> dict:
        """Doubleword extension: failed and cancelled requests go back to pending, same batch."""
        path = f"/batches/{batch_id}/retry"
        return self._batch_or_empty(self._json(self.request("POST", path), "POST", path),
                                    path, batch_id)

    @staticmethod
    def _batch_or_empty(obj: object, path: str, batch_id: str) -> dict:
        """An action's answer: the Batch (checked), or {} when the server sent no body."""
        if obj == {}:
            return {}
        return shapes.batch(obj, f"POST {path}", batch_id)

    def delete_batch(self, batch_id: str) -> dict:
        path = f"/batches/{batch_id}"
        return self._json(self.request("DELETE", path), "DELETE", path)

    def batch_results(self, batch_id: str, *, skip: int | None = None,
                      limit: int | None = None) -> LineStream:
        """Doubleword extension GET /batches/{id}/results: one line per input request."""
        return self.stream_lines(f"/batches/{batch_id}/results", {"skip": skip, "limit": limit})

    def batch_analytics(self, batch_id: str) -> dict:
        return self.get_json(f"/batches/{batch_id}/analytics")


def client_from_args(args, *, on_retry: Callable[[str], None] | None = default_retry_note
                     ) -> Client:
    """A Client for parsed arguments made with cli.add_network_args (exit 6 without a key)."""
    from .config import settings_from_args

    return Client(settings_from_args(args), on_retry=on_retry)


def _overlong_line(chunk: bytes, run: int, cap: int) -> tuple[int, int | None]:
    """Line lengths in `chunk`, given `run` bytes of a line begun before it: (the length of
    the line begun at its end, None) or, when a line passes `cap` bytes, (0, where that line
    starts in the chunk: 0 when it began before the chunk)."""
    start = 0
    while True:
        nl = chunk.find(b"\n", start)
        if nl < 0:
            run += len(chunk) - start
            return (0, start) if run > cap else (run, None)
        if run + nl - start + 1 > cap:
            return 0, start
        if cap >= len(chunk):  # no later line of this chunk can pass the cap
            return len(chunk) - chunk.rfind(b"\n") - 1, None
        run, start = 0, nl + 1


def iter_line_blocks(stream: LineStream, max_lines: int | None = None,
                     max_line_bytes: int | None = None) -> Iterator[tuple[list, int]]:
    """A LineStream's complete lines in blocks: (pieces, number of lines).

    `pieces` is a list of bytes-like objects to write one after the other; together they end
    with b"\\n". They are views of the bytes as they were read, not copies: a download of
    hundreds of megabytes spends its time on the network and the disk, not on copying
    memory. The same guarantees as iterating the stream line by line: a torn tail is never
    handed out (it is left in `stream.partial`), and a break raises StreamInterrupted after
    every complete line before it was handed out. max_lines: stop after that many lines (the
    rest is not read). A block holding the key (in any spelling) is handed out redacted.
    max_line_bytes: a line longer than that raises LineTooLong (after the lines before it
    were handed out), so memory stays bounded whatever the server sends.
    """
    tail: list[bytes] = []  # the start of a line that continues in the next chunk
    run = 0  # bytes of the line begun in `tail`
    try:
        for chunk in stream.chunks():
            overlong = None
            if max_line_bytes is not None:
                run, overlong = _overlong_line(chunk, run, max_line_bytes)
                if overlong is not None:
                    chunk = chunk[:overlong]  # hand out the complete lines before it
            end = chunk.rfind(b"\n") + 1
            if end == 0:
                tail.append(chunk)
            else:
                n = chunk.count(b"\n")
                if max_lines is not None and stream.lines_read + n >= max_lines:
                    keep = max_lines - stream.lines_read
                    cut = 0
                    for _ in range(keep):
                        cut = chunk.index(b"\n", cut) + 1
                    stream.lines_read += keep
                    stream.close()
                    if keep:
                        yield _scrubbed(stream, tail, chunk, cut), keep
                    return
                pieces = _scrubbed(stream, tail, chunk, end)
                tail = [chunk[end:]] if end < len(chunk) else []
                stream.lines_read += n
                yield pieces, n
            if overlong is not None:
                stream.close()
                raise LineTooLong(stream._path, stream.lines_read + 1, max_line_bytes)
    except (*BROKEN_CONNECTION, bodies.BodyRefused) as exc:
        raise stream._broke_off(exc, b"".join(tail)) from None
    stream._ended(b"".join(tail))


def _scrubbed(stream: LineStream, tail: list[bytes], chunk: bytes, end: int) -> list:
    """The pieces of one block (`tail`, then chunk[:end]), redacted when they hold the key.

    The chunk is searched in place and only the seam with a line begun in earlier reads is
    copied, so a download is not slowed down, and a key split across two reads is found."""
    piece = memoryview(chunk)[:end] if end < len(chunk) else chunk
    scrub = stream.scrubber
    if scrub is None:
        return tail + [piece]
    head = b"".join(tail)
    reach = scrub.reach - 1
    hit = scrub.has_key(chunk, 0, end) or (head and (
        scrub.has_key(head) or scrub.has_key(head[-reach:] + chunk[:min(reach, end)])))
    if not hit:
        return [head, piece] if head else [piece]
    return [scrub.clean(head + bytes(piece))]
