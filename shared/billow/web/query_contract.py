"""Query parameters checked against the served OpenAPI document (billow.services.params.conform), for the list
operations whose filters were read without it: an order, orderBy, enum, boolean, date-time, id pattern or bound
that the contract refuses is a 400 naming the parameter, never silently read as no filter or the default. The
API handler runs `check` before these operations' routes."""

from __future__ import annotations

import json
from functools import cache
from typing import Any, Final

from billow.services import params
from billow.web.openapi import document

CHECKED: Final = frozenset({
    ("GET", "/api/v1/events"), ("GET", "/api/v1/meters"), ("GET", "/api/v1/customers"), ("GET", "/api/v1/features"),
    ("GET", "/api/v1/entitlements"), ("GET", "/api/v1/grants"), ("GET", "/api/v1/notification/rules"),
    ("GET", "/api/v1/plans"), ("GET", "/api/v1/addons"), ("GET", "/api/v1/billing/profiles"),
    ("GET", "/api/v1/billing/invoices"),
})


def _resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        _, _, kind, name = node["$ref"].split("/", 3)
        node = doc["components"][kind][name]
    if "allOf" in node and len(node["allOf"]) == 1:  # a described reference: the referenced schema
        node = {**_resolve(doc, node["allOf"][0]), **{k: v for k, v in node.items() if k != "allOf"}}
    return node


@cache
def query_parameters(method: str, path: str) -> tuple[tuple[str, dict[str, Any], dict[str, Any] | None], ...]:
    """(name, schema, item schema of an array) of each query parameter the document gives the operation."""
    doc = json.loads(document())
    op = doc["paths"].get(path, {}).get(method.lower(), {})
    out = []
    for raw in op.get("parameters", []):
        p = _resolve(doc, raw)
        if p.get("in") != "query" or "schema" not in p:
            continue
        schema = _resolve(doc, p["schema"])
        items = _resolve(doc, schema["items"]) if schema.get("type") == "array" else None
        if schema.get("type") == "object":
            continue  # deepObject parameters (keyVersion) are read by their route
        out.append((p["name"], schema, items))
    return tuple(out)


def check(method: str, path: str, qs: dict[str, list[str]]) -> None:
    if (method, path) in CHECKED:
        conform(method, path, qs)


def conform(method: str, template: str, qs: dict[str, list[str]]) -> None:
    """The query of the operation at `template` (the document's path, {parameters} and all) as the document says;
    for a route whose operation has path parameters, which `check` (by the request's path) cannot name."""
    for name, schema, items in query_parameters(method, template):
        params.conform(qs, name, items if items is not None else schema, array=items is not None)
