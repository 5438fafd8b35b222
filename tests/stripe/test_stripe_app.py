"""The Stripe app against the stand-in: customers sync once, an invoice reaches Stripe with Billow's total to the
cent, retries after lost answers create nothing twice, and the stand-in really refuses malformed requests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from decimal import Decimal
from typing import Any

import pytest

from billow.adapters.stripe_app import (
    StripeApp,
    StripeAppError,
    StripeTotalMismatch,
    StripeUnavailable,
    from_minor,
    to_minor,
)
from tests.stripe.conftest import INVOICE, invoice
from tests.stripe_standin import shapes
from tests.stripe_standin.server import StandIn


def raw(standin: StandIn, method: str, path: str, form: str = "", *, key: str | None = None,
        api_key: str | None = None) -> tuple[int, dict[str, Any]]:
    """A request as it goes over the wire, bypassing the stripe library."""
    headers = {"Authorization": f"Bearer {api_key or standin.api_key}", "Stripe-Version": standin.api_version,
               "Content-Type": "application/x-www-form-urlencoded"}
    if key:
        headers["Idempotency-Key"] = key
    req = urllib.request.Request(standin.url + path, data=form.encode() if method == "POST" else None,
                                 method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - the local stand-in
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_customer_sync_is_idempotent_and_reuses_a_known_id(standin: StandIn, app: StripeApp) -> None:
    first = app.ensure_customer(INVOICE["customer"])
    again = app.ensure_customer(INVOICE["customer"])  # e.g. a retry after a timeout
    assert first == again and list(standin.customers) == [first]
    cust = standin.customers[first]
    assert cust["metadata"] == {"billow_customer_id": INVOICE["customer"]["id"], "billow_customer_key": "acme"}
    assert (cust["name"], cust["email"]) == ("Acme Inc", "ap@acme.test")
    posts = len(standin.posts("/v1/customers"))
    assert app.ensure_customer(INVOICE["customer"], existing_id=first) == first
    assert len(standin.posts("/v1/customers")) == posts  # a known id is looked up, not created again
    other = {"id": "01JCUS0000000000000000000B", "name": "Beta"}
    created = app.ensure_customer(other, existing_id="cus_gone")  # Stripe no longer has it: a new one
    assert created != first and standin.customers[created]["metadata"]["billow_customer_id"] == other["id"]


def test_invoice_reaches_stripe_with_billow_total_to_the_cent(standin: StandIn, app: StripeApp) -> None:
    cus = app.ensure_customer(INVOICE["customer"])
    out = app.issue_invoice(INVOICE, cus)
    inv = standin.invoices[out["id"]]
    assert out == {"id": inv["id"], "number": inv["number"], "status": "open",
                   "hostedInvoiceUrl": inv["hosted_invoice_url"], "total": "57.24"}
    assert inv["total"] == 5724 and Decimal(out["total"]) == Decimal(INVOICE["totals"]["total"])
    # Billed by children (tier 2 net of its discount), the flat fee by itself, the credit as a negative item.
    assert [(ln["description"], ln["amount"], ln["metadata"].get("billow_line_id")) for ln in inv["lines"]["data"]] == [
        ("Tokens: usage in tier 1", 1000, "01JLIN0000000000000000000B"),
        ("Tokens: usage in tier 2", 225, "01JLIN0000000000000000000C"),
        ("Base fee", 4999, "01JLIN0000000000000000000D"),
        ("Prepaid credit applied", -500, None)]
    assert inv["lines"]["data"][0]["period"] == {"start": 1775001600, "end": 1777593600}  # April 2026, UTC
    assert inv["metadata"]["billow_invoice_id"] == INVOICE["id"] and inv["currency"] == "usd"
    created = standin.posts("/v1/invoices")[0]["params"]
    assert (created["auto_advance"], created["pending_invoice_items_behavior"]) == (False, "exclude")
    assert inv["auto_advance"] is True  # set at finalisation: Stripe collects from here
    assert all(r["idempotencyKey"] for r in standin.requests if r["method"] == "POST")


def test_send_invoice_and_other_currencies_are_exact(standin: StandIn, app: StripeApp) -> None:
    cus = app.ensure_customer(INVOICE["customer"])
    yen = invoice(id="01JINV0000000000000000000J", currency="JPY",
                  lines=[{"id": "01JLIN000000000000000000JY", "name": "API calls", "children": [],
                          "totals": {"amount": "1234", "discountsTotal": "0", "total": "1234"}}],
                  totals={"amount": "1234", "discountsTotal": "0", "creditsTotal": "0", "total": "1234"})
    out = app.issue_invoice(yen, cus, collection_method="send_invoice", days_until_due=14)
    inv = standin.invoices[out["id"]]
    assert (inv["total"], inv["currency"], inv["collection_method"], inv["days_until_due"]) == (1234, "jpy",
                                                                                                 "send_invoice", 14)
    assert out["total"] == "1234"
    assert to_minor("1.230", "KWD") == 1230 and from_minor(1230, "KWD") == Decimal("1.230")
    assert to_minor("5", "ISK") == 500  # Stripe keeps ISK two-decimal, whole krónur only
    assert to_minor("-5.00", "USD") == -500
    with pytest.raises(StripeAppError, match="multiples of 10"):
        to_minor("1.235", "KWD")
    with pytest.raises(StripeAppError, match="more decimals"):
        to_minor("0.001", "USD")
    with pytest.raises(TypeError):
        to_minor(0.1, "USD")  # type: ignore[arg-type]


def test_totals_that_do_not_add_up_are_refused_before_anything_is_sent(standin: StandIn, app: StripeApp) -> None:
    bad = invoice(totals={**INVOICE["totals"], "total": "57.25"})
    with pytest.raises(StripeAppError, match="57.24 USD, but its total is 57.25"):
        app.issue_invoice(bad, "cus_x")
    assert standin.requests == []


def test_stripe_total_differing_from_billow_is_caught_before_finalising(standin: StandIn, app: StripeApp) -> None:
    cus = app.ensure_customer(INVOICE["customer"])
    standin.inject("unavailable", path="/finalize")
    with pytest.raises(StripeUnavailable):
        StripeApp(standin.api_key, standin.url, max_network_retries=0).issue_invoice(INVOICE, cus)
    (draft,) = standin.invoices.values()
    # Before the retry, someone adds a cent to the draft in Stripe behind Billow's back.
    status, _ = raw(standin, "POST", "/v1/invoiceitems", f"customer={cus}&invoice={draft['id']}&amount=1&currency=usd")
    assert status == 200
    with pytest.raises(StripeTotalMismatch, match="totals 57.25 USD, Billow's total is 57.24 USD; it was left as a draft"):
        app.issue_invoice(INVOICE, cus)
    assert draft["status"] == "draft" and not standin.posts(f"/v1/invoices/{draft['id']}/finalize")[1:]


def test_retry_after_a_timeout_creates_no_second_invoice_or_item(standin: StandIn) -> None:
    no_retries = StripeApp(standin.api_key, standin.url, timeout=0.3, max_network_retries=0)
    cus = no_retries.ensure_customer(INVOICE["customer"])
    standin.inject("timeout", path="/v1/invoiceitems", delay=0.6)  # Stripe adds the item, Billow stops waiting
    with pytest.raises(StripeUnavailable, match="retrying is safe"):
        no_retries.issue_invoice(INVOICE, cus)
    assert len(standin.items) == 1
    standin.inject("drop", path="/v1/invoiceitems")  # the retry's replay of that item is lost too
    with pytest.raises(StripeUnavailable):
        no_retries.issue_invoice(INVOICE, cus)
    assert len(standin.items) == 1
    standin.inject("unavailable", path="/v1/invoices", times=1)  # then a 503 before anything is done
    with pytest.raises(StripeUnavailable):
        no_retries.issue_invoice(INVOICE, cus)
    out = no_retries.issue_invoice(INVOICE, cus)  # the application retries (Billow's "retry" action)
    assert len(standin.invoices) == 1 and len(standin.items) == 4
    assert standin.invoices[out["id"]]["total"] == 5724 and out["status"] == "open"
    creates = [r for r in standin.posts("/v1/invoices") if r["path"] == "/v1/invoices" and r.get("status") == 200]
    assert len(creates) == 3 and len({r["idempotencyKey"] for r in creates}) == 1  # replayed, not repeated


def test_the_library_retries_lost_answers_with_the_same_key(standin: StandIn, app: StripeApp) -> None:
    cus = app.ensure_customer(INVOICE["customer"])
    standin.inject("drop", path="/finalize")
    standin.inject("unavailable", path="/v1/invoiceitems")
    out = app.issue_invoice(INVOICE, cus)  # one call: the stripe library retries with the same Idempotency-Key
    assert out["total"] == "57.24" and len(standin.invoices) == 1 and len(standin.items) == 4
    finalize = [r for r in standin.requests if r["path"].endswith("/finalize")]
    assert len(finalize) == 2 and finalize[0]["idempotencyKey"] == finalize[1]["idempotencyKey"]


def test_void(standin: StandIn, app: StripeApp) -> None:
    out = app.issue_invoice(INVOICE, app.ensure_customer(INVOICE["customer"]))
    assert app.void_invoice(out["id"]) == {"id": out["id"], "status": "void"}
    assert app.void_invoice(out["id"])["status"] == "void"  # again: nothing to do
    with pytest.raises(StripeAppError, match="No such invoice"):
        app.void_invoice("in_missing")


def test_standin_refuses_requests_stripe_would_refuse(standin: StandIn, app: StripeApp) -> None:
    cus = app.ensure_customer(INVOICE["customer"])
    _, draft = raw(standin, "POST", "/v1/invoices", f"customer={cus}&auto_advance=false")
    base = f"customer={cus}&invoice={draft['id']}&currency=usd"
    cases = [
        (f"{base}&amount=100&amout=1", "parameter_unknown", "amout"),
        (f"{base}&amount=1.50", "parameter_invalid_integer", "amount"),
        (f"{base}&amount=100&period[start]=1", "parameter_missing", "period[end]"),
        (f"{base}&amount=100&metadata[k][deep]=1", None, "metadata[k]"),
        (f"{base}&amount=100&tax_behavior=sometimes", None, "tax_behavior"),
        (f"{base}&amount=100&discountable=maybe", None, "discountable"),
    ]
    for form, code, param in cases:
        status, body = raw(standin, "POST", "/v1/invoiceitems", form)
        assert status == 400, form
        assert body["error"]["type"] == "invalid_request_error" and body["error"].get("param") == param, body
        assert body["error"].get("code") == code
    assert standin.invoices[draft["id"]]["lines"]["data"] == []  # nothing refused was applied
    status, body = raw(standin, "POST", "/v1/customers", "name=x", api_key="sk_test_wrong")
    assert status == 401 and "Invalid API Key" in body["error"]["message"]
    assert raw(standin, "POST", "/v1/customers", "name=a", key="k1")[0] == 200
    status, body = raw(standin, "POST", "/v1/customers", "name=b", key="k1")
    assert status == 400 and body["error"]["type"] == "idempotency_error"
    status, body = raw(standin, "POST", "/v1/invoices", f"customer={cus}&collection_method=send_invoice")
    assert status == 400 and body["error"]["param"] == "days_until_due"
    # Through the library too: a parameter Stripe does not know is refused with the param named.
    import stripe

    client = stripe.StripeClient(standin.api_key, base_addresses={"api": standin.url})
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.invoice_items.create({"customer": cus, "amount": 1, "currency": "usd", "colour": "red"})  # type: ignore[typeddict-unknown-key]
    assert info.value.param == "colour" and info.value.http_status == 400


def test_request_shapes_match_the_installed_stripe_library() -> None:
    committed = shapes.load()
    assert committed == shapes.build(), "stripe was upgraded: run python -m tests.stripe_standin.shapes"
    invoiceitems = committed["operations"]["POST /v1/invoiceitems"]["properties"]
    assert invoiceitems["amount"] == {"type": "integer"}
    assert invoiceitems["period"]["required"] == ["end", "start"]
