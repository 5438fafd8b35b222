"""Ingest: validate a batch of CloudEvents against the meters, then hand it to the bus.

The batch is all-or-nothing: any invalid event refuses the whole batch with every problem listed, and
nothing of it is published. Returns only after the bus has the records (Kafka acked / sink stored)."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec

from billow import heap, jsonx
from billow.bus import batch_records
from billow.domain.events import (  # noqa: F401 (parse_batch: re-exported)
    MAX_DATA_DEPTH,
    CloudEvent,
    CommonEvents,
    EventRow,
    parse_batch,
    parse_rows,
    refused,
)
from billow.domain.ingest_policy import on_invoiced, too_late
from billow.domain.meters import Meter, MeterValueRow
from billow.errors import PayloadTooLarge
from billow.ports import EventBus, MetaStore
from billow.timeutil import format_rfc3339

MAX_BATCH_EVENTS = 10_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


@dataclass(slots=True)
class IngestResult:
    accepted: int
    ignored: list[dict[str, Any]] = field(default_factory=list)  # events a meter ignored (ingestionPolicy.lateInvoiced)


# (meter id, subject, time) -> the invoiced period holding it (start, end, invoice number), or None
InvoicedLookup = Callable[[str, str, datetime], tuple[datetime, datetime, str] | None]


def partition_key(event: CloudEvent) -> bytes:
    """Kafka key: duplicates of one (source, id) always land on the same partition, so one consumer sees both."""
    return f"{event.source}\x1f{event.id}".encode()


def encode_record(event: CloudEvent, ingested_at: datetime | str) -> bytes:
    body = event.to_json()
    body["ingestedAt"] = ingested_at if isinstance(ingested_at, str) else format_rfc3339(ingested_at)
    return jsonx.dumps(body).encode()


def check_against_meters(rows: Sequence[EventRow], meters: Sequence[Meter],
                         errors: list[dict[str, Any]]) -> list[list[MeterValueRow]]:
    """Append to `errors` every event whose value a meter of its type cannot read. Returns each event's values as
    (meter id, exact decimal text, text value, group-by values), in event order (Meter.reader: Meter.extract compiled
    once per batch; a meter applies to the events of its type from its eventFrom on, as Meter.applies_to)."""
    by_type: dict[str, list[tuple[Callable[[dict[str, Any] | None], MeterValueRow], datetime | None, bool, Meter]]] = {}
    for m in meters:
        by_type.setdefault(m.event_type, []).append((m.reader(), m.event_from, m.policy.invalid_values == "accept", m))
    out: list[list[MeterValueRow]] = []
    append = out.append
    get = by_type.get
    for i, _, _, type_, _, when, data in rows:
        readers = get(type_)
        if readers is None:
            append([])
            continue
        vals: list[MeterValueRow] = []
        for read, event_from, accept, m in readers:
            if event_from is not None and when < event_from:
                continue
            try:
                vals.append(read(data))
            except ValueError as exc:
                if accept:
                    continue  # ingestionPolicy: stored with its validation error (the sink), counting nothing here
                errors.append({"index": i, "field": f"data ({m.value_property})", "meter": m.slug, "message": str(exc)})
        append(vals)
    return out


def check_late(events: Sequence[tuple[int, CloudEvent]], meters: Sequence[Meter], now: datetime,
               errors: list[dict[str, Any]]) -> None:
    """Append to `errors` every event a meter of its type refuses as too late (ingestionPolicy.lateAfter)."""
    strict = [m for m in meters if m.policy.late_after is not None]
    for i, ev in events if strict else ():
        for m in strict:
            if m.event_type == ev.type and m.applies_to(ev) and (why := too_late(m.policy, ev.time, now)) is not None:
                errors.append({"index": i, "field": "time", "meter": m.slug, "message": why})


def check_invoiced(events: Sequence[tuple[int, CloudEvent]], meters: Sequence[Meter], values: list[list[Any]],
                   invoiced: InvoicedLookup | None, errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ingestionPolicy.lateInvoiced: events in an invoiced period of a meter that refuses them go to `errors`; those
    of a meter that ignores them lose its value (they count nothing there) and are returned."""
    guarded = [m for m in meters if m.policy.late_invoiced != "correct"]
    if not guarded or invoiced is None:
        return []
    ignored: list[dict[str, Any]] = []
    for n, (i, ev) in enumerate(events):
        for m in guarded:
            if not m.applies_to(ev) or (verdict := on_invoiced(m.policy, m.slug, invoiced(m.id, ev.subject, ev.time))) is None:
                continue
            if verdict[0] == "refuse":
                errors.append({"index": i, "field": "time", "meter": m.slug, "message": verdict[1]})
            else:
                values[n] = [v for v in values[n] if v[0] != m.id]
                ignored.append({"index": i, "source": ev.source, "id": ev.id, "meter": m.slug, "message": verdict[1]})
    return ignored


class _WireEvent(msgspec.Struct):
    """A CloudEvent's attributes as decode_common reads them from a request body (extension attributes skipped)."""

    id: str
    source: str
    type: str
    subject: str
    specversion: str
    time: str | None = None
    datacontenttype: str | None = None
    data: dict[str, Any] | None = None


# decode_common wraps the body in this many one-element arrays: msgspec then refuses nesting a few levels shallower
# than jsonx (simplejson) does (both stop at the interpreter's C recursion limit, msgspec a level or two deeper), so a
# body nested to the limit goes the full way and is refused as before (a 400 naming the body), never accepted here.
_NEST_MARGIN = 8


def _nested(t: Any) -> Any:
    for _ in range(_NEST_MARGIN):
        t = tuple[t]  # exactly one element per level: the body must be one JSON value
    return t


_DECODERS = {shape: msgspec.json.Decoder(_nested(t), float_hook=Decimal)  # numbers exact: int, or Decimal, never float
             for shape, t in (("one", _WireEvent), ("many", list[_WireEvent]), ("either", _WireEvent | list[_WireEvent]))}


def decode_common(body: str, shape: str, now: datetime) -> list[EventRow] | None:
    """The events of an HTTP request body, checked, straight from its text, when every one is of the common shape
    (CommonEvents) and the body is plain JSON of `shape` ("one" event, "many" in an array, "either"); None for any
    other body (malformed, a lone surrogate, nested to the parser's limit, an empty or oversized batch, any event
    of another shape), which then goes the full way: a JSON document (jsonx) whose every problem is listed."""
    try:
        doc = _DECODERS[shape].decode("[" * _NEST_MARGIN + body + "]" * _NEST_MARGIN)
    except Exception:  # malformed, a type or value the full path must judge, too deep...: the full path says what
        return None
    for _ in range(_NEST_MARGIN):
        doc = doc[0]
    events = doc if type(doc) is list else [doc]
    if not 0 < len(events) <= MAX_BATCH_EVENTS:
        return None
    # Data nested past MAX_DATA_DEPTH needs that many objects or arrays inside one event's data. The body holds at
    # least one per event, one per data and the batch's array; when the rest (brackets in strings counted too) are
    # fewer, no event's data can be that deep and none is measured.
    outer = len(events) + (type(doc) is list) + sum(1 for e in events if e.data is not None)
    checker = CommonEvents(now, deep=body.count("{") + body.count("[") - outer >= MAX_DATA_DEPTH)
    common = checker.row
    rows: list[EventRow] = []
    append = rows.append
    for i, e in enumerate(events):
        row = common(i, e.id, e.source, e.type, e.subject, e.specversion, e.datacontenttype, e.time, e.data)
        if row is None:
            return None
        append(row)
    return rows


@heap.paused()  # the batch's objects die with it: no collector scans of them (billow.heap)
def ingest_events(namespace: str, raws: list[Any], *, meta: MetaStore, bus: EventBus, now: datetime,
                  invoiced: InvoicedLookup | None = None, checked: bool = False) -> IngestResult:
    """Validate, value and publish a batch; `checked`: `raws` are the EventRows decode_common gave."""
    if len(raws) > MAX_BATCH_EVENTS:
        raise PayloadTooLarge(f"a batch holds at most {MAX_BATCH_EVENTS} events; this one has {len(raws)}")
    if not raws:
        return IngestResult(0)
    errors: list[dict[str, Any]] = []  # every problem of every event, of every kind, in one refusal
    rows = raws if checked else parse_rows(raws, now, errors)
    meters = meta.list_meters(namespace)
    values = check_against_meters(rows, meters, errors)
    ignored: list[dict[str, Any]] = []
    if any(m.policy.late_after is not None or (invoiced is not None and m.policy.late_invoiced != "correct")
           for m in meters):  # the rare policies that look at whole events: only then an object per event
        indexed = [(r[0], CloudEvent(r[1], r[2], r[3], r[4], r[5], r[6])) for r in rows]
        check_late(indexed, meters, now, errors)
        ignored = check_invoiced(indexed, meters, values, invoiced, errors)
        del indexed
    if errors:
        raise refused(errors)
    stamp = format_rfc3339(now)  # one ingestedAt for the whole batch
    # One record per partition per batch, carrying each event with the values just extracted (bus.batch_records);
    # one per event, keyed as ever (partition_key), on a bus that says so (KafkaBus: see per_event_records there).
    # `data` goes in as the object it is, encoded with its record. Times as epoch milliseconds, each distinct one
    # computed once (a datetime subtraction and division cost ten dict look-ups; events of a batch share times).
    epoch, ms = _EPOCH, _MS
    ticks: dict[datetime, int] = {}
    records: list[tuple[bytes, list[Any]]] = []
    append = records.append
    for (_, id_, source, type_, subject, when, data), v in zip(rows, values, strict=True):
        tick = ticks.get(when)
        if tick is None:
            tick = ticks[when] = (when - epoch) // ms
        append((f"{source}\x1f{id_}".encode(), [id_, source, type_, subject, tick, data, v]))
    accepted = len(rows)
    encoded = batch_records(stamp, [m.id for m in meters], records, per_event=getattr(bus, "per_event_records", False))
    # From here the batch is its records: its rows and values go before publishing, so that a collection while the bus
    # delivers (the in-process bus runs the sink inside publish) has thousands fewer live objects to scan.
    del rows, values, records, append
    bus.publish(namespace, encoded)
    return IngestResult(accepted, ignored)


def partition_for(key: bytes, partitions: int) -> int:
    return zlib.crc32(key) % partitions
