"""Invoices: the lifecycle (OpenMeter's statuses and actions) and exact totals. Pure: no I/O, no clock.

    draft ──advance/approve──▶ issuing ──(invoicing app done)──▶ issued ──▶ payment_processing ──▶ paid
      │                          │ failed (retry)                 │ │                      │
      └──────────── void ◀───────┴────────────────────────────────┘ └──▶ overdue ──▶ paid / uncollectible

A draft waits for approval when the workflow's `autoAdvance` is off (draft.manual_approval_needed), or until
`draftUntil` when it is on (draft.waiting_auto_approval), then it is ready to issue. From `issuing` on an
invoice is immutable: its lines and totals never change again; usage that arrives after it was issued is
billed as a correction on the next invoice. Voiding is possible until the invoice is paid.

Totals follow OpenMeter's `InvoiceTotals`: amount (sum of the lines' rounded amounts), discountsTotal,
creditsTotal (prepaid credit applied), taxes (0: no tax app rates here), total = amount − discounts −
credits. Every figure is a sum of already-rounded amounts, so totals are exact.

A negative invoice (a correction that lowered an invoiced period) owes its customer money (`owed_back`). Issued, it
is paid at once; what it owes back becomes the customer's prepaid credit (`credit_back`: one ledger entry derived
from the invoice's id, added once), unless its invoicing app keeps it itself (Stripe: the customer's Stripe balance;
the app decides, ports.InvoicingApp.keeps_customer_credit). Its totals stay as they are (creditsTotal is the prepaid
credit it used, never negative)."""

from __future__ import annotations

import decimal
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from billow.domain.money import ROUND_HALF_EVEN, round_money
from billow.domain.periods import RecurringPeriod
from billow.errors import Conflict
from billow.exact import EXACT
from billow.ids import derived_id
from billow.timeutil import as_of, format_rfc3339, parse_rfc3339

STATUSES: Final = ("gathering", "draft", "issuing", "issued", "payment_processing", "overdue", "paid",
                   "uncollectible", "voided")
ACTIONS: Final = ("advance", "approve", "retry", "void", "delete")
ZERO: Final = Decimal(0)
# An invoice left in issuing.syncing this long (no failure recorded, not touched since) is taken to be a sync whose
# process died (SIGKILL, a Lambda timeout) and is synced again by the billing run; the sync is idempotent (Stripe:
# idempotency keys derived from Billow's ids), so a slow sync still running when it is taken up is repeated
# harmlessly. Longer than a sync takes when nothing is wrong (seconds).
SYNC_LEASE: Final = timedelta(seconds=15)
# Past this, a dead sync is not taken up again by itself: Stripe keeps an idempotency key 24 hours, so a repeat after
# that could make a second Stripe invoice beside the one the dead process made. The invoice is marked failed instead
# (a `retry` action, a message naming what to look for in the app first).
SYNC_RESUME_WITHIN: Final = timedelta(hours=23)


def status_of(extended: str) -> str:
    return extended.split(".", 1)[0]


def actions_for(extended: str, failed: bool) -> dict[str, Any]:
    """OpenMeter's `InvoiceAvailableActions`: each possible action with the status it leads to."""
    out: dict[str, Any] = {}
    if extended in ("draft.waiting_auto_approval", "draft.ready_to_issue", "draft.created"):
        out["advance"] = {"resultingState": "issued"}
    if extended == "draft.manual_approval_needed":
        out["approve"] = {"resultingState": "issued"}
    if status_of(extended) == "draft":
        out["delete"] = {"resultingState": "deleted"}
    if failed:
        out["retry"] = {"resultingState": "issued"}
    if status_of(extended) in ("draft", "issuing", "issued", "payment_processing", "overdue"):
        out["void"] = {"resultingState": "voided"}
    return out


def status_details(extended: str, failed: bool = False) -> dict[str, Any]:
    """OpenMeter's `InvoiceStatusDetails` of an extended status (what the mapper writes)."""
    return {"extendedStatus": extended, "failed": failed,
            "immutable": status_of(extended) not in ("gathering", "draft"),
            "availableActions": actions_for(extended, failed)}


def set_status(inv: dict[str, Any], extended: str, *, failed: bool = False) -> None:
    """The status fields of a document built as JSON (a pending-line holder); invoices move through Invoice."""
    inv["status"] = status_of(extended)
    inv["statusDetails"] = status_details(extended, failed)


@dataclass(frozen=True, slots=True)
class CreditBack:
    """What a negative invoice gives back to its customer's prepaid balance when it is issued (Invoice.credit_back):
    one entry of the balance's ledger, whose id is derived from the invoice's, so that however often the issuing is
    retried or re-run it is added once (ports.BillingStore.put_invoice writes it with the invoice's status move)."""

    entry_id: str
    amount: Decimal  # > 0, in the currency's minor unit
    doc: dict[str, Any]  # the entry as the ledger keeps it: id, amount, currency, invoiceId, invoiceNumber, ...


def owed_back_entry_id(invoice_id: str) -> str:
    """The id of the prepaid-credit entry a negative invoice gives back (Invoice.credit_back), one per invoice."""
    return derived_id(invoice_id, "owed-back")


_ZERO_DURATIONS: Final = ("P0D", "PT0S", "PT0H")
# The fields the lifecycle owns (typed on Invoice); every other field of the document passes through as read.
# A field the document did not have yet is added at its end in this order (where the lifecycle always put it).
_OWNED: Final = ("status", "statusDetails", "documents", "voidedAt", "updatedAt", "issuedAt", "dueAt", "draftUntil",
                 "deletedAt", "externalIds", "validationIssues", "totals", "description", "metadata")


@dataclass(eq=False)
class Invoice:
    """An invoice as its lifecycle sees it: the state machine's fields typed, the rest of OpenMeter's `Invoice`
    JSON (lines, supplier, customer, period, workflow, ...) carried as read. `from_json` / `to_json` are the one
    mapper: `to_json(from_json(doc))` is `doc` again, key for key and in the same order."""

    id: str
    number: str
    currency: str
    extended_status: str
    failed: bool
    updated_at: str | None
    issued_at: str | None
    due_at: str | None
    draft_until: str | None
    voided_at: str | None
    deleted_at: str | None
    external_ids: dict[str, Any]
    validation_issues: list[dict[str, Any]]
    documents: dict[str, Any] | None
    totals: dict[str, str]
    description: Any
    metadata: Any
    body: dict[str, Any]  # every other field, as read
    _keys: tuple[str, ...] = ()  # the document's field order as read

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Invoice:
        details = doc.get("statusDetails") or {}
        return cls(
            id=doc["id"], number=doc["number"], currency=doc["currency"],
            extended_status=details.get("extendedStatus") or doc.get("status") or "draft.created",
            failed=bool(details.get("failed", False)), updated_at=doc.get("updatedAt"), issued_at=doc.get("issuedAt"),
            due_at=doc.get("dueAt"), draft_until=doc.get("draftUntil"), voided_at=doc.get("voidedAt"),
            deleted_at=doc.get("deletedAt"), external_ids=dict(doc.get("externalIds") or {}),
            validation_issues=list(doc.get("validationIssues") or []), documents=doc.get("documents"),
            totals=doc.get("totals") or {}, description=doc.get("description"), metadata=doc.get("metadata"),
            body={k: v for k, v in doc.items() if k not in _OWNED}, _keys=tuple(doc))

    def _owned(self) -> dict[str, Any]:
        return {"status": self.status, "statusDetails": status_details(self.extended_status, self.failed),
                "documents": self.documents, "voidedAt": self.voided_at, "updatedAt": self.updated_at,
                "issuedAt": self.issued_at, "dueAt": self.due_at, "draftUntil": self.draft_until,
                "deletedAt": self.deleted_at, "externalIds": self.external_ids,
                "validationIssues": self.validation_issues, "totals": self.totals, "description": self.description,
                "metadata": self.metadata}

    def to_json(self) -> dict[str, Any]:
        owned = self._owned()
        out: dict[str, Any] = {}
        for k in self._keys:
            out[k] = owned[k] if k in owned else self.body[k]
        for k, v in owned.items():  # fields the document gains (status at creation, documents, voidedAt)
            if k not in out and v is not None:
                out[k] = v
        for k, v in self.body.items():
            out.setdefault(k, v)
        return out

    # -- what the lifecycle reads -------------------------------------------------------------------------
    @property
    def status(self) -> str:
        return status_of(self.extended_status)

    @property
    def customer_id(self) -> str:
        return str(self.body["customer"]["id"])

    @property
    def invoicing_app(self) -> str:
        """The invoicing app's type (the profile's apps hold a type name, or {id, type} naming an installed app)."""
        return _app_type(self.body["workflow"]["apps"]["invoicing"])

    @property
    def invoicing_app_ref(self) -> str:
        """What BillingApps.invoicing takes: the installed app's id, else the type name."""
        app = self.body["workflow"]["apps"]["invoicing"]
        return str(app.get("id") or app["type"]) if isinstance(app, dict) else str(app)

    @property
    def payment_app(self) -> str:
        return _app_type(self.body["workflow"]["apps"]["payment"])

    @property
    def due_after(self) -> str:
        return str(self.body["workflow"]["workflow"]["invoicing"]["dueAfter"])

    @property
    def due(self) -> Decimal:
        return _d(self.totals.get("total"))

    @property
    def owed_back(self) -> Decimal:
        """What a negative invoice owes its customer: its total's absolute value in the currency's minor unit (rounded
        half-even, which changes no total: totals are sums of rounded amounts; one it would change is refused);
        0 when the total is 0 or more."""
        if self.due >= 0:
            return ZERO
        owed = round_money(-self.due, self.currency, ROUND_HALF_EVEN)
        if owed != -self.due:
            raise ValueError(f"invoice {self.number}: its total {self.due} has more decimals than {self.currency} has")
        return owed

    def credit_back(self, now: datetime) -> CreditBack | None:
        """The prepaid credit this invoice gives back when it is issued through an app that does not keep it itself
        (every app but Stripe): `owed_back`, as the ledger entry `derived_id(invoice id, "owed-back")`; None when
        nothing is owed back. The invoice's totals do not change; `issued` makes it paid, settled by this credit."""
        owed = self.owed_back
        if owed == 0:
            return None
        entry_id = owed_back_entry_id(self.id)
        return CreditBack(entry_id, owed, {
            "id": entry_id, "amount": format(owed, "f"), "currency": self.currency, "invoiceId": self.id,
            "invoiceNumber": self.number,
            "description": f"owed back by invoice {self.number} (total {format(self.due, 'f')} {self.currency})",
            "createdAt": format_rfc3339(now)})

    def deleted_json(self) -> dict[str, Any]:
        """A deleted draft as the invoice.updated event of its deletion carries it, as OpenMeter's does (its
        deletion's last state): status and extendedStatus `deleted`, immutable, no action left, `deletedAt` set. The
        stored document stays a draft with deletedAt (BillingStore.delete_draft); no read serves it again."""
        doc = self.to_json()
        doc["status"] = "deleted"
        doc["statusDetails"] = status_details("deleted")
        return doc

    @property
    def mutable(self) -> bool:
        return self.status in ("gathering", "draft")

    @property
    def documents_pending(self) -> bool:
        return (self.documents or {}).get("status") == "pending"

    def available_actions(self) -> dict[str, Any]:
        return actions_for(self.extended_status, self.failed)

    def require(self, action: str) -> None:
        """Refuse an action the invoice's state does not allow (409, naming what is allowed)."""
        allowed = self.available_actions()
        if action not in allowed:
            can = ", ".join(sorted(allowed)) or "none"
            raise Conflict(f"cannot {action} invoice {self.number} in state {self.extended_status}; "
                           f"available actions: {can}")

    def require_mutable(self) -> None:
        if not self.mutable:
            raise Conflict(f"invoice {self.number} is {self.status}: an invoice cannot be changed once it is being "
                           "issued; usage arriving later is billed as a correction on the next invoice")

    # -- transitions ----------------------------------------------------------------------------------------
    def set_status(self, extended: str, *, failed: bool = False) -> None:
        self.extended_status, self.failed = extended, failed

    def touch(self, now: datetime) -> None:
        """Stamp a change: never before the last one (one by a container whose clock is ahead)."""
        self.updated_at = format_rfc3339(as_of(now, self.updated_at))

    def edit(self, key: str, value: Any) -> None:
        """`description` or `metadata` (the fields a mutable invoice takes from PUT)."""
        self.require_mutable()
        setattr(self, key, value)
        if key not in self._keys:  # a document without the field gains it at its end
            self._keys = (*self._keys, key)

    def issued(self, now: datetime) -> None:
        """Issued now: issue and due dates, then the payment app's state (the sandbox settles at once; nothing
        due is paid: a negative invoice is settled by what it gives back, see `credit_back`); its documents are
        due."""
        self.issued_at = format_rfc3339(now)
        self.due_at = format_rfc3339(now if self.due_after in _ZERO_DURATIONS
                                     else RecurringPeriod(self.due_after, now).at(1))
        self.validation_issues = []
        if self.payment_app == "sandbox" or self.due <= 0:
            self.set_status("paid")
        else:
            self.set_status("payment_processing.pending")
        self.touch(now)
        self.documents = {"status": "pending"}

    def issue_failed(self, app: str, message: str) -> None:
        """The invoicing app failed: the invoice stays issuing, failed, and can be retried."""
        self.set_status("issuing.failed", failed=True)
        self.validation_issues = [{"severity": "critical", "code": "app_sync_failed", "component": app,
                                   "message": message}]

    def void(self, now: datetime) -> None:
        self.set_status("voided")
        self.touch(now)
        self.voided_at = self.updated_at

    def auto_approval_due(self, now: datetime) -> bool:
        """A draft waiting for auto-approval whose draft period ended."""
        return self.extended_status == "draft.waiting_auto_approval" and bool(self.draft_until) \
            and parse_rfc3339(str(self.draft_until), "draftUntil") <= now

    def sync_interrupted(self, now: datetime) -> bool:
        """Issuing through an app that answers at once (not custom invoicing, whose sync waits for the user's
        call-back), not failed, and not touched for SYNC_LEASE: the sync's process died, nobody else resumes it."""
        return self.extended_status == "issuing.syncing" and not self.failed \
            and self.invoicing_app != "custom_invoicing" and bool(self.updated_at) \
            and parse_rfc3339(str(self.updated_at), "updatedAt") + SYNC_LEASE <= now

    def sync_stale(self, now: datetime) -> bool:
        """An interrupted sync (`sync_interrupted`) untouched for SYNC_RESUME_WITHIN: too old to repeat safely."""
        return self.sync_interrupted(now) and parse_rfc3339(str(self.updated_at), "updatedAt") + SYNC_RESUME_WITHIN <= now

    def overdue_at(self, now: datetime) -> bool:
        """Issued (or payment processing) and past its due date."""
        return self.status in ("issued", "payment_processing") and bool(self.due_at) \
            and parse_rfc3339(str(self.due_at), "dueAt") <= now


def _d(value: Any) -> Decimal:
    return Decimal(str(value)) if value is not None else ZERO


def totals(amount: Decimal, discounts: Decimal, credits: Decimal = ZERO) -> dict[str, str]:
    with decimal.localcontext(EXACT):
        total = amount - discounts - credits
        return {"amount": _s(amount), "chargesTotal": "0", "discountsTotal": _s(discounts), "creditsTotal": _s(credits),
                "taxesInclusiveTotal": "0", "taxesExclusiveTotal": "0", "taxesTotal": "0", "total": _s(total)}


def _s(value: Decimal) -> str:
    text = format(value, "f")
    return "0" if value == 0 else text


def sum_totals(lines: Iterable[dict[str, Any]], credits: Decimal = ZERO) -> dict[str, str]:
    with decimal.localcontext(EXACT):
        amount = discounts = ZERO
        for ln in lines:
            amount += _d(ln["totals"]["amount"])
            discounts += _d(ln["totals"]["discountsTotal"])
        return totals(amount, discounts, credits)


def _app_type(app: Any) -> str:
    return str(app["type"]) if isinstance(app, dict) else str(app)
