"""OpenMeter's entitlement scenarios through the API: a free tier with a monthly reset, prepaid credits with
priorities and expiry, rollover; snapshots that late usage invalidates; every bad input a clear 4xx."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tests.entitlements.conftest import Billow

S = "/api/v1/subjects/customer_1/entitlements"


def feature(b: Billow, key: str = "ai_tokens", **extra: Any) -> dict[str, Any]:
    return b.ok("POST", "/api/v1/features", {"key": key, "name": key.replace("_", " "), "meterSlug": "tokens", **extra})


def metered(b: Billow, **extra: Any) -> dict[str, Any]:
    body = {"type": "metered", "featureKey": "ai_tokens",
            "usagePeriod": {"interval": "MONTH", "anchor": "2026-01-01T00:00:00Z"}, **extra}
    return b.ok("POST", S, body)


def grant(b: Billow, amount: Any, effective: str, **extra: Any) -> dict[str, Any]:
    body = {"amount": amount, "effectiveAt": effective, "expiration": {"duration": "YEAR", "count": 1}, **extra}
    return b.ok("POST", f"{S}/ai_tokens/grants", body)


def test_free_tier_with_monthly_reset(billow: Billow) -> None:
    b = billow
    feature(b)
    ent = metered(b, issueAfterReset=1000)
    assert ent["type"] == "metered" and ent["currentUsagePeriod"] == {
        "from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z"}
    b.clock.set("2026-01-05T12:00:00Z")
    b.usage(300, "2026-01-05T10:00:00Z")
    v = b.value("customer_1", "ai_tokens")
    assert (v["hasAccess"], v["balance"], v["usage"], v["overage"]) == (True, 700, 300, 0)
    b.usage("900.5", "2026-01-05T11:00:00Z")
    v = b.value("customer_1", "ai_tokens")
    assert (v["hasAccess"], v["balance"], v["usage"], v["overage"]) == (False, 0, 1200.5, 200.5)
    b.clock.set("2026-02-10T00:00:00Z")  # the monthly reset refills the free tier; overage is not carried
    b.usage(10, "2026-02-09T00:00:00Z")
    v = b.value("customer_1", "ai_tokens")
    assert (v["hasAccess"], v["balance"], v["usage"], v["overage"]) == (True, 990, 10, 0)
    # The value at a past instant is the balance as it was then.
    assert b.value("customer_1", "ai_tokens", at="2026-01-05T10:30:00Z")["balance"] == 700


def test_prepaid_credits_burn_by_priority_then_expiry(billow: Billow) -> None:
    b = billow
    feature(b)
    metered(b)
    b.clock.set("2026-01-02T00:00:00Z")
    late = grant(b, 500, "2026-01-02T00:00:00Z", priority=5)
    soon = grant(b, 100, "2026-01-02T00:00:00Z", priority=5, expiration={"duration": "DAY", "count": 7})
    first = grant(b, 50, "2026-01-02T00:00:00Z", priority=1)
    assert soon["expiresAt"] == "2026-01-09T00:00:00Z"
    b.clock.set("2026-01-03T00:00:00Z")
    b.usage(120, "2026-01-02T12:00:00Z")
    # priority 1 first (50), then the earlier expiry (70 of 100); the 500 is untouched
    v = b.value("customer_1", "ai_tokens")
    assert (v["balance"], v["usage"]) == (530, 120)
    b.clock.set("2026-01-10T00:00:00Z")  # the 30 left on the 7-day grant expired
    assert b.value("customer_1", "ai_tokens")["balance"] == 500
    hist = b.ok("GET", f"{S}/{first['entitlementId']}/history",
                query={"from": "2026-01-02T00:00:00Z", "to": "2026-01-03T00:00:00Z", "windowSize": "DAY"})
    assert [(w["period"]["from"], w["usage"], w["balanceAtStart"]) for w in hist["windowedHistory"]] == [
        ("2026-01-02T00:00:00Z", 120, 650)]
    seg = hist["burndownHistory"][0]
    assert {g["grantId"]: g["usage"] for g in seg["grantUsages"]} == {first["id"]: 50, soon["id"]: 70}
    assert late["id"] not in {g["grantId"] for g in seg["grantUsages"]}


def test_rollover_caps_what_carries_into_the_next_period(billow: Billow) -> None:
    b = billow
    feature(b)
    metered(b)
    grant(b, 100, "2026-01-01T00:00:00Z", maxRolloverAmount=50)
    b.clock.set("2026-01-20T00:00:00Z")
    b.usage(30, "2026-01-10T00:00:00Z")
    assert b.value("customer_1", "ai_tokens")["balance"] == 70
    b.clock.set("2026-02-15T00:00:00Z")
    v = b.value("customer_1", "ai_tokens")
    assert (v["balance"], v["usage"]) == (50, 0)  # min(maxRollover 50, balance 70)


def test_late_usage_invalidates_the_snapshot(billow: Billow) -> None:
    b = billow
    feature(b)
    ent = metered(b)
    grant(b, 100, "2026-01-01T00:00:00Z", maxRolloverAmount=100)
    b.clock.set("2026-02-15T00:00:00Z")
    assert b.value("customer_1", "ai_tokens")["balance"] == 100
    snap = b.c.entitlements.latest_snapshot(b.c.namespace, ent["id"], b.clock.now())
    assert snap is not None  # the Feb 1 reset is older than the grace period: saved
    b.usage(40, "2026-01-20T00:00:00Z")  # arrives weeks late, before the snapshot
    assert b.c.entitlements.latest_snapshot(b.c.namespace, ent["id"], b.clock.now()) is None
    assert b.value("customer_1", "ai_tokens")["balance"] == 60


def test_manual_reset_and_soft_limit(billow: Billow) -> None:
    b = billow
    feature(b)
    ent = metered(b, isSoftLimit=True, issueAfterReset=10)
    b.clock.set("2026-01-10T00:00:00Z")
    b.usage(25, "2026-01-09T00:00:00Z")
    v = b.value("customer_1", "ai_tokens")
    assert (v["hasAccess"], v["balance"], v["overage"]) == (True, 0, 15)  # soft limit keeps access
    b.ok("POST", f"{S}/{ent['id']}/reset", {"effectiveAt": "2026-01-09T12:00:00Z"})
    v = b.value("customer_1", "ai_tokens")
    assert (v["balance"], v["usage"], v["overage"]) == (10, 0, 0)
    status, err = b.call("POST", f"{S}/{ent['id']}/reset", {"effectiveAt": "2026-01-08T00:00:00Z"})
    assert status == 400 and "overlap" in err["detail"]


def test_boolean_static_and_customer_value(billow: Billow) -> None:
    b = billow
    b.ok("POST", "/api/v1/features", {"key": "sso", "name": "SSO"})
    b.ok("POST", "/api/v1/features", {"key": "limits", "name": "Limits"})
    b.ok("POST", S, {"type": "boolean", "featureKey": "sso"})
    b.ok("POST", S, {"type": "static", "featureKey": "limits", "config": '{"seats": 5}'})
    assert b.value("customer_1", "sso") == {"hasAccess": True}
    assert b.value("customer_1", "limits") == {"hasAccess": True, "config": '{"seats": 5}'}
    b.ok("POST", "/api/v1/customers", {"name": "Acme", "key": "acme", "usageAttribution": {"subjectKeys": ["customer_1"]}})
    assert b.ok("GET", "/api/v1/customers/acme/entitlements/sso/value") == {"hasAccess": True}
    status, _ = b.call("GET", "/api/v1/subjects/customer_2/entitlements/sso/value")
    assert status == 404


def test_override_keeps_the_old_history(billow: Billow) -> None:
    b = billow
    feature(b)
    old = metered(b, issueAfterReset=100)
    b.clock.set("2026-01-10T00:00:00Z")
    b.usage(40, "2026-01-05T00:00:00Z")
    new = b.ok("PUT", f"{S}/ai_tokens/override", {
        "type": "metered", "featureKey": "ai_tokens", "issueAfterReset": 500, "measureUsageFrom": "NOW",
        "usagePeriod": {"interval": "MONTH", "anchor": "2026-01-01T00:00:00Z"}})
    assert new["id"] != old["id"]
    assert b.value("customer_1", "ai_tokens")["balance"] == 500  # usage before the override is not counted
    gone = b.ok("GET", f"{S}/{old['id']}")
    assert gone["deletedAt"] == "2026-01-10T00:00:00Z"
    assert [e["id"] for e in b.ok("GET", S)] == [new["id"]]


def test_bad_input_is_a_clear_4xx(billow: Billow) -> None:
    b = billow
    feature(b)

    def err(method: str, path: str, body: Any, status: int, field: str | None = None) -> None:
        got, out = b.call(method, path, body)
        assert got == status, (got, out)
        assert out["status"] == status and out["type"] and out["detail"]
        if field is not None:
            assert field in [e["field"] for e in out["validationErrors"]], out

    err("POST", "/api/v1/features", {"key": "Bad Key", "name": "x"}, 400, "key")
    err("POST", "/api/v1/features", {"key": "other", "name": "x", "meterSlug": "nope"}, 400, "meterSlug")
    err("POST", "/api/v1/features", {"key": "ai_tokens", "name": "again"}, 409)
    err("POST", S, {"type": "metered", "featureKey": "nope", "usagePeriod": {"interval": "DAY"}}, 400, "featureKey")
    err("POST", "/api/v1/subjects/nobody/entitlements", {"type": "boolean", "featureKey": "ai_tokens"}, 404)
    err("POST", S, {"type": "metered", "featureKey": "ai_tokens",
                    "usagePeriod": {"interval": "MONTH", "timeZone": "Mars/Olympus"}}, 400, "usagePeriod.timeZone")
    err("POST", S, {"type": "metered", "featureKey": "ai_tokens"}, 400, "usagePeriod")
    metered(b)
    err("POST", S, {"type": "boolean", "featureKey": "ai_tokens"}, 409)  # one live entitlement per feature
    g = f"{S}/ai_tokens/grants"
    exp = {"duration": "DAY", "count": 1}
    err("POST", g, {"amount": -5, "effectiveAt": "2026-01-01T00:00:00Z", "expiration": exp}, 400, "amount")
    err("POST", g, {"amount": "1e400", "effectiveAt": "2026-01-01T00:00:00Z", "expiration": exp}, 400, "amount")
    err("POST", g, {"amount": 5, "effectiveAt": "2026-01-01T00:00:00Z", "expiration": exp, "priority": 0}, 400,
        "priority")
    err("POST", g, {"amount": 5, "effectiveAt": "2026-01-01T00:00:00Z", "expiration": exp,
                    "minRolloverAmount": 10, "maxRolloverAmount": 5}, 400, "minRolloverAmount")
    b.clock.set("2026-03-05T00:00:00Z")
    err("POST", g, {"amount": 5, "effectiveAt": "2026-02-01T00:00:00Z", "expiration": exp}, 400, "effectiveAt")
    b.ok("DELETE", "/api/v1/features/" + b.ok("GET", "/api/v1/features/ai_tokens")["id"])
    err("POST", "/api/v1/subjects/customer_2/entitlements", {"type": "boolean", "featureKey": "ai_tokens"}, 400,
        "featureKey")  # archived


def test_a_reset_never_comes_before_one_a_later_request_wrote(billow: Billow) -> None:
    """Two resets at once: the one that began later (its `now`, and so its default effectiveAt, later) can write
    first. The other judged the usage period as of its own earlier `now`, where that reset is not yet in force, and
    wrote a reset before it: 204, the period the first one closed split after it answered (the usage and overage
    it carried over rewritten), as a reset before the last one is refused otherwise (400 overlap). Now 409 and only
    the first reset is stored."""
    b = billow
    feature(b)
    ent = metered(b, isSoftLimit=True, issueAfterReset=10)
    b.usage(25, "2026-01-09T00:00:00Z")
    b.clock.set("2026-01-10T00:01:00Z")
    b.ok("POST", f"{S}/{ent['id']}/reset", {"preserveOverage": True})
    after = b.value("customer_1", "ai_tokens")
    b.clock.set("2026-01-10T00:00:30Z")  # the request that began first, answered second
    status, out = b.call("POST", f"{S}/{ent['id']}/reset", {"preserveOverage": True})
    assert status == 409 and "reset meanwhile" in out["detail"], out
    assert [r["at"] for r in b.c.entitlements.list_resets(b.c.namespace, ent["id"])] == [
        datetime(2026, 1, 10, 0, 1, tzinfo=UTC)]
    b.clock.set("2026-01-10T00:02:00Z")
    assert b.value("customer_1", "ai_tokens") == after


@pytest.mark.parametrize("base", [S, "/api/v2/customers/acme/entitlements"], ids=["v1", "v2"])
def test_a_reset_body_left_out_resets_now_and_a_null_one_is_refused(billow: Billow, base: str) -> None:
    """A reset's body is optional (none: reset now). A JSON `null` body was taken for one left out and reset the
    usage (204); now 400 naming the body, and no reset stored."""
    b = billow
    b.ok("POST", "/api/v1/customers", {"key": "acme", "name": "Acme", "usageAttribution": {"subjectKeys": ["customer_1"]}})
    feature(b)
    ent = metered(b, issueAfterReset=10)
    b.clock.set("2026-01-10T00:00:00Z")
    status, out = b.raw("POST", f"{base}/{ent['id']}/reset", b"null")
    assert status == 400 and "body" in str(out), out
    assert b.c.entitlements.list_resets(b.c.namespace, ent["id"]) == []
    assert b.call("POST", f"{base}/{ent['id']}/reset")[0] == 204
    assert len(b.c.entitlements.list_resets(b.c.namespace, ent["id"])) == 1


@pytest.mark.parametrize("base", [S, "/api/v2/customers/acme/entitlements"], ids=["v1", "v2"])
def test_an_entitlement_made_by_a_later_request_is_not_ended_before_it_began(billow: Billow, base: str) -> None:
    """Two overrides at once, the later-begun first: the other resolved the feature to the entitlement that one
    made and replaced it as of its own earlier `now`: that entitlement ended before it began, and the new one began
    before its predecessor. A deletion read the same way ended it before it began. Now each is made as of the
    entitlement it replaces (or ends): no end before a start."""
    b = billow
    b.ok("POST", "/api/v1/customers", {"key": "acme", "name": "Acme", "usageAttribution": {"subjectKeys": ["customer_1"]}})
    feature(b)
    metered(b)
    body = {"type": "metered", "featureKey": "ai_tokens", "usagePeriod": {"interval": "MONTH",
                                                                          "anchor": "2026-01-01T00:00:00Z"}}
    b.clock.set("2026-01-10T00:01:00Z")
    first = b.ok("PUT", f"{base}/ai_tokens/override", body)
    b.clock.set("2026-01-10T00:00:30Z")  # the request that began first, answered second
    second = b.ok("PUT", f"{base}/ai_tokens/override", body)
    replaced = b.ok("GET", f"{S}/{first['id']}")
    assert replaced["activeFrom"] <= replaced["activeTo"] <= second["activeFrom"], (replaced, second)
    assert b.call("DELETE", f"{base}/{second['id'] if base == S else 'ai_tokens'}")[0] == 204
    gone = b.ok("GET", f"{S}/{second['id']}")
    assert gone["activeFrom"] <= gone["activeTo"], gone
