"""Ingestion receipts (issue 21 item 3): POST /api/v1/events keeps OpenMeter's 204; with `Prefer:
return=representation` it answers 200 with a receipt (accepted, duplicates by key, ingest time, digest), kept for
GET /api/v1/events/receipts/{id}. A resent batch reports every event as a duplicate and stores nothing."""

from __future__ import annotations

import json
from typing import Any

from billow.domain.lineage import key_hash
from billow.local.server import apigw_event
from functions.api.handler import lambda_handler as api
from functions.ingest.handler import lambda_handler as ingest
from tests.billing.conftest import Billow

PREFER = {"content-type": "application/cloudevents-batch+json", "prefer": "return=representation"}


def ev(i: str, n: Any = 1) -> dict[str, Any]:
    return {"specversion": "1.0", "id": i, "source": "rcpt", "type": "prompt", "subject": "s1",
            "time": "2026-04-01T10:00:00Z", "data": {"tokens": n, "model": "m"}}


def post(events: list[dict[str, Any]], headers: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
    out = ingest(apigw_event("POST", "/api/v1/events", headers, json.dumps(events).encode(), "127.0.0.1"), None)
    return out["statusCode"], json.loads(out["body"]) if out.get("body") else None, out.get("headers") or {}


def get(path: str) -> tuple[int, Any]:
    out = api(apigw_event("GET", path, {}, b"", "127.0.0.1"), None)
    return out["statusCode"], json.loads(out["body"]) if out.get("body") else None


def stored(b: Billow) -> tuple[int, str]:
    status, rows = get("/api/v1/events?limit=100")
    assert status == 200
    q = b.ok("GET", "/api/v1/meters/tokens/query", query={"from": "2026-04-01T00:00:00Z", "to": "2026-04-02T00:00:00Z"})
    return len(rows), str(q["data"][0]["value"]) if q["data"] else "0"


def test_receipts_report_accepted_and_duplicates_and_a_resend_stores_nothing(billow: Billow) -> None:
    b = billow
    b.clock.set("2026-04-01T12:00:00Z")
    batch = [ev("a", 1), ev("b", 2), ev("c", "0.5")]
    status, r, headers = post(batch, PREFER)
    assert status == 200, r
    assert headers.get("Preference-Applied") == "return=representation"
    assert (r["events"], r["accepted"], r["duplicates"], r["ingestedAt"]) == (3, 3, [], "2026-04-01T12:00:00Z")
    assert r["digest"] == {"events": 3, "hash": "sha256:" + key_hash([("rcpt", "a"), ("rcpt", "b"), ("rcpt", "c")])}
    assert stored(b) == (3, "3.5")
    assert get(f"/api/v1/events/receipts/{r['id']}") == (200, r)
    # The same batch again: every event a duplicate, nothing stored, the same digest.
    b.clock.set("2026-04-01T12:05:00Z")
    status, again, _ = post(batch, PREFER)
    assert status == 200
    assert (again["accepted"], again["duplicates"]) == (0, [{"source": "rcpt", "id": i} for i in "abc"])
    assert again["digest"] == r["digest"] and again["id"] != r["id"]
    assert stored(b) == (3, "3.5")
    # A duplicate inside one batch, beside a new event and an old one.
    status, mixed, _ = post([ev("d", 4), ev("d", 4), ev("a", 1)], PREFER)
    assert (mixed["accepted"], mixed["duplicates"]) == (1, [{"source": "rcpt", "id": "d"}, {"source": "rcpt", "id": "a"}])
    assert stored(b) == (4, "7.5")
    # Without the preference: OpenMeter's 204, no body.
    status, body, _ = post([ev("e", 1)], {"content-type": "application/cloudevents-batch+json"})
    assert (status, body) == (204, None)
    # A bad batch is refused as ever (no receipt); an unknown receipt is a 404.
    status, body, _ = post([ev("f", "x")], PREFER)
    assert status == 400 and body["status"] == 400
    assert get("/api/v1/events/receipts/01M00000000000000000000000")[0] == 404
