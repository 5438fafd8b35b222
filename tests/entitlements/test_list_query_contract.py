"""The list operations whose query filters were read without checking them (tests/fuzz harness
QUERY_NOT_VALIDATED) refuse a value their contract does not allow with a 400 naming the parameter: an order,
orderBy or enum value, a boolean, a date-time, an id pattern, a bound; valid values still list."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import pytest

from billow.local.server import apigw_event
from functions.api.handler import lambda_handler as api
from tests.entitlements.conftest import Billow


def _get(path: str, query: dict[str, str]) -> tuple[int, Any]:
    """GET through the API function (the harness sends /api/v1/events to the ingest function, as POST is routed)."""
    out = api(apigw_event("GET", f"{path}?{urlencode(query)}", {}, b"", "127.0.0.1"), None)
    return out["statusCode"], json.loads(out["body"])

BAD = [
    ("/api/v1/events", "from", "yesterday"), ("/api/v1/events", "ingestedAtTo", "2026-13-01T00:00:00Z"),
    ("/api/v1/events", "customerId", "acme"), ("/api/v1/events", "clientId", "x" * 37),
    ("/api/v1/meters", "orderBy", "color"), ("/api/v1/meters", "order", "up"),
    ("/api/v1/customers", "orderBy", "key"), ("/api/v1/customers", "expand", "orders"),
    ("/api/v1/features", "order", "asc"), ("/api/v1/features", "includeArchived", "1"),
    ("/api/v1/entitlements", "orderBy", "id"), ("/api/v1/entitlements", "excludeInactive", "yes"),
    ("/api/v1/grants", "orderBy", "amount"), ("/api/v1/grants", "offset", "-1"),
    ("/api/v1/notification/rules", "orderBy", "name"), ("/api/v1/notification/rules", "feature", "Bad Key"),
    ("/api/v1/plans", "status", "live"), ("/api/v1/plans", "currency", "usd"), ("/api/v1/plans", "id", "nope"),
    ("/api/v1/addons", "orderBy", "createdAt"), ("/api/v1/addons", "key", "Bad-Key"),
    ("/api/v1/billing/profiles", "expand", "everything"), ("/api/v1/billing/profiles", "orderBy", "id"),
    ("/api/v1/billing/invoices", "statuses", "open"), ("/api/v1/billing/invoices", "issuedAfter", "soon"),
    ("/api/v1/billing/invoices", "orderBy", "total"), ("/api/v1/billing/invoices", "customers", "acme"),
    ("/api/v1/billing/invoices", "includeDeleted", "True"),
]
GOOD = [
    ("/api/v1/meters", {"orderBy": "key", "order": "DESC"}), ("/api/v1/customers", {"expand": "subscriptions"}),
    ("/api/v1/plans", {"status": "active", "currency": "USD", "orderBy": "created_at"}),
    ("/api/v1/billing/invoices", {"statuses": "paid", "issuedAfter": "2026-01-01T00:00:00Z", "orderBy": "issuedAt"}),
    ("/api/v1/events", {"from": "2026-01-01T00:00:00Z", "limit": "5"}),
    ("/api/v1/entitlements", {"entitlementType": "metered", "excludeInactive": "true"}),
]


@pytest.mark.parametrize(("path", "name", "value"), BAD, ids=[f"{p} {n}" for p, n, _ in BAD])
def test_a_value_the_contract_refuses_is_a_400_naming_the_parameter(billow: Billow, path: str, name: str,
                                                                     value: str) -> None:
    assert billow is not None
    status, out = _get(path, {name: value})
    assert status == 400, (status, out)
    assert name in out["detail"], out


@pytest.mark.parametrize(("path", "query"), GOOD, ids=[p for p, _ in GOOD])
def test_valid_values_still_list(billow: Billow, path: str, query: dict[str, str]) -> None:
    assert billow is not None
    status, out = _get(path, query)
    assert status == 200, (status, out)


@pytest.mark.parametrize("value", ["", "orders", "Subscriptions"])
def test_a_customer_get_with_an_expand_the_contract_refuses_is_a_400(billow: Billow, value: str) -> None:
    """GET /customers/{customerIdOrKey}: `expand` is an array of CustomerExpand (subscriptions). Any value was
    ignored (200); the PostgreSQL schema fuzz found ?expand= answered 200 (seed 41). A path-parameter route, so
    checked by its handler (query_contract.conform), not by the list middleware."""
    billow.ok("POST", "/api/v1/customers", {"name": "Acme", "key": "acme"})
    status, out = _get("/api/v1/customers/acme", {"expand": value})
    assert status == 400 and "expand" in out["detail"], (status, out)
    status, out = _get("/api/v1/customers/acme", {"expand": "subscriptions"})
    assert status == 200 and out["key"] == "acme", (status, out)
