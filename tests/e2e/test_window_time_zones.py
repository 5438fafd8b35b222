"""Meter-query windows in a time zone are drawn by the engine (chdb's toStartOfDay / toStartOfMonth with its own
time-zone data); their ends were computed in Python, whose data can be another version. chdb has America/Vancouver
on UTC-7 from November 2026, the system zoneinfo Python read first on UTC-8: each December "day" started at 07:00Z
and ended at 08:00Z the next day, an hour into the next window (found by the large-inputs probe). Now the engine
gives the ends too: windows tile the time, each ending where the next begins, through the change."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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


def _metered_subject(server: Server, slug: str, *, measured_from: str) -> tuple[str, dict[str, Any]]:
    """A SUM meter `slug` (value $.v), its feature, a subject and a yearly metered entitlement of it: (subject, it)."""
    subject = slug + "_subject"
    assert server.request("POST", "/api/v1/meters", {"slug": slug, "eventType": slug, "aggregation": "SUM",
                                                     "valueProperty": "$.v"})[0] == 201
    assert server.request("POST", "/api/v1/features", {"key": slug, "name": slug, "meterSlug": slug})[0] == 201
    assert server.request("POST", "/api/v1/subjects", [{"key": subject}])[0] in (200, 201)
    status, _, ent = server.request("POST", f"/api/v1/subjects/{subject}/entitlements", {
        "type": "metered", "featureKey": slug, "measureUsageFrom": measured_from, "issueAfterReset": 10000,
        "usagePeriod": {"interval": "YEAR", "anchor": "2026-01-01T00:00:00Z"}})
    assert status == 201, ent
    return subject, ent


@pytest.mark.parametrize("tz", ["America/Vancouver", "Europe/Berlin"])
def test_entitlement_history_windows_are_the_meter_querys_windows(server: Server, tz: str) -> None:
    """An entitlement's windowed history in a time zone draws its days and months where the meter query does (the
    engine's calendar). They were drawn by Python's time-zone data: in Vancouver from November 2026 (UTC-8 there,
    UTC-7 in chdb's) each history "day" ran 08:00Z to 08:00Z while the meter query's ran 07:00Z to 07:00Z, and the
    usage of one day differed between the two answers. Each event counts in exactly one window either way."""
    slug = "tzh_" + tz.split("/")[1].lower()
    subject, ent = _metered_subject(server, slug, measured_from="2026-09-01T00:00:00Z")
    start = datetime(2026, 10, 10, 0, 30, tzinfo=UTC)
    events = [event(f"{slug}-{h}", type=slug, subject=subject, time=(start + timedelta(hours=h)).isoformat(), v="1")
              for h in range(24 * 57)]  # every hour at :30 through 5 December 2026
    assert server.request("POST", "/api/v1/events", events, BATCH)[0] == 204
    span = "from=2026-10-15T00:00:00Z&to=2026-12-05T00:00:00Z"  # November whole, and the first days of December
    for size in ("DAY", "MONTH"):
        status, _, out = server.request(
            "GET", f"/api/v1/subjects/{subject}/entitlements/{ent['id']}/history?windowSize={size}&windowTimeZone={tz}&{span}")
        assert status == 200, out
        hist = [(w["period"]["from"], w["period"]["to"], w["usage"]) for w in out["windowedHistory"]]
        for (_, e0, _), (s1, _, _) in zip(hist, hist[1:], strict=False):
            assert e0 == s1, (size, tz)  # the windows tile the range
        assert hist[0][0] == "2026-10-15T00:00:00Z" and hist[-1][1] == "2026-12-05T00:00:00Z"
        assert sum(w[2] for w in hist) == 24 * 51  # every event of the range (15 October to 4 December) once
        status, _, q = server.request("GET", f"/api/v1/meters/{slug}/query?windowSize={size}&windowTimeZone={tz}&{span}")
        assert status == 200, q
        query = {r["windowStart"]: (r["windowEnd"], r["value"]) for r in q["data"]}
        # every window the history starts at a window start (all but the first, cut at `from`) is the query's window
        inner = hist[1:-1]
        assert inner, (size, hist)
        for s, e, used in inner:
            assert query.get(s.replace(".000Z", "Z")) == (e, used), (size, tz, s, e, used, query.get(s))


@pytest.mark.parametrize("day", ["2026-04-04", "2026-10-03"])
def test_hourly_windows_tile_through_a_half_hour_dst_change(server: Server, day: str) -> None:
    """Lord Howe Island moves its clocks by half an hour (UTC+10:30 to +11 on 4 October 2026, back on 5 April). The
    engine's toStartOfHour keeps the day's first offset for the whole local day, so its last hour window of that day
    is half an hour long; its end was computed in Python as start + 1 hour, half an hour into the next window. Now
    the engine gives the ends of hours in a zone with a non-whole-hour offset: the windows tile the time. An
    entitlement's hourly history there (Python's hours, aligned to each hour's own offset) has the same windows."""
    slug = "tzh_lhi_" + day.replace("-", "")
    subject, ent = _metered_subject(server, slug, measured_from="2026-01-01T00:00:00Z")
    start = datetime.fromisoformat(day + "T00:00:00+00:00")
    events = [event(f"{slug}-{m}", type=slug, subject=subject, time=(start + timedelta(minutes=m)).isoformat(), v="1")
              for m in range(0, 3 * 24 * 60, 15)]  # every 15 minutes for three days around the change
    assert server.request("POST", "/api/v1/events", events, BATCH)[0] == 204
    end = (start + timedelta(days=3)).isoformat().replace("+00:00", "Z")
    status, _, out = server.request("GET", f"/api/v1/meters/{slug}/query?windowSize=HOUR&windowTimeZone=Australia/Lord_Howe"
                                           f"&from={day}T00:00:00Z&to={end}")
    assert status == 200, out
    rows = out["data"]
    assert sum(r["value"] for r in rows) == len(events)
    spans = [(datetime.fromisoformat(r["windowStart"]), datetime.fromisoformat(r["windowEnd"])) for r in rows]
    for (s0, e0), (s1, _) in zip(spans, spans[1:], strict=False):
        assert s0 < e0 == s1, (s0, e0, s1)
    for (s, e), r in zip(spans, rows, strict=True):
        assert r["value"] == (e - s) / timedelta(minutes=15) or s == spans[0][0] or e == spans[-1][1], (s, e, r)
    status, _, out = server.request("GET", f"/api/v1/subjects/{subject}/entitlements/{ent['id']}/history?windowSize=HOUR"
                                           f"&windowTimeZone=Australia/Lord_Howe&from={day}T00:00:00Z&to={end}")
    assert status == 200, out
    hist = [(datetime.fromisoformat(w["period"]["from"]), datetime.fromisoformat(w["period"]["to"]), w["usage"])
            for w in out["windowedHistory"]]
    assert sum(w[2] for w in hist) == len(events)
    assert hist[1:-1] == [(s, e, r["value"]) for (s, e), r in zip(spans, rows, strict=True)][1:-1]


def test_hourly_rollups_serve_a_zones_windows_by_the_engines_time_zone_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether hourly rollups can serve a zone's windows (every boundary on a UTC hour) is the engine's to say: it
    draws the windows. It was decided with Python's time-zone data, which can be another version than chdb's (the
    system's tzdata is upgraded apart from chdb's). Here the system's data has Asia/Kolkata on a whole-hour offset
    (a copy of Asia/Dubai's file, as a zone that changed to or from a half-hour offset would be in one version
    only); chdb has UTC+5:30, midnight at 18:30Z: two events at 18:15Z and 18:45Z on either side of it were summed
    from their one hour cell into one day."""
    tzdir = tmp_path / "zoneinfo"
    (tzdir / "Asia").mkdir(parents=True)
    shutil.copy("/usr/share/zoneinfo/Asia/Dubai", tzdir / "Asia" / "Kolkata")
    monkeypatch.setenv("PYTHONTZPATH", str(tzdir))
    srv = Server(tmp_path / "data").start()
    try:
        assert srv.request("POST", "/api/v1/meters", {"slug": "kol", "eventType": "kol", "aggregation": "SUM",
                                                      "valueProperty": "$.v"})[0] == 201
        events = [event(f"kol-{i}", type="kol", time=at, v="1") for i, at in enumerate(
            ["2026-11-26T12:00:00Z", "2026-11-28T18:15:00Z", "2026-11-28T18:45:00Z", "2026-11-30T12:00:00Z"])]
        assert srv.request("POST", "/api/v1/events", events, BATCH)[0] == 204
        status, _, out = srv.request("GET", "/api/v1/meters/kol/query?windowSize=DAY&windowTimeZone=Asia/Kolkata"
                                            "&from=2026-11-25T00:00:00Z&to=2026-12-02T00:00:00Z")
        assert status == 200, out
        got = [(r["windowStart"], r["windowEnd"], r["value"]) for r in out["data"]]
        assert got == [("2026-11-25T18:30:00Z", "2026-11-26T18:30:00Z", 1), ("2026-11-27T18:30:00Z", "2026-11-28T18:30:00Z", 1),
                       ("2026-11-28T18:30:00Z", "2026-11-29T18:30:00Z", 1), ("2026-11-29T18:30:00Z", "2026-11-30T18:30:00Z", 1)]
    finally:
        srv.stop()
