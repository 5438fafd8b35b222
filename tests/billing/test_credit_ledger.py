"""GET /api/v1/billing/customers/{customer}/credits?currency=USD (Billow; OpenMeter has no operation for a customer's
money credit: its grants are entitlement usage): the customer's prepaid balance and its ledger, every entry as the
store wrote it (top-up, credit applied to an invoice, credit a deleted draft returned, what a negative invoice gave
back), exact decimal strings, the balance the sum of the entries. Before, nothing over HTTP listed it: the route
was a 405 (only the top-up, POST, existed). Through the real handlers with a moving clock, on the twin and chdb."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from billow.ids import derived_id
from tests.billing.conftest import Billow
from tests.billing.test_negative_correction import balance, correction_of_april
from tests.support.billing import PROFILE, invoices, scheduled_run, subscribed


def ledger(b: Billow, customer: str, **query: str) -> Any:
    return b.ok("GET", f"/api/v1/billing/customers/{customer}/credits", query={"currency": "USD", **query})


def test_the_ledger_lists_top_up_credit_applied_and_what_a_negative_invoice_gave_back(billow: Billow) -> None:
    b = billow
    customer, correction = correction_of_april(b)
    april, may = invoices(b)[:2]
    got = ledger(b, customer["id"])
    assert (got["customerId"], got["currency"], got["balance"]) == (customer["id"], "USD", "3.00")
    assert Decimal(got["balance"]) == balance(b, customer["id"])
    items = got["entries"]["items"]
    assert (got["entries"]["totalCount"], got["entries"]["page"], got["entries"]["pageSize"]) == (4, 1, 100)
    assert [(e["amount"], e["invoiceId"], e["invoiceNumber"], e["createdAt"]) for e in items] == [
        ("100.00", None, None, "2026-03-31T00:00:00Z"),  # the top-up
        ("-49.99", april["id"], april["number"], "2026-04-01T00:10:00Z"),  # April's fee from the credit
        ("-50.01", may["id"], may["number"], "2026-05-01T00:10:00Z"),  # April's usage and May's fee
        ("3.00", correction["id"], correction["number"], "2026-05-02T00:10:00Z")]  # the correction gave it back
    assert items[-1]["id"] == derived_id(correction["id"], "owed-back")
    assert all(e["currency"] == "USD" and isinstance(e["amount"], str) for e in items)
    assert items[1]["description"] == f"applied to {april['number']}"
    assert ledger(b, "acme") == got  # by key as well as by id
    paged = ledger(b, "acme", page="2", pageSize="3")["entries"]
    assert ([e["amount"] for e in paged["items"]], paged["totalCount"]) == (["3.00"], 4)


def test_a_deleted_drafts_returned_credit_is_an_entry(billow: Billow) -> None:
    b = billow
    subscribed(b, {**PROFILE, "workflow": {"invoicing": {"autoAdvance": False, "dueAfter": "P14D"}}})
    customer = b.ok("GET", "/api/v1/customers/acme")
    b.ok("POST", f"/api/v1/billing/customers/{customer['id']}/credits", {"amount": "20.00", "currency": "USD"})
    b.clock.set("2026-04-01T00:10:00Z")
    scheduled_run(b)
    (draft,) = invoices(b)
    b.clock.set("2026-04-02T08:00:00Z")
    assert b.call("DELETE", f"/api/v1/billing/invoices/{draft['id']}")[0] == 204
    got = ledger(b, "acme")
    assert [(e["amount"], e["invoiceId"], e["createdAt"]) for e in got["entries"]["items"]][1:] == [
        ("-20.00", draft["id"], "2026-04-01T00:10:00Z"), ("20.00", draft["id"], "2026-04-02T08:00:00Z")]
    assert got["entries"]["items"][2]["description"] == f"returned: {draft['number']} deleted"
    assert got["balance"] == "20.00"


def test_a_currency_without_entries_has_a_zero_balance(billow: Billow) -> None:
    b = billow
    subscribed(b)
    got = ledger(b, "acme", currency="JPY")
    assert (got["currency"], got["balance"], got["entries"]["items"], got["entries"]["totalCount"]) == ("JPY", "0", [], 0)


@pytest.mark.parametrize("query", [{}, {"currency": "usd"}, {"currency": "XXZ"}, {"currency": ""}, {"currency": "US"}])
def test_a_missing_or_bad_currency_is_a_400_naming_it(billow: Billow, query: dict[str, str]) -> None:
    b = billow
    subscribed(b)
    status, problem = b.call("GET", "/api/v1/billing/customers/acme/credits", query=query)
    assert status == 400, problem
    assert [e["field"] for e in problem["validationErrors"]] == ["currency"] and problem["detail"].startswith("currency")


def test_an_unknown_customer_is_a_404(billow: Billow) -> None:
    status, problem = billow.call("GET", "/api/v1/billing/customers/nobody/credits", query={"currency": "USD"})
    assert status == 404 and "nobody" in problem["detail"]
