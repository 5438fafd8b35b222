"""Issue 16: every list the served document gives `orderBy`/`order` returns its items in the asked order, for
every `orderBy` value the document allows, ASC and DESC, ties broken by id; without them, in OpenMeter's default
(the field its handler falls back to, ascending). Each list is made so that creation order, id order and the asked
order differ."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from billow.web.query_contract import query_parameters
from tests.catalog.conftest import Billow
from tests.support.billing import PROFILE
from tests.support.catalog import plan_body, published, setup

TIMES = frozenset({"createdAt", "updatedAt", "effectiveAt", "activeFrom", "activeTo", "issuedAt", "period.from"})


def _at(item: Any, path: str) -> Any:
    for part in path.split("."):
        item = item.get(part) if isinstance(item, dict) else None
    return item


def _expected(items: list[dict[str, Any]], path: str, desc: bool, tiebreak: str) -> list[Any]:
    def key(item: dict[str, Any]) -> tuple[Any, ...]:
        value = _at(item, path)
        if value is None:
            return (1, 0, _at(item, tiebreak))
        if path in TIMES:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return (0, value, _at(item, tiebreak))
    return [_at(i, tiebreak) for i in sorted(items, key=key, reverse=desc)]


def _items(out: Any) -> list[dict[str, Any]]:
    return out["items"] if isinstance(out, dict) else out


def _allowed(path: str) -> tuple[str, ...]:
    for name, schema, _ in query_parameters("GET", path):
        if name == "orderBy":
            return tuple(schema["enum"])
    raise AssertionError(f"{path}: no orderBy in the served document")


def _check(b: Billow, path: str, template: str, fields: dict[str, str], default: str, tiebreak: str = "id",
           query: dict[str, str] | None = None) -> None:
    assert set(_allowed(template)) == set(fields), (template, _allowed(template))
    base = _items(b.ok("GET", path, query=query))
    assert len(base) >= 3, (path, base)
    for order_by, field in fields.items():
        for order in ("ASC", "DESC"):
            got = _items(b.ok("GET", path, query={**(query or {}), "orderBy": order_by, "order": order}))
            ids = [_at(i, tiebreak) for i in got]
            assert sorted(ids) == sorted(_at(i, tiebreak) for i in base), (path, order_by)
            assert ids == _expected(got, field, order == "DESC", tiebreak), (path, order_by, order, json.dumps(got)[:600])
    assert [_at(i, tiebreak) for i in base] == _expected(base, fields[default], False, tiebreak), (path, "default")
    desc = _items(b.ok("GET", path, query={**(query or {}), "order": "DESC"}))
    assert [_at(i, tiebreak) for i in desc] == _expected(base, fields[default], True, tiebreak), (path, "default DESC")


def _tick(b: Billow, n: int) -> None:
    b.clock.set(f"2026-01-01T00:0{n}:00Z")


@pytest.mark.parametrize("billow", ["memory"], indirect=True)
def test_meters_customers_features_in_the_asked_order(billow: Billow) -> None:
    b = billow
    for n, (slug, agg, name) in enumerate([("zeta", "COUNT", "Beta"), ("alpha", "MAX", "Zulu")], 1):
        _tick(b, n)
        body: dict[str, Any] = {"slug": slug, "name": name, "eventType": slug, "aggregation": agg}
        if agg != "COUNT":
            body["valueProperty"] = "$.v"
        b.ok("POST", "/api/v1/meters", body)
    _check(b, "/api/v1/meters", "/api/v1/meters", {"key": "slug", "name": "name", "aggregation": "aggregation",
                                                   "createdAt": "createdAt", "updatedAt": "updatedAt"}, "key")
    for n, name in enumerate(["Zed", "Amy", "Mia"], 1):
        _tick(b, n)
        b.ok("POST", "/api/v1/customers", {"key": f"c{n}", "name": name,
                                           "usageAttribution": {"subjectKeys": [f"s{n}"]}})
    _check(b, "/api/v1/customers", "/api/v1/customers", {"id": "id", "name": "name", "createdAt": "createdAt"}, "name")
    for n, (key, name) in enumerate([("zz", "Alpha"), ("aa", "Zulu"), ("mm", "Mike")], 1):
        _tick(b, n)
        b.ok("POST", "/api/v1/features", {"key": key, "name": name})
    _check(b, "/api/v1/features", "/api/v1/features", {"id": "id", "key": "key", "name": "name",
                                                       "createdAt": "createdAt", "updatedAt": "updatedAt"}, "key")


@pytest.mark.parametrize("billow", ["memory"], indirect=True)
def test_entitlements_and_grants_in_the_asked_order(billow: Billow) -> None:
    b = billow
    b.ok("POST", "/api/v1/features", {"key": "tokens", "name": "Tokens", "meterSlug": "tokens"})
    for key in ["zz", "aa", "mm"]:
        b.ok("POST", "/api/v1/features", {"key": key, "name": key})
    for n, key in enumerate(["mm", "zz", "aa"], 1):
        _tick(b, n)
        b.ok("POST", "/api/v1/subjects/customer_1/entitlements", {"type": "boolean", "featureKey": key})
    _tick(b, 4)
    ent = b.ok("POST", "/api/v1/subjects/customer_1/entitlements",
               {"type": "metered", "featureKey": "tokens", "usagePeriod": {"interval": "MONTH"}})
    _check(b, "/api/v1/entitlements", "/api/v1/entitlements", {"createdAt": "createdAt", "updatedAt": "updatedAt"},
           "createdAt")
    for n, effective in enumerate(["2026-01-01T00:09:00Z", "2026-01-01T00:07:00Z", "2026-01-01T00:08:00Z"], 5):
        _tick(b, n)
        b.ok("POST", f"/api/v1/subjects/customer_1/entitlements/{ent['id']}/grants",
             {"amount": 10 * n, "effectiveAt": effective, "expiration": {"duration": "MONTH", "count": 1}})
    b.clock.set("2026-01-01T00:10:00Z")
    grants = {"id": "id", "createdAt": "createdAt", "updatedAt": "updatedAt"}
    base = _items(b.ok("GET", "/api/v1/grants"))
    assert [g["id"] for g in base] == _expected(base, "effectiveAt", False, "id")  # OpenMeter's default: effectiveAt
    for order_by in _allowed("/api/v1/grants"):
        for order in ("ASC", "DESC"):
            got = _items(b.ok("GET", "/api/v1/grants", query={"orderBy": order_by, "order": order}))
            assert [g["id"] for g in got] == _expected(got, order_by, order == "DESC", "id"), (order_by, order)
    _check(b, f"/api/v1/subjects/customer_1/entitlements/{ent['id']}/grants",
           "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/grants", grants, "updatedAt")


@pytest.mark.parametrize("billow", ["memory"], indirect=True)
def test_plans_addons_plan_addons_and_profiles_in_the_asked_order(billow: Billow) -> None:
    b = billow
    setup(b)
    versioned = {"id": "id", "key": "key", "version": "version", "created_at": "createdAt", "updated_at": "updatedAt"}
    drafts = {}
    for n, key in enumerate(["zplan", "aplan", "mplan"], 1):
        _tick(b, n)
        drafts[key] = b.ok("POST", "/api/v1/plans", plan_body(key, "10"))
    _tick(b, 4)
    b.ok("POST", f"/api/v1/plans/{drafts['aplan']['id']}/publish")
    b.ok("POST", "/api/v1/plans", plan_body("aplan", "10"))  # its version 2
    _check(b, "/api/v1/plans", "/api/v1/plans", versioned, "id")
    addons = []
    for n, key in enumerate(["zadd", "aadd", "madd"], 5):
        _tick(b, n)
        draft = b.ok("POST", "/api/v1/addons", {
            "key": key, "name": key, "currency": "USD", "instanceType": "single",
            "rateCards": [{"type": "flat_fee", "key": "fee", "name": "Fee", "billingCadence": "P1M",
                           "price": {"type": "flat", "amount": "1"}}]})
        addons.append(b.ok("POST", f"/api/v1/addons/{draft['id']}/publish"))
    _check(b, "/api/v1/addons", "/api/v1/addons", versioned, "id")
    plan = b.ok("POST", "/api/v1/plans", plan_body("hosting", "10"))
    for n, addon in enumerate(reversed(addons), 1):
        b.clock.set(f"2026-01-01T01:0{n}:00Z")
        b.ok("POST", f"/api/v1/plans/{plan['id']}/addons", {"addonId": addon["id"], "fromPlanPhase": "default"})
    _check(b, f"/api/v1/plans/{plan['id']}/addons", "/api/v1/plans/{planId}/addons",
           {"id": "addon.id", "key": "addon.key", "version": "addon.version", "created_at": "createdAt",
            "updated_at": "updatedAt"}, "id", tiebreak="addon.id")
    for n, name in enumerate(["Zurich", "Austin", "Mila"], 1):
        b.clock.set(f"2026-01-01T02:0{n}:00Z")
        b.ok("POST", "/api/v1/billing/profiles", {**PROFILE, "name": name, "default": n == 2})
    _check(b, "/api/v1/billing/profiles", "/api/v1/billing/profiles",
           {"createdAt": "createdAt", "updatedAt": "updatedAt", "default": "default", "name": "name"}, "createdAt")


@pytest.mark.parametrize("billow", ["memory"], indirect=True)
def test_invoices_and_customer_subscriptions_in_the_asked_order(billow: Billow) -> None:
    b = billow
    setup(b)
    b.ok("POST", "/api/v1/billing/profiles", {**PROFILE, "workflow": {"invoicing": {"autoAdvance": False}}})
    made = []
    for n, (name, month) in enumerate([("Zed", "03"), ("Amy", "01"), ("Mia", "02")], 1):
        b.clock.set(f"2026-04-0{n}T00:00:00Z")
        cust = b.ok("POST", "/api/v1/customers", {"key": f"k{n}", "name": name, "currency": "USD",
                                                  "usageAttribution": {"subjectKeys": [f"sub{n}"]}})
        b.ok("POST", f"/api/v1/billing/customers/{cust['id']}/invoices/pending-lines", {"currency": "USD", "lines": [{
            "name": "Setup", "period": {"from": f"2026-{month}-01T00:00:00Z", "to": f"2026-{month}-02T00:00:00Z"},
            "invoiceAt": f"2026-{month}-02T00:00:00Z", "price": {"type": "flat", "amount": str(n)}}]})
        (inv,) = b.ok("POST", "/api/v1/billing/invoices/invoice", {"customerId": cust["id"]})
        made.append(inv)
    b.clock.set("2026-04-05T00:00:00Z")
    b.ok("POST", f"/api/v1/billing/invoices/{made[2]['id']}/approve")  # Mia's: issued (issuedAt), the others drafts
    b.clock.set("2026-04-06T00:00:00Z")
    b.ok("POST", f"/api/v1/billing/invoices/{made[0]['id']}/approve")
    _check(b, "/api/v1/billing/invoices", "/api/v1/billing/invoices",
           {"customer.name": "customer.name", "issuedAt": "issuedAt", "status": "statusDetails.extendedStatus",
            "createdAt": "createdAt",
            "updatedAt": "updatedAt", "periodStart": "period.from"}, "createdAt")
    # a customer's subscriptions one after another: two that end (activeTo), the last without end (null: last
    # ascending, first descending)
    published(b, plan_body("basic", "10"))
    acme = "acme"
    b.clock.set("2026-05-01T00:00:00Z")
    first = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": acme,
                                                   "timing": "2026-06-01T00:00:00Z"})
    b.ok("POST", f"/api/v1/subscriptions/{first['id']}/cancel", {"timing": "2026-07-01T00:00:00Z"})
    second = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": acme,
                                                    "timing": "2026-07-01T00:00:00Z"})
    b.ok("POST", f"/api/v1/subscriptions/{second['id']}/cancel", {"timing": "2026-08-01T00:00:00Z"})
    b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": acme,
                                           "timing": "2026-08-01T00:00:00Z"})
    _check(b, f"/api/v1/customers/{acme}/subscriptions", "/api/v1/customers/{customerIdOrKey}/subscriptions",
           {"activeFrom": "activeFrom", "activeTo": "activeTo"}, "activeFrom")
