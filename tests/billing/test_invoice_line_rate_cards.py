"""Invoice lines carry the rate card that produced them, as OpenMeter's lines do (issue 16): `rateCard`
(InvoiceUsageBasedRateCard: featureKey, price, taxConfig, discounts) and the deprecated top-level `price`,
`featureKey` and `taxConfig`; each detailed line its flat rate card and the tax config; the subscription reference
names the subscription, phase and item (ids of the subscription's own view) and the billing period. Every served
line validates against OpenMeter's InvoiceLine schema. For subscription lines, one-off (pending) lines, given
either as `rateCard` or with the deprecated fields, and simulated lines."""

from __future__ import annotations

import copy
from typing import Any

from billow.ids import is_ulid
from tests.billing.conftest import Billow
from tests.support.billing import PROFILE, invoices, scheduled_run
from tests.support.catalog import TIERS, plan_body, published, setup
from tests.support.openmeter_schema import assert_conforms, errors

TOKENS_TAX = {"behavior": "exclusive", "stripe": {"code": "txcd_10000000"}}
CALLS_TAX = {"behavior": "inclusive", "customInvoicing": {"code": "VAT-7"}}
BASE_TAX = {"stripe": {"code": "txcd_20030000"}}
UNIT = {"type": "unit", "amount": "0.0125", "maximumAmount": "500"}


def _plan() -> dict[str, Any]:
    body = plan_body("taxed", "49.99", extra=[
        {"type": "usage_based", "key": "calls", "name": "Calls", "featureKey": "calls", "billingCadence": "P1M",
         "price": UNIT, "taxConfig": CALLS_TAX, "discounts": {"percentage": {"percentage": 10}}}])
    base, tokens, _ = body["phases"][0]["rateCards"]
    base["taxConfig"] = BASE_TAX
    tokens["taxConfig"] = TOKENS_TAX
    return body


def _invoiced_april(b: Billow) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    setup(b)
    b.ok("POST", "/api/v1/features", {"key": "calls", "name": "Calls", "meterSlug": "tokens"})
    b.ok("POST", "/api/v1/billing/profiles", PROFILE)
    b.clock.set("2026-03-31T00:00:00Z")
    plan = published(b, _plan())
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "taxed"}, "customerKey": "acme",
                                                 "timing": "2026-04-01T00:00:00Z"})
    b.clock.set("2026-04-01T00:10:00Z")
    scheduled_run(b)
    b.usage(1500, "2026-04-05T10:00:00Z")
    b.clock.set("2026-05-01T00:10:00Z")
    scheduled_run(b)
    may = next(i for i in invoices(b) if any(ln["name"] == "Tokens" for ln in i["lines"]))
    served = b.ok("GET", f"/api/v1/billing/invoices/{may['id']}", query={"expand": "lines"})
    return plan, b.ok("GET", f"/api/v1/subscriptions/{sub['id']}"), served


def test_subscription_lines_carry_the_plans_rate_card_and_validate_as_openmeters_lines(billow: Billow) -> None:
    b = billow
    plan, sub, invoice = _invoiced_april(b)
    cards = {rc["key"]: rc for rc in b.ok("GET", f"/api/v1/plans/{plan['id']}")["phases"][0]["rateCards"]}
    lines = {ln["name"]: ln for ln in invoice["lines"]}
    assert set(lines) == {"Tokens", "Calls", "Base fee"}  # April's usage, May's fee in advance

    for ln in invoice["lines"]:
        assert_conforms("InvoiceLine", ln)
    tokens, calls, base = lines["Tokens"], lines["Calls"], lines["Base fee"]
    # The rate card as the plan has it: exact prices (decimal strings), the tax config as written.
    assert tokens["rateCard"] == {"featureKey": "tokens", "price": cards["tokens"]["price"], "taxConfig": TOKENS_TAX}
    assert tokens["rateCard"]["price"]["tiers"][0]["unitPrice"] == TIERS[0]["unitPrice"]
    assert (tokens["price"], tokens["featureKey"], tokens["taxConfig"]) == (
        cards["tokens"]["price"], "tokens", TOKENS_TAX)  # the deprecated copies
    assert calls["rateCard"] == {"featureKey": "calls", "price": {"type": "unit", "amount": "0.0125",
                                                                  "maximumAmount": "500"},
                                 "taxConfig": CALLS_TAX, "discounts": {"percentage": {"percentage": 10}}}
    assert calls["rateCard"]["price"] == cards["calls"]["price"] and calls["taxConfig"] == CALLS_TAX
    assert base["type"] == "usage_based"  # OpenMeter's lines are all usage based; a flat fee has a flat price
    assert base["rateCard"] == {"price": {"type": "flat", "amount": "49.99", "paymentTerm": "in_advance"},
                                "taxConfig": BASE_TAX}
    assert "featureKey" not in base and base["price"] == cards["base"]["price"]
    # Amounts unchanged: 1000 x 0.01 + 500 x 0.005; 1500 x 0.0125 = 18.75 less 10% (1.88, rounded on its own).
    assert (tokens["totals"]["total"], calls["totals"]["total"], base["totals"]["total"]) == ("12.50", "16.87", "49.99")

    # Each detailed line: its flat price per unit and quantity, and the line's tax config.
    assert [(ch["rateCard"], ch["taxConfig"]) for ch in tokens["children"]] == [
        ({"price": {"type": "flat", "amount": "0.01", "paymentTerm": "in_arrears"}, "quantity": "1000",
          "taxConfig": TOKENS_TAX}, TOKENS_TAX),
        ({"price": {"type": "flat", "amount": "0.005", "paymentTerm": "in_arrears"}, "quantity": "500",
          "taxConfig": TOKENS_TAX}, TOKENS_TAX)]

    # The subscription reference names the subscription's own phase and item ids and the billing period.
    phase = sub["phases"][0]
    items = {it["key"]: it["id"] for it in phase["items"]}
    assert tokens["subscription"] == {"id": sub["id"], "subscription": {"id": sub["id"]}, "phase": {"id": phase["id"]},
                                      "item": {"id": items["tokens"]},
                                      "billingPeriod": {"from": "2026-04-01T00:00:00Z", "to": "2026-05-01T00:00:00Z"}}
    assert base["subscription"]["item"] == {"id": items["base"]}
    assert base["subscription"]["billingPeriod"] == {"from": "2026-05-01T00:00:00Z", "to": "2026-06-01T00:00:00Z"}
    assert all(is_ulid(i) for i in (phase["id"], *items.values()))  # OpenMeter's id pattern


def test_the_schema_check_refuses_what_billow_served_before(billow: Billow) -> None:
    """The check is not vacuous: the line shape Billow served before (a flat fee typed flat_fee, a null
    featureKey, a subscription reference without subscription and billingPeriod and with non-ULID phase and item
    ids, detailed lines without createdAt) is refused."""
    b = billow
    _, _, invoice = _invoiced_april(b)
    old = copy.deepcopy(next(ln for ln in invoice["lines"] if ln["name"] == "Base fee"))
    old.update(type="flat_fee", featureKey=None, subscription={"id": old["subscription"]["id"],
                                                               "phase": {"id": "x-default"}, "item": {"id": "x-base"}})
    del old["children"][0]["createdAt"]
    problems = " ".join(errors("InvoiceLine", old))
    for part in ("type", "featureKey", "subscription", "phase/id", "item/id", "createdAt"):
        assert part in problems, (part, problems)


def _pending(b: Billow) -> tuple[str, dict[str, Any]]:
    setup(b)
    b.ok("POST", "/api/v1/billing/profiles", PROFILE)
    b.clock.set("2026-04-01T00:00:00Z")
    customer = b.ok("GET", "/api/v1/customers/acme")
    return f"/api/v1/billing/customers/{customer['id']}/invoices/pending-lines", customer


PERIOD = {"from": "2026-03-31T00:00:00Z", "to": "2026-04-01T00:00:00Z"}


def test_one_off_lines_carry_their_rate_card_given_either_way(billow: Billow) -> None:
    b = billow
    path, customer = _pending(b)
    usage_card = {"featureKey": "tokens", "price": {"type": "unit", "amount": "0.02"}, "taxConfig": TOKENS_TAX,
                  "discounts": {"percentage": {"percentage": 25}}}
    by_card = {"name": "Extra tokens", "period": PERIOD, "invoiceAt": "2026-04-01T00:05:00Z", "rateCard": usage_card}
    deprecated = {"name": "Onboarding", "period": PERIOD, "invoiceAt": "2026-04-01T00:05:00Z",
                  "price": {"type": "flat", "amount": "150", "paymentTerm": "in_advance"}, "taxConfig": BASE_TAX}
    added = b.ok("POST", path, {"currency": "USD", "lines": [by_card, deprecated]})
    for ln in added["lines"]:
        assert_conforms("InvoiceLine", ln)
    extra, onboarding = added["lines"]
    assert extra["rateCard"] == usage_card and (extra["price"], extra["featureKey"], extra["taxConfig"]) == (
        usage_card["price"], "tokens", TOKENS_TAX)
    assert onboarding["rateCard"] == {"price": deprecated["price"], "taxConfig": BASE_TAX}
    assert onboarding["type"] == "usage_based" and "featureKey" not in onboarding

    b.usage(400, "2026-03-31T12:00:00Z")
    b.clock.set("2026-04-01T00:10:00Z")
    b.ok("POST", "/api/v1/billing/invoices/invoice", {"customerId": customer["id"]})
    (inv,) = [i for i in invoices(b) if i["status"] != "gathering"]
    lines = {ln["name"]: ln for ln in b.ok("GET", f"/api/v1/billing/invoices/{inv['id']}")["lines"]}
    for ln in lines.values():
        assert_conforms("InvoiceLine", ln)
    assert lines["Extra tokens"]["rateCard"] == usage_card
    assert lines["Extra tokens"]["totals"]["total"] == "6.00"  # 400 x 0.02 = 8.00, the rate card's 25% off
    assert [ch["taxConfig"] for ch in lines["Extra tokens"]["children"]] == [TOKENS_TAX]
    assert lines["Onboarding"]["rateCard"] == {"price": deprecated["price"], "taxConfig": BASE_TAX}
    assert lines["Onboarding"]["children"][0]["rateCard"] == {
        "price": {"type": "flat", "amount": "150", "paymentTerm": "in_advance"}, "quantity": "1", "taxConfig": BASE_TAX}


def test_one_off_rate_card_refusals_name_the_field(billow: Billow) -> None:
    b = billow
    path, _ = _pending(b)
    line = {"name": "Extra tokens", "period": PERIOD, "invoiceAt": "2026-04-01T00:05:00Z",
            "rateCard": {"featureKey": "tokens", "price": {"type": "unit", "amount": "0.02"}, "taxConfig": TOKENS_TAX}}

    def refused(body_line: dict[str, Any], field: str) -> None:
        status, out = b.call("POST", path, {"currency": "USD", "lines": [body_line]})
        assert status == 400 and field in out["detail"], (status, out)

    refused({**line, "price": {"type": "unit", "amount": "0.03"}}, "lines[0].price")  # must equal rateCard.price
    refused({**line, "featureKey": "other"}, "lines[0].featureKey")
    refused({**line, "taxConfig": BASE_TAX}, "lines[0].taxConfig")
    refused({**line, "rateCard": {**line["rateCard"], "taxConfig": {"behavior": "sometimes"}}},
            "lines[0].rateCard.taxConfig.behavior")
    refused({**line, "rateCard": {**line["rateCard"], "featureKey": None}}, "lines[0].rateCard.featureKey")
    refused({**line, "rateCard": {"price": {"type": "flat", "amount": "1"}, "discounts": {"usage": {"quantity": "5"}}}},
            "lines[0].rateCard.discounts.usage")
    refused({**line, "rateCard": {"featureKey": "tokens"}}, "lines[0].rateCard.price")
    refused({k: v for k, v in line.items() if k != "rateCard"}, "lines[0].price")
    # The same fields given both ways, equal, are accepted.
    same = {**line, "price": line["rateCard"]["price"], "featureKey": "tokens", "taxConfig": TOKENS_TAX}
    assert b.ok("POST", path, {"currency": "USD", "lines": [same]})["lines"][0]["rateCard"] == line["rateCard"]


def test_simulated_lines_carry_their_rate_card(billow: Billow) -> None:
    b = billow
    _, customer = _pending(b)
    card = {"featureKey": "tokens", "price": {"type": "tiered", "mode": "graduated", "tiers": copy.deepcopy(TIERS)},
            "taxConfig": TOKENS_TAX}
    sim = b.ok("POST", f"/api/v1/billing/customers/{customer['id']}/invoices/simulate", {"currency": "USD", "lines": [
        {"name": "Tokens", "period": PERIOD, "invoiceAt": PERIOD["to"], "quantity": "1500", "rateCard": card}]})
    (line,) = sim["lines"]
    assert_conforms("InvoiceLine", line)
    assert line["rateCard"]["taxConfig"] == TOKENS_TAX and line["rateCard"]["featureKey"] == "tokens"
    assert line["totals"]["total"] == "12.50"
    assert [ch["taxConfig"] for ch in line["children"]] == [TOKENS_TAX, TOKENS_TAX]
