"""Issue 17 item 5: an entitlement check's usage read (`bounded_usage`) on chdb is one statement that reads one
table, about one subject's hourly cells, when no bound splits the values of an hour it cuts (migration 6: each cell's
first and last instant); an hour whose values a bound splits is read again from the minute rollup and the raw values,
that hour alone. Measured as tests/adapters/test_rollup_layouts.py measures (`EXPLAIN ESTIMATE` of the exact SQL,
rows of the granules the index selects), on the same 200,000 values over 5,000 subjects; the sums are the raw sums
exactly."""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any

import pytest

from tests.adapters.test_rollup_layouts import GRANULE, _raw_sum, stores  # noqa: F401 (the module's store fixture)
from tests.conftest import t


def _statements(store: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple[str, dict[str, Any]]], Any]:
    """The statements the store runs from now on (SQL, parameters), and its own query function."""
    seen: list[tuple[str, dict[str, Any]]] = []
    real = store._query
    monkeypatch.setattr(store, "_query", lambda sql, params, **kw: seen.append((sql, dict(params))) or real(sql, params, **kw))
    return seen, real


def _read(real: Any, sql: str, params: dict[str, Any]) -> dict[str, int]:
    read: dict[str, int] = {}
    for _db, table, _parts, n, _marks in real("EXPLAIN ESTIMATE " + sql, params):
        read[table] = read.get(table, 0) + int(n)
    return read


def _clean(query: Any, ns: str, subject: str, bounds: list[Any]) -> bool:
    """No hour a bound cuts holds the subject's values on both sides of it (the values a check's read meets)."""
    for b in bounds:
        if b.minute or b.second or b.microsecond:
            hour = b.replace(minute=0, second=0, microsecond=0)
            before, after = query(
                "SELECT countIf(time < {b:DateTime64(3, 'UTC')}), countIf(time >= {b:DateTime64(3, 'UTC')}) "
                "FROM meter_values WHERE namespace = {ns:String} AND subject = {s:String} "
                "AND time >= {h:DateTime64(3, 'UTC')} AND time < {h:DateTime64(3, 'UTC')} + INTERVAL 1 HOUR",
                {"ns": ns, "s": subject, "b": b, "h": hour})[0]
            if before and after:
                return False
    return True


def test_a_check_reads_one_subjects_hours_and_nothing_else(stores: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Ending mid-hour with nothing stored after it in that hour (the usual check): the subject's hourly cells are
    all it reads, the partial hour counted whole (before migration 6 it also read the minute rollup and the raw
    values of that hour: three tables)."""
    store, _, many = stores
    seen, real = _statements(store, monkeypatch)
    bounds = [t("2026-04-01T00:00:00Z"), t("2026-04-01T12:00:00Z"), t("2026-04-02T22:37:12.500Z")]
    assert _clean(real, many, "c7", bounds)
    got = store.bounded_usage(many, "M1", "SUM", ["c7"], [], bounds)
    assert len(seen) == 1
    assert got == [_raw_sum(store, many, "c7", b, e) for b, e in zip(bounds, bounds[1:], strict=False)]
    read = _read(real, *seen[0])
    assert set(read) == {"meter_rollup_1h_by_subject"}, read
    assert sum(read.values()) <= 2 * GRANULE, read


def test_bounds_off_the_hour_still_read_one_subjects_hours(stores: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """A grant entering at 10:37 and one expiring at 18:05:30 (bounds off the hour, one inside a minute) whose hours
    hold none of the subject's values on both sides: one read of the subject's hourly cells, not every subject's
    minutes (or raw values) of the span."""
    store, _, many = stores
    seen, real = _statements(store, monkeypatch)
    bounds = [t("2026-04-01T00:00:00Z"), t("2026-04-01T10:37:00Z"), t("2026-04-01T12:00:00Z"),
              t("2026-04-02T18:05:30.250Z"), t("2026-04-02T22:37:12.500Z")]
    assert _clean(real, many, "c7", bounds)
    got = store.bounded_usage(many, "M1", "SUM", ["c7"], [], bounds)
    assert len(seen) == 1
    assert got == [_raw_sum(store, many, "c7", b, e) for b, e in zip(bounds, bounds[1:], strict=False)]
    assert sum(got) > 0
    read = _read(real, *seen[0])
    assert set(read) == {"meter_rollup_1h_by_subject"}, read
    assert seen[0][0].count(" FROM ") == 1
    assert sum(read.values()) <= 2 * GRANULE, read


def test_an_hour_whose_values_a_bound_splits_is_read_again_in_minutes_and_raw_values(stores: Any,  # noqa: F811
                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Values stored after now in the current hour (a producer's clock ahead, a backdated check), and a grant
    entering between two values of one hour: those hours alone are read again, from the minute rollup and the raw
    values (a few granules each, not the span), and every segment is the raw sum exactly."""
    store, few, _ = stores  # (20 subjects: hundreds of values an hour each)
    hours = [r[0] for r in store._query(
        "SELECT toStartOfHour(time) AS h FROM meter_values WHERE namespace = {ns:String} AND subject = 'c7' "
        "GROUP BY h HAVING count() >= 2 AND max(time) - min(time) > 120 ORDER BY h", {"ns": few})]
    assert len(hours) >= 2
    first, last = (store._query(
        "SELECT min(time), max(time) FROM meter_values WHERE namespace = {ns:String} AND subject = 'c7' "
        "AND toStartOfHour(time) = {h:DateTime('UTC')}", {"ns": few, "h": h})[0] for h in (hours[0], hours[-1]))
    first, last = [x.replace(tzinfo=UTC) for x in first], [x.replace(tzinfo=UTC) for x in last]
    mid = (first[0] + (first[1] - first[0]) / 2).replace(second=0, microsecond=0) + timedelta(seconds=30, microseconds=250_000)
    now = last[0] + (last[1] - last[0]) / 2
    bounds = [t("2026-04-01T00:00:00Z"), mid, now]
    assert bounds[0] < mid < now and not _clean(store._query, few, "c7", bounds)
    seen, real = _statements(store, monkeypatch)
    got = store.bounded_usage(few, "M1", "SUM", ["c7"], [], bounds)
    assert len(seen) == 2
    assert got == [_raw_sum(store, few, "c7", b, e) for b, e in zip(bounds, bounds[1:], strict=False)]
    assert set(_read(real, *seen[0])) == {"meter_rollup_1h_by_subject"}
    again = _read(real, *seen[1])
    assert set(again) == {"meter_rollup_1m", "meter_values"}, again
    assert sum(again.values()) <= 8 * GRANULE, again
