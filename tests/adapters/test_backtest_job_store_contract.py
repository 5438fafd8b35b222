"""One contract for the backtest job store (ports.BacktestJobStore, issue 20): the in-memory twin, SQLite and a real
PostgreSQL (pg8000). A job round-trips exactly (amounts as decimal strings, Decimal's own digits); it moves by
compare-and-set on its status, so of two claims one wins and a stale job cannot be claimed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from billow.adapters.memory_backtests import InMemoryBacktestJobStore
from billow.adapters.sql import SqlMetaStore
from billow.adapters.sql_backtests import SqlBacktestJobStore
from billow.domain.backtest import Row
from billow.domain.backtest_jobs import STALE_AFTER, Job
from billow.ids import new_id
from tests.conftest import require_service, t

T0 = t("2026-05-01T00:10:00Z")
PLAN = {"id": "01PLAN", "key": "basic", "version": 1, "currency": "USD", "phases": [{"key": "default"}]}
BIG = "99999999999999999999.999999999999999999"


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def jobs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        yield InMemoryBacktestJobStore()
        return
    url = (f"sqlite:///{tmp_path / 'meta.db'}" if request.param == "sqlite"
           else require_service("BILLOW_TEST_PG_URL", "PostgreSQL"))
    meta = SqlMetaStore(url)
    store = SqlBacktestJobStore(meta.engine)
    store.migrate()
    yield store
    meta.close()


def job(namespace: str, customers: int = 3, at: Any = T0) -> Job:
    return Job(new_id(), namespace, {"plan": PLAN, "from": "2026-04-01T00:00:00Z", "to": "2026-05-01T00:00:00Z",
                                     "customers": [f"c{i}" for i in range(customers)]}, at)


def test_a_job_round_trips_and_is_its_namespace_only(jobs: Any, namespace: str) -> None:
    j = job(namespace)
    jobs.add(j)
    got = jobs.get(namespace, j.id)
    assert got is not None and got.spec == j.spec and got.status == "queued"
    assert (got.created_at, got.updated_at, got.completed_at) == (T0, T0, None)
    assert got.progress() == {"success": 0, "failed": 0, "total": 3, "updatedAt": "2026-05-01T00:10:00Z"}
    assert jobs.get(namespace + "x", j.id) is None and jobs.get(namespace, new_id()) is None


def test_claim_then_progress_then_result_exactly(jobs: Any, namespace: str) -> None:
    j = job(namespace)
    jobs.add(j)
    running = jobs.claim(namespace, j.id, T0 + timedelta(seconds=1), T0 - STALE_AFTER)
    assert running is not None and running.status == "running" and running.spec == j.spec
    assert jobs.claim(namespace, j.id, T0 + timedelta(seconds=2), T0 - STALE_AFTER) is None  # claimed once
    jobs.report(namespace, j.id, 2, 1, T0 + timedelta(seconds=3))
    mid = jobs.get(namespace, j.id)
    assert (mid.status, mid.success, mid.failed, mid.updated_at) == ("running", 2, 1, T0 + timedelta(seconds=3))
    running.rows = [Row("c0", "k0", "Zoë", "USD", 1, Decimal(BIG), Decimal("0.000000000000000001")),
                    Row("c1", None, None, "USD", 2, Decimal("62.490"), Decimal("30"))]
    running.failures = [{"customerId": "c2", "reason": "ValueError: no"}]
    running.status, running.success, running.failed = "succeeded", 2, 1
    running.completed_at = running.updated_at = T0 + timedelta(seconds=4)
    assert jobs.finish(running)
    assert not jobs.finish(running)  # only from running
    done = jobs.get(namespace, j.id)
    assert done.status == "succeeded" and done.completed_at == T0 + timedelta(seconds=4)
    assert done.rows == running.rows  # Decimal digits kept: 62.490 stays 62.490, 30 stays 30
    light = jobs.get(namespace, j.id, rows=False)  # a progress read leaves the rows out
    assert light.rows == [] and light.progress() == done.progress() and light.status == "succeeded"
    assert [str(r.current) for r in done.rows] == [BIG, "62.490"]
    assert done.failures == running.failures
    assert done.to_json()["totals"] == running.to_json()["totals"]
    assert done.csv() == running.csv()
    jobs.report(namespace, j.id, 0, 0, T0 + timedelta(seconds=9))  # a late progress write moves nothing
    assert jobs.get(namespace, j.id).updated_at == T0 + timedelta(seconds=4)


def test_a_stale_job_cannot_be_claimed_and_is_failed_once(jobs: Any, namespace: str) -> None:
    j = job(namespace)
    jobs.add(j)
    later = T0 + STALE_AFTER
    assert jobs.claim(namespace, j.id, later, later - STALE_AFTER) is None  # 15 minutes without a write
    dead = jobs.get(namespace, j.id).as_seen(later)
    assert dead.status == "failed" and "worker stopped" in (dead.error or "")
    dead.completed_at = dead.updated_at = later
    assert not jobs.finish(dead, expect=("queued", "running"), last_written_by=T0 - timedelta(seconds=1))
    assert jobs.finish(dead, expect=("queued", "running"), last_written_by=later - STALE_AFTER)
    assert jobs.get(namespace, j.id).status == "failed"
    assert jobs.claim(namespace, j.id, later, T0) is None


def test_two_claims_at_once_one_wins(jobs: Any, namespace: str) -> None:
    j = job(namespace)
    jobs.add(j)
    won: list[Any] = []
    go = threading.Barrier(4)

    def claim() -> None:
        go.wait()
        won.append(jobs.claim(namespace, j.id, T0 + timedelta(seconds=1), T0 - STALE_AFTER))

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sum(w is not None for w in won) == 1


def test_forget_drops_only_finished_jobs_completed_before(jobs: Any, namespace: str) -> None:
    old, new, live = job(namespace), job(namespace), job(namespace, at=T0 - timedelta(days=90))
    for j in (old, new, live):
        jobs.add(j)
    for j, at in ((old, T0 - timedelta(days=31)), (new, T0)):
        claimed = jobs.claim(namespace, j.id, T0, T0 - STALE_AFTER)
        claimed.status, claimed.completed_at, claimed.updated_at = "failed", at, at
        assert jobs.finish(claimed)
    assert jobs.forget(namespace + "x", T0) == 0
    assert jobs.forget(namespace, T0 - timedelta(days=30)) == 1
    assert jobs.get(namespace, old.id) is None
    assert jobs.get(namespace, new.id) is not None and jobs.get(namespace, live.id) is not None
