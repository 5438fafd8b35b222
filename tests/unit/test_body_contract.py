"""Request bodies held to the bounds the served OpenAPI document gives their fields (billow.web.body_contract: a
string's maxLength/minLength/pattern, an array's maxItems/minItems), as OpenMeter's request validator holds them: a 400
naming the field, nothing stored or changed. The ones below Billow took (a sweep putting one value outside each bound
of accepted bodies found them): a customer's description over 1,024 characters, a meter's empty valueProperty, a meter
query's clientId outside 1 to 36 characters, and a billing profile's name, description, supplier key, tax code,
second address and address country."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from billow.errors import ValidationFailed
from billow.web import body_contract
from tests.entitlements.conftest import Billow
from tests.support.billing import PROFILE
from tests.support.catalog import plan_body, published, setup

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


# -- enums and number bounds (2026-12-07) ---------------------------------------------------------------------------
# A string enum, minimum, maximum and the exclusive bounds are checked too. Billow took (201 / 200, the value dropped
# or stored as sent) a subscription's costBasisMode or settlementMode outside OpenMeter's enums, on create and on
# change (a oneOf of plan / custom without a discriminator: held to the branch whose required field the body has),
# and a billing profile's workflow.invoicing.subscriptionEndProrationMode. Every number bound probed (grant amount,
# priority and expiration count, issueAfterReset and its priority, discount percentages, migrate's targetVersion,
# an add-on's quantity) was already a 400 naming the field from the services; the body check now answers those first.


def _subscribed(b: Billow) -> dict[str, Any]:
    setup(b)
    published(b, plan_body("pro", "10"))
    published(b, plan_body("max", "20"))
    return b.ok("POST", "/api/v1/subscriptions", {"customerKey": "acme", "plan": {"key": "pro"}})  # type: ignore[no-any-return]


@pytest.mark.parametrize("edit", [{"costBasisMode": "weird"}, {"settlementMode": "cash"}])
def test_a_subscription_outside_its_enums_is_refused(meta_billow: Billow, edit: dict[str, str]) -> None:
    b = meta_billow
    setup(b)
    published(b, plan_body("pro", "10"))
    _refused(b, "POST", "/api/v1/subscriptions", {"customerKey": "acme", "plan": {"key": "pro"}, **edit}, next(iter(edit)))
    assert b.ok("GET", "/api/v1/customers/acme", query={"expand": "subscriptions"}).get("subscriptions") in (None, [])
    b.ok("POST", "/api/v1/subscriptions", {"customerKey": "acme", "plan": {"key": "pro"},
                                          "costBasisMode": "dynamic", "settlementMode": "credit_then_invoice"})


def test_a_subscription_change_outside_its_enums_is_refused(meta_billow: Billow) -> None:
    sub = _subscribed(meta_billow)
    change = f"/api/v1/subscriptions/{sub['id']}/change"
    _refused(meta_billow, "POST", change, {"plan": {"key": "max"}, "timing": "immediate", "costBasisMode": "weird"},
             "costBasisMode")
    assert meta_billow.ok("GET", f"/api/v1/subscriptions/{sub['id']}")["plan"]["key"] == "pro"


def test_a_billing_profile_s_subscription_end_proration_mode_outside_its_enum_is_refused(meta_billow: Billow) -> None:
    body = {**PROFILE, "workflow": {"invoicing": {"dueAfter": "P14D", "subscriptionEndProrationMode": "whatever"}}}
    _refused(meta_billow, "POST", "/api/v1/billing/profiles", body, "workflow.invoicing.subscriptionEndProrationMode")
    assert meta_billow.ok("GET", "/api/v1/billing/profiles")["items"] == []
    body["workflow"]["invoicing"]["subscriptionEndProrationMode"] = "bill_full_period"  # type: ignore[index]
    meta_billow.ok("POST", "/api/v1/billing/profiles", body)


@pytest.mark.parametrize(("path", "body", "field", "message"), [
    ("/api/v1/meters", {"slug": "m", "eventType": "e", "aggregation": "sum"}, "aggregation",
     "must be one of SUM, COUNT, UNIQUE_COUNT, AVG, MIN, MAX, LATEST"),
    ("/api/v1/subjects/customer_1/entitlements/tokens/grants",
     {"amount": 10, "effectiveAt": "2026-01-01T00:00:00Z", "priority": 256,
      "expiration": {"duration": "MONTH", "count": 0}}, "priority", "must be at most 255"),
    ("/api/v1/subjects/customer_1/entitlements/tokens/grants",
     {"amount": 10, "effectiveAt": "2026-01-01T00:00:00Z", "expiration": {"duration": "MONTH", "count": 0}},
     "expiration.count", "must be at least 1"),
    ("/api/v1/subjects/customer_1/entitlements/tokens/grants",
     {"amount": "-1", "effectiveAt": "2026-01-01T00:00:00Z", "expiration": {"duration": "MONTH", "count": 1}},
     None, None),  # a number as a string: its type is the service's to judge
])
def test_number_bounds_and_enums_name_the_field(path: str, body: dict[str, Any], field: str | None,
                                                message: str | None) -> None:
    if field is None:
        body_contract.check("POST", path, body)
        return
    with pytest.raises(ValidationFailed) as caught:
        body_contract.check("POST", path, body)
    assert {"field": field, "message": message} in caught.value.errors


def test_exclusive_bounds_of_either_openapi_version() -> None:
    """OpenAPI 3.0's boolean exclusiveMinimum/exclusiveMaximum beside minimum/maximum, and 3.1's numbers."""
    def problems(node: dict[str, Any], value: Any) -> list[str]:
        out: list[dict[str, str]] = []
        body_contract._walk(node, value, "n", out)
        return [p["message"] for p in out]

    assert problems({"type": "number", "minimum": 0, "exclusiveMinimum": True}, 0) == ["must be greater than 0"]
    assert problems({"type": "number", "minimum": 0, "exclusiveMinimum": True}, Decimal("0.01")) == []
    assert problems({"type": "number", "maximum": 1, "exclusiveMaximum": True}, 1) == ["must be less than 1"]
    assert problems({"type": "number", "exclusiveMaximum": 1.5}, Decimal("1.5")) == ["must be less than 1.5"]
    assert problems({"type": "number", "exclusiveMinimum": 0}, Decimal("0.000001")) == []
    assert problems({"type": "integer", "minimum": 1}, True) == []  # a boolean is no number (the service's)
    assert problems({"type": "string", "enum": ["a", "b"]}, "c") == ["must be one of a, b"]
    assert problems({"enum": [1, 2]}, "3") == []  # a type is the service's to judge


def test_number_and_boolean_enums_and_multiple_of() -> None:
    """The document's number and boolean enums and multipleOf: they were not checked (a string enum alone was). None
    is in OpenMeter's document today; a field that gains one is checked as kin-openapi would check it."""
    def problems(node: dict[str, Any], value: Any) -> list[str]:
        out: list[dict[str, str]] = []
        body_contract._walk(node, value, "n", out)
        return [p["message"] for p in out]

    assert problems({"type": "integer", "enum": [1, 2]}, 3) == ["must be one of 1, 2"]
    assert problems({"type": "integer", "enum": [1, 2]}, Decimal("2.0")) == []
    assert problems({"type": "integer", "enum": [1, 2]}, True) == ["must be one of 1, 2"]  # true is not 1
    assert problems({"type": "boolean", "enum": [True]}, False) == ["must be one of true"]
    assert problems({"type": "boolean", "enum": [True]}, 1) == ["must be one of true"]
    assert problems({"type": "number", "enum": [0.5, 1.5]}, Decimal("0.50")) == []
    assert problems({"type": "number", "multipleOf": 0.01}, Decimal("0.3")) == []  # 0.3 % 0.01 is not 0 in floats
    assert problems({"type": "number", "multipleOf": 0.01}, Decimal("0.305")) == ["must be a multiple of 0.01"]
    assert problems({"type": "integer", "multipleOf": 5}, 12) == ["must be a multiple of 5"]
    assert problems({"type": "integer", "multipleOf": 5}, Decimal("1E+999999")) == []  # too big to judge: not refused
    assert problems({"type": "number", "multipleOf": 3}, Decimal("1E-999999")) == ["must be a multiple of 3"]
