"""A feature's `unitCost` (OpenMeter's FeatureUnitCost on POST /api/v1/features): kept and shown as sent, exact, and
checked as OpenMeter's productcatalog/feature.UnitCost.Validate and ValidateWithMeter check it. Before 2026-12-07
Billow dropped the field: a feature created with a unit cost came back without one, and any value was taken."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.entitlements.conftest import Billow, on_meta_store


@pytest.fixture(params=["sqlite", "postgres"])
def billow(request: pytest.FixtureRequest, tmp_path: Path, namespace: str) -> Iterator[Billow]:
    with on_meta_store(request, tmp_path, namespace) as b:
        yield b


def _create(b: Billow, key: str, unit_cost: Any, meter: bool = True) -> tuple[int, Any]:
    body = {"key": key, "name": key, "unitCost": unit_cost, **({"meterSlug": "tokens"} if meter else {})}
    return b.call("POST", "/api/v1/features", body)


def test_a_manual_unit_cost_is_kept_exact_and_shown(billow: Billow) -> None:
    b = billow
    status, made = _create(b, "api_calls", {"type": "manual", "amount": "0.000012500"}, meter=False)
    assert status == 201, made
    assert made["unitCost"] == {"type": "manual", "amount": "0.0000125"}
    assert b.ok("GET", "/api/v1/features/api_calls")["unitCost"] == made["unitCost"]
    assert b.ok("GET", f"/api/v1/features/{made['id']}")["unitCost"] == made["unitCost"]
    listed = {f["key"]: f for f in b.ok("GET", "/api/v1/features")}
    assert listed["api_calls"]["unitCost"] == {"type": "manual", "amount": "0.0000125"}


def test_an_llm_unit_cost_names_static_values_or_groupby_keys_of_its_meter(billow: Billow) -> None:
    b = billow
    cost = {"type": "llm", "provider": "openai", "modelProperty": "model", "tokenType": "output"}
    status, made = _create(b, "gpt_out", cost)
    assert status == 201, made
    assert made["unitCost"] == cost
    assert b.ok("GET", "/api/v1/features/gpt_out")["unitCost"] == cost
    longest = {"type": "llm", "provider": "p" * 128, "model": "m" * 256, "tokenType": "input"}
    status, made = _create(b, "longest", longest)
    assert status == 201, made
    assert made["unitCost"] == longest


@pytest.mark.parametrize(("unit_cost", "meter", "field"), [
    ({"type": "manual", "amount": "-0.01"}, False, "unitCost.amount"),
    ({"type": "manual"}, False, "unitCost.amount"),
    ({"type": "manual", "amount": "1_000"}, False, "unitCost.amount"),
    ({"type": "manual", "amount": "1e999999999"}, False, "unitCost.amount"),
    ({"type": "manual", "amount": True}, False, "unitCost.amount"),
    ({"type": "fixed", "amount": "1"}, False, "unitCost.type"),
    ({"amount": "1"}, False, "unitCost.type"),
    ("0.01", False, "unitCost"),
    ({"type": "llm", "provider": "openai", "model": "gpt-4", "tokenType": "input"}, False, "unitCost"),
    ({"type": "llm", "model": "gpt-4", "tokenType": "input"}, True, "unitCost.provider"),
    ({"type": "llm", "provider": "openai", "providerProperty": "model", "model": "gpt-4", "tokenType": "input"},
     True, "unitCost.providerProperty"),
    ({"type": "llm", "provider": "openai", "modelProperty": "region", "tokenType": "input"}, True,
     "unitCost.modelProperty"),
    ({"type": "llm", "provider": "openai", "model": "gpt-4", "tokenType": "prompt"}, True, "unitCost.tokenType"),
    ({"type": "llm", "provider": "openai", "model": "gpt-4"}, True, "unitCost.tokenType"),
    ({"type": "llm", "provider": 7, "model": "gpt-4", "tokenType": "input"}, True, "unitCost.provider"),
    # OpenMeter's Numeric is a JSON string: its validator refuses a number, Billow took 0.01 and 1 (2026-12-08)
    ({"type": "manual", "amount": 1}, False, "unitCost.amount"),
    # longer than any LLM price's provider (128) or model (256): never priced, and was stored at any length
    ({"type": "llm", "provider": "p" * 129, "model": "gpt-4", "tokenType": "input"}, True, "unitCost.provider"),
    ({"type": "llm", "provider": "openai", "model": "m" * 257, "tokenType": "input"}, True, "unitCost.model"),
    ({"type": "llm", "provider": "p" * 100_000, "modelProperty": "model", "tokenType": "input"}, True,
     "unitCost.provider"),
])
def test_a_bad_unit_cost_is_a_400_naming_its_field_and_makes_nothing(billow: Billow, unit_cost: Any, meter: bool,
                                                                      field: str) -> None:
    b = billow
    status, problem = _create(b, "bad_cost", unit_cost, meter)
    assert status == 400, problem
    assert [e["field"] for e in problem["validationErrors"]] == [field], problem
    assert b.call("GET", "/api/v1/features/bad_cost")[0] == 404


def test_a_manual_amount_sent_as_a_json_number_is_a_400_and_makes_nothing(billow: Billow) -> None:
    """OpenMeter's FeatureManualUnitCost.amount is a Numeric: a JSON string. Billow took 0.01 and 1e-3 as numbers."""
    b = billow
    for number in (b"0.01", b"1e-3", b"0"):
        body = b'{"key": "num_cost", "name": "n", "unitCost": {"type": "manual", "amount": ' + number + b"}}"
        status, problem = b.raw("POST", "/api/v1/features", body)
        assert status == 400, (number, problem)
        assert [e["field"] for e in problem["extensions"]["validationErrors"]] == ["unitCost.amount"], problem
    assert b.call("GET", "/api/v1/features/num_cost")[0] == 404
