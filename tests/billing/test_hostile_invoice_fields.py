"""Fields stored and shown back but never checked (helper lenient14's probe): an invoice's `description` and
`metadata` (PUT /api/v1/billing/invoices/{id}, OpenMeter's InvoiceReplaceUpdate), a pending line's `metadata`, a
credit top-up's `description`, a customer's `billingAddress` fields Address does not have, and a subscription's or
a bought add-on's `name`, `description` and `metadata`. Each was stored as
sent (1e999999 shown back as Infinity, nested objects and arrays); now a bad value is a 400 problem naming its
field and nothing is stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.entitlements.conftest import Billow, harness
from tests.support.billing import PROFILE
from tests.support.catalog import plan_body, published_seats, setup

LINE = {"type": "flat_fee", "name": "Fee", "period": {"from": "2025-12-01T00:00:00Z", "to": "2025-12-31T00:00:00Z"},
        "invoiceAt": "2025-12-31T00:00:00Z", "price": {"type": "flat", "amount": "5"}}
PENDING = "/api/v1/billing/customers/acme/invoices/pending-lines"
HOSTILE = ["1e999999", "1e-999999", "7", "true", '{"a": {"b": [1]}}', "[1, [2]]"]


@pytest.fixture
def b(tmp_path: Path, namespace: str) -> Iterator[Billow]:
    with harness(tmp_path, namespace) as billow:
        setup(billow)
        billow.ok("POST", "/api/v1/billing/profiles",
                  {**PROFILE, "workflow": {"invoicing": {"autoAdvance": False, "draftPeriod": "P1D"}}})
        yield billow


def _refused(b: Billow, method: str, path: str, raw: str, field: str) -> None:
    status, out = b.raw(method, path, raw.encode())
    assert status == 400, (raw[:120], status, out)
    assert field in [e["field"] for e in out["extensions"]["validationErrors"]], (raw[:120], out)


def _draft(b: Billow) -> dict[str, Any]:
    b.ok("POST", PENDING, {"currency": "USD", "lines": [LINE]})
    customer = b.ok("GET", "/api/v1/customers/acme")
    (draft,) = b.ok("POST", "/api/v1/billing/invoices/invoice", {"customerId": customer["id"]})
    assert draft["status"] == "draft", draft
    return draft  # type: ignore[no-any-return]


@pytest.mark.parametrize("value", HOSTILE)
def test_an_invoices_description_and_metadata_are_typed(b: Billow, value: str) -> None:
    draft = _draft(b)
    path = f"/api/v1/billing/invoices/{draft['id']}"
    _refused(b, "PUT", path, '{"description": ' + value + "}", "description")
    if not value.startswith("{"):
        _refused(b, "PUT", path, '{"metadata": ' + value + "}", "metadata")
    _refused(b, "PUT", path, '{"metadata": {"k": ' + value + "}}", "metadata")
    shown = b.ok("GET", path)
    assert (shown["description"], shown["metadata"]) == (draft["description"], draft["metadata"])
    edited = b.ok("PUT", path, {"description": "Q4", "metadata": {"po": "4711"}})
    assert (edited["description"], edited["metadata"]) == ("Q4", {"po": "4711"})
    assert b.ok("PUT", path, {"metadata": None})["metadata"] is None  # OpenMeter's Metadata is nullable


@pytest.mark.parametrize("value", HOSTILE)
def test_a_pending_lines_metadata_is_an_object_of_strings(b: Billow, value: str) -> None:
    line = '{"currency": "USD", "lines": [{"type": "flat_fee", "name": "Fee", "period": {"from": "2025-12-01T00:00:00Z",' \
           ' "to": "2025-12-31T00:00:00Z"}, "invoiceAt": "2025-12-31T00:00:00Z", "price": {"type": "flat", ' \
           '"amount": "5"}, "metadata": '
    if not value.startswith("{"):
        _refused(b, "POST", PENDING, line + value + "}]}", "lines[0].metadata")
    _refused(b, "POST", PENDING, line + '{"k": ' + value + "}}]}", "lines[0].metadata")
    assert b.ok("GET", "/api/v1/billing/invoices")["items"] == []  # nothing pending
    made = b.ok("POST", PENDING, {"currency": "USD", "lines": [{**LINE, "metadata": {"k": "v"}}]})
    assert made["lines"][0]["metadata"] == {"k": "v"}


@pytest.mark.parametrize("value", HOSTILE)
def test_a_credit_top_ups_description_is_a_string(b: Billow, value: str) -> None:
    _refused(b, "POST", "/api/v1/billing/customers/acme/credits",
             '{"amount": "1", "currency": "USD", "description": ' + value + "}", "description")
    ledger = b.ok("GET", "/api/v1/billing/customers/acme/credits", query={"currency": "USD"})
    assert ledger["balance"] == "0"
    made = b.ok("POST", "/api/v1/billing/customers/acme/credits", {"amount": "1", "currency": "USD",
                                                                   "description": "welcome"})
    assert made["description"] == "welcome"


def test_a_billing_address_keeps_openmeters_address_fields_alone(b: Billow) -> None:
    address = {"country": "DE", "city": "Berlin", "zzz": {"a": [1]}, "long": "a" * 100_000}
    made = b.ok("POST", "/api/v1/customers", {"name": "C", "key": "c", "billingAddress": address})
    assert made["billingAddress"] == {"country": "DE", "city": "Berlin"}
    assert b.ok("GET", "/api/v1/customers/c")["billingAddress"] == {"country": "DE", "city": "Berlin"}
    put = b.ok("PUT", f"/api/v1/customers/{made['id']}", {"name": "C", "key": "c", "billingAddress": address})
    assert put["billingAddress"] == {"country": "DE", "city": "Berlin"}


@pytest.mark.parametrize("value", HOSTILE)
def test_a_subscriptions_and_its_addons_name_description_and_metadata_are_typed(b: Billow, value: str) -> None:
    b.clock.set("2026-03-31T00:00:00Z")
    plan = plan_body("basic", "49.99")
    plan["phases"][0]["rateCards"].pop()  # the base fee alone
    seats = published_seats(b)
    draft = b.ok("POST", "/api/v1/plans", plan)
    b.ok("POST", f"/api/v1/plans/{draft['id']}/addons", {"addonId": seats["id"], "fromPlanPhase": "default"})
    b.ok("POST", f"/api/v1/plans/{draft['id']}/publish")
    base = '{"plan": {"key": "basic"}, "customerKey": "acme", "timing": "2026-04-01T00:00:00Z", '
    for field in ("name", "description", "metadata"):
        if not (field == "metadata" and value.startswith("{")):
            _refused(b, "POST", "/api/v1/subscriptions", base + f'"{field}": {value}' + "}", field)
    _refused(b, "POST", "/api/v1/subscriptions", base + '"metadata": {"k": ' + value + "}}", "metadata")
    assert b.ok("GET", "/api/v1/customers/acme/subscriptions")["items"] == []
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme",
                                                 "timing": "2026-04-01T00:00:00Z", "description": "d",
                                                 "metadata": {"k": "v"}})
    assert (sub["description"], sub["metadata"]) == ("d", {"k": "v"})
    b.clock.set("2026-04-02T00:00:00Z")
    addon = '{"addon": {"id": "' + seats["id"] + '"}, "quantity": 1, "timing": "immediate", "name": "Seats", '
    for field in ("name", "description", "metadata"):
        if not (field == "metadata" and value.startswith("{")):
            _refused(b, "POST", f"/api/v1/subscriptions/{sub['id']}/addons", addon + f'"{field}": {value}' + "}", field)
    assert b.ok("GET", f"/api/v1/subscriptions/{sub['id']}/addons") == []
