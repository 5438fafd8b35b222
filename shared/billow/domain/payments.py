"""Payment events: what a payment app (Stripe) reports about an invoice it collects. Pure: no I/O, no stripe."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

PaymentStatus = Literal["paid", "payment_failed", "uncollectible", "voided", "finalized"]
PAYMENT_STATUSES: Final[tuple[PaymentStatus, ...]] = ("paid", "payment_failed", "uncollectible", "voided", "finalized")


@dataclass(frozen=True, slots=True)
class PaymentEvent:
    """One payment app event about one invoice.

    `event_id` is the app's event id (Stripe's `evt_...`, the same on every redelivery), `billow_invoice_id`
    the Billow invoice it concerns (from the app's invoice metadata: events about invoices Billow did not
    create never become a PaymentEvent), `stripe_invoice_id` the app's own invoice id, `at` when the app
    recorded it (UTC)."""

    event_id: str
    billow_invoice_id: str
    stripe_invoice_id: str
    status: PaymentStatus
    at: datetime

    def __post_init__(self) -> None:
        if self.status not in PAYMENT_STATUSES:
            raise ValueError(f"status must be one of {', '.join(PAYMENT_STATUSES)}, not {self.status!r}")
        if not self.billow_invoice_id:
            raise ValueError("billow_invoice_id is required")
        if self.at.tzinfo is None:
            raise ValueError("at must be timezone-aware (UTC)")
