"""Invoice document stores (billow.services.documents.DocumentStore): S3 in AWS (LocalStack in tests),
files under data_dir/documents when embedded. `document_store(settings)` picks one.

S3: objects are written with their content type and SSE-S3 (AES256) and handed out as presigned GET URLs
valid for 7 days, the SigV4 maximum. A URL signed with temporary credentials (a Lambda execution role's)
stops working when those credentials expire, after a few hours at most: callers that need a lasting link
should keep the key and presign again when the document is asked for."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from billow.bootstrap import Settings
    from billow.services.documents import DocumentStore

URL_TTL_SECONDS: Final = 7 * 24 * 3600


class S3DocumentStore:
    presigned: Final = True  # url() is a link any client can open for a while

    def __init__(self, bucket: str, endpoint_url: str | None = None, client: Any = None) -> None:
        self.bucket = bucket
        if client is None:
            import boto3
            from botocore.config import Config

            # A custom endpoint (LocalStack) has no per-bucket DNS names: address buckets by path there.
            config = Config(signature_version="s3v4", s3={"addressing_style": "path"} if endpoint_url else {})
            client = boto3.client("s3", endpoint_url=endpoint_url, config=config)
        self._s3 = client

    def put(self, key: str, body: bytes, content_type: str) -> None:
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type,
                            ServerSideEncryption="AES256")

    def url(self, key: str) -> str:
        url: str = self._s3.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key},
                                                   ExpiresIn=URL_TTL_SECONDS)
        return url

    def get(self, key: str) -> bytes:
        body: bytes = self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body


class LocalDocumentStore:
    """Files under `root_dir`, one per key; the URL is the file's file:// URI. Writes are atomic (a
    temporary file renamed into place), so a reader never sees half a document. The file:// URL opens only on
    this machine: the API serves the bytes instead (BillingApps.documents)."""

    presigned: Final = False

    def __init__(self, root_dir: str | Path) -> None:
        self.root = Path(root_dir).resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"document key {key!r} leaves the documents directory")
        return path

    def put(self, key: str, body: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def url(self, key: str) -> str:
        return self._path(key).as_uri()

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()


def document_store(settings: Settings) -> DocumentStore:
    """S3 when settings.documents_bucket is set (endpoint from AWS_ENDPOINT_URL, as boto3 reads it), else
    files under data_dir/documents."""
    if settings.documents_bucket:
        return S3DocumentStore(settings.documents_bucket, endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
    return LocalDocumentStore(Path(settings.data_dir) / "documents")
