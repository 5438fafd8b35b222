"""Invoice documents: each issued invoice rendered to a printable HTML page and a PDF, stored where the
customer can fetch them (S3 in AWS, data_dir/documents when embedded; see billow.adapters.documents).

The invoice is the JSON document of the billing API (OpenMeter's `Invoice`: supplier and customer parties,
lines with their detailed child lines, `InvoiceTotals`), amounts as decimal strings already rounded to the
currency's minor unit. Both formats are drawn from one view (`_view`): the same facts, rows and totals,
so the HTML and the PDF cannot disagree.

* Amounts are shown exactly as the invoice holds them, never re-rounded: padded to the currency's minor
  unit (JPY 0, USD 2, BHD 3 decimal places) and never cut, so a unit price of 0.005 USD stays 0.005. No
  thousands separators: a figure on the document is the same string as in the API response.
* Every value is HTML-escaped; the page has inline CSS only (no external assets) and prints on A4.
* The PDF embeds DejaVu Sans (billow/fonts, ~740 KB, Bitstream Vera licence) so it looks the same on a
  laptop and in Lambda, which has no system fonts. DejaVu covers Latin, Greek, Cyrillic, Armenian,
  Georgian, Hebrew and many symbols and emoji, but not CJK: characters the font lacks are replaced (after
  NFKC compatibility mapping, e.g. fullwidth ＡＢＣ -> ABC) by "?" in the PDF, which never fails on them.
  The HTML keeps every character. CJK fonts are 5-20 MB: too big for the code asset and the cold start.
* Output is deterministic: the PDF's creation date is the invoice's issue time, not the clock, so
  re-rendering an invoice gives the same bytes and re-storing it is idempotent.
* fpdf2 is imported inside `render_pdf` only: the API Lambda imports this module and must start fast.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from billow.domain.money import Currency, check_amount
from billow.timeutil import parse_rfc3339

if TYPE_CHECKING:
    from fpdf import FPDF

FONT_PATH: Final = Path(__file__).resolve().parent.parent / "fonts" / "DejaVuSans.ttf"
MISSING_GLYPH: Final = "?"
HTML_TYPE: Final = "text/html; charset=utf-8"
PDF_TYPE: Final = "application/pdf"
_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)  # creation date of an invoice without any timestamp
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]")
COLUMNS: Final = ("Description", "Quantity", "Unit price", "Amount", "Discount", "Total")


class DocumentStore(Protocol):
    """Where rendered documents go: S3 (billow.adapters.documents.S3DocumentStore) or local files."""

    def put(self, key: str, body: bytes, content_type: str) -> None: ...

    def url(self, key: str) -> str: ...

    def get(self, key: str) -> bytes: ...


# -- formatting ---------------------------------------------------------------------------------------------
def _decimal(value: Any, what: str) -> Decimal:
    """An amount or quantity from the invoice JSON: a decimal string, int or Decimal; never a float."""
    if value is None:
        raise ValueError(f"{what}: missing")
    if isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{what}: not a decimal number: {value!r}") from None
    else:
        number = value
    checked = check_amount(number, what)  # refuses floats, NaN and Infinity
    if not isinstance(checked, Decimal):
        raise TypeError(f"{what}: must be a decimal string, not {type(value).__name__}")
    return checked


def _plain(number: Decimal, places: int) -> str:
    """Fixed-point text with at least `places` decimals and every significant digit the number has."""
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)  # finite: checked by _decimal
    digits = max(places, -exponent, 0)
    text = f"{number:.{digits}f}"
    return text[1:] if number == 0 and text.startswith("-") else text  # no "-0.00"


def money(value: Any, currency: Currency, what: str = "amount") -> str:
    """An amount as the document shows it: padded to the currency's minor unit, never rounded."""
    return _plain(_decimal(value, what), currency.minor_units)


def quantity(value: Any, what: str = "quantity") -> str:
    return _plain(_decimal(value, what).normalize(), 0) if value is not None else ""


def _instant(value: Any, what: str) -> str:
    """A date-time as a date (UTC) when it is midnight, else with minutes: 2026-05-01 or 2026-05-01 00:05 UTC."""
    if not value:
        return ""
    t = parse_rfc3339(str(value), what)
    return t.strftime("%Y-%m-%d") if t.time() == datetime.min.time() else t.strftime("%Y-%m-%d %H:%M UTC")


def _period(period: Any, what: str) -> str:
    if not isinstance(period, dict) or not period.get("from"):
        return ""
    return f"{_instant(period['from'], what + '.from')} – {_instant(period.get('to'), what + '.to')}"


def _text(value: Any) -> str:
    return "" if value is None else str(value)


# -- the view both formats draw -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Row:
    """One table row: a line ("line"), its trace to feature/subscription/period ("detail", one cell
    spanning the table) or one of its detailed child lines ("child")."""

    kind: str
    cells: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class View:
    title: str
    number: str
    columns: tuple[str, ...]  # COLUMNS, money columns labelled with the currency
    facts: list[tuple[str, str]]
    parties: list[tuple[str, list[str]]]
    rows: list[Row]
    totals: list[tuple[str, str]]  # the last one is the amount due (or paid)
    notes: list[str] = field(default_factory=list)
    status: tuple[str, str] = ("", "")  # (invoice status, what the banner under the number says)


# How the city, region and postal code read, one string per line, for common countries (the post's own
# conventions); a country not listed gets _DEFAULT_FORMAT. Empty parts and the separators next to them go.
_ADDRESS_FORMATS: Final[dict[str, tuple[str, ...]]] = {
    **dict.fromkeys(("US", "CA", "JP"), ("{city}, {state} {postalCode}",)),
    "AU": ("{city} {state} {postalCode}",), "NZ": ("{city} {postalCode}",), "SG": ("{city} {postalCode}",),
    "GB": ("{city}", "{state}", "{postalCode}"), "IE": ("{city}", "{state}", "{postalCode}"),
    **dict.fromkeys(("DE", "FR", "AT", "CH", "NL", "BE", "LU", "DK", "SE", "NO", "FI", "PL", "CZ", "PT"),
                    ("{postalCode} {city}",)),
    "IT": ("{postalCode} {city} {state}",), "ES": ("{postalCode} {city}", "{state}"),
    "MX": ("{postalCode} {city}, {state}",), "BR": ("{city} - {state}", "{postalCode}"),
    "IN": ("{city} {postalCode}", "{state}"),
}
_DEFAULT_FORMAT: Final = ("{postalCode} {city}", "{state}")
_COUNTRY_NAMES: Final = {
    "US": "United States", "CA": "Canada", "JP": "Japan", "AU": "Australia", "NZ": "New Zealand",
    "SG": "Singapore", "GB": "United Kingdom", "IE": "Ireland", "DE": "Germany", "FR": "France", "AT": "Austria",
    "CH": "Switzerland", "NL": "Netherlands", "BE": "Belgium", "LU": "Luxembourg", "DK": "Denmark",
    "SE": "Sweden", "NO": "Norway", "FI": "Finland", "PL": "Poland", "CZ": "Czechia", "PT": "Portugal",
    "IT": "Italy", "ES": "Spain", "MX": "Mexico", "BR": "Brazil", "IN": "India",
}
_FIELD = re.compile(r"\{(\w+)\}")


def _address_lines(address: Any) -> list[str]:
    """line1, line2, then city / region / postal code as the country writes them, then the country's name."""
    if not isinstance(address, dict):
        return []
    country = _text(address.get("country")).strip().upper()
    out = [_text(address.get(k)) for k in ("line1", "line2")]
    for template in _ADDRESS_FORMATS.get(country, _DEFAULT_FORMAT):
        parts = _FIELD.split(template)  # literal, field, literal, field, ..., literal
        line = ""
        for i in range(1, len(parts), 2):  # a field's text with the separator before it, if a field came before
            value = " ".join(_text(address.get(parts[i])).split())
            if value:
                line += (parts[i - 1] if line else "") + value
        out.append(line)
    out.append(_COUNTRY_NAMES.get(country, country))
    if address.get("phoneNumber"):
        out.append(f"Phone: {address['phoneNumber']}")
    return [line for line in out if line]


def _party(party: Any) -> list[str]:
    """Name, addresses (a customer's billingAddress or a party's addresses), tax id, key and e-mail."""
    if not isinstance(party, dict):
        return []
    lines = [_text(party.get("name")) or _text(party.get("key")) or _text(party.get("id"))]
    addresses = [party["billingAddress"]] if party.get("billingAddress") else list(party.get("addresses") or [])
    for address in addresses:
        lines += _address_lines(address)
    tax_id = party.get("taxId")
    if isinstance(tax_id, dict) and tax_id.get("code"):
        lines.append(f"Tax ID: {tax_id['code']}")
    if party.get("primaryEmail"):
        lines.append(_text(party["primaryEmail"]))
    if party.get("key") and party.get("key") != party.get("name"):
        lines.append(f"Customer key: {party['key']}")
    return [line for line in lines if line]


def _total(totals: dict[str, Any], key: str, cur: Currency, where: str, *, required: bool = False) -> str:
    """One figure of an `InvoiceTotals`: amount and total must be there; the others default to 0."""
    value = totals.get(key)
    return money(value if value is not None or required else 0, cur, f"{where}.{key}")


def _trace(line: dict[str, Any], cur: Currency, where: str) -> str:
    """What a reader needs to trace the line back: feature (meter), period, line-level credits, taxes and
    discount reasons. No internal ids (line, subscription): those stay in the API."""
    parts = []
    if line.get("featureKey"):
        parts.append(f"Feature: {line['featureKey']}")
    period = _period(line.get("period"), f"{where}.period")
    if period:
        parts.append(f"Period: {period}")
    totals = line.get("totals") or {}
    for key, label in (("chargesTotal", "Charges"), ("creditsTotal", "Credits"), ("taxesTotal", "Taxes")):
        if totals.get(key) is not None and _decimal(totals[key], f"{where}.totals.{key}") != 0:
            parts.append(f"{label}: {_total(totals, key, cur, f'{where}.totals')}")
    for kind in ("amount", "usage"):
        for d in (line.get("discounts") or {}).get(kind) or []:
            reason = _text(d.get("description") or d.get("reason"))
            if kind == "amount" and d.get("amount") is not None:
                parts.append(f"Discount {reason}: {money(d['amount'], cur, f'{where}.discounts')}")
            elif d.get("quantity") is not None:
                parts.append(f"Usage discount {reason}: {quantity(d['quantity'])} units")
    return " · ".join(parts)


def _row(kind: str, name: str, item: dict[str, Any], cur: Currency, where: str) -> Row:
    """A line or a child line: name, quantity, unit price (when it has one), amount, discount, total."""
    unit, totals = item.get("perUnitAmount"), item.get("totals") or {}
    return Row(kind, (name, quantity(item.get("quantity"), f"{where}.quantity"),
                      "" if unit is None else money(unit, cur, f"{where}.perUnitAmount"),
                      _total(totals, "amount", cur, f"{where}.totals", required=True),
                      _total(totals, "discountsTotal", cur, f"{where}.totals"),
                      _total(totals, "total", cur, f"{where}.totals", required=True)))


def _rows(lines: Iterable[dict[str, Any]], cur: Currency) -> list[Row]:
    rows: list[Row] = []
    for i, line in enumerate(lines):
        where = f"lines[{i}]"
        rows.append(_row("line", _text(line.get("name")), line, cur, where))
        trace = _trace(line, cur, where)
        if trace:
            rows.append(Row("detail", (trace,)))
        for j, child in enumerate(line.get("children") or []):
            commitment = " (minimum commitment)" if child.get("category") == "commitment" else ""
            rows.append(_row("child", _text(child.get("name")) + commitment, child, cur, f"{where}.children[{j}]"))
    return rows


def _deduction(value: Any, cur: Currency, what: str) -> str:
    """Discounts and credits reduce the total: shown with a minus sign (0.00 when there are none)."""
    return money(-_decimal(value if value is not None else 0, what), cur, what)


# What a customer reads for each invoice status (OpenMeter's lifecycle; "draft.*" statuses by their first part).
STATUS_LABELS: Final = {"gathering": "Draft", "draft": "Draft", "issuing": "Issuing", "issued": "Due",
                        "payment_processing": "Payment processing", "overdue": "Overdue", "paid": "Paid",
                        "uncollectible": "Uncollectible", "voided": "Void"}
_OWED: Final = ("issued", "payment_processing", "overdue")  # statuses in which the total is still to be paid


def _view(invoice: dict[str, Any]) -> View:
    cur = Currency.of(invoice.get("currency"), field="currency")
    credit_note = invoice.get("type") == "credit_note"
    number = _text(invoice.get("number")) or _text(invoice.get("id"))
    status = _text(invoice.get("status")).split(".")[0]
    label = STATUS_LABELS.get(status, status.replace("_", " ").capitalize())
    due = _instant(invoice.get("dueAt"), "dueAt")
    facts = [("Invoice number", number), ("Issued", _instant(invoice.get("issuedAt"), "issuedAt")),
             ("Due", due if status in _OWED or not status else ""),
             ("Billing period", _period(invoice.get("period"), "period")), ("Currency", cur.code),
             ("Status", label)]
    summary = _summary(invoice.get("totals") or {}, cur, status, credit_note)
    banner, notes = _banner_and_notes(invoice, status, label, due, credit_note)
    columns = tuple(c + (f" ({cur.code})" if i >= 2 else "") for i, c in enumerate(COLUMNS))
    return View(title="Credit note" if credit_note else "Invoice", number=number, columns=columns,
                facts=[(k, v) for k, v in facts if v],
                parties=[("From", _party(invoice.get("supplier"))), ("Bill to", _party(invoice.get("customer")))],
                rows=_rows(invoice.get("lines") or [], cur), totals=summary, notes=notes, status=(status, banner))


def _summary(totals: dict[str, Any], cur: Currency, status: str, credit_note: bool) -> list[tuple[str, str]]:
    """The totals block: subtotal, charges (when not 0), discounts, credits, taxes and the last line, named for
    what it asks of the reader."""
    summary = [("Subtotal", _total(totals, "amount", cur, "totals", required=True))]
    if totals.get("chargesTotal") is not None and _decimal(totals["chargesTotal"], "totals.chargesTotal") != 0:
        summary.append(("Charges", _total(totals, "chargesTotal", cur, "totals")))
    if credit_note:
        last = "Total credited"
    elif status == "paid":
        last = "Total paid"
    elif status in _OWED or not status:
        last = "Total due"
    else:  # draft, void, uncollectible: nothing is asked for
        last = "Total"
    return summary + [("Discounts", _deduction(totals.get("discountsTotal"), cur, "totals.discountsTotal")),
                      ("Credits applied", _deduction(totals.get("creditsTotal"), cur, "totals.creditsTotal")),
                      ("Taxes", _total(totals, "taxesTotal", cur, "totals")),
                      (f"{last} ({cur.code})", _total(totals, "total", cur, "totals", required=True))]


def _banner_and_notes(invoice: dict[str, Any], status: str, label: str, due: str,
                      credit_note: bool) -> tuple[str, list[str]]:
    """The status banner (when payment is due, by when) and the notes under the totals."""
    banner = label
    notes = []
    if status == "issued" and due:
        banner = f"Payment due by {due}"
    elif status == "overdue":
        banner = f"Overdue: payment was due {due}" if due else "Overdue"
        notes.append(f"This invoice is overdue: payment was due {due}. Please pay it now." if due else
                     "This invoice is overdue. Please pay it now.")
    elif status == "paid" and not credit_note:
        notes.append("Paid in full: nothing is due. Thank you.")
    if status in ("voided", "uncollectible", "draft", "gathering"):
        notes.append(f"This invoice is {_text(invoice.get('status')).replace('_', ' ')}: no payment is due for it.")
    if invoice.get("description"):
        notes.append(_text(invoice["description"]))
    return banner, notes


# -- HTML -----------------------------------------------------------------------------------------------------
_CSS = """
@page { size: A4; margin: 14mm; }
* { box-sizing: border-box; }
body { font-family: "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; color: #1d2330; font-size: 10pt;
       margin: 0 auto; max-width: 190mm; padding: 8mm 0; }
h1 { font-size: 20pt; margin: 0 0 2mm; }
.number { color: #5b6477; font-size: 12pt; margin-bottom: 6mm; }
.parties { display: flex; gap: 10mm; margin-bottom: 6mm; }
.party { flex: 1; }
.party h2, .facts th { color: #5b6477; font-size: 8pt; font-weight: normal; text-transform: uppercase;
                       letter-spacing: .05em; text-align: left; }
.party h2 { margin: 0 0 1mm; }
.party p { margin: 0; line-height: 1.4; }
.party p:first-of-type { font-weight: bold; }
table { border-collapse: collapse; width: 100%; }
.facts { margin-bottom: 6mm; width: auto; }
.facts th { padding: 0 6mm 1mm 0; }
.facts td { padding: 0 0 1mm; }
.lines th { background: #eef1f6; font-size: 8.5pt; text-align: right; padding: 2mm; }
.lines th:first-child { text-align: left; }
.lines td { padding: 1.5mm 2mm; text-align: right; vertical-align: top; }
.lines td:first-child { text-align: left; }
.lines tbody { border-bottom: 1px solid #d5dae3; page-break-inside: avoid; }
tr.line td { font-weight: bold; padding-top: 2.5mm; }
tr.detail td { color: #5b6477; font-size: 8pt; padding-top: 0; word-break: break-all; }
tr.child td { color: #3a4254; font-size: 9pt; }
tr.child td:first-child { padding-left: 7mm; }
.totals { margin: 5mm 0 0 auto; width: 85mm; }
.totals th { text-align: left; font-weight: normal; padding: 1mm 2mm; }
.totals td { text-align: right; padding: 1mm 2mm; }
.totals tr.due th, .totals tr.due td { border-top: 2px solid #1d2330; font-weight: bold; font-size: 12pt; }
.notes { margin-top: 8mm; color: #5b6477; }
.status { display: inline-block; margin: -3mm 0 6mm; padding: 1mm 3mm; border: 1.5px solid #5b6477;
          border-radius: 2mm; font-weight: bold; color: #5b6477; }
.status-paid { color: #2b8a3e; border-color: #2b8a3e; }
.status-overdue { color: #c92a2a; border-color: #c92a2a; }
.status-issued, .status-payment_processing { color: #1d2330; border-color: #1d2330; }
"""


def render_html(invoice: dict[str, Any]) -> str:
    """A complete, self-contained, printable HTML page for the invoice; every value is escaped."""
    v = _view(invoice)
    e: Callable[[str], str] = html.escape
    out = ['<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
           f"<title>{e(v.title)} {e(v.number)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n",
           f'<h1>{e(v.title)}</h1>\n<div class="number">{e(v.number)}</div>\n']
    if v.status[1]:
        out.append(f'<div class="status status-{e(_key_part(v.status[0] or "unknown", "status"))}">'
                   f"{e(v.status[1])}</div>\n")
    out.append('<div class="parties">\n')
    for label, lines in v.parties:
        out.append(f'<div class="party"><h2>{e(label)}</h2>' + "".join(f"<p>{e(s)}</p>" for s in lines) + "</div>\n")
    out.append('</div>\n<table class="facts">\n')
    out += [f"<tr><th>{e(k)}</th><td>{e(val)}</td></tr>\n" for k, val in v.facts]
    out.append('</table>\n<table class="lines">\n<thead><tr>')
    out += [f"<th>{e(c)}</th>" for c in v.columns]
    out.append("</tr></thead>\n")
    for row in v.rows:
        if row.kind == "line":
            out.append("<tbody>\n")
        if row.kind == "detail":
            out.append(f'<tr class="detail"><td colspan="{len(COLUMNS)}">{e(row.cells[0])}</td></tr>\n')
        else:
            out.append(f'<tr class="{row.kind}">' + "".join(f"<td>{e(c)}</td>" for c in row.cells) + "</tr>\n")
    if v.rows:
        out.append("</tbody>\n")
    out.append('</table>\n<table class="totals">\n')
    for i, (k, val) in enumerate(v.totals):
        due = ' class="due"' if i == len(v.totals) - 1 else ""
        out.append(f"<tr{due}><th>{e(k)}</th><td>{e(val)}</td></tr>\n")
    out.append("</table>\n")
    out += [f'<p class="notes">{e(n)}</p>\n' for n in v.notes]
    out.append("</body>\n</html>\n")
    return "".join(out)


# -- PDF ------------------------------------------------------------------------------------------------------
def printable(text: str, has_glyph: Callable[[int], bool]) -> str:
    """`text` restricted to what the font can draw: tabs and line breaks become spaces, other control and
    format characters go, a missing character becomes its NFKC compatibility form when the font has that
    (fullwidth Ａ -> A), else MISSING_GLYPH; missing combining marks and emoji modifiers are dropped."""
    out = []
    for ch in unicodedata.normalize("NFC", text):
        category = unicodedata.category(ch)
        if ch in "\r\n\t" or category in ("Zl", "Zp"):
            out.append(" ")
        elif category in ("Cc", "Cf", "Cs", "Co", "Cn"):
            continue  # controls, zero-width joiners, surrogates, private use, unassigned
        elif has_glyph(ord(ch)):
            out.append(ch)
        elif category in ("Mn", "Me", "Sk"):
            continue  # a combining mark, variation selector or skin-tone modifier: the base character stays
        else:
            compat = unicodedata.normalize("NFKC", ch)
            out.append(compat if compat != ch and all(has_glyph(ord(c)) for c in compat) else MISSING_GLYPH)
    return "".join(out)


def _issued(invoice: dict[str, Any]) -> datetime:
    for key in ("issuedAt", "createdAt"):
        if invoice.get(key):
            return parse_rfc3339(str(invoice[key]), key)
    return _EPOCH


_GREY: Final = (91, 100, 119)
_INK: Final = (29, 35, 48)
_LIGHT: Final = (238, 241, 246)
Printable = Callable[[str], str]  # text restricted to what the embedded font can draw


def render_pdf(invoice: dict[str, Any]) -> bytes:
    """The same content as `render_html`, as an A4 PDF with DejaVu Sans embedded (subset). Deterministic:
    the same invoice gives the same bytes (creation date = issue time)."""
    from fpdf import FPDF
    from fpdf.fonts import TTFFont

    v = _view(invoice)

    class _Document(FPDF):
        def footer(self) -> None:
            self.set_y(-12)
            self.set_font("dejavu", size=7.5)
            self.set_text_color(*_GREY)
            self.cell(0, 5, f"{p(v.title)} {p(v.number)} · page {self.page_no()}/{{nb}}", align="R")

    pdf = _Document(format="A4")
    pdf.add_font("dejavu", fname=FONT_PATH)  # one face only (size budget): emphasis is drawn as a stroke
    font = pdf.fonts["dejavu"]
    assert isinstance(font, TTFFont)

    def p(text: str) -> str:
        return printable(text, font.cmap.__contains__)

    pdf.set_creation_date(_issued(invoice))
    pdf.set_title(f"{v.title} {v.number}")
    pdf.set_author(v.parties[0][1][0] if v.parties[0][1] else "Billow")
    pdf.set_creator("Billow")
    pdf.set_lang("en")
    pdf.set_margins(14, 14, 14)
    pdf.set_auto_page_break(True, margin=16)
    pdf.add_page()
    pdf.set_text_color(*_INK)
    _pdf_heading(pdf, v, p)
    _pdf_parties(pdf, v, p)
    _pdf_facts(pdf, v, p)
    _pdf_lines(pdf, v, p)
    _pdf_totals(pdf, v, p)
    _pdf_notes(pdf, v, p)
    return bytes(pdf.output())


def _pdf_heading(pdf: FPDF, v: View, p: Printable) -> None:
    """Title (stroked for emphasis), number and the status banner in its colour."""
    with pdf.local_context(text_mode="FILL_STROKE", line_width=0.3, draw_color=_INK):
        pdf.set_font("dejavu", size=20)
        pdf.cell(0, 10, p(v.title), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("dejavu", size=12)
    pdf.set_text_color(*_GREY)
    pdf.cell(0, 7, p(v.number), new_x="LMARGIN", new_y="NEXT")
    if v.status[1]:
        colour = {"paid": (43, 138, 62), "overdue": (201, 42, 42)}.get(v.status[0], _INK)
        with pdf.local_context(text_mode="FILL_STROKE", line_width=0.2, draw_color=colour):
            pdf.set_font("dejavu", size=11)
            pdf.set_text_color(*colour)
            pdf.cell(0, 7, p(v.status[1]), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)


def _pdf_parties(pdf: FPDF, v: View, p: Printable) -> None:
    """Supplier and customer side by side; the page continues below the taller of the two."""
    top, half = pdf.get_y(), (pdf.epw - 8) / 2
    bottom = top
    for i, (label, lines) in enumerate(v.parties):
        pdf.set_xy(pdf.l_margin + i * (half + 8), top)
        pdf.set_font("dejavu", size=7.5)
        pdf.set_text_color(*_GREY)
        pdf.cell(half, 5, label.upper(), new_x="LEFT", new_y="NEXT")
        pdf.set_text_color(*_INK)
        for j, line in enumerate(lines):
            pdf.set_font("dejavu", size=10 if j == 0 else 9)
            pdf.multi_cell(half, 4.6, p(line), new_x="LEFT", new_y="NEXT")
        bottom = max(bottom, pdf.get_y())
    pdf.set_xy(pdf.l_margin, bottom + 4)


def _pdf_facts(pdf: FPDF, v: View, p: Printable) -> None:
    for label, value in v.facts:
        pdf.set_font("dejavu", size=8)
        pdf.set_text_color(*_GREY)
        pdf.cell(32, 5, label.upper())
        pdf.set_font("dejavu", size=9.5)
        pdf.set_text_color(*_INK)
        pdf.multi_cell(0, 5, p(value), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)


def _pdf_lines(pdf: FPDF, v: View, p: Printable) -> None:
    """The lines table: each line, its trace (detail) and its child lines, indented."""
    from fpdf.enums import TableBordersLayout
    from fpdf.fonts import FontFace

    pdf.set_font("dejavu", size=9)
    headings = FontFace(size_pt=8, color=_INK, fill_color=_LIGHT)
    styles = {"line": FontFace(size_pt=9, color=_INK), "child": FontFace(size_pt=8.5, color=(58, 66, 84)),
              "detail": FontFace(size_pt=7, color=_GREY)}
    with pdf.table(col_widths=(62, 22, 24, 24, 24, 26), text_align=("LEFT", *["RIGHT"] * 5),
                   borders_layout=TableBordersLayout.HORIZONTAL_LINES, headings_style=headings,
                   line_height=4.6, padding=(1.2, 1.5), v_align="TOP") as table:
        heading = table.row()
        for i, c in enumerate(v.columns):
            heading.cell(c, align="LEFT" if i == 0 else "RIGHT")
        for r in v.rows:
            row = table.row()
            if r.kind == "detail":
                row.cell(p(r.cells[0]), style=styles["detail"], colspan=len(COLUMNS), align="LEFT")
                continue
            for i, c in enumerate(r.cells):
                row.cell(("    " if r.kind == "child" and i == 0 else "") + p(c), style=styles[r.kind])


def _pdf_totals(pdf: FPDF, v: View, p: Printable) -> None:
    """The totals block on the right; the last line (what is due, paid or credited) ruled and stroked."""
    pdf.ln(4)
    for i, (label, value) in enumerate(v.totals):
        due = i == len(v.totals) - 1
        pdf.set_x(pdf.l_margin + pdf.epw - 90)
        pdf.set_font("dejavu", size=12 if due else 9.5)
        if due:
            pdf.line(pdf.get_x(), pdf.get_y(), pdf.get_x() + 90, pdf.get_y())
        with pdf.local_context(text_mode="FILL_STROKE" if due else "FILL", line_width=0.25, draw_color=_INK):
            pdf.cell(48, 7 if due else 5.5, p(label))
            pdf.cell(42, 7 if due else 5.5, p(value), align="R", new_x="LMARGIN", new_y="NEXT")


def _pdf_notes(pdf: FPDF, v: View, p: Printable) -> None:
    if v.notes:
        pdf.ln(6)
        pdf.set_font("dejavu", size=9)
        pdf.set_text_color(*_GREY)
        for note in v.notes:
            pdf.multi_cell(0, 5, p(note), new_x="LMARGIN", new_y="NEXT")


# -- storage --------------------------------------------------------------------------------------------------
def _key_part(value: Any, what: str) -> str:
    """A safe object-key / file-name segment: letters, digits, '.', '_' and '-' only, never '.' or '..'."""
    text = _UNSAFE_KEY_CHARS.sub("_", _text(value))
    if not text.strip("."):
        raise ValueError(f"{what}: {value!r} cannot name a document")
    return text


def document_keys(namespace: str, invoice: dict[str, Any]) -> tuple[str, str]:
    """(html_key, pdf_key): invoices/<namespace>/<invoice id>/<number>.html and .pdf."""
    base = (f"invoices/{_key_part(namespace, 'namespace')}/{_key_part(invoice.get('id'), 'id')}/"
            f"{_key_part(invoice.get('number') or invoice.get('id'), 'number')}")
    return f"{base}.html", f"{base}.pdf"


def store_documents(namespace: str, invoice: dict[str, Any], store: DocumentStore) -> dict[str, str]:
    """Render the invoice to HTML and PDF and store both; returns {"html": url, "pdf": url}. Idempotent:
    the same invoice gives the same keys and the same bytes, so a retried issue overwrites with equal data."""
    html_key, pdf_key = document_keys(namespace, invoice)
    store.put(html_key, render_html(invoice).encode("utf-8"), HTML_TYPE)
    store.put(pdf_key, render_pdf(invoice), PDF_TYPE)
    return {"html": store.url(html_key), "pdf": store.url(pdf_key)}
