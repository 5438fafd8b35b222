"""Invoice documents drawn (ports.DocumentRenderer): the view of an invoice (billow.domain.documents) as a
printable HTML page and as a PDF made with fpdf2. Bootstrap hands `InvoiceRenderer` to the billing apps.

* Every value is HTML-escaped; the page has inline CSS only (no external assets) and prints on A4.
* The PDF embeds DejaVu Sans (billow/fonts, ~740 KB, Bitstream Vera licence) so it looks the same on a
  laptop and in Lambda, which has no system fonts. DejaVu covers Latin, Greek, Cyrillic, Armenian,
  Georgian, Hebrew and many symbols and emoji, but not CJK: characters the font lacks are replaced (after
  NFKC compatibility mapping, e.g. fullwidth ＡＢＣ -> ABC) by "?" in the PDF, which never fails on them.
  The HTML keeps every character. CJK fonts are 5-20 MB: too big for the code asset and the cold start.
* Output is deterministic: the PDF's creation date is the view's (the invoice's issue time), not the clock.
* fpdf2 is imported inside `pdf_document` only: the API Lambda imports this module and must start fast.
"""

from __future__ import annotations

import copy
import functools
import html
import io
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from billow.domain.documents import COLUMNS, View, invoice_view, key_part

if TYPE_CHECKING:
    from fpdf import FPDF
    from fpdf.fonts import TTFFont

FONT_PATH: Final = Path(__file__).resolve().parent.parent / "fonts" / "DejaVuSans.ttf"
MISSING_GLYPH: Final = "?"


class InvoiceRenderer:
    """ports.DocumentRenderer: the HTML page (UTF-8) and the PDF of an invoice's view."""

    def html(self, view: View) -> bytes:
        return html_page(view).encode("utf-8")

    def pdf(self, view: View) -> bytes:
        return pdf_document(view)


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
    return html_page(invoice_view(invoice))


def html_page(v: View) -> str:
    """The HTML page of an invoice's view."""
    e: Callable[[str], str] = html.escape
    out = ['<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
           f"<title>{e(v.title)} {e(v.number)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n",
           f'<h1>{e(v.title)}</h1>\n<div class="number">{e(v.number)}</div>\n']
    if v.status[1]:
        out.append(f'<div class="status status-{e(key_part(v.status[0] or "unknown", "status"))}">'
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



_GREY: Final = (91, 100, 119)
_INK: Final = (29, 35, 48)
_LIGHT: Final = (238, 241, 246)
Printable = Callable[[str], str]  # text restricted to what the embedded font can draw


def render_pdf(invoice: dict[str, Any]) -> bytes:
    """The same content as `render_html`, as an A4 PDF with DejaVu Sans embedded (subset). Deterministic:
    the same invoice gives the same bytes (creation date = issue time)."""
    return pdf_document(invoice_view(invoice))


@functools.cache
def _font_template() -> tuple[TTFFont, bytes]:
    """DejaVu Sans as fpdf2 reads it (cmap, glyph widths and ids, descriptor), parsed once per process, and the
    font file's bytes."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_font("dejavu", fname=FONT_PATH)
    return pdf.fonts["dejavu"], FONT_PATH.read_bytes()  # type: ignore[return-value]


def _document_font(index: int) -> TTFFont:
    """A TTFFont for one document, as `add_font` would make it but without parsing the font again: the parsed
    tables it only reads are shared; what a document changes is its own (the glyphs it uses and their subset, the
    widths looked up, the descriptor's object number), and the subsetter cuts a font of its own, opened lazily from
    the cached bytes."""
    from fontTools import ttLib
    from fpdf.fonts import SubsetMap

    template, data = _font_template()
    font = copy.copy(template)
    font.i = index
    font.ttfont = ttLib.TTFont(io.BytesIO(data), recalcTimestamp=False, lazy=True)
    font.cw = copy.copy(template.cw)
    font.desc = copy.copy(template.desc)
    font.missing_glyphs = []
    font.biggest_size_pt = 0
    font._hbfont = None
    font.subset = SubsetMap(font)
    return font


@functools.lru_cache(maxsize=256)
def _precut(glyph_names: frozenset[str]) -> bytes:
    """The whole font cut down to these glyphs (glyph names kept), saved: fpdf2 then cuts a document's subset out
    of this small font, not out of the whole one (~6,000 glyphs, most of a PDF's CPU time). A function of the glyph
    set alone, so a document's bytes do not depend on what was drawn before (or cached). A document whose glyphs
    are all common ones (`_common_glyphs`) is cut from the precut of those."""
    from fontTools import subset, ttLib

    _, data = _font_template()
    font = ttLib.TTFont(io.BytesIO(data), recalcTimestamp=False, lazy=True)
    options = subset.Options(notdef_outline=True, recommended_glyphs=True, glyph_names=True)
    options.drop_tables += ["FFTM", "GDEF", "GPOS", "GSUB", "MATH", "hdmx", "meta"]  # fpdf2 drops them too
    subsetter = subset.Subsetter(options)
    subsetter.populate(glyphs=glyph_names)
    subsetter.subset(font)
    out = io.BytesIO()
    font.save(out)
    return out.getvalue()


@functools.cache
def _common_glyphs() -> frozenset[str]:
    """The glyphs of printable ASCII, Latin-1 and a few symbols invoices use (EUR, dashes, quotes, bullet)."""
    template, _ = _font_template()
    chars = [*range(0x20, 0x7F), *range(0xA0, 0x100), *map(ord, "€–—‘’“”•…−")]
    return frozenset({".notdef", *(template.cmap[c] for c in chars if c in template.cmap)})


def _output_producer() -> type:
    """fpdf2's OutputProducer, with the embedded font swapped for its precut (see `_precut`) just before fpdf2
    subsets it: at that point the document's glyphs are final."""
    from fontTools import ttLib
    from fpdf.output import OutputProducer

    class _Producer(OutputProducer):
        def _add_fonts(self, *args: Any, **kwargs: Any) -> Any:
            font: TTFFont = self.fpdf.fonts["dejavu"]  # type: ignore[assignment]
            glyphs = frozenset(font.subset.get_all_glyph_names())
            if glyphs <= _common_glyphs():  # most invoices: one precut for all of them
                glyphs = _common_glyphs()
            font.ttfont = ttLib.TTFont(io.BytesIO(_precut(glyphs)), recalcTimestamp=False, lazy=True)
            return super()._add_fonts(*args, **kwargs)

    return _Producer


def pdf_document(v: View) -> bytes:
    """The PDF of an invoice's view."""
    from fpdf import FPDF

    class _Document(FPDF):
        def footer(self) -> None:
            self.set_y(-12)
            self.set_font("dejavu", size=7.5)
            self.set_text_color(*_GREY)
            self.cell(0, 5, f"{p(v.title)} {p(v.number)} · page {self.page_no()}/{{nb}}", align="R")

    pdf = _Document(format="A4")
    # one face only (size budget): emphasis is drawn as a stroke
    font = pdf.fonts["dejavu"] = _document_font(len(pdf.fonts) + 1)

    def p(text: str) -> str:
        return printable(text, font.cmap.__contains__)

    pdf.set_creation_date(v.created)
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
    return bytes(pdf.output(output_producer_class=_output_producer()))


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
