"""Smoke: what a new deployment must do, end to end, through the public API only (tests/smoke/conftest.py picks the
target). Every name carries this run's id, so the suite can run again and again against one namespace.

  keys         the admin key mints an ingest key and a read key (POST /api/v1/admin/keys); each works within its scope
  usage        a meter, events in, the total read back exactly
  warm sink    a meter created after the sink has stored usage: its events are counted too
  entitlement  a metered entitlement's value reflects the usage
  billing      a pending line, the billing run for one customer (POST /api/v1/billing/invoices/invoice) through the
               sandbox app, the invoice paid, its PDF and HTML documents readable"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.smoke.client import Client, wait_for

RUN = uuid.uuid4().hex[:8]
BATCH = "application/cloudevents-batch+json"
NOW = datetime.now(UTC).replace(microsecond=0)


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Keys:
    ingest: Client
    read: Client


@pytest.fixture(scope="module")
def keys(admin: Client) -> Iterator[Keys]:
    made = {scope: admin.ok("POST", "/api/v1/admin/keys", {"name": f"smoke {scope} {RUN}", "scopes": [scope]},
                            expect=(201,)) for scope in ("ingest", "read")}
    yield Keys(ingest=admin.with_token(made["ingest"]["token"]), read=admin.with_token(made["read"]["token"]))
    for doc in made.values():
        admin.ok("DELETE", f"/api/v1/admin/keys/{doc['id']}", expect=(204,))


def meter(admin: Client, slug: str, event_type: str) -> None:
    admin.ok("POST", "/api/v1/meters", {"slug": slug, "eventType": event_type, "aggregation": "SUM",
                                        "valueProperty": "$.tokens", "groupBy": {"model": "$.model"}}, expect=(201,))


def ingest(keys: Keys, event_type: str, subject: str, values: list[str]) -> Decimal:
    events = [{"specversion": "1.0", "id": f"{event_type}-{i}", "source": "smoke", "type": event_type,
               "subject": subject, "time": iso(NOW), "data": {"tokens": v, "model": "m1"}} for i, v in enumerate(values)]
    got = keys.ingest.request("POST", "/api/v1/events", events, BATCH)
    assert got.status == 204, got
    return sum((Decimal(v) for v in values), Decimal(0))


def total(keys: Keys, slug: str) -> Decimal:
    body = keys.read.ok("GET", f"/api/v1/meters/{slug}/query", query={"from": iso(NOW - timedelta(days=1))})
    return sum((Decimal(str(r["value"])) for r in body["data"]), Decimal(0))


@dataclass(frozen=True)
class Usage:
    slug: str
    subject: str
    total: Decimal


@pytest.fixture(scope="module")
def usage(admin: Client, keys: Keys, smoke_wait_s: float) -> Usage:
    """A meter and its events, read back: from here on the sink is warm (it has stored a batch)."""
    slug, subject = f"smoke_tokens_{RUN}", f"smoke_subject_{RUN}"
    meter(admin, slug, f"smoke.prompt.{RUN}")
    expected = ingest(keys, f"smoke.prompt.{RUN}", subject, ["0.1", "0.2", "1.5", "3"])
    wait_for(f"{slug} total", lambda: total(keys, slug), lambda t: t == expected, smoke_wait_s)
    return Usage(slug, subject, expected)


def test_auth_is_on_and_minted_keys_keep_to_their_scopes(admin: Client, keys: Keys) -> None:
    anonymous = admin.with_token(None).request("GET", "/api/v1/meters")
    assert anonymous.status == 401 and anonymous.headers["content-type"].startswith("application/problem+json")
    assert keys.read.request("GET", "/api/v1/meters").status == 200
    assert keys.read.request("POST", "/api/v1/events", [], BATCH).status == 403
    assert keys.ingest.request("GET", "/api/v1/meters").status == 403
    listed = {k["name"] for k in admin.ok("GET", "/api/v1/admin/keys")}
    assert {f"smoke ingest {RUN}", f"smoke read {RUN}"} <= listed


def test_ingested_usage_reads_back_exactly(keys: Keys, usage: Usage) -> None:
    assert total(keys, usage.slug) == usage.total == Decimal("4.8")
    body = keys.read.ok("GET", f"/api/v1/meters/{usage.slug}/query",
                        query={"from": iso(NOW - timedelta(days=1)), "groupBy": "model", "subject": usage.subject})
    assert [(r["subject"], r["groupBy"], Decimal(str(r["value"]))) for r in body["data"]] == [
        (usage.subject, {"model": "m1"}, Decimal("4.8"))]


def test_a_warm_sink_counts_a_meter_created_after_it_started(admin: Client, keys: Keys, usage: Usage,
                                                             smoke_wait_s: float) -> None:
    slug, event_type = f"smoke_late_{RUN}", f"smoke.late.{RUN}"
    meter(admin, slug, event_type)
    expected = ingest(keys, event_type, usage.subject, ["2", "0.25"])
    wait_for(f"{slug} total", lambda: total(keys, slug), lambda t: t == expected, smoke_wait_s)


@pytest.fixture(scope="module")
def customer(admin: Client, usage: Usage) -> dict[str, Any]:
    """The customer the usage's subject belongs to."""
    return admin.ok("POST", "/api/v1/customers", {
        "key": f"smoke_customer_{RUN}", "name": "Smoke Customer", "currency": "USD",
        "usageAttribution": {"subjectKeys": [usage.subject]},
        "billingAddress": {"country": "DE", "line1": "Hauptstr. 1", "city": "Berlin", "postalCode": "10115"}},
        expect=(201,))


def test_entitlement_value_reflects_the_usage(admin: Client, keys: Keys, usage: Usage,
                                              customer: dict[str, Any]) -> None:
    feature = f"smoke_feature_{RUN}"
    admin.ok("POST", "/api/v1/features", {"key": feature, "name": "Smoke tokens", "meterSlug": usage.slug},
             expect=(201,))
    admin.ok("POST", f"/api/v1/subjects/{usage.subject}/entitlements", {
        "type": "metered", "featureKey": feature, "issueAfterReset": 100,
        "usagePeriod": {"interval": "DAY", "anchor": iso(NOW - timedelta(hours=1))}}, expect=(201,))
    value = keys.read.ok("GET", f"/api/v1/subjects/{usage.subject}/entitlements/{feature}/value")
    assert value["hasAccess"] is True
    assert (Decimal(str(value["usage"])), Decimal(str(value["balance"]))) == (Decimal("4.8"), Decimal("95.2"))


PROFILE: dict[str, Any] = {
    "name": "Smoke", "default": True, "supplier": {"name": "Billow Smoke Inc.", "addresses": [{"country": "DE"}]},
    "workflow": {"invoicing": {"dueAfter": "P14D"}},
    "apps": {"tax": "sandbox", "invoicing": "sandbox", "payment": "sandbox"}}


def test_billing_run_through_the_sandbox_app_and_the_invoice_documents(admin: Client,
                                                                        customer: dict[str, Any]) -> None:
    profiles = admin.ok("GET", "/api/v1/billing/profiles")
    if not any(p.get("default") for p in profiles.get("items", [])):  # a deployed namespace may have its own
        admin.ok("POST", "/api/v1/billing/profiles", PROFILE, expect=(201,))
    line = {"name": "Smoke platform fee", "period": {"from": iso(NOW - timedelta(days=1)), "to": iso(NOW - timedelta(hours=1))},
            "invoiceAt": iso(NOW - timedelta(hours=1)), "price": {"type": "flat", "amount": "12.34"}}
    admin.ok("POST", f"/api/v1/billing/customers/{customer['id']}/invoices/pending-lines",
             {"currency": "USD", "lines": [line]}, expect=(200, 201))
    made = admin.ok("POST", "/api/v1/billing/invoices/invoice", {"customerId": customer["id"]})
    (invoice,) = made
    invoice = admin.ok("GET", f"/api/v1/billing/invoices/{invoice['id']}")
    assert invoice["status"] == "paid" and invoice["currency"] == "USD"  # the sandbox app settles at once
    assert Decimal(invoice["totals"]["total"]) == Decimal("12.34")
    links = admin.ok("GET", f"/api/v1/billing/invoices/{invoice['id']}/documents")
    pdf = admin.request("GET", links["pdf"])  # served by the API (with the key) or a presigned S3 link (without)
    assert pdf.status == 200 and pdf.headers["content-type"].startswith("application/pdf") and pdf.body[:5] == b"%PDF-"
    html = admin.request("GET", links["html"])
    assert html.status == 200 and html.headers["content-type"].startswith("text/html")
    assert "12.34" in html.body.decode() and invoice["number"] in html.body.decode()
