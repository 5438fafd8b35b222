"""Known gap (not fixed: the fix is a product decision, see the report of 2026-12-06): a correction that lowers an
invoiced period (late usage with a negative value, a gauge read lower, a shortened in-advance period on an invoice
of its own) makes an invoice whose total is negative. `Invoice.issued` marks every invoice whose total is <= 0
`paid` at once, whatever the payment app, and the billing run applies prepaid credit only to a positive total
(`services/billing_run._prepare`): the amount owed back goes nowhere Billow keeps. Here April's usage (6.00) was
paid with prepaid credit; late usage of -300 tokens lowers it to 3.00: the correction invoice is -3.00 and `paid`,
the customer's prepaid balance stays 0.00 and June's invoice charges the full fee."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.billing.conftest import Billow
from tests.support.billing import invoices, scheduled_run, subscribed


@pytest.mark.xfail(strict=True, reason="a negative correction invoice is marked paid and gives no prepaid credit back")
def test_a_negative_correction_gives_back_the_prepaid_credit_that_paid_the_period(billow: Billow) -> None:
    b = billow
    subscribed(b)
    customer = b.ok("GET", "/api/v1/customers/acme")
    b.ok("POST", f"/api/v1/billing/customers/{customer['id']}/credits", {"amount": "100.00", "currency": "USD"})
    b.clock.set("2026-04-01T00:10:00Z")
    scheduled_run(b)  # April's fee 49.99, from the credit
    b.usage(600, "2026-04-05T10:00:00Z")
    b.clock.set("2026-05-01T00:10:00Z")
    scheduled_run(b)  # April's usage 6.00 and May's fee 49.99: 50.01 from the credit, 5.98 paid
    b.usage(-300, "2026-04-06T10:00:00Z")  # late: April's usage was 300 tokens, 3.00
    b.clock.set("2026-05-02T00:10:00Z")
    scheduled_run(b)
    correction = invoices(b)[-1]
    assert (correction["totals"]["total"], correction["status"]) == ("-3.00", "paid")  # what happens today
    balance = b.c.billing_store().credit_balance(b.c.settings.namespace, customer["id"], "USD")
    assert balance == Decimal("3.00")  # the 3.00 overpaid from prepaid credit is the customer's again
