"""CloudEvents 1.0 (JSON format) as OpenMeter ingests them.

Validation is all-or-nothing per batch: every bad event is reported with its index and field, and a batch
with any bad event is refused whole, so a client can fix and resend it without having half of it counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from billow.errors import ValidationFailed
from billow.timeutil import COMMON_RFC3339, parse_rfc3339, to_millis

MAX_ATTR_LEN = 1024
REQUIRED = ("id", "source", "type", "subject")
# Event times every usage table can hold: the rollups' DateTime('UTC') columns end at 2106-02-07T06:28:15Z and begin at
# the Unix epoch (DateTime64(3) holds 1900..2299). A time outside would be stored clamped into the wrong window.
EVENT_TIME_MIN = datetime(1970, 1, 1, tzinfo=UTC)
EVENT_TIME_MAX = datetime(2105, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
EVENT_TIME_RANGE = "1970-01-01T00:00:00Z to 2105-12-31T23:59:59.999Z"
# How far past its ingest time an event may be dated. Client clocks drift by seconds; an event years ahead is a
# unit or typing error that would sit in a future billing period unseen. Later is refused, naming the bound.
MAX_FUTURE = timedelta(days=31)
# How deep an event's `data` may nest objects and arrays (`data` itself is level 1). Far past any usage event, and far
# short of every parser and encoder the event meets after ingest (the bus's batch record nests it 3 levels deeper, the
# sink decodes it, the events listing encodes it): deeper is refused at ingest, naming `data`, never acknowledged and
# then lost downstream.
MAX_DATA_DEPTH = 64


# The types of a decoded JSON value that hold no other value: a `data` object whose values are all of these is flat.
_SCALARS = frozenset({str, int, float, bool, type(None), Decimal})


def data_too_deep(data: dict[str, Any] | list[Any]) -> bool:
    """Whether `data` nests objects and arrays deeper than MAX_DATA_DEPTH levels (level by level, no recursion)."""
    if type(data) is dict and _SCALARS.issuperset(map(type, data.values())):
        return False  # flat, as most usage data is (one pass over its values' types, no loop in Python)
    level: list[Any] = [data]
    for _ in range(MAX_DATA_DEPTH):
        inner = []
        for node in level:
            for v in (node.values() if type(node) is dict else node):
                if type(v) is dict or type(v) is list:
                    inner.append(v)
        if not inner:
            return False
        level = inner
    return True


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
    spec = raw.get("specversion")
    if spec is None:
        fail("specversion", "required (\"1.0\")")
    elif spec != "1.0":
        fail("specversion", "must be \"1.0\"")
    ctype = raw.get("datacontenttype")
    if ctype is not None and ctype != "application/json":
        fail("datacontenttype", "only application/json is supported")
    data = raw.get("data")
    if data is not None and not isinstance(data, dict):
        fail("data", "must be a JSON object")
    elif data is not None and data_too_deep(data):
        fail("data", f"nests objects and arrays deeper than {MAX_DATA_DEPTH} levels")
    time_raw = raw.get("time")
    when = now
    if time_raw is None:
        when = to_millis(now)
    else:
        if not isinstance(time_raw, str):
            fail("time", "must be an RFC 3339 date-time string")
        else:
            try:
                when = to_millis(parse_rfc3339(time_raw, "time"))
            except ValidationFailed as exc:
                fail("time", exc.errors[0]["message"] if exc.errors else str(exc))
            else:
                if not EVENT_TIME_MIN <= when <= EVENT_TIME_MAX:
                    fail("time", f"out of range: event times must be from {EVENT_TIME_RANGE}")
                elif when > now + MAX_FUTURE:
                    fail("time", f"more than {MAX_FUTURE.days} days after the ingest time "
                                 f"({now.isoformat()}): future usage is refused")
    if len(errors) > before:
        return None
    return CloudEvent(
        id=values["id"],
        source=values["source"],
        type=values["type"],
        subject=values["subject"],
        time=when,  # already truncated to milliseconds (once: this runs per event)
        data=data,
    )


# A valid event of a batch as ingest carries it: (index in the batch, id, source, type, subject, time, data), the time
# UTC at millisecond resolution (the ingest time when the event had none). A tuple: no object per event on the hot path.
EventRow = tuple[int, str, str, str, str, datetime, dict[str, Any] | None]


class CommonEvents:
    """The inline check of a batch's events of the common shape: `row` gives the event's EventRow when its attributes
    (whatever they were decoded into) are an id, source, type and subject that are non-empty strings of at most
    MAX_ATTR_LEN characters without NUL, specversion "1.0", datacontenttype absent or JSON, data an object or absent
    and time absent or YYYY-MM-DDTHH:MM:SS[.mmm]Z within range; None for any other event, which parse_event then
    checks in full. It only ever accepts what parse_event accepts, with the same values
    (tests/unit/test_ingest_fast_path.py holds them side by side). `deep`: data may nest past MAX_DATA_DEPTH, so each
    event's is measured; a caller that knows no data of the batch can (decode_common: its body's brackets) says False."""

    __slots__ = ("now", "latest", "default", "deep", "times")

    def __init__(self, now: datetime, *, deep: bool = True) -> None:
        self.now = now
        self.deep = deep
        self.latest = min(EVENT_TIME_MAX, now + MAX_FUTURE)
        self.default: datetime | None = None  # to_millis(now), once, for the events without a time
        # Each distinct time text of the batch, checked once: its time, or None (not of the common form or out of
        # range: parse_event says why). Events of a batch often share their time's text (whole seconds, minutes).
        self.times: dict[str, datetime | None] = {}

    def row(self, i: int, id_: Any, source: Any, type_: Any, subject: Any, spec: Any, ctype: Any, when: Any,
            data: Any) -> EventRow | None:
        if not (type(id_) is str and type(source) is str and type(type_) is str and type(subject) is str
                and len(id_) <= MAX_ATTR_LEN and len(source) <= MAX_ATTR_LEN and len(type_) <= MAX_ATTR_LEN
                and len(subject) <= MAX_ATTR_LEN and id_.strip() and source.strip() and type_.strip()
                and subject.strip() and "\x00" not in id_ and "\x00" not in source and "\x00" not in type_
                and "\x00" not in subject and spec == "1.0" and (data is None or type(data) is dict)
                and (ctype is None or ctype == "application/json")):
            return None
        if self.deep and data is not None and data_too_deep(data):
            return None
        if when is None:
            if self.default is None:
                self.default = to_millis(self.now)
            return (i, id_, source, type_, subject, self.default, data)
        if type(when) is not str:
            return None
        at = self.times.get(when, _UNSEEN)
        if at is _UNSEEN:
            at = self.times[when] = self._time(when)
        if at is None:
            return None
        return (i, id_, source, type_, subject, at, data)

    def _time(self, when: str) -> datetime | None:
        if _COMMON_TIME(when) is None:
            return None
        try:
            at = _FROM_ISO(when)  # exactly this form: UTC, already at millisecond resolution
        except ValueError:  # e.g. February 30th: parse_event says so
            return None
        if not EVENT_TIME_MIN <= at <= self.latest:
            return None  # out of range or in the future: parse_event says which
        return at


_COMMON_TIME = COMMON_RFC3339.fullmatch
_UNSEEN: Any = object()
_FROM_ISO = datetime.fromisoformat


def parse_rows(raws: list[Any], now: datetime, errors: list[dict[str, Any]]) -> list[EventRow]:
    """The valid events of a batch as rows, in batch order; every problem of the others is appended to `errors`.
    Events of the common shape are checked inline (CommonEvents), every other one in full by parse_event."""
    out: list[EventRow] = []
    append = out.append
    common = CommonEvents(now).row
    for i, raw in enumerate(raws):
        if type(raw) is dict:
            get = raw.get
            row = common(i, get("id"), get("source"), get("type"), get("subject"), get("specversion"),
                         get("datacontenttype"), get("time"), get("data"))
            if row is not None:
                append(row)
                continue
        ev = parse_event(raw, i, now, errors)
        if ev is not None:
            append((i, ev.id, ev.source, ev.type, ev.subject, ev.time, ev.data))
    return out


def parse_each(raws: list[Any], now: datetime, errors: list[dict[str, Any]]) -> list[tuple[int, CloudEvent]]:
    """The valid events of a batch with their indexes; every problem of the others is appended to `errors`."""
    return [(r[0], CloudEvent(r[1], r[2], r[3], r[4], r[5], r[6])) for r in parse_rows(raws, now, errors)]


def parse_batch(raws: list[Any], now: datetime) -> list[CloudEvent]:
    errors: list[dict[str, Any]] = []
    events = [ev for _, ev in parse_each(raws, now, errors)]
    if errors:
        raise refused(errors)
    return events


def refused(errors: list[dict[str, Any]]) -> ValidationFailed:
    """The one refusal of a batch: every problem of every event, in event order (an event's own problems first)."""
    errors = sorted(errors, key=lambda e: e.get("index", -1))  # stable: keeps each event's problems in order
    return ValidationFailed(_summary(errors), errors)


def _summary(errors: list[dict[str, Any]]) -> str:
    first = errors[0]
    where = f"event {first['index']}: " if "index" in first else ""
    field = f"meter {first['meter']}: " if "meter" in first else f"{first['field']}: " if first["field"] else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"invalid event batch, nothing was ingested: {where}{field}{first['message']}{more}"
