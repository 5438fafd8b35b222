"""Issue 17 (query concurrency): the ClickHouse usage store runs reads on a small pool of clients of the same
engine (chdb allows any number of connection handles to its one engine per process, each with its own session),
so reads no longer queue behind each other or behind a write; writes and crash repair stay serialised.

Proved on chdb: N threads querying at once get exactly the answers of the same queries run one at a time, and a
read completes while another thread holds the store's write lock (before the pool, it waited for the lock)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from billow.adapters.clickhouse import ClickHouseUsageStore, connect
from billow.domain.usage import MeterValue, UsageQuery, final_value
from tests.conftest import HeldEngineClient, engine_seen, t


@pytest.fixture
def pooled(chdb_store: Any, namespace: str) -> Iterator[tuple[ClickHouseUsageStore, str]]:
    """A second store on the session's chdb engine, reading through a pool of its own clients."""
    path = chdb_store._client.path
    store = ClickHouseUsageStore(connect(f"chdb://{path}"), reader=lambda: connect(f"chdb://{path}"), readers=4)
    store.write(namespace, [
        MeterValue("M1", f"s{i % 16}", t("2026-06-01T00:00:00Z").replace(minute=i % 60, second=i % 7),
                   Decimal(i) / 100, str(i), {"model": f"m{i % 3}"}, "src", str(i)) for i in range(2000)], [])
    yield store, namespace
    store.close()


def queries(ns: str) -> list[UsageQuery]:
    out = []
    for agg in ("SUM", "COUNT", "MAX", "UNIQUE_COUNT"):
        for subjects in (None, ["s3"], ["s5", "s9"]):
            out.append(UsageQuery(namespace=ns, meter_id="M1", aggregation=agg, start=None, end=None,
                                  window_size="MINUTE", window_tz="UTC", subjects=subjects, group_by=["model"],
                                  by_subject=subjects is not None, subject_customers=None))
    return out


def shape(store: Any, q: UsageQuery) -> list[tuple[Any, ...]]:
    return [(r.window_start, r.subject, r.groups["model"], final_value(q.aggregation, r)) for r in store.aggregate(q)]


def test_concurrent_reads_return_what_serial_reads_do(pooled: Any) -> None:
    store, ns = pooled
    qs = queries(ns)
    serial = [shape(store, q) for q in qs]
    assert all(serial) and sum(v for *_, v in serial[0]) == sum(Decimal(i) / 100 for i in range(2000))
    threads, errors = 8, []
    results: list[list[list[tuple[Any, ...]]]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads)

    def run(n: int) -> None:
        try:
            start.wait()
            for _ in range(3):
                results[n].append([shape(store, q) for q in qs[n % len(qs):] + qs[:n % len(qs)]])
        except Exception as e:  # reported below: an engine error under concurrency is a failure
            errors.append(e)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    for n in range(threads):
        rotated = serial[n % len(qs):] + serial[:n % len(qs)]
        assert results[n] == [rotated] * 3
    assert store._open_readers <= 4  # the pool is bounded


def test_a_read_does_not_wait_for_a_write_in_progress(pooled: Any) -> None:
    store, ns = pooled
    q = queries(ns)[0]
    want = shape(store, q)
    held, release = threading.Event(), threading.Event()
    released_by_timeout: list[bool] = []

    def writer() -> None:  # a write holds the store's lock until the read is done (or 20 s pass)
        with store._lock:
            held.set()
            released_by_timeout.append(not release.wait(timeout=20))

    w = threading.Thread(target=writer)
    w.start()
    assert held.wait(timeout=20)
    try:
        got = shape(store, q)
    finally:
        release.set()
        w.join()
    assert got == want
    assert released_by_timeout == [False]  # the read finished while the lock was held


def _admitting(chdb_store: Any, namespace: str, queries: int) -> tuple[ClickHouseUsageStore, dict[str, Any]]:
    path = chdb_store._client.path
    seen = engine_seen()
    store = ClickHouseUsageStore(connect(f"chdb://{path}"), reader=lambda: HeldEngineClient(connect(f"chdb://{path}"), seen),
                                 readers=4, queries=queries)
    store.write(namespace, [
        MeterValue("M2", f"s{i % 4}", t("2026-06-01T00:00:00Z").replace(minute=i % 60), Decimal(i) / 10, str(i),
                   {"model": f"m{i % 3}"}, "src", f"q{i}") for i in range(400)], [])
    return store, seen


def test_no_more_pooled_queries_run_at_once_than_the_store_admits(chdb_store: Any, namespace: str) -> None:
    """Issue 17 item 4 (mixq): embedded, the engine's queries share the CPUs with the process's Python, so the store
    runs at most `queries` at once. Eight threads query together through a pool of four clients admitting two: never
    more than two run in the engine (before: up to four), and every answer is the serial one, exact."""
    store, seen = _admitting(chdb_store, namespace, queries=2)
    seen["go"].set()
    qs = [replace(q, meter_id="M2") for q in queries(namespace)[:8]]
    serial = [shape(store, q) for q in qs]
    assert sum(v for *_, v in serial[0]) == sum(Decimal(i) / 10 for i in range(400))
    seen["peak"], seen["go"] = 0, threading.Event()
    got: dict[int, list[Any]] = {}
    workers = [threading.Thread(target=lambda n=n: got.__setitem__(n, shape(store, qs[n]))) for n in range(8)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 30
    while seen["running"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # the other six have had time to start a query of their own, were they let in
    assert seen["running"] == 2 and len(store._waiting) == 6
    seen["go"].set()
    for w in workers:
        w.join(30)
    assert seen["peak"] == 2
    assert [got[n] for n in range(8)] == serial
    store.close()


def test_queries_waiting_for_their_turn_go_in_the_order_they_came(chdb_store: Any, namespace: str) -> None:
    """One query at a time: while one runs (held at its start), three more come one after another; they run in
    that order, and a LATEST fill (a migration's one-off backfill) does not hold a turn."""
    store, seen = _admitting(chdb_store, namespace, queries=1)
    q = replace(queries(namespace)[0], meter_id="M2")
    threads = []
    for name in ("first", "second", "third", "fourth"):
        th = threading.Thread(target=shape, args=(store, q), name=name)
        th.start()
        threads.append(th)
        deadline = time.monotonic() + 30
        while (seen["running"] + len(store._waiting)) < len(threads) and time.monotonic() < deadline:
            time.sleep(0.005)
    assert seen["running"] == 1 and len(store._waiting) == 3
    filled: list[Any] = []
    fill = threading.Thread(target=store._on_client, args=(lambda client: filled.append(
        client.client.query("SELECT 1").result_rows),))  # as _fill_latest uses the pool: not a turn
    fill.start()
    fill.join(10)
    assert filled == [[(1,)]]
    seen["go"].set()
    for th in threads:
        th.join(30)
    assert seen["order"] == ["first", "second", "third", "fourth"]
    store.close()


def test_the_embedded_engine_runs_one_query_fewer_than_the_cpus_at_once() -> None:
    from billow.bootstrap import engine_queries

    assert [engine_queries(n) for n in (1, 2, 4, 16)] == [1, 1, 3, 15]
    assert engine_queries() >= 1


def test_a_check_s_usage_read_and_ingest_s_dedup_take_no_turn_behind_reports(chdb_store: Any, namespace: str) -> None:
    """One query at a time, that one a slow report (held in the engine) and another report waiting: an entitlement
    check's usage read (`bounded_usage`) and ingest's dedup look-up (`present_keys`) answer at once, exactly; they
    would otherwise wait behind every report queued before them (failed so: each timed out)."""
    from billow.domain.events import CloudEvent
    from billow.domain.usage import StoredEvent

    path, seen = chdb_store._client.path, engine_seen()
    store = ClickHouseUsageStore(connect(f"chdb://{path}"), reader=lambda: HeldEngineClient(
        connect(f"chdb://{path}"), seen, held=lambda name: name.startswith("report")), readers=4, queries=1)
    at = t("2026-06-01T10:15:00Z")
    store.write(namespace, [MeterValue("M3", "s1", at, Decimal("2.5"), "2.5", {}, "src", f"k{i}") for i in range(3)],
                [StoredEvent(CloudEvent(id=f"k{i}", source="src", type="prompt", subject="s1", time=at, data={}), at)
                 for i in range(3)])
    q = replace(queries(namespace)[0], meter_id="M3")
    reports = [threading.Thread(target=shape, args=(store, q), name=f"report-{n}") for n in range(2)]
    for th in reports:
        th.start()
    deadline = time.monotonic() + 30
    while len(store._waiting) < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert store._running_queries == 1 and len(store._waiting) == 1
    answers: dict[str, Any] = {}
    bounds = [t("2026-06-01T00:00:00Z"), t("2026-06-01T10:00:00Z"), t("2026-06-02T00:00:00Z")]
    check = threading.Thread(target=lambda: answers.__setitem__(
        "usage", store.bounded_usage(namespace, "M3", "SUM", ["s1"], [], bounds)))
    dedup = threading.Thread(target=lambda: answers.__setitem__(
        "keys", store.present_keys(namespace, [("src", "k1"), ("src", "k9")])))
    for th in (check, dedup):
        th.start()
        th.join(10)
    try:
        assert answers == {"usage": [Decimal(0), Decimal("7.5")], "keys": {("src", "k1")}}
    finally:
        seen["go"].set()
        for th in reports:
            th.join(30)
        store.close()
