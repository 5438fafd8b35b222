"""Migration 8: the rollups drop `latest_state` and `latest_pair`, the LATEST states no view writes or reads since
migration 5. A store written at migration 7 answers every aggregate, LATEST included, through every tier exactly as
before; writes after the migration land in every rollup; a re-run of the migration changes nothing."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

from billow.domain.usage import MeterValue, UsageQuery, final_value
from tests.conftest import t
from tests.support.usage import in_a_process

AT = t("2026-03-02T10:17:30Z")


def _values(tag: str, base: Any) -> list[MeterValue]:
    """Values of meter G over two days for three subjects in two groups, ties at one instant among them."""
    out = []
    for i in range(60):
        at = base + timedelta(minutes=37 * i, seconds=i % 7)
        value = Decimal(i % 9) + Decimal("0.125") * (i % 3)
        out.append(MeterValue("G", "abc"[i % 3], at, value, str(i % 5), {"region": ("eu", "us")[i % 2]}, "s",
                              f"{tag}{i}"))
    out.append(MeterValue("G", "b", base + timedelta(minutes=37 * 59, seconds=59 % 7), Decimal("99.5"), "x",
                          {"region": "us"}, "s", f"{tag}tie"))
    return out


def _answers(store: Any) -> list[Any]:
    """Every aggregate over whole and ragged ranges, read through the raw values, minute and hour rollups, per subject
    and per group."""
    out = []
    ranges = [(None, None), (AT, AT + timedelta(days=1)), (AT.replace(minute=0, second=0), AT + timedelta(hours=30)),
              (AT + timedelta(minutes=3, seconds=11), AT + timedelta(hours=20, minutes=1))]
    for agg in ("SUM", "COUNT", "MIN", "MAX", "UNIQUE_COUNT", "AVG", "LATEST"):
        for lo, hi in ranges:
            for kw in ({}, {"window_size": "HOUR"}, {"window_size": "MINUTE", "by_subject": True},
                       {"subjects": ["b"]}, {"group_by": ["region"], "window_size": "DAY"}):
                q = UsageQuery(**{**dict(namespace="ns", meter_id="G", aggregation=agg, start=lo, end=hi,
                                         window_size=None, window_tz="UTC", subjects=None, group_by=[], by_subject=False,
                                         subject_customers=None), **kw})
                out.append([(str(r.window_start), r.subject, sorted(r.groups.items()) if r.groups else None,
                             str(final_value(agg, r))) for r in store.aggregate(q)])
    return out


def _columns(store: Any) -> dict[str, list[str]]:
    from billow.adapters.clickhouse_schema import ROLLUPS

    return {table: [r[0] for r in store._query(
        "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = {t:String} ORDER BY position",
        {"t": table})] for table, _, _ in ROLLUPS}


def _upgrade_phase(data_dir: str) -> None:
    """At migration 7: values stored, every answer read. Migrated to head: the columns and answers; then values written
    after it, answers again; the migration's record lost and run again, answers again. JSON."""
    from billow.adapters import clickhouse
    from billow.adapters.clickhouse import ClickHouseUsageStore, connect

    everything = list(clickhouse.MIGRATIONS)
    clickhouse.MIGRATIONS[:] = [m for m in everything if m[0] < 8]
    store = ClickHouseUsageStore(connect(f"chdb://{data_dir}"))
    store.migrate()
    store.write("ns", _values("old", AT), [])
    before = {"columns": _columns(store), "answers": _answers(store)}
    clickhouse.MIGRATIONS[:] = everything
    store.migrate()
    after = {"columns": _columns(store), "answers": _answers(store)}
    store.write("ns", _values("new", AT + timedelta(minutes=5)), [])
    written = _answers(store)
    store._command("DELETE FROM billow_migrations WHERE version = 8")
    store.migrate()
    print(json.dumps({"before": before, "after": after, "written": written, "again": _answers(store)}))
    store.close()


def _fresh_phase(data_dir: str) -> None:
    """A store made at head, the same values written both times (old and new): its answers. JSON."""
    from billow.adapters.clickhouse import ClickHouseUsageStore, connect

    store = ClickHouseUsageStore(connect(f"chdb://{data_dir}"))
    store.migrate()
    store.write("ns", _values("old", AT), [])
    store.write("ns", _values("new", AT + timedelta(minutes=5)), [])
    print(json.dumps({"columns": _columns(store), "answers": _answers(store)}))
    store.close()


def test_migration_8_drops_the_dead_latest_states_and_changes_no_answer(tmp_path: Any) -> None:
    out = in_a_process("tests.adapters.test_dead_latest_columns", "_upgrade_phase", tmp_path / "up")
    fresh = in_a_process("tests.adapters.test_dead_latest_columns", "_fresh_phase", tmp_path / "fresh")
    for table, cols in out["before"]["columns"].items():
        assert {"latest_state", "latest_pair", "latest_key"} <= set(cols), table
        assert [c for c in cols if c not in ("latest_state", "latest_pair")] == out["after"]["columns"][table], table
    assert out["after"]["columns"] == fresh["columns"]
    assert out["after"]["answers"] == out["before"]["answers"]
    assert any(row for rows in out["before"]["answers"] for row in rows)  # (the answers hold rows)
    # writes after the migration are counted in every tier as on a store made at head, and a re-run changes nothing
    assert out["written"] == fresh["answers"] == out["again"]
    assert out["written"] != out["after"]["answers"]
