"""Issue 15 items 7, 9, 10 (request bodies) and 11, over HTTP against `billow serve` (chdb): one refusal lists every
bad event of every kind; event times only where the rollups hold them, and those land on their real day; numbers
that are not plain ASCII decimals, non-RFC 3339 times, huge exponents and lone surrogates are 400s naming the
event and field, and nothing of a refused batch is counted."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import event
from tests.e2e.conftest import Server

BATCH = "application/cloudevents-batch+json"
RANGE = ("1970-01-01T00:00:00Z", "2105-12-31T23:59:59.999Z")


def refused(server: Server, body: Any = None, raw: bytes | None = None) -> list[dict[str, Any]]:
    status, hdrs, problem = server.request("POST", "/api/v1/events", body, BATCH, raw=raw)
    assert status == 400, (status, problem)
    assert hdrs["Content-Type"] == "application/problem+json" and problem["status"] == 400
    return list(problem["validationErrors"])


def days(server: Server, meter: str, start: str, end: str) -> list[tuple[str, Any]]:
    status, _, body = server.request("GET", f"/api/v1/meters/{meter}/query?windowSize=DAY&from={start}&to={end}")
    assert status == 200, body
    return [(r["windowStart"], r["value"]) for r in body["data"]]


def test_event_times_are_exactly_the_range_the_rollups_hold(server: Server) -> None:
    server.request("POST", "/api/v1/meters", {"slug": "e2e_range", "eventType": "e2e_range", "aggregation": "SUM",
                                              "valueProperty": "$.v"})
    # The upper edge of the stored range lies beyond the future bound today (at most MAX_FUTURE after the ingest
    # time): it is refused as future usage; the unit tests take it with a clock in 2105.
    edges = [event("first", type="e2e_range", v=1, time=RANGE[0]), event("now", type="e2e_range", v=2, time=None)]
    assert server.request("POST", "/api/v1/events", edges, BATCH)[0] == 204
    future = refused(server, [event("last", type="e2e_range", v=5, time=RANGE[1])])
    assert [(e["index"], e["field"]) for e in future] == [(0, "time")] and "after the ingest time" in future[0]["message"]
    outside = ["1969-12-31T23:59:59.999Z", "1901-01-01T00:00:00Z", "2106-01-01T00:00:00Z", "2200-01-01T00:00:00Z",
               "2106-02-07T06:28:16Z", "1970-01-01T00:30:00+01:00"]
    errors = refused(server, [event(f"out{i}", type="e2e_range", v=100, time=w) for i, w in enumerate(outside)])
    assert [(e["index"], e["field"]) for e in errors] == [(i, "time") for i in range(len(outside))]
    assert all(RANGE[0] in e["message"] and RANGE[1] in e["message"] for e in errors)
    # The edges are on their real days, and nothing of the refused batch was clamped onto 1970 or 2106.
    assert days(server, "e2e_range", "1970-01-01T00:00:00Z", "1970-01-02T00:00:00Z") == [("1970-01-01T00:00:00Z", 1)]
    assert days(server, "e2e_range", "2105-12-31T00:00:00Z", "2106-01-01T00:00:00Z") == []
    status, _, body = server.request("GET", "/api/v1/meters/e2e_range/query")
    assert status == 200 and [r["value"] for r in body["data"]] == [3]


def test_one_refusal_lists_every_bad_event_and_nothing_is_counted(server: Server) -> None:
    server.request("POST", "/api/v1/meters", {"slug": "e2e_strict", "eventType": "e2e_strict", "aggregation": "SUM",
                                              "valueProperty": "$.v"})
    good = dict(type="e2e_strict")
    batch = [event("s0", v=1, **good), event("s1", v="ten", **good), {**event("s2", v=1, **good), "subject": None},
             event("s3", v="1_000", **good), event("s4", v="١٢", **good), event("s5", v="５", **good),
             event("s6", v=1, time="2026-W01-1T00:00:00Z", **good), event("s7", v=1, time="2026-01-01T00:00:00,5Z", **good),
             event("s8", v="1e+999999999999999999", **good), event("s9", v=2, **good),
             event("s10", v="0.0000000000000000001", **good)]
    errors = refused(server, batch)
    assert [(e["index"], e["field"]) for e in errors] == [
        (1, "data ($.v)"), (2, "subject"), (3, "data ($.v)"), (4, "data ($.v)"), (5, "data ($.v)"), (6, "time"),
        (7, "time"), (8, "data ($.v)"), (10, "data ($.v)")]
    # A JSON number with a huge exponent: a 400 naming the event and field, not a decimal.Overflow 500.
    raw = json.dumps([event("h0", v=1, **good), event("h1", v=0, **good)]).replace('"v": 0', '"v": 1e999999999').encode()
    assert [(e["index"], e["field"]) for e in refused(server, raw=raw)] == [(1, "data ($.v)")]
    status, _, body = server.request("GET", "/api/v1/meters/e2e_strict/query")
    assert status == 200 and body["data"] == []  # none of it counted
    assert server.request("POST", "/api/v1/events", [event("s0", v=1, **good), event("s9", v=2, **good)], BATCH)[0] == 204
    status, _, body = server.request("GET", "/api/v1/meters/e2e_strict/query")
    assert [r["value"] for r in body["data"]] == [3]


def test_lone_surrogates_in_request_bodies_are_400s_naming_the_field(server: Server) -> None:
    # json.dumps writes a lone surrogate as its \ud800 escape, as a client in any language can.
    errors = refused(server, [event("u0", type="e2e_u", v=1), event("u1", type="e2e_u", v=1, subject="a\ud800")])
    assert [(e["index"], e["field"]) for e in errors] == [(1, "subject")]
    for path, body, field in [
        ("/api/v1/customers", {"name": "\udfff", "usageAttribution": {"subjectKeys": ["x"]}}, "name"),
        ("/api/v1/meters", {"slug": "e2e_u", "aggregation": "COUNT", "eventType": "x", "groupBy": {"k\ud800": "$.k"}},
         "groupBy.k\\ud800"),
    ]:
        status, hdrs, problem = server.request("POST", path, body)
        assert status == 400 and hdrs["Content-Type"] == "application/problem+json", (path, status, problem)
        assert problem["validationErrors"][0]["field"] == field
    assert server.request("GET", "/api/v1/meters/e2e_u")[0] == 404
