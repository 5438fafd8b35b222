"""Lambda bootstrap against LocalStack: connection settings come from Secrets Manager ARNs (as the CDK stack
passes them), never from plain-text variables; the resolved PostgreSQL URL really connects."""

from __future__ import annotations

import os
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest

from billow import jsonx
from billow.bootstrap import Settings, build
from billow.services.meters import create_meter, get_meter
from tests.conftest import require_service


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch, aws_endpoint: str) -> Any:
    import boto3

    endpoint = aws_endpoint
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # what boto3 in the bootstrap picks up
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return boto3.client("secretsmanager", endpoint_url=endpoint, region_name="us-east-1")


def make_secret(sm: Any, value: dict[str, Any]) -> str:
    return sm.create_secret(Name=f"billow/test/{uuid.uuid4().hex[:10]}", SecretString=jsonx.dumps(value))["ARN"]


def test_db_secret_and_proxy_host_give_a_working_postgres_store(secrets: Any, monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Any) -> None:
    pg = require_service("BILLOW_TEST_PG_URL", "PostgreSQL")
    parts = urlsplit(pg.replace("postgresql+pg8000", "postgresql"))
    # The shape RDS writes for a generated secret; the host in it is the cluster's, the proxy's comes apart.
    arn = make_secret(secrets, {"engine": "postgres", "host": "cluster.invalid", "port": parts.port,
                                "username": parts.username, "password": "p@ss:w/rd%", "dbname": "postgres"})
    for k in list(os.environ):
        if k.startswith("BILLOW_") and not k.startswith("BILLOW_TEST_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("BILLOW_USAGE_STORE", "memory")
    monkeypatch.setenv("BILLOW_DATA_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("BILLOW_DB_SECRET_ARN", arn)
    monkeypatch.setenv("BILLOW_DB_HOST", parts.hostname or "127.0.0.1")
    monkeypatch.setenv("BILLOW_NAMESPACE", "s" + uuid.uuid4().hex[:8])
    settings = Settings.from_env()
    assert settings.meta_store_url == (f"postgresql+pg8000://{parts.username}:p%40ss%3Aw%2Frd%25@{parts.hostname}:"
                                       f"{parts.port}/postgres")
    c = build(settings)
    try:
        m = create_meter(c.namespace, {"slug": "calls", "eventType": "call", "aggregation": "COUNT"},
                         meta=c.meta, usage=c.usage, now=c.clock.now(), sink_lock=c.sink_lock)
        assert get_meter(c.namespace, "calls", meta=c.meta).id == m.id
        assert not (tmp_path / "none").exists()  # nothing written to a local disk in Lambda mode
    finally:
        c.close()


def test_clickhouse_secret_as_fields_or_dsn(secrets: Any) -> None:
    fields_arn = make_secret(secrets, {"host": "abc.clickhouse.cloud", "port": 8443, "username": "billow",
                                       "password": "s3cr#t/", "database": "usage"})
    dsn_arn = make_secret(secrets, {"dsn": "https://u:p@ch.internal:8443/billow"})
    resolved = Settings.parse({"usage_store": "clickhouse", "clickhouse_secret_arn": fields_arn}).with_secrets()
    assert resolved.clickhouse_dsn == "https://billow:s3cr%23t%2F@abc.clickhouse.cloud:8443/usage"
    resolved = Settings.parse({"usage_store": "clickhouse", "clickhouse_secret_arn": dsn_arn}).with_secrets()
    assert resolved.clickhouse_dsn == "https://u:p@ch.internal:8443/billow"


def test_a_missing_secret_stops_the_cold_start_with_the_aws_error(secrets: Any) -> None:
    from botocore.exceptions import ClientError

    missing = "arn:aws:secretsmanager:us-east-1:000000000000:secret:billow/nope-AbCdEf"
    with pytest.raises(ClientError, match="ResourceNotFound"):
        Settings.parse({"db_secret_arn": missing}).with_secrets()


def test_settings_name_every_bad_field() -> None:
    with pytest.raises(ValueError) as err:
        Settings.parse({"bus": "rabbit", "kafka_partitions": "0", "namespace": "Bad NS", "colour": "red"})
    text = str(err.value)
    for fragment in ("bus: must be one of inprocess, kafka", "kafka_partitions: must be between 1 and 1024",
                     "namespace: 'Bad NS'", "colour: unknown setting"):
        assert fragment in text
