"""Entitlements over HTTP against `billow serve`, read back with the unmodified `openmeter` client: features,
entitlements, grants and a customer's entitlement value deserialise into its models with Billow's numbers.
(The client's entitlement-creating subject operations are shadowed by its meters' `subjects` attribute, so
those calls go over plain HTTP.)"""

from __future__ import annotations

import datetime as dt

from openmeter import Client

from tests.conftest import event
from tests.e2e.conftest import Server


def test_prepaid_credits_through_the_openmeter_client(server: Server) -> None:
    client = Client(endpoint=server.url)
    client.meters.create({"slug": "om_credits", "eventType": "om_call", "aggregation": "SUM", "valueProperty": "$.cost"})
    feature = client.features.create({"key": "om_api_credits", "name": "API credits", "meterSlug": "om_credits"})
    assert feature.meter_slug == "om_credits" and feature.id
    client.subjects.upsert([{"key": "om_customer"}])
    client.customers.create({"name": "OM Customer", "key": "om_cust", "usageAttribution": {"subjectKeys": ["om_customer"]}})
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    start = now - dt.timedelta(hours=1)
    status, _, ent = server.request("POST", "/api/v1/subjects/om_customer/entitlements", {
        "type": "metered", "featureKey": "om_api_credits", "measureUsageFrom": start.isoformat(),
        "usagePeriod": {"interval": "MONTH", "anchor": start.isoformat()}})
    assert status == 201, ent
    for amount, priority in (("10.50", 1), ("100", 2)):
        status, _, grant = server.request("POST", "/api/v1/subjects/om_customer/entitlements/om_api_credits/grants", {
            "amount": amount, "priority": priority, "effectiveAt": start.isoformat(),
            "expiration": {"duration": "MONTH", "count": 1}})
        assert status == 201, grant
    client.events.ingest_events([
        event("c1", type="om_call", subject="om_customer", time=(start + dt.timedelta(minutes=5)).isoformat(), cost="7.25"),
        event("c2", type="om_call", subject="om_customer", time=(start + dt.timedelta(minutes=9)).isoformat(), cost=5),
    ])
    value = client.customer_entitlement.get_customer_entitlement_value("om_cust", "om_api_credits")
    assert (value.has_access, value.balance, value.usage, value.overage) == (True, 98.25, 12.25, 0)
    # Entitlement is a oneOf: the client hands those back as plain JSON objects.
    (listed,) = [e for e in client.entitlements.list() if e["id"] == ent["id"]]
    assert (listed["featureKey"], listed["type"], listed["currentUsagePeriod"]["from"]) == (
        "om_api_credits", "metered", start.strftime("%Y-%m-%dT%H:%M:%SZ"))
    grants = [g for g in client.grants.list() if g.entitlement_id == ent["id"]]
    assert sorted(g.amount for g in grants) == [10.5, 100]
