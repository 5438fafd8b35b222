"""LLM cost tracking (Billow extension, docs/llm-costs.md): install the token meters, keep the user's price
overrides, and cost token usage per window from the overrides and genai-prices' bundled price table.

Resolution, per window and (provider, model): the override in effect at the window start (the latest one
whose effectiveFrom is not after it), else genai-prices' price at the window start, else the usage is listed
as unpriced with the reason; it is never counted as zero. genai-prices is used offline only: its bundled
data (the table shipped with the installed package) through its own DataSnapshot; UpdatePrices, the part
that fetches, is never started. It is imported on first use (~1 s), never at module import.
"""

from __future__ import annotations

import decimal
import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from billow.domain import llm
from billow.domain.llm import Cost, PriceOverride, TokenCounts, TokenPrices, Unpriceable
from billow.domain.meters import Meter
from billow.domain.usage import Rating, rate_rows
from billow.errors import Conflict, NotFound, ValidationFailed
from billow.exact import EXACT
from billow.ids import new_id
from billow.jsonx import plain_decimal
from billow.ports import MetaStore, UsageStore
from billow.services.features import FeatureStore, get_feature
from billow.services.meters import SinkLock, build_meter, create_meter, get_meter
from billow.services.query import (
    QueryParams,
    engine_window_ends,
    group_by_subjects,
    params_from_query_string,
    parse_filters,
    query_meter,
    usage_query,
)
from billow.timeutil import window_end, zone

REPORT_GROUPS = ("provider", "model", "customer", "team", "feature", "subject")
DEFAULT_WINDOW = "DAY"
_MS = timedelta(milliseconds=1)
_ZERO = Decimal(0)
_MILLION = Decimal(1_000_000)


class PriceOverrideStore(Protocol):
    def put_override(self, namespace: str, override: PriceOverride) -> None: ...

    def list_overrides(self, namespace: str, provider: str | None = None,
                       model: str | None = None) -> list[PriceOverride]: ...

    def delete_override(self, namespace: str, override_id: str) -> bool: ...


class UnpricedUsage(Conflict):
    """Usage of a model no price covers: the cost cannot be stated (an underestimate is never returned)."""


_bad = ValidationFailed.at


# ---------------------------------------------------------------------------------------------------------
# Meters


def install_llm_meters(namespace: str, *, cache_tokens: bool = True, meta: MetaStore, usage: UsageStore,
                       now: datetime, sink_lock: SinkLock) -> tuple[list[Meter], list[str]]:
    """Create the token meters that do not exist yet (idempotent): (all of them, slugs created now). A meter of
    the same slug with another definition is a Conflict; extra groupBy keys on it are fine."""
    meters: list[Meter] = []
    created: list[str] = []
    for body in llm.meter_definitions(cache_tokens):
        existing = meta.get_meter(namespace, body["slug"])
        if existing is None:
            meters.append(create_meter(namespace, body, meta=meta, usage=usage, now=now, sink_lock=sink_lock))
            created.append(body["slug"])
            continue
        want = build_meter(body, now)
        if ((want.aggregation, want.event_type, want.value_property) != (
                existing.aggregation, existing.event_type, existing.value_property)
                or not want.group_by.items() <= existing.group_by.items()):
            raise Conflict(f"meter {body['slug']!r} exists with another definition; delete it or rename it first")
        meters.append(existing)
    return meters, created


# ---------------------------------------------------------------------------------------------------------
# Price overrides


def create_price(namespace: str, body: Any, *, store: PriceOverrideStore, now: datetime) -> PriceOverride:
    override = llm.parse_override(body, id=new_id(), now=now)
    store.put_override(namespace, override)
    return override


def list_prices(namespace: str, *, provider: str | None, model: str | None,
                store: PriceOverrideStore) -> list[PriceOverride]:
    return store.list_overrides(namespace, provider, model)


def delete_price(namespace: str, price_id: str, *, store: PriceOverrideStore) -> None:
    if not store.delete_override(namespace, price_id):
        raise NotFound(f"LLM price {price_id!r} not found")


# ---------------------------------------------------------------------------------------------------------
# genai-prices (offline)


@dataclass(frozen=True, slots=True)
class ResolvedPrice:
    prices: TokenPrices
    source: str  # "override" | "genai-prices"
    ref: str  # the override's id, or genai-prices' provider/model id
    notes: tuple[str, ...] = ()

    def to_json(self, provider: str, model: str) -> dict[str, Any]:
        out: dict[str, Any] = {"provider": provider, "model": model, "source": self.source, "ref": self.ref}
        if self.notes:
            out["notes"] = list(self.notes)
        return out


@functools.cache
def _bundled_snapshot() -> Any:
    """genai-prices' bundled table (shipped in the installed package), never a downloaded one."""
    from genai_prices.data import providers
    from genai_prices.data_snapshot import DataSnapshot

    return DataSnapshot(providers=providers, from_auto_update=False)


class GenaiPriceTable:
    """Prices from genai-prices' bundled data: the model is found once per (provider, model) with genai-prices'
    own matching (aliases, dated snapshots, a provider's fallback providers), then priced by date."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, str], tuple[str, Any] | str] = {}
        # (ref, id() of a genai-prices ModelPrice: module data, never freed) -> ours
        self._converted: dict[tuple[str, int], ResolvedPrice] = {}
        self._lock = threading.Lock()

    def _find(self, provider: str, model: str) -> tuple[str, Any] | str:
        key = (provider, model)
        found = self._found.get(key)
        if found is None:
            try:
                prov, info = _bundled_snapshot().find_provider_model(model, None, provider or None, None)
                found = (f"{prov.id}/{info.id}", info)
            except LookupError as exc:
                found = f"not in genai-prices' table ({exc}) and no price override"
            with self._lock:
                self._found[key] = found
        return found

    def price(self, provider: str, model: str, at: datetime) -> ResolvedPrice | str:
        """The price at `at` (genai-prices' date constraints), or why there is none."""
        if not model:
            return "the events carry no model"
        found = self._find(provider, model)
        if isinstance(found, str):
            return found
        ref, info = found
        model_price = info.get_prices(at)
        key = (ref, id(model_price))
        resolved = self._converted.get(key)
        if resolved is None:
            resolved = self._convert(ref, info, model_price)
            with self._lock:
                self._converted[key] = resolved
        return resolved

    @staticmethod
    def _convert(ref: str, info: Any, model_price: Any) -> ResolvedPrice:
        from genai_prices.types import TieredPrices, TimeOfDateConstraint

        notes: list[str] = []
        values: dict[str, Decimal | None] = {}
        for attr, key in (("input", "input_mtok"), ("output", "output_mtok"), ("cached_input", "cache_read_mtok"),
                          ("cache_write", "cache_write_mtok")):
            value = getattr(model_price, key)
            if isinstance(value, TieredPrices):
                notes.append(f"{key} is tiered by request input size (from {value.tiers[0].start:,} input tokens: "
                             f"{value.tiers[0].price}); priced at the base tier ({value.base})")
                value = value.base
            values[attr] = value
        if isinstance(info.prices, list) and any(isinstance(c.constraint, TimeOfDateConstraint) for c in info.prices):
            notes.append("priced by time of day in genai-prices; the price in effect at the window start was used")
        return ResolvedPrice(TokenPrices(**values), "genai-prices", ref, tuple(notes))


_TABLE = GenaiPriceTable()


class PriceBook:
    """Overrides first, then genai-prices, for one namespace during one report."""

    def __init__(self, overrides: Sequence[PriceOverride], table: GenaiPriceTable) -> None:
        self._overrides = llm.by_model(overrides)
        self._table = table
        self._memo: dict[tuple[str, str, datetime], ResolvedPrice | str] = {}

    def price(self, provider: str, model: str, at: datetime) -> ResolvedPrice | str:
        key = (provider, model, at)
        found = self._memo.get(key)
        if found is None:
            override = llm.override_in_effect(self._overrides.get((provider.lower(), model.lower()), ()), at)
            if override is not None:
                found = ResolvedPrice(override.prices, "override", override.id)
            else:
                found = self._table.price(provider, model, at)
            self._memo[key] = found
        return found


# ---------------------------------------------------------------------------------------------------------
# Cost report


@dataclass(slots=True)
class CostLine:
    window_start: datetime | None  # None: a line over every window (compute_costs' per_window False)
    window_end: datetime | None
    subject: str | None
    customer_id: str | None
    groups: dict[str, str]
    tokens: TokenCounts = field(default_factory=TokenCounts)
    cost: Cost = field(default_factory=Cost)
    prices: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    reason: str = ""

    def to_json(self, by_subject: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"windowStart": self.window_start, "windowEnd": self.window_end}
        if by_subject:
            out["subject"] = self.subject
        if self.customer_id:
            out["customerId"] = self.customer_id
        out["groupBy"] = self.groups
        t = self.tokens
        out["tokens"] = {"input": _count(t.input), "cachedInput": _count(t.cached_input),
                         "cacheWrite": _count(t.cache_write), "output": _count(t.output)}
        if self.reason:
            out["unpriced"] = True
            out["reason"] = self.reason
        else:
            out["currency"] = llm.PRICE_CURRENCY
            out["cost"] = self.cost.to_json()
            out["prices"] = list(self.prices.values())
        return out


def _count(value: Decimal) -> int | Decimal:
    """A token count for JSON: an int when whole (the usual case; cheaper than normalising)."""
    whole = int(value)
    return whole if whole == value else plain_decimal(value)


@dataclass(slots=True)
class CostReport:
    params: QueryParams
    group_by: list[str]
    lines: list[CostLine]
    unpriced: list[CostLine]

    @property
    def cost(self) -> Cost:
        return Cost.add_up(line.cost for line in self.lines)

    def to_json(self) -> dict[str, Any]:
        by_subject = "subject" in self.group_by
        cost = self.cost
        out: dict[str, Any] = {}
        if self.params.start is not None:
            out["from"] = self.params.start
        if self.params.end is not None:
            out["to"] = self.params.end
        out.update({
            "windowSize": self.params.window_size, "windowTimeZone": self.params.window_tz,
            "groupBy": self.group_by, "currency": llm.PRICE_CURRENCY,
            "total": llm.plain(cost.total), "cost": cost.to_json(),
            "complete": not self.unpriced,
            "data": [line.to_json(by_subject) for line in self.lines],
            "unpriced": [line.to_json(by_subject) for line in self.unpriced],
        })
        return out


def parse_cost_params(qs: dict[str, list[str]]) -> tuple[QueryParams, list[str]]:
    """The meter query's parameters (from, to, windowSize, windowTimeZone, subject, filterCustomerId,
    advancedMeterGroupByFilters), windowSize DAY by default, and groupBy limited to the LLM dimensions."""
    p = params_from_query_string(qs)
    group_by = list(dict.fromkeys(p.group_by or []))
    for key in group_by:
        if key not in REPORT_GROUPS:
            raise _bad("groupBy", f"{key!r} is not one of {', '.join(REPORT_GROUPS)}")
    window = DEFAULT_WINDOW if p.window_size is None else p.window_size  # "" is given, and no window size
    return replace(p, window_size=window, group_by=None), group_by


def _token_meters(namespace: str, meta: MetaStore) -> dict[str, str]:
    """token type -> meter slug of the installed token meters (the cache meters are optional)."""
    out = {}
    for token_type, (slug, _) in llm.TOKEN_METERS.items():
        if meta.get_meter(namespace, slug) is not None:
            out[token_type] = slug
        elif token_type not in llm.CACHE_TOKEN_TYPES:
            raise NotFound(f"meter {slug!r} not found: install the LLM meters first (POST /api/v1/llm/meters)")
    return out


def compute_costs(namespace: str, p: QueryParams, group_by: list[str], *, meta: MetaStore, usage: UsageStore,
                  overrides: Sequence[PriceOverride], table: GenaiPriceTable | None = None,
                  per_window: bool = True) -> CostReport:
    """Price every token meter's sums per window and (provider, model, requested dimensions) at the window start
    and add the priced ones up to the requested groups. Lines per customer or subject (not per model) are added
    up in the usage store (UsageStore.rated_sums): Python prices each (window, provider, model) once and reads
    back the report's lines, not a row per model and group (issue 17 item 6). `per_window` False: each priced
    line adds up every window (priced window by window; no window, no prices listed); unpriced lines keep theirs."""
    dims = [k for k in group_by if k not in ("subject", *llm.PRICE_KEYS)]
    keys = [*llm.PRICE_KEYS, *dims]
    query = replace(p, group_by=[*keys, *(["subject"] if "subject" in group_by else [])])
    token_meters = _token_meters(namespace, meta)
    queries = [usage_query(namespace, get_meter(namespace, slug, meta=meta), query, meta=meta)
               for slug in token_meters.values()]  # each meter's parameters checked, as its own query would be
    at = {t: n for n, t in enumerate(token_meters)}  # where each token type's sum is in a row
    book = PriceBook(overrides, table or _TABLE)
    resolved: dict[tuple[datetime | None, tuple[str, ...]], ResolvedPrice | str] = {}
    per_token: dict[TokenPrices, tuple[Decimal | None, ...]] = {}

    def rates(start: datetime | None, pm: tuple[str, ...]) -> tuple[Decimal | None, ...] | None:
        assert start is not None
        found = resolved[(start, pm)] = book.price(pm[0], pm[1], start)
        if isinstance(found, str):
            return None
        out = per_token.get(found.prices)
        if out is None:
            out = per_token[found.prices] = _per_token(found.prices)
        return out

    def form(*types: tuple[int, str]) -> tuple[int, ...]:
        out = [0] * len(at)
        for coefficient, token_type in types:
            if token_type in at:
                out[at[token_type]] = coefficient
        return tuple(out)

    # quantities: uncached input (never negative), cached reads, cache writes, output; a rate per token
    rating = Rating(by=len(llm.PRICE_KEYS),
                    forms=(form((1, "input"), (-1, "cachedInput"), (-1, "cacheWrite")), form((1, "cachedInput")),
                           form((1, "cacheWrite")), form((1, "output"))),
                    nonnegative=(0,), shown=tuple(n for n, k in enumerate(keys) if k in group_by), rates=rates,
                    key_meter=at["input"], per_window=per_window)  # every llm event has input tokens
    meter_ids = [q.meter_id for q in queries]
    if "model" not in group_by and {"customer", "subject"} & set(group_by):
        # lines per customer or subject add up every model's rows, and there are many: added up in the store
        rated = usage.rated_sums(queries[0], meter_ids, rating)
    else:
        # a line per model, or few lines (per window, team, feature): the store's rows are about as many as the
        # lines, and rating them in the store costs one more scan (to find the rate keys) than it saves
        rated = rate_rows(usage.sum_meters(queries[0], meter_ids), rating)
    assert query.window_size is not None
    tz = zone(query.window_tz)
    ends = engine_window_ends(usage, [*(r.window_start for r in rated.lines), *(u[0] for u in rated.unrated)],
                              query.window_size, query.window_tz)

    def end_of(start: datetime) -> datetime:
        end = ends.get(start)
        if end is None:
            assert query.window_size is not None
            end = ends[start] = window_end(start, query.window_size, tz)
        return end

    where = [at.get(t) for t in ("input", "cachedInput", "cacheWrite", "output")]

    def counts(sums: Sequence[Decimal]) -> TokenCounts:
        return TokenCounts(*[sums[n] if n is not None else _ZERO for n in where])

    shown = [k for k in keys if k in group_by]
    prices: dict[tuple[datetime | None, tuple[str, ...]], dict[str, Any]] = {}
    # a window's lines mostly list the same models: their prices made once per (window, models), shared (read only)
    listed: dict[tuple[datetime, tuple[tuple[str, ...], ...]], dict[tuple[str, str], dict[str, Any]]] = {}
    lines = []
    for r in rated.lines:  # in the store's order
        start = r.window_start
        line = CostLine(start, end_of(start) if start is not None else None, r.subject, r.customer_id,
                        dict(zip(shown, r.groups, strict=True)), counts(r.sums), Cost(*r.amounts))
        lines.append(line)
        if start is None:  # a line over every window: priced day by day, at several prices
            continue
        models = tuple(r.rate_keys)
        line_prices = listed.get((start, models))
        if line_prices is None:
            line_prices = listed[(start, models)] = {}
            for pm in models:
                shown_price = prices.get((start, pm))
                if shown_price is None:
                    price = resolved[(start, pm)]
                    assert not isinstance(price, str)
                    shown_price = prices[(start, pm)] = price.to_json(*pm)
                line_prices[pm] = shown_price  # type: ignore[index]
        line.prices = line_prices
    unpriced: list[CostLine] = []
    for start, subject, customer_id, values, *sums in rated.unrated:  # never counted as zero
        counted = counts(sums)
        _, reason = _cost(counted, resolved[(start, values[:len(llm.PRICE_KEYS)])])
        unpriced.append(CostLine(start, end_of(start), subject, customer_id, dict(zip(keys, values, strict=True)),
                                 counted, reason=reason))
    return CostReport(p, group_by, lines, unpriced)


def _per_token(prices: TokenPrices) -> tuple[Decimal | None, ...]:
    """USD per token of uncached input, cached reads, cache writes and output (as llm.token_cost prices them:
    a missing cached-read or cache-write price is the input price)."""
    with decimal.localcontext(EXACT):
        cached = prices.cached_input if prices.cached_input is not None else prices.input
        write = prices.cache_write if prices.cache_write is not None else prices.input
        return tuple(v / _MILLION if v is not None else None for v in (prices.input, cached, write, prices.output))


def _cost(counted: TokenCounts, resolved: ResolvedPrice | str) -> tuple[Cost | None, str]:
    """The cost of these tokens at this price, or None and why they cannot be priced."""
    if isinstance(resolved, str):
        return None, resolved
    try:
        return llm.token_cost(counted, resolved.prices), ""
    except Unpriceable as exc:
        return None, f"{exc} ({resolved.source} {resolved.ref})"


def cost_report(namespace: str, qs: dict[str, list[str]], *, meta: MetaStore, usage: UsageStore,
                store: PriceOverrideStore, table: GenaiPriceTable | None = None) -> dict[str, Any]:
    """GET /api/v1/llm/costs."""
    p, group_by = parse_cost_params(qs)
    return compute_costs(namespace, p, group_by, meta=meta, usage=usage, overrides=store.list_overrides(namespace),
                         table=table).to_json()


def llm_cost(namespace: str, *, subject: str | None = None, customer: str | None = None, period_start: datetime,
             period_end: datetime, meta: MetaStore, usage: UsageStore, store: PriceOverrideStore,
             window_tz: str = "UTC", table: GenaiPriceTable | None = None) -> Decimal:
    """The exact USD cost of one subject's (or one customer's: all its subjects') LLM usage in the billing
    period [period_start, period_end), priced per UTC day (or per day in `window_tz`) at the day's start. This is
    the usage a `dynamic` price multiplies. Usage no price covers raises UnpricedUsage: an invoice line must not
    undercount."""
    if (subject is None) == (customer is None):
        raise _bad("subject", "give exactly one of subject and customer")
    if period_end <= period_start:
        raise _bad("periodEnd", "the period must end after it starts")
    p = QueryParams(start=period_start, end=period_end - _MS, window_size=DEFAULT_WINDOW, window_tz=window_tz,
                    subjects=[subject] if subject is not None else None,
                    customer_ids=[customer] if customer is not None else None)
    report = compute_costs(namespace, p, [], meta=meta, usage=usage, overrides=store.list_overrides(namespace),
                           table=table)
    if report.unpriced:
        models = sorted({f"{u.groups['provider']}/{u.groups['model']}" for u in report.unpriced})
        raise UnpricedUsage(f"LLM usage without a price in this period: {', '.join(models)}; add a price "
                            "override (POST /api/v1/llm/prices)",
                            extensions={"unpriced": [u.to_json(False) for u in report.unpriced]})
    return plain_decimal(report.cost.total)


# ---------------------------------------------------------------------------------------------------------
# A feature's cost (its `unitCost`, OpenMeter's vocabulary)


def feature_cost(namespace: str, feature_id_or_key: str, qs: dict[str, list[str]], *, features: FeatureStore,
                 meta: MetaStore, usage: UsageStore, store: PriceOverrideStore,
                 table: GenaiPriceTable | None = None) -> dict[str, Any]:
    """GET /api/v1/features/{featureId}/cost: the feature's meter usage (the meter query's parameters, the feature's
    group-by filters ANDed in) times its unit cost, per row, as OpenMeter's queryFeatureCost answers it
    (FeatureCostQueryResult). `manual`: the amount per unit. `llm`: provider, model and token type of each row (the
    static value, or the row's value of the groupBy key named), priced per token (llm.per_token_price: OpenMeter's token
    types mapped to Billow's prices) by the price book the LLM cost report uses (an override, else genai-prices) at
    the row's window start (without windowSize: `from`, else the first event's time). Rows grouped by keys only the
    pricing needed are added up into the groups asked for, and sorted as OpenMeter sorts them (cost descending, rows
    without one last). A row any part of which has no price has no cost, and says why in `detail` (never counted as
    zero: OpenMeter adds up the priced parts alone)."""
    feature = get_feature(namespace, feature_id_or_key, store=features, include_archived=False)
    unit = feature.get("unitCost")
    if not feature.get("meterSlug"):
        raise _bad("meterSlug", f"feature {feature['key']!r} has no meter")
    if not unit:
        raise _bad("unitCost", f"feature {feature['key']!r} has no unit cost")
    p = group_by_subjects(params_from_query_string(qs))
    asked = list(dict.fromkeys(p.group_by or []))
    pricing_keys = [unit[k] for k in ("providerProperty", "modelProperty", "tokenTypeProperty") if unit.get(k)]
    internal = [k for k in dict.fromkeys(pricing_keys) if k not in asked]
    own = feature.get("advancedMeterGroupByFilters")
    if own:
        mine = parse_filters(own)
        p.filters = [a + b for a in p.filters for b in mine] if p.filters else mine
    answer = query_meter(namespace, feature["meterSlug"], replace(p, group_by=[*asked, *internal]), meta=meta,
                         usage=usage)
    book = PriceBook(store.list_overrides(namespace), table or _TABLE)
    lines: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in answer["data"]:
        groups = row["groupBy"]
        shown = {k: v for k, v in groups.items() if k not in internal}
        key = (row["windowStart"], row["windowEnd"], row["subject"], row.get("customerId"), tuple(shown.items()))
        line = lines.get(key)
        if line is None:
            line = lines[key] = {"usage": _ZERO, "cost": _ZERO, "details": [], "windowStart": row["windowStart"],
                                 "windowEnd": row["windowEnd"], "subject": row["subject"],
                                 "customerId": row.get("customerId"), "groupBy": shown}
        value = Decimal(row["value"])
        line["usage"] = EXACT.add(line["usage"], value)
        price = _unit_price(unit, groups, book, row["windowStart"])
        if isinstance(price, str):
            if price not in line["details"]:
                line["details"].append(price)
        else:
            line["cost"] = EXACT.add(line["cost"], EXACT.multiply(value, price))
    # OpenMeter's order: the costliest first, rows without a cost last (ties as the store gave them)
    data = sorted((_cost_row(line) for line in lines.values()),
                  key=lambda r: (r["cost"] is None, -Decimal(r["cost"] or 0)))
    out: dict[str, Any] = {k: answer[k] for k in ("from", "to", "windowSize") if k in answer}
    total = _ZERO
    for line in lines.values():
        if not line["details"]:
            total = EXACT.add(total, line["cost"])
    out.update(currency=llm.PRICE_CURRENCY, total=llm.plain(total), complete=all(r["cost"] is not None for r in data),
               data=data)
    return out


def _unit_price(unit: dict[str, Any], groups: dict[str, str | None], book: PriceBook,
                at: datetime | None) -> Decimal | str:
    """USD per unit of usage of one row, or why there is none."""
    if unit["type"] == "manual":
        return Decimal(unit["amount"])
    values = {}
    for static, prop in (("provider", "providerProperty"), ("model", "modelProperty"), ("tokenType", "tokenTypeProperty")):
        value = unit.get(static) or groups.get(unit.get(prop) or "")
        if not value:
            return f"the usage has no {unit.get(prop)} value (the {static})"
        values[static] = value
    if at is None:  # not windowed, no `from` and no event time: no day to price at
        return "no time to price at: give from"
    found = book.price(values["provider"], values["model"], at)
    if isinstance(found, str):
        return f"{values['provider']}/{values['model']}: {found}"
    try:
        return llm.per_token_price(found.prices, values["tokenType"])
    except Unpriceable as exc:
        return f"{values['provider']}/{values['model']} {values['tokenType']}: {exc} ({found.source} {found.ref})"


def _cost_row(line: dict[str, Any]) -> dict[str, Any]:
    """One row of OpenMeter's FeatureCostQueryResult: usage and cost as exact decimal text, cost null with a detail
    when a part of the row has no price."""
    out: dict[str, Any] = {"usage": llm.plain(line["usage"]),
                           "cost": None if line["details"] else llm.plain(line["cost"]),
                           "currency": llm.PRICE_CURRENCY, "windowStart": line["windowStart"],
                           "windowEnd": line["windowEnd"], "subject": line["subject"]}
    if line["details"]:
        out["detail"] = "; ".join(line["details"])
    if line["customerId"]:
        out["customerId"] = line["customerId"]
    if line["groupBy"]:
        out["groupBy"] = line["groupBy"]
    return out


def with_pricing(namespace: str, answer: Any, *, store: PriceOverrideStore, now: datetime,
                 table: GenaiPriceTable | None = None) -> Any:
    """Features as OpenMeter shows them: an `llm` unitCost whose provider and model are known (static values, or an
    exact `$eq` filter of the feature on the groupBy key named) gets the readOnly `pricing` (FeatureLLMUnitCostPricing:
    USD per token of each of OpenMeter's token types, exact decimal text) from the prices in effect `now` (an
    override, else genai-prices), as llm.per_token_price prices them; none when no price covers the model. `answer`
    is a feature, a list of them or a page of them (`items`); the stored documents are not changed."""
    docs: Any = answer.get("items") if isinstance(answer, dict) and "items" in answer else answer
    one = isinstance(docs, dict)
    book: PriceBook | None = None
    out: list[dict[str, Any]] = []
    for doc in [docs] if one else docs:
        unit: dict[str, Any] = doc.get("unitCost") or {}
        provider = _known(doc, unit, "provider", "providerProperty") if unit.get("type") == "llm" else None
        model = _known(doc, unit, "model", "modelProperty") if provider else None
        if not provider or not model:
            out.append(doc)
            continue
        if book is None:
            book = PriceBook(store.list_overrides(namespace), table or _TABLE)
        found = book.price(provider, model, now)
        pricing = _pricing(found.prices) if not isinstance(found, str) else None
        out.append({**doc, "unitCost": {**unit, "pricing": pricing}} if pricing else doc)
    if one:
        return out[0]
    return {**answer, "items": out} if isinstance(answer, dict) else out


def _known(doc: dict[str, Any], unit: dict[str, Any], static: str, prop: str) -> str | None:
    """The static value, or the one value the feature's filters pin the groupBy key to."""
    if unit.get(static):
        return str(unit[static])
    spec = (doc.get("advancedMeterGroupByFilters") or {}).get(unit.get(prop) or "")
    return spec["$eq"] if isinstance(spec, dict) and list(spec) == ["$eq"] and isinstance(spec["$eq"], str) else None


_PRICING = (("inputPerToken", "input"), ("outputPerToken", "output"), ("cacheReadPerToken", "cache_read"),
            ("cacheWritePerToken", "cache_write"), ("reasoningPerToken", "reasoning"))


def _pricing(prices: TokenPrices) -> dict[str, str] | None:
    """OpenMeter's FeatureLLMUnitCostPricing of these prices; None without an input or output price (required)."""
    out = {}
    for name, token_type in _PRICING:
        try:
            out[name] = llm.plain(llm.per_token_price(prices, token_type))
        except Unpriceable:
            pass
    return out if "inputPerToken" in out and "outputPerToken" in out else None
