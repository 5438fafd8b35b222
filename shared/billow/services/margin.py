"""`GET /api/v1/llm/margin?from&to&windowSize&groupBy=customer|model|provider|feature` (the pricing lab,
docs/pricing-lab.md): revenue against LLM provider cost, margin and margin %, per row in the revenue's currency;
the rules are billow.domain.margin's. Cost comes from the LLM cost report (llm_costs.compute_costs: genai-prices
and the overrides, per subject, day by day); a subject's cost is its customer's (usage attribution), revenue from
the backtests' current side (backtests.current_amounts: invoiced where billed, else the current charges)."""

from __future__ import annotations

import decimal
from collections import defaultdict
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

from billow.domain import llm
from billow.domain import margin as rules
from billow.domain.money import Currency
from billow.errors import ValidationFailed
from billow.exact import EXACT
from billow.ports import BillingStore, MetaStore, UsageStore
from billow.services import backtests, llm_costs
from billow.services.entitlements import EntitlementStore
from billow.services.llm_costs import GenaiPriceTable, PriceOverrideStore
from billow.services.query import QueryParams, engine_window_ends, usage_query
from billow.services.subscriptions import SubscriptionStore
from billow.timeutil import format_rfc3339, window_end, zone

GROUPS = ("customer", "model", "provider", "feature")
bad = ValidationFailed.at
_ZERO = Decimal(0)


def margin_report(namespace: str, qs: dict[str, list[str]], *, meta: MetaStore, usage: UsageStore,
                  prices: PriceOverrideStore, catalog_store: SubscriptionStore, billing: BillingStore,
                  ents: EntitlementStore, table: GenaiPriceTable | None = None) -> dict[str, Any]:
    group_by = list(dict.fromkeys(qs.get("groupBy") or ["customer"]))
    for g in group_by:
        if g not in GROUPS:
            raise bad("groupBy", f"{g[:64]!r} is not one of {', '.join(GROUPS)}")
    for name in ("from", "to"):
        if not (qs.get(name) or [""])[0]:
            raise bad(name, "is required (an RFC 3339 date-time)")
    windowed = bool(qs.get("windowSize"))
    cost_qs = {k: v for k, v in qs.items() if k in ("from", "to", "windowSize", "windowTimeZone")}
    p, _ = llm_costs.parse_cost_params(cost_qs)
    assert p.start is not None and p.end is not None
    if p.end <= p.start:
        raise bad("to", "must be after from")
    start, end = p.start, p.end
    p = replace(p, end=end - timedelta(milliseconds=1))  # the meter query's `to` is inclusive; the window is [from, to)
    dims = [g for g in group_by if g != "customer"]
    amounts = backtests.current_amounts(namespace, start, end, store=catalog_store, billing=billing, meta=meta,
                                        ents=ents, usage=usage)
    revenue = {cid: (cur, amount, Currency.of(cur).minor_unit) for cid, (cur, amount) in amounts.items()}
    # Cost per subject only where it must be split by customer (grouped by customer, or revenue in several
    # currencies): fewer rows to price and read back otherwise.
    per_subject = "customer" in group_by or len({cur for cur, _, _ in revenue.values()}) > 1
    # Without windowSize the costs are added up over the span in the store (still priced day by day).
    report = llm_costs.compute_costs(namespace, p, [*(["subject"] if per_subject else []), *dims], meta=meta,
                                     usage=usage, overrides=prices.list_overrides(namespace), table=table,
                                     per_window=windowed)
    if per_subject:  # the cost rows hold each subject's tokens already
        shares = _span_shares(report, dims, windowed)
    else:
        shares = _shares(namespace, replace(p, window_size=p.window_size if windowed else None), dims, meta=meta,
                         usage=usage)
    subjects = {ln.subject for ln in [*report.lines, *report.unpriced] if ln.subject} | {s.customer_id or "" for s in shares}
    owner = meta.customers_for_subjects(namespace, subjects - {""}) if subjects - {""} else {}
    for sh in shares:  # subject -> its customer
        sh.customer_id = owner.get(sh.customer_id or "")
    spends = _spends(report, dims, windowed, owner)
    customers = {c["id"]: c for c in meta.list_customers(namespace)}
    result = rules.rows(shares, spends, revenue, customers, group_by, windowed)
    return {"from": format_rfc3339(start), "to": format_rfc3339(end), "windowSize": p.window_size if windowed else None,
            "groupBy": group_by, "costCurrency": llm.PRICE_CURRENCY,
            "complete": not report.unpriced,
            "data": [r.to_json(group_by, windowed, llm.PRICE_CURRENCY) for r in result],
            "totals": rules.totals(result, llm.PRICE_CURRENCY)}


def _span_shares(report: llm_costs.CostReport, dims: list[str], windowed: bool) -> list[rules.Share]:
    """Input + output tokens per (window, subject, dims) from the cost report's lines (priced day by day);
    without windowSize added up over the whole span, so that revenue is split over the span's usage as the
    token meters' sums split it (`_shares`), not day by day (`customer_id` holds the subject)."""
    if windowed:
        return [rules.Share(ln.window_start, ln.window_end, ln.subject, {g: ln.groups.get(g) for g in dims},
                            ln.tokens.input + ln.tokens.output) for ln in [*report.lines, *report.unpriced]]
    got: dict[tuple[Any, ...], Decimal] = {}
    with decimal.localcontext(EXACT):
        for ln in [*report.lines, *report.unpriced]:
            key = (ln.subject, tuple(ln.groups.get(g) for g in dims))
            got[key] = got.get(key, _ZERO) + ln.tokens.input + ln.tokens.output
    return [rules.Share(None, None, subject, dict(zip(dims, values, strict=True)), tokens)
            for (subject, values), tokens in got.items()]


def _spends(report: llm_costs.CostReport, dims: list[str], windowed: bool,
            owner: dict[str, str]) -> list[rules.Spend]:
    """The cost report's lines as spends of their subjects' customers; without windowSize the priced ones added
    up per (customer, dims) (exact; the unpriced kept one by one, with their reasons)."""
    unpriced = [rules.Spend(ln.window_start, ln.window_end, owner.get(ln.subject or ""),
                            {g: ln.groups.get(g) for g in dims}, None, ln.reason) for ln in report.unpriced]
    if windowed:
        return [rules.Spend(ln.window_start, ln.window_end, owner.get(ln.subject or ""),
                            {g: ln.groups.get(g) for g in dims}, ln.cost.total) for ln in report.lines] + unpriced
    got: dict[tuple[Any, ...], Decimal] = {}
    with decimal.localcontext(EXACT):
        for ln in report.lines:
            key = (owner.get(ln.subject or ""), tuple(ln.groups.get(g) for g in dims))
            got[key] = got.get(key, _ZERO) + ln.cost.total
    return [rules.Spend(None, None, cid, dict(zip(dims, values, strict=True)), cost)
            for (cid, values), cost in got.items()] + unpriced


def _shares(namespace: str, p: QueryParams, dims: list[str], *, meta: MetaStore, usage: UsageStore) -> list[rules.Share]:
    """Input + output tokens per (window, subject, dims) from the token meters (one query each; `customer_id`
    holds the subject until the caller maps it)."""
    tz = zone(p.window_tz)
    got: dict[tuple[Any, ...], Decimal] = defaultdict(Decimal)
    for token_type in ("input", "output"):
        meter = meta.get_meter(namespace, llm.TOKEN_METERS[token_type][0])
        if meter is None:
            continue
        for r in usage.aggregate(usage_query(namespace, meter, replace(p, group_by=[*dims, "subject"]), meta=meta)):
            with decimal.localcontext(EXACT):
                got[(r.window_start, r.subject, tuple(r.groups.get(d) for d in dims))] += r.sum
    ends = engine_window_ends(usage, (ws for ws, _, _ in got), p.window_size, p.window_tz)
    return [rules.Share(ws, (ends.get(ws) or window_end(ws, p.window_size, tz)) if ws and p.window_size else None,
                        subject, dict(zip(dims, values, strict=True)), tokens)
            for (ws, subject, values), tokens in got.items()]
