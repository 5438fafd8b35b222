"""A correction that lowers an invoiced period (late usage with a negative value, a gauge read lower, a shortened
in-advance period on an invoice of its own) makes an invoice whose total is negative: it owes the customer money.
The lead's decision (2026-12-06): with every invoicing app but Stripe, what it owes becomes the customer's prepaid
credit when it is issued, once per invoice (a ledger entry whose id is derived from the invoice's, written with the
status move), and the invoice is paid by it; its own totals stay as they are. Stripe keeps it itself (the customer's
Stripe balance, applied to the next Stripe invoice), so Billow adds nothing (tests/stripe/test_webhooks.py).

Before (fe699c2, a strict xfail): the -3.00 invoice was marked paid by `Invoice.issued` (total <= 0 counts as paid)
and `_prepare` applied prepaid credit to positive totals only: the 3.00 went nowhere, June's invoice charged the full
fee. Through the real handlers with a moving clock, on the in-memory usage twin and on chdb, SQLite meta store."""

from __future__ import annotations

import base64
from decimal import Decimal
from typing import Any

import pytest

from billow.adapters.billing_apps import CustomInvoicing, SandboxInvoicing, StripeInvoicing
from billow.domain.invoices import Invoice
from billow.ids import derived_id
from tests.billing.conftest import Billow
from tests.conftest import t
from tests.support.billing import PROFILE, invoices, scheduled_run, subscribed


def balance(b: Billow, customer_id: str) -> Decimal:
    return b.c.billing_store().credit_balance(b.c.settings.namespace, customer_id, "USD")  # type: ignore[no-any-return]


def document(b: Billow, invoice_id: str) -> str:
    """The invoice's HTML document as the API serves it."""
    status, page = b.call("GET", f"/api/v1/billing/invoices/{invoice_id}/documents/html")
    assert status == 200, page
    return base64.b64decode(page).decode()  # served base64-encoded, as every document (the API Gateway response)


CREDITED = ("Nothing is due. The 3.00 USD this invoice owes you has been added to your prepaid credit balance, which "
            "pays your next invoices.")


def correction_of_april(b: Billow, profile: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """April's usage (6.00) paid with prepaid credit, then late usage of -300 tokens lowers it to 3.00: the customer
    and the correction invoice (-3.00) as the run of 2026-05-02 made it."""
    subscribed(b, profile)
    customer = b.ok("GET", "/api/v1/customers/acme")
    b.ok("POST", f"/api/v1/billing/customers/{customer['id']}/credits", {"amount": "100.00", "currency": "USD"})
    b.clock.set("2026-04-01T00:10:00Z")
    scheduled_run(b)  # April's fee 49.99, from the credit
    b.usage(600, "2026-04-05T10:00:00Z")
    b.clock.set("2026-05-01T00:10:00Z")
    scheduled_run(b)  # April's usage 6.00 and May's fee 49.99: 50.01 from the credit, 5.98 paid
    for inv in invoices(b):  # a custom invoicing app's system issues and is paid for what it got
        if inv["statusDetails"]["extendedStatus"] == "issuing.syncing":
            b.ok("POST", f"/api/v1/apps/custom-invoicing/{inv['id']}/issuing/synchronized", {})
    assert balance(b, customer["id"]) == 0
    b.usage(-300, "2026-04-06T10:00:00Z")  # late: April's usage was 300 tokens, 3.00
    b.clock.set("2026-05-02T00:10:00Z")
    scheduled_run(b)
    correction = invoices(b)[-1]
    assert (correction["totals"]["total"], correction["totals"]["creditsTotal"]) == ("-3.00", "0")  # as they are
    return customer, correction


def test_a_negative_correction_gives_back_the_prepaid_credit_that_paid_the_period(billow: Billow) -> None:
    b = billow
    customer, correction = correction_of_april(b)
    assert correction["status"] == "paid"  # settled by the credit it gave back
    assert balance(b, customer["id"]) == Decimal("3.00")  # the 3.00 overpaid from prepaid credit is the customer's again
    entries = b.c.billing_store().credit_entries(b.c.settings.namespace, customer["id"], "USD")
    back = [e for e in entries if e.get("invoiceNumber") == correction["number"]]
    assert [(e["id"], e["amount"], e["invoiceId"]) for e in back] == [
        (derived_id(correction["id"], "owed-back"), "3.00", correction["id"])]  # the ledger says where it came from
    page = document(b, correction["id"])  # and so does the document, not "Paid in full"
    assert CREDITED in page and "Paid in full" not in page
    scheduled_run(b)  # a re-run bills nothing and gives nothing back again
    assert len(invoices(b)) == 3 and balance(b, customer["id"]) == Decimal("3.00")
    b.clock.set("2026-06-01T00:10:00Z")
    scheduled_run(b)  # June's fee 49.99 in advance (May's usage 0): the 3.00 is applied to it, once
    june = invoices(b)[-1]
    assert (june["totals"]["amount"], june["totals"]["creditsTotal"], june["totals"]["total"]) == \
        ("49.99", "3.00", "46.99")
    assert balance(b, customer["id"]) == 0


def test_a_negative_correction_approved_by_hand_credits_once(billow: Billow) -> None:
    """Without auto-advance the correction waits for approval; approving issues it and gives the 3.00 back; a second
    approve, a retry or a re-run gives nothing more."""
    b = billow
    manual = {**PROFILE, "workflow": {"invoicing": {"dueAfter": "P14D", "autoAdvance": False}}}
    subscribed(b, manual)
    customer = b.ok("GET", "/api/v1/customers/acme")
    b.usage(600, "2026-04-05T10:00:00Z")
    b.clock.set("2026-05-01T00:10:00Z")
    scheduled_run(b)
    for inv in invoices(b):
        b.ok("POST", f"/api/v1/billing/invoices/{inv['id']}/approve")
    b.usage(-300, "2026-04-06T10:00:00Z")
    b.clock.set("2026-05-02T00:10:00Z")
    scheduled_run(b)
    draft = invoices(b)[-1]
    assert (draft["totals"]["total"], draft["statusDetails"]["extendedStatus"]) == \
        ("-3.00", "draft.manual_approval_needed")
    assert balance(b, customer["id"]) == 0  # nothing given back before it is issued
    assert b.ok("POST", f"/api/v1/billing/invoices/{draft['id']}/approve")["status"] == "paid"
    assert balance(b, customer["id"]) == Decimal("3.00")
    for action in ("approve", "retry", "advance"):
        assert b.call("POST", f"/api/v1/billing/invoices/{draft['id']}/{action}")[0] == 409
    scheduled_run(b)
    assert balance(b, customer["id"]) == Decimal("3.00")


def test_a_negative_correction_through_custom_invoicing_credits_once_when_the_system_confirms(billow: Billow) -> None:
    """Custom invoicing: the correction is issued when the user's system confirms it; a confirmation sent again is a
    409 and gives nothing more."""
    b = billow
    custom = {**PROFILE, "apps": {"tax": "sandbox", "invoicing": "custom_invoicing", "payment": "custom_invoicing"}}
    customer, correction = correction_of_april(b, custom)
    assert correction["statusDetails"]["extendedStatus"] == "issuing.syncing"
    assert balance(b, customer["id"]) == 0
    synced = f"/api/v1/apps/custom-invoicing/{correction['id']}/issuing/synchronized"
    b.ok("POST", synced, {"invoicing": {"invoiceNumber": "ERP-9", "invoiceId": "erp-9"}})
    assert b.ok("GET", f"/api/v1/billing/invoices/{correction['id']}")["status"] == "paid"
    assert balance(b, customer["id"]) == Decimal("3.00")
    assert CREDITED in document(b, correction["id"])
    assert b.call("POST", synced, {"invoicing": {"invoiceNumber": "ERP-9", "invoiceId": "erp-9"}})[0] == 409
    scheduled_run(b)
    assert balance(b, customer["id"]) == Decimal("3.00")


def test_the_invoicing_app_decides_who_keeps_what_a_negative_invoice_owes() -> None:
    """Stripe keeps it (the customer's Stripe balance); Billow keeps it for the sandbox and custom invoicing."""
    assert StripeInvoicing(None, None).keeps_customer_credit is True
    assert SandboxInvoicing().keeps_customer_credit is False
    assert CustomInvoicing().keeps_customer_credit is False


def _invoice(total: str, currency: str = "USD") -> Invoice:
    return Invoice.from_json({"id": "01JINV0000000000000000000A", "number": "ACME-0003", "currency": currency,
                              "status": "issuing", "totals": {"total": total, "creditsTotal": "0"}})


@pytest.mark.parametrize(("total", "currency", "owed"), [
    ("-3.00", "USD", "3.00"), ("-300", "JPY", "300"), ("-0.125", "KWD", "0.125"), ("0", "USD", "0"),
    ("49.99", "USD", "0")])
def test_what_a_negative_invoice_owes_is_exact_in_the_currency(total: str, currency: str, owed: str) -> None:
    inv = _invoice(total, currency)
    assert str(inv.owed_back) == owed
    back = inv.credit_back(t("2026-05-02T00:10:00Z"))
    if owed == "0":
        assert back is None
        return
    assert back is not None and (back.amount, back.doc["amount"], back.doc["invoiceId"]) == (Decimal(owed), owed, inv.id)
    again = _invoice(total, currency).credit_back(t("2026-06-01T00:00:00Z"))  # issued again later: the same entry
    assert again is not None and back.entry_id == again.entry_id == derived_id(inv.id, "owed-back")


def test_a_total_finer_than_the_currency_is_refused_not_rounded() -> None:
    with pytest.raises(ValueError, match="more decimals than USD"):
        _ = _invoice("-3.001").owed_back
