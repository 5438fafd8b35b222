"""Local network helpers."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from decimal import Decimal
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def json_call(url: str, method: str, path: str, body: Any = None, ctype: str = "application/json",
              timeout: float = 60) -> tuple[int, Any]:
    """One request to `url` + `path`: (status, the JSON answer with its numbers read as Decimals, so the test's own
    reading does not round; a body that is not JSON as text; None for none). Raises OSError when the server is gone."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, payload = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, payload = err.code, err.read()
    try:
        return status, json.loads(payload, parse_float=Decimal) if payload else None
    except ValueError:
        return status, payload.decode()
