"""The billing run's rules: which billing points are due, and what a point owes beyond what its billing mark says
was billed. Pure: no I/O (the clock is an argument).

A billing mark records what has been billed for one subscription period and payment term (per line key: total,
quantity, amount, discounts). A billing run rates a due point (a subscription period's in-advance or in-arrears
term), compares the result line key by line key with the point's mark and bills the difference: a first run bills
everything, a re-run nothing, late usage or a shortened period a correction. The new mark is written with the
invoice in one transaction, moving only from the revision the run read (ports.BillingStore.commit_billing)."""

from __future__ import annotations

import decimal
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from billow.domain import invoices as inv_rules
from billow.domain import subscriptions as subs
from billow.exact import EXACT
from billow.ids import new_id
from billow.timeutil import format_rfc3339

CORRECTION_WINDOW = timedelta(days=7)  # a period's points are re-checked for corrections this long after it ends


@dataclass(frozen=True)
class Mark:
    subscription_id: str
    period_start: datetime
    term: str  # in_advance | in_arrears
    rev: int  # the revision the run read (0: no mark yet)
    billed: dict[str, dict[str, str]]  # line key -> {"total", "quantity", "amount", "discounts"} (decimal strings)
    billed_at: datetime | None = None


@dataclass
class Point:
    sub: dict[str, Any]
    period: tuple[datetime, datetime]
    term: str
    mark: Mark  # rev 0 when new


def due_points(sub: dict[str, Any], as_of: datetime, marks: Mapping[tuple[str, datetime, str], Mark],
               now: datetime) -> list[Point]:
    """The billing points of `sub` due by `as_of`: each period's in-advance term at its start (or the
    subscription's), its in-arrears term at its end (or the subscription's end inside it). A point with a mark is
    re-checked (for corrections) until CORRECTION_WINDOW after its period ends; a new point gets rev 0."""
    start, end = subs.t(sub["activeFrom"]), subs.t(sub.get("activeTo"))
    assert start is not None
    if start > as_of or (end is not None and end <= start):
        return []
    grid = subs.cycle(sub)
    out = []
    ps = grid.containing(start)[0]
    while ps <= as_of and (end is None or ps < end):
        pe = grid.next_after(ps)
        for term, due_at in (("in_advance", max(ps, start)), ("in_arrears", min(pe, end) if end else pe)):
            if due_at > as_of:
                continue
            mark = marks.get((sub["id"], ps, term))
            if mark is not None and pe + CORRECTION_WINDOW < now:
                continue  # closed: corrections end CORRECTION_WINDOW after the period
            out.append(Point(sub, (ps, pe), term, mark or Mark(sub["id"], ps, term, 0, {})))
        ps = pe
    return out


def charge_key(c: subs.Charge) -> str:
    """What a mark records a billed amount under: source | rate card key | line key | category."""
    return f"{c.item.source}|{c.item.rate_card['key']}|{c.line.key}|{c.line.category}"


def diff(point: Point, charges: list[subs.Charge], now: datetime) -> tuple[list[dict[str, Any]], dict[str, dict[str, str]]]:
    """Invoice lines for what this point owes beyond what it was billed, and the new billed state."""
    billed: dict[str, dict[str, str]] = dict(point.mark.billed)
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    current: dict[str, subs.Charge] = {}
    for c in charges:
        if c.line.payment_term != point.term:
            continue
        k = charge_key(c)
        current[k] = c
    with decimal.localcontext(EXACT):
        keys = sorted(set(current) | set(billed))
        for k in keys:
            was = billed.get(k, {"total": "0", "quantity": "0", "amount": "0", "discounts": "0"})
            ch = current.get(k)
            if ch is None:  # billed before, gone now (e.g. the period was shortened): credited back in full
                total = qty = amount = disc = Decimal(0)
            else:
                total, qty = ch.line.total, ch.line.quantity
                amount, disc = ch.line.amount_rounded, ch.line.discounts_total
            d_total = total - Decimal(was["total"])
            d_qty = qty - Decimal(was["quantity"])
            if d_total == 0 and d_qty == 0:
                continue
            billed[k] = {"total": format(total, "f"), "quantity": plain(qty), "amount": format(amount, "f"),
                         "discounts": format(disc, "f")}
            if d_total == 0:
                continue  # a quantity that costs nothing more (e.g. inside a free allowance) is recorded, not invoiced
            correction = point.mark.rev > 0 and k in point.mark.billed
            source, card_key, line_key, category = k.split("|")
            item = ch.item if ch else None
            rc = item.rate_card if item else {"key": card_key, "name": card_key, "type": "usage_based"}
            group = groups.setdefault((source, card_key), _parent(point, rc, item, now))
            d_amount = amount - Decimal(was.get("amount", was["total"]))
            d_disc = disc - Decimal(was.get("discounts", "0"))
            group["children"].append({
                "id": new_id(), "name": f"{ch.line.description if ch else rc['name'] + ': ' + line_key}"
                                        f"{' (correction)' if correction else ''}",
                "type": "flat_fee", "managedBy": "subscription", "status": "valid", "category": category,
                "quantity": plain(d_qty), "perUnitAmount": plain(ch.line.unit_price) if ch else "0",
                "paymentTerm": point.term,
                "period": period_json(ch.line.period_start, ch.line.period_end) if ch else group["period"],
                "invoiceAt": format_rfc3339(now), "currency": point.sub["currency"],
                "totals": inv_rules.totals(d_amount, d_disc)})
    lines = []
    for group in groups.values():
        group["totals"] = inv_rules.sum_totals(group["children"])
        with decimal.localcontext(EXACT):
            group["quantity"] = plain(sum((Decimal(child["quantity"]) for child in group["children"]
                                            if child["category"] == "regular"), Decimal(0)))
        lines.append(group)
    return lines, billed


def plain(value: Decimal) -> str:
    """A quantity without trailing zeros (usage stores keep 18 decimals): 1500, 0.25, never 1.5E+3."""
    return "0" if value == 0 else format(value.normalize(), "f")


def period_json(s: datetime, e: datetime) -> dict[str, str]:
    return {"from": format_rfc3339(s), "to": format_rfc3339(e)}


def _parent(point: Point, rc: dict[str, Any], item: subs.Item | None, now: datetime) -> dict[str, Any]:
    sub = point.sub
    s, e = point.period
    if item is not None:
        s, e = max(s, item.start), min(e, item.end) if item.end else e
    return {"id": new_id(), "name": rc["name"], "type": rc["type"], "managedBy": "subscription", "status": "valid",
            "featureKey": rc.get("featureKey"), "price": rc.get("price"), "currency": sub["currency"],
            "period": period_json(s, e), "invoiceAt": format_rfc3339(now), "createdAt": format_rfc3339(now),
            "updatedAt": format_rfc3339(now),
            "subscription": {"id": sub["id"], "phase": {"id": f"{sub['id']}-{item.source.split(':', 1)[1].split('#')[0]}" if item else ""},
                             "item": {"id": f"{sub['id']}-{rc['key']}"}},
            "children": []}
