"""billow_sdk against a live `billow serve`: ingest, meter queries, entitlement values, portal tokens, errors,
retries and the batcher."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from billow_sdk import BillowError, Client

from conftest import API_KEY, FEATURE, METER

SDK = Path(__file__).resolve().parents[1]


def total(client: Client, subject: str) -> Any:
    rows = client.query_meter(METER, subject=[subject])["data"]
    return rows[0]["value"] if rows else 0


def test_ingest_and_query_are_exact_in_windows_of_a_time_zone(client: Client, subject: str) -> None:
    at = datetime(2026, 11, 28, 23, 30, tzinfo=UTC)  # 00:30 on the 29th in Berlin
    client.ingest(client.event("prompt", subject, {"tokens": Decimal("0.1"), "model": "gpt"}, time=at))
    client.ingest_batch([client.event("prompt", subject, {"tokens": "0.2", "model": "gpt"}, time=at),
                         client.event("prompt", subject, {"tokens": 7, "model": "o3"}, time=at - timedelta(hours=1))])
    result = client.query_meter(METER, from_=at - timedelta(days=2), to=at + timedelta(days=1), window_size="DAY",
                                window_time_zone="Europe/Berlin", subject=[subject], group_by=["model"])
    assert [(r["windowStart"], r["groupBy"]["model"], r["value"]) for r in result["data"]] == [
        ("2026-11-27T23:00:00Z", "o3", 7), ("2026-11-28T23:00:00Z", "gpt", Decimal("0.3"))]
    gpt = client.query_meter(METER, subject=[subject], filter_group_by={"model": "gpt"})
    assert [r["value"] for r in gpt["data"]] == [Decimal("0.3")]  # 0.1 + 0.2, not 0.30000000000000004


def test_entitlement_value(client: Client, subject: str) -> None:
    client.ingest_batch([client.event("prompt", subject, {"tokens": t, "model": "gpt"}) for t in ("0.1", "0.2")])
    value = client.entitlement_value(subject, FEATURE)
    assert value == {"hasAccess": True, "balance": Decimal("99.7"), "usage": Decimal("0.3"), "overage": 0,
                     "totalAvailableGrantAmount": 100}


def test_ingestion_receipt_reports_a_resent_batch_as_duplicates(client: Client, subject: str) -> None:
    batch = [client.event("prompt", subject, {"tokens": t, "model": "gpt"}) for t in ("1", "2")]
    first = client.ingest_batch_with_receipt(batch)
    assert (first["events"], first["accepted"], first["duplicates"]) == (2, 2, [])
    again = client.ingest_batch_with_receipt(batch)
    assert again["accepted"] == 0 and [d["id"] for d in again["duplicates"]] == [e["id"] for e in batch]
    assert again["digest"] == first["digest"] and client.receipt(first["id"]) == first
    assert total(client, subject) == 3  # stored once


def test_errors_carry_the_problem(client: Client, subject: str) -> None:
    with pytest.raises(BillowError) as err:
        client.query_meter("no_such_meter")
    assert (err.value.status, err.value.title) == (404, "Not Found") and "no_such_meter" in err.value.detail
    good, bad = (client.event("prompt", subject, {"tokens": v, "model": "gpt"}) for v in ("1", "x"))
    with pytest.raises(BillowError) as err:
        client.ingest_batch([good, bad])
    assert err.value.status == 400 and err.value.problem["validationErrors"][0]["index"] == 1
    assert total(client, subject) == 0  # all or nothing


@pytest.mark.skipif(not API_KEY, reason="the server runs without auth: keys")
def test_bearer_api_key(client: Client, url: str) -> None:
    with pytest.raises(BillowError) as err:
        Client(url, api_key="bk_not_a_key").query_meter(METER)
    assert err.value.status == 401 and err.value.title == "Unauthorized"


@pytest.mark.parametrize("fault", ["503", "drop"])
def test_retries_resend_the_same_ids(client: Client, subject: str, proxy_factory: Any, fault: str) -> None:
    proxy = proxy_factory(fault, faults=2)  # Billow stores the batch, but the client never hears so twice
    flaky = Client(proxy.url, api_key=API_KEY, backoff=0.01)
    flaky.ingest_batch([flaky.event("prompt", subject, {"tokens": "1.5", "model": "gpt"}) for _ in range(2)])
    assert len(proxy.bodies) == 3 and len(set(proxy.bodies)) == 1
    assert total(client, subject) == 3  # counted once


def test_retries_give_up_with_the_last_problem(subject: str, proxy_factory: Any) -> None:
    proxy = proxy_factory("503", faults=10)
    flaky = Client(proxy.url, api_key=API_KEY, retries=2, backoff=0.01)
    with pytest.raises(BillowError) as err:
        flaky.ingest(flaky.event("prompt", subject, {"tokens": "1", "model": "gpt"}))
    assert err.value.status == 503 and len(proxy.bodies) == 3


def test_batcher_flushes_on_size_interval_and_close(client: Client, subject: str, proxy_factory: Any) -> None:
    proxy = proxy_factory()
    via = Client(proxy.url, api_key=API_KEY)
    with via.batcher(max_events=3, interval=60) as batch:
        for _ in range(7):
            batch.add("prompt", subject, {"tokens": "0.5", "model": "gpt"})
        assert len(proxy.bodies) == 2  # two full batches; one event waits
    assert len(proxy.bodies) == 3 and total(client, subject) == Decimal("3.5")

    timed = via.batcher(max_events=100, interval=0.1)
    timed.add("prompt", subject, {"tokens": "0.5", "model": "gpt"})
    deadline = time.time() + 10
    while len(proxy.bodies) < 4 and time.time() < deadline:
        time.sleep(0.02)
    assert len(proxy.bodies) == 4 and total(client, subject) == 4
    timed.close()


def test_batcher_reports_a_refused_batch(client: Client, subject: str) -> None:
    failures: list[tuple[BillowError, list[dict[str, Any]]]] = []
    with client.batcher(on_error=lambda err, events: failures.append((err, events))) as batch:
        bad = batch.add("prompt", subject, {"tokens": "x"})
    assert [(e.status, [ev["id"] for ev in evs]) for e, evs in failures] == [(400, [bad["id"]])]
    plain = client.batcher()
    plain.add("prompt", subject, {"tokens": "x"})
    with pytest.raises(BillowError) as err:
        plain.close()
    assert err.value.status == 400 and len(err.value.events) == 1


def test_portal_token(client: Client, subject: str) -> None:
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    try:
        token = client.create_portal_token(subject, allowed_meter_slugs=[METER], expires_at=expires)
    except BillowError as err:
        if err.status == 404:
            pytest.skip("the server has no POST /api/v1/portal/tokens yet")
        raise
    assert set(token) >= {"id", "subject", "token", "expiresAt", "allowedMeterSlugs", "createdAt", "expired"}
    assert (token["subject"], token["allowedMeterSlugs"], token["expired"]) == (subject, [METER], False)
    assert token["token"] and datetime.fromisoformat(token["expiresAt"]) == expires


def test_quickstart_is_the_readme_and_runs(url: str) -> None:
    example = (SDK / "examples" / "quickstart.py").read_text()
    readme = (SDK / "README.md").read_text()
    assert f"```python\n{example}```" in readme
    out = subprocess.run([sys.executable, str(SDK / "examples" / "quickstart.py")], capture_output=True, text=True,
                         timeout=60, check=True, env={**os.environ, "PYTHONPATH": str(SDK)}).stdout
    assert out == "gpt 0.3\n"  # fixed ids: a second run against the same server prints the same
