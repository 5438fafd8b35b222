"""Build Billow's OpenAPI document from OpenMeter's v1 contract: the operations Billow serves, with their
schemas, and no upstream prose (descriptions and examples are dropped). Run after adding a route:
    .venv/bin/python scripts/gen_openapi.py ../shared/reference/openmeter/openapi.yaml
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

OPERATIONS = {
    "/api/v1/events": ["get", "post"],
    "/api/v1/meters": ["get", "post"],
    "/api/v1/meters/{meterIdOrSlug}": ["get", "put", "delete"],
    "/api/v1/meters/{meterIdOrSlug}/query": ["get", "post"],
    "/api/v1/meters/{meterIdOrSlug}/subjects": ["get"],
    "/api/v1/meters/{meterIdOrSlug}/group-by/{groupByKey}/values": ["get"],
    "/api/v1/customers/{customerIdOrKey}/access": ["get"],
    "/api/v1/info/currencies": ["get"],
    "/api/v1/debug/metrics": ["get"],
    "/api/v2/events": ["get"],
    "/api/v1/subjects": ["get", "post"],
    "/api/v1/subjects/{subjectIdOrKey}": ["get", "delete"],
    "/api/v1/customers": ["get", "post"],
    "/api/v1/customers/{customerIdOrKey}": ["get", "put", "delete"],
    "/api/v1/customers/{customerIdOrKey}/entitlements/{featureKey}/value": ["get"],
    "/api/v1/features": ["get", "post"],
    "/api/v1/features/{featureId}": ["get", "delete"],
    "/api/v1/entitlements": ["get"],
    "/api/v1/entitlements/{entitlementId}": ["get"],
    "/api/v1/grants": ["get"],
    "/api/v1/grants/{grantId}": ["delete"],
    "/api/v1/subjects/{subjectIdOrKey}/entitlements": ["get", "post"],
    "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/grants": ["get", "post"],
    "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/override": ["put"],
    "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/value": ["get"],
    "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementId}": ["get", "delete"],
    "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementId}/history": ["get"],
    "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementId}/reset": ["post"],
    "/api/v2/customers/{customerIdOrKey}/entitlements": ["get", "post"],
    "/api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}": ["get", "delete"],
    "/api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/grants": ["get", "post"],
    "/api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/history": ["get"],
    "/api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/override": ["put"],
    "/api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/reset": ["post"],
    "/api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/value": ["get"],
    "/api/v2/entitlements": ["get"],
    "/api/v2/entitlements/{entitlementId}": ["get"],
    "/api/v2/grants": ["get"],
    "/api/v1/notification/channels": ["get", "post"],
    "/api/v1/notification/channels/{channelId}": ["get", "put", "delete"],
    "/api/v1/notification/rules": ["get", "post"],
    "/api/v1/notification/rules/{ruleId}": ["get", "put", "delete"],
    "/api/v1/notification/rules/{ruleId}/test": ["post"],
    "/api/v1/notification/events": ["get"],
    "/api/v1/notification/events/{eventId}": ["get"],
    "/api/v1/notification/events/{eventId}/resend": ["post"],
    "/api/v1/portal/tokens": ["get", "post"],
    "/api/v1/portal/tokens/invalidate": ["post"],
    "/api/v1/portal/meters/{meterSlug}/query": ["get"],
    "/api/v1/plans": ["get", "post"],
    "/api/v1/plans/{planIdOrKey}/next": ["post"],
    "/api/v1/plans/{planId}": ["get", "put", "delete"],
    "/api/v1/plans/{planId}/publish": ["post"],
    "/api/v1/plans/{planId}/archive": ["post"],
    "/api/v1/plans/{planId}/addons": ["get", "post"],
    "/api/v1/plans/{planId}/addons/{planAddonId}": ["get", "put", "delete"],
    "/api/v1/addons": ["get", "post"],
    "/api/v1/addons/{addonId}": ["get", "put", "delete"],
    "/api/v1/addons/{addonId}/publish": ["post"],
    "/api/v1/addons/{addonId}/archive": ["post"],
    "/api/v1/subscriptions": ["post"],
    "/api/v1/subscriptions/{subscriptionId}": ["get", "patch", "delete"],
    "/api/v1/subscriptions/{subscriptionId}/cancel": ["post"],
    "/api/v1/subscriptions/{subscriptionId}/change": ["post"],
    "/api/v1/subscriptions/{subscriptionId}/unschedule-cancelation": ["post"],
    "/api/v1/subscriptions/{subscriptionId}/migrate": ["post"],
    "/api/v1/subscriptions/{subscriptionId}/restore": ["post"],
    "/api/v1/subscriptions/{subscriptionId}/addons": ["get", "post"],
    "/api/v1/subscriptions/{subscriptionId}/addons/{subscriptionAddonId}": ["get", "patch"],
    "/api/v1/customers/{customerIdOrKey}/subscriptions": ["get"],
    "/api/v1/billing/profiles": ["get", "post"],
    "/api/v1/billing/profiles/{id}": ["get", "put", "delete"],
    "/api/v1/billing/customers/{customerId}": ["get", "put", "delete"],
    "/api/v1/billing/customers/{customerId}/invoices/pending-lines": ["post"],
    "/api/v1/billing/customers": ["get"],
    "/api/v1/billing/customers/{customerId}/invoices/simulate": ["post"],
    "/api/v1/billing/invoices/{invoiceId}/snapshot-quantities": ["post"],
    "/api/v1/billing/invoices/{invoiceId}/taxes/recalculate": ["post"],
    "/api/v1/billing/invoices": ["get"],
    "/api/v1/billing/invoices/invoice": ["post"],
    "/api/v1/billing/invoices/{invoiceId}": ["get", "put", "delete"],
    "/api/v1/billing/invoices/{invoiceId}/advance": ["post"],
    "/api/v1/billing/invoices/{invoiceId}/approve": ["post"],
    "/api/v1/billing/invoices/{invoiceId}/retry": ["post"],
    "/api/v1/billing/invoices/{invoiceId}/void": ["post"],
    "/api/v1/apps/custom-invoicing/{invoiceId}/draft/synchronized": ["post"],
    "/api/v1/apps/custom-invoicing/{invoiceId}/issuing/synchronized": ["post"],
    "/api/v1/apps/custom-invoicing/{invoiceId}/payment/status": ["post"],
    "/api/v1/info/progress/{id}": ["get"],  # a backtest's progress (issue 20)
    # apps as entities (issue 16): installed apps, the marketplace, customer app data, Stripe sessions
    "/api/v1/apps": ["get"],
    "/api/v1/apps/{id}": ["get", "put", "delete"],
    "/api/v1/apps/{id}/stripe/api-key": ["put"],
    "/api/v1/apps/{id}/stripe/webhook": ["post"],
    "/api/v1/marketplace/listings": ["get"],
    "/api/v1/marketplace/listings/{type}": ["get"],
    "/api/v1/marketplace/listings/{type}/install": ["post"],
    "/api/v1/marketplace/listings/{type}/install/apikey": ["post"],
    "/api/v1/marketplace/listings/{type}/install/oauth2": ["get"],
    "/api/v1/marketplace/listings/{type}/install/oauth2/authorize": ["get"],
    "/api/v1/customers/{customerIdOrKey}/apps": ["get", "put"],
    "/api/v1/customers/{customerIdOrKey}/apps/{appId}": ["delete"],
    "/api/v1/customers/{customerIdOrKey}/stripe": ["get", "put"],
    "/api/v1/customers/{customerIdOrKey}/stripe/portal": ["post"],
    "/api/v1/stripe/checkout/sessions": ["post"],
}
DROP = {"description", "example", "examples", "summary", "x-enum-varnames"}
OUT = Path(__file__).resolve().parent.parent / "shared" / "billow" / "web" / "openapi.json"
# Billow's own operations (not OpenMeter's), kept apart so that adding to OPERATIONS never collides with them.
BILLOW_OPERATIONS = Path(__file__).resolve().parent / "billow_operations.yaml"
BILLOW_TAG = "Billow extensions"


def billow_operations() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Billow's paths (each operation tagged BILLOW_TAG and marked x-billow-extension) and its components."""
    own = yaml.safe_load(BILLOW_OPERATIONS.read_text())
    for item in own["paths"].values():
        for op in item.values():
            op["tags"], op["x-billow-extension"] = [BILLOW_TAG], True
    return own["paths"], own.get("components", {})


def strip(node: Any, names: bool = False) -> Any:
    """The document without upstream prose. A `properties` map's keys are field names, not prose (a schema's
    `description` field stays)."""
    if isinstance(node, dict):
        return {k: strip(v, k == "properties" and not names) for k, v in node.items() if names or k not in DROP}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        r = node.get("$ref")
        if isinstance(r, str):
            found.add(r)
        for v in node.values():
            refs(v, found)
    elif isinstance(node, list):
        for v in node:
            refs(v, found)


def main(source: str) -> None:
    spec = yaml.safe_load(Path(source).read_text())
    paths = {p: {m: spec["paths"][p][m] for m in ms} for p, ms in OPERATIONS.items()}
    # customers list: Billow implements paging (page, pageSize) and includeDeleted only.
    comps: dict[str, dict[str, Any]] = {}
    todo: set[str] = set()
    own_paths, own_comps = billow_operations()
    refs([paths, own_paths, own_comps], todo)
    seen: set[str] = set()
    while todo:
        r = todo.pop()
        if r in seen:
            continue
        seen.add(r)
        _, _, kind, name = r.split("/", 3)
        if name in own_comps.get(kind, {}):
            continue
        node = spec["components"][kind][name]
        comps.setdefault(kind, {})[name] = node
        refs(node, todo)
    doc = {
        "openapi": spec.get("openapi", "3.0.3"),
        "info": {"title": "Billow API", "version": "1.0.0",
                 "description": "Billow serves the operations below with OpenMeter's paths (v1, and v2 for entitlements), fields and "
                                "shapes, and its own, tagged \"Billow extensions\" (x-billow-extension: true)."},
        "servers": [{"url": "/"}],
        "paths": strip(paths),
        "components": strip({k: dict(sorted(v.items())) for k, v in sorted(comps.items())}),
    }
    if "securitySchemes" in spec.get("components", {}):
        doc["components"]["securitySchemes"] = strip(spec["components"]["securitySchemes"])
    for path, item in own_paths.items():
        assert not set(item) & set(doc["paths"].get(path, {})), f"{path}: both OpenMeter's and Billow's"
        doc["paths"].setdefault(path, {}).update(item)
    for kind, named in own_comps.items():
        assert not set(named) & set(doc["components"].get(kind, {})), f"{kind}: a Billow name is OpenMeter's"
        doc["components"][kind] = dict(sorted({**doc["components"].get(kind, {}), **named}.items()))
    # Billow's fields on OpenMeter's schemas (billow_operations.yaml `x-billow-properties`: schema -> properties).
    own = yaml.safe_load(BILLOW_OPERATIONS.read_text())
    for name, props in (own.get("x-billow-properties") or {}).items():
        target = doc["components"]["schemas"][name].setdefault("properties", {})
        assert not set(props) & set(target), f"{name}: a Billow property is OpenMeter's"
        target.update({k: {**v, "x-billow-extension": True} for k, v in props.items()})
    # Billow's branches of OpenMeter's schemas (`x-billow-variants`: schema -> discriminator) and enum values.
    for name, disc in (own.get("x-billow-variants") or {}).items():
        schemas = doc["components"]["schemas"]
        schemas[name] = {"type": "object", "oneOf": [{"$ref": r} for r in disc["mapping"].values()],
                         "discriminator": disc}
    for name, values in (own.get("x-billow-enums") or {}).items():
        node = doc["components"]["schemas"][name]
        node["enum"] = list(dict.fromkeys([*node["enum"], *values]))
    OUT.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    print(f"wrote {OUT} ({len(doc['paths'])} paths, {len(own_paths)} of them Billow's own)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/reference/openmeter/openapi.yaml")
