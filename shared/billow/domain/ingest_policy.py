"""Per-meter ingestion policies (issue 21 item 2, Billow extension `ingestionPolicy` on a meter). Pure: no I/O.

- `lateAfter` (ISO 8601 duration of weeks, days, hours, minutes, seconds: `P35D`, `PT12H`; default none: no limit
  beyond ingest's own rules): how long after its window an event of the meter is still accepted. An event's window
  is its UTC minute [floor(time), floor(time) + 1 min), the finest window the usage store keeps; an event ingested
  later than the window's end + lateAfter is refused (400 naming the window); exactly at it is accepted.
- `lateInvoiced`: what becomes of an event in an already invoiced period: `correct` (default, today's behaviour:
  a correction line on the next invoice, within billow.domain.billing.CORRECTION_WINDOW); `ignore` (the event is
  stored but counts nothing for the meter; reported in the ingest receipt and the `ingest_ignored_invoiced`
  metric); `refuse` (400 naming the invoiced window). "Invoiced" is what the usage lines' lineage says: a line of
  this meter whose subjects hold the event's subject and whose period holds its time.
- `invalidValues`: `refuse` (default: the batch is refused naming every bad event) or `accept` (OpenMeter's: the
  event is stored with its validation error, counts nothing for the meter, and is listed by GET /api/v1/events
  with `validationError`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from billow.errors import ValidationFailed
from billow.timeutil import format_rfc3339

LATE_INVOICED = ("correct", "ignore", "refuse")
INVALID_VALUES = ("refuse", "accept")
_DURATION = re.compile(r"P(?:(\d{1,6})W)?(?:(\d{1,6})D)?(?:T(?:(\d{1,6})H)?(?:(\d{1,6})M)?(?:(\d{1,9}(?:\.\d{1,3})?)S)?)?")
_MINUTE = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class IngestionPolicy:
    late_after: str | None = None  # the ISO text as given
    late_invoiced: str = "correct"
    invalid_values: str = "refuse"

    @property
    def late_after_delta(self) -> timedelta | None:
        return parse_duration(self.late_after) if self.late_after is not None else None

    @property
    def is_default(self) -> bool:
        return self == DEFAULT

    def to_json(self) -> dict[str, Any]:
        return {"lateAfter": self.late_after, "lateInvoiced": self.late_invoiced, "invalidValues": self.invalid_values}


DEFAULT = IngestionPolicy()


def parse_duration(text: str) -> timedelta:
    m = _DURATION.fullmatch(text)
    if m is None or text in ("P", "PT") or text.endswith("T"):
        raise ValueError("must be an ISO 8601 duration of weeks, days, hours, minutes and seconds, e.g. P35D or PT12H "
                         "(months and years have no fixed length)")
    w, d, h, mi, s = m.groups()
    return timedelta(weeks=int(w or 0), days=int(d or 0), hours=int(h or 0), minutes=int(mi or 0),
                     milliseconds=int(Decimal(s or 0) * 1000))


def parse_policy(doc: object, base: IngestionPolicy = DEFAULT, field: str = "ingestionPolicy") -> IngestionPolicy:
    """`ingestionPolicy` of a meter body (missing keys keep `base`'s); every bad key named."""
    if doc is None:
        return base
    if not isinstance(doc, dict):
        raise ValidationFailed.at(field, "must be an object {lateAfter, lateInvoiced, invalidValues}")
    errors = []
    unknown = sorted(set(doc) - {"lateAfter", "lateInvoiced", "invalidValues"})
    for k in unknown:
        errors.append({"field": f"{field}.{k}", "message": "is not a policy (lateAfter, lateInvoiced, invalidValues)"})
    late_after = doc.get("lateAfter", base.late_after)
    if late_after is not None:
        if not isinstance(late_after, str):
            errors.append({"field": f"{field}.lateAfter", "message": "must be an ISO 8601 duration such as P35D, or null"})
        else:
            try:
                if parse_duration(late_after) <= timedelta(0):
                    errors.append({"field": f"{field}.lateAfter", "message": "must be longer than zero"})
            except ValueError as exc:
                errors.append({"field": f"{field}.lateAfter", "message": str(exc)})
    late_invoiced = doc.get("lateInvoiced", base.late_invoiced)
    if late_invoiced not in LATE_INVOICED:
        errors.append({"field": f"{field}.lateInvoiced", "message": f"must be one of {', '.join(LATE_INVOICED)}"})
    invalid = doc.get("invalidValues", base.invalid_values)
    if invalid not in INVALID_VALUES:
        errors.append({"field": f"{field}.invalidValues", "message": f"must be one of {', '.join(INVALID_VALUES)}"})
    if errors:
        raise ValidationFailed(f"invalid meter: {errors[0]['field']}: {errors[0]['message']}", errors)
    return IngestionPolicy(late_after, late_invoiced, invalid)


def from_json(doc: dict[str, Any] | None) -> IngestionPolicy:
    """A stored policy (no validation: it was validated when written)."""
    if not doc:
        return DEFAULT
    return IngestionPolicy(doc.get("lateAfter"), doc.get("lateInvoiced", "correct"), doc.get("invalidValues", "refuse"))


def on_invoiced(policy: IngestionPolicy, meter_slug: str, found: tuple[datetime, datetime, str] | None) -> tuple[str, str] | None:
    """(action, why) for an event whose time falls in an invoiced period `found` (start, end, invoice number) of the
    meter: ("refuse" | "ignore", message), or None (not invoiced, or the policy corrects)."""
    if found is None or policy.late_invoiced == "correct":
        return None
    start, end, number = found
    return policy.late_invoiced, (f"its period [{format_rfc3339(start)}, {format_rfc3339(end)}) of meter {meter_slug} is "
                                  f"invoiced already (invoice {number}; lateInvoiced {policy.late_invoiced})")


def too_late(policy: IngestionPolicy, event_time: datetime, ingested_at: datetime) -> str | None:
    """Why an event of the meter is refused as too late, or None: ingested after its window's end + lateAfter."""
    delta = policy.late_after_delta
    if delta is None:
        return None
    start = event_time.replace(second=0, microsecond=0)
    end = start + _MINUTE
    if ingested_at <= end + delta:
        return None
    return (f"too late: its window [{format_rfc3339(start)}, {format_rfc3339(end)}) closed for this meter at "
            f"{format_rfc3339(end + delta)} (lateAfter {policy.late_after})")
