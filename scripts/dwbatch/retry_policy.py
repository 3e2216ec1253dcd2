"""Which failed requests are worth sending again, and which are given up, in words.

Why: without an end, "retry until it succeeds" loops for ever on requests the model server
rejects (a 400 fails the same way every time). The rule (cli-contract "Finishing a job"):
an `error` whose upstream answer was a client error (NonRetriableHttpStatus: 400, 404, 413,
422 and other 4xx except 408/429) is not retriable; every other non-ok record is, until it
has been sent `max_attempts` times (counted over the jobs given: an original and its retry
jobs). What is given up is counted per reason, with up to ten custom_ids each, so an agent
can tell its user which requests could not be done and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_MAX_ATTEMPTS = 3
NOT_RETRIED = ("ok", "pending")
RETRIABLE_CLIENT_CODES = (408, 429)
SHOWN_IDS = 10

# What each kind of final failure means for the user, after `n` attempts.
_EXHAUSTED = {
    "error": "failed every time it was sent ({n} attempts): the model server or the "
             "network kept failing",
    "truncated": "the answer was cut off at the token limit every time ({n} attempts)",
    "invalid_json": "the answer was not valid JSON every time ({n} attempts)",
    "schema_invalid": "the answer did not match the JSON Schema every time ({n} attempts)",
    "missing": "never ran: its batch ended before it, every time ({n} attempts)",
}


def is_retriable(record: dict) -> bool:
    """Can sending this (non-ok, non-pending) request again give another outcome?

    The service says so itself with the error type; without one (other servers, an HTTP
    error inside the output file) the upstream status code decides.
    """
    if record.get("status") != "error":
        return True
    error = record.get("error") or {}
    kind = error.get("type")
    if kind == "RetriableHttpStatus":
        return True
    if kind == "NonRetriableHttpStatus":
        return False
    code = error.get("status_code")
    return not (isinstance(code, int) and 400 <= code < 500
                and code not in RETRIABLE_CLIENT_CODES)


def give_up_reason(record: dict) -> str:
    """The words for why this record is given up (records of one reason are grouped)."""
    if not record.get("retriable", True):
        code = (record.get("error") or {}).get("status_code")
        http = f" (HTTP {code})" if isinstance(code, int) else ""
        return (f"rejected by the model server{http}: the request itself is refused, so "
                "sending it again would fail the same way")
    words = _EXHAUSTED.get(record.get("status"), "failed every time it was sent ({n} attempts)")
    return words.format(n=record.get("attempts", 1))


@dataclass
class RetryPolicy:
    """Decides, record by record, retry or give up; keeps the given-up tally."""

    statuses: tuple[str, ...]
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    gave_up: int = 0
    reasons: dict = field(default_factory=dict)  # reason -> {"count", "custom_ids"}

    def decide(self, record: dict) -> str | None:
        """'retry', 'give_up', or None (ok, pending, or a status not asked for)."""
        verdict = self.verdict(record)
        if verdict == "give_up":
            self._give_up(record)
        return verdict

    def verdict(self, record: dict) -> str | None:
        """What decide() says, without counting anything."""
        status = record["status"]
        if status in NOT_RETRIED or status not in self.statuses:
            return None
        if record.get("retriable", True) and record.get("attempts", 1) < self.max_attempts:
            return "retry"
        return "give_up"

    def _give_up(self, record: dict) -> None:
        self.gave_up += 1
        entry = self.reasons.setdefault(give_up_reason(record), {"count": 0, "custom_ids": []})
        entry["count"] += 1
        if len(entry["custom_ids"]) < SHOWN_IDS:
            entry["custom_ids"].append(record["custom_id"])

    def reasons_list(self) -> list[dict]:
        """gave_up_reasons for the envelope: most common first."""
        items = [{"reason": r, **v} for r, v in self.reasons.items()]
        return sorted(items, key=lambda e: -e["count"])

    def fresh(self) -> RetryPolicy:
        """The same rules with an empty tally."""
        return RetryPolicy(self.statuses, self.max_attempts)

    def keep(self, gave_up: int, reasons: list[dict]) -> None:
        """The tally an earlier run stored (the files were kept as they are)."""
        self.gave_up = gave_up
        self.reasons = {e["reason"]: {"count": e["count"], "custom_ids": e["custom_ids"]}
                        for e in reasons}


def describe(reasons: list[dict]) -> list[str]:
    """Human lines: '12 requests: <reason> (ids: a, b, ... and 2 more)'."""
    lines = []
    for entry in reasons:
        ids = ", ".join(entry["custom_ids"])
        more = entry["count"] - len(entry["custom_ids"])
        lines.append(f"{entry['count']} request{'s' if entry['count'] != 1 else ''}: "
                     f"{entry['reason']} (custom_id {ids}{f' and {more} more' if more else ''})")
    return lines
