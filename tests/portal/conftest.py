"""The consumer portal on both hosts: in-process as on AWS (the Lambda authorizer, then the API or ingest handler,
with a clock the test moves) and `billow serve` as a user starts it (auth: keys, and the embedded default, auth
off)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from playwright.sync_api import Browser, sync_playwright

from billow.bootstrap import Settings, build, install
from billow.local.server import apigw_event
from billow.services import apikeys
from functions.api.handler import lambda_handler as api
from functions.authorizer.handler import lambda_handler as authorizer
from functions.ingest.handler import lambda_handler as ingest
from functions.usage_sink.handler import lambda_handler as sink
from tests.e2e.conftest import Server
from tests.entitlements.conftest import Clock
from tests.support.keys import make_key

# Debian's Chromium, as scripts/toolchains.sh installs it, for the browser tests of the portal page.
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TZ = "America/New_York"  # not UTC, and the last 30 days may hold a DST change


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


METERS = [{"slug": "tokens", "eventType": "prompt", "aggregation": "SUM", "valueProperty": "$.tokens",
           "groupBy": {"model": "$.model"}},
          {"slug": "requests", "eventType": "request", "aggregation": "COUNT"}]


class Gateway:
    """API Gateway in front of the handlers, as deployed: public routes go straight to the API function; every
    other route runs the Lambda authorizer on the Authorization header first (401 when it refuses) and hands its
    context on in requestContext.authorizer.lambda."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._n = 0

    def call(self, method: str, path: str, token: str | None = None, body: Any = None,
             query: dict[str, Any] | None = None, ctx: dict[str, str] | None = None,
             content_type: str = "application/json", headers: dict[str, str] | None = None) -> tuple[int, Any]:
        target = path + ("?" + urlencode(query, doseq=True) if query else "")
        headers = {**(headers or {}), **({"content-type": content_type} if body is not None else {})}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        event = apigw_event(method, target, headers, b"" if body is None else json.dumps(body).encode(), "127.0.0.1")
        if (method, path) not in apikeys.PUBLIC:
            if ctx is None:  # ctx given: an answer API Gateway cached earlier for this header
                verdict = authorizer({"type": "REQUEST", "headers": headers, "routeKey": "$default"}, None)
                if not verdict["isAuthorized"]:
                    return 401, {"message": "Unauthorized"}  # what API Gateway itself answers
                ctx = verdict["context"]
            event["requestContext"]["authorizer"] = {"lambda": ctx}
        fn = ingest if path == "/api/v1/events" else api
        out = fn(event, None)
        text = out.get("body") or ""
        ctype = (out.get("headers") or {}).get("Content-Type", "")
        return out["statusCode"], json.loads(text) if text and "json" in ctype else text

    def ok(self, method: str, path: str, token: str | None = None, body: Any = None, **kw: Any) -> Any:
        status, out = self.call(method, path, token, body, **kw)
        assert status in (200, 201, 204), (method, path, status, out)
        return out

    def usage(self, token: str, subject: str, tokens: Any, at: str, model: str = "gpt") -> None:
        self._n += 1
        ev = {"specversion": "1.0", "id": f"u{self._n}", "source": "portal-test", "type": "prompt",
              "subject": subject, "time": at, "data": {"tokens": tokens, "model": model}}
        self.ok("POST", "/api/v1/events", token, [ev], content_type="application/cloudevents-batch+json")


class Deployment:
    """One deployment with two tenants; admin, read and ingest keys of tenant `acme_co`, an admin key of `other_co`."""

    def __init__(self, container: Any, clock: Clock) -> None:
        self.c, self.clock, self.gw = container, clock, Gateway(clock)
        self.keys: dict[str, str] = {}
        for name, ns, scopes in (("admin", "acme_co", ["admin"]), ("read", "acme_co", ["read"]),
                                 ("other", "other_co", ["admin"])):
            self.keys[name], _ = apikeys.create_key(ns, name, scopes, store=container.keys, now=clock.now())

    def admin(self, method: str, path: str, body: Any = None, key: str = "admin", **kw: Any) -> Any:
        return self.gw.ok(method, path, self.keys[key], body, **kw)

    def token(self, subject: str, key: str = "admin", **body: Any) -> dict[str, Any]:
        out: dict[str, Any] = self.admin("POST", "/api/v1/portal/tokens", {"subject": subject, **body}, key=key)
        return out

    def portal(self, path: str, token: str, **query: Any) -> tuple[int, Any]:
        return self.gw.call("GET", path, token, query=query or None)


@pytest.fixture
def aws(tmp_path: Path) -> Iterator[Deployment]:
    clock = Clock("2026-03-10T12:00:00Z")
    c = build(Settings.parse(dict(usage_store="memory", data_dir=str(tmp_path), auth="keys")),
              deliver=lambda ev: sink(ev, None))
    c.clock = clock
    install(c)
    d = Deployment(c, clock)
    for key in ("admin", "other"):
        for meter in METERS:
            d.admin("POST", "/api/v1/meters", meter, key=key)
    yield d
    install(None)
    c.close()


@pytest.fixture(scope="package")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    """`billow serve` with `auth: keys`: an admin and a read key of namespace `shop`, an admin key of `rival`."""
    root = tmp_path_factory.mktemp("portal-serve")
    config = root / "billow.yaml"
    config.write_text("auth: keys\nrate_limit_per_key: 0\n")
    keys = {"admin": make_key(root / "data", config, "shop", "admin")[1],
            "rival": make_key(root / "data", config, "rival", "admin")[1]}
    srv = Server(root / "data", config).start()
    status, _, made = srv.request("POST", "/api/v1/admin/keys", {"name": "reader", "scopes": ["read"]},
                                  headers={"Authorization": f"Bearer {keys['admin']}"})
    assert status == 201, made
    keys["read"] = made["token"]
    yield srv, keys
    srv.stop()
