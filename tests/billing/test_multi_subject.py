"""A customer with several subjects is one billable party (issue 16 item 2): the entitlements its subscription
makes are reachable through each of its subjects, and their value, balance history and the invoice lines count
the usage of all of them, on the in-memory twin and on chdb."""

from __future__ import annotations

from decimal import Decimal

from tests.billing.conftest import Billow
from tests.support.billing import PROFILE, invoices, scheduled_run
from tests.support.catalog import plan_body, published


def _two_subject_customer(b: Billow) -> dict[str, object]:
    b.ok("POST", "/api/v1/features", {"key": "tokens", "name": "Tokens", "meterSlug": "tokens"})
    b.ok("POST", "/api/v1/customers", {"key": "acme", "name": "Acme", "currency": "USD",
                                       "usageAttribution": {"subjectKeys": ["customer_1", "customer_2"]}})
    b.ok("POST", "/api/v1/billing/profiles", PROFILE)
    b.clock.set("2026-03-31T00:00:00Z")
    published(b, plan_body("basic", "49.99"))
    return b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme",  # type: ignore[no-any-return]
                                                  "timing": "2026-04-01T00:00:00Z"})


def test_usage_of_every_subject_counts_in_values_history_and_invoice_lines(billow: Billow) -> None:
    b = billow
    sub = _two_subject_customer(b)
    b.clock.set("2026-04-01T00:10:00Z")
    scheduled_run(b)  # April's base fee in advance; the entitlement exists from the start
    b.usage(600, "2026-04-05T10:00:00Z", subject="customer_1")
    b.usage(900, "2026-04-06T10:00:00Z", subject="customer_2")
    b.clock.set("2026-04-20T00:00:00Z")
    # The subscription's entitlement (issueAfterReset 5000) counts both subjects, through either subject...
    for subject in ("customer_1", "customer_2"):
        v = b.value(subject, "tokens")
        assert (Decimal(str(v["usage"])), Decimal(str(v["balance"]))) == (Decimal(1500), Decimal(3500)), subject
    # ...by customer (v1 and v2)...
    v1 = b.ok("GET", "/api/v1/customers/acme/entitlements/tokens/value")
    v2 = b.ok("GET", "/api/v2/customers/acme/entitlements/tokens/value")
    assert Decimal(str(v1["usage"])) == Decimal(str(v2["usage"])) == Decimal(1500)
    # ...and in its history, through the second subject.
    (ent,) = b.ok("GET", "/api/v1/subjects/customer_1/entitlements")
    assert [e["id"] for e in b.ok("GET", "/api/v1/subjects/customer_2/entitlements")] == [ent["id"]]
    assert b.ok("GET", f"/api/v1/subjects/customer_2/entitlements/{ent['id']}")["id"] == ent["id"]
    hist = b.ok("GET", f"/api/v1/subjects/customer_2/entitlements/{ent['id']}/history",
                query={"windowSize": "DAY", "from": "2026-04-01T00:00:00Z", "to": "2026-04-20T00:00:00Z"})
    assert sum(Decimal(str(w["usage"])) for w in hist["windowedHistory"]) == Decimal(1500)
    # The charges preview and the invoice line count both subjects: 1,000 x 0.01 + 500 x 0.005 = 12.50.
    charges = b.ok("GET", f"/api/v1/subscriptions/{sub['id']}/charges", query={"at": "2026-04-20T00:00:00Z"})
    assert sum(Decimal(str(ln["quantity"])) for ln in charges["lines"] if ln.get("featureKey") == "tokens") == 1500
    b.clock.set("2026-05-01T00:10:00Z")
    scheduled_run(b)
    tokens = next(ln for ln in invoices(b)[1]["lines"] if ln["featureKey"] == "tokens")
    assert (tokens["quantity"], tokens["totals"]["total"]) == ("1500", "12.50")
    # A usage value the balance cache holds follows new usage on the other subject.
    b.clock.set("2026-05-10T00:00:00Z")
    assert Decimal(str(b.value("customer_1", "tokens")["usage"])) == 0
    b.usage(7, "2026-05-09T10:00:00Z", subject="customer_2")
    assert Decimal(str(b.value("customer_1", "tokens")["usage"])) == Decimal(7)


def test_a_second_subject_cannot_hold_its_own_entitlement_to_the_same_feature(billow: Billow) -> None:
    b = billow
    _two_subject_customer(b)
    b.clock.set("2026-04-01T00:10:00Z")
    scheduled_run(b)  # the subscription's entitlement is made on its first subject
    status, out = b.call("POST", "/api/v1/subjects/customer_2/entitlements",
                         {"type": "metered", "featureKey": "tokens", "usagePeriod": {"interval": "MONTH"}})
    assert status == 409 and out["extensions"]["conflictingEntityId"]


def test_a_subscription_is_refused_when_another_subject_of_the_customer_holds_the_entitlement(billow: Billow) -> None:
    b = billow
    b.ok("POST", "/api/v1/features", {"key": "tokens", "name": "Tokens", "meterSlug": "tokens"})
    b.ok("POST", "/api/v1/customers", {"key": "acme", "name": "Acme", "currency": "USD",
                                       "usageAttribution": {"subjectKeys": ["customer_1", "customer_2"]}})
    own = b.ok("POST", "/api/v1/subjects/customer_2/entitlements",
               {"type": "metered", "featureKey": "tokens", "usagePeriod": {"interval": "MONTH"}})
    published(b, plan_body("basic", "49.99"))
    status, out = b.call("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme"})
    assert status == 409 and own["id"] in out["detail"], out


def test_a_cached_value_follows_a_subject_added_to_the_customer(billow: Billow) -> None:
    b = billow
    assert b.c.balance_cache is not None  # billow serve's in-process cache is what this is about
    b.ok("POST", "/api/v1/features", {"key": "tokens", "name": "Tokens", "meterSlug": "tokens"})
    b.ok("POST", "/api/v1/customers", {"key": "acme", "name": "Acme", "usageAttribution": {"subjectKeys": ["customer_1"]}})
    b.ok("POST", "/api/v1/subjects/customer_1/entitlements",
         {"type": "metered", "featureKey": "tokens", "usagePeriod": {"interval": "MONTH"}, "isSoftLimit": True})
    b.clock.set("2026-01-01T00:01:00Z")
    b.usage(5, "2026-01-01T00:00:30Z", subject="customer_1")
    b.usage(9, "2026-01-01T00:00:40Z", subject="customer_2")
    b.clock.set("2026-01-02T00:00:00Z")
    assert Decimal(str(b.value("customer_1", "tokens")["usage"])) == 5
    assert Decimal(str(b.value("customer_1", "tokens")["usage"])) == 5  # from the cache
    b.ok("PUT", "/api/v1/customers/acme", {"key": "acme", "name": "Acme",
                                           "usageAttribution": {"subjectKeys": ["customer_1", "customer_2"]}})
    assert Decimal(str(b.value("customer_1", "tokens")["usage"])) == 14
    b.ok("PUT", "/api/v1/customers/acme", {"key": "acme", "name": "Acme",
                                           "usageAttribution": {"subjectKeys": ["customer_1"]}})
    assert Decimal(str(b.value("customer_1", "tokens")["usage"])) == 5
