"""API keys: scopes per route, the stored record holds no secret, and the Lambda authorizer's answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.exceptions import OperationalError

from billow.bootstrap import Settings, build, install
from billow.services import apikeys
from functions.api.handler import lambda_handler as api
from functions.authorizer.handler import lambda_handler as authorizer
from tests.conftest import t


@pytest.mark.parametrize(("method", "path", "scope"), [
    ("POST", "/api/v1/events", "ingest"), ("GET", "/api/v1/events", "read"), ("GET", "/api/v1/meters/x", "read"),
    ("POST", "/api/v1/meters/x/query", "read"), ("POST", "/api/v1/meters", "admin"), ("DELETE", "/api/v1/grants/g", "admin"),
    ("GET", "/healthz", None), ("GET", "/api/v1/openapi.json", None), ("POST", "/healthz", "admin"),
])
def test_required_scope(method: str, path: str, scope: str | None) -> None:
    assert apikeys.required_scope(method, path) == scope


@pytest.fixture
def container(tmp_path: Path) -> Any:
    c = build(Settings.parse(dict(usage_store="memory", data_dir=str(tmp_path), auth="keys")))
    install(c)
    yield c
    install(None)
    c.close()


def test_key_lifecycle_and_authorizer(container: Any) -> None:
    token, doc = apikeys.create_key("acme", "ci", ["read", "ingest"], store=container.keys, now=t("2026-01-01T00:00:00Z"))
    stored, digest = container.keys.get_key(doc["id"])
    secret = token.split("_", 2)[2]  # bk_<id>_<secret>: the secret itself may hold "_"
    assert len(secret) >= 40 and secret not in repr(stored) and len(digest) == 64
    ev = {"version": "2.0", "type": "REQUEST", "routeArn": "arn", "headers": {"authorization": f"Bearer {token}"}}
    assert authorizer(ev, None) == {"isAuthorized": True, "context": {"keyId": doc["id"], "namespace": "acme",
                                                                      "scopes": "ingest,read"}}
    assert authorizer({**ev, "headers": {"authorization": token}}, None) == {"isAuthorized": False}  # no Bearer
    assert authorizer({**ev, "headers": {"authorization": f"Bearer {token[:-1]}x"}}, None) == {"isAuthorized": False}
    apikeys.revoke_key(doc["id"], store=container.keys, now=t("2026-01-02T00:00:00Z"))
    assert authorizer(ev, None) == {"isAuthorized": False}


def test_handlers_refuse_requests_without_authorizer_context_when_auth_is_on(container: Any) -> None:
    from billow.local.server import apigw_event

    out = api(apigw_event("GET", "/api/v1/meters", {}, b"", "127.0.0.1"), None)
    assert out["statusCode"] == 401 and out["headers"]["Content-Type"] == "application/problem+json"
    ev = apigw_event("GET", "/api/v1/meters", {}, b"", "127.0.0.1")
    ev["requestContext"]["authorizer"] = {"lambda": {"keyId": "K", "namespace": "acme", "scopes": "ingest"}}
    assert api(ev, None)["statusCode"] == 403
    ev["requestContext"]["authorizer"]["lambda"]["scopes"] = "read"
    assert api(ev, None)["statusCode"] == 200


def test_kafka_bus_refuses_a_namespace_no_sink_consumes() -> None:
    """In AWS one MSK trigger consumes the deployment namespace's topic: a key of another namespace must not get
    its events acknowledged into a topic nobody reads (refused before anything is produced)."""
    from billow.adapters.kafka import KafkaBus, client_config
    from billow.errors import Forbidden

    bus = KafkaBus(client_config("127.0.0.1:9"), namespaces={"acme"})
    try:
        with pytest.raises(Forbidden, match="nothing was ingested"):
            bus.publish("beta", [(b"k", b"v")])
    finally:
        bus.close()


def test_authorizer_and_ingest_side_do_not_need_clickhouse(tmp_path: Path) -> None:
    """The usage store opens on first use: with ClickHouse unreachable, the container builds and API keys are
    checked; only what reads usage fails (and says so)."""
    c = build(Settings.parse(dict(usage_store="clickhouse", clickhouse_dsn="http://127.0.0.1:9/billow",
                                  data_dir=str(tmp_path), auth="keys")))
    install(c)
    try:
        token, doc = apikeys.create_key("acme", "ci", ["ingest"], store=c.keys, now=t("2026-01-01T00:00:00Z"))
        ev = {"version": "2.0", "type": "REQUEST", "headers": {"authorization": f"Bearer {token}"}}
        assert authorizer(ev, None)["isAuthorized"] is True
        # Connection refused by exactly the configured ClickHouse, not some other error whose text has a 9 in
        # it (the request's random query_id nearly always does).
        with pytest.raises(OperationalError, match=r"Connection refused") as refused:
            c.usage.ping()
        assert "(http://127.0.0.1:9)" in str(refused.value)
    finally:
        install(None)
        c.close()
