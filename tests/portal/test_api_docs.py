"""The API reference page, /api/docs, in a real headless Chromium against `billow serve` with `auth: keys`: public
(no key), it renders the served OpenAPI document with the vendored Redoc, listing every operation (OpenMeter's and
Billow's own under "Billow extensions"), and loads nothing from anywhere but Billow's own origin."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser

from billow.web.openapi import document
from tests.e2e.conftest import Server

METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("docs")
    (root / "billow.yaml").write_text("auth: keys\n")
    srv = Server(root / "data", root / "billow.yaml").start()
    yield srv
    srv.stop()


def test_api_docs_page_is_public_and_served_from_the_package(server: Server) -> None:
    status, headers, page = server.request("GET", "/api/docs")
    assert status == 200 and headers["Content-Type"].startswith("text/html"), (status, page)
    assert "connect-src 'self'" in headers["Content-Security-Policy"]
    status, headers, script = server.request("GET", "/api/docs/redoc.standalone.js")
    vendored = Path(__file__).parents[2] / "shared/billow/web/redoc/redoc.standalone.js"
    assert status == 200 and script == vendored.read_text(encoding="utf-8")
    assert server.request("GET", "/api/docs/LICENSE")[2].startswith("The MIT License")
    status, headers, body = server.request("GET", "/api/docs/secrets.txt")  # not public: the key check first
    assert status == 401 and headers["Content-Type"] == "application/problem+json", body


def test_api_docs_renders_every_operation_in_chromium(server: Server, browser: Browser) -> None:
    doc = json.loads(document())
    operations = [(m, p, op) for p, item in doc["paths"].items() for m, op in item.items() if m in METHODS]
    page = browser.new_page()
    foreign: list[str] = []
    errors: list[str] = []
    # Redoc's side menu shows a logo from cdn.redoc.ly: the page's policy blocks it, so no answer may come from there.
    page.on("response", lambda r: foreign.append(r.url) if urlsplit(r.url).netloc != urlsplit(server.url).netloc
            and not r.url.startswith(("data:", "blob:")) else None)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "cdn.redoc.ly" not in m.text else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server.url}/api/docs")
    # Redoc lists each operation in its side menu, under its tag.
    page.wait_for_selector("li[data-item-id^='tag/']", timeout=60_000)
    items = page.eval_on_selector_all("li[data-item-id]", "els => els.map(e => e.getAttribute('data-item-id'))")
    # (an operation with two tags is listed under each)
    listed = {i.rsplit("/operation/", 1)[1] for i in items if "/operation/" in i}
    assert listed == {op["operationId"] for _, _, op in operations}
    assert "tag/Billow-extensions" in items, items[:20]
    billow_ops = [op for _, _, op in operations if op.get("x-billow-extension")]
    assert billow_ops and all(f"tag/Billow-extensions/operation/{op['operationId']}" in items for op in billow_ops)
    text = page.inner_text("body")
    assert "LLM cost report" in text and "API reference page" in text
    assert not foreign, foreign
    assert not errors, errors
    page.close()
