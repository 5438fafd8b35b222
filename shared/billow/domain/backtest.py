"""Backtests (the pricing lab): what a candidate plan would have charged each customer over a window of real
usage, against what the customer was actually invoiced. Pure: no I/O (subscriptions, invoices and billing marks
come in as documents, usage through a callable).

Rating is the billing run's own: a candidate subscription is the customer's subscription (same span, same billing
anchor, same add-ons) with the candidate plan's phases, cadence, currency and proration, and
`billow.domain.subscriptions.charges` rates each of its billing periods. A billing period is in the window when it
starts in [from, to). The current side of a period and payment term is what the customer's invoices say for it
when the billing run billed it (its billing mark exists; voided and deleted invoices count nothing), else what the
current subscription charges (`charges` again: a period not yet invoiced, e.g. the running one)."""

from __future__ import annotations

import csv
import decimal
import io
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from billow.domain import subscriptions as subs
from billow.exact import EXACT
from billow.timeutil import parse_rfc3339

TERMS: Final = ("in_advance", "in_arrears")
# Edges (in percent of the current amount) of the distribution's buckets of differences.
BUCKET_EDGES: Final = (Decimal(-50), Decimal(-20), Decimal(-5), Decimal(0), Decimal(5), Decimal(20), Decimal(50))
_RATIO: Final = decimal.Context(prec=60)  # percentages are ratios: rounded, never money
CSV_COLUMNS: Final = ("customer_id", "customer_key", "customer_name", "currency", "periods", "current", "candidate",
                      "difference", "difference_percent")


def candidate_subscription(sub: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    """`sub` as if it had been on `plan`: same id (the billing marks never apply to it), span, anchor and add-ons;
    the plan's phases laid from the subscription's start, its cadence, currency and proration."""
    start = parse_rfc3339(sub["activeFrom"], "activeFrom")
    return {**sub, "plan": {"id": plan.get("id"), "key": plan.get("key"), "version": plan.get("version")},
            "currency": plan["currency"], "billingCadence": plan["billingCadence"],
            "proRatingConfig": plan.get("proRatingConfig") or {"enabled": True, "mode": "prorate_prices"},
            "phases": subs.phase_timeline(plan["phases"], start)}


def periods(sub: dict[str, Any], start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """The billing periods of `sub`'s cycle that begin in [start, end) and in which the subscription runs."""
    s, e = subs.t(sub["activeFrom"]), subs.t(sub.get("activeTo"))
    assert s is not None
    if e is not None and e <= s:
        return []
    grid = subs.cycle(sub)
    p = grid.containing(s)[0]
    if p < start:
        p = grid.containing(start)[0]
        if p < start:
            p = grid.next_after(p)
    out = []
    while p < end and (e is None or p < e):
        nxt = grid.next_after(p)
        out.append((p, nxt))
        p = nxt
    return out


def owed(charges: Iterable[subs.Charge], term: str | None = None) -> Decimal:
    """The total of the charges (of one payment term), as the billing run invoices them (line totals)."""
    with decimal.localcontext(EXACT):
        return sum((c.line.total for c in charges if term is None or c.line.payment_term == term), Decimal(0))


def invoiced(invoices: Iterable[dict[str, Any]], subs_by_id: Mapping[str, dict[str, Any]], *,
             include_dropped: bool = False) -> dict[tuple[str, datetime, str], Decimal]:
    """What the invoices billed per (subscription id, billing period start, payment term): the totals of their
    subscription lines' detailed lines, corrections included; voided, deleted and gathering invoices bill
    nothing (unless `include_dropped`: then voided and deleted ones count, to be taken off the billing marks).
    A line belongs to the billing period of its subscription's cycle that contains its start."""
    out: dict[tuple[str, datetime, str], Decimal] = defaultdict(Decimal)
    with decimal.localcontext(EXACT):
        for inv in invoices:
            dropped = inv.get("status") == "voided" or bool(inv.get("deletedAt"))
            if inv.get("status") == "gathering" or dropped != include_dropped:
                continue
            for line in inv.get("lines") or []:
                sub = subs_by_id.get(((line.get("subscription") or {}).get("id")) or "")
                if sub is None:
                    continue
                ps = subs.cycle(sub).containing(parse_rfc3339(line["period"]["from"], "period.from"))[0]
                for child in line.get("children") or []:
                    out[(sub["id"], ps, child.get("paymentTerm") or "in_arrears")] += Decimal(child["totals"]["total"])
    return dict(out)


def billed_amounts(marks: Mapping[tuple[str, datetime, str], Any],
                   dropped: Mapping[tuple[str, datetime, str], Decimal]) -> dict[tuple[str, datetime, str], Decimal]:
    """Per billing mark key, what stands invoiced: the mark's billed totals (`billow.domain.billing.Mark.billed`:
    line key -> {"total", ...}; the sum of every line the billing run invoiced for it) less what voided or deleted
    invoices held for it (`dropped`, from `invoiced(..., include_dropped=True)`)."""
    with decimal.localcontext(EXACT):
        return {k: sum((Decimal(v["total"]) for v in m.billed.values()), Decimal(0)) - dropped.get(k, Decimal(0))
                for k, m in marks.items()}


def current_owed(sub: dict[str, Any], period: tuple[datetime, datetime], *, billed: Collection[tuple[str, datetime, str]],
                 invoiced_amounts: Mapping[tuple[str, datetime, str], Decimal], usage: subs.UsageFn) -> Decimal:
    """What the customer pays for one billing period of `sub` today: per payment term, the invoiced amount once
    the billing run billed it (`billed` holds the billing marks' keys), else the subscription's charges."""
    charges: list[subs.Charge] | None = None
    total = Decimal(0)
    with decimal.localcontext(EXACT):
        for term in TERMS:
            key = (sub["id"], period[0], term)
            if key in billed:
                total += invoiced_amounts.get(key, Decimal(0))
                continue
            if charges is None:
                charges = subs.charges(sub, period[0], period[1], usage=usage)
            total += owed(charges, term)
    return total


def candidate_owed(cand: dict[str, Any], start: datetime, end: datetime, usage: subs.UsageFn) -> tuple[Decimal, int]:
    """What the candidate subscription charges for its billing periods in the window, and how many periods."""
    total, n = Decimal(0), 0
    with decimal.localcontext(EXACT):
        for ps, pe in periods(cand, start, end):
            total += owed(subs.charges(cand, ps, pe, usage=usage))
            n += 1
    return total, n


@dataclass(frozen=True)
class Row:
    """One customer's result; `current` and `candidate` in the candidate plan's currency, exact."""

    customer_id: str
    customer_key: str | None
    name: str | None
    currency: str
    periods: int
    current: Decimal
    candidate: Decimal

    @property
    def difference(self) -> Decimal:
        with decimal.localcontext(EXACT):
            return self.candidate - self.current

    @property
    def percent(self) -> Decimal | None:
        return percent(self.current, self.difference)

    def to_json(self) -> dict[str, Any]:
        pct = self.percent
        return {"customerId": self.customer_id, "customerKey": self.customer_key, "customerName": self.name,
                "currency": self.currency, "periods": self.periods, "current": money(self.current),
                "candidate": money(self.candidate), "difference": money(self.difference),
                "differencePercent": None if pct is None else format(pct, "f")}


def money(value: Decimal) -> str:
    return format(value, "f")


def percent(base: Decimal, difference: Decimal) -> Decimal | None:
    """difference / base in percent, rounded half-even to 2 places; None when base is 0 (no percentage of 0)."""
    if base == 0:
        return None
    with decimal.localcontext(_RATIO):
        return (difference * 100 / base).quantize(Decimal("0.01"), rounding=decimal.ROUND_HALF_EVEN)


def _bucket_label(lo: Decimal | None, hi: Decimal | None) -> str:
    if lo is None:
        return f"< {hi}%"
    if hi is None:
        return f">= {lo}%"
    return f"{lo}% to {hi}%"


def distribution(rows: Iterable[Row]) -> dict[str, Any]:
    """How many customers pay more, less or the same under the candidate, and how many in each bucket of the
    difference in percent of the current amount: [lo, hi) per bucket, 0 exactly in its own; a customer whose
    current amount is 0 and candidate amount is not counts under `fromZero` (no percentage of 0)."""
    edges = list(BUCKET_EDGES)
    bounds: list[tuple[Decimal | None, Decimal | None]] = [(None, edges[0])] + list(zip(edges, edges[1:], strict=False)) \
        + [(edges[-1], None)]
    counts = [0] * len(bounds)
    more = less = same = from_zero = 0
    for r in rows:
        d = r.difference
        more, less, same = more + (d > 0), less + (d < 0), same + (d == 0)
        if d == 0 or r.current == 0:
            from_zero += d != 0
            continue
        with decimal.localcontext(_RATIO):
            raw = d * 100 / r.current  # unrounded (to 60 digits): a tiny rise stays above 0
        for i, (lo, hi) in enumerate(bounds):
            if (lo is None or raw >= lo) and (hi is None or raw < hi):
                counts[i] += 1
                break
    buckets = [{"label": _bucket_label(lo, hi), "fromPercent": None if lo is None else str(lo),
                "toPercent": None if hi is None else str(hi), "customers": n} for (lo, hi), n in zip(bounds, counts, strict=True)]
    buckets.insert(edges.index(Decimal(0)) + 1, {"label": "0%", "fromPercent": "0", "toPercent": "0",
                                                  "customers": same})
    return {"more": more, "less": less, "same": same, "fromZero": from_zero, "buckets": buckets}


def totals(rows: Iterable[Row], currency: str) -> dict[str, Any]:
    """The sums over customers (exact), with the difference in percent of the current sum."""
    rows = list(rows)
    with decimal.localcontext(EXACT):
        cur = sum((r.current for r in rows), Decimal(0))
        cand = sum((r.candidate for r in rows), Decimal(0))
        diff = cand - cur
    pct = percent(cur, diff)
    return {"customers": len(rows), "currency": currency, "current": money(cur), "candidate": money(cand),
            "difference": money(diff), "differencePercent": None if pct is None else format(pct, "f")}


def to_csv(rows: Iterable[Row]) -> str:
    """One line per customer (CSV_COLUMNS), amounts exact."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        j = r.to_json()
        w.writerow([r.customer_id, r.customer_key or "", r.name or "", r.currency, r.periods, j["current"],
                    j["candidate"], j["difference"], j["differencePercent"] or ""])
    return buf.getvalue()
