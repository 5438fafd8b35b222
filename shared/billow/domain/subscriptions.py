"""Subscriptions: a customer's timeline of plan phases and add-ons, its billing cycle, and what it owes for a
billing period (flat fees prorated by time served, usage rated by `billow.domain.pricing`). Pure: usage comes
in through a callable, time through arguments.

A subscription document keeps absolute instants: `activeFrom`/`activeTo` of the subscription, of each phase
and of each add-on. Its billing cycle is `billingCadence` counted from `billingAnchor`. A change of plan ends
one subscription at an instant and starts the next at the same instant on the same anchor, so the cycle in
which the change happens is shared: each subscription owes the share of the cycle it served.

Proration (when `proRatingConfig.enabled`): a recurring flat fee is multiplied by served / cycle length
(an exact Fraction of microseconds; `pricing.prorate`), and a usage price's minimum and maximum spend
commitments are prorated the same way. Usage is measured over the served span only, at the usage store's
one-minute resolution. Every amount is rounded to the currency's minor unit once per line, with the
rounding mode the caller states.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from billow.domain import pricing
from billow.domain.catalog import payment_term
from billow.domain.money import Rounding
from billow.domain.periods import RecurringPeriod, add_offsets, offset, shifted
from billow.errors import ValidationFailed
from billow.ids import derived_id
from billow.timeutil import format_rfc3339, parse_rfc3339

_TICK = timedelta(microseconds=1)
UsageFn = Callable[[str, datetime, datetime], Decimal]  # (feature key, start, end) -> usage in [start, end)


def t(value: str | None) -> datetime | None:
    return None if value is None else parse_rfc3339(value, "time")


def phase_timeline(phases: list[dict[str, Any]], start: datetime, starting_phase: str | None = None) -> list[dict[str, Any]]:
    """The plan's phases from `starting_phase` (default: the first) from `start`, each at `start` plus its offset
    (OpenMeter's startAfter: the sum of the earlier phases' ISO durations, kept as `offset` for edits), so a
    phase after two P1M phases from January 31st starts on March 31st."""
    keys = [p["key"] for p in phases]
    if starting_phase is not None and starting_phase not in keys:
        raise ValidationFailed(f"startingPhase: the plan has no phase {starting_phase!r}",
                               [{"field": "startingPhase", "message": f"one of {', '.join(keys)}"}])
    chosen = phases[keys.index(starting_phase):] if starting_phase else phases
    out, at, since = [], start, (0, 0, 0)
    for ph in chosen:
        until = add_offsets(since, offset(ph["duration"], "duration")) if ph.get("duration") else None
        end = shifted(start, until) if until is not None else None
        out.append({"key": ph["key"], "name": ph["name"], "description": ph.get("description"),
                    "metadata": ph.get("metadata"), "activeFrom": format_rfc3339(at),
                    "activeTo": format_rfc3339(end) if end else None, "rateCards": ph["rateCards"],
                    "offset": list(since)})
        if end is None or until is None:
            break
        at, since = end, until
    return out


def cycle(sub: dict[str, Any]) -> RecurringPeriod:
    return RecurringPeriod(sub["billingCadence"], parse_rfc3339(sub["billingAnchor"], "billingAnchor"))


def status(sub: dict[str, Any], now: datetime) -> str:
    """OpenMeter's: scheduled (starts later), active, canceled (an end is set, still running), inactive (ended)."""
    frm, to = t(sub["activeFrom"]), t(sub.get("activeTo"))
    assert frm is not None
    if to is not None and to <= frm:
        return "inactive"  # canceled before it started
    if frm > now:
        return "scheduled"
    if to is not None:
        return "inactive" if to <= now else "canceled"
    return "active"


def _overlap(a: tuple[datetime, datetime | None], b: tuple[datetime, datetime | None]) -> tuple[datetime, datetime | None] | None:
    s = max(a[0], b[0])
    ends = [e for e in (a[1], b[1]) if e is not None]
    e = min(ends) if ends else None
    return None if e is not None and e <= s else (s, e)


@dataclass(frozen=True)
class Item:
    """A rate card in force over [start, end): from a plan phase or an add-on (times `quantity`)."""

    source: str  # "phase:<key>" or "addon:<subscription addon id>"
    rate_card: dict[str, Any]
    start: datetime
    end: datetime | None
    quantity: int = 1
    span: str = ""  # an add-on's span of one quantity after its first: "@<its activeFrom>" (billing.charge_key)


def items(sub: dict[str, Any]) -> list[Item]:
    """Every rate card of the subscription with the span it is in force (within the subscription's own)."""
    span = (parse_rfc3339(sub["activeFrom"], "activeFrom"), t(sub.get("activeTo")))
    out: list[Item] = []
    for ph in sub["phases"]:
        within = _overlap(span, (parse_rfc3339(ph["activeFrom"], "activeFrom"), t(ph.get("activeTo"))))
        if within is None:
            continue
        spans = ph.get("itemSpans") or []  # set by edits (billow.domain.subscription_edits): one per rate card
        for i, rc in enumerate(ph["rateCards"]):
            own = spans[i] if i < len(spans) else None
            if own is None:
                out.append(Item(f"phase:{ph['key']}", rc, within[0], within[1]))
                continue
            part = _overlap(within, (t(own.get("activeFrom")) or within[0], t(own.get("activeTo"))))
            version = f"#{own['version']}" if own.get("version") else ""  # a replaced item's next version
            if part is not None:
                out.append(Item(f"phase:{ph['key']}{version}", rc, part[0], part[1]))
    for addon in sub.get("addons") or []:
        for n, seg in enumerate(addon["timeline"]):
            within = _overlap(span, (parse_rfc3339(seg["activeFrom"], "activeFrom"), t(seg.get("activeTo"))))
            if within is not None and seg["quantity"] > 0:
                out += [Item(f"addon:{addon['id']}", rc, within[0], within[1], seg["quantity"],
                             f"@{seg['activeFrom']}" if n else "") for rc in addon["rateCards"]]
    return out


def _layable(plan_rc: dict[str, Any], addon_rc: dict[str, Any]) -> bool:
    """Whether an add-on rate card is laid over a plan's recurring one of its key when billed: it brings a price, and
    the plan's has none or both are flat fees of one payment term (the catalog offers no other pair:
    catalog.overlay_problems)."""
    pp, ap = plan_rc.get("price"), addon_rc.get("price")
    if ap is None or plan_rc.get("billingCadence") is None:  # a one-time fee stays an item of its own
        return False
    return pp is None or (pp.get("type") == ap.get("type") == "flat" and payment_term(pp) == payment_term(ap))


def _laid(plan_rc: dict[str, Any], addon_rc: dict[str, Any], quantity: int) -> dict[str, Any]:
    """The plan's rate card with `quantity` of the add-on's laid over it (OpenMeter's SubscriptionAddonRateCard.Apply,
    once an instance): flat amounts add up; a price the plan's lacks is the add-on's; usage discounts add up; the
    plan's name, payment term and percentage discount stay."""
    pp, ap = plan_rc.get("price"), addon_rc["price"]
    out = dict(plan_rc)
    if pp is None:
        out["price"], pp, quantity = ap, ap, quantity - 1
        out["featureKey"] = plan_rc.get("featureKey") or addon_rc.get("featureKey")
        out["billingCadence"] = plan_rc.get("billingCadence") or addon_rc.get("billingCadence")
    if quantity and pp.get("type") == "flat":
        out["price"] = {**pp, "amount": str(Decimal(pp["amount"]) + quantity * Decimal(ap["amount"]))}
    free = ((addon_rc.get("discounts") or {}).get("usage") or {}).get("quantity")
    if free is not None:
        mine = dict(plan_rc.get("discounts") or {})
        had = Decimal((mine.get("usage") or {}).get("quantity") or 0)
        mine["usage"] = {"quantity": str(had + Decimal(free) * max(quantity, 1))}
        out["discounts"] = mine
    return out


def billed_items(sub: dict[str, Any]) -> list[Item]:
    """items() as billed: an add-on rate card that shares its key with a phase's rate card in force is laid over it
    (OpenMeter's addondiff apply): the phase's item is split at the add-on span's bounds, its part inside the span
    billed as one rate card (_laid; a part after its first bills under "@<its start>", so each part has its own
    charge key), and the add-on card is billed on its own only where no phase rate card of its key is in force."""
    every = items(sub)
    phase = [i for i in every if i.source.startswith("phase:")]
    out: list[Item] = []
    for a in (i for i in every if not i.source.startswith("phase:")):
        rest: list[tuple[datetime, datetime | None]] = [(a.start, a.end)]  # the add-on's span no phase item covers
        parted: list[Item] = []
        for p in phase:
            inside = _overlap((p.start, p.end), (a.start, a.end))
            if p.rate_card["key"] != a.rate_card["key"] or not _layable(p.rate_card, a.rate_card) or inside is None:
                parted.append(p)
                continue
            for part in [(p.start, inside[0]), inside, (inside[1], p.end) if inside[1] is not None else None]:
                if part is not None and (part[1] is None or part[0] < part[1]):
                    parted.append(replace(p, rate_card=_laid(p.rate_card, a.rate_card, a.quantity) if part is inside
                                          else p.rate_card, start=part[0], end=part[1],
                                          span=p.span if part[0] == p.start else f"@{format_rfc3339(part[0])}"))
            rest = [r for g in rest for r in _minus(g, inside)]
        phase = parted
        out += [replace(a, start=g[0], end=g[1]) for g in rest]
    return phase + out


def _minus(a: tuple[datetime, datetime | None], b: tuple[datetime, datetime | None]) -> list[tuple[datetime, datetime | None]]:
    """The span a without b (0-2 spans)."""
    if _overlap(a, b) is None:
        return [a]
    out: list[tuple[datetime, datetime | None]] = []
    if a[0] < b[0]:
        out.append((a[0], b[0]))
    if b[1] is not None and (a[1] is None or b[1] < a[1]):
        out.append((b[1], a[1]))
    return out


def phase_id(sub: dict[str, Any], phase_key: str) -> str:
    """The id of a subscription's phase (ULID-shaped, stable: the subscription's id and the phase's key)."""
    return derived_id(sub["id"], "phase", phase_key)


def item_id(sub: dict[str, Any], phase_key: str, rate_card_key: str) -> str:
    """The id of a subscription item: a phase's rate card (every version of it shares the id)."""
    return derived_id(sub["id"], "item", phase_key, rate_card_key)


def item_reference(sub: dict[str, Any], source: str, rate_card_key: str, at: datetime) -> tuple[str, str]:
    """(phase id, item id) of the subscription item a charge comes from (an Item's source and rate card key): a
    phase's rate card, or an add-on's rate card in the phase in force at `at`."""
    kind, _, rest = source.partition(":")
    if kind == "phase":
        phase_key = rest.split("#")[0]
        return phase_id(sub, phase_key), item_id(sub, phase_key, rate_card_key)
    phases = [ph for ph in sub["phases"] if parse_rfc3339(ph["activeFrom"], "activeFrom") <= at] or sub["phases"][:1]
    phase_key = phases[-1]["key"] if phases else ""
    return phase_id(sub, phase_key), derived_id(sub["id"], "addon", rest, rate_card_key)


def active_items(sub: dict[str, Any], at: datetime) -> list[Item]:
    return [i for i in items(sub) if i.start <= at and (i.end is None or at < i.end)]


@dataclass(frozen=True)
class Charge:
    item: Item
    line: pricing.Line
    usage: Decimal | None = None  # the metered usage the line was rated on (None: a flat price, no meter read)

    def to_json(self) -> dict[str, Any]:
        ln = self.line
        out: dict[str, Any] = {
            "rateCardKey": self.item.rate_card["key"], "featureKey": self.item.rate_card.get("featureKey"),
            "source": self.item.source, "name": ln.description,
            "period": {"from": format_rfc3339(ln.period_start), "to": format_rfc3339(ln.period_end)},
            "quantity": ln.quantity, "perUnitAmount": ln.unit_price, "amount": ln.amount_rounded,
            "discountsTotal": ln.discounts_total, "total": ln.total, "currency": ln.currency,
            "paymentTerm": ln.payment_term, "category": ln.category,
        }
        if ln.tier is not None:
            out["tier"] = ln.tier
        if ln.proration is not None:
            out["proration"] = {"served": str(ln.proration), "value": _share(ln.proration)}
        if ln.discounts:
            out["discounts"] = [{"reason": d.reason, "description": d.description, "amount": d.amount}
                                for d in ln.discounts]
        return out


def _share(f: Fraction) -> str:
    return format((Decimal(f.numerator) / Decimal(f.denominator)).quantize(Decimal("0.000001")), "f")


def _item_periods(item: Item, sub: dict[str, Any], start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """The item's own billing periods that this invoice period [start, end) settles: for a rate card on the
    subscription's cadence, exactly [start, end); otherwise its own periods (counted from the same anchor)
    that end inside it (in arrears) or begin inside it (in advance)."""
    cadence = item.rate_card.get("billingCadence")
    if cadence == sub["billingCadence"]:
        return [(start, end)]
    grid = RecurringPeriod(str(cadence), parse_rfc3339(sub["billingAnchor"], "billingAnchor"))
    term = (item.rate_card.get("price") or {}).get("paymentTerm")
    if term is None:
        term = "in_advance" if item.rate_card["type"] == "flat_fee" else "in_arrears"
    bounds = grid.boundaries(start, end)
    if term == "in_advance":  # periods beginning in [start, end)
        return [(b, grid.next_after(b)) for b in bounds if b < end]
    return [(grid.containing(b - _TICK)[0], b) for b in bounds if b > start]  # periods ending in (start, end]


def _spans(sub: dict[str, Any], period_start: datetime, period_end: datetime) -> Iterator[tuple[Item, datetime, datetime, datetime, datetime]]:
    """(item, its period start/end, served start/end) for every recurring rate card with a price that this
    billing period settles."""
    for item in billed_items(sub):
        if item.rate_card.get("price") is None or item.rate_card.get("billingCadence") is None:
            continue
        for ps, pe in _item_periods(item, sub, period_start, period_end):
            served = _overlap((ps, pe), (item.start, item.end))
            if served is not None:
                yield item, ps, pe, served[0], served[1] if served[1] is not None else pe


SplitsFn = Callable[[str], bool]  # feature key -> whether its meter's usage may be billed in parts (progressive)


def _rated(sub: dict[str, Any], period_start: datetime, period_end: datetime, until: datetime | None,
           splits: SplitsFn | None) -> Iterator[tuple[Item, datetime, datetime, datetime, datetime, datetime]]:
    """`_spans` with where each span's usage is read up to: its end; or, billed progressively up to `until`, only the
    usage prices that OpenMeter splits (unit, graduated, package, dynamic on a meter `splits` allows) of the rate
    cards on the subscription's own cadence, each up to `until` (a span not started by then: none)."""
    for item, ps, pe, s, e in _spans(sub, period_start, period_end):
        if until is None:
            yield item, ps, pe, s, e, e
            continue
        price = item.rate_card["price"]
        if ((ps, pe) != (period_start, period_end) or not pricing.splittable(pricing.parse_price(price))
                or (splits is not None and not splits(item.rate_card["featureKey"]))):
            continue
        if (cut := min(e, until)) > s:
            yield item, ps, pe, s, e, cut


def usage_spans(sub: dict[str, Any], period_start: datetime, period_end: datetime, *, until: datetime | None = None,
                splits: SplitsFn | None = None) -> list[tuple[str, datetime, datetime]]:
    """(feature key, start, end) of every usage measurement `charges` will ask for in this billing period (billed
    progressively up to `until`: see `charges`)."""
    return [(item.rate_card["featureKey"], s, cut) for item, _, _, s, _, cut in
            _rated(sub, period_start, period_end, until, splits)
            if item.rate_card["type"] == "usage_based" and item.rate_card["price"].get("type") != "flat"]


def charges(sub: dict[str, Any], period_start: datetime, period_end: datetime, *, usage: UsageFn,
            rounding: Rounding = "ROUND_HALF_UP", until: datetime | None = None,
            splits: SplitsFn | None = None) -> list[Charge]:
    """What the subscription owes for its billing period [period_start, period_end): one or more detailed lines
    per rate card in force during it.

    `until` (progressive billing, OpenMeter's split line): what the period's usage up to `until` owes so far, of the
    usage prices that may be split alone (`_rated`): rated as the period's first part (`pricing.rate_part`: a
    graduated price's first tier fee, the maximum spend over the period, no minimum spend, which only its last part
    bills); every other charge waits for the period's end."""
    prorate = bool((sub.get("proRatingConfig") or {}).get("enabled", True))
    cur = sub["currency"]
    out: list[Charge] = []
    for item in billed_items(sub) if until is None else ():  # one-time fees: in the period where their item starts
        rc = item.rate_card
        if rc.get("price") is not None and rc.get("billingCadence") is None and period_start <= item.start < period_end:
            price = pricing.parse_price(rc["price"])
            assert isinstance(price, pricing.FlatPrice)
            one = replace(price, amount=price.amount * item.quantity)
            out += [Charge(item, ln) for ln in pricing.rate(
                one, Decimal(0), currency=cur, rounding=rounding, period_start=period_start, period_end=period_end,
                discounts=pricing.parse_discounts(rc.get("discounts")), name=rc["name"])]
    for item, ps, pe, s, e, cut in _rated(sub, period_start, period_end, until, splits):
        rc = item.rate_card
        price = pricing.parse_price(rc["price"])
        discounts = pricing.parse_discounts(rc.get("discounts"))
        if isinstance(price, pricing.FlatPrice):
            flat = replace(price, amount=price.amount * item.quantity)
            lines = pricing.rate(flat, Decimal(0), currency=cur, rounding=rounding, period_start=ps, period_end=pe,
                                 served_start=s if prorate else ps, served_end=e if prorate else pe,
                                 discounts=discounts, name=rc["name"])
        else:
            part = _prorated_commitments(price, ps, pe, s, e, cur, rounding) if prorate and (s, e) != (ps, pe) else price
            metered = usage(rc["featureKey"], s, cut)
            if cut < e:  # progressive: the period's first part, up to `cut`
                lines = pricing.rate_part(part, usage_before=Decimal(0), usage_after=pricing.billable_usage(metered),
                                          billed_before=Decimal(0), currency=cur, rounding=rounding, period_start=s,
                                          period_end=e, part_start=s, part_end=cut, discounts=discounts, name=rc["name"])
            else:
                lines = pricing.rate(part, pricing.billable_usage(metered), currency=cur, rounding=rounding,
                                     period_start=ps, period_end=pe, served_start=s, served_end=e, discounts=discounts,
                                     name=rc["name"])
            if not lines and cut < e and metered > 0:  # a part that bills nothing of its usage (e.g. all of it free):
                # OpenMeter keeps the split line (0.00) and the later part has its usage before it; a zero line
                # carries the usage to the mark (billing.diff)
                lines = [pricing.Line(key="usage", description=rc["name"], quantity=Decimal(0), unit_price=Decimal(0),
                                      amount=Decimal(0), amount_rounded=Decimal(0), currency=cur,
                                      rounding=rounding, period_start=s, period_end=cut)]
            out += [Charge(item, ln, metered) for ln in lines]
            continue
        out += [Charge(item, ln) for ln in lines]
    return out


def _prorated_commitments(price: pricing.UsagePrice, ps: datetime, pe: datetime, s: datetime, e: datetime,
                          currency: str, rounding: Rounding) -> pricing.UsagePrice:
    def part(amount: Decimal | None) -> Decimal | None:
        if amount is None:
            return None
        return pricing.prorate(amount, period_start=ps, period_end=pe, served_start=s, served_end=e,
                               currency=currency, rounding=rounding)[0]

    if price.minimum_amount is None and price.maximum_amount is None:
        return price
    return replace(price, minimum_amount=part(price.minimum_amount), maximum_amount=part(price.maximum_amount))
