"""Billing profiles' request bodies parsed into their documents (OpenMeter's BillingProfile: supplier,
workflow, apps; a customer override's workflow): pure functions, no I/O. The service
(billow.services.billing_profiles) stores what they return; a bad field is a ValidationFailed naming it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from billow.domain import catalog as catalog_rules
from billow.errors import ValidationFailed
from billow.ids import is_ulid
from billow.timeutil import parse_rfc3339

APP_TYPES = ("sandbox", "custom_invoicing", "stripe")
WORKFLOW_DEFAULTS: dict[str, Any] = {
    "collection": {"alignment": {"type": "subscription"}, "interval": "PT1H"},
    "invoicing": {"autoAdvance": True, "draftPeriod": "P0D", "dueAfter": "P30D", "progressiveBilling": True},
    "payment": {"collectionMethod": "charge_automatically"},
    "tax": {"enabled": False, "enforced": False},
}

# The fields of OpenMeter's workflow sections (BillingWorkflowCollectionSettings, ...InvoicingSettings,
# ...PaymentSettings, ...TaxSettings)
WORKFLOW_FIELDS: dict[str, frozenset[str]] = {
    "collection": frozenset({"alignment", "interval"}),
    "invoicing": frozenset({"autoAdvance", "draftPeriod", "dueAfter", "progressiveBilling",
                            "subscriptionEndProrationMode", "defaultTaxConfig"}),
    "payment": frozenset({"collectionMethod"}),
    "tax": frozenset({"enabled", "enforced"}),
}
PRORATION_MODES = ("bill_full_period", "bill_actual_period")

bad = ValidationFailed.at


def workflow_fields(section: str, values: dict[str, Any]) -> dict[str, Any]:
    """The fields of a workflow section OpenMeter's section has; any other is ignored, as OpenMeter's decoder ignores
    it (it was stored and shown back, whatever it held)."""
    return {k: v for k, v in values.items() if k in WORKFLOW_FIELDS[section]}


def _duration(value: object, field_name: str, *, zero_ok: bool) -> str:
    if zero_ok and value in ("P0D", "PT0S", "PT0H"):
        return str(value)
    problems: catalog_rules.Problems = []
    out = catalog_rules.duration(value, field_name, problems, minimum=timedelta(0))
    if problems or out is None:
        raise catalog_rules.failure(problems)
    return out


def parse_workflow(body: object, base: dict[str, Any]) -> dict[str, Any]:
    """A workflow body merged over `base` (the defaults, a profile's workflow), section by section, and checked;
    `base` itself is never changed. None gives `base`."""
    if body is None:
        return base
    if not isinstance(body, dict):
        raise bad("workflow", "must be an object")
    out = {k: dict(v) for k, v in base.items()}
    for section, values in body.items():
        if section not in out or not isinstance(values, dict):
            raise bad(f"workflow.{section}", "unknown workflow section" if section not in out else "must be an object")
        out[section].update(workflow_fields(section, values))
    inv = out["invoicing"]
    for flag in ("autoAdvance", "progressiveBilling"):
        if not isinstance(inv.get(flag), bool):
            raise bad(f"workflow.invoicing.{flag}", "must be a boolean")
    inv["draftPeriod"] = _duration(inv.get("draftPeriod"), "workflow.invoicing.draftPeriod", zero_ok=True)
    inv["dueAfter"] = _duration(inv.get("dueAfter"), "workflow.invoicing.dueAfter", zero_ok=True)
    if "invoicing" in body:
        mode = inv.get("subscriptionEndProrationMode")
        if mode is not None and mode not in PRORATION_MODES:
            raise bad("workflow.invoicing.subscriptionEndProrationMode", "must be one of " + ", ".join(PRORATION_MODES))
        if isinstance(body["invoicing"], dict) and body["invoicing"].get("defaultTaxConfig") is not None:
            # OpenMeter's TaxConfig, each setting checked as a rate card's is; stored as checked (it was stored and
            # shown back as sent: any type, any size, in any field)
            inv["defaultTaxConfig"] = catalog_rules.parse_tax_config(body["invoicing"]["defaultTaxConfig"],
                                                                     "workflow.invoicing.defaultTaxConfig")
    if out["payment"].get("collectionMethod") not in ("charge_automatically", "send_invoice"):
        raise bad("workflow.payment.collectionMethod", "must be charge_automatically or send_invoice")
    # The sections the body sets (a stored workflow, `base`, from before these checks is taken as it is):
    for flag in ("enabled", "enforced") if "tax" in body else ():
        if not isinstance(out["tax"].get(flag), bool):
            raise bad(f"workflow.tax.{flag}", "must be a boolean")
    if "collection" in body:
        _collection(out["collection"])
    return out


def merged_workflow(workflow: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """A stored override's workflow (checked by parse_workflow when it was written) over its profile's, section by
    section; neither is changed."""
    out = {k: dict(v) for k, v in base.items()}
    for section, values in workflow.items():
        if section in out and isinstance(values, dict):
            out[section].update(values)
    return out


def override_workflow(body: object) -> dict[str, Any] | None:
    """A customer override's own `workflow` as stored: the sections and OpenMeter's fields it sets, each as
    parse_workflow checked it (merged over its profile's workflow when read). None for none."""
    if body is None:
        return None
    checked = parse_workflow(body, WORKFLOW_DEFAULTS)
    assert isinstance(body, dict)  # parse_workflow refuses anything else
    return {section: {k: checked[section][k] for k in workflow_fields(section, values)}
            for section, values in body.items()}


def _collection(collection: dict[str, Any]) -> None:
    """OpenMeter's BillingWorkflowCollectionSettings: an ISO 8601 `interval` and an `alignment` object."""
    collection["interval"] = _duration(collection.get("interval"), "workflow.collection.interval", zero_ok=True)
    alignment = collection.get("alignment")
    if not isinstance(alignment, dict):
        raise bad("workflow.collection.alignment", 'must be an object: {"type": "subscription"} or '
                                                   '{"type": "anchored", "recurringPeriod": {...}}')
    if alignment.get("type") not in ("subscription", "anchored"):
        raise bad("workflow.collection.alignment.type", "must be subscription or anchored")
    if alignment["type"] == "anchored":
        _recurring_period(alignment.get("recurringPeriod"), "workflow.collection.alignment.recurringPeriod")


def _recurring_period(value: object, field: str) -> None:
    """OpenMeter's RecurringPeriodV2 (an anchored collection's): an ISO 8601 `interval` and an RFC 3339 `anchor`."""
    if not isinstance(value, dict):
        raise bad(field, "required for an anchored alignment: {interval, anchor}")
    _duration(value.get("interval"), f"{field}.interval", zero_ok=False)
    anchor = value.get("anchor")
    if not isinstance(anchor, str):
        raise bad(f"{field}.anchor", "must be an RFC 3339 date-time")
    parse_rfc3339(anchor, f"{field}.anchor")


def parse_apps(body: object) -> dict[str, str]:
    """The app for each role (tax, invoicing, payment): an installed app's id (a ULID, as OpenMeter's
    BillingProfileAppsCreate has it) or an app type, each also as {id} / {type}; sandbox by default."""
    if not isinstance(body, dict):
        raise bad("apps", "must be {tax, invoicing, payment} with app ids or app types sandbox, custom_invoicing "
                          "or stripe")
    out = {}
    for role in ("tax", "invoicing", "payment"):
        app = body.get(role, "sandbox")
        if isinstance(app, dict):
            app = app.get("id") or app.get("type")
        if app not in APP_TYPES and not (isinstance(app, str) and is_ulid(app)):
            raise bad(f"apps.{role}", f"must be an app id or one of {', '.join(APP_TYPES)}")
        out[role] = app
    return out


ADDRESS_FIELDS = ("country", "postalCode", "state", "city", "line1", "line2", "phoneNumber")


def parse_supplier(body: object) -> dict[str, Any]:
    """OpenMeter's BillingParty: `name` (required), `key`, `taxId` {code} and `addresses` of Address, every value a
    string (each is printed on the invoice); a field BillingParty does not have is ignored, as OpenMeter does (it
    was stored and printed, whatever it held)."""
    if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not body["name"].strip():
        raise bad("supplier.name", "the supplier's name is required (it is printed on every invoice)")
    out: dict[str, Any] = {"name": body["name"]}
    for key in ("id", "key"):
        if body.get(key) is not None:
            out[key] = _text(body[key], f"supplier.{key}")
    if body.get("taxId") is not None:
        tax_id = body["taxId"]
        if not isinstance(tax_id, dict):
            raise bad("supplier.taxId", "must be an object: {code}")
        out["taxId"] = {"code": _text(tax_id["code"], "supplier.taxId.code")} if tax_id.get("code") is not None else {}
    if body.get("addresses") is not None:
        if not isinstance(body["addresses"], list):
            raise bad("supplier.addresses", "must be a list of addresses")
        out["addresses"] = []
        for i, address in enumerate(body["addresses"]):
            if not isinstance(address, dict):
                raise bad(f"supplier.addresses[{i}]", "must be an address object")
            out["addresses"].append({k: _text(address[k], f"supplier.addresses[{i}].{k}")
                                     for k in ADDRESS_FIELDS if address.get(k) is not None})
    return out


def _text(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise bad(field, "must be a string")
    return value
