"""The served OpenAPI document describes everything Billow serves, and only that: every route registered on the API's
powertools resolver (its routers included) and the routes other functions serve (ingest, the Stripe webhook) is an
operation of shared/billow/web/openapi.json; every operation there is served; and each operation that is not one of
OpenMeter's (scripts/gen_openapi.py's OPERATIONS) is marked as Billow's own (scripts/billow_operations.yaml)."""

from __future__ import annotations

import json
import re
from typing import Any

from billow.web.openapi import document
from functions.api.handler import app
from functions.api.home_routes import OTHER_FUNCTIONS
from scripts.gen_openapi import BILLOW_TAG, OPERATIONS

METHODS = ("get", "put", "post", "delete", "patch")


def _shape(path: str) -> str:
    """A path with every parameter (`<name>` in powertools, `{name}` in OpenAPI) as `{}`."""
    return re.sub(r"<[^>/]+>|\{[^}/]+\}", "{}", path.rstrip("/") or "/")


def served() -> set[tuple[str, str]]:
    routes = {(m, p) for m, p in OTHER_FUNCTIONS}
    for route in app._static_routes + app._dynamic_routes:  # powertools keeps no public index of its routes
        routes.add((route.method.upper(), route.path))
    return {(m, _shape(p)) for m, p in routes}


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m.upper(), _shape(p)) for p, item in doc["paths"].items() for m in item if m in METHODS}


def test_every_served_route_is_documented() -> None:
    missing = served() - documented(json.loads(document()))
    assert not missing, f"served but not in the OpenAPI document (add to scripts/billow_operations.yaml): {sorted(missing)}"


def test_every_documented_operation_is_served() -> None:
    extra = documented(json.loads(document())) - served()
    assert not extra, f"in the OpenAPI document but not served: {sorted(extra)}"


def test_billow_operations_are_marked_as_extensions() -> None:
    doc = json.loads(document())
    openmeter = {(m, p) for p, ms in OPERATIONS.items() for m in ms}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            ours = (method, path) not in openmeter
            assert op.get("x-billow-extension", False) is ours, (method, path)
            assert (BILLOW_TAG in op.get("tags", [])) is ours, (method, path)
            assert ours or not op.get("operationId", "").startswith("billow"), (method, path)


def test_a_route_missing_from_the_document_is_found() -> None:
    """The check itself: a document without one served route fails it."""
    doc = json.loads(document())
    assert ("GET", "/api/v1/llm/costs") not in served() - documented(doc)
    del doc["paths"]["/api/v1/llm/costs"]
    assert ("GET", "/api/v1/llm/costs") in served() - documented(doc)
