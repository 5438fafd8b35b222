"""LLM margin (the pricing lab, docs/pricing-lab.md): revenue against provider cost per customer, model, provider
or feature. Pure: no I/O.

Revenue is a customer's (what its invoices say for its billing periods in the window, and the current charges of
periods not yet invoiced); it is split over the customer's LLM usage (its (window, provider, model, feature) rows)
in proportion to their tokens, to the currency's minor unit by largest remainder, so the parts add up to the
revenue exactly. Cost is the LLM cost report's (USD, genai-prices or overrides). Margin = revenue - cost, only
where both are known in the same currency: usage no price covers is flagged unpriced (never free), and revenue
in another currency than USD has no margin (no exchange rates are guessed)."""

from __future__ import annotations

import decimal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from billow.domain.llm import plain
from billow.exact import EXACT
from billow.timeutil import format_rfc3339

_RATIO = decimal.Context(prec=60)


def allocate(amount: Decimal, weights: Sequence[Decimal], minor: Decimal) -> list[Decimal]:
    """`amount` split in proportion to `weights` (all equal when they sum to 0), each part a multiple of `minor`,
    the largest remainders getting the leftover units: the parts sum to `amount` exactly (an amount that is not a
    multiple of `minor` keeps its excess on the largest part)."""
    if not weights:
        return []
    with decimal.localcontext(EXACT):
        total_w = sum(weights, Decimal(0))
        ws = list(weights) if total_w > 0 else [Decimal(1)] * len(weights)
        total_w = sum(ws, Decimal(0))
        units = (amount / minor).to_integral_value(rounding=decimal.ROUND_FLOOR)
        excess = amount - units * minor
    with decimal.localcontext(_RATIO):
        shares = [units * w / total_w for w in ws]
    floors = [s.to_integral_value(rounding=decimal.ROUND_FLOOR) for s in shares]
    left = int(units - sum(floors, Decimal(0)))
    order = sorted(range(len(ws)), key=lambda i: (-(shares[i] - floors[i]), i))
    for i in order[:left]:
        floors[i] += 1
    with decimal.localcontext(EXACT):
        parts = [f * minor for f in floors]
        if excess:
            biggest = max(range(len(ws)), key=lambda i: ws[i])
            parts[biggest] += excess
    return parts


@dataclass
class Share:
    """A customer's LLM tokens (input + output) in one (window, groups): what its revenue is split by."""

    window_start: datetime | None
    window_end: datetime | None
    customer_id: str | None
    groups: dict[str, str | None]
    tokens: Decimal


@dataclass
class Spend:
    """LLM cost (USD) of one (window, customer if known, groups) row of the cost report, or None with the reason
    it is unpriced."""

    window_start: datetime | None
    window_end: datetime | None
    customer_id: str | None
    groups: dict[str, str | None]
    cost: Decimal | None
    reason: str = ""


@dataclass
class Row:
    key: tuple[Any, ...]
    window: tuple[datetime | None, datetime | None]
    customer: dict[str, Any] | None
    groups: dict[str, str | None]
    currency: str | None
    revenue: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)
    tokens: Decimal = Decimal(0)
    unpriced: list[str] = field(default_factory=list)

    def to_json(self, group_by: Sequence[str], windowed: bool, cost_currency: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if windowed:
            out["windowStart"] = format_rfc3339(self.window[0]) if self.window[0] else None
            out["windowEnd"] = format_rfc3339(self.window[1]) if self.window[1] else None
        if "customer" in group_by:
            out["customerId"] = (self.customer or {}).get("id")
            out["customerKey"] = (self.customer or {}).get("key")
            out["customerName"] = (self.customer or {}).get("name")
        for g in group_by:
            if g != "customer":
                out[g] = self.groups.get(g)
        out["tokens"] = _plain(self.tokens)
        out["currency"] = self.currency or cost_currency
        out["revenue"] = format(self.revenue, "f")
        out["costCurrency"] = cost_currency
        out["unpriced"] = bool(self.unpriced)
        out["cost"] = None if self.unpriced else plain(self.cost)
        margin = None
        reason = "; ".join(sorted(set(self.unpriced))) or None
        if not self.unpriced and (self.currency or cost_currency) == cost_currency:
            with decimal.localcontext(EXACT):
                margin = self.revenue - self.cost
        elif not self.unpriced:
            reason = f"revenue in {self.currency}, cost in {cost_currency}: no margin without an exchange rate"
        out["margin"] = None if margin is None else plain(margin)
        out["marginPercent"] = _percent(margin, self.revenue)
        out["reason"] = reason
        return out


def _plain(v: Decimal) -> str:
    return "0" if v == 0 else format(v.normalize(), "f")


def _percent(margin: Decimal | None, revenue: Decimal) -> str | None:
    if margin is None or revenue == 0:
        return None
    with decimal.localcontext(_RATIO):
        return format((margin * 100 / revenue).quantize(Decimal("0.01"), rounding=decimal.ROUND_HALF_EVEN), "f")


def rows(shares: Iterable[Share], spends: Iterable[Spend], revenue: dict[str, tuple[str, Decimal, Decimal]],
         customers: dict[str, dict[str, Any]], group_by: Sequence[str], windowed: bool) -> list[Row]:
    """The margin rows by the requested groups (and window): each customer's revenue (customer id -> (currency,
    amount, minor unit)) split over its token shares, and the costs, summed per row key. A cost row without a
    customer is in the one currency all revenue is in (the service asks for costs per customer otherwise)."""
    currencies = {cur for cur, _, _ in revenue.values()}
    only = next(iter(currencies)) if len(currencies) == 1 else None
    out: dict[tuple[Any, ...], Row] = {}

    def row(window: tuple[datetime | None, datetime | None], cid: str | None, groups: dict[str, str | None]) -> Row:
        currency = revenue[cid][0] if cid in revenue else only
        window = window if windowed else (None, None)
        who = cid if "customer" in group_by else None
        shown = {g: groups.get(g) for g in group_by if g != "customer"}
        key = (window, who, tuple(shown.items()), currency)
        found = out.get(key)
        if found is None:
            found = out[key] = Row(key, window, customers.get(who or "") if "customer" in group_by else None, shown,
                                   currency)
        return found

    by_customer: dict[str | None, list[Share]] = {}
    for sh in shares:
        by_customer.setdefault(sh.customer_id, []).append(sh)
    for paying in revenue:
        if paying not in by_customer:  # revenue without LLM usage: its own row, no groups
            by_customer[paying] = [Share(None, None, paying, {}, Decimal(0))]
    for cid, items in by_customer.items():
        known = revenue.get(cid or "")
        amount, minor = (known[1], known[2]) if known else (Decimal(0), Decimal("0.01"))
        parts = allocate(amount, [u.tokens for u in items], minor) if amount else [Decimal(0)] * len(items)
        for u, part in zip(items, parts, strict=True):
            r = row((u.window_start, u.window_end), cid, u.groups)
            with decimal.localcontext(EXACT):
                r.revenue += part
                r.tokens += u.tokens
    for sp in spends:
        r = row((sp.window_start, sp.window_end), sp.customer_id, sp.groups)
        if sp.cost is None:
            r.unpriced.append(sp.reason or "unpriced")
        else:
            with decimal.localcontext(EXACT):
                r.cost += sp.cost
    return sorted(out.values(), key=lambda r: (str(r.window[0] or ""), str((r.customer or {}).get("key") or ""),
                                               [str(v or "") for _, v in r.groups.items()], r.currency or ""))


def totals(result: Iterable[Row], cost_currency: str) -> list[dict[str, Any]]:
    """Per revenue currency: revenue, cost (None when any of it is unpriced), margin where the currency is the
    cost's."""
    per: dict[str, Row] = {}
    for r in result:
        cur = r.currency or cost_currency
        t = per.setdefault(cur, Row((cur,), (None, None), None, {}, cur))
        with decimal.localcontext(EXACT):
            t.revenue += r.revenue
            t.cost += r.cost
            t.tokens += r.tokens
        t.unpriced += r.unpriced
    return [t.to_json([], False, cost_currency) for _, t in sorted(per.items())]
