"""Entitlement usage periods (pure rules, no I/O; billow.services.entitlements reads and stores, then calls these):
the usage period a request gives (`parse_period`), its boundaries as a RecurringPeriod (`period_of`), the reset
schedule (the period's boundaries and the manual resets, which move the anchor to themselves unless
`retainAnchor`) and the usage period in force at an instant (`period_at`). The engine's resolution is one minute,
as OpenMeter's."""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from billow.domain import fields
from billow.domain.periods import RecurringPeriod
from billow.errors import ValidationFailed
from billow.exact import parse_decimal
from billow.timeutil import format_rfc3339, parse_rfc3339, zone

INTERVALS = {"DAY": "P1D", "WEEK": "P1W", "MONTH": "P1M", "YEAR": "P1Y"}
EXPIRATION_UNITS = ("HOUR", "DAY", "WEEK", "MONTH", "YEAR")
MAX_AMOUNT = Decimal("1e20")
bad = ValidationFailed.at


def minute(t: datetime) -> datetime:
    """The engine's resolution is one minute (as OpenMeter's): instants are truncated to the minute."""
    if t.tzinfo is UTC and not t.second and not t.microsecond:
        return t  # already one (the billing run asks this of every span of every subscription, many times)
    return t.astimezone(UTC).replace(second=0, microsecond=0)


def parse_instant(value: Any, field: str) -> datetime:
    """An RFC 3339 date-time string from a request body."""
    if not isinstance(value, str):
        raise bad(field, "must be an RFC 3339 date-time string")
    return parse_rfc3339(value, field)


# -- recurring periods ------------------------------------------------------------------------------
def parse_period(raw: Any, field: str, default_anchor: datetime) -> dict[str, Any]:
    """usagePeriod / recurrence: {interval, anchor?, timeZone?}. `timeZone` (IANA) is Billow's addition: the
    calendar the interval is counted in (a monthly period anchored at local midnight stays at local midnight)."""
    if not isinstance(raw, dict):
        raise bad(field, "must be an object with an interval")
    interval = raw.get("interval")
    if not isinstance(interval, str):
        raise bad(f"{field}.interval", "required: DAY, WEEK, MONTH, YEAR or an ISO 8601 duration")
    iso = INTERVALS.get(interval, interval)
    anchor = minute(parse_instant(raw["anchor"], f"{field}.anchor")) if raw.get("anchor") is not None else \
        minute(default_anchor)
    tz = raw.get("timeZone", "UTC")
    if not isinstance(tz, str):
        raise bad(f"{field}.timeZone", "must be an IANA time zone name")
    zone(tz, f"{field}.timeZone")
    try:
        RecurringPeriod(interval=iso, anchor=anchor, tz=tz)
    except ValidationFailed as e:
        raise bad(f"{field}.interval", e.detail) from None
    return {"interval": interval, "intervalISO": iso, "anchor": format_rfc3339(anchor), "timeZone": tz}


def period_of(doc: dict[str, Any]) -> RecurringPeriod:
    """The RecurringPeriod of a stored usage period (what `parse_period` made)."""
    return RecurringPeriod(interval=doc["intervalISO"], anchor=parse_rfc3339(doc["anchor"], "anchor"),
                           tz=doc.get("timeZone", "UTC"))


def add_duration(t: datetime, unit: str, count: int) -> datetime:
    """`t` plus `count` HOURs, DAYs, WEEKs, MONTHs or YEARs (a grant's expiration); a month past the end of a
    shorter month lands on its last day."""
    if unit == "HOUR":
        return t + timedelta(hours=count)
    if unit == "DAY":
        return t + timedelta(days=count)
    if unit == "WEEK":
        return t + timedelta(weeks=count)
    months = count * (12 if unit == "YEAR" else 1)
    y, m = divmod(t.month - 1 + months, 12)
    year, month = t.year + y, m + 1
    return t.replace(year=year, month=month, day=min(t.day, calendar.monthrange(year, month)[1]))


# -- request fields: amounts, measureUsageFrom, a grant's expiration and optional fields ---------------
def amount(value: Any, field: str, *, positive: bool = False) -> Decimal:
    """A JSON number (or plain ASCII decimal string: billow.exact.parse_decimal) as an exact Decimal; floats never
    reach here (jsonx reads Decimals)."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise bad(field, "must be a number")
    try:
        d = parse_decimal(value) if isinstance(value, str) else Decimal(value)
    except ValueError:
        raise bad(field, "must be a number") from None
    if not d.is_finite():
        raise bad(field, "must be a finite number")
    if d < 0 or (positive and d == 0):
        raise bad(field, "must be greater than 0" if positive else "must not be negative")
    if d >= MAX_AMOUNT or d.as_tuple().exponent < -18:  # type: ignore[operator]
        raise bad(field, "at most 20 integer digits and 18 decimal places")
    return d


def measure_usage_from(raw: Any, usage_period: dict[str, Any], now: datetime) -> datetime:
    """An entitlement's measureUsageFrom: CURRENT_PERIOD_START (the default), NOW or an instant, to the minute."""
    if raw is None or raw == "CURRENT_PERIOD_START":
        start, _ = period_of(usage_period).containing(minute(now))
        return start
    if raw == "NOW":
        return minute(now)
    return minute(parse_instant(raw, "measureUsageFrom"))


def parse_expiration(exp: Any, effective: datetime, v2: bool) -> tuple[datetime | None, dict[str, Any] | None]:
    """When a grant expires and its `expiration` {duration, count}: required in v1, optional in v2 (None, None:
    never expires)."""
    if exp is None and v2:
        return None, None
    if not isinstance(exp, dict):
        raise bad("expiration", "required: {duration: HOUR|DAY|WEEK|MONTH|YEAR, count: 1..1000}")
    if exp.get("duration") not in EXPIRATION_UNITS:
        raise bad("expiration.duration", "one of HOUR, DAY, WEEK, MONTH, YEAR")
    count = exp.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1000:
        raise bad("expiration.count", "must be an integer from 1 to 1000")
    return add_duration(effective, exp["duration"], count), {"duration": exp["duration"], "count": count}


def optional_grant_fields(doc: dict[str, Any], body: dict[str, Any], effective: datetime, v2: bool) -> None:
    """metadata, (v2) annotations and recurrence, when the body has them."""
    if (md := fields.metadata(body)) is not None:
        doc["metadata"] = md
    if v2 and body.get("annotations") is not None:
        if not isinstance(body["annotations"], dict):
            raise bad("annotations", "must be an object")
        doc["annotations"] = body["annotations"]
    if body.get("recurrence") is not None:
        doc["recurrence"] = parse_period(body["recurrence"], "recurrence", effective)


# -- the reset schedule ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reset:
    at: datetime
    preserve_overage: bool


def reset_schedule(ent: dict[str, Any], manual: Sequence[dict[str, Any]],
                   until: datetime) -> tuple[list[Reset], RecurringPeriod]:
    """Every reset in (measureUsageFrom, until]: the usage period's boundaries, and manual resets (which move
    the anchor to themselves unless retainAnchor). Returns the resets and the period in force at `until`."""
    period = period_of(ent["usagePeriod"])
    start = parse_rfc3339(ent["measureUsageFrom"], "measureUsageFrom")
    preserve = bool(ent.get("preserveOverageAtReset"))
    out: list[Reset] = []
    cursor = start
    for m in manual:
        at = m["at"]
        if at > until:
            break
        out += [Reset(b, preserve) for b in period.boundaries(cursor, at) if cursor < b < at]
        out.append(Reset(at, preserve if m.get("preserveOverage") is None else bool(m["preserveOverage"])))
        if not m.get("retainAnchor"):
            period = type(period)(interval=period.interval, anchor=at, tz=period.tz)
        cursor = at
    out += [Reset(b, preserve) for b in period.boundaries(cursor, until) if cursor < b <= until]
    return out, period


def period_at(ent: dict[str, Any], manual: Sequence[dict[str, Any]], at: datetime) -> tuple[datetime, datetime]:
    """The usage period in force at `at`: it starts at the latest of the period's start, the last reset and
    measureUsageFrom."""
    resets, period = reset_schedule(ent, manual, at)
    start, end = period.containing(minute(at))
    measure = parse_rfc3339(ent["measureUsageFrom"], "measureUsageFrom")
    last = resets[-1].at if resets else measure
    return max(start, last, measure), end
