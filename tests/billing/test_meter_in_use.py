"""A meter that features, plans, subscriptions or entitlements still use cannot be deleted (409 naming them, as
OpenMeter refuses with a conflict while active features or entitlements use a meter); and if one customer cannot
be rated all the same (its meter removed behind the API's back), the billing run still invoices every other
customer, records the failure where an operator sees it, and bills the repaired customer on a later run."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from functions.billing_run.handler import lambda_handler as billing_run
from tests.billing.conftest import Billow
from tests.support.billing import invoices, subscribed
from tests.support.catalog import plan_body, published

CALLS = {"slug": "calls", "eventType": "call", "aggregation": "COUNT"}


def calls_customer(b: Billow) -> dict[str, Any]:
    """Meter `calls` (made through the API), its feature, plan `voice` on it and customer beta subscribed from
    2026-04-01."""
    b.ok("POST", "/api/v1/meters", CALLS)
    b.ok("POST", "/api/v1/features", {"key": "calls", "name": "Calls", "meterSlug": "calls"})
    b.ok("POST", "/api/v1/customers", {"key": "beta", "name": "Beta", "currency": "USD",
                                       "usageAttribution": {"subjectKeys": ["customer_2"]}})
    b.clock.set("2026-03-31T00:00:00Z")
    published(b, plan_body("voice", "10", feature="calls"))
    return b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "voice"}, "customerKey": "beta",  # type: ignore[no-any-return]
                                                  "timing": "2026-04-01T00:00:00Z"})


@pytest.mark.parametrize("billow", ["memory"], indirect=True)
def test_deleting_a_meter_in_use_is_a_conflict_naming_what_uses_it(billow: Billow) -> None:
    b = billow
    sub = calls_customer(b)
    ent = b.ok("POST", "/api/v1/subjects/customer_1/entitlements",
               {"type": "metered", "featureKey": "calls", "usagePeriod": {"interval": "MONTH"}})
    status, out = b.call("DELETE", "/api/v1/meters/calls")
    assert status == 409, out
    assert (out["status"], out["title"]) == (409, "Conflict")
    assert "calls" in out["detail"] and "voice" in out["detail"]
    assert out["features"] == ["calls"]
    assert [(p["key"], p["version"]) for p in out["plans"]] == [("voice", 1)]
    assert out["subscriptions"] == [sub["id"]]
    assert out["entitlements"] == [ent["id"]]
    assert b.ok("GET", "/api/v1/meters/calls")["slug"] == "calls"  # still there
    # Archiving the feature (it no longer blocks) does not make the meter unused: the plan, the subscription and
    # the entitlement still rate it.
    b.ok("DELETE", "/api/v1/features/" + b.ok("GET", "/api/v1/features/calls")["id"])
    status, out = b.call("DELETE", "/api/v1/meters/calls")
    assert status == 409, out
    assert out["features"] == [] and out["subscriptions"] == [sub["id"]] and out["entitlements"] == [ent["id"]]
    # A meter whose only feature is archived and used by nothing else can go.
    b.ok("POST", "/api/v1/meters", {"slug": "sms", "eventType": "sms", "aggregation": "COUNT"})
    sms = b.ok("POST", "/api/v1/features", {"key": "sms", "name": "SMS", "meterSlug": "sms"})
    assert b.call("DELETE", "/api/v1/meters/sms")[0] == 409
    b.ok("DELETE", f"/api/v1/features/{sms['id']}")
    assert b.call("DELETE", "/api/v1/meters/sms")[0] == 204
    assert b.call("GET", "/api/v1/meters/sms")[0] == 404


def run_handler(b: Billow) -> tuple[dict[str, Any] | None, BaseException | None]:
    """What EventBridge Scheduler -> SQS -> functions/billing_run does; the run, or what the handler raised."""
    body = json.dumps({"job": "billing_run", "namespace": b.c.settings.namespace, "scheduledTime": "x"})
    try:
        return billing_run({"Records": [{"body": body}]}, None)["runs"][0], None
    except Exception as exc:  # noqa: BLE001 - the test looks at it
        return None, exc


def test_one_customer_failing_does_not_stop_the_billing_run(billow: Billow, caplog: pytest.LogCaptureFixture) -> None:
    b = billow
    subscribed(b)  # acme on plan basic (meter tokens) from 2026-04-01, sandbox billing profile
    beta_sub = calls_customer(b)
    ns = b.c.settings.namespace
    meter = b.c.meta.get_meter(ns, "calls")
    b.c.meta.delete_meter(ns, meter.id, b.clock.now())  # behind the API's back: beta's usage cannot be rated
    failures_before = b.c.metrics.snapshot().get("billing_run_failures", 0)
    b.clock.set("2026-04-01T00:10:00Z")
    with caplog.at_level(logging.ERROR):
        run, raised = run_handler(b)
    # acme is invoiced all the same.
    assert [(i["number"], i["totals"]["total"]) for i in invoices(b)] == [("ACME-0001", "49.99")]
    # beta's failure is recorded: logged with customer and subscription, counted, and the handler fails after
    # finishing (so the function's error alarm pages and SQS delivers the tick again).
    assert run is None and raised is not None
    (failure,) = raised.failures  # type: ignore[attr-defined]
    assert (failure["customerId"], failure["subscriptionId"]) == (beta_sub["customerId"], beta_sub["id"])
    assert "calls" in failure["reason"]
    assert any(beta_sub["customerId"] in r.getMessage() and beta_sub["id"] in r.getMessage() for r in caplog.records
               if r.levelno >= logging.ERROR)
    assert b.c.metrics.snapshot()["billing_run_failures"] == failures_before + 1
    # Repaired (the meter is back): the next run invoices beta, and only beta.
    b.ok("POST", "/api/v1/meters", CALLS)
    b.clock.set("2026-04-01T00:20:00Z")
    run, raised = run_handler(b)
    assert raised is None and run is not None and run["failures"] == []
    assert [(i["number"], i["totals"]["total"]) for i in invoices(b)] == [("ACME-0001", "49.99"), ("BETA-0001", "10.00")]
    run, raised = run_handler(b)
    assert raised is None and run is not None and run["invoices"] == [] and len(invoices(b)) == 2


class FailingFor:
    """The usage store, failing every query of one meter while `broken` (a ClickHouse error, say)."""

    def __init__(self, inner: Any, meter_id: str) -> None:
        self.inner, self.meter_id, self.broken = inner, meter_id, True

    def aggregate(self, q: Any) -> Any:
        if self.broken and q.meter_id == self.meter_id:
            raise RuntimeError(f"usage store failed for meter {self.meter_id}")
        return self.inner.aggregate(q)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("billow", ["memory"], indirect=True)
def test_billow_serve_scheduler_bills_the_others_and_retries_the_failed_customer(
        billow: Billow, caplog: pytest.LogCaptureFixture) -> None:
    from billow.local.scheduler import LocalBillingScheduler

    b = billow
    subscribed(b)
    beta_sub = calls_customer(b)
    b.usage(3, "2026-04-02T10:00:00Z", subject="customer_1")
    usage = FailingFor(b.c.usage, b.c.meta.get_meter(b.c.settings.namespace, "calls").id)
    b.c.usage = usage
    failures_before = b.c.metrics.snapshot().get("billing_run_failures", 0)
    scheduler = LocalBillingScheduler(b.c, every_s=0)  # not started: the test ticks it
    b.clock.set("2026-04-01T00:10:00Z")
    with caplog.at_level(logging.ERROR):
        result = scheduler.tick()
    assert [i["number"] for i in invoices(b)] == ["ACME-0001"]
    assert [(f["customerId"], f["subscriptionId"]) for f in result.failures] == [(beta_sub["customerId"], beta_sub["id"])]
    assert any(beta_sub["id"] in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert b.c.metrics.snapshot()["billing_run_failures"] == failures_before + 1
    usage.broken = False
    b.clock.set("2026-04-01T00:11:00Z")
    assert scheduler.tick().failures == []
    assert [i["number"] for i in invoices(b)] == ["ACME-0001", "BETA-0001"]


@pytest.mark.parametrize("billow", ["memory"], indirect=True)
def test_a_commit_or_entitlement_sync_failing_for_one_customer_leaves_the_others_billed(
        billow: Billow, monkeypatch: pytest.MonkeyPatch) -> None:
    from billow.adapters.sql_billing import SqlBillingStore
    from billow.services import subscriptions

    b = billow
    subscribed(b)
    beta_sub = calls_customer(b)
    beta = beta_sub["customerId"]
    store = b.c.store(SqlBillingStore)
    commit, sync = store.commit_billing, subscriptions.sync_entitlements

    def failing_commit(namespace: str, items: list[Any], now: Any) -> Any:
        if any(inv is not None and inv["customer"]["id"] == beta for inv, *_ in items):
            raise RuntimeError("database refused beta's invoice")
        return commit(namespace, items, now)

    def failing_sync(namespace: str, doc: dict[str, Any], **kw: Any) -> Any:
        if doc["id"] == beta_sub["id"]:
            raise RuntimeError("entitlement store refused beta's entitlements")
        return sync(namespace, doc, **kw)

    monkeypatch.setattr(store, "commit_billing", failing_commit)
    monkeypatch.setattr(subscriptions, "sync_entitlements", failing_sync)
    b.clock.set("2026-04-01T00:10:00Z")
    run, raised = run_handler(b)
    assert [i["number"] for i in invoices(b)] == ["ACME-0001"]
    assert raised is not None
    assert [(f["customerId"], f["subscriptionId"], f["reason"]) for f in raised.failures] == [  # type: ignore[attr-defined]
        (beta, None, "RuntimeError: database refused beta's invoice"),
        (beta, beta_sub["id"], "RuntimeError: entitlement store refused beta's entitlements")]
    monkeypatch.undo()
    b.clock.set("2026-04-01T00:20:00Z")
    run, raised = run_handler(b)
    assert raised is None and run is not None
    assert [i["number"] for i in invoices(b)] == ["ACME-0001", "BETA-0001"]
