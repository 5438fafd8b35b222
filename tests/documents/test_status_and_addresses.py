"""What the customer reads on an invoice document: whether it is paid, due or overdue (a paid invoice never says
"Total due"), no internal ids, and the address written the way the post of its country expects it."""

from __future__ import annotations

import io
from typing import Any

import pypdf
import pytest

from billow.adapters.rendering import render_html, render_pdf
from tests.documents.sample import invoice
from tests.documents.test_render import parse

INTERNAL_IDS = ("01JTESTINVOICE0000000000001", "01JTESTCUSTOMER00000000001", "01JTESTLINE000000000000001",
                "01JTESTLINE000000000000002", "01JTESTCHILD00000000000001", "01JTESTSUBSCRIPTION0000001")


def pdf_text(pdf: bytes) -> str:
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(pdf)).pages)


def status_line(page: str) -> str:
    start = page.index('<div class="status')
    return page[page.index(">", start) + 1:page.index("</div>", start)]


@pytest.mark.parametrize(("status", "label", "last", "banner", "note"), [
    ("paid", "Paid", "Total paid (USD)", "Paid", "Paid in full: nothing is due."),
    ("issued", "Due", "Total due (USD)", "Payment due by 2026-05-31 00:05 UTC", None),
    ("payment_processing", "Payment processing", "Total due (USD)", "Payment processing", None),
    ("overdue", "Overdue", "Total due (USD)", "Overdue: payment was due 2026-05-31 00:05 UTC",
     "This invoice is overdue: payment was due 2026-05-31 00:05 UTC. Please pay it now."),
    ("voided", "Void", "Total (USD)", "Void", "This invoice is voided: no payment is due for it."),
    ("uncollectible", "Uncollectible", "Total (USD)", "Uncollectible",
     "This invoice is uncollectible: no payment is due for it."),
])
def test_paid_due_and_overdue_are_shown_clearly(status: str, label: str, last: str, banner: str,
                                                note: str | None) -> None:
    page = render_html(invoice(status=status))
    parsed = parse(page)
    facts = {cells[0]: cells[1] for _, cells in parsed.table("facts")}
    assert facts["Status"] == label
    assert ("Due" in facts) == (status in ("issued", "payment_processing", "overdue"))
    assert parsed.table("totals")[-1] == ("due", [last, "57.24"])
    assert status_line(page) == banner
    assert f'class="status status-{status}"' in page
    if note:
        assert note in page
    text = pdf_text(render_pdf(invoice(status=status)))
    assert f"{last} 57.24" in text and banner in text
    if status == "paid":
        assert "Total due" not in page and "Total due" not in text


def test_no_internal_ids_in_the_customers_document() -> None:
    page = render_html(invoice())
    text = pdf_text(render_pdf(invoice()))
    for internal in INTERNAL_IDS:
        assert internal not in page and internal not in text, internal
    details = [cells[0] for cls, cells in parse(page).table("lines") if cls == "detail"]
    assert details == ["Feature: tokens · Period: 2026-04-01 – 2026-05-01"]  # the Base fee line has no detail row
    assert "Subscription" not in page and "Line:" not in page
    # Without a number the document still needs a reference: the invoice id is all there is.
    assert "01JTESTINVOICE0000000000001" in render_html(invoice(number=None))


def address(country: str, **parts: str) -> dict[str, Any]:
    return {"country": country, "line1": "1 Main St", **parts}


@pytest.mark.parametrize(("addr", "lines"), [
    (address("US", city="Austin", state="TX", postalCode="78701"),
     ["1 Main St", "Austin, TX 78701", "United States"]),
    (address("us", city="Austin", postalCode="78701"), ["1 Main St", "Austin 78701", "United States"]),
    (address("CA", city="Toronto", state="ON", postalCode="M5V 2T6"),
     ["1 Main St", "Toronto, ON M5V 2T6", "Canada"]),
    (address("DE", city="Berlin", postalCode="10115"), ["1 Main St", "10115 Berlin", "Germany"]),
    (address("FR", city="Paris", postalCode="75001", line2="Bâtiment B"),
     ["1 Main St", "Bâtiment B", "75001 Paris", "France"]),
    (address("GB", city="London", postalCode="SW1A 1AA"), ["1 Main St", "London", "SW1A 1AA", "United Kingdom"]),
    (address("IT", city="Roma", state="RM", postalCode="00184"), ["1 Main St", "00184 Roma RM", "Italy"]),
    (address("AU", city="Sydney", state="NSW", postalCode="2000"), ["1 Main St", "Sydney NSW 2000", "Australia"]),
    (address("BR", city="São Paulo", state="SP", postalCode="01310-100"),
     ["1 Main St", "São Paulo - SP", "01310-100", "Brazil"]),
    (address("ES", city="Madrid", state="Madrid", postalCode="28001"), ["1 Main St", "28001 Madrid", "Madrid",
                                                                          "Spain"]),
    # A country not in the table: postal code and city, then the region, then the code as given.
    (address("XK", city="Pristina", state="PR", postalCode="10000"), ["1 Main St", "10000 Pristina", "PR", "XK"]),
    ({"city": "Austin", "state": "TX", "phoneNumber": "+1 512 555 0100"}, ["Austin", "TX", "Phone: +1 512 555 0100"]),
])
def test_addresses_follow_the_country(addr: dict[str, Any], lines: list[str]) -> None:
    inv = invoice()
    inv["customer"]["billingAddress"] = addr
    parties = parse(render_html(inv)).parties
    assert parties[1] == ["Acme Inc", *lines, "Customer key: acme"]
    text = pdf_text(render_pdf(inv))
    assert all(line in text for line in lines)
