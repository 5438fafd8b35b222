"""Issue 17 item 3: meter queries flat in the number of subjects. A query that neither filters nor groups by subject
reads the per-meter rollups (no subject column); one that names its subjects (a per-subject query, an entitlement
check) reads the subject-first hourly rollup. Which tables a query reads, and how many rows, is what the engine
itself reports for the exact SQL the store ran (`EXPLAIN ESTIMATE`: rows of the granules its index selects); chdb
has no system.query_log and its result summary counts result rows, not rows read.

Two namespaces hold the same 200,000 values at the same instants, spread over 20 subjects in one and 5,000 in the
other: the rows an all-subjects query reads must be the same in both, and a one-subject query must read about one
subject's rows, not the store's. The answers are checked exactly against the raw values."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from billow.adapters.clickhouse import _ROLLUPS
from billow.domain.usage import MeterValue, UsageQuery, final_value
from tests.conftest import t

ROWS = 200_000
SPAN_MS = 48 * 3600 * 1000  # two days
GRANULE = 8192


def _load(store: Any, ns: str, subjects: int) -> None:
    store._command(
        "INSERT INTO meter_values (namespace, meter_id, subject, time, value, value_str, group_by, source, id) "
        "SELECT {ns:String}, 'M1', concat('c', toString(number % {subjects:UInt64})), "
        "toDateTime64('2026-04-01 00:00:00', 3, 'UTC') + toIntervalMillisecond(number * {step:UInt64}), "
        "toDecimal128(number % 10, 18) / 10, toString(number % 10), map('model', concat('m', toString(number % 4))), "
        "'bulk', toString(number) FROM numbers({rows:UInt64})",
        {"ns": ns, "subjects": subjects, "step": SPAN_MS // ROWS, "rows": ROWS})


@pytest.fixture(scope="module")
def stores(chdb_store: Any) -> Iterator[tuple[Any, str, str]]:
    import os

    few, many = f"flat{os.getpid()}_few", f"flat{os.getpid()}_many"
    _load(chdb_store, few, 20)
    _load(chdb_store, many, 5000)
    # Both loads merged alike: a view writes one part per inserted block, each with partial cells at its edges,
    # and background merges reach the two namespaces at different times.
    for table in ("meter_values", *(r[0] for r in _ROLLUPS)):
        chdb_store._command(f"OPTIMIZE TABLE {table} FINAL")
    yield chdb_store, few, many


def q(ns: str, **kw: Any) -> UsageQuery:
    base: dict[str, Any] = dict(namespace=ns, meter_id="M1", aggregation="SUM", start=t("2026-04-01T00:00:00Z"),
                                end=t("2026-04-02T23:59:59.999Z"), window_size="HOUR", window_tz="UTC", subjects=None,
                                group_by=["model"], by_subject=False, subject_customers=None)
    base.update(kw)
    return UsageQuery(**base)


def reads(store: Any, query: UsageQuery, monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], dict[str, int]]:
    """The query's rows, and the rows the engine reads per table for the SQL the store ran."""
    seen: list[tuple[str, dict[str, Any]]] = []
    real = store._query
    columns = store._query_columns  # aggregate reads its answer column by column

    def recording(sql: str, params: dict[str, Any]) -> Any:
        seen.append((sql, dict(params)))
        return columns(sql, params)

    with monkeypatch.context() as m:
        m.setattr(store, "_query_columns", recording)
        rows = store.aggregate(query)
    assert len(seen) == 1
    sql, params = seen[0]
    per_table: dict[str, int] = {}
    for _db, table, _parts, n, _marks in real("EXPLAIN ESTIMATE " + sql, params):
        per_table[table] = per_table.get(table, 0) + int(n)
    return rows, per_table


def flat(few: dict[str, int], many: dict[str, int]) -> bool:
    """The same tables, each read within one granule of the other (the session's store is shared: a merged part may
    hold a neighbouring namespace's rows in the granule where they meet)."""
    return set(few) == set(many) and all(abs(few[k] - many[k]) <= GRANULE for k in few)


def truth(store: Any, ns: str, subject: str | None, lo: str, hi: str) -> dict[tuple[Any, str], Decimal]:
    """SUM per (UTC hour, model) straight from the raw values."""
    rows = store._query(
        "SELECT toUnixTimestamp(toStartOfHour(time)), group_by['model'], toString(sum(toDecimal256(value, 18))) "
        "FROM meter_values WHERE namespace = {ns:String} AND time >= {lo:DateTime64(3, 'UTC')} "
        "AND time <= {hi:DateTime64(3, 'UTC')} AND ({subj:String} = '' OR subject = {subj:String}) GROUP BY 1, 2",
        {"ns": ns, "lo": t(lo), "hi": t(hi), "subj": subject or ""})
    return {(r[0], r[1]): Decimal(r[2]) for r in rows}


def answer(rows: list[Any]) -> dict[tuple[Any, str], Decimal]:
    return {(int(r.window_start.timestamp()), r.groups["model"]): final_value("SUM", r) for r in rows}


def test_all_subjects_hourly_reads_the_same_rows_for_20_and_5000_subjects(stores: Any, monkeypatch: Any) -> None:
    store, few, many = stores
    got_few, read_few = reads(store, q(few), monkeypatch)
    got_many, read_many = reads(store, q(many), monkeypatch)
    assert set(read_many) == {"meter_rollup_1h_all"}, read_many
    assert flat(read_few, read_many)
    assert sum(read_many.values()) <= GRANULE  # 48 x 4 (hour, model) cells, in one granule
    for ns, got in ((few, got_few), (many, got_many)):
        assert answer(got) == truth(store, ns, None, "2026-04-01T00:00:00Z", "2026-04-02T23:59:59.999Z")
    assert answer(got_few) == answer(got_many)  # the same values, however they are spread over subjects


def test_all_subjects_unaligned_range_is_flat_too(stores: Any, monkeypatch: Any) -> None:
    """Partial hours come from the per-meter minute rollup and partial minutes from the raw values: neither
    depends on the number of subjects."""
    store, few, many = stores
    lo, hi = "2026-04-01T00:17:30.250Z", "2026-04-02T22:03:10.500Z"
    query = {"start": t(lo), "end": t(hi)}
    got_few, read_few = reads(store, q(few, **query), monkeypatch)
    got_many, read_many = reads(store, q(many, **query), monkeypatch)
    assert set(read_many) <= {"meter_rollup_1h_all", "meter_rollup_1m_all", "meter_values"}, read_many
    assert "meter_rollup_1m_all" in read_many
    assert flat(read_few, read_many)
    assert sum(read_many.values()) <= 6 * GRANULE
    assert answer(got_many) == truth(store, many, None, lo, hi)
    assert answer(got_few) == truth(store, few, None, lo, hi)


def test_one_subject_reads_the_subject_first_rollup(stores: Any, monkeypatch: Any) -> None:
    store, few, many = stores
    got, read = reads(store, q(many, subjects=["c7"]), monkeypatch)
    assert set(read) == {"meter_rollup_1h_by_subject"}, read
    total = store._query("SELECT count() FROM meter_rollup_1h_by_subject WHERE namespace = {ns:String}", {"ns": many})[0][0]
    assert sum(read.values()) <= 2 * GRANULE < total / 4  # its own range of the index, not the store
    assert answer(got) == truth(store, many, "c7", "2026-04-01T00:00:00Z", "2026-04-02T23:59:59.999Z")
    assert sum(r.sum for r in got) > 0


def test_entitlement_segments_read_the_subject_first_rollup(stores: Any, monkeypatch: Any) -> None:
    """The balance engine's one usage query (whole-hour segment bounds) for one subject."""
    store, _, many = stores
    bounds = [t("2026-04-01T00:00:00Z"), t("2026-04-01T12:00:00Z"), t("2026-04-03T00:00:00Z")]
    got, read = reads(store, q(many, subjects=["c7"], group_by=[], window_size="BOUNDS", bounds=bounds, start=bounds[0],
                                end=bounds[-1] - timedelta(milliseconds=1)), monkeypatch)
    assert set(read) == {"meter_rollup_1h_by_subject"}, read
    assert sum(read.values()) <= 2 * GRANULE
    want = truth(store, many, "c7", "2026-04-01T00:00:00Z", "2026-04-02T23:59:59.999Z")
    first = sum((v for (h, _), v in want.items() if h < int(bounds[1].timestamp())), Decimal(0))
    assert {r.window_start: r.sum for r in got} == {bounds[0]: first, bounds[1]: sum(want.values(), Decimal(0)) - first}


def test_rebuild_restores_the_new_rollups(chdb_store: Any, namespace: str) -> None:
    """Crash repair (`_rebuild`) re-derives every rollup, the per-meter and subject-first ones included."""
    store = chdb_store
    values = [MeterValue("M1", f"s{i % 3}", t("2026-04-05T10:00:00Z") + timedelta(seconds=37 * i), Decimal(i) / 10,
                         str(i), {"model": f"m{i % 2}"}, "src", str(i)) for i in range(300)]
    store.write(namespace, values, [])
    queries = [q(namespace, start=None, end=None), q(namespace, subjects=["s1"], start=None, end=None),
               q(namespace, window_size="MINUTE", start=None, end=None)]
    before = [answer(store.aggregate(x)) for x in queries]
    for table, *_ in _ROLLUPS:
        store._command(f"DELETE FROM {table} WHERE namespace = {{ns:String}}", {"ns": namespace})  # noqa: S608
    assert all(not store.aggregate(x) for x in queries)  # torn: every rollup lost its cells
    hours = {(v.meter_id, datetime.fromtimestamp(int(v.time.timestamp()) // 3600 * 3600, UTC)) for v in values}
    store._rebuild(namespace, hours)
    assert [answer(store.aggregate(x)) for x in queries] == before
    assert sum(before[1].values()) == sum((v.value for v in values if v.subject == "s1"), Decimal(0))


def _migrate_phase(data_dir: str) -> None:
    """Migrate to version 2, store values, then migrate to head; then lose the record of version 3 (a run cut
    short before it) and migrate again. Prints the sums each rollup holds after each step."""
    import json

    from billow.adapters import clickhouse
    from billow.adapters.clickhouse import ClickHouseUsageStore, connect

    everything = list(clickhouse.MIGRATIONS)
    clickhouse.MIGRATIONS[:] = [m for m in everything if m[0] < 3]
    store = ClickHouseUsageStore(connect(f"chdb://{data_dir}"))
    store.migrate()
    _load(store, "old", 300)
    clickhouse.MIGRATIONS[:] = everything
    out = []
    for _ in range(2):
        store.migrate()
        sql = "SELECT toString(sum(sum_value)) || '/' || toString(sum(cnt)) FROM "
        out.append({table: str(store._query(sql + table, {})[0][0]) for table, *_ in _ROLLUPS})
        store._command("DELETE FROM billow_migrations WHERE version = 3")
    out.append(str(store._query("SELECT toString(sum(value)) || '/' || toString(count()) FROM meter_values", {})[0][0]))
    print(json.dumps(out))
    store.close()


def test_migration_3_backfills_existing_usage_once(tmp_path: Any) -> None:
    from tests.support.usage import in_a_process

    first, rerun, raw = in_a_process("tests.adapters.test_rollup_layouts", "_migrate_phase", tmp_path, timeout=300)
    raw_sum, raw_count = raw.split("/")
    for table, sums in first.items():
        s, c = sums.split("/")
        assert (Decimal(s), int(c)) == (Decimal(raw_sum), int(raw_count)), table
    assert rerun == first  # the backfill empties its table first: a re-run counts nothing twice


def _raw_sum(store: Any, ns: str, subject: str, lo: datetime, hi: datetime) -> Decimal:
    """SUM of the subject's raw values in [lo, hi)."""
    return Decimal(store._query(
        "SELECT toString(sum(toDecimal256(value, 18))) FROM meter_values WHERE namespace = {ns:String} "
        "AND subject = {subj:String} AND time >= {lo:DateTime64(3, 'UTC')} AND time < {hi:DateTime64(3, 'UTC')}",
        {"ns": ns, "subj": subject, "lo": lo, "hi": hi})[0][0])


def test_a_check_ending_mid_hour_reads_hours_subject_first(stores: Any, monkeypatch: Any) -> None:
    """Issue 17 item 5: a check's last bound is now, rarely on the hour. Its whole hours still come from the
    subject-first hourly rollup (only the partial hour and minute from the minute rollup and raw values), so the
    query reads about one subject's cells plus one hour of the store, not every subject's minutes of the period;
    the buckets equal the raw sums exactly."""
    store, _, many = stores
    bounds = [t("2026-04-01T00:00:00Z"), t("2026-04-01T12:00:00Z"), t("2026-04-02T22:37:12.500Z")]
    got, read = reads(store, q(many, subjects=["c7"], group_by=[], window_size="BOUNDS", bounds=bounds, start=bounds[0],
                                end=bounds[-1] - timedelta(milliseconds=1)), monkeypatch)
    assert "meter_rollup_1h_by_subject" in read, read
    assert set(read) <= {"meter_rollup_1h_by_subject", "meter_rollup_1m", "meter_values"}, read
    assert sum(read.values()) <= 4 * GRANULE, read
    assert {r.window_start: r.sum for r in got} == {
        bounds[0]: _raw_sum(store, many, "c7", bounds[0], bounds[1]),
        bounds[1]: _raw_sum(store, many, "c7", bounds[1], bounds[2])}


def test_a_check_with_an_inner_bound_mid_hour_is_still_exact(stores: Any, monkeypatch: Any) -> None:
    """A segment bound inside an hour (a grant effective at 12:30) splits that hour, and a start inside an hour
    (a snapshot) with whole-hour inner bounds is served by minutes then hours: either way the answer stays exact."""
    store, _, many = stores
    for inner in ("2026-04-01T12:30:00Z", "2026-04-01T12:00:00Z"):
        bounds = [t("2026-04-01T00:17:30Z"), t(inner), t("2026-04-02T06:00:00Z"), t("2026-04-02T22:37:12.500Z")]
        got, _ = reads(store, q(many, subjects=["c7"], group_by=[], window_size="BOUNDS", bounds=bounds,
                                start=bounds[0], end=bounds[-1] - timedelta(milliseconds=1)), monkeypatch)
        assert {r.window_start: r.sum for r in got} == {
            b: _raw_sum(store, many, "c7", b, e) for b, e in zip(bounds, bounds[1:], strict=False)}, inner
