"""LATEST when readings share an instant: of the values at the latest instant the largest is the latest, whichever tier
of the usage store answers (raw values, minute or hour rollups; per meter, per subject or subject-first) and
whatever order the readings were stored in. Before migration 4 the rollups' argMax kept whichever value the engine
met first, so two ranges over the same instant answered 10 and 2.5 (tests/e2e/test_balance_cache_outside.py found
it). Migration 4 gives every rollup the new state and fills it for the cells stored before it, changing no other
aggregate."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from billow.domain.usage import MeterValue, UsageQuery, final_value
from tests.conftest import t

T0 = t("2026-05-04T10:00:00Z")
MINUTE, HOUR = timedelta(minutes=1), timedelta(hours=1)
TIES = 8


def _ties(store: Any, namespace: str) -> list[Any]:
    """TIES instants, each with readings 10 and 2.5 of two subjects (and 7 of a third a millisecond before), stored
    in separate writes, the larger first at one instant and last at the next. Returns the instants."""
    instants = []
    for i in range(TIES):
        at = T0 + i * (HOUR + 7 * MINUTE) + timedelta(seconds=30)
        instants.append(at)
        first, second = ("a", "b") if i % 2 else ("b", "a")
        readings = [(first, "10"), (second, "2.5")] if i % 2 else [(second, "2.5"), (first, "10")]
        store.write(namespace, [MeterValue("G", "c", at - timedelta(milliseconds=1), Decimal(7), "7", {}, "s", f"p{i}")],
                    [])
        for n, (subject, value) in enumerate(readings):
            store.write(namespace, [MeterValue("G", subject, at, Decimal(value), value, {}, "s", f"t{i}-{n}")], [])
    return instants


def _q(namespace: str, agg: str, start: Any, end: Any, **kw: Any) -> UsageQuery:
    base: dict[str, Any] = dict(namespace=namespace, meter_id="G", aggregation=agg, start=start, end=end,
                                window_size=None, window_tz="UTC", subjects=None, group_by=[], by_subject=False,
                                subject_customers=None)
    base.update(kw)
    return UsageQuery(**base)


def _ranges(at: Any) -> list[tuple[Any, Any]]:
    """Ranges whose last readings are those at `at`, read through every tier: the instant alone (raw values), its
    minute (minute rollup), whole hours around it (hour rollup), and ragged edges mixing the three."""
    m = at.replace(second=0)
    h = at.replace(minute=0, second=0)
    return [(at, at + timedelta(seconds=1)), (m, m + timedelta(seconds=59)), (m, m + MINUTE),
            (m - MINUTE, m + 2 * MINUTE - timedelta(milliseconds=1)), (at - 20 * MINUTE, at),
            (h, h + HOUR), (h - HOUR, h + HOUR), (h - timedelta(minutes=59, seconds=1), m + MINUTE)]


def _latest_answers(store: Any, namespace: str, instants: list[Any]) -> dict[str, set[Decimal]]:
    out: dict[str, set[Decimal]] = {}
    for at in instants:
        answers = out.setdefault(at.isoformat(), set())
        for lo, hi in _ranges(at):
            for kw in ({}, {"subjects": ["a", "b", "c"]}, {"window_size": "HOUR"}, {"window_size": "MINUTE"}):
                rows = store.aggregate(_q(namespace, "LATEST", lo, hi, **kw))
                answers.add(final_value("LATEST", rows[-1]))
    return out


def test_a_tie_answers_the_largest_value_through_every_tier(usage_store: Any, namespace: str) -> None:
    instants = _ties(usage_store, namespace)
    answers = _latest_answers(usage_store, namespace, instants)
    assert answers == {at.isoformat(): {Decimal(10)} for at in instants}
    # Per subject, each subject's own latest reading: no tie there.
    rows = usage_store.aggregate(_q(namespace, "LATEST", None, None, by_subject=True))
    assert {r.subject: final_value("LATEST", r) for r in rows} == {"a": Decimal(10), "b": Decimal("2.5"), "c": Decimal(7)}


def _other_answers(store: Any, namespace: str, instants: list[Any]) -> list[Any]:
    """Every aggregate but LATEST, over whole and ragged ranges and windows: what migration 4 must not change."""
    out = []
    for agg in ("SUM", "COUNT", "MIN", "MAX", "UNIQUE_COUNT", "AVG"):
        for lo, hi in ((None, None), *_ranges(instants[3])):
            for kw in ({}, {"window_size": "HOUR"}, {"window_size": "MINUTE", "by_subject": True},
                       {"subjects": ["a"]}):
                out.append([(str(r.window_start), r.subject, str(final_value(agg, r)))
                            for r in store.aggregate(_q(namespace, agg, lo, hi, **kw))])
    return out


def _in_a_process(phase: str, data_dir: Any) -> Any:
    """Run this module's `phase(data_dir)` in a process of its own (chdb opens one data path per process, and the
    phases change module state); the JSON it printed last."""
    run = subprocess.run([sys.executable, "-c", f"from tests.adapters.test_latest_ties import {phase}; "
                          f"{phase}({str(data_dir)!r})"], capture_output=True, text=True,
                         cwd=Path(__file__).parents[2], timeout=600)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def _migrate_phase(data_dir: str) -> None:
    """Migrate to version 3, store the ties (the old state), then migrate to head; then lose the record of
    version 4 (a run cut short before it) and migrate again. Prints the answers after each step as JSON."""
    from billow.adapters import clickhouse
    from billow.adapters.clickhouse import ClickHouseUsageStore, connect

    everything = list(clickhouse.MIGRATIONS)
    clickhouse.MIGRATIONS[:] = [m for m in everything if m[0] < 4]
    store = ClickHouseUsageStore(connect(f"chdb://{data_dir}"))
    store.migrate()
    instants = _ties(store, "old")
    before = _other_answers(store, "old", instants)
    clickhouse.MIGRATIONS[:] = everything
    steps = []
    for _ in range(2):
        store.migrate()
        latest = {k: sorted(str(v) for v in vs) for k, vs in _latest_answers(store, "old", instants).items()}
        steps.append({"latest": latest, "others_unchanged": _other_answers(store, "old", instants) == before})
        store._command("DELETE FROM billow_migrations WHERE version = 4")
    # Usage written after the migration: the new views fill the new state.
    later = [at + 2 * TIES * HOUR for at in instants[:2]]
    for i, at in enumerate(later):
        for n, (subject, value) in enumerate([("a", "2.5"), ("b", "10")] if i else [("b", "10"), ("a", "2.5")]):
            store.write("old", [MeterValue("G", subject, at, Decimal(value), value, {}, "s", f"n{i}-{n}")], [])
    steps.append({"latest": {k: sorted(str(v) for v in vs) for k, vs in _latest_answers(store, "old", later).items()}})
    print(json.dumps(steps))
    store.close()


def test_migration_4_gives_ties_stored_before_it_the_largest_value_and_changes_nothing_else(tmp_path: Any) -> None:
    first, rerun, later = _in_a_process("_migrate_phase", tmp_path)
    for step in (first, rerun, later):
        assert set(map(tuple, step["latest"].values())) == {("10",)}, step["latest"]
    assert first["others_unchanged"] and rerun["others_unchanged"]


def _fill_phase(data_dir: str) -> None:
    """Ties stored without their LATEST state (as before migration 4), a LATEST read that fills them (made 2 s
    longer), a write 0.5 s into the fill, a second LATEST read meanwhile. Prints when each ended and the answers."""
    import threading
    import time

    from billow.adapters import clickhouse
    from billow.adapters.clickhouse import ClickHouseUsageStore, connect

    dsn = f"chdb://{data_dir}"
    store = ClickHouseUsageStore(connect(dsn), reader=lambda: connect(dsn))
    store.migrate()
    instants = _ties(store, "ns")
    # A fill that takes 2 s more than its statements (the engine sleeps at most 3 s per block).
    clickhouse.LATEST_BACKFILL.append("SELECT sleep(2)")
    store._command("TRUNCATE TABLE latest_backfills")
    done: dict[str, float] = {}
    answers: list[str] = []

    def read() -> None:
        rows = store.aggregate(_q("ns", "LATEST", None, instants[0] + timedelta(seconds=1)))
        answers.append(str(final_value("LATEST", rows[-1])))
        done.setdefault("first read", time.monotonic())

    first = threading.Thread(target=read)
    first.start()
    time.sleep(0.5)
    store.write("ns", [MeterValue("G", "a", T0 + 100 * HOUR, Decimal(1), "1", {}, "s", "w1")], [])
    done["write"] = time.monotonic()
    second = threading.Thread(target=read)
    second.start()
    first.join(60)
    second.join(60)
    store.close()
    print(json.dumps({"done": done, "answers": answers}))


def test_writes_go_on_while_a_meters_latest_cells_are_filled(tmp_path: Any) -> None:
    """The first LATEST read of a meter stored before migration 4 fills its cells (minutes for millions of values):
    meanwhile `billow serve`'s writes are not held up (the fill runs on a pooled client, outside the store's lock),
    and a second LATEST read of the meter waits for the fill and answers from the filled cells. (A process of its
    own: chdb opens one data path per process.)"""
    out = _in_a_process("_fill_phase", tmp_path)
    assert out["done"]["write"] < out["done"]["first read"] - 1, out  # the write did not wait for the fill
    assert out["answers"] == ["10", "10"], out
