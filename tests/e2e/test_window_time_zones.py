"""Meter-query windows in a time zone are drawn by the engine (chdb's toStartOfDay / toStartOfMonth with its own
time-zone data); their ends were computed in Python, whose data can be another version. chdb has America/Vancouver
on UTC-7 from November 2026, the system zoneinfo Python read first on UTC-8: each December "day" started at 07:00Z
and ended at 08:00Z the next day, an hour into the next window (found by the large-inputs probe). Now the engine
gives the ends too: windows tile the time, each ending where the next begins, through the change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import event
from tests.e2e.conftest import Server

BATCH = "application/cloudevents-batch+json"


@pytest.mark.parametrize("tz", ["America/Vancouver", "Europe/Berlin", "Australia/Lord_Howe"])
def test_calendar_windows_in_a_time_zone_tile_the_time(server: Server, tz: str) -> None:
    slug = "tzw_" + tz.split("/")[1].lower()
    assert server.request("POST", "/api/v1/meters", {"slug": slug, "eventType": slug, "aggregation": "SUM",
                                                     "valueProperty": "$.v"})[0] == 201
    start = datetime(2026, 9, 20, 12, tzinfo=UTC)
    events = [event(f"{slug}-{h}", type=slug, time=(start + timedelta(hours=h)).isoformat(), v="1")
              for h in range(0, 24 * 100, 6)]  # every 6 hours for 100 days, through Nov and Dec 2026
    assert server.request("POST", "/api/v1/events", events, BATCH)[0] == 204
    for size in ("DAY", "MONTH"):
        status, _, out = server.request("GET", f"/api/v1/meters/{slug}/query?windowSize={size}&windowTimeZone={tz}")
        assert status == 200, out
        rows = out["data"]
        assert sum(r["value"] for r in rows) == len(events), (size, rows[:3])
        spans = [(datetime.fromisoformat(r["windowStart"]), datetime.fromisoformat(r["windowEnd"])) for r in rows]
        for (s0, e0), (s1, _) in zip(spans, spans[1:], strict=False):
            assert s0 < e0 == s1, (size, tz, s0, e0, s1)  # every day (month) has events: the next one begins at the end
        lengths = {e - s for s, e in spans}
        if size == "DAY":
            assert lengths <= {timedelta(hours=h) for h in (23, 23.5, 24, 24.5, 25)}, (tz, lengths)
