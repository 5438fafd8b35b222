"""The suite's HTTP client: the standard library only (urllib), a base URL and an optional bearer token. Nothing from
Billow's own code is imported, so the suite judges a server only by what it answers."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def json(self) -> Any:
        """JSON with every number as an exact Decimal (0.30000000000000004 stays apart from 0.3)."""
        return json.loads(self.body, parse_float=Decimal, parse_int=Decimal) if self.body else None

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def is_problem(self) -> bool:
        return self.content_type == "application/problem+json"

    def brief(self) -> str:
        return f"{self.status} {self.content_type or '-'} {self.text()[:300]!r}"


@dataclass(frozen=True)
class Client:
    base_url: str  # e.g. http://127.0.0.1:8888 (the API is under /api/v1)
    token: str | None = None
    timeout_s: float = 60.0

    def request(self, method: str, path: str, *, body: Any = None, raw: bytes | None = None,
                content_type: str = "application/json", query: list[tuple[str, str]] | None = None,
                accept: str | None = None) -> Response:
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = raw if raw is not None else (json.dumps(body, default=str).encode() if body is not None else None)
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        if accept:
            req.add_header("Accept", accept)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return Response(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
        except urllib.error.HTTPError as err:
            return Response(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())
