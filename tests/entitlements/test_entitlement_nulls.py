"""Entitlement create and override bodies (OpenMeter's EntitlementMetered/Static/BooleanCreateInputs, v1 and v2): none
of their fields is nullable, and OpenMeter's request validator answers 400. A null is a 400 naming the field and makes
no entitlement; it was taken for the field left out (e.g. `usagePeriod: null` on a boolean entitlement, `isSoftLimit:
null` as false, `issueAfterReset: null` as no issue)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.entitlements.conftest import Billow, harness

V1 = "/api/v1/subjects/customer_1/entitlements"
V2 = "/api/v2/customers/acme/entitlements"
METERED = {"type": "metered", "featureKey": "ai", "usagePeriod": {"interval": "MONTH"}, "issueAfterReset": 10}
NULLABLE_NOWHERE = ["metadata", "isSoftLimit", "measureUsageFrom", "issueAfterReset", "issueAfterResetPriority",
                    "preserveOverageAtReset"]


@pytest.fixture
def billow(tmp_path: Path, namespace: str) -> Iterator[Billow]:
    with harness(tmp_path, namespace) as b:
        b.ok("POST", "/api/v1/features", {"key": "ai", "name": "AI", "meterSlug": "tokens"})
        b.ok("POST", "/api/v1/features", {"key": "sso", "name": "SSO"})
        b.ok("POST", "/api/v1/customers", {"key": "acme", "name": "Acme",
                                           "usageAttribution": {"subjectKeys": ["customer_1"]}})
        yield b


def _listed(b: Billow) -> list[Any]:
    return b.ok("GET", V1)


@pytest.mark.parametrize("path", [V1, V2])
@pytest.mark.parametrize(("body", "field"), [
    *[(METERED, f) for f in NULLABLE_NOWHERE],
    ({"type": "boolean", "featureKey": "sso"}, "usagePeriod"),
    ({"type": "static", "featureKey": "sso", "config": "{}"}, "config"),
    ({"type": "boolean", "featureKey": "sso"}, "featureId"),
])
def test_a_null_field_is_a_400_naming_it_and_makes_nothing(billow: Billow, path: str, body: dict[str, Any],
                                                            field: str) -> None:
    status, out = billow.call("POST", path, {**body, field: None})
    assert status == 400, (status, out)
    assert any(e["field"] == field for e in out["validationErrors"]), out
    assert _listed(billow) == []
    billow.ok("POST", path, body)  # the same body without the null is taken


@pytest.mark.parametrize("path", [V1, V2])
def test_an_override_with_a_null_changes_nothing(billow: Billow, path: str) -> None:
    made = billow.ok("POST", path, METERED)
    status, out = billow.call("PUT", f"{path}/{made['id']}/override", {**METERED, "isSoftLimit": None})
    assert status == 400 and out["validationErrors"][0]["field"] == "isSoftLimit", out
    assert [e["id"] for e in _listed(billow)] == [made["id"]]
