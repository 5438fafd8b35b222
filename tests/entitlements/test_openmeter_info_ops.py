"""OpenMeter's remaining read operations (issue 16): GET /api/v1/customers/{c}/access, GET
/api/v1/meters/{m}/group-by/{key}/values, GET /api/v1/info/currencies, GET /api/v1/debug/metrics and GET
/api/v2/events (filters and cursor pagination), through the handlers on the twin and on chdb."""

from __future__ import annotations

import json
from typing import Any

from billow.domain.money import ISO_4217_MINOR_UNITS
from billow.local.server import apigw_event
from functions.api.handler import lambda_handler as api
from tests.entitlements.conftest import Billow


def _refused(b: Billow, path: str, name: str, query: dict[str, str] | None = None, status: int = 400) -> None:
    got, out = b.call("GET", path, query=query)
    assert got == status, (got, out)
    assert name in str(out), out


def _events(b: Billow, *events: dict[str, Any]) -> None:
    body = [{"specversion": "1.0", "source": "test", "type": "prompt", "data": {"tokens": 1, "model": "gpt"}, **e}
            for e in events]
    status, out = b.call("POST", "/api/v1/events", body, content_type="application/cloudevents-batch+json")
    assert status == 204, out


def test_info_currencies_lists_every_billable_currency(billow: Billow) -> None:
    got = billow.ok("GET", "/api/v1/info/currencies")
    assert [c["code"] for c in got] == sorted(ISO_4217_MINOR_UNITS)
    by_code = {c["code"]: c for c in got}
    assert by_code["USD"] == {"code": "USD", "name": "US Dollar", "symbol": "$", "subunits": 2}
    assert (by_code["EUR"]["symbol"], by_code["JPY"]["subunits"], by_code["BHD"]["subunits"]) == ("€", 0, 3)
    assert all(c["name"] and c["symbol"] for c in got)


def test_debug_metrics_count_today_s_events_per_subject(billow: Billow) -> None:
    b = billow
    b.clock.set("2026-01-02T12:00:00Z")
    _events(b, {"id": "y1", "subject": "customer_1", "time": "2026-01-01T23:59:59Z"},  # yesterday: not counted
            {"id": "t1", "subject": "customer_1", "time": "2026-01-02T00:00:00Z"},
            {"id": "t2", "subject": "customer_1", "time": "2026-01-02T10:00:00Z"},
            {"id": "t3", "subject": "customer_2", "time": "2026-01-02T11:00:00Z", "type": "unmetered"})
    resp = api(apigw_event("GET", "/api/v1/debug/metrics", {}, b"", "127.0.0.1"), None)
    assert resp["statusCode"] == 200 and resp["headers"]["Content-Type"].startswith("text/plain"), resp
    lines = resp["body"].splitlines()
    assert lines[:3] == ["# HELP openmeter_events Number of ingested events", "# TYPE openmeter_events counter",
                         "# UNIT openmeter_events events"]
    assert sorted(ln for ln in lines if ln.startswith("openmeter_events_total")) == [
        'openmeter_events_total{subject="customer_1"} 2.0', 'openmeter_events_total{subject="customer_2"} 1.0']
    assert lines[-1] == "# EOF"


def test_meter_group_by_values(billow: Billow) -> None:
    b = billow
    b.clock.set("2026-01-10T12:00:00Z")
    _events(b, {"id": "g1", "subject": "customer_1", "time": "2026-01-10T01:00:00Z", "data": {"tokens": 1, "model": "gpt"}},
            {"id": "g2", "subject": "customer_2", "time": "2026-01-10T02:00:00Z", "data": {"tokens": 2, "model": "claude"}},
            {"id": "g3", "subject": "customer_1", "time": "2026-01-10T03:00:00Z", "data": {"tokens": 3, "model": "gpt"}},
            {"id": "g4", "subject": "customer_1", "time": "2026-01-08T03:00:00Z", "data": {"tokens": 4, "model": "llama"}},
            {"id": "g5", "subject": "customer_1", "time": "2026-01-10T04:00:00Z", "data": {"tokens": 5}})  # no model
    path = "/api/v1/meters/tokens/group-by/model/values"
    assert b.ok("GET", path) == ["claude", "gpt"]  # the last 24 hours by default
    assert b.ok("GET", path, query={"from": "2026-01-01T00:00:00Z"}) == ["claude", "gpt", "llama"]
    assert b.ok("GET", path, query={"from": "2026-01-01T00:00:00Z", "to": "2026-01-10T01:30:00Z"}) == ["gpt", "llama"]
    meter_id = b.ok("GET", "/api/v1/meters/tokens")["id"]
    assert b.ok("GET", f"/api/v1/meters/{meter_id}/group-by/model/values") == ["claude", "gpt"]
    _refused(b, "/api/v1/meters/tokens/group-by/region/values", "groupByKey")
    _refused(b, path, "from", {"from": "yesterday"})
    _refused(b, path, "to", {"to": "2026-01-10T99:00:00Z"})
    _refused(b, path, "to", {"from": "2026-01-10T00:00:00Z", "to": "2026-01-09T00:00:00Z"})
    _refused(b, "/api/v1/meters/nope/group-by/model/values", "Not Found", status=404)


def test_customer_access_maps_each_feature_to_its_value(billow: Billow) -> None:
    b = billow
    b.ok("POST", "/api/v1/features", {"key": "tokens", "name": "Tokens", "meterSlug": "tokens"})
    b.ok("POST", "/api/v1/features", {"key": "sso", "name": "SSO"})
    b.ok("POST", "/api/v1/features", {"key": "plan_cfg", "name": "Plan config"})
    acme = b.ok("POST", "/api/v1/customers", {"key": "acme", "name": "Acme",
                                              "usageAttribution": {"subjectKeys": ["customer_1"]}})
    b.ok("POST", "/api/v1/customers", {"key": "other", "name": "Other", "usageAttribution": {"subjectKeys": ["customer_2"]}})
    b.ok("POST", "/api/v1/subjects/customer_1/entitlements", {"type": "metered", "featureKey": "tokens",
                                                               "usagePeriod": {"interval": "MONTH"}, "issueAfterReset": 1000})
    b.ok("POST", "/api/v1/subjects/customer_1/entitlements", {"type": "boolean", "featureKey": "sso"})
    b.ok("POST", "/api/v1/subjects/customer_1/entitlements", {"type": "static", "featureKey": "plan_cfg",
                                                               "config": json.dumps({"seats": 5})})
    b.ok("POST", "/api/v1/subjects/customer_2/entitlements", {"type": "boolean", "featureKey": "sso"})
    b.clock.set("2026-01-05T00:00:00Z")
    b.usage(100, "2026-01-02T00:00:00Z")
    access = b.ok("GET", "/api/v1/customers/acme/access")
    assert set(access) == {"entitlements"} and set(access["entitlements"]) == {"tokens", "sso", "plan_cfg"}
    assert access["entitlements"]["tokens"] == b.ok("GET", "/api/v1/customers/acme/entitlements/tokens/value")
    assert access["entitlements"]["tokens"]["hasAccess"] is True and access["entitlements"]["tokens"]["usage"] == 100
    assert access["entitlements"]["sso"] == {"hasAccess": True}
    assert json.loads(access["entitlements"]["plan_cfg"]["config"]) == {"seats": 5}
    assert b.ok("GET", f"/api/v1/customers/{acme['id']}/access") == access
    b.ok("POST", "/api/v1/customers", {"key": "bare", "name": "Bare"})
    assert b.ok("GET", "/api/v1/customers/bare/access") == {"entitlements": {}}
    _refused(b, "/api/v1/customers/nobody/access", "Not Found", status=404)


def test_v2_events_filters_and_cursor_pagination(billow: Billow) -> None:
    b = billow
    b.clock.set("2026-01-10T12:00:00Z")
    acme = b.ok("POST", "/api/v1/customers", {"key": "acme", "name": "Acme",
                                              "usageAttribution": {"subjectKeys": ["customer_1"]}})
    _events(b, {"id": "e1", "subject": "customer_1", "time": "2026-01-10T01:00:00Z"},
            {"id": "e2", "subject": "customer_2", "time": "2026-01-10T02:00:00Z", "source": "web"},
            {"id": "e3", "subject": "customer_1", "time": "2026-01-10T03:00:00Z", "type": "upload"},
            {"id": "x4", "subject": "customer_2", "time": "2026-01-10T03:00:00Z", "source": "web"},
            {"id": "e5", "subject": "customer_1", "time": "2026-01-10T05:00:00Z"})
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        page = b.ok("GET", "/api/v2/events", query={"limit": "2", **({"cursor": cursor} if cursor else {})})
        assert len(page["items"]) <= 2
        if not page["items"]:
            break
        seen += [it["event"]["id"] for it in page["items"]]
        cursor = page["nextCursor"]
    assert seen == ["e5", "e3", "x4", "e2", "e1"]  # newest first; at the same time by source, then id
    first = b.ok("GET", "/api/v2/events")["items"]
    assert [it["event"]["id"] for it in first] == seen
    assert first[0]["customerId"] == acme["id"] and "customerId" not in first[1]["event"]
    assert {"event", "ingestedAt", "storedAt"} <= set(first[0])

    def ids(flt: dict[str, Any]) -> list[str]:
        return [it["event"]["id"] for it in b.ok("GET", "/api/v2/events", query={"filter": json.dumps(flt)})["items"]]

    assert ids({"subject": {"$eq": "customer_2"}}) == ["x4", "e2"]
    assert ids({"subject": {"$ne": "customer_2"}}) == ["e5", "e3", "e1"]
    assert ids({"type": {"$in": ["upload"]}}) == ["e3"]
    assert ids({"type": {"$nin": ["upload"]}, "source": {"$eq": "test"}}) == ["e5", "e1"]
    assert ids({"id": {"$like": "e%"}, "source": {"$eq": "web"}}) == ["e2"]
    assert ids({"id": {"$nlike": "e%"}}) == ["x4"]
    assert ids({"source": {"$ilike": "WE_"}}) == ["x4", "e2"]
    assert ids({"source": {"$or": [{"$eq": "web"}, {"$eq": "nope"}]}}) == ["x4", "e2"]
    assert ids({"id": {"$and": [{"$gte": "e2"}, {"$lt": "e5"}]}}) == ["e3", "e2"]
    assert ids({"customerId": {"$in": [acme["id"]]}}) == ["e5", "e3", "e1"]
    assert ids({"customerId": {"$in": [acme["id"]]}, "subject": {"$eq": "customer_2"}}) == []
    assert ids({"subject": {"$in": ["customer_2", "nobody"], "$ne": "x"}, "type": {"$eq": "prompt"}}) == ["x4", "e2"]
    assert ids({"time": {"$gte": "2026-01-10T02:00:00Z", "$lt": "2026-01-10T05:00:00Z"}}) == ["e3", "x4", "e2"]
    assert ids({"time": {"$or": [{"$lte": "2026-01-10T01:00:00Z"}, {"$gt": "2026-01-10T04:00:00Z"}]}}) == ["e5", "e1"]
    assert ids({"ingestedAt": {"$gte": "2026-01-10T12:00:00Z"}}) == seen
    assert ids({"ingestedAt": {"$lt": "2026-01-10T12:00:00Z"}}) == []
    page = b.ok("GET", "/api/v2/events", query={"limit": "1", "filter": json.dumps({"subject": {"$eq": "customer_1"}})})
    nxt = b.ok("GET", "/api/v2/events", query={"limit": "5", "cursor": page["nextCursor"],
                                               "filter": json.dumps({"subject": {"$eq": "customer_1"}})})
    assert [it["event"]["id"] for it in page["items"] + nxt["items"]] == ["e5", "e3", "e1"]
    assert b.ok("GET", "/api/v2/events", query={"clientId": "tab-1"})["items"] == first

    for query, name in [({"limit": "0"}, "limit"), ({"limit": "101"}, "limit"), ({"cursor": "garbage"}, "cursor"),
                        ({"filter": "{not json"}, "filter"), ({"filter": "[]"}, "filter"),
                        ({"filter": json.dumps({"color": {"$eq": "red"}})}, "filter.color"),
                        ({"filter": json.dumps({"subject": {"$regex": "x"}})}, "filter.subject.$regex"),
                        ({"filter": json.dumps({"subject": {"$eq": 5}})}, "filter.subject.$eq"),
                        ({"filter": json.dumps({"subject": {"$in": "customer_1"}})}, "filter.subject.$in"),
                        ({"filter": json.dumps({"time": {"$gte": "noon"}})}, "filter.time.$gte"),
                        ({"filter": json.dumps({"time": {"$eq": "2026-01-10T01:00:00Z"}})}, "filter.time.$eq"),
                        ({"filter": json.dumps({"customerId": {"$in": ["nope"]}})}, "filter.customerId.$in"),
                        ({"filter": json.dumps({"customerId": {"$eq": acme["id"]}})}, "filter.customerId.$eq"),
                        ({"clientId": "x" * 37}, "clientId")]:
        _refused(b, "/api/v2/events", name, query)


def test_v2_events_pages_follow_each_other_exactly(billow: Billow) -> None:
    """Property: whatever the filter and limit, following nextCursor returns the unpaginated list exactly, each event
    once, also through runs of events at the same instant; a malformed filter is a 4xx, never a 5xx."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    b = billow
    b.clock.set("2026-01-10T12:00:00Z")
    times = ["2026-01-10T01:00:00Z", "2026-01-10T02:00:00Z", "2026-01-10T02:00:00.500Z"]
    _events(b, *[{"id": f"p{i:02d}", "source": ("a", "b", "c")[i % 3], "subject": f"customer_{1 + i % 2}",
                  "time": times[i % len(times) if i < 12 else 2], "type": ("prompt", "upload")[i % 2]}
                 for i in range(20)])
    filters = st.sampled_from([{}, {"subject": {"$eq": "customer_1"}}, {"source": {"$in": ["a", "c"]}},
                               {"id": {"$like": "p1%"}}, {"type": {"$ne": "upload"}, "source": {"$nin": ["b"]}},
                               {"time": {"$gte": "2026-01-10T02:00:00Z"}}, {"time": {"$lt": "2026-01-10T02:00:00.500Z"}},
                               {"ingestedAt": {"$gte": "2026-01-10T00:00:00Z"}}])
    junk = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                            st.sampled_from(["subject", "time", "$eq", "$in", "$like", "$or", "$gt", "customerId", "x"]),
                            inner, max_size=3), max_leaves=8)

    @given(flt=filters, limit=st.integers(1, 6), bad=junk)
    @settings(max_examples=60, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    def pages_match(flt: dict[str, Any], limit: int, bad: Any) -> None:
        whole = [it["event"]["id"] for it in b.ok("GET", "/api/v2/events", query={"filter": json.dumps(flt)})["items"]]
        seen: list[str] = []
        cursor = None
        for _ in range(30):
            query = {"filter": json.dumps(flt), "limit": str(limit), **({"cursor": cursor} if cursor else {})}
            page = b.ok("GET", "/api/v2/events", query=query)
            if not page["items"]:
                break
            seen += [it["event"]["id"] for it in page["items"]]
            cursor = page["nextCursor"]
        assert seen == whole
        status, out = b.call("GET", "/api/v2/events", query={"filter": json.dumps(bad)})
        assert status < 500, (bad, out)

    pages_match()


def test_v2_events_scan_reads_the_store_in_small_pages_through_ties(billow: Billow) -> None:
    """The store is read page by page (here two events a page) by time: a run of events at one instant longer than a
    page is read whole (the page grows), nothing is repeated or skipped, and a cursor resumes after its event."""
    from billow.services.events_v2 import _key, scan

    b = billow
    b.clock.set("2026-01-10T12:00:00Z")
    _events(b, *[{"id": f"s{i:02d}", "source": "abc"[i % 3], "subject": "customer_1",
                  "time": "2026-01-10T02:00:00Z" if i < 7 else f"2026-01-10T0{3 + i % 4}:00:00Z"} for i in range(15)])
    ns = b.c.settings.namespace
    whole = [s.event.id for s in b.c.usage.list_events(ns, subjects=None, start=None, end=None, event_id=None, limit=100)]
    assert [s.event.id for s in scan(b.c.usage, ns, batch=2)] == whole and len(whole) == 15
    for cut in (0, 3, 8, 14):
        after = next(s for s in b.c.usage.list_events(ns, subjects=None, start=None, end=None, event_id=None, limit=100)
                     if s.event.id == whole[cut])
        assert [s.event.id for s in scan(b.c.usage, ns, batch=2, after=_key(after))] == whole[cut + 1:]


def test_v1_events_filter_by_ingestion_time(billow: Billow) -> None:
    """GET /api/v1/events honours OpenMeter's ingestedAtFrom / ingestedAtTo (both inclusive), with the other filters
    and the limit."""
    from urllib.parse import urlencode

    b = billow
    for hour, ids in ((1, ("i1", "i2")), (2, ("i3",)), (3, ("i4", "i5"))):
        b.clock.set(f"2026-01-10T0{hour}:00:00Z")
        _events(b, *[{"id": i, "subject": "customer_1" if i != "i5" else "customer_2",
                      "time": "2026-01-09T12:00:00Z"} for i in ids])

    def ids(**query: str) -> list[str]:
        out = api(apigw_event("GET", f"/api/v1/events?{urlencode(query)}", {}, b"", "127.0.0.1"), None)
        assert out["statusCode"] == 200, out
        return sorted(it["event"]["id"] for it in json.loads(out["body"]))

    assert ids() == ["i1", "i2", "i3", "i4", "i5"]
    assert ids(ingestedAtFrom="2026-01-10T02:00:00Z") == ["i3", "i4", "i5"]
    assert ids(ingestedAtTo="2026-01-10T02:00:00Z") == ["i1", "i2", "i3"]
    assert ids(ingestedAtFrom="2026-01-10T02:00:00Z", ingestedAtTo="2026-01-10T02:00:00Z") == ["i3"]
    assert ids(ingestedAtFrom="2026-01-10T02:00:00Z", subject="customer_1") == ["i3", "i4"]
    assert len(ids(ingestedAtFrom="2026-01-10T01:00:00Z", limit="2")) == 2
    assert ids(ingestedAtFrom="2026-01-10T03:00:01Z") == []
