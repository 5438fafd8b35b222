"""Issue 17 item 2: the dedup look-up's cost per event does not grow with the store.

A store is pre-filled with many raw events straight in chdb (INSERT ... SELECT FROM numbers(N)); the look-up of a
batch of keys (half stored, half new) must then read a number of rows bounded by the batch, not by N: asserted on
the engine's own `read_rows` of every query the look-up runs (its query summary), not on timings. The answer stays
exact on (namespace, source, id).
(chdb's query summary reports the result's rows, not the rows read, so each look-up query is asked of the engine as
EXPLAIN ESTIMATE with the same parameters: the rows of the granules its primary-key analysis selects.)"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from billow.adapters.clickhouse import ClickHouseUsageStore
from billow.domain.events import CloudEvent
from billow.domain.usage import MeterValue, StoredEvent
from tests.support.usage import in_a_process

N = 2_000_000  # events already stored
BATCH = 1_000


class CountingClient:
    """The engine's client, adding up the rows each SELECT reads: EXPLAIN ESTIMATE of it with the same parameters."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.read_rows = 0
        self.queries = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def query(self, *args: Any, **kwargs: Any) -> Any:
        sql, rest = args[0], args[1:]
        plan = self.real.query("EXPLAIN ESTIMATE " + sql, *rest, **kwargs)
        self.read_rows += sum(int(r[plan.column_names.index("rows")]) for r in plan.result_rows)
        self.queries += 1
        return self.real.query(*args, **kwargs)


@pytest.fixture
def prefilled(chdb_store: ClickHouseUsageStore, namespace: str) -> Iterator[tuple[ClickHouseUsageStore, str]]:
    chdb_store._command(
        "INSERT INTO events (namespace, source, id, type, subject, time, data, ingested_at) "
        "SELECT {ns:String}, 'pre', toString(number), 'prompt', concat('c', toString(number % 100)), "
        "toDateTime64('2026-01-01 00:00:00', 3, 'UTC') + number, '{}', toDateTime64('2026-02-01 00:00:00', 3, 'UTC') "
        "FROM numbers({n:UInt64})", {"ns": namespace, "n": N})
    yield chdb_store, namespace


def _lookup_rows(store: ClickHouseUsageStore, call: Any) -> tuple[Any, int]:
    real = store._client
    counting = CountingClient(real)
    store._client = counting
    try:
        out = call()
    finally:
        store._client = real
    return out, counting.read_rows


def test_dedup_lookup_reads_rows_bounded_by_the_batch_not_the_store(prefilled: tuple[ClickHouseUsageStore, str]) -> None:
    store, ns = prefilled
    rng = random.Random(17)
    stored = [("pre", str(n)) for n in rng.sample(range(N), BATCH // 2)]
    fresh = [("pre", f"new{n}") for n in range(BATCH // 4)] + [("other", str(n)) for n in range(BATCH // 4)]
    keys = stored + fresh
    rng.shuffle(keys)
    present, read = _lookup_rows(store, lambda: store.present_keys(ns, keys))
    assert present == set(stored)  # exact
    # Each key touches about one small granule (256 rows since usage-store migration 7) of the key-ordered ledger: the
    # rows read depend on the batch only (a scan, as before issue 17, read about all N).
    assert read <= BATCH * 256, f"the dedup look-up read {read:,} rows of a {N:,}-event store for {BATCH} keys"
    assert read < N // 5


def test_written_keys_tells_stored_begun_and_new_apart(usage_store: Any, namespace: str) -> None:
    """written_keys tells apart stored keys, keys of a write that began (values may be stored without their raw event)
    and untouched keys, exactly, also across namespaces (the twin and chdb alike)."""
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    ev = CloudEvent("e1", "src", "prompt", "a", t0, {"x": 1})
    value = MeterValue("M1", "a", t0, Decimal(1), "", {}, "src", "e2")
    usage_store.write(namespace, [value], [StoredEvent(ev, t0)])
    stored, begun = usage_store.written_keys(namespace, [("src", "e1"), ("src", "e2"), ("src", "e3")])
    assert stored == {("src", "e1")}
    assert begun == {("src", "e2")}
    assert usage_store.written_keys("elsewhere", [("src", "e1"), ("src", "e2")]) == (set(), set())


def test_a_write_whose_ledger_rows_were_lost_is_still_found(chdb_store: ClickHouseUsageStore, namespace: str) -> None:
    """chdb writes a view's part after its table's: a crash between the events part and the ledger's state-1 rows leaves
    keys the ledger shows begun only. They are checked against the events table (the authority): stored, not new."""
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    evs = [StoredEvent(CloudEvent(f"e{i}", "src", "prompt", "a", t0, {"x": i}), t0) for i in range(3)]
    values = [MeterValue("M1", "a", t0, Decimal(i), "", {}, "src", f"e{i}") for i in range(3)]
    chdb_store._command("DETACH TABLE event_keys_mv")  # the view's part never lands, as if the process died first
    try:
        chdb_store.write(namespace, values, evs)
    finally:
        chdb_store._command("ATTACH TABLE event_keys_mv")
    keys = [("src", f"e{i}") for i in range(4)]
    assert chdb_store.written_keys(namespace, keys) == ({("src", "e0"), ("src", "e1"), ("src", "e2")}, set())
    assert chdb_store.present_keys(namespace, keys) == {("src", "e0"), ("src", "e1"), ("src", "e2")}


def test_new_keys_read_no_rows_of_a_filled_store(prefilled: tuple[ClickHouseUsageStore, str]) -> None:
    """The embedded engine has one writer, so a filter in memory (built from the ledger, kept by `write`) rules out keys
    never written: a batch of new keys costs no read of the store at all; stored keys are still found exactly."""
    store, ns = prefilled
    store.present_keys(ns, [("pre", "0")])  # the filter is built once, at the first look-up
    fresh = [("new", f"k{n}") for n in range(BATCH)]
    present, read = _lookup_rows(store, lambda: store.present_keys(ns, fresh))
    assert present == set() and read < BATCH  # a few false positives (~0.2 %) cost a granule each
    present, read = _lookup_rows(store, lambda: store.present_keys(ns, [("pre", "17"), *fresh[:10]]))
    assert present == {("pre", "17")}


def _ledger(store: ClickHouseUsageStore) -> dict[str, int]:
    """Every (namespace, source, id) the ledger holds, with its highest state (1: raw event stored, 0: begun)."""
    return {"\x1f".join(r[:3]): int(r[3]) for r in store._query(
        "SELECT namespace, source, id, max(state) FROM event_keys GROUP BY namespace, source, id", {})}


def _write(store: ClickHouseUsageStore, ns: str, ids: range, *, raw: bool = True) -> None:
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    values = [MeterValue("M1", "a", t0, Decimal(i), "", {}, "src", f"e{i}") for i in ids]
    store.write(ns, values, [StoredEvent(CloudEvent(f"e{i}", "src", "prompt", "a", t0, {"x": i}), t0) for i in ids]
                if raw else [])


def _granularity(store: ClickHouseUsageStore) -> str:
    engine = str(store._query("SELECT engine_full FROM system.tables WHERE database = currentDatabase() "
                              "AND name = 'event_keys'", {})[0][0])
    return engine.split("index_granularity = ")[1].split(",")[0].strip()


def _migrate_7(data_dir: str, cut_after_exchange: bool) -> None:
    """A store at usage-store migration 6 holding stored and begun keys; migration 7 run with a write landing in the
    old ledger between its copy and its exchange (a server's sink), either to its end or cut short right after the
    exchange (the view not made again); then migrate run, and run once more. Prints the ledger and layout after
    each step."""
    from billow.adapters import clickhouse
    from billow.adapters.clickhouse import connect

    everything = list(clickhouse.MIGRATIONS)
    clickhouse.MIGRATIONS[:] = [m for m in everything if m[0] < 7]
    store = ClickHouseUsageStore(connect(f"chdb://{data_dir}"))
    store.migrate()
    _write(store, "n1", range(0, 300))
    _write(store, "n2", range(0, 5))
    _write(store, "n1", range(300, 310), raw=False)  # values only: a write that died before its raw events
    steps: list[dict[str, Any]] = [{"ledger": _ledger(store), "granularity": _granularity(store)}]
    version, _, statements = everything[6]
    assert version == 7
    copy = next(i for i, s in enumerate(statements) if s.startswith("INSERT INTO event_keys_v7"))
    for stmt in statements[:copy + 1]:
        store._command(stmt)
    _write(store, "n1", range(400, 410))  # lands in the old ledger after the copy was made
    end = statements.index("EXCHANGE TABLES event_keys AND event_keys_v7") + 1 if cut_after_exchange else None
    for stmt in statements[copy + 1:end]:
        store._command(stmt)
    if not cut_after_exchange:
        store._command("INSERT INTO billow_migrations (version, name, applied_at) VALUES (7, 'm', now64(3))")
    clickhouse.MIGRATIONS[:] = everything
    for _ in range(2):
        store.migrate()
        _write(store, "n3", range(len(steps)))  # a write after the migration: its raw event reaches the ledger (state 1)
        steps.append({"ledger": _ledger(store), "granularity": _granularity(store),
                      "tables": sorted(r[0] for r in store._query(
                          "SELECT name FROM system.tables WHERE database = currentDatabase() AND name LIKE 'event_keys%'",
                          {})),
                      "lookup": sorted(map(list, store.written_keys("n1", [("src", f"e{i}") for i in (0, 305, 405, 999)])[0]))})
        store._command("DELETE FROM billow_migrations WHERE version = 7")
    print(json.dumps(steps))
    store.close()


def _migrate_7_whole_phase(data_dir: str) -> None:
    _migrate_7(data_dir, cut_after_exchange=False)


def _migrate_7_cut_phase(data_dir: str) -> None:
    _migrate_7(data_dir, cut_after_exchange=True)


@pytest.mark.parametrize("phase", ["_migrate_7_whole_phase", "_migrate_7_cut_phase"])
def test_migration_7_keeps_every_ledger_key_in_the_new_layout(tmp_path: Any, phase: str) -> None:
    """Usage-store migration 7 rebuilds the dedup ledger in 256-row granules (its merges cost half): every key it held,
    stored or begun, in every namespace, is held after it with the same state, so are keys written to the old ledger
    while it was copied; the view that records stored raw events writes to the new ledger; cut short after the
    exchange and run again, or run twice, the same."""
    before, *after = in_a_process("tests.adapters.test_dedup_flat", phase, tmp_path)
    assert before["granularity"] == "64"
    assert len(before["ledger"]) == 315 and sum(before["ledger"].values()) == 305  # 10 begun only
    late = {f"n1\x1fsrc\x1fe{i}": 1 for i in range(400, 410)}
    for n, step in enumerate(after, start=1):
        assert step["granularity"] == "256"
        assert step["tables"] == ["event_keys", "event_keys_mv"]
        new = {f"n3\x1fsrc\x1fe{i}": 1 for i in range(n)}
        assert step["ledger"] == {**before["ledger"], **late, **new}
        assert step["lookup"] == [["src", "e0"], ["src", "e405"]]
