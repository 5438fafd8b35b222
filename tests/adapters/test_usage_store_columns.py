"""UsageStore.write takes the sink's columns (domain.usage.ValueColumns / EventColumns) as it takes MeterValue and
StoredEvent objects: the same stored values, sums, raw events and ledger, on the in-memory twin and on chdb alike."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from billow import jsonx
from billow.domain.events import CloudEvent
from billow.domain.usage import EventColumns, MeterValue, StoredEvent, ValueColumns
from tests.adapters.test_store_write_cost import answers
from tests.conftest import t

T0 = t("2026-03-28T22:59:59.998Z")


def values() -> list[MeterValue]:
    """Exact values past a float's digits, times across an hour's and a day's end, a value with no group."""
    return [MeterValue("M1", f"s{i % 3}", T0 + timedelta(milliseconds=i * 997), Decimal(f"12345678901234567.{i:03d}"),
                       str(i % 2), {"model": f"m{i % 2}"} if i % 4 else {}, "cols", f"e{i}") for i in range(12)]


def events(vals: list[MeterValue]) -> list[StoredEvent]:
    return [StoredEvent(CloudEvent(v.event_id, v.source, "prompt", v.subject, v.time, None), T0 + timedelta(hours=1),
                        "meter x: bad" if i == 3 else "", f'{{"n":{i}}}' if i % 5 else "")
            for i, v in enumerate(vals)] + [StoredEvent(CloudEvent("bare", "cols", "ping", "s9", T0, None), T0)]


def as_columns(vals: list[MeterValue], evs: list[StoredEvent]) -> tuple[ValueColumns, EventColumns]:
    vc = ValueColumns()
    for v in vals:
        vc.append(v)
    ec = EventColumns()
    for s in evs:
        ec.ids.append(s.event.id)
        ec.sources.append(s.event.source)
        ec.types.append(s.event.type)
        ec.subjects.append(s.event.subject)
        ec.ms.append((s.event.time - t("1970-01-01T00:00:00Z")) // timedelta(milliseconds=1))
        ec.data.append(s.data_json or "")
        ec.ingested_ms.append((s.ingested_at - t("1970-01-01T00:00:00Z")) // timedelta(milliseconds=1))
        ec.errors.append(s.validation_error)
    return vc, ec


def listed(store: Any, ns: str) -> list[Any]:
    return sorted((s.event.id, s.event.type, s.event.subject, s.event.time, s.event.data, s.ingested_at,
                   s.validation_error) for s in store.list_events(ns, subjects=None, start=None, end=None,
                                                                  event_id=None, limit=100))


def test_columns_store_what_the_same_objects_store(usage_store: Any, namespace: str) -> None:
    vals = values()
    evs = events(vals)
    cols = as_columns(vals, evs)
    assert list(cols[0]) == vals and [s.event.time for s in cols[1]] == [s.event.time for s in evs]
    usage_store.write(namespace, vals, evs)
    usage_store.write("cols_" + namespace, *cols)
    assert answers(usage_store, "cols_" + namespace) == answers(usage_store, namespace)
    assert listed(usage_store, "cols_" + namespace) == listed(usage_store, namespace) == sorted(
        (s.event.id, s.event.type, s.event.subject, s.event.time, jsonx.loads(s.data_json) if s.data_json else None,
         s.ingested_at, s.validation_error) for s in evs)
    keys = [(s.event.source, s.event.id) for s in evs]
    assert usage_store.written_keys("cols_" + namespace, keys) == (set(keys), set())
    total = sum(v.value for v in vals)
    assert sum(r[3] for r in answers(usage_store, "cols_" + namespace)[0]) == total  # exact: no float anywhere
