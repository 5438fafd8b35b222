"""A Stripe sync whose process died (SIGKILL, a Lambda timeout) is taken up again by the billing run.

Approving a draft moves it to `issuing.syncing`, saved, and then calls Stripe (customer, draft, items, finalise); the
outcome is saved after. A process killed in between left the invoice in `issuing.syncing` for ever: not failed, so
no `retry` action, and nothing took it up again (tests/e2e/test_stripe_kill_loop.py: 6 of 10 invoices stuck after 7
kills, seed 1). The invoice here is left exactly as such a process leaves it in the store: `issuing.syncing`, with
nothing in Stripe yet, or with Stripe's invoice made and finalised already."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from billow.adapters.sql_billing import SqlBillingStore
from billow.adapters.stripe_app import StripeApp
from billow.domain.invoices import Invoice
from tests.entitlements.conftest import Billow
from tests.stripe.conftest import billow_on_standin
from tests.stripe.test_webhooks import billow_stripe  # noqa: F401 - the fixture
from tests.stripe_standin.server import StandIn
from tests.support.billing import PROFILE, scheduled_run

SECRET = "whsec_standin"
STRIPE = {**PROFILE, "workflow": {"invoicing": {"autoAdvance": False, "dueAfter": "P14D"}},
          "apps": {"tax": "sandbox", "invoicing": "stripe", "payment": "stripe"}}


@pytest.fixture
def billow(tmp_path: Path) -> Iterator[tuple[Billow, StandIn]]:
    standin = StandIn(webhook_secret=SECRET).start()
    with billow_on_standin(tmp_path, standin, "2026-05-01T00:00:00Z", SECRET) as b:
        yield b, standin
    standin.stop()


def killed_mid_sync(b: Billow) -> dict[str, Any]:
    """A draft of 12.34 USD, approved by a process that died during the sync: stored as `issuing.syncing`."""
    b.ok("POST", "/api/v1/billing/profiles", STRIPE)
    cust = b.ok("POST", "/api/v1/customers", {"key": "acme", "name": "Acme", "currency": "USD"})
    period = {"from": "2026-04-01T00:00:00Z", "to": "2026-04-02T00:00:00Z"}
    b.ok("POST", f"/api/v1/billing/customers/{cust['id']}/invoices/pending-lines", {"currency": "USD", "lines": [
        {"name": "fee", "period": period, "invoiceAt": period["to"],
         "rateCard": {"price": {"type": "flat", "amount": "12.34"}}}]})
    (draft,) = b.ok("POST", "/api/v1/billing/invoices/invoice", {"customerId": cust["id"]})
    assert draft["statusDetails"]["extendedStatus"] == "draft.manual_approval_needed"
    store = b.c.store(SqlBillingStore)
    inv = Invoice.from_json(store.get_invoice("stripe", draft["id"]))
    inv.set_status("issuing.syncing")  # what services.invoices._issue saves before it calls the app
    inv.touch(b.clock.now())
    store.put_invoice("stripe", inv.to_json(), expect_status="draft")
    return inv.to_json()


@pytest.mark.parametrize("stripe_done", [False, True])
def test_a_sync_killed_midway_is_resumed_by_the_billing_run_once(billow: tuple[Billow, StandIn],
                                                                  stripe_done: bool) -> None:
    b, standin = billow
    doc = killed_mid_sync(b)
    if stripe_done:  # the dead process had got as far as Stripe's finalised invoice
        app = StripeApp(standin.api_key, standin.url)
        app.issue_invoice(doc, app.ensure_customer(doc["customer"]))
    store = b.c.store(SqlBillingStore)
    b.clock.set("2026-05-01T00:00:05Z")
    scheduled_run(b)  # a sync may still be running elsewhere: left alone for a while
    assert store.get_invoice("stripe", doc["id"])["statusDetails"]["extendedStatus"] == "issuing.syncing"
    b.clock.set("2026-05-01T00:01:00Z")
    scheduled_run(b)
    after = store.get_invoice("stripe", doc["id"])
    assert after["statusDetails"]["extendedStatus"] == "payment_processing.pending", after.get("validationIssues")
    (stripe_inv,) = standin.invoices.values()  # one Stripe invoice, not two
    assert after["externalIds"]["invoicing"] == stripe_inv["id"] and stripe_inv["status"] == "open"
    assert Decimal(stripe_inv["total"]) / 100 == Decimal(after["totals"]["total"]) == Decimal("12.34")
    assert len(stripe_inv["lines"]["data"]) == 1 and len(standin.customers) == 1
    b.clock.set("2026-05-01T00:02:00Z")
    scheduled_run(b)  # nothing more
    assert store.get_invoice("stripe", doc["id"]) == after and len(standin.invoices) == 1


@pytest.mark.parametrize("stripe_done", [False, True])
def test_a_sync_dead_for_longer_than_stripe_keeps_idempotency_keys_is_failed_not_repeated(
        billow: tuple[Billow, StandIn], stripe_done: bool) -> None:
    """Stripe keeps an idempotency key 24 hours: a dead sync taken up later could make a second Stripe invoice beside
    the dead process's. Past SYNC_RESUME_WITHIN (23 h) the billing run marks it failed, naming what to look for in
    Stripe, and sends nothing; a person retries (the retry action) or voids. Before, the run repeated it whatever its
    age."""
    b, standin = billow
    doc = killed_mid_sync(b)
    if stripe_done:
        app = StripeApp(standin.api_key, standin.url)
        app.issue_invoice(doc, app.ensure_customer(doc["customer"]))
    sent = (len(standin.invoices), len(standin.customers))
    requests = len(standin.requests)
    store = b.c.store(SqlBillingStore)
    b.clock.set("2026-05-02T00:00:00Z")  # 24 hours after the sync began, nothing ran meanwhile (the host was down)
    scheduled_run(b)
    after = store.get_invoice("stripe", doc["id"])
    assert after["statusDetails"]["extendedStatus"] == "issuing.failed", after
    (issue,) = after["validationIssues"]
    assert issue["code"] == "app_sync_failed" and f"billow_invoice_id={doc['id']}" in issue["message"], issue
    assert "retry" in after["statusDetails"]["availableActions"], after["statusDetails"]
    assert (len(standin.invoices), len(standin.customers), len(standin.requests)) == (*sent, requests)  # nothing sent
    scheduled_run(b)  # and left so
    assert store.get_invoice("stripe", doc["id"]) == after


def test_a_payment_recorded_while_the_documents_render_is_kept(billow_stripe: tuple[Billow, StandIn]) -> None:  # noqa: F811
    """The billing run renders the documents of issued invoices (jobs.render_pending_documents: the invoices read
    first, each rendered, ~0.1 s a PDF, then saved with its documents ready). Stripe's invoice.paid webhook landing in
    between was overwritten: the invoice saved from the stale read went back from paid to payment_processing, and
    Stripe, answered 200, never sends it again (the kill loop: SK7-0002 paid, then payment_processing.pending for
    good, seed 1, its invoice.paid notification delivered for an invoice Billow says is unpaid)."""
    b, standin = billow_stripe
    b.clock.set("2026-05-01T00:00:00Z")
    killed_mid_sync(b)
    b.clock.set("2026-05-01T00:01:00Z")
    scheduled_run(b)  # issued through Stripe (documents pending: this run rendered them, so make them pending again)
    store = b.c.store(SqlBillingStore)
    (doc,) = [d for d in store.list_invoices("stripe") if d["status"] != "gathering"]
    doc["documents"] = {"status": "pending"}
    store.put_invoice("stripe", doc)
    stale = store.get_invoice("stripe", doc["id"])  # as the run's list read it
    assert stale["status"] == "payment_processing"
    assert standin.pay(doc["externalIds"]["invoicing"]).status == 200  # meanwhile, Stripe says it is paid
    assert store.get_invoice("stripe", doc["id"])["status"] == "paid"
    b.c.billing_apps().documents(stale)  # the run renders and saves what it read
    after = store.get_invoice("stripe", doc["id"])
    assert after["status"] == "paid" and after["documents"]["status"] == "ready"


def test_a_payment_whose_process_died_before_its_notification_notifies_on_stripes_redelivery(
        billow_stripe: tuple[Billow, StandIn]) -> None:  # noqa: F811
    """Stripe's invoice.paid: the invoice is saved paid, then the invoice.paid notification event is made. A process
    killed in between answered Stripe nothing, so Stripe sends the webhook again; that found the invoice paid already
    and returned, and the invoice.paid event was never made (no receiver ever heard of the payment)."""
    b, standin = billow_stripe
    b.clock.set("2026-05-01T00:00:00Z")
    channel = b.ok("POST", "/api/v1/notification/channels", {"type": "WEBHOOK", "name": "hook",
                                                              "url": "http://127.0.0.1:9/hook", "disabled": False})
    b.ok("POST", "/api/v1/notification/rules", {"type": "invoice.paid", "name": "paid", "channels": [channel["id"]]})
    killed_mid_sync(b)
    b.clock.set("2026-05-01T00:01:00Z")
    scheduled_run(b)
    store = b.c.store(SqlBillingStore)
    (doc,) = [d for d in store.list_invoices("stripe") if d["status"] != "gathering"]
    stripe_id = doc["externalIds"]["invoicing"]
    inv = Invoice.from_json(doc)  # what services.invoices.record_payment saved before the process died
    inv.set_status("paid")
    inv.touch(b.clock.now())
    store.put_invoice("stripe", inv.to_json(), expect_status="payment_processing")

    def paid_events() -> list[str]:
        return [e["id"] for e in b.ok("GET", "/api/v1/notification/events", query={"pageSize": "100"})["items"]
                if e["type"] == "invoice.paid" and e["payload"]["data"]["id"] == doc["id"]]

    assert paid_events() == []
    assert standin.pay(stripe_id).status == 200  # Stripe's redelivery (it got no answer)
    (event_id,) = paid_events()
    assert standin.emit("invoice.paid", standin.invoices[stripe_id]).status == 200  # and once more: still one event
    assert paid_events() == [event_id]


def test_an_invoice_whose_process_died_before_its_notification_is_notified_by_the_run(
        billow: tuple[Billow, StandIn]) -> None:
    """An invoice is saved issued, then its invoice.created event is made, then its documents are rendered. A process
    killed between the first two left an issued invoice whose event was never made, and nothing made it later (a
    resent approve is a 409: the invoice is issued). The billing run renders the pending documents: it makes the
    missing event first, once."""
    b, standin = billow
    killed_mid_sync(b)
    b.clock.set("2026-05-01T00:01:00Z")
    scheduled_run(b)  # issued; no rule yet, so no event: as if the process died before making it
    store = b.c.store(SqlBillingStore)
    (doc,) = [d for d in store.list_invoices("stripe") if d["status"] != "gathering"]
    doc["documents"] = {"status": "pending"}  # the dead process never got to render them
    store.put_invoice("stripe", doc)
    channel = b.ok("POST", "/api/v1/notification/channels", {"type": "WEBHOOK", "name": "hook",
                                                              "url": "http://127.0.0.1:9/hook"})
    b.ok("POST", "/api/v1/notification/rules", {"type": "invoice.created", "name": "created",
                                                "channels": [channel["id"]]})

    def created() -> list[str]:
        return [e["id"] for e in b.ok("GET", "/api/v1/notification/events", query={"pageSize": "100"})["items"]
                if e["type"] == "invoice.created" and e["payload"]["data"]["id"] == doc["id"]]

    assert created() == []
    b.clock.set("2026-05-01T00:02:00Z")
    scheduled_run(b)
    (event_id,) = created()
    assert store.get_invoice("stripe", doc["id"])["documents"]["status"] == "ready"
    doc = store.get_invoice("stripe", doc["id"])
    doc["documents"] = {"status": "pending"}
    store.put_invoice("stripe", doc)
    scheduled_run(b)  # rendered again: no second event
    assert created() == [event_id]
