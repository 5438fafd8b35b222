"""Apps (issue 16) through the unmodified `openmeter` Python client against a fresh `billow serve` whose Stripe is
the Stripe stand-in: the sandbox app and the default billing profile a fresh server has, the marketplace, a
Stripe app installed by API key, customer app data, the customer's Stripe data and portal session, a Checkout
session, and the Stripe app's own webhook delivered over HTTP to `billow serve`, paying the invoice it issued."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from openmeter import Client

from tests.e2e.conftest import Server
from tests.stripe_standin.server import StandIn


@pytest.fixture(scope="module")
def stripe_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, StandIn]]:
    standin = StandIn(api_key="sk_test_e2e_apps", webhook_secret="whsec_e2e_apps").start()
    tmp = tmp_path_factory.mktemp("apps")
    config = tmp / "billow.yaml"
    config.write_text(f"stripe_api_base: {standin.url}\nbilling_every_s: 0\n")
    srv = Server(tmp / "data", config).start()
    yield srv, standin
    srv.stop()
    standin.stop()


def ok(srv: Server, method: str, path: str, body: Any = None) -> Any:
    status, _, out = srv.request(method, path, body)
    assert status in (200, 201, 204), (method, path, status, out)
    return out


def test_a_fresh_server_has_the_sandbox_app_and_a_default_profile_on_it(stripe_server: tuple[Server, StandIn]) -> None:
    srv, _ = stripe_server
    client = Client(endpoint=srv.url)
    apps = client.apps.list()
    (sandbox,) = apps["items"]
    assert (sandbox["type"], sandbox["status"], apps.total_count) == ("sandbox", "ready", 1)
    assert client.apps.get(sandbox["id"])["id"] == sandbox["id"]
    (profile,) = ok(srv, "GET", "/api/v1/billing/profiles")["items"]
    assert profile["default"] is True
    assert {role: ref["id"] for role, ref in profile["apps"].items()} == dict.fromkeys(
        ("tax", "invoicing", "payment"), sandbox["id"])
    listings = client.marketplace.list()
    assert sorted(x["type"] for x in listings["items"]) == ["custom_invoicing", "sandbox", "stripe"]
    assert client.marketplace.get("stripe").install_methods == ["with_api_key"]


def test_stripe_app_through_the_client_and_its_webhook_over_http(stripe_server: tuple[Server, StandIn]) -> None:
    srv, standin = stripe_server
    client = Client(endpoint=srv.url)
    made = client.marketplace.install_with_api_key("stripe", {"apiKey": standin.api_key, "name": "Stripe"})
    app = made.app
    assert app["type"] == "stripe" and app["stripeAccountId"] == standin.account_id and app["livemode"] is False
    # The fresh server's default profile was on the sandbox app: the Stripe app's profile is the default now.
    assert sorted(made.default_for_capability_types) == ["calculateTax", "collectPayments", "invoiceCustomers"]
    (endpoint,) = standin.webhook_endpoints.values()
    assert endpoint["url"] == f"{srv.url}/api/v1/apps/{app['id']}/stripe/webhook"
    renamed = client.apps.update(app["id"], {"type": "stripe", "name": "Stripe US"})
    assert renamed["name"] == "Stripe US"
    client.app_stripe.update_stripe_api_key(app["id"], {"secretAPIKey": standin.api_key})

    cust = client.customers.create({"name": "Acme", "key": "acme", "primaryEmail": "ap@acme.test",
                                    "usageAttribution": {"subjectKeys": ["acme"]}})
    checkout = client.app_stripe.create_checkout_session({"customer": {"id": cust.id},
                                                          "options": {"currency": "USD"}})
    assert checkout.customer_id == cust.id and checkout.mode == "setup"
    stripe_customer = checkout.stripe_customer_id
    data = client.customer_stripe.get(cust.id)
    assert data.stripe_customer_id == stripe_customer
    client.customer_stripe.upsert(cust.id, {"stripeCustomerId": stripe_customer,
                                            "stripeDefaultPaymentMethodId": "pm_card_visa"})
    portal = client.customer_stripe.create_portal_session(cust.id, {"returnUrl": "https://acme.test/billing"})
    assert portal.stripe_customer_id == stripe_customer and portal.url.startswith(standin.url)
    listed = client.customer_apps.list_app_data(cust.id)
    assert {d["type"] for d in listed["items"]} == {"sandbox", "stripe"}

    # An invoice of a pending line, issued through the Stripe app (its key), paid by Stripe's webhook to billow serve.
    line = {"name": "Setup fee", "period": {"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z"},
            "invoiceAt": "2026-01-02T00:00:00Z", "price": {"type": "flat", "amount": "12.34"}}
    ok(srv, "POST", f"/api/v1/billing/customers/{cust.id}/invoices/pending-lines", {"currency": "USD", "lines": [line]})
    (invoice,) = ok(srv, "POST", "/api/v1/billing/invoices/invoice", {"customerId": cust.id})
    assert invoice["status"] == "payment_processing", invoice.get("validationIssues")
    assert invoice["workflow"]["apps"]["invoicing"]["id"] == app["id"]
    stripe_id = invoice["externalIds"]["invoicing"]
    assert standin.invoices[stripe_id]["customer"] == stripe_customer  # the customer Checkout made
    standin.webhook_url = endpoint["url"]
    assert standin.emit("invoice.paid", standin.invoices[stripe_id], secret="whsec_forged").status == 400
    assert ok(srv, "GET", f"/api/v1/billing/invoices/{invoice['id']}")["status"] == "payment_processing"
    assert standin.pay(stripe_id).status == 200
    assert ok(srv, "GET", f"/api/v1/billing/invoices/{invoice['id']}")["status"] == "paid"

    client.customer_apps.delete_app_data(cust.id, app["id"])
    assert srv.request("GET", f"/api/v1/customers/{cust.id}/stripe")[0] == 404
