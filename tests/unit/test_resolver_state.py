"""The API's powertools resolver keeps the request it serves in class attributes; `billow serve` calls it from
many threads at once, so it gives the resolver instance a state per thread (billow.local.asgi.per_request_state).
Without it, concurrent requests route on, and answer with, each other's path (issue 17 item 4)."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from billow.bootstrap import Settings, build, install
from billow.local.asgi import per_request_state
from billow.local.server import apigw_event

THREADS, CALLS = 8, 40


@pytest.fixture
def api(tmp_path: Path) -> Iterator[object]:
    c = build(Settings.parse({"usage_store": "memory", "data_dir": str(tmp_path), "billing_every_s": 0}))
    install(c)
    from functions.api.handler import app, lambda_handler

    per_request_state(app)
    yield lambda_handler
    install(None)
    c.close()


def test_concurrent_requests_each_get_their_own_answer(api: object) -> None:
    mixed: list[str] = []
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: a shared request would show at once
    try:
        def client(k: int) -> None:
            for i in range(CALLS):
                path = f"/api/v1/meters/m{k}x{i}"  # unknown meter: 404 naming its own path
                out = api(apigw_event("GET", path, {}, b"", "127.0.0.1"), None)  # type: ignore[operator]
                doc = json.loads(out["body"])
                if out["statusCode"] != 404 or doc["instance"] != path or f"m{k}x{i}" not in doc["detail"]:
                    mixed.append(f"{path}: {out['statusCode']} {doc}")

        threads = [threading.Thread(target=client, args=(k,)) for k in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        sys.setswitchinterval(old)
    assert not mixed, mixed[:3]


def test_outside_a_request_the_resolver_reads_as_before(api: object) -> None:
    from functions.api.handler import app

    out = api(apigw_event("GET", "/healthz", {}, b"", "127.0.0.1"), None)  # type: ignore[operator]
    assert out["statusCode"] == 200
    assert app.context == {}  # the request's routing context is gone after it
    per_request_state(app)  # idempotent
    assert type(app).__mro__[1].__name__ == "APIGatewayHttpResolver"  # wrapped once


def test_a_request_resolved_inside_another_gives_it_its_state_back(api: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """A handler that calls the API on its own thread (a test's hook does, mid-request): the inner request deleted the
    thread's state as it ended, and the outer one's end then raised AttributeError (a 500 to its client, though its
    work was done). Now the inner one restores the outer one's state: each answers its own request."""
    from billow.services import meters
    from functions.api.handler import app

    real, inner = meters.get_meter, []

    def get_meter_calling_the_api(namespace: str, slug: str, **kw: object) -> object:
        if slug == "outer":
            out = api(apigw_event("GET", "/api/v1/meters/inner", {}, b"", "127.0.0.1"), None)  # type: ignore[operator]
            inner.append((out["statusCode"], json.loads(out["body"])["instance"]))
            assert app.current_event.path == "/api/v1/meters/outer"  # the outer request's own, again
        return real(namespace, slug, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(meters, "get_meter", get_meter_calling_the_api)
    out = api(apigw_event("GET", "/api/v1/meters/outer", {}, b"", "127.0.0.1"), None)  # type: ignore[operator]
    assert inner == [(404, "/api/v1/meters/inner")]
    assert out["statusCode"] == 404 and json.loads(out["body"])["instance"] == "/api/v1/meters/outer"
    assert app.context == {}  # nothing left behind on this thread
