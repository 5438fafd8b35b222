"""UTC instants, RFC 3339 parsing and IANA time-zone windows."""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from billow.errors import ValidationFailed


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_millis(dt: datetime) -> datetime:
    """Truncate to the storage resolution (DateTime64(3)): milliseconds, UTC."""
    dt = dt.astimezone(UTC)
    return dt.replace(microsecond=dt.microsecond - dt.microsecond % 1000)


# RFC 3339 (section 5.6) date-time in ASCII digits; "T" may be "t" or a space (as its note allows), "Z" may be "z".
# datetime.fromisoformat alone also takes ISO 8601 forms that are not RFC 3339 (week dates 2026-W01-1, ordinal
# dates, basic 20260101T000000, comma fractions 00,5, offsets +0000, +00 or +00:00:00): this regex runs first.
_RFC3339 = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,64}))?([Zz]|[+-][0-9]{2}:[0-9]{2})")


def parse_rfc3339(value: str, field: str) -> datetime:
    """Parse an RFC 3339 date-time with an explicit offset (nothing else: no surrounding whitespace, no other
    ISO 8601 forms); naive times are refused, not guessed. Fractions past microseconds are truncated."""
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None and isinstance(value, str) and _RFC3339.fullmatch(value + "Z"):
        raise ValidationFailed(f"{field}: date-time needs a time-zone offset (e.g. Z): {value!r}", [{"field": field, "message": "missing time-zone offset"}])
    if match is None:
        raise ValidationFailed(f"{field}: not an RFC 3339 date-time: {str(value)[:64]!r}",
                               [{"field": field, "message": "not an RFC 3339 date-time"}])
    date, clock, fraction, offset = match.groups()
    micros = "." + fraction[:6].ljust(6, "0") if fraction else ""
    text = f"{date}T{clock}{micros}{'+00:00' if offset in ('Z', 'z') else offset}"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationFailed(f"{field}: not an RFC 3339 date-time: {value!r}", [{"field": field, "message": "not an RFC 3339 date-time"}]) from None
    # The usage store's DateTime64 holds 1900-01-01..2299-12-31; outside it ClickHouse fails (a 500 before).
    if not 1900 < dt.year < 2299:
        raise ValidationFailed(f"{field}: date-time must be between 1901 and 2298: {value!r}",
                               [{"field": field, "message": "year out of range 1901..2298"}])
    return dt.astimezone(UTC)


# The form nearly every client sends (and format_rfc3339 writes): seconds or milliseconds, UTC as "Z". In exactly this
# form datetime.fromisoformat reads what parse_rfc3339 would, already at millisecond resolution, without the rebuild.
# A value that does not fullmatch this goes to parse_rfc3339 (every other form, and every refusal with its message).
COMMON_RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{3})?Z")


def format_rfc3339(dt: datetime) -> str:
    """UTC with a Z, milliseconds only when there are any (truncated, as stored); e.g. 2026-01-01T00:00:00Z."""
    dt = dt.astimezone(UTC)
    return dt.isoformat(timespec="milliseconds" if dt.microsecond >= 1000 else "seconds")[:-6] + "Z"


def as_of(now: datetime, *stamps: str | datetime | None) -> datetime:
    """The instant a request judges what it read at: its own `now`, or the latest of the stored `stamps` (RFC 3339,
    e.g. an `updatedAt`, or a stored datetime) when that is later; an edit stamps its `updatedAt` so too, never
    before the one it replaces. A request takes its `now` when it begins; another that began after it
    (or runs on a clock ahead) may write first, and judged as of the earlier `now` that write would not have happened
    yet (a version still active, a subscription still running): the request would write again over it, or stamp its
    own change before it."""
    later = [s if isinstance(s, datetime) else parse_rfc3339(s, "updatedAt") for s in stamps if s]
    return max([now, *later])


@functools.cache
def zone_names() -> frozenset[str]:
    """The IANA zones a window may use: those of the tz database (the `tzdata` package, as ClickHouse's own list),
    not every file zoneinfo would open. The system zoneinfo tree also holds `right/*` (leap-second clocks),
    `posix/*` and `localtime`, which Python loads and ClickHouse refuses (a 500 on the query before)."""
    return frozenset(available_timezones()) - {"localtime", "posixrules"}


def zone(name: str, field: str = "windowTimeZone") -> ZoneInfo:
    if isinstance(name, str) and (name == "UTC" or name in zone_names()):
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    shown = repr(name[:64]) if isinstance(name, str) else "of type " + type(name).__name__
    raise ValidationFailed(f"{field}: unknown IANA time zone {shown}", [{"field": field, "message": "unknown IANA time zone"}])


WINDOW_SIZES = ("MINUTE", "HOUR", "DAY", "MONTH")


def window_start(t: datetime, size: str, tz: ZoneInfo) -> datetime:
    """Start (UTC) of the window of `size` in zone `tz` that holds instant `t`."""
    local = t.astimezone(tz)
    if size == "MINUTE":
        start = local.replace(second=0, microsecond=0)
    elif size == "HOUR":
        start = local.replace(minute=0, second=0, microsecond=0)
    elif size == "DAY":
        start = _local_midnight(local.year, local.month, local.day, tz)
    elif size == "MONTH":
        start = _local_midnight(local.year, local.month, 1, tz)
    else:  # pragma: no cover - validated at the edge
        raise ValueError(size)
    return start.astimezone(UTC)


def window_end(start: datetime, size: str, tz: ZoneInfo) -> datetime:
    """End (UTC, exclusive) of the window that begins at `start`. Days and months follow the calendar in `tz`."""
    if size == "MINUTE":
        return start + timedelta(minutes=1)
    if size == "HOUR":
        return start + timedelta(hours=1)
    local = start.astimezone(tz)
    if size == "DAY":
        nxt = (local.replace(tzinfo=None) + timedelta(days=1)).date()
        return _local_midnight(nxt.year, nxt.month, nxt.day, tz).astimezone(UTC)
    year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
    return _local_midnight(year, month, 1, tz).astimezone(UTC)


def next_window_start(start: datetime, size: str, tz: ZoneInfo) -> datetime:
    """The start of the window after the one that begins at `start` (`window_start`'s): its end. An hour around a
    half-hour DST change (Lord Howe) can be 30 or 90 minutes here, so an hour's end is the first window start after
    `start` at a quarter hour, not start + 1 hour."""
    if size != "HOUR":
        return window_end(start, size, tz)
    if window_start(start + timedelta(minutes=45), size, tz) == start \
            and window_start(nxt := start + timedelta(hours=1), size, tz) == nxt:
        return nxt  # a whole hour (every hour but those around a half-hour DST change)
    return next(w for k in range(1, 9) if (w := window_start(start + timedelta(minutes=15 * k), size, tz)) > start)


def python_window_starts(start: datetime, end: datetime, size: str, tz: ZoneInfo) -> list[datetime]:
    """The starts (UTC) of the windows of `size` in `tz` that hold an instant of [start, end), by this calendar."""
    out = [window_start(start, size, tz)]
    while (nxt := next_window_start(out[-1], size, tz)) < end:
        out.append(nxt)
    return out


def _local_midnight(year: int, month: int, day: int, tz: ZoneInfo) -> datetime:
    """The first instant of a local calendar day (if midnight is skipped by DST, the first valid instant)."""
    naive = datetime(year, month, day)
    candidate = naive.replace(tzinfo=tz)
    # A skipped wall time does not round-trip; step forward to the first one that does.
    for _ in range(4 * 24):
        roundtrip = candidate.astimezone(UTC).astimezone(tz)
        if roundtrip.replace(tzinfo=None) == candidate.replace(tzinfo=None):
            return candidate
        candidate = (candidate.replace(tzinfo=None) + timedelta(minutes=15)).replace(tzinfo=tz)
    return candidate  # pragma: no cover
