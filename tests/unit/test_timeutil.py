from __future__ import annotations

from datetime import timedelta

import pytest

from billow.errors import ValidationFailed
from billow.timeutil import window_end, window_start, zone
from tests.conftest import t


@pytest.mark.parametrize("instant,size,tz,start,hours", [
    ("2026-03-29T12:00:00Z", "DAY", "Europe/Berlin", "2026-03-28T23:00:00Z", 23),  # spring forward
    ("2026-10-25T12:00:00Z", "DAY", "Europe/Berlin", "2026-10-24T22:00:00Z", 25),  # fall back
    ("2026-10-25T00:30:00Z", "HOUR", "Europe/Berlin", "2026-10-25T00:00:00Z", 1),  # first 02:00 local
    ("2026-10-25T01:30:00Z", "HOUR", "Europe/Berlin", "2026-10-25T01:00:00Z", 1),  # second 02:00 local
    ("2026-10-27T01:30:00Z", "HOUR", "Asia/Kolkata", "2026-10-27T01:30:00Z", 1),
    ("2026-10-27T01:30:00Z", "MONTH", "Asia/Kolkata", "2026-09-30T18:30:00Z", 31 * 24),
    ("2026-02-10T00:00:00Z", "MONTH", "UTC", "2026-02-01T00:00:00Z", 28 * 24),
])
def test_windows_follow_the_zone_calendar(instant: str, size: str, tz: str, start: str, hours: int) -> None:
    z = zone(tz)
    ws = window_start(t(instant), size, z)
    assert ws == t(start)
    assert window_end(ws, size, z) - ws == timedelta(hours=hours)


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../etc/passwd", "UTC\x00"])
def test_unknown_zone_is_a_400(name: str) -> None:
    with pytest.raises(ValidationFailed):
        zone(name)


def test_the_zone_list_is_read_once_not_per_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every windowed query and history in a time zone checks its name against the tz database's list, which is a
    walk of the tzdata files (tens of ms). The list is read once per process: a change that moved the cache off it
    (onto the function above it) made every lookup walk the files again."""
    from billow import timeutil

    walks = []
    monkeypatch.setattr(timeutil, "available_timezones", lambda: walks.append(1) or {"Europe/Berlin"})
    timeutil.zone_names.cache_clear()
    try:
        for _ in range(3):
            zone("Europe/Berlin")
        assert len(walks) == 1
    finally:
        timeutil.zone_names.cache_clear()
