"""The sandbox's settings, one field per command-line flag of scripts/sandbox_server.py."""

from __future__ import annotations

from dataclasses import dataclass, field

ALLOWED_URLS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
)
MAX_REQUEST_BODY_BYTES = 10 * 1024 * 1024  # the real server's per-request body limit
MULTIPART_OVERHEAD = 10 * 1024  # the real server allows this much on top of max file size


@dataclass
class Options:
    host: str = "127.0.0.1"
    port: int = 8787
    api_key: str | None = None  # None: any non-empty Bearer key is accepted
    max_file_bytes: int = 200_000_000
    max_requests: int = 0  # 0: no cap
    completion_windows: list[str] = field(default_factory=lambda: ["24h", "1h"])
    chat_models: list[str] = field(default_factory=lambda: ["sandbox-chat"])
    embedding_models: list[str] = field(default_factory=lambda: ["sandbox-embed"])
    rate: float = 100.0  # requests finished per second per batch; 0 = as fast as possible
    validating_seconds: float = 0.2
    manual: bool = False
    seed: int = 0
    openai_compat: bool = False
    enable_faults: bool = False
    data_dir: str | None = None
    allow_remote: bool = False
    verbose: bool = False

    def model_kind(self, model: str) -> str | None:
        """'chat', 'embedding', or None when the key may not use the model."""
        if model in self.chat_models:
            return "chat"
        if model in self.embedding_models:
            return "embedding"
        return None


def window_seconds(window: str) -> int:
    """Seconds of a completion window such as '24h', '1h', '30m', '7d' (unknown: 24 h)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return int(window[:-1]) * units[window[-1]]
    except (KeyError, ValueError, IndexError):
        return 86400
