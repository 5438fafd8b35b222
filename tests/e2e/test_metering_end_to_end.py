"""A new user's first session, over HTTP against `billow serve`: meters, ingest with duplicates and late
events, exact windows back; every bad input a clear problem+json and nothing accepted lost."""

from __future__ import annotations

import csv
import io
from typing import Any

from tests.conftest import event
from tests.e2e.conftest import Server

BATCH = "application/cloudevents-batch+json"


def q(server: Server, path: str, **headers: str) -> Any:
    status, _, body = server.request("GET", path, headers=headers)
    assert status == 200, body
    return body


def test_meter_ingest_query_roundtrip(server: Server) -> None:
    status, _, m = server.request("POST", "/api/v1/meters", {
        "slug": "e2e_tokens", "eventType": "e2e_prompt", "aggregation": "SUM", "valueProperty": "$.tokens",
        "groupBy": {"model": "$.model"}})
    assert status == 201 and m["slug"] == "e2e_tokens" and len(m["id"]) == 26
    events = [
        event("a1", type="e2e_prompt", time="2026-11-27T23:30:00Z", tokens=0.1, model="gpt"),
        event("a2", type="e2e_prompt", time="2026-11-28T00:10:00Z", tokens="0.2", model="gpt"),
        event("a3", type="e2e_prompt", time="2026-11-28T00:59:59.999Z", tokens=5, model="o3", subject="beta"),
        event("a2", type="e2e_prompt", time="2026-11-28T00:10:00Z", tokens="0.2", model="gpt"),  # duplicate
    ]
    assert server.request("POST", "/api/v1/events", events, BATCH)[0] == 204
    assert server.request("POST", "/api/v1/events", events[1], "application/cloudevents+json")[0] == 204  # resent
    # A late event, days after its window.
    late = event("a0", type="e2e_prompt", time="2026-11-20T12:00:00Z", tokens=100, model="gpt")
    assert server.request("POST", "/api/v1/events", [late], "application/json")[0] == 204

    body = q(server, "/api/v1/meters/e2e_tokens/query?windowSize=HOUR&groupBy=model&from=2026-11-27T00:00:00Z")
    rows = [(r["windowStart"], r["windowEnd"], r["groupBy"]["model"], r["value"]) for r in body["data"]]
    assert rows == [
        ("2026-11-27T23:00:00Z", "2026-11-28T00:00:00Z", "gpt", 0.1),
        ("2026-11-28T00:00:00Z", "2026-11-28T01:00:00Z", "gpt", 0.2),
        ("2026-11-28T00:00:00Z", "2026-11-28T01:00:00Z", "o3", 5),
    ]
    day = q(server, "/api/v1/meters/e2e_tokens/query?windowSize=DAY&windowTimeZone=Europe/Berlin&subject=acme")
    assert [(r["windowStart"], r["value"]) for r in day["data"]] == [
        ("2026-11-19T23:00:00Z", 100), ("2026-11-27T23:00:00Z", 0.3)]  # 0.1 + 0.2, exactly
    total = q(server, "/api/v1/meters/e2e_tokens/query")
    assert [r["value"] for r in total["data"]] == [105.3]
    filtered = q(server, "/api/v1/meters/e2e_tokens/query?advancedMeterGroupByFilters=%7B%22model%22%3A%7B%22%24eq%22%3A%22o3%22%7D%7D")
    assert [r["value"] for r in filtered["data"]] == [5]
    _, hdrs, text = server.request("GET", "/api/v1/meters/e2e_tokens/query?windowSize=DAY&groupBy=subject",
                                   headers={"Accept": "text/csv"})
    assert hdrs["Content-Type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(text)))
    assert [(r["window_start"], r["subject"], r["value"]) for r in table] == [
        ("2026-11-20T00:00:00Z", "acme", "100"), ("2026-11-27T00:00:00Z", "acme", "0.1"),
        ("2026-11-28T00:00:00Z", "acme", "0.2"), ("2026-11-28T00:00:00Z", "beta", "5")]


def test_customers_attribute_usage(server: Server) -> None:
    server.request("POST", "/api/v1/meters", {"slug": "e2e_calls", "eventType": "e2e_call", "aggregation": "COUNT"})
    status, _, cust = server.request("POST", "/api/v1/customers", {
        "name": "Acme", "key": "acme-inc", "usageAttribution": {"subjectKeys": ["c-1", "c-2"]}})
    assert status == 201
    server.request("POST", "/api/v1/events", [event(f"c{i}", type="e2e_call", subject=s)
                                              for i, s in enumerate(["c-1", "c-2", "c-2", "other"])], BATCH)
    body = q(server, f"/api/v1/meters/e2e_calls/query?filterCustomerId={cust['id']}")
    assert [(r["customerId"], r["value"]) for r in body["data"]] == [(cust["id"], 4 - 1)]
    assert server.request("GET", "/api/v1/customers/acme-inc")[2]["id"] == cust["id"]


def problem(server: Server, method: str, path: str, **kw: Any) -> tuple[int, dict[str, Any]]:
    status, hdrs, body = server.request(method, path, **kw)
    assert hdrs["Content-Type"] == "application/problem+json", (status, body)
    assert body["status"] == status and body["title"] and body["detail"]
    return status, body


def test_bad_input_is_refused_and_nothing_accepted_is_lost(server: Server) -> None:
    server.request("POST", "/api/v1/meters", {"slug": "e2e_bad", "eventType": "e2e_bad", "aggregation": "SUM", "valueProperty": "$.v"})
    good = event("g1", type="e2e_bad", v=1)
    assert server.request("POST", "/api/v1/events", [good], BATCH)[0] == 204

    assert problem(server, "POST", "/api/v1/events", raw=b"[{", content_type=BATCH)[0] == 400
    assert problem(server, "POST", "/api/v1/events", body=[good], content_type="text/plain")[0] == 415
    status, body = problem(server, "POST", "/api/v1/events", body=[event("g2", type="e2e_bad", v=2),
                                                                    {"id": "x", "source": "s", "type": "e2e_bad"}], content_type=BATCH)
    assert status == 400 and {"index": 1, "field": "subject", "message": "required"} in body["validationErrors"]
    status, body = problem(server, "POST", "/api/v1/events", body=[event("g3", type="e2e_bad", v="ten")], content_type=BATCH)
    assert status == 400 and body["validationErrors"][0]["index"] == 0 and "not a number" in body["detail"]
    assert problem(server, "POST", "/api/v1/events", body=[event("g4", type="e2e_bad", v=1, time="28/11/2026")],
                   content_type=BATCH)[0] == 400
    assert problem(server, "POST", "/api/v1/events", body=[event(f"b{i}", type="e2e_bad", v=1) for i in range(10_001)],
                   content_type=BATCH)[0] == 413
    assert problem(server, "GET", "/api/v1/meters/no_such_meter/query")[0] == 404
    assert problem(server, "GET", "/api/v1/meters/e2e_bad/query?windowSize=WEEK")[0] == 400
    assert problem(server, "GET", "/api/v1/meters/e2e_bad/query?windowTimeZone=Mars/Base")[0] == 400
    assert problem(server, "GET", "/api/v1/meters/e2e_bad/query?groupBy=nope")[0] == 400
    assert problem(server, "POST", "/api/v1/meters", body={"slug": "Bad Slug", "aggregation": "SUM", "eventType": "x"})[0] == 400
    assert problem(server, "POST", "/api/v1/meters", body={"slug": "e2e_bad", "aggregation": "COUNT", "eventType": "x"})[0] == 409
    # Of all that, only the first good event (and the good events of refused batches: none) counts.
    assert [r["value"] for r in q(server, "/api/v1/meters/e2e_bad/query")["data"]] == [1]


def test_openapi_document_lists_served_paths(server: Server) -> None:
    doc = q(server, "/api/v1/openapi.json")
    assert {"/api/v1/events", "/api/v1/meters", "/api/v1/meters/{meterIdOrSlug}/query", "/api/v1/customers"} <= set(doc["paths"])
