"""Document stores: S3 on LocalStack (content type, SSE-S3, a presigned URL anyone can fetch) and local files,
chosen from the settings; `store_documents` writes both formats and is idempotent."""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from billow.adapters.documents import LocalDocumentStore, S3DocumentStore, document_store
from billow.adapters.rendering import InvoiceRenderer, render_html, render_pdf
from billow.bootstrap import Settings
from billow.services.documents import document_keys, store_documents
from tests.documents.sample import invoice


@pytest.fixture(scope="module")
def rendered() -> tuple[bytes, bytes]:
    inv = invoice()
    return render_html(inv).encode("utf-8"), render_pdf(inv)


def test_local_store_writes_both_documents(tmp_path: Path, rendered: tuple[bytes, bytes]) -> None:
    store = LocalDocumentStore(tmp_path / "documents")
    urls = store_documents("ns1", invoice(), store, InvoiceRenderer())
    html_key, pdf_key = document_keys("ns1", invoice())
    assert urls == {"html": (tmp_path / "documents" / html_key).as_uri(),
                    "pdf": (tmp_path / "documents" / pdf_key).as_uri()}
    assert (store.get(html_key), store.get(pdf_key)) == rendered
    with urllib.request.urlopen(urls["pdf"]) as r:  # the URL is a working file:// URI
        assert r.read() == rendered[1]
    assert store_documents("ns1", invoice(), store, InvoiceRenderer()) == urls  # re-issuing rewrites the same bytes
    assert sorted(p.name for p in (tmp_path / "documents" / html_key).parent.iterdir()) == [
        "ACME-0001.html", "ACME-0001.pdf"]  # no temporary files left behind


def test_local_store_refuses_keys_outside_its_directory(tmp_path: Path) -> None:
    store = LocalDocumentStore(tmp_path / "documents")
    for key in ("../escape.pdf", "/etc/passwd", "a/../../b", ""):
        with pytest.raises(ValueError, match="leaves the documents directory"):
            store.put(key, b"x", "text/plain")
    assert not (tmp_path / "escape.pdf").exists()


def test_settings_choose_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = document_store(Settings.parse({"data_dir": str(tmp_path / "data")}))
    assert isinstance(local, LocalDocumentStore) and local.root == (tmp_path / "data" / "documents").resolve()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    s3 = document_store(Settings.parse({"documents_bucket": "billow-docs"}))
    assert isinstance(s3, S3DocumentStore) and s3.bucket == "billow-docs"
    url = urlsplit(s3.url("invoices/ns/id/A-1.pdf"))  # presigning is local: no request is made
    assert (url.netloc, url.path) == ("127.0.0.1:1", "/billow-docs/invoices/ns/id/A-1.pdf")
    assert parse_qs(url.query)["X-Amz-Expires"] == ["604800"]  # 7 days


@pytest.fixture
def bucket(aws_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_endpoint)  # what document_store passes on, as in Lambda
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3 = boto3.client("s3", endpoint_url=aws_endpoint, region_name="us-east-1")
    name = f"billow-docs-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    try:
        yield name, s3
    finally:
        for obj in s3.list_objects_v2(Bucket=name).get("Contents", []):
            s3.delete_object(Bucket=name, Key=obj["Key"])
        s3.delete_bucket(Bucket=name)


def test_s3_store_on_localstack(bucket: tuple[str, Any], rendered: tuple[bytes, bytes]) -> None:
    name, s3 = bucket
    store = document_store(Settings.parse({"documents_bucket": name}))
    assert isinstance(store, S3DocumentStore)
    urls = store_documents("ns1", invoice(), store, InvoiceRenderer())
    html_key, pdf_key = document_keys("ns1", invoice())
    assert (store.get(html_key), store.get(pdf_key)) == rendered
    for key, content_type in ((html_key, "text/html; charset=utf-8"), (pdf_key, "application/pdf")):
        head = s3.head_object(Bucket=name, Key=key)
        assert head["ContentType"] == content_type
        assert head["ServerSideEncryption"] == "AES256"
    for kind, body, content_type in (("html", rendered[0], "text/html"), ("pdf", rendered[1], "application/pdf")):
        assert parse_qs(urlsplit(urls[kind]).query)["X-Amz-Expires"] == ["604800"]
        with urllib.request.urlopen(urls[kind], timeout=10) as r:  # presigned: no credentials needed
            assert r.read() == body
            assert r.headers["Content-Type"].startswith(content_type)
    # LocalStack does not check presigned signatures (S3_SKIP_SIGNATURE_VALIDATION), so only their shape is
    # asserted here; real S3 refuses a URL whose key or expiry was changed.
    assert {"X-Amz-Signature", "X-Amz-Credential"} <= set(parse_qs(urlsplit(urls["pdf"]).query))
