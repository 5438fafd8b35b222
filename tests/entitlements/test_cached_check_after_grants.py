"""A grant written after a balance was cached (billow serve's balance cache) shows in the next check: a customer who
bought credits is let in at once, and a voided grant stops counting at once. Before, the entitlement store did not
count grant writes as writes (`generation`), so the cache kept answering the balance from before the grant until
usage for the subject arrived or the balance's next change came due."""

from __future__ import annotations

from tests.entitlements.conftest import Billow


def test_a_grant_and_its_voiding_show_in_the_next_cached_check(billow: Billow) -> None:
    b = billow
    assert b.c.balance_cache is not None
    b.ok("POST", "/api/v1/features", {"key": "ai", "name": "AI", "meterSlug": "tokens"})
    path = "/api/v1/subjects/customer_1/entitlements"
    b.ok("POST", path, {"type": "metered", "featureKey": "ai", "issueAfterReset": 10,
                        "usagePeriod": {"interval": "MONTH", "anchor": "2026-01-01T00:00:00Z"}})
    b.usage("12", "2026-01-03T10:00:00Z")
    b.clock.set("2026-01-04T10:00:00Z")
    before = b.value("customer_1", "ai")
    assert (before["hasAccess"], before["balance"], before["overage"]) == (False, 0, 2)
    assert b.value("customer_1", "ai") == before  # cached
    grant = b.ok("POST", path + "/ai/grants", {"amount": 50, "priority": 1, "effectiveAt": "2026-01-04T09:00:00Z",
                                                "expiration": {"duration": "DAY", "count": 10}})
    bought = b.value("customer_1", "ai")
    # The grant covers the overage first (OpenMeter's burn-down), and the rest is the balance.
    assert (bought["hasAccess"], bought["balance"], bought["overage"]) == (True, 48, 0)
    assert bought == b.fresh_value("customer_1", "ai")
    b.clock.set("2026-01-04T11:00:00Z")
    assert b.value("customer_1", "ai") == bought
    b.ok("DELETE", f"/api/v1/grants/{grant['id']}")  # voided now
    voided = b.value("customer_1", "ai")
    assert (voided["hasAccess"], voided["balance"]) == (False, 0)
    assert voided == b.fresh_value("customer_1", "ai")
