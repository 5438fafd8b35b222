"""Invoice documents reach the customer through the portal token on the AWS path (authorizer -> API handler): with
documents in S3 (LocalStack) the portal and the billing API hand out presigned URLs any client can open; another
customer's portal token gets a 404 for the same invoice, never a link."""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from billow.bootstrap import Settings, build, install
from functions.usage_sink.handler import lambda_handler as sink
from tests.entitlements.conftest import Clock
from tests.portal.conftest import Deployment

PROFILE = {"name": "Default", "default": True,
           "supplier": {"name": "Billow Inc.", "addresses": [{"country": "GB", "city": "London",
                                                              "postalCode": "SW1A 1AA"}]},
           "workflow": {"invoicing": {"dueAfter": "P14D"}},
           "apps": {"tax": "sandbox", "invoicing": "sandbox", "payment": "sandbox"}}


@pytest.fixture
def on_s3(aws_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[Deployment, str]]:
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_endpoint)  # what document_store passes on, as in Lambda
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3 = boto3.client("s3", endpoint_url=aws_endpoint, region_name="us-east-1")
    bucket = f"billow-docs-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    clock = Clock("2026-03-10T12:00:00Z")
    c = build(Settings.parse(dict(usage_store="memory", data_dir=str(tmp_path), auth="keys",
                                  documents_bucket=bucket)), deliver=lambda ev: sink(ev, None))
    c.clock = clock
    install(c)
    try:
        yield Deployment(c, clock), aws_endpoint
    finally:
        install(None)
        c.close()
        for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=obj["Key"])
        s3.delete_bucket(Bucket=bucket)


def _paid_invoice(d: Deployment) -> dict[str, Any]:
    d.admin("POST", "/api/v1/billing/profiles", PROFILE)
    cust = d.admin("POST", "/api/v1/customers", {
        "name": "Acme Ltd", "key": "acme_ltd", "usageAttribution": {"subjectKeys": ["acme"]},
        "billingAddress": {"country": "GB", "line1": "1 High St", "city": "Leeds", "postalCode": "LS1 4DY"}})
    line = {"name": "Platform fee", "period": {"from": "2026-02-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"},
            "invoiceAt": "2026-03-01T00:00:00Z", "price": {"type": "flat", "amount": "99"}}
    d.admin("POST", f"/api/v1/billing/customers/{cust['id']}/invoices/pending-lines",
            {"currency": "USD", "lines": [line]})
    d.admin("POST", "/api/v1/billing/invoices/invoice", {"customerId": cust["id"]})
    (inv,) = [i for i in d.admin("GET", "/api/v1/billing/invoices")["items"] if i["status"] != "gathering"]
    assert inv["status"] == "paid"  # the sandbox app settles at once
    return dict(inv)


def _open(url: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as r:  # presigned: no credentials
        return r.headers["Content-Type"], r.read()


def test_portal_documents_are_presigned_s3_links_in_aws(on_s3: tuple[Deployment, str]) -> None:
    d, endpoint = on_s3
    inv = _paid_invoice(d)
    token = d.token("acme")["token"]
    status, links = d.portal(f"/api/v1/portal/invoices/{inv['id']}/documents", token)
    assert status == 200, links
    for fmt, ctype in (("pdf", "application/pdf"), ("html", "text/html")):
        url = urlsplit(links[fmt])
        assert f"{url.scheme}://{url.netloc}" == endpoint and parse_qs(url.query)["X-Amz-Expires"] == ["604800"]
        got_type, body = _open(links[fmt])
        assert got_type.startswith(ctype)
        if fmt == "pdf":
            assert body.startswith(b"%PDF-")
        else:
            page = body.decode()
            assert "Total paid (USD)</th><td>99.00" in page and "Total due" not in page
            assert "<p>Leeds</p><p>LS1 4DY</p><p>United Kingdom</p>" in page  # GB: city, then the postcode
    # The API key's view of the same invoice: presigned links too (no file:// path, no API route needed).
    admin = d.admin("GET", f"/api/v1/billing/invoices/{inv['id']}/documents")
    assert all(urlsplit(admin[f]).netloc == urlsplit(endpoint).netloc for f in ("html", "pdf"))


def test_another_customers_token_gets_404_not_a_link(on_s3: tuple[Deployment, str]) -> None:
    d, _ = on_s3
    inv = _paid_invoice(d)
    d.admin("POST", "/api/v1/customers", {"name": "Globex", "key": "globex",
                                          "usageAttribution": {"subjectKeys": ["globex"]}})
    for subject in ("globex", "nobody"):  # another customer; a subject with no customer at all
        token = d.token(subject)["token"]
        for path in (f"/api/v1/portal/invoices/{inv['id']}/documents",
                     f"/api/v1/portal/invoices/{inv['id']}/documents/pdf"):
            status, body = d.portal(path, token)
            assert status == 404 and body["status"] == 404 and "amz" not in str(body).lower(), (subject, body)
    status, body = d.portal(f"/api/v1/portal/invoices/{inv['id']}/documents/exe", d.token("acme")["token"])
    assert status == 404 and "html or pdf" in body["detail"]
