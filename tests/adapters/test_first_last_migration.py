"""Migration 6: the subject-first hourly cells gain their first and last instant, and a check's read counts a cell
whole when no bound splits its values. A cell holding rows written before the migration has no such instants: it must
read as straddling every bound (the columns' defaults are the extremes of Int64), or a value stored after now in the
current hour before the upgrade would be counted the moment a value before now joins its cell after it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from billow.domain.usage import MeterValue
from tests.support.usage import in_a_process

NOW = datetime(2026, 6, 1, 12, 37, 12, 500_000, tzinfo=UTC)


def _v(subject: str, at: datetime, value: str, n: str) -> MeterValue:
    return MeterValue("M", subject, at, Decimal(value), value, {}, "s", n)


def _upgrade_phase(data_dir: str) -> None:
    """At migration 5: a value after now in the current hour (12:50). Then migrate to head, and add 12:10 to that cell,
    and 11:20 and 11:40 to a cell of before; a fresh cell (13:xx) written after. Prints each check's sums and how many
    statements it took, after the migration and after a re-run of it."""
    from billow.adapters import clickhouse
    from billow.adapters.clickhouse import ClickHouseUsageStore, connect

    everything = list(clickhouse.MIGRATIONS)
    clickhouse.MIGRATIONS[:] = [m for m in everything if m[0] < 6]
    store = ClickHouseUsageStore(connect(f"chdb://{data_dir}"))
    store.migrate()
    store.write("up", [_v("a", NOW.replace(minute=50), "7", "old")], [])
    clickhouse.MIGRATIONS[:] = everything
    store.migrate()
    store.write("up", [_v("a", NOW.replace(minute=10), "2", "new1"), _v("a", NOW.replace(hour=11, minute=20), "3", "new2"),
                       _v("a", NOW.replace(hour=11, minute=40), "5", "new3")], [])
    statements: list[str] = []
    real = store._query
    store._query = lambda sql, params, **kw: statements.append(sql) or real(sql, params, **kw)  # type: ignore[method-assign]
    out = []
    for _ in range(2):
        for bounds in ([NOW.replace(hour=11, minute=0, second=0, microsecond=0), NOW],
                       [NOW.replace(hour=11, minute=30, second=0, microsecond=0), NOW]):
            statements.clear()
            got = store.bounded_usage("up", "M", "SUM", ["a"], [], bounds)
            out.append({"sums": [str(g) for g in got], "statements": len(statements)})
        store._query = real  # type: ignore[method-assign]
        store._command("DELETE FROM billow_migrations WHERE version >= 6")
        store.migrate()
        store._query = lambda sql, params, **kw: statements.append(sql) or real(sql, params, **kw)  # type: ignore[method-assign]
    print(json.dumps(out))
    store.close()


def test_cells_written_before_migration_6_are_read_as_straddling_and_counted_exactly(tmp_path: Any) -> None:
    out = in_a_process("tests.adapters.test_first_last_migration", "_upgrade_phase", tmp_path)
    for whole_hours, split_hour in (out[0:2], out[2:4]):  # after the migration, and after a re-run of it
        # 11:00 -> now: 11:20 + 11:40 + 12:10, not the 12:50 stored before the upgrade in now's hour (read again in
        # minutes and raw values: two statements).
        assert whole_hours == {"sums": ["10"], "statements": 2}
        # 11:30 -> now: 11:40 + 12:10; 11:xx written after the migration knows its instants, and 11:30 splits them:
        # read again as well.
        assert split_hour == {"sums": ["7"], "statements": 2}
