"""Model names: which models the key may use, and a wrong name caught before any upload.

Why: the service checks model access only at upload, and answers a wrong name with 403
(`Line N: Model 'x' has not been configured or is not available to user`), which reads like a
key problem. GET /models lists what the key may use, so submit.py checks the files' models
against it first and names the closest real ones; a server without /models skips the check.
"""

from __future__ import annotations

import difflib
import re

from . import cli, errors
from .client import APIError, Client

MODEL_REFUSED = re.compile(r"Model '(?P<model>[^']*)' has not been configured or is not "
                           r"available", re.IGNORECASE)
NO_MODELS_ROUTE = (404, 405, 501)
MAX_CLOSEST = 3


def closest_names(model: str, available: list[str]) -> list[str]:
    """Up to three available names most like `model` (case and provider prefix ignored)."""
    def bare(name: str) -> str:
        return name.lower().rsplit("/", 1)[-1]

    by_bare: dict[str, str] = {}
    for name in available:
        by_bare.setdefault(bare(name), name)
    wanted = bare(model)
    picks = [n for n in available if wanted and (wanted in bare(n) or bare(n) in wanted)]
    picks += [by_bare[b] for b in difflib.get_close_matches(wanted, list(by_bare),
                                                            n=MAX_CLOSEST, cutoff=0.4)]
    out: list[str] = []
    for name in picks:
        if name not in out:
            out.append(name)
    return out[:MAX_CLOSEST]


def not_available_error(model: str, requests: int | None, available: list[str] | None,
                        *, uploaded_nothing: bool = True, refused: str | None = None,
                        extra: dict | None = None) -> errors.InputError:
    """exit 2 `model_not_available`: the model, how many requests use it, the closest names.
    `refused`: the server's words when it was the upload that was refused."""
    closest = closest_names(model, available or [])
    uses = f" ({requests:,} request{'s' if requests != 1 else ''} use it)" \
        if requests is not None else ""
    message = f"model {model!r}{uses} is not available to this key"
    if refused:
        message = f"{refused}: the server refused the upload because {message}"
    if closest:
        message += f"; closest available: {', '.join(closest)}"
    elif available:
        message += f"; available: {', '.join(available[:20])}"
    if uploaded_nothing:
        message += ". Nothing was uploaded"
    hint = ("the key is fine, the model name is not: list the models with "
            "`batches.py models`, rebuild the batch file with create_batch_file.py --model "
            "NAME, then run the same submit command again")
    fields = {"model": model, "requests": requests, "closest": closest}
    fields.update(extra or {})
    return errors.InputError(message, code="model_not_available", hint=hint, extra=fields,
                             next=cli.script_command("batches.py", "models", "--json"))


def fetch_available(client: Client) -> list[str] | None:
    """Model ids from GET /models; None when the server has no such route or it failed
    (with a note on stderr); exit 6 when the key is refused there."""
    try:
        return [m["id"] for m in client.list_models()]
    except APIError as exc:
        if exc.status in NO_MODELS_ROUTE:
            return None
        if exc.exit_code == errors.AUTH:
            raise
        cli.warn(f"note: could not list the models ({exc.message}); model names are "
                 "checked by the upload instead")
        return None


def check_models(client: Client, used: dict[str, int]) -> list[str] | None:
    """Refuse (exit 2) a model in the files that the key cannot use; returns the list seen."""
    available = fetch_available(client)
    if available is None:
        return None
    missing = sorted(m for m in used if m not in set(available))
    if missing:
        first = missing[0]
        others = {m: used[m] for m in missing[1:]}
        extra = {"other_missing_models": others} if others else {}
        error = not_available_error(first, used[first], available, extra=extra)
        if others:
            also = ", ".join(f"{m!r} ({n:,} requests)" for m, n in others.items())
            error.message += f"; also not available: {also}"
        raise error
    return available


def refused_model(exc: APIError) -> str | None:
    """The model named by an upload's 403 `Model 'x' has not been configured...`, else None."""
    if exc.status not in (400, 403):
        return None
    match = MODEL_REFUSED.search(exc.server_message or "")
    return match.group("model") if match else None
