"""Billing profiles' request parsing lives in the domain like the catalog's, meters' and prices' (issue 19 item 3;
docs/architecture.md, "Request parsing"): pure functions in billow.domain.billing_profiles that the service
(billow.services.billing_profiles) calls; each bad field is a ValidationFailed naming it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from billow.domain.billing_profiles import (
    APP_TYPES,
    WORKFLOW_DEFAULTS,
    parse_apps,
    parse_supplier,
    parse_workflow,
)
from billow.errors import ValidationFailed
from billow.services import billing_profiles


def field_of(exc: pytest.ExceptionInfo[ValidationFailed]) -> str:
    return str(exc.value.errors[0]["field"])


def test_a_workflow_is_merged_over_its_base_and_checked() -> None:
    out = parse_workflow({"invoicing": {"dueAfter": "P7D"}, "payment": {"collectionMethod": "send_invoice"}},
                         WORKFLOW_DEFAULTS)
    assert out["invoicing"] == {**WORKFLOW_DEFAULTS["invoicing"], "dueAfter": "P7D"}
    assert out["payment"] == {"collectionMethod": "send_invoice"}
    assert WORKFLOW_DEFAULTS["invoicing"]["dueAfter"] == "P30D"  # the base is not changed
    assert parse_workflow(None, WORKFLOW_DEFAULTS) is WORKFLOW_DEFAULTS
    for body, where in (([], "workflow"), ({"nope": {}}, "workflow.nope"), ({"tax": 1}, "workflow.tax"),
                        ({"invoicing": {"autoAdvance": "yes"}}, "workflow.invoicing.autoAdvance"),
                        ({"invoicing": {"dueAfter": "soon"}}, "workflow.invoicing.dueAfter"),
                        ({"payment": {"collectionMethod": "cash"}}, "workflow.payment.collectionMethod"),
                        ({"collection": {"alignment": {"type": "x"}}}, "workflow.collection.alignment.type")):
        with pytest.raises(ValidationFailed) as exc:
            parse_workflow(body, WORKFLOW_DEFAULTS)
        assert field_of(exc) == where, body


def test_apps_default_to_the_sandbox_and_name_a_bad_role() -> None:
    assert parse_apps({}) == {"tax": "sandbox", "invoicing": "sandbox", "payment": "sandbox"}
    assert parse_apps({"invoicing": {"type": "stripe"}})["invoicing"] == "stripe"
    assert APP_TYPES == ("sandbox", "custom_invoicing", "stripe")
    with pytest.raises(ValidationFailed) as exc:
        parse_apps({"payment": "paypal"})
    assert field_of(exc) == "apps.payment"


def test_a_supplier_needs_a_name() -> None:
    assert parse_supplier({"name": "Billow Inc."}) == {"name": "Billow Inc."}
    for body, where in ((None, "supplier.name"), ({"name": " "}, "supplier.name"),
                        ({"name": "B", "addresses": {}}, "supplier.addresses")):
        with pytest.raises(ValidationFailed) as exc:
            parse_supplier(body)
        assert field_of(exc) == where


def test_the_service_parses_with_the_domain_functions(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []

    class Store:
        def list_profiles(self, namespace: str) -> list[dict[str, Any]]:
            return []

        def put_profile(self, namespace: str, doc: dict[str, Any], **_: Any) -> None:
            seen.append(doc)

    doc = billing_profiles.create_profile("ns", {"name": "p", "supplier": {"name": "S"},
                                                 "workflow": {"invoicing": {"dueAfter": "P1D"}}},
                                          store=Store(), now=datetime(2026, 1, 1, tzinfo=UTC))  # type: ignore[arg-type]
    assert doc["workflow"] == parse_workflow({"invoicing": {"dueAfter": "P1D"}}, WORKFLOW_DEFAULTS)
    assert doc["apps"] == parse_apps({}) and seen == [doc]
    assert billing_profiles.APP_TYPES is APP_TYPES and billing_profiles.WORKFLOW_DEFAULTS is WORKFLOW_DEFAULTS
