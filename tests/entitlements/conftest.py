"""Entitlements through the real handlers (API Gateway v2 events in-process) with a clock the test moves, on
the in-memory twin and on chdb, with the SQLite meta store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from billow.bootstrap import Settings, build, install
from billow.local.server import apigw_event
from functions.api.handler import lambda_handler as api
from functions.ingest.handler import lambda_handler as ingest
from functions.usage_sink.handler import lambda_handler as sink
from tests.conftest import t

METERS = [{"slug": "tokens", "eventType": "prompt", "aggregation": "SUM", "valueProperty": "$.tokens",
           "groupBy": {"model": "$.model"}}]


class Clock:
    def __init__(self, now: str) -> None:
        self.t = t(now)

    def now(self) -> datetime:
        return self.t

    def set(self, now: str) -> None:
        self.t = t(now)


class Billow:
    """One namespace of a Billow, spoken to as an HTTP client would."""

    def __init__(self, container: Any, clock: Clock) -> None:
        self.c, self.clock = container, clock
        self._n = 0
        self.headers: dict[str, str] = {}  # the last call's answer's

    def call(self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None,
             content_type: str = "application/json") -> tuple[int, Any]:
        target = path + ("?" + urlencode(query) if query else "")
        raw = b"" if body is None else json.dumps(body).encode()
        headers = {"content-type": content_type} if body is not None else {}
        fn = ingest if path == "/api/v1/events" else api
        out = fn(apigw_event(method, target, headers, raw, "127.0.0.1"), None)
        self.headers = out.get("headers") or {}
        text = out.get("body") or ""
        if text and "json" not in (out.get("headers") or {}).get("Content-Type", "json"):
            return out["statusCode"], text  # e.g. the debug metrics' OpenMetrics text
        return out["statusCode"], json.loads(text) if text else None

    def raw(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        """A request whose body is these bytes as they are (e.g. b"null"), sent as JSON."""
        out = api(apigw_event(method, path, {"content-type": "application/json"}, body, "127.0.0.1"), None)
        return out["statusCode"], json.loads(out["body"]) if out.get("body") else None

    def ok(self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None) -> Any:
        status, out = self.call(method, path, body, query)
        assert status in (200, 201, 204), (status, out)
        return out

    def send_events(self, *events: tuple[str, str, str, dict[str, Any]]) -> None:
        """POST (type, subject, time, data) events as one batch, each with the next id; 204 expected."""
        body = []
        for etype, subject, at, data in events:
            self._n += 1
            body.append({"specversion": "1.0", "id": f"e{self._n}", "source": "test", "type": etype,
                         "subject": subject, "time": at, "data": data})
        status, out = self.call("POST", "/api/v1/events", body, content_type="application/cloudevents-batch+json")
        assert status == 204, out

    def usage(self, tokens: Any, at: str, subject: str = "customer_1", model: str = "gpt") -> None:
        self.send_events(("prompt", subject, at, {"tokens": tokens, "model": model}))

    def value(self, subject: str, feature: str, at: str | None = None) -> dict[str, Any]:
        return self.ok("GET", f"/api/v1/subjects/{subject}/entitlements/{feature}/value",
                       query={"time": at} if at else None)

    def fresh_value(self, subject: str, feature: str) -> dict[str, Any]:
        """The value now, computed without the balance cache (Lambda's path): what a cached check must answer."""
        cache, self.c.balance_cache = self.c.balance_cache, None
        try:
            return self.value(subject, feature)
        finally:
            self.c.balance_cache = cache


@contextmanager
def harness(tmp_path: Path, namespace: str, usage: Any = None, **settings: Any) -> Iterator[Billow]:
    """A Billow over the in-memory usage store (or `usage`, a store shared with other tests, left open) and the
    SQLite meta store in `tmp_path` (or `settings`' meta_store_url), its clock at 2026-01-01, subjects customer_1
    and customer_2 made."""
    clock = Clock("2026-01-01T00:00:00Z")
    c = build(Settings.parse(dict(usage_store="memory", data_dir=str(tmp_path), namespace=namespace, meters=METERS,
                                  **settings)), deliver=lambda ev: sink(ev, None))
    own_usage = c.usage
    if usage is not None:
        c.usage = usage
    c.clock = clock
    install(c)
    b = Billow(c, clock)
    b.ok("POST", "/api/v1/subjects", [{"key": "customer_1"}, {"key": "customer_2"}])
    try:
        yield b
    finally:
        install(None)
        c.usage = own_usage  # a shared store stays open for the other tests
        c.close()


@contextmanager
def on_meta_store(request: pytest.FixtureRequest, tmp_path: Path, namespace: str) -> Iterator[Billow]:
    """The harness with its meta store on SQLite (request.param "sqlite") or on a PostgreSQL database of the test's
    own ("postgres"), usage in memory: for a fixture parametrised over both."""
    url = {} if request.param == "sqlite" else {"meta_store_url": request.getfixturevalue("pg_database")}
    with harness(tmp_path, namespace, **url) as b:
        yield b


@pytest.fixture(params=["memory", "chdb"])
def billow(request: pytest.FixtureRequest, tmp_path: Path, namespace: str) -> Iterator[Billow]:
    # one chdb per process; tests keep apart by namespace
    with harness(tmp_path, namespace, request.getfixturevalue("chdb_store") if request.param == "chdb" else None) as b:
        yield b
