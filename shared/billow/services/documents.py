"""Invoice documents: each issued invoice drawn as a printable HTML page and a PDF, stored where the
customer can fetch them (S3 in AWS, data_dir/documents when embedded; see billow.adapters.documents).

The use-case only: the view both documents show is built by the domain (billow.domain.documents.invoice_view:
amounts exact, padded to the currency's minor unit), drawn by the renderer bootstrap chose (ports.DocumentRenderer:
billow.adapters.rendering, fpdf2 for the PDF) and written to the document store. This module imports no rendering
library: the API Lambda imports it and must start fast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Protocol

from billow.domain.documents import OwedBack, invoice_view, key_part
from billow.domain.invoices import Invoice, owed_back_entry_id
from billow.ports import BillingStore, DocumentRenderer, InvoicingApp

HTML_TYPE: Final = "text/html; charset=utf-8"
PDF_TYPE: Final = "application/pdf"


class DocumentStore(Protocol):
    """Where rendered documents go: S3 (billow.adapters.documents.S3DocumentStore) or local files."""

    def put(self, key: str, body: bytes, content_type: str) -> None: ...

    def url(self, key: str) -> str: ...

    def get(self, key: str) -> bytes: ...


# -- storage --------------------------------------------------------------------------------------------------
def document_keys(namespace: str, invoice: dict[str, Any]) -> tuple[str, str]:
    """(html_key, pdf_key): invoices/<namespace>/<invoice id>/<number>.html and .pdf."""
    base = (f"invoices/{key_part(namespace, 'namespace')}/{key_part(invoice.get('id'), 'id')}/"
            f"{key_part(invoice.get('number') or invoice.get('id'), 'number')}")
    return f"{base}.html", f"{base}.pdf"


# The name a customer knows an invoicing app that keeps a customer balance by (its `type`).
_APP_NAMES: Final = {"stripe": "Stripe"}


def owed_back(namespace: str, invoice: dict[str, Any], *, billing: BillingStore,
              invoicing: Callable[[str], InvoicingApp]) -> OwedBack | None:
    """Where what a paid negative invoice owes its customer went, as the records say: the prepaid credit entry it
    gave back (its id derived from the invoice's, services.invoices._issued wrote it with the move to paid) and its
    exact amount; else, when the invoice's app keeps it (InvoicingApp.keeps_customer_credit: Stripe), that app.
    None for any other invoice (one ledger read, only for a paid negative invoice)."""
    inv = Invoice.from_json(invoice)
    if inv.status != "paid" or inv.due >= 0:
        return None
    entry_id = owed_back_entry_id(inv.id)
    for entry in billing.credit_entries(namespace, inv.customer_id, inv.currency):
        if entry["id"] == entry_id:
            return OwedBack(entry["amount"])
    if invoicing(inv.invoicing_app_ref).keeps_customer_credit:
        return OwedBack(inv.owed_back, kept_by=_APP_NAMES.get(inv.invoicing_app, inv.invoicing_app))
    return None


def store_documents(namespace: str, invoice: dict[str, Any], store: DocumentStore,
                    renderer: DocumentRenderer, *, owed: OwedBack | None = None) -> dict[str, str]:
    """Draw the invoice's view as HTML and PDF (the renderer bootstrap chose) and store both; returns
    {"html": url, "pdf": url}. Idempotent: the same invoice gives the same keys and the same bytes, so a retried
    issue overwrites with equal data. `owed`: where a paid negative invoice's money went (`owed_back`)."""
    html_key, pdf_key = document_keys(namespace, invoice)
    view = invoice_view(invoice, owed)
    store.put(html_key, renderer.html(view), HTML_TYPE)
    store.put(pdf_key, renderer.pdf(view), PDF_TYPE)
    return {"html": store.url(html_key), "pdf": store.url(pdf_key)}
