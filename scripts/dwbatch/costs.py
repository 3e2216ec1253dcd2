"""What a job really cost, and what a pilot says the whole input will cost.

Why: the server's estimate guesses the output tokens before anything runs; what a batch
really used is in GET /batches/{id}/analytics (`total_cost`, a decimal string in USD, left out
when the server has no pricing). fetch_results.py sums it over the job's batches (`cost_usd`)
and, for a pilot job (`submit.py --pilot N`), scales the pilot's measured usage and cost by
request count to the whole input (`projection`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation

from . import jobfile
from .client import APIError, Client

COST_DECIMALS = 6
NO_ANALYTICS = (404, 405, 501)


def parse_cost(value) -> Decimal | None:
    """A total_cost as sent (decimal string or number) -> Decimal; None when absent or not a
    finite, non-negative number (anything from the network is checked)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        cost = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None
    return cost if cost.is_finite() and cost >= 0 else None


def cost_number(cost: Decimal | None) -> float | None:
    """The envelope's form: a JSON number rounded to 6 decimals, or None."""
    return None if cost is None else round(float(cost), COST_DECIMALS)


def batch_cost(api: Client, batch_id: str, warn: Callable[[str], None] | None = None
               ) -> Decimal | None:
    """total_cost of one batch from its analytics; None when the server does not say."""
    try:
        data = api.batch_analytics(batch_id)
    except APIError as exc:
        if exc.status not in NO_ANALYTICS and warn is not None:
            warn(f"the cost of batch {batch_id} is unknown: {exc.message}")
        return None
    return parse_cost(data.get("total_cost")) if isinstance(data, dict) else None


def record_costs(job_path: str, by_batch: dict[str, Decimal | None]) -> None:
    """Keep each shard's cost in the job file (`total_cost`, a decimal string), so an
    --offline fetch reports what the last online one learnt. Under the job's lock."""
    with jobfile.job_lock(job_path):
        job = jobfile.load_job(job_path)
        changed = False
        for shard in job["shards"]:
            if shard.get("batch_id") not in by_batch:
                continue
            cost = by_batch[shard["batch_id"]]
            value = None if cost is None else str(cost)
            if shard.get("total_cost") != value:
                changed = True
                if value is None:
                    shard.pop("total_cost", None)
                else:
                    shard["total_cost"] = value
        if changed:
            jobfile.save_job(job_path, job)


def recorded_costs(job: dict) -> dict[str, Decimal | None]:
    """batch id -> the cost a job file recorded (None where it recorded none)."""
    return {s["batch_id"]: parse_cost(s.get("total_cost"))
            for s in job.get("shards") or [] if s.get("batch_id")}


def total_cost(costs: Iterable[Decimal | None]) -> Decimal | None:
    """The sum, or None when any part is unknown (a part-sum would understate the cost)."""
    total = Decimal(0)
    seen = False
    for cost in costs:
        if cost is None:
            return None
        total += cost
        seen = True
    return total if seen else None


def projection(pilot: dict, ok_records: int, ok_usage: dict, cost: Decimal | None,
               completion_window: str | None) -> dict:
    """The pilot's measured usage (and cost) scaled to the whole input by request count:
    full_requests / the pilot's ok records. Numbers are None when nothing was measured."""
    full = int(pilot.get("full_requests") or 0)
    factor = Decimal(full) / Decimal(ok_records) if ok_records > 0 else None

    def scaled(tokens) -> int | None:
        if factor is None or not isinstance(tokens, int):
            return None
        return int((Decimal(tokens) * factor).to_integral_value())

    return {"pilot_requests": ok_records, "full_requests": full,
            "prompt_tokens": scaled(ok_usage.get("prompt_tokens")),
            "completion_tokens": scaled(ok_usage.get("completion_tokens")),
            "total_tokens": scaled(ok_usage.get("total_tokens")),
            "cost_usd": cost_number(cost * factor) if factor is not None and cost is not None
            else None,
            "completion_window": completion_window}


def dollars(value: float) -> str:
    """$12.34, or $0.000123 for amounts under a cent (pilots and sandbox runs are tiny)."""
    return f"${value:,.2f}" if value >= 0.01 or value == 0 else f"${value:.6f}"


def projection_text(p: dict) -> str:
    """One human line for the projection."""
    if not p["pilot_requests"]:
        return (f"projection for all {p['full_requests']:,} requests: none yet (no pilot "
                "request has an ok answer)")
    cost = f", about {dollars(p['cost_usd'])}" if p["cost_usd"] is not None else \
        " (the server reported no cost)"
    return (f"projection for all {p['full_requests']:,} requests, from {p['pilot_requests']:,} "
            f"ok pilot answers at the {p['completion_window']} window: about "
            f"{p['prompt_tokens']:,} prompt + {p['completion_tokens']:,} completion tokens"
            f"{cost}")
