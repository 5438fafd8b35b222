"""Subscription and plan behaviours as OpenMeter has them (issue 16 item 3): the expanded subscription's
`alignment.currentAlignedBillingPeriod` and `items[].included.feature`, `GET /customers?planKey=`, and a
misaligned plan accepted as a draft and refused at publish with `validationErrors`."""

from __future__ import annotations

from tests.catalog.conftest import Billow
from tests.support.catalog import plan_body, published, setup


def test_expanded_subscription_has_its_aligned_period_and_each_items_feature(billow: Billow) -> None:
    b = billow
    setup(b)
    b.clock.set("2026-03-31T00:00:00Z")
    published(b, plan_body("basic", "49.99"))
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme",
                                                 "timing": "2026-04-01T00:00:00Z"})
    scheduled = b.ok("GET", f"/api/v1/subscriptions/{sub['id']}")
    assert scheduled["alignment"] == {"billablesMustAlign": True}  # not active yet: no current period
    b.clock.set("2026-05-17T08:00:00Z")
    got = b.ok("GET", f"/api/v1/subscriptions/{sub['id']}")
    assert got["alignment"] == {"billablesMustAlign": True, "currentAlignedBillingPeriod": {
        "from": "2026-05-01T00:00:00Z", "to": "2026-06-01T00:00:00Z"}}
    base, tokens = got["phases"][0]["items"]
    assert "included" not in base  # a flat fee without a feature includes nothing
    feature = b.ok("GET", "/api/v1/features/tokens")
    assert tokens["included"]["feature"] == feature
    ent = b.ok("GET", "/api/v1/subjects/customer_1/entitlements")[0]
    assert tokens["included"]["entitlement"]["id"] == ent["id"]
    b.ok("POST", f"/api/v1/subscriptions/{sub['id']}/cancel", {"timing": "2026-05-20T00:00:00Z"})
    b.clock.set("2026-05-21T00:00:00Z")
    assert "currentAlignedBillingPeriod" not in b.ok("GET", f"/api/v1/subscriptions/{sub['id']}")["alignment"]


def test_customers_filter_by_the_plan_of_their_running_subscription(billow: Billow) -> None:
    b = billow
    setup(b)  # acme
    for key in ("globex", "initech"):
        b.ok("POST", "/api/v1/customers", {"key": key, "name": key.title(), "currency": "USD"})
    b.clock.set("2026-03-31T00:00:00Z")
    published(b, plan_body("basic", "49.99"))
    published(b, plan_body("pro", "199"))
    b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme"})
    b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "pro"}, "customerKey": "globex"})
    later = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "initech",
                                                   "timing": "2026-04-01T00:00:00Z"})

    def keys(plan: str) -> list[str]:
        return [c["key"] for c in b.ok("GET", "/api/v1/customers", query={"planKey": plan})["items"]]

    assert (keys("basic"), keys("pro"), keys("nope")) == (["acme"], ["globex"], [])  # initech's starts later
    b.clock.set("2026-04-02T00:00:00Z")
    assert keys("basic") == ["acme", "initech"]
    b.ok("POST", f"/api/v1/subscriptions/{later['id']}/cancel", {"timing": "immediate"})
    assert keys("basic") == ["acme"]
    page = b.ok("GET", "/api/v1/customers", query={"planKey": "basic", "pageSize": "1", "page": "1"})
    assert (page["totalCount"], [c["key"] for c in page["items"]]) == (1, ["acme"])
    status, out = b.call("GET", "/api/v1/customers", query={"planKey": ""})
    assert status == 400 and "planKey" in out["detail"]


def test_a_misaligned_plan_is_a_draft_that_cannot_be_published(billow: Billow) -> None:
    b = billow
    setup(b)
    body = plan_body("weekly", "10")
    body["phases"][0]["rateCards"][1]["billingCadence"] = "P1W"  # the plan bills monthly, billables must align
    draft = b.ok("POST", "/api/v1/plans", body)
    field = "phases[0].rateCards[1].billingCadence"
    assert draft["status"] == "draft"
    (problem,) = draft["validationErrors"]
    assert (problem["field"], problem["code"], problem["severity"]) == (
        field, "rate_card_billing_cadence_unaligned", "critical")
    assert b.ok("GET", f"/api/v1/plans/{draft['id']}")["validationErrors"] == draft["validationErrors"]
    status, out = b.call("POST", f"/api/v1/plans/{draft['id']}/publish")
    assert status == 400 and field in out["detail"] and [e["field"] for e in out["validationErrors"]] == [field]
    assert b.ok("GET", f"/api/v1/plans/{draft['id']}")["status"] == "draft"
    # Fixed (PUT), or alignment switched off, it publishes.
    body["phases"][0]["rateCards"][1]["billingCadence"] = "P1M"
    fixed = b.ok("PUT", f"/api/v1/plans/{draft['id']}", body)
    assert fixed["validationErrors"] is None
    assert b.ok("POST", f"/api/v1/plans/{draft['id']}/publish")["status"] == "active"
    loose = plan_body("loose", "10")
    loose["alignment"] = {"billablesMustAlign": False}
    loose["phases"][0]["rateCards"][1]["billingCadence"] = "P1W"
    assert published(b, loose)["status"] == "active"
    # A custom plan is used at once: misaligned, the subscription is refused, naming the field.
    status, out = b.call("POST", "/api/v1/subscriptions", {"customerKey": "acme", "customPlan": body | {
        "phases": [{**body["phases"][0], "rateCards": [body["phases"][0]["rateCards"][0],
                                                       {**body["phases"][0]["rateCards"][1], "billingCadence": "P1W"}]}]}})
    assert status == 400 and f"customPlan.{field}" in out["detail"], out
