"""Request bodies held to the bounds the served OpenAPI document gives their fields (billow.web.body_contract: a
string's maxLength/minLength/pattern, an array's maxItems/minItems), as OpenMeter's request validator holds them: a 400
naming the field, nothing stored or changed. The ones below Billow took (a sweep putting one value outside each bound
of accepted bodies found them): a customer's description over 1,024 characters, a meter's empty valueProperty, a meter
query's clientId outside 1 to 36 characters, and a billing profile's name, description, supplier key, tax code,
second address and address country."""

from __future__ import annotations

from typing import Any

import pytest

from billow.web import body_contract
from tests.entitlements.conftest import Billow
from tests.support.billing import PROFILE

CUSTOMER = {"key": "acme", "name": "Acme", "usageAttribution": {"subjectKeys": ["customer_1"]}}
ADDRESS = {"country": "DE", "city": "Berlin"}
PROFILE_2 = {**PROFILE, "name": "EU", "default": False}


def _refused(b: Billow, method: str, path: str, body: Any, field: str) -> None:
    status, out = b.call(method, path, body)
    assert status == 400, (status, out)
    assert field in [e["field"] for e in out["validationErrors"]], out


def test_a_customer_description_over_1024_characters_is_refused(meta_billow: Billow) -> None:
    _refused(meta_billow, "POST", "/api/v1/customers", {**CUSTOMER, "description": "d" * 1025}, "description")
    assert meta_billow.ok("GET", "/api/v1/customers")["items"] == []
    meta_billow.ok("POST", "/api/v1/customers", {**CUSTOMER, "description": "d" * 1024})
    _refused(meta_billow, "PUT", "/api/v1/customers/acme", {**CUSTOMER, "description": "e" * 1025}, "description")
    assert meta_billow.ok("GET", "/api/v1/customers/acme")["description"] == "d" * 1024


def test_an_empty_value_property_makes_no_meter(meta_billow: Billow) -> None:
    _refused(meta_billow, "POST", "/api/v1/meters", {"slug": "calls", "eventType": "call", "aggregation": "COUNT",
                                                "valueProperty": ""}, "valueProperty")
    assert meta_billow.call("GET", "/api/v1/meters/calls")[0] == 404


@pytest.mark.parametrize("client_id", ["", "c" * 37])
def test_a_meter_query_client_id_outside_1_to_36_characters_is_refused(meta_billow: Billow, client_id: str) -> None:
    _refused(meta_billow, "POST", "/api/v1/meters/tokens/query", {"clientId": client_id}, "clientId")
    meta_billow.ok("POST", "/api/v1/meters/tokens/query", {"clientId": "c" * 36})


@pytest.mark.parametrize(("edit", "field"), [
    ({"name": "n" * 257}, "name"),
    ({"name": ""}, "name"),
    ({"description": "d" * 1025}, "description"),
    ({"supplier": {"name": "S", "key": ""}}, "supplier.key"),
    ({"supplier": {"name": "S", "key": "k" * 257}}, "supplier.key"),
    ({"supplier": {"name": "S", "taxId": {"code": ""}}}, "supplier.taxId.code"),
    ({"supplier": {"name": "S", "taxId": {"code": "t" * 33}}}, "supplier.taxId.code"),
    ({"supplier": {"name": "S", "addresses": [ADDRESS, ADDRESS]}}, "supplier.addresses"),
    ({"supplier": {"name": "S", "addresses": [{**ADDRESS, "country": "de"}]}}, "supplier.addresses[0].country"),
    ({"supplier": {"name": "S", "addresses": [{**ADDRESS, "country": "DEU"}]}}, "supplier.addresses[0].country"),
])
def test_a_billing_profile_outside_its_bounds_is_refused(meta_billow: Billow, edit: dict[str, Any], field: str) -> None:
    default = meta_billow.ok("POST", "/api/v1/billing/profiles", PROFILE)
    _refused(meta_billow, "POST", "/api/v1/billing/profiles", {**PROFILE_2, **edit}, field)
    assert [p["id"] for p in meta_billow.ok("GET", "/api/v1/billing/profiles")["items"]] == [default["id"]]
    _refused(meta_billow, "PUT", f"/api/v1/billing/profiles/{default['id']}", {**PROFILE, **edit}, field)
    assert meta_billow.ok("GET", f"/api/v1/billing/profiles/{default['id']}") == default


def test_every_field_outside_its_bounds_is_named_once() -> None:
    body = {"name": "", "description": "d" * 1025, "supplier": {"key": "", "addresses": [{"country": "x"}] * 2}}
    with pytest.raises(Exception) as caught:
        body_contract.check("POST", "/api/v1/billing/profiles", body)
    assert [(e["field"], e["message"]) for e in caught.value.errors] == [  # type: ignore[attr-defined]
        ("name", "at least 1 characters"), ("description", "at most 1024 characters"),
        ("supplier.key", "at least 1 characters"), ("supplier.addresses", "at most 1 items"),
        ("supplier.addresses[0].country", "at least 2 characters"),
        ("supplier.addresses[0].country", "must match the pattern ^[A-Z]{2}$"),
        ("supplier.addresses[1].country", "at least 2 characters"),
        ("supplier.addresses[1].country", "must match the pattern ^[A-Z]{2}$")]


def test_the_most_specific_operation_is_the_one_checked() -> None:
    assert body_contract.body_schema("POST", "/api/v1/meters/tokens/query") == {
        "$ref": "#/components/schemas/MeterQueryRequest"}
    assert body_contract.body_schema("GET", "/api/v1/customers") is None
    assert body_contract.body_schema("POST", "/api/v1/customers/x/y/z") is None
