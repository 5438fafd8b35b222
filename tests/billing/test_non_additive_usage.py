"""A customer with several subjects is one billable party on every meter (correctness, found from outside): the
billing run, its corrections, its lineage and backtests take a UNIQUE_COUNT meter's distinct values over all the
customer's subjects (a user seen through two subjects is one user) and a LATEST meter's last value across them,
never the sum of each subject's value. SUM stays the sum. On the in-memory twin and on chdb."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tests.billing.conftest import Billow
from tests.support.billing import PROFILE, invoices, scheduled_run
from tests.support.catalog import published

METERS = [  # slug, event type, aggregation, value property
    ("users", "login", "UNIQUE_COUNT", "$.user"),
    ("gauge", "reading", "LATEST", "$.gb"),
]


def _card(key: str, amount: str = "1") -> dict[str, Any]:
    return {"type": "usage_based", "key": key, "name": key.title(), "featureKey": key, "billingCadence": "P1M",
            "price": {"type": "unit", "amount": amount}}


def _world(b: Billow) -> dict[str, Any]:
    """acme (subjects customer_1 and customer_2) on a plan of one unit-price usage card per meter (1 USD a unit,
    tokens 0.01) from April 1."""
    for slug, etype, agg, prop in METERS:
        b.ok("POST", "/api/v1/meters", {"slug": slug, "eventType": etype, "aggregation": agg, "valueProperty": prop})
        b.ok("POST", "/api/v1/features", {"key": slug, "name": slug.title(), "meterSlug": slug})
    b.ok("POST", "/api/v1/features", {"key": "tokens", "name": "Tokens", "meterSlug": "tokens"})
    b.ok("POST", "/api/v1/customers", {"key": "acme", "name": "Acme", "currency": "USD",
                                       "usageAttribution": {"subjectKeys": ["customer_1", "customer_2"]}})
    b.ok("POST", "/api/v1/billing/profiles", PROFILE)
    b.clock.set("2026-03-31T00:00:00Z")
    cards = [_card(slug) for slug, *_ in METERS] + [_card("tokens", "0.01")]
    published(b, {"key": "seats", "name": "Seats", "currency": "USD", "billingCadence": "P1M",
                  "phases": [{"key": "default", "name": "Default", "rateCards": cards}]})
    return b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "seats"}, "customerKey": "acme",
                                                  "timing": "2026-04-01T00:00:00Z"})


def _april_billed(b: Billow) -> None:
    """The world, its April usage, and the scheduled run of May 1st that bills it."""
    _world(b)
    b.send_events(("login", "customer_1", "2026-04-03T10:00:00Z", {"user": "alice"}),
                  ("login", "customer_2", "2026-04-04T10:00:00Z", {"user": "alice"}),  # alice again, other subject
                  ("login", "customer_2", "2026-04-05T10:00:00Z", {"user": "bob"}),
                  ("reading", "customer_1", "2026-04-10T10:00:00Z", {"gb": 10}),
                  ("reading", "customer_2", "2026-04-20T10:00:00Z", {"gb": 7}),  # the gauge stands at 7, not 17
                  ("prompt", "customer_1", "2026-04-08T10:00:00Z", {"tokens": 600, "model": "gpt"}),
                  ("prompt", "customer_2", "2026-04-09T10:00:00Z", {"tokens": 900, "model": "gpt"}))  # SUM: 1,500
    b.clock.set("2026-05-01T00:10:00Z")
    scheduled_run(b)


def _usage_lines(inv: dict[str, Any]) -> dict[str, tuple[Decimal, Decimal]]:
    return {ln["featureKey"]: (Decimal(ln["quantity"]), Decimal(ln["totals"]["total"]))
            for ln in inv["lines"] if ln.get("featureKey")}


def test_a_subscription_bills_each_meter_over_all_the_customers_subjects_as_one_party(billow: Billow) -> None:
    b = billow
    _april_billed(b)
    (april,) = invoices(b)
    assert _usage_lines(april) == {"users": (Decimal(2), Decimal("2.00")), "gauge": (Decimal(7), Decimal("7.00")),
                                   "tokens": (Decimal(1500), Decimal("15.00"))}
    # The lineage's digest is over the events of both subjects (the events behind the distinct count).
    users = next(ln for ln in april["lines"] if ln.get("featureKey") == "users")
    assert users["lineage"]["subjects"] == ["customer_1", "customer_2"]
    assert users["lineage"]["digest"]["events"] == 3
    # The meter query by customer agrees with what was billed.
    q = b.ok("GET", "/api/v1/meters/users/query", query={"filterCustomerId": april["customer"]["id"],
                                                          "from": "2026-04-01T00:00:00Z", "to": "2026-05-01T00:00:00Z"})
    assert [Decimal(str(r["value"])) for r in q["data"]] == [Decimal(2)]
    # The same period previewed by a backtest of the customer's own plan: current = candidate = 24.00.
    out = b.ok("POST", "/api/v1/billing/backtests", {"plan": {"key": "seats"}, "from": "2026-04-01T00:00:00Z",
                                                     "to": "2026-05-01T00:00:00Z"}, query={"wait": "true"})
    (row,) = out["customers"]
    assert (Decimal(row["current"]), Decimal(row["candidate"])) == (Decimal("24.00"), Decimal("24.00")), row


def test_late_usage_is_corrected_by_what_it_adds_to_the_distinct_count_and_the_latest_value(billow: Billow) -> None:
    b = billow
    _april_billed(b)
    # Late April usage: bob again (through the other subject: no new user), carol (one more), a gauge reading
    # before the last one (the gauge still stands at 7) and a token prompt (summed).
    b.send_events(("login", "customer_1", "2026-04-25T10:00:00Z", {"user": "bob"}),
                  ("login", "customer_1", "2026-04-26T10:00:00Z", {"user": "carol"}),
                  ("reading", "customer_1", "2026-04-15T10:00:00Z", {"gb": 30}),
                  ("prompt", "customer_2", "2026-04-27T10:00:00Z", {"tokens": 100, "model": "gpt"}))
    b.clock.set("2026-05-02T00:10:00Z")
    scheduled_run(b)
    correction = next(i for i in invoices(b) if i["id"] != min(invoices(b), key=lambda i: i["createdAt"])["id"])
    assert _usage_lines(correction) == {"users": (Decimal(1), Decimal("1.00")), "tokens": (Decimal(100), Decimal("1.00"))}
    b.clock.set("2026-05-03T00:10:00Z")
    scheduled_run(b)  # nothing more
    assert len(invoices(b)) == 2
