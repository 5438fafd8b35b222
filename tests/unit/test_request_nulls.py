"""Nulls OpenMeter's schema does not allow (kin-openapi answers 400 there) in the meter query body (MeterQueryRequest),
subjects (SubjectUpsert's currentPeriodStart/End) and LLM price overrides (Billow's own schema): a 400 naming the
field, nothing stored; each was taken for the field left out (200/201). On SQLite and PostgreSQL meta stores."""

from __future__ import annotations

from typing import Any

import pytest

from tests.entitlements.conftest import Billow

QUERY = "/api/v1/meters/tokens/query"
QUERY_FIELDS = ["clientId", "from", "to", "windowSize", "windowTimeZone", "subject", "filterCustomerId",
                "filterGroupBy", "advancedMeterGroupByFilters", "groupBy"]
PRICE = {"provider": "openai", "model": "gpt-x", "inputPerMillionTokens": "1", "outputPerMillionTokens": "2"}


def _named(out: dict[str, Any], field: str) -> bool:
    return out["status"] == 400 and [e["field"] for e in out["validationErrors"]] == [field]


@pytest.mark.parametrize("field", QUERY_FIELDS)
def test_a_null_in_the_meter_query_body_is_a_400_naming_it(meta_billow: Billow, field: str) -> None:
    status, out = meta_billow.call("POST", QUERY, {field: None})
    assert status == 400 and _named(out, field), (status, out)
    meta_billow.ok("POST", QUERY, {})  # the body without it is taken


@pytest.mark.parametrize("field", ["currentPeriodStart", "currentPeriodEnd"])
def test_a_null_subject_period_is_a_400_naming_it_and_stores_nothing(meta_billow: Billow, field: str) -> None:
    status, out = meta_billow.call("POST", "/api/v1/subjects", [{"key": "s1"}, {"key": "s2", field: None}])
    assert status == 400 and _named(out, f"[1].{field}"), (status, out)
    assert meta_billow.call("GET", "/api/v1/subjects/s1")[0] == 404  # the batch is refused whole
    meta_billow.ok("POST", "/api/v1/subjects", [{"key": "s1"}, {"key": "s2", "displayName": None, "metadata": None}])


@pytest.mark.parametrize("field", ["effectiveFrom", "currency", "cachedInputPerMillionTokens",
                                   "cacheWritePerMillionTokens"])
def test_a_null_in_an_llm_price_is_a_400_naming_it_and_stores_nothing(meta_billow: Billow, field: str) -> None:
    status, out = meta_billow.call("POST", "/api/v1/llm/prices", {**PRICE, field: None})
    assert status == 400 and _named(out, field), (status, out)
    assert meta_billow.ok("GET", "/api/v1/llm/prices", query={"provider": "openai"}) == []
    meta_billow.ok("POST", "/api/v1/llm/prices", PRICE)


# Found by re-sending accepted bodies with each non-nullable field null (both meta stores): meters (MeterCreate,
# MeterUpdate; ingestionPolicy is Billow's, not nullable), features (FeatureCreateInputs.unitCost), portal tokens
# (PortalToken: expiresAt, and the read-only fields a create ignores).
METER = {"slug": "calls", "eventType": "call", "aggregation": "COUNT", "groupBy": {"route": "$.route"}}


def test_a_null_ingestion_policy_on_a_new_meter_is_a_400_and_makes_nothing(meta_billow: Billow) -> None:
    status, out = meta_billow.call("POST", "/api/v1/meters", {**METER, "ingestionPolicy": None})
    assert status == 400 and _named(out, "ingestionPolicy"), (status, out)
    assert meta_billow.call("GET", "/api/v1/meters/calls")[0] == 404


@pytest.mark.parametrize("field", ["name", "description", "groupBy", "ingestionPolicy"])
def test_a_null_in_a_meter_update_is_a_400_and_changes_nothing(meta_billow: Billow, field: str) -> None:
    made = meta_billow.ok("POST", "/api/v1/meters", {**METER, "name": "Calls", "description": "API calls"})
    status, out = meta_billow.call("PUT", "/api/v1/meters/calls", {"name": "Calls", field: None})
    assert status == 400 and _named(out, field), (status, out)
    assert meta_billow.ok("GET", "/api/v1/meters/calls") == made


def test_a_null_unit_cost_is_a_400_and_makes_no_feature(meta_billow: Billow) -> None:
    status, out = meta_billow.call("POST", "/api/v1/features", {"key": "sso", "name": "SSO", "unitCost": None})
    assert status == 400 and _named(out, "unitCost"), (status, out)
    assert meta_billow.ok("GET", "/api/v1/features") == []


STATIC_LLM_COST = {"type": "llm", "provider": "openai", "model": "gpt-4o", "tokenType": "input"}


@pytest.mark.parametrize("field", ["provider", "providerProperty", "model", "modelProperty", "tokenType",
                                   "tokenTypeProperty"])
def test_a_null_in_an_llm_unit_cost_is_a_400_and_makes_no_feature(meta_billow: Billow, field: str) -> None:
    # OpenMeter's FeatureLLMUnitCost makes none nullable; a null beside its pair was taken for the field left out
    # (201). Each static value's null is sent beside its groupBy key (the meter's `model`), and each key's beside the
    # static value.
    pair = field.removesuffix("Property")
    unit = {**STATIC_LLM_COST, field: None} if field != pair else \
        {**{k: v for k, v in STATIC_LLM_COST.items() if k != pair}, f"{pair}Property": "model", pair: None}
    status, out = meta_billow.call("POST", "/api/v1/features", {"key": "ai", "name": "AI", "meterSlug": "tokens",
                                                                "unitCost": unit})
    assert status == 400 and _named(out, f"unitCost.{field}"), (status, out)
    assert meta_billow.ok("GET", "/api/v1/features") == []


@pytest.mark.parametrize("field", ["expiresAt", "createdAt", "expired", "token"])
def test_a_null_in_a_portal_token_is_a_400_and_makes_no_token(meta_billow: Billow, field: str) -> None:
    status, out = meta_billow.call("POST", "/api/v1/portal/tokens", {"subject": "customer_1", field: None})
    assert status == 400 and _named(out, field), (status, out)
    assert meta_billow.ok("GET", "/api/v1/portal/tokens") == []
