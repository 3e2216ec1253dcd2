"""The numbers and names the batch API imposes, in one place, so every script agrees.

Doubleword's docs give 200 MB and 50,000 requests per input file for the hosted service (the
server's own defaults differ and both are configuration), so these are defaults that users can
lower or raise with --max-file-bytes / --max-requests; `parse_size` reads sizes (the
argparse types of those flags are in cli.py).
"""

from __future__ import annotations

import re

MAX_FILE_BYTES = 200_000_000          # per input file, as documented for the hosted service
MAX_REQUESTS = 50_000                 # requests per input file, as documented
MAX_BODY_BYTES = 10 * 1024 * 1024     # one request body, enforced by the server
MAX_CUSTOM_ID_BYTES = 64              # UTF-8 bytes, not characters: the server counts bytes
MAX_RESULT_LINE_BYTES = 64 * 1024 * 1024  # one downloaded result line (fetch_results.py)
DEFAULT_MAX_PROBLEMS = 50             # problems listed before "… and N more"

# --endpoint short name -> the `url` of every line (and the batch's `endpoint`).
ENDPOINT_URLS = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
    "responses": "/v1/responses",
    "messages": "/v1/messages",
}
ALLOWED_URLS = tuple(ENDPOINT_URLS.values())

_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "k": 1000, "m": 1000**2, "g": 1000**3}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def endpoint_name(url: str) -> str:
    """The --endpoint short name of a url ('/v1/chat/completions' -> 'chat'), or the url."""
    for name, known in ENDPOINT_URLS.items():
        if known == url:
            return name
    return url


def parse_size(text: str) -> int:
    """Bytes from '200000000', '200MB', '100MiB', '1.5GB' (MB = 10**6, MiB = 2**20).

    Raises ValueError with the accepted forms when the text is not a positive size.
    """
    m = _SIZE_RE.match(str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size: use bytes (200000000) or a unit "
                         "(200MB, 100MiB, 1GB)")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"{text!r}: the size must be positive")
    return value
