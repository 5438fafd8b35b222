"""OpenMeter's remaining operations (issue 16) through the unmodified `openmeter` Python client against `billow serve`:
currencies, debug metrics, a meter's group-by values, v2 events (filter, cursor), a customer's access, the customer
overrides list, invoice simulation, snapshot-quantities and tax recalculation, subscription edit, migrate and
restore, and a plan add-on update."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from corehttp.exceptions import HttpResponseError
from openmeter import Client

from tests.conftest import event
from tests.e2e.conftest import Server

FEE = {"type": "flat_fee", "key": "base", "name": "Base fee", "billingCadence": "P1M",
       "price": {"type": "flat", "amount": "10", "paymentTerm": "in_advance"}}


def _ok(server: Server, method: str, path: str, body: Any = None) -> Any:
    status, _, out = server.request(method, path, body)
    assert status in (200, 201, 204), (method, path, status, out)
    return out


def test_reads_through_the_openmeter_client(server: Server) -> None:
    client = Client(endpoint=server.url)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    at = max(now - dt.timedelta(seconds=5), now.replace(hour=0, minute=0, second=0))  # today, in the past
    client.meters.create({"slug": "rx_tokens", "eventType": "rx_prompt", "aggregation": "SUM",
                          "valueProperty": "$.tokens", "groupBy": {"model": "$.model"}})
    client.features.create({"key": "rx_sso", "name": "SSO"})
    client.subjects.upsert([{"key": "rx_subject"}])
    cust = client.customers.create({"name": "RX", "key": "rx_cust", "usageAttribution": {"subjectKeys": ["rx_subject"]}})
    client.events.ingest_events([
        event("rx1", type="rx_prompt", subject="rx_subject", time=at.isoformat(), tokens=5, model="gpt"),
        event("rx2", type="rx_prompt", subject="rx_subject", time=at.isoformat(), tokens=7, model="claude")])

    usd = next(c for c in client.currencies.list_currencies() if c.code == "USD")
    assert (usd.name, usd.symbol, usd.subunits) == ("US Dollar", "$", 2)
    assert client.meters.list_group_by_values("rx_tokens", "model") == ["claude", "gpt"]
    assert 'openmeter_events_total{subject="rx_subject"} 2.0' in client.debug.metrics().splitlines()

    flt = {"subject": {"$eq": "rx_subject"}}
    # The client follows nextCursor page by page (limit 1) until a page is empty.
    paged = list(client.events_v2.list(limit=1, filter=flt))
    assert [(it["event"]["id"], it["customerId"]) for it in paged] == [("rx1", cust.id), ("rx2", cust.id)]
    assert list(client.events_v2.list(filter={"subject": {"$eq": "nobody"}})) == []

    _ok(server, "POST", "/api/v1/subjects/rx_subject/entitlements", {"type": "boolean", "featureKey": "rx_sso"})
    access = client.customer.get_customer_access("rx_cust")
    assert dict(access["entitlements"]) == {"rx_sso": {"hasAccess": True}}


def test_billing_and_subscriptions_through_the_openmeter_client(server: Server) -> None:
    client = Client(endpoint=server.url)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    if not any(p["default"] for p in _ok(server, "GET", "/api/v1/billing/profiles")["items"]):
        _ok(server, "POST", "/api/v1/billing/profiles", {
            "name": "Default", "default": True, "supplier": {"name": "Billow Inc.", "addresses": [{"country": "DE"}]},
            "apps": {"tax": "sandbox", "invoicing": "sandbox", "payment": "sandbox"}})
    cust = client.customers.create({"name": "BX", "key": "bx_cust", "currency": "USD",
                                    "usageAttribution": {"subjectKeys": ["bx_subject"]}})
    listed = client.customer_overrides.list(customer_key="bx_cust", expand=["customer"])
    assert [(it["customer"]["id"], "customerOverride" in it) for it in listed["items"]] == [(cust.id, False)]

    period = {"from": (now - dt.timedelta(days=30)).isoformat(), "to": now.isoformat()}
    sim = client.customer_invoice.simulate_invoice(cust.id, {"currency": "USD", "lines": [
        {"name": "Setup", "period": period, "invoiceAt": now.isoformat(), "quantity": "1",
         "rateCard": {"price": {"type": "flat", "amount": "5", "paymentTerm": "in_arrears"}}},
        {"name": "Calls", "period": period, "invoiceAt": now.isoformat(), "quantity": "1500",
         "rateCard": {"price": {"type": "unit", "amount": "0.01"}}}]})
    assert Decimal(sim["totals"]["total"]) == Decimal("20.00")
    assert _ok(server, "GET", f"/api/v1/billing/invoices?customers={cust.id}")["items"] == []  # nothing written

    # A draft (auto-advance off for this customer): snapshot-quantities and tax recalculation answer it.
    _ok(server, "PUT", f"/api/v1/billing/customers/{cust.id}", {"workflow": {"invoicing": {"autoAdvance": False}}})
    plan = _ok(server, "POST", "/api/v1/plans", {"key": "bx_plan", "name": "BX", "currency": "USD",
                                                 "billingCadence": "P1M", "phases": [
                                                     {"key": "default", "name": "Default", "rateCards": [FEE]}]})
    _ok(server, "POST", f"/api/v1/plans/{plan['id']}/publish")
    sub = client.subscriptions.create({"plan": {"key": "bx_plan"}, "customerId": cust.id})
    (draft,) = _ok(server, "POST", "/api/v1/billing/invoices/invoice", {"customerId": cust.id})
    assert client.invoice.snapshot_quantities_action(draft["id"])["status"] == "draft"
    assert client.invoice.recalculate_tax_action(draft["id"])["totals"]["taxesTotal"] == "0"

    edited = client.subscriptions.edit(sub.id, {"customizations": [
        {"op": "add_item", "phaseKey": "default", "rateCard": {**FEE, "key": "support", "name": "Support"}}]})
    assert edited["id"] == sub.id
    items = _ok(server, "GET", f"/api/v1/subscriptions/{sub.id}")["phases"][0]["itemTimelines"]
    assert sorted(items) == ["base", "support"]
    with pytest.raises(HttpResponseError) as refused:
        client.subscriptions.edit(sub.id, {"customizations": [{"op": "remove_phase", "phaseKey": "default",
                                                               "shift": "next"}]})
    assert refused.value.status_code == 400

    v2 = _ok(server, "POST", "/api/v1/plans/bx_plan/next")
    _ok(server, "POST", f"/api/v1/plans/{v2['id']}/publish")
    moved = client.subscriptions.migrate(sub.id, {"timing": "next_billing_cycle"})
    assert moved["next"]["plan"]["version"] == 2 and moved["current"]["status"] == "canceled"
    restored = client.subscriptions.restore(sub.id)
    assert (restored["status"], restored.get("activeTo")) == ("active", None)
    assert server.request("GET", f"/api/v1/subscriptions/{moved['next']['id']}")[0] == 404

    addon = _ok(server, "POST", "/api/v1/addons", {"key": "bx_seats", "name": "Seats", "currency": "USD",
                                                   "instanceType": "multiple", "rateCards": [{**FEE, "key": "seat"}]})
    _ok(server, "POST", f"/api/v1/addons/{addon['id']}/publish")
    v3 = _ok(server, "POST", "/api/v1/plans/bx_plan/next")
    pa = _ok(server, "POST", f"/api/v1/plans/{v3['id']}/addons", {"addonId": addon["id"], "fromPlanPhase": "default"})
    updated = client.plan_addons.update(v3["id"], pa["id"], {"fromPlanPhase": "default", "maxQuantity": 3})
    assert (updated["id"], updated["maxQuantity"]) == (pa["id"], 3)
