"""Validate a served JSON body against one of OpenMeter's schemas (its OpenAPI 3.0 document, components.schemas).

The document is OpenMeter's own (`../shared/reference/openmeter/openapi.yaml` beside the checkout) when it is
there, else the copy Billow serves (`shared/billow/web/openapi.json`, generated from it by scripts/gen_openapi.py
with the same schemas, prose dropped). OpenAPI 3.0's `nullable: true` becomes "or null"; everything else is JSON
Schema as written, checked with jsonschema-rs (formats such as date-time included)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema_rs
import yaml

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT.parent / "shared" / "reference" / "openmeter" / "openapi.yaml"
SERVED = ROOT / "shared" / "billow" / "web" / "openapi.json"


def _nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable(v) for k, v in node.items() if k != "nullable"}
    return {"anyOf": [out, {"type": "null"}]} if node.get("nullable") is True else out


@functools.cache
def schemas() -> dict[str, Any]:
    """OpenMeter's components.schemas, nullable rewritten."""
    doc = yaml.safe_load(REFERENCE.read_text()) if REFERENCE.exists() else json.loads(SERVED.read_text())
    return _nullable(doc["components"]["schemas"])  # type: ignore[no-any-return]


@functools.cache
def _validator(name: str) -> Any:
    assert name in schemas(), f"OpenMeter's document has no schema {name}"
    return jsonschema_rs.Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                               "components": {"schemas": schemas()}}, validate_formats=True)


def errors(name: str, value: Any) -> list[str]:
    """Every way `value` breaks OpenMeter's schema `name` (empty: it conforms)."""
    return [f"{'/'.join(str(p) for p in e.instance_path) or '<root>'}: {e.message}"
            for e in _validator(name).iter_errors(value)]


def assert_conforms(name: str, value: Any) -> None:
    problems = errors(name, value)
    assert not problems, f"not a valid OpenMeter {name}:\n" + "\n".join(problems[:20])
