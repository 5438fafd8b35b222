"""A black-box HTTP client for the smoke suite: the standard library only, a base URL and a bearer token, nothing
from Billow's code (the suite must run against a deployed stack exactly as against a local `billow serve`)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass(frozen=True)
class Client:
    base_url: str  # e.g. https://abc.execute-api.eu-west-1.amazonaws.com or http://127.0.0.1:8888
    token: str | None

    def with_token(self, token: str | None) -> Client:
        return Client(self.base_url, token)

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                query: dict[str, str] | None = None) -> Response:
        url = path if path.startswith(("http://", "https://")) else self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        if self.token and url.startswith(self.base_url):  # never hand the key to another host (presigned S3 links)
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return Response(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
        except urllib.error.HTTPError as err:
            return Response(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())

    def ok(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
           query: dict[str, str] | None = None, expect: tuple[int, ...] = (200, 201)) -> Any:
        got = self.request(method, path, body, content_type, query)
        assert got.status in expect, f"{method} {path}: {got.status} {got.body[:2000]!r}"
        return got.json()


def wait_for[T](what: str, probe: Callable[[], T], done: Callable[[T], bool], timeout_s: float) -> T:
    """Poll `probe` until `done` holds (the condition is the proof, the deadline only bounds the wait)."""
    deadline = time.monotonic() + timeout_s
    last = probe()
    while not done(last):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {last!r} after {timeout_s:.0f} s")
        time.sleep(0.25)
        last = probe()
    return last

