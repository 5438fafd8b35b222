"""Backtests (issue 20 item 1): a candidate plan replayed on real usage, customer by customer, against what each was
invoiced; hand computations for every price type, proration at a plan change and commitments; the plan a
customer is on reproduces its invoices; nothing is written; bad input is a 400 naming the field."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from typing import Any

import pytest

from billow.errors import NotFound
from billow.services import backtests
from tests.billing.conftest import Billow
from tests.support.billing import invoices, scheduled_run, subscribed
from tests.support.catalog import plan_body, published

BASE = {"type": "flat_fee", "key": "base", "name": "Base fee", "billingCadence": "P1M",
        "price": {"type": "flat", "amount": "30", "paymentTerm": "in_advance"}}


def card(price: dict[str, Any], key: str = "tokens") -> dict[str, Any]:
    return {"type": "usage_based", "key": key, "name": "Tokens", "featureKey": "tokens", "billingCadence": "P1M",
            "price": price}


def inline(*cards: dict[str, Any], currency: str = "USD") -> dict[str, Any]:
    return {"key": "candidate", "name": "Candidate", "currency": currency, "billingCadence": "P1M",
            "phases": [{"key": "default", "name": "Default", "rateCards": list(cards)}]}


def april(b: Billow) -> dict[str, Any]:
    """acme on basic (49.99 in advance + graduated tokens: 1,000 x 0.01, then 0.005) from April 1; 1,500 tokens
    in April; billed at May 1 (April: 49.99 + 12.50 = 62.49)."""
    sub = subscribed(b)
    b.clock.set("2026-04-01T00:10:00Z")
    scheduled_run(b)
    b.usage(600, "2026-04-05T10:00:00Z")
    b.usage(900, "2026-04-28T10:00:00Z")
    b.clock.set("2026-05-01T00:10:00Z")
    scheduled_run(b)
    return sub


def backtest(b: Billow, plan: Any, frm: str = "2026-04-01T00:00:00Z", to: str = "2026-05-01T00:00:00Z",
             **extra: Any) -> dict[str, Any]:
    return b.ok("POST", "/api/v1/billing/backtests", {"plan": plan, "from": frm, "to": to, **extra},  # type: ignore[no-any-return]
                query={"wait": "true"})


def row(result: dict[str, Any], key: str = "acme") -> tuple[str, str, str, str | None]:
    (r,) = [r for r in result["customers"] if r["customerKey"] == key]
    return r["current"], r["candidate"], r["difference"], r["differencePercent"]


def test_each_price_type_equals_the_hand_computation(billow: Billow) -> None:
    b = billow
    april(b)
    # Current: April's invoices, 49.99 + 12.50 = 62.49.
    volume = card({"type": "tiered", "mode": "volume", "tiers": [
        {"upToAmount": "1000", "unitPrice": {"type": "unit", "amount": "0.01"}},
        {"unitPrice": {"type": "unit", "amount": "0.004"}}]})
    # Volume: all 1,500 at the second tier's 0.004 = 6.00; + 30 base = 36.00; -26.49 = -42.39 % of 62.49.
    assert row(backtest(b, inline(BASE, volume))) == ("62.49", "36.00", "-26.49", "-42.39")
    graduated = card({"type": "tiered", "mode": "graduated", "tiers": [
        {"upToAmount": "1000", "unitPrice": {"type": "unit", "amount": "0.02"}},
        {"unitPrice": {"type": "unit", "amount": "0.01"}}]})
    # Graduated: 1,000 x 0.02 + 500 x 0.01 = 25.00; + 30 = 55.00.
    assert row(backtest(b, inline(BASE, graduated))) == ("62.49", "55.00", "-7.49", "-11.99")
    # Package: 2.00 per started 1,000 tokens: 2 packages = 4.00 (alone: no base fee).
    assert row(backtest(b, inline(card({"type": "package", "amount": "2", "quantityPerPackage": "1000"}))))[1] == "4.00"
    # Dynamic: the meter's value times 0.002 = 3.00.
    assert row(backtest(b, inline(card({"type": "dynamic", "multiplier": "0.002"}))))[1] == "3.00"
    # Flat alone, in arrears: 75 for the month, +12.51 = +20.02 %.
    flat = {**BASE, "price": {"type": "flat", "amount": "75", "paymentTerm": "in_arrears"}}
    assert row(backtest(b, inline(flat))) == ("62.49", "75.00", "12.51", "20.02")
    # Unit with commitments: 1,500 x 0.001 = 1.50, raised to the minimum spend of 5; capped at 1 by a maximum.
    assert row(backtest(b, inline(card({"type": "unit", "amount": "0.001", "minimumAmount": "5"}))))[1] == "5.00"
    assert row(backtest(b, inline(card({"type": "unit", "amount": "0.001", "maximumAmount": "1"}))))[1] == "1.00"


def test_the_plan_the_customer_is_on_reproduces_its_invoices(billow: Billow) -> None:
    b = billow
    b.ok("POST", "/api/v1/customers", {"key": "beta", "name": "Beta", "currency": "USD",
                                       "usageAttribution": {"subjectKeys": ["customer_2"]}})
    sub = april(b)
    b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "beta",
                                           "timing": "2026-05-01T00:10:00Z"})
    b.usage(2500, "2026-05-10T10:00:00Z")
    b.usage(300, "2026-05-11T10:00:00Z", subject="customer_2")
    b.usage(40, "2026-04-30T23:00:00Z")  # late for April: a correction on the next invoice
    b.clock.set("2026-05-02T00:00:00Z")
    scheduled_run(b)
    b.clock.set("2026-06-01T00:10:00Z")
    scheduled_run(b)
    out = backtest(b, "basic@1", "2026-04-01T00:00:00Z", "2026-06-01T00:00:00Z")
    assert {r["customerKey"]: r["difference"] for r in out["customers"]} == {"acme": "0.00", "beta": "0.00"}
    assert out["totals"]["difference"] == "0.00" and out["distribution"]["same"] == 2
    # acme: April 49.99 + 12.50 + 0.20 (the late 40 tokens, a correction) and May 49.99 + 17.50 = 130.18, what
    # its invoices say for April and May (June's base fee, in advance, is June's).
    june_fee = Decimal("49.99")
    billed = sum((Decimal(i["totals"]["amount"]) - Decimal(i["totals"]["discountsTotal"]) for i in invoices(b)
                  if i["customer"]["id"] == sub["customerId"]), Decimal(0))
    assert row(out)[:2] == ("130.18", "130.18") and billed - june_fee == Decimal("130.18")
    # beta, from May 1 00:10: 49.99 x (prorated, 31 days less 10 minutes) + 300 tokens x 0.01.
    assert row(out, "beta")[0] == row(out, "beta")[1]


def test_proration_at_a_mid_period_plan_change(billow: Billow) -> None:
    b = billow
    sub = subscribed(b)
    published(b, plan_body("pro", "199"))
    b.clock.set("2026-04-01T00:10:00Z")
    scheduled_run(b)
    b.usage(600, "2026-04-05T10:00:00Z")
    b.clock.set("2026-04-17T12:00:00Z")
    b.ok("POST", f"/api/v1/subscriptions/{sub['id']}/change", {"timing": "immediate", "plan": {"key": "pro"}})
    b.usage(200, "2026-04-20T10:00:00Z")
    b.clock.set("2026-05-01T00:10:00Z")
    scheduled_run(b)
    # Current (invoiced): basic 49.99 - 22.50 = 27.49 and 600 tokens 6.00; pro 199 x 324/720 h = 89.55 and its
    # 200 tokens 2.00 (its tiers start again): 125.04.
    # Candidate, 100 in advance + 0.002 a token: basic's share 100 x 396/720 = 55.00 + 1.20, pro's 45.00 + 0.40.
    unit = card({"type": "unit", "amount": "0.002"})
    out = backtest(b, inline({**BASE, "price": {"type": "flat", "amount": "100", "paymentTerm": "in_advance"}}, unit))
    assert row(out) == ("125.04", "101.60", "-23.44", "-18.75")
    assert out["customers"][0]["periods"] == 2  # one April period on each subscription


def test_periods_not_yet_invoiced_compare_with_the_current_plan(billow: Billow) -> None:
    b = billow
    subscribed(b)
    b.clock.set("2026-04-01T00:10:00Z")
    scheduled_run(b)  # April's 49.99 invoiced in advance; the usage will be at April's end
    b.usage(1500, "2026-04-05T10:00:00Z")
    b.clock.set("2026-04-20T00:00:00Z")
    out = backtest(b, inline(BASE), "2026-04-01T00:00:00Z", "2026-04-20T00:00:00Z")
    # Current: 49.99 invoiced + 12.50 the usage to date costs on basic; candidate 30.
    assert row(out) == ("62.49", "30.00", "-32.49", "-51.99")


def test_runs_as_a_job_with_progress_and_csv(billow: Billow) -> None:
    b = billow
    april(b)
    status, job = b.call("POST", "/api/v1/billing/backtests", {"plan": {"key": "basic", "version": 1},
                                                               "from": "2026-04-01T00:00:00Z", "to": "2026-05-01T00:00:00Z",
                                                               "customers": ["acme"]})
    assert status == 202 and job["status"] == "queued"  # handed to billow serve's thread runner
    assert b.c.job_runner().join(job["id"], 30)
    assert b.ok("GET", f"/api/v1/info/progress/{job['id']}") == {"success": 1, "failed": 0, "total": 1,
                                                                  "updatedAt": "2026-05-01T00:10:00Z"}
    done = b.ok("GET", f"/api/v1/billing/backtests/{job['id']}")
    assert done["status"] == "succeeded" and row(done) == ("62.49", "62.49", "0.00", "0.00")
    from functions.api.handler import lambda_handler as api
    from tests.entitlements.conftest import apigw_event

    out = api(apigw_event("GET", f"/api/v1/billing/backtests/{job['id']}", {"accept": "text/csv"}, b"", "127.0.0.1"), None)
    assert out["statusCode"] == 200 and out["headers"]["Content-Type"].startswith("text/csv")
    assert out["body"].splitlines()[1].endswith(",USD,1,62.49,62.49,0.00,0.00")
    assert b.call("GET", "/api/v1/info/progress/nope")[0] == 404
    with pytest.raises(NotFound):  # a job is its namespace's only
        backtests.get("another_namespace", job["id"], jobs=b.c.backtest_jobs(), now=b.clock.now())


def _snapshot(b: Billow) -> tuple[list[str], Any]:
    """Every row of the meta database but the backtest jobs' own (the one thing a backtest keeps), the stored
    events and the usage."""
    url = str(b.c.meta.engine.url)
    db = sqlite3.connect(url.split("///", 1)[1])
    try:
        dump = [line for line in db.iterdump() if not line.startswith('INSERT INTO "backtest_jobs"')]
    finally:
        db.close()
    events = [(s.event.to_json(), s.ingested_at) for s in b.c.usage.list_events(
        b.c.settings.namespace, subjects=None, start=None, end=None, event_id=None, limit=1000)]
    usage = b.ok("GET", "/api/v1/meters/tokens/query", query={"windowSize": "DAY"})
    return dump, (events, usage)


def test_a_backtest_writes_nothing(billow: Billow) -> None:
    b = billow
    april(b)
    before = _snapshot(b)
    out = backtest(b, inline(BASE))
    assert row(out)[1] == "30.00"
    assert _snapshot(b) == before
    assert b.c.backtest_jobs().get(b.c.settings.namespace, out["id"]) is not None  # the job, kept for its readers


def test_bad_input_names_the_field(billow: Billow) -> None:
    b = billow
    april(b)

    def field(body: dict[str, Any]) -> str:
        status, out = b.call("POST", "/api/v1/billing/backtests", {"from": "2026-04-01T00:00:00Z",
                                                                   "to": "2026-05-01T00:00:00Z", **body})
        assert status == 400, out
        return str(out["validationErrors"][0]["field"])

    assert field({"plan": "nope"}) == "plan.key"
    assert field({"plan": "basic@7"}) == "plan.version"
    assert field({"plan": "basic@" + "9" * 5000}) == "plan.version"  # not int()'s ValueError past 4,300 digits
    assert field({"plan": "basic@١"}) == "plan.version"
    assert field({"plan": {"key": "basic", "version": 9}}) == "plan.version"
    assert field({"plan": {"id": "01NOPE"}}) == "plan.id"
    assert field({"plan": "basic", "from": "2026-06-01T00:00:00Z", "to": "2026-07-01T00:00:00Z"}) == "from"
    assert field({"plan": "basic", "to": "2026-05-02T00:00:00Z"}) == "to"
    assert field({"plan": "basic", "to": "2026-03-01T00:00:00Z"}) == "to"
    assert field({"plan": inline(BASE, currency="EUR")}) == "plan.currency"
    published(b, {**plan_body("euro", "10"), "currency": "EUR"})
    assert field({"plan": "euro"}) == "plan"
    assert field({"plan": "basic", "customers": ["ghost"]}) == "customers[0]"
    assert field({"plan": "basic", "customers": {"planKey": "ghost"}}) == "customers.planKey"
    assert field({"plan": inline(card({"type": "unit", "amount": "-1"}))}).startswith("plan.phases[0].rateCards[0]")
    assert field({"plan": inline({**card({"type": "unit", "amount": "1"}, "ghost"), "featureKey": "ghost"})}) == \
        "plan.phases[0].rateCards[0].featureKey"
    assert field({}) == "plan"


def test_the_worked_example_of_docs_pricing_lab(billow: Billow) -> None:
    """docs/pricing-lab.md: plan `standard` (49 a month + graduated tokens: 1,000 at 0.01, then 0.005) against its
    version 2 draft (volume: all tokens at 0.01 up to 1,000, at 0.006 above), April's usage of three customers."""
    b = billow
    from tests.support.billing import PROFILE
    from tests.support.catalog import setup

    setup(b)
    b.ok("POST", "/api/v1/billing/profiles", PROFILE)
    for key, subject in (("beta", "customer_2"), ("gamma", "customer_3")):
        b.ok("POST", "/api/v1/customers", {"key": key, "name": key.title(), "currency": "USD",
                                           "usageAttribution": {"subjectKeys": [subject]}})
    b.clock.set("2026-03-31T00:00:00Z")
    standard = plan_body("standard", "49")
    published(b, standard)
    for key in ("acme", "beta", "gamma"):
        b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "standard"}, "customerKey": key,
                                               "timing": "2026-04-01T00:00:00Z"})
    b.clock.set("2026-04-01T00:10:00Z")
    scheduled_run(b)
    for tokens, subject in ((800, "customer_1"), (1500, "customer_2"), (12000, "customer_3")):
        b.usage(tokens, "2026-04-15T12:00:00Z", subject=subject)
    b.clock.set("2026-05-01T00:10:00Z")
    scheduled_run(b)
    volume = plan_body("standard", "49")
    volume["phases"][0]["rateCards"][1]["price"] = {"type": "tiered", "mode": "volume", "tiers": [
        {"upToAmount": "1000", "unitPrice": {"type": "unit", "amount": "0.01"}},
        {"unitPrice": {"type": "unit", "amount": "0.006"}}]}
    draft = b.ok("POST", "/api/v1/plans", volume)
    assert (draft["version"], draft["status"]) == (2, "draft")
    out = backtest(b, "standard@2")
    assert [(r["customerKey"], r["current"], r["candidate"], r["difference"], r["differencePercent"])
            for r in out["customers"]] == [("acme", "57.00", "57.00", "0.00", "0.00"),
                                           ("beta", "61.50", "58.00", "-3.50", "-5.69"),
                                           ("gamma", "114.00", "121.00", "7.00", "6.14")]
    assert out["totals"] == {"customers": 3, "currency": "USD", "current": "232.50", "candidate": "236.00",
                             "difference": "3.50", "differencePercent": "1.51"}
    assert (out["distribution"]["more"], out["distribution"]["less"], out["distribution"]["same"]) == (1, 1, 1)


def test_voided_and_deleted_invoices_count_nothing(billow: Billow) -> None:
    b = billow
    from tests.support.billing import PROFILE

    subscribed(b, {**PROFILE, "workflow": {"invoicing": {"autoAdvance": False}}})  # invoices wait as drafts
    b.clock.set("2026-04-01T00:10:00Z")
    (april_fee,) = b.ok("POST", "/api/v1/billing/invoices/invoice", {"customerId": "acme"})
    b.usage(1500, "2026-04-05T10:00:00Z")
    b.clock.set("2026-05-01T00:10:00Z")
    (may,) = b.ok("POST", "/api/v1/billing/invoices/invoice", {"customerId": "acme"})
    assert row(backtest(b, "basic@1"))[:3] == ("62.49", "62.49", "0.00")  # drafts stand invoiced
    b.ok("POST", f"/api/v1/billing/invoices/{april_fee['id']}/void")
    # April's 49.99 voided: only the usage, 12.50 (on May's invoice), stands; the plan would charge 62.49.
    assert row(backtest(b, "basic@1"))[:3] == ("12.50", "62.49", "49.99")
    assert b.call("DELETE", f"/api/v1/billing/invoices/{may['id']}")[0] == 204
    # May's draft deleted: the April usage it held is owed again (its billing mark gave it back, the next invoice
    # bills it), so the current side rates it as not yet invoiced: 12.50, never twice, also once it is billed again.
    assert row(backtest(b, "basic@1"))[:3] == ("12.50", "62.49", "49.99")
    (again,) = b.ok("POST", "/api/v1/billing/invoices/invoice", {"customerId": "acme"})
    assert again["totals"]["total"] == "62.49"  # April's usage and May's fee, billed again
    assert row(backtest(b, "basic@1"))[:3] == ("12.50", "62.49", "49.99")
