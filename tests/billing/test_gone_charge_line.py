"""A charge billed before that is gone now (late negative usage took a usage line to nothing, or a graduated
price's usage back below a tier) is credited back in full. Its credit line must be the rate card's line as the
plan names it, with the rate card and the subscription item, as every other part of it."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tests.billing.conftest import Billow
from tests.support.billing import PROFILE, scheduled_run
from tests.support.catalog import metered_plan, published, setup

D = Decimal
GRAD = {"type": "tiered", "mode": "graduated", "tiers": [
    {"upToAmount": "1000", "unitPrice": {"type": "unit", "amount": "0.01"}, "flatPrice": {"type": "flat", "amount": "1.5"}},
    {"unitPrice": {"type": "unit", "amount": "0.005"}}]}
UNIT = {"type": "unit", "amount": "0.01"}


def _lines(b: Billow) -> list[dict[str, Any]]:
    out = []
    for inv in b.ok("GET", "/api/v1/billing/invoices")["items"]:
        if inv["status"] != "gathering":
            out += b.ok("GET", f"/api/v1/billing/invoices/{inv['id']}", query={"expand": "lines"})["lines"]
    return out


def _world(b: Billow, price: dict[str, Any]) -> None:
    setup(b)
    b.ok("POST", "/api/v1/billing/profiles", PROFILE)
    b.clock.set("2026-03-31T00:00:00Z")
    published(b, metered_plan(price, card_name="Token usage"))
    b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "metered"}, "customerKey": "acme",
                                           "timing": "2026-04-01T00:00:00Z"})


def test_a_graduated_tier_gone_after_a_progressive_part_is_credited_on_the_rate_cards_line(billow: Billow) -> None:
    b = billow
    _world(b, GRAD)
    b.usage(1500, "2026-04-03T10:00:00Z")
    b.clock.set("2026-04-15T12:00:42Z")
    status, out = b.call("POST", "/api/v1/billing/invoices/invoice",
                         {"customerId": "acme", "progressiveBillingOverride": True})
    assert status == 201, out
    b.usage(-600, "2026-04-03T11:00:00Z")  # late: the period's usage is 900, back in the first tier
    b.clock.set("2026-05-01T00:10:00Z")
    assert not scheduled_run(b)["failures"]
    april = [ln for ln in _lines(b) if ln["subscription"]["billingPeriod"]["from"] == "2026-04-01T00:00:00Z"]
    assert sum(D(ln["totals"]["total"]) for ln in april) == D("1.5") + D(9)  # 900 units at 0.01 and tier 1's fee
    assert {ln["name"] for ln in april} == {"Token usage"}, [(ln["name"], ln["totals"]["total"]) for ln in april]
    assert all(ln["price"]["mode"] == "graduated" and ln["featureKey"] == "tokens" for ln in april), april
    assert all(ch["name"].startswith("Token usage: ") for ln in april for ch in ln["children"]), april
    assert len({ln["subscription"]["item"]["id"] for ln in april}) == 1


def test_a_unit_usage_gone_after_invoicing_is_credited_on_the_rate_cards_line(billow: Billow) -> None:
    b = billow
    _world(b, UNIT)
    b.usage(1500, "2026-04-03T10:00:00Z")
    b.clock.set("2026-05-01T00:10:00Z")
    assert not scheduled_run(b)["failures"]
    b.usage(-1500, "2026-04-03T11:00:00Z")  # late: April's usage is nothing after all
    b.clock.set("2026-05-01T01:10:00Z")
    assert not scheduled_run(b)["failures"]
    april = [ln for ln in _lines(b) if ln["subscription"]["billingPeriod"]["from"] == "2026-04-01T00:00:00Z"]
    assert sorted(D(ln["totals"]["total"]) for ln in april) == [D(-15), D(15)]
    assert {ln["name"] for ln in april} == {"Token usage"}, [(ln["name"], ln["totals"]["total"]) for ln in april]
    assert all(ln["price"] == UNIT and ln["featureKey"] == "tokens" for ln in april), april
    assert len({ln["subscription"]["item"]["id"] for ln in april}) == 1
