"""Issue 19 item 6: one pagination module for every list, with OpenMeter's semantics (v1 `page` >= 1, `pageSize`
1..1000 default 100; `limit` 1..1000 default 100 and `offset` >= 0 where the spec has them). A repeated or malformed
pagination parameter is a 400 naming it, never read as its first value or its default (issue 15's rule). The module
directly, then every list endpoint through the API Lambda handler as API Gateway calls it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from billow.bootstrap import Settings, build, install
from billow.errors import ValidationFailed
from billow.local.server import apigw_event
from billow.services import pages
from functions.api.handler import lambda_handler as api

ITEMS = [{"id": f"{i:03d}"} for i in range(250)]


def qs(query: str) -> dict[str, list[str]]:
    from billow.web.http import _parse_query

    return _parse_query(query)


def refused(fn: Any, *args: Any) -> str:
    with pytest.raises(ValidationFailed) as err:
        fn(*args)
    assert len(err.value.errors) == 1, err.value.errors
    return str(err.value.errors[0]["field"])


# -- the module ---------------------------------------------------------------------------------------------------

def test_page_object_defaults_to_page_1_of_100() -> None:
    out = pages.page(ITEMS, {})
    assert (out["totalCount"], out["page"], out["pageSize"]) == (250, 1, 100)
    assert out["items"] == ITEMS[:100]
    assert list(out) == ["totalCount", "page", "pageSize", "items"]


def test_page_object_slices_by_page_and_page_size() -> None:
    out = pages.page(ITEMS, qs("page=3&pageSize=100"))
    assert (out["page"], out["pageSize"], out["items"]) == (3, 100, ITEMS[200:])
    assert pages.page(ITEMS, qs("page=2&pageSize=1000"))["items"] == []
    assert pages.page(ITEMS, qs("pageSize=1"))["items"] == ITEMS[:1]
    assert pages.page(ITEMS, qs("page=9223372036854775807"))["items"] == []  # OpenMeter has no upper bound


def test_page_object_ignores_limit_and_offset() -> None:
    """Lists whose OpenMeter operation has only page/pageSize (plans, customers, invoices...) page by those."""
    assert pages.page(ITEMS, qs("limit=2&offset=5"))["items"] == ITEMS[:100]


@pytest.mark.parametrize(("query", "field"), [
    ("page=0", "page"), ("page=-1", "page"), ("pageSize=0", "pageSize"), ("pageSize=1001", "pageSize"),
    ("page=1&page=2", "page"), ("page=1&page=1", "page"), ("pageSize=5&pageSize=5", "pageSize"),
    ("page=", "page"), ("pageSize=", "pageSize"), ("page=x", "page"), ("page=1.0", "page"), ("page=+1", "page"),
    ("page=%201", "page"), ("page=1_0", "page"), ("page=%D9%A1", "page"), ("pageSize=%EF%BC%95", "pageSize"),
    ("page=0x10", "page"), ("page=9223372036854775808", "page"), ("page=" + "9" * 5000, "page"),
])
def test_page_object_refuses_a_malformed_or_repeated_parameter_naming_it(query: str, field: str) -> None:
    assert refused(pages.page, ITEMS, qs(query)) == field


def test_array_or_page_is_an_array_by_limit_and_offset_unless_page_or_page_size_is_given() -> None:
    assert pages.array_or_page(ITEMS, {}) == ITEMS[:100]  # OpenMeter's default limit
    assert pages.array_or_page(ITEMS, qs("limit=1000")) == ITEMS
    assert pages.array_or_page(ITEMS, qs("offset=240&limit=5")) == ITEMS[240:245]
    assert pages.array_or_page(ITEMS, qs("offset=1000")) == []
    out = pages.array_or_page(ITEMS, qs("pageSize=10"))
    assert isinstance(out, dict) and (out["page"], out["pageSize"], out["items"]) == (1, 10, ITEMS[:10])
    out = pages.array_or_page(ITEMS, qs("page=2&limit=3&offset=7"))  # page/pageSize win, as in OpenMeter
    assert isinstance(out, dict) and (out["page"], out["pageSize"], out["items"]) == (2, 100, ITEMS[100:200])


@pytest.mark.parametrize(("query", "field"), [
    ("limit=0", "limit"), ("limit=1001", "limit"), ("offset=-1", "offset"), ("limit=5&limit=5", "limit"),
    ("offset=1&offset=2", "offset"), ("limit=", "limit"), ("offset=x", "offset"), ("page=0", "page"),
    ("pageSize=1001", "pageSize"), ("page=1&page=2", "page"),
    ("page=1&limit=0", "limit"),  # a known parameter is checked even when page/pageSize decide the window
])
def test_array_or_page_refuses_a_malformed_or_repeated_parameter_naming_it(query: str, field: str) -> None:
    assert refused(pages.array_or_page, ITEMS, qs(query)) == field


def test_v2_page_object_by_page_and_page_size_or_by_limit_and_offset() -> None:
    assert pages.v2_page(ITEMS, {}) == pages.page(ITEMS, {})
    assert pages.v2_page(ITEMS, qs("page=2&pageSize=50")) == pages.page(ITEMS, qs("page=2&pageSize=50"))
    out = pages.v2_page(ITEMS, qs("offset=20&limit=10"))
    assert out == {"totalCount": 250, "page": 3, "pageSize": 10, "items": ITEMS[20:30]}
    out = pages.v2_page(ITEMS, qs("offset=5"))
    assert (out["page"], out["pageSize"], out["items"]) == (1, 100, ITEMS[5:105])
    out = pages.v2_page(ITEMS, qs("pageSize=2&offset=5"))  # page/pageSize win
    assert (out["page"], out["pageSize"], out["items"]) == (1, 2, ITEMS[:2])


@pytest.mark.parametrize(("query", "field"), [
    ("page=0", "page"), ("pageSize=0", "pageSize"), ("pageSize=1001", "pageSize"), ("page=1&page=2", "page"),
    ("limit=0", "limit"), ("limit=1001", "limit"), ("offset=-1", "offset"), ("limit=1&limit=2", "limit"),
    ("pageSize=5&offset=x", "offset"),
])
def test_v2_page_refuses_a_malformed_or_repeated_parameter_naming_it(query: str, field: str) -> None:
    assert refused(pages.v2_page, ITEMS, qs(query)) == field


def test_limit_alone() -> None:
    assert pages.limit({}, default=25, maximum=100) == 25
    assert pages.limit(qs("limit=100"), default=25, maximum=100) == 100
    for query in ("limit=0", "limit=101", "limit=1&limit=1", "limit=", "limit=%D9%A1"):
        assert refused(pages.limit, qs(query), 25, 100) == "limit"


# -- every list endpoint, through the API handler ---------------------------------------------------------------

@pytest.fixture(scope="module")
def lists(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A namespace with one of each thing a list's path needs: a customer, a plan, a boolean entitlement."""
    tmp: Path = tmp_path_factory.mktemp("pages")
    c = build(Settings.parse(dict(usage_store="memory", data_dir=str(tmp), meters=[
        {"slug": "tokens", "eventType": "prompt", "aggregation": "SUM", "valueProperty": "$.tokens"}])))
    install(c)
    try:
        status, plan = call("POST", "/api/v1/plans", {"key": "p", "name": "P", "currency": "USD", "billingCadence": "P1M", "phases": [
            {"key": "default", "name": "Default", "rateCards": []}]})
        assert status == 201, plan
        for path, body in (("/api/v1/customers", {"key": "acme", "name": "Acme", "currency": "USD",
                                                   "usageAttribution": {"subjectKeys": ["acme"]}}),
                           ("/api/v1/features", {"key": "on", "name": "On"})):
            status, out = call("POST", path, body)
            assert status == 201, out
        status, ent = call("POST", "/api/v2/customers/acme/entitlements", {"type": "boolean", "featureKey": "on"})
        assert status == 201, ent
        assert plan is not None and ent is not None
        yield {"plan": plan["id"], "entitlement": ent["id"]}
    finally:
        install(None)
        c.close()


def call(method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any] | None]:
    out = api(apigw_event(method, path, {"content-type": "application/json"},
                          json.dumps(body).encode() if body is not None else b"", "127.0.0.1"), None)
    if out["statusCode"] >= 400:
        assert out["headers"]["Content-Type"] == "application/problem+json"
    return out["statusCode"], json.loads(out["body"]) if out.get("body") else None


PAGED = [  # OpenMeter's lists with page/pageSize (page object, or an array unless page/pageSize is given)
    "/api/v1/customers", "/api/v1/features", "/api/v1/entitlements", "/api/v1/grants", "/api/v1/plans",
    "/api/v1/addons", "/api/v1/plans/{plan}/addons", "/api/v1/customers/acme/subscriptions",
    "/api/v1/billing/profiles", "/api/v1/billing/invoices", "/api/v1/notification/channels",
    "/api/v1/notification/rules", "/api/v1/notification/events", "/api/v2/entitlements", "/api/v2/grants",
    "/api/v2/customers/acme/entitlements", "/api/v2/customers/acme/entitlements/{entitlement}/grants",
]
LIMIT_OFFSET = ["/api/v1/features", "/api/v1/entitlements", "/api/v1/grants", "/api/v2/entitlements",
                "/api/v2/grants", "/api/v2/customers/acme/entitlements/{entitlement}/grants"]
BAD_PAGE = [("page=0", "page"), ("pageSize=0", "pageSize"), ("pageSize=1001", "pageSize"), ("page=1&page=2", "page"),
            ("page=1&page=1", "page"), ("pageSize=10&pageSize=20", "pageSize"), ("page=x", "page"),
            ("page=%D9%A1", "page"), ("pageSize=+5", "pageSize")]
BAD_LIMIT = [("limit=0", "limit"), ("limit=1001", "limit"), ("offset=-1", "offset"), ("limit=5&limit=5", "limit"),
             ("offset=1&offset=2", "offset")]


def refused_over_http(path: str, field: str) -> None:
    status, problem = call("GET", path)
    assert status == 400, (path, status, problem)
    assert problem is not None and [e["field"] for e in problem["validationErrors"]] == [field], (path, problem)


@pytest.mark.parametrize("base", PAGED)
def test_every_paged_list_refuses_a_bad_page_or_page_size(lists: dict[str, str], base: str) -> None:
    path = base.format(**lists)
    status, _ = call("GET", path)
    assert status == 200, path
    for query, field in BAD_PAGE:
        refused_over_http(f"{path}?{query}", field)


@pytest.mark.parametrize("base", LIMIT_OFFSET)
def test_every_limit_offset_list_refuses_a_bad_limit_or_offset(lists: dict[str, str], base: str) -> None:
    for query, field in BAD_LIMIT:
        refused_over_http(f"{base.format(**lists)}?{query}", field)


@pytest.mark.parametrize(("base", "maximum"), [("/api/v1/events", 100), ("/api/v1/portal/tokens", 100)])
def test_lists_with_a_limit_alone_refuse_a_bad_limit(lists: dict[str, str], base: str, maximum: int) -> None:
    assert call("GET", f"{base}?limit={maximum}")[0] == 200
    for query in ("limit=0", f"limit={maximum + 1}", "limit=5&limit=5", "limit=x", "limit=" + quote("１")):
        refused_over_http(f"{base}?{query}", "limit")


def test_list_shapes_stay_as_they_were(lists: dict[str, str]) -> None:
    """Page objects where OpenMeter answers one; v1 features/entitlements/grants an array unless paged."""
    for path in ("/api/v1/customers", "/api/v1/plans", "/api/v1/notification/channels", "/api/v2/entitlements"):
        status, body = call("GET", path)
        assert status == 200 and body is not None and set(body) == {"totalCount", "page", "pageSize", "items"}, body
        assert (body["page"], body["pageSize"]) == (1, 100)
    status, body = call("GET", "/api/v1/features")
    assert status == 200 and isinstance(body, list) and [f["key"] for f in body] == ["on"]
    status, body = call("GET", "/api/v1/features?pageSize=1")
    assert status == 200 and isinstance(body, dict) and (body["totalCount"], body["pageSize"]) == (1, 1)
    status, body = call("GET", "/api/v2/customers/acme/entitlements?offset=0&limit=1")
    assert status == 200 and body is not None and (body["page"], body["pageSize"], body["totalCount"]) == (1, 1, 1)
    status, body = call("GET", "/api/v1/customers?page=2&pageSize=1")
    assert status == 200 and body is not None and (body["items"], body["totalCount"]) == ([], 1)
