"""Behaviours that differ from OpenMeter's unless made the same (issue 16 item 3), each seen through the API as a
client sees it (real handlers, in-memory twin and chdb, SQLite meta store)."""

from __future__ import annotations

import json
from typing import Any

from billow.local.server import apigw_event
from functions.api.handler import lambda_handler as api
from tests.entitlements.conftest import Billow


def raw_get(path: str, accept: str = "application/json") -> tuple[int, str]:
    out = api(apigw_event("GET", path, {"accept": accept}, b"", "127.0.0.1"), None)
    return out["statusCode"], out.get("body") or ""


def test_repeated_subject_parameters_filter_and_group_by_subject(billow: Billow) -> None:
    b = billow
    b.ok("POST", "/api/v1/subjects", [{"key": "customer_3"}])
    b.usage("1.5", "2026-01-01T00:10:00Z", subject="customer_1")
    b.usage("2", "2026-01-01T00:20:00Z", subject="customer_2")
    b.usage("100", "2026-01-01T00:30:00Z", subject="customer_3")
    status, text = raw_get("/api/v1/meters/tokens/query?subject=customer_1&subject=customer_2")
    assert status == 200, text
    rows = json.loads(text)["data"]
    assert sorted((r["subject"], r["value"]) for r in rows) == [("customer_1", 1.5), ("customer_2", 2)]
    # one subject: still grouped (the row names it), as OpenMeter's `subject` parameter does
    (row,) = json.loads(raw_get("/api/v1/meters/tokens/query?subject=customer_2")[1])["data"]
    assert (row["subject"], row["value"]) == ("customer_2", 2)
    # the POST body's `subject` list does the same
    out = b.ok("POST", "/api/v1/meters/tokens/query", {"subject": ["customer_1", "customer_2"]})
    assert sorted((r["subject"], r["value"]) for r in out["data"]) == [("customer_1", 1.5), ("customer_2", 2)]
    # no subject parameter: one row for everyone
    (total,) = b.ok("GET", "/api/v1/meters/tokens/query")["data"]
    assert (total["subject"], total["value"]) == (None, 103.5)


def test_csv_uses_openmeter_columns(billow: Billow) -> None:
    b = billow
    b.usage("0.1", "2026-01-01T00:10:00Z", subject="customer_1", model="gpt")
    b.usage("0.2", "2026-01-01T00:20:00Z", subject="customer_2", model="o3")
    b.usage("1e-18", "2026-01-01T00:30:00Z", subject="customer_2", model="o3")
    path = "/api/v1/meters/tokens/query?windowSize=DAY"
    status, text = raw_get(path, "text/csv")
    assert status == 200
    assert text.splitlines() == ["window_start,window_end,value",
                                 "2026-01-01T00:00:00Z,2026-01-02T00:00:00Z,0.300000000000000001"]
    text = raw_get(path + "&subject=customer_2", "text/csv")[1]
    assert text.splitlines() == ["window_start,window_end,subject,value",
                                 "2026-01-01T00:00:00Z,2026-01-02T00:00:00Z,customer_2,0.200000000000000001"]
    text = raw_get(path + "&groupBy=model&groupBy=subject", "text/csv")[1]
    assert text.splitlines() == ["window_start,window_end,subject,model,value",
                                 "2026-01-01T00:00:00Z,2026-01-02T00:00:00Z,customer_1,gpt,0.1",
                                 "2026-01-01T00:00:00Z,2026-01-02T00:00:00Z,customer_2,o3,0.200000000000000001"]
    # no rows: the header still says what would be there
    assert raw_get("/api/v1/meters/tokens/query?groupBy=model&from=2027-01-01T00:00:00Z", "text/csv")[1] == (
        "window_start,window_end,model,value\n")


def test_feature_with_meter_group_by_filters_shows_them_as_advanced_filters(billow: Billow) -> None:
    b = billow
    created = b.ok("POST", "/api/v1/features", {"key": "gpt4", "name": "GPT-4 tokens", "meterSlug": "tokens",
                                                "meterGroupByFilters": {"model": "gpt-4"}})
    for doc in (created, b.ok("GET", "/api/v1/features/gpt4"), b.ok("GET", "/api/v1/features")[0]):
        assert doc["meterGroupByFilters"] == {"model": "gpt-4"}
        assert doc["advancedMeterGroupByFilters"] == {"model": {"$eq": "gpt-4"}}
    # the filter still narrows usage exactly once
    b.ok("POST", "/api/v1/subjects/customer_1/entitlements", {
        "type": "metered", "featureKey": "gpt4", "usagePeriod": {"interval": "MONTH"}, "issueAfterReset": 10})
    b.usage("3", "2026-01-01T00:10:00Z", model="gpt-4")
    b.usage("5", "2026-01-01T00:10:00Z", model="o3")
    b.clock.set("2026-01-01T01:00:00Z")
    assert b.value("customer_1", "gpt4")["usage"] == 3


def test_second_entitlement_conflict_names_the_existing_one(billow: Billow) -> None:
    b = billow
    b.ok("POST", "/api/v1/features", {"key": "sso", "name": "SSO"})
    first = b.ok("POST", "/api/v1/subjects/customer_1/entitlements", {"type": "boolean", "featureKey": "sso"})
    status, out = b.call("POST", "/api/v1/subjects/customer_1/entitlements", {"type": "boolean", "featureKey": "sso"})
    assert status == 409, out
    assert out["extensions"]["conflictingEntityId"] == first["id"]


def test_issue_after_reset_grant_annotations_keep_json_types(billow: Billow) -> None:
    b = billow
    b.ok("POST", "/api/v1/features", {"key": "tok", "name": "Tokens", "meterSlug": "tokens"})
    ent = b.ok("POST", "/api/v1/subjects/customer_1/entitlements", {
        "type": "metered", "featureKey": "tok", "usagePeriod": {"interval": "MONTH"}, "issueAfterReset": 10})
    (grant,) = b.ok("GET", f"/api/v1/subjects/customer_1/entitlements/{ent['id']}/grants")
    assert grant["annotations"] == {"issueAfterReset": True}


def _metered_with_grant(b: Billow) -> tuple[dict[str, Any], dict[str, Any]]:
    b.ok("POST", "/api/v1/features", {"key": "tok", "name": "Tokens", "meterSlug": "tokens"})
    ent = b.ok("POST", "/api/v1/subjects/customer_1/entitlements", {
        "type": "metered", "featureKey": "tok", "usagePeriod": {"interval": "DAY", "anchor": "2026-01-01T00:00:00Z"}})
    grant = b.ok("POST", "/api/v1/subjects/customer_1/entitlements/tok/grants", {
        "amount": 100, "effectiveAt": "2026-01-01T00:00:00Z", "expiration": {"duration": "YEAR", "count": 1}})
    return ent, grant


def test_void_grant_at_an_instant(billow: Billow) -> None:
    b = billow
    _, grant = _metered_with_grant(b)
    b.usage("30", "2026-01-01T01:00:00Z")
    b.usage("20", "2026-01-01T03:00:00Z")
    b.clock.set("2026-01-01T05:00:00Z")
    assert b.call("DELETE", f"/api/v1/grants/{grant['id']}", query={"at": "2026-01-01T02:00:00Z"})[0] == 204
    (voided,) = b.ok("GET", "/api/v1/subjects/customer_1/entitlements/tok/grants")
    assert voided["voidedAt"] == "2026-01-01T02:00:00Z"
    # burnt 30 before the void; from 02:00 nothing is left to burn
    assert b.value("customer_1", "tok", "2026-01-01T01:30:00Z")["balance"] == 70
    assert b.value("customer_1", "tok")["balance"] == 0


def test_void_grant_at_in_the_future_or_before_the_period_is_refused(billow: Billow) -> None:
    b = billow
    _, grant = _metered_with_grant(b)
    b.clock.set("2026-01-02T05:00:00Z")  # the current usage period started at 2026-01-02T00:00:00Z
    for at in ("2026-01-02T06:00:00Z", "2026-01-01T23:00:00Z", "yesterday"):
        status, out = b.call("DELETE", f"/api/v1/grants/{grant['id']}", query={"at": at})
        assert status == 400, (at, out)
        assert [e["field"] for e in out["extensions"]["validationErrors"]] == ["at"], out
    assert "voidedAt" not in b.ok("GET", "/api/v1/subjects/customer_1/entitlements/tok/grants")[0]


def test_events_filtered_by_customer_carry_its_id(billow: Billow) -> None:
    b = billow
    cust = b.ok("POST", "/api/v1/customers", {"name": "Acme", "key": "acme",
                                               "usageAttribution": {"subjectKeys": ["customer_1"]}})
    b.usage("1", "2026-01-01T00:10:00Z", subject="customer_1")
    b.usage("2", "2026-01-01T00:20:00Z", subject="customer_2")
    status, text = raw_get(f"/api/v1/events?customerId={cust['id']}")
    assert status == 200, text
    listed = json.loads(text)
    assert [(e["event"]["subject"], e["customerId"]) for e in listed] == [("customer_1", cust["id"])]
    everyone = json.loads(raw_get("/api/v1/events")[1])
    assert sorted((e["event"]["subject"], e.get("customerId")) for e in everyone) == [
        ("customer_1", cust["id"]), ("customer_2", None)]
    status, text = raw_get("/api/v1/events?customerId=01JZZZZZZZZZZZZZZZZZZZZZZZ")
    out = json.loads(text)
    assert status == 400 and [e["field"] for e in out["extensions"]["validationErrors"]] == ["customerId"], out
