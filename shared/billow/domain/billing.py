"""Billing marks: what has been billed for one subscription period and payment term. Pure: no I/O, no clock.

A billing run rates a due point (a subscription period's in-advance or in-arrears term), compares the result line
key by line key with the point's mark and bills the difference; the new mark is written with the invoice in one
transaction, moving only from the revision the run read (see ports.BillingStore.commit_billing)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Mark:
    subscription_id: str
    period_start: datetime
    term: str  # in_advance | in_arrears
    rev: int  # the revision the run read (0: no mark yet)
    billed: dict[str, dict[str, str]]  # line key -> {"total", "quantity", "amount", "discounts"} (decimal strings)
    billed_at: datetime | None = None
