"""Every operation the served OpenAPI document lists has a route (none answers "no route")."""

from __future__ import annotations

import json
import re
from importlib import resources

from tests.entitlements.conftest import Billow


def test_every_documented_operation_is_routed(billow: Billow) -> None:
    doc = json.loads(resources.files("billow.web").joinpath("openapi.json").read_text())
    missing = []
    for path, ops in doc["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "x1", path)
        for method in ops:
            status, body = billow.call(method.upper(), concrete, {} if method in ("post", "put") else None)
            if status == 404 and "no route" in (body or {}).get("detail", ""):
                missing.append(f"{method.upper()} {path}")
    assert missing == []
