"""OpenMeter's v2 entitlement API (/api/v2/customers/{c}/entitlements..., /api/v2/entitlements, /api/v2/grants),
the paths both official SDKs use by default, against `billow serve`: driven through the unmodified `openmeter`
Python client's v2 operations, and over plain HTTP for the error cases (problem+json naming the field)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from corehttp.exceptions import ResourceNotFoundError
from openmeter import Client

from tests.conftest import event
from tests.e2e.conftest import Server


def _setup(server: Server, prefix: str) -> tuple[Client, dict[str, Any], dt.datetime]:
    client = Client(endpoint=server.url)
    client.meters.create({"slug": f"{prefix}_m", "eventType": f"{prefix}_call", "aggregation": "SUM",
                          "valueProperty": "$.cost"})
    client.features.create({"key": f"{prefix}_credits", "name": "Credits", "meterSlug": f"{prefix}_m"})
    client.features.create({"key": f"{prefix}_flag", "name": "Flag"})
    client.subjects.upsert([{"key": f"{prefix}_subject"}])
    customer = client.customers.create({"name": "V2 Customer", "key": f"{prefix}_cust",
                                        "usageAttribution": {"subjectKeys": [f"{prefix}_subject"]}})
    start = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) - dt.timedelta(hours=1)
    return client, {"id": customer.id, "key": f"{prefix}_cust"}, start


def test_v2_customer_entitlements_through_the_openmeter_client(server: Server) -> None:
    client, cust, start = _setup(server, "v2a")
    ent = client.customer_entitlements_v2.post(cust["key"], {
        "type": "metered", "featureKey": "v2a_credits", "measureUsageFrom": start.isoformat(),
        "usagePeriod": {"interval": "MONTH", "anchor": start.isoformat()},
        "grants": [{"amount": 10.5, "priority": 1, "effectiveAt": start.isoformat(),
                    "expiration": {"duration": "MONTH", "count": 1}}]})
    # The v2 shape: the customer, not the subject.
    assert (ent["customerId"], ent["customerKey"], ent["featureKey"], ent["type"]) == (
        cust["id"], cust["key"], "v2a_credits", "metered")
    assert "subjectKey" not in ent
    # A grant without an expiration never expires (v2); its rollover ceiling defaults to its amount.
    grant = client.customer_entitlement_v2.create_customer_entitlement_grant(cust["id"], "v2a_credits", {
        "amount": 100, "priority": 2, "effectiveAt": start.isoformat(), "annotations": {"source": "sdk"}})
    assert (grant.amount, grant.entitlement_id, grant.expires_at, grant.max_rollover_amount) == (100, ent["id"], None, 100)
    assert grant.annotations == {"source": "sdk"}
    client.events.ingest_events([
        event("v2a1", type="v2a_call", subject="v2a_subject", time=(start + dt.timedelta(minutes=5)).isoformat(), cost="7.25"),
        event("v2a2", type="v2a_call", subject="v2a_subject", time=(start + dt.timedelta(minutes=9)).isoformat(), cost=5),
    ])
    value = client.customer_entitlement_v2.get_customer_entitlement_value(cust["key"], "v2a_credits")
    assert (value.has_access, value.balance, value.usage, value.overage) == (True, 98.25, 12.25, 0)
    by_id = client.customer_entitlement_v2.get_customer_entitlement_value(cust["id"], ent["id"])
    assert by_id.balance == 98.25

    grants = client.customer_entitlement_v2.get_grants(cust["key"], "v2a_credits")
    assert grants.total_count == 2 and sorted(g.amount for g in grants["items"]) == [10.5, 100]
    history = client.customer_entitlement_v2.get_customer_entitlement_history(
        cust["key"], "v2a_credits", window_size="HOUR", from_parameter=start)
    assert sum(w.usage for w in history.windowed_history) == 12.25

    flag = client.customer_entitlements_v2.post(cust["key"], {"type": "boolean", "featureKey": "v2a_flag"})
    listed = client.customer_entitlements_v2.list(cust["key"])
    assert listed.total_count == 2 and {e["id"] for e in listed["items"]} == {ent["id"], flag["id"]}
    got = client.customer_entitlements_v2.get(cust["key"], "v2a_credits")
    assert got["id"] == ent["id"] and got["currentUsagePeriod"]["from"] == start.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert client.entitlements_v2.get(flag["id"])["customerKey"] == cust["key"]
    page = client.entitlements_v2.list(customer_keys=[cust["key"]], entitlement_type=["boolean"])
    assert [e["id"] for e in page["items"]] == [flag["id"]] and page.total_count == 1
    assert client.entitlements_v2.list(customer_ids=[cust["id"]], feature=["v2a_credits"]).total_count == 1
    all_grants = client.grants_v2.list(customer=[cust["key"]])
    assert all_grants.total_count == 2 and {g.entitlement_id for g in all_grants["items"]} == {ent["id"]}

    # Reset: usage starts again from zero; the never-expiring grant rolls its 98.25 over (ceiling = amount).
    client.customer_entitlement_v2.reset_customer_entitlement(cust["key"], "v2a_credits", {})
    after = client.customer_entitlement_v2.get_customer_entitlement_value(cust["key"], "v2a_credits")
    assert (after.balance, after.usage) == (98.25, 0)

    # Override replaces the entitlement; delete removes it; both by feature key.
    new_flag = client.customer_entitlements_v2.override(cust["key"], "v2a_flag", {"type": "boolean", "featureKey": "v2a_flag"})
    assert new_flag["id"] != flag["id"]
    assert client.customer_entitlements_v2.get(cust["key"], "v2a_flag")["id"] == new_flag["id"]
    client.customer_entitlements_v2.delete(cust["key"], "v2a_flag")
    with pytest.raises(ResourceNotFoundError):
        client.customer_entitlements_v2.get(cust["key"], "v2a_flag")
    assert [e["id"] for e in client.customer_entitlements_v2.list(cust["key"])["items"]] == [ent["id"]]


def test_v2_issue_after_reset_and_pagination(server: Server) -> None:
    client, cust, start = _setup(server, "v2b")
    ent = client.customer_entitlements_v2.post(cust["key"], {
        "type": "metered", "featureKey": "v2b_credits", "usagePeriod": {"interval": "DAY"},
        "issue": {"amount": 3, "priority": 5}})
    assert ent["issue"] == {"amount": 3, "priority": 5}
    value = client.customer_entitlement_v2.get_customer_entitlement_value(cust["key"], "v2b_credits")
    assert (value.balance, value.usage) == (3, 0)
    client.customer_entitlements_v2.post(cust["key"], {"type": "boolean", "featureKey": "v2b_flag"})
    first = client.customer_entitlements_v2.list(cust["key"], page=1, page_size=1)
    second = client.customer_entitlements_v2.list(cust["key"], page=2, page_size=1)
    assert (first.total_count, first.page, first.page_size, len(first["items"])) == (2, 1, 1, 1)
    assert first["items"][0]["id"] == ent["id"] and second["items"][0]["featureKey"] == "v2b_flag"


def _problem(server: Server, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    status, headers, doc = server.request(method, path, body)
    assert headers["Content-Type"].startswith("application/problem+json"), (status, doc)
    return status, doc


def test_v2_errors_are_problems_naming_the_field(server: Server) -> None:
    _, cust, start = _setup(server, "v2c")
    base = f"/api/v2/customers/{cust['key']}/entitlements"
    metered = {"type": "metered", "featureKey": "v2c_credits", "usagePeriod": {"interval": "MONTH"}}
    # Unknown customer, unknown feature: 404.
    for method, path, body in (("POST", "/api/v2/customers/nobody/entitlements", metered),
                               ("GET", "/api/v2/customers/nobody/entitlements", None),
                               ("GET", "/api/v2/customers/nobody/entitlements/v2c_credits/value", None),
                               ("GET", f"{base}/v2c_credits", None),
                               ("GET", f"{base}/v2c_credits/value", None),
                               ("POST", f"{base}/v2c_credits/grants", {"amount": 1, "effectiveAt": start.isoformat()}),
                               ("POST", base, {**metered, "featureKey": "no_such_feature"}),
                               ("GET", "/api/v2/entitlements/01J0000000000000000000000A", None),
                               ("GET", "/api/v2/grants?customer=nobody", None)):
        status, doc = _problem(server, method, path, body)
        assert status == 404, (method, path, doc)
    status, _, first = server.request("POST", base, metered)
    assert status == 201, first
    # A second entitlement of the same feature: 409 naming the one in the way.
    status, doc = _problem(server, "POST", base, metered)
    assert status == 409 and doc["extensions"]["conflictingEntityId"] == first["id"], doc
    # Bad fields: 400 naming each.
    cases = [
        ({"type": "nope", "featureKey": "v2c_credits"}, "type"),
        ({"type": "metered", "featureKey": "v2c_flag", "usagePeriod": {"interval": "MONTH"}}, "featureKey"),
        ({**metered, "usagePeriod": {"interval": "FORTNIGHT"}}, "usagePeriod.interval"),
        ({**metered, "issue": {"priority": 2}}, "issue.amount"),
        ({**metered, "issue": {"amount": 1}, "grants": [{"amount": 1, "effectiveAt": start.isoformat()}]}, "grants"),
        ({**metered, "grants": [{"amount": -1, "effectiveAt": start.isoformat()}]}, "grants[0].amount"),
        ({**metered, "grants": {"amount": 1}}, "grants"),
    ]
    for body, field in cases:
        status, doc = _problem(server, "POST", f"/api/v2/customers/{cust['id']}/entitlements", body)
        assert status == 400 and field in [e["field"] for e in doc["validationErrors"]], (body, doc)
    grants = f"{base}/v2c_credits/grants"
    later = (start + dt.timedelta(hours=2)).isoformat()  # inside the current usage period (anchored at creation)
    for body, field in (({"effectiveAt": later}, "amount"), ({"amount": "x", "effectiveAt": later}, "amount"),
                        ({"amount": 1}, "effectiveAt"), ({"amount": 1, "effectiveAt": start.isoformat()}, "effectiveAt"),
                        ({"amount": 1, "effectiveAt": later, "expiration": {"duration": "EON", "count": 1}},
                         "expiration.duration"),
                        ({"amount": 1, "effectiveAt": later, "annotations": "x"}, "annotations")):
        status, doc = _problem(server, "POST", grants, body)
        assert status == 400 and field in [e["field"] for e in doc["validationErrors"]], (body, doc)
    for path, field in ((f"{base}?page=0", "page"), (f"{base}?pageSize=1001", "pageSize"),
                        ("/api/v2/entitlements?entitlementType=INVALID", "entitlementType"),
                        ("/api/v2/entitlements?orderBy=name", "orderBy"),
                        ("/api/v2/grants?limit=0", "limit"), (f"{base}/v2c_credits/history", "windowSize"),
                        (f"{base}/v2c_credits/value?time=yesterday", "time")):
        status, doc = _problem(server, "GET", path)
        assert status == 400 and field in [e["field"] for e in doc["validationErrors"]], (path, doc)
