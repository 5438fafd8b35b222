"""The view of an invoice its documents draw (billow.services.documents stores them, an adapter behind
ports.DocumentRenderer draws them: billow.adapters.rendering). Pure: no I/O, no clock, no rendering library.

The invoice is the JSON document of the billing API (OpenMeter's `Invoice`: supplier and customer parties,
lines with their detailed child lines, `InvoiceTotals`), amounts as decimal strings already rounded to the
currency's minor unit. Both formats are drawn from one view (`invoice_view`): the same facts, rows and totals,
so the HTML and the PDF cannot disagree.

* Amounts are shown exactly as the invoice holds them, never re-rounded: padded to the currency's minor
  unit (JPY 0, USD 2, BHD 3 decimal places) and never cut, so a unit price of 0.005 USD stays 0.005. No
  thousands separators: a figure on the document is the same string as in the API response.
* The view's creation date is the invoice's issue time, not the clock, so re-rendering an invoice gives the
  same bytes and re-storing it is idempotent.
* A paid invoice whose total is below zero (a correction that lowered an invoiced period) asks for nothing and
  owes its customer money: its notes say where that went (`OwedBack`, which the caller finds: the prepaid credit
  Billow added, or the invoicing app's customer balance), never "Paid in full".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from billow.domain.money import Currency, check_amount
from billow.timeutil import parse_rfc3339

_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)  # creation date of an invoice without any timestamp
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]")
COLUMNS: Final = ("Description", "Quantity", "Unit price", "Amount", "Discount", "Total")


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
    created: datetime = _EPOCH  # the PDF's creation date: the invoice's issue time, never the clock


@dataclass(frozen=True, slots=True)
class OwedBack:
    """Where the money a negative invoice owes its customer went (billow.services.documents.owed_back finds it):
    `amount` (exact, a decimal string or Decimal) added to the customer's prepaid credit balance in Billow, or, with
    `kept_by` (the invoicing app's name: Stripe), held as the customer's balance with that app."""

    amount: Any
    kept_by: str | None = None


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


def invoice_view(invoice: dict[str, Any], owed_back: OwedBack | None = None) -> View:
    """What both documents show of the invoice: facts, parties, rows, totals, notes, status banner and the
    creation date, every amount already formatted (`money`, `quantity`). `owed_back`: where what a paid negative
    invoice owes its customer went (see OwedBack)."""
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
    banner, notes = _banner_and_notes(invoice, status, label, due, credit_note, cur, owed_back)
    columns = tuple(c + (f" ({cur.code})" if i >= 2 else "") for i, c in enumerate(COLUMNS))
    return View(title="Credit note" if credit_note else "Invoice", number=number, columns=columns,
                facts=[(k, v) for k, v in facts if v],
                parties=[("From", _party(invoice.get("supplier"))), ("Bill to", _party(invoice.get("customer")))],
                rows=_rows(invoice.get("lines") or [], cur), totals=summary, notes=notes, status=(status, banner),
                created=_issued(invoice))


def _summary(totals: dict[str, Any], cur: Currency, status: str, credit_note: bool) -> list[tuple[str, str]]:
    """The totals block: subtotal, charges (when not 0), discounts, credits, taxes and the last line, named for
    what it asks of the reader."""
    summary = [("Subtotal", _total(totals, "amount", cur, "totals", required=True))]
    if totals.get("chargesTotal") is not None and _decimal(totals["chargesTotal"], "totals.chargesTotal") != 0:
        summary.append(("Charges", _total(totals, "chargesTotal", cur, "totals")))
    if credit_note:
        last = "Total credited"
    elif _negative(totals):  # owed to the customer, not paid by it (the notes say where it went)
        last = "Total"
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


def _negative(totals: dict[str, Any]) -> bool:
    return totals.get("total") is not None and _decimal(totals["total"], "totals.total") < 0


def _owed_back_note(totals: dict[str, Any], cur: Currency, owed_back: OwedBack | None) -> str:
    """A paid negative invoice: nothing is due, and where what it owes the customer went, to the minor unit."""
    if owed_back is None:  # nobody said where it went: claim nothing
        return f"Nothing is due: this invoice's total is {money(totals['total'], cur, 'totals.total')} {cur.code}."
    amount = f"{money(owed_back.amount, cur, 'owed back')} {cur.code}"
    if owed_back.kept_by:
        return (f"Nothing is due. The {amount} this invoice owes you is held as your customer balance with "
                f"{owed_back.kept_by}, which applies it to your next invoice there.")
    return (f"Nothing is due. The {amount} this invoice owes you has been added to your prepaid credit balance, "
            "which pays your next invoices.")


def _banner_and_notes(invoice: dict[str, Any], status: str, label: str, due: str, credit_note: bool,
                      cur: Currency, owed_back: OwedBack | None) -> tuple[str, list[str]]:
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
        totals = invoice.get("totals") or {}
        notes.append(_owed_back_note(totals, cur, owed_back) if _negative(totals) else
                     "Paid in full: nothing is due. Thank you.")
    if status in ("voided", "uncollectible", "draft", "gathering"):
        notes.append(f"This invoice is {_text(invoice.get('status')).replace('_', ' ')}: no payment is due for it.")
    if invoice.get("description"):
        notes.append(_text(invoice["description"]))
    return banner, notes



def _issued(invoice: dict[str, Any]) -> datetime:
    for key in ("issuedAt", "createdAt"):
        if invoice.get(key):
            return parse_rfc3339(str(invoice[key]), key)
    return _EPOCH



def key_part(value: Any, what: str) -> str:
    """A safe object-key / file-name segment: letters, digits, '.', '_' and '-' only, never '.' or '..'."""
    text = _UNSAFE_KEY_CHARS.sub("_", _text(value))
    if not text.strip("."):
        raise ValueError(f"{what}: {value!r} cannot name a document")
    return text
