"""A period whose usage adds up below zero (negative values on a SUM meter, e.g. refunds sent as usage) is rated as
no usage, and the rest of the customer's bill is billed: before, the billing run failed the customer on it
("quantity: must not be negative") on every run, so neither its flat fee nor anything else of the customer's was
ever invoiced. OpenMeter's unit pricer bills nothing for a usage that is not positive (rate/unit.go). On the
in-memory twin and on chdb."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tests.billing.conftest import Billow
from tests.support.billing import PROFILE, invoices, scheduled_run
from tests.support.catalog import published


def _lines(b: Billow) -> dict[str, tuple[str | None, Decimal]]:
    """Each invoiced line's name: (quantity, total)."""
    out: dict[str, tuple[str | None, Decimal]] = {}
    for inv in invoices(b):
        for ln in b.ok("GET", f"/api/v1/billing/invoices/{inv['id']}", query={"expand": "lines"})["lines"]:
            out[ln["name"]] = (ln.get("quantity"), Decimal(ln["totals"]["total"]))
    return out


def _subscribed(b: Billow) -> dict[str, Any]:
    """acme (subject customer_1) on 1 USD a token and a fee of 10 USD in arrears, monthly from April 1."""
    b.ok("POST", "/api/v1/features", {"key": "tokens", "name": "Tokens", "meterSlug": "tokens"})
    customer = b.ok("POST", "/api/v1/customers", {"key": "acme", "name": "Acme", "currency": "USD",
                                                  "usageAttribution": {"subjectKeys": ["customer_1"]}})
    b.ok("POST", "/api/v1/billing/profiles", PROFILE)
    b.clock.set("2026-03-31T00:00:00Z")
    cards = [{"type": "usage_based", "key": "tokens", "name": "Tokens", "featureKey": "tokens",
              "billingCadence": "P1M", "price": {"type": "unit", "amount": "1"}},
             {"type": "flat_fee", "key": "fee", "name": "Fee", "billingCadence": "P1M",
              "price": {"type": "flat", "amount": "10", "paymentTerm": "in_arrears"}}]
    published(b, {"key": "p", "name": "P", "currency": "USD", "billingCadence": "P1M",
                  "phases": [{"key": "d", "name": "D", "rateCards": cards}]})
    b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "p"}, "customerKey": "acme",
                                           "timing": "2026-04-01T00:00:00Z"})
    return customer  # type: ignore[no-any-return]


def test_a_period_below_zero_bills_no_usage_and_the_rest_of_the_bill(billow: Billow) -> None:
    b = billow
    _subscribed(b)
    b.usage(5, "2026-04-03T00:00:00Z")
    b.usage(-8, "2026-04-04T00:00:00Z")  # April: -3
    b.clock.set("2026-05-01T00:10:00Z")
    assert scheduled_run(b)["failures"] == []
    assert _lines(b) == {"Fee": ("1", Decimal(10))}  # no usage line: nothing to bill for it
    b.usage(7, "2026-05-03T00:00:00Z")
    b.usage(-2, "2026-05-04T00:00:00Z")  # May: 5
    b.clock.set("2026-06-01T00:10:00Z")
    assert scheduled_run(b)["failures"] == []
    assert [Decimal(i["totals"]["total"]) for i in sorted(invoices(b), key=lambda i: i["period"]["from"])] == \
        [Decimal("10"), Decimal("15")]


def test_a_one_off_line_below_zero_bills_nothing(billow: Billow) -> None:
    b = billow
    customer = _subscribed(b)
    b.usage(-4, "2026-04-03T00:00:00Z")
    b.ok("POST", f"/api/v1/billing/customers/{customer['id']}/invoices/pending-lines", {"currency": "USD", "lines": [{
        "type": "usage_based", "name": "One-off", "period": {"from": "2026-04-02T00:00:00Z", "to": "2026-04-05T00:00:00Z"},
        "invoiceAt": "2026-04-05T00:00:00Z",
        "rateCard": {"featureKey": "tokens", "price": {"type": "unit", "amount": "3", "minimumAmount": "2"}}}]})
    b.clock.set("2026-04-06T00:00:00Z")
    assert scheduled_run(b)["failures"] == []
    assert _lines(b)["One-off"][1] == Decimal("2")  # no usage: the minimum spend
