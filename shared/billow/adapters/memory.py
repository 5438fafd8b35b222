"""In-memory twin of the UsageStore for unit tests. The adapter contract suite runs it beside chdb so the
two cannot drift: same dedup ledger, same windows, same filters, same exact sums."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from billow import jsonx
from billow.domain.events import CloudEvent
from billow.domain.lineage import LineEvent, UsageDigest, digest
from billow.domain.usage import (
    AggRow,
    GroupFilter,
    MeterValue,
    RatedSums,
    Rating,
    StoredEvent,
    UsageQuery,
    matches,
    rate_rows,
)
from billow.exact import exact_sum
from billow.timeutil import next_window_start, python_window_starts, window_start, zone


class InMemoryUsageStore:
    def __init__(self) -> None:
        self._events: dict[tuple[str, str, str], StoredEvent] = {}
        self._values: list[tuple[str, MeterValue]] = []
        self._lock = threading.Lock()

    def migrate(self) -> None:
        return None

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None

    def present_keys(self, namespace: str, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        return {k for k in keys if (namespace, *k) in self._events}

    def written_keys(self, namespace: str, keys: Sequence[tuple[str, str]]) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        stored = self.present_keys(namespace, keys)
        wanted = set(keys) - stored  # a write here is whole, so only values written alone begin without a raw event
        return stored, {(v.source, v.event_id) for ns, v in self._values if ns == namespace and (v.source, v.event_id) in wanted}

    def valued_keys(self, namespace: str, meter_ids: Sequence[str], start: datetime | None, end: datetime | None,
                    keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        wanted, mids = set(keys), set(meter_ids)
        return {(v.source, v.event_id) for ns, v in self._values
                if ns == namespace and v.meter_id in mids and (start is None or start <= v.time)
                and (end is None or v.time <= end) and (v.source, v.event_id) in wanted}

    def write(self, namespace: str, values: Sequence[MeterValue], events: Sequence[StoredEvent]) -> None:
        with self._lock:
            self._values.extend((namespace, v) for v in values)
            for s in events:
                if s.event.data is None and s.data_json:  # kept as the engine keeps it: decoded when read
                    s = replace(s, event=replace(s.event, data=jsonx.loads(s.data_json)))
                self._events[(namespace, s.event.source, s.event.id)] = s

    def repair(self, namespace: str, keys: Sequence[tuple[str, str]]) -> None:
        return None  # no pre-aggregates: every query reads the values themselves

    def aggregate(self, q: UsageQuery) -> list[AggRow]:
        tz = zone(q.window_tz)
        buckets: dict[tuple[Any, ...], list[MeterValue]] = {}
        customers = q.subject_customers
        for ns, v in self._values:
            if ns != q.namespace or v.meter_id != q.meter_id:
                continue
            if q.start is not None and v.time < q.start or q.end is not None and v.time > q.end:
                continue
            if q.subjects is not None and v.subject not in q.subjects:
                continue
            if not matches(q.filters, v.subject, v.group_by):
                continue
            if q.window_size == "BOUNDS":
                assert q.bounds is not None
                w: datetime | None = q.bounds[bisect.bisect_right(q.bounds, v.time) - 1]
            else:
                w = window_start(v.time, q.window_size, tz) if q.window_size else None
            key = (
                w,
                v.subject if q.by_subject else None,
                customers.get(v.subject, "") if customers is not None else None,
                tuple(v.group_by.get(k, "") for k in q.group_by),
            )
            buckets.setdefault(key, []).append(v)
        out = []
        runs = q.running_from
        if runs is not None and (q.window_size != "BOUNDS" or q.aggregation != "UNIQUE_COUNT" or q.group_by
                                 or q.by_subject or customers is not None):
            raise ValueError("running_from counts a UNIQUE_COUNT meter's BOUNDS windows, without groups")
        run: tuple[datetime | None, set[str]] = (None, set())  # (its start, the distinct values so far)
        for key in sorted(buckets, key=lambda k: (k[0] or datetime.min.replace(tzinfo=UTC), k[1] or "", k[2] or "", k[3])):
            vals = buckets[key]
            distinct = {v.value_str for v in vals}
            if runs is not None:
                w = key[0]  # (BOUNDS: a window start, never None)
                began = runs[bisect.bisect_right(runs, w) - 1] if w is not None and runs and runs[0] <= w else None
                run = (began, (run[1] if run[0] == began else set()) | distinct)
                distinct = run[1]
            latest = max(vals, key=lambda v: (v.time, v.value))  # at one instant the largest (the rollups' argMax by (time, value))
            minutes = [v.time.replace(second=0, microsecond=0) for v in vals]
            out.append(AggRow(
                window_start=key[0], subject=key[1], customer_id=(key[2] or None) if customers is not None else None,
                groups=dict(zip(q.group_by, key[3], strict=True)),
                sum=exact_sum(v.value for v in vals), count=len(vals),
                min=min(v.value for v in vals), max=max(v.value for v in vals),
                uniq=len(distinct), latest=latest.value,
                first_time=min(minutes), last_time=max(minutes) + timedelta(minutes=1),
            ))
        return out

    def aggregate_each(self, q: UsageQuery, filter_sets: Sequence[list[list[GroupFilter]]]) -> list[list[AggRow]]:
        """See ports.UsageStore: `aggregate` once per filter set (the reference the engines' one pass must match)."""
        return [self.aggregate(replace(q, filters=filters)) for filters in filter_sets]

    def window_ends(self, starts: Sequence[datetime], size: str, tz: str) -> dict[datetime, datetime]:
        """See ports.UsageStore: this store's windows follow Python's calendar (timeutil)."""
        return {s: next_window_start(s, size, zone(tz)) for s in starts}

    def window_starts(self, start: datetime, end: datetime, size: str, tz: str) -> list[datetime]:
        """See ports.UsageStore: Python's calendar (timeutil), as this store's `aggregate` draws it."""
        return python_window_starts(start, end, size, zone(tz))

    def bounded_usage(self, namespace: str, meter_id: str, aggregation: str, subjects: Sequence[str],
                      filters: list[list[GroupFilter]], bounds: Sequence[datetime]) -> list[Decimal]:
        if aggregation not in ("SUM", "COUNT"):
            raise ValueError(f"bounded_usage sums SUM or COUNT meters, not {aggregation}")
        buckets: list[list[Decimal]] = [[] for _ in bounds[1:]]
        wanted = set(subjects)
        for ns, v in self._values:
            if ns == namespace and v.meter_id == meter_id and v.subject in wanted and bounds[0] <= v.time < bounds[-1] \
                    and matches(filters, v.subject, v.group_by):
                buckets[bisect.bisect_right(bounds, v.time) - 1].append(v.value if aggregation == "SUM" else Decimal(1))
        return [exact_sum(b) for b in buckets]

    def sum_meters(self, q: UsageQuery, meter_ids: Sequence[str]) -> list[tuple[Any, ...]]:
        sums: dict[tuple[Any, ...], list[Decimal]] = {}
        for n, mid in enumerate(meter_ids):
            for r in self.aggregate(replace(q, meter_id=mid, aggregation="SUM")):
                key = (r.window_start, r.subject, r.customer_id, tuple(r.groups[k] for k in q.group_by))
                sums.setdefault(key, [Decimal(0)] * len(meter_ids))[n] = r.sum
        order = sorted(sums, key=lambda k: (k[0] or datetime.min.replace(tzinfo=UTC), k[1] or "", k[2] or "", k[3]))
        return [(*k, *sums[k]) for k in order]

    def rated_sums(self, q: UsageQuery, meter_ids: Sequence[str], rating: Rating) -> RatedSums:
        return rate_rows(self.sum_meters(q, meter_ids), rating)

    def scan_events(self, namespace: str, event_type: str, after: tuple[str, str] | None, limit: int) -> list[CloudEvent]:
        rows = sorted((k[1], k[2]) for k, s in self._events.items() if k[0] == namespace and s.event.type == event_type)
        if after is not None:
            rows = [r for r in rows if r > after]
        return [self._events[(namespace, *r)].event for r in rows[:limit]]

    def list_events(self, namespace: str, *, subjects: Sequence[str] | None, start: datetime | None,
                    end: datetime | None, event_id: str | None, limit: int) -> list[StoredEvent]:
        rows = [s for k, s in self._events.items() if k[0] == namespace
                and (not subjects or s.event.subject in subjects)
                and (start is None or s.event.time >= start) and (end is None or s.event.time <= end)
                and (event_id is None or event_id in s.event.id)]
        rows.sort(key=lambda s: (-s.event.time.timestamp(), s.event.source, s.event.id))
        return rows[:limit]

    def count_events(self, namespace: str, start: datetime) -> dict[str, int]:
        counts: dict[str, int] = {}
        for k, s in list(self._events.items()):
            if k[0] == namespace and s.event.time >= start:
                counts[s.event.subject] = counts.get(s.event.subject, 0) + 1
        return counts

    def subjects(self, namespace: str, meter_id: str, start: datetime | None, end: datetime | None) -> list[str]:
        return sorted({v.subject for ns, v in self._values if ns == namespace and v.meter_id == meter_id
                       and (start is None or v.time >= start) and (end is None or v.time <= end)})

    # -- lineage (issue 21) ------------------------------------------------------------------------
    def _line_values(self, namespace: str, meter_id: str, subjects: Sequence[str], start: datetime, end: datetime,
                     filters: list[list[GroupFilter]]) -> list[MeterValue]:
        subs = set(subjects)
        return [v for ns, v in list(self._values) if ns == namespace and v.meter_id == meter_id and v.subject in subs
                and start <= v.time < end and matches(filters, v.subject, v.group_by)]

    def line_events(self, namespace: str, meter_id: str, subjects: Sequence[str], start: datetime, end: datetime,
                    filters: list[list[GroupFilter]], after: tuple[str, str] | None, limit: int | None) -> list[LineEvent]:
        rows = sorted(self._line_values(namespace, meter_id, subjects, start, end, filters),
                      key=lambda v: (v.source.encode(), v.event_id.encode()))
        if after is not None:
            rows = [v for v in rows if (v.source.encode(), v.event_id.encode()) > (after[0].encode(), after[1].encode())]
        rows = rows[:limit] if limit is not None else rows
        out = []
        for v in rows:
            stored = self._events.get((namespace, v.source, v.event_id))
            out.append(LineEvent(v.source, v.event_id, v.subject, v.time, v.value,
                                 stored.ingested_at if stored is not None else None))
        return out

    def line_digests(self, namespace: str, meter_id: str, start: datetime, end: datetime,
                     filters: list[list[GroupFilter]], groups: dict[str, str]) -> dict[str, UsageDigest]:
        by_group: dict[str, list[LineEvent]] = {}
        for v in self._line_values(namespace, meter_id, list(groups), start, end, filters):
            by_group.setdefault(groups[v.subject], []).append(
                LineEvent(v.source, v.event_id, v.subject, v.time, v.value, None))
        return {g: digest(rows) for g, rows in by_group.items()}

    def line_digests_each(self, namespace: str, meter_id: str, start: datetime, end: datetime,
                          filter_sets: Sequence[list[list[GroupFilter]]],
                          groups: dict[str, str]) -> list[dict[str, UsageDigest]]:
        """See ports.UsageStore: `line_digests` once per filter set."""
        return [self.line_digests(namespace, meter_id, start, end, filters, groups) for filters in filter_sets]
