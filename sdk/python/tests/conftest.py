"""The SDK's tests run against a live `billow serve` (BILLOW_URL, and BILLOW_API_KEY when it has `auth: keys`)
that has the `tokens_total` meter of tests/sdk/billow.yaml."""

from __future__ import annotations

import http.server
import json
import os
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from billow_sdk import Client

URL = os.environ.get("BILLOW_URL", "")
API_KEY = os.environ.get("BILLOW_API_KEY") or None
METER, FEATURE = "tokens_total", "sdk_tokens"


def admin(method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """Raw HTTP for test set-up the SDK does not cover (subjects, features, entitlements)."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {API_KEY}"} if API_KEY else {})}
    req = urllib.request.Request(URL + path, json.dumps(body).encode() if body is not None else None,
                                 headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


@pytest.fixture(scope="session")
def url() -> str:
    if not URL:
        pytest.fail("set BILLOW_URL to a running `billow serve` (see sdk/python/README.md)")
    return URL


@pytest.fixture
def client(url: str) -> Client:
    return Client(url, api_key=API_KEY, backoff=0.05)


@pytest.fixture
def subject(url: str) -> str:
    """A fresh subject with a metered entitlement to FEATURE: 100 tokens a month."""
    key = f"sdk-py-{uuid.uuid4().hex[:10]}"
    assert admin("POST", "/api/v1/subjects", [{"key": key}])[0] == 200
    assert admin("POST", "/api/v1/features", {"key": FEATURE, "name": "SDK tokens", "meterSlug": METER})[0] in (201, 409)
    status, body = admin("POST", f"/api/v1/subjects/{key}/entitlements", {
        "type": "metered", "featureKey": FEATURE, "usagePeriod": {"interval": "MONTH"}, "issueAfterReset": 100})
    assert status == 201, body
    return key


class FaultyProxy:
    """Sits between the SDK and Billow, forwarding every request. The first `faults` requests are forwarded too,
    but their answer is lost: replaced by a 503 (fault "503") or a dropped connection (fault "drop"), so a
    retry resends something Billow already stored. Records each request body once Billow has answered it."""

    def __init__(self, target: str, fault: str = "503", faults: int = 0) -> None:
        self.bodies: list[bytes] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.forward()

            def do_POST(self) -> None:
                self.forward()

            def forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                keep = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization", "accept")}
                req = urllib.request.Request(target + self.path, body or None, keep, method=self.command)
                try:
                    with urllib.request.urlopen(req, timeout=30) as resp:
                        status, ctype, payload = resp.status, resp.headers.get("Content-Type", ""), resp.read()
                except urllib.error.HTTPError as err:
                    status, ctype, payload = err.code, err.headers.get("Content-Type", ""), err.read()
                proxy.bodies.append(body)  # once Billow has answered
                if len(proxy.bodies) <= faults:
                    if fault == "drop":
                        self.close_connection = True
                        return
                    status, ctype, payload = 503, "application/problem+json", json.dumps(
                        {"type": "about:blank", "title": "Service Unavailable", "status": 503, "detail": "fault"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                if status == 503:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def proxy_factory(url: str) -> Iterator[Any]:
    made: list[FaultyProxy] = []

    def make(fault: str = "503", faults: int = 0) -> FaultyProxy:
        made.append(FaultyProxy(url, fault, faults))
        return made[-1]

    yield make
    for p in made:
        p.close()
