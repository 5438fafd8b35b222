"""Usage sink: turn a delivered batch of event records into stored usage, exactly once.

At-least-once delivery means a batch may come again, whole or in part, also after a crash between the two
writes. The store writes meter values first and raw events second, so per (source, id):
  raw event stored       -> done before, skip;
  values stored, no raw  -> the earlier write died in between: rebuild the rollups those values fall in (the
                            views' parts may not have landed), then store the raw event only;
  neither                -> store both.
Records that cannot be processed go to the dead-letter callback with the reason; they never block the rest."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from billow import heap, jsonx
from billow.bus import BatchRecord, decode_batch
from billow.domain.events import EVENT_TIME_MAX, EVENT_TIME_MIN, CloudEvent, parse_event
from billow.domain.meters import Meter
from billow.domain.usage import MeterValue, StoredEvent
from billow.ports import MetaStore, UsageStore
from billow.timeutil import parse_rfc3339


@dataclass(slots=True)
class SinkRecord:
    namespace: str
    value: bytes
    where: str  # topic/partition/offset, for the dead-letter report


@dataclass(slots=True)
class SinkResult:
    stored: int = 0
    duplicates: int = 0
    unmatched: int = 0  # stored raw events that no meter counts (kept, so a later meter can backfill them)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)


def meter_values(event: CloudEvent, meters: Sequence[Meter]) -> tuple[list[MeterValue], str]:
    """Values of one event for every meter it feeds, and the first validation error (if any)."""
    out: list[MeterValue] = []
    error = ""
    for m in meters:
        if not m.applies_to(event):
            continue
        try:
            value, text, groups = m.extract(event)
        except ValueError as exc:
            error = error or f"meter {m.slug}: {exc}"
            continue
        out.append(MeterValue(m.id, event.subject, event.time, value, text, groups, event.source, event.id))
    return out, error


def decode_record(record: SinkRecord) -> tuple[CloudEvent, datetime]:
    raw = jsonx.loads(record.value)
    errors: list[dict[str, Any]] = []
    ingested_raw = raw.get("ingestedAt") if isinstance(raw, dict) else None
    ingested_at = parse_rfc3339(ingested_raw, "ingestedAt") if isinstance(ingested_raw, str) else None
    if ingested_at is None:
        raise ValueError("record has no ingestedAt")
    event = parse_event(raw, None, ingested_at, errors)
    if event is None:
        raise ValueError("not a CloudEvent: " + "; ".join(f"{e['field']}: {e['message']}" for e in errors))
    return event, ingested_at


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Values a batch record carries for an event, and the ids of the meters ingest valued it with.
Carried = tuple[list[MeterValue], frozenset[str]]


def decode_batch_events(batch: BatchRecord) -> list[tuple[StoredEvent, Carried]]:
    """The events of a batch record (bus.batch_records) with the values ingest extracted: nothing is parsed again
    but the record's own shape (typed decoding), times and exact decimal values."""
    ingested_at = parse_rfc3339(batch.ingestedAt, "ingestedAt")
    seen = frozenset(batch.meters)
    out: list[tuple[StoredEvent, Carried]] = []
    times: dict[int, datetime] = {}  # epoch ms -> its datetime, made (and range-checked) once per distinct time
    for id_, source, type_, subject, ms, data, carried in batch.events:
        when = times.get(ms)
        if when is None:
            when = _EPOCH + timedelta(milliseconds=ms)
            if not EVENT_TIME_MIN <= when <= EVENT_TIME_MAX:
                raise ValueError(f"event {source!r}/{id_!r}: not a valid event of a batch record")
            times[ms] = when
        if not (id_ and source and type_ and subject):
            raise ValueError(f"event {source!r}/{id_!r}: not a valid event of a batch record")
        raw = bytes(data)
        values = []
        for mid, text, value_str, groups in carried:
            value = Decimal(text)
            if not value.is_finite():
                raise ValueError(f"event {source!r}/{id_!r}: value {text!r} of meter {mid} is not a number")
            values.append(MeterValue(mid, subject, when, value, value_str, groups, source, id_))
        out.append((StoredEvent(CloudEvent(id_, source, type_, subject, when, None), ingested_at, "",
                                "" if raw == b"null" else raw.decode()), (values, seen)))
    return out


def _with_data(s: StoredEvent) -> CloudEvent:
    """The event with its `data` decoded, for a meter that must read it (one ingest did not value it with)."""
    if s.event.data is None and s.data_json:
        return replace(s.event, data=jsonx.loads(s.data_json))
    return s.event


LateUsage = Callable[[str, dict[str, datetime]], None]
# Usage older than this when it is stored is "late": balance snapshots are only taken at resets older than this,
# so only late usage can make one stale (services.balances).
LATE_AFTER = timedelta(hours=1)


class UsageListener(Protocol):
    """Hears of every change to the stored usage (services.balances.BalanceCache): `usage_writing` before a write
    begins (its events' subjects), `usage_added` right after each part of it is stored (the meter values the stored
    sums gained, each once, and the subjects whose sums changed otherwise and must be read again; after a write that
    fails, every subject of it as changed), `usage_written` once the write is over, whatever happened."""

    def usage_writing(self, namespace: str, subjects: set[str]) -> None: ...

    def usage_added(self, namespace: str, values: Sequence[MeterValue], changed: set[str]) -> None: ...

    def usage_written(self, namespace: str, subjects: set[str]) -> None: ...


@heap.paused()  # the batch's objects die with it: no collector scans of them (billow.heap)
def sink_batch(records: Sequence[SinkRecord], *, usage: UsageStore, meta: MetaStore,
               dead_letter: Callable[[list[dict[str, Any]]], None], late_before: datetime | None = None,
               on_late: LateUsage | None = None, listener: UsageListener | None = None) -> SinkResult:
    """`on_late(namespace, {subject: earliest time})` hears of stored usage older than `late_before`, after it
    is written: balance snapshots taken past that time are stale. `listener` hears of every change to the stored
    usage (UsageListener)."""
    result = SinkResult()
    by_ns: dict[str, dict[tuple[str, str], StoredEvent]] = {}
    carried_ns: dict[str, dict[tuple[str, str], Carried]] = {}
    for rec in records:
        entries: Sequence[tuple[StoredEvent, Carried | None]]
        try:
            batch_record = decode_batch(rec.value)
            if batch_record is None:  # a record of the older shape: one CloudEvent
                event, ingested_at = decode_record(rec)
                entries = [(StoredEvent(event, ingested_at), None)]
            else:
                entries = decode_batch_events(batch_record)
        except Exception as exc:  # a poison record: report it, keep going
            result.dead_letters.append({"where": rec.where, "reason": str(exc)[:500],
                                        "value": rec.value[:4096].decode("utf-8", "replace")})
            continue
        batch = by_ns.setdefault(rec.namespace, {})
        carried = carried_ns.setdefault(rec.namespace, {})
        for stored_event, pre in entries:
            key = (stored_event.event.source, stored_event.event.id)
            if key in batch:
                result.duplicates += 1
                continue
            batch[key] = stored_event
            if pre is not None:
                carried[key] = pre
    for namespace, items in by_ns.items():
        result.stored += _store(namespace, items, usage, meta, result, late_before, on_late, carried_ns[namespace],
                                listener)
    if result.dead_letters:
        dead_letter(result.dead_letters)
    return result


def _store(namespace: str, items: dict[tuple[str, str], StoredEvent], usage: UsageStore, meta: MetaStore,
           result: SinkResult, late_before: datetime | None = None, on_late: LateUsage | None = None,
           carried: dict[tuple[str, str], Carried] | None = None, listener: UsageListener | None = None) -> int:
    keys = list(items)
    present, begun = usage.written_keys(namespace, keys)
    result.duplicates += len(present)
    fresh = [(k, items[k]) for k in keys if k not in present] if present else list(items.items())
    if not fresh:
        return 0
    meters = meta.list_meters(namespace)
    stored: list[StoredEvent] = []
    owners: dict[tuple[str, str], list[MeterValue]] = {}
    current = {m.id for m in meters}
    accepting = [m for m in meters if m.policy.invalid_values == "accept"]  # ingestionPolicy (issue 21)
    # Per (meters ingest valued with, event type): the meters created since, that must read `data` (usually none).
    since: dict[tuple[frozenset[str], str], list[Meter]] = {}
    for key, s in fresh:
        pre = carried.get(key) if carried else None
        if pre is None:
            vals, error = meter_values(s.event, meters)
        else:  # ingest's values, for the meters that still exist; meters created since read `data`
            missing = since.get((pre[1], s.event.type))
            if missing is None:
                missing = since[(pre[1], s.event.type)] = [
                    m for m in meters if m.id not in pre[1] and m.event_type == s.event.type]
            vals = [v for v in pre[0] if v.meter_id in current]
            error = ""
            if missing:
                more, error = meter_values(_with_data(s), missing)
                vals = vals + more
            unvalued = [m for m in accepting if m.id in pre[1] and m.applies_to(s.event)
                        and all(v.meter_id != m.id for v in vals)] if accepting else []
            if unvalued:  # ingest let the event in without a value for these meters: why, for GET /api/v1/events
                error = error or meter_values(_with_data(s), unvalued)[1]
        owners[key] = vals
        stored.append(replace(s, validation_error=error) if error else s)
    valued_candidates = [k for k, v in owners.items() if v]
    result.unmatched += len(owners) - len(valued_candidates)
    repaired: set[str] = set()
    subjects = {s.event.subject for s in stored}  # every value, repair and late value below is of these
    if listener is not None:
        listener.usage_writing(namespace, subjects)
    try:
        values = _values_to_write(namespace, items, owners, [k for k in valued_candidates if k in begun], meters,
                                  usage, repaired)
        usage.write(namespace, values, stored)
        if listener is not None:
            listener.usage_added(namespace, values, repaired)
        late_values = _values_for_new_meters(namespace, stored, meters, usage, meta)
        if listener is not None:
            listener.usage_added(namespace, late_values, set())
    except BaseException:  # some of it may be stored: what it touched must be read again
        if listener is not None:
            listener.usage_added(namespace, (), repaired | subjects)
        raise
    finally:
        if listener is not None:
            listener.usage_written(namespace, subjects)
    result.unmatched -= len({(v.source, v.event_id) for v in late_values} - set(valued_candidates))
    values = values + late_values
    if on_late is not None and late_before is not None:
        _report_late(namespace, values, late_before, on_late)
    return len(stored)


def _values_to_write(namespace: str, items: dict[tuple[str, str], StoredEvent],
                     owners: dict[tuple[str, str], list[MeterValue]], suspects: list[tuple[str, str]],
                     meters: Sequence[Meter], usage: UsageStore, repaired: set[str]) -> list[MeterValue]:
    """The meter values to write with the raw events: those of events whose values are not stored yet. Values found
    without their raw event (a write that died in between) are not written again: their rollups are repaired
    first. Only `suspects` (valued events of which a write began: written_keys) can have values stored; the
    others were never written, so the values scan runs only after a crash. The subjects of the events repaired join
    `repaired` (their stored sums changed)."""
    values: list[MeterValue] = []
    half_done: set[tuple[str, str]] = set()
    if suspects:
        times = [items[k].event.time for k in suspects]
        half_done = usage.valued_keys(namespace, sorted({m.id for m in meters}), min(times), max(times), suspects)
        repaired.update(items[k].event.subject for k in half_done)
        usage.repair(namespace, sorted(half_done))  # before the raw events: a crash in it is retried on resend
    for k, vals in owners.items():
        if k not in half_done:
            values.extend(vals)
    return values


def _report_late(namespace: str, values: Sequence[MeterValue], late_before: datetime, on_late: LateUsage) -> None:
    """Tell `on_late` each subject's earliest stored usage older than `late_before`, if any."""
    earliest: dict[str, datetime] = {}
    for v in values:
        if v.time < late_before and (v.subject not in earliest or v.time < earliest[v.subject]):
            earliest[v.subject] = v.time
    if earliest:
        on_late(namespace, earliest)


def _values_for_new_meters(namespace: str, stored: Sequence[StoredEvent], seen: Sequence[Meter],
                           usage: UsageStore, meta: MetaStore) -> list[MeterValue]:
    """Close the gap between this batch's meter list and its write. A meter created (and backfilled) by
    another container after the list was read may have scanned the raw events before this batch wrote them,
    so those events would have no value of it. Looking at the meters again after the write closes it: a
    meter committed before this second look is valued here; one committed after it starts its backfill
    after this write, so the backfill finds these events. Both sides check `valued_keys` and write under
    meta.meter_lock, so an event gets at most one value per meter."""
    known = {m.id for m in seen}
    added: list[MeterValue] = []
    for meter in meta.list_meters(namespace):
        if meter.id in known:
            continue
        vals = [v for s in stored if s.event.type == meter.event_type for v in meter_values(_with_data(s), [meter])[0]]
        if not vals:
            continue
        with meta.meter_lock(namespace, meter.id):
            done = usage.valued_keys(namespace, [meter.id], min(v.time for v in vals), max(v.time for v in vals),
                                     [(v.source, v.event_id) for v in vals])
            vals = [v for v in vals if (v.source, v.event_id) not in done]
            if vals:
                usage.write(namespace, vals, [])
        added.extend(vals)
    return added


def backfill_meter(namespace: str, meter: Meter, usage: UsageStore, page: int = 5000,
                   lock: Callable[[], AbstractContextManager[Any]] = nullcontext) -> int:
    """Compute a new meter's values from raw events stored before it existed. `lock` (meta.meter_lock of
    this meter, across processes) is held from each page's `valued_keys` check to its write."""
    after: tuple[str, str] | None = None
    total = 0
    while True:
        events = usage.scan_events(namespace, meter.event_type, after, page)
        if not events:
            return total
        values: list[MeterValue] = []
        for ev in events:
            vals, _ = meter_values(ev, [meter])
            values.extend(vals)
        if values:  # idempotent: a re-run (or a racing sink) never adds a second value for one event
            with lock():
                done = usage.valued_keys(namespace, [meter.id], min(v.time for v in values),
                                         max(v.time for v in values), [(v.source, v.event_id) for v in values])
                values = [v for v in values if (v.source, v.event_id) not in done]
                usage.repair(namespace, sorted(done))  # a re-run after a crash: the rollups may lack those values
                if values:
                    usage.write(namespace, values, [])
        total += len(values)
        after = events[-1].key
