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
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from billow.domain import invoices as inv_rules
from billow.domain import pricing
from billow.domain import subscriptions as subs
from billow.exact import EXACT
from billow.ids import new_id
from billow.timeutil import format_rfc3339, parse_rfc3339

CORRECTION_WINDOW = timedelta(days=7)  # a period's points are re-checked for corrections this long after it ends


@dataclass(frozen=True)
class Mark:
    subscription_id: str
    period_start: datetime
    term: str  # in_advance | in_arrears
    rev: int  # the revision the run read (0: no mark yet)
    billed: dict[str, dict[str, str]]  # line key -> {"total", "quantity", "amount", "discounts"} (decimal strings)
    billed_at: datetime | None = None
    # The customer's subjects the period's usage was billed with: a re-check reads its usage with them, not with the
    # customer's subjects of now (a subject moved to another customer does not take invoiced usage along). None: a
    # mark written before marks recorded them (read with the current subjects).
    subjects: tuple[str, ...] | None = None
    # What each invoice that advanced the mark billed of it (invoice id -> line key -> the entry's change): a draft
    # deleted before it is issued gives its part back (`without`). Marks written before record none.
    invoices: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    # A deleted draft gave its part back: the point is owed again and due even after CORRECTION_WINDOW, until a
    # run bills it (and writes the mark without the flag).
    reopened: bool = False
    # Progressive billing (an in-arrears point of a period in progress): the instant its usage was billed up to; the
    # next part starts there, and the period's end bills the rest as the last part (not as a correction). None: the
    # point was billed whole (or not progressively at all).
    until: datetime | None = None
    # Per invoice that billed a part of a progressively billed point: where the point's billing stood before it (the
    # period's start for the first part): a deleted draft puts `until` back there.
    split_from: dict[str, str] = field(default_factory=dict)
    # Not stored: what this run's advance of the mark billed (line key -> change), filed under its invoice's id when
    # the invoice is made (services/billing_run._prepare); and where the point stood before it (`split_from`).
    change: dict[str, dict[str, str]] = field(default_factory=dict, compare=False)
    was: datetime | None = field(default=None, compare=False)

    def doc(self) -> dict[str, Any]:
        """The stored JSON: `billed`, and the subjects, invoices and reopened flag under keys no line key can be
        (line keys hold `|`)."""
        out: dict[str, Any] = dict(self.billed)
        if self.subjects is not None:
            out[SUBJECTS_ENTRY] = list(self.subjects)
        if self.invoices:
            out[INVOICES_ENTRY] = self.invoices
        if self.reopened:
            out[REOPENED_ENTRY] = True
        if self.until is not None:
            out[UNTIL_ENTRY] = format_rfc3339(self.until)
        if self.split_from:
            out[PARTS_ENTRY] = self.split_from
        return out

    @staticmethod
    def parts(doc: Mapping[str, Any]) -> tuple[dict[str, dict[str, str]], tuple[str, ...] | None]:
        """A stored doc's `billed` (the line entries alone) and subjects."""
        subjects = doc.get(SUBJECTS_ENTRY)
        return ({k: v for k, v in doc.items() if not k.startswith("@")},
                None if subjects is None else tuple(subjects))

    @classmethod
    def stored(cls, subscription_id: str, period_start: datetime, term: str, rev: int, doc: Mapping[str, Any],
               billed_at: datetime | None) -> Mark:
        """A mark as read from its stored JSON (`doc`)."""
        billed, subjects = cls.parts(doc)
        until = doc.get(UNTIL_ENTRY)
        return cls(subscription_id, period_start, term, rev, billed, billed_at, subjects,
                   dict(doc.get(INVOICES_ENTRY) or {}), bool(doc.get(REOPENED_ENTRY)),
                   None if until is None else parse_rfc3339(until, UNTIL_ENTRY), dict(doc.get(PARTS_ENTRY) or {}))

    def without(self, invoice_id: str) -> Mark:
        """The mark with what invoice `invoice_id` billed of it given back (its draft was deleted): each entry less
        that invoice's change (an entry left at zero goes), the invoice forgotten, the point reopened. Same `rev`:
        the store moves it from the revision read (or deletes it when nothing is left: `empty`)."""
        billed = {k: dict(v) for k, v in self.billed.items()}
        with decimal.localcontext(EXACT):
            for k, ch in self.invoices.get(invoice_id, {}).items():
                was = billed.get(k, {})
                entry = {f: _sub(was.get(f), ch.get(f)) for f in ENTRY_FIELDS if f in was or f in ch}
                if all(Decimal(v) == 0 for v in entry.values()):
                    billed.pop(k, None)
                else:
                    billed[k] = _entry(entry)
        invoices = {i: v for i, v in self.invoices.items() if i != invoice_id}
        until = self.until
        if invoice_id in self.split_from:  # a part of a progressively billed point: its billing stands where it stood
            # before that part (or earlier, when a later part is still billed)
            before = parse_rfc3339(self.split_from[invoice_id], PARTS_ENTRY)
            until = before if until is None else min(until, before)
        parts = {i: v for i, v in self.split_from.items() if i != invoice_id}
        return replace(self, billed=billed, invoices=invoices, reopened=True, until=until, split_from=parts)

    @property
    def empty(self) -> bool:
        """Nothing billed and no invoice's part left: the mark can go (its point is new again)."""
        return not self.billed and not self.invoices


SUBJECTS_ENTRY = "@subjects"  # the stored mark's entry of the subjects it was billed with (never a line key)
INVOICES_ENTRY = "@invoices"  # ... of what each invoice billed of it
REOPENED_ENTRY = "@reopened"  # ... saying a deleted draft gave its part back
UNTIL_ENTRY = "@until"  # ... of the instant a progressively billed point was billed up to
PARTS_ENTRY = "@parts"  # ... of where each part's invoice found the point's billing
ENTRY_FIELDS = ("total", "quantity", "amount", "discounts", "usage")
_QUANTITIES = ("quantity", "usage")


def _sub(a: str | None, b: str | None) -> Decimal:
    return Decimal(a or "0") - Decimal(b or "0")


def _entry(values: Mapping[str, Decimal]) -> dict[str, str]:
    """A mark entry's fields as stored: amounts in plain decimal, quantities without trailing zeros."""
    return {f: plain(v) if f in _QUANTITIES else format(v, "f") for f, v in values.items()}


def change(before: Mapping[str, Mapping[str, str]], after: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
    """What moved between two `billed` states, per line key that changed (each field after less before)."""
    out: dict[str, dict[str, str]] = {}
    with decimal.localcontext(EXACT):
        for k, now in after.items():
            was = before.get(k, {})
            if now == was:
                continue
            out[k] = _entry({f: _sub(now.get(f), was.get(f)) for f in ENTRY_FIELDS if f in now or f in was})
    return out


@dataclass
class Point:
    sub: dict[str, Any]
    period: tuple[datetime, datetime]
    term: str
    mark: Mark  # rev 0 when new
    # Progressive billing: the in-arrears point of a period in progress, rated up to this instant (its usage lines
    # that may be split: `subscriptions.charges(until=)`). None: the point is due and rated whole.
    until: datetime | None = None


def due_points(sub: dict[str, Any], as_of: datetime, marks: Mapping[tuple[str, datetime, str], Mark],
               now: datetime) -> list[Point]:
    """The billing points of `sub` due by `as_of`: each period's in-advance term at its start (or the
    subscription's), its in-arrears term at its end (or the subscription's end inside it). A point with a mark is
    re-checked (for corrections) until CORRECTION_WINDOW after its period ends (one billed progressively up to a cut,
    `Mark.until`, until its period's end has billed the rest, however late); a new point gets rev 0."""
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
            if mark is not None and not mark.reopened and mark.until is None and pe + CORRECTION_WINDOW < now:
                continue  # closed: corrections end CORRECTION_WINDOW after the period (unless a deleted draft
                # gave its part back; or only a progressive part of it is billed: the rest is owed however late)
            out.append(Point(sub, (ps, pe), term, mark or Mark(sub["id"], ps, term, 0, {})))
        ps = pe
    return out


def due_at(point: Point) -> datetime:
    """When a point is due (`due_points`), OpenMeter's invoiceAt of its lines (billing/worker/subscriptionsync/service/
    targetstate/phaseiterator.go GetInvoiceAt): an in-advance term at its period's start (or the subscription's), an
    in-arrears one at its period's end (or the subscription's end inside it). The last part of a progressively billed
    period keeps it, as OpenMeter's split line after the split point keeps the line's invoiceAt."""
    start, end = subs.t(point.sub["activeFrom"]), subs.t(point.sub.get("activeTo"))
    assert start is not None
    ps, pe = point.period
    if point.term == "in_advance":
        return max(ps, start)
    return min(pe, end) if end is not None else pe


def progressive_point(sub: dict[str, Any], as_of: datetime, cut: datetime,
                      marks: Mapping[tuple[str, datetime, str], Mark]) -> Point | None:
    """OpenMeter's progressive billing (rating/service/rate/base.go ProgressiveBillingMeteredPricer): the in-arrears
    point of `sub`'s period in progress at `cut` (`as_of`'s minute), to be billed up to `cut`: None when no period is
    in progress (the subscription has not started by `cut`) or its in-arrears point is due whole by `as_of`
    (`due_points`: its period or the subscription ended, also inside `cut`'s minute) or was billed up to `cut`
    already. A period's usage served only from `cut` on bills nothing here (OpenMeter bills a line only when `cut`
    is after its period's start)."""
    start, end = subs.t(sub["activeFrom"]), subs.t(sub.get("activeTo"))
    assert start is not None
    if cut <= start:
        return None
    ps, pe = subs.cycle(sub).containing(cut)
    if cut == ps or min(pe, end or pe) <= as_of:
        return None  # nothing of the period served by `cut`; or its point due whole (`due_points` has it)
    mark = marks.get((sub["id"], ps, "in_arrears"))
    if mark is not None and (mark.until is None or mark.until >= cut):
        return None  # billed whole (e.g. a late correction's mark), or up to `cut` already
    return Point(sub, (ps, pe), "in_arrears", mark or Mark(sub["id"], ps, "in_arrears", 0, {}), until=cut)


def charge_key(c: subs.Charge) -> str:
    """What a mark records a billed amount under: source | rate card key | line key | category. An add-on's spans of
    one quantity each have their own (its first span's key as it always was; a later one's line key ends with
    "@<its start>"), so two spans in one period are both billed, each a detailed line of the add-on's line."""
    return f"{c.item.source}|{c.item.rate_card['key']}|{c.line.key}{c.item.span}|{c.line.category}"


def diff(point: Point, charges: list[subs.Charge], now: datetime) -> tuple[list[dict[str, Any]], dict[str, dict[str, str]]]:
    """Invoice lines for what this point owes beyond what it was billed, and the new billed state.

    A progressively billed point (OpenMeter's split line): a part up to `point.until` is a line of its period up to
    there, invoiceAt `until`; the part after one (the mark's `until`) bills the usage since as the next part, with
    the usage billed before it as its `preLinePeriodQuantity`, not as a correction (`later_part` then shows its
    period from there)."""
    billed: dict[str, dict[str, str]] = dict(point.mark.billed)
    at = point.until or due_at(point)  # OpenMeter: a split line's part up to the split is invoiced there
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    current: dict[str, subs.Charge] = {}
    # a usage item's metered usage per item period, with its rate card's usage discount (the units free first)
    metered: dict[tuple[str, str], dict[datetime, tuple[Decimal, Decimal | None]]] = {}
    for c in charges:
        if c.line.payment_term != point.term:
            continue
        k = charge_key(c)
        current[k] = c
        if c.usage is not None:
            free = pricing.parse_discounts(c.item.rate_card.get("discounts")).usage_quantity
            metered.setdefault(_group(k), {})[c.line.period_start] = (c.usage, free)
    with decimal.localcontext(EXACT):
        usage = {g: sum((u for u, _ in per.values()), Decimal(0)) for g, per in metered.items()}
        before = _usage_billed(billed)
        marked = {_group(k) for k in billed}
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
            now_usage = usage.get(_group(k)) if ch is not None else None
            # usage recorded before that changed (e.g. inside the same package) is recorded, not invoiced
            # (a progressively billed part records the usage it saw also when it bills nothing of it: the part after
            # it has that usage before it, as OpenMeter's split line does)
            usage_moved = now_usage is not None and ("usage" in was or point.until is not None) \
                and Decimal(was.get("usage", "0")) != now_usage
            if d_total == 0 and d_qty == 0 and not usage_moved:
                continue
            billed[k] = {"total": format(total, "f"), "quantity": plain(qty), "amount": format(amount, "f"),
                         "discounts": format(disc, "f")}
            if now_usage is not None:
                billed[k]["usage"] = plain(now_usage)
            source, card_key, line_key, category = k.split("|")
            if d_total == 0:  # a quantity that costs nothing more (e.g. inside a free allowance) is recorded, not
                # invoiced; a progressively billed part's usage line that bills nothing is on the invoice (0.00, no
                # detailed line), as OpenMeter keeps its split line
                if point.until is not None and ch is not None and ch.usage is not None:
                    groups.setdefault((source, card_key), _parent(point, ch.item.rate_card, ch.item, source, now, at))
                continue
            correction = point.mark.rev > 0 and k in point.mark.billed and point.mark.until is None
            item = ch.item if ch else _item_of(k, current, point)
            rc: dict[str, Any] = item.rate_card if item else {"key": card_key, "name": card_key, "type": "usage_based"}
            group = groups.setdefault((source, card_key), _parent(point, rc, item, source, now, at))
            d_amount = amount - Decimal(was.get("amount", was["total"]))
            d_disc = disc - Decimal(was.get("discounts", "0"))
            group["children"].append(detailed_line(
                name=f"{ch.line.description if ch else rc['name'] + ': ' + line_key}"
                     f"{' (correction)' if correction else ''}",
                managed_by="subscription", category=category, quantity=plain(d_qty),
                per_unit=plain(ch.line.unit_price) if ch else "0", payment_term=point.term,
                period=period_json(ch.line.period_start, ch.line.period_end) if ch else group["period"],
                invoice_at=at, currency=point.sub["currency"], totals=inv_rules.totals(d_amount, d_disc),
                tax_config=rc.get("taxConfig"), now=now))
    for k, entry in billed.items():  # a usage item's entries all say the usage billed of it so far (a part's zero
        # line, `subscriptions.charges`, is one more entry of its item)
        if "usage" in entry and _group(k) in usage and billed != point.mark.billed:
            billed[k] = {**entry, "usage": plain(usage[_group(k)])}
    lines = []
    for g, group in groups.items():
        group["totals"] = inv_rules.sum_totals(group["children"])
        with decimal.localcontext(EXACT):
            if g in usage and (g in before or g not in marked):
                # OpenMeter's usage-based line: the usage it bills (its detailed lines carry their own quantities: a
                # tier's flat price 1, a package price its packages), less its usage discount, and the metered usage
                # when that differs; a later part of a progressively billed period also the usage of the parts before
                # it. A correction bills the usage since the period was last billed.
                group.update(usage_line_quantities(list(metered[g].values()), before.get(g, Decimal(0)),
                                                   split=point.mark.until is not None))
            else:  # a flat fee; or a correction to a mark that recorded no usage (written before marks did)
                group["quantity"] = plain(sum((Decimal(child["quantity"]) for child in group["children"]
                                                if child["category"] == "regular"), Decimal(0)))
        lines.append(group)
    return lines, billed


def usage_quantities(metered: Decimal, pre: Decimal, free: Decimal | None) -> tuple[Decimal, Decimal]:
    """OpenMeter's usage discount on a usage line's quantities (rating/service/mutator/discountusage.go
    ApplyUsageDiscount): the `free` units of the period go first to the usage before the line's period (`pre`: the
    earlier parts of a progressively billed period), what is left of them to the line's own `metered` usage. Returns
    (quantity, preLinePeriodQuantity) after the discount; without one, the metered values themselves."""
    if free is None:
        return metered, pre
    with decimal.localcontext(EXACT):
        # the same as the free units going to `pre` first and what is left of them to `metered`, and also right for
        # a `metered` below zero (usage back down since the earlier parts: the line credits what they billed over)
        whole = pre + metered
        return (whole - min(free, max(whole, Decimal(0)))) - (pre - min(free, pre)), pre - min(free, pre)


def usage_line_quantities(metered: list[tuple[Decimal, Decimal | None]], billed: Decimal, *,
                          split: bool) -> dict[str, str]:
    """A usage-based line's quantity fields as OpenMeter serves them (billing/httpdriver/invoiceline.go
    mapInvoiceLineToAPI, quantities from lineengine/quantitysnapshot.go): `quantity` after the usage discount,
    `meteredQuantity` (the usage metered in the line's period, before discounts) only when it differs from it,
    `preLinePeriodQuantity` (after discounts) and `meteredPreLinePeriodQuantity` (metered) of a split line's later
    part, each only when not zero.

    `metered`: the usage of each item period the line settles, cumulative from its start, with its usage discount;
    `billed`: the metered usage billed of them before (a split line's earlier parts, `split`; or what a correction
    corrects). A line of several item periods with usage billed before (a correction) shows its metered usage: the
    discount each period used before is not recorded."""
    with decimal.localcontext(EXACT):
        raw = sum((u for u, _ in metered), Decimal(0)) - billed
        pre_raw = billed if split else Decimal(0)
        if len(metered) == 1:
            qty, pre = usage_quantities(raw, billed, metered[0][1])
        elif billed == 0:
            qty, pre = sum((usage_quantities(u, Decimal(0), free)[0] for u, free in metered), Decimal(0)), billed
        else:
            qty, pre = raw, billed
        out = {"quantity": plain(qty)}
        if qty != raw:
            out["meteredQuantity"] = plain(raw)
        if split and pre != 0:
            out["preLinePeriodQuantity"] = plain(pre)
        if pre_raw != 0:
            out["meteredPreLinePeriodQuantity"] = plain(pre_raw)
        return out


def _item_of(key: str, current: Mapping[str, subs.Charge], point: Point) -> subs.Item | None:
    """The subscription item a charge billed before but gone now (its usage back to nothing, below a tier) belongs
    to: a charge of the same item still billed, else the item in force in the point's period. Its credit then goes
    on the rate card's line, named and priced as the plan has it; before, when it was the only change of the point,
    the line was named by the rate card's key and had no price."""
    source, card_key, line_key, _ = key.split("|")
    span = line_key[line_key.index("@"):] if "@" in line_key else ""
    for c in current.values():
        if (c.item.source, c.item.rate_card["key"], c.item.span) == (source, card_key, span):
            return c.item
    ps, pe = point.period
    for it in subs.billed_items(point.sub):
        if ((it.source, it.rate_card["key"], it.span) == (source, card_key, span) and it.start < pe
                and (it.end is None or it.end > ps)):
            return it
    return None


def _group(key: str) -> tuple[str, str]:
    """The invoice line (subscription item: source, rate card key) a mark key's detailed line belongs to."""
    source, card_key, _ = key.split("|", 2)
    return source, card_key


def _usage_billed(billed: Mapping[str, Mapping[str, str]]) -> dict[tuple[str, str], Decimal]:
    """Per usage item, the metered usage its mark records as billed (the `usage` its entries carry; none in a mark
    written before they carried it)."""
    return {_group(k): Decimal(v["usage"]) for k, v in billed.items() if "usage" in v}


def plain(value: Decimal) -> str:
    """A quantity without trailing zeros (usage stores keep 18 decimals): 1500, 0.25, never 1.5E+3."""
    return "0" if value == 0 else format(value.normalize(), "f")


def period_json(s: datetime, e: datetime) -> dict[str, str]:
    return {"from": format_rfc3339(s), "to": format_rfc3339(e)}


def rate_card_json(*, price: dict[str, Any] | None, feature_key: str | None = None,
                   tax_config: dict[str, Any] | None = None, discounts: dict[str, Any] | None = None) -> dict[str, Any]:
    """A line's `rateCard` (OpenMeter's InvoiceUsageBasedRateCard): the price (null: free), the feature, the tax
    config and the discounts of the rate card that produced it, as that rate card has them."""
    out: dict[str, Any] = {"price": price}
    if feature_key:
        out["featureKey"] = feature_key
    if tax_config is not None:
        out["taxConfig"] = tax_config
    if discounts:
        out["discounts"] = discounts
    return out


def line_rate_card_fields(card: dict[str, Any]) -> dict[str, Any]:
    """An invoice line's rate card fields as OpenMeter serves them: `rateCard`, and its deprecated copies `price`,
    `featureKey` and `taxConfig` at the top (each only when set: the schema's fields are not nullable)."""
    out: dict[str, Any] = {"rateCard": card}
    for key in ("price", "featureKey", "taxConfig"):
        if card.get(key) is not None:
            out[key] = card[key]
    return out


def detailed_line(*, name: str, managed_by: str, category: str, quantity: str, per_unit: str, payment_term: str,
                  period: dict[str, str], invoice_at: datetime | str, currency: str, totals: dict[str, str],
                  tax_config: dict[str, Any] | None, now: datetime) -> dict[str, Any]:
    """A detailed (child) line, OpenMeter's InvoiceDetailedLine: a flat amount per unit times a quantity, with its
    rate card (that flat price, the quantity, the parent's tax config)."""
    stamp = format_rfc3339(now)
    card: dict[str, Any] = {"price": {"type": "flat", "amount": per_unit, "paymentTerm": payment_term},
                            "quantity": quantity}
    out: dict[str, Any] = {
        "id": new_id(), "name": name, "type": "flat_fee", "managedBy": managed_by, "status": "valid",
        "category": category, "quantity": quantity, "perUnitAmount": per_unit, "paymentTerm": payment_term,
        "period": period, "invoiceAt": invoice_at if isinstance(invoice_at, str) else format_rfc3339(invoice_at),
        "currency": currency, "totals": totals, "createdAt": stamp, "updatedAt": stamp}
    if tax_config is not None:
        card["taxConfig"] = tax_config
        out["taxConfig"] = tax_config
    out["rateCard"] = card
    return out


def later_part(lines: list[dict[str, Any]], point: Point) -> None:
    """The lines of a progressively billed point's part after the first (its mark billed up to `mark.until`): the
    lines of the items billed in parts before (OpenMeter's split line after the split point) start there; an item
    that was not split (e.g. a flat fee in arrears, a volume price) keeps its whole period."""
    until = point.mark.until
    if until is None:
        return
    parted = {subs.item_reference(point.sub, *_group(k), point.period[0])[1] for k in point.mark.billed}
    for line in lines:
        if (line.get("subscription") or {}).get("item", {}).get("id") not in parted:
            continue
        for ln in [line, *line.get("children", [])]:
            span = (parse_rfc3339(ln["period"]["from"], "from"), parse_rfc3339(ln["period"]["to"], "to"))
            if span[0] < until < span[1]:
                ln["period"] = period_json(until, span[1])


def _parent(point: Point, rc: dict[str, Any], item: subs.Item | None, source: str, now: datetime,
            at: datetime) -> dict[str, Any]:
    """The line of one subscription item in a billing point: OpenMeter's InvoiceLine (type usage_based, also for a
    flat fee: its price is flat), carrying the item's rate card as the plan had it and the subscription reference
    (subscription, phase, item, billing period); `subscription.id` is Billow's older spelling of the subscription's
    id, kept for readers of stored invoices."""
    sub = point.sub
    s, e = point.period
    phase_ref, item_ref = subs.item_reference(sub, source, rc["key"], item.start if item else s)
    if item is not None:
        s, e = max(s, item.start), min(e, item.end) if item.end else e
    if point.until is not None:
        e = min(e, point.until)
    card = rate_card_json(price=rc.get("price"), feature_key=rc.get("featureKey"), tax_config=rc.get("taxConfig"),
                          discounts=rc.get("discounts"))
    ref = {"id": sub["id"], "subscription": {"id": sub["id"]}, "phase": {"id": phase_ref}, "item": {"id": item_ref},
           "billingPeriod": period_json(*point.period)}
    return {"id": new_id(), "name": rc["name"], "type": "usage_based", "managedBy": "subscription", "status": "valid",
            **line_rate_card_fields(card), "currency": sub["currency"],
            "period": period_json(s, e), "invoiceAt": format_rfc3339(at), "createdAt": format_rfc3339(now),
            "updatedAt": format_rfc3339(now), "subscription": ref, "children": []}
