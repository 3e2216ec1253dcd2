"""The cost pieces as pure logic: what the server's total_cost may look like, the sum over
batches (unknown when any part is), and the pilot's projection to the whole input."""

from __future__ import annotations

from decimal import Decimal

import pytest
from dwbatch import costs


@pytest.mark.parametrize("sent, expected", [
    ("0.75", Decimal("0.75")), (0.5, Decimal("0.5")), (3, Decimal(3)), (" 1.5 ", Decimal("1.5")),
    (None, None), ("", None), ("free", None), ("NaN", None), ("-1", None), (True, None),
    ("Infinity", None), ({"usd": 1}, None)])
def test_parse_cost_accepts_only_a_finite_non_negative_amount(sent, expected):
    assert costs.parse_cost(sent) == expected


def test_cost_number_rounds_to_six_decimals():
    assert costs.cost_number(Decimal("0.12345678")) == 0.123457
    assert costs.cost_number(Decimal("12")) == 12.0
    assert costs.cost_number(None) is None


def test_total_cost_is_unknown_when_any_batch_is():
    assert costs.total_cost([Decimal("0.1"), Decimal("0.2")]) == Decimal("0.3")
    assert costs.total_cost([Decimal("0.1"), None]) is None
    assert costs.total_cost([]) is None


def test_projection_scales_the_ok_records_to_the_whole_input():
    pilot = {"full_requests": 1000, "pilot_requests": 20}
    usage = {"prompt_tokens": 400, "completion_tokens": 1000, "total_tokens": 1400}
    p = costs.projection(pilot, 16, usage, Decimal("0.0032"), "1h")
    assert p == {"pilot_requests": 16, "full_requests": 1000, "prompt_tokens": 25000,
                 "completion_tokens": 62500, "total_tokens": 87500, "cost_usd": 0.2,
                 "completion_window": "1h"}
    assert "about $0.20" in costs.projection_text(p)


def test_projection_without_ok_records_or_cost_says_so():
    p = costs.projection({"full_requests": 50}, 0, {}, Decimal(1), "1h")
    assert p["prompt_tokens"] is None and p["cost_usd"] is None
    assert "none yet" in costs.projection_text(p)
    p = costs.projection({"full_requests": 50}, 5, {"prompt_tokens": 10, "completion_tokens": 5,
                                                    "total_tokens": 15}, None, "1h")
    assert p["total_tokens"] == 150 and p["cost_usd"] is None
    assert "reported no cost" in costs.projection_text(p)
    small = costs.projection({"full_requests": 2}, 1, {"prompt_tokens": 1,
                                                       "completion_tokens": 1,
                                                       "total_tokens": 2},
                             Decimal("0.0000007"), "1h")
    assert "$0.000001" in costs.projection_text(small)
