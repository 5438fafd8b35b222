"""API keys and tenant isolation against `billow serve` with `auth: keys`: keys made with the `billow keys`
CLI, scopes per route, revocation, and two tenants that can never see or touch each other's data."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import event
from tests.e2e.conftest import Server
from tests.support.keys import make_key

BILLOW = str(Path(sys.executable).with_name("billow"))


class Tenant:
    def __init__(self, server: Server, token: str) -> None:
        self.server, self.token = server, token

    def call(self, method: str, path: str, body: Any = None, ctype: str = "application/json") -> tuple[int, Any]:
        status, _, out = self.server.request(method, path, body, ctype, headers={"Authorization": f"Bearer {self.token}"})
        return status, out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str], Path, Path]]:
    tmp = tmp_path_factory.mktemp("auth")
    config = tmp / "billow.yaml"
    config.write_text("auth: keys\n")
    data = tmp / "data"
    tokens = {}
    for name, ns, scopes in (("a_admin", "tenant_a", ["admin"]), ("b_admin", "tenant_b", ["admin"]),
                             ("a_ingest", "tenant_a", ["ingest"]), ("a_read", "tenant_a", ["read"])):
        key_id, tokens[name] = make_key(data, config, ns, *scopes)
        tokens[name + "_id"] = key_id
    srv = Server(data, config).start()
    yield srv, tokens, data, config
    srv.stop()


def test_every_route_needs_a_valid_key(served: tuple[Server, dict[str, str], Path, Path]) -> None:
    srv = served[0]
    assert srv.request("GET", "/healthz")[0] == 200
    assert srv.request("GET", "/api/v1/openapi.json")[0] == 200
    for method, path in (("GET", "/api/v1/meters"), ("POST", "/api/v1/events"), ("GET", "/api/v1/features"),
                         ("GET", "/api/v1/entitlements"), ("DELETE", "/api/v1/meters/x")):
        status, hdrs, body = srv.request(method, path, [] if method == "POST" else None)
        assert status == 401 and hdrs["Content-Type"] == "application/problem+json", (method, path, body)
    bad = Tenant(srv, "bk_01ARZ3NDEKTSV4RRFFQ69G5FAV_" + "x" * 43)
    assert bad.call("GET", "/api/v1/meters")[0] == 401
    assert Tenant(srv, "not-a-key").call("GET", "/api/v1/meters")[0] == 401


def test_scopes(served: tuple[Server, dict[str, str], Path, Path]) -> None:
    srv, tokens = served[0], served[1]
    ingest, read = Tenant(srv, tokens["a_ingest"]), Tenant(srv, tokens["a_read"])
    assert ingest.call("POST", "/api/v1/events", [event("s1", type="scoped")])[0] == 204
    status, prob = ingest.call("GET", "/api/v1/meters")
    assert status == 403 and "read" in prob["detail"]
    assert read.call("GET", "/api/v1/meters")[0] == 200
    assert read.call("POST", "/api/v1/meters", {"slug": "nope", "eventType": "e", "aggregation": "COUNT"})[0] == 403
    assert read.call("POST", "/api/v1/events", [event("s2")])[0] == 403


def test_revoked_key_is_refused(served: tuple[Server, dict[str, str], Path, Path]) -> None:
    srv, tokens, data, config = served
    key_id, token = make_key(data, config, "tenant_a", "read")
    t = Tenant(srv, token)
    assert t.call("GET", "/api/v1/meters")[0] == 200
    subprocess.run([BILLOW, "keys", "--data-dir", str(data), "--config", str(config), "revoke", key_id], check=True,
                   capture_output=True)
    assert t.call("GET", "/api/v1/meters")[0] == 401
    listed = subprocess.run([BILLOW, "keys", "--data-dir", str(data), "--config", str(config), "list"], check=True,
                            capture_output=True, text=True).stdout
    assert key_id in listed and "revoked" in listed and token not in listed


def test_tenants_never_see_each_other(served: tuple[Server, dict[str, str], Path, Path]) -> None:
    srv, tokens = served[0], served[1]
    a, b = Tenant(srv, tokens["a_admin"]), Tenant(srv, tokens["b_admin"])
    status, meter = a.call("POST", "/api/v1/meters", {"slug": "tokens", "eventType": "prompt", "aggregation": "SUM",
                                                      "valueProperty": "$.tokens"})
    assert status == 201
    assert a.call("POST", "/api/v1/events", [event("t1", type="prompt", subject="alice", time=None, tokens=5)],
                  "application/cloudevents-batch+json")[0] == 204
    assert a.call("POST", "/api/v1/subjects", [{"key": "alice"}])[0] == 200
    status, cust = a.call("POST", "/api/v1/customers", {"name": "Alice Inc", "key": "alice_inc",
                                                        "usageAttribution": {"subjectKeys": ["alice"]}})
    assert status == 201
    status, feature = a.call("POST", "/api/v1/features", {"key": "ai", "name": "AI", "meterSlug": "tokens"})
    assert status == 201
    status, ent = a.call("POST", "/api/v1/subjects/alice/entitlements", {
        "type": "metered", "featureKey": "ai", "usagePeriod": {"interval": "MONTH"}})
    assert status == 201
    status, grant = a.call("POST", "/api/v1/subjects/alice/entitlements/ai/grants", {
        "amount": 100, "effectiveAt": ent["currentUsagePeriod"]["from"], "expiration": {"duration": "DAY", "count": 1}})
    assert status == 201

    # Tenant B: every read of A's resources is empty or 404, every write to them 404.
    empty = ["/api/v1/meters", "/api/v1/subjects", "/api/v1/features", "/api/v1/entitlements", "/api/v1/grants",
             "/api/v1/events"]
    for path in empty:
        status, body = b.call("GET", path)
        assert status == 200 and body == [], (path, body)
    assert b.call("GET", "/api/v1/customers")[1]["items"] == []
    for path in (f"/api/v1/meters/{meter['id']}", "/api/v1/meters/tokens", "/api/v1/meters/tokens/query",
                 "/api/v1/subjects/alice", f"/api/v1/customers/{cust['id']}", "/api/v1/customers/alice_inc",
                 f"/api/v1/features/{feature['id']}", f"/api/v1/entitlements/{ent['id']}",
                 "/api/v1/subjects/alice/entitlements", "/api/v1/subjects/alice/entitlements/ai/value",
                 f"/api/v1/subjects/alice/entitlements/{ent['id']}/history?windowSize=DAY",
                 "/api/v1/customers/alice_inc/entitlements/ai/value"):
        status, body = b.call("GET", path)
        assert status == 404, (path, status, body)
    for method, path in (("DELETE", f"/api/v1/meters/{meter['id']}"), ("DELETE", f"/api/v1/features/{feature['id']}"),
                         ("DELETE", f"/api/v1/grants/{grant['id']}"), ("DELETE", f"/api/v1/customers/{cust['id']}"),
                         ("PUT", f"/api/v1/customers/{cust['id']}"), ("DELETE", "/api/v1/subjects/alice"),
                         ("POST", f"/api/v1/subjects/alice/entitlements/{ent['id']}/reset")):
        status, body = b.call(method, path, {"name": "x"} if method == "PUT" else None)
        assert status == 404, (method, path, status, body)
    # B may use the same names for its own data, and sees only its own usage.
    assert b.call("POST", "/api/v1/meters", {"slug": "tokens", "eventType": "prompt", "aggregation": "SUM",
                                             "valueProperty": "$.tokens"})[0] == 201
    assert b.call("POST", "/api/v1/events", [event("t1", type="prompt", subject="alice", time=None, tokens=7)],
                  "application/cloudevents-batch+json")[0] == 204
    assert [r["value"] for r in b.call("GET", "/api/v1/meters/tokens/query")[1]["data"]] == [7]
    assert [r["value"] for r in a.call("GET", "/api/v1/meters/tokens/query")[1]["data"]] == [5]
    # A's data is untouched by all of B's attempts.
    assert a.call("GET", "/api/v1/subjects/alice/entitlements/ai/value")[1]["balance"] == 95


def test_rate_limit_per_key_answers_429_with_retry_after(tmp_path: Path) -> None:
    config = tmp_path / "billow.yaml"
    config.write_text("auth: keys\nrate_limit_per_key: 2\n")
    _, token = make_key(tmp_path / "data", config, "limited", "read")
    _, other = make_key(tmp_path / "data", config, "limited", "read")
    srv = Server(tmp_path / "data", config).start()
    try:
        statuses = []
        for _ in range(20):
            status, hdrs, body = srv.request("GET", "/api/v1/meters", headers={"Authorization": f"Bearer {token}"})
            statuses.append(status)
            if status == 429:
                assert hdrs["Content-Type"] == "application/problem+json" and int(hdrs["Retry-After"]) >= 1
                assert "rate limit" in body["detail"]
        assert statuses[:4] == [200] * 4 and 429 in statuses  # a burst of twice the rate, then refused
        assert srv.request("GET", "/api/v1/meters", headers={"Authorization": f"Bearer {other}"})[0] == 200
    finally:
        srv.stop()


def test_admin_endpoint_manages_keys_of_its_own_namespace_only(served: tuple[Server, dict[str, str], Path, Path]) -> None:
    srv, tokens = served[0], served[1]
    a, b, read = Tenant(srv, tokens["a_admin"]), Tenant(srv, tokens["b_admin"]), Tenant(srv, tokens["a_read"])
    status, made = a.call("POST", "/api/v1/admin/keys", {"name": "ci ingest", "scopes": ["ingest"]})
    assert status == 201 and made["namespace"] == "tenant_a" and made["token"].startswith("bk_")
    assert read.call("GET", "/api/v1/admin/keys")[0] == 403  # listing keys needs admin
    assert read.call("POST", "/api/v1/admin/keys", {"name": "x", "scopes": ["admin"]})[0] == 403
    listed = a.call("GET", "/api/v1/admin/keys")[1]
    assert made["id"] in {k["id"] for k in listed} and all("token" not in k for k in listed)
    assert {k["namespace"] for k in listed} == {"tenant_a"}
    assert made["id"] not in {k["id"] for k in b.call("GET", "/api/v1/admin/keys")[1]}
    assert b.call("DELETE", f"/api/v1/admin/keys/{made['id']}")[0] == 404  # another tenant's key
    new = Tenant(srv, made["token"])
    assert new.call("POST", "/api/v1/events", [event("adm1", type="x")])[0] == 204
    assert a.call("DELETE", f"/api/v1/admin/keys/{made['id']}")[0] == 204
    assert new.call("POST", "/api/v1/events", [event("adm2", type="x")])[0] == 401
    assert a.call("POST", "/api/v1/admin/keys", {"name": "bad", "scopes": ["root"]})[0] == 400


def test_no_documented_operation_leaks_another_tenants_data(served: tuple[Server, dict[str, str], Path, Path]) -> None:
    """Every operation of the served OpenAPI document, called by tenant B with tenant A's identifiers in every
    path parameter: never a 5xx, and no successful answer carries anything of A's."""
    import json
    from importlib import resources
    from urllib.parse import quote

    srv, tokens = served[0], served[1]
    a, b = Tenant(srv, tokens["a_admin"]), Tenant(srv, tokens["b_admin"])
    assert a.call("POST", "/api/v1/meters", {"slug": "leak_m", "eventType": "leak", "aggregation": "COUNT"})[0] == 201
    assert a.call("POST", "/api/v1/subjects", [{"key": "leak_subject"}])[0] == 200
    assert a.call("POST", "/api/v1/events", [event("leak1", type="leak", subject="leak_subject", time=None)])[0] == 204
    status, _, receipt = srv.request("POST", "/api/v1/events", [event("leak2", type="leak", subject="leak_subject",
                                                                      time=None)], "application/json",
                                     headers={"Authorization": f"Bearer {a.token}", "Prefer": "return=representation"})
    assert status == 200, receipt  # A's ingestion receipt (issue 21)
    _, cust = a.call("POST", "/api/v1/customers", {"name": "Leak Customer", "key": "leak_cust",
                                                   "usageAttribution": {"subjectKeys": ["leak_subject"]}})
    _, feat = a.call("POST", "/api/v1/features", {"key": "leak_f", "name": "Leak", "meterSlug": "leak_m"})
    _, ent = a.call("POST", "/api/v1/subjects/leak_subject/entitlements", {
        "type": "metered", "featureKey": "leak_f", "usagePeriod": {"interval": "DAY"}})
    _, grant = a.call("POST", "/api/v1/subjects/leak_subject/entitlements/leak_f/grants", {
        "amount": 5, "effectiveAt": ent["currentUsagePeriod"]["from"], "expiration": {"duration": "DAY", "count": 1}})
    values = {"meterIdOrSlug": "leak_m", "meterSlug": "leak_m", "subjectIdOrKey": "leak_subject", "customerIdOrKey": cust["id"],
              "featureId": feat["id"], "featureKey": "leak_f", "entitlementId": ent["id"],
              "entitlementIdOrFeatureKey": "leak_f", "grantId": grant["id"], "groupByKey": "leak_key"}
    secrets = {cust["id"], feat["id"], ent["id"], grant["id"], "Leak Customer", "leak_subject", "leak1"}
    # Notifications: a channel, a rule and a (test) event of A's.
    _, chan = a.call("POST", "/api/v1/notification/channels", {"type": "WEBHOOK", "name": "Leak Hook",
                                                                "url": "http://127.0.0.1:9/leak"})
    _, rule = a.call("POST", "/api/v1/notification/rules", {"type": "entitlements.reset", "name": "Leak Rule",
                                                             "channels": [chan["id"]]})
    _, note = a.call("POST", f"/api/v1/notification/rules/{rule['id']}/test")
    values.update(channelId=chan["id"], ruleId=rule["id"], eventId=note["id"])
    secrets |= {chan["id"], rule["id"], note["id"], chan["signingSecret"], "Leak Hook", "Leak Rule"}
    # Catalog: a published plan with an add-on, and a subscription to it with the add-on.
    card = {"type": "flat_fee", "key": "leak_fee", "name": "Leak Fee", "billingCadence": "P1M",
            "price": {"type": "flat", "amount": "1"}}
    _, addon = a.call("POST", "/api/v1/addons", {"key": "leak_addon", "name": "Leak Addon", "currency": "USD",
                                                 "instanceType": "single", "rateCards": [card]})
    a.call("POST", f"/api/v1/addons/{addon['id']}/publish")
    _, plan = a.call("POST", "/api/v1/plans", {"key": "leak_plan", "name": "Leak Plan", "currency": "USD",
                                               "billingCadence": "P1M", "phases": [
                                                   {"key": "only", "name": "Only", "rateCards": [card]}]})
    _, plan_addon = a.call("POST", f"/api/v1/plans/{plan['id']}/addons", {"addonId": addon["id"], "fromPlanPhase": "only"})
    a.call("POST", f"/api/v1/plans/{plan['id']}/publish")
    _, sub = a.call("POST", "/api/v1/subscriptions", {"plan": {"key": "leak_plan"}, "customerId": cust["id"]})
    _, sub_addon = a.call("POST", f"/api/v1/subscriptions/{sub['id']}/addons", {
        "addon": {"id": addon["id"]}, "quantity": 1, "timing": "immediate", "name": "Leak Addon"})
    values.update(planId=plan["id"], planIdOrKey="leak_plan", addonId=addon["id"], planAddonId=plan_addon["id"],
                  subscriptionId=sub["id"], subscriptionAddonId=sub_addon["id"])
    secrets |= {plan["id"], addon["id"], plan_addon["id"], sub["id"], sub_addon["id"], "Leak Plan", "Leak Addon"}
    # Billing: a profile, and the subscription's first invoice.
    _, profile = a.call("POST", "/api/v1/billing/profiles", {"name": "Leak Profile", "supplier": {"name": "Leak Supplier"},
                                                              "apps": {"invoicing": "sandbox", "payment": "sandbox"}})
    _, (invoice,) = a.call("POST", "/api/v1/billing/invoices/invoice", {"customerId": cust["id"]})
    values.update(id=profile["id"], customerId=cust["id"], invoiceId=invoice["id"], lineId=invoice["lines"][0]["id"],
                  receiptId=receipt["id"])
    secrets |= {profile["id"], invoice["id"], invoice["number"], "Leak Supplier", invoice["lines"][0]["id"],
                receipt["id"]}
    # Apps (issue 16): an installed app of A's, and A's customer's data for it.
    _, made = a.call("POST", "/api/v1/marketplace/listings/custom_invoicing/install", {"name": "Leak App",
                                                                                       "createBillingProfile": False})
    a.call("PUT", f"/api/v1/customers/{cust['id']}/apps", [{"type": "custom_invoicing", "id": made["app"]["id"],
                                                            "metadata": {"erp": "leak-erp-ref"}}])
    values.update(type="custom_invoicing", appId=made["app"]["id"])
    secrets |= {made["app"]["id"], "Leak App", "leak-erp-ref"}
    # Billow's own operations: A's admin key, an LLM price override of A's; the documents' format and the static files.
    _, price = a.call("POST", "/api/v1/llm/prices", {"provider": "leakai", "model": "leak-model",
                                                     "inputPerMillionTokens": "1", "outputPerMillionTokens": "2"})
    # ...and a backtest of A's plan (its result names A's customer).
    status, backtest = a.call("POST", "/api/v1/billing/backtests?wait=true", {
        "plan": "leak_plan", "from": "2026-01-01T00:00:00Z", "to": ent["currentUsagePeriod"]["from"]})
    assert status == 200, backtest
    values.update(keyId=tokens["a_admin_id"], priceId=price["id"], format="html", file="portal.js",
                  backtestId=backtest["id"])
    secrets |= {price["id"], "leak-model", backtest["id"]}
    doc = json.loads(resources.files("billow.web").joinpath("openapi.json").read_text())
    def sweep(caller: Tenant) -> None:
        for path, ops in doc["paths"].items():
            concrete = path
            for name, value in values.items():
                concrete = concrete.replace("{" + name + "}", quote(value, safe=""))
            assert "{" not in concrete, f"no tenant-A value for a parameter of {path}"
            for method in ops:
                status, body = caller.call(method.upper(), concrete, {} if method in ("post", "put") else None)
                assert status < 500, (method, path, status, body)
                if status < 300 and method == "get":
                    text = json.dumps(body)
                    assert not any(s in text for s in secrets), (method, path, body)

    sweep(b)
    # {id} above is A's billing profile; A's app id, in every app path, is as unknown to B.
    for method, path in (("GET", "/api/v1/apps/{}"), ("PUT", "/api/v1/apps/{}"), ("DELETE", "/api/v1/apps/{}"),
                         ("PUT", "/api/v1/apps/{}/stripe/api-key"), ("POST", "/api/v1/apps/{}/stripe/webhook")):
        status, body = b.call(method, path.format(values["appId"]), {} if method != "GET" else None)
        # (a 404 names the id the caller sent; nothing else of A's)
        assert status == 404 and not any(s in json.dumps(body) for s in ("Leak App", "leak-erp-ref")), (method, path, body)
    # ...and with B's portal token for a subject of the same key as A's (the portal API needs a portal token); its own
    # answers (GET /api/v1/portal/me) name that key, B's own subject's.
    secrets.discard("leak_subject")
    sweep(Tenant(srv, b.call("POST", "/api/v1/portal/tokens", {"subject": "leak_subject"})[1]["token"]))
    # ...and none of B's writes touched A's resources.
    assert a.call("GET", "/api/v1/meters/leak_m")[0] == 200
    assert [p["id"] for p in a.call("GET", "/api/v1/llm/prices")[1]] == [price["id"]]  # A's key still works, too
    assert a.call("GET", f"/api/v1/notification/channels/{chan['id']}")[1].get("deletedAt") is None
    assert a.call("GET", f"/api/v1/notification/rules/{rule['id']}")[1].get("deletedAt") is None
    assert a.call("GET", f"/api/v1/customers/{cust['id']}")[1].get("deletedAt") is None
    assert a.call("GET", f"/api/v1/features/{feat['id']}")[1].get("archivedAt") is None
    assert a.call("GET", f"/api/v1/entitlements/{ent['id']}")[1].get("deletedAt") is None
    (g,) = [g for g in a.call("GET", "/api/v1/grants")[1] if g["id"] == grant["id"]]
    assert g.get("voidedAt") is None
    assert a.call("GET", f"/api/v1/plans/{plan['id']}")[1]["status"] == "active"
    assert a.call("GET", f"/api/v1/addons/{addon['id']}")[1]["status"] == "active"
    assert a.call("GET", f"/api/v1/subscriptions/{sub['id']}")[1]["status"] == "active"
    assert [x["quantity"] for x in a.call("GET", f"/api/v1/subscriptions/{sub['id']}/addons")[1]] == [1]
    assert a.call("GET", f"/api/v1/billing/invoices/{invoice['id']}")[1]["status"] == "paid"
    assert a.call("GET", f"/api/v1/billing/profiles/{profile['id']}")[1]["deletedAt"] is None
    assert a.call("GET", f"/api/v1/apps/{values['appId']}")[1]["name"] == "Leak App"
