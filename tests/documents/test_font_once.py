"""The PDF font (DejaVu Sans) is parsed once per process, not once per invoice (issue 17 item 6: ~11 documents/s
when fpdf2 re-read the font for each): every document still embeds its own subset, deterministically."""

from __future__ import annotations

import io
from typing import Any

import pytest
from pypdf import PdfReader

from billow.adapters.rendering import render_pdf
from tests.documents.sample import invoice


def _text(pdf: bytes) -> str:
    return "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)


def test_the_font_is_parsed_once_for_many_documents(monkeypatch: pytest.MonkeyPatch) -> None:
    from fpdf import fonts

    render_pdf(invoice())  # whatever this process parsed before
    parsed: list[Any] = []
    real_init = fonts.TTFFont.__init__

    def counting_init(self: Any, *args: Any, **kwargs: Any) -> None:
        parsed.append(args)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(fonts.TTFFont, "__init__", counting_init)
    for n in range(3):
        render_pdf(invoice(number=f"ACME-{n}"))
    assert parsed == []


def test_each_document_embeds_its_own_subset_whatever_came_before() -> None:
    greek = invoice(customer={"id": "c", "key": "k", "name": "Ωμέγα Ж", "billingAddress": {"country": "GR"}})
    plain = invoice()
    first = render_pdf(plain)
    render_pdf(greek)  # more glyphs: they must not leak into the next document's subset
    assert render_pdf(plain) == first
    assert "Ωμέγα Ж" in _text(render_pdf(greek)) and "Ωμέγα" not in _text(first)
    assert "ACME-0001" in _text(first)


def test_the_full_font_is_cut_once_per_glyph_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """fpdf2 cut each document's subset out of the whole font (~6,000 glyphs: most of a PDF's CPU time, issue 17
    item 6); the cut of the whole font is kept per set of glyphs, and a document's own subset is cut from it, so
    documents with the glyphs of an earlier one do not cut the whole font again. Bytes stay deterministic."""
    from fontTools import subset

    first = render_pdf(invoice(number="ACME-7"))
    cut: list[int] = []
    real = subset.Subsetter.subset

    def counting(self: Any, font: Any) -> None:
        cut.append(font["maxp"].numGlyphs)
        real(self, font)

    monkeypatch.setattr(subset.Subsetter, "subset", counting)
    again = [render_pdf(invoice(number="ACME-7")) for _ in range(3)]
    assert cut and max(cut) < 1000, cut  # only small fonts cut: no pass over the whole font
    assert again == [first] * 3
