"""A customer on a usage plan is invoiced at period end without a person acting: one correct invoice whose lines
trace back to meters and events; re-runs change nothing; late usage becomes a correction; the lifecycle
refuses what its state does not allow."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from billow.adapters.sql_billing import SqlBillingStore
from tests.billing.conftest import Billow
from tests.support.billing import PROFILE, invoices, scheduled_run, subscribed
from tests.support.catalog import plan_body, published, setup


def d(v: Any) -> Decimal:
    return Decimal(str(v))


def test_usage_plan_is_invoiced_at_period_end_and_reruns_change_nothing(billow: Billow) -> None:
    b = billow
    sub = subscribed(b)
    b.clock.set("2026-04-01T00:10:00Z")
    run = scheduled_run(b)
    (first,) = invoices(b)
    assert run["invoices"] == [first["id"]]
    # In advance: April's base fee; nothing for usage yet.
    assert [(ln["name"], ln["totals"]["total"]) for ln in first["lines"]] == [("Base fee", "49.99")]
    assert (first["status"], first["number"], first["totals"]["total"]) == ("paid", "ACME-0001", "49.99")
    b.usage(600, "2026-04-05T10:00:00Z")
    b.usage(900, "2026-04-28T10:00:00Z")
    b.usage(50, "2026-05-01T00:05:00Z")  # May's usage: not on April's invoice
    b.clock.set("2026-04-30T23:59:00Z")
    assert scheduled_run(b)["invoices"] == []  # April has not ended
    b.clock.set("2026-05-01T00:10:00Z")
    scheduled_run(b)
    second = invoices(b)[1]
    tokens = next(ln for ln in second["lines"] if ln["featureKey"] == "tokens")
    # Graduated: 1,000 x 0.01 + 500 x 0.005 = 12.50; May's base fee 49.99 in advance.
    assert [(ch["name"], ch["quantity"], ch["totals"]["total"]) for ch in tokens["children"]] == [
        ("Tokens: usage price for tier 1", "1000", "10.00"), ("Tokens: usage price for tier 2", "500", "2.50")]
    assert tokens["period"] == {"from": "2026-04-01T00:00:00Z", "to": "2026-05-01T00:00:00Z"}
    assert tokens["subscription"]["id"] == sub["id"] and tokens["quantity"] == "1500"
    assert d(second["totals"]["total"]) == Decimal("62.49")
    assert second["issuedAt"] == "2026-05-01T00:10:00Z" and second["dueAt"] == "2026-05-15T00:10:00Z"
    # The line traces back to its meter and events: the same query over the line's period gives its quantity.
    q = b.ok("GET", "/api/v1/meters/tokens/query", query={"from": tokens["period"]["from"],
                                                        "to": tokens["period"]["to"], "subject": "customer_1"})
    assert sum(d(r["value"]) for r in q["data"]) == Decimal(tokens["quantity"])
    # Idempotent: running again bills nothing.
    assert scheduled_run(b)["invoices"] == [] and len(invoices(b)) == 2
    # Late usage for April arrives: billed as a correction on the next invoice (100 x 0.005 in tier 2).
    b.usage(100, "2026-04-29T09:00:00Z")
    b.clock.set("2026-05-02T00:00:00Z")
    scheduled_run(b)
    third = invoices(b)[2]
    (corr,) = [ch for ln in third["lines"] for ch in ln["children"]]
    assert (corr["name"], corr["quantity"], corr["totals"]["total"]) == ("Tokens: usage price for tier 2 (correction)", "100", "0.50")
    assert d(third["totals"]["total"]) == Decimal("0.50")
    assert scheduled_run(b)["invoices"] == []


def test_mid_cycle_upgrade_invoices_the_prorated_difference(billow: Billow) -> None:
    b = billow
    sub = subscribed(b)
    published(b, plan_body("pro", "199"))
    b.clock.set("2026-04-01T00:10:00Z")
    scheduled_run(b)  # basic's April fee, 49.99, in advance
    b.usage(600, "2026-04-05T10:00:00Z")
    b.clock.set("2026-04-17T12:00:00Z")
    new = b.ok("POST", f"/api/v1/subscriptions/{sub['id']}/change", {"timing": "immediate", "plan": {"key": "pro"}})["next"]
    b.clock.set("2026-04-17T12:10:00Z")
    scheduled_run(b)
    inv = invoices(b)[1]
    lines = {(ln["subscription"]["id"], ln["name"]): ln["totals"]["total"] for ln in inv["lines"]}
    # basic served 396 of 720 h: 49.99 x 0.55 = 27.49, so 22.50 of the 49.99 paid comes back; its usage to the
    # change, 600 tokens = 6.00, is due now; pro's fee for the rest of April: 199 x 0.45 = 89.55.
    assert lines == {(sub["id"], "Base fee"): "-22.50", (sub["id"], "Tokens"): "6.00", (new["id"], "Base fee"): "89.55"}
    assert d(inv["totals"]["total"]) == Decimal("73.05")


def test_lifecycle_manual_approval_credits_and_bad_transitions(billow: Billow) -> None:
    b = billow
    manual = {**PROFILE, "workflow": {"invoicing": {"autoAdvance": False}}}
    subscribed(b, manual)
    customer = b.ok("GET", "/api/v1/customers/acme")
    status, out = b.call("POST", f"/api/v1/billing/customers/{customer['id']}/credits", {"amount": "20.001", "currency": "USD"})
    assert status == 400 and "amount" in out["detail"]
    credit = b.ok("POST", f"/api/v1/billing/customers/{customer['id']}/credits", {"amount": "20.00", "currency": "USD"})
    assert credit["balance"] == "20.00"
    b.clock.set("2026-04-01T00:10:00Z")
    (inv,) = b.ok("POST", "/api/v1/billing/invoices/invoice", {"customerId": "acme"})
    assert inv["statusDetails"]["extendedStatus"] == "draft.manual_approval_needed"
    assert (inv["totals"]["creditsTotal"], inv["totals"]["total"]) == ("20.00", "29.99")  # 49.99 - 20 prepaid
    assert set(inv["statusDetails"]["availableActions"]) == {"approve", "delete", "void"}
    status, out = b.call("POST", f"/api/v1/billing/invoices/{inv['id']}/advance")
    assert status == 409 and "available actions: approve, delete, void" in out["detail"]
    b.ok("PUT", f"/api/v1/billing/invoices/{inv['id']}", {"description": "April"})
    paid = b.ok("POST", f"/api/v1/billing/invoices/{inv['id']}/approve")
    assert (paid["status"], paid["description"], paid["statusDetails"]["immutable"]) == ("paid", "April", True)
    for action in ("advance", "approve", "void", "retry"):
        assert b.call("POST", f"/api/v1/billing/invoices/{inv['id']}/{action}")[0] == 409
    status, out = b.call("PUT", f"/api/v1/billing/invoices/{inv['id']}", {"description": "edited"})
    assert status == 409 and "cannot be changed" in out["detail"]
    assert b.ok("GET", f"/api/v1/billing/invoices/{inv['id']}")["description"] == "April"
    # The credit is used up: the next invoice pays in full.
    b.clock.set("2026-05-01T00:10:00Z")
    (may,) = b.ok("POST", "/api/v1/billing/invoices/invoice", {"customerId": "acme"})
    assert may["totals"]["creditsTotal"] == "0" and may["totals"]["total"] == "49.99"
    voided = b.ok("POST", f"/api/v1/billing/invoices/{may['id']}/void")
    assert voided["status"] == "voided" and b.call("POST", f"/api/v1/billing/invoices/{may['id']}/approve")[0] == 409


def test_bad_billing_input(billow: Billow) -> None:
    b = billow
    setup(b)
    bad = [({**PROFILE, "supplier": {}}, "supplier.name"),
           ({**PROFILE, "workflow": {"invoicing": {"dueAfter": "soon"}}}, "workflow.invoicing.dueAfter"),
           ({**PROFILE, "apps": {"invoicing": "paypal"}}, "apps.invoicing"),
           ({**PROFILE, "workflow": {"payment": {"collectionMethod": "cash"}}}, "workflow.payment.collectionMethod")]
    for body, field in bad:
        status, out = b.call("POST", "/api/v1/billing/profiles", body)
        assert status == 400 and field in out["detail"], (field, out)
    status, out = b.call("POST", "/api/v1/billing/invoices/invoice", {"customerId": "nobody"})
    assert status == 404
    # No profile yet: the run says why it skipped the customer instead of inventing one.
    b.clock.set("2026-03-31T00:00:00Z")
    published(b, plan_body("basic", "10"))
    b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme"})
    run = scheduled_run(b)
    assert run["invoices"] == [] and "no billing profile" in run["skipped"][0]["reason"]
    assert b.call("GET", "/api/v1/billing/invoices/01ARZ3NDEKTSV4RRFFQ69G5FAV")[0] == 404


@pytest.fixture
def pg_billow(pg_database: str, tmp_path: Path, namespace: str) -> Iterator[Billow]:
    """The billing harness with its meta store on PostgreSQL (its own database), usage in memory."""
    from tests.entitlements.conftest import harness

    with harness(tmp_path, namespace, meta_store_url=pg_database) as b:
        yield b


def test_overlapping_runs_bill_each_period_once_on_postgres(pg_billow: Billow) -> None:
    """PostgreSQL lets the four runs' transactions really interleave (SQLite serialises writers)."""
    test_overlapping_runs_bill_each_period_once(pg_billow)


def test_overlapping_runs_bill_each_period_once(billow: Billow) -> None:
    b = billow
    subscribed(b)
    b.clock.set("2026-04-01T00:10:00Z")
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def go() -> None:
        try:
            barrier.wait()
            scheduled_run(b)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    (only,) = invoices(b)
    assert only["totals"]["total"] == "49.99"
    store = b.c.store(SqlBillingStore)
    assert [m.rev for m in store.marks_for(b.c.settings.namespace).values()] == [1]


def test_one_off_lines_custom_invoicing_hooks_documents_and_the_portal(billow: Billow, tmp_path: Any) -> None:
    import base64
    import io

    from pypdf import PdfReader

    b = billow
    custom = {**PROFILE, "apps": {"tax": "sandbox", "invoicing": "custom_invoicing", "payment": "custom_invoicing"}}
    subscribed(b, custom)
    customer = b.ok("GET", "/api/v1/customers/acme")
    pending = f"/api/v1/billing/customers/{customer['id']}/invoices/pending-lines"
    line = {"name": "Onboarding", "period": {"from": "2026-04-01T00:00:00Z", "to": "2026-04-02T00:00:00Z"},
            "invoiceAt": "2026-04-01T00:05:00Z", "price": {"type": "flat", "amount": "150"}}
    usage_line = {"name": "Extra tokens", "featureKey": "tokens", "invoiceAt": "2026-04-01T00:05:00Z",
                  "period": {"from": "2026-03-31T00:00:00Z", "to": "2026-04-01T00:00:00Z"},
                  "price": {"type": "unit", "amount": "0.02"}}
    status, out = b.call("POST", pending, {"currency": "USD", "lines": [{**line, "price": {"type": "flat", "amount": "-1"}}]})
    assert status == 400 and "lines[0].price.amount" in out["detail"]
    status, out = b.call("POST", pending, {"currency": "USD", "lines": [{**usage_line, "featureKey": "nope"}]})
    assert status == 400 and "lines[0].featureKey" in out["detail"]
    status, out = b.call("POST", pending, {"currency": "EUR", "lines": [line]})
    assert status == 400 and out["detail"].startswith("currency") and "USD" in out["detail"]
    added = b.ok("POST", pending, {"currency": "USD", "lines": [line, usage_line]})
    assert added["isInvoiceNew"] is True and added["invoice"]["status"] == "gathering"
    b.usage(250, "2026-03-31T12:00:00Z")
    b.clock.set("2026-04-01T00:10:00Z")
    scheduled_run(b)
    inv = next(i for i in invoices(b) if i["status"] != "gathering")
    names = {ln["name"]: ln["totals"]["total"] for ln in inv["lines"]}
    # April's base fee 49.99 + the one-off 150 + 250 tokens x 0.02 = 5.00 on the same invoice.
    assert names == {"Base fee": "49.99", "Onboarding": "150.00", "Extra tokens": "5.00"}
    assert inv["totals"]["total"] == "204.99"
    # Custom invoicing: the invoice waits for the user's system, which issues it under its own number...
    assert inv["statusDetails"]["extendedStatus"] == "issuing.syncing"
    assert b.call("POST", f"/api/v1/apps/custom-invoicing/{inv['id']}/payment/status", {"trigger": "paid"})[0] == 409
    b.ok("POST", f"/api/v1/apps/custom-invoicing/{inv['id']}/issuing/synchronized",
         {"invoicing": {"invoiceNumber": "ERP-77", "invoiceId": "erp-1"}})  # 204, as OpenMeter answers (issue 16)
    issued = b.ok("GET", f"/api/v1/billing/invoices/{inv['id']}")
    assert (issued["status"], issued["externalIds"]["invoiceNumber"]) == ("payment_processing", "ERP-77")
    # ...and reports the payment.
    status, out = b.call("POST", f"/api/v1/apps/custom-invoicing/{inv['id']}/payment/status", {"trigger": "cash"})
    assert status == 400 and "trigger" in out["detail"]
    b.ok("POST", f"/api/v1/apps/custom-invoicing/{inv['id']}/payment/status", {"trigger": "paid"})
    paid = b.ok("GET", f"/api/v1/billing/invoices/{inv['id']}")
    assert paid["status"] == "paid"
    b.ok("POST", f"/api/v1/apps/custom-invoicing/{inv['id']}/payment/status", {"trigger": "paid"})
    assert b.ok("GET", f"/api/v1/billing/invoices/{inv['id']}")["status"] == "paid"
    # Documents: HTML and PDF rendered on first request, the same ones afterwards.
    docs = b.ok("GET", f"/api/v1/billing/invoices/{inv['id']}/documents")
    # Served by the API, not a file:// path on the server's disk (issue 22).
    assert docs["pdf"] == f"http://localhost/api/v1/billing/invoices/{inv['id']}/documents/pdf"
    from billow.local.server import apigw_event
    from functions.api.handler import lambda_handler as api

    got = api(apigw_event("GET", docs["pdf"].removeprefix("http://localhost"), {}, b"", "127.0.0.1"), None)
    assert got["statusCode"] == 200 and got["headers"]["Content-Type"] == "application/pdf"
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(base64.b64decode(got["body"]))).pages)
    assert inv["number"] in text and "Onboarding" in text and "204.99" in text
    assert b.ok("GET", f"/api/v1/billing/invoices/{inv['id']}/documents") == docs
    # The customer sees it in the portal (issued invoices only).
    token = b.ok("POST", "/api/v1/portal/tokens", {"subject": "customer_1"})["token"]
    from billow.local.server import apigw_event
    from functions.api.handler import lambda_handler as api
    from functions.authorizer.handler import lambda_handler as authorizer

    event = apigw_event("GET", "/api/v1/portal/invoices", {"authorization": f"Bearer {token}"}, b"", "127.0.0.1")
    allowed = authorizer(event, None)  # what API Gateway's authorizer step hands the API function
    assert allowed["isAuthorized"] is True
    event["requestContext"]["authorizer"] = {"lambda": allowed["context"]}
    out = api(event, None)
    assert [(i["number"], i["status"], i["totals"]["total"]) for i in json.loads(out["body"])] == [
        (inv["number"], "paid", "204.99")]
