"""Issue 17 item 5: an entitlement check's usage read (`bounded_usage`) on chdb is one statement that reads about
one subject's hourly cells plus the minutes and raw values of the partial hour at its end, measured as
tests/adapters/test_rollup_layouts.py measures (`EXPLAIN ESTIMATE` of the exact SQL, rows of the granules the
index selects), on the same 200,000 values over 5,000 subjects; the sums are the raw sums exactly."""

from __future__ import annotations

from typing import Any

import pytest

from tests.adapters.test_rollup_layouts import GRANULE, _raw_sum, stores  # noqa: F401 (the module's store fixture)
from tests.conftest import t


def test_a_check_reads_one_subjects_hours_and_the_partial_hour(stores: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    store, _, many = stores
    seen: list[tuple[str, dict[str, Any]]] = []
    real = store._query
    monkeypatch.setattr(store, "_query", lambda sql, params, **kw: seen.append((sql, dict(params))) or real(sql, params, **kw))
    bounds = [t("2026-04-01T00:00:00Z"), t("2026-04-01T12:00:00Z"), t("2026-04-02T22:37:12.500Z")]
    got = store.bounded_usage(many, "M1", "SUM", ["c7"], [], bounds)
    assert len(seen) == 1
    assert got == [_raw_sum(store, many, "c7", b, e) for b, e in zip(bounds, bounds[1:], strict=False)]
    read: dict[str, int] = {}
    for _db, table, _parts, n, _marks in real("EXPLAIN ESTIMATE " + seen[0][0], seen[0][1]):
        read[table] = read.get(table, 0) + int(n)
    assert set(read) == {"meter_rollup_1h_by_subject", "meter_rollup_1m", "meter_values"}, read
    assert sum(read.values()) <= 4 * GRANULE, read


def test_bounds_off_the_hour_still_read_one_subjects_hours(stores: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """A grant entering at 10:37 and one expiring at 18:05:30 (bounds off the hour, one inside a minute) cut only the
    hours they fall in: the whole hours around them are still the subject's own hourly cells, one read of each table,
    not every subject's minutes (or raw values) of the span."""
    store, _, many = stores
    seen: list[tuple[str, dict[str, Any]]] = []
    real = store._query
    monkeypatch.setattr(store, "_query", lambda sql, params, **kw: seen.append((sql, dict(params))) or real(sql, params, **kw))
    bounds = [t("2026-04-01T00:00:00Z"), t("2026-04-01T10:37:00Z"), t("2026-04-01T12:00:00Z"),
              t("2026-04-02T18:05:30.250Z"), t("2026-04-02T22:37:12.500Z")]
    got = store.bounded_usage(many, "M1", "SUM", ["c7"], [], bounds)
    assert len(seen) == 1
    assert got == [_raw_sum(store, many, "c7", b, e) for b, e in zip(bounds, bounds[1:], strict=False)]
    assert sum(got) > 0
    read: dict[str, int] = {}
    for _db, table, _parts, n, _marks in real("EXPLAIN ESTIMATE " + seen[0][0], seen[0][1]):
        read[table] = read.get(table, 0) + int(n)
    assert set(read) == {"meter_rollup_1h_by_subject", "meter_rollup_1m", "meter_values"}, read
    assert seen[0][0].count(" FROM ") == 3  # one branch a table
    # A few granules of each table per part (the minute rollup is ordered by time first: a granule per span there),
    # where the whole span from the minute rollup or the raw values is every subject's: 200,000 values.
    assert sum(read.values()) <= 10 * GRANULE, read
