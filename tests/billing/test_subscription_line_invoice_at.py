"""A subscription line's `invoiceAt` is OpenMeter's (billing/worker/subscriptionsync/service/targetstate/
phaseiterator.go GetInvoiceAt): an in-advance flat fee at its billing period's start, everything else at its period's
end (or the subscription's end inside it); a progressively billed period's part up to the split at the split, its
last part at the period's end, as OpenMeter's split line after the split point keeps the line's invoiceAt.

Before, every line but a progressive first part said the instant the billing run happened to run: April's base fee
billed by the run at 2026-04-01T00:10 said 00:10, the rest of April billed at 2026-05-01T00:10 said 00:10, a
subscription canceled at 2026-04-20T08:00 billed at 08:10 said 08:10. Amounts do not move. On the in-memory twin and
on chdb."""

from __future__ import annotations

from typing import Any

from tests.billing.conftest import Billow
from tests.support.billing import PROFILE, scheduled_run
from tests.support.catalog import published

BASE = {"type": "flat_fee", "key": "base", "name": "Base fee", "billingCadence": "P1M",
        "price": {"type": "flat", "amount": "10", "paymentTerm": "in_advance"}}
SUPPORT = {"type": "flat_fee", "key": "support", "name": "Support", "billingCadence": "P1M",
           "price": {"type": "flat", "amount": "5", "paymentTerm": "in_arrears"}}
TOKENS = {"type": "usage_based", "key": "tokens", "name": "Tokens", "featureKey": "tokens", "billingCadence": "P1M",
          "price": {"type": "unit", "amount": "0.01"}}


def _world(b: Billow) -> tuple[str, str]:
    """(subscription id, customer id)"""
    b.ok("POST", "/api/v1/features", {"key": "tokens", "name": "Tokens", "meterSlug": "tokens"})
    cust = b.ok("POST", "/api/v1/customers", {"key": "acme", "name": "Acme", "currency": "USD",
                                              "usageAttribution": {"subjectKeys": ["customer_1"]}})
    b.ok("POST", "/api/v1/billing/profiles", PROFILE)
    b.clock.set("2026-03-31T00:00:00Z")
    published(b, {"key": "p", "name": "P", "currency": "USD", "billingCadence": "P1M",
                  "phases": [{"key": "default", "name": "Default", "rateCards": [BASE, SUPPORT, TOKENS]}]})
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "p"}, "customerKey": "acme",
                                                 "timing": "2026-04-01T00:00:00Z"})
    b.usage(1500, "2026-04-03T10:00:00Z")
    b.usage(700, "2026-04-18T10:00:00Z")
    return str(sub["id"]), str(cust["id"])


def _invoice_at(b: Billow, seen: set[str]) -> dict[str, tuple[str, str, set[str]]]:
    """The invoices not in `seen` (added to it): line name -> (invoiceAt, period from, its children's invoiceAt)."""
    out: dict[str, tuple[str, str, set[str]]] = {}
    for inv in b.ok("GET", "/api/v1/billing/invoices")["items"]:
        if inv["id"] in seen or inv["status"] == "gathering":
            continue
        seen.add(inv["id"])
        full: dict[str, Any] = b.ok("GET", f"/api/v1/billing/invoices/{inv['id']}", query={"expand": "lines"})
        out |= {ln["name"]: (ln["invoiceAt"], ln["period"]["from"], {ch["invoiceAt"] for ch in ln["children"]})
                for ln in full["lines"]}
    return out


def test_lines_are_invoiced_at_their_periods_bounds_not_at_the_runs_instant(billow: Billow) -> None:
    b = billow
    _, cid = _world(b)
    seen: set[str] = set()
    b.clock.set("2026-04-01T00:10:00Z")
    assert not scheduled_run(b)["failures"]
    assert _invoice_at(b, seen) == {"Base fee": ("2026-04-01T00:00:00Z", "2026-04-01T00:00:00Z",
                                                 {"2026-04-01T00:00:00Z"})}
    b.clock.set("2026-04-15T12:00:42Z")
    status, out = b.call("POST", "/api/v1/billing/invoices/invoice",
                         {"customerId": cid, "progressiveBillingOverride": True})
    assert status == 201, out
    cut = "2026-04-15T12:00:00Z"
    assert _invoice_at(b, seen) == {"Tokens": (cut, "2026-04-01T00:00:00Z", {cut})}  # the part up to the split
    b.clock.set("2026-05-01T00:10:00Z")
    assert not scheduled_run(b)["failures"]
    may = "2026-05-01T00:00:00Z"  # April's end, May's start
    assert _invoice_at(b, seen) == {
        "Tokens": (may, cut, {may}),  # the last part: at the period's end, as the line it was split from
        "Support": (may, "2026-04-01T00:00:00Z", {may}),
        "Base fee": (may, may, {may}),  # May's, in advance
    }


def test_a_subscription_canceled_mid_period_is_invoiced_at_its_end(billow: Billow) -> None:
    b = billow
    sub_id, _ = _world(b)
    seen: set[str] = set()
    b.clock.set("2026-04-01T00:10:00Z")
    assert not scheduled_run(b)["failures"]
    _invoice_at(b, seen)
    b.clock.set("2026-04-20T07:00:00Z")
    b.ok("POST", f"/api/v1/subscriptions/{sub_id}/cancel", {"timing": "2026-04-20T08:00:00Z"})
    b.clock.set("2026-04-20T08:10:00Z")
    assert not scheduled_run(b)["failures"]
    end = "2026-04-20T08:00:00Z"
    got = _invoice_at(b, seen)
    assert {name: at for name, (at, _, _) in got.items() if name != "Base fee"} == {"Tokens": end, "Support": end}
    assert all(children == {at} for at, _, children in got.values())
