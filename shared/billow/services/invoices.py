"""Invoices: a new invoice from a profile, the lifecycle actions (advance, approve, retry, void, delete, edit),
issuing through the profile's invoicing app, payment status from the payment app, custom-invoicing sync and
prepaid credit. The state machine's rules are billow.domain.invoices; the apps are ports.BillingApps.

Issuing: draft -> issuing -> issued (the invoicing app: sandbox at once, Stripe now, custom invoicing when the
user's system confirms) -> the payment app (the sandbox settles at once). An app that fails leaves the invoice
issuing, failed, for `retry`."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from billow.domain import invoices as inv_rules
from billow.domain.money import Currency
from billow.domain.periods import RecurringPeriod
from billow.errors import Conflict, NotFound, ValidationFailed
from billow.exact import parse_decimal
from billow.ids import new_id
from billow.ports import BillingApps, BillingStore, MetaStore
from billow.services.billing_profiles import resolve_customer
from billow.timeutil import format_rfc3339

if TYPE_CHECKING:
    from billow.domain.payments import PaymentEvent

log = logging.getLogger("billow.billing")
bad = ValidationFailed.at


def invoice_number(customer: dict[str, Any], n: int) -> str:
    prefix = "".join(ch for ch in str(customer.get("key") or customer["id"]).upper() if ch.isalnum())[:12] or "INV"
    return f"{prefix}-{n:04d}"


def new_invoice(namespace: str, customer: dict[str, Any], profile: dict[str, Any], currency: str,
                lines: list[dict[str, Any]], *, number: int, now: datetime) -> dict[str, Any]:
    Currency.of(currency)
    stamp = format_rfc3339(now)
    periods = [ln["period"] for ln in lines]
    wf = profile["workflow"]
    invoice: dict[str, Any] = {
        "id": new_id(), "number": invoice_number(customer, number), "type": "standard", "currency": currency,
        "description": None, "metadata": None, "createdAt": stamp, "updatedAt": stamp, "deletedAt": None,
        "supplier": profile["supplier"],
        "customer": {"id": customer["id"], "key": customer.get("key"), "name": customer.get("name"),
                     "primaryEmail": customer.get("primaryEmail"), "billingAddress": customer.get("billingAddress"),
                     "usageAttribution": customer.get("usageAttribution")},
        "period": {"from": min(p["from"] for p in periods), "to": max(p["to"] for p in periods)},
        "lines": lines, "totals": inv_rules.sum_totals(lines),
        "workflow": {"sourceBillingProfileId": profile["id"], "apps": profile["apps"], "workflow": wf},
        "externalIds": {}, "validationIssues": [], "issuedAt": None, "dueAt": None, "draftUntil": None,
    }
    invoicing = wf["invoicing"]
    if not invoicing["autoAdvance"]:
        inv_rules.set_status(invoice, "draft.manual_approval_needed")
    elif invoicing["draftPeriod"] in ("P0D", "PT0S", "PT0H"):
        inv_rules.set_status(invoice, "draft.ready_to_issue")
    else:
        invoice["draftUntil"] = format_rfc3339(RecurringPeriod(invoicing["draftPeriod"], now).at(1))
        inv_rules.set_status(invoice, "draft.waiting_auto_approval")
    return invoice


def get_invoice(namespace: str, id_: str, *, store: BillingStore) -> dict[str, Any]:
    doc = store.get_invoice(namespace, id_)
    if doc is None or doc.get("deletedAt"):
        raise NotFound(f"invoice {id_!r} not found")
    return dict(doc)


def issue(namespace: str, inv: dict[str, Any], *, store: BillingStore, apps: BillingApps, now: datetime) -> dict[str, Any]:
    """draft -> issuing -> issued (the invoicing app) -> payment (the payment app). An invoice the run issued
    already (sandbox, in its own transaction) only goes to the apps."""
    if inv["status"] not in ("draft", "issuing"):
        apps.issued(inv)
        return inv
    before = inv["status"]
    inv_rules.set_status(inv, "issuing.syncing")
    inv["updatedAt"] = format_rfc3339(now)
    store.put_invoice(namespace, inv, expect_status=before)
    invoicing = inv["workflow"]["apps"]["invoicing"]
    try:
        external_ids = apps.invoicing(invoicing).issue(inv)
    except Exception as exc:  # the app failed: the invoice stays issuing, failed, and can be retried
        log.warning("invoicing app %s failed for %s: %s", invoicing, inv["number"], exc)
        inv_rules.set_status(inv, "issuing.failed", failed=True)
        inv["validationIssues"] = [{"severity": "critical", "code": "app_sync_failed", "component": invoicing,
                                    "message": str(exc) or type(exc).__name__}]
        store.put_invoice(namespace, inv, expect_status="issuing")
        return inv
    if external_ids is None:
        return inv  # custom invoicing: waits for POST /api/v1/apps/custom-invoicing/{id}/issuing/synchronized
    if external_ids:
        inv["externalIds"] = {**inv.get("externalIds", {}), **external_ids}
    return _issued(namespace, inv, store=store, apps=apps, now=now)


def issue_state(inv: dict[str, Any], now: datetime) -> None:
    """Issued now: issue and due dates, then the payment app's state (the sandbox settles at once); documents due."""
    due_after = inv["workflow"]["workflow"]["invoicing"]["dueAfter"]
    inv["issuedAt"] = format_rfc3339(now)
    inv["dueAt"] = format_rfc3339(now if due_after in ("P0D", "PT0S", "PT0H") else RecurringPeriod(due_after, now).at(1))
    inv["validationIssues"] = []
    payment = inv["workflow"]["apps"]["payment"]
    if payment == "sandbox" or inv_rules.due(inv) <= 0:
        inv_rules.set_status(inv, "paid")  # the sandbox app settles at once; nothing due is paid
    else:
        inv_rules.set_status(inv, "payment_processing.pending")
    inv["updatedAt"] = format_rfc3339(now)
    inv["documents"] = {"status": "pending"}


def _issued(namespace: str, inv: dict[str, Any], *, store: BillingStore, apps: BillingApps, now: datetime) -> dict[str, Any]:
    issue_state(inv, now)
    store.put_invoice(namespace, inv, expect_status="issuing")
    apps.issued(inv)
    return inv


def act(namespace: str, id_: str, action: str, *, store: BillingStore, apps: BillingApps, now: datetime) -> dict[str, Any]:
    inv = get_invoice(namespace, id_, store=store)
    inv_rules.require(inv, action)
    if action in ("advance", "approve", "retry"):
        if inv["status"] == "issuing":  # retry of a failed app sync
            inv_rules.set_status(inv, "draft.ready_to_issue")
            store.put_invoice(namespace, inv)
        return issue(namespace, inv, store=store, apps=apps, now=now)
    if action == "void":
        before = inv["status"]
        if inv.get("externalIds", {}).get("invoicing"):  # issued outside Billow: voided there too
            apps.invoicing(inv["workflow"]["apps"]["invoicing"]).void(inv)
        inv_rules.set_status(inv, "voided")
        inv["voidedAt"] = inv["updatedAt"] = format_rfc3339(now)
        store.put_invoice(namespace, inv, expect_status=before)
        apps.updated(inv)
        return inv
    raise bad("action", f"unknown action {action!r}")


def delete_invoice(namespace: str, id_: str, *, store: BillingStore, now: datetime) -> None:
    inv = get_invoice(namespace, id_, store=store)
    inv_rules.require(inv, "delete")
    inv["deletedAt"] = format_rfc3339(now)
    store.put_invoice(namespace, inv, expect_status=inv["status"])


def update_invoice(namespace: str, id_: str, body: Any, *, store: BillingStore, now: datetime) -> dict[str, Any]:
    inv = get_invoice(namespace, id_, store=store)
    inv_rules.require_mutable(inv)
    if not isinstance(body, dict):
        raise bad("body", "must be an object")
    for key in ("description", "metadata"):
        if key in body:
            inv[key] = body[key]
    inv["updatedAt"] = format_rfc3339(now)
    store.put_invoice(namespace, inv, expect_status=inv["status"])
    return inv


_PAYMENT_STATES = {"paid": "paid", "payment_failed": "payment_processing.failed", "uncollectible": "uncollectible",
                   "voided": "voided", "overdue": "overdue", "action_required": "payment_processing.action_required"}


def record_payment(namespace: str, invoice_id: str, outcome: str, *, store: BillingStore, apps: BillingApps, now: datetime) -> dict[str, Any]:
    """Payment status from the payment app (Stripe webhook, custom invoicing). Idempotent: a repeated outcome
    changes nothing; a paid or voided invoice stays so."""
    inv = get_invoice(namespace, invoice_id, store=store)
    target = _PAYMENT_STATES.get(outcome)
    if target is None:
        raise bad("trigger", f"must be one of {', '.join(_PAYMENT_STATES)}")
    if inv["statusDetails"]["extendedStatus"] == target or inv["status"] in ("paid", "voided"):
        return inv
    if inv["status"] not in ("issued", "payment_processing", "overdue"):
        raise Conflict(f"invoice {inv['number']} is {inv['status']}: it has no payment to record yet")
    before = inv["status"]
    inv_rules.set_status(inv, target, failed=outcome == "payment_failed")
    inv["updatedAt"] = format_rfc3339(now)
    store.put_invoice(namespace, inv, expect_status=before)
    apps.updated(inv)
    return inv


def custom_invoicing_synced(namespace: str, invoice_id: str, stage: str, body: Any, *, store: BillingStore, apps: BillingApps,
                            now: datetime) -> dict[str, Any]:
    """The user's system confirms it synchronised the draft or issued the invoice (custom invoicing app)."""
    inv = get_invoice(namespace, invoice_id, store=store)
    if inv["workflow"]["apps"]["invoicing"] != "custom_invoicing":
        raise Conflict(f"invoice {inv['number']} is not invoiced by the custom invoicing app")
    body = body if isinstance(body, dict) else {}
    if stage == "draft":
        inv_rules.require_mutable(inv)
        inv["externalIds"] = {**inv.get("externalIds", {}), "invoicing": body.get("invoicing", {}).get("invoiceId")}
        inv["updatedAt"] = format_rfc3339(now)
        store.put_invoice(namespace, inv, expect_status=inv["status"])
        return inv
    if inv["status"] != "issuing":
        raise Conflict(f"invoice {inv['number']} is {inv['status']}, not issuing")
    ext = body.get("invoicing") or {}
    if ext.get("invoiceNumber"):
        inv["externalIds"] = {**inv.get("externalIds", {}), "invoicing": ext.get("invoiceId"),
                              "invoiceNumber": ext["invoiceNumber"]}
    return _issued(namespace, inv, store=store, apps=apps, now=now)


def list_invoices(namespace: str, qs: dict[str, list[str]], *, store: BillingStore) -> list[dict[str, Any]]:
    docs = store.list_invoices(namespace, customer_ids=qs.get("customers"), statuses=qs.get("statuses"))
    return [d for d in docs if not d.get("deletedAt")]


# -- prepaid credit and payment events ------------------------------------------------------------------------
def add_credit(namespace: str, customer_id: str, body: Any, *, store: BillingStore, meta: MetaStore, now: datetime) -> dict[str, Any]:
    """Prepaid credit (money) for a customer, applied to its next invoices before anything is charged."""
    customer = resolve_customer(namespace, customer_id, meta)
    if not isinstance(body, dict):
        raise bad("body", "must be {amount, currency, description?}")
    currency = Currency.of(body.get("currency"))
    try:
        amount = parse_decimal(body.get("amount"), int_digits=20, scale=18)  # no "1_000"; no Overflow on 1e999999999
    except ValueError:
        raise bad("amount", "must be a decimal string") from None
    if not amount.is_finite() or amount <= 0 or amount != amount.quantize(currency.minor_unit):
        raise bad("amount", f"must be positive with at most {currency.minor_units} decimals for {currency.code}")
    entry_id = new_id()
    entry = {"id": entry_id, "amount": format(amount, "f"), "currency": currency.code,
             "description": body.get("description"), "createdAt": format_rfc3339(now)}
    store.add_credit(namespace, entry_id, customer["id"], currency.code, amount, entry)
    return {**entry, "balance": format(store.credit_balance(namespace, customer["id"], currency.code), "f")}


def handle_payment_event(namespace: str, event: PaymentEvent, *, store: BillingStore, apps: BillingApps,
                         now: datetime) -> dict[str, Any]:
    """A payment app's event (Stripe webhook) applied to its invoice."""
    if event.status == "finalized":
        return {"invoiceId": event.billow_invoice_id, "status": "unchanged"}
    inv = record_payment(namespace, event.billow_invoice_id, event.status, store=store, apps=apps, now=now)
    return {"invoiceId": inv["id"], "status": inv["status"]}
