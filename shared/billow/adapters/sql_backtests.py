"""Backtest jobs (ports.BacktestJobStore) on SQLAlchemy Core: the backtest_jobs table (meta migration 0006), SQLite
embedded, PostgreSQL in AWS. One row per job: its spec and failures as JSON, the result rows as JSON with every
amount a decimal string (exact). A job moves by compare-and-set on its status (one UPDATE ... WHERE status = ...):
of two workers, or a worker and one that found the job stale, exactly one wins."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from billow import jsonx
from billow.adapters.sql import reads
from billow.domain.backtest_jobs import Job, row_from_stored, row_to_stored

md = sa.MetaData()

backtest_jobs = sa.Table(
    "backtest_jobs", md,
    sa.Column("namespace", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("total", sa.Integer, nullable=False),
    sa.Column("success", sa.Integer, nullable=False),
    sa.Column("failed", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("completed_at", sa.DateTime(timezone=True)),
    sa.Column("error", sa.Text),
    sa.Column("failures", sa.Text, nullable=False),
    sa.Column("result", sa.Text),
    sa.Index("backtest_jobs_completed", "namespace", "completed_at"),
)
_T = backtest_jobs.c


def _utc(t: datetime | None) -> datetime | None:
    if t is None:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _job(row: Any) -> Job:
    result = getattr(row, "result", None)
    rows = [row_from_stored(r) for r in jsonx.loads(result)] if result else []
    created = _utc(row.created_at)
    assert created is not None
    return Job(row.id, row.namespace, jsonx.loads(row.spec), created, status=row.status, success=row.success,
               failed=row.failed, updated_at=_utc(row.updated_at), completed_at=_utc(row.completed_at),
               error=row.error, failures=jsonx.loads(row.failures), rows=rows)


def _key(namespace: str, id_: str) -> Any:
    return sa.and_(_T.namespace == namespace, _T.id == id_)


class SqlBacktestJobStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.reads = reads(engine)  # (sql.reads: one-statement reads in autocommit on PostgreSQL)

    def migrate(self) -> None:
        """The meta database to the schema head: one Alembic upgrade for every store's tables (billow.migrations)."""
        from billow.migrations import upgrade

        upgrade(self.engine)

    def add(self, job: Job) -> None:
        with self.engine.begin() as c:
            c.execute(backtest_jobs.insert().values(
                namespace=job.namespace, id=job.id, status=job.status, spec=jsonx.dumps(job.spec), total=job.total,
                success=job.success, failed=job.failed, created_at=_utc(job.created_at),
                updated_at=_utc(job.updated_at), completed_at=_utc(job.completed_at), error=job.error,
                failures=jsonx.dumps(job.failures),
                result=jsonx.dumps([row_to_stored(r) for r in job.rows]) if job.rows else None))

    def get(self, namespace: str, id_: str, *, rows: bool = True) -> Job | None:
        columns = list(backtest_jobs.c) if rows else [col for col in backtest_jobs.c if col.name != "result"]
        with self.reads.connect() as c:
            row = c.execute(sa.select(*columns).where(_key(namespace, id_))).first()
        return _job(row) if row else None

    def claim(self, namespace: str, id_: str, now: datetime, alive_since: datetime) -> Job | None:
        with self.engine.begin() as c:
            moved = c.execute(backtest_jobs.update().where(
                _key(namespace, id_), _T.status == "queued", _T.updated_at > _utc(alive_since)).values(
                status="running", updated_at=_utc(now))).rowcount
            if moved != 1:
                return None
            row = c.execute(sa.select(backtest_jobs).where(_key(namespace, id_))).first()
        return _job(row)

    def report(self, namespace: str, id_: str, success: int, failed: int, at: datetime) -> None:
        with self.engine.begin() as c:
            c.execute(backtest_jobs.update().where(_key(namespace, id_), _T.status == "running").values(
                success=success, failed=failed, updated_at=_utc(at)))

    def finish(self, job: Job, *, expect: Sequence[str] = ("running",),
               last_written_by: datetime | None = None) -> bool:
        cond = [_key(job.namespace, job.id), _T.status.in_(list(expect))]
        if last_written_by is not None:
            cond.append(_T.updated_at <= _utc(last_written_by))
        with self.engine.begin() as c:
            moved = c.execute(backtest_jobs.update().where(*cond).values(
                status=job.status, success=job.success, failed=job.failed, updated_at=_utc(job.updated_at),
                completed_at=_utc(job.completed_at), error=job.error, failures=jsonx.dumps(job.failures),
                result=jsonx.dumps([row_to_stored(r) for r in job.rows]) if job.status == "succeeded" else None))
            return bool(moved.rowcount == 1)

    def forget(self, namespace: str, completed_before: datetime) -> int:
        with self.engine.begin() as c:
            return int(c.execute(backtest_jobs.delete().where(
                _T.namespace == namespace, _T.status.in_(["succeeded", "failed"]),
                _T.completed_at < _utc(completed_before))).rowcount)
