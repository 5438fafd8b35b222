"""A subscription's usage line shows the metered usage as its quantity (correctness, found from outside), as
OpenMeter's InvoiceUsageBasedLine does and as one-off lines already did, while its detailed lines keep their own
quantities (a tier's flat price 1, a package price its packages) and the amounts stay what they were. A correction
line's quantity is the usage that arrived since the period was last billed (the events its lineage names).
On the in-memory twin and on chdb."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from billow.domain import subscriptions as subs
from billow.domain.billing import Point, diff
from tests.billing.conftest import Billow
from tests.billing.test_lineage import all_events
from tests.support.billing import invoices, scheduled_run, subscribed_to_usage_cards

PRICES: dict[str, dict[str, Any]] = {
    "grad": {"type": "tiered", "mode": "graduated", "tiers": [
        {"upToAmount": "1000", "flatPrice": {"type": "flat", "amount": "5"}, "unitPrice": {"type": "unit", "amount": "0.01"}},
        {"unitPrice": {"type": "unit", "amount": "0.005"}}]},
    "vol": {"type": "tiered", "mode": "volume", "tiers": [
        {"upToAmount": "1000", "unitPrice": {"type": "unit", "amount": "0.01"}},
        {"flatPrice": {"type": "flat", "amount": "2"}, "unitPrice": {"type": "unit", "amount": "0.004"}}]},
    "pkg": {"type": "package", "amount": "2", "quantityPerPackage": "1000"},
}


def _subscribed(b: Billow) -> None:
    subscribed_to_usage_cards(b, {key: {"price": price} for key, price in PRICES.items()})


def _lines(inv: dict[str, Any]) -> dict[str, tuple[str, str, list[tuple[str, str]]]]:
    """feature -> (quantity, total, [(child quantity, child total)])"""
    return {ln["featureKey"]: (ln["quantity"], ln["totals"]["total"],
                               [(ch["quantity"], ch["totals"]["total"]) for ch in ln["children"]])
            for ln in inv["lines"]}


def test_a_usage_line_quantity_is_the_metered_usage_and_its_detailed_lines_keep_theirs(billow: Billow) -> None:
    b = billow
    _subscribed(b)
    b.usage(600, "2026-04-05T10:00:00Z")
    b.usage(900, "2026-04-28T10:00:00Z")
    b.clock.set("2026-05-01T00:10:00Z")
    scheduled_run(b)
    (april,) = invoices(b)
    assert _lines(april) == {
        # 5 (tier 1 flat) + 1,000 x 0.01 + 500 x 0.005 = 17.50
        "grad": ("1500", "17.50", [("1", "5.00"), ("1000", "10.00"), ("500", "2.50")]),
        # all 1,500 in tier 2: 2 (flat) + 1,500 x 0.004 = 8.00
        "vol": ("1500", "8.00", [("1", "2.00"), ("1500", "6.00")]),
        # 2 packages of 1,000 at 2 = 4.00
        "pkg": ("1500", "4.00", [("2", "4.00")]),
    }
    assert Decimal(april["totals"]["total"]) == Decimal("29.50")
    for ln in april["lines"]:  # the line's events re-aggregate to its quantity
        assert sum(Decimal(e["value"]) for e in all_events(b, april, ln, limit=10)) == Decimal(ln["quantity"])

    # 100 late tokens: tier 2 of the graduated price, the volume price's unit price; the same 2 packages.
    b.clock.set("2026-05-01T12:00:00Z")
    b.usage(100, "2026-04-29T09:00:00Z")
    b.clock.set("2026-05-02T00:00:00Z")
    scheduled_run(b)
    first_fix = invoices(b)[1]
    assert _lines(first_fix) == {"grad": ("100", "0.50", [("100", "0.50")]),
                                 "vol": ("100", "0.40", [("100", "0.40")])}
    # 500 more: a third package. Each correction line's quantity is the usage since the period was last billed.
    b.clock.set("2026-05-02T12:00:00Z")
    b.usage(500, "2026-04-30T09:00:00Z")
    b.clock.set("2026-05-03T00:00:00Z")
    scheduled_run(b)
    second_fix = invoices(b)[2]
    assert _lines(second_fix) == {"grad": ("500", "2.50", [("500", "2.50")]),
                                  "vol": ("500", "2.00", [("500", "2.00")]),
                                  "pkg": ("500", "2.00", [("1", "2.00")])}
    for ln in second_fix["lines"]:  # the correction's events (those since the last billing) are its quantity
        assert sum(Decimal(e["value"]) for e in all_events(b, second_fix, ln, limit=10)) == Decimal(ln["quantity"])
        verify = b.ok("POST", f"/api/v1/billing/invoices/{second_fix['id']}/lines/{ln['id']}/verify")
        assert verify["unchanged"] is True
    b.clock.set("2026-05-04T00:00:00Z")
    assert scheduled_run(b)["invoices"] == []


def test_a_correction_to_a_mark_that_recorded_no_usage_shows_its_detailed_quantities(billow: Billow) -> None:
    """Marks written before they recorded the usage: a correction cannot know the usage billed before, so its line
    shows its detailed lines' quantities as it did then; the mark it writes records the usage, and the next
    correction shows the metered usage again."""
    b = billow
    _subscribed(b)
    b.usage(1500, "2026-04-05T10:00:00Z")
    b.clock.set("2026-05-01T00:10:00Z")
    scheduled_run(b)
    (sub,) = b.c.catalog_store().list_subscriptions(b.c.settings.namespace)
    period = (datetime.fromisoformat("2026-04-01T00:00:00+00:00"), datetime.fromisoformat("2026-05-01T00:00:00+00:00"))
    (mark,) = [m for (_, ps, term), m in b.c.billing_store().marks_for(b.c.settings.namespace).items()
               if (ps, term) == (period[0], "in_arrears")]
    assert {v["usage"] for v in mark.billed.values()} == {"1500"}
    old = replace(mark, billed={k: {f: x for f, x in v.items() if f != "usage"} for k, v in mark.billed.items()})

    def rated(tokens: int) -> list[subs.Charge]:
        return subs.charges(sub, *period, usage=lambda feature, s, e: Decimal(tokens))

    now = datetime.fromisoformat("2026-05-02T00:00:00+00:00")
    lines, billed = diff(Point(sub, period, "in_arrears", old), rated(2100), now)
    assert {ln["rateCard"]["featureKey"]: ln["quantity"] for ln in lines} == {"grad": "600", "vol": "600", "pkg": "1"}
    # the entries the correction wrote record the usage (those it left alone stay as they were)
    assert {k.split("|")[2]: v.get("usage") for k, v in billed.items() if v != old.billed[k]} == {
        "graduated-tier-2-usage": "2100", "volume-tier-usage": "2100", "package-usage": "2100"}
    lines, _ = diff(Point(sub, period, "in_arrears", replace(old, rev=old.rev + 1, billed=billed)), rated(2200), now)
    assert {ln["rateCard"]["featureKey"]: ln["quantity"] for ln in lines} == {"grad": "100", "vol": "100"}
