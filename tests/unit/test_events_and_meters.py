from __future__ import annotations

from decimal import Decimal

import pytest

from billow import jsonx
from billow.domain.events import parse_batch
from billow.domain.meters import Meter, to_value, validate_meter_definition
from billow.errors import ValidationFailed
from tests.conftest import event, t

NOW = t("2026-05-05T12:00:00Z")


def meter(**kw: object) -> Meter:
    base: dict = dict(id="01J0000000000000000000000M", slug="m", aggregation="SUM", event_type="prompt", name="m",
                      description=None, value_property="$.tokens", group_by={"model": "$.model"}, event_from=None,
                      created_at=NOW, updated_at=NOW)
    base.update(kw)
    return Meter(**base)


def test_batch_errors_name_index_and_field() -> None:
    bad = [event(1), {"id": "2", "source": "s", "type": "x"}, event(3, time="yesterday"), "nope"]
    with pytest.raises(ValidationFailed) as err:
        parse_batch(bad, NOW)
    got = {(e.get("index"), e["field"]) for e in err.value.errors}
    assert got == {(1, "subject"), (1, "specversion"), (2, "time"), (3, "")}  # specversion is required (issue 22)
    assert "event 1" in err.value.detail


def test_time_defaults_to_ingest_time_and_is_utc_millis() -> None:
    a, b = parse_batch([event(1, time=None), event(2, time="2026-03-29T02:30:00.123456+02:00")], NOW)
    assert a.time == NOW
    assert b.time == t("2026-03-29T00:30:00.123Z")


@pytest.mark.parametrize("when", ["2026-01-01", "2026-01-01T00:00:00", "1700000000", "2026-13-01T00:00:00Z"])
def test_bad_times_refused(when: str) -> None:
    with pytest.raises(ValidationFailed):
        parse_batch([event(1, time=when)], NOW)


def test_values_are_exact_decimals() -> None:
    data = jsonx.loads('{"a": 0.1, "b": 0.2, "c": "12345678901234567890.123456789012345678"}')
    assert to_value(data["a"], "$.a") + to_value(data["b"], "$.b") == Decimal("0.3")
    assert str(to_value(data["c"], "$.c")) == "12345678901234567890.123456789012345678"


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "abc", True, None, {"x": 1}, "1e20", "0.0000000000000000001"])
def test_bad_values_refused(raw: object) -> None:
    with pytest.raises(ValueError):
        to_value(raw, "$.v")


def test_extract_value_and_groups() -> None:
    ev = parse_batch([event(1, tokens="7.5", model="gpt", extra={"k": [1, 2]})], NOW)[0]
    assert meter().extract(ev) == (Decimal("7.5"), "", {"model": "gpt"})
    nested = meter(value_property="$.extra.k[1]", group_by={"missing": "$.nope"})
    assert nested.extract(ev) == (Decimal(2), "", {"missing": ""})
    assert meter(aggregation="COUNT", value_property=None).extract(ev)[0] == 1
    assert meter(aggregation="UNIQUE_COUNT", value_property="$.model").extract(ev)[1] == "gpt"
    with pytest.raises(ValueError, match="missing"):
        meter(value_property="$.absent").extract(ev)


@pytest.mark.parametrize("body,field", [
    ({"slug": "Bad-Slug", "aggregation": "SUM", "eventType": "x", "valueProperty": "$.v"}, "slug"),
    ({"slug": "ok", "aggregation": "COUNT", "eventType": "x", "valueProperty": "$.v"}, "valueProperty"),
    ({"slug": "ok", "aggregation": "SUM", "eventType": "x"}, "valueProperty"),
    ({"slug": "ok", "aggregation": "MEDIAN", "eventType": "x"}, "aggregation"),
    ({"slug": "ok", "aggregation": "COUNT", "eventType": "x", "groupBy": {"1bad": "$.a"}}, "groupBy.1bad"),
    ({"slug": "ok", "aggregation": "COUNT", "eventType": "x", "groupBy": {"a": "a"}}, "groupBy.a"),
    ({"slug": "ok", "aggregation": "COUNT"}, "eventType"),
])
def test_meter_definition_errors(body: dict, field: str) -> None:
    with pytest.raises(ValidationFailed) as err:
        validate_meter_definition(body)
    assert field in {e["field"] for e in err.value.errors}
