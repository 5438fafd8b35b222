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
from itertools import accumulate, compress, repeat
from operator import itemgetter
from typing import Any, Protocol

from billow import heap, jsonx
from billow.bus import BatchRecord, decode_batch
from billow.domain.events import EVENT_TIME_MAX, EVENT_TIME_MIN, CloudEvent, parse_event
from billow.domain.meters import Meter
from billow.domain.usage import EventColumns, MeterValue, StoredEvent, ValueColumns, from_ms
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
_MS = timedelta(milliseconds=1)
_MS_MIN = (EVENT_TIME_MIN - _EPOCH) // _MS  # event times a batch record may carry, as epoch milliseconds
_MS_MAX = (EVENT_TIME_MAX - _EPOCH) // _MS


class Pending:
    """A namespace's events of one delivery as the sink writes them: the raw events as columns (EventColumns), the
    values ingest carried for them (ValueColumns, `owners`: the position of each value's event), and per event the
    meters ingest valued it with (`seen`), None for an event of the older record shape (its CloudEvent in `bare`,
    by position), which is valued here. No object per event or value."""

    __slots__ = ("events", "values", "owners", "seen", "bare")

    def __init__(self) -> None:
        self.events = EventColumns()
        self.values = ValueColumns()
        self.owners: list[int] = []
        self.seen: list[frozenset[str] | None] = []
        self.bare: dict[int, CloudEvent] = {}

    def extend(self, other: Pending) -> None:
        n = len(self.events)
        for name in EventColumns.__slots__:
            getattr(self.events, name).extend(getattr(other.events, name))
        for name in ValueColumns.__slots__:
            getattr(self.values, name).extend(getattr(other.values, name))
        self.owners.extend([o + n for o in other.owners] if n else other.owners)
        self.seen.extend(other.seen)
        self.bare.update({p + n: e for p, e in other.bare.items()})

    def add_bare(self, event: CloudEvent, ingested_at: datetime) -> None:
        """An event of the older record shape (valued from its data when stored)."""
        ev = self.events
        self.bare[len(ev)] = event
        ev.ids.append(event.id)
        ev.sources.append(event.source)
        ev.types.append(event.type)
        ev.subjects.append(event.subject)
        ev.ms.append((event.time - _EPOCH) // _MS)
        ev.data.append(jsonx.dumps(event.data) if event.data is not None else "")
        ev.ingested_ms.append((ingested_at - _EPOCH) // _MS)
        ev.errors.append("")
        self.seen.append(None)


def decode_batch_events(batch: BatchRecord) -> Pending:
    """The events of a batch record (bus.batch_records) with the values ingest extracted, as columns: nothing is
    parsed again but the record's own shape (typed decoding), and the exact decimal values; times stay epoch
    milliseconds (range-checked) from the record to the insert. Any invalid event makes the record a poison record
    (ValueError)."""
    ingested = (parse_rfc3339(batch.ingestedAt, "ingestedAt") - _EPOCH) // _MS
    out = Pending()
    rows = batch.events
    if not rows:
        return out
    ids, sources, types, subjects, ms, datas, carried = zip(*rows, strict=True)
    if not (all(ids) and all(sources) and all(types) and all(subjects)) or min(ms) < _MS_MIN or max(ms) > _MS_MAX:
        for id_, source, type_, subject, when, *_ in rows:
            if not (id_ and source and type_ and subject and _MS_MIN <= when <= _MS_MAX):
                raise ValueError(f"event {source!r}/{id_!r}: not a valid event of a batch record")
    ev = out.events
    ev.ids, ev.sources, ev.types, ev.subjects, ev.ms = list(ids), list(sources), list(types), list(subjects), list(ms)
    ev.data = list(map(str, datas, repeat("utf-8")))  # (msgspec.Raw is a buffer: decoded without a copy)
    if "null" in ev.data:
        ev.data = ["" if d == "null" else d for d in ev.data]
    ev.ingested_ms = [ingested] * len(rows)
    ev.errors = [""] * len(rows)
    out.seen = [frozenset(batch.meters)] * len(rows)
    vals = out.values
    if all(len(c) == 1 for c in carried):  # the usual: one meter per event type
        out.owners = list(range(len(rows)))
        mids, texts, value_strs, groups = zip(*map(itemgetter(0), carried), strict=True)
        vals.subjects, vals.ms, vals.sources, vals.event_ids = (list(ev.subjects), list(ev.ms), list(ev.sources),
                                                                list(ev.ids))
    else:
        out.owners = [i for i, c in enumerate(carried) for _ in c]
        flat = [v for c in carried for v in c]
        mids, texts, value_strs, groups = zip(*flat, strict=True) if flat else ((), (), (), ())
        vals.subjects = [ev.subjects[i] for i in out.owners]
        vals.ms = [ev.ms[i] for i in out.owners]
        vals.sources = [ev.sources[i] for i in out.owners]
        vals.event_ids = [ev.ids[i] for i in out.owners]
    vals.meter_ids, vals.value_strs, vals.group_bys = list(mids), list(value_strs), list(groups)
    vals.values = list(map(Decimal, texts))  # exact, whatever the context's precision
    if not all(map(Decimal.is_finite, vals.values)):
        for i, value in enumerate(vals.values):
            if not value.is_finite():
                raise ValueError(f"event {vals.sources[i]!r}/{vals.event_ids[i]!r}: value {texts[i]!r} of meter "
                                 f"{mids[i]} is not a number")
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
    by_ns: dict[str, Pending] = {}
    for rec in records:
        try:
            batch_record = decode_batch(rec.value)
            if batch_record is None:  # a record of the older shape: one CloudEvent
                event, ingested_at = decode_record(rec)
                entries = Pending()
                entries.add_bare(event, ingested_at)
            else:
                entries = decode_batch_events(batch_record)
        except Exception as exc:  # a poison record: report it, keep going
            result.dead_letters.append({"where": rec.where, "reason": str(exc)[:500],
                                        "value": rec.value[:4096].decode("utf-8", "replace")})
            continue
        pending = by_ns.get(rec.namespace)
        if pending is None:
            by_ns[rec.namespace] = entries
        else:
            pending.extend(entries)
    for namespace, pending in by_ns.items():
        result.stored += _store(namespace, pending, usage, meta, result, late_before, on_late, listener)
    if result.dead_letters:
        dead_letter(result.dead_letters)
    return result


def _take(p: Pending, keep: Sequence[bool]) -> Pending:
    """The events of `p` whose `keep` is true, with their values."""
    out = Pending()
    out.events = p.events.take(keep)
    vkeep = [keep[o] for o in p.owners]
    out.values = p.values.take(vkeep)
    at = list(accumulate(keep))  # an event's position among those kept, plus one
    out.owners = [at[o] - 1 for o in compress(p.owners, vkeep)]
    out.seen = list(compress(p.seen, keep))
    out.bare = {at[i] - 1: e for i, e in p.bare.items() if keep[i]}
    return out


def _store(namespace: str, pending: Pending, usage: UsageStore, meta: MetaStore, result: SinkResult,
           late_before: datetime | None = None, on_late: LateUsage | None = None,
           listener: UsageListener | None = None) -> int:
    keys = list(zip(pending.events.sources, pending.events.ids, strict=True))
    if len(set(keys)) < len(keys):  # copies of an event in one delivery: the first one counts
        first: set[tuple[str, str]] = set()
        keep = []
        for k in keys:
            keep.append(k not in first)
            first.add(k)
        result.duplicates += len(keys) - len(first)
        pending = _take(pending, keep)
        keys = list(compress(keys, keep))
    present, begun = usage.written_keys(namespace, keys)
    result.duplicates += len(present)
    if present:
        keep = [k not in present for k in keys]
        pending = _take(pending, keep)
        keys = list(compress(keys, keep))
    if not keys:
        return 0
    events, values = pending.events, pending.values
    meters = meta.list_meters(namespace)
    current = {m.id for m in meters}
    accepting = [m for m in meters if m.policy.invalid_values == "accept"]  # ingestionPolicy (issue 21)
    # Per set of meters ingest valued with: the event types whose events need more than the values carried (usually
    # none): a meter created since, that must read `data`, or one that accepts invalid values (the event's
    # validation error, for GET /api/v1/events). Events of the older record shape are valued here, all of them.
    slow_types = {seen: {m.event_type for m in meters if m.id not in seen}
                  | {m.event_type for m in accepting if m.id in seen}
                  for seen in set(pending.seen) if seen is not None}
    slow = [i for i, (seen, type_) in enumerate(zip(pending.seen, events.types, strict=True))
            if seen is None or type_ in slow_types[seen]] if pending.bare or any(slow_types.values()) else []
    gone = any(not seen <= current for seen in slow_types)  # a meter ingest valued with was deleted since
    if slow or gone:
        slow_keys = {keys[i] for i in slow}
        value_keys = list(zip(values.sources, values.event_ids, strict=True))
        carried_at: dict[tuple[str, str], list[int]] = {}
        for j, k in enumerate(value_keys):
            if k in slow_keys:
                carried_at.setdefault(k, []).append(j)
        since: dict[tuple[frozenset[str], str], list[Meter]] = {}
        extra: list[MeterValue] = []
        for i in slow:
            seen = pending.seen[i]
            error = ""
            if seen is None:
                vals, error = meter_values(pending.bare[i], meters)
            else:  # ingest's values, for the meters that still exist; meters created since read `data`
                s = events[i]
                missing = since.get((seen, s.event.type))
                if missing is None:
                    missing = since[(seen, s.event.type)] = [
                        m for m in meters if m.id not in seen and m.event_type == s.event.type]
                vals = [v for v in values.rows(carried_at.get(keys[i], ())) if v.meter_id in current]
                if missing:
                    more, error = meter_values(_with_data(s), missing)
                    vals = vals + more
                unvalued = [m for m in accepting if m.id in seen and m.applies_to(s.event)
                            and all(v.meter_id != m.id for v in vals)] if accepting else []
                if unvalued:  # ingest let the event in without a value for these meters: why, for GET /api/v1/events
                    error = error or meter_values(_with_data(s), unvalued)[1]
            extra.extend(vals)
            if error:
                events.errors[i] = error
        values = values.take([m in current and k not in slow_keys
                              for m, k in zip(values.meter_ids, value_keys, strict=True)])
        for v in extra:
            values.append(v)
    valued = set(zip(values.sources, values.event_ids, strict=True))
    result.unmatched += len(keys) - len(valued)
    repaired: set[str] = set()
    subjects = set(events.subjects)  # every value, repair and late value below is of these
    if listener is not None:
        listener.usage_writing(namespace, subjects)
    try:
        values = _values_to_write(namespace, events, keys, values, valued, begun, meters, usage, repaired)
        usage.write(namespace, values, events)
        if listener is not None:
            listener.usage_added(namespace, values, repaired)
        late_values = _values_for_new_meters(namespace, events, meters, usage, meta)
        if listener is not None:
            listener.usage_added(namespace, late_values, set())
    except BaseException:  # some of it may be stored: what it touched must be read again
        if listener is not None:
            listener.usage_added(namespace, (), repaired | subjects)
        raise
    finally:
        if listener is not None:
            listener.usage_written(namespace, subjects)
    result.unmatched -= len({(v.source, v.event_id) for v in late_values} - valued)
    if on_late is not None and late_before is not None:
        _report_late(namespace, values, late_values, late_before, on_late)
    return len(keys)


def _values_to_write(namespace: str, events: EventColumns, keys: list[tuple[str, str]], values: ValueColumns,
                     valued: set[tuple[str, str]], begun: set[tuple[str, str]], meters: Sequence[Meter],
                     usage: UsageStore, repaired: set[str]) -> ValueColumns:
    """The meter values to write with the raw events (`keys`, in the order of `events`): those of events whose values
    are not stored yet. Values found without their raw event (a write that died in between) are not written again:
    their rollups are repaired first. Only valued events of which a write began (`begun`: written_keys) can have
    values stored; the others were never written, so the values scan runs only after a crash. It looks at every time,
    not only this copy's: a client resending an event it got no answer for may give it another time (a producer that
    stamps its events as it sends them), and the dead write's values, at the first copy's time, count once (looked
    for within this copy's times, they were missed and the values stored again: an event counted twice, the Stripe
    kill loop's usage 110.45 where 89.15 was sent). The subjects of the events repaired join `repaired` (their stored
    sums changed)."""
    at = {k: i for i, k in enumerate(keys) if k in begun and k in valued} if begun else {}
    if not at:
        return values
    half_done = usage.valued_keys(namespace, sorted({m.id for m in meters}), None, None, list(at))
    repaired.update(events.subjects[at[k]] for k in half_done)
    usage.repair(namespace, sorted(half_done))  # before the raw events: a crash in it is retried on resend
    if not half_done:
        return values
    return values.take([k not in half_done for k in zip(values.sources, values.event_ids, strict=True)])


def _report_late(namespace: str, values: ValueColumns, more: Sequence[MeterValue], late_before: datetime,
                 on_late: LateUsage) -> None:
    """Tell `on_late` each subject's earliest stored usage older than `late_before`, if any."""
    limit = -((_EPOCH - late_before) // _MS)  # a value at epoch ms t is older when t < limit (late_before, rounded up)
    first: dict[str, int] = {}
    if values.ms and min(values.ms) < limit:
        for s, t in zip(values.subjects, values.ms, strict=True):
            if t < limit and t < first.get(s, limit):
                first[s] = t
    earliest = {s: from_ms(t) for s, t in first.items()}
    for v in more:
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
