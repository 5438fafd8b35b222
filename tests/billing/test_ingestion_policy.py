"""Per-meter ingestion policies (issue 21 item 2): `ingestionPolicy` on a meter (Billow extension): lateAfter with
its boundary (exactly at it accepted, one millisecond past refused naming the window), invalidValues refuse (the
default: the batch is refused) or accept (stored with its validation error, counted nowhere for that meter), bad
policies a 400 naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from billow.local.server import apigw_event
from functions.api.handler import lambda_handler as api
from functions.ingest.handler import lambda_handler as ingest
from tests.billing.conftest import Billow


def meter(b: Billow, slug: str, event_type: str, policy: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"slug": slug, "eventType": event_type, "aggregation": "SUM", "valueProperty": "$.n"}
    if policy is not None:
        body["ingestionPolicy"] = policy
    return b.ok("POST", "/api/v1/meters", body)  # type: ignore[no-any-return]


def send(b: Billow, event_type: str, at: str, n: Any, id_: str) -> tuple[int, Any]:
    ev = {"specversion": "1.0", "id": id_, "source": "pol", "type": event_type, "subject": "s1", "time": at, "data": {"n": n}}
    return b.call("POST", "/api/v1/events", [ev], content_type="application/cloudevents-batch+json")


def total(b: Billow, slug: str) -> str:
    rows = b.ok("GET", f"/api/v1/meters/{slug}/query", query={"from": "2026-01-01T00:00:00Z", "to": "2026-12-31T00:00:00Z"})["data"]
    return str(rows[0]["value"]) if rows else "0"


def test_late_after_boundary_exactly_at_accepted_one_ms_past_refused(billow: Billow) -> None:
    b = billow
    m = meter(b, "calls", "call", {"lateAfter": "P1D"})
    assert m["ingestionPolicy"] == {"lateAfter": "P1D", "lateInvoiced": "correct", "invalidValues": "refuse"}
    assert b.ok("GET", "/api/v1/meters/calls")["ingestionPolicy"]["lateAfter"] == "P1D"
    # Window of 10:00:30 is [10:00, 10:01): open for this meter until 10:01 the next day, inclusive.
    b.clock.set("2026-04-02T10:01:00.001Z")
    status, body = send(b, "call", "2026-04-01T10:00:30Z", 2, "late")
    assert status == 400, body
    text = json.dumps(body)
    assert "time" in text and "2026-04-01T10:00:00Z" in text and "2026-04-01T10:01:00Z" in text and "P1D" in text
    assert total(b, "calls") == "0"
    b.clock.set("2026-04-02T10:01:00Z")
    assert send(b, "call", "2026-04-01T10:00:30Z", 2, "on-time")[0] == 204
    assert total(b, "calls") == "2"
    # Without the policy (another meter, another type) the same lateness is accepted, as today.
    meter(b, "plain", "plainev", None)
    b.clock.set("2026-06-01T00:00:00Z")
    assert send(b, "plainev", "2026-04-01T10:00:30Z", 1, "old")[0] == 204
    assert "ingestionPolicy" not in b.ok("GET", "/api/v1/meters/plain")  # defaults: documented, not repeated
    # The policy can be changed (PUT) and read back.
    updated = b.ok("PUT", "/api/v1/meters/calls", {"name": "calls", "ingestionPolicy": {"lateAfter": "PT12H"}})
    assert updated["ingestionPolicy"]["lateAfter"] == "PT12H"


def test_invalid_values_refuse_by_default_accept_stores_with_the_error(billow: Billow) -> None:
    b = billow
    b.clock.set("2026-04-02T00:00:00Z")
    meter(b, "strict", "strictev", None)
    meter(b, "lenient", "lenientev", {"invalidValues": "accept"})
    status, body = send(b, "strictev", "2026-04-01T10:00:00Z", "not a number", "s-bad")
    assert status == 400 and "data ($.n)" in json.dumps(body)
    assert send(b, "lenientev", "2026-04-01T10:00:00Z", "not a number", "l-bad")[0] == 204
    assert send(b, "lenientev", "2026-04-01T10:00:01Z", "5", "l-ok")[0] == 204
    assert total(b, "lenient") == "5"  # the invalid event counts nothing for the meter
    out = api(apigw_event("GET", "/api/v1/events?limit=100", {}, b"", "127.0.0.1"), None)
    listed = {e["event"]["id"]: e for e in json.loads(out["body"])}
    assert "s-bad" not in listed
    assert "lenient" in listed["l-bad"]["validationError"] and "validationError" not in listed["l-ok"]


@pytest.mark.parametrize(("policy", "field"), [
    ({"lateAfter": "P1M"}, "ingestionPolicy.lateAfter"), ({"lateAfter": "PT0S"}, "ingestionPolicy.lateAfter"),
    ({"lateAfter": 5}, "ingestionPolicy.lateAfter"), ({"lateInvoiced": "drop"}, "ingestionPolicy.lateInvoiced"),
    ({"invalidValues": "maybe"}, "ingestionPolicy.invalidValues"), ({"nope": 1}, "ingestionPolicy.nope"),
    ("P1D", "ingestionPolicy")])
def test_bad_policies_are_a_400_naming_the_field(billow: Billow, policy: Any, field: str) -> None:
    status, body = billow.call("POST", "/api/v1/meters", {"slug": "bad", "eventType": "x", "aggregation": "SUM",
                                                          "valueProperty": "$.n", "ingestionPolicy": policy})
    assert status == 400 and body["type"] and field in json.dumps(body), body


def test_late_invoiced_refuse_ignore_and_correct(billow: Billow) -> None:
    """An event in a period a usage line has invoiced (its lineage): `refuse` is a 400 naming the window, `ignore`
    stores it counting nothing for the meter (reported in the receipt), `correct` (default) bills a correction."""
    from tests.billing.test_ingest_receipts import PREFER
    from tests.support.billing import invoices, scheduled_run, subscribed

    b = billow
    subscribed(b)
    b.clock.set("2026-04-01T00:10:00Z")
    scheduled_run(b)
    b.usage(1500, "2026-04-05T10:00:00Z")
    b.clock.set("2026-05-01T00:10:00Z")
    scheduled_run(b)
    second = invoices(b)[1]
    line = next(ln for ln in second["lines"] if ln.get("featureKey") == "tokens")
    b.clock.set("2026-05-01T12:00:00Z")

    def late(id_: str, at: str = "2026-04-29T09:00:00Z", headers: dict[str, str] | None = None) -> tuple[int, Any]:
        ev = {"specversion": "1.0", "id": id_, "source": "test", "type": "prompt", "subject": "customer_1", "time": at,
              "data": {"tokens": 100, "model": "gpt"}}
        out = ingest(apigw_event("POST", "/api/v1/events", headers or {"content-type": "application/json"},
                                 json.dumps([ev]).encode(), "127.0.0.1"), None)
        return out["statusCode"], json.loads(out["body"]) if out.get("body") else None

    def verify() -> dict[str, Any]:
        return b.ok("POST", f"/api/v1/billing/invoices/{second['id']}/lines/{line['id']}/verify")  # type: ignore[no-any-return]

    b.ok("PUT", "/api/v1/meters/tokens", {"name": "tokens", "ingestionPolicy": {"lateInvoiced": "refuse"}})
    status, body = late("r1")
    assert status == 400, body
    text = json.dumps(body)
    assert "2026-04-01T00:00:00Z" in text and "2026-05-01T00:00:00Z" in text and second["number"] in text and '"time"' in text
    assert verify()["unchanged"] is True
    assert late("m1", at="2026-05-01T00:00:00Z")[0] == 204  # May is not invoiced: accepted
    b.ok("PUT", "/api/v1/meters/tokens", {"name": "tokens", "ingestionPolicy": {"lateInvoiced": "ignore"}})
    status, receipt = late("i1", headers=PREFER)
    assert status == 200 and receipt["accepted"] == 1
    assert [(x["id"], x["meter"]) for x in receipt["ignored"]] == [("i1", "tokens")]
    assert verify()["unchanged"] is True  # stored, counted nothing for the meter
    b.ok("PUT", "/api/v1/meters/tokens", {"name": "tokens", "ingestionPolicy": {"lateInvoiced": "correct"}})
    assert late("c1")[0] == 204
    v = verify()
    assert v["unchanged"] is False and [e["id"] for e in v["arrivedLater"]] == ["c1"]
