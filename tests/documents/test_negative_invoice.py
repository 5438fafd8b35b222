"""A negative invoice's document (a correction that lowered an invoiced period: its total is below zero, it is paid
at once by what it gives back) says where the money it owes the customer went, to the currency's minor unit: added
to the customer's prepaid credit balance in Billow, or held as the customer's balance with the invoicing app
(Stripe). It never says "Paid in full" nor "Total paid" of a total below zero (it did before: the note was the one
of every paid invoice). A positive invoice's document is unchanged (tests/documents/test_status_and_addresses.py).
End to end through the billing run: tests/billing/test_negative_correction.py, tests/stripe/test_webhooks.py."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from billow.adapters.rendering import InvoiceRenderer
from billow.domain.documents import OwedBack, invoice_view
from tests.documents.sample import invoice
from tests.documents.test_render import parse
from tests.documents.test_status_and_addresses import pdf_text

NEGATIVE = {"amount": "-3.00", "chargesTotal": "0", "discountsTotal": "0", "creditsTotal": "0", "taxesTotal": "0",
            "total": "-3.00"}


def negative(currency: str = "USD", total: str = "-3.00") -> dict[str, Any]:
    return invoice(status="paid", currency=currency, totals={**NEGATIVE, "amount": total, "total": total})


def drawn(inv: dict[str, Any], owed: OwedBack | None) -> tuple[str, str]:
    view, renderer = invoice_view(inv, owed), InvoiceRenderer()
    return renderer.html(view).decode(), " ".join(pdf_text(renderer.pdf(view)).split())


def test_credited_to_the_prepaid_balance_in_billow() -> None:
    page, pdf = drawn(negative(), OwedBack("3.00"))
    note = ("Nothing is due. The 3.00 USD this invoice owes you has been added to your prepaid credit balance, "
            "which pays your next invoices.")
    assert note in page and note in pdf
    assert parse(page).table("totals")[-1] == ("due", ["Total (USD)", "-3.00"])
    for text in (page, pdf):
        assert "Paid in full" not in text and "Total paid" not in text and "Total due" not in text


def test_held_as_the_customers_balance_with_stripe() -> None:
    page, pdf = drawn(negative(), OwedBack(Decimal("3"), kept_by="Stripe"))
    note = ("Nothing is due. The 3.00 USD this invoice owes you is held as your customer balance with Stripe, which "
            "applies it to your next invoice there.")
    assert note in page and note in pdf
    assert "prepaid credit" not in page and "Paid in full" not in page


def test_nobody_said_where_it_went_claims_nothing() -> None:
    page, _ = drawn(negative(), None)
    assert "Nothing is due: this invoice&#x27;s total is -3.00 USD." in page
    assert "Paid in full" not in page and "prepaid" not in page and "balance" not in page


@pytest.mark.parametrize(("currency", "total", "amount", "shown"), [
    ("JPY", "-300", "300", "300 JPY"), ("KWD", "-0.125", "0.125", "0.125 KWD"), ("USD", "-0.5", "0.5", "0.50 USD")])
def test_the_amount_is_exact_in_the_currencys_minor_unit(currency: str, total: str, amount: str, shown: str) -> None:
    page, _ = drawn(negative(currency, total), OwedBack(amount))
    assert f"The {shown} this invoice owes you has been added" in page


def test_an_amount_given_as_a_float_is_refused() -> None:
    with pytest.raises(TypeError):
        invoice_view(negative(), OwedBack(3.0))


def test_a_positive_paid_invoice_is_unchanged_whatever_is_passed() -> None:
    paid = invoice(status="paid")
    assert invoice_view(paid, OwedBack("3.00")) == invoice_view(paid)
    assert "Paid in full: nothing is due. Thank you." in invoice_view(paid).notes
