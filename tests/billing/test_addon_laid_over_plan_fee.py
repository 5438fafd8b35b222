"""An add-on's flat fee on the key of a plan's flat fee is laid over it, as OpenMeter's addondiff apply does: the
plan's item is split at the add-on's start, and from there it bills the plan's amount plus the add-on's times its
quantity, with the plan's percentage discount, each part prorated and rounded on its own. Before, Billow billed the
add-on's fee as a line of its own beside the plan's, with the add-on's discounts (none here), so the plan's 20% did
not apply to it. On the in-memory twin and on chdb."""

from __future__ import annotations

from decimal import Decimal

from tests.billing.conftest import Billow
from tests.support.billing import PROFILE, invoices, scheduled_run
from tests.support.catalog import plan_body, setup


def _lines(b: Billow) -> list[tuple[str, Decimal]]:
    """(name, total) of every subscription line, in invoice order."""
    out = []
    for inv in sorted(invoices(b), key=lambda i: i["createdAt"]):
        full = b.ok("GET", f"/api/v1/billing/invoices/{inv['id']}", query={"expand": "lines"})
        out += [(ln["name"], Decimal(ln["totals"]["total"])) for ln in full["lines"] if ln.get("subscription")]
    return out


def test_an_add_on_fee_on_the_plan_fee_key_bills_as_the_plan_fee(billow: Billow) -> None:
    """Base fee 50 USD a month in advance, 20% off; add-on `bundle` 10 USD on key `base`, x2 from April 11. April:
    50 x 10/30 = 16.67 less 3.33, and 70 x 20/30 = 46.67 less 9.33: 50.68 (before: 40.00 + 13.33 = 53.33). May: 70
    less 14: 56.00 (before: 40.00 + 20.00 = 60.00)."""
    b = billow
    setup(b)
    b.ok("POST", "/api/v1/billing/profiles", PROFILE)
    b.clock.set("2026-03-31T00:00:00Z")
    bundle = b.ok("POST", "/api/v1/addons", {
        "key": "bundle", "name": "Bundle", "currency": "USD", "instanceType": "multiple",
        "rateCards": [{"type": "flat_fee", "key": "base", "name": "Bundle fee", "billingCadence": "P1M",
                       "price": {"type": "flat", "amount": "10", "paymentTerm": "in_advance"}}]})
    bundle = b.ok("POST", f"/api/v1/addons/{bundle['id']}/publish")
    body = plan_body("team", "50")
    body["phases"][0]["rateCards"][0]["discounts"] = {"percentage": {"percentage": 20}}
    draft = b.ok("POST", "/api/v1/plans", body)
    b.ok("POST", f"/api/v1/plans/{draft['id']}/addons", {"addonId": bundle["id"], "fromPlanPhase": "default"})
    b.ok("POST", f"/api/v1/plans/{draft['id']}/publish")
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "team"}, "customerKey": "acme",
                                                 "timing": "2026-04-01T00:00:00Z"})
    b.clock.set("2026-04-02T00:00:00Z")
    scheduled_run(b)  # April's base fee in advance: 50 less 10
    assert _lines(b) == [("Base fee", Decimal("40.00"))]
    b.clock.set("2026-04-11T00:00:00Z")
    b.ok("POST", f"/api/v1/subscriptions/{sub['id']}/addons",
         {"addon": {"id": bundle["id"]}, "quantity": 2, "timing": "immediate"})
    b.clock.set("2026-04-12T00:00:00Z")
    scheduled_run(b)  # the correction: the base fee up to April 11 (13.34), then with the bundle (37.34)
    assert [name for name, _ in _lines(b)] == ["Base fee", "Base fee"]
    assert sum(total for _, total in _lines(b)) == Decimal("50.68")
    b.clock.set("2026-05-01T00:10:00Z")
    scheduled_run(b)
    assert _lines(b)[-1] == ("Base fee", Decimal("56.00"))  # May: (50 + 2 x 10) less 20%
    b.clock.set("2026-05-02T00:00:00Z")
    assert scheduled_run(b)["invoices"] == []
