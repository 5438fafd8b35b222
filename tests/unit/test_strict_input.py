"""Issue 15 items 7, 9, 10 (request bodies) and 11: numbers that are numbers, RFC 3339 times only, event times the
rollups can hold, lone surrogates and huge exponents refused as 400s naming the field, and one refusal that lists
every bad event of a batch. Parsers directly, then the Lambda handlers (ingest and api) as API Gateway calls them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from billow.bootstrap import Settings, build, install
from billow.domain.events import EVENT_TIME_MAX, EVENT_TIME_MIN, MAX_FUTURE, parse_batch, parse_event
from billow.domain.meters import to_value
from billow.errors import ValidationFailed
from billow.exact import parse_decimal
from billow.local.server import apigw_event
from billow.timeutil import format_rfc3339, parse_rfc3339
from functions.api.handler import lambda_handler as api
from functions.ingest.handler import lambda_handler as ingest
from functions.usage_sink.handler import lambda_handler as sink
from tests.conftest import event, t

NOW = t("2026-05-05T12:00:00Z")
NOT_NUMBERS = ["1_000", "١٢", "５", "+5", " 5", "5 ", "5\n", ".5", "5.", "1e", "0x10", "1,5", "−5", "", "١.٥", "5e٣"]
NOT_RFC3339 = ["2026-W01-1T00:00:00Z", "2026-01-01T00:00:00,5Z", "2026-001T00:00:00Z", "20260101T000000Z",
               "2026-01-01T00:00:00+0000", "2026-01-01T00:00:00+00", "2026-01-01T00:00Z", "2026-01-01T00:00:00.Z",
               "2026-01-01T00:00:00+00:00:00", " 2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z\n",
               "２０２６-01-01T00:00:00Z", "2026-01-01T00:00:00.５Z", "2026-01-01T00:00:00 Z"]


# -- numbers ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", NOT_NUMBERS)
def test_only_plain_ascii_decimal_strings_are_numbers(text: str) -> None:
    with pytest.raises(ValueError):
        parse_decimal(text)
    with pytest.raises(ValueError):
        to_value(text, "$.v")


@pytest.mark.parametrize("text,value", [("12", "12"), ("-12.50", "-12.50"), ("0", "0"), ("1e3", "1000"),
                                        ("1.5E-3", "0.0015"), ("007", "7"), ("-0", "0")])
def test_plain_decimal_strings_and_json_numbers_are_read_exactly(text: str, value: str) -> None:
    assert parse_decimal(text) == Decimal(value)
    assert to_value(text, "$.v") == Decimal(value)
    assert to_value(Decimal(text), "$.v") == Decimal(value)


@pytest.mark.parametrize("raw", ["1e+999999999999999999", Decimal("1e999999999"), Decimal("-1e+999999999999999999"),
                                 "1e-999999999999999999", Decimal("1e-999999999"), "1" * 21, 10 ** 20, -(10 ** 20),
                                 "99999999999999999999.9999999999999999999", Decimal("1E+20")])
def test_huge_exponents_and_values_beyond_decimal128_18_are_value_errors(raw: object) -> None:
    with pytest.raises(ValueError):
        to_value(raw, "$.v")


def test_decimal128_18_limits_are_exact() -> None:
    biggest = "99999999999999999999.999999999999999999"
    assert to_value(biggest, "$.v") == Decimal(biggest)
    assert to_value("-" + biggest, "$.v") == Decimal("-" + biggest)  # (unary minus would round to 28 digits)
    assert to_value("0.000000000000000001", "$.v") == Decimal("1e-18")
    assert to_value("1.000000000000000000000000", "$.v") == 1  # trailing zeros are not digits of precision
    assert to_value("0e-999999999999", "$.v") == 0
    assert to_value("0E+999999999999", "$.v") == 0
    with pytest.raises(ValueError, match="18 decimal places"):
        to_value("0.0000000000000000001", "$.v")  # refused, never rounded


def test_grant_amounts_and_thresholds_take_the_same_numbers() -> None:
    from billow.services.entitlements import amount

    assert amount("1000", "amount") == 1000
    for text in ("1_000", "١٢", "５", "1e+999999999999999999"):
        with pytest.raises(ValidationFailed) as err:
            amount(text, "amount")
        assert err.value.errors[0]["field"] == "amount"
    with pytest.raises(ValidationFailed):
        amount(Decimal("1e999999999"), "amount")


# -- times --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", NOT_RFC3339)
def test_only_rfc3339_times(text: str) -> None:
    with pytest.raises(ValidationFailed) as err:
        parse_rfc3339(text, "from")
    assert err.value.errors[0]["field"] == "from"


@pytest.mark.parametrize("text,instant", [
    ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00+00:00"),
    ("2026-01-01t00:00:00z", "2026-01-01T00:00:00+00:00"),
    ("2026-01-01 00:00:00Z", "2026-01-01T00:00:00+00:00"),
    ("2026-03-29T02:30:00.123456+02:00", "2026-03-29T00:30:00.123456+00:00"),
    ("2026-01-01T00:00:00.1234567891Z", "2026-01-01T00:00:00.123456+00:00"),
    ("2026-01-01T05:30:00-00:00", "2026-01-01T05:30:00+00:00"),
])
def test_rfc3339_times_still_parse(text: str, instant: str) -> None:
    assert parse_rfc3339(text, "time") == t(instant)


@pytest.mark.parametrize("when", ["1969-12-31T23:59:59.999Z", "1901-01-01T00:00:00Z", "2106-01-01T00:00:00Z",
                                  "2200-01-01T00:00:00Z", "1970-01-01T00:30:00+01:00"])
def test_event_times_outside_the_rollups_are_refused(when: str) -> None:
    with pytest.raises(ValidationFailed) as err:
        parse_batch([event(1, time="2026-01-01T00:00:00Z"), event(2, time=when)], NOW)
    (only,) = err.value.errors
    assert (only["index"], only["field"]) == (1, "time")
    assert "1970-01-01T00:00:00Z" in only["message"] and "2105-12-31T23:59:59.999Z" in only["message"]


def test_event_time_range_edges_are_accepted() -> None:
    # Ingested late in 2105, so the upper edge is not beyond the future bound (MAX_FUTURE) either.
    late_now = t("2105-12-31T12:00:00Z")
    first, last = parse_batch([event(1, time="1970-01-01T00:00:00Z"), event(2, time="2105-12-31T23:59:59.999Z")], late_now)
    assert (first.time, last.time) == (EVENT_TIME_MIN, EVENT_TIME_MAX)


# -- through the handlers -----------------------------------------------------------------------------------------

@pytest.fixture
def container(tmp_path: Path) -> Any:
    c = build(Settings.parse(dict(usage_store="memory", data_dir=str(tmp_path), meters=[
        {"slug": "tokens", "eventType": "prompt", "aggregation": "SUM", "valueProperty": "$.tokens"}])),
        deliver=lambda ev: sink(ev, None))
    install(c)
    yield c
    install(None)
    c.close()


def call(fn: Any, method: str, path: str, body: Any = None, raw: bytes | None = None,
         ctype: str = "application/json") -> tuple[int, dict[str, Any] | None]:
    data = raw if raw is not None else json.dumps(body).encode()  # json.dumps writes "\ud800" as that escape
    out = fn(apigw_event(method, path, {"content-type": ctype}, data, "127.0.0.1"), None)
    if out["statusCode"] >= 400:
        assert out["headers"]["Content-Type"] == "application/problem+json"
    return out["statusCode"], json.loads(out["body"]) if out.get("body") else None


def total(container: Any) -> Any:
    status, body = call(api, "GET", "/api/v1/meters/tokens/query")
    assert status == 200, body
    assert body is not None
    return [r["value"] for r in body["data"]]


def test_one_refusal_lists_every_bad_event_of_every_kind(container: Any) -> None:
    batch = [event(0, tokens=1), event(1, tokens="ten"), {"specversion": "1.0", "id": "2", "source": "s", "type": "prompt", "data": {"tokens": 1}},
             event(3, tokens="1_000"), event(4, time="2026-W01-1T00:00:00Z", tokens=1), event(5, tokens=2),
             event(6, tokens="1e+999999999999999999"), event(7, time="1969-07-20T20:17:00Z", tokens=1)]
    status, body = call(ingest, "POST", "/api/v1/events", batch)
    assert status == 400 and body is not None
    got = [(e["index"], e["field"]) for e in body["validationErrors"]]
    assert got == [(1, "data ($.tokens)"), (2, "subject"), (3, "data ($.tokens)"), (4, "time"),
                   (6, "data ($.tokens)"), (7, "time")]
    assert "event 1" in body["detail"] and "(and 5 more)" in body["detail"]
    assert total(container) == []  # nothing of the batch was stored


@pytest.mark.parametrize("value", ["1_000", "١٢", "５", "1e+999999999999999999", "1.0000000000000000001"])
def test_meter_values_that_are_not_numbers_are_400s(container: Any, value: str) -> None:
    status, body = call(ingest, "POST", "/api/v1/events", [event(0, tokens=1), event(1, tokens=value)])
    assert status == 400 and body is not None
    assert [(e["index"], e["field"], e["meter"]) for e in body["validationErrors"]] == [(1, "data ($.tokens)", "tokens")]
    assert total(container) == []


def test_huge_json_number_exponent_is_a_400(container: Any) -> None:
    raw = (b'[{"specversion":"1.0","id":"1","source":"s","type":"prompt","subject":"a",'
           b'"time":"2026-01-01T00:00:00Z","data":{"tokens":1e999999999}}]')
    status, body = call(ingest, "POST", "/api/v1/events", raw=raw)
    assert status == 400 and body is not None
    assert [(e["index"], e["field"]) for e in body["validationErrors"]] == [(0, "data ($.tokens)")]


@pytest.mark.parametrize("when", ["2026-W01-1T00:00:00Z", "2026-01-01T00:00:00,5Z", "1901-01-01T00:00:00Z",
                                  "2200-01-01T00:00:00Z"])
def test_event_times_that_the_rollups_cannot_hold_or_are_not_rfc3339_are_400s(container: Any, when: str) -> None:
    status, body = call(ingest, "POST", "/api/v1/events", [event(0, tokens=1, time=when)])
    assert status == 400 and body is not None
    assert [(e["index"], e["field"]) for e in body["validationErrors"]] == [(0, "time")]


@pytest.mark.parametrize("doc,index,field", [
    ({"subject": "\ud800"}, 1, "subject"),
    ({"data": {"tokens": 1, "model": "a\udfffb"}}, 1, "data.model"),
    ({"data": {"tokens": 1, "\udc00": "x"}}, 1, "data.\\udc00"),
])
def test_lone_surrogate_in_an_event_is_a_400_naming_it(container: Any, doc: dict[str, Any], index: int, field: str) -> None:
    status, body = call(ingest, "POST", "/api/v1/events", [event(0, tokens=1), {**event(1, tokens=1), **doc}])
    assert status == 400 and body is not None
    assert [(e.get("index"), e["field"]) for e in body["validationErrors"]] == [(index, field)]
    assert total(container) == []


def test_paired_surrogates_are_one_character(container: Any) -> None:
    raw = json.dumps([event(0, tokens=1, subject="smile \U0001F600")]).encode()  # ascii escapes: \ud83d\ude00
    assert b"\\ud83d\\ude00" in raw
    assert call(ingest, "POST", "/api/v1/events", raw=raw)[0] == 204


@pytest.mark.parametrize("path,body,field", [
    ("/api/v1/customers", {"name": "x\ud800", "usageAttribution": {"subjectKeys": ["a"]}}, "name"),
    ("/api/v1/customers", {"name": "x", "usageAttribution": {"subjectKeys": ["a", "\ud800"]}}, "usageAttribution.subjectKeys[1]"),
    ("/api/v1/meters", {"slug": "m", "aggregation": "COUNT", "eventType": "x", "groupBy": {"\ud800": "$.a"}}, "groupBy.\\ud800"),
    ("/api/v1/subjects", [{"key": "ok"}, {"key": "\ud800"}], "key"),
    # an object's key that begins with "[" is not an array index (it was read as one: int("x") raised, a 500)
    ("/api/v1/customers", {"name": "x", "[x\ud800": 1}, "[x\\ud800"),
    ("/api/v1/customers", {"name": "x", "[1]\ud800": 1}, "[1]\\ud800"),
])
def test_lone_surrogate_in_any_request_body_is_a_400(container: Any, path: str, body: Any, field: str) -> None:
    status, problem = call(api, "POST", path, body)
    assert status == 400 and problem is not None
    assert problem["validationErrors"][0]["field"] == field


@pytest.mark.parametrize("value", ["1_000", "１", "+5", Decimal("1e999999999"), "1e+999999999999999999"])
def test_notification_thresholds_take_the_same_numbers(value: object) -> None:
    from billow.domain.notifications import THRESHOLD, parse_rule
    from billow.ids import new_id

    body = {"type": THRESHOLD, "name": "r", "channels": [new_id()], "thresholds": [{"type": "NUMBER", "value": value}]}
    with pytest.raises(ValidationFailed) as err:
        parse_rule(body)
    assert err.value.errors[0]["field"] == "thresholds[0].value"



@pytest.mark.parametrize("value", ["5\n", "1_000", "１", Decimal("1e999999999"), Decimal("-1e999999999"),
                                   Decimal("1e-999999999"), "1" * 21])
def test_price_amounts_take_the_same_numbers(value: object) -> None:
    from billow.domain.pricing import parse_price

    with pytest.raises(ValidationFailed) as err:
        parse_price({"type": "unit", "amount": value})
    assert err.value.errors[0]["field"] == "price.amount"


def test_price_amounts_keep_their_digits() -> None:
    from billow.domain.pricing import parse_price

    assert parse_price({"type": "unit", "amount": "0.000000125"}).amount == Decimal("0.000000125")  # type: ignore[union-attr]
    assert parse_price({"type": "unit", "amount": Decimal("1E+3")}).amount == 1000  # type: ignore[union-attr]


def test_specversion_is_required_and_must_be_1_0() -> None:
    """OpenMeter requires specversion; it used to default to "1.0" when missing while "0.3" was refused."""
    now = datetime(2026, 6, 1, tzinfo=UTC)
    base = {"id": "1", "source": "s", "type": "t", "subject": "a", "time": "2026-06-01T00:00:00Z"}
    for raw, message in ((base, "required"), ({**base, "specversion": "0.3"}, "must be")):
        errors: list[dict[str, Any]] = []
        assert parse_event(raw, 0, now, errors) is None
        assert [e["field"] for e in errors] == ["specversion"]
        assert message in errors[0]["message"]
    assert parse_event({**base, "specversion": "1.0"}, 0, now, []) is not None


def test_events_dated_beyond_the_future_bound_are_refused() -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    ok = {"specversion": "1.0", "id": "1", "source": "s", "type": "t", "subject": "a"}
    assert parse_event({**ok, "time": format_rfc3339(now + MAX_FUTURE)}, 0, now, []) is not None
    errors: list[dict[str, Any]] = []
    late = now + MAX_FUTURE + timedelta(milliseconds=1)
    assert parse_event({**ok, "time": format_rfc3339(late)}, 0, now, errors) is None
    assert errors[0]["field"] == "time" and "after the ingest time" in errors[0]["message"]
    errors = []
    assert parse_event({**ok, "time": "2031-01-01T00:00:00Z"}, 0, now, errors) is None
    assert errors[0]["field"] == "time"


# -- NUL and long keys: one answer on SQLite and on PostgreSQL (the meta store in AWS) ------------------------------

@pytest.fixture(params=["sqlite", "postgres"])
def both(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """The handlers over the embedded meta store (SQLite) and over PostgreSQL, which cannot store NUL in text and
    refuses an index entry over ~2,700 bytes."""
    url = {} if request.param == "sqlite" else {"meta_store_url": request.getfixturevalue("pg_database")}
    c = build(Settings.parse(dict(usage_store="memory", data_dir=str(tmp_path), **url, meters=[
        {"slug": "tokens", "eventType": "prompt", "aggregation": "SUM", "valueProperty": "$.tokens"}])),
        deliver=lambda ev: sink(ev, None))
    install(c)
    yield c
    install(None)
    c.close()


def _stored_nothing() -> None:
    assert call(api, "GET", "/api/v1/customers")[1]["items"] == []  # type: ignore[index]
    assert call(api, "GET", "/api/v1/subjects")[1] == []


@pytest.mark.parametrize("path,body,field", [
    ("/api/v1/customers", {"name": "x", "key": "k\x002"}, "key"),
    ("/api/v1/customers", {"name": "x", "usageAttribution": {"subjectKeys": ["a", "a\x00b"]}}, "usageAttribution.subjectKeys[1]"),
    ("/api/v1/customers", {"name": "x", "metadata": {"a\x00": "b"}}, "metadata.a\\u0000"),
    ("/api/v1/customers", {"name": "x", "description": "\x00"}, "description"),
    ("/api/v1/subjects", [{"key": "ok"}, {"key": "s", "displayName": "a\x00"}], "displayName"),
    ("/api/v1/meters", {"slug": "m", "aggregation": "COUNT", "eventType": "x\x00"}, "eventType"),
    ("/api/v1/meters", {"slug": "m", "aggregation": "COUNT", "eventType": "x", "name": "n\x00"}, "name"),
    ("/api/v1/customers", {"name": "x", "[x\x00": "b"}, "[x\\u0000"),
    ("/api/v1/customers", {"name": "x", "[": "\x00"}, "["),
])
def test_nul_in_any_request_body_is_a_400_on_both_stores(both: Any, path: str, body: Any, field: str) -> None:
    """PostgreSQL answered these with a 500 (`invalid byte sequence for encoding "UTF8": 0x00`) where SQLite stored
    them: now both refuse the NUL, naming the field."""
    raw = json.dumps(body).encode()
    assert b"\\u0000" in raw
    status, problem = call(api, "POST", path, raw=raw)
    assert status == 400 and problem is not None, problem
    assert problem["validationErrors"][0]["field"] == field
    assert "NUL" in problem["validationErrors"][0]["message"]
    _stored_nothing()
    assert [m["slug"] for m in call(api, "GET", "/api/v1/meters")[1]] == ["tokens"]  # type: ignore[union-attr]


def test_a_backslash_u0000_that_is_text_is_not_a_nul(both: Any) -> None:
    status, doc = call(api, "POST", "/api/v1/customers", {"name": "x", "description": "\\u0000"})
    assert status == 201 and doc is not None and doc["description"] == "\\u0000"


@pytest.mark.parametrize("method,path,field", [
    ("GET", "/api/v1/customers/a%00b", "customerIdOrKey"),
    ("PUT", "/api/v1/customers/a%00b", "customerIdOrKey"),
    ("GET", "/api/v1/subjects/%00", "subjectIdOrKey"),
    ("POST", "/api/v1/subjects/a%00b/entitlements", "subjectIdOrKey"),
    ("GET", "/api/v1/subjects/acme/entitlements/tokens%00/value", "entitlementIdOrFeatureKey"),
    ("GET", "/api/v1/meters/tokens%00", "meterIdOrSlug"),
    ("GET", "/api/v1/features/%00", "featureId"),
    ("GET", "/api/v1/plans/p%00", "planId"),
    ("POST", "/api/v1/subjects/acme/entitlements/tokens/grants", None),  # no NUL: the control case (a 404 or 400)
])
def test_nul_in_a_path_parameter_is_a_400_naming_it(both: Any, method: str, path: str, field: str | None) -> None:
    body = {"type": "boolean", "featureKey": "tokens"} if method == "POST" else {"name": "x"} if method == "PUT" else None
    out = api(apigw_event(method, path, {"content-type": "application/json"}, json.dumps(body).encode() if body else b"",
                          "127.0.0.1"), None)
    problem = json.loads(out["body"])
    if field is None:
        assert out["statusCode"] in (400, 404), problem
        return
    assert out["statusCode"] == 400, problem
    assert problem["validationErrors"] == [{"field": field, "message": "must not contain NUL (U+0000)"}]


@pytest.mark.parametrize("path,field", [
    ("/api/v1/entitlements?subject=a%00b", "subject"),
    ("/api/v1/entitlements?feature=%00", "feature"),
    ("/api/v1/customers?key=k%002", "key"),
    ("/api/v1/meters/tokens/query?filterCustomerId=%00", "filterCustomerId"),
    ("/api/v1/events?customerId=a%00", "customerId"),
])
def test_nul_in_a_query_parameter_is_a_400_naming_it(both: Any, path: str, field: str) -> None:
    status, problem = call(api, "GET", path)
    assert status == 400 and problem is not None, problem
    assert problem["validationErrors"] == [{"field": field, "message": "must not contain NUL (U+0000)"}]


def _cjk(n: int) -> str:
    """`n` random CJK characters, 3 bytes each in UTF-8: text PostgreSQL cannot compress into an index entry."""
    import random

    rng = random.Random(n)
    return "".join(chr(rng.randrange(0x4E00, 0x4E00 + 2000)) for _ in range(n))


@pytest.mark.parametrize("path,body,field", [
    ("/api/v1/customers", {"name": "x", "usageAttribution": {"subjectKeys": ["a", _cjk(1000)]}}, "usageAttribution.subjectKeys[1]"),
    ("/api/v1/customers", {"name": "x", "usageAttribution": {"subjectKeys": ["k" * 1025]}}, "usageAttribution.subjectKeys[0]"),
    ("/api/v1/subjects", [{"key": _cjk(1000)}], "[0].key"),
    ("/api/v1/subjects", [{"key": "ok"}, {"key": _cjk(683)}], "[1].key"),  # 2,049 bytes
])
def test_subject_keys_longer_than_an_index_holds_are_400s_on_both_stores(both: Any, path: str, body: Any, field: str) -> None:
    """A 3,000-byte subject key was stored by SQLite and a 500 on PostgreSQL ("index row size exceeds btree maximum"
    in customer_subjects' and subjects' key indexes)."""
    status, problem = call(api, "POST", path, body)
    assert status == 400 and problem is not None, problem
    assert problem["validationErrors"][0]["field"] == field
    assert problem["validationErrors"][0]["message"] == "at most 1024 characters and 2048 bytes of UTF-8"
    _stored_nothing()


@pytest.mark.parametrize("key", [_cjk(682), "k" * 1024])
def test_subject_keys_at_the_limit_are_stored_and_entitled_on_both_stores(both: Any, key: str) -> None:
    assert len(key.encode()) <= 2048
    status, doc = call(api, "POST", "/api/v1/customers", {"name": "x", "usageAttribution": {"subjectKeys": [key]}})
    assert status == 201, doc
    assert call(api, "POST", "/api/v1/subjects", [{"key": key}])[0] == 200
    assert call(api, "POST", "/api/v1/features", {"key": "tokens", "name": "Tokens", "meterSlug": "tokens"})[0] == 201
    from urllib.parse import quote

    status, ent = call(api, "POST", f"/api/v1/subjects/{quote(key, safe='')}/entitlements",
                       {"type": "boolean", "featureKey": "tokens"})
    assert status == 201 and ent is not None and ent["subjectKey"] == key, ent


def test_late_usage_of_a_subject_key_longer_than_an_index_holds_is_stored_on_both_stores(both: Any) -> None:
    """Events may name a subject of 1,024 three-byte characters (domain/events.py). Usage of one older than the late
    bound was stored, then its late-usage mark (an indexed text column) failed on PostgreSQL: the ingest answered 500
    and the batch's other subjects lost their marks. Such a subject can hold no entitlement, so it has none to mark."""
    now = datetime.now(UTC).replace(microsecond=0)
    late = format_rfc3339(now - timedelta(hours=2))
    batch = [event(0, tokens=1, time=late, subject="acme"), event(1, tokens=2, time=late, subject=_cjk(1000))]
    status, problem = call(ingest, "POST", "/api/v1/events", batch)
    assert status == 204, problem
    assert sum(Decimal(str(v)) for v in total(both)) == 3


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    doc = json.loads((Path(__file__).parents[2] / "shared/billow/web/openapi.json").read_text(encoding="utf-8"))
    return [(m.upper(), p, op) for p, item in doc["paths"].items() for m, op in item.items()
            if m in ("get", "put", "post", "delete", "patch") and p.startswith("/api/") and "/portal/" not in p
            and p != "/api/v1/events" and not p.endswith("/stripe/webhook")]
    # the portal API answers a portal token first; events keep their own rules; Stripe's webhooks have their Lambda


def test_every_operation_refuses_a_nul_in_each_path_parameter_and_json_body(both: Any) -> None:
    """The edge rule holds for every operation of the served document (none reads its input around it), on both
    stores: a NUL in any path parameter, or anywhere in a JSON body, is a 400 naming where."""
    import re

    seen, looked_up = 0, []
    for method, template, op in _operations():
        names = re.findall(r"\{(\w+)\}", template)
        for name in names:
            path = template
            for other in names:
                path = path.replace("{" + other + "}", "a%00b" if other == name else "01K00000000000000000000000")
            status, problem = call(api, method, path, raw=b'{"name": "x"}' if "requestBody" in op else b"")
            assert (status, problem and problem.get("validationErrors")) == (
                400, [{"field": name, "message": "must not contain NUL (U+0000)"}]), (method, template, problem)
            seen += 1
        if "requestBody" in op:
            path = re.sub(r"\{\w+\}", "01K00000000000000000000000", template)
            status, problem = call(api, method, path, raw=b'{"name": "x", "metadata": {"k": "a\\u0000"}}')
            if status == 404:  # the route looks its resource up before it reads the body
                looked_up.append(f"{method} {template}")
                continue
            assert (status, problem and problem.get("validationErrors")) == (
                400, [{"field": "metadata.k", "message": "must not contain NUL (U+0000)"}]), (method, template, problem)
            seen += 1
    assert seen > 150, looked_up


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/api/v1/meters", {"slug": "m", "aggregation": "COUNT", "eventType": "x", "name": ""}),
    ("PUT", "/api/v1/meters/tokens", {"name": ""}),
])
def test_an_empty_meter_name_is_a_400_naming_it(both: Any, method: str, path: str, body: Any) -> None:
    """OpenMeter's MeterCreate and MeterUpdate take a name of 1 to 256 characters. An empty one was taken for none (the
    slug shown as the name, 201 or 200); the fuzz suite's negative cases found it (seed 29)."""
    before = call(api, "GET", "/api/v1/meters")[1]
    status, problem = call(api, method, path, raw=json.dumps(body).encode())
    assert status == 400 and problem is not None, problem
    assert problem["validationErrors"][0]["field"] == "name"
    assert call(api, "GET", "/api/v1/meters")[1] == before


@pytest.mark.parametrize("field", ["description", "key", "primaryEmail", "currency", "billingAddress"])
def test_a_null_customer_field_is_a_400_naming_it(container: Any, field: str) -> None:
    """OpenMeter's CustomerCreate and CustomerReplaceUpdate take null for metadata alone. A null currency (or key,
    primaryEmail, billingAddress, description) was taken for one left out: POST answered 201, PUT 200 and dropped the
    customer's currency. The PostgreSQL schema fuzz's negative cases found it (seed 31: currency null answered 201)."""
    status, problem = call(api, "POST", "/api/v1/customers", {"name": "x", field: None})
    assert status == 400 and problem is not None, problem
    assert problem["validationErrors"][0]["field"] == field
    assert call(api, "GET", "/api/v1/customers")[1]["items"] == []  # type: ignore[index]
    full = {"name": "c", "key": "c", "description": "d", "primaryEmail": "c@example.com", "currency": "USD",
            "billingAddress": {"country": "US"}, "usageAttribution": {"subjectKeys": ["s"]}}
    status, created = call(api, "POST", "/api/v1/customers", full)
    assert status == 201, created
    status, problem = call(api, "PUT", "/api/v1/customers/c", {**full, field: None})
    assert status == 400 and problem is not None, problem
    assert problem["validationErrors"][0]["field"] == field
    assert call(api, "GET", "/api/v1/customers/c")[1] == created


@pytest.mark.parametrize("field", ["name", "description", "eventFrom", "valueProperty", "groupBy"])
def test_a_null_meter_field_is_a_400_naming_it(container: Any, field: str) -> None:
    """OpenMeter's MeterCreate takes null for metadata alone. A null name, description, eventFrom, valueProperty (of a
    COUNT meter) or groupBy was taken for the field left out and the meter created (201)."""
    before = call(api, "GET", "/api/v1/meters")[1]
    body = {"slug": "m", "aggregation": "COUNT", "eventType": "x", field: None}
    status, problem = call(api, "POST", "/api/v1/meters", body)
    assert status == 400 and problem is not None, problem
    assert problem["validationErrors"][0]["field"] == field
    assert call(api, "GET", "/api/v1/meters")[1] == before


@pytest.mark.parametrize("field", ["metadata", "meterSlug", "meterGroupByFilters", "advancedMeterGroupByFilters"])
def test_a_null_feature_field_is_a_400_naming_it(container: Any, field: str) -> None:
    """OpenMeter's FeatureCreateInputs takes no null. A null metadata, meterSlug or group-by filter was taken for the
    field left out and the feature created (201): with meterSlug null, a feature metering nothing."""
    status, problem = call(api, "POST", "/api/v1/features", {"key": "f", "name": "f", field: None})
    assert status == 400 and problem is not None, problem
    assert problem["validationErrors"][0]["field"] == field
    assert call(api, "GET", "/api/v1/features")[1] == []


@pytest.mark.parametrize("field", ["country", "postalCode", "city", "line1", "phoneNumber"])
def test_a_null_billing_address_field_is_a_400_naming_it(container: Any, field: str) -> None:
    """OpenMeter's Address takes no null. {billingAddress: {country: null}} was stored as sent and read back with
    country null (201); the PostgreSQL schema fuzz's negative cases found it (seed 41)."""
    body = {"name": "x", "billingAddress": {"city": "Paris", field: None}}
    status, problem = call(api, "POST", "/api/v1/customers", body)
    assert status == 400 and problem is not None, problem
    assert problem["validationErrors"][0]["field"] == f"billingAddress.{field}"
    assert call(api, "GET", "/api/v1/customers")[1]["items"] == []  # type: ignore[index]


def test_a_null_customer_metadata_is_none(container: Any) -> None:
    status, created = call(api, "POST", "/api/v1/customers", {"name": "x", "metadata": None})
    assert status == 201 and created is not None and "metadata" not in created, created


@pytest.mark.parametrize("value", ["", 0, False, [], {}])
def test_a_falsy_meter_event_from_is_a_400_naming_it(container: Any, value: Any) -> None:
    """eventFrom is an RFC 3339 time or absent. An empty string, 0, false, [] or {} was taken for no eventFrom and
    the meter created (201), counting every event instead of refusing the value."""
    before = call(api, "GET", "/api/v1/meters")[1]
    body = {"slug": "m", "aggregation": "COUNT", "eventType": "x", "eventFrom": value}
    status, problem = call(api, "POST", "/api/v1/meters", body)
    assert status == 400 and problem is not None, problem
    assert problem["validationErrors"][0]["field"] == "eventFrom"
    assert call(api, "GET", "/api/v1/meters")[1] == before
