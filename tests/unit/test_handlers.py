"""The Lambda handlers, invoked with recorded API Gateway v2 and MSK payloads from events/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from billow.bootstrap import Settings, build, install
from functions.api.handler import lambda_handler as api
from functions.ingest.handler import lambda_handler as ingest
from functions.usage_sink.handler import lambda_handler as sink

EVENTS = Path(__file__).resolve().parents[2] / "events"


def load(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


@pytest.fixture
def container(tmp_path: Path) -> Any:
    c = build(Settings.parse(dict(usage_store="memory", data_dir=str(tmp_path), meters=[
        {"slug": "tokens", "eventType": "prompt", "aggregation": "SUM", "valueProperty": "$.tokens", "groupBy": {"model": "$.model"}}])),
        deliver=lambda ev: sink(ev, None))
    install(c)
    yield c
    install(None)
    c.close()


def test_recorded_ingest_then_query(container: Any) -> None:
    resp = ingest(load("apigw_v2_ingest_batch.json"), None)
    assert resp["statusCode"] == 204
    query = load("apigw_v2_meter_query.json")
    out = api(query, None)
    assert out["statusCode"] == 200
    body = json.loads(out["body"])
    assert [(r["groupBy"]["model"], r["value"]) for r in body["data"]] == [("gpt-4o", 1500), ("o3", 250.5)]


def test_recorded_msk_batch_redelivered(container: Any) -> None:
    msk = load("msk_usage_batch.json")
    first, second = sink(msk, None), sink(msk, None)
    assert (first["stored"], second["stored"], second["duplicates"]) == (2, 0, 2)
    assert first["deadLettered"] == 1  # the recorded batch holds one record that is not a CloudEvent


def test_unknown_route_is_problem_json(container: Any) -> None:
    ev = load("apigw_v2_meter_query.json")
    ev["rawPath"] = ev["requestContext"]["http"]["path"] = "/api/v1/nothing"
    out = api(ev, None)
    assert out["statusCode"] == 404
    assert out["headers"]["Content-Type"] == "application/problem+json"


def test_readyz_reports_each_dependency(container: Any) -> None:
    from billow.local.server import apigw_event

    out = api(apigw_event("GET", "/readyz", {}, b"", "127.0.0.1"), None)
    body = json.loads(out["body"])
    assert out["statusCode"] == 200 and body["status"] == "ready"
    assert {k: v["status"] for k, v in body["checks"].items()} == {"metaStore": "ok", "usageStore": "ok"}

    def down() -> None:
        raise ConnectionError("ClickHouse unreachable")

    container.usage.ping = down
    out = api(apigw_event("GET", "/readyz", {}, b"", "127.0.0.1"), None)
    body = json.loads(out["body"])
    assert out["statusCode"] == 503 and body["checks"]["usageStore"]["status"] == "failing"
    assert "ClickHouse unreachable" in body["checks"]["usageStore"]["error"]
