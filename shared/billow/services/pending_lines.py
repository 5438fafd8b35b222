"""Pending lines: one-off lines for a customer (OpenMeter's InvoicePendingLineCreateInput), held on its gathering
invoice per currency until a billing run at or after their `invoiceAt` rates them onto an invoice."""

from __future__ import annotations

import decimal
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from billow import jsonx
from billow.domain import fields, pricing
from billow.domain import invoices as inv_rules
from billow.domain.billing import (
    detailed_line,
    line_rate_card_fields,
    plain,
    rate_card_json,
    usage_line_quantities,
)
from billow.domain.catalog import parse_tax_config
from billow.domain.entitlements import minute
from billow.domain.lineage import EMPTY, lineage_json
from billow.domain.money import Currency
from billow.errors import Conflict, ValidationFailed
from billow.exact import EXACT, parse_decimal
from billow.ids import new_id
from billow.ports import BillingStore, MetaStore, UsageStore
from billow.services.billing_profiles import resolve_customer, resolved_profile
from billow.services.entitlements import EntitlementStore
from billow.services.invoices import invoice_prefix, new_invoice
from billow.services.lineage import measurement
from billow.timeutil import as_of, format_rfc3339, parse_rfc3339

bad = ValidationFailed.at
ADD_ATTEMPTS: Final = 10  # writers adding to one customer's pending lines at once that one add outlasts


def add_pending_lines(namespace: str, customer_id: str, body: object, *, store: BillingStore, meta: MetaStore, ents: EntitlementStore,
                      now: datetime) -> dict[str, Any]:
    """One-off lines for a customer (OpenMeter's InvoicePendingLineCreateInput): a flat price (a one-off charge)
    or a usage price on a feature (its meter's usage over the line's period). They wait on the customer's
    gathering invoice for that currency and go onto the first invoice made at or after their `invoiceAt`."""
    customer = resolve_customer(namespace, customer_id, meta)
    if not isinstance(body, dict):
        raise bad("body", "must be {currency, lines}")
    currency = Currency.of(body.get("currency")).code
    if customer.get("currency") and customer["currency"] != currency:
        raise bad("currency", f"customer {customer.get('key') or customer['id']} is billed in {customer['currency']}, "
                              f"not {currency}")
    raw = body.get("lines")
    if not isinstance(raw, list) or not raw:
        raise bad("lines", "must be a non-empty list")
    lines = [_pending_line(ln, f"lines[{i}]", namespace, ents, now) for i, ln in enumerate(raw)]
    for ln in lines:
        ln["currency"] = currency
    stamp = format_rfc3339(now)
    attempt = 0
    while True:
        attempt += 1
        # Another container may make the holder or add to it (or a billing run take its lines) between this read
        # and the write: the write is guarded (a new holder by its number, one read by its stored JSON), and a lost
        # race reads again and adds the lines to what the other wrote.
        holder = _holder(namespace, customer, currency, store)
        is_new = holder is None
        if holder is None:
            holder = _new_holder(customer, currency, stamp)
        before = None if is_new else jsonx.dumps(holder)
        # never stamped before the edit it follows (one by a container whose clock is ahead)
        holder = {**holder, "lines": holder["lines"] + lines, "updatedAt": _after(now, holder)}
        try:
            if before is None:
                store.put_invoice(namespace, holder)
            else:
                store.put_invoice(namespace, holder, expect_status=holder["status"], expect_doc=before)
        except Conflict:
            if attempt == ADD_ATTEMPTS:
                raise
            continue
        return {"lines": lines, "invoice": holder, "isInvoiceNew": is_new}


def _holder(namespace: str, customer: dict[str, Any], currency: str, store: BillingStore) -> dict[str, Any] | None:
    """The customer's gathering invoice for `currency` (the holder of its pending lines), if it has one."""
    return next((g for g in store.list_invoices(namespace, customer_ids=[customer["id"]], statuses=["gathering"])
                 if g["currency"] == currency), None)


def _new_holder(customer: dict[str, Any], currency: str, stamp: str) -> dict[str, Any]:
    holder = {"id": new_id(), "number": f"{invoice_prefix(customer)}-GATHERING-{currency}", "type": "standard",
              "currency": currency, "customer": {"id": customer["id"], "key": customer.get("key"),
                                                 "name": customer.get("name")},
              "lines": [], "totals": inv_rules.totals(Decimal(0), Decimal(0)), "createdAt": stamp, "updatedAt": stamp}
    inv_rules.set_status(holder, "gathering")
    return holder


RATED: Final = ("quantity", "meteredQuantity", "children", "lineage")  # what rating adds to a pending line
# (_with_children, rate_pending)


def returned_to_gathering(namespace: str, customer: dict[str, Any], currency: str, lines: list[dict[str, Any]], *,
                          store: BillingStore, now: datetime) -> tuple[dict[str, Any], str | None] | None:
    """A deleted draft's one-off lines back on the customer's gathering invoice for their currency, pending again
    as they were before a run rated them (same ids; no children, quantity or lineage, zero totals: the next run
    that takes them rates them afresh). The holder to write and the JSON it was read as (None: a new holder, to
    insert); None when there are no lines."""
    if not lines:
        return None
    stamp = format_rfc3339(now)
    pending = [{**{k: v for k, v in ln.items() if k not in RATED}, "totals": inv_rules.totals(Decimal(0), Decimal(0)),
                "updatedAt": stamp} for ln in lines]
    holder = _holder(namespace, customer, currency, store)
    if holder is None:
        return {**_new_holder(customer, currency, stamp), "lines": pending}, None
    return {**holder, "lines": holder["lines"] + pending, "updatedAt": _after(now, holder)}, jsonx.dumps(holder)


def _after(now: datetime, holder: dict[str, Any]) -> str:
    """The gathering invoice's new updatedAt: `now`, or the one it replaces when that is later."""
    return format_rfc3339(as_of(now, holder.get("updatedAt")))


def _line_head(doc: object, field_name: str, max_name: int | None = None) -> tuple[dict[str, Any], str, datetime,
                                                                                   datetime, datetime]:
    """What every line body has: the object, its name, period [from, to) and invoiceAt, each refusal naming its field."""
    if not isinstance(doc, dict):
        raise bad(field_name, "must be a line object")
    name = doc.get("name")
    if not isinstance(name, str) or not name.strip() or (max_name is not None and len(name) > max_name):
        raise bad(f"{field_name}.name", "is required" + (f": 1 to {max_name} characters" if max_name else ""))
    period = doc.get("period")
    if not isinstance(period, dict):
        raise bad(f"{field_name}.period", "is required: {from, to}")
    start = parse_rfc3339(str(period.get("from")), f"{field_name}.period.from")
    end = parse_rfc3339(str(period.get("to")), f"{field_name}.period.to")
    if end <= start:
        raise bad(f"{field_name}.period.to", "must be after period.from")
    description = doc.get("description")
    if description is not None and (not isinstance(description, str) or len(description) > 1024):
        raise bad(f"{field_name}.description", "must be a string of at most 1024 characters")
    fields.metadata(doc, f"{field_name}.")  # OpenMeter's Metadata: it was stored and shown back as sent
    return doc, name, start, end, parse_rfc3339(str(doc.get("invoiceAt")), f"{field_name}.invoiceAt")


def _description(doc: dict[str, Any]) -> dict[str, str]:
    """The line's description when it has one (OpenMeter's field is a string, never null)."""
    return {"description": doc["description"]} if doc.get("description") is not None else {}


@dataclass(frozen=True)
class _RateCard:
    """A line body's rate card, read as OpenMeter's createPendingInvoiceLine reads it (its
    mapAndValidateInvoiceLineRateCardDeprecatedFields): `rateCard` {price, featureKey, taxConfig, discounts}, or
    without it the deprecated `price`, `featureKey` and `taxConfig`; given both ways, they must agree."""

    price: pricing.Price
    feature_key: str | None
    tax_config: dict[str, Any] | None
    discounts: pricing.Discounts | None

    def to_json(self) -> dict[str, Any]:
        return rate_card_json(price=pricing.price_to_json(self.price), feature_key=self.feature_key,
                              tax_config=self.tax_config,
                              discounts=pricing.discounts_to_json(self.discounts) if self.discounts else None)


def _feature_key(value: Any, where: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise bad(where, "must be a feature key")
    return value


def _rate_card(doc: dict[str, Any], field_name: str) -> _RateCard:
    old_price = pricing.parse_price(doc["price"], field=f"{field_name}.price") if doc.get("price") is not None else None
    old_feature = _feature_key(doc.get("featureKey"), f"{field_name}.featureKey")
    old_tax = parse_tax_config(doc.get("taxConfig"), f"{field_name}.taxConfig")
    card = doc.get("rateCard")
    if card is None:
        if old_price is None:
            raise bad(f"{field_name}.price", "is required (or give rateCard)")
        return _RateCard(old_price, old_feature, old_tax, None)
    where = f"{field_name}.rateCard"
    if not isinstance(card, dict):
        raise bad(where, "must be an object")
    if card.get("price") is None:
        raise bad(f"{where}.price", "is required")
    price = pricing.parse_price(card["price"], field=f"{where}.price")
    feature = _feature_key(card.get("featureKey"), f"{where}.featureKey")
    tax = parse_tax_config(card.get("taxConfig"), f"{where}.taxConfig")
    if old_price is not None and pricing.price_to_json(old_price) != pricing.price_to_json(price):
        raise bad(f"{field_name}.price", "must equal rateCard.price")
    if old_tax is not None and tax is not None and old_tax != tax:
        raise bad(f"{field_name}.taxConfig", "must equal rateCard.taxConfig")
    if old_feature is not None and feature is not None and old_feature != feature:
        raise bad(f"{field_name}.featureKey", "must equal rateCard.featureKey")
    discounts = None
    if card.get("discounts") is not None:
        discounts = pricing.parse_discounts(card["discounts"], field=f"{where}.discounts")
        if discounts.usage_quantity is not None and isinstance(price, pricing.FlatPrice):
            raise bad(f"{where}.discounts.usage", "usage discounts apply to usage prices only")
    return _RateCard(price, feature, tax, discounts)


def _pending_line(raw: object, field_name: str, namespace: str, ents: EntitlementStore, now: datetime) -> dict[str, Any]:
    doc, name, start, end, invoice_at = _line_head(raw, field_name)
    card = _rate_card(doc, field_name)
    if not isinstance(card.price, pricing.FlatPrice):
        feature = ents.get_feature(namespace, card.feature_key) if card.feature_key else None
        if feature is None or not feature.get("meterSlug"):
            where = f"{field_name}.rateCard" if "rateCard" in doc else field_name
            raise bad(f"{where}.featureKey", "a usage price needs a feature with a meter")
    return {"id": new_id(), "name": name, **_description(doc), "metadata": doc.get("metadata"),
            "type": "usage_based", "managedBy": "manual", "status": "valid",
            "period": {"from": format_rfc3339(start), "to": format_rfc3339(end)},
            "invoiceAt": format_rfc3339(invoice_at), **line_rate_card_fields(card.to_json()),
            "totals": inv_rules.totals(Decimal(0), Decimal(0)),  # not rated yet: it waits on the gathering invoice
            "createdAt": format_rfc3339(now), "updatedAt": format_rfc3339(now)}


def line_card(line: dict[str, Any]) -> tuple[pricing.Price, pricing.Discounts | None]:
    """The price and discounts a stored pending line is rated with (its rateCard; older lines: price alone)."""
    card = line.get("rateCard") or {"price": line["price"]}
    discounts = card.get("discounts")
    return pricing.parse_price(card["price"]), pricing.parse_discounts(discounts) if discounts else None


def rate_pending(namespace: str, line: dict[str, Any], currency: str, subjects: list[str], *, meta: MetaStore,
                  ents: EntitlementStore, usage: UsageStore, now: datetime) -> dict[str, Any]:
    """A one-off line, rated now: its detailed lines as children, exact totals."""
    return _rated(namespace, line, currency, subjects, meta=meta, ents=ents, usage=usage, now=now)[0]


def _rated(namespace: str, line: dict[str, Any], currency: str, subjects: list[str], *, meta: MetaStore,
           ents: EntitlementStore, usage: UsageStore, now: datetime) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """`rate_pending`, and for a part of a split line its group as it stands after the part (None otherwise)."""
    from billow.services.subscriptions import usage_of

    price, discounts = line_card(line)
    start, end = parse_rfc3339(line["period"]["from"], "from"), parse_rfc3339(line["period"]["to"], "to")
    if isinstance(price, pricing.FlatPrice):
        return _with_children(line, currency, None, pricing.rate(
            price, Decimal(0), currency=currency, rounding="ROUND_HALF_UP", period_start=start, period_end=end,
            discounts=discounts, name=line["name"]), now), None
    free = discounts.usage_quantity if discounts else None
    group = line.get("splitLineGroup")
    after_part = None
    if group is None:
        qty = usage_of(namespace, line["featureKey"], subjects, start, end, meta=meta, ents=ents, usage=usage)
        rated = pricing.rate(price, pricing.billable_usage(qty), currency=currency, rounding="ROUND_HALF_UP",
                             period_start=start, period_end=end, discounts=discounts, name=line["name"])
        quantities = usage_line_quantities([(qty, free)], Decimal(0), split=False)
    else:  # a part of a split line (progressive billing): as a subscription's period billed in parts, the group's
        # usage from its start up to the part's end (cumulative: a UNIQUE_COUNT or MAX does not add up over parts),
        # rated as the group's period so far (`rate_part` from its start; whole at its end: the minimum spend), less
        # what its earlier parts billed, detailed line by detailed line: the parts add up to the line rated whole,
        # digit for digit. A usage below what the earlier parts billed (negative events since) credits the
        # difference, a detailed line gone since (usage back below a tier) whole: the line rated whole then.
        gs, ge = parse_rfc3339(group["period"]["from"], "from"), parse_rfc3339(group["period"]["to"], "to")
        before = Decimal(group["usage"])
        after = pricing.billable_usage(usage_of(namespace, line["featureKey"], subjects, gs, end, meta=meta, ents=ents,
                                                usage=usage))
        so_far = pricing.rate(price, after, currency=currency, rounding="ROUND_HALF_UP", period_start=gs,
                              period_end=ge, discounts=discounts, name=line["name"]) if end >= ge else \
            pricing.rate_part(price, usage_before=Decimal(0), usage_after=after, billed_before=Decimal(0),
                              currency=currency, rounding="ROUND_HALF_UP", period_start=gs, period_end=ge,
                              part_start=gs, part_end=end, discounts=discounts, name=line["name"])
        rated, billed = _less_billed(so_far, group.get("lines") or {}, currency=currency, start=start, end=end)
        quantities = usage_line_quantities([(after, free)], before, split=True)
        after_part = {**group, "usage": plain(after), "lines": billed}
    # Usage lineage (issue 21), as a billing run records it on a subscription's usage line: how it was measured and
    # the digest of the events behind it, so its events can be listed and the line verified later.
    return {**_with_children(line, currency, quantities, rated, now),
            "lineage": _lineage(namespace, line["featureKey"], subjects, start, end, meta=meta, ents=ents, usage=usage,
                                now=now)}, after_part


def _less_billed(so_far: list[pricing.Line], billed: dict[str, dict[str, str]], *, currency: str, start: datetime,
                 end: datetime) -> tuple[list[pricing.Line], dict[str, dict[str, str]]]:
    """A split line's detailed lines so far less what its earlier parts billed of each (by key and category), and
    what all its parts have billed of each after this one. Each difference keeps the line's unit price; its amount
    and discount are the differences of the rounded ones. A detailed line billed before and gone now (usage back below
    a tier) is credited whole, named and priced as it was billed (this part's period, `start` to `end`)."""
    out, now_billed = [], dict(billed)
    with decimal.localcontext(EXACT):
        for ln in so_far:
            k = f"{ln.key}|{ln.category}"
            was = billed.get(k, {"quantity": "0", "amount": "0", "discounts": "0"})
            first = ln.discounts[0] if ln.discounts else None
            now_billed[k] = {"quantity": plain(ln.quantity), "amount": format(ln.amount_rounded, "f"),
                             "discounts": format(ln.discounts_total, "f"), "description": ln.description,
                             "unitPrice": plain(ln.unit_price),
                             **({"discount": first.description, "reason": first.reason} if first is not None else {})}
            d_qty = ln.quantity - Decimal(was["quantity"])
            d_amount = ln.amount_rounded - Decimal(was["amount"])
            d_disc = ln.discounts_total - Decimal(was["discounts"])
            if d_qty == 0 and d_amount == 0 and d_disc == 0:
                continue
            out.append(replace(ln, quantity=d_qty, amount=d_amount, amount_rounded=d_amount, discounts=(
                (pricing.LineDiscount(first.reason, first.description, d_disc),) if first is not None and d_disc else ())))
        present = {f"{ln.key}|{ln.category}" for ln in so_far}
        for k, was in billed.items():
            amount, disc, qty = Decimal(was["amount"]), Decimal(was["discounts"]), Decimal(was["quantity"])
            if k in present or (amount == 0 and disc == 0 and qty == 0):
                continue
            key, _, stored_category = k.rpartition("|")
            category: pricing.LineCategory = "commitment" if stored_category == "commitment" else "regular"
            reason: pricing.DiscountReason = "maximum_spend" if was.get("reason") == "maximum_spend" else \
                "ratecard_percentage"
            now_billed[k] = {**was, "quantity": "0", "amount": "0", "discounts": "0"}
            out.append(pricing.Line(
                key=key, description=was.get("description", key), quantity=-qty,
                unit_price=Decimal(was.get("unitPrice", "0")), amount=-amount, amount_rounded=-amount, currency=currency,
                rounding="ROUND_HALF_UP", period_start=start, period_end=end, category=category,
                discounts=(pricing.LineDiscount(reason, was.get("discount", ""), -disc),) if disc else ()))
    return out, now_billed


def split_pending(namespace: str, line: dict[str, Any], at: datetime, currency: str, subjects: list[str], *,
                  meta: MetaStore, ents: EntitlementStore, usage: UsageStore,
                  now: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
    """OpenMeter's split of a gathering line for progressive billing (lineengine/splitlinegroup.go
    SplitGatheringLine): the part up to `at` keeps the line's id, ends and is invoiced at `at`, and is rated now; the
    part after it is a new pending line from `at` to the line's end, invoiced at the line's invoiceAt. Both belong to
    the line's split group (`splitLineGroup`: its id and whole period, the metered usage its parts billed so far and
    what they billed of each detailed line, which the next part is rated after). Returns (the rated part, the
    pending rest)."""
    group = line.get("splitLineGroup") or {"id": new_id(), "period": dict(line["period"]), "usage": "0", "lines": {}}
    stamp = format_rfc3339(at)
    part, after = _rated(namespace, {**line, "period": {"from": line["period"]["from"], "to": stamp},
                                     "invoiceAt": stamp, "splitLineGroup": group},
                         currency, subjects, meta=meta, ents=ents, usage=usage, now=now)
    assert after is not None  # a usage line (flat prices are never split)
    rest = {**line, "id": new_id(), "period": {"from": stamp, "to": line["period"]["to"]}, "splitLineGroup": after,
            "createdAt": format_rfc3339(now), "updatedAt": format_rfc3339(now)}
    return part, rest


def _lineage(namespace: str, feature_key: str, subjects: list[str], start: datetime, end: datetime, *, meta: MetaStore,
             ents: EntitlementStore, usage: UsageStore, now: datetime) -> dict[str, Any]:
    """The lineage of a one-off usage line: the measurement usage_of made ([start, end) in whole minutes, the
    feature's meter and filters, the customer's subjects) and the digest of the usage behind it."""
    feature = ents.get_feature(namespace, feature_key, include_archived=True) or {}
    meter = meta.get_meter(namespace, str(feature.get("meterSlug")))
    if meter is None:  # usage_of has just read it: deleted in between
        raise Conflict(f"the meter of feature {feature_key!r} was deleted while this line was rated")
    s, e = minute(start), minute(end)
    meter_ref, filters, parsed = measurement(feature, meter)
    digest = usage.line_digests(namespace, meter.id, s, e, parsed, dict.fromkeys(subjects, "line")).get("line", EMPTY) \
        if subjects and e > s else EMPTY
    return lineage_json(meter=meter_ref, feature_key=feature_key, filters=filters, subjects=subjects, start=s, end=e,
                        query_time=now, since=None, usage=digest)


def _with_children(line: dict[str, Any], currency: str, quantities: dict[str, str] | None, rated: list[pricing.Line],
                   now: datetime) -> dict[str, Any]:
    """A line with its rated detailed lines as children (each with the line's tax config) and exact totals; a usage
    line with its quantity fields (`billing.usage_line_quantities`), a flat one with quantity 1."""
    tax = (line.get("rateCard") or {}).get("taxConfig")
    children = [detailed_line(name=ln.description, managed_by="manual", category=ln.category,
                              quantity=plain(ln.quantity), per_unit=plain(ln.unit_price), payment_term=ln.payment_term,
                              period=line["period"], invoice_at=line["invoiceAt"], currency=currency,
                              totals=inv_rules.totals(ln.amount_rounded, ln.discounts_total), tax_config=tax, now=now)
                for ln in rated]
    return {**line, "currency": currency, **(quantities or {"quantity": "1"}), "children": children,
            "totals": inv_rules.sum_totals(children)}


# -- invoice simulation -----------------------------------------------------------------------------------------
def simulate_invoice(namespace: str, customer_id: str, body: object, *, store: BillingStore, meta: MetaStore,
                     now: datetime) -> dict[str, Any]:
    """OpenMeter's simulateInvoice (InvoiceSimulationInput): the invoice the given lines would make for the customer,
    each usage line rated at its given `quantity` (graduated tiers continue after `preLinePeriodQuantity`, the
    usage already billed in the line's period), under the customer's billing profile. Nothing is written: no
    invoice, no number taken, no pending line, no mark."""
    customer = resolve_customer(namespace, customer_id, meta)
    if not isinstance(body, dict):
        raise bad("body", "must be {currency, lines, number?}")
    currency = Currency.of(body.get("currency")).code
    number = body.get("number")
    if number is not None and (not isinstance(number, str) or not number.strip() or len(number) > 256):
        raise bad("number", "must be a non-empty string of at most 256 characters")
    raw = body.get("lines")
    if not isinstance(raw, list) or not raw:
        raise bad("lines", "must be a non-empty list")
    lines = [_simulated_line(ln, f"lines[{i}]", currency, now) for i, ln in enumerate(raw)]
    profile = resolved_profile(namespace, customer["id"], store=store)
    if profile is None:
        raise Conflict("no billing profile applies to this customer: create a default billing profile first")
    count = store.invoice_counts(namespace).get(customer["id"], 0)
    doc = new_invoice(namespace, customer, profile, currency, lines, number=count + 1, now=now)
    if number is not None:
        doc["number"] = number
    return doc


def _number(doc: dict[str, Any], key: str, field_name: str) -> Decimal | None:
    if doc.get(key) is None:
        return None
    try:
        value = parse_decimal(doc[key], int_digits=20, scale=18)
    except ValueError as exc:
        raise bad(f"{field_name}.{key}", str(exc)) from None
    if value < 0:
        raise bad(f"{field_name}.{key}", "must not be negative")
    return value


def _simulated_line(raw: object, field_name: str, currency: str, now: datetime) -> dict[str, Any]:
    doc, name, start, end, invoice_at = _line_head(raw, field_name, max_name=256)
    card = _rate_card(doc, field_name)
    price, discounts = card.price, card.discounts
    flat = isinstance(price, pricing.FlatPrice)
    qty = Decimal(1) if flat else _number(doc, "quantity", field_name)
    if qty is None:
        raise bad(f"{field_name}.quantity", "is required for a usage price")
    before = Decimal(0) if flat else (_number(doc, "preLinePeriodQuantity", field_name) or Decimal(0))
    if before and isinstance(price, pricing.TieredPrice) and price.mode == "volume":
        raise bad(f"{field_name}.preLinePeriodQuantity", "a volume tiered price rates its whole period at once")
    rounding: Final = "ROUND_HALF_UP"
    if flat or not before:
        rated = pricing.rate(price, qty, currency=currency, rounding=rounding, period_start=start, period_end=end,
                             discounts=discounts, name=name)
    else:  # the usage before this line fills the tiers first: rate the line as the second part of its period
        earlier = start - timedelta(minutes=1)
        billed = pricing.totals(pricing.rate_part(
            price, usage_before=Decimal(0), usage_after=before, billed_before=Decimal(0), currency=currency,
            rounding=rounding, period_start=earlier, period_end=end, part_start=earlier, part_end=start,
            discounts=discounts, name=name)).total
        rated = pricing.rate_part(price, usage_before=before, usage_after=before + qty, billed_before=billed,
                                  currency=currency, rounding=rounding, period_start=earlier, period_end=end,
                                  part_start=start, part_end=end, discounts=discounts, name=name)
    stamp = format_rfc3339(now)
    line = {"id": new_id(), "name": name, **_description(doc), "metadata": doc.get("metadata"),
            "type": "usage_based", "managedBy": "manual", "status": "valid",
            "period": {"from": format_rfc3339(start), "to": format_rfc3339(end)},
            "invoiceAt": format_rfc3339(invoice_at), **line_rate_card_fields(card.to_json()),
            "createdAt": stamp, "updatedAt": stamp}
    # OpenMeter (httpdriver mapSimulationLineToEntity): the given quantity and preLinePeriodQuantity are metered
    # usage; the line shows them after its usage discount (and the metered ones where they differ, or are not zero)
    quantities = None if flat else usage_line_quantities(
        [(before + qty, discounts.usage_quantity if discounts else None)], before, split=True)
    return _with_children(line, currency, quantities, rated, now)
