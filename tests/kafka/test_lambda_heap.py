"""The ingest and usage sink Lambdas settle the heap (billow.heap.settle: start-up's objects out of the collector's
scans) once per cold start, after their container is built, as `billow serve` does once started (issue 17)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from billow import bootstrap, heap, jsonx
from billow.bootstrap import Settings, build, install
from billow.local.server import apigw_event
from tests.conftest import event


class KeptBus:
    def publish(self, namespace: str, records: Any) -> None:
        return None

    def close(self) -> None:
        return None


@pytest.fixture
def settles(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, namespace: str) -> Any:
    calls: list[bool] = []  # one entry per settle(): whether the container was built by then
    monkeypatch.setattr(heap, "settle", lambda: calls.append(bootstrap._current is not None))
    c = build(Settings(namespace=namespace, usage_store="memory", data_dir=str(tmp_path)))
    c.bus = KeptBus()
    install(c)
    yield calls
    install(None)
    c.meta.close()


def test_the_usage_sink_lambda_settles_the_heap_once_after_its_container(settles: list[bool],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import functions.usage_sink.handler as sink

    monkeypatch.setattr(sink, "_settled", [], raising=False)  # a cold start
    empty = {"eventSource": "aws:kafka", "eventSourceArn": "arn:aws:kafka:local:0:cluster/b/l", "records": {}}
    for _ in range(3):
        sink.lambda_handler(empty, None)  # type: ignore[arg-type]
    assert settles == [True]


def test_the_ingest_lambda_settles_the_heap_once_after_its_container(settles: list[bool],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import functions.ingest.handler as ingest

    monkeypatch.setattr(ingest, "_settled", [], raising=False)  # a cold start
    for i in range(3):
        body = jsonx.dumps([event(f"h{i}", time="2026-03-02T10:00:00Z", tokens="1")]).encode()
        ev = apigw_event("POST", "/api/v1/events", {"content-type": "application/cloudevents-batch+json"}, body, "t")
        assert ingest.lambda_handler(ev, None)["statusCode"] == 204  # type: ignore[arg-type]
    assert settles == [True]
