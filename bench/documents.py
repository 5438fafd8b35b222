"""Invoice documents per second: the PDF (fpdf2, DejaVu Sans subset embedded) and the HTML page of one invoice's
view, drawn N times in this process (the first drawing, which parses the font, is reported apart).

Budget: none is set; issue 17 measured ~11 PDFs/s when fpdf2 parsed the font for every document. Wall and CPU
time are both printed: on a machine other work also loads, the wall figure falls, the CPU one much less.
Run: .venv/bin/python -m bench.documents [--docs 50]
"""

from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=50)
    args = ap.parse_args(argv)

    from billow.adapters.rendering import InvoiceRenderer
    from billow.domain.documents import invoice_view
    from tests.documents.sample import invoice

    renderer = InvoiceRenderer()
    views = [invoice_view(invoice(number=f"ACME-{n:04d}")) for n in range(args.docs)]
    s = time.perf_counter()
    renderer.pdf(views[0])
    print(f"first PDF (imports fpdf2, parses the font): {(time.perf_counter() - s) * 1000:.0f} ms")
    for kind in ("pdf", "html"):
        draw = getattr(renderer, kind)
        s, p = time.perf_counter(), time.process_time()
        for view in views:
            draw(view)
        wall, cpu = time.perf_counter() - s, time.process_time() - p
        print(f"{kind.upper()}: {len(views) / wall:.1f} documents/s wall, {len(views) / cpu:.1f} documents/s of CPU "
              f"({len(views)} documents; no budget set, ~11 PDFs/s when issue 17 was filed)")


if __name__ == "__main__":
    main()
