"""The served API document (scripts/gen_openapi.py) drops OpenMeter's prose (description, example, summary) but not a
schema's fields of those names: it dropped them too, so 47 schemas lacked their `description` field (CustomerCreate,
MeterCreate, BillingProfileCreate, PlanCreate, rate cards, invoice lines...), and with it its maxLength."""

from __future__ import annotations

import json

import yaml

from scripts.gen_openapi import strip
from tests.support.openmeter_schema import REFERENCE, SERVED


def test_prose_is_dropped_but_fields_named_like_it_stay() -> None:
    schema = {"type": "object", "description": "prose", "example": {"a": 1}, "properties": {
        "description": {"type": "string", "maxLength": 1024, "description": "prose"},
        "summary": {"type": "string"}, "example": {"type": "object", "properties": {"description": {"example": "x"}}}}}
    assert strip(schema) == {"type": "object", "properties": {
        "description": {"type": "string", "maxLength": 1024}, "summary": {"type": "string"},
        "example": {"type": "object", "properties": {"description": {}}}}}


# Schemas of OpenMeter's whose `description` field the served document lost (a sample of the 47; the whole comparison
# below needs OpenMeter's document beside the checkout, which a CI checkout may not have).
HAVE_DESCRIPTION = ("AddonCreate", "BillingProfileCreate", "CustomerCreate", "CustomerReplaceUpdate", "InvoiceLine",
                    "MeterCreate", "MeterUpdate", "PlanCreate", "PlanPhase", "RateCardFlatFee", "RateCardUsageBased",
                    "SubscriptionItem")


def test_every_served_openmeter_schema_has_openmeter_s_fields() -> None:
    ours = json.loads(SERVED.read_text())["components"]["schemas"]
    assert [name for name in HAVE_DESCRIPTION if "description" not in ours[name].get("properties", {})] == []
    assert ours["CustomerCreate"]["properties"]["description"] == {"type": "string", "maxLength": 1024,
                                                                     "title": "Description"}
    if REFERENCE.exists():  # OpenMeter's own document: every field of every schema Billow serves
        theirs = yaml.safe_load(REFERENCE.read_text())["components"]["schemas"]
        missing = {name: sorted(set(theirs[name].get("properties", {})) - set(schema.get("properties", {})))
                   for name, schema in ours.items() if name in theirs}
        assert {name: fields for name, fields in missing.items() if fields} == {}
