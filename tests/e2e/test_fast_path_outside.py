"""Issue 17's fast ingest path (decode_common: msgspec straight from the body text, events of the common shape kept
as tuples, meter values read by Meter.reader) probed from outside, as a customer would, against a real `billow serve`
(chdb + SQLite + in-process bus), every total compared with ground truth computed here in exact Decimals:

- the same logical events sent in the common shape (fast path), in shapes that force the full path (a time with an
  offset or six fraction digits) and with `Prefer: return=representation` (the receipt path, which decodes common
  events the fast way too) store the same values and group-by values, to the last digit, and land in the same minutes
  (range edges, milliseconds, no time = ingest time);
- duplicates inside a batch, resends, resends split differently, the same event sent once by each path, and resends
  across a SIGTERM and a SIGKILL restart count every acknowledged event exactly once (0 lost, 0 doubled);
- hostile bodies (lone surrogates in extension attributes, NUL, Content-Type variants, 10,000 and 10,001 events,
  an empty batch, one event) are 4xx problem+json naming the field, and nothing of a refused batch is stored;
- bugs found: a number whose exponent is beyond what Decimal holds was a 500 from any JSON body, a query filter and a
  static entitlement config (now 400s; these tests failed before); an event nested a few levels short of the parsers'
  limit was acknowledged but dead-lettered by the sink with every other event of its batch record, and made
  GET /api/v1/events a 500 (now data nests at most MAX_DATA_DEPTH levels, deeper is a 400 naming `data`)."""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from billow.domain.events import MAX_DATA_DEPTH
from tests.e2e.conftest import Drained, Server

BATCH = "application/cloudevents-batch+json"
SINGLE = "application/cloudevents+json"
METERS = (
    {"slug": "fp_sum", "eventType": "fp", "aggregation": "SUM", "valueProperty": "$.v", "groupBy": {"g": "$.g"}},
    {"slug": "fp_count", "eventType": "fp", "aggregation": "COUNT", "groupBy": {"g": "$.g"}},
    {"slug": "fp_nested", "eventType": "fp", "aggregation": "SUM", "valueProperty": "$.a.b"},  # a path of two keys
    {"slug": "fp_latest", "eventType": "fp", "aggregation": "LATEST", "valueProperty": "$.v"},
)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drained]:
    s = Drained(Path(tmp_path_factory.mktemp("fast-path"))).start()
    for meter in METERS:
        status, _, body = s.request("POST", "/api/v1/meters", meter)
        assert status == 201, body
    yield s
    if s.proc is not None:
        s.stop()


def call(s: Server, method: str, path: str, body: str | None = None, ctype: str = BATCH,
         headers: dict[str, str] | None = None) -> tuple[int, str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=120)
    try:
        hdrs = dict(headers or {})
        if body is not None:
            hdrs["Content-Type"] = ctype
        conn.request(method, path, body.encode("utf-8", "surrogatepass") if body is not None else None, hdrs)
        resp = conn.getresponse()
        payload = resp.read()
        kind = resp.getheader("Content-Type") or ""
        return resp.status, kind, json.loads(payload, parse_float=Decimal) if payload and "json" in kind else payload
    finally:
        conn.close()


def ev(id_: str, subject: str, v: str = "1", g: str = '"x"', time: str | None = '"2026-06-03T10:00:00Z"',
       source: str = "fp", extra: str = "") -> str:
    """One event as JSON text; v, g and time are spliced in as raw JSON (None: no time attribute)."""
    t = "" if time is None else f',"time":{time}'
    return (f'{{"specversion":"1.0","id":{json.dumps(id_)},"source":{json.dumps(source)},"type":"fp",'
            f'"subject":{json.dumps(subject)}{t},"data":{{"v":{v},"g":{g},"a":{{"b":{v}}}}}{extra}}}')


def post(s: Server, events: list[str], ctype: str = BATCH, receipt: bool = False) -> tuple[int, str, Any]:
    headers = {"Prefer": "return=representation"} if receipt else None
    return call(s, "POST", "/api/v1/events", "[" + ",".join(events) + "]", ctype, headers)


def accepted(s: Server, events: list[str], receipt: bool = False) -> None:
    status, _, body = post(s, events, receipt=receipt)
    assert status == (200 if receipt else 204), body


def rows(s: Server, slug: str, **params: str | list[str]) -> list[dict[str, Any]]:
    status, _, body = call(s, "GET", f"/api/v1/meters/{slug}/query?" + urllib.parse.urlencode(params, doseq=True))
    assert status == 200, body
    return list(body["data"])


def by_group(s: Server, slug: str, subject: str) -> dict[str, Decimal]:
    return {r["groupBy"]["g"]: Decimal(r["value"]) for r in rows(s, slug, subject=subject, groupBy="g")}


def total(s: Server, slug: str, subject: str) -> Decimal:
    return sum((Decimal(r["value"]) for r in rows(s, slug, subject=subject)), Decimal(0))


# Meter values as JSON text -> the exact value a customer expects counted.
VALUES = {
    "0.1": Decimal("0.1"), "1e-7": Decimal("1e-7"), "-0": Decimal(0), "-0.0": Decimal(0), "1E+3": Decimal(1000),
    '"0.1"': Decimal("0.1"), '"1E+3"': Decimal(1000), '"-0"': Decimal(0), '"00012.50"': Decimal("12.5"),
    "0.000000000000000001": Decimal("1e-18"), "1.0000000000000000000": Decimal(1), "0e5": Decimal(0),
    "12345678901234567890": Decimal(12345678901234567890), "-9223372036854775809": Decimal(-9223372036854775809),
    "99999999999999999999.999999999999999999": Decimal("99999999999999999999.999999999999999999"),
    "-1e-18": Decimal("-1e-18"), "1.5E1": Decimal(15), '"1e-18"': Decimal("1e-18"),
    "18446744073709551616": Decimal(18446744073709551616),
}
# Group-by values as JSON text -> the text they group under.
GROUPS = {
    "1.50": "1.50", "true": "true", "false": "false", "null": "", '{"a":1,"b":[1,2.0]}': '{"a":1,"b":[1,2.0]}',
    '"\\ud83d\\ude00"': "\U0001f600", '"\U0001f600\u00e9"': "\U0001f600\u00e9", "-0": "0", "[1]": "[1]",
    "12345678901234567890123": "12345678901234567890123", '"a\\u0000b"': "a\x00b", '"\u05d0\u200f"': "\u05d0\u200f",
}
# The same instants written as the fast path takes them and as only the full path does.
FULL_TIME = {'"2026-06-03T10:00:00Z"': '"2026-06-03T12:00:00+02:00"',
             '"2026-06-03T10:00:00.123Z"': '"2026-06-03T10:00:00.123000Z"'}


def logical_events(path: str, subject: str, source: str) -> list[str]:
    """The same logical events for every path; `full` writes the times so that decode_common cannot take them."""
    def t(text: str) -> str:
        return FULL_TIME[text] if path == "full" else text

    out = [ev(f"v{k}", subject, v, json.dumps(f"v{k}"), t('"2026-06-03T10:00:00Z"'), source)
           for k, v in enumerate(VALUES)]
    out += [ev(f"g{k}", subject, "1", g, t('"2026-06-03T10:00:00.123Z"'), source) for k, g in enumerate(GROUPS)]
    return out


def test_the_fast_path_the_full_path_and_the_receipt_path_store_the_same_exact_values(srv: Drained) -> None:
    expected_sum = {f"v{k}": v for k, v in enumerate(VALUES.values())}
    expected_count = {f"v{k}": Decimal(1) for k in range(len(VALUES))}
    for g in GROUPS.values():
        expected_sum[g] = expected_sum.get(g, Decimal(0)) + 1
        expected_count[g] = expected_count.get(g, Decimal(0)) + 1
    for path in ("fast", "full", "receipt"):
        subject = f"eq-{path}-\U0001f600-\u00fc"
        accepted(srv, logical_events("full" if path == "full" else "fast", subject, f"eq-{path}"),
                 receipt=path == "receipt")
        assert by_group(srv, "fp_sum", subject) == expected_sum, path
        assert by_group(srv, "fp_count", subject) == expected_count, path
        assert total(srv, "fp_sum", subject) == sum(VALUES.values()) + len(GROUPS), path
        assert total(srv, "fp_nested", subject) == sum(VALUES.values()) + len(GROUPS), path


@pytest.mark.parametrize("v", ["123456789012345678901234567890.000000001", "1e400", '"1e400"', "1e-19", "-1E+20",
                               '"1_000"', "true", "{}", '" 1"', '"+1"'])
def test_a_bad_meter_value_is_refused_alike_on_both_paths_naming_it_and_storing_nothing(srv: Drained, v: str) -> None:
    for path, time in (("fast", '"2026-06-03T10:00:00Z"'), ("full", '"2026-06-03T12:00:00+02:00"')):
        subject = f"bad-{path}"
        before = total(srv, "fp_count", subject)
        status, ctype, problem = post(srv, [ev(f"ok-{v}", subject, time=time), ev(f"bad-{v}", subject, v, time=time)])
        assert (status, ctype) == (400, "application/problem+json"), (path, status, problem)
        assert {(e["index"], e["field"]) for e in problem["validationErrors"]} == {(1, "data ($.v)"), (1, "data ($.a.b)")}
        assert total(srv, "fp_count", subject) == before, path


def test_times_at_the_edges_and_with_milliseconds_land_in_the_same_minutes_on_both_paths(srv: Drained) -> None:
    times = [('"1970-01-01T00:00:00Z"', '"1970-01-01T02:00:00+02:00"'),
             ('"1970-01-01T00:00:00.001Z"', '"1970-01-01T00:00:00.0019Z"'),  # truncated to the millisecond
             ('"2026-06-03T23:59:59.999Z"', '"2026-06-04T01:59:59.999+02:00"'),
             ('"2026-06-04T00:00:00.000Z"', '"2026-06-03T19:00:00-05:00"'),
             ('"2024-02-29T12:00:00Z"', '"2024-02-29T12:00:00.000000Z"')]
    got = {}
    for side, path in enumerate(("fast", "full")):
        subject = f"tm-{path}"
        accepted(srv, [ev(f"t{k}", subject, str(10**k), time=pair[side], source=subject) for k, pair in enumerate(times)])
        got[path] = {slug: [(r["windowStart"], Decimal(r["value"]))
                            for r in rows(srv, slug, subject=subject, windowSize="MINUTE")]
                     for slug in ("fp_sum", "fp_latest")}
    assert got["fast"] == got["full"]
    assert got["fast"]["fp_sum"] == [("1970-01-01T00:00:00Z", 11), ("2024-02-29T12:00:00Z", 10000),
                                     ("2026-06-03T23:59:00Z", 100), ("2026-06-04T00:00:00Z", 1000)]
    assert got["fast"]["fp_latest"][0] == ("1970-01-01T00:00:00Z", 10)  # .001 is later than .000


def test_an_event_without_a_time_is_counted_at_its_ingest_time_on_both_paths(srv: Drained) -> None:
    before = datetime.now(UTC).replace(second=0, microsecond=0)
    accepted(srv, [ev("nt-fast", "nt", "2", time=None)])  # the common shape
    accepted(srv, [ev("nt-full", "nt", "3", time=None)], receipt=True)  # with a receipt
    after = datetime.now(UTC)
    found = rows(srv, "fp_sum", subject="nt", windowSize="MINUTE",
                 **{"from": before.isoformat().replace("+00:00", "Z"),
                    "to": (after + timedelta(minutes=1)).isoformat().replace("+00:00", "Z")})
    assert sum(Decimal(r["value"]) for r in found) == 5
    for r in found:
        assert before <= datetime.fromisoformat(r["windowStart"]) <= after


def test_duplicates_in_a_batch_resends_other_splits_and_both_paths_count_once(srv: Drained) -> None:
    subject = "dup"
    events = [ev(f"d{i}", subject, str(i)) for i in range(300)]
    accepted(srv, events + events[:50])  # (source, id) twice in one batch
    accepted(srv, events)  # resent
    accepted(srv, events[::-1][:120])  # resent in another split and order
    accepted(srv, [ev(f"d{i}", subject, str(i), time='"2026-06-03T12:00:00+02:00"') for i in range(0, 300, 7)])
    accepted(srv, events[100:200], receipt=True)
    assert total(srv, "fp_count", subject) == 300
    assert total(srv, "fp_sum", subject) == sum(range(300))
    # one key twice in a batch, once in the common shape and once the full way: one event counted
    accepted(srv, [ev("mixed", "dup2", "5"), ev("mixed", "dup2", "5", time='"2026-06-03T12:00:00+02:00"')])
    accepted(srv, [ev("mixed", "dup2", "5", time='"2026-06-03T12:00:00+02:00"'), ev("mixed", "dup2", "5")])
    assert (total(srv, "fp_count", "dup2"), total(srv, "fp_sum", "dup2")) == (1, 5)


def test_acknowledged_events_survive_sigterm_and_sigkill_and_resends_after_them_count_once(srv: Drained) -> None:
    subject = "restart"
    a = [ev(f"ra{i}", subject, f"{i}.{i:03d}") for i in range(500)]
    b = [ev(f"rb{i}", subject, f'"{i}.5"', time='"2026-06-03T12:00:00+02:00"') for i in range(500)]
    expected = sum(Decimal(f"{i}.{i:03d}") for i in range(500)) + sum(Decimal(f"{i}.5") for i in range(500))
    accepted(srv, a)
    assert srv.stop() == 0
    srv.start()
    accepted(srv, a[250:] + b[:250])
    srv.kill()  # SIGKILL right after a 204: what was acknowledged is stored
    srv.start()
    assert total(srv, "fp_count", subject) == 750
    accepted(srv, b + a[::2])
    accepted(srv, a + b)
    assert total(srv, "fp_count", subject) == 1000
    assert total(srv, "fp_sum", subject) == expected


SURROGATE_FIELDS = {  # where a lone surrogate goes (spliced into an otherwise common event) -> the field named
    "id": ('"\\ud800"', "id"), "source": ('"s\\udc00"', "source"), "subject": ('"\\udbff"', "subject"),
    "type": ('"fp\\ud800"', "type"), "time": ('"2026-06-03T10:00:00Z\\ud800"', "time"),
    "specversion": ('"1.0\\ud800"', "specversion"), "datacontenttype": ('"application/json\\udfff"', "datacontenttype"),
}


@pytest.mark.parametrize("where", [*sorted(SURROGATE_FIELDS), "extension", "extension_key", "data_value", "data_key",
                                   "group_value"])
def test_a_lone_surrogate_anywhere_is_a_400_naming_it_and_stores_nothing(srv: Drained, where: str) -> None:
    subject = f"sur-{where}"
    good = ev(f"sur-ok-{where}", subject)
    if where in SURROGATE_FIELDS:
        raw, field = SURROGATE_FIELDS[where]
        attrs = json.loads(ev(f"sur-{where}", subject))
        attrs.setdefault(where, "@")
        text = json.dumps(attrs).replace(f'"{where}": {json.dumps(attrs[where])}', f'"{where}": {raw}')
    else:
        extra, field = {"extension": (',"ext":"\\ud800"', "ext"), "extension_key": (',"\\udc00x":1', "\\udc00x"),
                        "data_value": ("", "data.o"), "data_key": ("", "data.\\udfff"),
                        "group_value": ("", "data.g")}[where]
        text = ev(f"sur-{where}", subject, g='"\\ud83d"' if where == "group_value" else '"x"', extra=extra)
        if where == "data_value":
            text = text.replace('"data":{', '"data":{"o":"\\ud800",')
        if where == "data_key":
            text = text.replace('"data":{', '"data":{"\\udfff":1,')
    status, ctype, problem = post(srv, [good, text])
    assert (status, ctype) == (400, "application/problem+json"), (status, problem)
    assert (1, field) in [(e.get("index"), e["field"]) for e in problem["validationErrors"]], problem
    assert total(srv, "fp_count", subject) == 0


@pytest.mark.parametrize("field", ["id", "source", "type", "subject"])
def test_a_nul_in_an_attribute_is_a_400_naming_it(srv: Drained, field: str) -> None:
    text = ev(f"nul-{field}", "nul").replace(f'"{field}":"', f'"{field}":"\\u0000', 1)
    status, ctype, problem = post(srv, [ev(f"nul-ok-{field}", "nul"), text])
    assert (status, ctype) == (400, "application/problem+json"), problem
    assert [(e.get("index"), e["field"]) for e in problem["validationErrors"]] == [(1, field)]
    assert total(srv, "fp_count", "nul") == 0


def test_content_types_sizes_and_shapes(srv: Drained) -> None:
    subject = "ct"
    one = ev("ct-single", subject)
    accepted_cases = [(SINGLE, one), (SINGLE + "; charset=utf-8", ev("ct-1", subject)),
                      ("APPLICATION/CLOUDEVENTS+JSON", ev("ct-2", subject)),
                      (BATCH + ";charset=UTF-8", f"[{ev('ct-3', subject)}]"), ("application/json", ev("ct-4", subject)),
                      ("application/json", f"[{ev('ct-5', subject)}]"), (BATCH, "[]"), ("application/json", "[]")]
    for ctype, body in accepted_cases:
        status, _, problem = call(srv, "POST", "/api/v1/events", body, ctype)
        assert status == 204, (ctype, body, problem)
    refused_cases = [("text/plain", ev("ct-x1", subject), 415, None), (SINGLE, f"[{ev('ct-x2', subject)}]", 400, "body"),
                     (BATCH, ev("ct-x3", subject), 400, "body"), ("application/json", "", 400, "body"),
                     (SINGLE, "null", 400, "body"), ("application/json", ev("ct-x4", subject) + " x", 400, "body")]
    for ctype, body, code, field in refused_cases:
        status, kind, problem = call(srv, "POST", "/api/v1/events", body, ctype)
        assert (status, kind) == (code, "application/problem+json"), (ctype, body, problem)
        if field is not None:
            assert [e["field"] for e in problem["validationErrors"]] == [field]
    assert total(srv, "fp_count", subject) == 6
    full = [ev(f"big-{i}", "big", str(i % 7)) for i in range(10_000)]
    status, kind, problem = post(srv, full + [ev("big-last", "big")])
    assert (status, kind) == (413, "application/problem+json"), problem
    assert total(srv, "fp_count", "big") == 0
    accepted(srv, full)
    assert (total(srv, "fp_count", "big"), total(srv, "fp_sum", "big")) == (10_000, sum(i % 7 for i in range(10_000)))


@pytest.mark.parametrize("where", ["v", "other"])
def test_a_number_beyond_decimals_exponent_range_is_a_400_not_a_500(srv: Drained, where: str) -> None:
    """Found here: Decimal('1e99999999999999999999999') raises decimal.InvalidOperation (its exponent is beyond
    Decimal's own limit, 999999999999999999), which reached the caller as a 500 from any JSON body."""
    huge = "1e99999999999999999999999"
    subject = f"huge-{where}"
    text = ev(f"huge-{where}", subject, huge) if where == "v" else ev(f"huge-{where}", subject).replace(
        '"data":{', f'"data":{{"o":{huge},')
    for ctype, body in ((BATCH, f"[{text}]"), (SINGLE, text)):
        status, kind, problem = call(srv, "POST", "/api/v1/events", body, ctype)
        assert (status, kind) == (400, "application/problem+json"), (status, problem)
        assert problem["validationErrors"], problem
    assert total(srv, "fp_count", subject) == 0
    meter = '{"slug":"huge","eventType":"fp","aggregation":"SUM","valueProperty":"$.v","description":@}'.replace("@", huge)
    status, kind, problem = call(srv, "POST", "/api/v1/meters", meter, "application/json")
    assert (status, kind) == (400, "application/problem+json"), (status, problem)


def nested(id_: str, subject: str, depth: int) -> str:
    return ev(id_, subject).replace('"data":{', '"data":{"n":' + "[" * depth + "]" * depth + ",")


def deepest_accepted(s: Server, subject: str, ctype: str) -> tuple[int, list[str]]:
    """The deepest nesting of `data.n` a body of `ctype` is accepted with (bisection: each probe a 204 or a 400
    problem), and the ids of the probes accepted."""
    lo, hi, ids = 1, 4000, []
    while hi - lo > 1:
        mid = (lo + hi) // 2
        text = nested(f"{subject}-{mid}", subject, mid)
        status, kind, problem = call(s, "POST", "/api/v1/events", text if ctype == SINGLE else f"[{text}]", ctype)
        assert status in (204, 400), (status, problem)
        if status == 204:
            lo = mid
            ids.append(f"{subject}-{mid}")
        else:
            assert kind == "application/problem+json" and problem["validationErrors"], problem
            hi = mid
    return lo, ids


def test_an_acknowledged_batch_holding_a_deeply_nested_event_is_counted_whole(srv: Drained) -> None:
    """Found here: ingest accepts (204) an event whose data nests a few levels short of the JSON parsers' limit
    (Python 3.12's C recursion limit, 1,500), but the batch record carrying it nests 1-3 levels deeper than the body,
    the usage sink cannot decode it and dead-letters the whole record: that event and every other event of the
    batch in its partition group (250 of 1,001 here) are acknowledged and never counted. Resending does the same.
    Now data nests at most MAX_DATA_DEPTH levels (data itself the first): deeper is a 400 naming `data`."""
    depth, ids = deepest_accepted(srv, "deep-probe", BATCH)
    assert depth == MAX_DATA_DEPTH - 1  # data.n's arrays: one level less than data's own
    for ctype, body in ((BATCH, f"[{nested('deep-one', 'deep-probe', MAX_DATA_DEPTH)}]"),
                        (SINGLE, nested("deep-one", "deep-probe", MAX_DATA_DEPTH))):
        status, kind, problem = call(srv, "POST", "/api/v1/events", body, ctype)
        assert (status, kind) == (400, "application/problem+json"), (status, problem)
        assert [(e.get("index", 0), e["field"]) for e in problem["validationErrors"]] == [(0, "data")], problem
    assert total(srv, "fp_count", "deep-probe") == len(ids)  # every probe acknowledged is counted
    batch = [ev(f"deep-batch-{i}", "deep-batch") for i in range(1000)] + [nested("deep-batch-n", "deep-batch", depth)]
    accepted(srv, batch)
    assert total(srv, "fp_count", "deep-batch") == 1001
    accepted(srv, batch)  # and a resend neither loses nor doubles anything
    assert total(srv, "fp_count", "deep-batch") == 1001


def test_an_accepted_deeply_nested_event_can_be_listed(srv: Drained) -> None:
    """Found here: a single event (application/cloudevents+json) nested as deep as ingest accepts is a 204, and
    then GET /api/v1/events answered 500 (RecursionError encoding the listing) for every page holding it (and the
    sink had dead-lettered it: never counted). What is accepted must be counted and listable, or refused at ingest."""
    depth, ids = deepest_accepted(srv, "deep", SINGLE)
    assert depth == MAX_DATA_DEPTH - 1
    assert total(srv, "fp_count", "deep") == len(ids)
    status, _, listed = call(srv, "GET", "/api/v1/events?subject=deep&limit=100")
    assert status == 200, (status, listed)
    assert sorted(e["event"]["id"] for e in listed) == sorted(ids)


def test_a_query_filter_with_a_number_beyond_decimals_exponent_range_is_a_400_not_a_500(srv: Drained) -> None:
    """Found here: the same decimal.InvalidOperation from a query's advancedMeterGroupByFilters was a 500."""
    adv = '{"g":{"$eq":1e99999999999999999999999}}'
    status, kind, problem = call(srv, "GET", "/api/v1/meters/fp_sum/query?"
                                 + urllib.parse.urlencode({"advancedMeterGroupByFilters": adv}))
    assert (status, kind) == (400, "application/problem+json"), (status, problem)


@pytest.mark.parametrize("config", ["1e99999999999999999999999", "[" * 5000 + "]" * 5000])
def test_a_static_entitlement_config_beyond_the_parser_is_a_400_not_a_500(srv: Drained, config: str) -> None:
    """Found here: a static entitlement's `config` (a JSON document in a string) holding a number beyond Decimal's
    exponent range, or nested deeper than the parser goes, was a 500 (only JSONDecodeError was caught)."""
    status, _, body = srv.request("POST", "/api/v1/features", {"key": "static_f", "name": "static_f"})
    assert status in (201, 409), body
    status, _, body = srv.request("POST", "/api/v1/subjects", [{"key": "static-s"}])
    assert status in (200, 201), body
    status, kind, problem = call(srv, "POST", "/api/v1/subjects/static-s/entitlements",
                                 json.dumps({"type": "static", "featureKey": "static_f", "config": config}),
                                 "application/json")
    assert (status, kind) == (400, "application/problem+json"), (status, problem)
    assert [e["field"] for e in problem["validationErrors"]] == ["config"], problem


def test_an_entitlements_usage_is_the_exact_sum_of_its_period_also_right_after_more_events(srv: Drained) -> None:
    """The entitlement check's bounded_usage (raw edges to the millisecond, minute and hour rollups) against the
    exact Decimal sum of the events of the current usage period (DAY, UTC), the period's first and last
    milliseconds included and the millisecond before it excluded; then more events, and the value (cached after the
    first read) moves by exactly their sum."""
    import random

    status, _, body = srv.request("POST", "/api/v1/features", {"key": "ent_sum", "name": "ent_sum", "meterSlug": "fp_sum"})
    assert status == 201, body
    status, _, body = srv.request("POST", "/api/v1/subjects", [{"key": "ent"}])
    assert status in (200, 201), body
    status, _, ent = srv.request("POST", "/api/v1/subjects/ent/entitlements", {
        "type": "metered", "featureKey": "ent_sum", "usagePeriod": {"interval": "DAY", "anchor": "2026-01-01T00:00:00Z"}})
    assert status == 201, ent
    start = datetime.fromisoformat(ent["currentUsagePeriod"]["from"])
    rng = random.Random(17)

    def batch(tag: str, offsets: list[timedelta]) -> tuple[list[str], Decimal]:
        now = datetime.now(UTC)
        events, expected = [], Decimal(0)
        for i, off in enumerate(offsets):
            at = start + off
            if at > now:
                continue
            v = Decimal(rng.randrange(1, 10**7)) / Decimal(10) ** rng.randrange(0, 19)
            events.append(ev(f"{tag}{i}", "ent", str(v), time='"' + at.isoformat(timespec="milliseconds")[:23] + 'Z"'))
            expected += v if at >= start else 0
        return events, expected

    span = int((datetime.now(UTC) - start).total_seconds() * 1000)
    edges = [timedelta(milliseconds=ms) for ms in (-1, -60_000, 0, 1, 59_999, 60_000, 3_599_999, 3_600_000)]
    events, expected = batch("ent-a", edges + [timedelta(milliseconds=rng.randrange(span)) for _ in range(60)])
    accepted(srv, events)

    def usage() -> Decimal:
        status, _, value = call(srv, "GET", f"/api/v1/subjects/ent/entitlements/{ent['id']}/value")
        assert status == 200, value
        return Decimal(value["usage"])

    assert usage() == expected
    period = rows(srv, "fp_sum", subject="ent", **{"from": ent["currentUsagePeriod"]["from"]})
    assert sum((Decimal(r["value"]) for r in period), Decimal(0)) == expected  # and the meter agrees
    more, added = batch("ent-b", [timedelta(milliseconds=rng.randrange(span)) for _ in range(20)] + edges)
    accepted(srv, more)
    assert usage() == expected + added


def test_a_receipt_counts_stored_and_repeated_duplicates_exactly(srv: Drained) -> None:
    events = [ev(f"rc{i}", "rc", str(i)) for i in range(300)]
    accepted(srv, events[:100])
    status, _, receipt = post(srv, events + events[250:], receipt=True)  # 100 stored before, 50 repeated in it
    assert status == 200, receipt
    assert (receipt["events"], receipt["accepted"], len(receipt["duplicates"])) == (350, 200, 150)
    status, _, again = post(srv, [ev("rc5", "rc", "5", time='"2026-06-03T12:00:00+02:00"')], receipt=True)
    assert (again["events"], again["accepted"], again["duplicates"]) == (1, 0, [{"source": "fp", "id": "rc5"}])
    assert (total(srv, "fp_count", "rc"), total(srv, "fp_sum", "rc")) == (300, sum(range(300)))


KAFKA_CONFIG = """namespace: {ns}
bus: kafka
kafka_bootstrap: {bootstrap}
kafka_group: sink-{name}-{ns}
meters:
  - slug: fp_sum
    eventType: fp
    aggregation: SUM
    valueProperty: $.v
    groupBy:
      g: $.g
  - slug: fp_count
    eventType: fp
    aggregation: COUNT
"""


def test_two_servers_on_one_topic_each_count_every_event_once(tmp_path: Path, kafka_bootstrap: str) -> None:
    """Two `billow serve` on the Kafka bus, one namespace (one topic), each with its own store and consumer group:
    events sent through either, resent through the other in other splits and orders (so one (source, id) reaches
    the topic in batch records of both producers, each of which valued it with its own meter ids), land once in
    each store, both equal to the exact sums. Each sink values by its own meters, not the producer's."""
    import time
    import uuid

    ns = "fp" + uuid.uuid4().hex[:10]
    servers = []
    for name in ("a", "b"):
        config = tmp_path / f"{name}.yaml"
        config.write_text(KAFKA_CONFIG.format(ns=ns, bootstrap=kafka_bootstrap, name=name))
        servers.append(Drained(tmp_path / name, config))
    starts = [threading.Thread(target=s.start) for s in servers]  # side by side: each start waits on the broker
    for t in starts:
        t.start()
    for t in starts:
        t.join(timeout=120)
    try:
        assert all(s.proc is not None for s in servers)
        a, b = servers
        events = [ev(f"k{i}-\u00e9\U0001f600", f"s{i % 3}", f"{i}.{i % 1000:03d}", json.dumps(f"g{i % 5}"))
                  for i in range(2000)]
        expected_sum = sum(Decimal(f"{i}.{i % 1000:03d}") for i in range(2000))
        accepted(a, events[:1200])
        accepted(b, events[800:][::-1])
        accepted(a, events[1500:] + events[:100])
        accepted(b, events[::3])
        accepted(a, [ev("k7-\u00e9\U0001f600", "s1", "7.007", '"g2"', time='"2026-06-03T12:00:00+02:00"')])

        def totals(s: Server) -> tuple[Decimal, Decimal]:
            return (sum((total(s, "fp_count", f"s{k}") for k in range(3)), Decimal(0)),
                    sum((total(s, "fp_sum", f"s{k}") for k in range(3)), Decimal(0)))

        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and any(totals(s) != (2000, expected_sum) for s in servers):
            time.sleep(0.2)  # the sinks consume the topic in the background; wait on the totals, bounded
        for s in servers:
            assert totals(s) == (2000, expected_sum)
            groups = {}
            for k in range(3):
                for g, v in by_group(s, "fp_sum", f"s{k}").items():
                    groups[g] = groups.get(g, Decimal(0)) + v
            assert groups == {f"g{j}": sum(Decimal(f"{i}.{i % 1000:03d}") for i in range(j, 2000, 5)) for j in range(5)}
    finally:
        for s in servers:
            if s.proc is not None:
                s.stop()
