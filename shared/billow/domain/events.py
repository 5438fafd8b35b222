"""CloudEvents 1.0 (JSON format) as OpenMeter ingests them.

Validation is all-or-nothing per batch: every bad event is reported with its index and field, and a batch
with any bad event is refused whole, so a client can fix and resend it without having half of it counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from billow.errors import ValidationFailed
from billow.timeutil import parse_rfc3339, to_millis

MAX_ATTR_LEN = 1024
REQUIRED = ("id", "source", "type", "subject")


@dataclass(slots=True, frozen=True)
class CloudEvent:
    id: str
    source: str
    type: str
    subject: str
    time: datetime  # UTC, millisecond resolution; the ingest time when the event had none
    data: dict[str, Any] | None
    specversion: str = "1.0"

    @property
    def key(self) -> tuple[str, str]:
        return (self.source, self.id)

    def to_json(self) -> dict[str, Any]:
        from billow.timeutil import format_rfc3339

        out: dict[str, Any] = {
            "specversion": self.specversion,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "subject": self.subject,
            "time": format_rfc3339(self.time),
        }
        if self.data is not None:
            out["datacontenttype"] = "application/json"
            out["data"] = self.data
        return out


def parse_event(raw: Any, index: int | None, now: datetime, errors: list[dict[str, Any]]) -> CloudEvent | None:
    """Validate one decoded JSON value as a CloudEvent; append problems to `errors` (with `index`)."""

    def fail(field: str, message: str) -> None:
        entry: dict[str, Any] = {"field": field, "message": message}
        if index is not None:
            entry["index"] = index
        errors.append(entry)

    if not isinstance(raw, dict):
        fail("", "event must be a JSON object")
        return None
    before = len(errors)
    values: dict[str, str] = {}
    for name in REQUIRED:
        value = raw.get(name)
        if value is None:
            fail(name, "required")
        elif not isinstance(value, str):
            fail(name, "must be a string")
        elif not value.strip():
            fail(name, "must not be empty")
        elif len(value) > MAX_ATTR_LEN:
            fail(name, f"longer than {MAX_ATTR_LEN} characters")
        elif "\x00" in value:
            fail(name, "must not contain NUL characters")
        else:
            values[name] = value
    spec = raw.get("specversion", "1.0")
    if spec != "1.0":
        fail("specversion", "must be \"1.0\"")
    ctype = raw.get("datacontenttype")
    if ctype is not None and ctype != "application/json":
        fail("datacontenttype", "only application/json is supported")
    data = raw.get("data")
    if data is not None and not isinstance(data, dict):
        fail("data", "must be a JSON object")
    time_raw = raw.get("time")
    when = now
    if time_raw is not None:
        if not isinstance(time_raw, str):
            fail("time", "must be an RFC 3339 date-time string")
        else:
            try:
                when = parse_rfc3339(time_raw, "time")
            except ValidationFailed as exc:
                fail("time", exc.errors[0]["message"] if exc.errors else str(exc))
    if len(errors) > before:
        return None
    return CloudEvent(
        id=values["id"],
        source=values["source"],
        type=values["type"],
        subject=values["subject"],
        time=to_millis(when),
        data=data,
    )


def parse_batch(raws: list[Any], now: datetime) -> list[CloudEvent]:
    errors: list[dict[str, Any]] = []
    events: list[CloudEvent] = []
    for i, raw in enumerate(raws):
        ev = parse_event(raw, i, now, errors)
        if ev is not None:
            events.append(ev)
    if errors:
        raise ValidationFailed(_summary(errors), errors)
    return events


def _summary(errors: list[dict[str, Any]]) -> str:
    first = errors[0]
    where = f"event {first['index']}: " if "index" in first else ""
    field = f"{first['field']}: " if first["field"] else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"invalid event batch, nothing was ingested: {where}{field}{first['message']}{more}"
