"""Catalog and subscription behaviours made the same as OpenMeter's (issue 16 item 3), through the API (real
handlers, in-memory twin and chdb, SQLite meta store)."""

from __future__ import annotations

from tests.catalog.conftest import Billow
from tests.support.catalog import plan_body, published, setup


def test_entitlement_a_subscription_manages_cannot_be_deleted_through_the_entitlement_apis(billow: Billow) -> None:
    b = billow
    setup(b)
    published(b, plan_body("basic", "10"))
    cust = b.ok("GET", "/api/v1/customers/acme")
    b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerId": cust["id"]})
    (ent,) = b.ok("GET", "/api/v1/subjects/customer_1/entitlements")
    status, out = b.call("DELETE", f"/api/v1/subjects/customer_1/entitlements/{ent['id']}")
    assert status == 403 and "subscription" in out["detail"], out
    status, out = b.call("DELETE", f"/api/v2/customers/acme/entitlements/{ent['id']}")
    assert status == 403, out
    assert b.value("customer_1", "tokens")["hasAccess"] is True
    # one made by hand is still the caller's to delete
    b.ok("POST", "/api/v1/features", {"key": "sso", "name": "SSO"})
    own = b.ok("POST", "/api/v1/subjects/customer_1/entitlements", {"type": "boolean", "featureKey": "sso"})
    assert b.call("DELETE", f"/api/v1/subjects/customer_1/entitlements/{own['id']}")[0] == 204


def test_custom_plan_needs_no_key(billow: Billow) -> None:
    b = billow
    setup(b)
    custom = plan_body("unused", "10")
    del custom["key"]
    sub = b.ok("POST", "/api/v1/subscriptions", {"customPlan": custom, "customerKey": "acme"})
    assert (sub["status"], sub["plan"]) == ("active", None)
    assert b.value("customer_1", "tokens")["hasAccess"] is True
    # a second subscription for the same customer is a conflict, not a server error
    status, out = b.call("POST", "/api/v1/subscriptions", {"customPlan": custom, "customerKey": "acme"})
    assert status == 409, out
    # also for a customer without a key
    other = b.ok("POST", "/api/v1/customers", {"name": "No key", "currency": "USD",
                                                "usageAttribution": {"subjectKeys": ["customer_2"]}})
    assert b.call("POST", "/api/v1/subscriptions", {"customPlan": custom, "customerId": other["id"]})[0] == 201
    status, out = b.call("POST", "/api/v1/subscriptions", {"customPlan": custom, "customerId": other["id"]})
    assert status == 409, out


def test_post_plans_with_an_existing_key_makes_the_next_draft(billow: Billow) -> None:
    b = billow
    setup(b)
    v1 = published(b, plan_body("starter", "30"))
    v2 = b.ok("POST", "/api/v1/plans", plan_body("starter", "35"))
    assert (v2["key"], v2["version"], v2["status"]) == ("starter", 2, "draft")
    assert v2["phases"][0]["rateCards"][0]["price"]["amount"] == "35"
    assert b.ok("GET", f"/api/v1/plans/{v1['id']}")["status"] == "active"
    status, out = b.call("POST", "/api/v1/plans", plan_body("starter", "40"))  # one draft at a time
    assert status == 400 and out["detail"].startswith("key: ") and out["conflictingEntityId"] == v2["id"], out
