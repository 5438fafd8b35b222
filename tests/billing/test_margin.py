"""LLM margin (issue 20 item 2): revenue (invoiced, or charged in the current period) against LLM provider cost per
customer, model, provider and feature; revenue split by tokens to the cent; unpriced models flagged, never free."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from billow.domain.margin import allocate
from tests.billing.conftest import Billow
from tests.support.billing import scheduled_run, subscribed

PRICES = [{"provider": "house", "model": "h1", "inputPerMillionTokens": "1", "outputPerMillionTokens": "2"},
          {"provider": "house", "model": "h2", "inputPerMillionTokens": "3", "outputPerMillionTokens": "0"}]


def llm(b: Billow, n: int, model: str, input_tokens: int, output_tokens: int, at: str, feature: str = "chat") -> None:
    ev = {"specversion": "1.0", "id": f"llm-{n}", "source": "t", "type": "llm", "subject": "customer_1", "time": at,
          "data": {"provider": "house", "model": model, "input_tokens": input_tokens, "output_tokens": output_tokens,
                   "cached_input_tokens": 0, "cache_write_tokens": 0,
                   "feature": feature}}
    status, out = b.call("POST", "/api/v1/events", [ev], content_type="application/cloudevents-batch+json")
    assert status == 204, out


def margin(b: Billow, *group_by: str, **extra: str) -> dict[str, Any]:
    q = "&".join([f"groupBy={g}" for g in group_by] + [f"{k}={v}" for k, v in
                                                      {"from": "2026-04-01T00:00:00Z", "to": "2026-05-01T00:00:00Z",
                                                       **extra}.items()])
    return b.ok("GET", f"/api/v1/llm/margin?{q}")  # type: ignore[no-any-return]


def world(b: Billow) -> None:
    """acme (subject customer_1) on basic: April invoiced 49.99 (no `tokens` usage); LLM usage in April: h1 2M in +
    1M out = 2 + 2 = 4 USD, h2 1M in = 3 USD (overrides, USD per million)."""
    subscribed(b)
    b.ok("POST", "/api/v1/llm/meters", {})
    for body in PRICES:
        b.ok("POST", "/api/v1/llm/prices", body)
    b.clock.set("2026-04-01T00:10:00Z")
    scheduled_run(b)
    llm(b, 1, "h1", 2_000_000, 1_000_000, "2026-04-10T10:00:00Z")
    llm(b, 2, "h2", 1_000_000, 0, "2026-04-11T10:00:00Z", feature="search")
    b.clock.set("2026-05-01T00:10:00Z")
    scheduled_run(b)


def test_margin_per_customer_and_per_model(billow: Billow) -> None:
    b = billow
    world(b)
    (row,) = margin(b, "customer")["data"]
    assert (row["customerKey"], row["currency"], row["revenue"], row["cost"], row["margin"], row["marginPercent"]) == \
        ("acme", "USD", "49.99", "7", "42.99", "86.00")
    # By model, revenue split by tokens (3M : 1M) to the cent, the remainder to the larger fraction:
    # 4,999 cents x 3/4 = 3,749.25 -> 3,749; x 1/4 = 1,249.75 -> 1,250.
    rows = {r["model"]: (r["revenue"], r["cost"], r["margin"], r["unpriced"]) for r in margin(b, "model")["data"]}
    assert rows == {"h1": ("37.49", "4", "33.49", False), "h2": ("12.50", "3", "9.5", False)}
    by_feature = {r["feature"]: r["cost"] for r in margin(b, "feature", "provider")["data"]}
    assert by_feature == {"chat": "4", "search": "3"}
    out = margin(b, "customer", "model")
    assert sum(Decimal(r["revenue"]) for r in out["data"]) == Decimal("49.99")
    assert out["totals"] == [{"tokens": "4000000", "currency": "USD", "revenue": "49.99", "costCurrency": "USD",
                              "unpriced": False, "cost": "7", "margin": "42.99", "marginPercent": "86.00",
                              "reason": None}]


def test_unpriced_models_are_flagged_never_free(billow: Billow) -> None:
    b = billow
    world(b)
    llm(b, 3, "mystery", 500, 0, "2026-04-12T10:00:00Z")
    out = margin(b, "customer", "model")
    mystery = next(r for r in out["data"] if r["model"] == "mystery")
    assert (mystery["unpriced"], mystery["cost"], mystery["margin"]) == (True, None, None) and mystery["reason"]
    (cust,) = margin(b, "customer")["data"]
    assert (cust["unpriced"], cust["cost"], cust["margin"]) == (True, None, None)
    assert out["complete"] is False


def test_revenue_split_over_the_whole_span_by_customer_as_by_model(billow: Billow) -> None:
    """Without windowSize, revenue is split over each customer's usage of the whole span, grouped by customer too
    (not day by day): 4,999 cents over h1 1M : h2 1M + 1M (two days) is 1,666.33 -> 1,666 and 3,332.67 -> 3,333,
    where day by day the three thirds would give h1 1,667 and h2 1,666 + 1,666."""
    b = billow
    subscribed(b)
    b.ok("POST", "/api/v1/llm/meters", {})
    for body in PRICES:
        b.ok("POST", "/api/v1/llm/prices", body)
    b.clock.set("2026-04-01T00:10:00Z")
    scheduled_run(b)
    llm(b, 1, "h1", 1_000_000, 0, "2026-04-10T10:00:00Z")
    llm(b, 2, "h2", 1_000_000, 0, "2026-04-11T10:00:00Z")
    llm(b, 3, "h2", 1_000_000, 0, "2026-04-12T10:00:00Z")
    b.clock.set("2026-05-01T00:10:00Z")
    scheduled_run(b)
    by_model = {r["model"]: (r["revenue"], r["cost"]) for r in margin(b, "model")["data"]}
    by_both = {r["model"]: (r["revenue"], r["cost"]) for r in margin(b, "customer", "model")["data"]}
    assert by_model == by_both == {"h1": ("16.66", "1"), "h2": ("33.33", "6")}
    days = margin(b, "customer", "model", windowSize="DAY")["data"]  # by day: split day by day
    assert [(r["windowStart"][:10], r["model"], r["revenue"]) for r in days] == [
        ("2026-04-10", "h1", "16.67"), ("2026-04-11", "h2", "16.66"), ("2026-04-12", "h2", "16.66")]


def test_windows_and_bad_input(billow: Billow) -> None:
    b = billow
    world(b)
    days = margin(b, "customer", windowSize="DAY")["data"]
    assert [(r["windowStart"], r["cost"]) for r in days] == [("2026-04-10T00:00:00Z", "4"), ("2026-04-11T00:00:00Z", "3")]
    assert sum(Decimal(r["revenue"]) for r in days) == Decimal("49.99")
    for query, field in (("groupBy=team&from=2026-04-01T00:00:00Z&to=2026-05-01T00:00:00Z", "groupBy"),
                         ("to=2026-05-01T00:00:00Z", "from"), ("from=2026-04-01T00:00:00Z", "to"),
                         ("from=2026-04-01T00:00:00Z&to=2026-03-01T00:00:00Z", "to")):
        status, problem = b.call("GET", f"/api/v1/llm/margin?{query}")
        assert status == 400 and problem["validationErrors"][0]["field"] == field, (query, problem)


def test_allocation_sums_exactly() -> None:
    assert allocate(Decimal("49.99"), [Decimal(3), Decimal(1)], Decimal("0.01")) == [Decimal("37.49"), Decimal("12.50")]
    assert allocate(Decimal("0.05"), [Decimal(1)] * 3, Decimal("0.01")) == [Decimal("0.02"), Decimal("0.02"), Decimal("0.01")]
    assert sum(allocate(Decimal("10.005"), [Decimal(1), Decimal(2)], Decimal("0.01"))) == Decimal("10.005")
    assert allocate(Decimal("1"), [Decimal(0), Decimal(0)], Decimal("0.01")) == [Decimal("0.50"), Decimal("0.50")]


def test_costs_by_customer_are_the_costs_by_model_and_by_day_exactly(billow: Billow) -> None:
    """By customer without windowSize the usage store adds each customer's costs up over the span (priced day by
    day); they are the costs by model and the costs by customer and day added up, to the last digit. A model no
    price covers is flagged in every grouping, never free."""
    b = billow
    world(b)
    llm(b, 3, "h1", 123_457, 9_999, "2026-04-10T23:59:59.999Z")
    llm(b, 4, "h2", 777_777, 1, "2026-04-20T00:00:00Z", feature="search")
    customer = margin(b, "customer")["data"]
    assert [(r["customerKey"], r["cost"]) for r in customer] == [("acme", "9.476786")]  # 7 + 0.143455 + 2.333331
    by_model = margin(b, "model")["data"]
    days = margin(b, "customer", windowSize="DAY")["data"]
    assert sum(Decimal(r["cost"]) for r in by_model) == sum(Decimal(r["cost"]) for r in days) == Decimal("9.476786")
    llm(b, 5, "mystery", 500, 0, "2026-04-12T10:00:00Z")
    (flagged,) = margin(b, "customer")["data"]
    assert (flagged["unpriced"], flagged["cost"], flagged["margin"]) == (True, None, None) and flagged["reason"]
    assert [r["unpriced"] for r in margin(b, "model")["data"]] == [False, False, True]
