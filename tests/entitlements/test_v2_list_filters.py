"""GET /api/v2/entitlements: each filter (customerKeys, customerIds, entitlementType, feature by key or id,
excludeInactive) and an entitlement whose subject has no customer, which the v2 list never shows."""

from __future__ import annotations

from tests.entitlements.conftest import Billow


def _listed(b: Billow, query: dict[str, str] | None = None) -> set[tuple[str, str]]:
    page = b.ok("GET", "/api/v2/entitlements", query=query)
    assert page["totalCount"] == len(page["items"])
    return {(e["customerKey"], e["featureKey"]) for e in page["items"]}


def test_v2_entitlement_list_filters(billow: Billow) -> None:
    b = billow
    b.ok("POST", "/api/v1/subjects", [{"key": "customer_3"}])
    b.ok("POST", "/api/v1/features", {"key": "credits", "name": "Credits", "meterSlug": "tokens"})
    flag = b.ok("POST", "/api/v1/features", {"key": "flag", "name": "Flag"})
    c1 = b.ok("POST", "/api/v1/customers", {"name": "One", "key": "k1",
                                            "usageAttribution": {"subjectKeys": ["customer_1"]}})
    c2 = b.ok("POST", "/api/v1/customers", {"name": "Two", "key": "k2",
                                            "usageAttribution": {"subjectKeys": ["customer_2"]}})
    b.ok("POST", "/api/v1/subjects/customer_1/entitlements",
         {"type": "metered", "featureKey": "credits", "usagePeriod": {"interval": "MONTH"}})
    b.ok("POST", "/api/v1/subjects/customer_1/entitlements", {"type": "boolean", "featureKey": "flag"})
    b.ok("POST", "/api/v1/subjects/customer_3/entitlements", {"type": "boolean", "featureKey": "flag"})
    b.clock.set("2026-01-02T00:00:00Z")
    b.ok("POST", "/api/v1/subjects/customer_2/entitlements", {"type": "boolean", "featureKey": "flag"})

    everything = {("k1", "credits"), ("k1", "flag"), ("k2", "flag")}  # customer_3 has no customer
    assert _listed(b) == everything
    assert _listed(b, {"customerKeys": "k1"}) == {("k1", "credits"), ("k1", "flag")}
    assert _listed(b, {"customerIds": c2["id"]}) == {("k2", "flag")}
    assert _listed(b, {"customerKeys": c2["id"]}) == set()  # an id is not a key
    assert _listed(b, {"customerIds": c1["key"]}) == set()  # nor a key an id
    assert _listed(b, {"customerKeys": "nobody"}) == set()
    assert _listed(b, {"entitlementType": "boolean"}) == {("k1", "flag"), ("k2", "flag")}
    assert _listed(b, {"entitlementType": "metered"}) == {("k1", "credits")}
    assert _listed(b, {"feature": "credits"}) == {("k1", "credits")}
    assert _listed(b, {"feature": flag["id"]}) == {("k1", "flag"), ("k2", "flag")}
    assert _listed(b, {"excludeInactive": "true"}) == everything
    b.clock.set("2026-01-01T12:00:00Z")  # before customer_2's entitlement became active
    assert _listed(b, {"excludeInactive": "true"}) == {("k1", "credits"), ("k1", "flag")}
    assert _listed(b, {"excludeInactive": "false"}) == everything
    assert _listed(b, {"customerKeys": "k2", "entitlementType": "boolean", "excludeInactive": "true"}) == set()
