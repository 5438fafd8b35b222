"""windowedHistory counts every window of the range (issue 15, item 5): the one that starts at
`measureUsageFrom` too, and windows before a saved reset snapshot when the range spans resets (OpenMeter: the
queried history can span multiple reset events). Through the handlers, on the twin and on chdb."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.entitlements.conftest import Billow

S = "/api/v1/subjects/customer_1/entitlements"


def _setup(b: Billow, interval: str, **extra: Any) -> dict[str, Any]:
    b.ok("POST", "/api/v1/features", {"key": "ai_tokens", "name": "ai tokens", "meterSlug": "tokens"})
    return dict(b.ok("POST", S, {"type": "metered", "featureKey": "ai_tokens", "measureUsageFrom": "2026-01-01T00:00:00Z",
                                 "usagePeriod": {"interval": interval, "anchor": "2026-01-01T00:00:00Z"}, **extra}))


def _windows(b: Billow, ent: dict[str, Any], **query: str) -> list[tuple[str, str, Any, Any]]:
    hist = b.ok("GET", f"{S}/{ent['id']}/history", query=query)
    return [(w["period"]["from"], w["period"]["to"], w["usage"], w["balanceAtStart"]) for w in hist["windowedHistory"]]


def test_the_window_that_starts_at_measure_usage_from_is_counted(billow: Billow) -> None:
    b = billow
    ent = _setup(b, "MONTH", issueAfterReset=10)
    b.clock.set("2026-01-01T12:00:00Z")
    b.usage(1, "2026-01-01T00:30:00Z")
    b.usage(1, "2026-01-01T10:30:00Z")
    assert b.value("customer_1", "ai_tokens")["usage"] == 2
    day = _windows(b, ent, windowSize="DAY")
    assert day == [("2026-01-01T00:00:00Z", "2026-01-01T12:00:00Z", 2, 10)]
    hour = _windows(b, ent, windowSize="HOUR")
    assert [w[0][11:16] for w in hour] == [f"{h:02}:00" for h in range(12)]
    assert sum(w[2] for w in hour) == 2
    assert hour[0] == ("2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z", 1, 10)
    assert hour[1][3] == 9 and hour[10][2] == 1 and hour[11][3] == 8
    # An explicit from at measureUsageFrom is the same range.
    assert _windows(b, ent, windowSize="DAY", **{"from": "2026-01-01T00:00:00Z"}) == day


def test_history_spans_a_reset_with_a_saved_snapshot(billow: Billow) -> None:
    b = billow
    ent = _setup(b, "MONTH", issueAfterReset=100)
    b.clock.set("2026-01-31T07:00:00Z")
    b.usage(5, "2026-01-31T06:30:00Z")
    b.clock.set("2026-02-02T07:00:00Z")
    b.usage(3, "2026-02-02T06:30:00Z")
    b.clock.set("2026-02-10T00:00:00Z")
    assert b.value("customer_1", "ai_tokens")["usage"] == 3
    assert b.c.entitlements.latest_snapshot(b.c.namespace, ent["id"], b.clock.now()) is not None  # Feb 1 reset saved
    got = _windows(b, ent, windowSize="DAY", **{"from": "2026-01-30T00:00:00Z", "to": "2026-02-03T00:00:00Z"})
    assert got == [
        ("2026-01-30T00:00:00Z", "2026-01-31T00:00:00Z", 0, 100),
        ("2026-01-31T00:00:00Z", "2026-02-01T00:00:00Z", 5, 100),
        ("2026-02-01T00:00:00Z", "2026-02-02T00:00:00Z", 0, 100),  # refilled by the reset
        ("2026-02-02T00:00:00Z", "2026-02-03T00:00:00Z", 3, 100),
    ]


@pytest.mark.parametrize("aggregation", ["LATEST", "UNIQUE_COUNT"])
def test_an_hourly_history_through_a_monthly_period_reads_its_windows_once(billow: Billow, aggregation: str) -> None:
    """A LATEST or UNIQUE_COUNT meter's hourly history through a monthly period: each window's usage is what it adds
    to the period's value so far (a gauge: its last reading minus the one before; distinct users: those not seen
    before in the period), worked out from one windowed read. Each window inside the period was a query of its own:
    600 windows took ~6.5 s on chdb (1,870: 21 s)."""
    b = billow
    b.ok("POST", "/api/v1/meters", {"slug": "m", "eventType": "ev", "aggregation": aggregation, "valueProperty": "$.v"})
    b.ok("POST", "/api/v1/features", {"key": "f", "name": "f", "meterSlug": "m"})
    ent = b.ok("POST", S, {"type": "metered", "featureKey": "f", "measureUsageFrom": "2026-01-01T00:00:00Z",
                           "usagePeriod": {"interval": "MONTH", "anchor": "2026-01-01T00:00:00Z"}, "issueAfterReset": 1000})
    # every hour but each fifth one has a reading: a gauge going up and down, a new user every third hour
    readings = {h: (h % 7 + 1 if aggregation == "LATEST" else h // 3) for h in range(600) if h % 5}
    b.send_events(*[("ev", "customer_1", f"2026-01-{1 + h // 24:02d}T{h % 24:02d}:30:00Z", {"v": v})
                    for h, v in readings.items()])
    b.clock.set("2026-01-26T00:00:00Z")
    started = time.monotonic()
    hour = _windows(b, ent, windowSize="HOUR")
    assert time.monotonic() - started < 3
    assert len(hour) == 600
    last, seen = 0, set()
    for h, w in enumerate(hour):
        if aggregation == "LATEST":
            now = readings.get(h, last)
            assert w[2] == now - last, (h, w)
            last = now
        else:
            new = {readings[h]} - seen if h in readings else set()
            assert w[2] == len(new), (h, w)
            seen |= new
    assert b.value("customer_1", "f")["usage"] == (readings[599] if aggregation == "LATEST" else len(seen))


def test_a_history_of_too_many_windows_is_refused_naming_the_window_size(billow: Billow) -> None:
    """Up to 2,000 windows a history (days in a time zone are the usage store's); more is a 400 naming windowSize."""
    b = billow
    ent = _setup(b, "MONTH", issueAfterReset=10)
    b.clock.set("2026-03-02T00:00:00Z")
    b.usage(1, "2026-03-01T12:00:00Z")
    b.clock.set("2031-06-01T00:00:00Z")
    days = _windows(b, ent, windowSize="DAY", windowTimeZone="America/Vancouver")
    assert len(days) == 1978 and sum(w[2] for w in days) == 1
    assert days[0][:2] == ("2026-01-01T00:00:00Z", "2026-01-01T08:00:00Z") and days[-1][1] == "2031-06-01T00:00:00Z"
    assert all(e == s for (_, e, _, _), (s, _, _, _) in zip(days, days[1:], strict=False))
    b.clock.set("2031-12-01T00:00:00Z")  # 2,160 days since measureUsageFrom
    for size, tz in (("HOUR", "UTC"), ("MINUTE", "Europe/Berlin"), ("DAY", "Asia/Tokyo"), ("DAY", "America/Vancouver")):
        status, out = b.call("GET", f"{S}/{ent['id']}/history", query={"windowSize": size, "windowTimeZone": tz})
        assert status == 400 and [e["field"] for e in out["extensions"]["validationErrors"]] == ["windowSize"], (size, out)
