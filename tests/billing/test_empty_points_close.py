"""A billing point that billed nothing closes CORRECTION_WINDOW after its period ends, as one that billed something
does: late usage of an old period is not billed months later because the period's first bill happened to be zero,
and a run does not re-rate every empty period since the subscription began."""

from __future__ import annotations

from tests.billing.conftest import Billow
from tests.support.billing import PROFILE, invoices, scheduled_run
from tests.support.catalog import metered_plan, published, setup

USAGE_ONLY = metered_plan({"type": "unit", "amount": "1"})


def totals(b: Billow) -> list[tuple[str, str]]:
    return [(ln["subscription"]["billingPeriod"]["from"], ln["totals"]["total"])
            for inv in invoices(b) for ln in b.ok("GET", f"/api/v1/billing/invoices/{inv['id']}",
                                                 query={"expand": "lines"})["lines"]]


def test_late_usage_after_the_window_is_not_billed_whether_the_period_billed_something_or_nothing(billow: Billow) -> None:
    b = billow
    setup(b)
    b.ok("POST", "/api/v1/billing/profiles", PROFILE)
    b.clock.set("2026-03-31T00:00:00Z")
    published(b, USAGE_ONLY)
    b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "metered"}, "customerKey": "acme",
                                           "timing": "2026-04-01T00:00:00Z"})
    b.clock.set("2026-05-10T00:00:00Z")
    b.usage(5, "2026-05-10T00:00:00Z")  # May bills 5; April bills nothing
    b.clock.set("2026-06-01T00:10:00Z")
    scheduled_run(b)
    assert totals(b) == [("2026-05-01T00:00:00Z", "5.00")]
    # Late usage of both months, 7 days and more after each ended: past the correction window of both.
    b.clock.set("2026-06-09T00:00:00Z")
    b.usage(100, "2026-04-20T00:00:00Z")
    b.usage(1000, "2026-05-20T00:00:00Z")
    run = scheduled_run(b)
    assert run["invoices"] == [] and totals(b) == [("2026-05-01T00:00:00Z", "5.00")]
    # Later runs look at the open points only: on August 1st July's two and August's in-advance one, not every
    # point that billed nothing since April (April's two, May's and June's in-advance ones, June's in-arrears one).
    b.clock.set("2026-07-01T00:10:00Z")
    scheduled_run(b)
    b.clock.set("2026-08-01T00:10:00Z")
    assert scheduled_run(b)["points"] == 3
