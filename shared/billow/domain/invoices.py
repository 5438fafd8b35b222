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
credits. Every figure is a sum of already-rounded amounts, so totals are exact."""

from __future__ import annotations

import decimal
from collections.abc import Iterable
from decimal import Decimal
from typing import Any, Final

from billow.errors import Conflict
from billow.exact import EXACT

STATUSES: Final = ("gathering", "draft", "issuing", "issued", "payment_processing", "overdue", "paid",
                   "uncollectible", "voided")
ACTIONS: Final = ("advance", "approve", "retry", "void", "delete")
ZERO: Final = Decimal(0)


def status_of(extended: str) -> str:
    return extended.split(".", 1)[0]


def available_actions(inv: dict[str, Any]) -> dict[str, Any]:
    """OpenMeter's `InvoiceAvailableActions`: each possible action with the status it leads to."""
    ext: str = inv["statusDetails"]["extendedStatus"]
    failed = inv["statusDetails"].get("failed", False)
    out: dict[str, Any] = {}
    if ext in ("draft.waiting_auto_approval", "draft.ready_to_issue", "draft.created"):
        out["advance"] = {"resultingState": "issued"}
    if ext == "draft.manual_approval_needed":
        out["approve"] = {"resultingState": "issued"}
    if status_of(ext) == "draft":
        out["delete"] = {"resultingState": "deleted"}
    if failed:
        out["retry"] = {"resultingState": "issued"}
    if status_of(ext) in ("draft", "issuing", "issued", "payment_processing", "overdue"):
        out["void"] = {"resultingState": "voided"}
    return out


def require(inv: dict[str, Any], action: str) -> None:
    """Refuse an action the invoice's state does not allow (409, naming what is allowed)."""
    allowed = available_actions(inv)
    if action not in allowed:
        ext = inv["statusDetails"]["extendedStatus"]
        can = ", ".join(sorted(allowed)) or "none"
        raise Conflict(f"cannot {action} invoice {inv['number']} in state {ext}; available actions: {can}")


def set_status(inv: dict[str, Any], extended: str, *, failed: bool = False) -> None:
    inv["status"] = status_of(extended)
    inv["statusDetails"] = {"extendedStatus": extended, "failed": failed,
                            "immutable": status_of(extended) not in ("gathering", "draft"), "availableActions": {}}
    inv["statusDetails"]["availableActions"] = available_actions(inv)


def mutable(inv: dict[str, Any]) -> bool:
    return inv["status"] in ("gathering", "draft")


def require_mutable(inv: dict[str, Any]) -> None:
    if not mutable(inv):
        raise Conflict(f"invoice {inv['number']} is {inv['status']}: an invoice cannot be changed once it is being "
                       "issued; usage arriving later is billed as a correction on the next invoice")


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


def due(inv: dict[str, Any]) -> Decimal:
    return _d(inv["totals"]["total"])
