"""Invoices: a new invoice from a profile, the lifecycle actions (advance, approve, retry, void, delete, edit),
issuing through the profile's invoicing app, payment status from the payment app, custom-invoicing sync and
prepaid credit. The state machine's rules are billow.domain.invoices; the apps are ports.BillingApps.

Issuing: draft -> issuing -> issued (the invoicing app: sandbox at once, Stripe now, custom invoicing when the
user's system confirms) -> the payment app (the sandbox settles at once). An app that fails leaves the invoice
issuing, failed, for `retry`. A negative invoice is paid when it is issued: what it owes the customer is added to the
customer's prepaid balance in the same transaction, once per invoice, unless the invoicing app keeps it itself
(Stripe's customer balance: InvoicingApp.keeps_customer_credit)."""

from __future__ import annotations

import decimal
import logging
import re
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from billow import jsonx
from billow.domain import fields
from billow.domain import invoices as inv_rules
from billow.domain.invoices import Invoice
from billow.domain.money import Currency
from billow.domain.periods import RecurringPeriod
from billow.errors import Conflict, NotFound, ValidationFailed
from billow.exact import EXACT, parse_decimal
from billow.ids import new_id
from billow.ports import BillingApps, BillingStore, InvoicingApp, MetaStore
from billow.services.billing_profiles import resolve_customer
from billow.services.edits import until_written
from billow.timeutil import format_rfc3339

if TYPE_CHECKING:
    from billow.domain.payments import PaymentEvent

log = logging.getLogger("billow.billing")
bad = ValidationFailed.at


_SIMPLE_KEY = re.compile(r"[a-z0-9]{1,12}")


def invoice_prefix(customer: dict[str, Any]) -> str:
    """What a customer's invoice numbers start with, unique to the customer within its namespace (numbers are unique
    there, and a number taken by another customer would leave this one never invoiced): a key of at most 12
    lower-case letters and digits, upper-cased (`acme` -> ACME); for any other key, or none, its first 12 letters and
    digits upper-cased and the customer's id (`organization_1` -> ORGANIZATION1-01K...), which no two customers share
    and no simple key's prefix can equal (it holds a dash)."""
    key = customer.get("key")
    if isinstance(key, str) and _SIMPLE_KEY.fullmatch(key):
        return key.upper()
    head = "".join(ch for ch in str(key or "").upper() if ch.isascii() and ch.isalnum())[:12] or "INV"
    return f"{head}-{customer['id']}"


def invoice_number(customer: dict[str, Any], n: int) -> str:
    return f"{invoice_prefix(customer)}-{n:04d}"


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
    inv = Invoice.from_json(invoice)
    invoicing = wf["invoicing"]
    if not invoicing["autoAdvance"]:
        inv.set_status("draft.manual_approval_needed")
    elif invoicing["draftPeriod"] in ("P0D", "PT0S", "PT0H"):
        inv.set_status("draft.ready_to_issue")
    else:
        inv.draft_until = format_rfc3339(RecurringPeriod(invoicing["draftPeriod"], now).at(1))
        inv.set_status("draft.waiting_auto_approval")
    return inv.to_json()


def _load(namespace: str, id_: str, store: BillingStore) -> Invoice:
    doc = store.get_invoice(namespace, id_)
    if doc is None or doc.get("deletedAt"):
        raise NotFound(f"invoice {id_!r} not found")
    return Invoice.from_json(doc)


def _save(namespace: str, inv: Invoice, store: BillingStore, *, expect_status: str | None = None,
          expect_doc: str | None = None) -> None:
    store.put_invoice(namespace, inv.to_json(), expect_status=expect_status, expect_doc=expect_doc)


def _edit(namespace: str, id_: str, store: BillingStore, edit: Callable[[Invoice], bool]) -> Invoice:
    """Read the invoice, `edit` it in place (False: nothing to save; or it raises) and save it only if it is still
    stored as it was read. Another container may edit it in between (two edits of one draft at once, each its own
    field): the lost race reads it again and edits what the other wrote, so neither edit is lost."""
    def step() -> tuple[Invoice, Callable[[], None] | None]:
        doc = store.get_invoice(namespace, id_)
        if doc is None or doc.get("deletedAt"):
            raise NotFound(f"invoice {id_!r} not found")
        before = jsonx.dumps(doc)
        inv = Invoice.from_json(doc)
        status = inv.status
        if not edit(inv):
            return inv, None
        return inv, partial(_save, namespace, inv, store, expect_status=status, expect_doc=before)

    return until_written(step)


def get_invoice(namespace: str, id_: str, *, store: BillingStore) -> dict[str, Any]:
    return _load(namespace, id_, store).to_json()


def issue(namespace: str, doc: dict[str, Any], *, store: BillingStore, apps: BillingApps, now: datetime) -> dict[str, Any]:
    """draft -> issuing -> issued (the invoicing app) -> payment (the payment app). An invoice the run issued
    already (sandbox, in its own transaction) only goes to the apps. One still issuing (a sync whose process died,
    taken up again by the billing run) is synced again only if it is still stored as `doc`: of two runs that take it
    up at once, one does (the other: 409)."""
    read_as = jsonx.dumps(doc) if doc.get("status") == "issuing" else None
    return _issue(namespace, Invoice.from_json(doc), store=store, apps=apps, now=now, read_as=read_as).to_json()


DRAFT_SYNCED = "openmeter.io/custominvoicing/draft-synced-at"  # OpenMeter's mark of the draft call-back


def _waits_for_draft_sync(inv: Invoice, app: Any) -> bool:
    """A custom invoicing app with enableDraftSyncHook whose call-back has not come yet (OpenMeter's
    CanDraftSyncAdvance)."""
    hook = getattr(app, "draft_hook", False)
    return bool(hook) and DRAFT_SYNCED not in (inv.metadata if isinstance(inv.metadata, dict) else {})


def _issue(namespace: str, inv: Invoice, *, store: BillingStore, apps: BillingApps, now: datetime,
           read_as: str | None = None) -> Invoice:
    """With `read_as` (the stored JSON the caller read the draft as), the draft leaves for issuing only if it is still
    that: an edit written meanwhile makes this a 409 (approve again) rather than issuing the draft without it."""
    if inv.status not in ("draft", "issuing"):
        apps.issued(inv.to_json())
        return inv
    before = inv.status
    try:  # the app, looked up once; a lookup that fails fails the issuing below, as the app's own failure would
        app, missing = apps.invoicing(inv.invoicing_app_ref), None
    except Exception as exc:
        app, missing = None, exc
    if before == "draft" and _waits_for_draft_sync(inv, app):  # held in draft.syncing until the call-back
        inv.set_status("draft.syncing")
        inv.touch(now)
        _save(namespace, inv, store, expect_status=before, expect_doc=read_as)
        return inv
    inv.set_status("issuing.syncing")
    inv.touch(now)
    _save(namespace, inv, store, expect_status=before, expect_doc=read_as)
    try:
        if app is None:
            raise missing or LookupError(inv.invoicing_app_ref)
        external_ids = app.issue(inv.to_json())
    except Exception as exc:  # the app failed: the invoice stays issuing, failed, and can be retried
        log.warning("invoicing app %s failed for %s: %s", inv.invoicing_app, inv.number, exc)
        inv.issue_failed(inv.invoicing_app, str(exc) or type(exc).__name__)
        _save(namespace, inv, store, expect_status="issuing")
        return inv
    if external_ids is None:
        return inv  # custom invoicing: waits for POST /api/v1/apps/custom-invoicing/{id}/issuing/synchronized
    if external_ids:
        inv.external_ids = {**inv.external_ids, **external_ids}
    return _issued(namespace, inv, app, store=store, apps=apps, now=now)


def _issued(namespace: str, inv: Invoice, app: InvoicingApp, *, store: BillingStore, apps: BillingApps,
            now: datetime) -> Invoice:
    """issuing -> issued (and the payment app's state). A negative invoice (a correction that lowered an invoiced
    period) is paid: what it owes the customer is added to the prepaid balance with the status move, in one
    transaction and once (the entry's id is derived from the invoice's), unless `app` keeps it itself (Stripe)."""
    inv.issued(now)
    credit = inv.credit_back(now) if inv.owed_back > 0 and not app.keeps_customer_credit else None
    store.put_invoice(namespace, inv.to_json(), expect_status="issuing", credit=credit)
    apps.issued(inv.to_json())
    return inv


def act(namespace: str, id_: str, action: str, *, store: BillingStore, apps: BillingApps, now: datetime) -> dict[str, Any]:
    doc = store.get_invoice(namespace, id_)
    if doc is None or doc.get("deletedAt"):
        raise NotFound(f"invoice {id_!r} not found")
    read_as, inv = jsonx.dumps(doc), Invoice.from_json(doc)
    inv.require(action)
    if action in ("advance", "approve", "retry"):
        if inv.status == "issuing":  # retry of a failed app sync: back to a draft only as read, so of several
            inv.set_status("draft.ready_to_issue")  # retries at once one issues it, the others 409 (retried meanwhile)
            _save(namespace, inv, store, expect_status="issuing", expect_doc=read_as)
            read_as = jsonx.dumps(inv.to_json())
        # an edit of the draft written since it was read makes this 409 rather than issuing it without the edit
        return _issue(namespace, inv, store=store, apps=apps, now=now, read_as=read_as).to_json()
    if action == "void":
        before = inv.status
        if inv.external_ids.get("invoicing"):  # issued outside Billow: voided there too
            apps.invoicing(inv.invoicing_app_ref).void(inv.to_json())
        inv.void(now)
        _save(namespace, inv, store, expect_status=before)
        doc = inv.to_json()
        apps.updated(doc)
        return doc
    raise bad("action", f"unknown action {action!r}")


def snapshot_quantities(namespace: str, id_: str, *, store: BillingStore) -> dict[str, Any]:
    """OpenMeter's snapshotQuantitiesInvoiceAction skips an invoice's wait for late usage (its collection period).
    Billow takes a period's quantities when the run makes the invoice, at the period's end, and bills usage that
    arrives later as a correction on the next invoice: a draft's quantities are already its snapshot, and it is
    returned as it is. Gathering and immutable invoices are refused (409), as OpenMeter refuses the action outside
    a draft."""
    inv = _load(namespace, id_, store)
    if inv.status != "draft":
        raise Conflict(f"cannot snapshot the quantities of invoice {inv.number} in state {inv.extended_status}: "
                       "only a draft's")
    return inv.to_json()


def recalculate_taxes(namespace: str, id_: str, *, store: BillingStore, now: datetime) -> dict[str, Any]:
    """OpenMeter's recalculateInvoiceTaxAction: a draft's totals again from its lines. No tax app rates here (the
    sandbox tax app's rate is 0), so the taxes are 0 and the totals are the lines' sums with the credit applied;
    an invoice that changed is saved. Refused (409) once the invoice is immutable or while it gathers lines."""
    def recalculate(inv: Invoice) -> bool:
        if inv.status != "draft":
            raise Conflict(f"cannot recalculate the taxes of invoice {inv.number} in state {inv.extended_status}: "
                           "only a draft's")
        doc = inv.to_json()
        credits = parse_decimal(doc["totals"].get("creditsTotal") or "0")
        totals = inv_rules.sum_totals(doc["lines"], credits)
        if totals == doc["totals"]:
            return False
        inv.totals = totals
        inv.touch(now)
        return True

    return _edit(namespace, id_, store, recalculate).to_json()


def delete_invoice(namespace: str, id_: str, *, store: BillingStore, apps: BillingApps, now: datetime) -> None:
    """Delete a draft (OpenMeter's deleteInvoice: only a draft or earlier; a later invoice can only be voided).
    Nothing it held is lost: what it billed of each subscription period is given back to the period's billing mark
    (Mark.without: the next run bills it again, as a first charge, even after the correction window), its one-off
    lines go back to the customer's gathering invoice, pending, and the prepaid credit it used comes back; all in
    one transaction with the delete (BillingStore.delete_draft), so a run never bills the draft's part twice.
    Then the invoice.updated notification carries the deleted invoice (Invoice.deleted_json: status `deleted`), as
    OpenMeter's deletion does: that is how a custom invoicing app's system hears of it (OpenMeter's custom invoicing
    app does nothing itself on a delete, "this should happen via the notifications webhook"), as of a void."""
    from billow.services.pending_lines import returned_to_gathering

    inv = _load(namespace, id_, store)
    inv.require("delete")
    before = inv.status
    inv.deleted_at = format_rfc3339(now)
    inv.touch(now)
    doc = inv.to_json()
    by_subscription = [ln for ln in doc["lines"] if ln.get("managedBy") == "subscription"]
    subscription_ids = sorted({ln["subscription"]["id"] for ln in by_subscription})
    marks = [m.without(inv.id) for m in store.marks_for(namespace, subscription_ids).values()
             if inv.id in m.invoices] if subscription_ids else []
    if by_subscription and not marks:
        raise Conflict(f"invoice {inv.number} was made before Billow recorded what a draft billed of each "
                       "subscription period: deleting it would drop its subscription charges for good; void it "
                       "instead, or approve it")
    holder = returned_to_gathering(namespace, doc["customer"], doc["currency"],
                                   [ln for ln in doc["lines"] if ln.get("managedBy") != "subscription"],
                                   store=store, now=now)
    store.delete_draft(namespace, doc, expect_status=before, marks=marks, holder=holder, credit_entry_id=new_id())
    apps.updated(inv.deleted_json())


def update_invoice(namespace: str, id_: str, body: object, *, store: BillingStore, now: datetime) -> dict[str, Any]:
    """A mutable invoice's `description` (a string) and `metadata` (an object of strings, or null) from OpenMeter's
    InvoiceReplaceUpdate; they were stored and shown back as sent (1e999999 as Infinity, nested objects)."""
    if isinstance(body, dict):
        fields.text(body, "description")
        fields.metadata(body)

    def apply(inv: Invoice) -> bool:
        inv.require_mutable()
        if not isinstance(body, dict):
            raise bad("body", "must be an object")
        for key in ("description", "metadata"):
            if key in body:
                inv.edit(key, body[key])
        inv.touch(now)
        return True

    return _edit(namespace, id_, store, apply).to_json()


_PAYMENT_STATES = {"paid": "paid", "payment_failed": "payment_processing.failed", "uncollectible": "uncollectible",
                   "voided": "voided", "overdue": "overdue", "action_required": "payment_processing.action_required"}


# An invoice marked uncollectible can still be paid (Stripe takes a payment of it) or voided, as OpenMeter's invoice
# state machine permits; before, the webhook of that payment was refused and the invoice stayed uncollectible.
_FROM_UNCOLLECTIBLE: Final = ("paid", "voided")


def record_payment(namespace: str, invoice_id: str, outcome: str, *, store: BillingStore, apps: BillingApps, now: datetime) -> dict[str, Any]:
    """Payment status from the payment app (Stripe webhook, custom invoicing). Idempotent: a repeated outcome
    changes nothing; a paid or voided invoice stays so; an uncollectible one can only be paid or voided.

    A repeated outcome emits the invoice's notification again (the notification store drops it when it was made:
    its dedup key is the invoice's and its updatedAt): the process that recorded the outcome may have died between
    the invoice's write and its event's, and the payment app's redelivery (Stripe sends a webhook again until it is
    answered 2xx) is the only call that can still make it; before, the event was lost for good."""
    inv = _load(namespace, invoice_id, store)
    target = _PAYMENT_STATES.get(outcome)
    if target is None:
        raise bad("trigger", f"must be one of {', '.join(_PAYMENT_STATES)}")
    if inv.extended_status == target:
        doc = inv.to_json()
        apps.updated(doc)
        return doc
    if inv.status in ("paid", "voided"):
        return inv.to_json()
    if inv.status == "uncollectible" and target not in _FROM_UNCOLLECTIBLE:
        raise Conflict(f"invoice {inv.number} is uncollectible: it can still be paid or voided, nothing else")
    if inv.status not in ("issued", "payment_processing", "overdue", "uncollectible"):
        raise Conflict(f"invoice {inv.number} is {inv.status}: it has no payment to record yet")
    before = inv.status
    if target == "voided":  # voided by the app (Stripe): voidedAt stamped, as by a void in Billow
        inv.void(now)
    else:
        inv.set_status(target, failed=outcome == "payment_failed")
        inv.touch(now)
    _save(namespace, inv, store, expect_status=before)
    doc = inv.to_json()
    apps.updated(doc)
    return doc


def custom_invoicing_synced(namespace: str, invoice_id: str, stage: str, body: object, *, store: BillingStore,
                            apps: BillingApps, now: datetime) -> dict[str, Any]:
    """The user's system confirms it synchronised the draft or issued the invoice (custom invoicing app)."""
    doc = store.get_invoice(namespace, invoice_id)
    if doc is None or doc.get("deletedAt"):
        raise NotFound(f"invoice {invoice_id!r} not found")
    read_as, inv = jsonx.dumps(doc), Invoice.from_json(doc)  # a draft is saved only as read: else 409, call again
    if inv.invoicing_app != "custom_invoicing":
        raise Conflict(f"invoice {inv.number} is not invoiced by the custom invoicing app")
    given: dict[str, Any] = body if isinstance(body, dict) else {}
    if stage == "draft":
        inv.require_mutable()
        inv.external_ids = {**inv.external_ids, "invoicing": given.get("invoicing", {}).get("invoiceId")}
        inv.metadata = {**(inv.metadata if isinstance(inv.metadata, dict) else {}), DRAFT_SYNCED: format_rfc3339(now)}
        inv.touch(now)
        if inv.extended_status == "draft.syncing":  # it waited for this call-back: it goes on
            inv.set_status("draft.ready_to_issue")
            _save(namespace, inv, store, expect_status="draft", expect_doc=read_as)
            return _issue(namespace, inv, store=store, apps=apps, now=now).to_json()
        _save(namespace, inv, store, expect_status=inv.status, expect_doc=read_as)
        return inv.to_json()
    if inv.status != "issuing":
        raise Conflict(f"invoice {inv.number} is {inv.status}, not issuing")
    ext = given.get("invoicing") or {}
    if ext.get("invoiceNumber"):
        inv.external_ids = {**inv.external_ids, "invoicing": ext.get("invoiceId"), "invoiceNumber": ext["invoiceNumber"]}
    return _issued(namespace, inv, apps.invoicing(inv.invoicing_app_ref), store=store, apps=apps, now=now).to_json()


def list_invoices(namespace: str, qs: dict[str, list[str]], *, store: BillingStore) -> list[dict[str, Any]]:
    docs = store.list_invoices(namespace, customer_ids=qs.get("customers"), statuses=qs.get("statuses"))
    return [d for d in docs if not d.get("deletedAt")]


# -- prepaid credit and payment events ------------------------------------------------------------------------
def add_credit(namespace: str, customer_id: str, body: object, *, store: BillingStore, meta: MetaStore, now: datetime) -> dict[str, Any]:
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
             "description": fields.text(body, "description"), "createdAt": format_rfc3339(now)}
    store.add_credit(namespace, entry_id, customer["id"], currency.code, amount, entry)
    return {**entry, "balance": format(store.credit_balance(namespace, customer["id"], currency.code), "f")}


def credit_ledger(namespace: str, customer_id: str, qs: dict[str, list[str]], *, store: BillingStore,
                  meta: MetaStore) -> dict[str, Any]:
    """Billow: a customer's prepaid credit in one currency (`currency`, required): its balance and its ledger, a page
    of entries in the order they were written (top-ups, credit applied to invoices, credit a deleted draft returned,
    what a negative invoice gave back). Exact decimal strings; the balance is the sum of every entry, from the same
    read. An unknown customer is a 404, a missing or bad currency a 400 naming `currency`."""
    from billow.services import pages, params

    customer = resolve_customer(namespace, customer_id, meta)
    code = params.one(qs, "currency")
    if code is None:
        raise bad("currency", "is required (a three-letter ISO 4217 code, e.g. USD)")
    currency = Currency.of(code, field="currency")
    entries = store.credit_entries(namespace, customer["id"], currency.code)
    with decimal.localcontext(EXACT):
        balance = sum((Decimal(e["amount"]) for e in entries), Decimal(0))
    listed = [{"id": e["id"], "amount": str(e["amount"]), "currency": currency.code,
               "description": e.get("description"), "invoiceId": e.get("invoiceId"),
               "invoiceNumber": e.get("invoiceNumber"), "createdAt": e.get("createdAt")} for e in entries]
    return {"customerId": customer["id"], "currency": currency.code, "balance": format(balance, "f"),
            "entries": pages.page(listed, qs)}


def handle_payment_event(namespace: str, event: PaymentEvent, *, store: BillingStore, apps: BillingApps,
                         now: datetime) -> dict[str, Any]:
    """A payment app's event (Stripe webhook) applied to its invoice."""
    if event.status == "finalized":
        return {"invoiceId": event.billow_invoice_id, "status": "unchanged"}
    inv = record_payment(namespace, event.billow_invoice_id, event.status, store=store, apps=apps, now=now)
    return {"invoiceId": inv["id"], "status": inv["status"]}
