"""What an end customer sees in the portal, in a real headless Chromium at desktop (1280 px) and phone (390 px)
width, against a real `billow serve` (the embedded default, auth off): the customer's name without its internal
subject key, charts with units, per-day values on hover / focus with the breakdown by group (per model), invoices with
human statuses downloadable as PDF and HTML through the portal token, no sideways scrolling and readable axis labels
on a phone, and clear words (not the server's) for a bad, revoked or expired link. Every expected figure is computed
from the events and invoice lines this test sends, never from the server's own query."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

from tests.e2e.conftest import Server
from tests.portal.conftest import TZ

SUBJECT = "initech-prod-7f3a"  # the provider's internal key: never on the customer's page
WIDTHS = [1280, 390]
# (days ago, model, tokens): sent at 16:00 UTC, which is the same calendar day in New York.
TOKENS = [(1, "gpt", "10.5"), (1, "claude", "2.25"), (3, "gpt", "0.1"), (3, "gpt", "0.2"), (3, "claude", "4"),
          (3, "mistral", "1"), (8, "claude", "7.75"), (15, "gpt", "3")]
CALLS = [1, 1, 2, 9, 9, 9]  # days ago of each API call


class Shop:
    def __init__(self, srv: Server) -> None:
        self.srv = srv

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, _, out = self.srv.request(method, path, body)
        assert status in (200, 201, 204), (method, path, status, out)
        return out

    def token(self, **body: Any) -> str:
        return str(self.ok("POST", "/api/v1/portal/tokens", {"subject": SUBJECT, **body})["token"])


def at(days_ago: int) -> datetime:
    return (datetime.now(UTC) - timedelta(days=days_ago)).replace(hour=16, minute=0, second=0, microsecond=0)


def rfc(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    root = tmp_path_factory.mktemp("portal-ux")
    config = root / "billow.yaml"
    config.write_text("billing_every_s: 0\n")  # this test invoices by hand; no scheduled run in between
    srv = Server(root / "data", config).start()
    s = Shop(srv)
    s.ok("POST", "/api/v1/meters", {"slug": "ux_tokens", "name": "AI tokens", "eventType": "completion",
                                    "aggregation": "SUM", "valueProperty": "$.tokens", "groupBy": {"model": "$.model"}})
    s.ok("POST", "/api/v1/meters", {"slug": "ux_calls", "name": "API calls", "eventType": "call",
                                    "aggregation": "COUNT", "metadata": {"unit": "calls"}})
    cust = s.ok("POST", "/api/v1/customers", {
        "name": "Initech LLC", "key": "initech", "usageAttribution": {"subjectKeys": [SUBJECT]},
        "billingAddress": {"country": "US", "line1": "4120 Freidrich Ln", "city": "Austin", "state": "TX",
                           "postalCode": "78744"}})
    events = [{"specversion": "1.0", "id": f"t{i}", "source": "ux", "type": "completion", "subject": SUBJECT,
               "time": rfc(at(d)), "data": {"tokens": v, "model": m}} for i, (d, m, v) in enumerate(TOKENS)]
    events += [{"specversion": "1.0", "id": f"c{i}", "source": "ux", "type": "call", "subject": SUBJECT,
                "time": rfc(at(d)), "data": {}} for i, d in enumerate(CALLS)]
    s.ok("POST", "/api/v1/events", events)
    s.ok("POST", "/api/v1/billing/profiles", {
        "name": "Default", "default": True,
        "supplier": {"name": "Billow Inc.", "addresses": [{"country": "DE", "city": "Berlin", "postalCode": "10115"}]},
        "workflow": {"invoicing": {"dueAfter": "P14D"}},
        "apps": {"tax": "sandbox", "invoicing": "custom_invoicing", "payment": "custom_invoicing"}})
    # Two invoices: one paid, one overdue (the user's own invoicing system reports both through the app's API).
    for number, amount, trigger, outcome, days in (("INV-1001", "99", "paid", "paid", 40),
                                                   ("INV-1002", "45.5", "payment_overdue", "overdue", 20)):
        line = {"name": "Platform fee", "period": {"from": rfc(at(days + 30)), "to": rfc(at(days))},
                "invoiceAt": rfc(at(days)), "price": {"type": "flat", "amount": amount}}
        s.ok("POST", f"/api/v1/billing/customers/{cust['id']}/invoices/pending-lines",
             {"currency": "USD", "lines": [line]})
        s.ok("POST", "/api/v1/billing/invoices/invoice", {"customerId": cust["id"]})
        inv = next(i for i in s.ok("GET", "/api/v1/billing/invoices")["items"]
                   if i["statusDetails"]["extendedStatus"] == "issuing.syncing")
        s.ok("POST", f"/api/v1/apps/custom-invoicing/{inv['id']}/issuing/synchronized",
             {"invoicing": {"invoiceNumber": number}})
        s.ok("POST", f"/api/v1/apps/custom-invoicing/{inv['id']}/payment/status", {"trigger": trigger})  # 204
        assert s.ok("GET", f"/api/v1/billing/invoices/{inv['id']}")["status"] == outcome
    yield s
    srv.stop()


def open_portal(browser: Browser, srv: Server, token: str, width: int, state: str = "ready") -> Page:
    page = browser.new_context(timezone_id=TZ, locale="en-US", viewport={"width": width, "height": 900},
                               accept_downloads=True).new_page()
    page.goto(f"{srv.url}/portal#token={token}")
    page.wait_for_selector(f"body[data-state={state}]", timeout=20_000)
    return page


def by_day() -> dict[str, dict[str, Decimal]]:
    """{YYYY-MM-DD (New York): {model: tokens}} from the events sent."""
    out: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for d, model, value in TOKENS:
        out[at(d).date().isoformat()][model] += Decimal(value)
    return out


def no_sideways_scroll(page: Page, width: int) -> None:
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    assert page.evaluate("document.body.scrollWidth") <= width


@pytest.mark.parametrize("width", WIDTHS)
def test_usage_charts_have_units_tooltips_and_a_breakdown(browser: Browser, shop: Shop, width: int) -> None:
    page = open_portal(browser, shop.srv, shop.token(), width)
    # The customer's name, not the subject key the provider uses internally.
    assert page.text_content("#who") == "Initech LLC"
    assert SUBJECT not in page.inner_text("body") and SUBJECT not in page.content()

    tokens = page.locator("article.meter[data-meter=ux_tokens]")
    total = sum(Decimal(v) for _, _, v in TOKENS)
    assert tokens.locator(".total").inner_text() == f"Total: {total.normalize():f} tokens"  # derived from valueProperty $.tokens
    assert tokens.locator("svg text.unit").text_content() == "tokens per day"
    calls = page.locator("article.meter[data-meter=ux_calls]")
    assert calls.locator(".total").inner_text() == f"Total: {len(CALLS)} calls"  # the meter's metadata.unit
    assert calls.locator("svg text.unit").text_content() == "calls per day"

    # Breakdown by model: a legend, largest first, and a stacked segment per model and day, exact.
    expected = by_day()
    assert tokens.get_attribute("data-group-by") == "model"
    sizes: dict[str, Decimal] = defaultdict(Decimal)
    for models in expected.values():
        for m, v in models.items():
            sizes[m] += v
    assert tokens.locator(".legend li").all_inner_texts() == sorted(sizes, key=lambda m: -sizes[m])
    segs = tokens.locator("rect.seg").evaluate_all("els => els.map(e => [e.dataset.day, e.dataset.group, "
                                                   "e.dataset.value])")
    shown: dict[str, dict[str, Decimal]] = defaultdict(dict)
    for day, group, value in segs:
        shown[day][group] = Decimal(value)
    assert shown == {day: dict(models) for day, models in expected.items()}
    bars = dict(tokens.locator("rect.bar").evaluate_all("els => els.map(e => [e.dataset.day, e.dataset.value])"))
    assert {d: Decimal(v) for d, v in bars.items() if Decimal(v)} == {d: sum(m.values()) for d, m in expected.items()}
    assert bars[at(3).date().isoformat()] == "5.3"  # 0.1 + 0.2 + 4 + 1, not 5.300000000000001

    # Hover (or keyboard focus on a phone) shows the day's value with its unit and the per-model split.
    day3 = at(3).date().isoformat()
    hit = tokens.locator(f"rect.hit[data-day='{day3}']")
    if width >= 1000:
        hit.hover()
    else:
        hit.focus()
    tip = tokens.locator(".tip")
    tip.wait_for(state="visible")
    label = datetime.fromisoformat(day3).strftime("%b %-d")
    assert tip.locator(".tip-head").inner_text() == f"{label} 5.3 tokens"
    split = dict(tuple(t.split("\n")) if "\n" in t else tuple(t.split("\t"))
                 for t in tip.locator(".tip-group").all_inner_texts())
    assert {k.strip(): v.strip() for k, v in split.items()} == {"claude": "4 tokens", "mistral": "1 tokens",
                                                                 "gpt": "0.3 tokens"}
    box, view = tip.bounding_box(), page.viewport_size
    assert box is not None and view is not None and box["x"] >= 0 and box["x"] + box["width"] <= view["width"]
    page.mouse.move(0, 0)
    page.locator("h1").click()  # away from the chart: the tooltip goes
    tip.wait_for(state="hidden")

    # Readable on a phone: axis labels at their real size, none overlapping, nothing scrolls sideways.
    no_sideways_scroll(page, width)
    for meter in ("ux_tokens", "ux_calls"):
        labels = page.locator(f"article.meter[data-meter={meter}] svg text.axis").evaluate_all(
            "els => els.map(e => { const r = e.getBoundingClientRect(); "
            "return [r.left, r.right, r.top, r.height, parseFloat(getComputedStyle(e).fontSize)]; })")
        assert all(h >= 10 and size >= 11 for *_, h, size in labels), labels
        bottom = sorted(page.locator(f"article.meter[data-meter={meter}] svg text.axis.day")
                        .evaluate_all("els => els.map(e => { const r = e.getBoundingClientRect(); "
                                      "return [r.left, r.right]; })"))  # the day labels under the bars
        assert len(bottom) >= 3 and all(a[1] <= b[0] for a, b in zip(bottom, bottom[1:], strict=False)), bottom
        chart = page.locator(f"article.meter[data-meter={meter}] svg.chart").bounding_box()
        assert chart is not None and chart["x"] >= 0 and chart["x"] + chart["width"] <= width
    page.context.close()


@pytest.mark.parametrize("width", WIDTHS)
def test_invoices_show_human_statuses_and_download_as_pdf_and_html(browser: Browser, shop: Shop, width: int,
                                                                   tmp_path: Path) -> None:
    page = open_portal(browser, shop.srv, shop.token(), width)
    rows = page.locator("#invoices tbody tr")
    assert rows.count() == 2
    paid, overdue = page.locator("tr[data-status=paid]"), page.locator("tr[data-status=overdue]")
    assert paid.locator(".status").inner_text() == "Paid"
    assert overdue.locator(".status").inner_text() == "Overdue"
    assert "99.00 USD" in paid.inner_text() and "45.50 USD" in overdue.inner_text()
    body = page.inner_text("#billing")
    assert "paid" not in body.replace("Paid", "") and "payment_processing" not in body

    for row, status, total in ((paid, "paid", "99.00"), (overdue, "overdue", "45.50")):
        with page.expect_download() as got:
            row.locator("button.doc[data-format=pdf]").click()
        pdf = got.value
        assert pdf.suggested_filename.endswith(".pdf")
        path = tmp_path / f"{status}.pdf"
        pdf.save_as(path)
        data = path.read_bytes()
        assert data.startswith(b"%PDF-")
        with page.expect_download() as got:
            row.locator("button.doc[data-format=html]").click()
        html_path = tmp_path / f"{status}.html"
        got.value.save_as(html_path)
        assert got.value.suggested_filename.endswith(".html")
        html = html_path.read_text()
        if status == "paid":
            assert f"Total paid (USD)</th><td>{total}" in html and "Total due" not in html
        else:
            assert f"Total due (USD)</th><td>{total}" in html and "Overdue: payment was due" in html
        assert "Austin, TX 78744" in html and "United States" in html
    # The download went through the portal token: the document route refuses without it.
    inv_id = paid.get_attribute("data-invoice")
    status, _, _ = shop.srv.request("GET", f"/api/v1/portal/invoices/{inv_id}/documents/pdf")
    assert status == 401

    # On a phone the table is one block per invoice, inside the screen.
    no_sideways_scroll(page, width)
    for cell in page.locator("#invoices td").all():
        box = cell.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width
    page.context.close()


def test_another_customers_invoice_is_not_found_through_a_portal_token(shop: Shop) -> None:
    other = shop.ok("POST", "/api/v1/customers", {"name": "Hooli", "key": "hooli",
                                                  "usageAttribution": {"subjectKeys": ["hooli-1"]}})
    token = shop.ok("POST", "/api/v1/portal/tokens", {"subject": "hooli-1"})["token"]
    invoice_id = shop.ok("GET", "/api/v1/billing/invoices")["items"][0]["id"]
    for path in (f"/api/v1/portal/invoices/{invoice_id}/documents", f"/api/v1/portal/invoices/{invoice_id}/documents/pdf"):
        status, headers, body = shop.srv.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        assert status == 404 and headers["Content-Type"] == "application/problem+json", (status, body)
    assert other["name"] == "Hooli"


RAW = re.compile(r"portal token|\d{4}-\d\d-\d\dT\d\d:\d\d")  # the server's wording, an RFC 3339 timestamp


@pytest.mark.parametrize("width", WIDTHS)
def test_bad_revoked_and_expired_links_show_clear_words(browser: Browser, shop: Shop, width: int) -> None:
    good = shop.token()
    revoked = shop.ok("POST", "/api/v1/portal/tokens", {"subject": SUBJECT})
    shop.ok("POST", "/api/v1/portal/tokens/invalidate", {"id": revoked["id"]})
    expires = datetime.now(UTC) + timedelta(seconds=2)
    short = shop.token(expiresAt=expires.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
    deadline = time.monotonic() + 30
    while shop.srv.request("GET", "/api/v1/portal/me", headers={"Authorization": f"Bearer {short}"})[0] != 401:
        assert time.monotonic() < deadline, "the short link never expired"
        time.sleep(0.2)
    cases = [(good[:-3] + "abc", "This link is not valid: it may be incomplete or mistyped."),
             (revoked["token"], "This link was invalidated by your provider."),
             (short, "This link expired at ")]
    for token, words in cases:
        page = open_portal(browser, shop.srv, token, width, state="denied")
        assert page.inner_text("#message-title") == "This link has expired or is no longer valid"
        text = page.inner_text("#message-text")
        assert text.startswith(words) and text.endswith("Ask your provider for a new link to see your usage.")
        assert not RAW.search(page.inner_text("body")), text
        no_sideways_scroll(page, width)
        page.context.close()
