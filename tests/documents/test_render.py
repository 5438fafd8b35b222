"""Invoice documents: the HTML page and the PDF carry every line, child line and total of the invoice exactly,
escape what they show, format each currency to its minor unit and render the same bytes every time."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pypdf
import pytest

from billow.adapters.rendering import FONT_PATH, MISSING_GLYPH, printable, render_html, render_pdf
from billow.domain.documents import money
from billow.domain.money import Currency
from billow.errors import ValidationFailed
from billow.services.documents import document_keys
from tests.documents.sample import invoice

ROOT = Path(__file__).resolve().parents[2]


class _Page(HTMLParser):
    """The rows of the page's tables as (table class, row class, cell texts), entities decoded."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, str, list[str]]] = []
        self.parties: list[list[str]] = []
        self._table = ""
        self._cell: list[str] | None = None
        self._in_party = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        cls = dict(attrs).get("class") or ""
        if tag == "table":
            self._table = cls
        elif tag == "tr":
            self.rows.append((self._table, cls, []))
        elif tag in ("td", "th") and self.rows:
            self._cell = []
        elif tag == "div" and cls == "party":
            self._in_party = True
            self.parties.append([])
        elif tag == "p" and self._in_party:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1][2].append("".join(self._cell))
            self._cell = None
        elif tag == "p" and self._in_party and self._cell is not None:
            self.parties[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "div":
            self._in_party = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def table(self, name: str) -> list[tuple[str, list[str]]]:
        return [(row_cls, cells) for table, row_cls, cells in self.rows if table == name]


def parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    return parser


def pdf_text(pdf: bytes) -> str:
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(pdf)).pages)


# -- HTML -----------------------------------------------------------------------------------------------------
def test_html_lists_every_line_child_line_and_total_as_given() -> None:
    page = parse(render_html(invoice()))
    lines = page.table("lines")
    assert lines[0] == ("", ["Description", "Quantity", "Unit price (USD)", "Amount (USD)", "Discount (USD)",
                             "Total (USD)"])
    body = [(cls, cells) for cls, cells in lines[1:] if cls != "detail"]
    assert body == [
        ("line", ["Tokens", "1500", "", "12.50", "0.25", "12.25"]),
        ("child", ["Tokens: usage in tier 1", "1000", "0.01", "10.00", "0.00", "10.00"]),
        ("child", ["Tokens: usage in tier 2", "500", "0.005", "2.50", "0.25", "2.25"]),
        ("line", ["Base fee", "1", "49.99", "49.99", "0.00", "49.99"]),
    ]
    # Each line is traceable to its feature (meter) and period; internal ids stay in the API (issue 22).
    details = [cells[0] for cls, cells in lines if cls == "detail"]
    assert details == ["Feature: tokens · Period: 2026-04-01 – 2026-05-01"]
    assert page.table("totals") == [("", ["Subtotal", "62.49"]), ("", ["Discounts", "-0.25"]),
                                    ("", ["Credits applied", "-5.00"]), ("", ["Taxes", "0.00"]),
                                    ("due", ["Total due (USD)", "57.24"])]


def test_html_shows_parties_number_dates_and_period() -> None:
    page = parse(render_html(invoice()))
    assert page.parties == [["Billow Inc.", "Invalidenstr. 1", "10115 Berlin", "Germany", "Tax ID: DE123456789"],
                            ["Acme Inc", "1 Main St", "Austin", "United States", "Customer key: acme"]]
    assert {cells[0]: cells[1] for _, cells in page.table("facts")} == {
        "Invoice number": "ACME-0001", "Issued": "2026-05-01 00:05 UTC", "Due": "2026-05-31 00:05 UTC",
        "Billing period": "2026-04-01 – 2026-05-01", "Currency": "USD", "Status": "Due"}


def test_openmeter_nested_subscription_reference_and_party_addresses_are_read() -> None:
    inv = invoice()
    inv["lines"][0]["subscription"] = {"subscription": {"id": "01JSUBNESTED"}, "phase": {"id": "p"},
                                       "item": {"id": "i"}, "billingPeriod": inv["period"]}
    inv["customer"] = {"name": "Globex", "addresses": [{"country": "FR", "city": "Paris", "postalCode": "75001"}],
                       "taxId": {"code": "FR40303265045"}, "usageAttribution": {"subjectKeys": []}}
    page = parse(render_html(inv))
    assert "01JSUBNESTED" not in render_html(inv)  # internal ids stay in the API (issue 22)
    assert page.parties[1] == ["Globex", "75001 Paris", "France", "Tax ID: FR40303265045"]


def test_html_is_self_contained_and_printable() -> None:
    page = render_html(invoice())
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert '<meta charset="utf-8">' in page and "@page" in page
    for external in ("http://", "https://", "<link", "<script", "@import", "src=", "url("):
        assert external not in page


def test_every_value_is_escaped() -> None:
    evil = '<script>alert("x")</script> & "Co" \'ltd\''
    inv = invoice(number="<b>ACME</b>")
    inv["customer"]["name"] = evil
    inv["supplier"]["taxId"]["code"] = "<i>DE1</i>"
    inv["lines"][0]["name"] = "<img src=x onerror=alert(1)>"
    inv["lines"][0]["featureKey"] = "</td><script>x()</script>"
    inv["lines"][0]["children"][0]["name"] = "<svg onload=alert(2)>"
    page = render_html(inv)
    for raw in ("<script", "<img", "<svg", "<b>", "<i>", "</td><script"):
        assert raw not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;Co&quot; &#x27;ltd&#x27;" in page
    parsed = parse(page)
    assert parsed.parties[1][0] == evil  # escaped, not mangled: the reader sees the name as it is
    assert parsed.table("lines")[1][1][0] == "<img src=x onerror=alert(1)>"
    assert "Feature: </td><script>x()</script>" in parsed.table("lines")[2][1][0]
    assert parsed.table("lines")[3][1][0] == "<svg onload=alert(2)>"
    assert "<title>Invoice &lt;b&gt;ACME&lt;/b&gt;</title>" in page


@pytest.mark.parametrize(("currency", "amounts", "shown"), [
    ("JPY", {"amount": "1250", "discountsTotal": "0", "creditsTotal": "50", "total": "1200"},
     ["1250", "0", "-50", "0", "1200"]),
    ("USD", {"amount": "1250.5", "discountsTotal": "0", "creditsTotal": "50", "total": "1200.5"},
     ["1250.50", "0.00", "-50.00", "0.00", "1200.50"]),
    ("BHD", {"amount": "12.345", "discountsTotal": "0.1", "creditsTotal": "0", "total": "12.245"},
     ["12.345", "-0.100", "0.000", "0.000", "12.245"]),
])
def test_totals_follow_the_currency_minor_unit(currency: str, amounts: dict[str, str], shown: list[str]) -> None:
    inv = invoice(currency=currency, lines=[], totals={**amounts, "taxesTotal": "0"})
    totals = parse(render_html(inv)).table("totals")
    assert [cells for _, cells in totals] == [["Subtotal", shown[0]], ["Discounts", shown[1]],
                                             ["Credits applied", shown[2]], ["Taxes", shown[3]],
                                             [f"Total due ({currency})", shown[4]]]


def test_amounts_are_padded_never_rounded_and_never_floats() -> None:
    usd, jpy, bhd = Currency.of("USD"), Currency.of("JPY"), Currency.of("BHD")
    assert money("5", usd) == "5.00" and money("0.005", usd) == "0.005" and money("-0", usd) == "0.00"
    assert money("1234567.1", usd) == "1234567.10"  # no grouping: the same string as in the API
    assert money("7", jpy) == "7" and money("0.5", jpy) == "0.5" and money("1.2", bhd) == "1.200"
    with pytest.raises(TypeError, match="never a float"):
        money(0.1, usd)
    with pytest.raises(ValueError, match="totals.total: not a decimal"):
        render_html(invoice(totals={**invoice()["totals"], "total": "12,25"}))
    with pytest.raises(ValidationFailed, match="currency"):
        render_html(invoice(currency="XAU"))


def test_status_and_type_shape_the_wording() -> None:
    assert "This invoice is voided: no payment is due for it." in render_html(invoice(status="voided"))
    assert "no payment is due" not in render_html(invoice())
    credit_note = parse(render_html(invoice(type="credit_note")))
    assert credit_note.table("totals")[-1] == ("due", ["Total credited (USD)", "57.24"])


def test_a_missing_total_is_an_error_not_a_zero() -> None:
    inv = invoice()
    del inv["lines"][0]["children"][1]["totals"]["total"]
    with pytest.raises(ValueError, match=r"lines\[0\]\.children\[1\]\.totals\.total: missing"):
        render_html(inv)


# -- PDF ------------------------------------------------------------------------------------------------------
def test_pdf_carries_number_customer_lines_and_total() -> None:
    pdf = render_pdf(invoice())
    assert pdf.startswith(b"%PDF-")
    text = pdf_text(pdf)
    for expected in ("ACME-0001", "Acme Inc", "Billow Inc.", "Tax ID: DE123456789", "Tokens",
                     "Tokens: usage in tier 1 1000 0.01 10.00 0.00 10.00",
                     "Tokens: usage in tier 2 500 0.005 2.50 0.25 2.25", "Base fee 1 49.99 49.99 0.00 49.99",
                     "Feature: tokens",
                     "Credits applied -5.00", "Total due (USD) 57.24"):
        assert expected in text
    meta = pypdf.PdfReader(io.BytesIO(pdf)).metadata
    assert meta is not None and meta.title == "Invoice ACME-0001"
    assert meta.creation_date == datetime(2026, 5, 1, 0, 5, tzinfo=UTC)  # the issue time, not the clock


def test_cjk_and_emoji_names_render() -> None:
    inv = invoice()
    inv["customer"]["name"] = "株式会社テスト Ωmega Ｆｕｌｌ 😀👍🏽 Zoë"
    inv["lines"][0]["name"] = "トークン 🚀"
    pdf = render_pdf(inv)
    text = pdf_text(pdf)
    # DejaVu Sans draws Greek, accents and the basic emoji; CJK is replaced, fullwidth letters are mapped.
    assert "??????? Ωmega Full 😀? Zoë" in text
    assert "???? ?" in text and "57.24" in text
    assert "株式会社テスト" in parse(render_html(inv)).parties[1][0]  # the HTML keeps every character


def test_printable_keeps_what_the_font_draws() -> None:
    def has_glyph(cp: int) -> bool:
        return cp < 0x3000

    assert printable("a\tb\nc\x00d\u200be", has_glyph) == "a b cde"
    assert printable("Ａ株", has_glyph) == "A" + MISSING_GLYPH
    assert printable("e\u0301", has_glyph) == "é"  # NFC first


def test_a_long_invoice_breaks_over_pages() -> None:
    lines = [{"id": f"L{i}", "name": f"Item number {i}", "type": "flat_fee", "quantity": "1", "perUnitAmount": "1",
              "children": [], "totals": {"amount": "1.00", "discountsTotal": "0", "total": "1.00"}}
             for i in range(45)]
    inv = invoice(lines=lines, totals={"amount": "45.00", "discountsTotal": "0", "creditsTotal": "0",
                                       "taxesTotal": "0", "total": "45.00"})
    reader = pypdf.PdfReader(io.BytesIO(render_pdf(inv)))
    assert len(reader.pages) > 1
    text = "\n".join(p.extract_text() for p in reader.pages)
    assert all(f"Item number {i} " in text for i in range(45))
    assert f"page {len(reader.pages)}/{len(reader.pages)}" in text and "Total due (USD) 45.00" in text


def test_rendering_is_deterministic() -> None:
    inv = invoice()
    inv["customer"]["name"] = "Acme 株式会社 😀"
    first = render_pdf(inv)
    assert render_pdf(inv) == first and render_html(inv) == render_html(inv)
    assert render_pdf(invoice(issuedAt="2026-05-02T00:00:00Z")) != render_pdf(invoice())  # the date is in it


def test_importing_the_module_does_not_import_fpdf() -> None:
    # fpdf2 costs seconds of import: the API Lambda imports this module and must start fast.
    code = "import sys, billow.services.documents; assert 'fpdf' not in sys.modules, 'fpdf imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "shared")},
                   timeout=60)


def test_the_font_is_vendored_with_its_licence_and_fits_the_budget() -> None:
    assert FONT_PATH.is_file() and FONT_PATH.stat().st_size < 1_000_000
    assert "Bitstream Vera" in (FONT_PATH.parent / "LICENSE").read_text()


# -- keys -----------------------------------------------------------------------------------------------------
def test_document_keys() -> None:
    assert document_keys("acme-ns", invoice()) == (
        "invoices/acme-ns/01JTESTINVOICE0000000000001/ACME-0001.html",
        "invoices/acme-ns/01JTESTINVOICE0000000000001/ACME-0001.pdf")
    html_key, _ = document_keys("ns", invoice(number="../../etc/passwd x"))
    assert html_key == "invoices/ns/01JTESTINVOICE0000000000001/.._.._etc_passwd_x.html"
    with pytest.raises(ValueError, match="cannot name a document"):
        document_keys("ns", invoice(id=".."))
