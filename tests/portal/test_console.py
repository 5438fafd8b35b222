"""The operator console (issue 20 item 3) in Debian's Chromium: the page at /console, every request it makes answered
by the deployed handlers in-process (API Gateway's authorizer first, as in AWS, auth on), with the clock the test
sets (the browser's clock is set to it too). A read key is refused; with an admin key the page shows meters with
their usage, customers with subscriptions, balances and invoices, a backtest (progress, histogram, table) and the
LLM margin per model and per customer, and every number on it equals the API's answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Route

from billow.local.server import apigw_event
from billow.services import apikeys
from functions.api.handler import lambda_handler as api
from functions.authorizer.handler import lambda_handler as authorizer
from functions.ingest.handler import lambda_handler as ingest
from tests.portal.conftest import Deployment
from tests.support.billing import PROFILE
from tests.support.catalog import plan_body

ORIGIN = "http://console.test"
NOW = "2026-05-01T00:10:00Z"


def serve(route: Route) -> None:
    """API Gateway in front of the handlers, for the browser."""
    req = route.request
    parts = urlsplit(req.url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    headers = {k.lower(): v for k, v in req.headers.items()}
    event = apigw_event(req.method, target, headers, req.post_data_buffer or b"", "127.0.0.1")
    if (req.method, parts.path) not in apikeys.PUBLIC:
        verdict = authorizer({"type": "REQUEST", "headers": headers, "routeKey": "$default"}, None)
        if not verdict["isAuthorized"]:
            route.fulfill(status=401, content_type="application/json", body='{"message":"Unauthorized"}')
            return
        event["requestContext"]["authorizer"] = {"lambda": verdict["context"]}
    out = (ingest if parts.path == "/api/v1/events" else api)(event, None)
    route.fulfill(status=out["statusCode"], headers={k: str(v) for k, v in (out.get("headers") or {}).items()},
                  body=out.get("body") or "")


@pytest.fixture
def world(aws: Deployment) -> Deployment:
    """acme (subject customer_1) on basic from April 1 (49.99 in advance, graduated tokens), 1,500 tokens in April,
    billed; LLM usage priced by overrides; the clock at May 1, 00:10."""
    d = aws
    d.clock.set("2026-03-31T00:00:00Z")
    d.admin("POST", "/api/v1/features", {"key": "tokens", "name": "Tokens", "meterSlug": "tokens"})
    d.admin("POST", "/api/v1/customers", {"key": "acme", "name": "Acme", "currency": "USD",
                                          "usageAttribution": {"subjectKeys": ["customer_1"]}})
    d.admin("POST", "/api/v1/billing/profiles", PROFILE)
    draft = d.admin("POST", "/api/v1/plans", plan_body("basic", "49.99"))
    d.admin("POST", f"/api/v1/plans/{draft['id']}/publish")
    d.admin("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme",
                                              "timing": "2026-04-01T00:00:00Z"})
    d.admin("POST", "/api/v1/llm/meters", {})
    d.admin("POST", "/api/v1/llm/prices", {"provider": "house", "model": "h1", "inputPerMillionTokens": "1",
                                           "outputPerMillionTokens": "2"})
    d.clock.set("2026-04-01T00:10:00Z")
    run(d)
    d.gw.usage(d.keys["admin"], "customer_1", 600, "2026-04-05T10:00:00Z")
    d.gw.usage(d.keys["admin"], "customer_1", 900, "2026-04-28T10:00:00Z")
    ev = {"specversion": "1.0", "id": "llm-1", "source": "t", "type": "llm", "subject": "customer_1",
          "time": "2026-04-10T10:00:00Z", "data": {"provider": "house", "model": "h1", "input_tokens": 2_000_000,
                                                   "output_tokens": 1_000_000, "cached_input_tokens": 0,
                                                   "cache_write_tokens": 0}}
    d.admin("POST", "/api/v1/events", [ev], content_type="application/cloudevents-batch+json")
    d.clock.set(NOW)
    run(d)
    return d


def run(d: Deployment) -> None:
    from functions.billing_run.handler import lambda_handler as billing_run

    body = json.dumps({"job": "billing_run", "namespace": "acme_co", "scheduledTime": "x"})
    billing_run({"Records": [{"body": body}]}, None)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    ctx = browser.new_context(timezone_id="UTC")
    p = ctx.new_page()
    p.clock.set_fixed_time(datetime.fromisoformat(NOW.replace("Z", "+00:00")))
    p.route(f"{ORIGIN}/**", serve)
    yield p
    ctx.close()


def cells(page: Page, selector: str) -> list[list[str]]:
    return page.eval_on_selector_all(f"{selector} tbody tr",
                                     "rows => rows.map(r => [...r.cells].map(c => c.textContent.trim()))")


def test_console_shows_what_the_api_answers(world: Deployment, page: Page) -> None:
    d = world
    page.goto(f"{ORIGIN}/console")
    page.fill("#key", d.keys["read"])
    page.click("#login button")
    page.wait_for_selector("#message:not([hidden])")
    assert "admin API key" in page.inner_text("#message")
    page.fill("#key", d.keys["admin"])
    page.click("#login button")
    page.wait_for_selector("body[data-state=ready]")
    # Meters: the tokens meter's daily values, as the meter query answers them.
    q = d.admin("GET", "/api/v1/meters/tokens/query", query={"windowSize": "DAY", "from": "2026-04-02T00:00:00Z"})
    want = [[r["windowStart"][:10], str(r["value"])] for r in q["data"] if r["value"] != 0]
    assert cells(page, ".meter[data-meter=tokens] table") == want and len(want) == 2
    # Customers: subscriptions, balances, invoices.
    cust = d.admin("GET", "/api/v1/customers/acme")
    subs = d.admin("GET", f"/api/v1/customers/{cust['id']}/subscriptions")["items"]
    assert cells(page, ".customer[data-customer=acme] table:nth-of-type(1)") == [
        [f"{s['plan']['key']}@{s['plan']['version']}", s["status"], s["activeFrom"], s["activeTo"] or ""] for s in subs]
    value = d.admin("GET", f"/api/v1/customers/{cust['id']}/entitlements/tokens/value")
    assert cells(page, ".customer[data-customer=acme] table:nth-of-type(2)") == [
        ["tokens", str(value["balance"]), str(value["usage"]), str(value["overage"])]]
    invoices = d.admin("GET", "/api/v1/billing/invoices", query={"customers": cust["id"]})["items"]
    assert cells(page, ".customer[data-customer=acme] table:nth-of-type(3)") == [
        [i["number"], i["status"], i["issuedAt"] or "", f"{i['totals']['total']} {i['currency']}"] for i in invoices]
    # The pricing lab: a backtest of a volume plan, its totals, histogram and table as the API answers them.
    page.fill("#bt-plan", "basic@1")
    page.fill("#bt-from", "2026-04-01T00:00:00Z")
    page.fill("#bt-to", "2026-05-01T00:00:00Z")
    page.click("#backtest-form button")
    page.wait_for_selector("#bt-result:not([hidden])")
    result = d.admin("POST", "/api/v1/billing/backtests", {"plan": "basic@1", "from": "2026-04-01T00:00:00Z",
                                                            "to": "2026-05-01T00:00:00Z"}, query={"wait": "true"})
    t = result["totals"]
    assert cells(page, "#bt-totals") == [[str(t["customers"]), t["currency"], t["current"], t["candidate"],
                                          t["difference"], t["differencePercent"] or ""]]
    assert cells(page, "#bt-table") == [[c["customerKey"], str(c["periods"]), c["current"], c["candidate"],
                                         c["difference"], c["differencePercent"] or ""] for c in result["customers"]]
    bars = page.eval_on_selector_all("#bt-histogram rect title", "ts => ts.map(t => t.textContent)")
    assert bars == [f"{b['label']}: {b['customers']}" for b in result["distribution"]["buckets"]]
    assert page.inner_text("#bt-progress-text") == "1 of 1 customers"
    # Margin per model and per customer.
    page.fill("#mg-from", "2026-04-01T00:00:00Z")
    page.fill("#mg-to", "2026-05-01T00:00:00Z")
    page.click("#margin-form button")
    page.wait_for_selector("#mg-result:not([hidden])")
    window = {"from": "2026-04-01T00:00:00Z", "to": "2026-05-01T00:00:00Z"}

    def shown(rows: list[dict[str, Any]], label: Any) -> list[list[str]]:
        return [[label(r), r["currency"], r["revenue"], "unpriced" if r["unpriced"] else r["cost"], r["margin"] or "",
                 r["marginPercent"] or ""] for r in rows]

    by_model = d.admin("GET", "/api/v1/llm/margin?groupBy=provider&groupBy=model&from=2026-04-01T00:00:00Z"
                              "&to=2026-05-01T00:00:00Z")
    assert cells(page, "#mg-model") == shown(by_model["data"], lambda r: f"{r['provider']} {r['model']}")
    by_customer = d.admin("GET", "/api/v1/llm/margin", query={"groupBy": "customer", **window})
    assert cells(page, "#mg-customer") == shown(by_customer["data"], lambda r: r["customerKey"])
    assert by_customer["data"][0]["revenue"] == "62.49" and by_customer["data"][0]["cost"] == "4"
    charts = page.eval_on_selector_all("#mg-customer-chart rect title", "ts => ts.map(t => t.textContent)")
    assert charts == ["acme: 62.49 revenue", "acme: 4 cost"]
