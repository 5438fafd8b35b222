"""Usage records and meter queries: the shapes the usage stores speak, and the final value of a row."""

from __future__ import annotations

import decimal
import re
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import compress
from typing import Any, overload

from billow.domain.events import CloudEvent
from billow.exact import EXACT

AVG_SCALE = Decimal(1).scaleb(-18)


@dataclass(slots=True, frozen=True)
class MeterValue:
    """One event's contribution to one meter."""

    meter_id: str
    subject: str
    time: datetime
    value: Decimal
    value_str: str
    group_by: dict[str, str]
    source: str
    event_id: str


@dataclass(slots=True, frozen=True)
class StoredEvent:
    event: CloudEvent
    ingested_at: datetime
    validation_error: str = ""
    data_json: str | None = None  # `data` as JSON text, when it came so (a batch record): event.data is then None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    """The UTC instant `ms` epoch milliseconds name."""
    return _EPOCH + timedelta(milliseconds=ms)


class ValueColumns(Sequence[MeterValue]):
    """Meter values as columns, one list per MeterValue field, times as epoch milliseconds (`ms`): a batch of the sink
    as the store inserts it, with no object per value. It reads as a sequence of MeterValue, each made when read, so
    every UsageStore and UsageListener takes it as it takes a list of them."""

    __slots__ = ("meter_ids", "subjects", "ms", "values", "value_strs", "group_bys", "sources", "event_ids")

    def __init__(self) -> None:
        self.meter_ids: list[str] = []
        self.subjects: list[str] = []
        self.ms: list[int] = []
        self.values: list[Decimal] = []
        self.value_strs: list[str] = []
        self.group_bys: list[dict[str, str]] = []
        self.sources: list[str] = []
        self.event_ids: list[str] = []

    def __len__(self) -> int:
        return len(self.meter_ids)

    @overload
    def __getitem__(self, i: int) -> MeterValue: ...

    @overload
    def __getitem__(self, i: slice) -> list[MeterValue]: ...

    def __getitem__(self, i: int | slice) -> MeterValue | list[MeterValue]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return MeterValue(self.meter_ids[i], self.subjects[i], from_ms(self.ms[i]), self.values[i], self.value_strs[i],
                          self.group_bys[i], self.sources[i], self.event_ids[i])

    def __iter__(self) -> Iterator[MeterValue]:
        return iter(self.rows(range(len(self))))

    def rows(self, positions: Iterable[int]) -> list[MeterValue]:
        """The values at these positions as MeterValues (one datetime per distinct time)."""
        times: dict[int, datetime] = {}
        out = []
        for i in positions:
            ms = self.ms[i]
            when = times.get(ms)
            if when is None:
                when = times[ms] = from_ms(ms)
            out.append(MeterValue(self.meter_ids[i], self.subjects[i], when, self.values[i], self.value_strs[i],
                                  self.group_bys[i], self.sources[i], self.event_ids[i]))
        return out

    def append(self, v: MeterValue) -> None:
        self.meter_ids.append(v.meter_id)
        self.subjects.append(v.subject)
        self.ms.append((v.time - _EPOCH) // _MS)
        self.values.append(v.value)
        self.value_strs.append(v.value_str)
        self.group_bys.append(v.group_by)
        self.sources.append(v.source)
        self.event_ids.append(v.event_id)

    def take(self, keep: Sequence[bool]) -> ValueColumns:
        """The values whose `keep` is true, in order."""
        out = ValueColumns()
        for name in ValueColumns.__slots__:
            setattr(out, name, list(compress(getattr(self, name), keep)))
        return out

    def latest_by_subject(self) -> dict[str, datetime]:
        """Each subject's latest value time."""
        latest: dict[str, int] = {}
        get = latest.get
        for s, ms in zip(self.subjects, self.ms, strict=True):
            if ms > get(s, -1):
                latest[s] = ms
        return {s: from_ms(ms) for s, ms in latest.items()}

    def by_subject(self, subjects: Container[str]) -> dict[str, list[MeterValue]]:
        """The values of these subjects as MeterValues, by subject (no object made for any other value)."""
        at: dict[str, list[int]] = {}
        for i, s in enumerate(self.subjects):
            if s in subjects:
                at.setdefault(s, []).append(i)
        return {s: self.rows(positions) for s, positions in at.items()}


def latest_by_subject(values: Sequence[MeterValue]) -> dict[str, datetime]:
    """Each subject's latest value time (ValueColumns: read from its columns)."""
    if isinstance(values, ValueColumns):
        return values.latest_by_subject()
    latest: dict[str, datetime] = {}
    for v in values:
        t = latest.get(v.subject)
        if t is None or v.time > t:
            latest[v.subject] = v.time
    return latest


def values_by_subject(values: Sequence[MeterValue], subjects: Container[str]) -> dict[str, list[MeterValue]]:
    """The values of these subjects, by subject (ValueColumns: only theirs are made)."""
    if isinstance(values, ValueColumns):
        return values.by_subject(subjects)
    out: dict[str, list[MeterValue]] = {}
    for v in values:
        if v.subject in subjects:
            out.setdefault(v.subject, []).append(v)
    return out


class EventColumns(Sequence[StoredEvent]):
    """Stored events as columns (the raw events a batch writes), times as epoch milliseconds, `data` as its JSON text
    ("" when the event has none): no object per event. It reads as a sequence of StoredEvent (data_json set, data
    left to decode), each made when read."""

    __slots__ = ("ids", "sources", "types", "subjects", "ms", "data", "ingested_ms", "errors")

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.sources: list[str] = []
        self.types: list[str] = []
        self.subjects: list[str] = []
        self.ms: list[int] = []
        self.data: list[str] = []
        self.ingested_ms: list[int] = []
        self.errors: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, i: int) -> StoredEvent: ...

    @overload
    def __getitem__(self, i: slice) -> list[StoredEvent]: ...

    def __getitem__(self, i: int | slice) -> StoredEvent | list[StoredEvent]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return StoredEvent(CloudEvent(self.ids[i], self.sources[i], self.types[i], self.subjects[i], from_ms(self.ms[i]),
                                      None), from_ms(self.ingested_ms[i]), self.errors[i], self.data[i])

    def take(self, keep: Sequence[bool]) -> EventColumns:
        """The events whose `keep` is true, in order."""
        out = EventColumns()
        for name in EventColumns.__slots__:
            setattr(out, name, list(compress(getattr(self, name), keep)))
        return out


@dataclass(slots=True)
class GroupFilter:
    """advancedMeterGroupByFilters for one key (OpenMeter FilterString, string comparisons)."""

    key: str
    op: str  # $eq $ne $in $nin $like $nlike $ilike $nilike $gt $gte $lt $lte
    value: Any


def _like(pattern: str, value: str, ci: bool) -> bool:
    # SQL LIKE: % any run, _ one character, backslash escapes.
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.fullmatch("".join(out), value, re.S | (re.I if ci else 0)) is not None


_OPS = {
    "$eq": lambda v, p: v == p, "$ne": lambda v, p: v != p,
    "$in": lambda v, p: v in p, "$nin": lambda v, p: v not in p,
    "$like": lambda v, p: _like(p, v, False), "$nlike": lambda v, p: not _like(p, v, False),
    "$ilike": lambda v, p: _like(p, v, True), "$nilike": lambda v, p: not _like(p, v, True),
    "$gt": lambda v, p: v.encode() > p.encode(), "$gte": lambda v, p: v.encode() >= p.encode(),
    "$lt": lambda v, p: v.encode() < p.encode(), "$lte": lambda v, p: v.encode() <= p.encode(),
}


def matches(filters: list[list[GroupFilter]], subject: str, groups: dict[str, str]) -> bool:
    """Whether a value of `subject` with group-by values `groups` passes `filters` (an OR of ANDs), as the usage
    stores filter: the twin uses it, and the balance cache for usage it is told of."""
    if not filters:
        return True
    return any(
        all(_OPS[f.op](subject if f.key == "subject" else groups.get(f.key, ""), f.value) for f in conj)
        for conj in filters
    )


@dataclass(slots=True)
class UsageQuery:
    namespace: str
    meter_id: str
    aggregation: str
    start: datetime | None  # inclusive
    end: datetime | None  # inclusive (OpenMeter v1 semantics)
    window_size: str | None
    window_tz: str
    subjects: list[str] | None
    group_by: list[str]  # meter group-by keys to split by ("subject" handled separately)
    by_subject: bool
    subject_customers: dict[str, str] | None  # subject -> customer id, when grouping/filtering by customer
    filters: list[list[GroupFilter]] = field(default_factory=list)  # OR of ANDs
    # window_size "BOUNDS": one window per [bounds[i], bounds[i+1]), whole UTC minutes (balance segments).
    bounds: list[datetime] | None = None
    # With BOUNDS, on a UNIQUE_COUNT meter, without groups: each window's `uniq` counts the distinct values from the
    # last of these instants at or before its start (a run) through its end, not its own alone.
    running_from: list[datetime] | None = None


@dataclass(slots=True)
class AggRow:
    window_start: datetime | None
    subject: str | None
    customer_id: str | None
    groups: dict[str, str]
    sum: Decimal
    count: int
    min: Decimal | None
    max: Decimal | None
    uniq: int
    latest: Decimal | None
    first_time: datetime | None = None
    last_time: datetime | None = None


def final_value(aggregation: str, row: AggRow) -> Decimal:
    """The meter value of an aggregated row. AVG is rounded half-even to 18 decimal places (the store's scale)."""
    if aggregation == "SUM":
        return row.sum
    if aggregation == "COUNT":
        return Decimal(row.count)
    if aggregation == "UNIQUE_COUNT":
        return Decimal(row.uniq)
    if aggregation == "AVG":
        if row.count == 0:
            return Decimal(0)
        with decimal.localcontext(EXACT) as ctx:
            ctx.traps[decimal.Inexact] = False
            return (row.sum / Decimal(row.count)).quantize(AVG_SCALE, rounding=decimal.ROUND_HALF_EVEN)
    if aggregation == "MIN":
        return row.min if row.min is not None else Decimal(0)
    if aggregation == "MAX":
        return row.max if row.max is not None else Decimal(0)
    if aggregation == "LATEST":
        return row.latest if row.latest is not None else Decimal(0)
    raise ValueError(aggregation)


# ---------------------------------------------------------------------------------------------------------
# Rated sums: several SUM meters priced per group and added up to coarser lines in the store (the LLM cost
# report's tokens x prices), so no Python work per (window, subject, group) row.

RateKey = tuple[datetime | None, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class Rating:
    """How `UsageStore.rated_sums` prices the rows `sum_meters` would return and adds them up.

    A row's quantities are integer combinations of its meters' sums (`forms`: one tuple of coefficients, one per
    meter, per quantity). Its rates are chosen by its window and its first `by` group values: `rates` gives one
    rate per quantity (None: this rate group has no rate for that quantity) or None (no rate at all). A row is
    rated when it has rates, none of the `nonnegative` quantities is below zero and every quantity without a
    rate is zero. Rated rows are added up per (window, subject, customer, the group values at `shown`); with
    `per_window` False, per (subject, customer, shown values) over every window (still rated window by window;
    the line's window_start is None).

    `key_meter`: the meter whose values, as a rule, every row has (an `llm` event's input tokens): a store may
    look for the rate keys among its values alone, fewer rows to read; a key only other meters have is found when
    the rows are read and costs the store one more read, never a wrong line."""

    by: int
    forms: tuple[tuple[int, ...], ...]
    nonnegative: tuple[int, ...]
    shown: tuple[int, ...]
    rates: Callable[[datetime | None, tuple[str, ...]], tuple[Decimal | None, ...] | None]
    key_meter: int | None = None
    per_window: bool = True


@dataclass(slots=True)
class RatedLine:
    window_start: datetime | None  # None: no windows, or a line over every window (Rating.per_window False)
    subject: str | None
    customer_id: str | None
    groups: tuple[str, ...]  # the values at Rating.shown
    rate_keys: list[tuple[str, ...]]  # the first `by` group values of its rated rows, ascending
    sums: list[Decimal]  # each meter's sum over its rated rows
    amounts: list[Decimal]  # per quantity: the sum of quantity x rate over its rated rows (exact)


@dataclass(slots=True)
class RatedSums:
    lines: list[RatedLine]  # in the order sum_meters lists their first row
    unrated: list[tuple[Any, ...]]  # rows as sum_meters returns them, in its order


def rate_keys_of(rows: list[tuple[Any, ...]], by: int) -> list[RateKey]:
    """The distinct rate keys of sum_meters rows, in order."""
    return list(dict.fromkeys((r[0], r[3][:by]) for r in rows))


def rate_rows(rows: list[tuple[Any, ...]], rating: Rating,
              found: dict[RateKey, tuple[Decimal | None, ...] | None] | None = None) -> RatedSums:
    """Rate sum_meters rows in Python: the reference the stores' own implementations are held to. `found`: the
    rates already asked for."""
    lines: dict[tuple[Any, ...], RatedLine] = {}
    unrated = []
    found = dict(found or {})
    for k in rate_keys_of(rows, rating.by):
        if k not in found:
            found[k] = rating.rates(*k)
    forms = [[(n, c) for n, c in enumerate(form) if c] for form in rating.forms]
    by, shown, nonnegative, zero, per_window = rating.by, rating.shown, rating.nonnegative, Decimal(0), rating.per_window
    with decimal.localcontext(EXACT):
        for row in rows:
            start, values, sums = row[0], row[3], row[4:]
            rates = found[(start, values[:by])]
            qty = [sum([sums[n] * c for n, c in form], zero) for form in forms]
            if (rates is None or any(qty[k] < 0 for k in nonnegative)
                    or any(r is None and n != 0 for r, n in zip(rates, qty, strict=True))):
                unrated.append(row)
                continue
            key = (start if per_window else None, row[1], row[2], tuple([values[n] for n in shown]))
            line = lines.get(key)
            if line is None:
                line = lines[key] = RatedLine(key[0], row[1], row[2], key[3], [], [zero] * len(sums), [zero] * len(qty))
            if values[:by] not in line.rate_keys:
                line.rate_keys.append(values[:by])
            acc = line.sums
            for n, v in enumerate(sums):
                acc[n] += v
            acc = line.amounts
            for n, r in enumerate(rates):
                if r is not None:
                    acc[n] += qty[n] * r
    for line in lines.values():
        line.rate_keys.sort()
    return RatedSums(list(lines.values()), unrated)
