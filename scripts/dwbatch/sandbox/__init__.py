"""The local Doubleword sandbox: a loopback HTTP server that behaves like the real batch API.

Everything in the skill is tested against it, so it reproduces the real service's quirks
(plain-text errors, bare UUID ids, partial-result headers, out-of-order completion, in-place
retry) and can switch to stock OpenAI-compatible behaviour (`--openai-compat`). One concern
per module:

- options.py      the server's settings (what the command-line flags set)
- httpio.py       request-body readers (Content-Length / chunked), Response, ApiError
- multipart.py    streaming multipart/form-data parser (file part goes straight to disk)
- upload_rules.py the server's upload validation, line by line from disk
- store.py        files, batches and their compact per-request state
- engine.py       background processing (rate, out-of-order, manual mode, expiry)
- mock_models.py  deterministic answers for chat/completions/responses/messages/embeddings
- content.py      file content views (skip, limit, X-Incomplete, X-Last-Line)
- faults.py       scripted faults and the call log for tests
- api.py          the /v1 routes; control.py the /_sandbox routes
- app.py          the HTTP handler: routing, auth, faults, response writing
- server.py       wiring it all together and running until SIGINT/SIGTERM
"""

from .options import Options
from .server import SandboxServer

__all__ = ["Options", "SandboxServer"]
