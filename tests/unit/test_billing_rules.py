"""The billing run's pure rules (billow.domain.billing): which billing points are due, and what a point owes
beyond what its billing mark says was billed (first run, re-run, late usage, a charge that went away)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from billow.domain import catalog
from billow.domain import subscriptions as subs
from billow.domain.billing import CORRECTION_WINDOW, Mark, Point, change, diff, due_points
from billow.timeutil import format_rfc3339
from tests.conftest import t

APRIL, MAY = t("2026-04-01T00:00:00Z"), t("2026-05-01T00:00:00Z")


def subscription(start: datetime = APRIL, end: datetime | None = None) -> dict[str, Any]:
    """$30/month in advance and $0.01/token in arrears, monthly from 1 April."""
    p = catalog.parse_plan({"key": "p", "name": "P", "currency": "USD", "billingCadence": "P1M", "phases": [
        {"key": "default", "name": "Default", "rateCards": [
            {"type": "flat_fee", "key": "base", "name": "Base", "billingCadence": "P1M",
             "price": {"type": "flat", "amount": "30", "paymentTerm": "in_advance"}},
            {"type": "usage_based", "key": "tokens", "name": "Tokens", "featureKey": "tokens", "billingCadence": "P1M",
             "price": {"type": "unit", "amount": "0.01"}}]}]})
    return {"id": "sub1", "currency": "USD", "billingCadence": "P1M", "billingAnchor": format_rfc3339(APRIL),
            "proRatingConfig": p["proRatingConfig"], "activeFrom": format_rfc3339(start),
            "activeTo": format_rfc3339(end) if end else None, "phases": subs.phase_timeline(p["phases"], start),
            "addons": []}


def due(sub: dict[str, Any], as_of: datetime, marks: dict[tuple[str, datetime, str], Mark] | None = None,
        now: datetime | None = None) -> list[tuple[str, str, int]]:
    return [(format_rfc3339(p.period[0]), p.term, p.mark.rev)
            for p in due_points(sub, as_of, marks or {}, now or as_of)]


def charges(sub: dict[str, Any], tokens: int) -> list[subs.Charge]:
    return subs.charges(sub, APRIL, MAY, usage=lambda feature, s, e: Decimal(tokens))


def test_in_advance_is_due_when_the_period_starts_in_arrears_when_it_ends() -> None:
    sub = subscription()
    assert due(sub, t("2026-03-31T23:59:59Z")) == []
    assert due(sub, t("2026-04-01T00:10:00Z")) == [("2026-04-01T00:00:00Z", "in_advance", 0)]
    assert due(sub, t("2026-05-01T00:00:00Z")) == [("2026-04-01T00:00:00Z", "in_advance", 0),
                                                  ("2026-04-01T00:00:00Z", "in_arrears", 0),
                                                  ("2026-05-01T00:00:00Z", "in_advance", 0)]


def test_a_subscription_ending_inside_a_period_owes_its_arrears_at_its_end_and_nothing_after() -> None:
    sub = subscription(end=t("2026-04-10T00:00:00Z"))
    assert due(sub, t("2026-04-09T23:59:00Z")) == [("2026-04-01T00:00:00Z", "in_advance", 0)]
    assert due(sub, t("2026-06-01T00:00:00Z")) == [("2026-04-01T00:00:00Z", "in_advance", 0),
                                                  ("2026-04-01T00:00:00Z", "in_arrears", 0)]
    assert due(subscription(start=APRIL, end=APRIL), t("2026-06-01T00:00:00Z")) == []  # canceled before it started


def test_a_marked_point_is_rechecked_until_the_correction_window_closes() -> None:
    sub = subscription()
    marks = {("sub1", APRIL, term): Mark("sub1", APRIL, term, 3, {}) for term in ("in_advance", "in_arrears")}
    as_of = t("2026-05-01T00:10:00Z")
    assert due(sub, as_of, marks, now=MAY + CORRECTION_WINDOW) == [("2026-04-01T00:00:00Z", "in_advance", 3),
                                                                  ("2026-04-01T00:00:00Z", "in_arrears", 3),
                                                                  ("2026-05-01T00:00:00Z", "in_advance", 0)]
    closed = MAY + CORRECTION_WINDOW + timedelta(seconds=1)
    assert due(sub, as_of, marks, now=closed) == [("2026-05-01T00:00:00Z", "in_advance", 0)]


def test_first_run_bills_everything_and_a_rerun_nothing() -> None:
    sub = subscription()
    point = Point(sub, (APRIL, MAY), "in_arrears", Mark("sub1", APRIL, "in_arrears", 0, {}))
    lines, billed = diff(point, charges(sub, 1000), MAY)
    assert [(ln["name"], ln["totals"]["total"]) for ln in lines] == [("Tokens", "10.00")]
    assert [(c["quantity"], c["totals"]["total"], c["paymentTerm"]) for c in lines[0]["children"]] == \
        [("1000", "10.00", "in_arrears")]
    # the mark records the metered usage too (a correction's line quantity is the usage since)
    assert list(billed.values()) == [{"total": "10.00", "quantity": "1000", "amount": "10.00", "discounts": "0",
                                      "usage": "1000"}]
    again, same = diff(replace(point, mark=replace(point.mark, rev=1, billed=billed)), charges(sub, 1000), MAY)
    assert (again, same) == ([], billed)


def test_late_usage_is_a_correction_and_a_charge_gone_is_credited_back() -> None:
    sub = subscription()
    first = Point(sub, (APRIL, MAY), "in_arrears", Mark("sub1", APRIL, "in_arrears", 0, {}))
    _, billed = diff(first, charges(sub, 1000), MAY)
    marked = replace(first, mark=Mark("sub1", APRIL, "in_arrears", 1, billed))
    lines, billed2 = diff(marked, charges(sub, 1500), MAY)  # 500 tokens arrived late
    (child,) = lines[0]["children"]
    assert (child["name"], child["quantity"], child["totals"]["total"]) == ("Tokens: usage in period (correction)", "500", "5.00")
    assert next(iter(billed2.values()))["total"] == "15.00"
    lines, billed3 = diff(marked, [], MAY)  # billed before, gone now (e.g. the period was shortened)
    (child,) = lines[0]["children"]
    assert (child["quantity"], child["totals"]["total"]) == ("-1000", "-10.00")
    assert next(iter(billed3.values()))["total"] == "0"


def test_a_point_bills_only_its_own_payment_term() -> None:
    sub = subscription()
    advance = Point(sub, (APRIL, MAY), "in_advance", Mark("sub1", APRIL, "in_advance", 0, {}))
    lines, _ = diff(advance, charges(sub, 1000), APRIL)
    assert [(ln["name"], ln["totals"]["total"]) for ln in lines] == [("Base", "30.00")]


def test_a_mark_gives_back_what_a_deleted_draft_billed_of_it() -> None:
    """Each invoice's part of a mark is recorded (`change` of the billed state, filed under the invoice's id); a draft
    deleted gives its part back (`without`): an entry left at zero goes, the point is reopened; a mark with nothing
    left is `empty`. Stored and read back (`doc`, `stored`) unchanged; `billed` holds line entries alone."""
    k, f = "plan|tokens|tier-1|regular", "plan|base|base|regular"
    a = {k: {"total": "6.00", "quantity": "600", "amount": "6.00", "discounts": "0", "usage": "600"}}
    b = {k: {"total": "7.00", "quantity": "700", "amount": "7.00", "discounts": "0", "usage": "700"},
         f: {"total": "49.99", "quantity": "1", "amount": "49.99", "discounts": "0"}}
    first, second = Mark("s", APRIL, "in_arrears", 0, {}).billed, a
    m = Mark("s", APRIL, "in_arrears", 2, b, APRIL, ("x",),
             {"inv1": change(first, a), "inv2": change(second, b)})
    assert m.invoices["inv2"] == {k: {"total": "1.00", "quantity": "100", "amount": "1.00", "discounts": "0",
                                      "usage": "100"}, f: b[f]}
    assert Mark.stored("s", APRIL, "in_arrears", 2, m.doc(), APRIL) == m and set(Mark.parts(m.doc())[0]) == {k, f}
    back = m.without("inv1")
    assert (back.billed, set(back.invoices), back.reopened, back.rev, back.empty) == (
        {k: {"total": "1.00", "quantity": "100", "amount": "1.00", "discounts": "0", "usage": "100"}, f: b[f]},
        {"inv2"}, True, 2, False)
    gone = back.without("inv2")
    assert (gone.billed, gone.invoices, gone.empty) == ({}, {}, True)
    assert Mark.stored("s", APRIL, "in_arrears", 3, back.doc(), APRIL).reopened is True
    assert m.without("other").billed == m.billed  # an invoice that billed nothing of it changes nothing
