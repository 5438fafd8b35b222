"""Recurring periods: boundaries from the anchor, in the zone's calendar, across DST and month ends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billow.domain.periods import RecurringPeriod, boundaries, period_containing
from billow.errors import ValidationFailed
from tests.conftest import t

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "America/Sao_Paulo"]
INTERVALS = ["DAY", "WEEK", "MONTH", "YEAR", "P1D", "P2W", "P1M", "P3M", "P1Y2M", "P10D", "P1M15D", "PT1H",
             "PT90M", "PT7M"]

instants = st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2039, 12, 31),
                        timezones=st.just(UTC))


@st.composite
def periods(draw: st.DrawFn) -> RecurringPeriod:
    return RecurringPeriod(interval=draw(st.sampled_from(INTERVALS)), anchor=draw(instants),
                           tz=draw(st.sampled_from(ZONES)))


def _span(p: RecurringPeriod) -> timedelta:
    """A range holding a few hundred boundaries at most."""
    if p.interval.startswith("PT"):
        return timedelta(hours=40)
    return timedelta(days=120) if p.interval in ("DAY", "P1D", "WEEK", "P10D") else timedelta(days=3 * 365)


@settings(max_examples=150, deadline=None)
@given(p=periods(), start=instants, frac=st.floats(min_value=0, max_value=1))
def test_boundaries_strictly_increase_and_every_instant_lies_in_exactly_one_period(
        p: RecurringPeriod, start: datetime, frac: float) -> None:
    end = start + _span(p)
    bs = boundaries(p, start, end)
    assert bs, "the range is longer than any period"
    assert all(start <= b <= end for b in bs)
    assert all(a < b for a, b in zip(bs, bs[1:], strict=False))
    for a, b in zip(bs, bs[1:], strict=False):
        assert period_containing(p, a) == (a, b)
        assert period_containing(p, b - timedelta(microseconds=1)) == (a, b)
    # an arbitrary instant: exactly one [b_i, b_i+1) of the list holds it, and it is the containing period
    x = start + (end - start) * frac
    s, e = period_containing(p, x)
    assert s <= x < e
    full = boundaries(p, s, e)
    assert full == [s, e]
    holding = [(a, b) for a, b in zip(bs, bs[1:], strict=False) if a <= x < b]
    assert len(holding) <= 1
    if bs[0] <= x < bs[-1]:
        assert holding == [(s, e)]


@settings(max_examples=100, deadline=None)
@given(p=periods(), x=instants)
def test_every_boundary_is_computed_from_the_anchor(p: RecurringPeriod, x: datetime) -> None:
    s, e = period_containing(p, x)
    assert period_containing(p, p.anchor)[0] == p.anchor, "the anchor is a boundary"
    if p.interval in ("MONTH", "P1M", "P3M"):
        tz = ZoneInfo(p.tz)
        local_anchor = p.anchor.astimezone(tz)
        for b in (s, e):
            lb = b.astimezone(tz)
            # the anchor's day, clamped to the month's last day (never drifting after a short month)
            nxt = (lb.replace(day=28) + timedelta(days=4)).replace(day=1)
            last = (nxt - timedelta(days=1)).day
            if lb.replace(tzinfo=None).time() == local_anchor.replace(tzinfo=None).time():
                assert lb.day == min(local_anchor.day, last)


def test_monthly_at_local_midnight_stays_at_local_midnight_across_dst_in_berlin() -> None:
    p = RecurringPeriod(interval="MONTH", anchor=t("2025-12-31T23:00:00Z"), tz="Europe/Berlin")  # 1 Jan 00:00
    bs = boundaries(p, t("2026-02-01T00:00:00Z"), t("2026-12-01T00:00:00Z"))
    assert bs[0] == t("2026-02-28T23:00:00Z")  # 1 Mar 00:00 CET
    assert bs[1] == t("2026-03-31T22:00:00Z")  # 1 Apr 00:00 CEST (clocks went forward on 29 Mar)
    assert bs[-2] == t("2026-10-31T23:00:00Z")  # 1 Nov 00:00 CET (clocks went back on 25 Oct)
    assert all(b.astimezone(ZoneInfo("Europe/Berlin")).hour == 0 for b in bs)
    assert period_containing(p, t("2026-03-29T12:00:00Z")) == (t("2026-02-28T23:00:00Z"), t("2026-03-31T22:00:00Z"))


def test_daily_berlin_days_are_23_and_25_hours_long_at_dst_changes() -> None:
    p = RecurringPeriod(interval="DAY", anchor=t("2026-01-01T23:00:00Z"), tz="Europe/Berlin")
    s, e = period_containing(p, t("2026-03-29T12:00:00Z"))
    assert (s, e - s) == (t("2026-03-28T23:00:00Z"), timedelta(hours=23))
    s, e = period_containing(p, t("2026-10-25T12:00:00Z"))
    assert (s, e - s) == (t("2026-10-24T22:00:00Z"), timedelta(hours=25))


def test_new_york_daily_at_a_wall_time_the_dst_gap_skips_and_one_that_repeats() -> None:
    p = RecurringPeriod(interval="P1D", anchor=t("2026-01-10T07:30:00Z"), tz="America/New_York")  # 02:30 EST
    assert boundaries(p, t("2026-03-07T00:00:00Z"), t("2026-03-09T23:00:00Z")) == [
        t("2026-03-07T07:30:00Z"),  # 02:30 EST
        t("2026-03-08T07:30:00Z"),  # 02:30 does not exist that night: 03:30 EDT, an hour past the gap
        t("2026-03-09T06:30:00Z"),  # 02:30 EDT
    ]
    q = RecurringPeriod(interval="DAY", anchor=t("2026-01-10T06:30:00Z"), tz="America/New_York")  # 01:30 EST
    assert boundaries(q, t("2026-10-31T00:00:00Z"), t("2026-11-02T23:00:00Z")) == [
        t("2026-10-31T05:30:00Z"),  # 01:30 EDT
        t("2026-11-01T05:30:00Z"),  # 01:30 happens twice: the first (EDT)
        t("2026-11-02T06:30:00Z"),  # 01:30 EST
    ]


def test_month_anchored_on_the_31st_clamps_and_comes_back() -> None:
    p = RecurringPeriod(interval="P1M", anchor=t("2024-01-31T10:00:00Z"))
    assert boundaries(p, t("2024-01-01T00:00:00Z"), t("2024-08-01T00:00:00Z")) == [
        t("2024-01-31T10:00:00Z"), t("2024-02-29T10:00:00Z"), t("2024-03-31T10:00:00Z"),
        t("2024-04-30T10:00:00Z"), t("2024-05-31T10:00:00Z"), t("2024-06-30T10:00:00Z"),
        t("2024-07-31T10:00:00Z"),
    ]
    y = RecurringPeriod(interval="YEAR", anchor=t("2024-02-29T00:00:00Z"))
    assert boundaries(y, t("2025-01-01T00:00:00Z"), t("2028-12-31T00:00:00Z")) == [
        t("2025-02-28T00:00:00Z"), t("2026-02-28T00:00:00Z"), t("2027-02-28T00:00:00Z"), t("2028-02-29T00:00:00Z")]


def test_anchor_in_the_future_or_far_past() -> None:
    p = RecurringPeriod(interval="MONTH", anchor=t("2030-05-15T00:00:00Z"))
    assert period_containing(p, t("2026-01-20T08:00:00Z")) == (t("2026-01-15T00:00:00Z"), t("2026-02-15T00:00:00Z"))
    h = RecurringPeriod(interval="PT1H", anchor=t("1990-01-01T00:30:00Z"))
    assert period_containing(h, t("2026-01-20T08:00:00Z")) == (t("2026-01-20T07:30:00Z"), t("2026-01-20T08:30:00Z"))
    assert p.next_after(t("2026-01-15T00:00:00Z")) == t("2026-02-15T00:00:00Z")


def test_elapsed_intervals_ignore_the_zone() -> None:
    p = RecurringPeriod(interval="PT1H", anchor=t("2026-03-29T00:00:00Z"), tz="Europe/Berlin")
    bs = boundaries(p, t("2026-03-29T00:00:00Z"), t("2026-03-29T03:00:00Z"))
    assert [b - bs[0] for b in bs] == [timedelta(hours=i) for i in range(4)]


def test_empty_when_end_before_start_and_anchor_normalised_to_utc() -> None:
    p = RecurringPeriod(interval="DAY", anchor=datetime(2026, 1, 1, 1, 0, tzinfo=ZoneInfo("Europe/Berlin")))
    assert p.anchor == t("2026-01-01T00:00:00Z") and p.anchor.tzinfo is UTC
    assert boundaries(p, t("2026-02-01T00:00:00Z"), t("2026-01-01T00:00:00Z")) == []


@pytest.mark.parametrize("interval", ["", "P", "PT", "P1DT", "P0D", "PT0S", "P1.5M", "P1,5D", "1D", "MONTHLY",
                                      "P1DT12H", "PT30S", "PT90S", "P-1D", "P200000D"])
def test_bad_interval_is_a_validation_error_naming_the_field(interval: str) -> None:
    with pytest.raises(ValidationFailed) as e:
        RecurringPeriod(interval=interval, anchor=t("2026-01-01T00:00:00Z"))
    assert e.value.errors[0]["field"] == "interval"


def test_bad_zone_and_anchor_are_validation_errors() -> None:
    with pytest.raises(ValidationFailed) as e:
        RecurringPeriod(interval="DAY", anchor=t("2026-01-01T00:00:00Z"), tz="Mars/Olympus")
    assert e.value.errors[0]["field"] == "timeZone"
    with pytest.raises(ValidationFailed) as e:
        RecurringPeriod(interval="DAY", anchor=datetime(2026, 1, 1))
    assert e.value.errors[0]["field"] == "anchor"
    with pytest.raises(ValidationFailed) as e:
        RecurringPeriod(interval=3, anchor=t("2026-01-01T00:00:00Z"))  # type: ignore[arg-type]
    assert e.value.errors[0]["field"] == "interval"
