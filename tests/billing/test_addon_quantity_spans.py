"""An add-on whose quantity changes inside a billing period bills each span of one quantity, prorated (OpenMeter
splits the subscription item at the change: each part is a line of its own). Before, both spans' charges had one
key in the period's billing mark, so the later span's amount replaced the earlier one's: the period billed only
the last span. On the in-memory twin and on chdb."""

from __future__ import annotations

from decimal import Decimal

from tests.billing.conftest import Billow
from tests.support.billing import PROFILE, invoices, scheduled_run
from tests.support.catalog import plan_body, published_seats, setup


def _seat_totals(b: Billow) -> list[Decimal]:
    """Each invoice's add-on (Seat) line total, in invoice order."""
    out = []
    for inv in sorted(invoices(b), key=lambda i: i["createdAt"]):
        full = b.ok("GET", f"/api/v1/billing/invoices/{inv['id']}", query={"expand": "lines"})
        out += [Decimal(ln["totals"]["total"]) for ln in full["lines"] if ln["name"] == "Seat"]
    return out


def test_each_quantity_span_of_an_add_on_is_billed(billow: Billow) -> None:
    """Seats ($10 a seat a month, in advance) x3 from April 11, x4 from April 21: April bills 3 x 10 x 10/30 = 10.00
    and 4 x 10 x 10/30 = 13.33, 23.33 in all (not 13.33)."""
    b = billow
    setup(b)
    b.ok("POST", "/api/v1/billing/profiles", PROFILE)
    b.clock.set("2026-03-31T00:00:00Z")
    seats = published_seats(b)
    draft = b.ok("POST", "/api/v1/plans", plan_body("team", "50"))
    b.ok("POST", f"/api/v1/plans/{draft['id']}/addons", {"addonId": seats["id"], "fromPlanPhase": "default"})
    b.ok("POST", f"/api/v1/plans/{draft['id']}/publish")
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "team"}, "customerKey": "acme",
                                                 "timing": "2026-04-01T00:00:00Z"})
    b.clock.set("2026-04-11T00:00:00Z")
    added = b.ok("POST", f"/api/v1/subscriptions/{sub['id']}/addons",
                 {"addon": {"id": seats["id"]}, "quantity": 3, "timing": "immediate", "name": "Seats"})
    b.clock.set("2026-04-12T00:00:00Z")
    scheduled_run(b)  # the in-advance seats from April 11: 3 x 10 x 20/30
    b.clock.set("2026-04-21T00:00:00Z")
    b.ok("PATCH", f"/api/v1/subscriptions/{sub['id']}/addons/{added['id']}", {"quantity": 4, "timing": "immediate"})
    b.clock.set("2026-04-22T00:00:00Z")
    scheduled_run(b)  # the correction: the x3 span ends on April 21 (-10.00), the x4 span begins (+13.33)
    assert _seat_totals(b) == [Decimal("20.00"), Decimal("3.33")]
    assert sum(_seat_totals(b)) == Decimal("23.33")
    b.clock.set("2026-05-01T00:10:00Z")
    scheduled_run(b)
    assert sum(_seat_totals(b)) == Decimal("23.33") + Decimal("40.00")  # May: 4 seats, the whole month
