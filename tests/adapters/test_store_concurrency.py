"""Issue 17 (query concurrency): the ClickHouse usage store runs reads on a small pool of clients of the same
engine (chdb allows any number of connection handles to its one engine per process, each with its own session),
so reads no longer queue behind each other or behind a write; writes and crash repair stay serialised.

Proved on chdb: N threads querying at once get exactly the answers of the same queries run one at a time, and a
read completes while another thread holds the store's write lock (before the pool, it waited for the lock)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from billow.adapters.clickhouse import ClickHouseUsageStore, connect
from billow.domain.usage import MeterValue, UsageQuery, final_value
from tests.conftest import t


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
