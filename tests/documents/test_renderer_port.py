"""Rendering is an adapter (issue 19 item 3): the service builds the invoice's view (billow.domain.documents,
pure) and draws it through ports.DocumentRenderer; bootstrap picks the fpdf2 renderer
(billow.adapters.rendering.InvoiceRenderer), whose bytes are those of render_html / render_pdf."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from billow.adapters.documents import LocalDocumentStore
from billow.adapters.rendering import InvoiceRenderer, render_html, render_pdf
from billow.bootstrap import Settings, build
from billow.domain.documents import View, invoice_view
from billow.services.documents import document_keys, store_documents
from tests.documents.sample import invoice


class Recording:
    """A DocumentRenderer that keeps the views it was asked to draw."""

    def __init__(self) -> None:
        self.views: list[tuple[str, View]] = []

    def html(self, view: View) -> bytes:
        self.views.append(("html", view))
        return b"<p>html</p>"

    def pdf(self, view: View) -> bytes:
        self.views.append(("pdf", view))
        return b"%PDF-fake"


def test_the_service_draws_the_invoice_view_through_the_renderer_port(tmp_path: Path) -> None:
    store, renderer = LocalDocumentStore(tmp_path / "documents"), Recording()
    store_documents("ns1", invoice(), store, renderer)
    html_key, pdf_key = document_keys("ns1", invoice())
    assert (store.get(html_key), store.get(pdf_key)) == (b"<p>html</p>", b"%PDF-fake")
    view = invoice_view(invoice())
    assert renderer.views == [("html", view), ("pdf", view)]
    assert view.created == datetime(2026, 5, 1, 0, 5, tzinfo=UTC)  # issuedAt: the PDF's creation date


def test_the_fpdf_renderer_draws_the_same_bytes_as_before(tmp_path: Path) -> None:
    inv: dict[str, Any] = invoice(status="paid")
    view = invoice_view(inv)
    assert InvoiceRenderer().html(view) == render_html(inv).encode("utf-8")
    assert InvoiceRenderer().pdf(view) == render_pdf(inv)


def test_bootstrap_picks_the_renderer_for_the_billing_apps(tmp_path: Path) -> None:
    c = build(Settings.parse(dict(usage_store="memory", data_dir=str(tmp_path), namespace="ns1")))
    try:
        assert isinstance(c.billing_apps().renderer, InvoiceRenderer)
    finally:
        c.close()


def test_importing_the_renderer_or_the_service_does_not_import_fpdf() -> None:
    # fpdf2 costs seconds of import: the API Lambda's bootstrap reaches both modules and must start fast.
    code = ("import sys, billow.adapters.rendering, billow.services.documents, billow.ports; "
            "assert 'fpdf' not in sys.modules, 'fpdf imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "shared")})
