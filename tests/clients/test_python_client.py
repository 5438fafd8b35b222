"""OpenMeter's official Python client, `openmeter` pinned in the dev dependencies, unmodified, through its default paths,
against a real `billow serve` whose Stripe is the stand-in. Each step calls one of the client's operations; it passes
when the call returned and the client's request for that operation got a 2xx (a recording transport sees each
request). Exactly the operations tests/clients/coverage.json lists as passing must pass, and every operation the client
makes must be listed there (passing, or not driven with the reason).

Client bugs worked around (named in coverage.json): `Client.subjects` is assigned twice, so the per-subject v1
entitlement operations' group is shadowed by the subjects' own, and its module-level request builders for three of
them are shadowed the same way; the seven whose builders survive are sent with `client.send_request(build_…())`
(the client's own pipeline and serialisation). `meters.query_json(filter_group_by=…)` encodes the filter as one
string, not OpenMeter's deepObject (`filterGroupBy[model]=gpt`): the filter is given in the POST query's body."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from corehttp.rest import HttpRequest
from corehttp.transport.requests import RequestsTransport
from openmeter import Client
from openmeter._generated.operations import _operations as gen

from scripts.client_coverage import COVERAGE, python_operations
from tests.e2e.conftest import Server
from tests.stripe_standin.server import StandIn

CALLS: list[tuple[str, str, int]] = []


class Recording(RequestsTransport):
    def send(self, request: Any, **kwargs: Any) -> Any:
        response = super().send(request, **kwargs)
        CALLS.append((request.method, urlsplit(request.url).path, response.status_code))
        return response


def _matches(op: str, method: str, path: str) -> bool:
    import re

    want, template = op.split(" ")
    return method == want and re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path) is not None


class Steps:
    def __init__(self) -> None:
        self.results: dict[str, str] = {}

    def __call__(self, op: str, fn: Callable[[], Any]) -> None:
        start = len(CALLS)
        try:
            fn()
        except Exception as exc:  # the step's result records why
            self.results[op] = f"fail: {type(exc).__name__}: {str(exc)[:300]}"
            return
        mine = [c for c in CALLS[start:] if _matches(op, c[0], c[1])]
        self.results[op] = "pass" if any(s < 300 for _, _, s in mine) else f"fail: no 2xx request ({mine})"


@pytest.fixture(scope="module")
def billow_with_stripe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, StandIn]]:
    root = tmp_path_factory.mktemp("python-client")
    standin = StandIn(api_key="sk_test_pyclient", webhook_secret="whsec_pyclient").start()
    (root / "billow.yaml").write_text(f"stripe_api_base: {standin.url}\n")
    srv = Server(root / "data", root / "billow.yaml").start()
    yield srv, standin
    srv.stop()
    standin.stop()


def _items(page: Any) -> list[Any]:
    return list(page["items"] if isinstance(page, dict) or hasattr(page, "keys") and "items" in page else page)


def drive(srv: Server, standin: StandIn) -> dict[str, str]:  # noqa: C901 (one step per operation, in order)
    c = Client(endpoint=srv.url, transport=Recording())
    step, v = Steps(), {}
    now = dt.datetime.now(dt.UTC)
    hour_ago = now - dt.timedelta(hours=1)
    card = {"type": "flat_fee", "key": "p_fee", "name": "P Fee", "billingCadence": "P1M", "price": {"type": "flat", "amount": "1"}}

    def send(req: HttpRequest) -> Any:
        resp = c.send_request(req)
        resp.raise_for_status()
        return resp.json() if resp.content else None

    # -- meters, events, subjects
    step("POST /api/v1/meters", lambda: [c.meters.create({"slug": "p_tokens", "eventType": "p_prompt", "aggregation": "SUM",
                                                          "valueProperty": "$.tokens", "groupBy": {"model": "$.model"}}),
                                         c.meters.create({"slug": "p_gone", "eventType": "p_gone", "aggregation": "COUNT"})])
    step("GET /api/v1/meters/{meterIdOrSlug}", lambda: c.meters.get("p_tokens"))
    step("GET /api/v1/meters", lambda: c.meters.list())
    step("PUT /api/v1/meters/{meterIdOrSlug}", lambda: c.meters.update("p_tokens", {"name": "P tokens", "groupBy": {"model": "$.model"}}))
    events = [{"specversion": "1.0", "id": f"p{i}", "source": "py", "type": "p_prompt", "subject": "p_subj",
               "time": hour_ago.isoformat(), "data": {"tokens": n, "model": m}} for i, (n, m) in enumerate(((5, "gpt"), (7, "claude")))]
    step("POST /api/v1/events", lambda: [c.events.ingest_events(events), c.events.ingest_event({**events[0], "id": "p9"}),
                                         c.events.ingest_events_json([{**events[0], "id": "p10"}])])

    def query_json() -> None:
        out = c.meters.query_json("p_tokens", window_size="HOUR")
        assert sum(r.value for r in out.data) == 22, out  # p0 and p9, p10 (its copies under other ids), p1
    step("GET /api/v1/meters/{meterIdOrSlug}/query", lambda: [query_json(), c.meters.query_csv("p_tokens", window_size="DAY")])
    # (meters.query_csv_post sends no body: the client's method has no parameter for the required query body.)
    step("POST /api/v1/meters/{meterIdOrSlug}/query",
         lambda: c.meters.query("p_tokens", {"windowSize": "DAY", "filterGroupBy": {"model": ["gpt"]}}))
    step("GET /api/v1/meters/{meterIdOrSlug}/subjects", lambda: c.meters.list_subjects("p_tokens"))
    step("GET /api/v1/meters/{meterIdOrSlug}/group-by/{groupByKey}/values",
         lambda: c.meters.list_group_by_values("p_tokens", "model", from_parameter=now - dt.timedelta(days=1)))
    step("DELETE /api/v1/meters/{meterIdOrSlug}", lambda: c.meters.delete("p_gone"))
    step("GET /api/v1/events", lambda: c.events.list(subject=["p_subj"]))
    step("GET /api/v2/events", lambda: list(c.events_v2.list()))
    step("POST /api/v1/subjects", lambda: c.subjects.upsert([{"key": "p_subj"}, {"key": "p_subj_gone"}]))
    step("GET /api/v1/subjects/{subjectIdOrKey}", lambda: c.subjects.get("p_subj"))
    step("GET /api/v1/subjects", lambda: c.subjects.list())
    step("DELETE /api/v1/subjects/{subjectIdOrKey}", lambda: c.subjects.delete("p_subj_gone"))

    # -- customers, features
    customer = {"name": "Py Customer", "key": "p_cust", "usageAttribution": {"subjectKeys": ["p_subj"]}, "currency": "USD"}

    def customers_create() -> None:
        v["cust"] = c.customers.create(customer)
        v["gone"] = c.customers.create({"name": "Gone", "key": "p_gone", "usageAttribution": {"subjectKeys": ["p_gone"]}})
    step("POST /api/v1/customers", customers_create)
    step("GET /api/v1/customers/{customerIdOrKey}", lambda: c.customers.get("p_cust"))
    step("PUT /api/v1/customers/{customerIdOrKey}", lambda: c.customers.update(v["cust"].id, {**customer, "description": "py"}))
    step("GET /api/v1/customers", lambda: c.customers.list())
    step("DELETE /api/v1/customers/{customerIdOrKey}", lambda: c.customers.delete(v["gone"].id))

    def features_create() -> None:
        v["credits"] = c.features.create({"key": "p_credits", "name": "Credits", "meterSlug": "p_tokens"})
        for key in ("p_flag", "p_flag2", "p_gone_f"):
            v[key] = c.features.create({"key": key, "name": key})
        # unitCost: the client reads its FeatureUnitCost union back as the JSON object
        manual = c.features.create({"key": "p_cost_manual", "name": "Manual cost", "meterSlug": "p_tokens",
                                    "unitCost": {"type": "manual", "amount": "0.000002"}})
        assert manual.unit_cost == {"type": "manual", "amount": "0.000002"}, manual
        llm = {"type": "llm", "provider": "openai", "modelProperty": "model", "tokenType": "input"}
        assert c.features.create({"key": "p_cost_llm", "name": "LLM cost", "meterSlug": "p_tokens",
                                  "unitCost": llm}).unit_cost == llm
        v["manual_cost"] = manual
    step("POST /api/v1/features", features_create)

    def feature_get() -> None:
        c.features.get(v["credits"].id)
        assert c.features.get(v["manual_cost"].id).unit_cost["amount"] == "0.000002"
    step("GET /api/v1/features/{featureId}", feature_get)
    step("GET /api/v1/features", lambda: c.features.list())
    step("DELETE /api/v1/features/{featureId}", lambda: c.features.delete(v["p_gone_f"].id))

    # -- notifications
    def channels_create() -> None:
        v["chan"] = c.notification_channels.create({"type": "WEBHOOK", "name": "Py hook", "url": "http://127.0.0.1:9/hook"})
        v["chan2"] = c.notification_channels.create({"type": "WEBHOOK", "name": "Gone", "url": "http://127.0.0.1:9/x"})
    step("POST /api/v1/notification/channels", channels_create)
    step("GET /api/v1/notification/channels/{channelId}", lambda: c.notification_channels.get(v["chan"]["id"]))
    step("PUT /api/v1/notification/channels/{channelId}", lambda: c.notification_channels.update(
        v["chan"]["id"], {"type": "WEBHOOK", "name": "Py hook 2", "url": "http://127.0.0.1:9/hook"}))
    step("GET /api/v1/notification/channels", lambda: c.notification_channels.list())
    step("DELETE /api/v1/notification/channels/{channelId}", lambda: c.notification_channels.delete(v["chan2"]["id"]))

    def rules_create() -> None:
        v["rule"] = c.notification_rules.create({"type": "entitlements.reset", "name": "Py resets", "channels": [v["chan"]["id"]]})
        v["rule2"] = c.notification_rules.create({"type": "entitlements.reset", "name": "Gone", "channels": [v["chan"]["id"]]})
    step("POST /api/v1/notification/rules", rules_create)
    step("GET /api/v1/notification/rules/{ruleId}", lambda: c.notification_rules.get(v["rule"]["id"]))
    step("PUT /api/v1/notification/rules/{ruleId}", lambda: c.notification_rules.update(
        v["rule"]["id"], {"type": "entitlements.reset", "name": "Py resets 2", "channels": [v["chan"]["id"]]}))
    step("GET /api/v1/notification/rules", lambda: c.notification_rules.list())
    step("POST /api/v1/notification/rules/{ruleId}/test", lambda: c.notification_rules.test(v["rule"]["id"]))
    step("DELETE /api/v1/notification/rules/{ruleId}", lambda: c.notification_rules.delete(v["rule2"]["id"]))

    # -- entitlements and grants, v1 (per subject: the shadowed group, through the surviving request builders)
    anchor = (now - dt.timedelta(hours=2)).isoformat()

    def ents_create() -> None:
        v["ent"] = send(gen.build_subjects_post_request("p_subj", json={
            "type": "metered", "featureKey": "p_credits", "usagePeriod": {"interval": "DAY", "anchor": anchor}}))
        v["flagEnt"] = send(gen.build_subjects_post_request("p_subj", json={"type": "boolean", "featureKey": "p_flag"}))
    step("POST /api/v1/subjects/{subjectIdOrKey}/entitlements", ents_create)
    step("GET /api/v1/entitlements/{entitlementId}", lambda: c.entitlements.get(v["ent"]["id"]))
    step("GET /api/v1/entitlements", lambda: c.entitlements.list())

    def grants_create() -> None:
        for amount, priority in ((100, 1), (1, 2)):
            v[f"grant{priority}"] = send(gen.build_subjects_create_grant_request("p_subj", "p_credits", json={
                "amount": amount, "priority": priority, "effectiveAt": v["ent"]["currentUsagePeriod"]["from"],
                "expiration": {"duration": "DAY", "count": 1}}))
    step("POST /api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/grants", grants_create)
    step("GET /api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/grants",
         lambda: send(gen.build_subjects_get_grants_request("p_subj", "p_credits")))
    step("GET /api/v1/grants", lambda: c.grants.list())
    step("DELETE /api/v1/grants/{grantId}", lambda: c.grants.delete(v["grant2"]["id"]))
    step("GET /api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/value",
         lambda: send(gen.build_subjects_get_entitlement_value_request("p_subj", "p_credits")))
    step("GET /api/v1/customers/{customerIdOrKey}/entitlements/{featureKey}/value",
         lambda: c.customer_entitlement.get_customer_entitlement_value("p_cust", "p_credits"))
    step("GET /api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementId}/history",
         lambda: send(gen.build_subjects_get_entitlement_history_request("p_subj", v["ent"]["id"], window_size="HOUR")))
    step("POST /api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementId}/reset",
         lambda: send(gen.build_subjects_reset_request("p_subj", v["ent"]["id"], json={
             "effectiveAt": (now - dt.timedelta(minutes=30)).isoformat()})))

    def override() -> None:
        v["flagEnt"] = send(gen.build_subjects_override_request("p_subj", "p_flag", json={"type": "boolean", "featureKey": "p_flag"}))
    step("PUT /api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/override", override)
    step("GET /api/v1/customers/{customerIdOrKey}/access", lambda: c.customer.get_customer_access("p_cust"))

    # -- v2 (per customer)
    def ent2() -> None:
        v["ent2"] = c.customer_entitlements_v2.post("p_cust", {"type": "boolean", "featureKey": "p_flag2"})
    step("POST /api/v2/customers/{customerIdOrKey}/entitlements", ent2)
    step("GET /api/v2/customers/{customerIdOrKey}/entitlements", lambda: c.customer_entitlements_v2.list("p_cust"))
    step("GET /api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}",
         lambda: c.customer_entitlements_v2.get("p_cust", "p_credits"))
    step("GET /api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/value",
         lambda: c.customer_entitlement_v2.get_customer_entitlement_value("p_cust", "p_credits"))
    step("POST /api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/grants",
         lambda: c.customer_entitlement_v2.create_customer_entitlement_grant("p_cust", "p_credits", {
             "amount": 5, "priority": 3, "effectiveAt": now.isoformat()}))
    step("GET /api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/grants",
         lambda: c.customer_entitlement_v2.get_grants("p_cust", "p_credits"))
    step("GET /api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/history",
         lambda: c.customer_entitlement_v2.get_customer_entitlement_history("p_cust", "p_credits", window_size="HOUR"))
    step("POST /api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/reset",
         lambda: c.customer_entitlement_v2.reset_customer_entitlement("p_cust", "p_credits", {}))

    def override2() -> None:
        v["ent2"] = c.customer_entitlements_v2.override("p_cust", "p_flag2", {"type": "boolean", "featureKey": "p_flag2"})
    step("PUT /api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/override", override2)
    step("GET /api/v2/entitlements", lambda: c.entitlements_v2.list())
    step("GET /api/v2/entitlements/{entitlementId}", lambda: c.entitlements_v2.get(v["ent2"]["id"]))
    step("GET /api/v2/grants", lambda: c.grants_v2.list())
    step("DELETE /api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}",
         lambda: c.customer_entitlements_v2.delete("p_cust", "p_flag2"))

    # -- notification events (the rule's test event)
    def note_list() -> None:
        v["note"] = _items(c.notification_events.list())[0]
    step("GET /api/v1/notification/events", note_list)
    step("GET /api/v1/notification/events/{eventId}", lambda: c.notification_events.get(v["note"]["id"]))
    step("POST /api/v1/notification/events/{eventId}/resend", lambda: c.notification_events.resend(v["note"]["id"], {}))

    # -- portal
    def portal_create() -> None:
        v["portal"] = c.portal.portal_tokens.create({"subject": "p_subj"})
    step("POST /api/v1/portal/tokens", portal_create)
    step("GET /api/v1/portal/tokens", lambda: c.portal.portal_tokens.list())

    def portal_query() -> None:
        p = Client(endpoint=srv.url, transport=Recording(), headers={"Authorization": f"Bearer {v['portal'].token}"})
        out = p.portal.portal_meters.query_json("p_tokens", window_size="DAY")
        assert sum(r.value for r in out.data) == 22, out
        p.portal.portal_meters.query_csv("p_tokens", window_size="DAY")
    step("GET /api/v1/portal/meters/{meterSlug}/query", portal_query)
    step("POST /api/v1/portal/tokens/invalidate", lambda: c.portal.portal_tokens.invalidate({"subject": "p_subj"}))

    # -- info, debug
    step("GET /api/v1/info/currencies", lambda: c.currencies.list_currencies())
    step("GET /api/v1/debug/metrics", lambda: c.debug.metrics())

    # -- catalog
    def addon(key: str) -> dict[str, Any]:
        return {"key": key, "name": f"Addon {key}", "currency": "USD", "instanceType": "single", "rateCards": [card]}

    def addons_create() -> None:
        for key in ("p_addon", "p_addon2", "p_addon3"):
            v[key] = c.addons.create(addon(key))
    step("POST /api/v1/addons", addons_create)
    step("GET /api/v1/addons/{addonId}", lambda: c.addons.get(v["p_addon"].id))
    step("GET /api/v1/addons", lambda: list(c.addons.list()))
    step("PUT /api/v1/addons/{addonId}", lambda: c.addons.update(v["p_addon"].id, {**addon("p_addon"), "name": "P Addon"}))
    step("POST /api/v1/addons/{addonId}/publish", lambda: [c.addons.publish(v["p_addon"].id), c.addons.publish(v["p_addon2"].id)])
    step("POST /api/v1/addons/{addonId}/archive", lambda: c.addons.archive(v["p_addon2"].id))
    step("DELETE /api/v1/addons/{addonId}", lambda: c.addons.delete(v["p_addon3"].id))

    def plan(key: str) -> dict[str, Any]:
        return {"key": key, "name": f"Plan {key}", "currency": "USD", "billingCadence": "P1M",
                "phases": [{"key": "only", "name": "Only", "rateCards": [card]}]}

    def plans_create() -> None:
        for key in ("p_plan", "p_plan2", "p_plan3"):
            v[key] = c.plans.create(plan(key))
    step("POST /api/v1/plans", plans_create)
    step("GET /api/v1/plans/{planId}", lambda: c.plans.get(v["p_plan"].id))
    step("GET /api/v1/plans", lambda: list(c.plans.list()))
    step("PUT /api/v1/plans/{planId}", lambda: c.plans.update(v["p_plan"].id, {**plan("p_plan"), "name": "P Plan"}))

    def plan_addons_create() -> None:
        v["pa"] = c.plan_addons.create(v["p_plan"].id, {"addonId": v["p_addon"].id, "fromPlanPhase": "only"})
        v["pa3"] = c.plan_addons.create(v["p_plan3"].id, {"addonId": v["p_addon"].id, "fromPlanPhase": "only"})
    step("POST /api/v1/plans/{planId}/addons", plan_addons_create)
    step("GET /api/v1/plans/{planId}/addons/{planAddonId}", lambda: c.plan_addons.get(v["p_plan"].id, v["pa"]["id"]))
    step("GET /api/v1/plans/{planId}/addons", lambda: c.plan_addons.list(v["p_plan"].id))
    step("PUT /api/v1/plans/{planId}/addons/{planAddonId}",
         lambda: c.plan_addons.update(v["p_plan"].id, v["pa"]["id"], {"fromPlanPhase": "only"}))
    step("DELETE /api/v1/plans/{planId}/addons/{planAddonId}", lambda: c.plan_addons.delete(v["p_plan3"].id, v["pa3"]["id"]))
    step("POST /api/v1/plans/{planId}/publish", lambda: [c.plans.publish(v["p_plan"].id), c.plans.publish(v["p_plan2"].id)])
    step("DELETE /api/v1/plans/{planId}", lambda: c.plans.delete(v["p_plan3"].id))

    # -- subscriptions
    def sub_create() -> None:
        v["sub"] = c.subscriptions.create({"plan": {"key": "p_plan"}, "customerId": v["cust"].id})
    step("POST /api/v1/subscriptions", sub_create)
    step("GET /api/v1/subscriptions/{subscriptionId}", lambda: c.subscriptions.get_expanded(v["sub"].id))
    step("GET /api/v1/customers/{customerIdOrKey}/subscriptions", lambda: c.customers.list_customer_subscriptions("p_cust"))

    def sa_create() -> None:
        v["sa"] = c.subscription_addons.create(v["sub"].id, {"addon": {"id": v["p_addon"].id}, "quantity": 1,
                                                             "timing": "immediate", "name": "P Addon"})
    step("POST /api/v1/subscriptions/{subscriptionId}/addons", sa_create)
    step("GET /api/v1/subscriptions/{subscriptionId}/addons", lambda: c.subscription_addons.list(v["sub"].id))
    step("GET /api/v1/subscriptions/{subscriptionId}/addons/{subscriptionAddonId}",
         lambda: c.subscription_addons.get(v["sub"].id, v["sa"].id))
    step("PATCH /api/v1/subscriptions/{subscriptionId}/addons/{subscriptionAddonId}",
         lambda: c.subscription_addons.update(v["sub"].id, v["sa"].id, {"quantity": 1, "timing": "immediate"}))
    step("PATCH /api/v1/subscriptions/{subscriptionId}",
         lambda: c.subscriptions.edit(v["sub"].id, {"customizations": [{"op": "unschedule_edit"}]}))
    step("POST /api/v1/subscriptions/{subscriptionId}/cancel",
         lambda: c.subscriptions.cancel(v["sub"].id, {"timing": "next_billing_cycle"}))
    step("POST /api/v1/subscriptions/{subscriptionId}/unschedule-cancelation",
         lambda: c.subscriptions.unschedule_cancelation(v["sub"].id))

    # -- billing
    def profile(name: str, invoicing: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"name": name, "supplier": {"name": "Py Supplier"},
                "apps": {"invoicing": "sandbox", "payment": "sandbox", "tax": "sandbox"},
                "workflow": {"invoicing": invoicing or {"autoAdvance": True, "draftPeriod": "P1D"}}}

    def profiles_create() -> None:
        v["profile"] = c.billing_profiles.create(profile("Py Profile"))
        v["profile2"] = c.billing_profiles.create(profile("Gone Profile"))
        v["manual"] = c.billing_profiles.create(profile("Manual Profile", {"autoAdvance": False}))
        # workflow.invoicing.progressiveBilling, read through the client's BillingWorkflowInvoicingSettings
        assert v["profile"].workflow.invoicing.progressive_billing is True  # OpenMeter's default
        off = c.billing_profiles.create(profile("No Progressive", {"autoAdvance": True, "progressiveBilling": False}))
        assert off.workflow.invoicing.progressive_billing is False
    step("POST /api/v1/billing/profiles", profiles_create)
    step("GET /api/v1/billing/profiles/{id}", lambda: c.billing_profiles.get(v["profile"].id))
    step("GET /api/v1/billing/profiles", lambda: c.billing_profiles.list())

    def profile_update() -> None:
        cur = c.billing_profiles.get(v["profile"].id)
        c.billing_profiles.update(v["profile"].id, {"name": "Py Profile 2", "supplier": cur["supplier"],
                                                     "workflow": cur["workflow"], "default": cur["default"]})
    step("PUT /api/v1/billing/profiles/{id}", profile_update)
    step("DELETE /api/v1/billing/profiles/{id}", lambda: c.billing_profiles.delete(v["profile2"].id))
    def override_upsert() -> None:
        out = c.customer_overrides.upsert(v["cust"].id, {"billingProfileId": v["profile"].id})
        assert out.base_billing_profile_id == v["profile"].id, out
    step("PUT /api/v1/billing/customers/{customerId}", override_upsert)

    def override_get() -> None:
        from openmeter._generated import models as om

        out = c.customer_overrides.get(v["cust"].id)
        assert isinstance(out, om.BillingProfileCustomerOverrideWithDetails)
        assert out.base_billing_profile_id == out.customer_override.billing_profile_id == v["profile"].id, out
        assert isinstance(out.customer_profile.workflow.invoicing.progressive_billing, bool), out
    step("GET /api/v1/billing/customers/{customerId}", override_get)
    step("GET /api/v1/billing/customers", lambda: c.customer_overrides.list())

    def line(name: str) -> dict[str, Any]:
        return {"currency": "USD", "lines": [{"type": "usage_based", "name": name, "period": {
            "from": hour_ago.isoformat(), "to": now.isoformat()}, "invoiceAt": now.isoformat(),
            "price": {"type": "unit", "amount": "2"}, "featureKey": "p_credits"}]}

    def draft(name: str) -> Any:
        c.customer_invoice.create_pending_invoice_line(v["cust"].id, line(name))
        return c.invoices.invoice_pending_lines_action({"customerId": v["cust"].id})[0]
    step("POST /api/v1/billing/customers/{customerId}/invoices/simulate",
         lambda: c.customer_invoice.simulate_invoice(v["cust"].id, {**line("sim"), "lines": [
             {**line("sim")["lines"][0], "quantity": "3"}]}))
    step("POST /api/v1/billing/customers/{customerId}/invoices/pending-lines",
         lambda: c.customer_invoice.create_pending_invoice_line(v["cust"].id, line("Py line")))

    def invoice_now() -> None:
        from openmeter._generated import models as om

        # The request as the client's own model builds it, progressiveBillingOverride too (a pending line is invoiced
        # whatever the flag: only a subscription's period in progress is split, tests/clients/node/drive.mjs)
        v["invoice"] = c.invoices.invoice_pending_lines_action(om.InvoicePendingLinesActionInput(
            customer_id=v["cust"].id, progressive_billing_override=False))[0]
        # The client deserialises each line's rate card (OpenMeter's InvoiceUsageBasedRateCard) as typed models.

        (py_line,) = [ln for ln in v["invoice"].lines if ln.name == "Py line"]
        assert isinstance(py_line, om.InvoiceLine) and isinstance(py_line.rate_card, om.InvoiceUsageBasedRateCard)
        assert py_line.rate_card.feature_key == "p_credits" and py_line.rate_card.price["amount"] == "2"
        assert py_line.children and isinstance(py_line.children[0].rate_card, om.InvoiceDetailedLineRateCard)
        assert py_line.children[0].rate_card.price["amount"] == py_line.children[0].per_unit_amount == "2"
    step("POST /api/v1/billing/invoices/invoice", invoice_now)
    step("GET /api/v1/billing/invoices", lambda: c.invoices.list())
    step("GET /api/v1/billing/invoices/{invoiceId}", lambda: c.invoice.get_invoice(v["invoice"].id))
    step("POST /api/v1/billing/invoices/{invoiceId}/snapshot-quantities",
         lambda: c.invoice.snapshot_quantities_action(v["invoice"].id))
    step("POST /api/v1/billing/invoices/{invoiceId}/taxes/recalculate", lambda: c.invoice.recalculate_tax_action(v["invoice"].id))

    def invoice_update() -> None:
        cur = c.invoice.get_invoice(v["invoice"].id)
        c.invoice.update_invoice(v["invoice"].id, {"description": "Py", "supplier": cur.supplier, "customer": cur.customer,
                                                    "lines": cur.lines or [], "workflow": cur.workflow})
    step("PUT /api/v1/billing/invoices/{invoiceId}", invoice_update)
    step("POST /api/v1/billing/invoices/{invoiceId}/advance", lambda: c.invoice.advance_action(v["invoice"].id))
    step("POST /api/v1/billing/invoices/{invoiceId}/void", lambda: c.invoice.void_invoice_action(draft("Py line 2").id, {
        "action": {"action": {"type": "discard"}, "percentage": 100}, "reason": "py"}))
    step("DELETE /api/v1/billing/invoices/{invoiceId}", lambda: c.invoice.delete_invoice(draft("Py line 3").id))

    def approve() -> None:
        c.customer_overrides.upsert(v["cust"].id, {"billingProfileId": v["manual"].id})
        c.invoice.approve_action(draft("Py line 4").id)
    step("POST /api/v1/billing/invoices/{invoiceId}/approve", approve)

    def custom_draft() -> None:
        custom = c.billing_profiles.create({**profile("Custom Profile", {"autoAdvance": False}), "apps": {
            "invoicing": "custom_invoicing", "payment": "custom_invoicing", "tax": "sandbox"}})
        c.customer_overrides.upsert(v["cust"].id, {"billingProfileId": custom.id})
        v["custom"] = draft("Py line 5")
        c.app_custom_invoicing.draft_syncronized(v["custom"].id, {"invoicing": {}})
    step("POST /api/v1/apps/custom-invoicing/{invoiceId}/draft/synchronized", custom_draft)
    step("POST /api/v1/apps/custom-invoicing/{invoiceId}/issuing/synchronized", lambda: [
        c.invoice.approve_action(v["custom"].id),
        c.app_custom_invoicing.finalized(v["custom"].id, {"invoicing": {"invoiceNumber": "PY-1", "invoiceId": "erp-1"}})])
    step("POST /api/v1/apps/custom-invoicing/{invoiceId}/payment/status",
         lambda: c.app_custom_invoicing.payment_status(v["custom"].id, {"trigger": "paid"}))
    step("DELETE /api/v1/billing/customers/{customerId}", lambda: c.customer_overrides.delete(v["cust"].id))

    def progress() -> None:
        job = requests.post(f"{srv.url}/api/v1/billing/backtests", timeout=60, json={
            "plan": "p_plan", "from": hour_ago.isoformat(), "to": (now - dt.timedelta(seconds=1)).isoformat()})
        assert job.status_code < 300, job.text
        c.progress.get_progress(job.json()["id"])
    step("GET /api/v1/info/progress/{id}", progress)

    # -- apps
    def apps_list() -> None:
        v["app"] = _items(c.apps.list())[0]
    step("GET /api/v1/apps", apps_list)
    step("GET /api/v1/apps/{id}", lambda: c.apps.get(v["app"]["id"]))
    step("PUT /api/v1/apps/{id}", lambda: c.apps.update(v["app"]["id"], {"type": v["app"]["type"], "name": "Py Sandbox",
                                                                          "default": True}))
    step("GET /api/v1/marketplace/listings", lambda: c.marketplace.list())
    step("GET /api/v1/marketplace/listings/{type}", lambda: c.marketplace.get("stripe"))
    step("GET /api/v1/customers/{customerIdOrKey}/apps", lambda: c.customer_apps.list_app_data("p_cust"))
    step("POST /api/v1/marketplace/listings/{type}/install", lambda: c.marketplace.install("custom_invoicing", {"name": "Py CI"}))

    def stripe_install() -> None:
        v["stripe"] = c.marketplace.install_with_api_key("stripe", {"apiKey": standin.api_key, "name": "Py Stripe"})["app"]
    step("POST /api/v1/marketplace/listings/{type}/install/apikey", stripe_install)
    step("PUT /api/v1/apps/{id}/stripe/api-key",
         lambda: c.app_stripe.update_stripe_api_key(v["stripe"]["id"], {"secretAPIKey": standin.api_key}))

    def webhook() -> None:
        # Stripe's delivery to the app's own endpoint, signed with the secret Stripe (the stand-in) gave the app.
        payload = json.dumps({"id": "evt_py", "object": "event", "type": "customer.created",
                              "data": {"object": {"id": "cus_x", "object": "customer"}}}).encode()
        t = int(time.time())
        sig = hmac.new(standin.webhook_secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
        c.app_stripe.webhook(v["stripe"]["id"], payload, headers={"Stripe-Signature": f"t={t},v1={sig}"})
    step("POST /api/v1/apps/{id}/stripe/webhook", webhook)

    def stripe_customer() -> None:
        made = requests.post(f"{standin.url}/v1/customers", data={"name": "Py"}, timeout=30, headers={
            "Authorization": f"Bearer {standin.api_key}", "Stripe-Version": standin.api_version})
        v["cus"] = made.json()["id"]
        c.customer_stripe.upsert("p_cust", {"stripeCustomerId": v["cus"]})
    step("PUT /api/v1/customers/{customerIdOrKey}/stripe", stripe_customer)
    step("GET /api/v1/customers/{customerIdOrKey}/stripe", lambda: c.customer_stripe.get("p_cust"))
    step("PUT /api/v1/customers/{customerIdOrKey}/apps", lambda: c.customer_apps.upsert_app_data(
        "p_cust", [{"type": "stripe", "id": v["stripe"]["id"], "stripeCustomerId": v["cus"]}]))
    step("POST /api/v1/customers/{customerIdOrKey}/stripe/portal",
         lambda: c.customer_stripe.create_portal_session("p_cust", {"returnUrl": "https://example.com/back"}))
    step("POST /api/v1/stripe/checkout/sessions", lambda: c.app_stripe.create_checkout_session({
        "appId": v["stripe"]["id"], "customer": {"key": "p_cust"}, "options": {"successURL": "https://example.com/ok"}}))
    def retry() -> None:
        # An invoice whose sync with Stripe fails (the stand-in answers 503 until told otherwise) waits in
        # issuing.failed; once Stripe answers again, `retry` issues it.
        stripe_profile = next(pr for pr in _items(c.billing_profiles.list())
                              if v["stripe"]["id"] in json.dumps(pr["apps"]))
        c.customer_overrides.upsert(v["cust"].id, {"billingProfileId": stripe_profile["id"]})
        standin.inject("unavailable", path="/v1/invoices", times=1_000_000)
        try:
            failed = draft("Py line 6")
            if failed["statusDetails"]["extendedStatus"] != "issuing.failed":
                c.invoice.approve_action(failed.id)
            assert c.invoice.get_invoice(failed.id)["statusDetails"]["extendedStatus"] == "issuing.failed"
        finally:
            with standin._lock:
                standin._faults.clear()
        c.invoice.retry_action(failed.id)
        assert c.invoice.get_invoice(failed.id)["status"] != "issuing", "still issuing after the retry"
    step("POST /api/v1/billing/invoices/{invoiceId}/retry", retry)
    step("DELETE /api/v1/customers/{customerIdOrKey}/apps/{appId}", lambda: c.customer_apps.delete_app_data("p_cust", v["stripe"]["id"]))

    def uninstall() -> None:
        cur = c.billing_profiles.get(v["profile"].id)
        c.billing_profiles.update(v["profile"].id, {"name": cur["name"], "supplier": cur["supplier"],
                                                     "workflow": cur["workflow"], "default": True})
        for p in _items(c.billing_profiles.list()):
            if v["stripe"]["id"] in json.dumps(p.get("apps") if isinstance(p, dict) else p.as_dict().get("apps")):
                c.billing_profiles.delete(p["id"])
        c.apps.uninstall(v["stripe"]["id"])
    step("DELETE /api/v1/apps/{id}", uninstall)

    # -- last: subscriptions changed, migrated, canceled, restored, deleted; a plan's next version; archive
    def change() -> None:
        v["sub"] = c.subscriptions.change(v["sub"].id, {"timing": "immediate", "plan": {"key": "p_plan2"}}).next
    step("POST /api/v1/subscriptions/{subscriptionId}/change", change)

    def migrate() -> None:
        c.plans.publish(v["next"].id)
        v["sub"] = c.subscriptions.migrate(v["sub"].id, {"targetVersion": v["next"].version}).next
    step("POST /api/v1/plans/{planIdOrKey}/next", lambda: v.update(next=c.plans.next("p_plan2")))
    step("POST /api/v1/subscriptions/{subscriptionId}/migrate", migrate)
    step("POST /api/v1/subscriptions/{subscriptionId}/restore", lambda: [
        c.subscriptions.cancel(v["sub"].id, {"timing": "next_billing_cycle"}), c.subscriptions.restore(v["sub"].id)])

    def delete_sub() -> None:
        later = c.customers.create({"name": "Later", "key": "p_later", "usageAttribution": {"subjectKeys": ["p_later"]}})
        sub = c.subscriptions.create({"plan": {"key": "p_plan"}, "customerId": later.id,
                                      "timing": (now + dt.timedelta(days=30)).isoformat()})
        c.subscriptions.delete(sub.id)
    step("DELETE /api/v1/subscriptions/{subscriptionId}", delete_sub)
    step("POST /api/v1/plans/{planId}/archive", lambda: c.plans.archive(v["p_plan"].id))
    return step.results


def test_the_python_client_against_billow(billow_with_stripe: tuple[Server, StandIn]) -> None:
    srv, standin = billow_with_stripe
    (expected,) = [cl for cl in json.loads(COVERAGE.read_text())["clients"] if cl["key"] == "python"]
    assert python_operations() == expected["operations"]
    results = drive(srv, standin)
    passed = sorted(op for op, r in results.items() if r == "pass")
    failed = {op: r for op, r in results.items() if r != "pass"}
    assert passed == expected["passing"], json.dumps(failed, indent=1)
    assert set(expected["operations"]) == set(passed) | set(expected["not_driven"])
