"""An API request's JSON body is parsed once: the middleware parses it for the body check (billow.web.body_contract)
and keeps its answer in the resolver's per-request context; the route's `request_body` gives that answer again
(functions.api.bodies). Until 2026-12-07 the route parsed the body a second time (a 6 KB plan: ~54 us more CPU).
The answers are the same as before, a 400 naming the body or the field for a body that is no JSON or holds a lone
surrogate; and each request reads its own body, also with requests on several threads at once (`billow serve`)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from billow import jsonx
from billow.bootstrap import Settings, build, install
from billow.local.asgi import per_request_state
from billow.local.server import apigw_event

CUSTOMER = {"key": "acme", "name": "Acme", "usageAttribution": {"subjectKeys": ["customer_1"]}}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Any]:
    c = build(Settings.parse({"usage_store": "memory", "data_dir": str(tmp_path), "billing_every_s": 0}))
    install(c)
    from functions.api.handler import lambda_handler

    yield lambda_handler
    install(None)
    c.close()


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts jsonx.loads is given (the request bodies' parses among them)."""
    seen: list[str] = []
    real = jsonx.loads

    def counted(text: str | bytes) -> Any:
        seen.append(text if isinstance(text, str) else text.decode())
        return real(text)

    monkeypatch.setattr(jsonx, "loads", counted)
    return seen


def _customer(key: str, name: str) -> dict[str, Any]:
    return {"key": key, "name": name, "usageAttribution": {"subjectKeys": [f"subject_{key}"]}}


def _call(api: Any, method: str, path: str, text: str) -> tuple[int, Any]:
    out = api(apigw_event(method, path, {"content-type": "application/json"}, text.encode(), "127.0.0.1"), None)
    return out["statusCode"], json.loads(out["body"]) if out.get("body") else None


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/api/v1/customers", CUSTOMER),
    ("POST", "/api/v1/meters", {"slug": "calls", "eventType": "call", "aggregation": "COUNT"}),
    ("POST", "/api/v1/features", {"key": "seats", "name": "Seats"}),
])
def test_a_body_is_parsed_once(api: Any, parses: list[str], method: str, path: str, body: dict[str, Any]) -> None:
    text = json.dumps(body)
    status, out = _call(api, method, path, text)
    assert status == 201, out
    assert parses.count(text) == 1  # was 2: the body check's parse, then the route's


@pytest.mark.parametrize(("text", "field", "message"), [
    ('{"key": "acme", ', "body", "malformed JSON"),
    ('{"key": "acme", "name": "\\ud800"}', "name", "contains a lone UTF-16 surrogate (not valid Unicode)"),
    ('{"key": "acme", "name": "a\\u0000b"}', "name", "must not contain NUL (U+0000)"),
])
def test_a_bad_body_gets_the_same_400_from_one_parse(api: Any, parses: list[str], text: str, field: str,
                                                     message: str) -> None:
    status, out = _call(api, "POST", "/api/v1/customers", text)
    assert status == 400, out
    assert out["validationErrors"] == [{"field": field, "message": message}]
    assert parses.count(text) == 1  # was 2: the body check's attempt, then the route's
    assert _call(api, "GET", "/api/v1/customers", "")[1]["items"] == []


def test_each_request_reads_its_own_body(api: Any) -> None:
    """Requests one after the other on one thread: none is answered with the body the one before it kept."""
    for key in ("a", "b", "c"):
        status, out = _call(api, "POST", "/api/v1/customers", json.dumps(_customer(key, key.upper())))
        assert status == 201 and (out["key"], out["name"]) == (key, key.upper()), out
    status, out = _call(api, "PUT", "/api/v1/customers/b", json.dumps(_customer("b", "Bee")))
    assert status == 200 and out["name"] == "Bee", out


def test_concurrent_requests_each_read_their_own_body(api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`billow serve` resolves requests on several threads through one resolver: a request held between its body
    check and its route's use of the body, while another request runs whole on another thread, still creates the
    customer its own body names."""
    from billow.services import directory
    from functions.api.handler import app

    per_request_state(app)
    real, held, go = directory.create_customer, threading.Event(), threading.Event()

    def create(namespace: str, body: Any, **kw: Any) -> Any:
        if body.get("key") == "first":
            held.set()
            assert go.wait(10)
        return real(namespace, body, **kw)

    monkeypatch.setattr(directory, "create_customer", create)
    answers: dict[str, Any] = {}
    first = threading.Thread(target=lambda: answers.setdefault("first", _call(
        api, "POST", "/api/v1/customers", json.dumps(_customer("first", "First")))))
    first.start()
    assert held.wait(10)
    answers["second"] = _call(api, "POST", "/api/v1/customers",
                              json.dumps(_customer("second", "Second")))
    go.set()
    first.join(10)
    assert answers["second"][0] == 201 and answers["second"][1]["name"] == "Second", answers
    assert answers["first"][0] == 201 and answers["first"][1]["name"] == "First", answers
