"""Subscription charges (pure domain): worked proration examples an accountant checks by hand, and properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from billow.domain import catalog, pricing
from billow.domain import subscriptions as subs
from billow.timeutil import format_rfc3339
from tests.conftest import t


def plan(fee: str, *, usage: dict[str, Any] | None = None, cadence: str = "P1M") -> dict[str, Any]:
    cards: list[dict[str, Any]] = [{"type": "flat_fee", "key": "base", "name": "Base", "billingCadence": cadence,
                                    "price": {"type": "flat", "amount": fee, "paymentTerm": "in_advance"}}]
    if usage is not None:
        cards.append({"type": "usage_based", "key": "tokens", "name": "Tokens", "featureKey": "tokens",
                      "billingCadence": cadence, "price": usage})
    return catalog.parse_plan({"key": "p", "name": "P", "currency": "USD", "billingCadence": cadence,
                               "phases": [{"key": "default", "name": "Default", "rateCards": cards}]})


def sub(p: dict[str, Any], start: datetime, end: datetime | None = None, anchor: datetime | None = None) -> dict[str, Any]:
    return {"id": "s", "currency": p["currency"], "billingCadence": p["billingCadence"],
            "billingAnchor": format_rfc3339(anchor or start), "proRatingConfig": p["proRatingConfig"],
            "activeFrom": format_rfc3339(start), "activeTo": format_rfc3339(end) if end else None,
            "phases": subs.phase_timeline(p["phases"], start), "addons": []}


def no_usage(feature: str, s: datetime, e: datetime) -> Decimal:
    return Decimal(0)


def owed(doc: dict[str, Any], at: datetime, usage: Any = no_usage) -> Decimal:
    start, end = subs.cycle(doc).containing(at)
    return pricing.totals(c.line for c in subs.charges(doc, start, end, usage=usage)).total


def test_mid_cycle_upgrade_by_hand() -> None:
    # $30/month from 1 April; upgraded to $100/month on 10 April 00:00 UTC. April has 30 days:
    # Basic served 9 days = 30 x 9/30 = 9.00; Pro served 21 days = 100 x 21/30 = 70.00.
    basic, pro = plan("30"), plan("100")
    a = sub(basic, t("2026-04-01T00:00:00Z"), end=t("2026-04-10T00:00:00Z"))
    b = sub(pro, t("2026-04-10T00:00:00Z"), anchor=t("2026-04-01T00:00:00Z"))
    assert owed(a, t("2026-04-05T00:00:00Z")) == Decimal("9.00")
    assert owed(b, t("2026-04-20T00:00:00Z")) == Decimal("70.00")
    # May: Pro in full, Basic nothing.
    assert owed(b, t("2026-05-03T00:00:00Z")) == Decimal("100")
    assert subs.charges(a, t("2026-05-01T00:00:00Z"), t("2026-06-01T00:00:00Z"), usage=no_usage) == []


def test_uneven_upgrade_rounds_each_line_half_up() -> None:
    # $49.99 -> $199 on 17 March 12:00 UTC (March: 31 days = 744 h). Served 16.5 days and 14.5 days:
    # 49.99 x 396/744 = 26.6075806... -> 26.61; 199 x 348/744 = 93.0806451... -> 93.08.
    anchor = t("2026-03-01T00:00:00Z")
    a = sub(plan("49.99"), anchor, end=t("2026-03-17T12:00:00Z"))
    b = sub(plan("199"), t("2026-03-17T12:00:00Z"), anchor=anchor)
    (line_a,) = subs.charges(a, anchor, t("2026-04-01T00:00:00Z"), usage=no_usage)
    (line_b,) = subs.charges(b, anchor, t("2026-04-01T00:00:00Z"), usage=no_usage)
    assert (line_a.line.total, line_b.line.total) == (Decimal("26.61"), Decimal("93.08"))
    assert str(line_a.line.proration) == "33/62" and str(line_b.line.proration) == "29/62"
    assert line_a.to_json()["proration"]["value"] == "0.532258"


def test_usage_is_measured_over_the_served_span_and_commitments_are_prorated() -> None:
    # $0.01/token with a $50 monthly minimum; the subscription starts on 16 April (15 of 30 days served):
    # minimum 50 x 15/30 = 25.00; 1,000 tokens = 10.00, topped up by 15.00 to the prorated minimum.
    p = plan("0", usage={"type": "unit", "amount": "0.01", "minimumAmount": "50"})
    doc = sub(p, t("2026-04-16T00:00:00Z"), anchor=t("2026-04-01T00:00:00Z"))
    asked: list[tuple[str, datetime, datetime]] = []

    def usage(feature: str, s: datetime, e: datetime) -> Decimal:
        asked.append((feature, s, e))
        return Decimal(1000)

    lines = subs.charges(doc, t("2026-04-01T00:00:00Z"), t("2026-05-01T00:00:00Z"), usage=usage)
    assert asked == [("tokens", t("2026-04-16T00:00:00Z"), t("2026-05-01T00:00:00Z"))]
    by_cat = {(c.line.category, c.item.rate_card["key"]): c.line.total for c in lines}
    assert by_cat[("regular", "tokens")] == Decimal("10.00")
    assert by_cat[("commitment", "tokens")] == Decimal("15.00")
    assert pricing.totals(c.line for c in lines).total == Decimal("25.00")


def test_proration_off_bills_the_whole_fee() -> None:
    p = plan("30")
    p["proRatingConfig"] = {"enabled": False, "mode": "prorate_prices"}
    doc = sub(p, t("2026-04-20T00:00:00Z"), anchor=t("2026-04-01T00:00:00Z"))
    assert owed(doc, t("2026-04-25T00:00:00Z")) == Decimal("30")


def test_phases_and_one_time_fees() -> None:
    p = catalog.parse_plan({"key": "p", "name": "P", "currency": "USD", "billingCadence": "P1M", "phases": [
        {"key": "trial", "name": "Trial", "duration": "P14D", "rateCards": [
            {"type": "flat_fee", "key": "setup", "name": "Setup", "billingCadence": None,
             "price": {"type": "flat", "amount": "99"}}]},
        {"key": "paid", "name": "Paid", "rateCards": [
            {"type": "flat_fee", "key": "base", "name": "Base", "billingCadence": "P1M",
             "price": {"type": "flat", "amount": "31"}}]}]})
    doc = sub(p, t("2026-01-01T00:00:00Z"))
    assert [ph["activeTo"] for ph in doc["phases"]] == ["2026-01-15T00:00:00Z", None]
    # January: setup 99 once + base for 17 of 31 days = 17.00.
    assert owed(doc, t("2026-01-02T00:00:00Z")) == Decimal("116.00")
    assert owed(doc, t("2026-02-02T00:00:00Z")) == Decimal("31")


def test_addon_quantity_timeline() -> None:
    doc = sub(plan("0"), t("2026-04-01T00:00:00Z"))
    seat = {"type": "flat_fee", "key": "seat", "name": "Seat", "billingCadence": "P1M",
            "price": {"type": "flat", "amount": "10", "paymentTerm": "in_advance"}}
    doc["addons"] = [{"id": "a1", "rateCards": [seat], "timeline": [
        {"quantity": 3, "activeFrom": "2026-04-01T00:00:00Z", "activeTo": "2026-04-16T00:00:00Z"},
        {"quantity": 5, "activeFrom": "2026-04-16T00:00:00Z", "activeTo": None}]}]
    # 3 seats x $10 for 15/30 days = 15.00; 5 seats for 15/30 = 25.00.
    assert owed(doc, t("2026-04-02T00:00:00Z")) == Decimal("40.00")


def test_an_add_on_laid_over_a_plan_card_of_its_key() -> None:
    """OpenMeter's addondiff apply: base $30 a month; add-on `base` $10 x2 from April 16 (a later span x1 from April
    21): April bills 30 x 15/30 = 15.00, 50 x 5/30 = 8.33 and 40 x 10/30 = 13.33 as the plan's Base, each part under
    a charge key of its own. An unpriced plan card takes the add-on's usage price (and its usage discount)."""
    doc = sub(plan("30"), t("2026-04-01T00:00:00Z"))
    doc["phases"][0]["rateCards"].append({"type": "usage_based", "key": "tokens", "name": "Tokens",
                                          "featureKey": "tokens", "billingCadence": "P1M", "price": None})
    base = {"type": "flat_fee", "key": "base", "name": "More", "billingCadence": "P1M",
            "price": {"type": "flat", "amount": "10", "paymentTerm": "in_advance"}}
    tokens = {"type": "usage_based", "key": "tokens", "name": "Tokens+", "featureKey": "tokens",
              "billingCadence": "P1M", "price": {"type": "unit", "amount": "0.5"},
              "discounts": {"usage": {"quantity": "4"}}}
    doc["addons"] = [{"id": "a1", "rateCards": [base], "timeline": [
        {"quantity": 2, "activeFrom": "2026-04-16T00:00:00Z", "activeTo": "2026-04-21T00:00:00Z"},
        {"quantity": 1, "activeFrom": "2026-04-21T00:00:00Z", "activeTo": None}]},
        {"id": "a2", "rateCards": [tokens], "timeline": [{"quantity": 1, "activeFrom": "2026-04-01T00:00:00Z",
                                                          "activeTo": None}]}]
    got = subs.charges(doc, t("2026-04-01T00:00:00Z"), t("2026-05-01T00:00:00Z"), usage=lambda f, s, e: Decimal(10))
    assert [(c.item.source, c.item.rate_card["name"], c.item.span, c.line.total) for c in got] == [
        ("phase:default", "Base", "", Decimal("15.00")),
        ("phase:default", "Base", "@2026-04-16T00:00:00Z", Decimal("8.33")),
        ("phase:default", "Base", "@2026-04-21T00:00:00Z", Decimal("13.33")),
        ("phase:default", "Tokens", "", Decimal("3.00"))]  # (10 - 4) x 0.5
    assert owed(doc, t("2026-05-02T00:00:00Z")) == Decimal("40")  # May: 30 + 10


@settings(max_examples=200, deadline=None)
@given(fee=st.decimals(min_value=0, max_value=100_000, places=2),
       offset_s=st.integers(min_value=0, max_value=30 * 86400))
def test_a_change_at_any_instant_neither_creates_nor_loses_money(fee: Decimal, offset_s: int) -> None:
    """Same price before and after a change: the two shares add up to the full fee within one minor unit per line."""
    anchor = t("2026-04-01T00:00:00Z")
    at = anchor + timedelta(seconds=offset_s)
    p = plan(str(fee))
    whole = owed(sub(p, anchor), anchor)
    assert whole == fee  # a full period is exactly the price
    a = sub(p, anchor, end=at) if at > anchor else None
    b = sub(p, at, anchor=anchor) if at < t("2026-05-01T00:00:00Z") else None
    parts = [owed(x, anchor) for x in (a, b) if x is not None]
    assert abs(sum(parts, Decimal(0)) - fee) <= Decimal("0.01") * len(parts)


def test_billing_anchor_in_another_month_length() -> None:
    # Anchored on 31 January: the periods end on the last day of shorter months (31 Jan -> 28 Feb -> 31 Mar).
    doc = sub(plan("28"), t("2026-01-31T00:00:00Z"))
    assert subs.cycle(doc).containing(t("2026-02-15T00:00:00Z")) == (t("2026-01-31T00:00:00Z"), t("2026-02-28T00:00:00Z"))
    assert owed(doc, t("2026-02-01T00:00:00Z")) == Decimal("28")
    assert datetime(2026, 3, 31, tzinfo=UTC) == subs.cycle(doc).containing(t("2026-03-01T00:00:00Z"))[1]
