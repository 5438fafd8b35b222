"""Pending lines: one-off lines for a customer (OpenMeter's InvoicePendingLineCreateInput), held on its gathering
invoice per currency until a billing run at or after their `invoiceAt` rates them onto an invoice."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from billow.domain import invoices as inv_rules
from billow.domain import pricing
from billow.domain.billing import plain
from billow.domain.money import Currency
from billow.errors import ValidationFailed
from billow.ids import new_id
from billow.ports import BillingStore, MetaStore, UsageStore
from billow.services.billing_profiles import resolve_customer
from billow.services.entitlements import EntitlementStore
from billow.services.invoices import invoice_number
from billow.timeutil import format_rfc3339, parse_rfc3339

bad = ValidationFailed.at


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
    holder = next((g for g in store.list_invoices(namespace, customer_ids=[customer["id"]], statuses=["gathering"])
                   if g["currency"] == currency), None)
    is_new = holder is None
    stamp = format_rfc3339(now)
    if holder is None:
        holder = {"id": new_id(), "number": f"{invoice_number(customer, 0)[:-5]}-GATHERING-{currency}", "type": "standard",
                  "currency": currency, "customer": {"id": customer["id"], "key": customer.get("key"),
                                                     "name": customer.get("name")},
                  "lines": [], "totals": inv_rules.totals(Decimal(0), Decimal(0)), "createdAt": stamp, "updatedAt": stamp}
        inv_rules.set_status(holder, "gathering")
    before = holder["status"]
    holder["lines"] = holder["lines"] + lines
    holder["updatedAt"] = stamp
    if is_new:
        store.put_invoice(namespace, holder)
    else:
        store.put_invoice(namespace, holder, expect_status=before)
    return {"lines": lines, "invoice": holder, "isInvoiceNew": is_new}


def _pending_line(doc: object, field_name: str, namespace: str, ents: EntitlementStore, now: datetime) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise bad(field_name, "must be a line object")
    name = doc.get("name")
    if not isinstance(name, str) or not name.strip():
        raise bad(f"{field_name}.name", "is required")
    period = doc.get("period")
    if not isinstance(period, dict):
        raise bad(f"{field_name}.period", "is required: {from, to}")
    start = parse_rfc3339(str(period.get("from")), f"{field_name}.period.from")
    end = parse_rfc3339(str(period.get("to")), f"{field_name}.period.to")
    if end <= start:
        raise bad(f"{field_name}.period.to", "must be after period.from")
    invoice_at = parse_rfc3339(str(doc.get("invoiceAt")), f"{field_name}.invoiceAt")
    price = pricing.parse_price(doc.get("price"), field=f"{field_name}.price")
    feature_key = doc.get("featureKey")
    if not isinstance(price, pricing.FlatPrice):
        feature = ents.get_feature(namespace, str(feature_key)) if feature_key else None
        if feature is None or not feature.get("meterSlug"):
            raise bad(f"{field_name}.featureKey", "a usage price needs a feature with a meter")
    return {"id": new_id(), "name": name, "description": doc.get("description"), "metadata": doc.get("metadata"),
            "type": "flat_fee" if isinstance(price, pricing.FlatPrice) else "usage_based", "managedBy": "manual",
            "status": "valid", "period": {"from": format_rfc3339(start), "to": format_rfc3339(end)},
            "invoiceAt": format_rfc3339(invoice_at), "price": pricing.price_to_json(price), "featureKey": feature_key,
            "createdAt": format_rfc3339(now), "updatedAt": format_rfc3339(now)}


def rate_pending(namespace: str, line: dict[str, Any], currency: str, subjects: list[str], *, meta: MetaStore,
                  ents: EntitlementStore, usage: UsageStore, now: datetime) -> dict[str, Any]:
    """A one-off line, rated now: its detailed lines as children, exact totals."""
    from billow.services.subscriptions import usage_of

    price = pricing.parse_price(line["price"])
    start, end = parse_rfc3339(line["period"]["from"], "from"), parse_rfc3339(line["period"]["to"], "to")
    qty = Decimal(0) if isinstance(price, pricing.FlatPrice) else \
        usage_of(namespace, line["featureKey"], subjects, start, end, meta=meta, ents=ents, usage=usage)
    rated = pricing.rate(price, qty, currency=currency, rounding="ROUND_HALF_UP", period_start=start, period_end=end,
                         name=line["name"])
    children = [{"id": new_id(), "name": ln.description, "type": "flat_fee", "managedBy": "manual", "status": "valid",
                 "category": ln.category, "quantity": plain(ln.quantity), "perUnitAmount": plain(ln.unit_price),
                 "paymentTerm": ln.payment_term, "period": line["period"], "invoiceAt": line["invoiceAt"],
                 "currency": currency, "totals": inv_rules.totals(ln.amount_rounded, ln.discounts_total)}
                for ln in rated]
    return {**line, "currency": currency, "quantity": plain(qty) if qty else "1", "children": children,
            "totals": inv_rules.sum_totals(children)}
