"""Ingestion receipts (issue 21 item 3): POST /api/v1/events keeps OpenMeter's 204; with `Prefer:
return=representation` it answers 200 with a receipt (accepted, duplicates by key, ingest time, digest), kept for
GET /api/v1/events/receipts/{id}. A resent batch reports every event as a duplicate and stores nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from billow.domain.lineage import key_hash
from billow.local.server import apigw_event
from functions.api.handler import lambda_handler as api
from functions.ingest.handler import lambda_handler as ingest
from tests.billing.conftest import Billow
from tests.support.decodes import count_full_decodes

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


def test_a_receipt_request_of_common_events_is_decoded_once_without_a_json_document(
        billow: Billow, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21's budget (a receipt adds < 10 % to ingest, bench.receipts): a receipt request whose events are all
    of the common shape takes the 204 path's fast decode (services.ingest.decode_common: no JSON document, no
    parse_event) and answers the receipts the full path answered: the same sequence of batches (new, resent, a
    duplicate inside the batch beside a stored one) sent once each way, under two sources, gives receipts that
    differ only in their ids and keys' source, and the same usage."""
    import functions.ingest.handler as handler

    b = billow
    b.clock.set("2026-04-01T12:00:00Z")
    calls = count_full_decodes(monkeypatch)

    def sequence(source: str) -> list[dict[str, Any]]:
        def e(i: str, n: Any) -> dict[str, Any]:
            return {**ev(i, n), "source": source}

        out = []
        for batch in ([e("a", 1), e("b", 2), e("c", "0.5")], [e("a", 1), e("b", 2), e("c", "0.5")],
                      [e("d", 4), e("d", 4), e("a", 1)]):
            status, r, headers = post(batch, PREFER)
            assert status == 200 and headers.get("Preference-Applied") == "return=representation", r
            assert get(f"/api/v1/events/receipts/{r['id']}") == (200, r)
            out.append(r)
        return out

    fast = sequence("fast")
    assert calls == {"loads": 0, "parse_event": 0}
    monkeypatch.setattr(handler, "decode_common", lambda *a, **kw: None)  # the full path, as receipts took before
    full = sequence("full")
    assert calls["loads"] == 3  # the full path made a JSON document of each request: the counter sees it

    def same(r: dict[str, Any], source: str) -> dict[str, Any]:
        keys = [("x", d["id"]) for d in r["duplicates"]]
        assert r["digest"]["hash"].startswith("sha256:") and all(d["source"] == source for d in r["duplicates"])
        return {**r, "id": None, "duplicates": keys, "digest": r["digest"]["events"]}

    assert [same(r, "fast") for r in fast] == [same(r, "full") for r in full]
    assert [(r["events"], r["accepted"], [d["id"] for d in r["duplicates"]]) for r in fast] == \
        [(3, 3, []), (3, 0, ["a", "b", "c"]), (3, 1, ["d", "a"])]
    for r, source in ((fast[0], "fast"), (full[0], "full")):
        assert r["digest"] == {"events": 3, "hash": "sha256:" + key_hash([(source, "a"), (source, "b"), (source, "c")])}
    assert fast[0]["digest"] == fast[1]["digest"] and full[0]["digest"] == full[1]["digest"]
    assert stored(b) == (8, "15")  # four events of each source: 1 + 2 + 0.5 + 4, twice
