"""Recurring periods: usage periods of entitlements and recurrences of grants.

A period is an interval and an anchor. Its boundaries are `anchor + n * interval` for every integer n (the
anchor may lie before or after any instant asked about). Each boundary is computed from the anchor, never by
adding to the previous one, so a month anchored on the 31st clamps to the last day of shorter months and comes
back to the 31st afterwards (as OpenMeter's `Recurrence.addIntervalNTimes` does).

Two kinds of interval, never mixed in one period:

- calendar intervals (years, months, weeks, days: `P1M`, `P1Y2M`, `P2W`, `P1D`, or OpenMeter's `DAY`, `WEEK`,
  `MONTH`, `YEAR`) count the calendar of the period's IANA zone: the anchor's local wall time is kept, so a
  monthly period anchored at local midnight stays at local midnight across DST changes. A wall time that a
  DST gap skips resolves to the same distance past the gap (02:30 on a spring-forward night is 03:30), an
  ambiguous wall time resolves to its first occurrence.
- elapsed intervals (hours, minutes: `PT1H`, `PT90M`) are exact durations; the zone plays no part.

`P1DT12H` is refused: whether its "day" is a calendar day or 24 hours differs across a DST change, so no single
reading of it can be honoured. Fractions are refused (not exact), and so is any elapsed part that is not a whole
number of minutes (the balance engine's resolution is one minute).
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from billow.errors import ValidationFailed
from billow.timeutil import zone

INTERVAL_ALIASES = {"DAY": "P1D", "WEEK": "P1W", "MONTH": "P1M", "YEAR": "P1Y"}

_ISO = re.compile(
    r"^P(?:(?P<y>\d+)Y)?(?:(?P<mo>\d+)M)?(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<mi>\d+)M)?(?:(?P<s>\d+)S)?)?$"
)
_NOMINAL_MONTH_S = 30.436875 * 86400  # mean Gregorian month; only used to guess an index, then corrected
_UTC_NAMES = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/GMT", "GMT", "Etc/Zulu", "Zulu", "Universal",
                        "Etc/Universal", "Etc/Greenwich", "Greenwich", "GMT0", "Etc/GMT0", "Etc/GMT+0", "Etc/GMT-0"})
_MONTH_DAYS = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_MAX_COUNT = 100_000  # no interval component beyond this: keeps every boundary arithmetic in range


_bad = ValidationFailed.at


def _parse_interval(interval: object) -> tuple[int, int, timedelta]:
    """(months, days, elapsed) of an interval; exactly one kind is non-zero."""
    if not isinstance(interval, str):
        raise _bad("interval", "must be DAY, WEEK, MONTH, YEAR or an ISO 8601 duration")
    text = INTERVAL_ALIASES.get(interval.upper(), interval.upper())
    m = _ISO.match(text)
    if m is None or text in ("P", "PT") or text.endswith("T"):
        if re.match(r"^P[\d.,YMWDTHS]*$", text) and ("." in text or "," in text):
            raise _bad("interval", f"fractional durations are not supported: {interval!r}")
        raise _bad("interval", f"not DAY, WEEK, MONTH, YEAR or an ISO 8601 duration: {interval!r}")
    parts = {k: int(v) if v is not None else 0 for k, v in m.groupdict().items()}
    if any(v > _MAX_COUNT for v in parts.values()):
        raise _bad("interval", f"too long: {interval!r}")
    months = parts["y"] * 12 + parts["mo"]
    days = parts["w"] * 7 + parts["d"]
    elapsed = timedelta(hours=parts["h"], minutes=parts["mi"], seconds=parts["s"])
    calendar_part = months > 0 or days > 0
    if calendar_part and elapsed:
        raise _bad("interval", f"mixes calendar units (Y, M, W, D) with elapsed time (H, M, S): {interval!r}; "
                               "use one kind")
    if not calendar_part and not elapsed:
        raise _bad("interval", f"must be positive: {interval!r}")
    if elapsed % timedelta(minutes=1):
        raise _bad("interval", f"must be a whole number of minutes (the engine resolution): {interval!r}")
    return months, days, elapsed


@dataclass(frozen=True)
class RecurringPeriod:
    """`interval`: DAY | WEEK | MONTH | YEAR or an ISO 8601 duration; `anchor`: any instant on the schedule
    (time-zone aware; kept in UTC); `tz`: the IANA zone whose calendar calendar intervals count in."""

    interval: str
    anchor: datetime
    tz: str = "UTC"
    _months: int = field(init=False, repr=False, compare=False)
    _days: int = field(init=False, repr=False, compare=False)
    _elapsed: timedelta = field(init=False, repr=False, compare=False)
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _local_anchor: datetime = field(init=False, repr=False, compare=False)  # naive wall time in tz
    _nominal_s: float = field(init=False, repr=False, compare=False)
    _utc: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        months, days, elapsed = _parse_interval(self.interval)
        if not isinstance(self.anchor, datetime) or self.anchor.tzinfo is None \
                or self.anchor.utcoffset() is None:
            raise _bad("anchor", "must be a date-time with a time-zone offset")
        if not isinstance(self.tz, str):
            raise _bad("timeZone", "must be an IANA time zone name")
        tz = zone(self.tz, "timeZone")
        anchor = self.anchor.astimezone(UTC)
        object.__setattr__(self, "anchor", anchor)
        object.__setattr__(self, "_months", months)
        object.__setattr__(self, "_days", days)
        object.__setattr__(self, "_elapsed", elapsed)
        object.__setattr__(self, "_zone", tz)
        object.__setattr__(self, "_local_anchor", anchor.astimezone(tz).replace(tzinfo=None))
        object.__setattr__(self, "_utc", self.tz in _UTC_NAMES)
        object.__setattr__(self, "_nominal_s", months * _NOMINAL_MONTH_S + days * 86400.0 + elapsed.total_seconds())

    # -- the n-th boundary ---------------------------------------------------------------------------------
    def at(self, n: int) -> datetime:
        """Boundary number n (n = 0 is the anchor), UTC. Raises OverflowError outside datetime's range."""
        if self._elapsed:
            return self.anchor + self._elapsed * n
        a = self._local_anchor
        try:
            if self._months:
                m = a.month - 1 + n * self._months
                y, mo = a.year + m // 12, m % 12 + 1
                if not 1 <= y <= 9999:
                    raise OverflowError("year out of range")
                last = _MONTH_DAYS[mo] if mo != 2 or not calendar.isleap(y) else 29
                base = date(y, mo, min(a.day, last))
            else:
                base = a.date()
            if self._days:
                base = base + timedelta(days=n * self._days)
            if self._utc:
                return datetime.combine(base, a.time(), UTC)
            wall = datetime.combine(base, a.time())
            # fold=0: a skipped wall time takes the offset from before the gap (lands past it by the gap's
            # length); an ambiguous one is its first occurrence.
            return wall.replace(tzinfo=self._zone).astimezone(UTC)
        except (ValueError, OverflowError) as e:
            raise OverflowError(f"period boundary {n} is out of range") from e

    def _index_at_or_before(self, t: datetime) -> int:
        """The largest n with at(n) <= t (boundaries never decrease, so a galloping search finds it)."""
        t = t.astimezone(UTC)
        if self._elapsed:
            return (t - self.anchor) // self._elapsed
        guess = int((t - self.anchor).total_seconds() // self._nominal_s)

        def le(n: int) -> bool:
            try:
                return self.at(n) <= t
            except OverflowError:
                return n < 0

        step = 1
        if le(guess):
            lo, hi = guess, guess + 1
            while le(hi):
                lo, hi, step = hi, hi + step, step * 2
        else:
            lo, hi = guess - 1, guess
            while not le(lo):
                hi, lo, step = lo, lo - step, step * 2
        while hi - lo > 1:  # invariant: le(lo) and not le(hi)
            mid = (lo + hi) // 2
            if le(mid):
                lo = mid
            else:
                hi = mid
        return lo

    # -- queries --------------------------------------------------------------------------------------------
    def containing(self, t: datetime) -> tuple[datetime, datetime]:
        """The period [start, end) that holds instant t."""
        n = self._index_at_or_before(t)
        # n is the largest index at or before t, so at(n + 1) > t even where a zone that skips a whole
        # calendar day maps two boundaries to one instant.
        return self.at(n), self.at(n + 1)

    def boundaries(self, start: datetime, end: datetime) -> list[datetime]:
        """Every boundary (period start) in [start, end], UTC, strictly increasing."""
        start, end = start.astimezone(UTC), end.astimezone(UTC)
        if end < start:
            return []
        n = self._index_at_or_before(start)
        out: list[datetime] = []
        if self._elapsed:  # exact arithmetic, no calendar: step from the first boundary
            b = self.at(n)
            if b < start:
                n, b = n + 1, self.at(n + 1)
            while b <= end:
                out.append(b)
                n += 1
                b = self.anchor + self._elapsed * n
            return out
        while True:
            try:
                b = self.at(n)
            except OverflowError:
                break
            if b > end:
                break
            if b >= start and (not out or b > out[-1]):
                out.append(b)
            n += 1
        return out

    def next_after(self, t: datetime) -> datetime:
        """The first boundary strictly after t."""
        return self.containing(t)[1]


def boundaries(period: RecurringPeriod, start: datetime, end: datetime) -> list[datetime]:
    """The period start instants in [start, end] (UTC), strictly increasing."""
    return period.boundaries(start, end)


def period_containing(period: RecurringPeriod, t: datetime) -> tuple[datetime, datetime]:
    """(start, end) of the period holding t: start <= t < end."""
    return period.containing(t)


# -- ISO 8601 offsets (OpenMeter's ISODuration arithmetic: a subscription phase's startAfter) --------------------
Offset = tuple[int, int, int]  # (months, days, seconds); components add and subtract one by one and may be negative


def offset(value: object, name: str = "duration") -> Offset:
    """An ISO 8601 duration (zero allowed, e.g. P0D) as (months, days, seconds): Y = 12 M, W = 7 D."""
    text = value.upper() if isinstance(value, str) else ""
    m = _ISO.match(text)
    if m is None or text in ("P", "PT") or text.endswith("T"):
        raise _bad(name, f"must be an ISO 8601 duration such as P1M: {str(value)[:64]!r}")
    p = {k: int(v) if v is not None else 0 for k, v in m.groupdict().items()}
    if any(v > _MAX_COUNT for v in p.values()):
        raise _bad(name, f"too long: {value!r}")
    return p["y"] * 12 + p["mo"], p["w"] * 7 + p["d"], p["h"] * 3600 + p["mi"] * 60 + p["s"]


def add_offsets(a: Offset, b: Offset, sign: int = 1) -> Offset:
    """a + b (or a - b with sign=-1), component by component, as OpenMeter's ISODuration.Add/Subtract do."""
    return a[0] + sign * b[0], a[1] + sign * b[1], a[2] + sign * b[2]


def shifted(start: datetime, by: Offset, name: str = "duration") -> datetime:
    """`start` plus an offset, in UTC: months first (the day kept, or the month's last day when it has fewer), then
    days, then seconds (OpenMeter's datetime.DateTime.Add). Past the years 1..9999 it is a 400 naming `name`."""
    s = start.astimezone(UTC)
    m = s.month - 1 + by[0]
    y, mo = s.year + m // 12, m % 12 + 1
    last = _MONTH_DAYS[mo] if mo != 2 or not calendar.isleap(y) else 29
    try:
        return s.replace(year=y, month=mo, day=min(s.day, last)) + timedelta(days=by[1], seconds=by[2])
    except (ValueError, OverflowError):
        raise _bad(name, "too long: the date would fall outside the years 1 to 9999") from None
