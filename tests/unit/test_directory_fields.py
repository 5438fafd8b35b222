"""Subjects and customers refuse what OpenMeter's schema does not allow, naming the field (found by the fuzz
suite's negative mode once it required a 4xx for invalid input): a subject's current period times that are not
RFC 3339 date-times (minute 99 was accepted), customer metadata values that are not strings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from billow.adapters.sql import SqlMetaStore
from billow.errors import ValidationFailed
from billow.services import directory
from tests.conftest import t

NOW = t("2026-05-05T12:00:00Z")


@pytest.fixture
def meta(tmp_path: Path) -> Any:
    store = SqlMetaStore(f"sqlite:///{tmp_path / 'meta.db'}")
    store.migrate()
    yield store
    store.close()


@pytest.mark.parametrize("field", ["currentPeriodStart", "currentPeriodEnd"])
@pytest.mark.parametrize("value", ["2024-01-01T12:99:00Z", "yesterday", "2024-01-01", 5])
def test_subject_period_times_are_rfc3339(meta: Any, field: str, value: Any) -> None:
    with pytest.raises(ValidationFailed) as refused:
        directory.upsert_subjects("ns", [{"key": "a"}, {"key": "b", field: value}], meta=meta, now=NOW)
    assert refused.value.errors[0]["field"] == f"[1].{field}"
    assert meta.list_subjects("ns") == []  # nothing of the batch is stored
    ok = directory.upsert_subjects("ns", [{"key": "b", field: "2024-01-01T12:59:00Z"}], meta=meta, now=NOW)
    assert [s["key"] for s in ok] == ["b"]


@pytest.mark.parametrize("value", [False, 0, ["cus_1"], {"id": "cus_1"}])
def test_subject_stripe_customer_id_is_a_string(meta: Any, value: Any) -> None:
    """Found by the fuzz on PostgreSQL (BILLOW_FUZZ_SEED=7, BILLOW_FUZZ_SCALE=5, negative mode): a subject whose
    (deprecated) stripeCustomerId was `false` was answered 200, the field dropped; the document says string or null."""
    with pytest.raises(ValidationFailed) as refused:
        directory.upsert_subjects("ns", [{"key": "a"}, {"key": "b", "stripeCustomerId": value}], meta=meta, now=NOW)
    assert refused.value.errors[0]["field"] == "[1].stripeCustomerId"
    assert meta.list_subjects("ns") == []
    ok = directory.upsert_subjects("ns", [{"key": "b", "stripeCustomerId": "cus_1"}, {"key": "c", "stripeCustomerId": None}],
                                   meta=meta, now=NOW)
    assert [s["key"] for s in ok] == ["b", "c"]


@pytest.mark.parametrize("metadata", [{"k": [1]}, {"k": 1}, {"k": None}, {"k": {"a": "b"}}, ["k"]])
def test_customer_metadata_is_an_object_of_strings(meta: Any, metadata: Any) -> None:
    directory.create_customer("ns", {"name": "Acme", "key": "acme"}, meta=meta, now=NOW)
    with pytest.raises(ValidationFailed) as refused:
        directory.create_customer("ns", {"name": "Other", "metadata": metadata}, meta=meta, now=NOW)
    assert refused.value.errors[0]["field"] == "metadata"
    with pytest.raises(ValidationFailed) as refused:
        directory.update_customer("ns", "acme", {"name": "Acme", "metadata": metadata}, meta=meta, now=NOW)
    assert refused.value.errors[0]["field"] == "metadata"
    assert "metadata" not in directory.get_customer("ns", "acme", meta=meta)
    doc = directory.create_customer("ns", {"name": "Other", "metadata": {"tier": "gold"}}, meta=meta, now=NOW)
    assert doc["metadata"] == {"tier": "gold"}


@pytest.mark.parametrize(("body", "field"), [
    ({"billingAddress": {"line2": 5.2e16}}, "billingAddress.line2"),
    ({"billingAddress": {"phoneNumber": 914311877690426}}, "billingAddress.phoneNumber"),
    ({"billingAddress": {"country": "usa"}}, "billingAddress.country"),
    ({"billingAddress": ["Austin"]}, "billingAddress"),
    ({"description": 5}, "description"),
    ({"primaryEmail": ["a@b.c"]}, "primaryEmail"),
])
def test_customer_address_and_text_fields_are_strings(meta: Any, body: dict[str, Any], field: str) -> None:
    """Found by the fuzz suite's negative mode: a billingAddress with numbers for line2 and phoneNumber was a 201."""
    with pytest.raises(ValidationFailed) as refused:
        directory.create_customer("ns", {"name": "Acme", **body}, meta=meta, now=NOW)
    assert refused.value.errors[0]["field"] == field
    assert meta.list_customers("ns") == []
    ok = directory.create_customer("ns", {"name": "Acme", "billingAddress": {"country": "US", "line2": "Suite 5",
                                                                            "phoneNumber": "+1 512"}}, meta=meta, now=NOW)
    assert ok["billingAddress"]["line2"] == "Suite 5"
