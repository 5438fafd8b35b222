"""LATEST when readings share an instant: of the values at the latest instant the largest is the latest, whichever tier
of the usage store answers (raw values, minute or hour rollups; per meter, per subject or subject-first) and
whatever order the readings were stored in. Before migration 4 the rollups' argMax kept whichever value the engine
met first, so two ranges over the same instant answered 10 and 2.5 (tests/e2e/test_balance_cache_outside.py found
it). Migration 4 gives every rollup the new state and fills it for the cells stored before it, changing no other
aggregate; migration 5 replaces that state by one Int256 key per cell (`latest_key`, cheaper for the views to write),
filled the same way."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from billow.domain.usage import MeterValue, UsageQuery, final_value
from tests.conftest import t
from tests.support.usage import in_a_process

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
    return in_a_process("tests.adapters.test_latest_ties", phase, data_dir)


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
        steps.append({"latest": latest, "others_unchanged": _other_answers(store, "old", instants) == before,
                      "filled": sorted(map(list, store._query("SELECT namespace, meter_id FROM latest_backfills FINAL", {})))})
        store._command("DELETE FROM billow_migrations WHERE version >= 4")
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
    assert first["filled"] == rerun["filled"] == [["old", "G"]]  # filled per meter: the store held values


def _fresh_phase(data_dir: str) -> None:
    """A store made at head (no values when migration 4 ran), then ties stored, then a LATEST read with a fill that
    would fail. Prints the answers and what latest_backfills holds."""
    from billow.adapters import clickhouse
    from billow.adapters.clickhouse import ClickHouseUsageStore, connect

    store = ClickHouseUsageStore(connect(f"chdb://{data_dir}"))
    store.migrate()
    instants = _ties(store, "ns")
    clickhouse.LATEST_BACKFILL.append(("SELECT throwIf(1, 'a fill ran')", None, None))
    latest = {k: sorted(str(v) for v in vs) for k, vs in _latest_answers(store, "ns", instants).items()}
    filled = sorted(map(list, store._query("SELECT namespace, meter_id FROM latest_backfills FINAL", {})))
    print(json.dumps({"latest": latest, "filled": filled}))
    store.close()


def test_a_store_made_at_migration_4_or_later_never_fills(tmp_path: Any) -> None:
    """Every value such a store holds came through views that write the state: no meter's first LATEST read pays a
    fill (for a 10 M-value meter, minutes)."""
    out = _in_a_process("_fresh_phase", tmp_path)
    assert set(map(tuple, out["latest"].values())) == {("10",)}, out
    assert out["filled"] == [["", ""]]


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
    clickhouse.LATEST_BACKFILL.append(("SELECT sleep(2)", None, None))
    store._command("TRUNCATE TABLE latest_backfills")
    store._command("INSERT INTO latest_backfills VALUES ('ns', 'H', now64(3))")  # another meter, filled already
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
    store.aggregate(replace(_q("ns", "LATEST", None, None), meter_id="H"))
    done["other meter"] = time.monotonic()
    first.join(60)
    second.join(60)
    store.close()
    print(json.dumps({"done": done, "answers": answers}))


def test_writes_go_on_while_a_meters_latest_cells_are_filled(tmp_path: Any) -> None:
    """The first LATEST read of a meter stored before migration 4 fills its cells (minutes for millions of values):
    meanwhile `billow serve`'s writes are not held up (the fill runs on a pooled client, outside the store's lock),
    nor are LATEST reads of other meters, and a second LATEST read of the meter waits for the fill and answers from the filled cells. (A process of its
    own: chdb opens one data path per process.)"""
    out = _in_a_process("_fill_phase", tmp_path)
    assert out["done"]["write"] < out["done"]["first read"] - 1, out  # the write did not wait for the fill
    assert out["done"]["other meter"] < out["done"]["first read"] - 1, out  # nor another meter's LATEST read
    assert out["answers"] == ["10", "10"], out


def _cells(store: Any) -> dict[str, list[list[str]]]:
    """Every rollup's cells as they answer (all their rows merged: sum, count, min, max, distinct values, LATEST),
    beside the same aggregates of the stored values over the same cells: table -> [rollup rows, from the values]."""
    from billow.adapters.clickhouse_schema import LATEST_KEY, ROLLUPS, latest_value

    out = {}
    for table, start_of, keys in ROLLUPS:
        order = f" ORDER BY minute, {keys}"
        rolled = store._query(  # (identifiers only, from ROLLUPS)
            f"SELECT minute, {keys}, toString(sum(sum_value)), sum(cnt), toString(min(min_value)), "  # noqa: S608
            f"toString(max(max_value)), uniqExactMerge(uniq_state), {latest_value('max(latest_key)')} FROM {table} "
            f"GROUP BY minute, {keys}" + order, {})
        raw = store._query(
            f"SELECT toDateTime({start_of}(time), 'UTC') AS minute, {keys}, toString(sum(toDecimal256(value, 18))), "  # noqa: S608
            f"count(), toString(min(value)), toString(max(value)), uniqExact(value_str), "
            f"{latest_value(LATEST_KEY)} FROM meter_values GROUP BY minute, {keys}" + order, {})
        out[table] = [[list(map(str, r)) for r in rolled], [list(map(str, r)) for r in raw]]
    return out


def _ties_in_groups(store: Any, namespace: str) -> list[Any]:
    """`_ties`, and two minutes before each instant, in a group, readings of three subjects at one instant, and many
    readings a cell (of one write: the rollups hold fewer rows than the values, so a fill reads them). Returns the
    instants."""
    instants = _ties(store, namespace)
    for i, at in enumerate(instants):
        for n, (subject, value) in enumerate([("d", "4"), ("a", "3"), ("e", "4.5")] if i % 2 else
                                             [("e", "4.5"), ("d", "4"), ("a", "3")]):
            store.write(namespace, [MeterValue("G", subject, at - 2 * MINUTE, Decimal(value), value, {"region": "eu"},
                                               "s", f"g{i}-{n}")], [])
        store.write(namespace, [MeterValue("G", "g", at - 3 * MINUTE + timedelta(milliseconds=k), Decimal(k % 5),
                                           str(k % 5), {"region": "us"}, "s", f"m{i}-{k}") for k in range(200)], [])
    return instants


def _derive_phase(data_dir: str) -> None:
    """Ties across subjects and group values within hours, stored before migration 4; then the fill (made to pause 2 s
    after the finest rollup, before the others are filled from it) of a LATEST read, and a write 0.5 s into it: a
    reading in a tied cell and one in a new hour. Prints every rollup's cells beside the values' own aggregates, and
    the LATEST answers per subject and over every tier."""
    import threading
    import time

    from billow.adapters import clickhouse
    from billow.adapters.clickhouse import ClickHouseUsageStore, connect

    everything = list(clickhouse.MIGRATIONS)
    clickhouse.MIGRATIONS[:] = [m for m in everything if m[0] < 4]
    dsn = f"chdb://{data_dir}"
    store = ClickHouseUsageStore(connect(dsn), reader=lambda: connect(dsn))
    store.migrate()
    instants = _ties_in_groups(store, "ns")
    clickhouse.MIGRATIONS[:] = everything
    store.migrate()
    clickhouse.LATEST_BACKFILL.insert(1, ("SELECT sleep(2)", None, None))
    answers: list[str] = []
    done: dict[str, float] = {}

    def read() -> None:
        rows = store.aggregate(_q("ns", "LATEST", None, None, by_subject=True))
        answers.append(json.dumps({r.subject: str(final_value("LATEST", r)) for r in rows}))
        done.setdefault("fill", time.monotonic())

    first = threading.Thread(target=read)
    first.start()
    time.sleep(0.5)
    store.write("ns", [MeterValue("G", "f", instants[2], Decimal(12), "12", {}, "s", "w1"),
                       MeterValue("G", "a", T0 + 100 * HOUR, Decimal(1), "1", {}, "s", "w2")], [])
    done["write"] = time.monotonic()
    first.join(60)
    read()
    tiers = {k: sorted(str(v) for v in vs) for k, vs in _latest_answers(store, "ns", instants).items()}
    print(json.dumps({"cells": _cells(store), "by_subject": answers, "tiers": tiers, "done": done}))
    store.close()


def test_the_fill_derives_every_coarser_rollup_from_the_finest_exactly(tmp_path: Any) -> None:
    """The fill scans the stored values once, for the minute rollup, and gives the other rollups their LATEST state
    from finer ones (clickhouse_schema.LATEST_BACKFILL): every cell of every rollup then answers what the stored values
    in it do (the largest value at its latest instant, ties across subjects and group values included, and every
    other aggregate unchanged), and a write landing after the minute rollup was filled, before the coarser ones were,
    counts once everywhere."""
    out = _in_a_process("_derive_phase", tmp_path)
    assert out["done"]["write"] < out["done"]["fill"] - 1, out["done"]  # the write landed during the pause
    for table, (rolled, raw) in out["cells"].items():
        assert rolled == raw, table
    assert len(out["cells"]["meter_rollup_1h_all"][1]) == 3 * TIES + 1  # the ties' hours in three groups, the write's
    # the tie at the third instant now has 12 (subject f, written during the fill) beside 10 and 2.5: 10 among a, b, c
    assert out["by_subject"] == [json.dumps({"a": "1", "b": "2.5", "c": "7", "d": "4", "e": "4.5", "f": "12", "g": "4"})] * 2
    assert [out["tiers"][k] for k in sorted(out["tiers"])] == [["10"]] * 2 + [["10", "12"]] + [["10"]] * (TIES - 3)
    eu = [r for r in out["cells"]["meter_rollup_1h_all"][0] if "eu" in r[1]]
    assert len(eu) == TIES and {r[-1] for r in eu} == {"4.5"}, eu  # the group's tie: its largest reading


def _latest_cells(store: Any, state: str) -> dict[str, list[list[str]]]:
    """Every rollup's cells with the LATEST value its reads answer from `state`: `latest_pair` (migrations 4 to 5),
    `latest_key` (since): table -> rows (cell, keys, value)."""
    from billow.adapters.clickhouse_schema import ROLLUPS, latest_value

    value = "toString(argMaxMerge(latest_pair))" if state == "latest_pair" else latest_value("max(latest_key)")
    return {table: [list(map(str, r)) for r in store._query(  # (identifiers only, from ROLLUPS)
        f"SELECT minute, {keys}, {value} FROM {table} GROUP BY minute, {keys} ORDER BY minute, {keys}", {})]  # noqa: S608
        for table, _, keys in ROLLUPS}


def _migrate_5_phase(data_dir: str) -> None:
    """A store at migration 4 (its views writing `latest_pair`, whose reads answered LATEST), ties in groups stored;
    its cells' LATEST and every other answer read; then migrated to head and read again (a LATEST read first fills
    the meter); then the record of version 5 lost (a run cut short) and migrated again. Prints what each step read."""
    from billow.adapters import clickhouse
    from billow.adapters.clickhouse import ClickHouseUsageStore, connect

    everything = list(clickhouse.MIGRATIONS)
    clickhouse.MIGRATIONS[:] = [m for m in everything if m[0] < 5]
    store = ClickHouseUsageStore(connect(f"chdb://{data_dir}"))
    store.migrate()
    instants = _ties_in_groups(store, "ns")
    before = {"cells": _latest_cells(store, "latest_pair"), "others": _other_answers(store, "ns", instants)}
    clickhouse.MIGRATIONS[:] = everything
    steps = []
    for _ in range(2):
        store.migrate()
        tiers = {k: sorted(str(v) for v in vs) for k, vs in _latest_answers(store, "ns", instants).items()}
        rows = store.aggregate(_q("ns", "LATEST", None, None, by_subject=True))
        steps.append({"cells": _latest_cells(store, "latest_key"), "others": _other_answers(store, "ns", instants),
                      "tiers": tiers, "by_subject": {r.subject: str(final_value("LATEST", r)) for r in rows},
                      "filled": sorted(map(list, store._query("SELECT namespace, meter_id FROM latest_backfills FINAL",
                                                              {})))})
        store._command("DELETE FROM billow_migrations WHERE version = 5")
    print(json.dumps({"before": before, "steps": steps}))
    store.close()


def test_migration_5_answers_every_cell_stored_before_it_as_migration_4_did(tmp_path: Any) -> None:
    """Migration 5 replaces the rollups' LATEST state (an argMax of (time, value), costly to compute per inserted row)
    by one Int256 key per cell: a store written at migration 4 answers, once the meter is filled, the same LATEST in
    every cell of every rollup as its old state did, and every other aggregate as before; re-run, the same."""
    out = _in_a_process("_migrate_5_phase", tmp_path)
    before = out["before"]
    assert sum(map(len, before["cells"].values())) > 5 * TIES  # every rollup holds cells
    for step in out["steps"]:
        assert step["cells"] == before["cells"]
        assert step["others"] == before["others"]
        assert set(map(tuple, step["tiers"].values())) == {("10",)}, step["tiers"]
        assert step["by_subject"] == {"a": "10", "b": "2.5", "c": "7", "d": "4", "e": "4.5", "g": "4"}
        assert step["filled"] == [["ns", "G"]]  # the store held values: filled per meter


_SEATS = {"slug": "seats", "eventType": "seats", "aggregation": "LATEST", "valueProperty": "$.n"}


def _host_settings(data_dir: str) -> Any:
    from billow.bootstrap import Settings

    return Settings.parse({"data_dir": data_dir, "billing_every_s": 0, "meters": [_SEATS]})


def _stored_at_3_phase(data_dir: str) -> None:
    """`billow serve`'s stores as a version before usage-store migration 4 left them: a LATEST meter (from the
    config), ties stored."""
    from billow.adapters import clickhouse
    from billow.bootstrap import build

    clickhouse.MIGRATIONS[:] = [m for m in clickhouse.MIGRATIONS if m[0] < 4]
    c = build(_host_settings(data_dir))
    meter = c.meta.get_meter(c.namespace, "seats")
    assert meter is not None
    _ties(_MeterAs(c.usage, meter.id), c.namespace)
    print(json.dumps({"meter": meter.id}))
    c.close()


class _MeterAs:
    """A usage store whose writes of meter G go to another meter id."""

    def __init__(self, store: Any, meter_id: str) -> None:
        self.store, self.meter_id = store, meter_id

    def write(self, namespace: str, values: list[MeterValue], events: list[Any]) -> None:
        self.store.write(namespace, [replace(v, meter_id=self.meter_id) for v in values], events)


def _serve_phase(data_dir: str) -> None:
    """`billow serve` starting on those stores (now migrated to head), no request made: what latest_backfills holds
    once its start-up fill has ended, and a LATEST read then."""
    from billow.local.server import BillowServer

    server = BillowServer(_host_settings(data_dir), port=0)
    server.latest_fill.join(120)
    c = server.container
    filled = sorted(map(list, c.usage._query("SELECT namespace, meter_id FROM latest_backfills FINAL", {})))
    meter = c.meta.get_meter(c.namespace, "seats")
    assert meter is not None
    rows = c.usage.aggregate(UsageQuery(namespace=c.namespace, meter_id=meter.id, aggregation="LATEST", start=T0,
                                        end=T0 + timedelta(seconds=31), window_size=None, window_tz="UTC",
                                        subjects=None, group_by=[], by_subject=False, subject_customers=None))
    print(json.dumps({"filled": filled, "namespace": c.namespace, "latest": str(final_value("LATEST", rows[-1]))}))
    server.httpd.server_close()
    server.close(drain_timeout_s=1)


def test_billow_serve_fills_its_latest_meters_at_start_so_no_request_waits(tmp_path: Any) -> None:
    """A store upgraded from before migration 4 holds LATEST meters whose cells lack the state: `billow serve` fills
    them in the background as it starts (before, the meter's first LATEST query did, for minutes on a big meter)."""
    meter = _in_a_process("_stored_at_3_phase", tmp_path)["meter"]
    out = _in_a_process("_serve_phase", tmp_path)
    assert out["filled"] == [[out["namespace"], meter]], out
    assert out["latest"] == "10"


def _migrate_all_phase(data_dir: str) -> None:
    """`billow migrate` / the AWS migrate function on those stores: what it reported, what latest_backfills holds;
    then, with no time left (its `fill_until` false at once), on a store whose record was lost."""
    from billow.adapters.clickhouse import ClickHouseUsageStore, connect
    from billow.migrations import migrate_all

    settings = _host_settings(data_dir)
    out: dict[str, Any] = {"first": migrate_all(settings)}
    store = ClickHouseUsageStore(connect(f"chdb://{Path(data_dir) / 'usage'}"))
    out["filled"] = sorted(map(list, store._query("SELECT namespace, meter_id FROM latest_backfills FINAL", {})))
    store._command("TRUNCATE TABLE latest_backfills")
    store.close()
    out["no_time"] = migrate_all(settings, fill_until=lambda: False)
    print(json.dumps(out))


def test_the_migrate_function_fills_latest_meters_so_no_request_does(tmp_path: Any) -> None:
    """In AWS no request should fill a LATEST meter stored before migration 4: a big meter's fill takes minutes,
    past API Gateway's 29 s, and one cut short records nothing, so every query of that meter started it again. The
    migrate function (and `billow migrate`) fills them, while its invocation has time left, and says how many."""
    meter = _in_a_process("_stored_at_3_phase", tmp_path)["meter"]
    out = _in_a_process("_migrate_all_phase", tmp_path)
    assert out["filled"] == [["default", meter]], out
    assert out["first"]["latestFill"] == "1 of 1 LATEST meters checked or filled"
    assert out["no_time"]["latestFill"].startswith("0 of 1 LATEST meters checked or filled; out of time"), out


def test_the_migrate_function_starts_no_fill_with_less_than_its_margin_left() -> None:
    from functions.migrate.handler import FILL_MARGIN_MS, _while_time_left

    class Invocation:  # what the function reads of its LambdaContext
        left = 0

        def get_remaining_time_in_millis(self) -> int:
            return self.left

    ctx = Invocation()
    may = _while_time_left(ctx)  # type: ignore[arg-type]
    ctx.left = FILL_MARGIN_MS + 1
    assert may()
    ctx.left = FILL_MARGIN_MS
    assert not may()
    assert _while_time_left(None) is None  # outside Lambda: every meter
