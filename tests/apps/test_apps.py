"""Apps as entities (issue 16): installed apps with ULIDs, the marketplace and its installs (sandbox, custom
invoicing, Stripe by API key against the Stripe stand-in), billing profiles that name apps by id, the Stripe
app's own signed webhook, customer app data, the Stripe customer portal and Checkout sessions."""

from __future__ import annotations

from typing import Any

from billow.adapters.sql_billing import SqlBillingStore
from billow.ids import is_ulid
from tests.apps.conftest import Billow
from tests.stripe_standin.server import StandIn
from tests.support.billing import PROFILE, scheduled_run, subscribed

APPS = "/api/v1/apps"
LISTINGS = "/api/v1/marketplace/listings"


def fields(out: Any) -> list[str]:
    return [e["field"] for e in out.get("validationErrors", [])]


def refused(b: Billow, method: str, path: str, body: Any, field: str, status: int = 400) -> dict[str, Any]:
    got, out = b.call(method, path, body)
    assert got == status, (method, path, body, got, out)
    assert out["status"] == status and out["title"]
    if status == 400:
        assert field in fields(out) or field in out["detail"], (field, out)
    return out  # type: ignore[no-any-return]


def test_a_namespace_has_the_sandbox_app_as_an_entity_and_the_marketplace(billow: Billow) -> None:
    b = billow
    page = b.ok("GET", APPS)
    (sandbox,) = page["items"]
    assert page["totalCount"] == 1 and is_ulid(sandbox["id"]) and sandbox["type"] == "sandbox"
    assert sandbox["status"] == "ready" and sandbox["listing"]["type"] == "sandbox"
    assert b.ok("GET", APPS)["items"] == [sandbox]  # listed again: still one sandbox app
    assert b.ok("GET", f"{APPS}/{sandbox['id']}") == sandbox
    renamed = b.ok("PUT", f"{APPS}/{sandbox['id']}", {"type": "sandbox", "name": "Test mode", "metadata": {"a": "b"}})
    assert (renamed["name"], renamed["metadata"], renamed["id"]) == ("Test mode", {"a": "b"}, sandbox["id"])
    refused(b, "PUT", f"{APPS}/{sandbox['id']}", {"type": "stripe", "name": "x"}, "type")
    refused(b, "PUT", f"{APPS}/{sandbox['id']}", {"type": "sandbox", "name": ""}, "name")
    refused(b, "PUT", f"{APPS}/{sandbox['id']}", {"type": "sandbox", "name": "n", "metadata": {"a": 1}}, "metadata")
    refused(b, "GET", f"{APPS}/01ARZ3NDEKTSV4RRFFQ69G5FAV", None, "", 404)
    refused(b, "GET", f"{APPS}/not-an-id", None, "", 404)

    listings = b.ok("GET", LISTINGS)
    assert sorted(x["type"] for x in listings["items"]) == ["custom_invoicing", "sandbox", "stripe"]
    stripe = b.ok("GET", f"{LISTINGS}/stripe")
    assert stripe["installMethods"] == ["with_api_key"]
    assert {c["type"] for c in stripe["capabilities"]} == {"collectPayments", "calculateTax", "invoiceCustomers"}
    refused(b, "GET", f"{LISTINGS}/paypal", None, "", 404)
    # OAuth2 needs a Stripe Connect platform Billow does not have: a clear 400 pointing at the API-key install.
    out = refused(b, "GET", f"{LISTINGS}/stripe/install/oauth2", None, "type")
    assert "install/apikey" in out["detail"]
    refused(b, "POST", f"{LISTINGS}/stripe/install", {}, "type")  # Stripe needs its key


def test_custom_invoicing_install_and_profiles_that_name_apps_by_id(billow: Billow) -> None:
    b = billow
    refused(b, "POST", f"{LISTINGS}/custom_invoicing/install", {"name": 5}, "name")
    refused(b, "POST", f"{LISTINGS}/custom_invoicing/install", {"createBillingProfile": "yes"}, "createBillingProfile")
    made = b.ok("POST", f"{LISTINGS}/custom_invoicing/install", {"name": "ERP", "createBillingProfile": False})
    app = made["app"]
    assert made["defaultForCapabilityTypes"] == [] and is_ulid(app["id"]) and app["type"] == "custom_invoicing"
    assert (app["name"], app["enableDraftSyncHook"], app["enableIssuingSyncHook"]) == ("ERP", False, False)
    assert b.ok("GET", "/api/v1/billing/profiles")["items"] == []  # createBillingProfile: false
    hooks = b.ok("PUT", f"{APPS}/{app['id']}", {"type": "custom_invoicing", "name": "ERP",
                                                  "enableDraftSyncHook": False, "enableIssuingSyncHook": True})
    assert hooks["enableIssuingSyncHook"] is True
    refused(b, "PUT", f"{APPS}/{app['id']}", {"type": "custom_invoicing", "name": "ERP"}, "enableDraftSyncHook")

    sandbox = next(a for a in b.ok("GET", APPS)["items"] if a["type"] == "sandbox")
    # OpenMeter's BillingProfileAppsCreate: app ids (ULIDs), which Billow refused before.
    profile = b.ok("POST", "/api/v1/billing/profiles", {
        **PROFILE, "apps": {"tax": sandbox["id"], "invoicing": app["id"], "payment": app["id"]}})
    assert profile["apps"] == {"tax": {"id": sandbox["id"], "type": "sandbox"},
                               "invoicing": {"id": app["id"], "type": "custom_invoicing"},
                               "payment": {"id": app["id"], "type": "custom_invoicing"}}
    assert b.ok("GET", f"/api/v1/billing/profiles/{profile['id']}")["apps"] == profile["apps"]
    # expand=apps: the apps themselves (OpenMeter's BillingProfileApps).
    expanded = b.ok("GET", f"/api/v1/billing/profiles/{profile['id']}", query={"expand": "apps"})["apps"]
    assert expanded["tax"] == b.ok("GET", f"{APPS}/{sandbox['id']}") and expanded["invoicing"]["name"] == "ERP"
    (listed,) = b.ok("GET", "/api/v1/billing/profiles", query={"expand": "apps"})["items"]
    assert listed["apps"] == expanded
    refused(b, "GET", "/api/v1/billing/profiles?expand=everything", None, "expand")
    # Type names still work (backwards compatible): the namespace's installed app of that type.
    by_type = b.ok("POST", "/api/v1/billing/profiles", {**PROFILE, "default": False, "name": "By type"})
    assert by_type["apps"]["invoicing"] == {"id": sandbox["id"], "type": "sandbox"}
    refused(b, "POST", "/api/v1/billing/profiles", {**PROFILE, "apps": {"invoicing": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}},
            "apps.invoicing")
    refused(b, "POST", "/api/v1/billing/profiles", {**PROFILE, "apps": {"invoicing": "paypal"}}, "apps.invoicing")
    # An app a profile uses cannot be uninstalled; one no profile uses can.
    assert refused(b, "DELETE", f"{APPS}/{app['id']}", None, "", 409)["status"] == 409
    spare = b.ok("POST", f"{LISTINGS}/sandbox/install", {"name": "Spare", "createBillingProfile": False})["app"]
    assert b.call("DELETE", f"{APPS}/{spare['id']}")[0] == 204
    assert b.call("GET", f"{APPS}/{spare['id']}")[0] == 404
    assert spare["id"] not in [a["id"] for a in b.ok("GET", APPS)["items"]]

    # The invoice follows the profile's custom invoicing app (by id): it waits for the ERP's call-back.
    b.ok("DELETE", "/api/v1/billing/profiles/" + by_type["id"])
    subscribed_to = subscribed_no_profile(b)
    b.clock.set("2026-04-01T00:10:00Z")
    scheduled_run(b)
    (inv,) = b.ok("GET", "/api/v1/billing/invoices")["items"]
    assert inv["workflow"]["apps"]["invoicing"] == {"id": app["id"], "type": "custom_invoicing"}
    assert inv["status"] == "issuing" and subscribed_to


def subscribed_no_profile(b: Billow) -> dict[str, Any]:
    from tests.support.catalog import plan_body, published, setup

    setup(b)
    b.clock.set("2026-03-31T00:00:00Z")
    published(b, plan_body("basic", "49.99"))
    return b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme",  # type: ignore[no-any-return]
                                                  "timing": "2026-04-01T00:00:00Z"})


def install_stripe(b: Billow, standin: StandIn, **body: Any) -> dict[str, Any]:
    return b.ok("POST", f"{LISTINGS}/stripe/install/apikey", {"apiKey": standin.api_key, **body})  # type: ignore[no-any-return]


def test_stripe_installed_by_api_key_is_checked_against_stripe(billow: Billow, stripe: tuple[StandIn, str]) -> None:
    b, (standin, _) = billow, stripe
    refused(b, "POST", f"{LISTINGS}/stripe/install/apikey", {}, "apiKey")
    refused(b, "POST", f"{LISTINGS}/stripe/install/apikey", {"apiKey": "pk_test_publishable"}, "apiKey")
    out = refused(b, "POST", f"{LISTINGS}/stripe/install/apikey", {"apiKey": "sk_test_wrong_key_123"}, "apiKey")
    assert "Stripe refused the API key" in out["detail"]
    refused(b, "POST", f"{LISTINGS}/sandbox/install/apikey", {"apiKey": standin.api_key}, "type")
    assert [a["type"] for a in b.ok("GET", APPS)["items"]] == ["sandbox"]  # nothing installed by the refusals

    made = install_stripe(b, standin, name="Stripe EU")
    app = made["app"]
    assert app["type"] == "stripe" and app["stripeAccountId"] == standin.account_id and app["livemode"] is False
    assert app["maskedAPIKey"] == "sk_test_***din" and standin.api_key not in str(b.ok("GET", APPS))
    (endpoint,) = standin.webhook_endpoints.values()
    assert endpoint["url"].endswith(f"/api/v1/apps/{app['id']}/stripe/webhook")
    assert "invoice.paid" in endpoint["enabled_events"]
    # createBillingProfile (default true): a profile on the app, the default one (there was none).
    (profile,) = b.ok("GET", "/api/v1/billing/profiles")["items"]
    ref = {"id": app["id"], "type": "stripe"}
    assert profile["default"] and profile["apps"] == {"tax": ref, "invoicing": ref, "payment": ref}
    assert sorted(made["defaultForCapabilityTypes"]) == ["calculateTax", "collectPayments", "invoiceCustomers"]

    # The API key: replaced only by one that opens the same Stripe account.
    refused(b, "PUT", f"{APPS}/{app['id']}/stripe/api-key", {"secretAPIKey": "sk_test_other_account"},
            "secretAPIKey")
    refused(b, "PUT", f"{APPS}/{app['id']}/stripe/api-key", {}, "secretAPIKey")
    sandbox = next(a for a in b.ok("GET", APPS)["items"] if a["type"] == "sandbox")
    refused(b, "PUT", f"{APPS}/{sandbox['id']}/stripe/api-key", {"secretAPIKey": standin.api_key}, "id")
    assert b.call("PUT", f"{APPS}/{app['id']}/stripe/api-key", {"secretAPIKey": standin.api_key})[0] == 204
    same = b.ok("PUT", f"{APPS}/{app['id']}", {"type": "stripe", "name": "Stripe EU 2",
                                                "secretAPIKey": standin.api_key})
    assert same["name"] == "Stripe EU 2" and same["maskedAPIKey"] == app["maskedAPIKey"]


def test_invoice_through_an_installed_stripe_app_is_paid_by_its_own_webhook(billow: Billow,
                                                                            stripe: tuple[StandIn, str]) -> None:
    """The settings hold no Stripe key: the invoice goes out with the app's key, and the payment comes back on
    /api/v1/apps/{id}/stripe/webhook, verified with the secret Stripe gave the app's endpoint."""
    b, (standin, receiver) = billow, stripe
    app = install_stripe(b, standin, createBillingProfile=False)["app"]
    subscribed(b, {**PROFILE, "apps": {"tax": app["id"], "invoicing": app["id"], "payment": app["id"]}})
    b.clock.set("2026-04-01T00:10:00Z")
    scheduled_run(b)
    store = b.c.store(SqlBillingStore)
    (doc,) = store.list_invoices(b.c.namespace)
    assert doc["status"] == "payment_processing", doc.get("validationIssues")
    stripe_id = doc["externalIds"]["invoicing"]
    assert standin.invoices[stripe_id]["metadata"]["billow_invoice_id"] == doc["id"]
    # The Stripe customer issuing made is the customer's Stripe app data from now on (portal, next invoices).
    assert b.ok("GET", "/api/v1/customers/acme/stripe")["stripeCustomerId"] == standin.invoices[stripe_id]["customer"]

    standin.webhook_url = f"{receiver}/api/v1/apps/{app['id']}/stripe/webhook"
    forged = standin.emit("invoice.paid", standin.invoices[stripe_id], secret="whsec_standin")  # another secret
    assert forged.status == 400 and store.get_invoice(b.c.namespace, doc["id"])["status"] == "payment_processing"
    paid = standin.pay(stripe_id)
    assert paid.status == 200
    assert store.get_invoice(b.c.namespace, doc["id"])["status"] == "paid"
    # No such Stripe app: 404 (and the sandbox app has no Stripe webhook).
    sandbox = next(a for a in b.ok("GET", APPS)["items"] if a["type"] == "sandbox")
    for other in ("01ARZ3NDEKTSV4RRFFQ69G5FAV", sandbox["id"]):
        standin.webhook_url = f"{receiver}/api/v1/apps/{other}/stripe/webhook"
        assert standin.emit("invoice.paid", standin.invoices[stripe_id]).status == 404


def test_customer_apps_stripe_data_portal_and_checkout(billow: Billow, stripe: tuple[StandIn, str]) -> None:
    b, (standin, _) = billow, stripe
    customer = b.ok("POST", "/api/v1/customers", {"key": "acme", "name": "Acme", "primaryEmail": "ap@acme.test",
                                                  "usageAttribution": {"subjectKeys": ["customer_1"]}})
    base = f"/api/v1/customers/{customer['id']}"
    (sandbox_data,) = b.ok("GET", f"{base}/apps")["items"]
    assert sandbox_data["type"] == "sandbox" and sandbox_data["app"]["type"] == "sandbox"
    # Without a Stripe app: a clear 409, not a 500.
    assert refused(b, "GET", f"{base}/stripe", None, "", 409)["status"] == 409
    refused(b, "PUT", f"{base}/apps", [{"type": "stripe", "stripeCustomerId": "cus_1"}], "[0].type")
    app = install_stripe(b, standin)["app"]
    refused(b, "PUT", f"{base}/apps", {"type": "stripe"}, "body")
    refused(b, "PUT", f"{base}/apps", [{"type": "paypal"}], "[0].type")
    refused(b, "PUT", f"{base}/apps", [{"type": "stripe"}], "[0].stripeCustomerId")
    refused(b, "PUT", f"{base}/apps", [{"type": "stripe", "id": "x", "stripeCustomerId": "cus_1"}], "[0].id")
    assert b.call("GET", f"{base}/apps", query={"type": "paypal"})[0] == 400
    refused(b, "GET", "/api/v1/customers/nobody/apps", None, "", 404)

    # The Stripe customer must exist in the app's Stripe account.
    refused(b, "PUT", f"{base}/apps", [{"type": "stripe", "stripeCustomerId": "cus_nobody"}], "[0].stripeCustomerId")
    refused(b, "PUT", f"{base}/stripe", {"stripeCustomerId": "cus_nobody"}, "stripeCustomerId")
    refused(b, "POST", "/api/v1/stripe/checkout/sessions",
            {"customer": {"key": "acme"}, "options": {}, "stripeCustomerId": "cus_nobody"}, "stripeCustomerId")
    assert b.call("GET", f"{base}/stripe")[0] == 404  # nothing recorded
    stripe_customer = standin._create_customer({"email": "ap@acme.test"})["id"]
    (item,) = b.ok("PUT", f"{base}/apps", [{"type": "stripe", "stripeCustomerId": stripe_customer}])
    assert (item["id"], item["stripeCustomerId"], item["app"]["id"]) == (app["id"], stripe_customer, app["id"])
    assert {d["type"] for d in b.ok("GET", f"{base}/apps")["items"]} == {"sandbox", "stripe"}
    assert [d["type"] for d in b.ok("GET", f"{base}/apps", query={"type": "stripe"})["items"]] == ["stripe"]
    got = b.ok("GET", "/api/v1/customers/acme/stripe")  # by key too
    assert got["stripeCustomerId"] == stripe_customer and got["id"] == app["id"]
    refused(b, "PUT", f"{base}/stripe", {"stripeCustomerId": "nope"}, "stripeCustomerId")
    refused(b, "PUT", f"{base}/stripe", {"stripeCustomerId": stripe_customer, "stripeDefaultPaymentMethodId": 7},
            "stripeDefaultPaymentMethodId")
    put = b.ok("PUT", f"{base}/stripe", {"stripeCustomerId": stripe_customer, "stripeDefaultPaymentMethodId": "pm_1"})
    assert put["stripeDefaultPaymentMethodId"] == "pm_1"

    refused(b, "POST", f"{base}/stripe/portal", {"returnUrl": "not a url"}, "returnUrl")
    session = b.ok("POST", f"{base}/stripe/portal", {"returnUrl": "https://acme.test/billing", "locale": "de"})
    assert session["stripeCustomerId"] == stripe_customer and session["url"].startswith(standin.url)
    assert (session["returnUrl"], session["locale"], session["livemode"]) == ("https://acme.test/billing", "de", False)
    assert session["id"] in standin.sessions

    # Checkout (setup mode) for an existing customer by key, and for a customer created with it.
    refused(b, "POST", "/api/v1/stripe/checkout/sessions", {"customer": {"key": "acme"}}, "options")
    refused(b, "POST", "/api/v1/stripe/checkout/sessions", {"customer": {"key": "nobody"}, "options": {}},
            "customer.key")
    refused(b, "POST", "/api/v1/stripe/checkout/sessions",
            {"customer": {"key": "acme"}, "options": {"currency": "dollars"}}, "options.currency")
    refused(b, "POST", "/api/v1/stripe/checkout/sessions",
            {"customer": {"key": "acme"}, "options": {"uiMode": "popup"}}, "options.uiMode")
    refused(b, "POST", "/api/v1/stripe/checkout/sessions",
            {"customer": {"key": "acme"}, "options": {}, "appId": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}, "appId")
    out = b.ok("POST", "/api/v1/stripe/checkout/sessions", {
        "customer": {"key": "acme"}, "options": {"currency": "EUR", "successURL": "https://acme.test/ok",
                                                 "clientReferenceID": "cart-7"}})
    assert out["customerId"] == customer["id"] and out["stripeCustomerId"] == stripe_customer
    assert out["mode"] == "setup" and out["setupIntentId"].startswith("seti_") and out["currency"] == "EUR"
    assert (out["successURL"], out["clientReferenceId"], out["status"]) == ("https://acme.test/ok", "cart-7", "open")
    sent = standin.sessions[out["sessionId"]]
    assert sent["metadata"] == {"billow_customer_id": customer["id"], "billow_app_id": app["id"]}
    fresh = b.ok("POST", "/api/v1/stripe/checkout/sessions", {
        "appId": app["id"], "customer": {"key": "newco", "name": "NewCo", "usageAttribution": {"subjectKeys": ["customer_2"]}},
        "options": {"uiMode": "embedded", "returnURL": "https://newco.test/back"}})
    newco = b.ok("GET", "/api/v1/customers/newco")
    assert fresh["customerId"] == newco["id"] and fresh["clientSecret"] and "url" not in fresh
    assert standin.customers[fresh["stripeCustomerId"]]["metadata"]["billow_customer_id"] == newco["id"]
    assert b.ok("GET", "/api/v1/customers/newco/stripe")["stripeCustomerId"] == fresh["stripeCustomerId"]

    assert b.call("DELETE", f"{base}/apps/{app['id']}")[0] == 204
    assert b.call("GET", f"{base}/stripe")[0] == 404
    refused(b, "DELETE", f"{base}/apps/01ARZ3NDEKTSV4RRFFQ69G5FAV", None, "", 404)


def test_the_app_webhook_path_allows_post_only(billow: Billow) -> None:
    status, out = billow.call("GET", "/api/v1/apps/01ARZ3NDEKTSV4RRFFQ69G5FAV/stripe/webhook")
    assert status == 405 and "POST" in out["detail"]


def test_custom_invoicing_issuing_hook_and_profiles_naming_the_type(billow: Billow) -> None:
    """An installed custom invoicing app with enableIssuingSyncHook off issues at once (OpenMeter's default);
    a profile naming the type `custom_invoicing` gets such an app installed, waiting for the call-back as before."""
    b = billow
    by_type = b.ok("POST", "/api/v1/billing/profiles", {
        **PROFILE, "apps": {"tax": "sandbox", "invoicing": "custom_invoicing", "payment": "custom_invoicing"}})
    ref = by_type["apps"]["invoicing"]
    assert is_ulid(ref["id"]) and ref["type"] == "custom_invoicing" and by_type["apps"]["payment"] == ref
    app = b.ok("GET", f"{APPS}/{ref['id']}")
    assert (app["enableDraftSyncHook"], app["enableIssuingSyncHook"]) == (False, True)
    subscribed_no_profile(b)
    b.clock.set("2026-04-01T00:10:00Z")
    scheduled_run(b)
    (waiting,) = b.ok("GET", "/api/v1/billing/invoices")["items"]
    assert waiting["status"] == "issuing"  # until the ERP calls .../issuing/synchronized

    # The same app without the hook: the next invoice is issued at once, its payment still the ERP's to report.
    b.ok("PUT", f"{APPS}/{app['id']}", {"type": "custom_invoicing", "name": app["name"],
                                          "enableDraftSyncHook": False, "enableIssuingSyncHook": False})
    b.clock.set("2026-05-01T00:10:00Z")
    scheduled_run(b)
    (issued,) = [i for i in b.ok("GET", "/api/v1/billing/invoices")["items"] if i["id"] != waiting["id"]]
    assert issued["status"] == "payment_processing" and issued["workflow"]["apps"]["invoicing"] == ref


def test_uninstalling_a_stripe_app_removes_its_webhook_endpoint(billow: Billow, stripe: tuple[StandIn, str]) -> None:
    b, (standin, receiver) = billow, stripe
    app = install_stripe(b, standin, createBillingProfile=False)["app"]
    (endpoint_id,) = standin.webhook_endpoints
    assert b.call("DELETE", f"{APPS}/{app['id']}")[0] == 204
    assert standin.webhook_endpoints == {} and b.call("GET", f"{APPS}/{app['id']}")[0] == 404
    assert [r["path"] for r in standin.requests if r["method"] == "DELETE"] == [f"/v1/webhook_endpoints/{endpoint_id}"]
    standin.webhook_url = f"{receiver}/api/v1/apps/{app['id']}/stripe/webhook"
    assert standin.emit("invoice.paid", {"id": "in_1", "object": "invoice", "metadata": {}}).status == 404


def test_an_install_body_left_out_takes_the_defaults_and_a_null_one_is_refused(billow: Billow) -> None:
    """POST .../install takes an optional body (none: the listing's name, a billing profile). A JSON `null` body was
    taken for one left out and installed the app (201), where the operation's schema requires an object; the fuzz
    (schemathesis' negative mode) caught it at random. Now 400 naming the body, and nothing installed."""
    b = billow
    before = len(b.ok("GET", "/api/v1/apps")["items"])
    status, out = b.raw("POST", f"{LISTINGS}/custom_invoicing/install", b"null")
    assert status == 400 and "body" in fields(out), out
    assert len(b.ok("GET", "/api/v1/apps")["items"]) == before
    made = b.ok("POST", f"{LISTINGS}/custom_invoicing/install")
    assert made["app"]["name"] == "Custom Invoicing", made
    assert len(b.ok("GET", "/api/v1/apps")["items"]) == before + 1


def test_a_null_install_name_is_refused(billow: Billow) -> None:
    """MarketplaceInstallRequestPayload.name is a string, not nullable. A null one was taken for one left out and
    installed the app under the listing's name (200). Found by re-sending schema-fuzz bodies the server took with each
    optional field null. Now 400 naming name, and nothing installed."""
    b = billow
    before = len(b.ok("GET", "/api/v1/apps")["items"])
    status, out = b.raw("POST", f"{LISTINGS}/custom_invoicing/install", b'{"name": null}')
    assert status == 400 and "name" in fields(out), out
    assert len(b.ok("GET", "/api/v1/apps")["items"]) == before
