"""Stripe webhooks: signature and timestamp verified, the five invoice events read, others ignored; the webhook
Lambda handler as API Gateway invokes it; and the whole loop: a billing run issues through Stripe, Stripe reports
the payment over HTTP, the invoice is paid in Billow."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from billow.adapters.sql_billing import SqlBillingStore
from billow.adapters.stripe_app import WebhookSignatureInvalid, parse_webhook
from billow.local.server import apigw_event
from functions.stripe_webhook.handler import lambda_handler as webhook
from tests.entitlements.conftest import Billow
from tests.stripe.conftest import billow_on_standin
from tests.stripe_standin.server import StandIn, sign
from tests.support.billing import PROFILE, scheduled_run, subscribed
from tests.support.webhook_receiver import WebhookReceiver

SECRET = "whsec_standin"
ROUTE = "/api/v1/apps/stripe/webhook"


def stripe_invoice(billow_id: str | None = "01JINV0000000000000000000A") -> dict[str, Any]:
    return {"id": "in_1", "object": "invoice", "status": "paid", "metadata": {"billow_invoice_id": billow_id} if billow_id else {}}


def event(type_: str, obj: dict[str, Any] | None = None, created: int = 1_780_000_000) -> str:
    return json.dumps({"id": "evt_1", "object": "event", "type": type_, "created": created,
                       "data": {"object": obj if obj is not None else stripe_invoice()}})


@pytest.mark.parametrize(("type_", "status"), [("invoice.paid", "paid"), ("invoice.payment_failed", "payment_failed"),
                                                ("invoice.marked_uncollectible", "uncollectible"),
                                                ("invoice.voided", "voided"), ("invoice.finalized", "finalized")])
def test_invoice_events_become_payment_events(type_: str, status: str) -> None:
    payload = event(type_)
    got = parse_webhook(payload.encode(), sign(payload, SECRET, int(time.time())), SECRET)
    assert got is not None
    assert (got.event_id, got.billow_invoice_id, got.stripe_invoice_id, got.status) == (
        "evt_1", "01JINV0000000000000000000A", "in_1", status)
    assert got.at == datetime.fromtimestamp(1_780_000_000, UTC)


def test_bad_signature_stale_timestamp_and_other_events() -> None:
    payload = event("invoice.paid")
    now = int(time.time())
    for header, why in [(sign(payload, "whsec_other", now), "No signatures found matching"),
                        (sign(payload.replace("paid", "voided"), SECRET, now), "No signatures found matching"),
                        (sign(payload, SECRET, now - 600), "Timestamp outside the tolerance zone"),
                        ("garbage", "Unable to extract timestamp"), ("", "missing Stripe-Signature")]:
        with pytest.raises(WebhookSignatureInvalid, match=why) as info:
            parse_webhook(payload.encode(), header, SECRET)
        assert info.value.status == 400
    other = event("customer.created", {"id": "cus_1", "object": "customer"})
    assert parse_webhook(other.encode(), sign(other, SECRET, now), SECRET) is None
    foreign = event("invoice.paid", stripe_invoice(billow_id=None))  # an invoice Billow did not create
    assert parse_webhook(foreign.encode(), sign(foreign, SECRET, now), SECRET) is None


# -- the Lambda handler ----------------------------------------------------------------------------------------
def lambda_event(payload: str, signature: str, *, b64: bool = False) -> dict[str, Any]:
    ev = apigw_event("POST", ROUTE, {"content-type": "application/json", "stripe-signature": signature},
                     payload.encode(), "127.0.0.1")
    if b64:
        ev["body"], ev["isBase64Encoded"] = base64.b64encode(payload.encode()).decode(), True
    return ev


@pytest.fixture
def billow_stripe(tmp_path: Path) -> Iterator[tuple[Billow, StandIn]]:
    """A Billow whose Stripe app talks to the stand-in, which delivers its webhooks over HTTP to the handler."""
    standin = StandIn(webhook_secret=SECRET).start()
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), WebhookReceiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    standin.webhook_url = f"http://127.0.0.1:{receiver.server_address[1]}{ROUTE}"
    with billow_on_standin(tmp_path, standin, "2026-01-01T00:00:00Z", SECRET) as b:
        b.ok("POST", "/api/v1/subjects", [{"key": "customer_1"}])
        yield b, standin
    receiver.shutdown()
    receiver.server_close()
    standin.stop()


def test_handler_refuses_bad_signatures_and_acknowledges_other_events(billow_stripe: tuple[Billow, StandIn]) -> None:
    payload = event("invoice.paid")
    out = webhook(lambda_event(payload, sign(payload, "whsec_wrong", int(time.time()))), None)
    assert out["statusCode"] == 400 and out["headers"]["Content-Type"] == "application/problem+json"
    body = json.loads(out["body"])
    assert "Stripe-Signature does not verify" in body["detail"] and body["instance"] == ROUTE
    other = event("charge.succeeded", {"id": "ch_1", "object": "charge"})
    out = webhook(lambda_event(other, sign(other, SECRET, int(time.time())), b64=True), None)
    assert (out["statusCode"], json.loads(out["body"])) == (200, {"received": True, "ignored": "charge.succeeded"})


def test_invoice_issued_through_stripe_is_paid_by_the_webhook(billow_stripe: tuple[Billow, StandIn]) -> None:
    b, standin = billow_stripe
    subscribed(b, {**PROFILE, "apps": {"tax": "sandbox", "invoicing": "stripe", "payment": "stripe"}})
    b.usage(1500, "2026-04-05T10:00:00Z")
    b.clock.set("2026-05-01T00:10:00Z")
    scheduled_run(b)  # April's fee and usage, May's fee in advance: one invoice, issued through Stripe
    store = b.c.store(SqlBillingStore)
    (doc,) = store.list_invoices("stripe")
    assert doc["status"] == "payment_processing", doc.get("validationIssues")
    stripe_id = doc["externalIds"]["invoicing"]
    stripe_inv = standin.invoices[stripe_id]
    assert stripe_inv["metadata"]["billow_invoice_id"] == doc["id"] and stripe_inv["status"] == "open"
    assert Decimal(stripe_inv["total"]) / 100 == Decimal(doc["totals"]["total"]) == Decimal("112.48")  # to the cent
    assert sorted(ln["amount"] for ln in stripe_inv["lines"]["data"]) == [250, 1000, 4999, 4999]
    finalized = standin.emit("invoice.finalized", stripe_inv)
    assert finalized.status == 200  # acknowledged, the invoice unchanged
    assert store.get_invoice("stripe", doc["id"])["status"] == "payment_processing"
    forged = standin.emit("invoice.paid", stripe_inv, secret="whsec_guess")
    assert forged.status == 400  # a bad signature records nothing
    assert store.get_invoice("stripe", doc["id"])["status"] == "payment_processing"
    paid = standin.pay(stripe_id)  # Stripe charged the card: invoice.paid over HTTP
    assert paid.status == 200
    assert store.get_invoice("stripe", doc["id"])["status"] == "paid"
    again = standin.emit("invoice.paid", standin.invoices[stripe_id])
    assert again.status == 200 and store.get_invoice("stripe", doc["id"])["status"] == "paid"  # redelivery


def test_a_negative_invoice_through_stripe_is_credited_by_stripe_not_by_billow(
        billow_stripe: tuple[Billow, StandIn]) -> None:
    """A correction that lowers an invoiced period makes a negative invoice (tests/billing/test_negative_correction.py).
    Through Stripe, Stripe keeps what it owes the customer: it books the negative total to the customer's Stripe
    balance and applies it to the next Stripe invoice. Billow must not also add it to the prepaid balance, or the
    customer would get it twice (the Stripe app says so: StripeInvoicing.keeps_customer_credit)."""
    b, standin = billow_stripe
    store = b.c.store(SqlBillingStore)
    subscribed(b, {**PROFILE, "apps": {"tax": "sandbox", "invoicing": "stripe", "payment": "stripe"}})
    customer = b.ok("GET", "/api/v1/customers/acme")
    b.ok("POST", f"/api/v1/billing/customers/{customer['id']}/credits", {"amount": "100.00", "currency": "USD"})
    b.clock.set("2026-04-01T00:10:00Z")
    scheduled_run(b)  # April's fee 49.99, from Billow's prepaid credit (a negative item on the Stripe invoice)
    b.usage(600, "2026-04-05T10:00:00Z")
    b.clock.set("2026-05-01T00:10:00Z")
    scheduled_run(b)  # April's usage 6.00 and May's fee 49.99: 50.01 from the credit, 5.98 through Stripe
    assert store.credit_balance("stripe", customer["id"], "USD") == 0
    b.usage(-300, "2026-04-06T10:00:00Z")  # late: April's usage was 300 tokens, 3.00
    b.clock.set("2026-05-02T00:10:00Z")
    scheduled_run(b)
    correction = store.list_invoices("stripe")[-1]
    assert (correction["totals"]["total"], correction["status"]) == ("-3.00", "paid"), correction.get("validationIssues")
    stripe_inv = standin.invoices[correction["externalIds"]["invoicing"]]
    assert (stripe_inv["total"], stripe_inv["amount_due"], stripe_inv["status"]) == (-300, 0, "paid")
    assert standin.customers[stripe_inv["customer"]]["balance"] == -300  # Stripe keeps the 3.00 for the customer
    assert store.credit_balance("stripe", customer["id"], "USD") == 0  # and Billow does not credit it again
    assert [e for e in store.credit_entries("stripe", customer["id"], "USD")
            if e.get("invoiceId") == correction["id"]] == []
    status, served = b.call("GET", f"/api/v1/billing/invoices/{correction['id']}/documents/html")
    page = base64.b64decode(served).decode()
    assert status == 200 and ("Nothing is due. The 3.00 USD this invoice owes you is held as your customer balance "
                              "with Stripe, which applies it to your next invoice there.") in page
    assert "prepaid credit" not in page and "Paid in full" not in page
    b.clock.set("2026-06-01T00:10:00Z")
    scheduled_run(b)  # June's fee: Billow bills it in full, Stripe applies the customer's balance to it, once
    june = store.list_invoices("stripe")[-1]
    assert (june["totals"]["creditsTotal"], june["totals"]["total"]) == ("0", "49.99")
    june_stripe = standin.invoices[june["externalIds"]["invoicing"]]
    assert (june_stripe["total"], june_stripe["amount_due"]) == (4999, 4699)
    assert standin.customers[june_stripe["customer"]]["balance"] == 0


@pytest.mark.parametrize(("then", "status"), [("invoice.paid", "paid"), ("invoice.voided", "voided")])
def test_an_invoice_marked_uncollectible_can_still_be_paid_or_voided(billow_stripe: tuple[Billow, StandIn], then: str,
                                                                    status: str) -> None:
    """Stripe lets a customer pay an invoice marked uncollectible, and lets it be voided; OpenMeter's invoice
    state machine permits both from uncollectible. Billow answered 409 to the webhook (no payment to record from
    uncollectible): Stripe retries a refused delivery for three days, then gives up, and the invoice stayed
    uncollectible in Billow though the customer had paid it."""
    b, standin = billow_stripe
    subscribed(b, {**PROFILE, "apps": {"tax": "sandbox", "invoicing": "stripe", "payment": "stripe"}})
    b.clock.set("2026-04-01T00:10:00Z")
    scheduled_run(b)
    store = b.c.store(SqlBillingStore)
    (doc,) = store.list_invoices("stripe")
    stripe_inv = standin.invoices[doc["externalIds"]["invoicing"]]
    assert standin.emit("invoice.payment_failed", stripe_inv).status == 200
    assert store.get_invoice("stripe", doc["id"])["statusDetails"]["failed"] is True
    assert standin.emit("invoice.marked_uncollectible", stripe_inv).status == 200
    assert store.get_invoice("stripe", doc["id"])["status"] == "uncollectible"
    got = standin.emit(then, stripe_inv)
    assert got.status == 200, got
    after = store.get_invoice("stripe", doc["id"])
    assert after["status"] == status
    assert (after.get("voidedAt") is not None) == (status == "voided")  # when Stripe voided it, as a void in Billow
    assert standin.emit("invoice.payment_failed", stripe_inv).status == 200  # a late failure changes nothing now
    assert store.get_invoice("stripe", doc["id"])["status"] == status
